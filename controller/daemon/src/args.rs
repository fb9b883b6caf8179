//! Command-line flags of agentcgd. The real paths appear here, as defaults, and
//! nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::root::RootArg;

/// agentcgd: per-tool-call cgroups for AI agents, enforced in the kernel.
#[derive(Debug, clap::Parser)]
#[command(name = "agentcgd", version, about)]
pub struct Args {
    /// The cgroup v2 subtree agentcgd owns (created if missing). `auto`: the service's
    /// own delegated cgroup when systemd started agentcgd (the daemon moves itself into
    /// its leaf `daemon/` and creates sessions beside it), else /sys/fs/cgroup/agentcg.
    #[arg(long, default_value = "auto", env = "AGENTCG_ROOT")]
    pub root: RootArg,
    /// `memory.min` of the daemon's own leaf under systemd, so it survives the memory
    /// pressure it manages (bytes, or with a K/M/G suffix).
    #[arg(long, default_value = "64M", value_parser = parse_bytes)]
    pub daemon_memory_min: u64,
    /// On SIGTERM (`systemctl stop`), end every running call (killed, with a record)
    /// before exiting. Without it the calls keep running and the next start re-adopts them.
    #[arg(long, env = "AGENTCG_STOP_ENDS_CALLS")]
    pub stop_ends_calls: bool,
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
    /// Socket file mode, octal: who may talk to the daemon. Default: 660 when the
    /// socket group exists, else 600 (root only).
    #[arg(long, value_parser = parse_mode)]
    pub socket_mode: Option<u32>,
    /// Group of the socket: its members may talk to the daemon.
    #[arg(long, default_value = "agentcg", env = "AGENTCG_SOCKET_GROUP")]
    pub socket_group: String,
    /// Members of this group (and root) see and act on every user's sessions and calls.
    #[arg(long, default_value = "agentcg-admin", env = "AGENTCG_ADMIN_GROUP")]
    pub admin_group: String,
    /// Seconds a client has to send a whole request, and the longest a connection may
    /// sit idle between requests (never counted while a response is sent).
    #[arg(long, default_value_t = 10, env = "AGENTCG_REQUEST_TIMEOUT")]
    pub request_timeout: u64,
    /// Largest request head (request line and headers), bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_head: usize,
    /// Largest request body, bytes (above the policy's own 1 MiB limit on its text).
    #[arg(long, default_value_t = 2 << 20)]
    pub max_body: u64,
    /// Open connections per uid; one more is answered 429.
    #[arg(long, default_value_t = 128, env = "AGENTCG_CONNECTIONS_PER_UID")]
    pub connections_per_uid: usize,
    /// TCP address of the Prometheus endpoint (`GET /metrics`); `none` turns it off.
    #[arg(
        long,
        default_value = "127.0.0.1:9464",
        env = "AGENTCG_METRICS_LISTEN",
        value_parser = parse_listen
    )]
    pub metrics_listen: MetricsListen,
}

/// Where the metrics endpoint listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<MetricsListen, String> {
    if s == "none" {
        return Ok(MetricsListen(None));
    }
    s.parse()
        .map(|a| MetricsListen(Some(a)))
        .map_err(|_| format!("`{s}` is not an address such as 127.0.0.1:9464 (or `none`)"))
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    agentcg_core::units::parse_size(s).map_err(|e| e.to_string())
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("`{s}` is not an octal file mode such as 660"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_takes_an_address_or_none() {
        assert_eq!(parse_listen("none"), Ok(MetricsListen(None)));
        assert_eq!(
            parse_listen("[::1]:9000"),
            Ok(MetricsListen(Some("[::1]:9000".parse().expect("addr"))))
        );
        let err = parse_listen("localhost").expect_err("a host name is not an address");
        assert!(err.contains("`localhost`"), "{err}");
    }
}
