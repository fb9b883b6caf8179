//! `cargo xtask`: provisioning, kernel tests in the sched_ext VM, fuzzing, the demo,
//! benchmarks, and installing and packaging agentcg (docs/ARCHITECTURE.md#testing).
//! One module per subcommand; `vm` boots the VM.

mod bench;
mod demo;
mod fuzz;
mod host;
mod install;
mod package;
mod provision;
mod test_all;
mod vm;
mod vm_run;
mod vm_test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
#[command(about = "Provisioning, VM tests, demo and benchmarks for agentcg")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Provision(provision::Args),
    Install(install::Args),
    Package(package::Args),
    VmRun(vm_run::Args),
    VmTest(vm_test::Args),
    Test(test_all::Args),
    Demo(demo::Args),
    Fuzz(fuzz::Args),
    #[command(subcommand)]
    Bench(bench::Bench),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = host::Workspace::locate().and_then(|ws| match cli.command {
        Command::Provision(args) => provision::main(&ws, &args),
        Command::Install(args) => install::main(&ws, &args),
        Command::Package(args) => package::main(&ws, &args),
        Command::VmRun(args) => vm_run::main(&ws, &args),
        Command::VmTest(args) => vm_test::main(&ws, &args),
        Command::Test(args) => test_all::main(&ws, &args),
        Command::Demo(args) => demo::main(&ws, &args),
        Command::Fuzz(args) => fuzz::main(&ws, &args),
        Command::Bench(bench) => bench::main(&ws, &bench),
    });
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}
