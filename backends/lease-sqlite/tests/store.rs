//! Store-level behaviour beyond the conformance suite: opening by URL, fences that survive a
//! reopen, leases from a previous boot, the boot clock, schema upgrades, durability options,
//! wake-ups between two stores on one database (also after a lease lost without a release), and
//! a fence at its maximum.

use std::time::{Duration, Instant};

use lease_core::{BootClock, Clock, Fence, LeaseStore, StoreErrorKind};
use lease_sqlite::rusqlite::Connection;
use lease_sqlite::{Durability, SqliteStore};

const LEASE: Duration = Duration::from_secs(5);

fn fence(n: u64) -> Option<Fence> {
    Fence::new(n)
}

#[tokio::test]
async fn opens_by_url_and_refuses_a_missing_directory_or_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("a/b/c/locks.db");
    let url = format!("sqlite://{}", path.display());
    assert!(url.starts_with("sqlite:///"), "an absolute path: {url}");
    // A typo in a directory name must not silently make a different lock.
    let err = SqliteStore::from_url(&url)
        .await
        .expect_err("no such directory");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!dir.path().join("a").exists(), "nothing was created");
    // User info in a sqlite URL (it once became a directory named after the password).
    let err = SqliteStore::from_url("sqlite://user:s3cret@/tmp/x.db")
        .await
        .expect_err("credentials");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("user or password"), "{err}");
    assert!(!format!("{err} {err:?}").contains("s3cret"), "{err}");
    let err = SqliteStore::from_url("sqlite:///tmp/x.db?key=s3cret")
        .await
        .expect_err("query");
    assert!(!format!("{err} {err:?}").contains("s3cret"), "{err}");
    // Asked for, the directories are created.
    let store = SqliteStore::builder(&path)
        .create_dirs(true)
        .open()
        .await
        .expect("open with create_dirs");
    assert_eq!(store.path(), path);
    assert!(path.is_file(), "the database file was created");
    assert_eq!(store.try_lock(LEASE, "k", "a").await.unwrap(), fence(1));

    let err = SqliteStore::from_url("sqlite://")
        .await
        .expect_err("no file");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    let err = SqliteStore::from_url("etcd://127.0.0.1:2379")
        .await
        .expect_err("another scheme");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("etcd://127.0.0.1:2379"), "{err}");
    let err = SqliteStore::open("").await.expect_err("empty path");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    let err = SqliteStore::open(":memory:").await.expect_err("in-memory");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
}

#[tokio::test]
async fn fences_survive_release_and_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let f1 = store.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    assert!(store.release("k", "a", f1).await.unwrap());
    drop(store);

    let store = SqliteStore::open(&path).await.expect("reopen");
    let f2 = store.try_lock(LEASE, "k", "b").await.unwrap().unwrap();
    assert!(f2 > f1, "a grant after the reopen has a larger fence");
    let rows: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM leases", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "one row per key, kept across releases");
}

#[tokio::test]
async fn a_lease_from_a_previous_boot_is_expired() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let f1 = store
        .try_lock(Duration::from_secs(3600), "k", "a")
        .await
        .unwrap()
        .unwrap();
    // What the row looks like after a reboot: another boot id, and an expiry that is far in
    // the future of the new boot clock.
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE leases SET boot_id = 'a-previous-boot', expires_ns = ?1",
            [i64::MAX],
        )
        .unwrap();
    assert!(
        !store.renew(LEASE, "k", "a", f1).await.unwrap(),
        "a lease from another boot cannot be renewed"
    );
    let f2 = store.try_lock(LEASE, "k", "b").await.unwrap().unwrap();
    assert!(f2 > f1, "the key is free, with a larger fence");
    assert!(store.renew(LEASE, "k", "b", f2).await.unwrap());
}

#[tokio::test]
async fn expiry_is_kept_on_the_boot_clock() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let before = BootClock.now();
    store.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    let after = BootClock.now();
    let (expires, boot): (i64, String) = Connection::open(&path)
        .unwrap()
        .query_row("SELECT expires_ns, boot_id FROM leases", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let expires = Duration::from_nanos(u64::try_from(expires).unwrap());
    assert!(
        before + LEASE <= expires && expires <= after + LEASE,
        "the expiry is the boot clock plus the lease: {expires:?} vs {before:?}..{after:?}"
    );
    let this_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(boot, this_boot.trim());
}

