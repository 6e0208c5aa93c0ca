/*
 * fuzz_fairshare.c: the admission scheduler driven by an operation sequence.
 * The first four bytes choose the parameters (mode, global max_inflight,
 * max_queue, quantum); every following op is one byte plus its arguments:
 * add a pool / group / tenant, submit, grant, release with an actual cost,
 * cancel, advance time and expire, change params / tenant / group / pool,
 * and token-bucket ops (take / adjust / time) on a bucket of its own.
 * Requests come from a fixed array of structs whose state the driver tracks
 * itself. After every op the driver checks that the scheduler agrees with
 * it (in-flight and queued counts per tenant, per pool and in all), that no
 * grant ever exceeded a cap, and ob_fs_check's internal invariants (rings,
 * weight sums, deadline heap); any disagreement aborts. Time is a counter,
 * so a run is deterministic; everything is freed at the end.
 */
#include "fairshare.h"
#include "fairshare_int.h"

#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { NREQ = 48, MAXP = 4, MAXG = 4, MAXT = 8, S_IDLE = 0, S_QUEUED, S_GRANTED };

typedef struct drv {
  const uint8_t *d;
  size_t n, at;
  ob_fs_t *fs;
  ob_fs_req_t reqs[NREQ];
  int st[NREQ];
  uint32_t np, ng, nt;
  uint32_t global_cap, tenant_cap[MAXT];
  uint64_t now;
  ob_fs_bucket_t bucket; /* token bucket ops run on their own clock */
  uint64_t bucket_now;
} drv_t;

static uint8_t byte(drv_t *v) { return v->at < v->n ? v->d[v->at++] : 0; }

static uint32_t u16(drv_t *v) {
  uint32_t hi = byte(v);
  return hi << 8 | byte(v);
}

static void fail(const char *what) {
  fprintf(stderr, "fuzz_fairshare: %s\n", what);
  abort();
}

/* A cost: mostly small, sometimes huge (exercises the clamps). */
static uint64_t cost(drv_t *v) {
  uint8_t k = byte(v);
  if (k == 0xff) return UINT64_MAX;
  if (k == 0xfe) return 0;
  if (k >= 0xf0) return (uint64_t)u16(v) << 24;
  return 1 + (k & 0x7f) * (k & 0x80 ? 97 : 1);
}

static uint32_t weight(drv_t *v) {
  uint8_t k = byte(v);
  return k == 0xff ? UINT32_MAX : k == 0xfe ? 0u : 1u + k % 9u;
}

static void granted(drv_t *v, ob_fs_req_t *r) {
  size_t i = (size_t)(r - v->reqs);
  if (r < v->reqs || i >= NREQ) fail("grant of an unknown request");
  if (v->st[i] == S_GRANTED) fail("request granted twice");
  if (r->state != OB_FS_ST_GRANTED) fail("granted request not in GRANTED state");
  v->st[i] = S_GRANTED;
  ob_fs_pool_stats_t ps;
  ob_fs_tenant_stats_t ts;
  ob_fs_pool_stats(v->fs, r->pool, &ps);
  ob_fs_tenant_stats(v->fs, r->tenant, &ts);
  /* A grant needs a free slot, so right after it nothing is above its cap,
   * even when caps were lowered earlier. */
  if (ps.max_inflight && ps.inflight > ps.max_inflight) fail("pool max_inflight exceeded");
  if (v->tenant_cap[r->tenant] && ts.inflight > v->tenant_cap[r->tenant]) fail("tenant max_inflight exceeded");
  if (v->global_cap && ob_fs_inflight(v->fs) > v->global_cap) fail("global max_inflight exceeded");
}

