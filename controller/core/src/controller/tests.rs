//! The controller against a temporary directory standing in for cgroupfs: a tree as a
//! killed daemon leaves it (sessions, call cgroups, state files), taken over by a new
//! one. What needs the kernel (mkdir making interface files, processes) is tested in
//! the VM (tests/tests/lifecycle.rs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::{ID_BLOCK, RunningState, RunningStore};
use super::*;
use crate::plan::{self, SessionRequest};
use crate::record::Outcome;
use crate::testutil::limits;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A cgroup directory with the interface files the controller reads.
fn fake_cgroup(dir: &Path) {
    for (file, text) in [
        ("cgroup.controllers", "cpu memory pids\n"),
        ("cgroup.subtree_control", "cpu memory pids\n"),
        ("cgroup.procs", ""),
        ("cgroup.events", "populated 0\nfrozen 0\n"),
        ("memory.current", "4096\n"),
        ("memory.peak", "8192\n"),
        ("memory.max", "max\n"),
        (
            "memory.events",
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        ),
        (
            "memory.events.local",
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        ),
        (
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        ),
        ("pids.peak", "3\n"),
        ("pids.events", "max 0\n"),
    ] {
        write(&dir.join(file), text);
    }
}

fn running_state(id: u64, session: &str) -> RunningState {
    RunningState {
        call_id: id,
        tool_use_id: None,
        session: session.into(),
        command: vec!["pytest".into()],
        intent: Default::default(),
        limits: limits(),
        clamps: vec![],
        suggestion: "run fewer tests".into(),
        started_unix_ms: unix_ms() - 2_000,
        client_token: Some(format!("tok-{id}")),
        timed_out: false,
        budget_exceeded: false,
        pressure_killed: false,
        memory_actions: vec![],
        ended: None,
    }
}

/// What a daemon killed with calls 5 (running) and 7 (its cgroup since removed)
/// leaves, plus call-000009 (declared, never granted: no state file).
fn killed_daemon_tree() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("cg");
    let root = parent.join("agentcg");
    let state = dir.path().join("state");
    fake_cgroup(&parent);
    fake_cgroup(&root);
    let session = root.join("session-s");
    for d in [
        "",
        "runtime",
        "calls",
        "calls/call-000005",
        "calls/call-000009",
    ] {
        fake_cgroup(&session.join(d));
    }
    let plan = plan::plan_session(
        &Policy::default_policy(),
        &SessionRequest {
            name: "s".into(),
            ..SessionRequest::default()
        },
    )
    .unwrap();
    let sessions = BTreeMap::from([(
        "s".to_string(),
        SessionState {
            plan,
            calls_finished: 4,
            owner: 1000,
            request: None,
        },
    )]);
    write(
        &state.join(SESSIONS_FILE),
        &serde_json::to_string(&sessions).unwrap(),
    );
    let store = RunningStore::open(&state).unwrap();
    store.save(&running_state(5, "s")).unwrap();
    store.save(&running_state(7, "s")).unwrap();
    write(&state.join(state::IDS_FILE), "3\n");
    Fixture {
        _dir: dir,
        root,
        state,
    }
}

fn start(f: &Fixture) -> (Controller, AdoptReport) {
    Controller::start(
        Policy::default_policy(),
        StartOptions {
            root: &f.root,
            state_dir: &f.state,
            on_written: Arc::new(|_: &_, _| {}),
            events: Arc::new(crate::events::EventBus::in_memory()),
        },
    )
    .unwrap()
}

