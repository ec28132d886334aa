//! [`PostgresStore`]: the statements, and the store contract on top of them.

use std::sync::Arc;
use std::time::Duration;

use lease_core::input::{validate, validate_key};
use lease_core::{BrokenLock, Capabilities, Fence, KeyState, LeaseStore, StoreError};
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use crate::NAME;
use crate::config::PostgresStoreBuilder;
use crate::conn::{self, Shared, Tls};
use crate::error::{bad_answer, classify, timed_out};
use crate::notify::{self, EVERY_KEY, Listener};
use crate::queue::QueueStatements;
use crate::schema::{self, quote_ident};
use crate::seen::Seen;

/// The oldest server the statements run on (`ON CONFLICT`, `to_regclass(text)`).
const MIN_SERVER_VERSION: i32 = 100_000;

/// The longest lease the store writes: longer ones are cut to it (an expiry must stay within
/// PostgreSQL's timestamps).
const MAX_LEASE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The PostgreSQL store; see the [crate docs](crate) for the protocol and its limits.
///
/// Clones share one connection for statements, one listening connection and the memory of
/// fences seen. A lost connection is opened again by the next call; calls made while the
/// server is unreachable fail with transient errors.
///
/// `Debug` shows the server without its password. The connections' tasks run on the tokio
/// runtime that called [`connect`](PostgresStoreBuilder::connect); use the store within that
/// runtime.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    shown: String,
    schema: String,
    conn: Shared,
    statement_timeout: Duration,
    /// The statements, with the quoted schema in them.
    sql: Statements,
    channel: String,
    listener: Option<Listener>,
    durable_fences: bool,
    /// The statements of queued grants, when the store has them.
    queue: Option<QueueStatements>,
    /// The highest fence seen per key, to notice a server that lost grants.
    seen: Seen,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("server", &self.inner.shown)
            .field("schema", &self.inner.schema)
            .field("notifications", &self.inner.listener.is_some())
            .field("queued_grants", &self.inner.queue.is_some())
            .finish()
    }
}

/// Every statement the store runs, each one atomic on its own (a single statement is its own
/// transaction), with the schema's quoted name spliced in (never a key or holder: those are
/// bound parameters).
struct Statements {
    acquire: String,
    renew: String,
    release: String,
    release_any: String,
    inspect: String,
    break_lock: String,
}

impl Statements {
    fn new(schema: &str) -> Self {
        let s = quote_ident(schema);
        let lease = "clock_timestamp() + $3 * interval '1 microsecond'";
        Self {
            // A free key (no row, released, or expired) goes to the caller with fence + 1; its
            // own key, live or expired and untaken, is extended with the same fence; another
            // live holder's key is left alone, and no row comes back. The row lock of the
            // conflicting row makes check and set one step.
            acquire: format!(
                "INSERT INTO {s}.leases AS l (key, holder, fence, expires_at)
                 VALUES ($1, $2, 1, {lease})
                 ON CONFLICT (key) DO UPDATE SET
                     fence = CASE WHEN l.holder = excluded.holder THEN l.fence
                                  ELSE l.fence + 1 END,
                     holder = excluded.holder,
                     expires_at = excluded.expires_at
                 WHERE l.holder = excluded.holder OR l.holder IS NULL
                    OR l.expires_at <= clock_timestamp()
                 RETURNING fence"
            ),
            // Only the exact grant, and only while it is live: a renewal that arrives after the
            // lease lapsed must not revive it.
            renew: format!(
                "UPDATE {s}.leases SET expires_at = clock_timestamp() + $4 * interval '1 microsecond'
                 WHERE key = $1 AND holder = $2 AND fence = $3 AND expires_at > clock_timestamp()
                 RETURNING fence"
            ),
            // The announcement is part of the statement: delivered at its commit, and only then.
            release: format!(
                "WITH r AS (UPDATE {s}.leases SET holder = NULL
                            WHERE key = $1 AND holder = $2 AND fence = $3 RETURNING fence),
                      n AS (SELECT pg_notify($4, $5) FROM r)
                 SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM n)"
            ),
            release_any: format!(
                "WITH r AS (UPDATE {s}.leases SET holder = NULL
                            WHERE key = $1 AND holder = $2 RETURNING fence),
                      n AS (SELECT pg_notify($3, $4) FROM r)
                 SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM n)"
            ),
            inspect: format!(
                "SELECT holder, fence, holder IS NOT NULL AND expires_at > c.now,
                        floor(extract(epoch FROM expires_at - c.now) * 1000000)::int8
                 FROM {s}.leases, (SELECT clock_timestamp() AS now) c WHERE key = $1"
            ),
            // The old row is read and locked first (`FOR UPDATE`), so what is reported is what
            // was broken; the update then frees the key and raises its fence past every fence
            // handed out, and announces it.
            break_lock: format!(
                "WITH old AS (SELECT key, holder,
                                     holder IS NOT NULL AND expires_at > clock_timestamp() AS live
                              FROM {s}.leases WHERE key = $1 FOR UPDATE),
                      upd AS (UPDATE {s}.leases l SET holder = NULL, fence = l.fence + 1
                              FROM old WHERE l.key = old.key RETURNING l.fence),
                      n AS (SELECT pg_notify($2, $3) FROM upd)
                 SELECT upd.fence, old.holder, old.live, (SELECT count(*) FROM n)
                 FROM upd, old"
            ),
        }
    }
}

