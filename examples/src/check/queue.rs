//! The waiter queue as a run's history shows it, for I7 (no waiter is granted after a waiter that
//! enqueued later, unless the earlier one's entry lapsed).
//!
//! The history has the lock's calls, not the store's queue, and stamps of different processes:
//! so each side of the comparison is bounded the way that can only excuse a correct store.
//!
//! - An **entry** ([`Entry`]) is what the checker is *sure* a process had in a key's queue: it
//!   exists from the answer of a `Waiting` enqueue (the call was applied by then) and stays live,
//!   by the store's clock, at least until that call's send time plus 9/10 of its patience, and
//!   of the lease (a grant made to the waiter meanwhile, that it did not hear of, lapses with
//!   the lease: a later `Waiting` answer would then come from a new entry at the back). A later
//!   `Waiting` answer received before that bound refreshed the same entry (it keeps its place);
//!   one received after starts a new entry. An entry ends at its process's grant (with the
//!   fence), and, as far as the checker can be sure of it, at the first sign it may be gone: an
//!   enqueue or release of unknown outcome, a `leave_queue` sent, the process's kill (with
//!   `process_liveness` its entries die at once), pause or exit, a store restart.
//! - A **queue grant** ([`QueueGrant`]) is a grant (an enqueue answered `Granted`, a grant
//!   reported by `wait_for_grant`) to a process that had queued: it was made after that
//!   process's last `Waiting` enqueue was sent and before it was answered. Its entry *may* have
//!   existed since the first enqueue sent in an unbroken chain of its enqueues: the chain breaks
//!   only at a grant or an answered `leave_queue` of that process, or when an enqueue is sent
//!   more than twice its patience after the last `Waiting` answer (never after an enqueue of
//!   unknown outcome, which may have been applied late).
//! - A **newcomer's grant** is an enqueue answered `Granted` with no `Waiting` answer in its
//!   chain, and a fence other than the process's last grant's (an enqueue that confirms a grant
//!   `wait_for_grant` reported, or extends one, answers that grant's fence): the process asked
//!   and got the key at once. It is checked as a queue grant whose
//!   entry may have existed, and whose grant may have been made, since the chain's first enqueue
//!   was sent: a newcomer must not take the key past a live waiter either (no barging).
//!
//! One pass over the events in time order; the `wait_for_grant` polls other than a grant cost
//! nothing here.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::history::{Event, Kind, Op, STORE};

/// A queue entry a process certainly had, see the module docs.
#[derive(Debug, Clone)]
pub(super) struct Entry<'a> {
    pub(super) proc: u64,
    pub(super) key: &'a str,
    /// When the first `Waiting` answer of the entry arrived.
    pub(super) since: u64,
    /// (answered, live at least until) of each refresh, the second a running maximum.
    cover: Vec<(u64, u64)>,
    /// Where the checker stops being sure of the entry: its grant, or a sign it may be gone.
    pub(super) end: u64,
    /// The fence, when the entry ended with a grant to its process.
    pub(super) granted: Option<u64>,
}

impl Entry<'_> {
    /// How long the entry is certainly live, judged from the refreshes answered by `t`.
    pub(super) fn live_until(&self, t: u64) -> u64 {
        let n = self.cover.partition_point(|&(ok, _)| ok <= t);
        n.checked_sub(1).map_or(0, |i| self.cover[i].1)
    }

    fn covered(&self) -> u64 {
        self.cover.last().map_or(0, |c| c.1)
    }
}

/// A grant to a process that had queued for the key, see the module docs.
#[derive(Debug, Clone)]
pub(super) struct QueueGrant<'a> {
    pub(super) proc: u64,
    pub(super) key: &'a str,
    pub(super) fence: u64,
    /// The earliest its entry may have been made.
    pub(super) queued_from: u64,
    /// The grant was made in `from .. to`.
    pub(super) from: u64,
    pub(super) to: u64,
    /// A newcomer's grant (no `Waiting` answer before it): see the module docs.
    pub(super) newcomer: bool,
}

