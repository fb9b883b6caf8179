//! harnessbench: the guest side of `cargo xtask bench harness` (xtask/src/bench/harness.rs).
//!
//! Starts one agentcgd (its sched_ext scheduler attached for every arm), then runs the
//! real Claude Code CLI (`claude -p`) through the same scripted session of N Bash tool
//! calls against the scripted model server, once per arm per round, the arms' order
//! rotated by one each round: `bare` (no shell prefix), `agentcg`
//! (`CLAUDE_CODE_SHELL_PREFIX=agentcg-claude`) and `agentcg-hook` (the prefix and its
//! PreToolUse hook, as integrations/claude-code/settings.json has them). Per session it
//! writes the model server's timed exchanges, claude's exit and wall time, and what went
//! wrong, if anything (claude failed, a tool result missing, failed or wrong, an agentcg
//! call missing); the host pairs the timestamps and computes the statistics. Then the
//! prefix alone, outside claude: `bash -c STRING` against `agentcg-claude STRING` on a
//! command string wrapped as Claude Code wraps it, interleaved.
//!
//! `harnessbench --calls N --rounds R --warmup W --arms A,B --prefix-runs M
//! --timeout SECS --out FILE`

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, ExitCode, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentcg_vmtests::model_server::{Exchange, ModelServer, Turn};
use agentcg_vmtests::{Daemon, bin_dir};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// The arms a run may have.
const ARMS: [&str; 3] = ["bare", "agentcg", "agentcg-hook"];

#[derive(Debug)]
struct Args {
    calls: usize,
    rounds: usize,
    warmup: usize,
    arms: Vec<String>,
    prefix_runs: usize,
    timeout: Duration,
    out: String,
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut get = HashMap::new();
    for pair in argv.chunks(2) {
        match pair {
            [k, v] if k.starts_with("--") => {
                get.insert(k.trim_start_matches("--").to_string(), v.clone());
            }
            _ => return Err(format!("expected --KEY VALUE pairs, got {pair:?}")),
        }
    }
    let num = |k: &str| -> Result<usize, String> {
        let v = get.get(k).ok_or(format!("--{k} is required"))?;
        v.parse()
            .map_err(|_| format!("--{k} {v}: expected a number"))
    };
    let arms: Vec<String> = get
        .get("arms")
        .ok_or("--arms is required")?
        .split(',')
        .map(str::to_string)
        .collect();
    if let Some(bad) = arms.iter().find(|a| !ARMS.contains(&a.as_str())) {
        return Err(format!("--arms: unknown arm {bad} (known: {ARMS:?})"));
    }
    Ok(Args {
        calls: num("calls")?,
        rounds: num("rounds")?,
        warmup: num("warmup")?,
        arms,
        prefix_runs: num("prefix-runs")?,
        timeout: Duration::from_secs(num("timeout")? as u64),
        out: get.get("out").ok_or("--out is required")?.clone(),
    })
}

/// Tool call `i` of the script: a short command and a text its result must contain.
fn command(i: usize) -> (String, Option<String>) {
    match i % 4 {
        0 => ("true".into(), None),
        1 => ("ls /usr".into(), Some("bin".into())),
        2 => (
            "python3 -c 'print(sum(range(1000)))'".into(),
            Some("499500".into()),
        ),
        _ => (format!("echo hbench-{i}"), Some(format!("hbench-{i}"))),
    }
}

fn script(calls: usize) -> Vec<Turn> {
    (0..calls)
        .map(|i| Turn::Bash(command(i).0))
        .chain([Turn::Text("All commands ran.".into())])
        .collect()
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("harnessbench: {e}");
            return ExitCode::from(2);
        }
    };
    let d = Daemon::start("hbench");
    let mut sessions = Vec::new();
    for round in 0..args.warmup + args.rounds {
        let warmup = round < args.warmup;
        for k in 0..args.arms.len() {
            let arm = &args.arms[(round + k) % args.arms.len()];
            let n = sessions.len();
            let s = session(&d, &args, arm, n);
            eprintln!(
                "harnessbench: round {round}{} {arm}: {} s, {}",
                if warmup { " (warm-up)" } else { "" },
                s["wall_ns"].as_u64().unwrap_or(0) / 1_000_000_000,
                s["error"].as_str().unwrap_or("ok")
            );
            sessions.push(json!({"round": round, "warmup": warmup, "session": s}));
        }
    }
    let prefix = prefix_alone(&d, args.prefix_runs);
    let doc = json!({
        "calls": args.calls, "rounds": args.rounds, "warmup": args.warmup,
        "arms": args.arms,
        "commands": (0..args.calls).map(|i| command(i).0).collect::<Vec<_>>(),
        "sessions": sessions, "prefix_alone": prefix,
    });
    match std::fs::write(&args.out, doc.to_string()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("harnessbench: cannot write {}: {e}", args.out);
            ExitCode::FAILURE
        }
    }
}

