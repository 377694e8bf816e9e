//! What a caller should do about an error: [`ErrorClass`].

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// What to do about an error: retry later, retry now, change the request, or fix a bug.
///
/// Every error a checkout or a query gives falls into one of four classes, whatever its type:
/// datalayer's [`Error`](crate::Error), Diesel's `diesel::result::Error` (what a query on a
/// `&mut` connection returns), a [`TransactionError`](crate::engine::transaction::TransactionError),
/// or an application's own error type through
/// [`DatabaseFailure`](crate::engine::transaction::DatabaseFailure).
///
/// | class | examples | a retry | a web server answers |
/// | --- | --- | --- | --- |
/// | [`Unavailable`](ErrorClass::Unavailable) | a read-only transaction after a switchover (25006), the session terminated (57P01), the connection lost, the server shutting down or starting up, a statement or lock timeout, a pool timeout, cannot connect | later: succeeds once the database is back | 503 with `Retry-After` |
/// | [`Conflict`](ErrorClass::Conflict) | a serialization failure (40001), a deadlock (40P01), a busy SQLite database | now: what [`Engine::transaction`](crate::Engine::transaction) does | 409 |
/// | [`Rejected`](ErrorClass::Rejected) | a unique or exclusion violation, a foreign key or `RESTRICT` violation, a check or not-null violation, an invalid value (22xxx), no row found | never: the request must change | 409, 422, 404 (see [`Rejection`]) |
/// | [`Bug`](ErrorClass::Bug) | anything else: a missing table or column, a syntax error, a type mismatch, a configuration error, a failed migration, a permanent connect refusal (wrong password, missing database) | never: fix the code, the schema or the settings | 500 |
///
/// ```
/// use datalayer::error::{ErrorClass, Rejection, classify};
/// use diesel::result::{DatabaseErrorKind, Error};
///
/// let taken = Error::DatabaseError(DatabaseErrorKind::UniqueViolation, Box::new("duplicate key".to_string()));
/// assert_eq!(classify(&taken), ErrorClass::Rejected(Rejection::Duplicate));
/// let demoted = Error::DatabaseError(
///     DatabaseErrorKind::ReadOnlyTransaction,
///     Box::new("cannot execute INSERT in a read-only transaction".to_string()),
/// );
/// assert_eq!(classify(&demoted), ErrorClass::Unavailable);
/// assert!(classify(&demoted).is_retryable());
/// ```
///
/// PostgreSQL's SQLSTATE reaches the application only where Diesel maps it to a
/// `DatabaseErrorKind` (23505, 23503, 23001, 23502, 23514, 23P01, 25006, 40001, the 08 class);
/// the rest (40P01, 57014, 55P03, 57P0x, 22xxx) are recognised by the server's English wording,
/// so on a server whose `lc_messages` is not English they fall into [`ErrorClass::Bug`]. A
/// lost connection is recognised by the connection's state, in any language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The database is briefly unavailable: a retry after a moment succeeds. HTTP 503 with
    /// `Retry-After`.
    Unavailable,
    /// The operation lost a race with a concurrent one: running it again now succeeds.
    /// [`Engine::transaction`](crate::Engine::transaction) already does, up to 5 times; an
    /// error of this class from it means all 5 lost. HTTP 409.
    Conflict,
    /// The request is wrong for the data as it is: running it again fails the same way.
    Rejected(Rejection),
    /// A bug, the schema, or the configuration: nothing the caller can do. HTTP 500.
    Bug,
}

/// Why the database rejected a request: which constraint or value was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// A unique or exclusion constraint: the row already exists. HTTP 409.
    Duplicate,
    /// A foreign key (or `RESTRICT`): the row refers to one that does not exist, or is still
    /// referred to. HTTP 422.
    Reference,
    /// A check or not-null constraint, or a value the column's type cannot hold (too long,
    /// out of range, invalid syntax, a NUL character). HTTP 422.
    Invalid,
    /// A query that must return a row found none (`diesel::result::Error::NotFound`). HTTP 404.
    NotFound,
}

