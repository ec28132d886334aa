//! Connection settings: [`RedisStoreBuilder`], the URL forms, and credential redaction.

use std::fmt;
use std::time::Duration;

use lease_core::StoreError;

use crate::NAME;
use crate::store::RedisStore;

/// The key prefix used when none is given: every key and channel this store uses starts with it.
pub const DEFAULT_PREFIX: &str = "lease:";

/// The longest accepted key prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 256;

/// How long a write waits for its replicas when the URL option `wait_replicas=N` asks for them.
const DEFAULT_REPLICA_WAIT: Duration = Duration::from_millis(500);

/// Builds a [`RedisStore`]: server, key prefix, timeouts, and what to declare about fences.
///
/// Start from [`RedisStore::builder`] (a URL) or [`RedisStore::builder_with_client`] (an existing
/// [`redis::Client`]). The builder's `Debug` output never shows the password.
#[derive(Clone)]
pub struct RedisStoreBuilder {
    pub(crate) source: Source,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) durable_fences: bool,
    pub(crate) notifications: bool,
    pub(crate) allow_allkeys_eviction: bool,
    pub(crate) queued_grants: bool,
    /// Replicas every write must reach before its outcome is reported, and how long to wait
    /// for them ([`RedisStoreBuilder::wait_for_replicas`]).
    pub(crate) wait_replicas: Option<(u32, Duration)>,
    /// A bad value of a store option in the URL's query, reported by `connect`.
    pub(crate) url_error: Option<String>,
}

/// The URL's query options that configure the store rather than the connection. They are taken
/// out of the URL before redis-rs parses the rest, so its own options (and its handling of
/// unknown ones) are unchanged.
const QUEUED_GRANTS_OPTION: &str = "queued_grants";
/// `wait_replicas=N`: [`RedisStoreBuilder::wait_for_replicas`] with N replicas.
const WAIT_REPLICAS_OPTION: &str = "wait_replicas";

/// The store's own options found in a URL's query.
#[derive(Debug, Default, PartialEq, Eq)]
struct UrlOptions {
    queued_grants: Option<bool>,
    wait_replicas: Option<u32>,
}

/// Takes `queued_grants=true|false|1|0` and `wait_replicas=N` out of `url`'s query: the URL
/// without them, and their values (`Err` for a value that does not parse, naming the option but
/// not the value: `redact_url` hides every value of a query, and so do messages).
fn take_store_options(url: &str) -> (String, Result<UrlOptions, String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), Ok(UrlOptions::default()));
    };
    let mut options = Ok(UrlOptions::default());
    let mut kept = Vec::new();
    let mut set = |f: &mut dyn FnMut(&mut UrlOptions) -> Result<(), String>| {
        if let Ok(o) = &mut options
            && let Err(e) = f(o)
        {
            options = Err(e);
        }
    };
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((QUEUED_GRANTS_OPTION, v)) => set(&mut |o| {
                o.queued_grants = Some(match v.to_ascii_lowercase().as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(format!(
                            "URL option `{QUEUED_GRANTS_OPTION}`: expected true, false, 1 or 0"
                        ));
                    }
                });
                Ok(())
            }),
            Some((WAIT_REPLICAS_OPTION, v)) => set(&mut |o| {
                o.wait_replicas = Some(v.parse().map_err(|_| {
                    format!("URL option `{WAIT_REPLICAS_OPTION}`: expected a number of replicas")
                })?);
                Ok(())
            }),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, options)
}

#[derive(Clone)]
pub(crate) enum Source {
    Url(String),
    Client(Box<redis::Client>),
}

impl RedisStoreBuilder {
    pub(crate) fn new(source: Source) -> Self {
        let (source, option) = match source {
            Source::Url(url) => {
                let (url, option) = take_store_options(&url);
                (Source::Url(url), option)
            }
            client => (client, Ok(UrlOptions::default())),
        };
        let (options, url_error) = match option {
            Ok(o) => (o, None),
            Err(e) => (UrlOptions::default(), Some(e)),
        };
        Self {
            source,
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(1),
            durable_fences: false,
            notifications: true,
            allow_allkeys_eviction: false,
            queued_grants: url_error.is_none() && options.queued_grants.unwrap_or(true),
            wait_replicas: options
                .wait_replicas
                .filter(|n| *n > 0)
                .map(|n| (n, DEFAULT_REPLICA_WAIT)),
            url_error,
        }
    }

