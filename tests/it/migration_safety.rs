//! Migrations under concurrency and hostile conditions, against the real databases: many
//! replicas at once, a held lock, edited and unknown migrations, DDL behind a long
//! transaction, broken SQL, and schema drift.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use datalayer::config::Backend;
use datalayer::migrations::MigrationError;
use datalayer::migrations::{self, DriftOutcome, Migrator, lock::lock_key};
use datalayer::{Engine, Error, Settings};
use diesel::connection::SimpleConnection;

use crate::common::{
    Place, admin_url, fresh_engines, fresh_postgres, fresh_sqlite, query_text, run_cli, text,
};
use crate::libpq::Conn as PqConn;

fn test_set(folder: &str) -> Migrator {
    crate::common::test_migrator(folder, "test")
}

/// The same settings as `engine`'s, with `extra` variables changed.
fn with(engine: &Engine, extra: &[(&str, &str)]) -> Settings {
    let mut settings = engine.settings().clone();
    for (name, value) in extra {
        match *name {
            "DATABASE_MIGRATION_LOCK_TIMEOUT" => {
                settings.migrations.lock_timeout = parse_secs(value)
            }
            "DATABASE_MIGRATION_DDL_LOCK_TIMEOUT" => {
                settings.migrations.ddl_lock_timeout = parse_secs(value)
            }
            "DATABASE_ALLOW_UNKNOWN_MIGRATIONS" => {
                settings.migrations.allow_unknown = *value == "true"
            }
            "DATABASE_SCHEMA_CHECK" => {
                let pairs = [("DATABASE_SCHEMA_CHECK", *value)];
                settings.migrations.schema_check = Settings::from_pairs(pairs)
                    .expect("valid mode")
                    .migrations
                    .schema_check;
            }
            other => panic!("the tests do not set {other}"),
        }
    }
    settings
}

fn parse_secs(text: &str) -> Duration {
    Duration::from_secs_f64(text.trim_end_matches('s').parse().expect("seconds"))
}

fn count(engine: &Engine, table: &str) -> i64 {
    let mut conn = engine.get().expect("checkout");
    query_text(
        &mut conn,
        &format!("SELECT CAST(count(*) AS TEXT) AS value FROM {table}"),
    )
    .parse()
    .expect("a count")
}

#[test]
fn eight_replicas_as_threads_apply_each_migration_once() {
    for (engine, _place) in fresh_engines("dl_threads", &[]) {
        let set = Arc::new(test_set("audit"));
        let mut settings = engine.settings().clone();
        settings.pool.min_idle = Some(0);
        let start = Arc::new(Barrier::new(8));
        let replicas: Vec<_> = (0..8)
            .map(|_| {
                let (set, settings, start) = (set.clone(), settings.clone(), start.clone());
                std::thread::spawn(move || {
                    let replica = Engine::connect(&settings).expect("connect");
                    start.wait();
                    set.run_pending(&replica)
                })
            })
            .collect();
        let applied: Vec<Vec<String>> = replicas
            .into_iter()
            .map(|r| r.join().expect("no panic").expect("every replica boots"))
            .collect();
        assert_eq!(
            applied.iter().map(Vec::len).sum::<usize>(),
            2,
            "{applied:?}"
        );
        assert_eq!(
            applied.iter().filter(|a| a.is_empty()).count(),
            7,
            "{applied:?}"
        );
        assert_eq!(count(&engine, "audit"), 1, "the audited migration ran once");
        assert_eq!(count(&engine, "__diesel_schema_migrations"), 2);
        assert_eq!(
            count(&engine, "datalayer_migrations"),
            2,
            "one ledger row per version"
        );
    }
}

