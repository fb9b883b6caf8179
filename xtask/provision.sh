#!/usr/bin/env bash
# Installs what building agentcg and testing it in a sched_ext VM needs, on Debian 12
# (bookworm). Idempotent: every step checks first. Why each piece:
# docs/ARCHITECTURE.md#bpf-toolchain and docs/ARCHITECTURE.md#kernel-tests-in-the-vm.
set -euo pipefail

KVER="${AGENTCG_KVER:-7.3.4+deb13-amd64}"
KDIR="/lib/modules/$KVER"
KUBERNETES_VALIDATE_VERSION=1.37.0
SYSTEMD_VERSION=254.26-1~bpo12+1
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

say() { printf '[provision] %s\n' "$*" >&2; }

apt_sources() {
  local src=/etc/apt/sources.list.d/agentcg-backports.sources
  local pin=/etc/apt/preferences.d/agentcg-pin
  if [ ! -f "$src" ]; then
    say "adding bookworm-backports and trixie(-backports) (pinned low) to apt"
    $SUDO tee "$src" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports trixie-backports trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    $SUDO tee "$pin" >/dev/null <<'PIN'
Package: *
Pin: release n=trixie-backports
Pin-Priority: 50

Package: *
Pin: release n=trixie
Pin-Priority: 40
PIN
    $SUDO apt-get update -qq
  fi
}

need_pkgs() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  fi
}

# systemd >= 254 (bookworm's is 252) for DelegateSubgroup=: agentcgd.service needs it to
# be restarted while sessions live in its cgroup (docs/ARCHITECTURE.md#restart), and
# systemd-analyze verify (controller/daemon/tests/units.rs) warns about the key before.
# The guest runs the host's root filesystem: tests/tests/systemd_service.rs boots this
# systemd as PID 1 of its own namespaces.
systemd_deps() {
  apt_sources
  # udev (the VM's device manager) from the same build: bookworm's udev 252 cannot be
  # installed beside systemd 254, so apt would refuse it later.
  local p
  for p in systemd udev; do
    if [ "$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null)" != "$SYSTEMD_VERSION" ]; then
      say "apt-get install systemd and udev $SYSTEMD_VERSION from bookworm-backports"
      $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports \
        "systemd=$SYSTEMD_VERSION" "udev=$SYSTEMD_VERSION" >/dev/null
      break
    fi
  done
}

