//! The memory response's actions on running calls (the decisions are in
//! `crate::pressure`): throttle, reclaim, freeze, kill, relent, burst. Each notes what
//! it did in the call's record. Reclaim can take the kernel a long time, so it is split:
//! [`Controller::reclaim_jobs`] says what to reclaim, [`ReclaimJob::run`] does it with no
//! lock held, and [`Controller::note_reclaims`] writes the result down.

use super::{Controller, StepReport};
use crate::cgroup::{Cgroup, memory};
use crate::pressure::{self, CallView, Step};

/// One `memory.reclaim` to do, on a session of the victims.
#[derive(Debug, Clone)]
pub struct ReclaimJob {
    pub session: String,
    cgroup: Cgroup,
    amount: u64,
    /// The victims of that session.
    calls: Vec<u64>,
}

/// What a [`ReclaimJob`] did.
#[derive(Debug, Clone)]
pub struct ReclaimDone {
    job: ReclaimJob,
    reclaimed: u64,
    short: bool,
}

impl ReclaimJob {
    /// Writes `memory.reclaim`: blocks while the kernel reclaims. The kernel answers
    /// EAGAIN when it could not reclaim the whole amount (anonymous memory without
    /// swap cannot be); what it did reclaim is reported either way.
    pub fn run(self) -> ReclaimDone {
        let before = self.cgroup.read_u64(memory::CURRENT).unwrap_or(0);
        let result = self.cgroup.write(memory::RECLAIM, &self.amount.to_string());
        let after = self.cgroup.read_u64(memory::CURRENT).unwrap_or(0);
        ReclaimDone {
            reclaimed: before.saturating_sub(after),
            short: result.is_err(),
            job: self,
        }
    }
}

impl Controller {
    /// The memory the response defends: agentcg's root usage against the effective
    /// limit, the tightest of the root's and its ancestors' memory.max / memory.high
    /// and what the host has left (cgroup::limit).
    pub fn memory_reading(
        &self,
    ) -> Result<crate::cgroup::limit::MemoryReading, crate::cgroup::limit::LimitError> {
        crate::cgroup::limit::read(&self.layout.root())
    }

    /// Running calls as the memory response sees them (no I/O: evaluated on every
    /// signal; a step reads the usage of the calls it acts on).
    pub fn pressure_calls(&self) -> Vec<CallView> {
        self.running
            .iter()
            .map(|(id, c)| CallView {
                call_id: *id,
                priority: c.limits.priority,
                killed: c.memory.killed,
            })
            .collect()
    }

    /// The highest priority among the sessions: whom the memory response protects.
    pub(super) fn top_priority(&self) -> crate::intent::Priority {
        self.sessions
            .values()
            .map(|s| s.plan.priority)
            .max()
            .unwrap_or_default()
    }

    /// The calls the memory response would act on now.
    pub fn memory_victims(&self) -> Vec<u64> {
        pressure::victims(&self.pressure_calls(), self.top_priority())
    }

    /// Takes one step of the memory response against its victims (not reclaim: see
    /// [`Controller::reclaim_jobs`]).
    pub fn memory_step(&mut self, step: Step, reason: &str) -> StepReport {
        let calls = self.pressure_calls();
        let top = self.top_priority();
        let targets = match step {
            Step::Kill => pressure::kill_target(&calls, top).into_iter().collect(),
            _ => pressure::victims(&calls, top),
        };
        let mut report = StepReport {
            step: step.as_str().to_string(),
            reason: reason.to_string(),
            ..StepReport::default()
        };
        for id in targets {
            let Some(call) = self.running.get_mut(&id) else {
                continue;
            };
            let usage = call.cgroup.read_u64(memory::CURRENT).unwrap_or(0);
            let (result, detail) = match step {
                Step::Throttle => {
                    let high = pressure::throttle_high(usage);
                    call.memory.throttled = true;
                    call.memory.high = Some(high);
                    (
                        memory::set_high(&call.cgroup, Some(high)),
                        format!("memory.high {} (usage {})", high, usage),
                    )
                }
                Step::Freeze => {
                    call.memory.frozen = true;
                    (
                        call.cgroup.freeze(true),
                        format!("cgroup.freeze 1 (usage {usage})"),
                    )
                }
                Step::Kill => {
                    call.memory.killed = true;
                    (call.cgroup.kill(), format!("cgroup.kill (usage {usage})"))
                }
                Step::Reclaim => continue,
            };
            let detail = match result {
                Ok(()) => detail,
                Err(e) => format!("{detail} failed: {e}"),
            };
            call.act(&self.events, id, step.as_str(), &detail, reason);
            report.calls.push(id);
            report.cgroup_ids.push(call.cgroup_id);
            report.details.push(format!("call {id}: {detail}"));
            if step == Step::Kill {
                // A restarted daemon must still know the kill was the response's.
                self.save_running(id);
            }
        }
        report
    }

