//! Loads `ebpf/mem.bpf.c`, agentcg's in-kernel memory programs (their design is at the
//! top of that file), and gives userspace their maps: `mem_watch` (which cgroups, with
//! which near-max watermark), `mem_state` (pressure flags, shared with the scheduler)
//! and the `mem_events` ring buffer.
//!
//! Sharing: [`MemStateMap::create`] makes the `mem_state` map once; [`MemWatch::load`]
//! and [`crate::Scheduler::load`] (through [`crate::SchedOptions::mem_state`]) make
//! their objects reuse its fd before load, so both see one kernel object and either can
//! be loaded without the other. A flag the memory programs set (`OVER_HIGH`) or the
//! daemon sets ([`MemWatch::set_deprioritized`]) lowers the cgroup's CPU weight at the
//! scheduler's next tick.
//!
//! Userspace never rewrites a `mem_state` value: a map update replaces the whole element
//! and would drop a transition the BPF side makes meanwhile. `DEPRIORITIZE` is flipped
//! by the `mem_set_user_flags` syscall program (run with `BPF_PROG_TEST_RUN`), with the
//! same atomic or/and the tracing programs use.
//!
//! Lifetimes are as in `telemetry.rs`: the skeleton lives only during
//! [`MemWatch::load`]; we keep the links, duplicated map fds and the syscall program's fd.
//!
//! `memcg_bpf_ops` (struct_ops memory control) is an unmerged RFC absent from 7.3; nothing
//! here needs it (see [`crate::probe_btf`]).

use std::mem::MaybeUninit;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
use libbpf_rs::{
    ErrorKind, Link, MapCore as _, MapFlags, MapHandle, MapType, OpenObject, ProgramHandle,
};
use serde::Serialize;

use crate::abi::{MEM_MAX_WATCHED, MemEvent, MemFlags, MemState, MemWatchSpec, mem_flag_args};
use crate::error::BpfError;
use crate::events::EventQueue;
use crate::libbpf_log::Capture;
use crate::mem_skel::{MemSkelBuilder, types};

/// Name of the BPF object, for error messages.
const OBJECT: &str = "mem.bpf.o";
const WATCH: &str = "mem_watch";
/// The shared map's name (in both objects and in the kernel).
pub(crate) const STATE: &str = "mem_state";
const EVENTS: &str = "mem_events";
const BSS: &str = ".bss";
const SET_FLAGS: &str = "mem_set_user_flags";

/// The `mem_state` map, created once by userspace and shared by [`MemWatch`] and the
/// scheduler. Cloning shares the same kernel map (the fd is reference-counted); the map
/// lives until the last clone and the last object using it are gone.
#[derive(Clone)]
pub struct MemStateMap {
    handle: Arc<MapHandle>,
}

impl std::fmt::Debug for MemStateMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStateMap")
            .field("fd", &self.handle.as_fd().as_raw_fd())
            .finish()
    }
}

/// Two handles are equal when they share one kernel map.
impl PartialEq for MemStateMap {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }
}

impl Eq for MemStateMap {}

impl MemStateMap {
    /// Creates the map (hash, cgroup id -> `struct mem_state`, [`MEM_MAX_WATCHED`]
    /// entries, preallocated: the tracing programs update it from any context).
    /// Needs `CAP_BPF` (root).
    pub fn create() -> Result<Self, BpfError> {
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let handle = MapHandle::create(
            MapType::Hash,
            Some(STATE),
            8,
            MemState::SIZE as u32,
            MEM_MAX_WATCHED,
            &opts,
        )
        .map_err(|source| BpfError::Map {
            op: "creating",
            map: STATE,
            cgid: 0,
            source,
        })?;
        Ok(Self {
            handle: Arc::new(handle),
        })
    }

    /// The fd an object's map reuses (`bpf_map__reuse_fd`, before load).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.handle.as_fd()
    }

    /// The state of `cgid`, `None` if it has no entry.
    pub fn get(&self, cgid: u64) -> Result<Option<MemState>, BpfError> {
        let value = self
            .handle
            .lookup(&cgid.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| BpfError::Map {
                op: "lookup",
                map: STATE,
                cgid,
                source,
            })?;
        value.map(|v| decode_state(&v)).transpose()
    }

    /// How many cgroups have an entry. Walks the keys: O(n), approximate under change.
    pub fn len(&self) -> usize {
        self.handle.keys().count()
    }

    /// Whether no cgroup has an entry.
    pub fn is_empty(&self) -> bool {
        self.handle.keys().next().is_none()
    }
}

/// How long each phase of [`MemWatch::load`] took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemLoadTimings {
    /// Parsing the embedded ELF object (no syscalls).
    pub open: Duration,
    /// Creating the maps, verifying and loading the programs.
    pub load: Duration,
    /// Attaching the tracing programs.
    pub attach: Duration,
}

