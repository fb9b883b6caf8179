//! Compiles `ebpf/telemetry.bpf.c` and `ebpf/mem.bpf.c` with clang (env `BPF_CLANG`,
//! default `clang-19`, see docs/ARCHITECTURE.md#bpf-toolchain) and generates their
//! libbpf-rs skeletons into `OUT_DIR`; does the same for the sched_ext scheduler
//! `ebpf/sched.bpf.c` through scx_cargo's `BpfBuilder`, which supplies the sched_ext
//! headers (`scx/common.bpf.h`, UEI) and the base flags.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ebpf = manifest.join("../../ebpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang-19".to_owned());

    for file in [
        "telemetry.bpf.c",
        "mem.bpf.c",
        "sched.bpf.c",
        "intf.h",
        "vmlinux.h",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=BPF_CLANG");

    for name in ["telemetry", "mem"] {
        build_plain(&ebpf, &out, &clang, name);
    }
    build_sched(&ebpf);
}

/// A non-sched_ext object `ebpf/<name>.bpf.c` and its skeleton `<name>.skel.rs`.
fn build_plain(ebpf: &std::path::Path, out: &std::path::Path, clang: &str, name: &str) {
    let src = ebpf.join(format!("{name}.bpf.c"));
    let obj = out.join(format!("{name}.bpf.o"));
    let include = format!("-I{}", ebpf.display());
    let result = SkeletonBuilder::new()
        .source(&src)
        .obj(&obj)
        .reference_obj(true)
        .clang(clang)
        // -mcpu=v3: BPF atomics (compare-and-swap, fetch-and-or) for first_exec_ns and
        // the memory flags.
        // -fms-extensions: Linux 6.19+ is built with it and embeds tagged structs as
        // anonymous members (`struct filename { struct __filename_head; ... }`); the
        // generated vmlinux.h keeps that form, which standard C would silently drop.
        .clang_args([
            include.as_str(),
            "-mcpu=v3",
            "-fms-extensions",
            "-Wno-microsoft-anon-tag",
            "-Wall",
            "-Werror",
        ])
        .build_and_generate(out.join(format!("{name}.skel.rs")));
    if let Err(err) = result {
        panic!("building {} with {clang}: {err:#}", src.display());
    }
}

/// The scheduler: scx headers from scx_cargo, our `ebpf/` first on the include path so
/// that `vmlinux.h` is the one generated from the 7.3.4 kernel
/// (docs/ARCHITECTURE.md#bpf-pitfalls, pitfall 4).
fn build_sched(ebpf: &std::path::Path) {
    let src = ebpf.join("sched.bpf.c");
    let result = scx_cargo::BpfBuilder::new().and_then(|mut b| {
        b.add_include_path(&ebpf.display().to_string())
            .add_cflag("-fms-extensions")
            .add_cflag("-Wno-microsoft-anon-tag")
            .add_cflag("-Werror")
            .enable_skel(&src.display().to_string(), "sched")
            .build()
    });
    if let Err(err) = result {
        panic!("building {} with scx_cargo: {err:#}", src.display());
    }
}
