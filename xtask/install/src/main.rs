//! `agentcg-install`: installs the binaries given with --bin and everything else from
//! the workspace (see the library). `cargo xtask install` builds and runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Install agentcg under a prefix (and a DESTDIR for staging or packaging).
#[derive(Debug, Parser)]
struct Args {
    /// Installation prefix: binaries in PREFIX/bin, man pages in PREFIX/share/man.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Stage the whole install under this directory instead of /.
    #[arg(long, default_value = "/")]
    destdir: PathBuf,
    /// A built binary to install (agentcgd, agentcg, agentcg-claude; each once).
    #[arg(long = "bin", required = true)]
    binaries: Vec<PathBuf>,
    /// The agentcg workspace (systemd/ and policies/ are read from it).
    #[arg(long)]
    workspace: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sources = agentcg_install::Sources {
        binaries: args.binaries,
        workspace: args.workspace,
    };
    let result = agentcg_install::plan(&args.prefix, &sources)
        .and_then(|entries| agentcg_install::apply::apply(&entries, &args.destdir));
    match result {
        Ok(report) => {
            for path in &report.written {
                println!("installed {}", path.display());
            }
            for path in &report.kept {
                println!(
                    "kept      {} (exists; the new default was not written)",
                    path.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agentcg-install: {e}");
            ExitCode::FAILURE
        }
    }
}
