//! soakbench: the guest side of `cargo xtask bench soak` (xtask/bench/soak.sh).
//!
//! Starts agentcgd (the test library's [`Daemon`], from `AGENTCG_BIN_DIR`), then
//! `SOAK_CLIENTS` clients, each in a session of its own, run `SOAK_CALLS` calls in all,
//! taking them in turn from one list drawn from a generator seeded with `SOAK_SEED`
//! (`Kind::random_mix`: normal, failing, OOM-killed, timed out, leaving a process
//! behind). A thread reads agentcgd's RSS and open fds every `SOAK_SAMPLE_MS` over the
//! whole run. At the end, once no call cgroup is left under the daemon's root (or
//! `SETTLE_TIMEOUT` is over), it counts the call cgroups left, matches every call with
//! its history rows and writes one JSON document to `SOAK_OUT`, which the host judges
//! (xtask/src/bench/soak.rs). A call that did not end as its kind must is a failure,
//! never dropped.

mod check;
mod sample;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentcg_vmtests::mix::{Kind, run_bounded};
use agentcg_vmtests::{Daemon, granted_call_id};
use serde_json::{Value, json};

use check::{Call, match_rows, problem};
use sample::{Sample, Sampler};

/// How long the reaper may take to remove the last call cgroups after the last call.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Problems kept for the report (the counts are complete).
const KEEP_PROBLEMS: usize = 10;
/// Rows `agentcg history` returns at most (per session).
const HISTORY_LIMIT: usize = 10_000;
/// Where the clients' record and stderr files go (the guest's tmpfs).
const SCRATCH: &str = "/tmp/soak";

#[derive(Debug)]
struct Config {
    calls: usize,
    clients: usize,
    seed: u64,
    sample: Duration,
    out: PathBuf,
}

fn main() -> std::process::ExitCode {
    let config = match config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("soakbench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let doc = run(&config);
    match std::fs::write(&config.out, doc.to_string()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soakbench: cannot write {}: {e}", config.out.display());
            std::process::ExitCode::FAILURE
        }
    }
}

fn config() -> Result<Config, String> {
    fn var<T: std::str::FromStr>(name: &str) -> Result<T, String> {
        let text = std::env::var(name).map_err(|_| format!("{name} is not set"))?;
        text.parse()
            .map_err(|_| format!("{name}={text:?} is not a valid value"))
    }
    let config = Config {
        calls: var("SOAK_CALLS")?,
        clients: var::<usize>("SOAK_CLIENTS")?.max(1),
        seed: var("SOAK_SEED")?,
        sample: Duration::from_millis(var::<u64>("SOAK_SAMPLE_MS")?.max(10)),
        out: var("SOAK_OUT")?,
    };
    if config.calls.div_ceil(config.clients) > HISTORY_LIMIT {
        return Err(format!(
            "{} calls from {} clients is more than {HISTORY_LIMIT} per session, which \
             `agentcg history` cannot list at once: add clients",
            config.calls, config.clients
        ));
    }
    Ok(config)
}

fn session(client: usize) -> String {
    format!("soak-{client}")
}

