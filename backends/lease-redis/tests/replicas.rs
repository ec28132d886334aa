//! A primary with one asynchronous replica, and a failover to it behind a proxy that moves the
//! service address: without `wait_for_replicas` the grants the replica missed are lost and the
//! store reports the fence that went back; with it, no grant is reported before the replica
//! has it. Each test starts its own two servers.

mod common;

use std::time::{Duration, Instant};

use lease_core::{LeaseStore, StoreError, StoreErrorKind};
use lease_redis::RedisStore;
use lease_redis::redis::{self, AsyncCommands};
use lease_testkit::{HoldingProxy, RedisOptions, RedisServer};

const LEASE: Duration = Duration::from_secs(30);

/// A primary and a replica of it, synchronised, and the proxy the replication link goes through
/// (holding its answers keeps the primary's writes from the replica: pausing the replica would
/// not, as they wait in its socket buffer); `None` when redis-server is missing (not CI).
async fn primary_and_replica() -> Option<(RedisServer, RedisServer, HoldingProxy)> {
    let primary = RedisServer::start(RedisOptions::default())?;
    let link = HoldingProxy::start(&format!("127.0.0.1:{}", primary.port()));
    let link_port = link.endpoint().rsplit_once(':').unwrap().1.to_owned();
    let replica = RedisServer::start(RedisOptions {
        extra_args: vec!["--replicaof".into(), "127.0.0.1".into(), link_port],
        ..Default::default()
    })?;
    let until = Instant::now() + Duration::from_secs(20);
    while !info(&replica, "replication")
        .await
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < until, "the replica never synchronised");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some((primary, replica, link))
}

async fn conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn info(server: &RedisServer, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn(server).await)
        .await
        .unwrap()
}

/// The fence in `key`'s lease record on `server` (what a failover to it would start from).
async fn fence_on(server: &RedisServer, store: &RedisStore, key: &str) -> Option<u64> {
    let record = store.lock_key(key);
    let f: Option<String> = conn(server).await.hget(record, "f").await.unwrap();
    f.map(|f| f.parse().unwrap())
}

async fn store(url: &str, wait: bool) -> RedisStore {
    let mut b = RedisStore::builder(url).prefix("replicas:");
    if wait {
        b = b.wait_for_replicas(1, Duration::from_millis(300));
    }
    b.connect().await.expect("connect")
}

/// A grant is answered once the replica has it; with the replication link held, grants and
/// renewals fail as transient instead of being reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_their_replicas() {
    let Some((primary, replica, link)) = primary_and_replica().await else {
        return;
    };
    let s = store(&primary.url(), true).await;
    let f = s.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    assert_eq!(
        fence_on(&replica, &s, "k").await,
        Some(f.get()),
        "the replica has the grant"
    );
    link.hold_answers(true);
    let e = s.try_lock(LEASE, "other", "a").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("0 of 1 replicas"), "{e}");
    let e = s.renew(LEASE, "k", "a", f).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    link.hold_answers(false);
    // Applied on the primary all along: the same holder takes its grant again, same fence.
    assert_eq!(s.try_lock(LEASE, "k", "a").await.unwrap(), Some(f));
    assert!(s.release("k", "a", f).await.unwrap());
}

