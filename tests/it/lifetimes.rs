//! `DATABASE_POOL_MAX_LIFETIME` and `DATABASE_POOL_IDLE_TIMEOUT` hold for every connection,
//! parked or not, and no connection outlives the pool's size (the one `Engine::connect`
//! makes to check the database is closed).

use std::time::{Duration, Instant};

use datalayer::Engine;
use diesel::RunQueryDsl;
use diesel::sql_types::{Double, Integer};

use crate::common::{Place, database_url, fresh_postgres, with_pool};

use crate::libpq::Conn as PqConn;

#[derive(diesel::QueryableByName)]
struct Backend {
    #[diesel(sql_type = Integer)]
    pid: i32,
    #[diesel(sql_type = Double)]
    age: f64,
}

#[test]
fn max_lifetime_holds_under_one_client_s_steady_load() {
    let (base, _db) = fresh_postgres("dl_lifetime", &[]);
    let lifetime = Duration::from_secs(1);
    let engine = with_pool(&base, |pool| {
        pool.max_lifetime = Some(lifetime);
        pool.max_size = 2;
    });
    // One client, one request after another: the connection it returns is parked for it and
    // taken back by its next request, so r2d2's own reaper never sees it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut pids, mut oldest, mut requests) = (Vec::new(), 0.0_f64, 0);
    while pids.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "only {} backends served in 15 s: {pids:?}",
            pids.len()
        );
        let started = Instant::now();
        let mut conn = engine.get().expect("checkout");
        let row: Backend = diesel::sql_query(
            "SELECT pg_backend_pid() AS pid, \
             extract(epoch FROM clock_timestamp() - backend_start)::float8 AS age \
             FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .get_result(&mut *conn)
        .expect("query");
        requests += 1;
        // The backend's age when this request began: a connection handed out before its
        // lifetime ended may still be serving when the query runs.
        oldest = oldest.max(row.age - started.elapsed().as_secs_f64());
        if pids.last() != Some(&row.pid) {
            pids.push(row.pid);
        }
    }
    println!(
        "max lifetime 1 s: {requests} requests, {} backends, the oldest at a request's start \
         {oldest:.3} s",
        pids.len()
    );
    // The age counts from the server's backend start; the engine's clock starts once the
    // connection is set up (TLS and authentication in between): up to half a second on a
    // loaded machine.
    assert!(
        oldest < lifetime.as_secs_f64() + 0.5,
        "a backend {oldest:.3} s old at the start of a request was handed out"
    );
}

