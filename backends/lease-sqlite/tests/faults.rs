//! Faults of the database file: a path that cannot be created, a directory in the way, a file
//! that is not a database, a schema from a newer version, a database locked past the busy
//! budget (and other calls on the store running meanwhile), and the file deleted or replaced
//! under a running holder. Each gives a clear error naming the path and the problem; none
//! panics and none grants a key twice.

use std::time::Duration;

use lease_core::{CrossProcessLock, LeaseStore, StoreErrorKind};
use lease_sqlite::SqliteStore;
use lease_sqlite::rusqlite::Connection;

const LEASE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_path_under_a_regular_file_cannot_be_created() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plain.txt");
    std::fs::write(&file, b"not a directory").expect("write");
    let path = file.join("locks.db");
    let err = SqliteStore::open(&path).await.expect_err("cannot open");
    let msg = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("is not a directory"), "{msg}");
    let err = SqliteStore::builder(&path)
        .create_dirs(true)
        .open()
        .await
        .expect_err("cannot create");
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{err}");
}

#[tokio::test]
async fn a_directory_in_place_of_the_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    std::fs::create_dir(&path).expect("mkdir");
    let err = SqliteStore::open(&path).await.expect_err("cannot open");
    let msg = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("is a directory"), "{msg}");
}

#[tokio::test]
async fn a_file_of_random_bytes_is_not_a_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let noise: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &noise).expect("write noise");
    let err = SqliteStore::open(&path).await.expect_err("cannot open");
    let msg = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not an SQLite database"), "{msg}");
    assert_eq!(
        std::fs::read(&path).expect("read back"),
        noise,
        "the file is left alone"
    );
}

#[tokio::test]
async fn a_schema_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    drop(SqliteStore::open(&path).await.expect("create"));
    Connection::open(&path)
        .expect("open")
        .pragma_update(None, "user_version", 99)
        .expect("set user_version");
    let err = SqliteStore::open(&path).await.expect_err("cannot open");
    let msg = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("schema version 99"), "{msg}");
    assert!(msg.contains("newer"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_past_the_busy_budget_is_a_transient_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let budget = Duration::from_millis(300);
    let store = SqliteStore::builder(&path)
        .busy_budget(budget)
        .open()
        .await
        .expect("open");
    let fence = store
        .try_lock(LEASE, "k", "a")
        .await
        .expect("try_lock")
        .expect("granted");

    let blocker = Connection::open(&path).expect("open a second connection");
    blocker
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");

    let started = std::time::Instant::now();
    let err = store
        .try_lock(LEASE, "k", "b")
        .await
        .expect_err("locked database");
    let msg = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("locked"), "{msg}");
    assert!(
        started.elapsed() >= budget,
        "it retried for the whole budget"
    );
    let err = store
        .renew(LEASE, "k", "a", fence)
        .await
        .expect_err("locked");
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");

    // Opening another store while it is locked fails the same way.
    let err = SqliteStore::builder(&path)
        .busy_budget(budget)
        .open()
        .await
        .expect_err("locked database");
    let msg = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("locked"), "{msg}");

    blocker.execute_batch("ROLLBACK").expect("unlock");
    assert_eq!(
        store.try_lock(LEASE, "k", "b").await.expect("try_lock"),
        None,
        "the key is still a's once the database is free"
    );
    assert!(store.renew(LEASE, "k", "a", fence).await.expect("renew"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_replaced_under_a_holder_ends_its_lease() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let lock = CrossProcessLock::builder(store.clone(), "k")
        .lease(Duration::from_millis(900))
        .build()
        .expect("lock");
    let guard = lock.try_lock_once().await.expect("acquire");

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    // Another store creates a fresh database at the same path.
    let fresh = SqliteStore::open(&path).await.expect("a new database");

    tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the holder learns of the loss within its lease");
    assert!(!guard.is_held());

    // The old store grants nothing from the new file, and says why.
    let err = store
        .try_lock(LEASE, "k", "other")
        .await
        .expect_err("the old store refuses");
    let msg = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("replaced"), "{msg}");
    drop(fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_deleted_under_a_holder_ends_its_lease() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let lock = CrossProcessLock::builder(store.clone(), "k")
        .lease(Duration::from_millis(900))
        .build()
        .expect("lock");
    let guard = lock.try_lock_once().await.expect("acquire");
    std::fs::remove_file(&path).expect("delete the database");
    tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the holder learns of the loss within its lease");
    assert!(!guard.is_held());
    let err = store
        .try_lock(LEASE, "k", "other")
        .await
        .expect_err("the old store refuses");
    let msg = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{msg}");
    assert!(msg.contains("deleted"), "{msg}");
}

#[tokio::test]
async fn a_database_corrupted_after_its_header_gives_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let store = SqliteStore::open(&path).await.expect("open");
    store
        .try_lock(LEASE, "k", "a")
        .await
        .expect("try_lock")
        .expect("granted");
    // Closing the last connection checkpoints the WAL into the file and removes it.
    drop(store);
    let mut bytes = std::fs::read(&path).expect("read");
    assert!(bytes.len() >= 8192, "two pages at least");
    // Page 2 holds the lease table: overwrite it, keep the header and schema page intact.
    for (i, b) in bytes[4096..8192].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0x5A;
    }
    std::fs::write(&path, &bytes).expect("write");

    let err = match SqliteStore::open(&path).await {
        Err(e) => e,
        Ok(store) => store
            .try_lock(LEASE, "k", "b")
            .await
            .expect_err("a corrupted table grants nothing"),
    };
    let msg = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("corrupt"), "{msg}");
}

/// A call that retries a busy database sleeps between its attempts without holding the store's
/// connection, so the other calls on the same store keep running theirs: here a raw connection
/// holds the write lock (`BEGIN IMMEDIATE`) while a `try_lock` retries for its whole busy
/// budget, and a `wait_for_change` on a free key on the same store (a plain read, which WAL
/// serves next to a writer) returns at once instead of after the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_retry_does_not_hold_up_other_calls_on_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let budget = Duration::from_secs(4);
    let store = SqliteStore::builder(&path)
        .busy_budget(budget)
        .open()
        .await
        .expect("open");
    // Both rows exist, so that the read below finds a released key.
    let f = store.try_lock(LEASE, "free", "a").await.unwrap().unwrap();
    assert!(store.release("free", "a", f).await.unwrap());

    let blocker = Connection::open(&path).expect("open a second connection");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let started = std::time::Instant::now();
    let retrying = {
        let store = store.clone();
        tokio::spawn(async move { store.try_lock(LEASE, "busy", "a").await })
    };
    // Well inside the retries.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!retrying.is_finished(), "the try_lock is still retrying");
    let read_started = std::time::Instant::now();
    store.wait_for_change("free", Duration::from_secs(60)).await;
    let read_took = read_started.elapsed();
    println!("a read during another call's busy retries took {read_took:?} (budget {budget:?})");
    assert!(
        read_took < budget / 4,
        "the read waited {read_took:?} for another call's busy retries (budget {budget:?})"
    );
    assert!(
        !retrying.is_finished(),
        "the read returned while the try_lock was still retrying"
    );
    let err = retrying
        .await
        .expect("task")
        .expect_err("locked past the budget");
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
    assert!(started.elapsed() >= budget);
    blocker.execute_batch("ROLLBACK").expect("unlock");
}
