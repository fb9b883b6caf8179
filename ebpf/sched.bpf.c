// SPDX-License-Identifier: GPL-2.0-only
/*
 * sched.bpf.c - agentcg_sched, the sched_ext scheduler of agentcg.
 *
 * Full mode (every SCHED_NORMAL/BATCH/IDLE task of the host), one hierarchy:
 *
 * Weights. Every cgroup with the cpu controller gets a node in `cgrps` (ops.cgroup_init)
 * with its cpu.weight (ops.cgroup_set_weight, or the weight of its agentcg policy). A
 * node is active while it or a descendant has a runnable task; each node knows the sum
 * of the weights of its active children (`child_sum`). The hierarchical weight of a
 * cgroup is the product, from it up to the root, of weight / active sum of siblings,
 * so sessions share the CPU by their weights and the calls of a session share the
 * session's part by theirs (as EEVDF does with group entities). Tasks directly in a
 * cgroup that also has active children (only the root can) count together as one
 * child of weight 100.
 *
 * Clocks. Each cgroup has a virtual clock advanced by the CPU time of its tasks divided
 * by its hierarchical weight. A task is queued in the shared DSQ ordered by its cgroup's
 * clock, so the cgroup whose clock lags runs next: CPU time is proportional to
 * hierarchical weight, tasks of one cgroup take turns. Clocks are charged in
 * ops.stopping, ops.tick and for `prev` in ops.dispatch. Pitfall 7
 * (docs/ARCHITECTURE.md#bpf-pitfalls): ops.dispatch runs before `prev` is requeued, so
 * `prev` keeps the CPU while its clock is not past the queue head. A cgroup's clock is
 * pulled forward to the global clock minus a class-dependent credit only when it becomes
 * active again (wake-up), never while it runs. Pitfall 5: the task's cgroup is cached in
 * task storage (ops.init_task, ops.cgroup_move); scx_bpf_task_cgroup() is never called.
 *
 * Synchronous wake-ups (pipes, sockets: the waker is about to sleep) run next on the
 * waker's CPU, skipping the shared queue, if the wakee's clock is at most one slice past
 * the queue head: cache-hot ping-pong without unfairness beyond a slice.
 *
 * Classes (agentcg policy). RUNTIME: a waking agent-runtime task is inserted at the
 * head of its CPU and preempts the running task, as long as its cgroup's clock is not
 * far ahead of the global one (so a busy runtime cannot starve anybody). HIGH, NORMAL,
 * LOW: the wake-up credit of a cgroup (2, 1, 0 times wake_lag_ns). Memory pressure:
 * weight divided by mem_pressure_div and no wake-up credit, for a cgroup whose policy
 * has SCHED_FLAG_MEM_PRESSURE (set by userspace) or whose entry in `mem_state` (the map
 * shared with the memory programs of mem.bpf.c) has MEM_OVER_HIGH or MEM_DEPRIORITIZE.
 * The effective weight is recomputed from both on every charge (tick, stop) and
 * wake-up, so a flag flip takes effect within a tick; only cgroups with an agentcg
 * policy pay the extra `mem_state` lookup.
 *
 * Bandwidth. cpu.max arrives through ops.cgroup_set_bandwidth and applies to the whole
 * subtree: CPU time is charged to the node and its ancestors per period; a cgroup whose
 * usage reached its quota is throttled: ops.tick ends its slice, its tasks wait in the
 * PARKED DSQ and go back to the shared one once a period refilled it. Overruns are
 * carried into the next period, so the long-run average is exact. A timer kicks idle
 * CPUs while tasks wait, so parked tasks run again without a wake-up; throttled tasks
 * run every period, so the watchdog never sees a stall.
 *
 * Budgets. `usage` accumulates the CPU time of each agentcg cgroup; when it reaches
 * the policy's budget_ns the cgroup is capped at budget_floor_pct % of one CPU (like a
 * cpu.max) and one struct sched_budget_event goes to `budget_events` (exactly once:
 * a compare-and-swap on usage.exhausted).
 *
 * Exit: ops.exit records the exit info (UEI) for userspace. Test-only: with
 * allow_forced_exit set at load, writing SCHED_CTRL_* into `ctrl` makes the scheduler
 * call scx_bpf_exit() or scx_bpf_error() from its next tick or dispatch.
 */
#include <scx/common.bpf.h>
#include "intf.h"

char _license[] SEC("license") = "GPL";

UEI_DEFINE(uei);

