//! A mix of calls that end every way a call can (ok, failed, OOM-killed, timed out,
//! leaving processes behind), in a fixed cycle or drawn from a seeded generator, and
//! running CLI commands with a bound, for the tests that drive many calls at once
//! (lifecycle, events) and the soak benchmark (src/bin/soakbench).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Daemon, memhog};

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What a call of the mix does, and how it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ok,
    Fail,
    Oom,
    Timeout,
    Leftover,
}

/// The length of [`Kind::of`]'s cycle: 5 ok, 2 failing, 1 OOM, 1 timeout, 1 leftover.
const CYCLE: usize = 10;

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Ok,
        Kind::Fail,
        Kind::Oom,
        Kind::Timeout,
        Kind::Leftover,
    ];

    pub fn of(i: usize) -> Kind {
        match i % CYCLE {
            0 => Kind::Oom,
            1 => Kind::Timeout,
            2 => Kind::Leftover,
            3 | 7 => Kind::Fail,
            _ => Kind::Ok,
        }
    }

    /// `n` kinds drawn from a generator seeded with `seed`, each a random slot of
    /// [`Kind::of`]'s cycle (so in its proportions): the same seed, the same kinds.
    pub fn random_mix(seed: u64, n: usize) -> Vec<Kind> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| Kind::of(rng.usize(..CYCLE))).collect()
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Fail => "failing",
            Kind::Oom => "oom",
            Kind::Timeout => "timeout",
            Kind::Leftover => "leftover",
        }
    }

    /// The CLI arguments. Every shell tool first checks that it runs in a call cgroup.
    pub fn args(self, record: &str) -> Vec<String> {
        self.args_with(record, &[])
    }

    /// [`Kind::args`] with `flags` (e.g. `--verbose`) given to `run`.
    pub fn args_with(self, record: &str, flags: &[&str]) -> Vec<String> {
        let inside = "grep -q /call- /proc/self/cgroup || exit 99";
        let (intent, tool): (Option<&str>, Vec<String>) = match self {
            Kind::Ok => (None, sh(inside)),
            Kind::Fail => (None, sh(&format!("{inside}; exit 3"))),
            Kind::Oom => (Some("mem.max=16M"), vec![memhog(), "64".into()]),
            Kind::Timeout => (Some("timeout=1s"), sh(&format!("{inside}; sleep 10"))),
            Kind::Leftover => (None, sh(&format!("{inside}; sleep 1000 & exit 0"))),
        };
        let mut args = vec!["run".to_string()];
        args.extend(flags.iter().map(|f| f.to_string()));
        args.extend(["--record".into(), record.into()]);
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

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn a_seed_gives_one_mix_in_the_cycles_proportions() {
        let mix = Kind::random_mix(12, 10_000);
        assert_eq!(mix, Kind::random_mix(12, 10_000), "same seed, same kinds");
        assert_ne!(
            mix,
            Kind::random_mix(13, 10_000),
            "another seed, another order"
        );
        for kind in Kind::ALL {
            let n = mix.iter().filter(|k| **k == kind).count();
            let expected = (0..10).filter(|&i| Kind::of(i) == kind).count() * 1_000;
            assert!(
                n.abs_diff(expected) < expected / 10,
                "{kind:?}: {n} of 10,000, expected about {expected}"
            );
        }
        // Not the cycle itself: the kinds come in a random order.
        assert!(mix.iter().enumerate().any(|(i, k)| *k != Kind::of(i)));
    }

    #[test]
    fn flags_go_to_run() {
        let args = Kind::Timeout.args_with("/tmp/r.json", &["--verbose"]);
        assert_eq!(args[..4], ["run", "--verbose", "--record", "/tmp/r.json"]);
        assert!(args.contains(&"timeout=1s".to_string()), "{args:?}");
        assert_eq!(
            Kind::Ok.args("/tmp/r.json")[..3],
            ["run", "--record", "/tmp/r.json"]
        );
    }
}
