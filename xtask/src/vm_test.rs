//! `cargo xtask vm-test [FILTER...]`: builds the daemon, the CLI and the kernel integration
//! tests (crate agentcg-vmtests) on the host, runs every test executable in ONE VM boot with
//! `--include-ignored --test-threads=1 --nocapture` (the kernel tests are `#[ignore]` on the host),
//! continuing after failures, and reports per-executable results from the libtest
//! summaries in the guest's log.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use crate::host::{self, Workspace};
use crate::provision::{self, Which};
use crate::vm::{self, Job, VmOptions, sh_quote, sh_quote_path};

/// Build the kernel integration tests and run them all in one VM boot
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub vm: VmOptions,
    /// Run only the tests whose names contain one of the FILTERs (libtest filters)
    pub filter: Vec<String>,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    provision::ensure(ws, Which::All)?;
    run(ws, args)
}

/// vm-test without provisioning (`cargo xtask test` provisions once for everything).
///
/// A guest that dies of a stray `int3` alone (`Outcome::died_of_a_stray_int3`)
/// is booted once more for the executables it did not finish; the death is reported, and
/// a second death of any kind fails the run.
pub fn run(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    let bin_dir = ws.build_agentcg(false)?;
    let exes = build_tests(ws)?;
    let filtered = !args.filter.is_empty();
    let boot = |exes: &[&TestExe]| {
        let job = Job {
            script: guest_script(exes, &args.filter),
            env: vec![("AGENTCG_BIN_DIR", bin_dir.to_string_lossy().into_owned())],
        };
        vm::run(ws, &args.vm, &job)
    };
    let all: Vec<&TestExe> = exes.iter().collect();
    let mut outcome = boot(&all)?;
    let mut results: Vec<ExeResult<'_>> = all
        .iter()
        .map(|exe| ExeResult::from_log(exe, &outcome.log, filtered))
        .collect();
    let mut rebooted = None;
    if outcome.died_of_a_stray_int3() {
        let again: Vec<&TestExe> = unfinished(&results);
        eprintln!(
            "[xtask] the guest died of a stray int3 in its kernel (see \
             docs/ARCHITECTURE.md#a-guest-that-dies): booting a new VM for the {} \
             executable(s) it did not finish",
            again.len()
        );
        outcome = boot(&again)?;
        for result in &mut results {
            if again.iter().any(|exe| exe.name == result.exe.name) {
                *result = ExeResult::from_log(result.exe, &outcome.log, filtered);
            }
        }
        rebooted = Some(again.len());
    }
    report(&results);
    if let Some(again) = rebooted {
        println!(
            "vm-test: the first VM died of a stray int3 in its kernel (report above); \
             {again} executable(s) ran again in a second VM"
        );
    }
    outcome.check()?;
    let failed = results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Failed(_) | Verdict::Unfinished(_)))
        .count();
    if failed > 0 {
        bail!(
            "{failed} of {} test executable(s) failed in the VM",
            results.len()
        );
    }
    if filtered && !results.iter().any(|r| matches!(r.verdict, Verdict::Passed)) {
        bail!("no kernel test matches the filters {:?}", args.filter);
    }
    Ok(ExitCode::SUCCESS)
}

/// The executables a VM that died did not finish: the one it died in and those after.
fn unfinished<'a>(results: &[ExeResult<'a>]) -> Vec<&'a TestExe> {
    results
        .iter()
        .filter(|r| r.is_unfinished())
        .map(|r| r.exe)
        .collect()
}

/// A test executable cargo built.
#[derive(Debug)]
struct TestExe {
    /// File name, unique per build (`<target>-<hash>`).
    name: String,
    path: PathBuf,
    /// The package directory, the working directory `cargo test` would use.
    dir: PathBuf,
}

impl TestExe {
    /// A test executable from a `compiler-artifact` message, if it is one.
    fn from_artifact(msg: &serde_json::Value) -> Option<Self> {
        if msg["profile"]["test"].as_bool() != Some(true) {
            return None;
        }
        let path = PathBuf::from(msg["executable"].as_str()?);
        let dir = Path::new(msg["manifest_path"].as_str()?)
            .parent()?
            .to_path_buf();
        let name = path.file_name()?.to_string_lossy().into_owned();
        Some(Self { name, path, dir })
    }
}

