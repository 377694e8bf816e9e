//! The example blocking server, built by `cargo test` like every example, driven over real
//! HTTP against a fresh PostgreSQL database (through the fault proxy, to take the database
//! away) and a SQLite file.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Place, fresh_postgres};
use crate::proxy::FaultProxy;

/// The example server's binary, built now: `cargo test` compiles examples under hashed names
/// and does not refresh `target/debug/examples/blocking_server`, so a test could otherwise run
/// a stale one (cargo only takes a moment when it is current).
fn server_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "blocking_server"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build --example blocking_server");
        assert!(status.success(), "the example server does not build");
    });
    let exe = std::env::current_exe().expect("test binary path");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug");
    let binary = debug.join("examples/blocking_server");
    assert!(
        binary.is_file(),
        "{} is built by `cargo test`",
        binary.display()
    );
    binary
}

pub(crate) struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

pub(crate) fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    try_http(addr, method, path, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// One request; an error when the connection fails or no whole response arrives in `limit`.
pub(crate) fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    limit: Duration,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, limit)?;
    stream.set_read_timeout(Some(limit))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Reply {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    })
}

pub(crate) struct Running {
    child: Child,
    pub addr: SocketAddr,
    /// The server's stderr, read as it comes: a pipe nobody reads fills up and blocks the
    /// server's threads on their next log line.
    log: Option<JoinHandle<String>>,
}

