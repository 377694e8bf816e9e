//! Per-test databases for an application's own tests.
//!
//! [`TestDatabase::new`] gives the calling test a database of its own, already migrated by the
//! application's [`Migrator`], and an [`Engine`] on it:
//!
//! - **PostgreSQL** (`DATABASE_URL` or `DATABASE_HOST` & co. point at a server where the role
//!   may create databases): the first test of a run migrates a *template* database,
//!   `dlt_tpl_<set>_<hash of the migrations>`, once (under an advisory lock, so parallel test
//!   binaries build it once; built under a temporary name and renamed, so a crash never leaves a
//!   half-migrated template). Each test then gets `CREATE DATABASE ... TEMPLATE` of it, named
//!   after the test (`dlt_<test name>_<pid>_<n>`). A template whose migrations changed is
//!   replaced, the stale one dropped. The template stays between runs: the next run with the
//!   same migrations skips the migration entirely.
//! - **SQLite** (the default when nothing is set): the same with files in the system's temp
//!   folder: a template file migrated once, copied per test.
//!
//! While a test runs, the next test's database is cloned in the background, so the next
//! setup is a rename instead of a copy (see `spare.rs`); the spare left at the end is dropped
//! when the process exits.
//!
//! When the test passes, the database (or file) is dropped (a PostgreSQL database by a
//! background thread, so the test does not wait for it; every one is gone when the process
//! exits); when it fails (the guard is dropped while panicking) it is kept and its name
//! printed, to look at what the test left.
//! The test's engine opens connections on demand (`DATABASE_POOL_MIN_IDLE` 0), so many tests
//! in parallel do not fill the server's connection slots.
//!
//! ```no_run
//! # fn main() -> Result<(), datalayer::Error> {
//! // An application embeds its own folder, usually "migrations".
//! let migrator = datalayer::embed_migrations!("doc/migrations");
//! let db = datalayer::testing::TestDatabase::new(&migrator)?;
//! let mut conn = db.engine().get()?;
//! # drop(conn);
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "postgres")]
mod drops;
#[cfg(feature = "postgres")]
mod spare;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
#[cfg(feature = "postgres")]
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

#[cfg(feature = "postgres")]
use diesel::PgConnection;
use diesel::connection::SimpleConnection;
#[cfg(feature = "postgres")]
use diesel::sql_types::BigInt;
#[cfg(feature = "postgres")]
use diesel::{QueryableByName, RunQueryDsl};
use sha2::{Digest, Sha256};

use crate::config::{Settings, Target};
use crate::engine::{Conn, Engine, PoolConnection};
use crate::error::Error;
use crate::migrations::Migrator;

/// A database of the calling test's own, migrated; dropped when the test passes, kept (and
/// named on stderr) when it fails.
pub struct TestDatabase<C: PoolConnection = Conn> {
    /// Always `Some` until dropped (the engine closes before the database is dropped).
    engine: Option<Engine<C>>,
    place: Place,
}

enum Place {
    #[cfg(feature = "postgres")]
    Postgres {
        name: String,
        admin: Arc<Engine<PgConnection>>,
    },
    Sqlite {
        path: PathBuf,
    },
}

impl TestDatabase {
    /// A database for the calling test, on the server (or SQLite) that the process
    /// environment's `DATABASE_*` variables describe, migrated by `migrator`, with an engine of
    /// [`Conn`]s on it.
    pub fn new(migrator: &Migrator) -> Result<TestDatabase, Error> {
        TestDatabase::new_as(migrator)
    }

    /// A database for the calling test on the server (or SQLite) that `settings` describe
    /// (their database is only where the test databases are created from), migrated by
    /// `migrator`, with an engine of [`Conn`]s on it.
    pub fn with_settings(migrator: &Migrator, settings: &Settings) -> Result<TestDatabase, Error> {
        TestDatabase::with_settings_as(migrator, settings)
    }
}

