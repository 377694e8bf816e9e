//! Reading the `DATABASE_*` variables into [`Settings`]: every problem found at once, each
//! naming its variable, and a display entry per setting with where it came from.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{
    Backend, DEFAULT_SQLITE_PATH, Entry, Host, Loaded, MigrationSettings, Origin, POSTGRES_ONLY,
    PREFIX, PoolSettings, PostgresSettings, REDACTED, SchemaCheck, Settings, SqliteSettings,
    SslMode, Target, URL_PARTS, UrlParams, VARIABLES, Vars, duration, password_file,
    postgres_limits, url, validate,
};
use crate::error::{ConfigErrors, ConfigProblem, Error};

mod replica;

/// The raw variables as envy reads them. Everything is a string, so that a parse failure is
/// reported by us, naming the variable, and never by envy echoing a value; secrets stay
/// secret-typed from the first moment.
#[derive(Deserialize, Default)]
struct Raw {
    url: Option<SecretString>,
    backend: Option<String>,
    path: Option<String>,
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    name: Option<String>,
    password: Option<SecretString>,
    password_file: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
    application_name: Option<String>,
    connect_timeout: Option<String>,
    pool_max_size: Option<String>,
    pool_min_idle: Option<String>,
    pool_timeout: Option<String>,
    pool_idle_timeout: Option<String>,
    pool_max_lifetime: Option<String>,
    pool_leak_threshold: Option<String>,
    echo: Option<String>,
    slow_query_threshold: Option<String>,
    connect_deadline: Option<String>,
    tcp_user_timeout: Option<String>,
    statement_timeout: Option<String>,
    lock_timeout: Option<String>,
    idle_in_transaction_timeout: Option<String>,
    migration_lock_timeout: Option<String>,
    migration_ddl_lock_timeout: Option<String>,
    pooler: Option<String>,
    migration_url: Option<SecretString>,
    replica_url: Option<SecretString>,
    replica_host: Option<String>,
    replica_port: Option<String>,
    replica_pool_max_size: Option<String>,
    replica_max_lag: Option<String>,
    replica_check_interval: Option<String>,
    allow_unknown_migrations: Option<String>,
    schema_check: Option<String>,
}

impl Vars {
    /// Validates the variables into [`Settings`], reporting every problem at once.
    pub fn load(&self) -> Result<Loaded, Error> {
        Loader::new(self).run()
    }
}

/// A value quoted for an error message: escaped, and cut short when long.
fn quote(value: &str) -> String {
    let shown: String = value.chars().take(64).collect();
    if shown.len() < value.len() {
        format!("{shown:?}…")
    } else {
        format!("{shown:?}")
    }
}

/// A parsed URL, by backend.
pub(super) enum UrlTarget {
    Postgres(url::ParsedUrl),
    Sqlite(String),
}

/// Why `path` cannot be the SQLite database, if it cannot. One plain path decides both the
/// database and its migration lock file, so forms that SQLite would read differently from the
/// file system are refused: an in-memory database (each pooled connection would get its own,
/// empty one), `file:` URIs, and query strings (`?mode=ro` would become part of a new file's
/// name).
fn sqlite_path_problem(path: &str) -> Option<&'static str> {
    if path.starts_with(":memory") || path == "memory:" || path.contains("mode=memory") {
        return Some(
            "is an in-memory database, which every pooled connection would see as its own empty \
             one; give a file path (on a RAM disk such as /dev/shm/app.sqlite3 for speed)",
        );
    }
    if path.starts_with("file:") {
        return Some("is a SQLite URI (file:...); give the file's plain path");
    }
    if path.contains('?') {
        return Some(
            "has a query string (?...), which SQLite would make part of a new file's name; give \
             the file's plain path",
        );
    }
    if Path::new(path).is_dir() {
        return Some(
            "names a directory; give the path of the SQLite file (it is created when missing)",
        );
    }
    None
}

