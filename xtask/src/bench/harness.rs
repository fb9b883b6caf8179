//! `cargo xtask bench harness`: the time agentcg adds to each tool call of Claude Code
//! (issue 13). In one VM boot the guest program harnessbench (tests/src/bin/) starts
//! agentcgd and runs the real `claude -p` through the same scripted session of N Bash
//! tool calls against the scripted model server, per round once in each arm (order
//! rotated): `bare`, `agentcg` (`CLAUDE_CODE_SHELL_PREFIX=agentcg-claude`) and
//! `agentcg-hook` (the prefix and its PreToolUse hook, the documented setup), then times
//! the prefix alone outside claude. The host pairs each `tool_use` with its
//! `tool_result` (`timeline`) and writes DIR/harness.md (also printed) and
//! DIR/harness.json.
//!
//! Target: the median tool call of an agentcg arm at most 10 % longer than bare's, with
//! no failed session in either arm. A failed session (claude failed, a result missing or wrong, an agentcg call missing)
//! counts as N failed tool calls and a failed wall time: infinite, never dropped.

mod timeline;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use self::timeline::{ArmSamples, Session, arm_samples};
use super::stats::{Stats, fmt_ms};
use crate::host::Workspace;
use crate::provision::{self, Which};
use crate::vm::{self, Job, VmOptions};

/// The agentcg arms may add at most this fraction of bare's median tool call.
const TARGET_ADDED: f64 = 0.10;
/// The arm every other is compared with.
const BASELINE: &str = "bare";

/// Claude Code's per-tool-call time with and without agentcg's shell prefix
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vm: VmOptions,
    /// Directory for harness.md and harness.json [default: target/bench/harness]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Bash tool calls per scripted session
    #[arg(long, value_name = "N", default_value_t = 20)]
    calls: usize,
    /// Measured rounds (each runs one session per arm)
    #[arg(long, value_name = "R", default_value_t = 3)]
    rounds: usize,
    /// Warm-up rounds, not recorded
    #[arg(long, value_name = "N", default_value_t = 1)]
    warmup: usize,
    /// Arms, from bare, agentcg, agentcg-hook (bare is the baseline)
    #[arg(long, value_name = "A,B", default_value = "bare,agentcg,agentcg-hook")]
    arms: String,
    /// Runs of the prefix alone (`bash -c` vs `agentcg-claude`) outside claude
    #[arg(long, value_name = "N", default_value_t = 40)]
    prefix_runs: usize,
    /// A claude session running longer is killed (and counts as failed)
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    session_timeout: u64,
    /// Do not boot the VM: rebuild the report from the last run's raw results
    #[arg(long)]
    report_only: bool,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    let arms: Vec<&str> = args.arms.split(',').collect();
    if arms.first() != Some(&BASELINE) || arms.len() < 2 {
        bail!(
            "--arms {}: the first arm must be bare, with at least one other",
            args.arms
        );
    }
    let raw_path = ws.vm_dir().join("bench/harness-raw.json");
    let status = if args.report_only {
        Ok(0)
    } else {
        provision::ensure(ws, Which::All)?;
        let bin_dir = ws.build_agentcg(true)?;
        let _ = fs::remove_file(&raw_path);
        vm::run(ws, &args.vm, &guest_job(ws, args, &bin_dir))?.check()
    };
    let (raw, status) = super::read_raw(&raw_path, status, "harnessbench")?;
    let report = Report::new(&raw);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| ws.target.join("bench/harness"));
    super::write_report(
        &out,
        "harness",
        &markdown(&report, args),
        &to_json(&report, &raw),
    )?;
    if status? != 0 {
        bail!("the guest benchmark failed; see the guest log above");
    }
    Ok(ExitCode::SUCCESS)
}

