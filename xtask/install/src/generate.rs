//! Man pages and shell completions, generated from the clap definitions the binaries
//! parse with (`agentcg_cli::cli::Cli`, `agentcg_daemon::args::Args`), so they cannot
//! drift from the real flags.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::InstallError;

/// A generated file: its name (a man page's carries its section) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub name: String,
    pub text: Vec<u8>,
}

/// agentcg(1) and one page per subcommand (`agentcg-session-create.1`), and agentcgd(8).
pub fn man_pages() -> Result<Vec<Generated>, InstallError> {
    let mut pages = Vec::new();
    let mut cli = agentcg_cli::cli::Cli::command().disable_help_subcommand(true);
    cli.build();
    man_tree(&cli, "1", &mut pages)?;
    man_tree(&agentcg_daemon::args::Args::command(), "8", &mut pages)?;
    Ok(pages)
}

/// The page of `cmd` and of each of its visible subcommands, depth first.
fn man_tree(
    cmd: &clap::Command,
    section: &str,
    out: &mut Vec<Generated>,
) -> Result<(), InstallError> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("agentcg");
    let mut text = Vec::new();
    man.render(&mut text)
        .map_err(|e| InstallError::Generate(man.get_filename(), e))?;
    out.push(Generated {
        name: man.get_filename(),
        text,
    });
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_tree(sub, section, out)?;
    }
    Ok(())
}

/// The shells completions are generated for, by name.
pub const SHELLS: [(&str, Shell); 3] = [
    ("bash", Shell::Bash),
    ("zsh", Shell::Zsh),
    ("fish", Shell::Fish),
];

/// agentcg's completion script for `shell`.
pub fn completion(shell: Shell) -> Vec<u8> {
    let mut cmd = agentcg_cli::cli::Cli::command();
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut cmd, "agentcg", &mut text);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_a_page_and_the_daemon_is_in_section_8() {
        let pages = man_pages().expect("pages");
        let names: Vec<&str> = pages.iter().map(|p| p.name.as_str()).collect();
        for name in [
            "agentcg.1",
            "agentcg-run.1",
            "agentcg-session-create.1",
            "agentcg-policy.1",
            "agentcgd.8",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.starts_with("agentcg-help")),
            "{names:?}"
        );
        let daemon = pages
            .iter()
            .find(|p| p.name == "agentcgd.8")
            .expect("agentcgd.8");
        let text = String::from_utf8_lossy(&daemon.text);
        // Flags come from the real definition.
        assert!(text.contains("stop\\-ends\\-calls"), "{text}");
        assert!(
            text.starts_with(".ie") || text.contains(".TH agentcgd 8"),
            "{text}"
        );
    }

    #[test]
    fn completions_know_the_subcommands() {
        for (name, shell) in SHELLS {
            let text = String::from_utf8(completion(shell)).expect("utf-8");
            assert!(text.contains("session"), "{name}: {text}");
            assert!(text.contains("agentcg"), "{name}");
        }
    }
}
