#!/bin/sh
# The agentcg demo, run inside the sched_ext VM by `cargo xtask demo` (as root, from the
# workspace root; AGENTCG_BIN_DIR holds agentcgd and agentcg). Placeholder until the demo
# is written: shows the kernel and the sched_ext state.
set -u
echo "kernel: $(uname -r)"
echo "sched_ext state: $(cat /sys/kernel/sched_ext/state)"
echo "agentcg binaries in: $AGENTCG_BIN_DIR"