/// Counters of the BPF side (its `.bss`), cumulative since load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemStats {
    /// Events written to the ring buffer.
    pub events: u64,
    /// Events lost because the ring buffer was full.
    pub event_drops: u64,
    /// `MEMCG_MAX` events not sent because of the per-cgroup rate limit.
    pub max_suppressed: u64,
    /// Events whose values were read from the memcg directly, not through the memcg
    /// kfuncs (non-spinning context, or the cgroup was being removed).
    pub kfunc_misses: u64,
    /// Watched cgroups forgotten because the cgroup was removed (`cgroup_rmdir`).
    pub rmdir_cleanups: u64,
    /// Runs of the programs the kernel skipped (`bpf_prog_info.recursion_misses`).
    pub missed_runs: u64,
}

/// The loaded and attached memory programs.
///
/// `Send + Sync` like [`crate::Telemetry`]: poll events from one dedicated blocking
/// thread, watch/unwatch from others. Dropping it detaches the programs; the shared
/// [`MemStateMap`] stays as long as a clone or the scheduler holds it.
pub struct MemWatch {
    watch: MapHandle,
    state: MemStateMap,
    bss: MapHandle,
    set_flags: ProgramHandle,
    events: EventQueue<MemEvent>,
    links: Vec<Link>,
    /// The ids of the attached programs.
    program_ids: Vec<u32>,
    timings: MemLoadTimings,
}

const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<MemWatch>();
};

impl std::fmt::Debug for MemWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemWatch")
            .field("links", &self.links.len())
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
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

impl MemWatch {
    /// Opens the object, makes its `mem_state` reuse `state`, loads (verifier) and
    /// attaches the programs (`fexit/__memcg_memory_event`, `fexit/try_charge_memcg`,
    /// `fentry/uncharge_batch`, `tp_btf/cgroup_rmdir`).
    ///
    /// Needs root and a kernel with BTF, the memcg kfuncs (7.0+) and those functions not
    /// inlined (true of Debian's 7.3.4). libbpf's output, the verifier log included, is
    /// captured into the error.
    pub fn load(state: &MemStateMap) -> Result<Self, BpfError> {
        let capture = Capture::start();
        let t0 = Instant::now();
        let mut slot = MaybeUninit::<OpenObject>::uninit();
        let mut open = MemSkelBuilder::default()
            .open(&mut slot)
            .map_err(|source| BpfError::Open {
                object: OBJECT,
                source,
                log: capture.take(),
            })?;
        open.maps
            .mem_state
            .reuse_fd(state.fd())
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
            MapHandle::try_from(map).map_err(map_err("duplicating the fd of", name, 0))
        };
        let watch = dup(&skel.maps.mem_watch, WATCH)?;
        let bss = dup(&skel.maps.bss, BSS)?;
        let events = EventQueue::new(dup(&skel.maps.mem_events, EVENTS)?, EVENTS)?;
        let set_flags =
            ProgramHandle::try_from(&skel.progs.mem_set_user_flags).map_err(|source| {
                BpfError::Map {
                    op: "duplicating the fd of program",
                    map: SET_FLAGS,
                    cgid: 0,
                    source,
                }
            })?;

        let t3 = Instant::now();
        let links = capture.attach_all(&[
            &skel.progs.mem_event_exit,
            &skel.progs.mem_charge_exit,
            &skel.progs.mem_uncharge_entry,
            &skel.progs.mem_cgroup_rmdir,
        ])?;
        let attach = t3.elapsed();
        drop(skel);

