//! The command line every application gets for its own migrations, whole or embedded in its
//! own (`cli` feature).
//!
//! [`run`] is a whole `main`:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     // An application embeds its own folder, usually "migrations".
//!     datalayer::cli::run(&datalayer::embed_migrations!("doc/migrations"))
//! }
//! ```
//!
//! An application with commands of its own (a `serve`) embeds the shared ones in its clap
//! command line, one binary and one `--help`, and boots its server with the same pieces the
//! command line uses: [`init_logging`] (so that lock and drift warnings are seen),
//! [`load_settings`] (the environment, then `./.env`; configuration warnings printed) and
//! [`report`] (the error on stderr, the exit status [`Error::exit_code`] documents):
//!
//! ```no_run
//! use clap::{Parser, Subcommand};
//! use std::process::ExitCode;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(subcommand)]
//!     command: Option<Command>,
//! }
//!
//! #[derive(Subcommand)]
//! enum Command {
//!     /// Serve HTTP.
//!     Serve,
//!     #[command(flatten)]
//!     Database(datalayer::cli::Command),
//! }
//!
//! fn serve() -> Result<(), datalayer::Error> {
//!     let settings = datalayer::cli::load_settings()?;
//!     let engine = datalayer::Engine::connect(&settings)?;
//!     datalayer::embed_migrations!("doc/migrations").boot(&engine)?;
//!     // ... accept requests, `engine.get()?` in each handler
//!     Ok(())
//! }
//!
//! fn main() -> ExitCode {
//!     let cli = Cli::parse();
//!     datalayer::cli::init_logging();
//!     match cli.command {
//!         Some(Command::Serve) => serve().map_or_else(|e| datalayer::cli::report(&e), |()| ExitCode::SUCCESS),
//!         Some(Command::Database(command)) => {
//!             datalayer::cli::execute(&datalayer::embed_migrations!("doc/migrations"), Some(command))
//!         }
//!         None => datalayer::cli::execute(&datalayer::embed_migrations!("doc/migrations"), None),
//!     }
//! }
//! ```
//!
//! It owns what a library function must not do on its own: reading `./.env`, printing, and
//! exit codes (0 ok, 1 other error, 2 configuration error or bad command line, 3 database
//! unreachable, 4 migration failed).

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{Loaded, Vars};
use crate::error::MigrationError;
use crate::migrations::{self, DriftOutcome, Migrator, Revert};
use crate::{Engine, Error, Settings};

#[derive(Parser)]
#[command(
    about = "Settings, pool and migrations of this application's database (datalayer)",
    long_about = "Settings, pool and migrations of this application's database (datalayer).\n\n\
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

