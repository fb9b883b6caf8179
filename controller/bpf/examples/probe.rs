//! Prints the BTF capability probe as JSON: `cargo run -p agentcg-bpf --example probe
//! [BTF-or-ELF path]` (default: the running kernel's BTF).

use std::path::PathBuf;

fn main() {
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from(agentcg_bpf::VMLINUX_BTF), PathBuf::from);
    match agentcg_bpf::probe_btf(&path) {
        Ok(f) => println!("{}", serde_json::to_string_pretty(&f).unwrap_or_default()),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
