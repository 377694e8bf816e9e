//! The engine against real databases: session setup, pool state, ping, errors.

use std::sync::Arc;
use std::time::Duration;

use datalayer::engine::PoolState;
use datalayer::{Conn, Engine, Error};

use crate::common::{fresh_postgres, fresh_sqlite, postgres_settings, query_text};

#[test]
fn postgres_sessions_get_their_limits_and_name() {
    let (engine, _db) = fresh_postgres(
        "dl_session",
        &[
            ("DATABASE_STATEMENT_TIMEOUT", "30s"),
            ("DATABASE_LOCK_TIMEOUT", "1500ms"),
            ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "1m"),
            ("DATABASE_APPLICATION_NAME", "session test"),
        ],
    );
    // Several pooled connections, each set up on its own.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = engine.get().expect("checkout");
        assert_eq!(
            query_text(
                &mut conn,
                "SELECT current_setting('statement_timeout') AS value"
            ),
            "30s"
        );
        assert_eq!(
            query_text(&mut conn, "SELECT current_setting('lock_timeout') AS value"),
            "1500ms"
        );
        assert_eq!(
            query_text(
                &mut conn,
                "SELECT current_setting('idle_in_transaction_session_timeout') AS value"
            ),
            "1min"
        );
        assert_eq!(
            query_text(
                &mut conn,
                "SELECT current_setting('application_name') AS value"
            ),
            "session test"
        );
        held.push(conn);
    }
}

#[test]
fn postgres_limits_left_at_zero_are_not_set() {
    let (engine, _db) = fresh_postgres("dl_session0", &[]);
    let mut conn = engine.get().expect("checkout");
    assert_eq!(
        query_text(
            &mut conn,
            "SELECT current_setting('statement_timeout') AS value"
        ),
        "0"
    );
    assert_eq!(
        query_text(
            &mut conn,
            "SELECT current_setting('application_name') AS value"
        ),
        // The program's name, without cargo's hash: this test binary is `it-<hash>`.
        "it"
    );
}

#[test]
fn sqlite_connections_get_their_pragmas() {
    let (engine, _dir) = fresh_sqlite(&[]);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = engine.get().expect("checkout");
        let pragma = |conn: &mut Conn, name: &str| {
            query_text(
                conn,
                &format!("SELECT CAST({name} AS TEXT) AS value FROM pragma_{name}"),
            )
        };
        assert_eq!(pragma(&mut conn, "foreign_keys"), "1");
        assert_eq!(pragma(&mut conn, "journal_mode"), "wal");
        assert_eq!(pragma(&mut conn, "synchronous"), "1", "NORMAL");
        assert_eq!(
            query_text(
                &mut conn,
                "SELECT CAST(timeout AS TEXT) AS value FROM pragma_busy_timeout"
            ),
            "5000"
        );
        held.push(conn);
    }
}

#[test]
fn state_counts_connections_in_use() {
    for (engine, _place) in [fresh_postgres("dl_state", &[]), fresh_sqlite(&[])] {
        let first = engine.get().expect("checkout");
        let second = engine.get().expect("checkout");
        let state = engine.state();
        assert_eq!((state.max_size, state.in_use), (4, 2), "{state:?}");
        assert!(
            state.connections <= state.max_size
                && state.in_use + state.idle + state.parked <= state.connections,
            "{state:?}"
        );
        drop((first, second));
        assert_eq!(engine.state().in_use, 0);
    }
}

#[test]
fn ping_reports_version_and_identity() {
    let (engine, _db) = fresh_postgres("dl_ping", &[]);
    let ping = engine.ping().expect("ping");
    assert!(ping.server_version.starts_with("PostgreSQL "), "{ping:?}");
    assert_eq!(ping.user.as_deref(), Some("postgres"));
    assert!(ping.database.starts_with("dl_ping_"), "{ping:?}");
    assert!(ping.latency > Duration::ZERO);

    let (engine, _dir) = fresh_sqlite(&[]);
    let ping = engine.ping().expect("ping");
    assert!(ping.server_version.starts_with("SQLite 3."), "{ping:?}");
    assert!(
        ping.database.ends_with("nested/folder/test.sqlite3"),
        "{ping:?}"
    );
}

#[test]
fn an_exhausted_pool_says_how_long_it_waited_and_what_it_held() {
    let (engine, _db) = fresh_postgres("dl_exhaust", &[("DATABASE_POOL_TIMEOUT", "300ms")]);
    let held: Vec<_> = (0..4).map(|_| engine.get().expect("checkout")).collect();
    let error = match engine.get() {
        Ok(_) => panic!("a fifth checkout from a pool of 4 succeeded"),
        Err(e) => e,
    };
    let Error::PoolTimeout { waited, state, .. } = &error else {
        panic!("expected a pool timeout, got {error}");
    };
    assert!(*waited >= Duration::from_millis(300), "{waited:?}");
    let PoolState {
        max_size,
        connections,
        idle,
        parked,
        in_use,
        waiting,
        ..
    } = *state;
    assert_eq!(
        (max_size, connections, idle, parked, in_use, waiting),
        (4, 4, 0, 0, 4, 0),
        "{state:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with("no database connection available after waiting"),
        "{message}"
    );
    assert!(
        message.contains("pool size 4, 4 open: 4 in use, 0 idle, 0 parked; 0 waiting"),
        "{message}"
    );
    drop(held);
    engine
        .get()
        .expect("a checkout succeeds once connections are returned");
}

