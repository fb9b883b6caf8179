//! The BPF memory programs (`ebpf/mem.bpf.c`) for the daemon: loads them with the
//! `mem_state` map they share with the scheduler, watches agentcg's root and its
//! ancestors (each with the policy's `pressure_at` as its watermark), every session and
//! every call, and turns their ring-buffer events into the memory response's signals on
//! a dedicated thread that sleeps in the ring buffer's epoll until the kernel writes.

use std::sync::Arc;
use std::time::Duration;

use agentcg_bpf::{MemEvent, MemEventKind, MemRole, MemStateMap, MemWatch, MemWatchSpec};
use agentcg_core::cgroup::Cgroup;
use agentcg_core::cgroup::limit::{self, Level};
use agentcg_core::controller::{CgroupRole, KernelHooks};
use agentcg_core::policy::MemoryPolicy;
use agentcg_core::record::ProcessCounts;
use tokio::sync::mpsc::UnboundedSender;

use crate::memory::Signal;

/// The loaded programs and the map the scheduler shares.
#[derive(Debug)]
pub struct MemBpf {
    pub watch: Arc<MemWatch>,
    pub state: MemStateMap,
}

/// Loads the programs, watches the root and starts forwarding events to `tx`.
pub fn start(
    root: &Cgroup,
    policy: &MemoryPolicy,
    tx: UnboundedSender<Signal>,
) -> Result<MemBpf, String> {
    let state = MemStateMap::create().map_err(|e| e.to_string())?;
    let watch = Arc::new(MemWatch::load(&state).map_err(|e| e.to_string())?);
    watch_root(&watch, root, policy.pressure_at)?;
    let t = watch.timings();
    tracing::info!(
        load_ms = t.load.as_millis(),
        attach_ms = t.attach.as_millis(),
        "memory BPF programs attached"
    );
    let w = watch.clone();
    std::thread::Builder::new()
        .name("mem-events".into())
        .spawn(move || forward(&w, &tx))
        .map_err(|e| format!("starting the memory event thread: {e}"))?;
    Ok(MemBpf { watch, state })
}

/// Watches the root and its ancestors with `pressure_at` (percent) as their watermark;
/// watching again replaces the watermark and keeps the state the BPF side has.
fn watch_root(watch: &MemWatch, root: &Cgroup, pressure_at: u8) -> Result<(), String> {
    let spec = MemWatchSpec {
        role: MemRole::Root,
        near_max_bp: u32::from(pressure_at) * 100,
    };
    let root_id = root.id().map_err(|e| e.to_string())?;
    watch.watch(root_id, spec).map_err(|e| e.to_string())?;
    watch_ancestors(watch, root, spec);
    Ok(())
}

/// Ancestors of the root that the charge walk of mem.bpf.c reaches: it climbs
/// MAX_DEPTH (8) memcgs from the charging one, and a call's cgroup sits three below the
/// root (`session-<name>/calls/call-<id>`), so the root is the fourth and four
/// ancestors remain.
const ANCESTORS_IN_REACH: usize = 4;

/// Watches the root's ancestors (up to the cgroup2 mount) like the root, so that the
/// limit the kernel enforces on agentcg is seen where it is set: the memory.max of a
/// slice, a service or a container above `--root` (docs/POLICY.md, "The limit
/// defended"). Each gets the root's watermark in basis points of its own memory.max
/// against its own usage, which is the root's usage against the effective limit when
/// that ancestor sets it (cgroup::limit); its MEMCG_MAX is the kernel at the limit.
/// Every ancestor in reach is watched, limited or not yet: the BPF side reads
/// memory.max at each charge, so a limit set later is defended too.
fn watch_ancestors(watch: &MemWatch, root: &Cgroup, spec: MemWatchSpec) {
    let chain = match limit::chain(root) {
        Ok(chain) => chain,
        Err(e) => {
            tracing::warn!("the root's ancestors are not watched: {e}");
            return;
        }
    };
    let (reached, beyond) = split_ancestors(&chain);
    for level in reached {
        let watched = Cgroup::new(&level.path)
            .id()
            .map_err(|e| e.to_string())
            .and_then(|id| watch.watch(id, spec).map_err(|e| e.to_string()));
        match watched {
            Ok(()) => {
                tracing::info!(cgroup = %level.path.display(), max = ?level.max, "memory BPF: ancestor of the root watched")
            }
            Err(e) => {
                tracing::warn!(cgroup = %level.path.display(), "memory BPF: ancestor not watched: {e}")
            }
        }
    }
    for level in beyond.iter().filter(|l| l.max.is_some()) {
        tracing::warn!(cgroup = %level.path.display(), max = ?level.max, "memory BPF cannot reach this ancestor's limit; PSI and the readings defend it");
    }
}

/// The ancestors in the BPF walk's reach, and those beyond, from the chain of the root
/// (first) and its ancestors.
fn split_ancestors(chain: &[Level]) -> (&[Level], &[Level]) {
    let ancestors = chain.get(1..).unwrap_or_default();
    ancestors.split_at(ancestors.len().min(ANCESTORS_IN_REACH))
}

