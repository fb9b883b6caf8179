//! `agentcg replay`: what a policy would do to recorded agent runs, simulated without a
//! kernel or a daemon (`agentcg_core::replay`, docs/REPLAY.md). Prints per session the
//! calls throttled, frozen and killed and the memory used against what was expected,
//! or with `--pack` how many sessions the host holds against static peak provisioning.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use agentcg_core::intent::Priority;
use agentcg_core::policy::Policy;
use agentcg_core::replay::{self, Kills, Packing, Report, Run};
use agentcg_core::units::{HumanSize, parse_size};
use serde_json::json;

use crate::{EXIT_USAGE, print_json};

/// Replay recorded agent runs through a policy, without a kernel.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Policy file [default: the embedded default policy].
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Memory of the simulated host.
    #[arg(long, value_name = "SIZE", default_value = "16G")]
    host_memory: String,
    /// Concurrent sessions; session i replays run i mod runs [default: one per run].
    #[arg(long, value_name = "N", conflicts_with = "pack")]
    sessions: Option<usize>,
    /// How many sessions the host holds with no kill for lack of memory, against
    /// static provisioning at each run's recorded peak.
    #[arg(long)]
    pack: bool,
    /// Session priorities (low, normal, high), cycled over the sessions.
    #[arg(
        long,
        value_name = "P,..",
        value_delimiter = ',',
        default_value = "normal"
    )]
    priorities: Vec<Priority>,
    #[arg(long)]
    json: bool,
    /// Run directories (with resources.json), or directories holding runs.
    #[arg(required = true, value_name = "TRACES")]
    traces: Vec<PathBuf>,
}

