//! Helpers shared by the kernel integration tests, which run as root inside the
//! sched_ext VM (`cargo xtask vm-test`): start an agentcgd on a private cgroup root,
//! run the CLI against it, speak raw HTTP to its socket, inspect cgroups.

mod cgroup;
mod daemon;
pub mod events;
mod http;
pub mod memory;
pub mod mix;
pub mod model_server;
pub mod replay;
mod runtime;
pub mod scrape;

pub use cgroup::{TestCgroup, remove_cgroup_tree};
pub use daemon::Daemon;
pub use http::parse_http_response;
pub use runtime::{FakeRuntime, GrowingRuntime};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Directory of the agentcg binaries (set by xtask in the VM).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("AGENTCG_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"))
}

/// Fails loudly unless we are root on a cgroup v2 host with the controllers we need.
pub fn require_kernel() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "kernel tests must run as root (cargo xtask vm-test)"
    );
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .expect("cgroup v2 must be mounted at /sys/fs/cgroup (cargo xtask vm-test)");
    for c in ["cpu", "memory", "pids"] {
        assert!(
            controllers.contains(c),
            "cgroup v2 controller {c} missing: {controllers}"
        );
    }
}

/// Polls `f` every 100 ms until it holds; fails after `timeout`, naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The memhog helper binary (built next to the agentcg binaries).
pub fn memhog() -> String {
    bin_dir().join("memhog").display().to_string()
}

/// `/tmp/<name>.json`, removed if a previous call left it: a record read from there
/// was written by the call that was given the path.
pub fn fresh_record(name: &str) -> PathBuf {
    let path = PathBuf::from(format!("/tmp/{name}.json"));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
    path
}

/// The call id `agentcg run --verbose` printed on stderr (`agentcg: call N in ...`).
pub fn verbose_call_id(stderr_text: &str) -> u64 {
    granted_call_id(stderr_text).unwrap_or_else(|| panic!("no call id in {stderr_text:?}"))
}

/// The call id `agentcg run --verbose` printed on stderr, if it was granted one.
pub fn granted_call_id(stderr_text: &str) -> Option<u64> {
    stderr_text
        .lines()
        .find_map(|l| l.strip_prefix("agentcg: call "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
}

/// Parses a record file written by `agentcg run --record`.
pub fn read_record(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("record {}: {e}", path.display()));
    serde_json::from_str(&text).expect("record JSON")
}
