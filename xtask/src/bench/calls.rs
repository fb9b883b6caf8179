//! `cargo xtask bench calls`: per-call cost in the VM of (a) spawning `true`, (b) the
//! reference approach (mkdir a cgroup, write limits, `sh -c 'echo $$ > cgroup.procs &&
//! exec true'`, rmdir) and (c) `agentcg run -- true` against a running agentcgd. In one
//! VM boot xtask/bench/calls.sh runs the callbench helper (src/bin/callbench/); the host
//! turns its samples into DIR/calls.md (also printed) and DIR/calls.json. Release builds
//! throughout.
//!
//! Two figures, each a ratio (c − a)/(b − a) within the run: (1) the latency the caller
//! sees (p50), and (2) the full cost per call: wall time of back-to-back calls each
//! waited to completion (for (c): its record readable through the API and its cgroup
//! gone, whatever agentcgd defers past the client's exit) and the CPU time of client
//! and daemon. The target applies to the full cost. A failed call counts as the worst
//! value (infinite) in every statistic.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::stats::{Stats, fmt_ms};
use crate::host::{self, Workspace};
use crate::provision::{self, Which};
use crate::vm::{self, Job, VmOptions};

/// The arms in table order: callbench name and label.
const ARMS: [(&str, &str); 3] = [
    ("direct", "(a) spawn `true`"),
    (
        "reference",
        "(b) reference: mkdir + limits + `sh -c 'echo $$ > cgroup.procs && exec true'` + rmdir",
    ),
    ("agentcg", "(c) `agentcg run -- true`"),
];

/// Target for (c−a)/(b−a) of the full cost: agentcg adds at most half the reference's.
const TARGET_RATIO: f64 = 0.5;

/// Per-call overhead: direct spawn vs. the reference approach vs. `agentcg run`
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vm: VmOptions,
    /// Directory for calls.md and calls.json [default: target/bench]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Measured latency rounds (each calls every arm once), and calls per arm for the
    /// full cost
    #[arg(long, value_name = "N", default_value_t = 300)]
    iterations: usize,
    /// Calls per back-to-back block of the full cost
    #[arg(long, value_name = "N", default_value_t = 10)]
    block: usize,
    /// Warm-up rounds, not recorded
    #[arg(long, value_name = "N", default_value_t = 30)]
    warmup: usize,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    provision::ensure(ws, Which::All)?;
    let callbench = build_callbench(ws)?;
    let agentcg = ws.build_agentcg(true);
    if let Err(err) = &agentcg {
        eprintln!("[xtask] arm (c) will be skipped: {err:#}");
    }
    let job = guest_job(ws, args, &callbench, agentcg.as_deref().ok());
    let status = vm::run(ws, &args.vm, &job)?.check();
    let raw = match read_raw(&ws.vm_dir().join("bench/calls-raw.json")) {
        Ok(raw) => raw,
        Err(err) => return Err(status.err().unwrap_or(err)),
    };
    let report = Report::new(&raw);
    let out = args.out.clone().unwrap_or_else(|| ws.target.join("bench"));
    write_report(&out, &report, args)?;
    let status = status?;
    if let Some(missing) = report.arms.iter().find_map(|arm| arm.error.as_ref()) {
        bail!("not every arm ran cleanly: {missing}");
    }
    if status != 0 {
        bail!("the guest benchmark script failed (status {status}); see the guest log above");
    }
    Ok(ExitCode::SUCCESS)
}

/// The samples callbench wrote in the guest (calls.sh removes the previous run's first).
fn read_raw(path: &Path) -> Result<Value> {
    let raw = fs::read_to_string(path).with_context(|| {
        format!(
            "callbench wrote no {}: see the guest log above",
            path.display()
        )
    })?;
    serde_json::from_str(&raw).with_context(|| format!("{} is not JSON", path.display()))
}