/// One scripted claude session of `arm`; the conversation id is the `n`th.
fn session(d: &Daemon, args: &Args, arm: &str, n: usize) -> Value {
    let conversation = format!("5b0c2a1e-0000-4000-8000-{n:012}");
    let server = match ModelServer::start(script(args.calls), None) {
        Ok(s) => s,
        Err(e) => return json!({"arm": arm, "wall_ns": 0, "error": format!("model server: {e}")}),
    };
    let home = format!("/tmp/hbench-{conversation}");
    let prefixed = arm != "bare";
    let mut cmd = claude_command(d, &server, &conversation, &home, arm);
    let (out, wall) = match setup(&home, arm).and_then(|()| run(&mut cmd, args.timeout)) {
        Ok(r) => r,
        Err(e) => return json!({"arm": arm, "wall_ns": 0, "error": e}),
    };
    let mut error = claude_error(&out).or_else(|| results_error(&server, args.calls));
    let mut agentcg_calls = None;
    if prefixed {
        let (calls, e) = agentcg_calls_of(d, &format!("claude-{conversation}"), args.calls);
        agentcg_calls = Some(calls);
        error = error.or(e);
    }
    let _ = std::fs::remove_dir_all(&home);
    json!({
        "arm": arm, "conversation": conversation, "exit_code": out.status.code(),
        "wall_ns": wall.as_nanos() as u64, "error": error, "agentcg_calls": agentcg_calls,
        "exchanges": server.exchanges().iter().map(exchange_json).collect::<Vec<_>>(),
    })
}

fn exchange_json(e: &Exchange) -> Value {
    json!({"received_ns": e.received.as_nanos() as u64, "sent_ns": e.sent.as_nanos() as u64,
           "tool_use_id": e.tool_use_id, "result_ids": e.result_ids})
}

/// claude's home for one session; `agentcg-hook` gets the PreToolUse hook.
fn setup(home: &str, arm: &str) -> Result<(), String> {
    let dir = format!("{home}/.claude");
    std::fs::create_dir_all(format!("{home}/work"))
        .and_then(|()| std::fs::create_dir_all(&dir))
        .map_err(|e| format!("creating {dir}: {e}"))?;
    if arm == "agentcg-hook" {
        let hook = format!(
            "{} --hook pre-tool-use",
            bin_dir().join("agentcg-claude").display()
        );
        let settings = json!({"hooks": {"PreToolUse": [{"matcher": "Bash",
            "hooks": [{"type": "command", "command": hook}]}]}});
        let path = format!("{dir}/settings.json");
        std::fs::write(&path, settings.to_string()).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// The same `claude -p` in every arm; only the agentcg arms have the shell prefix.
fn claude_command(
    d: &Daemon,
    server: &ModelServer,
    conversation: &str,
    home: &str,
    arm: &str,
) -> Command {
    let mut cmd = Command::new("claude");
    cmd.args(["-p", "Run the commands.", "--allowedTools", "Bash"])
        .args(["--output-format", "json", "--session-id", conversation])
        .current_dir(format!("{home}/work"))
        .env("HOME", home)
        .env("AGENTCG_SOCKET", &d.socket)
        .env("ANTHROPIC_BASE_URL", server.url())
        .env("ANTHROPIC_API_KEY", "scripted")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if arm != "bare" {
        cmd.env("CLAUDE_CODE_SHELL_PREFIX", bin_dir().join("agentcg-claude"));
    }
    cmd
}

/// Runs `cmd` to its exit, killing it after `timeout`; its output and wall time.
fn run(cmd: &mut Command, timeout: Duration) -> Result<(Output, Duration), String> {
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("starting claude: {e}"))?;
    let pid = Pid::from_raw(child.id() as i32);
    let (done, wait) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let expired = wait.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout);
        if expired {
            let _ = kill(pid, Signal::SIGKILL);
        }
        expired
    });
    let out = child.wait_with_output();
    let wall = start.elapsed();
    let _ = done.send(());
    let expired = watchdog.join().unwrap_or(false);
    let out = out.map_err(|e| format!("waiting for claude: {e}"))?;
    if expired {
        return Err(format!(
            "claude ran past {} s and was killed",
            timeout.as_secs()
        ));
    }
    Ok((out, wall))
}

