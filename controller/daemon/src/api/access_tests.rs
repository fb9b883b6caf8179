//! Access control through the real router: a session belongs to the uid that created
//! it; another uid neither sees nor touches it or its calls; admins see everything.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;

use super::tests::{
    Fixture, answer, assert_error, fixture, fixture_with_sessions, from_uid, request,
};

const A: u32 = 1000;
const B: u32 = 1001;

async fn send_as(
    f: &Fixture,
    uid: u32,
    method: Method,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let (status, _, body) = answer(&f.app, from_uid(request(method, uri, body), uid)).await;
    (status, body)
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["plan"]["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn another_uid_neither_sees_nor_touches_a_session_or_its_calls() {
    let f = fixture_with_sessions(&[("a", A)]);
    let (status, body) = send_as(&f, A, Method::GET, "/v1/sessions/a", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["owner"], A);
    // Declared by root (a non-root client must be inside the session, which a fake
    // cgroup tree cannot hold; tests/tests/unprivileged_agents.rs does it for real).
    let (status, grant) = send_as(
        &f,
        0,
        Method::POST,
        "/v1/calls",
        Some(r#"{"session": "a", "command": ["true"]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    let id = grant["call_id"].as_u64().unwrap();

    let (_, mine) = send_as(&f, A, Method::GET, "/v1/sessions", None).await;
    assert_eq!(names(&mine), ["a"]);
    let (_, theirs) = send_as(&f, B, Method::GET, "/v1/sessions", None).await;
    assert_eq!(names(&theirs), Vec::<&str>::new(), "B lists none of A's");
    let (_, all) = send_as(&f, 0, Method::GET, "/v1/sessions", None).await;
    assert_eq!(names(&all), ["a"], "root lists every session");

    let finish = r#"{"exit": {"code": 0}}"#;
    let refused = [
        (Method::GET, "/v1/sessions/a".to_string(), None),
        (Method::DELETE, "/v1/sessions/a?force=true".into(), None),
        (
            Method::POST,
            "/v1/sessions/a/runtime".into(),
            Some(r#"{"pid": 1}"#),
        ),
        (
            Method::POST,
            "/v1/calls".into(),
            Some(r#"{"session": "a", "command": ["true"]}"#),
        ),
        (Method::GET, format!("/v1/calls/{id}"), None),
        (Method::POST, format!("/v1/calls/{id}/finish"), Some(finish)),
        (Method::GET, "/v1/running?session=a".into(), None),
        (Method::GET, "/v1/calls?session=a".into(), None),
        (
            Method::GET,
            "/v1/events?session=a&follow=false".into(),
            None,
        ),
        (Method::GET, "/v1/history?session=a".into(), None),
    ];
    for (method, uri, body) in refused {
        let (status, answer) = send_as(&f, B, method.clone(), &uri, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {answer}");
        assert_error(
            &answer,
            "forbidden",
            &["session `a`", "uid 1000", "uid 1001"],
        );
    }
    // Everything of every session: admins only.
    for uri in ["/v1/events?follow=false", "/v1/history"] {
        let (status, answer) = send_as(&f, B, Method::GET, uri, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {answer}");
        assert_error(&answer, "forbidden", &["needs an admin", "uid 1001"]);
    }
    let (_, calls) = send_as(&f, B, Method::GET, "/v1/calls", None).await;
    assert_eq!(calls, Value::Array(Vec::new()), "B lists none of A's calls");
    let (_, running) = send_as(&f, B, Method::GET, "/v1/running", None).await;
    assert_eq!(running, Value::Array(Vec::new()));

    // Nothing B asked for happened; A still owns and ends its call and session.
    let (status, body) = send_as(&f, A, Method::GET, &format!("/v1/calls/{id}"), None).await;
    assert_eq!(
        (status, &body["running"]),
        (StatusCode::OK, &Value::Bool(true)),
        "{body}"
    );
    let (status, body) = send_as(
        &f,
        A,
        Method::POST,
        &format!("/v1/calls/{id}/finish"),
        Some(finish),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, calls) = send_as(&f, A, Method::GET, "/v1/calls", None).await;
    assert_eq!(calls.as_array().unwrap().len(), 1, "{calls}");
    let (status, body) = send_as(&f, A, Method::DELETE, "/v1/sessions/a", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_users_call_list_is_filtered_before_its_limit() {
    let f = fixture_with_sessions(&[("a", A), ("b", B)]);
    // A's call is older than B's: `limit=1` must still find it.
    for session in ["a", "b"] {
        let call = format!(r#"{{"session": "{session}", "command": ["true"]}}"#);
        let (status, grant) = send_as(&f, 0, Method::POST, "/v1/calls", Some(&call)).await;
        assert_eq!(status, StatusCode::OK, "{grant}");
        let finish = format!("/v1/calls/{}/finish", grant["call_id"]);
        let (status, body) = send_as(
            &f,
            0,
            Method::POST,
            &finish,
            Some(r#"{"exit": {"code": 0}}"#),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for (uid, session) in [(A, "a"), (B, "b")] {
        let (_, calls) = send_as(&f, uid, Method::GET, "/v1/calls?limit=1", None).await;
        let calls = calls.as_array().unwrap();
        assert_eq!(calls.len(), 1, "uid {uid}: {calls:?}");
        assert_eq!(calls[0]["session"], session, "uid {uid}");
    }
    let (_, all) = send_as(&f, 0, Method::GET, "/v1/calls?limit=1", None).await;
    assert_eq!(all[0]["session"], "b", "root gets the newest of all: {all}");
}

#[tokio::test]
async fn the_default_session_is_its_owners_and_needs_a_client_inside() {
    let f = fixture_with_sessions(&[("default", B)]);
    let call = Some(r#"{"command": ["true"]}"#);
    let (status, body) = send_as(&f, B, Method::POST, "/v1/calls", call).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error(
        &body,
        "forbidden",
        &[
            "outside session `default`",
            "POST /v1/sessions/default/runtime",
        ],
    );
    let (status, body) = send_as(&f, A, Method::POST, "/v1/calls", call).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error(
        &body,
        "forbidden",
        &["session `default` belongs to uid 1001"],
    );
}

#[tokio::test]
async fn a_request_without_credentials_is_refused() {
    let f = fixture();
    let req = Request::get("/v1/sessions").body(Body::empty()).unwrap();
    let mut req = req;
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(super::guard::PeerCred(None)));
    let (status, _, body) = answer(&f.app, req).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error(&body, "forbidden", &["SO_PEERCRED"]);
}

#[tokio::test]
async fn crafted_names_are_refused_with_a_400_that_names_the_rule() {
    let f = fixture_with_sessions(&[("a", A)]);
    let long = "x".repeat(10 * 1024);
    let crafted = [
        "%2e%2e".to_string(),
        "..".into(),
        "%2E%2E%2Fx".into(),
        "a%00b".into(),
        "a%2Fb".into(),
        long.clone(),
    ];
    for name in &crafted {
        for (method, uri) in [
            (Method::GET, format!("/v1/sessions/{name}")),
            (Method::DELETE, format!("/v1/sessions/{name}")),
            (Method::GET, format!("/v1/running?session={name}")),
            (Method::GET, format!("/v1/calls?session={name}")),
        ] {
            let (status, body) = send_as(&f, A, method.clone(), &uri, None).await;
            let shown: String = uri.chars().take(60).collect();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {shown}: {body}");
            assert_error(&body, "bad_session", &["1-64 characters"]);
        }
    }
    let body = format!(r#"{{"name": "{long}"}}"#);
    let (status, answer) = send_as(&f, A, Method::POST, "/v1/sessions", Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = send_as(
        &f,
        A,
        Method::POST,
        "/v1/sessions",
        Some(r#"{"name": "a\u0000b"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_error(&answer, "bad_session", &[r"a\0b"]);
    // `../x` in a path is a path of its own (no route), never a session.
    let (status, answer) = send_as(&f, A, Method::GET, "/v1/sessions/../x", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
}

#[tokio::test]
async fn only_an_admin_changes_the_policy() {
    let f = fixture();
    let set = Some(r#"{"set": ["memory.burst_step=64M"]}"#);
    for (method, uri, body) in [
        (Method::PATCH, "/v1/policy", set),
        (Method::PUT, "/v1/policy", Some(r#"{"text": ""}"#)),
        (Method::POST, "/v1/policy/rollback", Some("{}")),
    ] {
        let (status, answer) = send_as(&f, A, method.clone(), uri, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {answer}");
        assert_error(
            &answer,
            "forbidden",
            &["changing the policy needs an admin", "uid 1000"],
        );
    }
    let (status, _) = send_as(&f, A, Method::GET, "/v1/policy", None).await;
    assert_eq!(status, StatusCode::OK, "reading the policy is open");
}
