// SPDX-License-Identifier: GPL-2.0-only
/*
 * mem.bpf.c - agentcg's in-kernel memory programs.
 *
 * For the cgroups userspace registered in `mem_watch` (tool calls, sessions, the
 * agentcg root), keeps pressure flags in `mem_state` and streams one struct mem_event
 * per transition to the `mem_events` ring buffer:
 *
 *  - fexit/__memcg_memory_event: the kernel's own memory.events accounting. MEMCG_HIGH
 *    sets MEM_OVER_HIGH (event on the transition), MEMCG_MAX sets MEM_AT_MAX (event at
 *    most once per MEM_MAX_EVENT_INTERVAL_NS per cgroup: it fires on every retry of a
 *    charge loop), MEMCG_OOM / OOM_KILL / OOM_GROUP_KILL send an event every time.
 *    fexit rather than fentry: the counter we report is then the value after this
 *    event's increment, i.e. what memory.events shows. Values come from the memcg
 *    kfuncs (bpf_cgroup_from_id -> bpf_get_mem_cgroup(&cgrp->self) ->
 *    bpf_mem_cgroup_usage / bpf_mem_cgroup_memory_events -> bpf_put_mem_cgroup):
 *    fentry/fexit arguments are not trusted pointers, so the memcg argument itself
 *    cannot be handed to a KF_RCU kfunc; a cgroup looked up by id is trusted.
 *    With allow_spinning == false (MEMCG_MAX from a non-spinning allocation context)
 *    bpf_cgroup_from_id is not used; the values are read from the memcg directly.
 *  - fexit/try_charge_memcg (called once per charge batch, ~256 KiB, not per page):
 *    walks the charging memcg and its ancestors (depth <= MAX_DEPTH) and sets
 *    MEM_NEAR_MAX (event on the transition) on each watched one whose usage reached
 *    near_max_bp of its memory.max.
 *  - fentry/uncharge_batch (the release path of folios: process exit, munmap, reclaim):
 *    walks the same way with the usage the batch leaves behind (usage - nr_memory; the
 *    page counters of every ancestor drop by the same amount) and clears, each with a
 *    "recovered" event: MEM_OVER_HIGH below 7/8 of memory.high, MEM_AT_MAX below 7/8 of
 *    memory.max, MEM_NEAR_MAX below the watermark minus MEM_NEAR_MAX_HYST_BP. The 1/8
 *    hysteresis keeps a cgroup hovering at its limit (reclaim frees a little, the task
 *    charges it again) from flapping the flag and flooding the ring buffer. 1/8 is a
 *    judgement call, not a measurement: 4 MiB at memory.high=32M, far more than the
 *    per-CPU charge stock (64 pages per CPU) that makes usage jitter without any real
 *    change.
 *    Attach points verified on 7.3.4 by tests/tests/mem.rs (all three are out of line).
 *  - tp_btf/cgroup_rmdir: a removed cgroup's entries are deleted from both maps.
 *
 * `mem_state` is shared with agentcg_sched: userspace creates the map once and both
 * objects reuse its fd, so either can be loaded alone. MEM_DEPRIORITIZE is set only by
 * userspace, through the `mem_set_user_flags` syscall program (atomic too). Flag bits
 * change with atomic or/and: whoever flips a bit reports it, once.
 *
 * Page counters count pages; events carry bytes (PAGE_SHIFT 12: x86-64, the target).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "intf.h"

char LICENSE[] SEC("license") = "GPL";

#define MAX_DEPTH 8
#define PAGE_SHIFT 12
/* A page_counter limit at or above this many pages is "max" (PAGE_COUNTER_MAX is ~2^51). */
#define UNLIMITED_PAGES (1ULL << 40)

/*
 * docs/ARCHITECTURE.md#bpf-pitfalls, pitfall 3: the memcg kfuncs are not in vmlinux.h;
 * declare them.
 */
