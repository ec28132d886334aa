//! The checker's invariants, each shown to pass a clean history and to fail a broken one.

use super::*;
use crate::history::{Kind, Op};

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
        meta: meta(name),
        events,
        table: None,
    })
}

fn meta(name: &str) -> Meta {
    Meta {
        name: name.into(),
        lease_ns: LEASE,
        backoff_cap_ns: 250 * MS,
        seed: 0,
        queued: None,
    }
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
            queued: None,
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

/// A stopped store grants and expires nothing: the takeover clock starts again when the store
/// resumes, however long it was stopped.
#[test]
fn i8_counts_from_the_end_of_a_store_pause() {
    let mut h = tenure(1, 1, 0, None);
    h.push(ev(100, 0, Op::Kill, Kind::Info, None).tap_proc(1));
    for t in [1200, 1500, 2000, 3000] {
        h.push(ev(t, 2, Op::Acquire, Kind::Invoke, None));
        h.push(ev(t + 1, 2, Op::Acquire, Kind::Fail, None));
    }
    h.extend(tenure(2, 2, 3500, Some(3600)));
    assert_eq!(invariants(h.clone()), ["I8"]);
    let mut stopped = h.clone();
    let mut p = ev(200, 0, Op::Pause, Kind::Info, None);
    p.dur_ns = Some(3000 * MS);
    stopped.push(p);
    stopped.push(ev(3200, 0, Op::Resume, Kind::Info, None));
    let r = run(stopped.clone());
    assert!(r.ok(), "{:?}", r.violations);
    // A store pause is not a worker's.
    assert_eq!((r.store_pauses, r.pauses, r.long_pauses), (1, 0, 0));
    // Still due once the store is back: asked after it resumed, never granted.
    let mut never = stopped[..stopped.len() - 4].to_vec();
    for t in [4300, 4600] {
        never.push(ev(t, 2, Op::Acquire, Kind::Invoke, None));
        never.push(ev(t + 1, 2, Op::Acquire, Kind::Fail, None));
    }
    assert_eq!(invariants(never), ["I8"]);
}

/// A process cut off the store asks for a key in vain: its asking does not make the takeover
/// due; a process that can reach the store still does.
#[test]
fn i8_does_not_count_asking_from_behind_a_partition() {
    let mut h = tenure(1, 1, 0, None);
    h.push(ev(100, 0, Op::Kill, Kind::Info, None).tap_proc(1));
    for t in [1200, 1500, 2000] {
        h.push(ev(t, 2, Op::Acquire, Kind::Invoke, None));
        h.push(ev(t + 1, 2, Op::Acquire, Kind::Fail, None));
    }
    assert_eq!(invariants(h.clone()), ["I8"]);
    let mut p = ev(1000, 0, Op::Partition, Kind::Info, None).tap_proc(2);
    p.dur_ns = Some(1500 * MS);
    h.push(p);
    h.push(ev(2500, 0, Op::Heal, Kind::Info, None).tap_proc(2));
    let r = run(h.clone());
    assert!(r.ok(), "{:?}", r.violations);
    assert_eq!((r.partitions, r.pauses), (1, 0));
    h.push(ev(1300, 3, Op::Acquire, Kind::Invoke, None));
    h.push(ev(1301, 3, Op::Acquire, Kind::Fail, None));
    assert_eq!(invariants(h), ["I8"]);
}

/// Proc 1 holds `job/1` and is killed at 100 ms; proc 2 asks for the key from 1.2 s and gets it
/// only at 2.6 s, past the takeover bound (I8) unless something held the store up meanwhile.
fn late_takeover() -> Vec<Event> {
    let mut h = tenure(1, 1, 0, None);
    h.push(ev(100, 0, Op::Kill, Kind::Info, None).tap_proc(1));
    for t in [1200, 1500, 2000] {
        h.push(ev(t, 2, Op::Acquire, Kind::Invoke, None));
        h.push(ev(t + 1, 2, Op::Acquire, Kind::Fail, None));
    }
    h.extend(tenure(2, 2, 2600, Some(2700)));
    assert_eq!(invariants(h.clone()), ["I8"]);
    h
}

/// A failover restarts the takeover clock as a restart does; a fence regression the store
/// reported is counted, not a violation.
#[test]
fn a_failover_restarts_the_takeover_clock_and_reported_regressions_are_counted() {
    let mut h = late_takeover();
    h.push(ev(1000, 0, Op::Failover, Kind::Invoke, None));
    h.push(ev(1500, 0, Op::Failover, Kind::Ok, None));
    h.push(ev(2900, 3, Op::Acquire, Kind::Invoke, None));
    let mut e = ev(2901, 3, Op::Acquire, Kind::Info, None);
    e.error = Some("redis store fence regression: the fence of \"job/1\" went back".into());
    h.push(e);
    let r = run(h);
    assert!(r.ok(), "{:?}", r.violations);
    assert_eq!((r.failovers, r.regressions), (1, 1));
}

/// A leader partition of the store cluster (a partition of proc 0) restarts the takeover clock
/// from its heal, as a store pause does, and is counted apart from workers' partitions.
#[test]
fn a_leader_partition_restarts_the_takeover_clock() {
    let mut h = late_takeover();
    let mut p = ev(1000, 0, Op::Partition, Kind::Info, None);
    p.dur_ns = Some(1500 * MS);
    h.push(p);
    h.push(ev(1500, 0, Op::Heal, Kind::Info, None));
    let r = run(h);
    assert!(r.ok(), "{:?}", r.violations);
    assert_eq!((r.leader_partitions, r.partitions), (1, 0));
}

/// Leader partitions one after the other, each beginning within the bound of the last one's
/// heal, keep restarting the takeover clock (each leader change gives the dead holder's lease
/// its full TTL again); one that begins after that bound changes nothing.
#[test]
fn leader_partitions_within_the_bound_of_the_last_keep_restarting_the_clock() {
    let mut h = tenure(1, 1, 0, None);
    h.push(ev(100, 0, Op::Kill, Kind::Info, None).tap_proc(1));
    for t in [1200, 1500, 2000, 2900] {
        h.push(ev(t, 2, Op::Acquire, Kind::Invoke, None));
        h.push(ev(t + 1, 2, Op::Acquire, Kind::Fail, None));
    }
    h.extend(tenure(2, 2, 3100, Some(3200)));
    let partition = |from: u64, to: u64| {
        let mut p = ev(from, 0, Op::Partition, Kind::Info, None);
        p.dur_ns = Some((to - from) * MS);
        [p, ev(to, 0, Op::Heal, Kind::Info, None)]
    };
    // Healed at 600: the bound ends at 600 + 2250, before the takeover at 3101.
    let mut once = h;
    once.extend(partition(500, 600));
    assert_eq!(invariants(once.clone()), ["I8"]);
    let mut twice = once.clone();
    twice.extend(partition(2800, 3000));
    let r = run(twice);
    assert!(r.ok(), "{:?}", r.violations);
    let mut after = once;
    after.extend(partition(2900, 3000));
    assert_eq!(invariants(after), ["I8"]);
}

/// Clock steps and slowed workers are counted (their ends are not), in the line and the
/// Markdown row, and change no verdict.
#[test]
fn clock_steps_and_slow_replies_are_counted_not_judged() {
    let mut h = tenure(1, 1, 0, Some(500));
    for (t, value) in [(100, "+3600s"), (400, "+0s"), (600, "-3600s")] {
        let mut e = ev(t, 0, Op::Clock, Kind::Info, None).tap_proc(1);
        e.value = Some(value.into());
        h.push(e);
    }
    for (t, delay) in [(100, 750 * MS), (300, 0)] {
        let mut e = ev(t, 0, Op::Slow, Kind::Info, None).tap_proc(1);
        e.dur_ns = Some(delay);
        h.push(e);
    }
    let r = run(h);
    assert!(r.ok(), "{:?}", r.violations);
    assert_eq!((r.clock_steps, r.slowed), (2, 1));
    assert!(
        r.line()
            .ends_with(", 2 clock steps, 1 slowed, 0 leader partitions: ok"),
        "{}",
        r.line()
    );
    let row = r.markdown_row();
    assert!(row.contains("| 2 clock steps, 1 slowed |"), "{row}");
    assert_eq!(
        row.matches('|').count(),
        Report::MARKDOWN_HEADER
            .lines()
            .next()
            .unwrap()
            .matches('|')
            .count()
    );
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

/// A grant reported by `wait_for_grant` that reaches the lock too late to vouch for (a slow
/// link): the lock asks the store again (an enqueue of the same lock object), which answers
/// with a later grant; the reported one lapsed unused, and a process that exits after releasing
/// the later one holds nothing (found by a 30-minute `pause,slow,clock` soak on SQLite).
#[test]
fn a_reported_grant_the_lock_confirmed_otherwise_is_not_held() {
    let mut h = tenure(1, 1, 0, Some(100));
    h.extend(enqueue(10, 2, 1000, Kind::Fail, Some(1)));
    h.push(ev(20, 2, Op::GrantWait, Kind::Invoke, None));
    h.push(ev(101, 2, Op::GrantWait, Kind::Ok, Some(2)));
    // The report reached the lock 1.5 s later; the key had lapsed and gone to proc 3 meanwhile.
    h.extend(tenure(3, 3, 1200, Some(1300)));
    h.extend(enqueue(1600, 2, 1000, Kind::Ok, Some(4)));
    h.push(ev(1700, 2, Op::Release, Kind::Invoke, Some(4)));
    h.push(ev(1701, 2, Op::Release, Kind::Ok, Some(4)));
    h.push(ev(1800, 2, Op::Exit, Kind::Info, None));
    let r = run(h.clone());
    assert!(r.ok(), "{:?}", r.violations);
    // Confirmed with its own fence, the reported grant is held on: leaving it is I9.
    let mut kept: Vec<Event> = h.into_iter().filter(|e| e.t_ns <= 101 * MS).collect();
    kept.extend(enqueue(150, 2, 1000, Kind::Ok, Some(2)));
    kept.push(ev(300, 2, Op::Exit, Kind::Info, None));
    assert_eq!(invariants(kept), ["I9"]);
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

#[test]
fn queue_grants_are_tenures_like_acquires() {
    // Proc 1 holds fence 1 to 900; proc 2 queued at 10 and is reported fence 2 at 100, and
    // proc 3 is granted fence 3 by its enqueue at 200: the reported and the enqueue grants
    // count as tenures, so the overlaps are flagged.
    let mut h = tenure(1, 1, 0, Some(900));
    h.push(ev(10, 2, Op::Enqueue, Kind::Invoke, None));
    h.push(ev(11, 2, Op::Enqueue, Kind::Fail, Some(1)));
    h.push(ev(20, 2, Op::GrantWait, Kind::Invoke, None));
    h.push(ev(100, 2, Op::GrantWait, Kind::Ok, Some(2)));
    h.push(ev(200, 3, Op::Enqueue, Kind::Invoke, None));
    h.push(ev(201, 3, Op::Enqueue, Kind::Ok, Some(3)));
    let r = run(h);
    assert_eq!(r.acquisitions, 3);
    assert!(r.overlaps > 0, "{r:?}");
}

/// `e`, made by the lock object `w` (its `waiter`).
fn of_object(mut e: Event, w: &str) -> Event {
    e.waiter = Some(w.to_owned());
    e
}

/// An enqueue sent at `t` with `patience_ms`, answered `Waiting` (fail) or `Granted` (ok) at
/// `t + 1`.
fn enqueue(t: u64, proc: u64, patience_ms: u64, kind: Kind, fence: Option<u64>) -> Vec<Event> {
    let mut i = ev(t, proc, Op::Enqueue, Kind::Invoke, None);
    i.patience_ns = Some(patience_ms * MS);
    vec![i, ev(t + 1, proc, Op::Enqueue, kind, fence)]
}

/// A `wait_for_grant` sent at `t` that reports `fence` at `until`, and the release at `done`.
fn reported_grant(t: u64, until: u64, proc: u64, fence: u64, done: u64) -> Vec<Event> {
    vec![
        ev(t, proc, Op::GrantWait, Kind::Invoke, None),
        ev(until, proc, Op::GrantWait, Kind::Ok, Some(fence)),
        ev(done, proc, Op::Release, Kind::Invoke, Some(fence)),
        ev(done + 1, proc, Op::Release, Kind::Ok, Some(fence)),
    ]
}

/// Proc 1 holds the key to 500; proc 2 queues at 10 and proc 3 at 100, both refreshing (every
/// 200 ms, patience 1 s) until the release hands the key over at 500: to `first` (fence 2),
/// which releases at 590, then to the other (fence 3).
fn two_waiters(first: u64) -> Vec<Event> {
    let mut h = tenure(1, 1, 0, Some(500));
    for t in [10, 200, 400] {
        h.extend(enqueue(t, 2, 1000, Kind::Fail, Some(1)));
    }
    for t in [100, 300] {
        h.extend(enqueue(t, 3, 1000, Kind::Fail, Some(1)));
    }
    let second = 5 - first;
    h.extend(reported_grant(450, 502, first, 2, 590));
    h.extend(reported_grant(480, 602, second, 3, 700));
    h
}

#[test]
fn i7_passes_a_queue_served_in_order() {
    let r = run(two_waiters(2));
    assert!(r.ok(), "{:?}", r.violations);
    assert_eq!(r.queue_grants, 2);
}

#[test]
fn i7_flags_a_waiter_granted_ahead_of_an_earlier_live_one() {
    let r = run(two_waiters(3));
    assert_eq!(r.invariants(), ["I7"], "{:?}", r.violations);
    let detail = &r.violations[0].detail;
    assert!(
        detail.contains("job/1: proc 3 was granted fence 2")
            && detail.contains("ahead of proc 2, queued since +0.011 s"),
        "{detail}"
    );
}

/// Proc 1 holds the key to 500 while proc 2 queues (at 10, refreshing every 200 ms with a
/// patience of 1 s); at 505 proc 1 asks again and its enqueue is granted fence 2 at once.
fn releaser_barges() -> Vec<Event> {
    let mut h = tenure(1, 1, 0, Some(500));
    for t in [10, 200, 400] {
        h.extend(enqueue(t, 2, 1000, Kind::Fail, Some(1)));
    }
    h.extend(enqueue(505, 1, 1000, Kind::Ok, Some(2)));
    h.push(ev(590, 1, Op::Release, Kind::Invoke, Some(2)));
    h.push(ev(591, 1, Op::Release, Kind::Ok, Some(2)));
    h.extend(reported_grant(520, 602, 2, 3, 700));
    h
}

#[test]
fn i7_flags_a_newcomer_granted_past_a_live_waiter() {
    let r = run(releaser_barges());
    assert_eq!(r.invariants(), ["I7"], "{:?}", r.violations);
    let detail = &r.violations[0].detail;
    assert!(
        detail.contains("job/1: proc 1 was granted fence 2")
            && detail.contains("asking for the first time")
            && detail.contains("ahead of proc 2"),
        "{detail}"
    );
    // Counted as what it is: not a grant to a process that had queued.
    assert_eq!(r.queue_grants, 1);

    // The same newcomer after the waiter left the queue, or once it was served, is in order.
    let mut left = releaser_barges();
    left.retain(|e| !(e.proc == 2 && e.t_ns >= 520));
    left.push(ev(450, 2, Op::LeaveQueue, Kind::Invoke, None));
    left.push(ev(451, 2, Op::LeaveQueue, Kind::Fail, None));
    assert!(run(left).ok());
    let mut served = tenure(1, 1, 0, Some(500));
    for t in [10, 200, 400] {
        served.extend(enqueue(t, 2, 1000, Kind::Fail, Some(1)));
    }
    served.extend(reported_grant(450, 502, 2, 2, 590));
    served.extend(enqueue(505, 1, 1000, Kind::Fail, Some(2)));
    served.extend(reported_grant(506, 602, 1, 3, 700));
    let r = run(served);
    assert!(r.ok(), "{:?}", r.violations);

    // A grant reported by `wait_for_grant` too late to be taken, which the waiter's next
    // enqueue confirms (answered with the same fence), is not a newcomer's grant.
    let mut confirmed = tenure(1, 1, 0, Some(500));
    for t in [10, 200, 400] {
        confirmed.extend(enqueue(t, 2, 1000, Kind::Fail, Some(1)));
    }
    confirmed.extend(enqueue(100, 3, 1000, Kind::Fail, Some(1)));
    confirmed.extend(enqueue(300, 3, 1000, Kind::Fail, Some(1)));
    confirmed.push(ev(450, 2, Op::GrantWait, Kind::Invoke, None));
    confirmed.push(ev(502, 2, Op::GrantWait, Kind::Ok, Some(2)));
    confirmed.extend(enqueue(503, 2, 1000, Kind::Ok, Some(2)));
    confirmed.push(ev(590, 2, Op::Release, Kind::Invoke, Some(2)));
    confirmed.push(ev(591, 2, Op::Release, Kind::Ok, Some(2)));
    confirmed.extend(reported_grant(310, 602, 3, 3, 700));
    let r = run(confirmed);
    assert!(r.ok(), "{:?}", r.violations);
}

#[test]
fn i7_excuses_an_earlier_waiter_whose_entry_lapsed_left_or_died() {
    // Proc 2 stops refreshing after its first enqueue, with a patience of 300 ms: its entry is
    // certainly live only to 280 ms, before the grant to proc 3.
    let mut lapsed: Vec<Event> = two_waiters(3)
        .into_iter()
        .filter(|e| !(e.proc == 2 && e.op == Op::Enqueue && e.t_ns > 11 * MS))
        .collect();
    // With its patience of 1 s the one enqueue keeps it live past the grant: still flagged.
    assert_eq!(run(lapsed.clone()).invariants(), ["I7"]);
    for e in lapsed
        .iter_mut()
        .filter(|e| e.patience_ns.is_some() && e.proc == 2)
    {
        e.patience_ns = Some(300 * MS);
    }
    assert!(run(lapsed).ok());

    let mut left = two_waiters(3);
    left.push(ev(420, 2, Op::LeaveQueue, Kind::Invoke, None));
    left.push(ev(421, 2, Op::LeaveQueue, Kind::Fail, None));
    assert!(run(left).ok());

    for fault in [Op::Kill, Op::Pause] {
        let mut h = two_waiters(3);
        let mut e = ev(420, 0, fault, Kind::Info, None).tap_proc(2);
        e.dur_ns = Some(50 * MS);
        h.push(e);
        if fault == Op::Pause {
            h.push(ev(470, 0, Op::Resume, Kind::Info, None).tap_proc(2));
        }
        let r = run(h);
        assert!(
            !r.invariants().contains(&"I7"),
            "{fault:?}: {:?}",
            r.violations
        );
    }

    // A store restart may lose the queue: the order after it is a new one.
    let mut restarted = two_waiters(3);
    restarted.push(ev(430, 0, Op::Restart, Kind::Invoke, None));
    restarted.push(ev(440, 0, Op::Restart, Kind::Ok, None));
    assert!(run(restarted).ok());
}

#[test]
fn i7_needs_a_certain_order_of_the_two_enqueues() {
    // Proc 3's first enqueue is sent before proc 2's is answered: either may be first.
    let mut h = two_waiters(3);
    for e in h.iter_mut().filter(|e| e.proc == 3 && e.t_ns == 100 * MS) {
        e.t_ns = 5 * MS;
    }
    assert!(run(h).ok());
}

/// A process that waits with two lock objects one after the other has two entries, one per
/// holder: the second object's `leave_queue` does not take the first one's entry out, so the
/// first one, queued before proc 2, is rightly served first.
#[test]
fn i7_follows_each_lock_object_of_a_process_on_its_own() {
    let waiter = |mut v: Vec<Event>, w: &str| {
        for e in &mut v {
            e.waiter = Some(w.to_owned());
        }
        v
    };
    let mut h = tenure(1, 1, 0, Some(500));
    for t in [10, 200, 400] {
        h.extend(waiter(enqueue(t, 2, 1000, Kind::Fail, Some(1)), "p2"));
    }
    for t in [5, 205, 405] {
        h.extend(waiter(enqueue(t, 3, 1000, Kind::Fail, Some(1)), "a"));
    }
    h.extend(waiter(enqueue(50, 3, 1000, Kind::Fail, Some(1)), "b"));
    h.extend(waiter(
        vec![
            ev(60, 3, Op::LeaveQueue, Kind::Invoke, None),
            ev(61, 3, Op::LeaveQueue, Kind::Fail, None),
        ],
        "b",
    ));
    h.extend(waiter(reported_grant(450, 502, 3, 2, 590), "a"));
    h.extend(waiter(reported_grant(480, 602, 2, 3, 700), "p2"));
    let r = run(h.clone());
    assert!(r.ok(), "{:?}", r.violations);
    // Without telling the objects apart, b's leave would end a's entry too, and a's grant
    // would look like an overtaking.
    for e in &mut h {
        e.waiter = None;
    }
    assert_eq!(run(h).invariants(), ["I7"]);
}

/// Two lock objects of one process ask for the key while the store is stopped; it answers the
/// later one first (a grant) and the earlier one after (busy). The grant's lease counts from its
/// own call, so work right after it is no work past a deadline.
#[test]
fn calls_of_two_lock_objects_answered_out_of_order_pair_by_object() {
    let h = vec![
        of_object(ev(0, 1, Op::Acquire, Kind::Invoke, None), "x"),
        of_object(ev(900, 1, Op::Acquire, Kind::Invoke, None), "y"),
        of_object(ev(1200, 1, Op::Acquire, Kind::Ok, Some(1)), "y"),
        of_object(ev(1201, 1, Op::Acquire, Kind::Fail, None), "x"),
        ev(1210, 1, Op::CsEnter, Kind::Info, Some(1)),
        of_object(ev(1300, 1, Op::Release, Kind::Invoke, Some(1)), "y"),
        of_object(ev(1301, 1, Op::Release, Kind::Ok, Some(1)), "y"),
    ];
    let r = run(h.clone());
    assert!(r.ok(), "{:?}", r.violations);
    // Paired in the order sent instead, the grant would count from 0 and the work at 1210
    // would be past its deadline.
    let blind: Vec<Event> = h
        .into_iter()
        .map(|mut e| {
            e.waiter = None;
            e
        })
        .collect();
    assert_eq!(run(blind).invariants(), ["I5"]);
}

/// On a queued store the key goes to the oldest live waiter; one killed before it heard of its
/// grant holds the key for that grant's lease, so each waiter killed meanwhile adds a lease to
/// the takeover bound (only there: elsewhere a dead waiter holds nothing).
#[test]
fn i8_on_a_queued_store_allows_a_lease_per_waiter_killed_before_the_takeover() {
    let mut h = tenure(1, 1, 0, None);
    h.push(ev(100, 0, Op::Kill, Kind::Info, None).tap_proc(1));
    h.extend(enqueue(200, 2, 1000, Kind::Fail, Some(1)));
    h.push(ev(1150, 0, Op::Kill, Kind::Info, None).tap_proc(2));
    for t in [1200, 1700, 2200] {
        h.extend(enqueue(t, 3, 1000, Kind::Fail, Some(2)));
    }
    h.extend(enqueue(2700, 3, 1000, Kind::Ok, Some(3)));
    let r = run_named("redis-queued/kill", h.clone());
    assert!(r.ok(), "{:?}", r.violations);
    assert_eq!(run_named("redis/kill", h.clone()).invariants(), ["I8"]);
    // `run.json`'s `queued` says it where present, whatever the name; the name only stands in
    // for it in histories older than the field.
    let with = |name: &str, queued| {
        let mut r = Run {
            meta: meta(name),
            events: h.clone(),
            table: None,
        };
        r.meta.queued = Some(queued);
        check(&r)
    };
    assert!(with("redis/kill", true).ok());
    assert_eq!(with("redis-queued/kill", false).invariants(), ["I8"]);
}

/// On a queued store a waiter whose replies are slowed may be granted the key and hear of it
/// only after its lock gave up: that grant lapses, so the waiter's slow window adds a lease to
/// the takeover bound, as a killed waiter does (found in a 10-minute `kill,slow` run on SQLite).
#[test]
fn i8_on_a_queued_store_allows_a_lease_per_waiter_slowed_before_the_takeover() {
    let mut h = tenure(1, 1, 0, None);
    h.push(ev(100, 0, Op::Kill, Kind::Info, None).tap_proc(1));
    h.extend(enqueue(200, 2, 1000, Kind::Fail, Some(1)));
    for t in [1200, 1700, 2200] {
        h.extend(enqueue(t, 3, 1000, Kind::Fail, Some(2)));
    }
    h.extend(enqueue(2700, 3, 1000, Kind::Ok, Some(3)));
    assert_eq!(
        run_named("redis-queued/kill", h.clone()).invariants(),
        ["I8"]
    );
    let mut slow = ev(800, 0, Op::Slow, Kind::Info, None).tap_proc(2);
    slow.dur_ns = Some(1500 * MS);
    let mut healed = ev(2800, 0, Op::Slow, Kind::Info, None).tap_proc(2);
    healed.dur_ns = Some(0);
    h.extend([slow, healed]);
    let r = run_named("redis-queued/kill", h.clone());
    assert!(r.ok(), "{:?}", r.violations);
    // A slow window of a process that never waited for the key changes nothing.
    let mut other = h.clone();
    for e in other.iter_mut().filter(|e| e.op == Op::Slow) {
        e.proc = 4;
    }
    assert_eq!(run_named("redis-queued/kill", other).invariants(), ["I8"]);
}

/// A process waiting for a key with two lock objects, one after the other: the grant reported
/// to the newer one counts from that object's own last enqueue, not from an older enqueue of
/// the other object that the store answered in between (a 10-minute `kill,store-pause` run on
/// PostgreSQL was flagged by I5 so, its grant counted from the other object's enqueue).
#[test]
fn a_reported_grant_counts_from_its_own_lock_objects_enqueue() {
    let h = vec![
        // The old object's enqueue, sent at 0 and answered only at 1020 (a stopped store).
        of_object(ev(0, 1, Op::Enqueue, Kind::Invoke, None), "old"),
        // The new object's, sent at 1000, answered at 1019: queued.
        of_object(ev(1000, 1, Op::Enqueue, Kind::Invoke, None), "new"),
        of_object(ev(1019, 1, Op::Enqueue, Kind::Fail, Some(1)), "new"),
        of_object(ev(1019, 1, Op::GrantWait, Kind::Invoke, None), "new"),
        of_object(ev(1020, 1, Op::Enqueue, Kind::Fail, Some(1)), "old"),
        // The new object is told of its grant at 1033 and works until 1060: within a lease
        // (1 s) of its own enqueue at 1000, not of the old one's at 0.
        of_object(ev(1033, 1, Op::GrantWait, Kind::Ok, Some(2)), "new"),
        ev(1036, 1, Op::CsEnter, Kind::Info, Some(2)),
        ev(1060, 1, Op::CsExit, Kind::Info, Some(2)),
        of_object(ev(1061, 1, Op::Release, Kind::Invoke, Some(2)), "new"),
        of_object(ev(1062, 1, Op::Release, Kind::Ok, Some(2)), "new"),
    ];
    let r = run(h);
    assert!(r.ok(), "{:?}", r.violations);
}
