//! Summary statistics of per-call samples, in milliseconds.

/// Count, percentiles (nearest rank) and mean of a sample set.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Stats {
    /// Statistics of nanosecond samples; `None` without samples.
    pub fn from_ns(samples: &[u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let ms = |ns: u64| ns as f64 / 1e6;
        let percentile =
            |p: f64| ms(sorted[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1]);
        let mean = sorted.iter().map(|&ns| ms(ns)).sum::<f64>() / n as f64;
        Some(Self {
            n,
            p50: percentile(50.0),
            p90: percentile(90.0),
            p99: percentile(99.0),
            mean,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u64> = (1..=100).rev().map(|i| i * 1_000_000).collect();
        let stats = Stats::from_ns(&samples).expect("samples");
        assert_eq!(
            (stats.n, stats.p50, stats.p90, stats.p99),
            (100, 50.0, 90.0, 99.0)
        );
        assert!((stats.mean - 50.5).abs() < 1e-9);
        assert!(Stats::from_ns(&[]).is_none());
    }
}
