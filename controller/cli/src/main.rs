//! agentcg: the command-line front-end of agentcgd (the subcommands live in the library).

use agentcg_cli::cli::{Cli, Command};
use agentcg_cli::{
    call, client, events, history, policy, replay, run, session, shell, status, top,
};
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = client::Client::new(&cli.socket);
    // A tool call rides out a daemon restart; the other commands answer at once.
    let wait = std::time::Duration::from_secs(cli.restart_wait);
    let patient = || client::Client::new(&cli.socket).patient(wait);
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
        Command::Replay(args) => replay::main(args),
    }
}
