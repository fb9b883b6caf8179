//! Loads `ebpf/telemetry.bpf.c` and exposes its two maps: `watched` (which cgroups to
//! count, and their counters) and the `events` ring buffer.
//!
//! Lifetimes: libbpf-rs 0.27 skeletons borrow a caller-provided `OpenObject` slot. We
//! keep none of it: [`Telemetry::load`] opens, loads and attaches with the slot on its
//! own stack, then keeps only what the kernel objects need to stay alive: the program
//! links (a link holds its program, a program holds the maps it uses) and duplicated map
//! file descriptors. Closing libbpf's object afterwards detaches nothing. No leaks, no
//! self-referential struct, no `unsafe`.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
use libbpf_rs::{ErrorKind, Link, MapCore as _, MapFlags, MapHandle, OpenObject};
use serde::Serialize;

use crate::abi::{CallCounters, MAX_WATCHED, TeleEvent};
use crate::error::BpfError;
use crate::events::EventQueue;
use crate::libbpf_log::Capture;
use crate::skel::{TelemetrySkelBuilder, types};

/// Name of the BPF object, for error messages.
const OBJECT: &str = "telemetry.bpf.o";
const WATCHED: &str = "watched";
const EVENTS: &str = "events";
const BSS: &str = ".bss";

/// Counters of the BPF side (its `.bss`), cumulative since load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TeleStats {
    /// Events written to the ring buffer.
    pub events: u64,
    /// Events lost because the ring buffer was full.
    pub drops: u64,
    /// Runs of the programs the kernel skipped (`bpf_prog_info.recursion_misses`).
    pub missed_runs: u64,
}

/// How long each phase of [`Telemetry::load`] took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LoadTimings {
    /// Parsing the embedded ELF object (no syscalls).
    pub open: Duration,
    /// Creating the maps and verifying and loading the programs.
    pub load: Duration,
    /// Attaching the three tracepoint programs.
    pub attach: Duration,
}

/// The loaded and attached telemetry programs.
///
/// Counts execs, forks and exits of the cgroups registered with [`Telemetry::watch`]
/// and streams a [`TeleEvent`] for each. Dropping it detaches the programs and frees
/// the maps.
///
/// `Telemetry` is `Send + Sync`: map operations go through the kernel (which
/// serialises them per entry) on file descriptors owned by this struct, and the ring
/// buffer consumer sits behind a mutex. So a daemon may keep it in an `Arc`, poll events
/// from one dedicated (blocking) thread and watch/unwatch from others; concurrent
/// `poll_events` calls simply take turns.
pub struct Telemetry {
    watched: MapHandle,
    bss: MapHandle,
    events: EventQueue<TeleEvent>,
    links: Vec<Link>,
    /// The ids of the attached programs.
    program_ids: Vec<u32>,
    timings: LoadTimings,
}

