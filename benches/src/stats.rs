//! Percentiles, spread and Jain's fairness index.

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
}

/// The `q` quantile (0..=1, nearest rank) of sorted values.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises nanosecond samples; `None` if there are none.
pub(crate) fn summarize(samples_ns: &[u64]) -> Option<Summary> {
    if samples_ns.is_empty() {
        return None;
    }
    let mut s = samples_ns.to_vec();
    s.sort_unstable();
    let us = |v: u64| v as f64 / 1000.0;
    Some(Summary {
        p50: us(quantile(&s, 0.5)),
        p99: us(quantile(&s, 0.99)),
        p999: us(quantile(&s, 0.999)),
        max: us(*s.last().unwrap_or(&0)),
        n: s.len(),
    })
}

/// Min and max of the per-run medians (µs).
pub(crate) fn spread(runs: &[Vec<u64>]) -> Option<(f64, f64)> {
    let p50s: Vec<f64> = runs
        .iter()
        .filter_map(|r| summarize(r))
        .map(|s| s.p50)
        .collect();
    if p50s.is_empty() {
        return None;
    }
    let min = p50s.iter().copied().fold(f64::INFINITY, f64::min);
    let max = p50s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((min, max))
}

/// Jain's fairness index: 1 when every process got the same share, 1/n when one got all.
pub(crate) fn jain(counts: &[u64]) -> f64 {
    let n = counts.len() as f64;
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let sq: f64 = counts.iter().map(|&c| (c as f64) * (c as f64)).sum();
    if sq == 0.0 { 0.0 } else { sum * sum / (n * sq) }
}

/// The median of some values.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some(v[(v.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let sum = summarize(&s).unwrap();
        assert_eq!(sum.p50, 500.0);
        assert_eq!(sum.p99, 990.0);
        assert_eq!(sum.p999, 999.0);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn jain_is_one_when_fair_and_one_over_n_when_not() {
        assert!((jain(&[5, 5, 5, 5]) - 1.0).abs() < 1e-9);
        assert!((jain(&[8, 0, 0, 0]) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn spread_is_min_and_max_of_run_medians() {
        let runs = vec![vec![1000, 2000, 3000], vec![4000, 5000, 6000]];
        assert_eq!(spread(&runs), Some((2.0, 5.0)));
    }
}
