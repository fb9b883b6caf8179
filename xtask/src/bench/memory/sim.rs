//! The simulator beside the kernel (issue 11): `agentcg replay`'s simulator
//! (`agentcg_core::replay::simulate_at`, embedded default policy) plays the benchmark's
//! own setup, and its survivors and victims are set beside what the kernel did in the
//! agentcg arm at the same limit and speed.
//!
//! The setup as memory.sh builds it: a host of the parent's limit; session HIGH (high
//! priority) whose runtime holds the base for the whole instance and whose one call
//! replays HIGH's trace; LOW1 and LOW2 (low priority, no runtime) whose one call each
//! replays LOW's trace; every call declares its trace's peak rounded up to 64 MiB
//! (`--intent mem=`); all start together and play `speed` times faster. A trace's
//! memory is its whole `resources.json` curve at one-second ticks (the largest sample
//! of each second).

use std::fs;
use std::path::Path;

use agentcg_core::intent::{Intent, Priority};
use agentcg_core::policy::Policy;
use agentcg_core::replay::{self, Run, SessionSpec, TraceCall};
use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use super::{Arm, Fate, Instance, PROCS};

const MIB: u64 = 1 << 20;

/// The two runs of the setup: HIGH's (with the base as its runtime) and LOW's, twice as
/// long as the longer trace: a replay the response holds finishes later, and no
/// recording may start over (memreplay plays once). A replay's call ends with its
/// trace; its runtime stays.
pub(super) fn bench_runs(high: &Path, low: &Path, base_mib: u32) -> Result<[Run; 2]> {
    let curve = |path: &Path| -> Result<Vec<u64>> {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let run = replay::parse_run("trace", &text, None)
            .map_err(|e| anyhow!("trace {}: {e}", path.display()))?;
        Ok(run.memory)
    };
    let (h, l) = (curve(high)?, curve(low)?);
    let len = 2 * h.len().max(l.len());
    Ok([
        one_call_run("high", &h, u64::from(base_mib) * MIB, len),
        one_call_run("low", &l, 0, len),
    ])
}

/// A run of `len` ticks whose runtime holds `base` throughout and whose one call
/// replays `curve` from tick 0, declaring its peak rounded up to 64 MiB.
fn one_call_run(name: &str, curve: &[u64], base: u64, len: usize) -> Run {
    let peak = curve.iter().copied().max().unwrap_or(0);
    let declared = peak.div_ceil(64 * MIB).max(1) * 64 * MIB;
    let memory = (0..len)
        .map(|t| base + curve.get(t).copied().unwrap_or(0))
        .collect();
    Run {
        name: name.to_owned(),
        memory,
        runtime: vec![base; len],
        calls: vec![TraceCall {
            start: 0,
            end: curve.len().max(1),
            command: format!("memreplay --trace {name}"),
            intent: Intent {
                mem: Some(declared),
                ..Intent::default()
            },
            usage: if curve.is_empty() {
                vec![0]
            } else {
                curve.to_vec()
            },
        }],
    }
}

/// What the simulator predicts for each process of [`PROCS`] (high, base, low1, low2)
/// on a host of `limit_mib` at `speed`.
pub(super) fn predict(runs: &[Run; 2], limit_mib: u32, speed: u32) -> Result<[Fate; 4]> {
    let spec = |run, priority| SessionSpec {
        run,
        priority,
        phase: 0,
    };
    let specs = [
        spec(0, Priority::High),
        spec(1, Priority::Low),
        spec(1, Priority::Low),
    ];
    let ticks = runs[0].len();
    let host = u64::from(limit_mib) * MIB;
    let rep = replay::simulate_at(&Policy::default_policy(), runs, &specs, host, ticks, speed)
        .map_err(|e| anyhow!("simulating the benchmark: {e}"))?;
    let fate = |killed: bool| if killed { Fate::Killed } else { Fate::Alive };
    let s = &rep.sessions;
    let call_killed = |i: usize| s[i].kills.total() > s[i].kills.runtime;
    Ok([
        fate(call_killed(0)),
        fate(s[0].kills.runtime > 0),
        fate(call_killed(1) || s[1].kills.runtime > 0),
        fate(call_killed(2) || s[2].kills.runtime > 0),
    ])
}

