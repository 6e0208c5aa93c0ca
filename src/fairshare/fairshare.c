/*
 * fairshare.c: the admission scheduler. It owns pools, groups, tenants, their
 * queues and DRR state, and the deadline heap; it links the caller's
 * ob_fs_req_t structs into its queues but never allocates or frees them. It
 * must not do I/O, read the clock or allocate per decision: time comes in as
 * `now_us`, and memory is allocated when a pool, group or tenant is added
 * (plus the deadline heap, which grows by doubling and so allocates only
 * O(log n) times in total).
 *
 * The decision. ob_fs_next_grant pulls one request at a time, whenever a
 * slot is free. Pools are served round robin among those with a free slot
 * and a runnable request (one whose tenant is under its max_inflight). Inside
 * a pool, hierarchical mode runs deficit round robin twice: over the ring of
 * groups that have a runnable tenant, and inside the chosen group over the
 * ring of its runnable tenants. The ring's `cur` member keeps the turn while
 * its deficit covers the cost of the request it would give out; otherwise
 * the turn passes to the next member, which receives quantum * weight. A
 * group's "request it would give out" is whatever its own tenant ring picks,
 * so the inner ring settles first (idempotently: a settled inner ring picks
 * the same tenant again until it is served or changes). The grant charges
 * its cost to both the tenant's and the group's deficit. Weighted mode is
 * the inner ring alone, with every tenant of the pool in one ring. FIFO mode
 * keeps one list per pool in arrival order and skips requests whose tenant
 * is at its cap.
 *
 * With the automatic quantum (the largest cost seen) one turn pays for any
 * head request, so a grant needs O(1) turns amortised. With a small fixed
 * quantum a request may need many laps of the ring; after one full lap in
 * which nobody could pay, fast_forward() credits all the remaining empty
 * laps at once (exactly what spinning would do), so a grant never costs more
 * than two laps of the ring.
 *
 * Entering and leaving rings. A tenant or group becomes backlogged in a pool
 * when its first request is queued there: its deficit starts at its carried
 * debt (0 or negative). When its last queued request leaves, any debt is
 * carried (clamped to one round) and the deficit drops to 0: idle members
 * bank no credit. A member joining a non-empty ring after sitting out a
 * full round is next in line after the current member; one back sooner goes
 * behind all the others; either is credited when the turn reaches it (see
 * ring_insert). Joining an empty ring
 * it takes the turn and is credited at once. Leaving a ring ends the
 * member's turn: its credit is forfeited (debt stays) and the turn passes
 * to, and credits, the next member. A tenant reaching its max_inflight leaves its
 * rings that way while staying backlogged, and rejoins when a release
 * brings it under the cap; a group leaves its pool's ring when none of its
 * tenants can run there.
 */
#include "fairshare_int.h"

#include <math.h>
#include <stdlib.h>

/* ---------------------------------------------------------------- small helpers */

static uint64_t eff_cost(const ob_fs_req_t *r) {
  uint64_t c = r->cost;
  if (c == 0) return 1;
  return c > OB_FS_COST_MAX ? OB_FS_COST_MAX : c;
}

static uint64_t quantum(const ob_fs_t *fs) { return fs->p.quantum ? fs->p.quantum : fs->max_cost; }

/* quantum * weight, saturated. */
static int64_t qw(const ob_fs_t *fs, uint32_t weight) {
  uint64_t prod;
  if (__builtin_mul_overflow(quantum(fs), (uint64_t)(weight ? weight : 1), &prod) || prod > (uint64_t)OB_FS_QW_MAX)
    return OB_FS_QW_MAX;
  return (int64_t)prod;
}

static bool tenant_eligible(const fs_tenant_t *t) { return !t->max_inflight || t->inflight < t->max_inflight; }

static bool pool_has_slot(const fs_pool_t *p) { return !p->max_inflight || p->inflight < p->max_inflight; }

static bool global_has_slot(const ob_fs_t *fs) { return !fs->p.max_inflight || fs->inflight < fs->p.max_inflight; }

static fs_tenant_t *tenant_of(const ob_fs_t *fs, ob_fs_tenant_id id) { return id < fs->ntenants ? fs->tenants[id] : NULL; }

static fs_group_t *group_of(const ob_fs_t *fs, ob_fs_group_id id) { return id < fs->ngroups ? fs->groups[id] : NULL; }

static fs_pool_t *pool_of(const ob_fs_t *fs, ob_fs_pool_id id) { return id < fs->npools ? fs->pools[id] : NULL; }

static fs_gpool_t *gpool_of(const ob_fs_t *fs, const fs_tenant_t *t, ob_fs_pool_id pool) {
  return fs->groups[t->group]->gp[pool];
}

/* v, but never a debt of more than one round. */
static int64_t clamp_debt(int64_t v, int64_t round) { return v < -round ? -round : v; }

/* Grow *arr (of elem-size items, *cap of them) to hold at least need. */
static void *grow(void *arr, uint32_t *cap, uint32_t need, size_t elem) {
  if (need <= *cap) return arr;
  uint32_t n = *cap ? *cap : 4;
  while (n < need) n *= 2;
  *cap = n;
  return ob_xrealloc(arr, (size_t)n * elem);
}

/* ---------------------------------------------------------------- rings */

