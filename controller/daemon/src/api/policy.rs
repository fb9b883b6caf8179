//! `/v1/policy`: show, check, replace, set keys, list versions, roll back. Every
//! change goes through [`change_policy`], then [`crate::policy::PolicyStore::swap`]
//! (validate, then all or nothing).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use agentcg_core::policy::check;
use agentcg_core::policy::edit::{self, Assignment};
use agentcg_core::policy::{self, MAX_POLICY_BYTES, Policy, diff};

use super::extract::{Json, Query};
use super::guard::{self, Caller};
use super::{ApiError, ApiResult, AppState, to_json};
use crate::policy::Refusal;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    /// Every key, defaults filled in.
    #[serde(default)]
    effective: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextBody {
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBody {
    set: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    #[serde(default = "one")]
    back: usize,
}

fn one() -> usize {
    1
}

/// What a change asks for.
#[derive(Debug)]
enum PolicyChange {
    Replace(String),
    Set(Vec<Assignment>),
    Rollback(usize),
}

fn too_large(text: &str) -> Result<(), ApiError> {
    if text.len() as u64 > MAX_POLICY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "policy text of {} bytes, more than {MAX_POLICY_BYTES}",
                text.len()
            ),
        ));
    }
    Ok(())
}

/// A refusal as an error answer; `origin` names the text in its lines.
fn refused(r: Refusal, origin: &str) -> ApiError {
    match r {
        Refusal::Invalid(problems) => {
            let message = Refusal::Invalid(problems.clone()).render(origin);
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_policy", message)
                .with("problems", json!(problems))
        }
        Refusal::Io(e) => ApiError::new(StatusCode::BAD_REQUEST, "policy_unavailable", e),
    }
}

/// The one way the policy changes through the API: builds the new text, then hands it
/// to the store, which validates and swaps. Access control for policy changes
/// belongs here, before anything is read or built.
/// Admins only (docs/API.md, "Access").
async fn change_policy(state: &AppState, caller: Caller, change: PolicyChange) -> ApiResult {
    guard::require_admin(&caller, "changing the policy")?;
    let store = &state.policy;
    let file = store.file().display().to_string();
    let (text, source, origin) = match change {
        PolicyChange::Replace(text) => {
            too_large(&text)?;
            (text, "PUT /v1/policy".to_string(), "request".to_string())
        }
        PolicyChange::Set(assignments) => {
            let (current, _) = store.text();
            let text = edit::set(&current, &assignments)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_key", e))?;
            (text, "PATCH /v1/policy".to_string(), file)
        }
        PolicyChange::Rollback(back) => {
            let text = store.version_text(back).map_err(|r| refused(r, &file))?;
            (text, format!("rollback {back}"), file)
        }
    };
    let outcome = store
        .swap(text, &source, true)
        .map_err(|r| refused(r, &origin))?;
    to_json(outcome)
}

pub async fn show(State(state): State<AppState>, Query(q): Query<ShowQuery>) -> ApiResult {
    let (text, _) = state.policy.text();
    let mut v = state.policy.status();
    v["text"] = if q.effective {
        let full = policy::effective_text(&text)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
        json!(full)
    } else {
        json!(text)
    };
    Ok(Json(v))
}

pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<TextBody>,
) -> ApiResult {
    change_policy(&state, caller, PolicyChange::Replace(body.text)).await
}

pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<SetBody>,
) -> ApiResult {
    if body.set.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_key",
            "nothing to set",
        ));
    }
    let assignments = body
        .set
        .iter()
        .map(|s| Assignment::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_key", e))?;
    change_policy(&state, caller, PolicyChange::Set(assignments)).await
}

pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<RollbackBody>,
) -> ApiResult {
    change_policy(&state, caller, PolicyChange::Rollback(body.back)).await
}

/// Checks a text without changing anything: its problems and, when it is valid, what
/// it would change, which sessions and running calls exist (calls keep their limits),
/// and the session budgets it would re-apply or leave (`budgets`).
pub async fn check(State(state): State<AppState>, Json(body): Json<TextBody>) -> ApiResult {
    too_large(&body.text)?;
    let problems = check::check(&body.text);
    let ok = !problems
        .iter()
        .any(|p| p.severity == check::Severity::Error);
    let mut v = json!({"ok": ok, "problems": problems});
    if ok {
        let (current, _) = state.policy.text();
        let changes = diff::diff(&current, &body.text)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
        let policy = Policy::parse(&body.text, "request").map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        let (sessions, running, budgets) = {
            let c = state.lock()?;
            let names: Vec<String> = c.list_sessions().into_iter().map(|s| s.plan.name).collect();
            (names, c.running_count(), c.budget_preview(&policy))
        };
        v["changes"] = json!(changes);
        v["sessions"] = json!(sessions);
        v["running_calls"] = json!(running);
        v["budgets"] = json!(budgets);
    }
    Ok(Json(v))
}

pub async fn history(State(state): State<AppState>) -> ApiResult {
    to_json(json!({"versions": state.policy.versions()}))
}

#[cfg(test)]
mod tests;
