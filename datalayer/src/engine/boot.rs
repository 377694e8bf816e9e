//! Connecting at boot: retry what can go away, fail at once on what cannot.
//!
//! Diesel reports a failed connection as libpq's message (it exposes no SQLSTATE), so the
//! classification reads the message. Transient: connection refused or reset, timeouts, name
//! resolution, "the database system is starting up" (57P03) or shutting down, "too many
//! clients" (53300). Anything else fails at once, with a hint for the common cases:
//! authentication (28P01, 28000), a missing database (3D000), a bad URL, TLS settings.

use std::time::{Duration, Instant};

use super::Conn;
use super::manager::{ConnectError, Manager};
use super::pool_connection::PoolConnection;
use crate::error::Error;

/// The first wait between attempts; it doubles up to [`MAX_BACKOFF`], with ±25 % jitter.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Whether a message is one kind of error.
type Matcher = fn(&str) -> bool;

/// What is known to fail for good, each recognised by the specific wording of libpq, the
/// server (in English) or SQLite, with what to fix. Anything else is retried until
/// `DATABASE_CONNECT_DEADLINE`: a server whose `lc_messages` is not English words its errors
/// differently, and waiting out a permanent error costs only time, while failing on a transient
/// one costs the boot.
const PERMANENT: &[(Matcher, &str)] = &[
    (
        |m| m.contains("password authentication failed") || m.contains("no password supplied"),
        "check DATABASE_USER and DATABASE_PASSWORD (or the URL's user and password)",
    ),
    (
        |m| m.contains("no pg_hba.conf entry"),
        "the server's pg_hba.conf does not let this user in from here: check DATABASE_USER, or \
         the server's pg_hba.conf",
    ),
    (
        |m| m.contains("role \"") && m.contains("\" does not exist"),
        "check DATABASE_USER (or the URL's user)",
    ),
    (
        |m| m.contains("is not permitted to log in"),
        "the role may not log in: check DATABASE_USER, or ALTER ROLE ... LOGIN",
    ),
    (
        |m| m.contains("FATAL:") && m.contains("database \"") && m.contains("\" does not exist"),
        "create the database or fix DATABASE_NAME (or the URL's database)",
    ),
    (
        |m| m.contains("certificate verify failed"),
        "the server's certificate is not signed by the CA in DATABASE_SSLROOTCERT: give the CA \
         file your provider publishes for this server",
    ),
    (
        |m| m.contains("server certificate for") && m.contains("does not match host name"),
        "the server's certificate is for another host name: connect with the name it was \
         issued for (DATABASE_HOST, or the URL's host with ?hostaddr= for the address), or use \
         DATABASE_SSLMODE=verify-ca",
    ),
    (
        |m| m.contains("server does not support SSL"),
        "the server does not offer TLS: enable ssl on it, or lower DATABASE_SSLMODE (disable or \
         prefer) on a network you trust",
    ),
    (
        |m| {
            m.contains("root certificate file")
                || m.contains("certificate verify failed")
                || m.contains("server certificate for")
                || m.contains("SSL is not enabled on the server")
                || m.contains("server does not support SSL")
                || m.contains("sslmode value")
                || m.contains("certificate file")
                || m.contains("private key file")
        },
        "check DATABASE_SSLMODE and DATABASE_SSLROOTCERT against the server's TLS setup",
    ),
    (
        |m| {
            m.contains("invalid URI")
                || m.contains("invalid connection option")
                || m.contains("invalid port number")
                || m.contains("invalid integer value")
                || m.contains("invalid value for parameter")
        },
        "check DATABASE_URL and the DATABASE_* variables it was built from",
    ),
    (
        |m| m.contains("definition of service") && m.contains("not found"),
        "the URL's service parameter names no entry of pg_service.conf (PGSERVICEFILE): fix the \
         name, or give the connection in DATABASE_URL",
    ),
    (
        |m| {
            m.contains("certificate authentication failed")
                || m.contains("connection requires a valid client certificate")
        },
        "the server's pg_hba.conf asks this user for a client certificate: set DATABASE_SSLCERT \
         and DATABASE_SSLKEY to a certificate issued for it",
    ),
    (
        |m| m.contains("DATABASE_PASSWORD_FILE") && m.contains("NUL byte"),
        "rewrite DATABASE_PASSWORD_FILE with the password alone",
    ),
    (
        |m| m.contains("file is not a database"),
        "check DATABASE_PATH: that file exists but is not a SQLite database",
    ),
    (
        |m| m.contains("unable to open database file"),
        "check DATABASE_PATH and its folder's permissions",
    ),
    (
        |m| m.contains("attempt to write a readonly database"),
        "check DATABASE_PATH: the file or its folder is read-only for this user",
    ),
];

