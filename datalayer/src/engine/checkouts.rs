//! Who holds the pool's connections: the checkout site (`#[track_caller]`), since when, and the
//! PostgreSQL backend pid, for pool-timeout errors and leak warnings.
//!
//! Each connection records its own holder in its [`Health`], which the checkout reads anyway
//! (validation), so a checkout and a return each take an uncontended lock on a cache line they
//! already touch: no shared list, nothing on the checkout's path that a registry written on
//! every checkout (a mutex-guarded list per thread shard) would add.
//! Listing the holders walks the engine's list of connections, which only changes when a
//! connection is opened.

use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{MutexGuard, PoisonError};
use std::time::Duration;

use super::shared::{Health, Shared};
use crate::pool_state::Holder;

/// The holder's slot of `health`, locked (a poisoned lock is taken as it is: nothing panics
/// while holding it).
fn slot(health: &Health) -> MutexGuard<'_, Option<&'static Location<'static>>> {
    health.holder.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the connection of `health` is checked out from, if it is.
pub(crate) fn site_of(health: &Health) -> Option<&'static Location<'static>> {
    *slot(health)
}

/// Records that the connection of `health` is handed out from `site` at `since` (a
/// [`Shared::now`] value, after any wait for it: a leak warning is about holding a connection,
/// not waiting for one).
#[inline]
pub(crate) fn begin(health: &Health, site: &'static Location<'static>, since: u64) {
    health.leak_warned.store(false, Ordering::Relaxed);
    health.held_since.store(since, Ordering::Relaxed);
    *slot(health) = Some(site);
}

/// Records that the connection of `health` was returned after `held`, warning if it was held
/// past `threshold` unnoticed.
#[inline]
pub(crate) fn end(health: &Health, held: Duration, threshold: Option<Duration>) {
    let site = slot(health).take();
    if let (Some(site), Some(threshold)) = (site, threshold)
        && held > threshold
    {
        warn_leaked(health, site, held, threshold);
    }
}

/// The leak warning of [`end`], out of the return's way: unless a checkout's scan warned
/// already.
#[cold]
fn warn_leaked(
    health: &Health,
    site: &'static Location<'static>,
    held: Duration,
    threshold: Duration,
) {
    if !health.leak_warned.load(Ordering::Relaxed) {
        tracing::warn!(
            "a database connection checked out at {site} was held for {:.1}s \
             (DATABASE_POOL_LEAK_THRESHOLD {:.1}s)",
            held.as_secs_f64(),
            threshold.as_secs_f64()
        );
    }
}

/// The holder of one connection, if it is checked out: its site and for how long, at `now`.
fn holder_of(health: &Health, now: u64) -> Option<(&'static Location<'static>, Duration)> {
    let site = site_of(health)?;
    let since = health.held_since.load(Ordering::Relaxed);
    Some((site, Duration::from_nanos(now.saturating_sub(since))))
}

/// When [`warn_overdue`] last looked, per engine.
#[derive(Debug, Default)]
pub(crate) struct Scans {
    /// In [`Shared::now`] units.
    last: AtomicU64,
}

impl Scans {
    /// Warns once about each connection held past `threshold` and not yet returned. Called by
    /// every checkout, but looks at most twice per `threshold`: an overdue connection is
    /// reported by the first checkout at least half a threshold after the last look.
    pub(crate) fn warn_overdue(&self, shared: &Shared, now: u64, threshold: Duration) {
        let every = u64::try_from(threshold.as_nanos() / 2).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every
            || self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for health in shared.connections() {
            let Some((site, held)) = holder_of(&health, now) else {
                continue;
            };
            if held > threshold && !health.leak_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "a database connection checked out at {site} has been held for {:.1}s \
                     (DATABASE_POOL_LEAK_THRESHOLD {:.1}s); is it leaking?",
                    held.as_secs_f64(),
                    threshold.as_secs_f64()
                );
            }
        }
    }
}

/// The connections held now, longest first.
pub(crate) fn holders(shared: &Shared) -> Vec<Holder> {
    let now = shared.now();
    let mut holders: Vec<Holder> = shared
        .connections()
        .iter()
        .filter_map(|health| {
            let (site, held_for) = holder_of(health, now)?;
            Some(Holder {
                site: site.to_string(),
                held_for,
                backend_pid: health.backend_pid,
                state: None,
            })
        })
        .collect();
    holders.sort_by_key(|h| std::cmp::Reverse(h.held_for));
    holders
}
