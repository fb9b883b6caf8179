//! Kernel tests of `agentcg-bpf` in the 7.3.4 sched_ext VM (`cargo xtask vm-test`): the
//! BTF probe against the real kernel, and the telemetry programs counting and streaming
//! the execs, forks and exits of a real cgroup. Need root; ignored elsewhere.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agentcg_bpf::probe::MEMCG_KFUNCS;
use agentcg_bpf::{CallCounters, MAX_WATCHED, TeleEvent, TeleKind, Telemetry, probe_btf};
use agentcg_vmtests::TestCgroup;

fn load() -> Telemetry {
    let started = Instant::now();
    let t = Telemetry::load().unwrap_or_else(|e| panic!("Telemetry::load: {e}"));
    eprintln!(
        "Telemetry::load took {:?} (phases: {:?})",
        started.elapsed(),
        t.timings()
    );
    t
}

/// Polls until `want` events for `cgid` arrived or `within` passed. Events are in the
/// ring buffer before the process that caused them is reaped, so a short `within`
/// suffices to show that none came.
fn collect_events(t: &Telemetry, cgid: u64, want: usize, within: Duration) -> Vec<TeleEvent> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    while got.len() < want && Instant::now() < deadline {
        t.poll_events(Duration::from_millis(100), |e| {
            if e.cgid == cgid {
                got.push(e);
            }
        })
        .unwrap_or_else(|e| panic!("poll_events: {e}"));
    }
    got
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn probe_reports_the_7_3_kernel_features() {
    let btf = Path::new(agentcg_bpf::VMLINUX_BTF);
    assert!(
        btf.is_file(),
        "{} is missing: the probe needs the kernel's BTF (CONFIG_DEBUG_INFO_BTF=y, as in the \
         7.3 VM kernel of `cargo xtask provision vm`; run with `cargo xtask vm-test`)",
        btf.display()
    );
    let f = probe_btf(btf).unwrap_or_else(|e| panic!("probe_btf {}: {e}", btf.display()));
    eprintln!("{f:?}");
    assert!(f.sched_ext_ops, "{f:?}");
    assert!(f.cgroup_set_bandwidth, "{f:?}");
    assert_eq!(f.memcg_kfuncs, MEMCG_KFUNCS, "{f:?}");
    assert!(f.has_all_memcg_kfuncs());
    assert!(!f.memcg_bpf_ops, "{f:?}");
    assert!(!f.bpf_oom_ops, "{f:?}");
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn telemetry_counts_and_streams_a_watched_cgroup() {
    let t = load();
    let baseline = t.watched_len().expect("watched_len");
    let cg = TestCgroup::root("bpftest", "watched");
    let cgid = cg.id();
    assert_eq!(t.counters(cgid).expect("counters"), None);
    t.watch(cgid).expect("watch");
    assert_eq!(
        t.counters(cgid).expect("counters"),
        Some(CallCounters::default())
    );
    assert_eq!(t.watched_len().expect("watched_len"), baseline + 1);

    // Three fork+exec+exit of /bin/true; `exit 0` (a builtin) keeps the shell from
    // exec'ing the last command in place, so the shell's own exit is the fourth.
    let started = Instant::now();
    cg.run_sh("/bin/true; /bin/true; /bin/true; exit 0");
    eprintln!("sh with three /bin/true took {:?}", started.elapsed());

    let c = t.counters(cgid).expect("counters").expect("still watched");
    eprintln!("{c:?}");
    assert_eq!((c.execs, c.forks, c.exits), (3, 3, 4), "{c:?}");
    assert!(c.first_exec_ns > 0, "{c:?}");
    assert!(c.last_exit_ns >= c.first_exec_ns, "{c:?}");

    let events = collect_events(&t, cgid, 10, Duration::from_secs(10));
    let count = |k: TeleKind| events.iter().filter(|e| e.kind == k).count();
    assert_eq!(
        (
            count(TeleKind::Exec),
            count(TeleKind::Fork),
            count(TeleKind::Exit)
        ),
        (3, 3, 4),
        "{events:#?}"
    );
    let exec = events
        .iter()
        .find(|e| e.kind == TeleKind::Exec)
        .expect("an exec event");
    assert_eq!(exec.comm, "true", "{exec:?}");
    assert!(exec.pid > 0 && exec.ts_ns >= c.first_exec_ns, "{exec:?}");
    assert!(
        events.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
        "events out of order: {events:#?}"
    );
    // No tool: the shell moved itself in after its own exec, so nothing was born here
    // from outside, and a process whose parent is inside (each /bin/true) is never
    // taken for the tool, although it is the first to exec.
    assert_eq!((c.tool_pid, c.tool_exit()), (0, None), "{c:?}");
    assert!(tool_exits(&events).is_empty(), "{events:#?}");
    assert!(
        events
            .iter()
            .filter(|e| e.kind == TeleKind::Exit)
            .all(|e| e.status == Some(0)),
        "{events:#?}"
    );
    let stats = t.stats().expect("telemetry stats");
    assert_eq!(stats.drops, 0);
    assert!(stats.events >= events.len() as u64, "{stats:?}");
    assert_eq!(t.malformed_events(), 0);

    assert_eq!(t.unwatch(cgid).expect("unwatch"), Some(c));
    assert_eq!(t.unwatch(cgid).expect("unwatch again"), None);
    assert_eq!(t.watched_len().expect("watched_len"), baseline);

    // Unwatched: the BPF side never inserts, so nothing is counted or streamed.
    cg.run_sh("/bin/true; exit 0");
    assert_eq!(t.counters(cgid).expect("counters"), None);
    assert!(collect_events(&t, cgid, 1, Duration::from_millis(500)).is_empty());
}

/// The tool's end as the kernel telemetry sees it is what waitpid(2) tells its parent,
/// and it is known when the parent learns it, also while processes it left run on.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn the_tool_exit_is_what_waitpid_reports() {
    use agentcg_core::record::ExitInfo;
    use agentcg_core::spawn::{spawn_in_cgroup, wait};
    let t = load();
    for (name, script, want) in [
        ("exit7", "exit 7", 7 << 8),
        ("term", "kill -TERM $$", libc::SIGTERM as u32),
        ("leaves", "sleep 2 & exit 3", 3 << 8),
        ("execs", "exec /bin/sh -c 'exit 4'", 4 << 8),
    ] {
        let cg = TestCgroup::root("bpftest", name);
        t.watch(cg.id()).expect("watch");
        let argv = ["/bin/sh".into(), "-c".into(), script.into()];
        let pid = spawn_in_cgroup(&cg.path, &argv, None).expect("spawn");
        let exit = wait(pid).expect("wait");
        let c = t.counters(cg.id()).expect("counters").expect("watched");
        eprintln!("{name}: {exit:?} {c:?}");
        assert_eq!(c.tool_pid, pid as u32, "{name}: {c:?}");
        assert_eq!(c.tool_exit(), Some(want), "{name}: {c:?}");
        assert_eq!(ExitInfo::from_wait_status(want as i32), exit, "{name}");
        if name == "leaves" {
            // The background sleep still runs: the tool's end does not wait for it.
            assert_eq!(c.exits, 1, "{c:?}");
            fs::write(cg.path.join("cgroup.kill"), "1").expect("cgroup.kill");
        }
        t.unwatch(cg.id()).expect("unwatch");
    }
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn other_cgroups_are_not_counted() {
    let t = load();
    let watched = TestCgroup::root("bpftest", "quiet");
    let busy = TestCgroup::root("bpftest", "busy");
    t.watch(watched.id()).expect("watch");
    busy.run_sh("/bin/true; /bin/true; exit 0");
    assert_eq!(
        t.counters(watched.id()).expect("counters"),
        Some(CallCounters::default())
    );
    assert_eq!(t.counters(busy.id()).expect("counters"), None);
    assert!(collect_events(&t, busy.id(), 1, Duration::from_millis(500)).is_empty());
    assert_eq!(
        t.unwatch(watched.id()).expect("unwatch"),
        Some(CallCounters::default())
    );
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn a_full_watch_map_is_a_typed_error() {
    let t = load();
    let base = 1u64 << 62; // far from real cgroup ids
    let started = Instant::now();
    for i in 0..u64::from(MAX_WATCHED) {
        t.watch(base + i)
            .unwrap_or_else(|e| panic!("watch #{i}: {e}"));
    }
    eprintln!("{MAX_WATCHED} watch() calls took {:?}", started.elapsed());
    let err = t
        .watch(base + u64::from(MAX_WATCHED))
        .expect_err("map is full");
    assert!(
        matches!(err, agentcg_bpf::BpfError::MapFull { capacity, .. } if capacity == MAX_WATCHED),
        "{err}"
    );
    assert!(err.to_string().contains("unwatch"), "{err}");
    // Re-watching an existing id still works when full (it resets the counters).
    t.watch(base).expect("re-watch when full");
    assert_eq!(t.watched_len().expect("watched_len"), MAX_WATCHED as usize);
    assert_eq!(
        t.unwatch(base).expect("unwatch"),
        Some(CallCounters::default())
    );
    t.watch(base + u64::from(MAX_WATCHED))
        .expect("room after an unwatch");
}

/// A copy of this test executable that `nobody` can run: the executable cargo built sits
/// in the checkout, which may be below directories `nobody` cannot enter (a private home,
/// the host's share in the VM). The copy goes to a fresh 0755 directory in /tmp.
fn executable_by_nobody() -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let exe = std::env::current_exe().expect("current_exe");
    let dir = std::env::temp_dir().join(format!("agentcg-bpftest-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let copy = dir.join("bpftest");
    fs::copy(&exe, &copy)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", exe.display(), copy.display()));
    for (path, mode) in [(&dir, 0o755), (&copy, 0o755)] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
    }
    copy
}

/// Set in the child process of [`an_unprivileged_load_error_carries_the_libbpf_log`].
const UNPRIVILEGED_CHILD: &str = "AGENTCG_BPFTEST_UNPRIVILEGED_CHILD";

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn an_unprivileged_load_error_carries_the_libbpf_log() {
    use std::os::unix::process::CommandExt as _;

    if std::env::var_os(UNPRIVILEGED_CHILD).is_some() {
        // Running as `nobody`: the kernel refuses, libbpf explains; both must be in the error.
        let err = Telemetry::load().expect_err("unprivileged load must fail");
        let msg = err.to_string();
        println!("unprivileged load error: {msg}");
        assert!(matches!(err, agentcg_bpf::BpfError::Load { .. }), "{msg}");
        assert!(msg.contains("Operation not permitted"), "{msg}");
        assert!(msg.contains("--- libbpf log ---"), "{msg}");
        assert!(msg.contains("libbpf: "), "{msg}");
        return;
    }
    let exe = executable_by_nobody();
    let out = Command::new(&exe)
        .current_dir("/")
        .args([
            "--exact",
            "an_unprivileged_load_error_carries_the_libbpf_log",
            "--include-ignored",
            "--nocapture",
        ])
        .env(UNPRIVILEGED_CHILD, "1")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} as nobody ({e}): the test needs a directory every user can \
                 enter and execute from (a /tmp mounted without noexec)",
                exe.display()
            )
        });
    let _ = fs::remove_dir_all(exe.parent().expect("the copy's directory"));
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(out.status.success(), "child failed: {}\n{text}", out.status);
    assert!(text.contains("1 passed"), "{text}");
}

