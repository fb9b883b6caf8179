//! agentcgd over the run: its resident memory (VmRSS), open fds and threads from
//! /proc/PID, read by a thread every interval together with the number of calls done.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One reading.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub t_ms: u64,
    pub calls: usize,
    pub rss_bytes: u64,
    pub fds: usize,
    pub threads: u64,
}

impl Sample {
    pub fn to_json(self) -> Value {
        json!({"t_ms": self.t_ms, "calls": self.calls, "rss_bytes": self.rss_bytes,
               "fds": self.fds, "threads": self.threads})
    }
}

/// Reads agentcgd (`pid`) now; `calls` calls are done, `start` is the run's start.
pub fn read(pid: i32, start: Instant, calls: usize) -> Result<Sample, String> {
    let p = procfs::process::Process::new(pid).map_err(|e| format!("/proc/{pid}: {e}"))?;
    let status = p.status().map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let fds = p.fd_count().map_err(|e| format!("/proc/{pid}/fd: {e}"))?;
    Ok(Sample {
        t_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        calls,
        rss_bytes: status
            .vmrss
            .ok_or_else(|| format!("/proc/{pid}/status has no VmRSS"))?
            * 1024,
        fds,
        threads: status.threads,
    })
}

/// The sampling thread.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Vec<Sample>, Option<String>)>,
}

impl Sampler {
    /// Reads agentcgd now, every `every` from then on and once more when stopped, with
    /// the count in `done`.
    pub fn start(pid: i32, start: Instant, every: Duration, done: Arc<AtomicUsize>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = Instant::now();
            let mut stopping = false;
            // One reading at the start, one every `every`, and a last one at the stop,
            // however late this thread got the CPU.
            loop {
                match read(pid, start, done.load(Ordering::SeqCst)) {
                    Ok(s) => samples.push(s),
                    // agentcgd is gone: the run has failed; say so and stop reading.
                    Err(e) => return (samples, Some(e)),
                }
                if stopping {
                    return (samples, None);
                }
                next += every;
                while !flag.load(Ordering::SeqCst) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(20).min(every));
                }
                stopping = flag.load(Ordering::SeqCst);
            }
        });
        Sampler { stop, handle }
    }

    /// Stops sampling; the samples and why sampling stopped early, if it did.
    pub fn stop(self) -> (Vec<Sample>, Option<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .unwrap_or_else(|_| (Vec::new(), Some("the sampler panicked".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_can_be_sampled() {
        let pid = i32::try_from(std::process::id()).expect("pid");
        let s = read(pid, Instant::now(), 3).expect("sample");
        assert!(
            s.rss_bytes > 1 << 20 && s.fds >= 3 && s.threads >= 1,
            "{s:?}"
        );
        let sampler = Sampler::start(
            pid,
            Instant::now(),
            Duration::from_millis(10),
            Arc::new(AtomicUsize::new(5)),
        );
        std::thread::sleep(Duration::from_millis(50));
        let (samples, err) = sampler.stop();
        assert!(err.is_none() && samples.len() >= 2, "{samples:?} {err:?}");
        assert!(samples.iter().all(|s| s.calls == 5));
        assert!(read(-1, Instant::now(), 0).is_err());
    }
}
