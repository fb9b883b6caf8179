//! Loads and supervises `agentcg_sched`, the sched_ext scheduler of `ebpf/sched.bpf.c`
//! (its design is described at the top of that file), and gives userspace its maps:
//! per-cgroup policies written before a cgroup's first task runs, per-cgroup CPU usage,
//! the budget ring buffer, and the exit info the BPF side records when the kernel or
//! the scheduler itself ends it (UEI, docs/ARCHITECTURE.md#scheduler-exit).
//!
//! Loading goes through scx_utils' `scx_ops_open!`/`scx_ops_load!`/`scx_ops_attach!`,
//! which handle the kernel-version compatibility of `struct sched_ext_ops` and import
//! the kernel's sched_ext enum values into the object's rodata. As in `telemetry.rs`,
//! the skeleton lives only during [`Scheduler::load`]: afterwards we keep the struct_ops
//! link (which keeps the programs and maps alive) and duplicated map fds. The fd of the
//! `timers` map must stay open: the kernel cancels a map's BPF timers when its last
//! userspace reference goes.
//!
//! Caveat of scx_utils 1.1.4: `scx_ops_load!` stores a pointer to the skeleton's UEI
//! dump area in the process-global `scx_utils::UEI_DUMP_PTR_MUTEX`; it dangles once
//! `load` returns. Nothing here reads it (exit info is read through the `.data` map fd),
//! and nothing else in this process may call `scx_utils::uei_read!`.

use std::mem::{MaybeUninit, offset_of};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libbpf_rs::{ErrorKind, Link, MapCore as _, MapFlags, MapHandle, OpenObject};
use scx_utils::scx_ops_attach;
use serde::Serialize;

use crate::abi::{
    BudgetEvent, CgroupPolicy, CgroupUsage, SCHED_CTRL_ERROR, SCHED_CTRL_EXIT, SCHED_MAX_POLICIES,
    SCHED_WEIGHT_MAX, SchedFlags,
};
use crate::error::BpfError;
use crate::events::{EventQueue, lock};
use crate::libbpf_log::Capture;
use crate::sched_skel::{SchedSkelBuilder, types};

/// Name of the BPF object, for error messages.
const OBJECT: &str = "sched.bpf.o";
/// The name the scheduler registers under (scx_utils appends a version suffix).
pub const SCHED_NAME: &str = "agentcg_sched";
const POLICIES: &str = "policies";
const USAGE: &str = "usage";
const CGRPS: &str = "cgrps";
const EVENTS: &str = "budget_events";
const CTRL: &str = "ctrl";
const DATA: &str = ".data";
const BSS: &str = ".bss";
const DUMP: &str = ".data.uei_dump";
/// `SCX_OPS_SWITCH_PARTIAL` in the kernel's `enum scx_ops_flags`.
const SCX_OPS_SWITCH_PARTIAL: u64 = 8;
/// Where the kernel reports the sched_ext state and the running scheduler.
const SCX_STATE: &str = "/sys/kernel/sched_ext/state";
const SCX_ROOT_OPS: &str = "/sys/kernel/sched_ext/root/ops";

/// Tunables set between open and load (the scheduler's `const volatile` globals), and
/// the maps shared with other objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchedOptions {
    /// Time slice of a task.
    pub slice: Duration,
    /// Virtual-time credit of a NORMAL cgroup that wakes up after being idle (HIGH and
    /// RUNTIME get twice as much, LOW and MEM_PRESSURE none).
    pub wake_lag: Duration,
    /// A waking RUNTIME task preempts only while its cgroup's clock is at most this far
    /// ahead of the global clock (keeps a busy runtime from starving tool calls).
    pub runtime_boost_lag: Duration,
    /// Share of one CPU, in percent, that a cgroup keeps after its CPU budget ran out.
    pub budget_floor_pct: u32,
    /// Divisor of the weight of a cgroup flagged MEM_PRESSURE.
    pub mem_pressure_div: u32,
    /// `SCX_OPS_SWITCH_PARTIAL`: schedule only tasks whose policy is `SCHED_EXT`, below
    /// the fair class. Off by default: the crate docs give the measurement (fair-class
    /// tasks starve the scheduler's tasks).
    pub switch_partial: bool,
    /// Test-only: let [`Scheduler::force_exit`] make the scheduler exit.
    pub allow_forced_exit: bool,
    /// The `mem_state` map shared with the memory programs ([`crate::MemWatch`]): a
    /// cgroup with an agentcg policy whose state has `OVER_HIGH` or `DEPRIORITIZE` is
    /// treated like one flagged [`SchedFlags::MEM_PRESSURE`]. `None`: the scheduler
    /// creates a private one that nothing writes (only the policy flag counts).
    #[serde(skip)]
    pub mem_state: Option<crate::mem::MemStateMap>,
}

