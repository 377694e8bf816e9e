//! What `Engine::connect` does around building the pool: the backend check, the SQLite file,
//! the metrics' pool name, and the reaper of parked connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Books;
use super::pool_connection::PoolConnection;
use crate::config::{Settings, Target};
use crate::error::Error;

/// Creates a missing SQLite database file, and the folders it needs, readable by their owner
/// only on Unix (a database holds the application's data; SQLite gives its WAL and
/// shared-memory files the database file's permissions); on Windows they inherit the ACLs of
/// the folder they are made in. An existing file or folder is left as it is.
pub(super) fn create_sqlite_file(path: &std::path::Path) -> Result<(), String> {
    let mut folders = std::fs::DirBuilder::new();
    let mut file = std::fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        folders.mode(0o700);
        file.mode(0o600);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        folders.recursive(true).create(dir).map_err(|e| {
            format!(
                "cannot create the folder {}: {e} (check DATABASE_PATH)",
                dir.display()
            )
        })?;
    }
    match file.write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!(
            "cannot create the database file {}: {e} (check DATABASE_PATH and its folder's \
             permissions)",
            path.display()
        )),
    }
}

/// The `pool` label of an engine's metrics: the database it serves, numbered from the second
/// engine on the same database in this process.
pub(super) fn pool_name(settings: &Settings) -> String {
    static SEEN: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());
    let base = match &settings.target {
        Target::Postgres(pg) => format!(
            "{}@{}:{}",
            pg.database.as_deref().or(pg.user.as_deref()).unwrap_or(""),
            pg.host,
            pg.port
        ),
        Target::Sqlite(sqlite) => sqlite.path.display().to_string(),
    };
    let Ok(mut seen) = SEEN.lock() else {
        return base;
    };
    match seen.iter_mut().find(|(name, _)| *name == base) {
        Some((_, count)) => {
            *count += 1;
            format!("{base}#{count}")
        }
        None => {
            seen.push((base.clone(), 1));
            base
        }
    }
}

/// The backends `C` can reach, for messages: `postgres or sqlite`.
pub(crate) fn backends_of<C: PoolConnection>() -> String {
    C::BACKENDS
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// A configuration error when `C` cannot reach the backend `settings` choose.
pub(crate) fn check_backend<C: PoolConnection>(settings: &Settings) -> Result<(), Error> {
    let backend = settings.backend();
    if C::BACKENDS.contains(&backend) {
        return Ok(());
    }
    if !backend.is_enabled() {
        let variable = match backend {
            crate::config::Backend::Sqlite => "DATABASE_PATH",
            crate::config::Backend::Postgres => "DATABASE_URL",
        };
        return Err(Error::config(
            variable,
            format!(
                "the settings choose a {backend} database, but this build of datalayer has no \
                 {backend} support: add \"{backend}\" to the features of the datalayer \
                 dependency in Cargo.toml, or configure a {} database",
                backends_of::<C>()
            ),
        ));
    }
    let name = std::any::type_name::<C>();
    Err(Error::config(
        "DATABASE_URL",
        format!(
            "the application's engine hands out {} connections, which cannot reach a {backend} \
             database; configure a {} database",
            name.rsplit("::").next().unwrap_or(name),
            backends_of::<C>()
        ),
    ))
}

/// How often the housekeeping thread records the pool's gauges.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// The engine's housekeeping thread, until the engine is dropped: every second it records the
/// pool's gauges (see [`Shared::record_counts`](super::shared::Shared::record_counts)), and
/// every `Shared::reap_every` (with `DATABASE_POOL_MAX_LIFETIME` or
/// `DATABASE_POOL_IDLE_TIMEOUT`) it closes parked connections past either, since r2d2's reaper
/// sees them as checked out.
pub(super) fn housekeeping<C: PoolConnection>(books: &Arc<Books<C>>) {
    let reap_every = books.shared.reap_every();
    let every = reap_every.map_or(RECORD_EVERY, |reap| reap.min(RECORD_EVERY));
    let books = Arc::downgrade(books);
    let _ = std::thread::Builder::new()
        .name("datalayer-housekeeping".into())
        .spawn(move || {
            let mut recorded = Instant::now();
            loop {
                std::thread::sleep(every);
                let Some(books) = books.upgrade() else {
                    return;
                };
                let now = Instant::now();
                if reap_every.is_some() {
                    let expired = books
                        .parking
                        .evict(|held| books.shared.retire_if_expired(&held.conn, now));
                    if !expired.is_empty() {
                        // Dropped here, outside the slots: back to r2d2, which closes them;
                        // the first in line may open their replacements.
                        drop(expired);
                        books.line.wake_first();
                    }
                }
                if now.saturating_duration_since(recorded) >= RECORD_EVERY {
                    recorded = now;
                    books.record_gauges();
                }
            }
        });
}
