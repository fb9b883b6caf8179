#!/bin/sh
# Guest side of `cargo xtask bench telemetry`, run as root inside the VM from the
# workspace root. Starts agentcgd (metrics on 127.0.0.1:9464) and lets telebench
# (xtask/src/bin/telebench) drive calls at fixed rates and back to back, bare and
# watched (an `agentcg events --follow` consumer and a scrape every second), measuring
# agentcgd's CPU and RSS. agentcg and the tool run from the guest's tmpfs, as from the
# page cache on a real machine (see calls.sh).
#
# Environment (set by xtask): AGENTCG_BIN_DIR, TELEBENCH, BENCH_OUT, SECONDS_PER_ARM,
# RATES, RSS_CALLS.
set -u
: "${AGENTCG_BIN_DIR:?}" "${TELEBENCH:?}" "${BENCH_OUT:?}" "${SECONDS_PER_ARM:?}" "${RATES:?}" "${RSS_CALLS:?}"

SOCK=/tmp/agentcg.sock
BIN=/tmp/bench-bin
ROOT=/sys/fs/cgroup/agentcg
METRICS=127.0.0.1:9464

mkdir -p "$BENCH_OUT" "$BIN" && rm -f "$BENCH_OUT/telemetry-raw.json"
cp /bin/true "$AGENTCG_BIN_DIR/agentcg" "$BIN/" || {
  echo "telemetry.sh: cannot stage true and agentcg in $BIN"
  exit 1
}
"$AGENTCG_BIN_DIR/agentcgd" --root "$ROOT" --socket "$SOCK" --state-dir /tmp/agentcg-state \
  --metrics-listen "$METRICS" > "$BENCH_OUT/agentcgd.log" 2>&1 &
DAEMON_PID=$!
tries=0
while [ ! -S "$SOCK" ]; do
  if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
    echo "telemetry.sh: agentcgd exited early; its log:"
    cat "$BENCH_OUT/agentcgd.log"
    exit 1
  fi
  tries=$((tries + 1))
  if [ "$tries" -gt 300 ]; then
    echo "telemetry.sh: agentcgd did not create $SOCK within 30 s; see target/vm/bench/agentcgd.log"
    exit 1
  fi
  sleep 0.1
done
echo "telemetry.sh: agentcgd up after $((tries * 100)) ms"

"$TELEBENCH" --agentcg "$BIN/agentcg" --socket "$SOCK" --daemon-pid "$DAEMON_PID" \
  --metrics "$METRICS" --root "$ROOT" --tool "$BIN/true" --seconds "$SECONDS_PER_ARM" \
  --rates "$RATES" --rss-calls "$RSS_CALLS" --out "$BENCH_OUT/telemetry-raw.json"
status=$?
kill -TERM "$DAEMON_PID" 2>/dev/null
wait "$DAEMON_PID"
echo "telemetry.sh: agentcgd stopped (status $?)"
exit "$status"
