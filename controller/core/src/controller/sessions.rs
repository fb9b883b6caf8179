//! Sessions: an agent's budget, its runtime leaf and the ceiling its calls share;
//! created, shown, attached to and closed here, and kept in `sessions.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    CgroupRole, ControlError, Controller, RunningCall, SESSIONS_FILE, SessionInfo, SessionState,
    adopt::CONTROLLERS, state,
};
use crate::cgroup::Cgroup;
use crate::cgroup::{cpu, memory, pids};
use crate::events::EventBody;
use crate::plan::budget::{self, BudgetChange, Usage};
use crate::plan::{self, SessionLoad, SessionPlan, SessionRequest};
use crate::policy::Policy;
use crate::record::{CallRecord, ExitInfo};

/// What a reload did to the sessions' budgets.
#[derive(Debug, Default)]
pub struct Reapplied {
    pub budgets: Vec<BudgetChange>,
    /// The new plans are in force but `sessions.json` could not be written.
    pub save_error: Option<String>,
}

/// `oom_score_adj` agentcgd gives an attached agent runtime. Tools start at 0..=1000
/// (policy `[priority.*] oom_score_adj`), so whatever their priority the kernel's OOM
/// killer takes a tool before the runtime in any OOM domain that holds both (a session's
/// `memory.max`, a parent's, the host); `memory.min`/`memory.low` of runtime/ steer
/// reclaim only and play no part in that choice. Not -1000: a runtime that alone
/// overruns its domain stays killable. Written by root, it is also the runtime's floor
/// (`oom_score_adj_min`): its children inherit it, and a tool's client raising its own
/// back to the policy's value needs no privilege.
pub const RUNTIME_OOM_SCORE_ADJ: i16 = -900;

/// Gives the runtime [`RUNTIME_OOM_SCORE_ADJ`].
fn protect_from_oom_killer(pid: u32) -> Result<(), ControlError> {
    let path = format!("/proc/{pid}/oom_score_adj");
    std::fs::write(&path, RUNTIME_OOM_SCORE_ADJ.to_string()).map_err(|e| ControlError::BadRequest {
        what: format!("runtime pid {pid}"),
        reason: format!("cannot write {RUNTIME_OOM_SCORE_ADJ} to {path}: {e}"),
    })
}

impl Controller {
    fn sessions_path(&self) -> PathBuf {
        self.state_dir.join(SESSIONS_FILE)
    }

