#!/bin/sh
# Guest side of `cargo xtask bench memory`, run as root inside the VM from the workspace
# root: the AgentCgroup multi-tenant memory experiment.
#
# The memory limit sits on a parent $P (memory.max = LIMIT MiB, memory.swap.max = 0), as a
# systemd slice or a Kubernetes pod would hold it; agentcg's root is $P/agentcg below it.
# Three sessions share $P: HIGH replays $TRACE_HIGH next to a separate process holding
# $BASE_MIB MiB (the agent runtime); LOW1 and LOW2 replay $TRACE_LOW. All replays start
# at the same instant.
#
# Every arm runs with the same CPU setup and the same knowledge of the workload:
#   - agentcgd (--root $P/agentcg) runs in every arm, so its sched_ext scheduler
#     schedules every arm; in the kernel-knob arms its root stays empty and the sessions
#     are $P/tenants/<name> with the policy's cpu.weight of their priority (HIGH 400,
#     LOWs 25), as agentcg gives its sessions;
#   - every tool starts with the oom_score_adj agentcg gives its priority (HIGH 0, LOWs
#     1000; the runtime keeps its own);
#   - every replay runs in a per-call cgroup (<session>/call) whose memory.high is the
#     trace's declared peak, which the agentcg arm declares as `--intent mem=`.
# Arms (what differs):
#   unlimited      parent memory.max = max (the yardstick)
#   no_isolation   parent memory.max only
#   static_split   each session memory.max = LIMIT/3
#   low_high_400m  memory.high = 400M on the two LOW sessions
#   agentcg        sessions from `agentcg session create` (HIGH --priority high with the
#                  base as --runtime-pid, LOWs --priority low), each replay a tool call
#                  `agentcg run --session NAME --intent mem=<peak>`; agentcg's own
#                  runtime protection and memory response act
#
# $PLAN has one instance per line: `RUN LIMIT_MIB SPEED ARM` (the host rotates the arm
# order per run). Each instance writes $BENCH_OUT/r<RUN>-<LIMIT>M-<SPEED>x-<ARM>/:
# `status` (`PROC WAIT_STATUS` for high, base, low1, low2: 0 = done, 143 = base ended by
# us, 137 = SIGKILL), `events-<NAME>` (memory.events of each session cgroup and of the
# parent, read before teardown), `peak-parent`, the replays' JSON (<proc>.json, written
# only by a replay that finished), their stderr (<proc>.log), for agentcg the call
# records (<proc>.record.json) and `elapsed_ms`. The host parses all of it.
#
# Environment (set by xtask): AGENTCG_BIN_DIR, BENCH_OUT, PLAN, TRACE_HIGH, TRACE_LOW,
# BASE_MIB.
set -u
: "${AGENTCG_BIN_DIR:?}" "${BENCH_OUT:?}" "${PLAN:?}" "${TRACE_HIGH:?}" "${TRACE_LOW:?}" "${BASE_MIB:?}"

P=/sys/fs/cgroup/agentcg-mem
R=$P/agentcg
T=$P/tenants
# The default policy's cpu.weight and oom_score_adj of each priority (policies/default.toml).
WEIGHT_HIGH=400
WEIGHT_LOW=25
ADJ_HIGH=0
ADJ_LOW=1000
SOCK=/tmp/agentcg-mem.sock
STATE=/tmp/agentcg-mem-state
BIN=$AGENTCG_BIN_DIR
MIB=1048576
DAEMON_PID=
BASE_PID=
ERRORS=0

say() { echo "memory.sh: $*"; }
cli() { "$BIN/agentcg" --socket "$SOCK" "$@"; }
now_ms() { date +%s%3N; }

# The cgroup of session $1 in the current arm.
session_cg() {
  if [ "$ARM" = agentcg ]; then echo "$R/session-$1"; else echo "$T/$1"; fi
}

write() {
  echo "$2" > "$1" 2>/dev/null || { say "cannot write '$2' to $1"; return 1; }
}

start_daemon() {
  rm -rf "$STATE" "$SOCK"
  "$BIN/agentcgd" --root "$R" --socket "$SOCK" --state-dir "$STATE" \
    >> "$BENCH_OUT/agentcgd.log" 2>&1 < /dev/null &
  DAEMON_PID=$!
  tries=0
  until [ -S "$SOCK" ]; do
    kill -0 "$DAEMON_PID" 2>/dev/null || {
      DAEMON_PID=
      say "agentcgd exited early; see target/vm/bench-memory/raw/agentcgd.log"
      return 1
    }
    tries=$((tries + 1))
    [ "$tries" -le 600 ] || { say "agentcgd: no socket within 60 s"; return 1; }
    sleep 0.1
  done
}