static int64_t node_weight_qw(const ob_fs_t *fs, const fs_node_t *n, bool groups) {
  return groups ? qw(fs, ((const fs_gpool_t *)n)->g->weight) : qw(fs, ((const fs_tpool_t *)n)->t->weight);
}

/* Pass the turn to n, which begins a new turn, credited. The count of
 * turns begun is the ring's round clock (see ring_insert). */
static void turn_to(const ob_fs_t *fs, fs_ring_t *rg, fs_node_t *n, bool groups) {
  rg->cur = n;
  if (rg->fresh_tail == n) rg->fresh_tail = NULL;
  n->deficit += node_weight_qw(fs, n, groups);
  rg->turns++;
}

/* Join the ring. A member that sat out at least a full round (every other
 * member began a turn since it left), or was never in it, is next in line:
 * it goes right after the current member, whose turn is not cut short, and
 * after those that joined next in line before it (arrival order holds).
 * This is no more than DRR owes it (one turn per round), and it keeps a
 * light tenant's wait independent of how many members the ring holds and how
 * much the heavy ones keep queued. A member back sooner goes behind all the
 * others, as in plain DRR, so leaving and rejoining never jumps the ring.
 * Either way it is credited when the turn reaches it. Into an empty ring it
 * takes the turn, credited at once. */
static void ring_insert(const ob_fs_t *fs, fs_ring_t *rg, fs_node_t *n, bool groups) {
  fs_node_t *c = rg->cur;
  rg->n++;
  n->in_ring = true;
  if (!c) {
    n->next = n->prev = n;
    rg->cur = n;
    n->deficit += node_weight_qw(fs, n, groups);
    return;
  }
  fs_node_t *before = c->prev;
  if (rg->turns >= n->fresh_at) {
    before = rg->fresh_tail ? rg->fresh_tail : c;
    rg->fresh_tail = n;
  }
  n->prev = before;
  n->next = before->next;
  before->next->prev = n;
  before->next = n;
}

/* Leave the ring. Leaving ends the member's turn: credit is forfeited, debt
 * stays. When n had the turn, the turn passes to the next. It may go first
 * again once the others have each begun a turn. */
static void ring_remove(const ob_fs_t *fs, fs_ring_t *rg, fs_node_t *n, bool groups) {
  if (rg->fresh_tail == n) rg->fresh_tail = n->prev == rg->cur ? NULL : n->prev;
  if (n->next == n) {
    rg->cur = NULL;
  } else {
    n->prev->next = n->next;
    n->next->prev = n->prev;
    if (rg->cur == n) turn_to(fs, rg, n->next, groups);
  }
  rg->n--;
  n->fresh_at = rg->turns + rg->n;
  n->in_ring = false;
  n->next = n->prev = NULL;
  if (n->deficit > 0) n->deficit = 0;
}

static fs_node_t *ring_pick(ob_fs_t *fs, fs_ring_t *rg, bool groups);

/* The cost of what member n would give out now. For a group this settles
 * its tenant ring. */
static int64_t node_cost(ob_fs_t *fs, fs_node_t *n, bool groups) {
  if (groups) {
    fs_node_t *tn = ring_pick(fs, &((fs_gpool_t *)n)->ring, false);
    return (int64_t)eff_cost(((fs_tpool_t *)tn)->head);
  }
  return (int64_t)eff_cost(((fs_tpool_t *)n)->head);
}

/*
 * Called after a full lap in which every member was credited once and none
 * could pay. Member i needs k_i = ceil((cost_i - deficit_i) / qw_i) more
 * credits; the first member (in turn order) with the smallest k wins after
 * k laps. Credit every member with k - 1 laps now, so that the next lap
 * finds the winner exactly where spinning would have.
 */
static void fast_forward(ob_fs_t *fs, fs_ring_t *rg, bool groups) {
  int64_t k = INT64_MAX;
  fs_node_t *n = rg->cur;
  do {
    int64_t need = node_cost(fs, n, groups) - n->deficit;
    int64_t q = node_weight_qw(fs, n, groups);
    int64_t ki = need <= 0 ? 0 : (need + q - 1) / q;
    if (ki < k) k = ki;
    n = n->next;
  } while (n != rg->cur);
  if (k <= 1) return;
  do {
    n->deficit += (k - 1) * node_weight_qw(fs, n, groups);
    n = n->next;
  } while (n != rg->cur);
}

/* The member whose turn it is and whose deficit covers its cost, passing
 * the turn on as needed. NULL only for an empty ring. */
static fs_node_t *ring_pick(ob_fs_t *fs, fs_ring_t *rg, bool groups) {
  fs_node_t *n = rg->cur;
  if (!n) return NULL;
  uint32_t advances = 0;
  for (;;) {
    fs->work++;
    if (n->deficit >= node_cost(fs, n, groups)) return n;
    if (advances >= rg->n) {
      fast_forward(fs, rg, groups);
      advances = 0;
    }
    turn_to(fs, rg, n->next, groups);
    n = rg->cur;
    advances++;
  }
}

/* A tenant becomes runnable in pool p: join its ring (and its group's). gp:
 * the tenant's group in p. */
