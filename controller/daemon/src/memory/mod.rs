//! The graduated memory response, driven by signals, not timers: PSI triggers
//! (`poll` on `memory.pressure` of agentcg's root and of every session) and the BPF
//! memory programs' events (a call crossing its `memory.high`, the root nearing or
//! hitting its `memory.max`, OOM kills). Each signal re-reads the root's memory and
//! asks `agentcg_core::pressure::decide` what to do; the controller applies the step
//! and writes it into the affected calls' records. Only while a step is in force does
//! a timer re-check (to escalate if pressure persists, or relent once it subsides),
//! and while the kernel holds a watermark latched (it will not report the next
//! crossing). PSI triggers: `psi.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use agentcg_bpf::MemWatch;
use agentcg_core::cgroup::limit::{Defended, MemoryReading};
use agentcg_core::controller::ReclaimJob;
use agentcg_core::controller::{CgroupRole, KernelHooks, StepReport};
use agentcg_core::events::{EventBody, EventBus};
use agentcg_core::intent::Priority;
use agentcg_core::policy::MemoryPolicy;
use agentcg_core::pressure::{self, Decision, Reading, State, Step};
use agentcg_core::record::ProcessCounts;
use agentcg_core::units::HumanSize;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::supervisor::Shared;

mod psi;

use psi::{SessionTrigger, triggers_differ};

/// What an evaluation does after deciding.
enum Act {
    /// The step was taken (or none was needed).
    Done(Option<StepReport>),
    /// Reclaim, without the controller locked.
    Reclaim(Vec<ReclaimJob>),
}

/// Steps kept for `agentcg status`.
const KEEP_STEPS: usize = 64;

/// What happened in the kernel, as the response uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A PSI trigger fired on the root (`None`) or on a session.
    Psi { session: Option<u64> },
    /// A call's cgroup crossed its memory.high (BPF).
    OverHigh { cgroup_id: u64 },
    /// The root (or a watched ancestor) crossed its pressure watermark (BPF).
    NearMax { cgroup_id: u64 },
    /// It fell back below the watermark minus the BPF side's hysteresis: the kernel
    /// reports the next crossing again.
    NearMaxRecovered { cgroup_id: u64 },
    /// The kernel hit memory.max at the root (BPF `MEMCG_MAX`).
    AtMax,
    /// The kernel's OOM killer killed in a watched cgroup (BPF).
    OomKill { cgroup_id: u64 },
}

/// Changes to the set of PSI triggers, from the controller's hooks.
#[derive(Debug)]
enum Change {
    Session {
        cgroup_id: u64,
        name: String,
        priority: Priority,
    },
    Removed {
        cgroup_id: u64,
    },
    /// A reloaded policy's `[memory]`.
    Policy(MemoryPolicy),
}

/// One step as `agentcg status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepEvent {
    pub unix_ms: u64,
    #[serde(flatten)]
    pub report: StepReport,
}

/// The response's live state for `agentcg status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryStatus {
    /// Signals that drive it: `psi` and, when the BPF programs loaded, `bpf`.
    pub signals: Vec<String>,
    /// The step in force (`throttle`, ...), or `none`.
    pub step: String,
    /// Armed PSI triggers (root + sessions).
    pub psi_triggers: usize,
    /// agentcg's root usage and the effective limit defended (bytes).
    pub root_usage: u64,
    pub root_limit: u64,
    /// What sets `root_limit`: a cgroup's `memory.max` or `memory.high` (the root's
    /// or an ancestor's), or the host; `None` before the first reading.
    pub defended: Option<Defended>,
    /// Calls whose memory.high was raised because the host had slack.
    pub bursts: u64,
    /// The latest steps, oldest first.
    pub steps: VecDeque<StepEvent>,
}

pub type SharedMemoryStatus = Arc<Mutex<MemoryStatus>>;