/// Reads `DATABASE_URL`; the error never quotes it, except for a scheme it does not know.
pub(super) fn parse_url(text: &str) -> Result<UrlTarget, String> {
    let text = text.trim();
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        return url::parse_postgres(text).map(UrlTarget::Postgres);
    }
    if let Some(path) = text
        .strip_prefix("sqlite://")
        .or_else(|| text.strip_prefix("sqlite:"))
    {
        return if path.is_empty() {
            Err("names no SQLite file; write sqlite://path/to/file.sqlite3".to_string())
        } else {
            Ok(UrlTarget::Sqlite(path.to_string()))
        };
    }
    let accepted = "accepted: postgres://, postgresql://, sqlite://, or a SQLite file path";
    if let Some((scheme, _)) = text.split_once("://") {
        let plain = !scheme.is_empty()
            && scheme.len() <= 16
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        return Err(if plain {
            format!("the scheme {scheme}:// is not supported; {accepted}")
        } else {
            format!("has a scheme that is not supported; {accepted}")
        });
    }
    if text.contains('@') {
        return Err(format!(
            "looks like a connection string without a scheme; start it with postgres:// ({accepted})"
        ));
    }
    Ok(UrlTarget::Sqlite(text.to_string()))
}

struct Loader<'a> {
    vars: &'a Vars,
    problems: Vec<ConfigProblem>,
    warnings: Vec<String>,
    reported: BTreeSet<&'static str>,
    entries: Vec<Entry>,
}

impl<'a> Loader<'a> {
    fn new(vars: &'a Vars) -> Self {
        Loader {
            vars,
            problems: Vec::new(),
            warnings: Vec::new(),
            reported: BTreeSet::new(),
            entries: Vec::new(),
        }
    }

    /// Records a problem, once per variable (the first one found is the one to fix).
    fn problem(&mut self, variable: &'static str, message: impl Into<String>) {
        if self.reported.insert(variable) {
            self.problems.push(ConfigProblem {
                variable: variable.to_string(),
                message: message.into(),
            });
        }
    }

    fn origin(&self, variable: &str) -> Origin {
        self.vars.origin(variable).unwrap_or(Origin::Given)
    }

    fn entry(&mut self, variable: &'static str, value: impl Into<String>, origin: Origin) {
        self.entries.push(Entry {
            variable,
            value: value.into(),
            origin,
        });
    }

    fn run(mut self) -> Result<Loaded, Error> {
        let (raw, ignored) = self.read_raw();
        let url = raw.url.as_ref().and_then(|url| {
            parse_url(url.expose_secret())
                .map_err(|why| self.problem("DATABASE_URL", why))
                .ok()
        });
        if raw.url.is_some() {
            self.entry(
                "DATABASE_URL",
                "set (its parts are listed below)",
                self.origin("DATABASE_URL"),
            );
            for part in URL_PARTS {
                if self.vars.origin(part).is_some() {
                    self.problem(
                        part,
                        "cannot be combined with DATABASE_URL, which is the whole connection; \
                         unset one of them",
                    );
                }
            }
        }
        let backend = self.backend(&raw, url.as_ref());
        let target = match (backend, url) {
            (Backend::Sqlite, url) => {
                let path = match url {
                    Some(UrlTarget::Sqlite(path)) => Some(path),
                    _ => None,
                };
                Target::Sqlite(self.sqlite(&raw, path))
            }
            (Backend::Postgres, Some(UrlTarget::Postgres(parsed))) => {
                Target::Postgres(self.postgres(&raw, parsed, true))
            }
            (Backend::Postgres, _) => {
                Target::Postgres(self.postgres(&raw, url::ParsedUrl::default(), false))
            }
        };
        let pool = self.pool(&raw);
        let replica = self.replica(&raw, &target, &pool);
        let migrations = self.migrations(&raw, backend);
        if !self.problems.is_empty() {
            let order = |p: &ConfigProblem| VARIABLES.iter().position(|v| *v == p.variable);
            self.problems.sort_by_key(order);
            return Err(Error::Config(ConfigErrors(self.problems)));
        }
        Ok(Loaded {
            settings: Settings {
                target,
                pool,
                migrations,
                replica,
            },
            entries: self.entries,
            ignored,
            warnings: self
                .vars
                .warnings
                .iter()
                .cloned()
                .chain(self.warnings)
                .collect(),
        })
    }

