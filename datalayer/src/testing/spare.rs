//! The next test's database, cloned ahead of time.
//!
//! `CREATE DATABASE ... TEMPLATE` copies the whole template, system catalogs included, and
//! that copy is most of a per-test setup (`docs/testing.md` has the figures). So
//! when a test takes its database, the next one is cloned in the background under a spare
//! name, while the test runs; the next test renames it (a catalog update) instead of waiting
//! for a copy. At most one spare per template exists per process. Any failure to use a spare
//! falls back to cloning on the spot, so a spare is only ever a shortcut.
//!
//! The spare left at the end is dropped when the process exits (an `atexit` handler, which the
//! test harness's `exit` runs). A process killed before that leaves one behind; the next
//! process to use the same template drops spares of other processes that nobody is using.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Duration;

use diesel::PgConnection;
use diesel::connection::SimpleConnection;

use super::quote;
use crate::engine::Engine;
use crate::error::Error;

enum State {
    /// Being cloned by a background thread.
    Cloning,
    /// Ready under this name.
    Ready(String),
}

struct Spare {
    template: String,
    state: State,
    admin: Arc<Engine<PgConnection>>,
}

struct Spares {
    list: Mutex<(Vec<Spare>, bool)>,
    changed: Condvar,
}

static SPARES: Spares = Spares {
    list: Mutex::new((Vec::new(), false)),
    changed: Condvar::new(),
};

/// `dlt_spare_<template hash>_`: the prefix of every spare of `template`.
pub(super) fn prefix(template: &str) -> String {
    let hash = template.rsplit('_').next().unwrap_or(template);
    format!("dlt_spare_{hash}_")
}

/// Creates database `name` from `template`: renames this process's spare when one is ready,
/// else clones on the spot. Either way, starts cloning the next spare.
pub(super) fn create(
    admin: &Arc<Engine<PgConnection>>,
    template: &str,
    name: &str,
) -> Result<(), Error> {
    let spare = take(template);
    let renamed = spare.is_some_and(|spare| {
        admin.get().is_ok_and(|mut conn| {
            conn.batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote(&spare),
                quote(name)
            ))
            .is_ok()
        })
    });
    if !renamed {
        admin.get()?.batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote(name),
            quote(template)
        ))?;
    }
    prepare(admin, template);
    Ok(())
}

/// This process's spare of `template`, waiting for one being cloned: it started earlier, so
/// it is ready sooner than a clone started now.
fn take(template: &str) -> Option<String> {
    let mut list = SPARES.list.lock().ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let at = list.0.iter().position(|s| s.template == template)?;
        if let State::Ready(name) = &list.0[at].state {
            let name = name.clone();
            list.0.swap_remove(at);
            return Some(name);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        list = SPARES.changed.wait_timeout(list, left).ok()?.0;
    }
}

/// Starts cloning a spare of `template` unless one exists or is being made.
fn prepare(admin: &Arc<Engine<PgConnection>>, template: &str) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static AT_EXIT: Once = Once::new();
    let Ok(mut list) = SPARES.list.lock() else {
        return;
    };
    if list.1 || list.0.iter().any(|s| s.template == template) {
        return;
    }
    AT_EXIT.call_once(|| {
        // SAFETY: `atexit` is the C library's; the handler is a plain `extern "C" fn` that
        // catches every panic.
        unsafe {
            atexit(drop_spares_at_exit);
        }
    });
    list.0.push(Spare {
        template: template.to_string(),
        state: State::Cloning,
        admin: Arc::clone(admin),
    });
    let name = format!(
        "{}{}_{}",
        prefix(template),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let (admin, owned) = (Arc::clone(admin), template.to_string());
    let spawned = std::thread::Builder::new()
        .name("datalayer-test-spare".into())
        .spawn(move || {
            let cloned = admin.get().is_ok_and(|mut conn| {
                conn.batch_execute(&format!(
                    "CREATE DATABASE {} TEMPLATE {}",
                    quote(&name),
                    quote(&owned)
                ))
                .is_ok()
            });
            let Ok(mut list) = SPARES.list.lock() else {
                return;
            };
            let exiting = list.1;
            let at = list.0.iter().position(|s| s.template == owned);
            match (cloned, exiting, at) {
                (true, false, Some(at)) => list.0[at].state = State::Ready(name),
                (_, _, at) => {
                    if let Some(at) = at {
                        list.0.swap_remove(at);
                    }
                    if cloned {
                        drop_database(&admin, &name);
                    }
                }
            }
            SPARES.changed.notify_all();
        });
    if spawned.is_err() {
        list.0.retain(|s| s.template != template);
    }
}

/// Waits (at most 30 s) until no spare is being cloned.
#[cfg(feature = "__bench")]
pub(super) fn settle() {
    if let Ok(list) = SPARES.list.lock() {
        drop(idle(list, Duration::from_secs(30)));
    }
}

type List = std::sync::MutexGuard<'static, (Vec<Spare>, bool)>;

/// The list once no spare is being cloned, or `limit` has passed.
fn idle(mut list: List, limit: Duration) -> Option<List> {
    let deadline = std::time::Instant::now() + limit;
    while list.0.iter().any(|s| matches!(s.state, State::Cloning)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        list = SPARES.changed.wait_timeout(list, left).ok()?.0;
    }
    Some(list)
}

pub(super) fn drop_database(admin: &Engine<PgConnection>, name: &str) {
    if let Ok(mut conn) = admin.get() {
        let _ = conn.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(name)
        ));
    }
}

unsafe extern "C" {
    /// The C library's: `callback` runs when the process exits (the test harness's `exit`).
    pub(super) fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

/// Waits (at most 10 s) for clones under way, then drops every ready spare.
extern "C" fn drop_spares_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let Ok(mut list) = SPARES.list.lock() else {
            return;
        };
        list.1 = true;
        let Some(mut list) = idle(list, Duration::from_secs(10)) else {
            return;
        };
        for spare in list.0.drain(..) {
            if let State::Ready(name) = spare.state {
                drop_database(&spare.admin, &name);
            }
        }
    });
}
