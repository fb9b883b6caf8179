//! A starting agentcgd takes over what the last one left (docs/ARCHITECTURE.md#restart):
//! in this order, it re-adopts every call that has a state file and a cgroup (limits
//! stay in the kernel; start time, deadline and marks come from the state file; the
//! kernel hooks re-learn the cgroup when they are added), records the calls that ended
//! while no daemon ran, and only then removes what no state knows (orphans).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::lifecycle::ABANDONED;
use super::state::RunningState;
use super::{CallMemory, ControlError, Controller, RunningCall, unix_ms};
use crate::cgroup::layout::{Layout, SESSION_PREFIX, parse_call_dir};
use crate::cgroup::{Cgroup, memory};
use crate::policy::BudgetAction;
use crate::record::{Accounting, CallRecord, Outcome};

/// Controllers agentcg enables in its subtree.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// What the start found and did, for the daemon's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Running calls taken over (their tools go on).
    pub adopted: Vec<u64>,
    /// Of those, calls whose tool was already gone: they end when their client reports
    /// (or are abandoned).
    pub already_exited: Vec<u64>,
    /// Calls whose cgroup was gone: recorded as abandoned.
    pub lost: Vec<u64>,
    /// Calls that had ended, their record not yet in the history: recorded as they ended.
    pub recovered: Vec<u64>,
    /// Call cgroups no state knew: killed and removed.
    pub orphans: Vec<String>,
    /// State files that could not be read (removed).
    pub bad_state_files: Vec<String>,
    /// The `calls.jsonl` of an earlier version, imported into the history database.
    pub history_import: Option<crate::history::ImportReport>,
}

/// The largest call id in the state files and the cgroup tree.
pub(super) fn largest_id(layout: &Layout, states: &BTreeMap<u64, RunningState>) -> u64 {
    let in_tree = sessions_in_tree(layout)
        .iter()
        .flat_map(|name| layout.calls(name).children())
        .filter_map(|cg| call_id_of(&cg))
        .max()
        .unwrap_or(0);
    states.keys().copied().max().unwrap_or(0).max(in_tree)
}

fn sessions_in_tree(layout: &Layout) -> Vec<String> {
    layout
        .root()
        .children()
        .iter()
        .filter_map(|c| {
            c.path()
                .file_name()?
                .to_str()?
                .strip_prefix(SESSION_PREFIX)
                .map(str::to_string)
        })
        .collect()
}

fn call_id_of(cg: &Cgroup) -> Option<u64> {
    cg.path().file_name()?.to_str().and_then(parse_call_dir)
}

impl Controller {
    pub(super) fn adopt(
        &mut self,
        states: BTreeMap<u64, RunningState>,
    ) -> Result<AdoptReport, ControlError> {
        let mut report = AdoptReport::default();
        // The in-memory index holds only the newest records; a call that ran long
        // while many others ended may be older, so the database is asked too.
        let db = crate::history::schema::open_read_only(&self.history_db)?;
        let recorded = |c: &Controller, id: u64| -> Result<bool, ControlError> {
            Ok(c.history.get(id).is_some()
                || crate::history::query::by_id(&db, &c.history_db, id)?.is_some())
        };
        for (id, st) in states {
            if recorded(self, id)? {
                // Recorded, but the daemon died before removing the state file.
                self.store.remove(id);
                continue;
            }
            if let Some(rec) = st.ended {
                // Ended, but the daemon died before the record was durable.
                self.history.remember((*rec).clone());
                self.writer.submit(&rec, Some(self.store.path(id)), None);
                report.recovered.push(id);
                continue;
            }
            let cg = self.layout.call(&st.session, id);
            let known = self.sessions.contains_key(&st.session);
            match cg.id() {
                Ok(cgroup_id) if known => {
                    let call = self.readopt(st, cg, cgroup_id);
                    if call.adopted_tool.is_none() {
                        report.already_exited.push(id);
                    }
                    self.running.insert(id, call);
                    report.adopted.push(id);
                }
                _ => {
                    self.record_lost(st);
                    report.lost.push(id);
                }
            }
        }
        for name in sessions_in_tree(&self.layout) {
            let session = self.layout.session(&name);
            if !self.sessions.contains_key(&name) {
                if !session.populated().unwrap_or(true) {
                    self.reaper.reap(session);
                }
                continue;
            }
            for cg in self.layout.calls(&name).children() {
                let id = call_id_of(&cg);
                if id.is_some_and(|id| self.running.contains_key(&id)) {
                    continue;
                }
                if let Some(id) = id
                    && recorded(self, id)?
                {
                    // An ended call's cgroup, left for the reaper by the last run.
                    let _ = cg.kill();
                    self.reaper.reap(cg);
                    continue;
                }
                // Declared but never granted (no state file), or unknown: nothing of it
                // may run unaccounted.
                let _ = cg.kill();
                report.orphans.push(cg.path().display().to_string());
                self.reaper.reap(cg);
            }
        }
        self.sessions
            .retain(|name, _| self.layout.session(name).exists());
        self.save_sessions()?;
        Ok(report)
    }

