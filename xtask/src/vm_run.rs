//! `cargo xtask vm-run -- CMD...`: boots the sched_ext VM once, runs CMD in it from the
//! workspace root, prints its output and exits with its status.

use std::process::ExitCode;

use anyhow::Result;

use crate::host::Workspace;
use crate::provision::{self, Which};
use crate::vm::{self, Job, VmOptions, sh_quote};

/// Boot the sched_ext VM and run a command in it (output via target/vm/guest.log)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vm: VmOptions,
    /// The command to run as root in the guest, e.g. `-- uname -a`; AGENTCG_BIN_DIR is
    /// target/debug and AGENTCG_VM=1
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    provision::ensure(ws, Which::Vm)?;
    let words: Vec<String> = args.command.iter().map(|word| sh_quote(word)).collect();
    let job = Job {
        script: words.join(" "),
        env: vec![(
            "AGENTCG_BIN_DIR",
            ws.profile_dir(false).to_string_lossy().into_owned(),
        )],
    };
    vm::run(ws, &args.vm, &job)?.exit_code()
}
