//! The pool against a database that goes away: boot retries, resets and terminated backends
//! under load, and pool exhaustion explained. Through the fault proxy or with
//! pg_terminate_backend on the test's own database; never by stopping the shared server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datalayer::config::{Host, Target};
use datalayer::{Engine, Error, Settings};
use diesel::connection::SimpleConnection;

use crate::common::{Place, admin, fresh_postgres, postgres_settings};
use crate::netns::Netns;
use crate::proxy::FaultProxy;

pub fn upstream() -> SocketAddr {
    let settings = postgres_settings("postgres", &[]);
    let Target::Postgres(pg) = &settings.target else {
        unreachable!()
    };
    let host = match &pg.host {
        Host::Ip(ip) => ip.to_string(),
        other => panic!("the fault proxy needs an IP host, not {other}"),
    };
    format!("{host}:{}", pg.port)
        .parse()
        .expect("socket address")
}

/// Settings for `db` reached through `proxy`.
fn through(proxy: &FaultProxy, db: &str, extra: &[(&str, &str)]) -> Settings {
    let mut extra = extra.to_vec();
    extra.push(("DATABASE_SSLMODE", "disable"));
    let mut settings = postgres_settings(db, &extra);
    let Target::Postgres(pg) = &mut settings.target else {
        unreachable!()
    };
    pg.host = Host::Ip(proxy.addr.ip());
    pg.port = proxy.addr.port();
    settings
}

/// A fresh database, a fault proxy in front of the server, and an engine through it with a pool
/// of `max_size` and a 3 s pool timeout. Drops in the right order: engine, proxy, database.
fn proxied(prefix: &str, max_size: &str) -> (Place, FaultProxy, Engine) {
    let (_, place) = fresh_postgres(prefix, &[]);
    let proxy = FaultProxy::start(upstream());
    let settings = through(
        &proxy,
        &db_name(&place),
        &[
            ("DATABASE_POOL_MAX_SIZE", max_size),
            ("DATABASE_POOL_TIMEOUT", "3s"),
        ],
    );
    let engine = Engine::connect(&settings).expect("connect");
    (place, proxy, engine)
}

fn db_name(place: &Place) -> String {
    match place {
        Place::Postgres(db) => db.name.clone(),
        Place::Sqlite(_) => unreachable!("postgres"),
    }
}

#[test]
fn boot_waits_for_a_database_that_comes_up_and_fails_fast_on_one_that_does_not_exist() {
    let (_engine, place) = fresh_postgres("dl_bootwait", &[]);
    let proxy = FaultProxy::start(upstream());
    proxy.refuse();
    let settings = through(
        &proxy,
        &db_name(&place),
        &[("DATABASE_CONNECT_DEADLINE", "10s")],
    );
    let opened = Arc::new(Mutex::new(None));
    let opener = {
        let opened = Arc::clone(&opened);
        std::thread::scope(|scope| {
            let booting = scope.spawn(|| {
                let started = Instant::now();
                (Engine::connect(&settings), started)
            });
            // The scenario: the database is unreachable for three seconds.
            std::thread::sleep(Duration::from_secs(3));
            proxy.pass();
            *opened.lock().expect("lock") = Some(Instant::now());
            booting.join().expect("no panic")
        })
    };
    let (engine, started) = opener;
    let engine = engine.expect("boot succeeds once the database accepts connections");
    let took = started.elapsed();
    let opened_at = opened.lock().expect("lock").expect("opened");
    println!(
        "boot through a refusing proxy: up {:.2?} after the proxy opened",
        Instant::now() - opened_at
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_millis(5800),
        "{took:?}"
    );
    engine.ping().expect("the pool serves");

    let missing = through(
        &proxy,
        "dl_no_such_database",
        &[("DATABASE_CONNECT_DEADLINE", "10s")],
    );
    let started = Instant::now();
    let error = Engine::connect(&missing).expect_err("no such database");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let message = error.to_string();
    assert!(
        message.contains("database \"dl_no_such_database\" does not exist"),
        "{message}"
    );
    assert!(
        message.contains("create the database or fix DATABASE_NAME"),
        "{message}"
    );
}

/// One checkout-query-return, as a web handler does it.
fn handle(engine: &Engine) -> Result<(), Error> {
    let mut conn = engine.get()?;
    conn.batch_execute("SELECT 1")?;
    Ok(())
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    ok_after_fault: AtomicUsize,
    failures: AtomicUsize,
    /// Failures of requests that started before the fault began or after it was complete:
    /// at most the one in flight when it began (or, for a thread idle then, the first request
    /// on its parked connection, which nothing has found dead yet). Requests that started
    /// while the fault was being applied (the proxy closes connections one after another)
    /// were in flight during it, and may fail too.
    failures_outside: AtomicUsize,
    /// What each failure said, and whether it overlapped the fault, for the assertion.
    errors: Mutex<Vec<String>>,
}

