//! `DATABASE_PASSWORD_FILE`: checked when loading, read again for each new connection, so a
//! rotated secret takes effect without a restart.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datalayer::{Engine, Settings};
use diesel::connection::SimpleConnection;

use crate::cluster::Cluster;

fn secret_file(dir: &std::path::Path, content: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.join("db-password");
    std::fs::write(&path, content).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

#[test]
fn a_password_file_is_checked_when_the_settings_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = ("DATABASE_HOST", "db");
    let load = |extra: Vec<(&str, &std::ffi::OsStr)>| {
        let mut pairs: Vec<(&str, &std::ffi::OsStr)> = vec![(pg.0, pg.1.as_ref())];
        pairs.extend(extra);
        datalayer::config::Vars::from_pairs(pairs).load()
    };
    let good = secret_file(dir.path(), "s3cret-CNRY\n", 0o600);
    let loaded = load(vec![("DATABASE_PASSWORD_FILE", good.as_os_str())]).expect("valid");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let url = loaded.settings.connection_url();
    assert!(!url.to_string().contains("s3cret"), "{url}");
    let config = format!("{:?}{:?}", loaded.settings, loaded.entries);
    assert!(!config.contains("s3cret"), "{config}");

    let problem = |extra: Vec<(&str, &std::ffi::OsStr)>| {
        let error = load(extra).expect_err("refused");
        let problems = error.config_problems().to_vec();
        assert_eq!(problems.len(), 1, "{error}");
        assert_eq!(problems[0].variable, "DATABASE_PASSWORD_FILE", "{error}");
        assert!(!error.to_string().contains("s3cret"), "{error}");
        problems[0].message.clone()
    };
    let both = problem(vec![
        ("DATABASE_PASSWORD_FILE", good.as_os_str()),
        ("DATABASE_PASSWORD", "other".as_ref()),
    ]);
    assert!(
        both.contains("cannot be combined with DATABASE_PASSWORD"),
        "{both}"
    );
    let missing = dir.path().join("nope");
    assert!(
        problem(vec![("DATABASE_PASSWORD_FILE", missing.as_os_str())]).contains("cannot be read")
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").expect("write");
    assert!(problem(vec![("DATABASE_PASSWORD_FILE", empty.as_os_str())]).contains("is empty"));
    // A NUL byte: libpq cannot send it, and connecting retried it until the deadline.
    let nul = dir.path().join("nul");
    std::fs::write(&nul, "s3cret\0CNRY\n").expect("write");
    assert!(problem(vec![("DATABASE_PASSWORD_FILE", nul.as_os_str())]).contains("NUL byte"));

    let open = secret_file(dir.path(), "s3cret-CNRY", 0o644);
    let loaded = load(vec![("DATABASE_PASSWORD_FILE", open.as_os_str())]).expect("valid");
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("can be read by other users (mode 644)"));
}

#[test]
fn a_rotated_password_takes_effect_without_a_restart() {
    let cluster = Cluster::start();
    let admin = cluster.admin();
    admin
        .query("CREATE ROLE app LOGIN PASSWORD 'first-pw'")
        .expect("role");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = secret_file(dir.path(), "first-pw\n", 0o600);
    let lifetime = Duration::from_millis(800);
    let mut settings = Settings::from_pairs([
        (
            "DATABASE_URL",
            format!(
                "postgres://app@127.0.0.1:{}/postgres?sslmode=disable",
                cluster.port
            ),
        ),
        (
            "DATABASE_PASSWORD_FILE",
            file.to_string_lossy().into_owned(),
        ),
        ("DATABASE_POOL_MAX_SIZE", "2".into()),
        ("DATABASE_APPLICATION_NAME", "rotation".into()),
    ])
    .expect("settings");
    settings.pool.max_lifetime = Some(lifetime);
    let engine = Arc::new(Engine::connect(&settings).expect("connect with the first password"));

    // Two clients, one request after another, counting failures, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (engine, stop, served, failed) = (
                Arc::clone(&engine),
                Arc::clone(&stop),
                Arc::clone(&served),
                Arc::clone(&failed),
            );
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                    let ok = engine
                        .get()
                        .map_err(|e| e.to_string())
                        .and_then(|mut conn| {
                            conn.batch_execute("SELECT 1").map_err(|e| e.to_string())
                        });
                    match ok {
                        Ok(()) => served.fetch_add(1, Ordering::AcqRel),
                        Err(_) => failed.fetch_add(1, Ordering::AcqRel),
                    };
                }
            })
        })
        .collect();
    let wait_for = |what: &str, condition: &dyn Fn() -> bool| {
        crate::common::wait_for(what, Duration::from_secs(20), condition)
    };
    wait_for("the clients run", &|| served.load(Ordering::Acquire) > 100);

    // Rotate: the role's password, then the file, as a secret manager would.
    admin
        .query("ALTER ROLE app PASSWORD 'second-pw'")
        .expect("rotate the role");
    std::fs::write(&file, "second-pw\n").expect("rotate the file");
    let rotated_at = admin
        .query("SELECT clock_timestamp()::text")
        .expect("now")
        .expect("a time");
    let old_backends = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rotation' \
         AND backend_start < '{rotated_at}'"
    );
    wait_for("every connection made before the rotation retires", &|| {
        admin
            .query(&old_backends)
            .expect("pg_stat_activity")
            .as_deref()
            == Some("0")
    });
    let (served_before, failed_before) = (
        served.load(Ordering::Acquire),
        failed.load(Ordering::Acquire),
    );
    wait_for("more requests on the new connections", &|| {
        served.load(Ordering::Acquire) > served_before + 200
    });
    stop.store(true, Ordering::Release);
    for client in clients {
        client.join().expect("client");
    }
    let failed_after = failed.load(Ordering::Acquire) - failed_before;
    println!(
        "rotation: {} requests served, {failed_before} failed up to the retirement of the old \
         connections, {failed_after} after",
        served.load(Ordering::Acquire)
    );
    assert_eq!(
        failed_after, 0,
        "requests failed once the old connections had retired"
    );
    let new_backends = admin
        .query("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rotation'")
        .expect("pg_stat_activity");
    assert_ne!(
        new_backends.as_deref(),
        Some("0"),
        "connected with the rotated password"
    );
}
