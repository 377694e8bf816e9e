//! Each of the engine's mechanisms over r2d2, with and without, in the same run: PostgreSQL on
//! cores of its own (`split.rs`, production's layout) and SQLite in the process.
//!
//! The variants: the engine as it ships; without each mechanism that
//! `Engine::connect_without` can switch off (the `__bench` feature, not part of the API); and
//! a plain r2d2 pool (no test on checkout), what every mechanism adds to. PostgreSQL: point
//! reads with a pool of 8 at C = 1, 4, 8 (throughput) and 32, 128 (overload: p99 and max).
//! SQLite: point reads at C = 1, 2, 4 against a held `SqliteConnection` per thread. Every
//! round runs every variant (in the reverse order of the round before); ratios are medians of
//! same-round pairs, latencies merge the rounds.

use datalayer::{Engine, Settings};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};

use crate::overload::{Measured, timed};
use crate::{Config, Ids, Result, engine_read, pool_read, settle, split, warmed_up};

/// Pool size in every case.
const POOL: usize = 8;

/// The client threads of the PostgreSQL rows.
const SIZES: [usize; 5] = [1, 4, POOL, POOL * 4, POOL * 16];

/// The SQLite rows.
const LITE_SIZES: [usize; 3] = [1, 2, 4];

/// The variants: a name and the mechanism switched off (`None`: the engine as it ships; the
/// last, plain r2d2, is handled apart).
const VARIANTS: [(&str, Option<&str>); 6] = [
    ("engine", None),
    ("without parking (and streak, reaper)", Some("parking")),
    ("without the line (and parking)", Some("line")),
    ("without the validation window", Some("validation-window")),
    ("without the checkout registry", Some("registry")),
    ("plain r2d2", None),
];

const PLAIN: usize = VARIANTS.len() - 1;

fn connect(settings: &Settings, variant: usize) -> Result<Engine> {
    Ok(match VARIANTS[variant].1 {
        None => Engine::connect(settings)?,
        Some(mechanism) => Engine::connect_without(settings, mechanism)?,
    })
}

/// Runs of the case, for the progress line.
pub(crate) fn planned_runs(config: &Config) -> usize {
    let rounds = config.rounds.max(1);
    let postgres = if split::possible().is_ok() {
        SIZES.len()
    } else {
        0
    };
    rounds * VARIANTS.len() * (postgres + LITE_SIZES.len())
}

pub(crate) fn mechanisms(config: &Config, _: &Settings) -> Result<()> {
    println!(
        "\n## Each mechanism with and without (pool of {POOL}; ratios: median of same-round \
         pairs, lowest and highest round)\n"
    );
    match split::Split::start() {
        Ok(split) => postgres(config, &split)?,
        Err(why) => println!("PostgreSQL on separate cores: skipped ({why}).\n"),
    }
    sqlite(config)
}

/// By C and variant: every round merged, and each round's rates.
type Measurements = (Vec<Vec<Measured>>, Vec<crate::Runs<{ VARIANTS.len() }>>);

