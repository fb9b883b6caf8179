//! The tables of `cargo xtask bench memory`: per arm, limit and speed, survival counts,
//! HIGH's growth-step latency and the completion times, with the targets of the agentcg
//! arm against the yardstick (a). A replay that did not survive (killed, failed, or its
//! instance could not be set up) counts as a failure in every statistic: an infinite
//! latency and completion time, the worst value of every percentile and ratio.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{
    Args, Arm, BASE_MIB, Instance, PROCS, Replay, SESSIONS, TARGET_ALIVE_LIMIT,
    TARGET_LOW_DONE_RATIO, TARGET_P95_RATIO, planned_peak,
};
use crate::bench::stats::{Stats, fmt_ms, mean_sd};

/// One arm at one limit and speed, over its runs.
#[derive(Debug, Clone)]
pub(super) struct Cell {
    pub(super) limit: u32,
    pub(super) speed: u32,
    pub(super) arm: Arm,
    /// Every planned run, set up or not.
    pub(super) runs: usize,
    failed_instances: usize,
    pub(super) all_alive: usize,
    high_alive: usize,
    lows_alive: usize,
    kills: usize,
    oom_kill_events: u64,
    /// Pooled growth-step latencies of HIGH; a HIGH that did not survive adds its
    /// schedule's growth steps as failures.
    high: Option<Stats>,
    /// HIGH's p95 per run (infinite for a run where HIGH did not survive).
    pub(super) high_p95: Option<Stats>,
    high_done_s: Option<Stats>,
    /// Completion of every LOW replay (infinite when it did not survive).
    low_done_s: Option<Stats>,
    /// Mean schedule length and HIGH's mean largest lag, s (surviving replays).
    scheduled_s: Option<f64>,
    high_max_lag_s: Option<f64>,
    parent_peak_mib: Option<f64>,
    /// [`planned_peak`] of a run whose three replays finished, MiB.
    planned_peak_mib: Option<f64>,
    /// Means against arm (a) at the same limit and speed (infinite after a failure).
    p95_ratio: Option<f64>,
    low_done_ratio: Option<f64>,
}

impl Cell {
    /// `growth_steps`: how many growth steps HIGH's schedule has at this speed.
    fn new(limit: u32, speed: u32, arm: Arm, all: &[Instance], growth_steps: usize) -> Self {
        let mine: Vec<&Instance> = all
            .iter()
            .filter(|i| {
                let p = i.planned;
                (p.limit, p.speed, p.arm) == (limit, speed, arm)
            })
            .collect();
        let highs: Vec<&Replay> = mine.iter().filter_map(|i| i.high_done()).collect();
        let high_failures = mine.len() - highs.len();
        let lows: Vec<Option<&Replay>> = mine
            .iter()
            .flat_map(|i| [i.low_done(0), i.low_done(1)])
            .collect();
        let low_done: Vec<f64> = lows
            .iter()
            .flatten()
            .map(|r| r.completion_ms / 1e3)
            .collect();
        let pooled: Vec<f64> = highs.iter().flat_map(|r| r.growth_ms.clone()).collect();
        let p95s: Vec<f64> = mine.iter().map(|i| i.high_p95()).collect();
        let high_done: Vec<f64> = highs.iter().map(|r| r.completion_ms / 1e3).collect();
        let mean = |v: Vec<f64>| mean_sd(&v).map(|m| m.0);
        Self {
            limit,
            speed,
            arm,
            runs: mine.len(),
            failed_instances: mine.iter().filter(|i| i.error.is_some()).count(),
            all_alive: mine.iter().filter(|i| i.all_alive()).count(),
            high_alive: mine.iter().filter(|i| i.high_alive()).count(),
            lows_alive: mine.iter().map(|i| i.lows_alive()).sum(),
            kills: mine.iter().map(|i| i.kills()).sum(),
            oom_kill_events: mine
                .iter()
                .map(|i| i.oom_kill.iter().flatten().sum::<u64>())
                .sum(),
            high: Stats::with_failures_ms(&pooled, high_failures * growth_steps.max(1)),
            high_p95: Stats::from_ms(&p95s),
            high_done_s: Stats::with_failures_ms(&high_done, high_failures),
            low_done_s: Stats::with_failures_ms(&low_done, lows.len() - low_done.len()),
            scheduled_s: mean(highs.iter().map(|r| r.scheduled_ms / 1e3).collect()),
            high_max_lag_s: mean(highs.iter().map(|r| r.max_lag_ms / 1e3).collect()),
            parent_peak_mib: mean(
                mine.iter()
                    .filter_map(|i| i.parent_peak)
                    .map(|b| b as f64 / f64::from(1 << 20))
                    .collect(),
            ),
            planned_peak_mib: mine.iter().find_map(|i| {
                let done: Vec<&Replay> = i.replays.iter().flatten().collect();
                (done.len() == 3).then(|| {
                    planned_peak(&done, u64::from(BASE_MIB) << 20) as f64 / f64::from(1 << 20)
                })
            }),
            p95_ratio: None,
            low_done_ratio: None,
        }
    }
}

