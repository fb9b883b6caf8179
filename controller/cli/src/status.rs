//! `agentcg status`: kernel features and the mode each part of agentcg runs in.

use std::process::ExitCode;

use agentcg_core::units::HumanSize;
use serde_json::Value;

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
    if let Some(line) = defended_line(&v["memory"]) {
        println!("memory    {line}");
    }
    for line in policy_lines(&v["policy"]) {
        println!("{line}");
    }
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

/// The limit the memory response defends, from the status's `memory` object:
/// `root at 300 MiB of 640 MiB, set by memory.max of /sys/fs/cgroup/svc`.
fn defended_line(memory: &Value) -> Option<String> {
    let d = memory.get("defended").filter(|d| !d.is_null())?;
    let size = |v: &Value| v.as_u64().map_or("?".into(), |b| HumanSize(b).to_string());
    let by = d["by"].as_str().unwrap_or("?");
    let what = match (by, d["cgroup"].as_str()) {
        ("none", _) => "nothing limits it".to_string(),
        ("host", _) => format!(
            "set by the host ({} in all, {} used outside agentcg)",
            size(&d["value"]),
            size(&d["outside"])
        ),
        (file, Some(cg)) => format!(
            "set by {file} {} of {cg} ({} of it used outside agentcg)",
            size(&d["value"]),
            size(&d["outside"])
        ),
        (file, None) => format!("set by {file}"),
    };
    if by == "none" {
        return Some(format!("root at {}, {what}", size(&memory["root_usage"])));
    }
    Some(format!(
        "root at {} of {}, {what}",
        size(&memory["root_usage"]),
        size(&memory["root_limit"])
    ))
}

/// The policy in force (source, hash, load time) and the last reload's result, with
/// the errors of a refused one.
fn policy_lines(p: &serde_json::Value) -> Vec<String> {
    if p.is_null() {
        return Vec::new();
    }
    let mut out = vec![format!(
        "policy    {} (hash {}, loaded {})",
        p["source"].as_str().unwrap_or("?"),
        p["hash"].as_str().unwrap_or("?"),
        crate::since::show_utc(p["loaded_at_ms"].as_u64().unwrap_or(0))
    )];
    let last = &p["last_reload"];
    if last.is_object() {
        let result = if last["ok"] == true {
            "ok"
        } else {
            "REFUSED, the policy above stays"
        };
        out.push(format!(
            "          last reload {} from {}: {result}",
            crate::since::show_utc(last["at_ms"].as_u64().unwrap_or(0)),
            last["source"].as_str().unwrap_or("?")
        ));
        for e in last["errors"].as_array().into_iter().flatten() {
            out.push(format!("            {}", e.as_str().unwrap_or_default()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_reload_shows_its_errors_under_the_policy_in_force() {
        let p = serde_json::json!({
            "source": "/etc/agentcg/policy.toml", "hash": "00ff", "loaded_at_ms": 0,
            "last_reload": {"ok": false, "at_ms": 0, "source": "SIGHUP",
                            "errors": ["p.toml:2:15: memory.pressure_at: 500 is out of range 0..=100"]}
        });
        let lines = policy_lines(&p);
        assert!(
            lines[0].starts_with("policy    /etc/agentcg/policy.toml (hash 00ff"),
            "{lines:?}"
        );
        assert!(
            lines[1].ends_with("from SIGHUP: REFUSED, the policy above stays"),
            "{lines:?}"
        );
        assert!(lines[2].ends_with("p.toml:2:15: memory.pressure_at: 500 is out of range 0..=100"));
        assert!(policy_lines(&serde_json::Value::Null).is_empty());
    }

    #[test]
    fn the_defended_limit_names_its_cgroup_or_the_host() {
        let m = serde_json::json!({"root_usage": 300u64 << 20, "root_limit": 640u64 << 20,
            "defended": {"by": "memory.max", "cgroup": "/sys/fs/cgroup/svc", "value": 640u64 << 20, "outside": 0}});
        assert_eq!(
            defended_line(&m).as_deref(),
            Some(
                "root at 300 MiB of 640 MiB, set by memory.max 640 MiB of /sys/fs/cgroup/svc (0 B of it used outside agentcg)"
            )
        );
        let m = serde_json::json!({"root_usage": 1u64 << 30, "root_limit": 4u64 << 30,
            "defended": {"by": "host", "cgroup": null, "value": 16u64 << 30, "outside": 12u64 << 30}});
        let line = defended_line(&m).expect("a line");
        assert!(
            line.contains("of 4 GiB, set by the host (16 GiB in all, 12 GiB used outside"),
            "{line}"
        );
        assert_eq!(defended_line(&serde_json::json!({"defended": null})), None);
        assert_eq!(defended_line(&Value::Null), None);
    }
}
