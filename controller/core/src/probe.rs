//! Kernel feature probes from files (cgroupfs, procfs, sysfs). Probe, don't assume:
//! each missing feature is reported with what it disables. BTF-level probes (memcg
//! kfuncs, struct_ops) live in the BPF crate and are merged by the daemon.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where sched_ext publishes its state.
pub const SCHED_EXT_STATE: &str = "/sys/kernel/sched_ext/state";
/// PSI for memory.
pub const PSI_MEMORY: &str = "/proc/pressure/memory";

/// What the kernel offers agentcg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFeatures {
    pub kernel_release: String,
    /// Controllers available in agentcg's subtree.
    pub controllers: Vec<String>,
    /// `disabled`, `enabled`, ... or `None` without sched_ext.
    pub sched_ext_state: Option<String>,
    pub psi: bool,
    pub memory_reclaim: bool,
    pub memory_peak: bool,
    pub pids_peak: bool,
    /// clone3(CLONE_INTO_CGROUP): Linux ≥ 5.7.
    pub clone_into_cgroup: bool,
}

/// Probes the kernel; `root` is agentcg's (non-root) cgroup.
pub fn probe(root: &Path, sched_ext_state: &Path, psi: &Path) -> KernelFeatures {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    KernelFeatures {
        clone_into_cgroup: version_at_least(&release, (5, 7)),
        kernel_release: release,
        controllers: std::fs::read_to_string(root.join(crate::cgroup::CONTROLLERS))
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        sched_ext_state: std::fs::read_to_string(sched_ext_state)
            .ok()
            .map(|s| s.trim().to_string()),
        psi: std::fs::read_to_string(psi).is_ok(),
        memory_reclaim: root.join(crate::cgroup::memory::RECLAIM).exists(),
        memory_peak: root.join(crate::cgroup::memory::PEAK).exists(),
        pids_peak: root.join(crate::cgroup::pids::PEAK).exists(),
    }
}

/// Whether a release string such as `7.3.4+deb13-amd64` is at least `(major, minor)`.
pub fn version_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (it.next(), it.next()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_at_least("7.3.4+deb13-amd64", (5, 7)));
        assert!(version_at_least("5.7.0", (5, 7)));
        assert!(!version_at_least("5.6.19", (5, 7)));
        assert!(!version_at_least("garbage", (5, 7)));
    }

    #[test]
    fn probes_a_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(dir.path().join("memory.peak"), "0\n").unwrap();
        std::fs::write(dir.path().join("state"), "enabled\n").unwrap();
        let f = probe(
            dir.path(),
            &dir.path().join("state"),
            &dir.path().join("nopsi"),
        );
        assert_eq!(f.controllers, ["cpu", "memory", "pids"]);
        assert_eq!(f.sched_ext_state.as_deref(), Some("enabled"));
        assert!(f.memory_peak && !f.memory_reclaim && !f.psi);
    }
}