/// The shared commands, to embed in an application's own clap command line with
/// `#[command(flatten)]` and run with [`execute`].
#[derive(Debug, Clone, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Print every effective setting with its value and where it came from (environment,
    /// .env, DATABASE_URL or default), and the connection URL with its password redacted.
    Config,
    /// Connect and print the server version, user, database and round-trip latency.
    Check,
    /// Apply pending migrations, printing each one applied.
    Migrate {
        /// Record the current checksum of this applied migration's edited up.sql as the
        /// accepted one (MIGRATION as `status` shows it, e.g. 2026-11-25-000001_create_users,
        /// or its version, 20261125000001), then migrate.
        #[arg(long, value_name = "MIGRATION")]
        accept_checksum: Vec<String>,
    },
    /// List applied, pending and unknown migrations, one per line, and who holds the
    /// migration lock.
    Status {
        /// Print a JSON object with `applied`, `pending`, `unknown` and `lock` instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the live schema's fingerprint (what the boot-time drift check compares), or
    /// with --write commit it beside the migrations folder. Run it on a database that this
    /// application's migrations alone have migrated (a fresh one): every table of the
    /// schema is described.
    Fingerprint {
        /// Write it to the committed fingerprint file (`schema.fingerprint` in the migrations
        /// folder the build embedded) instead of printing it.
        #[arg(long)]
        write: bool,
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

/// The whole command line, for an application's `main`: parses the arguments (the program's
/// own name in `--help`), reads the settings from the environment and `./.env`, runs the
/// subcommand on `migrator`, prints errors one line each to stderr, and returns the exit
/// status.
pub fn run(migrator: &Migrator) -> ExitCode {
    let program = program_name_or(migrator.name());
    let matches = Cli::command()
        .name(program)
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging();
    execute(migrator, cli.command)
}

/// Runs one shared command (`None`: the boot sequence a server runs, printing one summary
/// line) on `migrator`, with the settings of [`load_settings`]; prints an error as [`report`]
/// does and returns the exit status. Call [`init_logging`] first.
pub fn execute(migrator: &Migrator, command: Option<Command>) -> ExitCode {
    match load().and_then(|loaded| self::command(migrator, &loaded, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

/// The settings as the command line reads them: `DATABASE_*` variables from the process
/// environment, then from `./.env` for variables the environment does not set (a missing
/// `.env` is fine; an unreadable one is an error). Configuration warnings (a password file
/// others may read, a misspelt `DATABASE_*` variable) go to stderr, one line each, as
/// `<program>: warning: ...`.
pub fn load_settings() -> Result<Settings, Error> {
    Ok(load()?.settings)
}

/// Prints `error` to stderr, one `<program>: error: ...` line per line of its message, and
/// returns its exit status ([`Error::exit_code`]).
pub fn report(error: &Error) -> ExitCode {
    let program = program_name_or("datalayer");
    let mut stderr = io::stderr().lock();
    for line in error.to_string().lines() {
        let _ = writeln!(stderr, "{program}: error: {}", printable(line));
    }
    ExitCode::from(error.exit_code())
}

/// The running program's file name, printable; `fallback` when there is none.
fn program_name_or(fallback: &str) -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            Path::new(&arg0)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .map_or_else(|| fallback.to_string(), |name| printable(&name))
}

/// [`load_settings`], with the record of where each value came from (for `config`).
fn load() -> Result<Loaded, Error> {
    let loaded = Vars::from_process_env()
        .with_dotenv(Path::new(".env"))?
        .load()?;
    let program = program_name_or("datalayer");
    for warning in &loaded.warnings {
        eprintln!("{program}: warning: {}", printable(warning));
    }
    for name in &loaded.ignored {
        eprintln!(
            "{program}: warning: {} is not a datalayer setting and is ignored",
            printable(name)
        );
    }
    Ok(loaded)
}

fn command(migrator: &Migrator, loaded: &Loaded, command: Option<Command>) -> Result<(), Error> {
    let Some(command) = command else {
        return boot(migrator, loaded);
    };
    if let Command::Config = command {
        print(&config_table(loaded));
        return Ok(());
    }
    let mut settings = one_shot(&loaded.settings);
    if !matches!(command, Command::Check) {
        // Only `check` reports on the read replica; the others never read from it.
        settings.replica = None;
    }
    let engine = Engine::connect(&settings)?;
    let result = run_command(migrator, &engine, command);
    // The process exits next: no connection attempt of the pools may be inside libpq then.
    engine.close(Duration::ZERO);
    result
}

/// `command` on `engine`.
fn run_command(migrator: &Migrator, engine: &Engine, command: Command) -> Result<(), Error> {
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
            if let Some(replica) = engine.replica_state() {
                print(&format!(
                    "replica   {}
          {replica}
",
                    replica.target
                ));
                if !replica.reachable {
                    return Err(Error::Connect {
                        target: replica.target,
                        reason: replica
                            .reason
                            .unwrap_or_else(|| "the read replica cannot be reached".into()),
                    });
                }
            }
        }
        Command::Migrate { accept_checksum } => {
            for version in &accept_checksum {
                migrator.accept_checksum(engine, version)?;
            }
            let applied = migrator.run_pending(engine)?;
            let mut out: String = applied.iter().map(|m| format!("applied {m}\n")).collect();
            out.push_str(&match applied.len() {
                0 => "nothing to apply: the database is up to date\n".to_string(),
                n => format!("{n} migration(s) applied\n"),
            });
            print(&out);
        }
        Command::Status { json } => {
            let status = migrator.status(engine)?;
            let lock = status.lock.as_ref().map(ToString::to_string);
            if json {
                let value = serde_json::json!({
                    "applied": status.applied,
                    "pending": status.pending,
                    "unknown": status.unknown,
                    "edited": status.edited,
                    "lock": lock,
                    "invalid_indexes": status.invalid_indexes,
                });
                print(&format!("{value}\n"));
            } else {
                // Versions come from the database: escaped, so that a row cannot forge lines.
                let applied = status.applied.iter().map(|m| {
                    if status.edited.contains(m) {
                        format!(
                            "edited   {} (up.sql changed since it was applied)\n",
                            printable(m)
                        )
                    } else {
                        format!("applied  {}\n", printable(m))
                    }
                });
                let pending = status
                    .pending
                    .iter()
                    .map(|m| format!("pending  {}\n", printable(m)));
                let unknown = status
                    .unknown
                    .iter()
                    .map(|v| format!("unknown  {}\n", printable(v)));
                let invalid = status.invalid_indexes.iter().map(|index| {
                    format!(
                        "invalid  index {}: an interrupted CREATE INDEX CONCURRENTLY left it; \
                         DROP INDEX CONCURRENTLY it, then run migrate\n",
                        printable(index)
                    )
                });
                let mut out: String = applied
                    .chain(pending)
                    .chain(unknown)
                    .chain(invalid)
                    .collect();
                out.push_str(&match lock {
                    Some(holder) => format!("lock     held by {}\n", printable(&holder)),
                    None => "lock     free\n".to_string(),
                });
                print(&out);
            }
        }
        Command::Fingerprint { write } => {
            let mut conn = engine.get()?;
            let fingerprint = migrations::drift::fingerprint(&mut conn, engine.backend())?;
            if write {
                let path = migrator.set(engine.backend())?.fingerprint_path();
                std::fs::write(path, &fingerprint).map_err(|source| MigrationError::File {
                    action: "cannot write the fingerprint to",
                    file: path.display().to_string(),
                    source,
                })?;
                print(&format!("wrote {}\n", path.display()));
            } else {
                print(&fingerprint);
            }
        }
        Command::Revert { steps, all } => {
            let how_far = if all {
                Revert::All
            } else {
                Revert::Steps(steps)
            };
            let reverted = migrator.revert(engine, how_far)?;
            let mut out: String = reverted.iter().map(|m| format!("reverted {m}\n")).collect();
            out.push_str(&format!("{} migration(s) reverted\n", reverted.len()));
            print(&out);
        }
    }
    Ok(())
}

/// The boot sequence a server runs: engine, migrations (lock, ledger, pending, drift check),
/// ping; one summary line.
fn boot(migrator: &Migrator, loaded: &Loaded) -> Result<(), Error> {
    let engine = Engine::connect(&one_shot(&loaded.settings))?;
    let result = boot_on(migrator, &engine);
    // The process exits next: no connection attempt of the pools may be inside libpq then.
    engine.close(Duration::ZERO);
    result
}

/// [`boot`] on `engine`.
fn boot_on(migrator: &Migrator, engine: &Engine) -> Result<(), Error> {
    let report = migrator.boot(engine)?;
    let ping = engine.ping()?;
    let drift = match report.drift.wait() {
        DriftOutcome::Checked(found) if !found.is_empty() => format!(
            "; schema drift: {} difference(s), see the warnings",
            found.len()
        ),
        DriftOutcome::Failed(_) => "; the schema drift check failed, see the warnings".into(),
        DriftOutcome::Checked(_) | DriftOutcome::Skipped => String::new(),
    };
    let replica = engine
        .replica_state()
        .zip(engine.settings().replica_settings())
        .map(|(state, replica)| format!("; replica {}: {state}", replica.summary()))
        .unwrap_or_default();
    print(&format!(
        "ready: {}; {} migration(s) applied; {}; ping {:.2?}{drift}{replica}\n",
        engine.settings().summary(),
        report.applied.len(),
        ping.server_version,
        ping.latency,
    ));
    Ok(())
}

/// The settings for a command that runs once and exits: the pool opens connections only as
/// they are needed, instead of filling `DATABASE_POOL_MIN_IDLE` (by default the max size) for
/// nothing. Eight replicas booting at once then hold 2 or 3 connections each, not 12.
fn one_shot(settings: &Settings) -> Settings {
    let mut settings = settings.clone();
    settings.pool.min_idle = Some(0);
    settings
}

/// Installs the command line's log subscriber, unless the process already has one: logs go to
/// stderr; `RUST_LOG` picks the level (`info`, or targets such as `datalayer=debug`); the
/// default shows warnings. Without a subscriber, datalayer's warnings (a migration lock that
/// others wait for, schema drift, a slow query) are lost.
pub fn init_logging() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| text.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing_subscriber::filter::LevelFilter::WARN)
        });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(io::stderr)
                .with_target(false)
                .with_ansi(io::stderr().is_terminal()),
        )
        .with(filter)
        .try_init();
}

