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
};

/* One record of the `events` ring buffer, written for watched cgroups only. */
struct tele_event {
	__u32 kind;     /* TELE_EXEC, TELE_EXIT or TELE_FORK */
	__u32 pid;      /* process id (tgid); for TELE_FORK the child's */
	__u64 cgid;     /* cgroup id of the task that triggered the event (the key in `watched`) */
	__u64 ts_ns;    /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the event happened */
	char comm[16];  /* task comm (TASK_COMM_LEN), NUL-padded; after exec the new program's */
};

_Static_assert(sizeof(struct call_counters) == 40, "call_counters ABI size");
_Static_assert(__builtin_offsetof(struct call_counters, execs) == 0, "call_counters.execs");
_Static_assert(__builtin_offsetof(struct call_counters, forks) == 8, "call_counters.forks");
_Static_assert(__builtin_offsetof(struct call_counters, exits) == 16, "call_counters.exits");
_Static_assert(__builtin_offsetof(struct call_counters, first_exec_ns) == 24, "call_counters.first_exec_ns");
_Static_assert(__builtin_offsetof(struct call_counters, last_exit_ns) == 32, "call_counters.last_exit_ns");

_Static_assert(sizeof(struct tele_event) == 40, "tele_event ABI size");
_Static_assert(__builtin_offsetof(struct tele_event, kind) == 0, "tele_event.kind");
_Static_assert(__builtin_offsetof(struct tele_event, pid) == 4, "tele_event.pid");
_Static_assert(__builtin_offsetof(struct tele_event, cgid) == 8, "tele_event.cgid");
_Static_assert(__builtin_offsetof(struct tele_event, ts_ns) == 16, "tele_event.ts_ns");
_Static_assert(__builtin_offsetof(struct tele_event, comm) == 24, "tele_event.comm");

#endif /* __AGENTCG_INTF_H */
