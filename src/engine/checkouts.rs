//! Who holds the pool's connections: the checkout site (`#[track_caller]`), since when, and the
//! PostgreSQL backend pid, for pool-timeout errors and leak warnings.

use std::collections::HashMap;
use std::fmt;
use std::panic::Location;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A connection checked out of the pool right now.
#[derive(Debug, Clone, PartialEq, Eq)]
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

struct Checkout {
    site: &'static Location<'static>,
    since: Instant,
    backend_pid: Option<i32>,
    warned: bool,
}

/// The live checkouts of one engine.
#[derive(Default)]
pub(crate) struct Checkouts {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Checkout>>,
}

impl fmt::Debug for Checkouts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.live.lock().map(|live| live.len()).unwrap_or(0);
        f.debug_struct("Checkouts").field("live", &count).finish()
    }
}

impl Checkouts {
    pub(crate) fn register(
        &self,
        site: &'static Location<'static>,
        backend_pid: Option<i32>,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut live) = self.live.lock() {
            live.insert(
                id,
                Checkout {
                    site,
                    since: Instant::now(),
                    backend_pid,
                    warned: false,
                },
            );
        }
        id
    }

    /// Forgets a returned checkout, warning if it was held past `threshold` unnoticed.
    pub(crate) fn release(&self, id: u64, threshold: Option<Duration>) {
        let Some(checkout) = self.live.lock().ok().and_then(|mut live| live.remove(&id)) else {
            return;
        };
        let held = checkout.since.elapsed();
        if let Some(threshold) = threshold
            && held > threshold
            && !checkout.warned
        {
            tracing::warn!(
                "a database connection checked out at {} was held for {:.1}s \
                 (DATABASE_POOL_LEAK_THRESHOLD {:.1}s)",
                checkout.site,
                held.as_secs_f64(),
                threshold.as_secs_f64()
            );
        }
    }

    /// Warns once about each connection held past `threshold` and not yet returned.
    pub(crate) fn warn_overdue(&self, threshold: Duration) {
        let Ok(mut live) = self.live.lock() else {
            return;
        };
        for checkout in live.values_mut() {
            let held = checkout.since.elapsed();
            if held > threshold && !checkout.warned {
                checkout.warned = true;
                tracing::warn!(
                    "a database connection checked out at {} has been held for {:.1}s \
                     (DATABASE_POOL_LEAK_THRESHOLD {:.1}s); is it leaking?",
                    checkout.site,
                    held.as_secs_f64(),
                    threshold.as_secs_f64()
                );
            }
        }
    }

    /// The connections held now, longest first.
    pub(crate) fn holders(&self) -> Vec<Holder> {
        let Ok(live) = self.live.lock() else {
            return Vec::new();
        };
        let mut holders: Vec<Holder> = live
            .values()
            .map(|c| Holder {
                site: c.site.to_string(),
                held_for: c.since.elapsed(),
                backend_pid: c.backend_pid,
                state: None,
            })
            .collect();
        holders.sort_by_key(|h| std::cmp::Reverse(h.held_for));
        holders
    }
}
