//! `cargo xtask bench soak`: agentcgd under a long mixed load (issue 12). In one VM boot
//! xtask/bench/soak.sh runs the soakbench helper (tests/src/bin/soakbench), which starts
//! agentcgd (release build) and lets 4 clients run N calls drawn from a seeded mix
//! (normal, failing, OOM-killed, timed out, leaving a process behind), sampling the
//! daemon's RSS and open fds every second. The host judges its JSON (verdict.rs) and
//! writes DIR/soak.md (also printed), soak.json and soak.png.
//!
//! Targets: no call cgroup left once the reaper settles, every granted call with exactly
//! one history row of the outcome its kind must have, every call ending as its kind
//! must, RSS < 30 MiB after 10,000 calls, a flat fd count.

mod chart;
mod verdict;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use serde_json::Value;

use self::verdict::{RSS_TARGET_CALLS, Verdict, points};
use crate::host::Workspace;
use crate::provision::{self, Which};
use crate::vm::{self, Job, VmOptions};

/// agentcgd's RSS, fds, records and cgroups under a long mixed load
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vm: VmOptions,
    /// Directory for soak.md, soak.json and soak.png [default: target/bench/soak]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Calls in all
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    calls: usize,
    /// Concurrent clients, each in a session of its own
    #[arg(long, value_name = "N", default_value_t = 4)]
    clients: usize,
    /// Seed of the generator that draws the mix of calls
    #[arg(long, value_name = "S", default_value_t = 12)]
    seed: u64,
    /// Milliseconds between two samples of agentcgd
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    sample_ms: u64,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    if args.calls == 0 || args.clients == 0 {
        bail!("--calls and --clients must be at least 1");
    }
    provision::ensure(ws, Which::All)?;
    let bin_dir = ws.build_agentcg(true)?;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let job = Job::script_file(
        ws,
        "xtask/bench/soak.sh",
        vec![
            ("AGENTCG_BIN_DIR", path(&bin_dir)),
            ("BENCH_OUT", path(&ws.vm_dir().join("bench"))),
            ("SOAK_CALLS", args.calls.to_string()),
            ("SOAK_CLIENTS", args.clients.to_string()),
            ("SOAK_SEED", args.seed.to_string()),
            ("SOAK_SAMPLE_MS", args.sample_ms.to_string()),
        ],
    );
    let status = vm::run(ws, &args.vm, &job)?.check();
    let raw_path = ws.vm_dir().join("bench/soak-raw.json");
    let (raw, status) = super::read_raw(&raw_path, status, "soakbench")?;
    let verdict = Verdict::of(&raw);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| ws.target.join("bench/soak"));
    let mut doc = raw.clone();
    doc["verdict"] = verdict.to_json();
    super::write_report(&out, "soak", &markdown(&raw, &verdict, args), &doc)?;
    let png = out.join("soak.png");
    let title = format!(
        "agentcgd soak: {} calls, {} clients, seed {}, {:.0} s",
        args.calls,
        args.clients,
        args.seed,
        raw["elapsed_s"].as_f64().unwrap_or(0.0)
    );
    chart::draw(&png, &points(&raw), verdict.fds, &title)?;
    eprintln!("[xtask] wrote {}", png.display());
    if status? != 0 {
        bail!("the guest benchmark script failed; see the guest log above");
    }
    Ok(ExitCode::SUCCESS)
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "**MISS**" }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

