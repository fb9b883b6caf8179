//! Removes the cgroups of ended calls on a thread of its own. A cgroup can only be
//! removed once its processes are gone, and a killed process in uninterruptible sleep
//! (a stuck NFS read, a device) can take seconds: nothing that answers requests or
//! reacts to pressure may wait for that (docs/ARCHITECTURE.md#off-the-request-path).
//! Each cgroup is retried with a growing pause until it is gone; none waits for another.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Cgroup, CgroupError};

/// First pause before a cgroup that could not be removed is tried again.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
/// Longest pause between two tries.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// What the reaper has in hand, for `agentcg status` and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReaperStatus {
    /// Cgroups removed since start.
    pub removed: u64,
    /// Cgroups waiting to be removed (their processes have not left yet, or rmdir failed).
    pub pending: Vec<PathBuf>,
    /// The latest error, per cgroup still pending.
    pub last_error: Option<String>,
}

/// Hands cgroups to the reaper thread.
#[derive(Debug, Clone)]
pub struct Reaper {
    tx: Sender<Cgroup>,
    status: Arc<Mutex<ReaperStatus>>,
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> std::io::Result<Reaper> {
        let (tx, rx) = channel();
        let status = Arc::new(Mutex::new(ReaperStatus::default()));
        let st = status.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || run(rx, st))?;
        Ok(Reaper { tx, status })
    }

    /// Removes `cg` (killing what is left in it) as soon as the kernel lets it.
    pub fn reap(&self, cg: Cgroup) {
        if let Ok(mut s) = self.status.lock() {
            s.pending.push(cg.path().to_path_buf());
        }
        let _ = self.tx.send(cg);
    }

    pub fn status(&self) -> ReaperStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

struct Pending {
    cg: Cgroup,
    next_try: Instant,
    pause: Duration,
}

fn run(rx: Receiver<Cgroup>, status: Arc<Mutex<ReaperStatus>>) {
    let mut pending: Vec<Pending> = Vec::new();
    loop {
        let now = Instant::now();
        let wait = pending
            .iter()
            .map(|p| p.next_try.saturating_duration_since(now))
            .min();
        let got = match wait {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(w) => rx.recv_timeout(w),
        };
        match got {
            Ok(cg) => pending.push(Pending {
                cg,
                next_try: Instant::now(),
                pause: FIRST_PAUSE,
            }),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if pending.is_empty() => return,
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(FIRST_PAUSE),
        }
        pending.extend(rx.try_iter().map(|cg| Pending {
            cg,
            next_try: Instant::now(),
            pause: FIRST_PAUSE,
        }));
        let now = Instant::now();
        let mut removed = Vec::new();
        let mut last_error = None;
        pending.retain_mut(|p| {
            if p.next_try > now {
                return true;
            }
            match try_remove(&p.cg) {
                Ok(true) => {
                    removed.push(p.cg.path().to_path_buf());
                    false
                }
                Ok(false) => {
                    p.pause = (p.pause * 2).min(MAX_PAUSE);
                    p.next_try = now + p.pause;
                    true
                }
                Err(e) => {
                    last_error = Some(e.to_string());
                    p.pause = MAX_PAUSE;
                    p.next_try = now + p.pause;
                    true
                }
            }
        });
        if let Ok(mut s) = status.lock() {
            s.removed += removed.len() as u64;
            s.pending.retain(|p| !removed.contains(p));
            if last_error.is_some() {
                s.last_error = last_error;
            } else if s.pending.is_empty() {
                s.last_error = None;
            }
        }
    }
}

/// One try: `Ok(true)` when the cgroup is gone, `Ok(false)` while processes remain
/// (they were sent SIGKILL) or the kernel still holds it (EBUSY).
fn try_remove(cg: &Cgroup) -> Result<bool, CgroupError> {
    if !cg.path().exists() {
        return Ok(true);
    }
    if cg.populated().unwrap_or(false) {
        cg.kill()?;
        return Ok(false);
    }
    cg.remove_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn removes_empty_dirs_and_keeps_retrying_busy_ones() {
        let dir = tempfile::tempdir().unwrap();
        let reaper = Reaper::start().unwrap();
        // A fixture "cgroup": an empty directory is removable at once.
        let empty = Cgroup::new(dir.path().join("call-1"));
        std::fs::create_dir(empty.path()).unwrap();
        reaper.reap(empty.clone());
        wait_until("call-1 removed", || !empty.path().exists());
        // A populated one (cgroup.events says so) is killed and retried, not dropped.
        let busy = Cgroup::new(dir.path().join("call-2"));
        std::fs::create_dir(busy.path()).unwrap();
        std::fs::write(busy.path().join(crate::cgroup::EVENTS), "populated 1\n").unwrap();
        reaper.reap(busy.clone());
        wait_until("call-2 killed", || {
            busy.path().join(crate::cgroup::KILL).exists()
        });
        std::thread::sleep(Duration::from_millis(50));
        let st = reaper.status();
        assert_eq!(st.removed, 1);
        assert_eq!(st.pending, vec![busy.path().to_path_buf()]);
        // Its processes leave: the fixture's files go the way cgroupfs's would.
        std::fs::remove_dir_all(busy.path()).unwrap();
        wait_until("call-2 counted", || reaper.status().pending.is_empty());
        assert_eq!(reaper.status().removed, 2);
    }
}