/// The failover: the replica misses the last grant (its link is held), the primary dies, the
/// replica is promoted and takes the service address. `wait` says whether the store waits for
/// replicas. Returns the fence the store reported for the grant the replica missed (if it
/// reported one) and what the store said after the failover when another holder asked.
async fn failover(wait: bool) -> Option<(Option<u64>, Result<Option<u64>, StoreError>)> {
    let (mut primary, replica, link) = primary_and_replica().await?;
    let proxy = HoldingProxy::start(&format!("127.0.0.1:{}", primary.port()));
    let s = store(&format!("redis://{}", proxy.endpoint()), wait).await;
    let first = s.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while fence_on(&replica, &s, "k").await != Some(first.get()) {
        assert!(
            Instant::now() < until,
            "the replica never saw the first grant"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    link.hold_answers(true);
    // The replica misses these: a's release and b's grant.
    let _ = s.release("k", "a", first).await;
    let missed = s
        .try_lock(LEASE, "k", "b")
        .await
        .ok()
        .flatten()
        .map(|f| f.get());
    primary.process().kill();
    // What the link held back is dropped with it.
    link.retarget("127.0.0.1:1");
    link.hold_answers(false);
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut conn(&replica).await)
        .await
        .unwrap();
    proxy.retarget(&format!("127.0.0.1:{}", replica.port()));
    let after = common::settled(|| s.try_lock(LEASE, "k", "c"))
        .await
        .map(|f| f.map(|f| f.get()));
    Some((missed, after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_waiting_a_failover_that_lost_a_grant_is_a_fence_regression() {
    let Some((missed, after)) = failover(false).await else {
        return;
    };
    assert_eq!(
        missed,
        Some(2),
        "b was told it holds fence 2, which only the primary had"
    );
    let e = after.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::FenceRegressed, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_replicas_no_grant_is_lost_in_a_failover() {
    let Some((missed, after)) = failover(true).await else {
        return;
    };
    assert_eq!(
        missed, None,
        "the grant the replica missed was never reported"
    );
    // The promoted replica has a's lease (its release was not replicated either): busy, and no
    // fence went back, since none beyond what it has was ever reported.
    assert_eq!(after.unwrap(), None);
}

/// A queued waiter is handed the key by a release whose replicas lag: it is told only once its
/// own confirmation reached the replica, never from the announcement alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_waiter_takes_a_grant_only_once_the_replica_has_it() {
    let Some((primary, replica, link)) = primary_and_replica().await else {
        return;
    };
    let a = store(&primary.url(), true).await;
    let b = store(&primary.url(), true).await;
    let held = a.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    let lock = lease_core::CrossProcessLock::builder(b.clone(), "k")
        .lease(Duration::from_secs(10))
        .build()
        .unwrap();
    let waiting = tokio::spawn(async move {
        let guard = lock.lock().await.unwrap();
        (guard.fence(), lock)
    });
    let until = Instant::now() + Duration::from_secs(10);
    while b.waiters("k").await.unwrap().is_empty() {
        assert!(Instant::now() < until, "b never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    link.hold_answers(true);
    // Applied on the primary (the key goes to b there), but not reported as done.
    let e = a.release("k", "a", held).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "b took a grant its replica does not have"
    );
    link.hold_answers(false);
    let (fence, _lock) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("b gets the key once the replica has it")
        .unwrap();
    assert!(fence > held);
    assert_eq!(fence_on(&replica, &b, "k").await, Some(fence.get()));
}

/// What waiting for a replica costs an acquire and a release on loopback (printed, not
/// asserted: timing belongs to the bench; run with `--ignored --nocapture`). The two stores
/// alternate at every round, so that the machine's load falls on both alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn cost_of_waiting_for_a_replica() {
    let Some((primary, _replica, _link)) = primary_and_replica().await else {
        return;
    };
    let plain = store(&primary.url(), false).await;
    let waiting = store(&primary.url(), true).await;
    let mut took = [Vec::new(), Vec::new()];
    for round in 0..4_000 {
        let (s, i) = if round % 2 == 0 {
            (&plain, 0)
        } else {
            (&waiting, 1)
        };
        let started = Instant::now();
        let f = s.try_lock(LEASE, "cost", "a").await.unwrap().unwrap();
        assert!(s.release("cost", "a", f).await.unwrap());
        if round >= 400 {
            took[i].push(started.elapsed());
        }
    }
    for (name, mut t) in ["plain", "wait_for_replicas(1)"].into_iter().zip(took) {
        t.sort();
        println!(
            "{name}: try_lock + release p50 {:?}, p99 {:?}",
            t[t.len() / 2],
            t[t.len() * 99 / 100]
        );
    }
}
