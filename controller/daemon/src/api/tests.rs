//! The API's error contract (docs/API.md, "Errors"): every refusal, whether the router,
//! an extractor or the controller makes it, is `{"error": {"code", "message"}}` with
//! the documented status. Driven through the real router with `oneshot`, over a
//! controller whose cgroupfs is a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt;

use agentcg_core::cgroup::CgroupError;
use agentcg_core::controller::{CONTROLLERS, ControlError, Controller, StartOptions};
use agentcg_core::events::{EventBody, EventBus};
use agentcg_core::history::HistoryError;
use agentcg_core::intent::IntentError;
use agentcg_core::plan::{PlanError, SessionRequest, plan_session};
use agentcg_core::policy::Policy;
use agentcg_core::probe::KernelFeatures;

use super::guard::{Peer, PeerCred};
use super::{ApiError, AppState, router};
use crate::status::Status;
use axum::extract::ConnectInfo;

/// A directory that looks like a cgroup to the controller: the interface files it
/// reads at start (on cgroupfs the kernel provides them).
pub(crate) fn fake_cgroup(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let controllers = CONTROLLERS.join(" ");
    std::fs::write(dir.join("cgroup.controllers"), &controllers).unwrap();
    std::fs::write(dir.join("cgroup.subtree_control"), &controllers).unwrap();
}

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// The controller's state directory (its history database).
    pub(super) state: PathBuf,
    pub(super) app: axum::Router,
    pub(super) events: Arc<EventBus>,
    /// The controller and the admission queue behind `app`.
    pub(super) shared: crate::supervisor::Shared,
    pub(super) queue: Arc<crate::queue::Queue>,
}

pub(super) fn fixture() -> Fixture {
    fixture_with_sessions(&[])
}

/// A fixture whose controller starts with these sessions (name, owner uid), as a
/// restarted daemon finds them (a fake cgroupfs cannot create a session's cgroups).
pub(super) fn fixture_with_sessions(sessions: &[(&str, u32)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cgroup/agentcg");
    fake_cgroup(root.parent().unwrap());
    fake_cgroup(&root);
    let state_dir = dir.path().join("state");
    let mut kept = serde_json::Map::new();
    for (name, owner) in sessions {
        for d in ["", "runtime", "calls"] {
            let dir = root.join(format!("session-{name}")).join(d);
            fake_cgroup(&dir);
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        }
        let req = SessionRequest {
            name: name.to_string(),
            ..SessionRequest::default()
        };
        let plan = plan_session(&Policy::default_policy(), &req).unwrap();
        kept.insert(
            name.to_string(),
            serde_json::json!({"plan": plan, "owner": owner}),
        );
    }
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(
        state_dir.join("sessions.json"),
        Value::Object(kept).to_string(),
    )
    .unwrap();
    let events = Arc::new(EventBus::in_memory());
    let (controller, _) = Controller::start(
        Policy::default_policy(),
        StartOptions {
            root: &root,
            state_dir: &state_dir,
            on_written: Arc::new(|_: &_, _| {}),
            events: events.clone(),
        },
    )
    .unwrap_or_else(|e| panic!("controller over {}: {e}", root.display()));
    let status = Status {
        version: "test",
        root: root.display().to_string(),
        kernel: KernelFeatures {
            kernel_release: "test".into(),
            controllers: CONTROLLERS.iter().map(|c| c.to_string()).collect(),
            sched_ext_state: None,
            psi: false,
            memory_reclaim: false,
            memory_peak: false,
            pids_peak: false,
            clone_into_cgroup: false,
        },
        btf: None,
        modes: Vec::new(),
        sched: Default::default(),
        memory: Default::default(),
    };
    let shared = Arc::new(Mutex::new(controller));
    let policy = Arc::new(crate::policy::PolicyStore::new(
        dir.path().join("policy.toml"),
        agentcg_core::policy::DEFAULT_POLICY.to_string(),
        "embedded default".into(),
        &state_dir,
        shared.clone(),
        events.clone(),
    ));
    let state = AppState::new(
        shared.clone(),
        status,
        Arc::new(crate::supervisor::Wakers::default()),
        events.clone(),
        policy,
        "agentcg-test-no-such-group",
    );
    Fixture {
        _dir: dir,
        root,
        state: state_dir,
        queue: state.queue(),
        app: router(state),
        events,
        shared,
    }
}

/// A request with `body` as JSON, if any.
pub(super) fn request(method: Method, uri: &str, body: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap()
}

/// Sends one request; returns the status, the `Allow` header and the body as JSON
/// (failing if it is not JSON).
pub(super) async fn send(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    answer(app, request(method, uri, body)).await
}

/// A request from uid `uid`, as the server marks each connection's requests.
pub(super) fn from_uid(mut req: Request<Body>, uid: u32) -> Request<Body> {
    req.extensions_mut().insert(ConnectInfo(PeerCred(Some(Peer {
        uid,
        gid: uid,
        pid: 1,
    }))));
    req
}

/// Sends one request (from root unless it says who it is from).
pub(super) async fn answer(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, Option<String>, Value) {
    let req = if req.extensions().get::<ConnectInfo<PeerCred>>().is_some() {
        req
    } else {
        from_uid(req, 0)
    };
    let what = format!("{} {}", req.method(), req.uri());
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let allow = res
        .headers()
        .get(header::ALLOW)
        .map(|v| v.to_str().unwrap().to_string());
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let body: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON ({e}): {text:?}"));
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "{what}: {text}"
    );
    (status, allow, body)
}

