//! `datalayer::testing`: per-test databases from a migrated template, and typed engines.

use datalayer::config::Backend;
use datalayer::testing::TestDatabase;
use datalayer::{Engine, Error};
use diesel::{PgConnection, SqliteConnection};

use crate::common::{admin, postgres_settings, query_lines};
use crate::libpq::quote_ident;

fn postgres() -> datalayer::Settings {
    postgres_settings("postgres", &[("DATABASE_POOL_MAX_SIZE", "2")])
}

/// SQLite settings: `TestDatabase` replaces the path with a file of the test's own.
fn sqlite() -> datalayer::Settings {
    datalayer::Settings::from_pairs([("DATABASE_PATH", "replaced-by-the-test-database")])
        .expect("settings")
}

fn database_exists(name: &str) -> bool {
    admin()
        .query(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{}'",
            name.replace('\'', "''")
        ))
        .expect("pg_database")
        .as_deref()
        == Some("1")
}

#[test]
fn a_postgres_test_database_is_migrated_named_after_the_test_and_dropped() {
    let migrator = blog::models::migrator();
    let db = TestDatabase::with_settings(&migrator, &postgres()).expect("test database");
    let name = db.name();
    assert!(
        name.starts_with("dlt_") && name.contains("migrated_named_after_the_test"),
        "{name}"
    );
    assert!(name.len() <= 63, "{name}");
    assert!(database_exists(&name));
    let status = migrator.status(db.engine()).expect("status");
    assert!(
        status.pending.is_empty() && status.applied.len() == 2,
        "{status:?}"
    );
    // Cloned from the template: its ledger rows were written when the template was built.
    let mut conn = db.get().expect("checkout");
    let rows = query_lines(
        &mut conn,
        "SELECT migration_set || ' ' || applied_by AS line FROM datalayer_migrations",
    );
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| r.starts_with("datalayer datalayer ")),
        "{rows:?}"
    );
    drop(conn);
    drop(db);
    crate::common::wait_for(
        "the database of a passed test is dropped",
        std::time::Duration::from_secs(30),
        || !database_exists(&name),
    );
}

#[test]
fn a_passed_test_s_database_is_dropped_off_the_test_s_thread() {
    let migrator = blog::models::migrator();
    let db = TestDatabase::with_settings(&migrator, &postgres()).expect("test database");
    let name = db.name();
    // A transaction that holds a lock on the database object (COMMENT takes one that DROP
    // DATABASE waits for), so that the drop cannot finish while it is open.
    let blocker = admin();
    blocker.query("BEGIN").expect("begin");
    blocker
        .query(&format!(
            "COMMENT ON DATABASE {} IS 'held by the test'",
            quote_ident(&name)
        ))
        .expect("comment");
    let dropping = std::thread::spawn(move || drop(db));
    let watcher = admin();
    crate::common::wait_for(
        "the DROP DATABASE waits for the lock",
        std::time::Duration::from_secs(30),
        || {
            watcher
                .query(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND query LIKE 'DROP DATABASE%'",
                )
                .ok()
                .flatten()
                .is_some_and(|n| n != "0")
        },
    );
    // Dropping the guard returns while the DROP DATABASE it queued is still blocked.
    let returned = crate::common::eventually(std::time::Duration::from_secs(10), || {
        dropping.is_finished()
    });
    assert!(database_exists(&name), "not dropped while the lock is held");
    blocker.query("COMMIT").expect("commit");
    assert!(
        returned,
        "dropping the guard waited for the blocked DROP DATABASE"
    );
    crate::common::wait_for(
        "the database is dropped once the lock is released",
        std::time::Duration::from_secs(30),
        || !database_exists(&name),
    );
}

