//! # datalayer
//!
//! The synchronous data layer of a backend: settings and a safely escaped connection URL from
//! the environment ([`config`]), with one error type ([`Error`]) whose messages name the
//! variable at fault and never contain a secret.
//!
//! ```
//! let settings = datalayer::Settings::from_pairs([("DATABASE_PATH", "data/app.sqlite3")])?;
//! assert_eq!(settings.connection_url().to_string(), "sqlite://data/app.sqlite3");
//! # Ok::<(), datalayer::Error>(())
//! ```
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod error;

pub use config::Settings;
pub use error::Error;

/// The README's code samples, compiled and run as doctests so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
