//! Store-level behaviour against a real redis-server beyond the conformance suite: connection
//! errors, the shared subscription, renewal of many keys, fence-regression detection, and
//! handoff through the lock.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lease_core::{CrossProcessLock, Fence, LeaseStore, StoreErrorKind};
use lease_redis::RedisStore;
use lease_redis::redis::{self, AsyncCommands};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_at_start_is_a_clear_transient_error_in_bounded_time() {
    // A port nobody listens on (bound, then closed).
    let port = lease_testkit::free_port();
    let started = Instant::now();
    let err = RedisStore::builder(format!("redis://u:hunter2@127.0.0.1:{port}/"))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect_err("nothing listens there");
    let took = started.elapsed();
    let msg = err.to_string();
    assert!(err.is_transient(), "{msg}");
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")),
        "names the server: {msg}"
    );
    assert!(msg.contains("refused"), "says what happened: {msg}");
    assert!(!msg.contains("hunter2") && !format!("{err:?}").contains("hunter2"));
    assert!(
        took < Duration::from_secs(5),
        "connect gave up after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_before_connecting() {
    for (builder, what) in [
        (
            RedisStore::builder("http://127.0.0.1:6379/"),
            "not a Redis URL",
        ),
        (RedisStore::builder("redis://"), "not a valid Redis URL"),
        (
            RedisStore::builder("redis://127.0.0.1:1/").prefix("app{x}:"),
            "prefix",
        ),
        (
            RedisStore::builder("redis://127.0.0.1:1/").response_timeout(Duration::ZERO),
            "timeouts",
        ),
    ] {
        let err = builder.connect().await.expect_err("invalid settings");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
        assert!(
            err.to_string().contains(what),
            "{err} should mention {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_one_subscription_and_wake_only_for_their_key() {
    let Some(url) = common::url() else { return };
    let prefix = common::unique_prefix("share");
    let holder = RedisStore::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let waiters = RedisStore::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let mut fences = Vec::new();
    for k in &keys {
        fences.push(holder.try_lock(LONG, k, "h").await.unwrap().unwrap());
    }
    // Five waiters per key, all on one store.
    let mut tasks = Vec::new();
    for k in &keys {
        for _ in 0..5 {
            let (store, k) = (waiters.clone(), k.clone());
            tasks.push((
                k.clone(),
                tokio::spawn(async move {
                    let started = Instant::now();
                    store.wait_for_change(&k, LONG).await;
                    started.elapsed()
                }),
            ));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Two subscriptions on the channel: one per store, however many waiters.
    let mut conn = holder.connection();
    let (_, subscribers): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("{prefix}released"))
        .query_async::<Vec<(String, u64)>>(&mut conn)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(subscribers, 2, "one subscription per store");

    assert!(holder.release("k3", "h", fences[3]).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (k, t) in &tasks {
        assert_eq!(
            t.is_finished(),
            k == "k3",
            "only the waiters of the released key wake ({k})"
        );
    }
    for (k, f) in keys.iter().zip(&fences) {
        holder.release(k, "h", *f).await.unwrap();
    }
    for (k, t) in tasks {
        let waited = t.await.unwrap();
        assert!(waited < Duration::from_secs(10), "{k} waited {waited:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_held_keys_are_renewed_well_within_an_interval() {
    let Some(url) = common::url() else { return };
    let store = common::store_on(&url, "many").await;
    let store = Arc::new(store);
    const N: usize = 10_000;
    let lease = Duration::from_secs(30);
    let keys: Vec<String> = (0..N).map(|i| format!("job/{i}")).collect();
    let grants = futures::future::join_all(keys.iter().map(|k| {
        let store = store.clone();
        async move { store.try_lock(lease, k, "worker").await }
    }))
    .await;
    let fences: Vec<Fence> = grants
        .into_iter()
        .map(|g| g.expect("try_lock").expect("granted"))
        .collect();

    // As the lock's heartbeats do: one renew call per key, concurrently, on one connection.
    let started = Instant::now();
    let renewed = futures::future::join_all(keys.iter().zip(&fences).map(|(k, f)| {
        let store = store.clone();
        async move { store.renew(lease, k, "worker", *f).await }
    }))
    .await;
    let concurrent = started.elapsed();
    assert!(renewed.into_iter().all(|r| r.expect("renew")));

    // One pipeline for all of them.
    let batch: Vec<(&str, &str, Fence)> = keys
        .iter()
        .zip(&fences)
        .map(|(k, f)| (k.as_str(), "worker", *f))
        .collect();
    let started = Instant::now();
    let renewed = store.renew_many(lease, &batch).await.expect("renew_many");
    let pipelined = started.elapsed();
    assert!(renewed.into_iter().all(|r| r.expect("renew")));
    println!(
        "renewing {N} held keys: {concurrent:?} as concurrent renew calls, {pipelined:?} as one \
         renew_many pipeline (renew interval of a {lease:?} lease: {:?})",
        lease / 3
    );
    // Generous: a debug build on a loaded 2-core machine.
    assert!(concurrent < lease / 3 && pipelined < lease / 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_counter_is_reported_as_fence_regression_never_reused() {
    let Some(url) = common::url() else { return };
    let store = common::store_on(&url, "regress").await;
    let f1 = store.try_lock(LONG, "k", "alice").await.unwrap().unwrap();
    assert!(store.release("k", "alice", f1).await.unwrap());
    let f2 = store.try_lock(LONG, "k", "alice").await.unwrap().unwrap();
    assert_eq!(f2.get(), 2);
    // The data is lost, as a restart without persistence or a failover would lose it.
    let mut conn = store.connection();
    let _: () = conn.del(store.lock_key("k")).await.unwrap();
    let err = store
        .renew(LONG, "k", "alice", f2)
        .await
        .expect_err("renew sees the counter gone");
    assert_eq!(err.kind(), StoreErrorKind::FenceRegressed, "{err}");
    let err = store
        .try_lock(LONG, "k", "bob")
        .await
        .expect_err("a grant below a fence seen before");
    assert_eq!(err.kind(), StoreErrorKind::FenceRegressed, "{err}");
    assert!(err.to_string().contains("went back"), "{err}");
    // The refused grant was not left behind: the key is free again.
    let holder: String = conn.hget(store.lock_key("k"), "h").await.unwrap();
    assert_eq!(holder, "", "a grant refused for regression is released");
    // Another store instance (another process) has seen nothing and cannot tell.
    let fresh = RedisStore::builder(&url)
        .prefix(store.prefix())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        fresh.try_lock(LONG, "k", "carol").await.unwrap(),
        Fence::new(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_handoff_between_stores_is_woken_by_the_release() {
    let Some(url) = common::url() else { return };
    let prefix = common::unique_prefix("handoff");
    let a = RedisStore::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let b = RedisStore::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let lock_a = CrossProcessLock::builder(a, "job")
        .lease(Duration::from_secs(5))
        .build()
        .unwrap();
    let lock_b = CrossProcessLock::builder(b, "job")
        .lease(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..5 {
        let guard = lock_a.lock().await.unwrap();
        let fence_a = guard.fence();
        let waiter = {
            let lock_b = lock_b.clone();
            tokio::spawn(async move {
                let g = lock_b.lock_timeout(Duration::from_secs(20)).await;
                (g, Instant::now())
            })
        };
        // Let the waiter fail its first try and park on the subscription.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let released = Instant::now();
        guard.release().await.unwrap();
        let (g, at) = waiter.await.unwrap();
        let g = g.expect("b acquires after a's release");
        let took = at - released;
        assert!(g.fence() > fence_a);
        // The lock's backoff alone would be slower than this; the release message woke it.
        assert!(took < Duration::from_millis(500), "handoff took {took:?}");
        g.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_between_a_refusal_and_the_wait_is_not_missed() {
    let Some(url) = common::url() else { return };
    let prefix = common::unique_prefix("gap");
    let a = RedisStore::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let b = RedisStore::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let f = a.try_lock(LONG, "k", "a").await.unwrap().unwrap();
    assert_eq!(b.try_lock(LONG, "k", "b").await.unwrap(), None);
    // The release lands before b starts waiting.
    assert!(a.release("k", "a", f).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    b.wait_for_change("k", LONG).await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the wait missed the release: {waited:?}"
    );
    assert!(b.try_lock(LONG, "k", "b").await.unwrap().is_some());
    // The hint is used up: the next wait on a held key waits.
    let started = Instant::now();
    b.wait_for_change("k", Duration::from_millis(300)).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_holders_in_one_store_never_see_a_false_regression() {
    let Some(url) = common::url() else { return };
    let store = Arc::new(common::store_on(&url, "busy").await);
    // Replies of concurrent calls are handled in any order; none of them may be taken for a
    // fence that went back.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let holder = format!("h{i}");
                let mut grants = 0;
                for _ in 0..150 {
                    if let Some(f) = store.try_lock(LONG, "k", &holder).await? {
                        grants += 1;
                        store.renew(LONG, "k", &holder, f).await?;
                        store.release("k", &holder, f).await?;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                Ok::<_, lease_core::StoreError>(grants)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().expect("no store error under contention");
    }
    assert!(total > 0);
}