/// Eight handler threads, a fault, and the assertions shared by the reset and terminate tests.
/// Returns how long after the fault the last thread succeeded again.
fn eight_threads_survive(engine: Engine, pool_timeout: Duration, fault: impl FnOnce()) -> Duration {
    let engine = Arc::new(engine);
    let stop = Arc::new(AtomicBool::new(false));
    let fault_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let fault_began: Arc<Mutex<Option<Instant>>> = Arc::default();
    let tallies: Vec<Arc<Tally>> = (0..8).map(|_| Arc::default()).collect();
    let threads: Vec<_> = tallies
        .iter()
        .map(|tally| {
            let (engine, stop, fault_at, fault_began, tally) = (
                Arc::clone(&engine),
                Arc::clone(&stop),
                Arc::clone(&fault_at),
                Arc::clone(&fault_began),
                Arc::clone(tally),
            );
            std::thread::spawn(move || {
                let mut recovered_at = None;
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Acquire) {
                    let started = Instant::now();
                    let result = handle(&engine);
                    slowest = slowest.max(started.elapsed());
                    let after_fault = fault_at
                        .lock()
                        .expect("lock")
                        .is_some_and(|at| started > at);
                    match result {
                        Ok(()) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            if after_fault {
                                tally.ok_after_fault.fetch_add(1, Ordering::Relaxed);
                                recovered_at.get_or_insert_with(Instant::now);
                            }
                        }
                        Err(error) => {
                            let began = *fault_began.lock().expect("lock");
                            let overlapped =
                                began.is_some_and(|began| started >= began) && !after_fault;
                            tally.failures.fetch_add(1, Ordering::Relaxed);
                            if !overlapped {
                                tally.failures_outside.fetch_add(1, Ordering::Relaxed);
                            }
                            let when = if overlapped {
                                "during the fault"
                            } else {
                                "outside"
                            };
                            tally
                                .errors
                                .lock()
                                .expect("lock")
                                .push(format!("{when}: {error}"));
                        }
                    }
                }
                (recovered_at, slowest)
            })
        })
        .collect();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for("every thread served", &|| {
        tallies.iter().all(|t| t.ok.load(Ordering::Relaxed) >= 5)
    });
    let at = Instant::now();
    *fault_began.lock().expect("lock") = Some(at);
    fault();
    *fault_at.lock().expect("lock") = Some(Instant::now());
    wait_for("every thread recovered", &|| {
        tallies
            .iter()
            .all(|t| t.ok_after_fault.load(Ordering::Relaxed) >= 3)
    });
    stop.store(true, Ordering::Release);
    let mut recovery = Duration::ZERO;
    for (thread, tally) in threads.into_iter().zip(&tallies) {
        let (recovered_at, slowest) = thread.join().expect("no panic");
        recovery = recovery.max(recovered_at.expect("recovered") - at);
        let outside = tally.failures_outside.load(Ordering::Relaxed);
        assert!(
            outside <= 1,
            "a thread failed {outside} times outside the fault: at most its in-flight request \
             may: {:?}",
            tally.errors.lock().expect("lock")
        );
        assert!(slowest <= pool_timeout, "a request took {slowest:?}");
    }
    let total: usize = tallies
        .iter()
        .map(|t| t.failures.load(Ordering::Relaxed))
        .sum();
    let outside: usize = tallies
        .iter()
        .map(|t| t.failures_outside.load(Ordering::Relaxed))
        .sum();
    println!(
        "recovered {recovery:.2?} after the fault; {total} request(s) of 8 threads failed, {} \
         of them started while the fault was being applied",
        total - outside
    );
    recovery
}

/// A connection dropped while it sat parked costs one request, not more: the failure marks it
/// dead, so it is not parked again, and the next request gets a working connection.
#[test]
fn a_connection_dropped_while_idle_fails_one_request_then_is_replaced() {
    let (_place, proxy, engine) = proxied("dl_idle_reset", "1");
    for round in 0..5 {
        handle(&engine).expect("served before the reset");
        proxy.reset_all();
        // Nothing has noticed the reset yet, and the connection answered within the validation
        // window, so this request may fail; the next ones must not.
        let first = handle(&engine);
        for _ in 0..3 {
            if let Err(error) = handle(&engine) {
                panic!("round {round}: a second request failed ({first:?} before): {error}");
            }
        }
    }
}

#[test]
fn a_reset_of_every_connection_under_load_costs_at_most_the_requests_in_flight() {
    let (_place, proxy, engine) = proxied("dl_reset", "8");
    let recovery = eight_threads_survive(engine, Duration::from_secs(3), || proxy.reset_all());
    assert!(recovery <= Duration::from_secs(2), "{recovery:?}");
}

