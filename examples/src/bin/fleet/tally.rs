//! What a worker tells the fleet as it goes ([`Tally`], one JSON line each on its stdout), and
//! the fleet's sums of it ([`Counts`]).

use lease_examples::stats::WorkerReport;
use serde::{Deserialize, Serialize};

/// What a worker tells the fleet as it goes: one JSON line on its stdout per event, written at
/// once (stdout is line-buffered), so the fleet keeps a killed worker's counts up to its last
/// line. Each granted lease gets exactly one outcome ([`Tally::Completed`], [`Tally::FoundDone`],
/// [`Tally::Stale`] or [`Tally::GaveUp`]) unless its worker dies first. A worker that ends
/// normally also prints its [`WorkerReport`], which must agree with its tallies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Tally {
    /// A lease was granted, `us` microseconds after the lock call.
    Granted { us: u64 },
    /// The job's key was held by another worker: no lease.
    Busy,
    /// The lock call failed with a retryable error: no lease.
    Error,
    /// Outcome: the job table accepted the fenced completion.
    Completed,
    /// Outcome: the claim found the job completed already.
    FoundDone,
    /// Outcome: the table rejected the claim or the completion, a newer fence had claimed the job.
    Stale,
    /// Outcome: the lease was lost, or no longer held right before the write: nothing written.
    GaveUp,
    /// The lease's loss signal fired (besides its outcome).
    Lost,
}

/// Counts `t` in the worker's report and tells the fleet at once (see [`Tally`]).
pub(crate) fn tally(report: &mut WorkerReport, t: Tally) {
    match t {
        Tally::Granted { us } => {
            report.acquisitions += 1;
            report.acquire_us.push(us);
        }
        Tally::Busy => report.busy += 1,
        Tally::Completed => report.completed += 1,
        Tally::FoundDone => report.already_done += 1,
        Tally::Stale => report.stale_rejected += 1,
        Tally::Lost => report.losses += 1,
        Tally::Error | Tally::GaveUp => {}
    }
    if let Ok(line) = serde_json::to_string(&t) {
        println!("{line}");
    }
}

/// The tallies of one worker process, or summed over several.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) granted: u64,
    pub(crate) busy: u64,
    pub(crate) errors: u64,
    pub(crate) completed: u64,
    pub(crate) found_done: u64,
    pub(crate) stale: u64,
    pub(crate) gave_up: u64,
    pub(crate) lost: u64,
    pub(crate) acquire_us: Vec<u64>,
}

impl Counts {
    /// The tallies in a worker's stdout, and its final report if it printed one.
    pub(crate) fn parse(stdout: &[u8]) -> (Counts, Option<WorkerReport>) {
        let mut counts = Counts::default();
        let mut report = None;
        for line in stdout.split(|&b| b == b'\n') {
            if let Ok(t) = serde_json::from_slice::<Tally>(line) {
                counts.add(t);
            } else if let Ok(r) = serde_json::from_slice::<WorkerReport>(line) {
                report = Some(r);
            }
        }
        (counts, report)
    }

    pub(crate) fn add(&mut self, t: Tally) {
        match t {
            Tally::Granted { us } => {
                self.granted += 1;
                self.acquire_us.push(us);
            }
            Tally::Busy => self.busy += 1,
            Tally::Error => self.errors += 1,
            Tally::Completed => self.completed += 1,
            Tally::FoundDone => self.found_done += 1,
            Tally::Stale => self.stale += 1,
            Tally::GaveUp => self.gave_up += 1,
            Tally::Lost => self.lost += 1,
        }
    }

    /// Granted leases that reached an outcome.
    pub(crate) fn ended(&self) -> u64 {
        self.completed + self.found_done + self.stale + self.gave_up
    }

    /// Granted leases without an outcome: their worker died holding them.
    pub(crate) fn cut_short(&self) -> u64 {
        self.granted.saturating_sub(self.ended())
    }

    pub(crate) fn merge(&mut self, other: Counts) {
        self.granted += other.granted;
        self.busy += other.busy;
        self.errors += other.errors;
        self.completed += other.completed;
        self.found_done += other.found_done;
        self.stale += other.stale;
        self.gave_up += other.gave_up;
        self.lost += other.lost;
        self.acquire_us.extend(other.acquire_us);
    }

    /// Whether a cleanly exited worker's final report says what its tallies say, and each of
    /// its leases had exactly one outcome.
    pub(crate) fn agrees_with(&self, r: &WorkerReport) -> bool {
        self.granted == self.ended()
            && (r.acquisitions, r.busy, r.completed, r.already_done)
                == (self.granted, self.busy, self.completed, self.found_done)
            && (r.stale_rejected, r.losses) == (self.stale, self.lost)
            && r.acquire_us == self.acquire_us
    }
}