/// Tells the response about sessions (each gets a PSI trigger).
#[derive(Debug)]
pub struct MemoryHooks {
    changes: mpsc::UnboundedSender<Change>,
}

impl KernelHooks for MemoryHooks {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn created(&mut self, cgroup_id: u64, role: CgroupRole<'_>) {
        if let CgroupRole::Session(plan) = role {
            let _ = self.changes.send(Change::Session {
                cgroup_id,
                name: plan.name.clone(),
                priority: plan.priority,
            });
        }
    }

    fn removing(&mut self, cgroup_id: u64) -> Option<ProcessCounts> {
        let _ = self.changes.send(Change::Removed { cgroup_id });
        None
    }

    fn policy_changed(&mut self, policy: &agentcg_core::policy::Policy) {
        let _ = self.changes.send(Change::Policy(policy.memory.clone()));
    }
}

/// Where the response's signals come from.
#[derive(Debug)]
pub struct Sources {
    pub signals: mpsc::UnboundedReceiver<Signal>,
    pub sender: mpsc::UnboundedSender<Signal>,
    /// The BPF memory programs, when loaded: their events feed `signals`, and the
    /// scheduler learns the victims through their shared state map.
    pub bpf: Option<Arc<MemWatch>>,
    /// Where pressure signals are published.
    pub events: Arc<EventBus>,
}

/// Starts the response task; returns the hooks to add to the controller.
pub fn start(shared: Shared, sources: Sources, status: SharedMemoryStatus) -> MemoryHooks {
    let (tx, changes) = mpsc::unbounded_channel();
    let policy = shared
        .lock()
        .map(|c| c.policy().memory.clone())
        .unwrap_or_else(|_| agentcg_core::policy::Policy::default_policy().memory);
    let mut signals = vec!["psi".to_string()];
    if sources.bpf.is_some() {
        signals.insert(0, "bpf memcg events".into());
    }
    if let Ok(mut s) = status.lock() {
        s.signals = signals;
        s.step = "none".into();
    }
    let response = Response {
        bpf: sources.bpf.clone(),
        events: sources.events.clone(),
        shared,
        policy,
        state: State::default(),
        status,
        sessions: BTreeMap::new(),
        root_trigger: None,
        psi_pending: false,
        watermark_pending: false,
        at_max_pending: false,
        latched: BTreeSet::new(),
    };
    tokio::spawn(response.run(sources, changes));
    MemoryHooks { changes: tx }
}

struct Response {
    shared: Shared,
    bpf: Option<Arc<MemWatch>>,
    events: Arc<EventBus>,
    policy: MemoryPolicy,
    state: State,
    status: SharedMemoryStatus,
    sessions: BTreeMap<u64, SessionTrigger>,
    /// The task waiting on the PSI trigger armed on agentcg's root.
    root_trigger: Option<tokio::task::JoinHandle<()>>,
    /// Signals seen since the last evaluation.
    psi_pending: bool,
    watermark_pending: bool,
    at_max_pending: bool,
    /// The watched cgroups whose watermark flag the kernel holds set: it will not fire
    /// again before they recover, so while any is set the response looks every
    /// `step_interval` instead of waiting for a signal.
    latched: BTreeSet<u64>,
}

