//! The engine behind agentcgd: owns the cgroup subtree, its sessions and running
//! calls, and the history. Synchronous; the daemon serializes access with a mutex and
//! supplies time (timeouts) and the kernel-side machinery (through [`KernelHooks`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cgroup::layout::{Layout, parse_call_dir};
use crate::cgroup::memory::MemoryEvents;
use crate::cgroup::{Cgroup, CgroupError, cpu, memory, pids};
use crate::history::{History, HistoryError};
use crate::intent::{Intent, IntentError};
use crate::plan::{self, CallLimits, Clamp, PlanError, SessionLoad, SessionPlan, SessionRequest};
use crate::policy::{BudgetAction, Policy};
use crate::pressure::{self, CallView, Step};
use crate::record::{
    self, Accounting, CallRecord, Ceilings, Enforced, ExitInfo, MemoryAction, Outcome,
    ProcessCounts,
};

/// Name of the session used when a call names none.
pub const DEFAULT_SESSION: &str = "default";
/// Session plans, persisted so a restarted daemon re-adopts its sessions.
pub const SESSIONS_FILE: &str = "sessions.json";
/// Controllers agentcg enables in its subtree.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// How long removing a call waits for killed processes to exit.
const DESTROY_WAIT: Duration = Duration::from_secs(5);
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
}

/// What [`Controller::tool_exited`] did.
#[derive(Debug)]
pub enum ToolExit {
    /// The call ended; its record (or why writing it failed).
    Ended(Box<Result<CallRecord, ControlError>>),
    /// Processes are still in the call's cgroup: the tool's own exit may still be under
    /// way, or it left processes behind. Ask again, with `force` once the grace is over.
    Populated,
    /// No running call has this cgroup (its client reported the end first).
    NotRunning,
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

impl ControlError {
    /// A stable code for the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::Intent(_) => "bad_intent",
            ControlError::Plan(PlanError::NoRoom(_)) => "no_room",
            ControlError::Plan(_) => "bad_session",
            ControlError::Cgroup(_) => "cgroup_error",
            ControlError::History(_) | ControlError::State { .. } => "state_error",
            ControlError::NoSession(_) => "no_such_session",
            ControlError::SessionExists(_) => "session_exists",
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
    /// agentcgd sees the tool exit (kernel telemetry) and ends the call there by itself:
    /// a client that needs nothing from the record may skip the finish report.
    #[serde(default)]
    pub end_watched: bool,
}

/// A session as shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub plan: SessionPlan,
    pub cgroup: String,
    pub running_calls: Vec<u64>,
    pub runtime_pids: Vec<u32>,
    pub memory_current: Option<u64>,
    pub calls_finished: u64,
}