pub fn main(args: ReplayArgs) -> ExitCode {
    match replay_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentcg replay: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn replay_main(args: &ReplayArgs) -> Result<(), String> {
    let (policy, origin) = match &args.policy {
        Some(path) => (
            Policy::load(path).map_err(|e| e.to_string())?,
            path.display().to_string(),
        ),
        None => (Policy::default_policy(), "embedded default".to_string()),
    };
    let host = parse_size(&args.host_memory)
        .map_err(|e| format!("--host-memory {}: {e}", args.host_memory))?;
    if host < 1 << 20 {
        return Err(format!(
            "--host-memory {}: expected at least 1M",
            args.host_memory
        ));
    }
    if args.sessions == Some(0) {
        return Err("--sessions 0: expected at least one session".into());
    }
    let started = Instant::now();
    let runs = replay::find_runs(&args.traces)
        .and_then(|dirs| {
            dirs.iter()
                .map(|d| replay::load_run(d))
                .collect::<Result<Vec<Run>, _>>()
        })
        .map_err(|e| e.to_string())?;
    let calls: usize = runs.iter().map(|r| r.calls.len()).sum();
    let head = json!({
        "policy": origin,
        "runs": runs.len(),
        "shell_calls": calls,
    });
    if args.pack {
        let packing =
            replay::pack(&policy, &runs, host, &args.priorities).map_err(|e| e.to_string())?;
        let ms = started.elapsed().as_millis();
        if args.json {
            print_json(&json!({"replay": head, "elapsed_ms": ms, "packing": packing}));
        } else {
            println!("{}", summary_line(&origin, &runs, calls, ms));
            print!("{}", packing_text(&packing));
        }
        return Ok(());
    }
    let n = args.sessions.unwrap_or(runs.len());
    let specs = replay::sessions(&runs, n, &args.priorities);
    let report = replay::simulate(&policy, &runs, &specs, host, replay::horizon(&runs))
        .map_err(|e| e.to_string())?;
    let ms = started.elapsed().as_millis();
    if args.json {
        print_json(&json!({"replay": head, "elapsed_ms": ms, "report": report}));
    } else {
        println!("{}", summary_line(&origin, &runs, calls, ms));
        print!("{}", report_text(&report));
    }
    Ok(())
}

fn summary_line(origin: &str, runs: &[Run], calls: usize, ms: u128) -> String {
    format!(
        "replayed {} runs ({calls} shell calls) through policy {origin} in {ms} ms",
        runs.len()
    )
}

fn kills_text(k: &Kills) -> String {
    format!(
        "{} by the call's own memory.max, {} at a session's calls/ ceiling, {} at a session \
         budget, {} by the memory response, {} by the host's OOM killer, {} agent runtimes",
        k.call_limit, k.calls_ceiling, k.session_budget, k.response, k.host_oom, k.runtime
    )
}

/// The per-session table, the host's figures and the killed calls.
pub fn report_text(r: &Report) -> String {
    let mut out = format!(
        "{} sessions on a {} host for {} s\n\n{:<6} {:<46} {:<6} {:>5} {:>5} {:>4} {:>5} {:>5} {:>4} {:>5} {:>5} {:>10} {:>10} {:>10}\n",
        r.sessions.len(),
        HumanSize(r.host_memory),
        r.seconds,
        "SESS",
        "RUN",
        "PRIO",
        "PLAYS",
        "CALLS",
        "REJ",
        "BURST",
        "THROT",
        "FRZ",
        "WAIT",
        "KILLS",
        "PEAK",
        "EXPECTED",
        "STATIC"
    );
    for s in &r.sessions {
        out += &format!(
            "{:<6} {:<46} {:<6} {:>5} {:>5} {:>4} {:>5} {:>5} {:>4} {:>5} {:>5} {:>10} {:>10} {:>10}\n",
            s.session,
            s.run,
            s.priority.as_str(),
            s.plays,
            s.calls,
            s.rejected,
            s.burst,
            s.throttled + s.response_throttled,
            s.frozen,
            s.waited,
            s.kills.total(),
            HumanSize(s.peak_used).to_string(),
            HumanSize(s.peak_expected).to_string(),
            HumanSize(s.static_reserve).to_string(),
        );
    }
    out += &format!(
        "\nhost: peak {} of {} (static provisioning would reserve {})\nkills: {}\n",
        HumanSize(r.peak_used),
        HumanSize(r.host_memory),
        HumanSize(r.static_reserve),
        kills_text(&r.kills)
    );
    if !r.steps.is_empty() {
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|(s, n)| format!("{} {n}", s.as_str()))
            .collect();
        out += &format!("memory response steps: {}\n", steps.join(", "));
    }
    for k in r.killed.iter().take(20) {
        out += &format!(
            "  killed at {} s: {} ({}) `{}` class {}, recorded peak {}, memory.max {}, {:?}{}\n",
            k.second,
            k.session,
            k.run,
            k.command,
            k.class.as_deref().unwrap_or("-"),
            HumanSize(k.recorded_peak),
            HumanSize(k.memory_max),
            k.cause,
            if k.fits_host {
                " (it fitted the host)"
            } else {
                ""
            }
        );
    }
    if r.killed.len() > 20 {
        out += &format!("  ... {} more (--json lists all)\n", r.killed.len() - 20);
    }
    out
}

/// The packing figure.
pub fn packing_text(p: &Packing) -> String {
    let mut out = format!(
        "packing on a {} host:\n  static peak provisioning: {} sessions (their peaks sum to {})\n  \
         shared under the policy:  {} sessions with no kill for lack of memory (peak use {})\n  \
         ratio: {:.2}x, of a ceiling of {:.2}x (the runs' summed peaks over their summed means: \
         no sharing that keeps their memory holds more on average)\n",
        HumanSize(p.host_memory),
        p.static_sessions,
        HumanSize(p.static_reserve),
        p.packed_sessions,
        HumanSize(p.packed_peak_used),
        p.ratio,
        p.ceiling
    );
    if let Some(k) = &p.next_first_kill {
        out += &format!(
            "  with {} sessions: {}; the first at {} s: {} ({}) `{}`\n",
            p.packed_sessions + 1,
            kills_text(&p.next_kills),
            k.second,
            k.session,
            k.run,
            k.command
        );
    }
    out
}