static void ring_join_tenant(ob_fs_t *fs, fs_pool_t *p, fs_tpool_t *tp, fs_gpool_t *gp) {
  if (fs->p.mode == OB_FS_WEIGHTED) {
    ring_insert(fs, &p->ring, &tp->node, false);
  } else if (fs->p.mode == OB_FS_HIERARCHICAL) {
    ring_insert(fs, &gp->ring, &tp->node, false);
    if (!gp->node.in_ring) ring_insert(fs, &p->ring, &gp->node, true);
  }
}

static void ring_leave_tenant(ob_fs_t *fs, fs_pool_t *p, fs_tpool_t *tp, fs_gpool_t *gp) {
  if (!tp->node.in_ring) return;
  if (fs->p.mode == OB_FS_WEIGHTED) {
    ring_remove(fs, &p->ring, &tp->node, false);
  } else if (fs->p.mode == OB_FS_HIERARCHICAL) {
    ring_remove(fs, &gp->ring, &tp->node, false);
    if (gp->ring.n == 0 && gp->node.in_ring) ring_remove(fs, &p->ring, &gp->node, true);
  }
}

/* Backlog start: the carried debt becomes the deficit. */
static void backlog_start(fs_node_t *n) {
  n->deficit = n->carry;
  n->carry = 0;
}

/* Backlog end: keep debt (at most one round), drop credit. */
static void backlog_end(fs_node_t *n, int64_t round) {
  n->carry = clamp_debt(n->deficit < 0 ? n->deficit : 0, round);
  n->deficit = 0;
}

/* Drop a node's queue membership when everything is re-queued; its credit
 * follows the same rule as a backlog that ends. */
static void node_forget(fs_node_t *n, int64_t round) {
  if (n->queued) backlog_end(n, round);
  n->queued = 0;
  n->in_ring = false;
  n->fresh_at = 0; /* the rings restart, and their round clocks with them */
  n->next = n->prev = NULL;
}

/* The tenant crossed its max_inflight one way or the other: its queued
 * requests become runnable (or stop being) in every pool. O(pools). */
static void tenant_set_runnable(ob_fs_t *fs, fs_tenant_t *t, bool runnable) {
  for (uint32_t i = 0; i < fs->npools; i++) {
    fs_tpool_t *tp = t->tp[i];
    if (!tp->node.queued) continue;
    fs_pool_t *p = fs->pools[i];
    if (runnable) {
      p->runnable += tp->node.queued;
      if (fs->p.mode != OB_FS_FIFO && !tp->node.in_ring) ring_join_tenant(fs, p, tp, gpool_of(fs, t, i));
    } else {
      p->runnable -= tp->node.queued;
      ring_leave_tenant(fs, p, tp, gpool_of(fs, t, i));
    }
  }
}

/* ---------------------------------------------------------------- deadline heap */

static bool heap_less(const ob_fs_req_t *a, const ob_fs_req_t *b) {
  if (a->deadline_us != b->deadline_us) return a->deadline_us < b->deadline_us;
  return a->enqueued_us < b->enqueued_us;
}

static void heap_set(ob_fs_t *fs, size_t i, ob_fs_req_t *r) {
  fs->heap[i] = r;
  r->heap_index = i;
}

static void heap_up(ob_fs_t *fs, size_t i) {
  ob_fs_req_t *r = fs->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!heap_less(r, fs->heap[parent])) break;
    heap_set(fs, i, fs->heap[parent]);
    i = parent;
  }
  heap_set(fs, i, r);
}

static void heap_down(ob_fs_t *fs, size_t i) {
  ob_fs_req_t *r = fs->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= fs->heap_len) break;
    if (c + 1 < fs->heap_len && heap_less(fs->heap[c + 1], fs->heap[c])) c++;
    if (!heap_less(fs->heap[c], r)) break;
    heap_set(fs, i, fs->heap[c]);
    i = c;
  }
  heap_set(fs, i, r);
}

static void heap_push(ob_fs_t *fs, ob_fs_req_t *r) {
  if (fs->heap_len == fs->heap_cap) {
    fs->heap_cap = fs->heap_cap ? fs->heap_cap * 2 : 64;
    fs->heap = ob_xrealloc(fs->heap, fs->heap_cap * sizeof *fs->heap);
  }
  heap_set(fs, fs->heap_len++, r);
  heap_up(fs, fs->heap_len - 1);
}

static void heap_remove(ob_fs_t *fs, ob_fs_req_t *r) {
  size_t i = r->heap_index;
  r->heap_index = SIZE_MAX;
  if (i >= fs->heap_len || fs->heap[i] != r) return;
  ob_fs_req_t *last = fs->heap[--fs->heap_len];
  if (last == r) return;
  heap_set(fs, i, last);
  heap_up(fs, i);
  heap_down(fs, last->heap_index);
}

/* ---------------------------------------------------------------- queue links */

