//! telebench: the guest side of `cargo xtask bench telemetry` (xtask/bench/telemetry.sh).
//!
//! What agentcgd costs while it streams telemetry: its CPU (% of one CPU) and resident
//! memory at 10 and 50 calls/s and at the highest rate the VM sustains (found first by
//! clients calling back to back), each rate once bare and once watched (one
//! `agentcg events --follow` consumer and a scrape of `/metrics` every second), the two
//! arms in alternating order from rate to rate. Each arm runs in a session of its own;
//! its CPU window closes only when every call of the arm is over for agentcgd too (the
//! session's call cgroups are gone, which happens after the record is durable), so
//! deferred work is counted. Then calls run until 10,000 in all and the RSS is read.
//! Every granted call must have one history row and, when watched, one `call_finished`
//! event: the misses are counted, not dropped. Writes one JSON document.

mod daemon;
mod load;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

use load::{Caller, Calls, Stop};

/// How long the calls of an arm may take to be over for agentcgd after the last returned.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the consumer may lag behind the last record.
const EVENT_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
struct Args {
    /// The agentcg CLI.
    #[arg(long)]
    agentcg: PathBuf,
    /// agentcgd's socket.
    #[arg(long)]
    socket: PathBuf,
    /// agentcgd's pid (its CPU and RSS are measured).
    #[arg(long)]
    daemon_pid: i32,
    /// agentcgd's metrics address.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics: SocketAddr,
    /// agentcgd's cgroup root (the arms' sessions are under it).
    #[arg(long)]
    root: PathBuf,
    /// The tool each call runs.
    #[arg(long, default_value = "/bin/true")]
    tool: PathBuf,
    /// Seconds per arm.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Fixed rates (calls/s), besides the highest sustainable.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    rates: Vec<f64>,
    /// Back-to-back clients that find the highest rate.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Workers of the open loop (calls in flight at most).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Calls in all before the final RSS.
    #[arg(long, default_value_t = 10_000)]
    rss_calls: usize,
    /// The JSON document.
    #[arg(long)]
    out: PathBuf,
}

