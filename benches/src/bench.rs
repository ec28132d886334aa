//! The scenarios, driven from the parent process: each one starts its worker processes, feeds
//! them commands, and turns their reports into [`Record`]s.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use lease_core::Capabilities;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backend;
use crate::fleet::Fleet;
use crate::proto::{Imp, Job, Kind, Msg, Role, StoreTarget};
use crate::stats::{self, jain, summarize};
use crate::worker::now_ns;

/// The scenarios, in the order they run.
pub(crate) const SCENARIOS: &[&str] = &[
    "floor",
    "uncontended",
    "reentrant",
    "handoff",
    "one-key",
    "many-keys",
    "renewal",
    "fairness",
    "crash",
];

/// One measurement: scenario × implementation × parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) store: String,
    pub(crate) store_version: String,
    pub(crate) scenario: String,
    pub(crate) implementation: String,
    pub(crate) params: BTreeMap<String, Value>,
    /// What is measured, e.g. `acquire latency` or `acquisitions/s`.
    pub(crate) metric: String,
    /// `us` for latencies (p50/p99/p99.9 and spread), else the unit of `value`.
    pub(crate) unit: String,
    pub(crate) p50: Option<f64>,
    pub(crate) p99: Option<f64>,
    pub(crate) p999: Option<f64>,
    /// Min and max of the per-run p50 over `runs`.
    pub(crate) spread_p50: Option<(f64, f64)>,
    /// The headline figure: p50 for latencies, else the metric's value (median over runs).
    pub(crate) value: Option<f64>,
    /// The figure compared with the store's floor, and how it was compared.
    pub(crate) ratio_to_floor: Option<f64>,
    pub(crate) samples: usize,
    pub(crate) runs: usize,
    pub(crate) extra: BTreeMap<String, Value>,
    pub(crate) error: Option<String>,
}

/// The settings of one run over one store.
pub(crate) struct Ctx<'a> {
    pub(crate) target: StoreTarget,
    pub(crate) version: String,
    /// What the store declares, for the leases it grants.
    pub(crate) caps: Capabilities,
    pub(crate) quick: bool,
    pub(crate) runs: usize,
    /// Workers run their scenario in a spawned task (see [`Job::in_task`]).
    pub(crate) in_task: bool,
    pub(crate) log: &'a std::fs::File,
    pub(crate) imps: Vec<Imp>,
    /// What each peer in `imps` is (e.g. `rslock 0.7.0`), for its records.
    pub(crate) peer_versions: BTreeMap<Imp, String>,
    /// The store's floor p50 (µs), once measured.
    pub(crate) floor_p50: Option<f64>,
    /// A counter for unique key names.
    pub(crate) seq: u64,
}

impl Ctx<'_> {
    fn job(&self, imp: Imp, role: Role) -> Job {
        Job {
            store: self.target.clone(),
            imp,
            lease_ms: None,
            role,
            in_task: self.in_task,
        }
    }

    fn key(&mut self, what: &str) -> String {
        self.seq += 1;
        format!(
            "bench/{}/{what}/{}/{}",
            std::process::id(),
            now_ns(),
            self.seq
        )
    }

    fn record(&self, scenario: &str, imp: &str, metric: &str, unit: &str) -> Record {
        Record {
            store: self.target.scheme.name().to_owned(),
            store_version: self.version.clone(),
            scenario: scenario.to_owned(),
            implementation: imp.to_owned(),
            params: BTreeMap::new(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            p50: None,
            p99: None,
            p999: None,
            spread_p50: None,
            value: None,
            ratio_to_floor: None,
            samples: 0,
            runs: self.runs,
            extra: BTreeMap::new(),
            error: None,
        }
    }

    /// A latency record from per-run samples (ns), with its ratio to the floor.
    fn latency(&self, mut r: Record, runs: &[Vec<u64>]) -> Record {
        let all: Vec<u64> = runs.iter().flatten().copied().collect();
        if let Some(s) = summarize(&all) {
            r.p50 = Some(s.p50);
            r.p99 = Some(s.p99);
            r.p999 = Some(s.p999);
            r.value = Some(s.p50);
            r.samples = s.n;
            r.extra.insert("max".into(), json!(s.max));
            r.ratio_to_floor = self.floor_p50.map(|f| s.p50 / f);
        }
        r.spread_p50 = stats::spread(runs);
        r
    }

    /// Settle time before a waiter counts as parked: its first `try_lock` was refused and it
    /// waits for a change.
    fn settle(&self) -> Duration {
        backend::of(self.target.scheme).settle()
    }

    /// Our lock in each mode the store has (queued, and barging beside it on a store with
    /// queued grants), then the ancestor configuration.
    fn locks(&self) -> Vec<Imp> {
        self.of_kind(Kind::Lock).collect()
    }

    fn peers(&self) -> impl Iterator<Item = Imp> + '_ {
        self.of_kind(Kind::Peer)
    }

    fn of_kind(&self, kind: Kind) -> impl Iterator<Item = Imp> + '_ {
        self.imps.iter().copied().filter(move |i| i.kind() == kind)
    }
}

