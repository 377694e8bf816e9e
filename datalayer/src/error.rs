//! The crate's one error type.
//!
//! Every fallible function in datalayer returns [`Error`]. Its messages name the variable (or,
//! in later layers, the migration or the pool) that went wrong, say what is wrong and what is
//! accepted, and never contain a secret: not the value of `DATABASE_PASSWORD`, not any part of
//! a `DATABASE_URL` (which may hold a password), not a line of a `.env` file.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::pool_state::{Holder, PoolState};

mod class;

pub use class::{ErrorClass, Rejection, classify};

/// Everything that can go wrong in datalayer.
///
/// The enum is `#[non_exhaustive]`: later versions add variants, so match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// One or more settings are invalid. Each problem names its variable; all problems found
    /// are reported at once, one per line of the `Display` output.
    #[error("{0}")]
    Config(ConfigErrors),

    /// A `.env` file exists but could not be read or parsed. The message gives the file and the
    /// line, never the line's content (it may hold a password).
    #[error("{}{}: {reason}", path.display(), line.map(|n| format!(" line {n}")).unwrap_or_default())]
    DotEnv {
        /// The file that was being read.
        path: PathBuf,
        /// The 1-based line of the entry that failed to parse, when it is known.
        line: Option<usize>,
        /// What is wrong and what to do, free of the file's content.
        reason: String,
    },

    /// The database could not be reached or refused the connection. `target` is the redacted
    /// URL; `reason` is the driver's message with any secret scrubbed out.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The redacted connection URL.
        target: String,
        /// What the driver said.
        reason: String,
    },

    /// No pooled connection became free in time (or none could be opened).
    #[error(
        "no database connection available after waiting {waited:.1?} ({state}){}{}",
        if holders.is_empty() { String::new() } else {
            format!("; held by: {}", holders.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
        },
        last_error.as_ref().map(|e| format!("; last connection error: {e}")).unwrap_or_default()
    )]
    PoolTimeout {
        /// How long the checkout waited.
        waited: Duration,
        /// The pool when the wait ended.
        state: PoolState,
        /// The most recent failure to open a connection, if any.
        last_error: Option<String>,
        /// Every connection held when the wait ended: checkout site, for how long, state.
        holders: Vec<Holder>,
    },

    /// A migration run could not finish: see [`MigrationError`] for the cases.
    #[error(transparent)]
    Migration(#[from] MigrationError),

    /// Any other error from the database or the driver.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
}

impl Error {
    /// A configuration error of one problem, with `variable` at fault.
    pub(crate) fn config(variable: &str, message: impl Into<String>) -> Error {
        Error::Config(ConfigErrors(vec![ConfigProblem {
            variable: variable.into(),
            message: message.into(),
        }]))
    }

    /// The exit status a command line or a server's boot gives this error, the codes the
    /// `datalayer` command line documents:
    ///
    /// | code | meaning |
    /// | ---: | --- |
    /// | 2 | configuration error (a variable, `.env`, a backend this build lacks) |
    /// | 3 | the database cannot be reached (connect failure, pool timeout) |
    /// | 4 | a migration failed |
    /// | 1 | anything else |
    ///
    /// (0 is success, and clap exits 2 on a bad command line.)
    ///
    /// ```
    /// let error = datalayer::Settings::from_pairs([("DATABASE_PORT", "x")]).unwrap_err();
    /// assert_eq!(error.exit_code(), 2);
    /// ```
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_)
            | Error::DotEnv { .. }
            | Error::Migration(MigrationError::UnsupportedBackend { .. }) => 2,
            Error::Connect { .. } | Error::PoolTimeout { .. } => 3,
            Error::Migration(_) => 4,
            Error::Database(_) => 1,
        }
    }

    /// What a caller should do about this error (see [`ErrorClass`]): a pool timeout and a
    /// connect failure that may go away are [`Unavailable`](ErrorClass::Unavailable); a
    /// database error is classified by [`classify`]; a configuration error, a connect refusal
    /// that will not go away by itself (a wrong password, a missing database) and a failed
    /// migration are [`Bug`](ErrorClass::Bug).
    ///
    /// ```
    /// use datalayer::error::ErrorClass;
    /// let error = datalayer::Settings::from_pairs([("DATABASE_PORT", "x")]).unwrap_err();
    /// assert_eq!(error.class(), ErrorClass::Bug);
    /// ```
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::PoolTimeout { .. } => ErrorClass::Unavailable,
            Error::Connect { reason, .. } if crate::engine::permanent(reason).is_some() => {
                ErrorClass::Bug
            }
            Error::Connect { .. } => ErrorClass::Unavailable,
            Error::Database(error) => classify(error),
            Error::Config(_) | Error::DotEnv { .. } | Error::Migration(_) => ErrorClass::Bug,
        }
    }

    /// The configuration problems, when this is a configuration error.
    pub fn config_problems(&self) -> &[ConfigProblem] {
        match self {
            Error::Config(errors) => &errors.0,
            _ => &[],
        }
    }
}