#[test]
fn eight_replicas_as_processes_apply_each_migration_once() {
    for (engine, place) in fresh_engines("dl_procs", &[]) {
        let dir = tempfile::tempdir().expect("temp dir");
        let env: Vec<(String, String)> = match &place {
            Place::Postgres(db) => {
                let server = admin_url().rsplit_once('/').map(|(s, _)| s.to_string());
                vec![(
                    "DATABASE_URL".into(),
                    format!("{}/{}", server.unwrap_or_default(), db.name),
                )]
            }
            Place::Sqlite(_) => vec![(
                "DATABASE_PATH".into(),
                match &engine.settings().target {
                    datalayer::config::Target::Sqlite(s) => s.path.to_string_lossy().into_owned(),
                    datalayer::config::Target::Postgres(_) => unreachable!(),
                },
            )],
        };
        let children: Vec<_> = (0..8)
            .map(|_| {
                let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_datalayer"));
                command.arg("migrate").current_dir(dir.path()).env_clear();
                command.envs(env.iter().cloned());
                command
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                command.spawn().expect("spawn datalayer")
            })
            .collect();
        let mut applied_lines = 0;
        for child in children {
            let output = child.wait_with_output().expect("wait");
            let (stdout, stderr) = text(&output);
            assert!(output.status.success(), "{stdout}{stderr}");
            applied_lines += stdout.lines().filter(|l| l.starts_with("applied ")).count();
        }
        assert_eq!(
            applied_lines, 2,
            "each migration applied by exactly one process"
        );
        assert_eq!(count(&engine, "__diesel_schema_migrations"), 2);
        assert_eq!(count(&engine, "datalayer_migrations"), 2);
    }
}

/// With the lock held elsewhere, a run on an engine with a 1 s lock timeout fails after
/// 1.0 to 1.5 s. Returns that engine and the error.
fn times_out_on_the_lock(engine: &Engine) -> (Engine, Error) {
    let impatient = Engine::connect(&with(engine, &[("DATABASE_MIGRATION_LOCK_TIMEOUT", "1s")]))
        .expect("connect");
    let started = Instant::now();
    let error = blog::models::migrator()
        .run_pending(&impatient)
        .expect_err("the lock is held");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed <= Duration::from_millis(1500),
        "{elapsed:?}"
    );
    (impatient, error)
}

#[test]
fn a_held_postgres_lock_times_out_naming_its_holder() {
    let (engine, place) = fresh_postgres("dl_lockheld", &[]);
    let Place::Postgres(db) = &place else {
        unreachable!()
    };
    let server = admin_url()
        .rsplit_once('/')
        .map(|(s, _)| s.to_string())
        .unwrap_or_default();
    let squatter = PqConn::connect(&format!(
        "{server}/{}?application_name=lock%20squatter",
        db.name
    ))
    .expect("connect");
    let (k1, k2) = lock_key(&db.name, "public");
    squatter
        .query(&format!("SELECT pg_advisory_lock({k1}, {k2})"))
        .expect("lock");
    let pid = squatter
        .query("SELECT pg_backend_pid()")
        .expect("pid")
        .expect("row");

    let holder = migrations::lock_holder(&engine)
        .expect("status")
        .expect("held");
    assert!(
        holder.to_string().starts_with(&format!(
            "pid {pid} (application \"lock squatter\", idle for "
        )),
        "{holder}"
    );

    let (impatient, error) = times_out_on_the_lock(&engine);
    let Error::Migration(MigrationError::LockTimeout { holder, .. }) = &error else {
        panic!("expected a lock timeout, got {error}");
    };
    let holder = holder.as_deref().unwrap_or_default();
    assert!(
        holder.contains(&format!("pid {pid} ")) && holder.contains("lock squatter"),
        "{error}"
    );

    drop(squatter);
    assert_eq!(
        blog::models::migrator()
            .run_pending(&impatient)
            .expect("lock free")
            .len(),
        2
    );
    assert!(migrations::lock_holder(&engine).expect("status").is_none());

    // With nothing to do, a boot reads the ledger without the lock: it succeeds while
    // another session holds it (the impatient engine would time out after 1 s otherwise).
    let squatter = PqConn::connect(&format!("{server}/{}", db.name)).expect("connect");
    squatter
        .query(&format!("SELECT pg_advisory_lock({k1}, {k2})"))
        .expect("lock");
    let report = blog::models::migrator()
        .boot(&impatient)
        .expect("nothing to do needs no lock");
    assert!(report.applied.is_empty());
    assert!(report.drift.differences().is_empty());
}

#[test]
fn a_held_sqlite_lock_times_out_naming_its_holder() {
    let (engine, _dir) = fresh_sqlite(&[]);
    let datalayer::config::Target::Sqlite(sqlite) = &engine.settings().target else {
        unreachable!()
    };
    let lock_path = PathBuf::from(format!("{}.migrations.lock", sqlite.path.display()));
    let file = std::fs::File::create(&lock_path).expect("lock file");
    file.lock().expect("lock");
    std::fs::write(&lock_path, "pid 4242 since the test began").expect("describe holder");

    let (impatient, error) = times_out_on_the_lock(&engine);
    assert!(
        error
            .to_string()
            .contains("held by pid 4242 since the test began"),
        "{error}"
    );
    let holder = migrations::lock_holder(&engine)
        .expect("status")
        .expect("held");
    assert!(holder.to_string().starts_with("pid 4242"), "{holder}");

    drop(file);
    assert_eq!(
        blog::models::migrator()
            .run_pending(&impatient)
            .expect("lock free")
            .len(),
        2
    );

    // With nothing to do, a boot reads the ledger without the lock.
    let file = std::fs::File::open(&lock_path).expect("lock file");
    file.lock().expect("lock");
    let report = blog::models::migrator()
        .boot(&impatient)
        .expect("nothing to do needs no lock");
    assert!(report.applied.is_empty());
    assert!(report.drift.differences().is_empty());
}

