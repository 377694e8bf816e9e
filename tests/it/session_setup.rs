//! `Engine::connect_with`: the application's own session setup runs on every connection the
//! engine's pools open (the replacements of expired ones and the read replica's included), and
//! a setup that fails fails its connection, saying so.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use datalayer::{Conn, Engine, Error};
use diesel::connection::SimpleConnection;

use crate::common::{TestDb, postgres_settings, query_text, unique_name};

/// `SET statement_timeout = '1234ms'` through the hook, counting its calls.
fn counting_setup(
    calls: &Arc<AtomicUsize>,
) -> impl Fn(&mut Conn) -> diesel::QueryResult<()> + Send + Sync + 'static {
    let calls = Arc::clone(calls);
    move |conn: &mut Conn| {
        calls.fetch_add(1, Ordering::Relaxed);
        conn.batch_execute("SET statement_timeout = '1234ms'")
    }
}

#[test]
fn every_connection_the_pool_opens_runs_the_application_s_setup_under_steady_load() {
    let db = TestDb::create(&unique_name("dl_setup"), None);
    // Connections expire after a second, so the steady load meets replacements.
    let settings = postgres_settings(
        &db.name,
        &[
            ("DATABASE_POOL_MAX_SIZE", "2"),
            ("DATABASE_POOL_MAX_LIFETIME", "1s"),
        ],
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let engine =
        Arc::new(Engine::connect_with(&settings, counting_setup(&calls)).expect("connect"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (engine, calls) = (Arc::clone(&engine), Arc::clone(&calls));
            std::thread::spawn(move || {
                let mut checkouts = 0;
                // Until the pool has opened at least two connections beyond its first two.
                while calls.load(Ordering::Relaxed) < 4 && Instant::now() < deadline {
                    let mut conn = engine.get().expect("checkout");
                    let timeout = query_text(
                        &mut conn,
                        "SELECT current_setting('statement_timeout') AS value",
                    );
                    assert_eq!(timeout, "1234ms", "a connection without the setup");
                    checkouts += 1;
                }
                checkouts
            })
        })
        .collect();
    let checkouts: usize = threads
        .into_iter()
        .map(|t| t.join().expect("no panic"))
        .sum();
    let calls = calls.load(Ordering::Relaxed);
    assert!(
        calls >= 4,
        "the pool opened only {calls} connections in 30 s ({checkouts} checkouts)"
    );
}

#[test]
fn sqlite_connections_run_the_application_s_setup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("setup.sqlite3");
    let settings = datalayer::Settings::from_pairs([
        ("DATABASE_PATH", path.to_string_lossy().as_ref()),
        ("DATABASE_POOL_MAX_SIZE", "2"),
    ])
    .expect("settings");
    let engine = Engine::<diesel::SqliteConnection>::connect_with(&settings, |conn| {
        conn.batch_execute("PRAGMA cache_size = -1234")
    })
    .expect("connect");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = engine.get().expect("checkout");
        #[derive(diesel::QueryableByName)]
        struct Size {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            cache_size: i64,
        }
        let size: Size =
            diesel::RunQueryDsl::get_result(diesel::sql_query("PRAGMA cache_size"), &mut *conn)
                .expect("pragma");
        assert_eq!(size.cache_size, -1234);
        held.push(conn);
    }
}

#[test]
fn the_read_replica_s_connections_run_the_application_s_setup() {
    let primary = crate::cluster::Cluster::start();
    let replica = primary.replica();
    let replica_port = replica.port.to_string();
    let settings = datalayer::Settings::from_pairs([
        ("DATABASE_URL", primary.url().as_str()),
        ("DATABASE_POOL_MAX_SIZE", "2"),
        ("DATABASE_REPLICA_PORT", replica_port.as_str()),
        ("DATABASE_REPLICA_POOL_MAX_SIZE", "2"),
        ("DATABASE_REPLICA_CHECK_INTERVAL", "100ms"),
    ])
    .expect("settings");
    let calls = Arc::new(AtomicUsize::new(0));
    let engine = Engine::connect_with(&settings, counting_setup(&calls)).expect("connect");
    crate::common::wait_for("the replica serves reads", Duration::from_secs(30), || {
        engine.replica_state().is_some_and(|state| state.serving)
    });
    let mut conn = engine.read().expect("a read connection");
    assert_eq!(
        query_text(&mut conn, "SELECT current_setting('port') AS value"),
        replica_port,
        "served by the replica"
    );
    assert_eq!(
        query_text(
            &mut conn,
            "SELECT current_setting('statement_timeout') AS value"
        ),
        "1234ms"
    );
}

#[test]
fn a_failing_setup_fails_its_connection_and_says_so() {
    let db = TestDb::create(&unique_name("dl_setup_fails"), None);
    let settings = postgres_settings(
        &db.name,
        &[
            ("DATABASE_POOL_MAX_SIZE", "1"),
            ("DATABASE_POOL_TIMEOUT", "1s"),
        ],
    );
    let engine = Engine::connect_with(&settings, |conn: &mut Conn| {
        conn.batch_execute("SET no_such_setting = 1")
    })
    .expect("connect: the boot's own connection does not run it");
    let error = engine
        .get()
        .map(|_| ())
        .expect_err("no connection passes the setup");
    assert!(matches!(error, Error::PoolTimeout { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("the application's session setup (connect_with)")
            && message.contains("no_such_setting"),
        "{message}"
    );
}
