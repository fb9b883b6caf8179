//! Helpers shared by the kernel integration tests, which run as root inside the
//! sched_ext VM (`cargo xtask vm-test`): start an agentcgd on a private cgroup root,
//! run the CLI against it, speak raw HTTP to its socket, inspect cgroups.

pub mod events;
pub mod memory;
pub mod mix;
pub mod model_server;
pub mod replay;
pub mod scrape;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Directory of the agentcg binaries (set by xtask in the VM).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("AGENTCG_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"))
}

/// Fails loudly unless we are root on a cgroup v2 host with the controllers we need.
pub fn require_kernel() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "kernel tests must run as root (cargo xtask vm-test)"
    );
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .expect("cgroup v2 must be mounted at /sys/fs/cgroup (cargo xtask vm-test)");
    for c in ["cpu", "memory", "pids"] {
        assert!(
            controllers.contains(c),
            "cgroup v2 controller {c} missing: {controllers}"
        );
    }
}

/// An agentcgd running on a private root for one test.
#[derive(Debug)]
pub struct Daemon {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    extra: Vec<String>,
    child: Child,
}

/// Where the daemon owning `root` logs (its stderr).
fn log_path(root: &Path) -> PathBuf {
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("agentcg");
    PathBuf::from(format!("/tmp/{name}.log"))
}

fn spawn_daemon(root: &Path, socket: &Path, state_dir: &Path, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(root))
        .expect("daemon log");
    Command::new(bin_dir().join("agentcgd"))
        .arg("--root")
        .arg(root)
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .stderr(log)
        .spawn()
        .expect("starting agentcgd")
}

impl Daemon {
    /// Starts agentcgd with root `/sys/fs/cgroup/agentcg-<name>` and waits for its socket.
    pub fn start(name: &str) -> Daemon {
        Daemon::start_with(name, &[])
    }

    pub fn start_with(name: &str, extra: &[&str]) -> Daemon {
        Daemon::start_at(
            PathBuf::from(format!("/sys/fs/cgroup/agentcg-{name}")),
            name,
            extra,
        )
    }

    /// Starts agentcgd with its root at `root` (e.g. inside a parent cgroup with its own
    /// limits); `name` names its socket and state dir.
    pub fn start_at(root: PathBuf, name: &str, extra: &[&str]) -> Daemon {
        require_kernel();
        let socket = PathBuf::from(format!("/tmp/agentcg-{name}.sock"));
        let state_dir = PathBuf::from(format!("/tmp/agentcg-{name}-state"));
        let _ = std::fs::remove_dir_all(&state_dir);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn_daemon(&root, &socket, &state_dir, &extra);
        let d = Daemon {
            root,
            socket,
            state_dir,
            extra,
            child,
        };
        d.wait_ready();
        d
    }

