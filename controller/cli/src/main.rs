//! agentcg: the command-line front-end of agentcgd. One module per subcommand.

mod call;
mod client;
mod events;
mod history;
mod policy;
mod run;
mod session;
mod shell;
mod since;
mod status;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status when agentcg itself fails (as `env` and `timeout` do).
pub const EXIT_AGENTCG: u8 = 125;
/// Exit status for a rejected intent or request (usage error).
pub const EXIT_USAGE: u8 = 2;

/// Run AI-agent tool calls inside per-call cgroups sized from declared intents.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// agentcgd's socket.
    #[arg(long, global = true, env = "AGENTCG_SOCKET", default_value = client::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one tool call inside its own cgroup.
    Run(run::RunArgs),
    /// Create, list, show and close sessions.
    #[command(subcommand)]
    Session(session::SessionCmd),
    /// A drop-in SHELL: `agentcg shell -c 'CMD'` runs CMD as a call.
    Shell(shell::ShellArgs),
    /// Kernel features and the mode each part of agentcg runs in.
    Status(status::StatusArgs),
    /// Show finished calls.
    #[command(subcommand)]
    Call(call::CallCmd),
    /// Watch what happens: sessions, calls, memory steps, pressure, the scheduler.
    Events(events::EventsArgs),
    /// A live view: sessions, running calls, the latest events (q quits).
    Top(top::TopArgs),
    /// The durable call history: list with filters, or per-class statistics (`stats`).
    History(history::HistoryArgs),
    /// Check, explain, show and change the policy.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = client::Client::new(&cli.socket);
    // A tool call rides out a daemon restart; the other commands answer at once.
    let patient = || client::Client::new(&cli.socket).patient(client::RESTART_PATIENCE);
    match cli.command {
        Command::Run(args) => run::main(&patient(), args),
        Command::Session(cmd) => session::main(&client, cmd),
        Command::Shell(args) => shell::main(&patient(), args),
        Command::Status(args) => status::main(&client, args),
        Command::Call(cmd) => call::main(&client, cmd),
        Command::Events(args) => events::main(&patient(), args),
        Command::Top(args) => top::main(&cli.socket, args),
        Command::History(args) => history::main(&client, args),
        Command::Policy(cmd) => policy::main(&client, cmd),
    }
}

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
