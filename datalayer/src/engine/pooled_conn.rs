//! A connection out of the pool's hands: boxed with its handle on the engine's books
//! ([`HeldConn`]), handed to the application as a [`PooledConn`], which parks it for the
//! thread's next checkout or hands it to the first in line when dropped.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use diesel::r2d2::PooledConnection;

use super::affinity::Parking;
use super::checkouts;
use super::manager::{Manager, clock_ns};
use super::pool_connection::PoolConnection;
use super::{Books, Conn};

/// A connection out of r2d2's hands (checked out or parked), boxed: a checkout and a return
/// move it through several hands (slot, checkout, `PooledConn`), and copying r2d2's
/// connection wrapper each time was a third of a checkout of a thread's parked connection.
pub(crate) type Held<C> = Box<HeldConn<C>>;

/// What [`Held`] boxes: the connection with its own handle on the engine's books. The handle
/// travels with the connection into the parking slot and back, so the fast path never
/// touches the `Arc`'s count, which every thread would otherwise write. Aligned to cache
/// lines: each is written by the thread holding it.
#[repr(align(128))]
pub(crate) struct HeldConn<C: PoolConnection> {
    pub(super) conn: PooledConnection<Manager<C>>,
    pub(super) books: Arc<Books<C>>,
    /// How many times in a row this thread kept it while others waited (see `line.rs`).
    pub(super) streak: u32,
}

/// A connection checked out of the pool; it goes back when dropped.
///
/// Dereferences to the engine's connection type (by default [`Conn`]), so `&mut pooled` is
/// what query functions take.
pub struct PooledConn<C: PoolConnection = Conn> {
    /// Always `Some` until dropped.
    pub(super) held: Option<Held<C>>,
    pub(super) leak_threshold: Option<Duration>,
    /// When it was handed over ([`clock_ns`]), for `db.client.connection.use_time`.
    pub(super) since: u64,
}

impl<C: PoolConnection> PooledConn<C> {
    fn held(&self) -> &Held<C> {
        match &self.held {
            Some(held) => held,
            None => unreachable!("a PooledConn holds its connection until dropped"),
        }
    }

    fn pooled(&self) -> &PooledConnection<Manager<C>> {
        &self.held().conn
    }

    /// The PostgreSQL backend pid of this connection (`None` on SQLite).
    pub fn backend_pid(&self) -> Option<i32> {
        self.pooled().health.backend_pid
    }
}

impl<C: PoolConnection> Deref for PooledConn<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.pooled().conn
    }
}

impl<C: PoolConnection> DerefMut for PooledConn<C> {
    fn deref_mut(&mut self) -> &mut C {
        match &mut self.held {
            Some(held) => &mut held.conn.conn,
            None => unreachable!("a PooledConn holds its connection until dropped"),
        }
    }
}

impl<C: PoolConnection> Drop for PooledConn<C> {
    /// Parks a healthy connection for this thread's next checkout (see "Connection affinity"
    /// in the module docs), or returns it to the pool.
    fn drop(&mut self) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        let used = Duration::from_nanos(clock_ns().saturating_sub(self.since));
        let shared = &held.books.shared;
        if shared.mechanisms.registry {
            checkouts::end(&held.conn.health, used, self.leak_threshold);
        }
        shared.metrics.use_time().record(used.as_secs_f64());
        if std::thread::panicking() || !held.conn.reusable() {
            close(held);
        } else if !shared.mechanisms.parking {
            hand_back(held);
        } else if let Some(held) = Parking::park(held) {
            // Not parked: someone is waiting, and the first in line gets it.
            hand_back(held);
        }
    }
}

/// Returns a connection that may not be reused to r2d2, which closes it; the first in line
/// may open the replacement.
#[cold]
fn close<C: PoolConnection>(held: Held<C>) {
    let books = Arc::clone(&held.books);
    drop(held);
    books.line.wake_first();
}

/// Gives a connection that is not parked back: to the first in line, else to r2d2.
#[inline(never)]
pub(crate) fn hand_back<C: PoolConnection>(mut held: Held<C>) {
    held.streak = 0;
    if held.books.line.waiting() == 0 {
        // Back to r2d2; a thread that joins the line meanwhile finds it there when it looks.
        drop(held);
        return;
    }
    let books = Arc::clone(&held.books);
    drop(books.line.hand_off(held, books.shared.can_grow()));
    books.report_waiting();
}