/// The simulator against the agentcg arm at one limit and speed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Agreement {
    pub(super) limit: u32,
    pub(super) speed: u32,
    pub(super) predicted: [Fate; 4],
    /// Runs of the agentcg arm, and those in which every process ended as predicted (a
    /// run that failed to set up or whose process failed matches nothing).
    pub(super) runs: usize,
    pub(super) matching: usize,
    /// Per process, the runs in which the kernel killed it.
    pub(super) killed: [usize; 4],
}

/// One [`Agreement`] per (limit, speed) prediction, over the agentcg arm's instances.
pub(super) fn agreements(
    predictions: &[(u32, u32, [Fate; 4])],
    results: &[Instance],
) -> Vec<Agreement> {
    predictions
        .iter()
        .map(|&(limit, speed, predicted)| {
            let mine: Vec<&Instance> = results
                .iter()
                .filter(|i| {
                    let p = i.planned;
                    (p.limit, p.speed, p.arm) == (limit, speed, Arm::Agentcg)
                })
                .collect();
            let fates = |i: &Instance| -> Option<[Fate; 4]> {
                i.error.is_none().then(|| [0, 1, 2, 3].map(|p| i.fate(p)))
            };
            let same = |i: &Instance| fates(i).is_some_and(|f| lows_alike(&f, &predicted));
            Agreement {
                limit,
                speed,
                predicted,
                runs: mine.len(),
                matching: mine.iter().filter(|i| same(i)).count(),
                killed: [0, 1, 2, 3].map(|p| {
                    mine.iter()
                        .filter(|i| i.error.is_none() && i.fate(p) == Fate::Killed)
                        .count()
                }),
            }
        })
        .collect()
}

/// Whether two outcomes agree: the same fate for high and base, and as many LOWs
/// killed (the two LOWs are alike, so which one is taken is a coin toss).
fn lows_alike(a: &[Fate; 4], b: &[Fate; 4]) -> bool {
    let lows = |f: &[Fate; 4]| {
        let mut l = [f[2], f[3]];
        l.sort_by_key(|f| *f as u8);
        l
    };
    a[..2] == b[..2] && lows(a) == lows(b)
}

fn fates_text(f: &[Fate; 4]) -> String {
    let killed: Vec<&str> = (0..4)
        .filter(|&p| f[p] == Fate::Killed)
        .map(|p| PROCS[p])
        .collect();
    if killed.is_empty() {
        "all alive".to_owned()
    } else {
        format!("{} killed", killed.join(", "))
    }
}

/// The report's section.
pub(super) fn markdown(agreements: &[Agreement]) -> String {
    let mut md = String::from(
        "\n## The simulator against the kernel (arm (e))\n\n\
         `agentcg replay`'s simulator plays this setup (same traces, base, priorities, \
         declared peaks, start and speed; default policy; the parent's limit as the host) \
         and predicts who is killed; a run matches when the kernel killed the same \
         processes (the two LOWs are alike: as many of them) and nothing failed.\n\n\
         | limit | speed | simulator | kernel runs matching | kernel kills (high / base / low1 / low2) |\n\
         |---|---|---|---|---|\n",
    );
    for a in agreements {
        md.push_str(&format!(
            "| {} MiB | {}x | {} | {}/{} | {} |\n",
            a.limit,
            a.speed,
            fates_text(&a.predicted),
            a.matching,
            a.runs,
            a.killed.map(|k| k.to_string()).join(" / ")
        ));
    }
    let (matching, runs) = agreements
        .iter()
        .fold((0, 0), |(m, r), a| (m + a.matching, r + a.runs));
    md.push_str(&format!(
        "\nAgreement: {matching} of {runs} runs ended as the simulator predicted.\n"
    ));
    md
}

