//! Shared by the test binaries: one etcd per test binary, and stores on it.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use lease_etcd::EtcdStore;
use lease_testkit::{EtcdOptions, EtcdServer};

/// One single-node etcd shared by every test of a binary (each test uses its own prefix).
pub(crate) static ETCD: LazyLock<Option<EtcdServer>> =
    LazyLock::new(|| EtcdServer::start(EtcdOptions::default()));

/// The shared server's endpoint; `None` (test skipped) when etcd is not installed and `CI` is
/// unset.
pub(crate) fn endpoint() -> Option<String> {
    ETCD.as_ref().map(EtcdServer::endpoint)
}

/// A prefix no other test of this run uses.
pub(crate) fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test/{name}/{}-{}/",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh store on the shared server, with its own prefix.
pub(crate) async fn store_on(endpoint: &str, name: &str) -> EtcdStore {
    EtcdStore::builder([endpoint])
        .prefix(unique_prefix(name))
        .connect()
        .await
        .expect("connect to the test etcd")
}

/// A fresh store for the conformance suite (which picks its own unique keys).
pub(crate) async fn conformance_store() -> EtcdStore {
    let endpoint = endpoint().expect("the etcd conformance suite needs `etcd` installed");
    store_on(&endpoint, "conformance").await
}

/// A TCP proxy on loopback in front of one server whose answers (server to client) can be held
/// back while requests still pass: the server applies a request, and the client times out
/// waiting for its answer — an outcome the client cannot know.
pub(crate) struct HoldingProxy {
    port: u16,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HoldingProxy {
    /// Starts proxying to `target` (`host:port`) on a free port; its threads live as long as the
    /// test process.
    pub(crate) fn start(target: &str) -> Self {
        use std::net::{TcpListener, TcpStream};
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let hold = Arc::new(AtomicBool::new(false));
        let target = target.to_owned();
        let held = hold.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (
                    client.try_clone().expect("clone socket"),
                    server.try_clone().expect("clone socket"),
                );
                std::thread::spawn(move || pump(client, server, None));
                let held = held.clone();
                std::thread::spawn(move || pump(s2, c2, Some(held)));
            }
        });
        Self { port, hold }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub(crate) fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Holds back (`true`) or lets through (`false`) everything the server sends.
    pub(crate) fn hold_answers(&self, on: bool) {
        self.hold.store(on, Ordering::SeqCst);
    }
}

fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    hold: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(h) = &hold {
            while h.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}