#[test]
fn two_test_databases_share_one_template() {
    let migrator = blog::models::migrator();
    let stamp = |db: &TestDatabase| {
        let mut conn = db.get().expect("checkout");
        query_lines(
            &mut conn,
            "SELECT string_agg(applied_at::text, ',' ORDER BY version) AS line \
             FROM datalayer_migrations",
        )
    };
    let first = TestDatabase::with_settings(&migrator, &postgres()).expect("first");
    let second = TestDatabase::with_settings(&migrator, &postgres()).expect("second");
    assert_ne!(first.name(), second.name());
    assert_eq!(
        stamp(&first),
        stamp(&second),
        "both copies of one migration run"
    );
    let templates = admin()
        .query(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'dlt\\_tpl\\_datalayer\\_%' \
             AND datname NOT LIKE '%building%'",
        )
        .expect("pg_database");
    assert_eq!(templates.as_deref(), Some("1"));
}

#[test]
fn a_failing_test_keeps_its_database_and_says_which() {
    let migrator = blog::models::migrator();
    let kept = std::thread::Builder::new()
        .name("testing::a_failing_test".into())
        .spawn(move || {
            let pg = TestDatabase::with_settings(&migrator, &postgres()).expect("postgres");
            let file = TestDatabase::with_settings(&migrator, &sqlite()).expect("sqlite");
            std::panic::panic_any((pg.name(), file.name()));
        })
        .expect("thread")
        .join()
        .expect_err("the test fails");
    let (name, path) = kept
        .downcast_ref::<(String, String)>()
        .cloned()
        .expect("the names");
    assert!(name.contains("a_failing_test"), "{name}");
    assert!(database_exists(&name), "kept after the failure");
    assert!(std::path::Path::new(&path).is_file(), "{path} kept");
    admin()
        .query(&format!(
            "DROP DATABASE {} WITH (FORCE)",
            quote_ident(&name)
        ))
        .expect("clean up");
    std::fs::remove_file(&path).expect("clean up");
}

#[test]
fn a_sqlite_test_database_is_a_fresh_copy_removed_afterwards() {
    let migrator = blog::models::migrator();
    let db = TestDatabase::with_settings(&migrator, &sqlite()).expect("test database");
    assert_eq!(db.backend(), Backend::Sqlite);
    let path = std::path::PathBuf::from(db.name());
    assert!(path.is_file(), "{path:?}");
    assert!(
        path.file_name()
            .is_some_and(|n| n.to_string_lossy().contains("a_fresh_copy_removed")),
        "{path:?}"
    );
    let users = blog::models::users::count(&mut db.get().expect("checkout")).expect("count");
    assert_eq!(users, 0);
    drop(db);
    assert!(!path.exists(), "removed when the test passes");
}

#[test]
fn a_typed_engine_serves_its_own_connection_type_with_the_engine_s_checks() {
    let migrator = blog::models::migrator();
    let db = TestDatabase::<PgConnection>::with_settings_as(&migrator, &postgres())
        .expect("test database");
    let engine: &Engine<PgConnection> = db.engine();
    let pid = {
        let mut conn = engine.get().expect("checkout");
        let _: &mut PgConnection = &mut conn;
        use diesel::RunQueryDsl;
        diesel::sql_query("SELECT 1")
            .execute(&mut *conn)
            .expect("query");
        conn.backend_pid().expect("a pid")
    };
    // Affinity: the thread gets back the connection it returned.
    assert_eq!(engine.get().expect("again").backend_pid(), Some(pid));
    let state = engine.state();
    assert_eq!(
        (state.in_use, state.parked, state.idle),
        (0, 1, 0),
        "{state:?}"
    );
    assert!(
        engine
            .ping()
            .expect("ping")
            .server_version
            .starts_with("PostgreSQL")
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let file = datalayer::Settings::from_pairs([("DATABASE_PATH", dir.path().join("db"))])
        .expect("settings");
    assert!(Engine::<SqliteConnection>::connect_as(&file).is_ok());
    let error = Engine::<PgConnection>::connect_as(&file).expect_err("no SQLite");
    let Error::Config(problems) = &error else {
        panic!("expected a configuration error, got {error}");
    };
    assert_eq!(problems.0[0].variable, "DATABASE_URL");
    assert!(
        error
            .to_string()
            .contains("PgConnection connections, which cannot reach a sqlite database"),
        "{error}"
    );
}
