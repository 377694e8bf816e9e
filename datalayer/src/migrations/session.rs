//! One migration run: its connection and lock, the set's view of the ledger, and applying,
//! reverting and checking drift under that lock (see the module doc of `migrations`).

use std::time::Duration;

use super::connection::MigrationConn;
use super::set::{MigrationSet, Script};
use super::source::{self, Step};
use super::{Revert, ledger, lock};
use crate::config::{Backend, Settings};
use crate::engine::Conn;
use crate::error::{Error, MigrationError};

/// How many times a migration that hit the DDL lock timeout is tried in all.
const DDL_ATTEMPTS: u32 = 6;
/// The wait before the second try; it doubles for each further try.
const DDL_FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// One set's view of the ledger: its rows, told apart from other sets' rows.
pub(super) struct Ledger<'s> {
    /// Applied migrations this set knows, oldest first.
    pub(super) applied: Vec<&'s Script>,
    /// Known migrations not applied.
    pub(super) pending: Vec<&'s Script>,
    /// Versions of this set (or of no recorded set) that it does not know.
    pub(super) unknown: Vec<String>,
    /// Applied migrations without a ledger row (applied before the ledger existed).
    pub(super) backfill: Vec<&'s Script>,
    /// Applied migrations whose checksum differs, with the recorded one.
    pub(super) edited: Vec<(&'s Script, String)>,
    /// A migration of this set whose version another set applied, with that set's name.
    pub(super) clash: Option<(&'s Script, String)>,
}

impl<'s> Ledger<'s> {
    pub(super) fn read(
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

/// Whether `set` has nothing to do: every migration applied and recorded under this set, with
/// the checksum it was applied with, and no version the set does not know. Read without the
/// lock (one statement; no write): when it says yes there is nothing the lock would protect,
/// so a boot with nothing to do takes no lock. Anything else (a missing ledger, work to do,
/// something to report) goes through [`Session`], which reads again under the lock.
pub(super) fn up_to_date(conn: &mut Conn, name: &str, set: &MigrationSet) -> bool {
    let Ok(rows) = ledger::applied(conn) else {
        return false;
    };
    let view = Ledger::read(name, set, &rows);
    view.pending.is_empty()
        && view.unknown.is_empty()
        && view.backfill.is_empty()
        && view.edited.is_empty()
        && view.clash.is_none()
}

/// One migration run: its connection, the lock, and the checks done under it.
pub(super) struct Session<'a, 'c> {
    migration: MigrationConn<'c>,
    guard: Option<lock::Guard>,
    name: &'a str,
    set: &'a MigrationSet,
    settings: &'a Settings,
}

impl<'a, 'c> Session<'a, 'c> {
    /// Readies `migration` and takes the migration lock on it.
    pub(super) fn open(
        settings: &'a Settings,
        mut migration: MigrationConn<'c>,
        name: &'a str,
        set: &'a MigrationSet,
    ) -> Result<Session<'a, 'c>, Error> {
        migration.ready()?;
        let guard = lock::acquire(&mut migration, settings, settings.migrations.lock_timeout)?;
        Ok(Session {
            migration,
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
        match ledger::applied(&mut self.migration.conn) {
            Ok(rows) => Ok(rows),
            Err(_) => {
                ledger::ensure(&mut self.migration.conn)?;
                ledger::applied(&mut self.migration.conn).map_err(|source| {
                    MigrationError::Database {
                        action: "reading the applied migrations",
                        source,
                    }
                })
            }
        }
    }

    /// Records `script`'s current checksum as the accepted one; whether a row changed.
    pub(super) fn accept(&mut self, script: &Script) -> Result<bool, MigrationError> {
        ledger::ensure(&mut self.migration.conn)?;
        ledger::accept(&mut self.migration.conn, &script.version, &script.checksum)
    }

    /// Releases the lock; gives back the connection.
    pub(super) fn close(mut self) -> MigrationConn<'c> {
        if let Some(guard) = self.guard.take() {
            guard.release(&mut self.migration.conn);
        }
        self.migration
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
                crate::error::escaped_list(&ledger.unknown)
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
            ledger::record(
                &mut self.migration.conn,
                self.name,
                script,
                None,
                ledger::BACKFILL,
            )?;
        }
        Ok(ledger)
    }

    /// Applies every pending migration; returns their names and the allowed unknown versions.
    pub(super) fn apply(&mut self) -> Result<(Vec<String>, Vec<String>), Error> {
        let Ledger {
            pending, unknown, ..
        } = self.check()?;
        let mut applied = Vec::with_capacity(pending.len());
        for script in pending {
            if let Err(e) = self.apply_one(script) {
                stopped_at("applied", &script.name, &applied);
                return Err(e);
            }
            applied.push(script.name.clone());
        }
        Ok((applied, unknown))
    }

    fn postgres(&self) -> bool {
        self.settings.backend() == Backend::Postgres
    }

    /// `script` as a diesel migration, with this run's DDL lock timeout.
    fn step(&self, script: &Script) -> Step {
        Step::new(
            self.name,
            self.set,
            script,
            self.postgres(),
            Some(self.settings.migrations.ddl_lock_timeout),
        )
    }

    /// Applies one migration through diesel_migrations' harness (its ledger row in the same
    /// transaction); a migration in a transaction that PostgreSQL's `lock_timeout` cut short
    /// (nothing of it stayed) is retried with backoff.
    fn apply_one(&mut self, script: &Script) -> Result<(), Error> {
        let step = self.step(script);
        let ddl_timeout = self.settings.migrations.ddl_lock_timeout.as_millis();
        let retry = self.postgres() && script.run_in_transaction;
        let mut backoff = DDL_FIRST_BACKOFF;
        for attempt in 1..=DDL_ATTEMPTS {
            match harness(&mut self.migration.conn, &step, Direction::Up) {
                Err(MigrationError::Apply { source, .. })
                    if retry && attempt < DDL_ATTEMPTS && is_lock_timeout(&source) =>
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

    pub(super) fn revert(&mut self, how_far: Revert) -> Result<Vec<String>, Error> {
        // A database never migrated has nothing to revert: say so without creating the
        // ledger tables, as `check` would.
        if ledger::applied_read_only(&mut self.migration.conn).is_empty() {
            return Ok(Vec::new());
        }
        let mut applied = self.check()?.applied;
        let mut reverted = Vec::new();
        while let Some(script) = applied.pop() {
            if let Revert::Steps(n) = how_far
                && reverted.len() >= n
            {
                break;
            }
            let step = self.step(script);
            if let Err(e) = harness(&mut self.migration.conn, &step, Direction::Down) {
                stopped_at("reverted", &script.name, &reverted);
                return Err(e.into());
            }
            reverted.push(script.name.clone());
        }
        Ok(reverted)
    }
}

/// Says, when a run of several migrations fails at `failed`, what it already `done` (applied
/// or reverted) and kept: the error alone names only the one that failed.
fn stopped_at(done: &str, failed: &str, finished: &[String]) {
    if finished.is_empty() {
        return;
    }
    tracing::warn!(
        "stopped at {failed}; {} migration(s) {done} before it, and kept: {}",
        finished.len(),
        finished.join(", ")
    );
}

/// Which way [`harness`] runs a migration.
#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// Runs (or reverts) `step` through diesel_migrations' `MigrationHarness` on `conn`: in a
/// transaction unless the migration says otherwise, with Diesel's `__diesel_schema_migrations`
/// row written (or removed) after it, as `diesel migration run` would.
fn harness(conn: &mut Conn, step: &Step, direction: Direction) -> Result<(), MigrationError> {
    use diesel_migrations::MigrationHarness;
    let result = match conn {
        #[cfg(feature = "postgres")]
        Conn::Postgres(pg) => {
            let step: &dyn diesel::migration::Migration<diesel::pg::Pg> = step;
            match direction {
                Direction::Up => pg.run_migration(step),
                Direction::Down => pg.revert_migration(step),
            }
        }
        #[cfg(feature = "sqlite")]
        Conn::Sqlite(sqlite) => {
            let step: &dyn diesel::migration::Migration<diesel::sqlite::Sqlite> = step;
            match direction {
                Direction::Up => sqlite.run_migration(step),
                Direction::Down => sqlite.revert_migration(step),
            }
        }
    };
    result.map(drop).map_err(source::from_harness)
}
