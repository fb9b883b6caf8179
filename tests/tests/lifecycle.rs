//! The call lifecycle under failure, on the real kernel: agentcgd killed with SIGKILL
//! and restarted while calls run, a tool stuck in uninterruptible sleep, a history
//! disk that fills up (docs/ARCHITECTURE.md#life-of-a-call).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentcg_vmtests::mix::{Kind, log_tail, run_bounded, stderr};
use agentcg_vmtests::{Daemon, read_record, wait_for};

/// Acceptance 1: kill -9 agentcgd twice while 3 clients run 100 calls each (some
/// OOM-killed, some timing out, some leaving processes behind), restarting it at once:
/// every call runs in its call cgroup and ends with exactly one record and its true
/// outcome, no id twice, no cgroup left.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn lifecycle_kill_9_restarts_lose_no_call_and_reuse_no_id() {
    const CLIENTS: usize = 3;
    const CALLS: usize = 100;
    let mut d = Daemon::start("crash");
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let cli = d.cli();
            let program = cli.get_program().to_owned();
            let base: Vec<_> = cli.get_args().map(|a| a.to_owned()).collect();
            let done = done.clone();
            std::thread::spawn(move || {
                (0..CALLS)
                    .map(|i| {
                        let kind = Kind::of(i + c);
                        let record = format!("/tmp/crash-{c}-{i}.json");
                        let _ = std::fs::remove_file(&record);
                        let mut cmd = Command::new(&program);
                        cmd.args(&base).args(kind.args(&record));
                        let out = run_bounded(cmd, &format!("/tmp/crash-{c}-{i}"));
                        done.fetch_add(1, Ordering::SeqCst);
                        (kind, record, out)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for at in [CLIENTS * CALLS / 4, CLIENTS * CALLS * 2 / 3] {
        wait_for("clients progressing", Duration::from_secs(600), || {
            done.load(Ordering::SeqCst) >= at
        });
        let t = Instant::now();
        d.crash_and_restart();
        println!(
            "agentcgd killed with SIGKILL after {at} calls; answering again after {:?}",
            t.elapsed()
        );
    }
    let results: Vec<_> = clients
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let mut ids = BTreeMap::new();
    let mut waited = 0;
    for (kind, record, (code, err)) in &results {
        waited += usize::from(err.contains("not answering"));
        assert_eq!(
            *code,
            Some(kind.exit_code()),
            "{kind:?} {record}: {err}\ndaemon log:\n{}",
            log_tail(&d)
        );
        let Ok(text) = std::fs::read_to_string(record) else {
            panic!(
                "{kind:?}: no record {record}; stderr: {err}\ndaemon log:\n{}",
                log_tail(&d)
            );
        };
        let rec: serde_json::Value = serde_json::from_str(&text).expect("record JSON");
        assert_eq!(rec["outcome"], kind.outcome(), "{kind:?}: {rec}");
        if *kind == Kind::Leftover {
            assert!(rec["leftover_killed"].as_u64() >= Some(1), "{rec}");
        }
        let id = rec["call_id"].as_u64().expect("call_id");
        assert!(ids.insert(id, *kind).is_none(), "call id {id} given twice");
    }
    println!(
        "{} calls, {waited} of them waited for the restarting daemon",
        results.len()
    );
    // The history: each call exactly once, nothing else.
    let mut seen = BTreeSet::new();
    for r in d.history(&[]) {
        let id = r["call_id"].as_u64().unwrap();
        assert!(seen.insert(id), "call {id} recorded twice");
        let kind = ids
            .get(&id)
            .unwrap_or_else(|| panic!("record of unknown call {id}: {r}"));
        assert_eq!(r["outcome"], kind.outcome(), "{r}");
    }
    assert_eq!(seen.len(), CLIENTS * CALLS);
    let start = Instant::now();
    while !Daemon::child_cgroups(&d.calls_dir("default")).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "call cgroups left: {:?}\n{}",
            Daemon::child_cgroups(&d.calls_dir("default")),
            log_tail(&d)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for(
        "no running-call state left",
        Duration::from_secs(10),
        || {
            std::fs::read_dir(d.state_dir.join("running"))
                .map(|r| r.count() == 0)
                .unwrap_or(false)
        },
    );
}

/// Acceptance 1, the re-adopted call: it keeps its memory and CPU limits, its deadline
/// (counted from its start, not from the restart) and its scheduler entry (its CPU
/// budget still ends it, counting what it used before the restart).
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn lifecycle_readopted_call_keeps_its_limits_deadline_and_budget() {
    let mut d = Daemon::start("adopt");
    let spawn = |intent: &str, record: &str, script: &str| {
        let _ = std::fs::remove_file(record);
        d.cli()
            .args([
                "run", "--intent", intent, "--record", record, "--", "sh", "-c", script,
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agentcg run")
    };
    let started = Instant::now();
    // The deadline and the budget are long enough that both calls are still running
    // when the daemon is back: starting both, then a restart (BPF and sched_ext loads)
    // take 10-20 s under the VM's emulation on a loaded host.
    let sleeper = spawn(
        "mem.max=64M,cpu=0.5,timeout=30s",
        "/tmp/adopt-t.json",
        "sleep 60",
    );
    let spinner = spawn(
        "cpu.budget=15s,timeout=120s",
        "/tmp/adopt-b.json",
        "while :; do :; done",
    );
    let calls = d.calls_dir("default");
    let populated = |c: &Path| {
        std::fs::read_to_string(c.join("cgroup.events")).is_ok_and(|e| e.contains("populated 1"))
    };
    wait_for("two tools running", Duration::from_secs(20), || {
        let cgs = Daemon::child_cgroups(&calls);
        cgs.len() == 2 && cgs.iter().all(|c| populated(c))
    });
    // Each call's limits, by cgroup.
    let limits = || -> BTreeMap<String, (String, String)> {
        Daemon::child_cgroups(&calls)
            .iter()
            .map(|c| {
                let read = |f: &str| {
                    std::fs::read_to_string(c.join(f))
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                };
                (
                    c.display().to_string(),
                    (read("memory.max"), read("cpu.max")),
                )
            })
            .collect()
    };
    let before = limits();
    std::thread::sleep(Duration::from_secs(1));
    d.crash_and_restart();
    let restarted = started.elapsed();
    assert_eq!(limits(), before, "limits changed across the restart");
    let values: Vec<&(String, String)> = before.values().collect();
    assert!(
        values.contains(&&((64u64 << 20).to_string(), "50000 100000".to_string())),
        "{before:?}"
    );
    assert_eq!(d.status()["running_calls"], 2);
    let out = sleeper.wait_with_output().unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    let rec = read_record(Path::new("/tmp/adopt-t.json"));
    assert_eq!(rec["outcome"], "timeout", "{rec}");
    println!("timeout 30 s: ended after {took:?} (daemon restarted at {restarted:?})");
    assert!(
        took < restarted + Duration::from_secs(30),
        "the deadline restarted with the daemon: {took:?}"
    );
    let out = spinner.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    let rec = read_record(Path::new("/tmp/adopt-b.json"));
    assert_eq!(rec["outcome"], "cpu_budget_exceeded", "{rec}");
    let used = rec["accounting"]["cpu"]["usage_usec"].as_u64().unwrap();
    println!("cpu budget 15 s across a restart: used {used} us");
    assert!(
        (15_000_000..16_500_000).contains(&used),
        "the budget restarted with the daemon: used {used} us"
    );
}

/// A block device whose reads take 10 s (device-mapper `delay` over `zero`): a process
/// reading it with O_DIRECT sleeps uninterruptibly, and SIGKILL waits for the read.
/// `--noudevsync`: the VM runs no udev to confirm the device nodes.
struct SlowDevice;

impl SlowDevice {
    const PATH: &str = "/dev/mapper/agentcg-slow";

    fn create() -> SlowDevice {
        let run = |args: &[&str]| {
            let out = Command::new(args[0])
                .args(&args[1..])
                .output()
                .expect(args[0]);
            assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        };
        run(&["modprobe", "dm-delay"]);
        let _ = SlowDevice::remove();
        run(&[
            "dmsetup",
            "--noudevsync",
            "create",
            "agentcg-zero",
            "--table",
            "0 2048 zero",
        ]);
        // No udev in the VM: dmsetup makes the /dev/mapper nodes itself.
        run(&["dmsetup", "mknodes"]);
        run(&[
            "dmsetup",
            "--noudevsync",
            "create",
            "agentcg-slow",
            "--table",
            "0 2048 delay /dev/mapper/agentcg-zero 0 10000",
        ]);
        run(&["dmsetup", "mknodes"]);
        SlowDevice
    }

    fn remove() -> bool {
        ["agentcg-slow", "agentcg-zero"].iter().all(|n| {
            Command::new("dmsetup")
                .args(["--noudevsync", "remove", n])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }
}

impl Drop for SlowDevice {
    fn drop(&mut self) {
        SlowDevice::remove();
    }
}

/// Acceptance 2: a tool whose leftover process cannot be killed promptly (a read stuck
/// for 10 s) does not delay anyone: status and new calls answer at their usual speed
/// while its cgroup waits to be removed; the record is there at once, the cgroup goes
/// once the process does.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn lifecycle_process_stuck_in_the_kernel_does_not_stall_the_daemon() {
    let _dev = SlowDevice::create();
    let d = Daemon::start("stuck");
    let timed = |args: &[&str]| {
        let t = Instant::now();
        let out = d.agentcg(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        t.elapsed()
    };
    let usual = (0..3).map(|_| timed(&["run", "--", "true"])).max().unwrap();
    let script = format!(
        "dd if={} of=/dev/null bs=4096 count=1 iflag=direct </dev/null >/dev/null 2>&1 & \
         sleep 1; grep -q '^State:.D' /proc/$!/status || exit 42",
        SlowDevice::PATH
    );
    let t = Instant::now();
    let out = d.agentcg(&[
        "run",
        "--record",
        "/tmp/stuck.json",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "dd was not in D state: {}",
        stderr(&out)
    );
    let rec = read_record(Path::new("/tmp/stuck.json"));
    assert_eq!(rec["leftover_killed"], 1, "{rec}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the call's end waited for dd"
    );
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        worst = worst
            .max(timed(&["status"]))
            .max(timed(&["run", "--", "true"]));
    }
    println!("usual call {usual:?}; worst status/call while dd is stuck: {worst:?}");
    assert!(
        worst < Duration::from_secs(1).max(usual * 3),
        "the daemon waited for the stuck process: {worst:?}"
    );
    let status = d.status();
    let stuck = rec["cgroup"].as_str().unwrap();
    let pending = status["reaper"]["pending"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        pending.iter().any(|p| p == stuck),
        "the stuck cgroup waits in the reaper: {status}"
    );
    assert!(Path::new(stuck).exists());
    let start = Instant::now();
    while !Daemon::child_cgroups(&d.calls_dir("default")).is_empty() {
        if start.elapsed() > Duration::from_secs(60) {
            let left: Vec<String> = Daemon::child_cgroups(&d.calls_dir("default"))
                .iter()
                .map(|c| {
                    let procs = std::fs::read_to_string(c.join("cgroup.procs")).unwrap_or_default();
                    let states: Vec<String> = procs
                        .split_whitespace()
                        .map(|p| {
                            let st = std::fs::read_to_string(format!("/proc/{p}/status"))
                                .unwrap_or_default();
                            let line = st.lines().find(|l| l.starts_with("State:")).unwrap_or("");
                            let stack = std::fs::read_to_string(format!("/proc/{p}/stack"))
                                .unwrap_or_default();
                            format!("pid {p} {line}\n{stack}")
                        })
                        .collect();
                    format!("{}: {}", c.display(), states.join("; "))
                })
                .collect();
            panic!(
                "call cgroups not removed after 60 s: {left:#?}\nreaper: {}\n{}",
                d.status()["reaper"],
                log_tail(&d)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for("the reaper done", Duration::from_secs(5), || {
        d.status()["reaper"]["pending"] == serde_json::json!([])
    });
}

/// How SQLite, or the system, says the disk is full.
fn disk_full(text: &str) -> bool {
    text.contains("disk is full") || text.contains("No space left")
}

/// Acceptance 3: the history's disk fills up. The call runs, its client gets its
/// record and a warning, the log and status say what failed, nothing leaks, and the
/// record reaches the disk once there is room again.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn lifecycle_full_history_disk_is_loud_and_loses_nothing() {
    let state = Path::new("/tmp/agentcg-full-state");
    std::fs::create_dir_all(state).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(state)
        .status()
        .unwrap();
    assert!(
        mount.success(),
        "mounting a small tmpfs on {}",
        state.display()
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(state);
    let d = Daemon::start("full");
    assert_eq!(d.state_dir, state);
    let out = d.agentcg(&["run", "--record", "/tmp/full-1.json", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Fill the disk.
    let filler = state.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4096", "count=1000"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    // The database's last WAL pages may still have room for a record or two.
    let mut made = vec![1];
    let mut failed_id = None;
    for i in 2..10 {
        let record = format!("/tmp/full-{i}.json");
        let out = d.agentcg(&["run", "--record", &record, "--", "sh", "-c", "exit 4"]);
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        let rec = read_record(Path::new(&record));
        assert_eq!(rec["outcome"], "failed");
        let id = rec["call_id"].as_u64().unwrap();
        made.push(id);
        let err = stderr(&out);
        if err.contains("warning") {
            assert!(disk_full(&err), "{err}");
            failed_id = Some(id);
            break;
        }
    }
    let id = failed_id.expect("no history write failed on a full disk");
    let status = d.status();
    let last = status["history"]["last_error"].as_str().unwrap_or_default();
    assert!(disk_full(last), "{status}");
    assert!(status["history"]["pending"].as_u64() >= Some(1), "{status}");
    wait_for("the call's cgroup removed", Duration::from_secs(10), || {
        Daemon::child_cgroups(&d.calls_dir("default")).is_empty()
    });
    let log = std::fs::read_to_string(d.log_path()).unwrap();
    assert!(log.contains("record not written"), "{log}");
    let (code, shown) = d.http("GET", &format!("/v1/calls/{id}"), "");
    assert_eq!(
        (code, &shown["outcome"]),
        (200, &serde_json::json!("failed"))
    );
    // Room again: the retry writes it.
    std::fs::remove_file(&filler).unwrap();
    wait_for("the record on disk", Duration::from_secs(10), || {
        d.status()["history"]["pending"] == 0
    });
    let records = d.history(&[]);
    let ids: Vec<u64> = records
        .iter()
        .map(|r| r["call_id"].as_u64().unwrap())
        .collect();
    let first = read_record(Path::new("/tmp/full-1.json"))["call_id"]
        .as_u64()
        .unwrap();
    made[0] = first;
    let mut sorted = ids.clone();
    sorted.sort();
    made.sort();
    assert_eq!(sorted, made, "each call once, none lost");
}