#define SHARED_DSQ 1
#define PARKED_DSQ 2
#define MAX_DEPTH 16       /* cgroup nesting we follow */
#define MAX_SCAN 64        /* DSQ entries looked at per dispatch */
#define HW_ONE (1ULL << 20) /* hierarchical weight 1.0 in fixed point */
#define SELF_WEIGHT 100    /* weight of a cgroup's own tasks next to its children */
#define TIMER_NS (5ULL * 1000 * 1000)       /* while tasks are parked */
#define SLOW_TIMER_NS (100ULL * 1000 * 1000) /* otherwise: a safety net only */
#define UNPARK_EVERY_NS (1000ULL * 1000)
#define DFL_PERIOD_NS (100ULL * 1000 * 1000)

/* Set by userspace between open and load. */
const volatile u64 slice_ns = 5ULL * 1000 * 1000;
const volatile u64 wake_lag_ns = 10ULL * 1000 * 1000;
const volatile u64 runtime_boost_lag_ns = 20ULL * 1000 * 1000;
const volatile u32 budget_floor_pct = 5;
const volatile u32 mem_pressure_div = 4;
const volatile bool allow_forced_exit = false;

/* The global virtual clock: the key of the last task taken from the shared DSQ. */
u64 global_vtime = 0;
u64 last_unpark_ns = 0;
u32 timer_fast = 0;
/* Diagnostics, read by userspace. */
u64 nr_budget_events = 0;
u64 nr_budget_event_drops = 0;
u64 nr_boosted_wakeups = 0;
u64 nr_parked = 0;
u64 nr_missing_nodes = 0;
/* Nodes with a quota; while 0, no throttle check walks the hierarchy. */
s64 nr_limited = 0;
u64 nr_boost_remote = 0;
u64 nr_sync_local = 0;
/* Boosted wake-up to running, in us: <50, <200, <1000, <3000, <10000, more. */
u64 boost_lat_hist[6];

struct cg_node {
	u64 parent;          /* parent cgroup id, 0 for the root */
	u64 cvtime;          /* the cgroup's virtual clock */
	u64 child_sum;       /* sum of `contrib` of the children */
	u64 contrib;         /* what this node adds to its parent's child_sum */
	u64 bw_period_ns;    /* cpu.max period, 0 if never set */
	u64 bw_quota_ns;     /* cpu.max quota, 0 = max */
	s64 bw_used_ns;      /* usage charged to the current period (may carry a debt) */
	u64 bw_period_start; /* start of the current period */
	u32 weight;          /* cpu.weight */
	u32 eff_weight;      /* weight after the policy override and MEM_PRESSURE */
	s32 nr_active;       /* own runnable tasks + active children */
	s32 nr_self;         /* own runnable tasks */
	u32 level;
	u32 floored;         /* CPU budget exhausted: capped at budget_floor_pct */
	u32 limited;         /* has a quota (cpu.max or floored): counted in nr_limited */
	u32 _pad;
};

/* Not preallocated: sized for big hosts, most of it never used. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, AGENTCG_SCHED_MAX_CGROUPS);
	__type(key, u64);
	__type(value, struct cg_node);
} cgrps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENTCG_SCHED_MAX_POLICIES);
	__type(key, u64);
	__type(value, struct sched_policy);
} policies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENTCG_SCHED_MAX_POLICIES);
	__type(key, u64);
	__type(value, struct sched_usage);
} usage SEC(".maps");

/* Shared with mem.bpf.c (same definition there): userspace passes one fd to both. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENTCG_MEM_MAX_WATCHED);
	__type(key, u64);
	__type(value, struct mem_state);
} mem_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, AGENTCG_SCHED_EVENTS_BYTES);
} budget_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u32);
} ctrl SEC(".maps");

struct kick_timer {
	struct bpf_timer timer;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct kick_timer);
} timers SEC(".maps");

struct task_ctx {
	u64 cgid;         /* the task's cpu cgroup */
	u64 counted_cgid; /* the cgroup its runnable state is counted in, 0 if none */
	u64 last_exec;    /* se.sum_exec_runtime at the last charge */
	u64 boosted_at;   /* bpf_ktime_get_ns() of a pending boosted wake-up, 0 if none */
	u64 sync_wake;    /* ops.select_cpu saw a synchronous wake-up onto the waker's CPU */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

/* Virtual times compare by signed difference, like the kernel's DSQ order: wrap-safe. */
static __always_inline bool vtime_before(u64 a, u64 b)
{
	return (s64)(a - b) < 0;
}

static __always_inline struct cg_node *node_of(u64 cgid)
{
	return bpf_map_lookup_elem(&cgrps, &cgid);
}

