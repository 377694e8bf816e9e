//! Migrations that are safe when many replicas boot at once: the schema half of the seed's
//! `metadata`.
//!
//! An application embeds its migration folders (Diesel's layout) with
//! [`embed_migrations!`](crate::embed_migrations), which gives a [`Migrator`]: a value the
//! application holds and runs on boot. Every run (migrate, revert, boot):
//!
//! 1. opens a connection of its own, outside the pool, and reads the ledger
//!    (`datalayer_migrations`, beside Diesel's `__diesel_schema_migrations`). When migrating
//!    or booting a set that has nothing to do and nothing to report (every migration
//!    applied, recorded under this set with its checksum; no version it does not know), it
//!    stops here: no lock, no write. Otherwise:
//! 2. readies the connection (no statement timeout, named `<application_name> (migrations)`)
//!    and takes the migration lock ([`lock`]), waiting at most
//!    `DATABASE_MIGRATION_LOCK_TIMEOUT` and saying who holds it;
//! 3. checks the ledger again: every applied migration's `up.sql` must still hash to
//!    what was recorded, and the database must not have versions of this set that the
//!    migrator does not know (unless `DATABASE_ALLOW_UNKNOWN_MIGRATIONS=true`); migrations
//!    applied before the ledger existed are backfilled;
//! 4. reads the pending set (so replicas that waited for the lock find nothing to do) and
//!    applies each migration in its own transaction, together with its ledger row. On
//!    PostgreSQL each runs with `SET LOCAL lock_timeout` (`DATABASE_MIGRATION_DDL_LOCK_TIMEOUT`)
//!    and is retried with backoff when it times out, so DDL never waits in the lock queue
//!    behind a long transaction while every other query queues behind it. A migration whose
//!    `metadata.toml` says `run_in_transaction = false` (for `CREATE INDEX CONCURRENTLY`) runs
//!    one statement at a time under the session's `lock_timeout`, its ledger rows written
//!    after its last statement succeeds; it is never retried, since part of it may have run;
//! 5. at boot, compares the live schema with the committed fingerprint ([`drift`],
//!    [`schema_check`]): in the background under `DATABASE_SCHEMA_CHECK=warn`, before
//!    returning under `strict`.
//!
//! Several sets may share one database (a library's tables beside the application's): the
//! ledger records each migration under its set's name, and a set ignores the others' rows.
//! Versions stay unique per database, as Diesel's own table requires.
//!
//! A failure names the migration and its file and leaves the database at the last migration
//! that succeeded.

mod connection;
pub mod drift;
pub(crate) mod ledger;
pub mod lock;
pub mod schema_check;
mod session;
mod set;
mod source;
mod statements;

use std::borrow::Cow;

use self::connection::MigrationConn;
pub use self::lock::LockHolder;
pub use self::schema_check::{DriftCheck, DriftOutcome};
use self::session::{Ledger, Session};
pub use self::set::{MigrationSet, Script};
use crate::config::{Backend, Settings};
use crate::engine::{Conn, Engine, PoolConnection};
use crate::error::Error;
pub use crate::error::MigrationError;

/// What [`embed_migrations!`](crate::embed_migrations) expands to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    use crate::config::Backend;

    /// One embedded migration folder.
    pub struct EmbeddedMigration {
        pub name: &'static str,
        pub up: &'static str,
        pub down: Option<&'static str>,
        pub metadata: Option<&'static str>,
    }

    /// One embedded migrations folder, for one backend or (`None`) every backend.
    pub struct Embedded {
        pub backend: Option<Backend>,
        pub origin: &'static str,
        pub migrations: &'static [EmbeddedMigration],
        pub fingerprint: Option<&'static str>,
        pub fingerprint_path: &'static str,
    }
}

