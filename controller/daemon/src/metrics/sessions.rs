//! Per-session gauges, computed at scrape time: the controller's lock is held only to
//! copy each session's plan and running-call count, then the session's cgroup files
//! are read without it. A closed session is no longer listed, so its series disappear
//! with it (labels stay bounded by the sessions that exist).

use std::path::{Path, PathBuf};

use agentcg_core::cgroup::{Cgroup, CgroupError, cpu, memory, parse_u64_or_max};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};

use super::family::{Desc, counters, gauges};
use crate::supervisor::Shared;

/// The PSI file of a cgroup's memory stalls.
const PRESSURE: &str = "memory.pressure";

/// What the scrape needs to know of one session, copied under the controller's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub name: String,
    pub calls_running: usize,
    /// runtime/ memory.min or memory.low: the floor that protects the agent runtime.
    pub runtime_reserve: u64,
    /// The session's cgroup directory.
    pub dir: PathBuf,
    /// Its runtime/ leaf.
    pub runtime_dir: PathBuf,
}

/// Lists the sessions for a scrape (the controller, or a fake in tests).
pub trait SessionSource: Send + Sync + std::fmt::Debug + 'static {
    fn sessions(&self) -> Vec<SessionRow>;
}

/// The live sessions of the controller.
#[derive(Debug)]
pub struct ControllerSessions(pub Shared);

impl SessionSource for ControllerSessions {
    fn sessions(&self) -> Vec<SessionRow> {
        let (plans, layout) = match self.0.lock() {
            Ok(c) => (c.session_plans(), c.layout().clone()),
            Err(_) => return Vec::new(),
        };
        plans
            .into_iter()
            .map(|(plan, calls_running)| SessionRow {
                dir: layout.session(&plan.name).path().to_path_buf(),
                runtime_dir: layout.runtime(&plan.name).path().to_path_buf(),
                name: plan.name,
                calls_running,
                runtime_reserve: plan.runtime_reserve,
            })
            .collect()
    }
}

/// Cumulative stall time of a PSI file (`memory.pressure`), in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PsiTotals {
    pub some_usec: u64,
    pub full_usec: u64,
}

/// A PSI file that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: no `{line} ... total=N` in {text:?}")]
pub struct PsiError {
    pub path: String,
    pub line: &'static str,
    pub text: String,
}

/// The `total=` of the `some` and `full` lines of a PSI file (`path` names it in errors).
pub fn parse_psi(path: &Path, text: &str) -> Result<PsiTotals, PsiError> {
    let total = |line: &'static str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
            .flat_map(str::split_whitespace)
            .find_map(|kv| kv.strip_prefix("total=")?.parse().ok())
            .ok_or_else(|| PsiError {
                path: path.display().to_string(),
                line,
                text: text.to_string(),
            })
    };
    Ok(PsiTotals {
        some_usec: total("some")?,
        full_usec: total("full")?,
    })
}

/// One session's readings. A value is `None` when its file could not be read (the
/// session closed during the scrape, or the kernel lacks the file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionSample {
    pub name: String,
    pub calls_running: usize,
    pub memory: Option<u64>,
    /// `None` too when memory.max is `max`.
    pub memory_limit: Option<u64>,
    pub cpu_usec: Option<u64>,
    pub pressure: Option<PsiTotals>,
    pub runtime_memory: Option<u64>,
    pub runtime_reserve: u64,
}

/// A file that is gone is a session that closed meanwhile: not worth a log line.
fn note<T>(name: &str, r: Result<T, String>) -> Option<T> {
    r.map_err(|e| tracing::debug!(session = name, "metrics: {e}"))
        .ok()
}

fn err(e: CgroupError) -> String {
    e.to_string()
}