/// `cargo test -p agentcg-vmtests --no-run`; returns the test executables.
fn build_tests(ws: &Workspace) -> Result<Vec<TestExe>> {
    const HINT: &str = "the kernel tests must build on the host; fix the errors above";
    let mut cmd = ws.cargo();
    cmd.args([
        "test",
        "-p",
        "agentcg-vmtests",
        "--no-run",
        "--message-format=json",
    ])
    .stdout(Stdio::piped());
    let shown = host::display(&cmd);
    eprintln!("[xtask] $ {shown}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let stdout = child.stdout.take().context("cargo's stdout is not piped")?;
    let mut exes = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line?) else {
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-message") => {
                eprint!("{}", msg["message"]["rendered"].as_str().unwrap_or(""))
            }
            Some("compiler-artifact") => exes.extend(TestExe::from_artifact(&msg)),
            _ => {}
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{shown}` failed ({status}): {HINT}");
    }
    if exes.is_empty() {
        bail!("`{shown}` built no test executables: {HINT}");
    }
    Ok(exes)
}

const BEGIN: &str = "=== vm-test: running ";
const END: &str = "=== vm-test: exit status ";

/// The guest side: every executable in turn, between markers the host parses.
fn guest_script(exes: &[&TestExe], filters: &[String]) -> String {
    let mut script = format!(
        "failed=0\n\
         run_exe() {{\n\
         \x20 name=$1; dir=$2; shift 2\n\
         \x20 echo \"{BEGIN}$name\"\n\
         \x20 (cd \"$dir\" && CARGO_MANIFEST_DIR=\"$dir\" \"$@\")\n\
         \x20 rc=$?\n\
         \x20 echo \"{END}$rc of $name\"\n\
         \x20 [ \"$rc\" -eq 0 ] || failed=1\n\
         }}\n"
    );
    let filter: String = filters
        .iter()
        .map(|f| format!(" {}", sh_quote(f)))
        .collect();
    for exe in exes {
        script += &format!(
            "run_exe {} {} {} --include-ignored --test-threads=1 --nocapture{filter}\n",
            sh_quote(&exe.name),
            sh_quote_path(&exe.dir),
            sh_quote_path(&exe.path),
        );
    }
    script + "exit $failed\n"
}

/// The counts of a libtest summary line.
#[derive(Debug, Clone, Copy)]
struct Summary {
    passed: u32,
    failed: u32,
    filtered_out: u32,
}

impl Summary {
    /// Parses `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; …`.
    fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("test result: ")?;
        let count = |label: &str| {
            rest.split(';').find_map(|part| {
                part.trim()
                    .strip_suffix(label)?
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()
            })
        };
        Some(Self {
            passed: count(" passed")?,
            failed: count(" failed")?,
            filtered_out: count(" filtered out")?,
        })
    }
}

#[derive(Debug)]
enum Verdict {
    Passed,
    /// The executable has no tests: reported, not a failure.
    NoTests,
    /// FILTER matched none of its tests: reported, not a failure.
    FilteredOut,
    Failed(String),
    /// The VM stopped before the executable ended, or before it began: a failure, and
    /// what a second VM runs after a stray int3.
    Unfinished(&'static str),
}

#[derive(Debug)]
struct ExeResult<'a> {
    exe: &'a TestExe,
    summary: Option<Summary>,
    verdict: Verdict,
}

impl<'a> ExeResult<'a> {
    /// Whether the VM stopped before this executable ended.
    fn is_unfinished(&self) -> bool {
        matches!(self.verdict, Verdict::Unfinished(_))
    }

    /// Judges `exe` by its section of the guest log.
    fn from_log(exe: &'a TestExe, log: &str, filtered: bool) -> Self {
        let begin = format!("{BEGIN}{}\n", exe.name);
        let Some((_, section)) = log.split_once(&begin) else {
            return Self {
                exe,
                summary: None,
                verdict: Verdict::Unfinished("did not run"),
            };
        };
        let end = format!(" of {}", exe.name);
        let exit = section
            .lines()
            .find_map(|line| line.strip_prefix(END)?.strip_suffix(&end));
        // The last summary: with --nocapture, a test that runs its own executable as a
        // child (e.g. unprivileged) prints that child's summary first.
        let summary = section
            .lines()
            .take_while(|line| !line.starts_with(END))
            .filter_map(Summary::parse)
            .last();
        let verdict = judge(exit, summary, filtered);
        Self {
            exe,
            summary,
            verdict,
        }
    }
}

fn judge(exit: Option<&str>, summary: Option<Summary>, filtered: bool) -> Verdict {
    match (exit, summary) {
        (None, _) => Verdict::Unfinished("did not finish (the VM stopped)"),
        (Some(code), _) if code != "0" => Verdict::Failed(format!("exit status {code}")),
        (Some(_), None) => Verdict::Failed("printed no libtest summary".into()),
        (Some(_), Some(s)) if s.passed + s.failed > 0 => Verdict::Passed,
        (Some(_), Some(s)) if s.filtered_out == 0 => Verdict::NoTests,
        (Some(_), Some(_)) if filtered => Verdict::FilteredOut,
        (Some(_), Some(s)) => Verdict::Failed(format!("ran none of its {} tests", s.filtered_out)),
    }
}

/// Prints one line per executable and the `vm-test: N passed, M failed` total.
fn report(results: &[ExeResult<'_>]) {
    println!("\nvm-test results:");
    for result in results {
        let counts = result
            .summary
            .map(|s| {
                format!(
                    " ({} passed, {} failed, {} filtered out)",
                    s.passed, s.failed, s.filtered_out
                )
            })
            .unwrap_or_default();
        let verdict = match &result.verdict {
            Verdict::Passed => "ok".to_owned(),
            Verdict::NoTests => "no tests".to_owned(),
            Verdict::FilteredOut => "no test matched the filter".to_owned(),
            Verdict::Failed(why) => format!("FAILED: {why}"),
            Verdict::Unfinished(why) => format!("FAILED: {why}"),
        };
        println!("  {}: {verdict}{counts}", result.exe.name);
    }
    let sum = |count: fn(&Summary) -> u32| {
        results
            .iter()
            .filter_map(|r| r.summary.as_ref())
            .map(count)
            .sum::<u32>()
    };
    println!(
        "vm-test: {} passed, {} failed",
        sum(|s| s.passed),
        sum(|s| s.failed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(name: &str) -> TestExe {
        TestExe {
            name: name.into(),
            path: PathBuf::from("/t").join(name),
            dir: "/t".into(),
        }
    }

    fn verdict(log: &str, filtered: bool) -> String {
        format!(
            "{:?}",
            ExeResult::from_log(&exe("kernel-1"), log, filtered).verdict
        )
    }

    #[test]
    fn a_vm_that_died_leaves_the_executable_it_died_in_and_those_after_unfinished() {
        let ok = "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out";
        let failed =
            "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out";
        let log = format!(
            "{BEGIN}a\n{ok}\n{END}0 of a\n{BEGIN}b\n{failed}\n{END}101 of b\n\
             {BEGIN}c\nrunning 3 tests\ntest c1 ... ok\n"
        );
        let exes = [exe("a"), exe("b"), exe("c"), exe("d")];
        let results: Vec<ExeResult<'_>> = exes
            .iter()
            .map(|exe| ExeResult::from_log(exe, &log, false))
            .collect();
        let names: Vec<&str> = unfinished(&results)
            .iter()
            .map(|exe| exe.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["c", "d"],
            "b failed on its own and is not run again"
        );
    }

    #[test]
    fn parses_libtest_summaries() {
        let line = "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 2 filtered out; \
                    finished in 0.52s";
        let s = Summary::parse(line).expect("summary");
        assert_eq!((s.passed, s.failed, s.filtered_out), (3, 1, 2));
        assert!(Summary::parse("running 4 tests").is_none());
    }

    #[test]
    fn a_nested_summary_does_not_hide_the_executables_own() {
        let log = "=== vm-test: running kernel-1\n\
                   running 1 test\n\
                   test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 4 filtered out; finished in 0.02s\n\
                   test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.86s\n\
                   === vm-test: exit status 0 of kernel-1\n";
        let exe = exe("kernel-1");
        let r = ExeResult::from_log(&exe, log, false);
        let s = r.summary.expect("summary");
        assert_eq!((s.passed, s.filtered_out), (5, 0));
    }

    #[test]
    fn judges_each_executable_by_its_own_section() {
        let ok = "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out";
        let none = "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out";
        let filtered = "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 5 filtered out";
        let section = |summary: &str, rc: u8| {
            format!("{BEGIN}kernel-1\n{summary}\n{END}{rc} of kernel-1\n{BEGIN}other\n{ok}\n")
        };
        assert_eq!(verdict(&section(ok, 0), false), "Passed");
        assert_eq!(verdict(&section(none, 0), false), "NoTests");
        assert_eq!(verdict(&section(filtered, 0), true), "FilteredOut");
        assert_eq!(
            verdict(&section(filtered, 0), false),
            r#"Failed("ran none of its 5 tests")"#
        );
        assert_eq!(
            verdict(&section(ok, 101), false),
            r#"Failed("exit status 101")"#
        );
        assert_eq!(
            verdict(&section("", 0), false),
            r#"Failed("printed no libtest summary")"#
        );
        assert_eq!(
            verdict(&format!("{BEGIN}kernel-1\n{ok}\n"), false),
            r#"Unfinished("did not finish (the VM stopped)")"#
        );
        assert_eq!(verdict("", false), r#"Unfinished("did not run")"#);
    }
}
