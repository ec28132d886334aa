//! What the harness sends its worker processes (a [`Job`] on the command line, commands on
//! stdin) and what they answer (one JSON [`Msg`] per stdout line).

use leasehold::Scheme;
use serde::{Deserialize, Serialize};

/// A store every worker of one run opens: `location` is a URL of `scheme`'s store, as
/// [`leasehold::open`] takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoreTarget {
    #[serde(with = "by_name")]
    pub(crate) scheme: Scheme,
    pub(crate) location: String,
}

/// A [`Scheme`] on the wire: its name.
mod by_name {
    use leasehold::Scheme;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(scheme: &Scheme, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(scheme.name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Scheme, D::Error> {
        let name = String::deserialize(d)?;
        Scheme::named(&name).ok_or_else(|| D::Error::custom(format!("unknown store `{name}`")))
    }
}

/// The implementation a worker measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Imp {
    /// The raw store round trip of the same shape as an acquire.
    Floor,
    /// The same round trip the fastest way a client can make it, where the store has a faster
    /// way than the floor's (Redis: a dedicated blocking connection, request then response).
    FloorFastest,
    /// `CrossProcessLock` with its default configuration, over the store as configured (on a
    /// store with queued grants: queued).
    Ours,
    /// `CrossProcessLock` with `barging(true)`, over the same store: every release wakes every
    /// waiter and they race. Measured only where the store has queued grants, beside `ours`.
    OursBarging,
    /// `CrossProcessLock` configured as the ancestor design.
    Ancestor,
    /// The store's `try_lock`/`release` called directly, without the lock around it.
    StoreTryLock,
    /// etcd's own Lock RPC (`etcd-client`), with a session lease.
    EtcdLockRpc,
    /// The `rslock` crate (Redlock over one server).
    Rslock,
    /// redis-py's `Lock` (Python), in a `python3` process of its own that speaks the worker
    /// protocol (`benches/peers/redis_py.py`).
    RedisPy,
    /// PostgreSQL's session advisory lock (`pg_advisory_lock`), on a connection of its own:
    /// queued in the server, FIFO, handed over by the server at unlock.
    PgAdvisoryLock,
}

/// What an [`Imp`] is, for the scenarios that pick their contenders by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A raw store round trip (`floor`, `floor-fastest`).
    Floor,
    /// Our lock, in one of its modes or as the ancestor design.
    Lock,
    /// The store's own calls without the lock.
    Raw,
    /// A lock a user would pick instead of ours.
    Peer,
}

impl Imp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Imp::Floor => "floor",
            Imp::FloorFastest => "floor-fastest",
            Imp::Ours => "ours",
            Imp::OursBarging => "ours-barging",
            Imp::Ancestor => "ancestor",
            Imp::StoreTryLock => "store-try-lock",
            Imp::EtcdLockRpc => "etcd-lock-rpc",
            Imp::Rslock => "rslock",
            Imp::RedisPy => "redis-py",
            Imp::PgAdvisoryLock => "pg-advisory-lock",
        }
    }

    pub(crate) fn kind(self) -> Kind {
        match self {
            Imp::Floor | Imp::FloorFastest => Kind::Floor,
            Imp::Ours | Imp::OursBarging | Imp::Ancestor => Kind::Lock,
            Imp::StoreTryLock => Kind::Raw,
            Imp::EtcdLockRpc | Imp::Rslock | Imp::RedisPy | Imp::PgAdvisoryLock => Kind::Peer,
        }
    }
}

/// One worker process's assignment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) store: StoreTarget,
    pub(crate) imp: Imp,
    /// Overrides the lease of `ours` (ms); `None` keeps the default.
    pub(crate) lease_ms: Option<u64>,
    pub(crate) role: Role,
    /// Run the scenario in a task spawned on the runtime's worker threads (`--in-task`) instead
    /// of on the main thread, in `block_on`.
    #[serde(default)]
    pub(crate) in_task: bool,
}

/// What a worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Role {
    /// Measures the raw store operation `samples` times after `warmup`, each after `idle_us`
    /// of sleep if that is not zero.
    Floor {
        samples: usize,
        warmup: usize,
        #[serde(default)]
        idle_us: u64,
    },
    /// Acquires and releases one free key `samples` times after `warmup`.
    Uncontended { samples: usize, warmup: usize },
    /// Holds a key and acquires it again `samples` times in the same process.
    Reentrant { samples: usize },
    /// Driven by the parent: request, report `acquired`, wait for `release`, hold `hold_us`
    /// more, release, report `released`, wait for `go`; until `stop`.
    Driven { key: String, hold_us: u64 },
    /// Free-running: acquire one of `keys` keys (at random), hold `hold_us`, release, for
    /// `duration_ms`; reports counts and the worst wait.
    FreeRun {
        key: String,
        keys: u32,
        hold_us: u64,
        duration_ms: u64,
    },
    /// Acquires `keys` keys, holds them for `hold_ms` while the heartbeat renews them, and
    /// reports store operations and lost leases.
    Renewal { keys: u32, hold_ms: u64 },
    /// Acquires `key`, reports `acquired`, and holds it until killed.
    CrashHolder { key: String },
}

/// A worker's report, one JSON object per stdout line. Times are `CLOCK_BOOTTIME` nanoseconds,
/// comparable between processes of one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "msg")]
pub(crate) enum Msg {
    Ready,
    Waiting {
        t_req: u64,
    },
    Acquired {
        t_req: u64,
        t_acq: u64,
    },
    Released {
        t_rel: u64,
    },
    Result {
        data: serde_json::Value,
    },
    Error {
        error: String,
    },
    /// Sent by the parent's reader when the worker's stdout ends.
    Exited,
}

/// Counters of store calls, as seen through the counting wrapper.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct OpCounts {
    pub(crate) try_lock: u64,
    pub(crate) renew: u64,
    pub(crate) release: u64,
    pub(crate) wait: u64,
    /// Wire operations that the wrapper cannot see (etcd keepalives), if known.
    pub(crate) keepalives: Option<u64>,
}

impl OpCounts {
    /// Store round trips: every call but the waits.
    pub(crate) fn ops(&self) -> u64 {
        self.try_lock + self.renew + self.release
    }
}
