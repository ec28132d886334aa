//! What lease-run tells the operator about the store before it runs anything: settings that
//! cannot keep its promise are refused, surprises are noted (on stderr, unless `-q`).

use leasehold::{DynStore, LeaseStore};

use crate::Failure;
use crate::cli::exit;

/// Refuses a store whose leases end with the process that holds them. A SQLite store with
/// `process_liveness=true` hands the key on the moment `lease-run` dies, but the command's group
/// is killed by its guard only after that (SIGKILL is delivered asynchronously), so the next
/// holder could start while the first command still runs.
pub(crate) fn refuse_unsafe(store: &DynStore) -> Result<(), Failure> {
    #[cfg(feature = "sqlite")]
    if store
        .downcast_ref::<leasehold::sqlite::SqliteStore>()
        .is_some_and(leasehold::sqlite::SqliteStore::process_liveness)
    {
        return Err(Failure(
            exit::USAGE,
            "the store's `process_liveness=true` frees the key the moment lease-run dies, before \
             its command's processes can be stopped; lease-run needs the lease to outlive it \
             while it stops them: remove process_liveness from the URL"
                .into(),
        ));
    }
    let _ = store;
    Ok(())
}

/// How long a look at the server's settings may take before lease-run goes on without it.
#[cfg(feature = "redis")]
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A note when the store's fences may start again after a restart of its server: a Redis
/// without an append-only file fsynced on every write loses the fence counters it had (or the
/// last second of them) in a restart, so fences handed out before are handed out again, and a
/// fenced resource that saw them rejects the new holders' writes.
pub(crate) async fn durability(store: &DynStore) -> Option<String> {
    if store.capabilities().durable_fences {
        return None;
    }
    #[cfg(feature = "redis")]
    if let Some(redis) = store.downcast_ref::<leasehold::redis::RedisStore>() {
        return redis_persistence(redis).await;
    }
    Some(format!(
        "the {} store's fences may not survive a restart of the store with its settings (see \
         its documentation): fences handed out before may be handed out again",
        store.capabilities().name
    ))
}

/// Reads `aof_enabled` (`INFO persistence`) and `appendfsync` (`CONFIG GET`, which an ACL may
/// refuse) from the Redis server.
#[cfg(feature = "redis")]
async fn redis_persistence(store: &leasehold::redis::RedisStore) -> Option<String> {
    use leasehold::redis::redis;
    let mut conn = store.connection();
    let info: String = tokio::time::timeout(
        PROBE_TIMEOUT,
        redis::cmd("INFO").arg("persistence").query_async(&mut conn),
    )
    .await
    .ok()?
    .ok()?;
    let aof = info
        .lines()
        .find_map(|l| l.strip_prefix("aof_enabled:"))
        .map(str::trim);
    let again = "fences it handed out before can be handed out again (and a fenced resource \
                 that saw them rejects the new holders' writes)";
    match aof {
        Some("1") => {
            let fsync: Option<Vec<String>> = tokio::time::timeout(
                PROBE_TIMEOUT,
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("appendfsync")
                    .query_async(&mut conn),
            )
            .await
            .ok()
            .and_then(Result::ok);
            match fsync.as_deref() {
                Some([_, policy]) if policy != "always" => Some(format!(
                    "the Redis server fsyncs its append-only file `{policy}`, not `always`: a \
                     crash of its host can lose its last writes, and then {again}"
                )),
                _ => None,
            }
        }
        Some(_) => Some(format!(
            "the Redis server keeps no append-only file (appendonly no): after a restart \
             {again}; run it with `appendonly yes` and `appendfsync always`"
        )),
        None => None,
    }
}
