//! What `agentcg top` shows, computed from the daemon's answers: pure functions of the
//! snapshots, tested without a terminal.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use agentcg_core::controller::{RunningView, SessionInfo};
use agentcg_core::events::{Event, describe};
use agentcg_core::units::HumanSize;
use serde_json::Value;

/// Event lines kept for the bottom pane.
pub const KEEP_EVENTS: usize = 200;

/// One poll of the daemon.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub status: Value,
    pub sessions: Vec<SessionInfo>,
    pub running: Vec<RunningView>,
}

/// A session row.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub name: String,
    pub priority: String,
    pub memory: u64,
    pub budget: u64,
    /// CPU use since the previous poll, in percent of one CPU.
    pub cpu_pct: Option<f64>,
    /// memory.pressure some avg10, percent.
    pub pressure: Option<f64>,
    pub calls: usize,
}

/// Everything on screen.
#[derive(Debug, Default)]
pub struct Model {
    pub header: String,
    pub sessions: Vec<SessionRow>,
    pub running: Vec<RunningView>,
    pub events: VecDeque<String>,
    /// The last poll failed: why (the screen keeps the previous data).
    pub error: Option<String>,
    prev_cpu: BTreeMap<String, (u64, Instant)>,
}

impl Model {
    /// Takes a new snapshot in.
    pub fn update(&mut self, s: Snapshot) {
        self.error = None;
        self.header = header(&s.status, &s.sessions, s.running.len());
        let mut cpu = BTreeMap::new();
        self.sessions = s
            .sessions
            .iter()
            .map(|info| {
                let name = info.plan.name.clone();
                let cpu_pct = info.cpu_usec.and_then(|now| {
                    cpu.insert(name.clone(), (now, s.at));
                    let &(then, at) = self.prev_cpu.get(&name)?;
                    cpu_percent(then, now, s.at.duration_since(at).as_micros() as u64)
                });
                SessionRow {
                    priority: info.plan.priority.as_str().to_string(),
                    memory: info.memory_current.unwrap_or(0),
                    budget: info.plan.memory_max,
                    cpu_pct,
                    pressure: info.memory_pressure.map(|p| p.some.avg10),
                    calls: info.running_calls.len(),
                    name,
                }
            })
            .collect();
        self.prev_cpu = cpu;
        self.running = s.running;
    }

    /// Adds one event line (NDJSON from the stream).
    pub fn event(&mut self, line: &str) {
        let text = match serde_json::from_str::<Event>(line) {
            Ok(e) => describe::line(&e),
            Err(_) => return,
        };
        if self.events.len() == KEEP_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(text);
    }
}

/// CPU use between two cpu.stat readings, in percent of one CPU.
pub fn cpu_percent(then_usec: u64, now_usec: u64, elapsed_usec: u64) -> Option<f64> {
    (elapsed_usec > 0)
        .then(|| now_usec.saturating_sub(then_usec) as f64 * 100.0 / elapsed_usec as f64)
}

/// The top line: counts, the sessions' memory against the limit agentcg defends, the
/// CPU scheduler and the memory response's step.
pub fn header(status: &Value, sessions: &[SessionInfo], running: usize) -> String {
    let memory = &status["memory"];
    let used: u64 = sessions.iter().filter_map(|s| s.memory_current).sum();
    let limit = match memory["root_limit"].as_u64() {
        Some(l) if l > 0 => format!("/{}", HumanSize(l)),
        _ => String::new(),
    };
    let cpu = status["scheduler"]["active"].as_str().unwrap_or("?");
    let step = memory["step"].as_str().unwrap_or("?");
    format!(
        "{} sessions, {running} running | mem {}{limit} | cpu {cpu} | step {step}",
        sessions.len(),
        HumanSize(used)
    )
}

/// A command for a narrow column: the program's file name, then its arguments.
pub fn command_line(argv: &[String]) -> String {
    let mut parts = argv.iter().map(String::as_str);
    let program = parts
        .next()
        .map(|p| p.rsplit('/').next().unwrap_or(p))
        .unwrap_or_default();
    std::iter::once(program)
        .chain(parts)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A bar of `width` cells filled in proportion to `part / whole`.
pub fn bar(part: u64, whole: u64, width: usize) -> String {
    let filled = if whole == 0 {
        0
    } else {
        ((part as u128 * width as u128).div_ceil(whole as u128) as usize).min(width)
    };
    format!("{}{}", "#".repeat(filled), ".".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_in_proportion_and_never_overflow() {
        assert_eq!(bar(0, 100, 10), "..........");
        assert_eq!(bar(50, 100, 10), "#####.....");
        assert_eq!(bar(1, 100, 10), "#.........", "any use shows");
        assert_eq!(bar(300, 100, 10), "##########");
        assert_eq!(bar(5, 0, 4), "....");
    }

    #[test]
    fn cpu_is_the_usage_delta_over_the_elapsed_time() {
        assert_eq!(cpu_percent(1_000, 501_000, 1_000_000), Some(50.0));
        assert_eq!(cpu_percent(5, 1, 10), Some(0.0), "a reset reads as idle");
        assert_eq!(cpu_percent(0, 1, 0), None);
    }

    #[test]
    fn the_header_says_counts_memory_and_modes() {
        let status = serde_json::json!({
            "memory": {"root_limit": 4u64 << 30, "step": "none"},
            "scheduler": {"active": "sched_ext"}
        });
        let h = header(&status, &[], 3);
        assert_eq!(
            h,
            "0 sessions, 3 running | mem 0 B/4 GiB | cpu sched_ext | step none"
        );
        assert!(h.chars().count() <= 80);
    }

    #[test]
    fn commands_show_the_program_name_then_the_arguments() {
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_line(&argv(&["/usr/bin/python3", "-m", "pytest"])),
            "python3 -m pytest"
        );
        assert_eq!(command_line(&argv(&["make"])), "make");
        assert_eq!(command_line(&[]), "");
    }

    #[test]
    fn events_become_lines_and_only_the_newest_are_kept() {
        let mut m = Model::default();
        for i in 0..KEEP_EVENTS + 2 {
            m.event(&format!(
                r#"{{"seq":{},"time_ms":0,"type":"session_closed","session":"s","forced":false}}"#,
                i + 1
            ));
        }
        m.event("not json");
        assert_eq!(m.events.len(), KEEP_EVENTS);
        assert!(m.events[0].contains("#3 session_closed"), "{}", m.events[0]);
    }
}