    /// Every key and the release channel this store uses start with `prefix` (default
    /// [`DEFAULT_PREFIX`]). Stores with different prefixes never see each other's keys. An ACL
    /// user limited to `~<prefix>*` and `&<prefix>*` is enough for the store.
    ///
    /// The prefix may not contain `{` or `}` (the store puts each key's hash tag after it) and is
    /// at most [`MAX_PREFIX_LEN`] bytes; [`connect`](Self::connect) refuses it otherwise.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long connecting (TCP, TLS, `AUTH`) may take (default 2 s). An unreachable server fails
    /// [`connect`](Self::connect) within about this long.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one call may wait for Redis's answer before it fails as a transient error
    /// (default 1 s). Keep it well below the lease, so that a renewal can be retried in time.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Declares that fences survive a restart of this Redis
    /// ([`Capabilities::durable_fences`](lease_core::Capabilities::durable_fences), false by
    /// default). Only say so when the server runs with `appendonly yes` and
    /// `appendfsync always`, and is never replaced by a replica (no failover): an asynchronous
    /// replica or a `everysec` AOF can lose the last fence increments.
    pub fn assume_durable_fences(mut self, yes: bool) -> Self {
        self.durable_fences = yes;
        self
    }

    /// Whether to subscribe to release announcements (default true). Off, the store uses one
    /// connection instead of two, and waiters poll.
    pub fn notifications(mut self, yes: bool) -> Self {
        self.notifications = yes;
        self
    }

    /// Whether the store keeps a queue of waiters per key and a release hands the key to the
    /// oldest live one, in the same script (default **true**; see the crate docs for why). On,
    /// the store declares
    /// [`Capabilities::queued_grants`](lease_core::Capabilities::queued_grants), so the lock's
    /// waiting calls queue ([`enqueue`](lease_core::LeaseStore::enqueue)) instead of all racing
    /// for the key at every release; see [`Enqueued`](lease_core::Enqueued) for the rules.
    ///
    /// - **Keys.** Per user key `k`, beside its lease record and under the same hash tag:
    ///   `<prefix>{k}:q` (list of waiters, oldest first), `<prefix>{k}:d` (sorted set waiter →
    ///   liveness deadline in milliseconds of the server's clock) and `<prefix>{k}:w` (hash
    ///   waiter → its lease and grant channel), none with a TTL. They exist only while a key has
    ///   waiters: the last entry out deletes them.
    /// - **Grants.** A release, a zero-lease `try_lock`, a waiter leaving with a grant, or any
    ///   call that finds the key's lease expired grants the key to the oldest waiter whose
    ///   deadline has not passed (fence + 1, the lease that waiter asked for, from the server's
    ///   `TIME`) and publishes the grant on that waiter's store's channel
    ///   `<prefix>grant:<store id>`, to which each store subscribes once, at connect, on its
    ///   notification connection. No newcomer is granted a key while a live waiter is queued.
    /// - **Expiry of entries.** Each `enqueue` (the lock's waiting calls poll with it) sets its
    ///   entry's deadline to the server's `TIME` + patience; an entry not refreshed in time is
    ///   skipped and deleted when it comes to the head of the queue. So a waiter that crashed
    ///   leaves an entry that costs one skip, and a grant to a waiter that crashed meanwhile
    ///   lapses with its lease and goes to the next waiter. A key nobody touches again keeps
    ///   the entries of its crashed waiters (a few bytes each) until its next call.
    /// - **Mixed settings.** Give every process that shares keys the same setting: a store
    ///   without queued grants ignores the queue (it can be granted a key ahead of the
    ///   waiters, and its releases do not hand over; the queued waiters take the key at their
    ///   next call, woken by its release announcement).
    ///
    /// The URL option `?queued_grants=true` (or `1`; `false`/`0` for off) of
    /// [`RedisStore::builder`] sets the same; a later call of this method overrides it.
    ///
    /// An ACL user needs `LINDEX LPOP RPUSH LREM LRANGE ZSCORE ZADD ZREM HDEL` on top of the
    /// plain store's commands. With [`notifications(false)`](Self::notifications) the queue
    /// still orders the grants, but waiters learn of them by polling.
    pub fn queued_grants(mut self, yes: bool) -> Self {
        self.queued_grants = yes;
        self
    }

