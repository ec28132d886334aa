//! The etcd store for [lease-core](lease_core): lease locks whose grants and fences are decided by
//! an etcd cluster (Raft), so they hold across hosts and survive the loss of a minority of
//! members.
//!
//! ```no_run
//! use std::time::Duration;
//! use lease_core::CrossProcessLock;
//! use lease_etcd::EtcdStore;
//!
//! # async fn run() -> Result<(), lease_core::Error> {
//! let store = EtcdStore::connect("etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/myapp/").await?;
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
//! A lock key `k` is two etcd keys under the store's prefix: the **lock key** `<prefix>l/k`,
//! whose value is the holder and which is attached to an etcd lease, and the **fence counter**
//! `<prefix>f/k`, which has no lease and is never deleted. The fence of a grant is the counter's
//! `version` (etcd counts every put of a key), so the first grant of a key has fence 1 and every
//! later grant a larger one, durable through Raft.
//!
//! *Acquire* is one transaction: `If CreateRevision(lock) == 0 Then Put(counter) (returning the
//! previous version), Put(lock, holder, lease) Else Get(lock), Get(counter)`. A vacant key is
//! granted with fence = previous counter version + 1. If the key exists and its value is this
//! holder, the call is an extend with the same fence (the counter is only bumped on a grant, so
//! while the key exists the counter's version is its holder's fence); this is also what a retry
//! after a lost reply sees. Anyone else is refused.
//!
//! *Renew* and *release* are transactions that compare the lock key's value (the holder) and the
//! counter's version (the fence), then read or delete the lock key: they act on exactly one
//! grant. A zero-lease `try_lock` deletes the key if its value is the holder.
//!
//! *Break* ([`break_lock`](lease_core::LeaseStore::break_lock), for operators) is one
//! transaction: `If Version(counter) > 0 Then Delete(lock), Put(counter)`. It frees the key
//! (the delete wakes watchers, as a release does) and raises the counter's version by one; that
//! version is the break's fence, which no grant has, and the next grant's put raises it again.
//! The old holder's renew and release compare holder and fence, so both fail (a renew answers
//! `false` and forgets the grant; no keepalive of its session can recreate a deleted key). A
//! key without a counter was never granted: nothing is written.
//!
//! *Inspect* ([`inspect`](lease_core::LeaseStore::inspect)) reads the lock key and the counter
//! in one read-only transaction, then the time left on the lock key's lease
//! (`LeaseTimeToLive`): the key is held while the lock key exists on a live lease, with the
//! counter's version as its fence. etcd reports that time in whole seconds rounded down; the
//! store reports the next whole second (at most the lease's granted TTL), so it is never zero for
//! a held key and at most one second above the truth. It is the session lease's time, which the
//! holder's store renews for all its keys.
//!
//! *Leases.* etcd leases, not keys, expire. Each store holds **one etcd lease per TTL in use**
//! (a *session*; normally one per process), and every key it grants with that TTL is attached to
//! it. One keepalive stream keeps a session alive, and **one task of the session owns it**: only
//! that task sends keepalives and reads their answers, with at most one keepalive in flight, so
//! every answer is matched to its own keepalive (the stream answers in order and carries no
//! request id). The session's *freshness* is the send time of the last keepalive that etcd
//! confirmed with its own answer (TTL > 0); etcd set the lease's expiry when it handled that
//! keepalive, after we sent it, so the lease lives at least until *freshness + TTL*. A renew
//! asks the task for a keepalive sent no earlier than the renew call (less any surplus of the
//! granted TTL over the requested lease) and returns `true` only once etcd answered that
//! keepalive, so after `renew` returns `true` the key is held until at least *call + lease* on
//! the server. A caller dropped while it waits (the lock's heartbeat drops its renew on stop)
//! leaves nothing behind on the stream: the task still reads the answer and credits it to the
//! send time it belongs to. A keepalive without an answer within the request timeout drops the
//! stream, so its late answer cannot be read as another's. Concurrent renewals of many keys are
//! served by the keepalive in flight (if it was sent late enough) or by the next one, so the
//! keepalive rate follows round trips, not held keys. The ownership check (a transaction) runs
//! beside the keepalive, so an acquire or a renew costs one round trip.
//! [`EtcdStore::session_cover`] reports how long from now the store knows its session to live.
//!
//! A keepalive answered with TTL ≤ 0 (or "lease not found") means the session lapsed: its keys
//! are deleted by etcd, every later renew of them returns `false`, and new grants go to a new
//! session. etcd never revives an expired lease (a keepalive that reaches it late, for example
//! after a pause, waits for the revoke and gets "not found"), and no request of this store
//! re-creates a deleted lock key: renew only reads it, and moving a grant onto another session
//! compares holder and fence.
//!
//! *Keys whose holders stop renewing.* Because keys share a session, a key whose holder stopped
//! renewing (without a release) would be kept alive by other keys' renewals. So the store tracks
//! every grant it may have made, by key and holder, with the end of the lease its holder asked
//! for (*send time of its last acquire or renew + lease*):
//!
//! - An acquire is tracked **before** it is sent. If its answer is lost (timed out, connection
//!   dropped) etcd may still apply it; the entry stays, and once its lease has passed the store
//!   reads the key and, if the acquire did land, deletes it.
//! - Before each keepalive the store deletes every key of the session whose lease has passed,
//!   comparing holder, fence and lease. An entry is forgotten only once etcd **confirmed** its
//!   delete (or that the key is no longer that grant); a failed delete is retried before the
//!   next keepalive, and **no keepalive is sent while such a delete is unconfirmed** (that
//!   keepalive fails with a transient error; renewals retry it). So a lost holder's key outlives
//!   its lease by at most one TTL plus the time etcd takes to answer again.
//! - A renew that comes after its grant's lease has passed returns `false`, even if etcd still
//!   has the key: a renew only extends a live lease, and the holder must acquire again. The same
//!   when the sweep took the grant while the renew was in flight. An acquire by the same holder
//!   while the sweep is deleting its old grant first finishes that delete (confirmed by etcd),
//!   so a delete that lands late can never remove a grant reported after it.
//!
//! A keepalive etcd applies late (sent before a holder's lease passed, applied after a pause of
//! etcd) extends the whole session by one TTL from the moment etcd applies it, so a key abandoned
//! meanwhile can live up to one TTL past that moment; the next keepalive deletes it first, and
//! without further keepalives the session lease itself expires.
//!
//! *TTL.* etcd leases are whole seconds, and the server raises short ones to its minimum
//! (1.5 × election timeout, rounded up: 2 s with default settings). The store declares a 1 s
//! granularity and a 2 s minimum ([`Capabilities`](lease_core::Capabilities)), asks for the
//! lease rounded up to whole seconds, and uses the TTL etcd granted; a grant shorter than asked
//! is an error. Expiry lags by up to about half a second more in etcd.
//!
//! *Fences.* Because etcd deletes an expired key, a holder that retakes its own expired lease
//! gets a new grant with a larger fence (`stable_retake` is false); that is safe, only less
//! convenient. The fence counter survives restarts of the cluster; deleting it by hand restarts
//! the key's fences at 1, which a fenced resource would then refuse.
//!
//! *Waiting.* [`wait_for_change`](lease_core::LeaseStore::wait_for_change) reads the lock key and
//! watches it from the revision it read: it returns as soon as the key is deleted or changes (or
//! at once if it is vacant), and after `max_wait` at the latest. A failed watch waits out
//! `max_wait`, so it costs latency, never a busy loop.
//!
//! # Queued grants
//!
//! With [`EtcdStoreBuilder::queued_grants`] (URL `?queued_grants=true`; off by default),
//! waiting locks queue in etcd and a release hands the key to the oldest live waiter in its own
//! transaction ([`Capabilities::queued_grants`](lease_core::Capabilities::queued_grants), the
//! rules in [`Enqueued`](lease_core::Enqueued)).
//!
//! It stays **off by default** while the Redis and SQLite stores have it on: in one bench run
//! (2026-12-02, `benches/README.md`) it was fairer than the barging mode (Jain 1.000 against
//! 0.987, worst wait 108 ms against 709 ms) and handed over faster at 1 ms holds (p50 1.1–1.9 ms
//! against 2.1–3.2 ms for 1–8 waiters), but one key shared by 8 processes × 1 ms holds did 133
//! acquisitions/s queued against 241/s barging: each handover is a transaction that also
//! compares and moves the waiter keys, and the granted waiter learns of it by a watch event,
//! while a barging releaser that loops back takes the key in one transaction. The default is
//! the mode that keeps one-key throughput; turn the queue on where order and tail waits matter
//! more.
//!
//! *Keys.* A queued holder has a **waiter key** `<prefix>q/<len>/k/<lease id>/<holder>` (`len`:
//! the byte length of `k`, so the queues of `a` and `a/b` stay apart; `lease id`: its store's
//! session lease, 16 hex digits), whose value is the holder, put on that session lease. The
//! queue's order is the waiter keys' create revision; `enqueue` again puts the same key, which
//! keeps its create revision, so a waiter keeps its place. Nothing else changes: the holder is
//! still the lock key `<prefix>l/k`, and the fence the counter's version, on every path (plain
//! acquire, handover, claim after an expiry, break). So a store with queued grants and one
//! without may share keys: every compare of both still guards the same lock key (the plain
//! store does not queue: its `try_lock` can take a free key past a queue, but never a held one),
//! fences keep increasing across both, and a deployment with today's records (counter versions
//! 1, 2, 3…) carries on from its last fence. (A fence from create revisions, as in etcd's
//! `concurrency.Mutex`, would need every path and every record to move to revisions at once.)
//!
//! *Acquire* (`try_lock`, `enqueue`) is one transaction: `If CreateRevision(lock) == 0` and the
//! queue is empty (a range compare `CreateRevision([q, q_end)) == 0`: etcd compares an empty
//! range as a key with revision 0, checked by the tests against the real server) `Then` grant as
//! a plain acquire does, `Else` put the waiter key (for `enqueue`) and read the lock key, the
//! counter and the head of the queue (a range sorted by create revision, limit 1). A key held
//! by the caller is extended with its fence; held by another, the answer is
//! [`Waiting`](lease_core::Enqueued::Waiting) with the counter's version, the key's latest fence.
//! A vacant key with a queue (its holder's lease expired, or a plain store released it) is
//! handed to the head at once, whoever called: newcomers never barge past a live waiter.
//!
//! *Release* is one transaction when the head is known: `If Value(lock) == holder,
//! Version(counter) == fence, CreateRevision(head) == its revision Then Put(counter, head's
//! holder), Put(lock, head's holder, lease = head's lease), Delete(head), Get(next head)`. The
//! head comes from the grant's last look at the queue: the handover that made the grant, each
//! renewal (which reads the head in its own transaction) or, for a grant learnt by watch, one
//! read made off the handover's path; failing those, a member-local read. A stale head only
//! costs a failed compare, whose `Else` branch reads the true head, and another try. A put on a
//! lease etcd no longer has fails the whole transaction ("requested lease not found"): that
//! waiter's process is gone, so its key is deleted and the next one tried. With an empty queue
//! (`If` … `CreateRevision([q, q_end)) == 0`) the release deletes the lock key as a plain
//! release does. [`leave_queue`](lease_core::LeaseStore::leave_queue) deletes the holder's
//! waiter keys in one transaction and, if the key was handed to it meanwhile, releases that
//! grant with handover.
//!
//! *The waiter's wake-up.* The counter is put with the new holder as its value by every queued
//! grant (plain grants and breaks put an empty value), so [`wait_for_grant`](
//! lease_core::LeaseStore::wait_for_grant) reads the lock key and the counter, then watches
//! both on one watch stream from that revision: a counter event whose value is the holder is its
//! grant, with the event's version as the fence, so a handoff costs one Raft write and one watch
//! event; a delete of the lock key (an expiry, a plain release) returns `None`, and the waiter's
//! next `enqueue` hands the key to the head. Every waiter of a key watches it: a handover is
//! one event to each of them, and only the one granted acts; a delete wakes them all, and each
//! refreshes its entry (the first call hands the key to the head), which is the one herd left,
//! on expiry only.
//!
//! *Liveness of waiters.* Waiter keys live on the session leases, so a process's entries die
//! with its session (a crash, a `SIGKILL`, a pause longer than the TTL): nothing is left
//! behind, and a release skips them because etcd has deleted them. While the process lives, its
//! store deletes a waiter key once the waiter's patience (from its last `enqueue`, on this
//! host's boot clock) has passed, before each keepalive of the session and when a release of
//! its own comes to it; a waiter that has not called `enqueue` for longer than its lease is taken
//! out too, together with any grant made to it meanwhile, so a grant to a waiter that stopped
//! asking lapses like a grant its holder stopped renewing (see above). A grant made to a waiter
//! lasts until *its last `enqueue` + lease* by its store's sweep, which is what the lock counts
//! on when it adopts a grant reported by `wait_for_grant`.
//!
//! *Cluster.* Requests go to any member (with "require leader", so a member cut off from the
//! leader refuses rather than hangs); transactions and lease operations are linearized by the
//! leader, so a leader change never grants a key twice. A request that never reached a member
//! (connection refused, no leader) is sent again at once, likely to another member; a broken
//! keepalive stream or watch is reopened. Every request is bounded by the request timeout (5 s by
//! default); a request in flight while the leader dies may hang until then, and comes back as a
//! transient error.
//!
//! *Auth.* With user and password (in the URL, `etcd://user:password@host:2379/prefix`, or
//! [`EtcdStoreBuilder::user`]), etcd hands out a token that expires when idle (300 s by
//! default, `--auth-token-ttl`). A request refused for an expired token is re-authenticated and
//! retried once; if that fails the error reaches the caller (a renewal retries it until the
//! lock's deadline, then the lock reports the loss). Passwords never appear in `Debug` output,
//! errors or logs, nor do user names (a token passed as `etcd://TOKEN@host` is one).
//!
//! # Fenced writes in etcd
//!
//! Data in the same etcd can be written only while the grant is still current, in one
//! transaction: compare `Value(store.lock_key(k)) == holder` and
//! `Version(store.fence_key(k)) == fence`, then put. For data elsewhere, store the fence beside
//! the data and compare it there ([`lease_core::FenceGate`] and the recipes in lease-core).
//! Compare the counter's version only: its value is the last queued grant's holder, or empty.
//!
//! # Features
//!
//! - `tls`: `etcds://` URLs and `EtcdStoreBuilder::tls` (rustls, system roots; client
//!   certificates through `etcd_client::TlsOptions`).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod config;
mod error;
mod grants;
mod session;
mod store;

pub use config::{DEFAULT_PREFIX, EtcdStoreBuilder};
pub use etcd_client;
pub use store::EtcdStore;
