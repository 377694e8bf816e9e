//! TLS against a real server: a throw-away CA and a cluster with `ssl = on` (tests/it/cluster.rs).

use std::time::{Duration, Instant};

use datalayer::{Engine, Settings};
use diesel::{Connection, PgConnection};

use crate::cluster::{Certificates, Cluster};
use crate::common::{run_cli, text};

/// The variables for `user` on the TLS cluster, reached by the name its certificate carries.
fn tls_vars(cluster: &Cluster, ca: &std::path::Path, user: &str) -> Vec<(String, String)> {
    vec![
        (
            "DATABASE_URL".into(),
            format!(
                "postgres://{user}@db.test:{}/postgres?hostaddr=127.0.0.1",
                cluster.port
            ),
        ),
        ("DATABASE_SSLMODE".into(), "verify-full".into()),
        (
            "DATABASE_SSLROOTCERT".into(),
            ca.to_string_lossy().into_owned(),
        ),
        ("DATABASE_APPLICATION_NAME".into(), "tls-test".into()),
        ("DATABASE_CONNECT_DEADLINE".into(), "5s".into()),
    ]
}

#[test]
fn verify_full_connects_and_every_connection_is_encrypted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certificates = Certificates::make(dir.path());
    let cluster = Cluster::start_tls(&certificates);
    let mut vars = tls_vars(&cluster, &certificates.ca, "postgres");
    vars.push(("DATABASE_PASSWORD".into(), Cluster::PASSWORD.into()));
    vars.push(("DATABASE_POOL_MAX_SIZE".into(), "3".into()));
    let engine = Engine::connect(&Settings::from_pairs(vars).expect("settings")).expect("connect");
    let held: Vec<_> = (0..3).map(|_| engine.get().expect("checkout")).collect();
    let encrypted = cluster
        .admin()
        .query(
            "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'tls-test'",
        )
        .expect("pg_stat_ssl");
    let counts = encrypted.expect("a row");
    let (ssl, all) = counts.split_once('/').expect("n/m");
    assert_eq!(
        ssl, all,
        "every connection of the engine is encrypted: {counts}"
    );
    assert!(all.parse::<u32>().expect("a count") >= 3, "{counts}");
    drop(held);
}

/// Runs `check` with `vars`; returns the exit code and stderr.
fn check(vars: &[(String, String)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_cli(dir.path(), &["check"], vars);
    (output.status.code(), text(&output).1)
}

#[test]
fn a_wrong_ca_a_wrong_host_name_and_no_tls_each_fail_at_once_saying_which() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certificates = Certificates::make(dir.path());
    let cluster = Cluster::start_tls(&certificates);
    let password = (
        "DATABASE_PASSWORD".to_string(),
        Cluster::PASSWORD.to_string(),
    );

    let mut wrong_ca = tls_vars(&cluster, &certificates.other_ca, "postgres");
    wrong_ca.push(password.clone());
    let (code, stderr) = check(&wrong_ca);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("not signed by the CA in DATABASE_SSLROOTCERT"),
        "{stderr}"
    );
    assert!(!stderr.contains("retrying"), "{stderr}");

    let wrong_name = vec![
        (
            "DATABASE_URL".to_string(),
            format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port),
        ),
        ("DATABASE_SSLMODE".into(), "verify-full".into()),
        (
            "DATABASE_SSLROOTCERT".into(),
            certificates.ca.to_string_lossy().into_owned(),
        ),
        password.clone(),
    ];
    let (code, stderr) = check(&wrong_name);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("certificate is for another host name"),
        "{stderr}"
    );
    assert!(!stderr.contains("retrying"), "{stderr}");

    let plain = Cluster::start();
    let required = vec![
        (
            "DATABASE_URL".to_string(),
            format!("postgres://postgres@127.0.0.1:{}/postgres", plain.port),
        ),
        ("DATABASE_SSLMODE".into(), "require".into()),
        password,
    ];
    let (code, stderr) = check(&required);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("the server does not offer TLS"), "{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
}

#[test]
fn a_client_certificate_logs_in_with_cert_authentication() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certificates = Certificates::make(dir.path());
    let cluster = Cluster::start_tls(&certificates);
    cluster
        .admin()
        .query("CREATE ROLE certuser LOGIN")
        .expect("role");
    let mut vars = tls_vars(&cluster, &certificates.ca, "certuser");
    let without = check(&vars);
    assert_eq!(
        without.0,
        Some(3),
        "no certificate, no entry: {}",
        without.1
    );
    // A refusal that will not go away: at once, with what to set, not retried to the deadline.
    assert!(!without.1.contains("retrying"), "{}", without.1);
    assert!(without.1.contains("DATABASE_SSLCERT"), "{}", without.1);
    vars.push((
        "DATABASE_SSLCERT".into(),
        certificates.client_cert.to_string_lossy().into_owned(),
    ));
    vars.push((
        "DATABASE_SSLKEY".into(),
        certificates.client_key.to_string_lossy().into_owned(),
    ));
    let engine = Engine::connect(&Settings::from_pairs(vars.clone()).expect("settings"))
        .expect("connect with the certificate");
    assert_eq!(
        engine.ping().expect("ping").user.as_deref(),
        Some("certuser")
    );
    // `config` shows the key by path only.
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_cli(dir.path(), &["config"], &vars);
    let (stdout, _) = text(&output);
    let key = std::fs::read_to_string(&certificates.client_key).expect("key");
    assert!(
        stdout.contains(&*certificates.client_key.to_string_lossy()),
        "{stdout}"
    );
    assert!(
        !stdout.contains(key.lines().nth(1).unwrap_or("-")),
        "the key itself is never shown"
    );
}

#[test]
fn tls_and_plain_connections_both_work_and_print_what_tls_costs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certificates = Certificates::make(dir.path());
    let cluster = Cluster::start_tls(&certificates);
    let url = |mode: &str| {
        format!(
            "postgres://postgres:{}@db.test:{}/postgres?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}",
            Cluster::PASSWORD,
            cluster.port,
            certificates.ca.display()
        )
    };
    let median = |mode: &str| {
        let mut times: Vec<Duration> = (0..15)
            .map(|_| {
                let started = Instant::now();
                let conn = PgConnection::establish(&url(mode)).expect("connect");
                let took = started.elapsed();
                drop(conn);
                took
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let (plain, tls) = (median("disable"), median("verify-full"));
    println!(
        "new connection (scram-sha-256, localhost), median of 15: sslmode=disable {plain:.2?}, \
         verify-full {tls:.2?} (+{:.2?})",
        tls.saturating_sub(plain)
    );
    assert!(plain > Duration::ZERO && tls > Duration::ZERO);
}
