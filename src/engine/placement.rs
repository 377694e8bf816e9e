//! Where the PostgreSQL server runs relative to this process's threads: on cores they may
//! run on too, or elsewhere (another machine, or cores of its own). The line of waiting
//! threads (`affinity.rs`) hands connections over less often when the server shares the
//! cores, because there a hand-off costs far more than a wake-up.
//!
//! On shared cores the kernel keeps each client thread on the core of the backend it talks
//! to, so that their exchanges stay on one core; a hand-off gives the backend to a thread that
//! ran elsewhere, and the two are paired again at the cost of wake-ups across cores. Measured
//! with `perf` on the benchmark's 2-core machine (pool of 8, point reads): 1-2 % of the
//! client-backend wake-ups crossed cores at 8 threads, 40-63 % at 128, and each hand-off cost
//! the machine about 160 µs of CPU. With the server on a core of its own every wake-up crosses
//! anyway, and a hand-off costs one wake-up.

/// Whether the PostgreSQL backend process `pid` runs on this machine and may run on a core
/// the calling thread may run on. `false` when `pid` is no PostgreSQL process here (the server
/// runs on another machine, or in another PID namespace) or when its cores and this thread's
/// are disjoint.
pub(crate) fn shares_cores(pid: i32) -> bool {
    let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end() == "postgres");
    if !is_postgres {
        return false;
    }
    match (cores_of(pid), cores_of(0)) {
        (Some(server), Some(ours)) => server.iter().zip(ours.iter()).any(|(s, o)| s & o != 0),
        // Unreadable: assume the worse case for hand-offs, the shared cores.
        _ => true,
    }
}

/// The cores `pid` (0: the calling thread) may run on, as the words of a CPU mask.
fn cores_of(pid: i32) -> Option<[u64; 16]> {
    let mut mask = [0u64; 16];
    // SAFETY: the kernel writes at most `size_of_val(&mask)` bytes into `mask`.
    let written = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            pid,
            std::mem::size_of_val(&mask),
            mask.as_mut_ptr(),
        )
    };
    (written > 0).then_some(mask)
}

#[cfg(test)]
mod tests {
    use super::shares_cores;
    use std::process::{Child, Command};

    /// A process whose name is `postgres` (a copy of `sleep` under that name), for as long as
    /// the returned child lives.
    fn fake_backend(dir: &std::path::Path) -> Child {
        let exe = dir.join("postgres");
        std::fs::copy("/bin/sleep", &exe).expect("copy /bin/sleep");
        let child = Command::new(&exe).arg("30").spawn().expect("spawn");
        // `spawn` may return before the child's exec has renamed it.
        let comm = format!("/proc/{}/comm", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&comm).map_or(true, |c| c.trim_end() != "postgres") {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never became postgres"
            );
            std::thread::yield_now();
        }
        child
    }

    fn pin(pid: i32, cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes a bit inside it, and
        // sched_setaffinity reads it.
        let done = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        assert_eq!(done, 0, "pin {pid} to core {cpu}");
    }

    #[test]
    fn a_local_postgres_process_shares_the_cores_unless_pinned_apart() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            cores >= 2,
            "this test needs 2 cores to pin apart, found {cores}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut backend = fake_backend(dir.path());
        let pid = i32::try_from(backend.id()).expect("pid");
        let verdicts = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let together = shares_cores(pid);
                    pin(pid, 0);
                    pin(0, 1);
                    let apart = shares_cores(pid);
                    pin(0, 0);
                    (together, apart, shares_cores(pid))
                })
                .join()
                .expect("no panic")
        });
        backend.kill().expect("kill");
        backend.wait().expect("reap");
        assert_eq!(verdicts, (true, false, true));
    }

    #[test]
    fn a_pid_that_is_no_local_postgres_process_runs_elsewhere() {
        // This test process (not named postgres), and a pid that no process has.
        assert!(!shares_cores(
            i32::try_from(std::process::id()).expect("pid")
        ));
        assert!(!shares_cores(i32::MAX));
    }
}