/// How an arm makes its calls.
#[derive(Debug, Clone, Copy)]
enum Load {
    Rate(f64),
    BackToBack(Stop),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(doc) => match std::fs::write(&args.out, doc.to_string()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("telebench: cannot write {}: {e}", args.out.display());
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("telebench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<Value, String> {
    let caller = Caller {
        agentcg: args.agentcg.clone(),
        socket: args.socket.clone(),
        tool: args.tool.clone(),
    };
    let seconds = Duration::from_secs_f64(args.seconds);
    let mut arms = Vec::new();
    let mut total = 0;
    eprintln!(
        "telebench: finding the highest rate ({} clients back to back)",
        args.clients
    );
    let probe = arm(
        args,
        &caller,
        "tb-max",
        Load::BackToBack(Stop::After(seconds)),
        false,
    )?;
    total += probe.calls;
    let max_rate = probe.achieved_rate;
    arms.push(probe);
    let mut rates = args.rates.clone();
    rates.push(max_rate);
    for (k, rate) in rates.iter().enumerate() {
        for watched in order(k) {
            let name = format!("tb-{k}-{}", if watched { "w" } else { "b" });
            eprintln!("telebench: {rate:.1} calls/s, watched: {watched}");
            let a = arm(args, &caller, &name, Load::Rate(*rate), watched)?;
            total += a.calls;
            arms.push(a);
        }
    }
    let rest = args.rss_calls.saturating_sub(total);
    eprintln!(
        "telebench: {rest} more calls back to back, to {} in all",
        args.rss_calls
    );
    let fill = arm(
        args,
        &caller,
        "tb-fill",
        Load::BackToBack(Stop::Calls(rest)),
        false,
    )?;
    total += fill.calls;
    arms.push(fill);
    let rss_after = daemon::rss_bytes(args.daemon_pid)?;
    Ok(json!({
        "seconds_per_arm": args.seconds,
        "max_rate": max_rate,
        "clients": args.clients,
        "calls_total": total,
        "rss_after_all_bytes": rss_after,
        "arms": arms.iter().map(Arm::to_json).collect::<Vec<_>>(),
    }))
}

/// Bare then watched, or watched then bare: the order alternates from rate to rate.
fn order(k: usize) -> [bool; 2] {
    if k.is_multiple_of(2) {
        [false, true]
    } else {
        [true, false]
    }
}

/// One arm's figures.
#[derive(Debug)]
struct Arm {
    session: String,
    load: Load,
    watched: bool,
    calls: usize,
    failures: usize,
    errors: Vec<String>,
    late: usize,
    achieved_rate: f64,
    latency_p50_ms: Option<f64>,
    daemon_cpu_percent: f64,
    rss_bytes: u64,
    settled: bool,
    rows_missing: usize,
    events: Option<(watch::Seen, watch::Scrapes, usize)>,
}

impl Arm {
    fn to_json(&self) -> Value {
        let (load, rate) = match self.load {
            Load::Rate(r) => ("rate", Some(r)),
            Load::BackToBack(_) => ("back_to_back", None),
        };
        let events = self.events.as_ref().map(|(seen, scrapes, missing)| {
            json!({
                "finished_seen": seen.finished.len(),
                "missing": missing,
                "duplicates": seen.duplicates,
                "lagged_missed": seen.missed,
                "bad_lines": seen.bad_lines,
                "scrapes_ok": scrapes.ok,
                "scrapes_failed": scrapes.failed,
                "scrape_bytes": scrapes.bytes,
            })
        });
        json!({
            "session": self.session, "load": load, "target_rate": rate,
            "watched": self.watched, "calls": self.calls, "failures": self.failures,
            "errors": self.errors, "late": self.late, "achieved_rate": self.achieved_rate,
            "latency_p50_ms": self.latency_p50_ms,
            "daemon_cpu_percent": self.daemon_cpu_percent, "rss_bytes": self.rss_bytes,
            "settled": self.settled, "rows_missing": self.rows_missing, "events": events,
        })
    }
}

fn arm(
    args: &Args,
    caller: &Caller,
    session: &str,
    load: Load,
    watched: bool,
) -> Result<Arm, String> {
    agentcg(caller, &["session", "create", session])?;
    let before = daemon::sample(args.daemon_pid)?;
    let watch = if watched {
        let w = watch::Watch::start(caller, session, args.metrics)?;
        // The consumer's subscription must be in place before the first call.
        std::thread::sleep(Duration::from_millis(500));
        Some(w)
    } else {
        None
    };
    let calls = match load {
        Load::Rate(rate) => caller.open_loop(session, rate, args.seconds, args.workers),
        Load::BackToBack(stop) => caller.closed_loop(session, args.clients, stop),
    };
    let settled = wait_settled(&args.root.join(format!("session-{session}/calls")));
    let after = daemon::sample(args.daemon_pid)?;
    let events = watch.map(|w| {
        let (seen, scrapes) = w.stop(&calls.ids, EVENT_GRACE);
        let missing = calls
            .ids
            .iter()
            .filter(|id| !seen.finished.contains(id))
            .count();
        (seen, scrapes, missing)
    });
    let rows = history_ids(caller, session)?;
    let rows_missing = calls.ids.iter().filter(|id| !rows.contains(id)).count();
    let rss_bytes = daemon::rss_bytes(args.daemon_pid)?;
    agentcg(caller, &["session", "close", session])?;
    Ok(Arm {
        session: session.to_owned(),
        load,
        watched,
        calls: calls.count(),
        failures: calls.failures,
        errors: calls.errors.clone(),
        late: calls.late,
        achieved_rate: calls.count() as f64 / calls.elapsed.as_secs_f64().max(1e-9),
        latency_p50_ms: p50_ms(&calls),
        daemon_cpu_percent: daemon::cpu_percent(before, after),
        rss_bytes,
        settled,
        rows_missing,
        events,
    })
}

fn p50_ms(calls: &Calls) -> Option<f64> {
    let mut v = calls.latency_ns.clone();
    v.sort_unstable();
    // A failed call is the worst value: it sits at the top of the order.
    let n = v.len() + calls.failures;
    let mid = n.checked_sub(1)? / 2;
    v.get(mid)
        .map(|ns| *ns as f64 / 1e6)
        .or(Some(f64::INFINITY))
}

/// Waits until no call cgroup is left in `calls_dir` (agentcgd removes one only after
/// its record is durable); false on timeout.
fn wait_settled(calls_dir: &Path) -> bool {
    let start = Instant::now();
    while start.elapsed() < SETTLE_TIMEOUT {
        let left = std::fs::read_dir(calls_dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with("call-"))
            })
            .unwrap_or(false);
        if !left {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The call ids of the session's history rows (`agentcg history --json`).
fn history_ids(caller: &Caller, session: &str) -> Result<std::collections::HashSet<u64>, String> {
    let out = agentcg(
        caller,
        &[
            "history",
            "--session",
            session,
            "--limit",
            "10000",
            "--json",
        ],
    )?;
    let doc: Value =
        serde_json::from_str(&out).map_err(|e| format!("history --json: {e}: {out}"))?;
    let rows = doc
        .as_array()
        .or_else(|| doc["calls"].as_array())
        .ok_or_else(|| format!("history --json is not a list: {out}"))?;
    Ok(rows.iter().filter_map(|r| r["call_id"].as_u64()).collect())
}

/// Runs `agentcg ARGS`; its stdout.
fn agentcg(caller: &Caller, args: &[&str]) -> Result<String, String> {
    let out = Command::new(&caller.agentcg)
        .arg("--socket")
        .arg(&caller.socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run agentcg: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "agentcg {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arms_alternate_from_rate_to_rate() {
        assert_eq!(order(0), [false, true]);
        assert_eq!(order(1), [true, false]);
    }

    #[test]
    fn failures_are_the_worst_latency() {
        let mut calls = Calls {
            latency_ns: vec![3_000_000, 1_000_000],
            ..Calls::default()
        };
        assert_eq!(p50_ms(&calls), Some(1.0));
        calls.failures = 3;
        assert_eq!(p50_ms(&calls), Some(f64::INFINITY));
        assert_eq!(p50_ms(&Calls::default()), None);
    }

    #[test]
    fn settled_means_no_call_cgroup_left() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("call-000001")).expect("mkdir");
        let d = dir.path().to_path_buf();
        let remover = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::remove_dir(d.join("call-000001")).expect("rmdir");
        });
        assert!(wait_settled(dir.path()));
        remover.join().expect("remover");
    }
}
