//! Read replicas against real streaming replication: a primary and a replica made with
//! `pg_basebackup -R` on free ports; reads under load while the replica stops, comes back,
//! lags (replay paused) and catches up. Each test counts where reads went and how many failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use datalayer::{Engine, Settings};
use diesel::RunQueryDsl;
use diesel::connection::SimpleConnection;

use crate::cluster::Cluster;
use crate::common::{closed_port, fresh_postgres, query_text, run_cli, text, wait_for};

/// The lag check interval the tests run with.
const INTERVAL: Duration = Duration::from_millis(200);
const READERS: usize = 4;

#[derive(diesel::QueryableByName)]
struct Port {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    port: i32,
}

/// The port of the server a connection reached.
fn port_of(conn: &mut datalayer::Conn) -> Result<u16, String> {
    diesel::sql_query("SELECT inet_server_port() AS port")
        .get_result::<Port>(conn)
        .map(|row| u16::try_from(row.port).expect("a port"))
        .map_err(|e| e.to_string())
}

/// A primary with a `ticks` table, and its streaming replica.
fn primary_and_replica() -> (Cluster, Cluster) {
    let primary = Cluster::start();
    primary
        .admin()
        .query("CREATE TABLE ticks (id SERIAL PRIMARY KEY, at TIMESTAMPTZ DEFAULT now())")
        .expect("table");
    let replica = primary.replica();
    (primary, replica)
}

fn settings(primary: &Cluster, replica: &Cluster, extra: &[(&str, &str)]) -> Settings {
    let url = primary.url();
    let replica_port = replica.port.to_string();
    let interval = format!("{}ms", INTERVAL.as_millis());
    let mut pairs = vec![
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_POOL_MAX_SIZE", "4"),
        ("DATABASE_REPLICA_PORT", replica_port.as_str()),
        ("DATABASE_REPLICA_POOL_MAX_SIZE", "3"),
        ("DATABASE_REPLICA_CHECK_INTERVAL", interval.as_str()),
        ("DATABASE_REPLICA_MAX_LAG", "1s"),
    ];
    pairs.extend_from_slice(extra);
    Settings::from_pairs(pairs).expect("settings")
}

/// One read: when it started, and the port of the server that answered (`None`: it failed).
#[derive(Debug, Clone, Copy)]
struct Read {
    started: Instant,
    port: Option<u16>,
}

/// What each read asks: the server's port (a primary and a replica on ports of their own).
fn by_port(conn: &mut datalayer::Conn) -> Result<u16, String> {
    port_of(conn)
}

/// Reader threads, each doing a read about every 2 ms and logging it.
struct Reads {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Read>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Reads {
    fn start(engine: &Arc<Engine>) -> Reads {
        Reads::start_with(engine, by_port)
    }

    /// Readers whose reads are told apart by `probe`.
    fn start_with(
        engine: &Arc<Engine>,
        probe: fn(&mut datalayer::Conn) -> Result<u16, String>,
    ) -> Reads {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..READERS)
            .map(|_| {
                let (engine, stop, log) = (Arc::clone(engine), Arc::clone(&stop), Arc::clone(&log));
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(90);
                    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                        let started = Instant::now();
                        let port = engine
                            .read()
                            .map_err(|e| e.to_string())
                            .and_then(|mut conn| probe(&mut conn))
                            .ok();
                        log.lock().expect("log").push(Read { started, port });
                        // Pacing, so that four readers leave the two cores to the servers.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Reads { stop, log, threads }
    }

    /// The first read started at or after `since` that `port` served.
    fn first_on(&self, port: u16, since: Instant) -> Option<Instant> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|r| r.started >= since && r.port == Some(port))
            .map(|r| r.started)
            .min()
    }

    fn count(&self, matches: impl Fn(&Read) -> bool) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|r| matches(r))
            .count()
    }

    fn finish(self) -> Vec<Read> {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            thread.join().expect("reader");
        }
        Arc::try_unwrap(self.log)
            .map(|log| log.into_inner().expect("log"))
            .unwrap_or_default()
    }
}

