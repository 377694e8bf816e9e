//! Transactions re-run when the database asks for it: [`Engine::transaction`].
//!
//! PostgreSQL aborts a transaction it cannot serialize (SQLSTATE 40001) or picks one of two
//! deadlocked transactions to abort (40P01), and expects the application to run it again; the
//! same goes for a connection lost before `COMMIT` was sent (nothing was committed). Once
//! `COMMIT` was sent and the connection is lost, the outcome is unknown, and running the
//! transaction again could apply it twice: that is [`TransactionError::CommitOutcomeUnknown`],
//! never retried. On SQLite the transaction starts with `BEGIN IMMEDIATE` (it takes the write
//! lock at once, so two writers cannot deadlock on upgrading), and `SQLITE_BUSY` is retried.

use std::time::Duration;

#[cfg(feature = "postgres")]
use diesel::PgConnection;
use diesel::QueryResult;
#[cfg(feature = "sqlite")]
use diesel::SqliteConnection;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::boot::Jitter;
use super::pool_connection::PoolConnection;
use super::{Conn, Engine};
use crate::error::ErrorClass;

/// A transaction's isolation level on PostgreSQL (SQLite transactions are serializable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// PostgreSQL's default.
    ReadCommitted,
    /// A snapshot for the whole transaction; write conflicts abort it (40001).
    RepeatableRead,
    /// As if transactions ran one at a time; conflicts abort one of them (40001).
    Serializable,
}

impl Isolation {
    #[cfg(feature = "postgres")]
    fn postgres_begin(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// How many times [`Engine::transaction`] runs a transaction in all.
const ATTEMPTS: u32 = 5;
/// The wait before the second attempt (±25 %); it doubles for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// Starting a transaction, per connection type.
fn begin<C: PoolConnection>(conn: &mut C, isolation: Isolation) -> QueryResult<()> {
    conn.begin_with(isolation)
}

#[cfg(feature = "postgres")]
pub(crate) fn begin_postgres(conn: &mut PgConnection, isolation: Isolation) -> QueryResult<()> {
    AnsiTransactionManager::begin_transaction_sql(conn, isolation.postgres_begin())
}

#[cfg(feature = "sqlite")]
pub(crate) fn begin_sqlite(conn: &mut SqliteConnection) -> QueryResult<()> {
    AnsiTransactionManager::begin_transaction_sql(conn, "BEGIN IMMEDIATE")
}

pub(crate) fn begin_conn(conn: &mut Conn, isolation: Isolation) -> QueryResult<()> {
    match conn {
        #[cfg(feature = "postgres")]
        Conn::Postgres(pg) => begin_postgres(pg, isolation),
        #[cfg(feature = "sqlite")]
        Conn::Sqlite(sqlite) => {
            let _ = isolation;
            begin_sqlite(sqlite)
        }
    }
}

/// Errors a transaction's closure returns, as far as [`Engine::transaction`] needs to see
/// them: the database error inside, if there is one, to tell whether to run it again.
/// Implemented for Diesel's error and datalayer's; an application implements it for its own
/// error type in one line.
pub trait DatabaseFailure {
    /// The database error this error carries, if any.
    fn database_error(&self) -> Option<&DieselError>;

    /// What a caller should do about this error: the class of the database error it carries,
    /// [`ErrorClass::Bug`] when it carries none. An application error with cases of its own
    /// (a validation failure, a taken name) overrides it.
    fn class(&self) -> ErrorClass {
        self.database_error()
            .map_or(ErrorClass::Bug, crate::error::classify)
    }
}

impl DatabaseFailure for DieselError {
    fn database_error(&self) -> Option<&DieselError> {
        Some(self)
    }
}

impl DatabaseFailure for crate::Error {
    fn database_error(&self) -> Option<&DieselError> {
        match self {
            crate::Error::Database(error) => Some(error),
            _ => None,
        }
    }

    fn class(&self) -> ErrorClass {
        crate::Error::class(self)
    }
}

/// Why a transaction should run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Serialization,
    Deadlock,
    Busy,
    ConnectionLost,
}

impl std::fmt::Display for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Retry::Serialization => "serialization failure",
            Retry::Deadlock => "deadlock",
            Retry::Busy => "busy SQLite database",
            Retry::ConnectionLost => "lost connection",
        })
    }
}

/// Why a transaction that failed with `error` should run again, if it should.
fn retry_reason(error: &DieselError) -> Option<Retry> {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
            Some(Retry::Serialization)
        }
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => Some(Retry::ConnectionLost),
        // Diesel has no kind for 40P01 or SQLITE_BUSY (nor SQLSTATEs): their messages.
        DieselError::DatabaseError(_, info) if info.message().contains("deadlock detected") => {
            Some(Retry::Deadlock)
        }
        DieselError::DatabaseError(_, info) if info.message().contains("database is locked") => {
            Some(Retry::Busy)
        }
        _ => None,
    }
}