const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Telemetry>();
};

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("links", &self.links.len())
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Opens, loads (verifier) and attaches the telemetry programs.
    ///
    /// Needs root (or `CAP_BPF` + `CAP_PERFMON`) and a kernel with BTF (`tp_btf`).
    /// libbpf's output during the load, verifier log included, is captured into the
    /// error on failure.
    pub fn load() -> Result<Self, BpfError> {
        let capture = Capture::start();
        let t0 = Instant::now();
        let mut slot = MaybeUninit::<OpenObject>::uninit();
        let open = TelemetrySkelBuilder::default()
            .open(&mut slot)
            .map_err(|source| BpfError::Open {
                object: OBJECT,
                source,
                log: capture.take(),
            })?;
        let t1 = Instant::now();
        let skel = open.load().map_err(|source| BpfError::Load {
            object: OBJECT,
            source,
            log: capture.take(),
        })?;
        let t2 = Instant::now();

        let dup = |map: &libbpf_rs::MapMut<'_>, name: &'static str| {
            MapHandle::try_from(map).map_err(|source| BpfError::Map {
                op: "duplicating the fd of",
                map: name,
                cgid: 0,
                source,
            })
        };
        let watched = dup(&skel.maps.watched, WATCHED)?;
        let bss = dup(&skel.maps.bss, BSS)?;
        let events = dup(&skel.maps.events, EVENTS)?;

        let events = EventQueue::new(events, EVENTS)?;

        let t3 = Instant::now();
        let links = capture.attach_all(&[
            &skel.progs.tele_exec,
            &skel.progs.tele_fork,
            &skel.progs.tele_exit,
        ])?;
        let attach = t3.elapsed();
        drop(skel);

        let program_ids = crate::missed::program_ids(&links);
        Ok(Self {
            watched,
            bss,
            events,
            links,
            program_ids,
            timings: LoadTimings {
                open: t1 - t0,
                load: t2 - t1,
                attach,
            },
        })
    }

    /// How long the phases of [`Telemetry::load`] took.
    pub fn timings(&self) -> LoadTimings {
        self.timings
    }

    /// Starts counting the cgroup `cgid` (the inode number of its cgroup v2 directory)
    /// with zeroed counters. Call it before the first process enters the cgroup.
    /// Watching a cgroup that is already watched resets its counters.
    pub fn watch(&self, cgid: u64) -> Result<(), BpfError> {
        self.insert(cgid, CallCounters::default())
    }

    /// Starts counting the cgroup `cgid` whose tool, `tool_pid`, is already running (it
    /// exec'd before the programs were loaded: a restarted daemon re-adopting a call).
    /// The entry starts with the tool known and `first_exec_ns` at
    /// [`ALREADY_STARTED_NS`], so no later exec in the cgroup is taken for the tool
    /// and the tool's own exit is the one flagged and kept. The counters start at zero:
    /// what happened before the watch is not known. Watching a cgroup that is already
    /// watched resets its counters.
    pub fn watch_tool(&self, cgid: u64, tool_pid: u32) -> Result<(), BpfError> {
        self.insert(cgid, adopted(tool_pid))
    }

    fn insert(&self, cgid: u64, counters: CallCounters) -> Result<(), BpfError> {
        let value = counters.to_bytes();
        self.watched
            .update(&cgid.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(|source| {
                if source.kind() == ErrorKind::TooBig {
                    BpfError::MapFull {
                        map: WATCHED,
                        cgid,
                        capacity: MAX_WATCHED,
                    }
                } else {
                    BpfError::Map {
                        op: "insert",
                        map: WATCHED,
                        cgid,
                        source,
                    }
                }
            })
    }

    /// Stops counting `cgid` and returns its final counters, `None` if it was not watched.
    /// The read and the removal are one atomic kernel operation.
    pub fn unwatch(&self, cgid: u64) -> Result<Option<CallCounters>, BpfError> {
        let value = self
            .watched
            .lookup_and_delete(&cgid.to_ne_bytes())
            .map_err(|source| BpfError::Map {
                op: "lookup-and-delete",
                map: WATCHED,
                cgid,
                source,
            })?;
        value.map(|v| decode_counters(&v)).transpose()
    }

    /// The current counters of `cgid`, `None` if it is not watched.
    pub fn counters(&self, cgid: u64) -> Result<Option<CallCounters>, BpfError> {
        let value = self
            .watched
            .lookup(&cgid.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| BpfError::Map {
                op: "lookup",
                map: WATCHED,
                cgid,
                source,
            })?;
        value.map(|v| decode_counters(&v)).transpose()
    }

    /// The wait status of `cgid`'s tool once it has exited, `None` while it runs (or
    /// if the cgroup is not watched).
    ///
    /// The BPF side writes the status, then publishes the exit time with a fully
    /// ordered xchg (ebpf/telemetry.bpf.c). A lookup copies the value with plain loads
    /// in no promised order, so the status read in the same copy that first shows the
    /// time may predate it on a weakly ordered CPU. Seeing the time is the acquire
    /// point: the status is taken from a second lookup, made after the first returned
    /// (a new system call, ordered after the branch on what the first one read), when
    /// the store that precedes the time is visible (`settled_tool_exit`).
    pub fn tool_exit(&self, cgid: u64) -> Result<Option<u32>, BpfError> {
        let Some(first) = self.counters(cgid)? else {
            return Ok(None);
        };
        if first.tool_exit_ns == 0 {
            return Ok(None);
        }
        let again = self.counters(cgid)?;
        Ok(settled_tool_exit(&first, again.as_ref()))
    }

    /// How many cgroups are watched. Walks the map's keys, so it is O(n) and only
    /// approximate while other threads watch or unwatch concurrently.
    pub fn watched_len(&self) -> Result<usize, BpfError> {
        Ok(self.watched.keys().count())
    }

    /// The ring buffer's counters on the BPF side, cumulative since load. Drain with
    /// [`Telemetry::poll_events`] often enough that `drops` stays 0.
    pub fn stats(&self) -> Result<TeleStats, BpfError> {
        let bss = self
            .bss
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| BpfError::Map {
                op: "lookup",
                map: BSS,
                cgid: 0,
                source,
            })?
            .unwrap_or_default();
        let at = |off: usize| {
            bss.get(off..off + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
                .ok_or(BpfError::ValueSize {
                    map: BSS,
                    expected: off + 8,
                    got: bss.len(),
                })
        };
        Ok(TeleStats {
            events: at(std::mem::offset_of!(types::bss, ringbuf_events))?,
            drops: at(std::mem::offset_of!(types::bss, ringbuf_drops))?,
            missed_runs: crate::missed::missed_runs(&self.program_ids),
        })
    }

    /// Ring-buffer records that did not decode (wrong size or unknown kind), cumulative.
    pub fn malformed_events(&self) -> u64 {
        self.events.malformed()
    }

    /// Waits up to `timeout` for ring-buffer events, then hands every event received so
    /// far to `f`, in order, and returns how many it handed out. `Duration::ZERO` only
    /// drains what is there; `Duration::MAX` blocks until something arrives. A signal
    /// interrupting the wait is not an error (it returns what arrived until then).
    ///
    /// Blocking: call it from a dedicated thread (`spawn_blocking` or `std::thread`),
    /// not from an async task. `f` runs without any internal lock held.
    pub fn poll_events(
        &self,
        timeout: Duration,
        f: impl FnMut(TeleEvent),
    ) -> Result<usize, BpfError> {
        self.events.poll(timeout, f)
    }
}

