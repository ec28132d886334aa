//! `leader`: leader election for N candidate processes.
//!
//! Every candidate waits for the lease on one key; the one that holds it is the leader and acts
//! (appends to a ledger) under its fence, until it loses the lease or is killed. The parent kills
//! the current leader on a schedule and checks that
//!
//! - exactly one candidate believed it was leader at any time (leadership intervals never overlap),
//! - each new leader's fence is larger than the previous leader's,
//! - leadership moved within lease + backoff cap + 1 s of each kill,
//! - the ledger accepted actions only in fence order.
//!
//! ```sh
//! cargo run --release -p lease-examples --bin leader
//! cargo run --release -p lease-examples --bin leader -- --candidates 5 --lease 1s --kill-every 3s
//! ```
//!
//! Exits non-zero on any violation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use lease_core::CrossProcessLock;
use lease_examples::stats::quantile;
use lease_examples::{redact, run_dir};
use rusqlite::{Connection, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// The waiting lock's backoff cap (the library default): part of the takeover bound.
const BACKOFF_CAP: Duration = Duration::from_millis(250);
const KEY: &str = "leader";

#[derive(Parser)]
#[command(
    about = "Leader election among candidate processes, with the leader killed on a schedule"
)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Candidate processes (a killed leader is replaced by a new candidate).
    #[arg(long, default_value_t = 3)]
    candidates: usize,
    /// How long the election runs.
    #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The leader's lease.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Kill the current leader this often (0s: never).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    kill_every: Duration,
    /// How often the leader acts (appends to the ledger).
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    act_every: Duration,
    /// The lock store: sqlite://PATH (default: a temp database), redis://…, etcd://…
    #[arg(long)]
    store: Option<String>,
    /// Directory for the ledger and the default lock database (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Self-test of the checks: every candidate uses the same holder id, so the store sees one
    /// holder and grants them all at once. The run must report violations.
    #[arg(long, hide = true)]
    broken_shared_holder: bool,
}

#[derive(Subcommand)]
enum Role {
    /// One candidate process (started by the parent).
    #[command(hide = true)]
    Candidate {
        #[arg(long)]
        id: usize,
        #[arg(long)]
        store: String,
        #[arg(long)]
        ledger: PathBuf,
        #[arg(long, value_parser = humantime::parse_duration)]
        lease: Duration,
        #[arg(long, value_parser = humantime::parse_duration)]
        act_every: Duration,
        #[arg(long)]
        holder: Option<String>,
    },
}

/// What a candidate reports on its stdout, one JSON object per line.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    /// The candidate is waiting for the lease.
    Waiting { t_ns: u64 },
    /// The candidate holds the lease and is leader from now on.
    Elected { t_ns: u64, fence: u64 },
    /// The candidate learned that it lost the lease; it stopped acting before this line.
    Lost { t_ns: u64, fence: u64 },
    /// An action under `fence`, accepted or refused by the ledger.
    Acted { fence: u64, accepted: bool },
}

