//! datalayer against raw libpq: the benchmark behind `scripts/bench` (see docs/performance.md).
//!
//! One run, one table of figures and ratios per case. Reads, writes and overload run first in
//! production's layout, PostgreSQL (a cluster of the benchmark's own) on cores of its own and
//! the client on the others (`split.rs`), then with both sharing every core as a secondary
//! view; SQLite runs in the process. The cases:
//! - reference: `pgbench -n -M prepared` selecting one user by random id;
//! - held: each thread holds one plain Diesel `PgConnection` for the whole run;
//! - engine: checkout, select by id into `User`, return, through datalayer's engine with its
//!   default settings (the web-handler pattern);
//! - naive: the same through a plain r2d2 pool with r2d2's defaults (`test_on_check_out`);
//! - plain r2d2: the same without the test on checkout, r2d2 at its fastest;
//! - seed: the same through SQLAlchemy 2's ORM + psycopg 3 (default QueuePool), the Python
//!   module datalayer ports, when scripts/bench could set up its venv (`BENCH_SEED_PYTHON`);
//! - writes: one user inserted per transaction, engine vs a pgbench insert script;
//! - sqlite: point reads through the engine vs a plain `SqliteConnection`;
//! - checkout + return of an idle connection (ns/op) and a boot with nothing pending;
//! - per-test setup: `datalayer::testing`'s database cloned from a migrated template against
//!   creating a database and migrating it, on PostgreSQL and SQLite;
//! - overload: more threads than connections, with latency percentiles (`overload.rs`);
//! - mechanisms: the engine with and without each of its mechanisms over r2d2
//!   (`mechanisms.rs`).
//!
//! Environment: `BENCH_SECONDS` per case and round (default 3), `BENCH_CLIENTS` (default
//! 1,2,4,8,16,32), `BENCH_ROWS` (default 100000), `DATALAYER_BENCH_ADMIN_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `BENCH_DB` (default `datalayer_bench`, kept
//! between runs), `BENCH_DROP` (set: drop that database at the end, for smoke runs) and
//! `BENCH_CASES` (a comma list of `reads`, `writes`, `sqlite`, `checkout`, `boot`, `testdb`,
//! `pgbouncer`, `overload`, `mechanisms`; default all)
//! and `BENCH_ROUNDS` (default 3: the cases of one row run one after another that many times
//! over, and each figure is the median of its rounds).
//! Everything runs with `sslmode=disable`,
//! pgbench included, so TLS costs nobody.

mod chart;
mod machine;
mod mechanisms;
mod overload;
mod progress;
mod split;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blog::models::users::{self, NewUser, User};
use blog::schema::users as users_table;
use datalayer::{Engine, Settings};
use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Clone)]
struct Config {
    seconds: f64,
    clients: Vec<usize>,
    rows: i64,
    server: String,
    url: String,
    dbname: String,
    cases: Vec<String>,
    rounds: usize,
    /// The venv's python for the seed case (`BENCH_SEED_PYTHON`, set by scripts/bench).
    seed_python: Option<String>,
    /// Production's layout: the cluster on cores of its own, whose client core every timed
    /// run of a case pinned to it runs on ([`Config::pinned`]); `None` on the shared cores.
    split: Option<std::sync::Arc<split::Split>>,
}

impl Config {
    fn runs(&self, case: &str) -> bool {
        self.cases.iter().any(|c| c == case)
    }

    /// Runs `f` on the client's core in production's layout (threads and processes it starts
    /// inherit the core), as it is on the shared cores.
    fn pinned<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match &self.split {
            Some(split) => split.on_client_core(f)?,
            None => f(),
        }
    }
}

/// Runs `case` in production's layout, PostgreSQL on cores of its own and the client threads
/// on the others (`split.rs`; a line says why when this machine cannot), then on the cores
/// they share, as a secondary view.
fn in_both_layouts(
    config: &Config,
    settings: &Settings,
    case: impl Fn(&Config, &Settings) -> Result<()>,
) -> Result<()> {
    match split::Split::start() {
        Ok(split) => {
            println!(
                "### Production's layout: PostgreSQL on cores {:?} (a cluster of the \
                 benchmark's own), the client on core {}\n",
                split.server_cores, split.client_core
            );
            let there = split.config(config);
            let there = Config {
                split: Some(std::sync::Arc::new(split)),
                ..there
            };
            setup(&there)?;
            let settings = Settings::from_pairs([("DATABASE_URL", there.url.as_str())])?;
            case(&there, &settings)?;
        }
        Err(why) => println!("### Production's layout: skipped ({why})\n"),
    }
    println!("\n### Secondary view: the client and PostgreSQL sharing every core\n");
    case(config, settings)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// A per-thread xorshift: random ids without a shared generator.
struct Ids(u64, i64);

impl Ids {
    fn new(seed: usize, rows: i64) -> Ids {
        Ids(
            0x9e37_79b9_7f4a_7c15 ^ (seed as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
            rows,
        )
    }
    fn next(&mut self) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % self.1 as u64) as i64 + 1
    }
}

/// Runs `threads` workers for `seconds`; each `make(i)` returns the operation thread i repeats.
/// Returns operations per second.
fn throughput<F, W>(seconds: f64, threads: usize, make: F) -> f64
where
    F: Fn(usize) -> W + Sync,
    W: FnMut(),
{
    let start = Barrier::new(threads + 1);
    let done = AtomicUsize::new(0);
    let window = Window::new();
    std::thread::scope(|scope| {
        for i in 0..threads {
            let (start, done, make, window) = (&start, &done, &make, &window);
            scope.spawn(move || {
                let mut operation = make(i);
                start.wait();
                let began = window.begin();
                let deadline = began + Duration::from_secs_f64(seconds);
                let mut count = 0;
                while Instant::now() < deadline {
                    for _ in 0..16 {
                        operation();
                    }
                    count += 16;
                }
                window.end();
                done.fetch_add(count, Ordering::Relaxed);
            });
        }
        start.wait();
    });
    done.load(Ordering::Relaxed) as f64 / window.seconds()
}