impl PostgresStore {
    /// A builder for the server at `url` (`postgres://user:password@host:port/database?…`,
    /// also `postgresql://`); see [`PostgresStoreBuilder`] for the URL's options.
    pub fn builder(url: &str) -> PostgresStoreBuilder {
        PostgresStoreBuilder::new(url)
    }

    /// Connects to `url` with default settings.
    ///
    /// # Errors
    ///
    /// As [`PostgresStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        Self::builder(url).connect().await
    }

    pub(crate) async fn connect_with(b: PostgresStoreBuilder) -> Result<PostgresStore, StoreError> {
        b.validate()?;
        let shown = b.shown();
        let mut config = b
            .config
            .clone()
            .map_err(|e| StoreError::invalid_input(NAME, e))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(b.connect_timeout);
        }
        let tls = Tls::for_config(&config, b.root_cert.as_deref())?;
        let setup = async {
            let mut client = conn::connect(&config, &tls, b.connect_timeout, &shown).await?;
            let durable = check_server(&client, &shown).await?;
            schema::migrate(&mut client, &b.schema).await?;
            Ok::<_, StoreError>((client, durable))
        };
        let (client, durable_fences) = tokio::time::timeout(b.connect_timeout, setup)
            .await
            .map_err(|_| {
                StoreError::transient(
                    NAME,
                    format!(
                        "connecting to `{shown}`: not set up within {:?}",
                        b.connect_timeout
                    ),
                )
            })??;
        let channel = notify::channel_of(&b.schema);
        let listener = if b.notifications {
            let (listen_config, listen_tls) = match &b.listen {
                Some((_, Ok(listen))) => {
                    let mut listen = listen.clone();
                    if listen.get_connect_timeout().is_none() {
                        listen.connect_timeout(b.connect_timeout);
                    }
                    let tls = Tls::for_config(&listen, b.root_cert.as_deref())?;
                    (listen, tls)
                }
                _ => (config.clone(), tls.clone()),
            };
            Some(Listener::start(
                listen_config,
                listen_tls,
                b.connect_timeout,
                channel.clone(),
            ))
        } else {
            None
        };
        let queue = b.queued_grants.then(|| QueueStatements::new(&b.schema));
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                conn: Shared::new(config, tls, b.connect_timeout, shown.clone(), client),
                sql: Statements::new(&b.schema),
                shown,
                schema: b.schema,
                statement_timeout: b.statement_timeout,
                channel,
                listener,
                durable_fences,
                queue,
                seen: Seen::default(),
            }),
        })
    }

    /// The schema the store's tables are in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The name of the channel on which releases and breaks are announced (`pg_notify`), with
    /// the key's bytes in hex as the payload: for other listeners of the same server.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Runs one statement on the shared connection, within the statement timeout.
    ///
    /// A statement that times out is cancelled (a cancel request for the connection, in the
    /// background) and the connection is dropped, so that statements queued behind it on the
    /// server are not held up; whether it was applied is unknown, as after any lost answer. A
    /// failed connection is dropped too; the next call opens a new one.
    ///
    /// # Cancel safety
    ///
    /// Dropped at any await, it leaves nothing behind: tokio-postgres matches each answer to
    /// its own request, and discards the answer of a dropped one.
    pub(crate) async fn query(
        &self,
        what: &(dyn Fn() -> String + Sync),
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, StoreError> {
        let inner = &self.inner;
        let client = inner.conn.client().await?;
        match tokio::time::timeout(inner.statement_timeout, client.query_typed(sql, params)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => {
                // An error of the server leaves the connection usable; any other may not.
                if e.as_db_error().is_none() || client.is_closed() {
                    inner.conn.discard(&client).await;
                }
                Err(classify(&what(), e))
            }
            Err(_) => {
                conn::cancel(&client, inner.conn.tls(), inner.conn.connect_timeout());
                inner.conn.discard(&client).await;
                Err(timed_out(&what(), inner.statement_timeout))
            }
        }
    }
}

