//! Rust mirrors of `ebpf/intf.h`, the ABI shared with the BPF programs (the telemetry
//! programs and the `agentcg_sched` scheduler).
//!
//! Written by hand rather than with bindgen (libbpf-cargo does not pull bindgen in, and
//! two plain structs do not justify it): every size and field offset is asserted here at
//! compile time and in `intf.h` with `_Static_assert`, against the same numbers, and a
//! unit test compares `CallCounters` with the type libbpf-cargo generates from the BPF
//! object's BTF. Decoding goes through byte offsets, so no `unsafe` is needed.

use std::mem::{offset_of, size_of};
use std::time::Duration;

use serde::Serialize;

/// `TELE_EXEC` in `intf.h`.
const TELE_EXEC: u32 = 1;
/// `TELE_EXIT` in `intf.h`.
const TELE_EXIT: u32 = 2;
/// `TELE_FORK` in `intf.h`.
const TELE_FORK: u32 = 3;
/// `TELE_F_TOOL` in `intf.h`.
const TELE_F_TOOL: u32 = 1;
/// `TELE_F_ARGV_CUT` in `intf.h`.
const TELE_F_ARGV_CUT: u32 = 2;
/// `TELE_ARGV_BYTES` in `intf.h`: bytes of arguments an exec event carries.
pub const TELE_ARGV_BYTES: usize = 256;

/// `AGENTCG_MAX_WATCHED` in `intf.h`: capacity of the `watched` map.
pub const MAX_WATCHED: u32 = 16384;
/// `AGENTCG_EVENTS_BYTES` in `intf.h`: size of the `events` ring buffer.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Per-cgroup counters (`struct call_counters`), the value of the `watched` map.
///
/// Timestamps are `bpf_ktime_get_ns()`, i.e. `CLOCK_MONOTONIC` nanoseconds, 0 when the
/// event has not happened yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[repr(C)]
pub struct CallCounters {
    /// Successful `execve()` calls by tasks of the cgroup.
    pub execs: u64,
    /// New processes (not threads) forked by tasks of the cgroup.
    pub forks: u64,
    /// Processes of the cgroup that exited (their last thread).
    pub exits: u64,
    /// Time of the first exec, 0 if none.
    pub first_exec_ns: u64,
    /// Time of the latest process exit, 0 if none.
    pub last_exit_ns: u64,
    /// When the tool (the process born into the cgroup from outside) exited, 0 while it runs.
    pub tool_exit_ns: u64,
    /// The tool's process id, 0 until it is born or execs.
    pub tool_pid: u32,
    /// The tool's wait status, valid once `tool_exit_ns` is set.
    pub tool_status: u32,
}

const _: () = assert!(size_of::<CallCounters>() == 56);
const _: () = assert!(offset_of!(CallCounters, execs) == 0);
const _: () = assert!(offset_of!(CallCounters, forks) == 8);
const _: () = assert!(offset_of!(CallCounters, exits) == 16);
const _: () = assert!(offset_of!(CallCounters, first_exec_ns) == 24);
const _: () = assert!(offset_of!(CallCounters, last_exit_ns) == 32);
const _: () = assert!(offset_of!(CallCounters, tool_exit_ns) == 40);
const _: () = assert!(offset_of!(CallCounters, tool_pid) == 48);
const _: () = assert!(offset_of!(CallCounters, tool_status) == 52);

impl CallCounters {
    /// Size of the C struct in bytes.
    pub const SIZE: usize = size_of::<Self>();

    /// Decodes the map value bytes (native endian); `None` if the length is wrong.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        Some(Self {
            execs: u64_at(bytes, offset_of!(Self, execs))?,
            forks: u64_at(bytes, offset_of!(Self, forks))?,
            exits: u64_at(bytes, offset_of!(Self, exits))?,
            first_exec_ns: u64_at(bytes, offset_of!(Self, first_exec_ns))?,
            last_exit_ns: u64_at(bytes, offset_of!(Self, last_exit_ns))?,
            tool_exit_ns: u64_at(bytes, offset_of!(Self, tool_exit_ns))?,
            tool_pid: u32_at(bytes, offset_of!(Self, tool_pid))?,
            tool_status: u32_at(bytes, offset_of!(Self, tool_status))?,
        })
    }

    /// The tool's wait status once it has exited, as this one copy of the entry shows
    /// it. A copy that shows the exit time may still hold an older status on a weakly
    /// ordered CPU: while the tool may be exiting, ask [`crate::Telemetry::tool_exit`].
    pub fn tool_exit(&self) -> Option<u32> {
        (self.tool_exit_ns != 0).then_some(self.tool_status)
    }

    /// Encodes as map value bytes (native endian).
    pub(crate) fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        for (off, v) in [
            (offset_of!(Self, execs), self.execs),
            (offset_of!(Self, forks), self.forks),
            (offset_of!(Self, exits), self.exits),
            (offset_of!(Self, first_exec_ns), self.first_exec_ns),
            (offset_of!(Self, last_exit_ns), self.last_exit_ns),
            (offset_of!(Self, tool_exit_ns), self.tool_exit_ns),
        ] {
            out[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        }
        for (off, v) in [
            (offset_of!(Self, tool_pid), self.tool_pid),
            (offset_of!(Self, tool_status), self.tool_status),
        ] {
            out[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        }
        out
    }
}