/// Starts `sh -c 'read go < FIFO; AFTER'` in `cg` as agentcg's client does (clone3 into
/// the cgroup) and returns once its exec (tracepoint included) is over and it blocks in
/// the fifo's open(2), unwatched so far: its pid and the fifo, to write `go` to.
fn spawn_blocked_tool(cg: &TestCgroup, after: &str) -> (libc::pid_t, PathBuf) {
    use agentcg_core::spawn::spawn_in_cgroup;
    let fifo = std::env::temp_dir().join(format!(
        "agentcg-bpftest-{}-{}-go",
        std::process::id(),
        cg.id()
    ));
    let _ = fs::remove_file(&fifo);
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    // `read` is a builtin: the shell blocks without an exec.
    let script = format!("read go < {}; {after}", fifo.display());
    let argv = ["/bin/sh".into(), "-c".into(), script.into()];
    let pid = spawn_in_cgroup(&cg.path, &argv, None).expect("spawn");
    // The new comm alone shows up before the exec's end; the open(2) comes after it.
    let syscall = format!("/proc/{pid}/syscall");
    let deadline = Instant::now() + Duration::from_secs(10);
    let in_open = || {
        let text = fs::read_to_string(&syscall).unwrap_or_default();
        let nr = text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<i64>().ok());
        nr == Some(libc::SYS_openat) || nr == Some(libc::SYS_open)
    };
    while !in_open() {
        assert!(
            Instant::now() < deadline,
            "the tool did not block opening the fifo"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim(),
        "sh"
    );
    (pid, fifo)
}

