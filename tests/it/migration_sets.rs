//! Migration sets of their own: several in one database, a ledger from the previous release,
//! a status that writes nothing, and migrations outside a transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datalayer::migrations::{MigrationError, Revert};
use datalayer::{Engine, Error};
use diesel::connection::SimpleConnection;

use crate::common::{
    Place, database_url, fresh_engines, fresh_postgres, logged, query_lines, test_migrator,
};
use crate::libpq::Conn as PqConn;

const REFERENCE: [&str; 2] = [
    "2026-11-25-000001_create_users",
    "2026-11-25-000002_create_posts",
];
const AUDIT: [&str; 2] = [
    "2026-01-01-000001_create_audit",
    "2026-01-01-000002_create_things",
];

/// The reference migrator, after it migrated `engine`'s database and `sql` changed what it
/// left (to make the database look as another release or a hand left it).
fn migrated_then(engine: &Engine, sql: &str) -> datalayer::Migrator {
    let reference = blog::models::migrator();
    reference.run_pending(engine).expect("migrate");
    engine
        .get()
        .expect("checkout")
        .batch_execute(sql)
        .expect("change the database");
    reference
}

fn ledger(engine: &Engine) -> Vec<String> {
    let mut conn = engine.get().expect("checkout");
    query_lines(
        &mut conn,
        "SELECT migration_set || ' ' || version AS line FROM datalayer_migrations ORDER BY version",
    )
}

#[test]
fn two_sets_share_a_database_and_ignore_each_other() {
    for (engine, _place) in fresh_engines("dl_sets", &[]) {
        let reference = blog::models::migrator();
        let library = test_migrator("audit", "audit_library");
        assert_eq!(reference.name(), "datalayer");
        assert_eq!(
            reference.run_pending(&engine).expect("reference"),
            REFERENCE
        );
        assert_eq!(library.boot(&engine).expect("library").applied, AUDIT);
        // Neither sees the other's versions as unknown, nor as its own.
        let report = reference.boot(&engine).expect("reference boots again");
        assert!(
            report.applied.is_empty() && report.unknown.is_empty(),
            "{report:?}"
        );
        let status = library.status(&engine).expect("status");
        assert_eq!(status.applied, AUDIT);
        assert!(status.unknown.is_empty(), "{status:?}");
        assert_eq!(
            ledger(&engine),
            [
                "audit_library 20260101000001",
                "audit_library 20260101000002",
                "datalayer 20261125000001",
                "datalayer 20261125000002",
            ]
        );
        // Reverting one set leaves the other alone.
        assert_eq!(
            library.revert(&engine, Revert::All).expect("revert"),
            [AUDIT[1], AUDIT[0]]
        );
        assert_eq!(
            reference.status(&engine).expect("status").applied,
            REFERENCE
        );
        assert_eq!(ledger(&engine).len(), 2);
    }
}

#[test]
fn a_version_another_set_applied_is_refused_by_name() {
    for (engine, _place) in fresh_engines("dl_clash", &[]) {
        test_migrator("audit", "first")
            .run_pending(&engine)
            .expect("first");
        let error = test_migrator("ddl", "second")
            .run_pending(&engine)
            .expect_err("same versions, another set");
        let Error::Migration(MigrationError::VersionClash {
            set,
            migration,
            other_set,
            ..
        }) = &error
        else {
            panic!("expected a version clash, got {error}");
        };
        assert_eq!((set.as_str(), other_set.as_str()), ("second", "first"));
        assert_eq!(migration, AUDIT[0]);
        assert!(error.to_string().contains("rename the folder"), "{error}");
    }
}