/// Drains the ring buffer until the response goes away.
fn forward(watch: &MemWatch, tx: &UnboundedSender<Signal>) {
    loop {
        let mut open = true;
        let polled = watch.poll_events(Duration::MAX, |e| {
            if let Some(s) = signal(&e) {
                open &= tx.send(s).is_ok();
            }
            tracing::debug!(?e, "memory event");
        });
        if let Err(e) = polled {
            tracing::error!("memory events: {e}; the response continues on PSI alone");
            return;
        }
        if !open {
            return;
        }
    }
}

/// The response's signal for a BPF event, if it is one.
fn signal(e: &MemEvent) -> Option<Signal> {
    match (e.kind, e.role) {
        (MemEventKind::High, Some(MemRole::Call)) => Some(Signal::OverHigh { cgroup_id: e.cgid }),
        (MemEventKind::NearMax, Some(MemRole::Root)) => Some(Signal::NearMax { cgroup_id: e.cgid }),
        (MemEventKind::NearMaxRecovered, Some(MemRole::Root)) => {
            Some(Signal::NearMaxRecovered { cgroup_id: e.cgid })
        }
        (MemEventKind::Max, Some(MemRole::Root)) => Some(Signal::AtMax),
        (MemEventKind::OomKill | MemEventKind::OomGroupKill, _) => {
            Some(Signal::OomKill { cgroup_id: e.cgid })
        }
        _ => None,
    }
}

/// Watches sessions and calls as the controller creates them, and moves the root's
/// watermark when a reloaded policy changes `memory.pressure_at`.
#[derive(Debug)]
pub struct MemBpfHooks {
    pub watch: Arc<MemWatch>,
    pub root: Cgroup,
    /// The watermark in force, in percent.
    pub pressure_at: u8,
}

impl KernelHooks for MemBpfHooks {
    fn name(&self) -> &'static str {
        "memory-bpf"
    }

    fn created(&mut self, cgroup_id: u64, role: CgroupRole<'_>) {
        let role = match role {
            CgroupRole::Call(_) => MemRole::Call,
            CgroupRole::Session(_) | CgroupRole::Calls(_) => MemRole::Session,
            CgroupRole::Runtime(_) => return,
        };
        let spec = MemWatchSpec {
            role,
            near_max_bp: 0,
        };
        if let Err(e) = self.watch.watch(cgroup_id, spec) {
            tracing::warn!(cgroup_id, "memory watch: {e}");
        }
    }

    fn removing(&mut self, cgroup_id: u64) -> Option<ProcessCounts> {
        if let Err(e) = self.watch.unwatch(cgroup_id) {
            tracing::warn!(cgroup_id, "memory unwatch: {e}");
        }
        None
    }

    fn policy_changed(&mut self, policy: &agentcg_core::policy::Policy) {
        let pressure_at = policy.memory.pressure_at;
        if pressure_at == self.pressure_at {
            return;
        }
        match watch_root(&self.watch, &self.root, pressure_at) {
            Ok(()) => {
                tracing::info!(
                    from = self.pressure_at,
                    to = pressure_at,
                    "memory BPF: the root's watermark follows the reloaded policy"
                );
                self.pressure_at = pressure_at;
            }
            Err(e) => tracing::warn!("memory BPF: the root's new watermark is not in force: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: MemEventKind, role: Option<MemRole>) -> MemEvent {
        MemEvent {
            kind,
            role,
            cgid: 42,
            ts_ns: 1,
            usage: 2,
            limit: 3,
            counter: 1,
        }
    }

    #[test]
    fn ancestors_beyond_the_bpf_walk_are_told_apart() {
        let level = |p: &str| Level {
            path: p.into(),
            max: None,
            high: None,
            usage: 0,
        };
        let chain: Vec<Level> = ["/r", "/a1", "/a2", "/a3", "/a4", "/a5", "/a6"]
            .into_iter()
            .map(level)
            .collect();
        let (reached, beyond) = split_ancestors(&chain);
        assert_eq!(reached, &chain[1..5]);
        assert_eq!(beyond, &chain[5..]);
        let (reached, beyond) = split_ancestors(&chain[..2]);
        assert_eq!((reached, beyond.len()), (&chain[1..2], 0));
        assert_eq!(split_ancestors(&chain[..1]), (&[][..], &[][..]));
        assert_eq!(split_ancestors(&[]), (&[][..], &[][..]));
    }

    #[test]
    fn events_become_signals() {
        assert_eq!(
            signal(&event(MemEventKind::High, Some(MemRole::Call))),
            Some(Signal::OverHigh { cgroup_id: 42 })
        );
        assert_eq!(
            signal(&event(MemEventKind::NearMax, Some(MemRole::Root))),
            Some(Signal::NearMax { cgroup_id: 42 })
        );
        assert_eq!(
            signal(&event(MemEventKind::NearMaxRecovered, Some(MemRole::Root))),
            Some(Signal::NearMaxRecovered { cgroup_id: 42 })
        );
        assert_eq!(
            signal(&event(MemEventKind::Max, Some(MemRole::Root))),
            Some(Signal::AtMax)
        );
        assert_eq!(
            signal(&event(MemEventKind::OomKill, Some(MemRole::Call))),
            Some(Signal::OomKill { cgroup_id: 42 })
        );
        assert_eq!(
            signal(&event(MemEventKind::High, Some(MemRole::Session))),
            None
        );
        assert_eq!(
            signal(&event(MemEventKind::HighRecovered, Some(MemRole::Call))),
            None
        );
    }
}