impl Default for SchedOptions {
    fn default() -> Self {
        Self {
            slice: Duration::from_millis(5),
            wake_lag: Duration::from_millis(10),
            runtime_boost_lag: Duration::from_millis(20),
            budget_floor_pct: 5,
            mem_pressure_div: 4,
            switch_partial: false,
            allow_forced_exit: false,
            mem_state: None,
        }
    }
}

/// Why the scheduler stopped (`enum scx_exit_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// `SCX_EXIT_DONE`.
    Done,
    /// `SCX_EXIT_UNREG`: userspace detached it.
    Unregistered,
    /// `SCX_EXIT_UNREG_BPF`: the BPF side asked to exit (`scx_bpf_exit`).
    UnregisteredByBpf,
    /// `SCX_EXIT_UNREG_KERN`: the kernel unregistered it.
    UnregisteredByKernel,
    /// `SCX_EXIT_SYSRQ`: an operator pressed SysRq-S.
    SysRq,
    /// `SCX_EXIT_ERROR`: the kernel found a bug in the scheduler.
    Error,
    /// `SCX_EXIT_ERROR_BPF`: the BPF side reported an error (`scx_bpf_error`).
    ErrorBpf,
    /// `SCX_EXIT_ERROR_STALL`: the watchdog saw a runnable task starve.
    Stall,
    /// A kind this version does not know.
    Other(i32),
}

impl ExitKind {
    fn from_raw(kind: i32) -> Self {
        use scx_utils::ScxExitKind as K;
        match kind {
            k if k == K::Done as i32 => Self::Done,
            k if k == K::Unreg as i32 => Self::Unregistered,
            k if k == K::UnregBPF as i32 => Self::UnregisteredByBpf,
            k if k == K::UnregKern as i32 => Self::UnregisteredByKernel,
            k if k == K::SysRq as i32 => Self::SysRq,
            k if k == K::Error as i32 => Self::Error,
            k if k == K::ErrorBPF as i32 => Self::ErrorBpf,
            k if k == K::ErrorStall as i32 => Self::Stall,
            k => Self::Other(k),
        }
    }

    /// Whether the exit is an error (as opposed to an unregistration).
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Self::Error | Self::ErrorBpf | Self::Stall | Self::Other(_)
        )
    }
}

/// What the BPF side recorded in `ops.exit` (the UEI protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    /// Why it stopped.
    pub kind: ExitKind,
    /// The exit code (`scx_bpf_exit`'s, or the kernel's `SCX_ECODE_*` bits).
    pub exit_code: i64,
    /// The kernel's short reason ("runnable task stall", "scx_bpf_error", ...).
    pub reason: String,
    /// The detailed message (which task stalled, what the BPF side said).
    pub message: String,
    /// The kernel's debug dump (scheduler state at the exit), possibly empty.
    pub dump: String,
}

/// How long each phase of [`Scheduler::load`] took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SchedLoadTimings {
    /// Opening the embedded object and setting rodata (no syscalls but BTF reads).
    pub open: Duration,
    /// Creating the maps, verifying and loading the programs.
    pub load: Duration,
    /// Registering the struct_ops (switching the tasks to the scheduler).
    pub attach: Duration,
}

/// Counters of the BPF side (its `.bss`), cumulative since load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SchedStats {
    /// Budget events emitted.
    pub budget_events: u64,
    /// Budget events lost because the ring buffer was full.
    pub budget_event_drops: u64,
    /// RUNTIME-class wake-ups that preempted the running task.
    pub boosted_wakeups: u64,
    /// Times a task was parked because its cgroup was throttled.
    pub parked: u64,
    /// Cgroups or tasks the scheduler found without a node (full map).
    pub missing_nodes: u64,
    /// Boosted wake-ups enqueued from another CPU than the one they preempt.
    pub boost_remote: u64,
    /// Synchronous wake-ups run next on the waker's CPU, bypassing the shared queue.
    pub sync_local: u64,
    /// Boosted wake-up to running, in µs: <50, <200, <1000, <3000, <10000, more.
    pub boost_latency_hist: [u64; 6],
}