#[test]
fn a_ledger_from_the_previous_release_belongs_to_the_reference_set() {
    for (engine, _place) in fresh_engines("dl_legacy", &[]) {
        // What the previous release left: the ledger without its migration_set column.
        let reference = migrated_then(
            &engine,
            "ALTER TABLE datalayer_migrations DROP COLUMN migration_set",
        );
        let has_set_column = |engine: &Engine| {
            engine
                .get()
                .expect("checkout")
                .batch_execute("SELECT migration_set FROM datalayer_migrations")
                .is_ok()
        };
        let status = reference.status(&engine).expect("status on the old ledger");
        assert_eq!(status.applied, REFERENCE);
        assert!(status.pending.is_empty(), "{status:?}");
        assert!(!has_set_column(&engine), "status wrote nothing");
        let report = reference.boot(&engine).expect("boot upgrades the ledger");
        assert!(
            report.applied.is_empty() && report.unknown.is_empty(),
            "{report:?}"
        );
        assert_eq!(
            ledger(&engine),
            ["datalayer 20261125000001", "datalayer 20261125000002"]
        );
    }
}

#[test]
fn status_on_a_database_never_migrated_writes_nothing() {
    for (engine, _place) in fresh_engines("dl_status_ro", &[]) {
        let status = blog::models::migrator().status(&engine).expect("status");
        assert_eq!(status.pending, REFERENCE);
        assert!(status.applied.is_empty(), "{status:?}");
        let mut conn = engine.get().expect("checkout");
        let sql = match engine.backend() {
            datalayer::config::Backend::Postgres => {
                "SELECT tablename::text AS line FROM pg_tables WHERE schemaname = 'public'"
            }
            datalayer::config::Backend::Sqlite => {
                "SELECT name AS line FROM sqlite_master WHERE type = 'table'"
            }
        };
        assert_eq!(query_lines(&mut conn, sql), Vec::<String>::new());
    }
}

#[test]
fn status_shows_an_edited_migration() {
    for (engine, _place) in fresh_engines("dl_status_edit", &[]) {
        let reference = migrated_then(
            &engine,
            "UPDATE datalayer_migrations SET checksum = 'abc' WHERE version = '20261125000002'",
        );
        let status = reference.status(&engine).expect("status");
        assert_eq!(status.edited, [REFERENCE[1]]);
        assert_eq!(status.applied, REFERENCE);
    }
}

/// Inserts into `items` in short transactions until told to stop; counts rows and failures.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
    written: Arc<AtomicU64>,
}

impl Writer {
    fn start(url: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let url = url.to_string();
        let thread = {
            let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
            std::thread::spawn(move || {
                let conn = PqConn::connect(&url).expect("writer connects");
                let mut errors = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                    match conn.query("INSERT INTO items (x) VALUES ((random() * 1000)::int)") {
                        Ok(_) => {
                            written.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => errors.push(e),
                    }
                }
                (written.load(Ordering::Acquire), errors)
            })
        };
        Writer {
            stop,
            thread,
            written,
        }
    }

    /// Waits until `n` more rows are written than now (the writer is really running).
    fn wait_for_rows(&self, n: u64) {
        let target = self.written.load(Ordering::Acquire) + n;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.written.load(Ordering::Acquire) < target {
            assert!(Instant::now() < deadline, "the writer made no progress");
            std::thread::yield_now();
        }
    }

    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("writer thread")
    }
}

