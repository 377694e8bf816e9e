//! Where settings come from: the process environment, an explicit list of pairs, and a `.env`
//! file that the caller asks for by path. Library code never reads `.env` on its own.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{ErrorKind, Read};
use std::path::Path;

use crate::error::Error;

/// The prefix every datalayer variable carries.
pub const PREFIX: &str = "DATABASE_";

/// Where an effective setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The process environment.
    Environment,
    /// A `.env` file (only for variables the environment did not set).
    DotEnv,
    /// Pairs handed to [`Vars::from_pairs`] or [`crate::Settings::from_pairs`].
    Given,
    /// Taken from `DATABASE_URL`.
    Url,
    /// Worked out from other settings (the backend, from the URL scheme or the host).
    Inferred,
    /// The documented default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Environment => "environment",
            Origin::DotEnv => ".env",
            Origin::Given => "given",
            Origin::Url => "DATABASE_URL",
            Origin::Inferred => "inferred",
            Origin::Default => "default",
        })
    }
}

/// The `DATABASE_*` variables that settings are loaded from, each with its origin.
///
/// Build it from the process environment or from pairs, optionally layer a `.env` file under
/// it, then [`load`](Vars::load) it. `Debug` lists names and origins, never values.
#[derive(Clone, Default)]
pub struct Vars {
    pub(crate) map: BTreeMap<String, (OsString, Origin)>,
    /// What is worth a warning but not an error (a `.env` key given twice).
    pub(crate) warnings: Vec<String>,
}

impl Vars {
    /// The `DATABASE_*` variables of the process environment. Values that are not valid UTF-8
    /// are kept and reported by [`load`](Vars::load), instead of panicking as
    /// `std::env::vars()` would.
    pub fn from_process_env() -> Vars {
        let mut vars = Vars::default();
        for (key, value) in std::env::vars_os() {
            vars.insert(&key, value, Origin::Environment, true);
        }
        vars
    }

    /// Variables from an explicit list, for tests and embedding applications. Names without the
    /// `DATABASE_` prefix are ignored; when a name repeats, the last value wins.
    pub fn from_pairs<I, K, V>(pairs: I) -> Vars
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut vars = Vars::default();
        for (key, value) in pairs {
            vars.insert(key.as_ref(), value.as_ref().to_owned(), Origin::Given, true);
        }
        vars
    }

    /// Adds the `DATABASE_*` variables of the `.env` file at `path` that are not set already
    /// (the environment wins). A missing file is not an error. Other variables in the file are
    /// not read into the settings and not exported to the process.
    ///
    /// Values are read by dotenvy: `$NAME` in an unquoted or double-quoted value is substituted,
    /// so single-quote a password that contains `$`.
    pub fn with_dotenv(mut self, path: &Path) -> Result<Vars, Error> {
        let dotenv_error = |line: Option<usize>, reason: String| Error::DotEnv {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let content = match read_dotenv(path) {
            Ok(Some(content)) => content,
            Ok(None) => return Ok(self),
            Err(reason) => return Err(dotenv_error(None, reason)),
        };
        let content = content
            .strip_prefix('\u{feff}')
            .unwrap_or(&content)
            .to_string();
        self.warnings.extend(
            check_dotenv(&content).map_err(|(line, reason)| dotenv_error(Some(line), reason))?,
        );
        let iter = dotenvy::from_read_iter(content.as_bytes());
        let mut entries = Vec::new();
        for item in iter {
            match item {
                Ok((key, value)) => entries.push((key, value)),
                Err(dotenvy::Error::LineParse(entry, _)) => {
                    return Err(dotenv_error(
                        line_of(&content, &entry),
                        "cannot be parsed: write NAME=value, and quote a value that holds \
                         spaces, quotes or #"
                            .to_string(),
                    ));
                }
                Err(e) => return Err(dotenv_error(None, describe_dotenv_error(&e))),
            }
        }
        for (key, value) in entries {
            let key = key.trim_start_matches('\u{feff}');
            self.insert(
                OsStr::new(key),
                OsString::from(value),
                Origin::DotEnv,
                false,
            );
        }
        Ok(self)
    }

    /// The origin of a variable, if it is set.
    pub fn origin(&self, name: &str) -> Option<Origin> {
        self.map.get(name).map(|(_, origin)| *origin)
    }

    fn insert(&mut self, key: &OsStr, value: OsString, origin: Origin, overwrite: bool) {
        // A name that is not UTF-8 cannot be one of ours.
        let Some(key) = key.to_str() else { return };
        if !key.starts_with(PREFIX) {
            return;
        }
        if overwrite || !self.map.contains_key(key) {
            self.map.insert(key.to_string(), (value, origin));
        }
    }
}

