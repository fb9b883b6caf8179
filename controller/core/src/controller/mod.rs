//! The engine behind agentcgd: owns the cgroup subtree, its sessions and running
//! calls, and the history. Synchronous; the daemon serializes access with a mutex and
//! supplies time (timeouts) and the kernel-side machinery (through [`KernelHooks`]).
//!
//! By concern: `sessions` (session CRUD), `calls` (declaring a call and what happens
//! to it while it runs), `lifecycle` (the one way a call ends, and its four triggers),
//! `adopt` (a restarted daemon re-adopts running calls), `memory` (the memory
//! response's actions), `state` (ids and running calls on disk). The life of a call is
//! told in docs/ARCHITECTURE.md#life-of-a-call.

mod adopt;
mod calls;
mod lifecycle;
mod memory;
mod sessions;
pub mod settle;
pub mod state;
mod views;

pub use adopt::{AdoptReport, CONTROLLERS};
pub use calls::Checked;
pub use lifecycle::ToolExit;
pub use memory::{ReclaimDone, ReclaimJob};
pub use sessions::{RUNTIME_OOM_SCORE_ADJ, Reapplied};
pub use views::RunningView;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cgroup::layout::Layout;
use crate::cgroup::memory::MemoryEvents;
use crate::cgroup::reaper::{Reaper, ReaperStatus};
use crate::cgroup::{Cgroup, CgroupError};
use crate::events::{EventBody, EventBus};
use crate::history::{Durability, History, HistoryError, HistoryWriter, OnWritten, WriterStatus};
use crate::intent::{Intent, IntentError};
use crate::plan::{CallLimits, Clamp, PlanError, SessionPlan, SessionRequest};
use crate::policy::Policy;
use crate::record::{CallRecord, ExitInfo, MemoryAction, ProcessCounts};
use state::{IdAllocator, RunningStore, StateError};

/// Name of the session used when a call names none.
pub const DEFAULT_SESSION: &str = "default";
/// Session plans, persisted so a restarted daemon re-adopts its sessions.
pub const SESSIONS_FILE: &str = "sessions.json";
/// A call whose cgroup has been empty this long without a finish report is abandoned.
pub const ABANDON_AFTER: Duration = Duration::from_secs(30);

/// What a cgroup of the subtree is, for the kernel-side hooks.
#[derive(Debug, Clone, Copy)]
pub enum CgroupRole<'a> {
    Session(&'a SessionPlan),
    Runtime(&'a SessionPlan),
    Calls(&'a SessionPlan),
    Call(&'a CallLimits),
}

/// Kernel-side machinery that must know the subtree's cgroups: the BPF telemetry and
/// the sched_ext scheduler (their per-cgroup map entries), provided by the daemon.
pub trait KernelHooks: Send {
    /// A stable name, to remove these hooks later.
    fn name(&self) -> &'static str;
    /// A cgroup was created and configured; nothing runs in it yet.
    fn created(&mut self, cgroup_id: u64, role: CgroupRole<'_>);
    /// The cgroup is about to be removed; returns the process counts it saw, if any.
    fn removing(&mut self, cgroup_id: u64) -> Option<ProcessCounts>;
    /// Whether these hooks see the call's tool in `cgroup_id` exit (and say how through
    /// [`KernelHooks::tool_exit`]); agentcgd then ends the call by itself.
    fn sees_tool_exit(&self, _cgroup_id: u64) -> bool {
        false
    }
    /// How the call's tool in `cgroup_id` ended, once it has.
    fn tool_exit(&self, _cgroup_id: u64) -> Option<ExitInfo> {
        None
    }
    /// A re-adopted call's tool was already running when these hooks were added: its
    /// pid (telemetry then knows which exit is the tool's).
    fn adopted_tool(&mut self, _cgroup_id: u64, _pid: u32) {}
    /// A new policy is in force (a reload): what these hooks took from the old one
    /// (watermarks, triggers) follows it.
    fn policy_changed(&mut self, _policy: &Policy) {}
}

/// Everything that can go wrong, with a stable machine code for the API.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Intent(#[from] IntentError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("no session named `{0}`")]
    NoSession(String),
    #[error("session `{0}` already exists")]
    SessionExists(String),
    #[error("session `{0}` was closed and its cgroups are still being removed; retry in a moment")]
    SessionClosing(String),
    #[error("no call {0}")]
    NoCall(u64),
    #[error(
        "session `{name}` still has {count} runtime process(es); close with force to kill them"
    )]
    RuntimeAlive { name: String, count: usize },
    #[error("{what}: {reason}")]
    BadRequest { what: String, reason: String },
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

impl From<StateError> for ControlError {
    fn from(e: StateError) -> ControlError {
        ControlError::State {
            path: e.path,
            reason: e.reason,
        }
    }
}

impl ControlError {
    /// A stable code for the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::Intent(_) => "bad_intent",
            ControlError::Plan(PlanError::NoRoom(_)) => "no_room",
            ControlError::Plan(PlanError::Queued(_)) => "queued",
            ControlError::Plan(_) => "bad_session",
            ControlError::Cgroup(_) => "cgroup_error",
            ControlError::History(_) | ControlError::State { .. } => "state_error",
            ControlError::NoSession(_) => "no_such_session",
            ControlError::SessionExists(_) => "session_exists",
            ControlError::SessionClosing(_) => "session_closing",
            ControlError::NoCall(_) => "no_such_call",
            ControlError::RuntimeAlive { .. } => "runtime_alive",
            ControlError::BadRequest { .. } => "bad_request",
        }
    }

    /// Whether the client is at fault (HTTP 4xx) rather than the host (5xx).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            ControlError::Cgroup(_) | ControlError::History(_) | ControlError::State { .. }
        )
    }
}

