//! `fleet`: N worker processes claim jobs from a shared job table under per-job leases and
//! complete each through a fenced write that the table checks.
//!
//! ```sh
//! cargo run --release -p lease-examples --bin fleet                       # embedded SQLite
//! cargo run --release -p lease-examples --bin fleet -- --workers 8 --duration 30s
//! cargo run --release -p lease-examples --features redis --bin fleet -- --store redis://127.0.0.1:6379
//! ```
//!
//! Exits non-zero if any job was completed twice or a worker failed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lease_core::{CrossProcessLock, Error};
use lease_examples::jobs::{Jobs, Write};
use lease_examples::stats::{WorkerReport, quantile};
use lease_examples::{open_store, redact};

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
    /// The lock store: sqlite://PATH (default: a temp database), redis://…, etcd://…
    #[arg(long)]
    store: Option<String>,
    /// The lease of each job lock.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Jobs in the table.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// Simulated work per job.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    work: Duration,
    /// Directory for the job table and the default lock database (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Role {
    /// One worker process (started by the fleet).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        id: usize,
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
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.role {
        Some(Role::Worker {
            id,
            store,
            jobs_db,
            duration,
            lease,
            work,
        }) => worker(id, &store, jobs_db, duration, lease, work).await,
        None => fleet(cli.run).await,
    }
}

async fn fleet(args: RunArgs) -> anyhow::Result<()> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir().context("create a temp dir")?;
            temp.path().to_owned()
        }
    };
    let store_url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("locks.db").display()));
    // Open once here so a bad URL fails with one clear message, not once per worker.
    open_store(&store_url)
        .await
        .with_context(|| format!("open the lock store {}", redact(&store_url)))?;
    let jobs_db = dir.join("jobs.db");
    let mut jobs = Jobs::open(&jobs_db)?;
    jobs.seed(args.jobs)?;

    println!(
        "fleet: {} workers for {} on {} (lease {}, work {} per job)",
        args.workers,
        humantime::format_duration(args.duration),
        redact(&store_url),
        humantime::format_duration(args.lease),
        humantime::format_duration(args.work),
    );
    let exe = std::env::current_exe().context("find this program")?;
    let mut children = Vec::new();
    for id in 0..args.workers {
        let child = tokio::process::Command::new(&exe)
            .arg("worker")
            .args(["--id", &id.to_string(), "--store", &store_url])
            .arg("--jobs-db")
            .arg(&jobs_db)
            .args([
                "--duration",
                &humantime::format_duration(args.duration).to_string(),
            ])
            .args([
                "--lease",
                &humantime::format_duration(args.lease).to_string(),
            ])
            .args(["--work", &humantime::format_duration(args.work).to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start a worker process")?;
        children.push(child);
    }

    let bar = ProgressBar::new(args.duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {msg}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let outputs = tokio::spawn(async move {
        let mut outs = Vec::new();
        for child in children {
            outs.push(child.wait_with_output().await);
        }
        outs
    });
    while !outputs.is_finished() {
        let done = jobs.completed().unwrap_or(0);
        bar.set_position(
            (started.elapsed().as_millis() as u64).min(args.duration.as_millis() as u64),
        );
        bar.set_message(format!("{done} jobs done"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();

    let mut reports = Vec::new();
    let mut failed_workers = 0;
    for (id, out) in outputs.await?.into_iter().enumerate() {
        let out = out.context("wait for a worker")?;
        let report = BufReader::new(&out.stdout[..])
            .lines()
            .map_while(Result::ok)
            .find_map(|l| serde_json::from_str::<WorkerReport>(&l).ok());
        match report {
            Some(r) if out.status.success() => reports.push(r),
            _ => {
                failed_workers += 1;
                eprintln!("worker {id} failed: {}", out.status);
            }
        }
    }

    let totals = jobs.totals()?;
    let sum = |f: fn(&WorkerReport) -> u64| reports.iter().map(f).sum::<u64>();
    let mut lat: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.acquire_us.iter().copied())
        .collect();
    let (p50, p99) = (quantile(&mut lat, 0.5), quantile(&mut lat, 0.99));
    let fmt_us = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} µs"));
    println!(
        "jobs done              {} of {}",
        totals.completed, totals.jobs
    );
    println!("duplicate completions  {}", totals.duplicates);
    println!("stale writes rejected  {}", sum(|r| r.stale_rejected));
    println!("lease losses           {}", sum(|r| r.losses));
    println!(
        "acquisitions           {} (busy {}, found done {})",
        sum(|r| r.acquisitions),
        sum(|r| r.busy),
        sum(|r| r.already_done)
    );
    println!(
        "acquire latency        p50 {}, p99 {}",
        fmt_us(p50),
        fmt_us(p99)
    );
    let per: Vec<String> = reports
        .iter()
        .map(|r| format!("w{}={}", r.worker, r.completed))
        .collect();
    println!("per worker             {}", per.join(" "));
    let accepted = sum(|r| r.completed);
    let violations = totals.duplicates + u64::from(accepted != totals.completed) + failed_workers;
    if violations > 0 {
        println!(
            "result                 FAILED: {} duplicate completions, {} accepted writes for {} \
             completed jobs, {failed_workers} failed workers",
            totals.duplicates, accepted, totals.completed
        );
        std::process::exit(1);
    }
    println!("result                 ok, 0 violations");
    Ok(())
}

async fn worker(
    id: usize,
    store_url: &str,
    jobs_db: PathBuf,
    duration: Duration,
    lease: Duration,
    work: Duration,
) -> anyhow::Result<()> {
    let store = open_store(store_url).await?;
    let mut jobs = Jobs::open(&jobs_db)?;
    let mut report = WorkerReport {
        worker: id,
        ..Default::default()
    };
    let until = Instant::now() + duration;
    while Instant::now() < until {
        let Some(job) = jobs.pick()? else { break };
        let lock = CrossProcessLock::builder(store.clone(), format!("job/{job}"))
            .lease(lease)
            .holder_label(format!("worker-{id}"))
            .build()?;
        let started = Instant::now();
        let guard = match lock.try_lock_once().await {
            Ok(g) => g,
            Err(Error::Busy { .. }) => {
                report.busy += 1;
                continue;
            }
            Err(e) if e.is_retryable() => {
                eprintln!("worker {id}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        report.acquisitions += 1;
        report.acquire_us.push(started.elapsed().as_micros() as u64);
        // Read the job's state only now that its lease is held: a copy read before could be
        // stale.
        if jobs.is_done(job)? {
            report.already_done += 1;
            let _ = guard.release().await;
            continue;
        }
        tokio::select! {
            () = guard.lost() => {
                report.losses += 1;
                continue;
            }
            () = tokio::time::sleep(work) => {}
        }
        match jobs.complete(job, id, guard.fence().get())? {
            Write::Accepted => report.completed += 1,
            Write::Stale => report.stale_rejected += 1,
        }
        if guard.release().await.is_err() {
            report.losses += 1;
        }
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