#[derive(Debug)]
struct RunningCall {
    session: String,
    command: Vec<String>,
    intent: Intent,
    limits: CallLimits,
    clamps: Vec<Clamp>,
    suggestion: String,
    cgroup: Cgroup,
    cgroup_id: u64,
    started: Instant,
    started_unix_ms: u64,
    ceiling_before: MemoryEvents,
    timed_out: bool,
    budget_exceeded: bool,
    empty_since: Option<Instant>,
    /// A sweep found the tool exited but processes left: the next sweep ends the call.
    tool_exit_swept: bool,
    /// The memory response's marks on the call.
    memory: CallMemory,
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

impl CallMemory {
    /// Notes an action on the call, timed from the call's start.
    fn act(&mut self, started: Instant, action: &str, detail: String) {
        self.actions.push(MemoryAction {
            at_ms: started.elapsed().as_millis() as u64,
            action: action.to_string(),
            detail,
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
}

/// The engine.
pub struct Controller {
    policy: Policy,
    layout: Layout,
    state_dir: PathBuf,
    sessions: BTreeMap<String, SessionState>,
    running: BTreeMap<u64, RunningCall>,
    history: History,
    next_id: u64,
    hooks: Vec<Box<dyn KernelHooks>>,
    /// Empty cgroups of finished calls, removed by [`Controller::reap`] once the
    /// finish reply is out (rmdir is off the per-call critical path).
    to_reap: Vec<Cgroup>,
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

impl Controller {
    /// Prepares the subtree at `root` (creating it and enabling controllers), loads
    /// state and history from `state_dir`, re-adopts known sessions and removes calls
    /// left behind by a previous run.
    pub fn start(
        policy: Policy,
        root: &Path,
        state_dir: &Path,
    ) -> Result<Controller, ControlError> {
        let layout = Layout::new(root);
        if let Some(parent) = root.parent() {
            Cgroup::new(parent).enable_controllers(&CONTROLLERS)?;
        }
        layout.root().create(true)?;
        layout.root().enable_controllers(&CONTROLLERS)?;
        let history = History::open(state_dir)?;
        let mut c = Controller {
            policy,
            layout,
            state_dir: state_dir.to_path_buf(),
            sessions: BTreeMap::new(),
            running: BTreeMap::new(),
            next_id: history.max_id() + 1,
            history,
            hooks: Vec::new(),
            to_reap: Vec::new(),
        };
        c.load_sessions()?;
        c.reconcile()?;
        Ok(c)
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
            hooks.created(call.cgroup_id, CgroupRole::Call(&call.limits));
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

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn sessions_path(&self) -> PathBuf {
        self.state_dir.join(SESSIONS_FILE)
    }

    fn load_sessions(&mut self) -> Result<(), ControlError> {
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

    fn save_sessions(&self) -> Result<(), ControlError> {
        let path = self.sessions_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.sessions).unwrap_or_default();
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| ControlError::State {
                path,
                reason: e.to_string(),
            })
    }

    /// Removes call cgroups no running call owns, and sessions no state knows (when
    /// they hold no processes).
    fn reconcile(&mut self) -> Result<(), ControlError> {
        for child in self.layout.root().children() {
            let Some(name) = child
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(crate::cgroup::layout::SESSION_PREFIX))
                .map(str::to_string)
            else {
                continue;
            };
            if !self.sessions.contains_key(&name) {
                if !child.populated()? {
                    child.destroy(DESTROY_WAIT)?;
                }
                continue;
            }
            for call in self.layout.calls(&name).children() {
                let owned = call
                    .path()
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_call_dir)
                    .is_some_and(|id| self.running.contains_key(&id));
                if !owned {
                    call.destroy(DESTROY_WAIT)?;
                }
            }
        }
        self.sessions
            .retain(|name, _| self.layout.session(name).exists());
        self.save_sessions()
    }

    /// Creates a session and its cgroups.
    pub fn create_session(&mut self, req: &SessionRequest) -> Result<SessionInfo, ControlError> {
        let plan = plan::plan_session(&self.policy, req)?;
        if self.sessions.contains_key(&plan.name) {
            return Err(ControlError::SessionExists(plan.name));
        }
        let session = self.layout.session(&plan.name);
        session.create(false)?;
        if let Err(e) = self.apply_session(&plan) {
            let _ = session.destroy(DESTROY_WAIT);
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
        self.sessions.insert(
            name.clone(),
            SessionState {
                plan,
                calls_finished: 0,
            },
        );
        self.save_sessions()?;
        if let Some(pid) = req.runtime_pid {
            self.attach_runtime(&name, pid)?;
        }
        self.session_info(&name)
    }

    fn apply_session(&self, plan: &SessionPlan) -> Result<(), ControlError> {
        let session = self.layout.session(&plan.name);
        memory::set_max(&session, Some(plan.memory_max))?;
        memory::set_low(&session, plan.memory_low)?;
        memory::disable_swap(&session)?;
        cpu::set_weight(&session, plan.cpu_weight)?;
        cpu::set_max(&session, plan.millicpus)?;
        pids::set_max(&session, plan.pids_max)?;
        session.enable_controllers(&CONTROLLERS)?;
        let runtime = self.layout.runtime(&plan.name);
        runtime.create(false)?;
        if plan.runtime_hard_protect {
            memory::set_min(&runtime, plan.runtime_reserve)?;
        } else {
            memory::set_low(&runtime, plan.runtime_reserve)?;
        }
        let calls = self.layout.calls(&plan.name);
        calls.create(false)?;
        memory::set_max(&calls, Some(plan.calls_memory_max))?;
        calls.enable_controllers(&CONTROLLERS)?;
        Ok(())
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
        Ok(())
    }

    pub fn session_info(&self, name: &str) -> Result<SessionInfo, ControlError> {
        let s = self
            .sessions
            .get(name)
            .ok_or_else(|| ControlError::NoSession(name.to_string()))?;
        let cg = self.layout.session(name);
        Ok(SessionInfo {
            plan: s.plan.clone(),
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
        })
    }

    pub fn list_sessions(&self) -> Vec<SessionInfo> {
        self.sessions
            .keys()
            .filter_map(|n| self.session_info(n).ok())
            .collect()
    }

    /// Closes a session: ends its running calls (recorded as killed) and removes its
    /// cgroups. Refuses while the runtime has processes, unless `force`.
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
        let mut records = Vec::new();
        for id in ids {
            records.push(self.finish_call(
                id,
                ExitInfo {
                    code: None,
                    signal: Some(libc::SIGKILL),
                },
            )?);
        }
        self.reap();
        for cg in [
            self.layout.calls(name),
            self.layout.runtime(name),
            self.layout.session(name),
        ] {
            if let Ok(id) = cg.id() {
                self.hooks_removing(id);
            }
        }
        self.layout.session(name).destroy(DESTROY_WAIT)?;
        self.sessions.remove(name);
        self.save_sessions()?;
        Ok(records)
    }

    /// What runs in session `name`, for admission. A call whose tool has exited counts no
    /// more, even before agentcgd has ended it: its client may already be declaring the
    /// next call.
    fn session_load(&self, name: &str) -> SessionLoad {
        let mine = self
            .running
            .values()
            .filter(|c| c.session == name && self.hooks_tool_exit(c.cgroup_id).is_none());
        SessionLoad {
            expected_mem: mine.clone().map(|c| c.limits.memory_expected).sum(),
            running: mine.count(),
        }
    }

    /// Declares a call: validates the intent, admits it into its session, and creates
    /// its cgroup with every limit written before anything runs in it.
    pub fn declare_call(&mut self, req: &CallRequest) -> Result<CallGrant, ControlError> {
        if req.command.is_empty() || req.command.iter().any(|a| a.contains('\0')) {
            return Err(ControlError::BadRequest {
                what: "command".into(),
                reason: "must be a non-empty list of arguments without NUL bytes".into(),
            });
        }
        let intent = match &req.intent {
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
        let name = req
            .session
            .clone()
            .unwrap_or_else(|| DEFAULT_SESSION.to_string());
        plan::check_session_name(&name)?;
        if !self.sessions.contains_key(&name) {
            if name != DEFAULT_SESSION {
                return Err(ControlError::NoSession(name));
            }
            self.create_session(&SessionRequest {
                name: name.clone(),
                ..SessionRequest::default()
            })?;
        }
        let plan = &self.sessions[&name].plan;
        let admitted = plan::admit(
            &self.policy,
            plan,
            self.session_load(&name),
            &intent,
            &crate::policy::command_text(&req.command),
        )?;
        let id = self.next_id;
        let cg = self.layout.call(&name, id);
        cg.create(false)?;
        let cgroup_id = match apply_call_limits(&cg, &admitted.limits).and_then(|()| cg.id()) {
            Ok(cgid) => cgid,
            Err(e) => {
                let _ = cg.destroy(DESTROY_WAIT);
                return Err(e.into());
            }
        };
        self.next_id += 1;
        self.hooks_created(cgroup_id, CgroupRole::Call(&admitted.limits));
        let end_watched = self.hooks.iter().any(|h| h.sees_tool_exit(cgroup_id));
        let ceiling_before =
            memory::events(&self.layout.calls(&name), memory::EVENTS_LOCAL).unwrap_or_default();
        let grant = CallGrant {
            call_id: id,
            session: name.clone(),
            cgroup: cg.path().display().to_string(),
            cgroup_id,
            limits: admitted.limits.clone(),
            clamps: admitted.clamps.clone(),
            end_watched,
        };
        let granted_high = admitted.limits.memory_high;
        self.running.insert(
            id,
            RunningCall {
                session: name,
                command: req.command.clone(),
                intent,
                limits: admitted.limits,
                clamps: admitted.clamps,
                suggestion: admitted.suggestion,
                cgroup: cg,
                cgroup_id,
                started: Instant::now(),
                started_unix_ms: unix_ms(),
                ceiling_before,
                timed_out: false,
                budget_exceeded: false,
                empty_since: None,
                tool_exit_swept: false,
                memory: CallMemory {
                    high: granted_high,
                    ..CallMemory::default()
                },
            },
        );
        Ok(grant)
    }

    /// The timeout of a running call expired: kill its cgroup; the finish report (or
    /// the sweep) records it as `timeout`. Returns false if the call already ended.
    pub fn expire_call(&mut self, id: u64) -> Result<bool, ControlError> {
        let Some(call) = self.running.get_mut(&id) else {
            return Ok(false);
        };
        call.timed_out = true;
        call.cgroup.kill()?;
        Ok(true)
    }

    /// The running call whose cgroup has this id.
    pub fn call_by_cgroup(&self, cgroup_id: u64) -> Option<u64> {
        self.running
            .iter()
            .find(|(_, c)| c.cgroup_id == cgroup_id)
            .map(|(id, _)| *id)
    }

    /// The scheduler reported that a call used up its CPU budget: apply `action`. The
    /// call's record will say `cpu_budget_exceeded` if it ends by a signal.
    pub fn cpu_budget_exceeded(
        &mut self,
        id: u64,
        action: BudgetAction,
    ) -> Result<bool, ControlError> {
        let Some(call) = self.running.get_mut(&id) else {
            return Ok(false);
        };
        call.budget_exceeded = true;
        match action {
            BudgetAction::Throttle => {}
            BudgetAction::Freeze => call.cgroup.freeze(true)?,
            BudgetAction::Kill => call.cgroup.kill()?,
        }
        Ok(true)
    }

    /// When a running call's timeout expires, if it is still running.
    pub fn call_deadline(&self, id: u64) -> Option<Instant> {
        self.running
            .get(&id)
            .map(|c| c.started + c.limits.timeout())
    }

    /// A call ended: reads its final accounting, removes its cgroup (killing what the
    /// tool left behind), decides the outcome and feedback, and records it durably.
    pub fn finish_call(&mut self, id: u64, exit: ExitInfo) -> Result<CallRecord, ControlError> {
        let call = self.running.remove(&id).ok_or(ControlError::NoCall(id))?;
        let calls_cg = self.layout.calls(&call.session);
        let acc = Accounting {
            memory_peak: memory::peak(&call.cgroup),
            cpu: cpu::usage(&call.cgroup).unwrap_or_default(),
            memory_events: memory::events(&call.cgroup, memory::EVENTS).unwrap_or_default(),
            shared_ceiling_events: memory::events(&calls_cg, memory::EVENTS_LOCAL)
                .unwrap_or_default()
                .since(&call.ceiling_before),
            pids_peak: pids::peak(&call.cgroup),
            pids_limit_hits: pids::max_events(&call.cgroup).unwrap_or(0),
        };
        // A call whose processes are all gone (the common case) is removed later by
        // reap(); one with leftovers is killed and removed now, to count them.
        let leftover = if call.cgroup.populated().unwrap_or(true) {
            call.cgroup.destroy(DESTROY_WAIT)
        } else {
            self.to_reap.push(call.cgroup.clone());
            Ok(0)
        };
        let processes = self.hooks_removing(call.cgroup_id);
        let outcome = if exit == ABANDONED {
            Outcome::Abandoned
        } else {
            let enforced = Enforced {
                timed_out: call.timed_out,
                cpu_budget_exceeded: call.budget_exceeded,
                pressure_killed: call.memory.killed,
            };
            record::outcome(&exit, &acc, enforced)
        };
        let ceilings = Ceilings {
            calls: self
                .sessions
                .get(&call.session)
                .map(|s| s.plan.calls_memory_max)
                .unwrap_or(0),
            // Two cgroupfs reads, only when the feedback may name the host's limit.
            host: if matches!(outcome, Outcome::MemoryPressure | Outcome::OomKilled) {
                self.memory_reading().map_or(0, |r| r.limit)
            } else {
                0
            },
        };
        let rec = CallRecord {
            call_id: id,
            session: call.session.clone(),
            command: call.command,
            intent: call.intent,
            feedback: record::feedback(id, outcome, &call.limits, &acc, ceilings, &call.suggestion),
            limits: call.limits,
            clamps: call.clamps,
            cgroup: call.cgroup.path().display().to_string(),
            started_unix_ms: call.started_unix_ms,
            duration_ms: call.started.elapsed().as_millis() as u64,
            exit,
            outcome,
            accounting: acc,
            leftover_killed: *leftover.as_ref().unwrap_or(&0),
            processes,
            memory_actions: call.memory.actions,
        };
        self.history.append(&rec)?;
        if let Some(s) = self.sessions.get_mut(&call.session) {
            s.calls_finished += 1;
        }
        leftover?;
        Ok(rec)
    }

    /// The kernel hooks saw the tool of the call in `cgroup_id` exit: ends the call with
    /// that exit once its cgroup is empty, or at once with `force` (killing what is left).
    pub fn tool_exited(&mut self, cgroup_id: u64, exit: ExitInfo, force: bool) -> ToolExit {
        let Some(id) = self.call_by_cgroup(cgroup_id) else {
            return ToolExit::NotRunning;
        };
        if !force && self.running[&id].cgroup.populated().unwrap_or(true) {
            return ToolExit::Populated;
        }
        ToolExit::Ended(Box::new(self.finish_call(id, exit)))
    }

    /// Ends the running calls whose tool the kernel hooks saw exit and whose cgroup is
    /// empty: what the API shows right after a client returned then includes its call,
    /// even if agentcgd's own end of it is a moment behind. Returns the ends (a failure
    /// is a record that could not be written).
    pub fn settle_ended(&mut self) -> Vec<Result<CallRecord, ControlError>> {
        let exited: Vec<(u64, ExitInfo)> = self
            .running
            .values()
            .filter_map(|c| Some((c.cgroup_id, self.hooks_tool_exit(c.cgroup_id)?)))
            .collect();
        exited
            .into_iter()
            .filter_map(|(cgid, exit)| match self.tool_exited(cgid, exit, false) {
                ToolExit::Ended(rec) => Some(*rec),
                ToolExit::Populated | ToolExit::NotRunning => None,
            })
            .collect()
    }

    /// Removes the cgroups of finished calls that [`Controller::finish_call`] left
    /// for later; returns the failures (the cgroup stays listed for the next try).
    pub fn reap(&mut self) -> Vec<CgroupError> {
        let mut errors = Vec::new();
        let mut keep = Vec::new();
        for cg in std::mem::take(&mut self.to_reap) {
            if let Err(e) = cg.destroy(DESTROY_WAIT) {
                errors.push(e);
                keep.push(cg);
            }
        }
        self.to_reap = keep;
        errors
    }

    /// Finishes calls whose tool the kernel hooks saw exit but that are still running
    /// (the exit event was missed), with that exit: at once if their cgroup is empty,
    /// else on the next sweep (what is left is killed). And calls whose cgroup has stayed
    /// empty for [`ABANDON_AFTER`] without a report (the client died before the tool
    /// started, or no hooks watch exits). Returns the records written.
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
            match (empty, call.empty_since) {
                (false, _) => call.empty_since = None,
                (true, None) => call.empty_since = Some(now),
                (true, Some(t)) if now.duration_since(t) >= ABANDON_AFTER => {
                    ended.push((id, ABANDONED));
                }
                (true, Some(_)) => {}
            }
        }
        let records = ended
            .into_iter()
            .filter_map(|(id, exit)| self.finish_call(id, exit).ok())
            .collect();
        self.reap();
        records
    }

    /// A finished call's record, or `None` if unknown or still running.
    pub fn record(&self, id: u64) -> Option<&CallRecord> {
        self.history.get(id)
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.running.contains_key(&id)
    }

    pub fn recent_records(&self, session: Option<&str>, limit: usize) -> Vec<&CallRecord> {
        self.history.recent(session, limit)
    }

    pub fn running_count(&self) -> usize {
        self.running.len()
    }

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
    fn top_priority(&self) -> crate::intent::Priority {
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

    /// Takes one step of the memory response against its victims.
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
        if step == Step::Reclaim {
            self.reclaim_sessions(&targets, reason, &mut report);
            return report;
        }
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
                Step::Reclaim => unreachable!("handled above"),
            };
            let detail = match result {
                Ok(()) => detail,
                Err(e) => format!("{detail} failed: {e}"),
            };
            call.memory
                .act(call.started, step.as_str(), format!("{detail}: {reason}"));
            report.calls.push(id);
            report.cgroup_ids.push(call.cgroup_id);
            report.details.push(format!("call {id}: {detail}"));
        }
        report
    }

