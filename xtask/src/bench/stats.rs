//! Summary statistics of samples, in milliseconds, and the spread of per-run figures.
//! A failed attempt (a call that failed, a replay that was killed) is a sample of
//! infinite value: it is the worst in every percentile and makes the mean infinite, so
//! failures never drop out of a statistic.

/// Count, percentiles (nearest rank) and mean of a sample set; `failures` of the `n`
/// samples are infinite.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub failures: usize,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Stats {
    /// Nanosecond samples plus `failures` infinite ones; `None` when there are none.
    pub fn with_failures_ns(samples: &[u64], failures: usize) -> Option<Self> {
        let ms: Vec<f64> = samples.iter().map(|&ns| ns as f64 / 1e6).collect();
        Self::with_failures_ms(&ms, failures)
    }

    /// Statistics of millisecond samples.
    pub fn from_ms(samples: &[f64]) -> Option<Self> {
        Self::with_failures_ms(samples, 0)
    }

    /// Millisecond samples plus `failures` infinite ones; `None` when there are none.
    pub fn with_failures_ms(samples: &[f64], failures: usize) -> Option<Self> {
        let mut sorted: Vec<f64> = samples.to_vec();
        sorted.extend(std::iter::repeat_n(f64::INFINITY, failures));
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let percentile = |p: f64| sorted[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        let mean = sorted.iter().sum::<f64>() / n as f64;
        Some(Self {
            n,
            failures: failures + samples.iter().filter(|v| v.is_infinite()).count(),
            p50: percentile(50.0),
            p90: percentile(90.0),
            p95: percentile(95.0),
            p99: percentile(99.0),
            mean,
        })
    }
}

/// A millisecond figure for a table: `failed` when infinite, `–` when absent.
pub fn fmt_ms(value: Option<f64>, digits: usize) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) if v.is_infinite() => "failed".to_owned(),
        Some(v) => format!("{v:.digits$}"),
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
    use super::{Stats, fmt_ms, mean_sd};

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u64> = (1..=100).rev().map(|i| i * 1_000_000).collect();
        let stats = Stats::with_failures_ns(&samples, 0).expect("samples");
        assert_eq!(
            (stats.n, stats.p50, stats.p90, stats.p99),
            (100, 50.0, 90.0, 99.0)
        );
        assert_eq!(stats.p95, 95.0);
        assert_eq!(Stats::from_ms(&[1.5]).map(|s| s.p99), Some(1.5));
        assert!((stats.mean - 50.5).abs() < 1e-9);
        assert!(Stats::with_failures_ns(&[], 0).is_none());
    }

    /// A failure is the worst sample of every statistic, never dropped.
    #[test]
    fn failures_are_infinite_samples() {
        let samples: Vec<u64> = (1..=9).map(|i| i * 1_000_000).collect();
        let stats = Stats::with_failures_ns(&samples, 1).expect("samples");
        assert_eq!((stats.n, stats.failures), (10, 1));
        assert_eq!((stats.p50, stats.p90), (5.0, 9.0));
        assert!(stats.p95.is_infinite() && stats.mean.is_infinite());
        let all_failed = Stats::with_failures_ms(&[], 2).expect("failures are samples");
        assert!(all_failed.p50.is_infinite());
        assert_eq!(fmt_ms(Some(all_failed.p50), 1), "failed");
        assert_eq!(fmt_ms(Some(1.26), 1), "1.3");
        assert_eq!(fmt_ms(None, 1), "–");
    }

    #[test]
    fn spread() {
        assert_eq!(mean_sd(&[1.0, 3.0]), Some((2.0, 2f64.sqrt())));
        assert_eq!(mean_sd(&[5.0]), Some((5.0, 0.0)));
        assert_eq!(mean_sd(&[]), None);
    }
}