static __always_inline struct task_ctx *ctx_of(struct task_struct *p)
{
	return bpf_task_storage_get(&task_ctxs, p, 0, 0);
}

/*
 * Whether the cgroup `cgid` with policy `pol` is under memory pressure: its policy flag,
 * or the memory programs' (or the daemon's) bits in the shared `mem_state`. Cgroups
 * without a policy are never deprioritized, and do not pay the lookup.
 */
static __always_inline bool mem_pressured(u64 cgid, struct sched_policy *pol)
{
	struct mem_state *ms;

	if (!pol)
		return false;
	if (pol->flags & SCHED_FLAG_MEM_PRESSURE)
		return true;
	ms = bpf_map_lookup_elem(&mem_state, &cgid);
	return ms && (READ_ONCE(ms->flags) & (MEM_OVER_HIGH | MEM_DEPRIORITIZE));
}

/* The weight a node carries among its siblings, given its policy (or NULL). */
static u32 eff_weight_of(struct cg_node *n, u64 cgid, struct sched_policy *pol)
{
	u32 w = n->weight ? n->weight : 100;

	if (pol) {
		if (pol->weight && pol->weight <= SCHED_WEIGHT_MAX)
			w = pol->weight;
		if (mem_pressure_div > 1 && mem_pressured(cgid, pol))
			w /= mem_pressure_div;
	}
	return w ? w : 1;
}

/*
 * Makes the parent's child_sum reflect this node's current state. Idempotent and
 * lock-free: whoever swaps `contrib` last fixes the sum up; every charge re-syncs, so
 * a race between two CPUs heals at the next one.
 */
static void sync_contrib(struct cg_node *n, struct cg_node *parent)
{
	u64 want = n->nr_active > 0 ? n->eff_weight : 0;
	u64 old = __sync_lock_test_and_set(&n->contrib, want);

	if (old != want)
		__sync_fetch_and_add(&parent->child_sum, want - old);
}

static void refresh_weight(struct cg_node *n, u64 cgid)
{
	struct cg_node *parent;

	n->eff_weight = eff_weight_of(n, cgid, bpf_map_lookup_elem(&policies, &cgid));
	if (!n->parent)
		return;
	parent = node_of(n->parent);
	if (parent)
		sync_contrib(n, parent);
}

static u64 wake_credit(u64 cgid, struct sched_policy *pol)
{
	if (!pol)
		return wake_lag_ns;
	if (mem_pressured(cgid, pol))
		return 0;
	switch (pol->class) {
	case SCHED_CLASS_RUNTIME:
	case SCHED_CLASS_HIGH:
		return 2 * wake_lag_ns;
	case SCHED_CLASS_LOW:
		return 0;
	default:
		return wake_lag_ns;
	}
}

/*
 * A task of `cgid` became runnable (delta 1) or stopped being runnable (-1). Walks up
 * as long as nodes flip between active and idle.
 */
static void account_runnable(u64 cgid, s32 delta)
{
	struct cg_node *n, *parent;
	s32 old;
	u32 i;

	n = node_of(cgid);
	if (!n) {
		__sync_fetch_and_add(&nr_missing_nodes, 1);
		return;
	}
	__sync_fetch_and_add(&n->nr_self, delta);
	bpf_for(i, 0, MAX_DEPTH) {
		old = __sync_fetch_and_add(&n->nr_active, delta);
		if (delta > 0 && old == 0 && i == 0) {
			/* Wake-up of an idle cgroup: bounded credit, clamp only here. */
			struct sched_policy *pol = bpf_map_lookup_elem(&policies, &cgid);
			u64 floor = READ_ONCE(global_vtime);
			u64 credit = wake_credit(cgid, pol);

			floor -= credit;
			if (vtime_before(n->cvtime, floor))
				n->cvtime = floor;
			n->eff_weight = eff_weight_of(n, cgid, pol);
		}
		/* Ancestors change only when this node flips between idle and active. */
		if (!((delta > 0 && old == 0) || (delta < 0 && old == 1)) || !n->parent)
			break;
		parent = node_of(n->parent);
		if (!parent)
			break;
		sync_contrib(n, parent);
		n = parent;
	}
}

/* The period and quota in force for `n`, quota 0 meaning unlimited. */
static u64 bw_quota(struct cg_node *n, u64 *period)
{
	u64 per = n->bw_period_ns ? n->bw_period_ns : DFL_PERIOD_NS;
	u64 q = n->bw_quota_ns, fq;

	if (n->floored) {
		fq = per * budget_floor_pct / 100;
		if (!fq)
			fq = 1;
		if (!q || fq < q)
			q = fq;
	}
	*period = per;
	return q;
}