extern struct cgroup *bpf_cgroup_from_id(u64 cgid) __ksym;
extern void bpf_cgroup_release(struct cgroup *cgrp) __ksym;
extern struct mem_cgroup *bpf_get_mem_cgroup(struct cgroup_subsys_state *css) __ksym;
extern void bpf_put_mem_cgroup(struct mem_cgroup *memcg) __ksym;
extern unsigned long bpf_mem_cgroup_usage(struct mem_cgroup *memcg) __ksym;
extern unsigned long bpf_mem_cgroup_memory_events(struct mem_cgroup *memcg,
						  enum memcg_memory_event event) __ksym;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENTCG_MEM_MAX_WATCHED);
	__type(key, __u64);
	__type(value, struct mem_watch);
} mem_watch SEC(".maps");

/* Shared with agentcg_sched (same definition there): userspace passes one fd to both. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENTCG_MEM_MAX_WATCHED);
	__type(key, __u64);
	__type(value, struct mem_state);
} mem_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, AGENTCG_MEM_EVENTS_BYTES);
} mem_events SEC(".maps");

/* Diagnostics, read by userspace. */
__u64 nr_events = 0;
__u64 nr_event_drops = 0;
__u64 nr_max_suppressed = 0; /* MEMCG_MAX events not sent (rate limit) */
__u64 nr_kfunc_misses = 0;   /* kfunc path unavailable: values read from the memcg directly */
__u64 nr_rmdir_cleanups = 0; /* watched cgroups forgotten because they were removed */

static __always_inline __u64 memcg_cgid(struct mem_cgroup *m)
{
	return BPF_CORE_READ(m, css.cgroup, kn, id);
}

static __always_inline struct mem_cgroup *memcg_parent(struct mem_cgroup *m)
{
	struct cgroup_subsys_state *p = BPF_CORE_READ(m, css.parent);

	/* css is the first member of struct mem_cgroup. */
	return p ? bpf_core_cast(p, struct mem_cgroup) : NULL;
}

static __always_inline __u64 counter_pages(struct mem_cgroup *m)
{
	return (__u64)BPF_CORE_READ(m, memory.usage.counter);
}

static void emit(__u32 kind, __u32 role, __u64 cgid, __u64 now, __u64 usage, __u64 limit,
		 __u64 counter)
{
	struct mem_event *e;

	e = bpf_ringbuf_reserve(&mem_events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&nr_event_drops, 1);
		return;
	}
	e->kind = kind;
	e->role = role;
	e->cgid = cgid;
	e->ts_ns = now;
	e->usage = usage;
	e->limit = limit;
	e->counter = counter;
	bpf_ringbuf_submit(e, 0);
	__sync_fetch_and_add(&nr_events, 1);
}

/* Sets `bit`; true if this call set it (the transition to report). */
static __always_inline bool flag_set(struct mem_state *st, __u64 bit, __u64 now)
{
	if (st->flags & bit)
		return false;
	if (__sync_fetch_and_or(&st->flags, bit) & bit)
		return false;
	st->since_ns = now;
	return true;
}

/* Clears `bit`; true if this call cleared it. */
static __always_inline bool flag_clear(struct mem_state *st, __u64 bit, __u64 now)
{
	if (!(st->flags & bit))
		return false;
	if (!(__sync_fetch_and_and(&st->flags, ~bit) & bit))
		return false;
	st->since_ns = now;
	return true;
}

/*
 * Usage (bytes) and the memory.events counter of `event` through the memcg kfuncs;
 * false if the cgroup or its memcg is gone.
 */
static bool kfunc_values(__u64 cgid, enum memcg_memory_event event, __u64 *usage, __u64 *counter)
{
	struct cgroup *cg;
	struct mem_cgroup *mc;

	cg = bpf_cgroup_from_id(cgid);
	if (!cg)
		return false;
	/* Any css of the cgroup will do: the kfunc finds the memory css from it. */
	mc = bpf_get_mem_cgroup(&cg->self);
	bpf_cgroup_release(cg);
	if (!mc)
		return false;
	*usage = bpf_mem_cgroup_usage(mc);
	*counter = bpf_mem_cgroup_memory_events(mc, event);
	bpf_put_mem_cgroup(mc);
	return true;
}

