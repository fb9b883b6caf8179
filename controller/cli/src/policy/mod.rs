//! `agentcg policy ...`: check and explain policies without a daemon ([`local`]).

mod local;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::client::Client;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Check policy files: every problem as FILE:LINE:COLUMN: key: message. Exit 1 on
    /// an error, 2 when a file cannot be read.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Warnings count as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Document one key (`memory.pressure_at`), or every key.
    Explain {
        key: Option<String>,
        /// The key table of docs/POLICY.md.
        #[arg(long)]
        markdown: bool,
    },
}

pub fn main(_client: &Client, cmd: PolicyCmd) -> ExitCode {
    match cmd {
        PolicyCmd::Check { files, strict } => local::check(&files, strict),
        PolicyCmd::Explain { key, markdown } => local::explain(key.as_deref(), markdown),
    }
}
