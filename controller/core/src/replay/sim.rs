//! The simulator: recorded runs replayed as concurrent sessions on a host of a given
//! memory, one tick per second, through the daemon's own decisions: `plan::plan_session`
//! and `plan::admit` size every session and call, `pressure::burst_high` grows a call
//! past its `memory.high`, and `pressure::decide`, `victims`, `kill_target` and
//! `throttle_high` run the graduated memory response on the host's usage. What the
//! kernel would do is modelled plainly: a call above its `memory.max`, a session's calls
//! above `calls/`'s ceiling or a session above its budget lose their largest call; a
//! host at its limit with no victim for the response loses the task with the highest OOM
//! badness (usage plus `oom_score_adj` per mille of the host; the runtime's is -900).
//!
//! Memory follows the recording, with two exceptions. A call the memory response holds
//! (throttled at its usage, or frozen) does not grow: while its next recorded second
//! would take it above its `memory.high` (frozen: at all), it stays where it is and its
//! session's recording waits (the agent waits for its tool) until the response relents.
//! A killed call holds nothing for the rest of its run. A call over its own
//! `memory.high` with no room to burst is counted as throttled but replayed as recorded
//! (the kernel slows it by an amount a recording cannot say). Session `i`
//! replays run `i mod runs`, looping over the horizon, starting at a phase of its run
//! spread by the golden ratio (agents on a host do not start in step).

use std::time::{Duration, Instant};

use super::trace::Run;
use crate::controller::RUNTIME_OOM_SCORE_ADJ;
use crate::intent::Priority;
use crate::plan::{self, CallLimits, PlanError, SessionLoad, SessionPlan, SessionRequest};
use crate::policy::Policy;
use crate::pressure::{self, CallView, Decision, Reading, Step};

mod report;

pub use report::{KillCause, KillRecord, Kills, Report, SessionReport};

/// One session of a simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSpec {
    /// Index of the run it replays.
    pub run: usize,
    pub priority: Priority,
    /// Tick of the run at which it starts.
    pub phase: usize,
}

/// `n` sessions over `runs`: session `i` replays run `i mod runs.len()` with priority
/// `priorities[i mod len]` (normal when empty), at a golden-ratio phase (session 0 at 0).
pub fn sessions(runs: &[Run], n: usize, priorities: &[Priority]) -> Vec<SessionSpec> {
    const GOLDEN: f64 = 0.618_033_988_749_895;
    (0..n)
        .map(|i| {
            let run = i % runs.len().max(1);
            let len = runs.get(run).map_or(1, Run::len);
            let phase = ((i as f64 * GOLDEN).fract() * len as f64) as usize;
            SessionSpec {
                run,
                priority: priorities
                    .get(i % priorities.len().max(1))
                    .copied()
                    .unwrap_or_default(),
                phase: phase.min(len.saturating_sub(1)),
            }
        })
        .collect()
}

/// A call in flight.
#[derive(Debug)]
struct Live {
    id: u64,
    session: usize,
    call: usize,
    limits: CallLimits,
    high: Option<u64>,
    usage: u64,
    killed: bool,
    throttled: bool,
    burst: bool,
    response_throttled: bool,
    frozen: bool,
    /// The response's hold in force (cleared when it relents).
    hold: Option<Hold>,
}

/// How the memory response holds a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Its `memory.high` is at its usage: it cannot grow.
    Throttled,
    /// It cannot run.
    Frozen,
}

struct Sim<'a> {
    policy: &'a Policy,
    runs: &'a [Run],
    specs: &'a [SessionSpec],
    plans: Vec<SessionPlan>,
    host: u64,
    live: Vec<Live>,
    dead: Vec<bool>,
    /// Ticks each session's recording has waited on a held call.
    waited: Vec<usize>,
    next_id: u64,
    report: Report,
    state: pressure::State,
    steps: [u32; 4],
    start: Instant,
    /// How long one recorded second lasts on the response's clock.
    tick: Duration,
}

/// Replays `specs` over `runs` for `seconds` on a host of `host` bytes.
pub fn simulate(
    policy: &Policy,
    runs: &[Run],
    specs: &[SessionSpec],
    host: u64,
    seconds: usize,
) -> Result<Report, PlanError> {
    simulate_at(policy, runs, specs, host, seconds, 1)
}