/// Checks the server's version and tells whether its commits survive a crash (`fsync` on and
/// `synchronous_commit` not off, as this session sees them).
async fn check_server(client: &tokio_postgres::Client, shown: &str) -> Result<bool, StoreError> {
    let what = || format!("checking the server at `{shown}`");
    let rows = client
        .query_typed(
            "SELECT current_setting('server_version_num')::int4,
                    current_setting('fsync') = 'on',
                    current_setting('synchronous_commit') <> 'off'",
            &[],
        )
        .await
        .map_err(|e| classify(&what(), e))?;
    let row = rows.first().ok_or_else(|| bad_answer(&what(), "no row"))?;
    let version: i32 = row.get(0);
    if version < MIN_SERVER_VERSION {
        return Err(StoreError::permanent(
            NAME,
            format!("`{shown}` runs PostgreSQL {version}; the store needs 10 or later"),
        ));
    }
    let (fsync, synchronous): (bool, bool) = (row.get(1), row.get(2));
    if !(fsync && synchronous) {
        tracing::warn!(
            server = shown,
            fsync,
            synchronous_commit = synchronous,
            "commits may be lost in a crash of this server: fences are not durable"
        );
    }
    Ok(fsync && synchronous)
}

/// A lease in microseconds, rounded up, at most [`MAX_LEASE`].
pub(crate) fn micros(lease: Duration) -> f64 {
    let lease = lease.min(MAX_LEASE);
    lease.as_nanos().div_ceil(1000) as f64
}

pub(crate) fn to_fence(what: &(dyn Fn() -> String + Sync), n: i64) -> Result<Fence, StoreError> {
    Fence::from_i64(n).ok_or_else(|| {
        StoreError::new(
            lease_core::StoreErrorKind::FenceRegressed,
            NAME,
            format!("{}: invalid fence {n} in the table", what()),
        )
    })
}

/// A holder as stored (the bytes of a `&str`), back as a string.
fn holder_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The fence counter cannot go up: a permanent error, never a repeated fence.
pub(crate) fn out_of_fences(what: &(dyn Fn() -> String + Sync), e: StoreError) -> StoreError {
    let overflow = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<crate::error::Cause>())
        .and_then(crate::error::Cause::code)
        .is_some_and(|c| *c == tokio_postgres::error::SqlState::NUMERIC_VALUE_OUT_OF_RANGE);
    if overflow {
        StoreError::permanent(
            NAME,
            format!(
                "{}: the key's fence is at its maximum and cannot increase",
                what()
            ),
        )
    } else {
        e
    }
}

impl PostgresStore {
    /// The statements of queued grants.
    ///
    /// # Panics
    ///
    /// In a store without them: callers check [`Self::is_queued`] first.
    pub(crate) fn queue_sql(&self) -> &QueueStatements {
        self.inner
            .queue
            .as_ref()
            .expect("only called by a store with queued grants")
    }

    /// Whether the store has queued grants.
    fn is_queued(&self) -> bool {
        self.inner.queue.is_some()
    }

    /// The fences this store has seen.
    pub(crate) fn seen(&self) -> &Seen {
        &self.inner.seen
    }

    /// The listening connection, if the store has one.
    pub(crate) fn listener(&self) -> Option<&Listener> {
        self.inner.listener.as_ref()
    }

    /// The key's live holder and the time left, if any, for waiters: `None` when the key is
    /// free.
    async fn live_lease(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let state = LeaseStore::inspect(self, key).await?;
        Ok(state.remaining)
    }