#[test]
fn a_parked_connection_is_closed_after_the_idle_timeout_and_the_lifetime() {
    let (base, place) = fresh_postgres("dl_parked_idle", &[]);
    let Place::Postgres(db) = &place else {
        unreachable!()
    };
    let watcher = PqConn::connect(&database_url(&db.name)).expect("connect");
    let alive = |pid: i32| {
        watcher
            .query(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
            ))
            .expect("pg_stat_activity")
            .as_deref()
            == Some("1")
    };
    for (name, change) in [
        (
            "idle timeout",
            Box::new(|pool: &mut datalayer::config::PoolSettings| {
                pool.idle_timeout = Some(Duration::from_millis(800));
                pool.max_lifetime = None;
            }) as Box<dyn FnOnce(&mut datalayer::config::PoolSettings)>,
        ),
        (
            "max lifetime",
            Box::new(|pool: &mut datalayer::config::PoolSettings| {
                pool.idle_timeout = None;
                pool.max_lifetime = Some(Duration::from_millis(800));
            }),
        ),
    ] {
        let engine = std::sync::Arc::new(with_pool(&base, |pool| {
            change(pool);
            pool.min_idle = Some(0);
        }));
        // A thread uses one connection and stays alive without using it again: its
        // connection stays parked for it.
        let (parked_tx, parked_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let user = {
            let engine = std::sync::Arc::clone(&engine);
            std::thread::spawn(move || {
                let pid = engine.get().expect("checkout").backend_pid().expect("pid");
                parked_tx.send(pid).expect("send");
                let _ = done_rx.recv();
            })
        };
        let pid = parked_rx.recv().expect("the thread's connection");
        assert_eq!(engine.state().parked, 1, "{name}: {:?}", engine.state());
        let deadline = Instant::now() + Duration::from_secs(10);
        let started = Instant::now();
        while alive(pid) {
            assert!(
                Instant::now() < deadline,
                "{name}: the parked connection is still open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "{name} 800 ms: parked backend closed after {:.2?}",
            started.elapsed()
        );
        assert_eq!(engine.state().parked, 0, "{name}: {:?}", engine.state());
        drop(done_tx);
        user.join().expect("thread");
    }
}

/// A fresh database and an engine on it with a pool of `size`, whose connections carry an
/// application name of their own (to count its backends in `pg_stat_activity`).
fn named_engine(prefix: &str, size: u32) -> (crate::common::TestDb, String, Engine) {
    let db =
        crate::common::TestDb::create(&crate::common::unique_name(&format!("dl_{prefix}")), None);
    let app = crate::common::unique_name(&format!("{prefix}_app"));
    let size = size.to_string();
    let settings = crate::common::postgres_settings(
        &db.name,
        &[
            ("DATABASE_POOL_MAX_SIZE", size.as_str()),
            ("DATABASE_APPLICATION_NAME", &app),
        ],
    );
    let engine = Engine::connect(&settings).expect("connect");
    (db, app, engine)
}

#[test]
fn connect_leaves_no_connection_beyond_the_pool_size() {
    // The pool fills to its size in the background (min idle = max size by default).
    let (db, app, engine) = named_engine("spare", 2);
    let watcher = PqConn::connect(&database_url(&db.name)).expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = engine.state();
        if state.connections == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not fill: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // A closed backend leaves pg_stat_activity a moment after its connection is dropped;
    // the connection `connect` checked the database with must not stay open beside the pool's.
    crate::common::wait_for(
        "only the pool's connections open: pool size 2",
        Duration::from_secs(5),
        || backends(&watcher, &app) == 2,
    );
}

/// How many backends with application name `app` `watcher` sees.
fn backends(watcher: &PqConn, app: &str) -> u32 {
    watcher
        .query(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"
        ))
        .expect("pg_stat_activity")
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX)
}

#[test]
fn closing_the_engine_waits_a_bounded_time_names_what_is_held_and_leaves_no_backend() {
    let (db, app, engine) = named_engine("close", 3);
    let idle = engine.get().expect("checkout");
    drop(idle);
    let held_line = line!() + 1;
    let held = engine.get().expect("checkout");
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _ = released.recv();
        drop(held);
    });
    // The holder does not give its connection back: close waits 300 ms, names it, and returns.
    let log = crate::common::logged(|| engine.close(Duration::from_millis(300)));
    assert!(
        log.contains("closing the engine with 1 connection(s) still checked out"),
        "{log}"
    );
    assert!(log.contains(&format!("{}:{held_line}:", file!())), "{log}");
    assert!(
        !holder.is_finished(),
        "close returned while the connection was still held"
    );
    release.send(()).expect("release");
    holder.join().expect("holder");
    // Every backend goes: the idle one at close, the held one when it came back.
    let watcher = PqConn::connect(&database_url(&db.name)).expect("connect");
    crate::common::wait_for(
        "no backend of the engine remains",
        Duration::from_secs(5),
        || backends(&watcher, &app) == 0,
    );
}

#[test]
fn clones_share_one_pool_and_dropping_the_last_never_waits_for_a_held_connection() {
    let (db, app, engine) = named_engine("clone", 2);
    let clone = engine.clone();
    let held = clone.get().expect("checkout through the clone");
    assert_eq!(engine.state().in_use, 1, "one pool behind both handles");
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _ = released.recv();
        drop(held);
    });
    // Both handles dropped while the connection is held: the drop does not wait for it (it
    // used to wait up to 5 s).
    let dropping = std::thread::spawn(move || drop((engine, clone)));
    let returned = crate::common::eventually(Duration::from_secs(2), || dropping.is_finished());
    release.send(()).expect("release");
    holder.join().expect("holder");
    assert!(
        returned,
        "dropping the last handle waited for the held connection"
    );
    // The held connection is closed when it comes back; the idle one went with the pool.
    let watcher = PqConn::connect(&database_url(&db.name)).expect("connect");
    crate::common::wait_for(
        "no backend of the engine remains",
        Duration::from_secs(5),
        || backends(&watcher, &app) == 0,
    );
}

