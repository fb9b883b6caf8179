//! `GET /v1/history` and `/v1/history/stats` through the real router, over a history
//! database with rows written the way the writer writes them.

use axum::http::{Method, StatusCode};
use serde_json::Value;

use agentcg_core::history::{HISTORY_DB, schema};
use agentcg_core::intent::{Intent, Priority};
use agentcg_core::plan::CallLimits;
use agentcg_core::record::{Accounting, CallRecord, ExitInfo, Outcome};

use super::super::tests::{Fixture, assert_error, fixture, send};

/// A finished call's record.
fn record(id: u64, session: &str, class: Option<&str>, outcome: Outcome, peak: u64) -> CallRecord {
    let mut accounting = Accounting {
        memory_peak: Some(peak),
        ..Accounting::default()
    };
    accounting.cpu.usage_usec = 2000 * id;
    CallRecord {
        call_id: id,
        session: session.into(),
        tool_use_id: None,
        command: vec!["true".into()],
        intent: Intent::default(),
        limits: CallLimits {
            memory_expected: 1,
            memory_high: None,
            memory_max: 2,
            cpu_weight: 100,
            millicpus: None,
            pids_max: 8,
            timeout_ms: 1000,
            cpu_budget_ms: None,
            priority: Priority::Normal,
            class: class.map(str::to_string),
            oom_score_adj: 0,
        },
        clamps: vec![],
        cgroup: "/x".into(),
        started_unix_ms: 1000 * id,
        duration_ms: 10 * id,
        exit: ExitInfo {
            code: Some(0),
            signal: None,
        },
        outcome,
        accounting,
        leftover_killed: 0,
        processes: None,
        feedback: None,
        memory_actions: vec![],
        admission: None,
    }
}

fn fill(f: &Fixture) -> Vec<CallRecord> {
    let conn = schema::open(&f.state.join(HISTORY_DB)).unwrap();
    let recs = vec![
        record(1, "a", Some("test"), Outcome::Ok, 100),
        record(2, "b", Some("test"), Outcome::OomKilled, 300),
        record(3, "a", None, Outcome::Failed, 200),
    ];
    for r in &recs {
        schema::insert(&conn, r, &serde_json::to_string(r).unwrap()).unwrap();
    }
    recs
}

fn ids(body: &Value) -> Vec<u64> {
    body["calls"]
        .as_array()
        .unwrap_or_else(|| panic!("no calls list: {body}"))
        .iter()
        .map(|r| r["call_id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn history_lists_whole_records_newest_first_with_filters() {
    let f = fixture();
    let (status, _, body) = send(&f.app, Method::GET, "/v1/history", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({"calls": []}))
    );
    let recs = fill(&f);
    let (status, _, body) = send(&f.app, Method::GET, "/v1/history", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), vec![3, 2, 1]);
    let back: CallRecord = serde_json::from_value(body["calls"][1].clone()).unwrap();
    assert_eq!(back, recs[1], "the whole record");
    let cases = [
        ("/v1/history?session=a", vec![3, 1]),
        ("/v1/history?class=test", vec![2, 1]),
        ("/v1/history?outcome=oom_killed", vec![2]),
        ("/v1/history?since=2000", vec![3, 2]),
        ("/v1/history?limit=1", vec![3]),
        (
            "/v1/history?session=a&class=test&since=1000&limit=10000",
            vec![1],
        ),
    ];
    for (uri, want) in cases {
        let (status, _, body) = send(&f.app, Method::GET, uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert_eq!(ids(&body), want, "{uri}");
    }
}

#[tokio::test]
async fn bad_history_parameters_are_400s_naming_them() {
    let f = fixture();
    let cases = [
        ("/v1/history?since=yesterday", "since"),
        ("/v1/history?since=-5", "since"),
        ("/v1/history?outcome=exploded", "outcome"),
        ("/v1/history?limit=0", "limit"),
        ("/v1/history?limit=10001", "limit"),
        ("/v1/history?limit=99999999999999999999999", "limit"),
        ("/v1/history?session=../x", "session"),
        ("/v1/history?sesion=a", "sesion"),
        ("/v1/history/stats?klass=x", "klass"),
    ];
    for (uri, param) in cases {
        let (status, _, body) = send(&f.app, Method::GET, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_error(&body, "bad_query", &[param]);
    }
    let (_, _, body) = send(&f.app, Method::GET, "/v1/history?outcome=x", None).await;
    assert_error(&body, "bad_query", &["oom_killed", "abandoned"]);
}

#[tokio::test]
async fn history_stats_per_class_and_for_one() {
    let f = fixture();
    fill(&f);
    let (status, _, body) = send(&f.app, Method::GET, "/v1/history/stats", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let classes = body["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 2, "{body}");
    assert_eq!(classes[0]["class"], Value::Null);
    let test = &classes[1];
    assert_eq!(test["class"], "test");
    assert_eq!(test["count"], 2);
    assert_eq!(test["oom_rate"], 0.5);
    assert_eq!(
        test["memory_peak_bytes"],
        serde_json::json!({"p50": 100, "p95": 300, "max": 300})
    );
    assert_eq!(
        test["duration_ms"],
        serde_json::json!({"p50": 10, "p95": 20, "max": 20})
    );
    assert_eq!(
        test["cpu_ms"],
        serde_json::json!({"p50": 2, "p95": 4, "max": 4})
    );
    let (status, _, body) = send(&f.app, Method::GET, "/v1/history/stats?class=test", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["classes"].as_array().unwrap(), &vec![test.clone()]);
}

#[tokio::test]
async fn a_broken_database_is_a_json_500() {
    let f = fixture();
    let conn = schema::open(&f.state.join(HISTORY_DB)).unwrap();
    conn.execute(
        "INSERT INTO calls (call_id, session, outcome, priority, started_unix_ms,
             ended_unix_ms, duration_ms, cpu_usec, record)
         VALUES (4, 's', 'ok', 'normal', 0, 0, 0, 0, 'not json')",
        [],
    )
    .unwrap();
    let (status, _, body) = send(&f.app, Method::GET, "/v1/history", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_error(&body, "state_error", &["call 4", HISTORY_DB]);
}

#[tokio::test]
async fn a_call_older_than_the_kept_records_is_read_from_the_database() {
    // Rows written after the start are not in the in-memory index (agentcgd keeps only
    // the newest KEEP_IN_MEMORY records there, to bound its RSS).
    let f = fixture();
    let recs = fill(&f);
    let (status, _, body) = send(&f.app, Method::GET, "/v1/calls/2", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, serde_json::to_value(&recs[1]).unwrap());
    let (status, _, body) = send(&f.app, Method::GET, "/v1/calls/99", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "no_such_call", &["no call 99"]);
}
