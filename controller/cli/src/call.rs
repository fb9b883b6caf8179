//! `agentcg call show ID` and `agentcg call list`: finished calls' records.

use std::process::ExitCode;

use agentcg_core::record::CallRecord;
use agentcg_core::units::HumanSize;

use crate::client::Client;
use crate::{fail, print_json};

#[derive(Debug, clap::Subcommand)]
pub enum CallCmd {
    /// Show one call's record as JSON.
    Show { id: u64 },
    /// List recent calls, newest first.
    List {
        #[arg(long)]
        session: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn main(client: &Client, cmd: CallCmd) -> ExitCode {
    match cmd {
        CallCmd::Show { id } => match client.get(&format!("/v1/calls/{id}")) {
            Ok(v) => {
                print_json(&v);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        CallCmd::List {
            session,
            limit,
            json,
        } => {
            let mut path = format!("/v1/calls?limit={limit}");
            if let Some(s) = session {
                if agentcg_core::plan::check_session_name(&s).is_err() {
                    eprintln!("agentcg: invalid session name `{s}`");
                    return ExitCode::from(crate::EXIT_USAGE);
                }
                path.push_str(&format!("&session={s}"));
            }
            match client.get(&path) {
                Ok(v) if json => {
                    print_json(&v);
                    ExitCode::SUCCESS
                }
                Ok(v) => {
                    let records: Vec<CallRecord> = serde_json::from_value(v).unwrap_or_default();
                    println!(
                        "{:>6} {:<12} {:<12} {:>9} {:>10}  COMMAND",
                        "ID", "SESSION", "OUTCOME", "MS", "PEAK"
                    );
                    for r in records {
                        println!(
                            "{:>6} {:<12} {:<12} {:>9} {:>10}  {}",
                            r.call_id,
                            r.session,
                            r.outcome.as_str(),
                            r.duration_ms,
                            r.accounting
                                .memory_peak
                                .map_or("-".into(), |p| HumanSize(p).to_string()),
                            r.command.join(" ")
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
    }
}
