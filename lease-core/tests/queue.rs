//! The lock's waiting calls on a store with waiter queues (the queued reference store, under the
//! fault-injecting wrapper, on tokio's paused clock): served in order, no barging by the process
//! that just released, a waiter that gives up leaves the queue, and barging mode polls.

use std::sync::Arc;
use std::time::Duration;

use lease_core::testing::FaultStore;
use lease_core::{CrossProcessLock, Error, LockGuard, MemoryStore, TokioClock};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep};

const LEASE: Duration = Duration::from_secs(2);

type Store = Arc<FaultStore<MemoryStore>>;

fn store() -> Store {
    Arc::new(FaultStore::new(MemoryStore::queued(None)))
}

fn lock(store: &Store, label: &str) -> CrossProcessLock<Store> {
    CrossProcessLock::builder(store.clone(), "k")
        .lease(LEASE)
        .holder_label(label)
        .clock(Arc::new(TokioClock::new()))
        .build()
        .expect("valid lock settings")
}

/// Lets spawned tasks (releases, queue exits) run without moving the paused clock much.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    sleep(Duration::from_micros(10)).await;
}

/// The labels of the store's live waiters, oldest first.
fn waiters(s: &Store) -> Vec<String> {
    s.inner()
        .waiters("k")
        .iter()
        .map(|h| {
            h.split('#')
                .next()
                .unwrap_or(h)
                .rsplit('/')
                .next()
                .unwrap_or(h)
                .to_owned()
        })
        .collect()
}

