//! `cargo xtask bench calls`: per-call wall-clock cost in the VM
//! (docs/ARCHITECTURE.md#measured-baselines) of (a) spawning `true`, (b) the reference
//! approach (mkdir a cgroup, write limits, `sh -c 'echo $$ > cgroup.procs && exec true'`,
//! rmdir) and (c) `agentcg run -- true` against a running agentcgd. In one VM boot
//! xtask/bench/calls.sh runs the callbench helper (src/bin/callbench.rs); the host turns
//! its samples into DIR/calls.md (also printed) and DIR/calls.json. Release builds
//! throughout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::stats::Stats;
use crate::host::{self, Workspace};
use crate::provision::{self, Which};
use crate::vm::{self, Job, VmOptions, sh_quote_path};

/// The arms in table order: callbench name and label.
const ARMS: [(&str, &str); 3] = [
    ("direct", "(a) spawn `true`"),
    (
        "reference",
        "(b) reference: mkdir + limits + `sh -c 'echo $$ > cgroup.procs && exec true'` + rmdir",
    ),
    ("agentcg", "(c) `agentcg run -- true`"),
];

/// Target for (c−a)/(b−a): agentcg adds at most half the reference's overhead.
const TARGET_RATIO: f64 = 0.5;

/// Per-call overhead: direct spawn vs. the reference approach vs. `agentcg run`
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vm: VmOptions,
    /// Directory for calls.md and calls.json [default: target/bench]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Measured rounds; each round calls every arm once
    #[arg(long, value_name = "N", default_value_t = 300)]
    iterations: usize,
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
        bail!("not every arm ran: {missing}");
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
    ];
    if !agentcg_built {
        env.push((
            "AGENTCG_UNAVAILABLE",
            "building agentcg-daemon and agentcg-cli failed on the host".into(),
        ));
    }
    Job {
        script: format!(
            "sh {}",
            sh_quote_path(&ws.root.join("xtask/bench/calls.sh"))
        ),
        env,
    }
}

/// One row of the table.
#[derive(Debug)]
struct ArmResult {
    name: &'static str,
    label: &'static str,
    stats: Option<Stats>,
    samples_ns: Vec<u64>,
    /// Why the arm has no complete results.
    error: Option<String>,
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
                stats: None,
                samples_ns: Vec::new(),
                error,
            };
        };
        let samples_ns: Vec<u64> = arm["samples_ns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        let error = arm["error"]
            .as_str()
            .map(|err| format!("arm {label} failed: {err}"));
        Self {
            name,
            label,
            stats: Stats::from_ns(&samples_ns),
            samples_ns,
            error,
        }
    }

    fn p50(&self) -> Option<f64> {
        self.stats.map(|s| s.p50)
    }
}

/// The three arms and the overheads over (a) at p50.
#[derive(Debug)]
struct Report {
    arms: Vec<ArmResult>,
    reference_overhead: Option<f64>,
    agentcg_overhead: Option<f64>,
    ratio: Option<f64>,
}

impl Report {
    fn new(raw: &Value) -> Self {
        let arms: Vec<ArmResult> = ARMS.iter().map(|&arm| ArmResult::new(raw, arm)).collect();
        let over = |i: usize| Some(arms[i].p50()? - arms[0].p50()?);
        let (reference_overhead, agentcg_overhead) = (over(1), over(2));
        let ratio = match (agentcg_overhead, reference_overhead) {
            (Some(c), Some(b)) if b > 0.0 => Some(c / b),
            _ => None,
        };
        Self {
            arms,
            reference_overhead,
            agentcg_overhead,
            ratio,
        }
    }

