//! What valid settings turn into: defaults, backend inference, URL forms, origins, `.env`.

use std::time::Duration;

use datalayer::Settings;
use datalayer::config::{Backend, Host, Origin, SslMode, Target, Vars};
use secrecy::ExposeSecret;

fn pg(settings: &Settings) -> &datalayer::config::PostgresSettings {
    match &settings.target {
        Target::Postgres(pg) => pg,
        Target::Sqlite(_) => panic!("expected postgres, got {settings:?}"),
    }
}

#[test]
fn nothing_set_means_the_embedded_sqlite_default() {
    let settings = Settings::from_pairs(Vec::<(&str, &str)>::new()).expect("defaults are valid");
    assert_eq!(settings.backend(), Backend::Sqlite);
    assert_eq!(
        settings.connection_url().redacted(),
        "sqlite://data/datalayer.sqlite3"
    );
    assert_eq!(
        settings.connection_url().expose_secret(),
        "data/datalayer.sqlite3"
    );
    assert_eq!(settings.pool.max_size, 10);
    assert_eq!(settings.pool.min_idle, None);
    assert_eq!(settings.pool.timeout, Duration::from_secs(30));
    assert_eq!(settings.pool.idle_timeout, Some(Duration::from_secs(600)));
    assert_eq!(settings.pool.max_lifetime, Some(Duration::from_secs(1800)));
}

#[test]
fn backend_is_inferred_from_url_or_host() {
    for (pairs, backend) in [
        (vec![("DATABASE_URL", "postgres://h/d")], Backend::Postgres),
        (
            vec![("DATABASE_URL", "postgresql://h/d")],
            Backend::Postgres,
        ),
        (vec![("DATABASE_URL", "sqlite://x.db")], Backend::Sqlite),
        (vec![("DATABASE_URL", "x.db")], Backend::Sqlite),
        (vec![("DATABASE_HOST", "db")], Backend::Postgres),
        (vec![("DATABASE_BACKEND", "postgres")], Backend::Postgres),
        (vec![("DATABASE_BACKEND", "SQLite")], Backend::Sqlite),
    ] {
        let settings = Settings::from_pairs(pairs.clone()).expect("valid");
        assert_eq!(settings.backend(), backend, "{pairs:?}");
    }
    let defaults = Settings::from_pairs([("DATABASE_BACKEND", "postgres")]).expect("valid");
    assert_eq!(pg(&defaults).host, Host::Name("localhost".into()));
    assert_eq!(pg(&defaults).port, 5432);
    assert_eq!(pg(&defaults).ssl_mode, SslMode::Prefer);
    // The program's name: this test binary is `it-<hash>`.
    assert_eq!(pg(&defaults).application_name, "it");
}

#[test]
fn sqlite_url_forms() {
    for (url, path) in [
        ("sqlite://data/app.db", "data/app.db"),
        ("sqlite:///var/lib/app.db", "/var/lib/app.db"),
        ("sqlite:app.db", "app.db"),
        ("relative/app.db", "relative/app.db"),
    ] {
        let settings = Settings::from_pairs([("DATABASE_URL", url)]).expect("valid");
        assert_eq!(settings.connection_url().expose_secret(), path, "{url}");
    }
}

