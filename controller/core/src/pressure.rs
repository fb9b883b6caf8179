//! The graduated memory response, as pure decisions: from a reading of the root's
//! memory (usage, limit, whether a PSI trigger or the kernel's `memory.max` fired) and
//! the response so far, which step comes next; which calls are its victims; how far a
//! bursting call may grow. The controller applies the steps, the daemon supplies the
//! signals (BPF memcg events, PSI `poll` wake-ups) and the time.
//!
//! Steps, in order: throttle (lower `memory.high` of the victims to their usage) ->
//! reclaim (`memory.reclaim` on their sessions) -> freeze (`cgroup.freeze`) -> kill (the
//! most recent victim, one per step). Victims are the running calls of the lowest
//! priority present, provided some session has a higher priority (there is someone to
//! give memory back to), and never high-priority calls: while a low- or normal-priority
//! call runs, it gives memory back first; high-priority sessions rely on their
//! `memory.low` and their own limits. Agent runtimes are not calls, so they are never
//! victims. Among equals nobody is sacrificed: the kernel's per-call limits decide.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::intent::Priority;
use crate::policy::MemoryPolicy;

/// One step of the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Throttle,
    Reclaim,
    Freeze,
    Kill,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Throttle => "throttle",
            Step::Reclaim => "reclaim",
            Step::Freeze => "freeze",
            Step::Kill => "kill",
        }
    }

    fn next(self) -> Step {
        match self {
            Step::Throttle => Step::Reclaim,
            Step::Reclaim => Step::Freeze,
            Step::Freeze | Step::Kill => Step::Kill,
        }
    }
}

/// Where the root's usage stands against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Zone {
    /// Below `calm_below`.
    Calm,
    /// Between `calm_below` and `pressure_at`: keep what was done, do no more.
    Between,
    /// At or above `pressure_at`.
    Pressure,
    /// At or above `critical_at`: kills are allowed.
    Critical,
}

/// The root's memory at one moment, and what fired since the last reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub usage: u64,
    pub limit: u64,
    /// A PSI trigger (root or a session above the victims' priority) fired.
    pub psi: bool,
    /// The kernel saw the usage reach `pressure_at` (the BPF watermark) since the last
    /// reading. It counts even when this reading is a little lower: the kernel's flag
    /// is latched (it fires once per crossing), so a crossing ignored here is not
    /// reported again until usage has fallen well below it.
    pub watermark: bool,
    /// The kernel hit `memory.max` at the root (BPF `MEMCG_MAX`/OOM events).
    pub at_max: bool,
}

impl Reading {
    pub fn zone(&self, p: &MemoryPolicy) -> Zone {
        let pct = |x: u8| (self.limit as u128 * x as u128 / 100) as u64;
        if self.usage >= pct(p.critical_at) {
            Zone::Critical
        } else if self.usage >= pct(p.pressure_at) {
            Zone::Pressure
        } else if self.usage < pct(p.calm_below) {
            Zone::Calm
        } else {
            Zone::Between
        }
    }
}

/// The response so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// The last step taken; `None` when nothing is in force.
    pub step: Option<Step>,
    pub last_step_at: Option<Instant>,
    /// Since when it has been calm (below `calm_below`, no PSI), while a step is in force.
    pub calm_since: Option<Instant>,
}

/// What to do after a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing new.
    Hold,
    /// Take this step now.
    Escalate(Step),
    /// Pressure has subsided: undo every step in force (thaw, restore memory.high).
    Relent,
}

