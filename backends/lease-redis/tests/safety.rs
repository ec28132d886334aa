//! What decides a grant on Redis: eviction cannot free a held key, a renewal cannot revive a
//! lapsed lease, and the Redis host's wall clock is the clock of every lease.
//!
//! The eviction and clock tests start their own redis-server (with `maxmemory`, an eviction
//! policy, or under libfaketime); the others share one.

mod common;

use std::time::{Duration, Instant};

use lease_core::{FenceGate, LeaseStore, StoreErrorKind};
use lease_redis::RedisStore;
use lease_redis::redis::{self, AsyncCommands};
use lease_testkit::{RedisOptions, RedisServer};

const LONG: Duration = Duration::from_secs(60);

fn server_with(extra: &[&str]) -> Option<RedisServer> {
    RedisServer::start(RedisOptions {
        extra_args: extra.iter().map(|s| (*s).to_owned()).collect(),
        ..RedisOptions::default()
    })
}

async fn info_field(conn: &mut redis::aio::ConnectionManager, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
}

/// Under `volatile-ttl` Redis evicts the keys closest to their expiry first. Filling the memory
/// with keys that expire later than the leases must not free a single held key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_volatile_ttl_never_grants_a_held_key_to_another_holder() {
    let Some(server) = server_with(&["--maxmemory", "3mb", "--maxmemory-policy", "volatile-ttl"])
    else {
        return;
    };
    let alice = RedisStore::builder(server.url())
        .prefix("evict:")
        .connect()
        .await
        .expect("volatile-* policies are accepted: the lease records have no TTL");
    let bob = RedisStore::builder(server.url())
        .prefix("evict:")
        .connect()
        .await
        .unwrap();
    let keys: Vec<String> = (0..50).map(|i| format!("job/{i}")).collect();
    let mut fences = Vec::new();
    for k in &keys {
        fences.push(alice.try_lock(LONG, k, "alice").await.unwrap().unwrap());
    }

    // Fill the memory several times over with keys that expire later than any lease.
    let mut conn = alice.connection();
    let value = vec![b'x'; 10_000];
    for batch in 0..40 {
        let mut pipe = redis::pipe();
        for i in 0..50 {
            pipe.cmd("SET")
                .arg(format!("filler:{batch}:{i}"))
                .arg(&value)
                .arg("EX")
                .arg(3600)
                .ignore();
        }
        // Once only untimed keys are left, Redis refuses writes (OOM): that is fine here.
        let _: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
    }
    let evicted = info_field(&mut conn, "stats", "evicted_keys").await;
    assert!(evicted > 0, "the filler made Redis evict keys");

    for (k, f) in keys.iter().zip(&fences) {
        assert_eq!(
            bob.try_lock(LONG, k, "bob")
                .await
                .expect("try_lock under memory pressure"),
            None,
            "{k} is held by alice (fence {f}) but was granted to bob after {evicted} evictions"
        );
    }
    for (k, f) in keys.iter().zip(&fences) {
        assert!(
            alice.renew(LONG, k, "alice", *f).await.unwrap(),
            "alice still holds {k} with fence {f}"
        );
    }
}

/// Under `allkeys-*` Redis may evict any key, the lease records and their fences too; no layout
/// can make that safe, so the store refuses to start on such a server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allkeys_eviction_policy_is_refused_at_connect() {
    let Some(server) = server_with(&["--maxmemory-policy", "allkeys-lru"]) else {
        return;
    };
    let err = RedisStore::builder(server.url())
        .prefix("evict:")
        .connect()
        .await
        .expect_err("an allkeys-* policy can evict fences");
    let msg = err.to_string();
    println!("allkeys-lru: {msg}");
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{msg}");
    assert!(msg.contains("allkeys-lru"), "names the policy: {msg}");
    assert!(msg.contains("noeviction"), "says what to set: {msg}");
    assert!(
        msg.contains("allow_allkeys_eviction"),
        "says how to opt in: {msg}"
    );
    // Whoever accepts the risk may connect.
    let store = RedisStore::builder(server.url())
        .prefix("evict:")
        .allow_allkeys_eviction(true)
        .connect()
        .await
        .expect("allkeys-* allowed explicitly");
    assert_eq!(store.eviction_policy(), Some("allkeys-lru"));
    assert!(store.try_lock(LONG, "k", "alice").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_noeviction_policy_is_read_at_connect() {
    let Some(url) = common::url() else { return };
    let store = common::store_on(&url, "policy").await;
    assert_eq!(store.eviction_policy(), Some("noeviction"));
}

/// A renewal that reaches Redis after the lease lapsed (a slow network, a paused server) must
/// not extend it: the holder's deadline has passed, so it was told it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_after_the_lease_lapsed_does_not_extend_it() {
    let Some(url) = common::url() else { return };
    let store = common::store_on(&url, "late-renew").await;
    let lease = Duration::from_millis(300);
    let f = store.try_lock(lease, "k", "alice").await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !store.renew(lease, "k", "alice", f).await.unwrap(),
        "a renewal after the lease lapsed revived it"
    );
    assert!(
        !store.renew_many(LONG, &[("k", "alice", f)]).await.unwrap()[0]
            .as_ref()
            .unwrap(),
        "a batched renewal after the lease lapsed revived it"
    );
    // The key is free: another holder gets it at once, with a larger fence.
    let g = store.try_lock(LONG, "k", "bob").await.unwrap();
    assert!(g.is_some_and(|g| g > f), "bob gets the lapsed key: {g:?}");

    // A lapsed lease nobody took is retaken only by an explicit acquisition, with its fence.
    let f = store.try_lock(lease, "k2", "alice").await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!store.renew(LONG, "k2", "alice", f).await.unwrap());
    assert_eq!(store.try_lock(LONG, "k2", "alice").await.unwrap(), Some(f));
    assert!(store.renew(LONG, "k2", "alice", f).await.unwrap());
}

