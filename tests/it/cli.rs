//! The `datalayer` binary, run as a user would: exit codes, stdout, stderr.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use crate::common::{TestDb, admin_url, run_cli, text, unique_name};

const NO_ENV: &[(&str, &str)] = &[];

#[test]
fn config_in_an_empty_folder_shows_the_sqlite_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let output = run_cli(dir.path(), &["config"], NO_ENV);
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
    assert!(
        !dir.path().join("data").exists(),
        "config touches no database"
    );
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
    // Unset is a default, not something given.
    assert_eq!(
        row("DATABASE_MIGRATION_URL"),
        ["DATABASE_MIGRATION_URL", "(unset)", "default"]
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
    for line in [
        "config",
        "check",
        "migrate",
        "status",
        "revert",
        "boot sequence",
    ] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }
    assert!(
        stdout.contains(
            "Exit status: 0 ok, 1 other error, 2 configuration error or bad command line, 3 \
             database unreachable, 4 migration failed."
        ),
        "{stdout}"
    );
    let bad = run_cli(dir.path(), &["no-such-command"], NO_ENV);
    assert_eq!(bad.status.code(), Some(2));
}

/// The first line of stdout, for the boot summary.
fn first_line(output: &std::process::Output) -> String {
    text(output)
        .0
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn boot_on_sqlite_creates_and_migrates_the_default_file_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = run_cli(dir.path(), &[], NO_ENV);
    assert!(first.status.success(), "{:?}", text(&first));
    let summary = first_line(&first);
    assert!(
        summary.starts_with(
            "ready: sqlite at data/datalayer.sqlite3; 2 migration(s) applied; SQLite 3."
        ),
        "{summary}"
    );
    assert!(dir.path().join("data/datalayer.sqlite3").is_file());
    let second = run_cli(dir.path(), &[], NO_ENV);
    assert!(
        first_line(&second).contains("; 0 migration(s) applied; "),
        "{:?}",
        text(&second)
    );
}

#[test]
fn the_same_binary_boots_on_postgres_and_manages_migrations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let name = unique_name("dl_cli");
    let _db = TestDb::create(&name, None);
    let url = format!(
        "{}/{name}",
        admin_url()
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or_default()
    );
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_PASSWORD", "CNRY7f3a"),
    ];

    let boot = run_cli(dir.path(), &[], &env);
    assert!(boot.status.success(), "{:?}", text(&boot));
    let summary = first_line(&boot);
    // Backend, host, port, database and TLS mode; no user, no other libpq parameter.
    assert!(
        summary.starts_with(&format!(
            "ready: {}; ",
            datalayer::Settings::from_pairs(env)
                .expect("settings")
                .summary()
        )) && summary.contains(&format!(", database {name}, sslmode prefer; ")),
        "{summary}"
    );
    assert!(!summary.contains("connect_timeout"), "{summary}");
    assert!(
        summary.contains("; 2 migration(s) applied; PostgreSQL "),
        "{summary}"
    );

    let status = run_cli(dir.path(), &["status", "--json"], &env);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(json["applied"].as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(json["pending"], serde_json::json!([]));

    let revert = run_cli(dir.path(), &["revert", "--steps", "1"], &env);
    assert_eq!(
        text(&revert).0,
        "reverted 2026-11-25-000002_create_posts\n1 migration(s) reverted\n"
    );
    let status = run_cli(dir.path(), &["status"], &env);
    assert_eq!(
        text(&status).0,
        "applied  2026-11-25-000001_create_users\npending  2026-11-25-000002_create_posts\n\
         lock     free\n"
    );
    let migrate = run_cli(dir.path(), &["migrate"], &env);
    assert_eq!(
        text(&migrate).0,
        "applied 2026-11-25-000002_create_posts\n1 migration(s) applied\n"
    );
    let check = run_cli(dir.path(), &["check"], &env);
    let (stdout, stderr) = text(&check);
    assert!(check.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("database  {name}\n")), "{stdout}");
    assert!(stdout.contains("user      postgres\n"), "{stdout}");
    for output in [&boot, &status, &revert, &migrate, &check] {
        let (stdout, stderr) = text(output);
        assert!(!stdout.contains("CNRY7f3a") && !stderr.contains("CNRY7f3a"));
    }
}