fn wait_durable(c: &Controller, id: u64) {
    let t = Instant::now();
    while c.durability(id) != Durability::Durable {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "record {id} never durable"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_restarted_controller_readopts_records_the_lost_and_kills_orphans() {
    let f = killed_daemon_tree();
    let (c, report) = start(&f);
    assert_eq!(report.adopted, vec![5]);
    assert_eq!(
        report.already_exited,
        vec![5],
        "no process: the tool is gone"
    );
    assert_eq!(report.lost, vec![7]);
    assert_eq!(report.orphans.len(), 1);
    assert!(report.orphans[0].ends_with("call-000009"), "{report:?}");
    let orphan = f.root.join("session-s/calls/call-000009");
    assert_eq!(
        std::fs::read_to_string(orphan.join("cgroup.kill")).unwrap(),
        "1",
        "an orphan is killed before it is removed"
    );
    assert!(c.is_running(5));
    assert_eq!(
        c.session_owner("s"),
        Some(1000),
        "the owner survives a restart"
    );
    assert_eq!(c.call_session(5), Some("s"));
    let lost = c.record(7).expect("the lost call is recorded");
    assert_eq!(
        c.call_session(7),
        Some("s"),
        "a finished call's session too"
    );
    assert_eq!(c.call_session(99), None);
    assert_eq!(lost.outcome, Outcome::Abandoned);
    wait_durable(&c, 7);
    assert!(!RunningStore::open(&f.state).unwrap().path(7).exists());
    // The adopted call keeps its deadline (started 2 s before the restart).
    let (deadline, id) = c.next_deadline().unwrap();
    assert_eq!(id, 5);
    let left = deadline.saturating_duration_since(Instant::now());
    assert!(
        left <= limits().timeout() - Duration::from_millis(1_900),
        "deadline re-armed from the start time, {left:?} left"
    );
}

#[test]
fn a_call_that_ended_before_its_record_was_durable_keeps_that_record() {
    let f = killed_daemon_tree();
    // Call 5 had ended (its tool exited 0, a leftover was killed), the daemon died
    // before the history had its record.
    let store = RunningStore::open(&f.state).unwrap();
    let mut st = running_state(5, "s");
    let mut rec = crate::testutil::record(5);
    rec.leftover_killed = 1;
    rec.exit = ExitInfo {
        code: Some(0),
        signal: None,
    };
    st.ended = Some(Box::new(rec.clone()));
    store.save(&st).unwrap();
    let (mut c, report) = start(&f);
    assert_eq!(report.recovered, vec![5]);
    assert!(report.adopted.is_empty(), "{report:?}");
    assert!(
        !report.orphans.iter().any(|o| o.ends_with("call-000005")),
        "an ended call's cgroup is no orphan: {report:?}"
    );
    let cg = f.root.join("session-s/calls/call-000005");
    assert_eq!(
        std::fs::read_to_string(cg.join("cgroup.kill")).unwrap(),
        "1"
    );
    // Its client's report after the restart gets the record as it ended.
    let got = c.finish_call(5, ExitInfo::default()).unwrap();
    assert_eq!(got, rec);
    wait_durable(&c, 5);
    assert!(!store.path(5).exists());
}

#[test]
fn a_recorded_call_older_than_the_memory_index_is_not_recorded_again() {
    // Call 5 ended and is in the database, but the daemon died before removing its
    // state file, and KEEP_IN_MEMORY later calls ended meanwhile: the in-memory index
    // does not have it, the database does.
    let f = killed_daemon_tree();
    let db = f.state.join(crate::history::HISTORY_DB);
    let mut conn = crate::history::schema::open(&db).unwrap();
    let tx = conn.transaction().unwrap();
    let first = 100;
    for id in std::iter::once(5).chain(first..first + crate::history::KEEP_IN_MEMORY as u64) {
        let r = crate::testutil::record(id);
        crate::history::schema::insert(&tx, &r, &serde_json::to_string(&r).unwrap()).unwrap();
    }
    tx.commit().unwrap();
    drop(conn);
    let (c, report) = start(&f);
    assert!(c.record(5).is_none(), "5 is older than the index");
    assert!(!report.adopted.contains(&5), "{report:?}");
    assert!(!report.lost.contains(&5), "{report:?}");
    assert!(
        !report.orphans.iter().any(|o| o.ends_with("call-000005")),
        "{report:?}"
    );
    assert!(!RunningStore::open(&f.state).unwrap().path(5).exists());
    let conn = crate::history::schema::open_read_only(&db).unwrap();
    let kept = crate::history::query::by_id(&conn, &db, 5)
        .unwrap()
        .unwrap();
    assert_eq!(kept, crate::testutil::record(5), "the first record stands");
}

#[test]
fn ids_continue_above_everything_a_killed_daemon_handed_out() {
    let f = killed_daemon_tree();
    let (mut c, _) = start(&f);
    // The ids file said 3, but calls up to 9 exist: the next id is above all of them.
    let id = c.ids.take().unwrap();
    assert_eq!(id, 10);
    drop(c);
    let (mut again, _) = start(&f);
    let next = again.ids.take().unwrap();
    assert!(
        next >= 10 + ID_BLOCK,
        "id {next} may have been handed out before"
    );
}

#[test]
fn a_client_finishes_an_adopted_call_once_and_gets_the_same_record_again() {
    let f = killed_daemon_tree();
    let (mut c, _) = start(&f);
    let exit = ExitInfo {
        code: Some(0),
        signal: None,
    };
    let rec = c.finish_call(5, exit).unwrap();
    assert_eq!(rec.outcome, Outcome::Ok);
    assert_eq!(rec.accounting.memory_peak, Some(8192));
    assert_eq!(rec.command, vec!["pytest".to_string()]);
    assert!(!c.is_running(5));
    let again = c.finish_call(5, ExitInfo::default()).unwrap();
    assert_eq!(again, rec, "finish is idempotent");
    wait_durable(&c, 5);
    assert!(!RunningStore::open(&f.state).unwrap().path(5).exists());
    assert!(matches!(
        c.finish_call(99, exit),
        Err(ControlError::NoCall(99))
    ));
    // One record per call on disk, whatever was asked twice.
    drop(c);
    let (c, report) = start(&f);
    assert!(
        report.adopted.is_empty() && report.lost.is_empty(),
        "{report:?}"
    );
    assert_eq!(c.record(5).map(|r| r.outcome), Some(Outcome::Ok));
    let db = c.history_db();
    let conn = crate::history::schema::open_read_only(db).unwrap();
    let rows = crate::history::query::newest(&conn, db, 100).unwrap();
    let fives: Vec<_> = rows.iter().filter(|r| r.call_id == 5).collect();
    assert_eq!(fives, vec![&rec], "one row for call 5, its record");
}

#[test]
fn a_repeated_token_gets_the_running_call_back() {
    let f = killed_daemon_tree();
    let (mut c, _) = start(&f);
    let req = CallRequest {
        session: Some("s".into()),
        command: vec!["pytest".into()],
        intent: None,
        client_token: Some("tok-5".into()),
        wait: None,
        tool_use_id: None,
        owner: 0,
    };
    let grant = c.declare_call(&req).unwrap();
    assert_eq!(grant.call_id, 5);
    assert!(grant.cgroup.ends_with("call-000005"));
    let bad = CallRequest {
        client_token: Some("../x".into()),
        ..req.clone()
    };
    let err = c.declare_call(&bad).unwrap_err();
    assert_eq!(err.code(), "bad_request");
    assert!(err.to_string().contains("client_token"), "{err}");
    let bad = CallRequest {
        tool_use_id: Some("toolu 1; ls".into()),
        ..req.clone()
    };
    let err = c.declare_call(&bad).unwrap_err();
    assert!(err.to_string().contains("tool_use_id"), "{err}");
    let labelled = CallRequest {
        client_token: Some("tok-new".into()),
        tool_use_id: Some("toolu_01".into()),
        ..req
    };
    let grant = c.declare_call(&labelled).unwrap();
    let ok = ExitInfo {
        code: Some(0),
        signal: None,
    };
    let rec = c.finish_call(grant.call_id, ok).unwrap();
    assert_eq!(
        rec.tool_use_id.as_deref(),
        Some("toolu_01"),
        "the record names the tool call"
    );
}

#[test]
fn timeouts_and_marks_survive_a_restart() {
    let f = killed_daemon_tree();
    let (mut c, _) = start(&f);
    assert!(c.expire_call(5).unwrap());
    assert_eq!(
        c.next_deadline(),
        None,
        "an expired call has no deadline left"
    );
    drop(c);
    let (mut c, _) = start(&f);
    let rec = c
        .finish_call(
            5,
            ExitInfo {
                code: None,
                signal: Some(9),
            },
        )
        .unwrap();
    assert_eq!(
        rec.outcome,
        Outcome::Timeout,
        "the mark came back from the state file"
    );
}

#[test]
fn the_sweep_leaves_a_call_with_processes_alone() {
    let f = killed_daemon_tree();
    let call = f.root.join("session-s/calls/call-000005");
    write(&call.join("cgroup.events"), "populated 1\nfrozen 0\n");
    let (mut c, _) = start(&f);
    assert!(c.sweep().is_empty());
    assert!(c.is_running(5));
    // With no hooks, an empty call is only abandoned after ABANDON_AFTER.
    write(&call.join("cgroup.events"), "populated 0\nfrozen 0\n");
    assert!(c.sweep().is_empty());
    assert!(c.is_running(5));
}

#[test]
fn an_adopted_call_whose_tool_is_gone_is_ended_when_nobody_reports_it() {
    let f = killed_daemon_tree();
    let call = f.root.join("session-s/calls/call-000005");
    write(&call.join("cgroup.events"), "populated 1\nfrozen 0\n");
    let (mut c, report) = start(&f);
    assert_eq!(report.already_exited, vec![5]);
    assert!(c.sweep().is_empty(), "its client may still report it");
    let gone = Instant::now() - super::lifecycle::ADOPTED_REPORT_WAIT;
    c.running.get_mut(&5).expect("adopted").tool_gone_at = Some(gone);
    let ended = c.sweep();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].call_id, 5);
    assert_eq!(ended[0].outcome, Outcome::Abandoned);
    assert!(!c.is_running(5));
}

#[test]
fn ending_all_calls_records_each_as_killed_and_leaves_none_running() {
    let f = killed_daemon_tree();
    let call = f.root.join("session-s/calls/call-000005");
    write(&call.join("cgroup.events"), "populated 1\nfrozen 0\n");
    let (mut c, _) = start(&f);
    assert!(c.is_running(5));
    let ended = c.end_all_calls();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].call_id, 5);
    assert_eq!(ended[0].outcome, Outcome::Killed);
    assert_eq!(c.running_count(), 0);
    wait_durable(&c, 5);
    assert!(c.end_all_calls().is_empty());
}