/* Append r to its queue and count it. Does not touch the heap or state. */
static void link_req(ob_fs_t *fs, ob_fs_req_t *r) {
  fs_pool_t *p = fs->pools[r->pool];
  fs_tenant_t *t = fs->tenants[r->tenant];
  fs_group_t *g = fs->groups[t->group];
  fs_tpool_t *tp = t->tp[r->pool];
  fs_gpool_t *gp = g->gp[r->pool];
  ob_fs_req_t **head = fs->p.mode == OB_FS_FIFO ? &p->fifo_head : &tp->head;
  ob_fs_req_t **tail = fs->p.mode == OB_FS_FIFO ? &p->fifo_tail : &tp->tail;
  r->next = NULL;
  r->prev = *tail;
  if (*tail) (*tail)->next = r;
  else *head = r;
  *tail = r;
  if (tp->node.queued++ == 0) {
    backlog_start(&tp->node);
    gp->bl_weight += t->weight;
    p->bl_tenant_weight += t->weight;
  }
  if (gp->node.queued++ == 0) {
    backlog_start(&gp->node);
    p->bl_group_weight += g->weight;
  }
  p->queued++, t->queued++, g->queued++, fs->queued++;
  if (tenant_eligible(t)) {
    p->runnable++;
    if (fs->p.mode != OB_FS_FIFO && !tp->node.in_ring) ring_join_tenant(fs, p, tp, gp);
  }
}

/* Take r out of its queue and the heap and uncount it. Does not touch state. */
static void unlink_req(ob_fs_t *fs, ob_fs_req_t *r) {
  fs_pool_t *p = fs->pools[r->pool];
  fs_tenant_t *t = fs->tenants[r->tenant];
  fs_group_t *g = fs->groups[t->group];
  fs_tpool_t *tp = t->tp[r->pool];
  fs_gpool_t *gp = g->gp[r->pool];
  ob_fs_req_t **head = fs->p.mode == OB_FS_FIFO ? &p->fifo_head : &tp->head;
  ob_fs_req_t **tail = fs->p.mode == OB_FS_FIFO ? &p->fifo_tail : &tp->tail;
  if (r->prev) r->prev->next = r->next;
  else *head = r->next;
  if (r->next) r->next->prev = r->prev;
  else *tail = r->prev;
  r->next = r->prev = NULL;
  if (r->heap_index != SIZE_MAX) heap_remove(fs, r);
  if (tenant_eligible(t)) p->runnable--;
  p->queued--, t->queued--, g->queued--, fs->queued--;
  if (--tp->node.queued == 0) {
    ring_leave_tenant(fs, p, tp, gp);
    backlog_end(&tp->node, qw(fs, t->weight));
    gp->bl_weight -= t->weight;
    p->bl_tenant_weight -= t->weight;
  }
  if (--gp->node.queued == 0) {
    backlog_end(&gp->node, qw(fs, g->weight));
    p->bl_group_weight -= g->weight;
  }
}

/* Count r in flight. */
static void grant_req(ob_fs_t *fs, ob_fs_req_t *r) {
  fs_tenant_t *t = fs->tenants[r->tenant];
  fs_group_t *g = fs->groups[t->group];
  uint64_t c = eff_cost(r);
  bool was = tenant_eligible(t);
  r->state = OB_FS_ST_GRANTED;
  t->inflight++, g->inflight++, fs->pools[r->pool]->inflight++, fs->inflight++;
  t->service += c;
  g->service += c;
  if (was && !tenant_eligible(t)) tenant_set_runnable(fs, t, false);
}

/* ---------------------------------------------------------------- choosing */

static ob_fs_req_t *pick_fifo(ob_fs_t *fs, fs_pool_t *p) {
  for (ob_fs_req_t *r = p->fifo_head; r; r = r->next) {
    fs->work++;
    if (tenant_eligible(fs->tenants[r->tenant])) return r;
  }
  return NULL;
}

/* Choose and charge the DRR deficits. */
static ob_fs_req_t *pick_drr(ob_fs_t *fs, fs_pool_t *p) {
  fs_node_t *gn = NULL, *tn;
  if (fs->p.mode == OB_FS_HIERARCHICAL) {
    gn = ring_pick(fs, &p->ring, true);
    if (!gn) return NULL;
    tn = ring_pick(fs, &((fs_gpool_t *)gn)->ring, false); /* settled: returns its cur */
  } else {
    tn = ring_pick(fs, &p->ring, false);
  }
  if (!tn) return NULL;
  ob_fs_req_t *r = ((fs_tpool_t *)tn)->head;
  int64_t c = (int64_t)eff_cost(r);
  tn->deficit -= c;
  if (gn) gn->deficit -= c;
  return r;
}

ob_fs_req_t *ob_fs_next_grant(ob_fs_t *fs, uint64_t now_us) {
  (void)now_us;
  if (!fs || !fs->queued || !global_has_slot(fs)) return NULL;
  for (uint32_t i = 0; i < fs->npools; i++) {
    uint32_t idx = (fs->rr + i) % fs->npools;
    fs_pool_t *p = fs->pools[idx];
    fs->work++;
    if (!p->runnable || !pool_has_slot(p)) continue;
    ob_fs_req_t *r = fs->p.mode == OB_FS_FIFO ? pick_fifo(fs, p) : pick_drr(fs, p);
    if (!r) continue; /* cannot happen while runnable > 0 */
    unlink_req(fs, r);
    grant_req(fs, r);
    fs->rr = (idx + 1) % fs->npools;
    return r;
  }
  return NULL;
}

/* ---------------------------------------------------------------- setup */

static void params_apply(ob_fs_t *fs, const ob_fs_params_t *p) {
  fs->p.max_inflight = p->max_inflight;
  fs->p.max_queue = p->max_queue;
  fs->p.quantum = p->quantum > OB_FS_COST_MAX ? OB_FS_COST_MAX : p->quantum;
}

