//! Dropping a passed test's database off the test's thread.
//!
//! `DROP DATABASE ... WITH (FORCE)` waits for the server to remove the database's files and
//! end its sessions, which can take from tens of milliseconds to seconds; a test need not wait
//! for it. [`later`] queues the drop for one background thread, which drops queued databases
//! one at a time and ends when the queue is empty. When the process exits (an `atexit`
//! handler, which the test harness's `exit` runs), the handler waits for the drop under way
//! and drops whatever is still queued, so a passing run leaves no database behind. A process
//! killed before that leaves its queued databases, named `dlt_<test>_<pid>_<n>`.

use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Duration;

use diesel::PgConnection;

use super::spare::{atexit, drop_database};
use crate::engine::Engine;

type Drop = (Arc<Engine<PgConnection>>, String);

struct Queue {
    /// The databases still to drop, and whether a thread is dropping one now.
    state: Mutex<(Vec<Drop>, bool)>,
    idle: Condvar,
}

static QUEUE: Queue = Queue {
    state: Mutex::new((Vec::new(), false)),
    idle: Condvar::new(),
};

/// Drops database `name` on `admin`'s server in the background; at the latest when the
/// process exits.
pub(super) fn later(admin: &Arc<Engine<PgConnection>>, name: &str) {
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: `atexit` is the C library's; the handler is a plain `extern "C" fn` that
        // catches every panic.
        unsafe {
            atexit(finish_at_exit);
        }
    });
    let Ok(mut state) = QUEUE.state.lock() else {
        drop_database(admin, name);
        return;
    };
    state.0.push((Arc::clone(admin), name.to_string()));
    if state.1 {
        return; // the running thread takes it
    }
    state.1 = true;
    drop(state);
    let spawned = std::thread::Builder::new()
        .name("datalayer-test-drop".into())
        .spawn(work);
    if spawned.is_err() {
        work(); // no thread to be had: drop here, as before
    }
}

/// Drops queued databases until none is left.
fn work() {
    loop {
        let next = {
            let Ok(mut state) = QUEUE.state.lock() else {
                return;
            };
            match state.0.pop() {
                Some(next) => next,
                None => {
                    state.1 = false;
                    QUEUE.idle.notify_all();
                    return;
                }
            }
        };
        drop_database(&next.0, &next.1);
    }
}

/// Waits until every queued database is dropped (at most `limit`); true when none is left.
pub(super) fn settle(limit: Duration) -> bool {
    let Ok(state) = QUEUE.state.lock() else {
        return false;
    };
    QUEUE
        .idle
        .wait_timeout_while(state, limit, |state| state.1 || !state.0.is_empty())
        .is_ok_and(|(state, _)| !state.1 && state.0.is_empty())
}

/// Lets the background thread finish (at most 30 s), then drops what is left here.
extern "C" fn finish_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if settle(Duration::from_secs(30)) {
            return;
        }
        let left = QUEUE
            .state
            .lock()
            .map(|mut state| std::mem::take(&mut state.0))
            .unwrap_or_default();
        for (admin, name) in left {
            drop_database(&admin, &name);
        }
    });
}
