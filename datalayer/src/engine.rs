//! The engine: an r2d2 pool of Diesel connections, the port of the seed's `connection_engine`.
//!
//! [`Engine::connect`] makes one connection first: a server that is not up yet (refused,
//! starting up, too many clients) is retried with exponential backoff and jitter until
//! `DATABASE_CONNECT_DEADLINE`, each retry logged with the redacted target; a wrong password, a
//! missing database or a bad URL fails at once with the database's own message and a hint.
//! Then it builds the pool with every pool setting applied. Each new connection gets its session setup:
//!
//! - PostgreSQL: `statement_timeout`, `lock_timeout` and `idle_in_transaction_session_timeout`
//!   from the settings, when enabled (`application_name` travels in the URL);
//! - SQLite: `foreign_keys = ON`, `busy_timeout` (5 s), `journal_mode = WAL`,
//!   `synchronous = NORMAL`; the file's folder is created when missing.
//!
//! A checkout does not pay a round trip for a connection that was just used: a connection
//! whose last successful query started less than 500 ms ago (HikariCP's
//! `aliveBypassWindowMs`) is trusted, unless a connection of the pool was found dead since;
//! any other is pinged first. A checkout that times out is an
//! [`Error::PoolTimeout`] that says how long it waited and what the pool looked like.
//!
//! While the database refuses connections, the pool retries at most a second apart, so it
//! serves again within about a second of the database's return; once every attempt has failed
//! for 5 s and no connection is open, checkouts fail at once with [`Error::Connect`] instead of
//! waiting out the pool timeout (a switchover's shorter gap is waited out). Every error has an
//! [`ErrorClass`](crate::error::ErrorClass) that says whether to retry.
//!
//! # Connection affinity
//!
//! A connection returned by a thread is parked for that thread's next checkout instead of
//! going back to the shared pool, unless another thread is waiting for the pool (then it goes
//! to the first in line after a short streak); threads that find the pool empty take parked
//! connections before they wait. It pays where the database's work runs in the process:
//! SQLite point reads at 2 and 4 threads served about a sixth more with it; with PostgreSQL on
//! cores of its own it changes throughput by a few per cent either way (the with/without
//! table: `docs/design.md`). [`Engine::state`] counts parked connections apart from idle ones.
//!
//! ```
//! use datalayer::{Engine, Settings};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("app.sqlite3");
//! let settings = Settings::from_pairs([("DATABASE_PATH", path.as_os_str())])?;
//! let engine = Engine::connect(&settings)?;
//! let ping = engine.ping()?;
//! assert!(ping.server_version.starts_with("SQLite"));
//! let mut conn = engine.get()?; // hand `&mut conn` to query functions
//! # drop(conn);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod affinity;
mod boot;
mod checkout;
mod checkouts;
// The MultiConnection derive generates public items without docs.
#[allow(missing_docs)]
mod connection;
mod instrumentation;
mod line;
mod manager;
pub mod metrics;
mod pool_connection;
mod pooled_conn;
mod replica;
mod setup;
mod shared;
pub mod transaction;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use diesel::r2d2::Pool;
use diesel::sql_types::Text;

use self::affinity::Parking;
pub(crate) use self::boot::permanent;
pub use self::connection::{Conn, MultiBackend};
use self::line::Line;
use self::manager::SQLITE_BUSY_TIMEOUT;
use self::manager::{Manager, PoolEvents, RememberErrors, SessionSetup, Shared, clock_ns};
pub use self::pool_connection::PoolConnection;
pub use self::pooled_conn::PooledConn;
pub(crate) use self::pooled_conn::{Held, HeldConn, hand_back};
use self::replica::Replica;
pub use self::replica::ReplicaState;
pub(crate) use self::setup::{backends_of, check_backend};
use self::setup::{create_sqlite_file, housekeeping, pool_name};
use self::shared::Mechanisms;
use crate::config::{Backend, Settings, Target};
use crate::error::Error;
pub use crate::pool_state::{Holder, PoolState};

/// r2d2 retries opening a connection at most half of this apart, so that connections come
/// back within about a second of the database accepting them again (r2d2 would otherwise
/// back off up to half the pool timeout: 15 s by default).
pub(crate) const RECONNECT_CAP: Duration = Duration::from_secs(2);

/// How long every attempt to open a connection must have failed before a checkout that
/// finds no connection open fails at once instead of waiting out the pool timeout: long
/// enough to ride out a switchover (Patroni's takes 2-3 s; requests wait for the new leader
/// rather than fail), short enough that an outage does not hold every request thread.
pub(crate) const OUTAGE_GRACE: Duration = Duration::from_secs(5);

