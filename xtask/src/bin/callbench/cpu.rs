//! CPU time spent on the calls of a block: callbench itself (the reference arm's mkdir,
//! limit writes and rmdir are its own syscalls), its waited-for children (the tools, `sh`,
//! the `agentcg` client and what they waited for) and agentcgd (utime + stime of all its
//! threads from /proc/PID/stat, in clock ticks).

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;

/// Cumulative CPU times, nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    pub own_ns: u64,
    pub children_ns: u64,
    pub daemon_ns: u64,
}

impl Cpu {
    /// What was spent between `before` and `self`.
    pub fn since(self, before: Cpu) -> Cpu {
        Cpu {
            own_ns: self.own_ns.saturating_sub(before.own_ns),
            children_ns: self.children_ns.saturating_sub(before.children_ns),
            daemon_ns: self.daemon_ns.saturating_sub(before.daemon_ns),
        }
    }

    pub fn add(&mut self, other: Cpu) {
        self.own_ns += other.own_ns;
        self.children_ns += other.children_ns;
        self.daemon_ns += other.daemon_ns;
    }
}

fn tv_ns(tv: TimeVal) -> u64 {
    let ns = i128::from(tv.tv_sec()) * 1_000_000_000 + i128::from(tv.tv_usec()) * 1_000;
    u64::try_from(ns).unwrap_or(0)
}

fn rusage_ns(who: UsageWho) -> Result<u64, String> {
    let usage = getrusage(who).map_err(|e| format!("getrusage({who:?}): {e}"))?;
    Ok(tv_ns(usage.user_time()) + tv_ns(usage.system_time()))
}

/// CPU time of the calling thread so far (the settle probe runs on it).
pub fn thread_ns() -> Result<u64, String> {
    rusage_ns(UsageWho::RUSAGE_THREAD)
}

/// utime + stime of process `pid` in nanoseconds.
pub fn process_ns(pid: i32) -> Result<u64, String> {
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    Ok(ticks_to_ns(
        stat.utime + stat.stime,
        procfs::ticks_per_second(),
    ))
}

fn ticks_to_ns(ticks: u64, per_second: u64) -> u64 {
    u64::try_from(u128::from(ticks) * 1_000_000_000 / u128::from(per_second.max(1)))
        .unwrap_or(u64::MAX)
}

/// Now, with agentcgd's times when its pid is known (0 otherwise).
pub fn snapshot(daemon: Option<i32>) -> Result<Cpu, String> {
    Ok(Cpu {
        own_ns: rusage_ns(UsageWho::RUSAGE_SELF)?,
        children_ns: rusage_ns(UsageWho::RUSAGE_CHILDREN)?,
        daemon_ns: daemon.map(process_ns).transpose()?.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_deltas() {
        assert_eq!(ticks_to_ns(250, 100), 2_500_000_000);
        let before = Cpu {
            own_ns: 5,
            children_ns: 10,
            daemon_ns: 20,
        };
        let after = Cpu {
            own_ns: 7,
            children_ns: 15,
            daemon_ns: 20,
        };
        assert_eq!(
            after.since(before),
            Cpu {
                own_ns: 2,
                children_ns: 5,
                daemon_ns: 0
            }
        );
        let mut total = Cpu::default();
        total.add(after.since(before));
        total.add(after.since(before));
        assert_eq!(total.children_ns, 10);
    }

    #[test]
    fn our_own_process_has_cpu_time() {
        // Spin until this process has used 50 ms of CPU (/proc counts in ticks).
        let mut x = 0u64;
        while snapshot(None).expect("rusage").own_ns < 50_000_000 {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let pid = i32::try_from(std::process::id()).expect("pid");
        assert!(process_ns(pid).expect("stat") > 0);
        assert!(snapshot(Some(pid)).expect("snapshot").own_ns > 0);
    }

    /// Spins until the calling thread itself has used `ns` of CPU, however loaded the
    /// machine is (a wall-clock spin gets little CPU when other work runs), or 10 s have
    /// passed; the thread's CPU used.
    fn spin_cpu_ns(ns: u64) -> u64 {
        let start = thread_ns().expect("rusage");
        let wall = std::time::Instant::now();
        let mut x = 0u64;
        let mut used = 0;
        while used < ns && wall.elapsed() < std::time::Duration::from_secs(10) {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
            used = thread_ns().expect("rusage") - start;
        }
        used
    }

    #[test]
    fn thread_time_counts_this_thread_only() {
        let pid = i32::try_from(std::process::id()).expect("pid");
        let process_before = process_ns(pid).expect("stat");
        let before = thread_ns().expect("rusage");
        let spun = std::thread::spawn(|| spin_cpu_ns(100_000_000))
            .join()
            .expect("spinner");
        let waiting = thread_ns().expect("rusage") - before;
        let process = process_ns(pid).expect("stat") - process_before;
        assert!(spun >= 100_000_000, "the spinner's own time: {spun} ns");
        assert!(
            process >= 80_000_000,
            "the spinner's CPU is in the process's: {process} ns"
        );
        assert!(waiting < 20_000_000, "joining cost {waiting} ns");
    }
}
