//! Processes of a call on the real kernel: the BPF exec/fork/exit telemetry attributes
//! each process to its call, and the record lists them (pid, parent, arguments, exit,
//! times), at most 64 plus a count of the rest.

use agentcg_vmtests::Daemon;
use serde_json::Value;

fn list(rec: &Value) -> &Vec<Value> {
    rec["processes"]["list"]
        .as_array()
        .unwrap_or_else(|| panic!("no process list in {rec}"))
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn processes_of_a_call_are_listed_with_parent_arguments_and_exit() {
    let d = Daemon::start("procs");
    let script = "ls / >/dev/null; sh -c 'exit 5'; exit 3";
    let (out, rec) = d.run_recorded("procs-shell", &["--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let procs = list(&rec);
    let tool = &procs[0];
    assert_eq!(
        tool["argv"],
        serde_json::json!(["sh", "-c", script]),
        "{rec}"
    );
    assert_eq!(tool["exit"]["code"], 3, "{tool}");
    let tool_pid = tool["pid"].as_u64().expect("pid");
    let ls = procs
        .iter()
        .find(|p| p["argv"][0] == "ls")
        .unwrap_or_else(|| panic!("no ls in {procs:?}"));
    assert_eq!(ls["argv"], serde_json::json!(["ls", "/"]));
    assert_eq!(ls["ppid"].as_u64(), Some(tool_pid), "{ls}");
    assert_eq!(ls["exit"]["code"], 0, "{ls}");
    let inner = procs
        .iter()
        .find(|p| p["argv"] == serde_json::json!(["sh", "-c", "exit 5"]))
        .unwrap_or_else(|| panic!("no inner sh in {procs:?}"));
    assert_eq!(inner["exit"]["code"], 5, "{inner}");
    for p in procs {
        let (start, end) = (p["started_unix_ms"].as_u64(), p["ended_unix_ms"].as_u64());
        assert!(start.is_some() && end >= start, "{p}");
        let call_start = rec["started_unix_ms"].as_u64().expect("start");
        // Both clocks are the host's: a process starts within a second of the call.
        assert!(
            start.unwrap_or(0) + 1000 >= call_start,
            "{p} vs call start {call_start}"
        );
    }
    assert_eq!(rec["processes"]["omitted"].as_u64().unwrap_or(0), 0);
    println!(
        "{}",
        serde_json::to_string_pretty(&rec["processes"]).unwrap_or_default()
    );
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn processes_beyond_64_are_counted_and_long_arguments_cut() {
    let d = Daemon::start("procs-many");
    let long = "x".repeat(400);
    let script = format!("for i in $(seq 1 100); do /bin/true {long}; done");
    let (out, rec) = d.run_recorded("procs-many", &["--", "sh", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
    let procs = list(&rec);
    let p = &rec["processes"];
    let counts = format!(
        "execs {} forks {} omitted {}",
        p["execs"], p["forks"], p["omitted"]
    );
    assert_eq!(procs.len(), 64, "{counts}");
    // Every fork (seq, then 100 true) is a process; the tool and 63 of them are listed.
    let forks = p["forks"].as_u64().expect("forks");
    assert!(forks >= 101, "{counts}");
    assert_eq!(p["omitted"].as_u64(), Some(forks - 63), "{counts}");
    assert!(p["execs"].as_u64() >= Some(102), "{counts}");
    let child = procs
        .iter()
        .find(|c| c["argv"][0] == "/bin/true")
        .unwrap_or_else(|| panic!("no /bin/true listed ({counts})"));
    assert_eq!(child["argv_cut"], true, "{child}");
    let bytes: usize = child["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .map(|a| a.as_str().unwrap_or("").len() + 1)
        .sum();
    assert!(bytes <= 257, "argv bounded to 256 bytes: {bytes}");
}
