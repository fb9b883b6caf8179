//! The systemd units in systemd/ pass `systemd-analyze verify` without a single
//! warning, with ExecStart= pointing at the agentcgd this build made (verify checks that
//! the command exists). systemd-analyze is installed by xtask/provision.sh.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 2] = ["agentcgd.service", "agentcgd.socket"];
const INSTALLED_BIN: &str = "/usr/local/bin/agentcgd";

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../systemd")
}

/// Copies the units into a temporary directory, ExecStart= on this build's agentcgd,
/// with `edit` applied to the service; returns what `systemd-analyze verify` printed.
fn verify(edit: impl Fn(String) -> String) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    for unit in UNITS {
        let text = std::fs::read_to_string(units_dir().join(unit))
            .unwrap_or_else(|e| panic!("reading systemd/{unit}: {e}"));
        let text = text.replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_agentcgd"));
        let text = if unit.ends_with(".service") {
            edit(text)
        } else {
            text
        };
        std::fs::write(dir.path().join(unit), text).expect("write unit");
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(UNITS.map(|u| dir.path().join(u)))
        .output()
        .expect("systemd-analyze (package systemd; run xtask/provision.sh build)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() || !text.is_empty(),
        "verify failed silently"
    );
    text
}

#[test]
fn the_units_verify_without_a_warning() {
    let text = verify(|s| s);
    assert!(text.trim().is_empty(), "systemd-analyze verify:\n{text}");
}

#[test]
fn verify_reports_a_broken_unit() {
    let text = verify(|s| s.replace("Type=notify", "Type=notify\nWatchdogSecs=30s"));
    assert!(text.contains("WatchdogSecs"), "{text}");
}

#[test]
fn the_service_runs_the_daemon_the_way_its_comments_say() {
    let service = std::fs::read_to_string(units_dir().join("agentcgd.service")).expect("read");
    for line in [
        "Type=notify",
        "Delegate=cpu memory pids",
        "DelegateSubgroup=daemon",
        "KillMode=process",
        "ProtectSystem=strict",
        "ExecStart=/usr/local/bin/agentcgd --policy /etc/agentcg/policy.toml --stop-ends-calls",
    ] {
        assert!(
            service.lines().any(|l| l == line),
            "agentcgd.service lacks `{line}`"
        );
    }
    // Every capability granted is explained on a comment line of its own.
    let granted = service
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet=");
    for cap in granted.split_whitespace() {
        assert!(
            service
                .lines()
                .any(|l| l.starts_with('#') && l.contains(&format!("{cap}:"))
                    || l.starts_with('#') && l.contains(&format!("{cap},"))),
            "{cap} is granted without a comment saying why"
        );
    }
}
