//! Policy changes on a running agentcgd (docs/API.md#policy): while 4 clients run
//! calls, 50 changes through `policy apply`, `policy set`, SIGHUP and direct edits of
//! the file, 10 of them invalid. No call fails; every invalid change is refused with
//! FILE:LINE:COLUMN; after every change the policy in force is the last valid one.
//! Then bad input to every policy command: a clear error, exit 1 or 2, nothing changed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agentcg_core::policy::{DEFAULT_POLICY, Policy};
use agentcg_vmtests::{Daemon, wait_for};

const CLIENTS: usize = 4;
const CHANGES: usize = 50;

/// How a change reaches the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Apply,
    Set,
    Sighup,
    Edit,
}

/// The policy in force, as the daemon reports it.
fn in_force(d: &Daemon) -> Policy {
    let v = d.get_ok("/v1/policy");
    Policy::parse(v["text"].as_str().expect("policy text"), "daemon")
        .expect("valid policy in force")
}

fn last_reload_ms(d: &Daemon) -> u64 {
    d.status()["policy"]["last_reload"]["at_ms"]
        .as_u64()
        .unwrap_or(0)
}

fn text_with_pids(pids: &str) -> String {
    DEFAULT_POLICY.replace("pids = 4096", &format!("pids = {pids}"))
}

/// `FILE:LINE:COLUMN: session.pids:` somewhere in `text`.
fn located(text: &str, file: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(file)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|rest| rest.split_once(": session.pids:"))
            .is_some_and(|(pos, _)| {
                let mut it = pos.split(':');
                it.next().is_some_and(|n| n.parse::<u32>().is_ok())
                    && it.next().is_some_and(|n| n.parse::<u32>().is_ok())
            })
    })
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn sighup(d: &Daemon) {
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) }, 0);
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn policy_reload_under_load_keeps_calls_running_and_refuses_bad_ones() {
    let file = PathBuf::from("/tmp/agentcg-policy_reload.toml");
    write(&file, DEFAULT_POLICY);
    let file_s = file.display().to_string();
    let d = Daemon::start_with("policy_reload", &["--policy", &file_s]);
    let stop = AtomicBool::new(false);
    let (ran, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    // The clients borrow the daemon inside a scope, and a failed assertion stops them
    // on its way out: the scope joins them, then the daemon is dropped (killed, its
    // scheduler detached) instead of outliving the test.
    let refused = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..CLIENTS {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let out = d
                        .cli()
                        .args(["run", "--", "true"])
                        .stdin(Stdio::null())
                        .output()
                        .unwrap();
                    ran.fetch_add(1, Ordering::Relaxed);
                    if !out.status.success() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("call failed: {}", out_text(&out));
                    }
                    // Calls keep coming, and the emulated VM's 2 CPUs keep time for the changes.
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        make_changes(&d, &file, &file_s)
    });
    eprintln!(
        "{CHANGES} changes ({refused} refused), {} calls by {CLIENTS} clients, {} failed",
        ran.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(refused, 10);
    assert!(ran.load(Ordering::Relaxed) >= CLIENTS);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "calls failed during policy changes"
    );

    bad_input_changes_nothing(&d, &file_s);
}

