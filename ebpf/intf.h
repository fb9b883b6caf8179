/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * intf.h - the one ABI shared by agentcg's BPF programs and its Rust loader.
 *
 * Included by the BPF C side (after vmlinux.h, which provides the __u32/__u64
 * types) and mirrored by hand in controller/bpf/src/abi.rs. Both sides assert
 * every size and offset, so a change here that is not made there fails the build.
 * Only fixed-width integers; no pointers, no implicit padding.
 */
#ifndef __AGENTCG_INTF_H
#define __AGENTCG_INTF_H

/* Kinds of struct tele_event (its `kind` field). */
#define TELE_EXEC 1 /* a process in a watched cgroup called execve() */
#define TELE_EXIT 2 /* the last thread of a process in a watched cgroup exited */
#define TELE_FORK 3 /* a process in a watched cgroup created a new process */

/* Bits of struct tele_event's `flags`. */
#define TELE_F_TOOL 1 /* TELE_EXIT of the call's tool: the process born into the cgroup from outside */
#define TELE_F_ARGV_CUT 2 /* TELE_EXEC: the arguments were longer than TELE_ARGV_BYTES */

/* Bytes of a process's arguments carried by a TELE_EXEC event (NUL-separated). */
#define TELE_ARGV_BYTES 256

/* Capacity of the `watched` map: tool-call cgroups tracked at once. */
#define AGENTCG_MAX_WATCHED 16384

/* Size of the `events` ring buffer in bytes (a power of two, a multiple of the page size). */
#define AGENTCG_EVENTS_BYTES (256 * 1024)

/*
 * Value of the `watched` hash map, keyed by cgroup id (__u64, the inode number of the
 * cgroup v2 directory). Userspace inserts a zeroed entry when it creates a tool-call
 * cgroup; the BPF programs only update entries that exist.
 */
struct call_counters {
	__u64 execs;         /* successful execve() calls by tasks of the cgroup */
	__u64 forks;         /* new processes (not threads) forked by tasks of the cgroup */
	__u64 exits;         /* processes of the cgroup that exited (last thread gone) */
	__u64 first_exec_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the first exec, 0 if none */
	__u64 last_exit_ns;  /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the latest exit, 0 if none */
	/*
	 * The tool: the process born into the cgroup from outside it (agentcg's client
	 * starts it there with clone3(CLONE_INTO_CGROUP); what it starts has a parent
	 * inside). Its end is the call's end; written before the kernel notifies its parent.
	 */
	__u64 tool_exit_ns;  /* when the tool exited, 0 while it runs */
	__u32 tool_pid;      /* its process id (tgid), 0 until it is born or execs */
	__u32 tool_status;   /* its wait status (as waitpid(2) reports it), once tool_exit_ns != 0 */
};

/* One record of the `events` ring buffer, written for watched cgroups only. */
struct tele_event {
	__u32 kind;     /* TELE_EXEC, TELE_EXIT or TELE_FORK */
	__u32 pid;      /* process id (tgid); for TELE_FORK the child's */
	__u64 cgid;     /* cgroup id of the task that triggered the event (the key in `watched`) */
	__u64 ts_ns;    /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the event happened */
	char comm[16];  /* task comm (TASK_COMM_LEN), NUL-padded; after exec the new program's */
	__u32 status;   /* TELE_EXIT: the process's wait status; 0 otherwise */
	__u32 flags;    /* TELE_F_* */
	__u32 ppid;     /* TELE_EXEC, TELE_FORK: the parent's process id; 0 otherwise */
	__u32 argv_len; /* TELE_EXEC: bytes of argv used (at most TELE_ARGV_BYTES) */
	char argv[TELE_ARGV_BYTES]; /* TELE_EXEC: the arguments, NUL-separated */
};

_Static_assert(sizeof(struct call_counters) == 56, "call_counters ABI size");
_Static_assert(__builtin_offsetof(struct call_counters, execs) == 0, "call_counters.execs");
_Static_assert(__builtin_offsetof(struct call_counters, forks) == 8, "call_counters.forks");
_Static_assert(__builtin_offsetof(struct call_counters, exits) == 16, "call_counters.exits");
_Static_assert(__builtin_offsetof(struct call_counters, first_exec_ns) == 24, "call_counters.first_exec_ns");
_Static_assert(__builtin_offsetof(struct call_counters, last_exit_ns) == 32, "call_counters.last_exit_ns");
_Static_assert(__builtin_offsetof(struct call_counters, tool_exit_ns) == 40, "call_counters.tool_exit_ns");
_Static_assert(__builtin_offsetof(struct call_counters, tool_pid) == 48, "call_counters.tool_pid");
_Static_assert(__builtin_offsetof(struct call_counters, tool_status) == 52, "call_counters.tool_status");

