//! The policy file as a Kubernetes ConfigMap volume holds it (deploy/kubernetes):
//! `policy.toml -> ..data/policy.toml`, `..data -> ..<timestamp>/`, and an update
//! writes a new timestamped directory and renames a new `..data` symlink over the old
//! one; `policy.toml` itself never changes. agentcgd reloads on that swap, and on a
//! plain write-and-rename over the file, with no SIGHUP.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use agentcg_core::policy::{DEFAULT_POLICY, Policy};
use agentcg_vmtests::{Daemon, wait_for};

fn text_with_pids(pids: u32) -> String {
    DEFAULT_POLICY.replace("pids = 4096", &format!("pids = {pids}"))
}

fn session_pids(d: &Daemon) -> u32 {
    let v = d.get_ok("/v1/policy");
    let text = v["text"].as_str().expect("policy text");
    Policy::parse(text, "daemon")
        .expect("valid policy in force")
        .session
        .pids
}

/// One kubelet update: the new text in a new timestamped directory, `..data` swapped
/// to it by rename, the old directory removed.
fn configmap_update(dir: &Path, generation: u32, text: &str) {
    let stamp = format!("..2026_12_06_00_00_0{generation}.1");
    std::fs::create_dir(dir.join(&stamp)).expect("timestamped dir");
    std::fs::write(dir.join(&stamp).join("policy.toml"), text).expect("write");
    symlink(&stamp, dir.join("..data_tmp")).expect("..data_tmp");
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).expect("remove the old generation");
    }
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn policy_configmap_swap_and_rename_over_reload() {
    let dir = Path::new("/tmp/agentcg-policy-configmap");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    configmap_update(dir, 1, &text_with_pids(4096));
    symlink("..data/policy.toml", dir.join("policy.toml")).expect("policy.toml link");
    let file = dir.join("policy.toml").display().to_string();
    let d = Daemon::start_with("policy_configmap", &["--policy", &file]);
    assert_eq!(session_pids(&d), 4096);

    configmap_update(dir, 2, &text_with_pids(777));
    wait_for(
        "the ConfigMap swap to reload the policy",
        Duration::from_secs(10),
        || session_pids(&d) == 777,
    );
    let reload = &d.status()["policy"]["last_reload"];
    assert_eq!(reload["ok"], true, "{reload}");

    // An invalid update is refused and the policy in force stays.
    configmap_update(
        dir,
        3,
        &text_with_pids(777).replace("pids = 777", "pids = \"many\""),
    );
    wait_for(
        "the bad update to be refused",
        Duration::from_secs(10),
        || d.status()["policy"]["last_reload"]["ok"] == false,
    );
    assert_eq!(session_pids(&d), 777);

    // Outside Kubernetes: a new file renamed over the policy (what editors do).
    std::fs::remove_file(dir.join("policy.toml")).expect("unlink");
    std::fs::write(dir.join("policy.toml"), text_with_pids(4096)).expect("plain file");
    wait_for("the plain file to reload", Duration::from_secs(10), || {
        session_pids(&d) == 4096
    });
    std::fs::write(dir.join(".policy.toml.new"), text_with_pids(555)).expect("write new");
    std::fs::rename(dir.join(".policy.toml.new"), dir.join("policy.toml")).expect("rename over");
    wait_for("the rename-over to reload", Duration::from_secs(10), || {
        session_pids(&d) == 555
    });
    drop(d);
    let _ = std::fs::remove_dir_all(dir);
}
