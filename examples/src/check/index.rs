//! The run index: a run's events, read once, as the invariants look at them: the nemesis's kills,
//! pauses and restarts, the grants, the tenures with their ends, the writes, and the ownership
//! calls, each with the time it was sent.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::queue::QueueIndex;
use super::{Meta, Run};
use crate::history::{Event, Kind, Op, STORE};
use crate::jobs::JobRow;

/// A grant: an acquire answered with a fence.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub(super) proc: u64,
    pub(super) fence: u64,
    /// When the acquire was sent.
    pub(super) invoke: u64,
    /// When it was answered.
    pub(super) ok: u64,
}

/// What one process believed it held: one (process, key, fence).
#[derive(Debug, Clone)]
pub(super) struct Tenure<'a> {
    pub(super) proc: u64,
    pub(super) key: &'a str,
    pub(super) fence: u64,
    pub(super) start: u64,
    /// (sent, answered) of every successful acquire and renew.
    extensions: Vec<(u64, u64)>,
    /// Up to release, loss signal, death or the process's last event.
    pub(super) end: u64,
    pub(super) lost: Option<u64>,
    pub(super) released: bool,
    /// For a grant reported by `wait_for_grant` that the lock did not take (too close to its
    /// deadline to vouch for): when it asked the store again, whose answer was another fence or
    /// none, so the grant lapsed unused. The tenure ends there.
    pub(super) abandoned: Option<u64>,
}

impl Tenure<'_> {
    /// The deadline as known at `t`: the send time of the last extension answered by `t`, plus
    /// the lease.
    pub(super) fn deadline_at(&self, t: u64, lease: u64) -> u64 {
        self.extensions
            .iter()
            .filter(|(_, ok)| *ok <= t)
            .map(|(sent, _)| sent + lease)
            .max()
            .unwrap_or(self.start + lease)
    }

    /// The end of the tenure as the lock may believe it: no later than its deadline.
    pub(super) fn believed_end(&self, lease: u64) -> u64 {
        self.end.min(self.deadline_at(self.end, lease))
    }
}

/// A fenced write to the job table, with the table's answer.
#[derive(Debug, Clone)]
pub(super) struct Write {
    pub(super) proc: u64,
    pub(super) fence: u64,
    pub(super) value: String,
    pub(super) invoke: u64,
    pub(super) done: u64,
    pub(super) accepted: Option<bool>,
}

/// A renew or release with a known outcome.
#[derive(Debug, Clone)]
pub(super) struct Ownership<'a> {
    pub(super) proc: u64,
    pub(super) key: &'a str,
    pub(super) fence: u64,
    pub(super) sent: u64,
    pub(super) ok: bool,
    /// [`Op::Renew`] or [`Op::Release`].
    pub(super) op: Op,
}

/// A process stopped from `from` to `to`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pause {
    pub(super) proc: u64,
    pub(super) from: u64,
    pub(super) to: u64,
}

/// A release as sent (a release through `try_lock` carries no fence).
#[derive(Debug, Clone)]
struct Release<'a> {
    proc: u64,
    key: &'a str,
    fence: Option<u64>,
    sent: u64,
}