/// Every variant at every C, `rounds` times; `run(c, variant)` measures one.
fn measure(
    config: &Config,
    label: &str,
    sizes: &[usize],
    mut run: impl FnMut(usize, usize) -> Result<Measured>,
) -> Result<Measurements> {
    let mut merged: Vec<Vec<Measured>> = sizes
        .iter()
        .map(|_| VARIANTS.iter().map(|_| Measured::new()).collect())
        .collect();
    let mut rates: Vec<crate::Runs<{ VARIANTS.len() }>> = sizes
        .iter()
        .map(|_| crate::Runs { rounds: Vec::new() })
        .collect();
    let rounds = config.rounds.max(1);
    for round in 0..rounds {
        for (size, &clients) in sizes.iter().enumerate() {
            let mut order: Vec<usize> = (0..VARIANTS.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            let mut these = [f64::NAN; VARIANTS.len()];
            for variant in order {
                crate::progress::run(&format!(
                    "mechanisms, {label} C={clients}, round {}/{rounds}, {}",
                    round + 1,
                    VARIANTS[variant].0
                ));
                let measured = run(clients, variant)?;
                these[variant] = measured.per_second();
                merged[size][variant].add(measured);
            }
            rates[size].rounds.push(these);
        }
    }
    Ok((merged, rates))
}

fn postgres(config: &Config, split: &split::Split) -> Result<()> {
    let there = split.config(config);
    crate::setup(&there)?;
    let settings = Settings::from_pairs([
        ("DATABASE_URL", there.url.as_str()),
        ("DATABASE_POOL_MAX_SIZE", &POOL.to_string()),
    ])?;
    let rows = config.rows;
    let (merged, rates) = measure(config, "postgres", &SIZES, |clients, variant| {
        settle(&there)?;
        split.on_client_core(|| -> Result<Measured> {
            if variant == PLAIN {
                let pool = Pool::builder()
                    .max_size(POOL as u32)
                    .test_on_check_out(false)
                    .build(ConnectionManager::<PgConnection>::new(&there.url))?;
                return Ok(timed(config.seconds, clients, |i| {
                    let (mut ids, pool) = (Ids::new(i, rows), &pool);
                    move || pool_read(pool, &mut ids)
                }));
            }
            let engine = connect(&settings, variant)?;
            warmed_up(&engine);
            Ok(timed(config.seconds, clients, |i| {
                let (mut ids, engine) = (Ids::new(i, rows), &engine);
                move || engine_read(engine, &mut ids)
            }))
        })?
    })?;
    println!(
        "PostgreSQL on cores {:?}, the client threads on core {} (production's layout), point \
         reads:\n",
        split.server_cores, split.client_core
    );
    println!("| C | variant | req/s | / engine | p99 ms | p99.9 ms | max ms |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for (size, &clients) in SIZES.iter().enumerate() {
        for (variant, (name, _)) in VARIANTS.iter().enumerate() {
            let measured = &merged[size][variant];
            let h = &measured.latencies;
            let ms = |micros: u64| micros as f64 / 1000.0;
            println!(
                "| {clients} | {name} | {:.0} | {} | {:.2} | {:.2} | {:.1} |",
                measured.per_second(),
                if variant == 0 {
                    "1".to_string()
                } else {
                    rates[size].paired_with_range(variant, 0)
                },
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max()),
            );
        }
    }
    Ok(())
}

fn sqlite(config: &Config) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.sqlite3");
    let settings = Settings::from_pairs([
        ("DATABASE_PATH", path.as_os_str()),
        ("DATABASE_POOL_MAX_SIZE", std::ffi::OsStr::new("8")),
    ])?;
    crate::fill_sqlite(&settings, config.rows)?;
    let rows = config.rows;
    let url = path.to_string_lossy().into_owned();
    let (merged, rates) = measure(config, "sqlite", &LITE_SIZES, |clients, variant| {
        if variant == PLAIN {
            // The reference here is a held connection per thread, not a pool.
            return Ok(timed(config.seconds, clients, |i| {
                let mut conn = crate::open_sqlite(&url);
                let mut ids = Ids::new(i, rows);
                move || crate::held_read(&mut conn, &mut ids)
            }));
        }
        let engine = connect(&settings, variant)?;
        warmed_up(&engine);
        Ok(timed(config.seconds, clients, |i| {
            let (mut ids, engine) = (Ids::new(i, rows), &engine);
            move || engine_read(engine, &mut ids)
        }))
    })?;
    println!(
        "\nSQLite in the process, point reads (the last row: a held `SqliteConnection` per \
         thread instead of plain r2d2):\n"
    );
    println!("| C | variant | req/s | / engine | / held |");
    println!("| ---: | --- | ---: | ---: | ---: |");
    for (size, &clients) in LITE_SIZES.iter().enumerate() {
        for (variant, (name, _)) in VARIANTS.iter().enumerate() {
            let name = if variant == PLAIN {
                "held connection"
            } else {
                name
            };
            println!(
                "| {clients} | {name} | {:.0} | {} | {} |",
                merged[size][variant].per_second(),
                if variant == 0 {
                    "1".to_string()
                } else {
                    rates[size].paired_with_range(variant, 0)
                },
                rates[size].paired_with_range(variant, PLAIN),
            );
        }
    }
    Ok(())
}
