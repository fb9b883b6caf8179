//! What `GET /v1/status` reports: kernel features and the mode each part runs in.

use serde::Serialize;

use agentcg_core::probe::{self, KernelFeatures, PSI_MEMORY, SCHED_EXT_STATE};

use crate::args::Args;

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
    pub modes: Vec<Mode>,
}

impl Status {
    pub fn probe(args: &Args) -> Status {
        let kernel = probe::probe(&args.root, SCHED_EXT_STATE.as_ref(), PSI_MEMORY.as_ref());
        let modes = modes(&kernel);
        Status {
            version: env!("CARGO_PKG_VERSION"),
            root: args.root.display().to_string(),
            kernel,
            modes,
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
            part: "cpu",
            mode: if has("cpu") {
                "kernel cpu controller (cpu.weight, cpu.max)".into()
            } else {
                "none: the cpu controller is not enabled for agentcg's subtree".into()
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
            mode: if has("pids") { "pids.max".into() } else { "none: pids controller missing".into() },
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
