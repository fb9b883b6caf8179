//! callbench: the timing loop of `cargo xtask bench calls`, run inside the VM by
//! xtask/bench/calls.sh (std only, so no shell fork distorts the arms).
//!
//! Runs every arm once per round, the arm order rotated by one each round to cancel
//! drift; discards the warm-up rounds; records the wall-clock nanoseconds of every call and
//! writes them as JSON. An arm whose call fails is reported and dropped from later rounds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

const USAGE: &str = "\
usage: callbench --iterations N [--warmup N] --out FILE [--cgroup-parent DIR] [--shell SH] ARM...
  --arm NAME=CMD            each call spawns CMD (words split on whitespace) and waits
  --reference-arm NAME=CMD  each call does the reference approach of
                            docs/ARCHITECTURE.md#measured-baselines:
                            mkdir DIR/NAME-<round>, write its memory.max and pids.max,
                            spawn SH -c 'echo $$ > DIR/NAME-<round>/cgroup.procs && exec CMD',
                            wait, rmdir (needs --cgroup-parent DIR and --shell SH, default sh,
                            before it)";

/// Limits the reference arm writes into each per-call cgroup.
const REFERENCE_LIMITS: [(&str, &str); 2] = [("memory.max", "536870912"), ("pids.max", "64")];

#[derive(Debug)]
enum Kind {
    Spawn,
    Reference { parent: PathBuf, shell: String },
}

#[derive(Debug)]
struct Arm {
    name: String,
    command: Vec<String>,
    kind: Kind,
    samples_ns: Vec<u64>,
    error: Option<String>,
}

#[derive(Debug)]
struct Config {
    iterations: usize,
    warmup: usize,
    out: PathBuf,
    arms: Vec<Arm>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "-h" || arg == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let mut config = match parse_args(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("callbench: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    run_rounds(&mut config);
    if let Err(err) = fs::write(&config.out, to_json(&config)) {
        eprintln!("callbench: cannot write {}: {err}", config.out.display());
        return ExitCode::FAILURE;
    }
    if config.arms.iter().any(|arm| arm.error.is_some()) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn parse_args(args: Vec<String>) -> Result<Config, String> {
    let (mut iterations, mut warmup, mut out, mut parent) = (None, 0, None, None);
    let mut shell = "sh".to_owned();
    let mut arms = Vec::new();
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--iterations" => iterations = Some(parse_count(&flag, &value)?),
            "--warmup" => warmup = parse_count(&flag, &value)?,
            "--out" => out = Some(PathBuf::from(value)),
            "--cgroup-parent" => parent = Some(PathBuf::from(value)),
            "--shell" => shell = value,
            "--arm" => arms.push(parse_arm(&value, Kind::Spawn)?),
            "--reference-arm" => {
                let parent = parent
                    .clone()
                    .ok_or("--reference-arm needs --cgroup-parent before it")?;
                let shell = shell.clone();
                arms.push(parse_arm(&value, Kind::Reference { parent, shell })?);
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if arms.is_empty() {
        return Err("no arms given".into());
    }
    Ok(Config {
        iterations: iterations.ok_or("--iterations is required")?,
        warmup,
        out: out.ok_or("--out is required")?,
        arms,
    })
}

fn parse_count(flag: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} wants a number, not {value:?}"))
}

/// `NAME=CMD` into an arm.
fn parse_arm(spec: &str, kind: Kind) -> Result<Arm, String> {
    let (name, command) = spec
        .split_once('=')
        .ok_or_else(|| format!("arm {spec:?} is not NAME=CMD"))?;
    let command: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    if name.is_empty() || command.is_empty() {
        return Err(format!("arm {spec:?} is not NAME=CMD"));
    }
    Ok(Arm {
        name: name.to_owned(),
        command,
        kind,
        samples_ns: Vec::new(),
        error: None,
    })
}

/// Warm-up plus measured rounds; each round calls every live arm once, in rotated order.
fn run_rounds(config: &mut Config) {
    let rounds = config.warmup + config.iterations;
    let count = config.arms.len();
    for round in 0..rounds {
        if round % 50 == 0 {
            eprintln!("callbench: round {round}/{rounds}");
        }
        for k in 0..count {
            let arm = &mut config.arms[(round + k) % count];
            if arm.error.is_some() {
                continue;
            }
            match arm.call(round) {
                Ok(ns) if round >= config.warmup => arm.samples_ns.push(ns),
                Ok(_) => {}
                Err(err) => {
                    eprintln!("callbench: arm {} failed in round {round}: {err}", arm.name);
                    arm.error = Some(format!("round {round}: {err}"));
                }
            }
        }
    }
}

impl Arm {
    /// One call; returns its wall-clock time in nanoseconds.
    fn call(&self, round: usize) -> Result<u64, String> {
        let start = Instant::now();
        match &self.kind {
            Kind::Spawn => spawn(&self.command)?,
            Kind::Reference { parent, shell } => self.reference_call(parent, shell, round)?,
        }
        Ok(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// mkdir, limits, `SH -c 'echo $$ > cgroup.procs && exec CMD'`, rmdir.
    fn reference_call(&self, parent: &Path, shell: &str, round: usize) -> Result<(), String> {
        let cgroup = parent.join(format!("{}-{round}", self.name));
        fs::create_dir(&cgroup).map_err(|err| format!("mkdir {}: {err}", cgroup.display()))?;
        let result = REFERENCE_LIMITS
            .iter()
            .try_for_each(|(file, value)| {
                let path = cgroup.join(file);
                fs::write(&path, value).map_err(|err| format!("write {}: {err}", path.display()))
            })
            .and_then(|()| {
                let procs = cgroup.join("cgroup.procs");
                let script = format!(
                    "echo $$ > '{}' && exec {}",
                    procs.display(),
                    self.command.join(" ")
                );
                spawn(&[shell.to_owned(), "-c".to_owned(), script])
            });
        let removed =
            fs::remove_dir(&cgroup).map_err(|err| format!("rmdir {}: {err}", cgroup.display()));
        result.and(removed)
    }
}

/// Spawns `command` with stdin and stdout on /dev/null and waits for it to succeed.
fn spawn(command: &[String]) -> Result<(), String> {
    let (program, args) = command.split_first().ok_or("empty command")?;
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|err| format!("cannot run {program}: {err}"))?;
    if !status.success() {
        return Err(format!("`{}` failed ({status})", command.join(" ")));
    }
    Ok(())
}

/// `{"iterations":N,"warmup":N,"arms":[{"name","kind","command","error","samples_ns"}]}`.
fn to_json(config: &Config) -> String {
    let arms: Vec<String> = config
        .arms
        .iter()
        .map(|arm| {
            let kind = match arm.kind {
                Kind::Spawn => "spawn",
                Kind::Reference { .. } => "reference",
            };
            let samples: Vec<String> = arm.samples_ns.iter().map(u64::to_string).collect();
            format!(
                "{{\"name\":{},\"kind\":\"{kind}\",\"command\":{},\"error\":{},\"samples_ns\":[{}]}}",
                json_string(&arm.name),
                json_string(&arm.command.join(" ")),
                arm.error.as_deref().map_or_else(|| "null".to_owned(), json_string),
                samples.join(",")
            )
        })
        .collect();
    format!(
        "{{\"iterations\":{},\"warmup\":{},\"arms\":[{}]}}\n",
        config.iterations,
        config.warmup,
        arms.join(",")
    )
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out + "\""
}
