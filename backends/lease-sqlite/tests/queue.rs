//! Queued grants between stores that each have their own connection and wake-up files on one
//! database, as two processes would: the queue's order across them, a release in one waking
//! the granted waiter of the other, a queue that outlives its store, entries and leases of a
//! previous boot, a queue order that never reuses a number, and the lock serving lock objects
//! of two stores in the order they queued. Then the liveness of the store behind a lease or an
//! entry: a lease or entry of a store that is gone (its liveness flock can be taken) is dead at
//! once, and the key of a SIGKILLed holder process passes to the next waiter without waiting out
//! its lease.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lease_core::{CrossProcessLock, Enqueued, Fence, LeaseStore};
use lease_sqlite::SqliteStore;
use lease_sqlite::rusqlite::{Connection, params};
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(30);
const PATIENCE: Duration = Duration::from_secs(30);
/// Far longer than any wake-up or poll takes: a wait that reaches it was not woken.
const BOUND: Duration = Duration::from_secs(20);

async fn queued(path: &Path) -> SqliteStore {
    SqliteStore::builder(path)
        .queued_grants(true)
        .open()
        .await
        .expect("open the database")
}

/// A fresh database and a queued store on it.
async fn one_store() -> (tempfile::TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let store = queued(&path).await;
    (dir, path, store)
}

/// A fresh database and two queued stores on it.
async fn two_stores() -> (tempfile::TempDir, PathBuf, SqliteStore, SqliteStore) {
    let (dir, path, one) = one_store().await;
    let two = queued(&path).await;
    (dir, path, one, two)
}

async fn enqueue(store: &SqliteStore, key: &str, holder: &str) -> Enqueued {
    store
        .enqueue(LEASE, key, holder, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("enqueue by {holder}: {e}"))
}

async fn granted(store: &SqliteStore, key: &str, holder: &str) -> Fence {
    match enqueue(store, key, holder).await {
        Enqueued::Granted(f) => f,
        other => panic!("expected {holder} to hold {key}, got {other:?}"),
    }
}

async fn waits(store: &SqliteStore, key: &str, holder: &str) {
    match enqueue(store, key, holder).await {
        Enqueued::Waiting { .. } => {}
        other => panic!("expected {holder} to be queued for {key}, got {other:?}"),
    }
}

async fn holder_of(store: &SqliteStore, key: &str) -> Option<String> {
    store.inspect(key).await.expect("inspect").holder
}

/// The holders queued in the database (live or not), in queue order.
fn queue_in_db(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).expect("open the database");
    let mut st = conn
        .prepare("SELECT holder FROM waiters ORDER BY seq")
        .expect("the waiters table");
    st.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .expect("query")
        .map(|h| String::from_utf8(h.expect("row")).expect("utf-8"))
        .collect()
}

/// `column` of `holder`'s one row in `table`, read behind the stores' backs.
fn column_of<T: lease_sqlite::rusqlite::types::FromSql>(
    db: &Path,
    table: &str,
    column: &str,
    holder: &str,
) -> T {
    Connection::open(db)
        .expect("open the database")
        .query_row(
            &format!("SELECT {column} FROM {table} WHERE holder = ?1"),
            [holder.as_bytes()],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("{column} of {holder} in {table}: {e}"))
}

/// Whether any store holds an exclusive flock on a file of `<db>.wake/` (probed without
/// blocking, from a file description of its own).
fn some_wake_flock_held(db: &Path) -> bool {
    use rustix::fs::{FlockOperation, flock};
    let dir = PathBuf::from(format!("{}.wake", db.display()));
    std::fs::read_dir(dir)
        .expect("the wake directory")
        .any(|e| {
            let file = std::fs::File::open(e.expect("entry").path()).expect("open a wake file");
            match flock(&file, FlockOperation::NonBlockingLockShared) {
                Ok(()) => false,
                Err(rustix::io::Errno::WOULDBLOCK) => true,
                Err(e) => panic!("flock probe: {e}"),
            }
        })
}

/// Waiters of two stores are served in the order they queued, whichever store they queued
/// through and whichever store releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_two_stores_are_served_in_queue_order() {
    let (_dir, path, one, two) = two_stores().await;
    let mut last = granted(&one, "k", "a").await;
    let order = [("b", &two), ("c", &one), ("d", &two), ("e", &one)];
    for (w, store) in order {
        waits(store, "k", w).await;
    }
    assert_eq!(queue_in_db(&path), ["b", "c", "d", "e"]);
    let (mut holder, mut holder_store) = ("a", &one);
    for (w, store) in order {
        assert!(holder_store.release("k", holder, last).await.unwrap());
        // Whoever looks, through either store, sees the key handed to the oldest waiter.
        assert_eq!(holder_of(&one, "k").await.as_deref(), Some(w));
        assert_eq!(holder_of(&two, "k").await.as_deref(), Some(w));
        let f = granted(store, "k", w).await;
        assert!(f > last, "fences strictly increase: {f:?} after {last:?}");
        (last, holder, holder_store) = (f, w, store);
    }
    assert!(queue_in_db(&path).is_empty());
}

