//! Reading the `DATABASE_*` variables into [`Settings`]: every problem found at once, each
//! naming its variable, and a display entry per setting with where it came from.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{
    Backend, DEFAULT_SQLITE_PATH, Entry, Loaded, Origin, POSTGRES_ONLY, PREFIX, Settings,
    SqliteSettings, Target, URL_PARTS, VARIABLES, Vars, duration, url, validate,
};
use crate::error::{ConfigErrors, ConfigProblem, Error};

mod hosts;
mod migrations;
mod pool;
mod postgres;
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
pub(super) fn quote(value: &str) -> String {
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

    /// A duration where `0` disables.
    fn optional_duration(
        &mut self,
        variable: &'static str,
        text: Option<&str>,
        default: Option<Duration>,
    ) -> Option<Duration> {
        self.var(
            variable,
            text,
            default,
            optional_duration,
            show_optional_duration,
        )
    }
}

/// A pool size: a whole number from 1 to [`PoolSettings::MAX_SIZE`](super::PoolSettings::MAX_SIZE).
fn pool_size(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=super::PoolSettings::MAX_SIZE).contains(&n) => Ok(n),
        _ => Err(validate::POOL_SIZE_RULE.to_string()),
    }
}

/// `true`/`false` and the usual spellings.
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

/// How a duration where `0` disables is shown: `0 (disabled)`, else the duration.
fn show_optional_duration(value: &Option<Duration>) -> String {
    value.map_or_else(|| "0 (disabled)".to_string(), duration::format)
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
