//! agentcgd as a systemd service, with systemd as PID 1, on the real kernel. The VM's
//! init is virtme-ng's, so the tests start Debian's systemd (≥ 254, for
//! `DelegateSubgroup=`) as PID 1 of fresh pid, mount and cgroup namespaces (as
//! systemd-nspawn does) on a cgroup of its own, with a unit path holding
//! systemd/agentcgd.{service,socket} from this tree plus a drop-in that points
//! ExecStart= at this build. The first test: `systemctl start agentcgd` reaches READY,
//! systemd starts the daemon in `<unit cgroup>/daemon` with the sessions beside it,
//! `agentcg run` goes through the socket unit into a session beside the daemon, and
//! `systemctl stop` ends every call with a record and a journal entry carrying CALL_ID,
//! SESSION and OUTCOME. The second: `systemctl kill --kill-whom=main -s KILL agentcgd`
//! while two calls run is followed by systemd's restart, which re-adopts both (their
//! records come when they end, call ids go on), and a SIGSTOPped daemon is killed and
//! restarted by the watchdog, its journal saying so.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use agentcg_vmtests::{
    bin_dir, parse_http_response, remove_cgroup_tree, require_kernel, verbose_call_id, wait_for,
};
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
/// (and a short wait between its SIGABRT, which a stopped daemon never handles, and
/// SIGKILL), a start timeout that suits emulation, and a socket group that exists.
const SERVICE_DROP_IN: &str = "[Service]\n\
    ExecStart=\n\
    ExecStart=/run/agentcg-bin/agentcgd --stop-ends-calls --metrics-listen none\n\
    WatchdogSec=10s\n\
    TimeoutAbortSec=2s\n\
    RestartSec=1\n\
    TimeoutStartSec=300\n";
