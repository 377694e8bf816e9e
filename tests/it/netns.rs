//! A private network namespace joined to this one by a veth pair (link-local 169.254.77.0/30,
//! the test's own host), so a test can make packets vanish for real: with the inner end of the
//! link down, nothing is acknowledged, as when a peer disappears without a FIN. A userspace
//! proxy cannot do that (its kernel acknowledges whatever it is sent). Needs root and iproute2.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

/// The namespace's end of the link (the host's end is 169.254.77.1).
pub const INNER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 77, 2));

pub struct Netns {
    pub name: String,
    inner_if: String,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "running `ip {}`: {e}; this test needs iproute2 (apt-get install iproute2)",
            args.join(" ")
        )
    });
    assert!(
        output.status.success(),
        "`ip {}` failed: {}; this test needs root and iproute2 (./scripts/test installs it)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

impl Netns {
    pub fn create() -> Netns {
        let id = std::process::id();
        let name = format!("dlbh{id}");
        let host_if = format!("dlh{}", id % 1_000_000);
        let inner_if = format!("dln{}", id % 1_000_000);
        // A namespace left behind by a killed run would hold the same addresses.
        if let Ok(list) = Command::new("ip").args(["netns", "list"]).output() {
            for stale in String::from_utf8_lossy(&list.stdout).lines() {
                if let Some(stale) = stale
                    .split_whitespace()
                    .next()
                    .filter(|n| n.starts_with("dlbh"))
                {
                    let _ = Command::new("ip").args(["netns", "del", stale]).status();
                }
            }
        }
        ip(&["netns", "add", &name]);
        let netns = Netns { name, inner_if };
        ip(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            &netns.inner_if,
        ]);
        ip(&["link", "set", &netns.inner_if, "netns", &netns.name]);
        ip(&["addr", "add", "169.254.77.1/30", "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        netns.inner(&["addr", "add", "169.254.77.2/30", "dev", &netns.inner_if]);
        netns.inner(&["link", "set", &netns.inner_if, "up"]);
        netns.inner(&["link", "set", "lo", "up"]);
        netns
    }

    fn inner(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Moves the calling thread into the namespace (sockets it opens from then on live there).
    pub fn enter_current_thread(&self) {
        use std::os::fd::AsRawFd;
        let file =
            std::fs::File::open(format!("/var/run/netns/{}", self.name)).expect("netns file");
        // SAFETY: setns with a namespace file descriptor affects only the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Takes the inner end of the link down: packets across it vanish.
    pub fn cut(&self) {
        self.inner(&["link", "set", &self.inner_if, "down"]);
    }

    /// Brings the link back.
    pub fn restore(&self) {
        self.inner(&["link", "set", &self.inner_if, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair too.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
