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
//! | I8 | after a kill, a key the dead process held is granted to another within lease + backoff cap + 1 s (counted from the end of a store restart in that time, and on SQLite from the end of another process's pause: a stopped process can hold the database's write lock) when another asked for it after the lease ran out |
//! | I9 | a process that exits normally holds no key |

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::history::{Event, Kind, Op, read_file};
use crate::jobs::JobRow;
use crate::stats::quantile;

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
        let mut t = self.takeovers_ns.clone();
        let takeover = quantile(&mut t, 0.99).map_or("-".to_owned(), secs);
        format!(
            "{}: {} acquisitions, {} overlaps, {}/{} stale writes rejected, {} accepted out of \
             order, {} lost updates, {} duplicate completions, {} leases lost, {}/{} stale \
             renews/releases refused, {} kills (takeover p99 {}), {} pauses ({} longer than the \
             lease), {} store restarts: {}",
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
            self.kills,
            takeover,
            self.pauses,
            self.long_pauses,
            self.restarts,
            if self.ok() {
                "ok".to_owned()
            } else {
                format!("{} VIOLATIONS", self.violations.len())
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
}

fn secs(ns: u64) -> String {
    format!("{:.2} s", ns as f64 / 1e9)
}

/// Loads the runs named on the command line: a run directory (with `run.json`), a directory of
/// run directories, or history files of one run (its `run.json` is looked for beside them).
///
/// # Errors
///
/// A path that is none of these, or a file that cannot be read.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            if p.join("run.json").is_file() {
                runs.push(load_dir(p)?);
            } else {
                let mut subs: Vec<PathBuf> = std::fs::read_dir(p)
                    .with_context(|| format!("read {}", p.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|s| s.join("run.json").is_file())
                    .collect();
                if subs.is_empty() {
                    anyhow::bail!(
                        "{} has no run.json and no run directories: not a fleet history",
                        p.display()
                    );
                }
                subs.sort();
                for s in subs {
                    runs.push(load_dir(&s)?);
                }
            }
        } else if p.is_file() {
            // The job table's dump is read through its run, not as events.
            if p.file_name()
                .is_some_and(|n| n != "jobs.jsonl" && n != "run.json")
            {
                files.push(p.clone());
            }
        } else {
            anyhow::bail!("{}: no such file or directory", p.display());
        }
    }
    if !files.is_empty() {
        let dir = files[0].parent().unwrap_or(Path::new("."));
        let meta = read_meta(&dir.join("run.json")).with_context(|| {
            format!(
                "history files need the run.json of their run beside them ({})",
                dir.display()
            )
        })?;
        let mut events = Vec::new();
        for f in &files {
            events.extend(read_file(f)?);
        }
        runs.push(Run {
            meta,
            events,
            table: read_table(&dir.join("jobs.jsonl"))?,
        });
    }
    Ok(runs)
}

fn read_meta(path: &Path) -> anyhow::Result<Meta> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a run.json", path.display()))
}

fn read_table(path: &Path) -> anyhow::Result<Option<Vec<JobRow>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let rows = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect::<anyhow::Result<Vec<JobRow>>>()?;
    Ok(Some(rows))
}

fn load_dir(dir: &Path) -> anyhow::Result<Run> {
    let meta = read_meta(&dir.join("run.json"))?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".jsonl") && n != "jobs.jsonl")
        })
        .collect();
    names.sort();
    let mut events = Vec::new();
    for f in &names {
        events.extend(read_file(f)?);
    }
    Ok(Run {
        meta,
        events,
        table: read_table(&dir.join("jobs.jsonl"))?,
    })
}

/// A grant: an acquire answered with a fence.
#[derive(Debug, Clone)]
struct Grant {
    proc: u64,
    fence: u64,
    invoke: u64,
    ok: u64,
}

#[derive(Debug, Clone)]
struct Tenure {
    proc: u64,
    key: String,
    fence: u64,
    start: u64,
    /// (sent, answered) of every successful acquire and renew.
    extensions: Vec<(u64, u64)>,
    /// Up to release, loss signal, death or the process's last event.
    end: u64,
    lost: Option<u64>,
    released: bool,
}

impl Tenure {
    /// The deadline as known at `t`: the send time of the last extension answered by `t`, plus
    /// the lease.
    fn deadline_at(&self, t: u64, lease: u64) -> u64 {
        self.extensions
            .iter()
            .filter(|(_, ok)| *ok <= t)
            .map(|(sent, _)| sent + lease)
            .max()
            .unwrap_or(self.start + lease)
    }

    /// The end of the tenure as the lock may believe it: no later than its deadline.
    fn believed_end(&self, lease: u64) -> u64 {
        self.end.min(self.deadline_at(self.end, lease))
    }
}

