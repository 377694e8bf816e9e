//! Bad input never panics: each malformed setting fails with an error naming exactly the
//! variables at fault, one line per problem.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use datalayer::{Error, Settings};

/// What is wrong, the variables set, and the variables the error must name.
type Case = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<&'static str>,
);

/// 64 bytes: one more than PostgreSQL's names hold.
pub(crate) const LONG_NAME: &str =
    "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn";
const LONG_URL: &str =
    "postgres://app@db/nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn";

fn cases() -> Vec<Case> {
    let pg = ("DATABASE_HOST", "db");
    vec![
        (
            "port too large",
            vec![pg, ("DATABASE_PORT", "70000")],
            vec!["DATABASE_PORT"],
        ),
        (
            "port 0",
            vec![pg, ("DATABASE_PORT", "0")],
            vec!["DATABASE_PORT"],
        ),
        (
            "negative port",
            vec![pg, ("DATABASE_PORT", "-1")],
            vec!["DATABASE_PORT"],
        ),
        (
            "port not a number",
            vec![pg, ("DATABASE_PORT", "http")],
            vec!["DATABASE_PORT"],
        ),
        (
            "empty port",
            vec![pg, ("DATABASE_PORT", "")],
            vec!["DATABASE_PORT"],
        ),
        (
            "negative duration",
            vec![pg, ("DATABASE_CONNECT_TIMEOUT", "-5s")],
            vec!["DATABASE_CONNECT_TIMEOUT"],
        ),
        (
            "garbage duration",
            vec![pg, ("DATABASE_CONNECT_TIMEOUT", "soon")],
            vec!["DATABASE_CONNECT_TIMEOUT"],
        ),
        (
            "zero connect timeout",
            vec![pg, ("DATABASE_CONNECT_TIMEOUT", "0")],
            vec!["DATABASE_CONNECT_TIMEOUT"],
        ),
        (
            "zero pool timeout",
            vec![("DATABASE_POOL_TIMEOUT", "0s")],
            vec!["DATABASE_POOL_TIMEOUT"],
        ),
        (
            "fractional duration",
            vec![("DATABASE_POOL_TIMEOUT", "1.5s")],
            vec!["DATABASE_POOL_TIMEOUT"],
        ),
        (
            "words for a duration",
            vec![("DATABASE_POOL_IDLE_TIMEOUT", "10 minutes")],
            vec!["DATABASE_POOL_IDLE_TIMEOUT"],
        ),
        (
            "negative lifetime",
            vec![("DATABASE_POOL_MAX_LIFETIME", "-1")],
            vec!["DATABASE_POOL_MAX_LIFETIME"],
        ),
        (
            "unknown unit",
            vec![pg, ("DATABASE_STATEMENT_TIMEOUT", "5x")],
            vec!["DATABASE_STATEMENT_TIMEOUT"],
        ),
        (
            "lock timeout garbage",
            vec![pg, ("DATABASE_LOCK_TIMEOUT", "forever")],
            vec!["DATABASE_LOCK_TIMEOUT"],
        ),
        (
            "exponent",
            vec![pg, ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "1e3")],
            vec!["DATABASE_IDLE_IN_TRANSACTION_TIMEOUT"],
        ),
        (
            "duration overflow",
            vec![("DATABASE_POOL_TIMEOUT", "99999999999999999999h")],
            vec!["DATABASE_POOL_TIMEOUT"],
        ),
        (
            "unknown sslmode",
            vec![pg, ("DATABASE_SSLMODE", "sometimes")],
            vec!["DATABASE_SSLMODE"],
        ),
        (
            "missing CA file",
            vec![pg, ("DATABASE_SSLROOTCERT", "/nonexistent/ca.pem")],
            vec!["DATABASE_SSLROOTCERT"],
        ),
        (
            "unknown backend",
            vec![("DATABASE_BACKEND", "mysql")],
            vec!["DATABASE_BACKEND"],
        ),
        (
            "max size 0",
            vec![("DATABASE_POOL_MAX_SIZE", "0")],
            vec!["DATABASE_POOL_MAX_SIZE"],
        ),
        (
            "a max size that would abort the process allocating the pool",
            vec![("DATABASE_POOL_MAX_SIZE", "300000000")],
            vec!["DATABASE_POOL_MAX_SIZE"],
        ),
        (
            "a replica max size that would abort the process",
            vec![
                pg,
                ("DATABASE_REPLICA_HOST", "replica"),
                ("DATABASE_REPLICA_POOL_MAX_SIZE", "4294967295"),
            ],
            vec!["DATABASE_REPLICA_POOL_MAX_SIZE"],
        ),
        (
            "a URL turning off the keepalives datalayer sets",
            vec![("DATABASE_URL", "postgres://app@db/app?keepalives=0")],
            vec!["DATABASE_URL"],
        ),
        (
            "a URL value libpq refuses only at connect",
            vec![("DATABASE_URL", "postgres://app@db/app?keepalives_idle=abc")],
            vec!["DATABASE_URL"],
        ),
        (
            "a gssencmode libpq does not know",
            vec![("DATABASE_URL", "postgres://app@db/app?gssencmode=bogus")],
            vec!["DATABASE_URL"],
        ),
        (
            "a hostaddr that is not an address",
            vec![("DATABASE_URL", "postgres://app@db/app?hostaddr=not-an-ip")],
            vec!["DATABASE_URL"],
        ),
        (
            "a hostaddr per host, not one for two",
            vec![(
                "DATABASE_URL",
                "postgres://app@db1,db2/app?hostaddr=10.0.0.1",
            )],
            vec!["DATABASE_URL"],
        ),
        (
            "a replica URL with a target_session_attrs libpq does not know",
            vec![
                pg,
                (
                    "DATABASE_REPLICA_URL",
                    "postgres://app@replica/app?target_session_attrs=primry",
                ),
            ],
            vec!["DATABASE_REPLICA_URL"],
        ),
        (
            "negative max size",
            vec![("DATABASE_POOL_MAX_SIZE", "-3")],
            vec!["DATABASE_POOL_MAX_SIZE"],
        ),
        (
            "min idle above max",
            vec![
                ("DATABASE_POOL_MAX_SIZE", "4"),
                ("DATABASE_POOL_MIN_IDLE", "5"),
            ],
            vec!["DATABASE_POOL_MIN_IDLE"],
        ),
        (
            "min idle above default max",
            vec![("DATABASE_POOL_MIN_IDLE", "11")],
            vec!["DATABASE_POOL_MIN_IDLE"],
        ),
        (
            "min idle garbage",
            vec![("DATABASE_POOL_MIN_IDLE", "some")],
            vec!["DATABASE_POOL_MIN_IDLE"],
        ),
        (
            "unknown scheme",
            vec![("DATABASE_URL", "mysql://u:p@h/db")],
            vec!["DATABASE_URL"],
        ),
        (
            "URL and host",
            vec![
                ("DATABASE_URL", "postgres://h/db"),
                ("DATABASE_HOST", "other"),
            ],
            vec!["DATABASE_HOST"],
        ),
        (
            "URL and port",
            vec![
                ("DATABASE_URL", "postgres://h/db"),
                ("DATABASE_PORT", "5433"),
            ],
            vec!["DATABASE_PORT"],
        ),
        (
            "URL and user",
            vec![
                ("DATABASE_URL", "postgres://h/db"),
                ("DATABASE_USER", "app"),
            ],
            vec!["DATABASE_USER"],
        ),
        (
            "URL and name",
            vec![
                ("DATABASE_URL", "postgres://h/db"),
                ("DATABASE_NAME", "app"),
            ],
            vec!["DATABASE_NAME"],
        ),
        (
            "URL and path",
            vec![("DATABASE_URL", "sqlite://a.db"), ("DATABASE_PATH", "b.db")],
            vec!["DATABASE_PATH"],
        ),
        (
            "two passwords",
            vec![
                ("DATABASE_URL", "postgres://u:one@h/db"),
                ("DATABASE_PASSWORD", "two"),
            ],
            vec!["DATABASE_PASSWORD"],
        ),
        (
            "two sslmodes",
            vec![
                ("DATABASE_URL", "postgres://h/db?sslmode=require"),
                ("DATABASE_SSLMODE", "disable"),
            ],
            vec!["DATABASE_SSLMODE"],
        ),
        (
            "empty database name",
            vec![pg, ("DATABASE_NAME", "")],
            vec!["DATABASE_NAME"],
        ),
        (
            "blank user",
            vec![pg, ("DATABASE_USER", "   ")],
            vec!["DATABASE_USER"],
        ),
        (
            "bad host name",
            vec![("DATABASE_HOST", "db host!")],
            vec!["DATABASE_HOST"],
        ),
        (
            "URL port too large",
            vec![("DATABASE_URL", "postgres://h:99999/db")],
            vec!["DATABASE_URL"],
        ),
        (
            "URL with an empty host among several",
            vec![("DATABASE_URL", "postgres://h1,/db")],
            vec!["DATABASE_URL"],
        ),
        (
            "URL bad escape",
            vec![("DATABASE_URL", "postgres://u:p%zz@h/db")],
            vec!["DATABASE_URL"],
        ),
        (
            "URL unescaped @",
            vec![("DATABASE_URL", "postgres://u:p@ss@h/db")],
            vec!["DATABASE_URL"],
        ),
        (
            "URL NUL escape",
            vec![("DATABASE_URL", "postgres://u@h/d%00b")],
            vec!["DATABASE_URL"],
        ),
        (
            "URL bad sslmode",
            vec![("DATABASE_URL", "postgres://h/db?sslmode=maybe")],
            vec!["DATABASE_URL"],
        ),
        (
            "URL param without =",
            vec![("DATABASE_URL", "postgres://h/db?sslmode")],
            vec!["DATABASE_URL"],
        ),
        (
            "empty sqlite URL",
            vec![("DATABASE_URL", "sqlite://")],
            vec!["DATABASE_URL"],
        ),
        (
            "scheme-less connection string",
            vec![("DATABASE_URL", "app:pw@db:5432/app")],
            vec!["DATABASE_URL"],
        ),
        (
            "backend disagrees with URL",
            vec![
                ("DATABASE_BACKEND", "sqlite"),
                ("DATABASE_URL", "postgres://h/db"),
            ],
            vec!["DATABASE_BACKEND"],
        ),
        (
            "postgres setting on sqlite",
            vec![("DATABASE_BACKEND", "sqlite"), ("DATABASE_HOST", "db")],
            vec!["DATABASE_HOST"],
        ),
        (
            "database name without host",
            vec![("DATABASE_NAME", "app")],
            vec!["DATABASE_NAME"],
        ),
        (
            "path on postgres",
            vec![pg, ("DATABASE_PATH", "x.db")],
            vec!["DATABASE_PATH"],
        ),
        (
            "path is a directory",
            vec![("DATABASE_PATH", "/")],
            vec!["DATABASE_PATH"],
        ),
        (
            "several problems at once",
            vec![
                pg,
                ("DATABASE_PORT", "x"),
                ("DATABASE_SSLMODE", "on"),
                ("DATABASE_POOL_MAX_SIZE", "0"),
            ],
            vec![
                "DATABASE_PORT",
                "DATABASE_SSLMODE",
                "DATABASE_POOL_MAX_SIZE",
            ],
        ),
        (
            "statement timeout above PostgreSQL's limit",
            vec![pg, ("DATABASE_STATEMENT_TIMEOUT", "600h")],
            vec!["DATABASE_STATEMENT_TIMEOUT"],
        ),
        (
            "every PostgreSQL time limit above its maximum",
            vec![
                pg,
                ("DATABASE_LOCK_TIMEOUT", "597h"),
                ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "9999999999"),
                ("DATABASE_TCP_USER_TIMEOUT", "2147484s"),
                ("DATABASE_MIGRATION_DDL_LOCK_TIMEOUT", "600h"),
                ("DATABASE_CONNECT_TIMEOUT", "99999999999"),
            ],
            vec![
                "DATABASE_CONNECT_TIMEOUT",
                "DATABASE_TCP_USER_TIMEOUT",
                "DATABASE_LOCK_TIMEOUT",
                "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
                "DATABASE_MIGRATION_DDL_LOCK_TIMEOUT",
            ],
        ),
        (
            "names longer than PostgreSQL's 63 bytes",
            vec![
                pg,
                ("DATABASE_NAME", LONG_NAME),
                ("DATABASE_USER", LONG_NAME),
            ],
            vec!["DATABASE_USER", "DATABASE_NAME"],
        ),
        (
            "a database name in the URL longer than 63 bytes",
            vec![("DATABASE_URL", LONG_URL)],
            vec!["DATABASE_NAME"],
        ),
        (
            "an unknown URL parameter",
            vec![("DATABASE_URL", "postgres://app@db/app?foo=bar")],
            vec!["DATABASE_URL"],
        ),
    ]
}

