//! `cargo xtask bench memory`: the AgentCgroup multi-tenant memory experiment replayed in
//! the VM, with agentcg as one arm (issue 4). Not part of CI.
//!
//! A parent cgroup (memory.max per `--limits`, no swap) holds three sessions, as a
//! systemd slice or a Kubernetes pod holds agentcg's root: HIGH replays
//! `dask__dask-11628` next to a process holding a 100 MiB base (the agent runtime), two
//! LOWs replay `sigmavirus24__github3.py-673`, all starting together, time compressed
//! (memreplay: 64 MiB touched chunks, latency of every growth step). Arms
//! (xtask/bench/memory.sh): (a) parent unlimited, the yardstick; (b) no isolation;
//! (c) static split; (d) memory.high=400M on the LOWs; (e) agentcg. Every arm runs under
//! agentcgd's sched_ext scheduler with the same CPU weights, oom_score_adj and declared
//! peaks; only the memory handling differs. Runs interleave the arms (run 1 of every
//! arm, then run 2, ...), the order rotated from group to group. Kills are read from the
//! wait status and each session cgroup's `memory.events` `oom_kill`, never from a
//! missing file. The host writes DIR/memory.md (also printed, report.rs), memory.json
//! and memory.png. The traces are read in place from `--traces` (default: the project's tests/traces).

mod chart;
mod report;
mod sim;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde_json::Value;

use self::report::{Report, markdown, to_json};
use super::stats::Stats;
use crate::host::Workspace;
use crate::provision::{self, Which};
use crate::vm::{self, Job, VmOptions};

/// The recorded runs replayed by default, under `--traces`.
const TRACE_HIGH: &str = "claude-haiku/dask__dask-11628";
const TRACE_LOW: &str = "claude-haiku/sigmavirus24__github3.py-673";
/// The HIGH session's agent-runtime base, MiB.
const BASE_MIB: u32 = 100;
/// Targets for arm (e) against arm (a).
const TARGET_P95_RATIO: f64 = 1.25;
const TARGET_LOW_DONE_RATIO: f64 = 2.0;
/// The limit at which arm (e) must keep all three sessions alive in every run.
const TARGET_ALIVE_LIMIT: u32 = 1100;
/// Wait statuses (as sh reports them).
const STATUS_SIGKILL: i32 = 128 + 9;
const STATUS_SIGTERM: i32 = 128 + 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Arm {
    /// (a) parent memory.max = max: the yardstick
    #[value(name = "unlimited")]
    Unlimited,
    /// (b) parent memory.max only
    #[value(name = "no_isolation")]
    NoIsolation,
    /// (c) each session memory.max = 1/3 of the parent
    #[value(name = "static_split")]
    StaticSplit,
    /// (d) memory.high = 400M on the LOW sessions only
    #[value(name = "low_high_400m")]
    LowHigh400m,
    /// (e) agentcgd on the parent, sessions and tool calls through the agentcg CLI
    #[value(name = "agentcg")]
    Agentcg,
}

const ALL_ARMS: [Arm; 5] = [
    Arm::Unlimited,
    Arm::NoIsolation,
    Arm::StaticSplit,
    Arm::LowHigh400m,
    Arm::Agentcg,
];

impl Arm {
    /// The name memory.sh and the reports use.
    fn name(self) -> &'static str {
        match self {
            Arm::Unlimited => "unlimited",
            Arm::NoIsolation => "no_isolation",
            Arm::StaticSplit => "static_split",
            Arm::LowHigh400m => "low_high_400m",
            Arm::Agentcg => "agentcg",
        }
    }

    fn letter(self) -> char {
        match self {
            Arm::Unlimited => 'a',
            Arm::NoIsolation => 'b',
            Arm::StaticSplit => 'c',
            Arm::LowHigh400m => 'd',
            Arm::Agentcg => 'e',
        }
    }

    fn describe(self, limit: u32) -> String {
        match self {
            Arm::Unlimited => "parent unlimited (yardstick)".to_owned(),
            Arm::NoIsolation => "no isolation (parent memory.max only)".to_owned(),
            Arm::StaticSplit => format!("static split ({} MiB each)", limit / 3),
            Arm::LowHigh400m => "memory.high=400M on LOWs".to_owned(),
            Arm::Agentcg => "agentcg (agentcgd, default policy)".to_owned(),
        }
    }
}