#[tokio::test]
async fn an_older_schema_is_upgraded_and_other_tables_are_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    {
        // A database at schema version 0: an application's own table, no lease table yet.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE app (x INTEGER); INSERT INTO app VALUES (7);")
            .unwrap();
    }
    let store = SqliteStore::open(&path).await.expect("upgrade");
    assert_eq!(store.try_lock(LEASE, "k", "a").await.unwrap(), fence(1));
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
    let x: i64 = conn
        .query_row("SELECT x FROM app", [], |r| r.get(0))
        .unwrap();
    assert_eq!(x, 7);
    drop(store);
    SqliteStore::open(&path)
        .await
        .expect("opening an up-to-date database changes nothing");
}

#[tokio::test]
async fn durability_and_capabilities() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = SqliteStore::open(dir.path().join("full.db")).await.unwrap();
    let caps = full.capabilities();
    assert_eq!(caps.name, "sqlite");
    assert!(caps.notifications);
    assert!(caps.durable_fences);
    assert!(caps.stable_retake);

    let normal = SqliteStore::builder(dir.path().join("normal.db"))
        .durability(Durability::Normal)
        .open()
        .await
        .unwrap();
    assert!(
        !normal.capabilities().durable_fences,
        "NORMAL may reissue a fence after a power loss"
    );
    let f = normal.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    assert!(normal.renew(LEASE, "k", "a", f).await.unwrap());
    assert!(normal.release("k", "a", f).await.unwrap());
    assert_eq!(normal.try_lock(LEASE, "k", "b").await.unwrap(), fence(2));
}

/// Two stores on one database in one process behave like two processes: each has its own
/// flock files, so a release through one wakes a waiter of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_through_another_store_wakes_a_waiter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let holder = SqliteStore::open(&path).await.unwrap();
    let waiter = SqliteStore::open(&path).await.unwrap();
    make_wake_file(&path, "k");
    let f = holder.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    assert!(
        wake_flock_held(&path),
        "a grant takes an existing wake file's flock"
    );
    assert_eq!(waiter.try_lock(LEASE, "k", "b").await.unwrap(), None);

    let release = {
        let holder = holder.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            holder.release("k", "a", f).await.unwrap();
            Instant::now()
        })
    };
    let started = Instant::now();
    waiter.wait_for_change("k", Duration::from_secs(60)).await;
    let woke = Instant::now();
    let released = release.await.unwrap();
    assert!(
        woke.duration_since(started) < Duration::from_secs(20),
        "woken by the release, not by the 60 s bound"
    );
    println!(
        "woken {:?} after the release returned",
        woke.saturating_duration_since(released)
    );
    assert_eq!(
        waiter.try_lock(LEASE, "k", "b").await.unwrap(),
        fence(2),
        "and the waiter gets the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_wakes_when_the_lease_runs_out_or_at_once_if_free() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let holder = SqliteStore::open(&path).await.unwrap();
    let waiter = SqliteStore::open(&path).await.unwrap();

    let started = Instant::now();
    waiter.wait_for_change("k", Duration::from_secs(60)).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a free key needs no waiting"
    );

    // A holder that never releases (like a paused process): its flock stays, its lease ends.
    holder
        .try_lock(Duration::from_millis(300), "k", "a")
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    waiter.wait_for_change("k", Duration::from_secs(60)).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "woken when the lease ran out, not by the 60 s bound"
    );
    assert_eq!(waiter.try_lock(LEASE, "k", "b").await.unwrap(), fence(2));

    // max_wait still bounds the wait while the key stays held.
    let started = Instant::now();
    holder.wait_for_change("k", Duration::from_millis(50)).await;
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn bad_keys_and_holders_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("locks.db"))
        .await
        .unwrap();
    let err = store.try_lock(LEASE, "", "a").await.expect_err("empty key");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
    assert!(err.to_string().contains("key is empty"), "{err}");
    let long = "x".repeat(2000);
    let err = store.try_lock(LEASE, "k", &long).await.expect_err("long");
    assert!(err.to_string().contains("holder is 2000 bytes"), "{err}");
    // Odd characters are fine, including for the wake-up file names.
    let odd = "../../etc/passwd\0'; DROP TABLE leases; --ключ";
    assert_eq!(store.try_lock(LEASE, odd, odd).await.unwrap(), fence(1));
    assert!(
        store
            .renew(LEASE, odd, odd, Fence::new(1).unwrap())
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_relative_url_is_resolved_once_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    // The only test here that uses the working directory; every other one uses absolute paths.
    std::env::set_current_dir(dir.path()).expect("cd");
    std::fs::create_dir(dir.path().join("rel")).expect("mkdir");
    let store = SqliteStore::from_url("sqlite://rel/locks.db")
        .await
        .expect("open a relative URL");
    assert_eq!(store.path(), dir.path().join("rel/locks.db"));
    assert!(dir.path().join("rel/locks.db").is_file());
    std::env::set_current_dir(elsewhere.path()).expect("cd");
    assert_eq!(
        store
            .try_lock(LEASE, "k", "a")
            .await
            .expect("still the same file"),
        fence(1)
    );
}