/// How long a restart may take: RestartSec=, then the daemon's start under emulation
/// (the BPF verifier) up to READY.
const RESTART: Duration = Duration::from_secs(180);
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
    && exec /lib/systemd/systemd --system --unit=agentcg-test.target \
    --log-target=journal-or-kmsg";

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
        // From here on a failure drops `sd`, which takes everything down.
        let mut sd = Systemd { unshare, pid: 0 };
        wait_for("unshare's child", Duration::from_secs(60), || {
            sd.pid = children(sd.unshare.id()).into_iter().next().unwrap_or(0);
            sd.pid != 0
        });
        // The child's cgroup namespace is rooted at CGROUP now; unshare itself, waiting
        // for it, leaves CGROUP so that CGROUP holds no process and can give its
        // children the controllers (the loop in INNER waits for that).
        std::fs::write("/sys/fs/cgroup/cgroup.procs", sd.unshare.id().to_string())
            .expect("move unshare out of the test's cgroup");
        wait_for("systemd's private socket", Duration::from_secs(180), || {
            sd.path("/run/systemd/private").exists()
        });
        let bin = sd.path("/run/agentcg-bin");
        std::fs::create_dir_all(&bin).expect("mkdir /run/agentcg-bin");
        for exe in ["agentcgd", "agentcg", "memhog"] {
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

    /// Starts `agentcg run ARGS` in the background; returns the client.
    fn start_call(&self, args: &[&str]) -> Child {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "-p", "--"])
            .args(["/run/agentcg-bin/agentcg", "--socket", SOCKET, "run"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agentcg run")
    }

    /// Starts a call and waits until agentcgd lists it as running; returns the client
    /// and the call's id.
    fn start_listed_call(&self, args: &[&str]) -> (Child, u64) {
        let before = self.running();
        let client = self.start_call(args);
        let mut new = Vec::new();
        wait_for("the call to run", Duration::from_secs(60), || {
            new = self.running();
            new.retain(|id| !before.contains(id));
            !new.is_empty()
        });
        (client, new[0])
    }

    fn restarts(&self) -> u32 {
        let n = self.show("NRestarts");
        n.parse().unwrap_or_else(|e| panic!("NRestarts {n:?}: {e}"))
    }

    /// Waits for systemd's next restart of agentcgd (past `restarts`) and the new
    /// daemon's READY=1 (active, `serving` in STATUS=, a MainPID other than `old`);
    /// returns the new MainPID.
    fn wait_restarted(&self, restarts: u32, old: &str) -> String {
        self.wait("systemd's restart of agentcgd", RESTART, || {
            self.restarts() > restarts
        });
        self.wait("agentcgd READY again", RESTART, || {
            let state = self.show("ActiveState");
            assert_ne!(state, "failed", "agentcgd failed\n{}", self.journal());
            state == "active" && self.show("StatusText").starts_with("serving")
        });
        let main = self.show("MainPID");
        assert_ne!(main, old, "a new daemon\n{}", self.journal());
        main
    }

    /// Polls `f` every 100 ms until it holds; fails after `timeout` with the journal.
    fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}\n{}",
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts that `main` is the only process of `<unit cgroup>/daemon` and that the
    /// unit's cgroup itself holds none.
    fn assert_daemon_in_leaf(&self, main: &str) {
        // Read inside the namespace: cgroup.procs lists pids as its reader's pid
        // namespace numbers them, and MainPID is systemd's number.
        let leaf = self.ok(&["cat", &format!("{UNIT_CGROUP}/daemon/cgroup.procs")]);
        assert_eq!(
            leaf.split_whitespace().collect::<Vec<_>>(),
            [main],
            "the daemon's leaf\n{}",
            self.journal()
        );
        assert_eq!(read(self, &format!("{UNIT_CGROUP}/cgroup.procs")), "");
    }

    /// `agentcg run --verbose -- true`: succeeds; its call id.
    fn run_true(&self) -> u64 {
        let out = self.agentcg(&["run", "--verbose", "--", "true"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "agentcg run: {stderr}\n{}",
            self.journal()
        );
        verbose_call_id(&stderr)
    }

    /// The history's record of `call`, once written (the history writer commits it
    /// off the request path, after the client has its answer).
    fn record(&self, call: u64) -> serde_json::Value {
        let mut record = serde_json::Value::Null;
        self.wait(
            &format!("call {call}'s record"),
            Duration::from_secs(30),
            || {
                let shown = self.agentcg(&["call", "show", &call.to_string()]);
                record = serde_json::from_slice(&shown.stdout).unwrap_or_else(|e| {
                    panic!(
                        "agentcg call show {call}: {e}: {}\n{}",
                        String::from_utf8_lossy(&shown.stderr),
                        self.journal()
                    )
                });
                record.get("outcome").is_some()
            },
        );
        record
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
        // PID 1 of a pid namespace takes everything in it along (systemd, agentcgd, the
        // agents and tools in its sessions, the clients nsenter put there).
        let pid = match self.pid {
            0 => children(self.unshare.id()).into_iter().next().unwrap_or(0),
            pid => pid,
        };
        if pid != 0 {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // KillMode=process leaves the sessions' cgroups behind: the next boot starts on
        // an empty tree.
        remove_cgroup_tree(Path::new(CGROUP), Duration::from_secs(10));
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

/// A tool that exits 0 once `go` (a file in the namespace) exists.
fn until(go: &str) -> String {
    format!("until [ -e {go} ]; do sleep 0.2; done")
}

/// `agentcg run` arguments: a call that ends once `go` exists, its record to `record`.
fn waiting_call(go: &str, record: &str) -> [String; 6] {
    ["--record", record, "--", "sh", "-c", &until(go)].map(String::from)
}

/// The call's cgroup, inside the namespace.
fn call_cgroup(call: u64) -> String {
    format!("{UNIT_CGROUP}/session-default/calls/call-{call:06}")
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
    // DelegateSubgroup=daemon: systemd started the daemon in its leaf; the unit's
    // cgroup holds no process.
    sd.assert_daemon_in_leaf(&sd.show("MainPID"));
    let status = sd.get("/v1/status");
    assert_eq!(status["root"], UNIT_CGROUP, "--root auto: {status}");

    // A call through the socket unit runs in a session beside the daemon.
    let (mut client, call) = sd.start_listed_call(&["--", "sleep", "600"]);
    let call_cg = format!("{UNIT_CGROUP}/session-default/calls/call-{call:06}");
    assert!(
        !sd.ok(&["cat", &format!("{call_cg}/cgroup.procs")])
            .trim()
            .is_empty(),
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
    let record = sd.record(call);
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

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn systemd_service_restarted_after_sigkill_and_by_the_watchdog_readopting_calls() {
    const HOG_MIB: u64 = 48;
    let sd = Systemd::boot();
    sd.ok(&["systemctl", "start", "agentcgd"]);
    let first = sd.show("MainPID");
    assert_eq!(sd.restarts(), 0);

    // Two calls, each ending once its file exists: one sleeps, one holds 48 MiB.
    // `--record`: the clients report the ends. (Without it a clean exit is left to the
    // kernel telemetry, which knows an adopted tool by the pid the daemon read from
    // cgroup.procs; in this nested pid namespace that is not the init namespace's pid
    // the BPF programs see, so the exit would go unseen until the sweep.)
    let args = waiting_call("/run/go-1", "/run/rec-sleeper.json");
    let (mut sleeper, sleeping) = sd.start_listed_call(&args.each_ref().map(String::as_str));
    let hog_script = format!(
        "/run/agentcg-bin/memhog {HOG_MIB} 600000 16 & {}; kill $!; wait $!; exit 0",
        until("/run/go-1")
    );
    let hog_args = [
        "--record",
        "/run/rec-hog.json",
        "--",
        "sh",
        "-c",
        &hog_script,
    ];
    let (mut hog, hogging) = sd.start_listed_call(&hog_args);
    let hog_current = format!("{}/memory.current", call_cgroup(hogging));
    wait_for("the hog's memory", Duration::from_secs(60), || {
        read(&sd, &hog_current).trim().parse::<u64>().unwrap_or(0) >= HOG_MIB << 20
    });

    // A crash: KillMode=process kills the daemon alone; the sessions and the calls
    // stay in the unit's cgroup, and systemd starts the new daemon in daemon/ beside
    // them (DelegateSubgroup=daemon: the unit's cgroup, which hands controllers to its
    // children, cannot take a process itself).
    let t = Instant::now();
    // (Only the main process: `systemctl kill` signals every process of the unit by
    // default, the sessions' agents and tools included.)
    sd.ok(&[
        "systemctl",
        "kill",
        "--kill-whom=main",
        "-s",
        "KILL",
        "agentcgd",
    ]);
    let main = sd.wait_restarted(0, &first);
    println!("SIGKILL: agentcgd READY again after {:?}", t.elapsed());
    assert_eq!(sd.restarts(), 1);
    sd.assert_daemon_in_leaf(&main);
    let mut running = sd.running();
    running.sort_unstable();
    assert_eq!(
        running,
        [sleeping, hogging],
        "both calls re-adopted\n{}",
        sd.journal()
    );
    for call in [sleeping, hogging] {
        let procs = sd.ok(&["cat", &format!("{}/cgroup.procs", call_cgroup(call))]);
        assert!(!procs.trim().is_empty(), "call {call}'s tool runs on");
    }
    // Ids go on above every id handed out before the crash.
    let after_kill = sd.run_true();
    assert!(after_kill > hogging, "call id {after_kill} after {hogging}");

    // The re-adopted calls end as they would have: records with their outcomes.
    std::fs::write(sd.path("/run/go-1"), "").expect("create go-1");
    for (client, call) in [(&mut sleeper, sleeping), (&mut hog, hogging)] {
        wait_for("the client's end", Duration::from_secs(60), || {
            client.try_wait().ok().flatten().is_some()
        });
        let status = client.wait().expect("wait for the client");
        assert!(status.success(), "call {call}: {status}\n{}", sd.journal());
        let record = sd.record(call);
        assert_eq!(record["outcome"], "ok", "{record}");
    }
    let peak = sd.record(hogging)["accounting"]["memory_peak"].as_u64();
    assert!(peak >= Some(HOG_MIB << 20), "the hog's peak: {peak:?}");

    // A hung daemon misses its watchdog pings: systemd sends SIGABRT (which a stopped
    // process leaves pending), SIGKILL after TimeoutAbortSec=, and restarts it. A
    // call started before goes on and is re-adopted.
    let args = waiting_call("/run/go-2", "/run/rec-waiter.json");
    let (mut waiter, waiting) = sd.start_listed_call(&args.each_ref().map(String::as_str));
    let t = Instant::now();
    sd.ok(&["kill", "-STOP", &main]);
    let after_watchdog = sd.wait_restarted(1, &main);
    println!("SIGSTOP: agentcgd READY again after {:?}", t.elapsed());
    assert_eq!(sd.restarts(), 2);
    let journal = sd.ok(&["journalctl", "--no-pager", "-u", "agentcgd"]);
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    sd.assert_daemon_in_leaf(&after_watchdog);
    assert_eq!(sd.running(), [waiting], "re-adopted\n{}", sd.journal());
    let next = sd.run_true();
    assert!(next > waiting, "call id {next} after {waiting}");
    std::fs::write(sd.path("/run/go-2"), "").expect("create go-2");
    wait_for("the waiting call's end", Duration::from_secs(60), || {
        waiter.try_wait().ok().flatten().is_some()
    });
    assert_eq!(sd.record(waiting)["outcome"], "ok");
}
