//! Queued grants ([`RedisStoreBuilder::queued_grants`]) against a real redis-server, beyond
//! what the conformance suite checks on one store: two stores on one server (two connections
//! each, as two processes) served in one order, a grant announced to the waiter in the other
//! store, the hand-over of an expired lease by whoever calls next, a break waking the queue,
//! dead entries skipped and deleted, a layout-1 lease, odd keys and holders kept apart, a lost
//! subscription, and the lock serving lock objects of two stores in the order they queued and
//! taking a waiter that gave up out of the queue.
//!
//! Timing bounds are generous (the test machine is shared and noisy): they tell a wake-up by
//! message from a wait that ran to its `max_wait`, nothing finer.
//!
//! [`RedisStoreBuilder::queued_grants`]: lease_redis::RedisStoreBuilder::queued_grants

mod common;

use std::time::{Duration, Instant};

use lease_core::{CrossProcessLock, Enqueued, Fence, LeaseStore};
use lease_redis::RedisStore;
use lease_redis::redis::{self, AsyncCommands};
use lease_testkit::{RedisOptions, RedisServer};

const LONG: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(300);
/// How long a wait may run before the test calls the wake-up missing: far above any wake-up
/// by message, far below the waits' `max_wait`.
const WOKEN_WITHIN: Duration = Duration::from_secs(5);

async fn queued_store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(prefix)
        .queued_grants(true)
        .connect()
        .await
        .expect("connect to the test redis-server")
}

/// Two queued stores on one server and one prefix: two processes sharing keys.
async fn two_stores(url: &str, name: &str) -> (RedisStore, RedisStore) {
    let prefix = common::unique_prefix(name);
    (
        queued_store(url, &prefix).await,
        queued_store(url, &prefix).await,
    )
}

/// Two stores on `url` ([`two_stores`]); in the first, "alice" holds "k", and "bob" is queued
/// for it in the second. Returns the stores and alice's fence.
async fn alice_holds_bob_waits(url: &str, name: &str) -> (RedisStore, RedisStore, Fence) {
    let (a, b) = two_stores(url, name).await;
    let f = a.try_lock(LONG, "k", "alice").await.unwrap().unwrap();
    assert_eq!(waiting(&b, "k", "bob").await, Some(f));
    (a, b, f)
}

async fn enqueue(store: &RedisStore, lease: Duration, key: &str, holder: &str) -> Enqueued {
    store
        .enqueue(lease, key, holder, LONG)
        .await
        .unwrap_or_else(|e| panic!("enqueue of {key:?} by {holder:?}: {e}"))
}

async fn waiting(store: &RedisStore, key: &str, holder: &str) -> Option<Fence> {
    match enqueue(store, LONG, key, holder).await {
        Enqueued::Waiting { fence } => fence,
        other => panic!("expected {holder:?} to be queued for {key:?}, got {other:?}"),
    }
}

async fn granted(store: &RedisStore, key: &str, holder: &str) -> Fence {
    match enqueue(store, LONG, key, holder).await {
        Enqueued::Granted(f) => f,
        other => panic!("expected {holder:?} to hold {key:?}, got {other:?}"),
    }
}

/// The holder and fence the record shows.
async fn record(store: &RedisStore, key: &str) -> (Option<String>, Option<Fence>) {
    let state = store.inspect(key).await.expect("inspect");
    (state.holder, state.fence)
}

