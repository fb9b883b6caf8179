//! callbench: the timing loops of `cargo xtask bench calls`, run inside the VM by
//! xtask/bench/calls.sh.
//!
//! Two figures per arm, each with every call fully over before the next starts (for the
//! agentcg arm: its record readable through the API and its cgroup gone, see settle.rs):
//!
//! 1. latency: every arm once per round, the order rotated by one each round; the clock
//!    covers what the caller waits for (spawn to exit); the wait for agentcgd to finish
//!    the call happens after the clock stops and before the next arm starts;
//! 2. full cost: blocks of `--block` calls of one arm back to back, the arms' blocks in
//!    rotated order; the clock covers the whole block, each call waited to completion
//!    (record and rmdir included), and the CPU time of callbench, its children and
//!    agentcgd (`--daemon-pid`) over the block is counted (cpu.rs). The CPU callbench
//!    itself spends watching for the agentcg arm's end (settle.rs polls) is the
//!    measurement's, not agentcg's: it is taken out of that arm's own CPU and reported
//!    apart (`probe_cpu_ns`).
//!
//! A call that fails is counted as a failure of its arm (and the arm keeps running); the
//! host counts failures as the worst value in every statistic.

mod cpu;
mod settle;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use cpu::Cpu;
use serde_json::{Value, json};
use settle::Grant;

const USAGE: &str = "\
usage: callbench --iterations N [--warmup N] [--block N] --out FILE [--cgroup-parent DIR]
                 [--shell SH] [--socket SOCK] [--daemon-pid PID] ARM...
  --arm NAME=CMD            each call spawns CMD (words split on whitespace) and waits
  --reference-arm NAME=CMD  the reference approach: mkdir DIR/NAME-<n>, write its
                            memory.max and pids.max, spawn SH -c 'echo $$ >
                            DIR/NAME-<n>/cgroup.procs && exec CMD', wait, rmdir (needs
                            --cgroup-parent DIR and --shell SH, default sh, before it)
  --agentcg-arm NAME=CMD    CMD is `agentcg ... run --verbose -- TOOL`; a call is over
                            once GET /v1/calls/<id> on SOCK returns its record and its
                            cgroup directory is gone (needs --socket before it)
  --daemon-pid PID          agentcgd, whose CPU time counts in the full cost of every arm
  --iterations N            latency rounds, and calls per arm for the full cost
  --block N                 calls per back-to-back block of the full cost (default 10)";

/// Limits the reference arm writes into each per-call cgroup.
const REFERENCE_LIMITS: [(&str, &str); 2] = [("memory.max", "536870912"), ("pids.max", "64")];
/// Errors kept per arm (the count is complete).
const KEEP_ERRORS: usize = 5;

#[derive(Debug)]
enum Kind {
    Spawn,
    Reference { parent: PathBuf, shell: String },
    Agentcg { socket: PathBuf },
}

/// The back-to-back blocks of one arm, summed.
#[derive(Debug, Default)]
struct Cost {
    calls: usize,
    failures: usize,
    wall_ns: u64,
    cpu: Cpu,
    /// callbench's own CPU spent watching for calls to settle (not in `cpu`).
    probe_ns: u64,
    /// Wall time per call of each block.
    block_per_call_ns: Vec<u64>,
}

#[derive(Debug)]
struct Arm {
    name: String,
    command: Vec<String>,
    kind: Kind,
    /// Calls made so far (names the reference arm's cgroups).
    seq: usize,
    latency_ns: Vec<u64>,
    latency_failures: usize,
    cost: Cost,
    errors: Vec<String>,
}

#[derive(Debug)]
struct Config {
    iterations: usize,
    warmup: usize,
    block: usize,
    out: PathBuf,
    daemon_pid: Option<i32>,
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
    latency_rounds(&mut config);
    let cost_error = cost_blocks(&mut config).err();
    if let Some(err) = &cost_error {
        eprintln!("callbench: full cost not measured: {err}");
    }
    let text = to_json(&config, cost_error.as_deref()).to_string() + "\n";
    if let Err(err) = fs::write(&config.out, text) {
        eprintln!("callbench: cannot write {}: {err}", config.out.display());
        return ExitCode::FAILURE;
    }
    if cost_error.is_some() || config.arms.iter().any(|arm| !arm.errors.is_empty()) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn parse_args(args: Vec<String>) -> Result<Config, String> {
    let (mut iterations, mut warmup, mut block, mut out) = (None, 0, 10, None);
    let (mut parent, mut socket, mut daemon_pid) = (None, None, None);
    let mut shell = "sh".to_owned();
    let mut arms = Vec::new();
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--iterations" => iterations = Some(parse_count(&flag, &value)?),
            "--warmup" => warmup = parse_count(&flag, &value)?,
            "--block" => block = parse_count(&flag, &value)?.max(1),
            "--out" => out = Some(PathBuf::from(value)),
            "--cgroup-parent" => parent = Some(PathBuf::from(value)),
            "--shell" => shell = value,
            "--socket" => socket = Some(PathBuf::from(value)),
            "--daemon-pid" => {
                daemon_pid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--daemon-pid wants a pid, not {value:?}"))?,
                );
            }
            "--arm" => arms.push(parse_arm(&value, Kind::Spawn)?),
            "--reference-arm" => {
                let parent = parent
                    .clone()
                    .ok_or("--reference-arm needs --cgroup-parent before it")?;
                let shell = shell.clone();
                arms.push(parse_arm(&value, Kind::Reference { parent, shell })?);
            }
            "--agentcg-arm" => {
                let socket = socket
                    .clone()
                    .ok_or("--agentcg-arm needs --socket before it")?;
                arms.push(parse_arm(&value, Kind::Agentcg { socket })?);
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
        block,
        out: out.ok_or("--out is required")?,
        daemon_pid,
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
        seq: 0,
        latency_ns: Vec::new(),
        latency_failures: 0,
        cost: Cost::default(),
        errors: Vec::new(),
    })
}

