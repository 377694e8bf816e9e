//! What a connection's Diesel instrumentation hook does with each query: the stamp that
//! validation trusts, death and failover signs, the query's `tracing` span, and the echo and
//! slow-query log.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::shared::{Health, Shared};
use crate::config::{Settings, Target};

/// Watches a connection's queries: records when the last successful one *started*, and flags
/// the connection (and the pool's epoch) dead when one fails with a closed connection.
///
/// The start, not the end: a thread descheduled between reading a result and this hook could
/// otherwise stamp a connection that died meanwhile as newer than the death another thread
/// has already recorded.
///
/// It also echoes statements (`DATABASE_ECHO`) and reports slow ones
/// (`DATABASE_SLOW_QUERY_THRESHOLD`) on the `datalayer::sql` target: the SQL text and the
/// duration, never the bind values (they can hold secrets and personal data).
pub(super) struct DeathWatch {
    health: Arc<Health>,
    shared: Arc<Shared>,
    started: u64,
    echo: bool,
    slow: Option<Duration>,
    /// What each query's span says of the database.
    about: Arc<About>,
    /// The span of the query under way.
    span: Option<tracing::Span>,
}

/// OpenTelemetry's database attributes of a pool's queries.
#[derive(Debug)]
pub(crate) struct About {
    /// `postgresql` or `sqlite`.
    system: &'static str,
    /// The database name (PostgreSQL) or file (SQLite).
    namespace: String,
    /// The first host, on PostgreSQL.
    address: Option<String>,
    port: Option<u16>,
}

impl About {
    pub(super) fn of(settings: &Settings) -> About {
        match &settings.target {
            Target::Postgres(pg) => About {
                system: "postgresql",
                namespace: pg
                    .database
                    .clone()
                    .or_else(|| pg.user.clone())
                    .unwrap_or_default(),
                address: Some(pg.host.to_string()),
                port: Some(pg.port),
            },
            Target::Sqlite(sqlite) => About {
                system: "sqlite",
                namespace: sqlite.path.display().to_string(),
                address: None,
                port: None,
            },
        }
    }
}

/// A failover shows as a write refused by a read-only server (SQLSTATE 25006: the old primary
/// came back as a standby), as the server terminating sessions on an administrator's command
/// (57P01: a shutdown, or a promotion tool fencing the old primary), or as the server closing
/// the connection (over TLS the 57P01 message is often lost and only the close is seen).
/// Diesel exposes 25006 and the close as kinds, 57P01 only as its (English) message.
fn is_failover_sign(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(
            DatabaseErrorKind::ReadOnlyTransaction | DatabaseErrorKind::ClosedConnection,
            _,
        ) => true,
        DieselError::DatabaseError(_, info) => info
            .message()
            .contains("terminating connection due to administrator command"),
        _ => false,
    }
}

/// A failed query's `error.type`: the kind of error, never its message (which can quote data).
fn error_type(error: &DieselError) -> &'static str {
    match error {
        DieselError::DatabaseError(kind, _) => match kind {
            DatabaseErrorKind::UniqueViolation => "unique_violation",
            DatabaseErrorKind::ForeignKeyViolation => "foreign_key_violation",
            DatabaseErrorKind::NotNullViolation => "not_null_violation",
            DatabaseErrorKind::CheckViolation => "check_violation",
            DatabaseErrorKind::SerializationFailure => "serialization_failure",
            DatabaseErrorKind::ReadOnlyTransaction => "read_only_transaction",
            DatabaseErrorKind::ClosedConnection => "closed_connection",
            _ => "database_error",
        },
        DieselError::NotFound => "not_found",
        _ => "error",
    }
}

/// Diesel shows a query as `<sql> -- binds: [...]`: keep only the SQL.
fn sql_only(query: &dyn std::fmt::Display) -> String {
    let text = query.to_string();
    match text.rfind(" -- binds: ") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

impl DeathWatch {
    /// The watch of the connection `health` describes, in the pool of `shared`.
    pub(super) fn new(
        health: Arc<Health>,
        shared: Arc<Shared>,
        echo: bool,
        slow: Option<Duration>,
        about: Arc<About>,
    ) -> DeathWatch {
        DeathWatch {
            health,
            shared,
            started: 0,
            echo,
            slow,
            about,
            span: None,
        }
    }

    /// Logs the query (`DATABASE_ECHO`) or warns that it was slow, when either is on, inside
    /// the query's span (`span`, taken out of `self.span`: it closes when this returns), so
    /// that the line carries the database's attributes.
    #[inline]
    fn report(&self, span: Option<tracing::Span>, query: &dyn std::fmt::Display, failed: bool) {
        if self.echo || self.slow.is_some() {
            let _inside = span.as_ref().map(tracing::Span::enter);
            self.log(query, failed);
        }
    }

    #[cold]
    fn log(&self, query: &dyn std::fmt::Display, failed: bool) {
        let took = Duration::from_nanos(self.shared.now().saturating_sub(self.started));
        let outcome = if failed { " (failed)" } else { "" };
        if self.echo {
            tracing::info!(target: "datalayer::sql", "{} [{took:.2?}]{outcome}", sql_only(query));
        }
        if let Some(slow) = self.slow
            && took > slow
        {
            tracing::warn!(
                target: "datalayer::sql",
                "slow query, {took:.2?} (DATABASE_SLOW_QUERY_THRESHOLD {slow:?}): {}{outcome}",
                sql_only(query)
            );
        }
    }
}

impl Instrumentation for DeathWatch {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { query, .. } => {
                self.started = self.shared.now();
                // A span per query, child of whatever span the caller is in; the statement
                // only with DATABASE_ECHO (the text can be long, and the binds never go in).
                let about = &self.about;
                let span = tracing::info_span!(
                    target: "datalayer::query",
                    "db.query",
                    db.system = about.system,
                    db.namespace = about.namespace.as_str(),
                    server.address = about.address.as_deref(),
                    server.port = about.port,
                    db.query.text = tracing::field::Empty,
                    error.type = tracing::field::Empty,
                );
                if self.echo && !span.is_disabled() {
                    span.record("db.query.text", sql_only(query).as_str());
                }
                self.span = Some(span);
            }
            InstrumentationEvent::FinishQuery {
                query, error: None, ..
            } => {
                let span = self.span.take();
                self.health.last_ok.store(self.started, Ordering::Release);
                self.report(span, query, false);
            }
            InstrumentationEvent::FinishQuery {
                query,
                error: Some(error),
                ..
            } => {
                let span = self.span.take();
                if let Some(span) = &span {
                    span.record("error.type", error_type(error));
                }
                if let DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) = error {
                    self.health.dead.store(true, Ordering::Release);
                    self.shared.mark_dead();
                    self.shared.metrics.broken().increment(1);
                }
                if is_failover_sign(error) {
                    self.shared.retire_all_made_before_now();
                }
                self.report(span, query, true);
            }
            _ => {}
        }
    }
}
