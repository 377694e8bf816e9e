//! `datalayer`: the shared command line ([`datalayer::cli`]) on the reference application's
//! migrations (`users` and `posts`). An application's own binary is the same one line on its
//! own migrator.

fn main() -> std::process::ExitCode {
    datalayer::cli::run(&blog::migrator())
}