/// One run's events, indexed once for every invariant.
#[derive(Debug)]
pub(super) struct RunIndex<'a> {
    pub(super) meta: &'a Meta,
    /// The job table's final state, if it was saved.
    pub(super) table: Option<&'a [JobRow]>,
    /// The lease, in nanoseconds.
    pub(super) lease: u64,
    /// The time of the first event: messages count from it.
    t0: u64,
    /// (process, time) of every kill.
    pub(super) kills: Vec<(u64, u64)>,
    pub(super) pauses: Vec<Pause>,
    /// When the store came back from each restart.
    pub(super) restarts: Vec<u64>,
    /// Each time the store server was stopped (proc 0 in the pause; never a worker's).
    pub(super) store_pauses: Vec<Pause>,
    /// When each failover was done (the replica promoted and a replica of it in sync again).
    pub(super) failovers: Vec<u64>,
    /// Each failover from its start to its end: the store may grant nothing meanwhile (a
    /// store that waits for a replica has none until the old primary is back in sync).
    pub(super) failover_windows: Vec<Pause>,
    /// Store calls that failed because the store saw a fence go back (a failover or restart
    /// that lost writes), as the store reported them.
    pub(super) regressions: u64,
    /// A worker cut off the store from `from` to `to` (a partition, not a pause).
    pub(super) partitions: Vec<Pause>,
    /// The store cluster's leader cut off its peers and clients (proc [`STORE`] partitions):
    /// until a new leader is elected and the clients find it, the store may grant nothing.
    pub(super) leader_partitions: Vec<Pause>,
    /// Workers' wall clocks stepped off the real time (the steps back not counted).
    pub(super) clock_steps: u64,
    /// Workers whose store replies were delayed (the ends of the delays not counted).
    pub(super) slowed: u64,
    /// Each worker's replies delayed from `from` to `to` (one never ended lasts to the end).
    pub(super) slow_windows: Vec<Pause>,
    /// Per key, in the order answered.
    pub(super) grants: BTreeMap<&'a str, Vec<Grant>>,
    /// Per key, (process, time) of every acquire sent.
    pub(super) wants: HashMap<&'a str, Vec<(u64, u64)>>,
    /// By (process, key, fence).
    pub(super) tenures: BTreeMap<(u64, &'a str, u64), Tenure<'a>>,
    /// Per key, in the order answered.
    pub(super) writes: BTreeMap<&'a str, Vec<Write>>,
    pub(super) ownership: Vec<Ownership<'a>>,
    pub(super) cs_enters: Vec<&'a Event>,
    pub(super) renew_invokes: Vec<&'a Event>,
    pub(super) losts: Vec<&'a Event>,
    /// Process -> the time it exited normally.
    pub(super) exits: HashMap<u64, u64>,
    /// (process, key, lock object) -> when its last enqueue answered `Waiting` was sent: a grant
    /// reported later by `wait_for_grant` was made after it, and the lock's deadline counts from
    /// it. Per lock object: another object of the process, waiting for the key too, may have an
    /// older enqueue answered in between.
    queued_since: HashMap<(u64, &'a str, Option<&'a str>), u64>,
    /// (process, key, lock object) -> the fence of a grant `wait_for_grant` reported to it. The
    /// lock takes such a grant without asking the store again, or else confirms it with an
    /// enqueue: the next enqueue of that object answered is that confirmation.
    reported: HashMap<(u64, &'a str, Option<&'a str>), u64>,
    /// The waiter queue's entries and grants, for I7.
    pub(super) queue: QueueIndex<'a>,
}

