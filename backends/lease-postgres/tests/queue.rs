//! Queued grants against a real PostgreSQL: a release hands the key to the oldest waiter in
//! the same statement and wakes that waiter at once; a schema of the first version gets the
//! queue and keeps its leases.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lease_core::{CrossProcessLock, Enqueued, LeaseStore};
use lease_postgres::{PostgresStore, tokio_postgres};

async fn queued_store(url: &str, schema: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .schema(schema)
        .queued_grants(true)
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_declares_its_queue_and_a_waiter_learns_its_grant_at_once() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("handoff");
    let store = queued_store(&url, &schema).await;
    assert!(store.capabilities().queued_grants);
    assert!(
        !common::store_in(&url, &schema)
            .await
            .capabilities()
            .queued_grants
    );
    let lease = Duration::from_secs(30);
    let Enqueued::Granted(f) = store.enqueue(lease, "k", "alice", lease).await.unwrap() else {
        panic!("a free key is granted");
    };
    let other = Arc::new(queued_store(&url, &schema).await);
    assert_eq!(
        other.enqueue(lease, "k", "bob", lease).await.unwrap(),
        Enqueued::Waiting { fence: Some(f) }
    );
    let waiter = {
        let other = other.clone();
        tokio::spawn(async move {
            let got = other
                .wait_for_grant("k", "bob", Duration::from_secs(20))
                .await;
            (got, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    assert!(store.release("k", "alice", f).await.unwrap());
    let (got, woke) = waiter.await.unwrap();
    let g = got.expect("the grant's fence");
    assert!(g > f);
    let handoff = woke.duration_since(released);
    assert!(handoff < Duration::from_secs(1), "handoff took {handoff:?}");
    assert_eq!(
        other.inspect("k").await.unwrap().holder.as_deref(),
        Some("bob")
    );
}

/// Processes' locks (here: tasks with stores of their own) queue on one key and are served in
/// the order they came, each with a larger fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_served_in_order() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("order");
    let first = queued_store(&url, &schema).await;
    let lock = CrossProcessLock::builder(first, "k")
        .lease(Duration::from_secs(10))
        .build()
        .unwrap();
    let guard = lock.lock_timeout(Duration::from_secs(5)).await.unwrap();
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let store = queued_store(&url, &schema).await;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let lock = CrossProcessLock::builder(store, "k")
                .lease(Duration::from_secs(10))
                .build()
                .unwrap();
            let g = lock.lock_timeout(Duration::from_secs(30)).await.unwrap();
            tx.send((i, g.fence())).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            g.release().await.unwrap();
        }));
        // Each one queued before the next starts.
        let deadline = Instant::now() + Duration::from_secs(20);
        while queued(&admin, &schema).await < i + 1 {
            assert!(Instant::now() < deadline, "waiter {i} never queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut last = guard.fence();
    guard.release().await.unwrap();
    for expected in 0..4 {
        let (i, f) = rx.recv().await.unwrap();
        assert_eq!(i, expected, "served out of order");
        assert!(f > last);
        last = f;
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// How many entries the schema's queue has.
async fn queued(admin: &tokio_postgres::Client, schema: &str) -> usize {
    let n: i64 = admin
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".waiters"), &[])
        .await
        .unwrap()
        .get(0);
    usize::try_from(n).unwrap()
}

/// A schema written by the first version (leases only) is migrated to the queue and keeps its
/// rows, held leases included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_schema_gets_the_queue_and_keeps_its_leases() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("v1");
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\";
             CREATE TABLE \"{schema}\".schema_version (
                 one boolean PRIMARY KEY DEFAULT true CHECK (one), version integer NOT NULL);
             INSERT INTO \"{schema}\".schema_version (version) VALUES (1);
             CREATE TABLE \"{schema}\".leases (
                 key bytea PRIMARY KEY, holder bytea,
                 fence bigint NOT NULL CHECK (fence > 0), expires_at timestamptz NOT NULL
             ) WITH (fillfactor = 50);
             INSERT INTO \"{schema}\".leases VALUES
                 ('held'::bytea, 'alice'::bytea, 7, clock_timestamp() + interval '1 hour');"
        ))
        .await
        .unwrap();
    let store = queued_store(&url, &schema).await;
    let state = store.inspect("held").await.unwrap();
    assert_eq!(state.holder.as_deref(), Some("alice"));
    assert_eq!(state.fence.map(|f| f.get()), Some(7));
    let lease = Duration::from_secs(30);
    assert!(matches!(
        store.enqueue(lease, "held", "bob", lease).await.unwrap(),
        Enqueued::Waiting { .. }
    ));
    let version: i32 = admin
        .query_one(
            &format!("SELECT version FROM \"{schema}\".schema_version"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
}