    pub(super) fn load_sessions(&mut self) -> Result<(), ControlError> {
        let path = self.sessions_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(ControlError::State {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        self.sessions = serde_json::from_str(&text).map_err(|e| ControlError::State {
            path: path.clone(),
            reason: format!("{e} (move the file away to start with no sessions)"),
        })?;
        Ok(())
    }

    pub(super) fn save_sessions(&self) -> Result<(), ControlError> {
        let text = serde_json::to_string_pretty(&self.sessions).unwrap_or_default();
        Ok(state::write_atomic(&self.sessions_path(), &text, true)?)
    }

    /// Creates a session and its cgroups.
    pub fn create_session(&mut self, req: &SessionRequest) -> Result<SessionInfo, ControlError> {
        let plan = plan::plan_session(&self.policy, req)?;
        if self.sessions.contains_key(&plan.name) {
            return Err(ControlError::SessionExists(plan.name));
        }
        let session = self.layout.session(&plan.name);
        if session.exists() {
            // A closed session's cgroup the reaper has not removed yet.
            return Err(ControlError::SessionClosing(plan.name));
        }
        session.create(false)?;
        if let Err(e) = self
            .apply_session(&plan)
            .and_then(|()| self.delegate_session(&plan.name, req.owner))
        {
            self.reaper.reap(session);
            return Err(e);
        }
        let name = plan.name.clone();
        let ids = [
            self.layout.session(&name).id()?,
            self.layout.runtime(&name).id()?,
            self.layout.calls(&name).id()?,
        ];
        self.hooks_created(ids[0], CgroupRole::Session(&plan));
        self.hooks_created(ids[1], CgroupRole::Runtime(&plan));
        self.hooks_created(ids[2], CgroupRole::Calls(&plan));
        self.events.publish(EventBody::SessionCreated {
            session: name.clone(),
            plan: plan.clone(),
        });
        self.sessions.insert(
            name.clone(),
            SessionState {
                plan,
                calls_finished: 0,
                owner: req.owner,
                request: Some(SessionRequest {
                    runtime_pid: None,
                    ..req.clone()
                }),
            },
        );
        self.save_sessions()?;
        if let Some(pid) = req.runtime_pid {
            self.attach_runtime(&name, pid)?;
        }
        self.session_info(&name)
    }

    /// Delegates the session, its runtime and its calls directory to `owner`, so that
    /// its agent moves its processes between them, and starts its tools in their call
    /// cgroups (`clone3(CLONE_INTO_CGROUP)`), without root. The limits stay root's.
    fn delegate_session(&self, name: &str, owner: u32) -> Result<(), ControlError> {
        for cg in [
            self.layout.session(name),
            self.layout.runtime(name),
            self.layout.calls(name),
        ] {
            cg.delegate(owner)?;
        }
        Ok(())
    }

    fn apply_session(&self, plan: &SessionPlan) -> Result<(), ControlError> {
        let session = self.layout.session(&plan.name);
        memory::disable_swap(&session)?;
        session.enable_controllers(&CONTROLLERS)?;
        self.layout.runtime(&plan.name).create(false)?;
        let calls = self.layout.calls(&plan.name);
        calls.create(false)?;
        calls.enable_controllers(&CONTROLLERS)?;
        self.write_limits(plan)
    }

    /// Writes a session's limits: at creation, and when a reloaded policy changes them.
    fn write_limits(&self, plan: &SessionPlan) -> Result<(), ControlError> {
        let session = self.layout.session(&plan.name);
        memory::set_max(&session, Some(plan.memory_max))?;
        memory::set_low(&session, plan.memory_low)?;
        cpu::set_weight(&session, plan.cpu_weight)?;
        cpu::set_max(&session, plan.millicpus)?;
        pids::set_max(&session, plan.pids_max)?;
        let runtime = self.layout.runtime(&plan.name);
        let (min, low) = if plan.runtime_hard_protect {
            (plan.runtime_reserve, 0)
        } else {
            (0, plan.runtime_reserve)
        };
        memory::set_min(&runtime, min)?;
        memory::set_low(&runtime, low)?;
        memory::set_max(&self.layout.calls(&plan.name), Some(plan.calls_memory_max))?;
        Ok(())
    }

    /// The sessions whose budget `policy` changes (those that left a limit to the
    /// policy), with their new plan and what happens: applied, or kept and why.
    fn budgets_under(&self, policy: &Policy) -> Vec<(SessionPlan, BudgetChange)> {
        let read = |cg: Cgroup, file: &str| cg.read_u64(file).unwrap_or(0);
        self.sessions
            .iter()
            .filter_map(|(name, s)| {
                let to = plan::plan_session(policy, s.request.as_ref()?).ok()?;
                let changes = budget::words(&s.plan, &to);
                if changes.is_empty() {
                    return None;
                }
                let usage = Usage {
                    memory: read(self.layout.session(name), memory::CURRENT),
                    calls_memory: read(self.layout.calls(name), memory::CURRENT),
                    pids: read(self.layout.session(name), pids::CURRENT),
                };
                let change = BudgetChange {
                    session: name.clone(),
                    changes,
                    kept_because: budget::refusal(&to, usage),
                };
                Some((to, change))
            })
            .collect()
    }

    /// What `policy` would do to the sessions' budgets (`agentcg policy diff`).
    pub fn budget_preview(&self, policy: &Policy) -> Vec<BudgetChange> {
        self.budgets_under(policy)
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }

    /// Re-applies the policy in force to the sessions that left limits to it.
    pub(super) fn reapply_budgets(&mut self) -> Reapplied {
        let mut done = Vec::new();
        for (to, mut change) in self.budgets_under(&self.policy) {
            if change.kept_because.is_none() {
                match self.write_limits(&to) {
                    Ok(()) => {
                        if let Some(s) = self.sessions.get_mut(&change.session) {
                            s.plan = to;
                        }
                    }
                    Err(e) => change.kept_because = Some(format!("writing its limits: {e}")),
                }
            }
            done.push(change);
        }
        let save_error = if done.is_empty() {
            None
        } else {
            self.save_sessions().err().map(|e| e.to_string())
        };
        Reapplied {
            budgets: done,
            save_error,
        }
    }

    /// Moves the agent runtime process into the session's runtime leaf.
    pub fn attach_runtime(&mut self, name: &str, pid: u32) -> Result<(), ControlError> {
        if !self.sessions.contains_key(name) {
            return Err(ControlError::NoSession(name.to_string()));
        }
        if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(ControlError::BadRequest {
                what: format!("runtime pid {pid}"),
                reason: "no such process".into(),
            });
        }
        self.layout.runtime(name).attach(pid)?;
        protect_from_oom_killer(pid)
    }

    pub fn session_info(&self, name: &str) -> Result<SessionInfo, ControlError> {
        let s = self
            .sessions
            .get(name)
            .ok_or_else(|| ControlError::NoSession(name.to_string()))?;
        let cg = self.layout.session(name);
        Ok(SessionInfo {
            plan: s.plan.clone(),
            owner: s.owner,
            cgroup: cg.path().display().to_string(),
            running_calls: self
                .running
                .iter()
                .filter(|(_, c)| c.session == name)
                .map(|(id, _)| *id)
                .collect(),
            runtime_pids: self.layout.runtime(name).procs().unwrap_or_default(),
            memory_current: cg.read_u64(memory::CURRENT).ok(),
            calls_finished: s.calls_finished,
            cpu_usec: cpu::usage(&cg).ok().map(|u| u.usage_usec),
            memory_pressure: crate::cgroup::psi::read_memory(&cg).ok(),
        })
    }

    /// The uid session `name` belongs to, if it exists.
    pub fn session_owner(&self, name: &str) -> Option<u32> {
        self.sessions.get(name).map(|s| s.owner)
    }

    /// The session of call `id`, running or finished (while its record is kept).
    pub fn call_session(&self, id: u64) -> Option<&str> {
        match self.running.get(&id) {
            Some(c) => Some(&c.session),
            None => self.history.get(id).map(|r| r.session.as_str()),
        }
    }

    /// Whether a session of that name exists (no cgroup file is read).
    pub fn has_session(&self, name: &str) -> bool {
        self.sessions.contains_key(name)
    }

    pub fn list_sessions(&self) -> Vec<SessionInfo> {
        self.sessions
            .keys()
            .filter_map(|n| self.session_info(n).ok())
            .collect()
    }

    /// Each session's plan and how many of its calls run, read from memory only (no
    /// cgroup file), for callers that must hold the controller no longer than a copy
    /// takes (the metrics scrape).
    pub fn session_plans(&self) -> Vec<(SessionPlan, usize)> {
        let mut running: BTreeMap<&str, usize> = BTreeMap::new();
        for call in self.running.values() {
            *running.entry(call.session.as_str()).or_default() += 1;
        }
        self.sessions
            .iter()
            .map(|(name, s)| {
                (
                    s.plan.clone(),
                    running.get(name.as_str()).copied().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Closes a session: ends its running calls (recorded as killed) and hands its
    /// cgroups to the reaper. Refuses while the runtime has processes, unless `force`.
    pub fn close_session(
        &mut self,
        name: &str,
        force: bool,
    ) -> Result<Vec<CallRecord>, ControlError> {
        if !self.sessions.contains_key(name) {
            return Err(ControlError::NoSession(name.to_string()));
        }
        let runtime = self.layout.runtime(name).procs().unwrap_or_default();
        if !runtime.is_empty() && !force {
            return Err(ControlError::RuntimeAlive {
                name: name.to_string(),
                count: runtime.len(),
            });
        }
        let ids: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, c)| c.session == name)
            .map(|(i, _)| *i)
            .collect();
        let killed = ExitInfo {
            code: None,
            signal: Some(libc::SIGKILL),
        };
        let records = ids
            .into_iter()
            .filter_map(|id| self.end_call(id, killed).ok())
            .collect();
        let session = self.layout.session(name);
        for cg in [
            self.layout.calls(name),
            self.layout.runtime(name),
            session.clone(),
        ] {
            if let Ok(id) = cg.id() {
                self.hooks_removing(id);
            }
        }
        session.kill()?;
        self.reaper.reap(session);
        self.sessions.remove(name);
        self.events.publish(EventBody::SessionClosed {
            session: name.to_string(),
            forced: force,
        });
        self.save_sessions()?;
        Ok(records)
    }

    /// What runs in session `name`, for admission. A call whose tool has exited counts no
    /// more, even before agentcgd has ended it: its client may already be declaring the
    /// next call.
    pub(super) fn session_load(&self, name: &str) -> SessionLoad {
        let mine: Vec<&RunningCall> = self
            .running
            .values()
            .filter(|c| c.session == name && self.hooks_tool_exit(c.cgroup_id).is_none())
            .collect();
        SessionLoad {
            expected_mem: mine.iter().map(|c| c.limits.memory_expected).sum(),
            running: mine.len(),
        }
    }
}
