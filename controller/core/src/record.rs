//! What happened to a call: its final accounting, its outcome, and the structured
//! feedback the agent gets instead of a bare exit status. All pure.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroup::cpu::CpuUsage;
use crate::cgroup::memory::MemoryEvents;
use crate::intent::Intent;
use crate::plan::{CallLimits, Clamp};
use crate::units::{HumanSize, compact_size};

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exit status 0.
    Ok,
    /// Non-zero exit, no budget involved.
    Failed,
    /// The kernel's OOM killer ended it inside its memory budget.
    OomKilled,
    /// Its wall-clock timeout expired; agentcgd killed it.
    Timeout,
    /// It failed after forks were refused by pids.max.
    PidsLimited,
    /// It used up its declared CPU budget and agentcgd ended it.
    CpuBudgetExceeded,
    /// agentcgd killed it to relieve host memory pressure (the last step of the
    /// graduated response; only calls below the host's highest priority).
    MemoryPressure,
    /// Ended by a signal nobody in agentcg sent.
    Killed,
    /// The client never reported the end; agentcgd cleaned it up.
    Abandoned,
}

impl Outcome {
    /// Every outcome, in the order they are documented.
    pub const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::OomKilled,
        Outcome::Timeout,
        Outcome::PidsLimited,
        Outcome::CpuBudgetExceeded,
        Outcome::MemoryPressure,
        Outcome::Killed,
        Outcome::Abandoned,
    ];

    /// The outcome named `name` (as [`Outcome::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::OomKilled => "oom_killed",
            Outcome::Timeout => "timeout",
            Outcome::PidsLimited => "pids_limited",
            Outcome::CpuBudgetExceeded => "cpu_budget_exceeded",
            Outcome::MemoryPressure => "memory_pressure",
            Outcome::Killed => "killed",
            Outcome::Abandoned => "abandoned",
        }
    }

    /// Whether a budget ended the call (the agent gets feedback).
    pub fn is_budget(self) -> bool {
        matches!(
            self,
            Outcome::OomKilled | Outcome::Timeout | Outcome::PidsLimited | Outcome::MemoryPressure
        )
    }
}

/// How the tool process ended: reported by the client that waited for it, or seen by
/// the kernel telemetry when the tool exited. Written as `{"code": .., "signal": ..}`
/// in finish reports and in every record of the history; any other field is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// Decodes a wait status (`waitpid(2)`): an exit code, or the signal that killed it.
    pub fn from_wait_status(status: i32) -> ExitInfo {
        if libc::WIFEXITED(status) {
            ExitInfo {
                code: Some(libc::WEXITSTATUS(status)),
                signal: None,
            }
        } else {
            ExitInfo {
                code: None,
                signal: Some(libc::WTERMSIG(status)),
            }
        }
    }

    /// The shell convention: the code, or 128 + signal.
    pub fn shell_status(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// The final accounting of a call's cgroup, read before it is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    pub memory_peak: Option<u64>,
    pub cpu: CpuUsage,
    /// The call's memory.events (its cgroup is new, so these are the call's deltas).
    pub memory_events: MemoryEvents,
    /// memory.events.local of the session's calls/ cgroup that grew during the call:
    /// a `max` there means the shared ceiling, not the call's own limit, was hit.
    pub shared_ceiling_events: MemoryEvents,
    /// memory.events.local of the session's own cgroup that grew during the call: a
    /// `max` there means the session's budget (its runtime and calls together) was hit.
    #[serde(default)]
    pub session_events: MemoryEvents,
    pub pids_peak: Option<u64>,
    /// Forks refused by pids.max.
    pub pids_limit_hits: u64,
}

/// What agentcgd itself did to a call that may explain how it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enforced {
    pub timed_out: bool,
    pub cpu_budget_exceeded: bool,
    pub pressure_killed: bool,
    /// The tool exited leaving processes in its cgroup, which agentcgd kills.
    pub leftovers_killed: bool,
}