/// Starts `wait_for_grant` in a task; its result comes with how long it waited.
fn wait_in_task(
    store: &RedisStore,
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

/// The Redis keys of `key`'s queue, for a key without `{`, `}` or `%`.
fn queue_keys(store: &RedisStore, key: &str) -> [String; 3] {
    ["q", "d", "w"].map(|s| format!("{}{{{key}}}:{s}", store.prefix()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_two_stores_are_granted_in_the_order_they_queued() {
    let Some(url) = common::url() else { return };
    let (a, b) = two_stores(&url, "fifo").await;
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
    assert_eq!(b.waiters(key).await.unwrap(), ["w1", "w2", "w3", "w4"]);
    let mut holder = ("first", &a);
    for (w, s) in order {
        // Each release goes through the store of the holder; the other store's waiters are
        // served all the same.
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
    let mut conn = a.connection();
    for k in queue_keys(&a, key) {
        let exists: bool = conn.exists(&k).await.unwrap();
        assert!(
            !exists,
            "{k} is left behind after the last waiter was served"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_through_one_store_wakes_the_waiter_of_the_other_with_its_fence() {
    let Some(url) = common::url() else { return };
    let (a, b) = two_stores(&url, "wake").await;
    let key = "k";
    for round in 0..3 {
        let holder = format!("a{round}");
        let f = a.try_lock(LONG, key, &holder).await.unwrap().unwrap();
        let bob = format!("bob{round}");
        assert_eq!(waiting(&b, key, &bob).await, Some(f));
        let waiter = wait_in_task(&b, key, &bob, Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(a.release(key, &holder, f).await.unwrap());
        let (got, waited) = waiter.await.unwrap();
        let (now_holder, g) = record(&a, key).await;
        assert_eq!(now_holder.as_deref(), Some(bob.as_str()));
        assert_eq!(got, g, "the waiter learns its grant and its fence");
        assert!(g > Some(f));
        assert!(
            waited < WOKEN_WITHIN,
            "the grant message did not wake the waiter: {waited:?}"
        );
        // Its next enqueue finds the same grant.
        let g = granted(&b, key, &bob).await;
        assert!(b.release(key, &bob, g).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_announced_before_the_wait_is_not_missed() {
    let Some(url) = common::url() else { return };
    let (a, b, f) = alice_holds_bob_waits(&url, "gap").await;
    let key = "k";
    // The grant is announced while nobody waits on it yet.
    assert!(a.release(key, "alice", f).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let got = b.wait_for_grant(key, "bob", Duration::from_secs(10)).await;
    let waited = started.elapsed();
    let (_, g) = record(&a, key).await;
    assert_eq!(got, g, "the announcement was kept for the wait");
    assert!(
        waited < WOKEN_WITHIN,
        "the wait missed the grant: {waited:?}"
    );
    // The announcement is used up: the next wait waits (and says nothing).
    let started = Instant::now();
    assert_eq!(
        b.wait_for_grant(key, "bob", Duration::from_millis(300))
            .await,
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_handed_to_the_oldest_waiter_by_whoever_calls_next() {
    let Some(url) = common::url() else { return };
    let (a, b) = two_stores(&url, "expiry").await;
    let key = "k";
    // The holder dies: its lease is never renewed nor released.
    let f = a.try_lock(SHORT, key, "dead").await.unwrap().unwrap();
    // Bob asks for a short lease (and dies too, once granted); Carol queues behind him.
    match b.enqueue(SHORT, key, "bob", LONG).await.unwrap() {
        Enqueued::Waiting { fence } => assert_eq!(fence, Some(f)),
        other => panic!("bob must wait, got {other:?}"),
    }
    waiting(&a, key, "carol").await;
    let bob = wait_in_task(&b, key, "bob", Duration::from_secs(20));
    let carol = wait_in_task(&a, key, "carol", Duration::from_secs(20));
    tokio::time::sleep(SHORT * 2).await;
    // Redis announces no expiry. The next call, a newcomer's plain try_lock through the other
    // store, finds the lease expired, grants it to the head and announces it.
    assert_eq!(a.try_lock(LONG, key, "eve").await.unwrap(), None);
    let (got, waited) = bob.await.unwrap();
    let (now_holder, g1) = record(&a, key).await;
    assert_eq!(now_holder.as_deref(), Some("bob"));
    assert_eq!(got, g1);
    assert!(g1 > Some(f));
    assert!(waited < Duration::from_secs(15), "bob waited {waited:?}");
    // Bob's grant lapses with his short lease. This time a newcomer's enqueue hands the key
    // on, and its Waiting answer carries the fence of the grant it just made.
    tokio::time::sleep(SHORT * 2).await;
    let seen = waiting(&b, key, "dave").await;
    let (got, waited) = carol.await.unwrap();
    let (now_holder, g2) = record(&a, key).await;
    assert_eq!(now_holder.as_deref(), Some("carol"));
    assert_eq!(got, g2);
    assert!(g2 > g1);
    assert_eq!(seen, g2, "Waiting reports the key's latest fence");
    assert!(waited < Duration::from_secs(15), "carol waited {waited:?}");
    assert_eq!(a.waiters(key).await.unwrap(), ["dave"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_wakes_the_queued_waiter_and_its_next_enqueue_takes_the_key() {
    let Some(url) = common::url() else { return };
    let (a, b, f) = alice_holds_bob_waits(&url, "break").await;
    let key = "k";
    let waiter = wait_in_task(&b, key, "bob", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A break frees the key and grants nobody; it is announced as a release, which wakes the
    // queued waiter (with no grant to report).
    let broken = a.break_lock(key).await.unwrap().expect("a held key");
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got, None);
    assert!(
        waited < WOKEN_WITHIN,
        "the break did not wake the waiter: {waited:?}"
    );
    let g = granted(&b, key, "bob").await;
    assert!(g > broken.fence && broken.fence > f);
}

/// A key still under layout 1 (a TTL'd `:lock` hash and a `:fence` counter): its live lease
/// queues the waiters as any lease does, and when it lapses the head gets the next fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_layout_one_lease_queues_waiters_and_fences_continue() {
    let Some(url) = common::url() else { return };
    let (a, b) = two_stores(&url, "layout1").await;
    let (old_lock, old_fence) = (
        format!("{}{{k}}:lock", a.prefix()),
        format!("{}{{k}}:fence", a.prefix()),
    );
    let mut conn = a.connection();
    let _: () = redis::pipe()
        .hset_multiple(&old_fence, &[("f", "41"), ("h", "old")])
        .hset_multiple(&old_lock, &[("f", "41"), ("h", "old")])
        .pexpire(&old_lock, 60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(a.try_lock(LONG, "k", "eve").await.unwrap(), None);
    assert_eq!(waiting(&b, "k", "bob").await, Fence::new(41));
    // The old lease lapses; the next call hands the key to Bob, not to the caller.
    let _: () = conn.del(&old_lock).await.unwrap();
    assert_eq!(a.try_lock(LONG, "k", "eve").await.unwrap(), None);
    assert_eq!(
        record(&a, "k").await,
        (Some("bob".to_owned()), Fence::new(42))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_whose_patience_ran_out_are_skipped_and_deleted() {
    let Some(url) = common::url() else { return };
    let (a, b) = two_stores(&url, "patience").await;
    let key = "k";
    let f = a.try_lock(LONG, key, "alice").await.unwrap().unwrap();
    // Bob stops refreshing his entry (his process died); Carol keeps hers.
    assert!(matches!(
        b.enqueue(LONG, key, "bob", SHORT).await.unwrap(),
        Enqueued::Waiting { .. }
    ));
    waiting(&a, key, "carol").await;
    assert_eq!(a.waiters(key).await.unwrap(), ["bob", "carol"]);
    tokio::time::sleep(SHORT * 2).await;
    assert_eq!(b.waiters(key).await.unwrap(), ["carol"]);
    assert!(a.release(key, "alice", f).await.unwrap());
    assert_eq!(record(&b, key).await.0.as_deref(), Some("carol"));
    // Bob's dead entry went with the grant: nothing of the queue is left.
    let mut conn = a.connection();
    for k in queue_keys(&a, key) {
        let exists: bool = conn.exists(&k).await.unwrap();
        assert!(!exists, "{k} still holds a dead entry");
    }
    // Back again, Bob queues anew, behind any live waiter.
    waiting(&a, key, "dave").await;
    waiting(&b, key, "bob").await;
    assert_eq!(a.waiters(key).await.unwrap(), ["dave", "bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_and_holders_keep_their_queues_and_grants_apart() {
    let Some(url) = common::url() else { return };
    let (a, b) = two_stores(&url, "odd").await;
    let keys = [
        "{a}", "a", "{a}:q", "a}:q", "a}:d{", "%7Ba%7D", "a:w", "1:a", "{", "}", "a\0b", "日本",
    ];
    let mut fences = Vec::new();
    for k in keys {
        fences.push(a.try_lock(LONG, k, "holder").await.unwrap().unwrap());
    }
    for (i, k) in keys.iter().enumerate() {
        waiting(&b, k, &format!("w{i}")).await;
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(a.waiters(k).await.unwrap(), [format!("w{i}")], "key {k:?}");
    }
    for (i, (k, f)) in keys.iter().zip(&fences).enumerate() {
        assert!(a.release(k, "holder", *f).await.unwrap());
        assert_eq!(record(&a, k).await.0, Some(format!("w{i}")), "key {k:?}");
        assert!(granted(&b, k, &format!("w{i}")).await > *f);
    }
    // Grant messages name key and holder apart: ("xy", "z") is not ("x", "yz").
    let fxy = a.try_lock(LONG, "xy", "holder").await.unwrap().unwrap();
    a.try_lock(LONG, "x", "holder").await.unwrap().unwrap();
    waiting(&b, "xy", "z").await;
    waiting(&b, "x", "yz").await;
    let other = wait_in_task(&b, "x", "yz", Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(a.release("xy", "holder", fxy).await.unwrap());
    assert_eq!(
        other.await.unwrap().0,
        None,
        "a grant of (\"xy\", \"z\") reached (\"x\", \"yz\")"
    );
    let (_, g) = record(&a, "xy").await;
    assert_eq!(
        b.wait_for_grant("xy", "z", Duration::from_secs(10)).await,
        g
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_subscription_waiters_wake_and_grants_still_arrive() {
    // An own server: the test cuts every subscription of it.
    let Some(server) = RedisServer::start(RedisOptions::default()) else {
        return;
    };
    let url = server.url();
    let (a, b, f) = alice_holds_bob_waits(&url, "resubscribe").await;
    let key = "k";
    waiting(&b, key, "carol").await;
    let waiter = wait_in_task(&b, key, "bob", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = a.connection();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        killed >= 2,
        "both stores' subscriptions were cut ({killed})"
    );
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got, None, "no grant was made");
    assert!(
        waited < WOKEN_WITHIN,
        "messages may have been lost: the waiter must be woken, it waited {waited:?}"
    );
    // Carol was queued but not waiting while the subscription was lost: once it is back, her
    // next wait returns at once, since a grant to her may have been announced meanwhile.
    let channels = format!("{}grant:*", a.prefix());
    let started = Instant::now();
    loop {
        let subscribed: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(&channels)
            .query_async(&mut conn)
            .await
            .unwrap();
        if subscribed.len() >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never resubscribed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    assert_eq!(
        b.wait_for_grant(key, "carol", Duration::from_secs(20))
            .await,
        None
    );
    let waited = started.elapsed();
    assert!(
        waited < WOKEN_WITHIN,
        "a wait after a lost subscription must not trust it, it waited {waited:?}"
    );
    assert!(!b.leave_queue(key, "carol").await.unwrap());
    // A grant announced while the subscription may still be down costs latency only: the
    // waiter's next enqueue finds it in the record.
    assert!(a.release(key, "alice", f).await.unwrap());
    let g = granted(&b, key, "bob").await;
    assert!(g > f);
    assert!(b.release(key, "bob", g).await.unwrap());
    // Subscribed again, announcements arrive as before.
    let f = a.try_lock(LONG, key, "alice").await.unwrap().unwrap();
    waiting(&b, key, "bob").await;
    let waiter = wait_in_task(&b, key, "bob", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(a.release(key, "alice", f).await.unwrap());
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got, record(&a, key).await.1);
    assert!(waited < WOKEN_WITHIN, "waited {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_serves_lock_objects_of_two_stores_in_the_order_they_queued() {
    let Some(url) = common::url() else { return };
    let (a, b) = two_stores(&url, "lock").await;
    let lock = |store: &RedisStore, label: &str| {
        CrossProcessLock::builder(store.clone(), "job")
            .lease(Duration::from_secs(5))
            .holder_label(label)
            .build()
            .expect("valid lock settings")
    };
    let first = lock(&a, "a");
    let held = first.lock().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, (label, store)) in [("b", &b), ("c", &a), ("d", &b)].into_iter().enumerate() {
        let (l, tx) = (lock(store, label), tx.clone());
        tokio::spawn(async move {
            let g = l.lock_timeout(Duration::from_secs(60)).await.expect("lock");
            let _ = tx.send((label, g));
        });
        // Queued before the next one starts.
        let started = Instant::now();
        while a.waiters("job").await.unwrap().len() < i + 1 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{label} never queued"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut fence = held.fence();
    held.release().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
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
    assert_eq!(order, ["b", "c", "d"]);
    assert!(a.waiters("job").await.unwrap().is_empty());
    // And back to the first in line: the first lock, once more.
    let again = first.try_lock_once().await.unwrap();
    assert!(again.fence() > fence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_gives_up_leaves_the_queue() {
    let Some(url) = common::url() else { return };
    let (a, b) = two_stores(&url, "give-up").await;
    let lock = |store: &RedisStore| {
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
    let started = Instant::now();
    while !a.waiters("job").await.unwrap().is_empty() {
        assert!(
            started.elapsed() < WOKEN_WITHIN,
            "the entry of a waiter that gave up stays queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fence = held.fence();
    held.release().await.unwrap();
    assert_eq!(record(&a, "job").await, (None, Some(fence)));
}

/// Median time of uncontended `try_lock` calls (a grant of a free key, an extension of a held
/// one) and of `release`, on a store without and with queued grants, 2,000 of each. The two
/// stores take turns at every iteration, so both see the same machine load. Not a correctness
/// test: run it by name with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints medians"]
async fn uncontended_try_lock_latency() {
    #[derive(Default)]
    struct Samples {
        grant: Vec<Duration>,
        extend: Vec<Duration>,
        release: Vec<Duration>,
    }
    async fn once(store: &RedisStore, samples: &mut Samples) {
        let t = Instant::now();
        let f = store.try_lock(LONG, "k", "me").await.unwrap().unwrap();
        samples.grant.push(t.elapsed());
        let t = Instant::now();
        store.try_lock(LONG, "k", "me").await.unwrap().unwrap();
        samples.extend.push(t.elapsed());
        let t = Instant::now();
        assert!(store.release("k", "me", f).await.unwrap());
        samples.release.push(t.elapsed());
    }
    fn median(v: &mut [Duration]) -> Duration {
        v.sort();
        v[v.len() / 2]
    }
    let url = common::url().expect("redis-server is installed");
    let plain = common::store_on(&url, "latency").await;
    let queued = queued_store(&url, &common::unique_prefix("latency-queued")).await;
    for round in 0..3 {
        let (mut p, mut q) = (Samples::default(), Samples::default());
        for _ in 0..2000 {
            once(&queued, &mut q).await;
            once(&plain, &mut p).await;
        }
        for (name, s) in [("plain", &mut p), ("queued", &mut q)] {
            println!(
                "round {round} {name:>6}: try_lock grant p50 {:>7.1?}, try_lock extend p50 \
                 {:>7.1?}, release p50 {:>7.1?}",
                median(&mut s.grant),
                median(&mut s.extend),
                median(&mut s.release),
            );
        }
    }
}

/// Median handoff of the lock between two stores (as two processes): from the holder's
/// `LockGuard::release` until the waiter's `lock()` returns, on stores without and with queued
/// grants, taking turns every round. Not a correctness test: run it by name with `--ignored
/// --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints medians"]
async fn lock_handoff_latency() {
    let url = common::url().expect("redis-server is installed");
    let mut pairs = Vec::new();
    for queued in [false, true] {
        let prefix = common::unique_prefix("handoff");
        let store = |prefix: String| {
            let url = url.clone();
            async move {
                RedisStore::builder(url)
                    .prefix(prefix)
                    .queued_grants(queued)
                    .connect()
                    .await
                    .unwrap()
            }
        };
        let lock = |s: RedisStore| {
            CrossProcessLock::builder(s, "job")
                .lease(Duration::from_secs(5))
                .build()
                .unwrap()
        };
        let a = lock(store(prefix.clone()).await);
        let b = lock(store(prefix).await);
        pairs.push((if queued { "queued" } else { "plain" }, a, b, Vec::new()));
    }
    for _ in 0..300 {
        for (_, a, b, samples) in &mut pairs {
            let held = a.lock().await.unwrap();
            let waiter = {
                let b = b.clone();
                tokio::spawn(async move {
                    let g = b.lock().await.unwrap();
                    let at = Instant::now();
                    g.release().await.unwrap();
                    at
                })
            };
            // Let the waiter fail its first try and park.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let released = Instant::now();
            held.release().await.unwrap();
            samples.push(waiter.await.unwrap() - released);
        }
    }
    for (name, _, _, samples) in &mut pairs {
        samples.sort();
        println!(
            "{name:>6}: lock handoff p50 {:>7.1?}, p90 {:>7.1?}",
            samples[samples.len() / 2],
            samples[samples.len() * 9 / 10]
        );
    }
}