impl ErrorClass {
    /// Whether running the same operation again can succeed: [`Unavailable`](Self::Unavailable)
    /// (after a moment) or [`Conflict`](Self::Conflict) (at once).
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Unavailable | ErrorClass::Conflict)
    }

    /// The HTTP status a server answers with: 503, 409, 409 (duplicate), 422 (reference,
    /// invalid), 404 (not found), 500.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::Unavailable => 503,
            ErrorClass::Conflict | ErrorClass::Rejected(Rejection::Duplicate) => 409,
            ErrorClass::Rejected(Rejection::Reference | Rejection::Invalid) => 422,
            ErrorClass::Rejected(Rejection::NotFound) => 404,
            ErrorClass::Bug => 500,
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorClass::Unavailable => "the database is unavailable; retry shortly",
            ErrorClass::Conflict => "a concurrent change conflicted; retry",
            ErrorClass::Rejected(Rejection::Duplicate) => "it already exists",
            ErrorClass::Rejected(Rejection::Reference) => {
                "it refers to something that does not exist or is still in use"
            }
            ErrorClass::Rejected(Rejection::Invalid) => "a value is invalid",
            ErrorClass::Rejected(Rejection::NotFound) => "not found",
            ErrorClass::Bug => "internal error",
        })
    }
}

/// Server messages (PostgreSQL's English wording, SQLite's) of errors Diesel reports as
/// `DatabaseErrorKind::Unknown`, with their class.
const BY_MESSAGE: &[(&str, ErrorClass)] = &[
    // 40P01
    ("deadlock detected", ErrorClass::Conflict),
    // SQLITE_BUSY, SQLITE_LOCKED
    ("database is locked", ErrorClass::Conflict),
    ("database table is locked", ErrorClass::Conflict),
    // 57014, 55P03: the database is overloaded or a lock is held; later may do
    (
        "canceling statement due to statement timeout",
        ErrorClass::Unavailable,
    ),
    (
        "canceling statement due to lock timeout",
        ErrorClass::Unavailable,
    ),
    ("could not obtain lock", ErrorClass::Unavailable),
    // 40001 on a hot standby, reported by Diesel as a serialization failure already; 57P0x
    (
        "canceling statement due to conflict with recovery",
        ErrorClass::Unavailable,
    ),
    ("terminating connection due to", ErrorClass::Unavailable),
    (
        "the database system is shutting down",
        ErrorClass::Unavailable,
    ),
    (
        "the database system is starting up",
        ErrorClass::Unavailable,
    ),
    (
        "the database system is in recovery mode",
        ErrorClass::Unavailable,
    ),
    (
        "the database system is not yet accepting connections",
        ErrorClass::Unavailable,
    ),
    (
        "server closed the connection unexpectedly",
        ErrorClass::Unavailable,
    ),
    ("no connection to the server", ErrorClass::Unavailable),
    // PgBouncer's own errors while its server is away or it is saturated
    ("server login has been failing", ErrorClass::Unavailable),
    (
        "pgbouncer cannot connect to server",
        ErrorClass::Unavailable,
    ),
    ("query_wait_timeout", ErrorClass::Unavailable),
    ("server conn crashed", ErrorClass::Unavailable),
    ("no more connections allowed", ErrorClass::Unavailable),
    // 53xxx
    ("sorry, too many clients already", ErrorClass::Unavailable),
    ("out of shared memory", ErrorClass::Unavailable),
    // 22xxx: a value its column cannot hold
    (
        "invalid input syntax",
        ErrorClass::Rejected(Rejection::Invalid),
    ),
    (
        "invalid input value",
        ErrorClass::Rejected(Rejection::Invalid),
    ),
    (
        "value too long for type",
        ErrorClass::Rejected(Rejection::Invalid),
    ),
    ("out of range", ErrorClass::Rejected(Rejection::Invalid)),
    (
        "invalid byte sequence",
        ErrorClass::Rejected(Rejection::Invalid),
    ),
    (
        "date/time field value out of range",
        ErrorClass::Rejected(Rejection::Invalid),
    ),
    ("division by zero", ErrorClass::Rejected(Rejection::Invalid)),
];

