//! `agentcg session create|list|show|close`.

use std::process::ExitCode;

use agentcg_core::controller::SessionInfo;
use agentcg_core::intent::{Priority, format_millicpus};
use agentcg_core::units::{HumanSize, parse_size};
use serde_json::json;

use crate::client::Client;
use crate::{EXIT_USAGE, fail, print_json};

#[derive(Debug, clap::Subcommand)]
pub enum SessionCmd {
    /// Create a session with a budget.
    Create {
        name: String,
        #[arg(long, default_value = "normal")]
        priority: Priority,
        /// Memory budget (e.g. 4G); the policy default when absent.
        #[arg(long)]
        memory: Option<String>,
        /// CPUs for the whole session (e.g. 2, 0.5).
        #[arg(long)]
        cpu: Option<f64>,
        /// Process limit for the whole session.
        #[arg(long)]
        pids: Option<u32>,
        /// Move this process (the agent runtime) into the session's runtime cgroup.
        #[arg(long)]
        runtime_pid: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// List sessions.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one session.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Close a session: end its running calls and remove its cgroups.
    Close {
        name: String,
        /// Also kill the processes of its runtime cgroup.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn main(client: &Client, cmd: SessionCmd) -> ExitCode {
    match cmd {
        SessionCmd::Create {
            name,
            priority,
            memory,
            cpu,
            pids,
            runtime_pid,
            json,
        } => {
            let memory = match memory.as_deref().map(parse_size).transpose() {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("agentcg: --memory: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let req = json!({"name": name, "priority": priority, "memory": memory, "cpus": cpu, "pids": pids, "runtime_pid": runtime_pid});
            show(client.post("/v1/sessions", &req), json)
        }
        SessionCmd::List { json } => match client.get("/v1/sessions") {
            Ok(v) if json => {
                print_json(&v);
                ExitCode::SUCCESS
            }
            Ok(v) => {
                let list: Vec<SessionInfo> = serde_json::from_value(v).unwrap_or_default();
                println!(
                    "{:<20} {:<8} {:>10} {:>10} {:>8} {:>8}",
                    "NAME", "PRIORITY", "MEMORY", "IN USE", "RUNNING", "FINISHED"
                );
                for s in list {
                    println!(
                        "{:<20} {:<8} {:>10} {:>10} {:>8} {:>8}",
                        s.plan.name,
                        s.plan.priority,
                        HumanSize(s.plan.memory_max).to_string(),
                        s.memory_current
                            .map(|m| HumanSize(m).to_string())
                            .unwrap_or_else(|| "-".into()),
                        s.running_calls.len(),
                        s.calls_finished
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        SessionCmd::Show { name, json } => show(
            client.get(&format!("/v1/sessions/{}", path_segment(&name))),
            json,
        ),
        SessionCmd::Close { name, force, json } => {
            let path = format!("/v1/sessions/{}?force={force}", path_segment(&name));
            match client.delete(&path) {
                Ok(v) if json => {
                    print_json(&v);
                    ExitCode::SUCCESS
                }
                Ok(v) => {
                    let killed = v["killed_calls"].as_array().map_or(0, Vec::len);
                    println!("session {name} closed ({killed} running call(s) ended)");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
    }
}

/// Percent-encodes everything but the characters a valid session name can hold, so
/// a hostile name cannot reach another endpoint.
fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn show(reply: Result<serde_json::Value, crate::client::ClientError>, json: bool) -> ExitCode {
    match reply {
        Ok(v) if json => {
            print_json(&v);
            ExitCode::SUCCESS
        }
        Ok(v) => match serde_json::from_value::<SessionInfo>(v) {
            Ok(s) => {
                let p = &s.plan;
                println!("session   {} ({} priority)", p.name, p.priority);
                println!("cgroup    {}", s.cgroup);
                println!(
                    "memory    {} budget, {} for tool calls, {} reserved for the runtime",
                    HumanSize(p.memory_max),
                    HumanSize(p.calls_memory_max),
                    HumanSize(p.runtime_reserve)
                );
                println!(
                    "cpu       weight {}, max {}",
                    p.cpu_weight,
                    p.millicpus.map_or("none".into(), format_millicpus)
                );
                println!("pids      {}", p.pids_max);
                println!("runtime   {:?}", s.runtime_pids);
                println!(
                    "calls     {} running {:?}, {} finished",
                    s.running_calls.len(),
                    s.running_calls,
                    s.calls_finished
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("agentcg: unexpected reply: {e}");
                ExitCode::from(crate::EXIT_AGENTCG)
            }
        },
        Err(e) => fail(&e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(super::path_segment("agent-1.x"), "agent-1.x");
        assert_eq!(super::path_segment("../calls"), "..%2Fcalls");
        assert_eq!(super::path_segment("a?b"), "a%3Fb");
    }
}