/// The pool of connections and the entry point for SQL.
///
/// `C` is the connection type it hands out: [`Conn`] by default (PostgreSQL or SQLite, as the
/// settings say; [`Engine::connect`]), or `PgConnection` / `SqliteConnection` for an
/// application on one backend ([`Engine::connect_as`]).
///
/// A cheap handle, like r2d2's `Pool`: clone it into every thread that needs the database;
/// every clone serves the same pools. Dropping the last one never blocks: the pools close
/// their idle connections at once and each checked-out one when it is returned.
/// [`Engine::close`] closes with a bounded wait for checked-out connections instead.
pub struct Engine<C: PoolConnection = Conn> {
    inner: Arc<Inner<C>>,
}

impl<C: PoolConnection> Clone for Engine<C> {
    fn clone(&self) -> Self {
        Engine {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// What every handle of an engine shares.
struct Inner<C: PoolConnection> {
    pool: Pool<Manager<C>>,
    /// The pool's manager too, for connections outside the pool (migrations).
    manager: Manager<C>,
    books: Arc<Books<C>>,
    settings: Settings,
    /// How long [`Engine::close`] waits for connection attempts under way.
    close_limit: Duration,
    /// Set once the engine is closed ([`Engine::close`], or the last handle dropped).
    closed: AtomicBool,
    /// The read replica's pool and its lag watch, when the settings name a replica.
    replica: Option<Box<Replica<C>>>,
}

impl<C: PoolConnection> Drop for Inner<C> {
    /// Closes without waiting: no checked-out connection or connection attempt is waited for.
    fn drop(&mut self) {
        self.shut_down(Duration::ZERO, false);
    }
}

impl<C: PoolConnection> Inner<C> {
    /// [`Engine::close`] (`explicit`: it waits for connection attempts and the replica's
    /// checker) or the last handle's drop (it waits for nothing); once: a later call (the drop
    /// after `close`) does nothing.
    fn shut_down(&self, wait: Duration, explicit: bool) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let deadline = Instant::now() + wait;
        if let Some(replica) = &self.replica {
            replica.stop_checking();
        }
        self.shut_down_pool(wait, explicit);
        if let Some(replica) = &self.replica {
            replica
                .engine
                .inner
                .shut_down(deadline.saturating_duration_since(Instant::now()), explicit);
            replica.join_checker(if explicit {
                self.close_limit
            } else {
                Duration::ZERO
            });
        }
    }

    /// [`Inner::shut_down`] for this engine's own pool.
    fn shut_down_pool(&self, wait: Duration, explicit: bool) {
        let shared = &self.books.shared;
        drop(self.books.parking.drain());
        let deadline = Instant::now() + wait;
        // Shutdown only: a short poll, not a wake-up on every return.
        while shared.in_use() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let held = checkouts::holders(shared);
        if !held.is_empty() && explicit {
            tracing::warn!(
                "closing the engine with {} connection(s) still checked out after {wait:?}: {}; \
                 each is closed when returned",
                held.len(),
                held.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        shared.close(if explicit {
            self.close_limit
        } else {
            Duration::ZERO
        });
    }
}

impl<C: PoolConnection> fmt::Debug for Engine<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.backend())
            .field("target", &self.target())
            .field("state", &self.state())
            .field("replica", &self.replica_state())
            .finish()
    }
}

/// What checkouts and returns update.
pub(crate) struct Books<C: PoolConnection> {
    checkouts: checkouts::Scans,
    parking: Arc<Parking<C>>,
    /// The threads waiting for a connection, first come first served.
    line: Line<C>,
    shared: Arc<Shared>,
}

impl<C: PoolConnection> Books<C> {
    /// How long a returning thread may keep its connection while others wait: shorter when
    /// the server runs outside this process.
    #[inline]
    fn streak(&self) -> affinity::Streak {
        if self.shared.server_elsewhere {
            affinity::OUT_OF_PROCESS
        } else {
            affinity::IN_PROCESS
        }
    }

    /// Records the pool's gauges as they are now: connections by state, the limits, the line.
    fn record_gauges(&self) {
        self.shared.record_counts();
        self.shared.report_limits();
        self.report_waiting();
    }

    /// Sets `db.client.connection.pending_requests` to the line's length.
    fn report_waiting(&self) {
        self.shared
            .metrics
            .pending()
            .set(self.line.waiting() as f64);
    }
}

/// The answer to [`Engine::ping`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ping {
    /// Round trip of `SELECT 1` on a pooled connection.
    pub latency: Duration,
    /// `PostgreSQL 15.4 ...` or `SQLite 3.40.1`.
    pub server_version: String,
    /// The role connected as (PostgreSQL); `None` on SQLite.
    pub user: Option<String>,
    /// The database name (PostgreSQL) or file (SQLite).
    pub database: String,
}

