//! The simulator on small made-up runs: limits, bursts, the response, phases, speed.

use super::*;
use crate::intent::Intent;
use crate::replay::trace::TraceCall;

const MB: u64 = 1_000_000;
const GIB: u64 = 1 << 30;

/// A run from its runtime's memory per second and its calls (start, command,
/// memory per second).
pub(crate) fn run(name: &str, runtime: &[u64], calls: &[(usize, &str, &[u64])]) -> Run {
    let mut memory = runtime.to_vec();
    let calls = calls
        .iter()
        .map(|&(start, command, usage)| {
            for (i, u) in usage.iter().enumerate() {
                memory[start + i] += u;
            }
            TraceCall {
                start,
                end: start + usage.len(),
                command: command.to_string(),
                intent: Intent::default(),
                usage: usage.to_vec(),
            }
        })
        .collect();
    Run {
        name: name.to_string(),
        memory,
        runtime: runtime.to_vec(),
        calls,
    }
}

fn one(priority: Priority, run: usize) -> SessionSpec {
    SessionSpec {
        run,
        priority,
        phase: 0,
    }
}

/// A call that declares nothing and matches no class runs with the policy's
/// `call.intent` (mem.max 1G): 1.5 GB is killed by its own limit although the host
/// had room, which the report says.
#[test]
fn a_call_above_its_class_limit_is_killed_and_flagged() {
    let r = run(
        "r",
        &[200 * MB; 4],
        &[(1, "python big.py", &[500 * MB, 1500 * MB])],
    );
    let policy = Policy::default_policy();
    let rep = simulate(&policy, &[r], &[one(Priority::Normal, 0)], 16 * GIB, 4).expect("runs");
    assert_eq!(rep.kills.call_limit, 1);
    assert_eq!(rep.kills.total(), 1);
    let k = &rep.killed[0];
    assert_eq!(
        (k.second, k.cause, k.fits_host),
        (2, KillCause::CallLimit, true)
    );
    assert_eq!((k.memory_max, k.recorded_peak), (GIB, 1500 * MB));
    let s = &rep.sessions[0];
    assert_eq!((s.calls, s.plays), (1, 1));
    assert_eq!(
        s.burst, 1,
        "500 MB crossed its 256 MiB memory.high with slack"
    );
    assert_eq!(s.peak_used, 700 * MB, "the killed call holds nothing");
    assert_eq!(s.static_reserve, 1700 * MB);
}

/// The same call as a test (`pytest`, mem.max 2G) fits; on a host without slack for
/// a burst it is throttled instead.
#[test]
fn bursts_need_slack_else_the_call_is_throttled() {
    let r = run("r", &[200 * MB; 3], &[(1, "pytest -x", &[1500 * MB])]);
    let policy = Policy::default_policy();
    let roomy = simulate(
        &policy,
        std::slice::from_ref(&r),
        &[one(Priority::Normal, 0)],
        16 * GIB,
        3,
    )
    .expect("runs");
    assert_eq!(roomy.kills.total(), 0);
    assert_eq!(
        (roomy.sessions[0].burst, roomy.sessions[0].throttled),
        (1, 0)
    );
    let tight = simulate(&policy, &[r], &[one(Priority::Normal, 0)], 1800 * MB, 3).expect("runs");
    assert_eq!(tight.sessions[0].throttled, 1);
    assert_eq!(
        tight.kills.total(),
        0,
        "1.7 GB of 1.8 GB is below critical_at"
    );
}

/// Above `critical_at` with a low-priority call running beside a normal session,
/// the response kills the low call; with equal priorities it kills nobody and the
/// kernel's OOM killer takes the largest call once the host is over its limit.
#[test]
fn the_response_kills_low_priority_first_and_equals_meet_the_kernel() {
    let big = run("big", &[100 * MB; 3], &[(1, "pytest", &[900 * MB])]);
    let small = run("small", &[100 * MB; 3], &[(1, "pytest", &[850 * MB])]);
    let runs = [big, small];
    let policy = Policy::default_policy();
    let host = 2000 * MB;
    let mixed = [one(Priority::Normal, 0), one(Priority::Low, 1)];
    let rep = simulate(&policy, &runs, &mixed, host, 3).expect("runs");
    assert_eq!(rep.kills.response, 1, "{:?}", rep.killed);
    assert_eq!(rep.killed[0].run, "small");
    assert_eq!(rep.kills.host_oom, 0);
    assert!(rep.steps.contains(&(Step::Kill, 1)), "{:?}", rep.steps);
    let equal = [one(Priority::Normal, 0), one(Priority::Normal, 1)];
    let rep = simulate(&policy, &runs, &equal, host, 3).expect("runs");
    assert_eq!(rep.kills.response, 0);
    assert_eq!(rep.kills.host_oom, 0, "1.95 GB fits 2 GB: nobody dies");
    let rep = simulate(&policy, &runs, &equal, 1900 * MB, 3).expect("runs");
    assert_eq!((rep.kills.host_oom, rep.killed[0].run.as_str()), (1, "big"));
}

