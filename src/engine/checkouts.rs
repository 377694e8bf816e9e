//! Who holds the pool's connections: the checkout site (`#[track_caller]`), since when, and the
//! PostgreSQL backend pid, for pool-timeout errors and leak warnings.

use std::fmt;

use crate::pool_state::Holder;
use std::panic::Location;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Checkout {
    site: &'static Location<'static>,
    since: Instant,
    backend_pid: Option<i32>,
    warned: bool,
}

/// How many shards the registry has; threads are spread over them round-robin.
const SHARDS: usize = 16;

/// One shard: its own lock and id counter, on its own cache lines, so that threads on
/// different shards never touch the same memory (one shared map cost 10 % of the SQLite point
/// reads at 2 threads).
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<ShardState>);

/// A shard's checkouts: a few at most per thread, so a plain list (no hashing).
#[derive(Default)]
struct ShardState {
    next: u64,
    live: Vec<(u64, Checkout)>,
}

/// The live checkouts of one engine, sharded by thread.
pub(crate) struct Checkouts {
    shards: [Shard; SHARDS],
    born: Instant,
    /// When [`Checkouts::warn_overdue`] last looked, in nanoseconds since `born`.
    last_scan: AtomicU64,
}

impl Default for Checkouts {
    fn default() -> Checkouts {
        Checkouts {
            shards: std::array::from_fn(|_| Shard::default()),
            born: Instant::now(),
            last_scan: AtomicU64::new(0),
        }
    }
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, the same for every engine.
    static MY_SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

impl fmt::Debug for Checkouts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count: usize = self
            .shards
            .iter()
            .map(|shard| shard.0.lock().map(|s| s.live.len()).unwrap_or(0))
            .sum();
        f.debug_struct("Checkouts").field("live", &count).finish()
    }
}

impl Checkouts {
    /// Records a connection handed out at `since` (after any wait for it: a leak warning is
    /// about holding a connection, not waiting for one); the id says which shard holds it.
    pub(crate) fn register(
        &self,
        site: &'static Location<'static>,
        backend_pid: Option<i32>,
        since: Instant,
    ) -> u64 {
        let shard = MY_SHARD.try_with(|shard| *shard).unwrap_or(0);
        let Ok(mut state) = self.shards[shard].0.lock() else {
            return u64::MAX;
        };
        let id = state.next * SHARDS as u64 + shard as u64;
        state.next += 1;
        state.live.push((
            id,
            Checkout {
                site,
                since,
                backend_pid,
                warned: false,
            },
        ));
        id
    }

    fn shard_of(&self, id: u64) -> &Mutex<ShardState> {
        &self.shards[(id % SHARDS as u64) as usize].0
    }

    /// Forgets a returned checkout, warning if it was held past `threshold` unnoticed.
    pub(crate) fn release(&self, id: u64, threshold: Option<Duration>) {
        let removed = self.shard_of(id).lock().ok().and_then(|mut s| {
            let at = s.live.iter().position(|(live, _)| *live == id)?;
            Some(s.live.swap_remove(at).1)
        });
        let (Some(checkout), Some(threshold)) = (removed, threshold) else {
            return;
        };
        let held = checkout.since.elapsed();
        if held > threshold && !checkout.warned {
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
    /// Called by every checkout, but looks at most twice per `threshold`: an overdue
    /// connection is reported by the first checkout at least half a threshold after the last
    /// look.
    pub(crate) fn warn_overdue(&self, threshold: Duration) {
        let now = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let every = u64::try_from(threshold.as_nanos() / 2).unwrap_or(u64::MAX);
        let last = self.last_scan.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every
            || self
                .last_scan
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for shard in &self.shards {
            let Ok(mut state) = shard.0.lock() else {
                continue;
            };
            for (_, checkout) in &mut state.live {
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
    }

    /// The connections held now, longest first.
    pub(crate) fn holders(&self) -> Vec<Holder> {
        let mut holders: Vec<Holder> = Vec::new();
        for shard in &self.shards {
            let Ok(state) = shard.0.lock() else {
                continue;
            };
            holders.extend(state.live.iter().map(|(_, c)| Holder {
                site: c.site.to_string(),
                held_for: c.since.elapsed(),
                backend_pid: c.backend_pid,
                state: None,
            }));
        }
        holders.sort_by_key(|h| std::cmp::Reverse(h.held_for));
        holders
    }
}
