//! Queued grants ([`EtcdStoreBuilder::queued_grants`]) against a real etcd, beyond what the
//! conformance suite checks on one store: the range compare the queue relies on, two stores on
//! one server (as two processes) served in one order, a release through one store waking the
//! waiter of the other with its fence, a revoked holder's key going to the head waiter, a
//! revoked waiter skipped, a plain and a queued store sharing a key, a store upgraded from plain
//! records, and the lock serving lock objects of two stores in the order they queued.
//!
//! Timing bounds are generous (the test machine is shared and noisy): they tell a wake-up by
//! watch from a wait that ran to its `max_wait`, nothing finer.
//!
//! [`EtcdStoreBuilder::queued_grants`]: lease_etcd::EtcdStoreBuilder::queued_grants

mod common;

use std::time::{Duration, Instant};

use lease_core::{CrossProcessLock, Enqueued, Fence, LeaseStore};
use lease_etcd::EtcdStore;
use lease_etcd::etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

const LONG: Duration = Duration::from_secs(30);
/// How long a wait may run before the test calls the wake-up missing: far above any wake-up
/// by watch, far below the waits' `max_wait`.
const WOKEN_WITHIN: Duration = Duration::from_secs(5);

/// Two queued stores on one server and one prefix: two processes sharing keys.
async fn two_stores(endpoint: &str, name: &str) -> (EtcdStore, EtcdStore) {
    let prefix = common::unique_prefix(name);
    (
        common::queued_store_at(endpoint, &prefix).await,
        common::queued_store_at(endpoint, &prefix).await,
    )
}

async fn enqueue(store: &EtcdStore, key: &str, holder: &str) -> Enqueued {
    store
        .enqueue(LONG, key, holder, LONG)
        .await
        .unwrap_or_else(|e| panic!("enqueue of {key:?} by {holder:?}: {e}"))
}

async fn waiting(store: &EtcdStore, key: &str, holder: &str) -> Option<Fence> {
    match enqueue(store, key, holder).await {
        Enqueued::Waiting { fence } => fence,
        other => panic!("expected {holder:?} to be queued for {key:?}, got {other:?}"),
    }
}

async fn granted(store: &EtcdStore, key: &str, holder: &str) -> Fence {
    match enqueue(store, key, holder).await {
        Enqueued::Granted(f) => f,
        other => panic!("expected {holder:?} to hold {key:?}, got {other:?}"),
    }
}

/// The holder and fence the record shows.
async fn record(store: &EtcdStore, key: &str) -> (Option<String>, Option<Fence>) {
    let state = store.inspect(key).await.expect("inspect");
    (state.holder, state.fence)
}

/// Starts `wait_for_grant` in a task; its result comes with how long it waited.
fn wait_in_task(
    store: &EtcdStore,
    key: &str,
    holder: &str,
    max_wait: Duration,
) -> tokio::task::JoinHandle<(Option<Fence>, Duration)> {
    let (store, key, holder) = (store.clone(), key.to_owned(), holder.to_owned());
    tokio::spawn(async move {
        let started = Instant::now();
        let got = store.wait_for_grant(&key, &holder, max_wait).await;
        (got, started.elapsed())
    })
}

