//! The fleet's run: seeds the job table, starts the worker processes, injects the faults of
//! `--chaos` on the nemesis's schedule, and reports (checking the history when one is written).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lease_core::LeaseStore as _;
use lease_examples::broken::Broken;
use lease_examples::check::{self, Meta};
use lease_examples::history::{Event, History, Kind, Op, STORE};
use lease_examples::jobs::Jobs;
use lease_examples::nemesis::{Action, Fault, parse_faults, plan};
use lease_examples::redact;
use lease_examples::run_dir;
use leasehold::Scheme;
use rustix::process::Signal;

use crate::report::{self, Ended, Injected};
use crate::resources::Sampler;
use crate::server::OwnedServer;
use crate::spawn::{Clocks, Paused, Slot, Spawner, signal};

/// A partitioned worker: its proc id and its proxy to the store.
type Cut = (u64, Arc<lease_testkit::HoldingProxy>);

/// The lock's default backoff cap: the I8 bound is lease + this + 1 s.
const BACKOFF_CAP: Duration = Duration::from_millis(250);

/// The settings of a run.
#[derive(Args, Clone)]
pub(crate) struct RunArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// How long the workers run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The lock store: sqlite://PATH (default: a temp database), redis://…, etcd://…,
    /// postgres://…, or `redis` / `etcd` / `postgres` alone to start a throwaway local server
    /// (needed for --chaos store-restart, store-pause and failover; `redis?wait_replicas=1`
    /// adds options to its URL).
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
    /// Faults to inject: any of
    /// kill,pause,store-restart,slow,store-pause,partition,failover,clock,leader-partition.
    /// Workers then contend for few jobs and write without checking their lease first, and the
    /// run is checked from its history.
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
    /// Sample each worker's resident memory and open file descriptors this often (a soak): the
    /// run fails if either grows by more than 10 % from --sample-from to the end. The samples go
    /// to resources.jsonl in --dir.
    #[arg(long, value_parser = humantime::parse_duration)]
    sample_every: Option<Duration>,
    /// With --sample-every: growth is judged from each worker's first sample at or after this.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    sample_from: Duration,
    /// Workers leak this many bytes per job, for the soak's self-test.
    #[arg(long, hide = true, default_value_t = 0)]
    leak_per_job: usize,
}

