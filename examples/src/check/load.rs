//! Reading a run back from its directory: `run.json`, the history files, and the job table.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Meta, Run};
use crate::history::read_file;
use crate::jobs::JobRow;

/// Loads the runs named on the command line: a run directory (with `run.json`), a directory of
/// run directories, or history files of one run (its `run.json` is looked for beside them).
///
/// # Errors
///
/// A path that is none of these, or a file that cannot be read.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            if p.join("run.json").is_file() {
                runs.push(load_dir(p)?);
            } else {
                let mut subs: Vec<PathBuf> = std::fs::read_dir(p)
                    .with_context(|| format!("read {}", p.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|s| s.join("run.json").is_file())
                    .collect();
                if subs.is_empty() {
                    anyhow::bail!(
                        "{} has no run.json and no run directories: not a fleet history",
                        p.display()
                    );
                }
                subs.sort();
                for s in subs {
                    runs.push(load_dir(&s)?);
                }
            }
        } else if p.is_file() {
            // The job table's dump is read through its run, not as events.
            if p.file_name()
                .is_some_and(|n| n != "jobs.jsonl" && n != "run.json")
            {
                files.push(p.clone());
            }
        } else {
            anyhow::bail!("{}: no such file or directory", p.display());
        }
    }
    if !files.is_empty() {
        let dir = files[0].parent().unwrap_or(Path::new("."));
        let meta = read_meta(&dir.join("run.json")).with_context(|| {
            format!(
                "history files need the run.json of their run beside them ({})",
                dir.display()
            )
        })?;
        let mut events = Vec::new();
        for f in &files {
            events.extend(read_file(f)?);
        }
        runs.push(Run {
            meta,
            events,
            table: read_table(&dir.join("jobs.jsonl"))?,
        });
    }
    Ok(runs)
}

fn read_meta(path: &Path) -> anyhow::Result<Meta> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a run.json", path.display()))
}

fn read_table(path: &Path) -> anyhow::Result<Option<Vec<JobRow>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let rows = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect::<anyhow::Result<Vec<JobRow>>>()?;
    Ok(Some(rows))
}

fn load_dir(dir: &Path) -> anyhow::Result<Run> {
    let meta = read_meta(&dir.join("run.json"))?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".jsonl") && n != "jobs.jsonl")
        })
        .collect();
    names.sort();
    let mut events = Vec::new();
    for f in &names {
        events.extend(read_file(f)?);
    }
    Ok(Run {
        meta,
        events,
        table: read_table(&dir.join("jobs.jsonl"))?,
    })
}