/// Polls until `check` holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The queue's "no waiter" test is a range compare `CreateRevision([q, end)) == 0`: etcd
/// compares an empty range as one key with create revision 0, and a non-empty one key by key.
/// Checked here on the server the store runs against, not assumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_compare_over_an_empty_range_sees_create_revision_zero() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let mut c = Client::connect([endpoint.as_str()], None).await.unwrap();
    let q = common::unique_prefix("range-compare").into_bytes();
    let mut end = q.clone();
    *end.last_mut().unwrap() += 1;
    let empty = || Compare::create_revision(q.clone(), CompareOp::Equal, 0).with_range(end.clone());
    let ok = |c: Compare| Txn::new().when([c]);
    assert!(c.txn(ok(empty())).await.unwrap().succeeded(), "empty range");
    let mut w = q.clone();
    w.extend_from_slice(b"w");
    c.put(w.clone(), "x", None).await.unwrap();
    assert!(
        !c.txn(ok(empty())).await.unwrap().succeeded(),
        "a range with a key"
    );
    // Outside the range (the next prefix) does not count.
    c.delete(w, None).await.unwrap();
    c.put(end.clone(), "y", None).await.unwrap();
    assert!(c.txn(ok(empty())).await.unwrap().succeeded(), "range end");
    // A put on a lease that does not exist fails the whole transaction.
    let txn = Txn::new().and_then([TxnOp::put(
        q.clone(),
        "z",
        Some(PutOptions::new().with_lease(0x7fff_0000_0000_0001)),
    )]);
    let e = c.txn(txn).await.expect_err("a put on a missing lease");
    assert!(e.to_string().contains("lease not found"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_two_stores_are_granted_in_the_order_they_queued() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let (a, b) = two_stores(&endpoint, "fifo").await;
    let key = "k";
    let mut last = a.try_lock(LONG, key, "first").await.unwrap().unwrap();
    let order = [("w1", &a), ("w2", &b), ("w3", &a), ("w4", &b)];
    for (w, s) in order {
        assert_eq!(
            waiting(s, key, w).await,
            Some(last),
            "Waiting reports the key's fence"
        );
    }
    assert_eq!(a.waiters(key).await.unwrap(), ["w1", "w2", "w3", "w4"]);
    // A newcomer through either store queues behind them.
    assert_eq!(b.try_lock(LONG, key, "eve").await.unwrap(), None);
    let mut holder = ("first", &a);
    for (w, s) in order {
        assert!(holder.1.release(key, holder.0, last).await.unwrap());
        let (now_holder, fence) = record(&b, key).await;
        assert_eq!(
            now_holder.as_deref(),
            Some(w),
            "the release hands the key to the oldest waiter"
        );
        let f = granted(s, key, w).await;
        assert_eq!(Some(f), fence);
        assert!(f > last, "fences strictly increase: {f:?} after {last:?}");
        last = f;
        holder = (w, s);
    }
    assert!(holder.1.release(key, holder.0, last).await.unwrap());
    assert_eq!(record(&a, key).await, (None, Some(last)));
    assert!(a.waiters(key).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_through_one_store_wakes_the_waiter_of_the_other_with_its_fence() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let (a, b) = two_stores(&endpoint, "wake").await;
    let key = "k";
    for round in 0..3 {
        let holder = format!("a{round}");
        let f = a.try_lock(LONG, key, &holder).await.unwrap().unwrap();
        let bob = format!("bob{round}");
        assert_eq!(waiting(&b, key, &bob).await, Some(f));
        let waiter = wait_in_task(&b, key, &bob, Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(a.release(key, &holder, f).await.unwrap());
        let (got, waited) = waiter.await.unwrap();
        let (now_holder, g) = record(&a, key).await;
        assert_eq!(now_holder.as_deref(), Some(bob.as_str()));
        assert_eq!(got, g, "the waiter learns its grant and its fence");
        assert!(g > Some(f));
        assert!(
            waited < WOKEN_WITHIN,
            "the grant did not wake the waiter: {waited:?}"
        );
        // Its next enqueue finds the same grant, and its renew keeps it.
        let g = granted(&b, key, &bob).await;
        assert!(b.renew(LONG, key, &bob, g).await.unwrap());
        assert!(b.release(key, &bob, g).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_holders_key_goes_to_the_head_waiter() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let (a, b) = two_stores(&endpoint, "revoked-holder").await;
    let key = "k";
    let f = a.try_lock(LONG, key, "alice").await.unwrap().unwrap();
    assert_eq!(waiting(&b, key, "bob").await, Some(f));
    assert_eq!(waiting(&b, key, "carol").await, Some(f));
    let waiter = wait_in_task(&b, key, "bob", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Alice's process dies: etcd deletes its keys with its session lease.
    a.revoke_sessions().await.unwrap();
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got, None, "a vacant key is a change, not a grant");
    assert!(waited < WOKEN_WITHIN, "the delete did not wake: {waited:?}");
    // A newcomer cannot barge past the live head; the head's next enqueue takes it.
    assert_eq!(a.try_lock(LONG, key, "eve").await.unwrap(), None);
    assert_eq!(record(&b, key).await.0.as_deref(), Some("bob"));
    let g = granted(&b, key, "bob").await;
    assert!(g > f, "fences strictly increase: {g:?} after {f:?}");
    assert_eq!(b.waiters(key).await.unwrap(), ["carol"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_session_is_revoked_is_skipped() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let prefix = common::unique_prefix("revoked-waiter");
    let a = common::queued_store_at(&endpoint, &prefix).await;
    let b = common::queued_store_at(&endpoint, &prefix).await;
    let c = common::queued_store_at(&endpoint, &prefix).await;
    let key = "k";
    let f = a.try_lock(LONG, key, "alice").await.unwrap().unwrap();
    waiting(&b, key, "bob").await;
    waiting(&c, key, "carol").await;
    b.revoke_sessions().await.unwrap();
    assert_eq!(a.waiters(key).await.unwrap(), ["carol"]);
    assert!(a.release(key, "alice", f).await.unwrap());
    assert_eq!(record(&a, key).await.0.as_deref(), Some("carol"));
    let g = granted(&c, key, "carol").await;
    assert!(g > f);
    // Bob, back on a new session, queues at the end.
    assert_eq!(waiting(&b, key, "bob").await, Some(g));
    assert_eq!(a.waiters(key).await.unwrap(), ["bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_and_a_queued_store_never_both_hold_a_key_and_fences_increase() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let prefix = common::unique_prefix("mixed");
    let plain = common::store_at(&endpoint, &prefix).await;
    let queued = common::queued_store_at(&endpoint, &prefix).await;
    let key = "k";
    let mut last: Option<Fence> = None;
    let mut bump = |f: Fence| {
        assert!(
            Some(f) > last,
            "fences strictly increase: {f:?} after {last:?}"
        );
        last = Some(f);
    };
    // Plain holds: the queued store's callers are refused or queued.
    let f = plain.try_lock(LONG, key, "p1").await.unwrap().unwrap();
    bump(f);
    assert_eq!(queued.try_lock(LONG, key, "q0").await.unwrap(), None);
    assert_eq!(waiting(&queued, key, "q1").await, Some(f));
    assert_eq!(plain.try_lock(LONG, key, "p2").await.unwrap(), None);
    // A plain release frees the key; the queued waiter's next enqueue takes it.
    let waiter = wait_in_task(&queued, key, "q1", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(plain.release(key, "p1", f).await.unwrap());
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got, None);
    assert!(waited < WOKEN_WITHIN, "{waited:?}");
    let g = granted(&queued, key, "q1").await;
    bump(g);
    // Queued holds: the plain store is refused.
    assert_eq!(plain.try_lock(LONG, key, "p2").await.unwrap(), None);
    assert!(
        !plain
            .release(key, "q1", Fence::new(g.get() + 1).unwrap())
            .await
            .unwrap()
    );
    // A queued release with an empty queue frees the key for the plain store.
    assert!(queued.release(key, "q1", g).await.unwrap());
    let h = plain.try_lock(LONG, key, "p2").await.unwrap().unwrap();
    bump(h);
    assert_eq!(queued.try_lock(LONG, key, "q2").await.unwrap(), None);
    // A plain store's break raises the fence past a queued waiter's next grant too.
    waiting(&queued, key, "q2").await;
    let broken = plain.break_lock(key).await.unwrap().unwrap();
    bump(broken.fence);
    let i = granted(&queued, key, "q2").await;
    bump(i);
    assert_eq!(record(&plain, key).await, (Some("q2".into()), Some(i)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_upgraded_from_plain_records_keeps_fences_increasing() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let prefix = common::unique_prefix("upgrade");
    let key = "k";
    let last;
    {
        // Today's deployment: plain grants and releases, counter versions 1, 2, 3.
        let plain = common::store_at(&endpoint, &prefix).await;
        for i in 0..3 {
            let h = format!("old{i}");
            let f = plain.try_lock(LONG, key, &h).await.unwrap().unwrap();
            assert_eq!(f.get(), i + 1);
            assert!(plain.release(key, &h, f).await.unwrap());
        }
        // One still holds across the upgrade.
        let f = plain
            .try_lock(LONG, key, "old-holder")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(f.get(), 4);
        let queued = common::queued_store_at(&endpoint, &prefix).await;
        assert_eq!(waiting(&queued, key, "new1").await, Some(f));
        assert!(plain.release(key, "old-holder", f).await.unwrap());
        let g = granted(&queued, key, "new1").await;
        assert!(g > f);
        last = Some(g);
        assert!(queued.release(key, "new1", g).await.unwrap());
    }
    let queued = common::queued_store_at(&endpoint, &prefix).await;
    let h = queued.try_lock(LONG, key, "new2").await.unwrap().unwrap();
    assert!(Some(h) > last, "{h:?} after {last:?}");
    assert_eq!(h.get(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_serves_lock_objects_of_two_stores_in_the_order_they_queued() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let (a, b) = two_stores(&endpoint, "lock").await;
    let lock = |store: &EtcdStore, label: &str| {
        CrossProcessLock::builder(store.clone(), "job")
            .lease(Duration::from_secs(5))
            .holder_label(label)
            .build()
            .expect("valid lock settings")
    };
    let first = lock(&a, "a");
    let held = first.lock().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, (label, store)) in [("b", &b), ("c", &a), ("d", &b), ("e", &a)]
        .into_iter()
        .enumerate()
    {
        let (l, tx) = (lock(store, label), tx.clone());
        tokio::spawn(async move {
            let g = l.lock_timeout(Duration::from_secs(60)).await.expect("lock");
            let _ = tx.send((label, g));
        });
        // Queued before the next one starts.
        eventually(
            Duration::from_secs(10),
            &format!("{label} queues"),
            || async { a.waiters("job").await.unwrap().len() > i },
        )
        .await;
    }
    let mut fence = held.fence();
    held.release().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        let (label, g) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the next waiter is served")
            .expect("a grant");
        assert!(g.fence() > fence, "fences strictly increase");
        fence = g.fence();
        order.push(label);
        tokio::time::sleep(Duration::from_millis(50)).await;
        g.release().await.unwrap();
    }
    assert_eq!(order, ["b", "c", "d", "e"]);
    assert!(a.waiters("job").await.unwrap().is_empty());
    let again = first.try_lock_once().await.unwrap();
    assert!(again.fence() > fence);
}

/// The handoff, measured: the median of release → grant seen by the waiter of the other store
/// (its `wait_for_grant` returning), against the median of a plain put on the same server, 200
/// of each, interleaved. The key stays contended: two waiters are queued at every release, as
/// in a busy fleet. Not a correctness test: run it by name with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by name with --ignored --nocapture"]
async fn handoff_latency() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let (a, b) = two_stores(&endpoint, "handoff").await;
    let stores = [a.clone(), b.clone()];
    let mut c = Client::connect([endpoint.as_str()], None).await.unwrap();
    let put_key = common::unique_prefix("handoff-put");
    let key = "k";
    let (mut handoffs, mut releases, mut puts) = (Vec::new(), Vec::new(), Vec::new());
    let mut f = a.try_lock(LONG, key, "w0").await.unwrap().unwrap();
    // Waiter `wi` queues through store `i % 2`; `w0` holds, `w1` is queued.
    waiting(&stores[1], key, "w1").await;
    for i in 1..=200 {
        let started = Instant::now();
        c.put(put_key.as_str(), format!("{i}"), None).await.unwrap();
        puts.push(started.elapsed());
        let next = format!("w{}", i + 1);
        waiting(&stores[(i + 1) % 2], key, &next).await;
        let me = format!("w{i}");
        let waiter = {
            let (s, me) = (stores[i % 2].clone(), me.clone());
            tokio::spawn(async move {
                let got = s.wait_for_grant(key, &me, LONG).await;
                (got, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let holder = format!("w{}", i - 1);
        assert!(stores[(i - 1) % 2].release(key, &holder, f).await.unwrap());
        releases.push(started.elapsed());
        let (got, seen) = waiter.await.unwrap();
        handoffs.push(seen - started);
        f = got.expect("the waiter learns its grant");
    }
    for v in [&mut handoffs, &mut releases, &mut puts] {
        v.sort();
    }
    let (h, r, p) = (handoffs[100], releases[100], puts[100]);
    println!(
        "etcd handoff p50 {h:?} (release → grant seen by the other store; the release call \
         {r:?}), put p50 {p:?}, ratio {:.2}",
        h.as_secs_f64() / p.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_gives_up_leaves_the_queue() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let (a, b) = two_stores(&endpoint, "give-up").await;
    let lock = |store: &EtcdStore| {
        CrossProcessLock::builder(store.clone(), "job")
            .lease(Duration::from_secs(5))
            .build()
            .expect("valid lock settings")
    };
    let held = lock(&a).lock().await.unwrap();
    let err = lock(&b)
        .lock_timeout(Duration::from_millis(300))
        .await
        .expect_err("the key is held");
    assert!(matches!(err, lease_core::Error::TimedOut { .. }), "{err}");
    // The entry is taken out in a task of its own once the waiting call gave up.
    eventually(
        WOKEN_WITHIN,
        "the waiter that gave up leaves the queue",
        || async { a.waiters("job").await.unwrap().is_empty() },
    )
    .await;
    let fence = held.fence();
    held.release().await.unwrap();
    assert_eq!(record(&a, "job").await, (None, Some(fence)));
}

/// A waiter of another store whose patience ran out is deleted by its own store (before its
/// session's next keepalive), and the release passes over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_patience_ran_out_is_deleted_by_its_store() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let (a, b) = two_stores(&endpoint, "patience").await;
    let key = "k";
    let f = a.try_lock(LONG, key, "alice").await.unwrap().unwrap();
    b.enqueue(LONG, key, "bob", Duration::from_millis(200))
        .await
        .unwrap();
    waiting(&b, key, "carol").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Carol refreshes: her store's keepalive first deletes Bob's waiter key.
    waiting(&b, key, "carol").await;
    assert_eq!(a.waiters(key).await.unwrap(), ["carol"]);
    assert!(a.release(key, "alice", f).await.unwrap());
    assert_eq!(record(&a, key).await.0.as_deref(), Some("carol"));
}

/// A waiter granted the key while it no longer asks (its process lives, and keeps the session
/// alive for another key) holds it only until its last `enqueue` + its lease: its store's sweep
/// deletes the grant, and the next waiter gets the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_to_a_waiter_that_stopped_asking_lapses_while_its_session_lives() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let (a, b) = two_stores(&endpoint, "stopped-asking").await;
    let short = Duration::from_secs(2);
    // `keeper` renews another key through b's session for this TTL all along.
    let keeper = b.try_lock(short, "other", "keeper").await.unwrap().unwrap();
    let renewing = {
        let b = b.clone();
        tokio::spawn(async move {
            loop {
                assert!(b.renew(short, "other", "keeper", keeper).await.unwrap());
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let key = "k";
    let f = a.try_lock(LONG, key, "alice").await.unwrap().unwrap();
    assert!(matches!(
        b.enqueue(short, key, "bob", LONG).await.unwrap(),
        Enqueued::Waiting { .. }
    ));
    waiting(&a, key, "carol").await;
    assert!(a.release(key, "alice", f).await.unwrap());
    assert_eq!(record(&a, key).await.0.as_deref(), Some("bob"));
    let started = Instant::now();
    let c = loop {
        if let Enqueued::Granted(c) = enqueue(&a, key, "carol").await {
            break c;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "bob's grant did not lapse although bob stopped asking"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(c > f);
    renewing.abort();
}