/// Multi-tenant memory replay: survival and HIGH allocation latency per arm
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vm: VmOptions,
    /// Directory for memory.md, memory.json and memory.png [default: target/bench]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The recorded agent runs [default: tests/traces in the workspace]
    #[arg(long, value_name = "DIR")]
    traces: Option<PathBuf>,
    /// The run HIGH replays, under --traces
    #[arg(long, value_name = "RUN", default_value = TRACE_HIGH)]
    high: String,
    /// The run both LOWs replay, under --traces
    #[arg(long, value_name = "RUN", default_value = TRACE_LOW)]
    low: String,
    /// Repetitions per arm, speed and limit (interleaved: run 1 of every arm, then run 2, ...)
    #[arg(long, value_name = "N", default_value_t = 10)]
    runs: usize,
    /// Arms to run
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = ALL_ARMS)]
    arms: Vec<Arm>,
    /// Time compression factors
    #[arg(long, value_name = "X,..", value_delimiter = ',', default_values_t = [10, 50])]
    speeds: Vec<u32>,
    /// Parent memory.max settings, MiB
    #[arg(long, value_name = "MIB,..", value_delimiter = ',', default_values_t = [1100, 1300])]
    limits: Vec<u32>,
    /// Do not boot the VM: rebuild the report from the raw results of the last run
    /// (target/vm/bench-memory/raw) for the same selection
    #[arg(long)]
    report_only: bool,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    if args.runs == 0 || args.arms.is_empty() || args.speeds.is_empty() || args.limits.is_empty() {
        bail!("--runs, --arms, --speeds and --limits must each select at least one value");
    }
    if args.speeds.contains(&0) || args.limits.iter().any(|&l| l < 3) {
        bail!("speeds must be positive and limits at least 3 MiB");
    }
    let traces = args
        .traces
        .clone()
        .unwrap_or_else(|| ws.root.join("tests/traces"));
    let resources = |run: &str| traces.join(run).join("resources.json");
    let (high, low) = (resources(&args.high), resources(&args.low));
    for trace in [&high, &low] {
        if !trace.is_file() {
            bail!(
                "trace {} is missing: the memory benchmark replays recorded agent runs \
                 (tests/traces by default; --high and --low name runs under --traces DIR)",
                trace.display()
            );
        }
    }
    let (high, low) = (fs::canonicalize(&high)?, fs::canonicalize(&low)?);
    let plan = plan(args);
    let dir = ws.vm_dir().join("bench-memory");
    let raw_dir = dir.join("raw");
    let status = if args.report_only {
        Ok(0)
    } else {
        run_guest(ws, args, &plan, &dir, &raw_dir, &high, &low)?
    };
    let results: Vec<Instance> = plan.iter().map(|p| Instance::read(&raw_dir, *p)).collect();
    if results.iter().all(|r| r.error.is_some()) {
        return Err(status.err().unwrap_or_else(|| {
            anyhow::anyhow!("no instance produced results; see the guest log above")
        }));
    }
    let report = Report::new(&results, args);
    let agreements = if args.arms.contains(&Arm::Agentcg) {
        let runs = sim::bench_runs(&high, &low, BASE_MIB)?;
        let mut predictions = Vec::new();
        for &limit in &args.limits {
            for &speed in &args.speeds {
                predictions.push((limit, speed, sim::predict(&runs, limit, speed)?));
            }
        }
        sim::agreements(&predictions, &results)
    } else {
        Vec::new()
    };
    let mut md = markdown(&report, args);
    let mut json = to_json(&report, args, &results);
    if !agreements.is_empty() {
        md.push_str(&sim::markdown(&agreements));
        json["simulator"] = sim::to_json(&agreements);
    }
    let out = args.out.clone().unwrap_or_else(|| ws.target.join("bench"));
    super::write_report(&out, "memory", &md, &json)?;
    let png = out.join("memory.png");
    chart::draw(&png, &report)?;
    eprintln!("[xtask] wrote {}", png.display());
    let status = status?;
    if status != 0 {
        bail!("the guest benchmark script failed (status {status}); see the guest log above");
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the plan, builds the binaries, boots the VM and runs memory.sh. Fails when
/// nothing could run; otherwise returns the guest script's exit status or why the VM did
/// not finish (the instances that finished still make a report).
fn run_guest(
    ws: &Workspace,
    args: &Args,
    plan: &[Planned],
    dir: &Path,
    raw_dir: &Path,
    high: &Path,
    low: &Path,
) -> Result<Result<i32>> {
    provision::ensure(ws, Which::All)?;
    let bin_dir = ws.build_agentcg(true)?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let plan_file = dir.join("plan.txt");
    let text: String = plan
        .iter()
        .map(|i| format!("{} {} {} {}\n", i.run, i.limit, i.speed, i.arm.name()))
        .collect();
    fs::write(&plan_file, text).with_context(|| format!("cannot write {}", plan_file.display()))?;
    eprintln!(
        "[xtask] {} instances ({} runs x {} arms x {} speeds x {} limits); measured in the VM: \
         ~18-21 s each at 10x (every arm starts and stops agentcgd)",
        plan.len(),
        args.runs,
        args.arms.len(),
        args.speeds.len(),
        args.limits.len()
    );
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let job = Job::script_file(
        ws,
        "xtask/bench/memory.sh",
        vec![
            ("AGENTCG_BIN_DIR", path(&bin_dir)),
            ("BENCH_OUT", path(raw_dir)),
            ("PLAN", path(&plan_file)),
            ("TRACE_HIGH", path(high)),
            ("TRACE_LOW", path(low)),
            ("BASE_MIB", BASE_MIB.to_string()),
        ],
    );
    Ok(vm::run(ws, &args.vm, &job)?.check())
}

/// One replay of the experiment: which run, limit, speed and arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planned {
    run: usize,
    limit: u32,
    speed: u32,
    arm: Arm,
}

