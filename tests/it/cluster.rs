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

/// A temporary folder for a cluster, named for this test process
/// (`datalayer-cluster-<pid>-...`): `pg_ctl` runs the server detached, so it outlives a test
/// process that is killed before it can stop it; `scripts/test` stops and removes the clusters
/// of test processes that are gone.
fn cluster_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("datalayer-cluster-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir")
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

/// Files of a throw-away certificate authority, made with openssl: a server certificate for
/// the host name `db.test` only, and a client certificate for the role `certuser`.
pub struct Certificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another CA, which signed nothing the server has.
    pub other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e} (install openssl; ./scripts/test does)"));
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Certificates {
    pub fn make(dir: &Path) -> Certificates {
        let ca = |name: &str, subject: &str| {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    subject,
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.crt"),
                ],
            );
        };
        ca("ca", "/CN=datalayer test CA");
        ca("other-ca", "/CN=another CA");
        let signed = |name: &str, subject: &str, extensions: Option<&str>| {
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    subject,
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            let mut args = vec![
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.crt"),
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
            if let Some(extensions) = extensions {
                std::fs::write(dir.join(format!("{name}.ext")), extensions).expect("extensions");
                args.extend(["-extfile".to_string(), format!("{name}.ext")]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            openssl(dir, &args);
        };
        signed(
            "server",
            "/CN=db.test",
            Some("subjectAltName=DNS:db.test\n"),
        );
        signed("client", "/CN=certuser", None);
        for key in ["server.key", "client.key"] {
            std::fs::set_permissions(
                dir.join(key),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod");
        }
        Certificates {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            other_ca: dir.join("other-ca.crt"),
        }
    }
}

impl Cluster {
    pub const PASSWORD: &'static str = "cluster-superuser-pw";

    pub fn start() -> Cluster {
        Cluster::start_with(None)
    }

    /// A cluster with `ssl = on` serving `certificates`' server certificate, asking clients
    /// for certificates of its CA; the role `certuser` logs in by certificate only.
    pub fn start_tls(certificates: &Certificates) -> Cluster {
        Cluster::start_with(Some(certificates))
    }

    fn start_with(tls: Option<&Certificates>) -> Cluster {
        let dir = cluster_dir();
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
        if let Some(tls) = tls {
            let copy = |from: &Path, name: &str| {
                let to = data.join(name);
                std::fs::copy(from, &to).expect("copy a certificate");
                owner(&to);
                to
            };
            copy(&tls.server_cert, "server.crt");
            let key = copy(&tls.server_key, "server.key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            copy(&tls.ca, "root.crt");
            let conf = data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
            text.push_str(
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 ssl_ca_file = 'root.crt'\n",
            );
            std::fs::write(&conf, text).expect("postgresql.conf");
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all scram-sha-256\n\
                 hostssl all certuser 127.0.0.1/32 cert\n\
                 host all all 127.0.0.1/32 scram-sha-256\n",
            )
            .expect("pg_hba.conf");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Cluster::run(dir, port)
    }

    /// Starts the cluster in `dir`/data on `port`.
    fn run(dir: tempfile::TempDir, port: u16) -> Cluster {
        let cluster = Cluster { dir, port };
        cluster.start_again();
        cluster
    }

    /// Starts this (stopped) cluster on its port and waits until it accepts connections.
    pub fn start_again(&self) {
        let dir = self.dir.path();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            dir.display()
        );
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                &dir.join("data").to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-l",
                &dir.join("log").to_string_lossy(),
                "start",
            ],
        );
    }

    /// A streaming replica of this cluster (`pg_basebackup -R`), started on its own port.
    pub fn replica(&self) -> Cluster {
        let dir = cluster_dir();
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown (the tests run as root)");
        let data = dir.path().join("data");
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--", "env"])
            .arg(format!("PGPASSWORD={}", Cluster::PASSWORD))
            .arg(bin("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-R",
            ])
            .args(["-X", "stream", "-D"])
            .arg(&data)
            .output()
            .expect("pg_basebackup");
        assert!(
            output.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Cluster::run(dir, port)
    }

    /// Promotes this standby and waits until it accepts writes.
    pub fn promote(&self) {
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.dir.path().join("data").to_string_lossy(),
                "-w",
                "promote",
            ],
        );
    }

    /// Stops this cluster (fast shutdown: sessions are terminated).
    pub fn stop(&self) {
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.dir.path().join("data").to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// The superuser's URL of this cluster's `postgres` database, without TLS.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres?sslmode=disable",
            Cluster::PASSWORD,
            self.port
        )
    }

    /// [`Cluster::url`] listing this node and `standby`, keeping whichever takes writes
    /// (`target_session_attrs=read-write`): how an application follows a failover.
    pub fn failover_url(&self, standby: &Cluster) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{},127.0.0.1:{}/postgres?sslmode=disable&\
             target_session_attrs=read-write",
            Cluster::PASSWORD,
            self.port,
            standby.port
        )
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
