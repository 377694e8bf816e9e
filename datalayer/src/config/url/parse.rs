//! Taking a `postgres://` URL apart the way libpq does, with errors that never quote it.

use percent_encoding::percent_decode_str;
use secrecy::SecretString;

use super::Host;

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
    /// Unknown parameters that came right after `password` or `sslpassword`: most likely the
    /// rest of a password whose `&` was not percent-encoded, so never to be quoted.
    pub after_secret: Vec<String>,
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
    let mut cut = false;
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
        let known = crate::config::postgres_limits::is_libpq_param(&key);
        if cut && !known {
            parsed.after_secret.push(key.clone());
        } else {
            cut = matches!(key.as_str(), "password" | "sslpassword");
        }
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
