//! One function per invariant of the design (section 6), each reading the run index and adding
//! its counts and violations to the report.

use std::collections::{BTreeMap, HashMap};

use super::index::{Ownership, Pause, RunIndex, Tenure, Write};
use super::{Report, secs};
use crate::history::{Event, Op};
use crate::jobs::JobRow;

/// I3: no two processes granted one fence of a key; a grant asked for after another was
/// answered has a fence at least as large.
pub(super) fn i3_grants(ix: &RunIndex<'_>, r: &mut Report) {
    for (key, gs) in &ix.grants {
        for (i, a) in gs.iter().enumerate() {
            for b in &gs[i + 1..] {
                if a.proc != b.proc && a.fence == b.fence {
                    r.violate(
                        "I3",
                        format!(
                            "{key}: fence {} granted to proc {} at {} and to proc {} at {}",
                            a.fence,
                            a.proc,
                            ix.at(a.ok),
                            b.proc,
                            ix.at(b.ok)
                        ),
                    );
                }
                for (x, y) in [(a, b), (b, a)] {
                    if y.invoke > x.ok && y.fence < x.fence {
                        r.violate(
                            "I3",
                            format!(
                                "{key}: proc {} granted fence {} at {}, after proc {} was granted \
                                 fence {} at {}",
                                y.proc,
                                y.fence,
                                ix.at(y.ok),
                                x.proc,
                                x.fence,
                                ix.at(x.ok)
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// I1, the fenced job table: accepted writes of a key, one sent after another was answered,
/// have increasing fences; two processes never write with one fence; a write whose fence is
/// below one the table already accepted is rejected.
pub(super) fn i1_fenced_writes(ix: &RunIndex<'_>, r: &mut Report) {
    for (key, ws) in &ix.writes {
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
                        r.violate(
                            "I1",
                            format!(
                                "{key}: {} by proc {} with fence {} accepted at {}, after the \
                                 table accepted fence {} from proc {} at {}",
                                w.value,
                                w.proc,
                                w.fence,
                                ix.at(w.done),
                                h.fence,
                                h.proc,
                                ix.at(h.done)
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
                    r.violate(
                        "I1",
                        format!(
                            "{key}: procs {} and {} both wrote with fence {} ({} at {}, {} at {})",
                            a.proc,
                            b.proc,
                            a.fence,
                            a.value,
                            ix.at(a.done),
                            b.value,
                            ix.at(b.done)
                        ),
                    );
                }
            }
        }
    }
}

/// I2, completions: no job completed twice (history and table); every accepted completion is
/// in the final table.
pub(super) fn i2_completions(ix: &RunIndex<'_>, r: &mut Report) {
    let mut done_in_history: HashMap<u64, Vec<&Write>> = HashMap::new();
    for (key, ws) in &ix.writes {
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
                .map(|w| format!("proc {} fence {} at {}", w.proc, w.fence, ix.at(w.done)))
                .collect();
            r.violate(
                "I2",
                format!("job/{job} completed {} times: {}", ws.len(), who.join(", ")),
            );
        }
    }
    if let Some(table) = ix.table {
        i2_against_the_table(ix, table, &jobs, &done_in_history, r);
    }
}

/// The part of I2 that reads the job table's final state.
fn i2_against_the_table(
    ix: &RunIndex<'_>,
    table: &[JobRow],
    jobs: &[u64],
    done_in_history: &HashMap<u64, Vec<&Write>>,
    r: &mut Report,
) {
    let rows: HashMap<u64, &JobRow> = table.iter().map(|row| (row.id, row)).collect();
    for job in jobs {
        for w in &done_in_history[job] {
            let kept = rows
                .get(job)
                .is_some_and(|row| row.completions >= 1 && row.fence >= w.fence);
            if !kept {
                r.lost_updates += 1;
                r.violate(
                    "I2",
                    format!(
                        "job/{job}: completion by proc {} (fence {}) accepted at {} is not in \
                         the final table",
                        w.proc,
                        w.fence,
                        ix.at(w.done)
                    ),
                );
            }
        }
    }
    for row in table {
        let in_history = done_in_history.get(&row.id).map_or(0, Vec::len) as u64;
        if row.completions > 1 && in_history <= 1 {
            r.duplicates += 1;
            r.violate(
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
            if let Some(p) = row.done_by.filter(|p| ix.exits.contains_key(p)) {
                r.violate(
                    "I2",
                    format!(
                        "job/{}: the table holds a completion by proc {p} that its history does \
                         not show",
                        row.id
                    ),
                );
            }
        }
    }
}

/// I4, ownership: no renew or release succeeds when sent after the key was granted with a
/// larger fence.
pub(super) fn i4_ownership(ix: &RunIndex<'_>, r: &mut Report) {
    for &Ownership {
        proc,
        key,
        fence,
        sent,
        ok,
        op,
    } in &ix.ownership
    {
        let Some(newer) = ix
            .grants
            .get(key)
            .and_then(|gs| gs.iter().find(|g| g.fence > fence && g.ok < sent))
        else {
            continue;
        };
        r.stale_ownership += 1;
        if ok {
            r.violate(
                "I4",
                format!(
                    "{key}: {} by proc {proc} with fence {fence} sent at {} succeeded, though \
                     proc {} had been granted fence {} at {}",
                    if op == Op::Renew { "renew" } else { "release" },
                    ix.at(sent),
                    newer.proc,
                    newer.fence,
                    ix.at(newer.ok)
                ),
            );
        } else {
            r.stale_ownership_refused += 1;
        }
    }
}

/// I5, self-fencing: no protected work starts after the deadline or the loss signal; no
/// renewal is sent after the deadline; the loss signal fires by the deadline.
pub(super) fn i5_self_fencing(ix: &RunIndex<'_>, r: &mut Report) {
    for e in &ix.cs_enters {
        i5_protected_work(ix, e, r);
    }
    for e in &ix.renew_invokes {
        i5_renewal(ix, e, r);
    }
    for e in &ix.losts {
        i5_loss_signal(ix, e, r);
    }
}

/// No protected work starts without a grant, after the loss signal, or after the deadline.
fn i5_protected_work<'a>(ix: &RunIndex<'a>, e: &'a Event, r: &mut Report) {
    let Some(t) = ix.tenure_of(e) else {
        r.violate(
            "I5",
            format!(
                "{}: proc {} entered its critical section at {} without a grant",
                e.key,
                e.proc,
                ix.at(e.t_ns)
            ),
        );
        return;
    };
    let deadline = t.deadline_at(e.t_ns, ix.lease);
    if let Some(l) = t.lost.filter(|&l| l < e.t_ns) {
        r.violate(
            "I5",
            format!(
                "{}: proc {} entered its critical section at {} after its loss signal at {}",
                e.key,
                e.proc,
                ix.at(e.t_ns),
                ix.at(l)
            ),
        );
    } else if e.t_ns >= deadline {
        r.violate(
            "I5",
            format!(
                "{}: proc {} (fence {}) entered its critical section at {}, {} ms after its \
                 lease's deadline at {}",
                e.key,
                e.proc,
                t.fence,
                ix.at(e.t_ns),
                (e.t_ns - deadline) / 1_000_000,
                ix.at(deadline)
            ),
        );
    }
}

/// The heartbeat sends a renewal only before the local deadline; a lock that renews after it
/// kept believing in a lease the store may already have given away.
fn i5_renewal<'a>(ix: &RunIndex<'a>, e: &'a Event, r: &mut Report) {
    let Some(t) = ix.tenure_of(e) else {
        return;
    };
    // Half a lease of slack: the history stamps the renewal a moment after the lock took its
    // send time, and a loaded machine can stretch that moment.
    let deadline = t.deadline_at(e.t_ns, ix.lease);
    if e.t_ns >= deadline + ix.lease / 2 && t.lost.is_none_or(|l| l >= e.t_ns) {
        r.violate(
            "I5",
            format!(
                "{}: proc {} (fence {}) sent a renewal at {}, {} ms after its lease's deadline \
                 at {}, without a loss signal before",
                e.key,
                e.proc,
                t.fence,
                ix.at(e.t_ns),
                (e.t_ns - deadline) / 1_000_000,
                ix.at(deadline)
            ),
        );
    }
}

/// The loss signal fires by the deadline, with a tolerance of max(lease/2, 1 s): the signal is
/// logged by a task of the worker, and on a loaded machine that task may run late.
fn i5_loss_signal<'a>(ix: &RunIndex<'a>, e: &'a Event, r: &mut Report) {
    let tolerance = (ix.lease / 2).max(1_000_000_000);
    let Some(t) = ix.tenure_of(e) else {
        return;
    };
    let deadline = t.deadline_at(e.t_ns, ix.lease);
    // A stopped process cannot signal anything: when it was stopped over its deadline, what
    // matters is that it does no protected work before the signal, checked above.
    let excused = ix
        .paused_until(e.proc, e.t_ns)
        .is_some_and(|resumed| resumed >= deadline);
    if e.t_ns > deadline + tolerance && !excused {
        r.violate(
            "I5",
            format!(
                "{}: proc {}'s loss signal (fence {}) fired at {}, {} ms after its deadline at {}",
                e.key,
                e.proc,
                t.fence,
                ix.at(e.t_ns),
                (e.t_ns - deadline) / 1_000_000,
                ix.at(deadline)
            ),
        );
    }
}

/// I6: tenures of different processes, each up to its deadline, do not overlap (skipped for a
/// tenure whose process was paused longer than half the lease). Also counts the overlaps as the
/// workers saw them, up to release or loss signal: the cases fencing is for.
pub(super) fn i6_exclusion(ix: &RunIndex<'_>, r: &mut Report) {
    let lease = ix.lease;
    for (key, ts) in &ix.tenures_by_key() {
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
                if ix.long_pause_within(a.proc, a.start, a.end)
                    || ix.long_pause_within(b.proc, b.start, b.end)
                {
                    r.i6_skipped += 1;
                    continue;
                }
                r.i6_checked += 1;
                r.violate(
                    "I6",
                    format!(
                        "{key}: proc {} (fence {}, {} .. {}) and proc {} (fence {}, {} .. {}) \
                         both held it, neither paused",
                        a.proc,
                        a.fence,
                        ix.at(a.start),
                        ix.at(ae),
                        b.proc,
                        b.fence,
                        ix.at(b.start),
                        ix.at(be)
                    ),
                );
            }
        }
    }
}

/// I7, queue order: no waiter is granted a key while a waiter that enqueued earlier has a live
/// entry in its queue and was not granted first; nor is a newcomer (no barging).
///
/// The time stamps are of different processes, so an order counts only when it is certain:
/// the earlier waiter's enqueue was *answered* (`Waiting`) before the later one's first
/// enqueue of its chain was *sent*, and the earlier entry is certainly live over the whole span
/// in which the grant may have been made (refreshes answered by the span's start cover its
/// end), with no grant to the earlier waiter before it (a grant to it with a smaller fence, or
/// any sign its entry may be gone: `queue.rs`). A correct store under kills, pauses and
/// restarts is never blamed; a queue served out of order is, each time it overtakes a waiter
/// that kept refreshing.
///
/// Per key, the entries are sorted by the time they are known to exist, with a running maximum
/// of their ends: a grant looks back only over the entries not yet all ended at its span.
pub(super) fn i7_queue_order(ix: &RunIndex<'_>, r: &mut Report) {
    let mut reach: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (key, es) in &ix.queue.entries {
        let mut max = 0;
        reach.insert(
            key,
            es.iter()
                .map(|e| {
                    max = max.max(e.end);
                    max
                })
                .collect(),
        );
    }
    for g in &ix.queue.grants {
        let (Some(es), Some(reach)) = (ix.queue.entries.get(g.key), reach.get(g.key)) else {
            continue;
        };
        let earlier = es.partition_point(|a| a.since < g.queued_from);
        for i in (0..earlier).rev() {
            if reach[i] < g.from {
                break;
            }
            let a = &es[i];
            if a.proc == g.proc || a.granted.is_some_and(|fa| fa <= g.fence) {
                continue;
            }
            // Granted later (a larger fence): its entry lived up to that grant at least.
            let to = if a.granted.is_some() {
                g.to.min(a.end)
            } else {
                g.to
            };
            let live = a.live_until(g.from);
            if a.end < to || a.end <= g.from || live <= to {
                continue;
            }
            r.violate(
                "I7",
                format!(
                    "{}: proc {} was granted fence {} (between {} and {}{}), queued no earlier \
                     than {}, ahead of proc {}, queued since {} and live until {} at least{}",
                    g.key,
                    g.proc,
                    g.fence,
                    ix.at(g.from),
                    ix.at(g.to),
                    if g.newcomer {
                        ", asking for the first time"
                    } else {
                        ""
                    },
                    ix.at(g.queued_from),
                    a.proc,
                    ix.at(a.since),
                    ix.at(live),
                    a.granted.map_or(String::new(), |fa| format!(
                        ", granted fence {fa} only after"
                    ))
                ),
            );
        }
    }
}

/// I8, takeover after a kill: a key the dead process held is granted to another within lease +
/// backoff cap + 1 s, when another asked for it after the lease ran out. Records the takeover
/// times.
pub(super) fn i8_takeover(ix: &RunIndex<'_>, r: &mut Report) {
    let lease = ix.lease;
    let bound = lease + ix.meta.backoff_cap_ns + 1_000_000_000;
    // On the embedded SQLite store a process stopped inside a transaction holds the database's
    // write lock, and every other process waits until it resumes: the end of a pause of another
    // process counts like the end of a store restart.
    let embedded = ix.meta.name.starts_with("sqlite");
    let queued = ix.meta.queued();
    let last_ask = ix
        .wants
        .values()
        .flatten()
        .map(|&(_, w)| w)
        .max()
        .unwrap_or(0);
    for &(proc, died) in &ix.kills {
        // A store restart within the bound starts the clock again: etcd, for one, gives every
        // lease its full TTL again when it comes back.
        let stalls = ix
            .pauses
            .iter()
            .filter(|p| embedded && p.proc != proc && p.from <= died + bound)
            .map(|p| p.to);
        let restarted = ix
            .restarts
            .iter()
            .copied()
            .chain(stalls)
            .filter(|&t| t > died && t <= died + bound)
            .max()
            .unwrap_or(died);
        // So does a store stopped within the bound, from its end however long it lasted: the
        // store expires nothing and grants nothing while stopped. A failover likewise: the
        // clients find the promoted replica only at its end, and a store that waits for a
        // replica grants nothing until the old primary is back in sync.
        // A leader partition too: a new leader is elected, and the clients must find it.
        // Each such window that begins within the bound of the last one's end starts the
        // clock again (a second leader change while the dead holder's lease ran gives it its
        // full TTL again, found in a 10-minute etcd `kill,leader-partition` run).
        let windows: Vec<&Pause> = ix
            .store_pauses
            .iter()
            .chain(&ix.failover_windows)
            .chain(&ix.leader_partitions)
            .collect();
        let mut killed = restarted;
        loop {
            let next = windows
                .iter()
                .filter(|p| p.from <= killed + bound && p.to > died)
                .map(|p| p.to)
                .fold(killed, u64::max);
            if next == killed {
                break;
            }
            killed = next;
        }
        let held: Vec<&Tenure<'_>> = ix
            .tenures
            .values()
            .filter(|t| t.proc == proc && t.start <= died && !t.released && t.lost.is_none())
            .collect();
        for t in held {
            // On a queued store the key goes to the oldest waiter whose entry is live: one that
            // is killed meanwhile may be granted it without ever hearing so, and the key then
            // waits out that grant's lease too (a grant to a dead waiter lapses with its lease).
            // Each waiter for the key killed before the takeover adds a lease.
            let mut allowed = bound;
            if queued {
                for &(p, k) in &ix.kills {
                    let waited = ix
                        .wants
                        .get(t.key)
                        .is_some_and(|ws| ws.iter().any(|&(wp, w)| wp == p && w <= k));
                    if p != proc && waited && k > died && k <= killed + allowed {
                        allowed += lease + ix.meta.backoff_cap_ns;
                    }
                }
                // So does a waiter whose store replies were slowed, or that was cut off the
                // store, meanwhile: granted the key, it may hear of it only after its lock gave
                // up waiting, and the grant lapses (or is given back) after it.
                for w in ix.slow_windows.iter().chain(&ix.partitions) {
                    let waited = ix
                        .wants
                        .get(t.key)
                        .is_some_and(|ws| ws.iter().any(|&(wp, at)| wp == w.proc && at <= w.to));
                    if w.proc != proc && waited && w.to > died && w.from <= killed + allowed {
                        allowed += lease + ix.meta.backoff_cap_ns;
                    }
                }
            }
            let taken = ix.grants.get(t.key).and_then(|gs| {
                gs.iter()
                    .filter(|g| g.proc != proc && g.ok > killed)
                    .map(|g| g.ok)
                    .min()
            });
            // A process cut off the store asks in vain: only the others' asking counts.
            let asked_after_expiry = ix.wants.get(t.key).is_some_and(|ws| {
                ws.iter().any(|&(p, w)| {
                    p != proc
                        && w > killed + lease + 50_000_000
                        && w + 250_000_000 < killed + allowed
                        && !ix.cut_off(p, w, 1_000_000_000)
                })
            });
            // With the bound extended for killed waiters, only a run that went on past it can
            // show a takeover that came too late.
            let observed = allowed == bound || last_ask >= killed + allowed;
            match taken {
                Some(ok) if ok <= killed + allowed => r.takeovers_ns.push(ok - died),
                _ if asked_after_expiry && observed => r.violate(
                    "I8",
                    format!(
                        "{}: proc {proc} was killed at {} holding it (fence {}); others asked for \
                         it after its lease ran out, but nobody got it within {}{}",
                        t.key,
                        ix.at(died),
                        t.fence,
                        secs(allowed),
                        taken.map_or(String::new(), |ok| format!(" (taken at {})", ix.at(ok)))
                    ),
                ),
                Some(ok) => r.takeovers_ns.push(ok - died),
                None => {}
            }
        }
    }
}

/// I9: a process that exits normally holds no key.
pub(super) fn i9_nothing_held_at_exit(ix: &RunIndex<'_>, r: &mut Report) {
    let mut leftovers: Vec<&Tenure<'_>> = ix
        .tenures
        .values()
        .filter(|t| {
            ix.exits.get(&t.proc).is_some_and(|&x| {
                t.start <= x && !t.released && t.abandoned.is_none() && t.lost.is_none()
            })
        })
        .collect();
    leftovers.sort_by_key(|t| (t.proc, t.start));
    for t in leftovers {
        r.violate(
            "I9",
            format!(
                "proc {} exited at {} still holding {} (fence {}, granted at {})",
                t.proc,
                ix.at(ix.exits[&t.proc]),
                t.key,
                t.fence,
                ix.at(t.start)
            ),
        );
    }
}