impl Engine {
    /// An engine of [`Conn`]s, on whichever backend the settings choose: connects once to
    /// check the database is reachable (failing with its own message if not), then builds the
    /// pool. For SQLite the file's folder is created when missing.
    pub fn connect(settings: &Settings) -> Result<Engine, Error> {
        Engine::connect_as(settings)
    }
}

impl<C: PoolConnection> Engine<C> {
    /// [`Engine::connect`] for another connection type, e.g. `PgConnection` for an
    /// application that runs on PostgreSQL only: `Engine::<PgConnection>::connect_as(&settings)`.
    /// Settings for a backend the type cannot reach are a configuration error.
    pub fn connect_as(settings: &Settings) -> Result<Engine<C>, Error> {
        Engine::connect_inner(settings, None, Mechanisms::default())
    }

    /// [`Engine::connect_as`] with one of the engine's mechanisms over r2d2 off (`parking`,
    /// `line`, `validation-window`, `registry`), for the benchmark's with/without comparisons
    /// only: not part of the API.
    #[cfg(feature = "__bench")]
    #[doc(hidden)]
    pub fn connect_without(settings: &Settings, mechanism: &str) -> Result<Engine<C>, Error> {
        let mechanisms = Mechanisms::without(mechanism).ok_or_else(|| {
            Error::config(
                "mechanism",
                "is not one of parking, line, validation-window, registry",
            )
        })?;
        Engine::connect_inner(settings, None, mechanisms)
    }

    /// [`Engine::connect_as`], with session setup of the application's own: `on_connect` runs
    /// on every connection the engine's pools open (the read replica's included), right after
    /// the engine's own setup (the `DATABASE_*_TIMEOUT` limits on PostgreSQL, the pragmas on
    /// SQLite) and before the connection is first handed out, as r2d2's
    /// `CustomizeConnection::on_acquire` does. An error there fails that connection like a
    /// connect error (a checkout waits for another, then reports it as the pool's last
    /// connection error). The migrations' own connection does not run it.
    ///
    /// ```no_run
    /// use diesel::connection::SimpleConnection;
    /// use diesel::PgConnection;
    ///
    /// let settings = datalayer::Settings::from_env()?;
    /// let engine = datalayer::Engine::<PgConnection>::connect_with(&settings, |conn| {
    ///     conn.batch_execute("SET search_path = app, public; SET work_mem = '64MB'")
    /// })?;
    /// # Ok::<(), datalayer::Error>(())
    /// ```
    pub fn connect_with(
        settings: &Settings,
        on_connect: impl Fn(&mut C) -> diesel::QueryResult<()> + Send + Sync + 'static,
    ) -> Result<Engine<C>, Error> {
        Engine::connect_inner(settings, Some(Arc::new(on_connect)), Mechanisms::default())
    }

    fn connect_inner(
        settings: &Settings,
        on_connect: Option<SessionSetup<C>>,
        mechanisms: Mechanisms,
    ) -> Result<Engine<C>, Error> {
        settings.validate()?;
        check_backend::<C>(settings)?;
        let replica_settings = settings.replica_settings();
        if let Some(replica_settings) = &replica_settings {
            check_backend::<C>(replica_settings)?;
        }
        let shared = Shared::new(&pool_name(settings), settings, mechanisms);
        let manager = Manager::new(settings, Arc::clone(&shared), false, on_connect.clone());
        let target = manager.target().to_string();
        if let Target::Sqlite(sqlite) = &settings.target {
            create_sqlite_file(&sqlite.path).map_err(|reason| Error::Connect {
                target: target.clone(),
                reason,
            })?;
        }
        let first = boot::first_connection(&manager, settings.pool.connect_deadline)?;
        // It proved the database reachable; the pool opens its own.
        drop(first);
        let replica =
            settings
                .replica
                .as_ref()
                .zip(replica_settings)
                .map(|(replica, replica_settings)| {
                    Box::new(Replica::start(replica, &replica_settings, on_connect))
                });
        Ok(Engine::assemble(
            settings,
            shared,
            manager,
            settings.pool.timeout.min(RECONNECT_CAP),
            replica,
        ))
    }

