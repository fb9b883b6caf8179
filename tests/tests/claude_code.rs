//! Claude Code (the real npm client, `claude -p`) with `CLAUDE_CODE_SHELL_PREFIX` set
//! to agentcg-claude, driven by the scripted model server: every Bash tool call is an
//! agentcg call in the session named after the conversation, and what agentcg says
//! about a call reaches the model in its tool result.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use agentcg_vmtests::model_server::{ModelServer, Turn};
use agentcg_vmtests::{Daemon, bin_dir, memhog};
use serde_json::Value;

/// Runs `claude -p` for `conversation` (a UUID) against `server`, with agentcg-claude
/// as its shell prefix talking to `d`, and `env` added; returns its output.
fn claude(d: &Daemon, server: &ModelServer, conversation: &str, env: &[(&str, &str)]) -> Output {
    let home = format!("/tmp/claude-home-{conversation}");
    let work = format!("{home}/work");
    std::fs::create_dir_all(&work).expect("claude's home and working directory");
    // The PreToolUse hook of integrations/claude-code/settings.json, in the user settings.
    let hook = format!(
        "{} --hook pre-tool-use",
        bin_dir().join("agentcg-claude").display()
    );
    let settings = serde_json::json!({"hooks": {"PreToolUse": [{"matcher": "Bash",
        "hooks": [{"type": "command", "command": hook}]}]}});
    std::fs::create_dir_all(format!("{home}/.claude")).expect("claude's settings directory");
    std::fs::write(
        format!("{home}/.claude/settings.json"),
        settings.to_string(),
    )
    .expect("claude's settings");
    Command::new("claude")
        .args(["-p", "Run the commands.", "--allowedTools", "Bash"])
        .args(["--output-format", "json", "--session-id", conversation])
        .current_dir(&work)
        .env("HOME", &home)
        .env("CLAUDE_CODE_SHELL_PREFIX", bin_dir().join("agentcg-claude"))
        .env("AGENTCG_SOCKET", &d.socket)
        .env("ANTHROPIC_BASE_URL", server.url())
        .env("ANTHROPIC_API_KEY", "scripted")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running claude (provisioned by xtask/provision.sh)")
}

/// Claude's final JSON result, asserting it exited 0 with a successful turn.
fn succeeded(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "claude: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim()).expect("claude's JSON result");
    assert_eq!(result["subtype"], "success", "{result}");
    result
}

