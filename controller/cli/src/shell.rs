//! `agentcg shell`: a drop-in `SHELL` for agent harnesses. `agentcg shell -c 'CMD'`
//! runs `$AGENTCG_REAL_SHELL -c 'CMD'` as one call, so every command an agent runs
//! through its shell gets its own cgroup. The intent comes from CMD itself when the
//! model wrote one in front of it (`AGENTCG_INTENT=mem.max=2G pytest`, read and removed
//! without a shell: `crate::written_intent`), else from `AGENTCG_INTENT` /
//! `AGENT_RESOURCE_HINT`, else the policy's default for CMD's class.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use crate::client::Client;
use crate::written_intent::take_intent;
use crate::{EXIT_AGENTCG, EXIT_USAGE};

/// The shell that really interprets commands when `AGENTCG_REAL_SHELL` is unset.
const DEFAULT_REAL_SHELL: &str = "/bin/bash";
const FALLBACK_SHELL: &str = "/bin/sh";

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct ShellArgs {
    /// Shell arguments as a harness passes them: `-c CMD [NAME ARGS...]`, `-lc CMD`,
    /// `-l -c CMD`, `-i -c CMD` (Aider).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

/// The real shell to hand commands to.
fn real_shell() -> OsString {
    std::env::var_os("AGENTCG_REAL_SHELL").unwrap_or_else(|| {
        if std::path::Path::new(DEFAULT_REAL_SHELL).exists() {
            DEFAULT_REAL_SHELL.into()
        } else {
            FALLBACK_SHELL.into()
        }
    })
}

/// Whether the shell arguments run a command string (`-c` somewhere among the leading options).
fn has_command(args: &[OsString]) -> bool {
    args.iter()
        .take_while(|a| a.to_str().is_some_and(|s| s.starts_with('-')))
        .any(|a| {
            a.to_str()
                .is_some_and(|s| s.len() > 1 && !s.starts_with("--") && s.contains('c'))
        })
}

/// Where the command string is: the first argument after the leading options.
fn command_index(args: &[OsString]) -> Option<usize> {
    args.iter()
        .position(|a| !a.to_str().is_some_and(|s| s.starts_with('-')))
}

pub fn main(client: &Client, args: ShellArgs) -> ExitCode {
    let shell = real_shell();
    if !has_command(&args.args) {
        // Interactive or script use: not a tool call; behave as the real shell.
        let err = std::process::Command::new(&shell).args(&args.args).exec();
        eprintln!(
            "agentcg shell: executing {}: {err}",
            shell.to_string_lossy()
        );
        return ExitCode::from(EXIT_AGENTCG);
    }
    if args.args.iter().any(|a| a.to_str().is_none()) {
        eprintln!("agentcg shell: arguments must be valid UTF-8");
        return ExitCode::from(EXIT_USAGE);
    }
    let mut args = args.args;
    let mut written = None;
    if let Some(i) = command_index(&args)
        && let Some(cmd) = args[i].to_str()
    {
        match take_intent(cmd) {
            Ok((intent, rest)) => {
                written = intent;
                args[i] = rest.into();
            }
            Err(e) => {
                eprintln!("agentcg: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let mut argv = vec![shell];
    argv.extend(args);
    let session = std::env::var("AGENTCG_SESSION")
        .ok()
        .filter(|s| !s.is_empty());
    crate::run::run_call(
        client,
        session,
        written.or_else(|| crate::run::intent_text(None)),
        argv,
        None,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn recognises_command_forms() {
        assert!(has_command(&v(&["-c", "ls"])));
        assert!(has_command(&v(&["-lc", "ls"])));
        assert!(has_command(&v(&["-l", "-c", "ls"])));
        // Aider's form (aider/run_cmd.py, on a terminal).
        assert!(has_command(&v(&["-i", "-c", "ls"])));
        assert!(!has_command(&v(&["script.sh", "-c"])));
        assert!(!has_command(&v(&["--login"])));
        assert!(!has_command(&v(&[])));
    }

    #[test]
    fn finds_the_command_string() {
        assert_eq!(command_index(&v(&["-c", "ls"])), Some(1));
        assert_eq!(command_index(&v(&["-l", "-c", "ls", "name"])), Some(2));
        assert_eq!(command_index(&v(&["-i", "-c", "ls"])), Some(2));
        assert_eq!(command_index(&v(&["-lc"])), None);
    }
}