/* Keeps nr_limited in step with whether `n` has a quota. */
static void update_limited(struct cg_node *n)
{
	u32 want = (n->bw_quota_ns || n->floored) ? 1 : 0;
	u32 old = __sync_lock_test_and_set(&n->limited, want);

	if (old != want)
		__sync_fetch_and_add(&nr_limited, want ? 1 : -1);
}

/* Starts new periods that have begun, crediting one quota each; debts carry over. */
static void bw_refresh(struct cg_node *n, u64 per, u64 q, u64 now)
{
	u64 start = n->bw_period_start, periods;
	s64 used;

	if (now < start || now - start < per)
		return;
	periods = (now - start) / per;
	if (__sync_val_compare_and_swap(&n->bw_period_start, start, start + periods * per) != start)
		return;
	used = __sync_fetch_and_add(&n->bw_used_ns, -(s64)(periods * q)) - (s64)(periods * q);
	if (used < 0)
		__sync_val_compare_and_swap(&n->bw_used_ns, used, 0);
}

static bool cg_throttled(u64 cgid, u64 now)
{
	struct cg_node *n;
	u64 per, q;
	u32 i;

	if (READ_ONCE(nr_limited) <= 0)
		return false;
	n = node_of(cgid);
	bpf_for(i, 0, MAX_DEPTH) {
		if (!n)
			break;
		q = bw_quota(n, &per);
		if (q) {
			bw_refresh(n, per, q, now);
			if (n->bw_used_ns >= (s64)q)
				return true;
		}
		if (!n->parent)
			break;
		n = node_of(n->parent);
	}
	return false;
}

static void emit_budget_event(u64 cgid, u64 used, u64 budget, u64 now)
{
	struct sched_budget_event *e;

	e = bpf_ringbuf_reserve(&budget_events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&nr_budget_event_drops, 1);
		return;
	}
	e->cgid = cgid;
	e->used_ns = used;
	e->budget_ns = budget;
	e->ts_ns = now;
	bpf_ringbuf_submit(e, 0);
	__sync_fetch_and_add(&nr_budget_events, 1);
}

/* Adds `delta` to the cgroup's usage; the first charge past the budget reports it. */
static void charge_budget(u64 cgid, struct cg_node *n, struct sched_policy *pol, u64 delta,
			  u64 now)
{
	struct sched_usage *u = bpf_map_lookup_elem(&usage, &cgid);
	u32 floored = 0;
	u64 used;

	if (!u)
		goto out;
	used = __sync_fetch_and_add(&u->runtime_ns, delta) + delta;
	if (pol && pol->budget_ns && used >= pol->budget_ns &&
	    __sync_val_compare_and_swap(&u->exhausted, 0, 1) == 0) {
		u->exhausted_ns = now;
		emit_budget_event(cgid, used, pol->budget_ns, now);
	}
	floored = u->exhausted ? 1 : 0;
out:
	if (n->floored != floored) {
		n->floored = floored;
		update_limited(n);
	}
}

/*
 * Charges the CPU time `p` used since its last charge: to its cgroup's usage and clock
 * (divided by the cgroup's hierarchical weight, the product from it up to the root of
 * weight / active weight of its level) and to the quota periods of the cgroup and its
 * ancestors. One walk up the hierarchy does it all.
 */
static void charge(struct task_struct *p, struct task_ctx *tctx, u64 now)
{
	u64 exec = p->se.sum_exec_runtime, delta, per, q, hw = HW_ONE, sum, w;
	struct cg_node *leaf, *n, *parent;
	struct sched_policy *pol;
	bool limited;
	u32 i;

	if (exec <= tctx->last_exec)
		return;
	delta = exec - tctx->last_exec;
	tctx->last_exec = exec;

	leaf = node_of(tctx->cgid);
	if (!leaf)
		return;
	pol = bpf_map_lookup_elem(&policies, &tctx->cgid);
	charge_budget(tctx->cgid, leaf, pol, delta, now);
	leaf->eff_weight = eff_weight_of(leaf, tctx->cgid, pol);
	limited = READ_ONCE(nr_limited) > 0;

	/* The cgroup's own tasks next to its active children (only the root has both). */
	sum = leaf->child_sum + (leaf->nr_self > 0 ? SELF_WEIGHT : 0);
	if (sum > SELF_WEIGHT)
		hw = hw * SELF_WEIGHT / sum;
	n = leaf;
	bpf_for(i, 0, MAX_DEPTH) {
		if (limited) {
			q = bw_quota(n, &per);
			if (q) {
				bw_refresh(n, per, q, now);
				__sync_fetch_and_add(&n->bw_used_ns, (s64)delta);
			}
		}
		if (!n->parent)
			break;
		parent = node_of(n->parent);
		if (!parent)
			break;
		if (i == 0)
			sync_contrib(n, parent);
		w = n->eff_weight ? n->eff_weight : 1;
		sum = parent->child_sum + (parent->nr_self > 0 ? SELF_WEIGHT : 0);
		if (sum > w)
			hw = hw * w / sum;
		n = parent;
	}
	__sync_fetch_and_add(&leaf->cvtime, delta * HW_ONE / (hw ? hw : 1));
}

