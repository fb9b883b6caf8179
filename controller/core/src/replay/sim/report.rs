//! What a simulation reports: per session, per killed call and for the host.

use serde::Serialize;

use crate::intent::Priority;
use crate::pressure::Step;

/// Who ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KillCause {
    /// Its own `memory.max` (the kernel, inside the call).
    CallLimit,
    /// Its session's `calls/` ceiling (the kernel).
    CallsCeiling,
    /// Its session's budget (the kernel).
    SessionBudget,
    /// The memory response's kill step.
    Response,
    /// The kernel's OOM killer at the host's limit.
    HostOom,
}

/// Kills by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Kills {
    pub call_limit: u32,
    pub calls_ceiling: u32,
    pub session_budget: u32,
    pub response: u32,
    pub host_oom: u32,
    /// Agent runtimes the host's OOM killer took (the session ended).
    pub runtime: u32,
}

impl Kills {
    pub(super) fn add(&mut self, cause: KillCause) {
        match cause {
            KillCause::CallLimit => self.call_limit += 1,
            KillCause::CallsCeiling => self.calls_ceiling += 1,
            KillCause::SessionBudget => self.session_budget += 1,
            KillCause::Response => self.response += 1,
            KillCause::HostOom => self.host_oom += 1,
        }
    }

    /// Kills because the host ran short: they grow with the number of sessions.
    pub fn host(&self) -> u32 {
        self.response + self.host_oom + self.runtime
    }

    pub fn total(&self) -> u32 {
        self.call_limit + self.calls_ceiling + self.session_budget + self.host()
    }
}

/// What happened to one session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionReport {
    pub session: String,
    pub run: String,
    pub priority: Priority,
    /// Times the run was started (it loops over the horizon).
    pub plays: u32,
    /// Shell calls admitted.
    pub calls: u32,
    /// Calls refused at admission (`no_room`).
    pub rejected: u32,
    /// Calls admitted with less expected memory than their class gives.
    pub clamped: u32,
    /// Calls that went over their `memory.high` with no room to burst.
    pub throttled: u32,
    /// Calls whose `memory.high` was raised at least once (`burst_step`).
    pub burst: u32,
    /// Calls the memory response throttled, froze.
    pub response_throttled: u32,
    pub frozen: u32,
    /// Seconds its recording waited on a call the response held.
    pub waited: u32,
    pub kills: Kills,
    /// Largest memory the session held (runtime and calls), and the largest it was
    /// granted as expected (runtime reserve plus its running calls' `memory.high`).
    pub peak_used: u64,
    pub peak_expected: u64,
    /// The recorded run's peak: what static provisioning reserves for it.
    pub static_reserve: u64,
}

/// A killed call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KillRecord {
    pub second: usize,
    pub session: String,
    pub run: String,
    pub command: String,
    pub class: Option<String>,
    pub cause: KillCause,
    /// The call's recorded peak, and the limits it ran with.
    pub recorded_peak: u64,
    pub memory_high: Option<u64>,
    pub memory_max: u64,
    /// Whether its recorded peak fitted the host alone (runtime included).
    pub fits_host: bool,
}

/// The result of one simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub host_memory: u64,
    pub seconds: usize,
    pub sessions: Vec<SessionReport>,
    pub kills: Kills,
    pub killed: Vec<KillRecord>,
    /// Largest memory the host held, and the sum of the static reserves.
    pub peak_used: u64,
    pub static_reserve: u64,
    /// Steps the memory response took, by step.
    pub steps: Vec<(Step, u32)>,
}
