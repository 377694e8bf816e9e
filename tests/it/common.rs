//! Shared helpers: fresh PostgreSQL databases that clean up after themselves, and the built
//! `datalayer` binary run in an empty folder with a controlled environment.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::libpq::{Conn, quote_ident};

/// Where the tests reach PostgreSQL as a role that may create databases and roles.
pub fn admin_url() -> String {
    std::env::var("DATALAYER_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// An admin connection, or a failure that says how to start PostgreSQL.
pub fn admin() -> Conn {
    let url = admin_url();
    Conn::connect(&url).unwrap_or_else(|e| {
        panic!(
            "cannot reach PostgreSQL at {url}: {e}\n\
             Start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
             (./scripts/test does this), or point DATALAYER_TEST_ADMIN_URL at a server where \
             this role may create databases and roles."
        )
    })
}

/// Has the child `command` starts receive SIGTERM when the thread that spawns it ends: the
/// test's own thread, which ends with the test, or with the test process if that is killed
/// before the test can stop the child (a server left running would keep its port and files).
pub fn stops_with_this_thread(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A name no other test (in this or another process) is using.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database (and optionally a role) created for one test and dropped when it ends, even
/// when the test fails.
pub struct TestDb {
    pub name: String,
    pub role: Option<String>,
}

impl TestDb {
    /// A database called `name`, owned by a new login role `role` when one is given.
    pub fn create(name: &str, role: Option<&str>) -> TestDb {
        let admin = admin();
        // The guard exists before the objects, so a failure halfway still cleans up.
        let db = TestDb {
            name: name.to_string(),
            role: role.map(str::to_string),
        };
        if let Some(role) = role {
            admin
                .query(&format!("CREATE ROLE {} LOGIN", quote_ident(role)))
                .unwrap_or_else(|e| panic!("create role: {e}"));
        }
        let owner = role
            .map(|r| format!(" OWNER {}", quote_ident(r)))
            .unwrap_or_default();
        admin
            .query(&format!("CREATE DATABASE {}{owner}", quote_ident(name)))
            .unwrap_or_else(|e| panic!("create database: {e}"));
        db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = admin();
        let _ = admin.query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&self.name)
        ));
        if let Some(role) = &self.role {
            let _ = admin.query(&format!("DROP ROLE IF EXISTS {}", quote_ident(role)));
        }
    }
}

/// Runs the built `datalayer` binary in `dir` with only `env` (plus PATH) set.
pub fn run_cli<K, V>(dir: &Path, args: &[&str], env: &[(K, V)]) -> Output
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut command = Command::new(env!("CARGO_BIN_EXE_datalayer"));
    command.args(args).current_dir(dir).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("the datalayer binary runs")
}

/// stdout and stderr of a run, as text.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Settings for the PostgreSQL database `name` on the admin server, plus `extra` variables.
pub fn postgres_settings(name: &str, extra: &[(&str, &str)]) -> datalayer::Settings {
    let mut pairs: Vec<(String, String)> = vec![("DATABASE_URL".into(), admin_url())];
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut settings = datalayer::Settings::from_pairs(pairs).expect("valid test settings");
    match &mut settings.target {
        datalayer::config::Target::Postgres(pg) => pg.database = Some(name.to_string()),
        datalayer::config::Target::Sqlite(_) => panic!("DATALAYER_TEST_ADMIN_URL must be postgres"),
    }
    settings
}

/// Where a test's database lives; dropping it removes the database.
pub enum Place {
    Postgres(#[allow(dead_code, reason = "held for its Drop, which drops the database")] TestDb),
    Sqlite(tempfile::TempDir),
}

/// A fresh, empty database with an engine on it (pool of 4), on each backend.
pub fn fresh_engines(prefix: &str, extra: &[(&str, &str)]) -> Vec<(datalayer::Engine, Place)> {
    vec![fresh_postgres(prefix, extra), fresh_sqlite(extra)]
}

pub fn fresh_postgres(prefix: &str, extra: &[(&str, &str)]) -> (datalayer::Engine, Place) {
    let name = unique_name(prefix);
    let db = TestDb::create(&name, None);
    let mut extra = extra.to_vec();
    extra.push(("DATABASE_POOL_MAX_SIZE", "4"));
    let settings = postgres_settings(&name, &extra);
    let engine = datalayer::Engine::connect(&settings).expect("connect to the test database");
    (engine, Place::Postgres(db))
}

pub fn fresh_sqlite(extra: &[(&str, &str)]) -> (datalayer::Engine, Place) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested/folder/test.sqlite3");
    let mut pairs: Vec<(String, String)> =
        vec![("DATABASE_PATH".into(), path.to_string_lossy().into_owned())];
    pairs.push(("DATABASE_POOL_MAX_SIZE".into(), "4".into()));
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = datalayer::Settings::from_pairs(pairs).expect("valid sqlite settings");
    let engine = datalayer::Engine::connect(&settings).expect("open the SQLite file");
    (engine, Place::Sqlite(dir))
}

