//! The read replica behind [`Engine::read`]: a second pool with its own size, and a thread
//! that measures the replica's lag on a connection of its own.
//!
//! # Where reads go
//!
//! A read goes to the replica while the last lag check found it reachable and no more than
//! `DATABASE_REPLICA_MAX_LAG` behind, and that check is recent (started less than two check
//! intervals and a second ago: a check stuck on a replica that vanished without a word stops
//! vouching for it). Otherwise it goes to the primary, and counts as a fallback.
//!
//! The lag is the replica's own: while WAL it received waits to be replayed, the age of the
//! last transaction it replayed (`clock_timestamp() - pg_last_xact_replay_timestamp()`); zero
//! when it has replayed all it received. An idle primary therefore does not look like a lagging
//! replica. A replica cut off from its primary reports what it has (zero once replayed): lag it
//! cannot see, it cannot measure.
//!
//! A checkout from the replica's pool that meets connection errors (the replica stopped, so
//! its connections were closed and new ones are refused) gives up at once, marks the replica
//! down and is served by the primary; no read waits for the pool timeout on a dead replica.
//! The next check that finds the replica usable sends reads back to it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;

use super::manager::{Manager, SessionSetup, Shared};
use super::metrics::{POOL_LABEL, REPLICA_LAG, REPLICA_UP};
use super::pool_connection::PoolConnection;
use super::setup::pool_name;
use super::{Conn, Engine};
use crate::config::{ReplicaSettings, Settings};
use crate::error::Error;
use crate::pool_state::PoolState;

/// The replica's lag as the replica sees it, in one round trip.
const LAG_SQL: &str = "SELECT pg_is_in_recovery() AS standby, \
     CASE WHEN NOT pg_is_in_recovery() \
               OR coalesce(pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn(), true) \
          THEN 0::float8 \
          ELSE greatest(0, coalesce(extract(epoch FROM clock_timestamp() \
                                    - pg_last_xact_replay_timestamp())::float8, 0)) \
     END AS lag_seconds";

#[derive(diesel::QueryableByName)]
struct Reading {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    standby: bool,
    #[diesel(sql_type = diesel::sql_types::Double)]
    lag_seconds: f64,
}

/// The replica's pool and the thread that checks it.
pub(crate) struct Replica<C: PoolConnection> {
    pub(super) engine: Engine<C>,
    watch: Arc<Watch>,
    checker: Mutex<Option<JoinHandle<()>>>,
}

/// What the checks found, shared by the checker thread and the read path.
struct Watch {
    epoch: Instant,
    /// The last check found the replica usable.
    up: AtomicBool,
    /// When that check started, in nanoseconds after `epoch` (0: never).
    confirmed: AtomicU64,
    /// A confirmation older than this (nanoseconds) no longer counts.
    stale_after: u64,
    max_lag: Duration,
    interval: Duration,
    detail: Mutex<Detail>,
    stop: Mutex<bool>,
    wake: Condvar,
    fallbacks: AtomicU64,
    /// The replica's URL, redacted.
    target: String,
    /// The replica pool's metrics label.
    pool: String,
}

#[derive(Debug, Clone, Default)]
struct Detail {
    reachable: bool,
    lag: Option<Duration>,
    standby: Option<bool>,
    reason: Option<String>,
    checked: Option<Instant>,
}

/// Where reads go and why: [`Engine::replica_state`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplicaState {
    /// The replica's URL, password redacted.
    pub target: String,
    /// Whether reads go to the replica now.
    pub serving: bool,
    /// Whether the last check reached the replica (it may still lag too far to serve).
    pub reachable: bool,
    /// The lag the last successful check measured.
    pub lag: Option<Duration>,
    /// Whether that check found the server still a standby (`false`: it was promoted).
    pub standby: Option<bool>,
    /// Why reads go to the primary, when they do.
    pub reason: Option<String>,
    /// How long ago the last check ended.
    pub checked_ago: Option<Duration>,
    /// Reads the primary served because the replica could not, since the engine was made.
    pub fallbacks: u64,
    /// The replica pool's connections.
    pub pool: PoolState,
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.reason, self.serving) {
            (_, true) => write!(f, "serving reads")?,
            (Some(reason), false) => write!(f, "reads go to the primary: {reason}")?,
            (None, false) => write!(f, "reads go to the primary")?,
        }
        if let Some(lag) = self.lag {
            write!(f, "; lag {lag:.1?}")?;
        }
        write!(
            f,
            "; {} reads fell back; pool {}",
            self.fallbacks, self.pool
        )
    }
}

