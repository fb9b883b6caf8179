//! Admission from history on the real kernel (docs/POLICY.md#admission): after 20
//! recorded `test`-class calls peaking near 300 MiB, a call that declares nothing is
//! granted their p95; a call that cannot fit waits in agentcgd's queue and starts when
//! another call ends, or is rejected after `queue_for`; the records and the CLI say
//! which and why.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use agentcg_vmtests::{Daemon, memhog, read_record};

const MIB: u64 = 1 << 20;
/// Recorded calls before history replaces the class default.
const SAMPLES: u64 = 20;
/// `[admission] queue_for` of the test's policy.
const QUEUE_FOR: Duration = Duration::from_secs(4);

/// A `pytest` that runs memhog (`pytest MIB HOLD_MS`): a command the default policy
/// classifies as `test` without the call declaring anything.
fn fake_pytest() -> String {
    let dir = PathBuf::from("/tmp/admission-bin");
    std::fs::create_dir_all(&dir).expect("creating /tmp/admission-bin");
    let path = dir.join("pytest");
    std::fs::write(&path, format!("#!/bin/sh\nexec {} \"$@\"\n", memhog()))
        .expect("writing the fake pytest");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("chmod of the fake pytest");
    path.display().to_string()
}

/// The default policy with a short queue.
fn policy_file() -> String {
    let path = "/tmp/admission-policy.toml";
    let text = agentcg_core::policy::DEFAULT_POLICY.replace(
        "queue_for = \"30s\"",
        &format!("queue_for = \"{}s\"", QUEUE_FOR.as_secs()),
    );
    assert!(
        text.contains("queue_for = \"4s\""),
        "the default policy changed"
    );
    std::fs::write(path, text).expect("writing the test policy");
    path.into()
}

/// Runs `agentcg run --verbose --record` in the background.
fn spawn_run(d: &Daemon, name: &str, args: &[&str]) -> (std::process::Child, PathBuf) {
    let record = agentcg_vmtests::fresh_record(name);
    let child = d
        .cli()
        .args(["run", "--verbose", "--record"])
        .arg(&record)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agentcg run");
    (child, record)
}