fn run(config: &Config) -> Value {
    let mix = Kind::random_mix(config.seed, config.calls);
    std::fs::create_dir_all(SCRATCH).unwrap_or_else(|e| panic!("mkdir {SCRATCH}: {e}"));
    let d = Daemon::start("soak");
    let pid = i32::try_from(d.pid()).expect("pid");
    for c in 0..config.clients {
        let out = d.agentcg(&["session", "create", &session(c)]);
        assert!(out.status.success(), "session create: {out:?}");
    }
    let start = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let sampler = Sampler::start(pid, start, config.sample, done.clone());
    eprintln!(
        "soakbench: {} calls from {} clients (seed {}), agentcgd pid {pid}",
        config.calls, config.clients, config.seed
    );
    let calls = drive(&d, &mix, config.clients, &done);
    let elapsed = start.elapsed();
    eprintln!(
        "soakbench: {} calls in {:.0} s; waiting for the call cgroups to go",
        calls.len(),
        elapsed.as_secs_f64()
    );
    let settle_start = Instant::now();
    let mut left = call_cgroups(&d.root);
    while !left.is_empty() && settle_start.elapsed() < SETTLE_TIMEOUT {
        std::thread::sleep(Duration::from_millis(100));
        left = call_cgroups(&d.root);
    }
    let settle = settle_start.elapsed();
    let (samples, sample_error) = sampler.stop();
    let rows: Vec<(u64, String)> = (0..config.clients)
        .flat_map(|c| d.history(&["--session", &session(c)]))
        .filter_map(|r| Some((r["call_id"].as_u64()?, r["outcome"].as_str()?.to_owned())))
        .collect();
    let tally = match_rows(&calls, &rows);
    let problems: Vec<String> = calls.iter().filter_map(problem).collect();
    let per_kind: serde_json::Map<String, Value> = Kind::ALL
        .into_iter()
        .map(|k| {
            let of_kind = calls.iter().filter(|c| c.kind == k);
            let failed = of_kind.clone().filter(|c| problem(c).is_some()).count();
            (
                k.name().to_owned(),
                json!({"calls": of_kind.count(), "failed": failed}),
            )
        })
        .collect();
    json!({
        "calls": config.calls, "clients": config.clients, "seed": config.seed,
        "sample_ms": config.sample.as_millis() as u64,
        "calls_done": calls.len(), "elapsed_s": elapsed.as_secs_f64(),
        "failures": problems.len(),
        "problems": problems.iter().take(KEEP_PROBLEMS).collect::<Vec<_>>(),
        "per_kind": per_kind,
        "rows": {"read": tally.rows, "lost": tally.lost, "duplicates": tally.duplicates,
                 "wrong_outcome": tally.wrong_outcome, "unknown": tally.unknown},
        "settle_ms": settle.as_millis() as u64,
        "leaked_cgroups": left.len(),
        "leaked": left.iter().take(KEEP_PROBLEMS).map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "sample_error": sample_error,
        "samples": samples.into_iter().map(Sample::to_json).collect::<Vec<_>>(),
    })
}

/// The clients: each takes the next call of `mix` until none is left.
fn drive(d: &Daemon, mix: &[Kind], clients: usize, done: &AtomicUsize) -> Vec<Call> {
    let next = AtomicUsize::new(0);
    let calls = Mutex::new(Vec::with_capacity(mix.len()));
    std::thread::scope(|s| {
        for c in 0..clients {
            let (next, calls) = (&next, &calls);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&kind) = mix.get(i) else { return };
                    let call = one(d.cli(), &session(c), kind, i);
                    calls.lock().expect("calls").push(call);
                    let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                    if n.is_multiple_of(500) {
                        eprintln!("soakbench: {n} calls done");
                    }
                }
            });
        }
    });
    calls.into_inner().expect("calls")
}

/// Call `i` of the mix, of `kind`, in `session`.
fn one(mut cmd: Command, session: &str, kind: Kind, i: usize) -> Call {
    let prefix = format!("{SCRATCH}/{i}");
    let record = format!("{prefix}.json");
    let _ = std::fs::remove_file(&record);
    cmd.args(kind.args_with(&record, &["--verbose", "--session", session]));
    let (exit, stderr) = run_bounded(cmd, &prefix);
    let record_doc = std::fs::read_to_string(&record)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let _ = std::fs::remove_file(&record);
    let _ = std::fs::remove_file(format!("{prefix}.err"));
    let record = record_doc.map(|r| {
        (
            r["call_id"].as_u64(),
            r["outcome"].as_str().unwrap_or("none").to_owned(),
            r["leftover_killed"].as_u64().unwrap_or(0),
        )
    });
    Call {
        kind,
        id: granted_call_id(&stderr).or_else(|| record.as_ref().and_then(|r| r.0)),
        exit,
        record,
        stderr,
    }
}

/// Every `call-*` cgroup under the daemon's `root` (`session-*/calls/call-*`).
fn call_cgroups(root: &Path) -> Vec<PathBuf> {
    Daemon::child_cgroups(root)
        .into_iter()
        .flat_map(|s| Daemon::child_cgroups(&s.join("calls")))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("call-"))
        })
        .collect()
}
