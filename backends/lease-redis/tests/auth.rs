//! Passwords and ACL users against a real redis-server started with `requirepass` and an ACL user
//! limited to the lock keys and the release channel; no password ever shows in errors, `Debug`,
//! `Display` or logs.

mod common;

use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use lease_core::{LeaseStore, StoreErrorKind};
use lease_redis::RedisStore;
use lease_testkit::{RedisOptions, RedisServer};

const ROOT_PASSWORD: &str = "root-pw-7f3a9c";
const APP_PASSWORD: &str = "app-pw-51be02";
const WRONG_PASSWORD: &str = "wrong-pw-c0ffee";
const LEASE: Duration = Duration::from_secs(10);

/// One server: the default user needs `ROOT_PASSWORD`; `locker` may touch only `locks:*` keys
/// and the `locks:*` channels.
static REDIS: LazyLock<Option<RedisServer>> = LazyLock::new(|| {
    RedisServer::start(RedisOptions {
        password: Some(ROOT_PASSWORD.into()),
        acl_users: vec![format!(
            "user locker on >{APP_PASSWORD} resetkeys ~locks:* resetchannels &locks:* \
             -@all +@scripting +subscribe +publish +ping +hello +auth +client \
             +hmget +hget +hset +hincrby +exists +time \
             +lindex +lpop +rpush +lrem +lrange +zscore +zadd +zrem +hdel"
        )],
        ..RedisOptions::default()
    })
});

fn port() -> Option<u16> {
    REDIS.as_ref().map(RedisServer::port)
}

/// Every log line of this test binary, at debug level and above, from every crate.
static LOGS: LazyLock<Arc<Mutex<Vec<u8>>>> = LazyLock::new(Arc::default);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(|| LogWriter(LOGS.clone()))
            .try_init();
    });
}

fn assert_no_password(text: &str) {
    for secret in [ROOT_PASSWORD, APP_PASSWORD, WRONG_PASSWORD] {
        assert!(!text.contains(secret), "a password leaked into: {text}");
    }
}

fn assert_logs_hold_no_password() {
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    let logs = String::from_utf8_lossy(&logs);
    assert!(!logs.is_empty(), "the log capture works");
    assert_no_password(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_limited_to_the_lock_keys_works() {
    capture_logs();
    let Some(port) = port() else { return };
    let url = format!("redis://locker:{APP_PASSWORD}@127.0.0.1:{port}/");
    let a = RedisStore::builder(&url)
        .prefix("locks:")
        .connect()
        .await
        .expect("connect as locker");
    let b = RedisStore::builder(&url)
        .prefix("locks:")
        .connect()
        .await
        .expect("connect as locker");
    // The ACL refuses CONFIG and INFO: the policy is unknown, with a warning.
    assert_eq!(a.eviction_policy(), None);
    {
        let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
        let logs = String::from_utf8_lossy(&logs);
        assert!(
            logs.contains("eviction policy could not be read"),
            "the unknown eviction policy is logged: {logs}"
        );
    }
    let shown = format!("{a} {a:?}");
    assert_no_password(&shown);
    assert!(shown.contains("***@127.0.0.1"), "{shown}");

    let f = a
        .try_lock(LEASE, "acl/k", "alice")
        .await
        .unwrap()
        .expect("granted");
    assert_eq!(b.try_lock(LEASE, "acl/k", "bob").await.unwrap(), None);
    assert!(a.renew(LEASE, "acl/k", "alice", f).await.unwrap());
    // The release announcement reaches a waiter through the ACL's channel permission.
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            b.wait_for_change("acl/k", Duration::from_secs(20)).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.release("acl/k", "alice", f).await.unwrap());
    let woke = waiter.await.unwrap();
    assert!(woke < Duration::from_secs(5), "waiter woke after {woke:?}");
    let g = b.try_lock(LEASE, "acl/k", "bob").await.unwrap().unwrap();
    assert!(g > f);
    // Inspect and break need nothing beyond the commands above (`PTTL` only for keys still
    // under layout 1).
    let state = a.inspect("acl/k").await.unwrap();
    assert_eq!(
        (state.holder.as_deref(), state.fence),
        (Some("bob"), Some(g))
    );
    let broken = a.break_lock("acl/k").await.unwrap().expect("held");
    assert!(broken.fence > g && broken.was_live);
    assert!(!b.renew(LEASE, "acl/k", "bob", g).await.unwrap());
    assert_logs_hold_no_password();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_works_through_the_url() {
    let Some(port) = port() else { return };
    let store = RedisStore::connect(&format!("redis://:{ROOT_PASSWORD}@127.0.0.1:{port}/"))
        .await
        .expect("connect with requirepass");
    assert_no_password(&format!("{store} {store:?}"));
    assert!(
        store
            .try_lock(LEASE, "root/k", "alice")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_password_is_a_permanent_authentication_error() {
    capture_logs();
    let Some(port) = port() else { return };
    for url in [
        format!("redis://locker:{WRONG_PASSWORD}@127.0.0.1:{port}/"),
        format!("redis://:{WRONG_PASSWORD}@127.0.0.1:{port}/"),
        format!("redis://127.0.0.1:{port}/"),
    ] {
        let started = Instant::now();
        let err = RedisStore::builder(&url)
            .prefix("locks:")
            .connect()
            .await
            .expect_err("refused credentials");
        let msg = err.to_string();
        println!("refused credentials: {msg}");
        assert_eq!(err.kind(), StoreErrorKind::Permanent, "{msg}");
        assert!(
            msg.contains("authentication"),
            "says it is about authentication: {msg}"
        );
        assert!(
            msg.contains(&format!("127.0.0.1:{port}")),
            "names the server: {msg}"
        );
        assert_no_password(&msg);
        assert_no_password(&format!("{err:?}"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    assert_logs_hold_no_password();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_outside_its_key_pattern_gets_a_permission_error() {
    let Some(port) = port() else { return };
    let url = format!("redis://locker:{APP_PASSWORD}@127.0.0.1:{port}/");
    // The subscription to `other:released` is refused at connect time.
    let err = RedisStore::builder(&url)
        .prefix("other:")
        .connect()
        .await
        .expect_err("channel outside the ACL");
    println!("channel outside the ACL: {err}");
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("permission"), "{err}");
    // Without notifications the keys themselves are refused on first use.
    let store = RedisStore::builder(&url)
        .prefix("other:")
        .notifications(false)
        .connect()
        .await
        .expect("connect without subscribing");
    let err = store
        .try_lock(LEASE, "k", "alice")
        .await
        .expect_err("keys outside the ACL");
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("permission"), "{err}");
    assert_no_password(&format!("{err} {err:?}"));
}
