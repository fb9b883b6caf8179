//! `cargo xtask test`: provisions everything, runs the host unit tests
//! (`cargo test --workspace`, kernel tests are `#[ignore]` there) and then the kernel tests
//! in the VM (`vm-test`); fails if either fails.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::host::{self, Workspace};
use crate::provision::{self, Which};
use crate::vm::VmOptions;
use crate::vm_test;

/// Run the host unit tests, then the kernel tests in the VM
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vm: VmOptions,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    provision::ensure(ws, Which::All)?;
    let host = host::run(
        ws.cargo().args(["test", "--workspace"]),
        "host unit tests failed; see above (the VM tests run anyway)",
    );
    if let Err(err) = &host {
        eprintln!("error: {err:#}");
    }
    let vm = vm_test::run(
        ws,
        &vm_test::Args {
            vm: args.vm.clone(),
            filter: Vec::new(),
        },
    );
    match (host, vm) {
        (Ok(()), vm) => vm,
        (Err(_), Ok(_)) => bail!("host unit tests failed (the VM tests passed)"),
        (Err(_), Err(err)) => bail!("host unit tests failed, and so did the VM tests: {err:#}"),
    }
}
