//! The server's `maxmemory-policy`, read at connect time: which policies the store can be safe
//! under, and what it does about the others.
//!
//! The lease records have no TTL, so the `volatile-*` policies (which evict only keys with a
//! TTL) and `noeviction` never remove them. Under an `allkeys-*` policy Redis may evict any key
//! once `maxmemory` is reached, a live lease record too: its key would be granted to another
//! holder while the first still works, and its fence counter would start again at 1, handing
//! out fences a fenced resource has already seen. No key layout avoids that, so the store
//! refuses such a server unless told otherwise ([`RedisStoreBuilder::allow_allkeys_eviction`]).
//! The check runs whatever `maxmemory` is, since both can be changed at run time
//! (`CONFIG SET`); a later change is not noticed.
//!
//! [`RedisStoreBuilder::allow_allkeys_eviction`]: crate::RedisStoreBuilder::allow_allkeys_eviction

use std::collections::HashMap;

use lease_core::StoreError;
use redis::aio::ConnectionManager;
use tracing::{debug, warn};

use crate::NAME;
use crate::error::classify;

/// The policy as read at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EvictionPolicy {
    /// Read from `CONFIG GET maxmemory-policy` or `INFO memory`.
    Known(String),
    /// Neither command was allowed (ACL, renamed commands, a proxy).
    Unknown,
}

impl EvictionPolicy {
    pub(crate) fn name(&self) -> Option<&str> {
        match self {
            Self::Known(p) => Some(p),
            Self::Unknown => None,
        }
    }
}

/// Reads the server's eviction policy and refuses (a permanent error) an `allkeys-*` policy
/// unless `allow_allkeys`. A policy that cannot be read is logged as a warning, not an error:
/// ACL users often may not run `CONFIG` or `INFO`.
pub(crate) async fn check_eviction_policy(
    conn: &mut ConnectionManager,
    what: &str,
    allow_allkeys: bool,
) -> Result<EvictionPolicy, StoreError> {
    let policy = read_policy(conn, what).await?;
    match &policy {
        EvictionPolicy::Unknown => warn!(
            "the Redis eviction policy could not be read (neither `CONFIG GET maxmemory-policy` \
             nor `INFO memory` is allowed): make sure the server runs with `maxmemory-policy \
             noeviction` or a volatile-* policy; under allkeys-* Redis can evict live leases and \
             their fences"
        ),
        EvictionPolicy::Known(p) if p.starts_with("allkeys-") => {
            if !allow_allkeys {
                return Err(StoreError::permanent(
                    NAME,
                    format!(
                        "{what}: the server's `maxmemory-policy` is `{p}`, under which Redis \
                         evicts any key when memory runs out, live lease records and their \
                         fence counters too (a held key would be granted again and fences \
                         would repeat). Set `maxmemory-policy noeviction` (or a volatile-* \
                         policy: the lease records have no TTL) on the server, or accept the \
                         risk with RedisStoreBuilder::allow_allkeys_eviction(true)"
                    ),
                ));
            }
            warn!(
                policy = %p,
                "the Redis server may evict lease records (maxmemory-policy {p}): a held key can \
                 be granted twice and fences can repeat once memory runs out"
            );
        }
        EvictionPolicy::Known(p) if p == "noeviction" || p.starts_with("volatile-") => {
            debug!(policy = %p, "Redis eviction policy cannot evict lease records");
        }
        EvictionPolicy::Known(p) => warn!(
            policy = %p,
            "unknown Redis eviction policy: if it can evict keys without a TTL, live leases and \
             their fences can be lost"
        ),
    }
    Ok(policy)
}

async fn read_policy(
    conn: &mut ConnectionManager,
    what: &str,
) -> Result<EvictionPolicy, StoreError> {
    // A map in RESP3, pairs in RESP2: both parse as a map.
    let config: redis::RedisResult<HashMap<String, String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    match config {
        Ok(map) => {
            if let Some(p) = map.get("maxmemory-policy") {
                return Ok(EvictionPolicy::Known(p.to_ascii_lowercase()));
            }
        }
        Err(e) if is_connection_error(&e) => return Err(classify(what, e)),
        Err(e) => debug!(error = %e, "CONFIG GET maxmemory-policy refused, trying INFO"),
    }
    let info: redis::RedisResult<String> = redis::cmd("INFO").arg("memory").query_async(conn).await;
    match info {
        Ok(text) => Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("maxmemory_policy:"))
            .map_or(EvictionPolicy::Unknown, |p| {
                EvictionPolicy::Known(p.trim().to_ascii_lowercase())
            })),
        Err(e) if is_connection_error(&e) => Err(classify(what, e)),
        Err(e) => {
            debug!(error = %e, "INFO memory refused");
            Ok(EvictionPolicy::Unknown)
        }
    }
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}
