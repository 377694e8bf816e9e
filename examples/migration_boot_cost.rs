//! What the lock and the ledger add to a boot with nothing pending, on PostgreSQL.
//!
//! Creates a scratch database on the server at `DATALAYER_BENCH_ADMIN_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), migrates it, then times `ROUNDS` boots of
//! each kind, interleaved, each on a fresh connection as a booting replica would:
//!
//! - plain: `PgConnection::establish` + diesel_migrations' `run_pending_migrations`;
//! - datalayer: `migrations::run_pending` (its own connection, session setup, advisory lock,
//!   ledger table check, checksum and unknown-version checks, pending set, unlock).
//!
//! Statements are counted through Diesel's default instrumentation (a statement is at least
//! one round trip; a first-time prepared statement adds one). Run with
//! `cargo run --release --example migration_boot_cost`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use datalayer::{Engine, Settings, migrations};
use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::{Connection, PgConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const PLAIN: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const ROUNDS: usize = 200;

static STATEMENTS: AtomicUsize = AtomicUsize::new(0);

fn counter() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(|event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { .. } = event {
            STATEMENTS.fetch_add(1, Ordering::Relaxed);
        }
    }))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let admin_url = std::env::var("DATALAYER_BENCH_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let server = admin_url
        .rsplit_once('/')
        .map(|(s, _)| s.to_string())
        .unwrap_or_default();
    let name = format!("dl_bench_boot_{}", std::process::id());
    let mut admin = PgConnection::establish(&admin_url)?;
    admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
    let url = format!("{server}/{name}?sslmode=disable");
    let result = run(&url);
    admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))?;
    result
}

fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_pairs([("DATABASE_URL", url), ("DATABASE_POOL_MIN_IDLE", "0")])?;
    let engine = Engine::connect(&settings)?;
    migrations::run_pending(&engine)?;
    diesel::connection::set_default_instrumentation(counter)?;

    let (mut plain, mut ours) = (Vec::new(), Vec::new());
    let (mut plain_statements, mut our_statements) = (0, 0);
    for _ in 0..ROUNDS {
        let before = STATEMENTS.load(Ordering::Relaxed);
        let started = Instant::now();
        let mut conn = PgConnection::establish(url)?;
        let applied = conn
            .run_pending_migrations(PLAIN)
            .map_err(|e| e.to_string())?
            .len();
        drop(conn);
        plain.push(started.elapsed());
        assert_eq!(applied, 0);
        plain_statements = STATEMENTS.load(Ordering::Relaxed) - before;

        let before = STATEMENTS.load(Ordering::Relaxed);
        let started = Instant::now();
        let applied = migrations::run_pending(&engine)?;
        ours.push(started.elapsed());
        assert!(applied.is_empty());
        our_statements = STATEMENTS.load(Ordering::Relaxed) - before;
    }
    let (plain, ours) = (median(plain), median(ours));
    println!("boot with nothing pending, median of {ROUNDS}, same server and run:");
    println!("| boot | median | statements |");
    println!("| --- | --- | --- |");
    println!("| plain run_pending_migrations | {plain:.2?} | {plain_statements} |");
    println!("| datalayer run_pending | {ours:.2?} | {our_statements} |");
    println!(
        "extra: {:.2?} ({:.2}x), {} statements",
        ours.saturating_sub(plain),
        ours.as_secs_f64() / plain.as_secs_f64(),
        our_statements as i64 - plain_statements as i64
    );
    Ok(())
}
