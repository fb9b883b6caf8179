//! BTF capability probes: which sched_ext and memcg BPF features the running kernel
//! offers (docs/ARCHITECTURE.md#capability-tiers; what 7.3.4 has:
//! docs/ARCHITECTURE.md#kernel-734).
//!
//! Reads a BTF blob (or an ELF file with a `.BTF` section) through libbpf; never loads
//! anything, so it needs no privilege beyond reading the file. The kernel's BTF path is
//! a parameter; [`VMLINUX_BTF`] is the one place that names the real one.

use std::path::Path;

use libbpf_rs::Btf;
use libbpf_rs::btf::types::{Func, Struct};
use libbpf_rs::btf::{BtfKind, BtfType, TypeId};
use serde::Serialize;

use crate::error::BpfError;

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The memcg kfuncs (Linux 7.0+) agentcg can use, in the order they are reported.
pub const MEMCG_KFUNCS: [&str; 8] = [
    "bpf_get_mem_cgroup",
    "bpf_get_root_mem_cgroup",
    "bpf_put_mem_cgroup",
    "bpf_mem_cgroup_usage",
    "bpf_mem_cgroup_memory_events",
    "bpf_mem_cgroup_page_state",
    "bpf_mem_cgroup_vm_events",
    "bpf_mem_cgroup_flush_stats",
];

/// What the kernel's BTF says is available.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BtfFeatures {
    /// `struct sched_ext_ops` exists: a sched_ext scheduler can be loaded.
    pub sched_ext_ops: bool,
    /// `struct sched_ext_ops` has `cgroup_set_bandwidth` (6.17+): cgroup `cpu.max`
    /// changes reach the BPF scheduler.
    pub cgroup_set_bandwidth: bool,
    /// Which of [`MEMCG_KFUNCS`] exist as BTF functions, in that order.
    pub memcg_kfuncs: Vec<String>,
    /// `struct memcg_bpf_ops` exists (an unmerged RFC as of 7.3).
    pub memcg_bpf_ops: bool,
    /// `struct bpf_oom_ops` exists (an unmerged RFC as of 7.3).
    pub bpf_oom_ops: bool,
}

impl BtfFeatures {
    /// All of [`MEMCG_KFUNCS`] are present.
    pub fn has_all_memcg_kfuncs(&self) -> bool {
        self.memcg_kfuncs.len() == MEMCG_KFUNCS.len()
    }
}

/// Probes the BTF at `path` (usually [`VMLINUX_BTF`]).
pub fn probe_btf(path: &Path) -> Result<BtfFeatures, BpfError> {
    let btf = Btf::from_path(path).map_err(|source| BpfError::Btf {
        path: path.to_path_buf(),
        source,
    })?;
    let found = scan(
        &btf,
        &[
            ("sched_ext_ops", Some("cgroup_set_bandwidth")),
            ("memcg_bpf_ops", None),
            ("bpf_oom_ops", None),
        ],
        &MEMCG_KFUNCS,
    );
    Ok(BtfFeatures {
        sched_ext_ops: found.structs[0].0,
        cgroup_set_bandwidth: found.structs[0].1,
        memcg_bpf_ops: found.structs[1].0,
        bpf_oom_ops: found.structs[2].0,
        memcg_kfuncs: MEMCG_KFUNCS
            .iter()
            .zip(&found.funcs)
            .filter(|(_, present)| **present)
            .map(|(name, _)| (*name).to_owned())
            .collect(),
    })
}

/// Result of [`scan`], index-aligned with its queries.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    /// Per struct query: (struct with a body exists, the member exists).
    structs: Vec<(bool, bool)>,
    /// Per function query: a `FUNC` of that name exists.
    funcs: Vec<bool>,
}

/// One pass over all types, looking for complete structs (optionally with a member) and
/// functions by name. A forward declaration does not count as the struct.
fn scan(btf: &Btf<'_>, structs: &[(&str, Option<&str>)], funcs: &[&str]) -> Found {
    let mut found = Found {
        structs: vec![(false, false); structs.len()],
        funcs: vec![false; funcs.len()],
    };
    for id in 1..btf.len() {
        let Some(ty) = btf.type_by_id::<BtfType<'_>>(TypeId::from(id as u32)) else {
            continue;
        };
        let Some(name) = ty.name().and_then(|n| n.to_str()) else {
            continue;
        };
        match ty.kind() {
            BtfKind::Struct => {
                for (i, (want, member)) in structs.iter().enumerate() {
                    if name != *want {
                        continue;
                    }
                    let Ok(s) = Struct::try_from(ty) else {
                        continue;
                    };
                    found.structs[i].0 = true;
                    if let Some(member) = member {
                        found.structs[i].1 |= s
                            .iter()
                            .any(|m| m.name.and_then(|n| n.to_str()) == Some(*member));
                    }
                }
            }
            BtfKind::Func => {
                if Func::try_from(ty).is_ok()
                    && let Some(i) = funcs.iter().position(|f| *f == name)
                {
                    found.funcs[i] = true;
                }
            }
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compiled telemetry object: its BTF is deterministic (we build it), so the
    /// scanner can be checked on the host without the target kernel.
    fn object_btf() -> Btf<'static> {
        Btf::from_path(concat!(env!("OUT_DIR"), "/telemetry.bpf.o")).expect("object has BTF")
    }

    #[test]
    fn scan_finds_structs_members_and_funcs_in_the_object() {
        let btf = object_btf();
        let found = scan(
            &btf,
            &[
                ("call_counters", Some("first_exec_ns")),
                ("call_counters", Some("no_such_member")),
                ("task_struct", Some("tgid")),
                ("sched_ext_ops", None),
            ],
            &[
                "tele_exec",
                "tele_exit",
                "bpf_get_mem_cgroup",
                "call_counters",
            ],
        );
        assert_eq!(
            found,
            Found {
                structs: vec![(true, true), (true, false), (true, true), (false, false)],
                funcs: vec![true, true, false, false],
            }
        );
    }

    #[test]
    fn probe_of_a_btf_without_kernel_types_reports_nothing() {
        let f = probe_btf(Path::new(concat!(env!("OUT_DIR"), "/telemetry.bpf.o")))
            .expect("probe the object");
        assert_eq!(f, BtfFeatures::default());
        assert!(!f.has_all_memcg_kfuncs());
    }

    #[test]
    fn probe_of_a_missing_file_names_the_path() {
        let err = probe_btf(Path::new("/nonexistent/agentcg/vmlinux")).expect_err("no file");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/agentcg/vmlinux"), "{msg}");
        assert!(matches!(err, BpfError::Btf { .. }));
    }

    #[test]
    fn probe_of_the_host_kernel_is_self_consistent() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: {VMLINUX_BTF} missing on this host");
            return;
        }
        let f = probe_btf(Path::new(VMLINUX_BTF)).expect("host BTF parses");
        assert!(f.sched_ext_ops || !f.cgroup_set_bandwidth, "{f:?}");
        let order: Vec<_> = MEMCG_KFUNCS
            .iter()
            .filter(|k| f.memcg_kfuncs.iter().any(|m| m == *k))
            .collect();
        assert_eq!(order.len(), f.memcg_kfuncs.len(), "{f:?}");
    }
}