/// Sets `key`'s fence to `i64::MAX`, the largest an SQLite `INTEGER` holds, behind the store's
/// back.
fn set_fence_to_the_maximum(db: &std::path::Path, key: &str) {
    Connection::open(db)
        .unwrap()
        .execute(
            "UPDATE leases SET fence = ?1 WHERE key = ?2",
            (i64::MAX, key.as_bytes()),
        )
        .unwrap();
}

/// The fence counter is an SQLite `INTEGER` (i64): once a key's fence is `i64::MAX`, the next
/// grant has no fence left to hand out. It must fail with a permanent error and leave the row
/// alone, never grant the same fence again.
#[tokio::test]
async fn a_fence_at_its_maximum_is_an_error_not_a_repeat() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let f = store.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    assert!(store.release("k", "a", f).await.unwrap());
    set_fence_to_the_maximum(&path, "k");
    let err = store
        .try_lock(LEASE, "k", "b")
        .await
        .expect_err("no fence after i64::MAX");
    let msg = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{msg}");
    assert!(msg.contains("fence") && msg.contains("`k`"), "{msg}");
    let (holder, n): (Option<Vec<u8>>, i64) = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT holder, fence FROM leases WHERE key = ?1",
            [b"k".as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((holder, n), (None, i64::MAX), "the row is unchanged");
    // Other keys are unaffected.
    assert_eq!(store.try_lock(LEASE, "other", "b").await.unwrap(), fence(1));
}

/// Creates `key`'s wake file, as a key's first waiter does (a grant does not create it, and takes
/// no flock while it is missing): the store names it by the FNV-1a hash of the key.
fn make_wake_file(db: &std::path::Path, key: &str) {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let dir = std::path::PathBuf::from(format!("{}.wake", db.display()));
    std::fs::write(dir.join(format!("{hash:016x}")), b"").expect("create the wake file");
}

/// The one file of `<db>.wake/` (one key was used), opened afresh: a `flock` on it competes with
/// every store's.
fn the_wake_file(db: &std::path::Path) -> std::fs::File {
    let dir = std::path::PathBuf::from(format!("{}.wake", db.display()));
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the wake directory")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "one key, one wake file: {files:?}");
    std::fs::File::open(&files[0]).expect("open the wake file")
}

/// Whether some store holds the wake file's exclusive flock (probed without blocking).
fn wake_flock_held(db: &std::path::Path) -> bool {
    use rustix::fs::{FlockOperation, flock};
    match flock(the_wake_file(db), FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => false, // closing the probe's file unlocks it
        Err(rustix::io::Errno::WOULDBLOCK) => true,
        Err(e) => panic!("flock probe: {e}"),
    }
}

