//! The HTTP+JSON API (documented in docs/API.md). Handlers parse, run the work on the
//! controller inline (under its mutex, never across anything slow), and map errors to
//! `{"error": {code, message}}`: every error, including an unknown path, a wrong
//! method and a path, query or body the extractors refuse (see [`extract`]). History
//! queries run on a blocking thread with a database connection of their own
//! ([`history`]).

#[cfg(test)]
mod access_tests;
mod events;
mod extract;
pub mod guard;
mod history;
mod policy;
#[cfg(test)]
mod queue_tests;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use agentcg_core::controller::{CallRequest, ControlError, Controller, DEFAULT_SESSION};
use agentcg_core::events::{EventBody, EventBus};
use agentcg_core::history::Durability;
use agentcg_core::plan::{PlanError, SessionRequest};
use agentcg_core::record::{CallRecord, ExitInfo};

use crate::policy::PolicyStore;
use crate::queue::Queue;
use crate::status::Status;
use crate::supervisor::{self, Shared, Wakers};
use extract::{Json, Path, Query};
use guard::Caller;

/// How long a finish report waits for its record to be on disk.
const DURABLE_WAIT: Duration = Duration::from_secs(10);
/// How long past `[admission] queue_for` a queued declaration waits for the pump.
const QUEUE_MARGIN: Duration = Duration::from_secs(5);
/// How long a query about a call whose tool has exited waits for agentcgd to end it.
const SETTLE_WAIT: Duration = Duration::from_millis(500);

/// Shared by every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    controller: Shared,
    status: Arc<Status>,
    wakers: Arc<Wakers>,
    events: Arc<EventBus>,
    policy: Arc<PolicyStore>,
    /// Calls waiting for memory.
    queue: Arc<Queue>,
    /// The group whose members act on every session (see [`guard`]).
    admin_group: Arc<str>,
}

impl AppState {
    pub fn new(
        controller: Shared,
        status: Status,
        wakers: Arc<Wakers>,
        events: Arc<EventBus>,
        policy: Arc<PolicyStore>,
        admin_group: &str,
    ) -> AppState {
        AppState {
            controller,
            status: Arc::new(status),
            wakers,
            events,
            policy,
            queue: Arc::default(),
            admin_group: admin_group.into(),
        }
    }

    /// The admission queue, for its pump.
    pub fn queue(&self) -> Arc<Queue> {
        self.queue.clone()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Controller>, ApiError> {
        self.controller.lock().map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "controller lock poisoned",
            )
        })
    }
}

pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/v1/status", get(status))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route(
            "/v1/sessions/{name}",
            get(show_session).delete(close_session),
        )
        .route("/v1/sessions/{name}/runtime", post(attach_runtime))
        .route("/v1/calls", post(declare_call).get(list_calls))
        .route("/v1/calls/{id}", get(show_call))
        .route("/v1/calls/{id}/finish", post(finish_call))
        .route("/v1/events", get(events::events))
        .route("/v1/running", get(list_running))
        .route("/v1/history", get(history::list))
        .route("/v1/history/stats", get(history::stats))
        .route(
            "/v1/policy",
            get(policy::show).put(policy::put).patch(policy::patch),
        )
        .route("/v1/policy/check", post(policy::check))
        .route("/v1/policy/history", get(policy::history))
        .route("/v1/policy/rollback", post(policy::rollback))
        .fallback(not_found)
        // After every route: it applies to the routes added so far.
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint (see docs/API.md)",
    )
}

