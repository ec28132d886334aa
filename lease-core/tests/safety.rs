//! The lock under the call and clock faults of DESIGN.md §9 that an adversarial review used to
//! break it: late grants, suspends, releases of unknown outcome, slow or hung stores, panicking
//! stores, a runtime shut down under a live guard. Each test fails when its fix is reverted.

use std::sync::Arc;
use std::time::Duration;

use lease_core::testing::{Call, Fault, FaultStore, JumpClock};
use lease_core::{CrossProcessLock, Error, Fence, LockGuard, MemoryStore, SharedClock, TokioClock};
use tokio::time::{Instant, sleep};

const LEASE: Duration = Duration::from_millis(500);
const MARGIN: Duration = Duration::from_millis(50);

type Store = FaultStore<MemoryStore>;

/// One store with its own fault wrapper per "process", all on one clock.
fn store_on(clock: SharedClock) -> MemoryStore {
    MemoryStore::with_clock(clock)
}

fn process(store: &MemoryStore) -> Arc<Store> {
    Arc::new(FaultStore::new(store.clone()))
}

fn lock_on(s: &Arc<Store>, clock: SharedClock) -> CrossProcessLock<Arc<Store>> {
    CrossProcessLock::builder(s.clone(), "k")
        .lease(LEASE)
        .renew_every(Duration::from_millis(100))
        .safety_margin(MARGIN)
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .clock(clock)
        .build()
        .expect("valid lock settings")
}

/// Lets spawned tasks run without moving the paused clock much.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    sleep(Duration::from_micros(10)).await;
}

fn tokio_clock() -> SharedClock {
    Arc::new(TokioClock::new())
}

/// `b` must not be granted the key while `held` is held by another process.
async fn assert_not_granted_beside(b: &CrossProcessLock<Arc<Store>>, held: &LockGuard<Arc<Store>>) {
    if let Ok(gb) = b.try_lock_once().await {
        panic!(
            "b was granted fence {} while a holds fence {}: two holders",
            gb.fence(),
            held.fence()
        );
    }
}

/// A grant whose reply takes longer than lease − margin is past its deadline when it arrives:
/// it must never become a guard (another process may hold the key by then).
#[tokio::test(start_paused = true)]
async fn a_grant_answered_after_its_deadline_is_no_guard() {
    let clock = tokio_clock();
    let mem = store_on(clock.clone());
    let sa = process(&mem);
    let a = lock_on(&sa, clock.clone());
    sa.update(|f| f.reply_delay = LEASE + LEASE / 2);
    let started = Instant::now();
    match a.try_lock_once().await {
        Ok(g) => panic!(
            "a guard handed out {:?} after the call, held={}",
            started.elapsed(),
            g.is_held()
        ),
        Err(Error::Store(e)) => assert!(e.is_transient(), "{e}"),
        Err(e) => panic!("expected a transient store error, got {e:?}"),
    }
    assert!(
        started.elapsed() <= LEASE,
        "try_lock_once waited {:?}, past lease − margin",
        started.elapsed()
    );
    // The late grant is given back as soon as its reply arrives.
    sleep(LEASE).await;
    settle().await;
    assert_eq!(mem.holder("k"), None, "the late grant was not released");
    assert_eq!(a.guards(), 0);
}

/// The same on the boot clock: the reply is quick on tokio's timer, but the machine slept while
/// it was on the way, so it arrives past the deadline. It is released, not handed out.
#[tokio::test(start_paused = true)]
async fn a_grant_arriving_after_a_suspend_is_released_not_handed_out() {
    let jump = Arc::new(JumpClock::new());
    let clock: SharedClock = jump.clone();
    let mem = store_on(clock.clone());
    let sa = process(&mem);
    let a = lock_on(&sa, clock.clone());
    sa.update(|f| f.reply_delay = Duration::from_millis(20));
    let call = tokio::spawn({
        let a = a.clone();
        async move { a.try_lock_once().await.map(|g| (g.fence(), g.is_held())) }
    });
    sleep(Duration::from_millis(10)).await;
    jump.jump(Duration::from_secs(60));
    let out = call.await.unwrap();
    assert!(
        matches!(&out, Err(Error::Store(e)) if e.is_transient()),
        "a grant that arrived after a 60 s suspend became {out:?}"
    );
    settle().await;
    assert_eq!(mem.holder("k"), None, "the late grant was not released");
}