    /// The reclaim step: `memory.reclaim` on the sessions of the victims. The kernel
    /// answers EAGAIN when it could not reclaim the whole amount (anonymous memory
    /// without swap cannot be); what it did reclaim is reported either way.
    fn reclaim_sessions(&mut self, targets: &[u64], reason: &str, report: &mut StepReport) {
        let mut sessions: Vec<String> = targets
            .iter()
            .filter_map(|id| self.running.get(id).map(|c| c.session.clone()))
            .collect();
        sessions.sort();
        sessions.dedup();
        for name in sessions {
            let cg = self.layout.session(&name);
            let before = cg.read_u64(memory::CURRENT).unwrap_or(0);
            let amount = pressure::reclaim_amount(&self.policy.memory, before);
            let result = cg.write(memory::RECLAIM, &amount.to_string());
            let after = cg.read_u64(memory::CURRENT).unwrap_or(0);
            let detail = format!(
                "session {name}: memory.reclaim {amount} -> {} reclaimed{}",
                before.saturating_sub(after),
                if result.is_err() { " (short)" } else { "" }
            );
            for (id, call) in self.running.iter_mut().filter(|(_, c)| c.session == name) {
                if !targets.contains(id) {
                    continue;
                }
                call.memory
                    .act(call.started, "reclaim", format!("{detail}: {reason}"));
                report.calls.push(*id);
                report.cgroup_ids.push(call.cgroup_id);
            }
            report.details.push(detail);
        }
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
                m.act(call.started, action, format!("{detail}: {reason}"));
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
        call.memory.act(
            call.started,
            "burst",
            format!("memory.high {high} -> {new}: crossed it while the host had slack"),
        );
        Some((*id, new))
    }
}

/// The exit of a call whose client never reported: no code, no signal.
const ABANDONED: ExitInfo = ExitInfo {
    code: None,
    signal: None,
};

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
