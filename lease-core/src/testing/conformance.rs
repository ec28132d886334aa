//! The store conformance cases: plain `async fn`s, each taking a fresh store.
//!
//! Each case uses its own random key prefix and asserts behaviour of the contract in
//! [`LeaseStore`]; a failing case panics with a message naming the broken rule.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::{BrokenLock, Enqueued, Fence, KeyState, LeaseStore, MAX_KEY_LEN, StoreErrorKind};

/// A prefix no other test run uses, so cases can share a server.
pub fn unique_prefix(case: &str) -> String {
    format!("conformance/{case}/{:016x}/", rand::random::<u64>())
}

/// The lease the timing cases use: short, but what the store can grant.
pub fn test_lease<S: LeaseStore>(store: &S) -> Duration {
    store
        .capabilities()
        .effective_lease(Duration::from_millis(300))
}

/// How long to keep trying after a lease should have expired before calling it a failure.
fn expiry_budget<S: LeaseStore>(store: &S) -> Duration {
    let caps = store.capabilities();
    test_lease(store) * 3 + caps.lease_granularity + Duration::from_secs(2)
}

fn fence(n: u64) -> Fence {
    Fence::new(n).expect("fence values in cases are positive")
}

async fn grant<S: LeaseStore>(store: &S, lease: Duration, key: &str, holder: &str) -> Fence {
    match store.try_lock(lease, key, holder).await {
        Ok(Some(f)) => f,
        other => panic!("expected `{holder}` to be granted `{key}`, got {other:?}"),
    }
}

async fn refused<S: LeaseStore>(store: &S, lease: Duration, key: &str, holder: &str) {
    match store.try_lock(lease, key, holder).await {
        Ok(None) => {}
        other => panic!("expected `{holder}` to be refused `{key}` (Ok(None)), got {other:?}"),
    }
}