/// Lets the tool of [`spawn_blocked_tool`] go on and waits for its end.
fn release_blocked_tool(pid: libc::pid_t, fifo: &Path) -> agentcg_core::record::ExitInfo {
    fs::write(fifo, "go\n").expect("write the fifo");
    let exit = agentcg_core::spawn::wait(pid).expect("wait");
    let _ = fs::remove_file(fifo);
    exit
}

/// The (pid, wait status) of each exit event flagged as the call's tool's.
fn tool_exits(events: &[TeleEvent]) -> Vec<(u32, Option<u32>)> {
    events
        .iter()
        .filter(|e| e.tool)
        .map(|e| (e.pid, e.status))
        .collect()
}

/// The tool's birth and exec both went unseen (the cgroup is watched only after them,
/// as when the kernel skips a tracing program's run): the child the tool then runs,
/// the first process to exec that the programs see, is not taken for the tool, whose
/// parent is inside the cgroup. No tool is known; the client's report ends such a call.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn a_tool_whose_exec_went_unseen_makes_no_child_the_tool() {
    let t = load();
    let cg = TestCgroup::root("bpftest", "unseen");
    let (pid, fifo) = spawn_blocked_tool(&cg, "/bin/sh -c 'exit 0'; exit 3");
    t.watch(cg.id()).expect("watch");
    let exit = release_blocked_tool(pid, &fifo);
    assert_eq!(exit.code, Some(3), "{exit:?}");
    let c = t.counters(cg.id()).expect("counters").expect("watched");
    eprintln!("{c:?}");
    assert_eq!((c.execs, c.forks, c.exits), (1, 1, 2), "{c:?}");
    assert_eq!((c.tool_pid, c.tool_exit()), (0, None), "{c:?}");
    let events = collect_events(&t, cg.id(), 4, Duration::from_secs(10));
    assert!(tool_exits(&events).is_empty(), "{events:#?}");
    t.unwatch(cg.id()).expect("unwatch");
}