/// Every instance, arms interleaved: run 1 of every arm (for each limit and speed), then
/// run 2, ...; the arm order rotates by one from each group of arms to the next, so that
/// no arm always runs first or last.
fn plan(args: &Args) -> Vec<Planned> {
    let mut out = Vec::new();
    let n = args.arms.len();
    let mut group = 0;
    for run in 1..=args.runs {
        for &limit in &args.limits {
            for &speed in &args.speeds {
                for k in 0..n {
                    out.push(Planned {
                        run,
                        limit,
                        speed,
                        arm: args.arms[(group + k) % n],
                    });
                }
                group += 1;
            }
        }
    }
    out
}

/// What memreplay wrote for a replay that finished.
#[derive(Debug, Clone, Default, PartialEq)]
struct Replay {
    completion_ms: f64,
    scheduled_ms: f64,
    growth_ms: Vec<f64>,
    max_lag_ms: f64,
    /// (due ms, target bytes) of every step.
    schedule: Vec<(f64, u64)>,
}

impl Replay {
    fn parse(text: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        let growth_ms = v["growth_ms"]
            .as_array()?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let max_lag_ms = v["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .filter_map(|s| s["lag_ms"].as_f64())
                    .fold(0.0, f64::max)
            })
            .unwrap_or(0.0);
        let schedule = v["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .filter_map(|s| Some((s["due_ms"].as_f64()?, s["target"].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            completion_ms: v["completion_ms"].as_f64()?,
            scheduled_ms: v["scheduled_ms"].as_f64()?,
            growth_ms,
            max_lag_ms,
            schedule,
        })
    }
}

/// The processes of one instance.
const PROCS: [&str; 4] = ["high", "base", "low1", "low2"];
/// The session cgroups of one instance.
const SESSIONS: [&str; 3] = ["high", "low1", "low2"];

