//! Typed errors of the BPF layer. Each variant says what failed and carries libbpf's or
//! the kernel's reply (the `source`, printed with its cause chain), plus the libbpf log
//! (verifier output included) where libbpf produced one.

use std::path::PathBuf;

/// Everything that can go wrong while probing, loading or using the BPF side.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// Opening the embedded BPF object (ELF parsing, map/program setup) failed.
    #[error("opening BPF object {object}: {source:#}{}", log_suffix(.log))]
    Open {
        /// The object's name.
        object: &'static str,
        /// libbpf's reply.
        source: libbpf_rs::Error,
        /// What libbpf printed meanwhile.
        log: String,
    },
    /// The kernel refused to load the object (verifier, missing BTF, no privilege...).
    #[error(
        "loading BPF object {object} into the kernel (needs root or CAP_BPF+CAP_PERFMON and a \
         kernel with BTF): {source:#}{}",
        log_suffix(.log)
    )]
    Load {
        /// The object's name.
        object: &'static str,
        /// libbpf's reply (usually the kernel's errno).
        source: libbpf_rs::Error,
        /// What libbpf printed meanwhile, the verifier log included.
        log: String,
    },
    /// Attaching one program to its hook failed.
    #[error("attaching BPF program {program}: {source:#}{}", log_suffix(.log))]
    Attach {
        /// The program's name.
        program: String,
        /// libbpf's reply.
        source: libbpf_rs::Error,
        /// What libbpf printed meanwhile.
        log: String,
    },
    /// A map operation failed.
    #[error("{op} on BPF map {map} for cgroup id {cgid}: {source:#}")]
    Map {
        /// The operation (`insert`, `lookup`, ...).
        op: &'static str,
        /// The map's name.
        map: &'static str,
        /// The key the operation was for (0 if none).
        cgid: u64,
        /// libbpf's reply.
        source: libbpf_rs::Error,
    },
    /// The `watched` map is full: too many tool-call cgroups watched at once.
    #[error(
        "BPF map {map} is full ({capacity} entries): cannot watch cgroup id {cgid}; unwatch \
         finished calls first"
    )]
    MapFull {
        /// The map's name.
        map: &'static str,
        /// The key that did not fit.
        cgid: u64,
        /// The map's capacity.
        capacity: u32,
    },
    /// A map held a value of an unexpected size (ABI mismatch between `intf.h` and Rust).
    #[error(
        "BPF map {map} returned {got} bytes, expected {expected}: ABI mismatch with ebpf/intf.h"
    )]
    ValueSize {
        /// The map's name.
        map: &'static str,
        /// Size the Rust mirror expects.
        expected: usize,
        /// Size the kernel returned.
        got: usize,
    },
    /// Setting up or polling the ring buffer failed.
    #[error("{op} ring buffer {map}: {source:#}")]
    RingBuffer {
        /// The operation (`setting up`, `polling`).
        op: &'static str,
        /// The map's name.
        map: &'static str,
        /// libbpf's reply.
        source: libbpf_rs::Error,
    },
    /// Reading or parsing a BTF file failed.
    #[error("reading BTF from {}: {source:#}", .path.display())]
    Btf {
        /// The file that was read.
        path: PathBuf,
        /// libbpf's reply.
        source: libbpf_rs::Error,
    },
}

fn log_suffix(log: &str) -> String {
    let log = log.trim_end();
    if log.is_empty() {
        String::new()
    } else {
        format!("\n--- libbpf log ---\n{log}")
    }
}
