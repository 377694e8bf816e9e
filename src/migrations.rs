//! Migrations that are safe when many replicas boot at once: the schema half of the seed's
//! `metadata`.
//!
//! The SQL lives in `migrations/postgres/` and `migrations/sqlite/` (same tables and columns;
//! a test compares them) and is compiled into the binary. Every run (migrate, revert, boot):
//!
//! 1. opens a connection of its own, outside the pool, without the application's statement
//!    timeout, named `<application_name> (migrations)`;
//! 2. takes the migration lock ([`lock`]), waiting at most `DATABASE_MIGRATION_LOCK_TIMEOUT`
//!    and saying who holds it;
//! 3. checks the ledger ([`ledger`]): every applied migration's `up.sql` must still hash to
//!    what was recorded, and the database must not have versions this binary does not know
//!    (unless `DATABASE_ALLOW_UNKNOWN_MIGRATIONS=true`); migrations applied before the ledger
//!    existed are backfilled;
//! 4. reads the pending set (so replicas that waited for the lock find nothing to do) and
//!    applies each migration in its own transaction, together with its ledger row. On
//!    PostgreSQL each runs with `SET LOCAL lock_timeout` (`DATABASE_MIGRATION_DDL_LOCK_TIMEOUT`)
//!    and is retried with backoff when it times out, so DDL never waits in the lock queue
//!    behind a long transaction while every other query queues behind it;
//! 5. at boot, compares the live schema with the committed fingerprint ([`drift`]).
//!
//! A failure names the migration and its file and leaves the database at the last migration
//! that succeeded.

pub mod drift;
pub mod ledger;
pub mod lock;
mod set;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use diesel::Connection;
use diesel::connection::SimpleConnection;
use diesel::migration::{Migration, MigrationSource};
use diesel_migrations::MigrationHarness;

pub use self::lock::LockHolder;
pub use self::set::{MigrationSet, Script};
use crate::config::{Backend, SchemaCheck};
use crate::engine::{Conn, Engine, MigrationConn, MultiBackend};
use crate::error::Error;

/// How many times a migration that hit the DDL lock timeout is tried in all.
pub const DDL_ATTEMPTS: u32 = 6;
/// The wait before the second try; it doubles for each further try.
pub const DDL_FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What `applied_by` records for migrations this build applies.
const APPLIED_BY: &str = concat!("datalayer ", env!("CARGO_PKG_VERSION"));

/// Applied and pending migrations, oldest first, by name (`<version>_<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// Migrations recorded in the database.
    pub applied: Vec<String>,
    /// Known migrations not applied yet.
    pub pending: Vec<String>,
    /// Versions the database has but this binary does not know (a newer release applied them).
    pub unknown: Vec<String>,
    /// Who holds the migration lock right now, if anyone.
    pub lock: Option<LockHolder>,
}

/// How far [`revert`] goes back.
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
    /// Versions in the database this binary does not know (allowed by
    /// `DATABASE_ALLOW_UNKNOWN_MIGRATIONS`).
    pub unknown: Vec<String>,
    /// Differences between the live schema and the fingerprint (`DATABASE_SCHEMA_CHECK=warn`).
    pub drift: Vec<String>,
}

/// Applies datalayer's pending migrations (see the module doc) and returns their names.
pub fn run_pending(engine: &Engine) -> Result<Vec<String>, Error> {
    run_pending_with(engine, &MigrationSet::builtin(engine.backend()))
}

/// [`run_pending`] with another set of migrations.
pub fn run_pending_with(engine: &Engine, set: &MigrationSet) -> Result<Vec<String>, Error> {
    let mut session = Session::open(engine, set)?;
    let applied = session.apply();
    session.close();
    Ok(applied?.0)
}

