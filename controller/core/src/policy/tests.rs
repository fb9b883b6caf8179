//! The policy's parsing and validation.

use super::*;

#[test]
fn embedded_default_policy_is_valid() {
    let p = Policy::default_policy();
    assert_eq!(p.session.memory, 4 << 30);
    assert_eq!(p.weight(Priority::High), 400);
    assert_eq!(p.weight(Priority::Low), 25);
    assert!(p.classes.iter().any(|c| c.name == "test"));
    assert_eq!(
        p.class_named("vcs").unwrap().intent.class.as_deref(),
        Some("vcs")
    );
}

#[test]
fn classification_follows_shell_segments() {
    let p = Policy::default_policy();
    let class = |cmd: &str| p.classify(cmd).map(|c| c.name.as_str());
    assert_eq!(class("python -m pytest tests/ -x"), Some("test"));
    assert_eq!(class("cd /testbed && python3 -m pytest -q"), Some("test"));
    assert_eq!(class("/usr/bin/python3.11 -m pytest"), Some("test"));
    assert_eq!(class("PYTHONPATH=. timeout 60 pytest a.py"), Some("test"));
    assert_eq!(class("git status"), Some("vcs"));
    assert_eq!(class("pip install -e ."), Some("install"));
    assert_eq!(class("cargo build --release"), Some("build"));
    assert_eq!(class("python script.py"), None);
    assert_eq!(class("pytestx"), None);
    assert_eq!(class(""), None);
}

#[test]
fn shell_commands_are_classified_by_their_command_string() {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        command_text(&v(&["/bin/bash", "-c", "pytest -x"])),
        "pytest -x"
    );
    assert_eq!(
        command_text(&v(&["bash", "-l", "-c", "git log"])),
        "git log"
    );
    assert_eq!(command_text(&v(&["sh", "-lc", "make"])), "make");
    assert_eq!(command_text(&v(&["sh", "script.sh"])), "sh script.sh");
    assert_eq!(
        command_text(&v(&["python", "-c", "print(1)"])),
        "python -c print(1)"
    );
}

#[test]
fn bad_policies_name_the_problem() {
    let good = DEFAULT_POLICY;
    let cases = [
        (
            good.replace("admission = \"clamp\"", "admission = \"maybe\""),
            "maybe",
        ),
        (
            good.replace("memory = \"4G\"", "memory = \"4Q\""),
            "session.memory",
        ),
        (good.replace("[caps]", "[caps]\nbogus = 1"), "bogus"),
        (
            good.replace("cpu_weight = 400", "cpu_weight = 0"),
            "cpu_weight",
        ),
        (
            good.replace("runtime_reserve = \"128M\"", "runtime_reserve = \"8G\""),
            "runtime_reserve",
        ),
        (
            good.replace(
                "intent = \"mem=64M,mem.max=512M,pids=256,timeout=10m\"",
                "intent = \"mem=zz\"",
            ),
            "class[4].intent",
        ),
        (
            good.replace("name = \"vcs\"", "name = \"Bad Name\""),
            "class[4].name",
        ),
        (good.replace("cpus = 64", "cpus = -1"), "caps.cpus"),
        (
            good.replace(
                "on_budget_exceeded = \"kill\"",
                "on_budget_exceeded = \"explode\"",
            ),
            "explode",
        ),
        (
            good.replace("pressure_at = 85", "pressure_at = 70"),
            "calm_below < pressure_at",
        ),
        (
            good.replace("critical_at = 95", "critical_at = 101"),
            "memory.critical_at",
        ),
        (
            good.replace("psi_window = \"1s\"", "psi_window = \"20s\""),
            "psi_window",
        ),
        (
            good.replace("psi_stall = \"100ms\"", "psi_stall = \"2s\""),
            "psi_stall",
        ),
        (
            good.replace("burst_step = \"128M\"", "burst_step = \"lots\""),
            "memory.burst_step",
        ),
        (
            good.replace("reclaim_percent = 10", "reclaim_percent = 0"),
            "reclaim_percent",
        ),
        (
            good.replace("calm_for = \"1s\"", "calm_for = \"soon\""),
            "memory.calm_for",
        ),
    ];
    for (text, needle) in cases {
        let err = Policy::parse(&text, "test").expect_err(needle).to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn history_keep_defaults_to_30_days_and_is_validated() {
    let thirty_days = Duration::from_secs(30 * 86_400);
    assert_eq!(Policy::default_policy().history.keep, thirty_days);
    let without: String = DEFAULT_POLICY
        .split("\n[history]")
        .next()
        .unwrap()
        .to_string();
    assert!(!without.contains("[history]"));
    let p = Policy::parse(&without, "t").unwrap();
    assert_eq!(p.history.keep, thirty_days);
    let with =
        |keep: &str| Policy::parse(&format!("{without}\n[history]\nkeep = \"{keep}\"\n"), "t");
    assert_eq!(
        with("7d").unwrap().history.keep,
        Duration::from_secs(7 * 86_400)
    );
    for bad in ["soon", "10m", ""] {
        let err = with(bad).unwrap_err().to_string();
        assert!(err.contains("history.keep"), "{bad}: {err}");
    }
    let unknown = format!("{without}\n[history]\nkeep = \"7d\"\nmax = 3\n");
    assert!(Policy::parse(&unknown, "t").is_err());
}
