//! The cpu controller: weight, bandwidth, and `cpu.stat` usage.

use super::{Cgroup, CgroupError, flat_get};
use serde::{Deserialize, Serialize};

pub const WEIGHT: &str = "cpu.weight";
pub const MAX: &str = "cpu.max";
pub const STAT: &str = "cpu.stat";
/// `cpu.weight` of a new cgroup.
pub const DEFAULT_WEIGHT: u16 = 100;

pub fn set_weight(cg: &Cgroup, weight: u16) -> Result<(), CgroupError> {
    cg.write(WEIGHT, &weight.to_string())
}

/// Writes `cpu.max` (see [`crate::plan::cpu_max_value`]).
pub fn set_max(cg: &Cgroup, millicpus: Option<u32>) -> Result<(), CgroupError> {
    cg.write(MAX, &crate::plan::cpu_max_value(millicpus))
}

/// CPU time used by a cgroup's subtree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuUsage {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

pub fn usage(cg: &Cgroup) -> Result<CpuUsage, CgroupError> {
    let pairs = cg.read_flat(STAT)?;
    Ok(CpuUsage {
        usage_usec: flat_get(&pairs, "usage_usec"),
        user_usec: flat_get(&pairs, "user_usec"),
        system_usec: flat_get(&pairs, "system_usec"),
        nr_throttled: flat_get(&pairs, "nr_throttled"),
        throttled_usec: flat_get(&pairs, "throttled_usec"),
    })
}