/// Decides the outcome from the exit, the accounting and what agentcgd enforced.
///
/// What agentcgd enforced (a timeout, a pressure kill, a CPU-budget kill) can only
/// explain an end by a signal: each acts by killing the call's cgroup, and a tool that
/// exited on its own just before (its code in hand) ended for its own reasons. An OOM
/// kill comes first: the kernel counted it in the call's memory.events, and with
/// `memory.oom.group` set it ended every process of the call, so a later timer or
/// pressure kill found the call already dead. Refused forks end a call that failed,
/// and also one whose tool exited 0 leaving processes that were still forking against
/// `pids.max` (a fork bomb's shell returns at once); a tool that retried its forks and
/// finished cleanly is `ok`.
pub fn outcome(exit: &ExitInfo, acc: &Accounting, enforced: Enforced) -> Outcome {
    let ev = &acc.memory_events;
    let by_signal = exit.signal.is_some();
    let forks_refused = acc.pids_limit_hits > 0;
    if ev.oom_kill > 0 || ev.oom_group_kill > 0 {
        Outcome::OomKilled
    } else if by_signal && enforced.timed_out {
        Outcome::Timeout
    } else if by_signal && enforced.pressure_killed {
        Outcome::MemoryPressure
    } else if by_signal && enforced.cpu_budget_exceeded {
        Outcome::CpuBudgetExceeded
    } else if forks_refused && (exit.code != Some(0) || enforced.leftovers_killed) {
        Outcome::PidsLimited
    } else if exit.code == Some(0) {
        Outcome::Ok
    } else if by_signal {
        Outcome::Killed
    } else {
        Outcome::Failed
    }
}

/// Structured feedback: what limit ended the call, the peak, what to try instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// The limit that ended the call (`mem.max`, `session calls ceiling`, `timeout`, `pids`).
    pub limit: String,
    /// Its value, human-readable.
    pub limit_value: String,
    /// The observed peak (memory or processes), human-readable, when known.
    pub peak: Option<String>,
    /// What to try instead.
    pub suggestion: String,
    /// One human line with all of the above.
    pub message: String,
}

/// The shared ceilings above a call, for its feedback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceilings {
    /// memory.max of the session's calls/ cgroup.
    pub calls: u64,
    /// memory.max of the session's cgroup (its runtime and its calls).
    pub session: u64,
    /// The memory limit the pressure response defends (agentcg's root or the host).
    pub host: u64,
}

/// Whether a peak of `peak` bytes reached the limit `max`, up to the charges the kernel
/// batches (64 pages per CPU) or 1/64 of the limit, whichever is larger.
fn reached(peak: u64, max: u64) -> bool {
    let slack = (max / 64).max(256 << 10);
    peak.saturating_add(slack) >= max
}

