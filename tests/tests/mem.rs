//! Kernel tests of the memory programs (`agentcg_bpf::MemWatch`, `ebpf/mem.bpf.c`) in the
//! 7.3.4 VM: the MEMCG_HIGH event against the kernel's own memory.events (timing and
//! counter), the scheduler deprioritizing a cgroup the memory programs flagged, the
//! near-max watermark of a parent, OOM kills, and cleanup of the maps. Loading
//! `MemWatch` in each test also verifies that every attach point (two fexit, one fentry,
//! one tp_btf) attaches on this kernel.
//!
//! Run as root in the guest with `--include-ignored --test-threads=1`. Cgroups live under
//! `/sys/fs/cgroup/agentcg-memtest-<pid>-<name>` and are killed and removed on drop.
//! Figures are printed for the CI log.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentcg_bpf::{
    CgroupPolicy, MemEvent, MemEventKind, MemFlags, MemRole, MemStateMap, MemWatch, MemWatchSpec,
    SchedOptions, Scheduler,
};
use agentcg_core::spawn::wait;
use agentcg_vmtests::{TestCgroup, memhog};

const MIB: u64 = 1 << 20;
/// Acceptance: a BPF event is at most this far from the moment memory.events changed.
const MAX_SKEW_NS: u64 = 10_000_000;
/// The widest window (see `distance_to_window`) that still makes the skew a measurement:
/// an event inside a window of a second would pass however late it came.
const MAX_WINDOW_NS: u64 = 5 * MAX_SKEW_NS;

/// How far `t` lies from the window `[from, to]` (0 inside it). The poller knows only
/// that memory.events changed after its previous read ended and before the read that
/// saw the change ended; a read preempted for 15 ms (a loaded 2-vCPU VM) widens the
/// window, and an event inside it is as close as the poller can tell.
fn distance_to_window(t: u64, from: u64, to: u64) -> u64 {
    if t < from {
        from - t
    } else {
        t.saturating_sub(to)
    }
}

#[test]
fn an_event_inside_the_window_is_at_distance_zero() {
    assert_eq!(distance_to_window(15, 12, 26), 0);
    assert_eq!(distance_to_window(10, 12, 26), 2);
    assert_eq!(distance_to_window(40, 12, 26), 14);
}
/// Allowed absolute error of a CPU share.
const SHARE_TOLERANCE: f64 = 0.05;

fn memory_events(path: &Path) -> HashMap<String, u64> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
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

fn load(state: &MemStateMap) -> MemWatch {
    let started = Instant::now();
    let mw = MemWatch::load(state).unwrap_or_else(|e| panic!("MemWatch::load: {e}"));
    println!(
        "MemWatch::load took {:?} ({:?}); all four programs attached",
        started.elapsed(),
        mw.timings()
    );
    mw
}

fn setup() -> (MemStateMap, MemWatch) {
    agentcg_vmtests::require_kernel();
    let state = MemStateMap::create().unwrap_or_else(|e| panic!("MemStateMap::create: {e}"));
    let mw = load(&state);
    (state, mw)
}

/// Polls events until one of `kind` for `cgid` arrives; returns it and prints all.
fn wait_event(mw: &MemWatch, cgid: u64, kind: MemEventKind, timeout: Duration) -> MemEvent {
    let start = Instant::now();
    let mut found = None;
    while found.is_none() {
        assert!(
            start.elapsed() < timeout,
            "no {kind:?} event for cgroup {cgid} within {timeout:?}; stats {:?}",
            mw.stats()
        );
        mw.poll_events(Duration::from_millis(100), |e| {
            println!("  event {e:?}");
            if found.is_none() && e.cgid == cgid && e.kind == kind {
                found = Some(e);
            }
        })
        .expect("poll_events");
    }
    found.expect("found")
}

