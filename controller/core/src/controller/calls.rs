//! Declaring a call (intent, admission, its cgroup with every limit, its state file,
//! the kernel hooks, then the grant) and what happens to it while it runs: timeouts,
//! CPU budgets.

use std::time::{Duration, Instant};

use super::{
    CallGrant, CallMemory, CallRequest, CgroupRole, ControlError, Controller, DEFAULT_SESSION,
    RunningCall, unix_ms,
};
use crate::admission::HostMemory;
use crate::cgroup::{Cgroup, CgroupError, cpu, memory, pids};
use crate::events::EventBody;
use crate::intent::Intent;
use crate::plan::{self, AdmitContext, CallLimits, PlanError, SessionRequest};
use crate::policy::BudgetAction;

/// Longest client token accepted.
const MAX_TOKEN: usize = 64;
/// Characters of a refused session name repeated in its `call_rejected` event.
const MAX_ECHO: usize = 128;

impl Controller {
    /// Declares a call: validates the intent, admits it into its session, and creates
    /// its cgroup with every limit written before anything runs in it. The call's id
    /// is reserved durably and its state is on disk before the grant goes out. A new
    /// call is published as `call_declared`, a refusal as `call_rejected`.
    pub fn declare_call(&mut self, req: &CallRequest) -> Result<CallGrant, ControlError> {
        self.declare_call_queued(req, None)
    }

    /// [`Controller::declare_call`] for a call the daemon's queue may hold: `waited`
    /// is how long it has waited so far. A call that cannot fit yet is answered
    /// [`PlanError::Queued`](crate::plan::PlanError::Queued) (no event: it is not
    /// refused), one that waited `[admission] queue_for` is rejected.
    pub fn declare_call_queued(
        &mut self,
        req: &CallRequest,
        waited: Option<Duration>,
    ) -> Result<CallGrant, ControlError> {
        let result = self.declare(req, waited);
        if let Err(e) = &result
            && !matches!(e, ControlError::Plan(PlanError::Queued(_)))
        {
            let session = req.session.as_deref().unwrap_or(DEFAULT_SESSION);
            self.events.publish(EventBody::CallRejected {
                session: session.chars().take(MAX_ECHO).collect(),
                reason: e.code().to_string(),
                message: e.to_string(),
            });
        }
        result
    }

    fn declare(
        &mut self,
        req: &CallRequest,
        waited: Option<Duration>,
    ) -> Result<CallGrant, ControlError> {
        let Checked {
            intent,
            session: name,
        } = req.check()?;
        if let Some(t) = &req.client_token
            && let Some(grant) = self.grant_for_token(t)
        {
            // The client lost the reply and is about to start the tool: a call
            // re-adopted empty is not waiting for a report any more.
            if let Some(call) = self.running.get_mut(&grant.call_id) {
                call.tool_gone_at = None;
            }
            return Ok(grant);
        }
        if !self.sessions.contains_key(&name) {
            if name != DEFAULT_SESSION {
                return Err(ControlError::NoSession(name));
            }
            self.create_session(&SessionRequest {
                name: name.clone(),
                owner: req.owner,
                ..SessionRequest::default()
            })?;
        }
        let command = crate::policy::command_text(&req.command);
        let ctx = self.admit_context(&name, &intent, &command, waited);
        let plan = &self.sessions[&name].plan;
        let admitted = plan::admit_with(
            &self.policy,
            plan,
            self.session_load(&name),
            &intent,
            &command,
            &ctx,
        )?;
        // Taken before anything can fail: a failed declaration never leaves an id (or
        // a cgroup name) that a later one would trip over.
        let id = self.ids.take()?;
        let cg = self.layout.call(&name, id);
        cg.create(false)?;
        let owner = self.sessions[&name].owner;
        let cgroup_id = match apply_call_limits(&cg, &admitted.limits)
            .and_then(|()| cg.delegate(owner))
            .and_then(|()| cg.id())
        {
            Ok(cgid) => cgid,
            Err(e) => {
                self.reaper.reap(cg);
                return Err(e.into());
            }
        };
        let ceiling_before =
            memory::events(&self.layout.calls(&name), memory::EVENTS_LOCAL).unwrap_or_default();
        let session_before =
            memory::events(&self.layout.session(&name), memory::EVENTS_LOCAL).unwrap_or_default();
        let granted_high = admitted.limits.memory_high;
        let call = RunningCall {
            client_token: req.client_token.clone(),
            tool_use_id: req.tool_use_id.clone(),
            session: name,
            command: req.command.clone(),
            intent,
            limits: admitted.limits,
            clamps: admitted.clamps,
            suggestion: admitted.suggestion,
            admission: Some(admitted.admission),
            cgroup: cg,
            cgroup_id,
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            ceiling_before,
            session_before,
            timed_out: false,
            budget_exceeded: false,
            empty_since: None,
            tool_exit_swept: false,
            memory: CallMemory {
                high: granted_high,
                ..CallMemory::default()
            },
            adopted_tool: None,
            tool_gone_at: None,
        };
        if let Err(e) = self.store.save(&call.state(id)) {
            // The call runs all the same (an agent's command is not refused for a full
            // state disk), but a restarted daemon could not re-adopt it: say so.
            self.state_errors.note(e);
        }
        self.hooks_created(cgroup_id, CgroupRole::Call(&call.limits));
        self.events.publish(EventBody::CallDeclared {
            call_id: id,
            session: call.session.clone(),
            class: call.limits.class.clone(),
            priority: call.limits.priority,
            command: call.command.clone(),
            limits: call.limits.clone(),
            clamps: call.clamps.clone(),
        });
        self.running.insert(id, call);
        Ok(self.grant_of(id).expect("inserted above"))
    }

