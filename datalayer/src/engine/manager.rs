//! The r2d2 connection manager: establishes the configured backend, runs the per-session
//! setup, and decides cheaply whether a pooled connection may be handed out.
//!
//! # Validation
//!
//! r2d2's stock manager runs `SELECT 1` before every checkout, a full round trip that halves
//! throughput for short queries. Here a connection is pinged at checkout only when one of these
//! holds:
//!
//! - its last successful query ended more than [`VALIDATION_WINDOW`] ago (500 ms, HikariCP's
//!   `aliveBypassWindowMs`): a connection that just answered is trusted;
//! - some connection of this pool was found dead after this one last answered: a dead peer
//!   usually means the server restarted or dropped every backend, so every connection not
//!   heard from since is suspect (SQLAlchemy invalidates its whole pool for the same reason).
//!
//! Beyond that, a sign of failover (a closed connection, a write refused as read-only, an
//! administrator shutdown) retires every connection of the pool made before it: such a
//! connection is not handed out again, whether or not it would answer a ping.
//!
//! The clock is the start of the last *successful query*, not the return to the pool: a
//! connection whose query succeeded just before the server dropped it, but that came back
//! after another one was found dead, must be checked.
//!
//! A connection is found dead when a query on it fails with Diesel's `ClosedConnection` (seen
//! through Diesel's instrumentation hook, `instrumentation.rs`, since `PgConnection::is_broken`
//! only reports a broken transaction) or when a validation ping fails. A dead connection is
//! never put back in the pool.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use diesel::r2d2::{HandleError, ManageConnection};
use secrecy::ExposeSecret;

use super::Conn;
use super::instrumentation::{About, DeathWatch};
use super::pool_connection::PoolConnection;
pub(crate) use super::shared::{Health, Shared, clock_ns};
use crate::config::{Backend, ConnectionUrl, Settings, Target};

/// A connection whose last successful query started this recently is handed out without a
/// ping, unless a connection of the pool was found dead since.
pub(crate) const VALIDATION_WINDOW: Duration = Duration::from_millis(500);

/// How long SQLite waits on a locked database before failing with `SQLITE_BUSY`.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection and what validation needs to know about it.
pub struct Slot<C> {
    /// Boxed: a checkout and a return move the slot a few times, and a connection is several
    /// hundred bytes, which moving inline would copy each time.
    pub(crate) conn: Box<C>,
    /// What validation and diagnostics know of it, the backend pid included.
    pub(crate) health: Arc<Health>,
}

impl<C: PoolConnection> Slot<C> {
    /// Whether it may be handed out again without going through the pool's checks.
    pub(crate) fn reusable(&mut self) -> bool {
        !self.health.dead.load(Ordering::Acquire)
            && !self.health.retired.load(Ordering::Acquire)
            && !self.conn.is_broken()
    }

    /// Marks it for closing when it goes back to the pool (past its lifetime or idle timeout).
    pub(crate) fn retire(&self) {
        self.health.retired.store(true, Ordering::Release);
    }
}

/// Why a connection could not be made or kept. The message never holds a secret.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    pub(crate) message: String,
    /// A pooled connection failed its check on the way out (closed, expired, a failed
    /// ping): not a failure to connect, which r2d2 reports through the same handler.
    pub(crate) checking: bool,
}

impl ConnectError {
    /// Opening a connection failed.
    pub(crate) fn opening(message: impl Into<String>) -> ConnectError {
        ConnectError {
            message: message.into(),
            checking: false,
        }
    }

    /// A pooled connection may not be handed out.
    fn checking(message: impl Into<String>) -> ConnectError {
        ConnectError {
            message: message.into(),
            checking: true,
        }
    }
}

/// Establishes connections of type `C` to the configured database.
pub(crate) struct Manager<C> {
    backend: Backend,
    url: ConnectionUrl,
    /// The settings, when each new connection must read the password file again.
    password_file: Option<Arc<Settings>>,
    /// The direct connection's settings (`DATABASE_MIGRATION_URL`) for migrations.
    migration: Option<Arc<Settings>>,
    /// `DATABASE_POOLER=transaction`: no named prepared statements, no backend pid.
    transaction_pooler: bool,
    /// Run on every new pooled connection; empty when there is nothing to set.
    session_sql: String,
    shared: Arc<Shared>,
    echo: bool,
    slow: Option<Duration>,
    about: Arc<About>,
    /// The application's own session setup, run after `session_sql`.
    on_connect: Option<SessionSetup<C>>,
    connection: std::marker::PhantomData<fn() -> C>,
}

