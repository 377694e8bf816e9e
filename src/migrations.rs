//! Embedded migrations, per backend, and running them: the schema half of the seed's
//! `metadata`.
//!
//! The SQL lives in `migrations/postgres/` and `migrations/sqlite/` (same tables and columns;
//! a test compares them) and is compiled into the binary. Migrations run on a connection of
//! their own, outside the pool and without the application's statement timeout; each runs in
//! its own transaction, so a failure leaves the database at the last migration that succeeded.

use diesel::backend::Backend as DieselBackend;
use diesel::migration::{Migration, MigrationSource};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::engine::{Conn, Engine};
use crate::error::Error;

/// The PostgreSQL migrations, from `migrations/postgres`.
pub const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// The SQLite migrations, from `migrations/sqlite`.
pub const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Applied and pending migrations, oldest first, by name (`<version>_<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// Migrations recorded in the database.
    pub applied: Vec<String>,
    /// Embedded migrations not applied yet.
    pub pending: Vec<String>,
}

/// How far [`revert`] goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revert {
    /// The last `n` applied migrations.
    Steps(usize),
    /// Every applied migration.
    All,
}

/// Applies every pending migration for the engine's backend and returns their names, in the
/// order applied. Fails with [`Error::Migration`] naming the migration that failed.
pub fn run_pending(engine: &Engine) -> Result<Vec<String>, Error> {
    match engine.migration_connection()? {
        Conn::Postgres(mut conn) => apply(&mut conn, POSTGRES),
        Conn::Sqlite(mut conn) => apply(&mut conn, SQLITE),
    }
}

/// Reverts applied migrations, newest first, and returns their names.
pub fn revert(engine: &Engine, how_far: Revert) -> Result<Vec<String>, Error> {
    match engine.migration_connection()? {
        Conn::Postgres(mut conn) => undo(&mut conn, || POSTGRES, how_far),
        Conn::Sqlite(mut conn) => undo(&mut conn, || SQLITE, how_far),
    }
}

/// Which migrations are applied and which are pending.
pub fn status(engine: &Engine) -> Result<Status, Error> {
    match engine.migration_connection()? {
        Conn::Postgres(mut conn) => read_status(&mut conn, POSTGRES),
        Conn::Sqlite(mut conn) => read_status(&mut conn, SQLITE),
    }
}

/// `<version>_<name>` for every migration the source knows, by version.
fn names<DB: DieselBackend>(source: &EmbeddedMigrations) -> Result<Vec<(String, String)>, Error> {
    let migrations: Vec<Box<dyn Migration<DB>>> = MigrationSource::<DB>::migrations(source)
        .map_err(|e| Error::Migration {
            migration: "(embedded)".into(),
            reason: e.to_string(),
        })?;
    Ok(migrations
        .iter()
        .map(|m| (m.name().version().to_string(), m.name().to_string()))
        .collect())
}

fn migration_error(migration: &str, error: impl std::fmt::Display) -> Error {
    Error::Migration {
        migration: migration.to_string(),
        reason: error.to_string(),
    }
}

/// The database's own message for a failed migration, without diesel's "Failed to run
/// <version> with: " wrapper (the migration is named by [`Error::Migration`] already; the
/// wrapper's type is private to diesel_migrations, so the prefix is cut from the text).
fn run_error(migration: &str, error: impl std::fmt::Display) -> Error {
    let message = error.to_string();
    let reason = message
        .strip_prefix("Failed to run ")
        .and_then(|rest| rest.split_once(" with: "))
        .map_or(message.as_str(), |(_, reason)| reason);
    migration_error(migration, reason)
}

fn apply<DB, C>(conn: &mut C, source: EmbeddedMigrations) -> Result<Vec<String>, Error>
where
    DB: DieselBackend,
    C: MigrationHarness<DB>,
{
    let pending = conn
        .pending_migrations(source)
        .map_err(|e| migration_error("(reading applied versions)", e))?;
    let mut applied = Vec::with_capacity(pending.len());
    for migration in pending {
        let name = migration.name().to_string();
        conn.run_migration(&migration)
            .map_err(|e| run_error(&name, e))?;
        applied.push(name);
    }
    Ok(applied)
}

/// `source` makes the migrations anew for each step: `EmbeddedMigrations` is not `Clone`, and
/// each revert consumes one.
fn undo<DB, C>(
    conn: &mut C,
    source: fn() -> EmbeddedMigrations,
    how_far: Revert,
) -> Result<Vec<String>, Error>
where
    DB: DieselBackend,
    C: MigrationHarness<DB>,
{
    let known = names::<DB>(&source())?;
    let mut reverted = Vec::new();
    loop {
        if let Revert::Steps(n) = how_far
            && reverted.len() >= n
        {
            break;
        }
        let applied = conn
            .applied_migrations()
            .map_err(|e| migration_error("(reading applied versions)", e))?;
        let Some(last) = applied.iter().max() else {
            break;
        };
        let last = last.to_string();
        let name = known
            .iter()
            .find(|(version, _)| *version == last)
            .map(|(_, name)| name.clone())
            .unwrap_or_else(|| last.clone());
        conn.revert_last_migration(source())
            .map_err(|e| run_error(&name, e))?;
        reverted.push(name);
    }
    Ok(reverted)
}

fn read_status<DB, C>(conn: &mut C, source: EmbeddedMigrations) -> Result<Status, Error>
where
    DB: DieselBackend,
    C: MigrationHarness<DB>,
{
    let known = names::<DB>(&source)?;
    let mut applied: Vec<String> = conn
        .applied_migrations()
        .map_err(|e| migration_error("(reading applied versions)", e))?
        .iter()
        .map(|v| v.to_string())
        .collect();
    applied.sort();
    let name_of = |version: &String| {
        known
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, name)| name.clone())
            .unwrap_or_else(|| format!("{version} (not known to this binary)"))
    };
    let pending = known
        .iter()
        .filter(|(version, _)| !applied.contains(version))
        .map(|(_, name)| name.clone())
        .collect();
    Ok(Status {
        applied: applied.iter().map(name_of).collect(),
        pending,
    })
}