/// Applied, pending and unknown migrations of one set, oldest first, by name
/// (`<version>_<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Status {
    /// Migrations recorded in the database.
    pub applied: Vec<String>,
    /// Known migrations not applied yet.
    pub pending: Vec<String>,
    /// Versions of this set the database has but this migrator does not know (a newer
    /// release applied them).
    pub unknown: Vec<String>,
    /// Applied migrations whose `up.sql` no longer hashes to what the ledger recorded.
    pub edited: Vec<String>,
    /// Who holds the migration lock right now, if anyone.
    pub lock: Option<LockHolder>,
    /// Invalid indexes in the migrations' schema (PostgreSQL), as `schema.index`: what a
    /// `CREATE INDEX CONCURRENTLY` that was interrupted or failed leaves behind. It is still
    /// maintained on every write but never used; drop it (`DROP INDEX CONCURRENTLY`) before
    /// running the migration again.
    pub invalid_indexes: Vec<String>,
}

/// How far [`Migrator::revert`] goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revert {
    /// The last `n` applied migrations.
    Steps(usize),
    /// Every applied migration.
    All,
}

/// What a boot did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BootReport {
    /// Migrations applied, in order.
    pub applied: Vec<String>,
    /// Versions in the database this migrator does not know (allowed by
    /// `DATABASE_ALLOW_UNKNOWN_MIGRATIONS`).
    pub unknown: Vec<String>,
    /// The drift check between the live schema and the fingerprint: done when `boot`
    /// returns under `strict` (and `off`), running in the background under `warn`;
    /// [`DriftCheck::differences`] waits for it.
    pub drift: DriftCheck,
}

/// A set and the backend it is for (`None`: every backend).
type BackendSet = (Option<Backend>, MigrationSet);

/// An application's migrations, per backend, under one set name: what
/// [`embed_migrations!`](crate::embed_migrations) gives. Every method runs the whole safe
/// sequence of the module doc on the set for the engine's backend.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let settings = datalayer::Settings::from_pairs([("DATABASE_PATH", dir.path().join("db").as_os_str())])?;
/// let migrator = datalayer::embed_migrations!("doc/migrations"); // an application: "migrations"
/// let engine = datalayer::Engine::connect(&settings)?;
/// let report = migrator.boot(&engine)?;
/// assert_eq!(report.applied.len(), 1);
/// assert!(migrator.status(&engine)?.pending.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Migrator {
    name: Cow<'static, str>,
    /// Per backend (`None`: every backend), or why the embedded files are unusable (the
    /// file and the reason of a [`MigrationError::Invalid`]).
    sets: Result<Vec<BackendSet>, (String, String)>,
}

