//! `agentcg replay` as a user runs it: over the recorded runs in tests/traces, with
//! the default policy, and on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn traces() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/traces")
}

fn agentcg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentcg"))
        .args(args)
        .output()
        .expect("agentcg runs")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Every recorded run as its own session on a 16 GiB host: the default policy kills no
/// call whose recorded peak fitted the host.
#[test]
fn the_default_policy_kills_nothing_that_fits() {
    let dir = traces();
    let v = json_of(&agentcg(&[
        "replay",
        "--json",
        dir.to_str().expect("utf-8"),
    ]));
    assert_eq!(v["replay"]["runs"], 55);
    assert_eq!(v["replay"]["shell_calls"], 419);
    let report = &v["report"];
    assert_eq!(report["sessions"].as_array().map(Vec::len), Some(55));
    let killed = report["killed"].as_array().expect("killed list");
    let fitted: Vec<_> = killed.iter().filter(|k| k["fits_host"] == true).collect();
    assert!(
        fitted.is_empty(),
        "calls killed although they fitted: {fitted:#?}"
    );
    let calls: u64 = report["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["calls"].as_u64().expect("calls"))
        .sum();
    assert!(
        calls >= 419,
        "every shell call is replayed at least once: {calls}"
    );
}

/// `--pack` finds more sessions than static peak provisioning holds, and says so in
/// text too.
#[test]
fn packing_is_reported_against_static_provisioning() {
    let dir = traces();
    let dir = dir.to_str().expect("utf-8");
    let v = json_of(&agentcg(&["replay", "--pack", "--json", dir]));
    let p = &v["packing"];
    let (stat, packed) = (
        p["static_sessions"].as_u64().expect("static"),
        p["packed_sessions"].as_u64().expect("packed"),
    );
    assert!(stat > 10 && packed > stat, "{p}");
    assert!(p["packed_peak_used"].as_u64() <= p["host_memory"].as_u64());
    assert!(
        p["next_kills"]["host_oom"].as_u64() > Some(0)
            || p["next_kills"]["response"].as_u64() > Some(0)
    );
    let text = agentcg(&["replay", "--pack", "--host-memory", "4G", dir]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("static peak provisioning:"), "{text}");
    assert!(text.contains("ratio:"), "{text}");
}

/// Bad input: a clear error naming the problem, exit status 2, nothing printed on stdout.
#[test]
fn bad_input_is_refused_with_a_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let garbage = tmp.path().join("garbage");
    std::fs::create_dir(&garbage).expect("mkdir");
    std::fs::write(garbage.join("resources.json"), b"\x00\x9f\xffnot json").expect("write");
    let text = tmp.path().join("text");
    std::fs::create_dir(&text).expect("mkdir");
    std::fs::write(text.join("resources.json"), "{\"samples\": [1,").expect("write");
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").expect("write");
    let dir = traces();
    let dir = dir.to_str().expect("utf-8");
    let missing = tmp.path().join("missing");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![missing.to_str().expect("utf-8")], "missing"),
        (vec![file.to_str().expect("utf-8")], "not a directory"),
        (
            vec![garbage.to_str().expect("utf-8")],
            "garbage/resources.json: stream did not contain valid UTF-8",
        ),
        (
            vec![text.to_str().expect("utf-8")],
            "resources.json is not JSON",
        ),
        (vec!["--host-memory", "lots", dir], "--host-memory lots"),
        (vec!["--sessions", "0", dir], "--sessions 0"),
        (
            vec!["--policy", file.to_str().expect("utf-8"), dir],
            "file:1:2: syntax",
        ),
    ];
    for (args, expect) in cases {
        let mut all = vec!["replay"];
        all.extend(&args);
        let out = agentcg(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