/// The map fds the scheduler keeps after [`Scheduler::load`].
#[derive(Debug)]
struct Maps {
    policies: MapHandle,
    usage: MapHandle,
    cgrps: MapHandle,
    ctrl: MapHandle,
    data: MapHandle,
    bss: MapHandle,
    dump: MapHandle,
    /// Keeps the kick timer armed (see the module note).
    _timers: MapHandle,
}

/// The loaded and attached `agentcg_sched` scheduler.
///
/// Dropping it (or [`Scheduler::detach`]) unregisters the scheduler: every task goes
/// back to the kernel's fair class, which honours `cpu.weight` and `cpu.max` itself.
///
/// `Scheduler` is `Send + Sync`: map operations go through the kernel on fds owned by
/// this struct and the ring-buffer consumer sits behind a mutex, so a daemon may keep
/// it in an `Arc`, poll budget events from one dedicated blocking thread, watch
/// [`Scheduler::exit_info`] from another and set policies from any.
pub struct Scheduler {
    maps: Maps,
    events: EventQueue<BudgetEvent>,
    link: Mutex<Option<Link>>,
    ops_name: String,
    timings: SchedLoadTimings,
}

const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Scheduler>();
};

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("ops_name", &self.ops_name)
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}

/// scx_utils' macros report `anyhow` errors; keep their whole chain as the source.
fn scx_error(err: &anyhow::Error) -> libbpf_rs::Error {
    libbpf_rs::Error::from(std::io::Error::other(format!("{err:#}")))
}

fn map_err(
    op: &'static str,
    map: &'static str,
    cgid: u64,
) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
    move |source| BpfError::Map {
        op,
        map,
        cgid,
        source,
    }
}

fn dup(map: &libbpf_rs::MapMut<'_>, name: &'static str) -> Result<MapHandle, BpfError> {
    MapHandle::try_from(map).map_err(map_err("duplicating the fd of", name, 0))
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn read_u64(bytes: &[u8], off: usize) -> u64 {
    bytes
        .get(off..off + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

type OpenSkel<'a> = crate::sched_skel::OpenSchedSkel<'a>;
type LoadedSkel<'a> = crate::sched_skel::SchedSkel<'a>;

/// Writes the tunables into rodata and the ops flags into the struct_ops data.
fn configure(open: &mut OpenSkel<'_>, opts: &SchedOptions) {
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.slice_ns = ns(opts.slice).max(100_000);
        ro.wake_lag_ns = ns(opts.wake_lag);
        ro.runtime_boost_lag_ns = ns(opts.runtime_boost_lag);
        ro.budget_floor_pct = opts.budget_floor_pct.clamp(1, 100);
        ro.mem_pressure_div = opts.mem_pressure_div.max(1);
        ro.allow_forced_exit = opts.allow_forced_exit;
    }
    if opts.switch_partial {
        open.struct_ops.agentcg_ops_mut().flags |= SCX_OPS_SWITCH_PARTIAL;
    }
}

fn ops_name(open: &OpenSkel<'_>) -> String {
    let name: Vec<u8> = open
        .struct_ops
        .agentcg_ops()
        .name
        .iter()
        .map(|&c| c as u8)
        .collect();
    c_string(&name)
}

/// Opens the skeleton through `scx_ops_open!` and applies `opts`.
fn open_skel<'a>(
    slot: &'a mut MaybeUninit<OpenObject>,
    opts: &SchedOptions,
    capture: &Capture,
) -> Result<OpenSkel<'a>, BpfError> {
    let builder = SchedSkelBuilder::default();
    let mut open: OpenSkel<'a> = scx_utils::scx_ops_open!(
        builder,
        slot,
        agentcg_ops,
        None::<libbpf_rs::libbpf_sys::bpf_object_open_opts>
    )
    .map_err(|e| BpfError::Open {
        object: OBJECT,
        source: scx_error(&e),
        log: capture.take(),
    })?;
    configure(&mut open, opts);
    if let Some(shared) = &opts.mem_state {
        open.maps
            .mem_state
            .reuse_fd(shared.fd())
            .map_err(|source| BpfError::Open {
                object: OBJECT,
                source,
                log: capture.take(),
            })?;
    }
    Ok(open)
}

