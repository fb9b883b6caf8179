//! The response's PSI triggers: one on agentcg's root and one per session, each a task
//! that sleeps in epoll on `memory.pressure` (`POLLPRI`) and forwards every firing as
//! a [`Signal::Psi`]; armed again when a reloaded policy changes the stall or window.

use std::fs::File;

use agentcg_core::cgroup::Cgroup;
use agentcg_core::cgroup::psi;
use agentcg_core::intent::Priority;
use agentcg_core::policy::MemoryPolicy;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::{Response, Signal};

/// A session's PSI trigger: the task waiting on it.
#[derive(Debug)]
pub(super) struct SessionTrigger {
    pub(super) name: String,
    pub(super) priority: Priority,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Response {
    /// Shows the armed PSI triggers (the root's and one per session) in the status.
    pub(super) fn publish_triggers(&self) {
        if let Ok(mut s) = self.status.lock() {
            s.psi_triggers = self.sessions.len() + usize::from(self.root_trigger.is_some());
        }
    }

    /// Arms (or re-arms, with the policy's stall and window) the root's PSI trigger.
    pub(super) fn arm_root(&mut self, root: &Cgroup, sender: &mpsc::UnboundedSender<Signal>) {
        if let Some(old) = self.root_trigger.take() {
            old.abort();
        }
        match psi::memory_trigger(root, self.policy.psi_stall, self.policy.psi_window) {
            Ok(file) => {
                self.root_trigger = Some(tokio::spawn(wait_trigger(file, sender.clone(), None)));
            }
            Err(e) => tracing::warn!("no PSI trigger on agentcg's root: {e}"),
        }
        self.publish_triggers();
    }

    /// Arms (or re-arms) a session's PSI trigger.
    pub(super) fn arm_session(
        &mut self,
        cgroup_id: u64,
        name: String,
        priority: Priority,
        sender: &mpsc::UnboundedSender<Signal>,
    ) {
        let cg = self.shared.lock().map(|c| c.layout().session(&name)).ok();
        let Some(cg) = cg else { return };
        match psi::memory_trigger(&cg, self.policy.psi_stall, self.policy.psi_window) {
            Ok(file) => {
                let task = tokio::spawn(wait_trigger(file, sender.clone(), Some(cgroup_id)));
                let trigger = SessionTrigger {
                    name,
                    priority,
                    task,
                };
                if let Some(old) = self.sessions.insert(cgroup_id, trigger) {
                    old.task.abort();
                }
            }
            Err(e) => {
                tracing::warn!(session = %name, "no PSI trigger: {e}");
                if let Some(old) = self.sessions.remove(&cgroup_id) {
                    old.task.abort();
                }
            }
        }
        self.publish_triggers();
    }
}

/// Whether a new `[memory]` needs the PSI triggers armed again (their stall or window).
pub(super) fn triggers_differ(old: &MemoryPolicy, new: &MemoryPolicy) -> bool {
    (old.psi_stall, old.psi_window) != (new.psi_stall, new.psi_window)
}

/// Waits on a PSI trigger (`POLLPRI`) and forwards each firing. No timer: the task
/// sleeps in epoll until the kernel reports the stall.
async fn wait_trigger(file: File, tx: mpsc::UnboundedSender<Signal>, session: Option<u64>) {
    // SAFETY: a `File` owns its descriptor and returns the same one from as_raw_fd()
    // until it is dropped, which only the AsyncFd does.
    let fd = match unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("PSI trigger cannot be polled: {e}");
            return;
        }
    };
    loop {
        match fd.ready(Interest::PRIORITY).await {
            Ok(mut guard) => {
                guard.clear_ready();
                if tx.send(Signal::Psi { session }).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("PSI trigger poll failed: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_new_stall_or_window_rearms_the_triggers() {
        let old = agentcg_core::policy::Policy::default_policy().memory;
        let mut new = old.clone();
        new.pressure_at = 70;
        new.calm_below = 60;
        assert!(!triggers_differ(&old, &new));
        new.psi_window = old.psi_window * 2;
        assert!(triggers_differ(&old, &new));
        let mut new = old.clone();
        new.psi_stall = old.psi_stall / 2;
        assert!(triggers_differ(&old, &new));
    }
}
