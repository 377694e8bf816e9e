//! The migration lock, so that replicas booting at once migrate one at a time.
//!
//! - PostgreSQL: a session-level advisory lock, taken on the migrations' own connection with
//!   `pg_try_advisory_lock`, polled every 100 ms until `DATABASE_MIGRATION_LOCK_TIMEOUT`. Its
//!   key is ([`LOCK_NAMESPACE`], a hash of the database and schema names), so it shows in
//!   `pg_locks` as `locktype = 'advisory'`, `classid = 1684827495`. While waiting, the holder
//!   (pid, application name, state, for how long) is logged every two seconds.
//! - SQLite: an exclusive lock on a sidecar file next to the database (`<file>.migrations.lock`),
//!   holding the holder's pid and start time, polled the same way. The file is created readable
//!   by its owner only and never opened through a symbolic link.

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use diesel::connection::SimpleConnection;
use diesel::sql_types::{Bool, Double, Integer, Text};

use super::connection::MigrationConn;
use crate::config::{Settings, Target};
use crate::engine::Conn;
use crate::error::MigrationError;

/// The first half of the PostgreSQL advisory lock key: "dlmg" in ASCII.
pub const LOCK_NAMESPACE: i32 = 0x646c_6d67;

const POLL: Duration = Duration::from_millis(100);
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// The advisory lock key for a database and schema: ([`LOCK_NAMESPACE`], 31-bit FNV-1a of
/// `database.schema`).
pub fn lock_key(database: &str, schema: &str) -> (i32, i32) {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in database
        .bytes()
        .chain(std::iter::once(b'.'))
        .chain(schema.bytes())
    {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (LOCK_NAMESPACE, (hash & 0x7fff_ffff) as i32)
}

/// Who holds the migration lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockHolder {
    /// A PostgreSQL session.
    Postgres {
        /// Its backend pid (`pg_stat_activity.pid`).
        pid: i32,
        /// Its `application_name`.
        application_name: String,
        /// Its state (`active`, `idle`, `idle in transaction`, ...).
        state: String,
        /// How long it has been in that state.
        state_for: Duration,
    },
    /// A process holding the SQLite sidecar lock, as it described itself in the lock file.
    Sqlite {
        /// The lock file.
        path: PathBuf,
        /// What the holder wrote into it (`pid 1234 since 2026-11-25 14:00:00 UTC`).
        description: String,
    },
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockHolder::Postgres {
                pid,
                application_name,
                state,
                state_for,
            } => write!(
                f,
                "pid {pid} (application {application_name:?}, {state} for {:.1}s)",
                state_for.as_secs_f64()
            ),
            LockHolder::Sqlite { path, description } => {
                write!(f, "{description} (lock file {})", path.display())
            }
        }
    }
}

/// The held lock; released when dropped (SQLite) or by [`Guard::release`] / the end of the
/// session (PostgreSQL).
pub(crate) enum Guard {
    Postgres { key: (i32, i32) },
    Sqlite { _file: File },
}

impl Guard {
    pub(crate) fn release(self, conn: &mut Conn) {
        if let Guard::Postgres { key } = self {
            // Closing the session releases it too; this just does not wait for that.
            let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({}, {})", key.0, key.1));
        }
    }
}

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

#[derive(diesel::QueryableByName)]
struct HolderRow {
    #[diesel(sql_type = Integer)]
    pid: i32,
    #[diesel(sql_type = Text)]
    application_name: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Double)]
    seconds: f64,
}

/// The lock key of a PostgreSQL migration connection (made from its database and schema).
fn postgres_key(migration: &MigrationConn) -> (i32, i32) {
    let (database, schema) = migration
        .schema
        .as_ref()
        .map_or(("", ""), |(d, s)| (d.as_str(), s.as_str()));
    lock_key(database, schema)
}

fn failed(action: &'static str) -> impl FnOnce(diesel::result::Error) -> MigrationError {
    move |source| MigrationError::Database { action, source }
}

fn postgres_holder(conn: &mut Conn, key: (i32, i32)) -> Result<Option<LockHolder>, MigrationError> {
    let rows: Vec<HolderRow> = diesel::sql_query(format!(
        "SELECT a.pid AS pid, coalesce(a.application_name, '') AS application_name,
                coalesce(a.state, 'unknown') AS state,
                coalesce(extract(epoch FROM now() - coalesce(a.state_change, a.backend_start)), 0)::float8
                    AS seconds
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
            AND l.classid = {} AND l.objid = {}
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          LIMIT 1",
        key.0, key.1
    ))
    .load(conn)
    .map_err(failed("reading who holds the migration lock"))?;
    Ok(rows.into_iter().next().map(|row| LockHolder::Postgres {
        pid: row.pid,
        application_name: row.application_name,
        state: row.state,
        state_for: Duration::from_secs_f64(row.seconds.max(0.0)),
    }))
}

fn sqlite_lock_path(settings: &Settings) -> Option<PathBuf> {
    match &settings.target {
        Target::Sqlite(sqlite) => {
            let mut path = sqlite.path.clone().into_os_string();
            path.push(".migrations.lock");
            Some(PathBuf::from(path))
        }
        Target::Postgres(_) => None,
    }
}

