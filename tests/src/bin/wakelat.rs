//! wakelat: measures wake-up latency, for the scheduler's kernel tests and benchmarks.
//! `wakelat N SLEEP_US OUT`: sleeps SLEEP_US microseconds N times, measures how much
//! later than asked each sleep ended, and writes `p50_us p99_us max_us` to OUT.

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let sleep = Duration::from_micros(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000));
    let out = args.get(2).cloned().unwrap_or_else(|| "/dev/stdout".into());
    let mut late_us: Vec<u64> = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        std::thread::sleep(sleep);
        let late = t0.elapsed().saturating_sub(sleep);
        late_us.push(u64::try_from(late.as_micros()).unwrap_or(u64::MAX));
    }
    late_us.sort_unstable();
    let pct = |p: usize| {
        late_us
            .get((late_us.len() * p / 100).min(late_us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let line = format!(
        "{} {} {}\n",
        pct(50),
        pct(99),
        late_us.last().copied().unwrap_or(0)
    );
    if let Err(e) = std::fs::write(&out, line) {
        eprintln!("wakelat: writing {out}: {e}");
        std::process::exit(1);
    }
}
