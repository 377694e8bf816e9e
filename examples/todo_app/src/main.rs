//! `todo-app`: this application's own command line, one binary and one `--help`: its `serve`
//! beside datalayer's shared commands (without a command: the boot; `config`, `check`,
//! `migrate`, `status`, `revert`, `fingerprint`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use datalayer::Engine;
use diesel::PgConnection;

#[derive(Parser)]
#[command(version, about = "A to-do list on datalayer (PostgreSQL)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Boot (settings, engine, pending migrations), then answer `GET /todos?tag=TAG` with the
    /// open to-dos carrying that tag, one title per line.
    Serve {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    #[command(flatten)]
    Database(datalayer::cli::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before anything logs: datalayer's lock and drift warnings go to stderr.
    datalayer::cli::init_logging();
    match cli.command {
        Some(Command::Serve { listen }) => match serve(&listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => datalayer::cli::report(&e),
        },
        Some(Command::Database(command)) => {
            datalayer::cli::execute(&todo_app::migrator(), Some(command))
        }
        None => datalayer::cli::execute(&todo_app::migrator(), None),
    }
}

fn serve(listen: &str) -> Result<(), datalayer::Error> {
    let settings = datalayer::cli::load_settings()?;
    let engine: Engine<PgConnection> = Engine::connect_as(&settings)?;
    todo_app::migrator().boot(&engine)?;
    let listener = TcpListener::bind(listen).map_err(|e| datalayer::Error::Connect {
        target: listen.to_string(),
        reason: format!("cannot listen: {e}"),
    })?;
    eprintln!("listening on http://{listen}");
    for stream in listener.incoming().flatten() {
        // One request per connection, answered in turn: a sketch, not a server.
        let _ = answer(&engine, stream);
    }
    Ok(())
}

fn answer(engine: &Engine<PgConnection>, mut stream: TcpStream) -> std::io::Result<()> {
    let mut request_line = String::new();
    BufReader::new(&stream).read_line(&mut request_line)?;
    let tag = request_line
        .split_whitespace()
        .nth(1)
        .and_then(|target| target.strip_prefix("/todos?tag="));
    let (status, body) = match tag {
        None => ("404 Not Found", "try GET /todos?tag=TAG\n".to_string()),
        Some(tag) => match open_tagged(engine, tag) {
            Ok(todos) => (
                "200 OK",
                todos.iter().map(|t| format!("{}\n", t.title)).collect(),
            ),
            Err(e) => ("503 Service Unavailable", format!("{e}\n")),
        },
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn open_tagged(
    engine: &Engine<PgConnection>,
    tag: &str,
) -> Result<Vec<todo_app::models::Todo>, datalayer::Error> {
    let mut conn = engine.get()?;
    Ok(todo_app::models::open_tagged(&mut conn, tag)?)
}
