//! `fleet`: N worker processes claim jobs from a shared job table under per-job leases and
//! complete each through a fenced write that the table checks.
//!
//! ```sh
//! cargo run --release -p lease-examples --bin fleet                       # embedded SQLite
//! cargo run --release -p lease-examples --bin fleet -- --workers 8 --duration 30s
//! cargo run --release -p lease-examples --features redis --bin fleet -- --store redis://127.0.0.1:6379
//! cargo run --release -p lease-examples --bin fleet -- --chaos kill,pause --seed 7 --history h/
//! cargo run --release -p lease-examples --bin fleet -- check h/
//! ```
//!
//! Exits non-zero if any job was completed twice, a worker failed, or (with `--chaos` or
//! `--history`) the checker found a violation.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lease_core::{CrossProcessLock, DynStore, Error, LeaseStore};
use lease_examples::broken::{Broken, BrokenStore, SlowWallClock};
use lease_examples::check::{self, Meta};
use lease_examples::history::{Event, History, Kind, Op, RecordingStore, now_ns};
use lease_examples::jobs::{Claim, Jobs, Write};
use lease_examples::nemesis::{Action, Fault, parse_faults, plan};
use lease_examples::redact;
use lease_examples::run_dir;
use lease_examples::stats::{WorkerReport, quantile};
use rustix::process::{Pid, Signal, kill_process};
use serde::{Deserialize, Serialize};

/// The lock's default backoff cap: the I8 bound is lease + this + 1 s.
const BACKOFF_CAP: Duration = Duration::from_millis(250);

#[derive(Parser)]
#[command(about = "A fleet of worker processes sharing jobs under leases, with fenced writes")]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// How long the workers run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The lock store: sqlite://PATH (default: a temp database), redis://…, etcd://…, or `redis`
    /// / `etcd` alone to start a throwaway local server (needed for --chaos store-restart).
    #[arg(long)]
    store: Option<String>,
    /// The lease of each job lock.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Jobs in the table.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// Simulated work per job (default 2ms; 20ms with --chaos).
    #[arg(long, value_parser = humantime::parse_duration)]
    work: Option<Duration>,
    /// Directory for the job table and the default lock database (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Faults to inject: any of kill,pause,store-restart,slow. Workers then contend for few jobs and
    /// write without checking their lease first, and the run is checked from its history.
    #[arg(long, value_name = "FAULTS")]
    chaos: Option<String>,
    /// Seed of the chaos schedule (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the run's history (JSONL, one file per process) to this new directory (default with
    /// --chaos: `history/` in --dir).
    #[arg(long)]
    history: Option<PathBuf>,
    /// A deliberately broken lock, for the checker's self-test.
    #[arg(long, hide = true, value_parser = Broken::parse)]
    broken: Option<Broken>,
}

