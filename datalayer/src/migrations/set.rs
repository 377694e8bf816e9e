//! What a [`Migrator`] runs: per backend, a set of migrations in Diesel's folder layout
//! (`<version>_<name>/up.sql`, `down.sql`, optional `metadata.toml`), each with the SHA-256 of
//! its `up.sql` for the ledger, and the committed schema fingerprint when there is one.
//!
//! [`Migrator`]: super::Migrator

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::MigrationError;

/// The committed fingerprint's file name inside a migrations folder.
pub(crate) const FINGERPRINT_FILE: &str = "schema.fingerprint";

/// One migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The folder name, `<version>_<name>`.
    pub name: String,
    /// Diesel's version: the part before the first `_`, without dashes (`20261125000001`).
    pub version: String,
    /// SHA-256 of `up.sql`, lower-case hex.
    pub checksum: String,
    pub(crate) up: Cow<'static, str>,
    pub(crate) down: Option<Cow<'static, str>>,
    /// `false` when its `metadata.toml` says `run_in_transaction = false`.
    pub run_in_transaction: bool,
}

impl Script {
    fn new(
        name: &str,
        up: Cow<'static, str>,
        down: Option<Cow<'static, str>>,
        metadata: Option<&str>,
        origin: &str,
    ) -> Result<Script, MigrationError> {
        let version = version_of(name);
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MigrationError::Invalid {
                file: format!("{origin}/{name}"),
                reason: "a migration folder is named <version>_<name>, with a version of digits \
                         and dashes (2026-11-26-000001_create_todos)"
                    .into(),
            });
        }
        let run_in_transaction = match metadata {
            Some(text) => run_in_transaction(text).map_err(|reason| MigrationError::Invalid {
                file: format!("{origin}/{name}/metadata.toml"),
                reason,
            })?,
            None => true,
        };
        Ok(Script {
            name: name.to_string(),
            checksum: sha256_hex(&up),
            version,
            up,
            down,
            run_in_transaction,
        })
    }
}

/// Diesel's version of a migration folder name.
pub(crate) fn version_of(name: &str) -> String {
    name.split('_').next().unwrap_or(name).replace('-', "")
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `run_in_transaction` from a `metadata.toml` (Diesel's only key; absent means `true`).
fn run_in_transaction(text: &str) -> Result<bool, String> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some((key, value)) = line.split_once('=')
            && key.trim() == "run_in_transaction"
        {
            return match value.trim() {
                "true" => Ok(true),
                "false" => Ok(false),
                other => Err(format!(
                    "run_in_transaction must be true or false, found {other}"
                )),
            };
        }
    }
    Ok(true)
}

/// The migrations of one backend, oldest first.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    /// Where the files live, for messages (`migrations/postgres`).
    pub(crate) origin: String,
    pub(crate) scripts: Vec<Script>,
    /// The committed schema fingerprint these migrations produce, when there is one.
    pub(crate) fingerprint: Option<Cow<'static, str>>,
    /// Where the committed fingerprint lives (or would live): `<folder>/schema.fingerprint`.
    pub(crate) fingerprint_path: PathBuf,
}

/// The files a migration folder may hold, as Diesel names them.
const FILES: [&str; 3] = ["up.sql", "down.sql", "metadata.toml"];

/// A migration folder holds `up.sql` and may hold `down.sql` and `metadata.toml`, in those
/// very names (`embed_migrations!` applies the same rule at compile time): `Up.sql` was
/// skipped on Linux, so the migration was silently never applied.
fn check_files(folder: &Path) -> Result<(), MigrationError> {
    let invalid = |reason: String| MigrationError::Invalid {
        file: folder.display().to_string(),
        reason,
    };
    let names: Vec<String> = std::fs::read_dir(folder)
        .map_err(|e| invalid(format!("cannot read it: {e}")))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    for name in &names {
        if let Some(meant) = FILES
            .iter()
            .find(|file| file.eq_ignore_ascii_case(name) && *file != name)
        {
            return Err(invalid(format!(
                "rename {} to {meant} (Diesel and datalayer read migration files by their \
                 lower-case names)",
                name.escape_debug()
            )));
        }
    }
    if !names.iter().any(|name| name == "up.sql") {
        return Err(invalid(
            "a migration folder holds up.sql (and optionally down.sql and metadata.toml); this \
             one has none"
                .into(),
        ));
    }
    Ok(())
}