#[test]
fn parts_build_the_url_with_every_setting() {
    let settings = Settings::from_pairs([
        ("DATABASE_HOST", "::1"),
        ("DATABASE_PORT", "6543"),
        ("DATABASE_USER", "app user"),
        ("DATABASE_PASSWORD", "pw"),
        ("DATABASE_NAME", "app/db"),
        ("DATABASE_SSLMODE", "verify-full"),
        ("DATABASE_SSLROOTCERT", "/etc/passwd"),
        ("DATABASE_APPLICATION_NAME", "api"),
        ("DATABASE_CONNECT_TIMEOUT", "1500ms"),
        ("DATABASE_STATEMENT_TIMEOUT", "30s"),
        ("DATABASE_LOCK_TIMEOUT", "0"),
        ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "1m"),
        ("DATABASE_POOL_MAX_SIZE", "4"),
        ("DATABASE_POOL_MIN_IDLE", "0"),
        ("DATABASE_POOL_TIMEOUT", "250ms"),
        ("DATABASE_POOL_IDLE_TIMEOUT", "0"),
        ("DATABASE_POOL_MAX_LIFETIME", "2h"),
    ])
    .expect("valid");
    assert_eq!(
        settings.connection_url().redacted(),
        "postgres://app%20user:***@[::1]:6543/app%2Fdb?sslmode=verify-full&sslrootcert=%2Fetc%2Fpasswd\
         &application_name=api&connect_timeout=2\
         &keepalives=1&keepalives_idle=1&keepalives_interval=1&tcp_user_timeout=15000"
    );
    let pg = pg(&settings);
    assert_eq!(pg.statement_timeout, Some(Duration::from_secs(30)));
    assert_eq!(pg.lock_timeout, None, "0 disables");
    assert_eq!(
        pg.idle_in_transaction_timeout,
        Some(Duration::from_secs(60))
    );
    assert_eq!(settings.pool.max_size, 4);
    assert_eq!(settings.pool.min_idle, Some(0));
    assert_eq!(settings.pool.timeout, Duration::from_millis(250));
    assert_eq!(settings.pool.idle_timeout, None, "0 disables");
    assert_eq!(settings.pool.max_lifetime, Some(Duration::from_secs(7200)));
}

#[test]
fn password_fills_a_url_without_one() {
    let settings = Settings::from_pairs([
        ("DATABASE_URL", "postgres://app@db/app?application_name=web"),
        ("DATABASE_PASSWORD", "s3cr3t/@"),
    ])
    .expect("valid");
    let url = settings.connection_url();
    assert_eq!(
        url.expose_secret(),
        "postgres://app:s3cr3t%2F%40@db:5432/app?sslmode=prefer&application_name=web&connect_timeout=10\
         &keepalives=1&keepalives_idle=1&keepalives_interval=1&tcp_user_timeout=15000"
    );
    assert_eq!(
        url.redacted(),
        "postgres://app:***@db:5432/app?sslmode=prefer&application_name=web&connect_timeout=10\
         &keepalives=1&keepalives_idle=1&keepalives_interval=1&tcp_user_timeout=15000"
    );
    assert_eq!(format!("{url}"), url.redacted());
    assert_eq!(
        format!("{url:?}"),
        format!("ConnectionUrl({:?})", url.redacted())
    );
}

#[test]
fn origins_say_where_each_value_came_from() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dotenv = dir.path().join(".env");
    std::fs::write(
        &dotenv,
        "# comment\nDATABASE_HOST=from-dotenv\nDATABASE_PORT=6000\nOTHER=x\nDATABASE_USER='quoted $NOT'\n",
    )
    .expect("write .env");
    let vars = Vars::from_pairs([("DATABASE_PORT", "7000"), ("DATABASE_PASWORD", "typo")])
        .with_dotenv(&dotenv)
        .expect("valid .env");
    assert_eq!(
        vars.origin("DATABASE_PORT"),
        Some(Origin::Given),
        "the environment wins"
    );
    assert_eq!(vars.origin("DATABASE_HOST"), Some(Origin::DotEnv));
    assert_eq!(vars.origin("OTHER"), None, "only DATABASE_* is read");
    let loaded = vars.load().expect("valid");
    let entry = |name: &str| {
        loaded
            .entries
            .iter()
            .find(|e| e.variable == name)
            .unwrap_or_else(|| panic!("{name} listed"))
            .clone()
    };
    assert_eq!(
        (entry("DATABASE_PORT").value, entry("DATABASE_PORT").origin),
        ("7000".into(), Origin::Given)
    );
    assert_eq!(entry("DATABASE_HOST").origin, Origin::DotEnv);
    assert_eq!(entry("DATABASE_USER").value, "quoted $NOT");
    assert_eq!(entry("DATABASE_BACKEND").origin, Origin::Inferred);
    assert_eq!(entry("DATABASE_SSLMODE").origin, Origin::Default);
    assert_eq!(loaded.ignored, vec!["DATABASE_PASWORD".to_string()]);

    let from_url = Vars::from_pairs([("DATABASE_URL", "postgres://u@h:1/d")])
        .load()
        .expect("valid");
    let port = from_url
        .entries
        .iter()
        .find(|e| e.variable == "DATABASE_PORT")
        .expect("port");
    assert_eq!((port.value.as_str(), port.origin), ("1", Origin::Url));

    let missing = Vars::default().with_dotenv(&dir.path().join("absent.env"));
    assert!(missing.is_ok(), "a missing .env is not an error");
}

