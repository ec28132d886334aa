//! A 3-node etcd cluster on loopback: SIGKILL the leader while keys are held and waiters wait.

mod common;

use std::time::{Duration, Instant};

use lease_core::{CrossProcessLock, Fence, LeaseStore};
use lease_etcd::EtcdStore;
use lease_etcd::etcd_client::Client;
use lease_testkit::{EtcdCluster, EtcdOptions};

const LEASE: Duration = Duration::from_secs(2);
const KEYS: usize = 4;

async fn store(endpoints: &[String], prefix: &str) -> EtcdStore {
    EtcdStore::builder(endpoints.iter().cloned())
        .prefix(prefix)
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("connect to the cluster")
}

/// The index of the member that is the Raft leader.
async fn leader(cluster: &EtcdCluster) -> usize {
    for _ in 0..50 {
        for (i, m) in cluster.members.iter().enumerate() {
            let Ok(mut c) = Client::connect([m.endpoint()], None).await else {
                continue;
            };
            if let Ok(s) = c.status().await {
                if s.header().is_some_and(|h| h.member_id() == s.leader()) {
                    return i;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no member reports itself leader");
}

/// Alternating grants of one key by two stores; returns the fences in order.
async fn alternate(a: &EtcdStore, b: &EtcdStore, key: &str, n: usize) -> Vec<Fence> {
    let mut fences = Vec::new();
    for i in 0..n {
        let (s, h) = if i % 2 == 0 { (a, "a") } else { (b, "b") };
        // Right after an election a request may fail once; a retry is what the lock does too.
        let mut tries = 0;
        let f = loop {
            match s.try_lock(LEASE, key, h).await {
                Ok(Some(f)) => break f,
                Ok(None) => panic!("`{key}` is not held by anyone between alternations"),
                Err(e) if e.is_transient() && tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("try_lock: {e}"),
            }
        };
        let mut tries = 0;
        loop {
            match s.release(key, h, f).await {
                Ok(released) => {
                    assert!(released, "release of a fresh grant");
                    break;
                }
                Err(e) if e.is_transient() && tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("release: {e}"),
            }
        }
        fences.push(f);
    }
    fences
}

fn strictly_increasing(fences: &[Fence]) -> bool {
    fences.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_grants_no_key_twice_and_waiters_progress() {
    let Some(mut cluster) = EtcdCluster::start_cluster(3, EtcdOptions::default()) else {
        return;
    };
    let endpoints = cluster.endpoints();
    let prefix = common::unique_prefix("cluster");
    let a = store(&endpoints, &prefix).await;
    let b = store(&endpoints, &prefix).await;

    let mut seq = alternate(&a, &b, "seq", 10).await;

    // A holds every key; B waits for each of them.
    let mut a_guards = Vec::new();
    let mut a_lost = Vec::new();
    for i in 0..KEYS {
        let lock = CrossProcessLock::builder(a.clone(), format!("k{i}"))
            .lease(LEASE)
            .holder_label("a")
            .build()
            .expect("lock");
        let g = lock
            .lock_timeout(Duration::from_secs(10))
            .await
            .expect("A acquires");
        let token = g.loss_token();
        a_lost.push(Some(tokio::spawn(async move {
            token.cancelled().await;
            Instant::now()
        })));
        a_guards.push(Some(g));
    }
    let a_fences: Vec<Fence> = a_guards.iter().flatten().map(|g| g.fence()).collect();
    let waiters: Vec<_> = (0..KEYS)
        .map(|i| {
            let lock = CrossProcessLock::builder(b.clone(), format!("k{i}"))
                .lease(LEASE)
                .holder_label("b")
                .build()
                .expect("lock");
            tokio::spawn(async move {
                let give_up = Instant::now() + Duration::from_secs(45);
                // A waiting lock call returns the first store error (requests in flight when
                // the leader dies time out); waiting on is the caller's choice, made here.
                let g = loop {
                    match lock
                        .lock_timeout(give_up.saturating_duration_since(Instant::now()))
                        .await
                    {
                        Ok(g) => break g,
                        Err(e) if e.is_retryable() && Instant::now() < give_up => {
                            println!("k{i}: B's waiter retries after: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("B's waiter for k{i} must acquire in the end: {e}"),
                    }
                };
                let at = Instant::now();
                let fence = g.fence();
                // Hold briefly, then hand the key back.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = g.release().await;
                (fence, at)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "no waiter gets a held key"
    );

    let killed = leader(&cluster).await;
    cluster.members[killed].process().kill();
    let killed_at = Instant::now();
    let healthy = tokio::task::spawn_blocking(move || {
        let ok = cluster.wait_healthy(2, Duration::from_secs(20));
        (cluster, ok)
    })
    .await
    .expect("wait for health");
    let (cluster, ok) = healthy;
    assert!(ok, "the two remaining members elect a leader");
    println!(
        "killed leader n{killed}; the others were healthy again after {:?}",
        killed_at.elapsed()
    );

    // Keys 0 and 1: A releases them; B's waiters must get them promptly.
    let released_at = Instant::now();
    for g in a_guards.iter_mut().take(2) {
        if let Some(g) = g.take() {
            let _ = g.release().await;
        }
    }
    // Keys 2 and 3: A either still holds them, and etcd agrees, or has been told it lost them.
    tokio::time::sleep(LEASE).await;
    let mut kept = Vec::new();
    for (i, slot) in a_guards.iter_mut().enumerate().skip(2) {
        let g = slot.as_ref().expect("guard");
        if g.is_held() {
            let probe = b
                .try_lock(LEASE, &format!("k{i}"), "probe")
                .await
                .expect("probe");
            assert_eq!(
                probe, None,
                "A believes it holds k{i}: nobody else may get it"
            );
            kept.push(i);
        }
        // Release what is still held so that B's waiter makes progress.
        if let Some(g) = slot.take() {
            let _ = g.release().await;
        }
    }
    println!("after the leader kill, A kept {kept:?} of keys 2 and 3 (the rest lost explicitly)");

    for (i, w) in waiters.into_iter().enumerate() {
        let (fence, at) = w.await.expect("waiter task");
        assert!(
            fence > a_fences[i],
            "k{i}: B's fence {fence} must exceed A's {}",
            a_fences[i]
        );
        if i < 2 {
            let after = at.saturating_duration_since(released_at);
            println!("k{i}: B acquired {after:?} after A's release");
            assert!(
                after < Duration::from_secs(10),
                "k{i}: waiter slow: {after:?}"
            );
        } else if !kept.contains(&i) {
            // A lost it: its loss signal fired before B was granted the key. (Key i's own
            // signal: the others', of keys A released, never fire.)
            let lost = a_lost[i].take().expect("one loss watcher per key");
            let lost_at = lost.await.expect("loss signal");
            assert!(
                lost_at <= at,
                "k{i}: B was granted the key before A's loss signal fired"
            );
        }
    }

    seq.extend(alternate(&a, &b, "seq", 10).await);
    assert!(
        strictly_increasing(&seq),
        "fences across the leader kill: {seq:?}"
    );
    drop(cluster);
}
