//! The example server through a Patroni switchover and a leader-node kill, as people run
//! PostgreSQL: etcd, two Patroni nodes in synchronous mode and HAProxy (`ha_stack`), reached
//! through HAProxy's primary port or through a multi-host URL, with HAProxy's replica port as
//! `DATABASE_REPLICA_URL`. Four client threads write posts all along.
//!
//! What must hold: every failed request is answered 503 (never 500, never left without an
//! answer); a switchover fails at most the requests in flight plus one per client thread;
//! writes are back within 2 s of Patroni reporting the new leader; no acknowledged write is
//! missing and none is applied twice; no connection of the primary pool stays on the demoted
//! node. Run with `--nocapture` for the timelines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ha_stack::{HaStack, Node};
use crate::server::{Running, start, stop, try_http};

const WRITERS: usize = 4;

/// One write, as its client saw it.
#[derive(Clone)]
struct Write {
    title: String,
    /// The HTTP status; 0 when no answer came.
    status: u16,
    /// The body, or why no answer came.
    said: String,
    retry_after: bool,
    started: Instant,
    ended: Instant,
}

struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Write>>>,
    log: Arc<std::sync::Mutex<Vec<Write>>>,
}

impl Load {
    fn start(addr: SocketAddr, author: i64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..WRITERS)
            .map(|thread| {
                let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for n in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let title = format!("w{thread}-{n}");
                        let body = format!(r#"{{"title":"{title}","body":"x"}}"#);
                        let started = Instant::now();
                        let reply = try_http(
                            addr,
                            "POST",
                            &format!("/users/{author}/posts"),
                            &body,
                            Duration::from_secs(60),
                        );
                        let write = Write {
                            title,
                            status: reply.as_ref().map_or(0, |r| r.status),
                            said: match &reply {
                                Ok(r) => r.body.clone(),
                                Err(e) => e.to_string(),
                            },
                            retry_after: reply
                                .as_ref()
                                .is_ok_and(|r| r.headers.contains("Retry-After: 1")),
                            started,
                            ended: Instant::now(),
                        };
                        let failed = write.status != 201;
                        log.lock().expect("log").push(write.clone());
                        mine.push(write);
                        if failed {
                            // A client's pause before its next request (shorter than the
                            // Retry-After it was given, to see when writes come back).
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                    mine
                })
            })
            .collect();
        Load { stop, threads, log }
    }

    fn writes(&self) -> Vec<Write> {
        self.log.lock().expect("log").clone()
    }

    /// Waits until `n` writes that started after `since` succeeded.
    fn wait_for_successes(&self, n: usize, since: Instant, what: &str) {
        crate::common::wait_for(what, Duration::from_secs(60), || {
            self.writes()
                .iter()
                .filter(|w| w.started >= since && w.status == 201)
                .count()
                >= n
        });
    }

    fn finish(self) -> Vec<Write> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("writer"))
            .collect()
    }
}

/// What an event did to the writes that ended after it began.
struct Timeline {
    event: &'static str,
    style: &'static str,
    failed: usize,
    total: usize,
    in_flight: usize,
    /// From the event's start to Patroni's new leader.
    leader_after: Duration,
    /// From the new leader to the first success after the last failure.
    back_after: Duration,
    longest_gap: Duration,
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "| {} | {} | {} of {} ({} in flight) | new leader after {:.2}s | writes back {:.2}s after it | longest gap {:.2}s |",
            self.event,
            self.style,
            self.failed,
            self.total,
            self.in_flight,
            self.leader_after.as_secs_f64(),
            self.back_after.as_secs_f64(),
            self.longest_gap.as_secs_f64()
        )
    }
}