build_deps() {
  apt_sources
  need_pkgs clang-19 libclang-19-dev llvm-19 libelf-dev zlib1g-dev pkg-config make gcc
  # controller/daemon/tests/units.rs checks the units with systemd-analyze verify;
  # xtask/install/tests/install.rs renders the man pages with groff.
  need_pkgs groff-base
  systemd_deps
  # xtask/tests/kubernetes.rs validates deploy/kubernetes/ against the Kubernetes
  # schemas the package ships (offline).
  # (sed reads all of pip's output: `grep -q` would close the pipe early, and pipefail
  # would count pip's SIGPIPE as "not installed".)
  if [ "$(pip3 show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    say "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    pip3 install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" 2>&1 | grep -v 'running pip as the' || true
  fi
  # xtask/gen-vmlinux.sh dumps the target kernel's BTF with bpftool (the backports build: newer libbpf).
  if ! dpkg-query -W -f='${Version}' bpftool 2>/dev/null | grep -q bpo12; then
    say "apt-get install bpftool from bookworm-backports"
    $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports bpftool >/dev/null
  fi
}

# `cargo xtask fuzz` (fuzz/): cargo-fuzz, pinned, run with `--sanitizer none` on the
# stable toolchain; libfuzzer-sys compiles libFuzzer with the C++ compiler.
CARGO_FUZZ_VERSION=0.13.1
fuzz_deps() {
  need_pkgs g++
  if [ "$(cargo fuzz --version 2>/dev/null | cut -d' ' -f2)" != "$CARGO_FUZZ_VERSION" ]; then
    say "cargo install cargo-fuzz@$CARGO_FUZZ_VERSION"
    cargo install -q --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
  fi
}

# The real agent harnesses: tests/tests/claude_code.rs, mini_swe_agent.rs, aider.rs and codex.rs
# drive against a scripted model server (versions pinned: each hands commands to its
# shell its own way). The guest runs the host's root filesystem, so they are in the VM too.
# Aider goes in its own venv: its pinned dependencies clash with mini-swe-agent's.
CLAUDE_CODE_VERSION=2.1.328
MINI_SWE_AGENT_VERSION=2.4.6
CODEX_VERSION=0.171.0 # tests/tests/codex.rs
AIDER_VERSION=0.86.2
AIDER_VENV=/opt/aider-venv
harness_deps() {
  # Debian's npm, unless a node with its own npm is installed already (NodeSource's).
  command -v npm >/dev/null 2>&1 || need_pkgs nodejs npm
  if [ "$(claude --version 2>/dev/null | cut -d' ' -f1)" != "$CLAUDE_CODE_VERSION" ]; then
    say "npm install -g @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION"
    $SUDO npm install -g -q "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >/dev/null
  fi
  if [ "$(codex --version 2>/dev/null | cut -d' ' -f2)" != "$CODEX_VERSION" ]; then
    say "npm install -g @openai/codex@$CODEX_VERSION"
    $SUDO npm install -g -q "@openai/codex@$CODEX_VERSION" >/dev/null
  fi
  # (sed, not `grep -q`: see kubernetes-validate above.)
  if [ "$(pip3 show mini-swe-agent 2>/dev/null | sed -n 's/^Version: //p')" != "$MINI_SWE_AGENT_VERSION" ]; then
    say "pip install mini-swe-agent==$MINI_SWE_AGENT_VERSION"
    pip3 install -q "mini-swe-agent==$MINI_SWE_AGENT_VERSION" 2>&1 | grep -v 'running pip as the' || true
  fi
  if [ "$("$AIDER_VENV/bin/aider" --version 2>/dev/null)" != "aider $AIDER_VERSION" ]; then
    say "pip install aider-chat==$AIDER_VERSION in $AIDER_VENV"
    [ -x "$AIDER_VENV/bin/pip" ] || $SUDO python3 -m venv "$AIDER_VENV"
    $SUDO "$AIDER_VENV/bin/pip" install -q "aider-chat==$AIDER_VERSION" 2>&1 | grep -v 'running pip as the' || true
  fi
}

vm_deps() {
  apt_sources
  if ! dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null | grep -q bpo12; then
    say "apt-get install qemu-system-x86 from bookworm-backports"
    $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports \
      qemu-system-x86 qemu-utils >/dev/null
  fi
  systemd_deps
  need_pkgs udev kmod busybox-static zstd file tmux
  # tests/tests/lifecycle.rs makes a device whose reads stall (device-mapper `delay`).
  need_pkgs dmsetup
  # `cargo xtask bench memory` draws memory.png with plotters/ab_glyph from DejaVu Sans.
  need_pkgs fonts-dejavu-core
  # tests/tests/metrics.rs scrapes agentcgd with a real Prometheus server and checks the
  # scrape and deploy/prometheus/agentcg.rules.yml with promtool (the guest runs the
  # host's root filesystem, so installing them here puts them in the VM too).
  need_pkgs prometheus
  if ! command -v vng >/dev/null 2>&1; then
    say "pip install virtme-ng"
    pip3 install -q virtme-ng 2>&1 | grep -v 'running pip as the' || true
    command -v vng >/dev/null 2>&1 || { say "pip3 install virtme-ng did not provide vng on PATH"; exit 1; }
  fi
  harness_deps
  if [ ! -f "$KDIR/vmlinuz.unsigned" ]; then
    say "fetching kernel $KVER from trixie-backports"
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && chmod 755 . && apt-get download -qq "linux-binary-unsigned-$KVER" "linux-modules-$KVER")
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
    $SUDO mkdir -p "$KDIR"
    $SUDO cp -a "$tmp/root/lib/modules/$KVER/." "$KDIR/" 2>/dev/null || true
    $SUDO cp -a "$tmp/root/usr/lib/modules/$KVER/." "$KDIR/" 2>/dev/null || true
    if [ ! -f "$KDIR/vmlinuz.unsigned" ]; then
      local img
      img=$(find "$tmp/root" -name 'vmlinuz*' | head -n1)
      [ -n "$img" ] || { say "no vmlinuz in the kernel package"; exit 1; }
      $SUDO cp "$img" "$KDIR/vmlinuz.unsigned"
    fi
    rm -rf "$tmp"
  fi
  if [ ! -f "$KDIR/modules.dep" ]; then
    say "depmod $KVER"
    $SUDO depmod "$KVER"
  fi
}

# `cargo xtask package` builds the Debian package with cargo-deb (from crates.io; a
# few minutes to compile, so only for that command).
CARGO_DEB_VERSION=3.8.0
package_deps() {
  build_deps
  if [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
    say "cargo install cargo-deb@$CARGO_DEB_VERSION"
    cargo install -q --locked "cargo-deb@$CARGO_DEB_VERSION"
  fi
}

case "${1:-all}" in
  build) build_deps; fuzz_deps ;;
  package) package_deps ;;
  vm) vm_deps ;;
  harness) harness_deps ;;
  all) build_deps; fuzz_deps; vm_deps ;;
  *) say "usage: provision.sh [build|vm|harness|all|package]"; exit 2 ;;
esac