/// A call being declared: its session, command and intent text.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    #[serde(default)]
    pub session: Option<String>,
    /// The command, for classification and the record (never executed by the daemon).
    pub command: Vec<String>,
    /// The intent in any accepted form (compact text, hint, or a JSON object).
    #[serde(default)]
    pub intent: Option<serde_json::Value>,
    /// An idempotency token: a declaration sent again with the same token (the client
    /// lost the reply, e.g. to a daemon restart) gets the same running call back.
    #[serde(default)]
    pub client_token: Option<String>,
    /// Whether a call that cannot fit yet waits in agentcgd's queue (the default) or
    /// is answered `queued` at once, without waiting (docs/POLICY.md#admission).
    #[serde(default)]
    pub wait: Option<bool>,
    /// The agent harness's id of the tool call (Claude Code's `tool_use_id`), kept in
    /// the record so a call can be matched with the conversation.
    #[serde(default)]
    pub tool_use_id: Option<String>,
    /// The caller's uid, set by agentcgd (never from the body): the owner of the
    /// default session when this declaration creates it.
    #[serde(skip)]
    pub owner: u32,
}

/// The answer to a call declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallGrant {
    pub call_id: u64,
    pub session: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub limits: CallLimits,
    pub clamps: Vec<Clamp>,
    /// What admission decided, with its inputs (docs/POLICY.md#admission); absent for
    /// a call re-adopted after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<crate::admission::Note>,
    /// agentcgd sees the tool exit (kernel telemetry) and ends the call there by itself:
    /// a client that needs nothing from the record may skip the finish report.
    #[serde(default)]
    pub end_watched: bool,
}

/// A session as shown by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub plan: SessionPlan,
    /// The uid the session belongs to.
    #[serde(default)]
    pub owner: u32,
    pub cgroup: String,
    pub running_calls: Vec<u64>,
    pub runtime_pids: Vec<u32>,
    pub memory_current: Option<u64>,
    pub calls_finished: u64,
    /// cpu.stat usage_usec of the session's cgroup.
    #[serde(default)]
    pub cpu_usec: Option<u64>,
    /// memory.pressure of the session's cgroup.
    #[serde(default)]
    pub memory_pressure: Option<crate::cgroup::psi::Psi>,
}

