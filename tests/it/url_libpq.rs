//! The connection URL against libpq itself: every field datalayer puts into a URL comes back
//! byte-identical from `PQconninfoParse`, and a real server accepts hostile names through it.

use datalayer::Settings;
use datalayer::config::{Host, Target};
use proptest::prelude::*;
use secrecy::{ExposeSecret, SecretString};

use crate::common::{TestDb, admin, unique_name};
use crate::libpq::{Conn, conninfo_parse};

/// Every ASCII punctuation character, with spaces, quotes, escapes and non-ASCII text.
fn hostile() -> Vec<String> {
    let punctuation: String = (0x21u8..0x7f)
        .filter(|b| b.is_ascii_punctuation())
        .map(char::from)
        .collect();
    let mut all = vec![
        punctuation.clone(),
        format!(" {punctuation} "),
        "%41".into(),
        "%".into(),
        "%%25".into(),
        "a+b c".into(),
        "back\\slash".into(),
        "'single' \"double\"".into(),
        "Ünïcødé naïve".into(),
        "日本語のパスワード".into(),
        "😀🔑 emoji".into(),
        "tab\tnew\nline".into(),
        "=&?#@:/[]".into(),
        "  ".into(),
    ];
    all.extend(punctuation.chars().map(|c| format!("a{c}b")));
    all
}

/// Settings whose fields are set directly (no environment parsing, so any string goes in):
/// the defaults of a PostgreSQL configuration with these fields replaced.
fn postgres(host: Host, user: &str, password: &str, dbname: &str, app: &str) -> Settings {
    let mut settings = Settings::from_pairs([
        ("DATABASE_BACKEND", "postgres"),
        ("DATABASE_SSLMODE", "disable"),
        ("DATABASE_CONNECT_TIMEOUT", "3s"),
        ("DATABASE_TCP_USER_TIMEOUT", "4s"),
    ])
    .expect("settings");
    let Target::Postgres(pg) = &mut settings.target else {
        unreachable!("postgres settings")
    };
    pg.host = host;
    pg.user = Some(user.to_string());
    pg.password = Some(SecretString::from(password));
    pg.database = Some(dbname.to_string());
    pg.application_name = app.to_string();
    settings
}

/// Asserts libpq reads back exactly the fields the settings hold.
fn assert_libpq_reads(settings: &Settings, host: &str, field: &str) {
    let Target::Postgres(pg) = &settings.target else {
        unreachable!("postgres settings")
    };
    let url = settings.connection_url();
    let parsed = conninfo_parse(url.expose_secret())
        .unwrap_or_else(|e| panic!("libpq rejected the URL for {field:?}: {e}"));
    let get = |key: &str| String::from_utf8(parsed.get(key).cloned().unwrap_or_default());
    let expected_password = pg.password.as_ref().map(|p| p.expose_secret().to_string());
    assert_eq!(get("user").ok(), pg.user, "user for {field:?}");
    assert_eq!(
        get("password").ok(),
        expected_password,
        "password for {field:?}"
    );
    assert_eq!(get("dbname").ok(), pg.database, "dbname for {field:?}");
    assert_eq!(
        get("application_name").ok().as_deref(),
        Some(pg.application_name.as_str())
    );
    assert_eq!(
        get("host").ok().as_deref(),
        Some(host),
        "host for {field:?}"
    );
    assert_eq!(get("port").ok().as_deref(), Some("5432"));
    assert_eq!(get("sslmode").ok().as_deref(), Some("disable"));
    assert_eq!(get("connect_timeout").ok().as_deref(), Some("3"));
    assert_eq!(get("keepalives").ok().as_deref(), Some("1"));
    assert_eq!(get("tcp_user_timeout").ok().as_deref(), Some("4000"));
}

/// And datalayer's own parser agrees: the URL, given back as DATABASE_URL, yields the same
/// settings.
fn assert_round_trips(settings: &Settings) {
    let Target::Postgres(pg) = &settings.target else {
        unreachable!("postgres settings")
    };
    let url = settings.connection_url();
    let again = Settings::from_pairs([("DATABASE_URL", url.expose_secret())])
        .unwrap_or_else(|e| panic!("datalayer rejected its own URL: {e}"));
    let Target::Postgres(back) = &again.target else {
        panic!("the URL came back as another backend")
    };
    assert_eq!(back.user, pg.user);
    assert_eq!(
        back.password.as_ref().map(|p| p.expose_secret()),
        pg.password.as_ref().map(|p| p.expose_secret())
    );
    assert_eq!(back.database, pg.database);
    assert_eq!(back.host, pg.host);
    assert_eq!(back.application_name, pg.application_name);
}

