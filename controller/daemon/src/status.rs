//! What `GET /v1/status` reports: kernel features and the mode each part runs in.

use serde::Serialize;

use agentcg_bpf::probe::{BtfFeatures, VMLINUX_BTF, probe_btf};
use agentcg_core::probe::{self, KernelFeatures, PSI_MEMORY, SCHED_EXT_STATE};

use std::path::Path;

use crate::sched::SharedStatus;

/// The mode of one part of agentcg and why.
#[derive(Debug, Clone, Serialize)]
pub struct Mode {
    pub part: &'static str,
    pub mode: String,
}

/// Probed once at start.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub root: String,
    pub kernel: KernelFeatures,
    /// BTF-level features (kfuncs, struct_ops); `None` when the BTF is unreadable.
    pub btf: Option<BtfFeatures>,
    pub modes: Vec<Mode>,
    /// The CPU scheduler's live state (changes when it exits or reloads).
    #[serde(skip)]
    pub sched: SharedStatus,
    /// The memory response's live state.
    #[serde(skip)]
    pub memory: crate::memory::SharedMemoryStatus,
}

impl Status {
    /// `telemetry` is whether the BPF telemetry programs loaded (or why not).
    pub fn probe(root: &Path, telemetry: Result<(), String>) -> Status {
        let kernel = probe::probe(root, SCHED_EXT_STATE.as_ref(), PSI_MEMORY.as_ref());
        let btf = probe_btf(VMLINUX_BTF.as_ref())
            .map_err(|e| tracing::warn!("BTF probe: {e}"))
            .ok();
        let mut modes = modes(&kernel);
        modes.push(Mode {
            part: "telemetry",
            mode: match telemetry {
                Ok(()) => "BPF tracepoints (exec/fork/exit per call, ring buffer); a call ends when its tool exits".into(),
                Err(why) => format!("off: {why}"),
            },
        });
        modes.push(Mode {
            part: "memcg-bpf",
            mode: match &btf {
                Some(b) if b.memcg_bpf_ops => "memcg_bpf_ops present (not used yet)".into(),
                Some(b) => format!(
                    "memcg struct_ops absent; {} of 8 memcg kfuncs present",
                    b.memcg_kfuncs.len()
                ),
                None => "unknown: kernel BTF unreadable".into(),
            },
        });
        Status {
            version: env!("CARGO_PKG_VERSION"),
            root: root.display().to_string(),
            kernel,
            btf,
            modes,
            sched: SharedStatus::default(),
            memory: crate::memory::SharedMemoryStatus::default(),
        }
    }
}

/// Which mechanism each part uses, given the kernel's features.
pub fn modes(k: &KernelFeatures) -> Vec<Mode> {
    let has = |c: &str| k.controllers.iter().any(|x| x == c);
    let mut modes = vec![
        Mode {
            part: "spawn",
            mode: if k.clone_into_cgroup {
                "clone3(CLONE_INTO_CGROUP): tools start inside their cgroup".into()
            } else {
                "unavailable: kernel older than 5.7; agentcg run cannot start tools".into()
            },
        },
        Mode {
            part: "memory",
            mode: if has("memory") {
                "kernel memcg limits (memory.high, memory.max, memory.oom.group)".into()
            } else {
                "none: the memory controller is not enabled for agentcg's subtree".into()
            },
        },
        Mode {
            part: "pids",
            mode: if has("pids") {
                "pids.max".into()
            } else {
                "none: pids controller missing".into()
            },
        },
    ];
    modes.push(Mode {
        part: "accounting",
        mode: format!(
            "memory.peak {}, pids.peak {}, PSI {}",
            yes(k.memory_peak),
            yes(k.pids_peak),
            yes(k.psi)
        ),
    });
    modes
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no (not reported)" }
}