#[test]
fn an_edited_migration_is_refused_until_accepted() {
    for (engine, _place) in fresh_engines("dl_checksum", &[]) {
        blog::models::migrator()
            .run_pending(&engine)
            .expect("migrate");
        let mut conn = engine.get().expect("checkout");
        let real = query_text(
            &mut conn,
            "SELECT checksum AS value FROM datalayer_migrations WHERE version = '20261125000001'",
        );
        assert_eq!(real.len(), 64, "SHA-256 in hex");
        conn.batch_execute(
            "UPDATE datalayer_migrations SET checksum = 'abc123' WHERE version = '20261125000001'",
        )
        .expect("simulate an edit");
        drop(conn);

        let error = blog::models::migrator()
            .run_pending(&engine)
            .expect_err("checksum differs");
        let Error::Migration(MigrationError::ChecksumMismatch {
            migration,
            version,
            recorded,
            embedded,
        }) = &error
        else {
            panic!("expected a checksum mismatch, got {error}");
        };
        assert_eq!(migration, "2026-11-25-000001_create_users");
        assert_eq!(
            (version.as_str(), recorded.as_str(), embedded),
            ("20261125000001", "abc123", &real)
        );
        let message = error.to_string();
        assert!(
            message.contains(&real) && message.contains("abc123"),
            "{message}"
        );
        assert!(
            message.contains("--accept-checksum 20261125000001"),
            "{message}"
        );

        blog::models::migrator()
            .accept_checksum(&engine, "20261125000001")
            .expect("accept");
        assert!(
            blog::models::migrator()
                .run_pending(&engine)
                .expect("accepted")
                .is_empty()
        );
    }
}

#[test]
fn a_database_ahead_of_the_binary_is_refused_unless_allowed() {
    for (engine, _place) in fresh_engines("dl_ahead", &[]) {
        blog::models::migrator()
            .run_pending(&engine)
            .expect("migrate");
        engine
            .get()
            .expect("checkout")
            .batch_execute(
                "INSERT INTO __diesel_schema_migrations (version) VALUES ('20991231000000')",
            )
            .expect("a newer release's migration");
        let error = blog::models::migrator()
            .run_pending(&engine)
            .expect_err("unknown version");
        assert!(
            matches!(&error, Error::Migration(MigrationError::UnknownMigrations { versions, .. }) if versions == &["20991231000000"]),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("DATABASE_ALLOW_UNKNOWN_MIGRATIONS=true")
        );
        let boot = blog::models::migrator()
            .boot(&engine)
            .expect_err("boot decides the same way");
        assert!(matches!(
            boot,
            Error::Migration(MigrationError::UnknownMigrations { .. })
        ));

        let tolerant = Engine::connect(&with(
            &engine,
            &[("DATABASE_ALLOW_UNKNOWN_MIGRATIONS", "true")],
        ))
        .expect("connect");
        let report = blog::models::migrator().boot(&tolerant).expect("allowed");
        assert_eq!(report.unknown, ["20991231000000"]);
        assert!(
            report.applied.is_empty() && report.drift.differences().is_empty(),
            "{report:?}"
        );
        assert_eq!(
            blog::models::migrator()
                .status(&engine)
                .expect("status")
                .unknown,
            ["20991231000000"]
        );
    }
}