#[test]
fn libpq_reads_hostile_fields_byte_for_byte() {
    let cases = hostile();
    assert!(cases.len() > 30);
    for s in &cases {
        let tcp = postgres(Host::Name("db.example.com".into()), s, s, s, s);
        assert_libpq_reads(&tcp, "db.example.com", s);
        assert_round_trips(&tcp);
        let socket_dir = format!("/tmp/{s}");
        let socket = postgres(Host::Socket(socket_dir.clone()), s, s, s, s);
        assert_libpq_reads(&socket, &socket_dir, s);
        assert_round_trips(&socket);
    }
    let v6 = postgres(Host::Ip("::1".parse().expect("ip")), "u", "p", "d", "a");
    assert_libpq_reads(&v6, "::1", "ipv6");
    assert!(v6.connection_url().redacted().contains("@[::1]:5432/"));
    let v4 = postgres(
        Host::Ip("10.1.2.3".parse().expect("ip")),
        "u",
        "p",
        "d",
        "a",
    );
    assert_libpq_reads(&v4, "10.1.2.3", "ipv4");
}

#[test]
fn url_params_pass_through_to_libpq() {
    let settings = Settings::from_pairs([
        (
            "DATABASE_URL",
            "postgresql://app@db/app?options=-c%20search_path%3Dx&target_session_attrs=read-write",
        ),
        ("DATABASE_PASSWORD", "s3cret&x"),
        ("DATABASE_SSLMODE", "require"),
    ])
    .expect("valid");
    let parsed = conninfo_parse(settings.connection_url().expose_secret()).expect("libpq parses");
    assert_eq!(parsed["options"], b"-c search_path=x");
    assert_eq!(parsed["target_session_attrs"], b"read-write");
    assert_eq!(parsed["password"], b"s3cret&x");
    assert_eq!(parsed["sslmode"], b"require");
}

fn no_nul_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 1..24)
        .prop_map(String::from_iter)
}

/// A role or database name: PostgreSQL holds at most 63 bytes (longer is a configuration
/// error).
fn name_text() -> impl Strategy<Value = String> {
    no_nul_text().prop_filter("fits a PostgreSQL name", |s| s.len() <= 63)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn libpq_round_trips_arbitrary_strings(
        user in name_text(),
        password in no_nul_text(),
        dbname in name_text(),
        app in no_nul_text(),
        dir in no_nul_text(),
    ) {
        let tcp = postgres(Host::Name("localhost".into()), &user, &password, &dbname, &app);
        assert_libpq_reads(&tcp, "localhost", &user);
        assert_round_trips(&tcp);
        let socket_dir = format!("/{dir}");
        let socket = postgres(Host::Socket(socket_dir.clone()), &user, &password, &dbname, &app);
        assert_libpq_reads(&socket, &socket_dir, &dir);
        assert_round_trips(&socket);
    }
}

/// A real server: a role and a database with hostile names, reached over TCP and through a
/// socket directory whose name needs escaping, report themselves as exactly those names.
#[test]
fn postgres_accepts_hostile_names_through_the_url() {
    let suffix = unique_name("");
    let role = format!("r @:/?#%&=+'\"\\é😀{suffix}");
    let dbname = format!("d @:/?#%&=+'\"\\ü{suffix}");
    let _db = TestDb::create(&dbname, Some(&role));
    let app = "app @:/?#%&=+'\" x";

    let server_socket_dir = admin()
        .query("SHOW unix_socket_directories")
        .expect("show")
        .and_then(|dirs| dirs.split(',').next().map(|d| d.trim().to_string()))
        .expect("a socket directory");
    let hostile_dir = tempfile::Builder::new()
        .prefix("dl sock @:?#%&=+é ")
        .tempdir()
        .expect("temp dir");
    std::os::unix::fs::symlink(
        format!("{server_socket_dir}/.s.PGSQL.5432"),
        hostile_dir.path().join(".s.PGSQL.5432"),
    )
    .expect("symlink to the server's socket");
    let socket_host = Host::Socket(hostile_dir.path().to_string_lossy().into_owned());

    for host in [Host::Ip("127.0.0.1".parse().expect("ip")), socket_host] {
        let settings = postgres(host.clone(), &role, "unused under trust auth", &dbname, app);
        let conn = Conn::connect(settings.connection_url().expose_secret())
            .unwrap_or_else(|e| panic!("connect via {host}: {e}"));
        let one = |sql: &str| conn.query(sql).expect("query").expect("a row");
        assert_eq!(one("SELECT current_user"), role, "via {host}");
        assert_eq!(one("SELECT current_database()"), dbname, "via {host}");
        assert_eq!(
            one("SELECT current_setting('application_name')"),
            app,
            "via {host}"
        );
    }
}

