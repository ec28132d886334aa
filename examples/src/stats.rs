//! What a worker reports to the fleet at the end of its run, and percentiles over it.

use serde::{Deserialize, Serialize};

/// One worker's counts and samples, printed as one JSON line on its stdout at exit.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    /// The worker's index.
    pub worker: usize,
    /// Leases granted to this worker.
    pub acquisitions: u64,
    /// Attempts that found the job's key held by another worker.
    pub busy: u64,
    /// Jobs this worker completed (its fenced write was accepted).
    pub completed: u64,
    /// Jobs found already completed after taking their lease (nothing written).
    pub already_done: u64,
    /// Fenced writes the job table rejected because a newer fence had written.
    pub stale_rejected: u64,
    /// Leases lost while held.
    pub losses: u64,
    /// Acquire latencies in microseconds (one per acquisition).
    pub acquire_us: Vec<u64>,
}

/// The `q`-quantile (0..=1) of `samples` by nearest rank; `None` when empty.
pub fn quantile(samples: &mut [u64], q: f64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(quantile(&mut v, 0.5), Some(50));
        assert_eq!(quantile(&mut v, 0.99), Some(99));
        assert_eq!(quantile(&mut v, 1.0), Some(100));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
