//! TLS (`rediss://`, feature `tls`) against a real redis-server with a `--tls-port` and a
//! certificate from a throwaway CA made with the `openssl` command. `scripts/test.sh` runs it
//! twice: with `tls-ring` (the store installs ring) and with `tls` alone (the application must).
#![cfg(feature = "tls")]

use std::time::Duration;

use lease_core::{LeaseStore, StoreErrorKind};
use lease_redis::RedisStore;
use lease_redis::redis::{self, TlsCertificates};
use lease_testkit::{RedisOptions, RedisServer, free_port, make_test_certs, require_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_servers_ca_works_and_an_unknown_ca_is_refused() {
    if require_binary("openssl", "openssl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_test_certs(dir.path());
    let tls_port = free_port();
    let file = |name: &str| dir.path().join(name).display().to_string();
    let Some(_server) = RedisServer::start(RedisOptions {
        extra_args: vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            file("server.crt"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ],
        ..RedisOptions::default()
    }) else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    #[cfg(not(feature = "tls-ring"))]
    {
        // The application chooses rustls's crypto provider: before it has, a TLS URL is refused
        // (rustls would panic), and the store installs none of its own.
        let err = RedisStore::connect(&url)
            .await
            .expect_err("no crypto provider yet");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("crypto provider"), "{err}");
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
        rustls::crypto::ring::default_provider()
            .install_default()
            .unwrap();
    }
    let client = redis::Client::build_with_tls(
        url.as_str(),
        TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(dir.path().join("ca.crt")).unwrap()),
        },
    )
    .expect("TLS client");
    let store = RedisStore::builder_with_client(client)
        .prefix("tls:")
        .connect()
        .await
        .expect("connect over TLS");
    let lease = Duration::from_secs(10);
    let f = store
        .try_lock(lease, "k", "alice")
        .await
        .unwrap()
        .expect("granted");
    assert_eq!(store.try_lock(lease, "k", "bob").await.unwrap(), None);
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            store.wait_for_change("k", Duration::from_secs(20)).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.release("k", "alice", f).await.unwrap());
    assert!(
        waiter.await.unwrap() < Duration::from_secs(5),
        "woken over TLS pub/sub"
    );

    // The system roots do not know the throwaway CA.
    let err = RedisStore::builder(&url)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect_err("unknown CA");
    println!("unknown CA: {err}");
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
}