fn nearest_rank_p95(mut peaks: Vec<u64>) -> u64 {
    peaks.sort_unstable();
    let rank = (peaks.len() * 95).div_ceil(100).max(1);
    peaks[rank - 1]
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn admission_from_history_queues_and_rejects() {
    let policy = policy_file();
    let d = Daemon::start_with("admission", &["--policy", &policy]);
    let pytest = fake_pytest();

    // 20 test-class calls peaking near 300 MiB (281..=300 MiB plus the process).
    for i in 0..SAMPLES {
        let mib = (281 + i).to_string();
        let (out, rec) = d.run_recorded("admission-sample", &["--", &pytest, &mib, "0"]);
        assert!(out.status.success(), "sample {i}: {out:?}");
        assert_eq!(rec["limits"]["class"], "test", "{rec}");
        // Before 20 samples: the class default (policies/default.toml: mem=512M).
        assert_eq!(rec["admission"]["estimate"]["source"], "default", "{rec}");
        assert_eq!(rec["limits"]["memory_expected"], 512 * MIB, "{rec}");
    }
    let peaks: Vec<u64> = d
        .history(&["--class", "test"])
        .iter()
        .map(|r| {
            r["accounting"]["memory_peak"]
                .as_u64()
                .expect("memory_peak")
        })
        .collect();
    assert_eq!(peaks.len(), SAMPLES as usize);
    let p95 = nearest_rank_p95(peaks.clone());
    println!(
        "recorded peaks (MiB): {:?}",
        peaks.iter().map(|p| p / MIB).collect::<Vec<_>>()
    );
    assert!(
        (295 * MIB..=330 * MIB).contains(&p95),
        "p95 {} MiB",
        p95 / MIB
    );

    // A call declaring nothing is granted their p95 (its session ran all 20, so its
    // own factor is 1).
    let (out, rec) = d.run_recorded("admission-p95", &["--", &pytest, "8", "0"]);
    assert!(out.status.success(), "{out:?}");
    let est = &rec["admission"]["estimate"];
    println!("estimate: {est}");
    assert_eq!(est["source"], "history", "{rec}");
    assert_eq!(est["samples"], SAMPLES, "{rec}");
    assert_eq!(est["class_peak"], p95, "{rec}");
    assert_eq!(est["session_factor_permille"], 1000, "{rec}");
    assert_eq!(rec["limits"]["memory_expected"], p95, "{rec}");
    assert_eq!(rec["limits"]["memory_high"], p95, "{rec}");
    assert_eq!(rec["admission"]["decision"]["verdict"], "admit", "{rec}");

    // Session q: 1 GiB, so its calls share 896 MiB. A holds 700 MiB of it for 1.5 s;
    // B (p95, about 300 MiB) cannot fit and waits until A ends.
    d.create_session(&["q", "--memory", "1G"]);
    let (a, a_rec) = spawn_run(
        &d,
        "admission-a",
        &[
            "--session",
            "q",
            "--intent",
            "mem=700M",
            "--",
            &memhog(),
            "32",
            "1500",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let (out, b) = d.run_recorded("admission-b", &["--session", "q", "--", &pytest, "16", "0"]);
    let waited = asked.elapsed();
    let a_out = a.wait_with_output().expect("waiting for call A");
    assert!(a_out.status.success(), "{a_out:?}");
    let a = read_record(&a_rec);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("B waited {waited:?}: {stderr}");
    assert!(out.status.success(), "{out:?}");
    let queued: Vec<&str> = stderr.lines().filter(|l| l.contains("queued")).collect();
    assert_eq!(queued.len(), 1, "one line says it waits: {stderr}");
    assert!(
        queued[0].starts_with("agentcg: queued, waiting up to 4s for memory: "),
        "{}",
        queued[0]
    );
    assert!(queued[0].contains("session has"), "{}", queued[0]);
    // B started when A ended, and its record says it waited and why it was admitted.
    let ms = |r: &serde_json::Value, key: &str| r[key].as_u64().expect(key);
    let a_end = ms(&a, "started_unix_ms") + ms(&a, "duration_ms");
    let b_start = ms(&b, "started_unix_ms");
    assert!(
        b_start + 50 >= a_end,
        "B started {b_start}, A ended {a_end}"
    );
    let inputs = &b["admission"]["inputs"];
    println!("B admission: {}", b["admission"]);
    assert_eq!(b["admission"]["decision"]["verdict"], "admit", "{b}");
    assert!(ms(inputs, "waited_ms") >= 500, "{b}");
    assert_eq!(inputs["expected"], p95, "{b}");
    assert_eq!(inputs["queue_for_ms"], QUEUE_FOR.as_millis() as u64, "{b}");
    assert_eq!(b["limits"]["memory_expected"], p95, "{b}");

    // C cannot fit while A2 holds its memory for longer than queue_for: rejected after
    // 4 s, saying so, and nothing ran.
    let (a2, _) = spawn_run(
        &d,
        "admission-a2",
        &[
            "--session",
            "q",
            "--intent",
            "mem=700M",
            "--",
            &memhog(),
            "32",
            "8000",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = d.history(&[]).len();
    let asked = Instant::now();
    let out = d.agentcg(&["run", "--session", "q", "--", &pytest, "16", "0"]);
    let waited = asked.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("C rejected after {waited:?}: {stderr}");
    assert!(!out.status.success(), "{out:?}");
    assert!(waited >= QUEUE_FOR, "rejected after {waited:?}");
    assert!(
        waited < QUEUE_FOR + Duration::from_millis(1500),
        "rejected after {waited:?}"
    );
    assert!(stderr.contains("queued, waiting up to 4s"), "{stderr}");
    let why = stderr
        .lines()
        .find(|l| l.contains(" in the queue: "))
        .unwrap_or_else(|| panic!("no rejection reason: {stderr}"));
    assert!(why.contains("agentcg: waited 4"), "{why}");
    assert!(stderr.contains("session has"), "{stderr}");
    assert_eq!(
        d.history(&[]).len(),
        before,
        "a rejected call has no record"
    );
    let a2 = a2.wait_with_output().expect("waiting for call A2");
    assert!(a2.status.success(), "{a2:?}");
}
