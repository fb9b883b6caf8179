//! Runs of our BPF programs that the kernel skipped: a tracing program (tp_btf, fentry,
//! fexit) does not run while another instance of it is active on the same CPU, and
//! the kernel counts each such skip in the program's `bpf_prog_info.recursion_misses`.
//! A skipped exec, exit or memory event is invisible to agentcg; the count says how
//! often that happened (docs/METRICS.md, `agentcg_bpf_program_missed_runs_total`).

use std::os::fd::AsFd;

use libbpf_rs::Link;
use libbpf_rs::query::{LinkInfo, ProgInfoIter};

/// The ids of the programs behind `links`, to find them again in the kernel's list.
pub(crate) fn program_ids(links: &[Link]) -> Vec<u32> {
    links
        .iter()
        .filter_map(|l| LinkInfo::from_fd(l.as_fd()).ok())
        .map(|info| info.prog_id)
        .collect()
}

/// The runs the kernel skipped, summed over the programs `ids` (one pass over the
/// kernel's loaded programs).
pub(crate) fn missed_runs(ids: &[u32]) -> u64 {
    ProgInfoIter::default()
        .filter(|p| ids.contains(&p.id))
        .map(|p| p.recursion_misses)
        .sum()
}
