//! Kernel tests of `agentcg_sched`, the sched_ext scheduler (`agentcg_bpf::Scheduler`),
//! in the 7.3.4 VM: load/attach/detach, hierarchical weights, cpu.max, runtime-class
//! wake-up latency, CPU budgets, MEM_PRESSURE (policy flag and the shared `mem_state`),
//! 1,000 short-lived cgroups, forced exits,
//! and the partial-mode measurement behind the choice of full mode.
//!
//! Run as root in the guest with `--include-ignored --test-threads=1`. Each test makes
//! its cgroups under `/sys/fs/cgroup/agentcg-schedtest-<pid>-<name>` and removes them
//! on drop (killing what runs there), also when it fails. CPU shares are measured from
//! `cpu.stat` `usage_usec` deltas; the figures are printed for the CI log. The VM has 2
//! CPUs under software emulation, so durations are long enough to average out noise and
//! the assertions are on ratios.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use agentcg_bpf::{
    CgroupPolicy, ExitKind, MemStateMap, MemWatch, MemWatchSpec, SCHED_EXIT_CODE_REQUESTED,
    SchedClass, SchedFlags, SchedOptions, Scheduler,
};
use agentcg_core::spawn::{spawn_in_cgroup, wait};
use agentcg_vmtests::TestCgroup;

/// Allowed absolute error of a CPU share (acceptance: ±5 %).
const SHARE_TOLERANCE: f64 = 0.05;

fn load(opts: &SchedOptions) -> Scheduler {
    let started = Instant::now();
    let s = Scheduler::load(opts).unwrap_or_else(|e| panic!("Scheduler::load: {e}"));
    println!(
        "Scheduler::load took {:?} ({:?}), registered as {}",
        started.elapsed(),
        s.timings(),
        s.ops_name()
    );
    assert!(
        s.is_attached(),
        "not attached right after load: {:?}",
        s.exit_info()
    );
    s
}

/// docs/ARCHITECTURE.md#bpf-pitfalls, pitfall 6: after an ejection the kernel's scheduler
/// takes over and numbers look fine.
fn assert_still_attached(s: &Scheduler) {
    assert_eq!(s.exit_info(), None, "the scheduler exited");
    assert!(s.is_attached(), "the scheduler is no longer attached");
    println!("still attached; stats {:?}", s.stats().expect("stats"));
}

fn policy(class: SchedClass) -> CgroupPolicy {
    CgroupPolicy {
        class,
        ..CgroupPolicy::default()
    }
}

/// Writes `marker` into the kernel log (/dev/kmsg), so that what follows it can be told
/// apart from older lines: the log is a ring buffer, and counting its lines before and
/// after a test miscounts once the oldest ones rotate out.
fn mark_kernel_log(marker: &str) {
    fs::write("/dev/kmsg", format!("{marker}\n")).expect("write /dev/kmsg");
}

/// Lines of the kernel log after `marker` that signal a kernel bug.
fn kernel_warnings_after(marker: &str) -> Vec<String> {
    let out = std::process::Command::new("dmesg").output().expect("dmesg");
    warnings_after(&String::from_utf8_lossy(&out.stdout), marker)
}

fn warnings_after(log: &str, marker: &str) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines
        .iter()
        .rposition(|l| l.contains(marker))
        .map_or(0, |i| i + 1);
    lines[from..]
        .iter()
        .filter(|l| l.contains("BUG:") || l.contains("WARNING:") || l.contains("Call Trace"))
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn only_warnings_after_the_marker_count() {
    let log = "[1.0] Call Trace:\n[2.0] agentcg-test: m\n[3.0] ok\n[4.0] WARNING: x\n";
    assert_eq!(warnings_after(log, "agentcg-test: m"), ["[4.0] WARNING: x"]);
    assert_eq!(warnings_after(log, "agentcg-test: gone").len(), 2);
}

/// Runs for `warmup`, then measures each cgroup's CPU time over `window`; returns the
/// shares of the total and the total in CPUs.
fn measure_shares(cgs: &[&TestCgroup], warmup: Duration, window: Duration) -> (Vec<f64>, f64) {
    std::thread::sleep(warmup);
    let before: Vec<u64> = cgs.iter().map(|c| c.usage_usec()).collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let after: Vec<u64> = cgs.iter().map(|c| c.usage_usec()).collect();
    let elapsed = t0.elapsed().as_secs_f64();
    let deltas: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) as f64)
        .collect();
    let total: f64 = deltas.iter().sum();
    let shares = deltas.iter().map(|d| d / total.max(1.0)).collect();
    (shares, total / 1e6 / elapsed)
}