    /// Every write of the store (a grant, a renewal, a release that hands the key to the next
    /// waiter, a break) is reported only once `replicas` replicas have it (Redis `WAIT`), so
    /// that a failover to one of them cannot lose it (default: off, as `replicas == 0`).
    ///
    /// Without it a failover to an asynchronous replica can lose the last grants: the new
    /// primary may hand out a fence again that a holder already has, and a lease a holder was
    /// told it has may be granted to another. Each store remembers the fences it saw and
    /// reports such a fence as [`FenceRegressed`](lease_core::StoreErrorKind::FenceRegressed),
    /// never as a grant; with this option the lost grant was never reported in the first place.
    ///
    /// - **Cost.** One more round trip per write, plus the replication delay (a replica's
    ///   acknowledgement): measured on loopback, see the crate docs. `WAIT` blocks the store's
    ///   multiplexed connection while it waits, so other calls of the same store queue behind
    ///   it.
    /// - **When replicas lag.** A write that fewer than `replicas` replicas acknowledge within
    ///   `timeout` is reported as a transient error; it stays applied on the primary (a grant
    ///   taken again by the same holder keeps its fence; the lock retries renewals until its
    ///   deadline). With fewer live replicas than `replicas`, every acquisition fails.
    /// - **Grants announced to a queued waiter** are confirmed by the waiter's store with a
    ///   write of its own (which orders after the grant on the primary) and its `WAIT` before
    ///   the waiter is told, so a waiter never takes a grant its replicas may not have.
    /// - **What it does not cover.** `WAIT` counts replicas that received the write, not ones
    ///   that wrote it to disk (`WAITAOF`, Redis 7.2, would), and it does not stop a failover
    ///   from promoting a replica that was not among them (configure the failover, e.g.
    ///   Sentinel, to promote the most up-to-date replica).
    ///
    /// The URL option `?wait_replicas=N` sets `N` replicas with a 500 ms timeout.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Whether to connect to a server whose `maxmemory-policy` is an `allkeys-*` policy
    /// (default false: [`connect`](Self::connect) refuses it with a permanent error).
    ///
    /// Under `allkeys-*` Redis evicts any key once `maxmemory` is reached, live lease records
    /// too: a held key is then granted to another holder, and its fences start again at 1
    /// (each store instance reports fences it sees go back, as
    /// [`FenceRegressed`](lease_core::StoreErrorKind::FenceRegressed)). Allow it only where the
    /// server never reaches `maxmemory`; `noeviction` and the `volatile-*` policies are safe, as
    /// the records have no TTL.
    pub fn allow_allkeys_eviction(mut self, yes: bool) -> Self {
        self.allow_allkeys_eviction = yes;
        self
    }

    /// The URL the store connects to: the one given to [`RedisStore::builder`] without the
    /// store's own options (`queued_grants`, `wait_replicas`), as redis-rs and other Redis clients take it; `None`
    /// for a builder made from a client.
    ///
    /// For other clients of the same server beside the store (scripts, tools, benchmarks), so
    /// that one URL configures both.
    pub fn connection_url(&self) -> Option<&str> {
        match &self.source {
            Source::Url(url) => Some(url),
            Source::Client(_) => None,
        }
    }

