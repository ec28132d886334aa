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
//! A lock key `k` is one Redis hash under the store's prefix `p`, the **lease record**
//! `p{k}:v2` ([`RedisStore::lock_key`]), with **no TTL**:
//!
//! - `h`: the holder of the current tenure (empty once released or broken);
//! - `f`: the last fence handed out for `k` (the fence counter);
//! - `e`: the lease's expiry, in milliseconds of the **Redis server's clock** (`TIME`).
//!
//! A lease is live while `e` is in the future by the server's clock; the key is vacant when
//! the record names nobody or its lease has expired. Vacancy is never decided by whether a key
//! exists, so neither Redis's key expiry nor eviction (under the policies the store accepts,
//! below) can free a held key. The record is never deleted: a key ever locked keeps one small
//! hash.
//!
//! Inside the braces the key is written with `{`, `}` and `%` percent-encoded and every other
//! byte as it is (Redis keys are binary-safe, so NUL and non-ASCII keys work). The prefix may
//! not contain braces. So no user key can end the hash tag early, collide with, or prefix the
//! keys of another, and every key of a lock hashes to one Redis Cluster slot.
//!
//! Each operation is one Lua script (`EVALSHA`, reloaded on `NOSCRIPT`) that reads `TIME`
//! itself, so every check-and-set, and the clock it is checked against, is atomic in Redis:
//!
//! - *Acquire.* If the record names this holder, the key is this holder's (live, or expired
//!   and untaken since): set `e` to now + lease and return the fence, unchanged. This also makes
//!   a retry after a lost reply a success with the same fence. Else, if the record names
//!   another holder whose `e` is in the future, refuse. Else increment `f`, name the holder, set
//!   `e`, and return the new fence. A zero lease releases (below).
//! - *Renew* extends only if the record names exactly this holder *and* fence **and its lease is
//!   still live** by the server's clock. A renewal that reaches Redis after the lease lapsed
//!   (delayed in the network, queued while Redis was paused) changes nothing and answers
//!   `false`: its holder's deadline has passed, and it was told it lost. A lapsed lease is
//!   retaken only by an explicit acquisition (`try_lock`), which keeps the fence if nobody took
//!   the key in between.
//! - *Release* checks holder and fence the same way, empties `h` (so the next grant, even to
//!   the same holder, gets a larger fence), and publishes the key on the channel `p` +
//!   `released`.
//! - *Break* ([`break_lock`](lease_core::LeaseStore::break_lock), for operators): raises `f` by
//!   one and empties `h`, whoever holds the key, and publishes. See
//!   [Inspecting and breaking a lock](#inspecting-and-breaking-a-lock).
//! - *Inspect* ([`inspect`](lease_core::LeaseStore::inspect)): reads `h`, `f` and `e` with
//!   `TIME`, writes nothing.
//!
//! *Waiting.* Each store holds one pub/sub subscription to its release channel, on a dedicated
//! connection, however many tasks wait. [`wait_for_change`](lease_core::LeaseStore::wait_for_change)
//! registers the waiter under its key in a map, and the subscription task wakes exactly the
//! waiters of a released (or broken) key. Expiry is not announced (it is not an event in Redis:
//! nothing happens when `e` passes), so waiters on a lease that lapses find out by polling with
//! the lock's backoff, as before; a message lost while the subscription reconnects costs
//! latency only: `max_wait` bounds every wait, and every waiter is woken once after a
//! resubscription.
//!
//! *Queued grants* ([`RedisStoreBuilder::queued_grants`], **on by default**: in one bench run,
//! 8 processes × 1 ms holds on one key did 620/s queued against 500/s barging, and 3,242/s
//! against 2,074/s with no hold, with a handoff flat in the number of waiters and Jain's index
//! 1.000; see `benches/README.md`). Without them,
//! every release wakes every waiter and all of them race for the key (the releasing process,
//! looping straight back, often wins). With them, each key has a queue of waiters in Redis,
//! under the key's hash tag, and a release hands the key over in the same script:
//!
//! - `p{k}:q`, a list of waiters (holder strings), oldest first; `p{k}:d`, a sorted set holder →
//!   liveness deadline in milliseconds of the server's `TIME`; `p{k}:w`, a hash holder →
//!   `"<lease ms> <grant channel>"`. None has a TTL; they vanish with their last entry.
//! - *Enqueue / acquire* (the lock's waiting calls, [`enqueue`](lease_core::LeaseStore::enqueue))
//!   grants the key as acquire does when it is free and no live waiter is ahead; otherwise it
//!   adds the holder at the tail, or refreshes its entry in place (deadline = `TIME` +
//!   patience, lease and channel stored), and answers `Waiting` with the key's current fence.
//! - *Release*, a zero-lease `try_lock`, and *leave the queue* of a waiter that was granted
//!   meanwhile: drop dead entries at the head, grant the oldest live waiter (fence + 1, the
//!   lease it asked for, from `TIME`), delete its entry, and `PUBLISH` `<fence>:<waiter id>` on
//!   its store's grant channel `p` + `grant:<store id>`; with no live waiter, announce the key
//!   free as before. A plain `try_lock` (or `enqueue`) that finds the lease expired does the
//!   same for the head, so an expiry is handed on by whoever calls next (the waiters poll with
//!   `enqueue` at least every backoff cap); and it grants nobody else while a live waiter is
//!   queued (no barging, the releasing holder included).
//! - *Waiting for the grant.* Each store subscribes to its grant channel once, on the
//!   subscription connection it uses for releases.
//!   [`wait_for_grant`](lease_core::LeaseStore::wait_for_grant) returns the fence from the
//!   grant message for its (key, holder), which the lock takes without another round trip, so
//!   a handoff costs the release's round trip plus one publish. As for releases, `enqueue`
//!   marks its waiter watched before it sends the script, so a grant announced before the wait
//!   starts is kept for it; after a lost subscription every waiter returns `None` and
//!   re-reads the record with `enqueue`. A lost message costs latency, never safety: the record
//!   is the truth.
//! - *What a crash leaves.* A waiter that died stops refreshing its entry; it is skipped and
//!   deleted once its deadline passed and it reached the head. A grant made to it lapses with
//!   its lease and goes to the next waiter. [`RedisStore::waiters`] lists a key's live waiters.
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
//!   granted twice, and fences can repeat (each store reports a fence it sees go back as
//!   [`FenceRegressed`](lease_core::StoreErrorKind::FenceRegressed), never as a grant).
//!   [`RedisStoreBuilder::wait_for_replicas`] (URL `?wait_replicas=N`) closes that gap for
//!   failovers to a replica that acknowledged: every write is reported only once `N` replicas
//!   have it (`WAIT`), so no grant, renewal or hand-over a holder was told of is lost. It costs
//!   a second round trip and the replica's acknowledgement per write: an acquire plus release
//!   on loopback took 1.59 ms against 0.81 ms without it (p50, one replica, a debug build on a
//!   loaded 2-core machine: `cargo test -p lease-redis --all-features --test replicas cost --
//!   --ignored --nocapture`).
//! - **Expiry follows the Redis host's wall clock.** `TIME` is the server's `CLOCK_REALTIME`,
//!   the clock Redis's own key expiry uses too. A forward step on the Redis host (a manual
//!   `date`, an NTP step) expires every lease at once: another holder can be granted a key whose
//!   holder still believes its lease valid (its local deadline is on its own monotonic clock);
//!   fences still order them. A backward step makes leases last that much longer (a crashed
//!   holder's key stays blocked longer). Run the Redis host with a clock that slews rather than
//!   steps (chrony or ntpd, stepping only at boot). The clocks of the client hosts play no part.
//!   After a failover the new primary's clock decides the expiries the old one wrote (scripts
//!   are replicated by their effects, so replicas store the primary's absolute expiry).
//! - **Eviction.** Under `maxmemory-policy noeviction` or any `volatile-*` policy the records
//!   (which have no TTL) are never evicted; once memory is full, Redis refuses the scripts'
//!   writes (`OOM`, a transient error here): holders lose their leases by their local deadline,
//!   no key is granted twice. Under an `allkeys-*` policy Redis may evict any key, a live record
//!   with its fence counter too: a held key would be granted again and fences would restart at 1.
//!   No layout can prevent that, so [`connect`](RedisStoreBuilder::connect) reads the policy
//!   (`CONFIG GET maxmemory-policy`, else `INFO memory`) and **refuses `allkeys-*`** with a
//!   permanent error naming the policy, unless
//!   [`allow_allkeys_eviction(true)`](RedisStoreBuilder::allow_allkeys_eviction) (then it
//!   logs a warning). If the ACL allows neither command, the store connects and logs a warning:
//!   checking the policy is then up to you. The policy is read once per store, at connect time;
//!   a later `CONFIG SET maxmemory-policy` is not noticed ([`RedisStore::eviction_policy`] shows
//!   what was read).
//! - **Fences survive a restart only with `appendonly yes` and `appendfsync always`, and no
//!   failover.** With `everysec` or no AOF, a restart forgets recent or all records.
//!   [`Capabilities::durable_fences`](lease_core::Capabilities::durable_fences) is therefore
//!   false unless you declare it with [`RedisStoreBuilder::assume_durable_fences`].
//! - **Fence regressions are detected, not silently reused** (within one store instance): the
//!   store remembers the highest fence it saw per key (of the [`MAX_TRACKED_KEYS`] keys granted
//!   most recently: a long-running process stays at a bounded size), and a
//!   grant below it (or equal to it for another holder), or a counter below it on renew or
//!   release, fails with [`StoreErrorKind::FenceRegressed`](lease_core::StoreErrorKind::FenceRegressed),
//!   which the lock treats as a loss. A process that starts after the data loss cannot tell;
//!   fenced resources still refuse the repeated fences.
//! - **Efficiency lock versus correctness lock.** A lease cannot by itself exclude a holder that
//!   was paused past its lease. For correctness, pass the fence with every write and have the
//!   resource reject fences lower than the highest it accepted.
//!
//! # Inspecting and breaking a lock
//!
//! [`inspect`](lease_core::LeaseStore::inspect) runs one read-only script: the record's holder
//! and fence, and the time left (`e` minus `TIME`, in milliseconds of the server's clock). A key
//! is shown held exactly when an acquisition would be refused: the record names a holder whose
//! `e` is in the future (or, for a key without a record yet, a layout-1 `:lock` key exists, with
//! its `PTTL` as the time left). Free keys show `f`, the last fence handed out; a key that was
//! never granted shows no fence. Like the other calls, a counter below a fence this store saw
//! is a [`FenceRegressed`](lease_core::StoreErrorKind::FenceRegressed) error.
//!
//! To take a key from a holder that is stuck (alive but not working), call
//! [`break_lock`](lease_core::LeaseStore::break_lock): it raises the key's fence by one, frees the
//! key and wakes its waiters, in one script, and returns a [`BrokenLock`] (the raised fence, the
//! holder the record named, and whether its lease was live). The raised fence belongs to nobody:
//! hand it to the protected resource as its new minimum and the old holder's writes are refused
//! at once; the old holder's next renewal fails (it compares holder and fence) and its lock
//! reports the loss; the next grant gets a higher fence. The `redis-cli` equivalent:
//!
//! ```text
//! redis-cli EVAL "if redis.call('HEXISTS', KEYS[1], 'f') == 0 then return nil end
//!   redis.call('HSET', KEYS[1], 'h', '', 'e', '0')
//!   return redis.call('HINCRBY', KEYS[1], 'f', 1)" 1 'lease:{jobs/nightly}:v2'
//! ```
//!
//! (with the record's key from [`RedisStore::lock_key`]; unlike the store's script it neither
//! seeds a record from a layout-1 counter nor wakes waiters).
//!
//! Never `DEL` a record: the fence counter is in it, so the key's fences would start again at 1
//! (stores that saw the old fences report a
//! [`FenceRegressed`](lease_core::StoreErrorKind::FenceRegressed); a holder's renewal does not
//! write the record back).
//!
//! # Upgrading from layout 1
//!
//! Versions before the `:v2` records kept a key in `p{k}:lock` (holder and fence, with the lease
//! as its TTL, hence evictable) and a counter `p{k}:fence`. The `:v2` suffix is the layout
//! version, so the two never share a key. On the first grant of a key without a `:v2` record,
//! the acquire script honours a live layout-1 lease (its `:lock` key exists: refused until it
//! lapses) and starts the record's counter from the layout-1 counter, so fences keep increasing
//! across the upgrade. From then on the layout-1 keys are not read (nor changed, nor deleted).
//! **Stop every process of the old version before starting this one**: an old process does not
//! see `:v2` records and would grant a key held under layout 2. Once every key in use has a
//! `:v2` record the layout-1 keys can be deleted.
//!
//! # Fenced writes in Redis
//!
//! Data in the same Redis (and the same hash slot, if clustered: put it under the key's hash
//! tag) can be written only while the grant is current, in one script:
//!
//! ```text
//! -- KEYS[1] = store.lock_key(k), KEYS[2] = the data key; ARGV = holder, fence, value
//! local r = redis.call('HMGET', KEYS[1], 'h', 'f')
//! if r[1] ~= ARGV[1] or r[2] ~= ARGV[2] then return redis.error_reply('STALE fence') end
//! return redis.call('SET', KEYS[2], ARGV[3])
//! ```
//!
//! (This accepts the writes of a tenure whose lease expired if nobody has taken the key since:
//! no other holder can have written meanwhile. To refuse them too, also compare `e` with
//! `TIME`.) For data elsewhere, store the fence beside the data and compare it there
//! ([`lease_core::FenceGate`] and the recipes in lease-core).
//!
//! # Connecting
//!
//! URLs: `redis://[user[:password]@]host[:port][/db]`, `rediss://…` (TLS, feature `tls`),
//! `redis+unix:///path.sock?db=0&user=u&pass=p`. ACL users work through the URL; the user
//! needs the keys `~<prefix>*`, the channel `&<prefix>*`, and the commands `EVAL`, `EVALSHA`,
//! `SCRIPT LOAD`, `SUBSCRIBE`, `PUBLISH`, `PING` plus those the scripts run (`HMGET`, `HGET`,
//! `HSET`, `HINCRBY`, `EXISTS`, `TIME`; `PTTL` too, to inspect keys still under layout 1; with
//! queued grants also `LINDEX`, `LPOP`, `RPUSH`, `LREM`, `LRANGE`, `ZSCORE`, `ZADD`, `ZREM`,
//! `HDEL`).
//! To let the store check the eviction policy, also
//! allow `CONFIG GET` (`+config|get`) or `INFO`; without them it warns (see above). Refused
//! credentials and permissions are permanent errors that say so. Passwords never appear in `Debug` or `Display` output, errors
//! or logs ([`redact_url`](lease_core::redact::redact_url)).
//!
//! The connection ([`redis::aio::ConnectionManager`]) reconnects by itself; calls fail with
//! transient errors meanwhile, and each call is bounded by the response timeout (1 s by
//! default), so a hung server costs a holder its lease by its deadline, never a hang.
//!
//! # Features
//!
//! - `tls`: `rediss://` URLs, through rustls with the system's root certificates. rustls needs a
//!   process-wide crypto provider, which the application installs
//!   (`rustls::crypto::ring::default_provider().install_default()`, or aws-lc-rs's); until then a
//!   TLS URL is refused with an invalid-input error that says so.
//! - `tls-ring`: `tls`, and the store installs ring as that provider when none is installed.
//!   Meant for applications; a library depending on this one should leave it off.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod eviction;
mod keys;
mod notify;
mod scripts;
mod store;

pub use config::{DEFAULT_PREFIX, MAX_PREFIX_LEN, RedisStoreBuilder};
/// What [`break_lock`](lease_core::LeaseStore::break_lock) reports; the shared type of
/// lease-core, re-exported under its old name here.
pub use lease_core::BrokenLock;
pub use redis;
pub use store::{MAX_LEASE_MS, MAX_TRACKED_KEYS, RedisStore};

/// The store's name in errors and capabilities.
const NAME: &str = "redis";