#[test]
fn terminated_backends_under_load_cost_at_most_the_requests_in_flight() {
    let (_engine, place) = fresh_postgres("dl_terminate", &[]);
    let name = db_name(&place);
    let mut settings = postgres_settings(&name, &[("DATABASE_POOL_TIMEOUT", "3s")]);
    settings.pool.max_size = 8;
    let engine = Engine::connect(&settings).expect("connect");
    let recovery = eight_threads_survive(engine, Duration::from_secs(3), || {
        let terminated = admin()
            .query(&format!(
                "SELECT count(pg_terminate_backend(pid))::text FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ))
            .expect("terminate");
        assert_ne!(
            terminated.as_deref(),
            Some("0"),
            "there were backends to terminate"
        );
    });
    assert!(recovery <= Duration::from_secs(2), "{recovery:?}");
}

#[test]
fn an_exhausted_pool_names_its_holders_and_their_state() {
    let (_engine, place) = fresh_postgres("dl_holders", &[]);
    let mut settings = postgres_settings(&db_name(&place), &[("DATABASE_POOL_TIMEOUT", "1s")]);
    settings.pool.max_size = 2;
    let engine = Engine::connect(&settings).expect("connect");

    let mut in_transaction = engine.get().expect("checkout");
    in_transaction
        .batch_execute("BEGIN; SELECT 1")
        .expect("open a transaction");
    let sleeping_line = line!() + 1;
    let mut sleeping = engine.get().expect("checkout");
    let sleeping_pid = sleeping.backend_pid().expect("pid");
    let sleeper = std::thread::spawn(move || {
        let _ = sleeping.batch_execute("SELECT pg_sleep(30)");
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin()
        .query(&format!(
            "SELECT state FROM pg_stat_activity WHERE pid = {sleeping_pid}"
        ))
        .expect("state")
        .as_deref()
        != Some("active")
    {
        assert!(Instant::now() < deadline, "pg_sleep never started");
        std::thread::sleep(Duration::from_millis(5));
    }

    let started = Instant::now();
    let error = match engine.get() {
        Ok(_) => panic!("a third checkout from a pool of 2 succeeded"),
        Err(error) => error,
    };
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took <= Duration::from_millis(1100),
        "{took:?}"
    );
    let Error::PoolTimeout { holders, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(holders.len(), 2, "{error}");
    let here = file!();
    let transaction = holders
        .iter()
        .find(|h| h.state.as_deref() == Some("idle in transaction"))
        .unwrap_or_else(|| panic!("{error}"));
    assert!(transaction.site.starts_with(&format!("{here}:")), "{error}");
    let sleeping = holders
        .iter()
        .find(|h| h.backend_pid == Some(sleeping_pid))
        .unwrap_or_else(|| panic!("{error}"));
    assert!(
        sleeping
            .site
            .starts_with(&format!("{here}:{sleeping_line}:")),
        "{error}"
    );
    assert_eq!(
        sleeping.state.as_deref(),
        Some("active: SELECT pg_sleep(30)"),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("; held by: ") && message.contains("idle in transaction"),
        "{message}"
    );
    println!("{message}");

    admin()
        .query(&format!("SELECT pg_cancel_backend({sleeping_pid})"))
        .expect("cancel the sleep");
    sleeper.join().expect("no panic");
    drop(in_transaction);
}

#[test]
fn a_blackholed_query_fails_within_the_tcp_user_timeout_and_the_pool_recovers() {
    let (_engine, place) = fresh_postgres("dl_blackhole", &[]);
    let netns = Arc::new(Netns::create());
    let proxy = FaultProxy::start_in(upstream(), Arc::clone(&netns));
    let settings = through(
        &proxy,
        &db_name(&place),
        &[
            ("DATABASE_TCP_USER_TIMEOUT", "2s"),
            ("DATABASE_POOL_TIMEOUT", "5s"),
            ("DATABASE_POOL_MAX_SIZE", "2"),
        ],
    );
    let engine = Arc::new(Engine::connect(&settings).expect("connect through the namespace"));
    engine.ping().expect("serves before the fault");

    let mut conn = engine.get().expect("checkout");
    let query = std::thread::spawn(move || {
        let result = conn.batch_execute("SELECT pg_sleep(1)");
        (result, Instant::now())
    });
    // The scenario: the peer vanishes while the query runs.
    std::thread::sleep(Duration::from_millis(200));
    let cut_at = Instant::now();
    proxy.blackhole();
    let (result, failed_at) = query.join().expect("no panic");
    let failed_after = failed_at - cut_at;
    println!("blackholed query failed {failed_after:.2?} after the cut (tcp_user_timeout 2s)");
    let error = result.expect_err("the query cannot finish");
    assert!(
        failed_after <= Duration::from_secs(3),
        "{failed_after:?}: {error}"
    );

    proxy.pass();
    let started = Instant::now();
    handle(&engine).expect("the pool serves again without intervention");
    println!(
        "first query after the link came back: {:.2?}",
        started.elapsed()
    );
}

#[test]
fn a_connection_held_past_the_leak_threshold_is_reported_with_its_site() {
    let (engine, _dir) = crate::common::fresh_sqlite(&[]);
    let mut settings = engine.settings().clone();
    settings.pool.leak_threshold = Some(Duration::from_millis(50));
    let engine = Engine::connect(&settings).expect("open");
    let held_line = line!() + 2;
    let log = crate::common::logged(|| {
        let held = engine.get().expect("checkout");
        let quick = engine.get().expect("checkout");
        drop(quick);
        // Hold it past the 50 ms threshold.
        std::thread::sleep(Duration::from_millis(60));
        // The next checkout notices the overdue one, once.
        drop(engine.get().expect("checkout"));
        drop(engine.get().expect("checkout"));
        drop(held);
    });
    let site = format!("{}:{held_line}:", file!());
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the one held too long:\n{log}"
    );
    assert!(
        warnings[0].contains(&format!("checked out at {site}")),
        "{log}"
    );
    assert!(
        warnings[0].contains("DATABASE_POOL_LEAK_THRESHOLD"),
        "{log}"
    );
}

/// An outage: once the server has refused connections for the engine's grace (5 s: a
/// switchover's gap is ridden out, its requests wait for the new leader), a checkout fails at
/// once with the refusal (class Unavailable) instead of waiting out the 30 s pool timeout, so
/// request threads do not pile up; once the server accepts connections again, the pool serves
/// within about a second, outage after outage (r2d2's reconnect backoff grew to half the pool
/// timeout before: 10 s later from the third outage on).
#[test]
fn an_outage_fails_checkouts_fast_and_the_pool_comes_back_within_a_second() {
    const GRACE: Duration = Duration::from_secs(5);
    let (place, proxy) = (
        fresh_postgres("dl_outage", &[]).1,
        FaultProxy::start(upstream()),
    );
    let settings = through(
        &proxy,
        &db_name(&place),
        &[
            ("DATABASE_POOL_MAX_SIZE", "4"),
            ("DATABASE_POOL_TIMEOUT", "30s"),
        ],
    );
    let engine = Engine::connect(&settings).expect("connect");
    let mut recoveries = Vec::new();
    for outage in 1..=3 {
        engine
            .get()
            .expect("served before the outage")
            .batch_execute("SELECT 1")
            .expect("query");
        // No connection being opened while the proxy starts refusing: one it accepted just
        // before would survive the outage.
        crate::common::wait_for(
            "the pool holds its 4 connections",
            Duration::from_secs(10),
            || engine.state().connections == 4,
        );
        proxy.refuse();
        proxy.reset_all();
        let began = Instant::now();
        let (mut slowest, mut slowest_late, mut answered) = (Duration::ZERO, Duration::ZERO, 0);
        while began.elapsed() < GRACE + Duration::from_secs(2) {
            let asked = Instant::now();
            let error = match engine.get().map(|mut c| c.batch_execute("SELECT 1")) {
                Ok(Ok(())) => panic!("outage {outage}: served while the server refuses"),
                Ok(Err(e)) => Error::Database(e),
                Err(e) => e,
            };
            let took = asked.elapsed();
            slowest = slowest.max(took);
            if asked - began > GRACE + Duration::from_millis(500) {
                slowest_late = slowest_late.max(took);
            }
            answered += 1;
            assert_eq!(
                error.class(),
                datalayer::error::ErrorClass::Unavailable,
                "{error}"
            );
        }
        assert!(
            slowest < GRACE + Duration::from_secs(2),
            "outage {outage}: a checkout waited {slowest:.2?}, the pool timeout"
        );
        assert!(
            slowest_late < Duration::from_millis(500),
            "outage {outage}: past the grace, a checkout still waited {slowest_late:.2?}"
        );
        proxy.pass();
        let back = Instant::now();
        while engine
            .get()
            .and_then(|mut c| Ok(c.batch_execute("SELECT 1")?))
            .is_err()
        {
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "outage {outage}: never came back"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        recoveries.push(back.elapsed());
        println!(
            "outage {outage}: {answered} checkouts answered, slowest {slowest:.2?}, slowest past \
             the grace {slowest_late:.2?}; served again {:.2?} after the server accepted \
             connections",
            back.elapsed()
        );
    }
    // r2d2 retries at most 1 s apart; the rest is the attempt itself and a loaded machine.
    for (i, took) in recoveries.iter().enumerate() {
        assert!(
            *took < Duration::from_secs(2),
            "outage {}: back after {took:.2?}",
            i + 1
        );
    }
}
