//! agentcg's BPF side: the per-tool-call telemetry programs (`ebpf/telemetry.bpf.c`:
//! exec, fork and exit counts per watched cgroup, plus a ring buffer of events) and the
//! BTF capability probes the daemon reports at start.
//!
//! The BPF C sources live in `ebpf/`, share one ABI header (`ebpf/intf.h`, mirrored by
//! [`CallCounters`] and [`TeleEvent`]) and are compiled with clang-19 by `build.rs` into a
//! libbpf-rs skeleton (DESIGN.md §4). `xtask/gen-vmlinux.sh` regenerates `ebpf/vmlinux.h`.
//!
//! Entry points: [`Telemetry::load`] (needs root) and [`probe_btf`] (needs only read
//! access to the BTF file).

mod abi;
mod error;
mod libbpf_log;
pub mod probe;
mod telemetry;

/// The libbpf-cargo skeleton of `ebpf/telemetry.bpf.c` (generated into `OUT_DIR`).
mod skel {
    #![allow(
        unused_imports,
        unused_qualifications,
        missing_debug_implementations,
        clippy::all,
        clippy::unwrap_used
    )]
    include!(concat!(env!("OUT_DIR"), "/telemetry.skel.rs"));
}

pub use abi::{CallCounters, EVENTS_BYTES, MAX_WATCHED, TeleEvent, TeleKind};
pub use error::BpfError;
pub use probe::{BtfFeatures, VMLINUX_BTF, probe_btf};
pub use telemetry::{LoadTimings, Telemetry};

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
    use libbpf_rs::{MapType, OpenObject, ProgramType};

    use super::*;

    /// Opening parses the embedded ELF and makes no bpf() calls: no root needed.
    #[test]
    fn skeleton_opens_with_the_maps_and_programs_of_the_abi() {
        let mut slot = MaybeUninit::<OpenObject>::uninit();
        let open = skel::TelemetrySkelBuilder::default()
            .open(&mut slot)
            .expect("skeleton opens");

        let watched = &open.maps.watched;
        assert_eq!(watched.map_type(), MapType::Hash);
        assert_eq!(watched.key_size(), 8);
        assert_eq!(watched.value_size() as usize, CallCounters::SIZE);
        assert_eq!(watched.max_entries(), MAX_WATCHED);

        let events = &open.maps.events;
        assert_eq!(events.map_type(), MapType::RingBuf);
        assert_eq!(events.max_entries(), EVENTS_BYTES);

        let names: Vec<String> = open
            .open_object()
            .progs()
            .map(|p| {
                assert_eq!(p.prog_type(), ProgramType::Tracing);
                p.name().to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(names, ["tele_exec", "tele_fork", "tele_exit"]);
    }

    #[test]
    fn errors_carry_the_libbpf_log() {
        let err = BpfError::Load {
            object: "x.bpf.o",
            source: libbpf_rs::Error::from_raw_os_error(libc::EACCES),
            log: "R1 invalid mem access 'scalar'\n".into(),
        };
        let msg = err.to_string();
        assert!(msg.contains("x.bpf.o"), "{msg}");
        assert!(msg.contains("Permission denied"), "{msg}");
        assert!(msg.ends_with("R1 invalid mem access 'scalar'"), "{msg}");
    }
}
