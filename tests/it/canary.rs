//! The password never appears in any output. A canary password is pushed through every path
//! there is (Debug and Display of settings, URLs and errors, every configuration error, the
//! CLI on success and on failure, from the environment, from `.env` and inside DATABASE_URL),
//! and none of its fragments, raw or percent-encoded, may show up.

use datalayer::Settings;
use datalayer::config::Vars;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::common::{run_cli, text};

/// Four distinctive fragments joined by the characters that split URLs, so that a URL broken
/// at any of them still leaks a recognisable piece.
const CANARY: &str = "CNRY7f3a@QX9z:JW4k/VB2m %25?é😀#ZP8d";
const FRAGMENTS: &[&str] = &["CNRY7f3a", "QX9z", "JW4k", "VB2m", "ZP8d"];

fn assert_clean(output: &str, what: &str) {
    for fragment in FRAGMENTS {
        assert!(
            !output.contains(fragment),
            "{what} leaks {fragment:?}:\n{output}"
        );
    }
    let encoded = utf8_percent_encode(CANARY, NON_ALPHANUMERIC).to_string();
    assert!(
        !output.contains(&encoded),
        "{what} leaks the encoded password"
    );
}

fn encoded() -> String {
    utf8_percent_encode(CANARY, NON_ALPHANUMERIC).to_string()
}

/// A `DATABASE_PASSWORD_FILE` holding the canary (one per test process, in the temp folder).
fn canary_file() -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("datalayer-canary-{}", std::process::id()));
    std::fs::write(&path, format!("{CANARY}\n")).expect("write the canary file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path.to_string_lossy().into_owned()
}

/// Valid configurations that carry the canary in each place a password can live. They point
/// at a closed local port, so booting fails (exit 3) without traffic leaving the machine,
/// after retrying for a short deadline (so the retry log lines are checked too).
fn valid() -> Vec<Vec<(String, String)>> {
    let pair = |k: &str, v: String| (k.to_string(), v);
    let mut configs = vec![
        vec![
            pair("DATABASE_HOST", "127.0.0.1".into()),
            pair("DATABASE_PORT", "1".into()),
            pair("DATABASE_PASSWORD", CANARY.into()),
        ],
        vec![pair(
            "DATABASE_URL",
            format!("postgres://u:{}@127.0.0.1:1/app", encoded()),
        )],
        vec![pair(
            "DATABASE_URL",
            format!("postgres://u@127.0.0.1:1/app?password={}", encoded()),
        )],
        vec![
            pair("DATABASE_URL", "postgres://u@127.0.0.1:1/app".into()),
            pair("DATABASE_PASSWORD", CANARY.into()),
        ],
        vec![pair(
            "DATABASE_URL",
            format!("postgres://u@127.0.0.1:1/app?sslpassword={}", encoded()),
        )],
        vec![
            pair("DATABASE_HOST", "127.0.0.1".into()),
            pair("DATABASE_PORT", "1".into()),
            pair("DATABASE_PASSWORD_FILE", canary_file()),
        ],
        vec![
            pair("DATABASE_HOST", "127.0.0.1".into()),
            pair("DATABASE_PORT", "1".into()),
            pair("DATABASE_PASSWORD", CANARY.into()),
            pair("DATABASE_POOLER", "transaction".into()),
            pair(
                "DATABASE_MIGRATION_URL",
                format!("postgres://u:{}@127.0.0.1:2/app", encoded()),
            ),
        ],
        vec![
            pair("DATABASE_HOST", "127.0.0.1".into()),
            pair("DATABASE_PORT", "1".into()),
            pair(
                "DATABASE_REPLICA_URL",
                format!("postgres://u:{}@127.0.0.1:2/app", encoded()),
            ),
        ],
        vec![
            pair("DATABASE_HOST", "127.0.0.1".into()),
            pair("DATABASE_PORT", "1".into()),
            pair("DATABASE_PASSWORD", CANARY.into()),
            pair("DATABASE_REPLICA_PORT", "2".into()),
        ],
    ];
    for config in &mut configs {
        config.push(pair("DATABASE_CONNECT_DEADLINE", "300ms".into()));
    }
    configs
}

