//! What the manager, the error handler, the instrumentation of each connection and the engine
//! share: the pool's clock and death epoch, lifetimes, connection attempts, the gauges'
//! counts, the metric keys, and which mechanisms are on.

use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::manager::Slot;
use super::pool_connection::PoolConnection;
use crate::config::Settings;

/// What the instrumentation learns about one connection. Written by the thread using the
/// connection on every query and checkout: on cache lines of its own, so that two threads'
/// connections never share one (no false sharing between threads).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Health {
    /// A query on it failed with a closed connection.
    pub(crate) dead: AtomicBool,
    /// When its last successful query started (or it was made), in [`Shared::now`] units.
    pub(crate) last_ok: AtomicU64,
    /// When it was made, in [`Shared::now`] units (`DATABASE_POOL_MAX_LIFETIME` counts from it).
    pub(crate) born: AtomicU64,
    /// Past its lifetime or idle timeout: closed, not reused, when it goes back to the pool.
    pub(crate) retired: AtomicBool,
    /// Where it is checked out from, `None` while it is not (see `checkouts.rs`). Locked by
    /// the thread holding the connection at checkout and return, and by whoever lists the
    /// holders: uncontended on the checkout's path.
    pub(crate) holder: Mutex<Option<&'static Location<'static>>>,
    /// Since when it is checked out, in [`Shared::now`] units.
    pub(crate) held_since: AtomicU64,
    /// Whether this checkout was reported as overdue (`DATABASE_POOL_LEAK_THRESHOLD`).
    pub(crate) leak_warned: AtomicBool,
    /// The PostgreSQL backend pid, for diagnostics.
    pub(crate) backend_pid: Option<i32>,
}

/// The connections the pool has open, written when one is opened or closed: on cache lines of
/// their own, so that those writes do not evict what every checkout reads (`epoch`,
/// `last_dead`). How many are in use is not counted here but read from the connections
/// themselves (see [`Shared::in_use`]): a counter every checkout and return wrote would move a
/// cache line between the cores twice per read.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counts {
    pub(crate) open: AtomicI64,
}

/// State shared by the manager, the error handler and the instrumentation of each connection.
#[derive(Debug)]
pub(crate) struct Shared {
    epoch: Instant,
    /// [`clock_ns`] read just after `epoch`.
    epoch_raw: u64,
    /// Nanoseconds after `epoch` at which a connection was last found dead, plus one (0: never).
    last_dead: AtomicU64,
    /// Connections made before this moment ([`Shared::now`] units; 0: none) are retired: a
    /// connection met a sign of failover (the primary became read-only, or was shut down).
    retire_before: AtomicU64,
    last_error: Mutex<Option<(String, Instant)>>,
    /// Since when every attempt to open a connection has failed (`None` after a success).
    failing_since: Mutex<Option<Instant>>,
    /// Connections the pool holds open, and how many are checked out (for the gauges).
    pub(crate) counts: Counts,
    /// This pool's metric keys.
    pub(crate) metrics: super::metrics::PoolMetrics,
    /// Connection attempts under way, and whether the engine is closing (no new attempts).
    attempts: Mutex<Attempts>,
    attempts_done: Condvar,
    /// The pool's connections, open or being opened: at most `max_size`.
    pub(super) pool_slots: AtomicU64,
    pub(super) max_size: u64,
    /// The idle connections the pool keeps (`DATABASE_POOL_MIN_IDLE`, else the max size).
    min_idle: u64,
    /// Every connection the pool opened that is still open (pruned as they close): where
    /// [`checkouts::holders`](super::checkouts::holders) looks.
    connections: Mutex<Vec<Weak<Health>>>,
    /// The database runs outside this process (PostgreSQL, on another machine in production),
    /// not in it (SQLite): it sets how long the line's streak may be (`affinity.rs`).
    pub(crate) server_elsewhere: bool,
    /// Which of the engine's mechanisms over r2d2 are on (all, except in the benchmark's
    /// with/without comparisons).
    pub(crate) mechanisms: Mechanisms,
    /// `DATABASE_POOL_MAX_LIFETIME` and `DATABASE_POOL_IDLE_TIMEOUT` in [`Shared::now`] units.
    lifetime: Option<u64>,
    idle_timeout: Option<u64>,
}

/// The engine's mechanisms over a plain r2d2 pool that the benchmark compares with and
/// without (`examples/bench/mechanisms.rs`); every one is on outside the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mechanisms {
    /// A returned connection is parked for its thread's next checkout (`affinity.rs`), with
    /// the streak and the reaper of parked connections. Needs the line.
    pub(crate) parking: bool,
    /// The line of waiting threads and the hand-off to its first (`line.rs`); without it a
    /// checkout that finds no idle connection waits in r2d2's own way.
    pub(crate) line: bool,
    /// A connection used within the last 500 ms is not pinged at checkout (`manager.rs`).
    pub(crate) validation_window: bool,
    /// Every checkout records its site and time (`checkouts.rs`), for pool-timeout errors and
    /// leak warnings.
    pub(crate) registry: bool,
}