static ob_fs_mode_t mode_valid(ob_fs_mode_t m) {
  return m == OB_FS_WEIGHTED || m == OB_FS_FIFO ? m : OB_FS_HIERARCHICAL;
}

ob_fs_t *ob_fs_create(const ob_fs_params_t *p) {
  ob_fs_t *fs = ob_xcalloc(1, sizeof *fs);
  fs->max_cost = 1;
  if (p) {
    params_apply(fs, p);
    fs->p.mode = mode_valid(p->mode);
  }
  return fs;
}

void ob_fs_destroy(ob_fs_t *fs) {
  if (!fs) return;
  for (uint32_t i = 0; i < fs->ntenants; i++) {
    fs_tenant_t *t = fs->tenants[i];
    for (uint32_t j = 0; j < fs->npools; j++) free(t->tp[j]);
    free(t->tp);
    free(t->name);
    free(t);
  }
  for (uint32_t i = 0; i < fs->ngroups; i++) {
    fs_group_t *g = fs->groups[i];
    for (uint32_t j = 0; j < fs->npools; j++) free(g->gp[j]);
    free(g->gp);
    free(g->name);
    free(g);
  }
  for (uint32_t i = 0; i < fs->npools; i++) {
    free(fs->pools[i]->name);
    free(fs->pools[i]);
  }
  free(fs->tenants);
  free(fs->groups);
  free(fs->pools);
  free(fs->heap);
  free(fs);
}

static int cmp_stamp(const void *a, const void *b) {
  const ob_fs_req_t *x = *(ob_fs_req_t *const *)a, *y = *(ob_fs_req_t *const *)b;
  return x->enqueued_us < y->enqueued_us ? -1 : x->enqueued_us > y->enqueued_us;
}

/* Rare (a mode change): collect every queued request, empty all queues and
 * rings, switch mode and queue them again in arrival order. Debts are kept
 * as carried debts; the heap is untouched (same requests, same deadlines). */
static void requeue_all(ob_fs_t *fs, ob_fs_mode_t mode) {
  size_t n = 0;
  ob_fs_req_t **all = ob_xmalloc((fs->queued ? fs->queued : 1) * sizeof *all);
  for (uint32_t i = 0; i < fs->npools; i++) {
    fs_pool_t *p = fs->pools[i];
    if (fs->p.mode == OB_FS_FIFO) {
      for (ob_fs_req_t *r = p->fifo_head; r; r = r->next) all[n++] = r;
    } else {
      for (uint32_t j = 0; j < fs->ntenants; j++)
        for (ob_fs_req_t *r = fs->tenants[j]->tp[i]->head; r; r = r->next) all[n++] = r;
    }
    p->ring = (fs_ring_t){0};
    p->fifo_head = p->fifo_tail = NULL;
    p->queued = p->runnable = 0;
    p->bl_group_weight = p->bl_tenant_weight = 0;
  }
  qsort(all, n, sizeof *all, cmp_stamp);
  for (uint32_t j = 0; j < fs->ntenants; j++) {
    fs_tenant_t *t = fs->tenants[j];
    t->queued = 0;
    for (uint32_t i = 0; i < fs->npools; i++) {
      fs_tpool_t *tp = t->tp[i];
      node_forget(&tp->node, qw(fs, t->weight));
      tp->head = tp->tail = NULL;
    }
  }
  for (uint32_t j = 0; j < fs->ngroups; j++) {
    fs_group_t *g = fs->groups[j];
    g->queued = 0;
    for (uint32_t i = 0; i < fs->npools; i++) {
      fs_gpool_t *gp = g->gp[i];
      node_forget(&gp->node, qw(fs, g->weight));
      gp->ring = (fs_ring_t){0};
      gp->bl_weight = 0;
    }
  }
  fs->queued = 0;
  fs->p.mode = mode;
  for (size_t i = 0; i < n; i++) link_req(fs, all[i]);
  free(all);
}

void ob_fs_set_params(ob_fs_t *fs, const ob_fs_params_t *p) {
  if (!fs || !p) return;
  params_apply(fs, p);
  ob_fs_mode_t m = mode_valid(p->mode);
  if (m != fs->p.mode) requeue_all(fs, m);
}

ob_fs_pool_id ob_fs_pool_add(ob_fs_t *fs, const char *name, uint32_t max_inflight) {
  ob_fs_pool_id id = fs->npools;
  fs->pools = grow(fs->pools, &fs->cap_pools, id + 1, sizeof *fs->pools);
  fs_pool_t *p = ob_xcalloc(1, sizeof *p);
  p->name = ob_xstrdup(name ? name : "");
  p->id = id;
  p->max_inflight = max_inflight;
  fs->pools[id] = p;
  /* Every tenant and group gets its state in the new pool. */
  for (uint32_t i = 0; i < fs->ntenants; i++) {
    fs_tenant_t *t = fs->tenants[i];
    t->tp = ob_xrealloc(t->tp, (size_t)(id + 1) * sizeof *t->tp);
    t->tp[id] = ob_xcalloc(1, sizeof *t->tp[id]);
    t->tp[id]->t = t;
  }
  for (uint32_t i = 0; i < fs->ngroups; i++) {
    fs_group_t *g = fs->groups[i];
    g->gp = ob_xrealloc(g->gp, (size_t)(id + 1) * sizeof *g->gp);
    g->gp[id] = ob_xcalloc(1, sizeof *g->gp[id]);
    g->gp[id]->g = g;
  }
  fs->npools++;
  return id;
}

