//! `lease-bench`: a multi-process benchmark harness that puts our locks beside the raw store
//! floor, the ancestor configuration, and the peers a user would pick instead.
//!
//! Every contender is a real OS process: the harness re-executes itself with a hidden `worker`
//! subcommand, and talks to each worker over stdin/stdout JSON lines. Latencies between
//! processes are differences of `CLOCK_BOOTTIME` readings taken in the two processes (same host,
//! same clock). See `benches/README.md` for the scenarios and how to read the output.

mod backend;
mod bench;
mod fleet;
mod output;
mod proto;
mod stats;
mod store;
mod svg;
mod worker;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lease_core::{Capabilities, LeaseStore as _};
use leasehold::Scheme;

use crate::bench::{Ctx, Record, SCENARIOS};
use crate::output::Machine;
use crate::proto::{Imp, Kind, StoreTarget};

#[derive(Debug, Parser)]
#[command(
    name = "lease-bench",
    version,
    about = "Benchmarks lease locks across real processes: ours beside the store floor, the \
             ancestor configuration and the peers",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Stores to measure: `sqlite`, `redis[://HOST:PORT]`, `etcd[://HOST:PORT]`, or `all`;
    /// repeat the flag or separate with commas. Redis or etcd without a URL start a throwaway
    /// local server.
    #[arg(long = "store", default_value = "sqlite")]
    stores: Vec<String>,
    /// Scenarios to run (repeatable or comma-separated; default all). The floor always runs,
    /// since every ratio needs it.
    #[arg(long = "scenario", value_delimiter = ',', value_parser = scenario_names())]
    scenarios: Vec<String>,
    /// A short run (under a minute per store) that checks the harness, not the timings.
    #[arg(long)]
    quick: bool,
    /// Run each worker's scenario in a task spawned on its runtime's two worker threads, as a
    /// service's request handlers run, instead of on the worker's main thread in `block_on`, as
    /// a program's `main` does (the default). Wake-ups between the caller and the store's tasks
    /// then stay on one worker thread where tokio can keep them there.
    #[arg(long)]
    in_task: bool,
    /// Also write every record as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where report.md and the SVG plots go.
    #[arg(long, default_value = "target/lease-bench")]
    out: PathBuf,
    /// Repeats of every measurement, for the spread of the median (default 3; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=100))]
    runs: Option<u16>,
    /// Measure nothing: print the table and goals of a JSON file written by `--json`, and write
    /// its report and plots to `--out`.
    #[arg(long, value_name = "JSON")]
    render: Option<PathBuf>,
}

fn scenario_names() -> clap::builder::PossibleValuesParser {
    let mut v: Vec<&'static str> = SCENARIOS.to_vec();
    v.push("all");
    clap::builder::PossibleValuesParser::new(v)
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One worker process (started by the harness itself).
    #[command(hide = true)]
    Worker {
        /// The job, as JSON.
        job: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Worker { job }) = &cli.cmd {
        return worker::main(job);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lease-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lease-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A store to measure, what it declares, and the throwaway server or directory that backs it.
struct Resolved {
    target: StoreTarget,
    caps: Capabilities,
    _dir: Option<tempfile::TempDir>,
    _server: Option<lease_testkit::Served>,
}

/// Splits `--store` values on commas, keeping commas inside a URL's host list (etcd's).
fn store_specs(values: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        for piece in v.split(',') {
            let piece = piece.trim();
            let starts_new = piece == "all"
                || piece.contains("://")
                || Scheme::ALL.iter().any(|s| piece.starts_with(s.name()));
            match out.last_mut() {
                // `HOST:PORT` after a URL: the URL's next host.
                Some(last) if !starts_new && piece.contains(':') && last.contains("://") => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ if piece.is_empty() => bail!("empty --store value in `{v}`"),
                _ => out.push(piece.to_owned()),
            }
        }
    }
    let mut expanded = Vec::new();
    for s in out {
        if s == "all" {
            for scheme in Scheme::ALL {
                if scheme.is_built() {
                    expanded.push(scheme.name().to_owned());
                } else {
                    eprintln!(
                        "lease-bench: `all` skips {scheme}: built without the `{}` feature",
                        scheme.feature()
                    );
                }
            }
        } else {
            expanded.push(s);
        }
    }
    Ok(expanded)
}

/// A throwaway server for `scheme`'s store.
fn start_server(scheme: Scheme) -> anyhow::Result<lease_testkit::Served> {
    let name = scheme.name();
    let what = lease_testkit::server_program(name).unwrap_or(name);
    let options = lease_testkit::ServeOptions {
        durable: false,
        prefix: "lease-bench/".to_owned(),
    };
    let start = std::panic::AssertUnwindSafe(|| lease_testkit::serve(name, &options));
    match std::panic::catch_unwind(start) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => bail!(
            "`{what}` is not installed, so no throwaway server can be started; install it or \
             pass a URL (--store {name}://HOST:PORT)"
        ),
        Err(_) => bail!("could not start a throwaway {what} (see the message above)"),
    }
}