/// Why claude's run failed, if it did: a non-zero exit or no successful result.
fn claude_error(out: &Output) -> Option<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail = |s: &str| {
        s.chars()
            .rev()
            .take(400)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
    };
    if !out.status.success() {
        return Some(format!(
            "claude exited with {}: {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (result["subtype"] != "success")
        .then(|| format!("claude's result is not a success: {}", tail(&stdout)))
}

/// Why the tool results are not what the script asked for, if they are not: every call
/// has a result, none is an error, each has its expected text.
fn results_error(server: &ModelServer, calls: usize) -> Option<String> {
    let mut results: HashMap<String, (bool, String)> = HashMap::new();
    for req in server.requests() {
        let messages = req["messages"].as_array().cloned().unwrap_or_default();
        for b in messages
            .iter()
            .filter_map(|m| m["content"].as_array())
            .flatten()
            .filter(|b| b["type"] == "tool_result")
        {
            let id = b["tool_use_id"].as_str().unwrap_or_default().to_string();
            let text = match &b["content"] {
                Value::String(s) => s.clone(),
                c => c.to_string(),
            };
            results.entry(id).or_insert((b["is_error"] == true, text));
        }
    }
    (0..calls).find_map(|i| {
        let id = format!("toolu_{i:04}");
        let (cmd, expected) = command(i);
        match results.get(&id) {
            None => Some(format!("tool call {i} (`{cmd}`) has no tool result")),
            Some((true, text)) => Some(format!("tool call {i} (`{cmd}`) failed: {text}")),
            Some((false, text)) => expected
                .filter(|e| !text.contains(e.as_str()))
                .map(|e| format!("tool call {i} (`{cmd}`): no `{e}` in its result: {text}")),
        }
    })
}

/// The session's agentcg calls, and why they are not `calls` calls ended `ok`; then
/// closes the session and waits for its cgroup to go (outside the session's clock).
fn agentcg_calls_of(d: &Daemon, session: &str, calls: usize) -> (usize, Option<String>) {
    let out = d.agentcg(&["call", "list", "--session", session, "--json"]);
    let records: Vec<Value> = serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let ok = records.iter().filter(|r| r["outcome"] == "ok").count();
    let mut error = (ok != calls).then(|| {
        format!(
            "{ok} of {calls} agentcg calls ended ok in {session} ({} records): {}",
            records.len(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    error = error.or_else(|| close(d, session));
    (records.len(), error)
}

/// Closes `session` and waits up to 10 s for its cgroup to be removed.
fn close(d: &Daemon, session: &str) -> Option<String> {
    let out = d.agentcg(&["session", "close", session]);
    if !out.status.success() {
        return Some(format!(
            "agentcg session close {session}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let dir = d.root.join(format!("session-{session}"));
    let start = Instant::now();
    while dir.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            return Some(format!("{} still there 10 s after close", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The prefix alone: `bash -c STRING` and `agentcg-claude STRING`, `runs` each in
/// alternating order after one unrecorded run of each, STRING wrapped as Claude Code
/// wraps a command. Wall time of each run, `null` for a failed one.
fn prefix_alone(d: &Daemon, runs: usize) -> Value {
    let string = "eval 'true' < /dev/null && pwd -P >| /tmp/hbench-cwd";
    let conversation = "hbench-prefix";
    let time = |prefixed: bool| -> Option<u64> {
        let mut cmd = if prefixed {
            let mut c = Command::new(bin_dir().join("agentcg-claude"));
            c.env("CLAUDE_CODE_SESSION_ID", conversation)
                .env("AGENTCG_SOCKET", &d.socket);
            c
        } else {
            let mut c = Command::new("/bin/bash");
            c.arg("-c");
            c
        };
        cmd.arg(string)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let start = Instant::now();
        let ok = cmd.status().is_ok_and(|s| s.success());
        ok.then(|| start.elapsed().as_nanos() as u64)
    };
    time(false);
    time(true);
    let (mut bash, mut prefix) = (Vec::new(), Vec::new());
    for k in 0..runs {
        for prefixed in [k % 2 == 1, k % 2 == 0] {
            let t = time(prefixed);
            if prefixed { &mut prefix } else { &mut bash }.push(t);
        }
    }
    let closed = close(d, &format!("claude-{conversation}"));
    let _ = std::fs::remove_file(Path::new("/tmp/hbench-cwd"));
    json!({"runs": runs, "string": string, "bash_ns": bash, "prefix_ns": prefix,
           "error": closed})
}