/// The wall time a group of workers ran: from the first one's start to the last one's end.
/// Each worker times its own run from its start, and on 2 cores the scheduler starts them
/// over a few milliseconds: dividing by the nominal run time would overstate the speed of the
/// groups that start most spread out (the many-thread ones).
pub(crate) struct Window {
    base: Instant,
    first_start: AtomicU64,
    last_end: AtomicU64,
}

impl Window {
    pub(crate) fn new() -> Window {
        Window {
            base: Instant::now(),
            first_start: AtomicU64::new(u64::MAX),
            last_end: AtomicU64::new(0),
        }
    }

    fn since_base(&self, at: Instant) -> u64 {
        u64::try_from((at - self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A worker starts now; returns now.
    pub(crate) fn begin(&self) -> Instant {
        let now = Instant::now();
        self.first_start
            .fetch_min(self.since_base(now), Ordering::Relaxed);
        now
    }

    /// A worker ended now.
    pub(crate) fn end(&self) {
        self.last_end
            .fetch_max(self.since_base(Instant::now()), Ordering::Relaxed);
    }

    /// Seconds from the first start to the last end.
    pub(crate) fn seconds(&self) -> f64 {
        let took = self
            .last_end
            .load(Ordering::Relaxed)
            .saturating_sub(self.first_start.load(Ordering::Relaxed));
        took as f64 / 1e9
    }
}

/// Operations per second of two cases that `threads` workers alternate in short blocks (each
/// block a few milliseconds, the workers starting and ending it together, the order flipped
/// every block), for `seconds` in all: for in-process cases, whose speed on this shared
/// machine swings by a quarter from one second to the next, more than the cases differ. Each
/// block pair is one round of the result. `make(i)` returns worker i's operation, given the
/// case.
fn alternating<F, W>(seconds: f64, threads: usize, make: F) -> Runs<2>
where
    F: Fn(usize) -> W + Sync,
    W: FnMut(usize),
{
    const BLOCK: usize = 2000;
    let barrier = Barrier::new(threads);
    let rounds = std::sync::Mutex::new(Vec::new());
    let base = Instant::now();
    let deadline = base + Duration::from_secs_f64(seconds);
    let stop = std::sync::atomic::AtomicBool::new(false);
    // A block's wall time runs from the last worker's arrival at its start (no worker starts
    // before that) to the last worker's finish: each worker reads the clock as it arrives and
    // as it finishes, and the latest of each wins (times only grow, so no reset between
    // blocks). A worker's own clock would start late whenever the scheduler woke it after the
    // others (4 workers on 2 cores), and overstate the speed. One pair of clocks per step:
    // the workers the end barrier lets go first arrive at the next block while its leader
    // still reads this one's.
    let arrived = [AtomicU64::new(0), AtomicU64::new(0)];
    let finished = [AtomicU64::new(0), AtomicU64::new(0)];
    let since_base = || u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
    std::thread::scope(|scope| {
        for i in 0..threads {
            let (barrier, rounds, make, stop) = (&barrier, &rounds, &make, &stop);
            let (arrived, finished, since_base) = (&arrived, &finished, &since_base);
            scope.spawn(move || {
                let mut operation = make(i);
                for round in 0.. {
                    for step in 0..2 {
                        let case = (round + step) % 2;
                        arrived[step].fetch_max(since_base(), Ordering::Relaxed);
                        barrier.wait();
                        for _ in 0..BLOCK {
                            operation(case);
                        }
                        finished[step].fetch_max(since_base(), Ordering::Relaxed);
                        if barrier.wait().is_leader() {
                            let took = finished[step].load(Ordering::Relaxed)
                                - arrived[step].load(Ordering::Relaxed);
                            let speed = (BLOCK * threads) as f64 / (took as f64 / 1e9);
                            if let Ok(mut rounds) = rounds.lock() {
                                // The round's first block starts its entry, the second ends it.
                                if step == 0 {
                                    rounds.push([f64::NAN; 2]);
                                }
                                if let Some(round) = rounds.last_mut() {
                                    round[case] = speed;
                                }
                            }
                            if step == 1 {
                                stop.store(Instant::now() >= deadline, Ordering::Relaxed);
                            }
                        }
                    }
                    barrier.wait();
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            });
        }
    });
    Runs {
        rounds: rounds.into_inner().unwrap_or_default(),
    }
}

/// One point read through the engine: checkout, `users::find`, return.
fn engine_read(engine: &Engine, ids: &mut Ids) {
    let mut conn = engine.get().expect("checkout");
    users::find(&mut conn, ids.next())
        .expect("select")
        .expect("row");
}

/// One point read through a plain r2d2 pool: checkout, the same select, return.
fn pool_read(pool: &Pool<ConnectionManager<PgConnection>>, ids: &mut Ids) {
    let mut conn = pool.get().expect("checkout");
    let _: User = users_table::table
        .find(ids.next())
        .select(User::as_select())
        .first(&mut *conn)
        .expect("select");
}

/// Point reads through the engine, operations per second.
fn engine_reads(seconds: f64, clients: usize, engine: &Engine, rows: i64) -> f64 {
    warmed_up(engine);
    throughput(seconds, clients, |i| {
        let mut ids = Ids::new(i, rows);
        move || engine_read(engine, &mut ids)
    })
}

/// Waits until the engine's pool holds its minimum of idle connections: r2d2 opens them on
/// background threads after `Engine::connect` returns, and a running server has them open
/// (a plain r2d2 `Pool::build`, the naive case, waits for them too).
fn warmed_up(engine: &Engine) {
    let settings = &engine.settings().pool;
    let wanted = settings.min_idle.unwrap_or(settings.max_size);
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.state().connections < wanted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until no other session is connected to the benchmark database, so that one case
/// does not pay for the backends the previous case is still tearing down.
fn settle(config: &Config) -> Result<()> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut admin =
        PgConnection::establish(&format!("{}/postgres?sslmode=disable", config.server))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let others: Count = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '{}'",
            config.dbname
        ))
        .get_result(&mut admin)?;
        if others.n == 0 || Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Point reads with plain Diesel on one connection per thread, made by `connect`.
fn held_reads<C>(seconds: f64, clients: usize, rows: i64, connect: impl Fn() -> C + Sync) -> f64
where
    C: Connection,
    diesel::dsl::Limit<
        diesel::dsl::Select<
            diesel::dsl::Find<users_table::table, i64>,
            diesel::dsl::AsSelect<User, C::Backend>,
        >,
    >: diesel::query_dsl::LoadQuery<'static, C, User>,
{
    throughput(seconds, clients, |i| {
        let mut conn = connect();
        let mut ids = Ids::new(i, rows);
        move || {
            let _: User = users_table::table
                .find(ids.next())
                .select(User::as_select())
                .first(&mut conn)
                .expect("select");
        }
    })
}

fn pgbench(config: &Config, script: &str, clients: usize) -> Result<f64> {
    pgbench_via(config, &config.url, "prepared", script, clients, &[])
}

/// pgbench at `url` with the query protocol `mode` (`prepared`: named statements; `extended`:
/// unnamed ones, what a transaction pooler allows).
fn pgbench_via(
    config: &Config,
    url: &str,
    mode: &str,
    script: &str,
    clients: usize,
    extra: &[String],
) -> Result<f64> {
    let path = std::env::temp_dir().join(format!("datalayer-bench-{}.sql", std::process::id()));
    std::fs::write(&path, script)?;
    let seconds = config.seconds.ceil().max(1.0) as u64;
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            mode,
            "-c",
            &clients.to_string(),
            "-j",
            &clients.to_string(),
        ])
        .args(extra)
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(&path)
        .arg(url)
        .env("PGSSLMODE", "disable")
        .output()?;
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            format!(
                "pgbench failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into()
        })
}