/// Growth steps of HIGH's schedule at `speed`: the most any surviving HIGH replay
/// recorded (the schedule is the same in every arm); 1 when none survived.
fn growth_steps(all: &[Instance], speed: u32) -> usize {
    all.iter()
        .filter(|i| i.planned.speed == speed)
        .filter_map(|i| i.high_done())
        .map(|r| r.growth_ms.len())
        .max()
        .unwrap_or(1)
}

/// Pass/miss of arm (e) at one limit and speed.
#[derive(Debug, Clone)]
struct Targets {
    limit: u32,
    speed: u32,
    /// `None` when the target does not apply at this limit.
    all_alive: Option<bool>,
    p95: Option<bool>,
    low_done: Option<bool>,
}

#[derive(Debug)]
pub(super) struct Report {
    pub(super) cells: Vec<Cell>,
    targets: Vec<Targets>,
}

impl Report {
    pub(super) fn new(results: &[Instance], args: &Args) -> Self {
        let mut cells = Vec::new();
        let mut targets = Vec::new();
        for &limit in &args.limits {
            for &speed in &args.speeds {
                let steps = growth_steps(results, speed);
                let mut group: Vec<Cell> = args
                    .arms
                    .iter()
                    .map(|&arm| Cell::new(limit, speed, arm, results, steps))
                    .collect();
                let base = group.iter().find(|c| c.arm == Arm::Unlimited).cloned();
                for cell in &mut group {
                    let base = base.as_ref();
                    let mean = |s: Option<Stats>| s.map(|s| s.mean);
                    cell.p95_ratio =
                        ratio(mean(cell.high_p95), base.and_then(|b| mean(b.high_p95)));
                    cell.low_done_ratio =
                        ratio(mean(cell.low_done_s), base.and_then(|b| mean(b.low_done_s)));
                }
                if let Some(e) = group.iter().find(|c| c.arm == Arm::Agentcg) {
                    targets.push(Targets {
                        limit,
                        speed,
                        all_alive: (limit == TARGET_ALIVE_LIMIT)
                            .then_some(e.runs > 0 && e.all_alive == e.runs),
                        p95: e.p95_ratio.map(|r| r <= TARGET_P95_RATIO),
                        low_done: e.low_done_ratio.map(|r| r <= TARGET_LOW_DONE_RATIO),
                    });
                }
                cells.extend(group);
            }
        }
        Self { cells, targets }
    }
}

/// `a / b`; infinite when `a` failed, `None` when the yardstick has no finite value.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && b.is_finite() => Some(a / b),
        _ => None,
    }
}

fn verdict(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "n/a (no data)",
    }
}

/// Median and mean of per-run or per-replay values.
fn fmt_median_mean(s: Option<Stats>, digits: usize) -> String {
    s.map_or_else(
        || "–".to_owned(),
        |s| {
            format!(
                "{} / {}",
                fmt_ms(Some(s.p50), digits),
                fmt_ms(Some(s.mean), digits)
            )
        },
    )
}

