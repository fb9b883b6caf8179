//! `cargo xtask bench cpu`: what the sched_ext scheduler costs and buys (issue 3,
//! acceptance 8). In one VM boot xtask/bench/cpu.sh runs, per round and in alternating
//! order, two arms: `kernel` (agentcgd with `[cpu] scheduler = "kernel"`) and
//! `agentcg_sched` (agentcgd with the default policy, which loads the scheduler). Each
//! arm times a messaging workload (`agentcg run -- msgbench PAIRS TRIPS`, messages/s) and
//! samples the wake-up latency of a high-priority session's runtime (wakelat) while four
//! busy low-priority calls spin. The host turns the raw files into DIR/cpu.md (also
//! printed) and DIR/cpu.json. Targets: throughput ratio agentcg_sched/kernel ≥ 0.97; p99
//! run-queue wait ratio ≤ 0.5. Release builds throughout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::host::Workspace;
use crate::provision::{self, Which};
use crate::vm::{self, Job, VmOptions};

/// The arms, baseline first.
const ARMS: [&str; 2] = ["kernel", "agentcg_sched"];
/// Throughput ratio agentcg_sched/kernel must be at least this (≤ 3 % loss).
const TARGET_THROUGHPUT: f64 = 0.97;
/// p99 run-queue wait ratio agentcg_sched/kernel must be at most this.
const TARGET_LATENCY: f64 = 0.5;

/// Messaging throughput and wake-up latency with vs. without the sched_ext scheduler
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vm: VmOptions,
    /// Directory for cpu.md and cpu.json [default: target/bench]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Rounds; each round runs both arms, order alternating
    #[arg(long, value_name = "N", default_value_t = 5)]
    rounds: usize,
    /// msgbench thread pairs
    #[arg(long, value_name = "N", default_value_t = 4)]
    pairs: usize,
    /// msgbench round trips per pair
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    trips: usize,
    /// wakelat samples (2 ms sleeps) per arm and round
    #[arg(long, value_name = "N", default_value_t = 300)]
    lat_samples: usize,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    provision::ensure(ws, Which::All)?;
    let bin_dir = ws.build_agentcg(true)?;
    let raw_dir = ws.vm_dir().join("bench");
    let status = vm::run(ws, &args.vm, &guest_job(ws, args, &bin_dir, &raw_dir))?.check();
    let raw = match Raw::read(&raw_dir) {
        Ok(raw) => raw,
        Err(err) => return Err(status.err().unwrap_or(err)),
    };
    let report = Report::new(&raw);
    let out = args.out.clone().unwrap_or_else(|| ws.target.join("bench"));
    write_report(&out, &report, args)?;
    let status = status?;
    if status != 0 {
        bail!("the guest benchmark script failed (status {status}); see the guest log above");
    }
    if let Some(arm) = report.throughput.iter().find(|arm| arm.rates.is_empty()) {
        bail!(
            "arm {} has no throughput samples; see the guest log above",
            arm.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs xtask/bench/cpu.sh with the release binaries.
fn guest_job(ws: &Workspace, args: &Args, bin_dir: &Path, raw_dir: &Path) -> Job {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    Job::script_file(
        ws,
        "xtask/bench/cpu.sh",
        vec![
            ("AGENTCG_BIN_DIR", path(bin_dir)),
            ("BENCH_OUT", path(raw_dir)),
            ("ROUNDS", args.rounds.to_string()),
            ("PAIRS", args.pairs.to_string()),
            ("TRIPS", args.trips.to_string()),
            ("LAT_SAMPLES", args.lat_samples.to_string()),
        ],
    )
}

/// What cpu.sh wrote: throughput lines and wake-up samples.
#[derive(Debug, Default)]
struct Raw {
    /// (round, arm, messages/s).
    throughput: Vec<(usize, String, f64)>,
    /// Per arm (in `ARMS` order): (sleep lateness µs, run-queue wait µs) per wake-up.
    latency: Vec<Vec<(u64, u64)>>,
}

impl Raw {
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("throughput.txt");
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "cpu.sh wrote no {}: see the guest log above",
                path.display()
            )
        })?;
        let latency = ARMS
            .iter()
            .map(|arm| fs::read_to_string(dir.join(format!("lat-{arm}.txt"))).unwrap_or_default())
            .map(|text| parse_latency(&text))
            .collect();
        Ok(Self {
            throughput: parse_throughput(&text),
            latency,
        })
    }
}

