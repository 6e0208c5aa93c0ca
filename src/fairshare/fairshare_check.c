/*
 * fairshare_check.c: ob_fs_check, a full consistency walk of the scheduler
 * for the unit test and the fuzz driver. It reads everything and changes
 * nothing; it is O(size of the scheduler) and never called on a hot path.
 */
#include "fairshare_int.h"

#define FAIL(msg)  \
  do {             \
    *why = (msg);  \
    return false;  \
  } while (0)

static bool eligible(const fs_tenant_t *t) { return !t->max_inflight || t->inflight < t->max_inflight; }

/* Walk a ring: links agree both ways, exactly rg->n members, all in_ring. */
static bool ring_ok(const fs_ring_t *rg, const char **why) {
  if (!rg->cur) {
    if (rg->n) FAIL("empty ring with a count");
    return true;
  }
  const fs_node_t *n = rg->cur;
  uint32_t k = 0;
  bool fresh_seen = !rg->fresh_tail;
  if (rg->fresh_tail == rg->cur) FAIL("next-in-line joiner already has the turn");
  do {
    if (n == rg->fresh_tail) fresh_seen = true;
    if (!n->in_ring) FAIL("ring member not marked in_ring");
    if (!n->next || !n->prev || n->next->prev != n || n->prev->next != n) FAIL("ring links broken");
    if (++k > rg->n) FAIL("ring longer than its count");
    n = n->next;
  } while (n != rg->cur);
  if (k != rg->n) FAIL("ring shorter than its count");
  if (!fresh_seen) FAIL("next-in-line joiner not in the ring");
  return true;
}

/* A queued request in pool `pool`: its state, ids, heap membership. */
static bool queued_req_ok(const ob_fs_t *fs, const ob_fs_req_t *r, uint32_t pool, size_t *with_deadline,
                          const char **why) {
  if (r->state != OB_FS_ST_QUEUED) FAIL("linked request not in QUEUED state");
  if (r->pool != pool) FAIL("request in the wrong pool's queue");
  if (r->tenant >= fs->ntenants) FAIL("queued request with an unknown tenant");
  if (r->next && r->next->prev != r) FAIL("queue links broken");
  if (r->deadline_us) {
    (*with_deadline)++;
    if (r->heap_index >= fs->heap_len || fs->heap[r->heap_index] != r) FAIL("request with a deadline not in the heap");
  } else if (r->heap_index != SIZE_MAX) {
    FAIL("request without a deadline has a heap index");
  }
  return true;
}

