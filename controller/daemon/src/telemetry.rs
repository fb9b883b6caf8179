//! Kernel telemetry for calls: the BPF programs count execs, forks and exits per call
//! cgroup and stream them on a ring buffer. Loaded at start when the kernel allows;
//! without it calls run the same, their records just lack process counts.

use std::sync::Arc;
use std::time::Duration;

use agentcg_bpf::Telemetry;
use agentcg_core::controller::{CgroupRole, KernelHooks};
use agentcg_core::record::ProcessCounts;

/// Feeds call cgroups into the telemetry maps.
#[derive(Debug)]
pub struct TelemetryHooks {
    telemetry: Arc<Telemetry>,
}

impl KernelHooks for TelemetryHooks {
    fn name(&self) -> &'static str {
        "telemetry"
    }

    fn created(&mut self, cgroup_id: u64, role: CgroupRole<'_>) {
        if let CgroupRole::Call(_) = role
            && let Err(e) = self.telemetry.watch(cgroup_id)
        {
            tracing::warn!(cgroup_id, "telemetry watch: {e}");
        }
    }

    fn removing(&mut self, cgroup_id: u64) -> Option<ProcessCounts> {
        match self.telemetry.unwatch(cgroup_id) {
            Ok(c) => c.map(|c| ProcessCounts {
                execs: c.execs,
                forks: c.forks,
                exits: c.exits,
            }),
            Err(e) => {
                tracing::warn!(cgroup_id, "telemetry unwatch: {e}");
                None
            }
        }
    }
}

/// Loads the programs and starts draining their ring buffer; the error says why not.
pub fn start() -> Result<TelemetryHooks, String> {
    let telemetry = Arc::new(Telemetry::load().map_err(|e| e.to_string())?);
    let t = telemetry.timings();
    tracing::info!(
        open_ms = t.open.as_millis(),
        load_ms = t.load.as_millis(),
        attach_ms = t.attach.as_millis(),
        "telemetry BPF programs attached"
    );
    spawn_event_thread(telemetry.clone());
    Ok(TelemetryHooks { telemetry })
}

/// Drains the ring buffer on a dedicated thread, logging each process event.
fn spawn_event_thread(telemetry: Arc<Telemetry>) {
    let spawned = std::thread::Builder::new()
        .name("bpf-events".into())
        .spawn(move || {
            loop {
                // Sleeps in the ring buffer's epoll until the kernel writes.
                let res = telemetry.poll_events(Duration::MAX, |ev| {
                    tracing::debug!(kind = ?ev.kind, pid = ev.pid, cgid = ev.cgid, comm = %ev.comm, "process event");
                });
                if let Err(e) = res {
                    tracing::error!("telemetry ring buffer: {e}; event thread stops");
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("starting the telemetry event thread: {e}");
    }
}