stop_daemon() {
  [ -n "$DAEMON_PID" ] || return 0
  kill -TERM "$DAEMON_PID" 2>/dev/null
  wait "$DAEMON_PID" 2>/dev/null
  DAEMON_PID=
  tries=0
  while [ "$(cat /sys/kernel/sched_ext/state 2>/dev/null)" = enabled ] && [ "$tries" -lt 100 ]; do
    tries=$((tries + 1))
    sleep 0.1
  done
}

# Removes $P and everything below it (no process is left in it by then).
remove_parent() {
  [ -d "$P" ] || return 0
  find "$P" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null
  rmdir "$P" 2>/dev/null || { say "cannot remove $P: $(cat "$P/cgroup.procs" 2>/dev/null)"; return 1; }
}

setup_parent() {
  remove_parent || return 1
  mkdir "$P" || return 1
  if [ "$ARM" = unlimited ]; then
    write "$P/memory.max" max || return 1
  else
    write "$P/memory.max" $((LIMIT * MIB)) || return 1
  fi
  if [ -e "$P/memory.swap.max" ]; then
    write "$P/memory.swap.max" 0 || return 1
  fi
  write "$P/cgroup.subtree_control" "+cpu +memory +pids" || return 1
  [ "$ARM" = agentcg ] && return 0
  mkdir "$T" && write "$T/cgroup.subtree_control" "+cpu +memory +pids" || return 1
  for s in high low1 low2; do
    mkdir "$T/$s" && write "$T/$s/cgroup.subtree_control" "+cpu +memory +pids" &&
      mkdir "$T/$s/call" || return 1
    weight=$WEIGHT_LOW peak=$PEAK_LOW
    [ "$s" = high ] && weight=$WEIGHT_HIGH peak=$PEAK_HIGH
    write "$T/$s/cpu.weight" "$weight" && write "$T/$s/call/memory.high" "${peak}M" || return 1
  done
  mkdir "$T/high/runtime" || return 1
  case $ARM in
    static_split)
      third=$((LIMIT * MIB / 3 / 4096 * 4096))
      for s in high low1 low2; do write "$T/$s/memory.max" "$third" || return 1; done ;;
    low_high_400m)
      for s in low1 low2; do write "$T/$s/memory.high" 400M || return 1; done ;;
  esac
}

# Starts the HIGH session's base process (the agent runtime) and waits until it holds
# its memory; in the agentcg arm it becomes the runtime of session `high` before it
# allocates (charges do not move with a process).
start_base() {
  ready=/tmp/agentcg-mem-base-ready
  rm -f "$ready"
  if [ "$ARM" = agentcg ]; then
    go=/tmp/agentcg-mem-go
    rm -f "$go" && mkfifo "$go" || return 1
    sh -c 'read _ < "$1"; exec "$2/memreplay" --base-mib "$3" --ready "$4"' _ \
      "$go" "$BIN" "$BASE_MIB" "$ready" < /dev/null 2> "$DIR/base.log" &
    BASE_PID=$!
    cli session create high --priority high --runtime-pid "$BASE_PID" > /dev/null || {
      say "cannot create session high"; echo go > "$go"; return 1; }
    for s in low1 low2; do
      cli session create "$s" --priority low > /dev/null || { say "cannot create session $s"; echo go > "$go"; return 1; }
    done
    echo go > "$go"
  else
    sh -c 'echo $$ > "$1/cgroup.procs" && exec "$2/memreplay" --base-mib "$3" --ready "$4"' _ \
      "$T/high/runtime" "$BIN" "$BASE_MIB" "$ready" < /dev/null 2> "$DIR/base.log" &
    BASE_PID=$!
  fi
  tries=0
  until [ -e "$ready" ]; do
    kill -0 "$BASE_PID" 2>/dev/null || { say "the base process died before holding its memory"; return 0; }
    tries=$((tries + 1))
    [ "$tries" -le 600 ] || { say "the base process did not allocate within 60 s"; return 1; }
    sleep 0.1
  done
}

# Starts one replay ($1 = high|low1|low2) at $START; sets REPLAY_PID.
start_replay() {
  trace=$TRACE_LOW
  [ "$1" = high ] && trace=$TRACE_HIGH
  set -- "$1" --trace "$trace" --speed "$SPEED" --out "$DIR/$1.json" --start-at-ms "$START"
  if [ "$ARM" = agentcg ]; then
    peak=$PEAK_LOW
    [ "$1" = high ] && peak=$PEAK_HIGH
    name=$1
    shift
    cli run --session "$name" --intent "mem=${peak}M" --record "$DIR/$name.record.json" \
      -- "$BIN/memreplay" "$@" < /dev/null 2> "$DIR/$name.log" &
  else
    cg=$T/$1/call
    adj=$ADJ_LOW
    [ "$1" = high ] && adj=$ADJ_HIGH
    name=$1
    shift
    sh -c 'echo $$ > "$1/cgroup.procs" && echo "$2" > /proc/self/oom_score_adj && shift 2 &&
      exec "$@"' _ "$cg" "$adj" "$BIN/memreplay" "$@" < /dev/null 2> "$DIR/$name.log" &
  fi
  REPLAY_PID=$!
}