/// A release through one store hands the key to a waiter of the other and wakes it: the
/// releasing store lets go of the key's wake-up flock and takes none for the waiter (else the
/// waiter's store could not take it, and the waiters of the next tenure would sleep through
/// its release); the waiter's store takes it when the grant is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_in_one_store_wakes_the_granted_waiter_of_the_other() {
    let (_dir, path, one, two) = two_stores().await;
    let a = granted(&one, "k", "a").await;
    waits(&two, "k", "b").await;
    // The first plain wait creates the key's wake-up file (a grant does not, nor does a queued
    // waiter, which its doorbell wakes), so that every later grant takes its flock.
    two.wait_for_change("k", Duration::from_millis(50)).await;
    assert!(one.release("k", "a", a).await.unwrap());
    assert_eq!(holder_of(&one, "k").await.as_deref(), Some("b"));
    assert!(
        !some_wake_flock_held(&path),
        "the releasing store takes no flock for the waiter it granted the key to"
    );
    let b = granted(&two, "k", "b").await;
    assert!(b > a);
    assert!(
        some_wake_flock_held(&path),
        "the waiter's store takes the flock when it confirms the grant"
    );

    waits(&one, "k", "c").await;
    let waiter = {
        let one = one.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = one.wait_for_grant("k", "c", BOUND).await;
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(two.release("k", "b", b).await.unwrap());
    let (got, waited) = waiter.await.expect("waiter task");
    assert!(waited < BOUND, "woken by the release, not by its bound");
    let c = granted(&one, "k", "c").await;
    assert_eq!(got, Some(c), "the waiter learns its grant and its fence");
    assert!(c > b);
}

/// The queue is in the database: a store opened afresh (a restarted process) finds it, and its
/// release hands the key to the oldest waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_survives_reopening_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let a = {
        let store = queued(&path).await;
        let a = granted(&store, "k", "a").await;
        waits(&store, "k", "b").await;
        waits(&store, "k", "c").await;
        a
    };
    let store = queued(&path).await;
    assert!(store.release("k", "a", a).await.unwrap());
    assert_eq!(holder_of(&store, "k").await.as_deref(), Some("b"));
    let b = granted(&store, "k", "b").await;
    assert!(b > a);
    assert!(store.release("k", "b", b).await.unwrap());
    assert_eq!(holder_of(&store, "k").await.as_deref(), Some("c"));
}

/// After a reboot every entry of the queue is dead (its liveness was on the old boot clock),
/// whatever its deadline says, and is dropped; a lease of the old boot is free and goes to the
/// oldest live waiter, not to a newcomer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_and_leases_of_a_previous_boot_are_dead() {
    let (_dir, path, store) = one_store().await;
    let a = granted(&store, "k", "a").await;
    waits(&store, "k", "b").await;
    waits(&store, "k", "c").await;
    // What b's entry looks like after a reboot: another boot id, a deadline far in the future
    // of the new boot clock.
    let db = Connection::open(&path).unwrap();
    db.execute(
        "UPDATE waiters SET boot_id = 'a-previous-boot', live_until_ns = ?1 WHERE holder = ?2",
        params![i64::MAX, b"b".as_slice()],
    )
    .unwrap();
    assert!(store.release("k", "a", a).await.unwrap());
    assert_eq!(
        holder_of(&store, "k").await.as_deref(),
        Some("c"),
        "b's entry is of a previous boot: skipped"
    );
    assert_eq!(queue_in_db(&path), Vec::<String>::new(), "and dropped");

    // Now c's lease is of a previous boot, with d queued behind it.
    let c = granted(&store, "k", "c").await;
    waits(&store, "k", "d").await;
    db.execute(
        "UPDATE leases SET boot_id = 'a-previous-boot', expires_ns = ?1",
        [i64::MAX],
    )
    .unwrap();
    assert_eq!(
        store.try_lock(LEASE, "k", "eve").await.unwrap(),
        None,
        "the key of a previous boot goes to the live waiter, not to a newcomer"
    );
    assert_eq!(holder_of(&store, "k").await.as_deref(), Some("d"));
    assert!(granted(&store, "k", "d").await > c);
}

