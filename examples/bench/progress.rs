//! Progress on stderr while the benchmark runs: which case, which round, and about how long is
//! left: each case's runs still planned times the average wall time of that case's runs so far
//! (the average of all runs so far for a case not started yet). Runs of different cases differ
//! several-fold (an overload run starts a pool and a PgBouncer client, a SQLite column
//! alternates for a whole minute), so one average over all of them misjudged the end by
//! minutes.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One case's runs: planned, started, and the wall time of those that ended.
struct Case {
    name: &'static str,
    planned: usize,
    started: usize,
    spent: Duration,
}

struct Progress {
    cases: Vec<Case>,
    /// The case under way.
    current: Option<usize>,
    /// When the run under way started, if one is.
    run_began: Option<Instant>,
}

static PROGRESS: Mutex<Progress> = Mutex::new(Progress {
    cases: Vec::new(),
    current: None,
    run_began: None,
});

impl Progress {
    /// Charges the run under way, if any, to the current case.
    fn end_run(&mut self) {
        if let (Some(began), Some(case)) = (self.run_began.take(), self.current) {
            self.cases[case].spent += began.elapsed();
        }
    }

    /// How many of case `index`'s runs have ended (all started but the one under way).
    fn ended(&self, index: usize) -> u32 {
        let under_way = self.run_began.is_some() && self.current == Some(index);
        u32::try_from(self.cases[index].started - usize::from(under_way)).unwrap_or(u32::MAX)
    }

    /// The wall time the runs not started yet should take.
    fn left(&self) -> Option<Duration> {
        let ended = (0..self.cases.len()).map(|i| self.ended(i)).sum::<u32>();
        let spent = self.cases.iter().map(|case| case.spent).sum::<Duration>();
        let overall = spent.checked_div(ended)?;
        let left = self.cases.iter().enumerate().map(|(i, case)| {
            let each = case.spent.checked_div(self.ended(i)).unwrap_or(overall);
            let runs = case.planned.saturating_sub(case.started);
            each * u32::try_from(runs).unwrap_or(u32::MAX)
        });
        Some(left.sum())
    }
}

/// Adds the case `name`, of `runs` timed runs, to the plan.
pub(crate) fn plan(name: &'static str, runs: usize) {
    if let Ok(mut progress) = PROGRESS.lock() {
        progress.cases.push(Case {
            name,
            planned: runs,
            started: 0,
            spent: Duration::ZERO,
        });
    }
}

/// The case `name` starts now (its runs follow).
pub(crate) fn case(name: &str) {
    if let Ok(mut progress) = PROGRESS.lock() {
        progress.end_run();
        progress.current = progress.cases.iter().position(|case| case.name == name);
    }
}

/// Shows that the run `label` of the current case starts now.
pub(crate) fn run(label: &str) {
    let Ok(mut progress) = PROGRESS.lock() else {
        return;
    };
    progress.end_run();
    if let Some(case) = progress.current {
        progress.cases[case].started += 1;
    }
    progress.run_began = Some(Instant::now());
    let left = match progress.left() {
        None => String::from("estimating time left"),
        Some(left) => format!("about {} left", minutes(left)),
    };
    let started: usize = progress.cases.iter().map(|case| case.started).sum();
    let planned: usize = progress.cases.iter().map(|case| case.planned).sum();
    let line = format!("[{started}/{}] {label}; {left}", planned.max(started));
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
    if let Ok(mut progress) = PROGRESS.lock() {
        progress.end_run();
        progress.current = None;
    }
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

fn minutes(d: Duration) -> String {
    let seconds = d.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}
