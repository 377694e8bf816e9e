//! Connection URLs: built from settings with strict percent-encoding, parsed the way libpq
//! parses them, and shown only redacted.
//!
//! Why not the `url` crate: for a non-special scheme such as `postgres` it leaves `%` unescaped
//! in the user info (libpq would decode `p%41ss` to `pAss`), cannot express libpq's socket form
//! `postgres://user@/db?host=/run/postgresql` (it rejects credentials without a host), and
//! form-encodes spaces in the query as `+`, which libpq does not decode. Here every user, password,
//! database name and query value is percent-encoded except RFC 3986's unreserved characters,
//! which libpq decodes byte for byte (the test suite checks this with libpq's own parser).

use std::fmt;
use std::net::IpAddr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};

mod parse;

pub(crate) use parse::{ParsedUrl, parse_port, parse_postgres};

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) is escaped.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a redacted URL shows in place of a password.
pub const REDACTED: &str = "***";

/// Query parameters whose values are secrets and are redacted on display.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword"];

/// A connection URL: the secret form for the driver and a redacted form for people.
///
/// `Debug` and `Display` show only the redacted form (`postgres://app:***@db:5432/app?...`).
/// The full URL is reachable only through [`ExposeSecret::expose_secret`], which datalayer calls
/// in exactly one place: where the connection manager is made.
#[derive(Clone)]
pub struct ConnectionUrl {
    secret: SecretString,
    redacted: String,
    /// The secrets that may appear inside the URL (password, `sslpassword`), for [`scrub`].
    ///
    /// [`scrub`]: ConnectionUrl::scrub
    secrets: Vec<SecretString>,
}

impl ConnectionUrl {
    pub(crate) fn new(secret: String, redacted: String, secrets: Vec<SecretString>) -> Self {
        ConnectionUrl {
            secret: SecretString::from(secret),
            redacted,
            secrets: secrets
                .into_iter()
                .filter(|s| !s.expose_secret().is_empty())
                .collect(),
        }
    }

    /// The URL with any password replaced by `***`, safe for logs and errors.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// `text` with the URL and every secret it holds (raw or percent-encoded) replaced by their
    /// redacted forms. Applied to messages from drivers before they reach an error.
    ///
    /// A secret is replaced where it stands as a value of its own: not inside a longer word,
    /// and not inside the redacted URL, so that a password equal to a word of the message (the
    /// user `postgres`, say) does not turn `postgres://` into `***://`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut pieces = text.split(self.secret.expose_secret()).peekable();
        while let Some(piece) = pieces.next() {
            // Between occurrences of the URL (now redacted), and of the redacted URL itself.
            let mut parts = piece.split(self.redacted.as_str()).peekable();
            while let Some(part) = parts.next() {
                out.push_str(&self.scrub_secrets(part));
                if parts.peek().is_some() {
                    out.push_str(&self.redacted);
                }
            }
            if pieces.peek().is_some() {
                out.push_str(&self.redacted);
            }
        }
        out
    }

    /// Every stand-alone occurrence of a secret (raw or percent-encoded) in `text`, redacted.
    fn scrub_secrets(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            let raw = secret.expose_secret();
            for form in [encode(raw).to_string(), raw.to_string()] {
                out = replace_standalone(&out, &form);
            }
        }
        out
    }
}

/// `text` with each occurrence of `needle` that is not part of a longer word (no letter, digit
/// or `_` touching it on either side) replaced by [`REDACTED`].
fn replace_standalone(text: &str, needle: &str) -> String {
    if needle.is_empty() {
        return text.to_string();
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(needle) {
        let before = rest[..at]
            .chars()
            .next_back()
            .or_else(|| out.chars().next_back());
        let after = rest[at + needle.len()..].chars().next();
        // A needle that starts or ends with a non-word character bounds itself on that side.
        let starts_word = needle.chars().next().is_some_and(|c| word(Some(c)));
        let ends_word = needle.chars().next_back().is_some_and(|c| word(Some(c)));
        let touching = (starts_word && word(before)) || (ends_word && word(after));
        out.push_str(&rest[..at]);
        out.push_str(if touching { needle } else { REDACTED });
        rest = &rest[at + needle.len()..];
    }
    out.push_str(rest);
    out
}

impl ExposeSecret<str> for ConnectionUrl {
    fn expose_secret(&self) -> &str {
        self.secret.expose_secret()
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnectionUrl")
            .field(&self.redacted)
            .finish()
    }
}

impl fmt::Display for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Where a PostgreSQL server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name such as `db.internal` or `localhost`.
    Name(String),
    /// An IPv4 or IPv6 address (IPv6 is bracketed in URLs).
    Ip(IpAddr),
    /// A directory holding the server's unix socket, e.g. `/var/run/postgresql`.
    Socket(String),
}

