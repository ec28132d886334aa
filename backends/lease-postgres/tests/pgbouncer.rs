//! The store through PgBouncer in transaction pool mode (Debian's, 1.18: no support for named
//! prepared statements), with a pool of two server connections shared by every store: the
//! whole conformance suite (with and without queued grants), migrations included, and many
//! stores at once. The listening connection goes to the server directly (`listen_url`), as the
//! crate docs advise.

mod common;

use std::sync::LazyLock;
use std::time::Duration;

use lease_core::{CrossProcessLock, LeaseStore};
use lease_postgres::PostgresStore;
use lease_testkit::{PgBouncer, PostgresServer};

/// The pooler in front of the shared server; `None` (skipped) when PostgreSQL or PgBouncer is
/// not installed and `CI` is unset.
fn bouncer() -> Option<&'static PgBouncer> {
    static BOUNCER: LazyLock<Option<PgBouncer>> =
        LazyLock::new(|| PgBouncer::start(PostgresServer::shared()?, 2));
    BOUNCER.as_ref()
}

async fn store_behind_pgbouncer(schema: &str) -> Option<PostgresStore> {
    let bouncer = bouncer()?;
    let direct = common::url()?;
    Some(
        PostgresStore::builder(&bouncer.url())
            .schema(schema)
            .queued_grants(false)
            .listen_url(&direct)
            .connect()
            .await
            .expect("connect through pgbouncer"),
    )
}

async fn conformance_store() -> PostgresStore {
    store_behind_pgbouncer("pooled")
        .await
        .expect("the pgbouncer suite needs PostgreSQL and PgBouncer installed")
}

lease_core::conformance_tests!(conformance_store());

/// The same with queued grants: the schema's functions through the pooler.
mod queued {
    use super::*;

    async fn store() -> PostgresStore {
        let bouncer = bouncer().expect("the pgbouncer suite needs PostgreSQL and PgBouncer");
        PostgresStore::builder(&bouncer.url())
            .schema("pooled-queued")
            .queued_grants(true)
            .listen_url(&common::url().expect("PostgreSQL"))
            .connect()
            .await
            .expect("connect through pgbouncer")
    }

    lease_core::conformance_tests!(store());
}

/// Twenty stores (twenty client connections) on two server connections, four keys, locks
/// taken and released in turn: no statement depends on a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stores_share_two_server_connections() {
    let schema = common::unique_schema("many");
    let Some(first) = store_behind_pgbouncer(&schema).await else {
        return;
    };
    drop(first);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let schema = schema.clone();
        tasks.push(tokio::spawn(async move {
            let store = store_behind_pgbouncer(&schema).await.expect("store");
            let lock = CrossProcessLock::builder(store, format!("key{}", i % 4))
                .lease(Duration::from_secs(5))
                .build()
                .expect("lock");
            let mut fences = Vec::new();
            for _ in 0..5 {
                let guard = lock
                    .lock_timeout(Duration::from_secs(30))
                    .await
                    .expect("lock through pgbouncer");
                fences.push((i % 4, guard.fence()));
                guard.release().await.expect("release");
            }
            fences
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(all.len(), before, "a fence was handed out twice");
    assert_eq!(all.len(), 100);
}

/// Without a direct listening connection a waiter still returns: at the holder's lease end
/// (from the row), or at its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notifications_waiters_wake_at_the_lease_end() {
    let Some(bouncer) = bouncer() else { return };
    let store = PostgresStore::builder(&bouncer.url())
        .schema(common::unique_schema("quiet"))
        .notifications(false)
        .queued_grants(false)
        .connect()
        .await
        .expect("connect through pgbouncer");
    assert!(!store.capabilities().notifications);
    store
        .try_lock(Duration::from_millis(300), "k", "a")
        .await
        .unwrap()
        .unwrap();
    let started = std::time::Instant::now();
    store.wait_for_change("k", Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    assert!(
        store
            .try_lock(Duration::from_secs(5), "k", "b")
            .await
            .unwrap()
            .is_some()
    );
}