/// `CLOCK_BOOTTIME` in nanoseconds: one clock for every process on this host.
fn boot_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.role {
        Some(Role::Candidate {
            id,
            store,
            ledger,
            lease,
            act_every,
            holder,
        }) => candidate(id, &store, &ledger, lease, act_every, holder).await,
        None => {
            let ok = elect(cli.run).await?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// The leader's protected resource: an append-only ledger that accepts an action only under a
/// fence at least as large as every fence it accepted before.
struct Ledger {
    conn: Connection,
}

impl Ledger {
    fn open(path: &Path) -> anyhow::Result<Ledger> {
        let conn = Connection::open(path)
            .with_context(|| format!("open the ledger {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS ledger (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 fence INTEGER NOT NULL,
                 candidate INTEGER NOT NULL
             );",
        )?;
        Ok(Ledger { conn })
    }

    /// Appends an action under `fence`; `false` if a larger fence has written already.
    fn act(&mut self, fence: u64, candidate: usize) -> anyhow::Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let highest: i64 = tx.query_row("SELECT COALESCE(MAX(fence), 0) FROM ledger", [], |r| {
            r.get(0)
        })?;
        if (fence as i64) < highest {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO ledger (fence, candidate) VALUES (?1, ?2)",
            params![fence as i64, candidate as i64],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Every accepted action's (fence, candidate), in the order they were accepted.
    fn entries(&self) -> anyhow::Result<Vec<(u64, usize)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT fence, candidate FROM ledger ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as usize))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn emit(event: Event) {
    // One line per event, written whole, so the parent sees complete JSON even if we are killed.
    println!(
        "{}",
        serde_json::to_string(&event).expect("events serialize")
    );
}

async fn candidate(
    id: usize,
    store_url: &str,
    ledger: &Path,
    lease: Duration,
    act_every: Duration,
    holder: Option<String>,
) -> anyhow::Result<()> {
    let store = leasehold::open(store_url).await?;
    let mut ledger = Ledger::open(ledger)?;
    let mut builder = CrossProcessLock::builder(store, KEY)
        .lease(lease)
        .holder_label(format!("candidate-{id}"));
    if let Some(holder) = holder {
        builder = builder.holder(holder);
    }
    let lock = builder.build()?;
    loop {
        emit(Event::Waiting { t_ns: boot_ns() });
        let guard = match lock.lock().await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("candidate {id}: {e}; waiting again");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let fence = guard.fence().get();
        emit(Event::Elected {
            t_ns: boot_ns(),
            fence,
        });
        loop {
            tokio::select! {
                () = guard.lost() => break,
                () = tokio::time::sleep(act_every) => {}
            }
            if !guard.is_held() {
                break;
            }
            let accepted = ledger.act(fence, id)?;
            emit(Event::Acted { fence, accepted });
        }
        emit(Event::Lost {
            t_ns: boot_ns(),
            fence,
        });
    }
}

/// One leadership: who, under which fence, from when until when (`None`: still leader).
#[derive(Debug)]
struct Term {
    candidate: usize,
    fence: u64,
    from_ns: u64,
    until_ns: Option<u64>,
}

async fn elect(args: RunArgs) -> anyhow::Result<bool> {
    if args.candidates < 2 {
        bail!("--candidates must be at least 2 (an election needs someone to take over)");
    }
    if args.lease.is_zero() || args.act_every.is_zero() {
        bail!("--lease and --act-every must be longer than zero");
    }
    let (dir, _temp) = run_dir(args.dir.as_deref())?;
    let store_url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("locks.db").display()));
    leasehold::open(&store_url)
        .await
        .with_context(|| format!("open the lock store {}", redact(&store_url)))?;
    let ledger_path = dir.join("ledger.db");
    let ledger = Ledger::open(&ledger_path)?;
    println!(
        "leader: {} candidates for {} on {} (lease {}, leader killed every {})",
        args.candidates,
        humantime::format_duration(args.duration),
        redact(&store_url),
        humantime::format_duration(args.lease),
        humantime::format_duration(args.kill_every),
    );

    let exe = std::env::current_exe().context("find this program")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Event)>();
    let mut children: HashMap<usize, tokio::process::Child> = HashMap::new();
    let spawn = |id: usize, children: &mut HashMap<usize, tokio::process::Child>| {
        let mut command = tokio::process::Command::new(&exe);
        command.arg("candidate");
        if args.broken_shared_holder {
            command.args(["--holder", "shared-by-every-candidate"]);
        }
        let mut child = command
            .args(["--id", &id.to_string(), "--store", &store_url])
            .arg("--ledger")
            .arg(&ledger_path)
            .args([
                "--lease",
                &humantime::format_duration(args.lease).to_string(),
            ])
            .args([
                "--act-every",
                &humantime::format_duration(args.act_every).to_string(),
            ])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start a candidate process")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str::<Event>(&line) {
                    let _ = tx.send((id, event));
                }
            }
        });
        children.insert(id, child);
        anyhow::Ok(())
    };
    for id in 0..args.candidates {
        spawn(id, &mut children)?;
    }
    let mut next_id = args.candidates;

    let start_ns = boot_ns();
    let secs = |t_ns: u64| t_ns.saturating_sub(start_ns) as f64 / 1e9;
    let end = tokio::time::Instant::now() + args.duration;
    let mut terms: Vec<Term> = Vec::new();
    let mut kills: Vec<(u64, usize)> = Vec::new();
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut violations: Vec<String> = Vec::new();
    // Kill no later than one takeover bound before the end, so every kill's takeover is seen.
    let bound = args.lease + BACKOFF_CAP + Duration::from_secs(1);
    let mut next_kill =
        (!args.kill_every.is_zero()).then(|| tokio::time::Instant::now() + args.kill_every);

    loop {
        let kill_at = next_kill.unwrap_or(end);
        tokio::select! {
            () = tokio::time::sleep_until(end) => break,
            () = tokio::time::sleep_until(kill_at), if next_kill.is_some() && kill_at + bound < end => {
                next_kill = Some(kill_at + args.kill_every);
                let Some(term) = terms.last_mut().filter(|t| t.until_ns.is_none()) else {
                    continue;
                };
                let victim = term.candidate;
                if let Some(mut child) = children.remove(&victim) {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    let t = boot_ns();
                    term.until_ns = Some(t);
                    kills.push((t, victim));
                    println!("{:8.3}s  SIGKILL candidate {victim} (leader, fence {})", secs(t), term.fence);
                    spawn(next_id, &mut children)?;
                    next_id += 1;
                }
            }
            Some((id, event)) = rx.recv() => match event {
                Event::Waiting { .. } => {}
                Event::Elected { t_ns, fence } => {
                    println!("{:8.3}s  candidate {id} elected, fence {fence}", secs(t_ns));
                    terms.push(Term { candidate: id, fence, from_ns: t_ns, until_ns: None });
                }
                Event::Lost { t_ns, fence } => {
                    println!("{:8.3}s  candidate {id} lost the lease (fence {fence})", secs(t_ns));
                    if let Some(term) = terms.iter_mut().rev().find(|t| t.candidate == id) {
                        term.until_ns.get_or_insert(t_ns);
                    }
                }
                Event::Acted { accepted: true, .. } => accepted += 1,
                Event::Acted { accepted: false, fence } => {
                    refused += 1;
                    println!("          candidate {id}: action under fence {fence} refused as stale");
                }
            },
        }
    }
    for (id, mut child) in children.drain() {
        if let Ok(Some(status)) = child.try_wait() {
            violations.push(format!("candidate {id} stopped by itself ({status})"));
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    }

    // Candidates report on separate pipes: judge the terms in the order of their clock readings.
    terms.sort_by_key(|t| t.from_ns);
    for pair in terms.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        if next.fence <= prev.fence && next.candidate != prev.candidate {
            violations.push(format!(
                "candidate {} was elected with fence {}, not above the previous leader's {}",
                next.candidate, next.fence, prev.fence
            ));
        }
        if prev.until_ns.is_none_or(|until| until > next.from_ns) {
            violations.push(format!(
                "candidate {} was elected at {:.3}s while candidate {} was still leader",
                next.candidate,
                secs(next.from_ns),
                prev.candidate
            ));
        }
    }
    let mut takeovers = Vec::new();
    for &(killed_at, victim) in &kills {
        let Some(next) = terms.iter().find(|t| t.from_ns > killed_at) else {
            violations.push(format!(
                "nobody took over after candidate {victim} was killed at {:.3}s",
                secs(killed_at)
            ));
            continue;
        };
        let took = next.from_ns - killed_at;
        takeovers.push(took);
        if Duration::from_nanos(took) > bound {
            violations.push(format!(
                "leadership moved {:.3}s after candidate {victim} was killed, beyond lease + \
                 backoff cap + 1 s = {:.3}s",
                took as f64 / 1e9,
                bound.as_secs_f64()
            ));
        }
    }

    // The ledger's own record: accepted fences never go down, and each belongs to the leader
    // that held it.
    let entries = ledger.entries()?;
    let mut owners: HashMap<u64, Vec<usize>> = HashMap::new();
    for t in &terms {
        owners.entry(t.fence).or_default().push(t.candidate);
    }
    for pair in entries.windows(2) {
        if pair[1].0 < pair[0].0 {
            violations.push(format!(
                "the ledger accepted fence {} after fence {}",
                pair[1].0, pair[0].0
            ));
        }
    }
    for &(fence, candidate) in &entries {
        if !owners.get(&fence).is_some_and(|c| c.contains(&candidate)) {
            violations.push(format!(
                "candidate {candidate} wrote under fence {fence}, which it was never granted"
            ));
        }
    }

    let mut took = takeovers.clone();
    let fmt = |v: Option<u64>| v.map_or("-".to_owned(), |ns| format!("{:.3} s", ns as f64 / 1e9));
    println!("elections              {}", terms.len());
    println!("leaders killed         {}", kills.len());
    println!(
        "takeover after kill    p50 {}, max {} (bound: lease + backoff cap + 1 s = {:.3} s)",
        fmt(quantile(&mut took, 0.5)),
        fmt(takeovers.iter().copied().max()),
        bound.as_secs_f64()
    );
    println!(
        "fences                 {}",
        terms
            .iter()
            .map(|t| t.fence.to_string())
            .collect::<Vec<_>>()
            .join(" → ")
    );
    println!("actions                {accepted} accepted, {refused} refused as stale");
    println!("ledger                 {} entries", entries.len());
    if terms.is_empty() {
        violations.push("nobody was ever elected".to_owned());
    }
    if violations.is_empty() {
        println!("result                 ok, 0 violations");
        Ok(true)
    } else {
        for v in violations.iter().take(10) {
            println!("VIOLATION              {v}");
        }
        if violations.len() > 10 {
            println!(
                "VIOLATION              … and {} more",
                violations.len() - 10
            );
        }
        println!(
            "result                 FAILED: {} violations",
            violations.len()
        );
        Ok(false)
    }
}
