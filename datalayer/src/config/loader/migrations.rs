//! Reading the `DATABASE_MIGRATION_*`, `DATABASE_ALLOW_UNKNOWN_MIGRATIONS` and
//! `DATABASE_SCHEMA_CHECK` variables into [`MigrationSettings`].

use super::{Loader, Raw, nonzero_duration, parse_bool};
use crate::config::{Backend, MigrationSettings, SchemaCheck, duration, postgres_limits};

impl Loader<'_> {
    pub(super) fn migrations(&mut self, raw: &Raw, backend: Backend) -> MigrationSettings {
        let defaults = MigrationSettings::default();
        let lock_timeout = self.var(
            "DATABASE_MIGRATION_LOCK_TIMEOUT",
            raw.migration_lock_timeout.as_deref(),
            defaults.lock_timeout,
            |text| {
                nonzero_duration(
                    text,
                    "would give up on the migration lock at once; give a wait such as 60s",
                )
            },
            |d| duration::format(*d),
        );
        // PostgreSQL only: on SQLite the variable is reported as not applying.
        let ddl_lock_timeout = match backend {
            Backend::Sqlite => defaults.ddl_lock_timeout,
            Backend::Postgres => self.var(
                "DATABASE_MIGRATION_DDL_LOCK_TIMEOUT",
                raw.migration_ddl_lock_timeout.as_deref(),
                defaults.ddl_lock_timeout,
                |text| {
                    nonzero_duration(
                        text,
                        "would let DDL queue behind any transaction; give a limit such as 5s",
                    )
                    .and_then(|d| postgres_limits::millis(Some(d)).map(|_| d))
                },
                |d| duration::format(*d),
            ),
        };
        let allow_unknown = self.var(
            "DATABASE_ALLOW_UNKNOWN_MIGRATIONS",
            raw.allow_unknown_migrations.as_deref(),
            defaults.allow_unknown,
            parse_bool,
            bool::to_string,
        );
        let schema_check = self.var(
            "DATABASE_SCHEMA_CHECK",
            raw.schema_check.as_deref(),
            defaults.schema_check,
            |text| match text.trim().to_ascii_lowercase().as_str() {
                "warn" => Ok(SchemaCheck::Warn),
                "strict" => Ok(SchemaCheck::Strict),
                "off" => Ok(SchemaCheck::Off),
                _ => Err("is not a schema check mode; accepted: warn, strict, off".into()),
            },
            |mode| mode.as_str().to_string(),
        );
        MigrationSettings {
            lock_timeout,
            ddl_lock_timeout,
            allow_unknown,
            schema_check,
        }
    }
}
