//! The fleet's report: what every worker process said as it went, set beside the job table's
//! totals; any disagreement between the two is a violation.

use std::time::Duration;

use anyhow::Context;
use lease_examples::jobs::Totals;
use lease_examples::stats::quantile;

use crate::spawn::Slot;
use crate::tally::Counts;

/// The faults the nemesis injected.
#[derive(Debug, Default)]
pub(crate) struct Injected {
    pub(crate) kills: u64,
    pub(crate) pauses: u64,
    pub(crate) restarts: u64,
    pub(crate) slowed: u64,
    pub(crate) store_pauses: u64,
    pub(crate) partitions: u64,
    pub(crate) failovers: u64,
    pub(crate) clock_steps: u64,
    pub(crate) leader_partitions: u64,
}

/// The worker processes' tallies, summed, and how the processes ended.
#[derive(Default)]
pub(crate) struct Ended {
    all: Counts,
    /// Each process's proc id, its completed jobs, and whether it was killed.
    per: Vec<(u64, u64, bool)>,
    procs: u64,
    clean: u64,
    n_killed: u64,
    failed_workers: u64,
    disagreeing: u64,
}

impl Ended {
    /// Waits for every worker process, those still running (`slots`) and those the nemesis
    /// killed, and reads each one's tallies from its stdout, a killed worker's up to its last
    /// line: the counts cover the workers that were killed as well as those that exited.
    pub(crate) async fn collect(slots: Vec<Slot>, killed: Vec<Slot>) -> anyhow::Result<Ended> {
        let mut e = Ended::default();
        let ended = slots
            .into_iter()
            .map(|s| (s, false))
            .chain(killed.into_iter().map(|s| (s, true)));
        for (slot, was_killed) in ended {
            let out = slot.done.await?.context("wait for a worker")?;
            let (counts, report) = Counts::parse(&out.stdout);
            match report {
                Some(r) if out.status.success() => {
                    e.clean += 1;
                    if !counts.agrees_with(&r) {
                        e.disagreeing += 1;
                        eprintln!(
                            "worker {}: its final report disagrees with its tallies",
                            slot.proc
                        );
                    }
                }
                _ if was_killed => e.n_killed += 1,
                _ => {
                    e.failed_workers += 1;
                    eprintln!("worker {} failed: {}", slot.proc, out.status);
                }
            }
            e.procs += 1;
            e.per.push((slot.proc, counts.completed, was_killed));
            e.all.merge(counts);
        }
        e.per.sort_unstable();
        Ok(e)
    }
}

/// Prints the report of a run that took `elapsed` over a table that ended with `totals`, with
/// the nemesis's faults and seed when it ran; `false` when the report shows a violation.
pub(crate) fn print(
    ended: Ended,
    totals: &Totals,
    elapsed: Duration,
    nemesis: Option<(&Injected, u64)>,
) -> bool {
    let Ended {
        mut all,
        per,
        procs,
        clean,
        n_killed,
        failed_workers,
        disagreeing,
    } = ended;
    let mut lat = std::mem::take(&mut all.acquire_us);
    let (p50, p99) = (quantile(&mut lat, 0.5), quantile(&mut lat, 0.99));
    let fmt_us = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} µs"));
    let secs = elapsed.as_secs_f64();
    println!(
        "jobs done              {} of {} in {secs:.1} s: {:.0} jobs/s (job table: jobs with an \
         accepted completion)",
        totals.completed,
        totals.jobs,
        totals.completed as f64 / secs.max(1e-3)
    );
    println!(
        "duplicate completions  {} (job table: accepted completions beyond a job's first)",
        totals.duplicates
    );
    let mut ended = vec![format!("{clean} exited cleanly")];
    if n_killed > 0 {
        ended.push(format!("{n_killed} killed"));
    }
    if failed_workers > 0 {
        ended.push(format!("{failed_workers} failed"));
    }
    println!(
        "leases granted         {} (reported by the {procs} worker processes as they went: {}), \
         of which",
        all.granted,
        ended.join(", ")
    );
    println!(
        "  job completed        {} (the table accepted the fenced completion)",
        all.completed
    );
    println!(
        "  found done           {} (the claim found the job completed already)",
        all.found_done
    );
    println!(
        "  stale, rejected      {} (the table refused the claim or the completion: a newer fence \
         had claimed the job)",
        all.stale
    );
    println!(
        "  gave up              {} (the lease was lost before the write: nothing written)",
        all.gave_up
    );
    // The table's accepted completions: those the workers reported, plus at most one per lease
    // cut short (its worker was killed after the write, before it could say so).
    let accepted = totals.completed + totals.duplicates;
    let cut = all.cut_short();
    let unreported = accepted.checked_sub(all.completed);
    if cut > 0 || n_killed > 0 {
        let note = match unreported {
            Some(n) if n > 0 => format!("; {n} of them after the table accepted its completion"),
            _ => String::new(),
        };
        println!(
            "  cut short            {cut} (its worker died holding the lease, before it reported \
             an outcome{note})"
        );
    }
    println!(
        "busy                   {} (attempts that found the job's key held by another worker)",
        all.busy
    );
    if all.errors > 0 {
        println!(
            "errors                 {} (attempts that failed with a retryable error)",
            all.errors
        );
    }
    println!(
        "lease losses           {} (granted leases whose loss signal fired)",
        all.lost
    );
    println!(
        "acquire latency        p50 {}, p99 {} (lock call to guard, over the {} grants)",
        fmt_us(p50),
        fmt_us(p99),
        all.granted
    );
    let per: Vec<String> = per
        .iter()
        .map(|(proc, n, killed)| format!("w{proc}={n}{}", if *killed { "*" } else { "" }))
        .collect();
    let per_note = if n_killed > 0 {
        "jobs completed by each process; * killed"
    } else {
        "jobs completed by each process"
    };
    println!("per worker             {} ({per_note})", per.join(" "));
    if let Some((injected, seed)) = nemesis {
        let Injected {
            kills,
            pauses,
            restarts,
            slowed,
            store_pauses,
            partitions,
            failovers,
            clock_steps,
            leader_partitions,
        } = injected;
        println!(
            "nemesis                {kills} kills, {pauses} pauses, {restarts} store restarts, \
             {slowed} slowed workers, {store_pauses} store pauses, {partitions} partitioned \
             workers, {failovers} failovers, {clock_steps} clock steps, {leader_partitions} \
             leader partitions (seed {seed})"
        );
    }
    let miscount = unreported.is_none_or(|n| n > cut);
    if totals.duplicates > 0 || miscount || failed_workers > 0 || disagreeing > 0 {
        println!(
            "result                 FAILED: {} duplicate completions, {accepted} completions in \
             the table for {} reported by the workers ({cut} leases cut short), \
             {failed_workers} failed workers, {disagreeing} workers whose report disagrees with \
             their tallies",
            totals.duplicates, all.completed
        );
        false
    } else {
        println!("result                 ok, 0 violations");
        true
    }
}
