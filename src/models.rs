//! The reference application's models (`users`, `posts`): the port of the seed's `declarativeBase`,
//! written as any application writes its own. The library itself does not use them.
//!
//! One module per table, each with its row type (`Queryable` + `Selectable`, checked against
//! both backends), a borrowed insert type, and query functions that take `&mut Conn`, so they
//! run on a pooled connection, a plain one, or inside a test transaction alike. Timestamps are
//! UTC `NaiveDateTime`s (see [`Conn`](datalayer::Conn) for why not `timestamptz`).
//!
//! ```
//! use blog::models::{posts, users};
//! # let dir = tempfile::tempdir()?;
//! # let settings = datalayer::Settings::from_pairs([("DATABASE_PATH", dir.path().join("db").as_os_str())])?;
//! # let engine = datalayer::Engine::connect(&settings)?;
//! # blog::migrator().run_pending(&engine)?;
//! let mut conn = engine.get()?;
//! let ada = users::create(&mut conn, &users::NewUser { email: "ada@example.com", display_name: "Ada" })?;
//! let post = posts::create(&mut conn, &posts::NewPost { author_id: ada.id, title: "Notes", body: "…" })?;
//! let page = posts::list_by_author(&mut conn, ada.id, None, 20)?;
//! assert_eq!(page.posts, vec![post]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod posts;
pub mod users;

use datalayer::Migrator;

/// The reference application's migrations (`migrations/postgres`, `migrations/sqlite`), as
/// any application embeds its own. The ledger records them as the `datalayer` set, the name
/// of the binary that runs them.
pub fn migrator() -> Migrator {
    datalayer::embed_migrations!(
        postgres = "migrations/postgres",
        sqlite = "migrations/sqlite",
        name = "datalayer"
    )
}

use chrono::{NaiveDateTime, Timelike, Utc};

/// The application's UTC clock at the databases' microsecond precision.
///
/// Used where a model stamps a time itself: PostgreSQL's `CURRENT_TIMESTAMP` would be
/// converted to `timestamp` in the session's time zone, and SQLite's has whole seconds.
pub(crate) fn utc_now() -> NaiveDateTime {
    let now = Utc::now().naive_utc();
    now.with_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

/// What a model's query function can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Creating or updating a user would give two users the same email address.
    #[error("a user with this email address already exists")]
    EmailTaken,
    /// Any other error from the database or the driver.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
}

/// Lets a model's error tell `Engine::transaction` when to run a transaction again.
impl datalayer::engine::transaction::DatabaseFailure for ModelError {
    fn database_error(&self) -> Option<&diesel::result::Error> {
        match self {
            ModelError::Database(error) => Some(error),
            ModelError::EmailTaken => None,
        }
    }

    fn class(&self) -> datalayer::error::ErrorClass {
        use datalayer::error::{ErrorClass, Rejection, classify};
        match self {
            ModelError::EmailTaken => ErrorClass::Rejected(Rejection::Duplicate),
            ModelError::Database(error) => classify(error),
        }
    }
}

pub use self::posts::{NewPost, Post};
pub use self::users::{NewUser, User, UserChanges};
