//! The durable history on the real kernel: a burst of calls from 4 clients with
//! agentcgd killed with SIGKILL in the middle; afterwards every granted call has
//! exactly one whole row in `agentcg history`, and `agentcg history stats` counts them
//! (docs/ARCHITECTURE.md#the-history).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentcg_core::record::CallRecord;
use agentcg_vmtests::{Daemon, memhog, wait_for};

const CLIENTS: usize = 4;
const CALLS: usize = 25;

/// What a call of the burst runs, and how it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `ls /`: class `search`, ok.
    Search,
    /// `sh -c 'exit 3'`: unclassified, failed.
    Fail,
    /// memhog past a 16M limit: unclassified, oom_killed.
    Oom,
    /// `true`: unclassified, ok.
    Ok,
}

impl Kind {
    fn of(i: usize) -> Kind {
        [Kind::Search, Kind::Fail, Kind::Oom, Kind::Ok][i % 4]
    }

    fn args(self) -> Vec<String> {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            Kind::Search => v(&["--", "ls", "/"]),
            Kind::Fail => v(&["--", "sh", "-c", "exit 3"]),
            Kind::Oom => v(&["--intent", "mem.max=16M", "--", &memhog(), "64"]),
            Kind::Ok => v(&["--", "true"]),
        }
    }

    fn exit_code(self) -> i32 {
        match self {
            Kind::Search | Kind::Ok => 0,
            Kind::Fail => 3,
            Kind::Oom => 137,
        }
    }

    fn outcome(self) -> &'static str {
        match self {
            Kind::Search | Kind::Ok => "ok",
            Kind::Fail => "failed",
            Kind::Oom => "oom_killed",
        }
    }
}

/// One client's call: its kind, exit code, the call id it was granted (from
/// `--verbose`), and the record it got back.
type Done = (Kind, Option<i32>, Option<u64>, Option<CallRecord>, String);

fn granted_id(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("agentcg: call "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
}

fn one_call(program: &Path, base: &[String], kind: Kind, record: &str) -> Done {
    let _ = std::fs::remove_file(record);
    let out = Command::new(program)
        .args(base)
        .args(["run", "--verbose", "--record", record])
        .args(kind.args())
        .stdin(Stdio::null())
        .output()
        .expect("agentcg run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let rec = std::fs::read_to_string(record)
        .ok()
        .map(|t| serde_json::from_str(&t).expect("record JSON"));
    (kind, out.status.code(), granted_id(&err), rec, err)
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn history_kill_9_mid_burst_keeps_one_whole_row_per_granted_call() {
    let mut d = Daemon::start("history");
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let cli = d.cli();
            let program = Path::new(cli.get_program()).to_path_buf();
            let base: Vec<String> = cli
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let done = done.clone();
            std::thread::spawn(move || {
                (0..CALLS)
                    .map(|i| {
                        let r = one_call(
                            &program,
                            &base,
                            Kind::of(i + c),
                            &format!("/tmp/history-{c}-{i}.json"),
                        );
                        done.fetch_add(1, Ordering::SeqCst);
                        r
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    wait_for("clients progressing", Duration::from_secs(600), || {
        done.load(Ordering::SeqCst) >= CLIENTS * CALLS * 2 / 5
    });
    let at_crash = done.load(Ordering::SeqCst);
    d.crash_and_restart();
    assert!(
        at_crash < CLIENTS * CALLS,
        "the burst ended before agentcgd was killed ({at_crash} calls)"
    );
    println!(
        "agentcgd killed with SIGKILL after {at_crash} of {} calls",
        CLIENTS * CALLS
    );
    let results: Vec<Done> = clients
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let mut granted: BTreeMap<u64, (Kind, Option<CallRecord>)> = BTreeMap::new();
    for (kind, code, id, rec, err) in results {
        assert_eq!(code, Some(kind.exit_code()), "{kind:?}: {err}");
        let id = id.unwrap_or_else(|| panic!("{kind:?}: no call id on stderr: {err}"));
        assert!(
            granted.insert(id, (kind, rec)).is_none(),
            "call {id} granted twice"
        );
    }
    assert_eq!(granted.len(), CLIENTS * CALLS);
    wait_for(
        "every call ended and durable",
        Duration::from_secs(60),
        || {
            let s = d.status();
            s["running_calls"] == 0 && s["history"]["pending"] == 0
        },
    );
    assert!(d.state_dir.join("history.db").exists());
    assert!(!d.state_dir.join("calls.jsonl").exists());

    // Exactly one whole row per granted call, and nothing else.
    let rows = d.history(&[]);
    let mut seen = BTreeSet::new();
    for row in &rows {
        let rec: CallRecord = serde_json::from_value(row.clone())
            .unwrap_or_else(|e| panic!("a row that is not a whole record ({e}): {row}"));
        assert!(
            seen.insert(rec.call_id),
            "call {} has two rows",
            rec.call_id
        );
        let (kind, got) = granted
            .get(&rec.call_id)
            .unwrap_or_else(|| panic!("a row of a call no client was granted: {row}"));
        assert_eq!(rec.outcome.as_str(), kind.outcome(), "{kind:?}: {row}");
        if let Some(got) = got {
            assert_eq!(&rec, got, "the row is the record its client got");
        }
    }
    assert_eq!(seen.len(), granted.len(), "every granted call has its row");
    let ids: Vec<u64> = rows.iter().filter_map(|r| r["call_id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // The filters see the same rows.
    let count = |kind: Kind| granted.values().filter(|(k, _)| *k == kind).count();
    assert_eq!(
        d.history(&["--outcome", "oom_killed"]).len(),
        count(Kind::Oom)
    );
    assert_eq!(d.history(&["--class", "search"]).len(), count(Kind::Search));
    assert_eq!(d.history(&["--since", "1h"]).len(), granted.len());
    assert!(
        d.history(&["--since", "4102444800000"]).is_empty(),
        "none after 2100"
    );

    // Stats count every row, per class, with the OOM rate of the unclassified ones.
    let out = d.agentcg(&["history", "stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats --json");
    let classes = stats["classes"].as_array().expect("classes");
    let total: u64 = classes.iter().filter_map(|c| c["count"].as_u64()).sum();
    assert_eq!(total, granted.len() as u64, "{stats}");
    let class = |name: serde_json::Value| {
        classes
            .iter()
            .find(|c| c["class"] == name)
            .unwrap_or_else(|| panic!("no class {name} in {stats}"))
    };
    let search = class("search".into());
    assert_eq!(search["count"], count(Kind::Search) as u64, "{stats}");
    assert_eq!(search["oom_rate"], 0.0, "{stats}");
    let none = class(serde_json::Value::Null);
    let unclassified = count(Kind::Fail) + count(Kind::Oom) + count(Kind::Ok);
    assert_eq!(none["count"], unclassified as u64, "{stats}");
    let rate = none["oom_rate"].as_f64().expect("oom_rate");
    assert!(
        (rate - count(Kind::Oom) as f64 / unclassified as f64).abs() < 1e-9,
        "{stats}"
    );
    let peak = &none["memory_peak_bytes"];
    assert!(
        peak["max"].as_u64() >= Some(8 << 20) && peak["p50"].as_u64() <= peak["max"].as_u64(),
        "the OOM-killed memhogs peaked near their 16M limit: {stats}"
    );
    let one = d.agentcg(&["history", "stats", "--class", "search", "--json"]);
    let one: serde_json::Value = serde_json::from_slice(&one.stdout).expect("stats --class");
    assert_eq!(one["classes"], serde_json::json!([search]));
}