/// Spawns `lock().await` on each lock, one after the other so that they queue in this order,
/// and reports each grant (label, guard) on the channel.
async fn queue_up(
    locks: &[(&'static str, CrossProcessLock<Store>)],
) -> mpsc::UnboundedReceiver<(&'static str, LockGuard<Store>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    for (label, l) in locks {
        let (tx, l, label) = (tx.clone(), l.clone(), *label);
        tokio::spawn(async move {
            let g = l.lock().await.expect("lock");
            let _ = tx.send((label, g));
        });
        sleep(Duration::from_millis(5)).await;
    }
    rx
}

#[tokio::test(start_paused = true)]
async fn waiting_calls_are_served_in_the_order_they_queued() {
    let s = store();
    let a = lock(&s, "a");
    let held = a.try_lock_once().await.unwrap();
    let others: Vec<_> = ["b", "c", "d", "e"]
        .iter()
        .map(|l| (*l, lock(&s, l)))
        .collect();
    let mut granted = queue_up(&others).await;
    assert_eq!(waiters(&s), ["b", "c", "d", "e"]);
    let mut fence = held.fence();
    drop(held);
    let mut order = Vec::new();
    for _ in 0..4 {
        let (label, g) = granted.recv().await.expect("a grant");
        assert!(g.fence() > fence, "fences strictly increase");
        fence = g.fence();
        order.push(label);
        g.release().await.unwrap();
    }
    assert_eq!(order, ["b", "c", "d", "e"]);
}

#[tokio::test(start_paused = true)]
async fn the_releasing_process_queues_behind_the_waiters() {
    let s = store();
    let a = lock(&s, "a");
    let b = lock(&s, "b");
    let held = a.try_lock_once().await.unwrap();
    let mut granted = queue_up(&[("b", b.clone())]).await;
    held.release().await.unwrap();
    // Straight back for the key: the release already handed it to B.
    assert!(matches!(a.try_lock_once().await, Err(Error::Busy { .. })));
    let again = tokio::spawn({
        let a = a.clone();
        async move { a.lock().await.expect("lock").fence() }
    });
    settle().await;
    let (label, g) = granted.recv().await.unwrap();
    assert_eq!(label, "b");
    assert_eq!(waiters(&s), ["a"], "A waits behind B");
    let bf = g.fence();
    g.release().await.unwrap();
    assert!(again.await.unwrap() > bf);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_times_out_leaves_the_queue() {
    let s = store();
    let a = lock(&s, "a");
    let (b, c) = (lock(&s, "b"), lock(&s, "c"));
    let held = a.try_lock_once().await.unwrap();
    let timed_out = tokio::spawn({
        let b = b.clone();
        async move { b.lock_timeout(Duration::from_millis(300)).await }
    });
    sleep(Duration::from_millis(5)).await;
    let mut granted = queue_up(&[("c", c.clone())]).await;
    assert_eq!(waiters(&s), ["b", "c"]);
    assert!(matches!(
        timed_out.await.unwrap(),
        Err(Error::TimedOut { .. })
    ));
    settle().await;
    assert_eq!(waiters(&s), ["c"], "B's entry is gone once it gave up");
    assert_eq!(s.calls().leave_queue, 1);
    drop(held);
    let (label, _g) = granted.recv().await.unwrap();
    assert_eq!(label, "c");
}

/// A program about to end calls `settle`: the queue exit of a waiter that gave up, and the
/// release of a dropped guard, run as tasks of their own, and are landed by the time it returns.
#[tokio::test(start_paused = true)]
async fn settle_lands_the_queue_exit_and_the_release_sent_in_tasks() {
    let s = store();
    let (a, b) = (lock(&s, "a"), lock(&s, "b"));
    let held = a.try_lock_once().await.unwrap();
    assert!(matches!(
        b.lock_timeout(Duration::from_millis(300)).await,
        Err(Error::TimedOut { .. })
    ));
    assert!(b.settle(Duration::from_secs(1)).await);
    assert_eq!(s.calls().leave_queue, 1, "B's queue exit was sent");
    assert!(
        waiters(&s).is_empty(),
        "and it landed before settle returned"
    );
    drop(held);
    assert!(a.settle(Duration::from_secs(1)).await);
    assert_eq!(
        s.calls().release,
        1,
        "A's release landed before settle returned"
    );
    let state = lease_core::LeaseStore::inspect(s.inner(), "k")
        .await
        .unwrap();
    assert!(state.holder.is_none(), "the key is free");
    // A call that never answers: settle gives up at its bound and says so.
    let held = a.try_lock_once().await.unwrap();
    let mut fault = lease_core::testing::Fault::none();
    fault.only = Some(lease_core::testing::Call::Release);
    fault.hang_next = 1;
    s.set(fault);
    drop(held);
    let started = Instant::now();
    assert!(!a.settle(Duration::from_millis(200)).await);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_granted_meanwhile_passes_the_key_on() {
    let s = store();
    let a = lock(&s, "a");
    let (b, c) = (lock(&s, "b"), lock(&s, "c"));
    let held = a.try_lock_once().await.unwrap();
    let dropped = tokio::spawn({
        let b = b.clone();
        async move { b.lock().await }
    });
    sleep(Duration::from_millis(5)).await;
    let mut granted = queue_up(&[("c", c.clone())]).await;
    // The release grants B in the store (it runs first), and B's waiting call is dropped
    // before it confirms the grant: leaving the queue gives that grant back, to C.
    let a_fence = held.fence();
    let released_at = Instant::now();
    drop(held);
    dropped.abort();
    let _ = dropped.await;
    let (label, g) = granted.recv().await.expect("the key reaches C");
    assert_eq!(label, "c");
    assert_eq!(b.guards(), 0);
    assert_eq!(
        g.fence().get(),
        a_fence.get() + 2,
        "B was granted the key in between (fence + 1) and passed it on"
    );
    assert!(
        released_at.elapsed() < LEASE / 2,
        "C got the key without waiting out B's lease"
    );
    drop(g);
}

#[tokio::test(start_paused = true)]
async fn tasks_of_one_process_share_one_queue_entry() {
    let s = store();
    let a = lock(&s, "a");
    let b = lock(&s, "b");
    let held = a.try_lock_once().await.unwrap();
    let mut granted = queue_up(&[("b", b.clone()), ("b", b.clone()), ("b", b.clone())]).await;
    assert_eq!(waiters(&s), ["b"]);
    drop(held);
    for _ in 0..3 {
        let (label, g) = granted.recv().await.unwrap();
        assert_eq!(label, "b");
        std::mem::forget(g.clone()); // keep the lease: every task enters it
        drop(g);
    }
    assert_eq!(b.guards(), 3);
}

#[tokio::test(start_paused = true)]
async fn barging_mode_polls_instead_of_queueing() {
    let s = store();
    let a = lock(&s, "a");
    let b = CrossProcessLock::builder(s.clone(), "k")
        .lease(LEASE)
        .holder_label("b")
        .barging(true)
        .clock(Arc::new(TokioClock::new()))
        .build()
        .unwrap();
    let held = a.try_lock_once().await.unwrap();
    let waiter = tokio::spawn(async move { b.lock().await.map(|g| g.fence()) });
    sleep(Duration::from_millis(50)).await;
    assert!(waiters(&s).is_empty(), "a barging waiter does not queue");
    assert_eq!(s.calls().enqueue, 0);
    let f = held.fence();
    drop(held);
    assert!(waiter.await.unwrap().unwrap() > f);
}

/// A queued waiter is woken by the store, so it refreshes its entry once per `backoff_max`
/// (250 ms by default), not at growing pauses from `backoff_min`: under contention each refresh
/// is a store write that the releases compete with.
#[tokio::test(start_paused = true)]
async fn a_queued_waiter_refreshes_its_entry_once_per_longest_pause() {
    let s = store();
    let a = lock(&s, "a");
    let b = lock(&s, "b");
    let held = a.try_lock_once().await.unwrap();
    let before = s.calls().enqueue;
    let waiter = tokio::spawn(async move { b.lock().await.map(|g| g.fence()) });
    sleep(Duration::from_millis(1010)).await;
    // The first enqueue, then one refresh per 250 ms (growing pauses from 2 ms would have sent
    // about ten by now).
    let sent = s.calls().enqueue - before;
    assert!(
        (4..=6).contains(&sent),
        "{sent} enqueues in a second of waiting"
    );
    let f = held.fence();
    drop(held);
    assert!(waiter.await.unwrap().unwrap() > f);
}

#[tokio::test(start_paused = true)]
async fn a_handoff_takes_the_reported_grant_without_another_store_call() {
    let s = store();
    let a = lock(&s, "a");
    let b = lock(&s, "b");
    let held = a.try_lock_once().await.unwrap();
    let mut granted = queue_up(&[("b", b.clone())]).await;
    let before = s.calls();
    held.release().await.unwrap();
    let (_, g) = granted.recv().await.unwrap();
    assert!(g.is_held());
    assert_eq!(
        s.calls().enqueue,
        before.enqueue,
        "the waiter took the grant the store reported, without confirming it: {:?}",
        s.calls()
    );
    // Its deadline counts from its last enqueue: the heartbeat keeps the lease.
    sleep(LEASE * 3).await;
    assert!(g.is_held());
    assert_eq!(s.inner().holder("k").map(|h| h.contains("/b#")), Some(true));
}

#[tokio::test(start_paused = true)]
async fn a_reported_grant_too_close_to_its_deadline_is_confirmed_with_the_store() {
    // Long polls (backoff up to the whole lease): by the time the grant is reported, the last
    // enqueue may be too long ago to vouch for the lease; the waiter asks the store again.
    let s = store();
    let a = lock(&s, "a");
    let b = CrossProcessLock::builder(s.clone(), "k")
        .lease(LEASE)
        .holder_label("b")
        .backoff(LEASE, LEASE)
        .clock(Arc::new(TokioClock::new()))
        .build()
        .unwrap();
    let held = a.try_lock_once().await.unwrap();
    let mut granted = queue_up(&[("b", b.clone())]).await;
    sleep(LEASE - LEASE / 10).await;
    let before = s.calls();
    held.release().await.unwrap();
    let (_, g) = granted.recv().await.unwrap();
    assert!(g.is_held());
    assert!(
        s.calls().enqueue > before.enqueue,
        "the grant was confirmed by an enqueue: {:?}",
        s.calls()
    );
}

/// A store whose `wait_for_grant` reports the key's current fence as a grant to every waiter:
/// a stale or misdirected notification.
#[derive(Clone)]
struct StaleGrants(Store);

impl lease_core::LeaseStore for StaleGrants {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<lease_core::Fence>, lease_core::StoreError> {
        self.0.try_lock(lease, key, holder).await
    }
    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: lease_core::Fence,
    ) -> Result<bool, lease_core::StoreError> {
        self.0.renew(lease, key, holder, fence).await
    }
    async fn release(
        &self,
        key: &str,
        holder: &str,
        fence: lease_core::Fence,
    ) -> Result<bool, lease_core::StoreError> {
        self.0.release(key, holder, fence).await
    }
    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<lease_core::Enqueued, lease_core::StoreError> {
        self.0.enqueue(lease, key, holder, patience).await
    }
    async fn wait_for_grant(
        &self,
        key: &str,
        _holder: &str,
        max_wait: Duration,
    ) -> Option<lease_core::Fence> {
        sleep(max_wait / 4).await;
        self.0.inner().fence(key)
    }
    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, lease_core::StoreError> {
        self.0.leave_queue(key, holder).await
    }
    fn capabilities(&self) -> lease_core::Capabilities {
        self.0.capabilities()
    }
}

#[tokio::test(start_paused = true)]
async fn a_reported_grant_no_newer_than_the_key_is_not_taken() {
    let s = store();
    let stale = StaleGrants(s.clone());
    let a = lock(&s, "a");
    let b = CrossProcessLock::builder(stale, "k")
        .lease(LEASE)
        .holder_label("b")
        .clock(Arc::new(TokioClock::new()))
        .build()
        .unwrap();
    let held = a.try_lock_once().await.unwrap();
    let waited = b.lock_timeout(LEASE * 2).await;
    assert!(
        matches!(waited, Err(Error::TimedOut { .. })),
        "a notification carrying the holder's own fence is no grant: {waited:?}"
    );
    assert!(held.is_held());
}