/// Options that never open through a symbolic link: `O_NOFOLLOW` on Unix (opening a link
/// fails with `ELOOP`); on Windows `FILE_FLAG_OPEN_REPARSE_POINT`, which opens a link itself
/// rather than what it points to.
fn no_follow() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
        options.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT);
    }
    options
}

/// Whether opening failed because the path is a symbolic link that [`no_follow`] refused.
fn is_link_refusal(error: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        error.raw_os_error() == Some(libc::ELOOP)
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

fn sqlite_holder(path: &Path) -> LockHolder {
    use std::io::Read;
    // What a holder writes is one short line; read no more, and never through a link.
    let mut text = String::new();
    let read = no_follow()
        .read(true)
        .open(path)
        .and_then(|file| file.take(256).read_to_string(&mut text));
    let description = read
        .ok()
        .map(|_| text.trim().to_string())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "another process".to_string());
    LockHolder::Sqlite {
        path: path.to_path_buf(),
        description,
    }
}

/// Opens (creating, readable by its owner only on Unix) the SQLite lock file, never through a
/// symbolic link: one planted there would make a migrating process (often root) truncate and
/// rewrite whatever it points to.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    let mut options = no_follow();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| {
            if is_link_refusal(&e) {
                std::io::Error::new(
                    e.kind(),
                    "it is a symbolic link, which is never followed there: remove it",
                )
            } else {
                e
            }
        })
}

/// Takes the migration lock, waiting at most `timeout`.
pub(crate) fn acquire(
    migration: &mut MigrationConn,
    settings: &Settings,
    timeout: Duration,
) -> Result<Guard, MigrationError> {
    let started = Instant::now();
    let mut reported = started;
    match sqlite_lock_path(settings) {
        None => {
            let key = postgres_key(migration);
            let conn: &mut Conn = &mut migration.conn;
            let sql = format!(
                "SELECT pg_try_advisory_lock({}, {}) AS locked",
                key.0, key.1
            );
            loop {
                let locked: Locked = diesel::sql_query(&sql)
                    .get_result(conn)
                    .map_err(failed("taking the migration lock"))?;
                if locked.locked {
                    return Ok(Guard::Postgres { key });
                }
                let holder = || postgres_holder(conn, key).ok().flatten();
                if let Some(error) = waited(started, timeout, &mut reported, holder) {
                    return Err(error);
                }
            }
        }
        Some(path) => {
            let file = open_lock_file(&path).map_err(|source| MigrationError::File {
                action: "cannot open the migration lock file",
                file: path.display().to_string(),
                source,
            })?;
            loop {
                match file.try_lock() {
                    Ok(()) => {
                        let _ = file.set_len(0);
                        let mut writer = &file;
                        let _ = write!(
                            writer,
                            "pid {} since {} UTC",
                            std::process::id(),
                            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S")
                        );
                        return Ok(Guard::Sqlite { _file: file });
                    }
                    Err(TryLockError::WouldBlock) => {
                        let holder = || Some(sqlite_holder(&path));
                        if let Some(error) = waited(started, timeout, &mut reported, holder) {
                            return Err(error);
                        }
                    }
                    Err(TryLockError::Error(source)) => {
                        return Err(MigrationError::File {
                            action: "cannot lock the migration lock file",
                            file: path.display().to_string(),
                            source,
                        });
                    }
                }
            }
        }
    }
}

/// After a failed attempt: the timeout error, or `None` after logging (now and then) and
/// waiting one poll interval.
fn waited(
    started: Instant,
    timeout: Duration,
    reported: &mut Instant,
    holder: impl FnOnce() -> Option<LockHolder>,
) -> Option<MigrationError> {
    let elapsed = started.elapsed();
    if elapsed >= timeout {
        return Some(MigrationError::LockTimeout {
            waited: elapsed,
            holder: holder().map(|h| h.to_string()),
        });
    }
    if reported.elapsed() >= REPORT_EVERY {
        *reported = Instant::now();
        match holder() {
            Some(holder) => tracing::warn!(
                "waiting {:.1}s for the migration lock, held by {holder}",
                elapsed.as_secs_f64()
            ),
            None => tracing::warn!(
                "waiting {:.1}s for the migration lock",
                elapsed.as_secs_f64()
            ),
        }
    }
    std::thread::sleep(POLL.min(timeout - elapsed));
    None
}

/// Who holds the lock right now, if anyone (for `datalayer status`).
pub(crate) fn holder(
    migration: &mut MigrationConn,
    settings: &Settings,
) -> Result<Option<LockHolder>, MigrationError> {
    match sqlite_lock_path(settings) {
        None => {
            let key = postgres_key(migration);
            postgres_holder(&mut migration.conn, key)
        }
        Some(path) => {
            let Ok(file) = no_follow().read(true).open(&path) else {
                return Ok(None);
            };
            match file.try_lock_shared() {
                Ok(()) => Ok(None),
                Err(_) => Ok(Some(sqlite_holder(&path))),
            }
        }
    }
}
