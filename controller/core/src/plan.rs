//! Pure decisions: a session's cgroup limits from its request and the policy, and a
//! call's limits from its declared intent, the policy and what its session has left.
//! No I/O here; the daemon applies the result to cgroupfs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admission::{self, HostMemory, Verdict};
use crate::intent::{Intent, Priority, format_millicpus};
use crate::policy::{Admission, CommandClass, Policy};
use crate::units::{HumanSize, compact_duration};

/// Smallest expected size a call is admitted with (memory.high below this only thrashes).
pub const MIN_CALL_MEM: u64 = 16 << 20;
/// cpu.max period in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// A session as asked for by a client; `None` takes the policy default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub name: String,
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Session memory budget in bytes, or a size string in the JSON API.
    #[serde(default, with = "size_opt")]
    pub memory: Option<u64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub pids: Option<u32>,
    #[serde(default)]
    pub runtime_pid: Option<u32>,
    /// The uid the session belongs to: set by agentcgd from the caller's socket
    /// credentials, never taken from the request body.
    #[serde(skip)]
    pub owner: u32,
}

/// The limits of a session's cgroups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPlan {
    pub name: String,
    pub priority: Priority,
    /// session/ memory.max.
    pub memory_max: u64,
    /// session/ memory.low: the whole budget for high priority sessions, else 0.
    pub memory_low: u64,
    pub cpu_weight: u16,
    /// session/ cpu.max in thousandths of a CPU; `None` = max.
    pub millicpus: Option<u32>,
    pub pids_max: u32,
    /// runtime/ memory.min (high priority) or memory.low (others).
    pub runtime_reserve: u64,
    pub runtime_hard_protect: bool,
    /// calls/ memory.max: what every tool call of the session shares.
    pub calls_memory_max: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "session name `{0}` is invalid: use 1-64 characters from [A-Za-z0-9_.-], not starting with `.` or `-`"
    )]
    BadSessionName(String),
    #[error("session {field} = {value}: {reason}")]
    BadSessionLimit {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    NoRoom(String),
    /// The call cannot fit now and may wait for memory (the daemon's queue).
    #[error("{}", .0.decision.reason)]
    Queued(Box<admission::Note>),
}

/// Validates a session name; names become directory names, so this is strict.
pub fn check_session_name(name: &str) -> Result<(), PlanError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PlanError::BadSessionName(
            name.chars()
                .take(80)
                .collect::<String>()
                .escape_debug()
                .to_string(),
        ))
    }
}

/// Plans a session's cgroups.
pub fn plan_session(policy: &Policy, req: &SessionRequest) -> Result<SessionPlan, PlanError> {
    check_session_name(&req.name)?;
    let priority = req.priority.unwrap_or_default();
    let memory = req.memory.unwrap_or(policy.session.memory);
    let reserve = policy.session.runtime_reserve;
    let bad = |field, value: String, reason: String| PlanError::BadSessionLimit {
        field,
        value,
        reason,
    };
    if memory < reserve + MIN_CALL_MEM {
        return Err(bad(
            "memory",
            HumanSize(memory).to_string(),
            format!(
                "must be at least the runtime reserve ({}) plus {} for tool calls",
                HumanSize(reserve),
                HumanSize(MIN_CALL_MEM)
            ),
        ));
    }
    if memory > crate::intent::MAX_MEM {
        return Err(bad(
            "memory",
            HumanSize(memory).to_string(),
            "absurdly large".into(),
        ));
    }
    let millicpus = match req.cpus {
        None if policy.session.millicpus == 0 => None,
        None => Some(policy.session.millicpus),
        Some(c) if (0.01..=1024.0).contains(&c) => Some((c * 1000.0).round() as u32),
        Some(c) => return Err(bad("cpus", c.to_string(), "expected 0.01..=1024".into())),
    };
    let pids_max = req.pids.unwrap_or(policy.session.pids);
    if pids_max == 0 || pids_max > crate::intent::MAX_PIDS {
        return Err(bad(
            "pids",
            pids_max.to_string(),
            "expected 1..=4194304".into(),
        ));
    }
    Ok(SessionPlan {
        name: req.name.clone(),
        priority,
        memory_max: memory,
        memory_low: if priority == Priority::High {
            memory
        } else {
            0
        },
        cpu_weight: policy.weight(priority),
        millicpus,
        pids_max,
        runtime_reserve: reserve,
        runtime_hard_protect: priority == Priority::High,
        calls_memory_max: memory - reserve,
    })
}

/// The limits a call runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLimits {
    /// Expected memory; memory.high when below `memory_max`, else memory.high = max.
    pub memory_expected: u64,
    pub memory_high: Option<u64>,
    pub memory_max: u64,
    pub cpu_weight: u16,
    /// cpu.max in thousandths of a CPU; `None` = max.
    pub millicpus: Option<u32>,
    pub pids_max: u32,
    pub timeout_ms: u64,
    pub cpu_budget_ms: Option<u64>,
    pub priority: Priority,
    pub class: Option<String>,
    /// Written to the tool's /proc/self/oom_score_adj before exec (policy, by priority).
    #[serde(default)]
    pub oom_score_adj: i16,
}

