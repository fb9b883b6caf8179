//! The Prometheus endpoint on the real kernel (docs/METRICS.md): a known sequence of
//! calls (ok, failing, OOM-killed) is counted exactly in `agentcg_calls_total`, the
//! scrape passes `promtool check metrics`, and a real Prometheus server started here on
//! loopback scrapes agentcgd every second and answers the same counts through its
//! query API. Also checks deploy/prometheus/agentcg.rules.yml with `promtool`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentcg_vmtests::scrape::{self, get, samples};
use agentcg_vmtests::{Daemon, memhog, wait_for};

const METRICS: &str = "127.0.0.1:19464";
const PROMETHEUS: &str = "127.0.0.1:19090";

/// A scrape of agentcgd's endpoint in the given format.
fn scrape(accept: &str) -> String {
    scrape::scrape(METRICS, accept)
}

/// `agentcg run --intent class=CLASS[,EXTRA] -- ARGV`; asserts the exit code.
fn call(d: &Daemon, intent: &str, argv: &[&str], code: i32) {
    let mut args = vec!["run", "--intent", intent, "--"];
    args.extend_from_slice(argv);
    let out = d.agentcg(&args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "agentcg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Percent-encodes a query parameter.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query through Prometheus' HTTP API, if it has exactly one.
fn query(expr: &str) -> Option<f64> {
    let path = format!("/api/v1/query?query={}", urlencode(expr));
    let (status, body) = get(PROMETHEUS, &path, "application/json").ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    match result.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// A Prometheus server on loopback scraping agentcgd every second; killed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    fn start() -> Prometheus {
        let dir = PathBuf::from(format!("/tmp/agentcg-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: agentcgd\n    static_configs:\n      - targets: ['{METRICS}']\n"
            ),
        )
        .expect("prometheus config");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus (Debian's package; xtask/provision.sh installs it)");
        Prometheus { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `promtool ARGS` with `stdin`; (success, stdout + stderr).
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool (Debian's prometheus package)");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write to promtool");
    }
    drop(input);
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn metrics_count_every_call_and_prometheus_reads_them() {
    let d = Daemon::start_with("metrics", &["--metrics-listen", METRICS]);
    // 3 ok and 2 failing calls of class test, 1 OOM-killed call of class build.
    for _ in 0..3 {
        call(&d, "class=test", &["true"], 0);
    }
    for _ in 0..2 {
        call(&d, "class=test", &["false"], 1);
    }
    let hog = memhog();
    call(&d, "class=build,mem.max=16M", &[&hog, "64"], 137);

    // The probes of deploy/kubernetes answer on the same listener.
    for path in ["/healthz", "/readyz"] {
        let (code, body) = scrape::get(METRICS, path, "").expect(path);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(body.contains(r#""status":"ok""#), "{path}: {body}");
    }

    let text = scrape("text/plain");
    let s = samples(&text);
    let calls = |labels: &str| s.get(&format!("agentcg_calls_total{{{labels}}}")).copied();
    assert_eq!(
        calls(r#"class="test",outcome="ok",priority="normal""#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        calls(r#"class="test",outcome="failed",priority="normal""#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        calls(r#"class="build",outcome="oom_killed",priority="normal""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(scrape::sum(&s, "agentcg_calls_total", ""), 6.0, "{text}");
    assert_eq!(
        s.get(r#"agentcg_oom_kills_total{priority="normal"}"#),
        Some(&1.0)
    );
    assert_eq!(
        s.get(r#"agentcg_call_duration_seconds_count{class="test"}"#),
        Some(&5.0)
    );
    assert_eq!(
        s.get(r#"agentcg_session_calls_running{session="default"}"#),
        Some(&0.0),
        "{text}"
    );
    assert!(
        s.get(r#"agentcg_session_memory_bytes{session="default"}"#)
            .is_some_and(|&v| v > 0.0),
        "{text}"
    );
    assert!(s.contains_key(
        r#"agentcg_session_memory_pressure_seconds_total{session="default",kind="full"}"#
    ));
    assert_eq!(
        s.get(r#"agentcg_bpf_programs_loaded{programs="telemetry"}"#),
        Some(&1.0)
    );
    assert!(
        s.get(r#"agentcg_bpf_ringbuf_events_total{ring="telemetry"}"#)
            .is_some_and(|&v| v >= 6.0),
        "every call execs at least once: {text}"
    );
    assert_eq!(
        s.get(r#"agentcg_bpf_ringbuf_drops_total{ring="telemetry"}"#),
        Some(&0.0)
    );
    // The VM's kernel has sched_ext and the memory kfuncs: every set of programs runs.
    for (series, want) in [
        (r#"agentcg_scheduler_state{state="sched_ext"}"#, 1.0),
        (r#"agentcg_scheduler_state{state="kernel"}"#, 0.0),
        (r#"agentcg_bpf_programs_loaded{programs="memory"}"#, 1.0),
        (r#"agentcg_bpf_programs_loaded{programs="scheduler"}"#, 1.0),
        (r#"agentcg_bpf_ringbuf_drops_total{ring="memory"}"#, 0.0),
        (
            r#"agentcg_bpf_ringbuf_drops_total{ring="sched_budget"}"#,
            0.0,
        ),
        ("agentcg_scheduler_fallbacks_total", 0.0),
    ] {
        assert_eq!(s.get(series), Some(&want), "{series}: {text}");
    }
    // The kernel's count of skipped runs is read for both sets of tracing programs.
    for programs in ["telemetry", "memory"] {
        let series = format!("agentcg_bpf_program_missed_runs_total{{programs=\"{programs}\"}}");
        let missed = s.get(series.as_str());
        eprintln!("{series}: {missed:?}");
        assert!(missed.is_some(), "{series}: {text}");
    }
    // The default session's three cgroups (session, runtime/, calls/) have a policy.
    assert!(
        s.get(r#"agentcg_bpf_map_entries{map="sched_policies"}"#)
            .is_some_and(|&v| v >= 3.0),
        "{text}"
    );
    assert!(s.get("process_open_fds").is_some_and(|&v| v > 0.0));

    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok && out.trim().is_empty(), "promtool check metrics: {out}");

    let om = scrape("application/openmetrics-text; version=1.0.0");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains(" # {call_id=\""), "no exemplar: {om}");

    let prom = Prometheus::start();
    let seen = |expr: &str, want: f64| query(expr) == Some(want);
    wait_for(
        "Prometheus to scrape the 6 calls",
        Duration::from_secs(120),
        || seen("sum(agentcg_calls_total)", 6.0),
    );
    assert_eq!(
        query(r#"agentcg_calls_total{class="test",outcome="failed"}"#),
        Some(2.0),
        "{}",
        prom.log()
    );
    assert_eq!(
        query(r#"agentcg_calls_total{class="build",outcome="oom_killed"}"#),
        Some(1.0)
    );
    assert_eq!(query(r#"up{job="agentcgd"}"#), Some(1.0));
    // A call made while Prometheus watches shows up at the next scrape.
    call(&d, "class=test", &["true"], 0);
    wait_for(
        "Prometheus to see the 7th call",
        Duration::from_secs(60),
        || seen(r#"agentcg_calls_total{class="test",outcome="ok"}"#, 4.0),
    );
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn metrics_alert_rules_pass_promtool() {
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/agentcg.rules.yml");
    let rules = rules.display().to_string();
    let (ok, out) = promtool(&["check", "rules", &rules], None);
    assert!(ok, "promtool check rules {rules}: {out}");
    assert!(out.contains("SUCCESS"), "{out}");
}
