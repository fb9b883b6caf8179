//! The admission queue through the real router: a call that cannot fit is answered
//! `queued` when it asks not to wait, else waits; waiters are admitted highest
//! priority first, in arrival order within a priority, as calls end; a waiter whose
//! client goes away leaves the queue.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::Value;

use super::tests::{Fixture, answer, fixture_with_sessions, request, send};

/// Sends a declaration in a task of its own (it may wait in the queue).
fn declare_later(f: &Fixture, body: &str) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let app = f.app.clone();
    let req = request(Method::POST, "/v1/calls", Some(body));
    tokio::spawn(async move {
        let (status, _, body) = answer(&app, req).await;
        (status, body)
    })
}

/// Lets the tasks run until `n` calls wait.
async fn until_waiting(f: &Fixture, n: usize) {
    for _ in 0..1000 {
        if f.queue.len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{} calls wait, not {n}", f.queue.len());
}

fn pump(f: &Fixture) -> usize {
    let mut c = f.shared.lock().expect("controller lock");
    f.queue.pump(&mut c)
}

#[tokio::test]
async fn waiters_are_admitted_by_priority_then_arrival_and_leave_when_their_client_does() {
    // Session a: 4 GiB, so its calls share 3.9 GiB; a 3 GiB call leaves 896 MiB.
    let f = fixture_with_sessions(&[("a", 0)]);
    let (status, _, hold) = send(
        &f.app,
        Method::POST,
        "/v1/calls",
        Some(r#"{"session": "a", "command": ["true"], "intent": "mem=3G"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{hold}");
    assert_eq!(hold["admission"]["decision"]["verdict"], "admit", "{hold}");

    let big = |extra: &str| {
        format!(r#"{{"session": "a", "command": ["true"], "intent": "mem=2G{extra}"}}"#)
    };
    let no_wait = format!(r#"{}, "wait": false}}"#, big("").trim_end_matches('}'));
    let (status, _, body) = send(&f.app, Method::POST, "/v1/calls", Some(&no_wait)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "queued", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("waiting up to 30s for memory: the call expects 2 GiB"),
        "{message}"
    );
    assert_eq!(f.queue.len(), 0, "asked not to wait");

    // A low-priority call arrives first, then two normal ones. Each is an event.
    let mut events = f.events.subscribe(None, Some("a"));
    let low = declare_later(&f, &big(",priority=low"));
    until_waiting(&f, 1).await;
    let queued = events.next().await.expect("an event");
    let queued = serde_json::to_value(&*queued).expect("event JSON");
    assert_eq!(queued["type"], "call_queued", "{queued}");
    assert_eq!(queued["admission"]["priority"], "low", "{queued}");
    assert_eq!(
        queued["admission"]["decision"]["verdict"], "queue",
        "{queued}"
    );
    let first = declare_later(&f, &big(""));
    until_waiting(&f, 2).await;
    let second = declare_later(&f, &big(""));
    until_waiting(&f, 3).await;
    assert_eq!(pump(&f), 0, "nothing ended: all wait");

    let finish = format!("/v1/calls/{}/finish", hold["call_id"]);
    let (status, _, rec) = send(
        &f.app,
        Method::POST,
        &finish,
        Some(r#"{"exit": {"code": 0}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rec}");
    // 3.9 GiB free: room for one 2 GiB call. The first normal one gets it; the second
    // still waits, and the low one may not overtake it.
    assert_eq!(pump(&f), 1);
    let (status, grant) = first.await.expect("first waiter");
    assert_eq!(status, StatusCode::OK, "{grant}");
    assert_eq!(grant["limits"]["priority"], "normal");
    let admission = &grant["admission"];
    assert_eq!(admission["decision"]["verdict"], "admit", "{grant}");
    assert!(
        admission["inputs"]["waited_ms"].as_u64() > Some(0),
        "{grant}"
    );
    assert_eq!(admission["inputs"]["queue_for_ms"], 30_000, "{grant}");
    assert_eq!(f.queue.len(), 2);
    assert!(!second.is_finished() && !low.is_finished());

    // The low call's client goes away: it leaves the queue at once.
    low.abort();
    assert!(low.await.is_err_and(|e| e.is_cancelled()));
    assert_eq!(f.queue.len(), 1);
    second.abort();
    let _ = second.await;
    assert_eq!(f.queue.len(), 0);
}