impl CallLimits {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// One limit lowered from what was asked, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clamp {
    pub field: String,
    pub requested: String,
    pub granted: String,
    pub reason: String,
}

/// An admitted call: its limits, what was clamped, and the suggestion for its class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    pub limits: CallLimits,
    pub clamps: Vec<Clamp>,
    pub suggestion: String,
    /// What admission decided, with its inputs.
    pub admission: admission::Note,
}

/// What a session has committed to its running calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionLoad {
    /// Sum of the running calls' expected memory.
    pub expected_mem: u64,
    pub running: usize,
}

fn clamp_note(
    clamps: &mut Vec<Clamp>,
    field: &str,
    requested: String,
    granted: String,
    reason: String,
) {
    clamps.push(Clamp {
        field: field.to_string(),
        requested,
        granted,
        reason,
    });
}

/// The class of a call: the one it names, else the one its command matches.
pub fn call_class<'p>(
    policy: &'p Policy,
    declared: &Intent,
    command: &str,
) -> Option<&'p CommandClass> {
    match declared.class.as_deref() {
        Some(name) => policy.class_named(name),
        None => policy.classify(command),
    }
}

/// What admission knows besides the call and its session (see [`crate::admission`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmitContext {
    /// Recorded peak memory of ended calls of the call's class.
    pub class_peaks: Vec<u64>,
    /// Those of them that ran in the call's session.
    pub session_peaks: Vec<u64>,
    /// The host's memory (`None`: unknown, it does not stop a call).
    pub host: Option<HostMemory>,
    /// Whether a queue can hold the call (the daemon's); without one nothing waits.
    pub queueing: bool,
    /// How long the call has waited in the queue.
    pub waited: Duration,
}

/// Admits a call without history, host reading or queue: what [`admit_with`] does
/// with an empty [`AdmitContext`] (the replay simulator's and the tests' case).
pub fn admit(
    policy: &Policy,
    session: &SessionPlan,
    load: SessionLoad,
    declared: &Intent,
    command: &str,
) -> Result<Admitted, PlanError> {
    admit_with(
        policy,
        session,
        load,
        declared,
        command,
        &AdmitContext::default(),
    )
}