static void maybe_forced_exit(void)
{
	u32 zero = 0, cmd, *v;

	if (!allow_forced_exit)
		return;
	v = bpf_map_lookup_elem(&ctrl, &zero);
	if (!v || !*v)
		return;
	cmd = __sync_lock_test_and_set(v, SCHED_CTRL_NONE);
	if (cmd == SCHED_CTRL_EXIT)
		scx_bpf_exit(SCHED_EXIT_CODE_REQUESTED,
			     "agentcg_sched: exit requested through the ctrl map");
	else if (cmd == SCHED_CTRL_ERROR)
		scx_bpf_error("agentcg_sched: error exit forced through the ctrl map (test trigger)");
}

/* A task was parked: make sure the kick timer runs at its fast period. */
static void kick_timer_fast(void)
{
	struct bpf_timer *timer;
	u32 zero = 0;

	if (READ_ONCE(timer_fast) || __sync_lock_test_and_set(&timer_fast, 1))
		return;
	timer = bpf_map_lookup_elem(&timers, &zero);
	if (timer)
		bpf_timer_start(timer, TIMER_NS, 0);
}

static bool is_runtime_class(u64 cgid)
{
	struct sched_policy *pol = bpf_map_lookup_elem(&policies, &cgid);

	return pol && pol->class == SCHED_CLASS_RUNTIME && !mem_pressured(cgid, pol);
}

/*
 * Whether a synchronously woken task with clock `key` may run next on this CPU without
 * going through the shared queue: it must be on this CPU and at most one slice (of
 * virtual time) behind the queue head, so a ping-ponging pair cannot keep the CPU
 * from tasks that are due for more than a slice.
 */
static bool sync_wake_local(struct task_struct *p, u64 key)
{
	struct task_struct *head;

	if (scx_bpf_task_cpu(p) != bpf_get_smp_processor_id())
		return false;
	head = __COMPAT_scx_bpf_dsq_peek(SHARED_DSQ);
	if (head && vtime_before(head->scx.dsq_vtime + slice_ns, key))
		return false;
	__sync_fetch_and_add(&nr_sync_local, 1);
	return true;
}

s32 BPF_STRUCT_OPS(agentcg_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	struct task_ctx *tctx = ctx_of(p);
	bool is_idle = false;
	s32 cpu, this;

	cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);
	if (!tctx)
		return cpu;
	if (is_idle) {
		if (!cg_throttled(tctx->cgid, bpf_ktime_get_ns()))
			scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
		return cpu;
	}
	/*
	 * No idle CPU: a RUNTIME task will preempt (ops.enqueue). Preempt the CPU that
	 * handles the wake-up: it is running now, while a resched IPI to another CPU waits
	 * until that CPU takes it (milliseconds for a busy vCPU on a loaded host).
	 */
	this = bpf_get_smp_processor_id();
	if (!bpf_cpumask_test_cpu(this, p->cpus_ptr))
		return cpu;
	if (is_runtime_class(tctx->cgid))
		return this;
	/*
	 * A synchronous wake-up (the waker is about to sleep: pipes, sockets): the wakee
	 * may take the waker's CPU, cache-hot, if it is due anyway (ops.enqueue checks).
	 */
	if (wake_flags & SCX_WAKE_SYNC) {
		tctx->sync_wake = 1;
		return this;
	}
	return cpu;
}