#[test]
fn ddl_behind_a_long_transaction_gives_way_and_retries() {
    let (engine, place) = fresh_postgres("dl_ddl", &[]);
    let Place::Postgres(db) = &place else {
        unreachable!()
    };
    test_set("audit").run_pending(&engine).expect("migrate");
    let server = admin_url()
        .rsplit_once('/')
        .map(|(s, _)| s.to_string())
        .unwrap_or_default();
    let url = format!("{server}/{}", db.name);
    let reader = PqConn::connect(&url).expect("connect");
    reader.query("BEGIN").expect("begin");
    reader
        .query("SELECT count(*) FROM things")
        .expect("read, holding a lock on things");

    let patient = Engine::connect(&with(
        &engine,
        &[("DATABASE_MIGRATION_DDL_LOCK_TIMEOUT", "1s")],
    ))
    .expect("connect");
    let migrating = std::thread::spawn(move || {
        let started = Instant::now();
        let result = test_set("ddl").run_pending(&patient);
        (result, started.elapsed())
    });

    // Wait for the ALTER to queue for its lock, then read the table the way the application would.
    let watcher = PqConn::connect(&url).expect("connect");
    let deadline = Instant::now() + Duration::from_secs(5);
    while watcher
        .query("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'things'::regclass")
        .expect("pg_locks")
        .as_deref()
        == Some("0")
    {
        assert!(
            Instant::now() < deadline,
            "the migration never queued for its lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let application = PqConn::connect(&url).expect("connect");
    let started = Instant::now();
    application
        .query("SELECT count(*) FROM things")
        .expect("select");
    let select_took = started.elapsed();
    assert!(
        select_took <= Duration::from_millis(1500),
        "the SELECT waited {select_took:?}"
    );

    reader.query("COMMIT").expect("end the long transaction");
    let (result, took) = migrating.join().expect("no panic");
    assert_eq!(
        result.expect("the migration succeeds once the transaction ends"),
        ["2026-01-01-000003_add_things_note"]
    );
    assert!(
        took >= Duration::from_secs(1),
        "it gave way at least once: {took:?}"
    );
}

#[test]
fn broken_sql_leaves_the_previous_version_and_a_fix_succeeds() {
    for (engine, _place) in fresh_engines("dl_broken", &[]) {
        let error = &test_set("broken")
            .run_pending(&engine)
            .expect_err("syntax error");
        let Error::Migration(MigrationError::Apply {
            migration,
            file,
            source,
            ..
        }) = &error
        else {
            panic!("expected a migration error, got {error}");
        };
        assert_eq!(migration, "2026-01-01-000002_create_things");
        assert!(
            file.ends_with("tests/migrations/broken/2026-01-01-000002_create_things/up.sql"),
            "{file}"
        );
        assert!(
            source.to_string().contains("syntax error") || source.to_string().contains("near"),
            "{source}"
        );
        let status = &test_set("audit").status(&engine).expect("status");
        assert_eq!(status.applied, ["2026-01-01-000001_create_audit"]);
        assert_eq!(
            count(&engine, "audit"),
            0,
            "nothing of the broken migration remains"
        );
        assert_eq!(
            test_set("audit").run_pending(&engine).expect("fixed"),
            ["2026-01-01-000002_create_things"]
        );
    }
}

#[test]
fn a_dropped_column_is_reported_and_strict_refuses_to_boot() {
    for (engine, _place) in fresh_engines("dl_drift", &[]) {
        let report = blog::models::migrator().boot(&engine).expect("boot");
        assert_eq!(report.applied.len(), 2);
        assert_eq!(
            report.drift.wait(),
            DriftOutcome::Checked(Vec::new()),
            "a fresh database matches"
        );
        engine
            .get()
            .expect("checkout")
            .batch_execute("ALTER TABLE posts DROP COLUMN body")
            .expect("drop a column by hand");
        let report = blog::models::migrator().boot(&engine).expect("warn boots");
        assert_eq!(report.drift.differences(), ["posts.body: missing"]);
        assert_eq!(
            report.drift.clone().wait(),
            DriftOutcome::Checked(vec!["posts.body: missing".into()]),
            "a clone of the report's check gives the same outcome"
        );

        let strict = Engine::connect(&with(&engine, &[("DATABASE_SCHEMA_CHECK", "strict")]))
            .expect("connect");
        let error = blog::models::migrator()
            .boot(&strict)
            .expect_err("strict refuses");
        assert!(
            matches!(&error, Error::Migration(MigrationError::SchemaDrift { differences }) if differences == &["posts.body: missing"]),
            "{error}"
        );
        let off =
            Engine::connect(&with(&engine, &[("DATABASE_SCHEMA_CHECK", "off")])).expect("connect");
        assert_eq!(
            blog::models::migrator()
                .boot(&off)
                .expect("off skips")
                .drift
                .wait(),
            DriftOutcome::Skipped
        );
    }
}

#[test]
fn the_committed_fingerprints_match_what_the_migrations_produce() {
    let mut stale = Vec::new();
    for (engine, _place) in fresh_engines("dl_fingerprint", &[]) {
        blog::models::migrator()
            .run_pending(&engine)
            .expect("migrate");
        let mut conn = engine.get().expect("checkout");
        let live =
            migrations::drift::fingerprint(&mut conn, engine.backend()).expect("fingerprint");
        let backend = match engine.backend() {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        };
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("migrations/{backend}/schema.fingerprint"));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != live {
            std::fs::write(&path, &live).expect("write the new fingerprint");
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "the schema fingerprints were out of date and have been rewritten: {stale:?}; review \
         the diff and commit them"
    );
}

/// A folder where `datalayer migrate` made its default SQLite database, on which `sql` then
/// ran (a change made behind datalayer's back).
fn migrated_by_the_cli_then(sql: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let none: &[(&str, &str)] = &[];
    assert!(run_cli(dir.path(), &["migrate"], none).status.success());
    let settings = Settings::from_pairs([(
        "DATABASE_PATH",
        dir.path().join("data/datalayer.sqlite3").as_os_str(),
    )])
    .expect("settings");
    Engine::connect(&settings)
        .expect("open")
        .get()
        .expect("checkout")
        .batch_execute(sql)
        .expect("change the database by hand");
    dir
}

#[test]
fn the_cli_accepts_an_edited_checksum() {
    let dir = migrated_by_the_cli_then("UPDATE datalayer_migrations SET checksum = 'abc123'");
    let none: &[(&str, &str)] = &[];
    let refused = run_cli(dir.path(), &[], none);
    assert_eq!(refused.status.code(), Some(4), "{:?}", text(&refused));
    let accepted = run_cli(
        dir.path(),
        &[
            "migrate",
            "--accept-checksum",
            "20261125000001",
            "--accept-checksum",
            // As `status` prints it.
            "2026-11-25-000002_create_posts",
        ],
        none,
    );
    let (stdout, stderr) = text(&accepted);
    assert!(accepted.status.success(), "{stderr}");
    assert_eq!(stdout, "nothing to apply: the database is up to date\n");
    assert!(
        stderr.contains("accepted the edited up.sql of migration 2026-11-25-000001_create_users"),
        "{stderr}"
    );
}

#[test]
fn the_cli_boot_reports_a_column_dropped_by_hand() {
    let dir = migrated_by_the_cli_then("ALTER TABLE posts DROP COLUMN body");
    let none: &[(&str, &str)] = &[];
    // The next boot has nothing to apply; its drift check (in the background under the
    // default `warn`) still finds and logs the change.
    let booted = run_cli(dir.path(), &[], none);
    let (stdout, stderr) = text(&booted);
    assert!(booted.status.success(), "{stderr}");
    assert!(
        stderr.contains("schema drift: posts.body: missing"),
        "{stderr}"
    );
    assert!(
        stdout.contains("0 migration(s) applied")
            && stdout.contains("schema drift: 1 difference(s), see the warnings"),
        "{stdout}"
    );
}

/// A run of several migrations that fails part way says what it already applied (or
/// reverted) and kept, not only the one that failed.
#[test]
fn a_run_that_fails_part_way_says_what_it_already_did() {
    for (engine, _place) in fresh_engines("dl_partway", &[]) {
        let log = crate::common::logged(|| {
            let _ = test_set("broken")
                .run_pending(&engine)
                .expect_err("syntax error");
        });
        assert!(
            log.contains(
                "stopped at 2026-01-01-000002_create_things; 1 migration(s) applied before it, \
                 and kept: 2026-01-01-000001_create_audit"
            ),
            "{log}"
        );
        if engine.backend() != Backend::Postgres {
            continue; // SQLite drops a table a view reads from
        }
        test_set("audit")
            .run_pending(&engine)
            .expect("the fixed set");
        // A view on `audit` makes its down.sql fail once `things` was reverted.
        engine
            .get()
            .expect("checkout")
            .batch_execute("CREATE VIEW audit_view AS SELECT * FROM audit")
            .expect("view");
        let log = crate::common::logged(|| {
            let _ = test_set("audit")
                .revert(&engine, migrations::Revert::Steps(2))
                .expect_err("the view depends on audit");
        });
        assert!(
            log.contains(
                "stopped at 2026-01-01-000001_create_audit; 1 migration(s) reverted before it, \
                 and kept: 2026-01-01-000002_create_things"
            ),
            "{log}"
        );
    }
}