/// The arm order of round (or block set) `round`: rotated by one each time.
fn rotation(round: usize, count: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |k| (round + k) % count)
}

/// Figure 1: warm-up plus measured rounds; each round calls every arm once.
fn latency_rounds(config: &mut Config) {
    let rounds = config.warmup + config.iterations;
    for round in 0..rounds {
        if round % 50 == 0 {
            eprintln!("callbench: latency round {round}/{rounds}");
        }
        for i in rotation(round, config.arms.len()) {
            let arm = &mut config.arms[i];
            let measured = round >= config.warmup;
            let result = arm.call().and_then(|(ns, grant)| {
                arm.settle(grant.as_ref())?;
                Ok(ns)
            });
            match result {
                Ok(ns) if measured => arm.latency_ns.push(ns),
                Ok(_) => {}
                Err(err) => {
                    if measured {
                        arm.latency_failures += 1;
                    }
                    arm.failed(format!("latency round {round}: {err}"));
                }
            }
        }
    }
}

/// Figure 2: `iterations` calls per arm in blocks of `block`, block sets rotated.
fn cost_blocks(config: &mut Config) -> Result<(), String> {
    let sets = config.iterations.div_ceil(config.block);
    for set in 0..sets {
        let n = config.block.min(config.iterations - set * config.block);
        if set % 5 == 0 {
            eprintln!("callbench: full-cost block set {set}/{sets}");
        }
        for i in rotation(set, config.arms.len()) {
            let daemon = config.daemon_pid;
            config.arms[i].block(n, daemon)?;
        }
    }
    Ok(())
}

impl Arm {
    fn failed(&mut self, err: String) {
        eprintln!("callbench: arm {}: {err}", self.name);
        if self.errors.len() < KEEP_ERRORS {
            self.errors.push(err);
        }
    }

    /// `n` calls back to back, each waited to completion; fails only when the CPU
    /// times cannot be read (a failed call is counted, not fatal).
    fn block(&mut self, n: usize, daemon: Option<i32>) -> Result<(), String> {
        let before = cpu::snapshot(daemon)?;
        let start = Instant::now();
        let mut probe_ns = 0;
        for _ in 0..n {
            let result = self.call().and_then(|(_, grant)| {
                let watching = cpu::thread_ns()?;
                let settled = self.settle(grant.as_ref());
                probe_ns += cpu::thread_ns()?.saturating_sub(watching);
                settled
            });
            if let Err(err) = result {
                self.cost.failures += 1;
                self.failed(format!("full cost: {err}"));
            }
        }
        let wall = nanos(start);
        let mut spent = cpu::snapshot(daemon)?.since(before);
        spent.own_ns = spent.own_ns.saturating_sub(probe_ns);
        self.cost.probe_ns += probe_ns;
        self.cost.calls += n;
        self.cost.wall_ns += wall;
        self.cost.cpu.add(spent);
        self.cost.block_per_call_ns.push(wall / n as u64);
        Ok(())
    }

    /// One call; returns the wall-clock nanoseconds the caller waited, and for the
    /// agentcg arm the call it was granted.
    fn call(&mut self) -> Result<(u64, Option<Grant>), String> {
        self.seq += 1;
        let start = Instant::now();
        let grant = match &self.kind {
            Kind::Spawn => spawn(&self.command).map(|_| None)?,
            Kind::Reference { parent, shell } => {
                reference_call(parent, shell, &self.name, self.seq, &self.command).map(|()| None)?
            }
            Kind::Agentcg { .. } => {
                let stderr = spawn(&self.command)?;
                let grant = settle::parse_grant(&stderr).ok_or_else(|| {
                    format!("no `agentcg: call ID in CGROUP` line (--verbose) in: {stderr:?}")
                })?;
                Some(grant)
            }
        };
        Ok((nanos(start), grant))
    }