void BPF_STRUCT_OPS(agentcg_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tctx = ctx_of(p);
	u64 now = bpf_ktime_get_ns(), key;
	struct cg_node *n;
	bool throttled;
	s32 cpu;

	/* Per-CPU kernel threads (ksoftirqd, kworkers) cannot wait for another CPU. */
	if (p->nr_cpus_allowed == 1 && (p->flags & PF_KTHREAD)) {
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, enq_flags);
		return;
	}
	if (!tctx) {
		scx_bpf_dsq_insert_vtime(p, SHARED_DSQ, slice_ns, READ_ONCE(global_vtime), enq_flags);
		return;
	}
	n = node_of(tctx->cgid);
	key = n ? n->cvtime : READ_ONCE(global_vtime);
	throttled = cg_throttled(tctx->cgid, now);

	if (!throttled) {
		/* The last runnable task of this CPU (SCX_OPS_ENQ_LAST): keep it running. */
		if (enq_flags & SCX_ENQ_LAST) {
			scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, enq_flags);
			return;
		}
		if ((enq_flags & SCX_ENQ_WAKEUP) && is_runtime_class(tctx->cgid) &&
		    !vtime_before(READ_ONCE(global_vtime) + runtime_boost_lag_ns, key)) {
			__sync_fetch_and_add(&nr_boosted_wakeups, 1);
			if (scx_bpf_task_cpu(p) != bpf_get_smp_processor_id())
				__sync_fetch_and_add(&nr_boost_remote, 1);
			tctx->boosted_at = now;
			scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, enq_flags | SCX_ENQ_PREEMPT);
			return;
		}
	}

	if (tctx->sync_wake) {
		tctx->sync_wake = 0;
		if (!throttled && sync_wake_local(p, key)) {
			scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, enq_flags);
			return;
		}
	}
	if (throttled) {
		__sync_fetch_and_add(&nr_parked, 1);
		scx_bpf_dsq_insert_vtime(p, PARKED_DSQ, slice_ns, key, enq_flags);
		kick_timer_fast();
		return;
	}
	scx_bpf_dsq_insert_vtime(p, SHARED_DSQ, slice_ns, key, enq_flags);
	cpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
	if (cpu >= 0)
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
}

/* Moves parked tasks whose cgroups got a new period back to the shared DSQ. */
static void unpark(u64 now)
{
	struct task_struct *p;
	struct task_ctx *tctx;
	u64 last = READ_ONCE(last_unpark_ns);
	u32 scanned = 0;

	if (now - last < UNPARK_EVERY_NS ||
	    __sync_val_compare_and_swap(&last_unpark_ns, last, now) != last)
		return;
	bpf_for_each(scx_dsq, p, PARKED_DSQ, 0) {
		if (++scanned > MAX_SCAN)
			break;
		tctx = ctx_of(p);
		if (!tctx || !cg_throttled(tctx->cgid, now))
			scx_bpf_dsq_move_vtime(BPF_FOR_EACH_ITER, p, SHARED_DSQ, 0);
	}
}

/*
 * Pitfall 7 (docs/ARCHITECTURE.md#bpf-pitfalls): `prev` keeps the CPU while its cgroup's
 * clock is not past the queue head.
 */
static bool keep_prev(struct task_struct *prev, u64 now)
{
	struct task_ctx *tctx = ctx_of(prev);
	struct task_struct *head;
	struct cg_node *n;

	if (!tctx)
		return false;
	charge(prev, tctx, now);
	if (cg_throttled(tctx->cgid, now))
		return false;
	n = node_of(tctx->cgid);
	if (!n)
		return false;
	head = __COMPAT_scx_bpf_dsq_peek(SHARED_DSQ);
	return !head || !vtime_before(head->scx.dsq_vtime, n->cvtime);
}

/* Moves the first task of the shared DSQ that may run here and is not throttled. */
static bool take_shared(s32 cpu, u64 now)
{
	struct task_struct *p;
	struct task_ctx *tctx;
	u32 scanned = 0;
	u64 key;

	bpf_for_each(scx_dsq, p, SHARED_DSQ, 0) {
		if (++scanned > MAX_SCAN)
			break;
		if (!bpf_cpumask_test_cpu(cpu, p->cpus_ptr))
			continue;
		tctx = ctx_of(p);
		if (tctx && cg_throttled(tctx->cgid, now)) {
			__sync_fetch_and_add(&nr_parked, 1);
			scx_bpf_dsq_move_vtime(BPF_FOR_EACH_ITER, p, PARKED_DSQ, 0);
			kick_timer_fast();
			continue;
		}
		key = p->scx.dsq_vtime;
		if (scx_bpf_dsq_move(BPF_FOR_EACH_ITER, p, SCX_DSQ_LOCAL, 0)) {
			if (vtime_before(READ_ONCE(global_vtime), key))
				WRITE_ONCE(global_vtime, key);
			return true;
		}
	}
	return false;
}