/// [`simulate`] with the recording played `speed` times faster: each recorded second
/// lasts 1/`speed` s of the memory response's clock (its `step_interval` re-checks), as
/// in a time-compressed replay (`cargo xtask bench memory --speeds`).
pub fn simulate_at(
    policy: &Policy,
    runs: &[Run],
    specs: &[SessionSpec],
    host: u64,
    seconds: usize,
    speed: u32,
) -> Result<Report, PlanError> {
    let mut plans = Vec::with_capacity(specs.len());
    let mut sessions = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let name = format!("s{i}");
        plans.push(plan::plan_session(
            policy,
            &SessionRequest {
                name: name.clone(),
                priority: Some(spec.priority),
                ..Default::default()
            },
        )?);
        sessions.push(SessionReport {
            session: name,
            run: runs[spec.run].name.clone(),
            priority: spec.priority,
            static_reserve: runs[spec.run].peak(),
            ..Default::default()
        });
    }
    let mut sim = Sim {
        policy,
        runs,
        specs,
        plans,
        host,
        live: Vec::new(),
        dead: vec![false; specs.len()],
        waited: vec![0; specs.len()],
        next_id: 1,
        report: Report {
            host_memory: host,
            seconds,
            static_reserve: sessions.iter().map(|s| s.static_reserve).sum(),
            sessions,
            ..Default::default()
        },
        state: pressure::State::default(),
        steps: [0; 4],
        start: Instant::now(),
        tick: Duration::from_secs(1) / speed.max(1),
    };
    for t in 0..seconds {
        sim.tick(t);
    }
    let live = std::mem::take(&mut sim.live);
    for call in live {
        sim.finish(call);
    }
    let steps = [Step::Throttle, Step::Reclaim, Step::Freeze, Step::Kill];
    sim.report.steps = steps
        .into_iter()
        .zip(sim.steps)
        .filter(|(_, n)| *n > 0)
        .collect();
    Ok(sim.report)
}

