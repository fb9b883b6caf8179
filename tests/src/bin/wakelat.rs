//! wakelat: measures wake-up latency, for the scheduler's kernel tests and benchmarks.
//! `wakelat N SLEEP_US OUT`: sleeps SLEEP_US microseconds N times and writes to OUT one
//! line per sleep: `LATE_US RUNQ_US`, how much later than asked the sleep ended, and how
//! long the task waited on a run queue meanwhile (the growth of `run_delay`, the second
//! field of `/proc/self/schedstat`): the wake-up-to-running latency the scheduler
//! controls, without the timer's own lateness.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// `run_delay` in ns: time spent runnable but not running (needs CONFIG_SCHED_INFO).
fn run_delay_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let sleep = Duration::from_micros(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000));
    let out = args.get(2).cloned().unwrap_or_else(|| "/dev/stdout".into());
    let mut text = String::with_capacity(n * 16);
    let mut delay = run_delay_ns();
    for _ in 0..n {
        let t0 = Instant::now();
        std::thread::sleep(sleep);
        let late = t0.elapsed().saturating_sub(sleep);
        let now = run_delay_ns();
        let runq_us = now.saturating_sub(delay) / 1000;
        delay = now;
        let _ = writeln!(text, "{} {runq_us}", late.as_micros());
    }
    if let Err(e) = std::fs::write(&out, text) {
        eprintln!("wakelat: writing {out}: {e}");
        std::process::exit(1);
    }
}