async fn single(ctx: &Ctx<'_>, job: Job) -> anyhow::Result<Value> {
    let mut fleet = Fleet::spawn(&[job], ctx.log)?;
    fleet.ready().await?;
    let r = fleet.results().await;
    fleet.finish().await;
    Ok(r?.remove(0))
}

fn samples(v: &Value, field: &str) -> anyhow::Result<Vec<u64>> {
    serde_json::from_value(v[field].clone()).with_context(|| format!("field `{field}` of {v}"))
}

fn num(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(0)
}

/// A progress callback: called with a label for each cell as it starts.
pub(crate) type Progress<'p> = &'p dyn Fn(&str);

/// How many cells a scenario has, for the progress bar: `imps` implementations, of which
/// `locks` are our lock's modes and the ancestor, and `peers` are peers.
pub(crate) fn cells(scenario: &str, quick: bool, imps: usize, locks: usize, peers: usize) -> u64 {
    (match scenario {
        "floor" => 1 + idle_floors(quick).len(),
        "uncontended" => imps,
        "reentrant" => 2,
        "handoff" => handoff_grid(quick).len() * (locks + peers),
        "one-key" => one_key_grid(quick).len() * (locks + peers),
        "many-keys" => many_keys_grid(quick).len() * 2,
        "renewal" => renewal_grid(quick).len() * 2,
        "fairness" | "crash" => locks + if quick { 0 } else { peers },
        _ => 0,
    } as u64)
        .max(1)
}

/// The idle times (ms) after which the floor is measured again, and the samples at each: the
/// handoff grid's holds, after which a holder releases.
fn idle_floors(quick: bool) -> &'static [(u64, usize)] {
    if quick {
        &[(10, 30)]
    } else {
        &[(1, 300), (10, 200), (100, 40)]
    }
}

fn handoff_grid(quick: bool) -> Vec<(u64, usize)> {
    let (holds, waiters): (&[u64], &[usize]) = if quick {
        (&[0, 10], &[1, 2])
    } else {
        (&[0, 1, 10, 100], &[1, 2, 8])
    };
    holds
        .iter()
        .flat_map(|&h| waiters.iter().map(move |&w| (h, w)))
        .collect()
}

/// Processes × hold (ms): back-to-back acquisitions at every process count, and the goal's
/// cell of the most processes with 1 ms holds.
fn one_key_grid(quick: bool) -> &'static [(usize, u64)] {
    if quick {
        &[(1, 0), (4, 0), (4, 1)]
    } else {
        &[(1, 0), (2, 0), (4, 0), (8, 0), (8, 1)]
    }
}

fn many_keys_grid(quick: bool) -> &'static [u32] {
    if quick { &[1, 100] } else { &[1, 100, 10_000] }
}

fn renewal_grid(quick: bool) -> &'static [u32] {
    if quick { &[100] } else { &[1, 100, 10_000] }
}