/// The seed case: `scripts/bench_seed.py` (SQLAlchemy 2 ORM + psycopg 3, default QueuePool)
/// run by `python`; returns its operations per second.
fn seed(python: &str, config: &Config, clients: usize) -> Result<f64> {
    let output = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/bench_seed.py"
        ))
        .arg(&config.url)
        .arg(config.seconds.to_string())
        .arg(clients.to_string())
        .arg(config.rows.to_string())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().parse().map_err(|_| {
        format!(
            "the seed case failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into()
    })
}

fn setup(config: &Config) -> Result<()> {
    let mut admin =
        PgConnection::establish(&format!("{}/postgres?sslmode=disable", config.server))?;
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let exists: Exists = diesel::sql_query(format!(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{}') AS exists",
        config.dbname
    ))
    .get_result(&mut admin)?;
    if !exists.exists {
        admin.batch_execute(&format!("CREATE DATABASE {}", config.dbname))?;
    }
    let engine = Engine::connect(&Settings::from_pairs([(
        "DATABASE_URL",
        config.url.as_str(),
    )])?)?;
    blog::models::migrator().run_pending(&engine)?;
    let mut conn = engine.get()?;
    let count = users::count(&mut conn)?;
    if count != config.rows {
        conn.batch_execute(&format!(
            "TRUNCATE users CASCADE; ALTER TABLE users ALTER COLUMN id RESTART WITH 1;
             INSERT INTO users (email, display_name)
               SELECT 'user' || n || '@example.com', 'User ' || n FROM generate_series(1, {}) n;",
            config.rows
        ))?;
        conn.batch_execute("VACUUM ANALYZE users")?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let admin = env_or(
        "DATALAYER_BENCH_ADMIN_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let server = admin
        .rsplit_once('/')
        .map(|(s, _)| s.to_string())
        .unwrap_or(admin.clone());
    let dbname = env_or("BENCH_DB", "datalayer_bench");
    let config = Config {
        seconds: env_or("BENCH_SECONDS", "3").parse()?,
        clients: env_or("BENCH_CLIENTS", "1,2,4,8,16,32")
            .split(',')
            .map(|c| c.trim().parse())
            .collect::<std::result::Result<_, _>>()?,
        rows: env_or("BENCH_ROWS", "100000").parse()?,
        url: format!("{server}/{dbname}?sslmode=disable"),
        server,
        dbname,
        rounds: env_or("BENCH_ROUNDS", "3").parse()?,
        seed_python: std::env::var("BENCH_SEED_PYTHON")
            .ok()
            .filter(|p| !p.is_empty()),
        split: None,
        cases: env_or(
            "BENCH_CASES",
            "reads,writes,sqlite,checkout,boot,testdb,pgbouncer,overload,mechanisms",
        )
        .split(',')
        .map(|c| c.trim().to_string())
        .collect(),
    };
    setup(&config)?;
    let settings = Settings::from_pairs([("DATABASE_URL", config.url.as_str())])?;
    let cases: [(&str, Case); 9] = [
        ("reads", reads),
        ("writes", writes),
        ("sqlite", sqlite),
        ("checkout", checkout),
        ("boot", boot),
        ("testdb", testdb),
        ("pgbouncer", pgbouncer),
        ("overload", overload::overload),
        ("mechanisms", mechanisms::mechanisms),
    ];
    for (name, _) in &cases {
        if config.runs(name) {
            progress::plan(name, planned_runs(&config, name));
        }
    }
    for (name, case) in cases {
        if config.runs(name) {
            progress::case(name);
            case(&config, &settings)?;
        }
    }
    progress::finish();
    draw_charts(&config)?;
    if std::env::var_os("BENCH_DROP").is_some() {
        let mut admin =
            PgConnection::establish(&format!("{}/postgres?sslmode=disable", config.server))?;
        admin.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            config.dbname
        ))?;
    }
    Ok(())
}

