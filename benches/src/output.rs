//! The terminal table, the JSON file and the Markdown report, with its SVG plots drawn by
//! [`crate::svg`].

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bench::Record;
use crate::svg::{fairness_svg, handoff_svg};

/// Facts about the machine the numbers come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) kernel: String,
    pub(crate) cpu_model: String,
    pub(crate) build: String,
}

impl Machine {
    pub(crate) fn detect() -> Self {
        let uname = rustix::system::uname();
        let kernel = format!(
            "{} {} {}",
            uname.sysname().to_string_lossy(),
            uname.release().to_string_lossy(),
            uname.machine().to_string_lossy()
        );
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            kernel,
            cpu_model,
            build: if cfg!(debug_assertions) {
                "debug".to_owned()
            } else {
                "release".to_owned()
            },
        }
    }
}

/// A run read back from its JSON file (`--render`).
#[derive(Debug, Deserialize)]
pub(crate) struct SavedReport {
    pub(crate) command: String,
    pub(crate) machine: Machine,
    pub(crate) records: Vec<Record>,
}

/// The whole run, as written to `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct RunReport<'a> {
    pub(crate) command: String,
    pub(crate) quick: bool,
    pub(crate) runs: usize,
    pub(crate) machine: &'a Machine,
    pub(crate) records: &'a [Record],
}

pub(crate) fn fmt_us(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.2} s", v / 1e6)
    } else if v >= 10_000.0 {
        format!("{:.1} ms", v / 1e3)
    } else if v >= 1000.0 {
        format!("{:.2} ms", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.2} µs")
    }
}

fn fmt_value(r: &Record) -> String {
    match (r.unit.as_str(), r.value) {
        (_, None) => "-".to_owned(),
        ("us", Some(v)) => fmt_us(v),
        ("index", Some(v)) => format!("{v:.3}"),
        (_, Some(v)) if v >= 100.0 => format!("{v:.0}/s"),
        (_, Some(v)) => format!("{v:.1}/s"),
    }
}

fn fmt_params(r: &Record) -> String {
    r.params
        .iter()
        .filter(|(k, _)| k.as_str() != "operation" && k.as_str() != "duration_ms")
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            v => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn notes(r: &Record) -> String {
    if let Some(e) = &r.error {
        return format!("ERROR: {e}");
    }
    let mut n = Vec::new();
    for (k, v) in &r.extra {
        match k.as_str() {
            "max" | "counts" | "wait_percentiles_unit" => {}
            _ => n.push(match v {
                Value::Number(x) => match x.as_f64() {
                    Some(f) if f.fract() != 0.0 => format!("{k}={f:.2}"),
                    _ => format!("{k}={x}"),
                },
                v => format!("{k}={v}"),
            }),
        }
    }
    n.join(" ")
}

/// The terminal table (also the body of the Markdown report's tables).
pub(crate) fn table(records: &[Record], markdown: bool) -> String {
    let head = [
        "scenario",
        "impl",
        "params",
        "metric",
        "p50/value",
        "× floor",
        "p99",
        "p99.9",
        "p50 spread",
        "notes",
    ];
    let mut rows: Vec<[String; 10]> = Vec::new();
    for r in records {
        let lat = r.unit == "us";
        rows.push([
            r.scenario.clone(),
            r.implementation.clone(),
            fmt_params(r),
            r.metric.clone(),
            fmt_value(r),
            r.ratio_to_floor.map_or("-".into(), |x| format!("{x:.2}×")),
            r.p99.map_or("-".into(), fmt_us),
            r.p999.map_or("-".into(), fmt_us),
            match (lat, r.spread_p50) {
                (true, Some((a, b))) if r.runs > 1 => format!("{}–{}", fmt_us(a), fmt_us(b)),
                _ => "-".into(),
            },
            notes(r),
        ]);
    }
    let mut out = String::new();
    if markdown {
        let _ = writeln!(out, "| {} |", head.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
        for row in &rows {
            let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        return out;
    }
    let mut w = head.map(|h| h.chars().count());
    for row in &rows {
        for (i, c) in row.iter().enumerate().take(9) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 9 {
                s.push_str(c);
            } else {
                let pad = w[i].saturating_sub(c.chars().count());
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(&head.map(str::to_owned)));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    out
}

fn find<'a>(
    records: &'a [Record],
    store: &str,
    scenario: &str,
    imp: &str,
    metric: &str,
) -> impl Iterator<Item = &'a Record> {
    let (store, scenario, imp, metric) = (
        store.to_owned(),
        scenario.to_owned(),
        imp.to_owned(),
        metric.to_owned(),
    );
    records.iter().filter(move |r| {
        r.store == store
            && r.scenario == scenario
            && r.implementation == imp
            && (metric.is_empty() || r.metric == metric)
            && r.error.is_none()
    })
}

/// The floor every ratio of `store`'s records is taken to (µs): the fastest floor where the
/// store has one, else the floor.
fn floor_of<'a>(records: &'a [Record], store: &str) -> Option<&'a Record> {
    find(records, store, "floor", "floor-fastest", "round trip")
        .next()
        .or_else(|| find(records, store, "floor", "floor", "round trip").next())
}

