//! Connection affinity: a thread keeps the connection it just returned.
//!
//! With one shared pool, the connection a thread returns is usually taken next by another
//! thread, so on few cores the client threads and the PostgreSQL backends they talk to keep
//! changing partners, and every request pays cross-core wake-ups: on this 2-core machine a
//! shared r2d2 pool served 12 % less than one pool per thread at 8 client threads.
//!
//! So a returned connection is *parked* in a slot of the returning thread instead of going back
//! to r2d2, and that thread's next checkout takes it back (after the usual cheap validation).
//! It stays available to everyone: a thread that finds the pool empty steals parked
//! connections before it joins the line of waiting threads (`line.rs`), and the first in line
//! looks for them while it waits. While threads wait, a connection is parked for its thread at
//! most [`STREAK`] times in a row, then goes to the first in line; a broken connection is never
//! parked.
//! No counter is shared by the threads' fast path (a shared counter written on every park and
//! take cost the SQLite reads at 2 threads a tenth of their throughput): counting parked
//! connections means looking at every slot, which only `state`, `steal` and `drain` do.
//! A thread's exit and the engine's drop return parked connections to the pool.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::Held;
use super::pool_connection::PoolConnection;

/// How many times in a row a thread may keep the connection it returns while others wait
/// before it must go to the first in line (see `line.rs`).
pub(crate) const STREAK: u32 = 8;

/// One thread's parked connection for one engine.
struct Parked<C: PoolConnection>(Mutex<Option<Held<C>>>);

/// An engine's parked connections.
pub(crate) struct Parking<C: PoolConnection> {
    slots: Mutex<Vec<Weak<Parked<C>>>>,
    id: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One engine's entry in a thread's list: its slot, and what to do at thread exit. Engines of
/// different connection types share the thread-local list, hence the trait object.
trait Entry {
    /// The slot, an `Arc<Parked<C>>`, for [`Parking::my_slot`] to downcast.
    fn slot(&self) -> &dyn Any;
    /// Whether the engine still exists.
    fn alive(&self) -> bool;
    /// Returns the parked connection to its pool (the thread is exiting).
    fn release(&self);
}

struct EntryOf<C: PoolConnection> {
    parking: Weak<Parking<C>>,
    slot: Arc<Parked<C>>,
}

impl<C: PoolConnection> Entry for EntryOf<C> {
    fn slot(&self) -> &dyn Any {
        &self.slot
    }
    fn alive(&self) -> bool {
        self.parking.strong_count() > 0
    }
    fn release(&self) {
        if let Some(parking) = self.parking.upgrade() {
            drop(parking.empty(&self.slot));
        }
    }
}

/// A thread's slots, one per engine it has used; dropping them (at thread exit) returns the
/// connections to their pools.
struct Mine(Vec<(u64, Box<dyn Entry>)>);

impl Drop for Mine {
    fn drop(&mut self) {
        for (_, entry) in self.0.drain(..) {
            entry.release();
        }
    }
}

thread_local! {
    static MINE: RefCell<Mine> = const { RefCell::new(Mine(Vec::new())) };
}

impl<C: PoolConnection> Parking<C> {
    pub(crate) fn new() -> Arc<Parking<C>> {
        Arc::new(Parking {
            slots: Mutex::new(Vec::new()),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Every slot of this engine whose thread is still alive.
    fn slots(&self) -> Vec<Arc<Parked<C>>> {
        match self.slots.lock() {
            Ok(slots) => slots.iter().filter_map(Weak::upgrade).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// How many connections are parked now.
    pub(crate) fn parked(&self) -> u32 {
        let parked = self
            .slots()
            .iter()
            .filter(|slot| slot.0.lock().is_ok_and(|parked| parked.is_some()))
            .count();
        u32::try_from(parked).unwrap_or(u32::MAX)
    }

    fn empty(&self, slot: &Parked<C>) -> Option<Held<C>> {
        slot.0.lock().ok()?.take()
    }

    /// This thread's slot for this engine, made on first use.
    fn my_slot(self: &Arc<Self>) -> Option<Arc<Parked<C>>> {
        MINE.try_with(|mine| {
            let mut mine = mine.borrow_mut();
            if let Some((_, entry)) = mine.0.iter().find(|(id, _)| *id == self.id) {
                return entry.slot().downcast_ref::<Arc<Parked<C>>>().cloned();
            }
            mine.0.retain(|(_, entry)| entry.alive());
            let slot = Arc::new(Parked(Mutex::new(None)));
            if let Ok(mut slots) = self.slots.lock() {
                slots.retain(|s| s.strong_count() > 0);
                slots.push(Arc::downgrade(&slot));
            }
            let entry = EntryOf {
                parking: Arc::downgrade(self),
                slot: Arc::clone(&slot),
            };
            mine.0.push((self.id, Box::new(entry)));
            Some(slot)
        })
        .ok()
        .flatten()
    }

    /// The connection this thread parked, if it is still there.
    pub(crate) fn take_own(self: &Arc<Self>) -> Option<Held<C>> {
        let slot = self.my_slot()?;
        self.empty(&slot)
    }

    /// Parks `conn` for this thread in its engine's parking, or hands it back (to be returned
    /// to the pool) when a thread is waiting for the pool or this thread already has one
    /// parked.
    pub(crate) fn park(mut conn: Held<C>) -> Option<Held<C>> {
        if conn.books.line.waiting() == 0 {
            conn.streak = 0;
        } else if conn.streak >= STREAK {
            return Some(conn);
        } else {
            conn.streak += 1;
        }
        let parking = &conn.books.parking;
        let Some(slot) = parking.my_slot() else {
            return Some(conn);
        };
        let Ok(mut parked) = slot.0.lock() else {
            return Some(conn);
        };
        if parked.is_some() {
            return Some(conn);
        }
        *parked = Some(conn);
        None
    }

    /// A connection parked by any thread.
    pub(crate) fn steal(&self) -> Option<Held<C>> {
        self.slots().iter().find_map(|slot| self.empty(slot))
    }

    /// The parked connections for which `expired` says so, taken out of their slots.
    pub(crate) fn evict(&self, expired: impl Fn(&Held<C>) -> bool) -> Vec<Held<C>> {
        self.slots()
            .iter()
            .filter_map(|slot| {
                let mut parked = slot.0.lock().ok()?;
                if parked.as_ref().is_some_and(&expired) {
                    parked.take()
                } else {
                    None
                }
            })
            .collect()
    }

    /// Every parked connection, for the engine's drop.
    pub(crate) fn drain(&self) -> Vec<Held<C>> {
        self.slots()
            .iter()
            .filter_map(|slot| self.empty(slot))
            .collect()
    }
}