#[test]
fn create_index_concurrently_runs_outside_a_transaction_while_another_session_writes() {
    let (engine, place) = fresh_postgres("dl_cic", &[]);
    let Place::Postgres(db) = &place else {
        unreachable!()
    };
    test_migrator("concurrent_base", "items")
        .run_pending(&engine)
        .expect("the table");
    let writer = Writer::start(&database_url(&db.name));
    writer.wait_for_rows(50);
    let migrator = test_migrator("concurrent", "items");
    assert!(!migrator.set(engine.backend()).expect("set").scripts()[1].run_in_transaction);
    assert_eq!(
        migrator.run_pending(&engine).expect("index concurrently"),
        ["2026-02-01-000002_index_items"]
    );
    writer.wait_for_rows(50);
    let (written, errors) = writer.stop();
    assert!(errors.is_empty(), "the writer failed: {errors:?}");
    let mut conn = engine.get().expect("checkout");
    assert_eq!(
        query_lines(
            &mut conn,
            "SELECT c.relname || ' ' || i.indisvalid AS line FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname IN ('items_x_idx', 'items_id_x_idx') ORDER BY 1",
        ),
        ["items_id_x_idx true", "items_x_idx true"]
    );
    assert_eq!(
        query_lines(&mut conn, "SELECT count(*)::text AS line FROM items"),
        [written.to_string()]
    );
    // Its ledger rows came after its statements; the down.sql runs outside a transaction too.
    assert_eq!(
        ledger(&engine),
        ["items 20260201000001", "items 20260201000002"]
    );
    assert_eq!(
        migrator
            .revert(&engine, Revert::Steps(1))
            .expect("drop concurrently"),
        ["2026-02-01-000002_index_items"]
    );
    assert_eq!(
        query_lines(
            &mut conn,
            "SELECT count(*)::text AS line FROM pg_class WHERE relname LIKE 'items_%idx'"
        ),
        ["0"]
    );
}

#[test]
fn a_migration_outside_a_transaction_is_not_retried_after_a_lock_timeout() {
    let (engine, place) = fresh_postgres("dl_cic_timeout", &[]);
    let Place::Postgres(db) = &place else {
        unreachable!()
    };
    let mut settings = engine.settings().clone();
    settings.migrations.ddl_lock_timeout = Duration::from_millis(200);
    let engine = Engine::connect(&settings).expect("connect");
    let migrator = test_migrator("concurrent", "items");
    test_migrator("concurrent_base", "items")
        .run_pending(&engine)
        .expect("the table");
    let blocker = PqConn::connect(&database_url(&db.name)).expect("connect");
    blocker.query("BEGIN").expect("begin");
    blocker
        .query("LOCK TABLE items IN SHARE UPDATE EXCLUSIVE MODE")
        .expect("a lock CREATE INDEX CONCURRENTLY waits for");
    let mut result = None;
    let log = logged(|| result = Some(migrator.run_pending(&engine)));
    let error = result.expect("ran").expect_err("the lock is held");
    let Error::Migration(MigrationError::Apply {
        migration,
        progress: Some(progress),
        source,
        ..
    }) = &error
    else {
        panic!("expected an apply error with its progress, got {error}");
    };
    assert_eq!(migration, "2026-02-01-000002_index_items");
    assert!(source.to_string().contains("lock timeout"), "{source}");
    assert!(
        progress.contains("statement 1 of 2 failed and the 0 before it stayed applied"),
        "{progress}"
    );
    assert!(!log.contains("retrying"), "retried blindly: {log}");
    assert_eq!(
        ledger(&engine),
        ["items 20260201000001"],
        "nothing recorded"
    );

    blocker.query("ROLLBACK").expect("release the lock");
    assert_eq!(
        migrator
            .run_pending(&engine)
            .expect("runs once the lock is gone"),
        ["2026-02-01-000002_index_items"]
    );
}

#[test]
fn status_runs_as_a_read_only_role_on_a_fresh_and_a_migrated_database() {
    use crate::common::{TestDb, admin, unique_name};
    use crate::libpq::quote_ident;
    let name = unique_name("dl_ro");
    let role = unique_name("dl_ro_role");
    let admin = admin();
    // Read-only by default; dropped after the database (declared first, dropped last).
    admin
        .query(&format!(
            "CREATE ROLE {0} LOGIN; ALTER ROLE {0} SET default_transaction_read_only = on",
            quote_ident(&role)
        ))
        .expect("role");
    let _drop_role = DropRole(role.clone());
    // Owned by the admin, so the role may not create anything there.
    let db = TestDb::create(&name, None);
    let as_role = |settings: &datalayer::Settings| {
        let mut settings = settings.clone();
        if let datalayer::config::Target::Postgres(pg) = &mut settings.target {
            pg.user = Some(role.clone());
        }
        settings
    };
    let owner = crate::common::postgres_settings(&db.name, &[]);
    let reader = Engine::connect(&as_role(&owner)).expect("connect as the read-only role");
    let reference = blog::models::migrator();
    let status = reference
        .status(&reader)
        .expect("status on a fresh database");
    assert_eq!(status.pending, REFERENCE);

    reference
        .run_pending(&Engine::connect(&owner).expect("connect"))
        .expect("migrate as the owner");
    let db_conn = crate::libpq::Conn::connect(&database_url(&db.name)).expect("connect");
    db_conn
        .query(&format!(
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}",
            quote_ident(&role)
        ))
        .expect("grant");
    let status = reference
        .status(&reader)
        .expect("status on a migrated database");
    assert_eq!(status.applied, REFERENCE);
    assert!(status.pending.is_empty() && status.edited.is_empty());
}

