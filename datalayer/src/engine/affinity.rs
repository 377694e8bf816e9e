//! Connection affinity: a thread keeps the connection it just returned.
//!
//! With one shared pool, the connection a thread returns is usually taken next by another
//! thread: r2d2's lock and list on every checkout and return, and the connection's state
//! moving between the threads' cores. Where the database's work runs in the process (SQLite),
//! that is a large share of a point read: without parking, the engine served 0.84-0.86x at 2
//! and 4 threads (the with/without table: `docs/design.md`). With PostgreSQL on cores of its
//! own it changes throughput by a few per cent either way.
//!
//! So a returned connection is *parked* in a slot of the returning thread instead of going back
//! to r2d2, and that thread's next checkout takes it back (after the usual cheap validation).
//! It stays available to everyone: a thread that finds the pool empty steals parked
//! connections before it joins the line of waiting threads (`line.rs`), and the first in line
//! looks for them while it waits. While threads wait, a connection is parked for its thread a
//! bounded number of times in a row ([`Streak`]: fewer when many wait, and fewer when the
//! database runs outside the process), then goes to the first in line; a broken connection is
//! never parked.
//! No counter is shared by the threads' fast path (a shared counter written on every park and
//! take moves a cache line between cores on every read): counting parked
//! connections means looking at every slot, which only `state`, `steal` and `drain` do.
//! A thread's exit hands its parked connections to threads waiting for one, else returns them
//! to the pool; the engine's drop returns them to the pool.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::pool_connection::PoolConnection;
use super::{Held, HeldConn};

/// How many times in a row a thread may keep the connection it returns while others wait:
/// at most `max`, fewer as the line grows, so that the wait of the last in line (about
/// `waiting x streak` checkouts of the others, see `line.rs`) stays within `turns`; never
/// fewer than `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Streak {
    max: u32,
    min: u32,
    turns: usize,
}

/// The streak while the database runs inside this process (SQLite): the server's work shares
/// the client threads' cores, so a hand-off also moves the work to another core and costs far
/// more than a wake-up. Long, shrinking as the line grows so that the last in line waits at
/// most about `turns` checkouts (the figures behind it: `docs/design.md`).
pub(crate) const IN_PROCESS: Streak = Streak {
    max: 12,
    min: 4,
    turns: 960,
};

/// The streak while the database runs outside this process (PostgreSQL, on another machine
/// in production), where a hand-off costs one wake-up: one checkout, then the connection goes
/// to the first in line. Measured with the server on cores of its own (pool of 8, point
/// reads; `docs/design.md`): against 4 in a row, p99 fell from 7.2 to 4.9 ms at C = 32 and
/// from 19.9 to 16.5 ms at C = 128 at the same throughput; strict hand-off (0) cost about a
/// tenth of the throughput at C = 32.
pub(crate) const OUT_OF_PROCESS: Streak = Streak {
    max: 1,
    min: 1,
    turns: 1,
};

impl Streak {
    /// The longest streak while `waiting` threads wait.
    fn limit(self, waiting: usize) -> u32 {
        u32::try_from(self.turns / waiting.max(1))
            .unwrap_or(u32::MAX)
            .clamp(self.min, self.max)
    }
}

/// One thread's parked connection for one engine: a pointer swapped in and out (one atomic
/// operation per park and per take; a mutex around an `Option` cost two each), on cache lines
/// of its own (threads' slots are small allocations made side by side).
#[repr(align(128))]
pub(crate) struct Parked<C: PoolConnection> {
    held: AtomicPtr<HeldConn<C>>,
    /// Owns a `Held` (so `Send` and `Sync` as a mutex around one would be).
    _owns: PhantomData<Mutex<Held<C>>>,
}