/// `ROUND ARM MSGS_PER_S` lines; malformed lines are skipped.
fn parse_throughput(text: &str) -> Vec<(usize, String, f64)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            Some((
                f.next()?.parse().ok()?,
                f.next()?.to_owned(),
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// wakelat's `LATE_US RUNQ_US` lines.
fn parse_latency(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace().map(|x| x.parse().ok());
            Some((f.next()??, f.next()??))
        })
        .collect()
}

/// Messages/s of one arm over the rounds.
#[derive(Debug)]
struct Throughput {
    name: &'static str,
    rates: Vec<f64>,
    mean: f64,
    sd: f64,
}

impl Throughput {
    fn new(name: &'static str, raw: &Raw) -> Self {
        let rates: Vec<f64> = raw
            .throughput
            .iter()
            .filter(|(_, arm, _)| arm == name)
            .map(|&(_, _, rate)| rate)
            .collect();
        let n = rates.len() as f64;
        let mean = rates.iter().sum::<f64>() / n.max(1.0);
        let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        Self {
            name,
            rates,
            mean,
            sd: var.sqrt(),
        }
    }
}

/// Wake-up latency percentiles (µs) of one arm.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Latency {
    n: usize,
    runq_p50: u64,
    runq_p99: u64,
    late_p50: u64,
    late_p99: u64,
}

impl Latency {
    fn new(samples: &[(u64, u64)]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let late: Vec<u64> = samples.iter().map(|s| s.0).collect();
        let runq: Vec<u64> = samples.iter().map(|s| s.1).collect();
        Some(Self {
            n: samples.len(),
            runq_p50: percentile(runq.clone(), 50),
            runq_p99: percentile(runq, 99),
            late_p50: percentile(late.clone(), 50),
            late_p99: percentile(late, 99),
        })
    }
}

/// The `p`-th percentile as tests/tests/sched.rs computes it (index `len * p / 100`).
fn percentile(mut v: Vec<u64>, p: usize) -> u64 {
    v.sort_unstable();
    v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

#[derive(Debug)]
struct Report {
    throughput: Vec<Throughput>,
    latency: Vec<Option<Latency>>,
    /// agentcg_sched / kernel mean messages/s.
    throughput_ratio: Option<f64>,
    /// agentcg_sched / kernel messages/s within each round (paired: same host load).
    round_ratios: Vec<f64>,
    /// agentcg_sched / kernel p99 run-queue wait.
    runq_ratio: Option<f64>,
    /// agentcg_sched / kernel p99 sleep lateness (reported, no target).
    late_ratio: Option<f64>,
}

impl Report {
    fn new(raw: &Raw) -> Self {
        let throughput: Vec<Throughput> =
            ARMS.iter().map(|arm| Throughput::new(arm, raw)).collect();
        let latency: Vec<Option<Latency>> = raw.latency.iter().map(|s| Latency::new(s)).collect();
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        let throughput_ratio = (!throughput[0].rates.is_empty() && !throughput[1].rates.is_empty())
            .then(|| ratio(throughput[1].mean, throughput[0].mean))
            .flatten();
        let lat = |f: fn(&Latency) -> u64| match (latency.first(), latency.get(1)) {
            (Some(Some(k)), Some(Some(s))) => ratio(f(s) as f64, f(k).max(1) as f64),
            _ => None,
        };
        Self {
            throughput_ratio,
            round_ratios: round_ratios(raw),
            runq_ratio: lat(|l| l.runq_p99),
            late_ratio: lat(|l| l.late_p99),
            throughput,
            latency,
        }
    }

    fn throughput_verdict(&self) -> &'static str {
        verdict(
            self.throughput_ratio
                .is_some_and(|r| r >= TARGET_THROUGHPUT),
        )
    }

    fn latency_verdict(&self) -> &'static str {
        verdict(self.runq_ratio.is_some_and(|r| r <= TARGET_LATENCY))
    }
}