/// An operator who deletes a held key's record frees it; the holder's next renewal must not
/// write it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_del_of_a_held_key_is_not_undone_by_renew() {
    let Some(url) = common::url() else { return };
    let prefix = common::unique_prefix("del");
    let store = RedisStore::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let f = store.try_lock(LONG, "k", "alice").await.unwrap().unwrap();
    let mut conn = store.connection();
    let deleted: u64 = conn.del(store.lock_key("k")).await.unwrap();
    assert_eq!(deleted, 1);
    // A store that saw the fence reports that it went back; one that did not says "not held".
    let r = store.renew(LONG, "k", "alice", f).await;
    assert!(!matches!(r, Ok(true)), "the renewal undid the DEL: {r:?}");
    let fresh = RedisStore::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    assert!(!fresh.renew(LONG, "k", "alice", f).await.unwrap());
    let exists: bool = conn.exists(store.lock_key("k")).await.unwrap();
    assert!(!exists, "the renewal wrote the deleted key back");
}

/// The supported way to take a key from its holder: the fence rises, so the old holder's writes
/// can be refused at once, and nothing the old holder sends afterwards gets the key back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_lock_frees_the_key_and_raises_the_fence() {
    let Some(url) = common::url() else { return };
    let prefix = common::unique_prefix("break");
    let connect = || RedisStore::builder(&url).prefix(&prefix).connect();
    let (alice, bob, operator) = (
        connect().await.unwrap(),
        connect().await.unwrap(),
        connect().await.unwrap(),
    );
    let f = alice.try_lock(LONG, "k", "alice").await.unwrap().unwrap();
    let gate = FenceGate::new();
    gate.check(f).expect("alice writes");
    assert_eq!(bob.try_lock(LONG, "k", "bob").await.unwrap(), None);
    let waiter = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            bob.wait_for_change("k", LONG).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let broken = operator.break_lock("k").await.unwrap().expect("a held key");
    assert!(broken.fence > f, "the break raises the fence");
    assert_eq!(broken.previous_holder.as_deref(), Some("alice"));
    assert!(broken.was_live);
    // The resource learns the raised fence: alice's writes are refused from now on.
    gate.check(broken.fence).expect("the raised fence");
    assert!(gate.check(f).is_err(), "the old holder's write is refused");
    // Waiters are told at once.
    let woke = waiter.await.unwrap();
    assert!(woke < Duration::from_secs(5), "waiter woke after {woke:?}");
    // The old holder cannot renew, release or reacquire with its tenure.
    assert!(!alice.renew(LONG, "k", "alice", f).await.unwrap());
    assert!(!alice.release("k", "alice", f).await.unwrap());
    let g = bob.try_lock(LONG, "k", "bob").await.unwrap().expect("free");
    assert!(g > broken.fence, "the next grant is above the break");
    // A break of a free key raises the fence too; a key never granted has nothing to break.
    assert!(bob.release("k", "bob", g).await.unwrap());
    let again = operator.break_lock("k").await.unwrap().unwrap();
    assert!(again.fence > g && again.previous_holder.is_none() && !again.was_live);
    assert_eq!(operator.break_lock("never").await.unwrap(), None);
}

