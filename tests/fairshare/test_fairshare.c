/*
 * Unit tests for src/fairshare: exact grant orders for small weight sets
 * (weighted, hierarchical, differing costs), fast path against queueing,
 * caps and max_queue verdicts, cancel, expiry by deadline, cost correction
 * and its one-round clamp, idle tenants banking no credit, FIFO and
 * weighted modes, run-time changes (weights, caps, groups, mode), several
 * pools, misuse that must change nothing, Retry-After, token buckets,
 * seeded random property runs (caps, liveness, DRR fairness bounds) and a
 * 10,000-tenant run showing that a grant costs O(1) amortised.
 *
 * Internal invariants are checked through ob_fs_check (fairshare_int.h).
 */
#include "fairshare.h"
#include "fairshare_int.h"
#include "tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* ---------------------------------------------------------------- helpers */

static ob_fs_t *mk(ob_fs_mode_t mode, uint32_t max_inflight, uint32_t max_queue, uint64_t quantum) {
  ob_fs_params_t p = {mode, max_inflight, max_queue, quantum};
  return ob_fs_create(&p);
}

static ob_fs_tenant_id tenant(ob_fs_t *fs, const char *name, ob_fs_group_id g, uint32_t w, uint32_t max_inflight,
                              uint32_t max_queue) {
  ob_fs_tenant_params_t tp = {g, w, max_inflight, max_queue};
  return ob_fs_tenant_add(fs, name, &tp);
}

static void req(ob_fs_req_t *r, ob_fs_pool_id pool, ob_fs_tenant_id t, uint64_t cost, uint64_t deadline) {
  memset(r, 0, sizeof *r);
  r->pool = pool;
  r->tenant = t;
  r->cost = cost;
  r->deadline_us = deadline;
}

static ob_fs_verdict_t submit(ob_fs_t *fs, ob_fs_req_t *r, ob_fs_pool_id pool, ob_fs_tenant_id t, uint64_t cost,
                              uint64_t deadline, uint64_t now) {
  req(r, pool, t, cost, deadline);
  return ob_fs_submit(fs, r, now);
}

static bool consistent(const ob_fs_t *fs) {
  const char *why = NULL;
  bool ok = ob_fs_check(fs, &why);
  if (!ok) printf("#   ob_fs_check: %s\n", why);
  return ok;
}

static char letter(const ob_fs_t *fs, const ob_fs_req_t *r) {
  ob_fs_tenant_stats_t s;
  ob_fs_tenant_stats(fs, r->tenant, &s);
  return s.name[0];
}

/*
 * One slot at a time: release `blocker` (or nothing), then n times take the
 * next grant, record its tenant's initial and release it at actual cost
 * actual(r) (its estimate when actual is NULL).
 */
typedef uint64_t (*actual_fn)(const ob_fs_t *fs, const ob_fs_req_t *r);

static void sequence(ob_fs_t *fs, ob_fs_req_t *blocker, int n, actual_fn actual, char *out) {
  if (blocker) ob_fs_release(fs, blocker, blocker->cost, 0);
  int k = 0;
  for (; k < n; k++) {
    ob_fs_req_t *r = ob_fs_next_grant(fs, 0);
    if (!r) break;
    out[k] = letter(fs, r);
    ob_fs_release(fs, r, actual ? actual(fs, r) : r->cost, 0);
  }
  out[k] = '\0';
}

static int count_char(const char *s, char c) {
  int n = 0;
  for (; *s; s++) n += *s == c;
  return n;
}

/* xorshift64*: a tiny seeded PRNG so runs are reproducible. */
static uint64_t rng_state;
static uint64_t rnd(void) {
  uint64_t x = rng_state;
  x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
  rng_state = x;
  return x * 0x2545F4914F6CDD1DULL;
}
static uint32_t rnd_below(uint32_t n) { return (uint32_t)(rnd() % n); }

/* ---------------------------------------------------------------- exact orders */

