//! agentcgd as a systemd service, with systemd as PID 1, on the real kernel. The VM's
//! init is virtme-ng's, so the test starts Debian's systemd as PID 1 of fresh pid, mount
//! and cgroup namespaces (as systemd-nspawn does) on a cgroup of its own, with a unit
//! path holding systemd/agentcgd.{service,socket} from this tree plus a drop-in that
//! points ExecStart= at this build. Then: `systemctl start agentcgd` reaches READY, the
//! daemon lives in `<unit cgroup>/daemon` with the sessions beside it, `agentcg run`
//! goes through the socket unit into a session beside the daemon, and `systemctl stop`
//! ends every call with a record and a journal entry carrying CALL_ID, SESSION and
//! OUTCOME. (Not tested yet: a restart after `systemctl kill -s KILL` and the
//! watchdog's restart of a hung daemon.)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use agentcg_vmtests::{bin_dir, parse_http_response, require_kernel, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The cgroup the test's systemd manages (its cgroup namespace's root).
const CGROUP: &str = "/sys/fs/cgroup/agentcg-systemd";
const UNITS: &str = "/tmp/agentcg-systemd-units";
const SOCKET: &str = "/run/agentcg/agentcg.sock";
/// The unit's cgroup as systemd and the daemon see it (inside the namespace).
const UNIT_CGROUP: &str = "/sys/fs/cgroup/system.slice/agentcgd.service";

/// What the test adds to the repository's units: the binary of this build (copied
/// to the namespace's /run, since PrivateTmp= hides the VM's /tmp), a short watchdog
/// and a start timeout that suits emulation, and a socket group that exists.
const SERVICE_DROP_IN: &str = "[Service]\n\
    ExecStart=\n\
    ExecStart=/run/agentcg-bin/agentcgd --stop-ends-calls --metrics-listen none\n\
    WatchdogSec=10s\n\
    TimeoutStartSec=300\n";
const SOCKET_DROP_IN: &str = "[Socket]\nSocketGroup=root\n";
const TARGET: &str = "[Unit]\nDescription=agentcg systemd test\nDefaultDependencies=no\n\
    Wants=systemd-journald.socket systemd-journald.service\n";

/// Runs in the new namespaces: a cgroup2 mount showing the namespace's root; the shell
/// moves into init.scope and, once the root is empty (see `Systemd::boot`), gives the
/// root's children the controllers (systemd in a container leaves that to the
/// container manager); tmpfs /run and
/// /var/lib (the VM's root is read-only) and a private tmpfs /tmp (systemd-tmpfiles
/// empties /tmp at boot, and the VM's /tmp holds the other tests' binaries and, in CI,
/// the checkout), the units bound into /run first; then systemd.
const INNER: &str = "umount -l /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup \
    && mkdir /sys/fs/cgroup/init.scope && echo $$ > /sys/fs/cgroup/init.scope/cgroup.procs \
    && until echo \"+cpu +memory +pids\" 2>/dev/null > /sys/fs/cgroup/cgroup.subtree_control; \
       do sleep 0.2; done \
    && mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib \
    && mkdir /run/agentcg-units && mount --bind /tmp/agentcg-systemd-units /run/agentcg-units \
    && mount -t tmpfs tmpfs /tmp \
    && export container=agentcg-test SYSTEMD_UNIT_PATH=/run/agentcg-units: \
    && exec /lib/systemd/systemd --system --unit=agentcg-test.target --log-target=kmsg";

/// Debian's systemd as PID 1 of its own namespaces.
struct Systemd {
    unshare: Child,
    /// systemd's pid in the VM's pid namespace.
    pid: u32,
}

impl Systemd {
    fn boot() -> Systemd {
        require_kernel();
        write_units();
        std::fs::create_dir_all(CGROUP).expect("mkdir the test's cgroup");
        let script = format!(
            "echo 0 > {CGROUP}/cgroup.procs && exec unshare --pid --fork --mount --cgroup \
             --mount-proc --propagation private sh -c '{INNER}'"
        );
        let unshare = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("starting unshare");
        let mut pid = 0;
        wait_for("unshare's child", Duration::from_secs(60), || {
            pid = children(unshare.id()).into_iter().next().unwrap_or(0);
            pid != 0
        });
        // The child's cgroup namespace is rooted at CGROUP now; unshare itself, waiting
        // for it, leaves CGROUP so that CGROUP holds no process and can give its
        // children the controllers (the loop in INNER waits for that).
        std::fs::write("/sys/fs/cgroup/cgroup.procs", unshare.id().to_string())
            .expect("move unshare out of the test's cgroup");
        wait_for("systemd's private socket", Duration::from_secs(180), || {
            Path::new(&format!("/proc/{pid}/root/run/systemd/private")).exists()
        });
        let sd = Systemd { unshare, pid };
        let bin = sd.path("/run/agentcg-bin");
        std::fs::create_dir_all(&bin).expect("mkdir /run/agentcg-bin");
        for exe in ["agentcgd", "agentcg"] {
            std::fs::copy(bin_dir().join(exe), bin.join(exe)).expect("copy binaries");
        }
        sd
    }