type Case = fn(&Config, &Settings) -> Result<()>;

/// A chart's line: its name and one figure per C.
type Series = (String, Vec<f64>);

/// What the charts are drawn from: the point reads' throughput by case, and the overload
/// latencies (p50, p99, p99.9, max in ms) by case and C.
#[derive(Default)]
struct Figures {
    reads: Option<(Vec<usize>, Vec<Series>)>,
    overload: Vec<(String, [f64; 4])>,
}

static FIGURES: std::sync::Mutex<Figures> = std::sync::Mutex::new(Figures {
    reads: None,
    overload: Vec::new(),
});

/// How many timed runs each case makes, for the progress line's estimate.
fn planned_runs(config: &Config, case: &str) -> usize {
    let rounds = config.rounds.max(1);
    let clients = config.clients.len();
    match case {
        "reads" => clients * rounds * 6 * 2,
        "writes" => 2 * rounds * 2,
        // One run per C: its two cases alternate within it.
        "sqlite" => config.clients.iter().filter(|c| **c <= 4).count(),
        "checkout" => 2 * rounds * 2,
        "pgbouncer" => clients * rounds * 2,
        "overload" => overload::planned_runs(config),
        "mechanisms" => mechanisms::planned_runs(config),
        _ => 0,
    }
}

/// Draws the charts from this run's figures into `BENCH_CHART_DIR` (default `docs`).
fn draw_charts(config: &Config) -> Result<()> {
    let dir = std::path::PathBuf::from(env_or("BENCH_CHART_DIR", "docs"));
    std::fs::create_dir_all(&dir)?;
    let figures = FIGURES.lock().map_err(|_| "figures lock")?;
    if let Some((clients, series)) = &figures.reads {
        let path = dir.join("bench-reads.svg");
        chart::throughput(
            &path,
            &format!(
                "Point reads on {} cores, {} s x {} rounds",
                std::thread::available_parallelism().map_or(0, |n| n.get()),
                config.seconds,
                config.rounds
            ),
            clients,
            series,
        )?;
        println!(
            "
chart: {}",
            path.display()
        );
    }
    if !figures.overload.is_empty() {
        let path = dir.join("bench-overload.svg");
        chart::latencies(
            &path,
            "Overload: pool of 8, latency of checkout + query + return",
            &figures.overload,
        )?;
        println!("chart: {}", path.display());
    }
    Ok(())
}

/// Runs cases `0..N` one after another, `rounds` times over (in reverse order every other
/// round, so that a drift within a round is charged to every case alike), and returns each
/// case's median and each round's figures: interleaving spreads the machine's drifts (other
/// load, CPU frequency) over every case instead of charging them to whichever ran at the
/// wrong moment.
fn interleaved<const N: usize>(
    label: &str,
    rounds: usize,
    mut run: impl FnMut(usize) -> Result<f64>,
) -> Result<Runs<N>> {
    let rounds = rounds.max(1);
    let mut runs = Runs {
        rounds: Vec::with_capacity(rounds),
    };
    for round in 0..rounds {
        let mut figures = [f64::NAN; N];
        for step in 0..N {
            let case = if round % 2 == 0 { step } else { N - 1 - step };
            progress::run(&format!(
                "{label}, round {}/{rounds}, case {}/{N}",
                round + 1,
                case + 1
            ));
            figures[case] = run(case)?;
        }
        runs.rounds.push(figures);
    }
    Ok(runs)
}

/// The figures of [`interleaved`]'s rounds.
struct Runs<const N: usize> {
    rounds: Vec<[f64; N]>,
}

impl<const N: usize> Runs<N> {
    /// Each case's median over the rounds.
    fn medians(&self) -> [f64; N] {
        std::array::from_fn(|case| median(self.rounds.iter().map(|r| r[case])))
    }

    /// The median over the rounds of case `a`'s figure over case `b`'s in the same round:
    /// the two ran back to back, so the ratio of a pair shares the machine's state of the
    /// moment, which the ratio of two medians (taken at different moments) does not.
    fn paired(&self, a: usize, b: usize) -> f64 {
        median(self.ratios(a, b))
    }

    /// Each round's figure of case `a` over case `b`'s.
    fn ratios(&self, a: usize, b: usize) -> impl Iterator<Item = f64> + '_ {
        self.rounds.iter().map(move |r| r[a] / r[b])
    }

    /// [`Runs::paired`] as a table cell, with the lowest and highest round's ratio beside it
    /// when there are several: on a small shared machine one round's ratio can be 15 % off the
    /// next one's, and the range says how far the median can be trusted.
    fn paired_with_range(&self, a: usize, b: usize) -> String {
        let middle = self.paired(a, b);
        let finite: Vec<f64> = self.ratios(a, b).filter(|r| r.is_finite()).collect();
        match (
            finite.iter().copied().reduce(f64::min),
            finite.iter().copied().reduce(f64::max),
        ) {
            (Some(low), Some(high)) if finite.len() > 1 => {
                format!("{middle:.2} ({low:.2}-{high:.2})")
            }
            _ => format!("{middle:.2}"),
        }
    }
}

/// The median; of an even count, the mean of the two middle values (the upper one alone made
/// a ratio over two rounds their best).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn reads(config: &Config, settings: &Settings) -> Result<()> {
    println!("## Point reads: operations per second (C = client threads)\n");
    in_both_layouts(config, settings, reads_in)
}