    fn verdict(&self) -> &'static str {
        match self.ratio {
            Some(ratio) if ratio <= TARGET_RATIO => "PASS",
            _ => "MISS",
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
    let ms = |value: Option<f64>| value.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}"));
    let mut md = format!(
        "# Per-call overhead (`cargo xtask bench calls`)\n\n\
         sched_ext VM (software-emulated, {} CPUs, {} memory, kernel {}): {} rounds after {} \
         warm-up rounds, arm order rotated per round; `true`, `sh` and `agentcg` run from \
         the guest's tmpfs. Compare only within this setup \
         (docs/ARCHITECTURE.md#measured-baselines).\n\n\
         | arm | n | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---:|---:|---:|---:|---:|\n",
        args.vm.cpus,
        args.vm.memory,
        args.vm.kernel.display(),
        args.iterations,
        args.warmup,
    );
    for arm in &report.arms {
        let s = arm.stats;
        md += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            arm.label,
            s.map_or(0, |s| s.n),
            ms(s.map(|s| s.p50)),
            ms(s.map(|s| s.p90)),
            ms(s.map(|s| s.p99)),
            ms(s.map(|s| s.mean)),
        );
    }
    md += &format!(
        "\nAdded overhead over (a), p50: (b) − (a) = {} ms; (c) − (a) = {} ms.\n\n\
         Ratio (c − a) / (b − a) = {} (target ≤ {TARGET_RATIO}): **{}**\n",
        ms(report.reference_overhead),
        ms(report.agentcg_overhead),
        ms(report.ratio),
        report.verdict(),
    );
    for error in report.arms.iter().filter_map(|arm| arm.error.as_ref()) {
        md += &format!("\nNote: {error}\n");
    }
    md
}

fn to_json(report: &Report, args: &Args) -> Value {
    let arms: Vec<Value> = report
        .arms
        .iter()
        .map(|arm| {
            let s = arm.stats;
            json!({
                "name": arm.name,
                "label": arm.label,
                "n": s.map_or(0, |s| s.n),
                "p50_ms": s.map(|s| s.p50),
                "p90_ms": s.map(|s| s.p90),
                "p99_ms": s.map(|s| s.p99),
                "mean_ms": s.map(|s| s.mean),
                "error": arm.error,
                "samples_ns": arm.samples_ns,
            })
        })
        .collect();
    json!({
        "vm": { "kernel": args.vm.kernel, "cpus": args.vm.cpus, "memory": args.vm.memory },
        "iterations": args.iterations,
        "warmup": args.warmup,
        "arms": arms,
        "overhead_p50_ms": { "reference": report.reference_overhead, "agentcg": report.agentcg_overhead },
        "ratio": report.ratio,
        "target_ratio": TARGET_RATIO,
        "verdict": report.verdict(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(agentcg: Option<Value>) -> Value {
        let ms = |v: u64| json!([v * 1_000_000, v * 1_000_000]);
        let mut arms = vec![
            json!({"name": "direct", "error": null, "samples_ns": ms(40)}),
            json!({"name": "reference", "error": null, "samples_ns": ms(100)}),
        ];
        arms.extend(agentcg);
        json!({ "arms": arms })
    }

    #[test]
    fn ratio_of_added_overheads() {
        let report = Report::new(&raw(Some(
            json!({"name": "agentcg", "samples_ns": [70_000_000]}),
        )));
        assert_eq!(report.reference_overhead, Some(60.0));
        assert_eq!(report.agentcg_overhead, Some(30.0));
        assert_eq!((report.ratio, report.verdict()), (Some(0.5), "PASS"));
        assert!(report.arms.iter().all(|arm| arm.error.is_none()));
    }

    #[test]
    fn a_missing_or_failed_arm_is_an_error_and_a_miss() {
        let missing = Report::new(&raw(None));
        assert_eq!((missing.ratio, missing.verdict()), (None, "MISS"));
        assert!(
            missing.arms[2]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("did not run"))
        );
        let failed = json!({"name": "agentcg", "error": "round 0: boom", "samples_ns": []});
        let failed = Report::new(&raw(Some(failed)));
        assert!(
            failed.arms[2]
                .error
                .as_deref()
                .is_some_and(|e| e.ends_with("failed: round 0: boom"))
        );
    }
}
