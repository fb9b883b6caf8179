//! Who ends a call, and how (docs/ARCHITECTURE.md#who-ends-a-call). One function,
//! [`Controller::end_call`], ends every call; four triggers call it:
//!
//! 1. the client's finish report ([`Controller::finish_call`], idempotent);
//! 2. the kernel telemetry seeing the call's tool exit ([`Controller::tool_exited`]);
//! 3. the sweep ([`Controller::sweep`]): a missed exit event, a call whose cgroup stayed
//!    empty with no report (its client died, or the tool ended while agentcgd was down);
//! 4. closing the call's session.
//!
//! Ending reads the final accounting, kills what the tool left behind, decides the
//! outcome and feedback, and hands the record to the history writer, which hands the
//! cgroup to the reaper once the record is on disk: nothing in it waits for the disk or for processes to die, and nothing
//! after the call leaves `running` can fail, so no record is lost and no cgroup leaks.

use std::time::{Duration, Instant};

use super::settle::Leftovers;
use super::{ABANDON_AFTER, ControlError, Controller, RunningCall};
use crate::cgroup::{cpu, memory, pids};
use crate::record::{self, Accounting, CallRecord, Ceilings, Enforced, ExitInfo, Outcome};

/// How long a call re-adopted without its tool waits for its client's report (the
/// client waits up to 10 s for a restarting daemon).
pub(super) const ADOPTED_REPORT_WAIT: Duration = Duration::from_secs(20);

/// The exit of a call whose client never reported: no code, no signal.
pub(super) const ABANDONED: ExitInfo = ExitInfo {
    code: None,
    signal: None,
};

/// What [`Controller::tool_exited`] did.
#[derive(Debug)]
pub enum ToolExit {
    /// The call ended; its record.
    Ended(Box<CallRecord>),
    /// Processes are still in the call's cgroup: the tool's own exit may still be under
    /// way, or it left processes behind. Ask again, with `force` once the grace is over.
    Populated,
    /// No running call has this cgroup (its client reported the end first).
    NotRunning,
}

impl Controller {
    /// The client reports its call's end (trigger 1). Idempotent: a call that already
    /// ended answers with its record.
    pub fn finish_call(&mut self, id: u64, exit: ExitInfo) -> Result<CallRecord, ControlError> {
        if self.running.contains_key(&id) {
            return self.end_call(id, exit);
        }
        self.history
            .get(id)
            .cloned()
            .ok_or(ControlError::NoCall(id))
    }

    /// The kernel hooks saw the tool of the call in `cgroup_id` exit (trigger 2): ends
    /// the call with that exit once its cgroup is empty, or at once with `force`
    /// (killing what is left).
    pub fn tool_exited(&mut self, cgroup_id: u64, exit: ExitInfo, force: bool) -> ToolExit {
        let Some(id) = self.call_by_cgroup(cgroup_id) else {
            return ToolExit::NotRunning;
        };
        if !force && self.running[&id].cgroup.populated().unwrap_or(true) {
            return ToolExit::Populated;
        }
        match self.end_call(id, exit) {
            Ok(rec) => ToolExit::Ended(Box::new(rec)),
            Err(_) => ToolExit::NotRunning,
        }
    }

    /// What is left in running call `id`'s cgroup after its tool exited (`None` when the
    /// cgroup is empty or the call is not running), for [`super::settle::LeftoverWatch`].
    pub fn leftovers(&self, id: u64) -> Option<Leftovers> {
        let call = self.running.get(&id)?;
        if !call.cgroup.populated().unwrap_or(false) {
            return None;
        }
        Some(Leftovers {
            tasks: pids::current(&call.cgroup).unwrap_or(0),
            limit_hits: pids::max_events(&call.cgroup).unwrap_or(0),
        })
    }

    /// Whether the kernel hooks saw the tool of running call `id` exit (agentcgd is
    /// about to end it): the API waits for that end instead of answering "running".
    pub fn tool_has_exited(&self, id: u64) -> bool {
        self.running
            .get(&id)
            .is_some_and(|c| self.hooks_tool_exit(c.cgroup_id).is_some())
    }

    /// Trigger 3. Finishes calls whose tool the kernel hooks saw exit but that are still
    /// running (the exit event was missed), with that exit: at once if their cgroup is
    /// empty, else on the next sweep (what is left is killed). And calls whose cgroup has
    /// stayed empty for [`ABANDON_AFTER`] without a report (the client died before the
    /// tool started or while agentcgd was down, or no hooks watch exits). Returns the
    /// records written.
    pub fn sweep(&mut self) -> Vec<CallRecord> {
        let now = Instant::now();
        let mut ended = Vec::new();
        let exits: Vec<(u64, Option<ExitInfo>)> = self
            .running
            .iter()
            .map(|(id, c)| (*id, self.hooks_tool_exit(c.cgroup_id)))
            .collect();
        for (id, tool_exit) in exits {
            let call = self.running.get_mut(&id).expect("listed above");
            let empty = !call.cgroup.populated().unwrap_or(true);
            if let Some(exit) = tool_exit {
                if empty || call.tool_exit_swept {
                    ended.push((id, exit));
                }
                call.tool_exit_swept = true;
                continue;
            }
            // A call re-adopted with its tool gone waits for its client's report only
            // so long; then what is left is killed.
            let unreported = call
                .tool_gone_at
                .is_some_and(|t| now.duration_since(t) >= ADOPTED_REPORT_WAIT);
            if unreported || abandoned(empty, &mut call.empty_since, now, ABANDON_AFTER) {
                ended.push((id, ABANDONED));
            }
        }
        ended
            .into_iter()
            .filter_map(|(id, exit)| self.end_call(id, exit).ok())
            .collect()
    }

