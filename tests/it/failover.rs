//! Failover against real streaming replication: a primary and a replica (`pg_basebackup -R`),
//! writes running, the replica promoted and the old primary stopped.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datalayer::{Engine, Settings};
use diesel::connection::SimpleConnection;

use crate::cluster::Cluster;

#[test]
fn writes_follow_a_promoted_replica_with_few_failures() {
    let primary = Cluster::start();
    primary
        .admin()
        .query("CREATE TABLE events (id SERIAL PRIMARY KEY, at TIMESTAMPTZ DEFAULT now())")
        .expect("table");
    let replica = primary.replica();
    let url = primary.failover_url(&replica);
    let settings = Settings::from_pairs([
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_POOL_MAX_SIZE", "4"),
        ("DATABASE_POOL_TIMEOUT", "20s"),
    ])
    .expect("settings");
    let engine = Arc::new(Engine::connect(&settings).expect("connect to the primary"));

    // Four writers, one insert after another, recording failures and the last success.
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, written) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // When the promotion returned, and the first write that succeeded after it.
    let promoted_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let first_after: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (engine, stop, failed, written) = (
                Arc::clone(&engine),
                Arc::clone(&stop),
                Arc::clone(&failed),
                Arc::clone(&written),
            );
            let (promoted_at, first_after) = (Arc::clone(&promoted_at), Arc::clone(&first_after));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                    let result = engine
                        .get()
                        .map_err(|e| e.to_string())
                        .and_then(|mut conn| {
                            conn.batch_execute("INSERT INTO events DEFAULT VALUES")
                                .map_err(|e| e.to_string())
                        });
                    match result {
                        Ok(()) => {
                            written.fetch_add(1, Ordering::AcqRel);
                            let promoted = promoted_at.lock().map(|p| p.is_some()).unwrap_or(false);
                            if promoted && let Ok(mut first) = first_after.lock() {
                                first.get_or_insert_with(Instant::now);
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                }
            })
        })
        .collect();
    let wait_for = |what: &str, condition: &dyn Fn() -> bool| {
        crate::common::wait_for(what, Duration::from_secs(30), condition)
    };
    wait_for("writes run", &|| written.load(Ordering::Acquire) > 200);

    primary.stop();
    replica.promote();
    *promoted_at.lock().expect("lock") = Some(Instant::now());
    wait_for("writes succeed on the promoted replica", &|| {
        first_after.lock().is_ok_and(|first| first.is_some())
    });
    let resumed = first_after
        .lock()
        .expect("lock")
        .zip(*promoted_at.lock().expect("lock"))
        .map(|(first, promoted)| first.saturating_duration_since(promoted))
        .expect("both instants");
    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.join().expect("writer");
    }
    let failures = failed.load(Ordering::Acquire);
    println!(
        "failover: {failures} failed requests, writes succeeded again by {resumed:.2?} after the \
         promotion returned"
    );
    assert!(
        failures <= 8,
        "at most those in flight, plus one per thread: {failures}"
    );
}
