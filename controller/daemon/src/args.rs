//! Command-line flags of agentcgd. The real paths appear here, as defaults, and
//! nowhere else.

use std::path::PathBuf;

/// agentcgd: per-tool-call cgroups for AI agents, enforced in the kernel.
#[derive(Debug, clap::Parser)]
#[command(version, about)]
pub struct Args {
    /// The cgroup v2 subtree agentcgd owns (created if missing).
    #[arg(long, default_value = "/sys/fs/cgroup/agentcg", env = "AGENTCG_ROOT")]
    pub root: PathBuf,
    /// Unix socket of the API.
    #[arg(
        long,
        default_value = "/run/agentcg/agentcg.sock",
        env = "AGENTCG_SOCKET"
    )]
    pub socket: PathBuf,
    /// Where sessions and the call history are kept.
    #[arg(long, default_value = "/var/lib/agentcg", env = "AGENTCG_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Policy file (TOML); the embedded default policy when absent.
    #[arg(long, env = "AGENTCG_POLICY")]
    pub policy: Option<PathBuf>,
    /// Socket file mode, octal: who may talk to the daemon.
    #[arg(long, default_value = "660", value_parser = parse_mode)]
    pub socket_mode: u32,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("`{s}` is not an octal file mode such as 660"))
}