/// Redis decides expiry with its own wall clock (`TIME`): a forward step on the Redis host
/// expires every lease at once, whatever the holders' clocks say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_step_of_the_redis_hosts_wall_clock_expires_every_lease() {
    let Some(server) = RedisServer::start(RedisOptions {
        faketime: true,
        ..RedisOptions::default()
    }) else {
        return;
    };
    let store = RedisStore::builder(server.url())
        .prefix("clock:")
        .connect()
        .await
        .expect("connect to redis-server under libfaketime");
    let mut conn = store.connection();
    let before: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let fa = store.try_lock(LONG, "a", "alice").await.unwrap().unwrap();
    let fb = store.try_lock(LONG, "b", "alice").await.unwrap().unwrap();
    assert_eq!(store.try_lock(LONG, "a", "bob").await.unwrap(), None);

    // Two minutes forward: past every 60 s lease.
    server.set_clock_offset(120);
    let after: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    assert!(
        after.0 >= before.0 + 119,
        "the server's clock stepped: {before:?} -> {after:?}"
    );
    let ga = store.try_lock(LONG, "a", "bob").await.unwrap();
    assert!(
        ga.is_some_and(|g| g > fa),
        "a's lease expired with the step"
    );
    assert!(
        !store.renew(LONG, "b", "alice", fb).await.unwrap(),
        "b's lease expired with the step"
    );
    // A backward step makes the leases granted meanwhile last that much longer.
    server.set_clock_offset(0);
    assert_eq!(store.try_lock(LONG, "a", "carol").await.unwrap(), None);
}

/// Writes a live layout-1 lease of holder `old` on `key` (a `:lock` hash with a 60 s TTL) and its
/// `:fence` counter at 41; returns the two keys.
async fn layout_one_lease(
    conn: &mut redis::aio::ConnectionManager,
    prefix: &str,
    key: &str,
) -> (String, String) {
    let (old_lock, old_fence) = (
        format!("{prefix}{{{key}}}:lock"),
        format!("{prefix}{{{key}}}:fence"),
    );
    let _: () = redis::pipe()
        .hset_multiple(&old_fence, &[("f", "41"), ("h", "old")])
        .hset_multiple(&old_lock, &[("f", "41"), ("h", "old")])
        .pexpire(&old_lock, 60_000)
        .query_async(conn)
        .await
        .unwrap();
    (old_lock, old_fence)
}

/// Keys of layout 1 (a TTL'd `:lock` hash and a `:fence` counter): a live lease there is
/// honoured, and fences continue from the old counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_one_leases_are_honoured_and_their_fences_continue() {
    let Some(url) = common::url() else { return };
    let prefix = common::unique_prefix("layout1");
    let store = RedisStore::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let mut conn = store.connection();
    let (old_lock, old_fence) = layout_one_lease(&mut conn, &prefix, "k").await;
    assert_eq!(
        store.try_lock(LONG, "k", "bob").await.unwrap(),
        None,
        "a live layout-1 lease is honoured"
    );
    // The old lease lapses.
    let _: () = conn.del(&old_lock).await.unwrap();
    let f = store.try_lock(LONG, "k", "bob").await.unwrap().unwrap();
    assert_eq!(f.get(), 42, "fences continue from the layout-1 counter");
    let old: String = conn.hget(&old_fence, "f").await.unwrap();
    assert_eq!(old, "41", "the layout-1 counter is left as it was");
}

/// `inspect` and `break_lock` judge a key without a `:v2` record as the acquire script does: a
/// live layout-1 lease holds it (and is what a break takes), a layout-1 counter is its fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_break_judge_layout_one_keys_as_acquire_does() {
    use lease_core::KeyState;
    let Some(url) = common::url() else { return };
    let prefix = common::unique_prefix("layout1-inspect");
    let store = RedisStore::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let mut conn = store.connection();
    layout_one_lease(&mut conn, &prefix, "k").await;
    let _: () = conn
        .hset(format!("{prefix}{{c}}:fence"), "f", "7")
        .await
        .unwrap();
    let state = store.inspect("k").await.unwrap();
    assert_eq!(state.holder.as_deref(), Some("old"), "{state:?}");
    assert_eq!(state.fence.map(|f| f.get()), Some(41));
    let left = state.remaining.unwrap();
    assert!(
        left <= LONG && left > Duration::from_secs(50),
        "time left from PTTL: {left:?}"
    );
    assert_eq!(
        store.inspect("c").await.unwrap().fence.map(|f| f.get()),
        Some(7),
        "a layout-1 counter alone: free, with its fence"
    );
    assert!(!store.inspect("c").await.unwrap().is_held());
    // A break takes the layout-1 lease: the record is seeded above the old counter.
    let broken = store
        .break_lock("k")
        .await
        .unwrap()
        .expect("granted before");
    assert_eq!(broken.fence.get(), 42);
    assert_eq!(broken.previous_holder.as_deref(), Some("old"));
    assert!(broken.was_live);
    assert_eq!(
        store.inspect("k").await.unwrap(),
        KeyState::free(Some(broken.fence))
    );
    let f = store.try_lock(LONG, "k", "bob").await.unwrap().unwrap();
    assert_eq!(
        f.get(),
        43,
        "the next grant is above the break, layout-1 lock or not"
    );
}
