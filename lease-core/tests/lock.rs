//! The lock's behaviour on the reference store, with tokio's paused clock and the fault-injecting
//! wrapper store. Tests named `mistake_N_*` each fail when mistake N of DESIGN.md section 7 is
//! put back.

use std::sync::Arc;
use std::time::Duration;

use lease_core::testing::{Fault, FaultStore};
use lease_core::{
    CrossProcessLock, Error, Fence, FenceGate, LeaseStore, MemoryStore, StoreErrorKind, TokioClock,
};
use tokio::time::{Instant, advance, sleep};

const LEASE: Duration = Duration::from_millis(500);

type Store = FaultStore<MemoryStore>;

fn store() -> Arc<Store> {
    Arc::new(FaultStore::new(MemoryStore::new()))
}

fn lock(store: &Arc<Store>, key: &str) -> CrossProcessLock<Arc<Store>> {
    CrossProcessLock::builder(store.clone(), key)
        .lease(LEASE)
        .renew_every(Duration::from_millis(100))
        .safety_margin(Duration::from_millis(50))
        .backoff(Duration::from_millis(10), Duration::from_secs(1))
        .clock(Arc::new(TokioClock::new()))
        .build()
        .expect("valid lock settings")
}

/// Lets spawned tasks (releases, heartbeats) run without moving the paused clock much.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    sleep(Duration::from_micros(10)).await;
}

#[tokio::test(start_paused = true)]
async fn acquire_renew_release_round_trip() {
    let s = store();
    let a = lock(&s, "k");
    let g = a.try_lock_once().await.unwrap();
    assert_eq!(g.fence(), Fence::FIRST);
    assert!(!g.is_dirty());
    // Held across many lease lengths: the heartbeat renews.
    sleep(LEASE * 10).await;
    assert!(g.is_held());
    assert!(
        s.calls().renew >= 40,
        "renewed every 100 ms: {:?}",
        s.calls()
    );
    assert!(s.inner().holder("k").is_some());
    g.release().await.unwrap();
    assert_eq!(
        s.inner().holder("k"),
        None,
        "explicit release frees the key"
    );
}

