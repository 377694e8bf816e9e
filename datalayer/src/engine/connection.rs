//! The connection type every query takes: one Diesel connection, PostgreSQL or SQLite, chosen
//! at run time.

/// A Diesel connection to whichever backend the settings chose.
///
/// Derived with Diesel's `MultiConnection`, so query functions written once against
/// `&mut Conn` run on both backends. Limits of that derive, and how datalayer lives with them:
///
/// - Only SQL types every backend has are usable (integers, floats, text, binary, date, time,
///   `Timestamp`, bool). That is why models on `Conn` keep timestamps as `timestamp`
///   holding UTC on PostgreSQL too: `timestamptz` has no SQLite counterpart.
/// - No `ON CONFLICT` clause through the shared backend; use [`dispatch!`](crate::dispatch)
///   for backend-specific SQL.
///
/// An application that runs on PostgreSQL only has none of these limits: it uses
/// `Engine<PgConnection>` ([`Engine::connect_as`](crate::Engine::connect_as)) and writes its
/// queries against `&mut PgConnection`, with `timestamptz`, `jsonb`, arrays and `ON CONFLICT`.
/// - The derived `establish` tries each backend in turn and drops their errors, so datalayer
///   never calls it: the engine establishes the configured backend's connection itself and
///   reports that backend's own error.
///
/// Its variants are the backends the crate's features enable (`postgres`, `sqlite`).
#[derive(diesel::MultiConnection)]
pub enum Conn {
    /// A PostgreSQL connection (libpq).
    #[cfg(feature = "postgres")]
    Postgres(diesel::PgConnection),
    /// A SQLite connection.
    #[cfg(feature = "sqlite")]
    Sqlite(diesel::SqliteConnection),
}

/// Runs the same Diesel code on the concrete connection inside a [`Conn`], compiled once per
/// backend.
///
/// Queries through `&mut Conn` itself go through Diesel's generic `MultiBackend`, which
/// serializes binds and converts every field dynamically, which costs more per query than a
/// plain connection (measured in `docs/performance.md`). Inside `dispatch!` the expression is
/// type-checked and compiled separately for `PgConnection` and `SqliteConnection`, so it costs
/// what plain Diesel costs, and backend-specific features (`as_returning()`, `ON CONFLICT`)
/// work where the backend has them.
///
/// ```
/// use datalayer::{Conn, dispatch};
/// use diesel::prelude::*;
///
/// diesel::table! { users (id) { id -> BigInt, email -> Text } }
///
/// fn count_users(conn: &mut Conn) -> QueryResult<i64> {
///     dispatch!(conn, |c| users::table.count().get_result(c))
/// }
/// ```
#[cfg(all(feature = "postgres", feature = "sqlite"))]
#[macro_export]
macro_rules! dispatch {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::Conn::Postgres($c) => $body,
            $crate::Conn::Sqlite($c) => $body,
        }
    };
}

/// Runs the same Diesel code on the concrete connection inside a [`Conn`] (built with the
/// `postgres` feature only: always a `PgConnection`).
#[cfg(all(feature = "postgres", not(feature = "sqlite")))]
#[macro_export]
macro_rules! dispatch {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::Conn::Postgres($c) => $body,
        }
    };
}

/// Runs the same Diesel code on the concrete connection inside a [`Conn`] (built with the
/// `sqlite` feature only: always a `SqliteConnection`).
#[cfg(all(feature = "sqlite", not(feature = "postgres")))]
#[macro_export]
macro_rules! dispatch {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::Conn::Sqlite($c) => $body,
        }
    };
}