/// The queue order is an AUTOINCREMENT sequence: an entry made after the newest one left gets
/// a new number, never the one that left.
#[tokio::test]
async fn queue_numbers_are_never_reused() {
    let (_dir, path, store) = one_store().await;
    granted(&store, "k", "a").await;
    let seq_of = |holder: &str| -> i64 { column_of(&path, "waiters", "seq", holder) };
    waits(&store, "k", "b").await;
    let b = seq_of("b");
    assert!(!store.leave_queue("k", "b").await.unwrap());
    waits(&store, "k", "c").await;
    assert!(
        seq_of("c") > b,
        "the number of b's entry is not handed out again"
    );
}

/// A key whose fence is at its maximum cannot be granted again, to a waiter or anyone; its
/// holder's release still succeeds and leaves the key free.
#[tokio::test]
async fn a_release_at_the_maximum_fence_succeeds_and_grants_nobody() {
    let (_dir, path, store) = one_store().await;
    granted(&store, "k", "a").await;
    waits(&store, "k", "b").await;
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE leases SET fence = ?1", [i64::MAX])
        .unwrap();
    let max = Fence::from_i64(i64::MAX).expect("a valid fence");
    assert!(store.release("k", "a", max).await.expect("the release"));
    assert_eq!(holder_of(&store, "k").await, None, "the key is free");
    let err = store
        .enqueue(LEASE, "k", "b", PATIENCE)
        .await
        .expect_err("no fence left");
    assert_eq!(err.kind(), lease_core::StoreErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("cannot be granted again"), "{err}");
}

