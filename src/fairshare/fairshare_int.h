/*
 * fairshare_int.h: the scheduler's private layout, shared by the files of
 * src/fairshare/ and by its own unit test and fuzz driver (which check the
 * invariants below through ob_fs_check). Nothing else may include it.
 *
 * Layout. Every pool, group and tenant is allocated once and never moves, so
 * the DRR rings can link plain pointers. A tenant owns one fs_tpool_t per
 * pool (its FIFO queue and its deficit there); a group owns one fs_gpool_t
 * per pool (its deficit there and the ring of its tenants that can run
 * there). Adding a pool later grows those per-tenant and per-group arrays.
 *
 * Rings. A ring is circular and doubly linked through fs_node_t; `cur` is
 * the member whose turn it is. In hierarchical mode the pool's ring holds
 * groups and each group's ring holds tenants; in weighted mode the pool's
 * ring holds tenants directly; in FIFO mode no ring is used and requests
 * wait in one list per pool. A tenant is in a ring exactly when it has
 * requests queued in that pool and is under its max_inflight; a group is in
 * its pool's ring exactly when its own ring is not empty.
 */
#ifndef OB_FAIRSHARE_INT_H
#define OB_FAIRSHARE_INT_H

#include "fairshare.h"

/* ob_fs_req_t.state. Distinctive values rather than 0/1/2, so that a
 * request struct the caller never initialised is very unlikely to look
 * queued or granted. */
enum {
  OB_FS_ST_IDLE = 0,
  OB_FS_ST_QUEUED = 0x51554555,  /* "QUEU" */
  OB_FS_ST_GRANTED = 0x4752414e, /* "GRAN" */
};

/* Costs, quanta and weight products are clamped so that deficits stay far
 * from int64 overflow whatever the caller passes. */
#define OB_FS_COST_MAX ((uint64_t)1 << 40)
#define OB_FS_QW_MAX ((int64_t)1 << 52)

/* Drain-rate half-life for ob_fs_retry_after_ms. */
#define OB_FS_DRAIN_HALF_LIFE_S 5.0

/* One member of a DRR ring: a tenant or a group, in one pool. */
typedef struct fs_node {
  struct fs_node *next, *prev; /* ring links while in_ring, else NULL */
  int64_t deficit;             /* DRR credit while backlogged; 0 when not */
  int64_t carry;               /* debt kept while not backlogged: [-quantum*weight, 0] */
  uint64_t fresh_at;           /* ring turn count from which a join goes first */
  uint32_t queued;             /* requests queued in this pool */
  bool in_ring;
} fs_node_t;

typedef struct fs_ring {
  fs_node_t *cur; /* whose turn it is; NULL when empty */
  uint32_t n;
  uint64_t turns; /* credited turns begun so far: the ring's round clock */
  /* The last member that joined next in line and whose turn has not come
   * yet (it follows cur, after any earlier such joiners), or NULL. */
  struct fs_node *fresh_tail;
} fs_ring_t;

struct fs_tenant;
struct fs_group;

/* A tenant in one pool. node must stay the first member (rings cast back). */
typedef struct fs_tpool {
  fs_node_t node;
  struct fs_tenant *t;
  ob_fs_req_t *head, *tail; /* this tenant's FIFO in this pool (DRR modes) */
} fs_tpool_t;

/* A group in one pool. node must stay the first member. */
typedef struct fs_gpool {
  fs_node_t node;
  struct fs_group *g;
  fs_ring_t ring;     /* its runnable tenants (hierarchical mode) */
  uint64_t bl_weight; /* sum of the weights of its backlogged tenants here */
} fs_gpool_t;

typedef struct fs_tenant {
  char *name;
  ob_fs_group_id group;
  uint32_t weight, max_inflight, max_queue;
  uint32_t inflight, queued; /* across pools */
  uint64_t service;
  fs_tpool_t **tp; /* [npools] */
} fs_tenant_t;

typedef struct fs_group {
  char *name;
  uint32_t weight;
  uint32_t inflight, queued; /* across pools */
  uint64_t service;
  fs_gpool_t **gp; /* [npools] */
} fs_group_t;

typedef struct fs_pool {
  char *name;
  ob_fs_pool_id id;
  uint32_t max_inflight, inflight, queued;
  uint32_t runnable;        /* queued requests whose tenant is under its max_inflight */
  fs_ring_t ring;           /* groups (hierarchical) or tenants (weighted) */
  ob_fs_req_t *fifo_head, *fifo_tail; /* FIFO mode */
  uint64_t bl_group_weight;  /* sum of weights of groups backlogged here */
  uint64_t bl_tenant_weight; /* sum of weights of tenants backlogged here */
  /* drain rate: releases per second, exponentially weighted */
  double drain_rate;
  uint64_t drain_us, drain_first_us;
  bool drained;
} fs_pool_t;

struct ob_fs {
  ob_fs_params_t p;
  uint64_t max_cost; /* largest cost seen; the automatic quantum; >= 1 */
  fs_pool_t **pools;
  fs_group_t **groups;
  fs_tenant_t **tenants;
  uint32_t npools, ngroups, ntenants;
  uint32_t cap_pools, cap_groups, cap_tenants;
  uint32_t inflight, queued;
  ob_fs_req_t **heap; /* deadline min-heap */
  size_t heap_len, heap_cap;
  uint32_t rr;         /* next pool to look at in ob_fs_next_grant */
  uint64_t last_stamp; /* arrival stamps (enqueued_us) are strictly increasing */
  uint64_t work;       /* loop iterations spent choosing; for tests */
};

/* Loop iterations spent choosing requests so far (DRR visits, FIFO skips).
 * Lets a test show that a grant costs O(1) amortised. */
uint64_t ob_fs_work(const ob_fs_t *fs);

/* Walk every structure and check every invariant: counts against the
 * requests actually linked, ring membership, caps, weight sums and the heap
 * order and indices. O(everything); for tests and the fuzz driver. Returns
 * true when consistent, else false with *why set to a static description. */
bool ob_fs_check(const ob_fs_t *fs, const char **why);

#endif /* OB_FAIRSHARE_INT_H */