impl MigrationSet {
    /// The migrations in `dir` (one folder per migration holding `up.sql`, `down.sql` and
    /// optionally `metadata.toml`), read now, once: what runs is what was hashed. The
    /// fingerprint is `<dir>/schema.fingerprint` when that file exists.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<MigrationSet, MigrationError> {
        let dir = dir.as_ref();
        let origin = dir.display().to_string();
        let unreadable = |file: &Path, e: std::io::Error| MigrationError::Invalid {
            file: file.display().to_string(),
            reason: format!("cannot read it: {e}"),
        };
        let mut scripts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))? {
            let folder = entry.map_err(|e| unreadable(dir, e))?.path();
            let name = folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') || !folder.is_dir() {
                continue;
            }
            check_files(&folder)?;
            let up = folder.join("up.sql");
            let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| unreadable(path, e));
            let optional = |path: PathBuf| path.is_file().then(|| read(&path)).transpose();
            let down = optional(folder.join("down.sql"))?;
            let metadata = optional(folder.join("metadata.toml"))?;
            scripts.push(Script::new(
                &name,
                Cow::Owned(read(&up)?),
                down.map(Cow::Owned),
                metadata.as_deref(),
                &origin,
            )?);
        }
        let fingerprint_path = dir.join(FINGERPRINT_FILE);
        let fingerprint = std::fs::read_to_string(&fingerprint_path)
            .ok()
            .map(Cow::Owned);
        MigrationSet::new(origin, scripts, fingerprint, fingerprint_path)
    }

    fn new(
        origin: String,
        mut scripts: Vec<Script>,
        fingerprint: Option<Cow<'static, str>>,
        fingerprint_path: PathBuf,
    ) -> Result<MigrationSet, MigrationError> {
        scripts.sort_by(|a, b| a.version.cmp(&b.version).then(a.name.cmp(&b.name)));
        if let Some(pair) = scripts.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(MigrationError::Invalid {
                file: format!("{origin}/{}", pair[1].name),
                reason: format!("it has the same version as {}", pair[0].name),
            });
        }
        Ok(MigrationSet {
            origin,
            scripts,
            fingerprint,
            fingerprint_path,
        })
    }

    /// Built by [`embed_migrations!`](crate::embed_migrations) from what it embedded.
    pub(crate) fn embedded(
        set: &super::__private::Embedded,
    ) -> Result<MigrationSet, MigrationError> {
        let scripts = set
            .migrations
            .iter()
            .map(|m| {
                Script::new(
                    m.name,
                    Cow::Borrowed(m.up),
                    m.down.map(Cow::Borrowed),
                    m.metadata,
                    set.origin,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        MigrationSet::new(
            set.origin.to_string(),
            scripts,
            set.fingerprint.map(Cow::Borrowed),
            PathBuf::from(set.fingerprint_path),
        )
    }

    /// The migrations, oldest first.
    pub fn scripts(&self) -> &[Script] {
        &self.scripts
    }

    /// The committed schema fingerprint, if the application has one.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Where the committed fingerprint is read from at build time: `schema.fingerprint` in the
    /// migrations folder (Diesel's tools skip files there).
    pub fn fingerprint_path(&self) -> &Path {
        &self.fingerprint_path
    }

    /// The `up.sql` (or `down.sql`) file of a migration, for messages.
    pub(crate) fn file_of(&self, name: &str, file: &str) -> String {
        format!("{}/{name}/{file}", self.origin)
    }

    /// The migration `given` names: its folder name as `status` prints it
    /// (`2026-11-25-000001_create_users`, or diesel CLI 2.3's `2026-12-06-180955-0000_name`),
    /// the folder's version part as written, or Diesel's version (its digits).
    pub(crate) fn script(&self, given: &str) -> Option<&Script> {
        let given = given.trim();
        let version = version_of(given);
        self.scripts
            .iter()
            .find(|s| s.name == given || s.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::MigrationSet;

    #[test]
    fn a_migration_is_found_by_every_name_status_and_the_diesel_cli_give_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        for folder in [
            "2026-11-25-000001_create_users",
            "2026-12-06-180955-0000_create_bookmarks",
        ] {
            std::fs::create_dir(dir.path().join(folder)).expect("folder");
            std::fs::write(dir.path().join(folder).join("up.sql"), "SELECT 1;").expect("up");
        }
        let set = MigrationSet::from_dir(dir.path()).expect("valid set");
        let found = |given: &str| set.script(given).map(|s| s.name.as_str());
        for given in [
            "2026-12-06-180955-0000_create_bookmarks",
            "2026-12-06-180955-0000",
            "202612061809550000",
        ] {
            assert_eq!(
                found(given),
                Some("2026-12-06-180955-0000_create_bookmarks"),
                "{given}"
            );
        }
        for given in ["2026-11-25-000001_create_users", "20261125000001"] {
            assert_eq!(
                found(given),
                Some("2026-11-25-000001_create_users"),
                "{given}"
            );
        }
        assert_eq!(found("2026-11-25-000002_create_posts"), None);
        assert_eq!(found("create_users"), None);
    }
}