/// Admits a call: fills the declared intent from its class (or the policy default),
/// clamps it to the policy caps, takes its expected memory from history when it
/// declares none, and lets [`admission::decide`] admit, clamp, queue
/// ([`PlanError::Queued`]) or reject ([`PlanError::NoRoom`]) it.
pub fn admit_with(
    policy: &Policy,
    session: &SessionPlan,
    load: SessionLoad,
    declared: &Intent,
    command: &str,
    ctx: &AdmitContext,
) -> Result<Admitted, PlanError> {
    let class = call_class(policy, declared, command);
    let (defaults, suggestion) = match class {
        Some(c) => (&c.intent, c.suggestion.clone()),
        None => (&policy.call_intent, policy.call_suggestion.clone()),
    };
    let mut eff = declared.clone().or(defaults);
    // A declared bound wins over a default on the other bound.
    match (declared.mem, declared.mem_max) {
        (None, Some(max)) => eff.mem = eff.mem.map(|m| m.min(max)),
        (Some(mem), None) => eff.mem_max = eff.mem_max.map(|m| m.max(mem)),
        _ => {}
    }
    let mut clamps = Vec::new();
    let size = |b: u64| HumanSize(b).to_string();

    let ceiling = session.calls_memory_max;
    let mut mem_max = eff.mem_max.unwrap_or(ceiling);
    if mem_max > policy.caps.mem_max {
        clamp_note(
            &mut clamps,
            "mem.max",
            size(mem_max),
            size(policy.caps.mem_max),
            "policy cap".into(),
        );
        mem_max = policy.caps.mem_max;
    }
    if mem_max > ceiling {
        let reason = format!(
            "session `{}` gives its tool calls {} together ({} budget minus {} runtime reserve)",
            session.name,
            size(ceiling),
            size(session.memory_max),
            size(session.runtime_reserve)
        );
        clamp_note(&mut clamps, "mem.max", size(mem_max), size(ceiling), reason);
        mem_max = ceiling;
    }
    let on = policy.admission.enabled;
    let call_priority = eff
        .priority
        .unwrap_or(session.priority)
        .min(session.priority);
    let estimate = admission::estimate(
        &policy.admission,
        declared.mem,
        eff.mem,
        &ctx.class_peaks,
        &ctx.session_peaks,
    );
    let mut mem = estimate.map_or(mem_max, |e| e.expected).min(mem_max);
    let remaining = ceiling.saturating_sub(load.expected_mem);
    let inputs = admission::Inputs {
        expected: mem,
        remaining,
        running: load.running,
        host: ctx.host.filter(|h| on && call_priority < h.protected),
        waited_ms: ctx.waited.as_millis() as u64,
        queue_for_ms: if on && ctx.queueing {
            policy.admission.queue_for.as_millis() as u64
        } else {
            0
        },
        clamp_allowed: policy.session.admission == Admission::Clamp,
    };
    let decision = admission::decide(&inputs);
    let why = || {
        format!(
            "session `{}` has {} of {} left for tool calls ({} running call(s) expect {})",
            session.name,
            size(remaining),
            size(ceiling),
            load.running,
            size(load.expected_mem)
        )
    };
    let note = admission::Note {
        estimate,
        inputs,
        priority: call_priority,
        decision: decision.clone(),
    };
    match decision.verdict {
        Verdict::Admit => {}
        Verdict::Clamp => {
            clamp_note(&mut clamps, "mem", size(mem), size(remaining), why());
            mem = remaining;
        }
        Verdict::Queue => return Err(PlanError::Queued(Box::new(note))),
        Verdict::Reject => {
            let host_full = inputs.host.is_some_and(|h| h.used_percent >= h.pressure_at);
            let reason = if host_full || inputs.waited_ms > 0 {
                decision.reason
            } else {
                format!("call expects {} but {}", size(mem), why())
            };
            return Err(PlanError::NoRoom(format!(
                "{reason}; retry when a call finishes, or declare less (mem=...)"
            )));
        }
    }

    let mut pids = eff.pids.unwrap_or(policy.caps.pids);
    for (cap, why) in [
        (policy.caps.pids, "policy cap"),
        (session.pids_max, "session pids budget"),
    ] {
        if pids > cap {
            clamp_note(
                &mut clamps,
                "pids",
                pids.to_string(),
                cap.to_string(),
                why.into(),
            );
            pids = cap;
        }
    }

    let mut millicpus = eff.millicpus;
    for (cap, why) in [
        (Some(policy.caps.millicpus), "policy cap"),
        (session.millicpus, "session CPU budget"),
    ] {
        if let (Some(m), Some(c)) = (millicpus, cap)
            && m > c
        {
            clamp_note(
                &mut clamps,
                "cpu",
                format_millicpus(m),
                format_millicpus(c),
                why.into(),
            );
            millicpus = Some(c);
        }
    }

    let mut priority = eff.priority.unwrap_or(session.priority);
    if priority > session.priority {
        clamp_note(
            &mut clamps,
            "priority",
            priority.to_string(),
            session.priority.to_string(),
            "a call cannot rank above its session".into(),
        );
        priority = session.priority;
    }

    let mut timeout = eff.timeout.unwrap_or(policy.caps.timeout);
    if timeout > policy.caps.timeout {
        clamp_note(
            &mut clamps,
            "timeout",
            compact_duration(timeout),
            compact_duration(policy.caps.timeout),
            "policy cap".into(),
        );
        timeout = policy.caps.timeout;
    }

    // Only what the agent asked for is reported as clamped; defaults fit silently.
    clamps.retain(|c| match c.field.as_str() {
        "mem" => declared.mem.is_some(),
        "mem.max" => declared.mem_max.is_some(),
        "pids" => declared.pids.is_some(),
        "cpu" => declared.millicpus.is_some(),
        "priority" => declared.priority.is_some(),
        "timeout" => declared.timeout.is_some(),
        _ => true,
    });
    Ok(Admitted {
        limits: CallLimits {
            memory_expected: mem,
            memory_high: (mem < mem_max).then_some(mem),
            memory_max: mem_max,
            cpu_weight: eff.cpu_weight.unwrap_or_else(|| policy.weight(priority)),
            millicpus,
            pids_max: pids,
            timeout_ms: timeout.as_millis() as u64,
            cpu_budget_ms: eff.cpu_budget.map(|d| d.as_millis() as u64),
            priority,
            class: eff.class.or_else(|| class.map(|c| c.name.clone())),
            oom_score_adj: policy.oom_score_adj[priority as usize],
        },
        clamps,
        suggestion,
        admission: note,
    })
}

/// cpu.max text for a CPU amount: `"max 100000"` or `"<quota> 100000"`.
pub fn cpu_max_value(millicpus: Option<u32>) -> String {
    match millicpus {
        None => format!("max {CPU_PERIOD_US}"),
        Some(m) => format!("{} {CPU_PERIOD_US}", u64::from(m) * CPU_PERIOD_US / 1000),
    }
}

/// Serde helper: an optional size given as a byte count or a size string.
pub mod budget;

mod size_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_u64(*b),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Bytes(b)) => Ok(Some(b)),
            Some(Raw::Text(t)) => crate::units::parse_size(&t)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("memory `{t}`: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests;