/// agentcg_sched / kernel messages/s of each round that has both arms, in round order.
fn round_ratios(raw: &Raw) -> Vec<f64> {
    let rate = |round: usize, arm: &str| {
        raw.throughput
            .iter()
            .find(|(r, a, _)| *r == round && a == arm)
            .map(|t| t.2)
    };
    let rounds = raw
        .throughput
        .iter()
        .map(|t| t.0)
        .max()
        .map_or(0, |r| r + 1);
    (0..rounds)
        .filter_map(|round| match (rate(round, ARMS[0]), rate(round, ARMS[1])) {
            (Some(k), Some(s)) if k > 0.0 => Some(s / k),
            _ => None,
        })
        .collect()
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// Writes cpu.md and cpu.json into `out` and prints the markdown.
fn write_report(out: &Path, report: &Report, args: &Args) -> Result<()> {
    super::write_report(out, "cpu", &markdown(report, args), &to_json(report, args))
}

fn fmt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn markdown(report: &Report, args: &Args) -> String {
    let mut md = format!(
        "# Scheduler cost and benefit (`cargo xtask bench cpu`)\n\n\
         sched_ext VM (software-emulated, {} CPUs, {} memory, kernel {}): {} rounds, arm \
         order alternating per round. `kernel`: agentcgd with `[cpu] scheduler = \"kernel\"`; \
         `agentcg_sched`: agentcgd with the default policy (sched_ext scheduler loaded). \
         Compare only within this setup.\n\n\
         ## Throughput: `agentcg run -- msgbench {} {}`\n\n\
         | arm | rounds | msgs/s mean ± sd |\n|---|---:|---:|\n",
        args.vm.cpus,
        args.vm.memory,
        args.vm.kernel.display(),
        args.rounds,
        args.pairs,
        args.trips,
    );
    for arm in &report.throughput {
        md += &format!(
            "| {} | {} | {:.0} ± {:.0} |\n",
            arm.name,
            arm.rates.len(),
            arm.mean,
            arm.sd
        );
    }
    let rounds: Vec<String> = report
        .round_ratios
        .iter()
        .map(|r| format!("{r:.3}"))
        .collect();
    md += &format!(
        "\nThroughput ratio agentcg_sched / kernel = {} (target ≥ {TARGET_THROUGHPUT}): **{}**; \
         per round (paired, same host load): {}\n\n\
         ## Wake-up latency: high-priority runtime (wakelat, 2 ms sleeps) vs 4 busy \
         low-priority calls\n\n\
         | arm | n | run-queue wait p50 µs | p99 µs | sleep lateness p50 µs | p99 µs |\n\
         |---|---:|---:|---:|---:|---:|\n",
        fmt(report.throughput_ratio, 3),
        report.throughput_verdict(),
        if rounds.is_empty() {
            "–".to_owned()
        } else {
            rounds.join(", ")
        },
    );
    for (name, lat) in ARMS.iter().zip(&report.latency) {
        let v = |f: fn(&Latency) -> u64| lat.map_or_else(|| "–".to_owned(), |l| f(&l).to_string());
        md += &format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            lat.map_or(0, |l| l.n),
            v(|l| l.runq_p50),
            v(|l| l.runq_p99),
            v(|l| l.late_p50),
            v(|l| l.late_p99),
        );
    }
    md += &format!(
        "\np99 run-queue wait ratio agentcg_sched / kernel = {} (target ≤ {TARGET_LATENCY}): \
         **{}**; p99 sleep lateness ratio = {} (no target: under emulation it includes the \
         host's timer delivery to a busy vCPU, which no guest scheduler controls).\n",
        fmt(report.runq_ratio, 3),
        report.latency_verdict(),
        fmt(report.late_ratio, 3),
    );
    md
}

