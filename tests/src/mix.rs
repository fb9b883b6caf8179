//! A mix of calls that end every way a call can (ok, failed, OOM-killed, timed out,
//! leaving processes behind), and running CLI commands with a bound, for the tests that
//! drive many calls at once (lifecycle, events).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Daemon, memhog};

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What a call of the crash test does, and how it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ok,
    Fail,
    Oom,
    Timeout,
    Leftover,
}

impl Kind {
    pub fn of(i: usize) -> Kind {
        match i % 10 {
            0 => Kind::Oom,
            1 => Kind::Timeout,
            2 => Kind::Leftover,
            3 | 7 => Kind::Fail,
            _ => Kind::Ok,
        }
    }

    /// The CLI arguments. Every shell tool first checks that it runs in a call cgroup.
    pub fn args(self, record: &str) -> Vec<String> {
        let inside = "grep -q /call- /proc/self/cgroup || exit 99";
        let (intent, tool): (Option<&str>, Vec<String>) = match self {
            Kind::Ok => (None, sh(inside)),
            Kind::Fail => (None, sh(&format!("{inside}; exit 3"))),
            Kind::Oom => (Some("mem.max=16M"), vec![memhog(), "64".into()]),
            Kind::Timeout => (Some("timeout=1s"), sh(&format!("{inside}; sleep 10"))),
            Kind::Leftover => (None, sh(&format!("{inside}; sleep 1000 & exit 0"))),
        };
        let mut args = vec!["run".to_string(), "--record".into(), record.into()];
        if let Some(i) = intent {
            args.extend(["--intent".into(), i.into()]);
        }
        args.push("--".into());
        args.extend(tool);
        args
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Ok | Kind::Leftover => 0,
            Kind::Fail => 3,
            Kind::Oom | Kind::Timeout => 137,
        }
    }

    pub fn outcome(self) -> &'static str {
        match self {
            Kind::Ok | Kind::Leftover => "ok",
            Kind::Fail => "failed",
            Kind::Oom => "oom_killed",
            Kind::Timeout => "timeout",
        }
    }
}

/// Runs a CLI command with its output in files (a process a tool leaves behind keeps
/// pipes open, not files) and a bound: a command still running after 3 minutes is
/// killed and reported as such (exit code -1), instead of hanging the test.
pub fn run_bounded(mut cmd: Command, prefix: &str) -> (Option<i32>, String) {
    let err_path = format!("{prefix}.err");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("agentcg run");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            break Some(-1);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

/// The end of the daemon's log, for a failure message.
pub fn log_tail(d: &Daemon) -> String {
    let log = std::fs::read_to_string(d.log_path()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}