impl Response {
    async fn run(mut self, mut sources: Sources, mut changes: mpsc::UnboundedReceiver<Change>) {
        let root = self.shared.lock().map(|c| c.layout().root().clone()).ok();
        let first = self
            .shared
            .lock()
            .ok()
            .and_then(|c| c.memory_reading().ok());
        if let Some(r) = first {
            tracing::info!(usage = r.usage, limit = r.limit, defended = ?r.defended, "memory response: the limit it defends");
            self.publish_reading(r);
        }
        if let Some(root) = root {
            self.arm_root(&root, &sources.sender);
        }
        let mut recheck: Option<Instant> = None;
        loop {
            let sleep = async {
                match recheck {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let woke = tokio::select! {
                change = changes.recv() => match change {
                    Some(c) => {
                        let woke = Woke::of(&c);
                        self.change(c, &sources.sender);
                        woke
                    }
                    None => return,
                },
                signal = sources.signals.recv() => match signal {
                    Some(s) => {
                        self.signal(s);
                        Woke::Signal
                    }
                    None => return,
                },
                () = sleep => Woke::Recheck,
            };
            if worth_deciding(woke, self.state.step.is_some()) {
                self.evaluate().await;
            }
            let latched = !self.latched.is_empty();
            recheck = pressure::recheck_at(&self.policy, &self.state, latched, Instant::now());
        }
    }

    /// Shows the latest reading, and what sets the limit, in the status.
    fn publish_reading(&self, r: MemoryReading) {
        if let Ok(mut s) = self.status.lock() {
            s.root_usage = r.usage;
            s.root_limit = r.limit;
            s.defended = Some(r.defended);
        }
    }

    fn change(&mut self, change: Change, sender: &mpsc::UnboundedSender<Signal>) {
        match change {
            Change::Session {
                cgroup_id,
                name,
                priority,
            } => self.arm_session(cgroup_id, name, priority, sender),
            Change::Removed { cgroup_id } => {
                if let Some(t) = self.sessions.remove(&cgroup_id) {
                    t.task.abort();
                    self.publish_triggers();
                }
            }
            Change::Policy(policy) => {
                let rearm = triggers_differ(&self.policy, &policy);
                tracing::info!(rearm, "memory response: the reloaded policy is in force");
                self.policy = policy;
                if rearm {
                    let root = self.shared.lock().ok().map(|c| c.layout().root().clone());
                    if let Some(root) = root {
                        self.arm_root(&root, sender);
                    }
                    let sessions: Vec<(u64, String, Priority)> = self
                        .sessions
                        .iter()
                        .map(|(&id, t)| (id, t.name.clone(), t.priority))
                        .collect();
                    for (id, name, priority) in sessions {
                        self.arm_session(id, name, priority, sender);
                    }
                }
            }
        }
    }

    fn signal(&mut self, signal: Signal) {
        if let Some(body) = self.pressure_event(signal) {
            self.events.publish(body);
        }
        match signal {
            Signal::Psi { session: None } => self.psi_pending = true,
            Signal::Psi {
                session: Some(cgid),
            } => {
                // A session's own stall counts when calls of lower priority than it
                // run: they are what can give memory back. A low session stalling on
                // its own limit is its calls' business (the kernel's memcg limits).
                let Some(prio) = self.sessions.get(&cgid).map(|t| t.priority) else {
                    return;
                };
                let lowest = self.shared.lock().ok().and_then(|c| {
                    c.pressure_calls()
                        .iter()
                        .filter(|v| !v.killed)
                        .map(|v| v.priority)
                        .min()
                });
                if lowest.is_some_and(|l| l < prio) {
                    self.psi_pending = true;
                }
            }
            Signal::OverHigh { cgroup_id } => {
                let in_force = self.state.step.is_some();
                let burst = self
                    .shared
                    .lock()
                    .ok()
                    .and_then(|mut c| c.memory_burst(cgroup_id, in_force));
                if let Some((call_id, high)) = burst {
                    tracing::debug!(call_id, high, "burst: memory.high raised");
                    // Crossing the raised limit must be reported again.
                    if let Some(Err(e)) = self.bpf.as_ref().map(|b| b.rearm_high(cgroup_id)) {
                        tracing::warn!(cgroup_id, "rearming the memory.high event: {e}");
                    }
                    if let Ok(mut s) = self.status.lock() {
                        s.bursts += 1;
                    }
                }
            }
            Signal::NearMax { cgroup_id } => {
                self.watermark_pending = true;
                self.latched.insert(cgroup_id);
            }
            Signal::NearMaxRecovered { cgroup_id } => {
                self.latched.remove(&cgroup_id);
            }
            Signal::AtMax => self.at_max_pending = true,
            Signal::OomKill { cgroup_id } => {
                tracing::warn!(
                    cgroup_id,
                    "the kernel's OOM killer struck in agentcg's subtree"
                );
            }
        }
    }

    /// The `pressure` event a signal is, if it is one.
    fn pressure_event(&self, signal: Signal) -> Option<EventBody> {
        let psi = format!(
            "memory.pressure trigger: some stall of {} us in {} us",
            self.policy.psi_stall.as_micros(),
            self.policy.psi_window.as_micros()
        );
        let (scope, session, source, level, detail) = match signal {
            Signal::Psi { session: None } => ("root", None, "psi", "pressure", psi),
            Signal::Psi { session: Some(id) } => {
                let name = self.sessions.get(&id)?.name.clone();
                ("session", Some(name), "psi", "pressure", psi)
            }
            Signal::NearMax { .. } => (
                "root",
                None,
                "watermark",
                "pressure",
                "agentcg's root crossed its pressure watermark".to_string(),
            ),
            Signal::AtMax => (
                "root",
                None,
                "watermark",
                "critical",
                "the kernel hit memory.max at agentcg's root".to_string(),
            ),
            Signal::OverHigh { .. } | Signal::OomKill { .. } | Signal::NearMaxRecovered { .. } => {
                return None;
            }
        };
        Some(EventBody::Pressure {
            scope: scope.into(),
            session,
            source: source.into(),
            level: level.into(),
            detail,
        })
    }

    /// Reads the root, decides, applies.
    async fn evaluate(&mut self) {
        let (act, reading) = {
            let Ok(mut c) = self.shared.lock() else {
                return;
            };
            let (usage, limit) = match c.memory_reading() {
                Ok(r) => {
                    let out = (r.usage, r.limit);
                    self.publish_reading(r);
                    out
                }
                Err(e) => {
                    tracing::warn!("memory response: no reading of agentcg's root: {e}");
                    return;
                }
            };
            if self.state.step.is_none() && c.memory_victims().is_empty() {
                // Nobody to give memory back to anyone: the kernel's limits decide.
                self.psi_pending = false;
                self.watermark_pending = false;
                self.at_max_pending = false;
                return;
            }
            let reading = Reading {
                usage,
                limit,
                psi: std::mem::take(&mut self.psi_pending),
                watermark: std::mem::take(&mut self.watermark_pending),
                at_max: std::mem::take(&mut self.at_max_pending),
            };
            let (decision, state) =
                pressure::decide(&self.policy, self.state, &reading, Instant::now());
            self.state = state;
            let act = match decision {
                Decision::Hold => Act::Done(None),
                Decision::Escalate(Step::Reclaim) => Act::Reclaim(c.reclaim_jobs()),
                Decision::Escalate(step) => Act::Done(Some(c.memory_step(step, &reason(&reading)))),
                Decision::Relent => {
                    let why = format!(
                        "pressure subsided: agentcg root at {} of {}",
                        HumanSize(usage),
                        HumanSize(limit)
                    );
                    self.events.publish(EventBody::Pressure {
                        scope: "root".into(),
                        session: None,
                        source: "watermark".into(),
                        level: "calm".into(),
                        detail: why.clone(),
                    });
                    Act::Done(Some(c.memory_relent(&why)))
                }
            };
            (act, reading)
        };
        let report = match act {
            Act::Done(report) => report,
            Act::Reclaim(jobs) => {
                // memory.reclaim blocks while the kernel reclaims: it runs on a blocking
                // thread, with the controller free for requests and other signals.
                let done = tokio::task::spawn_blocking(move || {
                    jobs.into_iter().map(ReclaimJob::run).collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                let Ok(mut c) = self.shared.lock() else {
                    return;
                };
                Some(c.note_reclaims(done, &reason(&reading)))
            }
        };
        if let (Some(bpf), Some(report)) = (&self.bpf, &report) {
            // The scheduler deprioritizes the victims while a step is in force.
            let on = report.step != "relent";
            for &cgid in &report.cgroup_ids {
                if let Err(e) = bpf.set_deprioritized(cgid, on) {
                    tracing::warn!(cgid, "mem_state deprioritize: {e}");
                }
            }
        }
        let Ok(mut s) = self.status.lock() else {
            return;
        };
        s.step = self.state.step.map_or("none", |st| st.as_str()).to_string();
        if let Some(report) = report {
            tracing::info!(step = %report.step, calls = ?report.calls, details = ?report.details, "memory response: {}", report.reason);
            if s.steps.len() == KEEP_STEPS {
                s.steps.pop_front();
            }
            s.steps.push_back(StepEvent {
                unix_ms: unix_ms(),
                report,
            });
        }
    }
}

/// What woke the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    /// A PSI trigger, a BPF memory event or the kernel's OOM report.
    Signal,
    /// The recheck timer of a step in force or a held watermark.
    Recheck,
    /// A reloaded policy: its thresholds may call for a step now.
    Policy,
    /// A session or a call came or went.
    Membership,
}

impl Woke {
    fn of(change: &Change) -> Woke {
        match change {
            Change::Policy(_) => Woke::Policy,
            Change::Session { .. } | Change::Removed { .. } => Woke::Membership,
        }
    }
}

/// Whether the response reads the root and decides after waking. Sessions and calls
/// coming and going (every call's end wakes it) change nothing a decision sees unless a
/// step is in force, whose victims they may be: the kernel's signals say when memory
/// runs short. Before, every call's end cost a full reading of the root: three
/// cgroupfs files and /proc/meminfo (docs/ARCHITECTURE.md, "Cost per call").
fn worth_deciding(woke: Woke, step_in_force: bool) -> bool {
    match woke {
        Woke::Signal | Woke::Recheck | Woke::Policy => true,
        Woke::Membership => step_in_force,
    }
}

/// Why a step is taken, in words.
fn reason(r: &Reading) -> String {
    let pct = if r.limit == 0 {
        0
    } else {
        (r.usage as u128 * 100 / r.limit as u128) as u64
    };
    let mut why = format!(
        "agentcg root at {} of {} ({pct}%)",
        HumanSize(r.usage),
        HumanSize(r.limit)
    );
    if r.psi {
        why.push_str(", PSI memory stall trigger fired");
    }
    if r.watermark {
        why.push_str(", the kernel saw it cross the pressure watermark");
    }
    if r.at_max {
        why.push_str(", the kernel hit memory.max");
    }
    why
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comings_and_goings_are_decided_on_only_while_a_step_is_in_force() {
        for woke in [Woke::Signal, Woke::Recheck, Woke::Policy] {
            assert!(worth_deciding(woke, false), "{woke:?}");
            assert!(worth_deciding(woke, true), "{woke:?}");
        }
        assert!(!worth_deciding(Woke::Membership, false));
        assert!(worth_deciding(Woke::Membership, true));
        assert_eq!(
            Woke::of(&Change::Removed { cgroup_id: 7 }),
            Woke::Membership
        );
        assert_eq!(
            Woke::of(&Change::Policy(
                agentcg_core::policy::Policy::default_policy().memory
            )),
            Woke::Policy
        );
    }

    #[test]
    fn reasons_say_what_fired() {
        let r = Reading {
            usage: 935 << 20,
            limit: 1100 << 20,
            psi: true,
            watermark: false,
            at_max: false,
        };
        let why = reason(&r);
        assert!(why.contains("935 MiB of 1.1 GiB (85%)"), "{why}");
        assert!(why.contains("PSI"), "{why}");
        assert!(!why.contains("memory.max"), "{why}");
    }
}