/// Feedback for a call a budget ended; `None` for other outcomes.
pub fn feedback(
    call_id: u64,
    outcome: Outcome,
    limits: &CallLimits,
    acc: &Accounting,
    ceilings: Ceilings,
    suggestion: &str,
) -> Option<Feedback> {
    let calls_ceiling = ceilings.calls;
    let class = limits
        .class
        .as_deref()
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    let (limit, value, peak, what, advice) = match outcome {
        Outcome::OomKilled => {
            let peak = acc.memory_peak.map(|p| HumanSize(p).to_string());
            // memory.events count where a limit was hit and above it, never below: a
            // call that never hit its own memory.max was killed for a limit above it,
            // unless it had grown to its own limit all the same. A call alone under a
            // ceiling equal to its mem.max (the session leaves its calls exactly that)
            // often hits the ceiling first: the parent also carries the call cgroup's
            // own kernel memory. Then its own size is what to change.
            let own = acc.memory_events.max > 0
                || acc
                    .memory_peak
                    .is_some_and(|p| reached(p, limits.memory_max));
            let shared = !own && acc.shared_ceiling_events.max > 0;
            let session = !own && !shared && acc.session_events.max > 0;
            if session {
                (
                    "session memory".to_string(),
                    HumanSize(ceilings.session).to_string(),
                    peak,
                    "its session (the agent runtime and its tool calls together) ran out of memory".to_string(),
                    format!(
                        "make it smaller ({suggestion}), or give the session a larger budget (agentcg session create NAME --memory SIZE)"
                    ),
                )
            } else if !own && !shared {
                (
                    "host memory".to_string(),
                    HumanSize(ceilings.host).to_string(),
                    peak,
                    "the host ran out of memory and the kernel's OOM killer chose it".to_string(),
                    format!(
                        "run it again when the host is less busy, or make it smaller ({suggestion})"
                    ),
                )
            } else if shared {
                (
                    "session calls ceiling".to_string(),
                    HumanSize(calls_ceiling).to_string(),
                    peak,
                    "the session's tool calls together ran out of memory".to_string(),
                    "run fewer calls at once in this session, or give the session a larger budget (agentcg session create NAME --memory SIZE)".to_string(),
                )
            } else {
                let bigger = compact_size(limits.memory_max.saturating_mul(2));
                (
                    "mem.max".to_string(),
                    HumanSize(limits.memory_max).to_string(),
                    peak,
                    "it ran out of memory".to_string(),
                    format!(
                        "{suggestion}; or declare more memory (--intent mem.max={bigger}) if the host can afford it"
                    ),
                )
            }
        }
        Outcome::Timeout => (
            "timeout".to_string(),
            crate::units::compact_duration(limits.timeout()),
            None,
            "it ran past its time limit".to_string(),
            format!(
                "if the work needs more time, declare it (--intent timeout={}); otherwise check that the command is not waiting for input",
                crate::units::compact_duration(limits.timeout().saturating_mul(2))
            ),
        ),
        Outcome::CpuBudgetExceeded => {
            let budget = Duration::from_millis(limits.cpu_budget_ms.unwrap_or(0));
            (
                "cpu.budget".to_string(),
                crate::units::compact_duration(budget),
                Some(format!("{:.1} s of CPU", acc.cpu.usage_usec as f64 / 1e6)),
                "it used up its CPU budget".to_string(),
                format!(
                    "split the work into smaller calls ({suggestion}), or declare a larger budget (--intent cpu.budget={})",
                    crate::units::compact_duration(budget.saturating_mul(2))
                ),
            )
        }
        Outcome::MemoryPressure => (
            "host memory".to_string(),
            HumanSize(ceilings.host).to_string(),
            acc.memory_peak.map(|p| HumanSize(p).to_string()),
            "agentcg ended it to relieve host memory pressure (higher-priority work needed the memory)".to_string(),
            format!(
                "run it again when the host is less busy, or make it smaller ({suggestion}); declaring its size (--intent mem=...) lets agentcg plan for it"
            ),
        ),
        Outcome::PidsLimited => (
            "pids".to_string(),
            limits.pids_max.to_string(),
            acc.pids_peak.map(|p| format!("{p} processes")),
            "it could not start more processes".to_string(),
            "use fewer parallel workers, or declare more (--intent pids=...)".to_string(),
        ),
        _ => return None,
    };
    let peak_text = peak
        .as_deref()
        .map(|p| format!(", peak {p}"))
        .unwrap_or_default();
    let message = format!(
        "agentcg: call {call_id}{class} was stopped: {what} ({limit} {value}{peak_text}). Try: {advice}."
    );
    Some(Feedback {
        limit,
        limit_value: value,
        peak,
        suggestion: advice,
        message,
    })
}

/// One thing the memory response did to a call, for its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryAction {
    /// Milliseconds since the call started.
    pub at_ms: u64,
    /// `burst`, `throttle`, `reclaim`, `freeze`, `kill`, `thaw` or `restore`.
    pub action: String,
    /// What was written and why.
    pub detail: String,
}

/// Process activity of a call as seen by the telemetry BPF programs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCounts {
    pub execs: u64,
    pub forks: u64,
    pub exits: u64,
    /// The call's processes, in the order they appeared (at most
    /// [`processes::LIST_MAX`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub list: Vec<processes::ProcessInfo>,
    /// Processes beyond the list.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Everything known about one finished call: what was asked, what was granted, what
/// happened. Written as one JSON line to the history and returned to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub call_id: u64,
    pub session: String,
    /// The agent harness's id of the tool call (Claude Code's `tool_use_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    pub command: Vec<String>,
    pub intent: Intent,
    pub limits: CallLimits,
    pub clamps: Vec<Clamp>,
    pub cgroup: String,
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    pub exit: ExitInfo,
    pub outcome: Outcome,
    pub accounting: Accounting,
    /// Processes the tool left behind, killed before the cgroup was removed.
    pub leftover_killed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<ProcessCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<Feedback>,
    /// What the memory response did to the call, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_actions: Vec<MemoryAction>,
    /// What admission decided, with its inputs (docs/POLICY.md#admission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<crate::admission::Note>,
}

pub mod processes;
#[cfg(test)]
mod tests;
