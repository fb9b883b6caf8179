//! `GET /v1/events`: the event stream as newline-delimited JSON, one event a line,
//! written as it happens (chunked). `since=SEQ` replays the kept events after SEQ
//! first; `session=NAME` filters; `follow=false` ends the answer after the replay.
//! A consumer that does not read never holds anything up: its queue overflows and it
//! gets a `lagged` event (agentcg_core::events). A consumer that goes away ends its
//! stream at the next event, and with it everything it held.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;

use agentcg_core::controller::ControlError;
use agentcg_core::events::{Event, Subscription, lagged};
use agentcg_core::plan;

use super::extract::Query;
use super::guard::{self, Caller};
use super::{ApiError, AppState};

/// The query of `GET /v1/events`; values as text, so a bad one gets a precise error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    session: Option<String>,
    since: Option<String>,
    follow: Option<String>,
}

/// What a valid query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub session: Option<String>,
    pub since: Option<u64>,
    pub follow: bool,
}

/// Checks the query's values (not whether the session exists).
pub fn parse_query(q: EventsQuery) -> Result<Wanted, ApiError> {
    let since = match q.since.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            bad_query(format!(
                "since: expected the seq of an event seen (an integer >= 0), got `{}`",
                s.chars().take(40).collect::<String>()
            ))
        })?),
    };
    let follow = match q.follow.as_deref() {
        None | Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => {
            return Err(bad_query(format!(
                "follow: expected true or false, got `{}`",
                other.chars().take(40).collect::<String>()
            )));
        }
    };
    if let Some(s) = &q.session {
        plan::check_session_name(s).map_err(|e| bad_query(format!("session: {e}")))?;
    }
    Ok(Wanted {
        session: q.session,
        since,
        follow,
    })
}

fn bad_query(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message)
}

/// A non-admin caller follows the events of one of its own sessions (`session=`).
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let wanted = parse_query(q)?;
    match &wanted.session {
        None => guard::require_admin(&caller, "the events of every session")?,
        Some(name) => {
            let owner = state.lock()?.session_owner(name);
            // A session that is gone may still have events in the ring: replaying
            // them is fine (for an admin: its owner is no longer known); following a
            // name that never existed is a typo worth an error.
            if owner.is_none() && wanted.since.is_none() {
                return Err(ControlError::NoSession(name.clone()).into());
            }
            guard::check_kept_owner(
                &caller,
                owner,
                &format!("session `{name}`"),
                &format!("replaying the events of closed session `{name}`"),
            )?;
        }
    }
    let sub = state
        .events
        .subscribe(wanted.since, wanted.session.as_deref());
    let body = Body::from_stream(lines(sub, wanted.follow));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// The replay (a `lagged` first when part of it is no longer kept), then, when
/// following, every new event as it comes.
fn lines(mut sub: Subscription, follow: bool) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let mut first: Vec<Arc<Event>> = Vec::new();
    if sub.missed_before > 0 {
        first.push(Arc::new(lagged(sub.missed_before)));
    }
    first.append(&mut sub.backlog);
    let replay = stream::iter(first);
    let live = stream::unfold(sub, |mut sub| async move {
        let event = sub.next().await?;
        Some((event, sub))
    });
    let live = if follow {
        live.left_stream()
    } else {
        stream::empty().right_stream()
    };
    replay.chain(live).map(|e| Ok(Bytes::from(line(&e))))
}

/// One event as one line of JSON.
pub fn line(e: &Event) -> String {
    let mut s = serde_json::to_string(e).unwrap_or_default();
    s.push('\n');
    s
}
