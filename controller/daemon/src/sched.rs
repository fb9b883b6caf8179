//! The sched_ext side of CPU enforcement: loads agentcg_sched, writes each cgroup's
//! class and budget into its maps (before anything runs in the cgroup), turns budget
//! events into the policy's action, and supervises the scheduler: when it exits
//! (error, watchdog, SysRq-S) the reason is logged and reported by `agentcg status`,
//! and agentcgd reloads it or falls back to the kernel cpu controller, which is
//! configured for every cgroup anyway, so calls are never left unconstrained.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentcg_bpf::{CgroupPolicy, MemStateMap, SchedClass, SchedFlags, SchedOptions, Scheduler};
use agentcg_core::controller::{CgroupRole, KernelHooks};
use agentcg_core::events::{EventBody, EventBus};
use agentcg_core::intent::Priority;
use agentcg_core::policy::{CpuPolicy, SchedulerExit};
use agentcg_core::record::ProcessCounts;
use serde::Serialize;

use crate::supervisor::Shared;

const HOOKS: &str = "sched_ext";
/// How long one wait for budget events lasts, which is also the exit-check period:
/// budget events wake the thread at once; a scheduler exit is noticed within this
/// (the kernel has already fallen back to its own scheduler by then). Each wake-up
/// costs CPU on an idle host (measured: 10 per second were most of an idle daemon's
/// 0.9 % of a CPU in the emulated VM).
const POLL: Duration = Duration::from_millis(500);

/// What `agentcg status` shows about the CPU scheduler.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SchedStatus {
    /// `sched_ext` while agentcg_sched is attached, else `kernel`.
    pub active: String,
    pub detail: String,
    pub reloads: u32,
    pub last_exit: Option<agentcg_bpf::ExitInfo>,
    /// The attached scheduler, for the metrics scrape (its counters and map sizes).
    #[serde(skip)]
    pub attached: Option<Arc<Scheduler>>,
}

pub type SharedStatus = Arc<Mutex<SchedStatus>>;

/// The scheduler's class for a cgroup of the subtree.
pub fn policy_for(role: CgroupRole<'_>) -> CgroupPolicy {
    let class = |p: Priority| match p {
        Priority::High => SchedClass::High,
        Priority::Normal => SchedClass::Normal,
        Priority::Low => SchedClass::Low,
    };
    let (class, budget) = match role {
        CgroupRole::Session(plan) | CgroupRole::Calls(plan) => (class(plan.priority), None),
        CgroupRole::Runtime(_) => (SchedClass::Runtime, None),
        CgroupRole::Call(l) => (
            class(l.priority),
            l.cpu_budget_ms.map(Duration::from_millis),
        ),
    };
    // weight 0: follow the cgroup's cpu.weight, which agentcgd writes from the plan.
    CgroupPolicy {
        class,
        weight: 0,
        budget,
        flags: SchedFlags::NONE,
    }
}

/// Writes cgroup policies into the scheduler's maps.
#[derive(Debug)]
struct SchedHooks {
    sched: Arc<Scheduler>,
}

impl KernelHooks for SchedHooks {
    fn name(&self) -> &'static str {
        HOOKS
    }

    fn created(&mut self, cgroup_id: u64, role: CgroupRole<'_>) {
        if let Err(e) = self.sched.set_cgroup(cgroup_id, policy_for(role)) {
            tracing::warn!(cgroup_id, "sched_ext policy: {e}");
        }
    }

    fn removing(&mut self, cgroup_id: u64) -> Option<ProcessCounts> {
        if let Err(e) = self.sched.remove_cgroup(cgroup_id) {
            tracing::warn!(cgroup_id, "sched_ext policy removal: {e}");
        }
        None
    }
}

fn kernel_mode(status: &SharedStatus, detail: String) {
    if let Ok(mut s) = status.lock() {
        s.active = "kernel".into();
        s.detail = detail;
        s.attached = None;
    }
}

/// Loads the scheduler, registers its hooks with the controller (which replays the
/// existing cgroups into its maps) and returns it.
fn attach(
    shared: &Shared,
    status: &SharedStatus,
    mem_state: Option<&MemStateMap>,
) -> Result<Arc<Scheduler>, String> {
    let opts = SchedOptions {
        mem_state: mem_state.cloned(),
        ..SchedOptions::default()
    };
    let sched = Arc::new(Scheduler::load(&opts).map_err(|e| e.to_string())?);
    let t = sched.timings();
    tracing::info!(
        ops = sched.ops_name(),
        load_ms = t.load.as_millis(),
        "sched_ext scheduler attached"
    );
    if let Ok(mut c) = shared.lock() {
        c.add_hooks(Box::new(SchedHooks {
            sched: sched.clone(),
        }));
    }
    if let Ok(mut s) = status.lock() {
        s.active = "sched_ext".into();
        s.attached = Some(sched.clone());
        s.detail = format!(
            "{} (classes, hierarchical cpu.weight, cpu.max, per-call CPU budgets), over the kernel cpu controller",
            sched.ops_name()
        );
    }
    Ok(sched)
}