impl<C: PoolConnection> Parked<C> {
    fn new() -> Parked<C> {
        Parked {
            held: AtomicPtr::new(std::ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// Takes the parked connection out, if there is one.
    #[inline]
    fn take(&self) -> Option<Held<C>> {
        let held = self.held.swap(std::ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: a non-null pointer here came from `Box::into_raw` in `put`, and the swap
        // made this call its only owner.
        (!held.is_null()).then(|| unsafe { Box::from_raw(held) })
    }

    /// Parks `held`, or gives it back when the slot is taken.
    #[inline]
    fn put(&self, held: Held<C>) -> Result<(), Held<C>> {
        let raw = Box::into_raw(held);
        match self.held.compare_exchange(
            std::ptr::null_mut(),
            raw,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(()),
            // SAFETY: `raw` was not stored, so it is still only ours.
            Err(_) => Err(unsafe { Box::from_raw(raw) }),
        }
    }

    fn occupied(&self) -> bool {
        !self.held.load(Ordering::Acquire).is_null()
    }
}

impl<C: PoolConnection> Drop for Parked<C> {
    fn drop(&mut self) {
        drop(self.take());
    }
}

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
        if self.alive()
            && let Some(held) = self.slot.take()
        {
            // To whoever waits, not to r2d2's list, where the line would find it only later.
            super::hand_back(held);
        }
    }
}

/// A thread's slots, one per engine it has used; dropping them (at thread exit) returns the
/// connections to their pools.
struct Mine(Vec<(u64, Box<dyn Entry>)>);

impl Drop for Mine {
    fn drop(&mut self) {
        // The slots go: forget the shortcut to one first.
        let _ = LAST.try_with(|last| last.set((0, std::ptr::null())));
        for (_, entry) in self.0.drain(..) {
            entry.release();
        }
    }
}

thread_local! {
    static MINE: RefCell<Mine> = const { RefCell::new(Mine(Vec::new())) };
    /// A shortcut to the slot this thread used last: its engine's id and the `Arc<Parked<C>>`
    /// that `MINE` holds for it, as a raw pointer. The usual checkout then touches one
    /// thread-local word pair instead of walking `MINE` (its list, a box, a downcast), which
    /// on a checkout right after a query, when those are out of the CPU's caches, showed.
    static LAST: Cell<(u64, *const ())> = const { Cell::new((0, std::ptr::null())) };
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
        let parked = self.slots().iter().filter(|slot| slot.occupied()).count();
        u32::try_from(parked).unwrap_or(u32::MAX)
    }

    /// This thread's slot for this engine, made on first use, as a pointer without a count
    /// (taking one wrote the slot's count twice per checkout and return). `MINE` holds the
    /// slot, and drops it only at thread exit or, in [`Parking::find_or_make_slot`], once its
    /// engine is gone: so the pointer stays valid until this thread next calls this function
    /// or exits. Callers use it at once and never keep it.
    #[inline]
    fn my_slot(self: &Arc<Self>) -> Option<NonNull<Parked<C>>> {
        if let Ok((id, slot)) = LAST.try_with(Cell::get)
            && id == self.id
        {
            // `LAST` holds `Arc::as_ptr` of the slot `MINE` keeps for the engine `id` (ids are
            // never reused, so the type is `Parked<C>`); `MINE`'s drop clears it first.
            return NonNull::new(slot.cast_mut().cast::<Parked<C>>());
        }
        let slot = self.find_or_make_slot()?;
        let ptr = Arc::as_ptr(&slot);
        let _ = LAST.try_with(|last| last.set((self.id, ptr.cast::<()>())));
        // `MINE` holds another count: dropping this one leaves the slot alive.
        NonNull::new(ptr.cast_mut())
    }

    /// [`Parking::my_slot`] without the shortcut.
    #[cold]
    fn find_or_make_slot(self: &Arc<Self>) -> Option<Arc<Parked<C>>> {
        MINE.try_with(|mine| {
            let mut mine = mine.borrow_mut();
            if let Some((_, entry)) = mine.0.iter().find(|(id, _)| *id == self.id) {
                return entry.slot().downcast_ref::<Arc<Parked<C>>>().cloned();
            }
            mine.0.retain(|(_, entry)| entry.alive());
            let slot = Arc::new(Parked::new());
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
        // SAFETY: see `my_slot`: used at once, on this thread.
        unsafe { slot.as_ref() }.take()
    }

    /// Parks `conn` for this thread in its engine's parking, or hands it back (to be returned
    /// to the pool) when a thread is waiting for the pool or this thread already has one
    /// parked.
    pub(crate) fn park(mut conn: Held<C>) -> Option<Held<C>> {
        let waiting = conn.books.line.waiting();
        if waiting == 0 {
            conn.streak = 0;
        } else if conn.streak >= conn.books.streak().limit(waiting) {
            return Some(conn);
        } else {
            conn.streak += 1;
        }
        let Some(slot) = conn.books.parking.my_slot() else {
            return Some(conn);
        };
        // SAFETY: see `my_slot`: used at once, on this thread (moving `conn` into the slot,
        // after which another thread may take it, does not touch `MINE`).
        unsafe { slot.as_ref() }.put(conn).err()
    }

    /// A connection parked by any thread.
    pub(crate) fn steal(&self) -> Option<Held<C>> {
        self.slots().iter().find_map(|slot| slot.take())
    }

    /// The parked connections for which `expired` says so, taken out of their slots (with,
    /// rarely, one that was not but could not be parked again because its thread parked
    /// another meanwhile: it goes back to the pool like any returned connection).
    pub(crate) fn evict(&self, expired: impl Fn(&Held<C>) -> bool) -> Vec<Held<C>> {
        self.slots()
            .iter()
            .filter_map(|slot| {
                let held = slot.take()?;
                if expired(&held) {
                    Some(held)
                } else {
                    slot.put(held).err()
                }
            })
            .collect()
    }

    /// Every parked connection, for the engine's drop.
    pub(crate) fn drain(&self) -> Vec<Held<C>> {
        self.slots().iter().filter_map(|slot| slot.take()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{IN_PROCESS, OUT_OF_PROCESS};

    #[test]
    fn the_streak_shrinks_as_the_line_grows() {
        assert_eq!(IN_PROCESS.limit(1), 12);
        assert_eq!(IN_PROCESS.limit(80), 12);
        assert_eq!(IN_PROCESS.limit(120), 8);
        assert_eq!(IN_PROCESS.limit(10_000), 4);
        assert_eq!(OUT_OF_PROCESS.limit(1), 1);
        assert_eq!(OUT_OF_PROCESS.limit(10_000), 1);
    }
}
