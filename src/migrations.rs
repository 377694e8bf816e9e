//! Migrations that are safe when many replicas boot at once: the schema half of the seed's
//! `metadata`.
//!
//! An application embeds its migration folders (Diesel's layout) with
//! [`embed_migrations!`](crate::embed_migrations), which gives a [`Migrator`]: a value the
//! application holds and runs on boot. Every run (migrate, revert, boot):
//!
//! 1. opens a connection of its own, outside the pool, without the application's statement
//!    timeout, named `<application_name> (migrations)`;
//! 2. takes the migration lock ([`lock`]), waiting at most `DATABASE_MIGRATION_LOCK_TIMEOUT`
//!    and saying who holds it;
//! 3. checks the ledger (`datalayer_migrations`, beside Diesel's `__diesel_schema_migrations`): every applied migration's `up.sql` must still hash to
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
//! 5. at boot, compares the live schema with the committed fingerprint ([`drift`]).
//!
//! Several sets may share one database (a library's tables beside the application's): the
//! ledger records each migration under its set's name, and a set ignores the others' rows.
//! Versions stay unique per database, as Diesel's own table requires.
//!
//! A failure names the migration and its file and leaves the database at the last migration
//! that succeeded.

pub mod drift;
pub(crate) mod ledger;
pub mod lock;
mod set;
mod statements;

use std::borrow::Cow;
use std::time::{Duration, Instant};

use diesel::Connection;
use diesel::connection::SimpleConnection;

pub use self::lock::LockHolder;
pub use self::set::{MigrationSet, Script};
use crate::config::{Backend, SchemaCheck, Settings};
use crate::engine::{Conn, Engine, MigrationConn, PoolConnection};
use crate::error::Error;
pub use crate::error::MigrationError;