/// Builds callbench (release) and returns its path.
fn build_callbench(ws: &Workspace) -> Result<PathBuf> {
    host::run(
        ws.cargo()
            .args(["build", "--release", "-p", "xtask", "--bin", "callbench"]),
        "the callbench helper in xtask/src/bin must build; fix the errors above",
    )?;
    Ok(ws.profile_dir(true).join("callbench"))
}

/// Runs xtask/bench/calls.sh with the release binaries.
fn guest_job(ws: &Workspace, args: &Args, callbench: &Path, bin_dir: Option<&Path>) -> Job {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let agentcg_built = bin_dir.is_some();
    let mut env = vec![
        (
            "AGENTCG_BIN_DIR",
            path(bin_dir.unwrap_or(&ws.profile_dir(true))),
        ),
        ("CALLBENCH", path(callbench)),
        ("BENCH_OUT", path(&ws.vm_dir().join("bench"))),
        ("ITERATIONS", args.iterations.to_string()),
        ("WARMUP", args.warmup.to_string()),
        ("BLOCK", args.block.to_string()),
    ];
    if !agentcg_built {
        env.push((
            "AGENTCG_UNAVAILABLE",
            "building agentcg-daemon and agentcg-cli failed on the host".into(),
        ));
    }
    Job::script_file(ws, "xtask/bench/calls.sh", env)
}

/// One row of the tables.
#[derive(Debug)]
struct ArmResult {
    name: &'static str,
    label: &'static str,
    /// Figure 1: what the caller waited for, failures infinite.
    latency: Option<Stats>,
    samples_ns: Vec<u64>,
    /// Figure 2: per call, ms (infinite when a call failed).
    cost: Option<Cost>,
    /// Why the arm has no complete results.
    error: Option<String>,
}

/// The full cost of one arm, per call, in ms; infinite when any call failed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cost {
    calls: u64,
    failures: u64,
    wall: f64,
    /// callbench itself and its waited-for children (tools, sh, the agentcg client).
    client_cpu: f64,
    daemon_cpu: f64,
}

impl Cost {
    fn from_raw(cost: &Value) -> Option<Self> {
        let get = |key: &str| cost[key].as_u64();
        let calls = get("calls").filter(|&n| n > 0)?;
        let failures = get("failures")?;
        let per_call = |ns: u64| {
            if failures > 0 {
                f64::INFINITY
            } else {
                ns as f64 / 1e6 / calls as f64
            }
        };
        Some(Self {
            calls,
            failures,
            wall: per_call(get("wall_ns")?),
            client_cpu: per_call(get("own_cpu_ns")? + get("children_cpu_ns")?),
            daemon_cpu: per_call(get("daemon_cpu_ns")?),
        })
    }

    fn cpu(&self) -> f64 {
        self.client_cpu + self.daemon_cpu
    }
}

