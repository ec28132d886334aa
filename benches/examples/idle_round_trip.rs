//! One Redis round trip (`EVALSHA` of a one-line `SET` script) after the caller slept 0, 1, 10
//! and 50 ms, three ways: the multiplexed connection, the `ConnectionManager` over it (what
//! lease-redis uses), and a dedicated blocking connection written and read on the caller's
//! thread (the bench's fastest floor). On a multi-thread tokio runtime with two workers (as the
//! bench's workers), the calls in a spawned task.
//!
//! ```sh
//! cargo run --release -p lease-bench --features redis --example idle_round_trip [redis://HOST:PORT]
//! ```
//!
//! Without a URL it starts a throwaway `redis-server` (lease-testkit). Prints the p50 and p90 in
//! µs of 60 calls of each kind per idle time; the kinds are interleaved, so load on the machine
//! falls on all three alike.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use lease_redis::redis;

fn main() -> anyhow::Result<()> {
    let server;
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => {
            server = lease_testkit::RedisServer::start(lease_testkit::RedisOptions::default())
                .context("no redis-server to start (install the Debian package `redis-server`)")?;
            server.url()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move { tokio::spawn(run(url)).await? })
}

async fn run(url: String) -> anyhow::Result<()> {
    let client = redis::Client::open(url.as_str())?;
    let mut mux = client.get_multiplexed_async_connection().await?;
    let mut manager = redis::aio::ConnectionManager::new(client.clone()).await?;
    let mut blocking = client.get_connection()?;
    let script = redis::Script::new("return redis.call('SET', KEYS[1], ARGV[1])");
    let call = || {
        let mut c = script.key("idle-round-trip");
        c.arg("v");
        c
    };
    let () = call().invoke_async(&mut mux).await?;
    println!("idle      multiplexed        ConnectionManager  blocking");
    for idle_ms in [0u64, 1, 10, 50] {
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..60 {
            sleep(idle_ms).await;
            let t = Instant::now();
            let () = call().invoke_async(&mut mux).await?;
            a.push(t.elapsed());
            sleep(idle_ms).await;
            let t = Instant::now();
            let () = call().invoke_async(&mut manager).await?;
            b.push(t.elapsed());
            sleep(idle_ms).await;
            let t = Instant::now();
            let () = call().invoke(&mut blocking)?;
            c.push(t.elapsed());
        }
        println!(
            "{idle_ms:>3} ms    {}  {}  {}",
            quantiles(a),
            quantiles(b),
            quantiles(c)
        );
    }
    Ok(())
}

/// Sleeps as the bench's holder does (on a blocking thread, to the microsecond), or, for 0, for
/// half a millisecond on tokio's timer, so that consecutive calls are not back to back.
async fn sleep(ms: u64) {
    if ms == 0 {
        tokio::time::sleep(Duration::from_micros(500)).await;
    } else {
        let d = Duration::from_millis(ms);
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
    }
}

fn quantiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)].as_micros();
    format!("p50 {:>4} p90 {:>4}", at(50), at(90))
}