void ob_fs_pool_set(ob_fs_t *fs, ob_fs_pool_id pool, uint32_t max_inflight) {
  fs_pool_t *p = fs ? pool_of(fs, pool) : NULL;
  if (p) p->max_inflight = max_inflight;
}

ob_fs_group_id ob_fs_group_add(ob_fs_t *fs, const char *name, uint32_t weight) {
  ob_fs_group_id id = fs->ngroups;
  fs->groups = grow(fs->groups, &fs->cap_groups, id + 1, sizeof *fs->groups);
  fs_group_t *g = ob_xcalloc(1, sizeof *g);
  g->name = ob_xstrdup(name ? name : "");
  g->weight = weight ? weight : 1;
  g->gp = ob_xcalloc(fs->npools ? fs->npools : 1, sizeof *g->gp);
  for (uint32_t i = 0; i < fs->npools; i++) {
    g->gp[i] = ob_xcalloc(1, sizeof *g->gp[i]);
    g->gp[i]->g = g;
  }
  fs->groups[id] = g;
  fs->ngroups++;
  return id;
}

void ob_fs_group_set(ob_fs_t *fs, ob_fs_group_id id, uint32_t weight) {
  fs_group_t *g = fs ? group_of(fs, id) : NULL;
  if (!g) return;
  uint32_t w = weight ? weight : 1;
  for (uint32_t i = 0; i < fs->npools; i++)
    if (g->gp[i]->node.queued) fs->pools[i]->bl_group_weight += (uint64_t)w - g->weight;
  g->weight = w;
}

/* An unknown group falls back to group 0, created as "default" if needed. */
static ob_fs_group_id group_or_default(ob_fs_t *fs, ob_fs_group_id g) {
  if (g < fs->ngroups) return g;
  if (fs->ngroups == 0) ob_fs_group_add(fs, "default", 1);
  return 0;
}

ob_fs_tenant_id ob_fs_tenant_add(ob_fs_t *fs, const char *name, const ob_fs_tenant_params_t *p) {
  ob_fs_tenant_params_t def = {0, 1, 0, 0};
  if (!p) p = &def;
  ob_fs_tenant_id id = fs->ntenants;
  fs->tenants = grow(fs->tenants, &fs->cap_tenants, id + 1, sizeof *fs->tenants);
  fs_tenant_t *t = ob_xcalloc(1, sizeof *t);
  t->name = ob_xstrdup(name ? name : "");
  t->group = group_or_default(fs, p->group);
  t->weight = p->weight ? p->weight : 1;
  t->max_inflight = p->max_inflight;
  t->max_queue = p->max_queue;
  t->tp = ob_xcalloc(fs->npools ? fs->npools : 1, sizeof *t->tp);
  for (uint32_t i = 0; i < fs->npools; i++) {
    t->tp[i] = ob_xcalloc(1, sizeof *t->tp[i]);
    t->tp[i]->t = t;
  }
  fs->tenants[id] = t;
  fs->ntenants++;
  return id;
}

/* Move t with its backlog (and in-flight count) to group ng. */
static void tenant_move(ob_fs_t *fs, fs_tenant_t *t, ob_fs_group_id ng) {
  fs_group_t *og = fs->groups[t->group], *g = fs->groups[ng];
  for (uint32_t i = 0; i < fs->npools; i++) {
    fs_tpool_t *tp = t->tp[i];
    if (!tp->node.queued) continue;
    fs_pool_t *p = fs->pools[i];
    fs_gpool_t *ogp = og->gp[i], *gp = g->gp[i];
    bool in = tp->node.in_ring && fs->p.mode == OB_FS_HIERARCHICAL;
    if (in) ring_leave_tenant(fs, p, tp, ogp);
    ogp->node.queued -= tp->node.queued;
    ogp->bl_weight -= t->weight;
    if (ogp->node.queued == 0) {
      backlog_end(&ogp->node, qw(fs, og->weight));
      p->bl_group_weight -= og->weight;
    }
    if (gp->node.queued == 0) {
      backlog_start(&gp->node);
      p->bl_group_weight += g->weight;
    }
    gp->node.queued += tp->node.queued;
    gp->bl_weight += t->weight;
    if (in) ring_join_tenant(fs, p, tp, gp);
  }
  og->inflight -= t->inflight, g->inflight += t->inflight;
  og->queued -= t->queued, g->queued += t->queued;
  t->group = ng;
}

void ob_fs_tenant_set(ob_fs_t *fs, ob_fs_tenant_id id, const ob_fs_tenant_params_t *p) {
  fs_tenant_t *t = fs && p ? tenant_of(fs, id) : NULL;
  if (!t) return;
  uint32_t w = p->weight ? p->weight : 1;
  if (w != t->weight) {
    for (uint32_t i = 0; i < fs->npools; i++) {
      if (!t->tp[i]->node.queued) continue;
      gpool_of(fs, t, i)->bl_weight += (uint64_t)w - t->weight;
      fs->pools[i]->bl_tenant_weight += (uint64_t)w - t->weight;
    }
    t->weight = w;
  }
  if (p->group < fs->ngroups && p->group != t->group) tenant_move(fs, t, p->group);
  bool was = tenant_eligible(t);
  t->max_inflight = p->max_inflight;
  t->max_queue = p->max_queue;
  bool now = tenant_eligible(t);
  if (was != now) tenant_set_runnable(fs, t, now);
}