/// The store `spec` names (`NAME` or `NAME://…`), opened once so that a bad one fails here.
async fn resolve(spec: &str) -> anyhow::Result<Resolved> {
    let (name, rest) = match spec.split_once("://") {
        Some((scheme, rest)) => (scheme, Some(rest)),
        None => (spec, None),
    };
    let Some(scheme) = Scheme::named(name) else {
        let forms: Vec<String> = Scheme::ALL
            .into_iter()
            .map(|s| {
                if s.is_server() {
                    format!("{s}[://HOST:PORT]")
                } else {
                    s.to_string()
                }
            })
            .collect();
        bail!(
            "unknown store `{name}` in `{}`: use {} or all",
            store::redact(spec),
            forms.join(", ")
        );
    };
    if !scheme.is_built() {
        bail!(
            "`{}` needs the `{feature}` feature: cargo run -p lease-bench --features {feature}",
            store::redact(spec),
            feature = scheme.feature()
        );
    }
    let (mut dir, mut server) = (None, None);
    let mut location = match rest {
        Some(_) => spec.to_owned(),
        None if scheme.is_server() => {
            let s = start_server(scheme)?;
            let url = s.url().to_owned();
            server = Some(s);
            url
        }
        None => {
            let d = tempfile::Builder::new()
                .prefix("lease-bench-")
                .tempdir()
                .with_context(|| format!("creating a temp dir for the {scheme} database"))?;
            let url = format!("{scheme}://{}", d.path().join("locks.db").display());
            dir = Some(d);
            url
        }
    };
    // Our own server or database: with the waiter queue, so that both modes are measured.
    if rest.is_none() {
        for option in backend::of(scheme).queued_grants_options() {
            location.push(if location.contains('?') { '&' } else { '?' });
            location.push_str(option);
        }
    }
    let caps = leasehold::open(&location)
        .await
        .with_context(|| format!("opening {}", store::redact(&location)))?
        .capabilities();
    Ok(Resolved {
        target: StoreTarget { scheme, location },
        caps,
        _dir: dir,
        _server: server,
    })
}

/// `--render`: the table, goals, report and plots of a saved run.
fn render(path: &std::path::Path, out: &std::path::Path) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let saved: output::SavedReport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a lease-bench JSON file", path.display()))?;
    let mut stores: Vec<(String, String)> = saved
        .records
        .iter()
        .map(|r| (r.store.clone(), r.store_version.clone()))
        .collect();
    stores.dedup();
    for (store, version) in &stores {
        let rs: Vec<Record> = saved
            .records
            .iter()
            .filter(|r| &r.store == store)
            .cloned()
            .collect();
        println!("\n== {store} ({version})\n");
        print!("{}", output::table(&rs, false));
    }
    print_goals(&saved.records);
    output::write_report(out, &saved.command, &saved.machine, &saved.records)?;
    println!("report: {}", out.join("report.md").display());
    Ok(true)
}