/// Layout mirror of `struct tele_event`; only used for the size and offset checks and
/// the offsets [`TeleEvent::decode`] reads from.
#[repr(C)]
#[allow(dead_code)]
struct RawTeleEvent {
    kind: u32,
    pid: u32,
    cgid: u64,
    ts_ns: u64,
    comm: [u8; 16],
    status: u32,
    flags: u32,
    ppid: u32,
    argv_len: u32,
    argv: [u8; TELE_ARGV_BYTES],
}

const _: () = assert!(size_of::<RawTeleEvent>() == 312);
const _: () = assert!(offset_of!(RawTeleEvent, kind) == 0);
const _: () = assert!(offset_of!(RawTeleEvent, pid) == 4);
const _: () = assert!(offset_of!(RawTeleEvent, cgid) == 8);
const _: () = assert!(offset_of!(RawTeleEvent, ts_ns) == 16);
const _: () = assert!(offset_of!(RawTeleEvent, comm) == 24);
const _: () = assert!(offset_of!(RawTeleEvent, status) == 40);
const _: () = assert!(offset_of!(RawTeleEvent, flags) == 44);
const _: () = assert!(offset_of!(RawTeleEvent, ppid) == 48);
const _: () = assert!(offset_of!(RawTeleEvent, argv_len) == 52);
const _: () = assert!(offset_of!(RawTeleEvent, argv) == 56);

/// What a [`TeleEvent`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TeleKind {
    /// A process called `execve()`.
    Exec,
    /// A process exited (its last thread).
    Exit,
    /// A process created a new process; `pid` is the child's.
    Fork,
}

/// One ring-buffer record (`struct tele_event`), decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeleEvent {
    /// What happened.
    pub kind: TeleKind,
    /// Process id (tgid); for [`TeleKind::Fork`] the child's.
    pub pid: u32,
    /// Cgroup id (inode number of the cgroup v2 directory) of the task.
    pub cgid: u64,
    /// `CLOCK_MONOTONIC` nanoseconds when it happened.
    pub ts_ns: u64,
    /// Task comm (up to 15 bytes; after an exec, the new program's), lossily UTF-8.
    pub comm: String,
    /// [`TeleKind::Exit`]: the process's wait status (as `waitpid(2)` reports it).
    pub status: Option<u32>,
    /// [`TeleKind::Exit`] of the call's tool (the process born into the cgroup from outside):
    /// the call has ended.
    pub tool: bool,
    /// [`TeleKind::Exec`] and [`TeleKind::Fork`]: the parent's process id.
    pub ppid: Option<u32>,
    /// [`TeleKind::Exec`]: the arguments (at most [`TELE_ARGV_BYTES`] of them, lossily
    /// UTF-8; the last one may be cut).
    pub argv: Vec<String>,
    /// The arguments were longer than [`TELE_ARGV_BYTES`].
    pub argv_cut: bool,
}

/// NUL-separated arguments as a list (trailing NULs end the last one: an empty last
/// argument is not told apart from none).
fn split_argv(bytes: &[u8]) -> Vec<String> {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let bytes = &bytes[..end];
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

impl TeleEvent {
    /// Size of the C record in bytes.
    pub const SIZE: usize = size_of::<RawTeleEvent>();

    /// Decodes a ring-buffer record; `None` if the size or the kind is unknown.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        let kind = match u32_at(bytes, offset_of!(RawTeleEvent, kind))? {
            TELE_EXEC => TeleKind::Exec,
            TELE_EXIT => TeleKind::Exit,
            TELE_FORK => TeleKind::Fork,
            _ => return None,
        };
        let comm_at = offset_of!(RawTeleEvent, comm);
        let comm = bytes.get(comm_at..comm_at + 16)?;
        let comm = comm.split(|&b| b == 0).next().unwrap_or_default();
        let flags = u32_at(bytes, offset_of!(RawTeleEvent, flags))?;
        let argv_at = offset_of!(RawTeleEvent, argv);
        let argv_len =
            (u32_at(bytes, offset_of!(RawTeleEvent, argv_len))? as usize).min(TELE_ARGV_BYTES);
        let argv = match kind {
            TeleKind::Exec => split_argv(bytes.get(argv_at..argv_at + argv_len)?),
            _ => Vec::new(),
        };
        Some(Self {
            kind,
            pid: u32_at(bytes, offset_of!(RawTeleEvent, pid))?,
            cgid: u64_at(bytes, offset_of!(RawTeleEvent, cgid))?,
            ts_ns: u64_at(bytes, offset_of!(RawTeleEvent, ts_ns))?,
            comm: String::from_utf8_lossy(comm).into_owned(),
            status: (kind == TeleKind::Exit)
                .then(|| u32_at(bytes, offset_of!(RawTeleEvent, status)))
                .flatten(),
            tool: flags & TELE_F_TOOL != 0,
            ppid: (kind != TeleKind::Exit)
                .then(|| u32_at(bytes, offset_of!(RawTeleEvent, ppid)))
                .flatten(),
            argv,
            argv_cut: kind == TeleKind::Exec && flags & TELE_F_ARGV_CUT != 0,
        })
    }
}

// ---- agentcg_sched (ebpf/sched.bpf.c) ----