impl<C: PoolConnection> TestDatabase<C> {
    /// [`TestDatabase::new`] with an engine of another connection type (e.g. `PgConnection`).
    ///
    /// Tests read the process environment only, never `.env`: a run without any `DATABASE_*`
    /// variable gets the SQLite default, and when `C` cannot use SQLite, an error saying to
    /// set `DATABASE_URL`.
    pub fn new_as(migrator: &Migrator) -> Result<TestDatabase<C>, Error> {
        let settings = Settings::from_env()?;
        let nothing_set =
            !std::env::vars_os().any(|(name, _)| name.to_string_lossy().starts_with("DATABASE_"));
        if nothing_set && !C::BACKENDS.contains(&settings.backend()) {
            return Err(Error::config(
                "DATABASE_URL",
                format!(
                    "is not set, and these tests need a {} database: set DATABASE_URL in the \
                     environment to a server where this role may create databases (e.g. \
                     DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test); \
                     tests do not read .env{}",
                    crate::engine::backends_of::<C>(),
                    if Path::new(".env").exists() {
                        " (./.env exists, but only the command line reads it)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        TestDatabase::with_settings_as(migrator, &settings)
    }

    /// [`TestDatabase::with_settings`] with an engine of another connection type.
    pub fn with_settings_as(
        migrator: &Migrator,
        settings: &Settings,
    ) -> Result<TestDatabase<C>, Error> {
        crate::engine::check_backend::<C>(settings)?;
        let mut settings = settings.clone();
        settings.pool.min_idle = Some(0);
        let name = test_name();
        let template = template_name(migrator, &settings)?;
        let place = match &settings.target {
            #[cfg(feature = "postgres")]
            Target::Postgres(_) => {
                let admin = admin(&settings)?;
                postgres_template(&admin, migrator, &settings, &template)?;
                spare::create(&admin, &template, &name)?;
                Place::Postgres { name, admin }
            }
            // `check_backend` refused it above: no connection type reaches PostgreSQL.
            #[cfg(not(feature = "postgres"))]
            Target::Postgres(_) => {
                return Err(Error::Connect {
                    target: settings.connection_url().to_string(),
                    reason: "this build of datalayer has no postgres support".into(),
                });
            }
            Target::Sqlite(_) => {
                let folder = std::env::temp_dir().join("datalayer-tests");
                let template = sqlite_template(migrator, &settings, &folder, &template)?;
                let path = folder.join(format!("{name}.sqlite3"));
                std::fs::copy(&template, &path).map_err(|e| Error::Connect {
                    target: path.display().to_string(),
                    reason: format!("cannot copy the template {}: {e}", template.display()),
                })?;
                Place::Sqlite { path }
            }
        };
        match (&mut settings.target, &place) {
            #[cfg(feature = "postgres")]
            (Target::Postgres(pg), Place::Postgres { name, .. }) => {
                pg.database = Some(name.clone())
            }
            (Target::Sqlite(sqlite), Place::Sqlite { path }) => sqlite.path = path.clone(),
            _ => {}
        }
        // The guard exists before the engine: a failed connect still drops the database.
        let mut db = TestDatabase {
            engine: None,
            place,
        };
        db.engine = Some(Engine::connect_as(&settings)?);
        Ok(db)
    }

    /// The engine on the test's database.
    pub fn engine(&self) -> &Engine<C> {
        match &self.engine {
            Some(engine) => engine,
            None => unreachable!("a TestDatabase holds its engine until dropped"),
        }
    }

    /// The database's name (PostgreSQL) or file (SQLite).
    pub fn name(&self) -> String {
        match &self.place {
            #[cfg(feature = "postgres")]
            Place::Postgres { name, .. } => name.clone(),
            Place::Sqlite { path } => path.display().to_string(),
        }
    }
}

impl<C: PoolConnection> std::ops::Deref for TestDatabase<C> {
    type Target = Engine<C>;
    fn deref(&self) -> &Engine<C> {
        self.engine()
    }
}

impl<C: PoolConnection> Drop for TestDatabase<C> {
    /// Closes the engine, then drops the database, or keeps it when the test is failing.
    fn drop(&mut self) {
        drop(self.engine.take());
        if std::thread::panicking() {
            eprintln!(
                "datalayer::testing: the test failed; its database is kept: {}",
                self.name()
            );
            return;
        }
        match &self.place {
            #[cfg(feature = "postgres")]
            // Off the test's thread (`drops.rs`); done by the time the process exits.
            Place::Postgres { name, admin } => drops::later(admin, name),
            Place::Sqlite { path } => remove_sqlite(path),
        }
    }
}

/// Waits until the next test's database, cloned in the background after each PostgreSQL
/// [`TestDatabase`], is ready, and until the databases of passed tests are dropped (at most
/// 30 s each), so that no clone or drop runs while the benchmark measures. For datalayer's
/// benchmark only (the `__bench` feature): not part of the API.
#[cfg(feature = "__bench")]
#[doc(hidden)]
pub fn wait_for_spares() {
    #[cfg(feature = "postgres")]
    {
        spare::settle();
        drops::settle(std::time::Duration::from_secs(30));
    }
}

/// A PostgreSQL identifier, quoted.
#[cfg(feature = "postgres")]
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Lower-case letters, digits and `_` of `text`, at most `max` of them from its end.
fn sanitized(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let clean = clean.trim_matches('_');
    let start = clean.len().saturating_sub(max);
    clean[start..].trim_start_matches('_').to_string()
}

/// `dlt_<test name>_<pid>_<n>`: the test harness names each test's thread after the test.
fn test_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let thread = std::thread::current();
    let test = sanitized(thread.name().unwrap_or("test"), 44);
    format!(
        "dlt_{test}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `dlt_tpl_<set>_<hash>`: the hash covers the set's name, backend and every migration's name
/// and checksum, so a changed migration makes a new template.
fn template_name(migrator: &Migrator, settings: &Settings) -> Result<String, Error> {
    let backend = settings.backend();
    let set = migrator.set(backend)?;
    let mut hasher = Sha256::new();
    hasher.update(format!("{}\n{backend}\n", migrator.name()));
    for script in set.scripts() {
        hasher.update(format!("{} {}\n", script.name, script.checksum));
    }
    let mut hash = String::new();
    for byte in &hasher.finalize()[..6] {
        let _ = write!(hash, "{byte:02x}");
    }
    Ok(format!("dlt_tpl_{}_{hash}", sanitized(migrator.name(), 24)))
}

#[cfg(feature = "postgres")]
/// One admin engine per server and maintenance database for the whole process.
fn admin(settings: &Settings) -> Result<Arc<Engine<PgConnection>>, Error> {
    static ADMINS: Mutex<Vec<(String, Arc<Engine<PgConnection>>)>> = Mutex::new(Vec::new());
    let key = settings.connection_url().redacted().to_string();
    let mut admins = ADMINS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, engine)) = admins.iter().find(|(k, _)| *k == key) {
        return Ok(Arc::clone(engine));
    }
    let mut admin = settings.clone();
    // The tests' own use, and the spare cloned in the background.
    admin.pool.max_size = 3;
    let engine = Arc::new(Engine::connect_as(&admin).map_err(|e| match e {
        Error::Connect { target, reason } => Error::Connect {
            target,
            reason: format!(
                "{reason} (the tests create their databases there: start PostgreSQL, or point \
                 DATABASE_URL at a server where this role may create databases)"
            ),
        },
        other => other,
    })?);
    admins.push((key, Arc::clone(&engine)));
    Ok(engine)
}

/// Templates known to exist, by server and name, so each is checked once per process.
fn known_templates() -> &'static Mutex<HashSet<String>> {
    static KNOWN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    KNOWN.get_or_init(|| Mutex::new(HashSet::new()))
}

#[cfg(feature = "postgres")]
#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Makes sure the template exists: under an advisory lock (one builder across processes),
/// migrated under a temporary name and renamed, stale templates of the same set dropped.
#[cfg(feature = "postgres")]
fn postgres_template(
    admin: &Engine<PgConnection>,
    migrator: &Migrator,
    settings: &Settings,
    template: &str,
) -> Result<(), Error> {
    let key = format!("{} {template}", admin.target());
    let mut known = known_templates()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if known.contains(&key) {
        return Ok(());
    }
    let mut conn = admin.get()?;
    // Spares other processes left (killed before their exit handler ran); one that another
    // running process is about to use may go too: it then clones on the spot.
    let spares: Vec<Name> = diesel::sql_query(format!(
        "SELECT datname::text AS name FROM pg_database WHERE datname LIKE '{}%' \
           AND datname NOT LIKE '{}{}\\_%'",
        spare::prefix(template).replace('_', "\\_"),
        spare::prefix(template).replace('_', "\\_"),
        std::process::id()
    ))
    .load(&mut *conn)?;
    for stale in spares {
        let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote(&stale.name)));
    }
    // "dltp" in ASCII, beside the template's own hash.
    let lock = format!("1684829296, hashtext('{template}')");
    conn.batch_execute(&format!("SELECT pg_advisory_lock({lock})"))?;
    let built = (|| -> Result<(), Error> {
        let exists: Count = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM pg_database WHERE datname = '{template}'"
        ))
        .get_result(&mut *conn)?;
        if exists.n > 0 {
            return Ok(());
        }
        let building = format!("{template}_building{}", std::process::id());
        // One statement each: a multi-statement string is one transaction, refused here.
        conn.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(&building)
        ))?;
        conn.batch_execute(&format!("CREATE DATABASE {}", quote(&building)))?;
        let mut target = settings.clone();
        if let Target::Postgres(pg) = &mut target.target {
            pg.database = Some(building.clone());
        }
        target.pool.max_size = 1;
        let migrated = Engine::connect(&target).and_then(|engine| migrator.run_pending(&engine));
        if let Err(e) = migrated {
            let _ = conn.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote(&building)
            ));
            return Err(e);
        }
        // Stale templates of this set (other migrations) go; one in use by a concurrent
        // run of an older checkout stays until it is free.
        let prefix = template.rsplit_once('_').map_or(template, |(p, _)| p);
        let stale: Vec<Name> = diesel::sql_query(format!(
            "SELECT datname::text AS name FROM pg_database \
             WHERE datname LIKE '{prefix}\\_%' AND datname <> '{template}' \
               AND datname NOT LIKE '%\\_building%'"
        ))
        .load(&mut *conn)?;
        for old in stale {
            let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote(&old.name)));
        }
        conn.batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote(&building),
            quote(template)
        ))?;
        Ok(())
    })();
    let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({lock})"));
    built?;
    known.insert(key);
    Ok(())
}

