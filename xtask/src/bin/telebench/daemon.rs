//! What agentcgd costs: its CPU time (utime + stime of all its threads) and its resident
//! memory, from /proc/PID.

use std::time::Instant;

/// A point on agentcgd's clock.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub cpu_ns: u64,
}

pub fn sample(pid: i32) -> Result<Sample, String> {
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    Ok(Sample {
        at: Instant::now(),
        cpu_ns: ticks_to_ns(stat.utime + stat.stime, procfs::ticks_per_second()),
    })
}

/// Resident set size in bytes (VmRSS).
pub fn rss_bytes(pid: i32) -> Result<u64, String> {
    let status = procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .vmrss
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("/proc/{pid}/status has no VmRSS"))
}

/// CPU used between two samples as a percentage of one CPU.
pub fn cpu_percent(before: Sample, after: Sample) -> f64 {
    let wall = after.at.duration_since(before.at).as_nanos() as f64;
    if wall == 0.0 {
        return 0.0;
    }
    after.cpu_ns.saturating_sub(before.cpu_ns) as f64 * 100.0 / wall
}

fn ticks_to_ns(ticks: u64, per_second: u64) -> u64 {
    u64::try_from(u128::from(ticks) * 1_000_000_000 / u128::from(per_second.max(1)))
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percent_of_one_cpu() {
        let at = Instant::now();
        let before = Sample { at, cpu_ns: 1_000 };
        let after = Sample {
            at: at + Duration::from_secs(2),
            cpu_ns: 1_000 + 100_000_000,
        };
        assert!((cpu_percent(before, after) - 5.0).abs() < 1e-9);
        assert_eq!(cpu_percent(before, before), 0.0);
        assert_eq!(ticks_to_ns(250, 100), 2_500_000_000);
    }

    #[test]
    fn our_own_figures_are_readable() {
        let pid = i32::try_from(std::process::id()).expect("pid");
        assert!(rss_bytes(pid).expect("rss") > 1 << 20);
        sample(pid).expect("stat");
    }
}
