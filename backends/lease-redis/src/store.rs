//! [`RedisStore`]: the [`LeaseStore`] over one Redis server.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lease_core::input::{validate, validate_key};
use lease_core::seen::{SeenFence as Seen, SeenFences};
use lease_core::{
    BrokenLock, Capabilities, Enqueued, Fence, KeyState, LeaseStore, StoreError, StoreErrorKind,
};
use redis::ScriptInvocation;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::{debug, warn};

use crate::NAME;
use crate::config::{RedisStoreBuilder, Source};
use crate::error::{bad_reply, classify};
use crate::eviction::{EvictionPolicy, check_eviction_policy};
use crate::keys::{Keys, grant_channel, keys, queue_keys, release_channel};
use crate::notify::Notifier;
use crate::scripts::{
    ACQUIRE, ACQUIRE_Q, BREAK, INSPECT, LEAVE_Q, RELEASE, RELEASE_Q, RENEW, WAITERS_Q,
};

/// The longest lease the store grants, in milliseconds (about 34 years); longer ones are capped.
pub const MAX_LEASE_MS: u64 = 1 << 40;

/// How many keys' highest fences a store remembers for regression checks: the ones granted most
/// recently (see [`lease_core::seen`]); a key forgotten loses its check.
pub use lease_core::seen::MAX_TRACKED_KEYS;

/// A lease store on one Redis server (or one primary): grants are Lua scripts, fences come from a
/// per-key counter, releases are announced over pub/sub. See the [crate docs](crate) for the
/// protocol and its guarantees.
///
/// Cheap to clone: clones share the connection, the subscription and the fence memory. The
/// connection reconnects by itself; calls made while it is down fail with transient errors.
///
/// `Debug` and `Display` show the server without its password.
///
/// The subscription task and the connection's driver run on the tokio runtime that called
/// [`connect`](RedisStoreBuilder::connect); use the store within that runtime.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    prefix: Vec<u8>,
    prefix_shown: String,
    channel: Vec<u8>,
    /// This store's grant channel: `Some` exactly when it has queued grants.
    grant_channel: Option<Vec<u8>>,
    target: String,
    caps: Capabilities,
    /// The highest fence this store has seen granted per key (bounded).
    seen: SeenFences,
    notifier: Option<Notifier>,
    eviction_policy: EvictionPolicy,
    /// Replicas every write must reach before it is reported, and how long to wait for them.
    wait_replicas: Option<(u32, Duration)>,
}