    /// Hands the UTF-8, non-empty variables to envy; reports the others.
    fn read_raw(&mut self) -> (Raw, Vec<String>) {
        let mut pairs = Vec::new();
        let mut ignored = Vec::new();
        for (key, (value, _)) in &self.vars.map {
            let Some(variable) = VARIABLES.iter().copied().find(|v| v == key) else {
                ignored.push(key.clone());
                continue;
            };
            match value.to_str() {
                None => self.problem(
                    variable,
                    "is not valid UTF-8; datalayer reads only UTF-8 values",
                ),
                Some("") => self.problem(
                    variable,
                    "is set but empty; unset it to use the default, or give a value",
                ),
                Some(text) if variable != "DATABASE_PASSWORD" && text.trim().is_empty() => self
                    .problem(
                        variable,
                        "is only white space; unset it to use the default, or give a value",
                    ),
                Some(text) => pairs.push((key.clone(), text.to_string())),
            }
        }
        let raw = envy::prefixed(PREFIX)
            .from_iter::<_, Raw>(pairs)
            .unwrap_or_else(|_| {
                // Cannot happen with all-string fields; never echo what envy saw.
                self.problem("DATABASE_URL", "the DATABASE_* variables could not be read");
                Raw::default()
            });
        (raw, ignored)
    }

    fn backend(&mut self, raw: &Raw, url: Option<&UrlTarget>) -> Backend {
        let from_url = url.map(|u| match u {
            UrlTarget::Postgres(_) => Backend::Postgres,
            UrlTarget::Sqlite(_) => Backend::Sqlite,
        });
        let explicit = raw.backend.as_deref().and_then(|text| {
            match text.trim().to_ascii_lowercase().as_str() {
                "postgres" | "postgresql" => Some(Backend::Postgres),
                "sqlite" => Some(Backend::Sqlite),
                _ => {
                    self.problem(
                        "DATABASE_BACKEND",
                        format!(
                            "{} is not a backend; accepted: postgres, sqlite",
                            quote(text)
                        ),
                    );
                    None
                }
            }
        });
        let (backend, origin) = match (explicit, from_url) {
            (Some(explicit), Some(from_url)) if explicit != from_url => {
                self.problem(
                    "DATABASE_BACKEND",
                    format!(
                        "is {explicit} but DATABASE_URL is a {from_url} URL; unset \
                         DATABASE_BACKEND or change the URL"
                    ),
                );
                (from_url, Origin::Url)
            }
            (Some(explicit), _) => (explicit, self.origin("DATABASE_BACKEND")),
            (None, Some(from_url)) => (from_url, Origin::Url),
            (None, None) if raw.host.is_some() => (Backend::Postgres, Origin::Inferred),
            (None, None) => (Backend::Sqlite, Origin::Default),
        };
        self.entry("DATABASE_BACKEND", backend.to_string(), origin);
        backend
    }