/// Runs one scenario over every implementation; a failed cell becomes a record with `error`.
pub(crate) async fn run(ctx: &mut Ctx<'_>, scenario: &str, progress: Progress<'_>) -> Vec<Record> {
    let mut out = Vec::new();
    match scenario {
        "floor" => {
            progress("floor");
            let r = floor(ctx).await;
            push(ctx, &mut out, "floor", "floor", r);
        }
        "uncontended" => {
            for imp in ctx.imps.clone() {
                progress(&format!("uncontended {}", imp.name()));
                let r = uncontended(ctx, imp).await;
                push(ctx, &mut out, "uncontended", imp.name(), r);
            }
        }
        "reentrant" => {
            for imp in [Imp::Ours, Imp::Ancestor] {
                progress(&format!("reentrant {}", imp.name()));
                let r = reentrant(ctx, imp).await;
                push(ctx, &mut out, "reentrant", imp.name(), r);
            }
        }
        "handoff" => {
            let imps: Vec<Imp> = ctx.locks().into_iter().chain(ctx.peers()).collect();
            for imp in imps {
                for (hold, waiters) in handoff_grid(ctx.quick) {
                    progress(&format!(
                        "handoff {} hold {hold} ms, {waiters} waiters",
                        imp.name()
                    ));
                    let r = handoff(ctx, imp, hold, waiters).await;
                    push(ctx, &mut out, "handoff", imp.name(), r);
                }
            }
        }
        "one-key" => {
            let imps: Vec<Imp> = ctx.locks().into_iter().chain(ctx.peers()).collect();
            for imp in imps {
                for &(n, hold_ms) in one_key_grid(ctx.quick) {
                    progress(&format!(
                        "one key {} × {n} processes, hold {hold_ms} ms",
                        imp.name()
                    ));
                    let r = one_key(ctx, imp, n, hold_ms).await;
                    push(ctx, &mut out, "one-key", imp.name(), r);
                }
            }
        }
        "many-keys" => {
            for &m in many_keys_grid(ctx.quick) {
                for imp in [Imp::Floor, Imp::Ours] {
                    progress(&format!("{m} keys {}", imp.name()));
                    let r = many_keys(ctx, imp, m).await;
                    push(ctx, &mut out, "many-keys", imp.name(), r);
                }
            }
        }
        "renewal" => {
            for imp in [Imp::Ours, Imp::Ancestor] {
                for &l in renewal_grid(ctx.quick) {
                    progress(&format!("renewal {} {l} keys", imp.name()));
                    let r = renewal(ctx, imp, l).await;
                    push(ctx, &mut out, "renewal", imp.name(), r);
                }
            }
        }
        "fairness" => {
            let peers: Vec<Imp> = if ctx.quick {
                vec![]
            } else {
                ctx.peers().collect()
            };
            for imp in ctx.locks().into_iter().chain(peers) {
                progress(&format!("fairness {}", imp.name()));
                let r = fairness(ctx, imp).await;
                push(ctx, &mut out, "fairness", imp.name(), r);
            }
        }
        "crash" => {
            let peers: Vec<Imp> = if ctx.quick {
                vec![]
            } else {
                ctx.peers().collect()
            };
            for imp in ctx.locks().into_iter().chain(peers) {
                progress(&format!("crash takeover {}", imp.name()));
                let r = crash(ctx, imp).await;
                push(ctx, &mut out, "crash", imp.name(), r);
            }
        }
        other => {
            let mut r = ctx.record(other, "-", "-", "-");
            r.error = Some(format!("unknown scenario `{other}`"));
            out.push(r);
        }
    }
    out
}