/// The next decision, and the state after it.
pub fn decide(p: &MemoryPolicy, s: State, r: &Reading, now: Instant) -> (Decision, State) {
    let zone = r.zone(p);
    let pressured = zone >= Zone::Pressure || r.psi || r.watermark || r.at_max;
    if pressured {
        let due = s
            .last_step_at
            .is_none_or(|t| now.duration_since(t) >= p.step_interval);
        let step = match s.step {
            // Memory is about to run out (the kernel hit the limit, or usage is above
            // critical_at): only a kill frees memory, and waiting lets the kernel's
            // OOM killer choose instead. At the limit at once; above critical_at one
            // kill now, then one per interval.
            _ if r.at_max => Some(Step::Kill),
            Some(Step::Kill) if zone == Zone::Critical => due.then_some(Step::Kill),
            _ if zone == Zone::Critical => Some(Step::Kill),
            None => Some(Step::Throttle),
            Some(_) if !due => None,
            // Below critical_at frozen calls hold their ground.
            Some(Step::Freeze | Step::Kill) => None,
            Some(step) => Some(step.next()),
        };
        let s = State {
            calm_since: None,
            ..s
        };
        return match step {
            Some(step) => (
                Decision::Escalate(step),
                State {
                    step: Some(step),
                    last_step_at: Some(now),
                    calm_since: None,
                },
            ),
            None => (Decision::Hold, s),
        };
    }
    if s.step.is_none() {
        return (Decision::Hold, s);
    }
    if zone != Zone::Calm {
        return (
            Decision::Hold,
            State {
                calm_since: None,
                ..s
            },
        );
    }
    match s.calm_since {
        Some(t) if now.duration_since(t) >= p.calm_for => (Decision::Relent, State::default()),
        Some(_) => (Decision::Hold, s),
        None => (
            Decision::Hold,
            State {
                calm_since: Some(now),
                ..s
            },
        ),
    }
}

/// When the daemon should look again without a new signal: while a step is in force,
/// pressure may persist (escalate) or subside (relent) without any event saying so.
/// The time is absolute (from the last step or the start of the calm), so signals in
/// between do not postpone it; one already past means one interval from `now`.
/// With nothing in force, `latched` (the kernel holds a watermark flag set, so it will
/// not report the next crossing) means every interval too: usage can climb from there
/// to the limit with no event on the way. Otherwise no timer: the signals wake it.
pub fn recheck_at(p: &MemoryPolicy, s: &State, latched: bool, now: Instant) -> Option<Instant> {
    if s.step.is_none() {
        return latched.then(|| now + p.step_interval);
    }
    let at = match (s.calm_since, s.last_step_at) {
        (Some(calm), _) => calm + p.calm_for,
        (None, Some(step)) => step + p.step_interval,
        (None, None) => now,
    };
    Some(if at > now { at } else { now + p.step_interval })
}

/// A running call as the response sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallView {
    pub call_id: u64,
    pub priority: Priority,
    pub killed: bool,
}

/// The victims of a step: the calls of the lowest priority present among those not
/// yet killed, unless that is `High` or not below `top`, the highest priority of the
/// host's sessions. In call-id order (oldest first).
pub fn victims(calls: &[CallView], top: Priority) -> Vec<u64> {
    let alive = || calls.iter().filter(|c| !c.killed);
    let Some(tier) = alive().map(|c| c.priority).min() else {
        return Vec::new();
    };
    if tier == Priority::High || tier >= top {
        return Vec::new();
    }
    let mut v: Vec<u64> = alive()
        .filter(|c| c.priority == tier)
        .map(|c| c.call_id)
        .collect();
    v.sort_unstable();
    v
}

/// The call a kill step ends: the most recent victim.
pub fn kill_target(calls: &[CallView], top: Priority) -> Option<u64> {
    victims(calls, top).last().copied()
}

/// `memory.high` for a throttled call: its usage rounded up to a MiB, at least 16 MiB.
pub fn throttle_high(usage: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    usage.div_ceil(MIB).saturating_mul(MIB).max(16 * MIB)
}

/// Bytes `memory.reclaim` asks of a session using `usage`.
pub fn reclaim_amount(p: &MemoryPolicy, usage: u64) -> u64 {
    (usage as u128 * p.reclaim_percent as u128 / 100) as u64
}