/// Checks out `n` connections at once and returns their backend pids.
fn pids(engine: &Engine, n: usize) -> Vec<i32> {
    let held: Vec<_> = (0..n).map(|_| engine.get().expect("checkout")).collect();
    let mut pids: Vec<i32> = held.iter().map(|c| c.backend_pid().expect("pid")).collect();
    pids.sort();
    pids
}

#[test]
fn a_sign_of_failover_retires_every_connection_made_before_it() {
    use diesel::connection::SimpleConnection;
    let (base, place) = fresh_postgres("dl_failover_sign", &[]);
    let Place::Postgres(db) = &place else {
        unreachable!()
    };
    let engine = with_pool(&base, |pool| pool.max_size = 3);
    let before = pids(&engine, 3);

    // The primary turned read-only (as an old primary does when it comes back as a standby):
    // a write is refused with SQLSTATE 25006.
    {
        let mut conn = engine.get().expect("checkout");
        let error = conn
            .batch_execute("BEGIN READ ONLY; CREATE TABLE t (x integer)")
            .expect_err("read-only");
        let _ = conn.batch_execute("ROLLBACK");
        assert!(
            error.to_string().contains("read-only transaction"),
            "{error}"
        );
    }
    let after = pids(&engine, 3);
    assert!(
        after.iter().all(|pid| !before.contains(pid)),
        "every connection made before the sign was replaced: {before:?} -> {after:?}"
    );

    // An administrator shutdown (57P01) of one backend does the same for all.
    let victim = after[0];
    PqConn::connect(&database_url(&db.name))
        .expect("connect")
        .query(&format!("SELECT pg_terminate_backend({victim})"))
        .expect("terminate");
    // Every connection is used once: the terminated one's query fails with 57P01.
    let failed = {
        let mut held: Vec<_> = (0..3).map(|_| engine.get().expect("checkout")).collect();
        held.iter_mut()
            .map(|conn| conn.batch_execute("SELECT 1").is_err())
            .filter(|failed| *failed)
            .count()
    };
    let last = pids(&engine, 3);
    assert!(
        failed <= 1,
        "only the terminated connection's request may fail: {failed}"
    );
    assert!(
        last.iter().all(|pid| !after.contains(pid)),
        "every connection made before the shutdown was replaced: {after:?} -> {last:?}"
    );
}

/// Retiring a connection past its lifetime is not a failure to connect: a health check
/// (`ping_within`, which gives up as soon as connecting fails) keeps answering through every
/// expiry wave, and reads stay on the replica instead of falling back to the primary.
#[test]
fn expiring_connections_are_not_connect_failures() {
    let db = crate::common::TestDb::create(&crate::common::unique_name("dl_expiry"), None);
    let url = database_url(&db.name);
    let settings = crate::common::postgres_settings(
        &db.name,
        &[
            ("DATABASE_POOL_MAX_SIZE", "2"),
            ("DATABASE_POOL_MAX_LIFETIME", "1s"),
            ("DATABASE_POOL_IDLE_TIMEOUT", "1s"),
            // The same database as the replica: what matters is its pool's connections expire.
            ("DATABASE_REPLICA_URL", &url),
            ("DATABASE_REPLICA_CHECK_INTERVAL", "100ms"),
        ],
    );
    let engine = Engine::connect(&settings).expect("connect");
    let mut pids = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    let began = Instant::now();
    // Several expiry waves of both pools, a probe every 50 ms, as a busy health checker.
    while began.elapsed() < Duration::from_millis(3500) || pids.len() < 3 {
        assert!(began.elapsed() < Duration::from_secs(20), "no expiry seen");
        if let Err(e) = engine.ping_within(Duration::from_secs(2)) {
            failures.push(format!("{:.2?}: {e}", began.elapsed()));
        }
        let mut conn = engine.read().expect("read");
        pids.insert(crate::common::query_text(
            &mut conn,
            "SELECT pg_backend_pid()::text AS value",
        ));
        drop(conn);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(failures.is_empty(), "health checks failed: {failures:#?}");
    let replica = engine.replica_state().expect("a replica");
    assert_eq!(
        replica.fallbacks, 0,
        "reads fell back to the primary: {:?}",
        replica.reason
    );
    assert!(replica.serving, "{:?}", replica.reason);
}
