//! The migrations as Diesel sees them: a [`Migrator`] is a diesel `MigrationSource` for each
//! backend it has a set for, and each of its migrations a diesel `Migration` that writes its
//! ledger row (set, checksum, duration) in the same transaction as itself.
//!
//! So an application's plain Diesel code or tests can apply them with diesel_migrations'
//! `MigrationHarness` (`conn.run_pending_migrations(migrator)`) and the ledger stays right;
//! what that path lacks is the lock, the ledger's checks (checksums, unknown versions) and the
//! drift check, which only the [`Migrator`]'s own methods add. Those apply each pending
//! migration through the same harness, one by one under the lock
//! (`MigrationHarness::run_migration` and `revert_migration`), which records Diesel's
//! `__diesel_schema_migrations` row: the diesel CLI keeps agreeing.

use std::fmt;
use std::time::{Duration, Instant};

use diesel::backend::Backend;
use diesel::connection::BoxableConnection;
use diesel::migration::{
    Migration, MigrationMetadata, MigrationName, MigrationSource, MigrationVersion,
};

use super::set::{MigrationSet, Script};
use super::{Migrator, statements};
use crate::error::MigrationError;

/// What `applied_by` records for migrations this build applies.
pub(crate) const APPLIED_BY: &str = concat!("datalayer ", env!("CARGO_PKG_VERSION"));

/// One migration of a set, as a diesel `Migration`.
pub(crate) struct Step {
    script: Script,
    /// The set's name, for its ledger row.
    set: String,
    /// `up.sql` and `down.sql` as errors name them (the folder they came from).
    up_file: String,
    down_file: String,
    /// PostgreSQL (statement splitting and `lock_timeout` apply), not SQLite.
    postgres: bool,
    /// PostgreSQL's `lock_timeout` for its DDL (`DATABASE_MIGRATION_DDL_LOCK_TIMEOUT`), when
    /// the migrator runs it; none through plain Diesel.
    ddl_lock_timeout: Option<Duration>,
    /// Create the ledger table when missing (plain Diesel: nothing else made it).
    ensure_ledger: bool,
}

impl Step {
    pub(crate) fn new(
        set_name: &str,
        set: &MigrationSet,
        script: &Script,
        postgres: bool,
        ddl_lock_timeout: Option<Duration>,
    ) -> Step {
        Step {
            script: script.clone(),
            set: set_name.to_string(),
            up_file: set.file_of(&script.name, "up.sql"),
            down_file: set.file_of(&script.name, "down.sql"),
            postgres,
            ddl_lock_timeout,
            ensure_ledger: false,
        }
    }

    fn apply_error(
        &self,
        file: &str,
        progress: Option<String>,
        source: diesel::result::Error,
    ) -> MigrationError {
        MigrationError::Apply {
            migration: self.script.name.clone(),
            file: file.to_string(),
            progress,
            source,
        }
    }

    /// Runs `sql` (the migration's `up.sql` or `down.sql`). In a transaction, in one batch,
    /// after `SET LOCAL lock_timeout` on PostgreSQL. Outside one (`run_in_transaction =
    /// false`), on PostgreSQL one statement at a time (a multi-statement string is one implicit
    /// transaction, where `CREATE INDEX CONCURRENTLY` is refused) under the session's
    /// `lock_timeout`; a failure says which statements ran, since they stay applied.
    fn execute(
        &self,
        conn: &mut dyn diesel::connection::SimpleConnection,
        sql: &str,
        file: &str,
    ) -> Result<(), MigrationError> {
        let timeout = self
            .ddl_lock_timeout
            .filter(|_| self.postgres)
            .map(|t| t.as_millis());
        if self.script.run_in_transaction {
            if let Some(ms) = timeout {
                conn.batch_execute(&format!("SET LOCAL lock_timeout = {ms}"))
                    .map_err(|e| self.apply_error(file, None, e))?;
            }
            return conn
                .batch_execute(sql)
                .map_err(|e| self.apply_error(file, None, e));
        }
        if let Some(ms) = timeout {
            conn.batch_execute(&format!("SET lock_timeout = {ms}"))
                .map_err(|e| self.apply_error(file, None, e))?;
        }
        let statements = if self.postgres {
            statements::split(sql)
        } else {
            // SQLite runs a batch statement by statement, outside any transaction.
            vec![sql]
        };
        let total = statements.len();
        let mut outcome = Ok(());
        for (i, statement) in statements.iter().enumerate() {
            if let Err(source) = conn.batch_execute(statement) {
                let ran = if total == 1 {
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
                    "{ran}; nothing was recorded, so the next run starts it from its first \
                     statement: undo what ran (an interrupted CREATE INDEX CONCURRENTLY leaves an \
                     invalid index: DROP INDEX CONCURRENTLY IF EXISTS it) or make the statements \
                     idempotent (IF NOT EXISTS)"
                );
                outcome = Err(self.apply_error(file, Some(progress), source));
                break;
            }
        }
        if timeout.is_some() {
            let _ = conn.batch_execute("RESET lock_timeout");
        }
        outcome
    }

