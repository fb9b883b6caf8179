//! `agentcg-claude`: Claude Code's `CLAUDE_CODE_SHELL_PREFIX`. Claude Code runs each
//! Bash tool command as `agentcg-claude '<command string>'`; this makes it one agentcg
//! call in the session `claude-<CLAUDE_CODE_SESSION_ID>` (created on first use, with
//! the agent process `CLAUDE_PID` as its runtime), runs the string with bash inside the
//! call's cgroup, and prints agentcg's feedback on stderr, which the model reads in
//! its tool result. An intent the model writes at the start of its command
//! (`AGENTCG_INTENT=mem.max=2G pytest`) is read and removed without a shell
//! (`command`); without one the policy's default for the command's class applies. Its
//! `PreToolUse` hook (`hook`) labels each call with Claude Code's `tool_use_id`.

pub mod command;
pub mod hook;

use std::ffi::OsString;
use std::process::ExitCode;

use agentcg_core::intent::Intent;
use serde_json::{Value, json};

use crate::client::{Client, ClientError};
use crate::run::{declare, execute, intent_text};
use crate::written_intent::take_intent;
use crate::{EXIT_AGENTCG, EXIT_USAGE, fail};

/// Sessions made for Claude Code conversations are named `claude-<conversation id>`.
pub const SESSION_PREFIX: &str = "claude-";
/// The shell that runs the command string (Claude Code writes bash).
const BASH: &str = "/bin/bash";

/// What agentcg-claude takes from the environment Claude Code gives its tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolEnv {
    /// `CLAUDE_CODE_SESSION_ID`: the conversation.
    pub conversation: String,
    /// `CLAUDE_PID`: the claude process, the session's runtime.
    pub runtime_pid: Option<u32>,
}

/// Problems with how agentcg-claude was started; the text is what the model reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error(
        "CLAUDE_CODE_SESSION_ID is not set: agentcg-claude runs as Claude Code's CLAUDE_CODE_SHELL_PREFIX (integrations/claude-code/); for other uses run `agentcg run`"
    )]
    NoConversation,
    #[error("expected one argument, the command string (as Claude Code passes it), got {0}")]
    Arguments(usize),
    #[error("the command string is not valid UTF-8")]
    NotUtf8,
    #[error("{var}={value}: {reason}; nothing was run")]
    BadSessionSetting {
        var: &'static str,
        value: String,
        reason: String,
    },
}

impl ToolEnv {
    /// Reads the tool environment through `get` (the process environment in use).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<ToolEnv, PrefixError> {
        let conversation = get("CLAUDE_CODE_SESSION_ID")
            .filter(|s| !s.is_empty())
            .ok_or(PrefixError::NoConversation)?;
        let runtime_pid = get("CLAUDE_PID").and_then(|p| p.parse().ok());
        Ok(ToolEnv {
            conversation,
            runtime_pid,
        })
    }

    pub fn session(&self) -> String {
        format!("{SESSION_PREFIX}{}", self.conversation)
    }
}

