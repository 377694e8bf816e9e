//! Reading the `DATABASE_REPLICA_*` variables: a read replica is the primary's connection with
//! another place (and, from a URL, possibly another role, password or database), its own pool
//! size, and the limits that send reads back to the primary.

use secrecy::ExposeSecret;

use super::{Loader, Raw, UrlTarget, nonzero_duration, parse_url, pool_size};
use crate::config::{
    Origin, PoolSettings, ReplicaSettings, Settings, Target, duration, postgres_limits, validate,
};

/// The replica's own variables, which mean nothing without a replica.
const TUNING: [&str; 3] = [
    "DATABASE_REPLICA_POOL_MAX_SIZE",
    "DATABASE_REPLICA_MAX_LAG",
    "DATABASE_REPLICA_CHECK_INTERVAL",
];

/// URL parameters the replica takes from the primary's settings, and the variable that sets
/// them there: one TLS set-up, one set of timeouts and one application name for both.
const FROM_THE_PRIMARY: [(&str, &str); 11] = [
    ("sslmode", "DATABASE_SSLMODE"),
    ("sslrootcert", "DATABASE_SSLROOTCERT"),
    ("sslcert", "DATABASE_SSLCERT"),
    ("sslkey", "DATABASE_SSLKEY"),
    ("application_name", "DATABASE_APPLICATION_NAME"),
    ("connect_timeout", "DATABASE_CONNECT_TIMEOUT"),
    ("tcp_user_timeout", "DATABASE_TCP_USER_TIMEOUT"),
    ("keepalives", "DATABASE_TCP_USER_TIMEOUT"),
    ("keepalives_idle", "DATABASE_TCP_USER_TIMEOUT"),
    ("keepalives_interval", "DATABASE_TCP_USER_TIMEOUT"),
    ("keepalives_count", "DATABASE_TCP_USER_TIMEOUT"),
];

impl Loader<'_> {
    /// The read replica, when `DATABASE_REPLICA_URL` or `DATABASE_REPLICA_HOST` / `_PORT`
    /// names one. On SQLite these are reported by the backend check.
    pub(super) fn replica(
        &mut self,
        raw: &Raw,
        target: &Target,
        pool: &PoolSettings,
    ) -> Option<ReplicaSettings> {
        let named =
            raw.replica_url.is_some() || raw.replica_host.is_some() || raw.replica_port.is_some();
        let Target::Postgres(primary) = target else {
            return None;
        };
        if !named {
            for variable in TUNING {
                if self.vars.origin(variable).is_some() {
                    self.problem(
                        variable,
                        "only applies to a read replica; set DATABASE_REPLICA_URL or \
                         DATABASE_REPLICA_HOST / DATABASE_REPLICA_PORT, or unset it",
                    );
                }
            }
            self.entry(
                "DATABASE_REPLICA_URL",
                "(unset: Engine::read uses the primary)",
                Origin::Default,
            );
            return None;
        }
        let mut replica = primary.clone();
        replica.migration_url = None;
        // `read-write` is how a multi-host primary URL finds the primary; a replica is not one.
        replica
            .params
            .0
            .retain(|(key, _)| key != "target_session_attrs");
        let origin;
        if let Some(url) = &raw.replica_url {
            origin = self.origin("DATABASE_REPLICA_URL");
            for part in ["DATABASE_REPLICA_HOST", "DATABASE_REPLICA_PORT"] {
                if self.vars.origin(part).is_some() {
                    self.problem(
                        part,
                        "cannot be combined with DATABASE_REPLICA_URL, which is the replica's \
                         whole connection; unset one of them",
                    );
                }
            }
            match parse_url(url.expose_secret()) {
                Ok(UrlTarget::Postgres(parsed)) => {
                    let mut own = Vec::new();
                    let after_secret = parsed.after_secret.clone();
                    for (key, value) in replica.take_place_from(parsed) {
                        if let Some((_, variable)) =
                            FROM_THE_PRIMARY.iter().find(|(k, _)| *k == key)
                        {
                            self.problem(
                                "DATABASE_REPLICA_URL",
                                format!(
                                    "its {key} parameter is taken from the primary's settings \
                                     ({variable} applies to both); remove it from the URL"
                                ),
                            );
                        } else {
                            own.push((key, value));
                        }
                    }
                    let hosts = 1 + replica.more_hosts.len();
                    for problem in postgres_limits::param_problems(&own, &after_secret, hosts, &[])
                    {
                        self.problem("DATABASE_REPLICA_URL", problem);
                    }
                    for (key, value) in own {
                        replica.params.0.retain(|(k, _)| *k != key);
                        replica.params.0.push((key, value));
                    }
                }
                Ok(UrlTarget::Sqlite(_)) => self.problem(
                    "DATABASE_REPLICA_URL",
                    "is not a postgres:// URL (it is not quoted: it may hold a password); give \
                     the read replica's URL",
                ),
                Err(why) => self.problem("DATABASE_REPLICA_URL", why),
            }
        } else {
            origin = self
                .vars
                .origin("DATABASE_REPLICA_HOST")
                .or_else(|| self.vars.origin("DATABASE_REPLICA_PORT"))
                .unwrap_or(Origin::Given);
            // Unset, the replica's hosts are the primary's, all of them.
            let primary_hosts = std::iter::once(primary.host.clone())
                .chain(primary.more_hosts.iter().map(|(host, _)| host.clone()))
                .collect();
            let (host, more_hosts) = self.hosts(
                "DATABASE_REPLICA_HOST",
                raw.replica_host.as_deref(),
                primary_hosts,
            );
            let (port, more_ports) = self.ports(
                "DATABASE_REPLICA_PORT",
                raw.replica_port.as_deref(),
                primary.port,
            );
            replica.more_hosts =
                self.pair_ports("DATABASE_REPLICA_PORT", port, more_hosts, &more_ports);
            replica.host = host;
            replica.port = port;
            self.check_several_hosts(
                "DATABASE_REPLICA_HOST",
                "DATABASE_REPLICA_HOST",
                &replica.host,
                replica.port,
                &replica.more_hosts,
            );
        }
        let max_size = self.var(
            "DATABASE_REPLICA_POOL_MAX_SIZE",
            raw.replica_pool_max_size.as_deref(),
            pool.max_size,
            pool_size,
            u32::to_string,
        );
        let max_lag = self.var(
            "DATABASE_REPLICA_MAX_LAG",
            raw.replica_max_lag.as_deref(),
            ReplicaSettings::DEFAULT_MAX_LAG,
            |text| nonzero_duration(text, validate::REPLICA_MAX_LAG_RULE),
            |d| duration::format(*d),
        );
        let check_interval = self.var(
            "DATABASE_REPLICA_CHECK_INTERVAL",
            raw.replica_check_interval.as_deref(),
            ReplicaSettings::DEFAULT_CHECK_INTERVAL,
            |text| {
                nonzero_duration(text, validate::REPLICA_CHECK_INTERVAL_RULE).and_then(|d| {
                    if d < ReplicaSettings::MIN_CHECK_INTERVAL {
                        Err(validate::REPLICA_CHECK_INTERVAL_RULE.to_string())
                    } else {
                        Ok(d)
                    }
                })
            },
            |d| duration::format(*d),
        );
        // Shown as the URL the replica pool connects to, password redacted.
        let shown = Settings {
            target: Target::Postgres(replica.clone()),
            ..Settings::default()
        }
        .connection_url()
        .redacted()
        .to_string();
        self.entry("DATABASE_REPLICA_URL", shown, origin);
        Some(ReplicaSettings {
            target: replica,
            max_size,
            max_lag,
            check_interval,
        })
    }
}