    /// Ends every running call, killing what runs in it (`agentcgd --stop-ends-calls`
    /// when the service stops): each is recorded as killed. Returns the records.
    pub fn end_all_calls(&mut self) -> Vec<CallRecord> {
        let killed = ExitInfo {
            code: None,
            signal: Some(libc::SIGKILL),
        };
        let ids: Vec<u64> = self.running.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.end_call(id, killed).ok())
            .collect()
    }

    /// Ends a running call. The only place a call ends.
    pub(super) fn end_call(&mut self, id: u64, exit: ExitInfo) -> Result<CallRecord, ControlError> {
        let call = self.running.get(&id).ok_or(ControlError::NoCall(id))?;
        let acc = self.final_accounting(call);
        // What the tool left behind is counted now and killed once the record is in
        // the state file (a daemon killed in between recovers a record that says so).
        let leftover = call.cgroup.count_procs();
        let outcome = outcome_of(call, exit, &acc, leftover > 0);
        let plan = self.sessions.get(&call.session).map(|s| &s.plan);
        let ceilings = Ceilings {
            calls: plan.map_or(0, |p| p.calls_memory_max),
            session: plan.map_or(0, |p| p.memory_max),
            // Cgroupfs reads, only when the feedback may name the host's limit.
            host: if matches!(outcome, Outcome::MemoryPressure | Outcome::OomKilled) {
                self.memory_reading().map_or(0, |r| r.limit)
            } else {
                0
            },
        };
        let cgroup_id = call.cgroup_id;
        let mut state = call.state(id);
        let processes = self.hooks_removing(cgroup_id);
        let call = self.running.remove(&id).expect("looked up above");
        let rec = CallRecord {
            call_id: id,
            session: call.session.clone(),
            feedback: record::feedback(id, outcome, &call.limits, &acc, ceilings, &call.suggestion),
            cgroup: call.cgroup.path().display().to_string(),
            started_unix_ms: call.started_unix_ms,
            duration_ms: call.started.elapsed().as_millis() as u64,
            exit,
            outcome,
            accounting: acc,
            leftover_killed: leftover,
            processes,
            command: call.command,
            tool_use_id: call.tool_use_id,
            intent: call.intent,
            limits: call.limits,
            clamps: call.clamps,
            admission: call.admission,
            memory_actions: call.memory.actions,
        };
        // The record goes into the call's state file first (not fsynced, like the rest
        // of it): a daemon killed before the history has it recovers it from there.
        state.ended = Some(Box::new(rec.clone()));
        if let Err(e) = self.store.save(&state) {
            self.state_errors.note(e);
        }
        if leftover > 0 {
            // Best effort: the reaper kills again until the cgroup is empty.
            let _ = call.cgroup.kill();
        }
        self.history.remember(rec.clone());
        // The cgroup stays until the record is durable: a daemon killed meanwhile finds
        // it and re-adopts the call instead of taking it for lost.
        self.writer
            .submit(&rec, Some(self.store.path(id)), Some(call.cgroup));
        if let Some(s) = self.sessions.get_mut(&call.session) {
            s.calls_finished += 1;
        }
        Ok(rec)
    }

    /// The call's final accounting, read before anything is killed. A file that cannot
    /// be read leaves its part empty: the record is written regardless.
    fn final_accounting(&self, call: &RunningCall) -> Accounting {
        let calls_cg = self.layout.calls(&call.session);
        Accounting {
            memory_peak: memory::peak(&call.cgroup),
            cpu: cpu::usage(&call.cgroup).unwrap_or_default(),
            memory_events: memory::events(&call.cgroup, memory::EVENTS).unwrap_or_default(),
            shared_ceiling_events: memory::events(&calls_cg, memory::EVENTS_LOCAL)
                .unwrap_or_default()
                .since(&call.ceiling_before),
            session_events: memory::events(
                &self.layout.session(&call.session),
                memory::EVENTS_LOCAL,
            )
            .unwrap_or_default()
            .since(&call.session_before),
            pids_peak: pids::peak(&call.cgroup),
            pids_limit_hits: pids::max_events(&call.cgroup).unwrap_or(0),
        }
    }
}

fn outcome_of(call: &RunningCall, exit: ExitInfo, acc: &Accounting, leftovers: bool) -> Outcome {
    if exit == ABANDONED {
        return Outcome::Abandoned;
    }
    let enforced = Enforced {
        timed_out: call.timed_out,
        cpu_budget_exceeded: call.budget_exceeded,
        pressure_killed: call.memory.killed,
        leftovers_killed: leftovers,
    };
    record::outcome(&exit, acc, enforced)
}

/// Whether a call whose cgroup is `empty` now has been so for `after`; keeps the time
/// it was first seen empty in `since`.
fn abandoned(empty: bool, since: &mut Option<Instant>, now: Instant, after: Duration) -> bool {
    match (empty, *since) {
        (false, _) => {
            *since = None;
            false
        }
        (true, None) => {
            *since = Some(now);
            false
        }
        (true, Some(t)) => now.duration_since(t) >= after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_abandoned_only_after_staying_empty() {
        let t0 = Instant::now();
        let after = Duration::from_secs(30);
        let mut since = None;
        assert!(!abandoned(true, &mut since, t0, after));
        assert!(!abandoned(
            true,
            &mut since,
            t0 + Duration::from_secs(29),
            after
        ));
        assert!(abandoned(true, &mut since, t0 + after, after));
        // A process came back: the clock restarts.
        assert!(!abandoned(false, &mut since, t0 + after, after));
        assert!(!abandoned(
            true,
            &mut since,
            t0 + after * 2 - Duration::from_secs(1),
            after
        ));
        assert_eq!(since, Some(t0 + after * 2 - Duration::from_secs(1)));
    }
}