fn keep_maps(skel: &LoadedSkel<'_>) -> Result<Maps, BpfError> {
    Ok(Maps {
        policies: dup(&skel.maps.policies, POLICIES)?,
        usage: dup(&skel.maps.usage, USAGE)?,
        cgrps: dup(&skel.maps.cgrps, CGRPS)?,
        ctrl: dup(&skel.maps.ctrl, CTRL)?,
        data: dup(&skel.maps.data, DATA)?,
        bss: dup(&skel.maps.bss, BSS)?,
        dump: dup(&skel.maps.data_uei_dump, DUMP)?,
        _timers: dup(&skel.maps.timers, "timers")?,
    })
}

impl Scheduler {
    /// Opens, loads (verifier) and attaches the scheduler: from the return on, every
    /// task of the host (or, with `switch_partial`, every `SCHED_EXT` task) is
    /// scheduled by it.
    ///
    /// Needs root and a kernel with sched_ext; fails with [`BpfError::Attach`] when
    /// another sched_ext scheduler is running. libbpf's output, the verifier log
    /// included, is captured into the error.
    pub fn load(opts: &SchedOptions) -> Result<Self, BpfError> {
        let capture = Capture::start();
        let t0 = Instant::now();
        let mut slot = MaybeUninit::<OpenObject>::uninit();
        let mut open = open_skel(&mut slot, opts, &capture)?;
        let name = ops_name(&open);
        let t1 = Instant::now();
        let mut skel: LoadedSkel<'_> =
            scx_utils::scx_ops_load!(open, agentcg_ops, uei).map_err(|e| BpfError::Load {
                object: OBJECT,
                source: scx_error(&e),
                log: capture.take(),
            })?;
        let t2 = Instant::now();
        let maps = keep_maps(&skel)?;
        let events = EventQueue::new(dup(&skel.maps.budget_events, EVENTS)?, EVENTS)?;
        let link = scx_ops_attach!(skel, agentcg_ops).map_err(|e| BpfError::Attach {
            program: format!("struct_ops {name}"),
            source: scx_error(&e),
            log: capture.take(),
        })?;
        let attach = t2.elapsed();
        drop(skel);
        Ok(Self {
            maps,
            events,
            link: Mutex::new(Some(link)),
            ops_name: name,
            timings: SchedLoadTimings {
                open: t1 - t0,
                load: t2 - t1,
                attach,
            },
        })
    }

    /// How long the phases of [`Scheduler::load`] took.
    pub fn timings(&self) -> SchedLoadTimings {
        self.timings
    }

    /// The name the scheduler registered under (`/sys/kernel/sched_ext/root/ops`).
    pub fn ops_name(&self) -> &str {
        &self.ops_name
    }