/// Four lock objects (the holders of four processes), on two stores, each waiting in
/// `lock()`: the key goes to them in the order they queued, with increasing fences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_serves_lock_objects_of_two_stores_in_queue_order() {
    let (_dir, path, one, two) = two_stores().await;
    let lock = |store: &SqliteStore, label: &str| {
        CrossProcessLock::builder(store.clone(), "k")
            .lease(Duration::from_secs(5))
            .holder_label(label)
            .build()
            .expect("valid lock settings")
    };
    let held = lock(&one, "first")
        .try_lock_once()
        .await
        .expect("a free key");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let labels = ["w1", "w2", "w3", "w4"];
    for (i, label) in labels.into_iter().enumerate() {
        let l = lock(if i % 2 == 0 { &two } else { &one }, label);
        let tx = tx.clone();
        tokio::spawn(async move {
            let g = l.lock().await.expect("lock");
            let _ = tx.send((label, g.fence()));
            g.release().await.expect("release");
        });
        // Queued before the next one starts.
        let give_up = Instant::now() + BOUND;
        while queue_in_db(&path).len() < i + 1 {
            assert!(Instant::now() < give_up, "{label} never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut last = held.fence();
    held.release().await.expect("release");
    let mut order = Vec::new();
    for _ in labels {
        let (label, fence) = tokio::time::timeout(BOUND, rx.recv())
            .await
            .expect("the key is handed on")
            .expect("a grant");
        assert!(fence > last, "fences strictly increase");
        last = fence;
        order.push(label);
    }
    assert_eq!(order, labels);
}

/// An id as a store names its liveness file, and that file in `<db>.live/`, unlocked: what a
/// store whose process died leaves behind (the kernel dropped its flock).
fn a_gone_store(db: &Path) -> String {
    let id = format!("{:032x}", rand::random::<u128>());
    let dir = PathBuf::from(format!("{}.live", db.display()));
    std::fs::create_dir_all(&dir).expect("the liveness directory");
    std::fs::write(dir.join(&id), b"").expect("the gone store's file");
    id
}

/// The liveness id in `holder`'s lease row.
fn process_of(db: &Path, holder: &str) -> Option<String> {
    column_of(db, "leases", "process", holder)
}

/// Only a store built with `process_liveness` names itself in its grants; the lease of one
/// without it ends by the clock alone, whatever happens to its process.
#[tokio::test]
async fn only_a_store_with_process_liveness_names_itself_in_its_grants() {
    let (_dir, path, plain) = one_store().await;
    granted(&plain, "k", "a").await;
    assert_eq!(process_of(&path, "a"), None);
    let live = SqliteStore::builder(&path)
        .queued_grants(true)
        .process_liveness(true)
        .open()
        .await
        .expect("open");
    granted(&live, "other", "b").await;
    let id = process_of(&path, "b").expect("a liveness id");
    let file = PathBuf::from(format!("{}.live", path.display())).join(&id);
    assert!(file.is_file(), "the store's liveness file {file:?}");
    drop(live);
    assert!(!file.exists(), "removed when the store closes");
}

fn set_process(db: &Path, table: &str, holder: &str, process: &str) {
    let n = Connection::open(db)
        .unwrap()
        .execute(
            &format!("UPDATE {table} SET process = ?1 WHERE holder = ?2"),
            params![process, holder.as_bytes()],
        )
        .unwrap();
    assert_eq!(n, 1, "one {table} row of {holder}");
}

/// A lease whose store is gone is free at once, whatever its expiry; a lease whose store cannot
/// be told (no liveness file) is judged by the clock alone, so it stays held.
#[tokio::test]
async fn a_lease_of_a_gone_store_is_free_at_once() {
    let (_dir, path, store) = one_store().await;
    let a = granted(&store, "k", "a").await;
    set_process(&path, "leases", "a", "0123456789abcdef0123456789abcdef");
    assert_eq!(
        store.try_lock(LEASE, "k", "b").await.unwrap(),
        None,
        "no liveness file: the clock decides"
    );
    set_process(&path, "leases", "a", &a_gone_store(&path));
    assert_eq!(holder_of(&store, "k").await, None, "inspect sees it free");
    let b = store.try_lock(LEASE, "k", "b").await.unwrap();
    assert!(b > Some(a), "b takes the key with a larger fence: {b:?}");
}

/// A waiter whose store is gone is skipped when its turn comes, and its entry dropped.
#[tokio::test]
async fn a_waiter_of_a_gone_store_is_skipped() {
    let (_dir, path, store) = one_store().await;
    let a = granted(&store, "k", "a").await;
    waits(&store, "k", "b").await;
    waits(&store, "k", "c").await;
    set_process(&path, "waiters", "b", &a_gone_store(&path));
    assert!(store.release("k", "a", a).await.unwrap());
    assert_eq!(holder_of(&store, "k").await.as_deref(), Some("c"));
    assert!(queue_in_db(&path).is_empty(), "b's entry was dropped");
}

/// The environment variable that makes [`child_holds_the_key_until_killed`] a holder process.
const CHILD_DB: &str = "LEASE_SQLITE_QUEUE_TEST_CHILD_DB";
/// The child's lease: far longer than the test waits for the key.
const CHILD_LEASE: Duration = Duration::from_secs(120);

/// Run as a child process by [`a_sigkilled_holder_s_key_passes_to_the_waiter_at_once`]: takes
/// the key for [`CHILD_LEASE`], says so on stdout, and waits to be killed. In a plain test run
/// (without [`CHILD_DB`]) it does nothing.
#[tokio::test]
async fn child_holds_the_key_until_killed() {
    let Some(db) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let store = SqliteStore::builder(&db)
        .queued_grants(true)
        .process_liveness(true)
        .open()
        .await
        .expect("open the database");
    let fence = store
        .try_lock(CHILD_LEASE, "k", "child")
        .await
        .expect("try_lock")
        .expect("a free key");
    println!("HELD {}", fence.get());
    tokio::time::sleep(CHILD_LEASE * 2).await;
}

/// A holder process killed with SIGKILL cannot release or renew, and its lease runs for
/// minutes; but the kernel dropped its store's liveness flock (`process_liveness`), so the
/// waiter of another process (a lock waiting in `lock_timeout`) gets the key at once, with a
/// larger fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_holder_s_key_passes_to_the_waiter_at_once() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let (_dir, path, store) = one_store().await;
    /// Kills the holder process however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["child_holds_the_key_until_killed", "--exact", "--nocapture"])
        .env(CHILD_DB, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the holder process");
    let stdout = child.stdout.take().expect("the child's stdout");
    let mut child = Killed(child);
    let held = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("HELD ")
                    .map(|f| f.parse::<u64>().expect("a fence"))
            })
    });
    let child_fence = tokio::time::timeout(BOUND, held)
        .await
        .expect("the child takes the key in time")
        .expect("reader task")
        .expect("the child says it holds the key");
    let lock = CrossProcessLock::builder(store.clone(), "k")
        .lease(Duration::from_secs(5))
        .holder_label("waiter")
        .build()
        .expect("valid lock settings");
    let waiting = tokio::spawn(async move { lock.lock_timeout(BOUND).await.map(|g| g.fence()) });
    let give_up = Instant::now() + BOUND;
    while queue_in_db(&path).is_empty() {
        assert!(Instant::now() < give_up, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = Instant::now();
    child.0.kill().expect("SIGKILL the holder");
    child.0.wait().expect("reap the holder");
    let fence = waiting
        .await
        .expect("waiter task")
        .expect("the waiter gets the key long before the killed holder's lease ends");
    println!("the key passed {:?} after the kill", killed_at.elapsed());
    assert!(
        fence.get() > child_fence,
        "a larger fence than the killed holder's"
    );
}