    /// A path inside systemd's mount namespace.
    fn path(&self, inner: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inner}", self.pid))
    }

    /// Runs `argv` inside systemd's mount and pid namespaces.
    fn run(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "-p", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    fn ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "{argv:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn show(&self, property: &str) -> String {
        self.ok(&["systemctl", "show", "-p", property, "--value", "agentcgd"])
            .trim()
            .to_string()
    }

    fn journal(&self) -> String {
        let out = self.run(&["journalctl", "--no-pager", "-u", "agentcgd"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The CLI against the socket unit's socket.
    fn agentcg(&self, args: &[&str]) -> Output {
        let argv = [&["/run/agentcg-bin/agentcg", "--socket", SOCKET], args].concat();
        self.run(&argv)
    }

    /// Starts `agentcg run -- sleep 600` in the background; returns the client.
    fn start_call(&self) -> Child {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "-p", "--"])
            .args(["/run/agentcg-bin/agentcg", "--socket", SOCKET, "run", "--"])
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agentcg run")
    }

    /// `GET path` on the socket unit's socket, reached through /proc/PID/root; the
    /// JSON body.
    fn get(&self, path: &str) -> serde_json::Value {
        let socket = self.path(SOCKET);
        let mut s = UnixStream::connect(&socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).expect("write request");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("read answer");
        let (code, body) = parse_http_response(&resp).expect("an HTTP answer");
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The ids of the calls agentcgd lists as running.
    fn running(&self) -> Vec<u64> {
        let v = self.get("/v1/running");
        let list = v.as_array().cloned().unwrap_or_default();
        list.iter().filter_map(|c| c["call_id"].as_u64()).collect()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // PID 1 of a pid namespace takes everything in it along.
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        let _ = self.unshare.wait();
    }
}

fn write_units() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let units = Path::new(UNITS);
    for dir in ["agentcgd.service.d", "agentcgd.socket.d"] {
        std::fs::create_dir_all(units.join(dir)).expect("mkdir units");
    }
    for unit in ["agentcgd.service", "agentcgd.socket"] {
        std::fs::copy(repo.join(unit), units.join(unit)).expect("copy unit");
    }
    for (file, text) in [
        ("agentcgd.service.d/test.conf", SERVICE_DROP_IN),
        ("agentcgd.socket.d/test.conf", SOCKET_DROP_IN),
        ("agentcg-test.target", TARGET),
    ] {
        std::fs::write(units.join(file), text).expect("write unit");
    }
}

/// The children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn read(sd: &Systemd, inner: &str) -> String {
    std::fs::read_to_string(sd.path(inner))
        .unwrap_or_else(|e| panic!("{inner}: {e}\n{}", sd.journal()))
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn systemd_service_ready_delegated_and_stopped_with_records() {
    let sd = Systemd::boot();
    assert_eq!(read(&sd, "/proc/1/comm").trim(), "systemd", "PID 1");

    // READY=1: `systemctl start` of a Type=notify unit returns once it is sent.
    sd.ok(&["systemctl", "start", "agentcgd"]);
    assert_eq!(sd.show("ActiveState"), "active");
    assert!(sd.show("StatusText").starts_with("serving"), "STATUS=");
    let main = sd.show("MainPID");
    // The daemon moved itself into its leaf; the unit's cgroup holds no process.
    // Read inside the namespace: cgroup.procs lists pids as its reader's pid namespace
    // numbers them, and MainPID is systemd's number.
    let leaf = sd.ok(&["cat", &format!("{UNIT_CGROUP}/daemon/cgroup.procs")]);
    assert_eq!(leaf.split_whitespace().collect::<Vec<_>>(), [main.as_str()]);
    assert_eq!(read(&sd, &format!("{UNIT_CGROUP}/cgroup.procs")), "");
    let status = sd.get("/v1/status");
    assert_eq!(status["root"], UNIT_CGROUP, "--root auto: {status}");

    // A call through the socket unit runs in a session beside the daemon.
    let mut client = sd.start_call();
    let mut ids = Vec::new();
    wait_for("the call to run", Duration::from_secs(60), || {
        ids = sd.running();
        !ids.is_empty()
    });
    let call = ids[0];
    let call_cg = format!("{UNIT_CGROUP}/session-default/calls/call-{call:06}");
    assert!(
        !sd.ok(&["cat", &format!("{call_cg}/cgroup.procs")]).trim().is_empty(),
        "the call's tool runs in {call_cg}"
    );

    // `systemctl stop` ends every running call, with a record.
    sd.ok(&["systemctl", "stop", "agentcgd"]);
    wait_for(
        "the client to see its call end",
        Duration::from_secs(60),
        || client.try_wait().ok().flatten().is_some(),
    );
    // The next request starts the daemon again through the socket unit.
    let shown = sd.agentcg(&["call", "show", &call.to_string()]);
    let record: serde_json::Value = serde_json::from_slice(&shown.stdout)
        .unwrap_or_else(|e| panic!("agentcg call show: {e}\n{}", sd.journal()));
    assert_eq!(record["outcome"], "killed", "{record}");
    // The call's end went to the journal with its fields.
    let journal = sd.ok(&[
        "journalctl",
        "--no-pager",
        "-o",
        "verbose",
        &format!("CALL_ID={call}"),
        "OUTCOME=killed",
    ]);
    assert!(journal.contains("SESSION=default"), "{journal}");
    // systemd's boot cleaned only its own /tmp: the VM's, which holds the binaries
    // every other kernel test runs, is untouched.
    assert!(
        bin_dir().join("agentcgd").is_file(),
        "{} lost its agentcgd: the VM's /tmp was cleaned",
        bin_dir().display()
    );
}