/// A database of the calling test's own on each backend, migrated by the reference
/// application's migrations (from a template, with `datalayer::testing`), with an engine (pool
/// of 4) on it.
pub fn migrated_engines() -> Vec<datalayer::testing::TestDatabase> {
    let migrator = blog::models::migrator();
    let postgres = postgres_settings("postgres", &[("DATABASE_POOL_MAX_SIZE", "4")]);
    let sqlite = datalayer::Settings::from_pairs([
        ("DATABASE_PATH", "unused.sqlite3"),
        ("DATABASE_POOL_MAX_SIZE", "4"),
    ])
    .expect("valid sqlite settings");
    [postgres, sqlite]
        .iter()
        .map(|settings| {
            datalayer::testing::TestDatabase::with_settings(&migrator, settings)
                .unwrap_or_else(|e| panic!("a test database: {e}"))
        })
        .collect()
}

/// One text column of the first row of `sql`.
pub fn query_text(conn: &mut datalayer::Conn, sql: &str) -> String {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    let row: Row = diesel::sql_query(sql)
        .get_result(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.value
}

/// Every row of `sql`, whose columns are all cast to text, as lines of `|`-joined values.
pub fn query_lines(conn: &mut datalayer::Conn, sql: &str) -> Vec<String> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        line: String,
    }
    let rows: Vec<Row> = diesel::sql_query(sql)
        .load(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().map(|r| r.line).collect()
}

/// Captures what is logged on this thread while `run` runs (a thread-local tracing
/// subscriber), as plain text.
pub fn logged(run: impl FnOnce()) -> String {
    captured(run, false)
}

/// [`logged`], with a line for each span as it closes, with its fields.
pub fn logged_with_spans(run: impl FnOnce()) -> String {
    captured(run, true)
}

fn captured(run: impl FnOnce(), spans: bool) -> String {
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_span_events(if spans {
            tracing_subscriber::fmt::format::FmtSpan::CLOSE
        } else {
            tracing_subscriber::fmt::format::FmtSpan::NONE
        })
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    let bytes = captured.0.lock().expect("lock").clone();
    String::from_utf8(bytes).expect("utf-8")
}

/// The test migrations in `tests/migrations/<folder>`, read at run time, as the set `name`.
pub fn test_migrator(folder: &str, name: &str) -> datalayer::Migrator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/migrations")
        .join(folder);
    datalayer::Migrator::from_dir(name, dir).expect("test migrations")
}

/// The URL of a test database on the admin server.
pub fn database_url(name: &str) -> String {
    let admin = admin_url();
    let server = admin.rsplit_once('/').map_or(admin.as_str(), |(s, _)| s);
    format!("{server}/{name}")
}

/// A new engine on `engine`'s database with its pool settings changed by `change`.
pub fn with_pool(
    engine: &datalayer::Engine,
    change: impl FnOnce(&mut datalayer::config::PoolSettings),
) -> datalayer::Engine {
    let mut settings = engine.settings().clone();
    change(&mut settings.pool);
    datalayer::Engine::connect(&settings).expect("connect")
}

/// Waits until `condition` holds, polling every 10 ms; fails the test naming `what` if it has
/// not within `limit`.
pub fn wait_for(what: &str, limit: std::time::Duration, condition: impl Fn() -> bool) {
    assert!(eventually(limit, condition), "{what}");
}

/// Whether `condition` holds within `limit`, polling every 10 ms (for a test that says more
/// than [`wait_for`] when it does not).
pub fn eventually(limit: std::time::Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while !condition() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// A port nothing listens on.
pub fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port.to_string()
}
