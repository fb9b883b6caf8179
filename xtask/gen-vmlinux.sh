#!/usr/bin/env bash
# Regenerates ebpf/vmlinux.h from the BTF of the target kernel (7.3.4,
# docs/ARCHITECTURE.md#bpf-toolchain).
#
# Dumping /sys/kernel/btf/vmlinux inside the emulated VM takes ~6 minutes, so we do it on
# the host instead: the Debian vmlinuz is a bzImage whose payload is a zstd stream; we
# find the zstd frame magic (28 b5 2f fd), decompress from there to the kernel ELF (which
# carries the .BTF section) and let bpftool print it as C. Takes well under a second.
#
# Idempotent: it rewrites ebpf/vmlinux.h only when the content changes.
# Needs: bpftool (provision.sh build), zstd, grep with -P. Usage:
#   xtask/gen-vmlinux.sh [path/to/vmlinuz] [output.h]
set -euo pipefail

KVER="${AGENTCG_KVER:-7.3.4+deb13-amd64}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${1:-/lib/modules/$KVER/vmlinuz.unsigned}"
OUT="${2:-$ROOT/ebpf/vmlinux.h}"

say() { printf '[gen-vmlinux] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ -r "$IMAGE" ] || die "kernel image $IMAGE not readable (run xtask/provision.sh vm)"
BPFTOOL="$(command -v bpftool || true)"
[ -n "$BPFTOOL" ] || BPFTOOL="$(ls /usr/sbin/bpftool 2>/dev/null || true)"
[ -n "$BPFTOOL" ] || die "bpftool not found (run xtask/provision.sh build)"
command -v zstd >/dev/null || die "zstd not found (run xtask/provision.sh vm)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Byte offset of the first zstd frame magic in the image.
off="$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$IMAGE" | head -n1 | cut -d: -f1 || true)"
[ -n "$off" ] || die "no zstd magic in $IMAGE (not a zstd-compressed bzImage?)"

# The payload is followed by trailing bzImage data: zstd reports it as garbage after the
# frame, so ignore its exit status and check the result instead.
tail -c +"$((off + 1))" "$IMAGE" | zstd -dcq 2>/dev/null >"$tmp/vmlinux" || true
head -c 4 "$tmp/vmlinux" | grep -q $'\x7fELF' || die "decompressed payload is not an ELF"

"$BPFTOOL" btf dump file "$tmp/vmlinux" format c >"$tmp/vmlinux.h"

# docs/ARCHITECTURE.md#bpf-pitfalls, pitfall 4: the memcg kfuncs need a complete
# struct mem_cgroup.
grep -q '^struct mem_cgroup {' "$tmp/vmlinux.h" || die "struct mem_cgroup has no body in the dump"
grep -q '^struct sched_ext_ops {' "$tmp/vmlinux.h" || die "struct sched_ext_ops missing from the dump"

if [ -f "$OUT" ] && cmp -s "$tmp/vmlinux.h" "$OUT"; then
  say "$OUT is up to date ($(wc -l <"$OUT") lines)"
else
  cp "$tmp/vmlinux.h" "$OUT"
  say "wrote $OUT ($(wc -l <"$OUT") lines) from $IMAGE"
fi