fn push(
    ctx: &Ctx<'_>,
    out: &mut Vec<Record>,
    scenario: &str,
    imp: &str,
    r: anyhow::Result<Vec<Record>>,
) {
    let version = ctx
        .imps
        .iter()
        .find(|i| i.name() == imp)
        .and_then(|i| ctx.peer_versions.get(i));
    match r {
        Ok(mut rs) => {
            if let Some(v) = version {
                for r in &mut rs {
                    r.extra.insert("version".into(), json!(v));
                }
            }
            out.extend(rs)
        }
        Err(e) => {
            let mut r = ctx.record(scenario, imp, "-", "-");
            r.error = Some(format!("{e:#}"));
            out.push(r);
        }
    }
}

async fn floor(ctx: &mut Ctx<'_>) -> anyhow::Result<Vec<Record>> {
    let (n, warmup) = if ctx.quick { (200, 20) } else { (2000, 100) };
    let backend = backend::of(ctx.target.scheme);
    let fastest = backend
        .fastest_floor(&ctx.target.location)
        .map(|(what, _)| what);
    let mut out = Vec::new();
    let rows = [
        (Imp::Floor, Some(backend.floor_operation())),
        (Imp::FloorFastest, fastest),
    ];
    for (imp, what) in rows {
        let Some(what) = what else { continue };
        let role = Role::Floor {
            samples: n,
            warmup,
            idle_us: 0,
        };
        let runs = floor_runs(ctx, imp, &role).await?;
        let mut r = ctx.record("floor", imp.name(), "round trip", "us");
        r.params.insert("operation".into(), json!(what));
        out.push(ctx.latency(r, &runs));
    }
    // Ratios are to the fastest floor: the last row measured.
    ctx.floor_p50 = out.last().and_then(|r| r.p50);
    // The same round trip after the idle times a handoff's holder holds: the processes and the
    // server have slept that long, and a round trip that wakes them costs more than one in a
    // busy loop. What a handoff after a hold of that length can be compared with.
    let physical = if fastest.is_some() {
        Imp::FloorFastest
    } else {
        Imp::Floor
    };
    for &(idle_ms, n) in idle_floors(ctx.quick) {
        let role = Role::Floor {
            samples: n,
            warmup: 3,
            idle_us: idle_ms * 1000,
        };
        let runs = floor_runs(ctx, physical, &role).await?;
        let mut r = ctx.record("floor", physical.name(), "round trip after idle", "us");
        r.params.insert("idle_ms".into(), json!(idle_ms));
        out.push(ctx.latency(r, &runs));
    }
    for r in &mut out {
        r.ratio_to_floor = r.p50.zip(ctx.floor_p50).map(|(p, f)| p / f);
    }
    Ok(out)
}

/// The samples of `--runs` floor workers of `imp` doing `role`, one run each.
async fn floor_runs(ctx: &Ctx<'_>, imp: Imp, role: &Role) -> anyhow::Result<Vec<Vec<u64>>> {
    let mut runs = Vec::new();
    for _ in 0..ctx.runs {
        let v = single(ctx, ctx.job(imp, role.clone())).await?;
        runs.push(samples(&v, "floor")?);
    }
    Ok(runs)
}

async fn uncontended(ctx: &mut Ctx<'_>, imp: Imp) -> anyhow::Result<Vec<Record>> {
    let slow = imp == Imp::Ancestor; // every release waits 50 ms
    let (n, warmup) = match (ctx.quick, slow) {
        (true, true) => (10, 2),
        (true, false) => (100, 10),
        (false, true) => (60, 5),
        (false, false) => (1000, 50),
    };
    let mut acq = Vec::new();
    let mut rel = Vec::new();
    let mut ops = 0;
    let mut iters = 0;
    for _ in 0..ctx.runs {
        let v = single(ctx, ctx.job(imp, Role::Uncontended { samples: n, warmup })).await?;
        acq.push(samples(&v, "acquire")?);
        rel.push(samples(&v, "release")?);
        ops += num(&v, "store_ops");
        iters += num(&v, "iterations");
    }
    let mut a = ctx.latency(
        ctx.record("uncontended", imp.name(), "acquire latency", "us"),
        &acq,
    );
    let mut b = ctx.latency(
        ctx.record("uncontended", imp.name(), "release latency", "us"),
        &rel,
    );
    if matches!(imp.kind(), Kind::Lock | Kind::Raw) && iters > 0 {
        let per = ops as f64 / iters as f64;
        a.extra
            .insert("store_ops_per_acquire_release".into(), json!(per));
        b.extra
            .insert("store_ops_per_acquire_release".into(), json!(per));
    }
    Ok(vec![a, b])
}

