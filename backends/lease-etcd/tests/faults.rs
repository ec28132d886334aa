//! The etcd store under call faults, each test on an etcd of its own: a renew cancelled between
//! its keepalive and the answer, deletes of abandoned keys that fail while etcd is paused, a
//! grant applied by etcd after the client gave up on it, and a renew that comes after its lease.
//!
//! The server is paused with SIGSTOP (it keeps its sockets and answers nothing), or its answers
//! are held back by a proxy while its requests still arrive (the request is applied, the client
//! times out).

mod common;

use std::time::{Duration, Instant};

use lease_core::{LeaseStore, StoreErrorKind};
use lease_etcd::EtcdStore;
use lease_testkit::{EtcdOptions, EtcdServer};

/// A server of the test's own (pausing the shared one would stall other tests). `None` (test
/// skipped) when etcd is not installed and `CI` is unset.
async fn own_server() -> Option<EtcdServer> {
    tokio::task::spawn_blocking(|| EtcdServer::start(EtcdOptions::default()))
        .await
        .expect("start etcd")
}

async fn store_at(endpoint: &str, prefix: &str, request_timeout: Duration) -> EtcdStore {
    EtcdStore::builder([endpoint])
        .prefix(prefix)
        .request_timeout(request_timeout)
        .connect()
        .await
        .expect("connect to the test etcd")
}

/// Whether `key`'s lock key exists, read through `store`'s own connection.
async fn exists(store: &EtcdStore, key: &str) -> bool {
    let mut c = store.client().clone();
    !c.get(store.lock_key(key), None)
        .await
        .expect("get")
        .kvs()
        .is_empty()
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(t.into()).await;
}

/// A renew cancelled after its keepalive was sent leaves that keepalive's answer behind. The
/// next keepalive must not take it for its own: the store would then believe in a keepalive etcd
/// has not applied (here: one sent while etcd is paused), and vouch for the key past the lease's
/// real expiry. The store's belief (`session_cover`) must never reach past what etcd's own
/// `TimeToLive` allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_renew_leaves_no_answer_for_the_next_keepalive() {
    let Some(mut server) = own_server().await else {
        return;
    };
    let lease = Duration::from_secs(5);
    let prefix = common::unique_prefix("cancelled");
    let store = store_at(&server.endpoint(), &prefix, Duration::from_secs(1)).await;
    let f = store
        .try_lock(lease, "k", "alice")
        .await
        .expect("try_lock")
        .expect("granted");
    let mut c = store.client().clone();
    let id = c.get(store.lock_key("k"), None).await.expect("get").kvs()[0].lease();

    // A renewal opens the keepalive stream.
    assert!(store.renew(lease, "k", "alice", f).await.expect("renew"));
    // A renew whose keepalive is sent to a paused etcd, cancelled before the answer comes.
    server.members[0].process().pause();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        store.renew(lease, "k", "alice", f),
    )
    .await;
    assert!(cancelled.is_err(), "etcd is paused, yet: {cancelled:?}");
    server.members[0].process().resume();
    // Its answer arrives; then the lease runs down for a while.
    tokio::time::sleep(Duration::from_millis(3300)).await;

    let asked = Instant::now();
    let ttl = c.lease_time_to_live(id, None).await.expect("time to live");
    assert!(ttl.ttl() > 0, "the session lease is alive: {ttl:?}");
    // `TimeToLive` truncates to whole seconds: etcd expires the lease before this.
    let expires_by = asked + Duration::from_secs(ttl.ttl().unsigned_abs() + 1);

    // A keepalive sent to a paused etcd is not applied; the renew cannot finish.
    server.members[0].process().pause();
    let stuck = tokio::time::timeout(
        Duration::from_millis(300),
        store.renew(lease, "k", "alice", f),
    )
    .await;
    let believed = store.session_cover(lease).await;
    let now = Instant::now();
    server.members[0].process().resume();
    assert!(stuck.is_err(), "etcd is paused, yet: {stuck:?}");
    if let Some(cover) = believed {
        assert!(
            now + cover <= expires_by,
            "the store believes its session lives {cover:?} more, {:?} past etcd's expiry: \
             it took an earlier keepalive's answer for the one etcd never got",
            (now + cover) - expires_by
        );
    }
    // And the store still works once etcd answers again.
    assert!(store.renew(lease, "k", "alice", f).await.expect("renew"));
    let cover = store.session_cover(lease).await.expect("a live session");
    assert!(cover > lease - Duration::from_secs(1), "{cover:?}");
}