/// How many times a migration that hit the DDL lock timeout is tried in all.
const DDL_ATTEMPTS: u32 = 6;
/// The wait before the second try; it doubles for each further try.
const DDL_FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What `applied_by` records for migrations this build applies.
const APPLIED_BY: &str = concat!("datalayer ", env!("CARGO_PKG_VERSION"));

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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootReport {
    /// Migrations applied, in order.
    pub applied: Vec<String>,
    /// Versions in the database this migrator does not know (allowed by
    /// `DATABASE_ALLOW_UNKNOWN_MIGRATIONS`).
    pub unknown: Vec<String>,
    /// Differences between the live schema and the fingerprint (`DATABASE_SCHEMA_CHECK=warn`).
    pub drift: Vec<String>,
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
/// let migrator = datalayer::models::migrator(); // an application: datalayer::embed_migrations!("migrations")
/// let engine = datalayer::Engine::connect(&settings)?;
/// let report = migrator.boot(&engine)?;
/// assert_eq!(report.applied.len(), 2);
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
    ) -> Result<Session<'a>, Error> {
        let set = self.set(engine.backend())?;
        Session::open(engine, &self.name, set)
    }

    /// Applies the pending migrations (see the module doc) and returns their names.
    pub fn run_pending<C: PoolConnection>(&self, engine: &Engine<C>) -> Result<Vec<String>, Error> {
        let mut session = self.session(engine)?;
        let applied = session.apply();
        session.close();
        Ok(applied?.0)
    }

    /// The boot sequence's migration step: [`Migrator::run_pending`], then the drift check
    /// that `DATABASE_SCHEMA_CHECK` asks for (`strict` turns differences into
    /// [`MigrationError::SchemaDrift`]; `warn` logs them and reports them here).
    pub fn boot<C: PoolConnection>(&self, engine: &Engine<C>) -> Result<BootReport, Error> {
        let mut session = self.session(engine)?;
        let result = session.apply().and_then(|(applied, unknown)| {
            let drift = session.drift(!unknown.is_empty())?;
            Ok(BootReport {
                applied,
                unknown,
                drift,
            })
        });
        session.close();
        result
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
            })
        })
    }

    /// Records the current checksum of `version`'s `up.sql` as the accepted one, after a
    /// deliberate edit of an applied migration. Logs what it did.
    pub fn accept_checksum<C: PoolConnection>(
        &self,
        engine: &Engine<C>,
        version: &str,
    ) -> Result<(), Error> {
        let set = self.set(engine.backend())?;
        let script = set
            .script(version)
            .ok_or_else(|| MigrationError::NoSuchVersion {
                set: self.name.to_string(),
                version: version.to_string(),
            })?;
        let mut session = Session::open(engine, &self.name, set)?;
        let result = ledger::ensure(&mut session.conn)
            .and_then(|()| ledger::accept(&mut session.conn, version, &script.checksum));
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

/// Runs `read` on a migration connection, then gives the connection back to the engine (a
/// boot right after still finds the one `Engine::connect` kept).
fn read_only<T, C: PoolConnection>(
    engine: &Engine<C>,
    read: impl FnOnce(&mut MigrationConn) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut migration = engine.migration_connection()?;
    let result = read(&mut migration);
    if result.is_ok() {
        engine.give_back_migration_connection(migration);
    }
    result
}

/// One set's view of the ledger: its rows, told apart from other sets' rows.
struct Ledger<'s> {
    /// Applied migrations this set knows, oldest first.
    applied: Vec<&'s Script>,
    /// Known migrations not applied.
    pending: Vec<&'s Script>,
    /// Versions of this set (or of no recorded set) that it does not know.
    unknown: Vec<String>,
    /// Applied migrations without a ledger row (applied before the ledger existed).
    backfill: Vec<&'s Script>,
    /// Applied migrations whose checksum differs, with the recorded one.
    edited: Vec<(&'s Script, String)>,
    /// A migration of this set whose version another set applied, with that set's name.
    clash: Option<(&'s Script, String)>,
}

impl<'s> Ledger<'s> {
    fn read(
        name: &str,
        set: &'s MigrationSet,
        rows: &[(String, Option<ledger::Entry>)],
    ) -> Ledger<'s> {
        let mut view = Ledger {
            applied: Vec::new(),
            pending: Vec::new(),
            unknown: Vec::new(),
            backfill: Vec::new(),
            edited: Vec::new(),
            clash: None,
        };
        for (version, entry) in rows {
            let script = set.script(version);
            match (entry, script) {
                (Some(entry), Some(script)) if entry.migration_set != name => {
                    view.clash
                        .get_or_insert((script, entry.migration_set.clone()));
                }
                (Some(entry), _) if entry.migration_set != name => {}
                (_, None) => view.unknown.push(version.clone()),
                (None, Some(script)) => {
                    view.applied.push(script);
                    view.backfill.push(script);
                }
                (Some(entry), Some(script)) => {
                    view.applied.push(script);
                    if entry.checksum != script.checksum {
                        view.edited.push((script, entry.checksum.clone()));
                    }
                }
            }
        }
        view.applied.sort_by(|a, b| a.version.cmp(&b.version));
        view.pending = set
            .scripts
            .iter()
            .filter(|s| !view.applied.iter().any(|a| a.version == s.version))
            .filter(|s| {
                view.clash
                    .as_ref()
                    .is_none_or(|(c, _)| c.version != s.version)
            })
            .collect();
        view
    }
}

/// PostgreSQL's message for SQLSTATE 55P03 caused by `lock_timeout`. Diesel does not expose
/// SQLSTATEs, so the (English) message is matched; under a translated `lc_messages` the
/// migration fails on its first timeout instead of retrying, which is still safe.
fn is_lock_timeout(error: &diesel::result::Error) -> bool {
    error.to_string().contains("lock timeout")
}

/// One migration run: its connection, the lock, and the checks done under it.
struct Session<'a> {
    conn: Conn,
    guard: Option<lock::Guard>,
    name: &'a str,
    set: &'a MigrationSet,
    settings: &'a Settings,
}