/// Runs the fleet: starts the workers, injects the faults of `--chaos`, and reports; `false`
/// when the run found a violation.
pub(crate) async fn fleet(args: RunArgs) -> anyhow::Result<bool> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if args.lease.is_zero() {
        bail!("--lease must be longer than zero");
    }
    let (dir, _temp) = run_dir(args.dir.as_deref())?;
    let chaos = args
        .chaos
        .as_deref()
        .map(parse_faults)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    // A failover needs a replica: the fleet's own Redis then has one; a leader partition needs
    // a cluster: the fleet's own etcd then is one.
    let replicated = chaos.as_ref().is_some_and(|f| f.contains(&Fault::Failover));
    let cluster = chaos
        .as_ref()
        .is_some_and(|f| f.contains(&Fault::LeaderPartition));
    let (server, store_url) = match args
        .store
        .as_deref()
        .map(|s| OwnedServer::start(s, replicated, cluster))
        .transpose()?
    {
        Some(Some((server, url))) => (Some(server), url),
        _ => (
            None,
            args.store
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", dir.join("locks.db").display())),
        ),
    };
    let server = server.map(|s| Arc::new(Mutex::new(s)));
    if args.broken.is_some_and(Broken::needs_sqlite)
        && Scheme::of(&store_url).ok() != Some(Scheme::Sqlite)
    {
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
    let queued = probe.capabilities().queued_grants;
    drop(probe);
    if let Some(b) = args.broken.filter(|b| b.needs_queue() && !queued) {
        bail!(
            "--broken {} breaks the waiter queue: it needs a store with one \
             (sqlite://PATH?queued_grants=true)",
            b.name()
        );
    }
    let scheme = Scheme::of(&store_url)?;
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
    // Partitions cut a worker's own proxy to the store server: only a server store can be
    // cut, and only through a URL a proxy can stand in for.
    let no_cut = if scheme.is_server() {
        lease_examples::nemesis::proxied_url(&store_url, "127.0.0.1:1").err()
    } else {
        Some(format!(
            "the {} store is embedded in the workers, there is no network to cut",
            scheme.label()
        ))
    };
    // The clock fault steps workers' wall clocks with libfaketime, its files in the history.
    let (clocks, no_clock) = match (&chaos, &history) {
        (Some(f), Some(h)) if f.contains(&Fault::Clock) => match Clocks::setup(h) {
            Ok((clocks, no_timens)) => (Some((clocks, no_timens)), None),
            Err(why) => (None, Some(why)),
        },
        _ => (None, None),
    };
    let can_fail_over = server
        .as_ref()
        .is_some_and(|s| s.lock().unwrap_or_else(|p| p.into_inner()).can_fail_over());
    let can_cut_leader = server
        .as_ref()
        .is_some_and(|s| s.lock().unwrap_or_else(|p| p.into_inner()).can_cut_leader());
    let applies = |f: &Fault| match f {
        Fault::LeaderPartition => can_cut_leader,
        Fault::Partition => no_cut.is_none(),
        Fault::Failover => can_fail_over && no_cut.is_none(),
        Fault::Clock => clocks.is_some(),
        f => !f.needs_own_server() || server.is_some(),
    };
    let faults: Vec<Fault> = chaos
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(applies)
        .collect();
    let applied_failover = faults.contains(&Fault::Failover);
    if let Some(b) = args.broken.filter(|b| b.needs_partition()) {
        if !faults.contains(&Fault::Partition) {
            bail!(
                "--broken {} shows only when workers are cut off a store server: it needs \
                 --chaos partition and a server store",
                b.name()
            );
        }
    }
    let mut name = scheme.name().to_owned();
    if queued {
        // The workers wait in the store's queue: the run is checked for its order too (I7).
        name.push_str("-queued");
    }
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
                queued: Some(queued),
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
            if can_cut_leader {
                println!(
                    "chaos: the store is a cluster of 3 etcd members, each in a network namespace \
                     of its own, whose leader a leader partition cuts off its peers and clients"
                );
            }
            for f in faults
                .iter()
                .filter(|f| f.needs_own_server() && !applies(f))
            {
                println!("chaos: {} skipped: {}", f.name(), no_server(scheme, *f));
            }
            if faults.contains(&Fault::Partition) || applied_failover {
                match &no_cut {
                    Some(why) if faults.contains(&Fault::Partition) => {
                        println!("chaos: partition skipped: {why}");
                    }
                    Some(_) => {}
                    None => println!(
                        "chaos: each worker reaches the store through a proxy of its own, which \
                         a partition cuts and a failover moves"
                    ),
                }
            }
            if let Some(why) = &no_clock {
                println!("chaos: clock skipped: {why}");
            }
            if let Some((clocks, no_timens)) = &clocks {
                println!(
                    "chaos: clock: every worker's wall clock can be stepped (libfaketime){}",
                    match (
                        clocks.namespace_offset(1),
                        clocks.namespace_offset(3),
                        no_timens
                    ) {
                        (Some(ahead), Some(behind), _) => format!(
                            "; workers 1, 5, 9, … run in a time namespace {ahead} s ahead of \
                             the host's boot clock, 3, 7, … {} s behind",
                            -behind
                        ),
                        (_, _, Some(why)) => format!("; no time namespaces: {why}"),
                        _ => String::new(),
                    }
                );
            }
            let applied: Vec<Fault> = faults.iter().copied().filter(applies).collect();
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
        proxied: (chaos
            .as_ref()
            .is_some_and(|f| f.contains(&Fault::Partition))
            || applied_failover)
            && no_cut.is_none(),
        moved_to: Mutex::new(None),
        clocks: clocks.map(|(c, _)| c),
        leak_per_job: args.leak_per_job,
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
    let mut sampler = args
        .sample_every
        .map(|every| {
            if every.is_zero() {
                bail!("--sample-every must be longer than zero");
            }
            // Beside the history, not in it: the checker reads every `.jsonl` file of a
            // history directory as events.
            Sampler::new(every, args.sample_from, started, &dir)
        })
        .transpose()?;
    let mut steps = steps.into_iter().peekable();
    // When to resume, and the (proc, pid) of the stopped workers.
    let mut resume: Option<(Instant, Vec<Paused>)> = None;
    let mut injected = Injected::default();
    // When to heal slowed workers, and which (proc, pid).
    let mut heal_slow: Option<(Instant, Vec<Paused>)> = None;
    // When to resume the stopped store server.
    let mut resume_store: Option<Instant> = None;
    // When the replica, missing the primary's writes since the failover began, takes over.
    let mut fail_over_at: Option<Instant> = None;
    // When to heal the partitioned workers, and which (proc, proxy).
    let mut heal_cut: Option<(Instant, Vec<Cut>)> = None;
    // When to set the stepped wall clocks right again, and whose (proc).
    let mut heal_clock: Option<(Instant, Vec<u64>)> = None;
    // When to heal the store cluster's cut-off leader.
    let mut heal_leader: Option<Instant> = None;
    let store_ctl = |f: fn(&mut OwnedServer)| {
        if let Some(server) = &server {
            f(&mut server.lock().unwrap_or_else(|p| p.into_inner()));
        }
    };
    let log = |e: Event| {
        if let Some(n) = &nemesis {
            n.log(&e);
        }
    };
    let set_slow = |proc: u64, pid: Option<u32>, delay: Duration| {
        if let Some(h) = &history {
            if lease_examples::slow::set_delay(h, proc, delay).is_ok() {
                signal(pid, Signal::USR1);
                let mut e = Event::now(proc, "", Op::Slow, Kind::Info);
                e.dur_ns = Some(u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX));
                log(e);
            }
        }
    };
    // Steps `proc`'s wall clock to `offset` seconds off the real time, and logs it.
    let set_clock = |proc: u64, offset: i64, dur: Duration| {
        let Some(clocks) = &spawner.clocks else {
            return;
        };
        match lease_testkit::faketime::set_offset(&clocks.file(proc), offset) {
            Ok(()) => {
                let mut e = Event::now(proc, "", Op::Clock, Kind::Info);
                e.value = Some(format!("{offset:+}s"));
                e.dur_ns = (offset != 0).then(|| u64::try_from(dur.as_nanos()).unwrap_or(u64::MAX));
                log(e);
            }
            Err(err) => eprintln!("chaos: cannot step the clock of worker {proc}: {err}"),
        }
    };
    let (mut done, mut next_count) = (0, Instant::now());
    // How long the nemesis itself was held up (a failover waits for the old primary to be back
    // in sync): later steps move by as much, so that they keep their spacing instead of all
    // firing at once when it is over.
    let mut held_up = Duration::ZERO;
    while !slots.iter().all(|s| s.done.is_finished()) {
        if let Some(sampler) = &mut sampler {
            sampler.tick(&slots);
        }
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
        if resume_store.is_some_and(|at| Instant::now() >= at) {
            store_ctl(OwnedServer::resume);
            log(Event::now(STORE, "", Op::Resume, Kind::Info));
            resume_store = None;
        }
        if heal_leader.is_some_and(|at| Instant::now() >= at) {
            store_ctl(OwnedServer::heal_leader);
            log(Event::now(STORE, "", Op::Heal, Kind::Info));
            heal_leader = None;
        }
        if let Some((at, stepped)) = &heal_clock {
            if Instant::now() >= *at {
                for proc in stepped {
                    set_clock(*proc, 0, Duration::ZERO);
                }
                heal_clock = None;
            }
        }
        if let Some((at, cut)) = &heal_cut {
            if Instant::now() >= *at {
                for (proc, proxy) in cut {
                    proxy.heal();
                    log(Event::now(*proc, "", Op::Heal, Kind::Info));
                }
                heal_cut = None;
            }
        }
        if fail_over_at.is_some_and(|at| Instant::now() >= at) {
            fail_over_at = None;
            let began = Instant::now();
            if let Some(server) = &server {
                let primary = server.clone();
                let moved = tokio::task::spawn_blocking(move || {
                    primary
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .fail_over()
                })
                .await
                .context("fail the store over")??;
                for proxy in slots.iter().filter_map(|s| s.proxy.as_ref()) {
                    proxy.retarget(&moved);
                }
                *spawner.moved_to.lock().unwrap_or_else(|p| p.into_inner()) = Some(moved);
                let server = server.clone();
                tokio::task::spawn_blocking(move || {
                    server.lock().unwrap_or_else(|p| p.into_inner()).rejoin()
                })
                .await
                .context("rejoin the failed primary as a replica")??;
                // Done once the new primary has a replica again: until then a store that
                // waits for one grants nothing (I8's clock starts here).
                log(Event::now(STORE, "", Op::Failover, Kind::Ok));
                injected.failovers += 1;
                held_up += began.elapsed();
            }
        }
        while resume.is_none()
            && heal_slow.is_none()
            && resume_store.is_none()
            && heal_cut.is_none()
            && heal_clock.is_none()
            && heal_leader.is_none()
            && fail_over_at.is_none()
            && steps
                .peek()
                .is_some_and(|s| started.elapsed() >= s.at + held_up)
        {
            let step = steps.next().expect("peeked");
            match step.action {
                Action::Kill { slot } => {
                    let remaining = args.duration.saturating_sub(started.elapsed());
                    let old = &slots[slot];
                    signal(old.pid, Signal::KILL);
                    log(Event::now(old.proc, "", Op::Kill, Kind::Info));
                    injected.kills += 1;
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
                        // Returns once the worker is stopped, and the pause is stamped only
                        // then: nothing the worker did comes after the pause's start in the
                        // history.
                        if let Some(pid) = s.pid {
                            lease_testkit::pause_process(pid);
                        }
                        let mut e = Event::now(s.proc, "", Op::Pause, Kind::Info);
                        e.dur_ns = Some(u64::try_from(dur.as_nanos()).unwrap_or(u64::MAX));
                        log(e);
                        paused.push((s.proc, s.pid));
                        injected.pauses += 1;
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
                        injected.slowed += 1;
                    }
                    heal_slow = Some((
                        Instant::now() + lease.mul_f64(lease_examples::nemesis::SLOW_FOR),
                        slowed,
                    ));
                }
                Action::StorePause { factor } => {
                    if server.is_some() {
                        let dur = lease.mul_f64(factor);
                        let mut e = Event::now(STORE, "", Op::Pause, Kind::Info);
                        e.dur_ns = Some(u64::try_from(dur.as_nanos()).unwrap_or(u64::MAX));
                        store_ctl(OwnedServer::pause);
                        log(e);
                        injected.store_pauses += 1;
                        resume_store = Some(Instant::now() + dur);
                    }
                }
                Action::Partition {
                    slots: which,
                    factor,
                } => {
                    let dur = lease.mul_f64(factor);
                    let mut cut = Vec::new();
                    for i in which {
                        let s = &slots[i];
                        let Some(proxy) = &s.proxy else { continue };
                        let mut e = Event::now(s.proc, "", Op::Partition, Kind::Info);
                        e.dur_ns = Some(u64::try_from(dur.as_nanos()).unwrap_or(u64::MAX));
                        // The open connections go silent, as behind a dropped route: the
                        // worker finds out only by its calls timing out.
                        proxy.cut(false);
                        log(e);
                        cut.push((s.proc, proxy.clone()));
                        injected.partitions += 1;
                    }
                    heal_cut = Some((Instant::now() + dur, cut));
                }
                Action::LeaderPartition { factor } => {
                    let cut = server
                        .as_ref()
                        .and_then(|s| s.lock().unwrap_or_else(|p| p.into_inner()).cut_leader());
                    // No leader even after a wait (an election that does not end): nothing is
                    // cut, and the fleet says so.
                    if cut.is_none() {
                        eprintln!("chaos: leader-partition skipped: the cluster has no leader");
                    }
                    if cut.is_some() {
                        let dur = lease.mul_f64(factor);
                        let mut e = Event::now(STORE, "", Op::Partition, Kind::Info);
                        e.dur_ns = Some(u64::try_from(dur.as_nanos()).unwrap_or(u64::MAX));
                        log(e);
                        injected.leader_partitions += 1;
                        heal_leader = Some(Instant::now() + dur);
                    }
                }
                Action::Clock {
                    slots: which,
                    offset_secs,
                } => {
                    let dur = lease.mul_f64(lease_examples::nemesis::CLOCK_FOR);
                    let mut stepped = Vec::new();
                    for i in which {
                        set_clock(slots[i].proc, offset_secs, dur);
                        stepped.push(slots[i].proc);
                        injected.clock_steps += 1;
                    }
                    heal_clock = Some((Instant::now() + dur, stepped));
                }
                Action::Failover { lag } => {
                    if let Some(server) = &server {
                        // From now on the replica misses the primary's writes: the grants
                        // made until the failover are lost with the primary (unless each
                        // write waits for its replica: `?wait_replicas=1`).
                        server
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .hold_replication(true);
                        log(Event::now(STORE, "", Op::Failover, Kind::Invoke));
                        fail_over_at = Some(Instant::now() + lease.mul_f64(lag));
                    }
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
                        injected.restarts += 1;
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
                "{done} jobs done; {} kills, {} pauses, {} restarts, {} slowed, {} store pauses, \
                 {} cut, {} failovers, {} clock steps, {} leader partitions",
                injected.kills,
                injected.pauses,
                injected.restarts,
                injected.slowed,
                injected.store_pauses,
                injected.partitions,
                injected.failovers,
                injected.clock_steps,
                injected.leader_partitions
            ));
        } else {
            bar.set_message(format!("{done} jobs done"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    // Heal: nothing may stay stopped, slow or cut off; a failover not done is called off.
    if fail_over_at.take().is_some() {
        if let Some(server) = &server {
            server
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .hold_replication(false);
        }
    }
    if let Some((_, cut)) = heal_cut.take() {
        for (proc, proxy) in cut {
            proxy.heal();
            log(Event::now(proc, "", Op::Heal, Kind::Info));
        }
    }
    if resume_store.take().is_some() {
        store_ctl(OwnedServer::resume);
        log(Event::now(STORE, "", Op::Resume, Kind::Info));
    }
    if heal_leader.take().is_some() {
        store_ctl(OwnedServer::heal_leader);
        log(Event::now(STORE, "", Op::Heal, Kind::Info));
    }
    if let Some((_, stepped)) = heal_clock.take() {
        for proc in stepped {
            set_clock(proc, 0, Duration::ZERO);
        }
    }
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

    let ended = Ended::collect(slots, killed).await?;
    let totals = jobs.totals()?;
    let mut ok = report::print(
        ended,
        &totals,
        elapsed,
        chaos.as_ref().map(|_| (&injected, seed)),
    );
    if let Some(sampler) = &sampler {
        ok &= sampler.report();
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

/// Why `--chaos store-restart` or `store-pause` cannot restart or stop the store of this run:
/// `scheme`'s, which the fleet did not start.
fn no_server(scheme: Scheme, fault: Fault) -> String {
    if fault == Fault::Failover {
        return "a failover needs a primary and a replica, which the fleet starts itself for \
                `--store redis` (without a URL)"
            .to_owned();
    }
    if fault == Fault::LeaderPartition {
        return "a leader partition needs a cluster, which the fleet starts itself for \
                `--store etcd` (without a URL), as root (its members live in network namespaces)"
            .to_owned();
    }
    let verb = if fault == Fault::StorePause {
        "stop"
    } else {
        "restart"
    };
    if !scheme.is_server() {
        return format!(
            "the {} store is embedded in the workers, there is no server to {verb}",
            scheme.label()
        );
    }
    let flags: Vec<String> = Scheme::ALL
        .into_iter()
        .filter(|s| s.is_server())
        .map(|s| format!("--store {}", s.name()))
        .collect();
    format!(
        "the fleet {verb}s only a server it started itself ({} without a URL)",
        flags.join(" or ")
    )
}