    /// The pool around `manager`, with the books checkouts keep, and `replica`. r2d2 retries a
    /// connection that failed to open after a delay that doubles from 200 ms up to half of
    /// `retry_cap` (its "connection timeout", which bounds nothing else here: checkouts keep
    /// their own deadline).
    fn assemble(
        settings: &Settings,
        shared: Arc<Shared>,
        manager: Manager<C>,
        retry_cap: Duration,
        replica: Option<Box<Replica<C>>>,
    ) -> Engine<C> {
        let pool_settings = &settings.pool;
        let pool = Pool::builder()
            .max_size(pool_settings.max_size)
            .min_idle(pool_settings.min_idle)
            .connection_timeout(retry_cap)
            .idle_timeout(pool_settings.idle_timeout)
            .max_lifetime(pool_settings.max_lifetime)
            .test_on_check_out(true)
            .error_handler(Box::new(RememberErrors(Arc::clone(&shared))))
            .event_handler(Box::new(PoolEvents(Arc::clone(&shared))))
            .build_unchecked(manager.clone());
        let connect_timeout = match &settings.target {
            Target::Postgres(pg) => pg.connect_timeout,
            Target::Sqlite(_) => SQLITE_BUSY_TIMEOUT,
        };
        let books = Arc::new(Books {
            checkouts: checkouts::Scans::default(),
            parking: Parking::new(),
            line: Line::new(),
            shared,
        });
        housekeeping(&books);
        books.shared.report_limits();
        books.report_waiting();
        Engine {
            inner: Arc::new(Inner {
                pool,
                manager,
                books,
                settings: settings.clone(),
                close_limit: connect_timeout + Duration::from_secs(1),
                closed: AtomicBool::new(false),
                replica,
            }),
        }
    }

