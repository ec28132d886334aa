//! TLS (`sslmode=require`, feature `tls`) against a real PostgreSQL with `ssl=on` and a
//! certificate from a throwaway CA made with the `openssl` command: the CA given by
//! `sslrootcert` is trusted, the system's roots are not enough, and without a crypto provider
//! (feature `tls` alone) the store refuses instead of choosing one for the application.
#![cfg(feature = "tls")]

use std::time::Duration;

use lease_core::{LeaseStore, StoreErrorKind};
use lease_postgres::PostgresStore;
use lease_testkit::{PostgresOptions, PostgresServer, make_test_certs, require_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_servers_ca_works_and_an_unknown_ca_is_refused() {
    if require_binary("openssl", "openssl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_test_certs(dir.path());
    let Some(server) = PostgresServer::start(PostgresOptions {
        tls: Some((dir.path().join("server.crt"), dir.path().join("server.key"))),
        ..PostgresOptions::default()
    }) else {
        return;
    };
    let ca = dir.path().join("ca.crt");
    let url = format!(
        "{}?sslmode=require&sslrootcert={}",
        server.url(),
        ca.display()
    );
    #[cfg(not(feature = "tls-ring"))]
    {
        let err = PostgresStore::connect(&url)
            .await
            .expect_err("no crypto provider yet");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("crypto provider"), "{err}");
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
        rustls::crypto::ring::default_provider()
            .install_default()
            .expect("install ring");
    }
    let store = PostgresStore::connect(&url)
        .await
        .expect("connect over TLS");
    let lease = Duration::from_secs(30);
    let f = store.try_lock(lease, "k", "a").await.unwrap().unwrap();
    assert!(store.release("k", "a", f).await.unwrap());

    // Only the system's roots: the test CA is not among them.
    let without_ca = format!("{}?sslmode=require", server.url());
    let err = PostgresStore::connect(&without_ca)
        .await
        .expect_err("unknown CA");
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(!format!("{err} {err:?}").contains(lease_testkit::POSTGRES_PASSWORD));

    // A server without TLS, when the URL requires it.
    if let Some(plain) = PostgresServer::shared() {
        let err = PostgresStore::connect(&format!(
            "{}?sslmode=require&sslrootcert={}",
            plain.url(),
            ca.display()
        ))
        .await
        .expect_err("no TLS there");
        assert_eq!(err.kind(), StoreErrorKind::Permanent, "{err}");
    }
}