/// A lease lost without a release (its renewals fail until the lock's deadline; the
/// `FaultStore` keeps them from reaching the store at all) gives up the key's wake-up flock
/// once its lease in the store has run out. Otherwise the lost holder's store keeps the flock
/// for as long as its process lives, no later holder can take it, and every later handoff
/// waits for a lease end or a poll instead of being woken by the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_without_release_gives_up_its_wake_flock() {
    use lease_core::CrossProcessLock;
    use lease_core::testing::FaultStore;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let short = Duration::from_millis(300);
    let faulty = FaultStore::new(SqliteStore::open(&path).await.unwrap());
    make_wake_file(&path, "k");
    let lost_lock = CrossProcessLock::builder(faulty.clone(), "k")
        .lease(short)
        .build()
        .unwrap();
    let lost = lost_lock
        .lock_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(wake_flock_held(&path), "a grant takes the key's flock");
    faulty.update(|f| f.fail_renewals = true);
    tokio::time::timeout(Duration::from_secs(10), lost.lost())
        .await
        .expect("the lease is lost at its deadline");
    // Past the lease's end in the store as well (the deadline is a margin before it).
    tokio::time::sleep(short).await;
    assert!(
        !wake_flock_held(&path),
        "the store of a lost lease still holds the key's wake flock"
    );

    // Two other stores (as two other processes) hand the key over: the release wakes the
    // waiter, not the end of the lease.
    let b = SqliteStore::open(&path).await.unwrap();
    let c = SqliteStore::open(&path).await.unwrap();
    let fb = b.try_lock(LEASE, "k", "b").await.unwrap().unwrap();
    assert!(fb > lost.fence());
    assert!(wake_flock_held(&path), "the new holder took the flock");
    let release = {
        let b = b.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let at = Instant::now();
            assert!(b.release("k", "b", fb).await.unwrap());
            at
        })
    };
    c.wait_for_change("k", Duration::from_secs(60)).await;
    let woke = Instant::now();
    let released = release.await.unwrap();
    let took = woke.saturating_duration_since(released);
    println!("after a lost lease, a release woke the waiter in {took:?} (lease {LEASE:?})");
    assert!(
        took < LEASE / 4,
        "woken {took:?} after the release: by the lease's end, not by the release"
    );

    // And the lock-level handoff between the two is quick again.
    let lb = CrossProcessLock::builder(b, "k")
        .lease(LEASE)
        .build()
        .unwrap();
    let lc = CrossProcessLock::builder(c, "k")
        .lease(LEASE)
        .build()
        .unwrap();
    let mut handoffs = Vec::new();
    for _ in 0..10 {
        let held = lb.lock_timeout(Duration::from_secs(10)).await.unwrap();
        let waiter = {
            let lc = lc.clone();
            tokio::spawn(async move {
                let g = lc.lock_timeout(Duration::from_secs(10)).await.unwrap();
                (Instant::now(), g)
            })
        };
        // Let the waiter's backoff grow to its cap.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let released = Instant::now();
        held.release().await.unwrap();
        let (at, g) = waiter.await.unwrap();
        handoffs.push(at.saturating_duration_since(released));
        g.release().await.unwrap();
    }
    handoffs.sort();
    println!("lock handoffs after a lost lease: {handoffs:?}");
    assert!(
        // A wake-up takes about a millisecond; a poll with the default backoff (full
        // jitter up to 250 ms) stays under 25 ms for the median of ten with p ≈ 0.002.
        handoffs[handoffs.len() / 2] < Duration::from_millis(25),
        "the median handoff is a poll, not a wake-up: {handoffs:?}"
    );
    drop(lost);
}

