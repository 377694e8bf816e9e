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
pub(crate) fn is_libpq_param(key: &str) -> bool {
    LIBPQ_PARAMS.contains(&key)
}

/// Parameters datalayer sets on every connection from `DATABASE_TCP_USER_TIMEOUT`: a URL may
/// repeat them with the same values (the URL `config` shows, pasted back), but another value
/// would silently win over the setting (`keepalives=0` left the sockets without keepalives
/// while `config` showed `DATABASE_TCP_USER_TIMEOUT`).
const SET_BY_DATALAYER: &[&str] = &[
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "tcp_user_timeout",
];

/// The values datalayer gives [`SET_BY_DATALAYER`]'s parameters for `tcp_user_timeout`.
pub(super) fn set_by_datalayer(tcp_user_timeout: Option<Duration>) -> Vec<(&'static str, String)> {
    match tcp_user_timeout {
        Some(timeout) => vec![
            ("keepalives", "1".into()),
            ("keepalives_idle", "1".into()),
            ("keepalives_interval", "1".into()),
            ("tcp_user_timeout", timeout.as_millis().to_string()),
        ],
        None => Vec::new(),
    }
}

/// The values libpq accepts for its parameters that take one of a few words or numbers.
const CHOICES: &[(&str, &[&str])] = &[
    ("channel_binding", &["disable", "prefer", "require"]),
    ("gssencmode", &["disable", "prefer", "require"]),
    ("load_balance_hosts", &["disable", "random"]),
    (
        "replication",
        &[
            "true", "on", "yes", "1", "false", "off", "no", "0", "database",
        ],
    ),
    ("requiressl", &["0", "1"]),
    ("sslcertmode", &["disable", "allow", "require"]),
    ("sslcompression", &["0", "1"]),
    ("sslsni", &["0", "1"]),
    (
        "ssl_min_protocol_version",
        &["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"],
    ),
    (
        "ssl_max_protocol_version",
        &["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"],
    ),
    (
        "target_session_attrs",
        &[
            "any",
            "read-write",
            "read-only",
            "primary",
            "standby",
            "prefer-standby",
        ],
    ),
];

/// What is wrong with a URL's parameters, one message per problem, for the variable that
/// holds the URL: unknown parameters, parameters datalayer sets itself, values libpq would
/// refuse at connect (an exit 3 after retries, instead of 2 at once), and `hostaddr` entries
/// that are not addresses or do not match the `hosts` one for one. Messages never quote a
/// value of `password` or `sslpassword`, nor a parameter that follows one: a password whose
/// `&` is not written `%26` is cut there, and the rest would show up as a parameter name.
pub(super) fn param_problems(
    params: &[(String, String)],
    after_secret: &[String],
    hosts: usize,
    ours: &[(&str, String)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in params {
        if !is_libpq_param(key) {
            problems.push(if after_secret.contains(key) {
                "a parameter after its password is not a libpq connection parameter (not \
                 shown: if the password holds `&`, `=` or `#`, percent-encode them: %26, %3D, %23)"
                    .to_string()
            } else {
                format!(
                    "its parameter {} is not a libpq connection parameter; remove it",
                    super::loader::quote(key)
                )
            });
        } else if SET_BY_DATALAYER.contains(&key.as_str())
            && !ours.iter().any(|(k, v)| k == key && v == value)
        {
            problems.push(format!(
                "its parameter {key} would override what datalayer sets from \
                 DATABASE_TCP_USER_TIMEOUT (TCP keepalives after 1 s idle, and that timeout; \
                 0 leaves both to the OS); remove it from the URL and set that variable"
            ));
        } else if let Some((_, accepted)) = CHOICES.iter().find(|(k, _)| k == key) {
            if !accepted.contains(&value.as_str()) {
                problems.push(format!(
                    "its parameter {key} is {}; libpq accepts {}",
                    super::loader::quote(value),
                    accepted.join(", ")
                ));
            }
        } else if key == "hostaddr" {
            let addresses: Vec<&str> = value.split(',').collect();
            if let Some(bad) = addresses
                .iter()
                .find(|a| !a.is_empty() && a.parse::<std::net::IpAddr>().is_err())
            {
                problems.push(format!(
                    "its hostaddr {} is not an IP address; give the hosts' numeric addresses",
                    super::loader::quote(bad)
                ));
            } else if addresses.len() != hosts {
                problems.push(format!(
                    "its hostaddr gives {} address(es) for {hosts} host(s); give one per host, \
                     in the same order",
                    addresses.len()
                ));
            }
        }
    }
    problems
}
