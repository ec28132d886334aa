//! The checker behind `fleet check`: reads the histories of a run and checks the invariants of
//! the design (section 6) against them.
//!
//! A run is a directory holding `run.json` (its [`Meta`]), one `proc-N.jsonl` per worker process,
//! `nemesis.jsonl`, and `jobs.jsonl` (the job table's final state). The checker derives from the
//! events:
//!
//! - **grants**: `acquire` ok events, with the time the request was sent;
//! - **tenures**: one per (process, key, fence), from its first grant to the first of its
//!   release, its loss signal, the process's death, or its last event; its *deadline* at any
//!   moment is the send time of its last successful acquire or renew answered by then, plus the
//!   lease. The lock's own deadline is earlier by its safety margin, and the store's expiry is no
//!   earlier (the store started the lease after the request was sent), so the checker's deadline
//!   never blames a correct lock and never excuses an overlap in the store.
//!
//! | invariant | check |
//! |---|---|
//! | I1 | accepted writes of a key, one sent after another was answered, have increasing fences; two processes never write with one fence; a write whose fence is below one the table already accepted is rejected |
//! | I2 | no job completed twice (history and table); every accepted completion is in the final table |
//! | I3 | no two processes granted one fence of a key; a grant asked for after another was answered has a fence at least as large |
//! | I4 | no renew or release succeeds when sent after the key was granted with a larger fence |
//! | I5 | no renewal is sent after the deadline (+ half a lease of slack); the loss signal fires by the deadline (with a tolerance of max(lease/2, 1 s) for the logging task; excused when the process was stopped over its deadline); no protected work starts after the deadline or the loss signal |
//! | I6 | tenures of different processes, each up to its deadline, do not overlap (skipped for a tenure whose process was paused longer than half the lease) |
//! | I7 | on a queued store, no process is granted a key (after queuing, or at once when it asks: no barging) while an earlier waiter's entry is certainly live and older: its first `Waiting` answer arrived before the other's first enqueue was sent, it was refreshed within its patience, and it was neither granted (with a smaller fence), nor left, killed, paused or wiped by a store restart (`queue.rs` says how each side is bounded) |
//! | I8 | after a kill, a key the dead process held is granted to another within lease + backoff cap + 1 s (counted from the end of a store restart in that time, or of a store pause or a failover under way in it, and on SQLite from the end of another process's pause: a stopped process can hold the database's write lock) when another, not cut off the store then, asked for it after the lease ran out; on a queued store a lease more for each waiter of the key killed before the takeover, since the key may be granted to it unheard and wait out that lease |
//! | I9 | a process that exits normally holds no key (a grant reported by `wait_for_grant` that the lock did not take is not held once the lock's next enqueue answers another fence or none) |
//!
//! [`load`] reads the runs; [`check`] indexes a run's events once (`index.rs`: the grants,
//! tenures, writes and nemesis events, with the tenure and pause look-ups) and then checks each
//! invariant in a function of its own (`invariants.rs`).

mod index;
mod invariants;
mod load;
mod queue;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::Event;
use crate::jobs::JobRow;
use crate::stats::quantile;
use index::RunIndex;
pub use load::load;

/// What the checker needs to know about a run, saved as `run.json` next to its histories.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// The run's name on the result line, e.g. `sqlite/kill+pause`.
    pub name: String,
    /// The lease the store grants (after its granularity), in nanoseconds.
    pub lease_ns: u64,
    /// The longest backoff between a waiter's attempts, in nanoseconds.
    pub backoff_cap_ns: u64,
    /// The seed of the nemesis schedule.
    #[serde(default)]
    pub seed: u64,
    /// Whether the workers waited in the store's queue of waiters (grants go to the oldest live
    /// one); `None` in a `run.json` older than this field, whose run name says it instead
    /// (`<store>-queued/…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<bool>,
}

impl Meta {
    /// Whether the run's store queued its waiters: the field, or for an older `run.json` the
    /// run's name.
    pub fn queued(&self) -> bool {
        self.queued
            .unwrap_or_else(|| self.name.contains("-queued/"))
    }
}

