//! A 3-node etcd cluster whose members run in network namespaces of their own
//! ([`EtcdCluster::start_partitionable`]): the leader is cut off the network, its peers and its
//! clients alike, for longer than a lease, then joins again.
//!
//! Two holders each hold a key when the leader is cut off:
//!
//! - **A** reaches etcd through a store built from a URL naming all three members, as users
//!   configure it. The two members left elect a new leader, which keeps every session lease
//!   alive (etcd restarts the leases' TTLs on a leader change), and A's client moves its
//!   requests to them once its HTTP/2 keepalive declares the connection to the cut-off member
//!   dead. So A's renewals keep working: A holds its key through a partition longer than its
//!   lease, etcd still has A's grant at the end, and B, waiting for the key, never gets it.
//! - **C** reaches etcd only through the old leader's address: it is on the cut-off side, its
//!   renewals fail, and its loss signal must fire by its lease's end. **B**, on the majority
//!   side, must be granted the key (within the partition) only after that, with a larger fence.
//!
//! After the heal, the old leader must follow the leader, catch up, and serve again (it may only
//! lead again with every entry committed while it was away): C, which reaches nothing else,
//! acquires both keys through it, with fences larger than every earlier one of each key.

mod common;

use std::time::{Duration, Instant};

use lease_core::{CrossProcessLock, Fence, KeyState, LeaseStore, LockGuard};
use lease_etcd::{EtcdStore, EtcdStoreBuilder};
use lease_testkit::{EtcdCluster, EtcdOptions};
use tokio::task::{JoinHandle, block_in_place};

/// C's lease, and B's: short, so that C's lapses early in the partition.
const LEASE: Duration = Duration::from_secs(3);
/// A's lease, and how often A renews it. Renewals sent to the cut-off member hang until the
/// request timeout (1 s), and the client keeps picking that member until its HTTP/2 keepalive
/// (a ping every 2 s, answered within 2 s) declares the connection dead: up to about 4 s after
/// the cut. A's lease must outlast that after its last renewal before the cut.
const A_LEASE: Duration = Duration::from_secs(8);
const A_RENEW_EVERY: Duration = Duration::from_millis(500);
/// Longer than A's lease (so A's key outlives the partition only through renewals the new
/// leader answers), and over three times C's (whose key etcd frees about election + TTL +
/// election timeout after the cut: the new leader restarts every lease's TTL).
const PARTITION: Duration = Duration::from_secs(10);