/// Drops a role when the test ends (after the databases it may own are gone).
struct DropRole(String);

impl Drop for DropRole {
    fn drop(&mut self) {
        let _ = crate::common::admin().query(&format!(
            "DROP ROLE IF EXISTS {}",
            crate::libpq::quote_ident(&self.0)
        ));
    }
}

#[test]
fn a_role_without_create_on_the_schema_fails_migrate_with_exit_4_naming_the_step() {
    use crate::common::{TestDb, admin, run_cli, text, unique_name};
    use crate::libpq::quote_ident;
    let role = unique_name("dl_nocreate_role");
    admin()
        .query(&format!("CREATE ROLE {} LOGIN", quote_ident(&role)))
        .expect("role");
    let _drop_role = DropRole(role.clone());
    // Owned by the admin: since PostgreSQL 15 other roles may not create in `public`.
    let db = TestDb::create(&unique_name("dl_nocreate"), None);
    let dir = tempfile::tempdir().expect("temp dir");
    let url = database_url(&db.name).replacen("postgres@", &format!("{role}@"), 1);
    for command in [&["migrate"][..], &[][..]] {
        let output = run_cli(dir.path(), command, &[("DATABASE_URL", url.as_str())]);
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(4), "{command:?}: {stderr}");
        assert!(
            stderr.contains("creating the ledger tables: permission denied for schema public")
                && stderr.contains("needs CREATE on the schema"),
            "{stderr}"
        );
    }
    let output = run_cli(dir.path(), &["status"], &[("DATABASE_URL", url.as_str())]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("pending  2026-11-25-000001_create_users"),
        "{stdout}"
    );
}

#[test]
fn revert_with_unknown_versions_present_reverts_this_set_s_newest() {
    for (engine, _place) in fresh_engines("dl_revert_unknown", &[]) {
        // A newer release's migration of this set, unknown to this binary.
        let reference = migrated_then(
            &engine,
            "INSERT INTO __diesel_schema_migrations (version) VALUES ('20991231000000');
             INSERT INTO datalayer_migrations
                 (version, name, checksum, applied_at, duration_ms, applied_by, migration_set)
             VALUES ('20991231000000', '2099-12-31-000000_later', 'x', CURRENT_TIMESTAMP,
                     1, 'datalayer 9.9.9', 'datalayer')",
        );
        let mut settings = engine.settings().clone();
        settings.migrations.allow_unknown = true;
        let tolerant = Engine::connect(&settings).expect("connect");
        assert_eq!(
            reference
                .revert(&tolerant, Revert::Steps(1))
                .expect("revert"),
            [REFERENCE[1]],
            "the newest migration this binary knows, with its own down.sql"
        );
        let status = reference.status(&tolerant).expect("status");
        assert_eq!(status.applied, [REFERENCE[0]]);
        assert_eq!(status.unknown, ["20991231000000"]);
        let mut conn = tolerant.get().expect("checkout");
        let versions = query_lines(
            &mut conn,
            "SELECT version AS line FROM __diesel_schema_migrations ORDER BY version",
        );
        assert_eq!(
            versions,
            ["20261125000001", "20991231000000"],
            "both tables agree"
        );
    }
}