/// A tool that never execs (its program cannot be run) is known from its birth in the
/// cgroup: its exit, 126 as a shell gives it, is the tool's, flagged and kept.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn a_tool_is_known_from_its_birth_even_without_an_exec() {
    use agentcg_core::spawn::{SpawnError, spawn_in_cgroup};
    use std::os::unix::fs::PermissionsExt as _;
    let t = load();
    let cg = TestCgroup::root("bpftest", "noexec");
    t.watch(cg.id()).expect("watch");
    let garbage = std::env::temp_dir().join(format!("agentcg-bpftest-{}-elf", std::process::id()));
    fs::write(&garbage, [0x7fu8, b'E', b'L', b'F', 0, 0, 0, 0]).expect("write");
    fs::set_permissions(&garbage, fs::Permissions::from_mode(0o755)).expect("chmod");
    let err = spawn_in_cgroup(&cg.path, &[garbage.clone().into()], None)
        .expect_err("a garbage ELF cannot be exec'd");
    let _ = fs::remove_file(&garbage);
    assert!(matches!(err, SpawnError::Exec { .. }), "{err}");
    assert_eq!(err.exit_status(), 126, "{err}");
    let c = t.counters(cg.id()).expect("counters").expect("watched");
    eprintln!("{c:?}");
    assert_eq!((c.execs, c.forks, c.exits), (0, 0, 1), "{c:?}");
    assert_ne!(c.tool_pid, 0, "{c:?}");
    assert_eq!(c.tool_exit(), Some(126 << 8), "{c:?}");
    let events = collect_events(&t, cg.id(), 1, Duration::from_secs(10));
    assert_eq!(
        tool_exits(&events),
        [(c.tool_pid, Some(126 << 8))],
        "{events:#?}"
    );
    t.unwatch(cg.id()).expect("unwatch");
}