#[test]
fn a_broken_dotenv_names_the_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dotenv = dir.path().join(".env");
    std::fs::write(&dotenv, "DATABASE_HOST=db\n\nDATABASE_PASSWORD='unclosed\n").expect("write");
    let error = Vars::default()
        .with_dotenv(&dotenv)
        .expect_err("unbalanced quote");
    let message = error.to_string();
    assert!(
        message.contains(".env line 3: cannot be parsed"),
        "{message}"
    );
    assert!(
        !message.contains("unclosed"),
        "never quotes the line: {message}"
    );
}

/// Without DATABASE_REPLICA_HOST the replica's hosts are the primary's, all of them: a port
/// each, or one for all (it kept only the first host and refused a port per host).
#[test]
fn a_replica_port_keeps_all_of_the_primarys_hosts() {
    for (ports, expected) in [
        ("15435,15436", "postgres://app@a:15435,b:15436/app?"),
        ("15435", "postgres://app@a:15435,b:15435/app?"),
    ] {
        let settings = Settings::from_pairs([
            ("DATABASE_URL", "postgres://app@a:5432,b:5433/app"),
            ("DATABASE_REPLICA_PORT", ports),
        ])
        .unwrap_or_else(|e| panic!("{ports}: {e}"));
        let replica = settings.replica_settings().expect("a replica");
        let url = replica.connection_url().to_string();
        assert!(url.starts_with(expected), "{ports}: {url}");
    }
}

/// The URL's tcp_user_timeout is DATABASE_TCP_USER_TIMEOUT given another way (libpq's
/// milliseconds), not a silent override of it; keepalives may only repeat what datalayer sets.
#[test]
fn a_urls_tcp_user_timeout_is_the_setting_and_keepalives_cannot_contradict_it() {
    let settings = Settings::from_pairs([(
        "DATABASE_URL",
        "postgres://app@db/app?tcp_user_timeout=5000",
    )])
    .expect("settings");
    let Target::Postgres(pg) = &settings.target else {
        unreachable!()
    };
    assert_eq!(pg.tcp_user_timeout, Some(Duration::from_secs(5)));
    let both = Settings::from_pairs([
        (
            "DATABASE_URL",
            "postgres://app@db/app?tcp_user_timeout=5000",
        ),
        ("DATABASE_TCP_USER_TIMEOUT", "10s"),
    ])
    .unwrap_err();
    assert_eq!(
        both.config_problems()[0].variable,
        "DATABASE_TCP_USER_TIMEOUT",
        "{both}"
    );
    // What `config` shows, pasted back, loads; a contradiction does not.
    Settings::from_pairs([(
        "DATABASE_URL",
        "postgres://app@db/app?keepalives=1&keepalives_idle=1",
    )])
    .expect("the values datalayer sets");
    let off =
        Settings::from_pairs([("DATABASE_URL", "postgres://app@db/app?keepalives=0")]).unwrap_err();
    assert!(
        off.to_string().contains("DATABASE_TCP_USER_TIMEOUT"),
        "{off}"
    );
}
