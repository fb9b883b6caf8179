//! Kernel telemetry for calls: the BPF programs count execs, forks and exits per call
//! cgroup and stream them on a ring buffer, from which each call's process list is
//! built (pid, parent, arguments, exit, times). The exit of a call's tool ends the call
//! here, without waiting for the client's report. Loaded at start when the kernel
//! allows; without it calls run the same, their records just lack process counts and
//! their clients report every end.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentcg_bpf::{TeleEvent, TeleKind, Telemetry};
use agentcg_core::controller::{CgroupRole, KernelHooks, ToolExit};
use agentcg_core::record::processes::CallProcesses;
use agentcg_core::record::{ExitInfo, ProcessCounts};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::supervisor::{self, Shared, Wakers};

/// Feeds call cgroups into the telemetry maps and answers how a call's tool ended.
#[derive(Debug)]
pub struct TelemetryHooks {
    telemetry: Arc<Telemetry>,
    /// Call cgroups in the map.
    watched: HashSet<u64>,
    /// The process lists of the watched calls, fed by the event thread.
    processes: Processes,
}

/// Process lists by call cgroup id.
pub type Processes = Arc<Mutex<HashMap<u64, CallProcesses>>>;

impl KernelHooks for TelemetryHooks {
    fn name(&self) -> &'static str {
        "telemetry"
    }

    fn created(&mut self, cgroup_id: u64, role: CgroupRole<'_>) {
        if let CgroupRole::Call(_) = role {
            if let Ok(mut p) = self.processes.lock() {
                p.insert(cgroup_id, CallProcesses::default());
            }
            match self.telemetry.watch(cgroup_id) {
                Ok(()) => {
                    self.watched.insert(cgroup_id);
                }
                Err(e) => tracing::warn!(cgroup_id, "telemetry watch: {e}"),
            }
        }
    }

    fn removing(&mut self, cgroup_id: u64) -> Option<ProcessCounts> {
        self.watched.remove(&cgroup_id);
        let procs = self
            .processes
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&cgroup_id));
        let (list, omitted) = procs.map(CallProcesses::finish).unwrap_or_default();
        match self.telemetry.unwatch(cgroup_id) {
            Ok(c) => c.map(|c| ProcessCounts {
                execs: c.execs,
                forks: c.forks,
                exits: c.exits,
                list,
                omitted,
            }),
            Err(e) => {
                tracing::warn!(cgroup_id, "telemetry unwatch: {e}");
                None
            }
        }
    }

    fn adopted_tool(&mut self, cgroup_id: u64, pid: u32) {
        match self.telemetry.watch_tool(cgroup_id, pid) {
            Ok(()) => {
                self.watched.insert(cgroup_id);
            }
            Err(e) => tracing::warn!(cgroup_id, pid, "telemetry watch of a re-adopted tool: {e}"),
        }
    }

    fn sees_tool_exit(&self, cgroup_id: u64) -> bool {
        self.watched.contains(&cgroup_id)
    }

    fn tool_exit(&self, cgroup_id: u64) -> Option<ExitInfo> {
        if !self.watched.contains(&cgroup_id) {
            return None;
        }
        match self.telemetry.tool_exit(cgroup_id) {
            Ok(s) => s.map(|s| ExitInfo::from_wait_status(s as i32)),
            Err(e) => {
                tracing::warn!(cgroup_id, "telemetry tool exit: {e}");
                None
            }
        }
    }
}

/// Loads the programs; the error says why not. Their events flow once [`start`]ed.
pub fn load() -> Result<(TelemetryHooks, Arc<Telemetry>), String> {
    let telemetry = Arc::new(Telemetry::load().map_err(|e| e.to_string())?);
    let t = telemetry.timings();
    tracing::info!(
        open_ms = t.open.as_millis(),
        load_ms = t.load.as_millis(),
        attach_ms = t.attach.as_millis(),
        "telemetry BPF programs attached"
    );
    let hooks = TelemetryHooks {
        telemetry: telemetry.clone(),
        watched: HashSet::new(),
        processes: Processes::default(),
    };
    Ok((hooks, telemetry))
}

/// What [`start`] needs: the programs and the process lists their hooks keep.
pub type Loaded = (Arc<Telemetry>, Processes);

impl TelemetryHooks {
    /// The process lists, for the event thread.
    pub fn processes(&self) -> Processes {
        self.processes.clone()
    }
}

/// Converts a `CLOCK_MONOTONIC` time (the BPF programs' clock) to unix milliseconds.
#[derive(Debug, Clone, Copy)]
struct Clocks {
    mono_ns: u64,
    unix_ms: u64,
}

