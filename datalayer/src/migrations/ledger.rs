//! datalayer's ledger of applied migrations, beside Diesel's `__diesel_schema_migrations`
//! (which stays, so the diesel CLI keeps working): per version, the migration set it belongs
//! to, the SHA-256 of its `up.sql`, when it ran, how long it took, and which datalayer applied
//! it. Several sets share one database and one ledger; each reads its own rows.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::set::Script;
use crate::engine::Conn;
use crate::error::MigrationError;

/// The set that rows recorded before the ledger had a `migration_set` column belong to: the
/// reference application's, which was the only one.
pub(crate) const LEGACY_SET: &str = "datalayer";

// The ledger table, and Diesel's (as diesel_migrations declares it). Not in `src/schema.rs`:
// `diesel.toml` filters them out of print-schema.
#[allow(missing_docs)]
mod table {
    diesel::table! {
        datalayer_migrations (version) {
            version -> Text,
            name -> Text,
            checksum -> Text,
            applied_at -> Timestamp,
            duration_ms -> Nullable<BigInt>,
            applied_by -> Text,
            migration_set -> Text,
        }
    }
    diesel::table! {
        __diesel_schema_migrations (version) {
            version -> VarChar,
            run_on -> Timestamp,
        }
    }
}
use table::{__diesel_schema_migrations as diesel_versions, datalayer_migrations};

/// Creates the ledger table when it is missing (the same SQL serves both backends).
pub(crate) const CREATE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS datalayer_migrations (
    version VARCHAR(50) PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMP NOT NULL,
    duration_ms BIGINT,
    applied_by TEXT NOT NULL,
    migration_set TEXT NOT NULL
)";

/// What `applied_by` says for rows recorded for migrations applied before the ledger existed.
pub(crate) const BACKFILL: &str = "backfill";

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub(crate) struct Entry {
    /// Diesel's version, e.g. `20261125000001`.
    pub version: String,
    /// The folder name.
    pub name: String,
    /// SHA-256 of `up.sql` when it was applied (or accepted).
    pub checksum: String,
    /// When it was applied (UTC).
    pub applied_at: NaiveDateTime,
    /// How long it took, in milliseconds; `None` for backfilled rows.
    pub duration_ms: Option<i64>,
    /// `datalayer <version>`, or `backfill`.
    pub applied_by: String,
    /// The migration set it belongs to.
    pub migration_set: String,
}

fn failed(action: &'static str) -> impl FnOnce(diesel::result::Error) -> MigrationError {
    move |source| MigrationError::Database { action, source }
}

/// Creates the ledger table and Diesel's when they are missing (the same SQL serves both
/// backends; Diesel's is what diesel_migrations creates), and gives a ledger made by an
/// earlier release its `migration_set` column (its rows belong to [`LEGACY_SET`]).
pub(crate) fn ensure(conn: &mut Conn) -> Result<(), MigrationError> {
    conn.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (
            version VARCHAR(50) PRIMARY KEY NOT NULL,
            run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        );
        {CREATE_LEDGER}"
    ))
    .map_err(failed("creating the ledger tables"))?;
    let add_column = format!(
        "ALTER TABLE datalayer_migrations ADD COLUMN migration_set TEXT NOT NULL DEFAULT '{LEGACY_SET}'"
    );
    match conn {
        #[cfg(feature = "postgres")]
        Conn::Postgres(pg) => {
            pg.batch_execute(&add_column.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS"))
        }
        #[cfg(feature = "sqlite")]
        Conn::Sqlite(sqlite) => {
            #[derive(QueryableByName)]
            struct Count {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            let has: Count = diesel::sql_query(
                "SELECT count(*) AS n FROM pragma_table_info('datalayer_migrations') \
                 WHERE name = 'migration_set'",
            )
            .get_result(sqlite)
            .map_err(failed("reading the ledger's columns"))?;
            if has.n == 0 {
                sqlite.batch_execute(&add_column)
            } else {
                Ok(())
            }
        }
    }
    .map_err(failed("adding the ledger's migration_set column"))
}

/// One row of [`applied`]'s statement: a version of Diesel's table (the rest `NULL`), or a
/// ledger row.
#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    version: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    ledger: bool,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    name: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    checksum: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamp>)]
    applied_at: Option<NaiveDateTime>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    duration_ms: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    applied_by: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    migration_set: Option<String>,
}