impl Migrator {
    /// Expansion of [`embed_migrations!`](crate::embed_migrations).
    #[doc(hidden)]
    pub fn __embedded(name: &'static str, sets: &'static [__private::Embedded]) -> Migrator {
        let sets = sets
            .iter()
            .map(|set| MigrationSet::embedded(set).map(|s| (set.backend, s)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| match e {
                MigrationError::Invalid { file, reason } => (file, reason),
                other => (String::new(), other.to_string()),
            });
        Migrator {
            name: Cow::Borrowed(name),
            sets,
        }
    }

    /// A migrator named `name` running `set` on whichever backend the engine has.
    pub fn new(name: impl Into<String>, set: MigrationSet) -> Migrator {
        Migrator {
            name: Cow::Owned(name.into()),
            sets: Ok(vec![(None, set)]),
        }
    }

    /// The migrations in `dir`, read now (see [`MigrationSet::from_dir`]), as a migrator
    /// named `name`.
    pub fn from_dir(
        name: impl Into<String>,
        dir: impl AsRef<std::path::Path>,
    ) -> Result<Migrator, Error> {
        Ok(Migrator::new(name, MigrationSet::from_dir(dir)?))
    }

    /// The set's name, as the ledger records it (the crate's name unless the macro was given
    /// `name = "..."`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The migrations for `backend`.
    pub fn set(&self, backend: Backend) -> Result<&MigrationSet, MigrationError> {
        let sets = self
            .sets
            .as_ref()
            .map_err(|(file, reason)| MigrationError::Invalid {
                file: file.clone(),
                reason: reason.clone(),
            })?;
        sets.iter()
            .find(|(b, _)| *b == Some(backend))
            .or_else(|| sets.iter().find(|(b, _)| b.is_none()))
            .map(|(_, set)| set)
            .ok_or_else(|| MigrationError::UnsupportedBackend {
                set: self.name.to_string(),
                backend: backend.to_string(),
                supported: sets
                    .iter()
                    .filter_map(|(b, _)| b.map(|b| b.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn session<'a, C: PoolConnection>(
        &'a self,
        engine: &'a Engine<C>,
    ) -> Result<Session<'a, 'static>, Error> {
        let set = self.set(engine.backend())?;
        Session::open(
            engine.settings(),
            MigrationConn::open(engine)?,
            &self.name,
            set,
        )
    }

    /// Applies what is pending on `migration` under the lock, unless a read without it finds
    /// nothing to do (the usual boot); returns the applied and the allowed unknown migrations,
    /// and the connection.
    fn migrate<'c>(
        &self,
        mut migration: MigrationConn<'c>,
        settings: &Settings,
        set: &MigrationSet,
    ) -> Result<(Vec<String>, Vec<String>, MigrationConn<'c>), Error> {
        if session::up_to_date(&mut migration.conn, &self.name, set) {
            return Ok((Vec::new(), Vec::new(), migration));
        }
        let mut session = Session::open(settings, migration, &self.name, set)?;
        let result = session.apply();
        let migration = session.close();
        let (applied, unknown) = result?;
        Ok((applied, unknown, migration))
    }

    /// Applies the pending migrations (see the module doc) on a connection of their own, and
    /// returns their names: [`Migrator::run_pending_on`] with the engine's settings.
    pub fn run_pending<C: PoolConnection>(&self, engine: &Engine<C>) -> Result<Vec<String>, Error> {
        let set = self.set(engine.backend())?;
        Ok(self
            .migrate(MigrationConn::open(engine)?, engine.settings(), set)?
            .0)
    }

    /// Applies the pending migrations on `conn`, a connection of the caller's own (outside any
    /// pool), with everything [`Migrator::run_pending`] does: the session readied for
    /// migrations (no statement timeout, `(migrations)` after its application name), the
    /// lock, the ledger's checks, each migration with its ledger row in its transaction.
    /// `settings` are those `conn` was made from: the lock's timeouts and, on SQLite, the lock
    /// file beside the database come from them. Returns the names of the applied migrations.
    ///
    /// ```
    /// use diesel::{Connection, SqliteConnection};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("app.sqlite3");
    /// let settings = datalayer::Settings::from_pairs([("DATABASE_PATH", path.as_os_str())])?;
    /// let mut conn = datalayer::Conn::Sqlite(SqliteConnection::establish(&path.to_string_lossy())?);
    /// let migrator = datalayer::embed_migrations!("doc/migrations");
    /// assert_eq!(migrator.run_pending_on(&mut conn, &settings)?.len(), 1);
    /// assert!(migrator.run_pending_on(&mut conn, &settings)?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run_pending_on(
        &self,
        conn: &mut Conn,
        settings: &Settings,
    ) -> Result<Vec<String>, Error> {
        let backend = match &*conn {
            #[cfg(feature = "postgres")]
            Conn::Postgres(_) => Backend::Postgres,
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(_) => Backend::Sqlite,
        };
        if backend != settings.backend() {
            let variable = match settings.backend() {
                Backend::Postgres => "DATABASE_URL",
                Backend::Sqlite => "DATABASE_PATH",
            };
            return Err(Error::config(
                variable,
                format!(
                    "describes a {} database but the connection is to {backend}: give \
                     run_pending_on the settings the connection was made from",
                    settings.backend()
                ),
            ));
        }
        let set = self.set(backend)?;
        let target = settings.connection_url().redacted().to_string();
        Ok(self
            .migrate(MigrationConn::lent(conn, target), settings, set)?
            .0)
    }

    /// The boot sequence's migration step: [`Migrator::run_pending`], then the drift check
    /// that `DATABASE_SCHEMA_CHECK` asks for ([`schema_check`]): `strict` runs it before
    /// returning and turns differences into [`MigrationError::SchemaDrift`]; `warn` runs it in
    /// the background, logs what it finds, and reports it through [`BootReport::drift`].
    pub fn boot<C: PoolConnection>(&self, engine: &Engine<C>) -> Result<BootReport, Error> {
        let set = self.set(engine.backend())?;
        let (applied, unknown, migration) =
            self.migrate(MigrationConn::open(engine)?, engine.settings(), set)?;
        let drift = schema_check::start(engine, &self.name, set, migration, !unknown.is_empty())?;
        Ok(BootReport {
            applied,
            unknown,
            drift,
        })
    }

    /// Reverts applied migrations of this set, newest first, and returns their names.
    pub fn revert<C: PoolConnection>(
        &self,
        engine: &Engine<C>,
        how_far: Revert,
    ) -> Result<Vec<String>, Error> {
        let mut session = self.session(engine)?;
        let result = session.revert(how_far);
        session.close();
        result
    }

    /// Which migrations are applied, pending, unknown and edited, and who holds the migration
    /// lock. Takes no lock and writes nothing: a database never migrated shows every
    /// migration pending.
    pub fn status<C: PoolConnection>(&self, engine: &Engine<C>) -> Result<Status, Error> {
        let set = self.set(engine.backend())?;
        read_only(engine, |migration| {
            let rows = ledger::applied_read_only(&mut migration.conn);
            let lock = lock::holder(migration, engine.settings())?;
            let ledger = Ledger::read(&self.name, set, &rows);
            Ok(Status {
                applied: ledger.applied.iter().map(|s| s.name.clone()).collect(),
                pending: ledger.pending.iter().map(|s| s.name.clone()).collect(),
                unknown: ledger.unknown,
                edited: ledger.edited.iter().map(|(s, _)| s.name.clone()).collect(),
                lock,
                invalid_indexes: invalid_indexes(&mut migration.conn)?,
            })
        })
    }

    /// Records the current checksum of `migration`'s `up.sql` as the accepted one, after a
    /// deliberate edit of an applied migration. Logs what it did. The migration is named as
    /// [`status`](Migrator::status) names it (its folder name, e.g.
    /// `2026-11-25-000001_create_users` or diesel CLI 2.3's `2026-12-06-180955-0000_name`),
    /// by its folder's version part, or by Diesel's version (`20261125000001`).
    pub fn accept_checksum<C: PoolConnection>(
        &self,
        engine: &Engine<C>,
        migration: &str,
    ) -> Result<(), Error> {
        let set = self.set(engine.backend())?;
        let script = set
            .script(migration)
            .ok_or_else(|| MigrationError::NoSuchVersion {
                set: self.name.to_string(),
                version: migration.to_string(),
            })?;
        let mut session = Session::open(
            engine.settings(),
            MigrationConn::open(engine)?,
            &self.name,
            set,
        )?;
        let result = session.accept(script);
        session.close();
        if result? {
            tracing::warn!(
                "accepted the edited up.sql of migration {} (checksum {})",
                script.name,
                script.checksum
            );
        }
        Ok(())
    }
}

/// Who holds the migration lock right now, if anyone.
pub fn lock_holder<C: PoolConnection>(engine: &Engine<C>) -> Result<Option<LockHolder>, Error> {
    read_only(engine, |migration| {
        Ok(lock::holder(migration, engine.settings())?)
    })
}

/// Invalid indexes of the current schema (PostgreSQL; none on SQLite), as `schema.index`.
fn invalid_indexes(conn: &mut Conn) -> Result<Vec<String>, Error> {
    match conn {
        #[cfg(feature = "postgres")]
        Conn::Postgres(pg) => {
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct Index {
                #[diesel(sql_type = diesel::sql_types::Text)]
                name: String,
            }
            let rows: Vec<Index> = diesel::sql_query(
                "SELECT n.nspname || '.' || c.relname AS name FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE NOT i.indisvalid AND n.nspname = current_schema() ORDER BY 1",
            )
            .load(pg)
            .map_err(|source| MigrationError::Database {
                action: "looking for invalid indexes",
                source,
            })?;
            Ok(rows.into_iter().map(|row| row.name).collect())
        }
        #[cfg(feature = "sqlite")]
        Conn::Sqlite(_) => Ok(Vec::new()),
    }
}

/// Runs `read` on a migration connection of its own.
fn read_only<T, C: PoolConnection>(
    engine: &Engine<C>,
    read: impl FnOnce(&mut MigrationConn) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut migration = MigrationConn::open(engine)?;
    migration.ready()?;
    read(&mut migration)
}