/// `AGENTCG_SCHED_MAX_POLICIES` in `intf.h`: capacity of the `policies` and `usage` maps.
pub const SCHED_MAX_POLICIES: u32 = 16384;
/// `AGENTCG_SCHED_MAX_CGROUPS` in `intf.h`: capacity of the scheduler's per-cgroup nodes.
pub const SCHED_MAX_CGROUPS: u32 = 65536;
/// `AGENTCG_SCHED_EVENTS_BYTES` in `intf.h`: size of the `budget_events` ring buffer.
pub const SCHED_EVENTS_BYTES: u32 = 64 * 1024;
/// `SCHED_WEIGHT_MAX` in `intf.h`: the largest policy weight (cgroup v2 `cpu.weight` range).
pub const SCHED_WEIGHT_MAX: u32 = 10000;
/// `SCHED_CTRL_EXIT` in `intf.h`.
pub(crate) const SCHED_CTRL_EXIT: u32 = 1;
/// `SCHED_CTRL_ERROR` in `intf.h`.
pub(crate) const SCHED_CTRL_ERROR: u32 = 2;
/// `SCHED_EXIT_CODE_REQUESTED` in `intf.h`: exit code of a requested exit.
pub const SCHED_EXIT_CODE_REQUESTED: i64 = 64;

/// The scheduling class of a cgroup (`SCHED_CLASS_*` in `intf.h`). Classes are latency
/// tiers; CPU shares come from weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedClass {
    /// A tool call of a normal-priority session: the default wake-up credit.
    #[default]
    Normal,
    /// An agent runtime: a waking task preempts tool-call tasks (while its cgroup has
    /// not used much more than its share).
    Runtime,
    /// A tool call of a high-priority session: twice the wake-up credit.
    High,
    /// A tool call of a low-priority session: no wake-up credit.
    Low,
}

impl SchedClass {
    fn to_raw(self) -> u32 {
        match self {
            Self::Normal => 0,
            Self::Runtime => 1,
            Self::High => 2,
            Self::Low => 3,
        }
    }

    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Normal,
            1 => Self::Runtime,
            2 => Self::High,
            3 => Self::Low,
            _ => return None,
        })
    }
}

/// Flags of a cgroup's policy (`SCHED_FLAG_*` in `intf.h`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct SchedFlags(pub u64);

impl SchedFlags {
    /// No flag.
    pub const NONE: Self = Self(0);
    /// The memory side saw the cgroup over `memory.high` or under pressure: its weight
    /// is divided (default by 4) and it gets no wake-up credit, so it allocates slower.
    pub const MEM_PRESSURE: Self = Self(1);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags with `other`'s bits set.
    #[must_use]
    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// These flags with `other`'s bits cleared.
    #[must_use]
    pub fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

/// What the scheduler applies to one cgroup (`struct sched_policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CgroupPolicy {
    /// The latency class.
    pub class: SchedClass,
    /// 1..=10000 overrides the cgroup's `cpu.weight` among its siblings; 0 follows it.
    pub weight: u32,
    /// Cumulative CPU budget of the cgroup's own tasks (a call's; descendants' time is
    /// not included); when used up the cgroup is capped at a floor share (default 5 %
    /// of one CPU) and one [`BudgetEvent`] is emitted. `None`: no budget.
    pub budget: Option<Duration>,
    /// Flags such as [`SchedFlags::MEM_PRESSURE`].
    pub flags: SchedFlags,
}

/// Layout mirror of `struct sched_policy`.
#[repr(C)]
#[allow(dead_code)]
struct RawSchedPolicy {
    class: u32,
    weight: u32,
    budget_ns: u64,
    flags: u64,
}

const _: () = assert!(size_of::<RawSchedPolicy>() == 24);
const _: () = assert!(offset_of!(RawSchedPolicy, class) == 0);
const _: () = assert!(offset_of!(RawSchedPolicy, weight) == 4);
const _: () = assert!(offset_of!(RawSchedPolicy, budget_ns) == 8);
const _: () = assert!(offset_of!(RawSchedPolicy, flags) == 16);

impl CgroupPolicy {
    /// Size of the C struct in bytes.
    pub const SIZE: usize = size_of::<RawSchedPolicy>();

    /// Encodes as map value bytes. A zero budget becomes 1 ns (exhausted at once).
    pub(crate) fn to_bytes(self) -> [u8; Self::SIZE] {
        let budget_ns = self.budget.map_or(0, |b| {
            u64::try_from(b.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&self.class.to_raw().to_ne_bytes());
        out[4..8].copy_from_slice(&self.weight.to_ne_bytes());
        out[8..16].copy_from_slice(&budget_ns.to_ne_bytes());
        out[16..24].copy_from_slice(&self.flags.0.to_ne_bytes());
        out
    }

    /// Decodes map value bytes; `None` if the size or the class is wrong.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        let budget_ns = u64_at(bytes, offset_of!(RawSchedPolicy, budget_ns))?;
        Some(Self {
            class: SchedClass::from_raw(u32_at(bytes, offset_of!(RawSchedPolicy, class))?)?,
            weight: u32_at(bytes, offset_of!(RawSchedPolicy, weight))?,
            budget: (budget_ns != 0).then(|| Duration::from_nanos(budget_ns)),
            flags: SchedFlags(u64_at(bytes, offset_of!(RawSchedPolicy, flags))?),
        })
    }
}

/// The CPU time the scheduler charged to one agentcg cgroup (`struct sched_usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[repr(C)]
pub struct CgroupUsage {
    /// Cumulative CPU time of the cgroup's own tasks, in ns.
    pub runtime_ns: u64,
    /// 1 once `runtime_ns` reached the policy's budget.
    pub exhausted: u64,
    /// `CLOCK_MONOTONIC` ns when it did, 0 if not.
    pub exhausted_ns: u64,
}

const _: () = assert!(size_of::<CgroupUsage>() == 24);
const _: () = assert!(offset_of!(CgroupUsage, runtime_ns) == 0);
const _: () = assert!(offset_of!(CgroupUsage, exhausted) == 8);
const _: () = assert!(offset_of!(CgroupUsage, exhausted_ns) == 16);

impl CgroupUsage {
    /// Size of the C struct in bytes.
    pub const SIZE: usize = size_of::<Self>();