/// Above `critical_at` the response kills one low-priority call, then one more per
/// `step_interval` (200 ms) while usage stays there. Played 50 times faster, a
/// recorded second lasts 20 ms, so the second kill comes 10 recorded seconds after
/// the first instead of within the same second.
#[test]
fn a_compressed_replay_spreads_the_response_over_recorded_seconds() {
    let big = run("big", &[0; 20], &[(1, "pytest", &[1850 * MB; 19])]);
    let small = run("small", &[0; 20], &[(1, "pytest", &[45 * MB; 19])]);
    let runs = [big, small];
    let specs = [
        one(Priority::Normal, 0),
        one(Priority::Low, 1),
        one(Priority::Low, 1),
        one(Priority::Low, 1),
    ];
    let policy = Policy::default_policy();
    let kills = |speed| {
        let rep = simulate_at(&policy, &runs, &specs, 2000 * MB, 20, speed).expect("runs");
        assert!(
            rep.killed.iter().all(|k| k.run == "small"),
            "{:?}",
            rep.killed
        );
        rep.killed.iter().map(|k| k.second).collect::<Vec<_>>()
    };
    assert_eq!(kills(1), [1, 1], "1,985 MB, then 1,940 MB, then 1,895 MB");
    assert_eq!(kills(50), [1, 11]);
}

/// Sessions loop their run from a golden-ratio phase; a call in progress at the
/// phase starts at once.
#[test]
fn sessions_loop_from_spread_phases() {
    let r = run("r", &[10 * MB; 10], &[(0, "ls", &[MB; 5])]);
    let specs = sessions(
        std::slice::from_ref(&r),
        3,
        &[Priority::Low, Priority::High],
    );
    let phases: Vec<usize> = specs.iter().map(|s| s.phase).collect();
    assert_eq!(phases, [0, 6, 2]);
    let prios: Vec<Priority> = specs.iter().map(|s| s.priority).collect();
    assert_eq!(prios, [Priority::Low, Priority::High, Priority::Low]);
    let rep = simulate(&Policy::default_policy(), &[r], &specs, 16 * GIB, 25).expect("runs");
    let plays: Vec<u32> = rep.sessions.iter().map(|s| s.plays).collect();
    assert_eq!(plays, [3, 4, 3], "phase 6 wraps at seconds 4, 14 and 24");
    let calls: Vec<u32> = rep.sessions.iter().map(|s| s.calls).collect();
    assert_eq!(calls, [3, 3, 3], "phase 2 starts inside the call");
}

/// Between `pressure_at` and `critical_at` the response holds the low call instead of
/// killing it: its session's recording waits while the call would grow past its
/// lowered `memory.high`, and goes on once the pressure is gone. Replayed as recorded,
/// the low call's growth would have reached `critical_at` and been killed.
#[test]
fn a_call_the_response_holds_waits_instead_of_growing() {
    let big = run("big", &[0; 30], &[(0, "pytest", &[800 * MB; 10])]);
    let low = run(
        "low",
        &[0; 30],
        &[(1, "pytest", &[100 * MB, 150 * MB, 200 * MB])],
    );
    let specs = [one(Priority::Normal, 0), one(Priority::Low, 1)];
    let rep = simulate(
        &Policy::default_policy(),
        &[big, low],
        &specs,
        1000 * MB,
        30,
    )
    .expect("runs");
    assert_eq!(rep.kills.total(), 0, "{:?}", rep.killed);
    let s = &rep.sessions[1];
    assert_eq!((s.calls, s.response_throttled, s.frozen), (1, 1, 1));
    assert!((10..20).contains(&s.waited), "waited {} s", s.waited);
    assert_eq!(
        s.peak_used,
        200 * MB,
        "the call went on to its recorded peak"
    );
    assert_eq!(
        rep.sessions[0].waited, 0,
        "the normal session is never held"
    );
}