_Static_assert(sizeof(struct tele_event) == 312, "tele_event ABI size");
_Static_assert(__builtin_offsetof(struct tele_event, kind) == 0, "tele_event.kind");
_Static_assert(__builtin_offsetof(struct tele_event, pid) == 4, "tele_event.pid");
_Static_assert(__builtin_offsetof(struct tele_event, cgid) == 8, "tele_event.cgid");
_Static_assert(__builtin_offsetof(struct tele_event, ts_ns) == 16, "tele_event.ts_ns");
_Static_assert(__builtin_offsetof(struct tele_event, comm) == 24, "tele_event.comm");
_Static_assert(__builtin_offsetof(struct tele_event, status) == 40, "tele_event.status");
_Static_assert(__builtin_offsetof(struct tele_event, flags) == 44, "tele_event.flags");
_Static_assert(__builtin_offsetof(struct tele_event, ppid) == 48, "tele_event.ppid");
_Static_assert(__builtin_offsetof(struct tele_event, argv_len) == 52, "tele_event.argv_len");
_Static_assert(__builtin_offsetof(struct tele_event, argv) == 56, "tele_event.argv");

/* ---- agentcg_sched (sched.bpf.c): the sched_ext scheduler's maps ---- */

/*
 * Scheduling classes of struct sched_policy (its `class` field). Classes are latency
 * tiers; CPU shares come from weights (see sched.bpf.c):
 *  RUNTIME: agent runtimes; a waking task preempts tool-call tasks (bounded by its share).
 *  HIGH/NORMAL/LOW: tool calls; how much wake-up credit a task that slept gets.
 */
#define SCHED_CLASS_NORMAL  0
#define SCHED_CLASS_RUNTIME 1
#define SCHED_CLASS_HIGH    2
#define SCHED_CLASS_LOW     3

/* Bits of struct sched_policy.flags. */
#define SCHED_FLAG_MEM_PRESSURE (1ULL << 0) /* over memory.high / under pressure: deprioritize */

/* Largest weight a policy may carry (cgroup v2 cpu.weight range is 1..10000). */
#define SCHED_WEIGHT_MAX 10000

/* Capacity of the `policies` and `usage` maps: agentcg cgroups scheduled at once. */
#define AGENTCG_SCHED_MAX_POLICIES 16384

/* Capacity of the internal `cgrps` map: every cgroup of the host with the cpu controller. */
#define AGENTCG_SCHED_MAX_CGROUPS 65536

/* Size of the `budget_events` ring buffer in bytes. */
#define AGENTCG_SCHED_EVENTS_BYTES (64 * 1024)

/* Values of the `ctrl` map's single u32 (test-only: makes the scheduler exit). */
#define SCHED_CTRL_NONE  0
#define SCHED_CTRL_EXIT  1 /* scx_bpf_exit(): a clean, requested unregistration */
#define SCHED_CTRL_ERROR 2 /* scx_bpf_error(): an error exit, as a bug would cause */

/* Exit code passed to scx_bpf_exit() for SCHED_CTRL_EXIT. */
#define SCHED_EXIT_CODE_REQUESTED 64

/*
 * Value of the `policies` hash map, keyed by cgroup id (__u64). Userspace writes it
 * when it creates a session or call cgroup, before the first task runs there.
 */
struct sched_policy {
	__u32 class;     /* SCHED_CLASS_* */
	__u32 weight;    /* 1..SCHED_WEIGHT_MAX overrides the cgroup's cpu.weight; 0 follows it */
	__u64 budget_ns; /* cumulative CPU budget in ns; 0 = none */
	__u64 flags;     /* SCHED_FLAG_* */
};

/*
 * Value of the `usage` hash map, keyed by cgroup id. Userspace inserts it zeroed with
 * the policy; the scheduler accumulates the CPU time of the cgroup's own tasks.
 */
struct sched_usage {
	__u64 runtime_ns;   /* cumulative CPU time charged to the cgroup */
	__u64 exhausted;    /* 1 once runtime_ns reached the policy's budget_ns */
	__u64 exhausted_ns; /* bpf_ktime_get_ns() when it did, 0 if not */
};

/* One record of the `budget_events` ring buffer: a cgroup used up its CPU budget. */
struct sched_budget_event {
	__u64 cgid;      /* the cgroup */
	__u64 used_ns;   /* its runtime_ns when the budget was found exhausted */
	__u64 budget_ns; /* the budget it exceeded */
	__u64 ts_ns;     /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the detection */
};

