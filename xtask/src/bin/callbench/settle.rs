//! Waiting until an `agentcg run` call is over for the daemon too: its record can be read
//! back through the API (`GET /v1/calls/{id}`, docs/API.md) and its cgroup directory is
//! gone. Whatever agentcgd defers past the client's exit (accounting, history fsync,
//! rmdir, possibly on background threads) is then done.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Pause between two looks; what it adds to a back-to-back call counts against agentcg.
const POLL: Duration = Duration::from_micros(200);
/// A call not settled after this long is a failed call.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The call that `agentcg run --verbose` announced on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub call_id: u64,
    pub cgroup: PathBuf,
}

/// Finds `agentcg: call ID in CGROUP` (printed by `--verbose`) in the client's stderr.
pub fn parse_grant(stderr: &str) -> Option<Grant> {
    stderr.lines().find_map(|line| {
        let rest = line.strip_prefix("agentcg: call ")?;
        let (id, cgroup) = rest.split_once(" in ")?;
        Some(Grant {
            call_id: id.trim().parse().ok()?,
            cgroup: PathBuf::from(cgroup.trim()),
        })
    })
}

/// What `GET /v1/calls/{id}` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// The record (it has an outcome).
    Recorded,
    /// `{"call_id": N, "running": true}`.
    Running,
}

/// Reads an HTTP/1.1 response: status 200 with a record or a running marker.
pub fn parse_call_reply(response: &str) -> Result<CallState, String> {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("GET answered {status}: {body}"));
    }
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("reply is not JSON ({e}): {body}"))?;
    if value["running"] == true {
        Ok(CallState::Running)
    } else if value["outcome"].is_string() {
        Ok(CallState::Recorded)
    } else {
        Err(format!("reply is neither a record nor running: {body}"))
    }
}

/// One `GET /v1/calls/{id}` over the daemon's unix socket.
fn get_call(socket: &Path, call_id: u64) -> Result<CallState, String> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let request =
        format!("GET /v1/calls/{call_id} HTTP/1.1\r\nHost: agentcg\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write to {}: {e}", socket.display()))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read from {}: {e}", socket.display()))?;
    parse_call_reply(&response)
}

/// Waits until the call's cgroup directory is gone and the API returns its record.
pub fn wait_settled(socket: &Path, grant: &Grant) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if !grant.cgroup.exists() && get_call(socket, grant.call_id)? == CallState::Recorded {
            return Ok(());
        }
        if start.elapsed() > SETTLE_TIMEOUT {
            return Err(format!(
                "call {} not settled after {SETTLE_TIMEOUT:?} (cgroup {} {})",
                grant.call_id,
                grant.cgroup.display(),
                if grant.cgroup.exists() {
                    "still there"
                } else {
                    "gone"
                }
            ));
        }
        sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Deferred work is waited for: the cgroup directory disappears late, and the API
    /// says "running" twice before it has the record.
    #[test]
    fn waits_for_the_cgroup_to_go_and_the_record_to_come() {
        let dir = std::env::temp_dir().join(format!("callbench-settle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cgroup = dir.join("call-000001");
        std::fs::create_dir_all(&cgroup).expect("cgroup dir");
        let socket = dir.join("sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let server = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.expect("accept");
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request).expect("request");
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let body = if n < 2 {
                    r#"{"call_id":1,"running":true}"#
                } else {
                    r#"{"call_id":1,"outcome":"ok"}"#
                };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(reply.as_bytes()).expect("reply");
                if n >= 2 {
                    return;
                }
            }
        });
        let remove = cgroup.clone();
        let remover = std::thread::spawn(move || {
            sleep(Duration::from_millis(50));
            std::fs::remove_dir(&remove).expect("rmdir");
        });
        let start = Instant::now();
        let grant = Grant {
            call_id: 1,
            cgroup: cgroup.clone(),
        };
        wait_settled(&socket, &grant).expect("settles");
        assert!(
            start.elapsed() >= Duration::from_millis(50),
            "waited for the rmdir"
        );
        assert!(!cgroup.exists());
        assert_eq!(
            asked.load(Ordering::SeqCst),
            3,
            "asked until the record came"
        );
        remover.join().expect("remover");
        server.join().expect("server");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn the_verbose_line_names_the_call() {
        let err = "agentcg: mem clamped\nagentcg: call 17 in /sys/fs/cgroup/a/calls/call-000017\n";
        assert_eq!(
            parse_grant(err),
            Some(Grant {
                call_id: 17,
                cgroup: PathBuf::from("/sys/fs/cgroup/a/calls/call-000017")
            })
        );
        assert_eq!(parse_grant("agentcg: call x in /y\n"), None);
        assert_eq!(parse_grant(""), None);
    }

    #[test]
    fn replies_are_records_running_or_errors() {
        let reply = |status: &str, body: &str| format!("HTTP/1.1 {status}\r\nx: y\r\n\r\n{body}");
        assert_eq!(
            parse_call_reply(&reply("200 OK", r#"{"call_id":3,"outcome":"ok"}"#)),
            Ok(CallState::Recorded)
        );
        assert_eq!(
            parse_call_reply(&reply("200 OK", r#"{"call_id":3,"running":true}"#)),
            Ok(CallState::Running)
        );
        assert!(parse_call_reply(&reply("404 Not Found", "{}")).is_err());
        assert!(parse_call_reply(&reply("200 OK", r#"{"call_id":3}"#)).is_err());
        assert!(parse_call_reply("garbage").is_err());
    }
}
