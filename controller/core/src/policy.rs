//! Policy: the operator's rules (session defaults, per-priority weights, per-call caps,
//! command classes), parsed strictly from TOML. The embedded default lives in
//! `policies/default.toml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::intent::{Intent, IntentError, Priority};
use crate::units;

/// The policy agentcgd uses when started without `--policy`.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.toml");

/// Why a policy was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// What to do with a call that wants more than its session has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    Clamp,
    Reject,
}

/// What agentcgd does to a call that used up its CPU budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetAction {
    /// Leave it at the scheduler's floor share.
    Throttle,
    /// Freeze it (`cgroup.freeze`) until its timeout ends it.
    Freeze,
    /// Kill it (`cgroup.kill`).
    Kill,
}

/// Which mechanism enforces CPU classes and weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerChoice {
    /// agentcg's sched_ext scheduler when the kernel has sched_ext, else the kernel's.
    SchedExt,
    /// Only the kernel cpu controller (cpu.weight, cpu.max).
    Kernel,
}

/// What to do when the sched_ext scheduler exits (error, watchdog, unload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerExit {
    /// Load it again (at most `reload_limit` times, then fall back).
    Reload,
    /// Stay on the kernel cpu controller.
    Fallback,
}

/// CPU enforcement settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuPolicy {
    pub scheduler: SchedulerChoice,
    pub on_budget_exceeded: BudgetAction,
    pub on_scheduler_exit: SchedulerExit,
    /// Reloads allowed after exits before agentcgd falls back for good.
    pub reload_limit: u32,
}

/// The graduated memory response (see `pressure`): when it starts, how fast it
/// escalates, when it relents, and how elastic per-call budgets are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// How much a call's memory.high is raised when it crosses it while the host has
    /// slack (never above its memory.max); 0 keeps declared sizes rigid.
    pub burst_step: u64,
    /// Percent of the root's memory limit at which the response starts.
    pub pressure_at: u8,
    /// Percent at which it may kill (and a burst is never granted above `pressure_at`).
    pub critical_at: u8,
    /// Percent under which (with no PSI trigger for `calm_for`) everything is undone.
    pub calm_below: u8,
    /// PSI trigger on the root's and every session's memory.pressure: `some` stall
    /// of `psi_stall` within `psi_window`.
    pub psi_stall: Duration,
    pub psi_window: Duration,
    /// Least time between two escalation steps while pressure persists.
    pub step_interval: Duration,
    /// How long it must stay calm before frozen calls thaw.
    pub calm_for: Duration,
    /// memory.reclaim asks low-priority sessions for this percent of their usage.
    pub reclaim_percent: u8,
}

/// Session defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDefaults {
    pub memory: u64,
    pub pids: u32,
    pub millicpus: u32,
    pub runtime_reserve: u64,
    pub admission: Admission,
}

/// Upper bounds for any one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    pub mem_max: u64,
    pub millicpus: u32,
    pub pids: u32,
    pub timeout: Duration,
}

/// A command class: which commands belong to it and how they are treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandClass {
    pub name: String,
    /// Each pattern is a word sequence (`python -m pytest`).
    pub commands: Vec<Vec<String>>,
    pub intent: Intent,
    pub suggestion: String,
}

/// The call history: how long records are kept (`[history]`, optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Records of calls that ended longer ago are pruned.
    pub keep: Duration,
}

