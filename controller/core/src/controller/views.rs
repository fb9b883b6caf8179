//! What runs now, as the live views (`GET /v1/running`, `agentcg top`) show it: one
//! [`RunningView`] per running call, read from its cgroup when asked.

use serde::{Deserialize, Serialize};

use super::{Controller, RunningCall};
use crate::cgroup::{cpu, memory};
use crate::intent::Priority;

/// A running call, now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningView {
    pub call_id: u64,
    pub session: String,
    pub command: Vec<String>,
    pub class: Option<String>,
    pub priority: Priority,
    pub started_unix_ms: u64,
    pub age_ms: u64,
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    /// memory.high as written now (a burst raises it, a throttle lowers it).
    pub memory_high: Option<u64>,
    pub memory_max: u64,
    pub cpu_usec: Option<u64>,
    /// `running`, `throttled`, `frozen` or `killed` (by the memory response).
    pub state: String,
}

/// The state word of a call the memory response may have acted on.
fn state_of(call: &RunningCall) -> &'static str {
    let m = &call.memory;
    if m.killed {
        "killed"
    } else if m.frozen {
        "frozen"
    } else if m.throttled {
        "throttled"
    } else {
        "running"
    }
}

impl Controller {
    /// The running calls (of one session), oldest first.
    pub fn running_views(&self, session: Option<&str>) -> Vec<RunningView> {
        self.running
            .iter()
            .filter(|(_, c)| session.is_none_or(|s| c.session == s))
            .map(|(&id, c)| RunningView {
                call_id: id,
                session: c.session.clone(),
                command: c.command.clone(),
                class: c.limits.class.clone(),
                priority: c.limits.priority,
                started_unix_ms: c.started_unix_ms,
                age_ms: c.started.elapsed().as_millis() as u64,
                memory_current: c.cgroup.read_u64(memory::CURRENT).ok(),
                memory_peak: memory::peak(&c.cgroup),
                memory_high: c.memory.high,
                memory_max: c.limits.memory_max,
                cpu_usec: cpu::usage(&c.cgroup).ok().map(|u| u.usage_usec),
                state: state_of(c).to_string(),
            })
            .collect()
    }
}