static void test_weighted_order(void) {
  ob_fs_t *fs = mk(OB_FS_WEIGHTED, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g = ob_fs_group_add(fs, "all", 1);
  ob_fs_tenant_id z = tenant(fs, "Z", g, 1, 0, 0), a = tenant(fs, "A", g, 1, 0, 0), b = tenant(fs, "B", g, 2, 0, 0);
  ob_fs_req_t blk, ra[20], rb[20];
  TAP_EQ_INT(submit(fs, &blk, p, z, 1, 0, 0), OB_FS_GRANTED, "weighted: first request takes the free slot");
  for (int i = 0; i < 20; i++) {
    submit(fs, &ra[i], p, a, 1, 0, 0);
    submit(fs, &rb[i], p, b, 1, 0, 0);
  }
  TAP_EQ_INT(ob_fs_queued(fs), 40, "weighted: 40 queued behind the full slot");
  TAP_CHECK(consistent(fs), "weighted: consistent after queueing");
  char seq[64];
  sequence(fs, &blk, 12, NULL, seq);
  TAP_EQ_STR(seq, "ABBABBABBABB", "weights 1:2, unit cost: A B B repeated (A arrived first)");
  TAP_CHECK(consistent(fs), "weighted: consistent after grants");
  ob_fs_destroy(fs);
}

static void test_hierarchical_order(void) {
  ob_fs_t *fs = mk(OB_FS_HIERARCHICAL, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id prod = ob_fs_group_add(fs, "prod", 3), batch = ob_fs_group_add(fs, "batch", 1);
  ob_fs_group_id other = ob_fs_group_add(fs, "other", 1);
  ob_fs_tenant_id z = tenant(fs, "Z", other, 1, 0, 0);
  ob_fs_tenant_id t[4] = {tenant(fs, "A", prod, 1, 0, 0), tenant(fs, "B", prod, 1, 0, 0),
                          tenant(fs, "C", batch, 1, 0, 0), tenant(fs, "D", batch, 1, 0, 0)};
  ob_fs_req_t blk, r[4][30];
  submit(fs, &blk, p, z, 1, 0, 0);
  for (int i = 0; i < 30; i++)
    for (int k = 0; k < 4; k++) submit(fs, &r[k][i], p, t[k], 1, 0, 0);
  char seq[64];
  sequence(fs, &blk, 16, NULL, seq);
  TAP_EQ_STR(seq, "ABACBABDABACBABD", "groups prod:batch 3:1, two tenants each: 3 prod per batch, alternating inside");
  ob_fs_group_stats_t gs;
  ob_fs_group_stats(fs, prod, &gs);
  TAP_EQ_INT(gs.service, 12 + 0, "prod group service 12 of 16");
  ob_fs_group_stats(fs, batch, &gs);
  TAP_EQ_INT(gs.service, 4, "batch group service 4 of 16");
  TAP_EQ_INT(gs.queued, 56, "batch group queued 56 (both tenants)");
  TAP_CHECK(consistent(fs), "hierarchical: consistent");
  ob_fs_destroy(fs);
}

static void test_token_costs(void) {
  ob_fs_t *fs = mk(OB_FS_WEIGHTED, 0, 0, 100);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g = ob_fs_group_add(fs, "all", 1);
  ob_fs_tenant_id z = tenant(fs, "Z", g, 1, 0, 0), a = tenant(fs, "A", g, 1, 0, 0), b = tenant(fs, "B", g, 1, 0, 0);
  ob_fs_req_t blk, ra[20], rb[40];
  submit(fs, &blk, p, z, 1, 0, 0);
  for (int i = 0; i < 20; i++) submit(fs, &ra[i], p, a, 100, 0, 0);
  for (int i = 0; i < 40; i++) submit(fs, &rb[i], p, b, 25, 0, 0);
  char seq[64];
  sequence(fs, &blk, 15, NULL, seq);
  TAP_EQ_STR(seq, "ABBBBABBBBABBBB", "equal weights, costs 100 vs 25: one 100 per four 25s");
  ob_fs_tenant_stats_t sa, sb;
  ob_fs_tenant_stats(fs, a, &sa);
  ob_fs_tenant_stats(fs, b, &sb);
  TAP_EQ_INT(sa.service, 300, "A charged 3 x 100");
  TAP_EQ_INT(sb.service, 300, "B charged 12 x 25: equal service");
  ob_fs_destroy(fs);

  /* Costs above a small fixed quantum: fast-forward keeps it cheap. */
  fs = mk(OB_FS_WEIGHTED, 0, 0, 1);
  p = ob_fs_pool_add(fs, "gpu", 1);
  g = ob_fs_group_add(fs, "all", 1);
  z = tenant(fs, "Z", g, 1, 0, 0), a = tenant(fs, "A", g, 1, 0, 0), b = tenant(fs, "B", g, 1, 0, 0);
  submit(fs, &blk, p, z, 1, 0, 0);
  for (int i = 0; i < 20; i++) submit(fs, &ra[i], p, a, 1000000, 0, 0);
  for (int i = 0; i < 20; i++) submit(fs, &rb[i], p, b, 500000, 0, 0);
  uint64_t w0 = ob_fs_work(fs);
  sequence(fs, &blk, 12, NULL, seq);
  TAP_EQ_STR(seq, "BABBABBABBAB", "quantum 1, costs 1e6 vs 5e5: two B per A");
  TAP_CHECK(ob_fs_work(fs) - w0 < 200, "quantum far below the cost: laps are fast-forwarded (work %llu)",
            (unsigned long long)(ob_fs_work(fs) - w0));
  TAP_CHECK(consistent(fs), "quantum 1: consistent");
  ob_fs_destroy(fs);
}

/* ---------------------------------------------------------------- fast path, caps, verdicts */

static void test_fast_path(void) {
  ob_fs_t *fs = mk(OB_FS_HIERARCHICAL, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 2);
  ob_fs_group_id g = ob_fs_group_add(fs, "g", 1);
  ob_fs_tenant_id a = tenant(fs, "A", g, 1, 1, 0), b = tenant(fs, "B", g, 1, 0, 0), c = tenant(fs, "C", g, 1, 0, 0);
  ob_fs_req_t a1, a2, b1, c1, c2;
  TAP_EQ_INT(submit(fs, &a1, p, a, 1, 0, 0), OB_FS_GRANTED, "fast path: free slot, nothing queued");
  TAP_EQ_INT(submit(fs, &a2, p, a, 1, 0, 0), OB_FS_QUEUED, "tenant at max_inflight 1 queues although a slot is free");
  TAP_CHECK(ob_fs_next_grant(fs, 0) == NULL, "nothing grantable while the tenant is at its cap");
  TAP_EQ_INT(submit(fs, &b1, p, b, 1, 0, 0), OB_FS_GRANTED,
             "another tenant takes the free slot: the queued request could not use it");
  TAP_EQ_INT(submit(fs, &c1, p, c, 1, 0, 0), OB_FS_QUEUED, "pool full: queued");
  ob_fs_pool_stats_t ps;
  ob_fs_pool_stats(fs, p, &ps);
  TAP_EQ_INT(ps.inflight, 2, "pool inflight 2");
  TAP_EQ_INT(ps.queued, 2, "pool queued 2");
  TAP_EQ_STR(ps.name, "gpu", "pool name copied");
  ob_fs_release(fs, &b1, 1, 0);
  ob_fs_req_t *r = ob_fs_next_grant(fs, 0);
  TAP_CHECK(r == &c1, "slot freed by B goes to C (A still at its cap)");
  TAP_CHECK(ob_fs_next_grant(fs, 0) == NULL, "then nothing");
  ob_fs_release(fs, &a1, 1, 0);
  TAP_CHECK(ob_fs_next_grant(fs, 0) == &a2, "A's release makes its queued request runnable");
  /* Raising a cap makes a queued request runnable: a submit then queues
   * behind it instead of taking the slot. */
  ob_fs_pool_set(fs, p, 3);
  ob_fs_tenant_params_t tp = {g, 1, 1, 0};
  ob_fs_req_t a3;
  TAP_EQ_INT(submit(fs, &a3, p, a, 1, 0, 0), OB_FS_QUEUED, "A at cap again");
  tp.max_inflight = 2;
  ob_fs_tenant_set(fs, a, &tp);
  TAP_EQ_INT(submit(fs, &c2, p, c, 1, 0, 0), OB_FS_QUEUED, "C queues behind A's now-runnable request");
  TAP_CHECK(ob_fs_next_grant(fs, 0) == &a3, "raised cap: A's request first");
  TAP_CHECK(ob_fs_next_grant(fs, 0) == NULL, "pool of 3 full");
  TAP_CHECK(consistent(fs), "fast path: consistent");
  ob_fs_destroy(fs);
}

static void test_global_cap_and_pools(void) {
  ob_fs_t *fs = mk(OB_FS_HIERARCHICAL, 2, 0, 0);
  ob_fs_group_id g = ob_fs_group_add(fs, "g", 1);
  ob_fs_tenant_id a = tenant(fs, "A", g, 1, 0, 0);
  ob_fs_pool_id p1 = ob_fs_pool_add(fs, "p1", 1); /* added after the tenant */
  ob_fs_pool_id p2 = ob_fs_pool_add(fs, "p2", 5);
  ob_fs_tenant_id b = tenant(fs, "B", g, 1, 0, 0);
  TAP_EQ_INT(ob_fs_num_pools(fs), 2, "two pools");
  ob_fs_req_t r1[4], r2[4];
  TAP_EQ_INT(submit(fs, &r1[0], p1, a, 1, 0, 0), OB_FS_GRANTED, "p1 slot");
  TAP_EQ_INT(submit(fs, &r1[1], p1, b, 1, 0, 0), OB_FS_QUEUED, "p1 full");
  TAP_EQ_INT(submit(fs, &r2[0], p2, b, 1, 0, 0), OB_FS_GRANTED, "a full pool does not block another");
  TAP_EQ_INT(submit(fs, &r2[1], p2, a, 1, 0, 0), OB_FS_QUEUED, "global max_inflight 2 reached");
  submit(fs, &r2[2], p2, a, 1, 0, 0);
  TAP_EQ_INT(ob_fs_inflight(fs), 2, "global inflight 2");
  TAP_CHECK(ob_fs_next_grant(fs, 0) == NULL, "global cap: no grant");
  ob_fs_release(fs, &r1[0], 1, 0);
  ob_fs_req_t *x = ob_fs_next_grant(fs, 0);
  ob_fs_release(fs, x, 1, 0);
  ob_fs_req_t *y = ob_fs_next_grant(fs, 0);
  TAP_CHECK(x && y && x->pool != y->pool, "with the global cap binding, pools take turns");
  TAP_CHECK(ob_fs_next_grant(fs, 0) == NULL, "global cap again");
  TAP_CHECK(ob_fs_inflight(fs) <= 2, "global cap never exceeded");
  TAP_CHECK(consistent(fs), "pools: consistent");
  ob_fs_destroy(fs);
}

static void test_max_queue(void) {
  ob_fs_t *fs = mk(OB_FS_WEIGHTED, 0, 3, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g = ob_fs_group_add(fs, "g", 1);
  ob_fs_tenant_id a = tenant(fs, "A", g, 1, 0, 2), b = tenant(fs, "B", g, 1, 0, 0);
  ob_fs_req_t r[8];
  submit(fs, &r[0], p, a, 1, 0, 0);
  TAP_EQ_INT(submit(fs, &r[1], p, a, 1, 0, 0), OB_FS_QUEUED, "A queued 1");
  TAP_EQ_INT(submit(fs, &r[2], p, a, 1, 0, 0), OB_FS_QUEUED, "A queued 2");
  TAP_EQ_INT(submit(fs, &r[3], p, a, 1, 0, 0), OB_FS_TENANT_QUEUE_FULL, "A's max_queue 2: refused");
  TAP_EQ_INT(r[3].state, OB_FS_ST_IDLE, "a refused request stays unlinked");
  ob_fs_cancel(fs, &r[3]);
  TAP_EQ_INT(ob_fs_queued(fs), 2, "cancelling a refused request changes nothing");
  TAP_EQ_INT(submit(fs, &r[4], p, b, 1, 0, 0), OB_FS_QUEUED, "B queued (3 in all)");
  TAP_EQ_INT(submit(fs, &r[5], p, b, 1, 0, 0), OB_FS_QUEUE_FULL, "global max_queue 3: refused");
  TAP_EQ_INT(submit(fs, &r[6], p, a, 1, 0, 0), OB_FS_TENANT_QUEUE_FULL, "both full: the tenant's limit is reported");
  ob_fs_req_t bogus;
  TAP_EQ_INT(submit(fs, &bogus, 7, a, 1, 0, 0), OB_FS_QUEUE_FULL, "unknown pool refused");
  TAP_EQ_INT(submit(fs, &bogus, p, 99, 1, 0, 0), OB_FS_QUEUE_FULL, "unknown tenant refused");
  TAP_CHECK(consistent(fs), "max_queue: consistent");
  ob_fs_destroy(fs);
}

static void test_cancel_and_misuse(void) {
  ob_fs_t *fs = mk(OB_FS_HIERARCHICAL, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g = ob_fs_group_add(fs, "g", 1);
  ob_fs_tenant_id a = tenant(fs, "A", g, 1, 0, 0), b = tenant(fs, "B", g, 1, 0, 0);
  ob_fs_req_t blk, r[4];
  submit(fs, &blk, p, a, 1, 0, 0);
  submit(fs, &r[0], p, a, 1, 500, 0);
  submit(fs, &r[1], p, b, 1, 0, 0);
  submit(fs, &r[2], p, a, 1, 0, 0);
  ob_fs_cancel(fs, &r[0]);
  TAP_EQ_INT(ob_fs_queued(fs), 2, "cancel takes the request out");
  TAP_EQ_INT(ob_fs_next_deadline(fs), 0, "and out of the deadline heap");
  ob_fs_cancel(fs, &r[0]);
  TAP_EQ_INT(ob_fs_queued(fs), 2, "second cancel is a no-op");
  TAP_EQ_INT(ob_fs_submit(fs, &r[1], 0), OB_FS_QUEUED, "submitting a queued request again changes nothing");
  TAP_EQ_INT(ob_fs_queued(fs), 2, "still 2 queued");
  ob_fs_release(fs, &r[1], 1, 0);
  TAP_EQ_INT(ob_fs_inflight(fs), 1, "releasing a queued request is ignored");
  ob_fs_cancel(fs, &blk);
  TAP_EQ_INT(ob_fs_inflight(fs), 1, "cancelling a granted request is ignored");
  ob_fs_release(fs, &blk, 1, 0);
  ob_fs_release(fs, &blk, 1, 0);
  TAP_EQ_INT(ob_fs_inflight(fs), 0, "double release counted once");
  ob_fs_req_t *x = ob_fs_next_grant(fs, 0);
  TAP_CHECK(x == &r[2] || x == &r[1], "cancelled request never granted");
  ob_fs_release(fs, x, 1, 0);
  ob_fs_req_t *y = ob_fs_next_grant(fs, 0);
  TAP_CHECK(y && y != x && y != &r[0], "the other queued one follows");
  TAP_CHECK(ob_fs_next_grant(fs, 0) == NULL, "and nothing else");
  TAP_CHECK(consistent(fs), "cancel: consistent");
  ob_fs_destroy(fs);
  ob_fs_destroy(NULL);
}

static void test_expiry(void) {
  ob_fs_t *fs = mk(OB_FS_HIERARCHICAL, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g = ob_fs_group_add(fs, "g", 1);
  ob_fs_tenant_id a = tenant(fs, "A", g, 1, 0, 0), b = tenant(fs, "B", g, 1, 0, 0);
  ob_fs_req_t blk, r[6];
  submit(fs, &blk, p, a, 1, 50, 0); /* granted: its deadline no longer matters */
  submit(fs, &r[0], p, a, 1, 300, 0);
  submit(fs, &r[1], p, b, 1, 100, 0);
  submit(fs, &r[2], p, a, 1, 0, 0);
  submit(fs, &r[3], p, b, 1, 200, 0);
  submit(fs, &r[4], p, a, 1, 100, 0);
  TAP_EQ_INT(ob_fs_next_deadline(fs), 100, "earliest deadline of queued requests");
  TAP_CHECK(ob_fs_next_expired(fs, 99) == NULL, "nothing expired before it");
  TAP_CHECK(ob_fs_next_expired(fs, 150) == &r[1], "expired: deadline 100, earlier arrival first");
  TAP_CHECK(ob_fs_next_expired(fs, 150) == &r[4], "expired: the other deadline 100");
  TAP_CHECK(ob_fs_next_expired(fs, 150) == NULL, "then none");
  TAP_EQ_INT(ob_fs_next_deadline(fs), 200, "next deadline 200");
  TAP_CHECK(ob_fs_next_expired(fs, 1000) == &r[3], "deadline 200");
  TAP_CHECK(ob_fs_next_expired(fs, 1000) == &r[0], "deadline 300");
  TAP_CHECK(ob_fs_next_expired(fs, 1000) == NULL, "no deadline never expires");
  TAP_EQ_INT(ob_fs_next_deadline(fs), 0, "no deadline left");
  TAP_EQ_INT(ob_fs_queued(fs), 1, "one left queued");
  ob_fs_release(fs, &blk, 1, 0);
  TAP_CHECK(ob_fs_next_grant(fs, 0) == &r[2], "the survivor is granted");
  TAP_EQ_INT(submit(fs, &r[5], p, b, 1, 10, 0), OB_FS_QUEUED, "queued with a deadline");
  TAP_CHECK(ob_fs_next_grant(fs, 0) == NULL, "pool full");
  ob_fs_release(fs, &r[2], 1, 0);
  TAP_CHECK(ob_fs_next_grant(fs, 20) == &r[5], "granted before anyone expired it");
  TAP_CHECK(ob_fs_next_expired(fs, 20) == NULL, "a granted request does not expire");
  TAP_CHECK(consistent(fs), "expiry: consistent");
  ob_fs_destroy(fs);
}

/* ---------------------------------------------------------------- cost correction, idle credit */

static uint64_t double_for_a(const ob_fs_t *fs, const ob_fs_req_t *r) {
  return letter(fs, r) == 'A' ? r->cost * 2 : r->cost;
}

static uint64_t huge_for_a(const ob_fs_t *fs, const ob_fs_req_t *r) {
  return letter(fs, r) == 'A' ? r->cost * 1000 : r->cost;
}

static uint64_t cheap_for_a(const ob_fs_t *fs, const ob_fs_req_t *r) { return letter(fs, r) == 'A' ? 1 : r->cost; }

static ob_fs_t *two_backlogged(ob_fs_mode_t mode, uint64_t quantum, uint64_t cost, ob_fs_req_t *blk,
                               ob_fs_req_t (*r)[60], ob_fs_tenant_id *ids) {
  ob_fs_t *fs = mk(mode, 0, 0, quantum);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id ga = ob_fs_group_add(fs, "ga", 1), gb = ob_fs_group_add(fs, "gb", 1);
  ob_fs_tenant_id z = tenant(fs, "Z", gb, 1, 0, 0);
  ids[0] = tenant(fs, "A", ga, 1, 0, 0);
  ids[1] = tenant(fs, "B", gb, 1, 0, 0);
  submit(fs, blk, p, z, 1, 0, 0);
  for (int i = 0; i < 60; i++) {
    submit(fs, &r[0][i], p, ids[0], cost, 0, 0);
    submit(fs, &r[1][i], p, ids[1], cost, 0, 0);
  }
  return fs;
}

static void test_cost_correction(void) {
  ob_fs_req_t blk, r[2][60];
  ob_fs_tenant_id ids[2];
  char seq[128];
  ob_fs_t *fs = two_backlogged(OB_FS_WEIGHTED, 10, 10, &blk, r, ids);
  sequence(fs, &blk, 30, double_for_a, seq);
  TAP_EQ_STR(seq, "ABBABBABBABBABBABBABBABBABBABB", "A costs twice its estimate: it gets one grant in three");
  ob_fs_tenant_stats_t s;
  ob_fs_tenant_stats(fs, ids[0], &s);
  TAP_EQ_INT(s.service, 10 * 20, "A's service is its actual cost (10 grants x 20)");
  ob_fs_destroy(fs);

  fs = two_backlogged(OB_FS_WEIGHTED, 10, 10, &blk, r, ids);
  sequence(fs, &blk, 30, huge_for_a, seq);
  TAP_EQ_INT(count_char(seq, 'A'), 10, "A costs 1000x its estimate: debt clamped at one round, still 1 in 3");
  ob_fs_tenant_stats(fs, ids[0], &s);
  TAP_CHECK(s.deficit >= -10, "A's deficit never below -quantum*weight (%lld)", (long long)s.deficit);
  ob_fs_destroy(fs);

  /* The same in hierarchical mode, where the group is charged too. */
  fs = two_backlogged(OB_FS_HIERARCHICAL, 10, 10, &blk, r, ids);
  sequence(fs, &blk, 30, double_for_a, seq);
  TAP_EQ_STR(seq, "ABBABBABBABBABBABBABBABBABBABB", "hierarchical: group and tenant both charged the difference");
  ob_fs_group_stats_t gs;
  ob_fs_group_stats(fs, 0, &gs);
  TAP_EQ_INT(gs.service, 200, "group service is actual cost");
  ob_fs_destroy(fs);

  /* Cheaper than estimated: credited, so A gets more grants. */
  fs = two_backlogged(OB_FS_WEIGHTED, 10, 10, &blk, r, ids);
  sequence(fs, &blk, 30, cheap_for_a, seq);
  TAP_CHECK(count_char(seq, 'A') > 15, "A costing less than estimated is credited: %d of 30", count_char(seq, 'A'));
  ob_fs_destroy(fs);

  /* Debt of a tenant that is not backlogged is carried, at most one round. */
  fs = mk(OB_FS_WEIGHTED, 0, 0, 10);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g = ob_fs_group_add(fs, "g", 1);
  ob_fs_tenant_id a = tenant(fs, "A", g, 1, 0, 0), b = tenant(fs, "B", g, 1, 0, 0);
  ob_fs_req_t x;
  submit(fs, &x, p, a, 10, 0, 0);
  ob_fs_release(fs, &x, 10000, 0);
  ob_fs_tenant_stats(fs, a, &s);
  TAP_EQ_INT(s.deficit, -10, "idle tenant's debt carried, clamped at one round");
  ob_fs_req_t rr[2][10];
  submit(fs, &x, p, b, 10, 0, 0); /* blocker */
  for (int i = 0; i < 10; i++) {
    submit(fs, &rr[0][i], p, a, 10, 0, 0);
    submit(fs, &rr[1][i], p, b, 10, 0, 0);
  }
  sequence(fs, &x, 6, NULL, seq);
  TAP_EQ_STR(seq, "BABABA", "returning with a debt: its first turn only pays it off, then alternation");
  ob_fs_destroy(fs);
}

static void test_idle_no_credit(void) {
  ob_fs_t *fs = mk(OB_FS_WEIGHTED, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g = ob_fs_group_add(fs, "g", 1);
  ob_fs_tenant_id a = tenant(fs, "A", g, 1, 0, 0), b = tenant(fs, "B", g, 1, 0, 0);
  static ob_fs_req_t ra[1100], rb[100];
  submit(fs, &ra[0], p, a, 1, 0, 0);
  for (int i = 1; i < 1100; i++) submit(fs, &ra[i], p, a, 1, 0, 0);
  char seq[1200];
  sequence(fs, &ra[0], 1000, NULL, seq);
  TAP_EQ_INT(count_char(seq, 'A'), 1000, "A alone for 1000 grants");
  ob_fs_tenant_stats_t s;
  ob_fs_tenant_stats(fs, b, &s);
  TAP_EQ_INT(s.deficit, 0, "idle B holds no credit");
  /* The pool is full again with A's last grant outstanding; B arrives. */
  ob_fs_req_t *held = ob_fs_next_grant(fs, 0);
  for (int i = 0; i < 100; i++) submit(fs, &rb[i], p, b, 1, 0, 0);
  sequence(fs, held, 20, NULL, seq);
  int max_run = 0, run = 0;
  for (int i = 0; seq[i]; i++) {
    run = seq[i] == 'B' ? run + 1 : 0;
    if (run > max_run) max_run = run;
  }
  TAP_CHECK(max_run <= 1, "B returning after a long idle time gets no burst (longest B run %d in %s)", max_run, seq);
  TAP_EQ_INT(count_char(seq, 'B'), 10, "and then its fair half");
  ob_fs_destroy(fs);
}

/* A light tenant that sat out a round is next in line after the current
 * turn, ahead of members that were waiting: its wait does not grow with the
 * heavy tenants' backlog. Re-arriving at once to jump the ring does not work:
 * back within the round, it queues behind everyone, as in plain DRR. */
static void test_light_tenant_next_in_line(void) {
  ob_fs_t *fs = mk(OB_FS_WEIGHTED, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g = ob_fs_group_add(fs, "g", 1);
  ob_fs_tenant_id h = tenant(fs, "H", g, 3, 0, 0), m = tenant(fs, "M", g, 1, 0, 0);
  ob_fs_tenant_id l = tenant(fs, "L", g, 1, 0, 0), z = tenant(fs, "Z", g, 1, 0, 0);
  static ob_fs_req_t blk, rh[200], rm[200], rl[200];
  submit(fs, &blk, p, z, 1, 0, 0);
  for (int i = 0; i < 200; i++) {
    submit(fs, &rh[i], p, h, 1, 0, 0);
    submit(fs, &rm[i], p, m, 1, 0, 0);
  }
  char seq[256];
  sequence(fs, &blk, 4, NULL, seq);
  TAP_EQ_STR(seq, "HHHM", "weights 3:1: H's turn, then M's");
  ob_fs_req_t *held = ob_fs_next_grant(fs, 0);
  TAP_CHECK(held && letter(fs, held) == 'H', "H's turn again");
  submit(fs, &rl[0], p, l, 1, 0, 0);
  TAP_CHECK(consistent(fs), "consistent with a joiner next in line");
  sequence(fs, held, 6, NULL, seq);
  TAP_EQ_STR(seq, "HHLMHH", "L arriving in H's turn goes right after it, before M");

  /* L re-submits the moment each request is granted: it is never idle for
   * a round, so it gets its weight's share (1 of 5), not every other turn. */
  int nl = 0, next = 1;
  submit(fs, &rl[next++], p, l, 1, 0, 0);
  ob_fs_req_t *r = ob_fs_next_grant(fs, 0);
  if (r && r->tenant == l) submit(fs, &rl[next++], p, l, 1, 0, 0);
  for (int i = 0; i < 100 && r; i++) {
    if (r->tenant == l) nl++;
    ob_fs_release(fs, r, 1, 0);
    r = ob_fs_next_grant(fs, 0);
    if (r && r->tenant == l && next < 200) submit(fs, &rl[next++], p, l, 1, 0, 0);
  }
  TAP_CHECK(nl >= 19 && nl <= 21, "re-arriving at once, L gets its 1/5 share: %d of 100", nl);
  TAP_CHECK(consistent(fs), "consistent after the re-arrival loop");
  ob_fs_destroy(fs);
}

/* ---------------------------------------------------------------- modes and run-time changes */

static void test_fifo_mode(void) {
  ob_fs_t *fs = mk(OB_FS_FIFO, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g1 = ob_fs_group_add(fs, "g1", 100), g2 = ob_fs_group_add(fs, "g2", 1);
  ob_fs_tenant_id a = tenant(fs, "A", g1, 50, 0, 0), b = tenant(fs, "B", g2, 1, 1, 0);
  ob_fs_tenant_id z = tenant(fs, "Z", g2, 1, 0, 0);
  const char *order = "ABBABAAB";
  ob_fs_req_t blk, r[8];
  submit(fs, &blk, p, z, 1, 0, 0);
  for (int i = 0; i < 8; i++) submit(fs, &r[i], p, order[i] == 'A' ? a : b, 1, 0, (uint64_t)i);
  char seq[16];
  sequence(fs, &blk, 8, NULL, seq);
  TAP_EQ_STR(seq, order, "FIFO mode: arrival order whatever the weights");
  ob_fs_destroy(fs);

  /* A tenant at its cap is skipped but keeps its place. */
  fs = mk(OB_FS_FIFO, 0, 0, 0);
  p = ob_fs_pool_add(fs, "gpu", 3);
  g1 = ob_fs_group_add(fs, "g", 1);
  a = tenant(fs, "A", g1, 1, 1, 0), b = tenant(fs, "B", g1, 1, 0, 0);
  ob_fs_req_t a1, a2, b1, b2, x;
  submit(fs, &x, p, b, 1, 0, 0);
  TAP_EQ_INT(ob_fs_submit(fs, &x, 0), OB_FS_GRANTED, "submitting a granted request again changes nothing");
  submit(fs, &a1, p, a, 1, 0, 0);
  ob_fs_req_t y;
  submit(fs, &y, p, b, 1, 0, 0); /* pool full (3) */
  submit(fs, &a2, p, a, 1, 0, 0);
  submit(fs, &b1, p, b, 1, 0, 0);
  submit(fs, &b2, p, b, 1, 0, 0);
  TAP_EQ_INT(ob_fs_inflight(fs), 3, "FIFO: 3 in flight");
  ob_fs_release(fs, &x, 1, 0);
  TAP_CHECK(ob_fs_next_grant(fs, 0) == &b1, "FIFO: A at its cap is skipped");
  ob_fs_release(fs, &a1, 1, 0);
  TAP_CHECK(ob_fs_next_grant(fs, 0) == &a2, "FIFO: A's request kept its place");
  TAP_CHECK(consistent(fs), "FIFO: consistent");
  ob_fs_destroy(fs);
}

static void test_weighted_ignores_groups(void) {
  ob_fs_t *fs = mk(OB_FS_WEIGHTED, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g1 = ob_fs_group_add(fs, "big", 10), g2 = ob_fs_group_add(fs, "small", 1);
  ob_fs_tenant_id z = tenant(fs, "Z", g2, 1, 0, 0), a = tenant(fs, "A", g1, 1, 0, 0), b = tenant(fs, "B", g2, 1, 0, 0);
  ob_fs_tenant_id c = tenant(fs, "C", g2, 1, 0, 0);
  ob_fs_req_t blk, r[3][20];
  submit(fs, &blk, p, z, 1, 0, 0);
  for (int i = 0; i < 20; i++) {
    submit(fs, &r[0][i], p, a, 1, 0, 0);
    submit(fs, &r[1][i], p, b, 1, 0, 0);
    submit(fs, &r[2][i], p, c, 1, 0, 0);
  }
  char seq[64];
  sequence(fs, &blk, 9, NULL, seq);
  TAP_EQ_STR(seq, "ABCABCABC", "weighted mode: group weights 10:1 ignored, tenants equal");
  ob_fs_params_t hp = {OB_FS_HIERARCHICAL, 0, 0, 0};
  ob_fs_set_params(fs, &hp);
  TAP_CHECK(consistent(fs), "switch to hierarchical: consistent");
  ob_fs_req_t *held = ob_fs_next_grant(fs, 0);
  sequence(fs, held, 11, NULL, seq);
  TAP_EQ_INT(count_char(seq, 'A'), 10, "hierarchical: group weights 10:1 now count: A gets 10 of 11");
  ob_fs_destroy(fs);
}

static void test_weight_change(void) {
  ob_fs_t *fs = mk(OB_FS_WEIGHTED, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g = ob_fs_group_add(fs, "g", 1);
  ob_fs_tenant_id z = tenant(fs, "Z", g, 1, 0, 0), a = tenant(fs, "A", g, 1, 0, 0), b = tenant(fs, "B", g, 1, 0, 0);
  ob_fs_req_t blk, r[2][60];
  submit(fs, &blk, p, z, 1, 0, 0);
  for (int i = 0; i < 60; i++) {
    submit(fs, &r[0][i], p, a, 1, 0, 0);
    submit(fs, &r[1][i], p, b, 1, 0, 0);
  }
  char seq[64];
  sequence(fs, &blk, 20, NULL, seq);
  TAP_EQ_INT(count_char(seq, 'B'), 10, "1:1 before");
  ob_fs_tenant_params_t tp = {g, 3, 0, 0};
  ob_fs_tenant_set(fs, b, &tp);
  ob_fs_tenant_stats_t s;
  ob_fs_tenant_stats(fs, b, &s);
  TAP_EQ_INT(s.weight, 3, "new weight visible in stats");
  ob_fs_req_t *held = ob_fs_next_grant(fs, 0);
  sequence(fs, held, 40, NULL, seq);
  TAP_CHECK(count_char(seq, 'B') >= 29 && count_char(seq, 'B') <= 31, "1:3 after the change (%d of 40 B)",
            count_char(seq, 'B'));
  TAP_CHECK(consistent(fs), "weight change: consistent");
  ob_fs_destroy(fs);

  /* Group weight change. */
  fs = mk(OB_FS_HIERARCHICAL, 0, 0, 0);
  p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g1 = ob_fs_group_add(fs, "g1", 1), g2 = ob_fs_group_add(fs, "g2", 1);
  z = tenant(fs, "Z", g1, 1, 0, 0), a = tenant(fs, "A", g1, 1, 0, 0), b = tenant(fs, "B", g2, 1, 0, 0);
  submit(fs, &blk, p, z, 1, 0, 0);
  for (int i = 0; i < 60; i++) {
    submit(fs, &r[0][i], p, a, 1, 0, 0);
    submit(fs, &r[1][i], p, b, 1, 0, 0);
  }
  ob_fs_group_set(fs, g2, 4);
  sequence(fs, &blk, 50, NULL, seq);
  TAP_CHECK(count_char(seq, 'B') >= 39 && count_char(seq, 'B') <= 41, "group weights 1:4 (%d of 50 B)",
            count_char(seq, 'B'));
  ob_fs_group_stats_t gs;
  ob_fs_group_stats(fs, g2, &gs);
  TAP_EQ_INT(gs.weight, 4, "group weight in stats");
  TAP_EQ_STR(gs.name, "g2", "group name");
  ob_fs_destroy(fs);
}

static void test_group_move(void) {
  ob_fs_t *fs = mk(OB_FS_HIERARCHICAL, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_pool_id p2 = ob_fs_pool_add(fs, "gpu2", 0);
  ob_fs_group_id g1 = ob_fs_group_add(fs, "g1", 1), g2 = ob_fs_group_add(fs, "g2", 1);
  ob_fs_tenant_id a = tenant(fs, "A", g1, 1, 0, 0), b = tenant(fs, "B", g1, 1, 0, 0);
  ob_fs_req_t blk, r[2][10], extra;
  submit(fs, &blk, p, a, 1, 0, 0);
  for (int i = 0; i < 10; i++) {
    submit(fs, &r[0][i], p, a, 1, 0, 0);
    submit(fs, &r[1][i], p, b, 1, 0, 0);
  }
  submit(fs, &extra, p2, a, 1, 0, 0);
  ob_fs_tenant_params_t tp = {g2, 1, 0, 0};
  ob_fs_tenant_set(fs, a, &tp);
  ob_fs_group_stats_t s1, s2;
  ob_fs_group_stats(fs, g1, &s1);
  ob_fs_group_stats(fs, g2, &s2);
  TAP_EQ_INT(s1.queued, 10, "old group keeps only B's backlog");
  TAP_EQ_INT(s2.queued, 10, "A's backlog moved with it");
  TAP_EQ_INT(s2.inflight, 2, "A's in-flight requests counted in its new group");
  TAP_EQ_INT(s1.inflight, 0, "and no longer in the old one");
  TAP_CHECK(consistent(fs), "group move: consistent");
  ob_fs_group_set(fs, g2, 3);
  char seq[32];
  sequence(fs, &blk, 8, NULL, seq);
  TAP_EQ_INT(count_char(seq, 'A'), 6, "A now served at its new group's weight 3:1");
  ob_fs_release(fs, &extra, 1, 0);
  TAP_CHECK(consistent(fs), "group move: consistent after grants");
  ob_fs_destroy(fs);
}

static void test_mode_change(void) {
  ob_fs_t *fs = mk(OB_FS_HIERARCHICAL, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g1 = ob_fs_group_add(fs, "g1", 5), g2 = ob_fs_group_add(fs, "g2", 1);
  ob_fs_tenant_id a = tenant(fs, "A", g1, 1, 0, 0), b = tenant(fs, "B", g2, 1, 0, 0);
  ob_fs_tenant_id c = tenant(fs, "C", g2, 3, 0, 0);
  const char *order = "CBBACABCCBAB";
  ob_fs_req_t blk, r[12];
  submit(fs, &blk, p, a, 1, 0, 0);
  for (int i = 0; i < 12; i++)
    submit(fs, &r[i], p, order[i] == 'A' ? a : order[i] == 'B' ? b : c, 1, (uint64_t)(1000 + i), 10);
  ob_fs_params_t fp = {OB_FS_FIFO, 0, 0, 0};
  ob_fs_set_params(fs, &fp);
  TAP_CHECK(consistent(fs), "hierarchical -> FIFO: consistent");
  TAP_EQ_INT(ob_fs_queued(fs), 12, "nothing lost by the mode change");
  TAP_EQ_INT(ob_fs_next_deadline(fs), 1000, "deadlines kept");
  char seq[16];
  sequence(fs, &blk, 4, NULL, seq);
  TAP_EQ_STR(seq, "CBBA", "re-queued in arrival order");
  ob_fs_req_t *held = ob_fs_next_grant(fs, 0);
  ob_fs_params_t wp = {OB_FS_WEIGHTED, 0, 0, 0};
  ob_fs_set_params(fs, &wp);
  TAP_CHECK(consistent(fs), "FIFO -> weighted: consistent");
  ob_fs_set_params(fs, &fp);
  TAP_CHECK(consistent(fs), "weighted -> FIFO: consistent");
  sequence(fs, held, 7, NULL, seq);
  TAP_EQ_STR(seq, "ABCCBAB", "the rest still in arrival order after two more switches");
  TAP_EQ_INT(ob_fs_queued(fs), 0, "all granted");
  ob_fs_destroy(fs);
}

/* ---------------------------------------------------------------- Retry-After */

static void test_retry_after(void) {
  ob_fs_t *fs = mk(OB_FS_WEIGHTED, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1);
  ob_fs_group_id g = ob_fs_group_add(fs, "g", 1);
  ob_fs_tenant_id a = tenant(fs, "A", g, 1, 0, 0), b = tenant(fs, "B", g, 1, 0, 0);
  TAP_EQ_INT(ob_fs_retry_after_ms(fs, p, a, 0), 1000, "nothing queued, no history: the minimum");
  static ob_fs_req_t ra[300], rb[320];
  submit(fs, &ra[0], p, a, 1, 0, 0);
  for (int i = 1; i <= 4; i++) submit(fs, &ra[i], p, a, 1, 0, 0);
  TAP_EQ_INT(ob_fs_retry_after_ms(fs, p, a, 0), 5000, "no history: 1000 ms per request ahead (4 queued + itself)");
  TAP_EQ_INT(ob_fs_retry_after_ms(fs, p, b, 0), 2000, "a tenant with nothing queued shares half the pool");
  for (int i = 0; i < 4; i++) submit(fs, &rb[i], p, b, 1, 0, 0);
  TAP_EQ_INT(ob_fs_retry_after_ms(fs, p, a, 0), 10000, "two equal tenants backlogged: half the drain each");
  for (int i = 5; i < 200; i++) submit(fs, &ra[i], p, a, 1, 0, 0);
  TAP_EQ_INT(ob_fs_retry_after_ms(fs, p, a, 0), 60000, "clamped at 60 s");
  TAP_EQ_INT(ob_fs_retry_after_ms(fs, 9, a, 0), 1000, "unknown pool: the minimum");
  /* Drain 10 requests a second for 30 s. */
  uint64_t now = 0;
  ob_fs_req_t *cur = &ra[0];
  for (int i = 0; i < 300 && cur; i++) {
    now += 100000;
    ob_fs_release(fs, cur, 1, now);
    cur = ob_fs_next_grant(fs, now);
    if (cur && cur->tenant == b) { /* keep B backlogged at 4 */
      ob_fs_req_t *nb = &rb[4 + i];
      submit(fs, nb, p, b, 1, 0, now);
    }
  }
  ob_fs_tenant_stats_t s;
  ob_fs_tenant_stats(fs, a, &s);
  uint64_t ms = ob_fs_retry_after_ms(fs, p, a, now);
  double expect = (double)(s.queued + 1) / (10.0 * 0.5) * 1000.0;
  TAP_CHECK(ms >= expect * 0.8 && ms <= expect * 1.25, "drain 10/s, half share: %llu ms, about %.0f",
            (unsigned long long)ms, expect);
  uint64_t later = ob_fs_retry_after_ms(fs, p, a, now + 20000000);
  TAP_CHECK(later > ms, "no releases for 20 s: the rate decays, the estimate grows (%llu)", (unsigned long long)later);
  ob_fs_destroy(fs);

  fs = mk(OB_FS_FIFO, 0, 0, 0);
  p = ob_fs_pool_add(fs, "gpu", 1);
  g = ob_fs_group_add(fs, "g", 1);
  a = tenant(fs, "A", g, 1, 0, 0), b = tenant(fs, "B", g, 1, 0, 0);
  submit(fs, &ra[0], p, a, 1, 0, 0);
  for (int i = 0; i < 2; i++) submit(fs, &ra[1 + i], p, a, 1, 0, 0);
  TAP_EQ_INT(ob_fs_retry_after_ms(fs, p, b, 0), 3000, "FIFO: everything queued in the pool is ahead");
  ob_fs_destroy(fs);
}

/* ---------------------------------------------------------------- buckets */

static void test_buckets(void) {
  ob_fs_bucket_t b;
  ob_fs_bucket_init(&b, 60, 0); /* one token a second */
  TAP_EQ_INT(ob_fs_bucket_remaining(&b, 0), 60, "starts full");
  TAP_CHECK(ob_fs_bucket_take(&b, 60, 0), "take the lot");
  TAP_CHECK(!ob_fs_bucket_take(&b, 1, 0), "empty: refused");
  TAP_EQ_INT(ob_fs_bucket_remaining(&b, 0), 0, "and nothing was taken by the refusal");
  TAP_EQ_INT(ob_fs_bucket_wait_ms(&b, 1, 0), 1000, "one token in 1000 ms");
  TAP_EQ_INT(ob_fs_bucket_wait_ms(&b, 5, 500000), 4500, "five tokens: 4.5 s after half a second");
  TAP_CHECK(!ob_fs_bucket_take(&b, 1, 999999), "refill is continuous: not yet at 999999 us");
  TAP_CHECK(ob_fs_bucket_take(&b, 1, 1000000), "one token after 1 s");
  TAP_EQ_INT(ob_fs_bucket_full_ms(&b, 1000000), 60000, "full again in 60 s");
  ob_fs_bucket_adjust(&b, -30, 1000000);
  TAP_EQ_INT(ob_fs_bucket_remaining(&b, 1000000), 0, "negative level reads as 0");
  TAP_EQ_INT(ob_fs_bucket_wait_ms(&b, 1, 1000000), 31000, "negative: wait to climb back");
  TAP_EQ_INT(ob_fs_bucket_full_ms(&b, 1000000), 90000, "full in 90 s from -30");
  ob_fs_bucket_adjust(&b, 1000, 1000000);
  TAP_EQ_INT(ob_fs_bucket_remaining(&b, 1000000), 60, "adjust up is capped at the capacity");
  TAP_EQ_INT(ob_fs_bucket_remaining(&b, 999000000), 60, "never above the capacity");
  TAP_EQ_INT(ob_fs_bucket_wait_ms(&b, 1000, 999000000), 0, "asking above the capacity: a full bucket is enough");
  TAP_CHECK(ob_fs_bucket_take(&b, 10, 500), "time going backwards refills nothing, takes fine");
  ob_fs_bucket_t u;
  ob_fs_bucket_init(&u, 0, 0);
  TAP_CHECK(ob_fs_bucket_take(&u, 1000000, 0), "per_minute 0: unlimited");
  TAP_EQ_INT(ob_fs_bucket_wait_ms(&u, 5, 0), 0, "unlimited: no wait");
  TAP_EQ_INT(ob_fs_bucket_full_ms(&u, 0), 0, "unlimited: always full");
  ob_fs_bucket_t t;
  ob_fs_bucket_init(&t, 90000, 0); /* tpm: 1.5 tokens per ms */
  TAP_CHECK(ob_fs_bucket_take(&t, 90000, 0), "tpm bucket drained");
  ob_fs_bucket_adjust(&t, -10000, 0);
  TAP_EQ_INT(ob_fs_bucket_wait_ms(&t, 3000, 0), 8667, "tpm: (10000 + 3000) / 1.5 per ms, rounded up");
  TAP_EQ_INT(ob_fs_bucket_remaining(&t, 10000000), 5000, "10 s later: 15000 - 10000");
  /* An awkward rate (7 per minute): waiting wait_ms is always enough, and
   * one millisecond less is not. */
  int enough = 0, tight = 0;
  for (uint64_t n = 1; n <= 7; n++) {
    ob_fs_bucket_t k;
    ob_fs_bucket_init(&k, 7, 123);
    ob_fs_bucket_adjust(&k, -7 - (int64_t)n, 123);
    uint64_t w = ob_fs_bucket_wait_ms(&k, n, 5000);
    ob_fs_bucket_t early = k;
    enough += ob_fs_bucket_take(&k, n, 5000 + w * 1000);
    tight += !ob_fs_bucket_take(&early, n, 5000 + (w - 1) * 1000);
  }
  TAP_EQ_INT(enough, 7, "after wait_ms the take succeeds");
  TAP_EQ_INT(tight, 7, "and wait_ms is not longer than needed");
}

/* ---------------------------------------------------------------- properties */

enum { S_IDLE, S_QUEUED, S_GRANTED };

typedef struct sim {
  ob_fs_t *fs;
  ob_fs_req_t *reqs;
  int *st;
  size_t n;
  uint32_t npools, ntenants;
  uint32_t pool_cap[4], tenant_cap[16], global_cap;
  int bad;
  const char *why; /* the first failed check */
} sim_t;

#define SIM_FAIL(s, msg) ((s)->bad++ ? (void)0 : (void)((s)->why = (msg)))

static void sim_granted(sim_t *s, ob_fs_req_t *r) {
  size_t i = (size_t)(r - s->reqs);
  if (i >= s->n || s->st[i] == S_GRANTED) SIM_FAIL(s, "granted twice");
  s->st[i] = S_GRANTED;
  ob_fs_pool_stats_t ps;
  ob_fs_tenant_stats_t ts;
  ob_fs_pool_stats(s->fs, r->pool, &ps);
  ob_fs_tenant_stats(s->fs, r->tenant, &ts);
  if (ps.max_inflight && ps.inflight > ps.max_inflight) SIM_FAIL(s, "pool cap exceeded");
  if (s->tenant_cap[r->tenant] && ts.inflight > s->tenant_cap[r->tenant]) SIM_FAIL(s, "tenant cap exceeded");
  if (s->global_cap && ob_fs_inflight(s->fs) > s->global_cap) SIM_FAIL(s, "global cap exceeded");
}

/* Counts the scheduler reports must equal what the driver knows. */
static void sim_verify(sim_t *s) {
  uint32_t infl = 0, q = 0, tinfl[16] = {0}, tq[16] = {0}, pinfl[4] = {0}, pq[4] = {0};
  for (size_t i = 0; i < s->n; i++) {
    ob_fs_req_t *r = &s->reqs[i];
    if (s->st[i] == S_GRANTED) infl++, tinfl[r->tenant]++, pinfl[r->pool]++;
    if (s->st[i] == S_QUEUED) q++, tq[r->tenant]++, pq[r->pool]++;
  }
  if (infl != ob_fs_inflight(s->fs) || q != ob_fs_queued(s->fs)) SIM_FAIL(s, "global counts");
  for (uint32_t t = 0; t < s->ntenants; t++) {
    ob_fs_tenant_stats_t ts;
    ob_fs_tenant_stats(s->fs, t, &ts);
    if (ts.inflight != tinfl[t] || ts.queued != tq[t]) SIM_FAIL(s, "tenant counts");
  }
  for (uint32_t p = 0; p < s->npools; p++) {
    ob_fs_pool_stats_t ps;
    ob_fs_pool_stats(s->fs, p, &ps);
    if (ps.inflight != pinfl[p] || ps.queued != pq[p]) SIM_FAIL(s, "pool counts");
  }
  const char *why;
  if (!ob_fs_check(s->fs, &why)) SIM_FAIL(s, why);
}

static void test_random_properties(void) {
  int bad_runs = 0, stuck_runs = 0;
  enum { NREQ = 64 };
  for (uint64_t seed = 1; seed <= 300; seed++) {
    rng_state = seed * 0x9E3779B97F4A7C15ULL;
    ob_fs_req_t reqs[NREQ];
    int st[NREQ] = {0};
    memset(reqs, 0, sizeof reqs);
    sim_t s = {.reqs = reqs, .st = st, .n = NREQ};
    s.global_cap = rnd_below(4) ? rnd_below(8) : 0;
    s.fs = mk((ob_fs_mode_t)rnd_below(3), s.global_cap, rnd_below(3) ? 0 : 1 + rnd_below(20),
              rnd_below(2) ? 0 : 1 + rnd_below(50));
    s.npools = 1 + rnd_below(3);
    for (uint32_t p = 0; p < s.npools; p++) ob_fs_pool_add(s.fs, "p", s.pool_cap[p] = rnd_below(5));
    uint32_t ngroups = 1 + rnd_below(3);
    for (uint32_t g = 0; g < ngroups; g++) ob_fs_group_add(s.fs, "g", 1 + rnd_below(4));
    s.ntenants = 1 + rnd_below(8);
    for (uint32_t t = 0; t < s.ntenants; t++)
      tenant(s.fs, "t", rnd_below(ngroups), 1 + rnd_below(4), s.tenant_cap[t] = rnd_below(3), rnd_below(3) ? 0 : 3);
    uint64_t now = 1;
    for (int op = 0; op < 400; op++) {
      uint32_t k = rnd_below(100);
      size_t i = rnd_below(NREQ);
      ob_fs_req_t *r = &reqs[i];
      if (k < 40) {
        if (st[i] != S_IDLE) continue;
        req(r, rnd_below(s.npools), rnd_below(s.ntenants), 1 + rnd_below(rnd_below(4) ? 10 : 5000),
            rnd_below(3) ? 0 : now + rnd_below(1000));
        ob_fs_verdict_t v = ob_fs_submit(s.fs, r, now);
        if (v == OB_FS_GRANTED) sim_granted(&s, r);
        else if (v == OB_FS_QUEUED) st[i] = S_QUEUED;
      } else if (k < 65) {
        ob_fs_req_t *g;
        while ((g = ob_fs_next_grant(s.fs, now))) sim_granted(&s, g);
      } else if (k < 85) {
        if (st[i] != S_GRANTED) continue;
        ob_fs_release(s.fs, r, rnd_below(2) ? r->cost : rnd_below(10000), now);
        st[i] = S_IDLE;
      } else if (k < 90) {
        if (st[i] == S_QUEUED) st[i] = S_IDLE;
        ob_fs_cancel(s.fs, r);
      } else if (k < 95) {
        now += rnd_below(300);
        ob_fs_req_t *e;
        while ((e = ob_fs_next_expired(s.fs, now))) {
          size_t j = (size_t)(e - reqs);
          if (j >= NREQ || st[j] != S_QUEUED || e->deadline_us > now) SIM_FAIL(&s, "bad expiry");
          else st[j] = S_IDLE;
        }
      } else {
        uint32_t t = rnd_below(s.ntenants);
        ob_fs_tenant_params_t tp = {rnd_below(ngroups), 1 + rnd_below(4), rnd_below(3), 0};
        if (rnd_below(2)) {
          ob_fs_tenant_set(s.fs, t, &tp);
          s.tenant_cap[t] = tp.max_inflight;
        } else {
          ob_fs_params_t pp = {(ob_fs_mode_t)rnd_below(3), s.global_cap, 0, rnd_below(2) ? 0 : 1 + rnd_below(50)};
          ob_fs_set_params(s.fs, &pp);
        }
      }
      sim_verify(&s);
      if (s.bad) break;
    }
    /* Liveness: release everything granted, grant again, until the queues
     * are empty. Every queued request must come out. */
    int rounds = 0;
    while (ob_fs_queued(s.fs) && rounds++ < 1000) {
      for (size_t i = 0; i < NREQ; i++)
        if (st[i] == S_GRANTED) ob_fs_release(s.fs, &reqs[i], reqs[i].cost, now), st[i] = S_IDLE;
      ob_fs_req_t *g;
      while ((g = ob_fs_next_grant(s.fs, now))) sim_granted(&s, g);
      sim_verify(&s);
    }
    if (ob_fs_queued(s.fs)) stuck_runs++;
    if (s.bad) {
      if (!bad_runs) printf("#   first failing seed %llu: %s\n", (unsigned long long)seed, s.why);
      bad_runs++;
    }
    ob_fs_destroy(s.fs);
  }
  TAP_EQ_INT(bad_runs, 0, "300 random runs: caps never exceeded, counts match, invariants hold");
  TAP_EQ_INT(stuck_runs, 0, "300 random runs: every queued request granted, cancelled or expired");
}

/*
 * Fairness: tenants kept backlogged in one pool; after every grant the
 * normalized service (service / weight) of any two tenants differs by at
 * most quantum + max cost. In hierarchical mode the same holds for groups,
 * and for tenants within one group.
 */
static void fairness_run(ob_fs_mode_t mode, uint64_t seed, uint64_t quantum, uint64_t max_cost, double *worst_t,
                         double *worst_g, double *bound) {
  rng_state = seed;
  enum { NT = 6, NG = 3, DEPTH = 5 };
  ob_fs_t *fs = mk(mode, 0, 0, quantum);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", 1 + rnd_below(3));
  uint32_t gw[NG], tw[NT], tg[NT];
  for (int g = 0; g < NG; g++) ob_fs_group_add(fs, "g", gw[g] = 1 + rnd_below(5));
  for (int t = 0; t < NT; t++) tenant(fs, "t", tg[t] = (uint32_t)t % NG, tw[t] = 1 + rnd_below(5), 0, 0);
  static ob_fs_req_t reqs[NT * DEPTH + 8];
  static bool busy[NT * DEPTH + 8];
  memset(busy, 0, sizeof busy);
  /* Fill the slots with requests of an extra group/tenant that stays out. */
  ob_fs_group_id xg = ob_fs_group_add(fs, "x", 1);
  ob_fs_tenant_id xt = tenant(fs, "x", xg, 1, 0, 0);
  ob_fs_req_t fill[4];
  int nfill = 0;
  while (nfill < 4 && submit(fs, &fill[nfill], p, xt, max_cost, 0, 0) == OB_FS_GRANTED) nfill++;
  /* The automatic quantum is the largest cost seen: show it the largest now. */
  uint64_t base_t[NT] = {0};
  for (int t = 0; t < NT; t++)
    for (int d = 0; d < DEPTH; d++) {
      size_t i = (size_t)(t * DEPTH + d);
      submit(fs, &reqs[i], p, (ob_fs_tenant_id)t, d == 0 ? max_cost : 1 + rnd_below((uint32_t)max_cost), 0, 0);
      busy[i] = true;
    }
  for (int t = 0; t < NT; t++) {
    ob_fs_tenant_stats_t s;
    ob_fs_tenant_stats(fs, (ob_fs_tenant_id)t, &s);
    base_t[t] = s.service;
  }
  uint64_t q = quantum ? quantum : max_cost;
  *bound = (double)(q + max_cost);
  *worst_t = *worst_g = 0;
  ob_fs_req_t *inflight[4];
  int ninfl = 0;
  for (int f = 0; f < nfill; f++) inflight[ninfl++] = &fill[f];
  for (int step = 0; step < 3000; step++) {
    /* Release one in-flight request at random; resubmit for its tenant. */
    int k = (int)rnd_below((uint32_t)ninfl);
    ob_fs_req_t *r = inflight[k];
    inflight[k] = inflight[--ninfl];
    ob_fs_release(fs, r, r->cost, 0);
    if (r >= reqs && r < reqs + NT * DEPTH) {
      ob_fs_tenant_id t = r->tenant;
      submit(fs, r, p, t, 1 + rnd_below((uint32_t)max_cost), 0, 0);
    }
    ob_fs_req_t *g;
    while ((g = ob_fs_next_grant(fs, 0))) inflight[ninfl++] = g;
    double nt[NT], ng[NG] = {0};
    for (int t = 0; t < NT; t++) {
      ob_fs_tenant_stats_t s;
      ob_fs_tenant_stats(fs, (ob_fs_tenant_id)t, &s);
      nt[t] = (double)(s.service - base_t[t]) / tw[t];
      ng[tg[t]] += (double)(s.service - base_t[t]);
    }
    for (int a = 0; a < NT; a++)
      for (int b = 0; b < NT; b++) {
        if (mode == OB_FS_HIERARCHICAL && tg[a] != tg[b]) continue;
        if (nt[a] - nt[b] > *worst_t) *worst_t = nt[a] - nt[b];
      }
    if (mode == OB_FS_HIERARCHICAL)
      for (int a = 0; a < NG; a++)
        for (int b = 0; b < NG; b++)
          if (ng[a] / gw[a] - ng[b] / gw[b] > *worst_g) *worst_g = ng[a] / gw[a] - ng[b] / gw[b];
  }
  ob_fs_destroy(fs);
}

static void test_fairness_bounds(void) {
  int fails_w = 0, fails_ht = 0, fails_hg = 0;
  double worst_ratio = 0;
  for (uint64_t seed = 1; seed <= 40; seed++) {
    uint64_t quanta[3] = {0, 7, 500};
    for (int qi = 0; qi < 3; qi++) {
      double wt, wg, bound;
      uint64_t mc = seed % 2 ? 100 : 13;
      fairness_run(OB_FS_WEIGHTED, seed * 7919, quanta[qi], mc, &wt, &wg, &bound);
      if (wt > bound) fails_w++;
      if (wt / bound > worst_ratio) worst_ratio = wt / bound;
      fairness_run(OB_FS_HIERARCHICAL, seed * 104729, quanta[qi], mc, &wt, &wg, &bound);
      if (wt > bound) fails_ht++;
      if (wg > bound) fails_hg++;
    }
  }
  TAP_EQ_INT(fails_w, 0, "weighted: normalized service of backlogged tenants within quantum + max cost");
  TAP_EQ_INT(fails_ht, 0, "hierarchical: within each group, tenants within quantum + max cost");
  TAP_EQ_INT(fails_hg, 0, "hierarchical: groups within quantum + max cost");
  printf("# worst weighted spread / bound: %.4f\n", worst_ratio);
}

/* ---------------------------------------------------------------- scale */

static void test_scale(void) {
  enum { NT = 10000, NG = 10, SLOTS = 100, GRANTS = 100000 };
  ob_fs_t *fs = mk(OB_FS_HIERARCHICAL, 0, 0, 0);
  ob_fs_pool_id p = ob_fs_pool_add(fs, "gpu", SLOTS);
  for (int g = 0; g < NG; g++) ob_fs_group_add(fs, "g", 1 + (uint32_t)g % 3);
  rng_state = 42;
  for (int t = 0; t < NT; t++) tenant(fs, "t", (ob_fs_group_id)(t % NG), 1 + rnd_below(4), 0, 0);
  ob_fs_req_t *reqs = calloc(NT * 2 + SLOTS, sizeof *reqs);
  ob_fs_req_t **infl = calloc(SLOTS, sizeof *infl);
  size_t used = 0;
  int ninfl = 0;
  /* Fill the slots, then two queued requests per tenant. */
  for (int t = 0; t < NT * 2 + SLOTS; t++) {
    ob_fs_req_t *r = &reqs[used++];
    if (submit(fs, r, p, (ob_fs_tenant_id)(t % NT), 1 + rnd_below(100), 0, 0) == OB_FS_GRANTED) infl[ninfl++] = r;
  }
  TAP_EQ_INT(ob_fs_inflight(fs), SLOTS, "scale: slots full");
  TAP_EQ_INT(ob_fs_queued(fs), NT * 2, "scale: 20,000 queued over 10,000 tenants");
  clock_t c0 = clock();
  uint64_t w0 = ob_fs_work(fs);
  long grants = 0;
  while (grants < GRANTS) {
    int k = (int)rnd_below((uint32_t)ninfl);
    ob_fs_req_t *r = infl[k];
    infl[k] = infl[--ninfl];
    ob_fs_tenant_id t = r->tenant;
    ob_fs_release(fs, r, r->cost, 0);
    submit(fs, r, p, t, 1 + rnd_below(100), 0, 0); /* stays backlogged */
    ob_fs_req_t *g;
    while ((g = ob_fs_next_grant(fs, 0))) infl[ninfl++] = g, grants++;
  }
  double secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
  double per = (double)(ob_fs_work(fs) - w0) / GRANTS;
  TAP_CHECK(per < 12, "scale: %.2f loop iterations per grant (O(1) amortised)", per);
  TAP_CHECK(secs < 5.0, "scale: 100,000 grants over 10,000 backlogged tenants in %.3f s", secs);
  TAP_CHECK(consistent(fs), "scale: consistent");
  ob_fs_destroy(fs);
  free(reqs);
  free(infl);
}

static void test_names_and_defaults(void) {
  ob_fs_t *fs = ob_fs_create(NULL);
  ob_fs_tenant_id t = ob_fs_tenant_add(fs, "lonely", NULL);
  TAP_EQ_INT(ob_fs_num_groups(fs), 1, "a tenant without a known group lands in a default group");
  ob_fs_tenant_stats_t s;
  ob_fs_tenant_stats(fs, t, &s);
  TAP_EQ_STR(s.name, "lonely", "tenant name copied");
  TAP_EQ_INT(s.weight, 1, "default weight 1");
  ob_fs_tenant_stats(fs, 55, &s);
  TAP_CHECK(s.name == NULL && s.inflight == 0, "stats of an unknown tenant are zero");
  ob_fs_pool_id p = ob_fs_pool_add(fs, NULL, 0);
  ob_fs_req_t r[3];
  for (int i = 0; i < 3; i++) TAP_EQ_INT(submit(fs, &r[i], p, t, 0, 0, 0), OB_FS_GRANTED, "unlimited pool: fast path");
  ob_fs_tenant_stats(fs, t, &s);
  TAP_EQ_INT(s.service, 3, "cost 0 is charged as 1");
  TAP_EQ_INT(ob_fs_num_tenants(fs), 1, "one tenant");
  ob_fs_destroy(fs);
}

int main(void) {
  test_weighted_order();
  test_hierarchical_order();
  test_token_costs();
  test_fast_path();
  test_global_cap_and_pools();
  test_max_queue();
  test_cancel_and_misuse();
  test_expiry();
  test_cost_correction();
  test_idle_no_credit();
  test_light_tenant_next_in_line();
  test_fifo_mode();
  test_weighted_ignores_groups();
  test_weight_change();
  test_group_move();
  test_mode_change();
  test_retry_after();
  test_buckets();
  test_random_properties();
  test_fairness_bounds();
  test_scale();
  test_names_and_defaults();
  return tap_done();
}
