//! Settings and the connection URL: the port of the seed's `connection_url`.
//!
//! Settings are plain data ([`Settings`]) loaded by `envy` from `DATABASE_*` variables, either
//! from the process environment ([`Settings::from_env`]) or from an explicit list of pairs
//! ([`Settings::from_pairs`]). A `.env` file is read only when the caller asks for it
//! ([`Vars::with_dotenv`]); the `datalayer` binary does so for `./.env`, and variables already
//! set in the environment win over it. Empty values are errors (unset a variable to get its
//! default). Every problem is reported at once, each naming its variable; no message ever
//! contains the password or any part of `DATABASE_URL`.
//!
//! # Variables
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `DATABASE_URL` | unset | The whole connection: `postgres://…`, `postgresql://…`, `sqlite://path`, or a SQLite file path. Cannot be combined with `DATABASE_HOST`, `_PORT`, `_USER`, `_NAME` or `_PATH`. Several TCP hosts (`postgres://app@a:5432,b:5432/app?target_session_attrs=read-write`) are tried in order. |
//! | `DATABASE_BACKEND` | inferred | `postgres` or `sqlite`. Inferred from the URL scheme, else `postgres` when `DATABASE_HOST` is set, else `sqlite`. |
//! | `DATABASE_PATH` | `data/datalayer.sqlite3` | SQLite database file; it and its folder are created when missing. |
//! | `DATABASE_HOST` | `localhost` | PostgreSQL host: a name, an IPv4 or IPv6 address, or a unix-socket directory (starts with `/`). Several TCP hosts, `a,b`, are tried in order. |
//! | `DATABASE_PORT` | `5432` | PostgreSQL port, 1-65535; with several hosts, one for all or one per host (`5432,5433`). |
//! | `DATABASE_USER` | unset | PostgreSQL role; unset means libpq's default (the OS user). |
//! | `DATABASE_NAME` | unset | PostgreSQL database; unset means libpq's default (the role's name). |
//! | `DATABASE_PASSWORD` | unset | PostgreSQL password, held as a `SecretString`. May fill in a `DATABASE_URL` that has no password. |
//! | `DATABASE_PASSWORD_FILE` | unset | A file holding the PostgreSQL password (a container or Kubernetes secret; one trailing newline is trimmed), read again for each new connection, so a rotated secret takes effect as connections reach their lifetime. Not with `DATABASE_PASSWORD` or a password in `DATABASE_URL`; warned about when others may read it. With no password at all, libpq's `PGPASSFILE` / `~/.pgpass` applies. |
//! | `DATABASE_SSLMODE` | `prefer` | `disable`, `allow`, `prefer`, `require`, `verify-ca` or `verify-full`. |
//! | `DATABASE_SSLROOTCERT` | unset | CA certificate file for `verify-ca` / `verify-full`; must exist. |
//! | `DATABASE_SSLCERT` | unset | Client certificate file, for `cert` authentication; must exist, and comes with `DATABASE_SSLKEY`. |
//! | `DATABASE_SSLKEY` | unset | The client certificate's private key file (libpq wants it readable by its owner only); must exist. Shown by path only. |
//! | `DATABASE_APPLICATION_NAME` | the program's name | Shown in `pg_stat_activity`: the running binary's file name (cargo's test-binary hash dropped; `datalayer` if it has none). |
//! | `DATABASE_CONNECT_TIMEOUT` | `10s` | Limit for one connection attempt; libpq counts whole seconds (rounded up, at least 2). |
//! | `DATABASE_POOL_MAX_SIZE` | `10` | Most connections the pool holds, 1 to 10000. |
//! | `DATABASE_POOL_MIN_IDLE` | unset | Idle connections the pool keeps ready, at most the max size; unset keeps the pool's default (max size). |
//! | `DATABASE_POOL_TIMEOUT` | `30s` | Longest wait for a free connection; more than 0. |
//! | `DATABASE_POOL_IDLE_TIMEOUT` | `10m` | Idle connections older than this are closed; `0` disables. |
//! | `DATABASE_POOL_MAX_LIFETIME` | `30m` | Connections older than this are closed when returned; `0` disables. |
//! | `DATABASE_STATEMENT_TIMEOUT` | `0` | PostgreSQL `statement_timeout` for each session; `0` disables. |
//! | `DATABASE_LOCK_TIMEOUT` | `0` | PostgreSQL `lock_timeout` for each session; `0` disables. |
//! | `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT` | `0` | PostgreSQL `idle_in_transaction_session_timeout`; `0` disables. |
//! | `DATABASE_CONNECT_DEADLINE` | `30s` | At boot, how long to keep retrying (exponential backoff with jitter) a database that cannot be reached yet: refused, timed out, name not resolved, starting up, too many connections. Errors that cannot go away (authentication, missing database, bad URL, TLS) fail at once. `0` tries once. |
//! | `DATABASE_TCP_USER_TIMEOUT` | `15s` | PostgreSQL `tcp_user_timeout`, with TCP keepalives on: a connection whose peer vanished without a FIN fails within about this time instead of hanging for minutes. `0` leaves the OS defaults. |
//! | `DATABASE_POOL_LEAK_THRESHOLD` | `0` (off) | Log a warning, with its checkout site, for a connection held longer than this. |
//! | `DATABASE_ECHO` | `false` | `true` logs every SQL statement the pool's connections run, with its duration, at info level on target `datalayer::sql` (SQLAlchemy's `echo=True`). Bind values are never logged. |
//! | `DATABASE_SLOW_QUERY_THRESHOLD` | `0` (off) | Log statements slower than this at warn level, with their duration. |
//! | `DATABASE_MIGRATION_LOCK_TIMEOUT` | `60s` | Longest wait for the migration lock (PostgreSQL advisory lock, or the SQLite file's sidecar lock) when several replicas migrate at once; more than 0. |
//! | `DATABASE_MIGRATION_DDL_LOCK_TIMEOUT` | `5s` | PostgreSQL `lock_timeout` for each migration, so DDL never queues behind a long transaction while every query queues behind it; a migration that times out is retried with backoff. More than 0. |
//! | `DATABASE_POOLER` | `none` | `transaction` when the engine reaches PostgreSQL through a transaction-mode pooler (PgBouncer `pool_mode = transaction`): no named prepared statements (each query is prepared unnamed), no per-session settings (so the session timeouts are refused: set them on the role), and migrations only over `DATABASE_MIGRATION_URL`. |
//! | `DATABASE_MIGRATION_URL` | unset | A direct `postgres://` URL (with its password, if any) to the same database, for migrations when `DATABASE_POOLER=transaction`: their session lock must not go through the pooler. A secret, like `DATABASE_URL`. |
//! | `DATABASE_REPLICA_URL` | unset | A read replica's `postgres://` URL (a secret, like `DATABASE_URL`): [`crate::Engine::read`] checks connections out of a second pool on it. Its host(s), port(s), user, password and database replace the primary's; TLS, timeouts and the application name are the primary's (so those parameters are refused in it). Not with `DATABASE_REPLICA_HOST` / `_PORT`. Unset (and no `DATABASE_REPLICA_HOST`/`_PORT`): reads go to the primary. |
//! | `DATABASE_REPLICA_HOST` | the primary's | A read replica reached with every setting of the primary but its host: a name, an address, a socket directory, or several TCP hosts (`a,b`). |
//! | `DATABASE_REPLICA_PORT` | the primary's | The read replica's port (one for all its hosts, or one per host). |
//! | `DATABASE_REPLICA_POOL_MAX_SIZE` | `DATABASE_POOL_MAX_SIZE` | Most connections the replica's pool holds, 1 to 10000 (its minimum idle is the primary's, capped at this). |
//! | `DATABASE_REPLICA_MAX_LAG` | `5s` | Reads go to the primary while the replica replays more than this behind (measured on the replica: the age of its last replayed transaction while WAL it received waits to be replayed), and while it cannot be reached. More than 0. |
//! | `DATABASE_REPLICA_CHECK_INTERVAL` | `1s` | How often a background thread measures the replica's lag on a connection of its own (checkouts never query it); a replica that recovers serves reads again after the next check. 50ms or more. |
//! | `DATABASE_ALLOW_UNKNOWN_MIGRATIONS` | `false` | `true` lets a binary run against a database that a newer release migrated (versions it does not know), with a warning, for expand/contract deploys. |
//! | `DATABASE_SCHEMA_CHECK` | `warn` | After migrating, compare the live schema with the committed fingerprint: `warn` compares in the background after the boot returns and logs each difference, `strict` compares before it returns and refuses to boot on a difference (a few ms more on PostgreSQL), `off` skips. |
//!
//! Durations are written `500ms`, `30s`, `10m`, `1h`, or as a bare whole number of seconds.
//! Variables that only apply to one backend are errors when the other backend is in use, so a
//! setting never silently does nothing. Other `DATABASE_*` names are ignored and listed in
//! [`Loaded::ignored`] (the CLI warns about them).
//!
//! # Example
//!
//! ```
//! use datalayer::config::{Backend, Settings};
//!
//! let settings = Settings::from_pairs([
//!     ("DATABASE_HOST", "db.internal"),
//!     ("DATABASE_USER", "app"),
//!     ("DATABASE_PASSWORD", "p@ss/word"),
//!     ("DATABASE_NAME", "app"),
//!     ("DATABASE_APPLICATION_NAME", "billing-api"),
//!     ("DATABASE_TCP_USER_TIMEOUT", "0"),
//! ])?;
//! assert_eq!(settings.backend(), Backend::Postgres);
//! assert_eq!(
//!     settings.connection_url().redacted(),
//!     "postgres://app:***@db.internal:5432/app?sslmode=prefer&application_name=billing-api&connect_timeout=10"
//! );
//! # Ok::<(), datalayer::Error>(())
//! ```

