//! The client and PostgreSQL on separate cores, as in production (the database on a machine of
//! its own): a throw-away cluster whose processes may run only on the first cores, and the
//! benchmark's threads on the last one while a case runs.
//!
//! Why: on the cores they share, the kernel keeps each client thread next to the backend it
//! talks to (at C = 8 on 2 cores, 1-2 % of their wake-ups crossed cores), and every hand-off of
//! a connection to another thread breaks such pairs (at C = 128, 40-63 % crossed), so the
//! shared layout charges a fair hand-off with the kernel's cost of re-pairing. Separate cores
//! take that out: every wake-up crosses cores at every C, and what remains is the pool's own
//! cost.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection};

use crate::{Config, Result, postgres_ids};

/// The cores the calling thread may run on, as the kernel's set.
fn this_thread_set() -> std::io::Result<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by sched_getaffinity for the
    // calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(set)
    }
}

/// The cores this process may run on, in order (none when they cannot be read).
fn allowed_cores() -> Vec<usize> {
    let Ok(set) = this_thread_set() else {
        return Vec::new();
    };
    // SAFETY: CPU_ISSET reads a bit of a valid set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

fn set_of(cores: &[usize]) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes bits inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cores {
            libc::CPU_SET(cpu, &mut set);
        }
        set
    }
}

/// Restricts the calling thread (and threads it spawns later) to `set`.
fn pin_this_thread(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size given; pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Where Debian's PostgreSQL tools live (the newest version installed).
fn postgres_bin(tool: &str) -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| format!("{}: {e} (install postgresql)", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    let tool = versions
        .last()
        .map(|v| v.join("bin").join(tool))
        .ok_or_else(|| format!("no PostgreSQL under {}", root.display()))?;
    if !tool.exists() {
        return Err(format!("{} is missing", tool.display()).into());
    }
    Ok(tool)
}

/// Whether this machine can run the layout: at least 2 cores for this process, PostgreSQL's
/// `initdb`, and root (to run the cluster as `postgres`). `Err` says what is missing.
pub(crate) fn possible() -> Result<()> {
    if allowed_cores().len() < 2 {
        return Err("fewer than 2 cores".into());
    }
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (the cluster runs as the postgres user)".into());
    }
    postgres_bin("initdb")?;
    postgres_ids()?;
    Ok(())
}

/// The layout: a cluster on the server's cores and the client's core to pin cases to.
pub(crate) struct Split {
    /// Listens on 127.0.0.1 at `port`; stopped (fast shutdown) and removed on drop.
    server: Child,
    dir: PathBuf,
    pub(crate) port: u16,
    pub(crate) server_cores: Vec<usize>,
    pub(crate) client_core: usize,
}

impl Split {
    /// Starts the cluster, its processes restricted to every allowed core but the last.
    pub(crate) fn start() -> Result<Split> {
        possible()?;
        let dir = std::env::temp_dir().join(format!("dl_bench_split_{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // A failure before the server runs leaves no folder behind (after, the drop removes it).
        Split::start_in(dir.clone()).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })
    }

    /// [`Split::start`] in the folder `dir`.
    fn start_in(dir: PathBuf) -> Result<Split> {
        let cores = allowed_cores();
        let (&client_core, server_cores) = cores.split_last().ok_or("no cores")?;
        let data = dir.join("data");
        let (uid, gid) = postgres_ids()?;
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()?;
        let initdb = Command::new(postgres_bin("initdb")?)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .uid(uid)
            .gid(gid)
            .output()?;
        if !initdb.status.success() {
            return Err(
                format!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr)).into(),
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.join("server.log"))?;
        let set = set_of(server_cores);
        let mut command = Command::new(postgres_bin("postgres")?);
        command
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl and sched_setaffinity are async-signal-safe and run in the child after
        // its uid changed (which would clear the death signal). The postmaster's backends
        // inherit its cores. SIGINT is PostgreSQL's fast shutdown; it comes when the spawning
        // thread (the main thread) ends, so that no cluster outlives a killed benchmark.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                pin_this_thread(&set)
            });
        }
        let split = Split {
            server: command.spawn()?,
            dir,
            port,
            server_cores: server_cores.to_vec(),
            client_core,
        };
        // Ready once it takes a session (it listens before it has finished starting up).
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = PgConnection::establish(&url) {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(split.dir.join("server.log")).unwrap_or_default();
                return Err(format!("the cluster did not start: {e}\n{log}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(split)
    }

    /// `config` pointed at this cluster's benchmark database.
    pub(crate) fn config(&self, config: &Config) -> Config {
        let server = format!("postgres://postgres@127.0.0.1:{}", self.port);
        Config {
            url: format!("{server}/{}?sslmode=disable", config.dbname),
            server,
            ..config.clone()
        }
    }

    /// Runs `f` with the calling thread, and the threads it spawns, on the client's core.
    pub(crate) fn on_client_core<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let before = this_thread_set()?;
        pin_this_thread(&set_of(&[self.client_core]))?;
        let result = f();
        pin_this_thread(&before)?;
        Ok(result)
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of a child this process has not reaped yet.
        unsafe {
            libc::kill(self.server.id() as libc::pid_t, libc::SIGINT);
        }
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