    /// A call from its state file and its cgroup. The memory response starts afresh: a
    /// call it had frozen or throttled is thawed and gets its granted memory.high back
    /// (the response acts again if pressure persists); a CPU-budget freeze stays.
    fn readopt(&self, st: RunningState, cg: Cgroup, cgroup_id: u64) -> RunningCall {
        let age = Duration::from_millis(unix_ms().saturating_sub(st.started_unix_ms));
        let now = Instant::now();
        let keep_frozen =
            st.budget_exceeded && self.policy.cpu.on_budget_exceeded == BudgetAction::Freeze;
        if !keep_frozen {
            let _ = cg.freeze(false);
        }
        if !st.pressure_killed {
            let _ = memory::set_high(&cg, st.limits.memory_high);
        }
        let tool = find_tool(&cg);
        RunningCall {
            client_token: st.client_token,
            tool_use_id: st.tool_use_id,
            session: st.session,
            command: st.command,
            intent: st.intent,
            ceiling_before: Default::default(),
            session_before: Default::default(),
            started: now.checked_sub(age).unwrap_or(now),
            started_unix_ms: st.started_unix_ms,
            timed_out: st.timed_out,
            budget_exceeded: st.budget_exceeded,
            empty_since: None,
            tool_exit_swept: false,
            memory: CallMemory {
                high: st.limits.memory_high,
                killed: st.pressure_killed,
                actions: st.memory_actions,
                ..CallMemory::default()
            },
            adopted_tool: tool,
            tool_gone_at: tool.is_none().then_some(now),
            suggestion: st.suggestion,
            admission: None,
            clamps: st.clamps,
            limits: st.limits,
            cgroup: cg,
            cgroup_id,
        }
    }

    /// A call whose cgroup vanished while no daemon ran (the host rebooted, or someone
    /// removed it): recorded as abandoned, with nothing measured.
    fn record_lost(&mut self, st: RunningState) {
        let rec = CallRecord {
            call_id: st.call_id,
            session: st.session,
            tool_use_id: st.tool_use_id,
            command: st.command,
            intent: st.intent,
            limits: st.limits,
            clamps: st.clamps,
            cgroup: String::new(),
            started_unix_ms: st.started_unix_ms,
            duration_ms: unix_ms().saturating_sub(st.started_unix_ms),
            exit: ABANDONED,
            outcome: Outcome::Abandoned,
            accounting: Accounting::default(),
            leftover_killed: 0,
            processes: None,
            feedback: None,
            memory_actions: st.memory_actions,
            admission: None,
        };
        self.history.remember(rec.clone());
        self.writer
            .submit(&rec, Some(self.store.path(rec.call_id)), None);
    }
}

/// The tool of a call, if it still runs: the process in the cgroup whose parent is
/// outside it and alive (the client that spawned it). A process whose parent is init
/// was orphaned: left behind by a tool that exited (or by a client that died), so it
/// is not the tool.
fn find_tool(cg: &Cgroup) -> Option<u32> {
    let pids = cg.procs().ok()?;
    let procs: Vec<(u32, u32, u64)> = pids
        .iter()
        .filter_map(|&pid| {
            let stat = procfs::process::Process::new(pid as i32)
                .ok()?
                .stat()
                .ok()?;
            Some((pid, stat.ppid as u32, stat.starttime))
        })
        .collect();
    pick_tool(&procs)
}

/// Of (pid, parent pid, start time) of a cgroup's processes: the oldest whose parent
/// is neither in the cgroup nor init.
fn pick_tool(procs: &[(u32, u32, u64)]) -> Option<u32> {
    procs
        .iter()
        .filter(|(_, ppid, _)| *ppid > 1 && !procs.iter().any(|(pid, _, _)| pid == ppid))
        .min_by_key(|(_, _, start)| *start)
        .map(|(pid, _, _)| *pid)
}

#[cfg(test)]
mod tests {
    use super::pick_tool;

    #[test]
    fn the_tool_is_the_child_of_a_live_client() {
        // client 100 -> tool 200 -> child 300; 400 orphaned (parent init).
        let procs = [(300, 200, 12), (200, 100, 10), (400, 1, 5)];
        assert_eq!(pick_tool(&procs), Some(200));
        // The tool exited: its child was re-parented to init, like the orphan.
        assert_eq!(pick_tool(&[(300, 1, 12), (400, 1, 5)]), None);
        assert_eq!(pick_tool(&[]), None);
    }
}