/// `keep` when the policy has no `[history]`.
pub const DEFAULT_HISTORY_KEEP: Duration = Duration::from_secs(30 * 86_400);

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub session: SessionDefaults,
    /// cpu.weight for low, normal, high.
    pub weights: [u16; 3],
    /// oom_score_adj of the tools of low, normal, high calls (0..=1000).
    pub oom_score_adj: [i16; 3],
    pub caps: Caps,
    pub call_intent: Intent,
    pub call_suggestion: String,
    pub classes: Vec<CommandClass>,
    pub cpu: CpuPolicy,
    pub memory: MemoryPolicy,
    pub history: HistoryPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    session: RawSession,
    priority: RawPriorities,
    caps: RawCaps,
    call: RawCall,
    cpu: CpuPolicy,
    memory: RawMemory,
    #[serde(default, rename = "class")]
    classes: Vec<RawClass>,
    #[serde(default)]
    history: Option<RawHistory>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    keep: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    memory: String,
    pids: u32,
    cpus: f64,
    runtime_reserve: String,
    admission: Admission,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriorities {
    high: RawWeight,
    normal: RawWeight,
    low: RawWeight,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeight {
    cpu_weight: u16,
    oom_score_adj: i16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaps {
    mem_max: String,
    cpus: f64,
    pids: u32,
    timeout: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {
    burst_step: String,
    pressure_at: u8,
    critical_at: u8,
    calm_below: u8,
    psi_stall: String,
    psi_window: String,
    step_interval: String,
    calm_for: String,
    reclaim_percent: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    intent: String,
    suggestion: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    name: String,
    commands: Vec<String>,
    intent: String,
    suggestion: String,
}

impl Policy {
    /// The embedded default policy.
    pub fn default_policy() -> Policy {
        // The default is parsed by a unit test, so this cannot fail at run time.
        Policy::parse(DEFAULT_POLICY, "embedded default").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(&text, &path.display().to_string())
    }

    /// Parses and validates policy text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let size = |key: &str, v: &str| {
            units::parse_size(v).map_err(|e| invalid(format!("{key} = \"{v}\": {e}")))
        };
        let cpus = |key: &str, v: f64| {
            if !(0.0..=1024.0).contains(&v) {
                return Err(invalid(format!("{key} = {v}: expected 0..=1024 CPUs")));
            }
            Ok((v * 1000.0).round() as u32)
        };
        let weight = |key: &str, w: u16| {
            if (1..=10_000).contains(&w) {
                Ok(w)
            } else {
                Err(invalid(format!(
                    "priority.{key}.cpu_weight = {w}: expected 1..=10000"
                )))
            }
        };
        let oom_adj = |key: &str, a: i16| {
            if (0..=1000).contains(&a) {
                Ok(a)
            } else {
                Err(invalid(format!(
                    "priority.{key}.oom_score_adj = {a}: expected 0..=1000 (lowering it needs privileges tools do not have)"
                )))
            }
        };
        let intent = |key: &str, v: &str| {
            Intent::parse_compact(v).map_err(|e: IntentError| invalid(format!("{key}: {e}")))
        };
        let session = SessionDefaults {
            memory: size("session.memory", &raw.session.memory)?,
            pids: raw.session.pids,
            millicpus: cpus("session.cpus", raw.session.cpus)?,
            runtime_reserve: size("session.runtime_reserve", &raw.session.runtime_reserve)?,
            admission: raw.session.admission,
        };
        if session.runtime_reserve >= session.memory {
            return Err(invalid(
                "session.runtime_reserve must be smaller than session.memory".into(),
            ));
        }
        let caps = Caps {
            mem_max: size("caps.mem_max", &raw.caps.mem_max)?,
            millicpus: cpus("caps.cpus", raw.caps.cpus)?,
            pids: raw.caps.pids,
            timeout: units::parse_duration(&raw.caps.timeout)
                .map_err(|e| invalid(format!("caps.timeout: {e}")))?,
        };
        let mut classes = Vec::new();
        for c in raw.classes {
            let label = Intent::parse_compact(&format!("class={}", c.name))
                .map_err(|e| invalid(format!("class name: {e}")))?;
            if c.commands.is_empty() {
                return Err(invalid(format!("class {}: commands is empty", c.name)));
            }
            let mut intent = intent(&format!("class {} intent", c.name), &c.intent)?;
            intent.class = label.class;
            classes.push(CommandClass {
                name: c.name,
                commands: c
                    .commands
                    .iter()
                    .map(|p| p.split_whitespace().map(str::to_string).collect())
                    .collect(),
                intent,
                suggestion: c.suggestion,
            });
        }
        let memory = memory_policy(&raw.memory).map_err(invalid)?;
        let history = history_policy(raw.history.as_ref()).map_err(invalid)?;
        Ok(Policy {
            session,
            weights: [
                weight("low", raw.priority.low.cpu_weight)?,
                weight("normal", raw.priority.normal.cpu_weight)?,
                weight("high", raw.priority.high.cpu_weight)?,
            ],
            oom_score_adj: [
                oom_adj("low", raw.priority.low.oom_score_adj)?,
                oom_adj("normal", raw.priority.normal.oom_score_adj)?,
                oom_adj("high", raw.priority.high.oom_score_adj)?,
            ],
            caps,
            call_intent: intent("call.intent", &raw.call.intent)?,
            call_suggestion: raw.call.suggestion,
            classes,
            cpu: raw.cpu,
            memory,
            history,
        })
    }

    /// cpu.weight for a priority class.
    pub fn weight(&self, p: Priority) -> u16 {
        self.weights[p as usize]
    }

    /// The class of a command line (argv joined, or a shell command string): the first
    /// shell segment whose leading words match a class pattern decides.
    pub fn classify(&self, command: &str) -> Option<&CommandClass> {
        segments(command).find_map(|words| {
            self.classes
                .iter()
                .find(|c| c.commands.iter().any(|p| prefix_matches(p, &words)))
        })
    }

    /// A class by its label.
    pub fn class_named(&self, name: &str) -> Option<&CommandClass> {
        self.classes.iter().find(|c| c.name == name)
    }
}

/// Validates `[history]`: `keep` a duration of at least an hour (absent: 30 days).
fn history_policy(raw: Option<&RawHistory>) -> Result<HistoryPolicy, String> {
    let Some(raw) = raw else {
        return Ok(HistoryPolicy {
            keep: DEFAULT_HISTORY_KEEP,
        });
    };
    let keep = units::parse_duration(&raw.keep)
        .map_err(|e| format!("history.keep = \"{}\": {e}", raw.keep))?;
    if keep < Duration::from_secs(3600) {
        return Err(format!(
            "history.keep = \"{}\": keep at least 1h (records are pruned hourly)",
            raw.keep
        ));
    }
    Ok(HistoryPolicy { keep })
}

/// Validates `[memory]`: percents ordered calm < pressure < critical <= 100, PSI
/// window 500 ms..10 s (the kernel's range) with the stall inside it.
fn memory_policy(raw: &RawMemory) -> Result<MemoryPolicy, String> {
    let duration = |key: &str, v: &str| {
        units::parse_duration(v).map_err(|e| format!("memory.{key} = \"{v}\": {e}"))
    };
    let m = MemoryPolicy {
        burst_step: units::parse_size(&raw.burst_step)
            .map_err(|e| format!("memory.burst_step = \"{}\": {e}", raw.burst_step))?,
        pressure_at: raw.pressure_at,
        critical_at: raw.critical_at,
        calm_below: raw.calm_below,
        psi_stall: duration("psi_stall", &raw.psi_stall)?,
        psi_window: duration("psi_window", &raw.psi_window)?,
        step_interval: duration("step_interval", &raw.step_interval)?,
        calm_for: duration("calm_for", &raw.calm_for)?,
        reclaim_percent: raw.reclaim_percent,
    };
    if !(m.calm_below < m.pressure_at && m.pressure_at < m.critical_at && m.critical_at <= 100) {
        return Err(format!(
            "memory: expected calm_below < pressure_at < critical_at <= 100, got {} / {} / {}",
            m.calm_below, m.pressure_at, m.critical_at
        ));
    }
    let window = Duration::from_millis(500)..=Duration::from_secs(10);
    if !window.contains(&m.psi_window) {
        return Err(format!(
            "memory.psi_window = {:?}: the kernel accepts 500ms..10s",
            m.psi_window
        ));
    }
    if m.psi_stall.is_zero() || m.psi_stall > m.psi_window {
        return Err(format!(
            "memory.psi_stall = {:?}: must be above 0 and at most psi_window",
            m.psi_stall
        ));
    }
    if !(1..=100).contains(&m.reclaim_percent) {
        return Err(format!(
            "memory.reclaim_percent = {}: expected 1..=100",
            m.reclaim_percent
        ));
    }
    Ok(m)
}

/// The text a call is classified by: the command string of `sh -c CMD` (any shell, any
/// option cluster holding `c`), else the arguments joined by spaces.
pub fn command_text(argv: &[String]) -> String {
    let is_shell = argv.first().is_some_and(|a| {
        let base = a.rsplit('/').next().unwrap_or("");
        matches!(base, "sh" | "bash" | "dash" | "zsh" | "ksh")
    });
    if is_shell {
        let mut rest = argv[1..].iter();
        while let Some(arg) = rest.next() {
            if !arg.starts_with('-') {
                break;
            }
            if !arg.starts_with("--") && arg.contains('c') {
                return rest.next().cloned().unwrap_or_default();
            }
        }
    }
    argv.join(" ")
}

/// Splits a shell command into segments at `&&`, `||`, `;`, `|` and newlines, and each
/// segment into words, dropping leading `VAR=value` assignments and wrappers such as
/// `timeout 60`, `env`, `sudo`, `nice`. Only used for classification: nothing runs it.
fn segments(command: &str) -> impl Iterator<Item = Vec<String>> + '_ {
    command
        .split(['\n', ';', '|', '&'])
        .map(|seg| {
            let mut words: Vec<String> = seg
                .split_whitespace()
                .map(|w| {
                    w.trim_matches(|c| c == '(' || c == ')' || c == '"' || c == '\'')
                        .to_string()
                })
                .filter(|w| !w.is_empty())
                .collect();
            loop {
                match words.first().map(String::as_str) {
                    Some(w) if w.contains('=') && !w.starts_with('-') => {
                        words.remove(0);
                    }
                    Some("env" | "sudo" | "nice" | "exec" | "time" | "command") => {
                        words.remove(0);
                    }
                    Some("timeout") => {
                        words.drain(..words.len().min(2));
                    }
                    _ => break,
                }
            }
            words
        })
        .filter(|w| !w.is_empty())
}

/// Whether `words` starts with `pattern`; the first word compares by basename, with a
/// version suffix allowed (`/usr/bin/python3.11` matches `python`).
fn prefix_matches(pattern: &[String], words: &[String]) -> bool {
    if pattern.is_empty() || words.len() < pattern.len() {
        return false;
    }
    let first = words[0].rsplit('/').next().unwrap_or("");
    let version_ok = first
        .strip_prefix(pattern[0].as_str())
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'));
    version_ok && pattern[1..] == words[1..pattern.len()]
}

#[cfg(test)]
mod tests;
