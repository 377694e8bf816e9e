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

const TRANSIENT: &[&str] = &[
    "Connection refused",
    "Connection reset",
    "connection timed out",
    "timeout expired",
    "could not translate host name",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "No route to host",
    "server closed the connection unexpectedly",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "sorry, too many clients already",
    "remaining connection slots are reserved",
    "too many connections",
    "the engine is shutting down",
];

/// Can this connection error go away by itself?
pub(crate) fn is_transient(message: &str) -> bool {
    TRANSIENT.iter().any(|pattern| message.contains(pattern))
}

/// What to fix, for errors that will not go away.
fn hint(message: &str) -> Option<&'static str> {
    let hints: &[(&[&str], &str)] = &[
        (
            &[
                "password authentication failed",
                "no password supplied",
                "authentication failed",
            ],
            "check DATABASE_USER and DATABASE_PASSWORD (or the URL's user and password)",
        ),
        (
            &[
                "no pg_hba.conf entry",
                "role \"",
                "is not permitted to log in",
            ],
            "check DATABASE_USER, and that the server's pg_hba.conf lets this user in",
        ),
        (
            &["database \"", "does not exist"],
            "create the database or fix DATABASE_NAME (or the URL's database)",
        ),
        (
            &["SSL", "certificate", "sslmode"],
            "check DATABASE_SSLMODE and DATABASE_SSLROOTCERT against the server's TLS setup",
        ),
        (
            &[
                "invalid URI",
                "invalid connection option",
                "invalid port",
                "invalid integer",
            ],
            "check DATABASE_URL",
        ),
        (
            &[
                "unable to open database file",
                "Permission denied",
                "readonly",
            ],
            "check DATABASE_PATH and the folder's permissions",
        ),
    ];
    hints
        .iter()
        .find(|(patterns, _)| patterns.iter().any(|p| message.contains(p)))
        .map(|(_, hint)| *hint)
}

/// A small xorshift, seeded from the clock and the pid: jitter needs no better randomness.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Jitter((nanos ^ u64::from(std::process::id()) << 32) | 1)
    }

    /// `d` scaled by a factor in [0.75, 1.25).
    fn apply(&mut self, d: Duration) -> Duration {
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
        let ConnectError(message) = match manager.establish() {
            Ok(conn) => return Ok(conn),
            Err(error) => error,
        };
        let wait = jitter.apply(backoff);
        let elapsed = started.elapsed();
        if !is_transient(&message) {
            let reason = match hint(&message) {
                Some(hint) => format!("{message} ({hint})"),
                None => message,
            };
            return Err(Error::Connect { target, reason });
        }
        if elapsed + wait > deadline {
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
        ] {
            assert!(is_transient(transient), "{transient}");
        }
        for permanent in [
            "FATAL:  password authentication failed for user \"app\"",
            "FATAL:  database \"nope\" does not exist",
            "invalid URI query parameter: \"x\"",
            "root certificate file \"/x\" does not exist",
        ] {
            assert!(!is_transient(permanent), "{permanent}");
            assert!(hint(permanent).is_some(), "{permanent}");
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