_Static_assert(sizeof(struct sched_policy) == 24, "sched_policy ABI size");
_Static_assert(__builtin_offsetof(struct sched_policy, class) == 0, "sched_policy.class");
_Static_assert(__builtin_offsetof(struct sched_policy, weight) == 4, "sched_policy.weight");
_Static_assert(__builtin_offsetof(struct sched_policy, budget_ns) == 8, "sched_policy.budget_ns");
_Static_assert(__builtin_offsetof(struct sched_policy, flags) == 16, "sched_policy.flags");

_Static_assert(sizeof(struct sched_usage) == 24, "sched_usage ABI size");
_Static_assert(__builtin_offsetof(struct sched_usage, runtime_ns) == 0, "sched_usage.runtime_ns");
_Static_assert(__builtin_offsetof(struct sched_usage, exhausted) == 8, "sched_usage.exhausted");
_Static_assert(__builtin_offsetof(struct sched_usage, exhausted_ns) == 16, "sched_usage.exhausted_ns");

_Static_assert(sizeof(struct sched_budget_event) == 32, "sched_budget_event ABI size");
_Static_assert(__builtin_offsetof(struct sched_budget_event, cgid) == 0, "sched_budget_event.cgid");
_Static_assert(__builtin_offsetof(struct sched_budget_event, used_ns) == 8, "sched_budget_event.used_ns");
_Static_assert(__builtin_offsetof(struct sched_budget_event, budget_ns) == 16, "sched_budget_event.budget_ns");
_Static_assert(__builtin_offsetof(struct sched_budget_event, ts_ns) == 24, "sched_budget_event.ts_ns");

/* ---- memory programs (mem.bpf.c), `mem_state` shared with agentcg_sched ---- */

/* Roles of struct mem_watch (informational for the BPF side, carried in events). */
#define MEM_ROLE_CALL    1 /* a tool-call cgroup */
#define MEM_ROLE_SESSION 2 /* a session cgroup (or its calls/ ceiling) */
#define MEM_ROLE_ROOT    3 /* the agentcg root cgroup, or an ancestor of it (its limit bounds the root) */

/* Bits of struct mem_state.flags. */
#define MEM_OVER_HIGH    (1ULL << 0) /* the kernel reported MEMCG_HIGH; cleared below 7/8 of memory.high */
#define MEM_NEAR_MAX     (1ULL << 1) /* usage >= near_max_bp of memory.max */
#define MEM_AT_MAX       (1ULL << 2) /* a charge hit memory.max (MEMCG_MAX); cleared below 7/8 of it */
#define MEM_DEPRIORITIZE (1ULL << 3) /* set by userspace (the daemon's graduated response) */

/* Kinds of struct mem_event. */
#define MEM_EV_HIGH                1 /* MEMCG_HIGH: MEM_OVER_HIGH was set (once per transition) */
#define MEM_EV_MAX                 2 /* MEMCG_MAX: a charge hit memory.max (at most one per ms) */
#define MEM_EV_OOM                 3 /* MEMCG_OOM: the cgroup ran out of memory (every time) */
#define MEM_EV_OOM_KILL            4 /* MEMCG_OOM_KILL: a process of the cgroup was OOM-killed */
#define MEM_EV_OOM_GROUP_KILL      5 /* MEMCG_OOM_GROUP_KILL: memory.oom.group killed the cgroup */
#define MEM_EV_NEAR_MAX            6 /* usage crossed the near_max_bp watermark (once per transition) */
#define MEM_EV_HIGH_RECOVERED      7 /* MEM_OVER_HIGH cleared: usage < 7/8 of memory.high */
#define MEM_EV_NEAR_MAX_RECOVERED  8 /* MEM_NEAR_MAX cleared: usage < watermark - MEM_NEAR_MAX_HYST_BP */
#define MEM_EV_MAX_RECOVERED       9 /* MEM_AT_MAX cleared: usage < 7/8 of memory.max */

/* Hysteresis of the near-max watermark, in basis points of memory.max. */
#define MEM_NEAR_MAX_HYST_BP 500

/* Minimum interval between two MEM_EV_MAX events of one cgroup (MEMCG_MAX fires in a loop). */
#define MEM_MAX_EVENT_INTERVAL_NS (1000ULL * 1000)

/* Capacity of the `mem_watch` and `mem_state` maps. */
#define AGENTCG_MEM_MAX_WATCHED 16384

/* Size of the `mem_events` ring buffer in bytes. */
#define AGENTCG_MEM_EVENTS_BYTES (256 * 1024)