    /// The statement that writes this migration's ledger row, `took` after it started.
    fn ledger_row(&self, took: Duration) -> String {
        let text = |s: &str| format!("'{}'", s.replace('\'', "''"));
        format!(
            "INSERT INTO datalayer_migrations \
               (version, name, checksum, applied_at, duration_ms, applied_by, migration_set) \
             VALUES ({}, {}, {}, {}, {}, {}, {})",
            text(&self.script.version),
            text(&self.script.name),
            text(&self.script.checksum),
            text(
                &chrono::Utc::now()
                    .naive_utc()
                    .format("%Y-%m-%d %H:%M:%S%.6f")
                    .to_string()
            ),
            i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
            text(APPLIED_BY),
            text(&self.set),
        )
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.script.name)
    }
}

impl MigrationName for Step {
    fn version(&self) -> MigrationVersion<'_> {
        MigrationVersion::from(self.script.version.as_str())
    }
}

impl MigrationMetadata for Step {
    fn run_in_transaction(&self) -> bool {
        self.script.run_in_transaction
    }
}

impl<DB: Backend> Migration<DB> for Step {
    /// Runs `up.sql`, then writes the ledger row (in the migration's transaction when it has
    /// one; Diesel's own row follows in the same transaction).
    fn run(&self, conn: &mut dyn BoxableConnection<DB>) -> diesel::migration::Result<()> {
        let started = Instant::now();
        if self.ensure_ledger {
            conn.batch_execute(super::ledger::CREATE_LEDGER)
                .map_err(|source| MigrationError::Database {
                    action: "creating the ledger table",
                    source,
                })?;
        }
        self.execute(conn, &self.script.up, &self.up_file)?;
        conn.batch_execute(&self.ledger_row(started.elapsed()))
            .map_err(|source| MigrationError::Database {
                action: "recording the migration in the ledger",
                source,
            })?;
        Ok(())
    }

    /// Runs `down.sql`, then removes the ledger row.
    fn revert(&self, conn: &mut dyn BoxableConnection<DB>) -> diesel::migration::Result<()> {
        let Some(down) = &self.script.down else {
            return Err(MigrationError::Irreversible {
                migration: self.script.name.clone(),
                file: self.down_file.clone(),
            }
            .into());
        };
        self.execute(conn, down, &self.down_file)?;
        conn.batch_execute(&format!(
            "DELETE FROM datalayer_migrations WHERE version = '{}'",
            self.script.version.replace('\'', "''")
        ))
        .map_err(|source| MigrationError::Database {
            action: "removing the reverted migration from the ledger",
            source,
        })?;
        Ok(())
    }

    fn metadata(&self) -> &dyn MigrationMetadata {
        self
    }

    fn name(&self) -> &dyn MigrationName {
        self
    }
}

/// What a migration run through diesel_migrations' harness failed with, as datalayer's error:
/// the step's own errors come back as they were; Diesel's (its transaction, its
/// `__diesel_schema_migrations` row) as a database error.
pub(crate) fn from_harness(error: Box<dyn std::error::Error + Send + Sync>) -> MigrationError {
    match error.downcast::<MigrationError>() {
        Ok(mine) => *mine,
        Err(other) => match other.downcast::<diesel::result::Error>() {
            Ok(diesel) => MigrationError::Database {
                action: "recording the migration in __diesel_schema_migrations",
                source: *diesel,
            },
            Err(other) => MigrationError::Database {
                action: "running the migration",
                source: diesel::result::Error::QueryBuilderError(other),
            },
        },
    }
}

/// The migrator's set for `backend` as diesel `Migration`s for plain Diesel use.
fn steps<DB: Backend>(
    migrator: &Migrator,
    backend: crate::config::Backend,
) -> diesel::migration::Result<Vec<Box<dyn Migration<DB>>>> {
    let set = migrator.set(backend)?;
    let postgres = backend == crate::config::Backend::Postgres;
    Ok(set
        .scripts()
        .iter()
        .map(|script| {
            let mut step = Step::new(migrator.name(), set, script, postgres, None);
            step.ensure_ledger = true;
            Box::new(step) as Box<dyn Migration<DB>>
        })
        .collect())
}

/// The PostgreSQL set, for `MigrationHarness` on a `PgConnection`.
#[cfg(feature = "postgres")]
impl MigrationSource<diesel::pg::Pg> for Migrator {
    fn migrations(&self) -> diesel::migration::Result<Vec<Box<dyn Migration<diesel::pg::Pg>>>> {
        steps(self, crate::config::Backend::Postgres)
    }
}

/// The SQLite set, for `MigrationHarness` on a `SqliteConnection`.
#[cfg(feature = "sqlite")]
impl MigrationSource<diesel::sqlite::Sqlite> for Migrator {
    fn migrations(
        &self,
    ) -> diesel::migration::Result<Vec<Box<dyn Migration<diesel::sqlite::Sqlite>>>> {
        steps(self, crate::config::Backend::Sqlite)
    }
}