pub(super) fn markdown(report: &Report, args: &Args) -> String {
    let mut md = format!(
        "# Multi-tenant memory replay (`cargo xtask bench memory`)\n\n\
         sched_ext VM (software-emulated, {cpus} CPUs, {mem} memory, kernel {kernel}); compare \
         only within this setup. The memory limit (memory.max as given per table, \
         memory.swap.max = 0) is on a parent cgroup, with agentcg's root below it. HIGH \
         replays `{high}` plus a separate process holding {BASE_MIB} MiB (the agent \
         runtime); LOW1 and LOW2 replay `{low}`; all three start together. memreplay \
         reaches every ~1 s sample (time compressed by the speed factor) in mmap'ed chunks \
         of at most 64 MiB with every page written, and unmaps on shrink; sizes use decimal \
         units (`MB` = 10^6 bytes), targets rounded up to a 4 KiB page. \
         Every arm has the same CPU and workload setup: agentcgd runs (its sched_ext \
         scheduler schedules every arm), the sessions have the cpu.weight of their priority \
         (HIGH 400, LOWs 25), tools start with agentcg's oom_score_adj (HIGH 0, LOWs 1000), \
         and each replay runs in a per-call cgroup whose memory.high is its trace's peak \
         rounded up to 64 MiB (arm (e) declares it: `agentcg run --intent mem=`). Arms (a)-(d) \
         set kernel knobs on sessions next to agentcg's (empty) root; arm (e) runs the \
         sessions through agentcg (default policy: runtime protection, memory response). \
         {runs} run(s) per arm, the arm order rotated from one group to the next. \
         Alive = replay exited 0 (base: ended by the harness); killed = SIGKILL wait \
         status; `oom_kill` = sum of the session cgroups' memory.events counters; HIGH \
         alive = its replay and its base both alive. A replay that did not survive counts \
         as a failure (\"failed\", infinite) in every latency and completion figure: \
         latency = one growth step (all chunks of one sample), pooled over every HIGH \
         growth step with a dead HIGH's steps all failed; per-run and per-replay figures \
         are given as median / mean (one failure makes the mean fail); \"vs (a)\" compares \
         means with arm (a) at the same limit and speed.\n",
        cpus = args.vm.cpus,
        mem = args.vm.memory,
        kernel = args.vm.kernel.display(),
        high = args.high,
        low = args.low,
        runs = args.runs,
    );
    for &limit in &args.limits {
        for &speed in &args.speeds {
            md += &format!(
                "\n## Parent memory.max {limit} MiB, {speed}x\n\n\
                 | arm | runs | all 3 alive | HIGH alive | LOWs alive | SIGKILLs | oom_kill | \
                 HIGH p50 / p95 / p99 ms (pooled) | HIGH p95 ms per run (median / mean) | \
                 HIGH done s (median / mean) | LOW done s (median / mean) | p95 vs (a) | \
                 LOW done vs (a) | parent peak MiB |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
            );
            let group = report
                .cells
                .iter()
                .filter(|c| c.limit == limit && c.speed == speed);
            let mut schedule = None;
            let mut planned = None;
            for c in group {
                let failed = if c.failed_instances > 0 {
                    format!(" ({} not set up)", c.failed_instances)
                } else {
                    String::new()
                };
                md += &format!(
                    "| ({}) {} | {}{failed} | {}/{} | {}/{} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    c.arm.letter(),
                    c.arm.describe(limit),
                    c.runs,
                    c.all_alive,
                    c.runs,
                    c.high_alive,
                    c.runs,
                    c.lows_alive,
                    2 * c.runs,
                    c.kills,
                    c.oom_kill_events,
                    c.high.map_or_else(
                        || "–".to_owned(),
                        |s| format!(
                            "{} / {} / {} (n={}, {} failed)",
                            fmt_ms(Some(s.p50), 0),
                            fmt_ms(Some(s.p95), 0),
                            fmt_ms(Some(s.p99), 0),
                            s.n,
                            s.failures
                        )
                    ),
                    fmt_median_mean(c.high_p95, 0),
                    fmt_median_mean(c.high_done_s, 1),
                    fmt_median_mean(c.low_done_s, 1),
                    fmt_ms(c.p95_ratio, 2),
                    fmt_ms(c.low_done_ratio, 2),
                    fmt_ms(c.parent_peak_mib, 0),
                );
                schedule = schedule.or(c.scheduled_s.zip(c.high_max_lag_s));
                planned = planned.or(c.planned_peak_mib);
            }
            if let Some((sched, lag)) = schedule {
                md += &format!(
                    "\nSchedule: HIGH's {sched:.1} s (trace / {speed}); its largest lag behind \
                     the schedule averaged {lag:.1} s in the first arm listed.\n"
                );
            }
            if let Some(mib) = planned {
                md += &format!(
                    "Demand on schedule: the three sessions together (base included) ask for at \
                     most {mib:.0} MiB at any instant when every replay keeps its schedule; \
                     more is in use at once only when replays fall behind and peaks meet.\n"
                );
            }
        }
    }
    md += &format!(
        "\n## Targets for (e) agentcg\n\n\
         | limit | speed | all 3 alive every run (at {TARGET_ALIVE_LIMIT} MiB) | HIGH p95 ≤ \
         {TARGET_P95_RATIO}x (a) | LOW done ≤ {TARGET_LOW_DONE_RATIO}x (a) |\n|---:|---:|---|---|---|\n"
    );
    for t in &report.targets {
        md += &format!(
            "| {} MiB | {}x | {} | {} | {} |\n",
            t.limit,
            t.speed,
            t.all_alive.map_or("–", |v| verdict(Some(v))),
            verdict(t.p95),
            verdict(t.low_done),
        );
    }
    md
}