/// A late grant's release still on its way counts as a pending release: a retake by the same
/// process waits for it, instead of extending the late grant under the same holder and then
/// having that release delete it.
#[tokio::test(start_paused = true)]
async fn a_late_grant_still_being_released_holds_up_a_retake() {
    let jump = Arc::new(JumpClock::new());
    let clock: SharedClock = jump.clone();
    let mem = store_on(clock.clone());
    let (sa, sb) = (process(&mem), process(&mem));
    let (a, b) = (lock_on(&sa, clock.clone()), lock_on(&sb, clock.clone()));
    sa.update(|f| f.reply_delay = Duration::from_millis(20));
    let late = tokio::spawn({
        let a = a.clone();
        async move { a.try_lock_once().await.map(|g| g.fence()) }
    });
    sleep(Duration::from_millis(10)).await;
    jump.jump(Duration::from_secs(60));
    // The late grant's release will take 100 ms to reach the store.
    sa.update(|f| {
        f.reply_delay = Duration::ZERO;
        f.only = Some(Call::Release);
        f.delay = Duration::from_millis(100);
    });
    assert!(
        late.await.unwrap().is_err(),
        "the late grant was handed out"
    );
    let g = a
        .lock_timeout(Duration::from_secs(1))
        .await
        .expect("a retakes the key");
    sleep(Duration::from_millis(200)).await;
    settle().await;
    assert!(
        g.is_held(),
        "a's new lease must survive the late grant's release"
    );
    assert_not_granted_beside(&b, &g).await;
}

/// After a suspend longer than the lease, the loss signal fires when the machine resumes, not
/// at the next heartbeat tick on tokio's (suspended) timer.
#[tokio::test(start_paused = true)]
async fn the_loss_signal_fires_on_resume_after_a_suspend() {
    let jump = Arc::new(JumpClock::new());
    let clock: SharedClock = jump.clone();
    let mem = store_on(clock.clone());
    let sa = process(&mem);
    let a = lock_on(&sa, clock.clone());
    let g = a.try_lock_once().await.unwrap();
    sleep(Duration::from_millis(150)).await;
    let lost = g.loss_token();
    assert!(!lost.is_cancelled());
    jump.jump(Duration::from_secs(60));
    settle().await;
    assert!(
        lost.is_cancelled(),
        "the loss signal had not fired right after resuming from a 60 s suspend"
    );
    assert!(!g.is_held());
}

/// A release that fails but is applied by the store later must not delete the holder's next
/// lease: otherwise another process is granted the key while this one holds it.
#[tokio::test(start_paused = true)]
async fn a_release_applied_late_cannot_delete_a_later_lease() {
    let clock = tokio_clock();
    let mem = store_on(clock.clone());
    let (sa, sb) = (process(&mem), process(&mem));
    let (a, b) = (lock_on(&sa, clock.clone()), lock_on(&sb, clock.clone()));
    let g = a.try_lock_once().await.unwrap();
    sa.update(|f| {
        f.only = Some(Call::Release);
        f.apply_late_next = 1;
        f.apply_late_by = Duration::from_millis(200);
    });
    assert!(
        g.release().await.is_err(),
        "the injected release failure must be reported"
    );
    let g = a
        .lock_timeout(Duration::from_secs(2))
        .await
        .expect("a retakes the key");
    // The late release lands meanwhile (or already did).
    sleep(Duration::from_millis(300)).await;
    settle().await;
    assert!(g.is_held(), "a's lease must survive the late release");
    assert_not_granted_beside(&b, &g).await;
}