SEC("fexit/__memcg_memory_event")
int BPF_PROG(mem_event_exit, struct mem_cgroup *memcg, enum memcg_memory_event event,
	     bool allow_spinning)
{
	__u64 cgid, now, usage = 0, counter = 0, limit, last;
	struct mem_watch *w;
	struct mem_state *st;
	__u32 kind;

	if (event < MEMCG_HIGH || event > MEMCG_OOM_GROUP_KILL)
		return 0;
	cgid = memcg_cgid(memcg);
	w = bpf_map_lookup_elem(&mem_watch, &cgid);
	if (!w)
		return 0;
	st = bpf_map_lookup_elem(&mem_state, &cgid);
	if (!st)
		return 0;
	now = bpf_ktime_get_ns();

	switch (event) {
	case MEMCG_HIGH:
		if (!flag_set(st, MEM_OVER_HIGH, now))
			return 0;
		kind = MEM_EV_HIGH;
		limit = BPF_CORE_READ(memcg, memory.high);
		break;
	case MEMCG_MAX:
		__sync_fetch_and_add(&st->max_events, 1);
		flag_set(st, MEM_AT_MAX, now);
		last = st->last_max_ns;
		if ((last && now - last < MEM_MAX_EVENT_INTERVAL_NS) ||
		    __sync_val_compare_and_swap(&st->last_max_ns, last, now) != last) {
			__sync_fetch_and_add(&nr_max_suppressed, 1);
			return 0;
		}
		kind = MEM_EV_MAX;
		limit = BPF_CORE_READ(memcg, memory.max);
		break;
	case MEMCG_OOM:
		kind = MEM_EV_OOM;
		limit = BPF_CORE_READ(memcg, memory.max);
		break;
	case MEMCG_OOM_KILL:
		kind = MEM_EV_OOM_KILL;
		limit = BPF_CORE_READ(memcg, memory.max);
		break;
	default:
		kind = MEM_EV_OOM_GROUP_KILL;
		limit = BPF_CORE_READ(memcg, memory.max);
		break;
	}

	if (!allow_spinning || !kfunc_values(cgid, event, &usage, &counter)) {
		__sync_fetch_and_add(&nr_kfunc_misses, 1);
		usage = counter_pages(memcg) << PAGE_SHIFT;
		counter = (__u64)BPF_CORE_READ(memcg, memory_events[event].counter);
	}
	if (limit >= UNLIMITED_PAGES)
		limit = 0;
	emit(kind, w->role, cgid, now, usage, limit << PAGE_SHIFT, counter);
	return 0;
}

/* The near-max watermark of `w` in pages for a max of `max` pages, 0 if off. */
static __always_inline __u64 watermark(struct mem_watch *w, __u64 max, __u32 minus_bp)
{
	__u32 bp = w->near_max_bp;

	if (!bp || max >= UNLIMITED_PAGES)
		return 0;
	if (bp > 10000)
		bp = 10000;
	bp = bp > minus_bp ? bp - minus_bp : 0;
	return max * bp / 10000;
}

SEC("fexit/try_charge_memcg")
int BPF_PROG(mem_charge_exit, struct mem_cgroup *memcg, gfp_t gfp_mask, unsigned int nr_pages,
	     int ret)
{
	struct mem_cgroup *m = memcg;
	struct mem_watch *w;
	struct mem_state *st;
	__u64 cgid, usage, max, mark, now;
	int i;

	for (i = 0; i < MAX_DEPTH; i++) {
		if (!m)
			break;
		cgid = memcg_cgid(m);
		w = bpf_map_lookup_elem(&mem_watch, &cgid);
		if (w && w->near_max_bp) {
			max = BPF_CORE_READ(m, memory.max);
			mark = watermark(w, max, 0);
			usage = counter_pages(m);
			if (mark && usage >= mark) {
				st = bpf_map_lookup_elem(&mem_state, &cgid);
				now = bpf_ktime_get_ns();
				if (st && flag_set(st, MEM_NEAR_MAX, now))
					emit(MEM_EV_NEAR_MAX, w->role, cgid, now,
					     usage << PAGE_SHIFT, max << PAGE_SHIFT, 0);
			}
		}
		m = memcg_parent(m);
	}
	return 0;
}