impl fmt::Debug for Vars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.map.iter().map(|(k, (_, origin))| (k, origin)))
            .finish()
    }
}

/// Variables whose value is a secret, and that may only be copied into each other.
const SECRETS: &[&str] = &["DATABASE_PASSWORD", "DATABASE_URL"];

/// Checks a `.env` file's text before dotenvy substitutes `$NAME`s in it: a `DATABASE_*` value
/// that refers to a secret variable (other than one secret in another, such as the password in
/// `DATABASE_URL`) is refused, naming both, since the secret would be shown by `config` and
/// sent in clear (an application name is visible to every user of the server). Returns a
/// warning for each `DATABASE_*` key given twice (the first is used). Single-quoted values are
/// not substituted, so they are not checked.
fn check_dotenv(content: &str) -> Result<Vec<String>, (usize, String)> {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    let mut warnings = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if line.starts_with('#') || !key.starts_with(crate::config::PREFIX) {
            continue;
        }
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            warnings.push(format!(
                "{key} is set twice in .env (lines {first} and {}); the first one is used",
                i + 1
            ));
        } else {
            seen.push((key, i + 1));
        }
        let value = value.trim_start();
        if value.starts_with('\'') || SECRETS.contains(&key) {
            continue;
        }
        for secret in SECRETS {
            let braced = format!("${{{secret}}}");
            let bare = format!("${secret}");
            let refers = value.contains(&braced)
                || value.match_indices(&bare).any(|(at, _)| {
                    !value[at + bare.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                });
            if refers {
                return Err((
                    i + 1,
                    format!(
                        "{key} refers to {secret}: its secret would be copied into a setting \
                         that is shown and sent in clear; give {key} a value of its own"
                    ),
                ));
            }
        }
    }
    Ok(warnings)
}

/// The largest `.env` file read.
const DOTENV_LIMIT: u64 = 64 * 1024;

/// The content of the `.env` file at `path`, `None` when there is none. Only a regular file
/// (or a link to one) of at most [`DOTENV_LIMIT`] bytes is read: a FIFO would block forever and
/// a device such as `/dev/zero` never ends. The read is bounded too, in case the file changes
/// between the check and the read.
fn read_dotenv(path: &Path) -> Result<Option<String>, String> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    if !metadata.is_file() {
        return Err(
            "is not a regular file (a folder, FIFO or device); .env must be a plain \
                text file, or absent"
                .into(),
        );
    }
    let too_big = || {
        format!(
            "is larger than {} KiB; a .env file holds a few settings",
            DOTENV_LIMIT / 1024
        )
    };
    if metadata.len() > DOTENV_LIMIT {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(DOTENV_LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > DOTENV_LIMIT {
        return Err(too_big());
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| "is not valid UTF-8; write it as plain UTF-8 text".into())
}

/// dotenvy's own messages quote the offending line, which may hold a password; this one does not.
fn describe_dotenv_error(e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::Io(io) if io.kind() == ErrorKind::InvalidData => {
            "is not valid UTF-8".to_string()
        }
        dotenvy::Error::Io(io) => format!("cannot be read: {}", io.kind()),
        dotenvy::Error::LineParse(..) => "cannot be parsed".to_string(),
        _ => "cannot be read".to_string(),
    }
}

/// The 1-based line on which the failing entry starts, found by its first line.
fn line_of(content: &str, entry: &str) -> Option<usize> {
    let first = entry.lines().next().filter(|l| !l.trim().is_empty())?;
    content
        .lines()
        .position(|line| line.trim_end() == first.trim_end())
        .map(|i| i + 1)
}
