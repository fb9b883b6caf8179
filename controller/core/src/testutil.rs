//! Values shared by the unit tests of several modules.

use crate::intent::{Intent, Priority};
use crate::plan::CallLimits;
use crate::record::{Accounting, CallRecord, ExitInfo, Outcome};

pub fn limits() -> CallLimits {
    CallLimits {
        memory_expected: 64 << 20,
        memory_high: Some(64 << 20),
        memory_max: 128 << 20,
        cpu_weight: 100,
        millicpus: None,
        pids_max: 64,
        timeout_ms: 60_000,
        cpu_budget_ms: None,
        priority: Priority::Normal,
        class: None,
        oom_score_adj: 0,
    }
}

pub fn record(call_id: u64) -> CallRecord {
    CallRecord {
        call_id,
        session: "s".into(),
        tool_use_id: None,
        command: vec!["true".into()],
        intent: Intent::default(),
        limits: limits(),
        clamps: vec![],
        cgroup: "/x".into(),
        started_unix_ms: 1,
        duration_ms: 1,
        exit: ExitInfo {
            code: Some(0),
            signal: None,
        },
        outcome: Outcome::Ok,
        accounting: Accounting::default(),
        leftover_killed: 0,
        processes: None,
        feedback: None,
        memory_actions: vec![],
        admission: None,
    }
}