impl Default for Mechanisms {
    fn default() -> Self {
        Mechanisms {
            parking: true,
            line: true,
            validation_window: true,
            registry: true,
        }
    }
}

impl Mechanisms {
    /// Every mechanism but the one named; `None` for an unknown name.
    #[cfg(feature = "__bench")]
    pub(crate) fn without(name: &str) -> Option<Mechanisms> {
        let mut all = Mechanisms::default();
        match name {
            "parking" => all.parking = false,
            // Parking needs the line (a waiter in r2d2's own wait never sees parked ones).
            "line" => (all.line, all.parking) = (false, false),
            "validation-window" => all.validation_window = false,
            "registry" => all.registry = false,
            _ => return None,
        }
        Some(all)
    }
}

#[derive(Debug, Default)]
struct Attempts {
    in_flight: usize,
    closing: bool,
}

impl Shared {
    pub(crate) fn new(pool: &str, settings: &Settings, mechanisms: Mechanisms) -> Arc<Shared> {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Read back to back: `at` (from `epoch`) and `since_epoch` (from `epoch_raw`) then agree
        // within a clock read.
        let epoch = Instant::now();
        let epoch_raw = clock_ns();
        Arc::new(Shared {
            metrics: super::metrics::PoolMetrics::new(pool),
            pool_slots: AtomicU64::new(0),
            max_size: u64::from(settings.pool.max_size),
            min_idle: u64::from(settings.pool.min_idle.unwrap_or(settings.pool.max_size)),
            connections: Mutex::new(Vec::new()),
            server_elsewhere: settings.backend() == crate::config::Backend::Postgres,
            mechanisms,
            lifetime: settings.pool.max_lifetime.map(nanos),
            idle_timeout: settings.pool.idle_timeout.map(nanos),
            epoch,
            epoch_raw,
            last_dead: AtomicU64::new(0),
            retire_before: AtomicU64::new(0),
            last_error: Mutex::new(None),
            failing_since: Mutex::new(None),
            counts: Counts::default(),
            attempts: Mutex::new(Attempts::default()),
            attempts_done: Condvar::new(),
        })
    }

    /// Registers a connection attempt, unless the engine is closing.
    pub(super) fn begin_attempt(&self) -> bool {
        let Ok(mut attempts) = self.attempts.lock() else {
            return false;
        };
        if attempts.closing {
            return false;
        }
        attempts.in_flight += 1;
        true
    }

    /// Whether a connection is being opened right now.
    pub(super) fn connecting(&self) -> bool {
        self.attempts
            .lock()
            .is_ok_and(|attempts| attempts.in_flight > 0)
    }

    pub(super) fn end_attempt(&self) {
        if let Ok(mut attempts) = self.attempts.lock() {
            attempts.in_flight -= 1;
            self.attempts_done.notify_all();
        }
    }

