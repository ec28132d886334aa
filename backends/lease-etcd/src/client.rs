//! The requests to etcd: connecting, and running one request bounded by the request timeout,
//! sent again while it certainly never reached a member. Knows nothing of locks or sessions.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, Txn, TxnResponse, WatchOptions};
use lease_core::StoreError;
use tracing::debug;

use crate::config::EtcdStoreBuilder;
use crate::error::{NAME, is_lease_not_found, map, not_sent, timed_out};

/// Why a request failed before it could be classified.
pub(crate) enum Failure {
    Etcd(etcd_client::Error),
    Timeout(Duration),
}

impl Failure {
    pub(crate) fn into_store(self, what: &str) -> StoreError {
        match self {
            Failure::Etcd(e) => map(what, e),
            Failure::Timeout(d) => timed_out(what, d),
        }
    }

    pub(crate) fn is_lease_not_found(&self) -> bool {
        matches!(self, Failure::Etcd(e) if is_lease_not_found(e))
    }
}

/// The connection to the cluster and the timeout that bounds each request on it. Cheap to
/// clone: clones share the connection.
#[derive(Clone)]
pub(crate) struct Etcd {
    client: Client,
    request_timeout: Duration,
}

impl Etcd {
    /// Connects with the settings of `b` (already validated) and proves that the cluster
    /// answers.
    pub(crate) async fn connect(b: &EtcdStoreBuilder) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(b.connect_timeout)
            .with_timeout(b.request_timeout)
            // HTTP/2 pings notice a dead member (or a silent network) without waiting for TCP.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            // A member cut off from the leader refuses at once instead of hanging, so requests
            // and watches move to a member that has one.
            .with_require_leader(true)
            // Simple auth tokens expire when idle (300 s by default): re-authenticate and retry.
            .with_auto_token_refresh(true);
        if let Some((user, password)) = &b.user {
            options = options.with_user(user.clone(), password.clone());
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &b.tls_options {
            options = options.with_tls(tls.clone());
        } else if b.tls {
            options = options.with_tls(etcd_client::TlsOptions::new().with_native_roots());
        }
        let endpoints = b.client_endpoints();
        let shown = b.endpoints.join(",");
        let budget = b.connect_timeout + b.request_timeout;
        let client =
            match tokio::time::timeout(budget, Client::connect(&endpoints, Some(options))).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(map(&format!("connecting to etcd at {shown}"), e)),
                Err(_) => {
                    return Err(StoreError::transient(
                        NAME,
                        format!("could not reach etcd at {shown} within {budget:?}"),
                    ));
                }
            };
        // Connecting is lazy: one read proves the cluster answers (and that the user may read
        // the prefix) before the store is handed out.
        let probe = b.prefix.clone();
        let probed = tokio::time::timeout(budget, async {
            let mut c = client.clone();
            c.get(
                probe,
                Some(GetOptions::new().with_keys_only().with_limit(1)),
            )
            .await
        })
        .await;
        match probed {
            Ok(Ok(_)) => Ok(Etcd {
                client,
                request_timeout: b.request_timeout,
            }),
            Ok(Err(e)) => Err(map(&format!("first request to etcd at {shown}"), e)),
            Err(_) => Err(StoreError::transient(
                NAME,
                format!("could not reach etcd at {shown} within {budget:?}"),
            )),
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Runs one request against a clone of the client, bounded by the request timeout.
    ///
    /// A request that never reached a member (the connection to a dead member was refused, or
    /// the member has no leader and refused before proposing) is sent again at once, until the
    /// timeout: the client balances over every endpoint, and the next try likely picks a live
    /// member. Anything that may have been applied is returned as it is.
    pub(crate) async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let attempts = async {
            loop {
                match f(self.client.clone()).await {
                    Err(e) if not_sent(&e) => {
                        debug!(error = %e, "request not sent; trying another member");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(self.request_timeout, attempts).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::Etcd(e)),
            Err(_) => Err(Failure::Timeout(self.request_timeout)),
        }
    }

    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, Failure> {
        self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Returns once the key `lock` is vacant, or is deleted or changed after it was read.
    pub(crate) async fn watch_for_change(&self, lock: Vec<u8>) -> Result<(), etcd_client::Error> {
        let mut c = self.client.clone();
        let got = c.get(lock.clone(), None).await?;
        if got.kvs().is_empty() {
            // Vacant now: the caller's next try_lock can take it.
            return Ok(());
        }
        let rev = got.header().map_or(0, |h| h.revision());
        let mut stream = c
            .watch(lock, Some(WatchOptions::new().with_start_revision(rev + 1)))
            .await?;
        while let Some(msg) = stream.message().await? {
            if msg.canceled() || !msg.events().is_empty() {
                return Ok(());
            }
        }
        Err(etcd_client::Error::WatchError("watch stream ended".into()))
    }
}