    async fn release_where(
        &self,
        key: &str,
        holder: &str,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        let what = || format!("release of `{key}`");
        let payload = notify::payload_of(key);
        let channel = &self.inner.channel;
        let (k, h) = (key.as_bytes(), holder.as_bytes());
        let rows = match fence {
            Some(f) => {
                self.query(
                    &what,
                    &self.inner.sql.release,
                    &[
                        (&k, Type::BYTEA),
                        (&h, Type::BYTEA),
                        (&f, Type::INT8),
                        (channel, Type::TEXT),
                        (&payload, Type::TEXT),
                    ],
                )
                .await?
            }
            None => {
                self.query(
                    &what,
                    &self.inner.sql.release_any,
                    &[
                        (&k, Type::BYTEA),
                        (&h, Type::BYTEA),
                        (channel, Type::TEXT),
                        (&payload, Type::TEXT),
                    ],
                )
                .await?
            }
        };
        let released: i64 = rows
            .first()
            .ok_or_else(|| bad_answer(&what(), "no row"))?
            .try_get(0)
            .map_err(|e| bad_answer(&what(), e))?;
        Ok(released > 0)
    }
}

impl LeaseStore for PostgresStore {
    /// One `INSERT … ON CONFLICT DO UPDATE … WHERE … RETURNING fence`; a zero lease releases.
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        validate(NAME, key, holder)?;
        if self.is_queued() {
            if lease.is_zero() {
                self.queued_release(key, holder, None).await?;
                return Ok(None);
            }
            let (granted, fence) = self
                .queued_acquire(lease, key, holder, Duration::ZERO, false)
                .await?;
            return Ok(granted.then_some(fence));
        }
        if lease.is_zero() {
            self.release_where(key, holder, None).await?;
            return Ok(None);
        }
        let what = || format!("try_lock of `{key}`");
        let (k, h, us) = (key.as_bytes(), holder.as_bytes(), micros(lease));
        let before = self.inner.seen.before(key);
        let rows = self
            .query(
                &what,
                &self.inner.sql.acquire,
                &[(&k, Type::BYTEA), (&h, Type::BYTEA), (&us, Type::FLOAT8)],
            )
            .await
            .map_err(|e| out_of_fences(&what, e))?;
        match rows.first() {
            None => Ok(None),
            Some(row) => {
                let n: i64 = row.try_get(0).map_err(|e| bad_answer(&what(), e))?;
                self.inner.seen.granted(key, Some(holder), n, before)?;
                to_fence(&what, n).map(Some)
            }
        }
    }

    /// One `UPDATE` of the exact grant (key, holder, fence) while its lease is live.
    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        // Above i64::MAX: never handed out, so it matches no lease.
        let Some(f) = fence.to_i64() else {
            return Ok(false);
        };
        let what = || format!("renew of `{key}`");
        let (k, h, us) = (key.as_bytes(), holder.as_bytes(), micros(lease));
        let rows = self
            .query(
                &what,
                &self.inner.sql.renew,
                &[
                    (&k, Type::BYTEA),
                    (&h, Type::BYTEA),
                    (&f, Type::INT8),
                    (&us, Type::FLOAT8),
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// One `UPDATE` that clears the holder of the exact grant, with the release announced by
    /// `pg_notify` in the same statement; the fence stays in the row.
    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        let Some(f) = fence.to_i64() else {
            return Ok(false);
        };
        if self.is_queued() {
            return self.queued_release(key, holder, Some(f)).await;
        }
        self.release_where(key, holder, Some(f)).await
    }

    /// Subscribes to the store's announcements, then reads the key's row: free → at once.
    /// Held → until its release or break is announced, its lease runs out (by the time left
    /// that the server reported), the listening connection is re-established, or `max_wait`.
    /// Without notifications (or if the row cannot be read) it waits for the lease's end or
    /// `max_wait`.
    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        let deadline = tokio::time::Instant::now() + max_wait;
        // Before the read, so that a release committed after it is heard.
        let mut heard = self.inner.listener.as_ref().map(Listener::subscribe);
        let until = match self.live_lease(key).await {
            Ok(None) => return,
            // A little past the lease's end, so that the caller's next try finds it expired.
            Ok(Some(left)) => {
                deadline.min(tokio::time::Instant::now() + left + Duration::from_millis(1))
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the key's row; waiting for its announcement");
                deadline
            }
        };
        let Some(heard) = heard.as_mut() else {
            tokio::time::sleep_until(until).await;
            return;
        };
        let payload = notify::payload_of(key);
        let announced = async {
            loop {
                match heard.recv().await {
                    Ok(k) if *k == *payload || &*k == EVERY_KEY => return,
                    Ok(_) => {}
                    // Missed some: this key's may be among them.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let _ = tokio::time::timeout_at(until, announced).await;
    }

    /// One `SELECT` of the row with the server's clock: held while it names a holder whose
    /// expiry is ahead of `clock_timestamp()`, with the time left on that clock.
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        validate_key(NAME, key)?;
        let what = || format!("inspect of `{key}`");
        let k = key.as_bytes();
        let before = self.inner.seen.before(key);
        let rows = self
            .query(&what, &self.inner.sql.inspect, &[(&k, Type::BYTEA)])
            .await?;
        let Some(row) = rows.first() else {
            self.inner.seen.current(key, None, before)?;
            return Ok(KeyState::free(None));
        };
        let bad = |e| bad_answer(&what(), e);
        let holder: Option<Vec<u8>> = row.try_get(0).map_err(bad)?;
        let n: i64 = row.try_get(1).map_err(bad)?;
        self.inner.seen.current(key, Some(n), before)?;
        let fence = to_fence(&what, n)?;
        let live: bool = row.try_get(2).map_err(bad)?;
        let left_us: i64 = row.try_get(3).map_err(bad)?;
        match holder {
            Some(holder) if live => Ok(KeyState::held(
                holder_string(holder),
                fence,
                Duration::from_micros(left_us.max(0).unsigned_abs()),
            )),
            _ => Ok(KeyState::free(Some(fence))),
        }
    }

    /// One statement: locks the row (`FOR UPDATE`), clears its holder, raises its fence by one
    /// and announces it; nothing for a key without a row.
    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        validate_key(NAME, key)?;
        let what = || format!("break_lock of `{key}`");
        let k = key.as_bytes();
        let payload = notify::payload_of(key);
        let before = self.inner.seen.before(key);
        let rows = self
            .query(
                &what,
                &self.inner.sql.break_lock,
                &[
                    (&k, Type::BYTEA),
                    (&self.inner.channel, Type::TEXT),
                    (&payload, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| out_of_fences(&what, e))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let bad = |e| bad_answer(&what(), e);
        let n: i64 = row.try_get(0).map_err(bad)?;
        self.inner.seen.granted(key, None, n, before)?;
        let fence = to_fence(&what, n)?;
        let previous: Option<Vec<u8>> = row.try_get(1).map_err(bad)?;
        let was_live: bool = row.try_get(2).map_err(bad)?;
        Ok(Some(BrokenLock::new(
            fence,
            previous.map(holder_string),
            was_live,
        )))
    }

    /// With queued grants: one call of `lease_acquire`, which settles the key, then grants it,
    /// confirms a grant made to `holder`, or queues `holder` (see the crate docs). Without
    /// them: `try_lock`.
    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<lease_core::Enqueued, StoreError> {
        validate(NAME, key, holder)?;
        if !self.is_queued() || lease.is_zero() {
            return Ok(lease_core::Enqueued::from_try_lock(
                self.try_lock(lease, key, holder).await?,
            ));
        }
        self.queued_enqueue(lease, key, holder, patience).await
    }

    /// With queued grants: returns the fence of a grant to `holder` when it is announced (or
    /// found in the row), `None` when the key is free or the holder's lease ran out (the next
    /// `enqueue` settles it), or after `max_wait`. Without them: `wait_for_change`, then `None`.
    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        if !self.is_queued() {
            self.wait_for_change(key, max_wait).await;
            return None;
        }
        self.queued_wait_for_grant(key, holder, max_wait).await
    }

    /// With queued grants: one call of `lease_leave` (the entry goes; a grant made to `holder`
    /// meanwhile goes to the next waiter). Without them: `false`.
    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        if !self.is_queued() {
            return Ok(false);
        }
        self.queued_leave(key, holder).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(NAME)
            .with_queued_grants(self.is_queued())
            .with_leases(Duration::from_micros(1), Duration::from_micros(1))
            .with_notifications(self.inner.listener.is_some())
            .with_durable_fences(self.inner.durable_fences)
            // Concurrent statements are pipelined on the one connection.
            .with_batched_renewals(true)
    }
}