    /// The settings the engine was built from.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.inner.settings.backend()
    }

    /// The connection URL, redacted.
    pub fn target(&self) -> &str {
        self.inner.manager.target()
    }

    /// Checks a connection out of the pool, waiting at most `DATABASE_POOL_TIMEOUT`.
    ///
    /// The caller's file and line are recorded: a checkout that times out lists every
    /// connection held at that moment with where it was checked out, for how long, and (on
    /// PostgreSQL, when the server answers) its `pg_stat_activity` state.
    #[track_caller]
    pub fn get(&self) -> Result<PooledConn<C>, Error> {
        self.get_from(std::panic::Location::caller(), clock_ns(), None)
    }

    /// Checks a connection out for reading: from the read replica's pool while the replica
    /// is reachable and no more than `DATABASE_REPLICA_MAX_LAG` behind, else from the
    /// primary's, as [`Engine::get`] does. Without a replica setting it *is* `get`.
    ///
    /// A replica connection's sessions are read-only (`default_transaction_read_only`), so a
    /// write through one fails instead of reaching the primary's data by another way.
    /// A checkout from the replica's pool that meets connection errors gives up at once and
    /// the read goes to the primary; the lag check brings reads back when the replica
    /// recovers.
    #[track_caller]
    pub fn read(&self) -> Result<PooledConn<C>, Error> {
        let site = std::panic::Location::caller();
        let clock = clock_ns();
        if let Some(replica) = &self.inner.replica {
            let start = Instant::now();
            if replica.serving(start) {
                let give_up = |now: Instant| replica.failing(start, now);
                match replica.engine.get_from(site, clock, Some(&give_up)) {
                    Ok(conn) => return Ok(conn),
                    Err(error) => replica.checkout_failed(start, &error),
                }
            }
            replica.fell_back();
        }
        self.get_from(site, clock, None)
    }

    /// Where reads go and why, with the replica pool's state; `None` without a replica.
    pub fn replica_state(&self) -> Option<ReplicaState> {
        self.inner.replica.as_ref().map(|replica| replica.state())
    }

    /// Closes the engine, for every handle: no new connections; parked connections closed at
    /// once; waits at most `wait` for the connections checked out to come back (closing each
    /// as it does), and logs, with where they were checked out, those still held when the wait
    /// ends (they are closed when returned). Also waits (at most the connect timeout and a
    /// second) for connection attempts under way, also with a `wait` of zero, so that the
    /// process can exit right after (a process that exits while one is inside libpq can crash
    /// in its exit handlers). The idle connections close with the last handle: this one, when
    /// no clone is left. Dropping the last handle closes without any wait.
    pub fn close(self, wait: Duration) {
        self.inner.shut_down(wait, true);
    }

    /// Records the pool's gauges (`db.client.connection.count` by state, `.pending_requests`,
    /// `.max`, `.idle.min`; the replica's too) with the current recorder, as they are now.
    /// The engine records them every second on a thread of its own; call this where exact
    /// figures matter, e.g. in a `/metrics` handler before rendering. (Counters and histograms
    /// are recorded as things happen.)
    pub fn record_metrics(&self) {
        self.inner.books.record_gauges();
        if let Some(replica) = &self.inner.replica {
            replica.engine.record_metrics();
        }
    }

    /// The connections checked out right now, longest held first.
    pub fn holders(&self) -> Vec<Holder> {
        checkouts::holders(&self.inner.books.shared)
    }

    /// [`Engine::holders`] with each holder's `pg_stat_activity` state, read on a separate
    /// short-lived connection. Skipped when connections have been failing lately, so that a
    /// pool timeout during an outage is not delayed by one more doomed connection attempt.
    fn holders_with_state(&self) -> Vec<Holder> {
        let mut holders = checkouts::holders(&self.inner.books.shared);
        let failing = self
            .inner
            .books
            .shared
            .last_error()
            .is_some_and(|(_, at)| at.elapsed() < self.inner.settings.pool.timeout * 2);
        let pids: Vec<String> = holders
            .iter()
            .filter_map(|h| h.backend_pid.map(|p| p.to_string()))
            .collect();
        if self.backend() != Backend::Postgres || pids.is_empty() || failing {
            return holders;
        }
        #[derive(diesel::QueryableByName)]
        struct Activity {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            pid: i32,
            #[diesel(sql_type = Text)]
            state: String,
        }
        let sql = format!(
            "SELECT pid, CASE WHEN state = 'active' \
                 THEN 'active: ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 80) \
                 ELSE coalesce(state, 'unknown') END AS state \
             FROM pg_stat_activity WHERE pid IN ({})",
            pids.join(", ")
        );
        let Ok(mut conn) = self.inner.manager.establish() else {
            return holders;
        };
        let Ok(rows) = diesel::sql_query(sql).load::<Activity>(&mut conn) else {
            return holders;
        };
        for holder in &mut holders {
            holder.state = rows
                .iter()
                .find(|row| Some(row.pid) == holder.backend_pid)
                .map(|row| row.state.clone());
        }
        holders
    }

    /// How many connections are open, idle, parked and in use, each counted where it is
    /// (read one after another, so a checkout in between can make them disagree by one).
    pub fn state(&self) -> PoolState {
        let state = self.inner.pool.state();
        let shared = &self.inner.books.shared;
        let in_use = shared.in_use();
        PoolState {
            max_size: self.inner.pool.max_size(),
            connections: state.connections,
            idle: state.idle_connections,
            parked: self.inner.books.parking.parked(),
            in_use: u32::try_from(in_use).unwrap_or(u32::MAX),
            waiting: u32::try_from(self.inner.books.line.waiting()).unwrap_or(u32::MAX),
        }
    }

    /// Times a `SELECT 1` round trip on a pooled connection, then reads the server version,
    /// the user and the database in one more query.
    pub fn ping(&self) -> Result<Ping, Error> {
        Engine::ping_on(self.get()?)
    }

    /// [`Engine::ping`] for a health check: the checkout gives up after `limit` (at most the
    /// pool timeout), or as soon as opening a connection fails, instead of waiting out the
    /// pool timeout while the database is down or failing over.
    #[track_caller]
    pub fn ping_within(&self, limit: Duration) -> Result<Ping, Error> {
        let clock = clock_ns();
        let shared = &self.inner.books.shared;
        let start = shared.instant_of(clock);
        let give_up = |now: Instant| {
            now.saturating_duration_since(start) >= limit || shared.failed_to_connect_since(start)
        };
        Engine::ping_on(self.get_from(std::panic::Location::caller(), clock, Some(&give_up))?)
    }

    fn ping_on(mut conn: PooledConn<C>) -> Result<Ping, Error> {
        let start = Instant::now();
        conn.batch_execute("SELECT 1")?;
        let latency = start.elapsed();
        let identity = conn.identity()?;
        Ok(Ping {
            latency,
            server_version: identity.version,
            user: identity.user,
            database: identity.database,
        })
    }

    /// A new connection outside the pool: to `DATABASE_MIGRATION_URL` when it is set (the
    /// direct URL behind a pooler), else where the pool's go. No session setup of the pool's
    /// runs on it.
    pub(crate) fn connect_direct(&self) -> Result<Conn, Error> {
        self.inner
            .manager
            .establish_direct()
            .map_err(|e| Error::Connect {
                target: self.direct_target(),
                reason: e.message,
            })
    }

    /// Where [`Engine::connect_direct`] connects, redacted: `DATABASE_MIGRATION_URL`'s
    /// connection when it is set, else the pool's.
    pub(crate) fn direct_target(&self) -> String {
        self.inner.settings.migration_settings().map_or_else(
            || self.target().to_string(),
            |direct| direct.connection_url().to_string(),
        )
    }
}