/// A non-empty list of configuration problems, in the order of the variables' documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One invalid setting: which variable, and what is wrong with it.
///
/// `Display` reads `DATABASE_PORT: "70000" is not a port (1-65535)`. The message quotes the
/// offending value only for variables that cannot hold a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigProblem {
    /// The environment variable at fault, e.g. `DATABASE_PORT`.
    pub variable: String,
    /// What is wrong and what is accepted; may name a second, conflicting variable.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

/// Why a migration run (migrate, boot, revert, status, accept-checksum) could not finish.
///
/// `#[non_exhaustive]`: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// A migration's files are malformed (a folder name without a version, two migrations with
    /// one version, a bad `metadata.toml`, an unreadable file).
    #[error("{file}: {reason}")]
    Invalid {
        /// The folder or file at fault.
        file: String,
        /// What is wrong and what is expected.
        reason: String,
    },

    /// A migration's SQL failed. A migration run in a transaction left nothing behind; one
    /// with `run_in_transaction = false` may have run some statements: `progress` says which.
    #[error(
        "migration {migration} ({file}) failed: {source}{}{}",
        privilege_hint(source),
        progress.as_deref().map(|p| format!("; {p}")).unwrap_or_default()
    )]
    Apply {
        /// The migration's folder name, e.g. `2026-11-25-000001_create_users`.
        migration: String,
        /// The file at fault, e.g. `migrations/postgres/2026-11-25-000001_create_users/up.sql`.
        file: String,
        /// What ran before the failure, for a migration outside a transaction.
        progress: Option<String>,
        /// The database's error.
        #[source]
        source: diesel::result::Error,
    },

    /// Another run held the migration lock for longer than `DATABASE_MIGRATION_LOCK_TIMEOUT`.
    #[error(
        "gave up waiting for the migration lock after {waited:.1?}; it is held by {}; raise \
         DATABASE_MIGRATION_LOCK_TIMEOUT or end that session",
        holder.as_deref().unwrap_or("a session that could not be identified")
    )]
    LockTimeout {
        /// How long the run waited.
        waited: Duration,
        /// Who held the lock at the end of the wait (pid, application name, state, for how long).
        holder: Option<String>,
    },

    /// A file of the migration machinery could not be used: the SQLite migration lock
    /// file, or the fingerprint being written.
    #[error("{action} {file}: {source}")]
    File {
        /// What was being done, e.g. `cannot open the migration lock file`.
        action: &'static str,
        /// The file.
        file: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },

    /// An applied migration's `up.sql` no longer matches the checksum recorded when it ran.
    #[error(
        "migration {migration} was edited after it was applied: its up.sql hashes to \
         {embedded}, the ledger recorded {recorded}; restore the file, or run `migrate \
         --accept-checksum {version}` if the edit is deliberate"
    )]
    ChecksumMismatch {
        /// The migration's folder name.
        migration: String,
        /// Its version, as `--accept-checksum` takes it.
        version: String,
        /// The SHA-256 the ledger holds.
        recorded: String,
        /// The SHA-256 of the `up.sql` this binary carries.
        embedded: String,
    },

    /// The database has migrations of this set that this binary does not know: a newer
    /// release migrated it.
    #[error(
        "the database has migrations of {set:?} this binary does not know: {}; a newer release \
         applied them. Deploy that release, or set DATABASE_ALLOW_UNKNOWN_MIGRATIONS=true if its \
         migrations are backward compatible",
        escaped_list(versions)
    )]
    UnknownMigrations {
        /// The migration set's name.
        set: String,
        /// The unknown versions.
        versions: Vec<String>,
    },

    /// A migration of this set has the version of one another set already applied (Diesel's
    /// `__diesel_schema_migrations` holds one row per version, whatever the set).
    #[error(
        "migration {migration} of {set:?} has version {version}, which {other_set:?} already \
         applied in this database; versions are unique per database: rename the folder with a \
         new timestamp"
    )]
    VersionClash {
        /// The set being run.
        set: String,
        /// Its migration with the clashing version.
        migration: String,
        /// The version.
        version: String,
        /// The set that applied it.
        other_set: String,
    },

    /// No migration of this set has the version given (to `--accept-checksum`).
    #[error(
        "{set:?} has no migration {version:?}; give it as `status` shows it (its folder name, \
         e.g. 2026-11-25-000001_create_users) or as its version (20261125000001)"
    )]
    NoSuchVersion {
        /// The set.
        set: String,
        /// The version asked for.
        version: String,
    },

    /// The application has no migrations for the configured backend.
    #[error(
        "{set:?} has no {backend} migrations; point DATABASE_URL at a database of a backend it \
         supports ({supported})"
    )]
    UnsupportedBackend {
        /// The set.
        set: String,
        /// The configured backend.
        backend: String,
        /// The backends it has migrations for.
        supported: String,
    },

    /// A migration has no `down.sql`, so it cannot be reverted.
    #[error("migration {migration} has no down.sql ({file}), so it cannot be reverted")]
    Irreversible {
        /// The migration.
        migration: String,
        /// The file that is missing.
        file: String,
    },

    /// The live schema differs from what the migrations produce (`DATABASE_SCHEMA_CHECK=strict`).
    #[error(
        "the schema differs from what the migrations produce (DATABASE_SCHEMA_CHECK=strict):\n{}",
        differences.join("\n")
    )]
    SchemaDrift {
        /// One line per difference, e.g. `users.display_name: missing`.
        differences: Vec<String>,
    },

    /// A statement of the migration machinery failed: reading or writing the ledger
    /// (`__diesel_schema_migrations`, `datalayer_migrations`), the lock, or the catalog.
    #[error("{action}: {source}{}", privilege_hint(source))]
    Database {
        /// What was being done.
        action: &'static str,
        /// The database's error.
        #[source]
        source: diesel::result::Error,
    },
}

/// A failed `BEGIN`, `COMMIT` or `ROLLBACK` around a migration.
impl From<diesel::result::Error> for MigrationError {
    fn from(source: diesel::result::Error) -> Self {
        MigrationError::Database {
            action: "running the migration's transaction",
            source,
        }
    }
}

/// Names read from the database (versions in a ledger), joined for a message with their
/// control characters escaped: a newline or an escape sequence in a row would otherwise forge
/// lines or colours in a terminal or a log.
pub(crate) fn escaped_list(names: &[String]) -> String {
    names
        .iter()
        .map(|name| name.escape_debug().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What to grant when PostgreSQL refused a statement for want of a privilege (SQLSTATE 42501;
/// Diesel exposes only the message, so it is matched).
fn privilege_hint(source: &diesel::result::Error) -> &'static str {
    if source
        .to_string()
        .starts_with("permission denied for schema")
    {
        "; the migrating role needs CREATE on the schema (GRANT CREATE ON SCHEMA ... TO it), \
         or run migrations as the schema's owner"
    } else if source.to_string().starts_with("permission denied") {
        "; the migrating role lacks a privilege this statement needs: run migrations as the \
         owner of the objects they change"
    } else {
        ""
    }
}