static void verify(drv_t *v) {
  uint32_t infl = 0, q = 0, tinfl[MAXT] = {0}, tq[MAXT] = {0}, pinfl[MAXP] = {0}, pq[MAXP] = {0};
  for (size_t i = 0; i < NREQ; i++) {
    const ob_fs_req_t *r = &v->reqs[i];
    int want = v->st[i] == S_QUEUED ? OB_FS_ST_QUEUED : v->st[i] == S_GRANTED ? OB_FS_ST_GRANTED : OB_FS_ST_IDLE;
    if (r->state != want) fail("request state differs from the driver's");
    if (v->st[i] == S_GRANTED) infl++, tinfl[r->tenant]++, pinfl[r->pool]++;
    if (v->st[i] == S_QUEUED) q++, tq[r->tenant]++, pq[r->pool]++;
  }
  if (infl != ob_fs_inflight(v->fs)) fail("global inflight count");
  if (q != ob_fs_queued(v->fs)) fail("global queued count");
  for (uint32_t t = 0; t < v->nt; t++) {
    ob_fs_tenant_stats_t ts;
    ob_fs_tenant_stats(v->fs, t, &ts);
    if (ts.inflight != tinfl[t]) fail("tenant inflight count");
    if (ts.queued != tq[t]) fail("tenant queued count");
  }
  for (uint32_t p = 0; p < v->np; p++) {
    ob_fs_pool_stats_t ps;
    ob_fs_pool_stats(v->fs, p, &ps);
    if (ps.inflight != pinfl[p]) fail("pool inflight count");
    if (ps.queued != pq[p]) fail("pool queued count");
  }
  for (uint32_t g = 0; g < v->ng; g++) {
    ob_fs_group_stats_t gs;
    ob_fs_group_stats(v->fs, g, &gs);
    uint32_t gi = 0, gq = 0;
    for (uint32_t t = 0; t < v->nt; t++) {
      ob_fs_tenant_stats_t ts;
      ob_fs_tenant_stats(v->fs, t, &ts);
      if (ts.group == g) gi += ts.inflight, gq += ts.queued;
    }
    if (gs.inflight != gi || gs.queued != gq) fail("group counts");
  }
  const char *why;
  if (!ob_fs_check(v->fs, &why)) fail(why);
  uint64_t d = ob_fs_next_deadline(v->fs);
  uint64_t min = 0;
  for (size_t i = 0; i < NREQ; i++)
    if (v->st[i] == S_QUEUED && v->reqs[i].deadline_us && (!min || v->reqs[i].deadline_us < min))
      min = v->reqs[i].deadline_us;
  if (d != min) fail("next deadline");
  if (v->np) {
    uint64_t ms = ob_fs_retry_after_ms(v->fs, 0, 0, v->now);
    if (ms < 1000 || ms > 60000) fail("retry-after out of range");
  }
}

static void grant_all(drv_t *v) {
  ob_fs_req_t *r;
  int n = 0;
  while ((r = ob_fs_next_grant(v->fs, v->now))) {
    granted(v, r);
    if (++n > NREQ) fail("more grants than requests");
  }
}

/* Token bucket: take agrees with wait_ms, and waiting wait_ms is enough. */
static void bucket_op(drv_t *v) {
  ob_fs_bucket_t *b = &v->bucket;
  uint8_t k = byte(v);
  switch (k % 4) {
  case 0:
    ob_fs_bucket_init(b, k & 4 ? u16(v) : (uint64_t)u16(v) << 16, v->bucket_now);
    break;
  case 1: {
    uint64_t n = b->per_minute ? u16(v) % (b->per_minute + 2) : u16(v);
    uint64_t w = ob_fs_bucket_wait_ms(b, n, v->bucket_now);
    ob_fs_bucket_t copy = *b;
    bool ok = ob_fs_bucket_take(b, n, v->bucket_now);
    if (ok != (w == 0) && n <= b->per_minute) fail("bucket take disagrees with wait_ms");
    if (!ok && n <= copy.per_minute) {
      if (!ob_fs_bucket_take(&copy, n, v->bucket_now + w * 1000)) fail("bucket: waiting wait_ms was not enough");
    }
    break;
  }
  case 2:
    ob_fs_bucket_adjust(b, (int16_t)u16(v), v->bucket_now);
    break;
  case 3:
    v->bucket_now += (uint64_t)u16(v) * 1000 + byte(v);
    if (b->per_minute && ob_fs_bucket_remaining(b, v->bucket_now) > b->per_minute) fail("bucket above capacity");
    ob_fs_bucket_t copy = *b; /* looking ahead must not move b's clock */
    uint64_t full = ob_fs_bucket_full_ms(b, v->bucket_now);
    if (full > 0 && ob_fs_bucket_remaining(&copy, v->bucket_now + full * 1000) != b->per_minute)
      fail("bucket not full after full_ms");
    break;
  }
}