/// Polls until `holder` is granted `key`, which must happen within the expiry budget.
async fn grant_after_expiry<S: LeaseStore>(
    store: &S,
    lease: Duration,
    key: &str,
    holder: &str,
) -> Fence {
    let give_up = Instant::now() + expiry_budget(store);
    loop {
        if let Some(f) = store.try_lock(lease, key, holder).await.expect("try_lock") {
            return f;
        }
        assert!(
            Instant::now() < give_up,
            "`{key}` was not granted to `{holder}` within {:?} after its lease should have expired",
            expiry_budget(store)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A vacant key is granted, and the first grant of a key has fence 1.
pub async fn vacant_key_is_granted_with_fence_one<S: LeaseStore>(store: S) {
    let key = unique_prefix("vacant") + "k";
    let f = grant(&store, test_lease(&store), &key, "alice").await;
    assert_eq!(
        f,
        Fence::FIRST,
        "the first grant of a key must have fence 1"
    );
}

/// The holder extending its lease keeps its fence (also: acquire is idempotent after a lost reply).
pub async fn same_holder_extends_and_keeps_fence<S: LeaseStore>(store: S) {
    let key = unique_prefix("extend") + "k";
    let lease = test_lease(&store);
    let f1 = grant(&store, lease, &key, "alice").await;
    let f2 = grant(&store, lease, &key, "alice").await;
    let f3 = grant(&store, lease * 2, &key, "alice").await;
    assert_eq!(f1, f2, "an extend by the same holder must keep the fence");
    assert_eq!(f1, f3, "an extend by the same holder must keep the fence");
}

/// Another holder is refused with `Ok(None)` while the lease is valid.
pub async fn other_holder_is_refused_without_error<S: LeaseStore>(store: S) {
    let key = unique_prefix("refuse") + "k";
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    grant(&store, lease, &key, "alice").await;
    refused(&store, lease, &key, "bob").await;
    refused(&store, lease, &key, "alice ").await;
    refused(&store, lease, &key, "Alice").await;
}

/// After the holder's lease expires another holder is granted the key, with a larger fence.
pub async fn expiry_lets_another_holder_in_with_larger_fence<S: LeaseStore>(store: S) {
    let key = unique_prefix("expiry") + "k";
    let lease = test_lease(&store);
    let f1 = grant(&store, lease, &key, "alice").await;
    let f2 = grant_after_expiry(&store, lease, &key, "bob").await;
    assert!(
        f2 > f1,
        "a new holder after expiry must get a larger fence ({f2} vs {f1})"
    );
    refused(&store, lease, &key, "alice").await;
}

/// A holder that retakes its own expired lease before anyone else took the key keeps its fence.
pub async fn same_holder_retakes_expired_lease_with_same_fence<S: LeaseStore>(store: S) {
    let key = unique_prefix("retake") + "k";
    let lease = test_lease(&store);
    let f1 = grant(&store, lease, &key, "alice").await;
    tokio::time::sleep(lease + lease / 2 + store.capabilities().lease_granularity).await;
    let f2 = grant(&store, lease, &key, "alice").await;
    if store.capabilities().stable_retake {
        assert_eq!(
            f1, f2,
            "a holder retaking its own untouched expired lease must keep the fence"
        );
    } else {
        assert!(
            f2 >= f1,
            "a retake must never get a smaller fence ({f2} vs {f1})"
        );
    }
    refused(&store, lease, &key, "bob").await;
}

/// Release frees the key at once; the fence counter survives, so the next grant is larger.
pub async fn release_frees_key_and_keeps_fence_counter<S: LeaseStore>(store: S) {
    let key = unique_prefix("release") + "k";
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    let f1 = grant(&store, lease, &key, "alice").await;
    assert!(
        store.release(&key, "alice", f1).await.expect("release"),
        "release must report success"
    );
    assert!(
        !store.release(&key, "alice", f1).await.expect("release"),
        "a second release of the same grant must report that nothing was released"
    );
    let f2 = grant(&store, lease, &key, "bob").await;
    assert!(
        f2 > f1,
        "the grant after a release must have a larger fence ({f2} vs {f1})"
    );
    assert!(store.release(&key, "bob", f2).await.expect("release"));
    let f3 = grant(&store, lease, &key, "bob").await;
    assert!(
        f3 > f2,
        "a release ends the tenure: even the same holder gets a larger fence"
    );
}

/// `try_lock` with a zero lease releases the key if the caller holds it, and only then.
pub async fn zero_lease_releases<S: LeaseStore>(store: S) {
    let key = unique_prefix("zero") + "k";
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    let f1 = grant(&store, lease, &key, "alice").await;
    refused(&store, Duration::ZERO, &key, "bob").await;
    refused(&store, lease, &key, "bob").await;
    let r = store
        .try_lock(Duration::ZERO, &key, "alice")
        .await
        .expect("zero-lease try_lock");
    assert_eq!(r, None, "a zero-lease try_lock releases and returns None");
    let f2 = grant(&store, lease, &key, "bob").await;
    assert!(f2 > f1);
}

/// Release and renew by a non-holder, or with the wrong fence, have no effect.
pub async fn non_holder_cannot_release_or_renew<S: LeaseStore>(store: S) {
    let key = unique_prefix("nonholder") + "k";
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    let f = grant(&store, lease, &key, "alice").await;
    assert!(!store.release(&key, "bob", f).await.expect("release"));
    assert!(!store.renew(lease, &key, "bob", f).await.expect("renew"));
    let wrong = f.next().expect("fence overflow");
    assert!(!store.release(&key, "alice", wrong).await.expect("release"));
    refused(&store, lease, &key, "bob").await;
    assert_eq!(
        grant(&store, lease, &key, "alice").await,
        f,
        "alice must still hold the key"
    );
    let other = unique_prefix("nonholder") + "never-held";
    assert!(
        !store
            .release(&other, "alice", f)
            .await
            .expect("release of a never-held key")
    );
    assert!(
        !store
            .renew(lease, &other, "alice", f)
            .await
            .expect("renew of a never-held key")
    );
}

/// `renew` extends only a live lease: a lapsed one (its holder paused past it, or a renewal that
/// reached the store late) is not revived, and the key is free for the next acquisition.
pub async fn renew_never_revives_a_lapsed_lease<S: LeaseStore>(store: S) {
    let key = unique_prefix("lapsed") + "k";
    let lease = test_lease(&store);
    let f = grant(&store, lease, &key, "alice").await;
    tokio::time::sleep(expiry_budget(&store)).await;
    assert!(
        !store.renew(lease, &key, "alice", f).await.expect("renew"),
        "a renew after the lease lapsed revived it"
    );
    let f2 = grant(&store, lease, &key, "bob").await;
    assert!(f2 > f, "the next holder gets a larger fence ({f2} vs {f})");
}

/// `renew` extends the exact grant (holder and fence), and never grants.
pub async fn renew_extends_only_the_exact_grant<S: LeaseStore>(store: S) {
    let key = unique_prefix("renew") + "k";
    let lease = test_lease(&store);
    let f = grant(&store, lease, &key, "alice").await;
    // Renew well past the original lease: the key must stay alice's throughout.
    let until = Instant::now() + lease * 3;
    while Instant::now() < until {
        assert!(
            store.renew(lease, &key, "alice", f).await.expect("renew"),
            "renew of a live grant"
        );
        refused(&store, lease, &key, "bob").await;
        tokio::time::sleep(lease / 4).await;
    }
    assert!(store.release(&key, "alice", f).await.expect("release"));
    assert!(
        !store.renew(lease, &key, "alice", f).await.expect("renew"),
        "renew after release must not re-grant"
    );
    let f2 = grant(&store, lease, &key, "bob").await;
    assert!(
        !store.renew(lease, &key, "alice", f2).await.expect("renew"),
        "renew by non-holder"
    );
    assert!(store.renew(lease, &key, "bob", f2).await.expect("renew"));
}

/// Holding one key says nothing about another.
pub async fn keys_are_independent<S: LeaseStore>(store: S) {
    let prefix = unique_prefix("independent");
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let fa = grant(&store, lease, &a, "alice").await;
    let fb = grant(&store, lease, &b, "bob").await;
    assert_eq!(fa, Fence::FIRST);
    assert_eq!(fb, Fence::FIRST, "fences are per key");
    refused(&store, lease, &a, "bob").await;
    refused(&store, lease, &b, "alice").await;
    assert!(store.release(&a, "alice", fa).await.expect("release"));
    refused(&store, lease, &b, "alice").await;
}

/// Keys and holders with separators, braces, quotes, NUL and non-ASCII characters are all
/// distinct keys: no key collides with, prefixes or escapes another.
pub async fn odd_keys_and_holders_never_collide<S: LeaseStore>(store: S) {
    let prefix = unique_prefix("odd");
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    let suffixes = [
        "a",
        "a/",
        "a/b",
        "a:b",
        "a::b",
        "{a}",
        "{a}b",
        "{",
        "}",
        "a{b}",
        "a%2Fb",
        "a%",
        "'a'",
        "\"a\"",
        "a b",
        " a",
        "a\0",
        "a\0b",
        "ä",
        "a\u{301}",
        "日本",
        "a\\b",
        "a*",
        "a?",
        "a\n",
        "%s",
        "$1",
        "'; DROP TABLE leases; --",
        "]]..'",
        "a.b",
        "A",
    ];
    let mut fences = Vec::new();
    for s in suffixes {
        let key = format!("{prefix}{s}");
        let holder = format!("holder-{s}");
        fences.push(grant(&store, lease, &key, &holder).await);
    }
    assert!(
        fences.iter().all(|&f| f == Fence::FIRST),
        "every odd key must be a fresh key with fence 1, got {fences:?}"
    );
    for s in suffixes {
        let key = format!("{prefix}{s}");
        refused(&store, lease, &key, "intruder").await;
        // The right holder still extends its own key, with fence 1.
        assert_eq!(
            grant(&store, lease, &key, &format!("holder-{s}")).await,
            Fence::FIRST
        );
    }
    // Holders that differ only after a NUL or in normalisation are different holders.
    let key = format!("{prefix}holders");
    grant(&store, lease, &key, "h\0x").await;
    refused(&store, lease, &key, "h").await;
    refused(&store, lease, &key, "h\0y").await;
    let key = format!("{prefix}unicode");
    grant(&store, lease, &key, "\u{e9}").await;
    refused(&store, lease, &key, "e\u{301}").await;
}

/// A 1 KiB key and holder work; an empty or longer key or holder is refused with a clear error
/// and nothing is written.
pub async fn long_keys_work_and_overlong_or_empty_input_is_refused<S: LeaseStore>(store: S) {
    let prefix = unique_prefix("long");
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    let long_key = format!("{prefix}{}", "k".repeat(MAX_KEY_LEN - prefix.len()));
    let long_holder = "h".repeat(MAX_KEY_LEN);
    assert_eq!(long_key.len(), MAX_KEY_LEN);
    let f = grant(&store, lease, &long_key, &long_holder).await;
    refused(&store, lease, &long_key, &long_holder[1..]).await;
    assert!(
        store
            .release(&long_key, &long_holder, f)
            .await
            .expect("release")
    );
    // A key one longer than the 1 KiB one must not alias it.
    let too_long = format!("{long_key}k");
    let too_long_holder = format!("{long_holder}h");
    let key = format!("{prefix}k");
    let bad: [(&str, &str, &str); 4] = [
        ("", "h", "key"),
        (&key, "", "holder"),
        (&too_long, "h", "key"),
        (&key, &too_long_holder, "holder"),
    ];
    for (k, h, what) in bad {
        let err = store
            .try_lock(lease, k, h)
            .await
            .expect_err("invalid input must be an error");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
        assert!(
            err.to_string().contains(what),
            "error must name the {what}: {err}"
        );
        assert!(!err.is_transient());
        let err = store
            .release(k, h, Fence::FIRST)
            .await
            .expect_err("invalid release input");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    }
    // Nothing was written for the refused key.
    assert_eq!(grant(&store, lease, &key, "someone").await, Fence::FIRST);
}

/// Many contenders racing for one vacant key: exactly one wins.
pub async fn concurrent_contenders_have_exactly_one_winner<S: LeaseStore>(store: S) {
    let store = Arc::new(store);
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    for round in 0..5 {
        let key = unique_prefix("race") + &round.to_string();
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.try_lock(lease, &key, &format!("contender-{i}")).await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            if let Some(f) = t.await.expect("task").expect("try_lock") {
                winners.push(f);
            }
        }
        assert_eq!(
            winners,
            vec![Fence::FIRST],
            "exactly one contender must win round {round}"
        );
    }
}

/// Over 100 grants alternating between two holders, fences strictly increase.
pub async fn fences_strictly_increase_over_alternating_grants<S: LeaseStore>(store: S) {
    let key = unique_prefix("alternate") + "k";
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    let mut last: Option<Fence> = None;
    let mut seen = HashSet::new();
    for i in 0..100 {
        let holder = if i % 2 == 0 { "alice" } else { "bob" };
        let f = grant(&store, lease, &key, holder).await;
        if let Some(prev) = last {
            assert!(f > prev, "grant {i}: fence {f} is not larger than {prev}");
        }
        assert!(seen.insert(f), "fence {f} was handed out twice");
        assert!(store.release(&key, holder, f).await.expect("release"));
        last = Some(f);
    }
    assert!(last.expect("100 grants") >= fence(100));
}

/// `wait_for_change` returns within its bound; a store that declares notifications returns early
/// when the key is released.
pub async fn wait_for_change_is_bounded_and_wakes_on_release<S: LeaseStore>(store: S) {
    let key = unique_prefix("wait") + "k";
    let started = Instant::now();
    store
        .wait_for_change(&key, Duration::from_millis(200))
        .await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "wait_for_change(200ms) took {waited:?}"
    );
    if !store.capabilities().notifications {
        return;
    }
    let store = Arc::new(store);
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    waiter_wakes_on(&store, &key, lease, "release", |fence| {
        let (store, key) = (store.clone(), key.clone());
        async move { assert!(store.release(&key, "alice", fence).await.expect("release")) }
    })
    .await;
}

async fn inspect<S: LeaseStore>(store: &S, key: &str) -> KeyState {
    match store.inspect(key).await {
        Ok(state) => state,
        Err(e) => panic!("inspect of `{key}` failed: {e}"),
    }
}

async fn break_lock<S: LeaseStore>(store: &S, key: &str) -> Option<BrokenLock> {
    match store.break_lock(key).await {
        Ok(broken) => broken,
        Err(e) => panic!("break_lock of `{key}` failed: {e}"),
    }
}

/// A holder string shaped like the ids the lock makes (`host/pid/name#<32 hex>~N`).
fn lock_like_holder(name: &str) -> String {
    format!(
        "conformance/{}/{name}#{:032x}~2",
        std::process::id(),
        rand::random::<u128>()
    )
}

/// `inspect` of a key that was never granted: free, and no fence (the store has handed none
/// out), even while other keys are held.
pub async fn inspect_of_a_never_granted_key_is_free_without_fence<S: LeaseStore>(store: S) {
    let prefix = unique_prefix("inspect-never");
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    grant(&store, lease, &format!("{prefix}other"), "alice").await;
    let state = inspect(&store, &format!("{prefix}k")).await;
    assert_eq!(
        state,
        KeyState::free(None),
        "a never-granted key must be free with no fence"
    );
    assert!(!state.is_held());
    assert_eq!(state.holder_label(), None);
}

/// `inspect` of a granted key names its holder (the full string), its fence and the time left,
/// which is positive and at most the lease; it changes nothing. After a release the key is free
/// and shows the last fence.
pub async fn inspect_shows_the_grant_and_after_release_the_last_fence<S: LeaseStore>(store: S) {
    let key = unique_prefix("inspect") + "k";
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    let alice = lock_like_holder("inspect");
    let f = grant(&store, lease, &key, &alice).await;
    let state = inspect(&store, &key).await;
    assert!(state.is_held(), "a granted key must be held: {state:?}");
    assert_eq!(
        state.holder.as_deref(),
        Some(alice.as_str()),
        "inspect must return the full holder string"
    );
    assert_eq!(
        state.holder_label(),
        Some(format!("conformance/{}/inspect", std::process::id()).as_str())
    );
    assert_eq!(state.fence, Some(f), "inspect must show the grant's fence");
    let left = state.remaining.expect("a held key has time left");
    assert!(
        left > Duration::ZERO && left <= lease,
        "time left must be in (0, {lease:?}], got {left:?}"
    );
    assert!(
        left >= lease / 2,
        "time left {left:?} of a {lease:?} lease just granted (a unit mistake?)"
    );
    // Read-only: the grant is untouched.
    refused(&store, lease, &key, "bob").await;
    assert_eq!(grant(&store, lease, &key, &alice).await, f);
    assert!(store.release(&key, &alice, f).await.expect("release"));
    assert_eq!(
        inspect(&store, &key).await,
        KeyState::free(Some(f)),
        "a released key is free and shows the last fence handed out"
    );
    let f2 = grant(&store, lease, &key, "bob").await;
    let state = inspect(&store, &key).await;
    assert_eq!(
        (state.holder.as_deref(), state.fence),
        (Some("bob"), Some(f2))
    );
}

/// Once the lease has expired (its holder stopped renewing), `inspect` shows the key free, with
/// the fence of that last grant.
pub async fn inspect_after_expiry_is_free<S: LeaseStore>(store: S) {
    let key = unique_prefix("inspect-expiry") + "k";
    let lease = test_lease(&store);
    let f = grant(&store, lease, &key, "alice").await;
    let give_up = Instant::now() + expiry_budget(&store);
    loop {
        let state = inspect(&store, &key).await;
        if !state.is_held() {
            assert_eq!(
                state,
                KeyState::free(Some(f)),
                "an expired key is free and shows the last fence"
            );
            break;
        }
        assert_eq!(state.fence, Some(f));
        assert!(
            Instant::now() < give_up,
            "`{key}` still shows held {:?} after its lease should have expired: {state:?}",
            expiry_budget(&store)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The store agrees: another holder gets it.
    let f2 = grant(&store, lease, &key, "bob").await;
    assert!(f2 > f);
}

/// `break_lock` of a key that was never granted breaks nothing and writes nothing.
pub async fn break_of_a_never_granted_key_is_none<S: LeaseStore>(store: S) {
    let key = unique_prefix("break-never") + "k";
    assert_eq!(
        break_lock(&store, &key).await,
        None,
        "a never-granted key has nothing to break"
    );
    assert_eq!(inspect(&store, &key).await, KeyState::free(None));
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    assert_eq!(
        grant(&store, lease, &key, "alice").await,
        Fence::FIRST,
        "a break of a never-granted key must not move its fence"
    );
}

/// `break_lock` of a held key frees it and raises the fence past the holder's: the old holder
/// can neither renew nor release, and the next grant, to anyone (the old holder too), gets a
/// fence above the break's.
pub async fn break_takes_a_held_key_and_raises_the_fence<S: LeaseStore>(store: S) {
    let key = unique_prefix("break") + "k";
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    let alice = lock_like_holder("break");
    let f = grant(&store, lease, &key, &alice).await;
    let broken = break_lock(&store, &key)
        .await
        .expect("a held key is broken");
    assert!(
        broken.fence > f,
        "the break must raise the fence past the holder's ({} vs {f})",
        broken.fence
    );
    assert_eq!(
        broken.previous_holder.as_deref(),
        Some(alice.as_str()),
        "the break names the full previous holder"
    );
    assert!(broken.was_live, "the holder's lease was live");
    assert_eq!(
        inspect(&store, &key).await,
        KeyState::free(Some(broken.fence)),
        "a broken key is free and shows the break's fence"
    );
    assert!(
        !store.renew(lease, &key, &alice, f).await.expect("renew"),
        "the old holder's renew after a break must fail (a break is never undone)"
    );
    assert!(
        !store.release(&key, &alice, f).await.expect("release"),
        "the old holder's release after a break must report that nothing was released"
    );
    assert_eq!(
        inspect(&store, &key).await,
        KeyState::free(Some(broken.fence)),
        "the old holder's renew and release changed nothing"
    );
    // Even the old holder, retaking the key, gets a new tenure above the break.
    let f2 = grant(&store, lease, &key, &alice).await;
    assert!(
        f2 > broken.fence,
        "the next grant (to the old holder) must be above the break's fence ({f2} vs {})",
        broken.fence
    );
    assert!(store.release(&key, &alice, f2).await.expect("release"));
    let f3 = grant(&store, lease, &key, "bob").await;
    assert!(
        f3 > f2,
        "fences keep increasing after a break ({f3} vs {f2})"
    );
    // The new tenure is unaffected by anything the first one sends.
    assert!(!store.release(&key, &alice, f).await.expect("release"));
    assert!(!store.renew(lease, &key, &alice, f).await.expect("renew"));
    refused(&store, lease, &key, &alice).await;
    assert!(store.renew(lease, &key, "bob", f3).await.expect("renew"));

    // A second key: a break, then the next grant goes to somebody else.
    let other = unique_prefix("break") + "other";
    let g = grant(&store, lease, &other, "carol").await;
    let broken = break_lock(&store, &other).await.expect("held");
    assert!(broken.fence > g);
    let g2 = grant(&store, lease, &other, "dave").await;
    assert!(
        g2 > broken.fence,
        "the next grant must be above the break's fence ({g2} vs {})",
        broken.fence
    );
    assert!(!store.renew(lease, &other, "carol", g).await.expect("renew"));
}

/// `break_lock` of a released key raises the fence too, names no previous holder, and says no
/// lease was live; every repeated break raises it again.
pub async fn break_of_a_released_key_raises_the_fence<S: LeaseStore>(store: S) {
    let key = unique_prefix("break-released") + "k";
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    let f = grant(&store, lease, &key, "alice").await;
    assert!(store.release(&key, "alice", f).await.expect("release"));
    let first = break_lock(&store, &key)
        .await
        .expect("a released key was granted before");
    assert!(
        first.fence > f,
        "the break raises the fence ({} vs {f})",
        first.fence
    );
    assert_eq!(
        first.previous_holder, None,
        "a released key has no previous holder"
    );
    assert!(!first.was_live, "no lease was live on a released key");
    let second = break_lock(&store, &key).await.expect("granted before");
    assert!(
        second.fence > first.fence && second.previous_holder.is_none() && !second.was_live,
        "a repeated break raises the fence again: {first:?} then {second:?}"
    );
    assert_eq!(
        inspect(&store, &key).await,
        KeyState::free(Some(second.fence))
    );
    let f2 = grant(&store, lease, &key, "alice").await;
    assert!(f2 > second.fence, "{f2} vs {}", second.fence);
}

/// Grants `key` to alice, starts a waiter, then ends alice's tenure with `end` (a release or a
/// break) every half second, each time from a fresh grant, until the waiter wakes: a
/// notification is a hint, so one may be missed, but a store that declares notifications must
/// wake the waiter within a few tries.
async fn waiter_wakes_on<S, F, Fut>(
    store: &Arc<S>,
    key: &str,
    lease: Duration,
    what: &str,
    mut end: F,
) where
    S: LeaseStore,
    F: FnMut(Fence) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let mut fence = grant(&**store, lease, key, "alice").await;
    let waiter = {
        let (store, key) = (store.clone(), key.to_owned());
        tokio::spawn(async move {
            let started = Instant::now();
            store.wait_for_change(&key, Duration::from_secs(20)).await;
            started.elapsed()
        })
    };
    let woke = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        end(fence).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if waiter.is_finished() {
            break waiter.await.expect("waiter");
        }
        fence = grant(&**store, lease, key, "alice").await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a store that declares notifications did not wake a waiter on a {what}"
        );
    };
    assert!(
        woke < Duration::from_secs(15),
        "waiter woke only after {woke:?}"
    );
}