/// The boot sequence's migration step: [`run_pending`], then the drift check that
/// `DATABASE_SCHEMA_CHECK` asks for (`strict` turns differences into
/// [`Error::SchemaDrift`]; `warn` logs them and reports them here).
pub fn boot(engine: &Engine) -> Result<BootReport, Error> {
    let set = MigrationSet::builtin(engine.backend());
    let mut session = Session::open(engine, &set)?;
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

/// Reverts applied migrations, newest first, and returns their names.
pub fn revert(engine: &Engine, how_far: Revert) -> Result<Vec<String>, Error> {
    revert_with(engine, &MigrationSet::builtin(engine.backend()), how_far)
}

/// [`revert`] with another set of migrations.
pub fn revert_with(
    engine: &Engine,
    set: &MigrationSet,
    how_far: Revert,
) -> Result<Vec<String>, Error> {
    let mut session = Session::open(engine, set)?;
    let result = session.revert(how_far);
    session.close();
    result
}

/// Which migrations are applied, pending and unknown, and who holds the migration lock.
/// Takes no lock.
pub fn status(engine: &Engine) -> Result<Status, Error> {
    status_with(engine, &MigrationSet::builtin(engine.backend()))
}

/// [`status`] with another set of migrations.
pub fn status_with(engine: &Engine, set: &MigrationSet) -> Result<Status, Error> {
    read_only(engine, |migration| {
        let applied = applied_versions(&mut migration.conn)?;
        let lock = lock::holder(migration, engine.settings())?;
        Ok(classify(set, &applied, lock))
    })
}

/// Who holds the migration lock right now, if anyone.
pub fn lock_holder(engine: &Engine) -> Result<Option<LockHolder>, Error> {
    read_only(engine, |migration| {
        lock::holder(migration, engine.settings())
    })
}

/// Runs `read` on a migration connection, then gives the connection back to the engine (a
/// boot right after still finds the one `Engine::connect` kept).
fn read_only<T>(
    engine: &Engine,
    read: impl FnOnce(&mut MigrationConn) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut migration = engine.migration_connection()?;
    let result = read(&mut migration);
    if result.is_ok() {
        engine.give_back_migration_connection(migration);
    }
    result
}

/// Records the current checksum of `version`'s `up.sql` as the accepted one, after a
/// deliberate edit of an applied migration. Logs what it did.
pub fn accept_checksum(engine: &Engine, version: &str) -> Result<(), Error> {
    let set = MigrationSet::builtin(engine.backend());
    let script = set.script(version).ok_or_else(|| Error::Migration {
        migration: version.to_string(),
        file: set.origin.clone(),
        reason: "no migration with this version; give the version as `datalayer status` shows \
                 it, without dashes (e.g. 20261125000001)"
            .into(),
    })?;
    let mut session = Session::open(engine, &set)?;
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

fn applied_versions(conn: &mut Conn) -> Result<Vec<String>, Error> {
    let mut versions: Vec<String> = MigrationHarness::<MultiBackend>::applied_migrations(conn)
        .map_err(|e| reading_error(&e))?
        .iter()
        .map(|v| v.to_string())
        .collect();
    versions.sort();
    Ok(versions)
}

fn reading_error(e: &dyn std::fmt::Display) -> Error {
    Error::Migration {
        migration: "(none)".into(),
        file: "__diesel_schema_migrations".into(),
        reason: format!("cannot read the applied versions: {e}"),
    }
}

fn classify(set: &MigrationSet, applied: &[String], lock: Option<LockHolder>) -> Status {
    let known: BTreeSet<&str> = set.scripts.iter().map(|s| s.version.as_str()).collect();
    Status {
        applied: set
            .scripts
            .iter()
            .filter(|s| applied.contains(&s.version))
            .map(|s| s.name.clone())
            .collect(),
        pending: set
            .scripts
            .iter()
            .filter(|s| !applied.contains(&s.version))
            .map(|s| s.name.clone())
            .collect(),
        unknown: applied
            .iter()
            .filter(|v| !known.contains(v.as_str()))
            .cloned()
            .collect(),
        lock,
    }
}

/// The reason of a failed migration, without diesel's "Failed to run <version> with: "
/// wrapper (its type is private to diesel_migrations, so the prefix is cut from the text).
fn reason_of(error: &dyn std::fmt::Display) -> String {
    let message = error.to_string();
    message
        .strip_prefix("Failed to run ")
        .and_then(|rest| rest.split_once(" with: "))
        .map_or(message.clone(), |(_, reason)| reason.to_string())
}

/// PostgreSQL's message for SQLSTATE 55P03 caused by `lock_timeout`. Diesel does not expose
/// SQLSTATEs, so the (English) message is matched; under a translated `lc_messages` the
/// migration fails on its first timeout instead of retrying, which is still safe.
fn is_lock_timeout(reason: &str) -> bool {
    reason.contains("lock timeout")
}

/// One migration run: its connection, the lock, and the checks done under it.
struct Session<'a> {
    conn: Conn,
    guard: Option<lock::Guard>,
    set: &'a MigrationSet,
    engine: &'a Engine,
}

impl<'a> Session<'a> {
    fn open(engine: &'a Engine, set: &'a MigrationSet) -> Result<Session<'a>, Error> {
        let mut migration = engine.migration_connection()?;
        let settings = engine.settings();
        let guard = lock::acquire(&mut migration, settings, settings.migrations.lock_timeout)?;
        Ok(Session {
            conn: migration.conn,
            guard: Some(guard),
            set,
            engine,
        })
    }

    /// Every applied version with its ledger row. Reads first and creates the ledger
    /// tables only when that fails (a fresh database), so a boot with nothing to do spends one
    /// statement here.
    fn applied(&mut self) -> Result<Vec<(String, Option<ledger::Entry>)>, Error> {
        match ledger::applied(&mut self.conn) {
            Ok(rows) => Ok(rows),
            Err(_) => {
                ledger::ensure(&mut self.conn)?;
                ledger::applied(&mut self.conn).map_err(|e| reading_error(&e))
            }
        }
    }

    fn close(mut self) {
        if let Some(guard) = self.guard.take() {
            guard.release(&mut self.conn);
        }
    }

    /// Checks the ledger and the applied versions, backfilling rows the ledger lacks. Returns
    /// the applied versions and the unknown ones (allowed).
    fn check(&mut self) -> Result<(Vec<String>, Vec<String>), Error> {
        let rows = self.applied()?;
        let applied: Vec<String> = rows.iter().map(|(version, _)| version.clone()).collect();
        let status = classify(self.set, &applied, None);
        if !status.unknown.is_empty() {
            if !self.engine.settings().migrations.allow_unknown {
                return Err(Error::UnknownMigrations {
                    versions: status.unknown,
                });
            }
            tracing::warn!(
                "the database has migrations this binary does not know ({}); going on because \
                 DATABASE_ALLOW_UNKNOWN_MIGRATIONS=true",
                status.unknown.join(", ")
            );
        }
        for (version, entry) in &rows {
            let Some(script) = self.set.script(version) else {
                continue;
            };
            match entry {
                None => ledger::record(&mut self.conn, script, None, ledger::BACKFILL)?,
                Some(entry) if entry.checksum != script.checksum => {
                    return Err(Error::ChecksumMismatch {
                        migration: script.name.clone(),
                        version: version.clone(),
                        recorded: entry.checksum.clone(),
                        embedded: script.checksum.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok((applied, status.unknown))
    }

    /// Applies every pending migration; returns their names and the allowed unknown versions.
    fn apply(&mut self) -> Result<(Vec<String>, Vec<String>), Error> {
        let (applied_versions, unknown) = self.check()?;
        // The pending set from the versions read under the lock (the harness's own
        // `pending_migrations` would read them again).
        let mut pending: Vec<_> = MigrationSource::<MultiBackend>::migrations(&self.set)
            .map_err(|e| reading_error(&e))?
            .into_iter()
            .filter(|m| !applied_versions.contains(&m.name().version().to_string()))
            .collect();
        // A folder lists its migrations in directory order.
        pending.sort_by(|a, b| a.name().version().cmp(&b.name().version()));
        let mut applied = Vec::with_capacity(pending.len());
        for migration in pending {
            let name = migration.name().to_string();
            self.apply_one(migration.as_ref(), &name)?;
            applied.push(name);
        }
        Ok((applied, unknown))
    }

    fn apply_one(
        &mut self,
        migration: &dyn Migration<MultiBackend>,
        name: &str,
    ) -> Result<(), Error> {
        let script = self
            .set
            .scripts
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| Error::Migration {
                migration: name.to_string(),
                file: self.set.file_of(name),
                reason: "it has no up.sql".into(),
            })?;
        let postgres = self.engine.backend() == Backend::Postgres;
        let ddl_timeout = self
            .engine
            .settings()
            .migrations
            .ddl_lock_timeout
            .as_millis();
        let mut backoff = DDL_FIRST_BACKOFF;
        for attempt in 1..=DDL_ATTEMPTS {
            let started = Instant::now();
            let run = |conn: &mut Conn| -> Result<(), Error> {
                if postgres {
                    conn.batch_execute(&format!("SET LOCAL lock_timeout = {ddl_timeout}"))?;
                }
                MigrationHarness::<MultiBackend>::run_migration(conn, migration).map_err(|e| {
                    Error::Migration {
                        migration: name.to_string(),
                        file: self.set.file_of(name),
                        reason: reason_of(&e),
                    }
                })?;
                ledger::record(conn, &script, Some(started.elapsed()), APPLIED_BY)
            };
            let result = if migration.metadata().run_in_transaction() {
                self.conn.transaction(run)
            } else {
                // Outside a transaction SET LOCAL has no effect: use the session setting.
                self.conn
                    .batch_execute(&format!("SET lock_timeout = {ddl_timeout}"))
                    .map_err(Error::from)
                    .and_then(|()| run(&mut self.conn))
            };
            match result {
                Err(Error::Migration { reason, .. })
                    if postgres && attempt < DDL_ATTEMPTS && is_lock_timeout(&reason) =>
                {
                    tracing::warn!(
                        "migration {name} gave up waiting for a lock after {ddl_timeout} ms \
                         (attempt {attempt} of {DDL_ATTEMPTS}); retrying in {backoff:?}"
                    );
                    std::thread::sleep(backoff);
                    backoff *= 2;
                }
                other => return other,
            }
        }
        unreachable!("the last attempt returns")
    }

    fn revert(&mut self, how_far: Revert) -> Result<Vec<String>, Error> {
        self.check()?;
        let mut reverted = Vec::new();
        loop {
            if let Revert::Steps(n) = how_far
                && reverted.len() >= n
            {
                break;
            }
            let applied = self.applied()?;
            let Some(last) = applied
                .iter()
                .rev()
                .map(|(version, _)| version)
                .find(|v| self.set.script(v).is_some())
                .cloned()
            else {
                break;
            };
            let name = self
                .set
                .script(&last)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            let file = self.set.file_of(&name).replace("up.sql", "down.sql");
            let set = self.set;
            self.conn.transaction(|conn| -> Result<(), Error> {
                MigrationHarness::<MultiBackend>::revert_last_migration(conn, set).map_err(
                    |e| Error::Migration {
                        migration: name.clone(),
                        file: file.clone(),
                        reason: reason_of(&e),
                    },
                )?;
                ledger::forget(conn, &last)
            })?;
            reverted.push(name);
        }
        Ok(reverted)
    }

    fn drift(&mut self, unknown_present: bool) -> Result<Vec<String>, Error> {
        let mode = self.engine.settings().migrations.schema_check;
        let Some(expected) = self.set.fingerprint.filter(|_| mode != SchemaCheck::Off) else {
            return Ok(Vec::new());
        };
        // Only the expected tables: the others are not compared.
        let tables = drift::tables(expected);
        let live = drift::fingerprint_of(&mut self.conn, self.engine.backend(), Some(&tables))?;
        let differences = drift::differences(expected, &live, unknown_present);
        if differences.is_empty() {
            return Ok(differences);
        }
        if mode == SchemaCheck::Strict {
            return Err(Error::SchemaDrift { differences });
        }
        for difference in &differences {
            tracing::warn!("schema drift: {difference}");
        }
        Ok(differences)
    }
}