impl Clocks {
    fn now() -> Option<Clocks> {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        Some(Clocks {
            mono_ns: mono.tv_sec() as u64 * 1_000_000_000 + mono.tv_nsec() as u64,
            unix_ms: unix.as_millis() as u64,
        })
    }

    fn unix_ms(self, mono_ns: u64) -> u64 {
        let back = self.mono_ns.saturating_sub(mono_ns) / 1_000_000;
        self.unix_ms.saturating_sub(back)
    }
}

/// Adds one process event to its call's list.
fn note_process(processes: &Processes, ev: &TeleEvent, clocks: Option<Clocks>) {
    let at = clocks.map_or(0, |c| c.unix_ms(ev.ts_ns));
    let Ok(mut table) = processes.lock() else {
        return;
    };
    let Some(call) = table.get_mut(&ev.cgid) else {
        return;
    };
    match ev.kind {
        TeleKind::Fork => call.fork(ev.pid, ev.ppid.unwrap_or(0), at),
        TeleKind::Exec => call.exec(ev.pid, ev.ppid, ev.argv.clone(), ev.argv_cut, at),
        TeleKind::Exit => call.exit(ev.pid, ev.status.unwrap_or(0), at),
    }
}

/// Starts draining the ring buffer: a dedicated thread sleeps in its epoll and hands
/// tool exits to a task that ends the calls (trigger 2 of
/// docs/ARCHITECTURE.md#who-ends-a-call).
pub fn start((telemetry, processes): Loaded, shared: Shared, wakers: Arc<Wakers>) {
    let (sender, exits) = unbounded_channel();
    spawn_event_thread(telemetry, processes, sender);
    tokio::spawn(end_calls(shared, wakers, exits));
}

/// A call's tool exited: (cgroup id, how).
type ToolExitEvent = (u64, ExitInfo);

/// Drains the ring buffer on a dedicated thread: each process event goes into its
/// call's process list (before a tool's exit is forwarded, so the call's record has
/// it), and the exits of tools are forwarded.
fn spawn_event_thread(
    telemetry: Arc<Telemetry>,
    processes: Processes,
    exits: UnboundedSender<ToolExitEvent>,
) {
    let spawned = std::thread::Builder::new()
        .name("bpf-events".into())
        .spawn(move || {
            loop {
                // Sleeps in the ring buffer's epoll until the kernel writes.
                let clocks = std::cell::Cell::new(None);
                let res = telemetry.poll_events(Duration::MAX, |ev| {
                    if clocks.get().is_none() {
                        clocks.set(Clocks::now());
                    }
                    note_process(&processes, &ev, clocks.get());
                    tracing::debug!(kind = ?ev.kind, pid = ev.pid, cgid = ev.cgid, comm = %ev.comm, status = ?ev.status, tool = ev.tool, "process event");
                    if ev.kind == TeleKind::Exit && ev.tool {
                        let exit = ExitInfo::from_wait_status(ev.status.unwrap_or(0) as i32);
                        let _ = exits.send((ev.cgid, exit));
                    }
                });
                if let Err(e) = res {
                    tracing::error!("telemetry ring buffer: {e}; event thread stops (the sweep ends calls instead)");
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("starting the telemetry event thread: {e}");
    }
}

/// Ends calls as their tools exit; what a call's tool left behind is watched
/// ([`supervisor::settle_leftovers`]) before it is killed.
async fn end_calls(
    shared: Shared,
    wakers: Arc<Wakers>,
    mut exits: UnboundedReceiver<ToolExitEvent>,
) {
    while let Some((cgid, exit)) = exits.recv().await {
        if end_call(&shared, &wakers, cgid, exit, false) {
            continue;
        }
        let shared = shared.clone();
        let wakers = wakers.clone();
        tokio::spawn(async move {
            let id = shared.lock().ok().and_then(|c| c.call_by_cgroup(cgid));
            if let Some(id) = id {
                supervisor::settle_leftovers(&shared, id).await;
            }
            end_call(&shared, &wakers, cgid, exit, true);
        });
    }
}

/// One attempt to end the call whose tool exited; false while its cgroup is populated.
fn end_call(shared: &Shared, wakers: &Wakers, cgid: u64, exit: ExitInfo, force: bool) -> bool {
    let Ok(mut c) = shared.lock() else {
        tracing::error!("controller lock poisoned");
        return true;
    };
    match c.tool_exited(cgid, exit, force) {
        ToolExit::Populated => return false,
        ToolExit::NotRunning => return true,
        ToolExit::Ended(rec) => {
            tracing::debug!(call_id = rec.call_id, outcome = ?rec.outcome, "call ended: its tool exited")
        }
    }
    drop(c);
    wakers.ended.notify_waiters();
    true
}