/// Asserts the documented error body: exactly `{"error": {"code", "message"}}`, with
/// this code and a message containing each of `needles`.
#[track_caller]
pub(super) fn assert_error(body: &Value, code: &str, needles: &[&str]) {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object in {body}"));
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    assert_eq!(error.len(), 2, "{body}");
    assert_eq!(error["code"], code, "{body}");
    let message = error["message"].as_str().unwrap();
    for needle in needles {
        assert!(message.contains(needle), "`{needle}` not in {body}");
    }
}

#[tokio::test]
async fn an_unknown_path_is_a_json_404() {
    let f = fixture();
    for uri in [
        "/",
        "/v1/nope",
        "/v1/calls/1/2/3",
        "/v2/status",
        "/v1/calls/1/finish/x",
    ] {
        let (status, _, body) = send(&f.app, Method::GET, uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
        assert_error(&body, "not_found", &["no such endpoint"]);
    }
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_with_allow() {
    let f = fixture();
    let cases = [
        (Method::DELETE, "/v1/calls", &["GET", "POST"][..]),
        (Method::PUT, "/v1/status", &["GET"]),
        (Method::GET, "/v1/calls/3/finish", &["POST"]),
        (Method::POST, "/v1/sessions/x", &["GET", "DELETE"]),
    ];
    for (method, uri, allowed) in cases {
        let (status, allow, body) = send(&f.app, method.clone(), uri, None).await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {body}"
        );
        assert_error(&body, "method_not_allowed", &[method.as_str()]);
        let allow = allow.unwrap_or_else(|| panic!("{method} {uri}: no Allow header"));
        for m in allowed {
            assert!(allow.contains(m), "{method} {uri}: Allow: {allow}");
        }
    }
}

#[tokio::test]
async fn a_bad_path_parameter_is_a_json_400() {
    let f = fixture();
    let (status, _, body) = send(&f.app, Method::GET, "/v1/calls/abc", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "bad_path", &["abc"]);
    let (status, _, body) = send(
        &f.app,
        Method::POST,
        "/v1/calls/-1/finish",
        Some(r#"{"exit": {"code": 0, "signal": null}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "bad_path", &["-1"]);
    let (status, _, body) = send(
        &f.app,
        Method::GET,
        "/v1/calls/99999999999999999999999",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "bad_path", &[]);
}

#[tokio::test]
async fn a_bad_query_is_a_json_400() {
    let f = fixture();
    let cases = [
        (Method::GET, "/v1/calls?limit=x", "limit"),
        (Method::GET, "/v1/calls?limit=-3", "limit"),
        (Method::GET, "/v1/calls?bogus=1", "bogus"),
        (Method::DELETE, "/v1/sessions/s?force=maybe", "force"),
        (Method::DELETE, "/v1/sessions/s?forse=true", "forse"),
    ];
    for (method, uri, needle) in cases {
        let (status, _, body) = send(&f.app, method.clone(), uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {body}");
        assert_error(&body, "bad_query", &[needle]);
    }
    // A good query still answers.
    let (status, _, body) = send(&f.app, Method::GET, "/v1/calls?limit=5", None).await;
    assert_eq!((status, body), (StatusCode::OK, Value::Array(Vec::new())));
}

#[tokio::test]
async fn a_malformed_body_is_a_json_400() {
    let f = fixture();
    for text in [
        r#"{"name":"#,
        "not json",
        "",
        r#"{"name": "a"} {"name": "b"}"#,
    ] {
        let (status, _, body) = send(&f.app, Method::POST, "/v1/sessions", Some(text)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text:?}: {body}");
        assert_error(&body, "bad_json", &[]);
    }
    // The wrong shape: a number where a list belongs.
    let (status, _, body) =
        send(&f.app, Method::POST, "/v1/calls", Some(r#"{"command": 5}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "bad_json", &["command"]);
    // No JSON content type.
    let req = Request::post("/v1/sessions")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"name": "a"}"#))
        .unwrap();
    let (status, _, body) = answer(&f.app, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "bad_json", &["application/json"]);
}

#[tokio::test]
async fn an_unknown_json_field_is_a_json_400() {
    let f = fixture();
    let cases = [
        ("/v1/sessions", r#"{"name": "a", "bogus": 1}"#, "bogus"),
        (
            "/v1/calls",
            r#"{"command": ["true"], "intnet": "mem=1G"}"#,
            "intnet",
        ),
        ("/v1/sessions/a/runtime", r#"{"pid": 1, "uid": 0}"#, "uid"),
        // ExitInfo refuses unknown fields too: a misspelt `signal` is not a clean exit.
        (
            "/v1/calls/1/finish",
            r#"{"exit": {"code": 0, "sig": 9}}"#,
            "sig",
        ),
    ];
    for (uri, text, field) in cases {
        let (status, _, body) = send(&f.app, Method::POST, uri, Some(text)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {text}: {body}");
        assert_error(&body, "bad_json", &["unknown field", field]);
    }
}

#[tokio::test]
async fn a_duplicate_json_key_is_a_json_400_and_nothing_happens() {
    let f = fixture();
    let cases = [
        (
            "/v1/calls",
            r#"{"command": ["true"], "intent": {"mem": "64M", "mem": "8G"}}"#,
            "intent.mem",
        ),
        ("/v1/sessions", r#"{"name": "a", "name": "b"}"#, "name"),
        (
            "/v1/calls/1/finish",
            r#"{"exit": {"code": 0, "code": 1}}"#,
            "code",
        ),
    ];
    for (uri, text, key) in cases {
        let (status, _, body) = send(&f.app, Method::POST, uri, Some(text)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {text}: {body}");
        assert_error(&body, "bad_json", &[key]);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("twice") || message.contains("duplicate"),
            "{body}"
        );
    }
    // Refused before the controller saw it: no call was declared, no session made.
    assert!(!f.root.join("session-default").exists());
    assert!(!f.root.join("session-a").exists());
    let (_, _, calls) = send(&f.app, Method::GET, "/v1/calls", None).await;
    assert_eq!(calls, Value::Array(Vec::new()));
}

#[tokio::test]
async fn controller_errors_keep_their_json_body() {
    let f = fixture();
    let (status, _, body) = send(&f.app, Method::GET, "/v1/calls/12345", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "no_such_call", &["12345"]);
    let (status, _, body) = send(&f.app, Method::GET, "/v1/sessions/ghost", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "no_such_session", &["ghost"]);
    let (status, _, body) = send(
        &f.app,
        Method::POST,
        "/v1/calls",
        Some(r#"{"command": ["true"], "intent": "cpu=0.0001"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "bad_intent", &["cpu=0.0001", "millicpu"]);
}

#[test]
fn control_errors_map_to_their_documented_status() {
    let io = || std::io::Error::from_raw_os_error(libc::EACCES);
    let cases: Vec<(ControlError, StatusCode, &str)> = vec![
        (
            IntentError::Empty.into(),
            StatusCode::BAD_REQUEST,
            "bad_intent",
        ),
        (
            PlanError::NoRoom("full".into()).into(),
            StatusCode::TOO_MANY_REQUESTS,
            "no_room",
        ),
        (
            PlanError::BadSessionName("a/b".into()).into(),
            StatusCode::BAD_REQUEST,
            "bad_session",
        ),
        (
            CgroupError::Io {
                op: "write",
                path: "/sys/fs/cgroup/x/memory.max".into(),
                value: Some("1".into()),
                source: io(),
            }
            .into(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "cgroup_error",
        ),
        (
            HistoryError::Io {
                op: "appending to",
                path: "/var/lib/agentcg/history.db".into(),
                source: io(),
            }
            .into(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "state_error",
        ),
        (
            ControlError::State {
                path: "/var/lib/agentcg/sessions.json".into(),
                reason: "read-only".into(),
            },
            StatusCode::INTERNAL_SERVER_ERROR,
            "state_error",
        ),
        (
            ControlError::NoSession("s".into()),
            StatusCode::NOT_FOUND,
            "no_such_session",
        ),
        (
            ControlError::NoCall(7),
            StatusCode::NOT_FOUND,
            "no_such_call",
        ),
        (
            ControlError::SessionExists("s".into()),
            StatusCode::CONFLICT,
            "session_exists",
        ),
        (
            ControlError::SessionClosing("s".into()),
            StatusCode::CONFLICT,
            "session_closing",
        ),
        (
            ControlError::RuntimeAlive {
                name: "s".into(),
                count: 2,
            },
            StatusCode::CONFLICT,
            "runtime_alive",
        ),
        (
            ControlError::BadRequest {
                what: "command".into(),
                reason: "empty".into(),
            },
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (e, status, code) in cases {
        let message = e.to_string();
        let api = ApiError::from(e);
        assert_eq!((api.status, api.code), (status, code), "{message}");
        assert_eq!(api.message, message);
    }
}

#[tokio::test]
async fn bad_event_queries_are_json_errors_that_name_the_parameter() {
    let f = fixture();
    let cases = [
        (
            "/v1/events?since=abc",
            StatusCode::BAD_REQUEST,
            "bad_query",
            "since",
        ),
        (
            "/v1/events?since=-1",
            StatusCode::BAD_REQUEST,
            "bad_query",
            "since",
        ),
        (
            "/v1/events?follow=maybe",
            StatusCode::BAD_REQUEST,
            "bad_query",
            "follow",
        ),
        (
            "/v1/events?session=a%2Fb",
            StatusCode::BAD_REQUEST,
            "bad_query",
            "session",
        ),
        (
            "/v1/events?sesion=x",
            StatusCode::BAD_REQUEST,
            "bad_query",
            "sesion",
        ),
        (
            "/v1/events?session=nobody",
            StatusCode::NOT_FOUND,
            "no_such_session",
            "nobody",
        ),
    ];
    for (uri, status, code, needle) in cases {
        let (got, _, body) = send(&f.app, Method::GET, uri, None).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert_error(&body, code, &[needle]);
    }
    assert_eq!(
        f.events.status().subscribers,
        0,
        "no refused query subscribed"
    );
}

#[tokio::test]
async fn a_replay_without_follow_is_the_kept_events_as_ndjson_then_ends() {
    let f = fixture();
    for s in ["a", "b", "a"] {
        f.events.publish(EventBody::SessionClosed {
            session: s.into(),
            forced: false,
        });
    }
    let req = Request::builder()
        .uri("/v1/events?since=1&session=a&follow=false")
        .body(Body::empty())
        .unwrap();
    let res = f.app.clone().oneshot(from_uid(req, 0)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE].to_str().unwrap(),
        "application/x-ndjson"
    );
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let lines: Vec<Value> = String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["seq"], 3);
    assert_eq!(lines[0]["type"], "session_closed");
    assert_eq!(lines[0]["session"], "a");
}

#[tokio::test]
async fn the_running_view_is_a_list_and_refuses_an_unknown_session() {
    let f = fixture();
    let (status, _, body) = send(&f.app, Method::GET, "/v1/running", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, serde_json::json!([]));
    let (status, _, body) = send(&f.app, Method::GET, "/v1/running?session=nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "no_such_session", &["nope"]);
}
