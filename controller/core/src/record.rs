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
}

/// Decides the outcome from the exit, the accounting and what agentcgd enforced.
///
/// What agentcgd enforced (a timeout, a pressure kill, a CPU-budget kill) can only
/// explain an end by a signal: each acts by killing the call's cgroup, and a tool that
/// exited on its own just before (its code in hand) ended for its own reasons. An OOM
/// kill comes first: the kernel counted it in the call's memory.events, and with
/// `memory.oom.group` set it ended every process of the call, so a later timer or
/// pressure kill found the call already dead.
pub fn outcome(exit: &ExitInfo, acc: &Accounting, enforced: Enforced) -> Outcome {
    let ev = &acc.memory_events;
    let by_signal = exit.signal.is_some();
    if ev.oom_kill > 0 || ev.oom_group_kill > 0 {
        Outcome::OomKilled
    } else if by_signal && enforced.timed_out {
        Outcome::Timeout
    } else if by_signal && enforced.pressure_killed {
        Outcome::MemoryPressure
    } else if by_signal && enforced.cpu_budget_exceeded {
        Outcome::CpuBudgetExceeded
    } else if exit.code == Some(0) {
        Outcome::Ok
    } else if acc.pids_limit_hits > 0 {
        Outcome::PidsLimited
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
    /// The memory limit the pressure response defends (agentcg's root or the host).
    pub host: u64,
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
            // call that never hit its own memory.max was killed for a limit above it.
            let own = acc.memory_events.max > 0;
            let shared = !own && acc.shared_ceiling_events.max > 0;
            if !own && !shared {
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCounts {
    pub execs: u64,
    pub forks: u64,
    pub exits: u64,
}

/// Everything known about one finished call: what was asked, what was granted, what
/// happened. Written as one JSON line to the history and returned to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub call_id: u64,
    pub session: String,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode_like_waitpid() {
        let exited = |code| ExitInfo {
            code: Some(code),
            signal: None,
        };
        let killed = |sig| ExitInfo {
            code: None,
            signal: Some(sig),
        };
        assert_eq!(ExitInfo::from_wait_status(0), exited(0));
        assert_eq!(ExitInfo::from_wait_status(7 << 8), exited(7));
        assert_eq!(ExitInfo::from_wait_status(255 << 8), exited(255));
        assert_eq!(ExitInfo::from_wait_status(libc::SIGKILL), killed(9));
        // SIGSEGV with a core dump (0x80) is still SIGSEGV.
        assert_eq!(ExitInfo::from_wait_status(0x80 | libc::SIGSEGV), killed(11));
        assert_eq!(
            ExitInfo::from_wait_status(libc::SIGTERM).shell_status(),
            143
        );
    }
    use crate::intent::Priority;

    fn en(timed_out: bool, cpu_budget_exceeded: bool) -> Enforced {
        Enforced {
            timed_out,
            cpu_budget_exceeded,
            pressure_killed: false,
        }
    }

    fn limits() -> CallLimits {
        CallLimits {
            memory_expected: 64 << 20,
            memory_high: None,
            memory_max: 64 << 20,
            cpu_weight: 100,
            millicpus: None,
            pids_max: 32,
            timeout_ms: 10_000,
            cpu_budget_ms: None,
            priority: Priority::Normal,
            class: Some("test".into()),
            oom_score_adj: 500,
        }
    }

    fn oom_acc(own_max: u64, shared_max: u64) -> Accounting {
        Accounting {
            memory_peak: Some(64 << 20),
            memory_events: MemoryEvents {
                max: own_max,
                oom: 1,
                oom_kill: 1,
                ..Default::default()
            },
            shared_ceiling_events: MemoryEvents {
                max: shared_max,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn outcomes() {
        let ok = ExitInfo {
            code: Some(0),
            signal: None,
        };
        let fail = ExitInfo {
            code: Some(1),
            signal: None,
        };
        let killed = ExitInfo {
            code: None,
            signal: Some(9),
        };
        let quiet = Accounting::default();
        assert_eq!(outcome(&ok, &quiet, en(false, false)), Outcome::Ok);
        assert_eq!(outcome(&fail, &quiet, en(false, false)), Outcome::Failed);
        assert_eq!(outcome(&killed, &quiet, en(false, false)), Outcome::Killed);
        assert_eq!(outcome(&killed, &quiet, en(true, false)), Outcome::Timeout);
        assert_eq!(
            outcome(&killed, &oom_acc(3, 0), en(false, false)),
            Outcome::OomKilled
        );
        // The kernel's OOM kill ended the call before its timer fired.
        assert_eq!(
            outcome(&killed, &oom_acc(3, 0), en(true, false)),
            Outcome::OomKilled
        );
        assert_eq!(
            outcome(&killed, &oom_acc(0, 1), en(true, true)),
            Outcome::OomKilled
        );
        let forkfail = Accounting {
            pids_limit_hits: 2,
            ..quiet
        };
        assert_eq!(
            outcome(&fail, &forkfail, en(false, false)),
            Outcome::PidsLimited
        );
        assert_eq!(outcome(&ok, &forkfail, en(false, false)), Outcome::Ok);
        assert_eq!(
            outcome(&killed, &quiet, en(false, true)),
            Outcome::CpuBudgetExceeded
        );
        assert_eq!(
            outcome(&ok, &quiet, en(false, true)),
            Outcome::Ok,
            "throttled but finished"
        );
        assert_eq!(
            outcome(&killed, &forkfail, en(false, false)),
            Outcome::PidsLimited,
            "crashed after refused forks"
        );
        assert_eq!(
            outcome(&killed, &forkfail, en(true, false)),
            Outcome::Timeout
        );
        assert_eq!(outcome(&killed, &quiet, en(true, true)), Outcome::Timeout);
        assert_eq!(killed.shell_status(), 137);
        assert_eq!(fail.shell_status(), 1);
    }

    /// A tool that exited by itself just before its timer fired (or before a pressure
    /// or CPU-budget kill landed) keeps its true outcome: those kills end a call by a
    /// signal, never with an exit code.
    #[test]
    fn a_normal_exit_is_not_blamed_on_a_kill_that_came_too_late() {
        let code = |c| ExitInfo {
            code: Some(c),
            signal: None,
        };
        let quiet = Accounting::default();
        let forkfail = Accounting {
            pids_limit_hits: 1,
            ..quiet
        };
        let all = [
            en(true, false),
            en(false, true),
            Enforced {
                pressure_killed: true,
                ..Enforced::default()
            },
            Enforced {
                timed_out: true,
                cpu_budget_exceeded: true,
                pressure_killed: true,
            },
        ];
        for enforced in all {
            assert_eq!(
                outcome(&code(0), &quiet, enforced),
                Outcome::Ok,
                "{enforced:?}"
            );
            assert_eq!(
                outcome(&code(1), &quiet, enforced),
                Outcome::Failed,
                "{enforced:?}"
            );
            assert_eq!(
                outcome(&code(2), &forkfail, enforced),
                Outcome::PidsLimited,
                "{enforced:?}"
            );
            assert_eq!(
                outcome(&code(0), &forkfail, enforced),
                Outcome::Ok,
                "{enforced:?}"
            );
            // The OOM killer's own count still names it.
            assert_eq!(
                outcome(&code(137), &oom_acc(1, 0), enforced),
                Outcome::OomKilled,
                "{enforced:?}"
            );
        }
        // No exit information at all is not a signal either.
        assert_eq!(
            outcome(&ExitInfo::default(), &quiet, en(true, false)),
            Outcome::Failed
        );
    }

    /// The exit as the history stores it: exactly `code` and `signal`; records written
    /// before unknown fields were refused still parse, a misspelt field does not.
    #[test]
    fn exit_info_refuses_unknown_fields_and_old_records_parse() {
        let exit: ExitInfo = serde_json::from_str(r#"{"code": 3, "signal": null}"#).unwrap();
        assert_eq!(
            exit,
            ExitInfo {
                code: Some(3),
                signal: None
            }
        );
        let partial: ExitInfo = serde_json::from_str(r#"{"signal": 9}"#).unwrap();
        assert_eq!(
            partial,
            ExitInfo {
                code: None,
                signal: Some(9)
            }
        );
        for bad in [
            r#"{"code": 0, "sig": 9}"#,
            r#"{"code": 0, "signal": null, "status": 0}"#,
            r#"{"exit_code": 0}"#,
        ] {
            let err = serde_json::from_str::<ExitInfo>(bad)
                .expect_err(bad)
                .to_string();
            assert!(err.contains("unknown field"), "{bad} → {err}");
        }
        // A calls.jsonl line as written by the code before this change.
        let line = r#"{"call_id":17,"session":"default","command":["sh","-c","exit 3"],"intent":{"mem":536870912,"millicpus":1500},"limits":{"memory_expected":536870912,"memory_high":536870912,"memory_max":1073741824,"cpu_weight":100,"millicpus":1500,"pids_max":2048,"timeout_ms":1800000,"cpu_budget_ms":null,"priority":"normal","class":null,"oom_score_adj":500},"clamps":[],"cgroup":"/sys/fs/cgroup/agentcg/session-default/calls/call-000017","started_unix_ms":1796000000000,"duration_ms":12,"exit":{"code":3,"signal":null},"outcome":"failed","accounting":{"memory_peak":4096,"cpu":{"usage_usec":1,"user_usec":1,"system_usec":0,"nr_throttled":0,"throttled_usec":0},"memory_events":{"low":0,"high":0,"max":0,"oom":0,"oom_kill":0,"oom_group_kill":0},"shared_ceiling_events":{"low":0,"high":0,"max":0,"oom":0,"oom_kill":0,"oom_group_kill":0},"pids_peak":1,"pids_limit_hits":0},"leftover_killed":0,"processes":{"execs":1,"forks":0,"exits":1}}"#;
        let rec: CallRecord = serde_json::from_str(line).unwrap();
        assert_eq!(
            (rec.call_id, rec.exit.code, rec.outcome),
            (17, Some(3), Outcome::Failed)
        );
        let again = serde_json::to_string(&rec).unwrap();
        assert_eq!(serde_json::from_str::<CallRecord>(&again).unwrap(), rec);
        assert!(
            again.contains(r#""exit":{"code":3,"signal":null}"#),
            "{again}"
        );
    }

    #[test]
    fn oom_feedback_names_limit_peak_and_suggestion() {
        let f = feedback(
            7,
            Outcome::OomKilled,
            &limits(),
            &oom_acc(3, 0),
            ceil(1 << 30),
            "run a single test file",
        )
        .unwrap();
        assert_eq!(f.limit, "mem.max");
        assert_eq!(f.peak.as_deref(), Some("64 MiB"));
        assert!(f.message.contains("call 7 (test)"), "{}", f.message);
        assert!(f.message.contains("run a single test file"));
        assert!(f.suggestion.contains("mem.max=128M"), "{}", f.suggestion);
    }

    #[test]
    fn shared_ceiling_is_told_apart() {
        let f = feedback(
            1,
            Outcome::OomKilled,
            &limits(),
            &oom_acc(0, 2),
            ceil(272 << 20),
            "x",
        )
        .unwrap();
        assert_eq!(f.limit, "session calls ceiling");
        assert_eq!(f.limit_value, "272 MiB");
    }

    #[test]
    fn no_feedback_for_plain_failures() {
        assert!(
            feedback(
                1,
                Outcome::Failed,
                &limits(),
                &Accounting::default(),
                ceil(0),
                "x"
            )
            .is_none()
        );
        let t = feedback(
            1,
            Outcome::Timeout,
            &limits(),
            &Accounting::default(),
            ceil(0),
            "x",
        )
        .unwrap();
        assert_eq!(t.limit_value, "10s");
        assert!(t.suggestion.contains("timeout=20s"), "{}", t.suggestion);
    }

    #[test]
    fn a_kill_for_a_limit_above_the_session_blames_the_host() {
        let f = feedback(
            4,
            Outcome::OomKilled,
            &limits(),
            &oom_acc(0, 0),
            ceil(1 << 30),
            "x",
        )
        .unwrap();
        assert_eq!(
            (f.limit.as_str(), f.limit_value.as_str()),
            ("host memory", "1.1 GiB")
        );
        assert!(f.message.contains("OOM killer chose it"), "{}", f.message);
    }

    fn ceil(calls: u64) -> Ceilings {
        Ceilings {
            calls,
            host: 1100 << 20,
        }
    }

    #[test]
    fn a_pressure_kill_is_explained() {
        let pressure = Enforced {
            pressure_killed: true,
            ..Enforced::default()
        };
        let killed = ExitInfo {
            code: None,
            signal: Some(9),
        };
        let acc = Accounting {
            memory_peak: Some(300 << 20),
            ..Accounting::default()
        };
        assert_eq!(outcome(&killed, &acc, pressure), Outcome::MemoryPressure);
        let ok = ExitInfo {
            code: Some(0),
            signal: None,
        };
        assert_eq!(outcome(&ok, &acc, pressure), Outcome::Ok, "finished first");
        let f = feedback(
            3,
            Outcome::MemoryPressure,
            &limits(),
            &acc,
            ceil(0),
            "run one file",
        )
        .unwrap();
        assert_eq!(
            (f.limit.as_str(), f.limit_value.as_str()),
            ("host memory", "1.1 GiB")
        );
        assert_eq!(f.peak.as_deref(), Some("300 MiB"));
        assert!(
            f.message.contains("relieve host memory pressure"),
            "{}",
            f.message
        );
        assert!(f.suggestion.contains("run one file"), "{}", f.suggestion);
    }
}
