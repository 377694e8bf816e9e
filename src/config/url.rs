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

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};

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

/// A PostgreSQL URL taken apart. Values are percent-decoded.
#[derive(Default)]
pub(crate) struct ParsedUrl {
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub host: Option<Host>,
    pub port: Option<u16>,
    /// Further `host:port`s of a multi-host URL (`postgres://a:5432,b:5433/db`), in order.
    pub more_hosts: Vec<(Host, Option<u16>)>,
    pub dbname: Option<String>,
    /// Query parameters other than `host`, `port`, `user`, `password` and `dbname`, in order.
    pub params: Vec<(String, String)>,
}

/// The hint every URL syntax error carries: an unescaped password is the usual cause.
const ESCAPE_HINT: &str = "characters such as @ : / ? # % in the user name, password or database \
                           name must be percent-encoded";

/// Takes a `postgres://` or `postgresql://` URL apart as libpq does (a single host).
///
/// Errors say which part is wrong but never quote the URL, which may hold a password.
pub(crate) fn parse_postgres(url: &str) -> Result<ParsedUrl, String> {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
        .ok_or_else(|| "does not start with postgres:// or postgresql://".to_string())?;
    let mut parsed = ParsedUrl::default();

    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let hostport = match authority.split_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            let user = decode(user, "user name")?;
            parsed.user = (!user.is_empty()).then_some(user);
            if let Some(password) = password {
                parsed.password = Some(SecretString::from(decode(password, "password")?));
            }
            hostport
        }
        None => authority,
    };
    // Several hosts (libpq tries them in order; with target_session_attrs=read-write it
    // keeps the one that accepts writes, which is how a failover is followed).
    let mut hostports = hostport.split(',');
    let hostport = hostports.next().unwrap_or_default();
    for other in hostports {
        let (host, port) = split_host_port(other)?;
        if host.is_empty() {
            return Err(format!("lists an empty host among several ({ESCAPE_HINT})"));
        }
        let host = decode(host, "host")?;
        let host = Host::parse(&host).map_err(|why| format!("a host {why} ({ESCAPE_HINT})"))?;
        let port = port
            .map(|p| {
                parse_port(p).ok_or_else(|| {
                    format!("a port is not a number from 1 to 65535 ({ESCAPE_HINT})")
                })
            })
            .transpose()?;
        parsed.more_hosts.push((host, port));
    }
    let (host, port) = split_host_port(hostport)?;
    if !host.is_empty() {
        let host = decode(host, "host")?;
        parsed.host =
            Some(Host::parse(&host).map_err(|why| format!("the host {why} ({ESCAPE_HINT})"))?);
    }
    if let Some(port) = port {
        parsed.port =
            Some(parse_port(port).ok_or_else(|| {
                format!("the port is not a number from 1 to 65535 ({ESCAPE_HINT})")
            })?);
    }

    let (path, query) = match after.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (after, None),
    };
    let dbname = decode(path.strip_prefix('/').unwrap_or(path), "database name")?;
    parsed.dbname = (!dbname.is_empty()).then_some(dbname);

    // libpq takes the last of two values given for one setting: refuse the URL instead, so
    // that what it means does not depend on the order of its parts.
    let mut given: Vec<String> = [
        ("user", parsed.user.is_some()),
        ("password", parsed.password.is_some()),
        ("host", parsed.host.is_some()),
        ("port", parsed.port.is_some()),
        ("dbname", parsed.dbname.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(key, _)| key.to_string())
    .collect();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            return Err("has a query parameter without '=' (write key=value)".to_string());
        };
        let key = decode(key, "query")?;
        let value = decode(value, "query")?;
        if given.contains(&key) {
            let key = key.escape_debug().to_string();
            return Err(format!(
                "gives {key} twice (in the host, user or database part and as ?{key}=, or as \
                 two ?{key}= parameters); give it once"
            ));
        }
        given.push(key.clone());
        match key.as_str() {
            "host" => {
                parsed.host =
                    Some(Host::parse(&value).map_err(|why| format!("the host parameter {why}"))?)
            }
            "port" => {
                parsed.port = Some(parse_port(&value).ok_or_else(|| {
                    "the port parameter is not a number from 1 to 65535".to_string()
                })?)
            }
            "user" => parsed.user = Some(value),
            "password" => parsed.password = Some(SecretString::from(value)),
            "dbname" => parsed.dbname = Some(value),
            _ => parsed.params.push((key, value)),
        }
    }
    Ok(parsed)
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(bracketed) = hostport.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return Err(format!(
                "has an IPv6 host without its closing ] ({ESCAPE_HINT})"
            ));
        };
        return match after {
            "" => Ok((ip, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((ip, Some(port))),
                None => Err(format!(
                    "has text after the IPv6 host's closing ] ({ESCAPE_HINT})"
                )),
            },
        };
    }
    Ok(match hostport.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (hostport, None),
    })
}

/// A TCP port, 1 to 65535.
pub(crate) fn parse_port(text: &str) -> Option<u16> {
    let text = text.trim();
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Percent-decodes one URL component as libpq does: `%` must start a two-digit hex escape, and
/// `%00` is refused. `+` is not a space.
fn decode(text: &str, what: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let escape = bytes.get(i + 1..i + 3);
            let valid = escape.is_some_and(|e| e.iter().all(u8::is_ascii_hexdigit));
            if !valid {
                return Err(format!(
                    "the {what} has a % that does not start a %XX escape (write % as %25)"
                ));
            }
            if escape == Some(b"00") {
                return Err(format!("the {what} contains %00, a NUL byte"));
            }
        }
    }
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("the {what} is not valid UTF-8 once percent-decoded"))
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

    #[test]
    fn parses_libpq_forms() {
        let p = parse_postgres("postgresql://u@/db?host=/var/run/postgresql").expect("socket");
        assert_eq!(p.host, Some(Host::Socket("/var/run/postgresql".into())));
        let p = parse_postgres("postgres://%2Ftmp/db").expect("encoded socket host");
        assert_eq!(p.host, Some(Host::Socket("/tmp".into())));
        let p = parse_postgres("postgres://").expect("empty");
        assert!(p.host.is_none() && p.user.is_none() && p.dbname.is_none());
        let p = parse_postgres("postgres://h?sslmode=require&options=-c%20x%3Dy").expect("params");
        assert_eq!(p.params[1], ("options".to_string(), "-c x=y".to_string()));
    }

    #[test]
    fn errors_never_quote_the_url() {
        let secret = "hunter2";
        for url in [
            "postgres://u:hunter2@h:hunter2/db",
            "postgres://u:hunter2@h1,/db",
            "postgres://u:hun@ter2@h/db",
            "postgres://u:hunter2%zz@h/db",
            "postgres://u:hunter2@[::1/db",
            "postgres://u:hunter2@h/db?hunter2",
            "postgres://u:hunter2%00@h/db",
            "postgres://u:hunter2%ff@h/db",
        ] {
            let err = parse_postgres(url)
                .err()
                .unwrap_or_else(|| panic!("{url} parsed"));
            assert!(!err.contains(secret) && !err.contains("ter2"), "{err}");
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