/// One run's histories.
#[derive(Debug, Clone)]
pub struct Run {
    /// Its metadata.
    pub meta: Meta,
    /// Every event of every process, in any order.
    pub events: Vec<Event>,
    /// The job table's final state, if it was saved.
    pub table: Option<Vec<JobRow>>,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `I1` … `I9`.
    pub invariant: &'static str,
    /// What happened, with keys, processes, fences and times (seconds into the run).
    pub detail: String,
}

/// The counts of a checked run and its violations.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The run's name.
    pub name: String,
    /// Grants (acquire ok events).
    pub acquisitions: u64,
    /// Pairs of tenures of a key, of different processes, that overlap as the workers saw them
    /// (up to release or loss signal): the cases fencing is for.
    pub overlaps: u64,
    /// Writes whose fence was below one the table had already accepted.
    pub stale_writes: u64,
    /// Of those, rejected.
    pub stale_rejected: u64,
    /// Accepted writes out of fence order (I1 violations).
    pub out_of_order: u64,
    /// Accepted completions missing from the final table.
    pub lost_updates: u64,
    /// Jobs completed more than once.
    pub duplicates: u64,
    /// Loss signals.
    pub losses: u64,
    /// Renewals and releases sent after a larger fence was granted.
    pub stale_ownership: u64,
    /// Of those, refused.
    pub stale_ownership_refused: u64,
    /// Grants to processes that had queued for the key (each checked for I7).
    pub queue_grants: u64,
    /// Workers killed.
    pub kills: u64,
    /// Takeover times after kills, in nanoseconds.
    pub takeovers_ns: Vec<u64>,
    /// Workers paused.
    pub pauses: u64,
    /// Of those, longer than the lease.
    pub long_pauses: u64,
    /// Store restarts.
    pub restarts: u64,
    /// Times the store server was stopped.
    pub store_pauses: u64,
    /// Workers cut off the store.
    pub partitions: u64,
    /// Failovers of the store to its replica.
    pub failovers: u64,
    /// Workers' wall clocks stepped an hour off (libfaketime).
    pub clock_steps: u64,
    /// Workers whose store replies were delayed.
    pub slowed: u64,
    /// Times the store cluster's leader was cut off its peers and clients.
    pub leader_partitions: u64,
    /// Store calls that failed reporting a fence regression (the store saw a fence go back):
    /// the store's own alarm, counted, not a violation.
    pub regressions: u64,
    /// Tenure pairs checked for I6, and skipped because of a pause.
    pub i6_checked: u64,
    /// Tenure pairs skipped for I6.
    pub i6_skipped: u64,
    /// What went wrong.
    pub violations: Vec<Violation>,
}

impl Report {
    /// `true` when no invariant was violated.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The Jepsen-style result line.
    pub fn line(&self) -> String {
        let takeover = self.takeover_p99();
        format!(
            "{}: {} acquisitions, {} overlaps, {}/{} stale writes rejected, {} accepted out of \
             order, {} lost updates, {} duplicate completions, {} leases lost, {}/{} stale \
             renews/releases refused, {} queue grants, {} kills (takeover p99 {}), {} pauses ({} \
             longer than the lease), {} store restarts, {} store pauses, {} partitions, {} \
             failovers ({} fence regressions reported), {} clock steps, {} slowed, {} leader \
             partitions: {}",
            self.name,
            self.acquisitions,
            self.overlaps,
            self.stale_rejected,
            self.stale_writes,
            self.out_of_order,
            self.lost_updates,
            self.duplicates,
            self.losses,
            self.stale_ownership_refused,
            self.stale_ownership,
            self.queue_grants,
            self.kills,
            takeover,
            self.pauses,
            self.long_pauses,
            self.restarts,
            self.store_pauses,
            self.partitions,
            self.failovers,
            self.regressions,
            self.clock_steps,
            self.slowed,
            self.leader_partitions,
            if self.ok() {
                "ok".to_owned()
            } else {
                format!("{} VIOLATIONS", self.violations.len())
            }
        )
    }

    /// The 99th percentile of the takeover times, in seconds, or `-` without kills.
    fn takeover_p99(&self) -> String {
        let mut t = self.takeovers_ns.clone();
        quantile(&mut t, 0.99).map_or("-".to_owned(), secs)
    }