async fn reentrant(ctx: &mut Ctx<'_>, imp: Imp) -> anyhow::Result<Vec<Record>> {
    let n = if ctx.quick { 1000 } else { 10_000 };
    let mut runs = Vec::new();
    let mut calls = 0;
    for _ in 0..ctx.runs {
        let v = single(ctx, ctx.job(imp, Role::Reentrant { samples: n })).await?;
        runs.push(samples(&v, "reacquire")?);
        calls += num(&v, "try_lock_calls") + num(&v, "release_calls");
    }
    let mut r = ctx.latency(
        ctx.record("reentrant", imp.name(), "re-acquire latency", "us"),
        &runs,
    );
    r.extra.insert("store_calls".into(), json!(calls));
    r.extra.insert(
        "store_calls_per_reacquire".into(),
        json!(calls as f64 / (n * ctx.runs) as f64),
    );
    Ok(vec![r])
}

/// Handoff: `waiters + 1` processes on one key. Each round: once every other process has been
/// waiting for the settle time, the holder is told to release after `hold`; the sample is the
/// new holder's `t_acquired` minus the old holder's `t_release` (`CLOCK_BOOTTIME`, same host).
/// The old holder queues again only after the new one has the key, so every sample is a real
/// handoff to a process that was already waiting.
async fn handoff(
    ctx: &mut Ctx<'_>,
    imp: Imp,
    hold_ms: u64,
    waiters: usize,
) -> anyhow::Result<Vec<Record>> {
    let slow = matches!(imp, Imp::Ancestor | Imp::Rslock | Imp::RedisPy) || hold_ms >= 100;
    let (n, warmup) = match (ctx.quick, slow) {
        (true, _) => (10, 2),
        (false, true) => (30, 3),
        (false, false) => (100, 5),
    };
    let mut runs = Vec::new();
    let mut self_handoffs = 0;
    for _ in 0..ctx.runs {
        let key = ctx.key("handoff");
        let jobs: Vec<Job> = (0..=waiters)
            .map(|_| {
                ctx.job(
                    imp,
                    Role::Driven {
                        key: key.clone(),
                        hold_us: hold_ms * 1000,
                    },
                )
            })
            .collect();
        let mut fleet = Fleet::spawn(&jobs, ctx.log)?;
        let r = drive_handoffs(&mut fleet, n + warmup, ctx.settle()).await;
        fleet.finish().await;
        let (mut s, selfs) = r?;
        s.drain(..warmup.min(s.len()));
        self_handoffs += selfs;
        runs.push(s);
    }
    let mut r = ctx.record("handoff", imp.name(), "handoff latency", "us");
    r.params.insert("hold_ms".into(), json!(hold_ms));
    r.params.insert("waiters".into(), json!(waiters));
    let mut r = ctx.latency(r, &runs);
    r.extra.insert("self_handoffs".into(), json!(self_handoffs));
    Ok(vec![r])
}