mod duration;
mod loader;
mod password_file;
mod postgres_limits;
mod sources;
mod url;
mod validate;

use std::ffi::OsStr;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::error::Error;

pub use self::sources::{Origin, PREFIX, Vars};
pub use self::url::{ConnectionUrl, Host, REDACTED};

/// Every variable datalayer reads, in the order of the table above.
pub const VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_BACKEND",
    "DATABASE_PATH",
    "DATABASE_HOST",
    "DATABASE_PORT",
    "DATABASE_USER",
    "DATABASE_NAME",
    "DATABASE_PASSWORD",
    "DATABASE_PASSWORD_FILE",
    "DATABASE_SSLMODE",
    "DATABASE_SSLROOTCERT",
    "DATABASE_SSLCERT",
    "DATABASE_SSLKEY",
    "DATABASE_APPLICATION_NAME",
    "DATABASE_CONNECT_TIMEOUT",
    "DATABASE_POOL_MAX_SIZE",
    "DATABASE_POOL_MIN_IDLE",
    "DATABASE_POOL_TIMEOUT",
    "DATABASE_POOL_IDLE_TIMEOUT",
    "DATABASE_POOL_MAX_LIFETIME",
    "DATABASE_POOL_LEAK_THRESHOLD",
    "DATABASE_ECHO",
    "DATABASE_SLOW_QUERY_THRESHOLD",
    "DATABASE_CONNECT_DEADLINE",
    "DATABASE_TCP_USER_TIMEOUT",
    "DATABASE_STATEMENT_TIMEOUT",
    "DATABASE_LOCK_TIMEOUT",
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
    "DATABASE_MIGRATION_LOCK_TIMEOUT",
    "DATABASE_MIGRATION_DDL_LOCK_TIMEOUT",
    "DATABASE_POOLER",
    "DATABASE_MIGRATION_URL",
    "DATABASE_REPLICA_URL",
    "DATABASE_REPLICA_HOST",
    "DATABASE_REPLICA_PORT",
    "DATABASE_REPLICA_POOL_MAX_SIZE",
    "DATABASE_REPLICA_MAX_LAG",
    "DATABASE_REPLICA_CHECK_INTERVAL",
    "DATABASE_ALLOW_UNKNOWN_MIGRATIONS",
    "DATABASE_SCHEMA_CHECK",
];

