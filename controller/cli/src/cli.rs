//! The `agentcg` command line as a clap definition: the binary parses it, and the
//! installer generates the man pages and shell completions from the same definition.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{call, client, events, history, policy, replay, run, session, shell, status, top};

/// Run AI-agent tool calls inside per-call cgroups sized from declared intents.
#[derive(Debug, Parser)]
#[command(name = "agentcg", version, about, propagate_version = true)]
pub struct Cli {
    /// agentcgd's socket.
    #[arg(long, global = true, env = "AGENTCG_SOCKET", default_value = client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Seconds `run`, `shell` and `events` wait for an agentcgd that is not answering
    /// (restarting) before they give up.
    #[arg(long, global = true, env = "AGENTCG_RESTART_WAIT", value_name = "SECS",
          default_value_t = client::RESTART_PATIENCE.as_secs(),
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub restart_wait: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Replay recorded agent runs through a policy, without a kernel (docs/REPLAY.md).
    Replay(replay::ReplayArgs),
}
