//! The observers of a watched run: one event consumer (`agentcg events --follow --json`
//! for the run's session, the real client) and one Prometheus-style scrape of
//! agentcgd's `/metrics` every second. Both run as they would on a watched host; what
//! they cost agentcgd is what the benchmark measures.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::load::Caller;

const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// What the consumer saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Call ids of `call_finished` events.
    pub finished: HashSet<u64>,
    /// `call_finished` events for an id already seen.
    pub duplicates: usize,
    /// Events the daemon said this consumer missed (`lagged`).
    pub missed: u64,
    pub lines: usize,
    pub bad_lines: usize,
}

impl Seen {
    /// Takes one NDJSON line.
    pub fn take_line(&mut self, line: &str) {
        self.lines += 1;
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            self.bad_lines += 1;
            return;
        };
        match event["type"].as_str() {
            Some("call_finished") => {
                if let Some(id) = event["record"]["call_id"].as_u64()
                    && !self.finished.insert(id)
                {
                    self.duplicates += 1;
                }
            }
            Some("lagged") => self.missed += event["missed"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
}

/// What the scraper did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scrapes {
    pub ok: usize,
    pub failed: usize,
    pub bytes: usize,
}

/// A consumer and a scraper, running.
#[derive(Debug)]
pub struct Watch {
    consumer: Child,
    seen: Arc<Mutex<Seen>>,
    reader: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    scraper: JoinHandle<Scrapes>,
}

impl Watch {
    pub fn start(caller: &Caller, session: &str, metrics: SocketAddr) -> Result<Watch, String> {
        let mut consumer = Command::new(&caller.agentcg)
            .arg("--socket")
            .arg(&caller.socket)
            .args(["events", "--follow", "--json", "--session", session])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run agentcg events: {e}"))?;
        let stdout = consumer
            .stdout
            .take()
            .ok_or("agentcg events has no stdout")?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reader = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(mut s) = seen.lock() {
                        s.take_line(&line);
                    }
                }
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let scraper = {
            let stop = stop.clone();
            std::thread::spawn(move || scrape_until(metrics, &stop))
        };
        Ok(Watch {
            consumer,
            seen,
            reader,
            stop,
            scraper,
        })
    }

    /// Waits up to `grace` for `call_finished` of every id in `expect`, then stops both.
    pub fn stop(mut self, expect: &[u64], grace: Duration) -> (Seen, Scrapes) {
        let start = Instant::now();
        while start.elapsed() < grace {
            let done = self
                .seen
                .lock()
                .map(|s| expect.iter().all(|id| s.finished.contains(id)))
                .unwrap_or(true);
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.consumer.kill();
        let _ = self.consumer.wait();
        let _ = self.reader.join();
        self.stop.store(true, Ordering::Relaxed);
        let scrapes = self.scraper.join().unwrap_or_default();
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        (seen, scrapes)
    }
}

fn scrape_until(addr: SocketAddr, stop: &AtomicBool) -> Scrapes {
    let mut scrapes = Scrapes::default();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match scrape(addr) {
            Ok(bytes) => {
                scrapes.ok += 1;
                scrapes.bytes += bytes;
            }
            Err(err) => {
                scrapes.failed += 1;
                eprintln!("telebench: scrape of {addr} failed: {err}");
            }
        }
        next += SCRAPE_EVERY;
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    scrapes
}

/// One `GET /metrics`; the size of the reply.
fn scrape(addr: SocketAddr) -> Result<usize, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: agentcg\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    if !reply.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&reply[..reply.len().min(80)]).into_owned();
        return Err(format!("answered {head:?}"));
    }
    Ok(reply.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_calls_duplicates_and_lag_are_counted() {
        let mut seen = Seen::default();
        for line in [
            r#"{"seq":1,"time_ms":1,"type":"call_declared","call_id":7}"#,
            r#"{"seq":2,"time_ms":2,"type":"call_finished","record":{"call_id":7}}"#,
            r#"{"seq":3,"time_ms":3,"type":"call_finished","record":{"call_id":7}}"#,
            r#"{"seq":9,"time_ms":4,"type":"lagged","missed":5}"#,
            "not json",
        ] {
            seen.take_line(line);
        }
        assert_eq!(seen.finished, HashSet::from([7]));
        assert_eq!(seen.duplicates, 1);
        assert_eq!(seen.missed, 5);
        assert_eq!((seen.lines, seen.bad_lines), (5, 1));
    }

    #[test]
    fn a_scrape_needs_a_200() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            for reply in [
                &b"HTTP/1.1 200 OK\r\n\r\nx 1\n"[..],
                b"HTTP/1.1 404 Not Found\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                s.write_all(reply).expect("reply");
            }
        });
        assert_eq!(scrape(addr), Ok(23));
        assert!(scrape(addr).expect_err("404").contains("404"));
        server.join().expect("server");
    }
}