#[tokio::test(start_paused = true)]
async fn mistake_1_renew_errors_are_retried_then_signal_loss() {
    let s = store();
    let a = lock(&s, "k");
    let g = a.lock().await.unwrap();
    // A couple of transient failures: retried, the lease survives.
    s.update(|f| f.fail_next = 2);
    sleep(LEASE * 2).await;
    assert!(
        g.is_held(),
        "two transient renew errors must be retried, not end the lease"
    );
    let renewals = s.calls().renew;
    assert!(renewals >= 3);

    // Every renewal fails from now on: the holder must be told, by its deadline.
    s.update(|f| f.fail_renewals = true);
    let started = Instant::now();
    tokio::time::timeout(LEASE, g.lost())
        .await
        .expect("loss signal must fire by the deadline");
    assert!(
        started.elapsed() <= LEASE,
        "signalled after {:?}",
        started.elapsed()
    );
    assert!(
        s.calls().renew > renewals + 1,
        "failures are retried until the deadline"
    );
    assert!(!g.is_held());
    // The heartbeat has stopped: no more store calls for this lease.
    let calls = s.calls();
    sleep(LEASE * 4).await;
    assert_eq!(
        s.calls().renew,
        calls.renew,
        "a lost lease is not renewed again"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_renew_error_is_an_immediate_loss() {
    let s = store();
    let a = lock(&s, "k");
    let g = a.lock().await.unwrap();
    s.update(|f| f.break_renewals = true);
    tokio::time::timeout(Duration::from_millis(150), g.lost())
        .await
        .expect("a permanent error ends the lease at the next renewal");
}

#[tokio::test(start_paused = true)]
async fn mistake_2_no_reentrant_guard_after_loss() {
    let s = store();
    let a = lock(&s, "k");
    let g = a.lock().await.unwrap();
    // Another holder takes the key: the store refuses the next renewal.
    s.update(|f| f.refuse_renewals = true);
    g.lost().await;
    s.inner().expire("k");
    let thief = lock(&s, "k");
    let tg = thief
        .try_lock_once()
        .await
        .expect("the key is free in the store");
    // `g` is still alive, so the holder count is positive; it must not short-circuit.
    let before = s.calls().try_lock;
    match a.try_lock_once().await {
        Err(Error::Busy { .. }) => {}
        other => panic!("a lost lease must not hand out guards, got {other:?}"),
    }
    assert_eq!(
        s.calls().try_lock,
        before + 1,
        "the attempt after a loss goes to the store"
    );
    drop(tg);
}

#[tokio::test(start_paused = true)]
async fn deadline_passing_without_heartbeat_is_a_loss_on_the_fast_path() {
    let s = store();
    let a = lock(&s, "k");
    let g = a.lock().await.unwrap();
    // Renewals hang (a store that stopped answering): the deadline must end the lease.
    s.update(|f| f.delay = Duration::from_secs(3600));
    sleep(LEASE).await;
    assert!(!g.is_held());
    assert!(g.loss_token().is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn mistake_3_backoff_is_per_call_and_not_sticky() {
    let s = store();
    let a = lock(&s, "k");
    let b = lock(&s, "k");
    let ga = a.lock().await.unwrap();
    match b.lock_timeout(Duration::from_millis(300)).await {
        Err(Error::TimedOut { waited, .. }) => assert!(waited >= Duration::from_millis(300)),
        other => panic!("expected a time-out, got {other:?}"),
    }
    // A second call starts with fresh backoff: it keeps trying and gets the key once released.
    let before = s.calls().try_lock;
    let waiter = tokio::spawn(async move { b.lock_timeout(Duration::from_secs(30)).await });
    sleep(Duration::from_secs(2)).await;
    assert!(!waiter.is_finished());
    assert!(
        s.calls().try_lock >= before + 3,
        "the second call must keep retrying"
    );
    drop(ga);
    let gb = waiter
        .await
        .unwrap()
        .expect("the second waiter acquires after the release");
    assert!(gb.fence() > Fence::FIRST);
}

#[tokio::test(start_paused = true)]
async fn mistake_3_concurrent_waiters_do_not_share_a_give_up() {
    let s = store();
    let holder = lock(&s, "k");
    let g = holder.lock().await.unwrap();
    let impatient = lock(&s, "k");
    let patient = impatient.clone();
    let short =
        tokio::spawn(async move { impatient.lock_timeout(Duration::from_millis(50)).await });
    let long = tokio::spawn(async move { patient.lock_timeout(Duration::from_secs(20)).await });
    assert!(matches!(short.await.unwrap(), Err(Error::TimedOut { .. })));
    sleep(Duration::from_secs(3)).await;
    drop(g);
    let _g = long
        .await
        .unwrap()
        .expect("the patient waiter is unaffected by the impatient one");
}

#[tokio::test(start_paused = true)]
async fn mistake_4_release_is_prompt_and_wakes_waiters() {
    let s = store();
    let a = lock(&s, "k");
    let b = lock(&s, "k");
    let g = a.lock().await.unwrap();
    // The waiter backs off far longer than any release should take.
    let b2 = CrossProcessLock::builder(s.clone(), "k")
        .lease(LEASE)
        .renew_every(Duration::from_millis(100))
        .backoff(Duration::from_secs(5), Duration::from_secs(5))
        .clock(Arc::new(TokioClock::new()))
        .build()
        .unwrap();
    drop(b);
    let waiter = tokio::spawn(async move {
        let g = b2.lock().await.unwrap();
        (Instant::now(), g)
    });
    sleep(Duration::from_millis(1234)).await;
    let dropped_at = Instant::now();
    drop(g);
    settle().await;
    assert!(
        s.inner().holder("k").is_some(),
        "someone holds it: the waiter"
    );
    let (acquired_at, gb) = waiter.await.unwrap();
    let handoff = acquired_at - dropped_at;
    assert!(
        handoff < Duration::from_millis(5),
        "the release must be sent at once and wake the waiter, handoff took {handoff:?}"
    );
    assert!(gb.fence() > Fence::FIRST);
}

#[tokio::test(start_paused = true)]
async fn mistake_4_in_process_release_wakes_a_local_waiter_without_the_store() {
    // A store without notifications: only the in-process wake-up can be quick.
    #[derive(Clone)]
    struct Quiet(MemoryStore);
    impl LeaseStore for Quiet {
        async fn try_lock(
            &self,
            lease: Duration,
            key: &str,
            holder: &str,
        ) -> Result<Option<Fence>, lease_core::StoreError> {
            self.0.try_lock(lease, key, holder).await
        }
        async fn release(
            &self,
            key: &str,
            holder: &str,
            fence: Fence,
        ) -> Result<bool, lease_core::StoreError> {
            self.0.release(key, holder, fence).await
        }
        fn capabilities(&self) -> lease_core::Capabilities {
            lease_core::Capabilities::new("quiet")
        }
    }
    let s = Quiet(MemoryStore::new());
    let a = CrossProcessLock::builder(s.clone(), "k")
        .lease(LEASE)
        .backoff(Duration::from_secs(5), Duration::from_secs(5))
        .clock(Arc::new(TokioClock::new()))
        .build()
        .unwrap();
    let g = a.lock().await.unwrap();
    let g2 = g.clone();
    let a2 = a.clone();
    drop(g);
    drop(g2);
    // Release in flight; a waiter of the same lock must not sleep through its 5 s backoff.
    let started = Instant::now();
    let g = a2.lock().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(g.fence().get(), 2);
}

#[tokio::test(start_paused = true)]
async fn mistake_5_expiry_never_compares_process_clocks() {
    // Two holders whose local clocks disagree by an hour in both directions; the store's clock
    // decides expiry, so neither can steal the other's valid lease.
    #[derive(Debug)]
    struct Skewed(TokioClock, Duration, bool);
    impl lease_core::Clock for Skewed {
        fn now(&self) -> Duration {
            if self.2 {
                self.0.now() + self.1
            } else {
                self.1.saturating_sub(self.0.now())
            }
        }
    }
    let s = store();
    let ahead = CrossProcessLock::builder(s.clone(), "k")
        .lease(LEASE)
        .clock(Arc::new(Skewed(
            TokioClock::new(),
            Duration::from_secs(3600),
            true,
        )))
        .build()
        .unwrap();
    let behind = CrossProcessLock::builder(s.clone(), "k")
        .lease(LEASE)
        .clock(Arc::new(Skewed(
            TokioClock::new(),
            Duration::from_secs(7200),
            true,
        )))
        .build()
        .unwrap();
    let g = ahead.lock().await.unwrap();
    for _ in 0..10 {
        sleep(LEASE / 2).await;
        assert!(matches!(
            behind.try_lock_once().await,
            Err(Error::Busy { .. })
        ));
        assert!(g.is_held());
    }
}

#[tokio::test(start_paused = true)]
async fn mistake_6_timeout_is_a_deadline_not_the_backoff_cap() {
    let s = store();
    let a = lock(&s, "k");
    let _g = a.lock().await.unwrap();
    let b = CrossProcessLock::builder(s.clone(), "k")
        .lease(LEASE)
        .backoff(Duration::from_millis(10), Duration::from_secs(10))
        .clock(Arc::new(TokioClock::new()))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = b
        .lock_timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::TimedOut { .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(310),
        "the time-out must be honoured exactly, not rounded to a backoff step: {took:?}"
    );
    // And with no deadline, reaching the backoff cap is not giving up.
    let c = lock(&s, "k");
    let waiter = tokio::spawn(async move { c.lock().await });
    sleep(Duration::from_secs(30)).await;
    assert!(!waiter.is_finished(), "lock() waits past the backoff cap");
    drop(_g);
    let _g = waiter.await.unwrap().expect("acquired after the release");
}

#[tokio::test(start_paused = true)]
async fn sub_millisecond_and_long_durations_are_exact() {
    let s = store();
    let long = CrossProcessLock::builder(s.clone(), "long")
        .lease(Duration::from_secs(60 * 24 * 3600))
        .clock(Arc::new(TokioClock::new()))
        .build()
        .expect("a 60-day lease is a valid Duration");
    assert_eq!(long.lease(), Duration::from_secs(60 * 24 * 3600));
    let g = long.lock().await.unwrap();
    assert!(g.is_held());
}

#[tokio::test(start_paused = true)]
async fn mistake_7_lock_objects_never_share_a_holder() {
    let s = store();
    let a = lock(&s, "k");
    let b = lock(&s, "k");
    let ga = a.lock().await.unwrap();
    assert!(
        matches!(b.try_lock_once().await, Err(Error::Busy { .. })),
        "a second lock object is a different holder"
    );
    drop(ga);
    // An explicit stable holder cannot be used twice for one key in one process.
    let s1 = CrossProcessLock::builder(s.clone(), "k")
        .holder("service-1")
        .build()
        .unwrap();
    let err = CrossProcessLock::builder(s.clone(), "k")
        .holder("service-1")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("already used"), "{err}");
    // ...but for another key it can, and once the first object is gone, again.
    CrossProcessLock::builder(s.clone(), "other")
        .holder("service-1")
        .build()
        .unwrap();
    drop(s1);
    CrossProcessLock::builder(s.clone(), "k")
        .holder("service-1")
        .build()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn mistake_8_guard_clones_count_and_dropping_the_lock_keeps_the_lease() {
    let s = store();
    let a = lock(&s, "k");
    let g1 = a.lock().await.unwrap();
    let g2 = g1.clone();
    let g3 = a.try_lock_once().await.unwrap();
    assert_eq!(a.guards(), 3);
    assert_eq!(g3.fence(), g1.fence(), "re-entrant guards share the grant");
    drop(a);
    drop(g1);
    settle().await;
    sleep(LEASE * 3).await;
    assert!(
        s.inner().holder("k").is_some(),
        "clones and re-entrant guards keep the lease"
    );
    assert!(g2.is_held());
    drop(g2);
    settle().await;
    assert!(s.inner().holder("k").is_some());
    drop(g3);
    settle().await;
    assert_eq!(s.inner().holder("k"), None, "the last guard releases");
}

#[tokio::test(start_paused = true)]
async fn no_heartbeat_or_key_remains_after_the_last_guard() {
    let s = store();
    let a = lock(&s, "k");
    for _ in 0..3 {
        let g = a.lock().await.unwrap();
        let _c = g.clone();
        sleep(LEASE).await;
    }
    settle().await;
    let calls = s.calls();
    sleep(LEASE * 10).await;
    assert_eq!(
        s.calls(),
        calls,
        "no store traffic after every guard dropped"
    );
    assert_eq!(s.inner().holder("k"), None);
    assert_eq!(a.guards(), 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_acquire_leaves_nothing_behind() {
    let s = store();
    let a = lock(&s, "k");
    s.update(|f| f.delay = Duration::from_millis(100));
    // Dropped while the store call is in flight.
    let r = tokio::time::timeout(Duration::from_millis(50), a.lock()).await;
    assert!(r.is_err());
    s.update(|f| f.delay = Duration::ZERO);
    sleep(Duration::from_millis(200)).await;
    settle().await;
    assert_eq!(
        s.inner().holder("k"),
        None,
        "the late grant was released at once"
    );
    assert_eq!(a.guards(), 0);
    let g = a.try_lock_once().await.unwrap();
    assert!(g.fence() > Fence::FIRST);
}

#[tokio::test(start_paused = true)]
async fn lost_acquire_reply_is_cleaned_up_and_retry_succeeds() {
    let s = store();
    let a = lock(&s, "k");
    s.update(|f| f.lose_next_replies = 1);
    let err = a.try_lock_once().await.unwrap_err();
    assert!(
        matches!(&err, Error::Store(e) if e.kind() == StoreErrorKind::Transient),
        "{err:?}"
    );
    assert_eq!(
        s.inner().holder("k"),
        None,
        "a grant whose reply was lost is not left behind"
    );
    let g = a.try_lock_once().await.expect("retry succeeds");
    assert!(g.is_held());
}

#[tokio::test(start_paused = true)]
async fn with_lock_stops_work_when_the_lease_is_lost() {
    let s = store();
    let a = lock(&s, "k");
    let s2 = s.clone();
    let r = a
        .with_lock(|_g| async move {
            s2.update(|f| f.refuse_renewals = true);
            sleep(Duration::from_secs(3600)).await;
            "finished"
        })
        .await;
    assert!(matches!(r, Err(Error::Lost { .. })), "{r:?}");
    s.set(Fault::none());
    let r = a.with_lock(|g| async move { g.fence() }).await.unwrap();
    assert!(r >= Fence::FIRST);
    settle().await;
    assert_eq!(s.inner().holder("k"), None, "with_lock releases afterwards");
}

#[tokio::test(start_paused = true)]
async fn dirty_tells_whether_someone_else_held_the_key() {
    let s = store();
    let a = lock(&s, "k");
    let b = lock(&s, "k");
    let g = a.lock().await.unwrap();
    assert!(!g.is_dirty());
    g.release().await.unwrap();
    let g = a.lock().await.unwrap();
    assert!(!g.is_dirty(), "nobody else held it");
    g.release().await.unwrap();
    b.lock().await.unwrap().release().await.unwrap();
    let g = a.lock().await.unwrap();
    assert!(g.is_dirty(), "b held it in between");
}

#[tokio::test(start_paused = true)]
async fn fenced_writes_reject_a_paused_holder() {
    // A holder paused past its lease (simulated by hanging its renewals) keeps a guard; the
    // next holder's writes win and the stale holder's write is rejected by the gate.
    let s = store();
    let gate = FenceGate::new();
    let a = lock(&s, "k");
    let b = lock(&s, "k");
    let ga = a.lock().await.unwrap();
    gate.check(ga.fence()).unwrap();
    s.update(|f| f.refuse_renewals = true);
    ga.lost().await;
    s.set(Fault::none());
    s.inner().expire("k");
    let gb = b.lock().await.unwrap();
    gate.check(gb.fence()).unwrap();
    assert!(
        gate.check(ga.fence()).is_err(),
        "the superseded holder's write is rejected"
    );
}

#[tokio::test(start_paused = true)]
async fn build_rejects_bad_settings_with_clear_errors() {
    let s = store();
    let cases: Vec<(lease_core::LockBuilder<Arc<Store>>, &str)> = vec![
        (
            CrossProcessLock::builder(s.clone(), "k").lease(Duration::ZERO),
            "longer than zero",
        ),
        (
            CrossProcessLock::builder(s.clone(), "k")
                .lease(Duration::from_secs(1))
                .renew_every(Duration::from_secs(1)),
            "renew interval",
        ),
        (
            CrossProcessLock::builder(s.clone(), "k")
                .lease(Duration::from_secs(1))
                .safety_margin(Duration::from_secs(2)),
            "safety margin",
        ),
        (CrossProcessLock::builder(s.clone(), ""), "key is empty"),
        (
            CrossProcessLock::builder(s.clone(), "k".repeat(2000)),
            "key is 2000 bytes",
        ),
        (
            CrossProcessLock::builder(s.clone(), "k").backoff(Duration::ZERO, Duration::ZERO),
            "backoff",
        ),
    ];
    for (builder, expect) in cases {
        let err = builder.build().unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        assert!(
            err.to_string().contains(expect),
            "`{err}` should mention `{expect}`"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn many_tasks_many_locks_one_winner_at_a_time() {
    // Eight "processes" (lock objects) in a loop: the critical sections never overlap and the
    // fences the gate sees only increase.
    let s = store();
    let gate = Arc::new(FenceGate::new());
    let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (l, gate, inside) = (lock(&s, "k"), gate.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let g = l.lock().await.unwrap();
                gate.check(g.fence()).expect("fences only increase");
                assert_eq!(inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
                sleep(Duration::from_millis(3)).await;
                inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(gate.highest().unwrap().get() >= 160);
    advance(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn ancestor_configuration_is_reproducible_and_slow_to_hand_over() {
    // The benchmark baseline: polling only, plain doubling, release on the next tick.
    let s = store();
    let ancestor = |s: &Arc<Store>| {
        CrossProcessLock::builder(s.clone(), "k")
            .lease(Duration::from_millis(500))
            .renew_every(Duration::from_millis(50))
            .backoff(Duration::from_millis(10), Duration::from_secs(1))
            .jitter(false)
            .wake_on_notifications(false)
            .release_delay(Duration::from_millis(50))
            .clock(Arc::new(TokioClock::new()))
            .build()
            .unwrap()
    };
    let (a, b) = (ancestor(&s), ancestor(&s));
    let g = a.lock().await.unwrap();
    let waiter = tokio::spawn(async move { b.lock().await.map(|g| (Instant::now(), g)) });
    sleep(Duration::from_millis(700)).await;
    let dropped = Instant::now();
    drop(g);
    let (acquired, _g) = waiter.await.unwrap().unwrap();
    assert!(
        acquired - dropped >= Duration::from_millis(50),
        "the release waits for the tick and the waiter for its poll: {:?}",
        acquired - dropped
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_calls_ride_out_transient_store_errors() {
    let s = store();
    let a = lock(&s, "k");
    s.update(|f| f.fail_next = 5);
    let g = a
        .lock_timeout(Duration::from_secs(5))
        .await
        .expect("retried until it worked");
    drop(g);
    settle().await;
    s.update(|f| f.fail_next = 5);
    let _g = a
        .lock()
        .await
        .expect("lock() retries short store trouble too");
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_store_is_an_error_not_a_hang() {
    let s = store();
    let a = lock(&s, "k");
    s.update(|f| f.fail_next = usize::MAX);
    let started = Instant::now();
    let err = a.lock().await.unwrap_err();
    assert!(
        matches!(&err, Error::Store(e) if e.is_transient()),
        "{err:?}"
    );
    assert!(started.elapsed() >= LEASE && started.elapsed() < LEASE * 3);
    let err = a
        .lock_timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Store(e) if e.is_transient()),
        "{err:?}"
    );
}

/// A store that batches renewals sent together, recording when each renewal arrives.
#[derive(Clone)]
struct Batching {
    store: MemoryStore,
    batched: bool,
    renewals: Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
}

impl LeaseStore for Batching {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, lease_core::StoreError> {
        self.store.try_lock(lease, key, holder).await
    }
    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, lease_core::StoreError> {
        self.renewals
            .lock()
            .unwrap()
            .push((key.to_owned(), Instant::now()));
        self.store.renew(lease, key, holder, fence).await
    }
    async fn release(
        &self,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, lease_core::StoreError> {
        self.store.release(key, holder, fence).await
    }
    fn capabilities(&self) -> lease_core::Capabilities {
        self.store
            .capabilities()
            .with_batched_renewals(self.batched)
    }
}

/// Renewal instants of keys `a` and `b`, acquired 110 ms apart and held for 3 s.
async fn renewal_times(batched: bool) -> (Vec<Instant>, Vec<Instant>) {
    let s = Batching {
        store: MemoryStore::new(),
        batched,
        renewals: Arc::default(),
    };
    let clock = Arc::new(TokioClock::new());
    let lock = |key: &str| {
        CrossProcessLock::builder(s.clone(), key)
            .lease(Duration::from_millis(900))
            .renew_every(Duration::from_millis(300))
            .safety_margin(Duration::from_millis(50))
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (lock("a"), lock("b"));
    let ga = a.try_lock_once().await.unwrap();
    sleep(Duration::from_millis(110)).await;
    let gb = b.try_lock_once().await.unwrap();
    sleep(Duration::from_secs(3)).await;
    assert!(ga.is_held() && gb.is_held());
    drop((ga, gb));
    let log = s.renewals.lock().unwrap().clone();
    let of = |k: &str| {
        log.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, t)| *t)
            .collect()
    };
    (of("a"), of("b"))
}

#[tokio::test(start_paused = true)]
async fn renewals_of_a_batching_store_leave_together() {
    let (a, b) = renewal_times(true).await;
    // One renewal per interval (the first one may come early, never late).
    assert!(a.len() >= 10 && b.len() >= 10, "{} {}", a.len(), b.len());
    for w in a.windows(2).chain(b.windows(2)) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(299) && gap <= Duration::from_millis(301),
            "{gap:?}"
        );
    }
    // Every renewal of `b` goes out with one of `a`, though `b` was granted 110 ms later.
    for t in &b {
        assert!(a.contains(t), "b renewed alone at {t:?}: a {a:?}, b {b:?}");
    }
    // Without the capability each key keeps its own schedule, 110 ms apart.
    let (a, b) = renewal_times(false).await;
    assert!(b.iter().all(|t| !a.contains(t)), "a {a:?}, b {b:?}");
}
