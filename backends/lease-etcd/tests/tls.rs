//! TLS (feature `tls`) against a real etcd serving its client port over TLS, with a certificate
//! from a throwaway CA made with the `openssl` command.
#![cfg(feature = "tls")]

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use lease_core::{Fence, LeaseStore};
use lease_etcd::EtcdStore;
use lease_etcd::etcd_client::{Certificate, TlsOptions};
use lease_testkit::{Server, free_port, make_test_certs, require_binary};

const LEASE: Duration = Duration::from_secs(2);

/// An etcd whose client port speaks TLS only; its endpoint as `https://127.0.0.1:PORT`.
fn start_tls_etcd(dir: &Path) -> Option<(Server, String)> {
    let etcd = require_binary("etcd", "etcd-server")?;
    make_test_certs(dir);
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("https://127.0.0.1:{client}");
    let args = vec![
        "--name=tls".to_owned(),
        format!("--data-dir={}", dir.join("data").display()),
        format!("--listen-client-urls={endpoint}"),
        format!("--advertise-client-urls={endpoint}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=tls=http://127.0.0.1:{peer}"),
        format!("--cert-file={}", dir.join("server.crt").display()),
        format!("--key-file={}", dir.join("server.key").display()),
    ];
    let ready = || TcpStream::connect(("127.0.0.1", client)).is_ok();
    let server = Server::spawn(
        "etcd-tls",
        &etcd,
        args,
        dir,
        Duration::from_secs(20),
        &ready,
    )
    .expect("start etcd with TLS");
    Some((server, endpoint))
}

#[tokio::test]
async fn locks_over_tls_and_refuses_an_unknown_ca() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_server, endpoint)) = start_tls_etcd(dir.path()) else {
        return;
    };
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    // etcd answers once it has elected itself; the first request may come before that.
    let mut store = None;
    for _ in 0..50 {
        match EtcdStore::builder([endpoint.clone()])
            .tls(TlsOptions::new().ca_certificate(Certificate::from_pem(&ca)))
            .connect()
            .await
        {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let store = store.expect("connect over TLS with the test CA");
    assert_eq!(
        store.try_lock(LEASE, "k", "a").await.unwrap(),
        Some(Fence::new(1).unwrap())
    );
    assert_eq!(store.try_lock(LEASE, "k", "b").await.unwrap(), None);
    store
        .release("k", "a", Fence::new(1).unwrap())
        .await
        .unwrap();
    assert_eq!(
        store.try_lock(LEASE, "k", "b").await.unwrap(),
        Some(Fence::new(2).unwrap())
    );

    // The system's roots do not know the test CA: connecting fails, and says where.
    let refused = EtcdStore::builder([endpoint.clone()])
        .tls(TlsOptions::new().with_native_roots())
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect_err("a certificate from an unknown CA is refused");
    let message = format!("{refused:#}");
    assert!(message.contains(&endpoint), "{message}");

    // Plain text to a TLS port fails too, instead of hanging.
    let plain = endpoint.replace("https://", "http://");
    let refused = EtcdStore::builder([plain])
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect_err("plain text to a TLS port is refused");
    assert!(format!("{refused:#}").contains("127.0.0.1"), "{refused:#}");
}