impl RedisStore {
    /// Connects to the server at `url` with default settings; see [`RedisStore::builder`].
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A builder for the server at `url`:
    ///
    /// - `redis://[user[:password]@]host[:port][/db]`, e.g. `redis://127.0.0.1:6379/0` or
    ///   `redis://locker:secret@redis.internal/` (an ACL user) or `redis://:secret@host/`
    ///   (`requirepass`);
    /// - `rediss://…`: the same over TLS (feature `tls`), verifying the server against the
    ///   system's roots (for a private CA, build a client with
    ///   [`redis::Client::build_with_tls`] and use [`RedisStore::builder_with_client`]);
    /// - `redis+unix:///path/to/redis.sock?db=0&user=u&pass=p`: a Unix socket;
    /// - any of these with `?queued_grants=true` (or `&queued_grants=true` after other options):
    ///   [`queued_grants(true)`](RedisStoreBuilder::queued_grants).
    ///
    /// Percent-encode reserved characters in user and password (`%40` for `@`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Source::Url(url.into()))
    }

    /// A builder for an existing client (its connection settings, TLS and credentials are used
    /// as they are).
    pub fn builder_with_client(client: redis::Client) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Source::Client(Box::new(client)))
    }

    pub(crate) async fn connect_with(b: RedisStoreBuilder) -> Result<Self, StoreError> {
        let target = b.display_target();
        let result = Self::try_connect(b).await;
        if let Err(e) = &result {
            debug!(server = %target, error = %e, "redis store did not connect");
        }
        result
    }

    async fn try_connect(b: RedisStoreBuilder) -> Result<Self, StoreError> {
        b.validate()?;
        #[cfg(feature = "tls")]
        if b.uses_tls() {
            crypto_provider()?;
        }
        let client = b.client()?;
        let target = b.display_target();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(b.connect_timeout))
            .set_response_timeout(Some(b.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let what = format!("connecting to {target}");
        // One attempt plus one retry, each bounded by the connect timeout; the outer bound is a
        // backstop so that connect never hangs.
        let budget = b.connect_timeout * 2 + Duration::from_secs(1);
        let mut conn = match tokio::time::timeout(
            budget,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(classify(&what, e)),
            Err(_) => {
                return Err(StoreError::transient(
                    NAME,
                    format!("{what}: no connection within {budget:?}"),
                ));
            }
        };
        let eviction_policy =
            check_eviction_policy(&mut conn, &what, b.allow_allkeys_eviction).await?;
        // Loading the scripts checks the server answers and the user may run them.
        let queued_scripts = [&*ACQUIRE_Q, &*RELEASE_Q, &*LEAVE_Q, &*WAITERS_Q];
        let plain_scripts = [&*ACQUIRE, &*RENEW, &*RELEASE, &*BREAK, &*INSPECT];
        let queued = if b.queued_grants {
            &queued_scripts[..]
        } else {
            &[]
        };
        for script in plain_scripts.iter().chain(queued) {
            script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(|e| classify(&what, e))?;
        }
        let prefix = b.prefix.as_bytes().to_vec();
        let channel = release_channel(&prefix);
        let grant_channel = b.queued_grants.then(|| grant_channel(&prefix, &store_id()));
        let notifier = if b.notifications {
            let notifier = Notifier::start(
                client,
                channel.clone(),
                grant_channel.clone(),
                b.connect_timeout,
            )
            .await?;
            // redis-rs reports a SUBSCRIBE refused by the ACL as success, so check with an empty
            // announcement (no key is empty and no grant message is, so it wakes nobody): the
            // ACL must let this user publish on the channels, and our own subscription must be
            // among the receivers.
            for (c, name) in std::iter::once((&channel, "release"))
                .chain(grant_channel.as_ref().map(|c| (c, "grant")))
            {
                let receivers: i64 = redis::cmd("PUBLISH")
                    .arg(c)
                    .arg("")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| classify(&what, e))?;
                if receivers < 1 {
                    return Err(StoreError::permanent(
                        NAME,
                        format!(
                            "{what}: the subscription to the {name} channel `{}` did not take \
                             effect; if the Redis ACL user lacks a permission, grant it the \
                             channel `&{}*`",
                            String::from_utf8_lossy(c),
                            b.prefix
                        ),
                    ));
                }
            }
            Some(notifier)
        } else {
            None
        };
        let caps = Capabilities::new(NAME)
            .with_notifications(notifier.is_some())
            .with_durable_fences(b.durable_fences)
            .with_batched_renewals(true)
            .with_queued_grants(b.queued_grants);
        debug!(server = %target, prefix = %b.prefix, "redis store connected");
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                prefix,
                prefix_shown: b.prefix,
                channel,
                grant_channel,
                target,
                caps,
                seen: SeenFences::default(),
                notifier,
                eviction_policy,
                wait_replicas: b.wait_replicas,
            }),
        })
    }

    /// The Redis key of `key`'s lease record: a hash with no TTL, fields `h` = holder (empty
    /// while the key is free), `f` = the last fence handed out, `e` = the lease's expiry in
    /// milliseconds of the Redis server's clock (`TIME`). For fenced writes in Lua (see the
    /// crate docs); to read it, use [`inspect`](LeaseStore::inspect).
    ///
    /// Never delete it: the fence counter is in it, so a deleted record starts the key's fences
    /// again at 1. To take a key away from its holder, use
    /// [`break_lock`](LeaseStore::break_lock).
    pub fn lock_key(&self, key: &str) -> Vec<u8> {
        keys(&self.inner.prefix, key).record
    }

    /// The live waiters queued on `key`, oldest first, as the store's record shows them now (a
    /// store with [queued grants](RedisStoreBuilder::queued_grants); empty otherwise). Entries
    /// whose patience ran out are left out. Read-only; for operators, dashboards and tests.
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](StoreErrorKind::InvalidInput) for an empty or over-long key, otherwise
    /// classified as for the other calls.
    pub async fn waiters(&self, key: &str) -> Result<Vec<String>, StoreError> {
        validate_key(NAME, key)?;
        if self.inner.grant_channel.is_none() {
            return Ok(Vec::new());
        }
        let q = queue_keys(&self.inner.prefix, key);
        WAITERS_Q
            .key(keys(&self.inner.prefix, key).record)
            .key(q.queue)
            .key(q.deadlines)
            .key(q.waiters)
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| classify(&format!("waiters of {key:?}"), e))
    }

    /// The server's `maxmemory-policy` as the store read it at connect time (`CONFIG GET`, or
    /// `INFO memory` where the ACL refuses `CONFIG`), or `None` if neither was allowed.
    pub fn eviction_policy(&self) -> Option<&str> {
        self.inner.eviction_policy.name()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix_shown
    }

    /// The store's connection (multiplexed, reconnecting), for the caller's own commands such
    /// as fenced writes.
    pub fn connection(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Renews many leases in one round trip (one pipeline of renew scripts), each exactly as
    /// [`LeaseStore::renew`] would. Results come in the order of `leases`.
    ///
    /// Concurrent [`renew`](LeaseStore::renew) calls are pipelined on the one connection too; this
    /// is for callers that renew many keys on one schedule themselves.
    ///
    /// # Errors
    ///
    /// Invalid input of any entry fails the whole call before anything is sent; a connection
    /// failure fails it as a whole (transient). A fence regression is reported per entry.
    pub async fn renew_many(
        &self,
        lease: Duration,
        leases: &[(&str, &str, Fence)],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        for (key, holder, _) in leases {
            validate(NAME, key, holder)?;
        }
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ms = lease_ms(lease);
        let before: Vec<Option<Seen>> = leases.iter().map(|(k, _, _)| self.snapshot(k)).collect();
        let mut pipe = redis::pipe();
        for (key, holder, fence) in leases {
            pipe.cmd("EVALSHA")
                .arg(RENEW.get_hash())
                .arg(1)
                .arg(keys(&self.inner.prefix, key).record)
                .arg(*holder)
                .arg(fence.get())
                .arg(ms);
        }
        let what = format!("renewing {} leases", leases.len());
        let mut conn = self.inner.conn.clone();
        let replies: Vec<(i64, Option<String>)> = match pipe.query_async(&mut conn).await {
            Ok(r) => r,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // The server lost its script cache (a restart): load and send again; a renew is
                // idempotent, and a NOSCRIPT reply means that script did not run.
                RENEW
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await
                    .map_err(|e| classify(&what, e))?;
                pipe.query_async(&mut conn)
                    .await
                    .map_err(|e| classify(&what, e))?
            }
            Err(e) => return Err(classify(&what, e)),
        };
        if replies.len() != leases.len() {
            return Err(bad_reply(&what, "reply count differs from request count"));
        }
        let outcomes: Vec<_> = leases
            .iter()
            .zip(replies)
            .zip(before)
            .map(|(((key, holder, fence), (status, counter)), before)| {
                self.renew_outcome(key, holder, *fence, status, counter, before)
            })
            .collect();
        if outcomes.iter().any(|o| matches!(o, Ok(true))) {
            self.replicated(&what).await?;
        }
        Ok(outcomes)
    }

    fn renew_outcome(
        &self,
        key: &str,
        holder: &str,
        fence: Fence,
        status: i64,
        counter: Option<String>,
        before: Option<Seen>,
    ) -> Result<bool, StoreError> {
        let what = || format!("renew of {key:?}");
        let counter = parse_counter(&what(), counter)?;
        match status {
            1 => {
                if counter != Some(fence.get()) {
                    return Err(bad_reply(&what(), "renewed under a different fence"));
                }
                self.check_grant(key, Some(holder), fence.get(), before)?;
                Ok(true)
            }
            0 => {
                self.check_counter(key, counter, before)?;
                Ok(false)
            }
            s => Err(bad_reply(&what(), format!("status {s}"))),
        }
    }

    /// What this store has seen of `key` so far; taken before a request is sent, so that the
    /// reply is compared only with grants the server made before it ran the request (see
    /// [`SeenFences`]).
    fn snapshot(&self, key: &str) -> Option<Seen> {
        self.inner.seen.before(key)
    }

    /// Fails if a grant (or renewal) of `fence` to `holder` (`None`: a break) contradicts
    /// `before`: a lower fence, or the same fence for another holder. Otherwise records it.
    fn check_grant(
        &self,
        key: &str,
        holder: Option<&str>,
        fence: u64,
        before: Option<Seen>,
    ) -> Result<(), StoreError> {
        self.inner
            .seen
            .granted(key, holder, fence, before)
            .map_err(|w| self.regressed(key, w.seen, w.now))
    }

    /// Fails if `key`'s counter, as a request saw it, is below the fence seen before it was sent.
    fn check_counter(
        &self,
        key: &str,
        counter: Option<u64>,
        before: Option<Seen>,
    ) -> Result<(), StoreError> {
        self.inner
            .seen
            .current(before, counter)
            .map_err(|w| self.regressed(key, w.seen, w.now))
    }

    fn regressed(&self, key: &str, before: u64, now: Option<u64>) -> StoreError {
        let now = now.map_or_else(
            || "nothing (the counter is gone)".to_owned(),
            |f| f.to_string(),
        );
        warn!(key, before, now = %now, server = %self.inner.target, "fence regression");
        StoreError::new(
            StoreErrorKind::FenceRegressed,
            NAME,
            format!(
                "the fence of {key:?} went back: this store saw {before}, Redis now has {now}. \
                 The server lost data (restarted without `appendfsync always`, failed over to a \
                 replica, evicted or flushed keys), so fences may repeat"
            ),
        )
    }

    async fn release_quietly(&self, key: &str, holder: &str, fence: u64) {
        let r: redis::RedisResult<(i64, Option<String>)> = self
            .release_call(key, holder, fence)
            .invoke_async(&mut self.inner.conn.clone())
            .await;
        if let Err(e) = r {
            debug!(key, error = %e, "could not release a grant refused for fence regression");
        }
    }

    /// The acquire script of this store (with queued grants or without), with its keys and
    /// arguments. `patience_ms` is 0 for `try_lock`, which never queues.
    fn acquire_call(
        &self,
        key: &str,
        holder: &str,
        lease_ms: u64,
        patience_ms: u64,
    ) -> ScriptInvocation<'static> {
        let Keys {
            record,
            legacy_lock,
            legacy_fence,
        } = keys(&self.inner.prefix, key);
        let script = match self.inner.grant_channel {
            Some(_) => &*ACQUIRE_Q,
            None => &*ACQUIRE,
        };
        let mut call = script.key(record);
        call.key(legacy_lock).key(legacy_fence);
        if self.inner.grant_channel.is_some() {
            let q = queue_keys(&self.inner.prefix, key);
            call.key(q.queue).key(q.deadlines).key(q.waiters);
        }
        call.arg(holder)
            .arg(lease_ms)
            .arg(&self.inner.channel)
            .arg(key);
        if let Some(grants) = &self.inner.grant_channel {
            call.arg(patience_ms);
            // Only a caller that may be queued needs its channel stored (`try_lock` is not).
            if patience_ms > 0 {
                call.arg(grants);
            }
        }
        call
    }

    /// Runs the acquire script ([`acquire_call`](Self::acquire_call)): its status and counter,
    /// and what this store had seen of `key` before it was sent.
    async fn run_acquire(
        &self,
        what: &str,
        key: &str,
        holder: &str,
        lease_ms: u64,
        patience_ms: u64,
    ) -> Result<(i64, Option<u64>, Option<Seen>), StoreError> {
        let before = self.snapshot(key);
        let (status, counter): (i64, Option<String>) = self
            .acquire_call(key, holder, lease_ms, patience_ms)
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| classify(what, e))?;
        if status == 1 {
            self.replicated(what).await?;
        }
        Ok((status, parse_counter(what, counter)?, before))
    }

    /// With [`wait_for_replicas`](crate::RedisStoreBuilder::wait_for_replicas): waits until
    /// enough replicas have every write this store's connection made so far (Redis `WAIT`),
    /// and fails as transient if they do not within the timeout. The write itself stays
    /// applied on the primary.
    async fn replicated(&self, what: &str) -> Result<(), StoreError> {
        let Some((replicas, timeout)) = self.inner.wait_replicas else {
            return Ok(());
        };
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let acked: i64 = redis::cmd("WAIT")
            .arg(replicas)
            .arg(ms)
            .query_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| classify(&format!("{what}: waiting for replicas"), e))?;
        if acked < i64::from(replicas) {
            warn!(
                acked,
                replicas, "a write did not reach enough replicas in time"
            );
            return Err(StoreError::transient(
                NAME,
                format!(
                    "{what}: {acked} of {replicas} replicas acknowledged it within {timeout:?}; \
                     it is applied on the primary, but a failover could lose it"
                ),
            ));
        }
        Ok(())
    }

    /// The release script of this store, with its keys and arguments.
    fn release_call(&self, key: &str, holder: &str, fence: u64) -> ScriptInvocation<'static> {
        let record = keys(&self.inner.prefix, key).record;
        let mut call = match self.inner.grant_channel {
            Some(_) => {
                let q = queue_keys(&self.inner.prefix, key);
                let mut call = RELEASE_Q.key(record);
                call.key(q.queue).key(q.deadlines).key(q.waiters);
                call
            }
            None => RELEASE.key(record),
        };
        call.arg(holder)
            .arg(fence)
            .arg(&self.inner.channel)
            .arg(key);
        call
    }

    /// A grant (status 1) of `key` to `holder` with the script's `counter`: checked against
    /// the fences seen `before` the call was sent, and given back if it went backwards.
    async fn granted(
        &self,
        what: &str,
        key: &str,
        holder: &str,
        counter: Option<u64>,
        before: Option<Seen>,
    ) -> Result<Fence, StoreError> {
        let fence = counter
            .and_then(Fence::new)
            .ok_or_else(|| bad_reply(what, "granted without a fence"))?;
        if let Err(e) = self.check_grant(key, Some(holder), fence.get(), before) {
            // Do not leave a grant behind that nobody will use.
            self.release_quietly(key, holder, fence.get()).await;
            return Err(e);
        }
        Ok(fence)
    }

    /// The outcome of a release (status 1: released; 0: not held so, and the `counter` the
    /// script saw is checked against the fences seen `before` the call was sent).
    fn released(
        &self,
        what: &str,
        key: &str,
        status: i64,
        counter: Option<String>,
        before: Option<Seen>,
    ) -> Result<bool, StoreError> {
        let counter = parse_counter(what, counter)?;
        match status {
            1 => Ok(true),
            0 => {
                self.check_counter(key, counter, before)?;
                Ok(false)
            }
            s => Err(bad_reply(what, format!("status {s}"))),
        }
    }
}

