//! Policy: the operator's rules (session defaults, per-priority weights, per-call caps,
//! command classes), parsed strictly from TOML. The embedded default lives in
//! `policies/default.toml`. Every key is in the registry ([`keys`]); [`check`] finds
//! every problem with its line and column; a key left out takes its default.

pub mod check;
mod cross;
pub mod diff;
pub mod edit;
pub mod keys;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admission::AdmissionPolicy;
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
    #[error("policy {path}: {size} bytes, more than a policy may be ({MAX_POLICY_BYTES})")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("policy {path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("policy {path}: not UTF-8 text (byte {offset})")]
    NotText { path: PathBuf, offset: usize },
    #[error("policy {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{}", render_problems(origin, problems))]
    Problems {
        origin: String,
        problems: Vec<check::Problem>,
    },
}

/// One `ORIGIN:LINE:COLUMN: key: message` line per error.
fn render_problems(origin: &str, problems: &[check::Problem]) -> String {
    problems
        .iter()
        .map(|p| p.render(origin))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The largest policy text accepted (file or request body).
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Reads a policy file: a regular file of at most [`MAX_POLICY_BYTES`] of UTF-8.
pub fn read_text(path: &Path) -> Result<String, PolicyError> {
    let read = |source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if !meta.is_file() {
        return Err(PolicyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    String::from_utf8(bytes).map_err(|e| PolicyError::NotText {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// `text` with every key it leaves out set to its registry default (comments and
/// layout of what is there kept). The text must have passed [`check::check`].
pub fn effective_text(text: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| e.to_string())?;
    for key in keys::KEYS {
        let Some(default) = key.default else { continue };
        let parts: Vec<&str> = key.path.split('.').collect();
        let (last, sections) = parts.split_last().ok_or("empty key path")?;
        let mut table = doc.as_table_mut() as &mut dyn toml_edit::TableLike;
        for part in sections {
            if table.get(part).is_none() {
                let mut t = toml_edit::Table::new();
                t.set_implicit(true);
                table.insert(part, toml_edit::Item::Table(t));
            }
            table = table
                .get_mut(part)
                .and_then(toml_edit::Item::as_table_like_mut)
                .ok_or_else(|| format!("{}: {part} is not a table", key.path))?;
        }
        if table.get(last).is_none() {
            let value: toml_edit::Value = default
                .parse()
                .map_err(|e| format!("{}: default {default}: {e}", key.path))?;
            table.insert(last, toml_edit::Item::Value(value));
        }
    }
    Ok(doc.to_string())
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
    pub admission: AdmissionPolicy,
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
    history: RawHistory,
    admission: RawAdmission,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmission {
    enabled: bool,
    min_samples: u32,
    percentile: u8,
    queue_for: String,
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
        let text = read_text(path)?;
        Policy::parse(&text, &path.display().to_string())
    }

    /// Parses and validates policy text; `origin` names it in errors, which list every
    /// problem [`check::check`] found (warnings do not stop it).
    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let problems: Vec<check::Problem> = check::check(text)
            .into_iter()
            .filter(|p| p.severity == check::Severity::Error)
            .collect();
        if !problems.is_empty() {
            return Err(PolicyError::Problems {
                origin: origin.to_string(),
                problems,
            });
        }
        let invalid = |message: String| PolicyError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let full = effective_text(text).map_err(invalid)?;
        Policy::build(&full, origin)
    }

    /// Converts a checked policy with every key present (ranges and orderings were
    /// checked by [`check::check`]; what is left here is conversion).
    fn build(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let size = |key: &str, v: &str| {
            units::parse_size(v).map_err(|e| invalid(format!("{key} = \"{v}\": {e}")))
        };
        let duration = |key: &str, v: &str| {
            units::parse_duration(v).map_err(|e| invalid(format!("{key} = \"{v}\": {e}")))
        };
        let cpus = |v: f64| (v * 1000.0).round() as u32;
        let intent = |key: &str, v: &str| {
            Intent::parse_compact(v).map_err(|e: IntentError| invalid(format!("{key}: {e}")))
        };
        let session = SessionDefaults {
            memory: size("session.memory", &raw.session.memory)?,
            pids: raw.session.pids,
            millicpus: cpus(raw.session.cpus),
            runtime_reserve: size("session.runtime_reserve", &raw.session.runtime_reserve)?,
            admission: raw.session.admission,
        };
        let caps = Caps {
            mem_max: size("caps.mem_max", &raw.caps.mem_max)?,
            millicpus: cpus(raw.caps.cpus),
            pids: raw.caps.pids,
            timeout: duration("caps.timeout", &raw.caps.timeout)?,
        };
        let mut classes = Vec::new();
        for c in raw.classes {
            let mut intent = intent(&format!("class {} intent", c.name), &c.intent)?;
            intent.class = Some(c.name.clone());
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
        let m = &raw.memory;
        let memory = MemoryPolicy {
            burst_step: size("memory.burst_step", &m.burst_step)?,
            pressure_at: m.pressure_at,
            critical_at: m.critical_at,
            calm_below: m.calm_below,
            psi_stall: duration("memory.psi_stall", &m.psi_stall)?,
            psi_window: duration("memory.psi_window", &m.psi_window)?,
            step_interval: duration("memory.step_interval", &m.step_interval)?,
            calm_for: duration("memory.calm_for", &m.calm_for)?,
            reclaim_percent: m.reclaim_percent,
        };
        let p = &raw.priority;
        Ok(Policy {
            session,
            weights: [p.low.cpu_weight, p.normal.cpu_weight, p.high.cpu_weight],
            oom_score_adj: [
                p.low.oom_score_adj,
                p.normal.oom_score_adj,
                p.high.oom_score_adj,
            ],
            caps,
            call_intent: intent("call.intent", &raw.call.intent)?,
            call_suggestion: raw.call.suggestion,
            classes,
            cpu: raw.cpu,
            memory,
            history: HistoryPolicy {
                keep: duration("history.keep", &raw.history.keep)?,
            },
            admission: AdmissionPolicy {
                enabled: raw.admission.enabled,
                min_samples: raw.admission.min_samples,
                percentile: raw.admission.percentile,
                queue_for: duration("admission.queue_for", &raw.admission.queue_for)?,
            },
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
mod check_tests;
#[cfg(test)]
mod tests;
