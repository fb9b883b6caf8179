//! Helpers the kernel tests share (pressure.rs, runtime_oom.rs, the harness tests):
//! sessions made and calls listed through the CLI, memhog calls run in the background,
//! and the counters of a cgroup's memory event files.

use std::path::Path;
use std::process::{Child, Stdio};

use crate::{Daemon, memhog};

impl Daemon {
    /// `agentcg session create ARGS...`, asserting it succeeds.
    pub fn create_session(&self, args: &[&str]) {
        let mut all = vec!["session", "create"];
        all.extend_from_slice(args);
        let out = self.agentcg(&all);
        assert!(
            out.status.success(),
            "session create {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `agentcg call list --session SESSION --json`, asserting it succeeds: the
    /// session's call records, by id.
    pub fn call_records(&self, session: &str) -> Vec<serde_json::Value> {
        let out = self.agentcg(&["call", "list", "--session", session, "--json"]);
        assert!(
            out.status.success(),
            "call list --session {session}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("call list --json");
        let mut calls = v.as_array().cloned().unwrap_or_default();
        calls.sort_by_key(|c| c["call_id"].as_u64());
        calls
    }

    /// `agentcg run --session SESSION --intent INTENT --record RECORD -- memhog HOG...`
    /// in the background (stderr piped, for the feedback line).
    pub fn spawn_memhog(&self, record: &Path, session: &str, intent: &str, hog: &[&str]) -> Child {
        self.cli()
            .args(["run", "--session", session, "--intent", intent, "--record"])
            .arg(record)
            .arg("--")
            .arg(memhog())
            .args(hog)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agentcg run")
    }
}

/// The counter `key` of a flat-keyed memory event file (`memory.events`,
/// `memory.events.local`) of `cgroup`.
pub fn memory_event(cgroup: &Path, file: &str, key: &str) -> u64 {
    let path = cgroup.join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {}: {text}", path.display()))
}
