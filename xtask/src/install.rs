//! `cargo xtask install`: builds agentcgd (release), the static CLI binaries
//! (`release-cli`) and the installer `agentcg-install` (xtask/install), then runs the
//! installer: binaries, units, policy, man pages, completions, sysusers.d and
//! tmpfiles.d under PREFIX (and DESTDIR). The file list is decided there.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Result;

use crate::host::{self, Workspace};

/// Build and install agentcg (binaries, systemd units, policy, man pages, completions)
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Installation prefix (binaries in PREFIX/bin)
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Stage the install under this directory instead of / (for packaging)
    #[arg(long, default_value = "/")]
    pub destdir: PathBuf,
    /// Install debug builds (faster to build; for trying the install itself)
    #[arg(long)]
    pub debug: bool,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    run(ws, args)?;
    if args.destdir == std::path::Path::new("/") {
        eprintln!(
            "[xtask] next: systemd-sysusers; systemd-tmpfiles --create; systemctl daemon-reload; \
             systemctl enable --now agentcgd.socket agentcgd.service"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds everything and installs it as `args` says.
pub fn run(ws: &Workspace, args: &Args) -> Result<()> {
    let release = !args.debug;
    let mut build = ws.cargo();
    build.args(["build", "-p", "agentcg-daemon", "-p", "agentcg-install"]);
    if release {
        build.arg("--release");
    }
    host::run(
        &mut build,
        "agentcgd and the installer must build; fix the errors above",
    )?;
    let cli = ws.build_cli(release)?;
    let bins = ws.profile_dir(release);
    let mut install = Command::new(bins.join("agentcg-install"));
    install
        .arg("--prefix")
        .arg(&args.prefix)
        .arg("--destdir")
        .arg(&args.destdir)
        .arg("--workspace")
        .arg(&ws.root)
        .arg("--bin")
        .arg(bins.join("agentcgd"))
        .arg("--bin")
        .arg(cli.join("agentcg"))
        .arg("--bin")
        .arg(cli.join("agentcg-claude"));
    host::run(
        &mut install,
        "installing failed; the message above names the file (installing to / needs root)",
    )
}