/// A key whose holder stopped renewing is deleted before the next keepalive; if that delete
/// fails (etcd paused), the key must still be deleted once etcd answers again, not kept alive by
/// the keepalives other keys' renewals send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_whose_delete_failed_while_etcd_was_paused_deletes_the_key_after_resume() {
    let Some(mut server) = own_server().await else {
        return;
    };
    let lease = Duration::from_secs(3);
    let prefix = common::unique_prefix("sweep");
    let store = store_at(&server.endpoint(), &prefix, Duration::from_millis(500)).await;
    let t0 = Instant::now();
    store
        .try_lock(lease, "abandoned", "alice")
        .await
        .expect("try_lock")
        .expect("granted");
    let kept = store
        .try_lock(lease, "kept", "alice")
        .await
        .expect("try_lock")
        .expect("granted");
    for at in [1000, 2000] {
        sleep_until(t0 + Duration::from_millis(at)).await;
        assert!(
            store
                .renew(lease, "kept", "alice", kept)
                .await
                .expect("renew")
        );
    }
    // `abandoned`'s lease passes while etcd is paused: the sweep before the next keepalive tries
    // to delete it and times out.
    sleep_until(t0 + Duration::from_millis(2500)).await;
    server.members[0].process().pause();
    sleep_until(t0 + Duration::from_millis(3200)).await;
    let during = store.renew(lease, "kept", "alice", kept).await;
    server.members[0].process().resume();
    let resumed = Instant::now();
    assert!(during.is_err(), "etcd is paused, yet: {during:?}");
    // The session is still alive (last keepalive at t0 + 2 s); renewals of `kept` go on.
    let mut gone = None;
    while resumed.elapsed() < lease + Duration::from_secs(2) {
        assert!(
            store
                .renew(lease, "kept", "alice", kept)
                .await
                .expect("renew after resume"),
            "the renewed key stays held"
        );
        if !exists(&store, "abandoned").await {
            gone = Some(resumed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let gone = gone.unwrap_or_else(|| {
        panic!(
            "`abandoned` still exists {:?} after etcd resumed: the failed delete was forgotten",
            resumed.elapsed()
        )
    });
    println!("abandoned key deleted {gone:?} after etcd resumed");
    assert!(gone < lease, "deleted only {gone:?} after resume");
}

/// A grant etcd applied after the client gave up on it (its answer held back past the request
/// timeout) is on the store's session lease; renewals of other keys must not keep it alive past
/// one lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_applied_after_its_try_lock_timed_out_does_not_outlive_its_lease() {
    let Some(server) = own_server().await else {
        return;
    };
    let lease = Duration::from_secs(3);
    let prefix = common::unique_prefix("unknown");
    let proxy = common::HoldingProxy::start(&server.endpoint());
    let store = store_at(&proxy.endpoint(), &prefix, Duration::from_millis(500)).await;
    let observer = store_at(&server.endpoint(), &prefix, Duration::from_secs(2)).await;
    let kept = store
        .try_lock(lease, "kept", "alice")
        .await
        .expect("try_lock")
        .expect("granted");

    proxy.hold_answers(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let call = Instant::now();
    let lost = store.try_lock(lease, "leak", "alice").await;
    proxy.hold_answers(false);
    assert!(lost.is_err(), "its answer was held back, yet: {lost:?}");
    assert!(
        exists(&observer, "leak").await,
        "precondition: etcd applied the grant whose answer was lost"
    );

    let mut taken = None;
    while call.elapsed() < lease * 2 + Duration::from_secs(1) {
        assert!(
            store
                .renew(lease, "kept", "alice", kept)
                .await
                .expect("renew"),
            "the renewed key stays held"
        );
        if let Some(f) = observer
            .try_lock(lease, "leak", "bob")
            .await
            .expect("try_lock by bob")
        {
            taken = Some((f, call.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, after) = taken.unwrap_or_else(|| {
        panic!(
            "`leak` is still held {:?} after the timed-out try_lock ({lease:?} lease): \
             the session lease keeps it alive",
            call.elapsed()
        )
    });
    println!("grant with a lost answer taken over {after:?} after its try_lock");
    assert!(
        after < lease + Duration::from_secs(1),
        "taken only {after:?} after the call"
    );
}

/// A renew that comes after its own lease has passed reports the loss (`false`) even though the
/// key is still on a live session lease; it must not extend a lease that lapsed. The key is then
/// deleted, so another holder gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renew_after_its_lease_passed_reports_the_loss() {
    let Some(server) = own_server().await else {
        return;
    };
    // 300 ms within etcd's 2 s minimum TTL: the session's TTL covers the late renew's call, so
    // no keepalive (and no sweep) is needed to answer it.
    let lease = Duration::from_millis(300);
    let prefix = common::unique_prefix("late");
    let store = store_at(&server.endpoint(), &prefix, Duration::from_secs(2)).await;
    let other = store_at(&server.endpoint(), &prefix, Duration::from_secs(2)).await;
    // The first acquire also opens the session; on a loaded machine its answer may come after
    // the 300 ms lease and be refused as transient, so it is tried again.
    let mut f = None;
    for _ in 0..20 {
        match store.try_lock(lease, "k", "alice").await {
            Ok(got) => {
                f = Some(got.expect("granted"));
                break;
            }
            Err(e) if e.kind() == StoreErrorKind::Transient => {}
            Err(e) => panic!("try_lock: {e:?}"),
        }
    }
    let f = f.expect("an acquire within 20 tries");
    assert!(store.renew(lease, "k", "alice", f).await.expect("renew"));
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert!(
        !store
            .renew(lease, "k", "alice", f)
            .await
            .expect("late renew"),
        "a renew {:?} after its lease passed must report the loss",
        Duration::from_millis(200)
    );
    let started = Instant::now();
    let mut taken = None;
    while started.elapsed() < Duration::from_secs(4) {
        match other.try_lock(lease, "k", "bob").await {
            Ok(Some(g)) => {
                taken = Some(g);
                break;
            }
            Ok(None) => {}
            // An answer slower than the 300 ms lease (a loaded machine) is refused as
            // transient; the next attempt decides.
            Err(e) if e.kind() == StoreErrorKind::Transient => {}
            Err(e) => panic!("try_lock: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let g = taken.expect("the lapsed key goes to another holder");
    assert!(g > f);
}