bool ob_fs_check(const ob_fs_t *fs, const char **why) {
  static const char *dummy;
  if (!why) why = &dummy;
  *why = NULL;
  bool fifo = fs->p.mode == OB_FS_FIFO, hier = fs->p.mode == OB_FS_HIERARCHICAL;
  size_t with_deadline = 0;
  uint64_t total_queued = 0, total_inflight = 0;
  if (fs->max_cost < 1 || fs->max_cost > OB_FS_COST_MAX) FAIL("automatic quantum out of range");

  for (uint32_t i = 0; i < fs->npools; i++) {
    const fs_pool_t *p = fs->pools[i];
    if (p->id != i) FAIL("pool id");
    uint64_t queued = 0, runnable = 0, blt = 0, blg = 0;
    if (fifo) {
      if (p->ring.cur || p->ring.n) FAIL("ring in FIFO mode");
      const ob_fs_req_t *prev = NULL;
      for (const ob_fs_req_t *r = p->fifo_head; r; prev = r, r = r->next) {
        if (!queued_req_ok(fs, r, i, &with_deadline, why)) return false;
        if (r->prev != prev) FAIL("FIFO back link");
        if (prev && prev->enqueued_us >= r->enqueued_us) FAIL("FIFO not in arrival order");
        if (++queued > fs->queued) FAIL("FIFO longer than everything queued");
      }
      if (p->fifo_tail != prev) FAIL("FIFO tail");
    } else if (p->fifo_head || p->fifo_tail) {
      FAIL("FIFO list in a DRR mode");
    }
    if (!ring_ok(&p->ring, why)) return false;

    uint32_t ring_members = 0;
    for (uint32_t j = 0; j < fs->ntenants; j++) {
      const fs_tenant_t *t = fs->tenants[j];
      const fs_tpool_t *tp = t->tp[i];
      if (tp->t != t) FAIL("tenant back pointer");
      uint32_t n = 0;
      if (fifo) {
        if (tp->head || tp->tail) FAIL("tenant list in FIFO mode");
        for (const ob_fs_req_t *r = p->fifo_head; r; r = r->next) n += r->tenant == j;
      } else {
        const ob_fs_req_t *prev = NULL;
        for (const ob_fs_req_t *r = tp->head; r; prev = r, r = r->next) {
          if (!queued_req_ok(fs, r, i, &with_deadline, why)) return false;
          if (r->tenant != j) FAIL("request in another tenant's queue");
          if (r->prev != prev) FAIL("tenant queue back link");
          if (prev && prev->enqueued_us >= r->enqueued_us) FAIL("tenant queue not in arrival order");
          if (++n > fs->queued) FAIL("tenant queue longer than everything queued");
        }
        if (tp->tail != prev) FAIL("tenant queue tail");
        queued += n;
      }
      if (tp->node.queued != n) FAIL("tenant queued count in pool");
      if (n) blt += t->weight;
      if (eligible(t)) runnable += n;
      bool want = !fifo && n && eligible(t);
      if (tp->node.in_ring != want) FAIL("tenant ring membership");
      if (want) ring_members++;
      if (!n && tp->node.deficit != 0) FAIL("idle tenant holds a deficit");
      if (tp->node.carry > 0 || tp->node.carry < -OB_FS_QW_MAX) FAIL("tenant carry out of range");
      if (n && tp->node.carry != 0) FAIL("backlogged tenant still carries");
    }
    if (queued != p->queued) FAIL("pool queued count");
    if (runnable != p->runnable) FAIL("pool runnable count");
    if (blt != p->bl_tenant_weight) FAIL("pool backlogged tenant weight");
    if (fs->p.mode == OB_FS_WEIGHTED && ring_members != p->ring.n) FAIL("weighted ring count");

    uint32_t group_members = 0, tenant_members = 0;
    for (uint32_t k = 0; k < fs->ngroups; k++) {
      const fs_group_t *g = fs->groups[k];
      const fs_gpool_t *gp = g->gp[i];
      if (gp->g != g) FAIL("group back pointer");
      uint32_t n = 0;
      uint64_t blw = 0;
      for (uint32_t j = 0; j < fs->ntenants; j++) {
        const fs_tenant_t *t = fs->tenants[j];
        if (t->group != k) continue;
        n += t->tp[i]->node.queued;
        if (t->tp[i]->node.queued) blw += t->weight;
      }
      if (gp->node.queued != n) FAIL("group queued count in pool");
      if (gp->bl_weight != blw) FAIL("group backlogged weight");
      if (n) blg += g->weight;
      if (!ring_ok(&gp->ring, why)) return false;
      if (!hier && (gp->ring.n || gp->node.in_ring)) FAIL("group ring outside hierarchical mode");
      if (hier) {
        if (gp->node.in_ring != (gp->ring.n > 0)) FAIL("group ring membership");
        group_members += gp->node.in_ring;
        tenant_members += gp->ring.n;
        const fs_node_t *m = gp->ring.cur;
        for (uint32_t s = 0; m && s < gp->ring.n; s++, m = m->next) {
          const fs_tpool_t *tp = (const fs_tpool_t *)m;
          if (tp->t->tp[i] != tp || tp->t->group != k) FAIL("tenant in the wrong group ring");
        }
      }
      if (!n && gp->node.deficit != 0) FAIL("idle group holds a deficit");
      if (gp->node.carry > 0 || gp->node.carry < -OB_FS_QW_MAX) FAIL("group carry out of range");
    }
    if (blg != p->bl_group_weight) FAIL("pool backlogged group weight");
    if (hier) {
      if (group_members != p->ring.n) FAIL("pool group ring count");
      if (tenant_members != ring_members) FAIL("tenants in group rings");
      const fs_node_t *m = p->ring.cur;
      for (uint32_t s = 0; m && s < p->ring.n; s++, m = m->next) {
        const fs_gpool_t *gp = (const fs_gpool_t *)m;
        if (gp->g->gp[i] != gp) FAIL("group in another pool's ring");
      }
    } else if (fs->p.mode == OB_FS_WEIGHTED) {
      const fs_node_t *m = p->ring.cur;
      for (uint32_t s = 0; m && s < p->ring.n; s++, m = m->next) {
        const fs_tpool_t *tp = (const fs_tpool_t *)m;
        if (tp->t->tp[i] != tp) FAIL("tenant in another pool's ring");
      }
    }
    total_queued += p->queued;
    total_inflight += p->inflight;
  }
  if (total_queued != fs->queued) FAIL("global queued count");
  if (total_inflight != fs->inflight) FAIL("global inflight count (pools)");

  uint64_t t_inflight = 0, t_queued = 0;
  for (uint32_t j = 0; j < fs->ntenants; j++) {
    const fs_tenant_t *t = fs->tenants[j];
    uint64_t q = 0;
    for (uint32_t i = 0; i < fs->npools; i++) q += t->tp[i]->node.queued;
    if (q != t->queued) FAIL("tenant queued count");
    if (t->group >= fs->ngroups) FAIL("tenant group id");
    if (t->weight < 1) FAIL("tenant weight");
    t_inflight += t->inflight;
    t_queued += t->queued;
  }
  if (t_inflight != fs->inflight) FAIL("global inflight count (tenants)");
  if (t_queued != fs->queued) FAIL("global queued count (tenants)");
  for (uint32_t k = 0; k < fs->ngroups; k++) {
    const fs_group_t *g = fs->groups[k];
    uint64_t inf = 0, q = 0;
    for (uint32_t j = 0; j < fs->ntenants; j++)
      if (fs->tenants[j]->group == k) inf += fs->tenants[j]->inflight, q += fs->tenants[j]->queued;
    if (inf != g->inflight) FAIL("group inflight count");
    if (q != g->queued) FAIL("group queued count");
    if (g->weight < 1) FAIL("group weight");
  }

  if (with_deadline != fs->heap_len) FAIL("heap size differs from queued requests with a deadline");
  for (size_t i = 0; i < fs->heap_len; i++) {
    const ob_fs_req_t *r = fs->heap[i];
    if (r->heap_index != i) FAIL("heap index");
    if (r->state != OB_FS_ST_QUEUED || !r->deadline_us) FAIL("heap member not queued with a deadline");
    if (i > 0) {
      const ob_fs_req_t *parent = fs->heap[(i - 1) / 2];
      if (parent->deadline_us > r->deadline_us ||
          (parent->deadline_us == r->deadline_us && parent->enqueued_us > r->enqueued_us))
        FAIL("heap order");
    }
  }
  if (fs->npools && fs->rr >= fs->npools) FAIL("round-robin index");
  return true;
}
