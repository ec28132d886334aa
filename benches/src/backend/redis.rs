//! Redis: the floor is one EVALSHA of a one-line `SET` script on a multiplexed connection; the
//! peers are the `rslock` crate (Redlock over one server) and redis-py's `Lock` (Python, in
//! a process of its own). The harness's own server gets the
//! waiter queue (`?queued_grants=true`).

use std::time::Duration;

use anyhow::{Context as _, bail};
use lease_core::DynStore;
use lease_redis::redis;

use super::{Backend, Floor, Fut, PeerHeld, PeerLock, QUEUED_GRANTS};
use crate::proto::{Imp, Job};

/// The rslock release the bench is built with (pinned in Cargo.toml).
const RSLOCK_VERSION: &str = "0.7.0";

pub(super) struct Redis;

/// `location` as the clients that are not our store take it (the floor, the version query, the
/// peers): lease-redis's own URL options taken out, so that they connect to the same server as
/// it does.
fn server_url(location: &str) -> anyhow::Result<String> {
    lease_redis::RedisStore::builder(location)
        .connection_url()
        .map(str::to_owned)
        .context("a builder made from a URL has a connection URL")
}

/// The redis-py peer's worker, run as `python3 -c <script> <job>`.
const REDIS_PY: &str = include_str!("../../peers/redis_py.py");

/// The Python interpreters tried for the redis-py peer, in order: `LEASE_BENCH_PYTHON` if set,
/// the `python3` on `PATH`, then the system's (where Debian's `python3-redis` installs).
fn python_candidates() -> Vec<String> {
    let mut v: Vec<String> = std::env::var("LEASE_BENCH_PYTHON").into_iter().collect();
    v.extend(["python3".to_owned(), "/usr/bin/python3".to_owned()]);
    v
}

/// The first interpreter that imports `redis`, and redis-py's and Python's versions; asked once
/// per harness process.
fn redis_py() -> &'static Result<(String, String), String> {
    static FOUND: std::sync::OnceLock<Result<(String, String), String>> =
        std::sync::OnceLock::new();
    FOUND.get_or_init(|| {
        let probe = "import platform, redis; print(redis.__version__, platform.python_version())";
        let mut tried = Vec::new();
        for python in python_candidates() {
            let out = std::process::Command::new(&python)
                .args(["-c", probe])
                .stdin(std::process::Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    let text = String::from_utf8_lossy(&o.stdout);
                    let mut words = text.split_whitespace();
                    let redis = words.next().unwrap_or("unknown");
                    let py = words.next().unwrap_or("unknown");
                    return Ok((python, format!("redis-py {redis} (Python {py})")));
                }
                Ok(_) => tried.push(format!("{python}: no `redis` module")),
                Err(e) => tried.push(format!("{python}: {e}")),
            }
        }
        Err(format!(
            "no Python with the `redis` package ({}); install it (Debian: apt-get install \
             python3-redis) or name an interpreter in LEASE_BENCH_PYTHON",
            tried.join("; ")
        ))
    })
}

impl Backend for Redis {
    fn floor_operation(&self) -> &'static str {
        "EVALSHA of a one-line SET script"
    }

    fn queued_grants_options(&self) -> &'static [&'static str] {
        &[QUEUED_GRANTS]
    }

    fn floor<'a>(&'a self, location: &'a str, _store: &'a DynStore) -> Fut<'a, Box<dyn Floor>> {
        Box::pin(async move {
            let client = redis::Client::open(server_url(location)?)?;
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
                let client = redis::Client::open(server_url(location)?)?;
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
            let client = redis::Client::open(server_url(location)?)?;
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

    fn peers(&self) -> &'static [Imp] {
        &[Imp::Rslock, Imp::RedisPy]
    }

    fn peer_version(&self, peer: Imp) -> anyhow::Result<String> {
        match peer {
            Imp::Rslock => Ok(format!("rslock {RSLOCK_VERSION}")),
            Imp::RedisPy => match redis_py() {
                Ok((_, version)) => Ok(version.clone()),
                Err(e) => bail!("{e}"),
            },
            other => bail!("{} is no peer of Redis", other.name()),
        }
    }

    fn peer_process(&self, job: &Job) -> Option<anyhow::Result<tokio::process::Command>> {
        if job.imp != Imp::RedisPy {
            return None;
        }
        Some((|| {
            let python = match redis_py() {
                Ok((python, _)) => python,
                Err(e) => bail!("{e}"),
            };
            let mut job = job.clone();
            job.store.location = server_url(&job.store.location)?;
            let mut cmd = tokio::process::Command::new(python);
            cmd.arg("-c")
                .arg(REDIS_PY)
                .arg(serde_json::to_string(&job)?);
            Ok(cmd)
        })())
    }

    fn peer_lock<'a>(
        &'a self,
        location: &'a str,
        key: &'a str,
        lease_ms: Option<u64>,
    ) -> Fut<'a, Box<dyn PeerLock>> {
        Box::pin(async move {
            Ok(Box::new(Rslock {
                lm: rslock::LockManager::new(vec![server_url(location)?]),
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
