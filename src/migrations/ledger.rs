//! datalayer's ledger of applied migrations, beside Diesel's `__diesel_schema_migrations`
//! (which stays, so the diesel CLI keeps working): per version, the SHA-256 of its `up.sql`,
//! when it ran, how long it took, and which datalayer applied it.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::set::Script;
use crate::engine::Conn;
use crate::error::Error;

// The ledger table, and Diesel's (as diesel_migrations declares it) to read both in one
// statement. Not in `src/schema.rs`: `diesel.toml` filters them out of print-schema.
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
        }
    }
    diesel::table! {
        __diesel_schema_migrations (version) {
            version -> VarChar,
            run_on -> Timestamp,
        }
    }
    diesel::allow_tables_to_appear_in_same_query!(__diesel_schema_migrations, datalayer_migrations);
}
use table::{__diesel_schema_migrations as diesel_versions, datalayer_migrations};

/// What `applied_by` says for rows recorded for migrations applied before the ledger existed.
pub const BACKFILL: &str = "backfill";

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct Entry {
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
}

/// Creates the ledger table and Diesel's when they are missing (the same SQL serves both
/// backends; Diesel's is what diesel_migrations creates).
pub(crate) fn ensure(conn: &mut Conn) -> Result<(), Error> {
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (
            version VARCHAR(50) PRIMARY KEY NOT NULL,
            run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        );
        CREATE TABLE IF NOT EXISTS datalayer_migrations (
            version VARCHAR(50) PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TIMESTAMP NOT NULL,
            duration_ms BIGINT,
            applied_by TEXT NOT NULL
        )",
    )?;
    Ok(())
}

/// Every version Diesel has applied, in order, with its ledger row if it has one: one
/// statement. Fails when either table is missing (see [`ensure`]).
pub(crate) fn applied(conn: &mut Conn) -> QueryResult<Vec<(String, Option<Entry>)>> {
    diesel_versions::table
        .left_join(
            datalayer_migrations::table
                .on(datalayer_migrations::version.eq(diesel_versions::version)),
        )
        .select((
            diesel_versions::version,
            datalayer_migrations::all_columns.nullable(),
        ))
        .order(diesel_versions::version)
        .load(conn)
}

/// Records that `script` was applied, taking `took` (`None` when backfilling).
pub(crate) fn record(
    conn: &mut Conn,
    script: &Script,
    took: Option<Duration>,
    applied_by: &str,
) -> Result<(), Error> {
    let duration_ms = took.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    diesel::insert_into(datalayer_migrations::table)
        .values((
            datalayer_migrations::version.eq(&script.version),
            datalayer_migrations::name.eq(&script.name),
            datalayer_migrations::checksum.eq(&script.checksum),
            datalayer_migrations::applied_at.eq(crate::models::utc_now()),
            datalayer_migrations::duration_ms.eq(duration_ms),
            datalayer_migrations::applied_by.eq(applied_by),
        ))
        .execute(conn)?;
    Ok(())
}

/// Forgets a reverted migration.
pub(crate) fn forget(conn: &mut Conn, version: &str) -> Result<(), Error> {
    diesel::delete(datalayer_migrations::table.find(version)).execute(conn)?;
    Ok(())
}

/// Records `checksum` as the accepted one for `version`; returns whether a row changed.
pub(crate) fn accept(conn: &mut Conn, version: &str, checksum: &str) -> Result<bool, Error> {
    Ok(diesel::update(datalayer_migrations::table.find(version))
        .set(datalayer_migrations::checksum.eq(checksum))
        .execute(conn)?
        > 0)
}