    /// What admission needs besides the call: the recorded peaks of the call's class
    /// (all, and the session's own) from the in-memory history, and, with admission
    /// on, the host's memory.
    fn admit_context(
        &self,
        session: &str,
        intent: &Intent,
        command: &str,
        waited: Option<Duration>,
    ) -> AdmitContext {
        let mut ctx = AdmitContext {
            queueing: waited.is_some(),
            waited: waited.unwrap_or_default(),
            ..AdmitContext::default()
        };
        if !self.policy.admission.enabled {
            return ctx;
        }
        if intent.mem.is_none()
            && let Some(class) = plan::call_class(&self.policy, intent, command)
        {
            for r in self.history.recent(
                |r| r.limits.class.as_deref() == Some(&class.name),
                usize::MAX,
            ) {
                if let Some(peak) = r.accounting.memory_peak {
                    ctx.class_peaks.push(peak);
                    if r.session == session {
                        ctx.session_peaks.push(peak);
                    }
                }
            }
        }
        ctx.host = self
            .memory_reading()
            .ok()
            .filter(|m| m.limit > 0)
            .map(|m| HostMemory {
                used_percent: (u128::from(m.usage) * 100 / u128::from(m.limit)).min(100) as u8,
                pressure_at: self.policy.memory.pressure_at,
                protected: self.top_priority(),
            });
        ctx
    }

    /// The grant of a running call (what its declaration answered).
    fn grant_of(&self, id: u64) -> Option<CallGrant> {
        let call = self.running.get(&id)?;
        Some(CallGrant {
            call_id: id,
            session: call.session.clone(),
            cgroup: call.cgroup.path().display().to_string(),
            cgroup_id: call.cgroup_id,
            limits: call.limits.clone(),
            clamps: call.clamps.clone(),
            admission: call.admission.clone(),
            end_watched: self.hooks.iter().any(|h| h.sees_tool_exit(call.cgroup_id)),
        })
    }

    fn grant_for_token(&self, token: &str) -> Option<CallGrant> {
        let (id, _) = self
            .running
            .iter()
            .find(|(_, c)| c.client_token.as_deref() == Some(token))?;
        self.grant_of(*id)
    }

    /// Rewrites a running call's state file after a mark changed (timeout, budget,
    /// pressure kill), so a restarted daemon keeps it. A failure is noted for the
    /// status: the mark is in memory either way.
    pub(super) fn save_running(&mut self, id: u64) {
        let saved = match self.running.get(&id) {
            Some(call) => self.store.save(&call.state(id)),
            None => Ok(()),
        };
        if let Err(e) = saved {
            self.state_errors.note(e);
        }
    }

    /// The timeout of a running call expired: kill its cgroup; its end (the tool's
    /// exit) is recorded as `timeout`. Returns false if the call already ended.
    pub fn expire_call(&mut self, id: u64) -> Result<bool, ControlError> {
        let Some(call) = self.running.get_mut(&id) else {
            return Ok(false);
        };
        call.timed_out = true;
        let killed = call.cgroup.kill();
        self.save_running(id);
        killed?;
        Ok(true)
    }