/// An application's own setup of each new pooled connection (see
/// [`Engine::connect_with`](super::Engine::connect_with)).
pub(crate) type SessionSetup<C> = Arc<dyn Fn(&mut C) -> diesel::QueryResult<()> + Send + Sync>;

impl<C> Clone for Manager<C> {
    fn clone(&self) -> Self {
        Manager {
            backend: self.backend,
            url: self.url.clone(),
            password_file: self.password_file.clone(),
            migration: self.migration.clone(),
            transaction_pooler: self.transaction_pooler,
            session_sql: self.session_sql.clone(),
            shared: Arc::clone(&self.shared),
            echo: self.echo,
            slow: self.slow,
            about: Arc::clone(&self.about),
            on_connect: self.on_connect.clone(),
            connection: std::marker::PhantomData,
        }
    }
}

impl<C> std::fmt::Debug for Manager<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("backend", &self.backend)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// `SET` statements for the PostgreSQL session limits that are enabled, or pragmas for SQLite.
fn session_sql(settings: &Settings) -> String {
    match &settings.target {
        Target::Postgres(pg) => [
            ("statement_timeout", pg.statement_timeout),
            ("lock_timeout", pg.lock_timeout),
            (
                "idle_in_transaction_session_timeout",
                pg.idle_in_transaction_timeout,
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|d| format!("SET {name} = {};", d.as_millis())))
        .collect::<Vec<_>>()
        .join(" "),
        // The busy timeout is set when the connection is opened (`Manager::establish_to`).
        Target::Sqlite(_) => {
            "PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
                .to_string()
        }
    }
}

impl<C: PoolConnection> Manager<C> {
    /// The manager of the pool `settings` describe; `read_only` for a read replica's pool,
    /// whose sessions then refuse writes (`default_transaction_read_only`; not behind a
    /// transaction pooler, which keeps no session setting, where the standby refuses them).
    pub(crate) fn new(
        settings: &Settings,
        shared: Arc<Shared>,
        read_only: bool,
        on_connect: Option<SessionSetup<C>>,
    ) -> Manager<C> {
        let password_file = match &settings.target {
            Target::Postgres(pg) if pg.password_file.is_some() => Some(Arc::new(settings.clone())),
            _ => None,
        };
        let transaction_pooler =
            matches!(&settings.target, Target::Postgres(pg) if pg.transaction_pooler);
        Manager {
            backend: settings.backend(),
            url: settings.connection_url(),
            password_file,
            migration: settings.migration_settings().map(Arc::new),
            transaction_pooler,
            session_sql: if read_only && !transaction_pooler {
                format!(
                    "{} SET default_transaction_read_only = on;",
                    session_sql(settings)
                )
                .trim_start()
                .to_string()
            } else {
                session_sql(settings)
            },
            shared,
            echo: settings.pool.echo,
            slow: settings.pool.slow_query_threshold,
            about: Arc::new(About::of(settings)),
            on_connect,
            connection: std::marker::PhantomData,
        }
    }

    /// The redacted URL, for messages.
    pub(crate) fn target(&self) -> &str {
        self.url.redacted()
    }

    /// Opens a [`Conn`] (migrations, diagnostics); see [`Manager::establish_as`].
    pub(crate) fn establish(&self) -> Result<Conn, ConnectError> {
        self.establish_as()
    }

    /// Opens a connection to the configured backend, reporting that backend's own error.
    /// This is the one place the URL's secret is exposed.
    pub(crate) fn establish_as<T: PoolConnection>(&self) -> Result<T, ConnectError> {
        self.establish_to::<T>(self.password_file.as_deref())
    }

