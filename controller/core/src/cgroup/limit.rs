//! The memory limit the memory response defends: not only the `memory.max` of
//! agentcg's root, but the tightest limit the kernel enforces on it. Deployed below a
//! systemd slice or service, or in a container, the limit is usually an ancestor's
//! (`--root` inside a cgroup whose parent has `memory.max`); on a bare host it is what
//! the host has left, which memory used outside agentcg's tree eats into.
//!
//! Every limit is turned into room for agentcg: for a cgroup on the chain from the
//! root up to the cgroup2 mount, `memory.max` (or `memory.high`, where the kernel
//! starts throttling) minus that cgroup's usage, which includes what its other
//! children hold; for the host, `MemAvailable`. The effective limit is the root's usage
//! plus the smallest room: the root reaches it exactly when that cgroup reaches its
//! limit (or the host runs out), so `usage / limit` is how close the kernel is to
//! stepping in. [`effective`] decides from the values (pure); [`read`] reads them.
//! docs/POLICY.md (`[memory]`) describes what the response does with them.

use std::path::{Path, PathBuf};

use procfs::Current as _;
use serde::Serialize;

use super::memory::{CURRENT, HIGH, MAX};
use super::{Cgroup, CgroupError};

/// Cgroups climbed at most above the root (a guard against a path that never ends;
/// real hierarchies are a few levels deep).
const MAX_LEVELS: usize = 64;

/// One cgroup of the chain from agentcg's root (first) up to the cgroup2 mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    pub path: PathBuf,
    /// `memory.max`, `None` for `max`.
    pub max: Option<u64>,
    /// `memory.high`, `None` for `max`.
    pub high: Option<u64>,
    /// `memory.current`.
    pub usage: u64,
}

/// The host's memory (/proc/meminfo), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub total: u64,
    pub available: u64,
}

/// What sets the effective limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LimitSource {
    /// A cgroup's `memory.max`: the kernel OOM-kills there.
    #[serde(rename = "memory.max")]
    MemoryMax,
    /// A cgroup's `memory.high`: the kernel throttles and reclaims there.
    #[serde(rename = "memory.high")]
    MemoryHigh,
    /// The host's memory: `MemAvailable` is what is left.
    #[serde(rename = "host")]
    Host,
    /// Nothing known limits agentcg (no limit on the chain, /proc/meminfo unread).
    #[serde(rename = "none")]
    Unlimited,
}

/// The limit the response defends, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Defended {
    /// What sets it.
    pub by: LimitSource,
    /// The cgroup whose file sets it; `None` for the host.
    pub cgroup: Option<PathBuf>,
    /// That file's value, or the host's `MemTotal`.
    pub value: u64,
    /// Memory counted against that limit outside agentcg's tree (the cgroup's usage
    /// minus the root's; for the host, what is neither available nor agentcg's).
    pub outside: u64,
}

/// agentcg's root usage against the limit it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryReading {
    /// `memory.current` of agentcg's root.
    pub usage: u64,
    /// The effective limit: `usage` plus the smallest room left (bytes); `u64::MAX`
    /// when nothing limits.
    pub limit: u64,
    pub defended: Defended,
}

/// A reading that failed.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("reading /proc/meminfo: {0}")]
    Meminfo(#[from] procfs::ProcError),
}

/// The effective limit of the root `chain[0]`, given its chain of ancestors (nearest
/// first) and the host's memory. The tightest room wins; on a tie the cgroup nearest
/// the root, `memory.max` before `memory.high`, cgroups before the host.
pub fn effective(chain: &[Level], host: Option<HostMemory>) -> MemoryReading {
    let usage = chain.first().map_or(0, |l| l.usage);
    let mut best: Option<(u64, Defended)> = None;
    let mut offer = |room: u64, d: Defended| {
        if best.as_ref().is_none_or(|(r, _)| room < *r) {
            best = Some((room, d));
        }
    };
    for level in chain {
        let outside = level.usage.saturating_sub(usage);
        for (by, value) in [
            (LimitSource::MemoryMax, level.max),
            (LimitSource::MemoryHigh, level.high),
        ] {
            let Some(value) = value else { continue };
            offer(
                value.saturating_sub(level.usage),
                Defended {
                    by,
                    cgroup: Some(level.path.clone()),
                    value,
                    outside,
                },
            );
        }
    }
    if let Some(h) = host {
        offer(
            h.available,
            Defended {
                by: LimitSource::Host,
                cgroup: None,
                value: h.total,
                outside: h.total.saturating_sub(h.available).saturating_sub(usage),
            },
        );
    }
    match best {
        Some((room, defended)) => MemoryReading {
            usage,
            limit: usage.saturating_add(room),
            defended,
        },
        None => MemoryReading {
            usage,
            limit: u64::MAX,
            defended: Defended {
                by: LimitSource::Unlimited,
                cgroup: None,
                value: u64::MAX,
                outside: 0,
            },
        },
    }
}

