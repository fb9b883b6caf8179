//! `cargo xtask demo`: builds the daemon and the CLI, boots the VM and runs xtask/demo.sh
//! in it with AGENTCG_BIN_DIR pointing at the binaries; prints its output.

use std::process::ExitCode;

use anyhow::Result;

use crate::host::Workspace;
use crate::provision::{self, Which};
use crate::vm::{self, Job, VmOptions};

/// Build agentcg and run the demo script xtask/demo.sh in the VM
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vm: VmOptions,
    /// Demo release binaries instead of debug ones
    #[arg(long)]
    release: bool,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    provision::ensure(ws, Which::All)?;
    let bin_dir = ws.build_agentcg(args.release)?;
    let job = Job::script_file(
        ws,
        "xtask/demo.sh",
        vec![("AGENTCG_BIN_DIR", bin_dir.to_string_lossy().into_owned())],
    );
    vm::run(ws, &args.vm, &job)?.exit_code()
}