fn wait_flag(mw: &MemWatch, cgid: u64, flag: MemFlags, set: bool, timeout: Duration) {
    let start = Instant::now();
    loop {
        let st = mw.state(cgid).expect("state").expect("watched");
        if st.flags.contains(flag) == set {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "flag {flag:?} of {cgid} not {} within {timeout:?}: {st:?}",
            if set { "set" } else { "cleared" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn measure_shares(cgs: &[&TestCgroup], warmup: Duration, window: Duration) -> Vec<f64> {
    std::thread::sleep(warmup);
    let before: Vec<u64> = cgs.iter().map(|c| c.usage_usec()).collect();
    std::thread::sleep(window);
    let after: Vec<u64> = cgs.iter().map(|c| c.usage_usec()).collect();
    let deltas: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) as f64)
        .collect();
    let total: f64 = deltas.iter().sum();
    deltas.iter().map(|d| d / total.max(1.0)).collect()
}

fn assert_shares(label: &str, shares: &[f64], ideal: &[f64]) {
    let err = shares
        .iter()
        .zip(ideal)
        .map(|(s, i)| (s - i).abs())
        .fold(0.0, f64::max);
    println!("{label}: shares {shares:.3?} (ideal {ideal:?}), max abs error {err:.3}");
    assert!(
        err <= SHARE_TOLERANCE,
        "{label}: {shares:?} vs ideal {ideal:?}"
    );
}

/// The first moment (CLOCK_MONOTONIC) a tight loop on another thread saw `high > 0` in
/// memory.events: (start of that read, end of that read, end of the previous read, the
/// value read).
type Observed = (u64, u64, u64, u64);

fn watch_memory_events(
    path: PathBuf,
    key: &'static str,
    stop: Arc<AtomicBool>,
) -> Option<Observed> {
    let mut prev_end = monotonic_ns();
    while !stop.load(Ordering::Relaxed) {
        let start = monotonic_ns();
        let v = memory_events(&path).get(key).copied().unwrap_or(0);
        let end = monotonic_ns();
        if v > 0 {
            return Some((start, end, prev_end, v));
        }
        prev_end = end;
    }
    None
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn mem_high_event_matches_memory_events_and_deprioritizes_the_call() {
    let (state, mw) = setup();
    let sched = Scheduler::load(&SchedOptions {
        mem_state: Some(state.clone()),
        ..SchedOptions::default()
    })
    .unwrap_or_else(|e| panic!("Scheduler::load with the shared map: {e}"));
    let root = TestCgroup::root("memtest", "high");
    let call = root.child("call");
    let other = root.child("other");
    call.write("memory.high", "32M");
    call.write("memory.max", "256M");
    let _ = fs::write(call.path.join("memory.swap.max"), "0");
    let cgid = call.id();
    mw.watch(
        cgid,
        MemWatchSpec {
            role: MemRole::Call,
            near_max_bp: 0,
        },
    )
    .expect("watch");
    for cg in [&call, &other] {
        sched
            .set_cgroup(cg.id(), CgroupPolicy::default())
            .expect("set_cgroup");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (path, stop) = (call.path.join("memory.events"), Arc::clone(&stop));
        std::thread::spawn(move || watch_memory_events(path, "high", stop))
    };
    std::thread::sleep(Duration::from_millis(100));
    let hog = call.spawn(&[&memhog(), "96", "120000", "4"]);
    let ev = wait_event(&mw, cgid, MemEventKind::High, Duration::from_secs(120));
    let observed = {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !poller.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        poller.join().expect("poller thread")
    };
    let (obs_start, obs_end, prev_end, obs_value) =
        observed.expect("the poller never saw memory.events high > 0");
    let skew = distance_to_window(ev.ts_ns, prev_end, obs_end);
    println!(
        "MEMCG_HIGH: BPF event ts {} ns; memory.events high first read > 0 at {} ns (read \
         started {} ns, previous read ended {} ns); event to that window {:.3} ms; event \
         counter {}, memory.events high at that read {}; usage {} MiB, high {} MiB",
        ev.ts_ns,
        obs_end,
        obs_start,
        prev_end,
        skew as f64 / 1e6,
        ev.counter,
        obs_value,
        ev.usage / MIB,
        ev.limit / MIB,
    );
    assert!(
        skew <= MAX_SKEW_NS,
        "event {skew} ns away from memory.events"
    );
    let window = obs_end - prev_end;
    assert!(
        window <= MAX_WINDOW_NS,
        "the poller was off the CPU for {window} ns around the change: too coarse to time \
         the event"
    );
    assert_eq!(ev.counter, 1, "the first high event of a fresh cgroup");
    assert!(obs_value >= ev.counter);
    assert_eq!(ev.limit, 32 * MIB);
    assert!(ev.usage > 32 * MIB, "usage {} at the event", ev.usage);
    assert_eq!(ev.role, Some(MemRole::Call));
    let st = mw.state(cgid).expect("state").expect("watched");
    println!("mem_state while over high: {st:?}");
    assert!(st.flags.contains(MemFlags::OVER_HIGH), "{st:?}");

    // The scheduler sees it: as with SCHED_FLAG_MEM_PRESSURE, weight 100/4 vs 100.
    call.spin(2);
    other.spin(2);
    let shares = measure_shares(
        &[&call, &other],
        Duration::from_secs(3),
        Duration::from_secs(6),
    );
    assert_shares(
        "MEM_OVER_HIGH (from the kernel) on the call",
        &shares,
        &[0.2, 0.8],
    );
    assert!(
        sched.is_attached(),
        "scheduler exited: {:?}",
        sched.exit_info()
    );

    // The hog goes away: its memory is uncharged and the flag clears with an event.
    // SAFETY: killing our own child.
    unsafe { libc::kill(hog, libc::SIGKILL) };
    let _ = wait(hog);
    let rec = wait_event(
        &mw,
        cgid,
        MemEventKind::HighRecovered,
        Duration::from_secs(60),
    );
    println!(
        "recovered: usage {} MiB at {} ns ({:.1} ms after the high event); memory.current now {} MiB",
        rec.usage / MIB,
        rec.ts_ns,
        (rec.ts_ns - ev.ts_ns) as f64 / 1e6,
        call.current() / MIB
    );
    assert!(rec.usage < 28 * MIB);
    let st = mw.state(cgid).expect("state").expect("watched");
    assert!(!st.flags.contains(MemFlags::OVER_HIGH), "{st:?}");
    let shares = measure_shares(
        &[&call, &other],
        Duration::from_secs(2),
        Duration::from_secs(6),
    );
    assert_shares("flag cleared", &shares, &[0.5, 0.5]);
    assert!(
        sched.is_attached(),
        "scheduler exited: {:?}",
        sched.exit_info()
    );
    println!("stats {:?}, sched {:?}", mw.stats(), sched.stats());
    assert_eq!(mw.malformed_events(), 0);
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn mem_near_max_watermark_of_a_parent_fires_and_recovers() {
    let (_state, mw) = setup();
    let root = TestCgroup::root("memtest", "nearmax");
    let session = root.child("session");
    session.write("memory.max", "256M");
    let _ = fs::write(session.path.join("memory.swap.max"), "0");
    let call = session.child("call");
    let sid = session.id();
    mw.watch(
        sid,
        MemWatchSpec {
            role: MemRole::Session,
            near_max_bp: 8000,
        },
    )
    .expect("watch");
    let t0 = monotonic_ns();
    call.spawn(&[&memhog(), "220", "120000", "4"]);
    let ev = wait_event(&mw, sid, MemEventKind::NearMax, Duration::from_secs(120));
    println!(
        "NEAR_MAX on the parent {:.1} ms after the start: usage {:.1} MiB, max {} MiB, \
         watermark {:.1} MiB",
        (ev.ts_ns - t0) as f64 / 1e6,
        ev.usage as f64 / MIB as f64,
        ev.limit / MIB,
        0.8 * 256.0
    );
    assert_eq!(ev.limit, 256 * MIB);
    assert!(
        ev.usage * 10 >= ev.limit * 8,
        "usage {} below 80 %",
        ev.usage
    );
    assert_eq!(ev.role, Some(MemRole::Session));
    wait_flag(&mw, sid, MemFlags::NEAR_MAX, true, Duration::from_secs(1));
    call.kill();
    let rec = wait_event(
        &mw,
        sid,
        MemEventKind::NearMaxRecovered,
        Duration::from_secs(60),
    );
    println!(
        "NEAR_MAX recovered {:.1} ms after it was set, usage {:.1} MiB",
        (rec.ts_ns - ev.ts_ns) as f64 / 1e6,
        rec.usage as f64 / MIB as f64
    );
    assert!(rec.usage * 10_000 < rec.limit * 7500);
    wait_flag(&mw, sid, MemFlags::NEAR_MAX, false, Duration::from_secs(1));
    println!("stats {:?}", mw.stats());
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn mem_oom_kill_event_carries_the_memory_events_counter() {
    let (_state, mw) = setup();
    let root = TestCgroup::root("memtest", "oom");
    let call = root.child("call");
    call.write("memory.max", "64M");
    let _ = fs::write(call.path.join("memory.swap.max"), "0");
    let cgid = call.id();
    mw.watch(
        cgid,
        MemWatchSpec {
            role: MemRole::Call,
            near_max_bp: 0,
        },
    )
    .expect("watch");
    let hog = call.spawn(&[&memhog(), "256", "0", "16"]);
    let ev = wait_event(&mw, cgid, MemEventKind::OomKill, Duration::from_secs(120));
    let status = wait(hog).expect("wait memhog");
    let events = memory_events(&call.path.join("memory.events"));
    println!(
        "OOM_KILL event: counter {}, usage {} MiB, max {} MiB; memory.events {events:?}; \
         memhog {status:?}",
        ev.counter,
        ev.usage / MIB,
        ev.limit / MIB
    );
    assert_eq!(ev.counter, events["oom_kill"]);
    assert_eq!(ev.limit, 64 * MIB);
    let mut others = Vec::new();
    mw.poll_events(Duration::from_millis(200), |e| others.push(e))
        .expect("poll");
    println!("later events: {others:?}");
    let st = mw.state(cgid).expect("state").expect("watched");
    println!("state {st:?}, stats {:?}", mw.stats());
    assert!(st.max_events >= 1, "MEMCG_MAX precedes an OOM: {st:?}");
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn mem_unwatch_and_removed_cgroups_leave_no_entries() {
    let (state, mw) = setup();
    let root = TestCgroup::root("memtest", "cleanup");
    let spec = MemWatchSpec {
        role: MemRole::Call,
        near_max_bp: 9000,
    };
    let one = root.child("one");
    mw.watch(one.id(), spec).expect("watch");
    assert_eq!(mw.spec(one.id()).expect("spec"), Some(spec));
    mw.set_deprioritized(one.id(), true).expect("deprioritize");
    assert!(
        state
            .get(one.id())
            .expect("get")
            .expect("entry")
            .flags
            .contains(MemFlags::DEPRIORITIZE)
    );
    let last = mw.unwatch(one.id()).expect("unwatch");
    assert!(last.is_some_and(|s| s.flags.contains(MemFlags::DEPRIORITIZE)));
    assert_eq!(mw.spec(one.id()).expect("spec"), None);
    assert_eq!(mw.state(one.id()).expect("state"), None);
    assert!(mw.set_deprioritized(one.id(), true).is_err(), "not watched");
    drop(one);

    let started = Instant::now();
    for i in 0..200 {
        let cg = root.child(&format!("call-{i}"));
        mw.watch(cg.id(), spec).expect("watch");
        let pid = cg.spawn(&["/bin/true"]);
        let _ = wait(pid);
        if i % 2 == 0 {
            mw.unwatch(cg.id()).expect("unwatch");
        }
        drop(cg);
    }
    let stats = mw.stats().expect("stats");
    println!(
        "200 short-lived watched cgroups in {:?}: {} watched, {} states left; {stats:?}",
        started.elapsed(),
        mw.watched_len(),
        state.len()
    );
    assert_eq!(mw.watched_len(), 0);
    assert!(state.is_empty());
    assert_eq!(
        stats.rmdir_cleanups, 100,
        "the odd ones, removed while watched"
    );
}