/* ---------------------------------------------------------------- decisions */

ob_fs_verdict_t ob_fs_submit(ob_fs_t *fs, ob_fs_req_t *r, uint64_t now_us) {
  /* Misuse (submitting a request that is still linked) changes nothing. */
  if (r->state == OB_FS_ST_QUEUED) return OB_FS_QUEUED;
  if (r->state == OB_FS_ST_GRANTED) return OB_FS_GRANTED;
  r->state = OB_FS_ST_IDLE;
  r->next = r->prev = NULL;
  r->heap_index = SIZE_MAX;
  fs_pool_t *p = pool_of(fs, r->pool);
  fs_tenant_t *t = tenant_of(fs, r->tenant);
  if (!p || !t) return OB_FS_QUEUE_FULL; /* unknown pool or tenant: refuse */
  uint64_t c = eff_cost(r);
  if (!p->runnable && pool_has_slot(p) && global_has_slot(fs) && tenant_eligible(t)) {
    if (c > fs->max_cost) fs->max_cost = c;
    grant_req(fs, r);
    return OB_FS_GRANTED;
  }
  if (t->max_queue && t->queued >= t->max_queue) return OB_FS_TENANT_QUEUE_FULL;
  if (fs->p.max_queue && fs->queued >= fs->p.max_queue) return OB_FS_QUEUE_FULL;
  if (c > fs->max_cost) fs->max_cost = c;
  /* Arrival stamp: the submit time, nudged forward so that stamps are
   * unique and increasing (the order mode changes re-queue in). */
  r->enqueued_us = now_us > fs->last_stamp ? now_us : fs->last_stamp + 1;
  fs->last_stamp = r->enqueued_us;
  r->state = OB_FS_ST_QUEUED;
  link_req(fs, r);
  if (r->deadline_us) heap_push(fs, r);
  return OB_FS_QUEUED;
}

void ob_fs_release(ob_fs_t *fs, ob_fs_req_t *r, uint64_t actual_cost, uint64_t now_us) {
  if (!fs || !r || r->state != OB_FS_ST_GRANTED) return; /* not granted: ignore */
  fs_pool_t *p = pool_of(fs, r->pool);
  fs_tenant_t *t = tenant_of(fs, r->tenant);
  if (!p || !t) return;
  fs_group_t *g = fs->groups[t->group];
  r->state = OB_FS_ST_IDLE;
  bool was = tenant_eligible(t);
  t->inflight--, g->inflight--, p->inflight--, fs->inflight--;

  /* Cost correction: service becomes the actual cost; the difference to the
   * estimate comes off (or back onto) the deficits in this pool, never
   * leaving more than one round of debt. */
  uint64_t est = eff_cost(r);
  uint64_t act = actual_cost > OB_FS_COST_MAX ? OB_FS_COST_MAX : actual_cost;
  t->service = (t->service >= est ? t->service - est : 0) + act;
  g->service = (g->service >= est ? g->service - est : 0) + act;
  int64_t delta = (int64_t)act - (int64_t)est;
  if (delta && fs->p.mode != OB_FS_FIFO) {
    fs_node_t *nodes[2] = {&t->tp[r->pool]->node, fs->p.mode == OB_FS_HIERARCHICAL ? &g->gp[r->pool]->node : NULL};
    int64_t rounds[2] = {qw(fs, t->weight), qw(fs, g->weight)};
    for (int i = 0; i < 2; i++) {
      fs_node_t *n = nodes[i];
      if (!n) continue;
      if (n->queued) {
        /* A charge stops at one round of debt; a deficit already below
         * that (the weight or quantum shrank) is left where it is. */
        int64_t d = n->deficit - delta;
        if (delta > 0 && d < -rounds[i]) d = n->deficit < -rounds[i] ? n->deficit : -rounds[i];
        n->deficit = d;
      } else {
        int64_t cv = n->carry - delta;
        n->carry = cv > 0 ? 0 : clamp_debt(cv, rounds[i]);
      }
    }
  }

  /* Drain rate: each release adds ln2/H to a rate decaying with half-life H,
   * which converges to the release rate per second. */
  double lambda = M_LN2 / OB_FS_DRAIN_HALF_LIFE_S;
  if (!p->drained) {
    p->drained = true;
    p->drain_rate = lambda;
    p->drain_us = p->drain_first_us = now_us;
  } else {
    double dt = now_us > p->drain_us ? (double)(now_us - p->drain_us) / 1e6 : 0.0;
    p->drain_rate = p->drain_rate * exp2(-dt / OB_FS_DRAIN_HALF_LIFE_S) + lambda;
    if (now_us > p->drain_us) p->drain_us = now_us;
  }

  if (!was && tenant_eligible(t)) tenant_set_runnable(fs, t, true);
}

void ob_fs_cancel(ob_fs_t *fs, ob_fs_req_t *r) {
  if (!fs || !r || r->state != OB_FS_ST_QUEUED) return;
  if (!pool_of(fs, r->pool) || !tenant_of(fs, r->tenant)) return;
  unlink_req(fs, r);
  r->state = OB_FS_ST_IDLE;
}