/// Every version Diesel has applied, in order, with its ledger row if it has one: one
/// statement, both tables read in one snapshot. Two plain scans glued by `UNION ALL` and
/// matched here rather than a join: on a new session PostgreSQL plans the join in about a
/// millisecond more (cold catalog caches), which was most of a boot with nothing to do.
/// Fails when either table is missing (see [`ensure`]).
pub(crate) fn applied(conn: &mut Conn) -> QueryResult<Vec<(String, Option<Entry>)>> {
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT CAST(version AS TEXT) AS version, 0 = 1 AS ledger, NULL AS name, \
                NULL AS checksum, NULL AS applied_at, NULL AS duration_ms, NULL AS applied_by, \
                NULL AS migration_set \
           FROM __diesel_schema_migrations \
         UNION ALL \
         SELECT CAST(version AS TEXT), 1 = 1, name, checksum, applied_at, duration_ms, \
                applied_by, migration_set \
           FROM datalayer_migrations",
    )
    .load(conn)?;
    let (ledger, versions): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|r| r.ledger);
    let mut entries: std::collections::HashMap<String, Entry> = ledger
        .into_iter()
        .filter_map(|row| {
            Some((
                row.version.clone(),
                Entry {
                    version: row.version,
                    name: row.name?,
                    checksum: row.checksum?,
                    applied_at: row.applied_at?,
                    duration_ms: row.duration_ms,
                    applied_by: row.applied_by?,
                    migration_set: row.migration_set?,
                },
            ))
        })
        .collect();
    let mut applied: Vec<(String, Option<Entry>)> = versions
        .into_iter()
        .map(|row| {
            let entry = entries.remove(&row.version);
            (row.version, entry)
        })
        .collect();
    applied.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(applied)
}

/// Records that `script` was applied, taking `took` (`None` when backfilling).
pub(crate) fn record(
    conn: &mut Conn,
    set: &str,
    script: &Script,
    took: Option<Duration>,
    applied_by: &str,
) -> Result<(), MigrationError> {
    let duration_ms = took.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    diesel::insert_into(datalayer_migrations::table)
        .values((
            datalayer_migrations::version.eq(&script.version),
            datalayer_migrations::name.eq(&script.name),
            datalayer_migrations::checksum.eq(&script.checksum),
            datalayer_migrations::applied_at.eq(chrono::Utc::now().naive_utc()),
            datalayer_migrations::duration_ms.eq(duration_ms),
            datalayer_migrations::applied_by.eq(applied_by),
            datalayer_migrations::migration_set.eq(set),
        ))
        .execute(conn)
        .map_err(failed("recording the migration in the ledger"))?;
    Ok(())
}

/// Records `checksum` as the accepted one for `version`; returns whether a row changed.
pub(crate) fn accept(
    conn: &mut Conn,
    version: &str,
    checksum: &str,
) -> Result<bool, MigrationError> {
    Ok(diesel::update(datalayer_migrations::table.find(version))
        .set(datalayer_migrations::checksum.eq(checksum))
        .execute(conn)
        .map_err(failed("recording the accepted checksum"))?
        > 0)
}

/// Every applied version, oldest first, read without writing anything: for `status` on a
/// database that may have no ledger yet, or one from an earlier release (whose rows belong to
/// [`LEGACY_SET`]). A database never migrated has none.
pub(crate) fn applied_read_only(conn: &mut Conn) -> Vec<(String, Option<Entry>)> {
    if let Ok(rows) = applied(conn) {
        return rows;
    }
    let Ok(versions) = diesel_versions::table
        .select(diesel_versions::version)
        .order(diesel_versions::version)
        .load::<String>(conn)
    else {
        return Vec::new();
    };
    #[derive(QueryableByName)]
    struct Legacy {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        checksum: String,
    }
    let legacy: Vec<Legacy> =
        diesel::sql_query("SELECT version, checksum FROM datalayer_migrations")
            .load(conn)
            .unwrap_or_default();
    versions
        .into_iter()
        .map(|version| {
            let entry = legacy.iter().find(|l| l.version == version).map(|l| Entry {
                version: version.clone(),
                name: String::new(),
                checksum: l.checksum.clone(),
                applied_at: NaiveDateTime::default(),
                duration_ms: None,
                applied_by: String::new(),
                migration_set: LEGACY_SET.to_string(),
            });
            (version, entry)
        })
        .collect()
}