fn guest_job(ws: &Workspace, args: &Args, bin_dir: &Path) -> Job {
    let out = ws.vm_dir().join("bench");
    Job {
        // AGENTCG_BIN_DIR is the guest's tmpfs copy by the time this runs (vm.rs).
        script: "mkdir -p \"$BENCH_OUT\" && \"$AGENTCG_BIN_DIR/harnessbench\" --calls \"$CALLS\" \
                 --rounds \"$ROUNDS\" --warmup \"$WARMUP\" --arms \"$ARMS\" \
                 --prefix-runs \"$PREFIX_RUNS\" --timeout \"$SESSION_TIMEOUT\" \
                 --out \"$BENCH_OUT/harness-raw.json\""
            .into(),
        env: vec![
            ("AGENTCG_BIN_DIR", bin_dir.to_string_lossy().into_owned()),
            ("BENCH_OUT", out.to_string_lossy().into_owned()),
            ("CALLS", args.calls.to_string()),
            ("ROUNDS", args.rounds.to_string()),
            ("WARMUP", args.warmup.to_string()),
            ("ARMS", args.arms.clone()),
            ("PREFIX_RUNS", args.prefix_runs.to_string()),
            ("SESSION_TIMEOUT", args.session_timeout.to_string()),
        ],
    }
}

/// One arm's figures.
#[derive(Debug)]
struct ArmReport {
    name: String,
    samples: ArmSamples,
    calls: Option<Stats>,
    wall: Option<Stats>,
}

/// An agentcg arm against bare: what it adds to the median and p95 tool call, in ms,
/// and the added median as a fraction of bare's (`None` when either failed).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Added {
    /// Neither arm had a failed session (the target needs that too).
    clean: bool,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    fraction: Option<f64>,
    wall_p50_ms: Option<f64>,
}

impl Added {
    fn of(arm: &ArmReport, bare: &ArmReport) -> Self {
        let diff = |a: Option<&Stats>, b: Option<&Stats>, f: fn(&Stats) -> f64| {
            Some(f(a?) - f(b?)).filter(|d| d.is_finite())
        };
        let p50_ms = diff(arm.calls.as_ref(), bare.calls.as_ref(), |s| s.p50);
        let fraction = p50_ms
            .zip(bare.calls.map(|s| s.p50))
            .filter(|&(_, b)| b > 0.0)
            .map(|(d, b)| d / b);
        Self {
            clean: arm.samples.failed_sessions == 0 && bare.samples.failed_sessions == 0,
            p50_ms,
            p95_ms: diff(arm.calls.as_ref(), bare.calls.as_ref(), |s| s.p95),
            fraction,
            wall_p50_ms: diff(arm.wall.as_ref(), bare.wall.as_ref(), |s| s.p50),
        }
    }

    fn passes(&self) -> bool {
        self.clean && self.fraction.is_some_and(|f| f <= TARGET_ADDED)
    }
}

/// The prefix alone: `bash -c STRING` vs `agentcg-claude STRING`, ms.
#[derive(Debug)]
struct PrefixAlone {
    bash: Option<Stats>,
    prefix: Option<Stats>,
}

impl PrefixAlone {
    fn new(raw: &Value) -> Self {
        let stats = |key: &str| {
            let runs = raw[key].as_array().map(Vec::as_slice).unwrap_or_default();
            let ms: Vec<f64> = runs
                .iter()
                .filter_map(Value::as_u64)
                .map(|ns| ns as f64 / 1e6)
                .collect();
            Stats::with_failures_ms(&ms, runs.len() - ms.len())
        };
        Self {
            bash: stats("bash_ns"),
            prefix: stats("prefix_ns"),
        }
    }

    fn added_p50(&self) -> Option<f64> {
        Some(self.prefix?.p50 - self.bash?.p50).filter(|d| d.is_finite())
    }
}

#[derive(Debug)]
struct Report {
    calls: usize,
    rounds: usize,
    warmup: usize,
    arms: Vec<ArmReport>,
    added: Vec<(String, Added)>,
    prefix: PrefixAlone,
    /// The measured sessions in run order (their spread shows the run's noise).
    sessions: Vec<Session>,
}

