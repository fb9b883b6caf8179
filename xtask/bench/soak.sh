#!/bin/sh
# Guest side of `cargo xtask bench soak`, run as root inside the VM from the workspace
# root. soakbench (tests/src/bin/soakbench) starts agentcgd itself (the test library's
# Daemon, root /sys/fs/cgroup/agentcg-soak, log /tmp/agentcg-soak.log), drives the
# calls and writes $BENCH_OUT/soak-raw.json. agentcg, agentcgd and memhog run from the
# guest's tmpfs, as from the page cache on a real machine (see calls.sh).
#
# Environment (set by xtask): AGENTCG_BIN_DIR, BENCH_OUT, SOAK_CALLS, SOAK_CLIENTS,
# SOAK_SEED, SOAK_SAMPLE_MS.
set -u
: "${AGENTCG_BIN_DIR:?}" "${BENCH_OUT:?}" "${SOAK_CALLS:?}" "${SOAK_CLIENTS:?}" "${SOAK_SEED:?}" "${SOAK_SAMPLE_MS:?}"

BIN=/tmp/soak-bin
mkdir -p "$BENCH_OUT" "$BIN" && rm -f "$BENCH_OUT/soak-raw.json"
for bin in agentcgd agentcg memhog soakbench; do
  cp "$AGENTCG_BIN_DIR/$bin" "$BIN/" || {
    echo "soak.sh: cannot stage $AGENTCG_BIN_DIR/$bin in $BIN"
    exit 1
  }
done
SOAK_OUT="$BENCH_OUT/soak-raw.json" AGENTCG_BIN_DIR="$BIN" "$BIN/soakbench"
status=$?
cp /tmp/agentcg-soak.log "$BENCH_OUT/agentcgd-soak.log" 2>/dev/null
echo "soak.sh: soakbench exited with status $status (agentcgd's log: target/vm/bench/agentcgd-soak.log)"
exit "$status"
