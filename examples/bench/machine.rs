//! What the whole machine spent while a case ran, from Linux's `/proc/stat`: CPU time of every
//! process (the benchmark, PostgreSQL, PgBouncer, pgbench) and context switches. The overload
//! case divides them by the requests served, so that a throughput lost under overload shows as
//! CPU spent per request (the machine stayed busy) or as idle time (it waited), and the
//! switches show the wake-ups behind it. On a virtual machine the hypervisor's share shows too
//! (steal time: the cores wanted to run and the host ran something else). `None` where
//! `/proc/stat` cannot be read.

/// Counters of `/proc/stat` at one moment.
#[derive(Clone, Copy)]
pub(crate) struct Counters {
    /// Clock ticks of all cores spent running anything (user, nice, system, irq, softirq).
    busy: u64,
    /// Clock ticks of all cores spent idle or waiting for I/O.
    idle: u64,
    /// Clock ticks the hypervisor took from cores that had work (steal).
    stolen: u64,
    /// Context switches since boot.
    switches: u64,
}

impl Counters {
    /// Reads the counters now.
    pub(crate) fn now() -> Option<Counters> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut lines = stat.lines();
        // "cpu  user nice system idle iowait irq softirq steal guest guest_nice"
        let ticks: Vec<u64> = lines
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        let tick = |i: usize| ticks.get(i).copied().unwrap_or(0);
        let switches = lines
            .find_map(|line| line.strip_prefix("ctxt "))?
            .trim()
            .parse()
            .ok()?;
        Some(Counters {
            busy: tick(0) + tick(1) + tick(2) + tick(5) + tick(6),
            idle: tick(3) + tick(4),
            stolen: tick(7),
            switches,
        })
    }
}

/// What the machine spent over one or more spans.
#[derive(Clone, Copy, Default)]
pub(crate) struct Spent {
    busy_ticks: u64,
    idle_ticks: u64,
    stolen_ticks: u64,
    switches: u64,
    /// A span added lacked a reading: the figures would undercount.
    incomplete: bool,
}

impl Spent {
    /// Adds the span from `before` to `after` (`None`: a reading failed).
    pub(crate) fn add(&mut self, before: Option<Counters>, after: Option<Counters>) {
        match (before, after) {
            (Some(before), Some(after)) => {
                self.busy_ticks += after.busy.saturating_sub(before.busy);
                self.idle_ticks += after.idle.saturating_sub(before.idle);
                self.stolen_ticks += after.stolen.saturating_sub(before.stolen);
                self.switches += after.switches.saturating_sub(before.switches);
            }
            _ => self.incomplete = true,
        }
    }

    /// Adds what `other` counted (another round of the same case).
    pub(crate) fn merge(&mut self, other: Spent) {
        self.busy_ticks += other.busy_ticks;
        self.idle_ticks += other.idle_ticks;
        self.stolen_ticks += other.stolen_ticks;
        self.switches += other.switches;
        self.incomplete |= other.incomplete;
    }

    /// CPU microseconds of all cores per request, context switches per request, and the
    /// shares of the cores' time spent idle and taken by the hypervisor, as table cells (empty
    /// when not measured).
    pub(crate) fn cells(&self, requests: u64) -> [String; 4] {
        if self.incomplete || requests == 0 || self.busy_ticks + self.idle_ticks == 0 {
            return Default::default();
        }
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz <= 0 {
            return Default::default();
        }
        let requests = requests as f64;
        let total = (self.busy_ticks + self.idle_ticks + self.stolen_ticks) as f64;
        [
            format!("{:.1}", self.busy_ticks as f64 * 1e6 / hz as f64 / requests),
            format!("{:.2}", self.switches as f64 / requests),
            format!("{:.1} %", self.idle_ticks as f64 * 100.0 / total),
            format!("{:.1} %", self.stolen_ticks as f64 * 100.0 / total),
        ]
    }
}