void BPF_STRUCT_OPS(agentcg_dispatch, s32 cpu, struct task_struct *prev)
{
	u64 now = bpf_ktime_get_ns();

	maybe_forced_exit();
	if (scx_bpf_dsq_nr_queued(PARKED_DSQ) > 0)
		unpark(now);
	if (prev && (prev->scx.flags & SCX_TASK_QUEUED) && keep_prev(prev, now)) {
		scx_bpf_task_set_slice(prev, slice_ns);
		return;
	}
	take_shared(cpu, now);
}

void BPF_STRUCT_OPS(agentcg_tick, struct task_struct *p)
{
	struct task_ctx *tctx = ctx_of(p);
	u64 now = bpf_ktime_get_ns();

	maybe_forced_exit();
	if (!tctx)
		return;
	charge(p, tctx, now);
	if (cg_throttled(tctx->cgid, now))
		scx_bpf_task_set_slice(p, 0);
}

void BPF_STRUCT_OPS(agentcg_runnable, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tctx = ctx_of(p);

	if (!tctx || tctx->counted_cgid)
		return;
	tctx->counted_cgid = tctx->cgid;
	account_runnable(tctx->cgid, 1);
}

void BPF_STRUCT_OPS(agentcg_running, struct task_struct *p)
{
	struct task_ctx *tctx = ctx_of(p);

	u64 us;
	u32 b;

	if (!tctx)
		return;
	tctx->last_exec = p->se.sum_exec_runtime;
	if (tctx->boosted_at) {
		us = (bpf_ktime_get_ns() - tctx->boosted_at) / 1000;
		tctx->boosted_at = 0;
		b = us < 50 ? 0 : us < 200 ? 1 : us < 1000 ? 2 : us < 3000 ? 3 : us < 10000 ? 4 : 5;
		if (b < 6)
			__sync_fetch_and_add(&boost_lat_hist[b], 1);
	}
}

void BPF_STRUCT_OPS(agentcg_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *tctx = ctx_of(p);

	if (tctx)
		charge(p, tctx, bpf_ktime_get_ns());
}

void BPF_STRUCT_OPS(agentcg_quiescent, struct task_struct *p, u64 deq_flags)
{
	struct task_ctx *tctx = ctx_of(p);

	if (!tctx || !tctx->counted_cgid)
		return;
	account_runnable(tctx->counted_cgid, -1);
	tctx->counted_cgid = 0;
}

s32 BPF_STRUCT_OPS(agentcg_init_task, struct task_struct *p, struct scx_init_task_args *args)
{
	struct task_ctx *tctx;

	tctx = bpf_task_storage_get(&task_ctxs, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!tctx)
		return -ENOMEM;
	tctx->cgid = args->cgroup ? args->cgroup->kn->id : 0;
	tctx->counted_cgid = 0;
	tctx->last_exec = p->se.sum_exec_runtime;
	return 0;
}

void BPF_STRUCT_OPS(agentcg_cgroup_move, struct task_struct *p, struct cgroup *from,
		    struct cgroup *to)
{
	struct task_ctx *tctx = ctx_of(p);
	u64 to_id = to->kn->id;

	if (!tctx)
		return;
	if (tctx->counted_cgid) {
		account_runnable(tctx->counted_cgid, -1);
		account_runnable(to_id, 1);
		tctx->counted_cgid = to_id;
	}
	tctx->cgid = to_id;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(agentcg_cgroup_init, struct cgroup *cgrp,
			     struct scx_cgroup_init_args *args)
{
	struct cg_node node = {};
	struct cgroup *parent;
	u64 cgid = cgrp->kn->id;

