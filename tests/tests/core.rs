//! Core acceptance on the real kernel: per-call cgroups from intents, clone3 into
//! the cgroup, OOM kills that spare the runtime, no leaked cgroups, session clamps,
//! strict rejection of malformed intents.

use std::path::Path;
use std::time::Duration;

use agentcg_core::spawn::{spawn_in_cgroup, wait};
use agentcg_vmtests::{
    Daemon, FakeRuntime, fresh_record, memhog, read_record, verbose_call_id, wait_for,
};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Acceptance 1: A call with mem.max=64M allocating 256 MiB is OOM-killed alone; the record
/// says why and what to do. The OOM domain is the call's own cgroup, so the runtime of the
/// same session is not a candidate: it stays in runtime/. OOM domains that contain the
/// runtime (the session's, a parent's of agentcg's root) are tested in runtime_oom.rs.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn oom_kills_the_call_alone_and_explains() {
    let d = Daemon::start("oom");
    let mut rt = FakeRuntime::start();
    let out = d.agentcg(&[
        "session",
        "create",
        "s1",
        "--memory",
        "1G",
        "--runtime-pid",
        &rt.pid().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hog = memhog();
    let (out, rec) = d.run_recorded(
        "oom-record",
        &[
            "--session",
            "s1",
            "--intent",
            "mem.max=64M",
            "--",
            &hog,
            "256",
        ],
    );
    assert_eq!(out.status.code(), Some(137), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ran out of memory") && err.contains("mem.max 64 MiB"),
        "{err}"
    );
    assert_eq!(rec["outcome"], "oom_killed");
    let peak = rec["accounting"]["memory_peak"].as_u64().unwrap();
    assert!(
        peak >= 60 << 20,
        "peak {peak} should reach the 64 MiB limit"
    );
    assert!(
        rec["accounting"]["memory_events"]["oom_kill"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(!rec["feedback"]["suggestion"].as_str().unwrap().is_empty());
    assert_eq!(rec["feedback"]["limit"], "mem.max");
    assert!(
        rt.alive(),
        "the runtime, outside the call's OOM domain, was killed"
    );
    let procs = std::fs::read_to_string(d.root.join("session-s1/runtime/cgroup.procs")).unwrap();
    assert!(
        procs.contains(&rt.pid().to_string()),
        "runtime still in runtime/: {procs}"
    );
}

/// Acceptance 2: The tool's very first instruction already runs inside its call cgroup.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn tool_is_born_inside_its_cgroup() {
    let d = Daemon::start("born");
    let (out, rec) = d.run_recorded("born", &["--", "cat", "/proc/self/cgroup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cgroup = rec["cgroup"].as_str().unwrap();
    let rel = cgroup.strip_prefix("/sys/fs/cgroup").unwrap();
    assert_eq!(stdout(&out).trim(), format!("0::{rel}"));
    assert!(rel.contains("/calls/call-"), "{rel}");
}

/// The tool starts as from a shell: exit codes and signals pass through, a program that
/// cannot be exec'd is reported (126/127) and recorded, no signal is blocked or ignored,
/// and the priority's `oom_score_adj` (policy default: normal 500, low 1000) is set.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn tool_starts_like_from_a_shell() {
    let d = Daemon::start("spawn");
    let run = |args: &[&str]| {
        let mut all = vec!["--"];
        all.extend_from_slice(args);
        d.run_recorded("spawn", &all)
    };
    let (out, rec) = run(&["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(rec["exit"]["code"], 7, "{rec}");
    let (out, rec) = run(&["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15), "{}", stderr(&out));
    assert_eq!(rec["exit"]["signal"], 15, "{rec}");

    // The CLI ignores SIGINT/SIGQUIT and Rust ignores SIGPIPE; the tool gets none of that,
    // blocks nothing, and ignores exactly what a tool spawned directly by this process
    // ignores (glibc's posix_spawn hands its internal signals 32 and 33 on as ignored).
    let sig_mask = |status: &str, field: &str| {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        u64::from_str_radix(line[field.len()..].trim(), 16).unwrap()
    };
    let bit = |sig: i32| 1u64 << (sig - 1);
    let direct = std::process::Command::new("cat")
        .arg("/proc/self/status")
        .output()
        .unwrap();
    let direct = stdout(&direct);
    let (out, _) = run(&["cat", "/proc/self/status"]);
    let tool = stdout(&out);
    assert_eq!(sig_mask(&tool, "SigBlk:"), 0, "{tool}");
    let ignored = sig_mask(&tool, "SigIgn:");
    let cli_ignores = bit(libc::SIGINT) | bit(libc::SIGQUIT) | bit(libc::SIGPIPE);
    assert_eq!(ignored & cli_ignores, 0, "{tool}");
    assert_eq!(ignored, sig_mask(&direct, "SigIgn:"), "{tool}");
    let (out, _) = run(&["cat", "/proc/self/oom_score_adj"]);
    assert_eq!(stdout(&out).trim(), "500");
    let out = d.agentcg(&[
        "run",
        "--intent",
        "priority=low",
        "--",
        "cat",
        "/proc/self/oom_score_adj",
    ]);
    assert_eq!(stdout(&out).trim(), "1000", "{}", stderr(&out));

    let not_exec = Path::new("/tmp/spawn-not-executable");
    std::fs::write(not_exec, "#!/bin/sh\necho hi\n").unwrap();
    let (out, rec) = run(&[not_exec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("executing /tmp/spawn-not-executable: Permission denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(rec["exit"]["code"], 126, "{rec}");
    let garbage = Path::new("/tmp/spawn-garbage");
    std::fs::write(garbage, [0x7fu8, b'E', b'L', b'F', 0, 0, 0, 0]).unwrap();
    std::fs::set_permissions(garbage, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (out, _) = run(&[garbage.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Exec format error"),
        "{}",
        stderr(&out)
    );
    let (out, rec) = run(&["no-such-tool-xyz"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("command not found"),
        "{}",
        stderr(&out)
    );
    assert_eq!(rec["exit"]["code"], 127, "{rec}");
    // Every one of them was a call that ended: nothing is left under calls/.
    let calls = d.calls_dir("default");
    wait_for("calls/ to empty", Duration::from_secs(5), || {
        Daemon::child_cgroups(&calls).is_empty()
    });
}

/// agentcgd ends a call when the kernel telemetry sees its tool exit: a clean call
/// whose client sends no report is recorded all the same, a call whose client was
/// killed ends with its tool (not 30 s later as abandoned), and a call whose tool has
/// exited no longer counts against its session's budget.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn calls_end_when_their_tool_exits() {
    let d = Daemon::start("toolexit");
    let record = |id: u64| {
        let mut rec = serde_json::Value::Null;
        wait_for(
            &format!("the record of call {id}"),
            Duration::from_secs(5),
            || {
                rec = d.get_ok(&format!("/v1/calls/{id}"));
                rec["outcome"].is_string()
            },
        );
        rec
    };
    // A clean exit without --record: the client exits without a finish report.
    // Asked right away, the API already has its record (a query settles ended calls).
    let out = d.agentcg(&["run", "--verbose", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = verbose_call_id(&stderr(&out));
    let rec = d.get_ok(&format!("/v1/calls/{id}"));
    assert_eq!(
        (rec["outcome"].as_str(), rec["exit"]["code"].as_i64()),
        (Some("ok"), Some(0)),
        "{rec}"
    );
    assert_eq!(rec["processes"]["execs"], 1, "{rec}");

    // The client is killed while its tool runs: the tool's own end ends the call.
    let mut cli = d
        .cli()
        .args(["run", "--verbose", "--", "sh", "-c", "sleep 1; exit 3"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("agentcg run");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(cli.stderr.take().unwrap()),
        &mut line,
    )
    .expect("stderr");
    let id = verbose_call_id(&line);
    let cgroup = line.trim().rsplit(' ').next().unwrap().to_string();
    let procs = Path::new(&cgroup).join("cgroup.procs");
    wait_for("the tool to start", Duration::from_secs(5), || {
        std::fs::read_to_string(&procs).is_ok_and(|p| !p.trim().is_empty())
    });
    cli.kill().expect("kill the client");
    cli.wait().expect("reap the client");
    let rec = record(id);
    assert_eq!(
        (rec["outcome"].as_str(), rec["exit"]["code"].as_i64()),
        (Some("failed"), Some(3)),
        "{rec}"
    );
    assert!(rec["duration_ms"].as_u64().unwrap() < 5_000, "{rec}");

    // In a 400M session, a call declaring 300M whose tool exits at once but leaves a
    // process behind: agentcgd ends the call only after a grace, yet a call declared
    // right after the tool's exit is admitted as if it had ended (its client may be
    // declaring the next call already): nothing is clamped.
    let out = d.agentcg(&["session", "create", "b2b", "--memory", "400M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let declare = || {
        let (code, grant) = d.http(
            "POST",
            "/v1/calls",
            r#"{"session":"b2b","command":["sh"],"intent":"mem=300M"}"#,
        );
        assert_eq!(code, 200, "{grant}");
        grant
    };
    let first = declare();
    assert_eq!(first["end_watched"], true, "{first}");
    let argv = [
        "sh".into(),
        "-c".into(),
        "sleep 5 >/dev/null 2>&1 & exit 0".into(),
    ];
    let pid = spawn_in_cgroup(Path::new(first["cgroup"].as_str().unwrap()), &argv, None)
        .expect("spawn the tool");
    assert_eq!(wait(pid).expect("wait").code, Some(0));
    let second = declare();
    assert_eq!(second["clamps"], serde_json::json!([]), "{second}");
    let rec = record(first["call_id"].as_u64().unwrap());
    assert_eq!(
        (rec["outcome"].as_str(), rec["leftover_killed"].as_u64()),
        (Some("ok"), Some(1)),
        "{rec}"
    );
    let (code, rec) = d.http(
        "POST",
        &format!("/v1/calls/{}/finish", second["call_id"]),
        r#"{"exit":{"code":0,"signal":null}}"#,
    );
    assert_eq!((code, rec["outcome"].as_str()), (200, Some("ok")), "{rec}");
    // The finish report is idempotent: the first call, ended by agentcgd, answers too.
    let (code, again) = d.http(
        "POST",
        &format!("/v1/calls/{}/finish", first["call_id"]),
        r#"{"exit":{"code":0,"signal":null}}"#,
    );
    assert_eq!(
        (code, again["call_id"].clone()),
        (200, first["call_id"].clone()),
        "{again}"
    );
    let calls = d.calls_dir("b2b");
    wait_for("b2b calls/ to empty", Duration::from_secs(5), || {
        Daemon::child_cgroups(&calls).is_empty()
    });
    let log = std::fs::read_to_string(d.log_path()).unwrap_or_default();
    assert!(!log.contains("retried later"), "reaping failed: {log}");
}

/// A tool's own cgroup directory, in `sh`.
const OWN_CGROUP: &str = "\"/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)\"";

/// Acceptance 3: 500 sequential calls (ok, failing, OOM-killed, one leaving a background process
/// behind, tools that make cgroups of their own inside their call's, one of them with a
/// process left in it) leave zero cgroups under calls/.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn five_hundred_calls_leave_no_cgroup_behind() {
    let d = Daemon::start("many");
    let hog = memhog();
    let nested_empty = format!("mkdir {OWN_CGROUP}/sub");
    let nested_sleeper = format!(
        "mkdir {OWN_CGROUP}/sub; sh -c 'echo $$ > {OWN_CGROUP}/sub/cgroup.procs; exec sleep 1000' & \
         for i in $(seq 100); do grep -q . {OWN_CGROUP}/sub/cgroup.procs && break; sleep 0.1; done; \
         grep -q . {OWN_CGROUP}/sub/cgroup.procs && echo started"
    );
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..500 {
        let args: Vec<&str> = match i % 100 {
            7 => vec!["--intent", "mem.max=16M", "--", &hog, "64"],
            13 => vec!["--", "sh", "-c", "sleep 1000 & echo started"],
            29 => vec!["--", "sh", "-c", &nested_empty],
            41 => vec!["--", "sh", "-c", &nested_sleeper],
            n if n % 3 == 0 => vec!["--", "false"],
            _ => vec!["--", "true"],
        };
        // A fresh record file per call, and the record must name the call's own id.
        let (out, r) = d.run_recorded(&format!("many-{i}"), &args);
        let id = r["call_id"].as_u64().expect("call_id");
        assert!(ids.insert(id), "call id {id} given twice: {r}");
        *outcomes
            .entry(r["outcome"].as_str().unwrap().to_string())
            .or_default() += 1;
        if i % 100 == 29 {
            assert_eq!(r["outcome"], "ok", "mkdir in its own cgroup: {r}");
        }
        if i % 100 == 13 || i % 100 == 41 {
            assert!(
                r["leftover_killed"].as_u64().unwrap() >= 1,
                "background sleep must be killed: {r}"
            );
            // For 41, success also says the sleeper sat in the child cgroup.
            assert!(out.status.success(), "call {i}: {r}");
        }
    }
    // The last call's cgroup is removed just after its finish reply: allow a moment.
    let start = std::time::Instant::now();
    let mut left = Daemon::child_cgroups(&d.calls_dir("default"));
    while !left.is_empty() && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
        left = Daemon::child_cgroups(&d.calls_dir("default"));
    }
    assert!(left.is_empty(), "leaked call cgroups: {left:?}");
    assert_eq!(outcomes.get("oom_killed"), Some(&5), "{outcomes:?}");
    assert!(
        outcomes.get("failed").copied().unwrap_or(0) >= 150,
        "{outcomes:?}"
    );
    assert_eq!(outcomes.values().sum::<u32>(), 500);
    let list = d.get_ok("/v1/calls?limit=1000");
    let listed: std::collections::BTreeSet<u64> = list
        .as_array()
        .expect("a list of records")
        .iter()
        .map(|r| r["call_id"].as_u64().expect("call_id"))
        .collect();
    assert_eq!(
        listed, ids,
        "all 500 records in the history, under their ids"
    );
}

/// Acceptance 4: A 400 MiB session with two calls wanting 300 MiB: the calls are clamped
/// (and one is killed at the shared ceiling, calls/ memory.max), a third is refused. The
/// ceiling's OOM domain is calls/, which does not hold the runtime; the runtime under an
/// OOM of its session or of a parent is tested in runtime_oom.rs.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn session_budget_clamps_and_confines_the_oom_to_calls() {
    // Clamping is what this test is about: with the default `[admission] queue_for` a
    // call short of its session's memory waits for the running one instead (tested in
    // admission.rs), so this daemon never queues.
    let policy = std::env::temp_dir().join("agentcg-budget-policy.toml");
    std::fs::write(&policy, "[admission]\nqueue_for = \"0s\"\n").expect("write the policy");
    let d = Daemon::start_with("budget", &["--policy", policy.to_str().unwrap()]);
    let mut rt = FakeRuntime::start();
    let out = d.agentcg(&[
        "session",
        "create",
        "s",
        "--memory",
        "400M",
        "--runtime-pid",
        &rt.pid().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hog = memhog();
    let paths = [fresh_record("budget-1"), fresh_record("budget-2")];
    let spawn = |n: usize| {
        d.cli()
            .args([
                "run",
                "--session",
                "s",
                "--intent",
                "mem=150M,mem.max=300M",
                "--record",
            ])
            .arg(&paths[n - 1])
            .args(["--", &hog, "200", "6000", "8"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Each call is declared before the next starts (the second one's clamp depends on
    // the first, the third's refusal on both).
    let running = |n: usize| {
        let start = std::time::Instant::now();
        loop {
            let s = d.get_ok("/v1/sessions/s");
            let ids: Vec<u64> = s["running_calls"]
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
                .unwrap_or_default();
            if ids.len() >= n {
                return ids;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "call {n} not declared: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let a = spawn(1);
    let first = running(1);
    let b = spawn(2);
    let both = running(2);
    // A third call that expects 300 MiB finds no room: refused, nothing runs.
    let third = d.agentcg(&[
        "run",
        "--session",
        "s",
        "--intent",
        "mem=300M",
        "--",
        "touch",
        "/tmp/budget-third",
    ]);
    assert_eq!(third.status.code(), Some(2), "{}", stderr(&third));
    assert!(
        stderr(&third).contains("left for tool calls"),
        "{}",
        stderr(&third)
    );
    assert!(!Path::new("/tmp/budget-third").exists());
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let recs = [read_record(&paths[0]), read_record(&paths[1])];
    let second: Vec<u64> = both
        .iter()
        .filter(|id| !first.contains(id))
        .copied()
        .collect();
    assert_eq!(
        [recs[0]["call_id"].as_u64(), recs[1]["call_id"].as_u64()],
        [first.first().copied(), second.first().copied()],
        "each record file holds its own call's record"
    );
    for r in &recs {
        let clamps = r["clamps"].as_array().unwrap();
        assert!(
            clamps.iter().any(|c| c["field"] == "mem.max"),
            "mem.max clamped to the session: {r}"
        );
        assert_eq!(r["limits"]["memory_max"].as_u64(), Some(272 << 20));
    }
    assert!(
        recs[1]["clamps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["field"] == "mem"),
        "second call's mem clamped"
    );
    // 400 MiB of demand against a 272 MiB ceiling: the kernel's OOM killer acts inside
    // calls/ only. It may take both calls (the OOM cascade of
    // docs/ARCHITECTURE.md#measured-baselines: the first victim frees its
    // memory only after the killer strikes again).
    let killed: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["outcome"] == "oom_killed")
        .collect();
    assert!(
        !killed.is_empty(),
        "400 MiB cannot fit under the 272 MiB shared ceiling: {recs:?}\n{}\n{}",
        stderr(&oa),
        stderr(&ob)
    );
    for r in &killed {
        assert_eq!(r["feedback"]["limit"], "session calls ceiling", "{r}");
        assert!(
            r["accounting"]["shared_ceiling_events"]["max"]
                .as_u64()
                .unwrap()
                > 0
        );
    }
    for r in &recs {
        assert!(r["outcome"] == "oom_killed" || r["outcome"] == "ok", "{r}");
    }
    println!(
        "budget: outcomes {:?}",
        recs.iter()
            .map(|r| r["outcome"].clone())
            .collect::<Vec<_>>()
    );
    assert!(
        rt.alive(),
        "the runtime, outside the calls/ OOM domain, was killed"
    );
}

/// Acceptance 5: Malformed intents are rejected with a message naming the problem; nothing is
/// spawned and no cgroup is created — through the CLI and through the raw API.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn malformed_intents_spawn_nothing() {
    let d = Daemon::start("bad");
    let ok = d.agentcg(&["run", "--", "true"]);
    assert!(ok.status.success());
    let calls = d.calls_dir("default");
    let huge = format!("mem={}", "9".repeat(5000));
    let cases: Vec<(&str, &str)> = vec![
        ("", "empty"),
        ("mem", "key=value"),
        ("mem=", "empty value"),
        ("mem=5X", "unknown unit"),
        ("mem=-1G", "not a number"),
        ("mem=1e9", "unknown unit"),
        ("mem=0", "below the minimum"),
        ("mem=999999T", "above the maximum"),
        ("mem=18446744073709551616", "too large"),
        ("mem=1G,mem=2G", "twice"),
        ("mem=2G,mem.max=1G", "larger than mem.max"),
        ("memory=1G", "unknown key"),
        ("mem=1G,foo=bar", "unknown key `foo`"),
        ("cpu=0", "out of range"),
        ("cpu=-1", "expected CPUs"),
        ("cpu=1.2345", "at most 3 places"),
        ("cpu.weight=0", "out of range"),
        ("cpu.weight=10001", "out of range"),
        ("pids=0", "out of range"),
        ("pids=99999999999", "out of range"),
        ("timeout=0", "out of range"),
        ("timeout=30y", "unknown unit"),
        ("priority=urgent", "not a priority"),
        ("class=a;rm -rf /", "[a-z]"),
        ("mem=$(touch /tmp/pwned)", "not a number"),
        ("mem=1G;touch /tmp/pwned", "unknown unit"),
        ("mem=1G`touch /tmp/pwned`", "unknown unit"),
        ("memory:a[$(touch /tmp/pwned)]g", "resource hint"),
        ("memory:huge", "resource hint"),
        (r#"{"mem": "1G", "bogus": 1}"#, "unknown key `bogus`"),
        (r#"{"mem": [1]}"#, "string or a number"),
        (huge.as_str(), "at most 1024"),
    ];
    assert!(cases.len() >= 30);
    for (spec, needle) in &cases {
        let out = d.agentcg(&["run", "--intent", spec, "--", "touch", "/tmp/pwned-spawned"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "`{spec}` must be rejected: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(needle),
            "`{spec}` → {} (wanted {needle})",
            stderr(&out)
        );
        // The daemon validates too: send the same intent over the raw API.
        let body = serde_json::json!({"command": ["touch", "/tmp/pwned-spawned"], "intent": spec})
            .to_string();
        let (status, reply) = d.http("POST", "/v1/calls", &body);
        assert_eq!(status, 400, "`{spec}` via API: {reply}");
        assert_eq!(reply["error"]["code"], "bad_intent", "{reply}");
    }
    // Bad requests beyond intents.
    for body in [
        r#"{"command": []}"#,
        r#"{"command": ["x"], "bogus": 1}"#,
        r#"{"command": "ls"}"#,
        "not json",
    ] {
        let (status, reply) = d.http("POST", "/v1/calls", body);
        assert_eq!(status, 400, "{body} → {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (status, reply) = d.http("POST", "/v1/sessions", r#"{"name": "../../etc"}"#);
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (400, Some("bad_session")),
        "{reply}"
    );
    assert!(!Path::new("/tmp/pwned").exists() && !Path::new("/tmp/pwned-spawned").exists());
    assert!(
        Daemon::child_cgroups(&calls).is_empty(),
        "no call cgroup may be left or created"
    );
    let list = d.get_ok("/v1/calls");
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "only the one good call was recorded"
    );
}

/// Timeouts and pids limits end calls with their own outcomes and feedback.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn timeout_and_pids_limits() {
    let d = Daemon::start("limits");
    let (out, r) = d.run_recorded("t", &["--intent", "timeout=1s", "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(137));
    assert_eq!(r["outcome"], "timeout");
    assert!(r["duration_ms"].as_u64().unwrap() < 10_000);
    assert!(
        stderr(&out).contains("ran past its time limit"),
        "{}",
        stderr(&out)
    );
    let script = "for i in $(seq 20); do sleep 5 & done; wait";
    let (out, r) = d.run_recorded("p", &["--intent", "pids=8", "--", "sh", "-c", script]);
    assert!(!out.status.success());
    assert_eq!(r["outcome"], "pids_limited", "{r}");
    assert!(r["accounting"]["pids_limit_hits"].as_u64().unwrap() > 0);
    assert_eq!(r["limits"]["pids_max"], 8);
}

/// Limits from the intent are really written to the call's cgroup.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn intent_becomes_cgroup_knobs() {
    let d = Daemon::start("knobs");
    let script = "d=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat $d/memory.high $d/memory.max $d/cpu.max $d/cpu.weight $d/pids.max $d/memory.oom.group";
    let out = d.agentcg(&[
        "run",
        "--intent",
        "mem=64M,mem.max=128M,cpu=0.5,cpu.weight=200,pids=77",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let vals: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(
        vals,
        ["67108864", "134217728", "50000 100000", "200", "77", "1"]
    );
}

/// `agentcg shell -c` makes a call per command, classified by the command string.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn shell_mode_runs_each_command_as_a_call() {
    let d = Daemon::start("shell");
    let out = d
        .cli()
        .args([
            "shell",
            "-c",
            "git --version >/dev/null 2>&1; cat /proc/self/cgroup",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("/calls/call-"), "{}", stdout(&out));
    let list = d.get_ok("/v1/calls");
    let rec = &list[0];
    assert_eq!(
        rec["limits"]["class"], "vcs",
        "classified from the -c string: {rec}"
    );
    let out = d.cli().args(["shell", "-c", "exit 3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let out = d
        .cli()
        .args(["shell", "-c", "true"])
        .env("AGENTCG_INTENT", "mem=zz")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad AGENTCG_INTENT is rejected: {}",
        stderr(&out)
    );
}

/// Sessions through the CLI; closing refuses while the runtime lives, unless forced.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn session_lifecycle_and_status() {
    let d = Daemon::start("sess");
    let mut rt = FakeRuntime::start();
    let out = d.agentcg(&[
        "session",
        "create",
        "hi",
        "--priority",
        "high",
        "--memory",
        "2G",
        "--cpu",
        "1.5",
        "--pids",
        "300",
        "--runtime-pid",
        &rt.pid().to_string(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = d.root.join("session-hi");
    let read = |f: &str| {
        std::fs::read_to_string(s.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("memory.max"), (2u64 << 30).to_string());
    assert_eq!(read("cpu.max"), "150000 100000");
    assert_eq!(read("cpu.weight"), "400");
    assert_eq!(read("pids.max"), "300");
    assert_eq!(read("runtime/memory.min"), (128u64 << 20).to_string());
    assert_eq!(
        read("calls/memory.max"),
        ((2048u64 - 128) << 20).to_string()
    );
    let dup = d.agentcg(&["session", "create", "hi"]);
    assert_eq!(dup.status.code(), Some(2));
    assert!(stderr(&dup).contains("already exists"));
    let list = d.agentcg(&["session", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v[0]["runtime_pids"][0].as_u64(), Some(u64::from(rt.pid())));
    let close = d.agentcg(&["session", "close", "hi"]);
    assert_eq!(
        close.status.code(),
        Some(2),
        "refused while the runtime lives"
    );
    assert!(rt.alive());
    // A call still running when its session is closed ends with the session; its
    // client gets the record the daemon wrote, not an error.
    let closed = fresh_record("closed");
    let running = d
        .cli()
        .args(["run", "--session", "hi", "--record"])
        .arg(&closed)
        .args(["--", "sleep", "60"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let calls = s.join("calls");
    // The call's cgroup exists from its declaration; wait for its tool to be in it,
    // or the close may come before the client's spawn (which then fails, 126).
    let populated = |c: &std::path::Path| {
        std::fs::read_to_string(c.join("cgroup.events")).is_ok_and(|e| e.contains("populated 1"))
    };
    wait_for("the call's tool running", Duration::from_secs(30), || {
        Daemon::child_cgroups(&calls).iter().any(|c| populated(c))
    });
    let close = d.agentcg(&["session", "close", "hi", "--force"]);
    assert!(close.status.success(), "{}", stderr(&close));
    // Its cgroups go in the background, once the killed processes have left.
    wait_for(
        "the closed session's cgroup removed",
        Duration::from_secs(10),
        || !s.exists(),
    );
    let out = running.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137));
    assert!(
        !stderr(&out).contains("reporting the end"),
        "{}",
        stderr(&out)
    );
    assert_eq!(read_record(&closed)["outcome"], "killed");
    let st = d.agentcg(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["kernel"]["clone_into_cgroup"], true);
    assert!(
        v["kernel"]["sched_ext_state"].is_string(),
        "the 7.3 kernel has sched_ext: {v}"
    );
    assert_eq!(v["kernel"]["memory_peak"], true);
}

/// A restarted daemon keeps its sessions and history, and removes calls it lost.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn restart_keeps_state_and_cleans_orphans() {
    let mut d = Daemon::start("restart");
    assert!(d.agentcg(&["session", "create", "keep"]).status.success());
    assert!(
        d.agentcg(&["run", "--session", "keep", "--", "true"])
            .status
            .success()
    );
    let orphan = d.calls_dir("keep").join("call-999999");
    std::fs::create_dir(&orphan).unwrap();
    d.restart();
    wait_for(
        "orphaned call cgroup removed",
        Duration::from_secs(10),
        || !orphan.exists(),
    );
    let out = d.agentcg(&["session", "show", "keep", "--json"]);
    assert!(
        out.status.success(),
        "session survives a restart: {}",
        stderr(&out)
    );
    let (out, rec) = d.run_recorded("restart", &["--session", "keep", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Ids continue above every id a previous run may have handed out: the reserved
    // block and every call cgroup seen (the orphan's included).
    assert!(
        rec["call_id"].as_u64() > Some(999_999),
        "ids continue above every id seen: {rec}"
    );
    let list = d.get_ok("/v1/calls");
    assert_eq!(list.as_array().unwrap().len(), 2);
}