/// Starts CPU enforcement per the policy: the scheduler and its supervisor thread, or
/// the kernel cpu controller alone. Returns the status handle for `agentcg status`.
/// `mem_state` is the memory programs' state map, shared so that the scheduler
/// deprioritizes calls over their memory.high and the memory response's victims.
pub fn start(
    shared: Shared,
    cpu: CpuPolicy,
    sched_ext_present: bool,
    mem_state: Option<MemStateMap>,
    events: Arc<EventBus>,
) -> SharedStatus {
    let status: SharedStatus = Arc::default();
    use agentcg_core::policy::SchedulerChoice;
    if cpu.scheduler == SchedulerChoice::Kernel {
        kernel_mode(&status, "the policy says cpu.scheduler = \"kernel\"".into());
        return status;
    }
    if !sched_ext_present {
        kernel_mode(
            &status,
            "the kernel has no sched_ext (CONFIG_SCHED_CLASS_EXT)".into(),
        );
        return status;
    }
    match attach(&shared, &status, mem_state.as_ref()) {
        Ok(sched) => {
            let status2 = status.clone();
            let spawned = std::thread::Builder::new()
                .name("sched-supervisor".into())
                .spawn(move || supervise(shared, sched, status2, mem_state, events));
            if let Err(e) = spawned {
                tracing::error!("starting the scheduler supervisor: {e}");
            }
        }
        Err(why) => {
            tracing::warn!(
                "sched_ext scheduler not loaded ({why}); using the kernel cpu controller"
            );
            events.publish(EventBody::SchedulerFallback {
                reason: format!("failed to load: {why}"),
            });
            kernel_mode(
                &status,
                format!("sched_ext scheduler failed to load: {why}"),
            );
        }
    }
    status
}

/// Applies budget events and watches for the scheduler's exit. The actions come from
/// the policy in force at the time (a reload changes them for the next event).
fn supervise(
    shared: Shared,
    mut sched: Arc<Scheduler>,
    status: SharedStatus,
    mem_state: Option<MemStateMap>,
    events: Arc<EventBus>,
) {
    let mut reloads = 0;
    loop {
        let polled = sched.poll_budget_events(POLL, |ev| {
            let Ok(mut c) = shared.lock() else { return };
            let Some(call_id) = c.call_by_cgroup(ev.cgid) else {
                return;
            };
            let used_ms = ev.used_ns / 1_000_000;
            let action = c.policy().cpu.on_budget_exceeded;
            match c.cpu_budget_exceeded(call_id, action, used_ms) {
                Ok(_) => tracing::info!(
                    call_id,
                    used_ms,
                    budget_ms = ev.budget_ns / 1_000_000,
                    ?action,
                    "CPU budget exhausted"
                ),
                Err(e) => tracing::warn!(call_id, "applying the CPU budget action: {e}"),
            }
        });
        if let Err(e) = polled {
            tracing::warn!("sched_ext budget events: {e}");
            std::thread::sleep(POLL);
        }
        let Some(exit) = sched.exit_info() else {
            continue;
        };
        tracing::error!(kind = ?exit.kind, reason = %exit.reason, message = %exit.message, "sched_ext scheduler exited");
        if let Ok(mut c) = shared.lock() {
            c.remove_hooks(HOOKS);
        }
        let reason = format!("{:?}: {} {}", exit.kind, exit.reason, exit.message);
        events.publish(EventBody::SchedulerExit {
            reason: reason.clone(),
        });
        if let Ok(mut s) = status.lock() {
            s.last_exit = Some(exit);
        }
        kernel_mode(&status, format!("the scheduler exited ({reason})"));
        drop(sched);
        let Ok(cpu) = shared.lock().map(|c| c.policy().cpu) else {
            return;
        };
        if cpu.on_scheduler_exit == SchedulerExit::Fallback || reloads >= cpu.reload_limit {
            kernel_mode(
                &status,
                format!("fell back after the scheduler exited ({reason})"),
            );
            events.publish(EventBody::SchedulerFallback { reason });
            return;
        }
        reloads += 1;
        match attach(&shared, &status, mem_state.as_ref()) {
            Ok(s) => {
                tracing::info!(reloads, "sched_ext scheduler reloaded");
                events.publish(EventBody::SchedulerReloaded { attempt: reloads });
                if let Ok(mut st) = status.lock() {
                    st.reloads = reloads;
                }
                sched = s;
            }
            Err(why) => {
                kernel_mode(
                    &status,
                    format!("reload after exit ({reason}) failed: {why}"),
                );
                events.publish(EventBody::SchedulerFallback {
                    reason: format!("reload after exit ({reason}) failed: {why}"),
                });
                return;
            }
        }
    }
}
