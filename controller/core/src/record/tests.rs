//! Tests of outcomes, exit decoding, records as stored, and feedback.

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
        leftovers_killed: false,
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

/// A call OOM-killed with a peak of 40 MiB, below its 64 MiB mem.max ([`limits`]).
fn oom_acc(own_max: u64, shared_max: u64) -> Accounting {
    Accounting {
        memory_peak: Some(40 << 20),
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
    let swarm_left = Enforced {
        leftovers_killed: true,
        ..Enforced::default()
    };
    assert_eq!(
        outcome(&ok, &forkfail, swarm_left),
        Outcome::PidsLimited,
        "a fork bomb's shell exits 0 and leaves its forking processes"
    );
    assert_eq!(
        outcome(&ok, &quiet, swarm_left),
        Outcome::Ok,
        "a background process left behind is no limit"
    );
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
            leftovers_killed: false,
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
    assert_eq!(f.peak.as_deref(), Some("40 MiB"));
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

/// A call alone under a calls ceiling equal to its mem.max may hit the ceiling first
/// (the parent also carries the child cgroup's kernel memory): having grown to its own
/// limit, it is told about its own size, not about other calls.
#[test]
fn a_call_that_grew_to_its_own_limit_is_told_its_own_limit() {
    for peak in [64 << 20, (64 << 20) - (1 << 20)] {
        let acc = Accounting {
            memory_peak: Some(peak),
            ..oom_acc(0, 1)
        };
        let f = feedback(1, Outcome::OomKilled, &limits(), &acc, ceil(64 << 20), "x").unwrap();
        assert_eq!(f.limit, "mem.max", "peak {peak}");
        assert!(f.suggestion.contains("mem.max=128M"), "{}", f.suggestion);
    }
    // Well below its limit: the ceiling, shared with other calls, stopped it.
    let acc = Accounting {
        memory_peak: Some((64 << 20) - (2 << 20)),
        ..oom_acc(0, 1)
    };
    let f = feedback(1, Outcome::OomKilled, &limits(), &acc, ceil(64 << 20), "x").unwrap();
    assert_eq!(f.limit, "session calls ceiling");
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
        session: 512 << 20,
        host: 1100 << 20,
    }
}

#[test]
fn a_kill_at_the_session_budget_names_the_session() {
    let acc = Accounting {
        session_events: MemoryEvents {
            max: 3,
            ..Default::default()
        },
        ..oom_acc(0, 0)
    };
    let f = feedback(5, Outcome::OomKilled, &limits(), &acc, ceil(384 << 20), "x").unwrap();
    assert_eq!(
        (f.limit.as_str(), f.limit_value.as_str()),
        ("session memory", "512 MiB")
    );
    assert!(
        f.message
            .contains("its session (the agent runtime and its tool calls together)"),
        "{}",
        f.message
    );
    assert!(f.suggestion.contains("--memory SIZE"), "{}", f.suggestion);
    // Its own limit, or the calls' ceiling, hit as well is the nearer cause.
    let own = Accounting {
        session_events: acc.session_events,
        ..oom_acc(1, 0)
    };
    let f = feedback(5, Outcome::OomKilled, &limits(), &own, ceil(384 << 20), "x").unwrap();
    assert_eq!(f.limit, "mem.max");
    let shared = Accounting {
        session_events: acc.session_events,
        ..oom_acc(0, 1)
    };
    let f = feedback(
        5,
        Outcome::OomKilled,
        &limits(),
        &shared,
        ceil(384 << 20),
        "x",
    )
    .unwrap();
    assert_eq!(f.limit, "session calls ceiling");
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

#[test]
fn outcome_names_round_trip_as_serde_writes_them() {
    for o in Outcome::ALL {
        assert_eq!(Outcome::from_name(o.as_str()), Some(o));
        assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
    }
    assert_eq!(Outcome::from_name("OK"), None);
    assert_eq!(Outcome::from_name("oom"), None);
}