#[test]
fn an_unreachable_database_exits_3() {
    let dir = tempfile::tempdir().expect("temp dir");
    for args in [&[][..], &["check"][..], &["migrate"][..]] {
        let output = run_cli(
            dir.path(),
            args,
            &[
                ("DATABASE_URL", "postgres://u:CNRY7f3a@127.0.0.1:1/x"),
                ("DATABASE_CONNECT_DEADLINE", "300ms"),
            ],
        );
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(3), "{stderr}");
        // Refused is transient: retried, each attempt logged with the redacted target...
        let target = "postgres://u:***@127.0.0.1:1/x";
        assert!(
            stderr.contains(&format!("connecting to {target}"))
                && stderr.contains("attempt 1 failed"),
            "{stderr}"
        );
        // ...then one error line once the deadline has passed.
        let error = stderr
            .lines()
            .filter(|l| l.starts_with("datalayer: error: "))
            .collect::<Vec<_>>();
        assert_eq!(error.len(), 1, "{stderr}");
        assert!(
            error[0].starts_with(&format!("datalayer: error: cannot connect to {target}")),
            "{stderr}"
        );
        assert!(error[0].contains("DATABASE_CONNECT_DEADLINE"), "{stderr}");
        assert!(stderr.contains("Connection refused"), "{stderr}");
        assert!(!stderr.contains("CNRY7f3a"), "{stderr}");
    }
}

#[test]
fn a_failed_migration_exits_4_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("data")).expect("mkdir");
    let path = dir.path().join("data/datalayer.sqlite3");
    {
        let settings = datalayer::Settings::from_pairs([("DATABASE_PATH", path.as_os_str())])
            .expect("settings");
        let engine = datalayer::Engine::connect(&settings).expect("open");
        use diesel::connection::SimpleConnection;
        engine
            .get()
            .expect("checkout")
            .batch_execute("CREATE TABLE posts (x)")
            .expect("squat");
    }
    let output = run_cli(dir.path(), &["migrate"], NO_ENV);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(4), "{stdout}{stderr}");
    // What the run already applied, then the error, one line each.
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].ends_with(
            "WARN stopped at 2026-11-25-000002_create_posts; 1 migration(s) applied before \
             it, and kept: 2026-11-25-000001_create_users"
        ),
        "{stderr}"
    );
    assert_eq!(
        lines[1],
        "datalayer: error: migration 2026-11-25-000002_create_posts \
         (migrations/sqlite/2026-11-25-000002_create_posts/up.sql) failed: table posts already exists"
    );
}

#[test]
fn config_shows_huge_values_without_panicking() {
    let dir = tempfile::tempdir().expect("temp dir");
    let long = "n".repeat(70_000);
    let output = run_cli(
        dir.path(),
        &["config"],
        &[
            ("DATABASE_HOST", "localhost"),
            ("DATABASE_APPLICATION_NAME", long.as_str()),
        ],
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains(&long));
    // Names PostgreSQL cannot hold are refused, without echoing 70 KB.
    for variable in ["DATABASE_NAME", "DATABASE_USER"] {
        let output = run_cli(
            dir.path(),
            &["config"],
            &[("DATABASE_HOST", "localhost"), (variable, long.as_str())],
        );
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(2), "{variable}: {stderr}");
        assert!(stderr.len() < 200, "{variable}: {stderr}");
    }
    let path = dir.path().join("p".repeat(200)).join("q".repeat(200));
    let output = run_cli(
        dir.path(),
        &["config"],
        &[("DATABASE_PATH", path.as_os_str())],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output).1);
}

