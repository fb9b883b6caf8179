//! `cargo xtask fuzz [--time S] [TARGET...]`: builds the cargo-fuzz targets in fuzz/
//! (a workspace of its own) on the stable toolchain (`--sanitizer none`: no nightly
//! needed) and runs each for a bounded time from its committed seed corpus
//! (fuzz/corpus/TARGET, never written to; what libFuzzer finds goes to
//! fuzz/target/work/TARGET). A crash fails the run and leaves its input in
//! fuzz/artifacts/TARGET. docs/ARCHITECTURE.md#fuzzing.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Result, bail};

use crate::host::{self, Workspace};

/// The targets in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &["intent", "policy", "api_bodies"];

/// Build the fuzz targets and run each for a bounded time
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each target runs
    #[arg(long, default_value_t = 60)]
    time: u32,
    /// Targets to run (default: all of them)
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    targets: Vec<String>,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    run(ws, args.time, &args.targets)?;
    Ok(ExitCode::SUCCESS)
}

/// Builds, then runs `targets` (all when empty) for `seconds` each.
pub fn run(ws: &Workspace, seconds: u32, targets: &[String]) -> Result<()> {
    if seconds == 0 {
        bail!("--time 0: give each target at least a second");
    }
    let dir = ws.root.join("fuzz");
    let hint = "cargo-fuzz is missing or failed: `bash xtask/provision.sh build` installs it";
    host::run(fuzz(&dir).args(["build", "--sanitizer", "none"]), hint)?;
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let mut crashed = Vec::new();
    for t in chosen {
        let work = dir.join("target/work").join(t);
        std::fs::create_dir_all(&work)?;
        let result = host::run(
            fuzz(&dir)
                .args(["run", "--sanitizer", "none", t])
                .arg(&work)
                .arg(Path::new("corpus").join(t))
                .arg("--")
                .args(run_flags(seconds)),
            &format!("fuzz target `{t}` failed; its input is in fuzz/artifacts/{t}"),
        );
        if let Err(e) = result {
            eprintln!("error: {e:#}");
            crashed.push(t);
        }
    }
    if !crashed.is_empty() {
        bail!("fuzz targets failed: {}", crashed.join(", "));
    }
    Ok(())
}

/// libFuzzer's flags: a time bound, inputs up to 8 KiB (a policy file is ~4), and one
/// input taking over 10 s counts as a hang.
fn run_flags(seconds: u32) -> Vec<String> {
    vec![
        format!("-max_total_time={seconds}"),
        "-max_len=8192".into(),
        "-timeout=10".into(),
        "-print_final_stats=1".into(),
    ]
}

fn fuzz(dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("fuzz").current_dir(dir);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_is_in_the_manifest_with_a_seed_corpus() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t}");
            assert!(root.join(format!("fuzz_targets/{t}.rs")).is_file(), "{t}");
            let seeds = std::fs::read_dir(root.join("corpus").join(t))
                .unwrap()
                .count();
            assert!(seeds > 0, "{t} has no seeds");
        }
        let listed = manifest.matches("[[bin]]").count();
        assert_eq!(listed, TARGETS.len(), "a target missing from TARGETS");
    }
}