    /// Waits until agentcgd is done with the call (nothing to wait for in other arms).
    fn settle(&self, grant: Option<&Grant>) -> Result<(), String> {
        match (&self.kind, grant) {
            (Kind::Agentcg { socket }, Some(grant)) => settle::wait_settled(socket, grant),
            _ => Ok(()),
        }
    }
}

fn nanos(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// mkdir, limits, `SH -c 'echo $$ > cgroup.procs && exec CMD'`, rmdir.
fn reference_call(
    parent: &Path,
    shell: &str,
    name: &str,
    seq: usize,
    command: &[String],
) -> Result<(), String> {
    let cgroup = parent.join(format!("{name}-{seq}"));
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
                command.join(" ")
            );
            spawn(&[shell.to_owned(), "-c".to_owned(), script]).map(drop)
        });
    let removed =
        fs::remove_dir(&cgroup).map_err(|err| format!("rmdir {}: {err}", cgroup.display()));
    result.and(removed)
}

/// Spawns `command` (stdin and stdout on /dev/null), waits for it to succeed and
/// returns what it wrote on stderr.
fn spawn(command: &[String]) -> Result<String, String> {
    let (program, args) = command.split_first().ok_or("empty command")?;
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|err| format!("cannot run {program}: {err}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(format!(
            "`{}` failed ({}): {stderr}",
            command.join(" "),
            output.status
        ));
    }
    Ok(stderr)
}

fn to_json(config: &Config, cost_error: Option<&str>) -> Value {
    let arms: Vec<Value> = config
        .arms
        .iter()
        .map(|arm| {
            let kind = match arm.kind {
                Kind::Spawn => "spawn",
                Kind::Reference { .. } => "reference",
                Kind::Agentcg { .. } => "agentcg",
            };
            let cost = &arm.cost;
            json!({
                "name": arm.name,
                "kind": kind,
                "command": arm.command.join(" "),
                "errors": arm.errors,
                "latency": {"samples_ns": arm.latency_ns, "failures": arm.latency_failures},
                "cost": {
                    "calls": cost.calls,
                    "failures": cost.failures,
                    "wall_ns": cost.wall_ns,
                    "own_cpu_ns": cost.cpu.own_ns,
                    "probe_cpu_ns": cost.probe_ns,
                    "children_cpu_ns": cost.cpu.children_ns,
                    "daemon_cpu_ns": cost.cpu.daemon_ns,
                    "block_per_call_ns": cost.block_per_call_ns,
                },
            })
        })
        .collect();
    json!({
        "iterations": config.iterations,
        "warmup": config.warmup,
        "block": config.block,
        "daemon_pid": config.daemon_pid,
        "cost_error": cost_error,
        "arms": arms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_rotates() {
        let orders: Vec<Vec<usize>> = (0..3).map(|r| rotation(r, 3).collect()).collect();
        assert_eq!(orders, [[0, 1, 2], [1, 2, 0], [2, 0, 1]]);
    }

    #[test]
    fn arms_need_their_context() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let err = parse_args(args(&[
            "--iterations",
            "1",
            "--out",
            "x",
            "--agentcg-arm",
            "c=a",
        ]));
        assert!(err.is_err_and(|e| e.contains("--socket")));
        let ok = parse_args(args(&[
            "--iterations",
            "3",
            "--out",
            "x",
            "--socket",
            "/s",
            "--daemon-pid",
            "7",
            "--block",
            "2",
            "--agentcg-arm",
            "c=agentcg run --verbose -- true",
        ]))
        .expect("parses");
        assert_eq!((ok.iterations, ok.block, ok.daemon_pid), (3, 2, Some(7)));
        assert_eq!(ok.arms[0].command.len(), 5);
    }

    /// A failing call is counted in both figures and the arm keeps running.
    #[test]
    fn failures_count_and_do_not_drop_the_arm() {
        let mut config = Config {
            iterations: 3,
            warmup: 1,
            block: 2,
            out: PathBuf::from("/nonexistent"),
            daemon_pid: None,
            arms: vec![
                parse_arm("ok=true", Kind::Spawn).expect("arm"),
                parse_arm("bad=false", Kind::Spawn).expect("arm"),
            ],
        };
        latency_rounds(&mut config);
        cost_blocks(&mut config).expect("cpu times");
        let (ok, bad) = (&config.arms[0], &config.arms[1]);
        assert_eq!((ok.latency_ns.len(), ok.latency_failures), (3, 0));
        assert_eq!((bad.latency_ns.len(), bad.latency_failures), (0, 3));
        assert_eq!((ok.cost.calls, ok.cost.failures), (3, 0));
        assert_eq!((bad.cost.calls, bad.cost.failures), (3, 3));
        assert_eq!(ok.cost.block_per_call_ns.len(), 2);
        assert!(bad.errors.len() <= KEEP_ERRORS && !bad.errors.is_empty());
        assert!(ok.cost.cpu.children_ns > 0 || ok.cost.cpu.own_ns > 0);
    }
}