#[test]
fn a_migration_read_from_a_folder_runs_the_text_that_was_hashed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let folder = dir.path().join("2026-03-01-000001_create_first");
    std::fs::create_dir_all(&folder).expect("folder");
    std::fs::write(folder.join("up.sql"), "CREATE TABLE first (id INTEGER);").expect("up");
    std::fs::write(folder.join("down.sql"), "DROP TABLE first;").expect("down");
    let migrator = datalayer::Migrator::from_dir("folder", dir.path()).expect("read");
    let checksum = migrator
        .set(datalayer::config::Backend::Sqlite)
        .expect("set")
        .scripts()[0]
        .checksum
        .clone();
    // Edited after it was read: what runs is still what was read (and hashed).
    std::fs::write(folder.join("up.sql"), "CREATE TABLE second (id INTEGER);").expect("edit");
    let (engine, _place) = crate::common::fresh_sqlite(&[]);
    migrator.run_pending(&engine).expect("migrate");
    let mut conn = engine.get().expect("checkout");
    assert_eq!(
        query_lines(
            &mut conn,
            "SELECT name AS line FROM sqlite_master WHERE name IN ('first', 'second')"
        ),
        ["first"]
    );
    assert_eq!(
        query_lines(
            &mut conn,
            "SELECT checksum AS line FROM datalayer_migrations"
        ),
        [checksum]
    );
}

/// A migration whose `up.sql` is misnamed (`Up.sql`) was skipped on Linux: never applied,
/// never reported. Diesel refuses such a folder, and so does the migrator, naming the file.
#[test]
fn a_misnamed_up_sql_is_refused_naming_the_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("2026-01-01-000001_first");
    let bad = dir.path().join("2026-01-01-000002_second");
    for folder in [&good, &bad] {
        std::fs::create_dir(folder).expect("folder");
    }
    std::fs::write(good.join("up.sql"), "SELECT 1;").expect("up");
    std::fs::write(bad.join("Up.sql"), "SELECT 2;").expect("Up");
    let error = datalayer::Migrator::from_dir("misnamed", dir.path()).expect_err("refused");
    let message = error.to_string();
    assert!(
        message.contains("2026-01-01-000002_second") && message.contains("rename Up.sql to up.sql"),
        "{message}"
    );
    std::fs::rename(bad.join("Up.sql"), bad.join("notes.txt")).expect("rename");
    let error = datalayer::Migrator::from_dir("misnamed", dir.path()).expect_err("refused");
    assert!(error.to_string().contains("has none"), "{error}");
}

/// An interrupted or failed `CREATE INDEX CONCURRENTLY` leaves an invalid index behind,
/// maintained on every write and never used: `status` names it.
#[test]
fn status_names_an_invalid_index_a_failed_concurrent_build_left() {
    let (engine, place) = fresh_postgres("dl_invalid_index", &[]);
    let Place::Postgres(db) = &place else {
        unreachable!()
    };
    let migrator = test_migrator("concurrent_base", "items");
    migrator.run_pending(&engine).expect("the table");
    assert!(
        migrator
            .status(&engine)
            .expect("status")
            .invalid_indexes
            .is_empty()
    );
    let conn = PqConn::connect(&database_url(&db.name)).expect("connect");
    conn.query("INSERT INTO items (x) VALUES (1), (1)")
        .expect("duplicates");
    conn.query("CREATE UNIQUE INDEX CONCURRENTLY items_x_unique ON items (x)")
        .expect_err("duplicates fail the build, after the index was created");
    let status = migrator.status(&engine).expect("status");
    assert_eq!(status.invalid_indexes, ["public.items_x_unique"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let output = crate::common::run_cli(
        dir.path(),
        &["status"],
        &[("DATABASE_URL", database_url(&db.name))],
    );
    let (stdout, _) = crate::common::text(&output);
    assert!(
        stdout.contains("invalid  index public.items_x_unique: an interrupted CREATE INDEX"),
        "{stdout}"
    );
}