/// Variables that only mean something to PostgreSQL.
const POSTGRES_ONLY: &[&str] = &[
    "DATABASE_HOST",
    "DATABASE_PORT",
    "DATABASE_USER",
    "DATABASE_NAME",
    "DATABASE_PASSWORD",
    "DATABASE_PASSWORD_FILE",
    "DATABASE_SSLMODE",
    "DATABASE_SSLROOTCERT",
    "DATABASE_SSLCERT",
    "DATABASE_SSLKEY",
    "DATABASE_APPLICATION_NAME",
    "DATABASE_CONNECT_TIMEOUT",
    "DATABASE_TCP_USER_TIMEOUT",
    "DATABASE_STATEMENT_TIMEOUT",
    "DATABASE_LOCK_TIMEOUT",
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
    "DATABASE_MIGRATION_DDL_LOCK_TIMEOUT",
    "DATABASE_POOLER",
    "DATABASE_MIGRATION_URL",
    "DATABASE_REPLICA_URL",
    "DATABASE_REPLICA_HOST",
    "DATABASE_REPLICA_PORT",
    "DATABASE_REPLICA_POOL_MAX_SIZE",
    "DATABASE_REPLICA_MAX_LAG",
    "DATABASE_REPLICA_CHECK_INTERVAL",
];