/// The queue's entries and grants of a run.
#[derive(Debug, Default)]
pub(super) struct QueueIndex<'a> {
    /// Per key, in the order of `since`.
    pub(super) entries: BTreeMap<&'a str, Vec<Entry<'a>>>,
    pub(super) grants: Vec<QueueGrant<'a>>,
}

/// One (process, key, lock object): the enqueues awaiting an answer, the entry being followed,
/// the chain.
#[derive(Default)]
struct Slot<'a> {
    pending: VecDeque<&'a Event>,
    open: Option<Entry<'a>>,
    /// The first enqueue sent in the current chain.
    chain_from: Option<u64>,
    /// (answered, patience) of the chain's last `Waiting` answer.
    chain_waiting: Option<(u64, u64)>,
    /// An enqueue of the chain had an unknown outcome.
    chain_unknown: bool,
    /// When the chain's last `Waiting` enqueue was sent.
    waiting_sent: Option<u64>,
    /// The fence of the last grant to this slot: an enqueue answered with it again is that
    /// grant confirmed or extended (as after a grant `wait_for_grant` reported too late to be
    /// taken), not a new one.
    last_fence: Option<u64>,
}

impl<'a> Slot<'a> {
    /// Stops following the open entry at `t`.
    fn close(&mut self, t: u64, done: &mut Vec<Entry<'a>>) {
        if let Some(mut e) = self.open.take() {
            e.end = e.end.min(t).min(e.covered());
            done.push(e);
        }
    }

    /// The entry is gone: a new chain starts with the next enqueue (or one still unanswered).
    fn end_chain(&mut self) {
        self.chain_from = self.pending.front().map(|e| e.t_ns);
        self.chain_waiting = None;
        self.chain_unknown = false;
        self.waiting_sent = None;
    }
}

