//! The calls: `agentcg run --session S --verbose -- TOOL`, either in an open loop at a
//! fixed rate (workers take tickets issued on schedule; a ticket taken later than one
//! interval after its time counts as late) or in a closed loop (clients back to back),
//! which finds the highest rate the host sustains. A call that fails is counted, never
//! dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Errors kept per run (the count is complete).
const KEEP_ERRORS: usize = 5;

/// How to make one call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub agentcg: PathBuf,
    pub socket: PathBuf,
    pub tool: PathBuf,
}

/// What a run of calls did.
#[derive(Debug, Default)]
pub struct Calls {
    /// Ids of the calls granted (failed ones included when they got an id).
    pub ids: Vec<u64>,
    pub failures: usize,
    pub errors: Vec<String>,
    /// Wall time of each call that succeeded, as its caller saw it.
    pub latency_ns: Vec<u64>,
    /// Open loop: calls that started more than one interval after their time.
    pub late: usize,
    /// From the first call's start to the last one's end.
    pub elapsed: Duration,
}

impl Calls {
    pub fn count(&self) -> usize {
        self.latency_ns.len() + self.failures
    }

    fn add(&mut self, result: Result<(u64, u64), (Option<u64>, String)>) {
        match result {
            Ok((id, ns)) => {
                self.ids.push(id);
                self.latency_ns.push(ns);
            }
            Err((id, err)) => {
                self.ids.extend(id);
                self.failures += 1;
                if self.errors.len() < KEEP_ERRORS {
                    self.errors.push(err);
                }
            }
        }
    }
}

/// When a closed loop stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    After(Duration),
    Calls(usize),
}

impl Caller {
    /// One call; its id and the nanoseconds its caller waited.
    fn one(&self, session: &str) -> Result<(u64, u64), (Option<u64>, String)> {
        let start = Instant::now();
        let output = Command::new(&self.agentcg)
            .arg("--socket")
            .arg(&self.socket)
            .args(["run", "--verbose", "--session", session, "--"])
            .arg(&self.tool)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| (None, format!("cannot run {}: {e}", self.agentcg.display())))?;
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let id = granted_id(&stderr);
        match (id, output.status.success()) {
            (Some(id), true) => Ok((id, ns)),
            (id, _) => Err((id, format!("{}: {}", output.status, stderr.trim()))),
        }
    }

    /// `rate` calls a second for `seconds`, by `workers` workers.
    pub fn open_loop(&self, session: &str, rate: f64, seconds: f64, workers: usize) -> Calls {
        let total = (rate * seconds).round().max(1.0) as usize;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let (tx, rx) = channel::<Instant>();
        let rx = Arc::new(Mutex::new(rx));
        let calls = Arc::new(Mutex::new(Calls::default()));
        let start = Instant::now();
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                let (me, rx, calls) = (self.clone(), rx.clone(), calls.clone());
                let session = session.to_owned();
                std::thread::spawn(move || me.work(&session, &rx, &calls, interval))
            })
            .collect();
        for i in 0..total {
            let due = start + interval.mul_f64(i as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if tx.send(due).is_err() {
                break;
            }
        }
        drop(tx);
        for h in handles {
            let _ = h.join();
        }
        let mut calls = take(calls);
        calls.elapsed = start.elapsed();
        calls
    }

    fn work(
        &self,
        session: &str,
        rx: &Mutex<Receiver<Instant>>,
        calls: &Mutex<Calls>,
        interval: Duration,
    ) {
        loop {
            let Ok(due) = rx
                .lock()
                .map_err(|_| ())
                .and_then(|r| r.recv().map_err(|_| ()))
            else {
                return;
            };
            let late = Instant::now().duration_since(due) > interval;
            let result = self.one(session);
            if let Ok(mut c) = calls.lock() {
                c.late += usize::from(late);
                c.add(result);
            }
        }
    }

    /// `clients` callers back to back until `stop`.
    pub fn closed_loop(&self, session: &str, clients: usize, stop: Stop) -> Calls {
        let calls = Arc::new(Mutex::new(Calls::default()));
        let start = Instant::now();
        let handles: Vec<_> = (0..clients.max(1))
            .map(|_| {
                let (me, calls) = (self.clone(), calls.clone());
                let session = session.to_owned();
                std::thread::spawn(move || {
                    while !stopped(stop, start, &calls) {
                        let result = me.one(&session);
                        if let Ok(mut c) = calls.lock() {
                            c.add(result);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
        let mut calls = take(calls);
        calls.elapsed = start.elapsed();
        calls
    }
}

fn stopped(stop: Stop, start: Instant, calls: &Mutex<Calls>) -> bool {
    match stop {
        Stop::After(d) => start.elapsed() >= d,
        Stop::Calls(n) => calls.lock().map(|c| c.count() >= n).unwrap_or(true),
    }
}

fn take(calls: Arc<Mutex<Calls>>) -> Calls {
    match Arc::try_unwrap(calls) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        Err(shared) => shared
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default(),
    }
}

/// The id in `agentcg: call ID in CGROUP`, which `run --verbose` prints on stderr.
pub fn granted_id(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let rest = line.strip_prefix("agentcg: call ")?;
        let (id, _) = rest.split_once(" in ")?;
        id.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verbose_line_names_the_call() {
        let text = "agentcg: waiting\nagentcg: call 42 in /sys/fs/cgroup/agentcg/x\n";
        assert_eq!(granted_id(text), Some(42));
        assert_eq!(granted_id("agentcg: call x in y"), None);
        assert_eq!(granted_id(""), None);
    }

    #[test]
    fn failures_are_counted_with_their_ids() {
        let mut c = Calls::default();
        c.add(Ok((1, 10)));
        c.add(Err((Some(2), "exit 1".into())));
        c.add(Err((None, "no daemon".into())));
        assert_eq!(c.count(), 3);
        assert_eq!(c.ids, vec![1, 2]);
        assert_eq!(c.failures, 2);
    }

    #[test]
    fn a_closed_loop_stops_at_its_count_and_counts_failures() {
        let caller = Caller {
            agentcg: PathBuf::from("/nonexistent/agentcg"),
            socket: PathBuf::from("/nonexistent.sock"),
            tool: PathBuf::from("/bin/true"),
        };
        let calls = caller.closed_loop("s", 2, Stop::Calls(5));
        assert!(calls.count() >= 5, "{calls:?}");
        assert_eq!(calls.failures, calls.count(), "every call failed");
        assert!(calls.errors[0].contains("cannot run"), "{calls:?}");
    }
}