        let program_ids = crate::missed::program_ids(&links);
        Ok(Self {
            watch,
            state: state.clone(),
            bss,
            set_flags,
            events,
            links,
            program_ids,
            timings: MemLoadTimings {
                open: t1 - t0,
                load: t2 - t1,
                attach,
            },
        })
    }

    /// How long the phases of [`MemWatch::load`] took.
    pub fn timings(&self) -> MemLoadTimings {
        self.timings
    }

    /// The shared state map this object uses.
    pub fn state_map(&self) -> &MemStateMap {
        &self.state
    }

    /// Starts watching cgroup `cgid` (the inode number of its cgroup v2 directory):
    /// writes its spec and, if it has none yet, a zeroed state. Watching it again
    /// replaces the spec and keeps the state (flags included).
    pub fn watch(&self, cgid: u64, spec: MemWatchSpec) -> Result<(), BpfError> {
        let key = cgid.to_ne_bytes();
        self.state
            .handle
            .update(&key, &MemState::default().to_bytes(), MapFlags::NO_EXIST)
            .or_else(|e| {
                if e.kind() == ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|source| insert_error(STATE, cgid, source))?;
        self.watch
            .update(&key, &spec.to_bytes(), MapFlags::ANY)
            .map_err(|source| insert_error(WATCH, cgid, source))
    }

    /// Stops watching `cgid`: removes its spec and its state (the scheduler then no
    /// longer sees its flags) and returns the final state, `None` if it had none. A
    /// cgroup that is removed is forgotten by the BPF side itself (`cgroup_rmdir`).
    pub fn unwatch(&self, cgid: u64) -> Result<Option<MemState>, BpfError> {
        let key = cgid.to_ne_bytes();
        if let Err(source) = self.watch.delete(&key)
            && source.kind() != ErrorKind::NotFound
        {
            return Err(BpfError::Map {
                op: "delete",
                map: WATCH,
                cgid,
                source,
            });
        }
        let value = self.state.handle.lookup_and_delete(&key).map_err(map_err(
            "lookup-and-delete",
            STATE,
            cgid,
        ))?;
        value.map(|v| decode_state(&v)).transpose()
    }

    /// The spec `cgid` is watched with, `None` if it is not watched.
    pub fn spec(&self, cgid: u64) -> Result<Option<MemWatchSpec>, BpfError> {
        let value = self
            .watch
            .lookup(&cgid.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("lookup", WATCH, cgid))?;
        value
            .map(|v| {
                MemWatchSpec::from_bytes(&v).ok_or(BpfError::ValueSize {
                    map: WATCH,
                    expected: MemWatchSpec::SIZE,
                    got: v.len(),
                })
            })
            .transpose()
    }

    /// The memory state of `cgid`, `None` if it is not watched.
    pub fn state(&self, cgid: u64) -> Result<Option<MemState>, BpfError> {
        self.state.get(cgid)
    }

    /// Sets or clears [`MemFlags::DEPRIORITIZE`] of `cgid` (the daemon's graduated
    /// response; the scheduler divides the cgroup's weight while it is set). Atomic with
    /// respect to the BPF side. Fails with `ENOENT` if `cgid` is not watched.
    pub fn set_deprioritized(&self, cgid: u64, on: bool) -> Result<(), BpfError> {
        let (set, clear) = if on {
            (MemFlags::DEPRIORITIZE, MemFlags::NONE)
        } else {
            (MemFlags::NONE, MemFlags::DEPRIORITIZE)
        };
        self.flip_flags(cgid, set, clear)
    }

    /// Clears [`MemFlags::OVER_HIGH`] of a watched cgroup whose `memory.high` was just
    /// raised above its usage, so that crossing the new limit is reported again (a
    /// [`crate::MemEventKind::High`] event per crossing, not only the first).
    pub fn rearm_high(&self, cgid: u64) -> Result<(), BpfError> {
        self.flip_flags(cgid, MemFlags::NONE, MemFlags::OVER_HIGH)
    }

    /// Runs `mem_set_user_flags`: atomic or/and on the userspace-owned bits.
    fn flip_flags(&self, cgid: u64, set: MemFlags, clear: MemFlags) -> Result<(), BpfError> {
        let mut ctx = mem_flag_args(cgid, set, clear);
        let mut opts = libbpf_rs::libbpf_sys::bpf_test_run_opts {
            sz: size_of::<libbpf_rs::libbpf_sys::bpf_test_run_opts>() as _,
            ctx_in: ctx.as_mut_ptr().cast(),
            ctx_size_in: ctx.len() as u32,
            ..Default::default()
        };
        // SAFETY: the fd is a loaded program owned by `self`; `opts` is initialised with
        // its size, and `ctx_in` points to `ctx`, which outlives the call; no output
        // buffers are given, so the kernel writes only `opts.retval`/`opts.duration`.
        let ret = unsafe {
            libbpf_rs::libbpf_sys::bpf_prog_test_run_opts(
                self.set_flags.as_fd().as_raw_fd(),
                &mut opts,
            )
        };
        if ret < 0 {
            return Err(BpfError::Map {
                op: "set flags through program mem_set_user_flags of",
                map: STATE,
                cgid,
                source: libbpf_rs::Error::from_raw_os_error(-ret),
            });
        }
        if opts.retval == 0 {
            return Err(BpfError::Map {
                op: "set flags (the cgroup is not watched: watch first) of",
                map: STATE,
                cgid,
                source: libbpf_rs::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        Ok(())
    }

    /// How many cgroups are watched (O(n), approximate under change).
    pub fn watched_len(&self) -> usize {
        self.watch.keys().count()
    }

    /// The counters of the BPF side.
    pub fn stats(&self) -> Result<MemStats, BpfError> {
        let bss = self
            .bss
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("lookup", BSS, 0))?
            .unwrap_or_default();
        let at = |off: usize| {
            bss.get(off..off + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_ne_bytes)
        };
        Ok(MemStats {
            events: at(std::mem::offset_of!(types::bss, nr_events)),
            event_drops: at(std::mem::offset_of!(types::bss, nr_event_drops)),
            max_suppressed: at(std::mem::offset_of!(types::bss, nr_max_suppressed)),
            kfunc_misses: at(std::mem::offset_of!(types::bss, nr_kfunc_misses)),
            rmdir_cleanups: at(std::mem::offset_of!(types::bss, nr_rmdir_cleanups)),
            missed_runs: crate::missed::missed_runs(&self.program_ids),
        })
    }

    /// Waits up to `timeout` for events, then hands every event received so far to `f`,
    /// in order, and returns how many. `Duration::ZERO` only drains; `Duration::MAX`
    /// blocks until something arrives. Blocking: call it from a dedicated thread. `f`
    /// runs with no lock held.
    pub fn poll_events(
        &self,
        timeout: Duration,
        f: impl FnMut(MemEvent),
    ) -> Result<usize, BpfError> {
        self.events.poll(timeout, f)
    }

    /// Ring-buffer records that did not decode, cumulative.
    pub fn malformed_events(&self) -> u64 {
        self.events.malformed()
    }
}

fn insert_error(map: &'static str, cgid: u64, source: libbpf_rs::Error) -> BpfError {
    if source.kind() == ErrorKind::TooBig {
        BpfError::MapFull {
            map,
            cgid,
            capacity: MEM_MAX_WATCHED,
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

fn decode_state(bytes: &[u8]) -> Result<MemState, BpfError> {
    MemState::from_bytes(bytes).ok_or(BpfError::ValueSize {
        map: STATE,
        expected: MemState::SIZE,
        got: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use libbpf_rs::ProgramType;

    use super::*;
    use crate::abi::MEM_EVENTS_BYTES;

    /// Opening parses the embedded ELF and makes no bpf() calls: no root needed.
    #[test]
    fn skeleton_opens_with_the_maps_and_programs_of_the_abi() {
        let mut slot = MaybeUninit::<OpenObject>::uninit();
        let open = MemSkelBuilder::default()
            .open(&mut slot)
            .expect("skeleton opens");
        let m = &open.maps;
        for (map, value) in [
            (&m.mem_watch, MemWatchSpec::SIZE),
            (&m.mem_state, MemState::SIZE),
        ] {
            assert_eq!(map.map_type(), MapType::Hash);
            assert_eq!(map.key_size(), 8);
            assert_eq!(map.value_size() as usize, value);
            assert_eq!(map.max_entries(), MEM_MAX_WATCHED);
        }
        assert_eq!(m.mem_events.map_type(), MapType::RingBuf);
        assert_eq!(m.mem_events.max_entries(), MEM_EVENTS_BYTES);

        let progs: Vec<(String, ProgramType)> = open
            .open_object()
            .progs()
            .map(|p| (p.name().to_string_lossy().into_owned(), p.prog_type()))
            .collect();
        let want = [
            ("mem_event_exit", ProgramType::Tracing),
            ("mem_charge_exit", ProgramType::Tracing),
            ("mem_uncharge_entry", ProgramType::Tracing),
            ("mem_cgroup_rmdir", ProgramType::Tracing),
            (SET_FLAGS, ProgramType::Syscall),
        ];
        assert_eq!(progs.len(), want.len(), "{progs:?}");
        for (name, ty) in want {
            assert!(
                progs.iter().any(|(n, t)| n == name && *t == ty),
                "{name} ({ty:?}) missing from {progs:?}"
            );
        }
    }

    /// The scheduler's copy of `mem_state` must be reusable with the same fd: libbpf
    /// checks type, key and value size, max_entries and flags.
    #[test]
    fn the_scheduler_declares_the_same_mem_state_map() {
        use crate::sched_skel::SchedSkelBuilder;
        let mut slot = MaybeUninit::<OpenObject>::uninit();
        let sched = SchedSkelBuilder::default()
            .open(&mut slot)
            .expect("sched skeleton opens");
        let mut slot2 = MaybeUninit::<OpenObject>::uninit();
        let mem = MemSkelBuilder::default()
            .open(&mut slot2)
            .expect("mem skeleton opens");
        let (a, b) = (&sched.maps.mem_state, &mem.maps.mem_state);
        assert_eq!(a.map_type(), b.map_type());
        assert_eq!(a.key_size(), b.key_size());
        assert_eq!(a.value_size(), b.value_size());
        assert_eq!(a.max_entries(), b.max_entries());
        assert_eq!(a.map_flags(), b.map_flags());
        assert_eq!(a.map_flags(), 0, "MemStateMap::create passes no flags");
    }
}
