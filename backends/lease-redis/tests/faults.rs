//! Faults of the real server: restarts with and without persistence, and a server paused past
//! the lease. Each test starts its own redis-server, since it kills or pauses it.

mod common;

use std::time::{Duration, Instant};

use lease_core::{CrossProcessLock, Error, Fence, LeaseStore, StoreErrorKind};
use lease_redis::RedisStore;
use lease_testkit::{RedisOptions, RedisServer};

const LONG: Duration = Duration::from_secs(60);

async fn store(server: &RedisServer, durable: bool) -> RedisStore {
    RedisStore::builder(server.url())
        .prefix("faults:")
        .assume_durable_fences(durable)
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_aof_always_fences_keep_increasing_across_a_restart() {
    let Some(mut server) = RedisServer::start(RedisOptions {
        aof_always: true,
        ..RedisOptions::default()
    }) else {
        return;
    };
    let s = store(&server, true).await;
    assert!(s.capabilities().durable_fences);
    let f1 = s.try_lock(LONG, "k", "alice").await.unwrap().unwrap();
    assert!(s.release("k", "alice", f1).await.unwrap());
    let f2 = s.try_lock(LONG, "k", "bob").await.unwrap().unwrap();
    let other = s.try_lock(LONG, "other", "carol").await.unwrap().unwrap();

    server.restart();

    // The held leases survived with their fences: renewals go on, others are still refused.
    assert!(
        common::settled(|| s.renew(LONG, "k", "bob", f2))
            .await
            .expect("renew after restart")
    );
    assert!(
        common::settled(|| s.renew(LONG, "other", "carol", other))
            .await
            .unwrap()
    );
    assert_eq!(
        common::settled(|| s.try_lock(LONG, "k", "dave"))
            .await
            .unwrap(),
        None
    );
    // The subscription came back too: a waiter is woken by the next release.
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            s.wait_for_change("k", Duration::from_secs(30)).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.release("k", "bob", f2).await.unwrap());
    let woke = waiter.await.unwrap();
    assert!(woke < Duration::from_secs(10), "waiter woke after {woke:?}");
    let f3 = s.try_lock(LONG, "k", "dave").await.unwrap().unwrap();
    assert!(
        f3 > f2,
        "fences keep increasing across the restart ({f3} after {f2})"
    );

    // A fresh process after the restart sees the same counters.
    server.restart();
    let fresh = common::settled(|| async { Ok(store(&server, true).await) })
        .await
        .unwrap();
    assert_eq!(
        common::settled(|| fresh.try_lock(LONG, "k", "erin"))
            .await
            .unwrap(),
        None
    );
    let f4 = fresh.renew(LONG, "k", "dave", f3).await.unwrap();
    assert!(f4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_persistence_a_restart_is_reported_as_fence_regression() {
    let Some(mut server) = RedisServer::start(RedisOptions::default()) else {
        return;
    };
    let s = store(&server, false).await;
    assert!(!s.capabilities().durable_fences);
    let f1 = s.try_lock(LONG, "k", "alice").await.unwrap().unwrap();
    assert!(s.release("k", "alice", f1).await.unwrap());
    let f2 = s.try_lock(LONG, "k", "alice").await.unwrap().unwrap();
    let g = s.try_lock(LONG, "g", "alice").await.unwrap().unwrap();
    assert_eq!(g, Fence::FIRST);

    server.restart();

    // The holder's renewal learns that its fence is gone.
    let err = common::settled(|| s.renew(LONG, "k", "alice", f2))
        .await
        .expect_err("renew after the data was lost");
    assert_eq!(err.kind(), StoreErrorKind::FenceRegressed, "{err}");
    // A new grant would reuse fence 1 of `g` for another holder: refused, not silently handed out.
    let err = common::settled(|| s.try_lock(LONG, "g", "bob"))
        .await
        .expect_err("fence 1 again, for another holder");
    assert_eq!(err.kind(), StoreErrorKind::FenceRegressed, "{err}");
    // And a grant below the fence seen before.
    let err = common::settled(|| s.try_lock(LONG, "k", "bob"))
        .await
        .expect_err("fence below 2");
    assert_eq!(err.kind(), StoreErrorKind::FenceRegressed, "{err}");
    println!("{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_paused_past_the_lease_loses_holders_by_their_deadline_and_grants_once() {
    let Some(mut server) = RedisServer::start(RedisOptions::default()) else {
        return;
    };
    let lease = Duration::from_secs(1);
    let a = CrossProcessLock::builder(store(&server, false).await, "job")
        .lease(lease)
        .holder_label("a")
        .build()
        .unwrap();
    let b = CrossProcessLock::builder(store(&server, false).await, "job")
        .lease(lease)
        .holder_label("b")
        .build()
        .unwrap();
    let guard_a = a.lock().await.unwrap();
    let fence_a = guard_a.fence();
    // b waits for the key the whole time, retrying what fails while the server is paused (the
    // lock returns store errors to the caller).
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let give_up = Instant::now() + Duration::from_secs(20);
            loop {
                match b.lock_timeout(Duration::from_secs(20)).await {
                    Err(Error::Store(e)) if e.is_transient() && Instant::now() < give_up => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => return (other, Instant::now()),
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    server.process().pause();
    let paused = Instant::now();
    // a's lease was last renewed before the pause, so its deadline is within one lease.
    tokio::time::timeout(lease + Duration::from_millis(500), guard_a.lost())
        .await
        .expect("the holder reports the loss by its deadline");
    let lost_after = paused.elapsed();
    assert!(!guard_a.is_held());
    let rest = (lease * 2).saturating_sub(paused.elapsed());
    tokio::time::sleep(rest).await;
    assert!(
        !waiter.is_finished(),
        "nothing is granted while the server is paused"
    );
    server.process().resume();
    let resumed = Instant::now();

    let (guard_b, granted_at) = waiter.await.unwrap();
    let guard_b = guard_b.expect("b acquires once the server answers again");
    assert!(
        granted_at > resumed,
        "nothing is granted while the server is paused"
    );
    println!(
        "paused server: holder lost after {lost_after:?} (lease {lease:?}); waiter acquired \
         {:?} after the resume",
        resumed.elapsed()
    );
    assert!(
        guard_b.fence() > fence_a,
        "the new grant has a larger fence"
    );
    // a does not come back: its next acquisition waits for b.
    assert!(matches!(a.try_lock_once().await, Err(Error::Busy { .. })));
    assert!(guard_b.is_held());
    let fence_b = guard_b.fence();
    guard_b.release().await.unwrap();
    let guard_a = a.lock_timeout(Duration::from_secs(10)).await.unwrap();
    assert!(guard_a.fence() > fence_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_queued_while_redis_is_paused_does_not_revive_the_lapsed_lease() {
    let Some(mut server) = RedisServer::start(RedisOptions::default()) else {
        return;
    };
    // A response timeout longer than the pause, so the renewal's answer is seen.
    let s = RedisStore::builder(server.url())
        .prefix("faults:")
        .response_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    let lease = Duration::from_millis(500);
    let f = s.try_lock(lease, "k", "alice").await.unwrap().unwrap();
    server.process().pause();
    // Sent while the lease is live, executed by Redis after it lapsed.
    let renewal = {
        let s = s.clone();
        tokio::spawn(async move { s.renew(lease, "k", "alice", f).await })
    };
    tokio::time::sleep(lease * 2).await;
    server.process().resume();
    let renewed = renewal.await.unwrap().expect("renew after the pause");
    assert!(
        !renewed,
        "a renewal executed after the lease lapsed revived it"
    );
    let g = s.try_lock(LONG, "k", "bob").await.unwrap();
    assert!(g.is_some_and(|g| g > f), "the lapsed key is free: {g:?}");
}
