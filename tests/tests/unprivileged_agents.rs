//! Two unprivileged users on one agentcgd (docs/API.md, "Access" and "Limits"). uid A's
//! agent (a shell of uid A, attached by A itself as its session's runtime) runs a
//! normal and an OOM-killed tool call without root: the session's subtree is delegated
//! to A, so `clone3(CLONE_INTO_CGROUP)` from the runtime into a call's cgroup passes
//! the kernel's check, while the limit files stay root's and A cannot raise them.
//! uid B sees none of A's sessions or calls and can change none of them; what needs an
//! admin is refused to both. Crafted names, oversized and malformed requests and 200
//! idle connections get their 4xx, and the daemon keeps serving A throughout.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use agentcg_vmtests::{Daemon, bin_dir, fresh_record, memhog, parse_http_response, read_record};

const A: u32 = 2001;
const B: u32 = 2002;
/// The daemon's per-uid connection limit and request timeout in this test.
const PER_UID: usize = 32;
const TIMEOUT_S: u64 = 3;

/// `agentcg ARGS` run as `uid` (no supplementary groups: not an admin).
fn as_user(d: &Daemon, uid: u32, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string()])
        .arg("--clear-groups")
        .arg(bin_dir().join("agentcg"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv agentcg")
}

/// `agentcg ARGS` run as `uid` succeeds; its stdout as JSON.
#[track_caller]
fn json_as(d: &Daemon, uid: u32, args: &[&str]) -> serde_json::Value {
    let out = as_user(d, uid, args);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn refused(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "{}", text(out));
    let err = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "`{n}` not in {}", text(out));
    }
}