    /// Decodes map value bytes; `None` if the length is wrong.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        Some(Self {
            runtime_ns: u64_at(bytes, 0)?,
            exhausted: u64_at(bytes, 8)?,
            exhausted_ns: u64_at(bytes, 16)?,
        })
    }

    /// Encodes as map value bytes.
    pub(crate) fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..8].copy_from_slice(&self.runtime_ns.to_ne_bytes());
        out[8..16].copy_from_slice(&self.exhausted.to_ne_bytes());
        out[16..24].copy_from_slice(&self.exhausted_ns.to_ne_bytes());
        out
    }
}

/// A cgroup used up its CPU budget (`struct sched_budget_event`), emitted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[repr(C)]
pub struct BudgetEvent {
    /// The cgroup id.
    pub cgid: u64,
    /// Its cumulative CPU time when the scheduler found the budget exhausted, in ns.
    pub used_ns: u64,
    /// The budget, in ns.
    pub budget_ns: u64,
    /// `CLOCK_MONOTONIC` ns of the detection.
    pub ts_ns: u64,
}

const _: () = assert!(size_of::<BudgetEvent>() == 32);
const _: () = assert!(offset_of!(BudgetEvent, cgid) == 0);
const _: () = assert!(offset_of!(BudgetEvent, used_ns) == 8);
const _: () = assert!(offset_of!(BudgetEvent, budget_ns) == 16);
const _: () = assert!(offset_of!(BudgetEvent, ts_ns) == 24);

impl BudgetEvent {
    /// Size of the C record in bytes.
    pub const SIZE: usize = size_of::<Self>();

    /// Decodes a ring-buffer record; `None` if the size is wrong.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        Some(Self {
            cgid: u64_at(bytes, 0)?,
            used_ns: u64_at(bytes, 8)?,
            budget_ns: u64_at(bytes, 16)?,
            ts_ns: u64_at(bytes, 24)?,
        })
    }
}

// ---- memory programs (ebpf/mem.bpf.c) ----

/// `AGENTCG_MEM_MAX_WATCHED` in `intf.h`: capacity of the `mem_watch` and `mem_state` maps.
pub const MEM_MAX_WATCHED: u32 = 16384;
/// `AGENTCG_MEM_EVENTS_BYTES` in `intf.h`: size of the `mem_events` ring buffer.
pub const MEM_EVENTS_BYTES: u32 = 256 * 1024;
/// `MEM_NEAR_MAX_HYST_BP` in `intf.h`: MEM_NEAR_MAX clears below the watermark minus this
/// many basis points of `memory.max`.
pub const MEM_NEAR_MAX_HYST_BP: u32 = 500;
/// `MEM_MAX_EVENT_INTERVAL_NS` in `intf.h`: at most one [`MemEventKind::Max`] per cgroup
/// per this interval.
pub const MEM_MAX_EVENT_INTERVAL: Duration = Duration::from_millis(1);

/// What a watched cgroup is to agentcg (`MEM_ROLE_*` in `intf.h`); carried in events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemRole {
    /// A tool-call cgroup.
    #[default]
    Call,
    /// A session cgroup (or its `calls/` ceiling).
    Session,
    /// The agentcg root cgroup, or an ancestor of it (whose limit bounds the root).
    Root,
}

impl MemRole {
    pub(crate) fn to_raw(self) -> u32 {
        match self {
            Self::Call => 1,
            Self::Session => 2,
            Self::Root => 3,
        }
    }

    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Call,
            2 => Self::Session,
            3 => Self::Root,
            _ => return None,
        })
    }
}

/// Bits of a cgroup's memory state (`MEM_*` in `intf.h`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct MemFlags(pub u64);