fn assert_names_exactly(error: &Error, expected: &[&str], case: &str) {
    let named: Vec<&str> = error
        .config_problems()
        .iter()
        .map(|p| p.variable.as_str())
        .collect();
    assert_eq!(named, expected, "{case}: {error}");
    let lines: Vec<String> = error.to_string().lines().map(str::to_string).collect();
    assert_eq!(
        lines.len(),
        expected.len(),
        "{case}: one line per problem: {error}"
    );
    for (line, variable) in lines.iter().zip(expected) {
        assert!(line.starts_with(&format!("{variable}: ")), "{case}: {line}");
        assert!(
            line.len() > variable.len() + 20,
            "{case}: says what is wrong: {line}"
        );
    }
}

#[test]
fn malformed_settings_name_their_variable() {
    let cases = cases();
    assert!(cases.len() >= 30, "at least 30 malformed settings");
    for (case, pairs, expected) in cases {
        match Settings::from_pairs(pairs) {
            Ok(settings) => panic!("{case}: accepted as {settings:?}"),
            Err(error) => assert_names_exactly(&error, &expected, case),
        }
    }
}

#[test]
fn invalid_utf8_is_reported_not_panicked_on() {
    for variable in [
        "DATABASE_HOST",
        "DATABASE_PASSWORD",
        "DATABASE_URL",
        "DATABASE_PATH",
    ] {
        let bad = OsString::from_vec(vec![b'd', 0xff, b'b']);
        let error = Settings::from_pairs([(OsString::from(variable), bad)])
            .expect_err("invalid UTF-8 is rejected");
        assert_names_exactly(&error, &[variable], variable);
        assert!(error.to_string().contains("UTF-8"), "{error}");
    }
}