impl<'a> RunIndex<'a> {
    /// Indexes `run`'s events, taken in time order.
    pub(super) fn new(run: &'a Run) -> RunIndex<'a> {
        let mut events: Vec<&Event> = run.events.iter().collect();
        events.sort_by_key(|e| e.t_ns);
        let mut ix = RunIndex {
            meta: &run.meta,
            table: run.table.as_deref(),
            lease: run.meta.lease_ns,
            t0: events.first().map_or(0, |e| e.t_ns),
            kills: Vec::new(),
            pauses: Vec::new(),
            restarts: Vec::new(),
            store_pauses: Vec::new(),
            partitions: Vec::new(),
            leader_partitions: Vec::new(),
            clock_steps: 0,
            slowed: 0,
            slow_windows: Vec::new(),
            failovers: Vec::new(),
            failover_windows: Vec::new(),
            regressions: 0,
            grants: BTreeMap::new(),
            wants: HashMap::new(),
            tenures: BTreeMap::new(),
            writes: BTreeMap::new(),
            ownership: Vec::new(),
            cs_enters: Vec::new(),
            renew_invokes: Vec::new(),
            losts: Vec::new(),
            exits: HashMap::new(),
            queued_since: HashMap::new(),
            reported: HashMap::new(),
            queue: QueueIndex::new(&events, run.meta.lease_ns),
        };
        ix.nemesis(&events);
        let (releases, last_event) = ix.operations(&events);
        ix.end_tenures(&releases, &last_event);
        ix
    }

    /// Kills, pauses (a pause never resumed lasts as planned; one of proc 0 stops the store
    /// server), store restarts and partitions (one never healed lasts as planned).
    fn nemesis(&mut self, events: &[&'a Event]) {
        let mut open_pauses: HashMap<u64, (u64, u64)> = HashMap::new(); // proc -> (from, planned)
        let mut failing_over: Option<u64> = None;
        let mut open_cuts: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut open_slow: HashMap<u64, u64> = HashMap::new(); // proc -> from
        for e in events {
            match e.op {
                Op::Partition => {
                    open_cuts.insert(e.proc, (e.t_ns, e.dur_ns.unwrap_or(0)));
                }
                Op::Heal => {
                    if let Some((from, _)) = open_cuts.remove(&e.proc) {
                        self.add_partition(Pause {
                            proc: e.proc,
                            from,
                            to: e.t_ns,
                        });
                    }
                }
                Op::Clock if e.value.as_deref() != Some("+0s") => self.clock_steps += 1,
                Op::Slow if e.dur_ns.is_some_and(|d| d > 0) => {
                    self.slowed += 1;
                    open_slow.entry(e.proc).or_insert(e.t_ns);
                }
                Op::Slow => {
                    if let Some(from) = open_slow.remove(&e.proc) {
                        self.slow_windows.push(Pause {
                            proc: e.proc,
                            from,
                            to: e.t_ns,
                        });
                    }
                }
                Op::Kill => self.kills.push((e.proc, e.t_ns)),
                Op::Pause => {
                    open_pauses.insert(e.proc, (e.t_ns, e.dur_ns.unwrap_or(0)));
                }
                Op::Resume => {
                    if let Some((from, _)) = open_pauses.remove(&e.proc) {
                        self.add_pause(Pause {
                            proc: e.proc,
                            from,
                            to: e.t_ns,
                        });
                    }
                }
                Op::Restart if e.kind != Kind::Invoke => self.restarts.push(e.t_ns),
                Op::Failover if e.kind == Kind::Invoke => failing_over = Some(e.t_ns),
                Op::Failover => {
                    self.failovers.push(e.t_ns);
                    if let Some(from) = failing_over.take() {
                        self.failover_windows.push(Pause {
                            proc: e.proc,
                            from,
                            to: e.t_ns,
                        });
                    }
                }
                _ => {}
            }
        }
        for (proc, (from, planned)) in open_pauses {
            self.add_pause(Pause {
                proc,
                from,
                to: from + planned.max(1),
            });
        }
        for (proc, from) in open_slow {
            self.slow_windows.push(Pause {
                proc,
                from,
                to: u64::MAX,
            });
        }
        for (proc, (from, planned)) in open_cuts {
            self.add_partition(Pause {
                proc,
                from,
                to: from + planned.max(1),
            });
        }
    }

    fn add_partition(&mut self, p: Pause) {
        if p.proc == STORE {
            self.leader_partitions.push(p);
        } else {
            self.partitions.push(p);
        }
    }

    /// Whether `proc` was cut off the store at `t`, or within `after` of its heal (its client
    /// may take that long to connect again).
    pub(super) fn cut_off(&self, proc: u64, t: u64, after: u64) -> bool {
        self.partitions
            .iter()
            .any(|p| p.proc == proc && p.from <= t && t <= p.to + after)
    }

    fn add_pause(&mut self, p: Pause) {
        if p.proc == STORE {
            self.store_pauses.push(p);
        } else {
            self.pauses.push(p);
        }
    }

    /// Pairs invokes with their outcomes, per process, key, operation and lock object, into
    /// grants, tenures
    /// (not yet ended), writes and ownership calls. Returns the releases sent and each process's
    /// last event of its own, which end the tenures.
    fn operations(&mut self, events: &[&'a Event]) -> (Vec<Release<'a>>, HashMap<u64, u64>) {
        // Per lock object too (`waiter`): a process may have calls of two lock objects on one
        // key in flight (a retry with a new object while the old call hangs on a stopped
        // store), and the store may answer them in either order.
        let mut pending: HashMap<(u64, &str, Op, Option<&str>), VecDeque<&Event>> = HashMap::new();
        let mut releases = Vec::new();
        let mut last_event: HashMap<u64, u64> = HashMap::new();
        for &e in events {
            if !matches!(
                e.op,
                Op::Kill
                    | Op::Pause
                    | Op::Resume
                    | Op::Restart
                    | Op::Partition
                    | Op::Heal
                    | Op::Failover
                    | Op::Clock
                    | Op::Slow
            ) {
                last_event.insert(e.proc, e.t_ns);
            }
            if e.error
                .as_deref()
                .is_some_and(|m| m.contains(" store fence regression: "))
            {
                self.regressions += 1;
            }
            let slot = (e.proc, e.key.as_str(), e.op, e.waiter.as_deref());
            match (e.op, e.kind) {
                (op, Kind::Invoke) if is_call(op) => {
                    pending.entry(slot).or_default().push_back(e);
                    match e.op {
                        Op::Acquire | Op::Enqueue => {
                            self.wants.entry(&e.key).or_default().push((e.proc, e.t_ns));
                        }
                        Op::Release => releases.push(Release {
                            proc: e.proc,
                            key: &e.key,
                            fence: e.fence,
                            sent: e.t_ns,
                        }),
                        Op::Renew => self.renew_invokes.push(e),
                        _ => {}
                    }
                }
                (op, _) if is_call(op) => {
                    let invoke = pending
                        .get_mut(&slot)
                        .and_then(|q| q.pop_front())
                        .unwrap_or(e);
                    self.outcome(invoke, e);
                }
                (Op::CsEnter, _) => self.cs_enters.push(e),
                (Op::Lost, _) => self.losts.push(e),
                (Op::Exit, _) => {
                    self.exits.insert(e.proc, e.t_ns);
                }
                _ => {}
            }
        }
        (releases, last_event)
    }

    /// Records the outcome `e` of the operation sent as `invoke`.
    fn outcome(&mut self, invoke: &'a Event, e: &'a Event) {
        let ok = e.kind == Kind::Ok;
        if e.op == Op::Enqueue && e.kind != Kind::Info {
            // The confirmation of a reported grant: answered with another fence (or none), the
            // lock never took that grant.
            let object = (e.proc, e.key.as_str(), e.waiter.as_deref());
            if let Some(fence) = self.reported.remove(&object)
                && !(ok && e.fence == Some(fence))
                && let Some(t) = self.tenures.get_mut(&(e.proc, e.key.as_str(), fence))
            {
                t.abandoned = Some(invoke.t_ns);
            }
        }
        match e.op {
            Op::Acquire | Op::Enqueue if ok => {
                if let Some(fence) = e.fence {
                    self.grant(e, fence, invoke.t_ns);
                }
            }
            Op::Enqueue if e.kind == Kind::Fail => {
                self.queued_since
                    .insert((e.proc, &e.key, e.waiter.as_deref()), invoke.t_ns);
            }
            Op::GrantWait if ok => {
                // Made after the last enqueue answered Waiting: the lock counts its deadline
                // from that enqueue's send time, as from an acquire's.
                if let Some(fence) = e.fence {
                    let sent = self
                        .queued_since
                        .get(&(e.proc, e.key.as_str(), e.waiter.as_deref()))
                        .copied()
                        .unwrap_or(invoke.t_ns);
                    self.grant(e, fence, sent);
                    self.reported
                        .insert((e.proc, &e.key, e.waiter.as_deref()), fence);
                }
            }
            Op::Renew | Op::Release if e.kind != Kind::Info => {
                if let Some(fence) = invoke.fence.or(e.fence) {
                    self.ownership.push(Ownership {
                        proc: e.proc,
                        key: &e.key,
                        fence,
                        sent: invoke.t_ns,
                        ok,
                        op: e.op,
                    });
                    if ok && e.op == Op::Renew {
                        if let Some(t) = self.tenures.get_mut(&(e.proc, e.key.as_str(), fence)) {
                            t.extensions.push((invoke.t_ns, e.t_ns));
                        }
                    }
                }
            }
            Op::Write => {
                if let Some(fence) = invoke.fence.or(e.fence) {
                    self.writes.entry(&e.key).or_default().push(Write {
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

    /// A grant answered by `e` (an acquire, an enqueue or a reported grant), whose lease counts
    /// from `sent`: a tenure starts, or an existing one of that fence is extended.
    fn grant(&mut self, e: &'a Event, fence: u64, sent: u64) {
        self.grants.entry(&e.key).or_default().push(Grant {
            proc: e.proc,
            fence,
            invoke: sent,
            ok: e.t_ns,
        });
        let t = self
            .tenures
            .entry((e.proc, &e.key, fence))
            .or_insert_with(|| Tenure {
                proc: e.proc,
                key: &e.key,
                fence,
                start: e.t_ns,
                extensions: Vec::new(),
                end: u64::MAX,
                lost: None,
                released: false,
                abandoned: None,
            });
        t.extensions.push((sent, e.t_ns));
    }

    /// Ends every tenure at the first of its release, its loss signal, its process's death or
    /// its process's last event.
    fn end_tenures(&mut self, releases: &[Release<'_>], last_event: &HashMap<u64, u64>) {
        let kills = &self.kills;
        let kill_of = |proc: u64| kills.iter().find(|k| k.0 == proc).map(|k| k.1);
        for t in self.tenures.values_mut() {
            let mut end = last_event.get(&t.proc).copied().unwrap_or(t.start);
            if let Some(k) = kill_of(t.proc).filter(|&k| k >= t.start) {
                end = end.min(k);
            }
            for r in releases {
                if r.proc == t.proc
                    && r.key == t.key
                    && r.fence.is_none_or(|f| f == t.fence)
                    && r.sent >= t.start
                {
                    end = end.min(r.sent);
                    t.released = true;
                }
            }
            for l in &self.losts {
                if l.proc == t.proc && l.key == t.key && l.fence == Some(t.fence) {
                    end = end.min(l.t_ns);
                    t.lost = Some(l.t_ns);
                }
            }
            if let Some(a) = t.abandoned {
                end = end.min(a);
            }
            t.end = end.max(t.start);
        }
    }

    /// Per key, its tenures in the order they started.
    pub(super) fn tenures_by_key(&self) -> BTreeMap<&'a str, Vec<&Tenure<'a>>> {
        let mut by_key: BTreeMap<&str, Vec<&Tenure<'a>>> = BTreeMap::new();
        for t in self.tenures.values() {
            by_key.entry(t.key).or_default().push(t);
        }
        for v in by_key.values_mut() {
            v.sort_by_key(|t| t.start);
        }
        by_key
    }

    /// `t` as seconds into the run, for messages.
    pub(super) fn at(&self, t: u64) -> String {
        format!("+{:.3} s", t.saturating_sub(self.t0) as f64 / 1e9)
    }

    /// Whether `proc` was paused longer than half the lease at some time in `from .. to`.
    pub(super) fn long_pause_within(&self, proc: u64, from: u64, to: u64) -> bool {
        self.pauses
            .iter()
            .any(|p| p.proc == proc && p.to - p.from > self.lease / 2 && p.from < to && p.to > from)
    }

    /// When the last pause of `proc` that began by `t` ended.
    pub(super) fn paused_until(&self, proc: u64, t: u64) -> Option<u64> {
        self.pauses
            .iter()
            .filter(|p| p.proc == proc && p.from <= t)
            .map(|p| p.to)
            .max()
    }

    /// The tenure an event of a process names by its key and fence.
    pub(super) fn tenure_of(&self, e: &'a Event) -> Option<&Tenure<'a>> {
        e.fence
            .and_then(|f| self.tenures.get(&(e.proc, e.key.as_str(), f)))
    }

    /// Pauses longer than the lease.
    pub(super) fn long_pauses(&self) -> u64 {
        self.pauses
            .iter()
            .filter(|p| p.to - p.from > self.lease)
            .count() as u64
    }

    /// Acquire ok events.
    pub(super) fn acquisitions(&self) -> u64 {
        self.grants.values().map(Vec::len).sum::<usize>() as u64
    }
}

/// Whether `op` is a call with an invoke and an outcome (a store call or a fenced write), whose
/// two events the index pairs.
fn is_call(op: Op) -> bool {
    matches!(
        op,
        Op::Acquire
            | Op::Renew
            | Op::Release
            | Op::Write
            | Op::Enqueue
            | Op::GrantWait
            | Op::LeaveQueue
    )
}
