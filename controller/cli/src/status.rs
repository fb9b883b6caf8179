//! `agentcg status`: kernel features and the mode each part of agentcg runs in.

use std::process::ExitCode;

use crate::client::Client;
use crate::{fail, print_json};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
}

pub fn main(client: &Client, args: StatusArgs) -> ExitCode {
    let v = match client.get("/v1/status") {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if args.json {
        print_json(&v);
        return ExitCode::SUCCESS;
    }
    let k = &v["kernel"];
    println!(
        "agentcgd {} on Linux {}",
        v["version"].as_str().unwrap_or("?"),
        k["kernel_release"].as_str().unwrap_or("?")
    );
    println!("root      {}", v["root"].as_str().unwrap_or("?"));
    println!("running   {} call(s)", v["running_calls"]);
    println!("features:");
    let controllers: Vec<&str> = k["controllers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str())
        .collect();
    println!("  cgroup v2 controllers  {}", controllers.join(" "));
    println!(
        "  sched_ext              {}",
        k["sched_ext_state"]
            .as_str()
            .map_or("absent".to_string(), |s| format!("present ({s})"))
    );
    for (key, label) in [
        ("clone_into_cgroup", "clone3 into cgroup"),
        ("psi", "PSI"),
        ("memory_reclaim", "memory.reclaim"),
        ("memory_peak", "memory.peak"),
        ("pids_peak", "pids.peak"),
    ] {
        println!(
            "  {label:<22} {}",
            if k[key].as_bool() == Some(true) {
                "present"
            } else {
                "absent"
            }
        );
    }
    if let Some(btf) = v.get("btf").filter(|b| !b.is_null()) {
        println!(
            "  {:<22} {}",
            "sched_ext_ops (BTF)",
            present(btf["sched_ext_ops"].as_bool())
        );
        let kfuncs = btf["memcg_kfuncs"].as_array().map_or(0, Vec::len);
        println!("  {:<22} {} of 8 present", "memcg kfuncs", kfuncs);
        println!(
            "  {:<22} {}",
            "memcg struct_ops",
            present(btf["memcg_bpf_ops"].as_bool())
        );
    }
    if let Some(exit) = v["scheduler"].get("last_exit").filter(|e| !e.is_null()) {
        println!(
            "  {:<22} {} ({}), reloads {}",
            "sched_ext last exit",
            exit["kind"].as_str().unwrap_or("?"),
            exit["reason"].as_str().unwrap_or(""),
            v["scheduler"]["reloads"]
        );
    }
    println!("modes:");
    for m in v["modes"].as_array().into_iter().flatten() {
        println!(
            "  {:<12} {}",
            m["part"].as_str().unwrap_or("?"),
            m["mode"].as_str().unwrap_or("?")
        );
    }
    ExitCode::SUCCESS
}

fn present(b: Option<bool>) -> &'static str {
    if b == Some(true) { "present" } else { "absent" }
}
