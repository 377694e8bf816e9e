//! The rules a built [`Settings`] must follow, for settings made in code rather than loaded
//! from the environment: the loader reports the same problems, with the same words, for the
//! variables it reads.

use std::time::Duration;

use super::{PoolSettings, ReplicaSettings, Settings};
use crate::error::{ConfigErrors, ConfigProblem, Error};

pub(super) const POOL_SIZE_RULE: &str = "is not a pool size; give a whole number from 1 to 10000 (PostgreSQL serves a few hundred \
     connections at most; a pool's bookkeeping grows with its size)";
pub(super) const POOL_TIMEOUT_RULE: &str =
    "would make every checkout fail at once; give a positive wait such as 30s";

pub(super) const REPLICA_MAX_LAG_RULE: &str =
    "would send every read to the primary; give the staleness reads may tolerate, such as 5s";
pub(super) const REPLICA_CHECK_INTERVAL_RULE: &str =
    "is below 50ms; the lag check would load the replica; give 50ms or more, such as 1s";

pub(super) fn min_idle_rule(min_idle: u32, max_size: u32) -> String {
    format!("{min_idle} is above DATABASE_POOL_MAX_SIZE ({max_size}); give at most {max_size}")
}

const ZERO_IS_NONE: &str =
    "is a zero duration; `None` disables it (what 0 means in the environment)";

impl PoolSettings {
    /// Everything wrong with these pool settings; empty when the pool can be built.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |variable: &str, message: String| {
            problems.push(ConfigProblem {
                variable: variable.into(),
                message,
            })
        };
        if !(1..=PoolSettings::MAX_SIZE).contains(&self.max_size) {
            problem(
                "DATABASE_POOL_MAX_SIZE",
                format!("\"{}\" {POOL_SIZE_RULE}", self.max_size),
            );
        } else if let Some(n) = self.min_idle.filter(|n| *n > self.max_size) {
            problem("DATABASE_POOL_MIN_IDLE", min_idle_rule(n, self.max_size));
        }
        if self.timeout.is_zero() {
            problem("DATABASE_POOL_TIMEOUT", POOL_TIMEOUT_RULE.into());
        }
        for (variable, value) in [
            ("DATABASE_POOL_IDLE_TIMEOUT", self.idle_timeout),
            ("DATABASE_POOL_MAX_LIFETIME", self.max_lifetime),
            ("DATABASE_POOL_LEAK_THRESHOLD", self.leak_threshold),
            ("DATABASE_SLOW_QUERY_THRESHOLD", self.slow_query_threshold),
        ] {
            if value == Some(Duration::ZERO) {
                problem(variable, ZERO_IS_NONE.into());
            }
        }
        problems
    }
}

impl Settings {
    /// Checks settings built or changed in code against the rules the environment's loader
    /// applies, so that the pool is never built in a state it would panic on. `Engine::connect`
    /// calls it; the error lists every problem, naming each setting by its variable.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = self.pool.problems();
        if let Some(replica) = &self.replica {
            if !(1..=PoolSettings::MAX_SIZE).contains(&replica.max_size) {
                problems.push(ConfigProblem {
                    variable: "DATABASE_REPLICA_POOL_MAX_SIZE".into(),
                    message: format!("\"{}\" {POOL_SIZE_RULE}", replica.max_size),
                });
            }
            if replica.max_lag.is_zero() {
                problems.push(ConfigProblem {
                    variable: "DATABASE_REPLICA_MAX_LAG".into(),
                    message: REPLICA_MAX_LAG_RULE.into(),
                });
            }
            if replica.check_interval < ReplicaSettings::MIN_CHECK_INTERVAL {
                problems.push(ConfigProblem {
                    variable: "DATABASE_REPLICA_CHECK_INTERVAL".into(),
                    message: REPLICA_CHECK_INTERVAL_RULE.into(),
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(ConfigErrors(problems)))
        }
    }
}