/// A store that declares notifications wakes waiters on a break as on a release.
pub async fn break_wakes_waiters<S: LeaseStore>(store: S) {
    if !store.capabilities().notifications {
        return;
    }
    let key = unique_prefix("break-wait") + "k";
    let store = Arc::new(store);
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    waiter_wakes_on(&store, &key, lease, "break", |fence| {
        let (store, key) = (store.clone(), key.clone());
        async move { assert!(break_lock(&*store, &key).await.expect("held").fence > fence) }
    })
    .await;
}

/// `inspect` and `break_lock` validate the key as every operation does: an empty or over-long
/// key is refused with a clear error, and nothing is written.
pub async fn inspect_and_break_validate_the_key<S: LeaseStore>(store: S) {
    let prefix = unique_prefix("inspect-input");
    let long_key = format!("{prefix}{}", "k".repeat(MAX_KEY_LEN - prefix.len()));
    assert_eq!(
        inspect(&store, &long_key).await,
        KeyState::free(None),
        "a 1 KiB key is valid"
    );
    assert_eq!(break_lock(&store, &long_key).await, None);
    let too_long = format!("{long_key}k");
    for bad in ["", too_long.as_str()] {
        let err = store
            .inspect(bad)
            .await
            .expect_err("inspect of an invalid key must be an error");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
        assert!(
            err.to_string().contains("key"),
            "error must name the key: {err}"
        );
        let err = store
            .break_lock(bad)
            .await
            .expect_err("break_lock of an invalid key must be an error");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
        assert!(
            err.to_string().contains("key"),
            "error must name the key: {err}"
        );
    }
    let lease = store
        .capabilities()
        .effective_lease(Duration::from_secs(30));
    assert_eq!(grant(&store, lease, &long_key, "h").await, Fence::FIRST);
}