fn to_json(report: &Report, args: &Args) -> Value {
    let throughput: Vec<Value> = report
        .throughput
        .iter()
        .map(|arm| json!({"name": arm.name, "rates": arm.rates, "mean": arm.mean, "sd": arm.sd}))
        .collect();
    let latency: Vec<Value> = ARMS
        .iter()
        .zip(&report.latency)
        .map(|(name, lat)| {
            json!({
                "name": name,
                "n": lat.map_or(0, |l| l.n),
                "runq_p50_us": lat.map(|l| l.runq_p50),
                "runq_p99_us": lat.map(|l| l.runq_p99),
                "late_p50_us": lat.map(|l| l.late_p50),
                "late_p99_us": lat.map(|l| l.late_p99),
            })
        })
        .collect();
    json!({
        "vm": { "kernel": args.vm.kernel, "cpus": args.vm.cpus, "memory": args.vm.memory },
        "rounds": args.rounds,
        "msgbench": { "pairs": args.pairs, "trips": args.trips },
        "lat_samples_per_round": args.lat_samples,
        "throughput": throughput,
        "throughput_ratio": report.throughput_ratio,
        "throughput_round_ratios": report.round_ratios,
        "throughput_target": TARGET_THROUGHPUT,
        "throughput_verdict": report.throughput_verdict(),
        "latency": latency,
        "runq_p99_ratio": report.runq_ratio,
        "late_p99_ratio": report.late_ratio,
        "latency_target": TARGET_LATENCY,
        "latency_verdict": report.latency_verdict(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> Raw {
        let throughput = parse_throughput(
            "0 kernel 100000\n0 agentcg_sched 98000\n1 agentcg_sched 98000\n1 kernel 100000\nbad\n",
        );
        let lat = |runq: u64| (1..=100).map(|i| (i * 10, i * runq)).collect();
        Raw {
            throughput,
            latency: vec![lat(10), lat(4)],
        }
    }

    #[test]
    fn ratios_and_verdicts() {
        let report = Report::new(&raw());
        assert_eq!(report.throughput[0].rates, [100_000.0, 100_000.0]);
        assert_eq!(
            (report.throughput[1].mean, report.throughput[1].sd),
            (98_000.0, 0.0)
        );
        assert_eq!(report.throughput_ratio, Some(0.98));
        assert_eq!(report.round_ratios, [0.98, 0.98]);
        assert_eq!(report.throughput_verdict(), "PASS");
        let k = report.latency[0].expect("kernel samples");
        assert_eq!(
            (k.n, k.runq_p50, k.runq_p99, k.late_p99),
            (100, 510, 1000, 1000)
        );
        assert_eq!(report.runq_ratio, Some(0.4));
        assert_eq!(report.latency_verdict(), "PASS");
    }

    #[test]
    fn missing_arms_are_misses() {
        let report = Report::new(&Raw::default());
        assert_eq!((report.throughput_ratio, report.runq_ratio), (None, None));
        assert_eq!(
            (report.throughput_verdict(), report.latency_verdict()),
            ("MISS", "MISS")
        );
    }

    #[test]
    fn sample_standard_deviation() {
        let raw = Raw {
            throughput: parse_throughput("0 kernel 1\n1 kernel 3\n"),
            ..Raw::default()
        };
        let arm = Throughput::new("kernel", &raw);
        assert_eq!((arm.mean, arm.sd), (2.0, 2f64.sqrt()));
    }
}