impl<'a> QueueIndex<'a> {
    /// Indexes the queue calls of `events` (in time order); `lease` bounds an entry's certain
    /// life as the module docs say.
    pub(super) fn new(events: &[&'a Event], lease: u64) -> QueueIndex<'a> {
        // Per process, key and lock object: each lock object queues under its own holder.
        let mut slots: HashMap<(u64, &'a str, Option<&'a str>), Slot<'a>> = HashMap::new();
        let mut done: Vec<Entry<'a>> = Vec::new();
        let mut grants = Vec::new();
        for &e in events {
            match (e.op, e.kind) {
                // A waiter cut off the store cannot refresh its entry either.
                (Op::Kill | Op::Pause | Op::Partition | Op::Exit, _)
                | (Op::Restart | Op::Failover, Kind::Invoke) => {
                    // A restart or failover may lose the queue; while the store is stopped (or
                    // its leader cut off) nobody can refresh an entry, which may then lapse:
                    // the order after any of them is new.
                    let all = matches!(e.op, Op::Restart | Op::Failover)
                        || (matches!(e.op, Op::Pause | Op::Partition) && e.proc == STORE);
                    for ((proc, _, _), s) in &mut slots {
                        if all || *proc == e.proc {
                            s.close(e.t_ns, &mut done);
                        }
                    }
                    continue;
                }
                (Op::Enqueue | Op::GrantWait | Op::LeaveQueue | Op::Release, _) => {}
                _ => continue,
            }
            let s = slots
                .entry((e.proc, e.key.as_str(), e.waiter.as_deref()))
                .or_default();
            match (e.op, e.kind) {
                (Op::Enqueue, Kind::Invoke) => {
                    let lapsed = !s.chain_unknown
                        && s.chain_waiting
                            .is_some_and(|(ok, patience)| e.t_ns > ok + 2 * patience);
                    if lapsed {
                        s.chain_waiting = None;
                        s.chain_from = None;
                    }
                    s.chain_from.get_or_insert(e.t_ns);
                    s.pending.push_back(e);
                }
                (Op::Enqueue, kind) => {
                    let invoke = s.pending.pop_front().unwrap_or(e);
                    let patience = invoke.patience_ns.unwrap_or(0);
                    match kind {
                        Kind::Fail => {
                            let until = invoke.t_ns + patience.min(lease) / 10 * 9;
                            match &mut s.open {
                                Some(open) if e.t_ns < open.covered() => {
                                    let until = until.max(open.covered());
                                    open.cover.push((e.t_ns, until));
                                }
                                _ => {
                                    s.close(e.t_ns, &mut done);
                                    s.open = Some(Entry {
                                        proc: e.proc,
                                        key: &e.key,
                                        since: e.t_ns,
                                        cover: vec![(e.t_ns, until)],
                                        end: u64::MAX,
                                        granted: None,
                                    });
                                }
                            }
                            s.chain_from.get_or_insert(invoke.t_ns);
                            s.chain_waiting = Some((e.t_ns, patience));
                            s.waiting_sent = Some(invoke.t_ns);
                        }
                        Kind::Ok => {
                            if let Some(fence) = e.fence {
                                granted(s, e, fence, Some(invoke.t_ns), &mut done, &mut grants);
                            }
                        }
                        // Maybe granted, maybe queued anew: sure of nothing from here.
                        _ => {
                            s.close(invoke.t_ns, &mut done);
                            s.chain_unknown = true;
                        }
                    }
                }
                (Op::GrantWait, Kind::Ok) => {
                    if let Some(fence) = e.fence {
                        granted(s, e, fence, None, &mut done, &mut grants);
                    }
                }
                (Op::LeaveQueue | Op::Release, Kind::Invoke) => s.close(e.t_ns, &mut done),
                (Op::LeaveQueue, Kind::Ok | Kind::Fail) => s.end_chain(),
                (Op::Release, Kind::Info) => s.close(e.t_ns, &mut done),
                _ => {}
            }
        }
        for s in slots.values_mut() {
            s.close(u64::MAX, &mut done);
        }
        let mut entries: BTreeMap<&str, Vec<Entry<'a>>> = BTreeMap::new();
        for e in done {
            entries.entry(e.key).or_default().push(e);
        }
        for v in entries.values_mut() {
            v.sort_by_key(|e| e.since);
        }
        QueueIndex { entries, grants }
    }
}

/// A grant answered by `e` to the process of slot `s` (by an enqueue sent at `sent`, or
/// reported by `wait_for_grant`): its entry ends, and the grant is a queue grant if it had
/// queued, else a newcomer's.
fn granted<'a>(
    s: &mut Slot<'a>,
    e: &'a Event,
    fence: u64,
    sent: Option<u64>,
    done: &mut Vec<Entry<'a>>,
    grants: &mut Vec<QueueGrant<'a>>,
) {
    // Answered while the entry was certainly live: the grant ended it. Later, the entry may
    // have lapsed first, and the grant be to a new one.
    if let Some(open) = s.open.as_mut().filter(|o| e.t_ns <= o.covered()) {
        open.granted = Some(fence);
    }
    s.close(e.t_ns, done);
    if let (Some(queued_from), Some(from), Some(_)) =
        (s.chain_from, s.waiting_sent, s.chain_waiting)
    {
        grants.push(QueueGrant {
            proc: e.proc,
            key: &e.key,
            fence,
            queued_from,
            from,
            to: e.t_ns,
            newcomer: false,
        });
    } else if let (None, Some(from), false) = (
        s.chain_waiting,
        s.chain_from.or(sent),
        s.last_fence == Some(fence),
    ) {
        grants.push(QueueGrant {
            proc: e.proc,
            key: &e.key,
            fence,
            queued_from: from,
            from,
            to: e.t_ns,
            newcomer: true,
        });
    }
    s.last_fence = Some(fence);
    s.end_chain();
}