impl Host {
    /// Reads a host name, an IP address, or a socket directory (starts with `/`).
    ///
    /// On failure returns what is wrong, without echoing the input.
    pub(crate) fn parse(text: &str) -> Result<Host, &'static str> {
        if text.starts_with('/') {
            return Ok(Host::Socket(text.to_string()));
        }
        let unbracketed = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let valid_name = !text.is_empty()
            && text.len() <= 253
            && !text.starts_with(['-', '.'])
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if valid_name {
            Ok(Host::Name(text.to_string()))
        } else {
            Err(
                "is not a host name (letters, digits, - . _; use the xn-- form for non-ASCII \
                 names), an IPv4/IPv6 address, or a unix-socket directory starting with /",
            )
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Socket(dir) => f.write_str(dir),
        }
    }
}

/// The pieces of a PostgreSQL URL, in the order they are written.
pub(crate) struct UrlParts<'a> {
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    pub host: &'a Host,
    pub port: u16,
    /// Further TCP hosts, written after the first: `a:5432,b:5433`.
    pub more_hosts: &'a [(Host, u16)],
    pub dbname: Option<&'a str>,
    /// Query parameters, written in order after the socket's `host` and `port`.
    pub params: Vec<(&'a str, &'a str)>,
    /// Write `***` in place of the password and of secret query parameters.
    pub redact: bool,
}

fn encode(s: &str) -> impl fmt::Display + '_ {
    utf8_percent_encode(s, COMPONENT)
}

/// Writes a libpq URL. Every component is percent-encoded; an IPv6 host is bracketed; a socket
/// directory and its port go into the `host` and `port` query parameters.
pub(crate) fn build_postgres(parts: &UrlParts<'_>) -> String {
    let mut url = String::from("postgres://");
    if let Some(user) = parts.user {
        url.push_str(&encode(user).to_string());
    }
    if let Some(password) = parts.password {
        url.push(':');
        match parts.redact {
            true => url.push_str(REDACTED),
            false => url.push_str(&encode(password).to_string()),
        }
    }
    if parts.user.is_some() || parts.password.is_some() {
        url.push('@');
    }
    let port = parts.port.to_string();
    let mut query: Vec<(&str, &str)> = Vec::new();
    let tcp = |host: &Host, port: &str| match host {
        Host::Name(name) => Some(format!("{}:{port}", encode(name))),
        Host::Ip(IpAddr::V4(ip)) => Some(format!("{ip}:{port}")),
        Host::Ip(IpAddr::V6(ip)) => Some(format!("[{ip}]:{port}")),
        Host::Socket(_) => None,
    };
    match (parts.host, tcp(parts.host, &port)) {
        (_, Some(authority)) => url.push_str(&authority),
        (Host::Socket(dir), None) => {
            query.push(("host", dir));
            query.push(("port", &port));
        }
        _ => {}
    }
    for (host, port) in parts.more_hosts {
        // The settings refuse a socket directory among several hosts.
        if let Some(authority) = tcp(host, &port.to_string()) {
            url.push(',');
            url.push_str(&authority);
        }
    }
    url.push('/');
    if let Some(dbname) = parts.dbname {
        url.push_str(&encode(dbname).to_string());
    }
    query.extend(parts.params.iter().copied());
    for (i, (key, value)) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&format!("{}=", encode(key)));
        match parts.redact && is_secret_param(key) {
            true => url.push_str(REDACTED),
            false => url.push_str(&encode(value).to_string()),
        }
    }
    url
}

/// Does `key` name a query parameter whose value is a secret?
pub(crate) fn is_secret_param(key: &str) -> bool {
    SECRET_PARAMS.contains(&key)
}

