//! mini-swe-agent (the real PyPI package, `mini`) with the agentcg environment class
//! (integrations/mini-swe-agent/agentcg_mini.py), driven by the scripted model server's
//! OpenAI-compatible API through mini's litellm-free client (tests/python/
//! scripted_model.py): every command is an agentcg call in the environment's session,
//! and agentcg's feedback reaches the model in the command's observation.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use agentcg_vmtests::model_server::{ModelServer, Turn};
use agentcg_vmtests::{Daemon, bin_dir, memhog};
use serde_json::Value;

/// The `mini` script: on PATH, else in a pyenv version (pip3 of the provisioning may be
/// pyenv's, whose directories the VM's PATH lacks).
fn mini_program() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Ok(versions) = std::fs::read_dir("/root/.pyenv/versions") {
        dirs.extend(
            versions
                .filter_map(Result::ok)
                .map(|v| v.path().join("bin")),
        );
    }
    dirs.into_iter()
        .map(|d| d.join("mini"))
        .find(|p| p.is_file())
        .expect("mini (PyPI mini-swe-agent, installed by xtask/provision.sh) on PATH")
}

/// The integration and the test's model client, for PYTHONPATH.
fn python_path() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    format!(
        "{}:{}",
        root.join("../integrations/mini-swe-agent").display(),
        root.join("python").display()
    )
}

/// Runs `mini` on a one-line task against `server`, with agentcg's environment in
/// session `session` (budget `memory`) of daemon `d`.
fn mini(d: &Daemon, server: &ModelServer, session: &str, memory: &str) -> Output {
    let home = format!("/tmp/mini-home-{session}");
    std::fs::create_dir_all(&home).expect("mini's home");
    let set = |k: &str, v: &str| format!("{k}={v}");
    // A hung client fails the test instead of the VM's timeout.
    Command::new("timeout")
        .arg("600")
        .arg(mini_program())
        .args(["-m", "scripted", "-t", "Run the commands.", "--yolo"])
        .args(["--model-class", "scripted_model.ScriptedModel"])
        .args(["--exit-immediately", "--cost-limit", "0", "-o"])
        .arg(format!("{home}/trajectory.json"))
        .args(["-c", "mini.yaml", "-c"])
        .arg(set(
            "environment.environment_class",
            "agentcg_mini.AgentcgEnvironment",
        ))
        .arg("-c")
        .arg(set("environment.session", session))
        .arg("-c")
        .arg(set("environment.session_memory", memory))
        .arg("-c")
        .arg(set(
            "environment.agentcg",
            &bin_dir().join("agentcg").to_string_lossy(),
        ))
        .current_dir(&home)
        .env("PYTHONPATH", python_path())
        .env("SCRIPTED_MODEL_URL", server.url())
        .env("HOME", &home)
        .env("MSWEA_GLOBAL_CONFIG_DIR", &home)
        .env("MSWEA_CONFIGURED", "true")
        .env("MSWEA_COST_TRACKING", "ignore_errors")
        .env("AGENTCG_SOCKET", &d.socket)
        .stdin(Stdio::null())
        .output()
        .expect("running mini (provisioned by xtask/provision.sh)")
}

#[test]
#[ignore = "kernel test: cargo xtask vm-test mini_swe_agent"]
fn mini_swe_agent_commands_run_as_calls_and_read_the_feedback() {
    let d = Daemon::start("mini");
    let session = "mini-acceptance";
    let server = ModelServer::start(
        vec![
            Turn::Bash(format!("{} 1024 0 32", memhog())),
            Turn::Bash("cat /proc/self/cgroup".into()),
            Turn::Bash("echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT".into()),
        ],
        None,
    )
    .expect("model server");
    let out = mini(&d, &server, session, "512M");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mini: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let results = server.tool_results();
    assert!(results.len() >= 2, "{results:#?}\n{stdout}");
    assert!(
        results[0].contains("was stopped:")
            && results[0].contains("ran out of memory")
            && results[0].contains("\"returncode\": 137"),
        "the model reads agentcg's feedback and the exit code: {}",
        results[0]
    );
    assert!(
        results[1].contains(&format!("/session-{session}/calls/call-")),
        "the command ran in a call cgroup of the session: {}",
        results[1]
    );
    let out = d.agentcg(&["call", "list", "--session", session, "--json"]);
    let calls: Value = serde_json::from_slice(&out.stdout).expect("call list --json");
    let mut outcomes: Vec<(u64, String)> = calls
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| (c["call_id"].as_u64().unwrap_or(0), c["outcome"].to_string()))
        .collect();
    outcomes.sort();
    let outcomes: Vec<&str> = outcomes.iter().map(|(_, o)| o.trim_matches('"')).collect();
    assert_eq!(outcomes, ["oom_killed", "ok", "ok"], "{calls:#}");
    let info = d.get_ok(&format!("/v1/sessions/{session}"));
    assert_eq!(info["plan"]["memory_max"], 512u64 << 20, "{info}");
}