impl<'a> Session<'a> {
    fn open<C: PoolConnection>(
        engine: &'a Engine<C>,
        name: &'a str,
        set: &'a MigrationSet,
    ) -> Result<Session<'a>, Error> {
        let mut migration = engine.migration_connection()?;
        let settings = engine.settings();
        let guard = lock::acquire(&mut migration, settings, settings.migrations.lock_timeout)?;
        Ok(Session {
            conn: migration.conn,
            guard: Some(guard),
            name,
            set,
            settings,
        })
    }

    /// Every applied version with its ledger row. Reads first and creates (or upgrades) the
    /// ledger tables only when that fails (a fresh database, or a ledger of an earlier
    /// release), so a boot with nothing to do spends one statement here.
    fn rows(&mut self) -> Result<Vec<(String, Option<ledger::Entry>)>, MigrationError> {
        match ledger::applied(&mut self.conn) {
            Ok(rows) => Ok(rows),
            Err(_) => {
                ledger::ensure(&mut self.conn)?;
                ledger::applied(&mut self.conn).map_err(|source| MigrationError::Database {
                    action: "reading the applied migrations",
                    source,
                })
            }
        }
    }

    fn close(mut self) {
        if let Some(guard) = self.guard.take() {
            guard.release(&mut self.conn);
        }
    }

    /// Checks the ledger, backfilling rows it lacks, and returns this set's view of it.
    fn check(&mut self) -> Result<Ledger<'a>, Error> {
        let rows = self.rows()?;
        let ledger = Ledger::read(self.name, self.set, &rows);
        if let Some((script, other_set)) = ledger.clash {
            return Err(MigrationError::VersionClash {
                set: self.name.to_string(),
                migration: script.name.clone(),
                version: script.version.clone(),
                other_set,
            }
            .into());
        }
        if !ledger.unknown.is_empty() {
            if !self.settings.migrations.allow_unknown {
                return Err(MigrationError::UnknownMigrations {
                    set: self.name.to_string(),
                    versions: ledger.unknown,
                }
                .into());
            }
            tracing::warn!(
                "the database has migrations of {:?} this binary does not know ({}); going on \
                 because DATABASE_ALLOW_UNKNOWN_MIGRATIONS=true",
                self.name,
                ledger.unknown.join(", ")
            );
        }
        if let Some((script, recorded)) = ledger.edited.first() {
            return Err(MigrationError::ChecksumMismatch {
                migration: script.name.clone(),
                version: script.version.clone(),
                recorded: recorded.clone(),
                embedded: script.checksum.clone(),
            }
            .into());
        }
        for script in &ledger.backfill {
            ledger::record(&mut self.conn, self.name, script, None, ledger::BACKFILL)?;
        }
        Ok(ledger)
    }

    /// Applies every pending migration; returns their names and the allowed unknown versions.
    fn apply(&mut self) -> Result<(Vec<String>, Vec<String>), Error> {
        let Ledger {
            pending, unknown, ..
        } = self.check()?;
        let mut applied = Vec::with_capacity(pending.len());
        for script in pending {
            if script.run_in_transaction {
                self.apply_in_transaction(script)?;
            } else {
                self.apply_outside_transaction(script)?;
            }
            applied.push(script.name.clone());
        }
        Ok((applied, unknown))
    }

    fn postgres(&self) -> bool {
        self.settings.backend() == Backend::Postgres
    }

    fn ddl_lock_timeout_ms(&self) -> u128 {
        self.settings.migrations.ddl_lock_timeout.as_millis()
    }

    fn apply_error(
        &self,
        script: &Script,
        file: &str,
        progress: Option<String>,
        source: diesel::result::Error,
    ) -> MigrationError {
        MigrationError::Apply {
            migration: script.name.clone(),
            file: self.set.file_of(&script.name, file),
            progress,
            source,
        }
    }

    /// The migration and its ledger rows in one transaction, retried with backoff when
    /// PostgreSQL's `lock_timeout` cut it short (nothing of it stayed).
    fn apply_in_transaction(&mut self, script: &Script) -> Result<(), Error> {
        let postgres = self.postgres();
        let ddl_timeout = self.ddl_lock_timeout_ms();
        let mut backoff = DDL_FIRST_BACKOFF;
        for attempt in 1..=DDL_ATTEMPTS {
            let started = Instant::now();
            let (name, set) = (self.name, self.set);
            let result = self.conn.transaction(|conn| -> Result<(), MigrationError> {
                let run = |conn: &mut Conn| -> diesel::QueryResult<()> {
                    if postgres {
                        conn.batch_execute(&format!("SET LOCAL lock_timeout = {ddl_timeout}"))?;
                    }
                    conn.batch_execute(&script.up)
                };
                run(conn).map_err(|source| MigrationError::Apply {
                    migration: script.name.clone(),
                    file: set.file_of(&script.name, "up.sql"),
                    progress: None,
                    source,
                })?;
                ledger::record_version(conn, &script.version)?;
                ledger::record(conn, name, script, Some(started.elapsed()), APPLIED_BY)
            });
            match result {
                Err(MigrationError::Apply { source, .. })
                    if postgres && attempt < DDL_ATTEMPTS && is_lock_timeout(&source) =>
                {
                    tracing::warn!(
                        "migration {} gave up waiting for a lock after {ddl_timeout} ms \
                         (attempt {attempt} of {DDL_ATTEMPTS}); retrying in {backoff:?}",
                        script.name
                    );
                    std::thread::sleep(backoff);
                    backoff *= 2;
                }
                other => return Ok(other?),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// A `run_in_transaction = false` migration: its statements (see
    /// [`Session::run_outside_transaction`]), then its ledger rows, written only after the last
    /// statement succeeded. Never retried.
    fn apply_outside_transaction(&mut self, script: &Script) -> Result<(), Error> {
        let started = Instant::now();
        self.run_outside_transaction(script, &script.up, "up.sql")?;
        let name = self.name;
        self.conn
            .transaction(|conn| -> Result<(), MigrationError> {
                ledger::record_version(conn, &script.version)?;
                ledger::record(conn, name, script, Some(started.elapsed()), APPLIED_BY)
            })?;
        Ok(())
    }

    /// Runs `sql` of a `run_in_transaction = false` migration. On PostgreSQL one statement at
    /// a time (a multi-statement string is one implicit transaction, where `CREATE INDEX
    /// CONCURRENTLY` is refused) under the session's `lock_timeout`; a failure says which
    /// statements ran, since they stay applied.
    fn run_outside_transaction(
        &mut self,
        script: &Script,
        sql: &str,
        file: &str,
    ) -> Result<(), MigrationError> {
        let statements = if self.postgres() {
            let ddl_timeout = self.ddl_lock_timeout_ms();
            self.conn
                .batch_execute(&format!("SET lock_timeout = {ddl_timeout}"))
                .map_err(|e| self.apply_error(script, file, None, e))?;
            statements::split(sql)
        } else {
            // SQLite runs a batch statement by statement, outside any transaction.
            vec![sql]
        };
        let total = statements.len();
        let mut outcome = Ok(());
        for (i, statement) in statements.iter().enumerate() {
            if let Err(source) = self.conn.batch_execute(statement) {
                let progress = if total == 1 {
                    "it runs outside a transaction (run_in_transaction = false), so whatever it \
                     did before failing stays"
                        .to_string()
                } else {
                    format!(
                        "it runs outside a transaction (run_in_transaction = false): statement {} \
                         of {total} failed and the {i} before it stayed applied",
                        i + 1
                    )
                };
                let progress = format!(
                    "{progress}; nothing was recorded, so the next run starts it from its first \
                     statement: undo what ran (an interrupted CREATE INDEX CONCURRENTLY leaves an \
                     invalid index: DROP INDEX CONCURRENTLY IF EXISTS it) or make the statements \
                     idempotent (IF NOT EXISTS)"
                );
                outcome = Err(self.apply_error(script, file, Some(progress), source));
                break;
            }
        }
        if self.postgres() {
            let _ = self.conn.batch_execute("RESET lock_timeout");
        }
        outcome
    }

    fn revert(&mut self, how_far: Revert) -> Result<Vec<String>, Error> {
        let mut applied = self.check()?.applied;
        let mut reverted = Vec::new();
        while let Some(script) = applied.pop() {
            if let Revert::Steps(n) = how_far
                && reverted.len() >= n
            {
                break;
            }
            let Some(down) = &script.down else {
                return Err(MigrationError::Irreversible {
                    migration: script.name.clone(),
                    file: self.set.file_of(&script.name, "down.sql"),
                }
                .into());
            };
            if script.run_in_transaction {
                let set = self.set;
                self.conn
                    .transaction(|conn| -> Result<(), MigrationError> {
                        conn.batch_execute(down)
                            .map_err(|source| MigrationError::Apply {
                                migration: script.name.clone(),
                                file: set.file_of(&script.name, "down.sql"),
                                progress: None,
                                source,
                            })?;
                        ledger::forget(conn, &script.version)
                    })?;
            } else {
                self.run_outside_transaction(script, down, "down.sql")?;
                self.conn
                    .transaction(|conn| ledger::forget(conn, &script.version))?;
            }
            reverted.push(script.name.clone());
        }
        Ok(reverted)
    }

    fn drift(&mut self, unknown_present: bool) -> Result<Vec<String>, Error> {
        let mode = self.settings.migrations.schema_check;
        let Some(expected) = self.set.fingerprint().filter(|_| mode != SchemaCheck::Off) else {
            return Ok(Vec::new());
        };
        // Only the expected tables: the others are not compared.
        let tables = drift::tables(expected);
        let live = drift::fingerprint_of(&mut self.conn, self.settings.backend(), Some(&tables))?;
        let differences = drift::differences(expected, &live, unknown_present);
        if differences.is_empty() {
            return Ok(differences);
        }
        if mode == SchemaCheck::Strict {
            return Err(MigrationError::SchemaDrift { differences }.into());
        }
        for difference in &differences {
            tracing::warn!("schema drift: {difference}");
        }
        Ok(differences)
    }
}
