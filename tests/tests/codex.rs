//! OpenAI's Codex CLI (the real npm client, `codex exec`) started by
//! integrations/codex/agentcg-codex, with integrations/codex/bash as its user's login
//! shell, driven by the scripted model server's Responses API: every command the model
//! runs with Codex's `exec_command` tool is an agentcg call in the session, and what
//! agentcg says about a call reaches the model in the tool's output.
//!
//! Codex takes the shell from the passwd entry, not from `$SHELL`; the test gives root
//! that login shell in a mount namespace of its own (a copy of /etc/passwd bound over
//! it), so the host's passwd is untouched.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use agentcg_vmtests::model_server::{ModelServer, Turn};
use agentcg_vmtests::{Daemon, bin_dir, memhog};

/// A file of integrations/codex.
fn integration(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../integrations/codex")
        .join(file)
}

/// /etc/passwd with root's login shell replaced by `shell`.
fn passwd_with_root_shell(shell: &str) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    let lines: Vec<String> = passwd
        .lines()
        .map(|l| match l.strip_prefix("root:") {
            Some(rest) => {
                let mut fields: Vec<&str> = rest.split(':').collect();
                fields.pop();
                format!("root:{}:{shell}", fields.join(":"))
            }
            None => l.to_string(),
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("root:") && l.ends_with(shell)),
        "no root entry in /etc/passwd"
    );
    lines.join("\n") + "\n"
}

/// Codex's home: the integration's config with a provider for `server`.
fn codex_home(server: &ModelServer, session: &str) -> String {
    let home = format!("/tmp/codex-home-{session}");
    std::fs::create_dir_all(format!("{home}/work")).expect("codex's home");
    let integration_config = std::fs::read_to_string(integration("config.toml"))
        .expect("integrations/codex/config.toml");
    let provider = format!(
        "model = \"scripted\"\nmodel_provider = \"scripted\"\n\n\
         [model_providers.scripted]\nname = \"scripted\"\nbase_url = \"{}/v1\"\n\
         env_key = \"SCRIPTED_KEY\"\nwire_api = \"responses\"\n\n",
        server.url()
    );
    std::fs::write(
        format!("{home}/config.toml"),
        provider + &integration_config,
    )
    .expect("codex's config");
    home
}

/// Runs `codex exec` through agentcg-codex against `server`, in session `session`
/// (budget `memory`) of daemon `d`, with the integration's bash as root's login shell.
fn codex(d: &Daemon, server: &ModelServer, session: &str, memory: &str) -> Output {
    let home = codex_home(server, session);
    let passwd = format!("{home}/passwd");
    let shell = integration("bash").display().to_string();
    std::fs::write(&passwd, passwd_with_root_shell(&shell)).expect("the test's passwd");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // A hung client fails the test instead of the VM's timeout.
    Command::new("timeout")
        .args([
            "600",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
        ])
        .args(["sh", "-c", "mount --bind \"$0\" /etc/passwd && exec \"$@\""])
        .arg(&passwd)
        .arg(integration("agentcg-codex"))
        .args(["exec", "--skip-git-repo-check"])
        .args([
            "--dangerously-bypass-approvals-and-sandbox",
            "Run the commands.",
        ])
        .current_dir(format!("{home}/work"))
        .env("CODEX_HOME", &home)
        .env("HOME", &home)
        .env("SCRIPTED_KEY", "scripted")
        .env("PATH", path)
        .env("AGENTCG_SOCKET", &d.socket)
        .env("AGENTCG_SESSION", session)
        .env("AGENTCG_SESSION_MEMORY", memory)
        .stdin(Stdio::null())
        .output()
        .expect("running codex (provisioned by xtask/provision.sh)")
}

#[test]
#[ignore = "kernel test: cargo xtask vm-test codex"]
fn codex_commands_run_as_calls_in_the_session_and_read_the_feedback() {
    let d = Daemon::start("codex");
    let session = "codex-acceptance";
    let server = ModelServer::start(
        vec![
            Turn::Bash(format!("{} 1024 0 32", memhog())),
            Turn::Bash("cat /proc/self/cgroup; cat /proc/$PPID/cgroup".into()),
            Turn::Text("Both commands ran.".into()),
        ],
        None,
    )
    .expect("model server");
    let out = codex(&d, &server, session, "512M");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "codex: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert_eq!(
        stdout.trim(),
        "Both commands ran.",
        "codex ended its turn with the model's message: {stderr}"
    );
    let results = server.tool_results();
    assert_eq!(results.len(), 2, "two tool outputs: {results:#?}\n{stderr}");
    assert!(
        results[0].contains("was stopped:")
            && results[0].contains("ran out of memory")
            && results[0].contains("Process exited with code 137"),
        "the model reads agentcg's feedback and the exit code: {}",
        results[0]
    );
    let cgroups: Vec<&str> = results[1]
        .lines()
        .filter(|l| l.starts_with("0::"))
        .collect();
    assert!(
        cgroups
            .first()
            .is_some_and(|l| l.contains(&format!("/session-{session}/calls/call-"))),
        "the command ran in a call cgroup of the session: {}",
        results[1]
    );
    assert!(
        cgroups
            .get(1)
            .is_some_and(|l| l.ends_with(&format!("/session-{session}/runtime"))),
        "agentcg shell, forked by codex, is in the session's runtime with it: {}",
        results[1]
    );
    let info = d.get_ok(&format!("/v1/sessions/{session}"));
    assert_eq!(info["plan"]["memory_max"], 512u64 << 20, "{info}");
    let calls = d.call_records(session);
    let outcomes: Vec<&str> = calls.iter().filter_map(|c| c["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["oom_killed", "ok"], "{calls:#?}");
}
