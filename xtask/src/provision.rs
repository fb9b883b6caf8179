//! `cargo xtask provision`: installs the build and VM dependencies by running
//! xtask/provision.sh (idempotent; docs/ARCHITECTURE.md#bpf-toolchain and
//! docs/ARCHITECTURE.md#kernel-tests-in-the-vm say why each piece). The other
//! subcommands call `ensure`.

use std::process::{Command, ExitCode};

use anyhow::Result;
use clap::ValueEnum;

use crate::host::{self, Workspace};

/// Install the build and/or VM dependencies (runs xtask/provision.sh; idempotent)
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to install: clang-19 & co (build), QEMU, virtme-ng and the VM kernel (vm), or both
    #[arg(value_enum, default_value_t = Which::All)]
    which: Which,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    Build,
    Vm,
    All,
    /// cargo-deb, for `cargo xtask package` only (not part of `all`)
    Package,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    ensure(ws, args.which)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `provision.sh build|vm|all`.
pub fn ensure(ws: &Workspace, which: Which) -> Result<()> {
    let which = which
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    host::run(
        Command::new("bash")
            .arg(ws.root.join("xtask/provision.sh"))
            .arg(&which),
        "provisioning failed; see the [provision] lines above (it needs root or sudo and \
         network access to deb.debian.org and PyPI)",
    )
}
