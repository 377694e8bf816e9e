//! Reading the PostgreSQL connection's variables (`DATABASE_URL`'s parts, `DATABASE_HOST`,
//! `_PORT`, `_USER`, `_PASSWORD`/`_PASSWORD_FILE`, `_NAME`, TLS, timeouts, the pooler mode and
//! the migration URL) into [`PostgresSettings`], every problem found at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{
    Loader, Raw, UrlTarget, nonzero_duration, optional_duration, parse_url, show_optional_duration,
};
use crate::config::{
    Backend, Host, Origin, PostgresSettings, REDACTED, SslMode, UrlParams, duration, password_file,
    postgres_limits, url,
};

impl Loader<'_> {
    pub(super) fn postgres(
        &mut self,
        raw: &Raw,
        mut url: url::ParsedUrl,
        from_url: bool,
    ) -> PostgresSettings {
        if raw.path.is_some() && !from_url {
            let reason = self.backend_reason(Backend::Postgres);
            self.problem(
                "DATABASE_PATH",
                format!("only applies to SQLite, but the backend is postgres ({reason}); unset it"),
            );
        }
        let localhost = Host::Name("localhost".into());
        let (host, var_more_hosts) = match url.host.take() {
            Some(host) => {
                self.entry("DATABASE_HOST", host.to_string(), Origin::Url);
                (host, Vec::new())
            }
            None => self.hosts("DATABASE_HOST", raw.host.as_deref(), vec![localhost]),
        };
        let (port, var_more_ports) = match url.port {
            Some(port) => {
                self.entry("DATABASE_PORT", port.to_string(), Origin::Url);
                (port, Vec::new())
            }
            None => self.ports("DATABASE_PORT", raw.port.as_deref(), 5432),
        };
        let from_vars = self.pair_ports("DATABASE_PORT", port, var_more_hosts, &var_more_ports);
        url.more_hosts
            .extend(from_vars.into_iter().map(|(h, p)| (h, Some(p))));
        let several_from =
            if url.more_hosts.is_empty() || self.vars.origin("DATABASE_HOST").is_none() {
                "DATABASE_URL"
            } else {
                "DATABASE_HOST"
            };
        let more_hosts: Vec<(Host, u16)> = std::mem::take(&mut url.more_hosts)
            .into_iter()
            .map(|(host, other)| (host, other.unwrap_or(port)))
            .collect();
        self.check_several_hosts(several_from, "DATABASE_HOST", &host, port, &more_hosts);
        let user = self.optional("DATABASE_USER", url.user.take(), raw.user.clone());
        let database = self.optional("DATABASE_NAME", url.dbname.take(), raw.name.clone());
        for (variable, value) in [("DATABASE_USER", &user), ("DATABASE_NAME", &database)] {
            if let Some(Err(why)) = value.as_deref().map(postgres_limits::name) {
                self.problem(variable, why);
            }
        }

        let password = match (url.password.take(), &raw.password) {
            (Some(_), Some(_)) => {
                self.problem(
                    "DATABASE_PASSWORD",
                    "DATABASE_URL already carries a password; unset one of them",
                );
                None
            }
            (Some(password), None) if password.expose_secret().contains('\0') => {
                self.problem(
                    "DATABASE_URL",
                    "its password holds a NUL byte (%00), which no connection can send",
                );
                None
            }
            (Some(password), None) => Some((password, Origin::Url)),
            (None, Some(password)) => Some((password.clone(), self.origin("DATABASE_PASSWORD"))),
            (None, None) => None,
        };
        let password_file = raw.password_file.as_deref().map(PathBuf::from);
        let password = match (&password_file, password) {
            (None, password) => password,
            (Some(_), Some(_)) => {
                self.problem(
                    "DATABASE_PASSWORD_FILE",
                    "cannot be combined with DATABASE_PASSWORD or a password in DATABASE_URL; \
                     unset one of them",
                );
                None
            }
            (Some(path), None) => match password_file::read(path) {
                Ok(secret) => {
                    if let Some(warning) = password_file::exposed(path) {
                        self.warnings.push(warning);
                    }
                    Some((secret, self.origin("DATABASE_PASSWORD_FILE")))
                }
                Err(why) => {
                    self.problem(
                        "DATABASE_PASSWORD_FILE",
                        format!("{}: {why}", path.display()),
                    );
                    None
                }
            },
        };
        match (&password, &password_file) {
            (Some(_), Some(_)) => self.entry(
                "DATABASE_PASSWORD",
                format!("{REDACTED} (from DATABASE_PASSWORD_FILE, read for each connection)"),
                self.origin("DATABASE_PASSWORD_FILE"),
            ),
            (Some((_, origin)), None) => self.entry("DATABASE_PASSWORD", REDACTED, *origin),
            (None, _) => self.entry("DATABASE_PASSWORD", "(unset)", Origin::Default),
        }
        match &password_file {
            Some(path) => self.entry(
                "DATABASE_PASSWORD_FILE",
                path.display().to_string(),
                self.origin("DATABASE_PASSWORD_FILE"),
            ),
            None => self.entry("DATABASE_PASSWORD_FILE", "(unset)", Origin::Default),
        }

        let ssl_mode = self.url_or_var(
            &mut url,
            "sslmode",
            "DATABASE_SSLMODE",
            raw.sslmode.as_deref(),
            SslMode::Prefer,
            |text| {
                SslMode::parse(text.trim()).ok_or_else(|| {
                    "is not an sslmode; accepted: disable, allow, prefer, require, verify-ca, \
                     verify-full"
                        .to_string()
                })
            },
            |mode| mode.as_str().to_string(),
        );
        let ssl_root_cert = self.url_or_var(
            &mut url,
            "sslrootcert",
            "DATABASE_SSLROOTCERT",
            raw.sslrootcert.as_deref(),
            None,
            |text| {
                if Path::new(text).is_file() {
                    Ok(Some(PathBuf::from(text)))
                } else {
                    Err("is not a file; give the path of the CA certificate".to_string())
                }
            },
            |cert| {
                cert.as_ref()
                    .map_or("(unset)".into(), |p| p.display().to_string())
            },
        );
        let mut client_file =
            |param: &str, variable: &'static str, text: Option<&str>, what: &'static str| {
                self.url_or_var(
                    &mut url,
                    param,
                    variable,
                    text,
                    None,
                    |text| {
                        if Path::new(text).is_file() {
                            Ok(Some(PathBuf::from(text)))
                        } else {
                            Err(format!("is not a file; give the path of the {what}"))
                        }
                    },
                    |file: &Option<PathBuf>| {
                        file.as_ref()
                            .map_or("(unset)".into(), |p| p.display().to_string())
                    },
                )
            };
        let ssl_cert = client_file(
            "sslcert",
            "DATABASE_SSLCERT",
            raw.sslcert.as_deref(),
            "client certificate",
        );
        let ssl_key = client_file(
            "sslkey",
            "DATABASE_SSLKEY",
            raw.sslkey.as_deref(),
            "client certificate's private key",
        );
        if ssl_cert.is_some() != ssl_key.is_some() {
            let (variable, other) = if ssl_cert.is_some() {
                ("DATABASE_SSLKEY", "DATABASE_SSLCERT")
            } else {
                ("DATABASE_SSLCERT", "DATABASE_SSLKEY")
            };
            self.problem(
                variable,
                format!("is needed with {other}; give both or neither"),
            );
        }
        let application_name = self.url_or_var(
            &mut url,
            "application_name",
            "DATABASE_APPLICATION_NAME",
            raw.application_name.as_deref(),
            default_application_name(),
            |text| Ok(text.to_string()),
            Clone::clone,
        );
        let connect_timeout = self.url_or_var(
            &mut url,
            "connect_timeout",
            "DATABASE_CONNECT_TIMEOUT",
            raw.connect_timeout.as_deref(),
            Duration::from_secs(10),
            |text| {
                nonzero_duration(text, "would wait forever; give at least 1s")
                    .and_then(postgres_limits::seconds)
            },
            |d| duration::format(*d),
        );
        // The URL's tcp_user_timeout is the setting (libpq's milliseconds), as its
        // connect_timeout is: it may not silently win over DATABASE_TCP_USER_TIMEOUT.
        for (key, value) in &mut url.params {
            if key == "tcp_user_timeout"
                && !value.is_empty()
                && value.bytes().all(|b| b.is_ascii_digit())
            {
                value.push_str("ms");
            }
        }
        let tcp_user_timeout = self.url_or_var(
            &mut url,
            "tcp_user_timeout",
            "DATABASE_TCP_USER_TIMEOUT",
            raw.tcp_user_timeout.as_deref(),
            Some(Duration::from_secs(15)),
            |text| optional_duration(text).and_then(postgres_limits::millis),
            show_optional_duration,
        );
        let statement_timeout = self.postgres_millis(
            "DATABASE_STATEMENT_TIMEOUT",
            raw.statement_timeout.as_deref(),
            None,
        );
        let lock_timeout =
            self.postgres_millis("DATABASE_LOCK_TIMEOUT", raw.lock_timeout.as_deref(), None);
        let idle_in_transaction_timeout = self.postgres_millis(
            "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
            raw.idle_in_transaction_timeout.as_deref(),
            None,
        );
        let transaction_pooler = self.var(
            "DATABASE_POOLER",
            raw.pooler.as_deref(),
            false,
            |text| match text.trim() {
                "none" => Ok(false),
                "transaction" => Ok(true),
                _ => Err("is not a pooler mode; accepted: none, transaction".to_string()),
            },
            |on| if *on { "transaction" } else { "none" }.to_string(),
        );
        if transaction_pooler {
            for (variable, set) in [
                ("DATABASE_STATEMENT_TIMEOUT", statement_timeout.is_some()),
                ("DATABASE_LOCK_TIMEOUT", lock_timeout.is_some()),
                (
                    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
                    idle_in_transaction_timeout.is_some(),
                ),
            ] {
                if set {
                    self.problem(
                        variable,
                        "is a per-session setting, which a transaction pooler \
                         (DATABASE_POOLER=transaction) does not keep: set it on the role instead \
                         (ALTER ROLE ... SET ...), or unset it",
                    );
                }
            }
        }
        let migration_url = raw.migration_url.clone();
        if let Some(migration) = &migration_url {
            match parse_url(migration.expose_secret()) {
                Ok(UrlTarget::Postgres(parsed)) => {
                    let hosts = if parsed.host.is_some() {
                        1 + parsed.more_hosts.len()
                    } else {
                        1 + more_hosts.len()
                    };
                    let ours = postgres_limits::set_by_datalayer(tcp_user_timeout);
                    for problem in postgres_limits::param_problems(
                        &parsed.params,
                        &parsed.after_secret,
                        hosts,
                        &ours,
                    ) {
                        self.problem("DATABASE_MIGRATION_URL", problem);
                    }
                    let same_place = parsed.host.as_ref().unwrap_or(&host) == &host
                        && parsed.port.unwrap_or(port) == port;
                    if transaction_pooler && same_place {
                        self.problem(
                            "DATABASE_MIGRATION_URL",
                            "names the host and port of DATABASE_URL, the transaction pooler; \
                             give the database server's own host and port (migrations need a \
                             session of their own)",
                        );
                    }
                }
                Ok(UrlTarget::Sqlite(_)) | Err(_) => self.problem(
                    "DATABASE_MIGRATION_URL",
                    "is not a postgres:// URL (it is not quoted: it may hold a password); give \
                     the direct URL of the same database",
                ),
            }
        }
        if migration_url.is_some() {
            self.entry(
                "DATABASE_MIGRATION_URL",
                "set (a secret)",
                self.origin("DATABASE_MIGRATION_URL"),
            );
        } else {
            self.entry("DATABASE_MIGRATION_URL", "(unset)", Origin::Default);
        }
        let ours = postgres_limits::set_by_datalayer(tcp_user_timeout);
        for problem in postgres_limits::param_problems(
            &url.params,
            &url.after_secret,
            1 + more_hosts.len(),
            &ours,
        ) {
            self.problem("DATABASE_URL", problem);
        }
        PostgresSettings {
            host,
            port,
            more_hosts,
            user,
            password: password.map(|(p, _)| p),
            password_file,
            database,
            ssl_mode,
            ssl_root_cert,
            ssl_cert,
            ssl_key,
            application_name,
            connect_timeout,
            tcp_user_timeout,
            statement_timeout,
            lock_timeout,
            idle_in_transaction_timeout,
            params: UrlParams(url.params),
            transaction_pooler,
            migration_url,
        }
    }

    /// A duration where `0` disables, that PostgreSQL takes in milliseconds.
    fn postgres_millis(
        &mut self,
        variable: &'static str,
        text: Option<&str>,
        default: Option<Duration>,
    ) -> Option<Duration> {
        self.var(
            variable,
            text,
            default,
            |text| optional_duration(text).and_then(postgres_limits::millis),
            show_optional_duration,
        )
    }
}

/// `DATABASE_APPLICATION_NAME`'s default: the running program's name (an application's binary
/// is usually named for its crate, as its migration set is), without the hash cargo gives test
/// binaries; `datalayer` when the program has no usable name. PostgreSQL keeps 63 bytes of
/// printable ASCII.
pub(crate) fn default_application_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| application_name_of(&stem))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "datalayer".to_string())
}

fn application_name_of(stem: &str) -> String {
    let name = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name
        }
        _ => stem,
    };
    name.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(63)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::application_name_of;

    #[test]
    fn the_default_application_name_is_the_programs() {
        assert_eq!(application_name_of("todo-app"), "todo-app");
        assert_eq!(application_name_of("todos-0123456789abcdef"), "todos");
        assert_eq!(application_name_of("billing-api"), "billing-api");
        assert_eq!(application_name_of("caf\u{e9}"), "caf");
        assert_eq!(application_name_of(&"x".repeat(100)).len(), 63);
    }
}