impl<C: PoolConnection> Replica<C> {
    /// Builds the replica's pool, checks the replica once (so that reads right after
    /// `Engine::connect` already go where they should), and starts the checker thread.
    pub(super) fn start(
        replica: &ReplicaSettings,
        settings: &Settings,
        on_connect: Option<SessionSetup<C>>,
    ) -> Replica<C> {
        let name = pool_name(settings);
        let shared = Shared::new(&name, settings, super::Mechanisms::default());
        let manager = Manager::<C>::new(settings, Arc::clone(&shared), true, on_connect);
        // A replica that comes back must find its pool retrying soon, not after r2d2's
        // backoff has grown to the pool timeout: retries at most half a check interval apart.
        let retry_cap = (replica.check_interval / 2).max(ReplicaSettings::MIN_CHECK_INTERVAL);
        let engine = Engine::assemble(settings, shared, manager.clone(), retry_cap, None);
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let watch = Arc::new(Watch {
            epoch: Instant::now(),
            up: AtomicBool::new(false),
            confirmed: AtomicU64::new(0),
            stale_after: nanos(replica.check_interval * 2 + Duration::from_secs(1)),
            max_lag: replica.max_lag,
            interval: replica.check_interval,
            detail: Mutex::new(Detail {
                reason: Some("not checked yet".into()),
                ..Detail::default()
            }),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            fallbacks: AtomicU64::new(0),
            target: manager.target().to_string(),
            pool: name,
        });
        let mut conn = None;
        let began = Instant::now();
        let first = measure(&manager, &mut conn);
        watch.record(began, first);
        if !watch.up.load(Ordering::Acquire) {
            let why = watch
                .detail
                .lock()
                .ok()
                .and_then(|d| d.reason.clone())
                .unwrap_or_default();
            tracing::warn!(
                "reads go to the primary until the read replica {} can serve them: {why}",
                watch.target
            );
        }
        let checker = {
            let watch = Arc::clone(&watch);
            std::thread::Builder::new()
                .name("datalayer-replica-check".into())
                .spawn(move || {
                    while !watch.pause() {
                        let began = Instant::now();
                        let outcome = measure(&manager, &mut conn);
                        watch.record(began, outcome);
                    }
                })
        };
        let checker = checker
            .map_err(|e| tracing::warn!("cannot start the replica's lag check thread: {e}"))
            .ok();
        Replica {
            engine,
            watch,
            checker: Mutex::new(checker),
        }
    }

    /// Whether reads go to the replica at `now`.
    pub(super) fn serving(&self, now: Instant) -> bool {
        self.watch.serving(now)
    }

    /// Whether a replica checkout that began at `start` should give up at `now`: the replica
    /// is no longer served, or connecting to it failed since.
    pub(super) fn failing(&self, start: Instant, now: Instant) -> bool {
        !self.watch.serving(now) || self.failed_to_connect_since(start)
    }

    fn failed_to_connect_since(&self, start: Instant) -> bool {
        self.engine
            .inner
            .books
            .shared
            .failed_to_connect_since(start)
    }

    /// A replica checkout that began at `start` failed: when connecting failed, reads leave
    /// the replica until a check finds it usable again (a plain pool timeout does not).
    pub(super) fn checkout_failed(&self, start: Instant, error: &Error) {
        if self.failed_to_connect_since(start) {
            if let Ok(mut detail) = self.watch.detail.lock() {
                detail.reachable = false;
            }
            let why = match self.engine.inner.books.shared.last_error() {
                Some((message, _)) => format!("cannot connect: {message}"),
                None => error.to_string(),
            };
            self.watch.down(why);
        }
    }

    /// Counts a read the primary served instead.
    pub(super) fn fell_back(&self) {
        self.watch.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.engine
            .inner
            .books
            .shared
            .metrics
            .replica_fallbacks()
            .increment(1);
    }