/// Reads the chain and /proc/meminfo and decides.
pub fn read(root: &Cgroup) -> Result<MemoryReading, LimitError> {
    let chain = chain(root)?;
    let m = procfs::Meminfo::current()?;
    // MemAvailable exists since Linux 3.14; without it, free memory is the bound.
    let host = HostMemory {
        total: m.mem_total,
        available: m.mem_available.unwrap_or(m.mem_free),
    };
    Ok(effective(&chain, Some(host)))
}

/// The root and its ancestors up to the cgroup2 mount. The mount's own cgroup has no
/// `memory.max` (the kernel leaves the file off the root cgroup), and neither has a
/// cgroup whose parent does not delegate the memory controller, which cannot happen
/// above a root that has it: the climb stops at the first directory without the file.
pub fn chain(root: &Cgroup) -> Result<Vec<Level>, CgroupError> {
    let mut chain = vec![level(root)?];
    let mut dir: &Path = root.path();
    while let Some(parent) = dir.parent() {
        if chain.len() > MAX_LEVELS || !parent.join(MAX).exists() {
            break;
        }
        chain.push(level(&Cgroup::new(parent))?);
        dir = parent;
    }
    Ok(chain)
}

fn level(cg: &Cgroup) -> Result<Level, CgroupError> {
    let limit = |file| cg.read_u64(file).map(|v| (v != u64::MAX).then_some(v));
    Ok(Level {
        path: cg.path().to_path_buf(),
        max: limit(MAX)?,
        high: limit(HIGH)?,
        usage: cg.read_u64(CURRENT)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn lvl(path: &str, max: Option<u64>, high: Option<u64>, usage: u64) -> Level {
        Level {
            path: PathBuf::from(path),
            max,
            high,
            usage,
        }
    }

    fn host(total: u64, available: u64) -> Option<HostMemory> {
        Some(HostMemory { total, available })
    }

    #[test]
    fn a_parents_memory_max_is_defended_when_the_root_has_none() {
        let chain = [
            lvl("/cg/svc/agentcg", None, None, 300 * MIB),
            lvl("/cg/svc", Some(640 * MIB), None, 300 * MIB),
        ];
        let r = effective(&chain, host(16 * GIB, 12 * GIB));
        assert_eq!((r.usage, r.limit), (300 * MIB, 640 * MIB));
        assert_eq!(r.defended.by, LimitSource::MemoryMax);
        assert_eq!(r.defended.cgroup.as_deref(), Some(Path::new("/cg/svc")));
        assert_eq!((r.defended.value, r.defended.outside), (640 * MIB, 0));
    }

    #[test]
    fn what_siblings_hold_under_the_limit_is_not_agentcgs() {
        // The service's other children hold 200 MiB of its 1 GiB: agentcg has 824 MiB.
        let chain = [
            lvl("/cg/svc/agentcg", None, None, 100 * MIB),
            lvl("/cg/svc", Some(GIB), None, 300 * MIB),
        ];
        let r = effective(&chain, host(16 * GIB, 12 * GIB));
        assert_eq!(r.limit, GIB - 200 * MIB);
        assert_eq!(r.defended.outside, 200 * MIB);
    }

    #[test]
    fn the_tightest_level_wins_wherever_it_is() {
        let chain = [
            lvl("/cg/a/b/agentcg", Some(2 * GIB), None, 100 * MIB),
            lvl("/cg/a/b", Some(4 * GIB), None, 100 * MIB),
            lvl("/cg/a", Some(GIB), None, 500 * MIB),
        ];
        let r = effective(&chain, host(16 * GIB, 12 * GIB));
        assert_eq!(r.defended.cgroup.as_deref(), Some(Path::new("/cg/a")));
        assert_eq!(r.limit, 100 * MIB + 524 * MIB);
        // The root's own max, when tightest, is the limit itself.
        let chain = [lvl("/cg/agentcg", Some(640 * MIB), None, 10 * MIB)];
        let r = effective(&chain, host(16 * GIB, 12 * GIB));
        assert_eq!(
            (r.limit, r.defended.by),
            (640 * MIB, LimitSource::MemoryMax)
        );
    }

    #[test]
    fn memory_high_counts_where_it_is_tighter() {
        let chain = [
            lvl("/cg/svc/agentcg", None, None, 100 * MIB),
            lvl("/cg/svc", Some(2 * GIB), Some(GIB), 100 * MIB),
        ];
        let r = effective(&chain, host(16 * GIB, 12 * GIB));
        assert_eq!((r.limit, r.defended.by), (GIB, LimitSource::MemoryHigh));
    }

    #[test]
    fn on_a_bare_host_memory_used_outside_the_tree_is_not_agentcgs() {
        // 16 GiB, agentcg holds 1 GiB, 3 GiB are still available: 12 GiB are others'.
        let chain = [lvl("/cg/agentcg", None, None, GIB)];
        let r = effective(&chain, host(16 * GIB, 3 * GIB));
        assert_eq!(r.limit, 4 * GIB);
        assert_eq!(r.defended.by, LimitSource::Host);
        assert_eq!(r.defended.cgroup, None);
        assert_eq!((r.defended.value, r.defended.outside), (16 * GIB, 12 * GIB));
        // A parent limit looser than what the host has left does not hide the host.
        let chain = [
            lvl("/cg/svc/agentcg", None, None, GIB),
            lvl("/cg/svc", Some(8 * GIB), None, GIB),
        ];
        assert_eq!(effective(&chain, host(16 * GIB, 3 * GIB)).limit, 4 * GIB);
    }

    #[test]
    fn a_cgroup_over_its_limit_leaves_no_room() {
        let chain = [
            lvl("/cg/svc/agentcg", None, None, 100 * MIB),
            lvl("/cg/svc", None, Some(200 * MIB), 250 * MIB),
        ];
        let r = effective(&chain, host(16 * GIB, 12 * GIB));
        assert_eq!(r.limit, r.usage);
    }

    #[test]
    fn nothing_known_means_no_limit() {
        let chain = [lvl("/cg/agentcg", None, None, 5)];
        let r = effective(&chain, None);
        assert_eq!((r.usage, r.limit), (5, u64::MAX));
        assert_eq!(r.defended.by, LimitSource::Unlimited);
        assert_eq!(effective(&[], None).usage, 0);
    }

    #[test]
    fn the_chain_climbs_to_the_mount_and_reads_max_as_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A fake cgroupfs: `mnt` is the mount (no memory.max), `mnt/svc/agentcg` the root.
        let svc = dir.path().join("mnt/svc");
        let root = svc.join("agentcg");
        std::fs::create_dir_all(&root).expect("mkdir");
        for (d, max, high, cur) in [
            (&svc, "671088640\n", "max\n", "4096\n"),
            (&root, "max\n", "max\n", "1024\n"),
        ] {
            std::fs::write(d.join(MAX), max).expect("write");
            std::fs::write(d.join(HIGH), high).expect("write");
            std::fs::write(d.join(CURRENT), cur).expect("write");
        }
        let chain = chain(&Cgroup::new(&root)).expect("chain");
        assert_eq!(
            chain,
            [
                lvl(root.to_str().expect("utf-8"), None, None, 1024),
                lvl(svc.to_str().expect("utf-8"), Some(671088640), None, 4096),
            ]
        );
        std::fs::write(svc.join(MAX), "lots\n").expect("write");
        let err = super::chain(&Cgroup::new(&root)).expect_err("unparsable");
        assert!(err.to_string().contains("lots"), "{err}");
    }
}