    /// Why the backend is what it is, for messages about variables that do not apply.
    fn backend_reason(&self, backend: Backend) -> &'static str {
        match (
            self.vars.origin("DATABASE_BACKEND"),
            self.vars.origin("DATABASE_URL"),
        ) {
            (_, Some(_)) => "as DATABASE_URL says",
            (Some(_), None) => "as DATABASE_BACKEND says",
            (None, None) if backend == Backend::Postgres => "because DATABASE_HOST is set",
            (None, None) => "the default when neither DATABASE_URL nor DATABASE_HOST is set",
        }
    }

    fn sqlite(&mut self, raw: &Raw, url_path: Option<String>) -> SqliteSettings {
        let reason = self.backend_reason(Backend::Sqlite);
        for variable in POSTGRES_ONLY {
            if self.vars.origin(variable).is_some() {
                self.problem(
                    variable,
                    format!(
                        "only applies to PostgreSQL, but the backend is sqlite ({reason}); \
                         unset it, or set DATABASE_HOST or DATABASE_BACKEND=postgres"
                    ),
                );
            }
        }
        let (path, origin) = match (url_path, &raw.path) {
            (Some(path), _) => (path, Origin::Url),
            (None, Some(path)) => (path.clone(), self.origin("DATABASE_PATH")),
            (None, None) => (DEFAULT_SQLITE_PATH.to_string(), Origin::Default),
        };
        let variable = if origin == Origin::Url {
            "DATABASE_URL"
        } else {
            "DATABASE_PATH"
        };
        if let Some(why) = sqlite_path_problem(&path) {
            self.problem(variable, why);
        }
        self.entry("DATABASE_PATH", path.clone(), origin);
        SqliteSettings {
            path: PathBuf::from(path),
        }
    }

    fn postgres(&mut self, raw: &Raw, mut url: url::ParsedUrl, from_url: bool) -> PostgresSettings {
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
            None => self.hosts("DATABASE_HOST", raw.host.as_deref(), localhost),
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
            "datalayer".to_string(),
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
        let tcp_user_timeout = self.postgres_millis(
            "DATABASE_TCP_USER_TIMEOUT",
            raw.tcp_user_timeout.as_deref(),
            Some(Duration::from_secs(15)),
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
                Ok(UrlTarget::Postgres(_)) => {}
                Ok(UrlTarget::Sqlite(_)) | Err(_) => self.problem(
                    "DATABASE_MIGRATION_URL",
                    "is not a postgres:// URL (it is not quoted: it may hold a password); give \
                     the direct URL of the same database",
                ),
            }
        }
        self.entry(
            "DATABASE_MIGRATION_URL",
            if migration_url.is_some() {
                "set (a secret)"
            } else {
                "(unset)"
            },
            self.origin("DATABASE_MIGRATION_URL"),
        );
        for (key, _) in &url.params {
            if !postgres_limits::is_libpq_param(key) {
                self.problem(
                    "DATABASE_URL",
                    format!(
                        "its parameter {} is not a libpq connection parameter; remove it",
                        quote(key)
                    ),
                );
            }
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

    /// A host list variable (`a,b`, as libpq's `host`): the first host and the others.
    fn hosts(
        &mut self,
        variable: &'static str,
        text: Option<&str>,
        default: Host,
    ) -> (Host, Vec<Host>) {
        let mut hosts = self.var(
            variable,
            text,
            vec![default],
            |text| {
                text.split(',')
                    .map(|h| Host::parse(h.trim()).map_err(str::to_string))
                    .collect::<Result<Vec<_>, _>>()
            },
            |hosts| {
                hosts
                    .iter()
                    .map(Host::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
        let first = hosts.remove(0);
        (first, hosts)
    }

    /// A port list variable (one for all hosts, or one per host): the first port and the
    /// others.
    fn ports(
        &mut self,
        variable: &'static str,
        text: Option<&str>,
        default: u16,
    ) -> (u16, Vec<u16>) {
        let mut ports = self.var(
            variable,
            text,
            vec![default],
            |text| {
                text.split(',')
                    .map(|p| {
                        url::parse_port(p).ok_or_else(|| "is not a port (1-65535)".to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()
            },
            |ports| {
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
        let first = ports.remove(0);
        (first, ports)
    }

    /// Pairs the hosts after the first with their ports: `port` for all, or one each from
    /// `more_ports`; another count is a problem of `port_variable`.
    fn pair_ports(
        &mut self,
        port_variable: &'static str,
        port: u16,
        more_hosts: Vec<Host>,
        more_ports: &[u16],
    ) -> Vec<(Host, u16)> {
        if !more_ports.is_empty() && more_ports.len() != more_hosts.len() {
            self.problem(
                port_variable,
                format!(
                    "gives {} ports for {} hosts; give one port for all, or one per host",
                    more_ports.len() + 1,
                    more_hosts.len() + 1
                ),
            );
        }
        more_hosts
            .into_iter()
            .enumerate()
            .map(|(i, other)| (other, more_ports.get(i).copied().unwrap_or(port)))
            .collect()
    }

    /// Several hosts may not include a socket directory; the entry of `host_variable` shows
    /// them all, in the order libpq tries them.
    fn check_several_hosts(
        &mut self,
        from: &'static str,
        host_variable: &'static str,
        host: &Host,
        port: u16,
        more_hosts: &[(Host, u16)],
    ) {
        if more_hosts.is_empty() {
            return;
        }
        if matches!(host, Host::Socket(_))
            || more_hosts.iter().any(|(h, _)| matches!(h, Host::Socket(_)))
        {
            self.problem(
                from,
                "lists several hosts with a socket directory among them; give TCP hosts \
                 (libpq tries them in order)",
            );
        }
        let all = std::iter::once(format!("{host}:{port}"))
            .chain(more_hosts.iter().map(|(h, p)| format!("{h}:{p}")))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.variable == host_variable)
        {
            entry.value = format!("{all} (tried in order)");
        }
    }

    /// A non-secret text part that the URL or a variable may give, else libpq's default.
    fn optional(
        &mut self,
        variable: &'static str,
        from_url: Option<String>,
        from_var: Option<String>,
    ) -> Option<String> {
        let (value, origin) = match (from_url, from_var) {
            (Some(value), _) => (Some(value), Origin::Url),
            (None, Some(value)) => (Some(value), self.origin(variable)),
            (None, None) => (None, Origin::Default),
        };
        self.entry(
            variable,
            value.clone().unwrap_or_else(|| "(unset)".into()),
            origin,
        );
        value
    }

    /// A variable parsed by `parse`, else `default`. A message from `parse` follows the quoted
    /// value: `DATABASE_PORT: "70000" is not a port (1-65535)`.
    fn var<T>(
        &mut self,
        variable: &'static str,
        text: Option<&str>,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
        show: impl Fn(&T) -> String,
    ) -> T {
        let (value, origin) = match text {
            None => (default, Origin::Default),
            Some(text) => match parse(text) {
                Ok(value) => (value, self.origin(variable)),
                Err(why) => {
                    self.problem(variable, format!("{} {why}", quote(text)));
                    (default, Origin::Default)
                }
            },
        };
        self.entry(variable, show(&value), origin);
        value
    }

    /// A setting that `DATABASE_URL` may carry as a query parameter or a variable may set, but
    /// not both. Messages quote the variable's value, never the URL's.
    #[allow(clippy::too_many_arguments)]
    fn url_or_var<T>(
        &mut self,
        url: &mut url::ParsedUrl,
        param: &str,
        variable: &'static str,
        from_var: Option<&str>,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
        show: impl Fn(&T) -> String,
    ) -> T {
        let position = url.params.iter().position(|(k, _)| k == param);
        let Some(from_url) = position.map(|i| url.params.remove(i).1) else {
            return self.var(variable, from_var, default, parse, show);
        };
        let (value, origin) = if from_var.is_some() {
            self.problem(
                variable,
                format!("DATABASE_URL also sets {param}; unset one of them"),
            );
            (default, Origin::Default)
        } else {
            match parse(&from_url) {
                Ok(value) => (value, Origin::Url),
                Err(why) => {
                    self.problem("DATABASE_URL", format!("its {param} parameter {why}"));
                    (default, Origin::Default)
                }
            }
        };
        self.entry(variable, show(&value), origin);
        value
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
            |value| value.map_or_else(|| "0 (disabled)".to_string(), duration::format),
        )
    }

    /// A duration where `0` disables.
    fn optional_duration(
        &mut self,
        variable: &'static str,
        text: Option<&str>,
        default: Option<Duration>,
    ) -> Option<Duration> {
        self.var(variable, text, default, optional_duration, |value| {
            value.map_or_else(|| "0 (disabled)".to_string(), duration::format)
        })
    }

    fn pool(&mut self, raw: &Raw) -> PoolSettings {
        let defaults = PoolSettings::default();
        let max_size = self.var(
            "DATABASE_POOL_MAX_SIZE",
            raw.pool_max_size.as_deref(),
            defaults.max_size,
            pool_size,
            u32::to_string,
        );
        let min_idle = self.var(
            "DATABASE_POOL_MIN_IDLE",
            raw.pool_min_idle.as_deref(),
            None,
            |text| {
                text.trim()
                    .parse::<u32>()
                    .map(Some)
                    .map_err(|_| "is not a whole number of connections (0 or more)".to_string())
            },
            |n| n.map_or_else(|| "(pool default: max size)".to_string(), |n| n.to_string()),
        );
        if let Some(n) = min_idle.filter(|n| *n > max_size)
            && !self.reported.contains("DATABASE_POOL_MAX_SIZE")
        {
            self.problem(
                "DATABASE_POOL_MIN_IDLE",
                validate::min_idle_rule(n, max_size),
            );
        }
        let timeout = self.var(
            "DATABASE_POOL_TIMEOUT",
            raw.pool_timeout.as_deref(),
            defaults.timeout,
            |text| nonzero_duration(text, validate::POOL_TIMEOUT_RULE),
            |d| duration::format(*d),
        );
        let idle_timeout = self.optional_duration(
            "DATABASE_POOL_IDLE_TIMEOUT",
            raw.pool_idle_timeout.as_deref(),
            defaults.idle_timeout,
        );
        let max_lifetime = self.optional_duration(
            "DATABASE_POOL_MAX_LIFETIME",
            raw.pool_max_lifetime.as_deref(),
            defaults.max_lifetime,
        );
        let leak_threshold = self.optional_duration(
            "DATABASE_POOL_LEAK_THRESHOLD",
            raw.pool_leak_threshold.as_deref(),
            defaults.leak_threshold,
        );
        let connect_deadline = self.var(
            "DATABASE_CONNECT_DEADLINE",
            raw.connect_deadline.as_deref(),
            defaults.connect_deadline,
            |text| {
                duration::parse(text).ok_or_else(|| {
                    format!("is not a duration; {} (0 tries once)", duration::ACCEPTED)
                })
            },
            |d| duration::format(*d),
        );
        let echo = self.var(
            "DATABASE_ECHO",
            raw.echo.as_deref(),
            defaults.echo,
            parse_bool,
            bool::to_string,
        );
        let slow_query_threshold = self.optional_duration(
            "DATABASE_SLOW_QUERY_THRESHOLD",
            raw.slow_query_threshold.as_deref(),
            defaults.slow_query_threshold,
        );
        PoolSettings {
            max_size,
            min_idle,
            timeout,
            idle_timeout,
            max_lifetime,
            leak_threshold,
            connect_deadline,
            echo,
            slow_query_threshold,
        }
    }
}

impl Loader<'_> {
    fn migrations(&mut self, raw: &Raw, backend: Backend) -> MigrationSettings {
        let defaults = MigrationSettings::default();
        let lock_timeout = self.var(
            "DATABASE_MIGRATION_LOCK_TIMEOUT",
            raw.migration_lock_timeout.as_deref(),
            defaults.lock_timeout,
            |text| {
                nonzero_duration(
                    text,
                    "would give up on the migration lock at once; give a wait such as 60s",
                )
            },
            |d| duration::format(*d),
        );
        // PostgreSQL only: on SQLite the variable is reported as not applying.
        let ddl_lock_timeout = match backend {
            Backend::Sqlite => defaults.ddl_lock_timeout,
            Backend::Postgres => self.var(
                "DATABASE_MIGRATION_DDL_LOCK_TIMEOUT",
                raw.migration_ddl_lock_timeout.as_deref(),
                defaults.ddl_lock_timeout,
                |text| {
                    nonzero_duration(
                        text,
                        "would let DDL queue behind any transaction; give a limit such as 5s",
                    )
                    .and_then(|d| postgres_limits::millis(Some(d)).map(|_| d))
                },
                |d| duration::format(*d),
            ),
        };
        let allow_unknown = self.var(
            "DATABASE_ALLOW_UNKNOWN_MIGRATIONS",
            raw.allow_unknown_migrations.as_deref(),
            defaults.allow_unknown,
            parse_bool,
            bool::to_string,
        );
        let schema_check = self.var(
            "DATABASE_SCHEMA_CHECK",
            raw.schema_check.as_deref(),
            defaults.schema_check,
            |text| match text.trim().to_ascii_lowercase().as_str() {
                "warn" => Ok(SchemaCheck::Warn),
                "strict" => Ok(SchemaCheck::Strict),
                "off" => Ok(SchemaCheck::Off),
                _ => Err("is not a schema check mode; accepted: warn, strict, off".into()),
            },
            |mode| mode.as_str().to_string(),
        );
        MigrationSettings {
            lock_timeout,
            ddl_lock_timeout,
            allow_unknown,
            schema_check,
        }
    }
}

/// `true`/`false` and the usual spellings.
/// A pool size: a whole number of at least 1.
fn pool_size(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(validate::POOL_SIZE_RULE.to_string()),
    }
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("is not a boolean; accepted: true, false (or 1, 0, yes, no, on, off)".into()),
    }
}

/// A duration that must be more than zero; `zero` says why not.
fn nonzero_duration(text: &str, zero: &str) -> Result<Duration, String> {
    match duration::parse(text) {
        Some(Duration::ZERO) => Err(zero.to_string()),
        Some(d) => Ok(d),
        None => Err(format!("is not a duration; {}", duration::ACCEPTED)),
    }
}

/// A duration where `0` means disabled (`None`).
fn optional_duration(text: &str) -> Result<Option<Duration>, String> {
    match duration::parse(text) {
        Some(d) => Ok((!d.is_zero()).then_some(d)),
        None => Err(format!(
            "is not a duration; {} (0 disables)",
            duration::ACCEPTED
        )),
    }
}
