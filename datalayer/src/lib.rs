//! # datalayer
//!
//! The synchronous data layer of a backend, the Rust port of a SQLAlchemy `connection_engine`
//! module, as a library any blocking server links with its own tables:
//!
//! | SQLAlchemy | datalayer |
//! | --- | --- |
//! | `connection_url` | [`config`]: [`Settings`] from `DATABASE_*` variables, an escaped, redacted URL |
//! | `connection_engine` | [`engine`]: [`Engine`], an r2d2 pool of Diesel connections ([`Conn`], or `PgConnection` / `SqliteConnection`) |
//! | `metadata` | the application's `schema.rs` (generated) and its migrations, embedded with [`embed_migrations!`] and run by a [`Migrator`] |
//! | `declarativeBase` | the application's models; query functions taking `&mut` a connection |
//!
//! Beside them: [`cli::run`], the whole command line (`migrate`, `status`, `revert`, ...) for an
//! application's own binary, and [`testing`], per-test databases cloned from a migrated
//! template. The library knows no tables of its own: an application brings its schema,
//! models and migrations (the repository's reference application, `users` and `posts`, is one).
//!
//! One error type, [`Error`], whose messages name what went wrong (the variable, the
//! migration, the pool's state) and never contain a secret.
//!
//! ```
//! let settings = datalayer::Settings::from_pairs([("DATABASE_PATH", "data/app.sqlite3")])?;
//! assert_eq!(settings.connection_url().to_string(), "sqlite://data/app.sqlite3");
//! # Ok::<(), datalayer::Error>(())
//! ```
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

// The expansion of `embed_migrations!` names `::datalayer`, inside this crate too.
extern crate self as datalayer;

#[cfg(not(any(feature = "postgres", feature = "sqlite")))]
compile_error!(
    "datalayer needs a backend: enable its `postgres` or `sqlite` feature (or both) in Cargo.toml"
);

#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod migrations;
mod pool_state;
pub mod testing;

pub use config::Settings;
pub use engine::{Conn, Engine};
pub use error::Error;
pub use migrations::Migrator;

/// Embeds an application's migration folders into the binary, as a
/// [`Migrator`].
///
/// Paths are relative to the calling crate's `Cargo.toml`. Each folder holds one sub-folder per
/// migration in Diesel's layout: `<version>_<name>/up.sql`, `down.sql`, and optionally
/// `metadata.toml` with `run_in_transaction = false`. A file `schema.fingerprint` in the folder,
/// when it exists, is the committed schema fingerprint the boot-time drift check compares with
/// (`<binary> fingerprint --write` writes it; Diesel's tools skip files there).
///
/// ```ignore
/// // One folder, run on whichever backend the settings choose:
/// let migrator = datalayer::embed_migrations!("migrations");
/// // One folder per backend, for an application on PostgreSQL in production and SQLite locally:
/// let migrator = datalayer::embed_migrations!(postgres = "migrations/postgres", sqlite = "migrations/sqlite");
/// // The ledger records the set under the crate's name; another name:
/// let migrator = datalayer::embed_migrations!("migrations", name = "billing");
/// ```
///
/// Folder names, versions (unique per set) and the `metadata.toml` key are checked at compile
/// time or, for `metadata.toml`, when the migrator first runs. The SQL files are included with
/// `include_str!`, so editing one rebuilds the crate; a new migration folder is only seen when
/// the crate is rebuilt, so add a `build.rs` holding
/// `println!("cargo:rerun-if-changed=migrations");` (as Diesel's own `embed_migrations!` asks).
pub use datalayer_macros::embed_migrations;
