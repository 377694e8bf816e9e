//! The high-availability stack of `scripts/ha` for one test: etcd, two PostgreSQL nodes under
//! Patroni (synchronous mode) and HAProxy with a primary and a replica port checked through
//! Patroni's REST API, on free ports, in a temporary folder of the test's own.
//!
//! The test runs `scripts/ha run DIR` as a child that gets SIGTERM when the test's thread ends
//! or its process is killed ([`stops_with_this_thread`]); the script then stops every process
//! of the stack. `scripts/test` also sweeps the folders of test processes that are gone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::stops_with_this_thread;

pub struct HaStack {
    child: Option<Child>,
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

/// A node of the stack: `node1` or `node2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    One,
    Two,
}

impl Node {
    pub fn name(self) -> &'static str {
        match self {
            Node::One => "node1",
            Node::Two => "node2",
        }
    }

    pub fn other(self) -> Node {
        match self {
            Node::One => Node::Two,
            Node::Two => Node::One,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Node::One => "HA_NODE1",
            Node::Two => "HA_NODE2",
        }
    }
}

impl HaStack {
    /// Starts the stack and waits until the leader (node1) takes writes, node2 is its
    /// synchronous standby and both HAProxy ports route.
    pub fn start() -> HaStack {
        let dir = tempfile::Builder::new()
            .prefix(&format!("datalayer-ha-{}-", std::process::id()))
            .tempdir()
            .expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ha");
        let mut command = Command::new(&script);
        command
            .arg("run")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("run.log")).expect("log file"));
        let mut child = stops_with_this_thread(&mut command)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        let ready = dir.path().join("ready");
        let deadline = Instant::now() + Duration::from_secs(150);
        while !ready.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
                panic!(
                    "scripts/ha run ended ({status}) before the stack was up (install its \
                     packages with `scripts/ha install`; ./scripts/test does):\n{log}"
                );
            }
            assert!(
                Instant::now() < deadline,
                "the HA stack did not come up within 150 s: see {}",
                dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let env = std::fs::read_to_string(dir.path().join("env"))
            .expect("env")
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HaStack {
            child: Some(child),
            dir,
            env,
        }
    }

    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the stack's env"))
    }

    /// HAProxy's port routed to the leader (Patroni's `/primary`).
    pub fn primary_url(&self) -> String {
        self.var("HA_PRIMARY_URL").to_string()
    }

    /// HAProxy's port routed to the replicas (Patroni's `/replica`).
    pub fn replica_url(&self) -> String {
        self.var("HA_REPLICA_URL").to_string()
    }

    /// Both nodes, `target_session_attrs=read-write`.
    pub fn multi_host_url(&self) -> String {
        self.var("HA_MULTI_HOST_URL").to_string()
    }

    pub fn port(&self, node: Node) -> u16 {
        self.var(&format!("{}_PORT", node.key()))
            .parse()
            .expect("port")
    }

    fn rest(&self, node: Node) -> SocketAddr {
        self.var(&format!("{}_REST", node.key()))
            .parse()
            .expect("address")
    }

    /// A connection straight to a node, as the superuser.
    pub fn connect(&self, node: Node) -> crate::libpq::Conn {
        self.try_connect(node)
            .unwrap_or_else(|e| panic!("{}: {e}", node.name()))
    }

    /// [`connect`](Self::connect), or why it failed (a node restarting).
    pub fn try_connect(&self, node: Node) -> Result<crate::libpq::Conn, String> {
        crate::libpq::Conn::connect(&format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port(node)
        ))
    }

    /// Whether Patroni's REST API says `node` is the leader and takes writes (`GET /primary`).
    pub fn is_leader(&self, node: Node) -> bool {
        crate::server::try_http(
            self.rest(node),
            "GET",
            "/primary",
            "",
            Duration::from_secs(1),
        )
        .is_ok_and(|reply| reply.status == 200)
    }

    /// Whether the cluster is whole: a leader, and the other node its synchronous standby
    /// (Patroni fails over only to that one in synchronous mode).
    pub fn is_whole(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        crate::server::try_http(
            self.rest(leader),
            "GET",
            "/cluster",
            "",
            Duration::from_secs(1),
        )
        .is_ok_and(|reply| {
            reply.status == 200
                && reply.body.contains(r#""role": "sync_standby""#)
                && reply.body.matches(r#""state": "streaming""#).count()
                    + reply.body.matches(r#""state": "running""#).count()
                    >= 2
        })
    }

    /// The node Patroni says leads, if one does.
    pub fn leader(&self) -> Option<Node> {
        [Node::One, Node::Two]
            .into_iter()
            .find(|node| self.is_leader(*node))
    }

    /// `patronictl switchover --force`: the leader hands over to its synchronous standby and
    /// comes back as a standby. Returns when patronictl does.
    pub fn switchover(&self) {
        let output = Command::new("patronictl")
            .arg("-c")
            .arg(self.dir.path().join("node1.yml"))
            .args(["switchover", "--force"])
            .output()
            .expect("patronictl");
        assert!(
            output.status.success(),
            "patronictl switchover: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Kills `node` as a machine's crash would: its Patroni and its postmaster with SIGKILL.
    pub fn kill(&self, node: Node) {
        let node_dir = self.dir.path().join(node.name());
        for pid_file in [
            node_dir.join("patroni.pid"),
            node_dir.join("data/postmaster.pid"),
        ] {
            let text = std::fs::read_to_string(&pid_file)
                .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
            let pid: libc::pid_t = text
                .lines()
                .next()
                .and_then(|line| line.trim().parse().ok())
                .unwrap_or_else(|| panic!("{}: no pid", pid_file.display()));
            // SAFETY: kill(2) on a pid the stack's own files name.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for HaStack {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: SIGTERM to our own child; scripts/ha stops the stack on it.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}
