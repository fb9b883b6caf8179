//! The BPF side, the scheduler and the event bus at scrape time: which programs are
//! loaded, the CPU scheduler's state and reloads, each ring buffer's events and drops
//! (counted in the programs' `.bss`), map sizes, and the bus's consumers. The BPF
//! counters restart from 0 when their programs are loaded again (a scheduler reload);
//! Prometheus' `rate()` and `increase()` take such resets in their stride.

use std::sync::Arc;

use agentcg_bpf::{MemWatch, Scheduler, Telemetry};
use agentcg_core::events::EventBus;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};

use super::family::{Desc, counter, counters, gauge, gauges};
use crate::sched::SharedStatus;

/// The handles the scrape reads; a program that did not load is `None`.
#[derive(Debug, Clone)]
pub struct KernelSources {
    pub telemetry: Option<Arc<Telemetry>>,
    pub memory: Option<Arc<MemWatch>>,
    pub sched: SharedStatus,
    pub bus: Arc<EventBus>,
}

/// One reading of everything this collector reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSample {
    /// `sched_ext` or `kernel`.
    pub scheduler: String,
    pub scheduler_reloads: u32,
    /// (programs, loaded).
    pub loaded: Vec<(&'static str, bool)>,
    /// (ring, events, drops).
    pub rings: Vec<(&'static str, u64, u64)>,
    /// (programs, runs the kernel skipped).
    pub missed: Vec<(&'static str, u64)>,
    /// (map, entries).
    pub maps: Vec<(&'static str, u64)>,
    pub subscribers: u64,
    pub consumer_drops: u64,
}

/// The scheduler states reported, one series each (1 for the one in force).
pub const SCHEDULER_STATES: [&str; 2] = ["sched_ext", "kernel"];

fn log<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Option<T> {
    r.map_err(|e| tracing::warn!("metrics: {what}: {e}")).ok()
}

fn telemetry(t: &Telemetry, s: &mut KernelSample) {
    if let Some(st) = log("telemetry stats", t.stats()) {
        s.rings.push(("telemetry", st.events, st.drops));
        s.missed.push(("telemetry", st.missed_runs));
    }
    if let Some(n) = log("telemetry map", t.watched_len()) {
        s.maps.push(("telemetry_watched", n as u64));
    }
}

fn memory(m: &MemWatch, s: &mut KernelSample) {
    if let Some(st) = log("memory stats", m.stats()) {
        s.rings.push(("memory", st.events, st.event_drops));
        s.missed.push(("memory", st.missed_runs));
    }
    s.maps.push(("mem_watch", m.watched_len() as u64));
    s.maps.push(("mem_state", m.state_map().len() as u64));
}

fn scheduler(sched: &Scheduler, s: &mut KernelSample) {
    if let Some(st) = log("scheduler stats", sched.stats()) {
        s.rings
            .push(("sched_budget", st.budget_events, st.budget_event_drops));
    }
    s.maps.push(("sched_policies", sched.entries() as u64));
    s.maps.push(("sched_usage", sched.usage_entries() as u64));
    s.maps.push(("sched_cgroups", sched.node_entries() as u64));
}

/// Reads everything; the scheduler's status lock is held only to copy it.
pub fn sample(src: &KernelSources) -> KernelSample {
    let (active, reloads, attached) = match src.sched.lock() {
        Ok(st) => (st.active.clone(), st.reloads, st.attached.clone()),
        Err(_) => (String::new(), 0, None),
    };
    let bus = src.bus.status();
    let mut s = KernelSample {
        scheduler: active,
        scheduler_reloads: reloads,
        loaded: vec![
            ("telemetry", src.telemetry.is_some()),
            ("memory", src.memory.is_some()),
            ("scheduler", attached.is_some()),
        ],
        subscribers: bus.subscribers as u64,
        consumer_drops: bus.dropped,
        ..KernelSample::default()
    };
    if let Some(t) = &src.telemetry {
        telemetry(t, &mut s);
    }
    if let Some(m) = &src.memory {
        memory(m, &mut s);
    }
    if let Some(sched) = &attached {
        scheduler(sched, &mut s);
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProgramLabels {
    programs: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RingLabels {
    ring: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

/// Encodes a sample.
pub fn encode(s: &KernelSample, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let e = &mut enc;
    gauges(
        e,
        Desc::new(
            "scheduler_state",
            "The CPU scheduler in force: 1 for sched_ext (agentcg_sched attached) or kernel (the cpu controller alone), 0 for the other",
        ),
        SCHEDULER_STATES.map(|state| (StateLabels { state }, i64::from(s.scheduler == state))),
    )?;
    counter(
        e,
        Desc::new(
            "scheduler_reloads",
            "Times agentcgd loaded the sched_ext scheduler again after it exited",
        ),
        u64::from(s.scheduler_reloads),
    )?;
    gauges(
        e,
        Desc::new(
            "bpf_programs_loaded",
            "Whether each set of BPF programs is loaded (1) or not (0)",
        ),
        s.loaded
            .iter()
            .map(|&(programs, on)| (ProgramLabels { programs }, i64::from(on))),
    )?;
    counters(
        e,
        Desc::new(
            "bpf_ringbuf_events",
            "Events the BPF programs wrote to their ring buffer",
        ),
        s.rings
            .iter()
            .map(|&(ring, events, _)| (RingLabels { ring }, events)),
    )?;
    counters(
        e,
        Desc::new(
            "bpf_ringbuf_drops",
            "Events the BPF programs lost because their ring buffer was full",
        ),
        s.rings
            .iter()
            .map(|&(ring, _, drops)| (RingLabels { ring }, drops)),
    )?;
    counters(
        e,
        Desc::new(
            "bpf_program_missed_runs",
            "Runs of the BPF programs the kernel skipped because another instance was active on the CPU",
        ),
        s.missed
            .iter()
            .map(|&(programs, n)| (ProgramLabels { programs }, n)),
    )?;
    gauges(
        e,
        Desc::new("bpf_map_entries", "Entries in each BPF map"),
        s.maps.iter().map(|&(map, n)| (MapLabels { map }, n)),
    )?;
    gauge(
        e,
        Desc::new(
            "event_subscribers",
            "Consumers of the event stream (GET /v1/events)",
        ),
        s.subscribers,
    )?;
    counter(
        e,
        Desc::new(
            "event_consumer_drops",
            "Events consumers missed because their queue was full",
        ),
        s.consumer_drops,
    )?;
    Ok(())
}

/// The collector over the live handles.
#[derive(Debug)]
pub struct KernelCollector(KernelSources);

impl KernelCollector {
    pub fn new(src: KernelSources) -> KernelCollector {
        KernelCollector(src)
    }
}

impl Collector for KernelCollector {
    fn encode(&self, enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        encode(&sample(&self.0), enc)
    }
}
