//! `datalayer`: a thin command line over the datalayer library.
//!
//! It owns what a library must not do on its own: reading `./.env`, printing, and exit codes.
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use datalayer::config::{Loaded, Vars};
use datalayer::migrations::{self, Revert};
use datalayer::{Engine, Error};

#[derive(Parser)]
#[command(
    name = "datalayer",
    version,
    about = "The synchronous data layer: settings, pool, migrations",
    long_about = "The synchronous data layer: settings, pool, migrations.\n\n\
                  Without a subcommand, runs the boot sequence a server runs: settings, engine, \
                  pending migrations, ping; and prints one summary line.",
    after_help = "Settings come from DATABASE_* environment variables, then from ./.env for \
                  variables the environment does not set (see .env.example).\n\n\
                  Exit status: 0 ok, 1 other error, 2 configuration error or bad command line, \
                  3 database unreachable, 4 migration failed."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print every effective setting with its value and where it came from (environment,
    /// .env, DATABASE_URL or default), and the connection URL with its password redacted.
    Config,
    /// Connect and print the server version, user, database and round-trip latency.
    Check,
    /// Apply pending migrations, printing each one applied.
    Migrate,
    /// List applied and pending migrations, one per line.
    Status {
        /// Print a JSON object with `applied` and `pending` arrays instead.
        #[arg(long)]
        json: bool,
    },
    /// Revert applied migrations, newest first (one unless told otherwise).
    Revert {
        /// How many migrations to revert.
        #[arg(long, default_value_t = 1, conflicts_with = "all")]
        steps: usize,
        /// Revert every applied migration.
        #[arg(long)]
        all: bool,
    },
}

/// What went wrong, and the exit status it earns.
struct Failure {
    error: Error,
    status: u8,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::Config(_) | Error::DotEnv { .. } => 2,
            Error::Connect { .. } | Error::PoolTimeout { .. } => 3,
            Error::Migration { .. } => 4,
            _ => 1,
        };
        Failure { error, status }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let mut stderr = io::stderr().lock();
            for line in failure.error.to_string().lines() {
                let _ = writeln!(stderr, "datalayer: error: {line}");
            }
            ExitCode::from(failure.status)
        }
    }
}

fn run(command: Option<Command>) -> Result<(), Failure> {
    let loaded = Vars::from_process_env()
        .with_dotenv(Path::new(".env"))?
        .load()?;
    for name in &loaded.ignored {
        eprintln!("datalayer: warning: {name} is not a datalayer setting and is ignored");
    }
    let Some(command) = command else {
        return boot(&loaded);
    };
    if let Command::Config = command {
        print(&config_table(&loaded));
        return Ok(());
    }
    let engine = Engine::connect(&loaded.settings)?;
    match command {
        Command::Config => unreachable!("handled above"),
        Command::Check => {
            let ping = engine.ping()?;
            print(&format!(
                "connected to {}\nserver    {}\nuser      {}\ndatabase  {}\nlatency   {:.2?}\n",
                engine.target(),
                ping.server_version,
                ping.user.as_deref().unwrap_or("(none: SQLite)"),
                ping.database,
                ping.latency,
            ));
        }
        Command::Migrate => {
            let applied = migrations::run_pending(&engine)?;
            let mut out: String = applied.iter().map(|m| format!("applied {m}\n")).collect();
            out.push_str(&match applied.len() {
                0 => "nothing to apply: the database is up to date\n".to_string(),
                n => format!("{n} migration(s) applied\n"),
            });
            print(&out);
        }
        Command::Status { json } => {
            let status = migrations::status(&engine)?;
            if json {
                let value = serde_json::json!({
                    "applied": status.applied,
                    "pending": status.pending,
                });
                print(&format!("{value}\n"));
            } else {
                let lines = status.applied.iter().map(|m| format!("applied  {m}\n"));
                let pending = status.pending.iter().map(|m| format!("pending  {m}\n"));
                print(&lines.chain(pending).collect::<String>());
            }
        }
        Command::Revert { steps, all } => {
            let how_far = if all {
                Revert::All
            } else {
                Revert::Steps(steps)
            };
            let reverted = migrations::revert(&engine, how_far)?;
            let mut out: String = reverted.iter().map(|m| format!("reverted {m}\n")).collect();
            out.push_str(&format!("{} migration(s) reverted\n", reverted.len()));
            print(&out);
        }
    }
    Ok(())
}

/// The boot sequence a server runs: engine, pending migrations, ping; one summary line.
fn boot(loaded: &Loaded) -> Result<(), Failure> {
    let engine = Engine::connect(&loaded.settings)?;
    let applied = migrations::run_pending(&engine)?;
    let ping = engine.ping()?;
    print(&format!(
        "ready: {} at {}; {} migration(s) applied; {}; ping {:.2?}\n",
        engine.backend(),
        engine.target(),
        applied.len(),
        ping.server_version,
        ping.latency,
    ));
    Ok(())
}

fn config_table(loaded: &Loaded) -> String {
    let settings = &loaded.settings;
    let mut out = format!(
        "backend  {}\nurl      {}\n\n",
        settings.backend(),
        settings.connection_url()
    );
    let width = loaded
        .entries
        .iter()
        .map(|e| e.variable.len())
        .max()
        .unwrap_or(0);
    let value_width = loaded
        .entries
        .iter()
        .map(|e| e.value.chars().count())
        .max()
        .unwrap_or(0);
    out.push_str(&format!(
        "{:width$}  {:value_width$}  SOURCE\n",
        "VARIABLE", "VALUE"
    ));
    for entry in &loaded.entries {
        out.push_str(&format!(
            "{:width$}  {:value_width$}  {}\n",
            entry.variable, entry.value, entry.origin
        ));
    }
    out
}

/// Writes to stdout; a closed stdout (e.g. `| head`) is not worth a panic.
fn print(text: &str) {
    let _ = io::stdout().lock().write_all(text.as_bytes());
}