    /// Connects, checks that the server answers and its eviction policy cannot evict the lease
    /// records, and subscribes to release announcements.
    ///
    /// # Errors
    ///
    /// A bad URL, prefix or timeout is
    /// [`InvalidInput`](lease_core::StoreErrorKind::InvalidInput); refused credentials or ACL
    /// permissions are permanent errors saying so, and so is an `allkeys-*` eviction policy
    /// unless [allowed](Self::allow_allkeys_eviction) (a policy the ACL does not let the store
    /// read is logged as a warning); an unreachable server is a transient error
    /// naming the address, returned within about `connect_timeout`. Messages never contain the
    /// password.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        RedisStore::connect_with(self).await
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if let Some(e) = &self.url_error {
            return Err(StoreError::invalid_input(NAME, e.clone()));
        }
        if let Some((_, wait)) = self.wait_replicas
            && (wait.is_zero() || wait >= self.response_timeout)
        {
            return Err(StoreError::invalid_input(
                NAME,
                format!(
                    "waiting {wait:?} for replicas does not fit in the response timeout {:?}: \
                     a `WAIT` must be answered before the call gives up on it",
                    self.response_timeout
                ),
            ));
        }
        if self.prefix.contains(['{', '}']) {
            return Err(StoreError::invalid_input(
                NAME,
                format!(
                    "key prefix `{}` contains `{{` or `}}`; the store adds each key's hash tag \
                     itself",
                    self.prefix
                ),
            ));
        }
        if self.prefix.len() > MAX_PREFIX_LEN {
            return Err(StoreError::invalid_input(
                NAME,
                format!(
                    "key prefix is {} bytes long, the limit is {MAX_PREFIX_LEN}",
                    self.prefix.len()
                ),
            ));
        }
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(StoreError::invalid_input(
                NAME,
                "timeouts must be above zero",
            ));
        }
        Ok(())
    }

    /// The server's address for messages, without credentials.
    pub(crate) fn display_target(&self) -> String {
        match &self.source {
            Source::Url(url) => redact_url(url),
            Source::Client(client) => client.get_connection_info().addr().to_string(),
        }
    }

    /// Whether the connection will use TLS (and so needs a rustls crypto provider).
    #[cfg(feature = "tls")]
    pub(crate) fn uses_tls(&self) -> bool {
        match &self.source {
            Source::Url(url) => url.split_once("://").is_some_and(|(s, _)| {
                matches!(s.to_ascii_lowercase().as_str(), "rediss" | "valkeys")
            }),
            Source::Client(client) => matches!(
                client.get_connection_info().addr(),
                redis::ConnectionAddr::TcpTls { .. }
            ),
        }
    }

    /// The client, parsed from the URL if needed.
    pub(crate) fn client(&self) -> Result<redis::Client, StoreError> {
        let url = match &self.source {
            Source::Client(c) => return Ok((**c).clone()),
            Source::Url(url) => url,
        };
        let shown = redact_url(url);
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("redis" | "redis+unix" | "unix" | "valkey") => {}
            Some("rediss" | "valkeys") if cfg!(feature = "tls") => {}
            Some("rediss" | "valkeys") => {
                return Err(StoreError::invalid_input(
                    NAME,
                    format!("`{shown}` needs TLS: enable the `tls` feature of lease-redis"),
                ));
            }
            _ => {
                return Err(StoreError::invalid_input(
                    NAME,
                    format!(
                        "`{shown}` is not a Redis URL: expected \
                         redis://[user[:password]@]host[:port][/db] or rediss://…"
                    ),
                ));
            }
        }
        redis::Client::open(url.as_str()).map_err(|e| {
            // The parser's message does not repeat the URL, but keep only its category to be
            // sure nothing of the userinfo leaks.
            StoreError::invalid_input(
                NAME,
                format!("`{shown}` is not a valid Redis URL ({})", e.category()),
            )
        })
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("server", &self.display_target())
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("durable_fences", &self.durable_fences)
            .field("notifications", &self.notifications)
            .field("allow_allkeys_eviction", &self.allow_allkeys_eviction)
            .field("queued_grants", &self.queued_grants)
            .field("wait_replicas", &self.wait_replicas)
            .finish()
    }
}