/// Parts of a connection that `DATABASE_URL` already gives in full.
const URL_PARTS: &[&str] = &[
    "DATABASE_HOST",
    "DATABASE_PORT",
    "DATABASE_USER",
    "DATABASE_NAME",
    "DATABASE_PATH",
];

/// The SQLite file used when nothing else is configured.
pub const DEFAULT_SQLITE_PATH: &str = "data/datalayer.sqlite3";

/// The database engine behind the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL, reached over TCP or a unix socket.
    Postgres,
    /// An embedded SQLite file.
    Sqlite,
}

impl Backend {
    /// Whether this build of datalayer can reach the backend: its cargo feature (named as
    /// the backend's `Display`, `postgres` or `sqlite`) is on.
    pub const fn is_enabled(self) -> bool {
        match self {
            Backend::Postgres => cfg!(feature = "postgres"),
            Backend::Sqlite => cfg!(feature = "sqlite"),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        })
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Try without TLS, then with.
    Allow,
    /// Try TLS, then without (libpq's default).
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS, certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, trusted certificate whose name matches the host.
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The value libpq reads, e.g. `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(text: &str) -> Option<SslMode> {
        SslMode::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

/// Validated settings, ready to build a connection URL and a pool from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// Which database, and how to reach it.
    pub target: Target,
    /// How the connection pool is sized and recycled.
    pub pool: PoolSettings,
    /// How migrations are serialized, checked and verified.
    pub migrations: MigrationSettings,
    /// A read replica for [`crate::Engine::read`]; `None` sends reads to the primary.
    pub replica: Option<ReplicaSettings>,
}

/// A read replica: where it is, its pool's size, and when reads leave it for the primary.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplicaSettings {
    /// The replica's connection: the primary's settings with `DATABASE_REPLICA_URL`'s parts, or
    /// `DATABASE_REPLICA_HOST` / `_PORT`, in their place.
    pub target: PostgresSettings,
    /// `DATABASE_REPLICA_POOL_MAX_SIZE`, from 1 to [`PoolSettings::MAX_SIZE`].
    pub max_size: u32,
    /// `DATABASE_REPLICA_MAX_LAG`, more than zero.
    pub max_lag: Duration,
    /// `DATABASE_REPLICA_CHECK_INTERVAL`, at least 50 ms.
    pub check_interval: Duration,
}

impl ReplicaSettings {
    /// The shortest `DATABASE_REPLICA_CHECK_INTERVAL`.
    pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(50);
    /// `DATABASE_REPLICA_MAX_LAG`'s default.
    pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(5);
    /// `DATABASE_REPLICA_CHECK_INTERVAL`'s default.
    pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
}

/// What `DATABASE_SCHEMA_CHECK` asks for after migrating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaCheck {
    /// Compare in the background after the boot returns; log each difference.
    Warn,
    /// Compare before the boot returns; refuse to boot when the schema differs.
    Strict,
    /// Do not compare.
    Off,
}

impl SchemaCheck {
    fn as_str(self) -> &'static str {
        match self {
            SchemaCheck::Warn => "warn",
            SchemaCheck::Strict => "strict",
            SchemaCheck::Off => "off",
        }
    }
}

/// Migration safety settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationSettings {
    /// `DATABASE_MIGRATION_LOCK_TIMEOUT`.
    pub lock_timeout: Duration,
    /// `DATABASE_MIGRATION_DDL_LOCK_TIMEOUT` (PostgreSQL).
    pub ddl_lock_timeout: Duration,
    /// `DATABASE_ALLOW_UNKNOWN_MIGRATIONS`.
    pub allow_unknown: bool,
    /// `DATABASE_SCHEMA_CHECK`.
    pub schema_check: SchemaCheck,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            lock_timeout: Duration::from_secs(60),
            ddl_lock_timeout: Duration::from_secs(5),
            allow_unknown: false,
            schema_check: SchemaCheck::Warn,
        }
    }
}

/// The database a [`Settings`] points at.
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "built once at start-up; plain unboxed data is easier to construct and match"
)]
pub enum Target {
    /// A PostgreSQL server.
    Postgres(PostgresSettings),
    /// A SQLite file.
    Sqlite(SqliteSettings),
}

/// Where the SQLite database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteSettings {
    /// The database file (`DATABASE_PATH`).
    pub path: PathBuf,
}

/// How to reach and configure a PostgreSQL session.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresSettings {
    /// `DATABASE_HOST`.
    pub host: Host,
    /// `DATABASE_PORT`.
    pub port: u16,
    /// Further hosts of a multi-host `DATABASE_URL` (`postgres://a:5432,b:5433/db`), tried in
    /// order after the first; with `target_session_attrs=read-write` libpq keeps the primary.
    pub more_hosts: Vec<(Host, u16)>,
    /// `DATABASE_USER`; `None` leaves it to libpq.
    pub user: Option<String>,
    /// `DATABASE_PASSWORD`; `Debug` prints `[REDACTED]`.
    pub password: Option<SecretString>,
    /// `DATABASE_PASSWORD_FILE`: where the password is read from for each new connection
    /// (then `password` holds what it held when the settings were loaded).
    pub password_file: Option<PathBuf>,
    /// `DATABASE_NAME`; `None` leaves it to libpq.
    pub database: Option<String>,
    /// `DATABASE_SSLMODE`.
    pub ssl_mode: SslMode,
    /// `DATABASE_SSLROOTCERT`.
    pub ssl_root_cert: Option<PathBuf>,
    /// `DATABASE_SSLCERT`: the client certificate.
    pub ssl_cert: Option<PathBuf>,
    /// `DATABASE_SSLKEY`: the client certificate's key.
    pub ssl_key: Option<PathBuf>,
    /// `DATABASE_APPLICATION_NAME`.
    pub application_name: String,
    /// `DATABASE_CONNECT_TIMEOUT`.
    pub connect_timeout: Duration,
    /// `DATABASE_TCP_USER_TIMEOUT`; `None` leaves keepalives and the timeout to the OS.
    pub tcp_user_timeout: Option<Duration>,
    /// `DATABASE_STATEMENT_TIMEOUT`; `None` is disabled.
    pub statement_timeout: Option<Duration>,
    /// `DATABASE_LOCK_TIMEOUT`; `None` is disabled.
    pub lock_timeout: Option<Duration>,
    /// `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT`; `None` is disabled.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// Further libpq parameters carried by `DATABASE_URL` (e.g. `options`,
    /// `target_session_attrs`), passed through in order.
    pub params: UrlParams,
    /// `DATABASE_POOLER=transaction`: a transaction-mode pooler is between the engine and the
    /// server.
    pub transaction_pooler: bool,
    /// `DATABASE_MIGRATION_URL`: where migrations connect directly, when a pooler is in between.
    pub migration_url: Option<SecretString>,
}

