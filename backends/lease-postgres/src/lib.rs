//! The PostgreSQL store for [lease-core](lease_core): lease locks whose grants, expiry and
//! fences are decided by one PostgreSQL server, for processes on any number of hosts that share
//! it.
//!
//! ```no_run
//! use std::time::Duration;
//! use lease_core::CrossProcessLock;
//! use lease_postgres::PostgresStore;
//!
//! # async fn run() -> Result<(), lease_core::Error> {
//! let store = PostgresStore::builder("postgres://locker:secret@db.internal:5432/app")
//!     .schema("locks")
//!     .connect()
//!     .await?;
//! let lock = CrossProcessLock::builder(store, "jobs/nightly")
//!     .lease(Duration::from_secs(5))
//!     .build()?;
//! let guard = lock.lock_timeout(Duration::from_secs(60)).await?;
//! // ... work, passing guard.fence() with every write to the protected resource ...
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # The protocol
//!
//! One row per key in `<schema>.leases` (`key bytea PRIMARY KEY, holder bytea, fence bigint,
//! expires_at timestamptz`). The row is never deleted, so the fence counter survives
//! releases; `holder` is NULL once released. Keys and holders are bound parameters, stored as
//! their bytes, so any string (NUL included) is its own key and no key collides with another.
//! Every operation is **one statement**, atomic on its own:
//!
//! - *acquire* ([`try_lock`](lease_core::LeaseStore::try_lock)): `INSERT … ON CONFLICT (key)
//!   DO UPDATE … WHERE the row names this holder, or nobody, or its lease expired … RETURNING
//!   fence`. A new key gets fence 1; the caller's own key (live, or expired and untaken) is
//!   extended with the same fence; a free key gets fence + 1; another live holder's key
//!   returns no row (`None`). The conflicting row's lock makes check and set one step.
//! - *renew*: `UPDATE … WHERE key, holder and fence match AND expires_at > clock_timestamp()`:
//!   a renewal that reaches the server after the lease lapsed revives nothing.
//! - *release*: `UPDATE … SET holder = NULL WHERE key, holder and fence match`, with
//!   `pg_notify` in the same statement (a data-modifying `WITH`), so the announcement is sent
//!   at commit and only if the release committed. A zero-lease `try_lock` releases the caller's
//!   grant whatever its fence.
//! - *break* ([`break_lock`](lease_core::LeaseStore::break_lock), for operators): locks the
//!   row, clears the holder, raises the fence by one and announces it, in one statement.
//! - *inspect* ([`inspect`](lease_core::LeaseStore::inspect)): one `SELECT` with the server's
//!   clock; writes nothing.
//!
//! **Queued grants** ([`PostgresStoreBuilder::queued_grants`], on by default; the figures
//! behind that are in its docs): a table
//! `<schema>.waiters` keeps one entry per waiting (key, holder) in arrival order, with the
//! lease it asked for and a liveness deadline on the server's clock. The operations are then
//! calls of PL/pgSQL functions of the schema (`lease_acquire`, `lease_release`,
//! `lease_leave`), each one statement that locks the key's lease row before it touches the
//! key's queue. Every call that may find the key free first drops the key's dead entries and
//! grants a free key to the oldest live one (fence + 1, the lease it asked for), announcing the
//! grant (`pg_notify`, at commit) to the granted waiter: a release hands the key over in its
//! own transaction, and no newcomer, not even the releasing holder, overtakes a live waiter.
//! [`wait_for_grant`](lease_core::LeaseStore::wait_for_grant) returns the fence of the
//! announced grant, or `None` when the key is free or the holder's lease ran out (the lock's
//! next [`enqueue`](lease_core::LeaseStore::enqueue) settles it); a waiter that gives up
//! [leaves the queue](lease_core::LeaseStore::leave_queue) and passes a grant that raced in
//! to the next waiter.
//!
//! **One clock.** Expiry is `clock_timestamp()` of the server, when the statement runs:
//! clients' clocks never matter. A step of the *server's* wall clock moves every lease with it
//! (as Redis's `TIME` does); keep it disciplined (NTP slewing, not stepping).
//!
//! **Statements without session state.** Every statement is sent as an *unnamed* prepared
//! statement (tokio-postgres's `query_typed`: parse, bind and execute in one round trip), never
//! a named one, and nothing relies on the session: no `SET`, no session advisory lock, no
//! temporary table. So the store works through **PgBouncer in transaction mode**, also before
//! PgBouncer 1.21 (which added support for named prepared statements); the test suite runs it
//! through Debian's PgBouncer 1.18 in transaction mode.
//!
//! **Migrations.** The tables live in a schema of the user's choosing
//! ([`PostgresStoreBuilder::schema`], default `lease`, always quoted), with a version in
//! `<schema>.schema_version`. The first connection of a new version migrates in one
//! transaction under a transaction-scoped advisory lock (`pg_advisory_xact_lock`), so
//! concurrent first connections are safe, also through PgBouncer; an up-to-date schema is
//! only read, so a user without `CREATE` can use a schema an administrator migrated. A schema
//! written by a newer version is refused (a permanent error naming both versions).
//!
//! **Timeouts.** Each statement has [`PostgresStoreBuilder::statement_timeout`] (2 s by
//! default) to be answered. Past it, the call fails with a transient error (the lock's renewal
//! retries it until the lease's deadline), the store sends PostgreSQL a cancel request for it,
//! and drops the connection: statements queued behind a stuck one (a row locked by an
//! operator's open transaction, a paused server) are not held up, and the next call opens a
//! fresh connection. Connecting is bounded by [`PostgresStoreBuilder::connect_timeout`]. The
//! timeout is the client's, not a session's `statement_timeout` or `lock_timeout`: a session
//! setting does not survive transaction pooling, and a pooler may refuse the startup option
//! that carries it. On a direct connection the server's own can be added with the driver's
//! `options` (`?options=-c%20lock_timeout%3D1000`), so that the server too gives up a wait.
//!
//! **Connections.** A store holds *one* connection for statements, shared by every call and
//! clone: tokio-postgres pipelines concurrent statements on it, so the heartbeats of many keys
//! cost one round trip per burst, as on Redis (the store declares `batched_renewals`). There is
//! no pool: each statement is short and self-contained, so a pool would add connections to the
//! server without adding throughput for a lock's traffic, and one connection per process keeps
//! a fleet of processes within `max_connections`. A lost connection is opened again by the
//! next call. A second connection per store listens for announcements (below).
//!
//! **Wake-ups.** With [`notifications`](PostgresStoreBuilder::notifications) (the default),
//! each store holds a listening connection (`LISTEN` on a channel named after the schema; a
//! ping every 5 s, and reconnection with a growing pause when it fails). Releases and breaks
//! announce the key (its bytes in hex) with `pg_notify`.
//! [`wait_for_change`](lease_core::LeaseStore::wait_for_change) subscribes, reads the key's
//! row, and returns at once if it is free, else on the key's announcement, at the end of the
//! holder's lease (the row says how long it has left, by the server's clock), or at its bound.
//! A lost announcement costs latency, never safety: after a reconnection every waiter looks
//! again. `LISTEN` needs a session of its own, so through a transaction-pooling PgBouncer point
//! the listening connection at the server directly ([`PostgresStoreBuilder::listen_url`]) or
//! turn notifications off: waiters then wake at the lease's end or their bound.
//!
//! **Errors.** Connection failures, timeouts, serialization failures and deadlocks, a server
//! shutting down or starting up, too many connections, a read-only standby: transient.
//! Refused credentials, missing privileges, a missing database, a bad URL or schema name, a
//! schema from a newer version: permanent (or invalid input). Messages name the server by its
//! URL with the credentials hidden ([`lease_core::redact::redact_url`]).
//!
//! # What the store guarantees, and where
//!
//! At most one holder is granted a key at a time, and fences of a key strictly increase, as
//! long as every process talks to the **same primary server** and the server keeps its
//! committed data. Fences survive a restart or crash of the server when commits are durable:
//! `fsync = on` and `synchronous_commit` not `off` (the store checks both at connect time and
//! declares [`durable_fences`](lease_core::Capabilities::durable_fences) accordingly, with a
//! warning when they are off). A failover to an **asynchronous replica** can lose the last
//! grants and hand out a fence again; use synchronous replication (`synchronous_commit = on`
//! with `synchronous_standby_names`) where a failover must keep fences. A server restored
//! from an older backup goes back in time the same way.
//!
//! **Fence regressions are detected, not silently reused** (within one store instance): the
//! store remembers the highest fence it saw per key (of the [`MAX_TRACKED_KEYS`] keys granted
//! most recently: a long-running process stays at a bounded size), and a
//! grant below it (or equal to it for another holder), or a key's fence below it in any other
//! answer, fails with [`StoreErrorKind::FenceRegressed`](lease_core::StoreErrorKind::FenceRegressed),
//! which the lock treats as a loss. A process that starts after the data loss cannot tell;
//! fenced resources still refuse the repeated fences.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | *(none)* | plain TCP and Unix-socket connections, password and SCRAM-SHA-256 auth (tokio-postgres) |
//! | `tls` | TLS for URLs with `sslmode=require`, through rustls, verified against the system's roots or `sslrootcert=PATH`; the application installs rustls's process-wide crypto provider (the store refuses a TLS URL while none is) |
//! | `tls-ring` | `tls`, and the store installs ring as the provider when none is installed (for applications; a library should leave the choice to its application) |
//!
//! The crate re-exports its driver: [`tokio_postgres`].
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod conn;
mod error;
mod notify;
mod queue;
mod schema;
mod seen;
mod store;
#[cfg(feature = "tls")]
mod tls;

pub use config::{DEFAULT_SCHEMA, PostgresStoreBuilder};
pub use seen::MAX_TRACKED_KEYS;
pub use store::PostgresStore;
pub use tokio_postgres;

/// The store's name in errors and capabilities.
const NAME: &str = "postgres";