fn assert_shares(label: &str, shares: &[f64], ideal: &[f64]) {
    let err = shares
        .iter()
        .zip(ideal)
        .map(|(s, i)| (s - i).abs())
        .fold(0.0, f64::max);
    println!(
        "{label}: shares {} (ideal {}), max abs error {err:.3}",
        fmt_list(shares),
        fmt_list(ideal)
    );
    assert!(
        err <= SHARE_TOLERANCE,
        "{label}: {shares:?} vs ideal {ideal:?}"
    );
}

fn fmt_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn load_attach_detach_reload_cleanly() {
    let marker = format!(
        "agentcg-test: load_attach_detach_reload_cleanly {}",
        std::process::id()
    );
    mark_kernel_log(&marker);
    for round in 0..3 {
        let s = load(&SchedOptions::default());
        let nodes = s.node_entries();
        let stats = s.stats().expect("stats");
        println!("round {round}: {nodes} cgroup nodes, {stats:?}");
        assert!(nodes >= 1, "the root cgroup has a node");
        std::thread::sleep(Duration::from_secs(1));
        assert_still_attached(&s);
        s.detach();
        assert!(!s.is_attached());
        drop(s);
        let state = fs::read_to_string("/sys/kernel/sched_ext/state").unwrap_or_default();
        assert_eq!(state.trim(), "disabled", "detach left sched_ext {state}");
    }
    let warnings = kernel_warnings_after(&marker);
    assert!(warnings.is_empty(), "kernel warnings: {warnings:#?}");
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn weights_100_200_400_share_the_cpu_1_2_4() {
    let s = load(&SchedOptions::default());
    let root = TestCgroup::root("schedtest", "weights");
    let calls: Vec<TestCgroup> = [100, 200, 400]
        .iter()
        .map(|w| {
            let c = root.child(&format!("call-w{w}"));
            c.write("cpu.weight", &w.to_string());
            s.set_cgroup(c.id(), policy(SchedClass::Normal))
                .expect("set_cgroup");
            c
        })
        .collect();
    for c in &calls {
        c.spin(2);
    }
    let refs: Vec<&TestCgroup> = calls.iter().collect();
    let (shares, cpus) = measure_shares(&refs, Duration::from_secs(3), Duration::from_secs(20));
    println!("flat: {cpus:.2} CPUs busy over 20 s");
    assert_still_attached(&s);
    assert_shares(
        "flat weights 100/200/400",
        &shares,
        &[1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0],
    );
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn nested_sessions_share_by_session_then_call_weight() {
    let s = load(&SchedOptions::default());
    let root = TestCgroup::root("schedtest", "nested");
    // session-1 (300) holds calls of 100 and 200, session-2 (400) one call of 100:
    // hierarchical shares 1/7, 2/7 and 4/7 (flat weights would give 1/4, 2/4, 1/4).
    let s1 = root.child("session-1");
    s1.write("cpu.weight", "300");
    let s2 = root.child("session-2");
    s2.write("cpu.weight", "400");
    let a = s1.child("call-a");
    a.write("cpu.weight", "100");
    let b = s1.child("call-b");
    b.write("cpu.weight", "200");
    let c = s2.child("call-c");
    c.write("cpu.weight", "100");
    for cg in [&s1, &s2, &a, &b, &c] {
        s.set_cgroup(cg.id(), policy(SchedClass::Normal))
            .expect("set_cgroup");
    }
    for cg in [&a, &b, &c] {
        cg.spin(2);
    }
    let (shares, cpus) = measure_shares(
        &[&a, &b, &c],
        Duration::from_secs(3),
        Duration::from_secs(20),
    );
    println!("nested: {cpus:.2} CPUs busy over 20 s");
    assert_still_attached(&s);
    assert_shares(
        "nested sessions 300{100,200}/400{100}",
        &shares,
        &[1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0],
    );
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn cpu_max_half_a_cpu_is_honoured() {
    let s = load(&SchedOptions::default());
    let root = TestCgroup::root("schedtest", "cpumax");
    let limited = root.child("call-limited");
    limited.write("cpu.max", "50000 100000");
    let free = root.child("call-free");
    for cg in [&limited, &free] {
        s.set_cgroup(cg.id(), policy(SchedClass::Normal))
            .expect("set_cgroup");
    }
    limited.spin(2);
    free.spin(1);
    std::thread::sleep(Duration::from_secs(2));
    let (l0, f0, t0) = (limited.usage_usec(), free.usage_usec(), Instant::now());
    std::thread::sleep(Duration::from_secs(15));
    let secs = t0.elapsed().as_secs_f64();
    let used = (limited.usage_usec() - l0) as f64 / 1e6 / secs;
    let other = (free.usage_usec() - f0) as f64 / 1e6 / secs;
    println!(
        "cpu.max 50000/100000 with 2 spinners: {used:.3} CPUs (target 0.500); unlimited sibling with 1 spinner: {other:.3} CPUs"
    );
    assert_still_attached(&s);
    assert!(
        (used - 0.5).abs() <= SHARE_TOLERANCE,
        "cpu.max 50 %: used {used:.3} CPUs"
    );
    // The sibling's one task can use one CPU at most; while the limited call is within
    // its quota, its lagging clock puts it first, so the sibling gets ~0.75 CPUs.
    assert!(
        other >= 0.6,
        "the unlimited sibling is starved: {other:.3} CPUs"
    );
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn a_session_cpu_max_caps_its_calls_together() {
    let s = load(&SchedOptions::default());
    let root = TestCgroup::root("schedtest", "sessionmax");
    let session = root.child("session-capped");
    session.write("cpu.max", "100000 100000");
    let a = session.child("call-a");
    a.write("cpu.weight", "100");
    let b = session.child("call-b");
    b.write("cpu.weight", "300");
    for cg in [&session, &a, &b] {
        s.set_cgroup(cg.id(), policy(SchedClass::Normal))
            .expect("set_cgroup");
    }
    a.spin(2);
    b.spin(2);
    std::thread::sleep(Duration::from_secs(2));
    let (a0, b0, t0) = (a.usage_usec(), b.usage_usec(), Instant::now());
    std::thread::sleep(Duration::from_secs(15));
    let secs = t0.elapsed().as_secs_f64();
    let ua = (a.usage_usec() - a0) as f64 / 1e6 / secs;
    let ub = (b.usage_usec() - b0) as f64 / 1e6 / secs;
    println!(
        "session cpu.max 1 CPU, calls of weight 100 and 300 with 2 busy tasks each: {:.3} + {:.3} = {:.3} CPUs (target 1.000, split 0.250/0.750)",
        ua,
        ub,
        ua + ub
    );
    assert_still_attached(&s);
    assert!(
        (ua + ub - 1.0).abs() <= 2.0 * SHARE_TOLERANCE,
        "session cpu.max 1 CPU: {:.3} CPUs",
        ua + ub
    );
    assert_shares(
        "calls inside the capped session",
        &[ua / (ua + ub), ub / (ua + ub)],
        &[0.25, 0.75],
    );
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn classes_and_outsiders_keep_weight_shares_when_busy() {
    let s = load(&SchedOptions::default());
    let root = TestCgroup::root("schedtest", "classes");
    // All of weight 100: a busy agent runtime, a HIGH call, and a cgroup agentcg does
    // not manage (no policy). Classes shape wake-ups, not the shares of busy cgroups,
    // and the outsider keeps its fair share.
    let runtime = root.child("runtime");
    let high = root.child("call-high");
    let outsider = root.child("not-agentcg");
    s.set_cgroup(runtime.id(), policy(SchedClass::Runtime))
        .expect("set_cgroup");
    s.set_cgroup(high.id(), policy(SchedClass::High))
        .expect("set_cgroup");
    for cg in [&runtime, &high, &outsider] {
        cg.spin(2);
    }
    // The runtime also wakes up every 2 ms (and preempts each time).
    let out = Path::new("/tmp/agentcg-schedtest-classes-wakelat.txt");
    let pid = runtime.spawn(&[&tool("wakelat"), "4000", "2000", &out.display().to_string()]);
    let (shares, cpus) = measure_shares(
        &[&runtime, &high, &outsider],
        Duration::from_secs(2),
        Duration::from_secs(10),
    );
    println!("classes: {cpus:.2} CPUs busy");
    assert_still_attached(&s);
    runtime.kill();
    let _ = wait(pid);
    assert_shares(
        "busy runtime/HIGH call/outsider at equal weight",
        &shares,
        &[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
    );
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn a_wakeup_heavy_call_gets_no_more_than_its_share() {
    let s = load(&SchedOptions::default());
    let root = TestCgroup::root("schedtest", "wakeheavy");
    // Synchronous wake-ups may skip the shared queue (ops.enqueue); a messaging call
    // must still not take more than its weight from a busy sibling.
    let msg = root.child("call-messaging");
    let busy = root.child("call-busy");
    for cg in [&msg, &busy] {
        s.set_cgroup(cg.id(), policy(SchedClass::Normal))
            .expect("set_cgroup");
    }
    msg.spawn(&[&tool("msgbench"), "4", "100000000"]);
    busy.spin(2);
    let (shares, cpus) = measure_shares(
        &[&msg, &busy],
        Duration::from_secs(2),
        Duration::from_secs(10),
    );
    let stats = s.stats().expect("stats");
    println!(
        "messaging call vs busy call at equal weight: {} of {cpus:.2} CPUs; sync wake-ups kept local: {}",
        fmt_list(&shares),
        stats.sync_local
    );
    assert_still_attached(&s);
    // Both sides: more than half is taken from the busy sibling; well under half starves
    // a call that always has work (4 ping-pong pairs keep 4 threads runnable, more than
    // the 2 CPUs). Below, twice the tolerance: each wake-up waits its turn behind the
    // sibling's slice, which the busy call never does (measured: 0.503).
    assert!(
        (0.5 - 2.0 * SHARE_TOLERANCE..=0.5 + SHARE_TOLERANCE).contains(&shares[0]),
        "the messaging call took {:.3} of the CPU, its share at equal weight is 0.5",
        shares[0]
    );
}

/// Per wake-up samples (µs) of a task sleeping 2 ms `n` times in `rt` while 4 busy tasks
/// run in `low`: (how late the sleep ended, how long the task waited on a run queue).
fn wake_latency(rt: &TestCgroup, low: &TestCgroup, n: usize) -> Vec<(u64, u64)> {
    let out = Path::new("/tmp/agentcg-schedtest-wakelat.txt");
    low.spin(4);
    std::thread::sleep(Duration::from_millis(500));
    let pid = rt.spawn(&[
        &tool("wakelat"),
        &n.to_string(),
        "2000",
        &out.display().to_string(),
    ]);
    let status = wait(pid).expect("wait wakelat");
    low.kill();
    assert!(status.code == Some(0), "wakelat failed: {status:?}");
    let text = fs::read_to_string(out).expect("wakelat output");
    let v: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse().ok());
            Some((f.next()??, f.next()??))
        })
        .collect();
    assert_eq!(v.len(), n, "wakelat wrote {} samples", v.len());
    v
}

/// The `p`-th percentile of `v` (sorted in place).
fn percentile(v: &mut [u64], p: usize) -> u64 {
    v.sort_unstable();
    v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

fn summary(v: &mut [u64]) -> String {
    format!(
        "p50 {} us, p90 {} us, p99 {} us, max {} us",
        percentile(v, 50),
        percentile(v, 90),
        percentile(v, 99),
        v.iter().max().copied().unwrap_or(0),
    )
}

/// (run-queue wait, sleep lateness) summaries of `samples`.
fn latency_summary(samples: &[(u64, u64)]) -> String {
    let mut late: Vec<u64> = samples.iter().map(|s| s.0).collect();
    let mut runq: Vec<u64> = samples.iter().map(|s| s.1).collect();
    format!(
        "run-queue wait {}; sleep lateness {} (n={})",
        summary(&mut runq),
        summary(&mut late),
        samples.len()
    )
}

/// A helper binary: the copy in the guest's /tmp (9p page-in is slow) or the build's.
fn tool(name: &str) -> String {
    let local = Path::new("/tmp").join(name);
    if local.exists() {
        return local.display().to_string();
    }
    agentcg_vmtests::bin_dir().join(name).display().to_string()
}

/// Wake-up latency is the time from the wake-up to running: the growth of the task's
/// `run_delay` (`/proc/thread-self/schedstat`) across each 2 ms sleep. The sleep's own
/// lateness is reported too; under software emulation it also holds the time the host
/// took to deliver the timer interrupt to a busy vCPU, which no guest scheduler controls
/// and which, with other VMs on the host, dominates its tail in both arms.
///
/// The two arms alternate in short rounds, each going first in half of them, and their
/// samples are pooled, so that load on the emulating host falls on both arms alike.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn runtime_wakeups_beat_busy_low_priority_calls() {
    const ROUNDS: usize = 6;
    const PER_ROUND: usize = 300;
    let root = TestCgroup::root("schedtest", "latency");
    let rt = root.child("runtime");
    let low = root.child("call-low");
    let (mut kernel, mut sched) = (Vec::new(), Vec::new());
    let mut boosted = 0;
    let mut with_sched = || {
        let s = load(&SchedOptions::default());
        s.set_cgroup(rt.id(), policy(SchedClass::Runtime))
            .expect("set_cgroup runtime");
        s.set_cgroup(low.id(), policy(SchedClass::Low))
            .expect("set_cgroup low");
        let a = wake_latency(&rt, &low, PER_ROUND);
        boosted += s.stats().expect("stats").boosted_wakeups;
        assert_still_attached(&s);
        a
    };
    for round in 0..ROUNDS {
        let (k, a) = if round % 2 == 0 {
            (wake_latency(&rt, &low, PER_ROUND), with_sched())
        } else {
            let a = with_sched();
            (wake_latency(&rt, &low, PER_ROUND), a)
        };
        println!("round {round} kernel scheduler: {}", latency_summary(&k));
        println!("round {round} agentcg_sched: {}", latency_summary(&a));
        kernel.extend(k);
        sched.extend(a);
    }
    println!(
        "kernel scheduler (EEVDF, equal cpu.weight): {}",
        latency_summary(&kernel)
    );
    println!(
        "agentcg_sched (runtime class vs 4 low-class busy tasks): {}",
        latency_summary(&sched)
    );
    let p99 = |v: &[(u64, u64)], f: fn(&(u64, u64)) -> u64| {
        percentile(&mut v.iter().map(f).collect::<Vec<_>>(), 99)
    };
    let (k_runq, s_runq) = (p99(&kernel, |s| s.1), p99(&sched, |s| s.1));
    let (k_late, s_late) = (p99(&kernel, |s| s.0), p99(&sched, |s| s.0));
    println!(
        "p99 ratio agentcg_sched/kernel: run-queue wait {:.3} ({s_runq} / {k_runq} us), sleep lateness {:.3} ({s_late} / {k_late} us); boosted wake-ups {boosted}",
        s_runq as f64 / k_runq.max(1) as f64,
        s_late as f64 / k_late.max(1) as f64,
    );
    assert!(
        boosted as usize >= ROUNDS * PER_ROUND,
        "runtime wake-ups were not boosted: {boosted}"
    );
    assert!(
        k_runq > 0,
        "no run-queue wait measured: CONFIG_SCHED_INFO off?"
    );
    assert!(
        s_runq * 2 <= k_runq,
        "p99 wake-up latency {s_runq} us with agentcg_sched is not at most half of {k_runq} us"
    );
}

/// Messages per second of `msgbench` (4 thread pairs ping-ponging over Unix sockets)
/// run inside `cg`.
fn messaging_rate(cg: &TestCgroup) -> f64 {
    let script = format!(
        "echo $$ > {} && exec {} 4 3000",
        cg.path.join("cgroup.procs").display(),
        tool("msgbench")
    );
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .output()
        .expect("msgbench");
    assert!(out.status.success(), "msgbench: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("msgbench printed {text:?}"))
}

/// Not an acceptance test (that is `cargo xtask bench cpu`, target loss <= 3 %): a
/// wake-up-heavy workload with and without the scheduler, interleaved, in rounds that
/// alternate which arm goes first (a host that slows down or warms up over the test
/// weighs on both arms alike). Under software emulation the figures depend on the load
/// of the emulating host: on an idle host the arms are near parity (measured: ratio of
/// the means 1.07, rounds 0.99-1.18); on a busy one a wake-up to another vCPU costs far
/// more, and agentcg_sched, which keeps synchronous wake-ups local, gains (measured:
/// 1.54, rounds 0.75-2.49). So the ratio is held within 1/1.5..3: below, the scheduler
/// costs messaging more than any host load explains; above, the kernel arm did not run
/// the same workload.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn messaging_throughput_with_and_without_the_scheduler() {
    let root = TestCgroup::root("schedtest", "msgbench");
    let call = root.child("call-msg");
    let (mut kernel, mut sched) = (Vec::new(), Vec::new());
    messaging_rate(&call); // warm-up: page the binary in
    let with_sched = || {
        let s = load(&SchedOptions::default());
        s.set_cgroup(call.id(), policy(SchedClass::Normal))
            .expect("set_cgroup");
        let a = messaging_rate(&call);
        assert_still_attached(&s);
        a
    };
    for round in 0..6 {
        let (k, a) = if round % 2 == 0 {
            (messaging_rate(&call), with_sched())
        } else {
            let a = with_sched();
            (messaging_rate(&call), a)
        };
        println!(
            "round {round} ({} first): kernel {k:.0} msg/s, agentcg_sched {a:.0} msg/s",
            if round % 2 == 0 {
                "kernel"
            } else {
                "agentcg_sched"
            }
        );
        kernel.push(k);
        sched.push(a);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let ratio = mean(&sched) / mean(&kernel);
    println!(
        "messaging throughput: kernel {:.0} msg/s, agentcg_sched {:.0} msg/s, ratio {ratio:.3} ({:+.1} %)",
        mean(&kernel),
        mean(&sched),
        (ratio - 1.0) * 100.0
    );
    assert!(
        (1.0 / 1.5..=3.0).contains(&ratio),
        "throughput ratio agentcg_sched/kernel {ratio:.3} outside 0.67..3"
    );
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn a_2s_cpu_budget_fires_once_within_100ms_then_throttles() {
    let s = load(&SchedOptions::default());
    let root = TestCgroup::root("schedtest", "budget");
    let call = root.child("call-budget");
    let budget = Duration::from_secs(2);
    let p = CgroupPolicy {
        budget: Some(budget),
        ..CgroupPolicy::default()
    };
    s.set_cgroup(call.id(), p).expect("set_cgroup");
    call.spin(1);

    // Sample cpu.stat every ~5 ms until the event arrives; find the crossing.
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while events.is_empty() && Instant::now() < deadline {
        samples.push((monotonic_ns(), call.usage_usec()));
        s.poll_budget_events(Duration::from_millis(5), |e| {
            events.push((e, monotonic_ns()))
        })
        .expect("poll");
    }
    assert_eq!(events.len(), 1, "expected one budget event within 60 s");
    let (event, received) = events[0];
    assert_eq!((event.cgid, event.budget_ns), (call.id(), 2_000_000_000));
    let budget_us = 2_000_000;
    let cross = samples
        .windows(2)
        .find(|w| w[0].1 < budget_us && w[1].1 >= budget_us)
        .map(|w| {
            let (t0, u0, t1, u1) = (w[0].0 as f64, w[0].1 as f64, w[1].0 as f64, w[1].1 as f64);
            (t0 + (t1 - t0) * (budget_us as f64 - u0) / (u1 - u0).max(1.0)) as u64
        })
        .unwrap_or_else(|| {
            // The event came before cpu.stat crossed (it must, within 100 ms): the
            // crossing is after the last sample; take the next reading.
            samples.last().map_or(0, |s| s.0)
        });
    let skew_ms = (event.ts_ns as f64 - cross as f64) / 1e6;
    println!(
        "budget 2 s: event used_ns {} at ts {}, cpu.stat crossed 2 s at {cross} (interpolated from {} samples): event - crossing = {skew_ms:+.1} ms; delivered {:.1} ms after the event",
        event.used_ns,
        event.ts_ns,
        samples.len(),
        (received as f64 - event.ts_ns as f64) / 1e6
    );
    assert!(
        skew_ms.abs() <= 100.0,
        "event {skew_ms:+.1} ms from the crossing"
    );

    // Exactly once, and the call now runs at the floor share (5 % of a CPU).
    let u0 = call.usage_usec();
    let t0 = Instant::now();
    let mut more = 0;
    while t0.elapsed() < Duration::from_secs(5) {
        more += s
            .poll_budget_events(Duration::from_millis(200), |_| ())
            .expect("poll");
    }
    let floor = (call.usage_usec() - u0) as f64 / 1e6 / t0.elapsed().as_secs_f64();
    let usage = s.usage(call.id()).expect("usage").expect("has usage");
    println!(
        "after exhaustion: {more} more events, {floor:.3} CPUs over 5 s (floor 0.05), usage {usage:?}"
    );
    assert_eq!(more, 0, "the budget event must fire once");
    assert_eq!(usage.exhausted, 1);
    // The floor share is 5 % of a CPU: throttled, not stopped (measured: 0.050).
    assert!(
        (0.025..=0.10).contains(&floor),
        "an exhausted call runs at the floor of 0.05 CPUs, not at {floor:.3}"
    );
    assert_still_attached(&s);
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn mem_pressure_flag_deprioritizes_a_call() {
    let s = load(&SchedOptions::default());
    let root = TestCgroup::root("schedtest", "mempressure");
    let flagged = root.child("call-flagged");
    let other = root.child("call-other");
    for cg in [&flagged, &other] {
        s.set_cgroup(cg.id(), policy(SchedClass::Normal))
            .expect("set_cgroup");
        cg.spin(2);
    }
    let (even, _) = measure_shares(
        &[&flagged, &other],
        Duration::from_secs(2),
        Duration::from_secs(8),
    );
    assert_shares("equal weights, no flag", &even, &[0.5, 0.5]);
    s.set_flags(flagged.id(), SchedFlags::MEM_PRESSURE)
        .expect("set_flags");
    assert!(
        s.policy(flagged.id())
            .expect("policy")
            .expect("has policy")
            .flags
            .contains(SchedFlags::MEM_PRESSURE)
    );
    // Weight divided by 4: 25 vs 100.
    let (shares, _) = measure_shares(
        &[&flagged, &other],
        Duration::from_secs(2),
        Duration::from_secs(10),
    );
    assert_shares("MEM_PRESSURE on the first", &shares, &[0.2, 0.8]);
    assert_still_attached(&s);
}

/// The same deprioritization driven through the `mem_state` map shared with the memory
/// programs (MEM_DEPRIORITIZE, set by the daemon through `MemWatch::set_deprioritized`),
/// taking effect on a running scheduler and going away when cleared.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn mem_state_deprioritize_flag_deprioritizes_a_call() {
    let state = MemStateMap::create().expect("MemStateMap::create");
    let s = load(&SchedOptions {
        mem_state: Some(state.clone()),
        ..SchedOptions::default()
    });
    let mem = MemWatch::load(&state).unwrap_or_else(|e| panic!("MemWatch::load: {e}"));
    let root = TestCgroup::root("schedtest", "memstate");
    let flagged = root.child("call-flagged");
    let other = root.child("call-other");
    for cg in [&flagged, &other] {
        s.set_cgroup(cg.id(), policy(SchedClass::Normal))
            .expect("set_cgroup");
        mem.watch(cg.id(), MemWatchSpec::default()).expect("watch");
        cg.spin(2);
    }
    mem.set_deprioritized(flagged.id(), true)
        .expect("set_deprioritized");
    let (shares, _) = measure_shares(
        &[&flagged, &other],
        Duration::from_secs(2),
        Duration::from_secs(8),
    );
    assert_shares(
        "MEM_DEPRIORITIZE in mem_state on the first",
        &shares,
        &[0.2, 0.8],
    );
    mem.set_deprioritized(flagged.id(), false)
        .expect("set_deprioritized");
    let (even, _) = measure_shares(
        &[&flagged, &other],
        Duration::from_secs(2),
        Duration::from_secs(8),
    );
    assert_shares("MEM_DEPRIORITIZE cleared", &even, &[0.5, 0.5]);
    assert_still_attached(&s);
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn a_thousand_short_lived_cgroups_leave_no_entries() {
    let s = load(&SchedOptions::default());
    let root = TestCgroup::root("schedtest", "churn");
    let sessions = root.child("session-churn");
    sessions.write("cgroup.subtree_control", "+cpu");
    let (entries, usage, nodes) = (s.entries(), s.usage_entries(), s.node_entries());
    println!("baseline: {entries} policies, {usage} usage entries, {nodes} cgroup nodes");
    let started = Instant::now();
    for i in 0..1000 {
        let path = sessions.path.join(format!("call-{i}"));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let cgid = fs::metadata(&path).expect("stat").ino();
        let p = CgroupPolicy {
            class: if i % 2 == 0 {
                SchedClass::Normal
            } else {
                SchedClass::Low
            },
            weight: 50 + (i % 200),
            budget: Some(Duration::from_secs(60)),
            flags: SchedFlags::NONE,
        };
        s.set_cgroup(cgid, p)
            .unwrap_or_else(|e| panic!("set_cgroup #{i}: {e}"));
        let pid = spawn_in_cgroup(&path, &[OsString::from("/bin/true")], None).expect("spawn true");
        let status = wait(pid).expect("wait");
        assert_eq!(status.code, Some(0), "call #{i}: {status:?}");
        let usage = s
            .remove_cgroup(cgid)
            .expect("remove_cgroup")
            .expect("had usage");
        assert!(
            usage.runtime_ns > 0 && usage.exhausted == 0,
            "call #{i}: {usage:?}"
        );
        for _ in 0..50 {
            if fs::remove_dir(&path).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "1000 calls (mkdir, set_cgroup, spawn true, remove_cgroup, rmdir) took {:?}",
        started.elapsed()
    );
    // ops.cgroup_exit runs when the kernel frees the cgroup, a little after rmdir.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.node_entries() > nodes && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = (s.entries(), s.usage_entries(), s.node_entries());
    println!(
        "after: {} policies, {} usage entries, {} cgroup nodes",
        after.0, after.1, after.2
    );
    assert_eq!(
        after,
        (entries, usage, nodes),
        "map entries back to baseline"
    );
    assert_still_attached(&s);
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn forced_exits_are_reported_and_a_reload_works() {
    let opts = SchedOptions {
        allow_forced_exit: true,
        ..SchedOptions::default()
    };
    let root = TestCgroup::root("schedtest", "exit");
    let busy = root.child("busy");
    busy.spin(1); // ticks and dispatches happen while the trigger is pending
    for error in [true, false] {
        let s = load(&opts);
        s.force_exit(error).expect("force_exit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.exit_info().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let info = s.exit_info().expect("exit info recorded within 10 s");
        println!("forced exit (error={error}): {info:?}");
        assert!(!s.is_attached());
        if error {
            assert_eq!(info.kind, ExitKind::ErrorBpf, "{info:?}");
            assert!(
                info.message.contains("forced through the ctrl map"),
                "{info:?}"
            );
        } else {
            assert_eq!(info.kind, ExitKind::UnregisteredByBpf, "{info:?}");
            assert_eq!(info.exit_code, SCHED_EXIT_CODE_REQUESTED, "{info:?}");
            assert!(info.message.contains("exit requested"), "{info:?}");
        }
        assert!(!info.reason.is_empty(), "{info:?}");
        drop(s);
        // The kernel finishes disabling asynchronously.
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string("/sys/kernel/sched_ext/state")
            .is_ok_and(|s| s.trim() != "disabled")
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let again = load(&SchedOptions::default());
    std::thread::sleep(Duration::from_secs(1));
    assert_still_attached(&again);
}

fn pin(pid: i32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only touch it
    // and our own child.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let r = libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            r,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Why full mode: in partial mode (`SCX_OPS_SWITCH_PARTIAL`) the fair class runs ahead
/// of every SCHED_EXT task, so busy tasks outside agentcg starve the tool calls down to
/// the kernel's reservation for SCHED_EXT tasks, whatever the weights say.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn partial_mode_lets_the_fair_class_starve_sched_ext_tasks() {
    let opts = SchedOptions {
        switch_partial: true,
        ..SchedOptions::default()
    };
    let s = load(&opts);
    let root = TestCgroup::root("schedtest", "partial");
    let ext = root.child("call-ext");
    let fair = root.child("other-fair");
    s.set_cgroup(ext.id(), policy(SchedClass::Normal))
        .expect("set_cgroup");
    for _ in 0..2 {
        let pid = ext.spawn(&["/bin/sh", "-c", "while :; do :; done"]);
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: setting the policy of our own child; 7 is SCHED_EXT.
        let r = unsafe { libc::sched_setscheduler(pid, 7, &param) };
        assert_eq!(
            r,
            0,
            "sched_setscheduler SCHED_EXT: {}",
            std::io::Error::last_os_error()
        );
    }
    // One busy fair-class task pinned on each CPU: the fair class's own placement
    // otherwise decides the outcome (two on one CPU leave the other to SCHED_EXT).
    for cpu in 0..2 {
        let pid = fair.spawn(&["/bin/sh", "-c", "while :; do :; done"]);
        pin(pid, cpu);
    }
    let (shares, cpus) = measure_shares(
        &[&ext, &fair],
        Duration::from_secs(1),
        Duration::from_secs(5),
    );
    println!(
        "partial mode, equal cpu.weight: SCHED_EXT calls {:.3} vs fair-class tasks {:.3} of {cpus:.2} CPUs",
        shares[0], shares[1]
    );
    fair.kill();
    ext.kill();
    assert_still_attached(&s);
    // The fair class dominates, and SCHED_EXT tasks keep only the kernel's deadline-server
    // reservation for them (ext_server: 50 ms per second on each CPU, 5 % of the total;
    // measured 0.052). Zero would mean the reservation is gone and the tasks starve.
    assert!(
        (EXT_SERVER_SHARE / 2.0..=EXT_SERVER_SHARE * 2.0).contains(&shares[0]),
        "expected the fair class to dominate and SCHED_EXT tasks to keep about \
         {EXT_SERVER_SHARE} of the CPUs: {shares:?}"
    );
}

/// The share of the CPUs the kernel's ext_server reserves for SCHED_EXT tasks when the
/// fair class is busy: 50 ms of every 1 s (its default runtime and period).
const EXT_SERVER_SHARE: f64 = 0.05;
