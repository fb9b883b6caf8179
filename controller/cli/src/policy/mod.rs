//! `agentcg policy ...`: check and explain policies without a daemon ([`local`]);
//! show, diff and change the running daemon's policy ([`remote`]).

mod local;
mod remote;

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
    /// The daemon's policy as written (--effective: every default filled in).
    Show {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        effective: bool,
    },
    /// What applying FILE would change, in words. Exit 0: no change, 1: changes, 2: error.
    Diff { file: PathBuf },
    /// Check FILE, then make it the daemon's policy (written to its policy file).
    Apply { file: PathBuf },
    /// Change keys of the daemon's policy: KEY=VALUE (`memory.pressure_at=80`,
    /// `class.test.intent=mem.max=3G`); the rest of the file stays byte for byte.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
    },
    /// Edit the daemon's policy in $EDITOR; errors reopen the editor, shown at the top.
    Edit,
    /// The kept versions of the policy (0 is the one in force).
    History {
        #[arg(long)]
        json: bool,
    },
    /// Put the policy of N versions back in force (1 by default).
    Rollback {
        #[arg(default_value_t = 1)]
        back: usize,
    },
}

pub fn main(client: &Client, cmd: PolicyCmd) -> ExitCode {
    match cmd {
        PolicyCmd::Check { files, strict } => local::check(&files, strict),
        PolicyCmd::Explain { key, markdown } => local::explain(key.as_deref(), markdown),
        PolicyCmd::Show { json, effective } => remote::show(client, json, effective),
        PolicyCmd::Diff { file } => remote::diff(client, &file),
        PolicyCmd::Apply { file } => remote::apply(client, &file),
        PolicyCmd::Set { assignments } => remote::set(client, &assignments),
        PolicyCmd::Edit => remote::edit(client),
        PolicyCmd::History { json } => remote::history(client, json),
        PolicyCmd::Rollback { back } => remote::rollback(client, back),
    }
}
