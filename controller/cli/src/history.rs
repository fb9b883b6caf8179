//! `agentcg history [filters]` and `agentcg history stats`: the durable call history
//! (`GET /v1/history`, `GET /v1/history/stats`), as a table or, with `--json`, as the
//! API answers it.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use agentcg_core::history::query::{ClassStats, Percentiles};
use agentcg_core::record::CallRecord;
use agentcg_core::units::HumanSize;

use crate::client::Client;
use crate::since::{parse_since, show_utc};
use crate::{EXIT_USAGE, fail, print_json};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HistoryArgs {
    #[command(subcommand)]
    cmd: Option<HistoryCmd>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Debug, clap::Subcommand)]
enum HistoryCmd {
    /// Per command class: count, p50/p95/max of memory peak, duration and CPU, OOM rate.
    Stats {
        /// Only this class.
        #[arg(long)]
        class: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Finished calls, newest first.
#[derive(Debug, clap::Args)]
struct ListArgs {
    #[arg(long)]
    session: Option<String>,
    /// Command class (test, build, ...).
    #[arg(long)]
    class: Option<String>,
    /// ok, failed, oom_killed, timeout, pids_limited, cpu_budget_exceeded,
    /// memory_pressure, killed or abandoned.
    #[arg(long)]
    outcome: Option<String>,
    /// Calls started since: an age (2h), an RFC 3339 time or unix milliseconds.
    #[arg(long)]
    since: Option<String>,
    /// At most this many (1..=10000; 50 by default).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn main(client: &Client, args: HistoryArgs) -> ExitCode {
    match args.cmd {
        Some(HistoryCmd::Stats { class, json }) => stats(client, class, json),
        None => list(client, args.list),
    }
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `path?k=v&...` with the given parameters, encoded.
fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", parts.join("&"))
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn list(client: &Client, a: ListArgs) -> ExitCode {
    let since = match a.since.as_deref().map(|s| parse_since(s, now_unix_ms())) {
        None => None,
        Some(Ok(ms)) => Some(ms.to_string()),
        Some(Err(e)) => {
            eprintln!("agentcg: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let path = with_query(
        "/v1/history",
        &[
            ("session", a.session),
            ("class", a.class),
            ("outcome", a.outcome),
            ("since", since),
            ("limit", a.limit.map(|n| n.to_string())),
        ],
    );
    let v = match client.get(&path) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if a.json {
        print_json(&v);
        return ExitCode::SUCCESS;
    }
    let records: Vec<CallRecord> = serde_json::from_value(v["calls"].clone()).unwrap_or_default();
    println!(
        "{:>6}  {:<19}  {:<12} {:<8} {:<12} {:>9} {:>10} {:>8}  COMMAND",
        "ID", "STARTED (UTC)", "SESSION", "CLASS", "OUTCOME", "MS", "PEAK", "CPU_MS"
    );
    for r in records {
        println!(
            "{:>6}  {:<19}  {:<12} {:<8} {:<12} {:>9} {:>10} {:>8}  {}",
            r.call_id,
            show_utc(r.started_unix_ms),
            r.session,
            r.limits.class.as_deref().unwrap_or("-"),
            r.outcome.as_str(),
            r.duration_ms,
            r.accounting
                .memory_peak
                .map_or("-".into(), |p| HumanSize(p).to_string()),
            r.accounting.cpu.usage_usec / 1000,
            r.command.join(" ")
        );
    }
    ExitCode::SUCCESS
}

fn stats(client: &Client, class: Option<String>, json: bool) -> ExitCode {
    let v = match client.get(&with_query("/v1/history/stats", &[("class", class)])) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if json {
        print_json(&v);
        return ExitCode::SUCCESS;
    }
    let classes: Vec<ClassStats> = serde_json::from_value(v["classes"].clone()).unwrap_or_default();
    print!("{}", stats_table(&classes));
    ExitCode::SUCCESS
}

/// p50 / p95 / max, each shown by `show`.
fn triple(p: Option<Percentiles>, show: impl Fn(u64) -> String) -> String {
    p.map_or("-".into(), |p| {
        format!("{} / {} / {}", show(p.p50), show(p.p95), show(p.max))
    })
}

fn stats_table(classes: &[ClassStats]) -> String {
    let mut out = format!(
        "{:<10} {:>7} {:>6}  {:<30} {:<22} {:<22}\n",
        "CLASS", "CALLS", "OOM%", "PEAK p50/p95/max", "MS p50/p95/max", "CPU_MS p50/p95/max"
    );
    for c in classes {
        out.push_str(&format!(
            "{:<10} {:>7} {:>6.1}  {:<30} {:<22} {:<22}\n",
            c.class.as_deref().unwrap_or("-"),
            c.count,
            c.oom_rate * 100.0,
            triple(c.memory_peak_bytes, |b| HumanSize(b).to_string()),
            triple(c.duration_ms, |v| v.to_string()),
            triple(c.cpu_ms, |v| v.to_string()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded_and_absent_ones_left_out() {
        assert_eq!(with_query("/v1/history", &[("class", None)]), "/v1/history");
        assert_eq!(
            with_query(
                "/v1/history",
                &[
                    ("session", Some("a b".into())),
                    ("class", None),
                    ("outcome", Some("oom_killed".into())),
                    ("x", Some("&=?%é".into())),
                ]
            ),
            "/v1/history?session=a%20b&outcome=oom_killed&x=%26%3D%3F%25%C3%A9"
        );
    }

    #[test]
    fn the_stats_table_shows_each_class() {
        let v = serde_json::json!({"classes": [
            {"class": null, "count": 3, "memory_peak_bytes": null,
             "duration_ms": {"p50": 1, "p95": 2, "max": 3}, "cpu_ms": null, "oom_rate": 0.0},
            {"class": "test", "count": 4, "memory_peak_bytes": {"p50": 1048576, "p95": 2097152, "max": 2097152},
             "duration_ms": {"p50": 10, "p95": 20, "max": 20},
             "cpu_ms": {"p50": 5, "p95": 6, "max": 7}, "oom_rate": 0.25}
        ]});
        let classes: Vec<ClassStats> = serde_json::from_value(v["classes"].clone()).unwrap();
        let table = stats_table(&classes);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[1].starts_with("-") && lines[1].contains("1 / 2 / 3"),
            "{table}"
        );
        assert!(lines[2].starts_with("test"), "{table}");
        assert!(lines[2].contains("25.0"), "{table}");
        assert!(lines[2].contains("1 MiB / 2 MiB / 2 MiB"), "{table}");
        assert!(lines[2].contains("5 / 6 / 7"), "{table}");
    }
}