fn stats_json(s: Option<Stats>) -> Value {
    // serde_json writes an infinite value as null; `failures` says how many there are.
    s.map_or(Value::Null, |s| {
        json!({"n": s.n, "failures": s.failures, "p50": s.p50, "p95": s.p95, "p99": s.p99,
               "mean": s.mean})
    })
}

pub(super) fn to_json(report: &Report, args: &Args, results: &[Instance]) -> Value {
    let cells: Vec<Value> = report
        .cells
        .iter()
        .map(|c| {
            json!({
                "limit_mib": c.limit, "speed": c.speed, "arm": c.arm.name(),
                "letter": c.arm.letter().to_string(),
                "runs": c.runs, "failed_instances": c.failed_instances,
                "all_alive": c.all_alive, "high_alive": c.high_alive, "lows_alive": c.lows_alive,
                "sigkills": c.kills, "oom_kill_events": c.oom_kill_events,
                "high_growth_ms": stats_json(c.high),
                "high_p95_ms_per_run": stats_json(c.high_p95),
                "high_done_s": stats_json(c.high_done_s),
                "low_done_s": stats_json(c.low_done_s),
                "scheduled_s": c.scheduled_s, "high_max_lag_s": c.high_max_lag_s,
                "parent_peak_mib": c.parent_peak_mib, "planned_peak_mib": c.planned_peak_mib,
                "p95_ratio_vs_a": c.p95_ratio, "low_done_ratio_vs_a": c.low_done_ratio,
            })
        })
        .collect();
    let targets: Vec<Value> = report
        .targets
        .iter()
        .map(|t| {
            json!({"limit_mib": t.limit, "speed": t.speed,
                   "all_alive": t.all_alive.map(|v| verdict(Some(v))),
                   "high_p95": verdict(t.p95), "low_done": verdict(t.low_done)})
        })
        .collect();
    let by_name = |names: &[&str], values: Vec<Value>| -> BTreeMap<String, Value> {
        names.iter().map(|n| (*n).to_owned()).zip(values).collect()
    };
    let instances: Vec<Value> = results
        .iter()
        .map(|i| {
            let p = i.planned;
            json!({
                "run": p.run, "limit_mib": p.limit, "speed": p.speed, "arm": p.arm.name(),
                "error": i.error,
                "status": by_name(&PROCS, i.status.iter().map(|s| json!(s)).collect()),
                "oom_kill": by_name(&SESSIONS, i.oom_kill.iter().map(|s| json!(s)).collect()),
                "parent_oom_kill": i.parent_oom_kill,
                "parent_peak_bytes": i.parent_peak,
                "high_p95_ms": i.high_done().map(|_| i.high_p95()),
                "completion_ms": by_name(&SESSIONS, i.replays.iter()
                    .map(|r| json!(r.as_ref().map(|r| r.completion_ms))).collect()),
            })
        })
        .collect();
    json!({
        "vm": { "kernel": args.vm.kernel, "cpus": args.vm.cpus, "memory": args.vm.memory },
        "traces": { "high": args.high, "low": args.low, "units": "decimal (MB = 10^6 bytes)" },
        "base_mib": BASE_MIB, "chunk_mib": 64, "runs": args.runs,
        "targets_for_agentcg": {
            "all_alive_at_limit_mib": TARGET_ALIVE_LIMIT,
            "high_p95_ratio_max": TARGET_P95_RATIO,
            "low_done_ratio_max": TARGET_LOW_DONE_RATIO,
            "verdicts": targets,
        },
        "cells": cells,
        "instances": instances,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use super::super::tests::{args, replay_json};
    use super::super::{Planned, chart, plan};
    use super::*;

    /// A fake raw directory: `arm` with the given statuses and replays.
    fn write_instance(raw: &Path, p: Planned, status: &str, p95_ms: f64, low_ms: f64) {
        let dir = Instance::dir(raw, p);
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join("status"), status).expect("status");
        let killed = |proc: &str| status.contains(&format!("{proc} 137"));
        for s in SESSIONS {
            let kills = u64::from(killed(s) || (s == "high" && killed("base")));
            fs::write(
                dir.join(format!("events-{s}")),
                format!("oom {kills}\noom_kill {kills}\n"),
            )
            .expect("events");
        }
        let growth: Vec<f64> = (1..=20).map(|i| f64::from(i) * p95_ms / 19.0).collect();
        if !killed("high") {
            fs::write(dir.join("high.json"), replay_json(10_000.0, &growth)).expect("high");
        }
        for s in ["low1", "low2"] {
            if !killed(s) {
                fs::write(dir.join(format!("{s}.json")), replay_json(low_ms, &[1.0])).expect("low");
            }
        }
    }

    /// A scratch raw directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn report_counts_survivors_and_compares_with_the_yardstick() {
        let tmp = Scratch::new("memory-report");
        let a = args(
            2,
            &[Arm::Unlimited, Arm::NoIsolation, Arm::Agentcg],
            &[10],
            &[1100],
        );
        let plan = plan(&a);
        for p in &plan {
            let (status, p95, low) = match p.arm {
                Arm::Unlimited => ("high 0\nbase 143\nlow1 0\nlow2 0\n", 100.0, 10_000.0),
                Arm::NoIsolation => ("high 0\nbase 143\nlow1 137\nlow2 0\n", 90.0, 10_000.0),
                _ => ("high 0\nbase 143\nlow1 0\nlow2 0\n", 120.0, 15_000.0),
            };
            write_instance(&tmp.0, *p, status, p95, low);
        }
        let results: Vec<Instance> = plan.iter().map(|p| Instance::read(&tmp.0, *p)).collect();
        let report = Report::new(&results, &a);
        let cell = |arm| report.cells.iter().find(|c| c.arm == arm).expect("cell");
        let b = cell(Arm::NoIsolation);
        assert_eq!(
            (b.runs, b.all_alive, b.high_alive, b.lows_alive),
            (2, 0, 2, 2)
        );
        assert_eq!((b.kills, b.oom_kill_events), (2, 2));
        let b_low = b.low_done_s.expect("LOW completions");
        assert_eq!((b_low.n, b_low.failures), (4, 2), "killed LOWs count");
        assert!(b_low.p99.is_infinite());
        let e = cell(Arm::Agentcg);
        assert_eq!((e.all_alive, e.runs), (2, 2));
        let p95 = e.p95_ratio.expect("ratio");
        assert!((p95 - 1.2).abs() < 0.01, "{p95}");
        assert_eq!(e.low_done_ratio, Some(1.5));
        let t = &report.targets[0];
        assert_eq!(
            (t.all_alive, t.p95, t.low_done),
            (Some(true), Some(true), Some(true))
        );
        let md = markdown(&report, &a);
        assert!(
            md.contains(
                "| (b) no isolation (parent memory.max only) | 2 | 0/2 | 2/2 | 2/4 | 2 | 2 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 1100 MiB | 10x | PASS | PASS | PASS |"),
            "{md}"
        );
        let json = to_json(&report, &a, &results);
        let b_json = json["cells"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["arm"] == "no_isolation"))
            .expect("cell b");
        assert_eq!(b_json["all_alive"], 0);
        let killed = json["instances"]
            .as_array()
            .and_then(|i| i.iter().find(|i| i["arm"] == "no_isolation"))
            .expect("instance b");
        assert_eq!(killed["status"]["low1"], 137);
        chart::draw(&tmp.0.join("memory.png"), &report).expect("chart");
        assert!(fs::metadata(tmp.0.join("memory.png")).expect("png").len() > 1000);
        let missing = Instance::read(&tmp.0, Planned { run: 9, ..plan[0] });
        assert!(missing.error.is_some());
    }

    /// Survivors alone would look fine: HIGH's one surviving run is as fast as the
    /// yardstick's. Counted as failures, the two killed runs make every HIGH figure of
    /// the arm fail and its targets miss; an instance that was never set up counts too.
    #[test]
    fn a_killed_replay_is_a_failure_in_every_statistic() {
        let tmp = Scratch::new("memory-killed");
        let a = args(
            3,
            &[Arm::Unlimited, Arm::NoIsolation, Arm::Agentcg],
            &[10],
            &[1100],
        );
        let plan = plan(&a);
        for p in &plan {
            let status = match (p.arm, p.run) {
                (Arm::Agentcg, 1 | 2) => "high 137\nbase 143\nlow1 0\nlow2 0\n",
                _ => "high 0\nbase 143\nlow1 0\nlow2 0\n",
            };
            if (p.arm, p.run) != (Arm::NoIsolation, 3) {
                write_instance(&tmp.0, *p, status, 100.0, 10_000.0);
            }
        }
        let results: Vec<Instance> = plan.iter().map(|p| Instance::read(&tmp.0, *p)).collect();
        let report = Report::new(&results, &a);
        let cell = |arm| report.cells.iter().find(|c| c.arm == arm).expect("cell");
        let e = cell(Arm::Agentcg);
        assert_eq!((e.runs, e.high_alive, e.all_alive), (3, 1, 1));
        let high = e.high.expect("pooled latency");
        assert_eq!((high.n, high.failures), (60, 40), "20 growth steps per run");
        assert!(high.p50.is_infinite());
        assert!(e.high_p95.expect("per run").p50.is_infinite());
        assert!(e.high_done_s.expect("done").p50.is_infinite());
        assert_eq!(e.p95_ratio, Some(f64::INFINITY));
        let t = &report.targets[0];
        assert_eq!((t.all_alive, t.p95), (Some(false), Some(false)));
        let md = markdown(&report, &a);
        assert!(
            md.contains("failed / failed / failed (n=60, 40 failed)"),
            "{md}"
        );
        let b = cell(Arm::NoIsolation);
        assert_eq!((b.runs, b.failed_instances, b.all_alive), (3, 1, 2));
        assert!(
            md.contains("| (b) no isolation (parent memory.max only) | 3 (1 not set up) | 2/3 |"),
            "{md}"
        );
        assert_eq!(b.p95_ratio, Some(f64::INFINITY), "the missing run counts");
    }
}