/// The class of an error of Diesel's, as a query on a connection returns it.
pub fn classify(error: &DieselError) -> ErrorClass {
    use ErrorClass::{Bug, Conflict, Rejected, Unavailable};
    match error {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::UniqueViolation | DatabaseErrorKind::ExclusionViolation => {
                Rejected(Rejection::Duplicate)
            }
            DatabaseErrorKind::ForeignKeyViolation | DatabaseErrorKind::RestrictViolation => {
                Rejected(Rejection::Reference)
            }
            DatabaseErrorKind::CheckViolation | DatabaseErrorKind::NotNullViolation => {
                Rejected(Rejection::Invalid)
            }
            DatabaseErrorKind::SerializationFailure
                if info.message().contains("conflict with recovery") =>
            {
                Unavailable
            }
            DatabaseErrorKind::SerializationFailure => Conflict,
            DatabaseErrorKind::ReadOnlyTransaction
            | DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand => Unavailable,
            _ => by_message(info.message()),
        },
        DieselError::NotFound => Rejected(Rejection::NotFound),
        DieselError::InvalidCString(_) => Rejected(Rejection::Invalid),
        DieselError::RollbackErrorOnCommit { commit_error, .. } => classify(commit_error),
        _ => Bug,
    }
}

/// The class of a server message Diesel has no kind for.
pub(crate) fn by_message(message: &str) -> ErrorClass {
    BY_MESSAGE
        .iter()
        .find(|(wording, _)| message.contains(wording))
        .map_or(ErrorClass::Bug, |(_, class)| *class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_string()))
    }

    #[test]
    fn classifies_what_postgres_and_sqlite_say() {
        use DatabaseErrorKind as K;
        for (error, class) in [
            (
                database(
                    K::ReadOnlyTransaction,
                    "cannot execute INSERT in a read-only transaction",
                ),
                ErrorClass::Unavailable,
            ),
            (
                database(
                    K::ClosedConnection,
                    "terminating connection due to administrator command",
                ),
                ErrorClass::Unavailable,
            ),
            (
                database(K::Unknown, "canceling statement due to statement timeout"),
                ErrorClass::Unavailable,
            ),
            (
                database(K::SerializationFailure, "could not serialize access"),
                ErrorClass::Conflict,
            ),
            (
                database(
                    K::SerializationFailure,
                    "canceling statement due to conflict with recovery",
                ),
                ErrorClass::Unavailable,
            ),
            (
                database(K::Unknown, "deadlock detected"),
                ErrorClass::Conflict,
            ),
            (
                database(K::Unknown, "database is locked"),
                ErrorClass::Conflict,
            ),
            (
                database(K::UniqueViolation, "duplicate key value"),
                ErrorClass::Rejected(Rejection::Duplicate),
            ),
            (
                database(K::ForeignKeyViolation, "violates foreign key"),
                ErrorClass::Rejected(Rejection::Reference),
            ),
            (
                database(K::CheckViolation, "violates check constraint"),
                ErrorClass::Rejected(Rejection::Invalid),
            ),
            (
                database(K::NotNullViolation, "null value"),
                ErrorClass::Rejected(Rejection::Invalid),
            ),
            (
                database(K::Unknown, "value too long for type character varying(5)"),
                ErrorClass::Rejected(Rejection::Invalid),
            ),
            (
                database(K::Unknown, "relation \"nope\" does not exist"),
                ErrorClass::Bug,
            ),
            (
                DieselError::NotFound,
                ErrorClass::Rejected(Rejection::NotFound),
            ),
            (DieselError::AlreadyInTransaction, ErrorClass::Bug),
        ] {
            assert_eq!(classify(&error), class, "{error}");
        }
    }

    #[test]
    fn statuses_follow_the_classes() {
        assert_eq!(ErrorClass::Unavailable.http_status(), 503);
        assert_eq!(ErrorClass::Conflict.http_status(), 409);
        assert_eq!(
            ErrorClass::Rejected(Rejection::Reference).http_status(),
            422
        );
        assert_eq!(ErrorClass::Bug.http_status(), 500);
        assert!(!ErrorClass::Rejected(Rejection::Duplicate).is_retryable());
        assert!(!ErrorClass::Bug.is_retryable());
    }
}
