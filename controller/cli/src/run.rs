//! `agentcg run`: declare a call, start the tool inside its cgroup with
//! clone3(CLONE_INTO_CGROUP), wait, report the end, and tell the agent what happened.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use agentcg_core::controller::CallGrant;
use agentcg_core::intent::Intent;
use agentcg_core::record::{CallRecord, ExitInfo};
use agentcg_core::spawn;
use serde_json::json;

use crate::client::{Client, ClientError};
use crate::{EXIT_AGENTCG, EXIT_USAGE, fail};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Session to run in (default: the session `default`, created on demand).
    #[arg(long, env = "AGENTCG_SESSION")]
    pub session: Option<String>,
    /// What the call needs, e.g. `mem=512M,mem.max=2G,cpu=1,timeout=10m`; also JSON
    /// or `memory:high`. Defaults to $AGENTCG_INTENT, then $AGENT_RESOURCE_HINT, then
    /// the policy's default for the command's class.
    #[arg(long)]
    pub intent: Option<String>,
    /// Write the final accounting record here as JSON.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Print the cgroup grant (limits, clamps) on stderr before running.
    #[arg(long)]
    pub verbose: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

/// The intent text: the flag, else the environment.
pub fn intent_text(flag: Option<String>) -> Option<String> {
    flag.or_else(|| {
        std::env::var("AGENTCG_INTENT")
            .ok()
            .filter(|s| !s.is_empty())
    })
    .or_else(|| {
        std::env::var("AGENT_RESOURCE_HINT")
            .ok()
            .filter(|s| !s.is_empty())
    })
}

pub fn main(client: &Client, args: RunArgs) -> ExitCode {
    let intent = intent_text(args.intent);
    run_call(
        client,
        args.session,
        intent,
        args.command,
        args.record,
        args.verbose,
    )
}

/// Declares, runs and finishes one call; shared with `agentcg shell`.
pub fn run_call(
    client: &Client,
    session: Option<String>,
    intent: Option<String>,
    command: Vec<OsString>,
    record_path: Option<PathBuf>,
    verbose: bool,
) -> ExitCode {
    // Validate locally first: a bad intent never reaches the daemon, nothing runs.
    if let Some(text) = &intent
        && let Err(e) = Intent::parse_any(text)
    {
        eprintln!("agentcg: invalid intent: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    match declare(
        client,
        session.as_deref(),
        intent.as_deref(),
        &command,
        None,
    ) {
        Ok(grant) => execute(client, &grant, &command, record_path, verbose),
        Err(e) => fail(&e),
    }
}

/// Declares a call of `command` (the argv the daemon classifies and records), with the
/// harness's id of the tool call when it has one.
pub fn declare(
    client: &Client,
    session: Option<&str>,
    intent: Option<&str>,
    command: &[OsString],
    tool_use_id: Option<&str>,
) -> Result<CallGrant, ClientError> {
    let argv: Vec<String> = command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // The token makes the declaration safe to send again after a daemon restart.
    let mut req = json!({"session": session, "command": argv, "intent": intent,
        "client_token": client_token(), "wait": false});
    if let Some(id) = tool_use_id {
        req["tool_use_id"] = json!(id);
    }
    // Asked first without waiting, so that a call that must wait for memory says so
    // (one line) before it waits in agentcgd's queue.
    let reply = match client.post("/v1/calls", &req) {
        Err(ClientError::Api { code, message, .. }) if code == "queued" => {
            eprintln!("agentcg: queued, {message}");
            req["wait"] = json!(true);
            client.post("/v1/calls", &req)?
        }
        other => other?,
    };
    serde_json::from_value(reply)
        .map_err(|e| ClientError::Protocol(format!("unexpected reply from agentcgd: {e}")))
}

/// Runs `command` inside a granted call's cgroup, waits, reports the end and prints the
/// feedback; returns the tool's exit status as a shell would. The end is always
/// reported, a clean one too: agentcgd's kernel telemetry usually sees the tool exit
/// first, but the kernel skips a tracing program's run now and then
/// (docs/ARCHITECTURE.md#telemetry), and a call whose exit went unseen and unreported
/// would end `abandoned` 30 s later. The report is idempotent.
pub fn execute(
    client: &Client,
    grant: &CallGrant,
    command: &[OsString],
    record_path: Option<PathBuf>,
    verbose: bool,
) -> ExitCode {
    if verbose {
        eprintln!("agentcg: call {} in {}", grant.call_id, grant.cgroup);
    }
    for c in &grant.clamps {
        eprintln!(
            "agentcg: {} clamped from {} to {}: {}",
            c.field, c.requested, c.granted, c.reason
        );
    }
    // While the tool runs, Ctrl-C and Ctrl-\ are the tool's business; we must stay to
    // report its end (the child restores the default handlers before exec).
    // SAFETY: setting signal dispositions of our own process.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let (exit, spawn_error) = match spawn::spawn_in_cgroup(
        grant.cgroup.as_ref(),
        command,
        Some(grant.limits.oom_score_adj),
    )
    .and_then(spawn::wait)
    {
        Ok(exit) => (exit, None),
        Err(e) => (
            ExitInfo {
                code: Some(e.exit_status()),
                signal: None,
            },
            Some(e),
        ),
    };
    if let Some(e) = &spawn_error {
        eprintln!("agentcg: {e}");
    }
    let finished = client.post(
        &format!("/v1/calls/{}/finish", grant.call_id),
        &json!({"exit": exit}),
    );
    // The daemon could not make the record durable yet (it keeps retrying).
    let warning = finished
        .as_ref()
        .ok()
        .and_then(|v| v["warning"].as_str().map(str::to_string));
    let record: CallRecord = match finished.map(serde_json::from_value) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("agentcg: unexpected record from agentcgd: {e}");
            return ExitCode::from(EXIT_AGENTCG);
        }
        Err(e) => {
            eprintln!("agentcg: reporting the end of call {}: {e}", grant.call_id);
            return ExitCode::from(exit_byte(exit.shell_status()));
        }
    };
    if let Some(f) = &record.feedback {
        eprintln!("{}", f.message);
    }
    if let Some(w) = &warning {
        eprintln!("agentcg: warning: {w}");
    }
    if let Some(path) = record_path {
        let text = serde_json::to_string_pretty(&record).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("agentcg: writing record {}: {e}", path.display());
            return ExitCode::from(EXIT_AGENTCG);
        }
    }
    ExitCode::from(exit_byte(exit.shell_status()))
}

/// A token unique to this declaration: pid, time and a per-process counter.
fn client_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn exit_byte(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(255)
}
