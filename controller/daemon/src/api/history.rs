//! `GET /v1/history` and `GET /v1/history/stats`: queries of the history database.
//! The parameters are checked first (a bad one is a `bad_query` naming it); the query
//! then runs on a read-only connection of its own on a blocking thread, so SQLite never
//! works under the controller's mutex (only the database's path is read under it).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use agentcg_core::history::query::{self, ListFilter, MAX_LIMIT};
use agentcg_core::history::{Connection, HistoryError, schema};
use agentcg_core::record::Outcome;

use super::extract::{Json, Query};
use super::guard::{self, Caller};
use super::{ApiError, ApiResult, AppState, with_controller};

/// `GET /v1/history`'s parameters, as given.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    session: Option<String>,
    class: Option<String>,
    outcome: Option<String>,
    since: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/history/stats`'s parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    class: Option<String>,
}

fn bad(param: &str, message: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_query",
        format!("{param}: {message}"),
    )
}

/// Checks the parameters of a list; the filter they ask for.
pub fn list_filter(p: ListParams) -> Result<ListFilter, ApiError> {
    if let Some(s) = &p.session {
        agentcg_core::plan::check_session_name(s).map_err(|e| bad("session", e.to_string()))?;
    }
    let outcome = match p.outcome.as_deref() {
        None => None,
        Some(o) => Some(Outcome::from_name(o).ok_or_else(|| {
            let known: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
            bad(
                "outcome",
                format!("`{o}` is not an outcome (one of {})", known.join(", ")),
            )
        })?),
    };
    let since_unix_ms = match p.since.as_deref() {
        None => None,
        Some(t) => Some(
            t.parse::<u64>()
                .map_err(|_| bad("since", format!("`{t}` is not a time in unix milliseconds")))?,
        ),
    };
    let limit = match p.limit.as_deref() {
        None => query::DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| bad("limit", format!("`{l}`: expected 1..={MAX_LIMIT}")))?,
    };
    Ok(ListFilter {
        session: p.session,
        class: p.class,
        outcome,
        since_unix_ms,
        limit,
    })
}

/// Runs a query on a read-only connection, on a blocking thread.
pub(super) async fn on_db<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Connection, &std::path::Path) -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, ApiError> {
    let db = with_controller(state, |c| Ok(c.history_db().to_path_buf())).await?;
    let internal = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "state_error", e);
    tokio::task::spawn_blocking(move || {
        let conn = schema::open_read_only(&db)?;
        f(&conn, &db)
    })
    .await
    .map_err(|e| internal(format!("history query: {e}")))?
    .map_err(|e| internal(e.to_string()))
}

/// A non-admin caller lists the history of one of its own sessions (`session=`).
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(p): Query<ListParams>,
) -> ApiResult {
    let filter = list_filter(p)?;
    match &filter.session {
        None => guard::require_admin(&caller, "the history of every session")?,
        Some(name) => guard::check_kept_owner(
            &caller,
            state.lock()?.session_owner(name),
            &format!("session `{name}`"),
            &format!("the history of session `{name}` (not open: its owner is not kept)"),
        )?,
    }
    let calls = on_db(&state, move |conn, db| query::list(conn, db, &filter)).await?;
    Ok(Json(json!({ "calls": calls })))
}

pub async fn stats(State(state): State<AppState>, Query(p): Query<StatsParams>) -> ApiResult {
    let classes = on_db(&state, move |conn, db| {
        query::stats(conn, db, p.class.as_deref())
    })
    .await?;
    Ok(Json(json!({ "classes": classes })))
}

#[cfg(test)]
mod tests;