/// The session-creation request: the conversation's name, the runtime, and the budget
/// the operator configured in Claude Code's environment (`AGENTCG_SESSION_PRIORITY`,
/// `_MEMORY`, `_CPUS`, `_PIDS`; each absent one is the policy's default).
pub fn session_request(
    env: &ToolEnv,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Value, PrefixError> {
    let mut req = json!({"name": env.session(), "runtime_pid": env.runtime_pid});
    let bad = |var: &'static str, value: &str, reason: &str| PrefixError::BadSessionSetting {
        var,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    if let Some(p) = get("AGENTCG_SESSION_PRIORITY") {
        req["priority"] = json!(p);
    }
    if let Some(m) = get("AGENTCG_SESSION_MEMORY") {
        req["memory"] = json!(m);
    }
    if let Some(c) = get("AGENTCG_SESSION_CPUS") {
        let cpus: f64 = c
            .parse()
            .map_err(|_| bad("AGENTCG_SESSION_CPUS", &c, "expected a number of CPUs"))?;
        req["cpus"] = json!(cpus);
    }
    if let Some(p) = get("AGENTCG_SESSION_PIDS") {
        let pids: u32 = p
            .parse()
            .map_err(|_| bad("AGENTCG_SESSION_PIDS", &p, "expected a process count"))?;
        req["pids"] = json!(pids);
    }
    Ok(req)
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

/// `agentcg-claude '<command string>'`.
pub fn prefix_main(client: &Client, args: Vec<OsString>) -> ExitCode {
    let refuse = |e: &dyn std::fmt::Display, code: u8| {
        eprintln!("agentcg: {e}");
        ExitCode::from(code)
    };
    if let [string] = args.as_slice()
        && let Some(event) = string.to_str().and_then(hook::own_invocation)
    {
        return hook::main(event);
    }
    let env = match ToolEnv::from_lookup(env_var) {
        Ok(e) => e,
        Err(e) => return refuse(&e, EXIT_AGENTCG),
    };
    let [string] = args.as_slice() else {
        return refuse(&PrefixError::Arguments(args.len()), EXIT_AGENTCG);
    };
    let Some(string) = string.to_str() else {
        return refuse(&PrefixError::NotUtf8, EXIT_AGENTCG);
    };
    let wrapped = command::split_wrapped(string);
    let (tool_use_id, labelled) = hook::take_tool_use_id(&wrapped.command);
    let (written, model_command) = match take_intent(&labelled) {
        Ok(t) => t,
        Err(e) => return refuse(&e, EXIT_USAGE),
    };
    let intent = written.clone().or_else(|| intent_text(None));
    if let Some(text) = &intent
        && let Err(e) = Intent::parse_any(text)
    {
        let from = if written.is_some() {
            "the intent written before the command"
        } else {
            "AGENTCG_INTENT / AGENT_RESOURCE_HINT"
        };
        return refuse(
            &format!("invalid intent `{text}` ({from}): {e}; nothing was run"),
            EXIT_USAGE,
        );
    }
    // The daemon classifies and records the model's command; bash runs the whole string.
    let declared: Vec<OsString> = vec![BASH.into(), "-c".into(), model_command.clone().into()];
    let run: Vec<OsString> = vec![
        BASH.into(),
        "-c".into(),
        wrapped.rebuild(&model_command).into(),
    ];
    let session = env.session();
    let grant = match declare(
        client,
        Some(&session),
        intent.as_deref(),
        &declared,
        tool_use_id.as_deref(),
    ) {
        Err(e) if e.code() == Some("no_such_session") => {
            match create_session(client, &env).and_then(|()| {
                declare(
                    client,
                    Some(&session),
                    intent.as_deref(),
                    &declared,
                    tool_use_id.as_deref(),
                )
                .map_err(Failure::from)
            }) {
                Ok(g) => g,
                Err(Failure::Setting(e)) => return refuse(&e, EXIT_USAGE),
                Err(Failure::Client(e)) => return fail(&e),
            }
        }
        Err(e) => return fail(&e),
        Ok(g) => g,
    };
    // The record is always fetched: its feedback is what the model reads.
    execute(client, &grant, &run, None, false)
}

/// Why a call could not be declared.
#[derive(Debug)]
enum Failure {
    Setting(PrefixError),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

/// Creates the conversation's session with its runtime; one created meanwhile by a
/// concurrent call of the same conversation is as good.
fn create_session(client: &Client, env: &ToolEnv) -> Result<(), Failure> {
    let req = session_request(env, env_var).map_err(Failure::Setting)?;
    match client.post("/v1/sessions", &req) {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("session_exists") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_session_is_named_after_the_conversation_with_claude_as_runtime() {
        let env = ToolEnv::from_lookup(lookup(&[
            ("CLAUDE_CODE_SESSION_ID", "ed99bb94-2ef6"),
            ("CLAUDE_PID", "23802"),
        ]))
        .expect("env");
        assert_eq!(env.session(), "claude-ed99bb94-2ef6");
        let req = session_request(&env, lookup(&[])).expect("request");
        assert_eq!(
            req,
            json!({"name": "claude-ed99bb94-2ef6", "runtime_pid": 23802})
        );
    }

    #[test]
    fn a_configured_budget_goes_into_the_session() {
        let env = ToolEnv {
            conversation: "c".into(),
            runtime_pid: None,
        };
        let vars = [
            ("AGENTCG_SESSION_MEMORY", "512M"),
            ("AGENTCG_SESSION_PRIORITY", "high"),
            ("AGENTCG_SESSION_PIDS", "256"),
            ("AGENTCG_SESSION_CPUS", "1.5"),
        ];
        let req = session_request(&env, lookup(&vars)).expect("request");
        assert_eq!(
            req,
            json!({"name": "claude-c", "runtime_pid": null, "memory": "512M",
                "priority": "high", "pids": 256, "cpus": 1.5})
        );
        let e = session_request(&env, lookup(&[("AGENTCG_SESSION_PIDS", "many")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "AGENTCG_SESSION_PIDS=many: expected a process count; nothing was run"
        );
    }

    #[test]
    fn without_a_conversation_it_says_how_to_use_it() {
        let e = ToolEnv::from_lookup(lookup(&[("CLAUDE_PID", "1")])).unwrap_err();
        assert_eq!(e, PrefixError::NoConversation);
        assert!(e.to_string().contains("CLAUDE_CODE_SHELL_PREFIX"));
    }
}