/* Clears the flags of one watched memcg whose usage is `usage` pages after the uncharge. */
static void check_recovery(struct mem_cgroup *m, __u64 cgid, struct mem_state *st, __u64 usage)
{
	struct mem_watch *w = bpf_map_lookup_elem(&mem_watch, &cgid);
	__u32 role = w ? w->role : 0;
	__u64 high, max, mark, now = 0;

	if (st->flags & MEM_OVER_HIGH) {
		high = BPF_CORE_READ(m, memory.high);
		/* high raised to "max" meanwhile: recovered too. */
		if (high >= UNLIMITED_PAGES || usage < high - high / 8) {
			now = bpf_ktime_get_ns();
			if (flag_clear(st, MEM_OVER_HIGH, now))
				emit(MEM_EV_HIGH_RECOVERED, role, cgid, now, usage << PAGE_SHIFT,
				     high < UNLIMITED_PAGES ? high << PAGE_SHIFT : 0, 0);
		}
	}
	if (!(st->flags & (MEM_AT_MAX | MEM_NEAR_MAX)))
		return;
	max = BPF_CORE_READ(m, memory.max);
	if ((st->flags & MEM_AT_MAX) && (max >= UNLIMITED_PAGES || usage < max - max / 8)) {
		now = bpf_ktime_get_ns();
		if (flag_clear(st, MEM_AT_MAX, now))
			emit(MEM_EV_MAX_RECOVERED, role, cgid, now, usage << PAGE_SHIFT,
			     max < UNLIMITED_PAGES ? max << PAGE_SHIFT : 0, 0);
	}
	if (st->flags & MEM_NEAR_MAX) {
		/* Watermark turned off, or max raised to "max": recovered. */
		mark = w ? watermark(w, max, MEM_NEAR_MAX_HYST_BP) : 0;
		if (!mark || usage < mark) {
			now = bpf_ktime_get_ns();
			if (flag_clear(st, MEM_NEAR_MAX, now))
				emit(MEM_EV_NEAR_MAX_RECOVERED, role, cgid, now, usage << PAGE_SHIFT,
				     max < UNLIMITED_PAGES ? max << PAGE_SHIFT : 0, 0);
		}
	}
}

SEC("fentry/uncharge_batch")
int BPF_PROG(mem_uncharge_entry, const struct uncharge_gather *ug)
{
	struct mem_cgroup *m = BPF_CORE_READ(ug, objcg, memcg);
	__u64 nr = BPF_CORE_READ(ug, nr_memory), cgid, usage;
	struct mem_state *st;
	int i;

	if (!nr)
		return 0;
	for (i = 0; i < MAX_DEPTH; i++) {
		if (!m)
			break;
		cgid = memcg_cgid(m);
		st = bpf_map_lookup_elem(&mem_state, &cgid);
		if (st && (st->flags & (MEM_OVER_HIGH | MEM_AT_MAX | MEM_NEAR_MAX))) {
			usage = counter_pages(m);
			usage = usage > nr ? usage - nr : 0;
			check_recovery(m, cgid, st, usage);
		}
		m = memcg_parent(m);
	}
	return 0;
}

/*
 * A watched cgroup was removed: forget it, so a daemon that crashed between rmdir and
 * unwatch leaves no entries behind (cgroup ids are never reused).
 */
SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(mem_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	__u64 cgid = cgrp->kn->id;

	if (bpf_map_delete_elem(&mem_watch, &cgid) == 0)
		__sync_fetch_and_add(&nr_rmdir_cleanups, 1);
	bpf_map_delete_elem(&mem_state, &cgid);
	return 0;
}

/* Userspace's race-free flag update (struct mem_flag_args in intf.h). */
SEC("syscall")
int mem_set_user_flags(struct mem_flag_args *args)
{
	__u64 cgid = args->cgid, set = args->set & MEM_USER_FLAGS;
	__u64 clear = args->clear & MEM_USER_CLEAR_FLAGS;
	struct mem_state *st;

	st = bpf_map_lookup_elem(&mem_state, &cgid);
	if (!st)
		return 0;
	if (set)
		__sync_fetch_and_or(&st->flags, set);
	if (clear)
		__sync_fetch_and_and(&st->flags, ~clear);
	return 1;
}