    /// Sets the policy of cgroup `cgid` (the inode number of its cgroup v2 directory).
    /// Call it before the first task enters the cgroup. The cgroup's usage starts at
    /// zero the first time; setting a policy again keeps the usage, and re-arms the
    /// budget if the new one is larger than what was used.
    pub fn set_cgroup(&self, cgid: u64, policy: CgroupPolicy) -> Result<(), BpfError> {
        if policy.weight > SCHED_WEIGHT_MAX {
            return Err(BpfError::Map {
                op: "insert (policy weight must be 0 or 1..=10000)",
                map: POLICIES,
                cgid,
                source: libbpf_rs::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        self.init_usage(cgid, policy)?;
        self.maps
            .policies
            .update(&cgid.to_ne_bytes(), &policy.to_bytes(), MapFlags::ANY)
            .map_err(|source| self.insert_error(POLICIES, cgid, source))
    }

    /// Creates the zeroed usage entry, or re-arms an exhausted budget that was raised.
    fn init_usage(&self, cgid: u64, policy: CgroupPolicy) -> Result<(), BpfError> {
        let key = cgid.to_ne_bytes();
        match self.usage(cgid)? {
            None => self
                .maps
                .usage
                .update(&key, &CgroupUsage::default().to_bytes(), MapFlags::NO_EXIST)
                .or_else(|e| {
                    if e.kind() == ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|source| self.insert_error(USAGE, cgid, source)),
            Some(u) if u.exhausted != 0 && policy.budget.is_none_or(|b| ns(b) > u.runtime_ns) => {
                let rearmed = CgroupUsage {
                    exhausted: 0,
                    exhausted_ns: 0,
                    ..u
                };
                self.maps
                    .usage
                    .update(&key, &rearmed.to_bytes(), MapFlags::EXIST)
                    .map_err(map_err("re-arm", USAGE, cgid))
            }
            Some(_) => Ok(()),
        }
    }

    fn insert_error(&self, map: &'static str, cgid: u64, source: libbpf_rs::Error) -> BpfError {
        if source.kind() == ErrorKind::TooBig {
            BpfError::MapFull {
                map,
                cgid,
                capacity: SCHED_MAX_POLICIES,
            }
        } else {
            BpfError::Map {
                op: "insert",
                map,
                cgid,
                source,
            }
        }
    }

    /// The policy of `cgid`, `None` if it has none.
    pub fn policy(&self, cgid: u64) -> Result<Option<CgroupPolicy>, BpfError> {
        let value = self
            .maps
            .policies
            .lookup(&cgid.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("lookup", POLICIES, cgid))?;
        value
            .map(|v| {
                CgroupPolicy::from_bytes(&v).ok_or(BpfError::ValueSize {
                    map: POLICIES,
                    expected: CgroupPolicy::SIZE,
                    got: v.len(),
                })
            })
            .transpose()
    }

    /// Replaces the flags of `cgid`'s policy (e.g. [`SchedFlags::MEM_PRESSURE`] from
    /// the memory side). Fails with `ENOENT` if the cgroup has no policy.
    pub fn set_flags(&self, cgid: u64, flags: SchedFlags) -> Result<(), BpfError> {
        let mut policy = self.policy(cgid)?.ok_or_else(|| BpfError::Map {
            op: "set flags (the cgroup has no policy: set_cgroup first)",
            map: POLICIES,
            cgid,
            source: libbpf_rs::Error::from_raw_os_error(libc::ENOENT),
        })?;
        policy.flags = flags;
        self.maps
            .policies
            .update(&cgid.to_ne_bytes(), &policy.to_bytes(), MapFlags::EXIST)
            .map_err(map_err("set flags", POLICIES, cgid))
    }

    /// The CPU time charged to `cgid` so far, `None` if it has no policy.
    pub fn usage(&self, cgid: u64) -> Result<Option<CgroupUsage>, BpfError> {
        let value = self
            .maps
            .usage
            .lookup(&cgid.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("lookup", USAGE, cgid))?;
        value.map(|v| decode_usage(&v)).transpose()
    }

    /// Forgets `cgid` (its cgroup is gone or no longer agentcg's) and returns its final
    /// usage, `None` if it had none. The scheduler also forgets a cgroup by itself when
    /// the kernel destroys it (`ops.cgroup_exit`).
    pub fn remove_cgroup(&self, cgid: u64) -> Result<Option<CgroupUsage>, BpfError> {
        let key = cgid.to_ne_bytes();
        let usage = self.maps.usage.lookup_and_delete(&key).map_err(map_err(
            "lookup-and-delete",
            USAGE,
            cgid,
        ))?;
        if let Err(source) = self.maps.policies.delete(&key)
            && source.kind() != ErrorKind::NotFound
        {
            return Err(BpfError::Map {
                op: "delete",
                map: POLICIES,
                cgid,
                source,
            });
        }
        usage.map(|v| decode_usage(&v)).transpose()
    }

    /// How many cgroups have a policy. Walks the map's keys: O(n), approximate while
    /// other threads change it.
    pub fn entries(&self) -> usize {
        self.maps.policies.keys().count()
    }

    /// How many cgroups have a usage entry (should equal [`Scheduler::entries`]).
    pub fn usage_entries(&self) -> usize {
        self.maps.usage.keys().count()
    }

    /// How many cgroups the scheduler tracks internally (every cgroup of the host with
    /// the cpu controller; created and removed by the kernel's cgroup callbacks).
    pub fn node_entries(&self) -> usize {
        self.maps.cgrps.keys().count()
    }

    /// The counters of the BPF side.
    pub fn stats(&self) -> Result<SchedStats, BpfError> {
        let bss = self
            .maps
            .bss
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("lookup", BSS, 0))?
            .unwrap_or_default();
        let at = |off| read_u64(&bss, off);
        Ok(SchedStats {
            budget_events: at(offset_of!(types::bss, nr_budget_events)),
            budget_event_drops: at(offset_of!(types::bss, nr_budget_event_drops)),
            boosted_wakeups: at(offset_of!(types::bss, nr_boosted_wakeups)),
            parked: at(offset_of!(types::bss, nr_parked)),
            missing_nodes: at(offset_of!(types::bss, nr_missing_nodes)),
            boost_remote: at(offset_of!(types::bss, nr_boost_remote)),
            sync_local: at(offset_of!(types::bss, nr_sync_local)),
            boost_latency_hist: std::array::from_fn(|i| {
                at(offset_of!(types::bss, boost_lat_hist) + 8 * i)
            }),
        })
    }

    /// Waits up to `timeout` for budget events, then hands every event received so far
    /// to `f`, in order, and returns how many it handed out. `Duration::ZERO` only
    /// drains. Blocking: call it from a dedicated thread. `f` runs with no lock held.
    pub fn poll_budget_events(
        &self,
        timeout: Duration,
        f: impl FnMut(BudgetEvent),
    ) -> Result<usize, BpfError> {
        self.events.poll(timeout, f)
    }

    /// Ring-buffer records that did not decode, cumulative.
    pub fn malformed_events(&self) -> u64 {
        self.events.malformed()
    }

    /// Why the scheduler stopped, `None` while it runs (or if the exit info cannot be
    /// read, which [`Scheduler::try_exit_info`] reports).
    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.try_exit_info().ok().flatten()
    }

    /// Like [`Scheduler::exit_info`], with the map error if the read fails.
    pub fn try_exit_info(&self) -> Result<Option<ExitInfo>, BpfError> {
        let data = self
            .maps
            .data
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("lookup", DATA, 0))?
            .unwrap_or_default();
        let Some(uei) = data.get(offset_of!(types::data, uei)..) else {
            return Err(BpfError::ValueSize {
                map: DATA,
                expected: offset_of!(types::data, uei) + size_of::<types::user_exit_info>(),
                got: data.len(),
            });
        };
        let kind = uei
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_ne_bytes);
        if kind == 0 {
            return Ok(None);
        }
        let field = |off: usize, len: usize| c_string(uei.get(off..off + len).unwrap_or_default());
        let dump = self
            .maps
            .dump
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|d| c_string(&d))
            .unwrap_or_default();
        Ok(Some(ExitInfo {
            kind: ExitKind::from_raw(kind),
            exit_code: read_u64(uei, offset_of!(types::user_exit_info, exit_code)) as i64,
            reason: field(offset_of!(types::user_exit_info, reason), 128),
            message: field(offset_of!(types::user_exit_info, msg), 1024),
            dump,
        }))
    }

    /// Whether this scheduler is the one the kernel runs now: attached, no exit
    /// recorded, and `/sys/kernel/sched_ext` names it (docs/ARCHITECTURE.md#bpf-pitfalls,
    /// pitfall 6: after an ejection the kernel's own scheduler takes over silently).
    pub fn is_attached(&self) -> bool {
        let read = |p| std::fs::read_to_string(p).unwrap_or_default();
        lock(&self.link).is_some()
            && self.exit_info().is_none()
            && read(SCX_STATE).trim() == "enabled"
            && read(SCX_ROOT_OPS).trim() == self.ops_name
    }

    /// Test-only: makes the scheduler exit from its next tick or dispatch, cleanly
    /// (`error == false`, `scx_bpf_exit`) or as an error (`scx_bpf_error`). Has no effect
    /// unless it was loaded with [`SchedOptions::allow_forced_exit`].
    pub fn force_exit(&self, error: bool) -> Result<(), BpfError> {
        let cmd = if error {
            SCHED_CTRL_ERROR
        } else {
            SCHED_CTRL_EXIT
        };
        self.maps
            .ctrl
            .update(&0u32.to_ne_bytes(), &cmd.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("update", CTRL, 0))
    }

    /// Unregisters the scheduler; tasks go back to the kernel's fair class. Dropping the
    /// `Scheduler` does the same; this form lets a shared (`Arc`) owner detach.
    pub fn detach(&self) {
        drop(lock(&self.link).take());
    }
}