/// Sets `stop` when dropped, also while a panic unwinds.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The [`CHANGES`] changes, each checked; returns how many were refused.
fn make_changes(d: &Daemon, file: &Path, file_s: &str) -> usize {
    let staged = PathBuf::from("/tmp/agentcg-policy_reload-staged.toml");
    let staged_s = staged.display().to_string();
    let mut expected: u32 = 4096;
    let mut refused = 0;
    for i in 0..CHANGES {
        let via = [Via::Apply, Via::Set, Via::Sighup, Via::Edit][i % 4];
        let invalid = i % 5 == 4;
        let pids = if invalid {
            format!("\"bad{i}\"")
        } else {
            (1000 + i).to_string()
        };
        let before = last_reload_ms(d);
        match via {
            Via::Apply => {
                write(&staged, &text_with_pids(&pids));
                let out = d.agentcg(&["policy", "apply", &staged_s]);
                if invalid {
                    assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
                    assert!(located(&out_text(&out), &staged_s), "{}", out_text(&out));
                } else {
                    assert!(out.status.success(), "{}", out_text(&out));
                }
            }
            Via::Set => {
                let out = d.agentcg(&[
                    "policy",
                    "set",
                    &format!("session.pids={}", pids.trim_matches('"')),
                ]);
                if invalid {
                    assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
                    assert!(located(&out_text(&out), file_s), "{}", out_text(&out));
                } else {
                    assert!(out.status.success(), "{}", out_text(&out));
                }
            }
            Via::Sighup | Via::Edit => {
                write(file, &text_with_pids(&pids));
                if via == Via::Sighup {
                    sighup(d);
                }
                if invalid {
                    wait_for("the refusal", Duration::from_secs(20), || {
                        last_reload_ms(d) > before
                    });
                    let p = &d.status()["policy"];
                    assert_eq!(p["last_reload"]["ok"], false, "{p}");
                    let errors = p["last_reload"]["errors"].to_string();
                    assert!(
                        errors.contains(file_s) && errors.contains(": session.pids:"),
                        "{p}"
                    );
                } else {
                    let want = 1000 + i as u32;
                    wait_for("the reload", Duration::from_secs(20), || {
                        in_force(d).session.pids == want
                    });
                }
            }
        }
        if invalid {
            refused += 1;
        } else {
            expected = 1000 + i as u32;
        }
        assert_eq!(in_force(d).session.pids, expected, "change {i} via {via:?}");
    }
    refused
}

/// Missing file, directory, binary garbage, 10 MB, unknown key, bad value, a version
/// not kept: each a clear error with exit 1 or 2, and the policy in force unchanged.
fn bad_input_changes_nothing(d: &Daemon, policy_file: &str) {
    let before = d.get_ok("/v1/policy")["hash"].clone();
    let garbage = "/tmp/agentcg-policy_reload-garbage.toml";
    std::fs::write(garbage, [0xffu8, 0xfe, 0, 1, 2, 0x80]).expect("garbage file");
    let big = "/tmp/agentcg-policy_reload-big.toml";
    write(Path::new(big), &"#".repeat(10 << 20));
    let cases: [(&[&str], i32, &str); 12] = [
        (&["policy", "apply", "/nonexistent.toml"], 2, "No such file"),
        (&["policy", "apply", "/tmp"], 2, "not a regular file"),
        (&["policy", "apply", garbage], 2, "not UTF-8"),
        (&["policy", "apply", big], 2, "more than a policy may be"),
        (&["policy", "check", big], 2, "more than a policy may be"),
        (&["policy", "diff", "/nonexistent.toml"], 2, "No such file"),
        (&["policy", "diff", garbage], 2, "not UTF-8"),
        (&["policy", "set", "memory.nope=1"], 2, "no such policy key"),
        (
            &["policy", "set", "memory.pressure_at"],
            2,
            "expected KEY=VALUE",
        ),
        (
            &["policy", "set", "session.pids=lots"],
            1,
            ": session.pids: expected integer",
        ),
        (
            &["policy", "rollback", "99"],
            2,
            "no policy version 99 back",
        ),
        (
            &["policy", "explain", "memory.presure_at"],
            2,
            "did you mean `memory.pressure_at`",
        ),
    ];
    for (args, code, needle) in cases {
        let out = d.agentcg(args);
        let text = out_text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text}");
    }
    let (status, answer) = put_huge(d);
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("\"body_too_large\""), "{answer}");
    assert_eq!(
        d.get_ok("/v1/policy")["hash"],
        before,
        "the policy in force changed"
    );
    assert!(Path::new(policy_file).exists());
}

/// A `PUT /v1/policy` with a 10 MB body. agentcgd answers 413 from its
/// `content-length` alone (`body_too_large`, docs/API.md) and closes, so the rest of the write may fail (EPIPE): the answer
/// is read regardless.
fn put_huge(d: &Daemon) -> (u16, String) {
    use std::io::{Read, Write};
    let body = format!("{{\"text\": \"{}\"}}", "#".repeat(10 << 20));
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
    let head = format!(
        "PUT /v1/policy HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|()| s.write_all(body.as_bytes()));
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    agentcg_vmtests::parse_http_response(&resp).expect("an HTTP answer")
}
