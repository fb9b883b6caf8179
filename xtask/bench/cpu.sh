#!/bin/sh
# Guest side of `cargo xtask bench cpu` (issue 3, acceptance 8), run as root inside the VM
# from the workspace root. Each round runs both arms, in alternating order:
#   kernel        agentcgd with the default policy but `[cpu] scheduler = "kernel"`
#   agentcg_sched agentcgd with the default policy (loads the sched_ext scheduler)
# In each arm: (1) throughput: `agentcg run -- msgbench PAIRS TRIPS` (a tool call, as in
# production), its messages/s appended to throughput.txt as `ROUND ARM MSGS_PER_S`;
# (2) wake-up latency: wakelat as the runtime of a high-priority session `lat` while 4
# busy low-priority calls spin in session `bg`; its samples (`LATE_US RUNQ_US`) are
# appended to lat-ARM.txt.
#
# Environment (set by xtask): AGENTCG_BIN_DIR, BENCH_OUT (a directory the host can read),
# ROUNDS, PAIRS, TRIPS, LAT_SAMPLES.
set -u
: "${AGENTCG_BIN_DIR:?}" "${BENCH_OUT:?}" "${ROUNDS:?}" "${PAIRS:?}" "${TRIPS:?}" "${LAT_SAMPLES:?}"

SOCK=/tmp/agentcg.sock
STATE=/tmp/agentcg-state
KERNEL_POLICY=/tmp/bench-cpu-kernel.toml
BIN=$AGENTCG_BIN_DIR
DAEMON_PID=

cli() { "$BIN/agentcg" --socket "$SOCK" "$@"; }

fail() {
  echo "cpu.sh: $*"
  stop_daemon
  exit 1
}

# start_daemon ARM: starts agentcgd for ARM and waits up to 60 s for its socket (and, for
# agentcg_sched, for sched_ext to be enabled).
start_daemon() {
  rm -rf "$STATE" "$SOCK"
  set -- --root /sys/fs/cgroup/agentcg --socket "$SOCK" --state-dir "$STATE"
  [ "$ARM" = kernel ] && set -- "$@" --policy "$KERNEL_POLICY"
  "$BIN/agentcgd" "$@" >> "$BENCH_OUT/agentcgd-cpu.log" 2>&1 &
  DAEMON_PID=$!
  tries=0
  while :; do
    state=$(cat /sys/kernel/sched_ext/state 2>/dev/null)
    if [ -S "$SOCK" ] && { [ "$ARM" = kernel ] || [ "$state" = enabled ]; }; then
      break
    fi
    kill -0 "$DAEMON_PID" 2>/dev/null || {
      DAEMON_PID=
      fail "agentcgd ($ARM) exited early; see target/vm/bench/agentcgd-cpu.log"
    }
    tries=$((tries + 1))
    [ "$tries" -le 600 ] ||
      fail "agentcgd ($ARM) not ready within 60 s (socket, sched_ext state '$state')"
    sleep 0.1
  done
  if [ "$ARM" = kernel ] && [ "$(cat /sys/kernel/sched_ext/state 2>/dev/null)" = enabled ]; then
    fail "arm kernel: sched_ext is enabled although the policy says scheduler = \"kernel\""
  fi
}

stop_daemon() {
  [ -n "$DAEMON_PID" ] || return 0
  kill -TERM "$DAEMON_PID" 2>/dev/null
  wait "$DAEMON_PID"
  DAEMON_PID=
  # The scheduler is unloaded on SIGTERM; wait for it so the next arm starts clean.
  tries=0
  while [ "$(cat /sys/kernel/sched_ext/state 2>/dev/null)" = enabled ] && [ "$tries" -lt 100 ]; do
    tries=$((tries + 1))
    sleep 0.1
  done
}

throughput() {
  out=$(cli run -- "$BIN/msgbench" "$PAIRS" "$TRIPS") || fail "round $ROUND $ARM: msgbench failed: $out"
  rate=${out%% *}
  echo "$ROUND $ARM $rate" >> "$BENCH_OUT/throughput.txt"
  echo "cpu.sh: round $ROUND $ARM: $out (messages/s elapsed_ms)"
}

latency() {
  cli session create bg --priority low > /dev/null || fail "cannot create session bg"
  spinners=
  for _ in 1 2 3 4; do
    # Closing the session ends these calls; their CLI then complains to spinners.log.
    cli run --session bg -- sh -c 'while :; do :; done' 2>> "$BENCH_OUT/spinners.log" &
    spinners="$spinners $!"
  done
  sleep 0.5
  samples=/tmp/bench-cpu-wakelat.txt
  rm -f "$samples"
  # The wrapper waits until it is the session's runtime before wakelat starts sleeping.
  go=/tmp/bench-cpu-go
  rm -f "$go" && mkfifo "$go" || fail "cannot create the fifo $go"
  sh -c "read _ < $go; exec $BIN/wakelat $LAT_SAMPLES 2000 $samples" &
  lat=$!
  cli session create lat --priority high --runtime-pid "$lat" > /dev/null ||
    fail "cannot create session lat"
  echo go > "$go"
  wait "$lat" || fail "round $ROUND $ARM: wakelat failed"
  cli session close bg --force > /dev/null
  cli session close lat --force > /dev/null
  for pid in $spinners; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  cat "$samples" >> "$BENCH_OUT/lat-$ARM.txt"
  echo "cpu.sh: round $ROUND $ARM: $(wc -l < "$samples") wake-up samples"
}

run_arm() {
  ARM=$1
  start_daemon
  throughput
  latency
  stop_daemon
}

[ -r /sys/kernel/sched_ext/state ] || { echo "cpu.sh: the kernel has no sched_ext"; exit 1; }
for bin in agentcgd agentcg msgbench wakelat; do
  [ -x "$BIN/$bin" ] || { echo "cpu.sh: $BIN/$bin is missing (cargo xtask builds it)"; exit 1; }
done
sed 's/^scheduler = .*/scheduler = "kernel"/' policies/default.toml > "$KERNEL_POLICY" ||
  { echo "cpu.sh: cannot write $KERNEL_POLICY"; exit 1; }
mkdir -p "$BENCH_OUT" &&
  rm -f "$BENCH_OUT/throughput.txt" "$BENCH_OUT/lat-kernel.txt" "$BENCH_OUT/lat-agentcg_sched.txt" \
    "$BENCH_OUT/agentcgd-cpu.log" "$BENCH_OUT/spinners.log"

ROUND=0
while [ "$ROUND" -lt "$ROUNDS" ]; do
  if [ $((ROUND % 2)) -eq 0 ]; then
    run_arm kernel
    run_arm agentcg_sched
  else
    run_arm agentcg_sched
    run_arm kernel
  fi
  ROUND=$((ROUND + 1))
done
echo "cpu.sh: done"