/// The outcome of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Finished (replay: exit 0; base: ended by the harness's SIGTERM).
    Alive,
    /// Ended by SIGKILL (the OOM killer, or agentcg's kill).
    Killed,
    /// Anything else (an error; see the guest log).
    Failed,
}

fn fate(proc: &str, status: Option<i32>) -> Fate {
    let alive = if proc == "base" { STATUS_SIGTERM } else { 0 };
    match status {
        Some(s) if s == alive => Fate::Alive,
        Some(STATUS_SIGKILL) => Fate::Killed,
        _ => Fate::Failed,
    }
}

/// What one instance left in its raw directory.
#[derive(Debug, Clone)]
struct Instance {
    planned: Planned,
    /// Why the instance has no results.
    error: Option<String>,
    /// Wait status per process of [`PROCS`].
    status: [Option<i32>; 4],
    /// `oom_kill` of each session cgroup ([`SESSIONS`]) and of the parent.
    oom_kill: [Option<u64>; 3],
    parent_oom_kill: Option<u64>,
    parent_peak: Option<u64>,
    /// Replays that finished: high, low1, low2.
    replays: [Option<Replay>; 3],
}

impl Instance {
    fn dir(raw: &Path, p: Planned) -> PathBuf {
        raw.join(format!(
            "r{}-{}M-{}x-{}",
            p.run,
            p.limit,
            p.speed,
            p.arm.name()
        ))
    }

    fn read(raw: &Path, planned: Planned) -> Self {
        let dir = Self::dir(raw, planned);
        let read = |name: &str| fs::read_to_string(dir.join(name)).ok();
        let status_text = read("status");
        let error = match (read("error"), &status_text) {
            (Some(e), _) => Some(e.trim().to_owned()),
            (None, None) => Some(format!("no {}/status", dir.display())),
            (None, Some(_)) => None,
        };
        let statuses = parse_status(status_text.as_deref().unwrap_or_default());
        let status = PROCS.map(|p| statuses.get(p).copied());
        let events = |name: &str| read(&format!("events-{name}")).and_then(|t| oom_kills(&t));
        Self {
            planned,
            error,
            status,
            oom_kill: SESSIONS.map(events),
            parent_oom_kill: events("parent"),
            parent_peak: read("peak-parent").and_then(|t| t.trim().parse().ok()),
            replays: SESSIONS.map(|s| read(&format!("{s}.json")).and_then(|t| Replay::parse(&t))),
        }
    }

    fn fate(&self, proc: usize) -> Fate {
        fate(PROCS[proc], self.status[proc])
    }

    fn high_alive(&self) -> bool {
        self.fate(0) == Fate::Alive && self.fate(1) == Fate::Alive
    }

    fn lows_alive(&self) -> usize {
        (2..4).filter(|&p| self.fate(p) == Fate::Alive).count()
    }

    fn all_alive(&self) -> bool {
        self.high_alive() && self.lows_alive() == 2
    }

    fn kills(&self) -> usize {
        (0..4).filter(|&p| self.fate(p) == Fate::Killed).count()
    }

    /// HIGH's replay when the session survived (replay and base alive, results written).
    fn high_done(&self) -> Option<&Replay> {
        self.replays[0].as_ref().filter(|_| self.high_alive())
    }

    /// LOW `i` (0 or 1)'s replay when it survived.
    fn low_done(&self, i: usize) -> Option<&Replay> {
        self.replays[1 + i]
            .as_ref()
            .filter(|_| self.fate(2 + i) == Fate::Alive)
    }

    /// The HIGH replay's p95 growth latency in this run; infinite when HIGH did not survive.
    fn high_p95(&self) -> f64 {
        self.high_done()
            .and_then(|r| Stats::from_ms(&r.growth_ms))
            .map_or(f64::INFINITY, |s| s.p95)
    }
}