/// Reads one session's cgroup files.
pub fn sample(row: &SessionRow) -> SessionSample {
    let cg = Cgroup::new(&row.dir);
    let name = row.name.as_str();
    let pressure = cg
        .read(PRESSURE)
        .map_err(err)
        .and_then(|t| parse_psi(&row.dir.join(PRESSURE), &t).map_err(|e| e.to_string()));
    SessionSample {
        name: row.name.clone(),
        calls_running: row.calls_running,
        memory: note(name, cg.read_u64(memory::CURRENT).map_err(err)),
        memory_limit: note(name, cg.read(memory::MAX).map_err(err))
            .and_then(|t| parse_u64_or_max(t.trim()))
            .filter(|&v| v != u64::MAX),
        cpu_usec: note(name, cpu::usage(&cg).map_err(err)).map(|u| u.usage_usec),
        pressure: note(name, pressure),
        runtime_memory: note(
            name,
            Cgroup::new(&row.runtime_dir)
                .read_u64(memory::CURRENT)
                .map_err(err),
        ),
        runtime_reserve: row.runtime_reserve,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SessionLabels {
    session: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PressureLabels {
    session: String,
    kind: &'static str,
}

/// The per-session families, read at each scrape.
#[derive(Debug)]
pub struct SessionCollector {
    source: Box<dyn SessionSource>,
}

impl SessionCollector {
    pub fn new(source: Box<dyn SessionSource>) -> SessionCollector {
        SessionCollector { source }
    }
}

/// The rows of one family: each sample's value, where it has one.
fn rows<'a, V>(
    samples: &'a [SessionSample],
    value: impl Fn(&SessionSample) -> Option<V> + 'a,
) -> impl Iterator<Item = (SessionLabels, V)> + 'a {
    samples.iter().filter_map(move |s| {
        value(s).map(|v| {
            (
                SessionLabels {
                    session: s.name.clone(),
                },
                v,
            )
        })
    })
}

/// Encodes the session families for `samples`.
pub fn encode(
    samples: &[SessionSample],
    mut enc: DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let e = &mut enc;
    gauges(
        e,
        Desc::bytes("session_memory", "memory.current of the session's cgroup"),
        rows(samples, |s| s.memory),
    )?;
    gauges(
        e,
        Desc::bytes("session_memory_limit", "memory.max of the session's cgroup"),
        rows(samples, |s| s.memory_limit),
    )?;
    counters(
        e,
        Desc::seconds(
            "session_cpu",
            "CPU time of the session's cgroup (cpu.stat usage_usec)",
        ),
        rows(samples, |s| s.cpu_usec.map(|u| u as f64 / 1e6)),
    )?;
    gauges(
        e,
        Desc::new("session_calls_running", "Tool calls running in the session"),
        rows(samples, |s| Some(s.calls_running as u64)),
    )?;
    let pressure = samples.iter().flat_map(|s| {
        s.pressure.into_iter().flat_map(|p| {
            [("some", p.some_usec), ("full", p.full_usec)].map(|(kind, usec)| {
                (
                    PressureLabels {
                        session: s.name.clone(),
                        kind,
                    },
                    usec as f64 / 1e6,
                )
            })
        })
    });
    counters(
        e,
        Desc::seconds(
            "session_memory_pressure",
            "Time tasks of the session stalled on memory (memory.pressure total=; some: at least one, full: all)",
        ),
        pressure,
    )?;
    gauges(
        e,
        Desc::bytes(
            "session_runtime_memory",
            "memory.current of the session's runtime/ leaf (the agent runtime)",
        ),
        rows(samples, |s| s.runtime_memory),
    )?;
    gauges(
        e,
        Desc::bytes(
            "session_runtime_reserve",
            "The memory floor protecting the agent runtime (runtime/ memory.min or memory.low)",
        ),
        rows(samples, |s| Some(s.runtime_reserve)),
    )?;
    Ok(())
}

impl Collector for SessionCollector {
    fn encode(&self, enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let samples: Vec<SessionSample> = self.source.sessions().iter().map(sample).collect();
        encode(&samples, enc)
    }
}