/// A break through another store (as another process would do it): the holder's store loses
/// the key at its next renewal, lets go of the wake-up flock then, and a waiter of a third
/// store wakes; the row keeps the raised fence, so the next grant is above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_through_another_store_frees_the_key_and_raises_the_row_fence() {
    use lease_core::KeyState;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let holder = SqliteStore::open(&path).await.unwrap();
    let operator = SqliteStore::open(&path).await.unwrap();
    let waiter = SqliteStore::open(&path).await.unwrap();
    make_wake_file(&path, "k");
    let f = holder.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    assert!(wake_flock_held(&path));
    let state = operator.inspect("k").await.unwrap();
    assert_eq!((state.holder.as_deref(), state.fence), (Some("a"), Some(f)));
    assert!(state.remaining.unwrap() <= LEASE);

    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            waiter.wait_for_change("k", Duration::from_secs(60)).await;
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let broken = operator.break_lock("k").await.unwrap().expect("held");
    assert!(broken.fence > f && broken.was_live);
    assert_eq!(broken.previous_holder.as_deref(), Some("a"));
    let n: i64 = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT fence FROM leases WHERE key = ?1 AND holder IS NULL",
            [b"k".as_slice()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(Fence::new(u64::try_from(n).unwrap()), Some(broken.fence));
    // Another store's waiter that looks now finds the key free at once.
    let started = Instant::now();
    operator.wait_for_change("k", Duration::from_secs(60)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    // The holder's renewal is refused, which lets go of its flock and wakes the blocked waiter.
    let renewed_at = Instant::now();
    assert!(!holder.renew(LEASE, "k", "a", f).await.unwrap());
    let woke = waiting.await.unwrap();
    assert!(
        woke.saturating_duration_since(renewed_at) < Duration::from_secs(2),
        "the waiter woke {:?} after the refused renewal",
        woke.saturating_duration_since(renewed_at)
    );
    assert!(!wake_flock_held(&path));
    assert!(!holder.release("k", "a", f).await.unwrap());
    assert_eq!(
        waiter.inspect("k").await.unwrap(),
        KeyState::free(Some(broken.fence))
    );
    let g = waiter.try_lock(LEASE, "k", "b").await.unwrap().unwrap();
    assert!(g > broken.fence);
}

/// `inspect` judges a row as a grant does: a lease from a previous boot is free, whatever its
/// expiry says.
#[tokio::test]
async fn inspect_shows_a_lease_from_a_previous_boot_as_free() {
    use lease_core::KeyState;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let f = store
        .try_lock(Duration::from_secs(3600), "k", "a")
        .await
        .unwrap()
        .unwrap();
    assert!(store.inspect("k").await.unwrap().is_held());
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE leases SET boot_id = 'a-previous-boot', expires_ns = ?1",
            [i64::MAX],
        )
        .unwrap();
    assert_eq!(store.inspect("k").await.unwrap(), KeyState::free(Some(f)));
    // A break still names the holder the row had, whose lease was not live.
    let broken = store.break_lock("k").await.unwrap().unwrap();
    assert_eq!(broken.previous_holder.as_deref(), Some("a"));
    assert!(!broken.was_live);
}

/// A break of a key whose fence is at its maximum fails and changes nothing: a fence is never
/// repeated.
#[tokio::test]
async fn a_break_at_the_maximum_fence_is_an_error_not_a_repeat() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    set_fence_to_the_maximum(&path, "k");
    let err = store
        .break_lock("k")
        .await
        .expect_err("no fence after i64::MAX");
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{err}");
    let state = store.inspect("k").await.unwrap();
    assert_eq!(state.holder.as_deref(), Some("a"), "the row is unchanged");
}

/// A grant does not create the key's wake file (creating a file costs about a millisecond on some
/// disks, more than the grant itself); the first waiter does, and later grants flock it.
#[tokio::test]
async fn a_grant_creates_no_wake_file_and_the_first_waiter_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let holder = SqliteStore::open(&path).await.unwrap();
    let waiter = SqliteStore::open(&path).await.unwrap();
    let wake_dir = std::path::PathBuf::from(format!("{}.wake", path.display()));
    let files = || std::fs::read_dir(&wake_dir).unwrap().count();
    let f = holder.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    assert_eq!(files(), 0, "the grant created a wake file");
    // The first waiter creates it (and, finding no flock on it, polls).
    waiter.wait_for_change("k", Duration::from_millis(20)).await;
    assert_eq!(files(), 1);
    assert!(holder.release("k", "a", f).await.unwrap());
    // The next grant flocks the file that now exists.
    holder.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    assert!(wake_flock_held(&path));
}

/// A fence above `i64::MAX` was never handed out, so a renew or release carrying it matches
/// nothing, not even a lease at fence `i64::MAX` (it was once saturated to that).
#[tokio::test]
async fn a_fence_above_i64_max_matches_no_lease() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    set_fence_to_the_maximum(&path, "k");
    let bogus = Fence::new(u64::MAX).unwrap();
    assert!(!store.renew(LEASE, "k", "a", bogus).await.unwrap());
    assert!(!store.release("k", "a", bogus).await.unwrap());
    let real = Fence::new(i64::MAX as u64).unwrap();
    assert!(
        store.renew(LEASE, "k", "a", real).await.unwrap(),
        "the real fence still works"
    );
}