#[test]
fn reads_leave_a_stopped_replica_for_the_primary_and_return_when_it_is_back() {
    let (primary, replica) = primary_and_replica();
    let engine = Arc::new(Engine::connect(&settings(&primary, &replica, &[])).expect("connect"));
    let state = engine.replica_state().expect("a replica is configured");
    assert!(state.serving, "checked once at connect: {state}");
    {
        let mut conn = engine.read().expect("a read connection");
        assert_eq!(port_of(&mut conn), Ok(replica.port));
        assert_eq!(
            query_text(
                &mut conn,
                "SELECT current_setting('default_transaction_read_only') AS value"
            ),
            "on"
        );
    }
    assert_eq!(port_of(&mut engine.get().expect("get")), Ok(primary.port));

    let reads = Reads::start(&engine);
    wait_for(
        "reads served by the replica",
        Duration::from_secs(30),
        || reads.count(|r| r.port == Some(replica.port)) > 100,
    );
    let stopping = Instant::now();
    replica.stop();
    let stopped = Instant::now();
    // Every read that starts a second after the replica stopped is the primary's.
    let settled = stopped + Duration::from_secs(1);
    wait_for(
        "reads a while after the stop",
        Duration::from_secs(20),
        || reads.count(|r| r.started >= settled + Duration::from_millis(300)) > 50,
    );
    let first_on_primary = reads
        .first_on(primary.port, stopping)
        .expect("the primary served reads");
    let late = reads.count(|r| r.started >= settled && r.port != Some(primary.port));
    let failed_at_stop = reads.count(|r| r.port.is_none());
    let state = engine.replica_state().expect("a replica");
    assert!(!state.serving && !state.reachable, "{state}");

    replica.start_again();
    let back = Instant::now();
    wait_for("reads back on the replica", Duration::from_secs(20), || {
        reads.first_on(replica.port, back).is_some()
    });
    let returned = reads
        .first_on(replica.port, back)
        .expect("on the replica")
        .saturating_duration_since(back);
    let log = reads.finish();
    let failed = log.iter().filter(|r| r.port.is_none()).count();
    println!(
        "replica stopped under {READERS} readers: {} reads, {failed} failed; the primary served \
         reads {:.0?} after the fast shutdown began (pg_ctl stop took {:.0?}); back on the \
         replica {returned:.0?} after pg_ctl start returned (check interval {INTERVAL:?})",
        log.len(),
        first_on_primary.saturating_duration_since(stopping),
        stopped.saturating_duration_since(stopping),
    );
    assert_eq!(
        late, 0,
        "reads that started 1 s after the stop went elsewhere"
    );
    assert!(
        failed_at_stop <= READERS && failed <= READERS,
        "at most the reads in flight when the replica stopped fail: {failed}"
    );
    assert!(
        returned <= INTERVAL * 2,
        "back on the replica within two check intervals: {returned:?}"
    );
}

