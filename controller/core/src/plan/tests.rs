use super::*;
use crate::admission::{HostMemory, Verdict};

fn session(memory: u64) -> (Policy, SessionPlan) {
    let policy = Policy::default_policy();
    let plan = plan_session(
        &policy,
        &SessionRequest {
            name: "s1".into(),
            memory: Some(memory),
            ..Default::default()
        },
    )
    .unwrap();
    (policy, plan)
}

fn intent(s: &str) -> Intent {
    Intent::parse_compact(s).unwrap()
}

#[test]
fn session_names_are_strict() {
    for ok in ["a", "agent-1", "A_b.c"] {
        assert!(check_session_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "-x",
        "a/b",
        "a b",
        "x$(id)",
        &"a".repeat(65),
        "é",
    ] {
        assert!(check_session_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn session_plan_reserves_memory_for_the_runtime() {
    let (_, plan) = session(400 << 20);
    assert_eq!(plan.memory_max, 400 << 20);
    assert_eq!(plan.calls_memory_max, (400 - 128) << 20);
    assert_eq!(plan.cpu_weight, 100);
    assert!(!plan.runtime_hard_protect);
    let policy = Policy::default_policy();
    let tiny = SessionRequest {
        name: "t".into(),
        memory: Some(100 << 20),
        ..Default::default()
    };
    let err = plan_session(&policy, &tiny).unwrap_err().to_string();
    assert!(err.contains("runtime reserve"), "{err}");
    let high = SessionRequest {
        name: "h".into(),
        priority: Some(Priority::High),
        ..Default::default()
    };
    let p = plan_session(&policy, &high).unwrap();
    assert_eq!(
        (p.cpu_weight, p.memory_low, p.runtime_hard_protect),
        (400, 4 << 30, true)
    );
}

#[test]
fn declared_intent_becomes_limits() {
    let (policy, plan) = session(4 << 30);
    let a = admit(
        &policy,
        &plan,
        SessionLoad::default(),
        &intent("mem=512M,mem.max=1G,cpu=1.5,pids=64"),
        "x",
    )
    .unwrap();
    assert_eq!(a.limits.memory_high, Some(512 << 20));
    assert_eq!(a.limits.memory_max, 1 << 30);
    assert_eq!(a.limits.millicpus, Some(1500));
    assert_eq!(a.limits.pids_max, 64);
    assert!(a.clamps.is_empty(), "{:?}", a.clamps);
    assert_eq!(cpu_max_value(a.limits.millicpus), "150000 100000");
}

#[test]
fn only_a_max_means_no_memory_high() {
    let (policy, plan) = session(4 << 30);
    let a = admit(
        &policy,
        &plan,
        SessionLoad::default(),
        &intent("mem.max=64M"),
        "python bomb.py",
    )
    .unwrap();
    assert_eq!(
        (a.limits.memory_high, a.limits.memory_max),
        (None, 64 << 20)
    );
    assert!(a.clamps.is_empty());
}

#[test]
fn class_defaults_apply_and_explicit_class_wins() {
    let (policy, plan) = session(4 << 30);
    let a = admit(
        &policy,
        &plan,
        SessionLoad::default(),
        &Intent::default(),
        "cd /x && pytest -q",
    )
    .unwrap();
    assert_eq!(a.limits.class.as_deref(), Some("test"));
    assert_eq!(a.limits.memory_max, 2 << 30);
    assert!(a.suggestion.contains("single test"));
    let b = admit(
        &policy,
        &plan,
        SessionLoad::default(),
        &intent("class=vcs"),
        "pytest",
    )
    .unwrap();
    assert_eq!(b.limits.memory_max, 512 << 20);
}

#[test]
fn clamps_to_the_session_and_says_so() {
    let (policy, plan) = session(400 << 20);
    let first = admit(
        &policy,
        &plan,
        SessionLoad::default(),
        &intent("mem=150M,mem.max=300M"),
        "a",
    )
    .unwrap();
    assert_eq!(first.limits.memory_max, 272 << 20);
    assert_eq!(first.clamps[0].field, "mem.max");
    let load = SessionLoad {
        expected_mem: first.limits.memory_expected,
        running: 1,
    };
    let second = admit(&policy, &plan, load, &intent("mem=150M,mem.max=300M"), "a").unwrap();
    assert_eq!(second.limits.memory_expected, 122 << 20);
    let note = second.clamps.iter().find(|c| c.field == "mem").unwrap();
    assert!(note.reason.contains("1 running call"), "{note:?}");
    let full = SessionLoad {
        expected_mem: 270 << 20,
        running: 1,
    };
    let err = admit(&policy, &plan, full, &intent("mem=100M"), "a")
        .unwrap_err()
        .to_string();
    assert!(err.contains("retry when a call finishes"), "{err}");
}

#[test]
fn reject_policy_refuses_instead_of_clamping() {
    let (mut policy, plan) = session(400 << 20);
    policy.session.admission = Admission::Reject;
    let load = SessionLoad {
        expected_mem: 200 << 20,
        running: 1,
    };
    assert!(admit(&policy, &plan, load, &intent("mem=100M"), "a").is_err());
}

#[test]
fn defaults_are_fitted_silently() {
    let (policy, plan) = session(400 << 20);
    let a = admit(
        &policy,
        &plan,
        SessionLoad::default(),
        &intent("timeout=2s"),
        "python x.py",
    )
    .unwrap();
    assert_eq!(
        a.limits.memory_max,
        272 << 20,
        "the default 1G ceiling still fits the session"
    );
    assert!(a.clamps.is_empty(), "{:?}", a.clamps);
}

#[test]
fn caps_and_priority_are_clamped() {
    let (policy, plan) = session(4 << 30);
    let a = admit(
        &policy,
        &plan,
        SessionLoad::default(),
        &intent("mem.max=64G,pids=100000,timeout=5d,priority=high"),
        "a",
    )
    .unwrap();
    let fields: Vec<&str> = a.clamps.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(
        fields,
        ["mem.max", "mem.max", "pids", "pids", "priority", "timeout"]
    );
    assert_eq!(a.limits.priority, Priority::Normal);
    assert_eq!(a.limits.pids_max, 4096);
    assert_eq!(a.limits.timeout(), Duration::from_secs(7200));
}

const MIB: u64 = 1 << 20;

fn ctx(peaks: u64, host_percent: u8) -> AdmitContext {
    AdmitContext {
        class_peaks: (0..peaks).map(|i| (281 + i % 20) * MIB).collect(),
        session_peaks: vec![],
        host: Some(HostMemory {
            used_percent: host_percent,
            pressure_at: 85,
            protected: Priority::High,
        }),
        queueing: true,
        waited: Duration::ZERO,
    }
}

#[test]
fn a_call_declaring_no_memory_expects_its_class_p95_from_history() {
    let (policy, plan) = session(1 << 30);
    let test = |c: &AdmitContext| {
        admit_with(
            &policy,
            &plan,
            SessionLoad::default(),
            &Intent::default(),
            "pytest -q",
            c,
        )
        .unwrap()
    };
    let a = test(&ctx(20, 10));
    assert_eq!(a.limits.class.as_deref(), Some("test"));
    assert_eq!(a.limits.memory_expected, 299 * MIB);
    assert_eq!(a.limits.memory_high, Some(299 * MIB));
    let est = a.admission.estimate.unwrap();
    assert_eq!(
        (est.source, est.samples),
        (crate::admission::SizeSource::History, 20)
    );
    assert_eq!(a.admission.decision.verdict, Verdict::Admit);
    // 19 records: the class default (policies/default.toml: test mem=512M).
    let few = test(&ctx(19, 10));
    assert_eq!(
        few.admission.estimate.unwrap().source,
        crate::admission::SizeSource::Default
    );
    assert_eq!(few.limits.memory_expected, 512 * MIB);
    // A declared mem wins over history.
    let declared = admit_with(
        &policy,
        &plan,
        SessionLoad::default(),
        &intent("mem=64M"),
        "pytest",
        &ctx(20, 10),
    )
    .unwrap();
    assert_eq!(declared.limits.memory_expected, 64 * MIB);
}

#[test]
fn a_call_that_cannot_fit_is_queued_with_its_inputs() {
    let (policy, plan) = session(1 << 30);
    let load = SessionLoad {
        expected_mem: 700 * MIB,
        running: 1,
    };
    let err = admit_with(
        &policy,
        &plan,
        load,
        &Intent::default(),
        "pytest",
        &ctx(20, 10),
    )
    .unwrap_err();
    let PlanError::Queued(note) = err else {
        panic!("{err:?}")
    };
    assert_eq!(note.inputs.expected, 299 * MIB);
    assert_eq!(note.inputs.remaining, (896 - 700) * MIB);
    assert_eq!(note.inputs.queue_for_ms, 30_000);
    assert!(
        note.decision.reason.contains("196 MiB left"),
        "{}",
        note.decision.reason
    );
    // After queue_for: rejected, saying it waited.
    let late = AdmitContext {
        waited: Duration::from_secs(30),
        ..ctx(20, 10)
    };
    let err = admit_with(&policy, &plan, load, &Intent::default(), "pytest", &late)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("waited 30s in the queue: "), "{err}");
    // Without a queue (replay, tests): clamped as before.
    let a = admit(&policy, &plan, load, &Intent::default(), "pytest").unwrap();
    assert_eq!(a.admission.decision.verdict, Verdict::Clamp);
    assert_eq!(a.limits.memory_expected, 196 * MIB);
}

#[test]
fn host_pressure_holds_calls_below_the_protected_priority_only() {
    let (policy, plan) = session(1 << 30);
    let hot = ctx(20, 90);
    let err = admit_with(
        &policy,
        &plan,
        SessionLoad::default(),
        &Intent::default(),
        "pytest",
        &hot,
    )
    .unwrap_err();
    assert!(err.to_string().contains("host memory at 90%"), "{err}");
    let top = AdmitContext {
        host: hot.host.map(|h| HostMemory {
            protected: Priority::Normal,
            ..h
        }),
        ..hot.clone()
    };
    let a = admit_with(
        &policy,
        &plan,
        SessionLoad::default(),
        &Intent::default(),
        "pytest",
        &top,
    )
    .unwrap();
    assert_eq!(a.admission.inputs.host, None);
    let mut off = policy.clone();
    off.admission.enabled = false;
    let a = admit_with(
        &off,
        &plan,
        SessionLoad::default(),
        &Intent::default(),
        "pytest",
        &hot,
    )
    .unwrap();
    assert_eq!(
        a.admission.estimate.unwrap().source,
        crate::admission::SizeSource::Default
    );
}
