//! Aider (the real PyPI client, aider-chat, in provision.sh's venv) with `SHELL` a
//! script that execs `agentcg shell`, driven by the scripted model server's
//! OpenAI-compatible API and answered on a pty by tests/python/drive_aider.py: every
//! shell command the model suggests and Aider runs is an agentcg call in the session
//! Aider runs in, and agentcg's feedback reaches the model in the command output Aider
//! adds to the chat.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use agentcg_core::units::HumanSize;
use agentcg_vmtests::memory::memory_event;
use agentcg_vmtests::model_server::{ModelServer, Turn};
use agentcg_vmtests::{Daemon, bin_dir, memhog};
use serde_json::{Value, json};

/// Where xtask/provision.sh installs Aider.
const AIDER_VENV: &str = "/opt/aider-venv";

/// The runtime reserve of the test's policy. Aider's own process holds about 210 MB in
/// the VM (litellm; 54236 resident pages in an OOM report): with the default 128M the
/// session's limit, not the call's own, stops a large call, and its feedback then names
/// the session's budget instead of the call's `mem.max` this test checks.
const RUNTIME_RESERVE: &str = "256M";

/// A policy file: the default one with the runtime reserve above.
fn policy_with_aider_reserve() -> &'static str {
    let default_reserve = "runtime_reserve = \"128M\"";
    let policy = include_str!("../../policies/default.toml");
    assert!(
        policy.contains(default_reserve),
        "the default runtime reserve moved"
    );
    let path = "/tmp/aider-policy.toml";
    std::fs::write(
        path,
        policy.replace(
            default_reserve,
            &format!("runtime_reserve = \"{RUNTIME_RESERVE}\""),
        ),
    )
    .expect("writing the test policy");
    path
}

/// Writes the one-path `SHELL` Aider needs: a script holding `exec agentcg shell "$@"`.
fn agentcg_shell_script(dir: &Path) -> PathBuf {
    let path = dir.join("agentcg-sh");
    let agentcg = bin_dir().join("agentcg");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec {} shell \"$@\"\n", agentcg.display()),
    )
    .expect("writing the SHELL script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("making the SHELL script executable");
    path
}