    /// The running call whose cgroup has this id.
    pub fn call_by_cgroup(&self, cgroup_id: u64) -> Option<u64> {
        self.running
            .iter()
            .find(|(_, c)| c.cgroup_id == cgroup_id)
            .map(|(id, _)| *id)
    }

    /// The scheduler reported that a call used up its CPU budget (`used_ms` so far):
    /// apply `action`. The call's record will say `cpu_budget_exceeded` if it ends by a
    /// signal.
    pub fn cpu_budget_exceeded(
        &mut self,
        id: u64,
        action: BudgetAction,
        used_ms: u64,
    ) -> Result<bool, ControlError> {
        let Some(call) = self.running.get_mut(&id) else {
            return Ok(false);
        };
        call.budget_exceeded = true;
        self.events.publish(EventBody::CpuBudgetExceeded {
            call_id: id,
            session: call.session.clone(),
            budget_ms: call.limits.cpu_budget_ms.unwrap_or(0),
            used_ms,
        });
        match action {
            BudgetAction::Throttle => {}
            BudgetAction::Freeze => call.cgroup.freeze(true)?,
            BudgetAction::Kill => call.cgroup.kill()?,
        }
        self.save_running(id);
        Ok(true)
    }

    /// The earliest deadline among the running calls that have not timed out yet: the
    /// daemon's one timer sleeps until then (no timer outlives its call).
    pub fn next_deadline(&self) -> Option<(Instant, u64)> {
        self.running
            .iter()
            .filter(|(_, c)| !c.timed_out)
            .map(|(id, c)| (c.started + c.limits.timeout(), *id))
            .min()
    }
}

/// A declaration's parts that need no state: its intent and session name, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub intent: Intent,
    pub session: String,
}

impl CallRequest {
    /// Validates what a declaration carries (command, token, intent, session name)
    /// without touching any state: the daemon's first step, and what the API fuzz
    /// target drives.
    pub fn check(&self) -> Result<Checked, ControlError> {
        if self.command.is_empty() || self.command.iter().any(|a| a.contains('\0')) {
            return Err(ControlError::BadRequest {
                what: "command".into(),
                reason: "must be a non-empty list of arguments without NUL bytes".into(),
            });
        }
        if let Some(t) = &self.tool_use_id {
            check_token("tool_use_id", t)?;
        }
        if let Some(t) = &self.client_token {
            check_token("client_token", t)?;
        }
        let intent = match &self.intent {
            None | Some(serde_json::Value::Null) => Intent::default(),
            Some(serde_json::Value::String(s)) => Intent::parse_any(s)?,
            Some(v @ serde_json::Value::Object(_)) => Intent::parse_json(&v.to_string())?,
            Some(other) => {
                return Err(ControlError::BadRequest {
                    what: "intent".into(),
                    reason: format!("expected a string or an object, got {other}"),
                });
            }
        };
        let session = self
            .session
            .clone()
            .unwrap_or_else(|| DEFAULT_SESSION.to_string());
        plan::check_session_name(&session)?;
        Ok(Checked { intent, session })
    }
}

/// A client token: 1..=64 of `[A-Za-z0-9_.-]`.
fn check_token(what: &str, t: &str) -> Result<(), ControlError> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TOKEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ControlError::BadRequest {
            what: what.into(),
            reason: format!(
                "must be 1 to {MAX_TOKEN} characters of A-Z a-z 0-9 _ . - (got {} characters)",
                t.chars().count()
            ),
        })
    }
}

/// Writes a call's limits into its fresh cgroup.
/// A new cgroup starts with `memory.high` = max, `cpu.weight` = 100 and `cpu.max` = max
/// (cgroup-v2.rst); writes that would set those defaults are skipped, as every write is
/// on the per-call path. No swap is inherited: the session's `memory.swap.max` is 0 and
/// limits are hierarchical, so the call's own file is not written.
fn apply_call_limits(cg: &Cgroup, l: &CallLimits) -> Result<(), CgroupError> {
    memory::set_oom_group(cg)?;
    memory::set_max(cg, Some(l.memory_max))?;
    if l.memory_high.is_some() {
        memory::set_high(cg, l.memory_high)?;
    }
    if l.cpu_weight != cpu::DEFAULT_WEIGHT {
        cpu::set_weight(cg, l.cpu_weight)?;
    }
    if l.millicpus.is_some() {
        cpu::set_max(cg, l.millicpus)?;
    }
    pids::set_max(cg, l.pids_max)?;
    Ok(())
}
