//! Admission from history (`[admission]` in the policy, docs/POLICY.md): how much
//! memory a call that declares none is expected to use, and whether a call is
//! admitted, clamped, queued or rejected. Pure functions; the controller gathers the
//! inputs (recorded peaks, the session's load, the host's memory) and the daemon keeps
//! the queue.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::history::query::nearest_rank;
use crate::intent::Priority;
use crate::plan::MIN_CALL_MEM;
use crate::units::{HumanSize, compact_duration};

/// Calls of its class a session must have ended before its own factor counts.
pub const SESSION_MIN_SAMPLES: usize = 3;
/// The session factor stays within 1/`FACTOR_BOUND`..=`FACTOR_BOUND`.
const FACTOR_BOUND: u64 = 2;

/// The `[admission]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionPolicy {
    /// Off: a call's expected size is its intent's, and nothing is queued.
    pub enabled: bool,
    /// Recorded calls of a class needed before its percentile replaces the default.
    pub min_samples: u32,
    /// Which percentile of the class's recorded peaks is the expected size.
    pub percentile: u8,
    /// How long a call that cannot fit waits for memory; zero: it never waits.
    pub queue_for: Duration,
}

/// Where a call's expected memory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeSource {
    /// The call declared `mem`.
    Declared,
    /// The percentile of its class's recorded peaks (times the session factor).
    History,
    /// The class's (or the policy's) default intent: too few records, or admission off.
    Default,
}

/// A call's expected memory and how it was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimate {
    pub expected: u64,
    pub source: SizeSource,
    /// Recorded peaks of the class considered.
    pub samples: usize,
    /// The class's percentile peak (when `samples >= min_samples`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_peak: Option<u64>,
    /// The session factor in thousandths (1000 = the session's calls of the class
    /// peak like everyone's).
    pub session_factor_permille: u64,
}

/// The session factor: the median peak of the session's own calls of the class over
/// the class's median, within 1/2..=2, in thousandths; 1000 until the session has
/// ended [`SESSION_MIN_SAMPLES`] calls of the class.
pub fn session_factor(class_peaks: &[u64], session_peaks: &[u64]) -> u64 {
    if session_peaks.len() < SESSION_MIN_SAMPLES || class_peaks.is_empty() {
        return 1000;
    }
    let class_median = percentile(class_peaks, 50).max(1);
    let own_median = percentile(session_peaks, 50);
    (own_median.saturating_mul(1000) / class_median).clamp(1000 / FACTOR_BOUND, 1000 * FACTOR_BOUND)
}

/// The nearest-rank percentile `p` of `values` (0 when empty).
pub fn percentile(values: &[u64], p: u8) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = nearest_rank(sorted.len() as u64, u64::from(p)) as usize;
    sorted.get(rank - 1).copied().unwrap_or(0)
}

/// The expected memory of a call: what it declared; else, with admission on and at
/// least `min_samples` recorded peaks of its class, their percentile times the
/// session factor; else the default intent's (`default`, `None` when that has none).
pub fn estimate(
    cfg: &AdmissionPolicy,
    declared: Option<u64>,
    default: Option<u64>,
    class_peaks: &[u64],
    session_peaks: &[u64],
) -> Option<Estimate> {
    let base = Estimate {
        expected: 0,
        source: SizeSource::Declared,
        samples: class_peaks.len(),
        class_peak: None,
        session_factor_permille: 1000,
    };
    if let Some(mem) = declared {
        return Some(Estimate {
            expected: mem,
            ..base
        });
    }
    if cfg.enabled && class_peaks.len() >= cfg.min_samples as usize && !class_peaks.is_empty() {
        let peak = percentile(class_peaks, cfg.percentile);
        let factor = session_factor(class_peaks, session_peaks);
        return Some(Estimate {
            expected: (u128::from(peak) * u128::from(factor) / 1000) as u64,
            source: SizeSource::History,
            class_peak: Some(peak),
            session_factor_permille: factor,
            ..base
        });
    }
    default.map(|mem| Estimate {
        expected: mem,
        source: SizeSource::Default,
        ..base
    })
}

/// The host's memory as admission sees it: agentcg's root usage in percent of its
/// effective limit, against the policy's `memory.pressure_at`. Only calls below the
/// `protected` priority (the highest of the sessions: the one the memory response
/// never acts on) are held for it; the response frees memory for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMemory {
    pub used_percent: u8,
    pub pressure_at: u8,
    pub protected: Priority,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// The call's expected memory (after the caps and its mem.max).
    pub expected: u64,
    /// What the session's tool calls have left (their share minus running calls).
    pub remaining: u64,
    /// Running calls of the session (whose end would free memory).
    pub running: usize,
    /// `None` when admission is off or the call is of the protected priority: host
    /// memory does not stop it then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostMemory>,
    /// How long the call has waited in the queue so far.
    pub waited_ms: u64,
    /// `[admission] queue_for` (0 when admission is off).
    pub queue_for_ms: u64,
    /// `session.admission`: what to do when the session is short and waiting is over.
    pub clamp_allowed: bool,
}

/// What admission does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Admit,
    Clamp,
    Queue,
    Reject,
}

/// A decision: the verdict, the memory granted (for admit and clamp) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub granted: u64,
    pub reason: String,
}

/// Decides: admit when the call fits the session's remaining memory and the host is
/// below `pressure_at`; else queue while it may still wait (admission on, `queue_for`
/// not over, and something can free memory: the host, or a running call of the
/// session); else clamp to what the session has left (session short only, when the
/// policy clamps and at least [`MIN_CALL_MEM`] is left); else reject.
pub fn decide(i: &Inputs) -> Decision {
    let size = |b: u64| HumanSize(b).to_string();
    let host_full = i.host.filter(|h| h.used_percent >= h.pressure_at);
    let short = i.expected > i.remaining;
    let decision = |verdict, granted, reason: String| Decision {
        verdict,
        granted,
        reason,
    };
    if host_full.is_none() && !short {
        return decision(Verdict::Admit, i.expected, "fits".into());
    }
    let mut why = Vec::new();
    if short {
        why.push(format!(
            "the call expects {} but its session has {} left ({} running call(s))",
            size(i.expected),
            size(i.remaining),
            i.running
        ));
    }
    if let Some(h) = host_full {
        why.push(format!(
            "host memory at {}% is at or above pressure_at ({}%)",
            h.used_percent, h.pressure_at
        ));
    }
    let why = why.join("; ");
    let frees = host_full.is_some() || i.running > 0;
    if i.waited_ms < i.queue_for_ms && frees {
        return decision(
            Verdict::Queue,
            0,
            format!(
                "waiting up to {} for memory: {why}",
                compact_duration(Duration::from_millis(i.queue_for_ms))
            ),
        );
    }
    let waited = (i.queue_for_ms > 0 && i.waited_ms >= i.queue_for_ms).then(|| {
        format!(
            "waited {} in the queue: ",
            compact_duration(Duration::from_millis(i.waited_ms))
        )
    });
    if host_full.is_none() && waited.is_none() && i.clamp_allowed && i.remaining >= MIN_CALL_MEM {
        return decision(Verdict::Clamp, i.remaining, why);
    }
    decision(
        Verdict::Reject,
        0,
        format!("{}{why}", waited.unwrap_or_default()),
    )
}

/// What admission did with a call, with its inputs: in the grant and the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
    pub inputs: Inputs,
    /// The call's priority: its place in the queue.
    pub priority: Priority,
    pub decision: Decision,
}

#[cfg(test)]
mod tests;