/// Runs `event` under load, waits for Patroni's new leader and for writes to flow again,
/// and checks what the clients saw.
fn through(
    stack: &HaStack,
    load: &Load,
    event: &'static str,
    style: &'static str,
    act: impl FnOnce(Node),
) -> Timeline {
    let old = stack.leader().expect("a leader before the event");
    let new = old.other();
    let began = Instant::now();
    let in_flight = WRITERS; // every writer always has one request out
    act(old);
    let limit = Duration::from_secs(60);
    let leader_at = loop {
        if stack.is_leader(new) {
            break Instant::now();
        }
        assert!(
            began.elapsed() < limit,
            "{event}: no new leader within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Writes flow again: 50 successes that started after the new leader was reported.
    load.wait_for_successes(50, leader_at, &format!("{event}: writes come back"));
    let window: Vec<Write> = load
        .writes()
        .into_iter()
        .filter(|w| w.ended >= began)
        .collect();
    let failures: Vec<&Write> = window.iter().filter(|w| w.status != 201).collect();
    for failure in &failures {
        assert!(
            failure.status == 503 && failure.retry_after,
            "{event} ({style}): a failed write was answered {} (0: no answer), not 503 with \
             Retry-After: {}",
            failure.status,
            failure.said
        );
    }
    let last_failure = failures.iter().map(|w| w.ended).max();
    let back = window
        .iter()
        .filter(|w| w.status == 201 && last_failure.is_none_or(|last| w.started >= last))
        .map(|w| w.ended)
        .min()
        .expect("a success after the last failure");
    let mut successes: Vec<Instant> = window
        .iter()
        .filter(|w| w.status == 201)
        .map(|w| w.ended)
        .collect();
    successes.insert(0, began);
    successes.sort();
    let longest_gap = successes
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    Timeline {
        event,
        style,
        failed: failures.len(),
        total: window.len(),
        in_flight,
        leader_after: leader_at - began,
        back_after: back.saturating_duration_since(leader_at),
        longest_gap,
    }
}

/// The client connections of the example server's primary pool (user `postgres`; the replica
/// pool's is `reader`) on `node` (`usize::MAX`
/// while it cannot be asked).
fn primary_pool_connections(stack: &HaStack, node: Node) -> usize {
    let Ok(conn) = stack.try_connect(node) else {
        return usize::MAX;
    };
    conn.query(
        "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND application_name = 'blocking_server' \
             AND usename = 'postgres'",
    )
    .ok()
    .flatten()
    .and_then(|n| n.parse().ok())
    .unwrap_or(usize::MAX)
}

fn scenario(style: &'static str, url: impl Fn(&HaStack) -> String) {
    let stack = HaStack::start();
    // The replica pool logs in as a role of its own, so that the primary pool's connections
    // can be told apart on a node (both come through HAProxy from 127.0.0.1).
    stack
        .connect(Node::One)
        .query(
            "CREATE ROLE reader LOGIN; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO reader",
        )
        .expect("the replica's role");
    let replica_url = stack.replica_url().replacen("postgres@", "reader@", 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let running: Running = start(
        &[
            ("DATABASE_URL", url(&stack)),
            ("DATABASE_REPLICA_URL", replica_url),
            ("DATABASE_REPLICA_CHECK_INTERVAL", "200ms".into()),
        ],
        dir.path(),
    );
    let health = crate::server::http(running.addr, "GET", "/healthz", "").json();
    assert_eq!(
        health["replica"]["serving"], true,
        "reads go to the replica: {health}"
    );
    let author = crate::server::http(
        running.addr,
        "POST",
        "/users",
        r#"{"email":"ha@example.com","display_name":"HA"}"#,
    );
    assert_eq!(author.status, 201, "{}", author.body);
    let author = author.json()["id"].as_i64().expect("id");
    let load = Load::start(running.addr, author);
    load.wait_for_successes(100, Instant::now() - Duration::from_secs(60), "writes flow");

    let switchover = through(&stack, &load, "patronictl switchover", style, |_| {
        stack.switchover()
    });
    let demoted = stack.leader().expect("a leader").other();
    crate::common::wait_for(
        "no connection of the primary pool stays on the demoted node",
        Duration::from_secs(10),
        || primary_pool_connections(&stack, demoted) == 0,
    );
    assert!(
        switchover.failed <= switchover.in_flight + WRITERS,
        "a switchover fails at most the writes in flight plus one per client thread: {switchover}"
    );
    assert!(
        switchover.back_after <= Duration::from_secs(2),
        "writes back within 2 s of the new leader: {switchover}"
    );

    crate::common::wait_for(
        "the demoted node is the synchronous standby again",
        Duration::from_secs(60),
        || stack.is_whole(),
    );
    let kill = through(&stack, &load, "leader killed (SIGKILL)", style, |leader| {
        stack.kill(leader)
    });
    assert!(
        kill.back_after <= Duration::from_secs(2),
        "writes back within 2 s of the new leader: {kill}"
    );
    let writes = load.finish();

    // Every acknowledged write is on the leader, once; nothing was written twice.
    let leader = stack.leader().expect("a leader");
    let rows = stack
        .connect(leader)
        .query(
            "SELECT string_agg(title || ' ' || n, ',') FROM \
             (SELECT title, count(*) AS n FROM posts GROUP BY title) AS t",
        )
        .expect("posts")
        .unwrap_or_default();
    let counts: std::collections::HashMap<String, i64> = rows
        .split(',')
        .filter_map(|row| row.split_once(' '))
        .map(|(title, n)| (title.to_string(), n.parse().expect("count")))
        .collect();
    let acknowledged: Vec<&Write> = writes.iter().filter(|w| w.status == 201).collect();
    for write in &acknowledged {
        assert_eq!(
            counts.get(&write.title),
            Some(&1),
            "acknowledged write {} is on the new leader once",
            write.title
        );
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "applied twice: {twice:?}");
    println!("{switchover}\n{kill}");
    println!(
        "{style}: {} writes, {} acknowledged, all present once",
        writes.len(),
        acknowledged.len()
    );
    stop(running);
}

#[test]
fn the_example_server_through_a_switchover_and_a_leader_kill_behind_haproxy() {
    scenario("HAProxy primary port", HaStack::primary_url);
}

#[test]
fn the_example_server_through_a_switchover_and_a_leader_kill_with_a_multi_host_url() {
    scenario(
        "multi-host URL, target_session_attrs=read-write",
        HaStack::multi_host_url,
    );
}
