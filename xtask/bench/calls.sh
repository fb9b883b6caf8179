#!/bin/sh
# Guest side of `cargo xtask bench calls`, run as root inside the VM from the workspace
# root. Starts agentcgd, then lets callbench measure three arms: (a) spawning /bin/true,
# (b) the reference approach (a fresh cgroup with memory+pids limits, sh -c 'echo $$ >
# cgroup.procs && exec /bin/true', rmdir) and (c) `agentcg run --verbose -- /bin/true`
# (--verbose names the call, so that callbench can wait for its record and the removal
# of its cgroup). agentcgd runs during every arm and its CPU time counts in every arm's
# full cost. Arm (c) is left out, with the reason printed (and the host reports it as
# missing), when the agentcg binaries are missing or the daemon does not come up.
#
# Every executable the arms start (true, sh, agentcg) runs from the guest's tmpfs, as from
# the page cache on a real machine: under emulation an exec from the 9p-shared host tree
# costs 10-20 ms more (measured: /bin/true p50 63 ms from 9p, 42 ms from tmpfs), which
# would tilt the comparison. xtask's guest script stages agentcg the same way.
#
# Environment (set by xtask): AGENTCG_BIN_DIR, CALLBENCH (the callbench binary), BENCH_OUT
# (a directory the host can read), ITERATIONS, WARMUP, BLOCK; AGENTCG_UNAVAILABLE
# (optional) says why arm (c) cannot run.
set -u
: "${AGENTCG_BIN_DIR:?}" "${CALLBENCH:?}" "${BENCH_OUT:?}" "${ITERATIONS:?}" "${WARMUP:?}" "${BLOCK:?}"

SOCK=/tmp/agentcg.sock
BIN=/tmp/bench-bin
TRUE=$BIN/true
REF_PARENT=/sys/fs/cgroup/bench-reference
DAEMON_PID=

# Starts agentcgd and waits up to 30 s for its socket; on failure says why and returns 1.
start_daemon() {
  if [ -n "${AGENTCG_UNAVAILABLE:-}" ]; then
    echo "calls.sh: arm (c) skipped: $AGENTCG_UNAVAILABLE"
    return 1
  fi
  for bin in agentcgd agentcg; do
    if [ ! -x "$AGENTCG_BIN_DIR/$bin" ]; then
      echo "calls.sh: arm (c) skipped: $AGENTCG_BIN_DIR/$bin is missing" \
        "(cargo build --release -p agentcg-daemon -p agentcg-cli)"
      return 1
    fi
  done
  "$AGENTCG_BIN_DIR/agentcgd" --root /sys/fs/cgroup/agentcg --socket "$SOCK" \
    --state-dir /tmp/agentcg-state > "$BENCH_OUT/agentcgd.log" 2>&1 &
  DAEMON_PID=$!
  tries=0
  while [ ! -S "$SOCK" ]; do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
      echo "calls.sh: arm (c) skipped: agentcgd exited early; its log:"
      cat "$BENCH_OUT/agentcgd.log"
      DAEMON_PID=
      return 1
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt 300 ]; then
      echo "calls.sh: arm (c) skipped: agentcgd did not create $SOCK within 30 s;" \
        "see target/vm/bench/agentcgd.log"
      return 1
    fi
    sleep 0.1
  done
  echo "calls.sh: agentcgd up after $((tries * 100)) ms (log: target/vm/bench/agentcgd.log)"
}

stop_daemon() {
  [ -n "$DAEMON_PID" ] || return 0
  kill -TERM "$DAEMON_PID" 2>/dev/null
  wait "$DAEMON_PID"
  echo "calls.sh: agentcgd stopped (status $?)"
}

mkdir -p "$BENCH_OUT" && rm -f "$BENCH_OUT/calls-raw.json"
mkdir -p "$BIN" && cp /bin/true /bin/sh "$BIN/" || {
  echo "calls.sh: cannot copy /bin/true and /bin/sh into $BIN"
  exit 1
}
mkdir -p "$REF_PARENT" && echo '+memory +pids' > "$REF_PARENT/cgroup.subtree_control" || {
  echo "calls.sh: cannot set up $REF_PARENT for the reference arm"
  exit 1
}

set -- --iterations "$ITERATIONS" --warmup "$WARMUP" --block "$BLOCK" \
  --out "$BENCH_OUT/calls-raw.json" --cgroup-parent "$REF_PARENT" --shell "$BIN/sh" \
  --arm "direct=$TRUE" --reference-arm "reference=$TRUE"
if start_daemon; then
  set -- "$@" --socket "$SOCK" --daemon-pid "$DAEMON_PID" \
    --agentcg-arm "agentcg=$AGENTCG_BIN_DIR/agentcg --socket $SOCK run --verbose -- $TRUE"
fi
"$CALLBENCH" "$@"
status=$?
stop_daemon
rmdir "$REF_PARENT"
exit "$status"
