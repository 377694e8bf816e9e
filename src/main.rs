//! `datalayer`: a thin command line over the datalayer library.
//!
//! It owns what a library must not do on its own: reading `./.env`, printing, and exit codes.
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use datalayer::Error;
use datalayer::config::{Loaded, Vars};

/// Exit status for a configuration error (also clap's status for a bad command line).
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "datalayer",
    version,
    about = "The synchronous data layer: settings, pool, migrations",
    after_help = "Settings come from DATABASE_* environment variables, then from ./.env for \
                  variables the environment does not set (see .env.example).\n\n\
                  Exit status: 0 ok, 2 configuration error or bad command line."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print every effective setting with its value and where it came from (environment,
    /// .env, DATABASE_URL or default), and the connection URL with its password redacted.
    /// This is also what runs when no subcommand is given.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match Vars::from_process_env()
        .with_dotenv(Path::new(".env"))
        .and_then(|vars| vars.load())
    {
        Ok(loaded) => loaded,
        Err(error) => return report(&error),
    };
    match cli.command {
        None | Some(Command::Config) => print_config(&loaded),
    }
}

/// Prints an error on stderr, one line per problem, and picks the exit status.
fn report(error: &Error) -> ExitCode {
    let mut stderr = io::stderr().lock();
    for line in error.to_string().lines() {
        let _ = writeln!(stderr, "datalayer: error: {line}");
    }
    ExitCode::from(EXIT_CONFIG)
}

fn print_config(loaded: &Loaded) -> ExitCode {
    {
        let mut stderr = io::stderr().lock();
        for name in &loaded.ignored {
            let _ = writeln!(
                stderr,
                "datalayer: warning: {name} is not a datalayer setting and is ignored"
            );
        }
    }
    let settings = &loaded.settings;
    let mut out = String::new();
    out.push_str(&format!("backend  {}\n", settings.backend()));
    out.push_str(&format!("url      {}\n\n", settings.connection_url()));
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
    // A closed stdout (e.g. `| head`) is not an error worth a panic.
    let _ = io::stdout().lock().write_all(out.as_bytes());
    ExitCode::SUCCESS
}