/// A multi-host URL, as libpq reads it, and followed by a real connection: libpq tries the
/// hosts in order, and `target_session_attrs=read-write` keeps the one that accepts writes.
#[test]
fn several_hosts_are_written_as_libpq_reads_them_and_tried_in_order() {
    let settings = Settings::from_pairs([(
        "DATABASE_URL",
        "postgres://app@db-a.internal:5433,[::1]:5434,10.0.0.7/app?target_session_attrs=read-write",
    )])
    .expect("several hosts");
    let url = settings.connection_url();
    let parsed = conninfo_parse(url.expose_secret()).expect("libpq parses it");
    assert_eq!(parsed["host"], b"db-a.internal,::1,10.0.0.7");
    assert_eq!(parsed["port"], b"5433,5434,5433");
    assert_eq!(parsed["target_session_attrs"], b"read-write");
    assert_round_trips(&settings);

    // Nothing listens on port 1: libpq moves on to the shared server.
    let admin = crate::common::admin_url();
    let server = admin.rsplit_once('/').map_or(admin.as_str(), |(s, _)| s);
    let (_, hostport) = server.split_once('@').expect("user@host:port");
    let url = format!(
        "postgres://postgres@127.0.0.1:1,{hostport}/postgres?target_session_attrs=read-write"
    );
    let engine = datalayer::Engine::connect(
        &Settings::from_pairs([("DATABASE_URL", url.as_str())]).expect("settings"),
    )
    .expect("the second host answers");
    assert!(
        engine
            .ping()
            .expect("ping")
            .server_version
            .starts_with("PostgreSQL")
    );

    let error = Settings::from_pairs([("DATABASE_URL", "postgres://app@/app?host=/run/pg")])
        .map(|_| ())
        .err();
    assert!(
        error.is_none(),
        "one socket directory stays fine: {error:?}"
    );
}

#[test]
fn several_hosts_as_parts_are_written_as_libpq_reads_them() {
    let libpq = |pairs: &[(&str, &str)]| {
        let settings = Settings::from_pairs(pairs.iter().copied()).expect("valid");
        let parsed = conninfo_parse(settings.connection_url().expose_secret()).expect("parses");
        (
            String::from_utf8_lossy(&parsed["host"]).into_owned(),
            String::from_utf8_lossy(&parsed["port"]).into_owned(),
        )
    };
    assert_eq!(
        libpq(&[
            ("DATABASE_HOST", "db-a,db-b"),
            ("DATABASE_PORT", "5433,5434")
        ]),
        ("db-a,db-b".to_string(), "5433,5434".to_string())
    );
    assert_eq!(
        libpq(&[("DATABASE_HOST", "db-a, 10.0.0.7")]),
        ("db-a,10.0.0.7".to_string(), "5432,5432".to_string())
    );
    let problem = |pairs: &[(&str, &str)]| {
        let error = Settings::from_pairs(pairs.iter().copied()).expect_err("refused");
        error.config_problems()[0].variable.clone()
    };
    assert_eq!(
        problem(&[("DATABASE_HOST", "a,b"), ("DATABASE_PORT", "1,2,3")]),
        "DATABASE_PORT"
    );
    assert_eq!(problem(&[("DATABASE_HOST", "/run/pg,db")]), "DATABASE_HOST");
}