#[test]
#[ignore = "kernel test: cargo xtask vm-test claude_code"]
fn claude_code_tool_calls_run_in_a_conversation_session_and_read_the_feedback() {
    let d = Daemon::start("claude");
    let conversation = "5b0c2a1e-0000-4000-8000-000000000001";
    let session = format!("claude-{conversation}");
    let server = ModelServer::start(
        vec![
            Turn::Bash(format!("{} 1024 0 32", memhog())),
            Turn::Bash("cat /proc/self/cgroup; cat /proc/$CLAUDE_PID/cgroup".into()),
            Turn::Text("Both commands ran.".into()),
        ],
        None,
    )
    .expect("model server");
    let out = claude(
        &d,
        &server,
        conversation,
        &[("AGENTCG_SESSION_MEMORY", "512M")],
    );
    succeeded(&out);
    let results = server.tool_results();
    assert_eq!(results.len(), 2, "two tool results: {results:#?}");
    assert!(
        results[0].contains("was stopped:")
            && results[0].contains("ran out of memory")
            && results[0].contains("Exit code 137"),
        "the model reads agentcg's feedback and the exit code: {}",
        results[0]
    );
    let lines: Vec<&str> = results[1].lines().collect();
    let call_cgroup = format!("/session-{session}/calls/call-");
    assert!(
        lines.first().is_some_and(|l| l.contains(&call_cgroup)),
        "the tool ran in a call cgroup of the conversation's session: {}",
        results[1]
    );
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.ends_with(&format!("/session-{session}/runtime"))),
        "claude (CLAUDE_PID) is the session's runtime: {}",
        results[1]
    );
    let plan = d.get_ok(&format!("/v1/sessions/{session}"));
    assert_eq!(plan["plan"]["memory_max"], 512u64 << 20, "{plan}");
    let calls = d.call_records(&session);
    let outcomes: Vec<&str> = calls.iter().filter_map(|c| c["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["oom_killed", "ok"], "{calls:#?}");
    let ids: Vec<&str> = calls
        .iter()
        .filter_map(|c| c["tool_use_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["toolu_0000", "toolu_0001"],
        "the PreToolUse hook labels each call with its tool_use_id: {calls:#?}"
    );
    let listed = d.agentcg(&["call", "list", "--session", &session]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("oom_killed") && text.contains("ok"), "{text}");
}

/// The policy of the fork-bomb test: the default one, with calls that declare nothing
/// limited to 32 processes (the emulated VM forks slowly; the host's 1024 would take
/// it minutes to reach).
const FORK_POLICY_PIDS: u64 = 32;

#[test]
#[ignore = "kernel test: cargo xtask vm-test claude_code"]
fn claude_code_fork_bomb_in_a_bash_call_ends_as_pids_limited_and_claude_finishes() {
    let default_call = "intent = \"mem=256M,mem.max=1G,pids=1024,timeout=30m\"";
    let policy_text = include_str!("../../policies/default.toml");
    assert!(
        policy_text.contains(default_call),
        "the default call intent moved"
    );
    let policy = "/tmp/claude-fork-policy.toml";
    std::fs::write(
        policy,
        policy_text.replace(
            default_call,
            &default_call.replace("pids=1024", &format!("pids={FORK_POLICY_PIDS}")),
        ),
    )
    .expect("writing the test policy");
    let d = Daemon::start_with("claude-fork", &["--policy", policy]);
    let conversation = "5b0c2a1e-0000-4000-8000-000000000002";
    let session = format!("claude-{conversation}");
    let server = ModelServer::start(
        vec![
            Turn::Bash(":(){ :|:& };:".into()),
            Turn::Text("The fork bomb was stopped.".into()),
        ],
        None,
    )
    .expect("model server");
    let out = claude(&d, &server, conversation, &[]);
    let result = succeeded(&out);
    assert_eq!(result["result"], "The fork bomb was stopped.", "{result}");
    let results = server.tool_results();
    assert_eq!(results.len(), 1, "{results:#?}");
    assert!(
        results[0].contains("was stopped: it could not start more processes")
            && results[0].contains(&format!("(pids {FORK_POLICY_PIDS}")),
        "the model reads why: {}",
        results[0]
    );
    let calls = d.call_records(&session);
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0]["outcome"], "pids_limited", "{:#}", calls[0]);
    assert_eq!(calls[0]["limits"]["pids_max"], FORK_POLICY_PIDS);
    assert!(calls[0]["accounting"]["pids_limit_hits"].as_u64() > Some(0));
    assert!(
        calls[0]["leftover_killed"].as_u64() > Some(0),
        "the bomb's processes were killed: {:#}",
        calls[0]
    );
    assert!(wait_empty(&d, &session), "the bomb's cgroup is removed");
}

/// Whether the session's call cgroups are all removed within 10 s.
fn wait_empty(d: &Daemon, session: &str) -> bool {
    let calls = d.root.join(format!("session-{session}/calls"));
    (0..100).any(|_| {
        let empty = Daemon::child_cgroups(&calls).is_empty();
        if !empty {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        empty
    })
}

#[test]
#[ignore = "kernel test: cargo xtask vm-test claude_code"]
fn claude_code_intents_written_by_the_model_are_honoured_and_shell_syntax_is_refused() {
    let d = Daemon::start("claude-intent");
    let conversation = "5b0c2a1e-0000-4000-8000-000000000003";
    let session = format!("claude-{conversation}");
    let marker = "/tmp/claude-intent-ran";
    let _ = std::fs::remove_file(marker);
    let server = ModelServer::start(
        vec![
            Turn::Bash(
                "AGENTCG_INTENT=mem.max=300M cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max"
                    .into(),
            ),
            Turn::Bash(format!("AGENTCG_INTENT='$(touch {marker})' ls")),
            Turn::Text("Done.".into()),
        ],
        None,
    )
    .expect("model server");
    let out = claude(&d, &server, conversation, &[]);
    succeeded(&out);
    let results = server.tool_results();
    assert_eq!(results.len(), 2, "{results:#?}");
    assert!(
        results[0]
            .lines()
            .any(|l| l.trim() == (300u64 << 20).to_string()),
        "the declared mem.max is the call's memory.max: {}",
        results[0]
    );
    assert!(
        results[1].contains("shell syntax ($( )) is not evaluated, so nothing was run"),
        "the refusal is what the model reads: {}",
        results[1]
    );
    assert!(!Path::new(marker).exists(), "the refused command ran");
    let calls = d.call_records(&session);
    assert_eq!(
        calls.len(),
        1,
        "only the honoured intent made a call: {calls:#?}"
    );
    assert_eq!(
        calls[0]["intent"]["mem_max"],
        300u64 << 20,
        "{:#}",
        calls[0]
    );
    assert_eq!(
        calls[0]["command"][2], "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max",
        "the record holds the command without its intent"
    );
}