impl Report {
    fn new(raw: &Value) -> Self {
        let calls = raw["calls"].as_u64().unwrap_or(0) as usize;
        let sessions: Vec<Session> = raw["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| Session::from_json(s, calls))
            .collect();
        let arms: Vec<ArmReport> = raw["arms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|name| {
                let samples = arm_samples(&sessions, name, calls);
                ArmReport {
                    name: name.to_string(),
                    calls: Stats::with_failures_ms(&samples.call_ms, samples.call_failures),
                    wall: Stats::with_failures_ms(&samples.wall_ms, samples.failed_sessions),
                    samples,
                }
            })
            .collect();
        let added = match arms.iter().find(|a| a.name == BASELINE) {
            Some(bare) => arms
                .iter()
                .filter(|a| a.name != BASELINE)
                .map(|a| (a.name.clone(), Added::of(a, bare)))
                .collect(),
            None => Vec::new(),
        };
        Self {
            calls,
            rounds: raw["rounds"].as_u64().unwrap_or(0) as usize,
            warmup: raw["warmup"].as_u64().unwrap_or(0) as usize,
            arms,
            added,
            prefix: PrefixAlone::new(&raw["prefix_alone"]),
            sessions,
        }
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "**MISS**" }
}

fn markdown(r: &Report, args: &Args) -> String {
    let ms = |v: Option<f64>| fmt_ms(v, 1);
    let s = |v: Option<f64>| fmt_ms(v.map(|v| v / 1000.0), 1);
    let mut md = format!(
        "# Claude Code's tool calls with and without agentcg (`cargo xtask bench harness`)\n\n\
         sched_ext VM (software-emulated, {} CPUs, {} memory); agentcgd runs throughout, its \
         scheduler attached in every arm. The real `claude -p` (2.1.328) runs a scripted \
         session of {} Bash tool calls (`true`, `ls /usr`, `python3 -c`, `echo`, in turn) \
         against the scripted model server, once per arm per round: {} measured rounds \
         after {} warm-up round(s), the arms' order rotated each round. A tool call is the \
         time from the server's last byte of the streamed `tool_use` answer to its receipt \
         of the request carrying the `tool_result`: Claude Code's own dispatch is inside it \
         in every arm. `agentcg` sets `CLAUDE_CODE_SHELL_PREFIX=agentcg-claude`; \
         `agentcg-hook` adds its PreToolUse hook (integrations/claude-code/settings.json). A \
         failed session counts as {} failed calls and a failed wall time.\n\n\
         ## Per tool call\n\n\
         | arm | sessions | failed | calls | failed calls | p50 ms | p95 ms | mean ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        args.vm.cpus, args.vm.memory, r.calls, r.rounds, r.warmup, r.calls,
    );
    for a in &r.arms {
        let c = a.calls;
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            a.name,
            a.samples.sessions,
            a.samples.failed_sessions,
            c.map_or(0, |c| c.n),
            c.map_or(0, |c| c.failures),
            ms(c.map(|c| c.p50)),
            ms(c.map(|c| c.p95)),
            ms(c.map(|c| c.mean)),
        );
    }
    md += "\n## Whole session (claude's start to its exit)\n\n\
           | arm | sessions | failed | p50 s | p95 s |\n|---|---:|---:|---:|---:|\n";
    for a in &r.arms {
        let w = a.wall;
        md += &format!(
            "| {} | {} | {} | {} | {} |\n",
            a.name,
            w.map_or(0, |w| w.n),
            w.map_or(0, |w| w.failures),
            s(w.map(|w| w.p50)),
            s(w.map(|w| w.p95)),
        );
    }
    md += &format!(
        "\n## Added by agentcg (against bare)\n\n\
         | arm | added p50 ms | added / bare p50 | added p95 ms | added session p50 s | target ≤ {:.0} % |\n\
         |---|---:|---:|---:|---:|---|\n",
        TARGET_ADDED * 100.0
    );
    for (name, a) in &r.added {
        md += &format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            ms(a.p50_ms),
            a.fraction
                .map_or("–".into(), |f| format!("{:.1} %", f * 100.0)),
            ms(a.p95_ms),
            s(a.wall_p50_ms),
            pass(a.passes()),
        );
    }
    let p = &r.prefix;
    md += &format!(
        "\n## The prefix alone, outside claude\n\n\
         Claude Code's wrapped command string for `true`, run as `bash -c STRING` and as \
         `agentcg-claude STRING` (a call of its own session), alternating:\n\n\
         | run | n | failed | p50 ms | p95 ms |\n|---|---:|---:|---:|---:|\n\
         | `bash -c` | {} | {} | {} | {} |\n| `agentcg-claude` | {} | {} | {} | {} |\n\n\
         agentcg-claude adds {} ms at p50 by itself.\n",
        p.bash.map_or(0, |b| b.n),
        p.bash.map_or(0, |b| b.failures),
        ms(p.bash.map(|b| b.p50)),
        ms(p.bash.map(|b| b.p95)),
        p.prefix.map_or(0, |b| b.n),
        p.prefix.map_or(0, |b| b.failures),
        ms(p.prefix.map(|b| b.p50)),
        ms(p.prefix.map(|b| b.p95)),
        ms(p.added_p50()),
    );
    md += "\n## Per session (the run's spread)\n\n\
           | round | arm | tool call p50 ms | wall s |\n|---:|---|---:|---:|\n";
    for x in r.sessions.iter().filter(|x| !x.warmup) {
        let ms: Vec<f64> = x
            .times_ns
            .iter()
            .flatten()
            .map(|&ns| ns as f64 / 1e6)
            .collect();
        let failed = x.failed().then_some(f64::INFINITY);
        md += &format!(
            "| {} | {} | {} | {} |\n",
            x.round,
            x.arm,
            fmt_ms(failed.or(Stats::from_ms(&ms).map(|st| st.p50)), 1),
            s(failed.or(Some(x.wall_ns as f64 / 1e6))),
        );
    }
    for f in r.sessions.iter().filter(|x| x.failed()) {
        md += &format!(
            "\nFailed: {} round {}{}: {}\n",
            f.arm,
            f.round,
            if f.warmup { " (warm-up)" } else { "" },
            f.error.as_deref().unwrap_or_default()
        );
    }
    md
}

