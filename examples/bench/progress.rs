//! Progress on stderr while the benchmark runs: which case, which round, and about how long is
//! left (the runs still planned times the average wall time of a run so far).

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Progress {
    planned: usize,
    done: usize,
    began: Option<Instant>,
}

static PROGRESS: Mutex<Progress> = Mutex::new(Progress {
    planned: 0,
    done: 0,
    began: None,
});

/// Adds `runs` timed runs to the plan.
pub(crate) fn plan(runs: usize) {
    if let Ok(mut progress) = PROGRESS.lock() {
        progress.planned += runs;
    }
}

/// Shows that the run `label` starts now.
pub(crate) fn run(label: &str) {
    let Ok(mut progress) = PROGRESS.lock() else {
        return;
    };
    let began = *progress.began.get_or_insert_with(Instant::now);
    let left = match progress.done {
        0 => String::from("estimating time left"),
        done => {
            let each = began.elapsed() / u32::try_from(done).unwrap_or(u32::MAX);
            let runs = progress.planned.saturating_sub(done);
            format!(
                "about {} left",
                minutes(each * u32::try_from(runs).unwrap_or(0))
            )
        }
    };
    progress.done += 1;
    let line = format!(
        "[{}/{}] {label}; {left}",
        progress.done,
        progress.planned.max(progress.done)
    );
    // One line rewritten in place on a terminal; a line per run in a log.
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K{line}");
    } else {
        eprintln!("{line}");
    }
    let _ = std::io::stderr().flush();
}

/// Ends the progress line.
pub(crate) fn finish() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

fn minutes(d: Duration) -> String {
    let seconds = d.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}
