//! The line of threads waiting for a connection: first come, first served, with a bounded
//! exception for the thread that just returned one.
//!
//! r2d2 wakes its waiters through a condition variable with no order, and a thread that just
//! returned a connection can take it again ahead of them, without limit: under overload some
//! requests wait many turns while others are served at once (the benchmark's overload case
//! shows it: `docs/performance.md`). Here a thread that finds no connection joins a queue, and a newcomer does not pass it: it
//! looks at the pool's idle connections only when nobody waits.
//!
//! A returned connection goes straight to the first in line (HikariCP's hand-off) once the
//! thread returning it has kept it a streak of checkouts in a row while others waited
//! ([`super::affinity::Streak`]); until then it stays parked for that thread's next checkout.
//! How long a streak depends on where the database runs. Outside the process (PostgreSQL, on
//! another machine in production), a hand-off costs one wake-up: 1 in a row. Inside it
//! (SQLite), the server's work shares the client threads' cores and a hand-off moves it to
//! another core: 12 in a row, fewer when more than 80 wait, down to 4. Strict hand-off on every return gives the best tails but a wake-up of another
//! thread per request; the streak trades one for the other (a thread that joins the line waits
//! about `streak x threads / throughput`), and no request waits more than a bounded number of
//! turns. The measurements behind these numbers are in `docs/design.md`.
//!
//! The first in line also takes what reaches the pool rather than the line (connections r2d2
//! opens or replaces, parked ones): it opens a new one when the pool has room, and looks again
//! every [`POLL`] otherwise, so a connection parked by a thread that went on to other work
//! waits at most that long while others wait. The others sleep until a connection is handed to
//! them, or look every [`BEHIND`] (100 ms) whether they became first: a line where every waiter
//! looked every [`POLL`] would wake thousands of times a second for nothing. While the pool
//! can still open connections, the thread that takes the first ticket out of the line wakes the
//! next one at once (a burst of threads at start-up then fills the pool without delay); once it
//! is full, connections reach the line by hand-off, and a second wake-up per hand-off would
//! cost throughput under overload.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::Held;
use super::pool_connection::PoolConnection;

/// How often the first in line looks at the pool and the parked connections while no
/// connection is handed to it (and any waiter checks whether a health check should give up).
pub(crate) const POLL: Duration = Duration::from_millis(5);

/// The longest the others sleep between looks: how long a thread that became first in line
/// without being woken (the pool was full) may take to start watching the pool.
pub(crate) const BEHIND: Duration = Duration::from_millis(100);

/// The waiting threads, in order of arrival.
pub(crate) struct Line<C: PoolConnection> {
    /// How many are in `queue`: read on every return, written only by waiters.
    waiting: AtomicUsize,
    queue: Mutex<VecDeque<Arc<Ticket<C>>>>,
}

/// One waiting thread's place: where a connection is handed to it, or word that it is now
/// first in line.
pub(crate) struct Ticket<C: PoolConnection> {
    slot: Mutex<Turn<C>>,
    handed: Condvar,
}

struct Turn<C: PoolConnection> {
    conn: Option<Held<C>>,
    /// It became first in line since it last looked: time to watch the pool.
    promoted: bool,
}

impl<C: PoolConnection> Ticket<C> {
    /// Tells the thread holding this ticket that it is first in line now.
    fn promote(&self) {
        if let Ok(mut turn) = self.slot.lock() {
            turn.promoted = true;
        }
        self.handed.notify_one();
    }
}

impl<C: PoolConnection> Line<C> {
    pub(crate) fn new() -> Line<C> {
        Line {
            waiting: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// How many threads wait now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Joins the end of the line.
    pub(crate) fn join(&self) -> Arc<Ticket<C>> {
        let ticket = Arc::new(Ticket {
            slot: Mutex::new(Turn {
                conn: None,
                promoted: false,
            }),
            handed: Condvar::new(),
        });
        self.enter(Arc::clone(&ticket), false);
        ticket
    }

    /// Takes the first place again (a connection handed over failed validation).
    pub(crate) fn rejoin_first(&self, ticket: &Arc<Ticket<C>>) {
        self.enter(Arc::clone(ticket), true);
    }

    fn enter(&self, ticket: Arc<Ticket<C>>, first: bool) {
        if let Ok(mut queue) = self.queue.lock() {
            if first {
                queue.push_front(ticket);
            } else {
                queue.push_back(ticket);
            }
            self.waiting.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Wakes the first in line, if anyone waits, to look at the pool: a connection went back
    /// to it (or was closed, leaving room for another) other than by hand-off.
    pub(crate) fn wake_first(&self) {
        if self.waiting() == 0 {
            return;
        }
        let first = self
            .queue
            .lock()
            .ok()
            .and_then(|queue| queue.front().cloned());
        if let Some(first) = first {
            first.promote();
        }
    }

    /// Whether `ticket` is first in line.
    pub(crate) fn is_first(&self, ticket: &Arc<Ticket<C>>) -> bool {
        self.queue
            .lock()
            .is_ok_and(|queue| queue.front().is_some_and(|t| Arc::ptr_eq(t, ticket)))
    }

    /// Gives `conn` to the first in line; hands it back when nobody waits. `wake_next`: wake
    /// the one behind it, which becomes first, to watch the pool (see [`Line::leave`]).
    pub(crate) fn hand_off(&self, conn: Held<C>, wake_next: bool) -> Option<Held<C>> {
        let Ok(mut queue) = self.queue.lock() else {
            return Some(conn);
        };
        let Some(ticket) = queue.pop_front() else {
            return Some(conn);
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        // Filled while the line is locked: `leave` then either finds the ticket still in line
        // or the connection already in its slot, never neither.
        match ticket.slot.lock() {
            Ok(mut slot) => slot.conn = Some(conn),
            Err(_) => return Some(conn),
        }
        let next = queue.front().filter(|_| wake_next).cloned();
        drop(queue);
        // Woken after both locks are released, so that it does not wake into a held lock.
        ticket.handed.notify_one();
        if let Some(next) = next {
            next.promote();
        }
        None
    }

    /// Waits up to `limit` for a connection handed to `ticket`, or for word that it became
    /// first in line (then `None`, as after the limit).
    pub(crate) fn wait(&self, ticket: &Ticket<C>, limit: Duration) -> Option<Held<C>> {
        let slot = ticket.slot.lock().ok()?;
        let (mut slot, _) = ticket
            .handed
            .wait_timeout_while(slot, limit, |turn| turn.conn.is_none() && !turn.promoted)
            .ok()?;
        slot.promoted = false;
        slot.conn.take()
    }

    /// Leaves the line (served otherwise, or out of time); returns a connection handed to
    /// `ticket` meanwhile. `wake_next`: when it was first, wake the one behind it, which
    /// becomes first, to watch the pool. Worth a wake-up only while the pool can still open
    /// connections; when it is full, connections reach the line by hand-off, and the new
    /// first finds out at its next look ([`BEHIND`]).
    pub(crate) fn leave(&self, ticket: &Arc<Ticket<C>>, wake_next: bool) -> Option<Held<C>> {
        let mut next = None;
        if let Ok(mut queue) = self.queue.lock()
            && let Some(at) = queue.iter().position(|t| Arc::ptr_eq(t, ticket))
        {
            queue.remove(at);
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if at == 0 && wake_next {
                next = queue.front().cloned();
            }
        }
        if let Some(next) = next {
            next.promote();
        }
        ticket.slot.lock().ok()?.conn.take()
    }
}
