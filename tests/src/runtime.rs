//! Processes that stand in for an agent runtime: one that only sleeps, and one that
//! grows to a given size once attached to its session.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::{Daemon, memhog, wait_for};

/// A long-lived process standing in for an agent runtime.
#[derive(Debug)]
pub struct FakeRuntime {
    pub child: Child,
}

impl FakeRuntime {
    pub fn start() -> FakeRuntime {
        FakeRuntime {
            child: Command::new("sleep").arg("1000").spawn().expect("sleep"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Alive and not a zombie.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for FakeRuntime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent runtime that allocates `mib` MiB only once attached to its session (memory
/// is charged to the cgroup a page is first touched in, and stays there when the
/// process moves), then holds it until dropped.
#[derive(Debug)]
pub struct GrowingRuntime {
    child: Child,
    go: Option<ChildStdin>,
    mib: u64,
}

impl GrowingRuntime {
    pub fn start(mib: u64) -> Self {
        let script = format!("read go && exec {} {mib} 600000 16", memhog());
        let mut child = Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the runtime");
        let go = child.stdin.take();
        Self { child, go, mib }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Attaches it to `session` through the API, checks it is in runtime/, lets it grow
    /// and waits until runtime/ holds its memory.
    pub fn attach_and_grow(&mut self, d: &Daemon, session: &str) {
        let (code, reply) = d.http(
            "POST",
            &format!("/v1/sessions/{session}/runtime"),
            &serde_json::json!({ "pid": self.pid() }).to_string(),
        );
        assert_eq!(code, 200, "attach the runtime: {reply}");
        let runtime = d.root.join(format!("session-{session}/runtime"));
        let procs = std::fs::read_to_string(runtime.join("cgroup.procs")).expect("runtime procs");
        assert!(
            procs.lines().any(|p| p == self.pid().to_string()),
            "runtime {} not in {}: {procs}",
            self.pid(),
            runtime.display()
        );
        let mut go = self.go.take().expect("grow once");
        go.write_all(b"go\n").expect("tell the runtime to grow");
        let current = || {
            std::fs::read_to_string(runtime.join("memory.current"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        wait_for(
            &format!("runtime/ to hold {} MiB", self.mib),
            Duration::from_secs(30),
            || current() >= self.mib << 20,
        );
    }

    /// How it ended, if it did.
    pub fn ended(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait the runtime")
    }
}

impl Drop for GrowingRuntime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