/// Drives rounds of handoffs; returns the samples (ns) and rounds where no handoff happened.
async fn drive_handoffs(
    fleet: &mut Fleet,
    rounds: usize,
    settle: Duration,
) -> anyhow::Result<(Vec<u64>, usize)> {
    #[derive(Clone, Copy, PartialEq)]
    enum St {
        Idle,
        Waiting,
        Holding,
        Released(u64),
    }
    fleet.ready().await?;
    fleet.send_all("go").await?;
    let n = fleet.len();
    let mut st = vec![St::Idle; n];
    let mut out = Vec::new();
    let mut selfs = 0;
    while out.len() < rounds {
        // Wait until one holds and every other waits.
        while !(st.iter().filter(|s| **s == St::Holding).count() == 1
            && st.iter().filter(|s| **s == St::Waiting).count() == n - 1)
        {
            let (i, m) = fleet.recv().await?;
            match m {
                Msg::Waiting { .. } => st[i] = St::Waiting,
                Msg::Acquired { .. } => st[i] = St::Holding,
                other => bail!("worker {i}: unexpected {other:?} while queueing"),
            }
        }
        tokio::time::sleep(settle).await;
        let holder = st.iter().position(|s| *s == St::Holding).unwrap_or(0);
        fleet.send(holder, "release").await?;
        // Wait for both the release and the next grant, in whatever order they arrive.
        let mut next: Option<(usize, u64)> = None;
        let mut t_rel: Option<u64> = None;
        while next.is_none() || t_rel.is_none() {
            let (i, m) = fleet.recv().await?;
            match m {
                Msg::Released { t_rel: t } if i == holder => {
                    t_rel = Some(t);
                    st[i] = St::Released(t);
                }
                Msg::Acquired { t_acq, .. } => {
                    next = Some((i, t_acq));
                    st[i] = St::Holding;
                }
                Msg::Waiting { .. } => st[i] = St::Waiting,
                other => bail!("worker {i}: unexpected {other:?} during a handoff"),
            }
        }
        let (Some((j, t_acq)), Some(t_rel)) = (next, t_rel) else {
            unreachable!("loop ends when both are known")
        };
        if j == holder {
            selfs += 1;
        } else {
            out.push(t_acq.saturating_sub(t_rel));
        }
        // The old holder queues again.
        st[holder] = St::Idle;
        fleet.send(holder, "go").await?;
    }
    Ok((out, selfs))
}

struct FreeRun {
    counts: Vec<u64>,
    worst_wait_ns: u64,
    waits: Vec<u64>,
    store_ops: u64,
    elapsed_s: f64,
}

async fn free_run(
    ctx: &mut Ctx<'_>,
    imp: Imp,
    procs: usize,
    keys: u32,
    hold_us: u64,
    duration_ms: u64,
) -> anyhow::Result<FreeRun> {
    let key = ctx.key("free");
    let jobs: Vec<Job> = (0..procs)
        .map(|_| {
            ctx.job(
                imp,
                Role::FreeRun {
                    key: key.clone(),
                    keys,
                    hold_us,
                    duration_ms,
                },
            )
        })
        .collect();
    let mut fleet = Fleet::spawn(&jobs, ctx.log)?;
    let r = async {
        fleet.ready().await?;
        fleet.results().await
    }
    .await;
    fleet.finish().await;
    let results = r?;
    let mut out = FreeRun {
        counts: Vec::new(),
        worst_wait_ns: 0,
        waits: Vec::new(),
        store_ops: 0,
        elapsed_s: 0.0,
    };
    for v in &results {
        out.counts.push(num(v, "count"));
        out.worst_wait_ns = out.worst_wait_ns.max(num(v, "worst_wait_ns"));
        out.waits.extend(samples(v, "waits")?);
        out.store_ops += num(v, "store_ops");
        out.elapsed_s = out.elapsed_s.max(num(v, "elapsed_ns") as f64 / 1e9);
    }
    Ok(out)
}

async fn one_key(
    ctx: &mut Ctx<'_>,
    imp: Imp,
    procs: usize,
    hold_ms: u64,
) -> anyhow::Result<Vec<Record>> {
    let ms = if ctx.quick { 1000 } else { 3000 };
    let mut rates = Vec::new();
    let mut ops = 0;
    let mut total = 0;
    for _ in 0..ctx.runs {
        let f = free_run(ctx, imp, procs, 1, hold_ms * 1000, ms).await?;
        let sum: u64 = f.counts.iter().sum();
        rates.push(sum as f64 / f.elapsed_s.max(1e-9));
        ops += f.store_ops;
        total += sum;
    }
    let mut r = ctx.record("one-key", imp.name(), "acquisitions/s", "per s");
    r.params.insert("processes".into(), json!(procs));
    r.params.insert("hold_ms".into(), json!(hold_ms));
    r.params.insert("duration_ms".into(), json!(ms));
    r.value = stats::median(&rates);
    r.samples = total as usize;
    // Wall time per acquisition, in floor round trips.
    r.ratio_to_floor = match (r.value, ctx.floor_p50) {
        (Some(v), Some(f)) if v > 0.0 => Some(1e6 / v / f),
        _ => None,
    };
    r.extra.insert(
        "store_ops_per_acquisition".into(),
        json!(ops as f64 / total.max(1) as f64),
    );
    Ok(vec![r])
}

