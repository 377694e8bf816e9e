//! Reading the `DATABASE_POOL_*` variables, the connect deadline, echo and the slow-query
//! threshold into [`PoolSettings`].

use super::{Loader, Raw, nonzero_duration, parse_bool, pool_size};
use crate::config::{PoolSettings, duration, validate};

impl Loader<'_> {
    pub(super) fn pool(&mut self, raw: &Raw) -> PoolSettings {
        let defaults = PoolSettings::default();
        let max_size = self.var(
            "DATABASE_POOL_MAX_SIZE",
            raw.pool_max_size.as_deref(),
            defaults.max_size,
            pool_size,
            u32::to_string,
        );
        let min_idle = self.var(
            "DATABASE_POOL_MIN_IDLE",
            raw.pool_min_idle.as_deref(),
            None,
            |text| {
                text.trim()
                    .parse::<u32>()
                    .map(Some)
                    .map_err(|_| "is not a whole number of connections (0 or more)".to_string())
            },
            |n| n.map_or_else(|| "(pool default: max size)".to_string(), |n| n.to_string()),
        );
        if let Some(n) = min_idle.filter(|n| *n > max_size)
            && !self.reported.contains("DATABASE_POOL_MAX_SIZE")
        {
            self.problem(
                "DATABASE_POOL_MIN_IDLE",
                validate::min_idle_rule(n, max_size),
            );
        }
        let timeout = self.var(
            "DATABASE_POOL_TIMEOUT",
            raw.pool_timeout.as_deref(),
            defaults.timeout,
            |text| nonzero_duration(text, validate::POOL_TIMEOUT_RULE),
            |d| duration::format(*d),
        );
        let idle_timeout = self.optional_duration(
            "DATABASE_POOL_IDLE_TIMEOUT",
            raw.pool_idle_timeout.as_deref(),
            defaults.idle_timeout,
        );
        let max_lifetime = self.optional_duration(
            "DATABASE_POOL_MAX_LIFETIME",
            raw.pool_max_lifetime.as_deref(),
            defaults.max_lifetime,
        );
        let leak_threshold = self.optional_duration(
            "DATABASE_POOL_LEAK_THRESHOLD",
            raw.pool_leak_threshold.as_deref(),
            defaults.leak_threshold,
        );
        let connect_deadline = self.var(
            "DATABASE_CONNECT_DEADLINE",
            raw.connect_deadline.as_deref(),
            defaults.connect_deadline,
            |text| {
                duration::parse(text).ok_or_else(|| {
                    format!("is not a duration; {} (0 tries once)", duration::ACCEPTED)
                })
            },
            |d| duration::format(*d),
        );
        let echo = self.var(
            "DATABASE_ECHO",
            raw.echo.as_deref(),
            defaults.echo,
            parse_bool,
            bool::to_string,
        );
        let slow_query_threshold = self.optional_duration(
            "DATABASE_SLOW_QUERY_THRESHOLD",
            raw.slow_query_threshold.as_deref(),
            defaults.slow_query_threshold,
        );
        PoolSettings {
            max_size,
            min_idle,
            timeout,
            idle_timeout,
            max_lifetime,
            leak_threshold,
            connect_deadline,
            echo,
            slow_query_threshold,
        }
    }
}
