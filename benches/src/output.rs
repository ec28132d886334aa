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

/// The goals, checked against this run's records: (goal, verdict, detail).
pub(crate) fn goals(records: &[Record]) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    let mut stores: Vec<String> = records.iter().map(|r| r.store.clone()).collect();
    stores.sort();
    stores.dedup();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for s in &stores {
        let unc = find(records, s, "uncontended", "ours", "acquire latency").next();
        if let Some((r, x)) = unc.and_then(|r| Some((r, r.ratio_to_floor?))) {
            out.push((
                format!("{s}: uncontended acquire within 1.5× the floor"),
                verdict(x <= 1.5),
                format!("{} = {x:.2}× floor", fmt_value(r)),
            ));
        }
        if let Some(r) = find(records, s, "reentrant", "ours", "").next() {
            let calls = r
                .extra
                .get("store_calls")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            out.push((
                format!("{s}: re-entrant re-acquire without a store call"),
                verdict(calls == 0),
                format!("{calls} store calls in {} re-acquisitions", r.samples),
            ));
        }
        let handoffs: Vec<&Record> = find(records, s, "handoff", "ours", "").collect();
        if !handoffs.is_empty() {
            let p50s: Vec<f64> = handoffs.iter().filter_map(|r| r.p50).collect();
            let worst = p50s.iter().copied().fold(0.0, f64::max);
            let best = p50s.iter().copied().fold(f64::INFINITY, f64::min);
            let floor = handoffs[0]
                .p50
                .zip(handoffs[0].ratio_to_floor)
                .map(|(p, x)| p / x);
            let (goal, ok) = match (s.as_str(), floor) {
                ("redis", Some(f)) => (
                    "handoff p50 within 3× the floor and under 100 µs".to_owned(),
                    worst <= 3.0 * f && worst < 100.0,
                ),
                ("etcd", Some(f)) => (
                    "handoff p50 within 3× the put latency".to_owned(),
                    worst <= 3.0 * f,
                ),
                _ => ("handoff p50 under 1 ms".to_owned(), worst < 1000.0),
            };
            out.push((
                format!("{s}: {goal}"),
                verdict(ok),
                format!(
                    "p50 over the grid {}–{} (floor {})",
                    fmt_us(best),
                    fmt_us(worst),
                    floor.map_or("-".into(), fmt_us)
                ),
            ));
            let mut speedups = Vec::new();
            for r in &handoffs {
                let hold = r.params.get("hold_ms").and_then(Value::as_u64);
                if !matches!(hold, Some(1 | 10)) {
                    continue;
                }
                let anc =
                    find(records, s, "handoff", "ancestor", "").find(|a| a.params == r.params);
                if let Some((x, y)) = anc.and_then(|a| a.p50.zip(r.p50)) {
                    speedups.push(x / y);
                }
            }
            if !speedups.is_empty() {
                let min = speedups.iter().copied().fold(f64::INFINITY, f64::min);
                out.push((
                    format!("{s}: handoff ≥ 100× faster than the ancestor at 1–10 ms holds"),
                    verdict(min >= 100.0),
                    format!("smallest speed-up {min:.0}×"),
                ));
            }
        }
        if let Some(r) = find(records, s, "fairness", "ours", "").next() {
            let min = r
                .extra
                .get("min_count")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let j = r.value.unwrap_or(0.0);
            out.push((
                format!("{s}: fairness, 8 processes: min count > 0 and Jain ≥ 0.9"),
                verdict(min > 0 && j >= 0.9),
                format!("Jain {j:.3}, min count {min}"),
            ));
        }
        if s != "sqlite" {
            let big = find(records, s, "renewal", "ours", "")
                .find(|r| r.params.get("keys").and_then(Value::as_u64) == Some(10_000));
            if let Some(r) = big {
                let lost = r
                    .extra
                    .get("missed_deadlines")
                    .and_then(Value::as_u64)
                    .unwrap_or(u64::MAX);
                out.push((
                    format!("{s}: 10,000 held keys renewed without a missed deadline"),
                    verdict(lost == 0),
                    format!("{lost} missed, {} store ops/s", fmt_value(r)),
                ));
            }
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
