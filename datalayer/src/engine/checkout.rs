//! The checkout: this thread's parked connection on the usual path, kept short; the pool, other
//! threads' parked connections and the line of waiting threads out of line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkouts;
use super::line::{BEHIND, POLL};
use super::pool_connection::PoolConnection;
use super::{Engine, Held, HeldConn, PooledConn};
use super::{OUTAGE_GRACE, RECONNECT_CAP};
use crate::error::Error;

impl<C: PoolConnection> Engine<C> {
    /// [`Engine::get`] for the caller `site`, started at `start` (a
    /// [`clock_ns`](super::shared::clock_ns) reading); a wait gives up early when `give_up`
    /// says so (given the time).
    pub(super) fn get_from(
        &self,
        site: &'static std::panic::Location<'static>,
        start: u64,
        give_up: Option<&dyn Fn(Instant) -> bool>,
    ) -> Result<PooledConn<C>, Error> {
        let shared = &self.inner.books.shared;
        let registry = shared.mechanisms.registry;
        let leak_threshold = self.inner.settings.pool.leak_threshold.filter(|_| registry);
        if let Some(threshold) = leak_threshold {
            self.inner
                .books
                .checkouts
                .warn_overdue(shared, shared.since_epoch(start), threshold);
        }
        let (checked_out, waited) = self.checkout(start, give_up);
        match checked_out {
            Some(held) => {
                shared.metrics.checked_out(waited);
                let since = start.saturating_add(u64::try_from(waited.as_nanos()).unwrap_or(0));
                if registry {
                    checkouts::begin(&held.conn.health, site, shared.since_epoch(since));
                }
                Ok(PooledConn {
                    held: Some(held),
                    leak_threshold,
                    since,
                })
            }
            None => {
                shared.metrics.checkout_wait().record(waited.as_secs_f64());
                match self.refusing(Instant::now()) {
                    Some(reason) if give_up.is_none() => {
                        shared.metrics.checkout_timeouts().increment(1);
                        Err(Error::Connect {
                            target: self.target().to_string(),
                            reason: format!(
                                "{reason} (opening a connection has failed for over {:?}; the \
                                 pool keeps trying, at most {:?} apart)",
                                OUTAGE_GRACE,
                                RECONNECT_CAP / 2
                            ),
                        })
                    }
                    _ => Err(self.timed_out(waited)),
                }
            }
        }
    }

    /// Why a checkout should not wait for a connection at `now`, when the database refuses
    /// them: every attempt to open one has failed for [`OUTAGE_GRACE`] or longer, and the
    /// pool has none open that could come back. The last failure's message.
    pub(super) fn refusing(&self, now: Instant) -> Option<String> {
        let shared = &self.inner.books.shared;
        if shared.failing_for(now)? < OUTAGE_GRACE || self.inner.pool.state().connections > 0 {
            return None;
        }
        shared.last_error().map(|(message, _)| message)
    }

    /// The error of a checkout that waited `waited` in vain.
    #[cold]
    fn timed_out(&self, waited: Duration) -> Error {
        self.inner
            .books
            .shared
            .metrics
            .checkout_timeouts()
            .increment(1);
        Error::PoolTimeout {
            waited,
            state: self.state(),
            last_error: self
                .inner
                .books
                .shared
                .last_error()
                .map(|(message, _)| message),
            holders: self.holders_with_state(),
        }
    }

    /// This thread's parked connection, else an idle one, else a parked one stolen from
    /// another thread, else a wait for one (in short slices, stealing between them) until
    /// the pool timeout. Parked and stolen connections pass the same validation as the
    /// pool's own. Also returns how long it waited: zero, without reading the clock again, for
    /// this thread's own parked connection (validated against `start`, a
    /// [`clock_ns`](super::shared::clock_ns) reading).
    #[inline]
    fn checkout(
        &self,
        start: u64,
        give_up: Option<&dyn Fn(Instant) -> bool>,
    ) -> (Option<Held<C>>, Duration) {
        if !self.inner.books.shared.mechanisms.parking {
            return self.checkout_elsewhere(self.inner.books.shared.instant_of(start), give_up);
        }
        let own = self.inner.books.parking.take_own().and_then(|mut held| {
            self.inner
                .manager
                .is_valid_at(&mut held.conn, start)
                .is_ok()
                .then_some(held)
        });
        if own.is_some() {
            return (own, Duration::ZERO);
        }
        self.checkout_elsewhere(self.inner.books.shared.instant_of(start), give_up)
    }

