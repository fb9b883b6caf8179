//! `agentcg-claude`: Claude Code's shell prefix (see `agentcg_cli::claude`). Set
//! `CLAUDE_CODE_SHELL_PREFIX=/usr/local/bin/agentcg-claude` and every Bash tool call
//! runs as an agentcg call. It fails at once, with a message the model reads, when
//! agentcgd is not running: nothing runs outside agentcg. `agentcg-claude --hook
//! pre-tool-use` is its PreToolUse hook (labels each call with its `tool_use_id`).

use std::path::PathBuf;
use std::process::ExitCode;

use agentcg_cli::claude;
use agentcg_cli::client::{Client, DEFAULT_SOCKET};

fn main() -> ExitCode {
    let socket = std::env::var_os("AGENTCG_SOCKET")
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if let [flag, event] = args.as_slice()
        && flag == "--hook"
    {
        return claude::hook::main(&event.to_string_lossy());
    }
    claude::prefix_main(&Client::new(&socket), args)
}