#[derive(Subcommand)]
enum Role {
    /// Checks the histories of chaos runs against the lock's invariants: run directories, a
    /// directory of them, or the history files of one run.
    Check {
        /// Run directories (with run.json) or history files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// One worker process (started by the fleet).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Args)]
struct WorkerArgs {
    #[arg(long)]
    proc: u64,
    #[arg(long)]
    store: String,
    #[arg(long)]
    jobs_db: PathBuf,
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Duration,
    #[arg(long, value_parser = humantime::parse_duration)]
    work: Duration,
    /// Append events to this history file.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Chaos behaviour: contend for the lowest open jobs, split the work in steps, write without
    /// checking the lease first, and resend a release after a loss.
    #[arg(long)]
    chaos: bool,
    #[arg(long, value_parser = Broken::parse)]
    broken: Option<Broken>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Worker(args)) => worker(args).await,
        Some(Role::Check { paths }) => check_cmd(&paths),
        None => fleet(cli.run).await,
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn check_cmd(paths: &[PathBuf]) -> anyhow::Result<bool> {
    use std::io::Write as _;
    let runs = check::load(paths)?;
    let mut ok = true;
    let mut out = std::io::stdout().lock();
    for run in &runs {
        let report = check::check(run);
        ok &= report.ok();
        let lines = std::iter::once(report.line()).chain(report.violation_lines(10));
        for l in lines {
            // A closed pipe (`fleet check … | head`) ends the output, not the verdict.
            if writeln!(out, "{l}").is_err() {
                return Ok(ok && runs.iter().all(|r| check::check(r).ok()));
            }
        }
    }
    Ok(ok)
}

/// A store server the fleet started and may restart.
enum OwnedServer {
    #[cfg(feature = "redis")]
    Redis(lease_testkit::RedisServer),
    #[cfg(feature = "etcd")]
    Etcd(lease_testkit::EtcdCluster),
}

impl OwnedServer {
    fn restart(&mut self) -> anyhow::Result<()> {
        match self {
            #[cfg(feature = "redis")]
            OwnedServer::Redis(s) => {
                s.restart();
                Ok(())
            }
            #[cfg(feature = "etcd")]
            OwnedServer::Etcd(c) => {
                c.members[0].restart();
                if !c.wait_healthy(1, Duration::from_secs(20)) {
                    bail!("etcd did not become healthy within 20 s of its restart");
                }
                Ok(())
            }
            // Without the redis and etcd features there is no server to own.
            #[cfg(not(any(feature = "redis", feature = "etcd")))]
            _ => match *self {},
        }
    }
}

/// `--store redis` / `--store etcd`: a throwaway local server; anything else is a URL.
fn start_server(store: &str) -> anyhow::Result<Option<(OwnedServer, String)>> {
    match store {
        "redis" => start_redis().map(Some),
        "etcd" => start_etcd().map(Some),
        _ => Ok(None),
    }
}

#[cfg(feature = "redis")]
fn start_redis() -> anyhow::Result<(OwnedServer, String)> {
    // AOF with fsync per write, so fences survive the nemesis's restarts.
    let options = lease_testkit::RedisOptions {
        aof_always: true,
        ..Default::default()
    };
    let server = lease_testkit::RedisServer::start(options)
        .context("`--store redis` starts a local redis-server, which is not installed")?;
    let url = server.url();
    Ok((OwnedServer::Redis(server), url))
}

#[cfg(not(feature = "redis"))]
fn start_redis() -> anyhow::Result<(OwnedServer, String)> {
    bail!("`--store redis` needs the Redis store: build with `--features redis`")
}

#[cfg(feature = "etcd")]
fn start_etcd() -> anyhow::Result<(OwnedServer, String)> {
    let cluster = lease_testkit::EtcdCluster::start(lease_testkit::EtcdOptions::default())
        .context("`--store etcd` starts a local etcd, which is not installed")?;
    let url = format!("etcd://{}/fleet/", cluster.endpoint());
    Ok((OwnedServer::Etcd(cluster), url))
}

#[cfg(not(feature = "etcd"))]
fn start_etcd() -> anyhow::Result<(OwnedServer, String)> {
    bail!("`--store etcd` needs the etcd store: build with `--features etcd`")
}

fn scheme(url: &str) -> &str {
    url.split_once("://").map_or("sqlite", |(s, _)| s)
}

/// What a worker tells the fleet as it goes: one JSON line on its stdout per event, written at
/// once (stdout is line-buffered), so the fleet keeps a killed worker's counts up to its last
/// line. Each granted lease gets exactly one outcome ([`Tally::Completed`], [`Tally::FoundDone`],
/// [`Tally::Stale`] or [`Tally::GaveUp`]) unless its worker dies first. A worker that ends
/// normally also prints its [`WorkerReport`], which must agree with its tallies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Tally {
    /// A lease was granted, `us` microseconds after the lock call.
    Granted { us: u64 },
    /// The job's key was held by another worker: no lease.
    Busy,
    /// The lock call failed with a retryable error: no lease.
    Error,
    /// Outcome: the job table accepted the fenced completion.
    Completed,
    /// Outcome: the claim found the job completed already.
    FoundDone,
    /// Outcome: the table rejected the claim or the completion, a newer fence had claimed the job.
    Stale,
    /// Outcome: the lease was lost, or no longer held right before the write: nothing written.
    GaveUp,
    /// The lease's loss signal fired (besides its outcome).
    Lost,
}

/// Counts `t` in the worker's report and tells the fleet at once (see [`Tally`]).
fn tally(report: &mut WorkerReport, t: Tally) {
    match t {
        Tally::Granted { us } => {
            report.acquisitions += 1;
            report.acquire_us.push(us);
        }
        Tally::Busy => report.busy += 1,
        Tally::Completed => report.completed += 1,
        Tally::FoundDone => report.already_done += 1,
        Tally::Stale => report.stale_rejected += 1,
        Tally::Lost => report.losses += 1,
        Tally::Error | Tally::GaveUp => {}
    }
    if let Ok(line) = serde_json::to_string(&t) {
        println!("{line}");
    }
}

/// The tallies of one worker process, or summed over several.
#[derive(Debug, Default)]
struct Counts {
    granted: u64,
    busy: u64,
    errors: u64,
    completed: u64,
    found_done: u64,
    stale: u64,
    gave_up: u64,
    lost: u64,
    acquire_us: Vec<u64>,
}

impl Counts {
    /// The tallies in a worker's stdout, and its final report if it printed one.
    fn parse(stdout: &[u8]) -> (Counts, Option<WorkerReport>) {
        let mut counts = Counts::default();
        let mut report = None;
        for line in stdout.split(|&b| b == b'\n') {
            if let Ok(t) = serde_json::from_slice::<Tally>(line) {
                counts.add(t);
            } else if let Ok(r) = serde_json::from_slice::<WorkerReport>(line) {
                report = Some(r);
            }
        }
        (counts, report)
    }