impl MemFlags {
    /// No flag.
    pub const NONE: Self = Self(0);
    /// The kernel reported `MEMCG_HIGH` (usage above `memory.high`); cleared once usage
    /// drops below 7/8 of `memory.high`. The scheduler deprioritizes the cgroup.
    pub const OVER_HIGH: Self = Self(1 << 0);
    /// Usage reached the cgroup's `near_max_bp` watermark of `memory.max`; cleared below
    /// the watermark minus [`MEM_NEAR_MAX_HYST_BP`].
    pub const NEAR_MAX: Self = Self(1 << 1);
    /// A charge hit `memory.max` (`MEMCG_MAX`); cleared below 7/8 of `memory.max`.
    pub const AT_MAX: Self = Self(1 << 2);
    /// Set by userspace (the daemon's graduated response): the scheduler deprioritizes
    /// the cgroup as for [`MemFlags::OVER_HIGH`].
    pub const DEPRIORITIZE: Self = Self(1 << 3);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit of `other` is set.
    pub fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// These flags with `other`'s bits set.
    #[must_use]
    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// These flags with `other`'s bits cleared.
    #[must_use]
    pub fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

/// How a cgroup is watched (`struct mem_watch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemWatchSpec {
    /// What the cgroup is.
    pub role: MemRole,
    /// Watermark for [`MemFlags::NEAR_MAX`] in basis points (1/10000) of the cgroup's
    /// `memory.max`, 1..=10000; 0 turns it off.
    pub near_max_bp: u32,
}

/// Layout mirror of `struct mem_watch`.
#[repr(C)]
#[allow(dead_code)]
struct RawMemWatch {
    role: u32,
    near_max_bp: u32,
}

const _: () = assert!(size_of::<RawMemWatch>() == 8);
const _: () = assert!(offset_of!(RawMemWatch, role) == 0);
const _: () = assert!(offset_of!(RawMemWatch, near_max_bp) == 4);

impl MemWatchSpec {
    /// Size of the C struct in bytes.
    pub const SIZE: usize = size_of::<RawMemWatch>();

    /// Encodes as map value bytes; `near_max_bp` is capped at 10000.
    pub(crate) fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&self.role.to_raw().to_ne_bytes());
        out[4..8].copy_from_slice(&self.near_max_bp.min(10_000).to_ne_bytes());
        out
    }

    /// Decodes map value bytes; `None` if the size or the role is wrong.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        Some(Self {
            role: MemRole::from_raw(u32_at(bytes, offset_of!(RawMemWatch, role))?)?,
            near_max_bp: u32_at(bytes, offset_of!(RawMemWatch, near_max_bp))?,
        })
    }
}

/// A cgroup's memory state (`struct mem_state`), the value of the map shared with the
/// scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemState {
    /// The flags.
    pub flags: MemFlags,
    /// `CLOCK_MONOTONIC` ns of the latest flag transition made by BPF, 0 if none.
    pub since_ns: u64,
    /// `MEMCG_MAX` events seen (the rate-limited ones included).
    pub max_events: u64,
    /// `CLOCK_MONOTONIC` ns of the latest [`MemEventKind::Max`] event sent, 0 if none.
    pub last_max_ns: u64,
}

/// Layout mirror of `struct mem_state`.
#[repr(C)]
#[allow(dead_code)]
struct RawMemState {
    flags: u64,
    since_ns: u64,
    max_events: u64,
    last_max_ns: u64,
}

const _: () = assert!(size_of::<RawMemState>() == 32);
const _: () = assert!(offset_of!(RawMemState, flags) == 0);
const _: () = assert!(offset_of!(RawMemState, since_ns) == 8);
const _: () = assert!(offset_of!(RawMemState, max_events) == 16);
const _: () = assert!(offset_of!(RawMemState, last_max_ns) == 24);

impl MemState {
    /// Size of the C struct in bytes.
    pub const SIZE: usize = size_of::<RawMemState>();

    /// Decodes map value bytes; `None` if the length is wrong.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        Some(Self {
            flags: MemFlags(u64_at(bytes, offset_of!(RawMemState, flags))?),
            since_ns: u64_at(bytes, offset_of!(RawMemState, since_ns))?,
            max_events: u64_at(bytes, offset_of!(RawMemState, max_events))?,
            last_max_ns: u64_at(bytes, offset_of!(RawMemState, last_max_ns))?,
        })
    }

    /// Encodes as map value bytes.
    pub(crate) fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        for (off, v) in [
            (offset_of!(RawMemState, flags), self.flags.0),
            (offset_of!(RawMemState, since_ns), self.since_ns),
            (offset_of!(RawMemState, max_events), self.max_events),
            (offset_of!(RawMemState, last_max_ns), self.last_max_ns),
        ] {
            out[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        }
        out
    }
}

/// Layout mirror of `struct mem_flag_args` (context of the `mem_set_user_flags` program).
#[repr(C)]
#[allow(dead_code)]
struct RawMemFlagArgs {
    cgid: u64,
    set: u64,
    clear: u64,
}

const _: () = assert!(size_of::<RawMemFlagArgs>() == 24);

/// The encoded context of `mem_set_user_flags`.
pub(crate) fn mem_flag_args(cgid: u64, set: MemFlags, clear: MemFlags) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[0..8].copy_from_slice(&cgid.to_ne_bytes());
    out[8..16].copy_from_slice(&set.0.to_ne_bytes());
    out[16..24].copy_from_slice(&clear.0.to_ne_bytes());
    out
}