    /// Refuses new connection attempts and waits up to `limit` for those under way.
    ///
    /// r2d2 opens connections on background threads and does not wait for them when the pool
    /// is dropped. A process that exits while one of them is inside libpq's TLS handshake
    /// crashes in OpenSSL's exit handler, so the engine drains them first.
    pub(crate) fn close(&self, limit: Duration) {
        let Ok(mut attempts) = self.attempts.lock() else {
            return;
        };
        attempts.closing = true;
        let deadline = Instant::now() + limit;
        while attempts.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.attempts_done.wait_timeout(attempts, left) {
                Ok((guard, _)) => attempts = guard,
                Err(_) => return,
            }
        }
    }

    /// Sets the gauges of the pool's limits (again when a connection opens, so that a recorder
    /// installed after the engine was made shows them too).
    pub(crate) fn report_limits(&self) {
        self.metrics.max().set(self.max_size as f64);
        self.metrics.idle_min().set(self.min_idle as f64);
    }

    /// How many of the pool's connections are checked out now (each records its holder).
    pub(crate) fn in_use(&self) -> usize {
        self.connections()
            .iter()
            .filter(|health| super::checkouts::site_of(health).is_some())
            .count()
    }

    /// Records `db.client.connection.count` (used and idle) as they are now. Not done by every
    /// checkout and return (see [`Counts`]): by the engine's housekeeping thread every second,
    /// and by [`Engine::record_metrics`](super::Engine::record_metrics) on demand.
    pub(crate) fn record_counts(&self) {
        let in_use = i64::try_from(self.in_use()).unwrap_or(i64::MAX);
        let open = self.counts.open.load(Ordering::Relaxed);
        self.metrics.in_use().set(in_use as f64);
        self.metrics.idle().set((open - in_use).max(0) as f64);
    }

    /// Adds a connection the pool opened to [`Shared::connections`].
    pub(super) fn track(&self, health: &Arc<Health>) {
        if let Ok(mut connections) = self.connections.lock() {
            connections.retain(|c| c.strong_count() > 0);
            connections.push(Arc::downgrade(health));
        }
    }

    /// The connections the pool opened that are still open.
    pub(super) fn connections(&self) -> Vec<Arc<Health>> {
        self.connections
            .lock()
            .map(|connections| connections.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// Nanoseconds since the engine was made, plus one (so that 0 can mean "never").
    pub(super) fn now(&self) -> u64 {
        self.since_epoch(clock_ns())
    }

    /// A [`clock_ns`] reading in [`Shared::now`] units.
    #[inline]
    pub(super) fn since_epoch(&self, clock: u64) -> u64 {
        clock.saturating_sub(self.epoch_raw).saturating_add(1)
    }

    /// A [`clock_ns`] reading as an `Instant`, for the slow paths that compute with them.
    pub(super) fn instant_of(&self, clock: u64) -> Instant {
        self.epoch + Duration::from_nanos(clock.saturating_sub(self.epoch_raw))
    }

    /// `instant` in [`Shared::now`] units (within the few ns between reading `epoch` and
    /// `epoch_raw` of [`Shared::since_epoch`]).
    pub(super) fn at(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Whether a connection is past `DATABASE_POOL_MAX_LIFETIME` (counted from when it was
    /// made) or `DATABASE_POOL_IDLE_TIMEOUT` (counted from its last successful query) at `now`
    /// (a [`Shared::now`] value).
    #[inline]
    pub(super) fn expired(&self, health: &Health, now: u64) -> bool {
        let since = |moment: &AtomicU64| now.saturating_sub(moment.load(Ordering::Acquire));
        health.born.load(Ordering::Acquire) < self.retire_before.load(Ordering::Acquire)
            || self
                .lifetime
                .is_some_and(|limit| since(&health.born) >= limit)
            || self
                .idle_timeout
                .is_some_and(|limit| since(&health.last_ok) >= limit)
    }

    /// Retires `slot` if it has expired at `now`; whether it did.
    pub(crate) fn retire_if_expired<C: PoolConnection>(
        &self,
        slot: &Slot<C>,
        now: Instant,
    ) -> bool {
        let expired = self.expired(&slot.health, self.at(now));
        if expired {
            slot.retire();
        }
        expired
    }

    /// How often parked connections are checked against the lifetime and idle timeout: a
    /// quarter of the shorter one, between 50 ms and 1 s; `None` when neither is set.
    pub(crate) fn reap_every(&self) -> Option<Duration> {
        let shorter = match (self.lifetime, self.idle_timeout) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        };
        Some(
            Duration::from_nanos(shorter / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(1)),
        )
    }

    /// Whether the pool may still open connections (those open or being opened are fewer than
    /// its size).
    pub(crate) fn can_grow(&self) -> bool {
        self.pool_slots.load(Ordering::Acquire) < self.max_size
    }

    /// Retires every connection made before now: after a failover, connections to the old
    /// primary answer (read-only) or are about to be cut, and new ones find the new primary.
    pub(super) fn retire_all_made_before_now(&self) {
        let now = self.now();
        if self.retire_before.fetch_max(now, Ordering::AcqRel) < now {
            tracing::warn!(
                "a connection met a sign of failover (a read-only primary, an administrator \
                 shutdown, a closed connection): every connection made before it is retired"
            );
        }
    }

    pub(super) fn mark_dead(&self) {
        self.last_dead.fetch_max(self.now(), Ordering::AcqRel);
    }

    /// Was a connection found dead at or after `moment` (a [`Shared::now`] value)?
    #[inline]
    pub(super) fn dead_since(&self, moment: u64) -> bool {
        self.last_dead.load(Ordering::Acquire) >= moment
    }

    /// The most recent error met while connecting, already free of secrets, and when.
    pub(crate) fn last_error(&self) -> Option<(String, Instant)> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or(None)
    }

    /// Whether opening a connection failed at or after `start`.
    pub(crate) fn failed_to_connect_since(&self, start: Instant) -> bool {
        self.last_error().is_some_and(|(_, at)| at >= start)
    }

    pub(super) fn set_last_error(&self, message: String) {
        let now = Instant::now();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((message, now));
        }
        if let Ok(mut since) = self.failing_since.lock() {
            since.get_or_insert(now);
        }
    }

    /// A connection was opened: the failures, if any, are over.
    pub(super) fn connected(&self) {
        if let Ok(mut since) = self.failing_since.lock() {
            *since = None;
        }
    }

    /// How long every attempt to open a connection has been failing, at `now`.
    pub(crate) fn failing_for(&self, now: Instant) -> Option<Duration> {
        let since = (*self.failing_since.lock().ok()?)?;
        Some(now.saturating_duration_since(since))
    }
}

/// The monotonic clock in nanoseconds since the first reading in this process, as one
/// integer: a checkout and its return read the time once each, and stamps kept as integers
/// fit in atomics. `Instant` on every platform, so the engine calls no platform clock API.
#[inline]
pub(crate) fn clock_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