fn stats_json(s: Option<Stats>) -> Value {
    s.map_or(Value::Null, |s| {
        json!({"n": s.n, "failures": s.failures, "p50_ms": s.p50, "p95_ms": s.p95,
               "mean_ms": s.mean})
    })
}

fn to_json(r: &Report, raw: &Value) -> Value {
    let arms: Vec<Value> = r
        .arms
        .iter()
        .map(|a| {
            json!({"name": a.name, "sessions": a.samples.sessions,
                   "failed_sessions": a.samples.failed_sessions,
                   "tool_call": stats_json(a.calls), "session_wall": stats_json(a.wall),
                   "tool_call_samples_ms": a.samples.call_ms,
                   "session_wall_samples_ms": a.samples.wall_ms})
        })
        .collect();
    let added: Vec<Value> = r
        .added
        .iter()
        .map(|(name, a)| {
            json!({"arm": name, "added_p50_ms": a.p50_ms, "added_p95_ms": a.p95_ms,
                   "added_fraction_of_bare_p50": a.fraction,
                   "added_session_wall_p50_ms": a.wall_p50_ms,
                   "target_fraction": TARGET_ADDED, "pass": a.passes()})
        })
        .collect();
    json!({
        "calls": r.calls, "rounds": r.rounds, "warmup": r.warmup,
        "commands": raw["commands"], "arms": arms, "added": added,
        "prefix_alone": {"bash": stats_json(r.prefix.bash),
                         "agentcg_claude": stats_json(r.prefix.prefix),
                         "added_p50_ms": r.prefix.added_p50()},
        "failures": r.sessions.iter().filter(|x| x.failed()).map(|f| json!({"arm": f.arm, "round": f.round,
            "warmup": f.warmup, "error": f.error})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use timeline::tool_use_id;

    /// A session of harnessbench's document whose every tool call takes `call_ns`.
    fn session(arm: &str, round: u64, call_ns: u64, calls: usize, error: Option<&str>) -> Value {
        let mut exchanges = Vec::new();
        let mut t = 0;
        for i in 0..=calls {
            let results: Vec<String> = (0..i).map(tool_use_id).collect();
            let tool = (i < calls).then(|| tool_use_id(i));
            exchanges.push(json!({"received_ns": t, "sent_ns": t + 1000,
                                  "tool_use_id": tool, "result_ids": results}));
            t += 1000 + call_ns;
        }
        json!({"round": round, "warmup": false,
               "session": {"arm": arm, "wall_ns": t, "error": error, "exchanges": exchanges}})
    }

    fn raw(sessions: Vec<Value>, prefix_ns: Value) -> Value {
        json!({"calls": 2, "rounds": 2, "warmup": 0, "arms": ["bare", "agentcg"],
               "sessions": sessions,
               "prefix_alone": {"bash_ns": [2_000_000, 2_000_000], "prefix_ns": prefix_ns}})
    }

    #[test]
    fn added_time_against_bare_and_the_target() {
        let r = Report::new(&raw(
            vec![
                session("bare", 0, 100_000_000, 2, None),
                session("agentcg", 0, 108_000_000, 2, None),
                session("agentcg", 1, 108_000_000, 2, None),
                session("bare", 1, 100_000_000, 2, None),
            ],
            json!([10_000_000, 12_000_000]),
        ));
        assert_eq!(r.arms[0].calls.map(|c| (c.n, c.p50)), Some((4, 100.0)));
        let (name, a) = &r.added[0];
        assert_eq!(name, "agentcg");
        assert!((a.p50_ms.unwrap_or(0.0) - 8.0).abs() < 1e-9, "{a:?}");
        assert!((a.fraction.unwrap_or(1.0) - 0.08).abs() < 1e-9, "{a:?}");
        assert!(a.passes());
        // The sessions' wall times: 3 × (1 µs + call) each, 8 ms more per call.
        assert!((a.wall_p50_ms.unwrap_or(0.0) - 24.0).abs() < 1e-9, "{a:?}");
        assert_eq!(r.prefix.added_p50(), Some(8.0));
        let md = markdown(&r, &test_args());
        assert!(
            md.contains("| agentcg | 8.0 | 8.0 % | 8.0 | 0.0 | PASS |"),
            "{md}"
        );
    }

    #[test]
    fn a_failed_session_fails_its_calls_and_the_target() {
        let r = Report::new(&raw(
            vec![
                session("bare", 0, 100_000_000, 2, None),
                session("agentcg", 0, 101_000_000, 2, None),
                session("agentcg", 1, 101_000_000, 2, Some("claude exited with 1")),
                session("bare", 1, 100_000_000, 2, None),
            ],
            json!([10_000_000, null]),
        ));
        let agentcg = &r.arms[1];
        assert_eq!(agentcg.calls.map(|c| (c.n, c.failures)), Some((4, 2)));
        assert!(agentcg.calls.is_some_and(|c| c.p95.is_infinite()));
        assert!(
            agentcg
                .wall
                .is_some_and(|w| w.failures == 1 && w.p95.is_infinite()),
            "1 of 2 failed"
        );
        let a = r.added[0].1;
        assert_eq!(a.p95_ms, None, "a failed p95 has no difference");
        assert!(
            a.fraction.is_some_and(|f| f <= TARGET_ADDED) && !a.passes(),
            "a failed session fails the target even with a cheap median: {a:?}"
        );
        assert_eq!(r.prefix.prefix.map(|p| p.failures), Some(1));
        let md = markdown(&r, &test_args());
        assert!(
            md.contains("Failed: agentcg round 1: claude exited with 1"),
            "{md}"
        );
        assert!(md.contains("| agentcg | 2 | 1 | 4 | 2 |"), "{md}");
        assert!(md.contains("| 1 | agentcg | failed | failed |"), "{md}");
        assert!(md.contains("| 0 | agentcg | 101.0 | 0.3 |"), "{md}");
    }

    #[test]
    fn over_ten_percent_misses() {
        let r = Report::new(&raw(
            vec![
                session("bare", 0, 100_000_000, 2, None),
                session("agentcg", 0, 111_000_000, 2, None),
            ],
            json!([]),
        ));
        assert!(!r.added[0].1.passes());
        assert_eq!(r.prefix.prefix.map(|p| p.n), None);
    }

    fn test_args() -> Args {
        Args {
            vm: VmOptions::for_tests(),
            out: None,
            calls: 2,
            rounds: 2,
            warmup: 0,
            arms: "bare,agentcg".into(),
            prefix_runs: 2,
            session_timeout: 60,
            report_only: false,
        }
    }
}
