//! What of agentcgd is needed outside the daemon binary: its command line (the
//! installer generates the agentcgd(8) man page from it) and where its cgroup subtree
//! goes (`--root`). The daemon itself is the `agentcgd` binary (src/main.rs).

pub mod args;
pub mod root;
