//! `cargo xtask fuzz [--time S] [TARGET...]`: builds the cargo-fuzz targets in fuzz/
//! (a workspace of its own) on the stable toolchain (`--sanitizer none`: no nightly
//! needed) and runs each for a bounded time from its committed seed corpus
//! (fuzz/corpus/TARGET, never written to; what libFuzzer finds goes to
//! fuzz/target/work/TARGET). A crash fails the run and leaves its input in
//! fuzz/artifacts/TARGET. docs/ARCHITECTURE.md#fuzzing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
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
        let artifacts = dir.join("artifacts").join(t);
        let before = files_in(&artifacts);
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
            // Repeated last, so a log cut to its tail (CI's) still shows the input.
            for path in files_in(&artifacts).difference(&before) {
                let input = std::fs::read(path).unwrap_or_default();
                eprintln!("error: {}", describe_input(t, path, &input));
            }
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

/// The files in `dir` (none when it does not exist).
fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// One line naming a crashing input and showing its first bytes, escaped.
fn describe_input(target: &str, path: &Path, input: &[u8]) -> String {
    const SHOWN: usize = 400;
    let shown = &input[..input.len().min(SHOWN)];
    let more = if input.len() > SHOWN { "..." } else { "" };
    format!(
        "fuzz target `{target}`: input {} ({} bytes): b\"{}\"{more}",
        path.display(),
        input.len(),
        shown.escape_ascii()
    )
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

    #[test]
    fn a_crashing_input_is_shown_escaped_and_cut() {
        let line = describe_input(
            "intent",
            Path::new("a/crash-1"),
            b"timeout=1.0000001s\n\x00",
        );
        assert_eq!(
            line,
            "fuzz target `intent`: input a/crash-1 (20 bytes): b\"timeout=1.0000001s\\n\\x00\""
        );
        let long = describe_input("policy", Path::new("p"), &[b'x'; 1000]);
        assert!(
            long.contains("(1000 bytes)") && long.ends_with("\"..."),
            "{long}"
        );
        assert_eq!(long.matches('x').count(), 400);
    }
}
