//! Overload: more client threads than connections. A pool of 8 and C = 8 (saturated, the
//! unsaturated peak), 32 and 128 (4x and 16x) threads doing point reads; each request is
//! timed around checkout + query + return into an HDR histogram. The engine against a plain
//! r2d2 pool of 8 (no test on checkout: its fastest), first in production's layout (PostgreSQL
//! and the client threads on separate cores, `split.rs`), then, as a secondary view, with
//! client and server sharing the cores, at C = 8, 9 (one thread waiting), 32 and 128 and with
//! pgbench through PgBouncer with 8 server connections beside them (transaction mode,
//! `-M extended`; its latencies from pgbench's per-transaction log). Every round runs every C
//! and case (in the reverse order of the round before); the latencies of the rounds are
//! merged, and the ratios are medians of same-round pairs. A second table gives what the whole
//! machine spent per request meanwhile (`machine.rs`).

use std::time::{Duration, Instant};

use datalayer::{Engine, Settings};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use hdrhistogram::Histogram;

use crate::machine::{Counters, Spent};
use crate::split;

use crate::{
    Bouncer, Config, Ids, Result, Window, engine_read, pgbench_via, pool_read, settle, warmed_up,
};

/// The pool size every case gets.
const POOL: usize = 8;

/// Latencies in microseconds, up to an hour.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What one case measured, over all its rounds.
pub(crate) struct Measured {
    requests: u64,
    seconds: f64,
    pub(crate) latencies: Histogram<u64>,
    /// What the whole machine spent meanwhile.
    spent: Spent,
}

impl Measured {
    pub(crate) fn new() -> Measured {
        Measured {
            requests: 0,
            seconds: 0.0,
            latencies: histogram(),
            spent: Spent::default(),
        }
    }

    pub(crate) fn add(&mut self, other: Measured) {
        self.requests += other.requests;
        self.seconds += other.seconds;
        self.spent.merge(other.spent);
        self.latencies
            .add(&other.latencies)
            .expect("histograms of the same bounds");
    }