    /// Stops the daemon (SIGTERM) and starts it again on the same root and state.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_daemon(&self.root, &self.socket, &self.state_dir, &self.extra);
        self.wait_ready();
    }

    /// Kills the daemon with SIGKILL (no cleanup of any kind) and starts it again at
    /// once on the same root and state.
    pub fn crash_and_restart(&mut self) {
        self.crash();
        self.start_again();
    }

    /// Kills the daemon with SIGKILL; [`Daemon::start_again`] brings it back.
    pub fn crash(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Starts the daemon again on the same root and state (after [`Daemon::crash`]).
    pub fn start_again(&mut self) {
        self.child = spawn_daemon(&self.root, &self.socket, &self.state_dir, &self.extra);
        self.wait_ready();
    }

    fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "agentcgd did not open {} within 60 s",
                self.socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// agentcgd's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A CLI command against this daemon.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(bin_dir().join("agentcg"));
        c.arg("--socket").arg(&self.socket);
        // A restart loads the BPF programs and the scheduler: 8-16 s under the VM's
        // instruction emulation, more on a loaded host, past the CLI's 10 s default.
        c.env("AGENTCG_RESTART_WAIT", "120");
        c
    }

    /// The daemon's log file (its stderr).
    pub fn log_path(&self) -> PathBuf {
        log_path(&self.root)
    }

    /// Runs the CLI with `args`, capturing output.
    pub fn agentcg(&self, args: &[&str]) -> Output {
        self.cli()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running agentcg")
    }

    /// `agentcg history --json --limit 10000 ARGS`: the rows of the durable history,
    /// newest first.
    pub fn history(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self.agentcg(&[&["history", "--json", "--limit", "10000"], args].concat());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "agentcg history: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&text).expect("history --json");
        v["calls"]
            .as_array()
            .unwrap_or_else(|| panic!("history --json has no calls list: {text}"))
            .clone()
    }

    /// `agentcg run --verbose --record /tmp/<name>.json ARGS` (ARGS: options, `--`, the
    /// command) with a fresh record file; returns the output and the record, after
    /// checking that the record is the one of the call the CLI declared.
    pub fn run_recorded(&self, name: &str, args: &[&str]) -> (Output, serde_json::Value) {
        let path = fresh_record(name);
        let out = self
            .cli()
            .args(["run", "--verbose", "--record"])
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running agentcg run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let rec = read_record(&path);
        assert_eq!(
            rec["call_id"].as_u64(),
            Some(verbose_call_id(&stderr)),
            "{} holds another call's record: {rec}\n{stderr}",
            path.display()
        );
        (out, rec)
    }

    /// A raw HTTP request to the API; returns (status, JSON body). Every answer of the
    /// API is JSON (docs/API.md): a body that is not panics, naming the request, the
    /// status and the body.
    pub fn http(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let mut s = UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.socket.display()));
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: write: {e}"));
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)
            .unwrap_or_else(|e| panic!("{method} {path}: read: {e}"));
        let (status, text) = parse_http_response(&resp).unwrap_or_else(|e| {
            panic!("{method} {path}: {e}: {:?}", String::from_utf8_lossy(&resp))
        });
        let json = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {path}: status {status}, body is not JSON ({e}): {text:?}")
        });
        (status, json)
    }

    /// `GET path`, asserting it answers 200; the JSON body.
    pub fn get_ok(&self, path: &str) -> serde_json::Value {
        let (code, v) = self.http("GET", path, "");
        assert_eq!(code, 200, "GET {path}: {v}");
        v
    }

    /// `GET /v1/status`, asserting it answers 200.
    pub fn status(&self) -> serde_json::Value {
        self.get_ok("/v1/status")
    }

    /// The calls/ cgroup of a session.
    pub fn calls_dir(&self, session: &str) -> PathBuf {
        self.root.join(format!("session-{session}")).join("calls")
    }

    /// Child cgroups (directories) under `dir`.
    pub fn child_cgroups(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        remove_cgroup_tree(&self.root, Duration::from_secs(5));
    }
}

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

/// Splits a raw HTTP/1.1 response into its status and its body, decoding a chunked
/// body; an error says what is malformed.
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("response is not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("response has no end of headers")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or("chunked body: no chunk size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunked body: bad chunk size {size:?}: {e}"))?;
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = after
            .get(..size)
            .ok_or_else(|| format!("chunked body: chunk of {size} bytes cut short"))?;
        out.push_str(chunk);
        rest = after[size..]
            .strip_prefix("\r\n")
            .ok_or("chunked body: no CRLF after a chunk")?;
    }
}

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

/// Polls `f` every 100 ms until it holds; fails after `timeout`, naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The memhog helper binary (built next to the agentcg binaries).
pub fn memhog() -> String {
    bin_dir().join("memhog").display().to_string()
}

/// `/tmp/<name>.json`, removed if a previous call left it: a record read from there
/// was written by the call that was given the path.
pub fn fresh_record(name: &str) -> PathBuf {
    let path = PathBuf::from(format!("/tmp/{name}.json"));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
    path
}

/// The call id `agentcg run --verbose` printed on stderr (`agentcg: call N in ...`).
pub fn verbose_call_id(stderr_text: &str) -> u64 {
    granted_call_id(stderr_text).unwrap_or_else(|| panic!("no call id in {stderr_text:?}"))
}

/// The call id `agentcg run --verbose` printed on stderr, if it was granted one.
pub fn granted_call_id(stderr_text: &str) -> Option<u64> {
    stderr_text
        .lines()
        .find_map(|l| l.strip_prefix("agentcg: call "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
}

/// Parses a record file written by `agentcg run --record`.
pub fn read_record(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("record {}: {e}", path.display()));
    serde_json::from_str(&text).expect("record JSON")
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
            // SAFETY: reaping any exited child of this test process, without blocking.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
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

#[cfg(test)]
mod tests {
    use super::parse_http_response;

    #[test]
    fn a_plain_body_is_returned_whole() {
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{\"a\": [1]}";
        assert_eq!(
            parse_http_response(raw),
            Ok((404, "{\"a\": [1]}".to_string()))
        );
    }

    #[test]
    fn a_chunked_body_is_decoded() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(raw),
            Ok((200, "{\"a\": 1}".to_string()))
        );
    }

    #[test]
    fn malformed_responses_are_errors() {
        for (raw, needle) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], "no end of headers"),
            (b"garbage\r\n\r\n{}", "bad status line"),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nab\r\n",
                "cut short",
            ),
        ] {
            let err = parse_http_response(raw).expect_err(needle);
            assert!(err.contains(needle), "{err}");
        }
    }
}
