//! Host-side helpers shared by the subcommands: where the workspace and its target
//! directory are, and running programs so that a failure says what failed and what to do.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The cargo workspace xtask belongs to.
#[derive(Debug)]
pub struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
}

impl Workspace {
    /// Asks `cargo metadata` for the workspace root and target directory.
    pub fn locate() -> Result<Self> {
        let output = cargo_command()
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .output()
            .context("cannot run `cargo metadata`: is cargo on PATH?")?;
        if !output.status.success() {
            bail!(
                "`cargo metadata` failed: {}fix the workspace manifests",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let meta: serde_json::Value = serde_json::from_slice(&output.stdout)
            .context("`cargo metadata` printed something that is not JSON")?;
        let path = |key: &str| {
            meta[key]
                .as_str()
                .map(PathBuf::from)
                .with_context(|| format!("`cargo metadata` has no {key}"))
        };
        Ok(Self {
            root: path("workspace_root")?,
            target: path("target_directory")?,
        })
    }

    /// target/vm: the directory the VM guest may write (vng --rwdir).
    pub fn vm_dir(&self) -> PathBuf {
        self.target.join("vm")
    }

    /// target/debug or target/release.
    pub fn profile_dir(&self, release: bool) -> PathBuf {
        self.target.join(if release { "release" } else { "debug" })
    }

    /// `cargo` run from the workspace root.
    pub fn cargo(&self) -> Command {
        let mut cmd = cargo_command();
        cmd.current_dir(&self.root);
        cmd
    }

    /// Builds the daemon `agentcgd` and the CLI `agentcg`; returns the directory holding them.
    pub fn build_agentcg(&self, release: bool) -> Result<PathBuf> {
        let mut cmd = self.cargo();
        cmd.args([
            "build",
            "-p",
            "agentcg-daemon",
            "-p",
            "agentcg-cli",
            "-p",
            "agentcg-vmtests",
        ]);
        if release {
            cmd.arg("--release");
        }
        run(
            &mut cmd,
            "the daemon and the CLI must build on the host; fix the errors above",
        )?;
        Ok(self.profile_dir(release))
    }
}

/// The cargo that runs xtask (`$CARGO`), else `cargo` from PATH.
fn cargo_command() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd` to completion; `hint` tells the user what to do when it fails.
pub fn run(cmd: &mut Command, hint: &str) -> Result<()> {
    let shown = display(cmd);
    eprintln!("[xtask] $ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`: {hint}"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}): {hint}");
    }
    Ok(())
}

/// The command line of `cmd`, for messages.
pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}
