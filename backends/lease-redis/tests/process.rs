//! Holders in other processes: a SIGKILLed holder is replaced within lease + 1 s, and a holder
//! paused past its lease learns of the loss when it resumes.
//!
//! The holder is this test binary run again (`std::env::current_exe`) with [`CHILD_ENV`] set,
//! which makes [`child_holder`] take the lock, print `HELD <fence>`, then print `LOST` if its
//! loss signal ever fires.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lease_core::{CrossProcessLock, Error, Fence};
use lease_redis::RedisStore;
use rustix::process::{Pid, Signal, kill_process};
use tokio::sync::mpsc;

const CHILD_ENV: &str = "LEASE_REDIS_TEST_CHILD";
const LEASE: Duration = Duration::from_secs(1);

/// The child role; a no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_holder() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let (url, prefix, key) = (
        parts.next().expect("url"),
        parts.next().expect("prefix"),
        parts.next().expect("key"),
    );
    let store = RedisStore::builder(url)
        .prefix(prefix)
        .connect()
        .await
        .expect("child connects");
    let lock = CrossProcessLock::builder(store, key)
        .lease(LEASE)
        .holder_label("child")
        .build()
        .expect("lock");
    let guard = lock
        .lock_timeout(Duration::from_secs(20))
        .await
        .expect("child acquires");
    println!("HELD {}", guard.fence().get());
    guard.lost().await;
    println!("LOST");
    // Stay alive until the parent kills us: the test asserts on what we printed.
    std::future::pending::<()>().await;
}

struct Holder {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Holder {
    fn spawn(url: &str, prefix: &str, key: &str) -> Holder {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["child_holder", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{url}|{prefix}|{key}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child holder");
        let out = child.stdout.take().expect("child stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Holder { child, lines }
    }

    /// The first line containing `prefix` (libtest may print its own text first on the line),
    /// from `prefix` on, within `within`.
    async fn expect_line(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(prefix) => {
                    return line[line.find(prefix).unwrap_or(0)..].to_owned();
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("the child exited before printing `{prefix}`"),
                Err(_) => panic!("the child did not print `{prefix}` within {within:?}"),
            }
        }
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32).expect("child pid");
        kill_process(pid, sig).expect("signal the child");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fence_of(line: &str) -> Fence {
    let n: u64 = line["HELD ".len()..].trim().parse().expect("fence number");
    Fence::new(n).expect("positive fence")
}

async fn lock_on(url: &str, prefix: &str, key: &str) -> CrossProcessLock<RedisStore> {
    let store = RedisStore::builder(url)
        .prefix(prefix)
        .connect()
        .await
        .expect("connect");
    CrossProcessLock::builder(store, key)
        .lease(LEASE)
        .holder_label("parent")
        .build()
        .expect("lock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_process_is_replaced_within_lease_plus_one_second() {
    let Some(url) = common::url() else { return };
    let prefix = common::unique_prefix("kill");
    let mut holder = Holder::spawn(&url, &prefix, "job");
    let child_fence = fence_of(&holder.expect_line("HELD", Duration::from_secs(20)).await);
    let lock = lock_on(&url, &prefix, "job").await;
    assert!(matches!(
        lock.try_lock_once().await,
        Err(Error::Busy { .. })
    ));
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move {
            let g = lock.lock_timeout(Duration::from_secs(30)).await;
            (g, Instant::now())
        })
    };
    // Let the child's heartbeat run past its first lease, with us waiting for the key.
    tokio::time::sleep(LEASE * 2).await;
    assert!(!waiter.is_finished(), "the child still renews its lease");
    holder.signal(Signal::KILL);
    let killed_at = Instant::now();
    let (guard, at) = waiter.await.expect("waiter");
    let guard = guard.expect("the waiter acquires after the kill");
    let took = at.saturating_duration_since(killed_at);
    println!("a SIGKILLed holder's key was taken {took:?} after the kill (lease {LEASE:?})");
    assert!(
        took <= LEASE + Duration::from_secs(1),
        "another process must acquire within lease + 1 s of the kill, took {took:?}"
    );
    assert!(guard.fence() > child_fence);
    guard.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_holder_is_replaced_and_learns_of_the_loss_on_resume() {
    let Some(url) = common::url() else { return };
    let prefix = common::unique_prefix("pause");
    let mut holder = Holder::spawn(&url, &prefix, "job");
    let child_fence = fence_of(&holder.expect_line("HELD", Duration::from_secs(20)).await);
    let lock = lock_on(&url, &prefix, "job").await;
    holder.signal(Signal::STOP);
    let guard = lock
        .lock_timeout(Duration::from_secs(15))
        .await
        .expect("the key of a paused holder expires");
    assert!(
        guard.fence() > child_fence,
        "the new grant has a larger fence"
    );
    holder.signal(Signal::CONT);
    holder.expect_line("LOST", Duration::from_secs(5)).await;
    assert!(
        guard.is_held(),
        "the resumed holder did not take the key back"
    );
    guard.release().await.expect("release");
}