impl ArmResult {
    fn new(raw: &Value, (name, label): (&'static str, &'static str)) -> Self {
        let arms = raw["arms"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(arm) = arms.iter().find(|arm| arm["name"] == name) else {
            let error = Some(format!(
                "arm {label} did not run; the guest log above says why"
            ));
            return Self {
                name,
                label,
                latency: None,
                samples_ns: Vec::new(),
                cost: None,
                error,
            };
        };
        let samples_ns: Vec<u64> = arm["latency"]["samples_ns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        let failures = arm["latency"]["failures"].as_u64().unwrap_or(0) as usize;
        let cost = Cost::from_raw(&arm["cost"]);
        let errors: Vec<&str> = arm["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let error = match (errors.first(), raw["cost_error"].as_str(), cost) {
            (Some(first), ..) => Some(format!("arm {label} had failed calls, e.g. {first}")),
            (None, Some(err), _) => Some(format!("full cost not measured: {err}")),
            (None, None, None) => Some(format!("arm {label}: no full-cost calls")),
            (None, None, Some(_)) => None,
        };
        Self {
            name,
            label,
            latency: Stats::with_failures_ns(&samples_ns, failures),
            samples_ns,
            cost,
            error,
        }
    }
}

/// (c − a)/(b − a) of one figure; `None` when a value is missing or failed.
fn overhead_ratio(a: Option<f64>, b: Option<f64>, c: Option<f64>) -> Overheads {
    let over = |x: Option<f64>| Some(x? - a?).filter(|v| v.is_finite());
    let (reference, agentcg) = (over(b), over(c));
    let ratio = match (agentcg, reference) {
        (Some(c), Some(b)) if b > 0.0 => Some(c / b),
        _ => None,
    };
    Overheads {
        reference,
        agentcg,
        ratio,
    }
}

/// Added cost over (a) of (b) and (c), and their ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Overheads {
    reference: Option<f64>,
    agentcg: Option<f64>,
    ratio: Option<f64>,
}

impl Overheads {
    fn passes(&self) -> bool {
        self.ratio.is_some_and(|r| r <= TARGET_RATIO)
    }
}

/// The three arms, and the overheads over (a): latency at p50, full cost per call.
#[derive(Debug)]
struct Report {
    arms: Vec<ArmResult>,
    latency: Overheads,
    wall: Overheads,
    cpu: Overheads,
}

impl Report {
    fn new(raw: &Value) -> Self {
        let arms: Vec<ArmResult> = ARMS.iter().map(|&arm| ArmResult::new(raw, arm)).collect();
        let figure = |f: &dyn Fn(&ArmResult) -> Option<f64>| {
            overhead_ratio(f(&arms[0]), f(&arms[1]), f(&arms[2]))
        };
        let latency = figure(&|arm| arm.latency.map(|s| s.p50));
        let wall = figure(&|arm| arm.cost.map(|c| c.wall));
        let cpu = figure(&|arm| arm.cost.map(|c| c.cpu()));
        Self {
            arms,
            latency,
            wall,
            cpu,
        }
    }

    /// The target applies to the full cost: wall time and CPU time.
    fn verdict(&self) -> &'static str {
        if self.wall.passes() && self.cpu.passes() {
            "PASS"
        } else {
            "MISS"
        }
    }
}

/// Writes calls.md and calls.json into `out` and prints the markdown.
fn write_report(out: &Path, report: &Report, args: &Args) -> Result<()> {
    super::write_report(
        out,
        "calls",
        &markdown(report, args),
        &to_json(report, args),
    )
}

