//! `leasehold::open` against real stores: a SQLite file, a `redis-server`, an `etcd` and a PostgreSQL started
//! by lease-testkit (for the stores this build includes).
#![allow(unused_imports)] // which parts are used depends on the features

use std::time::Duration;

use leasehold::{CrossProcessLock, DynStore, Error, LeaseStore, OpenError, StoreErrorKind};

/// Takes, refuses to a second holder, and releases `key` on `store`.
#[allow(dead_code)]
async fn lock_works(store: DynStore, key: &str) {
    let a = CrossProcessLock::builder(store.clone(), key)
        .lease(Duration::from_secs(5))
        .build()
        .unwrap();
    let b = CrossProcessLock::builder(store, key)
        .lease(Duration::from_secs(5))
        .build()
        .unwrap();
    let guard = a.try_lock_once().await.expect("granted");
    assert!(matches!(b.try_lock_once().await, Err(Error::Busy { .. })));
    let fence = guard.fence();
    guard.release().await.unwrap();
    let again = b.try_lock_once().await.expect("granted after the release");
    assert!(again.fence() > fence);
    again.release().await.unwrap();
}

#[cfg(feature = "sqlite-system")]
#[tokio::test]
async fn sqlite_by_url_and_by_plain_path_open_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.db");
    let by_url = leasehold::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let by_path = leasehold::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(by_url.capabilities().name, "sqlite");
    let s = by_url
        .downcast_ref::<leasehold::sqlite::SqliteStore>()
        .expect("the concrete store");
    assert_eq!(s.path(), path.canonicalize().unwrap());
    // One database: a grant through one is refused through the other.
    let lease = Duration::from_secs(5);
    let f = by_url.try_lock(lease, "k", "a").await.unwrap().unwrap();
    assert_eq!(by_path.try_lock(lease, "k", "b").await.unwrap(), None);
    assert!(by_url.release("k", "a", f).await.unwrap());
    lock_works(by_path, "sqlite-lock").await;
}

#[cfg(feature = "sqlite-system")]
#[tokio::test]
async fn sqlite_url_errors_come_from_the_store() {
    let e = leasehold::open("sqlite://").await.unwrap_err();
    assert!(
        matches!(&e, OpenError::Store(s) if s.kind() == StoreErrorKind::InvalidInput),
        "{e:?}"
    );
    assert!(e.to_string().contains("names no file"), "{e}");
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use lease_testkit::{RedisOptions, RedisServer};

    #[tokio::test]
    async fn a_redis_url_opens_the_redis_store_and_a_wrong_password_is_refused_unseen() {
        let Some(server) = RedisServer::start(RedisOptions {
            password: Some("right-s3cret".into()),
            ..RedisOptions::default()
        }) else {
            return;
        };
        let port = server.port();
        let store = leasehold::open(&format!("redis://:right-s3cret@127.0.0.1:{port}/"))
            .await
            .expect("open redis");
        assert_eq!(store.capabilities().name, "redis");
        assert!(
            store
                .downcast_ref::<leasehold::redis::RedisStore>()
                .is_some()
        );
        lock_works(store, "redis-lock").await;

        let e = leasehold::open(&format!("redis://:wrong-s3cret@127.0.0.1:{port}/"))
            .await
            .unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(matches!(&e, OpenError::Store(_)), "{e:?}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use lease_testkit::{EtcdOptions, EtcdServer};

    #[tokio::test]
    async fn an_etcd_url_opens_the_etcd_store() {
        let Some(server) = EtcdServer::start(EtcdOptions::default()) else {
            return;
        };
        let store = leasehold::open(&format!("etcd://{}/leasehold-test", server.endpoint()))
            .await
            .expect("open etcd");
        assert_eq!(store.capabilities().name, "etcd");
        assert!(store.downcast_ref::<leasehold::etcd::EtcdStore>().is_some());
        lock_works(store, "etcd-lock").await;
    }

    #[tokio::test]
    async fn an_unreachable_etcd_is_an_error_not_a_hang() {
        let port = lease_testkit::free_port();
        let started = std::time::Instant::now();
        let e = leasehold::open(&format!("etcd://u:s3cret@127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        let text = format!("{e} {e:?}");
        assert!(matches!(&e, OpenError::Store(_)), "{e:?}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use lease_testkit::{POSTGRES_PASSWORD, PostgresOptions, PostgresServer};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_postgres_url_opens_the_postgres_store_and_a_wrong_password_is_refused_unseen() {
        let Some(server) = PostgresServer::start(PostgresOptions::default()) else {
            return;
        };
        let url = format!("{}?schema=leasehold-test", server.url());
        let store = leasehold::open(&url.replace("postgres://", "postgresql://"))
            .await
            .expect("open postgres");
        assert_eq!(store.capabilities().name, "postgres");
        let concrete = store
            .downcast_ref::<leasehold::postgres::PostgresStore>()
            .expect("the postgres store");
        assert_eq!(concrete.schema(), "leasehold-test");
        lock_works(store, "postgres-lock").await;

        let e = leasehold::open(&url.replace(POSTGRES_PASSWORD, "wrong-s3cret"))
            .await
            .unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(matches!(&e, OpenError::Store(_)), "{e:?}");
        assert!(
            !text.contains("s3cret") && !text.contains(POSTGRES_PASSWORD),
            "{text}"
        );
    }
}