use lease_core::redact::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_replicas_url_option_is_taken_out_and_checked() {
        let b = RedisStoreBuilder::new(Source::Url(
            "redis://h:1/0?wait_replicas=2&queued_grants=false".into(),
        ));
        assert_eq!(b.wait_replicas, Some((2, DEFAULT_REPLICA_WAIT)));
        assert!(!b.queued_grants && b.validate().is_ok());
        assert_eq!(b.connection_url(), Some("redis://h:1/0"));
        let b = RedisStoreBuilder::new(Source::Url("redis://h/?wait_replicas=0".into()));
        assert_eq!(b.wait_replicas, None, "0 replicas: off");
        let b = RedisStoreBuilder::new(Source::Url("redis://h/?wait_replicas=s3cret".into()));
        let e = b.validate().unwrap_err().to_string();
        assert!(e.contains("wait_replicas") && !e.contains("s3cret"), "{e}");
        let b = RedisStoreBuilder::new(Source::Url("redis://h/".into()))
            .wait_for_replicas(1, Duration::from_secs(2));
        let e = b.validate().unwrap_err().to_string();
        assert!(e.contains("does not fit in the response timeout"), "{e}");
    }

    #[test]
    fn builder_debug_hides_the_password() {
        let b = RedisStoreBuilder::new(Source::Url("redis://locker:hunter2@localhost/".into()));
        let shown = format!("{b:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("***@localhost") && !shown.contains("locker:"),
            "{shown}"
        );
    }

    #[test]
    fn the_queued_grants_url_option_is_taken_out_of_the_url() {
        let b = RedisStoreBuilder::new(Source::Url("redis://h:1/0?queued_grants=true".into()));
        assert!(b.queued_grants && b.validate().is_ok());
        assert_eq!(
            b.client().unwrap().get_connection_info().addr().to_string(),
            "h:1"
        );
        let b = RedisStoreBuilder::new(Source::Url(
            "redis+unix:///s.sock?db=2&queued_grants=1&user=u".into(),
        ));
        assert!(b.queued_grants);
        assert_eq!(b.connection_url(), Some("redis+unix:///s.sock?db=2&user=u"));
        assert_eq!(
            b.client()
                .unwrap()
                .get_connection_info()
                .redis_settings()
                .db(),
            2
        );
        let b = RedisStoreBuilder::new(Source::Url("redis://h/?queued_grants=false".into()));
        assert!(!b.queued_grants);
        assert_eq!(b.connection_url(), Some("redis://h/"));
        let b = RedisStore::builder_with_client(b.client().unwrap());
        assert_eq!(b.connection_url(), None);
        // The method overrides the URL.
        let b = RedisStoreBuilder::new(Source::Url("redis://h/?queued_grants=true".into()))
            .queued_grants(false);
        assert!(!b.queued_grants);
        let b = RedisStoreBuilder::new(Source::Url("redis://h/".into()));
        assert!(b.queued_grants, "on by default");
        // The message names the option, not its value (`redact_url` hides every value).
        let b = RedisStoreBuilder::new(Source::Url("redis://h/?queued_grants=hunter2".into()));
        let e = b.validate().unwrap_err().to_string();
        assert!(e.contains("queued_grants") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn bad_urls_and_prefixes_are_named() {
        let b = RedisStoreBuilder::new(Source::Url("http://u:hunter2@h/".into()));
        let e = b.client().unwrap_err().to_string();
        assert!(
            e.contains("not a Redis URL") && !e.contains("hunter2"),
            "{e}"
        );
        let b = RedisStoreBuilder::new(Source::Url("redis://u:hunter2@[::1/".into()));
        let e = b.client().unwrap_err().to_string();
        assert!(
            e.contains("not a valid Redis URL") && !e.contains("hunter2"),
            "{e}"
        );
        let b = RedisStoreBuilder::new(Source::Url("redis://h/".into())).prefix("a{b}");
        let e = b.validate().unwrap_err().to_string();
        assert!(e.contains("prefix"), "{e}");
        let b = RedisStoreBuilder::new(Source::Url("redis://h/".into())).prefix("p".repeat(300));
        assert!(b.validate().unwrap_err().to_string().contains("300 bytes"));
        #[cfg(not(feature = "tls"))]
        {
            let b = RedisStoreBuilder::new(Source::Url("rediss://h/".into()));
            let e = b.client().unwrap_err().to_string();
            assert!(e.contains("`tls` feature"), "{e}");
        }
    }
}
