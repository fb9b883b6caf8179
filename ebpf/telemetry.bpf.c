// SPDX-License-Identifier: GPL-2.0-only
/*
 * telemetry.bpf.c - per-tool-call process telemetry.
 *
 * Counts execs, forks and process exits per cgroup, for the cgroups that userspace
 * registered in `watched` (one per tool call), and streams one struct tele_event per
 * such event to the `events` ring buffer. Everything else is ignored after one hash
 * lookup, so the cost for unwatched tasks is a cgroup-id read and a failed lookup.
 *
 * Keyed by bpf_get_current_cgroup_id(): the cgroup v2 cgroup of the running task. For
 * fork that is the parent's cgroup (the tracepoint runs in the parent); a process that
 * the daemon spawns straight into a call cgroup (clone3 CLONE_INTO_CGROUP) is therefore
 * not counted as a fork of that call, but its exec and exit are.
 *
 * Exec events carry the parent's pid and the first TELE_ARGV_BYTES of the arguments,
 * fork events the parent's pid: userspace builds each call's process list from them.
 *
 * The call's tool is the process born into a watched cgroup from outside it: agentcg's
 * client starts it with clone3(CLONE_INTO_CGROUP), so its parent lives elsewhere, while
 * every process the tool starts has a parent inside. It is recognised at its fork (the
 * child's cgroup, read from the task) and again at its exec (the parent's cgroup), so
 * one event the kernel skips (a tracing program does not run while another instance of
 * it is active on the same CPU: bpf_prog_info.recursion_misses) cannot make a child of
 * the tool the tool. Its exit status is kept in the map and its exit event flagged
 * (TELE_F_TOOL): agentcgd ends the call there, without waiting for the client that
 * started it to report.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "intf.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENTCG_MAX_WATCHED);
	__type(key, __u64);
	__type(value, struct call_counters);
} watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, AGENTCG_EVENTS_BYTES);
} events SEC(".maps");

/* Events lost because the ring buffer was full (userspace did not drain it in time). */
__u64 ringbuf_drops = 0;
/* Events written to the ring buffer. */
__u64 ringbuf_events = 0;

/* The id of a task's cgroup v2 cgroup: what bpf_get_current_cgroup_id() returns in it. */
static __always_inline __u64 task_cgid(struct task_struct *t)
{
	return t->cgroups->dfl_cgrp->kn->id;
}

/* Reserves an event and fills the common fields; NULL (counted as a drop) when full. */
static __always_inline struct tele_event *start_event(__u32 kind, __u32 pid, __u64 cgid,
						      __u64 now, __u32 ppid)
{
	struct tele_event *e;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&ringbuf_drops, 1);
		return NULL;
	}
	e->kind = kind;
	e->pid = pid;
	e->cgid = cgid;
	e->ts_ns = now;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->status = 0;
	e->flags = 0;
	e->ppid = ppid;
	e->argv_len = 0;
	return e;
}

/*
 * The new program's arguments: mm->arg_start..arg_end of the task that just exec'd,
 * which is the current task, so its user memory is readable here (exec wrote those
 * pages a moment ago). At most TELE_ARGV_BYTES; longer ones are cut and flagged.
 */