/// The fix for an error that will not go away by itself, or `None` for one worth retrying.
pub(crate) fn permanent(message: &str) -> Option<&'static str> {
    PERMANENT
        .iter()
        .find(|(matches, _)| matches(message))
        .map(|(_, hint)| *hint)
}

/// A small xorshift, seeded from the clock and the pid: jitter needs no better randomness.
/// Kept instead of `rand` (or `fastrand`): it spreads retries of replicas booting at once, which
/// only needs seeds that differ between processes, and a dependency for ten lines buys nothing.
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Jitter((nanos ^ u64::from(std::process::id()) << 32) | 1)
    }

    /// `d` scaled by a factor in [0.75, 1.25).
    pub(crate) fn apply(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let factor = 0.75 + (self.0 % 1000) as f64 / 2000.0;
        d.mul_f64(factor)
    }
}

/// Makes the first connection, retrying transient failures until `deadline` has passed.
pub(crate) fn first_connection<C: PoolConnection>(
    manager: &Manager<C>,
    deadline: Duration,
) -> Result<Conn, Error> {
    let started = Instant::now();
    let target = manager.target().to_string();
    let mut backoff = FIRST_BACKOFF;
    let mut jitter = Jitter::new();
    for attempt in 1.. {
        let ConnectError { message, .. } = match manager.establish() {
            Ok(conn) => return Ok(conn),
            Err(error) => error,
        };
        let wait = jitter.apply(backoff);
        let elapsed = started.elapsed();
        if let Some(hint) = permanent(&message) {
            let reason = format!("{message} ({hint})");
            return Err(Error::Connect { target, reason });
        }
        // Retry until the deadline itself: the last wait is cut to what is left of it, so a
        // server that comes up just before the deadline is still found.
        let left = deadline.saturating_sub(elapsed);
        if left.is_zero() {
            let reason = if attempt == 1 {
                message
            } else {
                format!(
                    "still failing after {attempt} attempts over {:.1}s (DATABASE_CONNECT_DEADLINE): \
                     {message}",
                    elapsed.as_secs_f64()
                )
            };
            return Err(Error::Connect { target, reason });
        }
        let wait = wait.min(left);
        tracing::warn!(
            "connecting to {target}: attempt {attempt} failed ({}); retrying in {wait:.2?}",
            message.lines().next().unwrap_or_default()
        );
        std::thread::sleep(wait);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_libpq_messages() {
        for transient in [
            "connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\tIs the server running",
            "FATAL:  the database system is starting up",
            "FATAL:  sorry, too many clients already",
            "could not translate host name \"db\" to address: Name or service not known",
            "server closed the connection unexpectedly",
            // Not English (lc_messages = de): retried until the deadline.
            "FATAL:  Passwort-Authentifizierung für Benutzer »app« fehlgeschlagen",
        ] {
            assert_eq!(permanent(transient), None, "{transient}");
        }
        for (message, hint) in [
            (
                "FATAL:  password authentication failed for user \"app\"",
                "DATABASE_PASSWORD",
            ),
            ("FATAL:  database \"nope\" does not exist", "DATABASE_NAME"),
            ("FATAL:  role \"nobody\" does not exist", "DATABASE_USER"),
            ("invalid URI query parameter: \"x\"", "DATABASE_URL"),
            (
                "root certificate file \"/x\" does not exist Either provide the file or change sslmode",
                "DATABASE_SSLROOTCERT",
            ),
            ("file is not a database", "DATABASE_PATH"),
            (
                "definition of service \"nonexist\" not found",
                "pg_service.conf",
            ),
            (
                "FATAL: certificate authentication failed for user \"app\"",
                "DATABASE_SSLCERT",
            ),
            (
                "FATAL: connection requires a valid client certificate",
                "DATABASE_SSLCERT",
            ),
        ] {
            let found = permanent(message).unwrap_or_else(|| panic!("{message}: no hint"));
            assert!(found.contains(hint), "{message}: {found}");
        }
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let mut jitter = Jitter::new();
        for _ in 0..1000 {
            let d = jitter.apply(Duration::from_millis(1000));
            assert!(
                d >= Duration::from_millis(750) && d < Duration::from_millis(1250),
                "{d:?}"
            );
        }
    }
}