#[derive(Debug, Clone)]
struct Write {
    proc: u64,
    fence: u64,
    value: String,
    invoke: u64,
    done: u64,
    accepted: Option<bool>,
}

/// Checks one run.
pub fn check(run: &Run) -> Report {
    let lease = run.meta.lease_ns;
    let mut r = Report {
        name: run.meta.name.clone(),
        ..Report::default()
    };
    let mut events = run.events.clone();
    events.sort_by_key(|e| e.t_ns);
    let t0 = events.first().map_or(0, |e| e.t_ns);
    let at = |t: u64| format!("+{:.3} s", t.saturating_sub(t0) as f64 / 1e9);
    let violate = |r: &mut Report, invariant: &'static str, detail: String| {
        r.violations.push(Violation { invariant, detail });
    };

    // Nemesis events.
    let mut kills: Vec<(u64, u64)> = Vec::new();
    let mut pauses: Vec<(u64, u64, u64)> = Vec::new(); // proc, from, to
    let mut open_pauses: HashMap<u64, (u64, u64)> = HashMap::new(); // proc -> (from, planned)
    let mut restarts: Vec<u64> = Vec::new();
    for e in &events {
        match e.op {
            Op::Kill => kills.push((e.proc, e.t_ns)),
            Op::Pause => {
                open_pauses.insert(e.proc, (e.t_ns, e.dur_ns.unwrap_or(0)));
            }
            Op::Resume => {
                if let Some((from, _)) = open_pauses.remove(&e.proc) {
                    pauses.push((e.proc, from, e.t_ns));
                }
            }
            Op::Restart if e.kind != Kind::Invoke => {
                r.restarts += 1;
                restarts.push(e.t_ns);
            }
            _ => {}
        }
    }
    for (proc, (from, planned)) in open_pauses {
        pauses.push((proc, from, from + planned.max(1)));
    }
    r.kills = kills.len() as u64;
    r.pauses = pauses.len() as u64;
    r.long_pauses = pauses.iter().filter(|p| p.2 - p.1 > lease).count() as u64;
    let long_pause_within = |proc: u64, from: u64, to: u64| {
        pauses
            .iter()
            .any(|&(p, a, b)| p == proc && b - a > lease / 2 && a < to && b > from)
    };
    let paused_until = |proc: u64, t: u64| {
        pauses
            .iter()
            .filter(|&&(p, a, _)| p == proc && a <= t)
            .map(|&(_, _, b)| b)
            .max()
    };
    let kill_of = |proc: u64| kills.iter().find(|k| k.0 == proc).map(|k| k.1);

    // Pair invokes with their outcomes, per process, key and operation.
    let mut pending: HashMap<(u64, &str, Op), std::collections::VecDeque<&Event>> = HashMap::new();
    let mut grants: HashMap<&str, Vec<Grant>> = HashMap::new();
    let mut wants: HashMap<&str, Vec<(u64, u64)>> = HashMap::new(); // key -> (proc, t)
    let mut tenures: HashMap<(u64, String, u64), Tenure> = HashMap::new();
    let mut writes: HashMap<&str, Vec<Write>> = HashMap::new();
    let mut ownership: Vec<(u64, &str, u64, u64, bool, Op)> = Vec::new(); // proc key fence sent ok op
    let mut cs_enters: Vec<&Event> = Vec::new();
    let mut renew_invokes: Vec<&Event> = Vec::new();
    let mut losts: Vec<&Event> = Vec::new();
    let mut releases: Vec<(u64, &str, Option<u64>, u64)> = Vec::new(); // proc key fence sent
    let mut last_event: HashMap<u64, u64> = HashMap::new();
    let mut exits: HashMap<u64, u64> = HashMap::new();
    for e in &events {
        if !matches!(e.op, Op::Kill | Op::Pause | Op::Resume | Op::Restart) {
            last_event.insert(e.proc, e.t_ns);
        }
        let slot = (e.proc, e.key.as_str(), e.op);
        match (e.op, e.kind) {
            (Op::Acquire | Op::Renew | Op::Release | Op::Write, Kind::Invoke) => {
                pending.entry(slot).or_default().push_back(e);
                match e.op {
                    Op::Acquire => wants.entry(&e.key).or_default().push((e.proc, e.t_ns)),
                    Op::Release => releases.push((e.proc, &e.key, e.fence, e.t_ns)),
                    Op::Renew => renew_invokes.push(e),
                    _ => {}
                }
            }
            (Op::Acquire | Op::Renew | Op::Release | Op::Write, _) => {
                let invoke = pending
                    .get_mut(&slot)
                    .and_then(|q| q.pop_front())
                    .unwrap_or(e);
                let ok = e.kind == Kind::Ok;
                match e.op {
                    Op::Acquire if ok => {
                        let Some(fence) = e.fence else { continue };
                        r.acquisitions += 1;
                        grants.entry(&e.key).or_default().push(Grant {
                            proc: e.proc,
                            fence,
                            invoke: invoke.t_ns,
                            ok: e.t_ns,
                        });
                        let t = tenures
                            .entry((e.proc, e.key.clone(), fence))
                            .or_insert_with(|| Tenure {
                                proc: e.proc,
                                key: e.key.clone(),
                                fence,
                                start: e.t_ns,
                                extensions: Vec::new(),
                                end: u64::MAX,
                                lost: None,
                                released: false,
                            });
                        t.extensions.push((invoke.t_ns, e.t_ns));
                    }
                    Op::Renew | Op::Release if e.kind != Kind::Info => {
                        if let Some(fence) = invoke.fence.or(e.fence) {
                            ownership.push((e.proc, &e.key, fence, invoke.t_ns, ok, e.op));
                            if ok && e.op == Op::Renew {
                                if let Some(t) = tenures.get_mut(&(e.proc, e.key.clone(), fence)) {
                                    t.extensions.push((invoke.t_ns, e.t_ns));
                                }
                            }
                        }
                    }
                    Op::Write => {
                        if let Some(fence) = invoke.fence.or(e.fence) {
                            writes.entry(&e.key).or_default().push(Write {
                                proc: e.proc,
                                fence,
                                value: invoke.value.clone().or(e.value.clone()).unwrap_or_default(),
                                invoke: invoke.t_ns,
                                done: e.t_ns,
                                accepted: e.accepted,
                            });
                        }
                    }
                    _ => {}
                }
            }
            (Op::CsEnter, _) => cs_enters.push(e),
            (Op::Lost, _) => losts.push(e),
            (Op::Exit, _) => {
                exits.insert(e.proc, e.t_ns);
            }
            _ => {}
        }
    }
    r.losses = losts.len() as u64;

    // Tenure ends.
    for t in tenures.values_mut() {
        let mut end = last_event.get(&t.proc).copied().unwrap_or(t.start);
        if let Some(k) = kill_of(t.proc).filter(|&k| k >= t.start) {
            end = end.min(k);
        }
        for &(p, key, fence, sent) in &releases {
            if p == t.proc && key == t.key && fence.is_none_or(|f| f == t.fence) && sent >= t.start
            {
                end = end.min(sent);
                t.released = true;
            }
        }
        for l in &losts {
            if l.proc == t.proc && l.key == t.key && l.fence == Some(t.fence) {
                end = end.min(l.t_ns);
                t.lost = Some(l.t_ns);
            }
        }
        t.end = end.max(t.start);
    }
    let mut by_key: HashMap<&str, Vec<&Tenure>> = HashMap::new();
    for t in tenures.values() {
        by_key.entry(&t.key).or_default().push(t);
    }
    for v in by_key.values_mut() {
        v.sort_by_key(|t| t.start);
    }

    // I3: grants.
    let mut keys: Vec<&&str> = grants.keys().collect();
    keys.sort();
    for key in keys {
        let gs = &grants[*key];
        for (i, a) in gs.iter().enumerate() {
            for b in &gs[i + 1..] {
                if a.proc != b.proc && a.fence == b.fence {
                    violate(
                        &mut r,
                        "I3",
                        format!(
                            "{key}: fence {} granted to proc {} at {} and to proc {} at {}",
                            a.fence,
                            a.proc,
                            at(a.ok),
                            b.proc,
                            at(b.ok)
                        ),
                    );
                }
                for (x, y) in [(a, b), (b, a)] {
                    if y.invoke > x.ok && y.fence < x.fence {
                        violate(
                            &mut r,
                            "I3",
                            format!(
                                "{key}: proc {} granted fence {} at {}, after proc {} was granted \
                                 fence {} at {}",
                                y.proc,
                                y.fence,
                                at(y.ok),
                                x.proc,
                                x.fence,
                                at(x.ok)
                            ),
                        );
                    }
                }
            }
        }
    }

    // I1: the fenced job table.
    let mut wkeys: Vec<&&str> = writes.keys().collect();
    wkeys.sort();
    for key in wkeys {
        let ws = &writes[*key];
        for w in ws {
            let highest_before = ws
                .iter()
                .filter(|x| x.accepted == Some(true) && x.done < w.invoke)
                .max_by_key(|x| x.fence);
            if let Some(h) = highest_before.filter(|h| h.fence > w.fence) {
                r.stale_writes += 1;
                match w.accepted {
                    Some(false) => r.stale_rejected += 1,
                    Some(true) => {
                        r.out_of_order += 1;
                        violate(
                            &mut r,
                            "I1",
                            format!(
                                "{key}: {} by proc {} with fence {} accepted at {}, after the \
                                 table accepted fence {} from proc {} at {}",
                                w.value,
                                w.proc,
                                w.fence,
                                at(w.done),
                                h.fence,
                                h.proc,
                                at(h.done)
                            ),
                        );
                    }
                    None => {}
                }
            }
        }
        let accepted: Vec<&Write> = ws.iter().filter(|w| w.accepted == Some(true)).collect();
        for (i, a) in accepted.iter().enumerate() {
            for b in &accepted[i + 1..] {
                if a.proc != b.proc && a.fence == b.fence {
                    r.out_of_order += 1;
                    violate(
                        &mut r,
                        "I1",
                        format!(
                            "{key}: procs {} and {} both wrote with fence {} ({} at {}, {} at {})",
                            a.proc,
                            b.proc,
                            a.fence,
                            a.value,
                            at(a.done),
                            b.value,
                            at(b.done)
                        ),
                    );
                }
            }
        }
    }

    // I2: completions.
    let mut done_in_history: HashMap<u64, Vec<&Write>> = HashMap::new();
    for (key, ws) in &writes {
        let Some(job) = key.strip_prefix("job/").and_then(|j| j.parse::<u64>().ok()) else {
            continue;
        };
        for w in ws {
            if w.value == "done" && w.accepted == Some(true) {
                done_in_history.entry(job).or_default().push(w);
            }
        }
    }
    let mut jobs: Vec<_> = done_in_history.keys().copied().collect();
    jobs.sort_unstable();
    for job in &jobs {
        let ws = &done_in_history[job];
        if ws.len() > 1 {
            r.duplicates += 1;
            let who: Vec<String> = ws
                .iter()
                .map(|w| format!("proc {} fence {} at {}", w.proc, w.fence, at(w.done)))
                .collect();
            violate(
                &mut r,
                "I2",
                format!("job/{job} completed {} times: {}", ws.len(), who.join(", ")),
            );
        }
    }
    if let Some(table) = &run.table {
        let rows: HashMap<u64, &JobRow> = table.iter().map(|row| (row.id, row)).collect();
        for job in &jobs {
            for w in &done_in_history[job] {
                let kept = rows
                    .get(job)
                    .is_some_and(|row| row.completions >= 1 && row.fence >= w.fence);
                if !kept {
                    r.lost_updates += 1;
                    violate(
                        &mut r,
                        "I2",
                        format!(
                            "job/{job}: completion by proc {} (fence {}) accepted at {} is not \
                             in the final table",
                            w.proc,
                            w.fence,
                            at(w.done)
                        ),
                    );
                }
            }
        }
        for row in table {
            let in_history = done_in_history.get(&row.id).map_or(0, Vec::len) as u64;
            if row.completions > 1 && in_history <= 1 {
                r.duplicates += 1;
                violate(
                    &mut r,
                    "I2",
                    format!(
                        "job/{} completed {} times in the table",
                        row.id, row.completions
                    ),
                );
            }
            // A process that exited normally wrote its whole history: the table cannot know a
            // completion it did not record.
            if row.completions >= 1 && in_history == 0 {
                if let Some(p) = row.done_by.filter(|p| exits.contains_key(p)) {
                    violate(
                        &mut r,
                        "I2",
                        format!(
                            "job/{}: the table holds a completion by proc {p} that its history \
                             does not show",
                            row.id
                        ),
                    );
                }
            }
        }
    }

    // I4: ownership.
    for &(proc, key, fence, sent, ok, op) in &ownership {
        let Some(newer) = grants
            .get(key)
            .and_then(|gs| gs.iter().find(|g| g.fence > fence && g.ok < sent))
        else {
            continue;
        };
        r.stale_ownership += 1;
        if ok {
            violate(
                &mut r,
                "I4",
                format!(
                    "{key}: {} by proc {proc} with fence {fence} sent at {} succeeded, though \
                     proc {} had been granted fence {} at {}",
                    if op == Op::Renew { "renew" } else { "release" },
                    at(sent),
                    newer.proc,
                    newer.fence,
                    at(newer.ok)
                ),
            );
        } else {
            r.stale_ownership_refused += 1;
        }
    }

    // I5: self-fencing.
    // The loss signal is logged by a task of the worker; on a loaded machine it may run late.
    let tolerance = (lease / 2).max(1_000_000_000);
    let tenure_of = |e: &Event| {
        e.fence
            .and_then(|f| tenures.get(&(e.proc, e.key.clone(), f)))
    };
    for e in &cs_enters {
        let Some(t) = tenure_of(e) else {
            violate(
                &mut r,
                "I5",
                format!(
                    "{}: proc {} entered its critical section at {} without a grant",
                    e.key,
                    e.proc,
                    at(e.t_ns)
                ),
            );
            continue;
        };
        let deadline = t.deadline_at(e.t_ns, lease);
        if let Some(l) = t.lost.filter(|&l| l < e.t_ns) {
            violate(
                &mut r,
                "I5",
                format!(
                    "{}: proc {} entered its critical section at {} after its loss signal at {}",
                    e.key,
                    e.proc,
                    at(e.t_ns),
                    at(l)
                ),
            );
        } else if e.t_ns >= deadline {
            violate(
                &mut r,
                "I5",
                format!(
                    "{}: proc {} (fence {}) entered its critical section at {}, {} ms after its \
                     lease's deadline at {}",
                    e.key,
                    e.proc,
                    t.fence,
                    at(e.t_ns),
                    (e.t_ns - deadline) / 1_000_000,
                    at(deadline)
                ),
            );
        }
    }
    // The heartbeat sends a renewal only before the local deadline; a lock that renews after it
    // kept believing in a lease the store may already have given away.
    for e in &renew_invokes {
        let Some(t) = tenure_of(e) else {
            continue;
        };
        // Half a lease of slack: the history stamps the renewal a moment after the lock took
        // its send time, and a loaded machine can stretch that moment.
        let deadline = t.deadline_at(e.t_ns, lease);
        if e.t_ns >= deadline + lease / 2 && t.lost.is_none_or(|l| l >= e.t_ns) {
            violate(
                &mut r,
                "I5",
                format!(
                    "{}: proc {} (fence {}) sent a renewal at {}, {} ms after its lease's \
                     deadline at {}, without a loss signal before",
                    e.key,
                    e.proc,
                    t.fence,
                    at(e.t_ns),
                    (e.t_ns - deadline) / 1_000_000,
                    at(deadline)
                ),
            );
        }
    }
    for e in &losts {
        let Some(t) = tenure_of(e) else {
            continue;
        };
        let deadline = t.deadline_at(e.t_ns, lease);
        // A stopped process cannot signal anything: when it was stopped over its deadline, what
        // matters is that it does no protected work before the signal, checked above.
        let excused = paused_until(e.proc, e.t_ns).is_some_and(|resumed| resumed >= deadline);
        if e.t_ns > deadline + tolerance && !excused {
            violate(
                &mut r,
                "I5",
                format!(
                    "{}: proc {}'s loss signal (fence {}) fired at {}, {} ms after its deadline \
                     at {}",
                    e.key,
                    e.proc,
                    t.fence,
                    at(e.t_ns),
                    (e.t_ns - deadline) / 1_000_000,
                    at(deadline)
                ),
            );
        }
    }

    // I6 and overlaps.
    let mut tkeys: Vec<&&str> = by_key.keys().collect();
    tkeys.sort();
    for key in tkeys {
        let ts = &by_key[*key];
        for (i, a) in ts.iter().enumerate() {
            for b in &ts[i + 1..] {
                if a.proc == b.proc {
                    continue;
                }
                if b.start < a.end && a.start < b.end {
                    r.overlaps += 1;
                }
                let (ae, be) = (a.believed_end(lease), b.believed_end(lease));
                if !(b.start < ae && a.start < be) {
                    continue;
                }
                if long_pause_within(a.proc, a.start, a.end)
                    || long_pause_within(b.proc, b.start, b.end)
                {
                    r.i6_skipped += 1;
                    continue;
                }
                r.i6_checked += 1;
                violate(
                    &mut r,
                    "I6",
                    format!(
                        "{key}: proc {} (fence {}, {} .. {}) and proc {} (fence {}, {} .. {}) \
                         both held it, neither paused",
                        a.proc,
                        a.fence,
                        at(a.start),
                        at(ae),
                        b.proc,
                        b.fence,
                        at(b.start),
                        at(be)
                    ),
                );
            }
        }
    }

    // I8: takeover after a kill.
    let bound = lease + run.meta.backoff_cap_ns + 1_000_000_000;
    // On the embedded SQLite store a process stopped inside a transaction holds the database's
    // write lock, and every other process waits until it resumes: the end of a pause of another
    // process counts like the end of a store restart.
    let embedded = run.meta.name.starts_with("sqlite");
    for &(proc, died) in &kills {
        // A store restart within the bound starts the clock again: etcd, for one, gives every
        // lease its full TTL again when it comes back.
        let stalls = pauses
            .iter()
            .filter(|&&(p, from, _)| embedded && p != proc && from <= died + bound)
            .map(|&(_, _, to)| to);
        let killed = restarts
            .iter()
            .copied()
            .chain(stalls)
            .filter(|&t| t > died && t <= died + bound)
            .max()
            .unwrap_or(died);
        let held: Vec<&Tenure> = tenures
            .values()
            .filter(|t| t.proc == proc && t.start <= died && !t.released && t.lost.is_none())
            .collect();
        for t in held {
            let taken = grants.get(t.key.as_str()).and_then(|gs| {
                gs.iter()
                    .filter(|g| g.proc != proc && g.ok > killed)
                    .map(|g| g.ok)
                    .min()
            });
            let asked_after_expiry = wants.get(t.key.as_str()).is_some_and(|ws| {
                ws.iter().any(|&(p, w)| {
                    p != proc && w > killed + lease + 50_000_000 && w + 250_000_000 < killed + bound
                })
            });
            match taken {
                Some(ok) if ok <= killed + bound => r.takeovers_ns.push(ok - died),
                _ if asked_after_expiry => violate(
                    &mut r,
                    "I8",
                    format!(
                        "{}: proc {proc} was killed at {} holding it (fence {}); others asked for \
                         it after its lease ran out, but nobody got it within {}{}",
                        t.key,
                        at(died),
                        t.fence,
                        secs(bound),
                        taken.map_or(String::new(), |ok| format!(" (taken at {})", at(ok)))
                    ),
                ),
                Some(ok) => r.takeovers_ns.push(ok - died),
                None => {}
            }
        }
    }

    // I9: nothing held after a normal exit.
    let mut leftovers: Vec<&Tenure> = tenures
        .values()
        .filter(|t| {
            exits
                .get(&t.proc)
                .is_some_and(|&x| t.start <= x && !t.released && t.lost.is_none())
        })
        .collect();
    leftovers.sort_by_key(|t| (t.proc, t.start));
    for t in leftovers {
        violate(
            &mut r,
            "I9",
            format!(
                "proc {} exited at {} still holding {} (fence {}, granted at {})",
                t.proc,
                at(exits[&t.proc]),
                t.key,
                t.fence,
                at(t.start)
            ),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const LEASE: u64 = 1000 * MS;

    fn ev(t_ms: u64, proc: u64, op: Op, kind: Kind, fence: Option<u64>) -> Event {
        let mut e = Event::at(t_ms * MS, proc, "job/1", op, kind);
        e.fence = fence;
        e
    }

    /// A tenure: acquire invoke/ok at `t`, then release at `until`.
    fn tenure(proc: u64, fence: u64, t: u64, until: Option<u64>) -> Vec<Event> {
        let mut v = vec![
            ev(t, proc, Op::Acquire, Kind::Invoke, None),
            ev(t + 1, proc, Op::Acquire, Kind::Ok, Some(fence)),
        ];
        if let Some(u) = until {
            v.push(ev(u, proc, Op::Release, Kind::Invoke, Some(fence)));
            v.push(ev(u + 1, proc, Op::Release, Kind::Ok, Some(fence)));
        }
        v
    }

    fn write(t: u64, proc: u64, fence: u64, value: &str, accepted: bool) -> Vec<Event> {
        let mut i = ev(t, proc, Op::Write, Kind::Invoke, Some(fence));
        i.value = Some(value.into());
        let mut o = ev(
            t + 1,
            proc,
            Op::Write,
            if accepted { Kind::Ok } else { Kind::Fail },
            Some(fence),
        );
        o.value = Some(value.into());
        o.accepted = Some(accepted);
        vec![i, o]
    }

    fn run(events: Vec<Event>) -> Report {
        run_named("t", events)
    }

    fn run_named(name: &str, events: Vec<Event>) -> Report {
        check(&Run {
            meta: Meta {
                name: name.into(),
                lease_ns: LEASE,
                backoff_cap_ns: 250 * MS,
                seed: 0,
            },
            events,
            table: None,
        })
    }

    fn invariants(events: Vec<Event>) -> Vec<&'static str> {
        run(events).invariants()
    }

    #[test]
    fn a_clean_handoff_passes() {
        let mut h = tenure(1, 1, 0, Some(100));
        h.extend(write(50, 1, 1, "done", true));
        h.extend(tenure(2, 2, 200, Some(300)));
        h.extend(write(250, 2, 2, "claim", true));
        let r = run(h);
        assert!(r.ok(), "{:?}", r.violations);
        assert_eq!(r.acquisitions, 2);
        assert_eq!(r.overlaps, 0);
    }

    #[test]
    fn i1_flags_a_stale_write_accepted_and_counts_rejected_ones() {
        let mut ok = tenure(1, 1, 0, Some(100));
        ok.extend(tenure(2, 2, 200, Some(300)));
        ok.extend(write(210, 2, 2, "claim", true));
        ok.extend(write(250, 1, 1, "done", false));
        let r = run(ok.clone());
        assert!(r.ok(), "{:?}", r.violations);
        assert_eq!((r.stale_rejected, r.stale_writes), (1, 1));

        let mut bad = tenure(1, 1, 0, Some(100));
        bad.extend(tenure(2, 2, 200, Some(300)));
        bad.extend(write(210, 2, 2, "claim", true));
        bad.extend(write(250, 1, 1, "done", true));
        assert_eq!(invariants(bad), ["I1"]);
    }

    #[test]
    fn i2_flags_a_job_completed_twice_and_a_lost_completion() {
        let mut h = tenure(1, 1, 0, Some(100));
        h.extend(write(50, 1, 1, "done", true));
        h.extend(tenure(2, 2, 200, Some(300)));
        h.extend(write(250, 2, 2, "done", true));
        assert_eq!(invariants(h), ["I2"]);

        let mut h = tenure(1, 1, 0, Some(100));
        h.extend(write(50, 1, 1, "done", true));
        let table = Some(vec![JobRow {
            id: 1,
            completions: 0,
            fence: 1,
            done_by: None,
        }]);
        let mut run_ = Run {
            meta: Meta {
                name: "t".into(),
                lease_ns: LEASE,
                backoff_cap_ns: 0,
                seed: 0,
            },
            events: h,
            table,
        };
        let r = check(&run_);
        assert_eq!((r.invariants(), r.lost_updates), (vec!["I2"], 1));
        run_.table.as_mut().unwrap()[0].completions = 1;
        assert!(check(&run_).ok());
    }

    #[test]
    fn i3_flags_a_shared_fence_and_a_smaller_later_fence_but_not_a_retake() {
        let mut h = tenure(1, 1, 0, Some(100));
        h.extend(tenure(2, 1, 200, Some(300)));
        assert_eq!(invariants(h), ["I3"]);

        let mut h = tenure(1, 5, 0, Some(100));
        h.extend(tenure(2, 4, 200, None));
        assert_eq!(invariants(h), ["I3"]);

        // The same holder retaking its key keeps its fence: allowed.
        let mut h = tenure(1, 5, 0, None);
        h.extend(tenure(1, 5, 500, Some(600)));
        assert!(run(h).ok());
    }

    #[test]
    fn i4_flags_a_release_that_succeeds_after_a_newer_grant() {
        let mut h = tenure(1, 1, 0, None);
        h.push(ev(950, 1, Op::Lost, Kind::Info, Some(1)));
        h.extend(tenure(2, 2, 1100, Some(1200)));
        h.push(ev(1150, 1, Op::Release, Kind::Invoke, Some(1)));
        h.push(ev(1151, 1, Op::Release, Kind::Fail, Some(1)));
        let r = run(h.clone());
        assert!(r.ok(), "{:?}", r.violations);
        assert_eq!((r.stale_ownership_refused, r.stale_ownership), (1, 1));
        h.pop();
        h.push(ev(1151, 1, Op::Release, Kind::Ok, Some(1)));
        assert_eq!(invariants(h), ["I4"]);
    }

    #[test]
    fn i5_flags_work_after_the_deadline_or_the_loss_and_a_late_loss_signal() {
        // Renewed at 600: the deadline moves to 1600.
        let mut h = tenure(1, 1, 0, None);
        h.push(ev(600, 1, Op::Renew, Kind::Invoke, Some(1)));
        h.push(ev(601, 1, Op::Renew, Kind::Ok, Some(1)));
        h.push(ev(1500, 1, Op::CsEnter, Kind::Info, Some(1)));
        h.push(ev(1550, 1, Op::Lost, Kind::Info, Some(1)));
        assert!(run(h.clone()).ok());

        let mut late = h.clone();
        late[4].t_ns = 1700 * MS;
        late.sort_by_key(|e| e.t_ns);
        assert_eq!(invariants(late), ["I5"]);

        // A renewal sent after the deadline: the lock did not enforce it.
        let mut late_renew = h[..4].to_vec();
        late_renew.push(ev(2200, 1, Op::Renew, Kind::Invoke, Some(1)));
        late_renew.push(ev(2201, 1, Op::Renew, Kind::Ok, Some(1)));
        assert_eq!(invariants(late_renew), ["I5"]);

        let mut after_loss = h.clone();
        after_loss.push(ev(1560, 1, Op::CsEnter, Kind::Info, Some(1)));
        assert_eq!(invariants(after_loss), ["I5"]);

        let mut late_signal = h[..4].to_vec();
        late_signal.push(ev(3000, 1, Op::Lost, Kind::Info, Some(1)));
        assert_eq!(invariants(late_signal.clone()), ["I5"]);

        // ... unless the process was stopped over its deadline and signalled right after.
        let mut paused = late_signal;
        let mut p = ev(1400, 1, Op::Pause, Kind::Info, None);
        p.dur_ns = Some(1500 * MS);
        paused.push(p);
        paused.push(ev(2900, 1, Op::Resume, Kind::Info, None));
        assert!(run(paused).ok());
    }

    #[test]
    fn i6_flags_overlapping_tenures_unless_a_long_pause_explains_them() {
        let mut h = tenure(1, 1, 0, None);
        h.push(ev(500, 1, Op::Lost, Kind::Info, Some(1)));
        h.extend(tenure(2, 2, 200, Some(300)));
        let r = run(h);
        assert_eq!(r.invariants(), ["I6"]);
        assert_eq!(r.overlaps, 1);

        // Proc 1 paused 3 s holding the key: it believes it holds until it sees the loss, but
        // its deadline ended at 1000 ms; proc 2 takes over at 1200 ms.
        let mut h = tenure(1, 1, 0, None);
        let mut p = ev(100, 1, Op::Pause, Kind::Info, None);
        p.dur_ns = Some(3000 * MS);
        h.push(p);
        h.push(ev(3100, 1, Op::Resume, Kind::Info, None));
        h.push(ev(3105, 1, Op::Lost, Kind::Info, Some(1)));
        h.extend(tenure(2, 2, 1200, Some(1300)));
        let r = run(h);
        assert!(r.ok(), "{:?}", r.violations);
        assert_eq!(r.overlaps, 1);
    }

    #[test]
    fn i8_flags_a_key_nobody_gets_after_its_holder_is_killed() {
        let mut h = tenure(1, 1, 0, None);
        h.push(ev(100, 0, Op::Kill, Kind::Info, None).tap_proc(1));
        h.extend(tenure(2, 2, 1300, Some(1400)));
        let r = run(h.clone());
        assert!(r.ok(), "{:?}", r.violations);
        assert_eq!(r.takeovers_ns, [1201 * MS]);

        let mut h = h[..3].to_vec();
        for t in [1200, 1500, 2000] {
            h.push(ev(t, 2, Op::Acquire, Kind::Invoke, None));
            h.push(ev(t + 1, 2, Op::Acquire, Kind::Fail, None));
        }
        assert_eq!(invariants(h), ["I8"]);
    }

    /// On SQLite a process stopped inside a transaction holds the write lock and stalls every
    /// other process: the takeover clock starts again when such a pause ends (only there).
    #[test]
    fn i8_on_sqlite_counts_from_the_end_of_another_process_pause() {
        let mut h = tenure(1, 1, 0, None);
        h.push(ev(100, 0, Op::Kill, Kind::Info, None).tap_proc(1));
        let mut p = ev(200, 3, Op::Pause, Kind::Info, None);
        p.dur_ns = Some(1500 * MS);
        h.push(p);
        h.push(ev(1700, 3, Op::Resume, Kind::Info, None));
        for t in [1200, 1500, 2000] {
            h.push(ev(t, 2, Op::Acquire, Kind::Invoke, None));
            h.push(ev(t + 1, 2, Op::Acquire, Kind::Fail, None));
        }
        h.extend(tenure(2, 2, 2600, Some(2700)));
        assert_eq!(
            run_named("redis/kill+pause", h.clone()).invariants(),
            ["I8"]
        );
        let r = run_named("sqlite/kill+pause", h);
        assert!(r.ok(), "{:?}", r.violations);
    }

    #[test]
    fn i9_flags_a_process_that_exits_holding_a_key() {
        let mut h = tenure(1, 1, 0, Some(100));
        h.push(ev(200, 1, Op::Exit, Kind::Info, None));
        assert!(run(h).ok());
        let mut h = tenure(1, 1, 0, None);
        h.push(ev(200, 1, Op::Exit, Kind::Info, None));
        assert_eq!(invariants(h), ["I9"]);
    }

    trait TapProc {
        fn tap_proc(self, proc: u64) -> Self;
    }
    impl TapProc for Event {
        fn tap_proc(mut self, proc: u64) -> Self {
            self.proc = proc;
            self.key.clear();
            self
        }
    }
}
