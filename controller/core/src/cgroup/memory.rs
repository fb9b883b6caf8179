//! The memory controller: limits, protection, and the final accounting files.

use super::{Cgroup, CgroupError, flat_get};
use serde::{Deserialize, Serialize};

pub const HIGH: &str = "memory.high";
pub const MAX: &str = "memory.max";
pub const MIN: &str = "memory.min";
pub const LOW: &str = "memory.low";
pub const PEAK: &str = "memory.peak";
pub const CURRENT: &str = "memory.current";
pub const EVENTS: &str = "memory.events";
pub const EVENTS_LOCAL: &str = "memory.events.local";
pub const OOM_GROUP: &str = "memory.oom.group";
pub const SWAP_MAX: &str = "memory.swap.max";
pub const RECLAIM: &str = "memory.reclaim";

/// `memory.events` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEvents {
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

impl MemoryEvents {
    /// Counters that grew from `before` to `self`.
    pub fn since(&self, before: &MemoryEvents) -> MemoryEvents {
        MemoryEvents {
            low: self.low.saturating_sub(before.low),
            high: self.high.saturating_sub(before.high),
            max: self.max.saturating_sub(before.max),
            oom: self.oom.saturating_sub(before.oom),
            oom_kill: self.oom_kill.saturating_sub(before.oom_kill),
            oom_group_kill: self.oom_group_kill.saturating_sub(before.oom_group_kill),
        }
    }
}

/// A byte limit as written to cgroupfs (`max` for none).
pub fn limit_value(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "max".to_string(), |b| b.to_string())
}

pub fn set_max(cg: &Cgroup, bytes: Option<u64>) -> Result<(), CgroupError> {
    cg.write(MAX, &limit_value(bytes))
}

pub fn set_high(cg: &Cgroup, bytes: Option<u64>) -> Result<(), CgroupError> {
    cg.write(HIGH, &limit_value(bytes))
}

pub fn set_min(cg: &Cgroup, bytes: u64) -> Result<(), CgroupError> {
    cg.write(MIN, &bytes.to_string())
}

pub fn set_low(cg: &Cgroup, bytes: u64) -> Result<(), CgroupError> {
    cg.write(LOW, &bytes.to_string())
}

/// Kill the whole cgroup on OOM, never a single process of it.
pub fn set_oom_group(cg: &Cgroup) -> Result<(), CgroupError> {
    cg.write(OOM_GROUP, "1")
}

/// No swap for a call: its memory.max is then the real ceiling. Ignored when the
/// kernel has no swap controller (the file is absent).
pub fn disable_swap(cg: &Cgroup) -> Result<(), CgroupError> {
    if cg.path().join(SWAP_MAX).exists() {
        cg.write(SWAP_MAX, "0")
    } else {
        Ok(())
    }
}

pub fn events(cg: &Cgroup, file: &str) -> Result<MemoryEvents, CgroupError> {
    let pairs = cg.read_flat(file)?;
    Ok(MemoryEvents {
        low: flat_get(&pairs, "low"),
        high: flat_get(&pairs, "high"),
        max: flat_get(&pairs, "max"),
        oom: flat_get(&pairs, "oom"),
        oom_kill: flat_get(&pairs, "oom_kill"),
        oom_group_kill: flat_get(&pairs, "oom_group_kill"),
    })
}

/// `memory.peak`, or `None` on kernels without it (< 5.19).
pub fn peak(cg: &Cgroup) -> Option<u64> {
    cg.read_u64(PEAK).ok()
}