fn reads_in(config: &Config, settings: &Settings) -> Result<()> {
    let rows = config.rows;
    let select_script = format!(
        "\\set id random(1, {rows})\nSELECT id, email, display_name, created_at, updated_at FROM users WHERE id = :id;\n"
    );
    let mut table: Vec<(&str, Vec<f64>)> = Vec::new();
    let (mut reference, mut held, mut engine_row, mut naive) = (vec![], vec![], vec![], vec![]);
    let (mut seed_row, mut eh, mut er, mut en, mut es) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut plain, mut ep) = (vec![], vec![]);
    for &c in &config.clients {
        let runs = interleaved(&format!("reads C={c}"), config.rounds, |case| {
            settle(config)?;
            config.pinned(|| {
                Ok(match case {
                    0 => pgbench(config, &select_script, c)?,
                    1 => held_reads(config.seconds, c, rows, || {
                        PgConnection::establish(&config.url).expect("connect")
                    }),
                    2 => engine_reads(config.seconds, c, &Engine::connect(settings)?, rows),
                    3 => {
                        let pool = Pool::builder()
                            .build(ConnectionManager::<PgConnection>::new(&config.url))?;
                        throughput(config.seconds, c, |i| {
                            let mut ids = Ids::new(i, rows);
                            let pool = &pool;
                            move || pool_read(pool, &mut ids)
                        })
                    }
                    4 => match &config.seed_python {
                        Some(python) => seed(python, config, c)?,
                        None => f64::NAN,
                    },
                    // r2d2 at its fastest: no test on checkout, the engine's pool size.
                    _ => {
                        let pool = Pool::builder()
                            .max_size(settings.pool.max_size)
                            .test_on_check_out(false)
                            .build(ConnectionManager::<PgConnection>::new(&config.url))?;
                        throughput(config.seconds, c, |i| {
                            let mut ids = Ids::new(i, rows);
                            let pool = &pool;
                            move || pool_read(pool, &mut ids)
                        })
                    }
                })
            })
        })?;
        let [r, h, e, n, p, f] = runs.medians();
        reference.push(r);
        held.push(h);
        engine_row.push(e);
        naive.push(n);
        seed_row.push(p);
        plain.push(f);
        ep.push(runs.paired(2, 5));
        eh.push(runs.paired(2, 1));
        er.push(runs.paired(2, 0));
        en.push(runs.paired(2, 3));
        es.push(runs.paired(2, 4));
    }
    // The chart shows production's layout when it ran.
    if let Ok(mut figures) = FIGURES.lock()
        && (config.split.is_some() || figures.reads.is_none())
    {
        let mut series = vec![
            ("reference (pgbench)".to_string(), reference.clone()),
            ("held connection".to_string(), held.clone()),
            ("engine".to_string(), engine_row.clone()),
            ("plain r2d2 (naive)".to_string(), naive.clone()),
        ];
        if config.seed_python.is_some() {
            series.push(("seed (SQLAlchemy)".to_string(), seed_row.clone()));
        }
        figures.reads = Some((config.clients.clone(), series));
    }
    table.push(("reference (pgbench)", reference));
    table.push(("held", held));
    table.push(("engine", engine_row));
    table.push(("naive", naive));
    table.push(("plain r2d2 (no test on checkout)", plain));
    table.push(("engine/held", eh));
    table.push(("engine/reference", er));
    table.push(("engine/naive", en));
    table.push(("engine/plain r2d2", ep));
    if config.seed_python.is_some() {
        table.insert(4, ("seed (SQLAlchemy + psycopg)", seed_row));
        table.push(("engine/seed", es));
    }
    print_table(&config.clients, &table);

    Ok(())
}

fn writes(config: &Config, settings: &Settings) -> Result<()> {
    println!("\n## Writes: one user inserted per transaction, operations per second\n");
    in_both_layouts(config, settings, writes_in)
}

fn writes_in(config: &Config, settings: &Settings) -> Result<()> {
    let rows = config.rows;
    let run = std::process::id();
    let write_clients: Vec<usize> = [1, 8]
        .into_iter()
        .filter(|c| config.clients.contains(c) || config.clients.len() < 3)
        .collect();
    // The same statement the engine sends: users::create returns the inserted row.
    let insert_script = "INSERT INTO users (email, display_name) VALUES (md5(random()::text || clock_timestamp()::text) || '@bench', 'Bench') RETURNING id, email, display_name, created_at, updated_at;\n";
    let (mut pg_writes, mut engine_writes, mut engine_vs) = (vec![], vec![], vec![]);
    let counter = AtomicUsize::new(0);
    for &c in &write_clients {
        let runs = interleaved(&format!("writes C={c}"), config.rounds, |case| {
            settle(config)?;
            if case == 0 {
                return config.pinned(|| pgbench(config, insert_script, c));
            }
            let engine = Engine::connect(settings)?;
            warmed_up(&engine);
            config.pinned(|| {
                Ok(throughput(config.seconds, c, |i| {
                    let (engine, counter) = (&engine, &counter);
                    move || {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let email = format!("w{run}-{i}-{n}@bench");
                        let mut conn = engine.get().expect("checkout");
                        users::create(
                            &mut conn,
                            &NewUser {
                                email: &email,
                                display_name: "Bench",
                            },
                        )
                        .expect("insert");
                    }
                }))
            })
        })?;
        let [p, e] = runs.medians();
        pg_writes.push(p);
        engine_writes.push(e);
        engine_vs.push(runs.paired(1, 0));
    }
    print_table(
        &write_clients,
        &[
            ("pgbench insert", pg_writes),
            ("engine insert", engine_writes),
            ("engine/pgbench", engine_vs),
        ],
    );
    // Keep the table at BENCH_ROWS for the next run.
    PgConnection::establish(&config.url)?
        .batch_execute(&format!("DELETE FROM users WHERE id > {rows}"))?;

    Ok(())
}