    fn add(&mut self, t: Tally) {
        match t {
            Tally::Granted { us } => {
                self.granted += 1;
                self.acquire_us.push(us);
            }
            Tally::Busy => self.busy += 1,
            Tally::Error => self.errors += 1,
            Tally::Completed => self.completed += 1,
            Tally::FoundDone => self.found_done += 1,
            Tally::Stale => self.stale += 1,
            Tally::GaveUp => self.gave_up += 1,
            Tally::Lost => self.lost += 1,
        }
    }

    /// Granted leases that reached an outcome.
    fn ended(&self) -> u64 {
        self.completed + self.found_done + self.stale + self.gave_up
    }

    /// Granted leases without an outcome: their worker died holding them.
    fn cut_short(&self) -> u64 {
        self.granted.saturating_sub(self.ended())
    }

    fn merge(&mut self, other: Counts) {
        self.granted += other.granted;
        self.busy += other.busy;
        self.errors += other.errors;
        self.completed += other.completed;
        self.found_done += other.found_done;
        self.stale += other.stale;
        self.gave_up += other.gave_up;
        self.lost += other.lost;
        self.acquire_us.extend(other.acquire_us);
    }

    /// Whether a cleanly exited worker's final report says what its tallies say, and each of
    /// its leases had exactly one outcome.
    fn agrees_with(&self, r: &WorkerReport) -> bool {
        self.granted == self.ended()
            && (r.acquisitions, r.busy, r.completed, r.already_done)
                == (self.granted, self.busy, self.completed, self.found_done)
            && (r.stale_rejected, r.losses) == (self.stale, self.lost)
            && r.acquire_us == self.acquire_us
    }
}

/// A stopped worker: its proc id and pid.
type Paused = (u64, Option<u32>);

/// A running worker process.
struct Slot {
    proc: u64,
    pid: Option<u32>,
    done: tokio::task::JoinHandle<std::io::Result<std::process::Output>>,
}

struct Spawner {
    exe: PathBuf,
    store_url: String,
    jobs_db: PathBuf,
    lease: Duration,
    work: Duration,
    history: Option<PathBuf>,
    chaos: bool,
    broken: Option<Broken>,
}

impl Spawner {
    fn spawn(&self, proc: u64, duration: Duration) -> anyhow::Result<Slot> {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("worker")
            .args(["--proc", &proc.to_string(), "--store", &self.store_url])
            .arg("--jobs-db")
            .arg(&self.jobs_db)
            .args(["--duration", &fmt(duration)])
            .args(["--lease", &fmt(self.lease)])
            .args(["--work", &fmt(self.work)])
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Some(h) = &self.history {
            cmd.arg("--history")
                .arg(h.join(format!("proc-{proc}.jsonl")));
        }
        if self.chaos {
            cmd.arg("--chaos");
        }
        if let Some(b) = self.broken {
            cmd.args(["--broken", b.name()]);
        }
        let child = cmd.spawn().context("start a worker process")?;
        let pid = child.id();
        Ok(Slot {
            proc,
            pid,
            done: tokio::spawn(child.wait_with_output()),
        })
    }
}

fn signal(pid: Option<u32>, sig: Signal) {
    if let Some(pid) = pid.and_then(|p| Pid::from_raw(p as i32)) {
        // The worker may have exited on its own meanwhile: nothing to do then.
        let _ = kill_process(pid, sig);
    }
}

async fn fleet(args: RunArgs) -> anyhow::Result<bool> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if args.lease.is_zero() {
        bail!("--lease must be longer than zero");
    }
    let (dir, _temp) = run_dir(args.dir.as_deref())?;
    let (server, store_url) = match args.store.as_deref().map(start_server).transpose()? {
        Some(Some((server, url))) => (Some(server), url),
        _ => (
            None,
            args.store
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", dir.join("locks.db").display())),
        ),
    };
    let server = server.map(|s| Arc::new(Mutex::new(s)));
    if args.broken.is_some_and(Broken::needs_sqlite) && scheme(&store_url) != "sqlite" {
        bail!(
            "--broken {} edits the SQLite table: it needs a sqlite:// store",
            args.broken.map_or("", Broken::name)
        );
    }
    // Open once here so a bad URL fails with one clear message, not once per worker.
    let probe = leasehold::open(&store_url)
        .await
        .with_context(|| format!("open the lock store {}", redact(&store_url)))?;
    let lease = probe.capabilities().effective_lease(args.lease);
    drop(probe);
    let chaos = args
        .chaos
        .as_deref()
        .map(parse_faults)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    let work = args.work.unwrap_or(if chaos.is_some() {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(2)
    });
    let history = match (&args.history, &chaos) {
        (Some(h), _) => Some(h.clone()),
        (None, Some(_)) => Some(dir.join("history")),
        (None, None) => None,
    };
    if let Some(h) = &history {
        if h.join("run.json").exists() {
            bail!(
                "{} already holds a run's history: give --history a new directory",
                h.display()
            );
        }
        std::fs::create_dir_all(h).with_context(|| format!("create {}", h.display()))?;
    }
    let seed = args
        .seed
        .unwrap_or_else(|| u64::from(rand::random::<u16>()));
    let faults: Vec<Fault> = chaos
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| *f != Fault::StoreRestart || server.is_some())
        .collect();
    let mut name = scheme(&store_url).to_owned();
    if let Some(b) = args.broken {
        name.push_str(&format!("/broken-{}", b.name()));
    }
    name.push('/');
    name.push_str(&if faults.is_empty() {
        "no-faults".to_owned()
    } else {
        faults
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join("+")
    });
    let nemesis = match &history {
        Some(h) => {
            let meta = Meta {
                name: name.clone(),
                lease_ns: u64::try_from(lease.as_nanos()).unwrap_or(u64::MAX),
                backoff_cap_ns: u64::try_from(BACKOFF_CAP.as_nanos()).unwrap_or(u64::MAX),
                seed,
            };
            std::fs::write(h.join("run.json"), serde_json::to_vec_pretty(&meta)?)
                .with_context(|| format!("write {}", h.join("run.json").display()))?;
            Some(History::open(&h.join("nemesis.jsonl"), 0)?)
        }
        None => None,
    };
    let jobs_db = dir.join("jobs.db");
    let mut jobs = Jobs::open(&jobs_db)?;
    jobs.seed(args.jobs)?;

    println!(
        "fleet: {} workers for {} on {} (lease {}, work {} per job)",
        args.workers,
        humantime::format_duration(args.duration),
        redact(&store_url),
        humantime::format_duration(lease),
        humantime::format_duration(work),
    );
    let steps = match &chaos {
        Some(faults) => {
            println!(
                "chaos: {} with seed {seed}; history in {}",
                faults
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(","),
                history
                    .as_deref()
                    .map_or(String::new(), |h| h.display().to_string())
            );
            if faults.contains(&Fault::StoreRestart) && server.is_none() {
                println!(
                    "chaos: store-restart skipped: {}",
                    if scheme(&store_url) == "sqlite" {
                        "the SQLite store is embedded in the workers, there is no server to \
                         restart"
                    } else {
                        "the fleet restarts only a server it started itself (--store redis or \
                         --store etcd without a URL)"
                    }
                );
            }
            let applied: Vec<Fault> = faults
                .iter()
                .copied()
                .filter(|f| *f != Fault::StoreRestart || server.is_some())
                .collect();
            plan(seed, &applied, args.duration, lease, args.workers)
        }
        None => Vec::new(),
    };
    if let Some(b) = args.broken {
        println!(
            "broken: {} (expected to violate {})",
            b.name(),
            b.expected().join(" or ")
        );
    }

    let spawner = Spawner {
        exe: std::env::current_exe().context("find this program")?,
        store_url: store_url.clone(),
        jobs_db: jobs_db.clone(),
        lease,
        work,
        history: history.clone(),
        chaos: chaos.is_some(),
        broken: args.broken,
    };
    let mut next_proc = 1;
    let mut slots = Vec::new();
    for _ in 0..args.workers {
        slots.push(spawner.spawn(next_proc, args.duration)?);
        next_proc += 1;
    }
    let mut killed: Vec<Slot> = Vec::new();

    let bar = ProgressBar::new(args.duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {msg}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let mut steps = steps.into_iter().peekable();
    // When to resume, and the (proc, pid) of the stopped workers.
    let mut resume: Option<(Instant, Vec<Paused>)> = None;
    let (mut n_kills, mut n_pauses, mut n_restarts, mut n_slow) = (0, 0, 0, 0);
    // When to heal slowed workers, and which (proc, pid).
    let mut heal_slow: Option<(Instant, Vec<Paused>)> = None;
    let set_slow = |proc: u64, pid: Option<u32>, delay: Duration| {
        if let Some(h) = &history {
            if lease_examples::slow::set_delay(h, proc, delay).is_ok() {
                signal(pid, Signal::USR1);
            }
        }
    };
    let log = |e: Event| {
        if let Some(n) = &nemesis {
            n.log(&e);
        }
    };
    let (mut done, mut next_count) = (0, Instant::now());
    while !slots.iter().all(|s| s.done.is_finished()) {
        if let Some((at, paused)) = &resume {
            if Instant::now() >= *at {
                for (proc, pid) in paused {
                    signal(*pid, Signal::CONT);
                    log(Event::now(*proc, "", Op::Resume, Kind::Info));
                }
                resume = None;
            }
        }
        if let Some((at, slowed)) = &heal_slow {
            if Instant::now() >= *at {
                for (proc, pid) in slowed {
                    set_slow(*proc, *pid, Duration::ZERO);
                }
                heal_slow = None;
            }
        }
        while resume.is_none()
            && heal_slow.is_none()
            && steps.peek().is_some_and(|s| started.elapsed() >= s.at)
        {
            let step = steps.next().expect("peeked");
            match step.action {
                Action::Kill { slot } => {
                    let remaining = args.duration.saturating_sub(started.elapsed());
                    let old = &slots[slot];
                    signal(old.pid, Signal::KILL);
                    log(Event::now(old.proc, "", Op::Kill, Kind::Info));
                    n_kills += 1;
                    let fresh = spawner.spawn(next_proc, remaining)?;
                    next_proc += 1;
                    killed.push(std::mem::replace(&mut slots[slot], fresh));
                }
                Action::Pause {
                    slots: which,
                    factor,
                } => {
                    let dur = lease.mul_f64(factor);
                    let mut paused = Vec::new();
                    for i in which {
                        let s = &slots[i];
                        let mut e = Event::now(s.proc, "", Op::Pause, Kind::Info);
                        e.dur_ns = Some(u64::try_from(dur.as_nanos()).unwrap_or(u64::MAX));
                        signal(s.pid, Signal::STOP);
                        log(e);
                        paused.push((s.proc, s.pid));
                        n_pauses += 1;
                    }
                    resume = Some((Instant::now() + dur, paused));
                }
                Action::Slow {
                    slots: which,
                    factor,
                } => {
                    let mut slowed = Vec::new();
                    for i in which {
                        let s = &slots[i];
                        set_slow(s.proc, s.pid, lease.mul_f64(factor));
                        slowed.push((s.proc, s.pid));
                        n_slow += 1;
                    }
                    heal_slow = Some((
                        Instant::now() + lease.mul_f64(lease_examples::nemesis::SLOW_FOR),
                        slowed,
                    ));
                }
                Action::StoreRestart => {
                    if let Some(server) = &server {
                        log(Event::now(0, "", Op::Restart, Kind::Invoke));
                        let server = server.clone();
                        tokio::task::spawn_blocking(move || {
                            server.lock().unwrap_or_else(|p| p.into_inner()).restart()
                        })
                        .await
                        .context("restart the store server")??;
                        log(Event::now(0, "", Op::Restart, Kind::Ok));
                        n_restarts += 1;
                    }
                }
            }
        }
        bar.set_position(
            (started.elapsed().as_millis() as u64).min(args.duration.as_millis() as u64),
        );
        // Counting the done jobs reads the whole table: only for a visible bar, 4 times a second,
        // not every tick (the fleet shares the cores with its workers).
        if !bar.is_hidden() && Instant::now() >= next_count {
            next_count = Instant::now() + Duration::from_millis(250);
            done = jobs.completed().unwrap_or(done);
        }
        if chaos.is_some() {
            bar.set_message(format!(
                "{done} jobs done; {n_kills} kills, {n_pauses} pauses, {n_restarts} restarts, \
                 {n_slow} slowed"
            ));
        } else {
            bar.set_message(format!("{done} jobs done"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    // Heal: nothing may stay stopped or slow.
    if let Some((_, slowed)) = heal_slow.take() {
        for (proc, pid) in slowed {
            set_slow(proc, pid, Duration::ZERO);
        }
    }
    if let Some((_, paused)) = resume.take() {
        for (proc, pid) in paused {
            signal(pid, Signal::CONT);
            log(Event::now(proc, "", Op::Resume, Kind::Info));
        }
    }
    bar.finish_and_clear();

    // Every process's tallies from its stdout, a killed worker's up to its last line: the counts
    // cover the workers that were killed as well as those that exited.
    let mut all = Counts::default();
    let mut per = Vec::new();
    let (mut procs, mut clean, mut n_killed, mut failed_workers, mut disagreeing) = (0, 0, 0, 0, 0);
    let ended = slots
        .into_iter()
        .map(|s| (s, false))
        .chain(killed.into_iter().map(|s| (s, true)));
    for (slot, was_killed) in ended {
        let out = slot.done.await?.context("wait for a worker")?;
        let (counts, report) = Counts::parse(&out.stdout);
        match report {
            Some(r) if out.status.success() => {
                clean += 1;
                if !counts.agrees_with(&r) {
                    disagreeing += 1;
                    eprintln!(
                        "worker {}: its final report disagrees with its tallies",
                        slot.proc
                    );
                }
            }
            _ if was_killed => n_killed += 1,
            _ => {
                failed_workers += 1;
                eprintln!("worker {} failed: {}", slot.proc, out.status);
            }
        }
        procs += 1;
        per.push((slot.proc, counts.completed, was_killed));
        all.merge(counts);
    }
    per.sort_unstable();

    let totals = jobs.totals()?;
    let mut lat = std::mem::take(&mut all.acquire_us);
    let (p50, p99) = (quantile(&mut lat, 0.5), quantile(&mut lat, 0.99));
    let fmt_us = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} µs"));
    let secs = elapsed.as_secs_f64();
    println!(
        "jobs done              {} of {} in {secs:.1} s: {:.0} jobs/s (job table: jobs with an \
         accepted completion)",
        totals.completed,
        totals.jobs,
        totals.completed as f64 / secs.max(1e-3)
    );
    println!(
        "duplicate completions  {} (job table: accepted completions beyond a job's first)",
        totals.duplicates
    );
    let mut ended = vec![format!("{clean} exited cleanly")];
    if n_killed > 0 {
        ended.push(format!("{n_killed} killed"));
    }
    if failed_workers > 0 {
        ended.push(format!("{failed_workers} failed"));
    }
    println!(
        "leases granted         {} (reported by the {procs} worker processes as they went: {}), \
         of which",
        all.granted,
        ended.join(", ")
    );
    println!(
        "  job completed        {} (the table accepted the fenced completion)",
        all.completed
    );
    println!(
        "  found done           {} (the claim found the job completed already)",
        all.found_done
    );
    println!(
        "  stale, rejected      {} (the table refused the claim or the completion: a newer fence \
         had claimed the job)",
        all.stale
    );
    println!(
        "  gave up              {} (the lease was lost before the write: nothing written)",
        all.gave_up
    );
    // The table's accepted completions: those the workers reported, plus at most one per lease
    // cut short (its worker was killed after the write, before it could say so).
    let accepted = totals.completed + totals.duplicates;
    let cut = all.cut_short();
    let unreported = accepted.checked_sub(all.completed);
    if cut > 0 || n_killed > 0 {
        let note = match unreported {
            Some(n) if n > 0 => format!("; {n} of them after the table accepted its completion"),
            _ => String::new(),
        };
        println!(
            "  cut short            {cut} (its worker died holding the lease, before it reported \
             an outcome{note})"
        );
    }
    println!(
        "busy                   {} (attempts that found the job's key held by another worker)",
        all.busy
    );
    if all.errors > 0 {
        println!(
            "errors                 {} (attempts that failed with a retryable error)",
            all.errors
        );
    }
    println!(
        "lease losses           {} (granted leases whose loss signal fired)",
        all.lost
    );
    println!(
        "acquire latency        p50 {}, p99 {} (lock call to guard, over the {} grants)",
        fmt_us(p50),
        fmt_us(p99),
        all.granted
    );
    let per: Vec<String> = per
        .iter()
        .map(|(proc, n, killed)| format!("w{proc}={n}{}", if *killed { "*" } else { "" }))
        .collect();
    let per_note = if n_killed > 0 {
        "jobs completed by each process; * killed"
    } else {
        "jobs completed by each process"
    };
    println!("per worker             {} ({per_note})", per.join(" "));
    if chaos.is_some() {
        println!(
            "nemesis                {n_kills} kills, {n_pauses} pauses, {n_restarts} store \
             restarts, {n_slow} slowed workers (seed {seed})"
        );
    }
    let miscount = unreported.is_none_or(|n| n > cut);
    let mut ok = true;
    if totals.duplicates > 0 || miscount || failed_workers > 0 || disagreeing > 0 {
        println!(
            "result                 FAILED: {} duplicate completions, {accepted} completions in \
             the table for {} reported by the workers ({cut} leases cut short), \
             {failed_workers} failed workers, {disagreeing} workers whose report disagrees with \
             their tallies",
            totals.duplicates, all.completed
        );
        ok = false;
    } else {
        println!("result                 ok, 0 violations");
    }
    if let Some(h) = &history {
        save_table(&jobs, h)?;
        let run = check::load(std::slice::from_ref(h))?;
        for run in &run {
            let report = check::check(run);
            println!("{}", report.line());
            for l in report.violation_lines(10) {
                println!("{l}");
            }
            ok &= report.ok();
        }
        println!(
            "history                {} (check again: fleet check DIR)",
            h.display()
        );
    }
    Ok(ok)
}

fn save_table(jobs: &Jobs, dir: &Path) -> anyhow::Result<()> {
    let mut text = String::new();
    for row in jobs.touched()? {
        text.push_str(&serde_json::to_string(&row)?);
        text.push('\n');
    }
    let path = dir.join("jobs.jsonl");
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

async fn worker(args: WorkerArgs) -> anyhow::Result<bool> {
    let WorkerArgs {
        proc,
        store: store_url,
        jobs_db,
        duration,
        lease,
        work,
        history,
        chaos,
        broken,
    } = args;
    // First, before anything else: the nemesis may signal a slow link at any time, and SIGUSR1's
    // default action ends the process.
    let slow_control = history
        .as_deref()
        .and_then(Path::parent)
        .filter(|_| chaos)
        .map(|dir| lease_examples::slow::control_file(dir, proc));
    let history = history.map(|p| History::open(&p, proc)).transpose()?;
    let mut store = leasehold::open(&store_url).await?;
    if let Some(b) = broken.filter(|b| *b != Broken::WallClock) {
        let path = if b.needs_sqlite() {
            Some(
                lease_sqlite::SqliteStore::from_url(&store_url)
                    .await?
                    .path()
                    .to_owned(),
            )
        } else {
            None
        };
        store = DynStore::new(BrokenStore::new(store, b, path.as_deref())?);
    }
    if let Some(h) = &history {
        store = DynStore::new(RecordingStore::new(store, h.clone()));
    }
    // The slow link sits between the recording and the lock: the history keeps the store's own
    // order of events, and the lock gets the replies late.
    if let Some(control) = slow_control {
        let slow = lease_examples::slow::SlowStore::new(store);
        slow.watch(control).context("watch for slow-link signals")?;
        store = DynStore::new(slow);
    }
    let log = |e: Event| {
        if let Some(h) = &history {
            h.log(&e);
        }
    };
    let mut jobs = Jobs::open(&jobs_db)?;
    let mut report = WorkerReport {
        worker: proc as usize,
        ..Default::default()
    };
    // Chaos: many workers on few jobs, so a paused holder's job is soon taken over.
    let contend = 8;
    let steps: u32 = if chaos { 4 } else { 1 };
    let until = Instant::now() + duration;
    let mut n = 0u64;
    let mut last_watcher: Option<tokio::task::JoinHandle<()>> = None;
    while Instant::now() < until {
        let job = if chaos {
            jobs.pick_contended(contend)?
        } else {
            jobs.pick()?
        };
        let Some(job) = job else { break };
        let key = format!("job/{job}");
        n += 1;
        let holder = format!("fleet-p{proc}-{n}-{:032x}", rand::random::<u128>());
        let mut builder = CrossProcessLock::builder(store.clone(), key.clone())
            .lease(lease)
            .holder(holder.clone())
            .holder_label(format!("worker-{proc}"));
        if broken == Some(Broken::WallClock) {
            builder = builder.clock(SlowWallClock::shared());
        }
        let lock = builder.build()?;
        let started = Instant::now();
        let guard = match lock.try_lock_once().await {
            Ok(g) => g,
            Err(Error::Busy { .. }) => {
                tally(&mut report, Tally::Busy);
                continue;
            }
            Err(e) if e.is_retryable() => {
                tally(&mut report, Tally::Error);
                eprintln!("worker {proc}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let us = started.elapsed().as_micros() as u64;
        tally(&mut report, Tally::Granted { us });
        let granted = guard.fence();
        let fence = granted.get();
        let loss = guard.loss_token();
        let watcher = history.clone().map(|h| {
            let (loss, key) = (loss.clone(), key.clone());
            tokio::spawn(async move {
                loss.cancelled().await;
                h.log(&h.event(&key, Op::Lost, Kind::Info).fence(fence));
            })
        });
        // Register this fence with the job and read its state only now that its lease is held:
        // a copy read before could be stale, and a holder this one superseded can no longer
        // complete the job from here on.
        let mut e = Event::now(proc, &key, Op::Write, Kind::Invoke).fence(fence);
        e.value = Some("claim".into());
        log(e.clone());
        let claim = jobs.claim(job, fence)?;
        e.t_ns = now_ns();
        e.kind = if claim == Claim::Stale {
            Kind::Fail
        } else {
            Kind::Ok
        };
        e.accepted = Some(claim != Claim::Stale);
        log(e);
        let mut proceed = match claim {
            Claim::Open => true,
            Claim::Done => {
                tally(&mut report, Tally::FoundDone);
                false
            }
            Claim::Stale => {
                tally(&mut report, Tally::Stale);
                false
            }
        };
        let mut lost = false;
        for _ in 0..steps {
            if !proceed {
                break;
            }
            // Stamped before the check: a cooperating worker enters only while `is_held`.
            let t = now_ns();
            if !guard.is_held() {
                lost = true;
                break;
            }
            log(Event::at(t, proc, &key, Op::CsEnter, Kind::Info).fence(fence));
            tokio::select! {
                () = guard.lost() => lost = true,
                () = tokio::time::sleep(work / steps) => {}
            }
            log(Event::now(proc, &key, Op::CsExit, Kind::Info).fence(fence));
            if lost {
                break;
            }
        }
        // A cooperating worker checks its lease right before the fenced write. In chaos mode it
        // does not, like a process paused between that check and the write: the job table's
        // fence check must reject the write if another holder has claimed the job since.
        if proceed && !chaos && (lost || !guard.is_held()) {
            proceed = false;
            tally(&mut report, Tally::GaveUp);
        }
        if proceed {
            let mut e = Event::now(proc, &key, Op::Write, Kind::Invoke).fence(fence);
            e.value = Some("done".into());
            log(e.clone());
            let w = jobs.complete(job, proc, fence)?;
            e.t_ns = now_ns();
            e.kind = if w == Write::Accepted {
                Kind::Ok
            } else {
                Kind::Fail
            };
            e.accepted = Some(w == Write::Accepted);
            log(e);
            tally(
                &mut report,
                match w {
                    Write::Accepted => Tally::Completed,
                    Write::Stale => Tally::Stale,
                },
            );
        }
        if let Err(Error::Lost { .. }) = guard.release().await {
            if chaos {
                // A release that arrives late (delayed in the network, or sent by a process
                // that was stopped): the store must refuse it, the key is no longer ours.
                let _ = store.release(&key, &holder, granted).await;
            }
        }
        if loss.is_cancelled() {
            tally(&mut report, Tally::Lost);
        }
        // The loss signal can fire just after a release that found the lease already lost
        // (lease-core marks the lease lost a moment before it signals): keep watching until
        // the next job is done, so the history sees it.
        if let Some(w) = std::mem::replace(&mut last_watcher, watcher) {
            w.abort();
        }
    }
    if let Some(w) = last_watcher {
        let _ = tokio::time::timeout(Duration::from_millis(50), w).await;
    }
    log(Event::now(proc, "", Op::Exit, Kind::Info));
    println!("{}", serde_json::to_string(&report)?);
    Ok(true)
}
