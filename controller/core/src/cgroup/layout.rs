//! Where things live in agentcg's cgroup subtree. Pure path arithmetic:
//! `<root>/session-<name>/{runtime,calls/call-<id>}`.

use std::path::{Path, PathBuf};

use super::Cgroup;

/// Prefix of session directories.
pub const SESSION_PREFIX: &str = "session-";
/// Prefix of call directories.
pub const CALL_PREFIX: &str = "call-";
/// The runtime leaf of a session.
pub const RUNTIME: &str = "runtime";
/// The parent of a session's calls.
pub const CALLS: &str = "calls";

/// The subtree agentcgd owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> Cgroup {
        Cgroup::new(&self.root)
    }

    pub fn root_path(&self) -> &Path {
        &self.root
    }

    pub fn session(&self, name: &str) -> Cgroup {
        Cgroup::new(self.root.join(format!("{SESSION_PREFIX}{name}")))
    }

    pub fn runtime(&self, name: &str) -> Cgroup {
        Cgroup::new(self.session(name).path().join(RUNTIME))
    }

    pub fn calls(&self, name: &str) -> Cgroup {
        Cgroup::new(self.session(name).path().join(CALLS))
    }

    pub fn call(&self, name: &str, call_id: u64) -> Cgroup {
        Cgroup::new(self.calls(name).path().join(call_dir_name(call_id)))
    }
}

/// `call-000042`.
pub fn call_dir_name(call_id: u64) -> String {
    format!("{CALL_PREFIX}{call_id:06}")
}

/// Parses a call directory name back to its id.
pub fn parse_call_dir(name: &str) -> Option<u64> {
    name.strip_prefix(CALL_PREFIX)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let l = Layout::new("/cg/agentcg");
        assert_eq!(
            l.call("s", 42).path(),
            Path::new("/cg/agentcg/session-s/calls/call-000042")
        );
        assert_eq!(
            l.runtime("s").path(),
            Path::new("/cg/agentcg/session-s/runtime")
        );
        assert_eq!(parse_call_dir(&call_dir_name(1234567)), Some(1234567));
        assert_eq!(parse_call_dir("call-x"), None);
    }
}