uint64_t ob_fs_next_deadline(const ob_fs_t *fs) { return fs && fs->heap_len ? fs->heap[0]->deadline_us : 0; }

ob_fs_req_t *ob_fs_next_expired(ob_fs_t *fs, uint64_t now_us) {
  if (!fs || !fs->heap_len || fs->heap[0]->deadline_us > now_us) return NULL;
  ob_fs_req_t *r = fs->heap[0];
  unlink_req(fs, r);
  r->state = OB_FS_ST_IDLE;
  return r;
}

/*
 * Place in line over the drain rate, scaled by the tenant's share of the
 * backlogged weight in the pool (in FIFO mode: everything queued in the
 * pool is ahead, share 1). The rate is the exponentially weighted release
 * rate, decayed to now and corrected for the short history of a young pool
 * (as a warming EWMA is); a pool that never released assumes one release a
 * second, i.e. 1000 ms per request ahead.
 */
uint64_t ob_fs_retry_after_ms(const ob_fs_t *fs, ob_fs_pool_id pool, ob_fs_tenant_id tid, uint64_t now_us) {
  const fs_pool_t *p = fs ? pool_of(fs, pool) : NULL;
  const fs_tenant_t *t = fs ? tenant_of(fs, tid) : NULL;
  if (!p || !t) return 1000;
  double ahead, share = 1.0;
  const fs_tpool_t *tp = t->tp[pool];
  if (fs->p.mode == OB_FS_FIFO) {
    ahead = (double)p->queued + 1.0;
  } else {
    ahead = (double)tp->node.queued + 1.0;
    uint64_t mine = tp->node.queued ? 0 : t->weight;
    if (fs->p.mode == OB_FS_WEIGHTED) {
      share = (double)t->weight / (double)(p->bl_tenant_weight + mine);
    } else {
      const fs_group_t *g = fs->groups[t->group];
      const fs_gpool_t *gp = g->gp[pool];
      uint64_t gmine = gp->node.queued ? 0 : g->weight;
      share = (double)g->weight / (double)(p->bl_group_weight + gmine) * (double)t->weight /
              (double)(gp->bl_weight + mine);
    }
  }
  double rate = 1.0;
  if (p->drained) {
    double since = now_us > p->drain_us ? (double)(now_us - p->drain_us) / 1e6 : 0.0;
    double age = now_us > p->drain_first_us ? (double)(now_us - p->drain_first_us) / 1e6 : 0.0;
    if (age < 1.0) age = 1.0;
    rate = p->drain_rate * exp2(-since / OB_FS_DRAIN_HALF_LIFE_S) / (1.0 - exp2(-age / OB_FS_DRAIN_HALF_LIFE_S));
  }
  double ms = ahead / (rate * share) * 1000.0;
  if (!(ms >= 1000.0)) return ms != ms ? 60000 : 1000; /* NaN -> the maximum */
  if (ms > 60000.0) return 60000;
  return (uint64_t)ms;
}

/* ---------------------------------------------------------------- observing */

size_t ob_fs_num_tenants(const ob_fs_t *fs) { return fs ? fs->ntenants : 0; }
size_t ob_fs_num_groups(const ob_fs_t *fs) { return fs ? fs->ngroups : 0; }
size_t ob_fs_num_pools(const ob_fs_t *fs) { return fs ? fs->npools : 0; }
uint32_t ob_fs_inflight(const ob_fs_t *fs) { return fs ? fs->inflight : 0; }
uint32_t ob_fs_queued(const ob_fs_t *fs) { return fs ? fs->queued : 0; }
uint64_t ob_fs_work(const ob_fs_t *fs) { return fs ? fs->work : 0; }

void ob_fs_tenant_stats(const ob_fs_t *fs, ob_fs_tenant_id id, ob_fs_tenant_stats_t *out) {
  *out = (ob_fs_tenant_stats_t){0};
  const fs_tenant_t *t = fs ? tenant_of(fs, id) : NULL;
  if (!t) return;
  *out = (ob_fs_tenant_stats_t){t->name, t->group, t->weight, t->inflight, t->queued, t->service, 0};
  for (uint32_t i = 0; i < fs->npools; i++) out->deficit += t->tp[i]->node.deficit + t->tp[i]->node.carry;
}

void ob_fs_group_stats(const ob_fs_t *fs, ob_fs_group_id id, ob_fs_group_stats_t *out) {
  *out = (ob_fs_group_stats_t){0};
  const fs_group_t *g = fs ? group_of(fs, id) : NULL;
  if (!g) return;
  *out = (ob_fs_group_stats_t){g->name, g->weight, g->inflight, g->queued, g->service, 0};
  for (uint32_t i = 0; i < fs->npools; i++) out->deficit += g->gp[i]->node.deficit + g->gp[i]->node.carry;
}

void ob_fs_pool_stats(const ob_fs_t *fs, ob_fs_pool_id id, ob_fs_pool_stats_t *out) {
  *out = (ob_fs_pool_stats_t){0};
  const fs_pool_t *p = fs ? pool_of(fs, id) : NULL;
  if (!p) return;
  *out = (ob_fs_pool_stats_t){p->name, p->max_inflight, p->inflight, p->queued};
}
