//! The connection migrations run on: one of their own, outside the pool, or one the caller
//! lends ([`Migrator::run_pending_on`](super::Migrator::run_pending_on)).

use std::ops::{Deref, DerefMut};

use crate::config::Target;
use crate::engine::{Conn, Engine, PoolConnection};
use crate::error::Error;

/// The connection itself: opened for the run, or lent by the caller.
pub(crate) enum Link<'c> {
    Own(Conn),
    Lent(&'c mut Conn),
}

impl Deref for Link<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        match self {
            Link::Own(conn) => conn,
            Link::Lent(conn) => conn,
        }
    }
}

impl DerefMut for Link<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            Link::Own(conn) => conn,
            Link::Lent(conn) => conn,
        }
    }
}

/// A connection for migrations, never handed to the application. It reads the ledger as it
/// comes (a boot with nothing to do needs no more); [`MigrationConn::ready`] sets it up for
/// taking the lock and running migrations.
pub(crate) struct MigrationConn<'c> {
    pub(crate) conn: Link<'c>,
    /// The redacted URL, for a connection error.
    #[cfg_attr(
        not(feature = "postgres"),
        allow(dead_code, reason = "only PostgreSQL's session setup can fail")
    )]
    target: String,
    /// PostgreSQL, once ready: the database and the schema (`current_schema()`) the
    /// migrations go to.
    pub(crate) schema: Option<(String, String)>,
    ready: bool,
}

impl std::fmt::Debug for MigrationConn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationConn")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl MigrationConn<'static> {
    /// A new connection of its own for `engine`'s migrations (not from its pool, where a
    /// session-level lock and session settings do not belong): to `DATABASE_MIGRATION_URL`
    /// when set. Not readied yet.
    pub(crate) fn open<C: PoolConnection>(
        engine: &Engine<C>,
    ) -> Result<MigrationConn<'static>, Error> {
        let settings = engine.settings();
        let behind_transaction_pooler =
            matches!(&settings.target, Target::Postgres(pg) if pg.transaction_pooler);
        if behind_transaction_pooler && settings.migration_settings().is_none() {
            return Err(Error::config(
                "DATABASE_MIGRATION_URL",
                "is needed: migrations hold a session-level lock, which a transaction pooler \
                 (DATABASE_POOLER=transaction) would strand on a server connection that other \
                 clients then get; give the direct URL of the same database",
            ));
        }
        let mut conn = engine.connect_direct()?;
        if let Some(direct) = settings.migration_settings() {
            same_database(engine, &mut conn, &direct)?;
        }
        Ok(MigrationConn {
            conn: Link::Own(conn),
            target: engine.direct_target(),
            schema: None,
            ready: false,
        })
    }
}

/// Checks that `conn`, opened to `DATABASE_MIGRATION_URL` (`direct`), reaches the database the
/// engine's pool does, on the same server: migrations run anywhere else leave the application's
/// database unmigrated while boot reports it ready.
fn same_database<C: PoolConnection>(
    engine: &Engine<C>,
    conn: &mut Conn,
    direct: &crate::Settings,
) -> Result<(), Error> {
    let target = direct.connection_url().to_string();
    let theirs = conn.identity().map_err(|e| Error::Connect {
        target: target.clone(),
        reason: format!("reading which database it is: {e}"),
    })?;
    let ours = engine.get()?.identity()?;
    if theirs.instance == ours.instance && theirs.database == ours.database {
        return Ok(());
    }
    let wrong = if theirs.database == ours.database {
        format!(
            "reaches a database {:?} on another server than DATABASE_URL's",
            theirs.database
        )
    } else {
        format!(
            "reaches database {:?}, not DATABASE_URL's {:?}",
            theirs.database, ours.database
        )
    };
    Err(Error::config(
        "DATABASE_MIGRATION_URL",
        format!(
            "{wrong} (it is not quoted: it may hold a password); give the direct URL of the same \
             database, so that migrations change the schema the application uses"
        ),
    ))
}

impl<'c> MigrationConn<'c> {
    /// `conn`, lent by the caller; `target` names it in errors (redacted).
    pub(crate) fn lent(conn: &'c mut Conn, target: String) -> MigrationConn<'c> {
        MigrationConn {
            conn: Link::Lent(conn),
            target,
            schema: None,
            ready: false,
        }
    }

    /// Readies the connection for migrations, once: on PostgreSQL no statement or
    /// idle-in-transaction timeout, and the name `<application_name> (migrations)` in
    /// `pg_stat_activity`, in the same round trip as reading the database and schema the
    /// migrations go to; on SQLite nothing (its busy timeout was set when it was opened).
    pub(crate) fn ready(&mut self) -> Result<(), Error> {
        if self.ready {
            return Ok(());
        }
        match &mut *self.conn {
            #[cfg(feature = "postgres")]
            Conn::Postgres(conn) => {
                let failed = |e: diesel::result::Error| Error::Connect {
                    target: self.target.clone(),
                    reason: format!("setting up the migration session: {e}"),
                };
                use diesel::RunQueryDsl;
                let row: SchemaRow = diesel::sql_query(
                    "SELECT set_config('statement_timeout', '0', false) AS statement_timeout, \
                        set_config('idle_in_transaction_session_timeout', '0', false) AS idle, \
                        set_config('application_name', \
                            left(current_setting('application_name'), 50) || ' (migrations)', \
                            false) AS application_name, \
                        current_database()::text AS database, \
                        coalesce(current_schema(), 'public')::text AS schema",
                )
                .get_result(conn)
                .map_err(failed)?;
                self.schema = Some((row.database, row.schema));
            }
            // Its busy timeout was set when it was opened (the engine's `Manager::establish_to`).
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(_) => {}
        }
        self.ready = true;
        Ok(())
    }
}

#[cfg(feature = "postgres")]
#[derive(diesel::QueryableByName)]
struct SchemaRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    database: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    schema: String,
}
