//! An event consumer for the kernel tests: `agentcg events --follow --json`, the real
//! client, read on a thread into a list the test inspects.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Daemon;

#[derive(Debug)]
pub struct Consumer {
    child: Child,
    seen: Arc<Mutex<Vec<Value>>>,
    reader: Option<JoinHandle<()>>,
}

impl Consumer {
    /// Starts `agentcg events --follow --json EXTRA` against `d`; returns once the
    /// daemon counts it as a subscriber (what happens from then on, it sees).
    pub fn follow(d: &Daemon, extra: &[&str]) -> Consumer {
        let subscribers = || d.status()["events"]["subscribers"].as_u64().unwrap_or(0);
        let before = subscribers();
        let mut child = d
            .cli()
            .args(["events", "--follow", "--json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("agentcg events");
        let stdout = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("event line is not JSON ({e}): {line}"));
                    seen.lock().expect("lock").push(v);
                }
            })
        };
        let consumer = Consumer {
            child,
            seen,
            reader: Some(reader),
        };
        crate::wait_for("the consumer to subscribe", Duration::from_secs(30), || {
            subscribers() > before
        });
        consumer
    }

    /// The events read so far.
    pub fn events(&self) -> Vec<Value> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits until `f` holds for the events read so far; fails after `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, f: impl Fn(&[Value]) -> bool) {
        let start = Instant::now();
        loop {
            let events = self.events();
            if f(&events) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; {} events read, the last: {:?}",
                events.len(),
                events.last()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the consumer; every event it read.
    pub fn stop(mut self) -> Vec<Value> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.events()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events of one type.
pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The call ids of the `call_finished` events.
pub fn finished_ids(events: &[Value]) -> Vec<u64> {
    of_type(events, "call_finished")
        .iter()
        .filter_map(|e| e["record"]["call_id"].as_u64())
        .collect()
}