#[derive(Debug)]
struct RunningCall {
    client_token: Option<String>,
    tool_use_id: Option<String>,
    session: String,
    command: Vec<String>,
    intent: Intent,
    limits: CallLimits,
    clamps: Vec<Clamp>,
    suggestion: String,
    admission: Option<crate::admission::Note>,
    cgroup: Cgroup,
    cgroup_id: u64,
    started: Instant,
    started_unix_ms: u64,
    ceiling_before: MemoryEvents,
    /// memory.events.local of the session's cgroup when the call started.
    session_before: MemoryEvents,
    timed_out: bool,
    budget_exceeded: bool,
    empty_since: Option<Instant>,
    /// A sweep found the tool exited but processes left: the next sweep ends the call.
    tool_exit_swept: bool,
    /// The memory response's marks on the call.
    memory: CallMemory,
    /// Re-adopted after a restart with its tool still running: the tool's pid.
    adopted_tool: Option<u32>,
    /// Re-adopted after a restart with its tool gone: when (the sweep ends it if its
    /// client does not report).
    tool_gone_at: Option<Instant>,
}

/// What the memory response has done to a running call.
#[derive(Debug, Default)]
struct CallMemory {
    /// memory.high as written now (a burst raises it, a throttle lowers it).
    high: Option<u64>,
    throttled: bool,
    frozen: bool,
    killed: bool,
    actions: Vec<MemoryAction>,
}

impl RunningCall {
    /// Notes a memory action on the call (timed from its start) and publishes it.
    fn act(&mut self, events: &EventBus, id: u64, action: &str, detail: &str, reason: &str) {
        self.memory.actions.push(MemoryAction {
            at_ms: self.started.elapsed().as_millis() as u64,
            action: action.to_string(),
            detail: format!("{detail}: {reason}"),
        });
        events.publish(EventBody::MemoryStep {
            call_id: Some(id),
            session: Some(self.session.clone()),
            action: action.to_string(),
            reason: reason.to_string(),
            detail: detail.to_string(),
            usage_bytes: self.cgroup.read_u64(crate::cgroup::memory::CURRENT).ok(),
            limit_bytes: Some(self.limits.memory_max),
        });
    }
}

/// What one step of the memory response did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// `throttle`, `reclaim`, `freeze`, `kill` or `relent`.
    pub step: String,
    pub reason: String,
    /// The calls it touched.
    pub calls: Vec<u64>,
    /// Their cgroup ids (for the BPF side: the scheduler's deprioritize flag).
    #[serde(skip)]
    pub cgroup_ids: Vec<u64>,
    /// What was written, per call or session.
    pub details: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionState {
    plan: SessionPlan,
    #[serde(default)]
    calls_finished: u64,
    /// The uid that created the session (sessions kept before owners were recorded
    /// belong to root).
    #[serde(default)]
    owner: u32,
    /// What its creator asked for: under a reloaded policy, the limits it left to the
    /// policy follow the policy (`None`: kept before requests were, keeps its plan).
    #[serde(default)]
    request: Option<SessionRequest>,
}

/// The engine.
pub struct Controller {
    policy: Policy,
    layout: Layout,
    state_dir: PathBuf,
    /// The history database, for queries on connections of their own.
    history_db: PathBuf,
    sessions: BTreeMap<String, SessionState>,
    running: BTreeMap<u64, RunningCall>,
    /// Recent records, in memory (a record is here the moment its call ends).
    history: History,
    /// Makes records durable, off the request path.
    writer: HistoryWriter,
    /// Removes cgroups, off the request path.
    reaper: Reaper,
    ids: IdAllocator,
    store: RunningStore,
    /// Running-call state files that could not be written.
    state_errors: state::StateErrors,
    hooks: Vec<Box<dyn KernelHooks>>,
    /// Where what happens is published (docs/API.md#events).
    events: Arc<EventBus>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("root", &self.layout.root_path())
            .field("sessions", &self.sessions.len())
            .field("running", &self.running.len())
            .finish()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Publishes `call_finished` for every durable record, then calls `then`.
fn finished_then(events: Arc<EventBus>, then: OnWritten) -> OnWritten {
    Arc::new(move |record: &CallRecord, result: Result<(), String>| {
        if result.is_ok() {
            events.publish(EventBody::CallFinished {
                record: Box::new(record.clone()),
            });
        }
        then(record, result)
    })
}

/// What [`Controller::start`] needs besides the policy.
pub struct StartOptions<'a> {
    pub root: &'a Path,
    pub state_dir: &'a Path,
    /// Told, on the history writer's thread, when a record is durable or its write failed.
    pub on_written: OnWritten,
    /// The event bus; a record's `call_finished` goes out once it is durable, before
    /// `on_written` runs.
    pub events: Arc<EventBus>,
}

