//! The metrics without a kernel: events fed to the observer and counted exactly, the
//! exposition parsed back, content negotiation, and the session collector over fake
//! cgroup files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use agentcg_core::events::{EventBody, EventBus};
use agentcg_core::intent::{Intent, Priority};
use agentcg_core::plan::{CallLimits, Clamp};
use agentcg_core::record::{Accounting, CallRecord, ExitInfo, Outcome};
use axum::body::Body;
use axum::http::{Request, header};
use tower::ServiceExt as _;

use super::kernel::KernelSources;
use super::serve::{Format, OPENMETRICS, TEXT, encode, negotiate, router};
use super::sessions::{PsiTotals, SessionRow, SessionSource, parse_psi};
use super::*;

/// A fixed list of sessions that a test can change between scrapes.
#[derive(Debug, Default, Clone)]
struct FakeSessions(Arc<Mutex<Vec<SessionRow>>>);

impl SessionSource for FakeSessions {
    fn sessions(&self) -> Vec<SessionRow> {
        self.0.lock().expect("fake sessions").clone()
    }
}

fn record(call_id: u64, class: Option<&str>, outcome: Outcome, priority: Priority) -> CallRecord {
    let mut accounting = Accounting {
        memory_peak: Some(3 << 20),
        ..Accounting::default()
    };
    accounting.cpu.usage_usec = 20_000;
    CallRecord {
        call_id,
        session: "default".into(),
        tool_use_id: None,
        command: vec!["true".into()],
        intent: Intent::default(),
        limits: CallLimits {
            memory_expected: 1 << 20,
            memory_high: None,
            memory_max: 1 << 30,
            cpu_weight: 100,
            millicpus: None,
            pids_max: 64,
            timeout_ms: 60_000,
            cpu_budget_ms: None,
            priority,
            class: class.map(str::to_string),
            oom_score_adj: 0,
        },
        clamps: Vec::new(),
        cgroup: String::new(),
        started_unix_ms: 0,
        duration_ms: 5,
        exit: ExitInfo::default(),
        outcome,
        accounting,
        leftover_killed: 0,
        processes: None,
        feedback: None,
        memory_actions: Vec::new(),
        admission: None,
    }
}

fn finished(r: CallRecord) -> EventBody {
    EventBody::CallFinished {
        record: Box::new(r),
    }
}

/// A registry over an in-memory bus with the observer on it, fake sessions and no BPF.
fn setup() -> (Arc<EventBus>, Registry, FakeSessions) {
    let bus = Arc::new(EventBus::in_memory());
    let counters = Arc::new(Counters::default());
    counters.observe(&bus);
    let sessions = FakeSessions::default();
    let reg = registry(
        &counters,
        Box::new(sessions.clone()),
        KernelSources {
            telemetry: None,
            memory: None,
            sched: Arc::default(),
            bus: bus.clone(),
        },
    );
    (bus, reg, sessions)
}

/// The samples of a text exposition: `name{labels}` (as written) to value, without
/// exemplars; panics on a line that is neither a comment nor `series value`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let l = l.split(" # ").next().unwrap_or(l);
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            let value = value.parse().unwrap_or_else(|e| panic!("{l:?}: {e}"));
            (series.to_string(), value)
        })
        .collect()
}

fn scrape(reg: &Registry, format: Format) -> (String, BTreeMap<String, f64>) {
    let text = encode(reg, format).expect("encode");
    let s = samples(&text);
    (text, s)
}