impl PostgresSettings {
    /// Takes the hosts, ports, user, database and password that `parsed` gives (a password
    /// also replaces the password file) in place of these; returns its other parameters.
    fn take_place_from(&mut self, parsed: url::ParsedUrl) -> Vec<(String, String)> {
        self.host = parsed.host.unwrap_or_else(|| self.host.clone());
        self.port = parsed.port.unwrap_or(self.port);
        let port = self.port;
        self.more_hosts = parsed
            .more_hosts
            .into_iter()
            .map(|(host, other)| (host, other.unwrap_or(port)))
            .collect();
        self.user = parsed.user.or(self.user.take());
        self.database = parsed.dbname.or(self.database.take());
        if let Some(password) = parsed.password {
            self.password = Some(password);
            self.password_file = None;
        }
        parsed.params
    }
}

/// libpq query parameters passed through from `DATABASE_URL`. `Debug` redacts secret ones
/// (`sslpassword`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UrlParams(pub Vec<(String, String)>);

impl fmt::Debug for UrlParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, v)| (k, url::redact_param(k, v))))
            .finish()
    }
}

/// Pool sizing and recycling.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolSettings {
    /// `DATABASE_POOL_MAX_SIZE`, from 1 to [`PoolSettings::MAX_SIZE`].
    pub max_size: u32,
    /// `DATABASE_POOL_MIN_IDLE`, at most `max_size`; `None` is the pool's default.
    pub min_idle: Option<u32>,
    /// `DATABASE_POOL_TIMEOUT`, more than zero.
    pub timeout: Duration,
    /// `DATABASE_POOL_IDLE_TIMEOUT`; `None` is disabled.
    pub idle_timeout: Option<Duration>,
    /// `DATABASE_POOL_MAX_LIFETIME`; `None` is disabled.
    pub max_lifetime: Option<Duration>,
    /// `DATABASE_POOL_LEAK_THRESHOLD`; `None` is off.
    pub leak_threshold: Option<Duration>,
    /// `DATABASE_CONNECT_DEADLINE`: how long [`crate::Engine::connect`] retries at boot.
    pub connect_deadline: Duration,
    /// `DATABASE_ECHO`: log every statement with its duration.
    pub echo: bool,
    /// `DATABASE_SLOW_QUERY_THRESHOLD`; `None` is off.
    pub slow_query_threshold: Option<Duration>,
}

