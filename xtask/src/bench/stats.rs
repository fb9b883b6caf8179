//! Summary statistics of samples, in milliseconds, and the spread of per-run figures.

/// Count, percentiles (nearest rank) and mean of a sample set.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
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
            p95: percentile(95.0),
            p99: percentile(99.0),
            mean,
        })
    }

    /// Statistics of millisecond samples (kept to the nanosecond).
    pub fn from_ms(samples: &[f64]) -> Option<Self> {
        let ns: Vec<u64> = samples.iter().map(|ms| (ms * 1e6).round() as u64).collect();
        Self::from_ns(&ns)
    }
}

/// Mean and sample standard deviation (0 for fewer than two values); `None` when empty.
pub fn mean_sd(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Some((mean, var.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::{Stats, mean_sd};

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u64> = (1..=100).rev().map(|i| i * 1_000_000).collect();
        let stats = Stats::from_ns(&samples).expect("samples");
        assert_eq!(
            (stats.n, stats.p50, stats.p90, stats.p99),
            (100, 50.0, 90.0, 99.0)
        );
        assert_eq!(stats.p95, 95.0);
        assert_eq!(Stats::from_ms(&[1.5]).map(|s| s.p99), Some(1.5));
        assert!((stats.mean - 50.5).abs() < 1e-9);
        assert!(Stats::from_ns(&[]).is_none());
    }

    #[test]
    fn spread() {
        assert_eq!(mean_sd(&[1.0, 3.0]), Some((2.0, 2f64.sqrt())));
        assert_eq!(mean_sd(&[5.0]), Some((5.0, 0.0)));
        assert_eq!(mean_sd(&[]), None);
    }
}
