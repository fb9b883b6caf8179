//! `cargo xtask bench`: benchmarks run in the sched_ext VM (DESIGN.md §8).

mod calls;
mod cpu;
mod stats;

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use crate::host::Workspace;

/// Benchmarks in the VM
#[derive(Debug, Subcommand)]
pub enum Bench {
    Calls(calls::Args),
    Cpu(cpu::Args),
}

pub fn main(ws: &Workspace, bench: &Bench) -> Result<ExitCode> {
    match bench {
        Bench::Calls(args) => calls::main(ws, args),
        Bench::Cpu(args) => cpu::main(ws, args),
    }
}