fn sqlite(config: &Config, _: &Settings) -> Result<()> {
    let rows = config.rows;
    let run = std::process::id();
    println!("\n## SQLite point reads, operations per second\n");
    let dir = std::env::temp_dir().join(format!("datalayer-bench-{run}"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bench.sqlite3");
    let lite_settings = Settings::from_pairs([("DATABASE_PATH", path.as_os_str())])?;
    fill_sqlite(&lite_settings, rows)?;
    let lite_clients: Vec<usize> = config.clients.iter().copied().filter(|c| *c <= 4).collect();
    let (mut plain_lite, mut engine_lite, mut lite_ratio) = (vec![], vec![], vec![]);
    let lite_url = path.to_string_lossy().into_owned();
    for &c in &lite_clients {
        progress::run(&format!("sqlite C={c}"));
        let engine = Engine::connect(&lite_settings)?;
        warmed_up(&engine);
        let blocks = alternating(config.seconds * config.rounds as f64 * 2.0, c, |i| {
            let (mut plain, mut ids, engine) = (open_sqlite(&lite_url), Ids::new(i, rows), &engine);
            move |case: usize| {
                if case == 0 {
                    held_read(&mut plain, &mut ids);
                } else {
                    engine_read(engine, &mut ids);
                }
            }
        });
        let [p, e] = blocks.medians();
        plain_lite.push(p);
        engine_lite.push(e);
        lite_ratio.push(blocks.paired(1, 0));
    }
    print_table(
        &lite_clients,
        &[
            ("plain SqliteConnection", plain_lite),
            ("engine", engine_lite),
            ("engine/plain", lite_ratio),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);

    Ok(())
}

/// Makes the SQLite database of `settings` with the reference schema and `rows` users.
fn fill_sqlite(settings: &Settings, rows: i64) -> Result<()> {
    let engine = Engine::connect(settings)?;
    blog::models::migrator().run_pending(&engine)?;
    engine.get()?.batch_execute(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
         INSERT INTO users (email, display_name) SELECT 'user' || i || '@example.com', 'User ' || i FROM n;"
    ))?;
    Ok(())
}

/// A plain connection to the SQLite file at `url`.
fn open_sqlite(url: &str) -> SqliteConnection {
    let mut conn = SqliteConnection::establish(url).expect("open");
    // The same busy timeout as the engine's connections: fair, and needed when several
    // connections open a WAL database at once.
    conn.batch_execute("PRAGMA busy_timeout = 5000")
        .expect("pragma");
    conn
}

/// One point read on a held SQLite connection.
fn held_read(conn: &mut SqliteConnection, ids: &mut Ids) {
    let _: User = users_table::table
        .find(ids.next())
        .select(User::as_select())
        .first(conn)
        .expect("select");
}

fn checkout(config: &Config, settings: &Settings) -> Result<()> {
    println!("\n## Checkout + return of an idle connection, no query (pool of 4), ns/op\n");
    let mut small = settings.clone();
    small.pool.max_size = 4;
    let engine = Engine::connect(&small)?;
    warmed_up(&engine);
    // Bare r2d2: no validation on checkout, the floor for any r2d2-based pool.
    let bare = Pool::builder()
        .max_size(4)
        .test_on_check_out(false)
        .build(ConnectionManager::<PgConnection>::new(&config.url))?;
    let threads = [1usize, 8];
    let (mut ours, mut floor, mut ratios) = (vec![], vec![], vec![]);
    for &n in &threads {
        let ns = |ops: f64| 1e9 / ops * n as f64;
        let runs = interleaved(&format!("checkout, {n} thread(s)"), config.rounds, |case| {
            let seconds = config.seconds.min(2.0);
            Ok(ns(if case == 0 {
                throughput(seconds, n, |_| {
                    let engine = &engine;
                    move || drop(engine.get().expect("checkout"))
                })
            } else {
                throughput(seconds, n, |_| {
                    let bare = &bare;
                    move || drop(bare.get().expect("checkout"))
                })
            }))
        })?;
        let [e, b] = runs.medians();
        ours.push(e);
        floor.push(b);
        ratios.push(runs.paired(0, 1));
    }
    let header: Vec<String> = threads.iter().map(|n| format!("{n} thread(s)")).collect();
    println!("| case | {} |", header.join(" | "));
    println!("| --- |{}", " ---: |".repeat(threads.len()));
    let cells = |v: &[f64], digits: usize| {
        v.iter()
            .map(|x| format!("{x:.digits$}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("| engine | {} |", cells(&ours, 0));
    println!("| bare r2d2 | {} |", cells(&floor, 0));
    println!("| engine/bare | {} |", cells(&ratios, 2));
    Ok(())
}

fn boot(config: &Config, settings: &Settings) -> Result<()> {
    println!("\n## Boot with nothing pending (PostgreSQL, after connecting)\n");
    boot_cost(settings, &config.url)?;
    Ok(())
}

/// A PgBouncer in transaction mode in front of the benchmark's server, run as `postgres`
/// from a temporary folder; killed on drop.
struct Bouncer {
    child: std::process::Child,
    _dir: std::path::PathBuf,
    port: u16,
}

impl Bouncer {
    fn start(pool_size: usize) -> Result<Bouncer> {
        let dir = std::env::temp_dir().join(format!("dl_bench_pgbouncer_{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let path = |name: &str| dir.join(name).display().to_string();
        std::fs::write(path("users.txt"), "\"postgres\" \"\"\n")?;
        std::fs::write(
            path("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port=5432\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 500\n\
                 ignore_startup_parameters = extra_float_digits\nlogfile = {}\npidfile = {}\n",
                path("users.txt"),
                path("pgbouncer.log"),
                path("pgbouncer.pid")
            ),
        )?;
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()?;
        // Run as `postgres` (PgBouncer refuses root), and told to stop if the benchmark dies
        // without dropping this (a SIGTERM or SIGKILL), so that no PgBouncer outlives it.
        let (uid, gid) = postgres_ids()?;
        let mut command = Command::new("pgbouncer");
        command
            .arg(path("pgbouncer.ini"))
            .uid(uid)
            .gid(gid)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: prctl is async-signal-safe, and runs in the child after its uid changed
        // (a change of credentials would clear the death signal). The signal comes when the
        // spawning thread ends: the main thread, for both cases that start one.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        let bouncer = Bouncer {
            child,
            _dir: dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("pgbouncer did not listen".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(bouncer)
    }
}

/// The `postgres` system user's uid and gid.
fn postgres_ids() -> Result<(u32, u32)> {
    // SAFETY: getpwnam with a NUL-terminated name; the entry is read at once, on this thread.
    let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if entry.is_null() {
        return Err("no postgres user on this machine (install PostgreSQL's packages)".into());
    }
    // SAFETY: non-null entry from getpwnam.
    Ok(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// Point reads through PgBouncer in transaction mode (8 server connections): the engine with
/// `DATABASE_POOLER=transaction` (unnamed statements) against pgbench in the same protocol
/// (`-M extended`), same clients, same PgBouncer, interleaved rounds.
fn pgbouncer(config: &Config, _: &Settings) -> Result<()> {
    println!("\n## Point reads through PgBouncer (transaction mode, 8 server connections)\n");
    let has_pgbouncer = Command::new("sh")
        .args(["-c", "command -v pgbouncer"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_pgbouncer {
        println!("skipped: pgbouncer is not installed (apt-get install pgbouncer)");
        return Ok(());
    }
    let bouncer = Bouncer::start(8)?;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        bouncer.port, config.dbname
    );
    let settings = Settings::from_pairs([
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_POOLER", "transaction"),
    ])?;
    let rows = config.rows;
    let select_script = format!(
        "\\set id random(1, {rows})\nSELECT id, email, display_name, created_at, updated_at FROM users WHERE id = :id;\n"
    );
    let (mut bench_row, mut engine_row, mut ratios) = (vec![], vec![], vec![]);
    for &c in &config.clients {
        // No settling: PgBouncer keeps its server connections, as it does in production.
        let runs = interleaved(&format!("pgbouncer C={c}"), config.rounds, |case| {
            Ok(match case {
                0 => pgbench_via(config, &url, "extended", &select_script, c, &[])?,
                _ => engine_reads(config.seconds, c, &Engine::connect(&settings)?, rows),
            })
        })?;
        let [p, e] = runs.medians();
        bench_row.push(p);
        engine_row.push(e);
        ratios.push(runs.paired(1, 0));
    }
    print_table(
        &config.clients,
        &[
            ("pgbench -M extended via PgBouncer", bench_row),
            ("engine via PgBouncer", engine_row),
            ("engine/pgbench", ratios),
        ],
    );
    Ok(())
}

/// Per-test setup, from nothing to an engine on a migrated database of the test's own:
/// `datalayer::testing::TestDatabase` (a clone of a template migrated once) against what it
/// replaces (create a database or file, connect, run the migrations). Teardown is the same
/// `DROP DATABASE` (or file removal) for both and is not timed. The first `TestDatabase` of
/// the run builds the template when it is missing; its time is printed apart.
fn testdb(config: &Config, settings: &Settings) -> Result<()> {
    use datalayer::config::Target;
    use datalayer::testing::TestDatabase;
    const SAMPLES: usize = 20;
    println!("\n## Per-test database setup (median of {SAMPLES})\n");
    let migrator = blog::models::migrator();
    let dir = std::env::temp_dir().join(format!("dl_bench_testdb_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sqlite = Settings::from_pairs([("DATABASE_PATH", dir.join("unused.sqlite3"))])?;
    let mut admin =
        PgConnection::establish(&format!("{}/postgres?sslmode=disable", config.server))?;
    println!(
        "| backend | TestDatabase | create + migrate | ratio | TestDatabase back to back (ratio) | first TestDatabase |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (backend, settings) in [("PostgreSQL", settings), ("SQLite", &sqlite)] {
        // The first TestDatabase of a process checks the template (building it if missing).
        let started = Instant::now();
        drop(TestDatabase::with_settings(&migrator, settings)?);
        let first = started.elapsed();
        datalayer::testing::wait_for_spares();
        // Interleaved: a TestDatabase, then creating and migrating one. The spare clone a
        // TestDatabase starts in the background is waited for before the other is timed,
        // so that it runs on a quiet server; so each TestDatabase finds its spare ready, as a
        // test that runs longer than a clone (about 50 ms) leaves it.
        let (mut cloned, mut migrated) = (Vec::new(), Vec::new());
        for i in 0..SAMPLES {
            let started = Instant::now();
            let db = TestDatabase::with_settings(&migrator, settings)?;
            cloned.push(started.elapsed());
            drop(db);
            datalayer::testing::wait_for_spares();

            let name = format!("dl_bench_fresh_{}_{i}", std::process::id());
            let mut fresh = settings.clone();
            fresh.pool.min_idle = Some(0);
            let started = Instant::now();
            match &mut fresh.target {
                Target::Postgres(pg) => {
                    admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
                    pg.database = Some(name.clone());
                }
                Target::Sqlite(file) => file.path = dir.join(format!("{name}.sqlite3")),
            }
            let engine = Engine::connect(&fresh)?;
            migrator.run_pending(&engine)?;
            migrated.push(started.elapsed());
            drop(engine);
            if let Target::Postgres(_) = fresh.target {
                admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))?;
            }
        }
        // Then back to back, as the shortest tests would run: each setup waits for the spare
        // that the previous one started, while the previous database is being dropped.
        let mut back_to_back = Vec::new();
        for _ in 0..SAMPLES {
            let started = Instant::now();
            let db = TestDatabase::with_settings(&migrator, settings)?;
            back_to_back.push(started.elapsed());
            drop(db);
        }
        datalayer::testing::wait_for_spares();
        let median = |mut samples: Vec<Duration>| {
            samples.sort();
            samples[samples.len() / 2]
        };
        let (cloned, migrated, back_to_back) =
            (median(cloned), median(migrated), median(back_to_back));
        println!(
            "| {backend} | {cloned:.1?} | {migrated:.1?} | {:.2} | {back_to_back:.1?} ({:.2}) | {first:.1?} |",
            cloned.as_secs_f64() / migrated.as_secs_f64(),
            back_to_back.as_secs_f64() / migrated.as_secs_f64()
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

static STATEMENTS: AtomicUsize = AtomicUsize::new(0);

fn counting() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(|event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { .. } = event {
            STATEMENTS.fetch_add(1, Ordering::Relaxed);
        }
    }))
}

/// The boot sequence a server runs, timed after `Engine::connect` returns:
/// `Migrator::boot` (ledger read, and under the lock only when there is work: pending set,
/// checks; then the drift check, in the background under `DATABASE_SCHEMA_CHECK=warn`) and a
/// ping. The pool does not fill in the background (min idle 0) and one pooled connection
/// exists before timing, so the figure is datalayer's own work. Beside it, in the same
/// rounds: the time until the background drift check has finished, the same boot with
/// `DATABASE_SCHEMA_CHECK=strict` (checked before returning) and `=off`, and plain
/// diesel_migrations `run_pending_migrations` on a just-established `PgConnection` (the
/// floor). Statements are counted through Diesel's instrumentation on the migration
/// connection, the drift check's included (each is at least one round trip; the pooled
/// connection's instrumentation is datalayer's own, so the ping's 2 are not counted).
fn boot_cost(settings: &Settings, url: &str) -> Result<()> {
    use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
    const PLAIN: EmbeddedMigrations = embed_migrations!("migrations/postgres");
    const ROUNDS: usize = 30;

    diesel::connection::set_default_instrumentation(counting)?;
    let mut settings = settings.clone();
    settings.pool.min_idle = Some(0);
    let mut unchecked = settings.clone();
    unchecked.migrations.schema_check = datalayer::config::SchemaCheck::Off;
    let mut strict = settings.clone();
    strict.migrations.schema_check = datalayer::config::SchemaCheck::Strict;
    // The boot and ping, and the time until the drift check (in the background under `warn`)
    // has finished.
    let timed = |settings: &Settings| -> Result<(Duration, Duration, usize)> {
        let engine = Engine::connect(settings)?;
        drop(engine.get()?);
        let before = STATEMENTS.load(Ordering::Relaxed);
        let started = Instant::now();
        let report = blog::models::migrator().boot(&engine)?;
        engine.ping()?;
        let took = started.elapsed();
        let differences = report.drift.differences();
        let checked = started.elapsed();
        assert!(report.applied.is_empty() && differences.is_empty());
        Ok((took, checked, STATEMENTS.load(Ordering::Relaxed) - before))
    };
    let (mut full, mut off, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    let (mut checked, mut strict_took) = (Vec::new(), Vec::new());
    let (mut full_n, mut off_n, mut plain_n, mut strict_n) = (0, 0, 0, 0);
    for _ in 0..ROUNDS {
        let (took, done, n) = timed(&settings)?;
        full.push(took);
        checked.push(done);
        full_n = n;
        let (took, _, n) = timed(&strict)?;
        strict_took.push(took);
        strict_n = n;
        let (took, _, n) = timed(&unchecked)?;
        off.push(took);
        off_n = n;
        let mut conn = PgConnection::establish(url)?;
        let before = STATEMENTS.load(Ordering::Relaxed);
        let started = Instant::now();
        let applied = conn
            .run_pending_migrations(PLAIN)
            .map_err(|e| e.to_string())?
            .len();
        plain.push(started.elapsed());
        assert_eq!(applied, 0);
        plain_n = STATEMENTS.load(Ordering::Relaxed) - before;
    }
    let median = |mut samples: Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2]
    };
    let (full, off, plain) = (median(full), median(off), median(plain));
    let (checked, strict) = (median(checked), median(strict_took));
    println!("| case | median of {ROUNDS} | statements | / plain |\n| --- | ---: | ---: | ---: |");
    let ratio = |d: Duration| d.as_secs_f64() / plain.as_secs_f64();
    println!(
        "| Migrator::boot + ping (DATABASE_SCHEMA_CHECK=warn) | {full:.2?} | {full_n} + ping | {:.1} |",
        ratio(full)
    );
    println!(
        "| the same, until its background drift check finished | {checked:.2?} | | {:.1} |",
        ratio(checked)
    );
    println!(
        "| the same, DATABASE_SCHEMA_CHECK=strict | {strict:.2?} | {strict_n} + ping | {:.1} |",
        ratio(strict)
    );
    println!(
        "| the same, DATABASE_SCHEMA_CHECK=off | {off:.2?} | {off_n} + ping | {:.1} |",
        ratio(off)
    );
    println!("| plain run_pending_migrations | {plain:.2?} | {plain_n} | 1.0 |");
    Ok(())
}

fn print_table(clients: &[usize], rows: &[(&str, Vec<f64>)]) {
    let header: Vec<String> = clients.iter().map(|c| format!("C={c}")).collect();
    println!("| case | {} |", header.join(" | "));
    println!("| --- |{}", " ---: |".repeat(clients.len()));
    for (name, values) in rows {
        let cells: Vec<String> = values
            .iter()
            .map(|v| {
                if name.contains('/') {
                    format!("{v:.2}")
                } else {
                    format!("{v:.0}")
                }
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}
