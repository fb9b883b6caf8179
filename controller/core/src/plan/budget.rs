//! What a reloaded policy does to existing sessions (docs/API.md, "Policy"): a session
//! created without its own memory, cpus or pids takes the policy's, so its plan is made
//! again from its request under the new policy; where the limits differ they are
//! re-applied, unless the session already uses more than the new limits allow, in which
//! case it keeps its budget and the answer says why. Pure decisions; the controller
//! writes the files.

use serde::Serialize;

use super::SessionPlan;
use crate::intent::format_millicpus;
use crate::units::HumanSize;

/// A session's budget under a new policy, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetChange {
    pub session: String,
    /// The limits that change (`memory.max 4 GiB -> 6 GiB`).
    pub changes: Vec<String>,
    /// Why the new budget is not applied (the session keeps its own), if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_because: Option<String>,
}

/// What a session uses now, against which a smaller budget is judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// memory.current of the session.
    pub memory: u64,
    /// memory.current of its calls/.
    pub calls_memory: u64,
    /// pids.current of the session.
    pub pids: u64,
}

/// The limits that differ between `from` and `to`, in words; empty when none do.
pub fn words(from: &SessionPlan, to: &SessionPlan) -> Vec<String> {
    let size = |b: u64| HumanSize(b).to_string();
    let cpus = |m: Option<u32>| m.map_or_else(|| "max".to_string(), format_millicpus);
    let mut out = Vec::new();
    let mut say = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what} {a} -> {b}"));
        }
    };
    say("memory.max", size(from.memory_max), size(to.memory_max));
    say("memory.low", size(from.memory_low), size(to.memory_low));
    say(
        "cpu.weight",
        from.cpu_weight.to_string(),
        to.cpu_weight.to_string(),
    );
    say("cpu.max", cpus(from.millicpus), cpus(to.millicpus));
    say(
        "pids.max",
        from.pids_max.to_string(),
        to.pids_max.to_string(),
    );
    say(
        "runtime reserve",
        size(from.runtime_reserve),
        size(to.runtime_reserve),
    );
    say(
        "calls/ memory.max",
        size(from.calls_memory_max),
        size(to.calls_memory_max),
    );
    out
}

/// Why `to` cannot be applied to a session using `usage`: a limit below what it uses
/// would make the kernel reclaim or OOM-kill inside the session (its agent included)
/// or refuse its forks at once. `None` when it fits.
pub fn refusal(to: &SessionPlan, usage: Usage) -> Option<String> {
    if usage.memory > to.memory_max {
        return Some(format!(
            "it uses {} of memory, above the new memory.max {}",
            HumanSize(usage.memory),
            HumanSize(to.memory_max)
        ));
    }
    if usage.calls_memory > to.calls_memory_max {
        return Some(format!(
            "its calls use {}, above the new calls/ memory.max {}",
            HumanSize(usage.calls_memory),
            HumanSize(to.calls_memory_max)
        ));
    }
    if usage.pids > u64::from(to.pids_max) {
        return Some(format!(
            "it runs {} tasks, above the new pids.max {}",
            usage.pids, to.pids_max
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{SessionRequest, plan_session};
    use crate::policy::Policy;

    const GIB: u64 = 1 << 30;

    fn plan(policy: &Policy) -> SessionPlan {
        let req = SessionRequest {
            name: "a".into(),
            ..SessionRequest::default()
        };
        plan_session(policy, &req).unwrap()
    }

    #[test]
    fn the_limits_that_differ_are_named() {
        let old = Policy::default_policy();
        let mut new = old.clone();
        new.session.memory = 6 * GIB;
        new.session.pids = 2048;
        let said = words(&plan(&old), &plan(&new));
        assert_eq!(
            said,
            [
                "memory.max 4 GiB -> 6 GiB",
                "pids.max 4096 -> 2048",
                "calls/ memory.max 3.9 GiB -> 5.9 GiB",
            ]
        );
        assert!(words(&plan(&old), &plan(&old)).is_empty());
    }

    #[test]
    fn a_budget_below_what_the_session_uses_is_refused() {
        let mut p = Policy::default_policy();
        p.session.memory = GIB;
        let to = plan(&p);
        let fits = Usage {
            memory: GIB / 2,
            calls_memory: GIB / 4,
            pids: 10,
        };
        assert_eq!(refusal(&to, fits), None);
        let why = refusal(
            &to,
            Usage {
                memory: 2 * GIB,
                ..fits
            },
        )
        .unwrap();
        assert!(why.contains("above the new memory.max 1 GiB"), "{why}");
        let why = refusal(&to, Usage { pids: 5000, ..fits }).unwrap();
        assert!(why.contains("5000 tasks"), "{why}");
        let why = refusal(
            &to,
            Usage {
                calls_memory: GIB,
                ..fits
            },
        )
        .unwrap();
        assert!(why.contains("calls/ memory.max"), "{why}");
    }
}
