//! The report's plots: plain SVG written by hand, so no font or system library is needed to
//! produce them.

use std::fmt::Write as _;

use serde_json::Value;

use crate::bench::Record;
use crate::output::fmt_us;

const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Handoff p50 (solid) and p99 (dashed) per grid cell, one line per implementation, log scale.
pub(crate) fn handoff_svg(store: &str, rs: &[Record]) -> Option<String> {
    let hs: Vec<&Record> = rs
        .iter()
        .filter(|r| r.scenario == "handoff" && r.error.is_none() && r.p50.is_some())
        .collect();
    if hs.is_empty() {
        return None;
    }
    let mut cells: Vec<(u64, u64)> = hs
        .iter()
        .map(|r| {
            (
                r.params.get("hold_ms").and_then(Value::as_u64).unwrap_or(0),
                r.params.get("waiters").and_then(Value::as_u64).unwrap_or(0),
            )
        })
        .collect();
    cells.sort();
    cells.dedup();
    let mut imps: Vec<String> = hs.iter().map(|r| r.implementation.clone()).collect();
    imps.dedup();
    let (w, h, left, right, top, bottom) = (820.0, 420.0, 70.0, 150.0, 40.0, 70.0);
    let floor = rs
        .iter()
        .find(|r| r.scenario == "floor" && r.error.is_none())
        .and_then(|r| r.p50);
    let vals: Vec<f64> = hs
        .iter()
        .flat_map(|r| [r.p50, r.p99])
        .chain([floor])
        .flatten()
        .collect();
    let lo = vals
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(1.0)
        .log10()
        .floor();
    let hi = vals
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .max(10.0)
        .log10()
        .ceil();
    let hi = if hi <= lo { lo + 1.0 } else { hi };
    let x = |i: usize| left + (w - left - right) * (i as f64 + 0.5) / cells.len() as f64;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - (v.max(1.0).log10() - lo) / (hi - lo));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Handoff latency on {} (p50 solid, p99 dashed; log scale)</text>"#,
        w / 2.0,
        esc(store)
    );
    let mut e = lo as i32;
    while f64::from(e) <= hi {
        let v = 10f64.powi(e);
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - right,
            left - 6.0,
            yy + 4.0,
            esc(&fmt_us(v))
        );
        e += 1;
    }
    if let Some(f) = floor {
        let yy = y(f);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#555" stroke-dasharray="2,3"/><text x="{}" y="{:.1}" fill="#555">store floor {}</text>"##,
            w - right,
            left + 4.0,
            yy - 4.0,
            esc(&fmt_us(f))
        );
    }
    for (i, (hold, waiters)) in cells.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{hold} ms</text><text x="{:.1}" y="{}" text-anchor="middle">{waiters} w</text>"#,
            x(i),
            h - bottom + 16.0,
            x(i),
            h - bottom + 30.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">hold time / waiters</text>"#,
        left + (w - left - right) / 2.0,
        h - 12.0
    );
    for (k, imp) in imps.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        for (field, dash) in [(0, ""), (1, r#" stroke-dasharray="5,4""#)] {
            let pts: Vec<String> = cells
                .iter()
                .enumerate()
                .filter_map(|(i, cell)| {
                    hs.iter()
                        .find(|r| {
                            &r.implementation == imp
                                && r.params.get("hold_ms").and_then(Value::as_u64) == Some(cell.0)
                                && r.params.get("waiters").and_then(Value::as_u64) == Some(cell.1)
                        })
                        .and_then(|r| if field == 0 { r.p50 } else { r.p99 })
                        .map(|v| format!("{:.1},{:.1}", x(i), y(v)))
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="{}"/>"#,
                pts.join(" ")
            );
            if field == 0 {
                for p in &pts {
                    let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
                    let _ = writeln!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{c}"/>"#);
                }
            }
        }
        let ly = top + 20.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            w - right + 12.0,
            ly,
            w - right + 32.0,
            ly + 6.0,
            esc(imp)
        );
    }
    let _ = writeln!(s, "</svg>");
    Some(s)
}

/// Per-process acquisition counts of the fairness scenario, one group of bars per
/// implementation.
pub(crate) fn fairness_svg(store: &str, rs: &[Record]) -> Option<String> {
    let fs: Vec<(&Record, Vec<u64>)> = rs
        .iter()
        .filter(|r| r.scenario == "fairness" && r.error.is_none())
        .filter_map(|r| {
            let runs: Vec<Vec<u64>> =
                serde_json::from_value(r.extra.get("counts")?.clone()).ok()?;
            Some((r, runs.into_iter().next()?))
        })
        .collect();
    if fs.is_empty() {
        return None;
    }
    let (w, h, left, top, bottom) = (820.0, 380.0, 60.0, 40.0, 60.0);
    let max = fs
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let groups = fs.len() as f64;
    let gw = (w - left - 20.0) / groups;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Acquisitions per process, 8 processes on one key, {} (first run)</text>"#,
        w / 2.0,
        esc(store)
    );
    let plot_h = h - top - bottom;
    for frac in [0.0, 0.5, 1.0] {
        let yy = top + plot_h * (1.0 - frac);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{:.0}</text>"##,
            w - 20.0,
            left - 6.0,
            yy + 4.0,
            max * frac
        );
    }
    for (g, (r, counts)) in fs.iter().enumerate() {
        let c = COLORS[g % COLORS.len()];
        let x0 = left + gw * g as f64 + gw * 0.1;
        let bw = gw * 0.8 / counts.len().max(1) as f64;
        for (i, &n) in counts.iter().enumerate() {
            let bh = plot_h * n as f64 / max;
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{c}"/>"#,
                x0 + bw * i as f64,
                top + plot_h - bh,
                (bw - 2.0).max(1.0),
                bh
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{} (Jain {:.3})</text>"#,
            x0 + gw * 0.4,
            h - bottom + 20.0,
            esc(&r.implementation),
            r.value.unwrap_or(0.0)
        );
    }
    let _ = writeln!(s, "</svg>");
    Some(s)
}