pub(super) fn to_json(agreements: &[Agreement]) -> Value {
    let fates = |f: &[Fate; 4]| -> Value {
        (0..4)
            .map(|p| (PROCS[p].to_owned(), json!(f[p] == Fate::Killed)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    agreements
        .iter()
        .map(|a| {
            json!({
                "limit_mib": a.limit, "speed": a.speed,
                "predicted_killed": fates(&a.predicted),
                "runs": a.runs, "matching": a.matching,
                "kernel_killed_runs": (0..4)
                    .map(|p| (PROCS[p].to_owned(), json!(a.killed[p])))
                    .collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::{Planned, TRACE_HIGH, TRACE_LOW};
    use super::*;

    fn resources(run: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/traces")
            .join(run)
            .join("resources.json")
    }

    /// The default mix as memory.sh builds it: HIGH's runtime holds the base all along,
    /// each replay is one call from the start declaring its peak rounded up to 64 MiB
    /// (306 and 291 MiB: 320 MiB each), the runs twice as long as the longer trace.
    #[test]
    fn the_setup_is_simulated_as_memory_sh_builds_it() {
        let [high, low] =
            bench_runs(&resources(TRACE_HIGH), &resources(TRACE_LOW), 100).expect("traces");
        assert_eq!(high.len(), low.len());
        assert_eq!(high.len(), 2 * high.calls[0].end.max(low.calls[0].end));
        assert!(high.runtime.iter().all(|&r| r == 100 * MIB));
        assert!(low.runtime.iter().all(|&r| r == 0));
        for run in [&high, &low] {
            assert_eq!(run.calls.len(), 1);
            assert_eq!(run.calls[0].start, 0);
            assert_eq!(run.calls[0].intent.mem, Some(320 * MIB));
        }
        assert_eq!(high.peak(), high.calls[0].peak() + 100 * MIB);
        // With room for all, nobody dies; short of it, the LOWs go before HIGH.
        let alive = [Fate::Alive; 4];
        assert_eq!(
            predict(&[high.clone(), low.clone()], 1300, 10).expect("sim"),
            alive
        );
        let short = predict(&[high, low], 500, 10).expect("sim");
        assert_eq!(
            short,
            [Fate::Alive, Fate::Alive, Fate::Killed, Fate::Killed]
        );
    }

    fn instance(limit: u32, arm: Arm, status: [i32; 4], error: bool) -> Instance {
        Instance {
            planned: Planned {
                run: 1,
                limit,
                speed: 10,
                arm,
            },
            error: error.then(|| "no status".to_owned()),
            status: status.map(Some),
            oom_kill: [None; 3],
            parent_oom_kill: None,
            parent_peak: None,
            replays: [None, None, None],
        }
    }

    /// A run matches when the same processes die (either LOW for one LOW); a failed
    /// run and other arms match nothing; kills are counted per process.
    #[test]
    fn runs_match_a_prediction_by_who_was_killed() {
        use Fate::{Alive, Killed};
        let one_low = [Alive, Alive, Killed, Alive];
        let results = [
            instance(900, Arm::Agentcg, [0, 143, 0, 137], false),
            instance(900, Arm::Agentcg, [0, 143, 137, 0], false),
            instance(900, Arm::Agentcg, [0, 143, 0, 0], false),
            instance(900, Arm::Agentcg, [0, 143, 137, 0], true),
            instance(900, Arm::NoIsolation, [0, 143, 137, 0], false),
            instance(1100, Arm::Agentcg, [0, 143, 0, 1], false),
        ];
        let a = agreements(&[(900, 10, one_low), (1100, 10, [Alive; 4])], &results);
        assert_eq!(
            (a[0].runs, a[0].matching, a[0].killed),
            (4, 2, [0, 0, 1, 1])
        );
        assert_eq!((a[1].runs, a[1].matching), (1, 0), "exit 1 is a failure");
        let md = markdown(&a);
        assert!(
            md.contains("| 900 MiB | 10x | low1 killed | 2/4 | 0 / 0 / 1 / 1 |"),
            "{md}"
        );
        assert!(md.contains("Agreement: 2 of 5 runs"), "{md}");
        assert_eq!(to_json(&a)[0]["predicted_killed"]["low1"], true);
    }
}