fn config_table(loaded: &Loaded) -> String {
    /// Columns are padded to the longest entry up to this many characters; a longer value
    /// overflows its column instead of widening every line.
    const MAX_WIDTH: usize = 48;
    let settings = &loaded.settings;
    let mut out = format!(
        "backend  {}\nurl      {}\n\n",
        settings.backend(),
        settings.connection_url()
    );
    let rows: Vec<(&str, String, String)> = loaded
        .entries
        .iter()
        .map(|e| (e.variable, printable(&e.value), e.origin.to_string()))
        .collect();
    let width = |column: &dyn Fn(&(&str, String, String)) -> usize| {
        rows.iter().map(column).max().unwrap_or(0).min(MAX_WIDTH)
    };
    let widths = [
        width(&|r| r.0.chars().count()),
        width(&|r| r.1.chars().count()),
    ];
    let line = |variable: &str, value: &str, origin: &str| {
        format!(
            "{}  {}  {origin}\n",
            padded(variable, widths[0]),
            padded(value, widths[1])
        )
    };
    out.push_str(&line("VARIABLE", "VALUE", "SOURCE"));
    for (variable, value, origin) in &rows {
        out.push_str(&line(variable, value, origin));
    }
    out
}

/// `text` followed by spaces up to `width` characters (never cut).
fn padded(text: &str, width: usize) -> String {
    let pad = width.saturating_sub(text.chars().count());
    format!("{text}{}", " ".repeat(pad))
}

/// `text` with its control characters escaped (`\n`, `\r`, `\u{1b}`), so that a value cannot
/// forge lines or terminal sequences in the output.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Writes to stdout; a closed stdout (e.g. `| head`) is not worth a panic.
fn print(text: &str) {
    let _ = io::stdout().lock().write_all(text.as_bytes());
}