fn decode_counters(bytes: &[u8]) -> Result<CallCounters, BpfError> {
    CallCounters::from_bytes(bytes).ok_or(BpfError::ValueSize {
        map: WATCHED,
        expected: CallCounters::SIZE,
        got: bytes.len(),
    })
}

/// `first_exec_ns` of a cgroup watched with [`Telemetry::watch_tool`]: not a time (the
/// exec happened before the watch, when is not known), only "the tool has started",
/// which keeps the BPF side from taking a later exec for the first one.
pub const ALREADY_STARTED_NS: u64 = 1;

/// The entry of a cgroup whose tool `tool_pid` already runs.
fn adopted(tool_pid: u32) -> CallCounters {
    CallCounters {
        first_exec_ns: ALREADY_STARTED_NS,
        tool_pid,
        ..CallCounters::default()
    }
}

/// The tool's status from two lookups of one entry, the second made after the first
/// showed the exit time (the acquire point): trusted only when the second lookup shows
/// the same exit, so that its status is the one stored before that time. A status
/// without a time is never trusted; neither is an entry reset (re-watched) or removed
/// between the lookups.
fn settled_tool_exit(first: &CallCounters, again: Option<&CallCounters>) -> Option<u32> {
    if first.tool_exit_ns == 0 {
        return None;
    }
    let again = again?;
    (again.tool_exit_ns == first.tool_exit_ns && again.tool_pid == first.tool_pid)
        .then_some(again.tool_status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(ns: u64, pid: u32, status: u32) -> CallCounters {
        CallCounters {
            tool_exit_ns: ns,
            tool_pid: pid,
            tool_status: status,
            ..CallCounters::default()
        }
    }

    #[test]
    fn a_status_without_its_exit_time_is_not_trusted() {
        // The status became visible before the time: the tool still counts as running.
        let first = exited(0, 7, 3 << 8);
        assert_eq!(settled_tool_exit(&first, Some(&first)), None);
    }

    #[test]
    fn the_status_comes_from_the_lookup_after_the_time() {
        // The first copy saw the time but a stale status (0); the second has both.
        let first = exited(500, 7, 0);
        let again = exited(500, 7, 3 << 8);
        assert_eq!(settled_tool_exit(&first, Some(&again)), Some(3 << 8));
    }

    #[test]
    fn a_reset_or_removed_entry_between_the_lookups_gives_nothing() {
        let first = exited(500, 7, 3 << 8);
        assert_eq!(settled_tool_exit(&first, None), None);
        assert_eq!(
            settled_tool_exit(&first, Some(&CallCounters::default())),
            None
        );
        assert_eq!(settled_tool_exit(&first, Some(&adopted(9))), None);
    }

    #[test]
    fn decodes_from_map_bytes() {
        let c = exited(500, 7, 9);
        let bytes = c.to_bytes();
        let decoded = decode_counters(&bytes).expect("56 bytes");
        assert_eq!(settled_tool_exit(&decoded, Some(&decoded)), Some(9));
        assert!(decode_counters(&bytes[..40]).is_err());
    }

    #[test]
    fn an_adopted_tool_is_already_started() {
        let c = adopted(4242);
        assert_eq!((c.tool_pid, c.first_exec_ns), (4242, ALREADY_STARTED_NS));
        assert_eq!((c.execs, c.tool_exit_ns, c.tool_exit()), (0, 0, None));
    }
}