fn print_goals(records: &[Record]) {
    let goals = output::goals(records);
    if !goals.is_empty() {
        println!("\n== goals\n");
        for (g, v, d) in &goals {
            println!("{v:>8}  {g}: {d}");
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    if let Some(path) = &cli.render {
        return render(path, &cli.out);
    }
    let specs = store_specs(&cli.stores)?;
    let mut scenarios: Vec<&str> =
        if cli.scenarios.is_empty() || cli.scenarios.iter().any(|s| s == "all") {
            SCENARIOS.to_vec()
        } else {
            SCENARIOS
                .iter()
                .copied()
                .filter(|s| *s == "floor" || cli.scenarios.iter().any(|c| c == s))
                .collect()
        };
    scenarios.dedup();
    let runs = usize::from(cli.runs.unwrap_or(if cli.quick { 1 } else { 3 }));
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let machine = Machine::detect();
    std::fs::create_dir_all(&cli.out)
        .with_context(|| format!("creating the out dir {}", cli.out.display()))?;
    let log_path = cli.out.join("workers.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;

    // Resolve every store first, so a bad --store fails before anything is measured.
    let mut resolved = Vec::new();
    for s in &specs {
        resolved.push(resolve(s).await?);
    }

    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>7} [{bar:30.cyan/blue}] {pos}/{len} {elapsed_precise} {wide_msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut records: Vec<Record> = Vec::new();
    for r in &resolved {
        let backend = backend::of(r.target.scheme);
        let version = backend
            .version(&r.target.location)
            .await
            .unwrap_or_else(|e| format!("unknown ({e:#})"));
        let mut imps = vec![Imp::Ours];
        if r.caps.queued_grants {
            imps.push(Imp::OursBarging);
        }
        imps.extend([Imp::Ancestor, Imp::StoreTryLock]);
        let mut peer_versions = BTreeMap::new();
        for &peer in backend.peers() {
            match backend.peer_version(peer) {
                Ok(v) => {
                    imps.push(peer);
                    peer_versions.insert(peer, v);
                }
                Err(e) => eprintln!(
                    "lease-bench: {} leaves out the {} peer: {e:#}",
                    r.target.scheme.name(),
                    peer.name()
                ),
            }
        }
        let count = |kind: Kind| imps.iter().filter(|i| i.kind() == kind).count();
        let (locks, peers) = (count(Kind::Lock), count(Kind::Peer));
        let total: u64 = scenarios
            .iter()
            .map(|s| bench::cells(s, cli.quick, imps.len(), locks, peers))
            .sum();
        let bar = multi.add(ProgressBar::new(total));
        bar.set_style(style.clone());
        bar.set_prefix(r.target.scheme.name());
        let mut ctx = Ctx {
            target: r.target.clone(),
            version,
            caps: r.caps,
            quick: cli.quick,
            runs,
            in_task: cli.in_task,
            log: &log,
            imps,
            peer_versions,
            floor_p50: None,
            seq: 0,
        };
        let mut store_records = Vec::new();
        for s in &scenarios {
            let started = std::cell::Cell::new(false);
            let progress = |label: &str| {
                if started.replace(true) {
                    bar.inc(1);
                }
                bar.set_message(label.to_owned());
                if !tty {
                    // No bar without a terminal: one line per measurement instead.
                    eprintln!("[{}] {label}", r.target.scheme.name());
                }
            };
            let rs = bench::run(&mut ctx, s, &progress).await;
            bar.inc(1);
            for rec in &rs {
                if let Some(e) = &rec.error {
                    bar.println(format!(
                        "{} {} {}: {e}",
                        rec.store, rec.scenario, rec.implementation
                    ));
                }
            }
            store_records.extend(rs);
        }
        bar.finish_with_message("done");
        multi.suspend(|| {
            println!(
                "\n== {} ({}){}\n",
                r.target.scheme.name(),
                ctx.version,
                if cli.quick { ", quick" } else { "" }
            );
            print!("{}", output::table(&store_records, false));
        });
        records.extend(store_records);
    }

    print_goals(&records);
    if let Some(path) = &cli.json {
        let report = output::RunReport {
            command: command.clone(),
            quick: cli.quick,
            runs,
            machine: &machine,
            records: &records,
        };
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON: {}", path.display());
    }
    let files = output::write_report(&cli.out, &command, &machine, &records)?;
    println!(
        "report: {} ({})",
        cli.out.join("report.md").display(),
        files.join(", ")
    );
    let failed = records.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        eprintln!(
            "lease-bench: {failed} measurement(s) failed; worker logs in {}",
            log_path.display()
        );
    }
    Ok(failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_specs_split_on_commas_but_keep_a_urls_host_list() {
        let values = [
            "sqlite,etcd://h1:2379,h2:2379/p/,redis".to_owned(),
            "redis://h:1".to_owned(),
        ];
        let specs = store_specs(&values).unwrap();
        assert_eq!(
            specs,
            [
                "sqlite",
                "etcd://h1:2379,h2:2379/p/",
                "redis",
                "redis://h:1"
            ]
        );
        assert!(store_specs(&["sqlite,,redis".to_owned()]).is_err());
    }
}