    /// [`Manager::establish_as`] to the URL of `settings` when given (read again: a password
    /// file, a migration URL), else to the engine's own.
    fn establish_to<T: PoolConnection>(
        &self,
        settings: Option<&Settings>,
    ) -> Result<T, ConnectError> {
        if !self.shared.begin_attempt() {
            return Err(ConnectError::opening("the engine is shutting down"));
        }
        // A password file is read again for each connection, so a rotated secret is used as
        // soon as new connections are made.
        let current;
        let url = match settings {
            None => &self.url,
            Some(settings) => match settings.current_connection_url() {
                Ok(url) => {
                    current = url;
                    &current
                }
                Err(why) => {
                    self.shared.end_attempt();
                    return Err(ConnectError::opening(why));
                }
            },
        };
        let result = T::establish_to(self.backend, url.expose_secret()).and_then(|mut conn| {
            // SQLite opens a file lazily: read its header now, so that a file that is not a
            // database fails here, as a connect error about DATABASE_PATH. The busy timeout
            // first: without it a read that meets another connection's lock (a checkpoint, a
            // migration) fails at once with "database is locked" (seen when a server's pool
            // filled while its boot's connection was still at work).
            if self.backend == Backend::Sqlite {
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {}; PRAGMA schema_version",
                    SQLITE_BUSY_TIMEOUT.as_millis()
                ))
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            }
            Ok(conn)
        });
        self.shared.end_attempt();
        // libpq's messages span lines ("...\n\tIs the server running..."): keep one line.
        result.map_err(|e| {
            let message = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            ConnectError::opening(url.scrub(&message))
        })
    }

    /// A connection outside the pool, to `DATABASE_MIGRATION_URL` when it is set.
    pub(crate) fn establish_direct(&self) -> Result<Conn, ConnectError> {
        match &self.migration {
            Some(direct) => self.establish_to::<Conn>(Some(direct)),
            None => self.establish(),
        }
    }
}

impl<C: PoolConnection> Manager<C> {
    /// r2d2's validation, with the time already read by the caller ([`clock_ns`]; a clock
    /// read costs as much as the rest of an idle checkout on some virtual machines).
    #[inline]
    pub(crate) fn is_valid_at(&self, slot: &mut Slot<C>, clock: u64) -> Result<(), ConnectError> {
        let now = self.shared.since_epoch(clock);
        let last_ok = slot.health.last_ok.load(Ordering::Acquire);
        let window = u64::try_from(VALIDATION_WINDOW.as_nanos()).unwrap_or(u64::MAX);
        if !slot.health.dead.load(Ordering::Acquire)
            && !self.shared.expired(&slot.health, now)
            && now.saturating_sub(last_ok) < window
            && self.shared.mechanisms.validation_window
            && !self.shared.dead_since(last_ok)
        {
            return Ok(());
        }
        self.check(slot, now)
    }

    /// [`Manager::is_valid_at`] for a connection that may not be handed out as it is: closed,
    /// expired, or not used recently (a ping), at `now` ([`Shared::now`] units).
    #[cold]
    fn check(&self, slot: &mut Slot<C>, now: u64) -> Result<(), ConnectError> {
        if slot.health.dead.load(Ordering::Acquire) {
            return Err(ConnectError::checking("the connection was closed"));
        }
        if self.shared.expired(&slot.health, now) {
            slot.retire();
            return Err(ConnectError::checking(
                "past DATABASE_POOL_MAX_LIFETIME or DATABASE_POOL_IDLE_TIMEOUT",
            ));
        }
        slot.conn.ping().map_err(|e| {
            self.shared.metrics.broken().increment(1);
            slot.health.dead.store(true, Ordering::Release);
            self.shared.mark_dead();
            ConnectError::checking(format!("validation failed: {e}"))
        })
    }
}

impl<C: PoolConnection> ManageConnection for Manager<C> {
    type Connection = Slot<C>;
    type Error = ConnectError;

    fn connect(&self) -> Result<Slot<C>, ConnectError> {
        self.shared.pool_slots.fetch_add(1, Ordering::AcqRel);
        let slot = self.open_slot();
        if slot.is_err() {
            self.shared.pool_slots.fetch_sub(1, Ordering::AcqRel);
        }
        slot
    }

    fn is_valid(&self, slot: &mut Slot<C>) -> Result<(), ConnectError> {
        self.is_valid_at(slot, clock_ns())
    }

    fn has_broken(&self, slot: &mut Slot<C>) -> bool {
        std::thread::panicking()
            || slot.health.dead.load(Ordering::Acquire)
            || slot.health.retired.load(Ordering::Acquire)
            || slot.conn.is_broken()
    }
}