async fn many_keys(ctx: &mut Ctx<'_>, imp: Imp, keys: u32) -> anyhow::Result<Vec<Record>> {
    let ms = if ctx.quick { 1000 } else { 3000 };
    let procs = if ctx.quick { 2 } else { 4 };
    let mut rates = Vec::new();
    let mut total = 0;
    for _ in 0..ctx.runs {
        let f = free_run(ctx, imp, procs, keys, 0, ms).await?;
        let sum: u64 = f.counts.iter().sum();
        rates.push(sum as f64 / f.elapsed_s.max(1e-9));
        total += sum;
    }
    let metric = if imp == Imp::Floor {
        "floor writes/s (saturation)"
    } else {
        "acquisitions/s"
    };
    let mut r = ctx.record("many-keys", imp.name(), metric, "per s");
    r.params.insert("keys".into(), json!(keys));
    r.params.insert("processes".into(), json!(procs));
    r.value = stats::median(&rates);
    r.samples = total as usize;
    Ok(vec![r])
}

async fn renewal(ctx: &mut Ctx<'_>, imp: Imp, keys: u32) -> anyhow::Result<Vec<Record>> {
    let hold_ms = if ctx.quick { 4000 } else { 8000 };
    let mut rates = Vec::new();
    let mut lost = 0;
    let mut ka = Vec::new();
    let mut acquired_in = Vec::new();
    for _ in 0..ctx.runs {
        let v = single(ctx, ctx.job(imp, Role::Renewal { keys, hold_ms })).await?;
        let held_s = num(&v, "held_ns") as f64 / 1e9;
        rates.push(num(&v, "store_ops") as f64 / held_s.max(1e-9));
        lost += num(&v, "lost");
        if let Some(k) = v["keepalives"].as_u64() {
            ka.push(k as f64 / held_s.max(1e-9));
        }
        acquired_in.push(num(&v, "acquired_in_ns") as f64 / 1e9);
    }
    let mut r = ctx.record("renewal", imp.name(), "store ops/s while holding", "per s");
    r.params.insert("keys".into(), json!(keys));
    r.params.insert("hold_ms".into(), json!(hold_ms));
    r.value = stats::median(&rates);
    // Summed over the runs: out of `keys × runs` held leases.
    r.extra.insert("missed_deadlines".into(), json!(lost));
    r.extra.insert(
        "held_leases".into(),
        json!(u64::from(keys) * ctx.runs as u64),
    );
    r.extra
        .insert("acquire_all_s".into(), json!(stats::median(&acquired_in)));
    if let Some(k) = stats::median(&ka) {
        r.extra.insert("etcd_keepalives_per_s".into(), json!(k));
    }
    Ok(vec![r])
}