/// A store that is slow (or hangs) does not keep a waiting call past its deadline, whatever it
/// waits for: the store's answer, the single-flight slot, or a release still in flight.
#[tokio::test(start_paused = true)]
async fn waiting_calls_return_by_their_deadline_behind_a_slow_store() {
    let clock = tokio_clock();
    let mem = store_on(clock.clone());
    let sa = process(&mem);
    let a = lock_on(&sa, clock.clone());
    let timeout = Duration::from_millis(100);
    let slack = Duration::from_millis(5);

    // The store call itself.
    sa.update(|f| f.delay = Duration::from_secs(10));
    let started = Instant::now();
    let r = a.lock_timeout(timeout).await;
    assert!(
        matches!(r, Err(Error::TimedOut { .. })),
        "{:?}",
        r.map(|g| g.fence())
    );
    assert!(
        started.elapsed() <= timeout + slack,
        "{:?}",
        started.elapsed()
    );

    // The single-flight slot, taken by the abandoned call still in flight.
    let started = Instant::now();
    let r = a.lock_timeout(timeout).await;
    assert!(matches!(r, Err(Error::TimedOut { .. })));
    assert!(
        started.elapsed() <= timeout + slack,
        "{:?}",
        started.elapsed()
    );

    // try_lock_once has no deadline of its own, but gives up after lease − margin.
    let started = Instant::now();
    let r = a.try_lock_once().await;
    assert!(matches!(r, Err(Error::Store(ref e)) if e.is_transient()));
    assert!(
        started.elapsed() <= LEASE - MARGIN + slack,
        "{:?}",
        started.elapsed()
    );

    // A release that never answers.
    sa.update(|f| f.delay = Duration::ZERO);
    sleep(Duration::from_secs(11)).await; // the slow calls finish and release what they got
    settle().await;
    let g = a.try_lock_once().await.expect("the store is quick again");
    sa.update(|f| {
        f.only = Some(Call::Release);
        f.hang_next = 1;
    });
    drop(g);
    settle().await;
    let started = Instant::now();
    let r = a.lock_timeout(timeout).await;
    assert!(matches!(r, Err(Error::TimedOut { .. })));
    assert!(
        started.elapsed() <= timeout + slack,
        "{:?}",
        started.elapsed()
    );
    // And the key comes back: the hung release's lease lapses, and the next lease is taken
    // under a holder that release cannot match.
    let g = a
        .lock_timeout(LEASE * 4)
        .await
        .expect("the key is retaken after the hung release's lease lapsed");
    assert!(g.fence() > Fence::FIRST);
}

/// A store that panics in `release` (explicit or on drop) or in `renew` leaves the lock usable.
#[tokio::test(start_paused = true)]
async fn a_panicking_store_does_not_lock_the_process_out() {
    let clock = tokio_clock();
    let mem = store_on(clock.clone());
    let sa = process(&mem);
    let a = lock_on(&sa, clock.clone());
    let panic_on = |op| {
        let mut f = Fault::none();
        f.only = Some(op);
        f.panic_next = 1;
        f
    };

    let g = a.try_lock_once().await.unwrap();
    sa.set(panic_on(Call::Release));
    let err = g.release().await.unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err:?}");
    // The panicked release is accounted for at once: an attempt does not wait for it (the key
    // is busy until the unreleased lease lapses, and says so).
    let started = Instant::now();
    let r = a.try_lock_once().await.map(|g| g.fence());
    assert!(matches!(r, Err(Error::Busy { .. })), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(5),
        "{:?}",
        started.elapsed()
    );
    let g = a
        .lock_timeout(LEASE * 4)
        .await
        .expect("after a release that panicked");

    sa.set(panic_on(Call::Release));
    drop(g); // the release runs (and panics) in a spawned task
    settle().await;
    let g = a
        .lock_timeout(LEASE * 4)
        .await
        .expect("after a dropped guard's release panicked");

    // A panic in renew ends the heartbeat: the lease is lost at once, not silently unrenewed.
    sa.set(panic_on(Call::Renew));
    sleep(Duration::from_millis(150)).await;
    settle().await;
    assert!(
        g.loss_token().is_cancelled(),
        "the heartbeat died in a panic and nobody was told"
    );
}

/// The last guard dropped after its runtime shut down: the release cannot run, and the lock
/// must still work from another runtime once the lease lapses.
#[test]
fn a_guard_outliving_its_runtime_does_not_lock_the_process_out() {
    let mem = MemoryStore::new();
    let sa = process(&mem);
    let rt1 = tokio::runtime::Runtime::new().unwrap();
    let (a, g) = rt1.block_on(async {
        let a = CrossProcessLock::builder(sa.clone(), "k")
            .lease(LEASE)
            .renew_every(Duration::from_millis(100))
            .safety_margin(MARGIN)
            .build()
            .unwrap();
        let g = a.try_lock_once().await.unwrap();
        (a, g)
    });
    drop(rt1);
    drop(g);
    let rt2 = tokio::runtime::Runtime::new().unwrap();
    rt2.block_on(async {
        let g = a
            .lock_timeout(LEASE * 4)
            .await
            .expect("the key is retaken from another runtime");
        assert!(g.is_held());
    });
}
