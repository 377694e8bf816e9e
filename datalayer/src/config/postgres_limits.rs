//! What PostgreSQL and libpq accept, checked while loading the settings, so that a value the
//! server would refuse is a configuration error naming its variable (exit 2, at once) rather
//! than a boot that retries and then fails with the server's complaint.

use std::time::Duration;

/// PostgreSQL's time settings (`statement_timeout`, `lock_timeout`,
/// `idle_in_transaction_session_timeout`) and libpq's `tcp_user_timeout` are `int`
/// milliseconds.
const MAX_MILLIS: u128 = i32::MAX as u128;

/// libpq's `connect_timeout` is `int` seconds.
const MAX_SECONDS: u64 = i32::MAX as u64;

/// PostgreSQL's identifiers (role and database names) are at most `NAMEDATALEN - 1` bytes.
pub(super) const MAX_NAME_BYTES: usize = 63;

/// libpq's connection parameters (PostgreSQL 15 and 16), the only ones a URL may carry.
const LIBPQ_PARAMS: &[&str] = &[
    "application_name",
    "channel_binding",
    "client_encoding",
    "connect_timeout",
    "dbname",
    "fallback_application_name",
    "gssdelegation",
    "gssencmode",
    "gsslib",
    "host",
    "hostaddr",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "krbsrvname",
    "load_balance_hosts",
    "options",
    "passfile",
    "password",
    "port",
    "replication",
    "require_auth",
    "requirepeer",
    "requiressl",
    "service",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "sslcert",
    "sslcertmode",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslkey",
    "sslmode",
    "sslpassword",
    "sslrootcert",
    "sslsni",
    "target_session_attrs",
    "tcp_user_timeout",
    "user",
];

/// A duration PostgreSQL takes in milliseconds.
pub(super) fn millis(value: Option<Duration>) -> Result<Option<Duration>, String> {
    match value {
        Some(d) if d.as_millis() > MAX_MILLIS => Err(format!(
            "is above PostgreSQL's limit of {MAX_MILLIS} ms (about 24.8 days); give less, or 0 \
             to disable"
        )),
        other => Ok(other),
    }
}

/// A duration libpq takes in whole seconds.
pub(super) fn seconds(value: Duration) -> Result<Duration, String> {
    if value.as_secs() > MAX_SECONDS {
        return Err(format!(
            "is above libpq's limit of {MAX_SECONDS} s; give less"
        ));
    }
    Ok(value)
}

/// A role or database name.
pub(super) fn name(value: &str) -> Result<(), String> {
    if value.len() > MAX_NAME_BYTES {
        return Err(format!(
            "is {} bytes long; PostgreSQL names are at most {MAX_NAME_BYTES} bytes",
            value.len()
        ));
    }
    Ok(())
}

/// Whether libpq knows the URL parameter `key`.
pub(super) fn is_libpq_param(key: &str) -> bool {
    LIBPQ_PARAMS.contains(&key)
}
