//! etcd-specific store behaviour: connection errors, session leases and their keepalives, TTL
//! rounding, watches, and measured latencies.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lease_core::{CrossProcessLock, Fence, LeaseStore, StoreErrorKind};
use lease_etcd::EtcdStore;

const LEASE: Duration = Duration::from_secs(2);

macro_rules! etcd_or_skip {
    () => {
        match common::endpoint() {
            Some(e) => e,
            None => return,
        }
    };
}

async fn grant(store: &EtcdStore, key: &str, holder: &str) -> Fence {
    store
        .try_lock(LEASE, key, holder)
        .await
        .expect("try_lock")
        .unwrap_or_else(|| panic!("`{holder}` was refused `{key}`"))
}

async fn lease_of(store: &EtcdStore, key: &str) -> i64 {
    let mut c = store.client().clone();
    let got = c.get(store.lock_key(key), None).await.expect("get");
    got.kvs().first().expect("the lock key exists").lease()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_fails_clearly_within_bounded_time() {
    let port = lease_testkit::free_port();
    let started = Instant::now();
    let err = EtcdStore::builder([format!("127.0.0.1:{port}")])
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect_err("nothing listens there");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        err.is_transient(),
        "an unreachable cluster may come back: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_settings_are_refused_without_network() {
    for url in [
        "http://127.0.0.1:2379",
        "etcd://",
        "etcd://h:99999",
        "etcd://a:pw@",
    ] {
        let err = EtcdStore::connect(url).await.expect_err(url);
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{url}: {err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
    let err = EtcdStore::builder(Vec::<String>::new())
        .connect()
        .await
        .expect_err("no endpoints");
    assert!(err.to_string().contains("no etcd endpoints"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_prefix_separates_stores() {
    let endpoint = etcd_or_skip!();
    let p = common::unique_prefix("url");
    let a = EtcdStore::connect(&format!("etcd://{endpoint}/{p}a/"))
        .await
        .expect("connect a");
    let b = EtcdStore::connect(&format!("etcd://{endpoint}/{p}b/"))
        .await
        .expect("connect b");
    assert_eq!(grant(&a, "k", "alice").await, Fence::FIRST);
    assert_eq!(
        grant(&b, "k", "bob").await,
        Fence::FIRST,
        "another prefix is another namespace"
    );
    assert!(a.lock_key("k").starts_with(format!("{p}a/").as_bytes()));
    let shown = format!("{a:?}");
    assert!(shown.contains(&endpoint), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_of_many_keys_share_one_lease_and_few_keepalives() {
    let endpoint = etcd_or_skip!();
    let store = Arc::new(common::store_on(&endpoint, "coalesce").await);
    let mut fences = Vec::new();
    for i in 0..40 {
        fences.push(grant(&store, &format!("k{i}"), "alice").await);
    }
    let first = lease_of(&store, "k0").await;
    for i in 1..40 {
        assert_eq!(
            lease_of(&store, &format!("k{i}")).await,
            first,
            "every key of a store shares its session lease"
        );
    }
    let before = store.keepalives_sent();
    let rounds = 3;
    for _ in 0..rounds {
        let tasks: Vec<_> = fences
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let store = store.clone();
                tokio::spawn(async move { store.renew(LEASE, &format!("k{i}"), "alice", f).await })
            })
            .collect();
        for t in tasks {
            assert!(
                t.await.expect("task").expect("renew"),
                "renew of a held key"
            );
        }
    }
    let sent = store.keepalives_sent() - before;
    println!("{} renewals of 40 keys sent {sent} keepalives", rounds * 40);
    assert!(
        sent <= 4 * rounds,
        "renewals must share keepalives: {sent} for {} renewals",
        rounds * 40
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_session_makes_renew_false_and_the_next_grant_uses_a_new_lease() {
    let endpoint = etcd_or_skip!();
    let store = common::store_on(&endpoint, "lapsed").await;
    let f1 = grant(&store, "k", "alice").await;
    let old = lease_of(&store, "k").await;
    // Revoke the session lease behind the store's back, as an expiry would.
    store
        .client()
        .clone()
        .lease_revoke(old)
        .await
        .expect("revoke");
    assert!(
        !store.renew(LEASE, "k", "alice", f1).await.expect("renew"),
        "a renew after the session lapsed must report the loss"
    );
    let f2 = grant(&store, "k", "alice").await;
    assert!(f2 > f1, "the key was deleted with its lease: a new tenure");
    assert_ne!(lease_of(&store, "k").await, old, "a new session lease");
    assert!(store.renew(LEASE, "k", "alice", f2).await.expect("renew"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_its_holder_stopped_renewing_expires_although_other_keys_are_renewed() {
    let endpoint = etcd_or_skip!();
    let a = common::store_on(&endpoint, "abandon").await;
    let prefix = String::from_utf8(a.lock_key("")).expect("utf-8 prefix");
    let prefix = prefix.strip_suffix("l/").expect("layout").to_owned();
    let b = EtcdStore::builder([endpoint.as_str()])
        .prefix(&prefix)
        .connect()
        .await
        .expect("connect");
    let abandoned = grant(&a, "abandoned", "alice").await;
    let kept = grant(&a, "kept", "alice").await;
    let started = Instant::now();
    let mut taken = None;
    while started.elapsed() < Duration::from_secs(10) {
        assert!(
            a.renew(LEASE, "kept", "alice", kept).await.expect("renew"),
            "the renewed key stays held"
        );
        if let Some(f) = b
            .try_lock(LEASE, "abandoned", "bob")
            .await
            .expect("try_lock")
        {
            taken = Some((f, started.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (f, after) = taken.expect("the abandoned key must expire while another key is renewed");
    assert!(f > abandoned);
    println!("abandoned key taken over after {after:?} (lease {LEASE:?})");
    assert!(after < LEASE * 3, "taken only after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_rounded_up_to_whole_seconds() {
    let endpoint = etcd_or_skip!();
    let store = common::store_on(&endpoint, "ttl").await;
    store
        .try_lock(Duration::from_millis(2500), "k", "alice")
        .await
        .expect("try_lock")
        .expect("granted");
    let id = lease_of(&store, "k").await;
    let ttl = store
        .client()
        .clone()
        .lease_time_to_live(id, None)
        .await
        .expect("time to live");
    assert_eq!(ttl.granted_ttl(), 3, "2.5 s rounds up to 3 s");
    assert_eq!(
        store
            .capabilities()
            .effective_lease(Duration::from_millis(300)),
        Duration::from_secs(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_wakes_when_the_key_expires_and_at_once_when_vacant() {
    let endpoint = etcd_or_skip!();
    let a = common::store_on(&endpoint, "watch").await;
    let started = Instant::now();
    a.wait_for_change("vacant", Duration::from_secs(20)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a vacant key needs no wait"
    );
    grant(&a, "k", "alice").await;
    let started = Instant::now();
    a.wait_for_change("k", Duration::from_secs(20)).await;
    let woke = started.elapsed();
    println!("waiter woke {woke:?} after the grant of a {LEASE:?} lease that was not renewed");
    assert!(
        woke < Duration::from_secs(6),
        "the expiry (a delete) must wake the watcher: {woke:?}"
    );
    assert!(
        a.try_lock(LEASE, "k", "bob")
            .await
            .expect("try_lock")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_minimum_ttl_is_used_and_its_surplus_spares_keepalives() {
    if common::endpoint().is_none() {
        return;
    }
    // etcd's minimum TTL is 1.5 × the election timeout, rounded up: 2 s for 1000 ms.
    let server = tokio::task::spawn_blocking(|| {
        lease_testkit::EtcdServer::start(lease_testkit::EtcdOptions {
            extra_args: vec!["--election-timeout=1000".to_owned()],
            ..Default::default()
        })
    })
    .await
    .expect("start etcd")
    .expect("etcd is installed");
    let store = common::store_on(&server.endpoint(), "minttl").await;
    let short = Duration::from_millis(300);
    let f = store
        .try_lock(short, "k", "alice")
        .await
        .expect("try_lock")
        .expect("granted");
    let id = lease_of(&store, "k").await;
    let ttl = store
        .client()
        .clone()
        .lease_time_to_live(id, None)
        .await
        .expect("time to live");
    assert_eq!(
        ttl.granted_ttl(),
        2,
        "etcd raised the 1 s request to its minimum"
    );
    // The granted 2 s already covers now + 300 ms: the renew only checks ownership.
    let before = store.keepalives_sent();
    assert!(store.renew(short, "k", "alice", f).await.expect("renew"));
    assert_eq!(store.keepalives_sent(), before, "no keepalive was needed");
    // Renewing within the 300 ms lease for longer than the 1.7 s surplus: once the surplus is
    // spent, a renew sends a keepalive, which covers the next 1.7 s again.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2200) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(store.renew(short, "k", "alice", f).await.expect("renew"));
    }
    let sent = store.keepalives_sent() - before;
    assert!(
        (1..=2).contains(&sent),
        "about one keepalive per 1.7 s of renewals, sent {sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_session_fires_the_lock_guards_loss_signal() {
    let endpoint = etcd_or_skip!();
    let store = common::store_on(&endpoint, "guardloss").await;
    let lock = CrossProcessLock::builder(store.clone(), "k")
        .lease(LEASE)
        .build()
        .expect("lock");
    let guard = lock
        .lock_timeout(Duration::from_secs(10))
        .await
        .expect("acquire");
    let id = lease_of(&store, "k").await;
    store
        .client()
        .clone()
        .lease_revoke(id)
        .await
        .expect("revoke");
    tokio::time::timeout(LEASE + Duration::from_secs(1), guard.lost())
        .await
        .expect("the next heartbeat reports the loss");
    assert!(!guard.is_held());
    // A fresh acquisition works, on a new session and with a larger fence.
    let old = guard.fence();
    drop(guard);
    let again = lock
        .lock_timeout(Duration::from_secs(10))
        .await
        .expect("acquire again");
    assert!(again.fence() > old);
    again.release().await.expect("release");
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

/// Prints (does not assert) what a grant and a handoff cost next to a plain etcd put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_put_acquire_release_and_handoff() {
    let endpoint = etcd_or_skip!();
    let store = common::store_on(&endpoint, "measure").await;
    let n = 100;
    let mut client = store.client().clone();
    let (mut put, mut acquire, mut release) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        client
            .put(store.lock_key(&format!("plain{i}")), "v", None)
            .await
            .expect("put");
        put.push(t.elapsed());
        let t = Instant::now();
        let f = grant(&store, "k", "alice").await;
        acquire.push(t.elapsed());
        let t = Instant::now();
        assert!(store.release("k", "alice", f).await.expect("release"));
        release.push(t.elapsed());
    }
    for (name, s) in [
        ("put", &mut put),
        ("acquire", &mut acquire),
        ("release", &mut release),
    ] {
        println!(
            "etcd {name:8} p50 {:?} p99 {:?} ({n} samples)",
            percentile(s, 0.5),
            percentile(s, 0.99)
        );
    }

    // Handoff: one lock waits while another holds; time from release to the waiter's grant.
    let a = CrossProcessLock::builder(store.clone(), "handoff")
        .lease(LEASE)
        .build()
        .expect("lock a");
    let b = CrossProcessLock::builder(store.clone(), "handoff")
        .lease(LEASE)
        .build()
        .expect("lock b");
    let mut handoff = Vec::new();
    for _ in 0..10 {
        let ga = a.lock_timeout(Duration::from_secs(10)).await.expect("a");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let g = b.lock_timeout(Duration::from_secs(10)).await.expect("b");
                let at = Instant::now();
                g.release().await.expect("release b");
                at
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        ga.release().await.expect("release a");
        let got = waiter.await.expect("waiter");
        handoff.push(got.saturating_duration_since(t));
    }
    println!(
        "lock handoff (release to waiter's grant) p50 {:?} max {:?}",
        percentile(&mut handoff, 0.5),
        percentile(&mut handoff, 1.0)
    );
}