#[test]
fn config_escapes_control_characters_in_values_and_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_cli(
        dir.path(),
        &["config"],
        &[
            ("DATABASE_HOST", "localhost"),
            (
                "DATABASE_APPLICATION_NAME",
                "app\r\nDATABASE_PASSWORD  hunter2  environment\u{1b}[2J",
            ),
            ("DATABASE_FAKE\nLINE", "x"),
        ],
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("app\\r\\nDATABASE_PASSWORD  hunter2  environment\\u{1b}[2J"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\r') && !stdout.contains('\u{1b}'),
        "{stdout:?}"
    );
    assert!(
        !stdout
            .lines()
            .any(|l| l.starts_with("DATABASE_PASSWORD  hunter2")),
        "a value forged a line: {stdout}"
    );
    assert!(
        stderr.contains("DATABASE_FAKE\\nLINE is not a datalayer setting"),
        "{stderr}"
    );
}

/// Runs the binary in `dir` with `.env` as made by `make`, failing the test if it has not
/// exited within 10 s; returns (exit code, stderr).
fn run_with_dotenv(make: impl FnOnce(&std::path::Path)) -> (Option<i32>, String) {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("temp dir");
    make(&dir.path().join(".env"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_datalayer"))
        .arg("config")
        .current_dir(dir.path())
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("datalayer config hung on this .env");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).expect("stderr");
    }
    (status.code(), stderr)
}

#[test]
fn a_dotenv_that_is_not_a_small_regular_file_is_refused_at_once() {
    let (code, stderr) = run_with_dotenv(|path| {
        let made = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo");
        assert!(made.success());
    });
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(".env: is not a regular file"), "{stderr}");

    let (code, stderr) = run_with_dotenv(|path| {
        std::os::unix::fs::symlink("/dev/zero", path).expect("symlink");
    });
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not a regular file"), "{stderr}");

    let (code, stderr) = run_with_dotenv(|path| {
        let line = "# a comment that makes the file large\n".repeat(2000);
        std::fs::write(path, line).expect("write");
    });
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is larger than 64 KiB"), "{stderr}");

    // A link to a regular file is still read.
    let (code, stderr) = run_with_dotenv(|path| {
        let real = path.with_file_name("real.env");
        std::fs::write(&real, "DATABASE_POOL_MAX_SIZE=0\n").expect("write");
        std::os::unix::fs::symlink(&real, path).expect("symlink");
    });
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("DATABASE_POOL_MAX_SIZE"), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_database_is_named_by_its_variable_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let notes = dir.path().join("notes.txt");
    let content = "these are notes, not a database\n".repeat(100);
    std::fs::write(&notes, &content).expect("write");
    let output = run_cli(
        dir.path(),
        &["migrate"],
        &[("DATABASE_PATH", notes.as_os_str())],
    );
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("file is not a database")
            && stderr
                .contains("check DATABASE_PATH: that file exists but is not a SQLite database"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&notes).expect("read"), content);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("notes.txt")],
        "no lock file left"
    );
}

#[test]
fn a_missing_root_certificate_fails_at_once_with_the_tls_hint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = tempfile::tempdir().expect("an empty HOME: no ~/.postgresql/root.crt");
    let url = format!("{}?sslmode=verify-full", crate::common::admin_url());
    let output = run_cli(
        dir.path(),
        &["check"],
        &[
            ("DATABASE_URL", url.as_str()),
            ("HOME", &home.path().to_string_lossy()),
        ],
    );
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("root certificate file"), "{stderr}");
    assert!(
        stderr.contains("check DATABASE_SSLMODE and DATABASE_SSLROOTCERT"),
        "{stderr}"
    );
    assert!(!stderr.contains("create the database"), "{stderr}");
    assert!(
        !stderr.contains("retrying"),
        "retried a permanent error: {stderr}"
    );
}