fn markdown(report: &Report, args: &Args) -> String {
    let ms = |value: Option<f64>| fmt_ms(value, 2);
    let ratio = |o: &Overheads| {
        format!(
            "(b) − (a) = {} ms, (c) − (a) = {} ms, ratio (c − a)/(b − a) = {}",
            ms(o.reference),
            ms(o.agentcg),
            ms(o.ratio)
        )
    };
    let pass = |o: &Overheads| if o.passes() { "PASS" } else { "MISS" };
    let mut md = format!(
        "# Per-call overhead (`cargo xtask bench calls`)\n\n\
         sched_ext VM (software-emulated, {} CPUs, {} memory, kernel {}); `true`, `sh` and \
         `agentcg` run from the guest's tmpfs; agentcgd runs throughout. Compare only within \
         this setup. A call of (c) is over when agentcgd has its record (GET \
         /v1/calls/{{id}} returns it) and its cgroup directory is gone; no call starts \
         before the previous one is over. A failed call counts as infinite (\"failed\").\n\n\
         ## 1. Latency the caller sees\n\n\
         {} rounds after {} warm-up rounds, arm order rotated per round; the clock stops \
         when the caller's command returns, the wait for agentcgd's end-of-call work is \
         outside it.\n\n\
         | arm | n | failed | p50 ms | p90 ms | p99 ms | mean ms |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        args.vm.cpus,
        args.vm.memory,
        args.vm.kernel.display(),
        args.iterations,
        args.warmup,
    );
    for arm in &report.arms {
        let s = arm.latency;
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            arm.label,
            s.map_or(0, |s| s.n),
            s.map_or(0, |s| s.failures),
            ms(s.map(|s| s.p50)),
            ms(s.map(|s| s.p90)),
            ms(s.map(|s| s.p99)),
            ms(s.map(|s| s.mean)),
        );
    }
    md += &format!("\nAt p50: {}.\n", ratio(&report.latency));
    md += &format!(
        "\n## 2. Full cost per call\n\n\
         {} calls per arm in blocks of {} back-to-back calls, the arms' blocks in rotated \
         order; each call waited to completion inside the clock (for (c): record and rmdir, \
         the wait polls every 0.2 ms: its wall time counts against agentcg, its own CPU is the \
         measurement's and is left out). CPU = callbench (the reference arm's mkdir, writes \
         and rmdir are its own syscalls) + \
         its children (tool, `sh`, `agentcg` client) + agentcgd (utime + stime from \
         /proc/PID/stat, 10 ms ticks summed over the run), per call.\n\n\
         | arm | calls | failed | wall ms/call | CPU ms/call | client CPU | agentcgd CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        args.iterations, args.block,
    );
    for arm in &report.arms {
        let c = arm.cost;
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            arm.label,
            c.map_or(0, |c| c.calls),
            c.map_or(0, |c| c.failures),
            ms(c.map(|c| c.wall)),
            ms(c.map(|c| c.cpu())),
            ms(c.map(|c| c.client_cpu)),
            ms(c.map(|c| c.daemon_cpu)),
        );
    }
    md += &format!(
        "\nWall: {}: **{}**.\n\nCPU: {}: **{}**.\n\n\
         Target (full cost, wall and CPU): ratio ≤ {TARGET_RATIO}: **{}**\n",
        ratio(&report.wall),
        pass(&report.wall),
        ratio(&report.cpu),
        pass(&report.cpu),
        report.verdict(),
    );
    for error in report.arms.iter().filter_map(|arm| arm.error.as_ref()) {
        md += &format!("\nNote: {error}\n");
    }
    md
}

fn overheads_json(o: &Overheads) -> Value {
    json!({"reference_ms": o.reference, "agentcg_ms": o.agentcg, "ratio": o.ratio,
           "pass": o.passes()})
}