# One instance of the plan: RUN LIMIT SPEED ARM.
instance() {
  DIR=$BENCH_OUT/r$RUN-${LIMIT}M-${SPEED}x-$ARM
  rm -rf "$DIR" && mkdir -p "$DIR" || return 1
  t0=$(now_ms)
  setup_parent || return 1
  start_daemon || return 1
  start_base || return 1
  # Replays start together, 3 s from now (agentcg run needs its round trip first).
  START=$(($(now_ms) + 3000))
  start_replay high; pid_high=$REPLAY_PID
  start_replay low1; pid_low1=$REPLAY_PID
  start_replay low2; pid_low2=$REPLAY_PID
  wait "$pid_high"; st_high=$?
  wait "$pid_low1"; st_low1=$?
  wait "$pid_low2"; st_low2=$?
  kill -TERM "$BASE_PID" 2>/dev/null
  # (braces: the shell's "Terminated" notice goes to /dev/null, the status stays)
  { wait "$BASE_PID"; st_base=$?; } 2>/dev/null
  BASE_PID=
  printf 'high %s\nbase %s\nlow1 %s\nlow2 %s\n' "$st_high" "$st_base" "$st_low1" "$st_low2" > "$DIR/status"
  for s in high low1 low2; do
    cat "$(session_cg "$s")/memory.events" > "$DIR/events-$s" 2>/dev/null ||
      say "no memory.events for session $s"
  done
  cat "$P/memory.events" > "$DIR/events-parent"
  cat "$P/memory.peak" > "$DIR/peak-parent" 2>/dev/null
  if [ "$ARM" = agentcg ]; then
    for s in high low1 low2; do cli session close "$s" --force > /dev/null; done
  fi
  stop_daemon
  remove_parent
  echo $(($(now_ms) - t0)) > "$DIR/elapsed_ms"
  kills=$(for s in high low1 low2; do printf '%s=%s ' "$s" "$(awk '$1 == "oom_kill" {print $2}' "$DIR/events-$s" 2>/dev/null)"; done)
  say "r$RUN ${LIMIT}M ${SPEED}x $ARM: exit high=$st_high base=$st_base low1=$st_low1 low2=$st_low2; oom_kill $kills($(cat "$DIR/elapsed_ms") ms)"
}

# After a failed instance: end what is left so that the next one starts clean.
cleanup() {
  [ -n "$BASE_PID" ] && { kill -KILL "$BASE_PID" 2>/dev/null; wait "$BASE_PID" 2>/dev/null; }
  BASE_PID=
  if [ -n "$DAEMON_PID" ]; then
    for s in high low1 low2; do cli session close "$s" --force > /dev/null 2>&1; done
    stop_daemon
  fi
  [ -e "$P/cgroup.kill" ] && echo 1 > "$P/cgroup.kill"
  sleep 0.5
  remove_parent
}

for bin in agentcgd agentcg memreplay; do
  [ -x "$BIN/$bin" ] || { say "$BIN/$bin is missing (cargo xtask builds it)"; exit 1; }
done
for t in "$TRACE_HIGH" "$TRACE_LOW"; do
  [ -r "$t" ] || { say "trace $t is not readable in the guest"; exit 1; }
done
# Every arm knows each replay's trace peak, rounded up to 64 MiB: the agentcg arm declares
# it as the call's expected memory (`--intent mem=`, which becomes the call's
# memory.high), the others write it as memory.high of the replay's call cgroup.
PEAK_HIGH=$("$BIN/memreplay" --trace "$TRACE_HIGH" --peak-mib) || exit 1
PEAK_LOW=$("$BIN/memreplay" --trace "$TRACE_LOW" --peak-mib) || exit 1
PEAK_HIGH=$(((PEAK_HIGH + 63) / 64 * 64))
PEAK_LOW=$(((PEAK_LOW + 63) / 64 * 64))
mkdir -p "$BENCH_OUT" && rm -rf "${BENCH_OUT:?}"/r* "$BENCH_OUT/agentcgd.log"
say "swap: $(awk 'NR > 1' /proc/swaps | wc -l) device(s); declared peaks (call memory.high): ${PEAK_HIGH}M (HIGH), ${PEAK_LOW}M (LOW)"
while read -r RUN LIMIT SPEED ARM <&3; do
  [ -n "${ARM:-}" ] || continue
  if ! instance; then
    say "r$RUN ${LIMIT}M ${SPEED}x $ARM: setup failed (see above); instance skipped"
    echo "setup failed" > "$DIR/error"
    ERRORS=$((ERRORS + 1))
    cleanup
  fi
done 3< "$PLAN"
say "done ($ERRORS failed instance(s))"
[ "$ERRORS" -eq 0 ]