/// A shell of uid A standing in for its agent: it runs what it is given, as A.
struct Agent {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Agent {
    fn start(uid: u32) -> Agent {
        let mut child = Command::new("setpriv")
            .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string()])
            .args(["--clear-groups", "sh"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("agent shell");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut agent = Agent {
            child,
            stdin,
            stdout,
        };
        // The shell answers: setpriv has switched to `uid` and exec'd it.
        assert_eq!(agent.run("true"), 0);
        agent
    }

    /// Runs `script` in the agent; its exit status.
    fn run(&mut self, script: &str) -> i32 {
        writeln!(self.stdin, "{script} >&2; echo rc=$?").expect("to the agent");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("from the agent");
        line.trim()
            .strip_prefix("rc=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("agent said {line:?}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw request from root; the status and JSON body of the answer.
fn raw(d: &Daemon, req: &[u8]) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(&d.socket).expect("connect");
    // A refused body may be cut off: the answer still comes.
    let _ = s.write_all(req);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let (status, body) = parse_http_response(&resp)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&resp)));
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn unprivileged_agents_reach_only_their_own_sessions() {
    let d = Daemon::start_with(
        "unpriv",
        &[
            "--socket-mode",
            "666",
            "--request-timeout",
            &TIMEOUT_S.to_string(),
            "--connections-per-uid",
            &PER_UID.to_string(),
        ],
    );
    let sock = d.socket.display().to_string();
    let agentcg = bin_dir().join("agentcg").display().to_string();

    // A's agent attaches itself as the runtime of the session it creates.
    let mut agent = Agent::start(A);
    let pid = agent.child.id().to_string();
    let session = json_as(
        &d,
        A,
        &[
            "session",
            "create",
            "a",
            "--memory",
            "512M",
            "--runtime-pid",
            &pid,
            "--json",
        ],
    );
    assert_eq!(session["owner"], A);
    assert_eq!(
        session["runtime_pids"],
        serde_json::json!([pid.parse::<u32>().unwrap()])
    );
    let dir = d.root.join("session-a");
    for (file, owner) in [
        ("cgroup.procs", A),
        ("cgroup.subtree_control", A),
        ("runtime/cgroup.procs", A),
        ("calls/cgroup.procs", A),
        ("memory.max", 0),
        ("calls/memory.max", 0),
        ("pids.max", 0),
    ] {
        let meta = std::fs::metadata(dir.join(file)).expect(file);
        assert_eq!(meta.uid(), owner, "owner of session-a/{file}");
    }

    // A normal call and an OOM-killed one, started by the agent, without root.
    let ok = fresh_record("unpriv-ok");
    let rc = agent.run(&format!(
        "{agentcg} --socket {sock} run --session a --record {} -- true",
        ok.display()
    ));
    assert_eq!(rc, 0);
    let ok = read_record(&ok);
    assert_eq!(ok["outcome"], "ok", "{ok}");
    let oom = fresh_record("unpriv-oom");
    let rc = agent.run(&format!(
        "{agentcg} --socket {sock} run --session a --intent mem.max=64M --record {} -- {} 256",
        oom.display(),
        memhog()
    ));
    assert_eq!(rc, 137, "the tool was OOM-killed");
    let oom = read_record(&oom);
    assert_eq!(oom["outcome"], "oom_killed", "{oom}");
    let call_id = ok["call_id"].as_u64().unwrap().to_string();

    // A cannot raise its budget: the limit files are root's.
    for file in ["memory.max", "calls/memory.max", "pids.max"] {
        let path = dir.join(file);
        let before = std::fs::read_to_string(&path).unwrap();
        let rc = agent.run(&format!("echo max > {}", path.display()));
        assert_ne!(rc, 0, "A wrote {file}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "{file}");
    }
    // Outside its session, A's client is told why the kernel would refuse.
    refused(
        &as_user(&d, A, &["run", "--session", "a", "--", "true"]),
        &["outside session `a`", "runtime"],
    );

    // B: sees none of A's, changes none of A's.
    assert_eq!(
        json_as(&d, B, &["session", "list", "--json"]),
        serde_json::json!([]),
        "B lists no session"
    );
    let not_b = ["belongs to uid 2001", "uid 2002"];
    refused(&as_user(&d, B, &["session", "show", "a"]), &not_b);
    refused(
        &as_user(&d, B, &["session", "close", "a", "--force"]),
        &not_b,
    );
    refused(&as_user(&d, B, &["call", "show", &call_id]), &not_b);
    refused(
        &as_user(&d, B, &["run", "--session", "a", "--", "true"]),
        &not_b,
    );
    assert_eq!(
        json_as(&d, B, &["call", "list", "--json"]),
        serde_json::json!([]),
        "B lists no call"
    );
    // Nor may B adopt A's agent as the runtime of a session of its own.
    refused(
        &as_user(&d, B, &["session", "create", "b", "--runtime-pid", &pid]),
        &[&format!("process {pid} belongs to uid 2001")],
    );
    // Every user's history needs an admin (neither A nor B is one).
    for uid in [A, B] {
        refused(&as_user(&d, uid, &["history"]), &["needs an admin"]);
    }
    assert_eq!(
        d.get_ok("/v1/sessions/a")["plan"]["name"],
        "a",
        "session a is intact"
    );

    // Crafted names, oversized and malformed requests.
    let long = "x".repeat(10 * 1024);
    for name in ["%2e%2e", "..", "a%00b", "%2E%2E%2Fx", long.as_str()] {
        let (status, body) = raw(
            &d,
            format!("GET /v1/sessions/{name} HTTP/1.1\r\nconnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &"bad_session".into()),
            "{body}"
        );
    }
    let (status, body) = d.http("POST", "/v1/sessions", r#"{"name": "../x"}"#);
    assert_eq!(status, 400, "{body}");
    let (status, _) = d.http("GET", "/v1/sessions/../x", "");
    assert_eq!(status, 404, "`../x` is no session path");
    let big = format!(
        "GET /v1/status HTTP/1.1\r\nx-pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let bad: [(&[u8], u16, &str); 4] = [
        (big.as_bytes(), 431, "head_too_large"),
        (
            b"POST /v1/sessions HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 3000000\r\n\r\n",
            413,
            "body_too_large",
        ),
        (b"POST /v1/sessions HTTP/1.1\r\n\r\n", 411, "length_required"),
        (b"\x16\x03\x01\x02\x00 hello\r\n\r\n", 400, "malformed_request"),
    ];
    for (req, want, code) in bad {
        let (status, body) = raw(&d, req);
        assert_eq!(
            (status, &body["error"]["code"]),
            (want, &code.into()),
            "{body}"
        );
    }

    // 200 idle connections (of root, the test): PER_UID wait out the request timeout
    // (408), the rest are turned away at once (429); A is served all the while.
    let t = Instant::now();
    let mut conns: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&d.socket).expect("connect"))
        .collect();
    let out = as_user(&d, A, &["session", "show", "a", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        t.elapsed() < Duration::from_secs(TIMEOUT_S),
        "A waited {:?} behind the idle connections",
        t.elapsed()
    );
    let rc = agent.run(&format!(
        "{agentcg} --socket {sock} run --session a -- true"
    ));
    assert_eq!(
        rc, 0,
        "A's agent runs calls while the idle connections are open"
    );
    let mut counts = std::collections::BTreeMap::new();
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(TIMEOUT_S * 4)))
            .unwrap();
        let mut resp = Vec::new();
        let _ = c.read_to_end(&mut resp);
        let status = parse_http_response(&resp).map_or(0, |(s, _)| s);
        *counts.entry(status).or_insert(0usize) += 1;
    }
    println!(
        "200 idle connections answered in {:?}: {counts:?}",
        t.elapsed()
    );
    assert_eq!(
        counts,
        std::collections::BTreeMap::from([(408, PER_UID), (429, 200 - PER_UID)])
    );
    drop(conns);
    assert!(d.status()["version"].is_string(), "the daemon serves on");
}