    pub(super) fn state(&self) -> ReplicaState {
        let detail = self
            .watch
            .detail
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        let now = Instant::now();
        let serving = self.watch.serving(now);
        let reason = match (&detail.reason, serving) {
            (_, true) => None,
            (Some(reason), false) => Some(reason.clone()),
            (None, false) => Some(format!(
                "no check has vouched for the replica in the last {:?}",
                Duration::from_nanos(self.watch.stale_after)
            )),
        };
        ReplicaState {
            target: self.watch.target.clone(),
            serving,
            reachable: detail.reachable,
            lag: detail.lag,
            standby: detail.standby,
            reason,
            checked_ago: detail.checked.map(|at| now.saturating_duration_since(at)),
            fallbacks: self.watch.fallbacks.load(Ordering::Relaxed),
            pool: self.engine.state(),
        }
    }

    /// Asks the checker thread to stop (it ends after the check under way, if any).
    pub(super) fn stop_checking(&self) {
        if let Ok(mut stop) = self.watch.stop.lock() {
            *stop = true;
        }
        self.watch.wake.notify_all();
    }

    /// Waits up to `limit` for the checker thread to end.
    pub(super) fn join_checker(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let Some(checker) = self
            .checker
            .lock()
            .ok()
            .and_then(|mut checker| checker.take())
        else {
            return;
        };
        // Shutdown only: a short poll.
        while !checker.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if checker.is_finished() {
            let _ = checker.join();
        }
    }
}

/// One lag check, on the checker's own connection (opened when missing, dropped on failure).
fn measure<C: PoolConnection>(
    manager: &Manager<C>,
    conn: &mut Option<Conn>,
) -> Result<Reading, String> {
    let mut open = match conn.take() {
        Some(open) => open,
        None => manager
            .establish()
            .map_err(|e| format!("cannot connect: {e}"))?,
    };
    let reading = diesel::sql_query(LAG_SQL)
        .get_result::<Reading>(&mut open)
        .map_err(|e| format!("the lag check failed: {e}"))?;
    *conn = Some(open);
    Ok(reading)
}

impl Watch {
    fn since_epoch(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn serving(&self, now: Instant) -> bool {
        self.up.load(Ordering::Acquire)
            && self
                .since_epoch(now)
                .saturating_sub(self.confirmed.load(Ordering::Acquire))
                < self.stale_after
    }

    /// Waits one interval; whether the engine asked the checker to stop.
    fn pause(&self) -> bool {
        let Ok(stop) = self.stop.lock() else {
            return true;
        };
        match self
            .wake
            .wait_timeout_while(stop, self.interval, |stop| !*stop)
        {
            Ok((stop, _)) => *stop,
            Err(_) => true,
        }
    }

    /// Records a check that began at `began`.
    fn record(&self, began: Instant, outcome: Result<Reading, String>) {
        let reading = match outcome {
            Ok(reading) => reading,
            Err(why) => {
                if let Ok(mut detail) = self.detail.lock() {
                    detail.reachable = false;
                }
                return self.down(why);
            }
        };
        let lag = Duration::try_from_secs_f64(reading.lag_seconds).unwrap_or(Duration::MAX);
        ::metrics::gauge!(REPLICA_LAG, POOL_LABEL => self.pool.clone()).set(lag.as_secs_f64());
        if let Ok(mut detail) = self.detail.lock() {
            detail.reachable = true;
            detail.lag = Some(lag);
            detail.standby = Some(reading.standby);
            detail.checked = Some(Instant::now());
        }
        if lag > self.max_lag {
            return self.down(format!(
                "{lag:.1?} behind, over DATABASE_REPLICA_MAX_LAG ({:?})",
                self.max_lag
            ));
        }
        if let Ok(mut detail) = self.detail.lock() {
            detail.reason = None;
        }
        self.confirmed
            .store(self.since_epoch(began), Ordering::Release);
        ::metrics::gauge!(REPLICA_UP, POOL_LABEL => self.pool.clone()).set(1.0);
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(
                "reads go to the read replica {} (lag {lag:.1?})",
                self.target
            );
        }
    }

    /// Sends reads to the primary, for `why`.
    fn down(&self, why: String) {
        ::metrics::gauge!(REPLICA_UP, POOL_LABEL => self.pool.clone()).set(0.0);
        let was_up = self.up.swap(false, Ordering::AcqRel);
        if was_up {
            tracing::warn!(
                "reads go to the primary: the read replica {} {why}",
                self.target
            );
        }
        if let Ok(mut detail) = self.detail.lock() {
            detail.checked = Some(Instant::now());
            detail.reason = Some(why);
        }
    }
}