    /// The header of [`markdown_row`](Self::markdown_row)'s table.
    pub const MARKDOWN_HEADER: &'static str = "| run | acquisitions | overlaps | stale writes \
        rejected | accepted out of order | lost updates | leases lost | faults | takeover p99 | \
        verdict |\n|---|---|---|---|---|---|---|---|---|---|";

    /// The report as a row of a Markdown table (header: [`MARKDOWN_HEADER`](Self::MARKDOWN_HEADER)).
    pub fn markdown_row(&self) -> String {
        let takeover = self.takeover_p99();
        let faults: Vec<String> = [
            (self.kills, "kills"),
            (self.pauses, "pauses"),
            (self.restarts, "store restarts"),
            (self.store_pauses, "store pauses"),
            (self.partitions, "partitions"),
            (self.failovers, "failovers"),
            (self.clock_steps, "clock steps"),
            (self.slowed, "slowed"),
            (self.leader_partitions, "leader partitions"),
            (self.regressions, "fence regressions reported"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        format!(
            "| {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} |",
            self.name,
            self.acquisitions,
            self.overlaps,
            self.stale_rejected,
            self.stale_writes,
            self.out_of_order,
            self.lost_updates,
            self.losses,
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(", ")
            },
            takeover,
            if self.ok() {
                "ok".to_owned()
            } else {
                format!(
                    "**{} violations** ({})",
                    self.violations.len(),
                    self.invariants().join(", ")
                )
            }
        )
    }

    /// The `VIOLATION Ix: …` lines, at most `per_invariant` of each invariant plus a count of
    /// the rest.
    pub fn violation_lines(&self, per_invariant: usize) -> Vec<String> {
        let mut by: BTreeMap<&str, Vec<&Violation>> = BTreeMap::new();
        for v in &self.violations {
            by.entry(v.invariant).or_default().push(v);
        }
        let mut out = Vec::new();
        for (inv, vs) in by {
            for v in vs.iter().take(per_invariant) {
                out.push(format!("VIOLATION {inv}: {}", v.detail));
            }
            if vs.len() > per_invariant {
                out.push(format!(
                    "VIOLATION {inv}: … and {} more",
                    vs.len() - per_invariant
                ));
            }
        }
        out
    }

    /// The invariants violated, each once.
    pub fn invariants(&self) -> Vec<&'static str> {
        let set: std::collections::BTreeSet<_> =
            self.violations.iter().map(|v| v.invariant).collect();
        set.into_iter().collect()
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        self.violations.push(Violation { invariant, detail });
    }
}

fn secs(ns: u64) -> String {
    format!("{:.2} s", ns as f64 / 1e9)
}

/// Checks one run: indexes its events once, then checks each invariant in turn.
pub fn check(run: &Run) -> Report {
    let ix = RunIndex::new(run);
    let mut r = Report {
        name: run.meta.name.clone(),
        acquisitions: ix.acquisitions(),
        losses: ix.losts.len() as u64,
        kills: ix.kills.len() as u64,
        pauses: ix.pauses.len() as u64,
        long_pauses: ix.long_pauses(),
        restarts: ix.restarts.len() as u64,
        store_pauses: ix.store_pauses.len() as u64,
        partitions: ix.partitions.len() as u64,
        failovers: ix.failovers.len() as u64,
        clock_steps: ix.clock_steps,
        slowed: ix.slowed,
        leader_partitions: ix.leader_partitions.len() as u64,
        regressions: ix.regressions,
        queue_grants: ix.queue.grants.iter().filter(|g| !g.newcomer).count() as u64,
        ..Report::default()
    };
    invariants::i3_grants(&ix, &mut r);
    invariants::i1_fenced_writes(&ix, &mut r);
    invariants::i2_completions(&ix, &mut r);
    invariants::i4_ownership(&ix, &mut r);
    invariants::i5_self_fencing(&ix, &mut r);
    invariants::i6_exclusion(&ix, &mut r);
    invariants::i7_queue_order(&ix, &mut r);
    invariants::i8_takeover(&ix, &mut r);
    invariants::i9_nothing_held_at_exit(&ix, &mut r);
    r
}

#[cfg(test)]
mod tests;