static void op(drv_t *v, uint8_t code) {
  switch (code % 14) {
  case 0:
    if (v->np < MAXP) ob_fs_pool_add(v->fs, "p", byte(v) % 5), v->np++;
    break;
  case 1:
    if (v->ng < MAXG) ob_fs_group_add(v->fs, "g", weight(v)), v->ng++;
    break;
  case 2:
    if (v->nt < MAXT) {
      ob_fs_tenant_params_t tp = {byte(v) % (v->ng + 1), weight(v), byte(v) % 4, byte(v) % 6};
      v->tenant_cap[v->nt] = tp.max_inflight;
      ob_fs_tenant_add(v->fs, "t", &tp), v->nt++;
    }
    break;
  case 3: {
    size_t i = byte(v) % NREQ;
    ob_fs_req_t *r = &v->reqs[i];
    if (v->st[i] != S_IDLE) {
      /* Misuse: a linked request submitted again must change nothing. */
      ob_fs_verdict_t want = v->st[i] == S_QUEUED ? OB_FS_QUEUED : OB_FS_GRANTED;
      if (ob_fs_submit(v->fs, r, v->now) != want) fail("resubmit of a linked request");
      break;
    }
    r->pool = byte(v) % (v->np + 1); /* one past the end: refused */
    r->tenant = byte(v) % v->nt;
    r->cost = cost(v);
    uint8_t dl = byte(v);
    r->deadline_us = dl & 1 ? v->now + dl * 10u : 0;
    ob_fs_verdict_t vd = ob_fs_submit(v->fs, r, v->now);
    if (r->pool >= v->np && vd != OB_FS_QUEUE_FULL) fail("unknown pool accepted");
    if (vd == OB_FS_GRANTED) granted(v, r);
    else if (vd == OB_FS_QUEUED) v->st[i] = S_QUEUED;
    else if (r->state != OB_FS_ST_IDLE) fail("refused request linked");
    break;
  }
  case 4:
    grant_all(v);
    break;
  case 5: {
    size_t i = byte(v) % NREQ;
    ob_fs_req_t *r = &v->reqs[i];
    uint64_t actual = byte(v) & 1 ? r->cost : cost(v);
    ob_fs_release(v->fs, r, actual, v->now); /* ignored unless granted */
    if (v->st[i] == S_GRANTED) v->st[i] = S_IDLE;
    break;
  }
  case 6: {
    size_t i = byte(v) % NREQ;
    ob_fs_cancel(v->fs, &v->reqs[i]); /* ignored unless queued */
    if (v->st[i] == S_QUEUED) v->st[i] = S_IDLE;
    break;
  }
  case 7: {
    v->now += (uint64_t)byte(v) * 37 + 1;
    ob_fs_req_t *r;
    while ((r = ob_fs_next_expired(v->fs, v->now))) {
      size_t i = (size_t)(r - v->reqs);
      if (r < v->reqs || i >= NREQ || v->st[i] != S_QUEUED) fail("expired a request that was not queued");
      if (!r->deadline_us || r->deadline_us > v->now) fail("expired before its deadline");
      v->st[i] = S_IDLE;
    }
    break;
  }
  case 8: {
    uint8_t k = byte(v);
    v->global_cap = byte(v) % 6;
    ob_fs_params_t p = {(ob_fs_mode_t)(k % 4), v->global_cap, byte(v) % 24,
                        k & 0x80 ? UINT64_MAX : (uint64_t)(k >> 2 & 7)};
    ob_fs_set_params(v->fs, &p);
    break;
  }
  case 9: {
    uint32_t t = byte(v) % (v->nt + 1);
    ob_fs_tenant_params_t tp = {byte(v) % (v->ng + 1), weight(v), byte(v) % 4, byte(v) % 6};
    ob_fs_tenant_set(v->fs, t, &tp);
    if (t < v->nt) v->tenant_cap[t] = tp.max_inflight;
    break;
  }
  case 10:
    ob_fs_group_set(v->fs, byte(v) % (v->ng + 1), weight(v));
    break;
  case 11:
    ob_fs_pool_set(v->fs, byte(v) % (v->np + 1), byte(v) % 5);
    break;
  case 12: {
    ob_fs_req_t *r = ob_fs_next_grant(v->fs, v->now);
    if (r) granted(v, r);
    break;
  }
  case 13:
    bucket_op(v);
    break;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  drv_t *v = calloc(1, sizeof *v);
  v->d = data, v->n = size;
  uint8_t m = byte(v), cap = byte(v), mq = byte(v), qn = byte(v);
  v->global_cap = cap % 6;
  ob_fs_params_t p = {(ob_fs_mode_t)(m % 3), v->global_cap, mq % 24, qn == 0xff ? UINT64_MAX : qn % 16};
  v->fs = ob_fs_create(&p);
  ob_fs_pool_add(v->fs, "p0", 2), v->np = 1;
  ob_fs_group_add(v->fs, "g0", 1), v->ng = 1;
  ob_fs_tenant_add(v->fs, "t0", &(ob_fs_tenant_params_t){0, 1, 0, 0}), v->nt = 1;
  for (size_t ops = 0; v->at < v->n && ops < 4096; ops++) {
    op(v, byte(v));
    verify(v);
  }
  /* Liveness: with every slot given back, every queued request comes out. */
  for (int round = 0; ob_fs_queued(v->fs) && round < 4 * NREQ; round++) {
    for (size_t i = 0; i < NREQ; i++)
      if (v->st[i] == S_GRANTED) ob_fs_release(v->fs, &v->reqs[i], v->reqs[i].cost, v->now), v->st[i] = S_IDLE;
    grant_all(v);
    verify(v);
  }
  /* Every cap is unlimited (0) or at least 1, so with nothing in flight
   * every pool has a slot and every tenant is runnable. */
  if (ob_fs_queued(v->fs)) fail("queued requests never granted");
  ob_fs_destroy(v->fs);
  free(v);
  return 0;
}
