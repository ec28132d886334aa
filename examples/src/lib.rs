//! Shared pieces of the example programs: opening a store from a URL, the fleet's job table
//! (whose writes are fenced), and the fleet's chaos mode: its nemesis schedule, the histories its
//! workers write, the checker that reads them, and the deliberately broken locks that prove the
//! checker can fail.

// The root README's usage example runs as a doc test here, where every crate it names is a
// dependency.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

pub mod broken;
pub mod check;
pub mod history;
pub mod jobs;
pub mod nemesis;
pub mod slow;
pub mod stats;

use lease_core::DynStore;

/// Opens the store a URL names: `sqlite://PATH` (or a plain path), and with the matching cargo
/// features `redis://…` / `rediss://…` and `etcd://…`.
///
/// # Errors
///
/// An unknown scheme, a scheme whose feature is not built, or the store's own error.
pub async fn open_store(url: &str) -> anyhow::Result<DynStore> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("sqlite") | None => Ok(DynStore::new(open_sqlite(url).await?)),
        Some("redis" | "rediss") => open_redis(url).await,
        Some("etcd") => open_etcd(url).await,
        Some(other) => anyhow::bail!(
            "unknown store scheme `{other}://` in `{}`: use sqlite://PATH, redis://HOST:PORT or \
             etcd://HOST:PORT",
            redact(url)
        ),
    }
}

async fn open_sqlite(url: &str) -> anyhow::Result<lease_sqlite::SqliteStore> {
    let store = if url.contains("://") {
        lease_sqlite::SqliteStore::from_url(url).await?
    } else {
        lease_sqlite::SqliteStore::open(url).await?
    };
    Ok(store)
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str) -> anyhow::Result<DynStore> {
    Ok(DynStore::new(lease_redis::RedisStore::connect(url).await?))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(url: &str) -> anyhow::Result<DynStore> {
    anyhow::bail!(
        "`{}` needs the Redis store: build with `--features redis`",
        redact(url)
    )
}

#[cfg(feature = "etcd")]
async fn open_etcd(url: &str) -> anyhow::Result<DynStore> {
    Ok(DynStore::new(lease_etcd::EtcdStore::connect(url).await?))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(url: &str) -> anyhow::Result<DynStore> {
    anyhow::bail!(
        "`{}` needs the etcd store: build with `--features etcd`",
        redact(url)
    )
}

pub use lease_core::redact_url as redact;

/// The directory a run writes to: `dir`, created when missing, or else a new temporary
/// directory, removed when the returned guard is dropped.
///
/// # Errors
///
/// When the directory cannot be created (the message names it).
pub fn run_dir(
    dir: Option<&std::path::Path>,
) -> anyhow::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    use anyhow::Context;
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            Ok((d.to_owned(), None))
        }
        None => {
            let temp = tempfile::tempdir().context("create a temp dir")?;
            Ok((temp.path().to_owned(), Some(temp)))
        }
    }
}
