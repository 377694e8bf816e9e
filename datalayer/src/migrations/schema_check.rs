//! The boot's drift check (`DATABASE_SCHEMA_CHECK`): the live schema against the set's
//! committed fingerprint.
//!
//! Reading the catalog is slow for a new session on PostgreSQL (its catalog caches are cold):
//! more than the rest of a boot with nothing to do (`docs/design.md` has the figures). So:
//!
//! - `warn` runs it on a thread of its own, on the migration connection, after the boot has
//!   returned: differences are logged as warnings as soon as it finishes (every boot, so a
//!   hand-made `ALTER TABLE` is reported on the next one), and [`DriftCheck`] (in the boot's
//!   report: a cheap clone the application keeps, e.g. for a health endpoint) gives the
//!   outcome or waits for it.
//! - `strict` runs it before the boot returns, and refuses to boot on a difference.
//!
//! The catalog is read without the migration lock. When it differs from the fingerprint, the
//! check takes the lock and reads the ledger and the catalog again before reporting: a
//! migration of a newer release applied meanwhile by another replica is then seen as such
//! (its additions allowed under `DATABASE_ALLOW_UNKNOWN_MIGRATIONS`), and one half-way through
//! (a `CREATE INDEX CONCURRENTLY` that has not recorded itself yet) has finished.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::connection::MigrationConn;
use super::session::Ledger;
use super::set::MigrationSet;
use super::{drift, ledger, lock};
use crate::config::{SchemaCheck, Settings};
use crate::engine::{Engine, PoolConnection};
use crate::error::{Error, MigrationError};

/// What a drift check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftOutcome {
    /// Not run: `DATABASE_SCHEMA_CHECK=off`, or the set has no committed fingerprint.
    Skipped,
    /// Run: the differences found (none when the schema matches), each also logged.
    Checked(Vec<String>),
    /// The check could not run (logged as a warning): why.
    Failed(String),
}

/// One boot's drift check: finished, or running in the background
/// (`DATABASE_SCHEMA_CHECK=warn`). Clones share the outcome.
#[derive(Debug, Clone)]
pub struct DriftCheck(Arc<(Mutex<Option<DriftOutcome>>, Condvar)>);

impl Default for DriftCheck {
    fn default() -> DriftCheck {
        DriftCheck::done(DriftOutcome::Skipped)
    }
}

impl DriftCheck {
    fn done(outcome: DriftOutcome) -> DriftCheck {
        DriftCheck(Arc::new((Mutex::new(Some(outcome)), Condvar::new())))
    }

    fn running() -> DriftCheck {
        DriftCheck(Arc::new((Mutex::new(None), Condvar::new())))
    }

    fn finish(&self, outcome: DriftOutcome) {
        let (slot, finished) = &*self.0;
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(outcome);
        }
        finished.notify_all();
    }

    /// The outcome, or `None` while the check runs.
    pub fn outcome(&self) -> Option<DriftOutcome> {
        self.0.0.lock().ok().and_then(|slot| slot.clone())
    }

    /// Waits at most `limit` for the outcome; `None` if the check is still running then.
    pub fn wait_for(&self, limit: Duration) -> Option<DriftOutcome> {
        let (slot, finished) = &*self.0;
        let deadline = Instant::now() + limit;
        let mut slot = slot.lock().ok()?;
        loop {
            if let Some(outcome) = &*slot {
                return Some(outcome.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            slot = finished.wait_timeout(slot, left).ok()?.0;
        }
    }

    /// Waits for the outcome.
    pub fn wait(&self) -> DriftOutcome {
        loop {
            if let Some(outcome) = self.wait_for(Duration::from_secs(3600)) {
                return outcome;
            }
        }
    }

    /// Waits for the outcome; the differences it found (none when skipped or failed).
    pub fn differences(&self) -> Vec<String> {
        match self.wait() {
            DriftOutcome::Checked(differences) => differences,
            DriftOutcome::Skipped | DriftOutcome::Failed(_) => Vec::new(),
        }
    }
}

/// What one check needs, owned, so that it can run on a thread of its own.
struct Check {
    migration: MigrationConn<'static>,
    settings: Settings,
    name: String,
    set: MigrationSet,
    expected: String,
    allow_additions: bool,
}

/// Starts the boot's drift check on `migration` (the connection the boot used), as
/// `DATABASE_SCHEMA_CHECK` says. `allow_additions`: the database has allowed migrations this
/// binary does not know, which may have added objects.
pub(super) fn start<C: PoolConnection>(
    engine: &Engine<C>,
    name: &str,
    set: &MigrationSet,
    migration: MigrationConn<'static>,
    allow_additions: bool,
) -> Result<DriftCheck, Error> {
    let settings = engine.settings();
    let mode = settings.migrations.schema_check;
    let Some(expected) = set.fingerprint().filter(|_| mode != SchemaCheck::Off) else {
        return Ok(DriftCheck::default());
    };
    let check = Check {
        migration,
        settings: settings.clone(),
        name: name.to_string(),
        set: set.clone(),
        expected: expected.to_string(),
        allow_additions,
    };
    if mode == SchemaCheck::Strict {
        let differences = check.run()?;
        if !differences.is_empty() {
            return Err(MigrationError::SchemaDrift { differences }.into());
        }
        return Ok(DriftCheck::done(DriftOutcome::Checked(differences)));
    }
    let running = DriftCheck::running();
    let outcome = running.clone();
    let spawned = std::thread::Builder::new()
        .name("datalayer-drift-check".into())
        .spawn(move || {
            let result = match check.run() {
                Ok(differences) => {
                    for difference in &differences {
                        tracing::warn!("schema drift: {difference}");
                    }
                    DriftOutcome::Checked(differences)
                }
                Err(error) => {
                    tracing::warn!("the schema drift check could not run: {error}");
                    DriftOutcome::Failed(error.to_string())
                }
            };
            outcome.finish(result);
        });
    if let Err(error) = spawned {
        let why = format!("cannot start its thread: {error}");
        tracing::warn!("the schema drift check could not run: {why}");
        running.finish(DriftOutcome::Failed(why));
    }
    Ok(running)
}

impl Check {
    /// The differences, confirmed under the migration lock when there are any.
    fn run(mut self) -> Result<Vec<String>, Error> {
        let backend = self.settings.backend();
        self.migration.ready()?;
        let tables = drift::tables(&self.expected);
        let live = drift::fingerprint_of(&mut self.migration.conn, backend, Some(&tables))?;
        let differences = drift::differences(&self.expected, &live, self.allow_additions);
        if differences.is_empty() {
            return Ok(differences);
        }
        let guard = lock::acquire(
            &mut self.migration,
            &self.settings,
            self.settings.migrations.lock_timeout,
        )?;
        let conn: &mut crate::engine::Conn = &mut self.migration.conn;
        let confirmed = ledger::applied(conn)
            .map_err(|source| {
                Error::from(MigrationError::Database {
                    action: "reading the applied migrations",
                    source,
                })
            })
            .and_then(|rows| {
                let unknown = !Ledger::read(&self.name, &self.set, &rows)
                    .unknown
                    .is_empty();
                let allow =
                    self.allow_additions || (unknown && self.settings.migrations.allow_unknown);
                let live = drift::fingerprint_of(conn, backend, Some(&tables))?;
                Ok(drift::differences(&self.expected, &live, allow))
            });
        guard.release(conn);
        confirmed
    }
}