impl PoolSettings {
    /// The largest pool size accepted (`DATABASE_POOL_MAX_SIZE`,
    /// `DATABASE_REPLICA_POOL_MAX_SIZE`): r2d2 reserves room for the whole pool up front, so a
    /// typo such as 300000000 would abort the process allocating it.
    pub const MAX_SIZE: u32 = 10_000;
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_size: 10,
            min_idle: None,
            timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            leak_threshold: None,
            connect_deadline: Duration::from_secs(30),
            echo: false,
            slow_query_threshold: None,
        }
    }
}

impl Default for Settings {
    /// The embedded default: SQLite at `data/datalayer.sqlite3`, default pool.
    fn default() -> Self {
        Settings {
            target: Target::Sqlite(SqliteSettings {
                path: PathBuf::from(DEFAULT_SQLITE_PATH),
            }),
            pool: PoolSettings::default(),
            migrations: MigrationSettings::default(),
            replica: None,
        }
    }
}

impl Settings {
    /// Loads settings from the process environment (not from `.env`; see [`Vars::with_dotenv`]).
    pub fn from_env() -> Result<Settings, Error> {
        Vars::from_process_env()
            .load()
            .map(|loaded| loaded.settings)
    }

    /// Loads settings from explicit `(name, value)` pairs, e.g. `("DATABASE_PORT", "5433")`.
    /// The process environment is not consulted.
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Settings, Error>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Vars::from_pairs(pairs).load().map(|loaded| loaded.settings)
    }

    /// The backend the settings point at.
    pub fn backend(&self) -> Backend {
        match self.target {
            Target::Postgres(_) => Backend::Postgres,
            Target::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The settings of the direct connection `DATABASE_MIGRATION_URL` names (its host, port,
    /// user, database, password and parameters over these settings'; the same password as the
    /// application when it gives none), or `None` when it is not set.
    pub(crate) fn migration_settings(&self) -> Option<Settings> {
        let Target::Postgres(pg) = &self.target else {
            return None;
        };
        let Ok(UrlTarget::Postgres(parsed)) = parse_url(pg.migration_url.as_ref()?.expose_secret())
        else {
            return None;
        };
        let mut direct = pg.clone();
        direct.transaction_pooler = false;
        direct.migration_url = None;
        direct.params = UrlParams(direct.take_place_from(parsed));
        Some(Settings {
            target: Target::Postgres(direct),
            replica: None,
            ..self.clone()
        })
    }

    /// The settings the read replica's pool is built from: these, with the replica's
    /// connection and pool size, and no replica of its own; `None` without a replica.
    pub fn replica_settings(&self) -> Option<Settings> {
        let replica = self.replica.as_ref()?;
        let mut pool = self.pool.clone();
        pool.max_size = replica.max_size;
        pool.min_idle = pool.min_idle.map(|n| n.min(replica.max_size));
        Some(Settings {
            target: Target::Postgres(replica.target.clone()),
            pool,
            migrations: self.migrations.clone(),
            replica: None,
        })
    }

    /// The connection URL with the password as `DATABASE_PASSWORD_FILE` holds it now (read
    /// again), or [`Settings::connection_url`] when no file is set.
    pub(crate) fn current_connection_url(&self) -> Result<ConnectionUrl, String> {
        let Target::Postgres(pg) = &self.target else {
            return Ok(self.connection_url());
        };
        let Some(path) = &pg.password_file else {
            return Ok(self.connection_url());
        };
        let password = password_file::read(path)
            .map_err(|why| format!("DATABASE_PASSWORD_FILE {}: {why}", path.display()))?;
        let mut current = self.clone();
        if let Target::Postgres(pg) = &mut current.target {
            pg.password = Some(password);
        }
        Ok(current.connection_url())
    }

    /// Where the settings point, in one line for a boot or a log: the backend, the host(s) and
    /// port(s), the database and the TLS mode (PostgreSQL), or the file (SQLite); no user, no
    /// secret, no other libpq parameter.
    ///
    /// ```
    /// let settings = datalayer::Settings::from_pairs([
    ///     ("DATABASE_URL", "postgres://app:pw@db.internal/app?sslmode=verify-full&keepalives=1"),
    /// ])?;
    /// assert_eq!(settings.summary(), "postgres at db.internal:5432, database app, sslmode verify-full");
    /// # Ok::<(), datalayer::Error>(())
    /// ```
    pub fn summary(&self) -> String {
        match &self.target {
            Target::Sqlite(sqlite) => format!("sqlite at {}", sqlite.path.display()),
            Target::Postgres(pg) => {
                let hosts = std::iter::once((&pg.host, pg.port))
                    .chain(pg.more_hosts.iter().map(|(host, port)| (host, *port)))
                    .map(|(host, port)| format!("{host}:{port}"))
                    .collect::<Vec<_>>()
                    .join(",");
                format!(
                    "postgres at {hosts}, database {}, sslmode {}",
                    pg.database.as_deref().unwrap_or("(the user's)"),
                    pg.ssl_mode.as_str()
                )
            }
        }
    }

    /// The connection URL. For PostgreSQL a libpq URL with every part percent-encoded and
    /// `sslmode`, `sslrootcert`, `application_name` and `connect_timeout` as query parameters;
    /// for SQLite the file path (shown as `sqlite://path`).
    pub fn connection_url(&self) -> ConnectionUrl {
        match &self.target {
            Target::Sqlite(sqlite) => {
                let path = sqlite.path.to_string_lossy().into_owned();
                let shown = format!("sqlite://{path}");
                ConnectionUrl::new(path, shown, Vec::new())
            }
            Target::Postgres(pg) => {
                let connect_timeout = pg.connect_timeout.as_millis().div_ceil(1000).to_string();
                let root_cert = pg.ssl_root_cert.as_ref().map(|p| p.to_string_lossy());
                let cert = pg.ssl_cert.as_ref().map(|p| p.to_string_lossy());
                let key = pg.ssl_key.as_ref().map(|p| p.to_string_lossy());
                let mut params = vec![("sslmode", pg.ssl_mode.as_str())];
                for (param, file) in [
                    ("sslrootcert", &root_cert),
                    ("sslcert", &cert),
                    ("sslkey", &key),
                ] {
                    if let Some(file) = file {
                        params.push((param, file));
                    }
                }
                params.push(("application_name", &pg.application_name));
                params.push(("connect_timeout", &connect_timeout));
                let tcp_user_timeout = pg.tcp_user_timeout.map(|t| t.as_millis().to_string());
                if let Some(user_timeout) = &tcp_user_timeout {
                    // Probe after one idle second: a connection waiting for a slow query's
                    // answer has no data in flight, so only a probe can find its peer gone.
                    // tcp_user_timeout then bounds both unacknowledged data and unanswered
                    // probes: a vanished peer is noticed within about 1 s + the timeout.
                    params.push(("keepalives", "1"));
                    params.push(("keepalives_idle", "1"));
                    params.push(("keepalives_interval", "1"));
                    params.push(("tcp_user_timeout", user_timeout));
                }
                params.extend(pg.params.0.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                let mut parts = url::UrlParts {
                    user: pg.user.as_deref(),
                    password: pg.password.as_ref().map(|p| p.expose_secret()),
                    host: &pg.host,
                    port: pg.port,
                    more_hosts: &pg.more_hosts,
                    dbname: pg.database.as_deref(),
                    params,
                    redact: false,
                };
                let secret = url::build_postgres(&parts);
                parts.redact = true;
                let mut secrets: Vec<SecretString> = pg.password.iter().cloned().collect();
                secrets.extend(
                    pg.params
                        .0
                        .iter()
                        .filter(|(k, _)| url::is_secret_param(k))
                        .map(|(_, v)| SecretString::from(v.as_str())),
                );
                ConnectionUrl::new(secret, url::build_postgres(&parts), secrets)
            }
        }
    }
}

/// The outcome of [`Vars::load`]: the settings, plus what the CLI needs to explain them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Loaded {
    /// The validated settings.
    pub settings: Settings,
    /// Every effective setting, in documentation order, with its value (secrets as `***`) and
    /// where it came from.
    pub entries: Vec<Entry>,
    /// `DATABASE_*` variables that datalayer does not read (typos, other tools' settings).
    pub ignored: Vec<String>,
    /// Other things worth a warning, one sentence each (a `.env` key given twice).
    pub warnings: Vec<String>,
}

/// One effective setting, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The variable, e.g. `DATABASE_PORT`.
    pub variable: &'static str,
    /// The effective value as text; `***` for a password, `(unset)` when left to libpq.
    pub value: String,
    /// Where the value came from.
    pub origin: Origin,
}

use self::loader::{UrlTarget, parse_url};
