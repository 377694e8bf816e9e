//! What a pool looks like at one moment: its counts and who holds its connections. Plain data,
//! shared by the engine (which fills it) and the errors (which carry it).

use std::fmt;
use std::time::Duration;

/// A connection checked out of the pool right now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// Where it was checked out: `src/handlers.rs:42`.
    pub site: String,
    /// For how long.
    pub held_for: Duration,
    /// Its PostgreSQL backend pid.
    pub backend_pid: Option<i32>,
    /// Its state in `pg_stat_activity` (`idle in transaction`, `active: SELECT ...`), when
    /// PostgreSQL could be asked.
    pub state: Option<String>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} for {:.1}s", self.site, self.held_for.as_secs_f64())?;
        match (&self.state, self.backend_pid) {
            (Some(state), Some(pid)) => write!(f, " (pid {pid}, {state})"),
            (None, Some(pid)) => write!(f, " (pid {pid})"),
            _ => Ok(()),
        }
    }
}

/// A snapshot of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolState {
    /// The most connections the pool will hold.
    pub max_size: u32,
    /// Connections open now: idle, parked and in use.
    pub connections: u32,
    /// Open connections waiting in the pool.
    pub idle: u32,
    /// Connections returned by a thread and kept for its next checkout (any thread may take
    /// them): idle, but not in the pool's own list.
    pub parked: u32,
    /// Connections checked out by the application now.
    pub in_use: u32,
    /// Threads waiting in line for a connection (served first come, first served).
    pub waiting: u32,
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool size {}, {} open: {} in use, {} idle, {} parked; {} waiting",
            self.max_size, self.connections, self.in_use, self.idle, self.parked, self.waiting
        )
    }
}