/// Re-adoption (a restarted agentcgd): the tool exec'd before its cgroup was watched.
/// Watched with `watch_tool`, its own exit is the one flagged and kept, not that of a
/// child it runs afterwards.
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn a_tool_watched_after_its_exec_keeps_its_own_exit() {
    use agentcg_bpf::ALREADY_STARTED_NS;
    let t = load();
    let cg = TestCgroup::root("bpftest", "adopted");
    let (pid, fifo) = spawn_blocked_tool(&cg, "/bin/sh -c 'exit 5'; exit 3");
    t.watch_tool(cg.id(), pid as u32).expect("watch_tool");
    let before = t.counters(cg.id()).expect("counters").expect("watched");
    assert_eq!(
        (before.tool_pid, before.first_exec_ns, before.tool_exit_ns),
        (pid as u32, ALREADY_STARTED_NS, 0),
        "{before:?}"
    );
    let exit = release_blocked_tool(pid, &fifo);
    assert_eq!(exit.code, Some(3), "{exit:?}");

    let c = t.counters(cg.id()).expect("counters").expect("watched");
    eprintln!("{c:?}");
    assert_eq!(c.tool_pid, pid as u32, "{c:?}");
    assert_eq!(
        t.tool_exit(cg.id()).expect("tool_exit"),
        Some(3 << 8),
        "{c:?}"
    );
    assert_eq!((c.execs, c.forks, c.exits), (1, 1, 2), "{c:?}");
    assert_eq!(c.first_exec_ns, ALREADY_STARTED_NS, "{c:?}");

    let events = collect_events(&t, cg.id(), 4, Duration::from_secs(10));
    let exec = events
        .iter()
        .find(|e| e.kind == TeleKind::Exec)
        .expect("the child's exec");
    assert_ne!(exec.pid, pid as u32, "{events:#?}");
    assert_eq!(
        tool_exits(&events),
        [(pid as u32, Some(3 << 8))],
        "{events:#?}"
    );
    t.unwatch(cg.id()).expect("unwatch");
}

/// The kernel's count of skipped runs accounts for every exec the programs did not
/// see: four shells exec `/bin/true` 150 times each in a watched cgroup, all at once on
/// two CPUs; each exec is either counted or among the runs skipped meanwhile (a tracing
/// program does not run while another instance of it is active on the same CPU).
#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn skipped_runs_account_for_every_unseen_exec() {
    const SHELLS: u64 = 4;
    const EXECS: u64 = 150;
    let t = load();
    let cg = TestCgroup::root("bpftest", "skipped");
    t.watch(cg.id()).expect("watch");
    let before = t.stats().expect("stats").missed_runs;
    let script = format!("i=0; while [ $i -lt {EXECS} ]; do /bin/true; i=$((i+1)); done");
    // run_sh asserts each shell's success.
    std::thread::scope(|scope| {
        for _ in 0..SHELLS {
            scope.spawn(|| cg.run_sh(&script));
        }
    });
    let missed = t.stats().expect("stats").missed_runs - before;
    let c = t.counters(cg.id()).expect("counters").expect("watched");
    let want = SHELLS * EXECS;
    eprintln!(
        "{want} execs: {} counted, {missed} runs of the telemetry programs skipped meanwhile",
        c.execs
    );
    assert!(c.execs <= want, "{c:?}");
    assert!(
        c.execs + missed >= want,
        "{} execs unseen but only {missed} skipped runs counted: {c:?}",
        want - c.execs
    );
    t.unwatch(cg.id()).expect("unwatch");
}