#[test]
fn reads_leave_a_lagging_replica_and_return_when_it_catches_up() {
    let (primary, replica) = primary_and_replica();
    let engine = Arc::new(Engine::connect(&settings(&primary, &replica, &[])).expect("connect"));
    // Writes keep WAL flowing, so that a paused replay falls behind.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (engine, writing) = (Arc::clone(&engine), Arc::clone(&writing));
        std::thread::spawn(move || {
            while writing.load(Ordering::Acquire) {
                let mut conn = engine.get().expect("primary");
                conn.batch_execute("INSERT INTO ticks DEFAULT VALUES")
                    .expect("insert");
                drop(conn);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let reads = Reads::start(&engine);
    wait_for(
        "reads served by the replica",
        Duration::from_secs(30),
        || reads.count(|r| r.port == Some(replica.port)) > 100,
    );
    replica
        .admin()
        .query("SELECT pg_wal_replay_pause()")
        .expect("pause replay");
    let paused = Instant::now();
    wait_for(
        "reads leave the lagging replica",
        Duration::from_secs(10),
        || !engine.replica_state().expect("replica").serving,
    );
    let left = Instant::now();
    let state = engine.replica_state().expect("replica");
    assert!(
        state.reachable && state.lag.is_some_and(|lag| lag > Duration::from_secs(1)),
        "left for the lag, measured by the replica: {state}"
    );
    wait_for("reads while it lags", Duration::from_secs(10), || {
        reads.count(|r| r.started >= left) > 50
    });
    let stale = reads.count(|r| r.started >= left && r.port != Some(primary.port));

    replica
        .admin()
        .query("SELECT pg_wal_replay_resume()")
        .expect("resume replay");
    let resumed = Instant::now();
    wait_for("reads back on the replica", Duration::from_secs(10), || {
        reads.first_on(replica.port, resumed).is_some()
    });
    let returned = reads
        .first_on(replica.port, resumed)
        .expect("on the replica")
        .saturating_duration_since(resumed);
    let log = reads.finish();
    writing.store(false, Ordering::Release);
    writer.join().expect("writer");
    let failed = log.iter().filter(|r| r.port.is_none()).count();
    let left_after = left.saturating_duration_since(paused);
    println!(
        "replica lagging (DATABASE_REPLICA_MAX_LAG 1s, check every {INTERVAL:?}): reads left it \
         {left_after:.2?} after replay paused; back {returned:.0?} after replay resumed; {} \
         reads, {failed} failed; {} reads fell back",
        log.len(),
        engine.replica_state().expect("replica").fallbacks
    );
    assert_eq!(failed, 0, "a lagging replica fails no read");
    assert_eq!(stale, 0, "once it lags too far, no read goes to it");
    assert!(
        left_after >= Duration::from_millis(900)
            && left_after <= Duration::from_secs(1) + INTERVAL * 3,
        "left once the lag passed 1 s, at the next check: {left_after:?}"
    );
    assert!(
        returned <= INTERVAL * 2,
        "back within two check intervals: {returned:?}"
    );
}

/// 1 on a read-only session (the replica's), 0 otherwise.
fn by_read_only(conn: &mut datalayer::Conn) -> Result<u16, String> {
    #[derive(diesel::QueryableByName)]
    struct ReadOnly {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        read_only: bool,
    }
    diesel::sql_query("SELECT current_setting('default_transaction_read_only')::bool AS read_only")
        .get_result::<ReadOnly>(conn)
        .map(|row| u16::from(row.read_only))
        .map_err(|e| e.to_string())
}

#[test]
fn reads_leave_a_replica_that_vanishes_within_the_tcp_user_timeout() {
    use crate::netns::Netns;
    use crate::proxy::FaultProxy;
    // The "replica" is the test's own database reached through a proxy in a network
    // namespace whose link can be cut: packets dropped, no reset, no FIN. Its sessions are
    // read-only, which tells its reads apart.
    let (_, place) = fresh_postgres("replica_vanish", &[]);
    let db = match &place {
        crate::common::Place::Postgres(db) => db.name.clone(),
        crate::common::Place::Sqlite(_) => unreachable!("postgres"),
    };
    let netns = Arc::new(Netns::create());
    let proxy = FaultProxy::start_in(crate::resilience::upstream(), Arc::clone(&netns));
    let proxy_port = proxy.addr.port().to_string();
    let proxy_host = proxy.addr.ip().to_string();
    let interval = format!("{}ms", INTERVAL.as_millis());
    let settings = crate::common::postgres_settings(
        &db,
        &[
            ("DATABASE_SSLMODE", "disable"),
            ("DATABASE_TCP_USER_TIMEOUT", "2s"),
            ("DATABASE_CONNECT_TIMEOUT", "2s"),
            ("DATABASE_REPLICA_HOST", &proxy_host),
            ("DATABASE_REPLICA_PORT", &proxy_port),
            ("DATABASE_REPLICA_CHECK_INTERVAL", &interval),
            ("DATABASE_POOL_MAX_SIZE", "4"),
        ],
    );
    let engine = Arc::new(Engine::connect(&settings).expect("connect"));
    assert!(engine.replica_state().expect("replica").serving);
    let (replica, primary) = (1, 0);
    let reads = Reads::start_with(&engine, by_read_only);
    wait_for(
        "reads served by the replica",
        Duration::from_secs(30),
        || reads.count(|r| r.port == Some(replica)) > 100,
    );
    let cut = Instant::now();
    proxy.blackhole();
    let settled = cut + Duration::from_secs(3);
    wait_for("reads after the limit", Duration::from_secs(20), || {
        reads.count(|r| r.started >= settled + Duration::from_millis(300)) > 50
    });
    let first_on_primary = reads
        .first_on(primary, cut)
        .expect("the primary served reads")
        .saturating_duration_since(cut);
    let late = reads.count(|r| r.started >= settled && r.port != Some(primary));
    proxy.pass();
    let log = reads.finish();
    let failed = log.iter().filter(|r| r.port.is_none()).count();
    println!(
        "replica vanished (tcp_user_timeout 2s): the primary served reads {first_on_primary:.2?} \
         after the cut; {failed} reads failed (those in flight on the replica)"
    );
    assert_eq!(
        late, 0,
        "reads that started 2 s + 1 s after the cut went elsewhere"
    );
    assert!(failed <= READERS, "{failed} failed");
}

#[test]
fn an_unreachable_replica_sends_reads_to_the_primary_from_the_start() {
    let port = closed_port();
    let (engine, _db) = fresh_postgres(
        "replica_down",
        &[
            ("DATABASE_REPLICA_HOST", "127.0.0.1"),
            ("DATABASE_REPLICA_PORT", &port),
        ],
    );
    let state = engine.replica_state().expect("a replica is configured");
    assert!(!state.serving && !state.reachable, "{state}");
    assert!(
        state
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("cannot connect")),
        "{state}"
    );
    let mut conn = engine.read().expect("the primary serves the read");
    assert_eq!(
        query_text(
            &mut conn,
            "SELECT current_setting('default_transaction_read_only') AS value"
        ),
        "off"
    );
    conn.batch_execute("CREATE TABLE written_through_read (id int)")
        .expect("a primary connection writes");
    assert_eq!(engine.replica_state().expect("replica").fallbacks, 1);
}

#[test]
fn without_a_replica_read_is_get() {
    let (engine, _db) = fresh_postgres("no_replica", &[]);
    assert!(engine.replica_state().is_none());
    let mut conn = engine.read().expect("read");
    assert_eq!(
        query_text(
            &mut conn,
            "SELECT current_setting('default_transaction_read_only') AS value"
        ),
        "off"
    );
    let pid = conn.backend_pid();
    drop(conn);
    // The same pool: this thread's parked connection serves the next checkout of either kind.
    assert_eq!(engine.get().expect("get").backend_pid(), pid);
}

#[test]
fn replica_settings_are_checked_and_shown_redacted() {
    let problems = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        match Settings::from_pairs(pairs.iter().copied()) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .config_problems()
                .iter()
                .map(|p| (p.variable.clone(), p.message.clone()))
                .collect(),
        }
    };
    let named = |pairs: &[(&str, &str)]| -> Vec<String> {
        problems(pairs).into_iter().map(|(v, _)| v).collect()
    };
    assert_eq!(
        named(&[("DATABASE_REPLICA_PORT", "5433")]),
        ["DATABASE_REPLICA_PORT"],
        "a replica on SQLite"
    );
    let pg = ("DATABASE_HOST", "db");
    assert_eq!(
        named(&[pg, ("DATABASE_REPLICA_MAX_LAG", "2s")]),
        ["DATABASE_REPLICA_MAX_LAG"],
        "tuning without a replica"
    );
    assert_eq!(
        named(&[
            pg,
            ("DATABASE_REPLICA_URL", "postgres://r/app"),
            ("DATABASE_REPLICA_HOST", "r")
        ]),
        ["DATABASE_REPLICA_HOST"]
    );
    let sslmode = problems(&[
        pg,
        ("DATABASE_REPLICA_URL", "postgres://r/app?sslmode=disable"),
    ]);
    assert_eq!(sslmode.len(), 1, "{sslmode:?}");
    assert!(sslmode[0].1.contains("DATABASE_SSLMODE"), "{sslmode:?}");
    for (variable, value) in [
        ("DATABASE_REPLICA_MAX_LAG", "0"),
        ("DATABASE_REPLICA_CHECK_INTERVAL", "10ms"),
        ("DATABASE_REPLICA_POOL_MAX_SIZE", "0"),
        ("DATABASE_REPLICA_PORT", "70000"),
    ] {
        assert_eq!(
            named(&[pg, ("DATABASE_REPLICA_HOST", "r"), (variable, value)]),
            [variable]
        );
    }

    // The replica takes the primary's settings but its place, role, password and database;
    // `target_session_attrs=read-write` (how a multi-host primary URL finds the primary) is
    // not carried over.
    let settings = Settings::from_pairs([
        (
            "DATABASE_URL",
            "postgres://app:primary-pw@a:5432,b:5432/app?target_session_attrs=read-write",
        ),
        ("DATABASE_SSLMODE", "require"),
        (
            "DATABASE_REPLICA_URL",
            "postgres://reader:r%40pl%2Fpw@replica-1:6432,replica-2/app_ro",
        ),
        ("DATABASE_REPLICA_MAX_LAG", "250ms"),
    ])
    .expect("valid");
    let replica = settings.replica_settings().expect("a replica");
    let url = replica.connection_url();
    assert_eq!(
        url.redacted(),
        "postgres://reader:***@replica-1:6432,replica-2:6432/app_ro?sslmode=require&\
         application_name=it&connect_timeout=10&keepalives=1&keepalives_idle=1&\
         keepalives_interval=1&tcp_user_timeout=15000"
    );
    let parsed = crate::libpq::conninfo_parse(secrecy::ExposeSecret::expose_secret(&url))
        .expect("libpq parses it");
    assert_eq!(parsed["password"], b"r@pl/pw");
    assert_eq!(parsed["host"], b"replica-1,replica-2");
    assert!(!parsed.contains_key("target_session_attrs"));
    let shown = format!("{:?} {:?}", settings, settings.replica);
    assert!(
        !shown.contains("r@pl") && !shown.contains("pl%2Fpw"),
        "{shown}"
    );
    assert_eq!(
        settings.replica.as_ref().map(|r| r.max_lag),
        Some(Duration::from_millis(250))
    );

    // `datalayer config` lists it redacted; `check` fails (exit 3) when it is unreachable.
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        (
            "DATABASE_URL",
            format!("postgres://app:primary-pw@127.0.0.1:{}/app", closed_port()),
        ),
        (
            "DATABASE_REPLICA_URL",
            "postgres://reader:r%40pl%2Fpw@127.0.0.1:1/app".to_string(),
        ),
    ];
    let output = run_cli(dir.path(), &["config"], &env);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("DATABASE_REPLICA_URL")
            && stdout.contains("postgres://reader:***@127.0.0.1:1/app"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("r%40pl") && !stdout.contains("r@pl"),
        "{stdout}"
    );
}

#[test]
fn check_reports_the_replica_and_fails_when_it_cannot_be_reached() {
    let (primary, replica) = primary_and_replica();
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("DATABASE_URL", primary.url()),
        ("DATABASE_REPLICA_PORT", replica.port.to_string()),
    ];
    let output = run_cli(dir.path(), &["check"], &env);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "replica   postgres://postgres:***@127.0.0.1:{}/postgres",
            replica.port
        )) && stdout.contains("serving reads"),
        "{stdout}"
    );
    replica.stop();
    let output = run_cli(dir.path(), &["check"], &env);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("reads go to the primary") && stderr.contains("cannot connect"),
        "{stdout}{stderr}"
    );
    assert!(!format!("{stdout}{stderr}").contains(Cluster::PASSWORD));
}