static __always_inline void fill_argv(struct tele_event *e, struct task_struct *p)
{
	struct mm_struct *mm = p->mm;
	__u64 len;

	if (!mm)
		return;
	len = mm->arg_end - mm->arg_start;
	/* Two reads the verifier can bound: a constant size, or a masked one below it. */
	if (len >= TELE_ARGV_BYTES) {
		if (len > TELE_ARGV_BYTES)
			e->flags |= TELE_F_ARGV_CUT;
		len = TELE_ARGV_BYTES;
		if (bpf_probe_read_user(e->argv, TELE_ARGV_BYTES, (void *)mm->arg_start) == 0)
			e->argv_len = len;
		return;
	}
	len &= TELE_ARGV_BYTES - 1;
	if (bpf_probe_read_user(e->argv, len, (void *)mm->arg_start) == 0)
		e->argv_len = len;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tele_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u64 cgid = bpf_get_current_cgroup_id();
	struct call_counters *c;
	struct tele_event *e;
	__u64 now;

	c = bpf_map_lookup_elem(&watched, &cgid);
	if (!c)
		return 0;
	now = bpf_ktime_get_ns();
	__sync_fetch_and_add(&c->execs, 1);
	/* Only the first exec sets it; needs BPF atomics (-mcpu=v3). */
	__sync_val_compare_and_swap(&c->first_exec_ns, 0, now);
	/* The tool, if its fork was not seen: the one exec'ing process whose parent is outside. */
	if (task_cgid(p->real_parent) != cgid)
		__sync_val_compare_and_swap(&c->tool_pid, 0, (__u32)p->tgid);
	e = start_event(TELE_EXEC, p->tgid, cgid, now, p->real_parent->tgid);
	if (!e)
		return 0;
	fill_argv(e, p);
	bpf_ringbuf_submit(e, 0);
	__sync_fetch_and_add(&ringbuf_events, 1);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(tele_fork, struct task_struct *parent, struct task_struct *child)
{
	__u64 cgid;
	struct call_counters *c;
	struct tele_event *e;

	/* The tracepoint also fires for new threads (CLONE_THREAD): count processes only. */
	if (child->pid != child->tgid)
		return 0;
	cgid = bpf_get_current_cgroup_id();
	c = bpf_map_lookup_elem(&watched, &cgid);
	if (!c) {
		/*
		 * Born into a watched cgroup from outside (clone3 CLONE_INTO_CGROUP put the
		 * child there in copy_process(), before this tracepoint): the call's tool. Not
		 * a fork of the call; its exec and exit are counted.
		 */
		__u64 child_cgid = task_cgid(child);

		if (child_cgid == cgid)
			return 0;
		c = bpf_map_lookup_elem(&watched, &child_cgid);
		if (c)
			__sync_val_compare_and_swap(&c->tool_pid, 0, (__u32)child->tgid);
		return 0;
	}
	__sync_fetch_and_add(&c->forks, 1);
	e = start_event(TELE_FORK, child->tgid, cgid, bpf_ktime_get_ns(), parent->tgid);
	if (e) {
		bpf_ringbuf_submit(e, 0);
		__sync_fetch_and_add(&ringbuf_events, 1);
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tele_exit, struct task_struct *p, bool group_dead)
{
	__u64 cgid, now;
	__u32 status, flags = 0;
	struct call_counters *c;
	struct tele_event *e;

	/*
	 * Count whole processes: group_dead is true for the last thread of a thread group
	 * to exit, which is when the process is gone (the leader may exit earlier).
	 */
	if (!group_dead)
		return 0;
	cgid = bpf_get_current_cgroup_id();
	c = bpf_map_lookup_elem(&watched, &cgid);
	if (!c)
		return 0;
	now = bpf_ktime_get_ns();
	/*
	 * do_exit() stored the code before this tracepoint; for a group exit (exit_group(2),
	 * a fatal signal) every thread carries the group's code, which is what waitpid(2)
	 * reports.
	 */
	status = (__u32)p->exit_code;
	__sync_fetch_and_add(&c->exits, 1);
	/* Plain store: concurrent exits race for "latest", any of them is fine. */
	c->last_exit_ns = now;
	if ((__u32)p->tgid == c->tool_pid) {
		flags = TELE_F_TOOL;
		/*
		 * Publication: the status first, then the time with a fully ordered atomic.
		 * A plain store then a compiler barrier only holds on x86 (TSO); a weakly
		 * ordered CPU may make the time visible before the status. clang-19 has no
		 * BPF store-release (BPF_STORE_REL came with LLVM 21 and kernel 6.15), but
		 * the atomic read-modify-write instructions that return a value (BPF_FETCH,
		 * BPF_XCHG, BPF_CMPXCHG) are fully ordered: the kernel memory model requires
		 * it of value-returning read-modify-writes and the JITs emit them so (the
		 * riscv and powerpc JITs were fixed to that end in 2024; instruction-set.rst
		 * defines the operations but says nothing of ordering). So the xchg below
		 * is at least a release: whoever sees tool_exit_ns != 0 can see the status.
		 * XCHG always carries BPF_FETCH, so the compiler cannot relax it to a
		 * non-fetching store although the old value is unused. The reader's side is
		 * Telemetry::tool_exit in controller/bpf/src/telemetry.rs: it trusts the
		 * status only from a lookup made after one that saw the time.
		 */
		c->tool_status = status;
		__sync_lock_test_and_set(&c->tool_exit_ns, now);
	}
	e = start_event(TELE_EXIT, p->tgid, cgid, now, 0);
	if (!e)
		return 0;
	e->status = status;
	e->flags = flags;
	bpf_ringbuf_submit(e, 0);
	__sync_fetch_and_add(&ringbuf_events, 1);
	return 0;
}