/// Returns `value`, or `***` when `key` names a secret query parameter.
pub(crate) fn redact_param<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret_param(key) {
        REDACTED
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(host: &'a Host) -> UrlParts<'a> {
        UrlParts {
            user: Some("app"),
            password: Some("p@ss:w/rd%41 é"),
            host,
            port: 5432,
            more_hosts: &[],
            dbname: Some("my db"),
            params: vec![("application_name", "a b+c"), ("sslpassword", "k*y")],
            redact: false,
        }
    }

    #[test]
    fn builds_escaped_urls() {
        let host = Host::Name("db".into());
        assert_eq!(
            build_postgres(&parts(&host)),
            "postgres://app:p%40ss%3Aw%2Frd%2541%20%C3%A9@db:5432/my%20db?application_name=a%20b%2Bc&sslpassword=k%2Ay"
        );
        let redacted = build_postgres(&UrlParts {
            redact: true,
            ..parts(&host)
        });
        assert_eq!(
            redacted,
            "postgres://app:***@db:5432/my%20db?application_name=a%20b%2Bc&sslpassword=***"
        );
        let v6 = Host::Ip("::1".parse().expect("ip"));
        assert!(build_postgres(&parts(&v6)).contains("@[::1]:5432/"));
        let socket = Host::Socket("/run/pg sock".into());
        assert_eq!(
            build_postgres(&parts(&socket)),
            "postgres://app:p%40ss%3Aw%2Frd%2541%20%C3%A9@/my%20db?host=%2Frun%2Fpg%20sock&port=5432&application_name=a%20b%2Bc&sslpassword=k%2Ay"
        );
    }

    #[test]
    fn parses_what_it_builds() {
        for host in [
            Host::Name("db.example".into()),
            Host::Ip("10.0.0.1".parse().expect("ip")),
            Host::Ip("fe80::1".parse().expect("ip")),
            Host::Socket("/tmp/x y".into()),
        ] {
            let url = build_postgres(&parts(&host));
            let parsed = parse_postgres(&url).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.user.as_deref(), Some("app"));
            assert_eq!(
                parsed.password.as_ref().map(|p| p.expose_secret()),
                Some("p@ss:w/rd%41 é")
            );
            assert_eq!(parsed.host, Some(host));
            assert_eq!(parsed.port, Some(5432));
            assert_eq!(parsed.dbname.as_deref(), Some("my db"));
            assert_eq!(
                parsed.params,
                vec![
                    ("application_name".to_string(), "a b+c".to_string()),
                    ("sslpassword".to_string(), "k*y".to_string())
                ]
            );
        }
    }
}

#[cfg(test)]
mod scrub_tests {
    use super::*;

    fn url(password: &str) -> ConnectionUrl {
        let host = Host::Name("db".into());
        let parts = |redact| UrlParts {
            user: Some("postgres"),
            password: Some(password),
            host: &host,
            port: 5432,
            more_hosts: &[],
            dbname: Some("postgres"),
            params: vec![],
            redact,
        };
        ConnectionUrl::new(
            build_postgres(&parts(false)),
            build_postgres(&parts(true)),
            vec![SecretString::from(password.to_string())],
        )
    }

    #[test]
    fn a_password_equal_to_a_word_of_the_message_is_redacted_only_where_it_stands_alone() {
        let conn = url("postgres");
        let redacted = conn.redacted().to_string();
        assert_eq!(redacted, "postgres://postgres:***@db:5432/postgres");
        let message = format!(
            "cannot connect to {}: FATAL: password postgres rejected for user \"postgres\" \
             (postgresql)",
            conn.expose_secret()
        );
        assert_eq!(
            conn.scrub(&message),
            format!(
                "cannot connect to {redacted}: FATAL: password *** rejected for user \"***\" \
                 (postgresql)"
            )
        );
    }

    #[test]
    fn raw_and_encoded_passwords_are_redacted_in_their_contexts() {
        let conn = url("p@ss w0rd");
        let scrubbed = conn.scrub("password=p@ss w0rd; :p%40ss%20w0rd@ 'p@ss w0rd'");
        assert_eq!(scrubbed, "password=***; :***@ '***'");
        assert!(!conn.scrub(conn.expose_secret()).contains("p%40ss"));
    }
}