	node.weight = args->weight;
	node.eff_weight = args->weight ? args->weight : 100;
	node.level = cgrp->level;
	node.cvtime = READ_ONCE(global_vtime);
	node.bw_period_ns = args->bw_period_us * 1000;
	if (args->bw_quota_us != (u64)-1)
		node.bw_quota_ns = args->bw_quota_us * 1000;
	node.bw_period_start = bpf_ktime_get_ns();
	node.limited = node.bw_quota_ns ? 1 : 0;
	if (cgrp->level > 0) {
		parent = bpf_cgroup_ancestor(cgrp, cgrp->level - 1);
		if (parent) {
			node.parent = parent->kn->id;
			bpf_cgroup_release(parent);
		}
	}
	/* A full map must not fail the mkdir: the cgroup is then scheduled as unknown. */
	if (bpf_map_update_elem(&cgrps, &cgid, &node, BPF_ANY))
		__sync_fetch_and_add(&nr_missing_nodes, 1);
	else if (node.limited)
		__sync_fetch_and_add(&nr_limited, 1);
	return 0;
}

void BPF_STRUCT_OPS(agentcg_cgroup_exit, struct cgroup *cgrp)
{
	u64 cgid = cgrp->kn->id, old;
	struct cg_node *n = node_of(cgid), *parent;

	if (n && __sync_lock_test_and_set(&n->limited, 0))
		__sync_fetch_and_add(&nr_limited, -1);
	if (n && n->parent) {
		parent = node_of(n->parent);
		old = __sync_lock_test_and_set(&n->contrib, 0);
		if (parent && old)
			__sync_fetch_and_add(&parent->child_sum, -old);
	}
	bpf_map_delete_elem(&cgrps, &cgid);
	bpf_map_delete_elem(&policies, &cgid);
	bpf_map_delete_elem(&usage, &cgid);
}

void BPF_STRUCT_OPS(agentcg_cgroup_set_weight, struct cgroup *cgrp, u32 weight)
{
	u64 cgid = cgrp->kn->id;
	struct cg_node *n = node_of(cgid);

	if (!n)
		return;
	n->weight = weight;
	refresh_weight(n, cgid);
}

void BPF_STRUCT_OPS(agentcg_cgroup_set_bandwidth, struct cgroup *cgrp, u64 period_us,
		    u64 quota_us, u64 burst_us)
{
	struct cg_node *n = node_of(cgrp->kn->id);

	if (!n)
		return;
	n->bw_period_ns = period_us * 1000;
	n->bw_quota_ns = quota_us == (u64)-1 ? 0 : quota_us * 1000;
	n->bw_used_ns = 0;
	n->bw_period_start = bpf_ktime_get_ns();
	update_limited(n);
}

/*
 * Kicks idle CPUs while tasks wait: every TIMER_NS while some are parked (their
 * cgroups get a new period at some point and nobody else would notice on an idle CPU),
 * every SLOW_TIMER_NS otherwise. Each expiry is a timer interrupt, which costs a busy
 * vCPU dearly under emulation, hence no fast period without need.
 */
static int kick_timer_fn(void *map, int *key, struct bpf_timer *timer)
{
	u32 nr = scx_bpf_nr_cpu_ids(), cpu;
	bool parked = scx_bpf_dsq_nr_queued(PARKED_DSQ) > 0;

	if (parked || scx_bpf_dsq_nr_queued(SHARED_DSQ) > 0) {
		bpf_for(cpu, 0, nr)
			scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
	}
	WRITE_ONCE(timer_fast, parked ? 1 : 0);
	bpf_timer_start(timer, parked ? TIMER_NS : SLOW_TIMER_NS, 0);
	return 0;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(agentcg_init)
{
	struct bpf_timer *timer;
	u32 zero = 0;
	s32 ret;

	ret = scx_bpf_create_dsq(SHARED_DSQ, -1);
	if (ret)
		return ret;
	ret = scx_bpf_create_dsq(PARKED_DSQ, -1);
	if (ret)
		return ret;
	timer = bpf_map_lookup_elem(&timers, &zero);
	if (!timer)
		return -ESRCH;
	bpf_timer_init(timer, &timers, CLOCK_MONOTONIC);
	bpf_timer_set_callback(timer, kick_timer_fn);
	return bpf_timer_start(timer, TIMER_NS, 0);
}

void BPF_STRUCT_OPS(agentcg_exit, struct scx_exit_info *ei)
{
	UEI_RECORD(uei, ei);
}

SCX_OPS_DEFINE(agentcg_ops,
	       .select_cpu = (void *)agentcg_select_cpu,
	       .enqueue = (void *)agentcg_enqueue,
	       .dispatch = (void *)agentcg_dispatch,
	       .tick = (void *)agentcg_tick,
	       .runnable = (void *)agentcg_runnable,
	       .running = (void *)agentcg_running,
	       .stopping = (void *)agentcg_stopping,
	       .quiescent = (void *)agentcg_quiescent,
	       .init_task = (void *)agentcg_init_task,
	       .cgroup_init = (void *)agentcg_cgroup_init,
	       .cgroup_exit = (void *)agentcg_cgroup_exit,
	       .cgroup_move = (void *)agentcg_cgroup_move,
	       .cgroup_set_weight = (void *)agentcg_cgroup_set_weight,
	       .cgroup_set_bandwidth = (void *)agentcg_cgroup_set_bandwidth,
	       .init = (void *)agentcg_init,
	       .exit = (void *)agentcg_exit,
	       .flags = SCX_OPS_ENQ_LAST,
	       .name = "agentcg_sched");
