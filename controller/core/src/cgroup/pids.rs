//! The pids controller: the process limit and how often forks hit it.

use super::{Cgroup, CgroupError, flat_get};

pub const MAX: &str = "pids.max";
pub const PEAK: &str = "pids.peak";
pub const EVENTS: &str = "pids.events";
pub const CURRENT: &str = "pids.current";

pub fn set_max(cg: &Cgroup, max: u32) -> Result<(), CgroupError> {
    cg.write(MAX, &max.to_string())
}

/// `pids.peak`, or `None` on kernels without it (< 6.1).
pub fn peak(cg: &Cgroup) -> Option<u64> {
    cg.read_u64(PEAK).ok()
}

/// `pids.current`: the tasks in the cgroup now.
pub fn current(cg: &Cgroup) -> Result<u64, CgroupError> {
    cg.read_u64(CURRENT)
}

/// How many forks failed because of pids.max.
pub fn max_events(cg: &Cgroup) -> Result<u64, CgroupError> {
    Ok(flat_get(&cg.read_flat(EVENTS)?, "max"))
}