    /// [`Engine::checkout`] when this thread has no connection parked (or its parked one
    /// failed validation): the pool, other threads' parked ones, the line. Out of line, so
    /// that the usual checkout's code stays short.
    #[cold]
    #[inline(never)]
    fn checkout_elsewhere(
        &self,
        start: Instant,
        give_up: Option<&dyn Fn(Instant) -> bool>,
    ) -> (Option<Held<C>>, Duration) {
        use diesel::r2d2::ManageConnection;
        let valid = |mut held: Held<C>| {
            self.inner
                .manager
                .is_valid(&mut held.conn)
                .is_ok()
                .then_some(held)
        };
        let hold = |conn| {
            Box::new(HeldConn {
                conn,
                books: Arc::clone(&self.inner.books),
                streak: 0,
            })
        };
        // A newcomer does not pass those waiting in line (see `line.rs`).
        let line = &self.inner.books.line;
        if line.waiting() == 0 {
            if let Some(conn) = self.inner.pool.try_get() {
                return (Some(hold(conn)), start.elapsed());
            }
            if let Some(conn) = self.inner.books.parking.steal().and_then(valid) {
                return (Some(conn), start.elapsed());
            }
        }
        let deadline = start + self.inner.settings.pool.timeout;
        let shared = &self.inner.books.shared;
        if !shared.mechanisms.line {
            // r2d2's own wait, in slices when a health check may give up.
            loop {
                let now = Instant::now();
                let left = deadline.saturating_duration_since(now);
                if left.is_zero()
                    || give_up.is_some_and(|give_up| give_up(now))
                    || self.refusing(now).is_some()
                {
                    return (None, start.elapsed());
                }
                let slice = if give_up.is_some() {
                    left.min(POLL)
                } else {
                    left
                };
                if let Ok(conn) = self.inner.pool.get_timeout(slice) {
                    return (Some(hold(conn)), start.elapsed());
                }
            }
        }
        let ticket = line.join();
        self.inner.books.report_waiting();
        let conn = loop {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero()
                || give_up.is_some_and(|give_up| give_up(now))
                || self.refusing(now).is_some()
            {
                // One handed over at the last moment is still served.
                break line.leave(&ticket, shared.can_grow()).and_then(valid);
            }
            let first = line.is_first(&ticket);
            if first {
                // The first in line also takes what reaches the pool rather than the line:
                // connections parked before anyone waited, new ones (opening one when the
                // pool has room and none is being opened: each `get_timeout` that finds no idle
                // connection starts opening one, and an open slower than a poll would
                // otherwise start another on every poll), replacements.
                let found = self
                    .inner
                    .books
                    .parking
                    .steal()
                    .and_then(valid)
                    .or_else(|| {
                        let state = self.inner.pool.state();
                        let may_open = state.connections < self.inner.pool.max_size()
                            && !self.inner.books.shared.connecting();
                        if state.idle_connections > 0 || may_open {
                            self.inner.pool.get_timeout(left.min(POLL)).ok().map(hold)
                        } else {
                            None
                        }
                    });
                if let Some(conn) = found {
                    if let Some(extra) = line.leave(&ticket, shared.can_grow()) {
                        drop(line.hand_off(extra, shared.can_grow()));
                    }
                    break Some(conn);
                }
            }
            // Only the first in line (and a health check, to give up in time) looks around
            // every POLL; the others sleep until served or promoted.
            let slice = if first || give_up.is_some() {
                POLL
            } else {
                BEHIND
            };
            if let Some(handed) = line.wait(&ticket, left.min(slice)) {
                match valid(handed) {
                    Some(conn) => break Some(conn),
                    // Closed on its way back to the pool; this thread keeps its turn.
                    None => line.rejoin_first(&ticket),
                }
            }
        };
        self.inner.books.report_waiting();
        (conn, start.elapsed())
    }
}