// ---- Queued grants ([`Capabilities::queued_grants`](crate::Capabilities::queued_grants)) ----
//
// Each case checks the queue's rules ([`Enqueued`]) on a store that declares a queue, and on a
// store without one that `enqueue` is `try_lock` (granted, or waiting with no fence) and
// `leave_queue` gives nothing back.

/// A lease long enough that no grant of a queue case lapses by itself.
fn long_lease<S: LeaseStore>(store: &S) -> Duration {
    store
        .capabilities()
        .effective_lease(Duration::from_secs(30))
}

async fn enqueue<S: LeaseStore>(
    store: &S,
    lease: Duration,
    key: &str,
    holder: &str,
    patience: Duration,
) -> Enqueued {
    store
        .enqueue(lease, key, holder, patience)
        .await
        .unwrap_or_else(|e| panic!("enqueue of `{key}` by `{holder}`: {e}"))
}

async fn granted<S: LeaseStore>(store: &S, lease: Duration, key: &str, holder: &str) -> Fence {
    match enqueue(store, lease, key, holder, lease).await {
        Enqueued::Granted(f) => f,
        other => panic!("expected `{holder}` to hold `{key}`, got {other:?}"),
    }
}

async fn waiting<S: LeaseStore>(
    store: &S,
    lease: Duration,
    key: &str,
    holder: &str,
    patience: Duration,
) {
    match enqueue(store, lease, key, holder, patience).await {
        Enqueued::Waiting { .. } => {}
        other => panic!("expected `{holder}` to be queued for `{key}`, got {other:?}"),
    }
}