/// axum adds the `Allow` header (the methods the path takes) to this answer.
async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this endpoint does not take {method} (see the Allow header and docs/API.md)"),
    )
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// A further field of the error object (`problems` of an invalid policy).
    detail: Option<(&'static str, Value)>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }

    fn with(mut self, key: &'static str, value: Value) -> ApiError {
        self.detail = Some((key, value));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some((key, value)) = self.detail {
            body["error"][key] = value;
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let status = match &e {
            ControlError::NoSession(_) | ControlError::NoCall(_) => StatusCode::NOT_FOUND,
            ControlError::SessionExists(_)
            | ControlError::SessionClosing(_)
            | ControlError::RuntimeAlive { .. } => StatusCode::CONFLICT,
            ControlError::Plan(PlanError::NoRoom(_)) => StatusCode::TOO_MANY_REQUESTS,
            ControlError::Plan(PlanError::Queued(_)) => StatusCode::CONFLICT,
            _ if e.is_client_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Runs `f` on the controller, inline. The daemon is single-threaded on purpose: every
/// controller operation is a few cgroupfs reads and writes, and handing each request
/// to a blocking-pool thread cost more than the work (two thread wake-ups per request;
/// measured under emulation at tens of ms per API round trip).
async fn with_controller<T>(
    state: &AppState,
    f: impl FnOnce(&mut Controller) -> Result<T, ControlError>,
) -> Result<T, ApiError> {
    let mut guard = state.lock()?;
    f(&mut guard).map_err(ApiError::from)
}

fn to_json<T: serde::Serialize>(v: T) -> ApiResult {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

async fn status(State(state): State<AppState>) -> ApiResult {
    let (running, history, reaper, state_files, reading) = with_controller(&state, |c| {
        Ok((
            c.running_count(),
            c.writer_status(),
            c.reaper_status(),
            c.state_errors(),
            c.memory_reading().ok(),
        ))
    })
    .await?;
    let mut v = serde_json::to_value(&*state.status).unwrap_or_default();
    v["running_calls"] = json!(running);
    v["history"] = json!(history);
    v["reaper"] = json!(reaper);
    v["state_file_errors"] = json!(state_files);
    v["events"] = json!(state.events.status());
    v["policy"] = state.policy.status();
    let sched = state
        .status
        .sched
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let cpu_mode = match sched.active.as_str() {
        "sched_ext" => format!("sched_ext: {}", sched.detail),
        _ => format!(
            "kernel cpu controller (cpu.weight, cpu.max): {}",
            sched.detail
        ),
    };
    if let Some(modes) = v["modes"].as_array_mut() {
        modes.insert(modes.len().min(1), json!({"part": "cpu", "mode": cpu_mode}));
    }
    v["scheduler"] = serde_json::to_value(&sched).unwrap_or_default();
    let mut memory = state
        .status
        .memory
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    // The response reads the root only when it has something to decide: the status
    // shows the root as it is now.
    if let Some(r) = reading {
        (memory.root_usage, memory.root_limit, memory.defended) =
            (r.usage, r.limit, Some(r.defended));
    }
    let response = format!(
        "graduated response (throttle, reclaim, freeze, kill low-priority calls) on {}",
        memory.signals.join(" + ")
    );
    if let Some(modes) = v["modes"].as_array_mut() {
        modes.push(json!({"part": "memory-response", "mode": response}));
    }
    v["memory"] = serde_json::to_value(&memory).unwrap_or_default();
    Ok(Json(v))
}

async fn create_session(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<SessionRequest>, ApiError>,
) -> ApiResult {
    let Json(mut req) = body?;
    if let Some(pid) = req.runtime_pid {
        guard::own_process(&caller, pid)?;
    }
    req.owner = caller.uid();
    to_json(with_controller(&state, move |c| c.create_session(&req)).await?)
}

/// Queries never end calls (only the four triggers of docs/ARCHITECTURE.md#who-ends-a-call
/// do): a query about a call whose tool the kernel saw exit waits, briefly, for
/// agentcgd's own end of it, so what a client sees right after its tool returned
/// includes its call.
async fn settled(state: &AppState, ids: impl Fn(&Controller) -> Vec<u64>) {
    supervisor::wait_for(&state.wakers.ended, SETTLE_WAIT, || {
        state
            .controller
            .lock()
            .map(|c| !ids(&c).iter().any(|&id| c.tool_has_exited(id)))
            .unwrap_or(true)
    })
    .await;
}

/// The caller's sessions (every session for an admin).
async fn list_sessions(State(state): State<AppState>, caller: Caller) -> ApiResult {
    settled(&state, Controller::running_ids).await;
    let mut sessions = with_controller(&state, |c| Ok(c.list_sessions())).await?;
    sessions.retain(|s| caller.may_access(s.owner));
    to_json(sessions)
}

async fn show_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    settled(&state, Controller::running_ids).await;
    let c = state.lock()?;
    guard::own_session(&caller, &c, &name)?;
    to_json(c.session_info(&name)?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseQuery {
    #[serde(default)]
    force: bool,
}

async fn close_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<CloseQuery>,
) -> ApiResult {
    let records = {
        let mut c = state.lock()?;
        guard::own_session(&caller, &c, &name)?;
        c.close_session(&name, q.force)?
    };
    state.wakers.ended.notify_waiters();
    to_json(json!({"closed": true, "killed_calls": records}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachRequest {
    pid: u32,
}

async fn attach_runtime(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<AttachRequest>, ApiError>,
) -> ApiResult {
    let Json(req) = body?;
    {
        let mut c = state.lock()?;
        guard::own_session(&caller, &c, &name)?;
        guard::own_process(&caller, req.pid)?;
        c.attach_runtime(&name, req.pid)?;
    }
    Ok(Json(json!({"attached": req.pid})))
}

async fn declare_call(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CallRequest>, ApiError>,
) -> ApiResult {
    let Json(mut req) = body?;
    req.owner = caller.uid();
    let arrived = Instant::now();
    let wait = req.wait != Some(false);
    let first = {
        let mut c = state.lock()?;
        let session = req.session.as_deref().unwrap_or(DEFAULT_SESSION);
        // A session that does not exist is the controller's error (or, for the
        // default session, created for the caller).
        if let Some(owner) = c.session_owner(session) {
            guard::check_owner(&caller, owner, &format!("session `{session}`"))?;
            guard::client_inside(&caller, &c, session)?;
        }
        // Without waiting, a call that cannot fit is answered `queued` (409) at once.
        c.declare_call_queued(&req, Some(Duration::ZERO))
    };
    let grant = match first {
        Err(ControlError::Plan(PlanError::Queued(note))) if wait => {
            let queue_for = state.lock()?.policy().admission.queue_for;
            let session = req.session.clone().unwrap_or(DEFAULT_SESSION.into());
            state.events.publish(EventBody::CallQueued {
                session: session.clone(),
                admission: note.clone(),
            });
            let mut ticket = state.queue.push(req, session, note.priority, arrived);
            // The pump answers by `queue_for`; the margin only guards against a pump
            // that stopped.
            match tokio::time::timeout(queue_for + QUEUE_MARGIN, &mut ticket.answer).await {
                Ok(Ok(answer)) => answer?,
                _ => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "queue_stalled",
                        "the admission queue did not answer in time",
                    ));
                }
            }
        }
        other => other?,
    };
    state.wakers.declared.notify_one();
    to_json(grant)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FinishRequest {
    exit: ExitInfo,
}

async fn finish_call(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
    body: Result<Json<FinishRequest>, ApiError>,
) -> ApiResult {
    let Json(req) = body?;
    // What the tool left behind is watched first (a fork bomb ends at its limit).
    let running = {
        let c = state.lock()?;
        guard::own_call(&caller, &c, id)?;
        c.leftovers(id).is_some()
    };
    if running {
        supervisor::settle_leftovers(&state.controller, id).await;
    }
    // Idempotent: a call that already ended (its tool's exit seen by the kernel
    // telemetry, its session closed) answers with its record.
    let record = {
        let mut c = state.lock()?;
        guard::own_call(&caller, &c, id)?;
        c.finish_call(id, req.exit)?
    };
    state.wakers.ended.notify_waiters();
    // The reply waits (without holding anything) for the record to be on disk.
    let durable = || {
        state
            .controller
            .lock()
            .map(|c| c.durability(id))
            .unwrap_or(Durability::Pending)
    };
    supervisor::wait_for(&state.wakers.ended, DURABLE_WAIT, || {
        durable() != Durability::Pending
    })
    .await;
    let mut v = serde_json::to_value(record)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match durable() {
        Durability::Durable => {}
        Durability::Pending => {
            v["warning"] =
                json!("the record is not on disk yet (agentcgd's history writer is slow)")
        }
        Durability::Failed(e) => {
            v["warning"] = json!(format!(
                "the record could not be written to disk ({e}); agentcgd keeps it and retries"
            ))
        }
    }
    Ok(Json(v))
}

async fn show_call(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
) -> ApiResult {
    settled(&state, |_| vec![id]).await;
    {
        let c = state.lock()?;
        if c.is_running(id) || c.record(id).is_some() {
            guard::own_call(&caller, &c, id)?;
            if c.is_running(id) {
                return Ok(Json(json!({"call_id": id, "running": true})));
            }
            return to_json(c.record(id));
        }
    }
    // Older than the records kept in memory: read from the database, off the mutex.
    let record = history::on_db(&state, move |conn, db| {
        agentcg_core::history::query::by_id(conn, db, id)
    })
    .await?
    .ok_or(ControlError::NoCall(id))?;
    guard::check_kept_owner(
        &caller,
        state.lock()?.session_owner(&record.session),
        &format!("call {id} (session `{}`)", record.session),
        &format!(
            "call {id} of closed session `{}` (its owner is not kept)",
            record.session
        ),
    )?;
    to_json(record)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListCalls {
    session: Option<String>,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    50
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListRunning {
    session: Option<String>,
}

/// The running calls, read from their cgroups now (`agentcg top`).
async fn list_running(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListRunning>,
) -> ApiResult {
    let c = state.lock()?;
    if let Some(s) = &q.session {
        guard::own_session(&caller, &c, s)?;
    }
    let mut views = c.running_views(q.session.as_deref());
    views.retain(|v| guard::may_see(&caller, c.session_owner(&v.session)));
    to_json(views)
}

/// The caller's recent records: of its own sessions (an admin: of every session).
async fn list_calls(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListCalls>,
) -> ApiResult {
    let limit = q.limit.min(agentcg_core::history::KEEP_IN_MEMORY);
    settled(&state, Controller::running_ids).await;
    let c = state.lock()?;
    if let Some(s) = &q.session {
        agentcg_core::plan::check_session_name(s).map_err(ControlError::from)?;
        if let Some(owner) = c.session_owner(s) {
            guard::check_owner(&caller, owner, &format!("session `{s}`"))?;
        }
    }
    // Filtered before the limit: a user gets its `limit` newest, not fewer.
    let keep = |r: &CallRecord| {
        q.session.as_deref().is_none_or(|s| r.session == s)
            && guard::may_see(&caller, c.session_owner(&r.session))
    };
    let records: Vec<_> = c.recent_records(keep, limit).into_iter().cloned().collect();
    to_json(records)
}
