//! etcd: the floor is one put; the peer is etcd's own Lock RPC (`etcd-client`) with a session
//! lease; the store's keepalives are counted besides its calls.

use std::time::Duration;

use anyhow::{Context, bail};
use lease_core::DynStore;

use super::{Backend, Floor, Fut, PeerHeld, PeerLock, WireCounter};
use crate::proto::Imp;

pub(super) struct Etcd;

impl Backend for Etcd {
    fn floor_operation(&self) -> &'static str {
        "put"
    }

    fn queued_grants_options(&self) -> &'static [&'static str] {
        &[super::QUEUED_GRANTS]
    }

    fn floor<'a>(&'a self, location: &'a str, _store: &'a DynStore) -> Fut<'a, Box<dyn Floor>> {
        Box::pin(async move {
            let (endpoints, _) = endpoints(location)?;
            let client = etcd_client::Client::connect(endpoints, None).await?;
            Ok(Box::new(Put(client)) as Box<dyn Floor>)
        })
    }

    fn version<'a>(&'a self, location: &'a str) -> Fut<'a, String> {
        Box::pin(async move {
            let (endpoints, _) = endpoints(location)?;
            let mut client = etcd_client::Client::connect(endpoints, None).await?;
            Ok(format!("etcd {}", client.status().await?.version()))
        })
    }

    fn peers(&self) -> &'static [Imp] {
        &[Imp::EtcdLockRpc]
    }

    fn peer_lock<'a>(
        &'a self,
        location: &'a str,
        key: &'a str,
        lease_ms: Option<u64>,
    ) -> Fut<'a, Box<dyn PeerLock>> {
        Box::pin(async move {
            let (endpoints, _) = endpoints(location)?;
            let mut client = etcd_client::Client::connect(endpoints, None)
                .await
                .context("connecting to etcd for the Lock RPC")?;
            let ttl = i64::try_from(lease_ms.unwrap_or(10_000).div_ceil(1000).max(2))?;
            let lease = client.lease_grant(ttl, None).await?.id();
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            let every =
                Duration::from_secs(u64::try_from(ttl)? / 3).max(Duration::from_millis(500));
            let keepalive = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if keeper.keep_alive().await.is_err() {
                        return;
                    }
                    if stream.message().await.is_err() {
                        return;
                    }
                }
            });
            Ok(Box::new(LockRpc {
                client,
                name: format!("bench-rpc/{key}").into_bytes(),
                lease,
                _keepalive: AbortOnDrop(keepalive),
            }) as Box<dyn PeerLock>)
        })
    }

    /// Waiters on etcd park later: their watch must be set up first.
    fn settle(&self) -> Duration {
        Duration::from_millis(10)
    }

    fn wire_counter(&self, store: &DynStore) -> Option<WireCounter> {
        let etcd = store.downcast_ref::<lease_etcd::EtcdStore>()?.clone();
        Some(Box::new(move || etcd.keepalives_sent()))
    }
}

/// `etcd://host:port[,host:port][/prefix][?options]` → endpoints and prefix (the store's own
/// options are not the peers' business).
fn endpoints(url: &str) -> anyhow::Result<(Vec<String>, String)> {
    let shown = crate::store::redact(url);
    let rest = url
        .strip_prefix("etcd://")
        .with_context(|| format!("`{shown}` is not an etcd:// URL"))?;
    // Any `@` (user info runs to the last one, as `redact_url` reads it, so a password may
    // hold a `/`), not only one before the first `/`.
    if rest.contains('@') {
        bail!("the harness's etcd peers take no credentials in the URL");
    }
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let endpoints: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("http://{h}"))
        .collect();
    if endpoints.is_empty() {
        bail!("`{shown}` names no etcd host");
    }
    Ok((endpoints, prefix.to_owned()))
}

/// The floor's client.
struct Put(etcd_client::Client);

impl Floor for Put {
    fn op<'a>(&'a self, key: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let mut client = self.0.clone();
            client.put(format!("bench-floor/{key}"), "1", None).await?;
            Ok(())
        })
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// etcd's Lock RPC on one name, under a session lease kept alive in the background.
struct LockRpc {
    client: etcd_client::Client,
    name: Vec<u8>,
    lease: i64,
    _keepalive: AbortOnDrop,
}

impl PeerLock for LockRpc {
    fn acquire(&self, timeout: Option<Duration>) -> Fut<'_, Option<PeerHeld>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let opts = etcd_client::LockOptions::new().with_lease(self.lease);
            let fut = client.lock(self.name.clone(), Some(opts));
            let resp = match timeout {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r?,
                    Err(_) => return Ok(None),
                },
                None => fut.await?,
            };
            Ok(Some(PeerHeld(Box::new(resp.key().to_vec()))))
        })
    }

    fn release(&self, held: PeerHeld) -> Fut<'_, ()> {
        Box::pin(async move {
            let key: Vec<u8> = held.downcast()?;
            self.client.clone().unlock(key).await?;
            Ok(())
        })
    }
}