/// What a [`MemEvent`] reports (`MEM_EV_*` in `intf.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemEventKind {
    /// `MEMCG_HIGH`: [`MemFlags::OVER_HIGH`] was set. Once per transition; `limit` is
    /// `memory.high`, `counter` the `high` count of `memory.events`.
    High,
    /// `MEMCG_MAX`: a charge hit `memory.max`. At most one per
    /// [`MEM_MAX_EVENT_INTERVAL`]; `counter` is `memory.events` `max`.
    Max,
    /// `MEMCG_OOM`: the cgroup ran out of memory; `counter` is `memory.events` `oom`.
    Oom,
    /// `MEMCG_OOM_KILL`: a process of the cgroup was OOM-killed; `counter` is
    /// `memory.events` `oom_kill`.
    OomKill,
    /// `MEMCG_OOM_GROUP_KILL`: `memory.oom.group` killed the cgroup; `counter` is
    /// `memory.events` `oom_group_kill`.
    OomGroupKill,
    /// Usage crossed the `near_max_bp` watermark; `limit` is `memory.max`.
    NearMax,
    /// [`MemFlags::OVER_HIGH`] cleared; `limit` is `memory.high`.
    HighRecovered,
    /// [`MemFlags::NEAR_MAX`] cleared; `limit` is `memory.max`.
    NearMaxRecovered,
    /// [`MemFlags::AT_MAX`] cleared; `limit` is `memory.max`.
    MaxRecovered,
}

impl MemEventKind {
    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::High,
            2 => Self::Max,
            3 => Self::Oom,
            4 => Self::OomKill,
            5 => Self::OomGroupKill,
            6 => Self::NearMax,
            7 => Self::HighRecovered,
            8 => Self::NearMaxRecovered,
            9 => Self::MaxRecovered,
            _ => return None,
        })
    }
}

/// Layout mirror of `struct mem_event`.
#[repr(C)]
#[allow(dead_code)]
struct RawMemEvent {
    kind: u32,
    role: u32,
    cgid: u64,
    ts_ns: u64,
    usage: u64,
    limit: u64,
    counter: u64,
}

const _: () = assert!(size_of::<RawMemEvent>() == 48);
const _: () = assert!(offset_of!(RawMemEvent, kind) == 0);
const _: () = assert!(offset_of!(RawMemEvent, role) == 4);
const _: () = assert!(offset_of!(RawMemEvent, cgid) == 8);
const _: () = assert!(offset_of!(RawMemEvent, ts_ns) == 16);
const _: () = assert!(offset_of!(RawMemEvent, usage) == 24);
const _: () = assert!(offset_of!(RawMemEvent, limit) == 32);
const _: () = assert!(offset_of!(RawMemEvent, counter) == 40);

/// One record of the `mem_events` ring buffer (`struct mem_event`), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemEvent {
    /// What happened.
    pub kind: MemEventKind,
    /// The cgroup's role, `None` if it was unwatched meanwhile.
    pub role: Option<MemRole>,
    /// The cgroup id.
    pub cgid: u64,
    /// `CLOCK_MONOTONIC` ns of the event (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// The cgroup's memory usage in bytes (`memory.current`).
    pub usage: u64,
    /// The limit involved in bytes (`memory.high` or `memory.max`), 0 if unlimited.
    pub limit: u64,
    /// The `memory.events` counter of the kind after this event, 0 for the watermark
    /// and recovery kinds.
    pub counter: u64,
}

impl MemEvent {
    /// Size of the C record in bytes.
    pub const SIZE: usize = size_of::<RawMemEvent>();

    /// Decodes a ring-buffer record; `None` if the size or the kind is unknown.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        Some(Self {
            kind: MemEventKind::from_raw(u32_at(bytes, offset_of!(RawMemEvent, kind))?)?,
            role: MemRole::from_raw(u32_at(bytes, offset_of!(RawMemEvent, role))?),
            cgid: u64_at(bytes, offset_of!(RawMemEvent, cgid))?,
            ts_ns: u64_at(bytes, offset_of!(RawMemEvent, ts_ns))?,
            usage: u64_at(bytes, offset_of!(RawMemEvent, usage))?,
            limit: u64_at(bytes, offset_of!(RawMemEvent, limit))?,
            counter: u64_at(bytes, offset_of!(RawMemEvent, counter))?,
        })
    }
}