/* Value of the `mem_watch` hash map, keyed by cgroup id; written by userspace only. */
struct mem_watch {
	__u32 role;        /* MEM_ROLE_* */
	__u32 near_max_bp; /* watermark in basis points (1/10000) of memory.max; 0 = off */
};

/*
 * Value of the `mem_state` hash map, keyed by cgroup id. One kernel object shared by the
 * memory programs and agentcg_sched. Userspace inserts it zeroed when it watches a
 * cgroup and sets/clears MEM_DEPRIORITIZE; the BPF side flips the other bits with
 * atomic or/and, so each transition is seen (and reported) once.
 */
struct mem_state {
	__u64 flags;       /* MEM_* bits */
	__u64 since_ns;    /* bpf_ktime_get_ns() of the latest flag transition made by BPF, 0 if none */
	__u64 max_events;  /* MEMCG_MAX events seen (rate-limited events included) */
	__u64 last_max_ns; /* bpf_ktime_get_ns() of the latest MEM_EV_MAX sent (rate limit) */
};

/* One record of the `mem_events` ring buffer. */
struct mem_event {
	__u32 kind;    /* MEM_EV_* */
	__u32 role;    /* the cgroup's MEM_ROLE_* */
	__u64 cgid;    /* the cgroup */
	__u64 ts_ns;   /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the event */
	__u64 usage;   /* memory usage of the cgroup in bytes (memory.current) */
	__u64 limit;   /* the limit involved in bytes: memory.high or memory.max */
	__u64 counter; /* the memory.events counter of the kind (high, max, oom, oom_kill, oom_group_kill), else 0 */
};

/*
 * Context of the `mem_set_user_flags` syscall program (run by userspace with
 * BPF_PROG_TEST_RUN): flips userspace-owned bits (MEM_USER_FLAGS, MEM_USER_CLEAR_FLAGS) of `cgid`'s mem_state
 * with atomic or/and, so the update cannot overwrite a concurrent BPF-side transition
 * (a map update from userspace would replace the whole value). The program returns 1,
 * or 0 if the cgroup has no mem_state entry.
 */
#define MEM_USER_FLAGS MEM_DEPRIORITIZE
/*
 * Bits userspace may also clear: MEM_OVER_HIGH, after it raised the cgroup's
 * memory.high above the usage (a burst), so that the next crossing of the new limit is
 * a new transition with its own MEM_EV_HIGH event.
 */
#define MEM_USER_CLEAR_FLAGS (MEM_USER_FLAGS | MEM_OVER_HIGH)
struct mem_flag_args {
	__u64 cgid;
	__u64 set;   /* bits to set (masked with MEM_USER_FLAGS) */
	__u64 clear; /* bits to clear (masked with MEM_USER_CLEAR_FLAGS) */
};

_Static_assert(sizeof(struct mem_flag_args) == 24, "mem_flag_args ABI size");

_Static_assert(sizeof(struct mem_watch) == 8, "mem_watch ABI size");
_Static_assert(__builtin_offsetof(struct mem_watch, role) == 0, "mem_watch.role");
_Static_assert(__builtin_offsetof(struct mem_watch, near_max_bp) == 4, "mem_watch.near_max_bp");

_Static_assert(sizeof(struct mem_state) == 32, "mem_state ABI size");
_Static_assert(__builtin_offsetof(struct mem_state, flags) == 0, "mem_state.flags");
_Static_assert(__builtin_offsetof(struct mem_state, since_ns) == 8, "mem_state.since_ns");
_Static_assert(__builtin_offsetof(struct mem_state, max_events) == 16, "mem_state.max_events");
_Static_assert(__builtin_offsetof(struct mem_state, last_max_ns) == 24, "mem_state.last_max_ns");

_Static_assert(sizeof(struct mem_event) == 48, "mem_event ABI size");
_Static_assert(__builtin_offsetof(struct mem_event, kind) == 0, "mem_event.kind");
_Static_assert(__builtin_offsetof(struct mem_event, role) == 4, "mem_event.role");
_Static_assert(__builtin_offsetof(struct mem_event, cgid) == 8, "mem_event.cgid");
_Static_assert(__builtin_offsetof(struct mem_event, ts_ns) == 16, "mem_event.ts_ns");
_Static_assert(__builtin_offsetof(struct mem_event, usage) == 24, "mem_event.usage");
_Static_assert(__builtin_offsetof(struct mem_event, limit) == 32, "mem_event.limit");
_Static_assert(__builtin_offsetof(struct mem_event, counter) == 40, "mem_event.counter");

#endif /* __AGENTCG_INTF_H */
