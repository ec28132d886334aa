//! Measures handoff latency on loopback: the time from a holder's release to another store's
//! waiter holding the key, next to the raw Redis round trip (PING) of the same run.
//!
//! ```text
//! cargo run -p lease-redis --example handoff --release [-- ROUNDS]
//! ```
//!
//! Starts its own redis-server (lease-testkit). Two stores, each with its own connections, stand
//! for two processes. Three measurements:
//!
//! - `ping`: one `PING` round trip on the store's connection;
//! - `store handoff`: `release` by A until B's `try_lock` returns a fence, B parked in
//!   `wait_for_change`;
//! - `lock handoff`: `LockGuard::release` by A until B's `CrossProcessLock::lock` returns.

use std::time::{Duration, Instant};

use lease_core::{CrossProcessLock, LeaseStore};
use lease_redis::RedisStore;
use lease_redis::redis;
use lease_testkit::{RedisOptions, RedisServer};
use tokio::sync::mpsc;

fn percentiles(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{name:>14}: p50 {:>9.1?}  p90 {:>9.1?}  p99 {:>9.1?}  max {:>9.1?}  (n = {})",
        at(0.5),
        at(0.9),
        at(0.99),
        samples[samples.len() - 1],
        samples.len()
    );
    at(0.5)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let server = RedisServer::start(RedisOptions::default()).expect("redis-server is installed");
    let a = RedisStore::builder(server.url())
        .prefix("bench:")
        .connect()
        .await
        .unwrap();
    let b = RedisStore::builder(server.url())
        .prefix("bench:")
        .connect()
        .await
        .unwrap();
    let lease = Duration::from_secs(30);

    // Raw round trip.
    let mut conn = a.connection();
    for _ in 0..200 {
        let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    }
    let mut ping = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        ping.push(t.elapsed());
    }

    // The same after an idle millisecond, as a handoff's waiter sees it: threads parked.
    let mut cold_ping = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        cold_ping.push(t.elapsed());
    }

    // Raw pub/sub: PUBLISH on one connection until a subscriber task has the message.
    let mut pubsub = redis::Client::open(server.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.subscribe("bench:raw").await.unwrap();
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<Instant>();
    let reader = tokio::spawn(async move {
        use futures::StreamExt;
        let mut messages = pubsub.into_on_message();
        while messages.next().await.is_some() {
            if got_tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    let mut raw_pubsub = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_micros(200)).await;
        let t = Instant::now();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("bench:raw")
            .arg("x")
            .query_async(&mut conn)
            .await
            .unwrap();
        raw_pubsub.push(got_rx.recv().await.unwrap() - t);
    }
    reader.abort();

    // Store-level handoff.
    let (parked_tx, mut parked_rx) = mpsc::unbounded_channel::<()>();
    let (acquired_tx, mut acquired_rx) = mpsc::unbounded_channel::<(Instant, Instant)>();
    let (go_tx, mut go_rx) = mpsc::unbounded_channel::<()>();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            while go_rx.recv().await.is_some() {
                let mut woken = Instant::now();
                loop {
                    if let Some(f) = b.try_lock(lease, "k", "b").await.unwrap() {
                        let at = Instant::now();
                        b.release("k", "b", f).await.unwrap();
                        acquired_tx.send((woken, at)).unwrap();
                        break;
                    }
                    let _ = parked_tx.send(());
                    b.wait_for_change("k", Duration::from_secs(1)).await;
                    woken = Instant::now();
                }
            }
        })
    };
    let mut store_handoff = Vec::with_capacity(rounds);
    let mut wake = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let f = a
            .try_lock(lease, "k", "a")
            .await
            .unwrap()
            .expect("a acquires");
        go_tx.send(()).unwrap();
        parked_rx.recv().await.unwrap();
        // Let the waiter reach its wait (the watch flag would cover a release before it, too).
        tokio::time::sleep(Duration::from_millis(1)).await;
        let t = Instant::now();
        assert!(a.release("k", "a", f).await.unwrap());
        let (woken, at) = acquired_rx.recv().await.unwrap();
        store_handoff.push(at - t);
        wake.push(woken.saturating_duration_since(t));
        while parked_rx.try_recv().is_ok() {}
    }
    drop(go_tx);
    waiter.await.unwrap();

    // Lock-level handoff.
    let lock_a = CrossProcessLock::builder(a.clone(), "l")
        .lease(lease)
        .build()
        .unwrap();
    let lock_b = CrossProcessLock::builder(b.clone(), "l")
        .lease(lease)
        .build()
        .unwrap();
    let lock_rounds = rounds / 4;
    let mut lock_handoff = Vec::with_capacity(lock_rounds);
    for _ in 0..lock_rounds {
        let guard = lock_a.lock().await.unwrap();
        let waiter = {
            let lock_b = lock_b.clone();
            tokio::spawn(async move {
                let g = lock_b.lock().await.unwrap();
                let at = Instant::now();
                g.release().await.unwrap();
                at
            })
        };
        tokio::time::sleep(Duration::from_millis(3)).await;
        let t = Instant::now();
        guard.release().await.unwrap();
        lock_handoff.push(waiter.await.unwrap() - t);
    }

    println!("loopback redis-server {}, {rounds} rounds", server.url());
    let rtt = percentiles("ping", ping);
    let cold = percentiles("idle ping", cold_ping);
    percentiles("raw pub/sub", raw_pubsub);
    percentiles("release->wake", wake);
    let store = percentiles("store handoff", store_handoff);
    let lock = percentiles("lock handoff", lock_handoff);
    for (name, base) in [("ping", rtt), ("idle ping", cold)] {
        println!(
            "store handoff p50 = {:.1} x {name} p50; lock handoff p50 = {:.1} x {name} p50",
            store.as_secs_f64() / base.as_secs_f64(),
            lock.as_secs_f64() / base.as_secs_f64()
        );
    }
}