fn markdown(raw: &Value, v: &Verdict, args: &Args) -> String {
    let elapsed = raw["elapsed_s"].as_f64().unwrap_or(0.0);
    let done = raw["calls_done"].as_u64().unwrap_or(0);
    let mut md = format!(
        "# agentcgd soak (`cargo xtask bench soak`)\n\n\
         sched_ext VM (software-emulated, {} CPUs, {} memory), agentcgd release build. \
         {} calls from {} clients (each in a session of its own), the mix drawn from seed \
         {}: normal (`sh -c`), failing (exit 3), OOM-killed (64 MiB under `mem.max=16M`), \
         timed out (`timeout=1s`, sleeps 10 s), leaving a `sleep 1000 &` behind. \
         {done} calls done in {elapsed:.0} s: **{:.1} calls/s**. agentcgd sampled every \
         {} ms ({} samples; the last once every call cgroup was gone, after {:.1} s).\n\n\
         | kind | calls | failed |\n|---|---:|---:|\n",
        args.vm.cpus,
        args.vm.memory,
        args.calls,
        args.clients,
        args.seed,
        done as f64 / elapsed.max(1e-9),
        args.sample_ms,
        raw["samples"].as_array().map_or(0, Vec::len),
        raw["settle_ms"].as_f64().unwrap_or(0.0) / 1e3,
    );
    if let Some(kinds) = raw["per_kind"].as_object() {
        for (kind, k) in kinds {
            md += &format!("| {kind} | {} | {} |\n", k["calls"], k["failed"]);
        }
    }
    let rss = v.rss.map_or("not sampled".into(), |r| {
        let after = r.after_1000.map_or("–".into(), |(calls, b)| {
            format!("{} (at {calls} calls)", mib(b))
        });
        format!(
            "{} / {after} / {} / {}",
            mib(r.start),
            mib(r.end),
            mib(r.max)
        )
    });
    let fds = v.fds.map_or("not judged (too few samples)".into(), |f| {
        format!(
            "{} / {} (+{}) / {} / {}",
            f.first, f.steady, f.margin, f.last, f.max
        )
    });
    let rows = &raw["rows"];
    md += &format!(
        "\n| figure | value |\n|---|---|\n\
         | agentcgd RSS MiB: start / after 1,000 calls / end / max | {rss} |\n\
         | agentcgd open fds: first / steady (+margin) / last / max | {fds} |\n\
         | call cgroups left after the reaper settled | {} |\n\
         | history rows: read / lost / duplicate / wrong outcome / unknown | {} / {} / {} / {} / {} |\n\
         | calls that did not end as their kind must (or never ran) | {} |\n",
        raw["leaked_cgroups"],
        rows["read"],
        rows["lost"],
        rows["duplicates"],
        rows["wrong_outcome"],
        rows["unknown"],
        v.failures,
    );
    md += "\nSteady fds: the median of the samples taken while calls 10-20 % ran (the first \
           10 % are warm-up); flat: the last sample, idle after the run, at most the steady \
           state plus max(4, 10 %).\n";
    let rss_verdict = match v.rss_ok() {
        Some(ok) => pass(ok),
        None => "not judged (fewer than 10,000 calls)",
    };
    md += &format!(
        "\n| target | measured | |\n|---|---|---|\n\
         | zero leaked cgroups | {} | {} |\n\
         | zero lost records (one row per granted call, with its outcome) | {} bad rows | {} |\n\
         | every call ends as its kind must | {} failed | {} |\n\
         | RSS < 30 MiB after {RSS_TARGET_CALLS} calls | {} MiB after {done} calls | {rss_verdict} |\n\
         | flat fd count | last {} vs bound {} | {} |\n",
        v.leaked,
        pass(v.no_leak()),
        v.rows_bad,
        pass(v.no_record_lost()),
        v.failures,
        pass(v.no_failure()),
        v.rss.map_or("–".into(), |r| mib(r.end)),
        v.fds.map_or("–".into(), |f| f.last.to_string()),
        v.fds
            .map_or("–".into(), |f| (f.steady + f.margin).to_string()),
        pass(v.fds_flat()),
    );
    for key in ["problems", "leaked"] {
        if let Some(list) = raw[key].as_array().filter(|l| !l.is_empty()) {
            md += &format!("\nFirst {key}:\n\n");
            for p in list {
                md += &format!("- {}\n", p.as_str().unwrap_or_default());
            }
        }
    }
    if let Some(e) = raw["sample_error"].as_str() {
        md += &format!("\nSampling stopped early: {e}\n");
    }
    md
}
