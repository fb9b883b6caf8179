//! `/v1/policy` over the router: show, check, replace, set, history, rollback, and
//! bad input that leaves the policy in force untouched.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::api::tests::{fixture, send};
use agentcg_core::policy::DEFAULT_POLICY;

async fn hash(app: &axum::Router) -> String {
    let (_, _, v) = send(app, Method::GET, "/v1/policy", None).await;
    v["hash"].as_str().unwrap().to_string()
}

fn body(v: Value) -> String {
    v.to_string()
}

#[tokio::test]
async fn policy_changes_are_validated_swapped_kept_and_rolled_back() {
    let f = fixture();
    let app = &f.app;
    let first = hash(app).await;
    let (status, _, v) = send(app, Method::GET, "/v1/policy?effective=true", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(v["text"].as_str().unwrap().contains("pressure_at = 85"));

    let new = DEFAULT_POLICY.replace("pressure_at = 85", "pressure_at = 80");
    let (status, _, v) = send(
        app,
        Method::POST,
        "/v1/policy/check",
        Some(&body(json!({"text": new}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["ok"], true);
    assert_eq!(v["changes"][0]["key"], "memory.pressure_at");
    assert_eq!(
        v["changes"][0]["restart"], false,
        "the watermark follows a reload"
    );
    assert_eq!(hash(app).await, first, "check changes nothing");

    let (status, _, v) = send(
        app,
        Method::PUT,
        "/v1/policy",
        Some(&body(json!({"text": new}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["restart_needed"], json!([]));
    let second = hash(app).await;
    assert_ne!(second, first);

    let (status, _, v) = send(
        app,
        Method::PATCH,
        "/v1/policy",
        Some(&body(json!({"set": ["session.pids=77"]}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["changes"], json!(["session.pids: 4096 -> 77"]));

    let (_, _, v) = send(app, Method::GET, "/v1/policy/history", None).await;
    assert_eq!(v["versions"].as_array().unwrap().len(), 3);
    assert_eq!(v["versions"][2]["hash"], first);

    let (status, _, _) = send(
        app,
        Method::POST,
        "/v1/policy/rollback",
        Some(&body(json!({"back": 2}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hash(app).await, first);
    let (_, _, v) = send(app, Method::GET, "/v1/status", None).await;
    assert_eq!(v["policy"]["hash"], first);
    assert_eq!(v["policy"]["last_reload"]["ok"], true);
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let f = fixture();
    let app = &f.app;
    let before = hash(app).await;
    let invalid = "[memory]\npressure_at = 800\n[sesion]\n";
    let (status, _, v) = send(
        app,
        Method::PUT,
        "/v1/policy",
        Some(&body(json!({"text": invalid}))),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["code"], "invalid_policy");
    assert_eq!(v["error"]["problems"].as_array().unwrap().len(), 2);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("request:2:15: memory.pressure_at:"),
        "{v}"
    );
    let (_, _, s) = send(app, Method::GET, "/v1/status", None).await;
    assert_eq!(s["policy"]["last_reload"]["ok"], false);

    for (set, code) in [
        ("memory.nope=1", "bad_key"),
        ("no_equals", "bad_key"),
        ("class.ghost.intent=mem=1G", "bad_key"),
        ("session.pids=lots", "invalid_policy"),
    ] {
        let (status, _, v) = send(
            app,
            Method::PATCH,
            "/v1/policy",
            Some(&body(json!({"set": [set]}))),
        )
        .await;
        assert!(status.is_client_error(), "{set}: {status}");
        assert_eq!(v["error"]["code"], code, "{set}: {v}");
    }
    let (status, _, v) = send(
        app,
        Method::POST,
        "/v1/policy/rollback",
        Some(&body(json!({"back": 5}))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    let huge = "#".repeat(10 << 20);
    let (status, _, v) = send(
        app,
        Method::PUT,
        "/v1/policy",
        Some(&body(json!({"text": huge}))),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "too_large");
    let big = "#".repeat(1_500_000);
    let (status, _, _) = send(
        app,
        Method::POST,
        "/v1/policy/check",
        Some(&body(json!({"text": big}))),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _, v) = send(app, Method::PUT, "/v1/policy", Some("\u{1}\u{2}garbage")).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_json"))
    );
    assert_eq!(hash(app).await, before, "the policy in force is untouched");
}