/// A random id for this store's grant channel: the process id and 128 bits from the
/// standard library's per-instance random hash keys, so that no two stores share a channel.
fn store_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let hash = || RandomState::new().hash_one((std::process::id(), std::time::Instant::now()));
    format!("{}-{:016x}{:016x}", std::process::id(), hash(), hash())
}

fn lease_ms(lease: Duration) -> u64 {
    let ms = lease.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).clamp(1, MAX_LEASE_MS)
}

fn parse_counter(what: &str, counter: Option<String>) -> Result<Option<u64>, StoreError> {
    counter
        .map(|c| {
            c.parse::<u64>()
                .map_err(|_| bad_reply(what, format!("fence counter {c:?} is not a number")))
        })
        .transpose()
}

/// Field `i` of a script's reply, as a `T`.
fn reply_field<T: redis::FromRedisValue>(
    what: &str,
    reply: &[redis::Value],
    i: usize,
) -> Result<T, StoreError> {
    match reply.get(i) {
        Some(v) => redis::from_redis_value_ref::<T>(v)
            .map_err(|_| bad_reply(what, format!("field {i} has the wrong type"))),
        None => Err(bad_reply(what, format!("field {i} is missing"))),
    }
}

impl LeaseStore for RedisStore {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        validate(NAME, key, holder)?;
        // Zero stays zero (a release); anything else is at least one millisecond.
        let ms = if lease.is_zero() { 0 } else { lease_ms(lease) };
        let what = || format!("try_lock of {key:?}");
        if let Some(n) = self.inner.notifier.as_ref().filter(|_| ms > 0) {
            n.watch(key);
        }
        let (status, counter, before) = self.run_acquire(&what(), key, holder, ms, 0).await?;
        match status {
            1 => {
                if let Some(n) = &self.inner.notifier {
                    n.unwatch(key);
                }
                let fence = self.granted(&what(), key, holder, counter, before).await?;
                Ok(Some(fence))
            }
            0 | 2 => {
                self.check_counter(key, counter, before)?;
                Ok(None)
            }
            s => Err(bad_reply(&what(), format!("status {s}"))),
        }
    }

    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        let before = self.snapshot(key);
        let (status, counter): (i64, Option<String>) = RENEW
            .key(keys(&self.inner.prefix, key).record)
            .arg(holder)
            .arg(fence.get())
            .arg(lease_ms(lease))
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| classify(&format!("renew of {key:?}"), e))?;
        let renewed = self.renew_outcome(key, holder, fence, status, counter, before)?;
        if renewed {
            self.replicated(&format!("renew of {key:?}")).await?;
        }
        Ok(renewed)
    }

    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        let what = || format!("release of {key:?}");
        let before = self.snapshot(key);
        let (status, counter): (i64, Option<String>) = self
            .release_call(key, holder, fence.get())
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| classify(&what(), e))?;
        let released = self.released(&what(), key, status, counter, before)?;
        if released {
            // A release of a queued key grants the next waiter.
            self.replicated(&what()).await?;
        }
        Ok(released)
    }

    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        match &self.inner.notifier {
            Some(n) => n.wait(key, max_wait).await,
            None => tokio::time::sleep(max_wait).await,
        }
    }

    /// Reads the lease record in one read-only script (with `TIME`, so the time left is by the
    /// server's clock, in milliseconds). A key that has no record yet but a layout-1 lease or
    /// counter is reported as the acquire script would judge it. A counter below a fence this
    /// store saw is a [`FenceRegressed`](StoreErrorKind::FenceRegressed) error, as for the other
    /// calls.
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        validate_key(NAME, key)?;
        let Keys {
            record,
            legacy_lock,
            legacy_fence,
        } = keys(&self.inner.prefix, key);
        let what = format!("inspect of {key:?}");
        let before = self.snapshot(key);
        let reply: Vec<redis::Value> = INSPECT
            .key(record)
            .key(legacy_lock)
            .key(legacy_fence)
            .arg(MAX_LEASE_MS)
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| classify(&what, e))?;
        match reply_field::<i64>(&what, &reply, 0)? {
            0 => {
                self.check_counter(key, None, before)?;
                Ok(KeyState::free(None))
            }
            1 => {
                let counter = parse_counter(&what, Some(reply_field(&what, &reply, 1)?))?;
                self.check_counter(key, counter, before)?;
                let fence = counter
                    .and_then(Fence::new)
                    .ok_or_else(|| bad_reply(&what, "no fence"))?;
                let holder: String = reply_field(&what, &reply, 2)?;
                let left: i64 = reply_field(&what, &reply, 3)?;
                Ok(if holder.is_empty() {
                    KeyState::free(Some(fence))
                } else {
                    let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                    KeyState::held(holder, fence, left)
                })
            }
            s => Err(bad_reply(&what, format!("status {s}"))),
        }
    }

    /// Raises the record's counter by one, empties its holder and publishes the key on the
    /// release channel (waking waiters in every process), in one script. The old holder's
    /// renew and release compare holder and fence, so both fail; the next grant increments the
    /// counter again. Deleting the record instead (`DEL`) would start the key's fences again at
    /// 1: never do that.
    ///
    /// The same from `redis-cli`, with the record's key from [`lock_key`](RedisStore::lock_key)
    /// (e.g. `lease:{jobs/nightly}:v2`; the script also seeds a record from a layout-1 counter,
    /// which this one-liner does not, and announces the key, which it does not either):
    ///
    /// ```text
    /// redis-cli EVAL "if redis.call('HEXISTS', KEYS[1], 'f') == 0 then return nil end
    ///   redis.call('HSET', KEYS[1], 'h', '', 'e', '0')
    ///   return redis.call('HINCRBY', KEYS[1], 'f', 1)" 1 'lease:{jobs/nightly}:v2'
    /// ```
    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        validate_key(NAME, key)?;
        let Keys {
            record,
            legacy_lock,
            legacy_fence,
        } = keys(&self.inner.prefix, key);
        let what = format!("break of {key:?}");
        let before = self.snapshot(key);
        let reply: Vec<redis::Value> = BREAK
            .key(record)
            .key(legacy_lock)
            .key(legacy_fence)
            .arg(&self.inner.channel)
            .arg(key)
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| classify(&what, e))?;
        match reply_field::<i64>(&what, &reply, 0)? {
            0 => {
                self.check_counter(key, None, before)?;
                Ok(None)
            }
            1 => {
                let fence = parse_counter(&what, Some(reply_field(&what, &reply, 1)?))?
                    .and_then(Fence::new)
                    .ok_or_else(|| bad_reply(&what, "no fence"))?;
                // Nobody holds the raised fence.
                self.check_grant(key, None, fence.get(), before)?;
                let previous: String = reply_field(&what, &reply, 2)?;
                let was_live = reply_field::<i64>(&what, &reply, 3)? == 1;
                self.replicated(&what).await?;
                debug!(key, fence = fence.get(), was_live, "lock broken");
                Ok(Some(BrokenLock::new(
                    fence,
                    (!previous.is_empty()).then_some(previous),
                    was_live,
                )))
            }
            s => Err(bad_reply(&what, format!("status {s}"))),
        }
    }

    /// With [queued grants](RedisStoreBuilder::queued_grants): one script grants `key` if it
    /// is free and no live waiter is ahead, otherwise queues `holder` (or refreshes its entry,
    /// keeping its place) with a deadline of the server's `TIME` + `patience`, and answers
    /// `Waiting` with the key's fence as the script left it. Without, it is `try_lock`.
    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        validate(NAME, key, holder)?;
        if self.inner.grant_channel.is_none() || lease.is_zero() {
            return Ok(Enqueued::from_try_lock(
                self.try_lock(lease, key, holder).await?,
            ));
        }
        let what = || format!("enqueue of {key:?}");
        // Watched before sending: a grant announced between the answer and the next
        // `wait_for_grant` is kept for it.
        if let Some(n) = &self.inner.notifier {
            n.watch_grant(key, holder);
        }
        let (status, counter, before) = self
            .run_acquire(&what(), key, holder, lease_ms(lease), lease_ms(patience))
            .await?;
        match status {
            1 => {
                if let Some(n) = &self.inner.notifier {
                    n.unwatch_grant(key, holder);
                }
                let fence = self.granted(&what(), key, holder, counter, before).await?;
                Ok(Enqueued::Granted(fence))
            }
            3 => {
                self.check_counter(key, counter, before)?;
                // The counter as the script left it: the key's latest fence, so a grant to
                // this waiter later has a larger one.
                Ok(Enqueued::Waiting {
                    fence: counter.and_then(Fence::new),
                })
            }
            s => Err(bad_reply(&what(), format!("status {s}"))),
        }
    }

    /// Waits for the grant message of (`key`, `holder`) on this store's grant channel, which
    /// the granting script publishes with the fence it granted; a grant announced since the
    /// last `enqueue` of `holder` was sent returns at once. `None` after `max_wait`, when
    /// `key` is announced free (its next `enqueue` takes it), or when the subscription was
    /// lost since (messages may have been missed). Without queued grants (or without
    /// notifications), as the trait's default.
    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        match (&self.inner.notifier, &self.inner.grant_channel) {
            // Waiting for replicas, a grant is confirmed by the waiter's own acquire (a write
            // ordered after the grant, then `WAIT`) before it is taken: the announcement only
            // ends the wait.
            (Some(n), Some(_)) => n
                .wait_grant(key, holder, max_wait)
                .await
                .and_then(Fence::new)
                .filter(|_| self.inner.wait_replicas.is_none()),
            _ => {
                self.wait_for_change(key, max_wait).await;
                None
            }
        }
    }

    /// With [queued grants](RedisStoreBuilder::queued_grants): one script removes `holder`'s
    /// entry and, if the record names `holder` (granted meanwhile), releases that grant to
    /// the next waiter. Without, nothing to leave (`false`).
    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        if self.inner.grant_channel.is_none() {
            return Ok(false);
        }
        if let Some(n) = &self.inner.notifier {
            n.unwatch_grant(key, holder);
        }
        let what = || format!("leave_queue of {key:?}");
        let q = queue_keys(&self.inner.prefix, key);
        let before = self.snapshot(key);
        let (status, counter): (i64, Option<String>) = LEAVE_Q
            .key(keys(&self.inner.prefix, key).record)
            .key(q.queue)
            .key(q.deadlines)
            .key(q.waiters)
            .arg(holder)
            .arg(&self.inner.channel)
            .arg(key)
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| classify(&what(), e))?;
        let passed_on = self.released(&what(), key, status, counter, before)?;
        if passed_on {
            self.replicated(&what()).await?;
        }
        Ok(passed_on)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.caps
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.inner.target)
            .field("prefix", &self.inner.prefix_shown)
            .field("capabilities", &self.inner.caps)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "redis store at {} (prefix {:?})",
            self.inner.target, self.inner.prefix_shown
        )
    }
}

/// rustls (through redis) needs a process-wide crypto provider and panics without one; the
/// application chooses it. With `tls-ring` the store installs ring when none is installed.
#[cfg(feature = "tls")]
fn crypto_provider() -> Result<(), StoreError> {
    #[cfg(feature = "tls-ring")]
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        return Err(StoreError::invalid_input(
            NAME,
            "a TLS URL needs a process-wide rustls crypto provider and none is installed: call \
             rustls::crypto::ring::default_provider().install_default() (or aws_lc_rs's) at \
             start, or enable lease-redis's `tls-ring` feature to have the store install ring",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_up_to_whole_milliseconds_within_bounds() {
        assert_eq!(lease_ms(Duration::from_micros(1)), 1);
        assert_eq!(lease_ms(Duration::from_micros(1500)), 2);
        assert_eq!(lease_ms(Duration::from_secs(2)), 2000);
        assert_eq!(lease_ms(Duration::MAX), MAX_LEASE_MS);
    }
}