/// Why [`Engine::transaction`] gave up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransactionError<E> {
    /// The closure, `BEGIN` or `COMMIT` failed with an error that is not worth running the
    /// transaction again for, or a retryable one on the last attempt. Nothing was committed.
    #[error("the transaction failed after {attempts} attempt(s)")]
    Failed {
        /// How many times the transaction ran.
        attempts: u32,
        /// The last error.
        #[source]
        error: E,
    },
    /// The connection was lost after `COMMIT` was sent: the transaction may or may not have
    /// committed. It is not run again, since that could apply it twice; check its effect first.
    #[error(
        "the connection was lost after COMMIT was sent: whether the transaction committed is \
         unknown, so it was not run again; check its effect before retrying"
    )]
    CommitOutcomeUnknown {
        /// What `COMMIT` failed with.
        #[source]
        source: DieselError,
    },
    /// No connection could be checked out.
    #[error(transparent)]
    Checkout(crate::Error),
}

impl<E: DatabaseFailure> TransactionError<E> {
    /// What a caller should do about this error: the class of the last attempt's error (a
    /// [`Conflict`](ErrorClass::Conflict) means every attempt lost a race), of the checkout's,
    /// or [`Unavailable`](ErrorClass::Unavailable) when the outcome of `COMMIT` is unknown
    /// (check the effect, then retry).
    pub fn class(&self) -> ErrorClass {
        match self {
            TransactionError::Failed { error, .. } => error.class(),
            TransactionError::CommitOutcomeUnknown { .. } => ErrorClass::Unavailable,
            TransactionError::Checkout(error) => error.class(),
        }
    }
}

/// So that a transaction's error is classified like any other.
impl<E: DatabaseFailure> DatabaseFailure for TransactionError<E> {
    fn database_error(&self) -> Option<&DieselError> {
        match self {
            TransactionError::Failed { error, .. } => error.database_error(),
            TransactionError::CommitOutcomeUnknown { source } => Some(source),
            TransactionError::Checkout(error) => error.database_error(),
        }
    }

    fn class(&self) -> ErrorClass {
        TransactionError::class(self)
    }
}

impl<C: PoolConnection> Engine<C> {
    /// Runs `work` in a transaction on a pooled connection and commits it, running it again
    /// (on a fresh checkout, after a jittered backoff from 10 ms, at most 5 times in all) when
    /// PostgreSQL aborts it for a serialization failure or a deadlock, when SQLite is busy, or
    /// when the connection is lost before `COMMIT` was sent. `work` must be safe to run again:
    /// everything it did in the database was rolled back. See the module docs of
    /// [`transaction`](crate::engine::transaction).
    ///
    /// ```no_run
    /// use datalayer::engine::transaction::Isolation;
    /// # fn run(engine: &datalayer::Engine) -> Result<(), Box<dyn std::error::Error>> {
    /// let moved = engine.transaction(Isolation::Serializable, |conn| {
    ///     // ... reads and writes on `conn`, returning diesel::QueryResult<_> ...
    ///     # let _ = conn;
    ///     Ok::<_, diesel::result::Error>(1)
    /// })?;
    /// # Ok(())
    /// # }
    /// ```
    #[track_caller]
    pub fn transaction<T, E>(
        &self,
        isolation: Isolation,
        mut work: impl FnMut(&mut C) -> Result<T, E>,
    ) -> Result<T, TransactionError<E>>
    where
        E: From<DieselError> + DatabaseFailure,
    {
        let mut jitter = Jitter::new();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.get().map_err(TransactionError::Checkout)?;
            let outcome = begin(&mut *conn, isolation)
                .map_err(E::from)
                .and_then(|()| work(&mut conn));
            let error = match outcome {
                Ok(value) => match C::TransactionManager::commit_transaction(&mut *conn) {
                    Ok(()) => return Ok(value),
                    Err(e) if retry_reason(&e) == Some(Retry::ConnectionLost) => {
                        return Err(TransactionError::CommitOutcomeUnknown { source: e });
                    }
                    // Refused by the server (a serialization failure at commit): not committed.
                    Err(e) => E::from(e),
                },
                Err(error) => {
                    let _ = C::TransactionManager::rollback_transaction(&mut *conn);
                    error
                }
            };
            let reason = error.database_error().and_then(retry_reason);
            match reason {
                Some(reason) if attempt < ATTEMPTS => {
                    let wait = jitter.apply(backoff);
                    tracing::info!(
                        "transaction attempt {attempt} of {ATTEMPTS} ended by a {reason}; \
                         running it again in {wait:.2?}"
                    );
                    drop(conn);
                    std::thread::sleep(wait);
                    backoff *= 2;
                }
                _ => {
                    return Err(TransactionError::Failed {
                        attempts: attempt,
                        error,
                    });
                }
            }
        }
    }
}