async fn fairness(ctx: &mut Ctx<'_>, imp: Imp) -> anyhow::Result<Vec<Record>> {
    let ms = if ctx.quick { 2000 } else { 10_000 };
    let procs = 8;
    let mut jains = Vec::new();
    let mut counts_all = Vec::new();
    let mut worst = 0;
    let mut waits = Vec::new();
    for _ in 0..ctx.runs {
        let f = free_run(ctx, imp, procs, 1, 1000, ms).await?;
        jains.push(jain(&f.counts));
        worst = worst.max(f.worst_wait_ns);
        counts_all.push(f.counts);
        waits.push(f.waits);
    }
    let mut r = ctx.record("fairness", imp.name(), "Jain's index", "index");
    r.params.insert("processes".into(), json!(procs));
    r.params.insert("duration_ms".into(), json!(ms));
    r.params.insert("hold_ms".into(), json!(1));
    r.value = stats::median(&jains);
    let min = counts_all.iter().flatten().min().copied().unwrap_or(0);
    r.samples = counts_all.iter().flatten().sum::<u64>() as usize;
    r.extra.insert("counts".into(), json!(counts_all));
    r.extra.insert("min_count".into(), json!(min));
    r.extra
        .insert("worst_wait_ms".into(), json!(worst as f64 / 1e6));
    if let Some(s) = summarize(&waits.concat()) {
        r.extra.insert("wait_p50_ms".into(), json!(s.p50 / 1e3));
        r.extra.insert("wait_p99_ms".into(), json!(s.p99 / 1e3));
    }
    Ok(vec![r])
}

async fn crash(ctx: &mut Ctx<'_>, imp: Imp) -> anyhow::Result<Vec<Record>> {
    let tries = if ctx.quick { 1 } else { 2 };
    // Ours with the store's crash lease (2 s, etcd's minimum, instead of the 10 s default, so a
    // takeover takes seconds, not ten; SQLite with process liveness keeps the 10 s), the peers
    // with 2 s; the ancestor keeps its 500 ms (etcd rounds it up to 2 s).
    let lease_ms = match imp.kind() {
        Kind::Lock if imp == Imp::Ancestor => None,
        Kind::Lock => Some(backend::of(ctx.target.scheme).crash_lease_ms()),
        _ => Some(2000),
    };
    // The lease the store grants for it (the ancestor's own is 500 ms): on etcd, two seconds.
    let granted = ctx
        .caps
        .effective_lease(Duration::from_millis(lease_ms.unwrap_or(500)));
    let mut runs = Vec::new();
    for _ in 0..ctx.runs {
        let mut s = Vec::new();
        for _ in 0..tries {
            let key = ctx.key("crash");
            let mut holder = ctx.job(imp, Role::CrashHolder { key: key.clone() });
            holder.lease_ms = lease_ms;
            let mut waiter = ctx.job(imp, Role::Driven { key, hold_us: 0 });
            waiter.lease_ms = lease_ms;
            let mut fleet = Fleet::spawn(&[holder, waiter], ctx.log)?;
            let r = takeover(&mut fleet).await;
            fleet.finish().await;
            s.push(r?);
        }
        runs.push(s);
    }
    let mut r = ctx.record("crash", imp.name(), "takeover after SIGKILL", "us");
    r.params
        .insert("lease_ms".into(), json!(granted.as_millis() as u64));
    let mut r = ctx.latency(r, &runs);
    r.ratio_to_floor = None; // bounded by the lease, not by round trips
    Ok(vec![r])
}

async fn takeover(fleet: &mut Fleet) -> anyhow::Result<u64> {
    fleet.ready().await?;
    fleet.send(0, "go").await?;
    match fleet.recv().await? {
        (0, Msg::Acquired { .. }) => {}
        (i, m) => bail!("worker {i}: unexpected {m:?} before the holder acquired"),
    }
    fleet.send(1, "go").await?;
    match fleet.recv().await? {
        (1, Msg::Waiting { .. }) => {}
        (i, m) => bail!("worker {i}: unexpected {m:?} before the waiter queued"),
    }
    // Let the waiter park (and a polling waiter reach its longer backoff steps).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t_kill = now_ns();
    fleet.kill(0)?;
    loop {
        match fleet.recv().await {
            Ok((1, Msg::Acquired { t_acq, .. })) => return Ok(t_acq.saturating_sub(t_kill)),
            Ok(_) => {}
            // The killed holder's stdout ends: expected.
            Err(e) if e.to_string().contains("worker 0 exited") => {}
            Err(e) => return Err(e),
        }
    }
}
