//! The connection types an [`Engine`](super::Engine) can pool: [`Conn`] (PostgreSQL or SQLite,
//! chosen by the settings), or a plain `PgConnection` or `SqliteConnection` for an application
//! that runs on one backend and wants all of its SQL types and clauses.

#[cfg(feature = "postgres")]
use diesel::PgConnection;
#[cfg(feature = "sqlite")]
use diesel::SqliteConnection;
use diesel::connection::SimpleConnection;
use diesel::r2d2::R2D2Connection;
#[cfg(feature = "postgres")]
use diesel::sql_types::Integer;
use diesel::sql_types::{Nullable, Text};
use diesel::{Connection, ConnectionResult, QueryResult, RunQueryDsl};

use super::Conn;
use crate::config::Backend;

/// What [`Engine::ping`](super::Engine::ping) reads besides the round trip.
#[non_exhaustive]
pub struct Identity {
    /// `PostgreSQL 15.4 ...` or `SQLite 3.40.1`.
    pub version: String,
    /// The role connected as (PostgreSQL).
    pub user: Option<String>,
    /// The database name (PostgreSQL) or file (SQLite).
    pub database: String,
    /// Which server and database (PostgreSQL: the server's start time and the database's
    /// OID): equal on two connections to the same database of the same running server, also
    /// through a pooler; `None` on SQLite.
    pub instance: Option<String>,
}

#[derive(diesel::QueryableByName)]
struct IdentityRow {
    #[diesel(sql_type = Text)]
    version: String,
    #[diesel(sql_type = Nullable<Text>)]
    user: Option<String>,
    #[diesel(sql_type = Text)]
    database: String,
    #[diesel(sql_type = Nullable<Text>)]
    instance: Option<String>,
}

impl From<IdentityRow> for Identity {
    fn from(row: IdentityRow) -> Identity {
        Identity {
            version: row.version,
            user: row.user,
            database: row.database,
            instance: row.instance,
        }
    }
}

#[cfg(feature = "postgres")]
const POSTGRES_IDENTITY: &str = "SELECT version() AS version, current_user::text AS user, \
                                 current_database()::text AS database, \
                                 pg_postmaster_start_time()::text || ' / ' || \
                                 (SELECT oid FROM pg_database \
                                  WHERE datname = current_database())::text AS instance";
#[cfg(feature = "sqlite")]
const SQLITE_IDENTITY: &str = "SELECT 'SQLite ' || sqlite_version() AS version, NULL AS user, \
                               (SELECT file FROM pragma_database_list WHERE name = 'main') AS database, \
                               NULL AS instance";

#[cfg(feature = "postgres")]
#[derive(diesel::QueryableByName)]
struct BackendPid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// A Diesel connection the engine can pool.
///
/// Implemented for [`Conn`] (either backend), [`PgConnection`] and [`SqliteConnection`]; the
/// engine gives each the same validation, session setup, affinity, diagnostics and metrics.
/// Sealed: the engine relies on knowing how each talks to its backend.
pub trait PoolConnection:
    Connection + R2D2Connection + SimpleConnection + Send + 'static + private::Sealed
{
    /// The backends this type can connect to.
    const BACKENDS: &'static [Backend];

    /// Opens a connection to `backend` at `url` (one of [`Self::BACKENDS`]).
    #[doc(hidden)]
    fn establish_to(backend: Backend, url: &str) -> ConnectionResult<Self>;

    /// The PostgreSQL backend pid (`None` on SQLite).
    #[doc(hidden)]
    fn backend_pid(&mut self) -> QueryResult<Option<i32>>;

    /// The server version, the user and the database.
    #[doc(hidden)]
    fn identity(&mut self) -> QueryResult<Identity>;

    /// `BEGIN` at `isolation` (PostgreSQL), or `BEGIN IMMEDIATE` (SQLite).
    #[doc(hidden)]
    fn begin_with(&mut self, isolation: super::transaction::Isolation) -> QueryResult<()>;
}

mod private {
    pub trait Sealed {}
    impl Sealed for super::Conn {}
    #[cfg(feature = "postgres")]
    impl Sealed for diesel::PgConnection {}
    #[cfg(feature = "sqlite")]
    impl Sealed for diesel::SqliteConnection {}
}

#[cfg(feature = "postgres")]
fn postgres_pid(conn: &mut PgConnection) -> QueryResult<Option<i32>> {
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<BackendPid>(conn)
        .map(|row| Some(row.pid))
}

#[cfg(feature = "postgres")]
impl PoolConnection for PgConnection {
    const BACKENDS: &'static [Backend] = &[Backend::Postgres];

    fn establish_to(_: Backend, url: &str) -> ConnectionResult<Self> {
        PgConnection::establish(url)
    }

    fn backend_pid(&mut self) -> QueryResult<Option<i32>> {
        postgres_pid(self)
    }

    fn identity(&mut self) -> QueryResult<Identity> {
        diesel::sql_query(POSTGRES_IDENTITY)
            .get_result::<IdentityRow>(self)
            .map(Identity::from)
    }

    fn begin_with(&mut self, isolation: super::transaction::Isolation) -> QueryResult<()> {
        super::transaction::begin_postgres(self, isolation)
    }
}

#[cfg(feature = "sqlite")]
impl PoolConnection for SqliteConnection {
    const BACKENDS: &'static [Backend] = &[Backend::Sqlite];

    fn establish_to(_: Backend, url: &str) -> ConnectionResult<Self> {
        SqliteConnection::establish(url)
    }

    fn backend_pid(&mut self) -> QueryResult<Option<i32>> {
        Ok(None)
    }

    fn identity(&mut self) -> QueryResult<Identity> {
        diesel::sql_query(SQLITE_IDENTITY)
            .get_result::<IdentityRow>(self)
            .map(Identity::from)
    }

    fn begin_with(&mut self, _: super::transaction::Isolation) -> QueryResult<()> {
        super::transaction::begin_sqlite(self)
    }
}

impl PoolConnection for Conn {
    const BACKENDS: &'static [Backend] = &[
        #[cfg(feature = "postgres")]
        Backend::Postgres,
        #[cfg(feature = "sqlite")]
        Backend::Sqlite,
    ];

    fn establish_to(backend: Backend, url: &str) -> ConnectionResult<Self> {
        // Not the derived `establish`, which tries each backend and drops their errors.
        match backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres => PgConnection::establish(url).map(Conn::Postgres),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => SqliteConnection::establish(url).map(Conn::Sqlite),
            #[allow(
                unreachable_patterns,
                reason = "reached when a backend's feature is off"
            )]
            other => Err(diesel::ConnectionError::BadConnection(format!(
                "datalayer was built without its `{other}` feature"
            ))),
        }
    }

    fn backend_pid(&mut self) -> QueryResult<Option<i32>> {
        match self {
            #[cfg(feature = "postgres")]
            Conn::Postgres(pg) => postgres_pid(pg),
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(_) => Ok(None),
        }
    }

    fn identity(&mut self) -> QueryResult<Identity> {
        match self {
            #[cfg(feature = "postgres")]
            Conn::Postgres(pg) => pg.identity(),
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(sqlite) => sqlite.identity(),
        }
    }

    fn begin_with(&mut self, isolation: super::transaction::Isolation) -> QueryResult<()> {
        super::transaction::begin_conn(self, isolation)
    }
}