async fn holder_of<S: LeaseStore>(store: &S, key: &str) -> Option<String> {
    inspect(store, key).await.holder
}

/// A store without a queue: `enqueue` is `try_lock`, `leave_queue` gives nothing back.
async fn without_queue_enqueue_is_try_lock<S: LeaseStore>(store: &S, case: &str) {
    let key = unique_prefix(case) + "k";
    let lease = long_lease(store);
    let f = granted(store, lease, &key, "alice").await;
    assert_eq!(granted(store, lease, &key, "alice").await, f);
    match enqueue(store, lease, &key, "bob", lease).await {
        Enqueued::Waiting { .. } => {}
        other => panic!("a held key must make `enqueue` wait, got {other:?}"),
    }
    assert!(!store.leave_queue(&key, "bob").await.expect("leave_queue"));
    assert!(store.release(&key, "alice", f).await.expect("release"));
    let g = granted(store, lease, &key, "carol").await;
    assert!(g > f, "fences strictly increase: {g:?} after {f:?}");
}

/// Waiters are granted the key in the order they queued, one release each, with fences that
/// strictly increase; each learns its grant from its next `enqueue`.
pub async fn queue_grants_in_fifo_order<S: LeaseStore>(store: S) {
    if !store.capabilities().queued_grants {
        return without_queue_enqueue_is_try_lock(&store, "fifo").await;
    }
    let key = unique_prefix("fifo") + "k";
    let lease = long_lease(&store);
    let mut last = granted(&store, lease, &key, "alice").await;
    let waiters = ["bob", "carol", "dave", "erin"];
    for w in waiters {
        waiting(&store, lease, &key, w, lease).await;
    }
    let mut holder = "alice";
    for w in waiters {
        assert!(store.release(&key, holder, last).await.expect("release"));
        assert_eq!(
            holder_of(&store, &key).await.as_deref(),
            Some(w),
            "a release hands the key to the oldest waiter"
        );
        let f = granted(&store, lease, &key, w).await;
        assert!(f > last, "fences strictly increase: {f:?} after {last:?}");
        last = f;
        holder = w;
    }
    assert!(store.release(&key, holder, last).await.expect("release"));
    assert_eq!(
        holder_of(&store, &key).await,
        None,
        "an empty queue leaves the key free"
    );
}

