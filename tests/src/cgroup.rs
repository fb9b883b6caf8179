//! Cgroups made and removed by the tests themselves: a [`TestCgroup`] per test, and the
//! removal of a whole tree whatever is still running in it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

/// Kills everything under `dir` and removes the cgroups, waiting up to `wait`.
pub fn remove_cgroup_tree(dir: &Path, wait: Duration) {
    let cg = agentcg_core::cgroup::Cgroup::new(dir);
    if !cg.exists() {
        return;
    }
    let _ = cg.kill();
    let start = Instant::now();
    while start.elapsed() < wait {
        if !cg.populated().unwrap_or(false) && cg.remove_empty().unwrap_or(false) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A cgroup made for one kernel test, under `/sys/fs/cgroup/agentcg-<kind>-<pid>-<name>`;
/// everything in it is killed and it is removed on drop, also when the test fails.
#[derive(Debug)]
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    /// A top-level test cgroup; `kind` names the test file (`schedtest`, `memtest`).
    pub fn root(kind: &str, name: &str) -> Self {
        let root = Path::new("/sys/fs/cgroup");
        // docs/ARCHITECTURE.md#bpf-pitfalls, pitfall 8: the guest's root subtree_control
        // starts empty.
        let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu +memory +pids");
        Self::make(root.join(format!("agentcg-{kind}-{}-{name}", std::process::id())))
    }

    fn make(path: PathBuf) -> Self {
        if path.exists() {
            drop(Self { path: path.clone() });
        }
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    /// A child cgroup; enables the cpu and memory controllers here first.
    pub fn child(&self, name: &str) -> Self {
        self.write("cgroup.subtree_control", "+cpu +memory");
        Self::make(self.path.join(name))
    }

    pub fn write(&self, file: &str, value: &str) {
        let p = self.path.join(file);
        std::fs::write(&p, value)
            .unwrap_or_else(|e| panic!("write {value:?} to {}: {e}", p.display()));
    }

    /// The cgroup id: the inode number of the cgroup v2 directory.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.path.display()))
            .ino()
    }

    /// `memory.current`.
    pub fn current(&self) -> u64 {
        let p = self.path.join("memory.current");
        std::fs::read_to_string(&p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("read {}", p.display()))
    }

    /// `usage_usec` of `cpu.stat`.
    pub fn usage_usec(&self) -> u64 {
        let p = self.path.join("cpu.stat");
        let text =
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no usage_usec in {}: {text}", p.display()))
    }

    /// Starts `argv` inside this cgroup (clone3 into it); returns the pid.
    pub fn spawn(&self, argv: &[&str]) -> i32 {
        let argv: Vec<std::ffi::OsString> = argv.iter().map(std::ffi::OsString::from).collect();
        agentcg_core::spawn::spawn_in_cgroup(&self.path, &argv, None)
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {}: {e}", self.path.display()))
    }

    /// Runs `script` with `sh -c` after the shell moved itself into this cgroup (so the
    /// shell's own exec happened outside it) and asserts it succeeded.
    pub fn run_sh(&self, script: &str) {
        let procs = self.path.join("cgroup.procs");
        let full = format!("echo $$ > {} && {script}", procs.display());
        let status = Command::new("/bin/sh")
            .args(["-c", &full])
            .status()
            .unwrap_or_else(|e| panic!("spawn sh -c {full:?}: {e}"));
        assert!(status.success(), "sh -c {full:?}: {status}");
    }

    /// Starts `n` busy loops (`sh -c 'while :; do :; done'`) inside this cgroup.
    pub fn spin(&self, n: usize) {
        for _ in 0..n {
            self.spawn(&["/bin/sh", "-c", "while :; do :; done"]);
        }
    }

    /// Kills everything in the cgroup (and below) and reaps our children.
    pub fn kill(&self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..100 {
            reap_exited_children();
            let populated = std::fs::read_to_string(self.path.join("cgroup.events"))
                .map(|e| e.contains("populated 1"))
                .unwrap_or(false);
            if !populated {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.kill();
        for child in std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
        {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                drop(TestCgroup { path: child.path() });
            }
        }
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!("warning: could not rmdir {}", self.path.display());
    }
}

/// Reaps every child of this test process that has exited, without blocking.
fn reap_exited_children() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            return;
        }
    }
}
