#!/bin/sh
# The agentcg demo, run inside the sched_ext VM by `cargo xtask demo` (as root, from the
# workspace root; AGENTCG_BIN_DIR holds agentcgd, agentcg and the memhog test tool).
# A scripted agent session: a few tool calls, one of which blows its memory budget,
# then the agent follows the advice and retries smaller.
set -u
B="$AGENTCG_BIN_DIR"
export AGENTCG_SOCKET=/tmp/agentcg-demo.sock
# A client whose agentcgd is gone waits this long for it to come back (default 10 s):
# under the VM's software emulation a restart, BPF programs loaded again, takes 20-60 s.
export AGENTCG_RESTART_WAIT=120
ROOT=/sys/fs/cgroup/agentcg
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; echo "(exit status $?)"; }

say "start agentcgd on $ROOT (embedded default policy)"
"$B/agentcgd" --root "$ROOT" --socket "$AGENTCG_SOCKET" --state-dir /tmp/agentcg-demo-state \
  2> /tmp/agentcgd-demo.log &
DAEMON=$!
i=0
while [ ! -S "$AGENTCG_SOCKET" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
[ -S "$AGENTCG_SOCKET" ] || { echo "agentcgd did not start:"; cat /tmp/agentcgd-demo.log; exit 1; }
show "$B/agentcg" status

say "an agent session with a 1 GiB budget; a sleeping process stands in for the agent runtime"
sleep 3600 &
AGENT=$!
show "$B/agentcg" session create demo --priority high --memory 1G --runtime-pid "$AGENT"
show "$B/agentcg" session show demo

say "tool call 1: a git-sized call; where does it run?"
show "$B/agentcg" run --session demo --verbose -- cat /proc/self/cgroup

say "tool call 2: a test run that declares its burst (at most 256M) and stays inside"
show "$B/agentcg" run --session demo --intent mem.max=256M,class=test -- "$B/memhog" 200

say "tool call 3: the same suite, but it needs 600 MiB: the call is OOM-killed alone"
show "$B/agentcg" run --session demo --intent mem.max=256M,class=test \
  --record /tmp/demo-oom.json -- "$B/memhog" 600
echo "structured feedback in the record:"
sed -n '/"feedback"/,/}/p' /tmp/demo-oom.json

say "the agent runtime is untouched"
if kill -0 "$AGENT" 2>/dev/null; then echo "runtime pid $AGENT alive"; else echo "RUNTIME DIED"; fi

say "tool call 4: the agent follows the advice and runs a single test file"
show "$B/agentcg" run --session demo --intent mem.max=256M,class=test -- "$B/memhog" 100

say "tool call 5: a command that hangs is stopped by its declared timeout"
show "$B/agentcg" run --session demo --intent timeout=2s -- sleep 60

say "tool call 6: a malformed intent is refused before anything runs"
show "$B/agentcg" run --session demo --intent 'memory:a[$(touch /tmp/pwned)]g' -- touch /tmp/pwned
[ -e /tmp/pwned ] && echo "SOMETHING RAN" || echo "nothing ran"

say "tool call 7: agentcgd is killed (kill -9) while a call runs, and restarted"
"$B/agentcg" run --session demo --intent timeout=30s --record /tmp/demo-crash.json \
  -- sh -c 'sleep 3; echo "the tool finished on its own"; exit 5' &
CALL=$!
sleep 1
kill -9 "$DAEMON"; wait "$DAEMON" 2>/dev/null
echo "agentcgd killed; the tool runs on in its cgroup"
"$B/agentcgd" --root "$ROOT" --socket "$AGENTCG_SOCKET" --state-dir /tmp/agentcg-demo-state \
  2>> /tmp/agentcgd-demo.log &
DAEMON=$!
wait "$CALL"; echo "(exit status $?)"
grep -o 're-adopted running calls.*' /tmp/agentcgd-demo.log | head -1
echo "its record after the restart:"
grep -o '"outcome": "[a-z_]*"' /tmp/demo-crash.json

say "history of the session"
show "$B/agentcg" call list --session demo
echo "call cgroups left under calls/: $(find "$ROOT/session-demo/calls" -mindepth 1 -type d | wc -l)"

say "close the session"
show "$B/agentcg" session close demo --force
kill "$DAEMON"; wait "$DAEMON" 2>/dev/null
kill -0 "$AGENT" 2>/dev/null && echo "demo done" || echo "demo done (runtime closed with the session)"