#[test]
fn a_value_postgres_would_refuse_exits_2_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_cli(
        dir.path(),
        &["check"],
        &[
            ("DATABASE_URL", crate::common::admin_url().as_str()),
            ("DATABASE_STATEMENT_TIMEOUT", "600h"),
        ],
    );
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("above PostgreSQL's limit"), "{stderr}");
}

#[test]
fn the_connect_deadline_is_retried_until_it_has_passed() {
    // Nothing listens on port 1: refused at once, every time.
    let dir = tempfile::tempdir().expect("temp dir");
    let started = std::time::Instant::now();
    let output = run_cli(
        dir.path(),
        &["check"],
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres"),
            ("DATABASE_CONNECT_DEADLINE", "3s"),
        ],
    );
    let took = started.elapsed();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("(DATABASE_CONNECT_DEADLINE)"), "{stderr}");
    assert!(
        took >= std::time::Duration::from_secs(3),
        "gave up after {took:?}, before the 3 s deadline"
    );
}

#[test]
fn a_dotenv_value_that_copies_a_secret_is_refused_naming_both() {
    let (code, stderr) = run_with_dotenv(|path| {
        std::fs::write(
            path,
            "DATABASE_PASSWORD=hunter2\nDATABASE_HOST=db\n\
             DATABASE_APPLICATION_NAME=app-${DATABASE_PASSWORD}\n",
        )
        .expect("write");
    });
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(".env line 3: DATABASE_APPLICATION_NAME refers to DATABASE_PASSWORD"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // The password into the URL, a secret into a secret, is fine; so is a single-quoted `$`.
    let (code, stderr) = run_with_dotenv(|path| {
        std::fs::write(
            path,
            "DATABASE_PASSWORD=hunter2\n\
             DATABASE_URL=postgres://app:${DATABASE_PASSWORD}@db/app\n\
             DATABASE_APPLICATION_NAME='app-$DATABASE_PASSWORD'\n",
        )
        .expect("write");
    });
    assert_eq!(code, Some(2), "the URL and the password together: {stderr}");
    assert!(!stderr.contains("refers to"), "{stderr}");
}

#[test]
fn a_dotenv_key_given_twice_is_warned_about_and_a_byte_order_mark_is_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join(".env"),
        "\u{feff}DATABASE_POOL_MAX_SIZE=3\nDATABASE_POOL_MAX_SIZE=4\n",
    )
    .expect("write");
    let output = run_cli(dir.path(), &["config"], &[] as &[(&str, &str)]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "warning: DATABASE_POOL_MAX_SIZE is set twice in .env (lines 1 and 2); the first one \
             is used"
        ),
        "{stderr}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("DATABASE_POOL_MAX_SIZE"))
        .expect("listed");
    assert!(line.contains(" 3 ") && line.ends_with(".env"), "{line}");
}

#[test]
fn a_url_that_gives_a_setting_twice_is_refused() {
    for url in [
        "postgres://app:pw1secret@db/app?password=pw2secret",
        "postgres://app@db/app?password=pw1secret&password=pw2secret",
        "postgres://app@db/app?user=other",
        "postgres://app@db/app?sslmode=require&sslmode=disable",
    ] {
        let error = datalayer::Settings::from_pairs([("DATABASE_URL", url)]).expect_err(url);
        let message = error.to_string();
        assert!(
            message.starts_with("DATABASE_URL: ") && message.contains("twice"),
            "{message}"
        );
        assert!(!message.contains("secret"), "{message}");
    }
}

#[test]
fn sqlite_forms_that_would_not_be_one_file_are_refused() {
    for (variable, value) in [
        ("DATABASE_PATH", ":memory:"),
        ("DATABASE_URL", "sqlite::memory:"),
        ("DATABASE_URL", "sqlite://file::memory:?cache=shared"),
        ("DATABASE_PATH", "file:/tmp/x/r.db?mode=rwc"),
        ("DATABASE_URL", "sqlite:///tmp/x.db?mode=ro"),
    ] {
        let error = datalayer::Settings::from_pairs([(variable, value)]).expect_err(value);
        let problems = error.config_problems();
        assert_eq!(problems.len(), 1, "{value}: {error}");
        assert_eq!(problems[0].variable, variable, "{value}: {error}");
        assert!(
            problems[0].message.contains("plain path") || problems[0].message.contains("in-memory"),
            "{value}: {error}"
        );
    }
}