impl Sim<'_> {
    /// The session's second of its run at tick `t` (it waited `waited[s]` ticks).
    fn local(&self, s: usize, t: usize) -> usize {
        (t - self.waited[s] + self.specs[s].phase) % self.runs[self.specs[s].run].len()
    }

    fn tick(&mut self, t: usize) {
        for s in 0..self.specs.len() {
            if t > 0 && self.held(s, t) {
                self.waited[s] += 1;
                self.report.sessions[s].waited += 1;
            } else {
                self.advance(s, t);
            }
        }
        for i in 0..self.live.len() {
            let l = &self.live[i];
            let run = &self.runs[self.specs[l.session].run];
            let call = &run.calls[l.call];
            let at = self.local(l.session, t) - call.start;
            self.live[i].usage = if l.killed { 0 } else { call.usage[at] };
        }
        self.call_limits(t);
        self.session_limits(t);
        self.respond(t);
        self.host_limit(t);
        self.measure(t);
    }

    /// Whether a call of session `s` the response holds would have to grow (or run, if
    /// frozen) for the session to go on at tick `t`.
    fn held(&self, s: usize, t: usize) -> bool {
        let next = self.local(s, t);
        let run = &self.runs[self.specs[s].run];
        self.calls_of(s).any(|i| {
            let l = &self.live[i];
            let c = &run.calls[l.call];
            let grows = || {
                (c.start..c.end).contains(&next)
                    && l.high.is_some_and(|high| c.usage[next - c.start] > high)
            };
            match l.hold {
                Some(Hold::Frozen) => true,
                Some(Hold::Throttled) => grows(),
                None => false,
            }
        })
    }

    /// Ends the session's calls that are over, starts those that begin now (at the
    /// first tick, also those in progress at its phase).
    fn advance(&mut self, s: usize, t: usize) {
        let local = self.local(s, t);
        let run = &self.runs[self.specs[s].run];
        let (ended, kept): (Vec<Live>, Vec<Live>) =
            std::mem::take(&mut self.live).into_iter().partition(|l| {
                l.session == s && {
                    let c = &run.calls[l.call];
                    !(c.start..c.end).contains(&local)
                }
            });
        self.live = kept;
        for call in ended {
            self.finish(call);
        }
        if self.dead[s] {
            return;
        }
        if local == 0 || t == 0 {
            self.report.sessions[s].plays += 1;
        }
        // Calls are ordered by start: those starting now, or at the first tick also
        // those in progress.
        let first = if t == 0 {
            0
        } else {
            run.calls.partition_point(|c| c.start < local)
        };
        let last = run.calls.partition_point(|c| c.start <= local);
        for i in first..last {
            if run.calls[i].end > local {
                self.admit(s, i);
            }
        }
    }

    /// Admits a call through the daemon's `plan::admit`, with its session's load.
    fn admit(&mut self, s: usize, call: usize) {
        let running: Vec<&Live> = self.live.iter().filter(|l| l.session == s).collect();
        let load = SessionLoad {
            expected_mem: running.iter().map(|l| l.limits.memory_expected).sum(),
            running: running.len(),
        };
        let c = &self.runs[self.specs[s].run].calls[call];
        let report = &mut self.report.sessions[s];
        match plan::admit(self.policy, &self.plans[s], load, &c.intent, &c.command) {
            Ok(admitted) => {
                let full = plan::admit(
                    self.policy,
                    &self.plans[s],
                    SessionLoad::default(),
                    &c.intent,
                    &c.command,
                );
                if full.is_ok_and(|f| f.limits.memory_expected > admitted.limits.memory_expected) {
                    report.clamped += 1;
                }
                report.calls += 1;
                self.live.push(Live {
                    id: self.next_id,
                    session: s,
                    call,
                    high: admitted.limits.memory_high,
                    limits: admitted.limits,
                    usage: 0,
                    killed: false,
                    throttled: false,
                    burst: false,
                    response_throttled: false,
                    frozen: false,
                    hold: None,
                });
                self.next_id += 1;
            }
            Err(_) => report.rejected += 1,
        }
    }

    fn finish(&mut self, l: Live) {
        let r = &mut self.report.sessions[l.session];
        r.throttled += u32::from(l.throttled);
        r.burst += u32::from(l.burst);
        r.response_throttled += u32::from(l.response_throttled);
        r.frozen += u32::from(l.frozen);
    }

    fn runtime_usage(&self, s: usize, t: usize) -> u64 {
        if self.dead[s] {
            return 0;
        }
        self.runs[self.specs[s].run].runtime[self.local(s, t)]
    }

    fn root_usage(&self, t: usize) -> u64 {
        let runtimes: u64 = (0..self.specs.len())
            .map(|s| self.runtime_usage(s, t))
            .sum();
        runtimes + self.live.iter().map(|l| l.usage).sum::<u64>()
    }

    /// Each call against its own limits: killed above `memory.max`; above
    /// `memory.high` it bursts while the host has slack (`pressure::burst_high`), else
    /// it is throttled.
    fn call_limits(&mut self, t: usize) {
        let root = self.root_usage(t);
        let in_force = self.state.step.is_some();
        for i in 0..self.live.len() {
            if self.live[i].killed {
                continue;
            }
            if self.live[i].usage > self.live[i].limits.memory_max {
                self.kill(i, t, KillCause::CallLimit);
                continue;
            }
            let l = &mut self.live[i];
            while let Some(high) = l.high.filter(|&h| l.usage > h) {
                match pressure::burst_high(
                    &self.policy.memory,
                    in_force,
                    high,
                    l.limits.memory_max,
                    root,
                    self.host,
                ) {
                    Some(raised) if raised > high => {
                        l.high = Some(raised);
                        l.burst = true;
                    }
                    _ => {
                        l.throttled = true;
                        break;
                    }
                }
            }
        }
    }

    /// The kernel at each session's `calls/` ceiling and budget: the largest call goes.
    fn session_limits(&mut self, t: usize) {
        for s in 0..self.specs.len() {
            let plan = &self.plans[s];
            let (ceiling, budget) = (plan.calls_memory_max, plan.memory_max);
            let runtime = self.runtime_usage(s, t);
            loop {
                let calls: u64 = self.calls_of(s).map(|i| self.live[i].usage).sum();
                let cause = if calls > ceiling {
                    KillCause::CallsCeiling
                } else if runtime + calls > budget {
                    KillCause::SessionBudget
                } else {
                    break;
                };
                match self.calls_of(s).max_by_key(|&i| self.live[i].usage) {
                    Some(i) if self.live[i].usage > 0 => self.kill(i, t, cause),
                    _ => break,
                }
            }
        }
    }

    fn calls_of(&self, s: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.live.len()).filter(move |&i| self.live[i].session == s && !self.live[i].killed)
    }

    /// The graduated memory response on the host's usage, as the daemon runs it: a
    /// decision at the tick, then at every `step_interval` within it while a step is in
    /// force (the daemon's re-check timer).
    fn respond(&mut self, t: usize) {
        let p = &self.policy.memory;
        let interval = p.step_interval.max(Duration::from_millis(1));
        let mut at = self.tick * t as u32;
        let end = self.tick * (t as u32 + 1);
        while at < end {
            let usage = self.root_usage(t);
            let reading = Reading {
                usage,
                limit: self.host,
                psi: false,
                watermark: false,
                at_max: usage > self.host,
            };
            let (decision, state) = pressure::decide(p, self.state, &reading, self.start + at);
            self.state = state;
            match decision {
                Decision::Escalate(step) => self.step(step, t),
                Decision::Relent => self.relent(),
                Decision::Hold => {}
            }
            if self.state.step.is_none() {
                break;
            }
            at += interval;
        }
    }

    fn views(&self) -> Vec<CallView> {
        self.live
            .iter()
            .map(|l| CallView {
                call_id: l.id,
                priority: l.limits.priority,
                killed: l.killed,
            })
            .collect()
    }

    fn top_priority(&self) -> Priority {
        (0..self.specs.len())
            .filter(|&s| !self.dead[s])
            .map(|s| self.plans[s].priority)
            .max()
            .unwrap_or_default()
    }

    fn step(&mut self, step: Step, t: usize) {
        self.steps[step as usize] += 1;
        let views = self.views();
        let top = self.top_priority();
        let index = |id: u64, live: &[Live]| live.iter().position(|l| l.id == id);
        match step {
            Step::Throttle | Step::Reclaim | Step::Freeze => {
                for id in pressure::victims(&views, top) {
                    let Some(i) = index(id, &self.live) else {
                        continue;
                    };
                    let l = &mut self.live[i];
                    match step {
                        Step::Throttle => {
                            l.high = Some(pressure::throttle_high(l.usage));
                            l.response_throttled = true;
                            l.hold = Some(Hold::Throttled);
                        }
                        Step::Freeze => {
                            l.frozen = true;
                            l.hold = Some(Hold::Frozen);
                        }
                        _ => {}
                    }
                }
            }
            Step::Kill => {
                if let Some(i) =
                    pressure::kill_target(&views, top).and_then(|id| index(id, &self.live))
                {
                    self.kill(i, t, KillCause::Response);
                }
            }
        }
    }

    /// Pressure subsided: throttled calls get their `memory.high` back, frozen ones thaw.
    fn relent(&mut self) {
        for l in &mut self.live {
            l.high = l.limits.memory_high;
            l.hold = None;
        }
    }

    /// The kernel at the host's limit: the OOM killer takes the task with the highest
    /// badness until the host fits, an agent runtime (-900) only when no call is left.
    fn host_limit(&mut self, t: usize) {
        while self.root_usage(t) > self.host {
            let per_mille = |adj: i64| adj * (self.host / 1000) as i64;
            let call = (0..self.live.len())
                .filter(|&i| !self.live[i].killed && self.live[i].usage > 0)
                .max_by_key(|&i| {
                    let l = &self.live[i];
                    l.usage as i64 + per_mille(i64::from(l.limits.oom_score_adj))
                });
            let runtime = (0..self.specs.len())
                .filter(|&s| !self.dead[s])
                .max_by_key(|&s| self.runtime_usage(s, t));
            let badness_call = call.map(|i| {
                let l = &self.live[i];
                l.usage as i64 + per_mille(i64::from(l.limits.oom_score_adj))
            });
            let badness_runtime = runtime.map(|s| {
                self.runtime_usage(s, t) as i64 + per_mille(i64::from(RUNTIME_OOM_SCORE_ADJ))
            });
            match (call, runtime) {
                (Some(i), _) if badness_call >= badness_runtime => {
                    self.kill(i, t, KillCause::HostOom)
                }
                (_, Some(s)) => self.kill_session(s),
                _ => break,
            }
        }
    }

    /// The host's OOM killer took a session's agent runtime: the session is over.
    fn kill_session(&mut self, s: usize) {
        self.dead[s] = true;
        self.report.sessions[s].kills.runtime += 1;
        self.report.kills.runtime += 1;
        for l in self.live.iter_mut().filter(|l| l.session == s) {
            l.killed = true;
            l.usage = 0;
        }
    }

    fn measure(&mut self, t: usize) {
        let host = self.root_usage(t);
        self.report.peak_used = self.report.peak_used.max(host);
        for s in 0..self.specs.len() {
            let calls = self.calls_of(s);
            let (used, expected) = calls.fold((0, 0), |(u, e), i| {
                let l = &self.live[i];
                (u + l.usage, e + l.high.unwrap_or(l.limits.memory_max))
            });
            let used = self.runtime_usage(s, t) + used;
            let r = &mut self.report.sessions[s];
            r.peak_used = r.peak_used.max(used);
            r.peak_expected = r
                .peak_expected
                .max(self.plans[s].runtime_reserve + expected);
        }
    }
    fn kill(&mut self, i: usize, t: usize, cause: KillCause) {
        let l = &mut self.live[i];
        l.killed = true;
        l.usage = 0;
        let (s, call) = (l.session, l.call);
        let limits = l.limits.clone();
        let run = &self.runs[self.specs[s].run];
        let c = &run.calls[call];
        let alone = run.runtime.get(c.start).copied().unwrap_or(0) + c.peak();
        self.report.sessions[s].kills.add(cause);
        self.report.kills.add(cause);
        self.report.killed.push(KillRecord {
            second: t,
            session: self.report.sessions[s].session.clone(),
            run: run.name.clone(),
            command: c.command.chars().take(120).collect(),
            class: limits.class.clone(),
            cause,
            recorded_peak: c.peak(),
            memory_high: limits.memory_high,
            memory_max: limits.memory_max,
            fits_host: alone <= self.host,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests;
