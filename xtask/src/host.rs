//! Host-side helpers shared by the subcommands: where the workspace and its target
//! directory are, and running programs so that a failure says what failed and what to do.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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

    /// Builds the daemon `agentcgd`, the test tools and the CLI (`agentcg`,
    /// `agentcg-claude`), and gathers them in target/agentcg-bin/<profile>, which it
    /// returns.
    ///
    /// The CLI is linked statically (`+crt-static`, built for the explicit host target
    /// so build scripts and proc macros stay dynamic): it is exec'd once per tool call,
    /// and under emulation the dynamic loader dominates that exec (measured in the VM:
    /// `agentcg --version` 82-137 ms dynamic, 9-25 ms static). Release builds use the
    /// `release-cli` profile (fat LTO, one codegen unit, abort on panic: 2.7 MB instead
    /// of 22 MB; `--version` p50 9.9 vs 11.3 ms in the VM).
    pub fn build_agentcg(&self, release: bool) -> Result<PathBuf> {
        let mut cmd = self.cargo();
        cmd.args(["build", "-p", "agentcg-daemon", "-p", "agentcg-vmtests"]);
        if release {
            cmd.arg("--release");
        }
        run(
            &mut cmd,
            "the daemon must build on the host; fix the errors above",
        )?;
        let cli_dir = self.build_cli(release)?;
        let profile = if release { "release" } else { "debug" };
        let dir = self.target.join("agentcg-bin").join(profile);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for entry in fs::read_dir(self.profile_dir(release))? {
            let path = entry?.path();
            // xtask itself (190 MB in a debug build) has no business in the guest's RAM.
            if is_executable_file(&path) && path.file_name() != Some(OsStr::new("xtask")) {
                copy_into(&path, &dir)?;
            }
        }
        // The static CLI binaries, not the dynamic ones a workspace build left in the
        // profile directory (for release: none at all).
        for cli in ["agentcg", "agentcg-claude"] {
            copy_into(&cli_dir.join(cli), &dir)?;
        }
        Ok(dir)
    }

    /// Builds the static CLI binaries (`agentcg`, `agentcg-claude`; see `build_agentcg`)
    /// and returns the directory they are in.
    pub fn build_cli(&self, release: bool) -> Result<PathBuf> {
        let mut cli = self.cargo();
        cli.args(["build", "-p", "agentcg-cli", "--target", HOST_TARGET])
            .env(STATIC_RUSTFLAGS_VAR, "-C target-feature=+crt-static");
        if release {
            cli.args(["--profile", CLI_RELEASE_PROFILE]);
        }
        run(
            &mut cli,
            "the static CLI must build on the host; fix the errors above",
        )?;
        let cli_profile = if release {
            CLI_RELEASE_PROFILE
        } else {
            "debug"
        };
        Ok(self.target.join(HOST_TARGET).join(cli_profile))
    }
}

/// The Cargo profile of a release CLI (Cargo.toml).
const CLI_RELEASE_PROFILE: &str = "release-cli";
/// The target the static CLI is built for (this project's machines are x86_64 Debian).
const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Rust flags for [`HOST_TARGET`] only (not for build scripts and proc macros).
const STATIC_RUSTFLAGS_VAR: &str = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS";

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Copies `file` into `dir` (replacing what is there), keeping its mode.
fn copy_into(file: &Path, dir: &Path) -> Result<()> {
    let name = file
        .file_name()
        .with_context(|| format!("{} has no file name", file.display()))?;
    let dest = dir.join(name);
    let _ = fs::remove_file(&dest);
    fs::copy(file, &dest)
        .with_context(|| format!("cannot copy {} to {}", file.display(), dest.display()))?;
    Ok(())
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
