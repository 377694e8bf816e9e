//! One migration run: its connection and lock, the set's view of the ledger, and applying,
//! reverting and checking drift under that lock (see the module doc of `migrations`).

use std::time::{Duration, Instant};

use diesel::Connection;
use diesel::connection::SimpleConnection;

use super::set::{MigrationSet, Script};
use super::{Revert, ledger, lock, statements};
use crate::config::{Backend, Settings};
use crate::engine::{Conn, Engine, MigrationConn, PoolConnection};
use crate::error::{Error, MigrationError};

/// How many times a migration that hit the DDL lock timeout is tried in all.
const DDL_ATTEMPTS: u32 = 6;
/// The wait before the second try; it doubles for each further try.
const DDL_FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What `applied_by` records for migrations this build applies.
const APPLIED_BY: &str = concat!("datalayer ", env!("CARGO_PKG_VERSION"));

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
pub(super) struct Session<'a> {
    migration: MigrationConn,
    guard: Option<lock::Guard>,
    name: &'a str,
    set: &'a MigrationSet,
    settings: &'a Settings,
}

impl<'a> Session<'a> {
    /// Readies `migration` and takes the migration lock on it.
    pub(super) fn open<C: PoolConnection>(
        engine: &'a Engine<C>,
        mut migration: MigrationConn,
        name: &'a str,
        set: &'a MigrationSet,
    ) -> Result<Session<'a>, Error> {
        engine.ready_for_migrations(&mut migration)?;
        let settings = engine.settings();
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
    pub(super) fn close(mut self) -> MigrationConn {
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
            let result = self
                .migration
                .conn
                .transaction(|conn| -> Result<(), MigrationError> {
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
        self.migration
            .conn
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
            self.migration
                .conn
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
            if let Err(source) = self.migration.conn.batch_execute(statement) {
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
            let _ = self.migration.conn.batch_execute("RESET lock_timeout");
        }
        outcome
    }

    pub(super) fn revert(&mut self, how_far: Revert) -> Result<Vec<String>, Error> {
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
                self.migration
                    .conn
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
                self.migration
                    .conn
                    .transaction(|conn| ledger::forget(conn, &script.version))?;
            }
            reverted.push(script.name.clone());
        }
        Ok(reverted)
    }
}
