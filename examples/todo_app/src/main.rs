//! `todo-app`: datalayer's whole command line (boot, config, check, migrate, status, revert,
//! fingerprint) on this application's own migrations.

fn main() -> std::process::ExitCode {
    datalayer::cli::run(&todo_app::migrator())
}