#[test]
fn a_missing_database_fails_at_once_naming_it() {
    let settings = postgres_settings("dl_does_not_exist", &[("DATABASE_PASSWORD", "pw-CNRY7f3a")]);
    let started = std::time::Instant::now();
    let error = Engine::connect(&settings).expect_err("no such database");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let message = error.to_string();
    assert!(matches!(error, Error::Connect { .. }), "{message}");
    assert!(
        message.contains("database \"dl_does_not_exist\" does not exist"),
        "{message}"
    );
    assert!(
        message.contains(":***@"),
        "the target is shown redacted: {message}"
    );
    assert!(!message.contains("CNRY7f3a"), "{message}");
}

#[test]
fn the_sqlite_folder_is_created() {
    let (engine, dir) = fresh_sqlite(&[]);
    engine.ping().expect("ping");
    let crate::common::Place::Sqlite(dir) = dir else {
        unreachable!()
    };
    assert!(dir.path().join("nested/folder/test.sqlite3").is_file());
}

#[test]
fn settings_built_in_code_are_checked_before_the_pool_is_built() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = datalayer::Settings::from_pairs([("DATABASE_PATH", dir.path().join("db"))])
        .expect("settings");
    let broken = |change: &dyn Fn(&mut datalayer::Settings)| {
        let mut settings = base.clone();
        change(&mut settings);
        // r2d2 asserts on each of these: the engine must refuse them first.
        let error = Engine::connect(&settings).expect_err("refused");
        let Error::Config(problems) = &error else {
            panic!("expected a configuration error, got {error}");
        };
        problems
            .0
            .iter()
            .map(|p| p.variable.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(broken(&|s| s.pool.max_size = 0), ["DATABASE_POOL_MAX_SIZE"]);
    assert_eq!(
        broken(&|s| s.pool.min_idle = Some(11)),
        ["DATABASE_POOL_MIN_IDLE"]
    );
    assert_eq!(
        broken(&|s| {
            s.pool.timeout = Duration::ZERO;
            s.pool.idle_timeout = Some(Duration::ZERO);
            s.pool.max_lifetime = Some(Duration::ZERO);
        }),
        [
            "DATABASE_POOL_TIMEOUT",
            "DATABASE_POOL_IDLE_TIMEOUT",
            "DATABASE_POOL_MAX_LIFETIME"
        ]
    );
    // The same words as the environment's loader.
    let from_env =
        datalayer::Settings::from_pairs([("DATABASE_POOL_MAX_SIZE", "0")]).expect_err("refused");
    let mut settings = base.clone();
    settings.pool.max_size = 0;
    assert_eq!(
        Engine::connect(&settings).expect_err("refused").to_string(),
        from_env.to_string()
    );
}

/// A fresh engine of each backend with a pool of one connection, shareable between threads.
fn one_connection_engines(prefix: &str) -> Vec<(Arc<Engine>, crate::common::Place)> {
    crate::common::fresh_engines(prefix, &[])
        .into_iter()
        .map(|(engine, place)| {
            let one = crate::common::with_pool(&engine, |pool| {
                pool.max_size = 1;
                pool.min_idle = Some(1);
            });
            (Arc::new(one), place)
        })
        .collect()
}

/// How many checkouts in a row this thread makes of `engine`'s only connection, returning it
/// each time, until a thread that waits for it is served.
fn checkouts_until_the_waiter_is_served(engine: &Arc<Engine>) -> usize {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut conn = engine.get().expect("the only connection");
    let served = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (engine, served) = (Arc::clone(engine), Arc::clone(&served));
        std::thread::spawn(move || {
            let conn = engine.get().expect("served in turn");
            served.store(true, Ordering::Release);
            drop(conn);
        })
    };
    crate::common::wait_for("the thread joins the line", Duration::from_secs(10), || {
        engine.state().waiting == 1
    });
    let mut checkouts = 0;
    while !served.load(Ordering::Acquire) && checkouts < 1000 {
        drop(conn);
        conn = engine.get().expect("back after the waiter's turn");
        checkouts += 1;
    }
    waiter.join().expect("no panic");
    checkouts
}

#[test]
fn a_thread_that_keeps_checking_out_hands_over_to_the_waiting_within_its_streak() {
    for (engine, place) in one_connection_engines("dl_streak") {
        // This thread keeps the connection (parked) for a streak of checkouts while one thread
        // waits, then hands it over: 1 in a row when the server runs outside the process
        // (PostgreSQL), up to 12 when it runs inside it (SQLite).
        let longest = match place {
            crate::common::Place::Postgres(_) => 2,
            crate::common::Place::Sqlite(_) => 13,
        };
        let checkouts = checkouts_until_the_waiter_is_served(&engine);
        assert!(
            (2..=longest).contains(&checkouts),
            "the waiter was served after {checkouts} checkouts of the other thread"
        );
    }
}

#[test]
fn waiting_threads_are_served_in_the_order_they_arrived() {
    use std::sync::Mutex;
    for (engine, _place) in one_connection_engines("dl_fifo") {
        let held = engine.get().expect("the only connection");
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for i in 0..6u32 {
            let (waiter, served) = (Arc::clone(&engine), Arc::clone(&served));
            threads.push(std::thread::spawn(move || {
                let conn = waiter.get().expect("served in turn");
                served.lock().expect("order").push(i);
                drop(conn);
            }));
            // The next thread arrives once this one is in line.
            crate::common::wait_for("the thread joins the line", Duration::from_secs(10), || {
                engine.state().waiting == i + 1
            });
        }
        drop(held);
        for thread in threads {
            thread.join().expect("no panic");
        }
        assert_eq!(*served.lock().expect("order"), [0, 1, 2, 3, 4, 5]);
        assert_eq!(engine.state().waiting, 0);
    }
}