/// The raised `memory.high` of a call that crossed `high` at `usage`, when the root
/// (at `root_usage` of `root_limit`) has slack for one more `burst_step` below
/// `pressure_at` and no response is in force; `None` when it must stay.
pub fn burst_high(
    p: &MemoryPolicy,
    in_force: bool,
    high: u64,
    max: u64,
    root_usage: u64,
    root_limit: u64,
) -> Option<u64> {
    if in_force || p.burst_step == 0 || high >= max {
        return None;
    }
    let watermark = (root_limit as u128 * p.pressure_at as u128 / 100) as u64;
    if root_usage.saturating_add(p.burst_step) > watermark {
        return None;
    }
    Some(high.saturating_add(p.burst_step).min(max))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::Policy;

    const MIB: u64 = 1 << 20;

    fn policy() -> MemoryPolicy {
        Policy::default_policy().memory
    }

    fn reading(usage_mib: u64) -> Reading {
        Reading {
            usage: usage_mib * MIB,
            limit: 1000 * MIB,
            psi: false,
            watermark: false,
            at_max: false,
        }
    }

    #[test]
    fn zones_follow_the_percentages() {
        let p = policy();
        assert_eq!(reading(100).zone(&p), Zone::Calm);
        assert_eq!(reading(800).zone(&p), Zone::Between);
        assert_eq!(reading(850).zone(&p), Zone::Pressure);
        assert_eq!(reading(950).zone(&p), Zone::Critical);
    }

    /// Persisting pressure walks throttle -> reclaim -> freeze, then waits for
    /// critical before killing, one kill per interval.
    #[test]
    fn escalates_in_order_and_kills_only_when_critical() {
        let p = policy();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = State::default();
        let mut steps = Vec::new();
        for (ms, mib) in [
            (0, 860),
            (50, 870),
            (200, 870),
            (400, 870),
            (600, 880),
            (800, 960),
        ] {
            let (d, next) = decide(&p, s, &reading(mib), at(ms));
            s = next;
            steps.push(d);
        }
        use Decision::*;
        assert_eq!(
            steps,
            [
                Escalate(Step::Throttle),
                Hold, // within step_interval
                Escalate(Step::Reclaim),
                Escalate(Step::Freeze),
                Hold, // frozen, not critical
                Escalate(Step::Kill),
            ]
        );
        let (d, _) = decide(&p, s, &reading(960), at(1000));
        assert_eq!(d, Escalate(Step::Kill), "another kill while still critical");
    }

    #[test]
    fn psi_and_the_kernel_limit_count_as_pressure() {
        let p = policy();
        let now = Instant::now();
        let psi = Reading {
            psi: true,
            ..reading(100)
        };
        assert_eq!(
            decide(&p, State::default(), &psi, now).0,
            Decision::Escalate(Step::Throttle)
        );
        let frozen = State {
            step: Some(Step::Freeze),
            last_step_at: Some(now),
            calm_since: None,
        };
        let at_max = Reading {
            at_max: true,
            ..reading(900)
        };
        let later = now + p.step_interval;
        assert_eq!(
            decide(&p, frozen, &at_max, later).0,
            Decision::Escalate(Step::Kill)
        );
    }

    /// The kernel's watermark fired at 85 % but the daemon reads 84.9 % a moment later
    /// (per-CPU charge stocks drained in between): the crossing still throttles, since
    /// the kernel will not report it again while usage stays near the mark.
    #[test]
    fn a_watermark_crossing_counts_even_when_the_reading_is_lower() {
        let p = policy();
        let now = Instant::now();
        let below = reading(849);
        assert_eq!(decide(&p, State::default(), &below, now).0, Decision::Hold);
        let crossed = Reading {
            watermark: true,
            ..below
        };
        assert_eq!(
            decide(&p, State::default(), &crossed, now).0,
            Decision::Escalate(Step::Throttle)
        );
    }

    /// Relenting needs calm for calm_for; a reading between the marks resets it.
    #[test]
    fn relents_after_a_calm_period() {
        let p = policy();
        let t0 = Instant::now();
        let s = State {
            step: Some(Step::Freeze),
            last_step_at: Some(t0),
            calm_since: None,
        };
        let (d, s) = decide(&p, s, &reading(500), t0);
        assert_eq!(d, Decision::Hold);
        assert_eq!(s.calm_since, Some(t0));
        let (d, s2) = decide(&p, s, &reading(800), t0 + Duration::from_millis(500));
        assert_eq!(
            (d, s2.calm_since),
            (Decision::Hold, None),
            "between: calm resets"
        );
        let (d, s) = decide(&p, s, &reading(500), t0 + p.calm_for);
        assert_eq!(d, Decision::Relent);
        assert_eq!(s, State::default());
        assert_eq!(
            recheck_at(&p, &s, false, t0),
            None,
            "no timer when nothing is in force"
        );
        assert_eq!(
            recheck_at(&p, &s, true, t0),
            Some(t0 + p.step_interval),
            "a latched watermark is watched every interval"
        );
    }

    #[test]
    fn critical_or_the_limit_kill_at_once() {
        let p = policy();
        let now = Instant::now();
        let (d, s) = decide(&p, State::default(), &reading(960), now);
        assert_eq!(d, Decision::Escalate(Step::Kill), "critical from calm");
        let soon = now + Duration::from_millis(10);
        assert_eq!(
            decide(&p, s, &reading(960), soon).0,
            Decision::Hold,
            "one per interval"
        );
        let at_max = Reading {
            at_max: true,
            ..reading(900)
        };
        assert_eq!(
            decide(&p, s, &at_max, soon).0,
            Decision::Escalate(Step::Kill),
            "at the limit: at once"
        );
    }

    /// Signals between steps do not postpone the re-check.
    #[test]
    fn the_recheck_is_anchored_to_the_last_step() {
        let p = policy();
        let t0 = Instant::now();
        let s = State {
            step: Some(Step::Throttle),
            last_step_at: Some(t0),
            calm_since: None,
        };
        let mid = t0 + p.step_interval / 2;
        assert_eq!(recheck_at(&p, &s, false, mid), Some(t0 + p.step_interval));
        let late = t0 + p.step_interval * 3;
        assert_eq!(recheck_at(&p, &s, true, late), Some(late + p.step_interval));
        let calm = State {
            calm_since: Some(t0),
            ..s
        };
        assert_eq!(recheck_at(&p, &calm, false, mid), Some(t0 + p.calm_for));
    }

    #[test]
    fn calm_with_nothing_in_force_does_nothing() {
        let p = policy();
        let (d, s) = decide(&p, State::default(), &reading(100), Instant::now());
        assert_eq!((d, s), (Decision::Hold, State::default()));
    }

    fn call(id: u64, priority: Priority, killed: bool) -> CallView {
        CallView {
            call_id: id,
            priority,
            killed,
        }
    }

    #[test]
    fn victims_are_the_lowest_priority_and_never_high() {
        use Priority::*;
        let calls = [
            call(4, High, false),
            call(7, Low, false),
            call(3, Low, false),
            call(5, Normal, false),
        ];
        assert_eq!(victims(&calls, High), [3, 7]);
        assert_eq!(
            kill_target(&calls, High),
            Some(7),
            "the most recent low call"
        );
        let lows_gone = [
            call(4, High, false),
            call(7, Low, true),
            call(5, Normal, false),
        ];
        assert_eq!(victims(&lows_gone, High), [5], "then normal");
        assert_eq!(
            victims(&[call(4, High, false), call(5, Low, true)], High),
            Vec::<u64>::new()
        );
        assert_eq!(kill_target(&[], High), None);
        let equals = [call(1, Normal, false), call(2, Normal, false)];
        assert_eq!(
            victims(&equals, Normal),
            Vec::<u64>::new(),
            "nobody to protect"
        );
        assert_eq!(victims(&[call(1, Low, false)], Normal), [1]);
    }

    #[test]
    fn throttle_and_reclaim_sizes() {
        let p = policy();
        assert_eq!(throttle_high(100 * MIB + 1), 101 * MIB);
        assert_eq!(throttle_high(MIB), 16 * MIB);
        assert_eq!(reclaim_amount(&p, 500 * MIB), 50 * MIB);
    }

    #[test]
    fn bursts_only_with_slack_and_never_past_max() {
        let p = policy();
        let g = 1000 * MIB;
        assert_eq!(
            burst_high(&p, false, 256 * MIB, g, 100 * MIB, g),
            Some(384 * MIB)
        );
        assert_eq!(burst_high(&p, false, 900 * MIB, g, 100 * MIB, g), Some(g));
        assert_eq!(burst_high(&p, false, g, g, 0, g), None, "already at max");
        assert_eq!(
            burst_high(&p, false, 256 * MIB, g, 800 * MIB, g),
            None,
            "no slack"
        );
        assert_eq!(
            burst_high(&p, true, 256 * MIB, g, 0, g),
            None,
            "response in force"
        );
    }
}
