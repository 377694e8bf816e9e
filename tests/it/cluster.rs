//! A throw-away PostgreSQL cluster for a test that needs what the shared one lacks (password
//! authentication, later TLS): `initdb` and `pg_ctl` from the PostgreSQL packages, run as the
//! `postgres` user in a temporary folder, on a free port, stopped and removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's PostgreSQL tools live.
fn bin(tool: &str) -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (install postgresql; ./scripts/test does)",
                root.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions
        .last()
        .map(|v| v.join("bin").join(tool))
        .unwrap_or_else(|| panic!("no PostgreSQL under {}", root.display()))
}

fn as_postgres(tool: &str, args: &[&str]) {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin(tool))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("runuser {tool}: {e}"));
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A running cluster whose superuser `postgres` logs in with [`Cluster::PASSWORD`] over
/// scram-sha-256 on 127.0.0.1.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Cluster {
    pub const PASSWORD: &'static str = "cluster-superuser-pw";

    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let owner = |path: &Path| {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(path)
                .status()
                .unwrap_or_else(|e| panic!("chown: {e}"));
            assert!(
                status.success(),
                "chown {} (the tests run as root)",
                path.display()
            );
        };
        owner(dir.path());
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, Cluster::PASSWORD).expect("password file");
        owner(&pwfile);
        let data = dir.path().join("data");
        as_postgres(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "-N",
            ],
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-l",
                &dir.path().join("log").to_string_lossy(),
                "start",
            ],
        );
        Cluster { dir, port }
    }

    /// A superuser libpq connection, for setting the test up.
    pub fn admin(&self) -> crate::libpq::Conn {
        crate::libpq::Conn::connect(&format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres?sslmode=disable",
            Cluster::PASSWORD,
            self.port
        ))
        .expect("connect to the test cluster")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin("pg_ctl"))
            .args([
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}