/// While a live waiter is queued, nobody else is granted the key: not a newcomer's `try_lock`
/// or `enqueue`, not the holder that just released it, not after the holder's lease expired.
pub async fn newcomers_do_not_overtake_a_live_queue<S: LeaseStore>(store: S) {
    if !store.capabilities().queued_grants {
        return without_queue_enqueue_is_try_lock(&store, "no-barging").await;
    }
    let key = unique_prefix("no-barging") + "k";
    let lease = long_lease(&store);
    let short = test_lease(&store);
    let f = grant(&store, short, &key, "alice").await;
    waiting(&store, lease, &key, "bob", lease).await;
    // Alice's lease expires with Bob queued: the key is Bob's, whoever asks first.
    tokio::time::sleep(short + store.capabilities().lease_granularity).await;
    let give_up = Instant::now() + expiry_budget(&store);
    loop {
        refused(&store, lease, &key, "eve").await;
        if holder_of(&store, &key).await.as_deref() != Some("alice") {
            break;
        }
        assert!(Instant::now() < give_up, "alice's lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let g = granted(&store, lease, &key, "bob").await;
    assert!(g > f, "fences strictly increase: {g:?} after {f:?}");
    // Bob releases with Carol queued; Alice (back again) and Eve wait behind her.
    waiting(&store, lease, &key, "carol", lease).await;
    assert!(store.release(&key, "bob", g).await.expect("release"));
    refused(&store, lease, &key, "eve").await;
    waiting(&store, lease, &key, "bob", lease).await;
    let h = granted(&store, lease, &key, "carol").await;
    assert!(h > g, "fences strictly increase: {h:?} after {g:?}");
}

/// A waiter that stops refreshing its entry is skipped once its patience has run out.
pub async fn dead_waiters_are_skipped<S: LeaseStore>(store: S) {
    if !store.capabilities().queued_grants {
        return without_queue_enqueue_is_try_lock(&store, "dead-waiter").await;
    }
    let key = unique_prefix("dead-waiter") + "k";
    let lease = long_lease(&store);
    let short = test_lease(&store);
    let f = granted(&store, lease, &key, "alice").await;
    waiting(&store, lease, &key, "bob", short).await;
    waiting(&store, lease, &key, "carol", lease).await;
    tokio::time::sleep(short * 2 + store.capabilities().lease_granularity).await;
    waiting(&store, lease, &key, "carol", lease).await; // Carol refreshes; Bob does not
    assert!(store.release(&key, "alice", f).await.expect("release"));
    assert_eq!(
        holder_of(&store, &key).await.as_deref(),
        Some("carol"),
        "the release must skip Bob, whose patience ran out"
    );
    let g = granted(&store, lease, &key, "carol").await;
    assert!(g > f, "fences strictly increase: {g:?} after {f:?}");
}

/// A waiter that leaves the queue is not granted the key; one that leaves after a release
/// granted it passes the grant on to the next waiter.
pub async fn leaving_the_queue_passes_the_key_on<S: LeaseStore>(store: S) {
    if !store.capabilities().queued_grants {
        return without_queue_enqueue_is_try_lock(&store, "leave").await;
    }
    let key = unique_prefix("leave") + "k";
    let lease = long_lease(&store);
    let f = granted(&store, lease, &key, "alice").await;
    for w in ["bob", "carol", "dave"] {
        waiting(&store, lease, &key, w, lease).await;
    }
    assert!(
        !store.leave_queue(&key, "bob").await.expect("leave_queue"),
        "a waiter that was not granted gives nothing back"
    );
    assert!(store.release(&key, "alice", f).await.expect("release"));
    assert_eq!(holder_of(&store, &key).await.as_deref(), Some("carol"));
    let carol = inspect(&store, &key)
        .await
        .fence
        .expect("a held key has a fence");
    assert!(carol > f);
    assert!(
        store.leave_queue(&key, "carol").await.expect("leave_queue"),
        "a waiter granted the key gives it back when it leaves"
    );
    assert_eq!(holder_of(&store, &key).await.as_deref(), Some("dave"));
    let d = granted(&store, lease, &key, "dave").await;
    assert!(d > carol, "fences strictly increase: {d:?} after {carol:?}");
    // Carol's old grant is gone: its renew and release fail.
    assert!(
        !store
            .renew(lease, &key, "carol", carol)
            .await
            .expect("renew")
    );
    assert!(!store.release(&key, "carol", carol).await.expect("release"));
}

/// A waiter granted the key by a release that never comes for it (it died) holds it only for
/// its lease; then the key goes to the next waiter, with a larger fence.
pub async fn a_grant_to_a_dead_waiter_lapses_to_the_next<S: LeaseStore>(store: S) {
    if !store.capabilities().queued_grants {
        return without_queue_enqueue_is_try_lock(&store, "dead-grant").await;
    }
    let key = unique_prefix("dead-grant") + "k";
    let lease = long_lease(&store);
    let short = test_lease(&store);
    let f = granted(&store, lease, &key, "alice").await;
    waiting(&store, short, &key, "bob", lease).await; // Bob asks for a short lease, then dies
    waiting(&store, lease, &key, "carol", lease).await;
    assert!(store.release(&key, "alice", f).await.expect("release"));
    assert_eq!(holder_of(&store, &key).await.as_deref(), Some("bob"));
    let bob = inspect(&store, &key)
        .await
        .fence
        .expect("a held key has a fence");
    let give_up = Instant::now() + expiry_budget(&store);
    let c = loop {
        match enqueue(&store, lease, &key, "carol", lease).await {
            Enqueued::Granted(c) => break c,
            _ => {
                assert!(
                    Instant::now() < give_up,
                    "Bob's grant did not lapse to Carol within {:?}",
                    expiry_budget(&store)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        c > bob && bob > f,
        "fences strictly increase: {f:?}, {bob:?}, {c:?}"
    );
}

/// `enqueue` by the holder extends its lease with the same fence (re-entry through the queue);
/// a waiter that enqueues again keeps its place.
pub async fn enqueue_again_keeps_the_grant_or_the_place<S: LeaseStore>(store: S) {
    if !store.capabilities().queued_grants {
        return without_queue_enqueue_is_try_lock(&store, "again").await;
    }
    let key = unique_prefix("again") + "k";
    let lease = long_lease(&store);
    let f = granted(&store, lease, &key, "alice").await;
    assert_eq!(granted(&store, lease, &key, "alice").await, f);
    waiting(&store, lease, &key, "bob", lease).await;
    waiting(&store, lease, &key, "carol", lease).await;
    waiting(&store, lease, &key, "bob", lease).await;
    assert!(store.release(&key, "alice", f).await.expect("release"));
    assert_eq!(
        holder_of(&store, &key).await.as_deref(),
        Some("bob"),
        "a waiter that enqueued again keeps its place"
    );
}

/// `wait_for_grant` returns early for the waiter a release granted, with the fence of that
/// grant, and is bounded by `max_wait` otherwise.
pub async fn wait_for_grant_wakes_the_granted_waiter<S: LeaseStore>(store: S) {
    if !store.capabilities().queued_grants {
        return without_queue_enqueue_is_try_lock(&store, "wait-grant").await;
    }
    let store = Arc::new(store);
    let key = unique_prefix("wait-grant") + "k";
    let lease = long_lease(&*store);
    let f = granted(&*store, lease, &key, "alice").await;
    waiting(&*store, lease, &key, "bob", lease).await;
    let bounded = Instant::now();
    let max_wait = Duration::from_millis(200);
    assert_eq!(store.wait_for_grant(&key, "bob", max_wait).await, None);
    assert!(bounded.elapsed() >= max_wait - Duration::from_millis(20));
    let waiter = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let got = store
                .wait_for_grant(&key, "bob", Duration::from_secs(20))
                .await;
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(store.release(&key, "alice", f).await.expect("release"));
    let (got, waited) = waiter.await.expect("waiter task");
    let g = granted(&*store, lease, &key, "bob").await;
    assert_eq!(got, Some(g), "the waiter learns its grant and its fence");
    assert!(g > f);
    assert!(
        waited < Duration::from_secs(20),
        "wait_for_grant must return when the grant is made"
    );
}