#[test]
fn every_finished_call_is_counted_once_by_class_outcome_and_priority() {
    let (bus, reg, _) = setup();
    bus.publish(finished(record(
        1,
        Some("test"),
        Outcome::Ok,
        Priority::Normal,
    )));
    bus.publish(finished(record(
        2,
        Some("test"),
        Outcome::Ok,
        Priority::Normal,
    )));
    bus.publish(finished(record(
        3,
        Some("test"),
        Outcome::Failed,
        Priority::Normal,
    )));
    bus.publish(finished(record(
        4,
        None,
        Outcome::OomKilled,
        Priority::High,
    )));
    let (_, s) = scrape(&reg, Format::Text);
    let calls = |l: &str| s.get(&format!("agentcg_calls_total{{{l}}}")).copied();
    assert_eq!(
        calls(r#"class="test",outcome="ok",priority="normal""#),
        Some(2.0)
    );
    assert_eq!(
        calls(r#"class="test",outcome="failed",priority="normal""#),
        Some(1.0)
    );
    assert_eq!(
        calls(r#"class="none",outcome="oom_killed",priority="high""#),
        Some(1.0)
    );
    assert_eq!(
        s.get(r#"agentcg_oom_kills_total{priority="high"}"#),
        Some(&1.0)
    );
    assert_eq!(
        s.get(r#"agentcg_call_duration_seconds_count{class="test"}"#),
        Some(&3.0)
    );
    // 5 ms falls in the first bucket.
    assert_eq!(
        s.get(r#"agentcg_call_duration_seconds_bucket{class="test",le="0.005"}"#),
        Some(&3.0)
    );
    assert_eq!(
        s.get(r#"agentcg_call_memory_peak_bytes_sum{class="none"}"#),
        Some(&f64::from(3u32 << 20))
    );
    let cpu = s[r#"agentcg_call_cpu_seconds_sum{class="test"}"#];
    assert!((cpu - 0.06).abs() < 1e-9, "{cpu}");
    assert_eq!(
        s.get(r#"agentcg_events_total{type="call_finished"}"#),
        Some(&4.0)
    );
    assert_eq!(s.get(r#"agentcg_build_info{version="0.1.0"}"#), Some(&1.0));
}

#[test]
fn rejections_clamps_memory_steps_and_policy_reloads_are_counted() {
    let (bus, reg, _) = setup();
    for reason in ["bad_intent", "bad_intent", "no_room"] {
        bus.publish(EventBody::CallRejected {
            session: "s".into(),
            reason: reason.into(),
            message: String::new(),
        });
    }
    let clamp = |field: &str| Clamp {
        field: field.into(),
        requested: "2G".into(),
        granted: "1G".into(),
        reason: "policy".into(),
    };
    bus.publish(EventBody::CallDeclared {
        call_id: 9,
        session: "s".into(),
        class: None,
        priority: Priority::Low,
        command: vec!["x".into()],
        limits: record(9, None, Outcome::Ok, Priority::Low).limits,
        clamps: vec![clamp("mem.max"), clamp("cpu")],
    });
    for action in ["throttle", "kill"] {
        bus.publish(EventBody::MemoryStep {
            call_id: Some(9),
            session: None,
            action: action.into(),
            reason: String::new(),
            detail: String::new(),
            usage_bytes: None,
            limit_bytes: None,
        });
    }
    bus.publish(EventBody::CpuBudgetExceeded {
        call_id: 9,
        session: "s".into(),
        budget_ms: 1,
        used_ms: 2,
    });
    bus.publish(EventBody::SchedulerFallback { reason: "x".into() });
    let (_, s) = scrape(&reg, Format::Text);
    assert_eq!(s["agentcg_policy_last_reload_successful"], 1.0);
    bus.publish(EventBody::PolicyReloaded {
        source: "file".into(),
        ok: false,
        error: Some("bad".into()),
        hash: None,
    });
    let (_, s) = scrape(&reg, Format::Text);
    for (series, want) in [
        (
            r#"agentcg_intents_rejected_total{reason="bad_intent"}"#,
            2.0,
        ),
        (r#"agentcg_intents_rejected_total{reason="no_room"}"#, 1.0),
        (r#"agentcg_clamps_total{field="mem.max"}"#, 1.0),
        (r#"agentcg_clamps_total{field="cpu"}"#, 1.0),
        (r#"agentcg_memory_actions_total{action="throttle"}"#, 1.0),
        (r#"agentcg_memory_actions_total{action="kill"}"#, 1.0),
        ("agentcg_cpu_budget_exceeded_total", 1.0),
        ("agentcg_scheduler_fallbacks_total", 1.0),
        ("agentcg_scheduler_exits_total", 0.0),
        (r#"agentcg_policy_reloads_total{result="error"}"#, 1.0),
        ("agentcg_policy_last_reload_successful", 0.0),
    ] {
        assert_eq!(s.get(series), Some(&want), "{series}");
    }
}

#[test]
fn classes_beyond_the_bound_share_one_label() {
    let mut seen = BTreeSet::new();
    for i in 0..MAX_CLASSES {
        assert_eq!(
            class_label(&mut seen, Some(&format!("c{i}"))),
            format!("c{i}")
        );
    }
    assert_eq!(class_label(&mut seen, Some("late")), "other");
    assert_eq!(class_label(&mut seen, Some("c0")), "c0");
    assert_eq!(class_label(&mut seen, None), "none");
}

#[test]
fn exemplars_name_the_call_in_openmetrics_only() {
    let (bus, reg, _) = setup();
    bus.publish(finished(record(
        77,
        Some("build"),
        Outcome::Ok,
        Priority::Normal,
    )));
    let (om, _) = scrape(&reg, Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"), "{om}");
    let line = om
        .lines()
        .find(|l| l.starts_with("agentcg_call_duration_seconds_bucket{le=\"0.005\""))
        .unwrap_or_else(|| panic!("{om}"));
    assert!(line.contains(r#" # {call_id="77"} 0.005"#), "{line}");
    let (text, _) = scrape(&reg, Format::Text);
    assert!(!text.contains("call_id"), "{text}");
    assert!(!text.contains("# EOF"), "{text}");
}

#[test]
fn negotiation_follows_the_accept_header() {
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(negotiate(prometheus), Format::OpenMetrics);
    assert_eq!(
        negotiate("application/openmetrics-text"),
        Format::OpenMetrics
    );
    assert_eq!(negotiate(""), Format::Text);
    assert_eq!(negotiate("*/*"), Format::Text);
    assert_eq!(negotiate("text/plain;version=0.0.4"), Format::Text);
    assert_eq!(
        negotiate("application/openmetrics-text; version=0.0.1"),
        Format::Text
    );
    assert_eq!(
        negotiate("text/plain, application/openmetrics-text;q=0.5"),
        Format::Text
    );
    assert_eq!(
        negotiate("application/openmetrics-text;q=0, text/plain;q=0.1"),
        Format::Text
    );
}

#[tokio::test]
async fn the_endpoint_answers_in_the_negotiated_format() {
    let (_, reg, _) = setup();
    let health = Arc::new(crate::health::Health::new(std::time::Duration::from_secs(
        5,
    )));
    let app = router(Arc::new(reg), health);
    for (accept, ct, eof) in [
        (
            "application/openmetrics-text; version=1.0.0",
            OPENMETRICS,
            true,
        ),
        ("text/plain", TEXT, false),
    ] {
        let resp = app
            .clone()
            .oneshot(
                Request::get("/metrics")
                    .header(header::ACCEPT, accept)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], ct);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let body = String::from_utf8(body.to_vec()).expect("utf-8");
        assert_eq!(body.ends_with("# EOF\n"), eof, "{body}");
        assert!(body.contains("process_cpu_seconds_total "), "{body}");
        assert!(
            body.contains("agentcg_scheduler_state{state=\"kernel\"} 0"),
            "{body}"
        );
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(file), text).expect("write");
}

/// A session cgroup as the kernel shows it, under `root`.
fn fake_session(root: &Path, name: &str, calls_running: usize) -> SessionRow {
    let dir = root.join(format!("session-{name}"));
    let runtime_dir = dir.join("runtime");
    write(&dir, "memory.current", "1048576\n");
    write(&dir, "memory.max", "4294967296\n");
    write(
        &dir,
        "cpu.stat",
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
    );
    write(
        &dir,
        "memory.pressure",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=250000\n",
    );
    write(&runtime_dir, "memory.current", "524288\n");
    SessionRow {
        name: name.into(),
        calls_running,
        runtime_reserve: 268_435_456,
        dir,
        runtime_dir,
    }
}

#[test]
fn session_series_are_read_at_scrape_time_and_go_with_the_session() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, reg, sessions) = setup();
    let a = fake_session(tmp.path(), "a", 2);
    let mut b = fake_session(tmp.path(), "b", 0);
    write(&b.dir, "memory.max", "max\n");
    std::fs::remove_file(b.dir.join("memory.pressure")).expect("rm");
    b.runtime_dir = tmp.path().join("gone");
    *sessions.0.lock().expect("lock") = vec![a.clone(), b];
    let (_, s) = scrape(&reg, Format::Text);
    for (series, want) in [
        (r#"agentcg_session_memory_bytes{session="a"}"#, 1048576.0),
        (
            r#"agentcg_session_memory_limit_bytes{session="a"}"#,
            4294967296.0,
        ),
        (r#"agentcg_session_cpu_seconds_total{session="a"}"#, 2.5),
        (r#"agentcg_session_calls_running{session="a"}"#, 2.0),
        (
            r#"agentcg_session_memory_pressure_seconds_total{session="a",kind="some"}"#,
            1.5,
        ),
        (
            r#"agentcg_session_memory_pressure_seconds_total{session="a",kind="full"}"#,
            0.25,
        ),
        (
            r#"agentcg_session_runtime_memory_bytes{session="a"}"#,
            524288.0,
        ),
        (
            r#"agentcg_session_runtime_reserve_bytes{session="a"}"#,
            268435456.0,
        ),
        (r#"agentcg_session_memory_bytes{session="b"}"#, 1048576.0),
        (r#"agentcg_session_calls_running{session="b"}"#, 0.0),
    ] {
        assert_eq!(s.get(series), Some(&want), "{series}");
    }
    // What b's files do not say is left out rather than made up.
    assert!(!s.contains_key(r#"agentcg_session_memory_limit_bytes{session="b"}"#));
    assert!(!s.contains_key(r#"agentcg_session_runtime_memory_bytes{session="b"}"#));
    assert!(
        !s.keys()
            .any(|k| k.contains("pressure") && k.contains("\"b\""))
    );

    *sessions.0.lock().expect("lock") = vec![a];
    let (_, s) = scrape(&reg, Format::Text);
    assert!(!s.keys().any(|k| k.contains("session=\"b\"")), "{s:?}");
    assert!(s.contains_key(r#"agentcg_session_memory_bytes{session="a"}"#));
}

#[test]
fn psi_totals_parse_and_a_bad_file_names_itself() {
    let p = Path::new("/cg/memory.pressure");
    let text = "some avg10=1.00 avg60=0.50 avg300=0.10 total=42\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n";
    assert_eq!(
        parse_psi(p, text),
        Ok(PsiTotals {
            some_usec: 42,
            full_usec: 7
        })
    );
    let err = parse_psi(p, "some avg10=1.00 total=42\n").expect_err("no full line");
    assert_eq!(err.line, "full");
    assert!(err.to_string().contains("/cg/memory.pressure"), "{err}");
}

#[test]
fn process_figures_are_converted_to_seconds_and_bytes() {
    let raw = process::Raw {
        utime_ticks: 150,
        stime_ticks: 50,
        start_ticks: 1000,
        rss_pages: 10,
        vsize: 1 << 20,
        ticks_per_second: 100,
        page_size: 4096,
        boot_time_secs: 1_700_000_000,
    };
    let p = process::convert(raw, 12, Some(1024));
    assert_eq!(p.cpu_seconds, 2.0);
    assert_eq!(p.resident_bytes, 40960);
    assert_eq!(p.start_time_seconds, 1_700_000_010.0);
    assert_eq!((p.open_fds, p.max_fds), (12, Some(1024)));
    let live = process::read().expect("/proc/self");
    assert!(live.open_fds > 0 && live.resident_bytes > 0, "{live:?}");
}
