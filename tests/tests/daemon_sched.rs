//! agentcgd with the sched_ext scheduler on the real kernel: CPU budgets end calls
//! with `cpu_budget_exceeded`, and a scheduler exit is reported and answered by a
//! reload or a fallback while running calls keep their limits.

use std::path::Path;
use std::time::Duration;

use agentcg_vmtests::{Daemon, read_record, wait_for};

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn daemon_runs_the_sched_ext_scheduler() {
    let d = Daemon::start("schedon");
    let v = d.status();
    assert_eq!(v["scheduler"]["active"], "sched_ext", "{v}");
    let state = std::fs::read_to_string("/sys/kernel/sched_ext/state").unwrap();
    assert_eq!(state.trim(), "enabled");
    let ops = std::fs::read_to_string("/sys/kernel/sched_ext/root/ops").unwrap_or_default();
    assert!(ops.starts_with("agentcg_sched"), "{ops}");
}

/// Acceptance (issue 3, 5): a 2 s CPU budget on a busy call; the policy's
/// on_budget_exceeded = kill ends it with outcome cpu_budget_exceeded.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn cpu_budget_kills_the_call_and_says_why() {
    let d = Daemon::start("budget2");
    let out = d.agentcg(&[
        "run",
        "--intent",
        "cpu.budget=2s,timeout=120s",
        "--record",
        "/tmp/budget2.json",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = read_record(Path::new("/tmp/budget2.json"));
    assert_eq!(r["outcome"], "cpu_budget_exceeded", "{r}");
    assert_eq!(r["feedback"]["limit"], "cpu.budget");
    let used = r["accounting"]["cpu"]["usage_usec"].as_u64().unwrap();
    println!(
        "cpu budget 2 s: call used {:.3} s of CPU before the kill",
        used as f64 / 1e6
    );
    assert!(
        (2_000_000..2_600_000).contains(&used),
        "used {used} us for a 2 s budget"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("used up its CPU budget"), "{err}");
}

/// Acceptance (issue 3, 7): the scheduler is forced out (SysRq-S); the daemon reports
/// the reason and reloads it; a running call keeps its limits throughout.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn scheduler_exit_is_reported_and_reloaded() {
    let d = Daemon::start("schedexit");
    let mut call = d
        .cli()
        .args([
            "run",
            "--intent",
            "mem.max=96M,cpu=0.5,pids=40",
            "--record",
            "/tmp/schedexit.json",
            "--",
            "sleep",
            "6",
        ])
        .spawn()
        .unwrap();
    let calls = d.calls_dir("default");
    wait_for("the call cgroup", Duration::from_secs(30), || {
        !Daemon::child_cgroups(&calls).is_empty()
    });
    let cg = Daemon::child_cgroups(&calls).remove(0);
    std::fs::write("/proc/sysrq-trigger", "S").unwrap();
    wait_for("the exit to be reported", Duration::from_secs(30), || {
        !d.status()["scheduler"]["last_exit"].is_null()
    });
    wait_for("the reload", Duration::from_secs(60), || {
        let v = d.status();
        v["scheduler"]["reloads"] == 1 && v["scheduler"]["active"] == "sched_ext"
    });
    let v = d.status();
    println!("scheduler exit: {}", v["scheduler"]);
    assert_eq!(v["scheduler"]["reloads"], 1);
    assert!(
        v["scheduler"]["last_exit"]["kind"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );
    let read = |f: &str| {
        std::fs::read_to_string(cg.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("memory.max"), (96u64 << 20).to_string());
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(read("pids.max"), "40");
    assert!(call.wait().unwrap().success());
    assert_eq!(
        read_record(Path::new("/tmp/schedexit.json"))["outcome"],
        "ok"
    );
}

/// With on_scheduler_exit = "fallback" the daemon stays on the kernel cpu controller.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn scheduler_exit_falls_back_when_the_policy_says_so() {
    let policy = agentcg_core::policy::DEFAULT_POLICY.replace(
        "on_scheduler_exit = \"reload\"",
        "on_scheduler_exit = \"fallback\"",
    );
    std::fs::write("/tmp/fallback-policy.toml", policy).unwrap();
    let d = Daemon::start_with("schedfb", &["--policy", "/tmp/fallback-policy.toml"]);
    assert_eq!(d.status()["scheduler"]["active"], "sched_ext");
    std::fs::write("/proc/sysrq-trigger", "S").unwrap();
    wait_for("the fallback", Duration::from_secs(30), || {
        d.status()["scheduler"]["active"] == "kernel"
    });
    let v = d.status();
    assert!(
        v["scheduler"]["detail"]
            .as_str()
            .unwrap()
            .contains("fell back"),
        "{v}"
    );
    let cpu = v["modes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["part"] == "cpu")
        .unwrap()
        .clone();
    assert!(
        cpu["mode"]
            .as_str()
            .unwrap()
            .starts_with("kernel cpu controller"),
        "{cpu}"
    );
    let out = d.agentcg(&["run", "--", "true"]);
    assert!(out.status.success(), "calls still run after the fallback");
}
