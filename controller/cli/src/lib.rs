//! agentcg's command-line front-ends: `agentcg` (one module per subcommand) and
//! `agentcg-claude` (Claude Code's shell prefix and hooks, module `claude`).

pub mod call;
pub mod claude;
pub mod cli;
pub mod client;
pub mod events;
pub mod history;
pub mod policy;
pub mod replay;
pub mod run;
pub mod session;
pub mod shell;
pub mod since;
pub mod status;
pub mod top;
pub mod written_intent;

use std::process::ExitCode;

/// Exit status when agentcg itself fails (as `env` and `timeout` do).
pub const EXIT_AGENTCG: u8 = 125;
/// Exit status for a rejected intent or request (usage error).
pub const EXIT_USAGE: u8 = 2;

/// Prints a value as pretty JSON on stdout.
pub fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Reports a failure of agentcg itself and picks the exit code.
pub fn fail(e: &client::ClientError) -> ExitCode {
    eprintln!("agentcg: {e}");
    match e {
        client::ClientError::Api { status, .. } if *status < 500 => ExitCode::from(EXIT_USAGE),
        _ => ExitCode::from(EXIT_AGENTCG),
    }
}