pub(crate) fn start(env: &[(&str, String)], dir: &std::path::Path) -> Running {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut command = Command::new(server_binary());
    command
        .args(["--listen", &addr.to_string()])
        .current_dir(dir)
        .env_clear();
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = crate::common::stops_with_this_thread(&mut command)
        .spawn()
        .expect("start the server");
    let mut pipe = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = pipe.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let mut running = Running {
        child,
        addr,
        log: Some(log),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = running.child.try_wait() {
            let stderr = running.log.take().map(|log| log.join().unwrap_or_default());
            panic!(
                "the server exited ({status}) before it listened:\n{}",
                stderr.unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

pub(crate) fn stop(mut running: Running) -> String {
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(running.child.id() as libc::pid_t, libc::SIGTERM) };
    let status = running.child.wait().expect("wait");
    let stderr = running
        .log
        .take()
        .map(|log| log.join().unwrap_or_default())
        .unwrap_or_default();
    assert!(status.success(), "{stderr}");
    stderr
}

/// The API, as a client sees it.
fn exercise(addr: SocketAddr) {
    let health = http(addr, "GET", "/healthz", "");
    assert_eq!(health.status, 200, "{}", health.body);
    // The boot's drift check runs in the background; once done, it found nothing.
    crate::common::wait_for(
        "/healthz reports the finished drift check",
        Duration::from_secs(10),
        || http(addr, "GET", "/healthz", "").json()["schema_drift"] != "running",
    );
    assert_eq!(
        http(addr, "GET", "/healthz", "").json()["schema_drift"],
        serde_json::json!([])
    );
    let created = http(
        addr,
        "POST",
        "/users",
        r#"{"email":"ada@example.com","display_name":"Ada"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_i64().expect("an id");
    assert_eq!(created.json()["display_name"], "Ada");
    assert_eq!(
        http(
            addr,
            "POST",
            "/users",
            r#"{"email":"ada@example.com","display_name":"A"}"#
        )
        .status,
        409
    );
    let bad = http(addr, "POST", "/users", "{not json");
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid JSON")
    );
    let missing = http(addr, "POST", "/users", r#"{"email":"x@example.com"}"#);
    assert_eq!(missing.status, 400);
    assert!(missing.body.contains("display_name"), "{}", missing.body);
    assert_eq!(
        http(addr, "GET", &format!("/users/{id}"), "").json()["email"],
        "ada@example.com"
    );
    assert_eq!(http(addr, "GET", "/users/999999", "").status, 404);
    assert_eq!(http(addr, "GET", "/users/abc", "").status, 404);
    for title in ["one", "two", "three"] {
        let post = http(
            addr,
            "POST",
            &format!("/users/{id}/posts"),
            &format!(r#"{{"title":"{title}","body":"…"}}"#),
        );
        assert_eq!(post.status, 201, "{}", post.body);
    }
    assert_eq!(
        http(
            addr,
            "POST",
            "/users/999999/posts",
            r#"{"title":"t","body":"b"}"#
        )
        .status,
        404
    );
    let first = http(addr, "GET", &format!("/users/{id}/posts?limit=2"), "").json();
    assert_eq!(first["posts"].as_array().map(Vec::len), Some(2), "{first}");
    assert_eq!(first["posts"][0]["title"], "three", "newest first");
    let next = first["next"].as_str().expect("a next cursor");
    let second = http(
        addr,
        "GET",
        &format!("/users/{id}/posts?limit=2&after={next}"),
        "",
    )
    .json();
    assert_eq!(
        second["posts"].as_array().map(Vec::len),
        Some(1),
        "{second}"
    );
    assert_eq!(second["posts"][0]["title"], "one");
    assert!(second["next"].is_null());
    assert_eq!(
        http(addr, "GET", &format!("/users/{id}/posts?after=garbage"), "").status,
        400
    );
    let metrics = http(addr, "GET", "/metrics", "");
    assert_eq!(metrics.status, 200);
    // OpenTelemetry's names, as Prometheus writes them (dots become underscores).
    for line in [
        "# TYPE datalayer_pool_checkouts counter\n",
        "datalayer_pool_checkouts{db_client_connection_pool_name=\"",
        "# TYPE db_client_connection_count gauge\n",
        "db_client_connection_state=\"used\"",
        "db_client_connection_state=\"idle\"",
        "# TYPE db_client_connection_wait_time summary\n",
        "# TYPE db_client_connection_use_time summary\n",
        "db_client_connection_max{",
        "db_client_connection_pending_requests{",
    ] {
        assert!(
            metrics.body.contains(line),
            "{line:?} missing from: {}",
            metrics.body
        );
    }
    assert_eq!(http(addr, "GET", "/livez", "").status, 200);
    assert_eq!(http(addr, "GET", "/readyz", "").status, 200);
    assert_eq!(http(addr, "GET", "/nowhere", "").status, 404);
}

#[test]
fn the_example_server_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A misspelt setting: the server prints the command line's configuration warnings.
    let running = start(&[("DATABASE_POOL_MAXSIZE", "3".into())], dir.path());
    exercise(running.addr);
    let stderr = stop(running);
    assert!(
        stderr.contains("warning: DATABASE_POOL_MAXSIZE is not a datalayer setting"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stopped; 0 connection(s) were still checked out"),
        "{stderr}"
    );
    assert!(dir.path().join("data/datalayer.sqlite3").is_file());
}

#[test]
fn the_example_server_on_postgres_answers_503_when_the_database_goes_away() {
    let (_engine, place) = fresh_postgres("dl_server", &[]);
    let Place::Postgres(db) = &place else {
        unreachable!()
    };
    let proxy = FaultProxy::start(crate::resilience::upstream());
    let url = format!(
        "postgres://postgres:CNRY7f3a@{}/{}?sslmode=disable",
        proxy.addr, db.name
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(
        &[
            ("DATABASE_URL", url),
            ("DATABASE_POOL_TIMEOUT", "1s".into()),
        ],
        dir.path(),
    );
    exercise(running.addr);

    proxy.refuse();
    proxy.reset_all();
    let down = http(running.addr, "GET", "/healthz", "");
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down.headers.contains("Retry-After: 1"), "{}", down.headers);
    let write = http(
        running.addr,
        "POST",
        "/users",
        r#"{"email":"b@example.com","display_name":"B"}"#,
    );
    assert_eq!(write.status, 503, "{}", write.body);
    proxy.pass();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(running.addr, "GET", "/healthz", "").status != 200 {
        assert!(Instant::now() < deadline, "the server never recovered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = stop(running);
    assert!(
        !stderr.contains("CNRY7f3a"),
        "the password never reaches the log:\n{stderr}"
    );
}

/// Sends `raw` and reads the whole response (the server closes every connection).
fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _ = stream.write_all(raw);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Reply {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        headers: head.to_string(),
        body: body.to_string(),
    }
}

/// The server's resident memory, in kB (Linux).
fn rss_kb(child: &Child) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .expect("/proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn the_example_server_holds_against_oversized_slow_and_nul_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(&[("SERVER_REQUEST_TIMEOUT", "2".into())], dir.path());
    let addr = running.addr;
    assert_eq!(http(addr, "GET", "/healthz", "").status, 200);
    let before = rss_kb(&running.child);

    // A huge Content-Length, then a disconnect before any body: tiny_http allocated it all.
    {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .write_all(b"POST /users HTTP/1.1\r\nContent-Length: 99999999999999\r\n\r\n")
            .expect("send");
    }
    let huge = raw_exchange(
        addr,
        b"POST /users HTTP/1.1\r\nContent-Length: 99999999999999\r\n\r\n",
    );
    assert_eq!(huge.status, 413, "{}", huge.body);
    // 100 MB of real body: refused before it is read, so the server does not grow.
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(b"POST /users HTTP/1.1\r\nContent-Length: 104857600\r\n\r\n")
        .expect("send");
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        if stream.write_all(&chunk).is_err() {
            break; // the server answered 413 and closed
        }
    }
    drop(stream);
    let after = rss_kb(&running.child);
    println!("server memory: {before} kB before, {after} kB after the 100 MB body");
    assert!(after < before + 16 * 1024, "{before} kB -> {after} kB");
    assert_eq!(
        http(addr, "GET", "/healthz", "").status,
        200,
        "still serving"
    );

    // Ten clients that send half a body and stall: health checks still answer at once.
    let stalled: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream
                .write_all(b"POST /users HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"email\":")
                .expect("send");
            stream
        })
        .collect();
    let health = http(addr, "GET", "/healthz", "");
    assert_eq!(health.status, 200, "{}", health.body);
    for mut stream in stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
    }

    // A NUL in a field: PostgreSQL would refuse it; the client learns which field.
    let nul = http(
        addr,
        "POST",
        "/users",
        r#"{"email":"ada\u0000@example.com","display_name":"Ada"}"#,
    );
    assert_eq!(nul.status, 400, "{}", nul.body);
    assert!(
        nul.body.contains("`email` must not contain NUL"),
        "{}",
        nul.body
    );
    let chunked = raw_exchange(
        addr,
        b"POST /users HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(chunked.status, 411, "{}", chunked.body);
    stop(running);
}

#[test]
fn the_example_server_behind_pgbouncer_in_transaction_mode() {
    let db = crate::common::TestDb::create(&crate::common::unique_name("dl_server_pgb"), None);
    let bouncer = crate::pgbouncer::PgBouncer::start(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(
        &[
            ("DATABASE_URL", bouncer.url(&db.name)),
            ("DATABASE_POOLER", "transaction".into()),
            (
                "DATABASE_MIGRATION_URL",
                crate::common::database_url(&db.name),
            ),
        ],
        dir.path(),
    );
    exercise(running.addr);
    stop(running);
}

#[test]
fn the_example_servers_healthz_says_503_during_a_failover_and_200_after() {
    use crate::cluster::Cluster;
    let primary = Cluster::start();
    let replica = primary.replica();
    let url = primary.failover_url(&replica);
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(
        &[
            ("DATABASE_URL", url),
            ("DATABASE_POOL_TIMEOUT", "10s".into()),
        ],
        dir.path(),
    );
    assert_eq!(http(running.addr, "GET", "/healthz", "").status, 200);

    // The gap: the primary is gone and the standby is not promoted yet; nothing takes writes.
    primary.stop();
    let stopped = Instant::now();
    crate::common::wait_for(
        "/healthz says 503 while no node accepts writes",
        Duration::from_secs(10),
        || http(running.addr, "GET", "/healthz", "").status == 503,
    );
    let first_503 = stopped.elapsed();
    let during = http(running.addr, "GET", "/healthz", "");
    assert_eq!(during.status, 503, "{}", during.body);
    assert!(
        during.headers.contains("Retry-After: 1"),
        "{}",
        during.headers
    );

    replica.promote();
    let promoted = Instant::now();
    crate::common::wait_for(
        "/healthz says 200 once the promoted node accepts writes",
        Duration::from_secs(10),
        || http(running.addr, "GET", "/healthz", "").status == 200,
    );
    let back = promoted.elapsed();
    let write = http(
        running.addr,
        "POST",
        "/users",
        r#"{"email":"after@example.com","display_name":"After"}"#,
    );
    assert_eq!(write.status, 201, "{}", write.body);
    println!(
        "failover behind the example server: /healthz 503 {first_503:.2?} after the primary \
         stopped; 200 {back:.2?} after the promotion returned"
    );
    assert!(back <= Duration::from_secs(2), "{back:?}");
    stop(running);
}

#[test]
fn the_example_server_reports_its_read_replica_in_healthz_and_metrics() {
    use crate::cluster::Cluster;
    let primary = Cluster::start();
    let replica = primary.replica();
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(
        &[
            ("DATABASE_URL", primary.url()),
            ("DATABASE_REPLICA_PORT", replica.port.to_string()),
            ("DATABASE_REPLICA_CHECK_INTERVAL", "100ms".into()),
        ],
        dir.path(),
    );
    let health = http(running.addr, "GET", "/healthz", "");
    assert_eq!(health.status, 200, "{}", health.body);
    let body = health.json();
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["replica"]["serving"], true, "{body}");
    let target = body["replica"]["target"].as_str().unwrap_or_default();
    assert!(
        target.contains(&format!(":{}/", replica.port)) && target.contains("***"),
        "{body}"
    );
    // Reads go to the replica; a user written on the primary shows once replayed.
    let created = http(
        running.addr,
        "POST",
        "/users",
        r#"{"email":"r@example.com","display_name":"R"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_i64().expect("id");
    crate::common::wait_for(
        "the replica replays the write",
        Duration::from_secs(10),
        || http(running.addr, "GET", &format!("/users/{id}"), "").status == 200,
    );
    let metrics = http(running.addr, "GET", "/metrics", "").body;
    let up = metrics
        .lines()
        .find(|l| l.starts_with("datalayer_replica_up{"))
        .unwrap_or_else(|| panic!("no datalayer_replica_up in:\n{metrics}"));
    assert!(
        up.contains(&format!(":{}\"", replica.port)) && up.ends_with(" 1"),
        "{up}"
    );

    replica.stop();
    crate::common::wait_for(
        "/healthz says degraded once the replica is gone",
        Duration::from_secs(10),
        || http(running.addr, "GET", "/healthz", "").json()["status"] == "degraded",
    );
    let read = http(running.addr, "GET", &format!("/users/{id}"), "");
    assert_eq!(
        read.status, 200,
        "reads fall back to the primary: {}",
        read.body
    );
    stop(running);
}

#[test]
fn the_example_server_answers_each_error_class_with_its_status() {
    let (_engine, place) = fresh_postgres("dl_server_classes", &[]);
    let Place::Postgres(db) = &place else {
        unreachable!()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(
        &[("DATABASE_URL", crate::common::database_url(&db.name))],
        dir.path(),
    );
    let created = http(
        running.addr,
        "POST",
        "/users",
        r#"{"email":"a@example.com","display_name":"A"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    // A duplicate is the request's fault: 409, and no Retry-After.
    let taken = http(
        running.addr,
        "POST",
        "/users",
        r#"{"email":"a@example.com","display_name":"A"}"#,
    );
    assert_eq!(taken.status, 409, "{}", taken.body);
    assert!(!taken.headers.contains("Retry-After"), "{}", taken.headers);
    // A database that refuses writes, as a switchover's demoted primary does (25006):
    // unavailable, retry later.
    let admin = crate::common::admin();
    admin
        .query(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            crate::libpq::quote_ident(&db.name)
        ))
        .expect("read-only");
    admin
        .query(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            db.name
        ))
        .expect("new sessions see it");
    let mut refused = None;
    for attempt in 0..3 {
        // The first request after the termination may meet a terminated connection: that
        // is unavailable too.
        let reply = http(
            running.addr,
            "POST",
            "/users",
            &format!(r#"{{"email":"b{attempt}@example.com","display_name":"B"}}"#),
        );
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(
            reply.headers.contains("Retry-After: 1"),
            "{}",
            reply.headers
        );
        refused = Some(reply);
    }
    let refused = refused.expect("three replies");
    assert_eq!(
        refused.json()["error"],
        "the database is unavailable; retry shortly"
    );
    let read = http(running.addr, "GET", "/users/1", "");
    assert_eq!(read.status, 200, "reads still work: {}", read.body);
    let stderr = stop(running);
    assert!(
        stderr.contains("read-only transaction"),
        "the log says why: {stderr}"
    );
}

#[test]
fn the_example_server_refuses_a_request_timeout_it_cannot_hold() {
    let dir = tempfile::tempdir().expect("temp dir");
    for value in ["1e300", "1e19", "-1", "0", "ten"] {
        let output = Command::new(server_binary())
            .args(["--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env_clear()
            .env("SERVER_REQUEST_TIMEOUT", value)
            .output()
            .expect("run the server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{value}: {stderr}");
        assert!(
            stderr.contains("SERVER_REQUEST_TIMEOUT") && !stderr.contains("panicked"),
            "{value}: {stderr}"
        );
    }
}

#[test]
fn the_example_server_refuses_ambiguous_lengths_and_cursors_out_of_range() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(&[], dir.path());
    let addr = running.addr;
    for raw in [
        &b"POST /users HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}"[..],
        &b"POST /users HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}"[..],
        &b"POST /users HTTP/1.1\r\nContent-Length: 2 \x0b\r\n\r\n{}"[..],
    ] {
        let reply = raw_exchange(addr, raw);
        assert_eq!(
            reply.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(raw),
            reply.body
        );
    }
    let user = http(
        addr,
        "POST",
        "/users",
        r#"{"email":"c@example.com","display_name":"C"}"#,
    );
    let id = user.json()["id"].as_i64().expect("id");
    for cursor in ["-8000000000000000000.1", "253402300800000000.1", "x.1"] {
        let reply = http(
            addr,
            "GET",
            &format!("/users/{id}/posts?after={cursor}"),
            "",
        );
        assert_eq!(reply.status, 400, "{cursor}: {}", reply.body);
    }
    stop(running);
}