impl<C: PoolConnection> Manager<C> {
    /// A new pooled connection with its session setup and instrumentation.
    fn open_slot(&self) -> Result<Slot<C>, ConnectError> {
        let began = Instant::now();
        let mut conn: C = self.establish_as()?;
        // Known good as of *before* its last round trips, like a query's start: a thread
        // descheduled after them could otherwise stamp a connection dropped meanwhile as newer
        // than a death already recorded.
        let answered = self.shared.now();
        if !self.session_sql.is_empty() {
            conn.batch_execute(&self.session_sql)
                .map_err(|e| ConnectError::opening(format!("setting up the session: {e}")))?;
        }
        if let Some(on_connect) = &self.on_connect {
            on_connect(&mut conn).map_err(|e| {
                ConnectError::opening(format!(
                    "the application's session setup (connect_with): {e}"
                ))
            })?;
        }
        let backend_pid = if self.transaction_pooler {
            // A transaction pooler hands each transaction whichever server connection is
            // free: no named prepared statement may outlive it, and no pid belongs to it.
            conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
            None
        } else {
            conn.backend_pid()
                .map_err(|e| ConnectError::opening(format!("reading the backend pid: {e}")))?
        };
        self.shared
            .metrics
            .create_time()
            .record(began.elapsed().as_secs_f64());
        let health = Arc::new(Health {
            last_ok: answered.into(),
            born: answered.into(),
            backend_pid,
            ..Health::default()
        });
        self.shared.track(&health);
        conn.set_instrumentation(DeathWatch::new(
            Arc::clone(&health),
            Arc::clone(&self.shared),
            self.echo,
            self.slow,
            Arc::clone(&self.about),
        ));
        Ok(Slot {
            conn: Box::new(conn),
            health,
        })
    }
}

/// Counts connections opened and closed by the pool.
#[derive(Debug)]
pub(crate) struct PoolEvents(pub(crate) Arc<Shared>);

impl diesel::r2d2::HandleEvent for PoolEvents {
    fn handle_acquire(&self, _: diesel::r2d2::event::AcquireEvent) {
        self.0.connected();
        self.0.counts.open.fetch_add(1, Ordering::Relaxed);
        self.0.metrics.opened().increment(1);
        self.0.report_limits();
    }
    fn handle_release(&self, _: diesel::r2d2::event::ReleaseEvent) {
        self.0.counts.open.fetch_sub(1, Ordering::Relaxed);
        self.0.pool_slots.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.closed().increment(1);
    }
}

/// Keeps the last connection error for the pool-timeout message, instead of r2d2's logging.
#[derive(Debug)]
pub(crate) struct RememberErrors(pub(crate) Arc<Shared>);

impl HandleError<ConnectError> for RememberErrors {
    fn handle_error(&self, error: ConnectError) {
        // r2d2 reports connections that failed their check here too: retiring an expired
        // connection, or dropping a dead one, is not a failure to connect.
        if !error.checking {
            self.0.set_last_error(error.message);
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};

    use super::{Manager, Shared};
    use crate::config::Settings;

    #[test]
    fn a_sqlite_connection_waits_out_another_connections_lock_while_it_opens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("locked.sqlite3");
        // A new file is in rollback-journal mode, where an exclusive lock keeps readers out.
        let mut other = SqliteConnection::establish(&path.to_string_lossy()).expect("open");
        other
            .batch_execute("CREATE TABLE t (x INTEGER); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
            .expect("hold an exclusive lock");
        let settings =
            Settings::from_pairs([("DATABASE_PATH", path.as_os_str())]).expect("settings");
        let manager = Manager::<SqliteConnection>::new(
            &settings,
            Shared::new("locked", &settings, Default::default()),
            false,
            None,
        );
        let (done, finished) = mpsc::channel();
        let opening = std::thread::spawn(move || {
            let opened = manager.establish_to::<SqliteConnection>(None).map(|_| ());
            let _ = done.send(());
            opened
        });
        assert!(
            finished.recv_timeout(Duration::from_millis(300)).is_err(),
            "the open gave up while the database was locked: {:?}",
            opening
                .join()
                .map(|opened| opened.err().map(|e| e.to_string()))
        );
        other.batch_execute("COMMIT").expect("release the lock");
        opening
            .join()
            .expect("no panic")
            .expect("opened once the lock was released");
    }
}