#[test]
fn the_sqlite_lock_file_never_follows_a_link_and_new_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("new/folder/app.sqlite3");
    let output = run_cli(
        dir.path(),
        &["migrate"],
        &[("DATABASE_PATH", db.as_os_str())],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output).1);
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    let lock = dir.path().join("new/folder/app.sqlite3.migrations.lock");
    assert_eq!(mode(&db), 0o600, "database file");
    assert_eq!(mode(&lock), 0o600, "lock file");
    assert_eq!(
        mode(&dir.path().join("new/folder")),
        0o700,
        "created folder"
    );
    assert_eq!(mode(&dir.path().join("new")), 0o700, "created folder");

    // A link planted where the lock file goes is refused, and what it points to untouched
    // (on a new database: with nothing to apply, a run takes no lock and opens no lock file).
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").expect("write");
    std::fs::remove_file(&lock).expect("remove");
    std::fs::remove_file(&db).expect("remove the database");
    std::os::unix::fs::symlink(&victim, &lock).expect("symlink");
    let output = run_cli(
        dir.path(),
        &["migrate"],
        &[("DATABASE_PATH", db.as_os_str())],
    );
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read"),
        "precious\n"
    );
}

/// `revert` on a database never migrated reverts nothing and leaves it as it was: it created
/// the ledger tables.
#[test]
fn revert_on_a_database_never_migrated_changes_nothing() {
    let (_engine, place) = crate::common::fresh_postgres("dl_revert_fresh", &[]);
    let crate::common::Place::Postgres(db) = &place else {
        unreachable!()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_cli(
        dir.path(),
        &["revert"],
        &[("DATABASE_URL", crate::common::database_url(&db.name))],
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout, "0 migration(s) reverted\n");
    let tables = crate::libpq::Conn::connect(&crate::common::database_url(&db.name))
        .expect("connect")
        .query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        .expect("tables");
    assert_eq!(tables.as_deref(), Some("0"), "no ledger table was created");
}

/// Versions read from the database are escaped wherever they are printed: a row holding a
/// newline or an escape sequence cannot forge a line or colour the terminal.
#[test]
fn versions_from_the_database_cannot_forge_output_lines() {
    let (_engine, place) = crate::common::fresh_postgres("dl_forge", &[]);
    let crate::common::Place::Postgres(db) = &place else {
        unreachable!()
    };
    let url = crate::common::database_url(&db.name);
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [("DATABASE_URL", url.clone())];
    assert!(run_cli(dir.path(), &["migrate"], &env).status.success());
    crate::libpq::Conn::connect(&url)
        .expect("connect")
        .query(
            "INSERT INTO __diesel_schema_migrations (version) \
             VALUES (E'20990101000001\\n\\u001b[32mapplied  forged')",
        )
        .expect("a hostile row");
    for args in [&["status"][..], &["migrate"][..]] {
        let output = run_cli(dir.path(), args, &env);
        let (stdout, stderr) = text(&output);
        for line in stdout.lines().chain(stderr.lines()) {
            assert!(!line.contains('\u{1b}'), "{args:?}: raw escape in {line:?}");
            assert!(
                !line.starts_with("applied  forged") && !line.starts_with("\u{1b}"),
                "{args:?}: a forged line: {line:?}"
            );
        }
        assert!(
            format!("{stdout}{stderr}").contains("20990101000001\\n\\u{1b}[32mapplied  forged"),
            "{args:?}: {stdout}{stderr}"
        );
    }
}
