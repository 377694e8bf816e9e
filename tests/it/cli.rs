//! The `datalayer` binary, run as a user would: exit codes, stdout, stderr.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use crate::common::{run_cli, text};

const NO_ENV: &[(&str, &str)] = &[];

#[test]
fn config_in_an_empty_folder_shows_the_sqlite_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    for args in [&["config"][..], &[][..]] {
        let output = run_cli(dir.path(), args, NO_ENV);
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stderr}");
        assert!(
            stdout.contains("url      sqlite://data/datalayer.sqlite3"),
            "{stdout}"
        );
        let path_line = stdout
            .lines()
            .find(|l| l.starts_with("DATABASE_PATH"))
            .expect("path row");
        assert!(path_line.contains("data/datalayer.sqlite3") && path_line.ends_with("default"));
        assert_eq!(stderr, "");
    }
}

#[test]
fn dotenv_fills_in_and_the_environment_wins() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join(".env"),
        "DATABASE_HOST=from-dotenv\nDATABASE_PORT=6000\nDATABASE_USER=app\n",
    )
    .expect("write .env");
    let output = run_cli(dir.path(), &["config"], &[("DATABASE_PORT", "7000")]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} row in {stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("DATABASE_HOST"),
        ["DATABASE_HOST", "from-dotenv", ".env"]
    );
    assert_eq!(
        row("DATABASE_PORT"),
        ["DATABASE_PORT", "7000", "environment"]
    );
    assert_eq!(
        row("DATABASE_BACKEND"),
        ["DATABASE_BACKEND", "postgres", "inferred"]
    );
    assert!(
        stdout.contains("url      postgres://app@from-dotenv:7000/?sslmode=prefer"),
        "{stdout}"
    );
}

#[test]
fn configuration_errors_exit_2_with_one_line_each() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_cli(
        dir.path(),
        &["config"],
        &[
            ("DATABASE_HOST", "db"),
            ("DATABASE_PORT", "70000"),
            ("DATABASE_SSLMODE", "on"),
        ],
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stdout, "");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "datalayer: error: DATABASE_PORT: \"70000\" is not a port (1-65535)",
            "datalayer: error: DATABASE_SSLMODE: \"on\" is not an sslmode; accepted: disable, \
             allow, prefer, require, verify-ca, verify-full",
        ]
    );
}

#[test]
fn invalid_utf8_in_the_environment_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = [(
        OsString::from("DATABASE_PATH"),
        OsString::from_vec(vec![0xff, 0xfe]),
    )];
    let output = run_cli(dir.path(), &["config"], &bad);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("DATABASE_PATH: is not valid UTF-8"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_database_variables_are_warned_about() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_cli(dir.path(), &["config"], &[("DATABASE_PASWORD", "x")]);
    let (_, stderr) = text(&output);
    assert!(output.status.success());
    assert_eq!(
        stderr,
        "datalayer: warning: DATABASE_PASWORD is not a datalayer setting and is ignored\n"
    );
}

#[test]
fn help_documents_subcommands_and_exit_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_cli(dir.path(), &["--help"], NO_ENV);
    let (stdout, _) = text(&output);
    assert!(output.status.success());
    assert!(stdout.contains("config"), "{stdout}");
    assert!(
        stdout.contains("Exit status: 0 ok, 2 configuration error"),
        "{stdout}"
    );
    let bad = run_cli(dir.path(), &["no-such-command"], NO_ENV);
    assert_eq!(bad.status.code(), Some(2));
}