fn u64_at(bytes: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        bytes.get(off..off + 8)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        bytes.get(off..off + 4)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_event(kind: u32, pid: u32, cgid: u64, ts: u64, comm: &[u8]) -> Vec<u8> {
        raw_exit_event(kind, pid, cgid, ts, comm, 0, 0)
    }

    fn raw_exit_event(
        kind: u32,
        pid: u32,
        cgid: u64,
        ts: u64,
        comm: &[u8],
        status: u32,
        flags: u32,
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&pid.to_ne_bytes());
        b.extend_from_slice(&cgid.to_ne_bytes());
        b.extend_from_slice(&ts.to_ne_bytes());
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        b.extend_from_slice(&c);
        b.extend_from_slice(&status.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&[0u8; 8 + TELE_ARGV_BYTES]);
        b
    }

    /// An exec event of `ppid` with these argument bytes.
    fn raw_exec_event(pid: u32, ppid: u32, argv: &[u8], flags: u32) -> Vec<u8> {
        let mut b = raw_exit_event(1, pid, 7, 99, b"sh", 0, flags);
        b[48..52].copy_from_slice(&ppid.to_ne_bytes());
        b[52..56].copy_from_slice(&(argv.len() as u32).to_ne_bytes());
        b[56..56 + argv.len()].copy_from_slice(argv);
        b
    }

    #[test]
    fn exec_events_carry_the_parent_and_the_arguments() {
        let e = TeleEvent::decode(&raw_exec_event(42, 41, b"sh\0-c\0echo hi\0", 0)).unwrap();
        assert_eq!(e.ppid, Some(41));
        assert_eq!(e.argv, ["sh", "-c", "echo hi"]);
        assert!(!e.argv_cut);
        let long = [b'a'; TELE_ARGV_BYTES];
        let cut = TeleEvent::decode(&raw_exec_event(42, 41, &long, TELE_F_ARGV_CUT)).unwrap();
        assert_eq!(cut.argv, [String::from_utf8(long.to_vec()).unwrap()]);
        assert!(cut.argv_cut);
        let empty = TeleEvent::decode(&raw_exec_event(42, 41, b"", 0)).unwrap();
        assert!(empty.argv.is_empty());
        let mut lying = raw_exec_event(42, 41, b"x\0", 0);
        lying[52..56].copy_from_slice(&9999u32.to_ne_bytes());
        assert_eq!(
            TeleEvent::decode(&lying).map(|e| e.argv.len()),
            Some(1),
            "length bounded"
        );
    }

    #[test]
    fn counters_match_the_skeleton_type_generated_from_btf() {
        assert_eq!(
            size_of::<crate::skel::types::call_counters>(),
            CallCounters::SIZE
        );
        let c = crate::skel::types::call_counters {
            execs: 1,
            forks: 2,
            exits: 3,
            first_exec_ns: 4,
            last_exit_ns: 5,
            tool_exit_ns: 6,
            tool_pid: 7,
            tool_status: 8,
        };
        assert_eq!(
            offset_of!(crate::skel::types::call_counters, last_exit_ns),
            32
        );
        assert_eq!(
            offset_of!(crate::skel::types::call_counters, tool_status),
            offset_of!(CallCounters, tool_status)
        );
        assert_eq!(c.first_exec_ns, 4);
    }

    #[test]
    fn counters_round_trip_through_bytes() {
        let c = CallCounters {
            execs: 1,
            forks: 2,
            exits: 3,
            first_exec_ns: u64::MAX - 1,
            last_exit_ns: 1 << 40,
            tool_exit_ns: 0,
            tool_pid: 4242,
            tool_status: 7 << 8,
        };
        let b = c.to_bytes();
        assert_eq!(&b[8..16], &2u64.to_ne_bytes());
        assert_eq!(&b[48..52], &4242u32.to_ne_bytes());
        assert_eq!(CallCounters::from_bytes(&b), Some(c));
        assert_eq!(c.tool_exit(), None, "the tool has not exited");
        let ended = CallCounters {
            tool_exit_ns: 9,
            ..c
        };
        assert_eq!(ended.tool_exit(), Some(7 << 8));
        assert_eq!(CallCounters::from_bytes(&b[..55]), None);
        assert_eq!(CallCounters::from_bytes(&[0u8; 64]), None);
    }

    #[test]
    fn events_decode_and_reject_garbage() {
        let e = TeleEvent::decode(&raw_event(1, 42, 7, 99, b"true")).expect("valid record");
        assert_eq!(
            e,
            TeleEvent {
                kind: TeleKind::Exec,
                pid: 42,
                cgid: 7,
                ts_ns: 99,
                comm: "true".into(),
                status: None,
                tool: false,
                ppid: Some(0),
                argv: Vec::new(),
                argv_cut: false,
            }
        );
        let tool_exit = TeleEvent::decode(&raw_exit_event(2, 42, 7, 99, b"sh", 15, 1)).unwrap();
        assert_eq!((tool_exit.status, tool_exit.tool), (Some(15), true));
        let other_exit =
            TeleEvent::decode(&raw_exit_event(2, 43, 7, 99, b"sh", 7 << 8, 0)).unwrap();
        assert_eq!((other_exit.status, other_exit.tool), (Some(7 << 8), false));
        let full = TeleEvent::decode(&raw_event(3, 1, 1, 1, b"0123456789abcdef")).expect("valid");
        assert_eq!((full.kind, full.comm.len()), (TeleKind::Fork, 16));
        assert_eq!(
            TeleEvent::decode(&raw_event(2, 1, 1, 1, b"")).map(|e| e.kind),
            Some(TeleKind::Exit)
        );
        assert_eq!(TeleEvent::decode(&raw_event(0, 1, 1, 1, b"x")), None);
        assert_eq!(TeleEvent::decode(&raw_event(4, 1, 1, 1, b"x")), None);
        assert_eq!(TeleEvent::decode(&raw_event(1, 1, 1, 1, b"x")[..311]), None);
    }

    #[test]
    fn events_and_counters_serialize_for_the_daemon() {
        let e = TeleEvent::decode(&raw_event(2, 5, 6, 7, b"sh")).expect("valid");
        let v = serde_json::to_value(&e).expect("serializes");
        assert_eq!(v["kind"], "exit");
        assert_eq!(v["comm"], "sh");
        let c = serde_json::to_value(CallCounters {
            execs: 3,
            ..CallCounters::default()
        })
        .expect("serializes");
        assert_eq!(c["execs"], 3);
        assert_eq!(c["last_exit_ns"], 0);
    }

    #[test]
    fn policies_round_trip_through_bytes() {
        let p = CgroupPolicy {
            class: SchedClass::Low,
            weight: 250,
            budget: Some(Duration::from_secs(2)),
            flags: SchedFlags::MEM_PRESSURE,
        };
        let b = p.to_bytes();
        assert_eq!(&b[0..4], &3u32.to_ne_bytes());
        assert_eq!(&b[8..16], &2_000_000_000u64.to_ne_bytes());
        assert_eq!(CgroupPolicy::from_bytes(&b), Some(p));
        assert_eq!(CgroupPolicy::from_bytes(&b[..23]), None);
        let none = CgroupPolicy::default();
        assert_eq!(CgroupPolicy::from_bytes(&none.to_bytes()), Some(none));
        let zero = CgroupPolicy {
            budget: Some(Duration::ZERO),
            ..none
        };
        assert_eq!(
            &zero.to_bytes()[8..16],
            &1u64.to_ne_bytes(),
            "a zero budget is exhausted at once"
        );
        let mut bad = b;
        bad[0] = 9;
        assert_eq!(CgroupPolicy::from_bytes(&bad), None, "unknown class");
    }

    #[test]
    fn flags_compose() {
        let f = SchedFlags::NONE.with(SchedFlags::MEM_PRESSURE);
        assert!(f.contains(SchedFlags::MEM_PRESSURE));
        assert_eq!(f.without(SchedFlags::MEM_PRESSURE), SchedFlags::NONE);
    }

    #[test]
    fn mem_types_round_trip_and_match_the_skeleton() {
        assert_eq!(
            size_of::<crate::mem_skel::types::mem_state>(),
            MemState::SIZE
        );
        assert_eq!(
            size_of::<crate::mem_skel::types::mem_watch>(),
            MemWatchSpec::SIZE
        );
        assert_eq!(
            offset_of!(crate::mem_skel::types::mem_state, last_max_ns),
            offset_of!(RawMemState, last_max_ns)
        );
        let st = MemState {
            flags: MemFlags::OVER_HIGH.with(MemFlags::DEPRIORITIZE),
            since_ns: 2,
            max_events: 3,
            last_max_ns: 4,
        };
        assert_eq!(MemState::from_bytes(&st.to_bytes()), Some(st));
        assert_eq!(&st.to_bytes()[0..8], &9u64.to_ne_bytes());
        assert_eq!(MemState::from_bytes(&[0u8; 31]), None);
        let spec = MemWatchSpec {
            role: MemRole::Session,
            near_max_bp: 8000,
        };
        assert_eq!(MemWatchSpec::from_bytes(&spec.to_bytes()), Some(spec));
        let capped = MemWatchSpec {
            near_max_bp: 20_000,
            ..spec
        };
        assert_eq!(&capped.to_bytes()[4..8], &10_000u32.to_ne_bytes());
        let f = MemFlags::NEAR_MAX.with(MemFlags::AT_MAX);
        assert!(f.intersects(MemFlags::AT_MAX) && !f.contains(MemFlags::OVER_HIGH));
        assert_eq!(f.without(MemFlags::AT_MAX), MemFlags::NEAR_MAX);
    }

    #[test]
    fn mem_events_decode_and_reject_garbage() {
        let raw = |kind: u32, role: u32| {
            let mut b = Vec::new();
            b.extend_from_slice(&kind.to_ne_bytes());
            b.extend_from_slice(&role.to_ne_bytes());
            for v in [7u64, 8, 9, 10, 11] {
                b.extend_from_slice(&v.to_ne_bytes());
            }
            b
        };
        assert_eq!(
            MemEvent::decode(&raw(1, 1)),
            Some(MemEvent {
                kind: MemEventKind::High,
                role: Some(MemRole::Call),
                cgid: 7,
                ts_ns: 8,
                usage: 9,
                limit: 10,
                counter: 11
            })
        );
        assert_eq!(
            MemEvent::decode(&raw(9, 0)).map(|e| (e.kind, e.role)),
            Some((MemEventKind::MaxRecovered, None))
        );
        assert_eq!(MemEvent::decode(&raw(0, 1)), None);
        assert_eq!(MemEvent::decode(&raw(10, 1)), None);
        assert_eq!(MemEvent::decode(&raw(1, 1)[..47]), None);
        let v =
            serde_json::to_value(MemEvent::decode(&raw(4, 2)).expect("valid")).expect("serializes");
        assert_eq!(v["kind"], "oom_kill");
        assert_eq!(v["role"], "session");
        assert_eq!(
            &mem_flag_args(5, MemFlags::DEPRIORITIZE, MemFlags::NONE)[8..16],
            &8u64.to_ne_bytes()
        );
    }

    #[test]
    fn usage_and_budget_events_decode() {
        let u = CgroupUsage {
            runtime_ns: 5,
            exhausted: 1,
            exhausted_ns: 7,
        };
        assert_eq!(CgroupUsage::from_bytes(&u.to_bytes()), Some(u));
        assert_eq!(CgroupUsage::from_bytes(&[0u8; 16]), None);
        let mut raw = Vec::new();
        for v in [11u64, 22, 33, 44] {
            raw.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(
            BudgetEvent::decode(&raw),
            Some(BudgetEvent {
                cgid: 11,
                used_ns: 22,
                budget_ns: 33,
                ts_ns: 44
            })
        );
        assert_eq!(BudgetEvent::decode(&raw[..31]), None);
        let v = serde_json::to_value(SchedClass::Runtime).expect("serializes");
        assert_eq!(v, "runtime");
    }
}