    /// The reclaim step, to run without the controller: one job per session of the
    /// victims.
    pub fn reclaim_jobs(&self) -> Vec<ReclaimJob> {
        let targets = self.memory_victims();
        let mut jobs: Vec<ReclaimJob> = Vec::new();
        for id in targets {
            let Some(call) = self.running.get(&id) else {
                continue;
            };
            if let Some(job) = jobs.iter_mut().find(|j| j.session == call.session) {
                job.calls.push(id);
                continue;
            }
            let cgroup = self.layout.session(&call.session);
            let usage = cgroup.read_u64(memory::CURRENT).unwrap_or(0);
            jobs.push(ReclaimJob {
                session: call.session.clone(),
                amount: pressure::reclaim_amount(&self.policy.memory, usage),
                cgroup,
                calls: vec![id],
            });
        }
        jobs
    }

    /// Notes what the reclaims did in the victims' records.
    pub fn note_reclaims(&mut self, done: Vec<ReclaimDone>, reason: &str) -> StepReport {
        let mut report = StepReport {
            step: Step::Reclaim.as_str().to_string(),
            reason: reason.to_string(),
            ..StepReport::default()
        };
        for d in done {
            let detail = format!(
                "session {}: memory.reclaim {} -> {} reclaimed{}",
                d.job.session,
                d.job.amount,
                d.reclaimed,
                if d.short { " (short)" } else { "" }
            );
            for id in d.job.calls {
                // A call that ended meanwhile has its record already.
                let Some(call) = self.running.get_mut(&id) else {
                    continue;
                };
                call.act(&self.events, id, "reclaim", &detail, reason);
                report.calls.push(id);
                report.cgroup_ids.push(call.cgroup_id);
            }
            report.details.push(detail);
        }
        report
    }

    /// Pressure has subsided: thaws frozen calls and gives throttled ones their
    /// granted memory.high back.
    pub fn memory_relent(&mut self, reason: &str) -> StepReport {
        let mut report = StepReport {
            step: "relent".into(),
            reason: reason.to_string(),
            ..StepReport::default()
        };
        for (id, call) in &mut self.running {
            let m = &mut call.memory;
            if m.killed || !(m.frozen || m.throttled) {
                continue;
            }
            let mut done = Vec::new();
            if m.frozen {
                m.frozen = false;
                match call.cgroup.freeze(false) {
                    Ok(()) => done.push(("thaw", "cgroup.freeze 0".to_string())),
                    Err(e) => done.push(("thaw", format!("cgroup.freeze 0 failed: {e}"))),
                }
            }
            if m.throttled {
                m.throttled = false;
                m.high = call.limits.memory_high;
                let what = format!("memory.high {}", memory::limit_value(m.high));
                match memory::set_high(&call.cgroup, m.high) {
                    Ok(()) => done.push(("restore", what)),
                    Err(e) => done.push(("restore", format!("{what} failed: {e}"))),
                }
            }
            for (action, detail) in done {
                call.act(&self.events, *id, action, &detail, reason);
                report.details.push(format!("call {id}: {detail}"));
            }
            report.calls.push(*id);
            report.cgroup_ids.push(call.cgroup_id);
        }
        report
    }

    /// A call crossed its memory.high: raise it by the policy's burst step when the
    /// root has slack and no response is `in_force`. Returns the new memory.high.
    pub fn memory_burst(&mut self, cgroup_id: u64, in_force: bool) -> Option<(u64, u64)> {
        let reading = self.memory_reading().ok()?;
        let (root_usage, root_limit) = (reading.usage, reading.limit);
        let policy = &self.policy.memory;
        let (id, call) = self
            .running
            .iter_mut()
            .find(|(_, c)| c.cgroup_id == cgroup_id)?;
        if call.memory.throttled || call.memory.frozen {
            return None;
        }
        let high = call.memory.high?;
        let new = pressure::burst_high(
            policy,
            in_force,
            high,
            call.limits.memory_max,
            root_usage,
            root_limit,
        )?;
        memory::set_high(&call.cgroup, Some(new)).ok()?;
        call.memory.high = Some(new);
        call.act(
            &self.events,
            *id,
            "burst",
            &format!("memory.high {high} -> {new}"),
            "crossed it while the host had slack",
        );
        Some((*id, new))
    }
}
