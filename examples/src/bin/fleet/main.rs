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

mod report;
mod resources;
mod run;
mod server;
mod spawn;
mod tally;
mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lease_examples::check;

use crate::run::{RunArgs, fleet};
use crate::worker::{WorkerArgs, worker};

#[derive(Parser)]
#[command(about = "A fleet of worker processes sharing jobs under leases, with fenced writes")]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Role {
    /// Checks the histories of chaos runs against the lock's invariants: run directories, a
    /// directory of them, or the history files of one run.
    Check {
        /// Run directories (with run.json) or history files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// One Markdown table row per run (after the table's header) instead of the result
        /// lines.
        #[arg(long)]
        markdown: bool,
    },
    /// One worker process (started by the fleet).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Worker(args)) => worker(args).await,
        Some(Role::Check { paths, markdown }) => check_cmd(&paths, markdown),
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

fn check_cmd(paths: &[PathBuf], markdown: bool) -> anyhow::Result<bool> {
    use std::io::Write as _;
    let runs = check::load(paths)?;
    let mut ok = true;
    let mut out = std::io::stdout().lock();
    if markdown && writeln!(out, "{}", check::Report::MARKDOWN_HEADER).is_err() {
        return Ok(runs.iter().all(|r| check::check(r).ok()));
    }
    for run in &runs {
        let report = check::check(run);
        ok &= report.ok();
        let lines: Vec<String> = if markdown {
            vec![report.markdown_row()]
        } else {
            std::iter::once(report.line())
                .chain(report.violation_lines(10))
                .collect()
        };
        for l in lines {
            // A closed pipe (`fleet check … | head`) ends the output, not the verdict.
            if writeln!(out, "{l}").is_err() {
                return Ok(ok && runs.iter().all(|r| check::check(r).ok()));
            }
        }
    }
    Ok(ok)
}