/// The largest sum of the replays' targets at any instant of their schedules, plus the
/// base: what the three sessions ask for together when every replay keeps its schedule.
fn planned_peak(replays: &[&Replay], base: u64) -> u64 {
    let mut times: Vec<f64> = replays
        .iter()
        .flat_map(|r| r.schedule.iter().map(|s| s.0))
        .collect();
    times.sort_by(f64::total_cmp);
    times
        .iter()
        .map(|&t| {
            replays
                .iter()
                .map(|r| {
                    r.schedule
                        .iter()
                        .take_while(|s| s.0 <= t)
                        .last()
                        .map_or(0, |s| s.1)
                })
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
        + base
}

/// `PROC STATUS` lines.
fn parse_status(text: &str) -> BTreeMap<String, i32> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
        })
        .collect()
}

/// The `oom_kill` counter of a memory.events file.
fn oom_kills(events: &str) -> Option<u64> {
    events.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == "oom_kill").then(|| f.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn args(runs: usize, arms: &[Arm], speeds: &[u32], limits: &[u32]) -> Args {
        Args {
            vm: VmOptions::for_tests(),
            out: None,
            traces: None,
            high: TRACE_HIGH.to_owned(),
            low: TRACE_LOW.to_owned(),
            runs,
            arms: arms.to_vec(),
            speeds: speeds.to_vec(),
            limits: limits.to_vec(),
            report_only: false,
        }
    }

    /// Run by run, and within a run the arm order rotates from one group to the next.
    #[test]
    fn arms_interleave_run_by_run_in_rotated_order() {
        let p = plan(&args(
            2,
            &[Arm::Unlimited, Arm::NoIsolation, Arm::Agentcg],
            &[10],
            &[1100, 1300],
        ));
        let seq: Vec<(usize, u32, char)> =
            p.iter().map(|i| (i.run, i.limit, i.arm.letter())).collect();
        let groups = [
            (1, 1100, "abe"),
            (1, 1300, "bea"),
            (2, 1100, "eab"),
            (2, 1300, "abe"),
        ];
        let expected: Vec<(usize, u32, char)> = groups
            .iter()
            .flat_map(|&(run, limit, order)| order.chars().map(move |c| (run, limit, c)))
            .collect();
        assert_eq!(seq, expected);
    }

    #[test]
    fn fates_come_from_wait_statuses() {
        assert_eq!(fate("high", Some(0)), Fate::Alive);
        assert_eq!(fate("low1", Some(137)), Fate::Killed);
        assert_eq!(fate("base", Some(143)), Fate::Alive);
        assert_eq!(fate("base", Some(137)), Fate::Killed);
        assert_eq!(fate("base", Some(0)), Fate::Failed);
        assert_eq!(fate("low2", None), Fate::Failed);
        assert_eq!(
            parse_status("high 0\nbase 143\nlow1 137\nbad\n").get("low1"),
            Some(&137)
        );
        let events = "low 0\nhigh 12\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills(events), Some(2));
        assert_eq!(oom_kills("low 0\n"), None);
    }

    pub(super) fn replay_json(done_ms: f64, growth: &[f64]) -> String {
        serde_json::json!({"completion_ms": done_ms, "scheduled_ms": 9800.0, "growth_ms": growth,
               "steps": [{"lag_ms": 5.0}, {"lag_ms": 40.0}]})
        .to_string()
    }

    #[test]
    fn planned_peak_sums_targets_on_the_schedule() {
        let r = |schedule: Vec<(f64, u64)>| Replay {
            schedule,
            ..Replay::default()
        };
        let high = r(vec![(0.0, 10), (100.0, 300), (200.0, 50)]);
        let low = r(vec![(0.0, 20), (150.0, 200), (250.0, 0)]);
        // At 150 ms: 300 + 200 + 200; at 100 ms: 300 + 20 + 20.
        assert_eq!(planned_peak(&[&high, &low, &low], 7), 707);
    }

    #[test]
    fn replay_results_parse() {
        let r = Replay::parse(&replay_json(1500.0, &[3.0, 4.0])).expect("parses");
        assert_eq!(r.growth_ms, [3.0, 4.0]);
        assert_eq!((r.completion_ms, r.max_lag_ms), (1500.0, 40.0));
        assert!(Replay::parse("{}").is_none());
    }
}
