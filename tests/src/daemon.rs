//! An agentcgd started for one test on a private cgroup root, socket and state dir: the
//! CLI run against it, raw HTTP spoken to its socket, stopped and restarted at will.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cgroup::remove_cgroup_tree;
use crate::http::parse_http_response;
use crate::{bin_dir, fresh_record, read_record, require_kernel, verbose_call_id};

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
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Starts the daemon again on the same root and state (after [`Daemon::crash`]).
    pub fn start_again(&mut self) {
        self.child = spawn_daemon(&self.root, &self.socket, &self.state_dir, &self.extra);
        self.wait_ready();
    }

    fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        let _ = self.child.wait();
    }

    /// Sends `sig` to the daemon (our child: its pid is ours until we reap it).
    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if let Err(e) = kill(pid, sig) {
            eprintln!("warning: {sig} to agentcgd {pid}: {e}");
        }
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