/// Runs Aider against `server` on a pty, sending `messages` at its prompt, in session
/// `session` (budget `memory`) of daemon `d`; the shell that starts Aider makes itself
/// the session's runtime first, so Aider is the runtime.
fn aider(
    d: &Daemon,
    server: &ModelServer,
    session: &str,
    memory: &str,
    messages: &[&str],
) -> Output {
    let home = PathBuf::from(format!("/tmp/aider-home-{session}"));
    let work = home.join("work");
    std::fs::create_dir_all(&work).expect("aider's home and working directory");
    // An empty model-price cache: Aider would otherwise try to download litellm's.
    let caches = home.join(".aider/caches");
    std::fs::create_dir_all(&caches).expect("aider's cache directory");
    std::fs::write(caches.join("model_prices_and_context_window.json"), "{}")
        .expect("aider's model-price cache");
    let runtime = format!(
        "{} session create {session} --memory {memory} --runtime-pid $$ >&2 && exec \"$@\"",
        bin_dir().join("agentcg").display()
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Command::new(format!("{AIDER_VENV}/bin/python"))
        .arg(root.join("python/drive_aider.py"))
        .arg(json!(messages).to_string())
        .args(["--", "sh", "-c", &runtime, "aider-runtime"])
        .arg(format!("{AIDER_VENV}/bin/aider"))
        .args(["--model", "openai/scripted", "--openai-api-key", "scripted"])
        .arg("--openai-api-base")
        .arg(format!("{}/v1", server.url()))
        // The edit format whose replies Aider reads shell commands from ("whole", its
        // default for an unknown model, reads none).
        .args(["--edit-format", "diff", "--no-stream", "--no-pretty"])
        .args(["--no-fancy-input", "--no-git", "--no-auto-commits"])
        .args(["--no-check-update", "--no-show-release-notes"])
        .args([
            "--no-show-model-warnings",
            "--no-analytics",
            "--no-detect-urls",
        ])
        .current_dir(&work)
        .env("HOME", &home)
        .env("SHELL", agentcg_shell_script(&home))
        .env("AGENTCG_SESSION", session)
        .env("AGENTCG_SOCKET", &d.socket)
        .env("TERM", "dumb")
        .stdin(Stdio::null())
        .output()
        .expect("running aider (provisioned by xtask/provision.sh) under drive_aider.py")
}

#[test]
#[ignore = "kernel test: cargo xtask vm-test aider"]
fn aider_shell_commands_run_as_calls_and_read_the_feedback() {
    let d = Daemon::start_with("aider", &["--policy", policy_with_aider_reserve()]);
    let session = "aider-acceptance";
    let hog = format!("{} 1024 0 32", memhog());
    let server = ModelServer::start(
        vec![
            Turn::Bash(hog.clone()),
            Turn::Bash("cat /proc/self/cgroup".into()),
            Turn::Text("Both commands ran.".into()),
        ],
        None,
    )
    .expect("model server");
    let messages = ["Run the commands.", "Go on.", "Go on."];
    let out = aider(&d, &server, session, "512M", &messages);
    let transcript = String::from_utf8_lossy(&out.stdout);
    // The driver's timings (Aider's start, the whole run), for the VM log.
    for line in transcript
        .lines()
        .filter(|l| l.starts_with("[drive_aider]"))
    {
        eprintln!("{line}");
    }
    assert!(
        out.status.success(),
        "aider under drive_aider.py: {}\ntranscript: {transcript}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        transcript.contains("Both commands ran."),
        "the model ended with its plain reply: {transcript}"
    );
    // Aider adds "Output from CMD\nOUTPUT" to the chat, sent with the next message.
    let outputs: Vec<String> = server
        .tool_results()
        .into_iter()
        .filter(|r| r.starts_with("Output from "))
        .collect();
    assert_eq!(outputs.len(), 2, "{outputs:#?}\n{transcript}");
    let calls = d.call_records(session);
    let outcomes: Vec<&str> = calls.iter().filter_map(|c| c["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["oom_killed", "ok"], "{calls:#?}");
    let feedback = format!(
        "agentcg: call {} was stopped: it ran out of memory (mem.max {},",
        calls[0]["call_id"],
        HumanSize(calls[0]["limits"]["memory_max"].as_u64().unwrap_or(0))
    );
    assert!(
        outputs[0].starts_with(&format!("Output from {hog}\n")) && outputs[0].contains(&feedback),
        "the model reads agentcg's feedback: {}",
        outputs[0]
    );
    assert!(
        outputs[1].contains(&format!("/session-{session}/calls/call-")),
        "the command ran in a call cgroup of the session: {}",
        outputs[1]
    );
    let runtime = d.root.join(format!("session-{session}/runtime"));
    assert_eq!(
        memory_event(&runtime, "memory.events", "oom_kill"),
        0,
        "nothing in Aider's runtime cgroup was OOM-killed"
    );
    let info = d.get_ok(&format!("/v1/sessions/{session}"));
    assert_eq!(info["plan"]["memory_max"], 512u64 << 20, "{info}");
    assert_eq!(
        calls[0]["limits"]["memory_max"],
        (512u64 - 256) << 20,
        "the call's mem.max is what the session leaves its calls: {:#}",
        calls[0]
    );
    let argv: Vec<&str> = calls[0]["command"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        argv.get(1..),
        Some(&["-i", "-c", hog.as_str()][..]),
        "the call is the command as Aider handed it to its SHELL: {:#}",
        calls[0]
    );
    let exit = &calls[0]["exit"];
    assert!(
        exit["code"] == 137 || exit["signal"] == 9,
        "the shell or the command was killed: {exit}"
    );
}