    pub(crate) fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Runs `threads` workers for `seconds`, timing each call of the operation `make(i)` returns.
pub(crate) fn timed<F, W>(seconds: f64, threads: usize, make: F) -> Measured
where
    F: Fn(usize) -> W + Sync,
    W: FnMut(),
{
    let start = std::sync::Barrier::new(threads + 1);
    let merged = std::sync::Mutex::new(Measured::new());
    let window = Window::new();
    let before = std::thread::scope(|scope| {
        for i in 0..threads {
            let (start, merged, make, window) = (&start, &merged, &make, &window);
            scope.spawn(move || {
                let mut operation = make(i);
                let mut latencies = histogram();
                start.wait();
                let began = window.begin();
                let deadline = began + Duration::from_secs_f64(seconds);
                let mut now = began;
                let mut requests = 0;
                while now < deadline {
                    operation();
                    let end = Instant::now();
                    let _ = latencies.record((end - now).as_micros().max(1) as u64);
                    now = end;
                    requests += 1;
                }
                window.end();
                let mut merged = merged.lock().expect("merge");
                merged.requests += requests;
                merged
                    .latencies
                    .add(&latencies)
                    .expect("histograms of the same bounds");
            });
        }
        start.wait();
        Counters::now()
    });
    let after = Counters::now();
    let mut measured = merged.into_inner().expect("merge");
    measured.seconds = window.seconds();
    measured.spent.add(before, after);
    measured
}

fn engine(config: &Config, settings: &Settings, clients: usize) -> Result<Measured> {
    let engine = Engine::connect(settings)?;
    warmed_up(&engine);
    let rows = config.rows;
    Ok(timed(config.seconds, clients, |i| {
        let mut ids = Ids::new(i, rows);
        let engine = &engine;
        move || engine_read(engine, &mut ids)
    }))
}

fn plain_r2d2(config: &Config, clients: usize) -> Result<Measured> {
    let pool = Pool::builder()
        .max_size(POOL as u32)
        .test_on_check_out(false)
        .build(ConnectionManager::<PgConnection>::new(&config.url))?;
    let rows = config.rows;
    Ok(timed(config.seconds, clients, |i| {
        let mut ids = Ids::new(i, rows);
        let pool = &pool;
        move || pool_read(pool, &mut ids)
    }))
}

/// pgbench through PgBouncer, its latencies read from its per-transaction log.
fn pgbench(config: &Config, url: &str, clients: usize) -> Result<Measured> {
    let rows = config.rows;
    let script = format!(
        "\\set id random(1, {rows})\nSELECT id, email, display_name, created_at, updated_at \
         FROM users WHERE id = :id;\n"
    );
    let dir = std::env::temp_dir().join(format!("dl_bench_overload_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let prefix = dir.join("log");
    let extra = [
        "-l".to_string(),
        format!("--log-prefix={}", prefix.display()),
    ];
    // pgbench's whole run: its start-up and connection phase count too.
    let before = Counters::now();
    let tps = pgbench_via(config, url, "extended", &script, clients, &extra)?;
    let mut measured = Measured::new();
    measured.spent.add(before, Counters::now());
    for entry in std::fs::read_dir(&dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            // client_id transaction_no time script_no time_epoch time_us: `time` is the
            // latency in microseconds.
            if let Some(micros) = line.split_whitespace().nth(2).and_then(|t| t.parse().ok()) {
                let _ = measured.latencies.record(std::cmp::max(micros, 1));
                measured.requests += 1;
            }
        }
    }
    std::fs::remove_dir_all(&dir)?;
    // Throughput as pgbench reports it (its log also holds the connection phase's requests).
    measured.seconds = measured.requests as f64 / tps;
    Ok(measured)
}

/// The case names, in the order of their index in a layout's figures.
const NAMES: [&str; 3] = ["engine", "plain r2d2", "pgbench via PgBouncer"];

/// Every C of the shared layout. C = POOL + 1: one thread waiting, the smallest line. What the
/// line's fairness costs shows here already (every hand-off puts one thread to sleep and wakes
/// another; see docs/performance.md), and plain r2d2, whose returning threads take their connection
/// back, barely loses.
const SIZES: [usize; 4] = [POOL, POOL + 1, POOL * 4, POOL * 16];

/// What one layout measured: by C, by case (`NAMES`), over all rounds; and each round's rates,
/// at `size * 3 + case`, for the same-round ratios.
struct Layout {
    sizes: Vec<usize>,
    cases: Vec<[Measured; 3]>,
    runs: crate::Runs<12>,
}

impl Layout {
    /// Runs every (C, case) pair of `sizes` and `cases` each round, in the opposite order to
    /// the round before (ABBA), so that the ratios pair figures measured minutes apart at
    /// most, not a whole column apart: the machine's other load drifts over a run. `run`
    /// measures one pair (`None`: the case cannot run here).
    fn measure(
        config: &Config,
        label: &str,
        sizes: &[usize],
        cases: &[usize],
        mut run: impl FnMut(usize, usize) -> Result<Option<Measured>>,
    ) -> Result<Layout> {
        let mut layout = Layout {
            sizes: sizes.to_vec(),
            cases: sizes
                .iter()
                .map(|_| std::array::from_fn(|_| Measured::new()))
                .collect(),
            runs: crate::Runs { rounds: Vec::new() },
        };
        let rounds = config.rounds.max(1);
        for round in 0..rounds {
            let mut rates = [f64::NAN; 12];
            let mut order: Vec<(usize, usize)> = (0..sizes.len())
                .flat_map(|size| cases.iter().map(move |&case| (size, case)))
                .collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for (size, case) in order {
                let clients = sizes[size];
                crate::progress::run(&format!(
                    "overload{label} C={clients}, round {}/{rounds}, {}",
                    round + 1,
                    NAMES[case]
                ));
                if let Some(measured) = run(clients, case)? {
                    rates[size * 3 + case] = measured.per_second();
                    layout.cases[size][case].add(measured);
                }
            }
            layout.runs.rounds.push(rates);
        }
        Ok(layout)
    }

    /// The latency table; with `chart`, its C >= 4x the pool rows feed the overload chart.
    fn print_latencies(&self, chart: bool) {
        println!(
            "| C | case | req/s | p50 ms | p99 ms | p99.9 ms | max ms | max / p99.9 | over 10x p50 |"
        );
        println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (size, &clients) in self.sizes.iter().enumerate() {
            for (name, measured) in NAMES.iter().zip(&self.cases[size]) {
                if measured.requests == 0 {
                    continue;
                }
                let h = &measured.latencies;
                let ms = |micros: u64| micros as f64 / 1000.0;
                let p50 = h.value_at_quantile(0.5);
                if chart
                    && clients >= POOL * 4
                    && let Ok(mut figures) = crate::FIGURES.lock()
                {
                    figures.overload.push((
                        format!("{name}, C = {clients}"),
                        [
                            ms(p50),
                            ms(h.value_at_quantile(0.99)),
                            ms(h.value_at_quantile(0.999)),
                            ms(h.max()),
                        ],
                    ));
                }
                let slow = h
                    .iter_recorded()
                    .filter(|v| v.value_iterated_to() > p50.saturating_mul(10))
                    .map(|v| v.count_at_value())
                    .sum::<u64>();
                println!(
                    "| {clients} | {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} % |",
                    measured.per_second(),
                    ms(p50),
                    ms(h.value_at_quantile(0.99)),
                    ms(h.value_at_quantile(0.999)),
                    ms(h.max()),
                    h.max() as f64 / h.value_at_quantile(0.999).max(1) as f64,
                    100.0 * slow as f64 / h.len().max(1) as f64,
                );
            }
            if clients > POOL {
                // Ratios: the median over rounds of the pair measured in the same round, the
                // lowest and highest round's beside it.
                let runs = &self.runs;
                println!(
                    "| {clients} | engine / plain r2d2 | {} | | | | | | |",
                    runs.paired_with_range(size * 3, size * 3 + 1)
                );
                println!(
                    "| {clients} | engine / its peak at C = {POOL} | {} | | | | | | |",
                    runs.paired_with_range(size * 3, 0)
                );
                println!(
                    "| {clients} | plain r2d2 / its peak at C = {POOL} | {} | | | | | | |",
                    runs.paired_with_range(size * 3 + 1, 1)
                );
            }
        }
    }

    /// What the whole machine spent per request while each case ran.
    fn print_machine(&self) {
        println!(
            "| C | case | CPU µs / req | context switches / req | cores idle | taken by the host |"
        );
        println!("| ---: | --- | ---: | ---: | ---: | ---: |");
        for (size, &clients) in self.sizes.iter().enumerate() {
            for (name, measured) in NAMES.iter().zip(&self.cases[size]) {
                if measured.requests == 0 {
                    continue;
                }
                let [cpu, switches, idle, stolen] = measured.spent.cells(measured.requests);
                println!("| {clients} | {name} | {cpu} | {switches} | {idle} | {stolen} |");
            }
        }
    }
}

/// Runs of the case: the shared layout's (C, case) pairs, and the separate cores' when this
/// machine can run that layout.
pub(crate) fn planned_runs(config: &Config) -> usize {
    let rounds = config.rounds.max(1);
    let separate = if split::possible().is_ok() {
        SEPARATE_SIZES.len() * 2
    } else {
        0
    };
    rounds * (SIZES.len() * NAMES.len() + separate)
}

/// Every C of the separate cores' layout.
const SEPARATE_SIZES: [usize; 3] = [POOL, POOL * 4, POOL * 16];

pub(crate) fn overload(config: &Config, _: &Settings) -> Result<()> {
    println!(
        "\n## Overload: point reads, pool of {POOL}, more threads than connections \
         (latency of checkout + query + return; rounds merged)\n"
    );
    // Production's layout first; the chart shows it when it ran.
    let separate = separate_cores(config)?;
    println!("\n### Secondary view: the client, PostgreSQL and PgBouncer sharing every core\n");
    let settings = pool_settings(&config.url)?;
    let bouncer = match Bouncer::start(POOL) {
        Ok(bouncer) => Some(bouncer),
        Err(why) => {
            eprintln!("overload: pgbench via PgBouncer skipped: {why}");
            None
        }
    };
    let bouncer_url = bouncer.as_ref().map(|b| {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
            b.port, config.dbname
        )
    });
    let shared = Layout::measure(config, "", &SIZES, &[0, 1, 2], |clients, case| {
        settle(config)?;
        Ok(match (case, &bouncer_url) {
            (0, _) => Some(engine(config, &settings, clients)?),
            (1, _) => Some(plain_r2d2(config, clients)?),
            (_, Some(url)) => Some(pgbench(config, url, clients)?),
            (_, None) => None,
        })
    })?;
    drop(bouncer);
    shared.print_latencies(!separate);
    println!(
        "\nWhat the whole machine spent per request while each case ran (every process: the \
         benchmark, PostgreSQL, PgBouncer, pgbench; from /proc/stat, rounds merged):\n"
    );
    shared.print_machine();
    Ok(())
}

/// The engine and plain r2d2 with PostgreSQL and the client threads on separate cores
/// (`split.rs`, production's layout), or a line saying why this machine cannot; whether it
/// ran.
fn separate_cores(config: &Config) -> Result<bool> {
    let split = match split::Split::start() {
        Ok(split) => split,
        Err(why) => {
            println!("### Production's layout: skipped ({why}).");
            return Ok(false);
        }
    };
    let there = split.config(config);
    crate::setup(&there)?;
    let settings = pool_settings(&there.url)?;
    let layout = Layout::measure(
        config,
        ", separate cores,",
        &SEPARATE_SIZES,
        &[0, 1],
        |clients, case| {
            settle(&there)?;
            let measured = split.on_client_core(|| match case {
                0 => engine(&there, &settings, clients),
                _ => plain_r2d2(&there, clients),
            })??;
            Ok(Some(measured))
        },
    )?;
    println!(
        "### Production's layout: PostgreSQL on cores {:?} (a cluster of the benchmark's own), \
         the client threads on core {}, as when the database runs on a machine of its own \
         (`split.rs`)\n",
        split.server_cores, split.client_core
    );
    layout.print_latencies(true);
    println!("\nWhat the whole machine spent per request meanwhile:\n");
    layout.print_machine();
    Ok(true)
}

/// The engine's settings for the benchmark database at `url`, with a pool of [`POOL`].
fn pool_settings(url: &str) -> Result<Settings> {
    Ok(Settings::from_pairs([
        ("DATABASE_URL", url),
        ("DATABASE_POOL_MAX_SIZE", &POOL.to_string()),
    ])?)
}