/// The p50 (µs) of the physical floor measured after `idle_ms` of sleep, if this run has it.
fn idle_floor_of(records: &[Record], store: &str, idle_ms: u64) -> Option<f64> {
    let after = |imp| {
        find(records, store, "floor", imp, "round trip after idle")
            .find(|r| param(r, "idle_ms") == Some(idle_ms))
            .and_then(|r| r.p50)
    };
    after("floor-fastest").or_else(|| after("floor"))
}

fn param(r: &Record, name: &str) -> Option<u64> {
    r.params.get(name).and_then(Value::as_u64)
}

fn extra_f64(r: &Record, name: &str) -> Option<f64> {
    r.extra.get(name).and_then(Value::as_f64)
}

/// The handoffs' p50 against the floor after the same idle as the hold before the release (the
/// floor itself for no hold): the worst cell, or nothing if the run has no idle floors.
fn after_idle(records: &[Record], store: &str, handoffs: &[&Record], floor: f64) -> String {
    let worst = handoffs
        .iter()
        .filter_map(|r| {
            let hold = param(r, "hold_ms")?;
            let reference = if hold == 0 {
                floor
            } else {
                idle_floor_of(records, store, hold)?
            };
            Some((r.p50? / reference, hold, param(r, "waiters")?, reference))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match worst {
        Some((ratio, hold, waiters, reference)) => format!(
            "; against the floor after an idle as long as the hold: worst {ratio:.2}× (hold \
             {hold} ms, {waiters} waiters, {} {})",
            if hold == 0 {
                "the floor"
            } else {
                "the floor after that idle"
            },
            fmt_us(reference)
        ),
        None => String::new(),
    }
}

/// The goals, checked against this run's records: (goal, verdict, detail). Ratios are
/// to the floor measured in the same run (on Redis the fastest floor).
pub(crate) fn goals(records: &[Record]) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    let mut stores: Vec<String> = records.iter().map(|r| r.store.clone()).collect();
    stores.sort();
    stores.dedup();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for s in &stores {
        let floor = floor_of(records, s);
        let floor_p50 = floor.and_then(|f| f.p50);
        let floor_name = if s == "etcd" { "put" } else { "floor" };

        // Handoff: p50 ≤ 1.5× and p99 ≤ 4× the floor in every cell, at 1, 2 and 8 waiters.
        let handoffs: Vec<&Record> = find(records, s, "handoff", "ours", "").collect();
        if let (false, Some(f)) = (handoffs.is_empty(), floor_p50) {
            let mut waiters: Vec<u64> = handoffs
                .iter()
                .filter_map(|r| param(r, "waiters"))
                .collect();
            waiters.sort_unstable();
            waiters.dedup();
            let worst = |pick: fn(&Record) -> Option<f64>, w: u64| {
                handoffs
                    .iter()
                    .filter(|r| param(r, "waiters") == Some(w))
                    .filter_map(|r| pick(r))
                    .fold(0.0, f64::max)
            };
            let per_waiters = |pick: fn(&Record) -> Option<f64>| {
                waiters
                    .iter()
                    .map(|&w| {
                        let x = worst(pick, w);
                        format!("{w} waiters {} = {:.2}×", fmt_us(x), x / f)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let all_waiters = [1, 2, 8].iter().all(|w| waiters.contains(w));
            let missing = if all_waiters {
                String::new()
            } else {
                " (this run's grid lacks some of 1, 2 and 8 waiters)".to_owned()
            };
            let worst_p50 = waiters
                .iter()
                .map(|&w| worst(|r| r.p50, w))
                .fold(0.0, f64::max);
            let worst_p99 = waiters
                .iter()
                .map(|&w| worst(|r| r.p99, w))
                .fold(0.0, f64::max);
            out.push((
                format!(
                    "{s}: handoff p50 ≤ 1.5× the {floor_name} at 1, 2 and 8 waiters (flat in \
                     waiters)"
                ),
                verdict(all_waiters && worst_p50 <= 1.5 * f),
                format!(
                    "worst p50 over the holds: {}; {floor_name} {}{missing}{}",
                    per_waiters(|r| r.p50),
                    fmt_us(f),
                    after_idle(records, s, &handoffs, f)
                ),
            ));
            out.push((
                format!("{s}: handoff p99 ≤ 4× the {floor_name}"),
                verdict(all_waiters && worst_p99 <= 4.0 * f),
                format!("worst p99 over the holds: {}", per_waiters(|r| r.p99)),
            ));
        }

        // Fairness, 8 processes × 1 ms holds.
        if let Some(r) = find(records, s, "fairness", "ours", "").next() {
            let procs = param(r, "processes").unwrap_or(0);
            let hold_ms = param(r, "hold_ms").unwrap_or(0) as f64;
            let j = r.value.unwrap_or(0.0);
            let runs: Vec<Vec<u64>> = r
                .extra
                .get("counts")
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default();
            // The smallest count of a run against that run's mean, over the runs.
            let low = runs
                .iter()
                .filter(|c| !c.is_empty())
                .map(|c| {
                    let mean = c.iter().sum::<u64>() as f64 / c.len() as f64;
                    c.iter().copied().min().unwrap_or(0) as f64 / mean.max(1e-9)
                })
                .fold(f64::INFINITY, f64::min);
            let worst_ms = extra_f64(r, "worst_wait_ms").unwrap_or(f64::INFINITY);
            // The handoff p99 of the cell nearest to fairness's: 1 ms hold, most waiters.
            let cell = handoffs
                .iter()
                .filter(|h| param(h, "hold_ms") == Some(1))
                .max_by_key(|h| param(h, "waiters"))
                .or_else(|| handoffs.iter().max_by_key(|h| param(h, "waiters")));
            let bound_ms = cell
                .and_then(|h| h.p99)
                .map(|p99| 1.5 * procs.saturating_sub(1) as f64 * (hold_ms + p99 / 1e3));
            let ok =
                procs == 8 && j >= 0.99 && low >= 0.8 && bound_ms.is_some_and(|b| worst_ms <= b);
            out.push((
                format!(
                    "{s}: fairness, 8 processes: Jain ≥ 0.99, none below 80 % of the mean, \
                     worst wait ≤ 1.5 × (procs − 1) × (hold + handoff p99)"
                ),
                verdict(ok),
                format!(
                    "{procs} processes: Jain {j:.3}, smallest count {:.0} % of the mean, worst \
                     wait {worst_ms:.1} ms against {}",
                    low * 100.0,
                    match (bound_ms, cell) {
                        (Some(b), Some(h)) => format!(
                            "{b:.1} ms (handoff p99 {} at hold {} ms, {} waiters)",
                            h.p99.map_or("-".into(), fmt_us),
                            param(h, "hold_ms").unwrap_or(0),
                            param(h, "waiters").unwrap_or(0)
                        ),
                        _ => "no handoff p99 in this run".to_owned(),
                    }
                ),
            ));
        }

        // One key with 1 ms holds, at the most processes measured (8 in the full grid).
        let one_key = |imp: &str| {
            find(records, s, "one-key", imp, "")
                .filter(|r| param(r, "hold_ms") == Some(1))
                .max_by_key(|r| param(r, "processes"))
                .and_then(|r| Some((param(r, "processes")?, r.value?)))
        };
        if let Some((procs, ours)) = one_key("ours") {
            let mut checks = Vec::new();
            let mut ok = procs == 8;
            for (imp, factor) in [("ours-barging", 1.0), ("rslock", 1.5), ("redis-py", 1.5)] {
                if let Some((_, v)) = one_key(imp).filter(|(p, _)| *p == procs) {
                    ok &= ours >= factor * v;
                    checks.push(format!("{imp} {v:.0}/s ({:.2}×)", ours / v.max(1e-9)));
                }
            }
            out.push((
                format!(
                    "{s}: one key, 8 processes, 1 ms holds: ours ≥ ours-barging, ≥ 1.5× rslock \
                     and ≥ 1.5× redis-py (those measured)"
                ),
                verdict(ok && !checks.is_empty()),
                format!(
                    "{procs} processes, 1 ms holds: ours {ours:.0}/s; {}",
                    if checks.is_empty() {
                        "nothing to compare with".to_owned()
                    } else {
                        checks.join(", ")
                    }
                ),
            ));
        }

        // Uncontended acquire on Redis: no slower than rslock, within 1.5× the fastest floor.
        if s == "redis" {
            let acquire = |imp: &str| {
                find(records, s, "uncontended", imp, "acquire latency")
                    .next()
                    .and_then(|r| r.p50)
            };
            if let (Some(ours), Some(f)) = (acquire("ours"), floor_p50) {
                let rslock = acquire("rslock");
                let ok = ours <= 1.5 * f && rslock.is_some_and(|r| ours <= r);
                out.push((
                    format!("{s}: uncontended acquire ≤ rslock's and ≤ 1.5× the fastest floor"),
                    verdict(ok),
                    format!(
                        "ours {} = {:.2}× floor ({}), rslock {}",
                        fmt_us(ours),
                        ours / f,
                        fmt_us(f),
                        rslock.map_or("not measured".into(), fmt_us)
                    ),
                ));
            }
        }

        // Crash: SQLite (process liveness) ≤ 50 ms p99 with a 10 s lease; the others within the
        // lease and one round trip.
        if let Some(r) = find(records, s, "crash", "ours", "").next() {
            let lease_ms = param(r, "lease_ms").unwrap_or(0);
            let p99 = r.p99.unwrap_or(f64::INFINITY);
            let (goal, ok, bound) = if s == "sqlite" {
                (
                    "crash: a SIGKILLed holder's key reaches a waiter ≤ 50 ms p99 (lease 10 s)"
                        .to_owned(),
                    lease_ms == 10_000 && p99 <= 50_000.0,
                    "50 ms".to_owned(),
                )
            } else {
                let rtt = floor.and_then(|f| f.p99).unwrap_or(f64::INFINITY);
                let b = lease_ms as f64 * 1e3 + rtt;
                (
                    "crash: a SIGKILLed holder's key reaches a waiter within the lease + 1 \
                     round trip"
                        .to_owned(),
                    p99 <= b,
                    format!("{} (lease + {floor_name} p99)", fmt_us(b)),
                )
            };
            out.push((
                format!("{s}: {goal}"),
                verdict(ok),
                format!("p99 {} against {bound}, lease {lease_ms} ms", fmt_us(p99)),
            ));
        }
    }
    out
}

/// Writes `report.md`, `handoff-<store>.svg` and `fairness-<store>.svg` under `dir`.
pub(crate) fn write_report(
    dir: &Path,
    command: &str,
    machine: &Machine,
    records: &[Record],
) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    let mut md = String::new();
    let _ = writeln!(md, "# lease-bench report\n");
    let _ = writeln!(md, "Command: `{command}`\n");
    let _ = writeln!(
        md,
        "Machine: {} cores, {}, {}; {} build.\n",
        machine.nproc, machine.cpu_model, machine.kernel, machine.build
    );
    let mut stores: Vec<(String, String)> = records
        .iter()
        .map(|r| (r.store.clone(), r.store_version.clone()))
        .collect();
    stores.sort();
    stores.dedup();
    let _ = writeln!(md, "## Goals\n");
    let _ = writeln!(md, "| goal | verdict | measured |\n|---|---|---|");
    for (g, v, d) in goals(records) {
        let _ = writeln!(md, "| {g} | {v} | {d} |");
    }
    for (store, version) in &stores {
        let rs: Vec<Record> = records
            .iter()
            .filter(|r| &r.store == store)
            .cloned()
            .collect();
        let _ = writeln!(md, "\n## {store} ({version})\n");
        let _ = writeln!(md, "{}", table(&rs, true));
        if let Some(svg) = handoff_svg(store, &rs) {
            let name = format!("handoff-{store}.svg");
            std::fs::write(dir.join(&name), svg)?;
            let _ = writeln!(md, "![handoff latency on {store}]({name})\n");
            files.push(name);
        }
        if let Some(svg) = fairness_svg(store, &rs) {
            let name = format!("fairness-{store}.svg");
            std::fs::write(dir.join(&name), svg)?;
            let _ = writeln!(md, "![fairness on {store}]({name})\n");
            files.push(name);
        }
    }
    std::fs::write(dir.join("report.md"), md)?;
    files.push("report.md".to_owned());
    Ok(files)
}