#[cfg(feature = "postgres")]
#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

/// The SQLite template file: migrated once under a file lock, checkpointed, renamed into place.
fn sqlite_template(
    migrator: &Migrator,
    settings: &Settings,
    folder: &Path,
    template: &str,
) -> Result<PathBuf, Error> {
    let path = folder.join(format!("{template}.sqlite3"));
    let failed = |action: &str, e: std::io::Error| Error::Connect {
        target: path.display().to_string(),
        reason: format!("{action}: {e}"),
    };
    let key = path.display().to_string();
    let mut known = known_templates()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if known.contains(&key) {
        return Ok(path);
    }
    std::fs::create_dir_all(folder).map_err(|e| failed("cannot create the folder", e))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(folder.join(format!("{template}.lock")))
        .map_err(|e| failed("cannot open the template's lock file", e))?;
    lock.lock()
        .map_err(|e| failed("cannot lock the template's lock file", e))?;
    if !path.is_file() {
        let building = folder.join(format!("{template}.b{}.sqlite3", std::process::id()));
        remove_sqlite(&building);
        let mut target = settings.clone();
        if let Target::Sqlite(sqlite) = &mut target.target {
            sqlite.path = building.clone();
        }
        let engine = Engine::connect(&target)?;
        let migrated = migrator.run_pending(&engine).and_then(|_| {
            // Everything into the main file, which is all that the copies take.
            Ok(engine
                .get()?
                .batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?)
        });
        drop(engine);
        if let Err(e) = migrated {
            remove_sqlite(&building);
            return Err(e);
        }
        std::fs::rename(&building, &path).map_err(|e| failed("cannot move the template", e))?;
        remove_sqlite(&building);
    }
    known.insert(key);
    Ok(path)
}

/// A SQLite file and its companions (WAL, shared memory, migration lock).
fn remove_sqlite(path: &Path) {
    let _ = std::fs::remove_file(path);
    for suffix in ["-wal", "-shm", ".migrations.lock"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        let _ = std::fs::remove_file(companion);
    }
}
