//! The agent runtime under an OOM whose domain contains it. The runtime grows past its
//! reserve (`session.runtime_reserve`, docs/POLICY.md) while tool calls fill `calls/`,
//! until a limit above both is hit: the session's own `memory.max`, or the `memory.max`
//! of a parent of agentcg's root (a systemd slice, a container). The kernel's OOM killer
//! then chooses among the runtime and the tools; the runtime must survive and a call be
//! the victim.
//!
//! Sizes: the runtime holds 256 MiB (twice the 128 MiB reserve) at the oom_score_adj
//! agentcgd gives it when it attaches it (-900); two calls (tools at their priority's
//! oom_score_adj: 500 normal, 0 high) grow to 140 MiB each against a 512 MiB limit. The
//! kernel ranks candidates by rss plus oom_score_adj/1000 of the domain's limit
//! (oom_badness, mm/oom_kill.c). Without the tools' and the runtime's oom_score_adj the
//! runtime, the largest process, is the victim: the tests then fail (checked with the
//! policy's normal oom_score_adj set to 0, and with a high-priority session before
//! agentcgd set the runtime's). `memory.min`/`memory.low` of runtime/ play no part in
//! that choice (they steer reclaim, and anonymous memory without swap cannot be
//! reclaimed): with both set to 0 the tests still pass.

use std::path::Path;
use std::time::Instant;

use agentcg_vmtests::memory::memory_event;
use agentcg_vmtests::{Daemon, GrowingRuntime, TestCgroup, fresh_record, read_record};

const MIB: u64 = 1 << 20;
/// The limit that is hit: the session's memory.max, or the parent's.
const LIMIT_MIB: u64 = 512;
const RUNTIME_MIB: u64 = 256;
const CALL_MIB: u64 = 140;

/// A counter of a cgroup's `memory.events.local` (events of this cgroup alone).
fn local_event(cgroup: &Path, key: &str) -> u64 {
    memory_event(cgroup, "memory.events.local", key)
}

/// The runtime of `session` grows to RUNTIME_MIB, then two calls grow to CALL_MIB each,
/// over `domain`'s memory.max. Asserts that the kernel's OOM killer struck in `domain`
/// (not in calls/), took a call and spared the runtime, and that the victim's feedback
/// names `limit` (the session's budget, or the host's memory above it).
fn runtime_survives_an_oom_of(d: &Daemon, session: &str, domain: &Path, limit: &str) {
    let session_dir = d.root.join(format!("session-{session}"));
    let mut rt = GrowingRuntime::start(RUNTIME_MIB);
    let started = Instant::now();
    rt.attach_and_grow(d, session);
    let adj = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", rt.pid()))
        .expect("the runtime's oom_score_adj");
    assert_eq!(
        adj.trim(),
        "-900",
        "agentcgd protects the runtime it attached"
    );
    println!(
        "runtime grew to {RUNTIME_MIB} MiB in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let oom_before = local_event(domain, "oom");
    let calls: Vec<_> = (1..=2)
        .map(|n| {
            let record = fresh_record(&format!("rtoom-{session}-{n}"));
            let child = d.spawn_memhog(
                &record,
                session,
                "mem=150M,mem.max=200M",
                &[&CALL_MIB.to_string(), "2000", "16"],
            );
            (child, record)
        })
        .collect();
    let records: Vec<serde_json::Value> = calls
        .into_iter()
        .map(|(child, record)| {
            let out = child.wait_with_output().expect("wait agentcg run");
            println!(
                "call: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            read_record(&record)
        })
        .collect();
    let outcomes: Vec<&str> = records
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or("?"))
        .collect();
    println!(
        "after {:.1} s: calls {outcomes:?}, feedback {:?}; {} oom in {}",
        started.elapsed().as_secs_f64(),
        records
            .iter()
            .map(|r| r["feedback"]["limit"].clone())
            .collect::<Vec<_>>(),
        local_event(domain, "oom") - oom_before,
        domain.display()
    );
    if let Some(end) = rt.ended() {
        panic!(
            "the runtime ({RUNTIME_MIB} MiB, past its reserve) was killed ({end}) by an OOM in \
             {}; the calls ended {outcomes:?}",
            domain.display()
        );
    }
    assert!(
        local_event(domain, "oom") > oom_before,
        "{} never hit its memory.max: the scenario did not put the runtime at risk",
        domain.display()
    );
    assert_eq!(
        local_event(&session_dir.join("calls"), "oom"),
        0,
        "the OOM struck at calls/, whose domain does not hold the runtime"
    );
    assert!(
        outcomes.contains(&"oom_killed"),
        "no call was the victim: {records:?}"
    );
    for r in &records {
        assert!(r["outcome"] == "oom_killed" || r["outcome"] == "ok", "{r}");
        if r["outcome"] == "oom_killed" {
            assert_eq!(r["feedback"]["limit"], limit, "the victim's feedback: {r}");
        }
    }
    let procs =
        std::fs::read_to_string(session_dir.join("runtime/cgroup.procs")).expect("runtime procs");
    assert!(
        procs.lines().any(|p| p == rt.pid().to_string()),
        "the runtime left runtime/: {procs}"
    );
}

/// The runtime of a `priority` session survives an OOM of the session itself.
fn runtime_survives_an_oom_of_its(priority: &str) {
    let d = Daemon::start(&format!("rtoom-{priority}"));
    d.create_session(&[
        "s",
        "--memory",
        &format!("{LIMIT_MIB}M"),
        "--priority",
        priority,
    ]);
    runtime_survives_an_oom_of(&d, "s", &d.root.join("session-s"), "session memory");
}

/// The session's memory.max (512 MiB: 128 MiB reserve, 384 MiB calls/ ceiling) is hit
/// by the runtime (256 MiB) and two calls (2 x 140 MiB, within the calls/ ceiling).
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn the_runtime_survives_an_oom_of_its_session() {
    runtime_survives_an_oom_of_its("normal");
}

/// The same in a high-priority session, whose tools start at oom_score_adj 0 like any
/// process: only the runtime's own oom_score_adj (-900, written by agentcgd when it
/// attaches the runtime) makes a tool the victim.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn the_runtime_survives_an_oom_of_its_high_priority_session() {
    runtime_survives_an_oom_of_its("high");
}

/// agentcg's root inside a parent with memory.max 512 MiB (as under a systemd slice or
/// in a container): the parent's OOM domain holds the runtime and the calls of a 1 GiB
/// session that is itself far from its limits.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn the_runtime_survives_an_oom_of_a_parent_of_the_root() {
    let parent = TestCgroup::root("rtoom", "parent");
    parent.write("cgroup.subtree_control", "+cpu +memory +pids");
    parent.write("memory.max", &(LIMIT_MIB * MIB).to_string());
    let d = Daemon::start_at(parent.path.join("agentcg-rtoom-host"), "rtoom-host", &[]);
    d.create_session(&["s", "--memory", "1G"]);
    runtime_survives_an_oom_of(&d, "s", &parent.path, "host memory");
}
