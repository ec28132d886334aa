//! Redis: the floor is one EVALSHA of a one-line `SET` script on a multiplexed connection; the
//! peer is the `rslock` crate (Redlock over one server). The harness's own server gets the
//! waiter queue (`?queued_grants=true`).

use std::time::Duration;

use lease_core::DynStore;
use lease_redis::redis;

use super::{Backend, Floor, Fut, PeerHeld, PeerLock};
use crate::proto::Imp;

pub(super) struct Redis;

/// lease-redis's URL option for its waiter queue.
const QUEUED_GRANTS: &str = "queued_grants=true";

/// `location` without lease-redis's own URL option, for the clients that are not our store (the
/// floor, the version query, rslock), so that they connect to the same server as it does.
fn server_url(location: &str) -> String {
    let Some((base, query)) = location.split_once('?') else {
        return location.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.starts_with("queued_grants="))
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

impl Backend for Redis {
    fn floor_operation(&self) -> &'static str {
        "EVALSHA of a one-line SET script"
    }

    fn queued_grants_option(&self) -> Option<&'static str> {
        Some(QUEUED_GRANTS)
    }

    fn floor<'a>(&'a self, location: &'a str, _store: &'a DynStore) -> Fut<'a, Box<dyn Floor>> {
        Box::pin(async move {
            let client = redis::Client::open(server_url(location))?;
            let conn = redis::aio::ConnectionManager::new(client).await?;
            let script = redis::Script::new("return redis.call('SET', KEYS[1], ARGV[1])");
            Ok(Box::new(Evalsha(conn, script)) as Box<dyn Floor>)
        })
    }

    fn fastest_floor<'a>(
        &'a self,
        location: &'a str,
    ) -> Option<(&'static str, Fut<'a, Box<dyn Floor>>)> {
        Some((
            "EVALSHA of a one-line SET script, dedicated blocking connection",
            Box::pin(async move {
                let client = redis::Client::open(server_url(location))?;
                let conn = client.get_connection()?;
                let script = redis::Script::new("return redis.call('SET', KEYS[1], ARGV[1])");
                Ok(
                    Box::new(BlockingEvalsha(std::sync::Mutex::new(conn), script))
                        as Box<dyn Floor>,
                )
            }),
        ))
    }

    fn version<'a>(&'a self, location: &'a str) -> Fut<'a, String> {
        Box::pin(async move {
            let client = redis::Client::open(server_url(location))?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await?;
            let v = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .unwrap_or("unknown");
            Ok(format!("Redis {}", v.trim()))
        })
    }

    fn peer(&self) -> Option<Imp> {
        Some(Imp::Rslock)
    }

    fn peer_lock<'a>(
        &'a self,
        location: &'a str,
        key: &'a str,
        lease_ms: Option<u64>,
    ) -> Fut<'a, Box<dyn PeerLock>> {
        Box::pin(async move {
            Ok(Box::new(Rslock {
                lm: rslock::LockManager::new(vec![server_url(location)]),
                resource: format!("bench-rslock:{key}").into_bytes(),
                ttl: Duration::from_millis(lease_ms.unwrap_or(10_000)),
            }) as Box<dyn PeerLock>)
        })
    }
}

/// The floor's connection and script.
struct Evalsha(redis::aio::ConnectionManager, redis::Script);

impl Floor for Evalsha {
    fn op<'a>(&'a self, key: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let mut conn = self.0.clone();
            let _: () = self
                .1
                .key(format!("bench-floor:{key}"))
                .arg(1)
                .invoke_async(&mut conn)
                .await?;
            Ok(())
        })
    }
}

/// The fastest floor: a connection of its own, written and read in place on the worker's one
/// thread (the worker does nothing else meanwhile), with no multiplexer task between the call
/// and the socket.
struct BlockingEvalsha(std::sync::Mutex<redis::Connection>, redis::Script);

impl Floor for BlockingEvalsha {
    fn op<'a>(&'a self, key: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let mut conn = self.0.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let _: () = self
                .1
                .key(format!("bench-floor:{key}"))
                .arg(1)
                .invoke(&mut *conn)?;
            Ok(())
        })
    }
}

/// `rslock`'s lock on one resource.
struct Rslock {
    lm: rslock::LockManager,
    resource: Vec<u8>,
    ttl: Duration,
}

impl PeerLock for Rslock {
    fn acquire(&self, timeout: Option<Duration>) -> Fut<'_, Option<PeerHeld>> {
        Box::pin(async move {
            let fut = self.lm.acquire_no_guard(&self.resource, self.ttl);
            let lock = match timeout {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r.map_err(|e| anyhow::anyhow!("rslock: {e:?}"))?,
                    Err(_) => return Ok(None),
                },
                None => fut.await.map_err(|e| anyhow::anyhow!("rslock: {e:?}"))?,
            };
            Ok(Some(PeerHeld(Box::new(lock))))
        })
    }

    fn release(&self, held: PeerHeld) -> Fut<'_, ()> {
        Box::pin(async move {
            let lock: rslock::Lock = held.downcast()?;
            self.lm.unlock(&lock).await;
            Ok(())
        })
    }
}
