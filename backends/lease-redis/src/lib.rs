//! The Redis store for [lease-core](lease_core): lease locks whose grants, expiry and fences are
//! decided by one Redis server, for processes on any number of hosts that share it.
//!
//! ```no_run
//! use std::time::Duration;
//! use lease_core::CrossProcessLock;
//! use lease_redis::RedisStore;
//!
//! # async fn run() -> Result<(), lease_core::Error> {
//! let store = RedisStore::builder("redis://locker:secret@redis.internal:6379/")
//!     .prefix("myapp:")
//!     .connect()
//!     .await?;
//! let lock = CrossProcessLock::builder(store, "jobs/nightly")
//!     .lease(Duration::from_secs(5))
//!     .build()?;
//! let guard = lock.lock_timeout(Duration::from_secs(60)).await?;
//! // ... work, passing guard.fence() to every write of the protected resource ...
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # The protocol
//!
//! A lock key `k` is two Redis keys under the store's prefix `p`, sharing one hash tag:
//!
//! - the **lock hash** `p{k}:lock` (fields `h` = holder, `f` = fence), whose TTL (`PEXPIRE`) is
//!   the lease: it exists exactly while a lease is unexpired;
//! - the **fence counter** `p{k}:fence` (fields `f` = the last fence handed out, `h` = the
//!   holder of the current tenure, emptied by a release), which has no TTL and is never deleted.
//!
//! Inside the braces the key is written with `{`, `}` and `%` percent-encoded and every other
//! byte as it is (Redis keys are binary-safe, so NUL and non-ASCII keys work). The prefix may
//! not contain braces. So no user key can end the hash tag early, collide with, or prefix the
//! keys of another, and both keys of a lock always hash to the same Redis Cluster slot.
//!
//! Each operation is one Lua script (`EVALSHA`, reloaded on `NOSCRIPT`), so every
//! check-and-set is atomic in Redis:
//!
//! - *Acquire.* If the counter names this holder, the key is this holder's (live, or expired
//!   and untaken since): extend the lock hash's TTL (recreating it if it expired) and return the
//!   counter's fence, unchanged. This also makes a retry after a lost reply a success with the
//!   same fence. Else, if the lock hash exists, another holder's lease is live: refuse. Else
//!   increment the counter, name the holder in it, write the lock hash and return the new
//!   fence. A zero lease releases (below).
//! - *Renew* extends only if the counter names exactly this holder *and* fence.
//! - *Release* checks holder and fence the same way, empties the counter's holder (so the next
//!   grant, even to the same holder, gets a larger fence), deletes the lock hash, and publishes
//!   the key on the channel `p` + `released`.
//!
//! Expiry is decided by the Redis server's clock alone (key TTLs), never by a client's.
//!
//! *Waiting.* Each store holds one pub/sub subscription to its release channel, on a dedicated
//! connection, however many tasks wait. [`wait_for_change`](lease_core::LeaseStore::wait_for_change)
//! registers the waiter under its key in a map, and the subscription task wakes exactly the
//! waiters of a released key. Expiry is not announced (waiters poll with the lock's backoff), and
//! a message lost while the subscription reconnects costs latency only: `max_wait` bounds every
//! wait, and every waiter is woken once after a resubscription.
//!
//! *Renewing many keys.* All calls of a store share one multiplexed connection, which pipelines
//! concurrent calls: the heartbeats of many held keys cost about one round trip per burst, not
//! one per key. The store declares `batched_renewals`, so the lock sends the heartbeats of all
//! its keys with the same renew interval at the same instants: one burst per interval.
//! [`RedisStore::renew_many`] renews a batch in one explicit pipeline.
//!
//! # Guarantees and their limits
//!
//! - **One server.** The store talks to one Redis (a standalone server, or the primary of a
//!   replicated setup). It does not implement Redlock and gives no guarantee across independent
//!   masters. A failover to an asynchronous replica can lose the last grants: a key can then be
//!   granted twice, and fences can repeat.
//! - **Fences survive a restart only with `appendonly yes` and `appendfsync always`, and no
//!   failover.** With `everysec` or no AOF, a restart forgets recent or all counters.
//!   [`Capabilities::durable_fences`](lease_core::Capabilities::durable_fences) is therefore
//!   false unless you declare it with [`RedisStoreBuilder::assume_durable_fences`].
//! - **Fence regressions are detected, not silently reused** (within one store instance): the
//!   store remembers the highest fence it saw per key (up to [`MAX_TRACKED_KEYS`] keys), and a
//!   grant below it (or equal to it for another holder), or a counter below it on renew or
//!   release, fails with [`StoreErrorKind::FenceRegressed`](lease_core::StoreErrorKind::FenceRegressed),
//!   which the lock treats as a loss. A process that starts after the data loss cannot tell;
//!   fenced resources still refuse the repeated fences.
//! - **Efficiency lock versus correctness lock.** A lease cannot by itself exclude a holder that
//!   was paused past its lease. For correctness, pass the fence with every write and have the
//!   resource reject fences lower than the highest it accepted.
//! - Configure `maxmemory-policy noeviction` (or a `volatile-*` policy only if the server never
//!   runs out of memory): an evicted counter restarts a key's fences.
//!
//! # Fenced writes in Redis
//!
//! Data in the same Redis (and the same hash slot, if clustered: put it under the key's hash
//! tag) can be written only while the grant is current, in one script:
//!
//! ```text
//! -- KEYS[1] = store.fence_key(k), KEYS[2] = the data key; ARGV = holder, fence, value
//! local c = redis.call('HMGET', KEYS[1], 'h', 'f')
//! if c[1] ~= ARGV[1] or c[2] ~= ARGV[2] then return redis.error_reply('STALE fence') end
//! return redis.call('SET', KEYS[2], ARGV[3])
//! ```
//!
//! For data elsewhere, store the fence beside the data and compare it there
//! ([`lease_core::FenceGate`] and the recipes in lease-core).
//!
//! # Connecting
//!
//! URLs: `redis://[user[:password]@]host[:port][/db]`, `rediss://…` (TLS, feature `tls`),
//! `redis+unix:///path.sock?db=0&user=u&pass=p`. ACL users work through the URL; the user
//! needs the keys `~<prefix>*`, the channel `&<prefix>*`, and the commands `EVAL`, `EVALSHA`,
//! `SCRIPT LOAD`, `SUBSCRIBE`, `PUBLISH`, `PING` plus those the scripts run (`HMGET`, `HGET`,
//! `HSET`, `HINCRBY`, `PEXPIRE`, `EXISTS`, `DEL`). Refused credentials and permissions are
//! permanent errors that say so. Passwords never appear in `Debug` or `Display` output, errors
//! or logs ([`redact_url`]).
//!
//! The connection ([`redis::aio::ConnectionManager`]) reconnects by itself; calls fail with
//! transient errors meanwhile, and each call is bounded by the response timeout (1 s by
//! default), so a hung server costs a holder its lease by its deadline, never a hang.
//!
//! # Features
//!
//! - `tls`: `rediss://` URLs, through rustls with the system's root certificates.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod eviction;
mod keys;
mod notify;
mod scripts;
mod store;

pub use config::{DEFAULT_PREFIX, MAX_PREFIX_LEN, RedisStoreBuilder, redact_url};
pub use redis;
pub use store::{BrokenLock, MAX_LEASE_MS, MAX_TRACKED_KEYS, RedisStore};

/// The store's name in errors and capabilities.
const NAME: &str = "redis";