/// A store from an `etcd://` URL naming `endpoints`, with timeouts well below the lease.
async fn store(endpoints: &[String], prefix: &str) -> EtcdStore {
    let url = format!("etcd://{}/{prefix}", endpoints.join(","));
    EtcdStoreBuilder::from_url(&url)
        .expect("a valid etcd URL")
        .request_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn lock(store: &EtcdStore, key: &str, label: &str) -> CrossProcessLock<EtcdStore> {
    CrossProcessLock::builder(store.clone(), key)
        .lease(LEASE)
        .holder_label(label)
        .build()
        .expect("lock")
}

fn a_lock(store: &EtcdStore, key: &str) -> CrossProcessLock<EtcdStore> {
    CrossProcessLock::builder(store.clone(), key)
        .lease(A_LEASE)
        .renew_every(A_RENEW_EVERY)
        .holder_label("a")
        .build()
        .expect("lock")
}

/// Acquires, retrying what a caller would retry (a request lost in an election), until
/// `give_up`.
async fn acquire(lock: &CrossProcessLock<EtcdStore>, give_up: Instant) -> LockGuard<EtcdStore> {
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        match lock.lock_timeout(left).await {
            Ok(g) => return g,
            Err(e) if e.is_retryable() && Instant::now() < give_up => {
                println!("{}: retrying after: {e}", lock.holder_label());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{} must acquire `{}`: {e}", lock.holder_label(), lock.key()),
        }
    }
}

/// A waiter that acquires `lock` (until `give_up`) and reports when, with the guard.
fn waiter(
    lock: CrossProcessLock<EtcdStore>,
    give_up: Instant,
) -> JoinHandle<(Instant, LockGuard<EtcdStore>)> {
    tokio::spawn(async move {
        let g = acquire(&lock, give_up).await;
        (Instant::now(), g)
    })
}

/// The moment `guard`'s loss signal fires.
fn loss_watch(guard: &LockGuard<EtcdStore>) -> JoinHandle<Instant> {
    let token = guard.loss_token();
    tokio::spawn(async move {
        token.cancelled().await;
        Instant::now()
    })
}

/// `key` as etcd has it, read through `store` (retried while a request is lost in an election).
async fn inspect(store: &EtcdStore, key: &str) -> KeyState {
    let mut tries = 0;
    loop {
        match store.inspect(key).await {
            Ok(state) => return state,
            Err(e) if e.is_transient() && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("inspect `{key}`: {e}"),
        }
    }
}

fn strictly_increasing(fences: &[Fence]) -> bool {
    fences.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_partition_keeps_the_lock_safe_and_live() {
    let started = Instant::now();
    let Some(cluster) =
        tokio::task::spawn_blocking(|| EtcdCluster::start_partitionable(3, EtcdOptions::default()))
            .await
            .expect("start the cluster")
    else {
        return;
    };
    let endpoints = cluster.endpoints();
    let old = block_in_place(|| cluster.wait_leader(Duration::from_secs(10), |_| true))
        .expect("the cluster has a leader");
    println!(
        "cluster up after {:?}: {endpoints:?}, leader n{old}",
        started.elapsed()
    );

    let prefix = common::unique_prefix("leader-partition");
    let a = store(&endpoints, &prefix).await;
    let b = store(&endpoints, &prefix).await;
    let c = store(&endpoints[old..=old], &prefix).await;
    // Each phase has its own deadline: the partition and the heal's settling come between.
    let give_up = Instant::now() + Duration::from_secs(25);
    let give_up_waiting = Instant::now() + Duration::from_secs(60);

    let a_kept = a_lock(&a, "kept");
    let c_lapsed = lock(&c, "lapsed", "c");
    let a_guard = acquire(&a_kept, give_up).await;
    let c_guard = acquire(&c_lapsed, give_up).await;
    let (a_fence, c_fence) = (a_guard.fence(), c_guard.fence());
    let a_lost = loss_watch(&a_guard);
    let c_lost = loss_watch(&c_guard);
    let b_kept = waiter(lock(&b, "kept", "b"), give_up_waiting);
    let b_lapsed = waiter(lock(&b, "lapsed", "b"), give_up_waiting);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !b_kept.is_finished() && !b_lapsed.is_finished(),
        "B waits while both keys are held"
    );
    // A busy machine can delay heartbeats into an election even in a quiet cluster: then the
    // member cut is C's, no longer the leader, and the test shows a member's partition.
    let now_leads = block_in_place(|| cluster.leader());
    if now_leads != Some(old) {
        println!("leadership moved to {now_leads:?} before the cut; n{old} is cut all the same");
    }

    // Cut the leader off: its peers and every client (C's only way in) lose it.
    cluster.partition(old);
    let cut_at = Instant::now();
    let new = block_in_place(|| cluster.wait_leader(Duration::from_secs(10), |i| i != old))
        .expect("the two members left elect a leader among themselves");
    let elected = cut_at.elapsed();
    println!("n{new} leads {elected:?} after the cut");

    // Through the partition: A holds its key all along (its renewals reach the new leader),
    // and B must not get it.
    let heal_at = cut_at + PARTITION;
    while Instant::now() < heal_at {
        assert!(
            a_guard.is_held(),
            "A lost `kept` {:?} into the partition, though two members of three were reachable",
            cut_at.elapsed()
        );
        assert!(
            !b_kept.is_finished(),
            "B was granted `kept` while A holds it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!a_lost.is_finished(), "A's loss signal fired");
    let a_keepalives = a.keepalives_sent();
    // And etcd agrees: A's grant lives on, past its TTL, on a session lease the new leader
    // kept alive.
    let kept = inspect(&b, "kept").await;
    assert!(
        kept.holder.is_some() && kept.fence == Some(a_fence),
        "etcd no longer has A's grant of `kept` (fence {a_fence}): {kept:?}"
    );

    // C, on the cut-off side, lost its key no later than its lease's end; B got it after that.
    assert!(!c_guard.is_held(), "C still believes it holds `lapsed`");
    let c_lost_at = tokio::time::timeout(Duration::from_secs(1), c_lost)
        .await
        .expect("C's loss signal fired")
        .expect("C's loss watch");
    assert!(
        b_lapsed.is_finished(),
        "B did not get `lapsed` within {PARTITION:?} of the cut, though C's lease lapsed"
    );
    let (b_lapsed_at, b_lapsed_guard) = b_lapsed.await.expect("B's waiter for `lapsed`");
    println!(
        "C lost `lapsed` {:?} after the cut; B got it {:?} after the cut",
        c_lost_at.saturating_duration_since(cut_at),
        b_lapsed_at.saturating_duration_since(cut_at)
    );
    // A wake-up's worth of slack: the signal fires from a task at the deadline.
    assert!(
        c_lost_at <= cut_at + LEASE + Duration::from_millis(250),
        "C's loss signal fired {:?} after the cut, past its lease",
        c_lost_at - cut_at
    );
    assert!(
        c_lost_at <= b_lapsed_at,
        "B was granted `lapsed` before C's loss signal fired"
    );
    let b_lapsed_fence = b_lapsed_guard.fence();
    assert!(
        b_lapsed_fence > c_fence,
        "B's fence {b_lapsed_fence} must exceed C's {c_fence}"
    );

    // Heal: the old leader follows the leader and catches up on what it missed. It can only
    // lead again with every entry the majority committed while it was cut off.
    let committed = block_in_place(|| {
        cluster
            .members
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != old)
            .filter_map(|(_, m)| m.status())
            .map(|s| s.raft_index)
            .max()
    })
    .expect("the majority answers");
    cluster.heal(old);
    let healed_at = Instant::now();
    let rejoined = block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = Vec::new();
        while Instant::now() < deadline {
            let statuses: Vec<_> = cluster.members.iter().map(|m| m.status()).collect();
            if let Some(s) = statuses[old].filter(|s| s.is_leader()) {
                assert!(
                    s.raft_index >= committed,
                    "the old leader leads again without the entries committed while it was cut \
                     off: {statuses:?}, committed up to {committed}"
                );
            }
            if let [Some(x), Some(y), Some(z)] = statuses[..] {
                let leader = [x, y, z].into_iter().find(|s| s.is_leader());
                if let Some(l) = leader {
                    let all_follow = [x, y, z].iter().all(|s| s.leader == l.member_id);
                    if all_follow
                        && statuses[old].is_some_and(|s| s.raft_index >= committed)
                        && cluster.members.iter().all(|m| m.healthy())
                    {
                        return Ok(statuses);
                    }
                }
            }
            last = statuses;
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    });
    let statuses = rejoined.unwrap_or_else(|last| {
        panic!(
            "the old leader did not rejoin (follow the leader, catch up to index {committed}, \
             report healthy) within 15 s of the heal: {last:?}"
        )
    });
    let leader_after = statuses
        .iter()
        .position(|s| s.is_some_and(|s| s.is_leader()));
    println!(
        "{:?} after the heal all three follow n{}: {statuses:?}",
        healed_at.elapsed(),
        leader_after.expect("a leader")
    );

    // A still holds `kept` and hands it to B, through the heal's own disturbance.
    assert!(a_guard.is_held(), "A lost `kept` after the heal");
    println!("A's store sent {a_keepalives} keepalives up to the heal");
    a_guard.release().await.expect("A releases `kept`");
    let (_, b_kept_guard) = b_kept.await.expect("B's waiter for `kept`");
    let b_kept_fence = b_kept_guard.fence();
    assert!(!a_lost.is_finished(), "A's loss signal fired on release");
    drop(b_lapsed_guard);
    drop(b_kept_guard);

    // The rejoined member serves again: C, who reaches nothing else, acquires through it.
    let give_up = Instant::now() + Duration::from_secs(25);
    let c_again = acquire(&c_lapsed, give_up).await;
    let c_kept = acquire(&lock(&c, "kept", "c"), give_up).await;
    let lapsed = [c_fence, b_lapsed_fence, c_again.fence()];
    let kept = [a_fence, b_kept_fence, c_kept.fence()];
    println!("fences of `lapsed`: {lapsed:?}; of `kept`: {kept:?}");
    assert!(
        strictly_increasing(&lapsed),
        "fences of `lapsed`: {lapsed:?}"
    );
    assert!(strictly_increasing(&kept), "fences of `kept`: {kept:?}");
    c_again.release().await.expect("C releases `lapsed`");
    c_kept.release().await.expect("C releases `kept`");
    println!("done in {:?}", started.elapsed());
}
