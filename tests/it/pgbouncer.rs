//! The engine behind PgBouncer in transaction mode (Debian's pgbouncer, started here on a free
//! port in front of the shared cluster, stopped on drop, or by the kernel when the test's
//! thread ends without dropping it).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blog::models::posts::{self, NewPost};
use blog::models::users::{self, NewUser, UserChanges};
use datalayer::{Engine, Error, Settings};

use crate::common::{TestDb, unique_name};

/// A PgBouncer in transaction mode with `pool_size` server connections per database.
pub struct PgBouncer {
    child: Child,
    _dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl PgBouncer {
    pub fn start(pool_size: u32) -> PgBouncer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(path("users.txt"), "\"postgres\" \"\"\n").expect("users");
        std::fs::write(
            path("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port=5432\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 200\n\
                 ignore_startup_parameters = extra_float_digits\nlogfile = {}\npidfile = {}\n",
                path("users.txt"),
                path("pgbouncer.log"),
                path("pgbouncer.pid")
            ),
        )
        .expect("config");
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown (the tests run as root)");
        // As `postgres` (PgBouncer refuses root), directly rather than through runuser: a
        // runuser whose pgbouncer was signalled stayed behind.
        let mut command = Command::new("pgbouncer");
        command
            .arg(path("pgbouncer.ini"))
            .uid(postgres_id("-u"))
            .gid(postgres_id("-g"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = crate::common::stops_with_this_thread(&mut command)
            .spawn()
            .expect("pgbouncer (apt-get install pgbouncer; ./scripts/test does)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let bouncer = PgBouncer {
            child,
            _dir: dir,
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    /// The URL of `database` through this PgBouncer.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@{}/{database}?sslmode=disable",
            self.addr
        )
    }
}

/// The `postgres` system user's uid (`-u`) or gid (`-g`), as `id` tells.
fn postgres_id(which: &str) -> u32 {
    let output = Command::new("id")
        .args([which, "postgres"])
        .output()
        .expect("id");
    assert!(
        output.status.success(),
        "no postgres user: install postgresql"
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("a numeric id")
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn engine(bouncer: &PgBouncer, db: &TestDb, extra: &[(&str, String)]) -> Result<Engine, Error> {
    let mut pairs = vec![
        ("DATABASE_URL", bouncer.url(&db.name)),
        ("DATABASE_POOL_MAX_SIZE", "8".to_string()),
    ];
    pairs.extend(extra.iter().cloned());
    Engine::connect(&Settings::from_pairs(pairs)?)
}

fn direct_url(db: &TestDb) -> String {
    crate::common::database_url(&db.name)
}

/// Every model query, from 8 threads at once, for users whose emails start with `prefix`;
/// the errors met.
fn workload(engine: &Arc<Engine>, prefix: &str) -> Vec<String> {
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let engine = Arc::clone(engine);
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                for i in 0..20 {
                    let email = format!("{prefix}{t}-{i}@example.com");
                    let run = || -> Result<(), Box<dyn std::error::Error>> {
                        let mut conn = engine.get()?;
                        let user = users::create(
                            &mut conn,
                            &NewUser {
                                email: &email,
                                display_name: "U",
                            },
                        )?;
                        drop(conn);
                        let mut conn = engine.get()?;
                        users::find(&mut conn, user.id)?.ok_or("found")?;
                        users::find_by_email(&mut conn, &email)?.ok_or("found by email")?;
                        users::update(
                            &mut conn,
                            user.id,
                            &UserChanges {
                                display_name: Some("V"),
                                ..Default::default()
                            },
                        )?;
                        posts::create(
                            &mut conn,
                            &NewPost {
                                author_id: user.id,
                                title: "t",
                                body: "b",
                            },
                        )?;
                        posts::list_by_author(&mut conn, user.id, None, 10)?;
                        users::count(&mut conn)?;
                        Ok(())
                    };
                    if let Err(e) = run() {
                        errors.push(e.to_string());
                    }
                }
                errors
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect()
}

#[test]
fn every_model_query_works_through_pgbouncer_in_transaction_mode() {
    let db = TestDb::create(&unique_name("dl_pgbouncer"), None);
    let bouncer = PgBouncer::start(2);
    let migrated = engine(
        &bouncer,
        &db,
        &[
            ("DATABASE_POOLER", "transaction".into()),
            ("DATABASE_MIGRATION_URL", direct_url(&db)),
        ],
    )
    .expect("connect through pgbouncer");
    blog::models::migrator()
        .boot(&migrated)
        .expect("migrations over the direct URL");
    let engine = Arc::new(migrated);
    let errors = workload(&engine, "u");
    assert!(errors.is_empty(), "{} failed: {errors:?}", errors.len());

    // The same without DATABASE_POOLER: named prepared statements meet other clients' server
    // connections, which is what the setting prevents. Whether a statement prepared on one
    // server connection is run on another depends on the timing, so the workload runs again
    // (new users each time) until it happens, at most ten times.
    let naive = Arc::new(engine_without_pooler(&bouncer, &db));
    let mut errors = Vec::new();
    for round in 0..10 {
        errors = workload(&naive, &format!("naive{round}-"));
        if errors.iter().any(|e| e.contains("prepared statement")) {
            break;
        }
    }
    assert!(
        errors.iter().any(|e| e.contains("prepared statement")),
        "named statements should break under transaction pooling: {errors:?}"
    );
}

fn engine_without_pooler(bouncer: &PgBouncer, db: &TestDb) -> Engine {
    engine(bouncer, db, &[]).expect("connect")
}

#[test]
fn migrations_never_take_their_session_lock_through_the_pooler() {
    let db = TestDb::create(&unique_name("dl_pgbouncer_mig"), None);
    let bouncer = PgBouncer::start(2);
    let pooled =
        engine(&bouncer, &db, &[("DATABASE_POOLER", "transaction".into())]).expect("connect");
    let error = blog::models::migrator()
        .boot(&pooled)
        .expect_err("no direct URL");
    let Error::Config(problems) = &error else {
        panic!("expected a configuration error, got {error}");
    };
    assert_eq!(problems.0[0].variable, "DATABASE_MIGRATION_URL", "{error}");
    assert!(error.to_string().contains("transaction pooler"), "{error}");

    let direct = engine(
        &bouncer,
        &db,
        &[
            ("DATABASE_POOLER", "transaction".into()),
            ("DATABASE_MIGRATION_URL", direct_url(&db)),
        ],
    )
    .expect("connect");
    let report = blog::models::migrator().boot(&direct).expect("boot");
    assert_eq!(report.applied.len(), 2);
    // The lock went away with the direct session; nothing is left on a pooled one.
    let held = crate::common::admin()
        .query(&format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = '{}')",
            db.name
        ))
        .expect("pg_locks");
    assert_eq!(held.as_deref(), Some("0"));
}

#[test]
fn session_settings_are_refused_behind_a_transaction_pooler() {
    let error = Settings::from_pairs([
        ("DATABASE_HOST", "db"),
        ("DATABASE_POOLER", "transaction"),
        ("DATABASE_STATEMENT_TIMEOUT", "5s"),
    ])
    .expect_err("refused");
    let problems = error.config_problems();
    assert_eq!(
        problems[0].variable, "DATABASE_STATEMENT_TIMEOUT",
        "{error}"
    );
    assert!(problems[0].message.contains("ALTER ROLE"), "{error}");
}

/// `DATABASE_MIGRATION_URL` must reach the pool's own database: pointed at another one, the
/// migrations ran there and boot said "ready" (every write then failed); pointed at the
/// pooler itself, `migrate` passed and `revert` failed; its connect errors named the pool.
#[test]
fn a_migration_url_that_does_not_reach_the_pools_database_is_refused() {
    let db = TestDb::create(&unique_name("dl_mig_url"), None);
    let other = TestDb::create(&unique_name("dl_mig_url_other"), None);
    let bouncer = PgBouncer::start(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let boot = |migration_url: String| {
        let output = crate::common::run_cli(
            dir.path(),
            &[],
            &[
                ("DATABASE_URL", bouncer.url(&db.name)),
                ("DATABASE_POOLER", "transaction".into()),
                ("DATABASE_MIGRATION_URL", migration_url),
            ],
        );
        let (_, stderr) = crate::common::text(&output);
        (output.status.code(), stderr)
    };

    let (code, stderr) = boot(direct_url(&other));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("DATABASE_MIGRATION_URL") && stderr.contains("not DATABASE_URL's"),
        "{stderr}"
    );
    let tables = crate::libpq::Conn::connect(&direct_url(&other))
        .expect("the other database")
        .query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        .expect("tables");
    assert_eq!(tables.as_deref(), Some("0"), "nothing was migrated there");

    let (code, stderr) = boot(bouncer.url(&db.name));
    assert_eq!(code, Some(2), "the pooler itself: {stderr}");
    assert!(stderr.contains("transaction pooler"), "{stderr}");

    let (code, stderr) = boot(format!("{}?keepalives_idle=abc", direct_url(&db)));
    assert_eq!(code, Some(2), "bad parameters exit 2 at load: {stderr}");

    let port = crate::common::closed_port();
    let (code, stderr) = boot(format!("postgres://postgres@127.0.0.1:{port}/{}", db.name));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}"))
            && !stderr.contains(&bouncer.addr.to_string()),
        "the error names the migration URL, not the pool's: {stderr}"
    );

    let (code, stderr) = boot(direct_url(&db));
    assert_eq!(
        code,
        Some(0),
        "the direct URL of the same database: {stderr}"
    );
}
