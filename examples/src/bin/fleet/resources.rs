//! Resource samples of a long run (`--sample-every`): each live worker's resident memory and
//! open file descriptors, read from `/proc`, and the verdict of a soak: neither may grow by more
//! than [`MAX_GROWTH`] from a worker's first sample at or after `--sample-from` to its last.
//!
//! Only a worker that was running at `--sample-from` (sampled at or before it) and sampled
//! again later is judged: one started later (after a kill) would be judged from its start-up;
//! one killed before has no baseline. A run in which no worker is judged measured nothing, and
//! fails.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::spawn::Slot;

/// The most a worker's memory or descriptors may grow over a soak: 10 %.
pub(crate) const MAX_GROWTH: f64 = 0.10;

/// One reading of one worker.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    proc: u64,
    /// Since the start of the run, in seconds.
    at_s: f64,
    /// `VmRSS` of `/proc/<pid>/status`.
    rss_kib: u64,
    /// Entries of `/proc/<pid>/fd`.
    fds: u64,
}

/// Takes the samples of a run, writes each to `resources.jsonl`, and judges them at the end.
pub(crate) struct Sampler {
    every: Duration,
    from: Duration,
    started: Instant,
    next: Instant,
    samples: Vec<Sample>,
    file: File,
}

impl Sampler {
    /// A sampler taking its first samples now, then every `every`, judging growth from the
    /// first sample at or after `from`; the samples go to `resources.jsonl` in `dir`.
    ///
    /// # Errors
    ///
    /// The file cannot be created.
    pub(crate) fn new(
        every: Duration,
        from: Duration,
        started: Instant,
        dir: &Path,
    ) -> anyhow::Result<Sampler> {
        let path = dir.join("resources.jsonl");
        let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Sampler {
            every,
            from,
            started,
            next: started,
            samples: Vec::new(),
            file,
        })
    }

    /// Samples every running worker if a sample is due.
    pub(crate) fn tick(&mut self, slots: &[Slot]) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        // From now, not from the due time: after a stall (the fleet held up by a failover) one
        // sample, not a burst.
        self.next = now + self.every;
        let at_s = now.duration_since(self.started).as_secs_f64();
        for slot in slots.iter().filter(|s| !s.done.is_finished()) {
            let Some(pid) = slot.pid else { continue };
            // A worker that exits meanwhile has no reading: it is not sampled this time.
            let Some((rss_kib, fds)) = read(pid) else {
                continue;
            };
            let sample = Sample {
                proc: slot.proc,
                at_s,
                rss_kib,
                fds,
            };
            if let Ok(line) = serde_json::to_string(&sample) {
                // A failed write loses the record, not the verdict, which is taken from memory.
                let _ = writeln!(self.file, "{line}");
            }
            self.samples.push(sample);
        }
    }

    /// Prints the verdict and the workers that grew; `false` when one grew too much, or no
    /// worker was sampled both at or after `--sample-from` and later.
    pub(crate) fn report(&self) -> bool {
        let from = self.from.as_secs_f64();
        let mut procs: Vec<u64> = self.samples.iter().map(|s| s.proc).collect();
        procs.sort_unstable();
        procs.dedup();
        let mut judged = Vec::new();
        let mut unjudged = 0;
        for proc in procs {
            let mine: Vec<&Sample> = self.samples.iter().filter(|s| s.proc == proc).collect();
            let running = mine.first().is_some_and(|s| s.at_s <= from);
            let base = mine.iter().find(|s| s.at_s >= from);
            match (running, base, mine.last()) {
                (true, Some(base), Some(last)) if last.at_s > base.at_s => {
                    judged.push((proc, **base, **last));
                }
                _ => unjudged += 1,
            }
        }
        let growth = |a: u64, b: u64| b as f64 / a.max(1) as f64 - 1.0;
        let pct = |g: f64| format!("{:+.1} %", g * 100.0);
        let every = humantime::format_duration(self.every);
        let from_h = humantime::format_duration(self.from);
        if judged.is_empty() {
            println!(
                "resources              FAILED: no worker was sampled at or after {from_h} and \
                 again later (samples every {every}; {} in all): the run measured no growth",
                self.samples.len()
            );
            return false;
        }
        let worst = |f: fn(&Sample) -> u64| {
            judged
                .iter()
                .map(|(p, b, l)| (growth(f(b), f(l)), *p, f(b), f(l)))
                .fold(None, |m: Option<(f64, u64, u64, u64)>, x| match m {
                    Some(m) if m.0 >= x.0 => Some(m),
                    _ => Some(x),
                })
                .expect("judged is not empty")
        };
        let (rss_g, rss_p, rss_b, rss_l) = worst(|s| s.rss_kib);
        let (fd_g, fd_p, fd_b, fd_l) = worst(|s| s.fds);
        let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
        let ok = rss_g <= MAX_GROWTH && fd_g <= MAX_GROWTH;
        let others = if unjudged > 0 {
            format!(" ({unjudged} more not running both at {from_h} and later: not judged)")
        } else {
            String::new()
        };
        println!(
            "resources              {} workers sampled every {every}, judged from {from_h} to \
             their last sample{others}: RSS grew at most {} (w{rss_p}: {} -> {}), open fds at \
             most {} (w{fd_p}: {fd_b} -> {fd_l}), limit {}: {}",
            judged.len(),
            pct(rss_g),
            mib(rss_b),
            mib(rss_l),
            pct(fd_g),
            pct(MAX_GROWTH),
            if ok { "ok" } else { "GREW" }
        );
        for (proc, b, l) in &judged {
            let (rg, fg) = (growth(b.rss_kib, l.rss_kib), growth(b.fds, l.fds));
            if rg > MAX_GROWTH || fg > MAX_GROWTH {
                println!(
                    "resources              w{proc} grew from {:.0} s to {:.0} s: RSS {} -> {} \
                     ({}), open fds {} -> {} ({})",
                    b.at_s,
                    l.at_s,
                    mib(b.rss_kib),
                    mib(l.rss_kib),
                    pct(rg),
                    b.fds,
                    l.fds,
                    pct(fg)
                );
            }
        }
        ok
    }
}

/// `(VmRSS in KiB, open fds)` of a live process.
fn read(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}