impl std::fmt::Debug for StartOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("root", &self.root)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Prepares the subtree at `root` (creating it and enabling controllers), loads
    /// state and history from `state_dir`, re-adopts the running calls and sessions a
    /// previous run left, records the calls that ended meanwhile, and removes orphans.
    pub fn start(
        policy: Policy,
        opts: StartOptions<'_>,
    ) -> Result<(Controller, AdoptReport), ControlError> {
        let layout = Layout::new(opts.root);
        if let Some(parent) = opts.root.parent() {
            Cgroup::new(parent).enable_controllers(&adopt::CONTROLLERS)?;
        }
        layout.root().create(true)?;
        layout.root().enable_controllers(&adopt::CONTROLLERS)?;
        let loaded = History::load(opts.state_dir)?;
        let history = loaded.history;
        let store = RunningStore::open(opts.state_dir)?;
        let (states, bad_states) = store.load_all();
        let seen = adopt::largest_id(&layout, &states).max(history.max_id());
        let ids = IdAllocator::open(opts.state_dir, seen)?;
        let reaper = Reaper::start().map_err(|e| ControlError::State {
            path: opts.state_dir.to_path_buf(),
            reason: format!("starting the reaper thread: {e}"),
        })?;
        let on_written = finished_then(opts.events.clone(), opts.on_written);
        let writer =
            HistoryWriter::start(&loaded.db, policy.history.keep, reaper.clone(), on_written)?;
        let mut c = Controller {
            policy,
            layout,
            state_dir: opts.state_dir.to_path_buf(),
            history_db: loaded.db,
            sessions: BTreeMap::new(),
            running: BTreeMap::new(),
            history,
            writer,
            reaper,
            ids,
            store,
            state_errors: state::StateErrors::default(),
            hooks: Vec::new(),
            events: opts.events,
        };
        c.load_sessions()?;
        let mut report = c.adopt(states)?;
        report.bad_state_files = bad_states.iter().map(ToString::to_string).collect();
        report.history_import = loaded.import;
        Ok((c, report))
    }

    /// Adds kernel hooks and tells them about every cgroup that exists already (a
    /// reloaded scheduler learns the whole subtree this way).
    pub fn add_hooks(&mut self, mut hooks: Box<dyn KernelHooks>) {
        for (name, s) in &self.sessions {
            let cgs = [
                (self.layout.session(name), CgroupRole::Session(&s.plan)),
                (self.layout.runtime(name), CgroupRole::Runtime(&s.plan)),
                (self.layout.calls(name), CgroupRole::Calls(&s.plan)),
            ];
            for (cg, role) in cgs {
                if let Ok(id) = cg.id() {
                    hooks.created(id, role);
                }
            }
        }
        for call in self.running.values() {
            hooks.created(call.cgroup_id, CgroupRole::Call(&call.sched_limits()));
            if let Some(pid) = call.adopted_tool {
                hooks.adopted_tool(call.cgroup_id, pid);
            }
        }
        self.hooks.push(hooks);
    }

    /// Removes the hooks named `name` (e.g. the scheduler's after it exited).
    pub fn remove_hooks(&mut self, name: &str) {
        self.hooks.retain(|h| h.name() != name);
    }

    fn hooks_created(&mut self, cgroup_id: u64, role: CgroupRole<'_>) {
        for h in &mut self.hooks {
            h.created(cgroup_id, role);
        }
    }

    /// How the tool of the call in `cgroup_id` ended, if the kernel hooks saw it exit.
    fn hooks_tool_exit(&self, cgroup_id: u64) -> Option<ExitInfo> {
        self.hooks.iter().find_map(|h| h.tool_exit(cgroup_id))
    }

    fn hooks_removing(&mut self, cgroup_id: u64) -> Option<ProcessCounts> {
        self.hooks
            .iter_mut()
            .filter_map(|h| h.removing(cgroup_id))
            .reduce(|a, _| a)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Puts a validated policy in force: new sessions and calls get its rules; running
    /// calls keep the limits they were granted; sessions take its budgets where they
    /// left them to the policy ([`crate::plan::budget`]); the history's retention, the
    /// memory response and the BPF watermarks (through the hooks) follow it at once.
    /// Returns what happened to the sessions' budgets.
    pub fn set_policy(&mut self, policy: Policy) -> Reapplied {
        if policy.history.keep != self.policy.history.keep {
            self.writer.set_keep(policy.history.keep);
        }
        self.policy = policy;
        for h in &mut self.hooks {
            h.policy_changed(&self.policy);
        }
        self.reapply_budgets()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A finished call's record, or `None` if unknown or still running.
    pub fn record(&self, id: u64) -> Option<&CallRecord> {
        self.history.get(id)
    }

    /// Whether a finished call's record is on disk yet.
    pub fn durability(&self, id: u64) -> Durability {
        self.writer.durability(id)
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.running.contains_key(&id)
    }

    /// The newest `limit` kept records that `keep` keeps, newest first.
    pub fn recent_records(
        &self,
        keep: impl Fn(&CallRecord) -> bool,
        limit: usize,
    ) -> Vec<&CallRecord> {
        self.history.recent(keep, limit)
    }

    pub fn running_ids(&self) -> Vec<u64> {
        self.running.keys().copied().collect()
    }

    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// The history database: queries open read-only connections of their own
    /// ([`crate::history::query`]), so they never hold the controller.
    pub fn history_db(&self) -> &Path {
        &self.history_db
    }

    /// The history writer's state (pending records, failures), for `agentcg status`.
    pub fn writer_status(&self) -> WriterStatus {
        self.writer.status()
    }

    /// Running-call state files that could not be written, for `agentcg status`.
    pub fn state_errors(&self) -> state::StateErrors {
        self.state_errors.clone()
    }

    /// The reaper's state (cgroups waiting to be removed), for `agentcg status`.
    pub fn reaper_status(&self) -> ReaperStatus {
        self.reaper.status()
    }
}

impl RunningCall {
    /// The limits hooks added later are told (a reloaded scheduler, a restarted
    /// daemon): the CPU budget is what is left of it, as the cgroup's cpu.stat counts
    /// what the call used so far.
    fn sched_limits(&self) -> CallLimits {
        let mut l = self.limits.clone();
        if let Some(budget) = l.cpu_budget_ms {
            let used_ms = crate::cgroup::cpu::usage(&self.cgroup)
                .map(|u| u.usage_usec / 1000)
                .unwrap_or(0);
            l.cpu_budget_ms = Some(budget.saturating_sub(used_ms).max(1));
        }
        l
    }

    /// What a restarted daemon needs to re-adopt this call.
    fn state(&self, call_id: u64) -> state::RunningState {
        state::RunningState {
            call_id,
            session: self.session.clone(),
            command: self.command.clone(),
            intent: self.intent.clone(),
            limits: self.limits.clone(),
            clamps: self.clamps.clone(),
            suggestion: self.suggestion.clone(),
            started_unix_ms: self.started_unix_ms,
            client_token: self.client_token.clone(),
            tool_use_id: self.tool_use_id.clone(),
            timed_out: self.timed_out,
            budget_exceeded: self.budget_exceeded,
            pressure_killed: self.memory.killed,
            memory_actions: self.memory.actions.clone(),
            ended: None,
        }
    }
}

#[cfg(test)]
mod tests;