/// Invalid configurations with the canary somewhere in them.
fn invalid() -> Vec<Vec<(String, String)>> {
    let pair = |k: &str, v: String| (k.to_string(), v);
    let with_password = |k: &str, v: &str| {
        vec![
            pair("DATABASE_HOST", "db".into()),
            pair("DATABASE_PASSWORD", CANARY.into()),
            pair(k, v.into()),
        ]
    };
    let url = |u: String| vec![pair("DATABASE_URL", u)];
    let e = encoded();
    vec![
        with_password("DATABASE_PORT", "70000"),
        with_password("DATABASE_SSLMODE", "bogus"),
        with_password("DATABASE_CONNECT_TIMEOUT", "-1"),
        with_password("DATABASE_POOL_MAX_SIZE", "0"),
        with_password("DATABASE_PATH", "x.db"),
        with_password("DATABASE_BACKEND", "sqlite"),
        with_password("DATABASE_URL", "postgres://h/d"),
        with_password("DATABASE_URL", &format!("postgres://u:{e}@h/d")),
        url(format!("postgres://u:{CANARY}@h/d")),
        url(format!("postgres://u:{e}@h:99999/d")),
        url(format!("postgres://u:{e}@h1,/d")),
        url(format!("postgres://u:{e}%zz@h/d")),
        url(format!("postgres://u:{e}@h/d?sslmode=maybe")),
        url(format!("postgres://u:{e}@h/d?{e}")),
        url(format!("mysql://u:{CANARY}@h/d")),
        url(format!("u:{CANARY}@h/d")),
        url(format!("{CANARY}://h")),
        vec![
            pair("DATABASE_URL", format!("postgres://u:{e}@h/d")),
            pair("DATABASE_HOST", "x".into()),
            pair("DATABASE_POOL_MIN_IDLE", "99".into()),
        ],
        vec![pair("DATABASE_PASSWORD", CANARY.into())],
        with_password("DATABASE_PASSWORD_FILE", &canary_file()),
        with_password("DATABASE_MIGRATION_URL", &format!("mysql://u:{CANARY}@h/d")),
        vec![
            pair("DATABASE_HOST", "db".into()),
            pair("DATABASE_PASSWORD_FILE", canary_file()),
            pair("DATABASE_PORT", "70000".into()),
        ],
        with_password(
            "DATABASE_REPLICA_URL",
            &format!("postgres://u:{e}@r/d?sslmode=disable"),
        ),
        with_password("DATABASE_REPLICA_URL", &format!("mysql://u:{CANARY}@r/d")),
        with_password("DATABASE_REPLICA_URL", &format!("postgres://u:{e}%zz@r/d")),
        with_password("DATABASE_REPLICA_MAX_LAG", "0"),
    ]
}

#[test]
fn library_output_never_shows_the_password() {
    for pairs in valid() {
        let vars = Vars::from_pairs(pairs.clone());
        assert_clean(&format!("{vars:?}"), "Vars Debug");
        let loaded = vars.load().unwrap_or_else(|e| panic!("valid: {e}"));
        let settings = &loaded.settings;
        let url = settings.connection_url();
        // The read replica's URL, when there is one, carries the same secret.
        let replica = settings.replica_settings().map(|r| r.connection_url());
        for (what, shown) in [
            ("Settings Debug", format!("{settings:?}")),
            ("Settings pretty Debug", format!("{settings:#?}")),
            ("Loaded Debug", format!("{loaded:?}")),
            ("URL Display", format!("{url}")),
            ("URL Debug", format!("{url:?}")),
            ("URL redacted", url.redacted().to_string()),
            ("replica URL Display", format!("{replica:?}")),
            (
                "replica URL redacted",
                replica
                    .as_ref()
                    .map(|u| u.redacted().to_string())
                    .unwrap_or_default(),
            ),
        ] {
            assert_clean(&shown, what);
        }
        let redacted = format!(
            "{} {}",
            url.redacted(),
            replica.as_ref().map(|u| u.redacted()).unwrap_or_default()
        );
        assert!(redacted.contains("***"), "{redacted}");
        let error = datalayer::Engine::connect(settings).expect_err("nothing listens on port 1");
        assert_clean(&format!("{error} {error:?}"), "connect error");
    }
    for pairs in invalid() {
        let error = Settings::from_pairs(pairs.clone()).expect_err("invalid");
        assert_clean(&format!("{error}"), "error Display");
        assert_clean(&format!("{error:?}"), "error Debug");
    }
}

#[test]
fn cli_output_never_shows_the_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runs = valid()
        .into_iter()
        .map(|p| (p, true))
        .chain(invalid().into_iter().map(|p| (p, false)));
    for (pairs, ok) in runs {
        // `config` only reads settings; a bare run boots and so also connects.
        for (args, status) in [
            (&["config"][..], if ok { 0 } else { 2 }),
            (&[][..], if ok { 3 } else { 2 }),
        ] {
            let output = run_cli(dir.path(), args, &pairs);
            assert_eq!(
                output.status.code(),
                Some(status),
                "{args:?} {:?}",
                text(&output)
            );
            let (stdout, stderr) = text(&output);
            assert_clean(&stdout, "CLI stdout");
            assert_clean(&stderr, "CLI stderr");
        }
    }
}

#[test]
fn dotenv_paths_never_show_the_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dotenv = dir.path().join(".env");
    let no_env: &[(&str, &str)] = &[];
    for (content, ok) in [
        (
            format!("DATABASE_HOST=db\nDATABASE_PASSWORD='{CANARY}'\n"),
            true,
        ),
        (
            format!("DATABASE_HOST=db\nDATABASE_PASSWORD='{CANARY}'\nDATABASE_PORT=0\n"),
            false,
        ),
        (
            format!("DATABASE_HOST=db\nDATABASE_PASSWORD='{CANARY}\n"),
            false,
        ),
        (
            format!("DATABASE_HOST=db\nDATABASE_PASSWORD={CANARY} x'y\n"),
            false,
        ),
        (format!("DATABASE_PASWORD='{CANARY}'\n"), true),
    ] {
        std::fs::write(&dotenv, &content).expect("write .env");
        let output = run_cli(dir.path(), &["config"], no_env);
        assert_eq!(
            output.status.success(),
            ok,
            "{content}: {:?}",
            text(&output)
        );
        let (stdout, stderr) = text(&output);
        assert_clean(&stdout, "CLI stdout with .env");
        assert_clean(&stderr, "CLI stderr with .env");
        if let Err(error) = Vars::default().with_dotenv(&dotenv).and_then(|v| v.load()) {
            assert_clean(&format!("{error} {error:?}"), ".env error");
        }
    }
}
