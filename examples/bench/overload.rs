//! Overload: more client threads than connections. A pool of 8 and C = 8 (saturated, the
//! unsaturated peak), 9 (one thread waiting), 32 and 128 (4x and 16x) threads doing point
//! reads; each request is timed
//! around checkout + query + return into an HDR histogram. The engine against a plain r2d2
//! pool of 8 (no test on checkout: its fastest) and pgbench through PgBouncer with 8 server
//! connections (transaction mode, `-M extended`; its latencies from pgbench's per-transaction
//! log). Every round runs every C and case (in the reverse order of the round before); the
//! latencies of the rounds are merged, and the ratios are medians of same-round pairs. A
//! second table gives what the whole machine spent per request meanwhile (`machine.rs`).

use std::time::{Duration, Instant};

use datalayer::{Engine, Settings};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use hdrhistogram::Histogram;

use crate::machine::{Counters, Spent};

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
struct Measured {
    requests: u64,
    seconds: f64,
    latencies: Histogram<u64>,
    /// What the whole machine spent meanwhile.
    spent: Spent,
}

impl Measured {
    fn new() -> Measured {
        Measured {
            requests: 0,
            seconds: 0.0,
            latencies: histogram(),
            spent: Spent::default(),
        }
    }

    fn add(&mut self, other: Measured) {
        self.requests += other.requests;
        self.seconds += other.seconds;
        self.spent.merge(other.spent);
        self.latencies
            .add(&other.latencies)
            .expect("histograms of the same bounds");
    }

    fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Runs `threads` workers for `seconds`, timing each call of the operation `make(i)` returns.
fn timed<F, W>(seconds: f64, threads: usize, make: F) -> Measured
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

pub(crate) fn overload(config: &Config, _: &Settings) -> Result<()> {
    println!(
        "\n## Overload: point reads, pool of {POOL}, more threads than connections \
         (latency of checkout + query + return; rounds merged)\n"
    );
    let settings = Settings::from_pairs([
        ("DATABASE_URL", config.url.as_str()),
        ("DATABASE_POOL_MAX_SIZE", &POOL.to_string()),
    ])?;
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
    println!(
        "| C | case | req/s | p50 ms | p99 ms | p99.9 ms | max ms | max / p99.9 | over 10x p50 |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    // Every round runs every (C, case) pair, in the opposite order to the round before (ABBA),
    // so that the ratios below pair figures measured minutes apart at most, not a whole
    // column apart: the machine's other load drifts over a run.
    // C = POOL + 1: one thread waiting, the smallest line. What the line's fairness costs shows
    // here already (every hand-off puts one thread to sleep and wakes another; see the README),
    // and plain r2d2, whose returning threads take their connection back, barely loses.
    const SIZES: [usize; 4] = [POOL, POOL + 1, POOL * 4, POOL * 16];
    let names = ["engine", "plain r2d2", "pgbench via PgBouncer"];
    let mut cases: [[Measured; 3]; 4] =
        std::array::from_fn(|_| std::array::from_fn(|_| Measured::new()));
    let mut runs = crate::Runs::<12> { rounds: Vec::new() };
    let rounds = config.rounds.max(1);
    for round in 0..rounds {
        let mut rates = [f64::NAN; 12];
        let mut order: Vec<(usize, usize)> = (0..SIZES.len())
            .flat_map(|size| (0..3).map(move |case| (size, case)))
            .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for (size, case) in order {
            let clients = SIZES[size];
            crate::progress::run(&format!(
                "overload C={clients}, round {}/{rounds}, case {}/3",
                round + 1,
                case + 1
            ));
            settle(config)?;
            let measured = match (case, &bouncer_url) {
                (0, _) => engine(config, &settings, clients)?,
                (1, _) => plain_r2d2(config, clients)?,
                (_, Some(url)) => pgbench(config, url, clients)?,
                (_, None) => continue,
            };
            rates[size * 3 + case] = measured.per_second();
            cases[size][case].add(measured);
        }
        runs.rounds.push(rates);
    }
    for (size, clients) in SIZES.into_iter().enumerate() {
        for (name, measured) in names.iter().zip(&cases[size]) {
            if measured.requests == 0 {
                continue;
            }
            let h = &measured.latencies;
            let ms = |micros: u64| micros as f64 / 1000.0;
            let p50 = h.value_at_quantile(0.5);
            if clients >= POOL * 4
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
    println!(
        "\nWhat the whole machine spent per request while each case ran (every process: the \
         benchmark, PostgreSQL, PgBouncer, pgbench; from /proc/stat, rounds merged):\n"
    );
    println!("| C | case | CPU µs / req | context switches / req | cores idle |");
    println!("| ---: | --- | ---: | ---: | ---: |");
    for (size, clients) in SIZES.into_iter().enumerate() {
        for (name, measured) in names.iter().zip(&cases[size]) {
            if measured.requests == 0 {
                continue;
            }
            let [cpu, switches, idle] = measured.spent.cells(measured.requests);
            println!("| {clients} | {name} | {cpu} | {switches} | {idle} |");
        }
    }
    Ok(())
}
