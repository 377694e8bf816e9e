//! Which migrations to run: datalayer's own (embedded at build time) or a folder read at run
//! time, each with the SHA-256 of every `up.sql` for the ledger.

use std::path::{Path, PathBuf};

use diesel::backend::Backend as DieselBackend;
use diesel::migration::{self, Migration, MigrationSource};
use diesel_migrations::{EmbeddedMigrations, FileBasedMigrations, embed_migrations};
use sha2::{Digest, Sha256};

use crate::config::Backend;
use crate::error::Error;

mod scripts {
    // `(folder name, up.sql)` per backend, written by build.rs.
    include!(concat!(env!("OUT_DIR"), "/migration_scripts.rs"));
}

const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// One migration as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The folder name, `<version>_<name>`.
    pub name: String,
    /// Diesel's version: the part before the first `_`, without dashes (`20261125000001`).
    pub version: String,
    /// SHA-256 of `up.sql`, lower-case hex.
    pub checksum: String,
}

impl Script {
    fn new(name: &str, up_sql: &str) -> Script {
        Script {
            name: name.to_string(),
            version: version_of(name),
            checksum: sha256_hex(up_sql),
        }
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

#[derive(Debug, Clone)]
enum Source {
    Embedded(fn() -> EmbeddedMigrations),
    Dir(PathBuf),
}

/// A set of migrations for one backend.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    /// Where the files live, for messages (`migrations/postgres`).
    pub(crate) origin: String,
    source: Source,
    pub(crate) scripts: Vec<Script>,
    /// The committed schema fingerprint these migrations produce, when there is one.
    pub(crate) fingerprint: Option<&'static str>,
}

impl MigrationSet {
    /// datalayer's own migrations for `backend`, embedded at build time, with the committed
    /// schema fingerprint (`migrations/<backend>.fingerprint`) the boot-time drift check uses.
    pub fn builtin(backend: Backend) -> MigrationSet {
        let (origin, source, scripts, fingerprint): (_, fn() -> EmbeddedMigrations, _, _) =
            match backend {
                Backend::Postgres => (
                    "migrations/postgres",
                    || POSTGRES,
                    scripts::POSTGRES,
                    include_str!("../../migrations/postgres.fingerprint"),
                ),
                Backend::Sqlite => (
                    "migrations/sqlite",
                    || SQLITE,
                    scripts::SQLITE,
                    include_str!("../../migrations/sqlite.fingerprint"),
                ),
            };
        MigrationSet {
            origin: origin.to_string(),
            source: Source::Embedded(source),
            scripts: scripts.iter().map(|(n, up)| Script::new(n, up)).collect(),
            fingerprint: Some(fingerprint),
        }
    }

    /// The migrations in `dir` (one folder per migration holding `up.sql` and `down.sql`),
    /// read at run time. There is no fingerprint, so no drift check.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<MigrationSet, Error> {
        let dir = dir.as_ref();
        let unreadable = |e: std::io::Error| Error::Migration {
            migration: "(none)".into(),
            file: dir.display().to_string(),
            reason: format!("cannot read the migrations folder: {e}"),
        };
        let mut scripts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(unreadable)? {
            let path = entry.map_err(unreadable)?.path().join("up.sql");
            if !path.is_file() {
                continue;
            }
            let name = path
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let up = std::fs::read_to_string(&path).map_err(|e| Error::Migration {
                migration: name.clone(),
                file: path.display().to_string(),
                reason: format!("cannot read it: {e}"),
            })?;
            scripts.push(Script::new(&name, &up));
        }
        scripts.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(MigrationSet {
            origin: dir.display().to_string(),
            source: Source::Dir(dir.to_path_buf()),
            scripts,
            fingerprint: None,
        })
    }

    /// The migrations, oldest first.
    pub fn scripts(&self) -> &[Script] {
        &self.scripts
    }

    /// The `up.sql` file of a migration, for messages.
    pub(crate) fn file_of(&self, name: &str) -> String {
        format!("{}/{name}/up.sql", self.origin)
    }

    pub(crate) fn script(&self, version: &str) -> Option<&Script> {
        self.scripts.iter().find(|s| s.version == version)
    }
}

impl<DB: DieselBackend> MigrationSource<DB> for &MigrationSet {
    fn migrations(&self) -> migration::Result<Vec<Box<dyn Migration<DB>>>> {
        match &self.source {
            Source::Embedded(source) => MigrationSource::<DB>::migrations(&source()),
            Source::Dir(dir) => {
                MigrationSource::<DB>::migrations(&FileBasedMigrations::from_path(dir)?)
            }
        }
    }
}