fn to_json(report: &Report, args: &Args) -> Value {
    let arms: Vec<Value> = report
        .arms
        .iter()
        .map(|arm| {
            let s = arm.latency;
            let c = arm.cost;
            json!({
                "name": arm.name,
                "label": arm.label,
                "latency": {
                    "n": s.map_or(0, |s| s.n),
                    "failures": s.map_or(0, |s| s.failures),
                    "p50_ms": s.map(|s| s.p50),
                    "p90_ms": s.map(|s| s.p90),
                    "p99_ms": s.map(|s| s.p99),
                    "mean_ms": s.map(|s| s.mean),
                    "samples_ns": arm.samples_ns,
                },
                "full_cost_per_call": c.map(|c| json!({
                    "calls": c.calls, "failures": c.failures, "wall_ms": c.wall,
                    "cpu_ms": c.cpu(), "client_cpu_ms": c.client_cpu,
                    "daemon_cpu_ms": c.daemon_cpu,
                })),
                "error": arm.error,
            })
        })
        .collect();
    json!({
        "vm": { "kernel": args.vm.kernel, "cpus": args.vm.cpus, "memory": args.vm.memory },
        "iterations": args.iterations,
        "warmup": args.warmup,
        "block": args.block,
        "arms": arms,
        "latency_p50": overheads_json(&report.latency),
        "full_cost_wall": overheads_json(&report.wall),
        "full_cost_cpu": overheads_json(&report.cpu),
        "target_ratio": TARGET_RATIO,
        "verdict": report.verdict(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arm as callbench writes it: latency samples (ms) and the full cost (ms per call).
    fn arm(name: &str, latency_ms: &[u64], failures: u64, wall_ms: u64, cpu_ms: u64) -> Value {
        let ns: Vec<u64> = latency_ms.iter().map(|ms| ms * 1_000_000).collect();
        json!({"name": name, "errors": [],
               "latency": {"samples_ns": ns, "failures": failures},
               "cost": {"calls": 10, "failures": failures, "wall_ns": wall_ms * 10_000_000,
                        "own_cpu_ns": cpu_ms * 2_000_000, "children_cpu_ns": cpu_ms * 5_000_000,
                        "daemon_cpu_ns": cpu_ms * 3_000_000}})
    }

    fn raw(agentcg: Option<Value>) -> Value {
        let mut arms = vec![
            arm("direct", &[40, 40], 0, 40, 10),
            arm("reference", &[100, 100], 0, 100, 30),
        ];
        arms.extend(agentcg);
        json!({ "arms": arms })
    }

    #[test]
    fn ratios_of_added_overheads_in_both_figures() {
        let report = Report::new(&raw(Some(arm("agentcg", &[70], 0, 80, 15))));
        assert_eq!(report.latency.reference, Some(60.0));
        assert_eq!(report.latency.ratio, Some(0.5));
        assert!(report.arms.iter().all(|arm| arm.error.is_none()));
        // Full cost: wall (80 − 40)/(100 − 40), CPU (15 − 10)/(30 − 10).
        let wall = report.wall.ratio.expect("wall ratio");
        assert!((wall - 40.0 / 60.0).abs() < 1e-9, "{wall}");
        assert_eq!(report.cpu.ratio, Some(0.25));
        assert_eq!(report.verdict(), "MISS", "the wall time misses");
        let md = markdown(&report, &test_args());
        assert!(
            md.contains("ratio (c − a)/(b − a) = 0.67: **MISS**"),
            "{md}"
        );
        assert!(
            md.contains("ratio (c − a)/(b − a) = 0.25: **PASS**"),
            "{md}"
        );
    }

    /// The old figure stopped at the client's exit: a cheap latency does not make the
    /// verdict when the full cost misses, and the latency ratio alone gives no PASS.
    #[test]
    fn the_verdict_is_the_full_cost() {
        let cheap_latency_dear_end = Report::new(&raw(Some(arm("agentcg", &[50], 0, 95, 28))));
        assert!(cheap_latency_dear_end.latency.passes());
        assert_eq!(cheap_latency_dear_end.verdict(), "MISS");
        let cheap = Report::new(&raw(Some(arm("agentcg", &[90], 0, 60, 15))));
        assert!(!cheap.latency.passes());
        assert_eq!(cheap.verdict(), "PASS");
    }

    #[test]
    fn a_failed_call_is_the_worst_value_everywhere() {
        let report = Report::new(&raw(Some(arm("agentcg", &[50, 50, 50], 4, 50, 12))));
        let c = &report.arms[2];
        assert!(c.latency.expect("stats").p50.is_infinite(), "4 of 7 failed");
        assert!(c.cost.expect("cost").wall.is_infinite());
        assert_eq!((report.wall.ratio, report.verdict()), (None, "MISS"));
        let md = markdown(&report, &test_args());
        assert!(
            md.contains("| (c) `agentcg run -- true` | 7 | 4 | failed |"),
            "{md}"
        );
    }

    #[test]
    fn a_missing_or_erroring_arm_is_an_error_and_a_miss() {
        let missing = Report::new(&raw(None));
        assert_eq!((missing.latency.ratio, missing.verdict()), (None, "MISS"));
        assert!(
            missing.arms[2]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("did not run"))
        );
        let mut failed = arm("agentcg", &[70], 0, 80, 15);
        failed["errors"] = json!(["latency round 0: boom"]);
        let failed = Report::new(&raw(Some(failed)));
        assert!(
            failed.arms[2]
                .error
                .as_deref()
                .is_some_and(|e| e.ends_with("e.g. latency round 0: boom"))
        );
    }

    fn test_args() -> Args {
        Args {
            vm: VmOptions::for_tests(),
            out: None,
            iterations: 10,
            block: 10,
            warmup: 0,
        }
    }
}