#[test]
fn messages_say_what_is_accepted() {
    let message = |pairs: Vec<(&str, &str)>| {
        Settings::from_pairs(pairs)
            .expect_err("invalid")
            .to_string()
    };
    assert_eq!(
        message(vec![("DATABASE_HOST", "db"), ("DATABASE_PORT", "70000")]),
        "DATABASE_PORT: \"70000\" is not a port (1-65535)"
    );
    assert!(message(vec![("DATABASE_BACKEND", "mysql")]).contains("accepted: postgres, sqlite"));
    assert!(
        message(vec![("DATABASE_HOST", "db"), ("DATABASE_SSLMODE", "on")])
            .contains("disable, allow, prefer, require, verify-ca, verify-full")
    );
    assert!(message(vec![("DATABASE_POOL_TIMEOUT", "1.5s")]).contains("500ms, 30s, 10m"));
    assert!(
        message(vec![
            ("DATABASE_URL", "postgres://h/d"),
            ("DATABASE_HOST", "x")
        ])
        .contains("DATABASE_URL")
    );
    assert!(message(vec![("DATABASE_URL", "mysql://h/d")]).contains("mysql://"));
}

#[test]
fn values_postgres_would_refuse_say_its_limit() {
    let pg = ("DATABASE_HOST", "db");
    let message = |pairs: Vec<(&str, &str)>| {
        Settings::from_pairs(pairs)
            .expect_err("refused")
            .to_string()
    };
    assert_eq!(
        message(vec![pg, ("DATABASE_STATEMENT_TIMEOUT", "600h")]),
        "DATABASE_STATEMENT_TIMEOUT: \"600h\" is above PostgreSQL's limit of 2147483647 ms \
         (about 24.8 days); give less, or 0 to disable"
    );
    assert_eq!(
        message(vec![pg, ("DATABASE_NAME", LONG_NAME)]),
        "DATABASE_NAME: is 64 bytes long; PostgreSQL names are at most 63 bytes"
    );
    assert_eq!(
        message(vec![("DATABASE_URL", "postgres://app@db/app?foo=bar")]),
        "DATABASE_URL: its parameter \"foo\" is not a libpq connection parameter; remove it"
    );
    // The largest values PostgreSQL takes are accepted.
    Settings::from_pairs([
        pg,
        ("DATABASE_STATEMENT_TIMEOUT", "2147483647ms"),
        ("DATABASE_NAME", &LONG_NAME[1..]),
    ])
    .expect("at the limits");
}

/// A pool size r2d2 would try to reserve room for (446 GB) exits 2 at load, before any
/// file is created: it aborted with SIGABRT and left an empty database file.
#[test]
fn a_huge_pool_size_exits_2_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = crate::common::run_cli(
        dir.path(),
        &[],
        &[
            ("DATABASE_PATH", "db.sqlite3"),
            ("DATABASE_POOL_MAX_SIZE", "300000000"),
        ],
    );
    let (_, stderr) = crate::common::text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DATABASE_POOL_MAX_SIZE"), "{stderr}");
    assert!(!dir.path().join("db.sqlite3").exists());
}

/// A password whose `&` is not percent-encoded is cut there, and the rest reads as a
/// parameter: the error says so without quoting that piece of the password.
#[test]
fn a_password_cut_at_an_ampersand_is_not_quoted() {
    let error = Settings::from_pairs([(
        "DATABASE_URL",
        "postgres://app@db/app?password=Tr0ub4dor&3xyz=1",
    )])
    .unwrap_err();
    let message = error.to_string();
    assert!(!message.contains("3xyz"), "{message}");
    assert!(message.contains("%26"), "{message}");
    assert_eq!(error.exit_code(), 2);
}