fn decode_usage(bytes: &[u8]) -> Result<CgroupUsage, BpfError> {
    CgroupUsage::from_bytes(bytes).ok_or(BpfError::ValueSize {
        map: USAGE,
        expected: CgroupUsage::SIZE,
        got: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use libbpf_rs::MapType;
    use libbpf_rs::skel::SkelBuilder as _;

    use super::*;
    use crate::abi::{SCHED_EVENTS_BYTES, SCHED_MAX_CGROUPS};

    /// Opening parses the embedded ELF and makes no bpf() calls: no root needed, and no
    /// sched_ext kernel (scx_ops_open! would read the kernel's BTF, so it is not used).
    #[test]
    fn skeleton_opens_with_the_maps_of_the_abi() {
        let mut slot = MaybeUninit::<OpenObject>::uninit();
        let open = SchedSkelBuilder::default()
            .open(&mut slot)
            .expect("skeleton opens");
        let m = &open.maps;
        for (map, max) in [
            (&m.policies, SCHED_MAX_POLICIES),
            (&m.usage, SCHED_MAX_POLICIES),
            (&m.cgrps, SCHED_MAX_CGROUPS),
        ] {
            assert_eq!(map.map_type(), MapType::Hash);
            assert_eq!(map.key_size(), 8);
            assert_eq!(map.max_entries(), max);
        }
        assert_eq!(m.policies.value_size() as usize, CgroupPolicy::SIZE);
        assert_eq!(m.usage.value_size() as usize, CgroupUsage::SIZE);
        assert_eq!(m.budget_events.map_type(), MapType::RingBuf);
        assert_eq!(m.budget_events.max_entries(), SCHED_EVENTS_BYTES);
        assert_eq!(m.ctrl.value_size(), 4);
        assert_eq!(ops_name(&open), SCHED_NAME);
        assert_eq!(
            open.struct_ops.agentcg_ops().flags & SCX_OPS_SWITCH_PARTIAL,
            0
        );
    }

    #[test]
    fn options_reach_rodata_and_the_ops_flags() {
        let mut slot = MaybeUninit::<OpenObject>::uninit();
        let mut open = SchedSkelBuilder::default()
            .open(&mut slot)
            .expect("skeleton opens");
        let opts = SchedOptions {
            slice: Duration::from_millis(3),
            budget_floor_pct: 0,
            switch_partial: true,
            allow_forced_exit: true,
            ..SchedOptions::default()
        };
        configure(&mut open, &opts);
        let ro = open.maps.rodata_data.as_deref().expect("rodata");
        assert_eq!(ro.slice_ns, 3_000_000);
        assert_eq!(ro.budget_floor_pct, 1, "clamped to at least 1 %");
        assert_eq!(ro.mem_pressure_div, 4);
        assert!(ro.allow_forced_exit);
        assert_ne!(
            open.struct_ops.agentcg_ops().flags & SCX_OPS_SWITCH_PARTIAL,
            0
        );
    }

    #[test]
    fn abi_types_match_the_skeleton_types_generated_from_btf() {
        assert_eq!(size_of::<types::sched_policy>(), CgroupPolicy::SIZE);
        assert_eq!(size_of::<types::sched_usage>(), CgroupUsage::SIZE);
        assert_eq!(offset_of!(types::sched_policy, budget_ns), 8);
        assert_eq!(offset_of!(types::sched_usage, exhausted_ns), 16);
        assert_eq!(offset_of!(types::user_exit_info, reason), 16);
        assert_eq!(offset_of!(types::user_exit_info, msg), 16 + 128);
    }

    #[test]
    fn exit_kinds_follow_the_kernel_enum() {
        assert_eq!(ExitKind::from_raw(64), ExitKind::Unregistered);
        assert_eq!(ExitKind::from_raw(65), ExitKind::UnregisteredByBpf);
        assert_eq!(ExitKind::from_raw(1025), ExitKind::ErrorBpf);
        assert_eq!(ExitKind::from_raw(1026), ExitKind::Stall);
        assert_eq!(ExitKind::from_raw(7), ExitKind::Other(7));
        assert!(ExitKind::Stall.is_error() && !ExitKind::UnregisteredByBpf.is_error());
    }
}
