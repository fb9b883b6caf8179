//! Prometheus metrics (docs/METRICS.md). Counters and histograms are fed by an
//! observer on the event bus, which sees every event once and in order, so a call that
//! lives 5 ms between two scrapes is still counted exactly once. Gauges are computed at
//! scrape time by collectors: sessions (`sessions.rs`), the BPF side and the scheduler
//! (`kernel.rs`), the daemon's own process (`process.rs`). `serve.rs` answers
//! `GET /metrics` over TCP in the format the scraper asks for.

mod family;
mod kernel;
mod process;
mod serve;
mod sessions;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use agentcg_core::events::{Event, EventBody, EventBus};
use agentcg_core::record::{CallRecord, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

pub use kernel::KernelSources;
pub use serve::start;
pub use sessions::ControllerSessions;

/// Prefix of every agentcg metric (the process metrics have none).
const PREFIX: &str = "agentcg";
/// Distinct call classes given their own label value; later ones count as `other`.
/// A class is a label the client may declare, so without a bound a client could grow
/// the series without end.
pub const MAX_CLASSES: usize = 64;
/// The class label of a call that has none.
const NO_CLASS: &str = "none";
/// The class label once [`MAX_CLASSES`] are taken.
const OTHER_CLASS: &str = "other";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    class: String,
    outcome: &'static str,
    priority: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PriorityLabels {
    priority: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FieldLabels {
    field: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PressureLabels {
    scope: String,
    source: String,
    level: String,
}

/// The exemplar of a call histogram's bucket: the last call that fell into it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallExemplar {
    call_id: u64,
}

type CallHistogram = Family<ClassLabels, HistogramWithExemplars<CallExemplar>, fn() -> Hist>;
type Hist = HistogramWithExemplars<CallExemplar>;

/// 5 ms to 1 h.
fn duration_buckets() -> Hist {
    HistogramWithExemplars::new(
        [
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            900.0, 3600.0,
        ]
        .into_iter(),
    )
}

/// 1 MiB to 16 GiB, by fours.
fn memory_buckets() -> Hist {
    HistogramWithExemplars::new(exponential_buckets(1_048_576.0, 4.0, 8))
}

/// 1 ms to 262 s of CPU, by fours.
fn cpu_buckets() -> Hist {
    HistogramWithExemplars::new(exponential_buckets(0.001, 4.0, 10))
}

/// What the event observer counts. Cheap to clone (every family is shared).
#[derive(Debug)]
pub struct Counters {
    calls: Family<CallLabels, Counter>,
    call_duration: CallHistogram,
    call_memory_peak: CallHistogram,
    call_cpu: CallHistogram,
    memory_actions: Family<ActionLabels, Counter>,
    oom_kills: Family<PriorityLabels, Counter>,
    intents_rejected: Family<ReasonLabels, Counter>,
    clamps: Family<FieldLabels, Counter>,
    cpu_budget_exceeded: Counter,
    scheduler_exits: Counter,
    scheduler_fallbacks: Counter,
    policy_reloads: Family<ResultLabels, Counter>,
    policy_last_reload_ok: Gauge,
    pressure: Family<PressureLabels, Counter>,
    events: Family<TypeLabels, Counter>,
    /// Class labels handed out so far (at most [`MAX_CLASSES`]).
    classes: Mutex<BTreeSet<String>>,
}

impl Default for Counters {
    fn default() -> Self {
        let policy_last_reload_ok = Gauge::default();
        // The policy in force loaded at start (the daemon does not start otherwise).
        policy_last_reload_ok.set(1);
        Counters {
            calls: Family::default(),
            call_duration: Family::new_with_constructor(duration_buckets),
            call_memory_peak: Family::new_with_constructor(memory_buckets),
            call_cpu: Family::new_with_constructor(cpu_buckets),
            memory_actions: Family::default(),
            oom_kills: Family::default(),
            intents_rejected: Family::default(),
            clamps: Family::default(),
            cpu_budget_exceeded: Counter::default(),
            scheduler_exits: Counter::default(),
            scheduler_fallbacks: Counter::default(),
            policy_reloads: Family::default(),
            policy_last_reload_ok,
            pressure: Family::default(),
            events: Family::default(),
            classes: Mutex::new(BTreeSet::new()),
        }
    }
}

/// The label value of a call's class: its name while fewer than [`MAX_CLASSES`] have
/// been seen (or it was seen before), else `other`; `none` without a class.
fn class_label(seen: &mut BTreeSet<String>, class: Option<&str>) -> String {
    let Some(class) = class else {
        return NO_CLASS.to_string();
    };
    if seen.contains(class) {
        return class.to_string();
    }
    if seen.len() >= MAX_CLASSES {
        return OTHER_CLASS.to_string();
    }
    seen.insert(class.to_string());
    class.to_string()
}

impl Counters {
    /// Registers an observer on `bus` that counts every event from now on.
    pub fn observe(self: &Arc<Self>, bus: &EventBus) {
        let me = self.clone();
        bus.observe(Box::new(move |e| me.count(e)));
    }

    /// Counts one event.
    fn count(&self, event: &Event) {
        self.events
            .get_or_create(&TypeLabels {
                r#type: event.body.kind(),
            })
            .inc();
        match &event.body {
            EventBody::CallFinished { record } => self.call_finished(record),
            EventBody::CallRejected { reason, .. } => {
                self.intents_rejected
                    .get_or_create(&ReasonLabels {
                        reason: reason.clone(),
                    })
                    .inc();
            }
            EventBody::CallDeclared { clamps, .. } => {
                for c in clamps {
                    self.clamps
                        .get_or_create(&FieldLabels {
                            field: c.field.clone(),
                        })
                        .inc();
                }
            }
            EventBody::MemoryStep { action, .. } => {
                self.memory_actions
                    .get_or_create(&ActionLabels {
                        action: action.clone(),
                    })
                    .inc();
            }
            EventBody::Pressure {
                scope,
                source,
                level,
                ..
            } => {
                self.pressure
                    .get_or_create(&PressureLabels {
                        scope: scope.clone(),
                        source: source.clone(),
                        level: level.clone(),
                    })
                    .inc();
            }
            EventBody::CpuBudgetExceeded { .. } => {
                self.cpu_budget_exceeded.inc();
            }
            EventBody::SchedulerExit { .. } => {
                self.scheduler_exits.inc();
            }
            EventBody::SchedulerFallback { .. } => {
                self.scheduler_fallbacks.inc();
            }
            EventBody::PolicyReloaded { ok, .. } => {
                let result = if *ok { "ok" } else { "error" };
                self.policy_reloads
                    .get_or_create(&ResultLabels { result })
                    .inc();
                self.policy_last_reload_ok.set(i64::from(*ok));
            }
            EventBody::CallQueued { .. }
            | EventBody::SessionCreated { .. }
            | EventBody::SessionClosed { .. }
            | EventBody::SchedulerReloaded { .. }
            | EventBody::Lagged { .. } => {}
        }
    }

    fn call_finished(&self, r: &CallRecord) {
        let class = {
            let mut seen = self.classes.lock().unwrap_or_else(|p| p.into_inner());
            class_label(&mut seen, r.limits.class.as_deref())
        };
        let priority = r.limits.priority.as_str();
        self.calls
            .get_or_create(&CallLabels {
                class: class.clone(),
                outcome: r.outcome.as_str(),
                priority,
            })
            .inc();
        if r.outcome == Outcome::OomKilled {
            self.oom_kills
                .get_or_create(&PriorityLabels { priority })
                .inc();
        }
        let labels = ClassLabels { class };
        let exemplar = || Some(CallExemplar { call_id: r.call_id });
        self.call_duration.get_or_create(&labels).observe(
            r.duration_ms as f64 / 1e3,
            exemplar(),
            None,
        );
        if let Some(peak) = r.accounting.memory_peak {
            self.call_memory_peak
                .get_or_create(&labels)
                .observe(peak as f64, exemplar(), None);
        }
        self.call_cpu.get_or_create(&labels).observe(
            r.accounting.cpu.usage_usec as f64 / 1e6,
            exemplar(),
            None,
        );
    }

    /// Registers the counters under `reg` (already prefixed `agentcg_`).
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "calls",
            "Tool calls that ended, by class, outcome and priority",
            self.calls.clone(),
        );
        reg.register_with_unit(
            "call_duration",
            "Wall-clock duration of ended tool calls, by class",
            Unit::Seconds,
            self.call_duration.clone(),
        );
        reg.register_with_unit(
            "call_memory_peak",
            "memory.peak of ended tool calls, by class",
            Unit::Bytes,
            self.call_memory_peak.clone(),
        );
        reg.register_with_unit(
            "call_cpu",
            "CPU time (cpu.stat usage_usec) of ended tool calls, by class",
            Unit::Seconds,
            self.call_cpu.clone(),
        );
        reg.register(
            "memory_actions",
            "Steps of the memory response (burst, throttle, reclaim, freeze, kill, thaw, restore)",
            self.memory_actions.clone(),
        );
        reg.register(
            "oom_kills",
            "Tool calls ended by the kernel's OOM killer, by the call's priority",
            self.oom_kills.clone(),
        );
        reg.register(
            "intents_rejected",
            "Call declarations refused, by the API's error code",
            self.intents_rejected.clone(),
        );
        reg.register(
            "clamps",
            "Declared limits lowered by the policy or the session's budget, by field",
            self.clamps.clone(),
        );
        reg.register(
            "cpu_budget_exceeded",
            "Tool calls that used up their declared CPU budget",
            self.cpu_budget_exceeded.clone(),
        );
        reg.register(
            "scheduler_exits",
            "Times the sched_ext scheduler exited (error, watchdog, SysRq-S)",
            self.scheduler_exits.clone(),
        );
        reg.register(
            "scheduler_fallbacks",
            "Times agentcgd fell back to the kernel cpu controller for good",
            self.scheduler_fallbacks.clone(),
        );
        reg.register(
            "policy_reloads",
            "Policy reloads, by result",
            self.policy_reloads.clone(),
        );
        reg.register(
            "policy_last_reload_successful",
            "Whether the last policy load succeeded (1) or failed (0)",
            self.policy_last_reload_ok.clone(),
        );
        reg.register(
            "pressure_signals",
            "Memory pressure signals, by scope, source and level",
            self.pressure.clone(),
        );
        reg.register(
            "events",
            "Events published on the event bus, by type",
            self.events.clone(),
        );
    }
}

/// The registry the endpoint serves: the counters, the build info, and the
/// scrape-time collectors.
pub fn registry(
    counters: &Counters,
    sessions: Box<dyn sessions::SessionSource>,
    kernel: KernelSources,
) -> Registry {
    let mut root = Registry::default();
    root.register_collector(Box::new(process::ProcessCollector));
    let reg = root.sub_registry_with_prefix(PREFIX);
    reg.register(
        "build",
        "agentcgd's version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    counters.register(reg);
    reg.register_collector(Box::new(sessions::SessionCollector::new(sessions)));
    reg.register_collector(Box::new(kernel::KernelCollector::new(kernel)));
    root
}

#[cfg(test)]
mod tests;
