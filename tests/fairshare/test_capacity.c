/*
 * Unit tests for the capacity controller (src/fairshare/fairshare_capacity.c),
 * pure and with time passed in. Two backends drive it in closed loop:
 *
 *   - the ideal one of the issue: S slots, running = min(inflight, S),
 *     waiting = max(0, inflight - S), optionally KV usage proportional to
 *     running; obleth always backlogged, so inflight = the limit;
 *   - a request-level one, stepped every 10 ms: requests last 1.5-2.5 s,
 *     start FIFO when a slot is free, answer their first token after a noisy
 *     prefill, and slots lost at run time preempt the newest sequences. It
 *     has the delays the ideal one lacks (inflight drains only as requests
 *     finish) and gives the latency signal something real to measure.
 *
 * Covered: convergence to S with the backend's queue mean <= 0.5 and no
 * oscillation, a halving re-converged within 2 s, a doubling re-found within
 * seconds, target_waiting, kv_high stopping growth, failing scrapes holding
 * the limit and handing over to latency mode (which still converges),
 * staleness, down/up, parameter sanitising and a seeded random run that
 * never leaves [min, max] nor hits 0 unless down; with the KV cache full, a
 * preemption burst (counted or inferred) and a prompt waiting for KV each
 * cost one sequence, not a cut held 2 s, while a halving is still answered
 * within 2 s. Convergence numbers are
 * printed as TAP comments.
 */
#include "fairshare.h"
#include "tap.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define MS 1000ull
#define SEC 1000000ull
#define IV (250 * MS)

static ob_cap_params_t params(uint32_t min, uint32_t max) {
  ob_cap_params_t p;
  ob_cap_params_default(&p);
  p.min = min;
  p.max = max;
  return p;
}

static uint64_t rnd(uint64_t *s) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return *s >> 33;
}

static double urand(uint64_t *s) { return (double)rnd(s) / (double)(1ull << 31); }

/* ---------------------------------------------------------------- ideal backend */

typedef struct ideal {
  uint32_t slots;
  double kv_per_seq; /* KV usage per running sequence; 0 = not exposed */
  double kv_extra;   /* a neighbour's KV usage */
} ideal_t;

typedef struct run_stats {
  uint32_t lim_min, lim_max;
  double waiting_sum, running_sum;
  uint32_t scrapes;
} run_stats_t;

static void stats_reset(run_stats_t *s) { *s = (run_stats_t){.lim_min = UINT32_MAX}; }

/* One scrape of the ideal backend against the limit obleth had during the
 * interval before it. */
static void ideal_scrape(ob_cap_t *c, const ideal_t *b, uint64_t now, run_stats_t *s) {
  uint32_t inflight = ob_cap_limit(c);
  double running = inflight < b->slots ? inflight : b->slots;
  double waiting = inflight > b->slots ? inflight - b->slots : 0;
  double kv = b->kv_per_seq > 0 ? fmin(1.0, running * b->kv_per_seq + b->kv_extra) : NAN;
  if (s) {
    if (inflight < s->lim_min) s->lim_min = inflight;
    if (inflight > s->lim_max) s->lim_max = inflight;
    s->waiting_sum += waiting;
    s->running_sum += running;
    s->scrapes++;
  }
  ob_cap_on_metrics(c, running, waiting, kv, inflight, now);
}

/* Scrape every 250 ms from *now for dur; *now advances. Returns the time of
 * the first scrape after which cond(limit) held, or UINT64_MAX. */
typedef bool (*lim_cond)(uint32_t lim, uint32_t arg);
static uint64_t ideal_run(ob_cap_t *c, const ideal_t *b, uint64_t *now, uint64_t dur, run_stats_t *s, lim_cond cond,
                          uint32_t arg) {
  uint64_t hit = UINT64_MAX;
  for (uint64_t end = *now + dur; *now < end;) {
    *now += IV;
    ideal_scrape(c, b, *now, s);
    if (cond && hit == UINT64_MAX && cond(ob_cap_limit(c), arg)) hit = *now;
  }
  return hit;
}

static bool at_most(uint32_t lim, uint32_t arg) { return lim <= arg; }
static bool at_least(uint32_t lim, uint32_t arg) { return lim >= arg; }

static void test_converge_halve_double(void) {
  ob_cap_params_t p = params(1, 512);
  ob_cap_t c;
  ideal_t b = {.slots = 40};
  uint64_t now = 0;
  ob_cap_init(&c, &p, 1, now);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_STATIC, "(1) source static before any signal");
  TAP_EQ_INT(ob_cap_limit(&c), 1, "(1) starts at the initial limit");

  run_stats_t s;
  stats_reset(&s);
  uint64_t t = ideal_run(&c, &b, &now, 10 * SEC, NULL, at_least, 40);
  printf("# (1) S=40 from 1: limit reached S after %.2f s\n", (double)t / SEC);
  TAP_CHECK(t <= 3 * SEC, "(1) slow start finds S=40 within 3 s");
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_METRICS, "(1) source metrics after a good scrape");
  stats_reset(&s);
  ideal_run(&c, &b, &now, 50 * SEC, &s, NULL, 0);
  double wmean = s.waiting_sum / s.scrapes;
  printf("# (1) steady 10-60 s: limit %u..%u, backend waiting mean %.3f, utilisation %.3f\n", s.lim_min, s.lim_max,
         wmean, s.running_sum / s.scrapes / 40);
  TAP_CHECK(wmean <= 0.5, "(1) backend waiting mean %.3f <= 0.5", wmean);
  TAP_CHECK(s.lim_min >= 40 && s.lim_max <= 41, "(1) no oscillation: limit within [S, S+1] (%u..%u)", s.lim_min,
            s.lim_max);

  /* (2) the backend loses half its slots. */
  b.slots = 20;
  uint64_t t0 = now;
  t = ideal_run(&c, &b, &now, 10 * SEC, NULL, at_most, 20);
  printf("# (2) S 40 -> 20: limit at 20 after %.2f s\n", (double)(t - t0) / SEC);
  TAP_CHECK(t - t0 <= 2 * SEC, "(2) halving re-converged within 2 s (%.2f s)", (double)(t - t0) / SEC);
  stats_reset(&s);
  ideal_run(&c, &b, &now, 30 * SEC, &s, NULL, 0);
  wmean = s.waiting_sum / s.scrapes;
  printf("# (2) steady after: limit %u..%u, waiting mean %.3f\n", s.lim_min, s.lim_max, wmean);
  TAP_CHECK(s.lim_min >= 20 && s.lim_max <= 21 && wmean <= 0.5, "(2) steady again at [20, 21], waiting mean %.3f",
            wmean);

  /* (3) the backend doubles. */
  b.slots = 40;
  t0 = now;
  t = ideal_run(&c, &b, &now, 20 * SEC, NULL, at_least, 38);
  printf("# (3) S 20 -> 40: limit >= 38 after %.2f s\n", (double)(t - t0) / SEC);
  TAP_CHECK(t - t0 <= 5 * SEC, "(3) doubling re-found within 5 s (%.2f s)", (double)(t - t0) / SEC);
  stats_reset(&s);
  ideal_run(&c, &b, &now, 30 * SEC, &s, NULL, 0);
  wmean = s.waiting_sum / s.scrapes;
  TAP_CHECK(s.lim_min >= 40 && s.lim_max <= 41 && wmean <= 0.5, "(3) steady at [40, 41] (%u..%u), waiting mean %.3f",
            s.lim_min, s.lim_max, wmean);

  /* A large backend: same shape. */
  b.slots = 300;
  t0 = now;
  t = ideal_run(&c, &b, &now, 30 * SEC, NULL, at_least, 285);
  printf("# (3) S 40 -> 300: limit >= 285 after %.2f s\n", (double)(t - t0) / SEC);
  TAP_CHECK(t - t0 <= 8 * SEC, "(3) 7.5x growth re-found within 8 s (%.2f s)", (double)(t - t0) / SEC);
  stats_reset(&s);
  ideal_run(&c, &b, &now, 30 * SEC, &s, NULL, 0);
  wmean = s.waiting_sum / s.scrapes;
  printf("# (3) S=300 steady: limit %u..%u, waiting mean %.3f\n", s.lim_min, s.lim_max, wmean);
  TAP_CHECK(s.lim_min >= 300 && s.lim_max <= 301 && wmean <= 0.5, "(3) S=300 steady at [300, 301]");
  b.slots = 37; /* a drop to an eighth */
  t0 = now;
  t = ideal_run(&c, &b, &now, 10 * SEC, NULL, at_most, 37);
  printf("# (2) S 300 -> 37: limit at 37 after %.2f s\n", (double)(t - t0) / SEC);
  TAP_CHECK(t - t0 <= 2 * SEC + IV, "(2) a drop to an eighth answered in about 2 s (%.2f s)", (double)(t - t0) / SEC);
}

static void test_target_waiting(void) {
  ob_cap_params_t p = params(1, 512);
  p.target_waiting = 2;
  ob_cap_t c;
  ideal_t b = {.slots = 24};
  uint64_t now = 0;
  ob_cap_init(&c, &p, 8, now);
  ideal_run(&c, &b, &now, 10 * SEC, NULL, NULL, 0);
  run_stats_t s;
  stats_reset(&s);
  ideal_run(&c, &b, &now, 30 * SEC, &s, NULL, 0);
  double wmean = s.waiting_sum / s.scrapes;
  printf("# target_waiting 2, S=24: limit %u..%u, waiting mean %.3f\n", s.lim_min, s.lim_max, wmean);
  TAP_CHECK(s.lim_min >= 26 && s.lim_max <= 27, "target_waiting 2: limit held at S + 2 (%u..%u)", s.lim_min, s.lim_max);
  TAP_CHECK(wmean >= 1.9 && wmean <= 2.5, "target_waiting 2: backend queue mean %.3f near 2", wmean);
}

static void test_kv_high(void) {
  ob_cap_params_t p = params(1, 512);
  ob_cap_t c;
  /* KV grows with running: 0.95 is reached at 59.4 sequences, long before
   * the 200 slots. */
  ideal_t b = {.slots = 200, .kv_per_seq = 0.016};
  uint64_t now = 0;
  ob_cap_init(&c, &p, 4, now);
  ideal_run(&c, &b, &now, 10 * SEC, NULL, NULL, 0);
  uint32_t l0 = ob_cap_limit(&c);
  run_stats_t s;
  stats_reset(&s);
  ideal_run(&c, &b, &now, 30 * SEC, &s, NULL, 0);
  printf("# (4) KV 0.016/sequence, 200 slots: limit stopped at %u (KV %.3f), then %u..%u\n", l0,
         ob_cap_kv_usage(&c), s.lim_min, s.lim_max);
  TAP_CHECK(l0 >= 56 && l0 <= 60, "(4) growth stops at KV = kv_high, at most one probe past it (at %u, KV %.3f)", l0, l0 * 0.016);
  TAP_CHECK(s.lim_min == l0 && s.lim_max == l0, "(4) and stays there (%u..%u)", s.lim_min, s.lim_max);

  /* A converged endpoint whose slots double while a neighbour holds the KV
   * cache: no growth until the KV frees. */
  b = (ideal_t){.slots = 30, .kv_per_seq = 0.01};
  ob_cap_init(&c, &p, 4, now);
  ideal_run(&c, &b, &now, 20 * SEC, NULL, NULL, 0);
  TAP_EQ_INT(ob_cap_limit(&c), 30, "(4) converged at 30 with KV low");
  b.slots = 60;
  b.kv_extra = 0.7; /* 30 * 0.01 + 0.7 = 1.0 */
  stats_reset(&s);
  ideal_run(&c, &b, &now, 20 * SEC, &s, NULL, 0);
  TAP_CHECK(s.lim_max == 30, "(4) KV at kv_high: no growth though slots doubled (max %u)", s.lim_max);
  b.kv_extra = 0;
  uint64_t t0 = now;
  uint64_t t = ideal_run(&c, &b, &now, 20 * SEC, NULL, at_least, 60);
  printf("# (4) KV freed: limit 30 -> 60 after %.2f s\n", (double)(t - t0) / SEC);
  TAP_CHECK(t - t0 <= 5 * SEC, "(4) KV freed: growth resumes (%.2f s)", (double)(t - t0) / SEC);
  /* NaN KV (not exposed) does not block growth. */
  b = (ideal_t){.slots = 50};
  ob_cap_init(&c, &p, 4, now);
  ideal_run(&c, &b, &now, 10 * SEC, NULL, NULL, 0);
  TAP_CHECK(ob_cap_limit(&c) >= 50 && isnan(ob_cap_kv_usage(&c)), "(4) KV not exposed: growth unhindered");
}

/* Real scrapes are noisy: 250 ms +- 50 ms apart, and three in ten catch
 * one or two requests between two scheduler steps (running short, waiting
 * up by as many) although slots are free. Neither may shake the limit. */
static void test_noisy_scrapes(void) {
  ob_cap_params_t p = params(1, 512);
  ob_cap_t c;
  uint64_t now = 0, seed = 99;
  const uint32_t S = 48;
  ob_cap_init(&c, &p, 8, now);
  double wsum = 0, rsum = 0;
  uint32_t n = 0, lo = UINT32_MAX, hi = 0, near = 0;
  for (int i = 0; i < 2400; i++) {
    now += 200 * MS + rnd(&seed) % (100 * MS);
    uint32_t inflight = ob_cap_limit(&c);
    double running = inflight < S ? inflight : S, waiting = inflight > S ? inflight - S : 0;
    if (i >= 100) {
      uint32_t l = ob_cap_limit(&c);
      lo = l < lo ? l : lo;
      hi = l > hi ? l : hi;
      near += l + 2 >= S && l <= S + 2;
      wsum += waiting; /* the real queue, not the blips */
      rsum += running;
      n++;
    }
    if (rnd(&seed) % 10 < 3) {
      double k = 1 + (double)(rnd(&seed) % 2);
      if (k > running) k = running;
      running -= k;
      waiting += k;
    }
    ob_cap_on_metrics(&c, running, waiting, NAN, inflight, now);
  }
  printf("# noisy scrapes (30 %% blips of 1-2), S=48, 10 min: limit %u..%u, within S +- 2 %.1f %% of the time, real "
         "waiting mean %.3f, utilisation %.3f\n",
         lo, hi, 100.0 * near / n, wsum / n, rsum / n / S);
  TAP_CHECK(near >= 0.95 * n, "noisy scrapes: limit within S +- 2 for %.1f %% >= 95 %% of the time", 100.0 * near / n);
  TAP_CHECK(lo >= S - 8 && hi <= S + 8, "noisy scrapes: never further than 8 from S (%u..%u)", lo, hi);
  TAP_CHECK(rsum / n / S >= 0.97, "noisy scrapes: utilisation %.3f >= 0.97", rsum / n / S);
  TAP_CHECK(wsum / n <= 0.5, "noisy scrapes: real waiting mean %.3f <= 0.5", wsum / n);
}

static void test_no_growth_when_idle(void) {
  ob_cap_params_t p = params(1, 512);
  ob_cap_t c;
  uint64_t now = 0;
  ob_cap_init(&c, &p, 16, now);
  /* obleth sends 5 at most: the backend never queues, but the endpoint is
   * not saturated, so there is no evidence for more. */
  for (int i = 0; i < 200; i++) {
    now += IV;
    ob_cap_on_metrics(&c, 5, 0, 0.1, 5, now);
  }
  TAP_EQ_INT(ob_cap_limit(&c), 16, "an endpoint obleth does not fill keeps its limit");
  /* Sharing the backend with clients obleth does not see: the backend runs
   * 40 and queues 10 while obleth has 16 in flight; obleth gives way by the
   * excess. */
  now += IV;
  ob_cap_on_metrics(&c, 40, 10, NAN, 16, now);
  TAP_EQ_INT(ob_cap_limit(&c), 12, "shared backend: one step removes at most 25 %");
  now += IV;
  ob_cap_on_metrics(&c, 40, 10, NAN, 12, now);
  TAP_EQ_INT(ob_cap_limit(&c), 9, "shared backend: then on toward inflight - excess");
}


/* ---------------------------------------------------------------- KV-bound queues */

/* Steady scrapes: KV at `kv` with `run` running, obleth filling the limit. */
static void kv_steady(ob_cap_t *c, uint64_t *now, int n, double run, double kv, double *preempted) {
  for (int i = 0; i < n; i++) {
    *now += IV;
    if (preempted) ob_cap_on_preemptions(c, *preempted, *now);
    ob_cap_on_metrics(c, run, 0, kv, ob_cap_limit(c), *now);
  }
}

/* (8) Short chats in a KV cache that holds ~31: the running ones grow and
 * the backend preempts the newest four at once. That is the KV cache
 * overflowing, not capacity lost: one sequence fewer, not a cut to what
 * still runs, and growth waits only briefly. */
static void test_preemption_burst(void) {
  ob_cap_params_t p = params(1, 512);
  ob_cap_t c;
  uint64_t now = 0;
  double pre = 100;
  ob_cap_init(&c, &p, 31, now);
  kv_steady(&c, &now, 8, 31, 0.97, &pre); /* KV above kv_high: no growth */
  TAP_EQ_INT(ob_cap_limit(&c), 31, "(8) steady at 31 with KV at 0.97");
  pre += 4;
  now += IV;
  ob_cap_on_preemptions(&c, pre, now);
  ob_cap_on_metrics(&c, 27, 4, 0.999, 31, now);
  TAP_EQ_INT(ob_cap_limit(&c), 30, "(8) a burst of 4 preemptions trims one (not 27)");
  /* The preempted ones drain over the next scrapes: no further trims. */
  now += IV;
  ob_cap_on_preemptions(&c, pre, now);
  ob_cap_on_metrics(&c, 28, 3, 0.99, 31, now);
  now += IV;
  ob_cap_on_preemptions(&c, pre, now);
  ob_cap_on_metrics(&c, 29, 2, 0.99, 31, now);
  TAP_EQ_INT(ob_cap_limit(&c), 30, "(8) a draining burst is not trimmed again");
  /* KV falls back: growth resumes within a second. */
  uint32_t hi = 0;
  for (int i = 0; i < 4; i++) {
    kv_steady(&c, &now, 1, 30, 0.85, &pre);
    if (ob_cap_limit(&c) > hi) hi = ob_cap_limit(&c);
  }
  TAP_CHECK(hi >= 31, "(8) with KV room again the limit grows within 1 s (%u)", hi);
  /* The same burst without the counter (not exposed): inferred from
   * running down and waiting up with the KV cache full. */
  ob_cap_init(&c, &p, 31, now);
  kv_steady(&c, &now, 8, 31, 0.97, NULL);
  now += IV;
  ob_cap_on_metrics(&c, 27, 4, 0.999, 31, now);
  TAP_EQ_INT(ob_cap_limit(&c), 30, "(8) without the counter: also one fewer");
  /* A real drop with the KV cache full is still a drop: half the KV cache
   * goes, half the sequences are preempted, answered within 2 s. */
  ob_cap_init(&c, &p, 32, now);
  kv_steady(&c, &now, 8, 32, 0.97, &pre);
  uint64_t t0 = now;
  pre += 16;
  uint64_t t = UINT64_MAX;
  for (int i = 0; i < 16 && t == UINT64_MAX; i++) {
    now += IV;
    uint32_t l = ob_cap_limit(&c);
    double run = l < 16 ? l : 16, wait = l > 16 ? l - 16 : 0;
    ob_cap_on_preemptions(&c, pre, now);
    ob_cap_on_metrics(&c, run, wait, 0.99, l, now);
    if (ob_cap_limit(&c) <= 17) t = now;
  }
  printf("# (8) KV halved under 32 sequences: limit <= 17 after %.2f s\n", (double)(t - t0) / SEC);
  TAP_CHECK(t - t0 <= 2 * SEC, "(8) a halving with the KV cache full is answered within 2 s");
}

/* (9) A long prompt at the head of the backend's queue waits for KV while
 * the cache is 90 % used: one fewer, and the limit grows again as soon as
 * the cache frees, instead of a cut held for 2 s. */
static void test_head_of_line(void) {
  ob_cap_params_t p = params(1, 512);
  ob_cap_t c;
  uint64_t now = 0;
  ob_cap_init(&c, &p, 9, now);
  kv_steady(&c, &now, 8, 9, 0.96, NULL);
  TAP_EQ_INT(ob_cap_limit(&c), 9, "(9) steady at 9 (KV-bound)");
  for (int i = 0; i < 3; i++) {
    now += IV;
    ob_cap_on_metrics(&c, 8, 1, 0.90, 9, now);
  }
  uint32_t l = ob_cap_limit(&c);
  TAP_CHECK(l == 8, "(9) a prompt waiting for KV costs one (limit %u)", l);
  /* Two long ones finish, short ones take their place: KV at 55 %. */
  uint64_t t0 = now, t = UINT64_MAX;
  for (int i = 0; i < 16 && t == UINT64_MAX; i++) {
    now += IV;
    ob_cap_on_metrics(&c, ob_cap_limit(&c), 0, 0.55, ob_cap_limit(&c), now);
    if (ob_cap_limit(&c) >= 10) t = now;
  }
  printf("# (9) head of line: back above 9 %.2f s after the cache freed\n", (double)(t - t0) / SEC);
  TAP_CHECK(t - t0 <= SEC, "(9) growth resumes within 1 s of the KV cache freeing (%.2f s)", (double)(t - t0) / SEC);
  /* The same queue with KV low is not KV-bound: the old rule (a cut to
   * the level that ran, held 2 s) still applies, a slot-bound backend. */
  ob_cap_init(&c, &p, 20, now);
  kv_steady(&c, &now, 8, 20, 0.30, NULL);
  uint32_t before = ob_cap_limit(&c);
  for (int i = 0; i < 2; i++) {
    now += IV;
    ob_cap_on_metrics(&c, 18, 3, 0.30, ob_cap_limit(&c), now);
  }
  l = ob_cap_limit(&c);
  kv_steady(&c, &now, 6, l, 0.30, NULL);
  TAP_CHECK(l < before && ob_cap_limit(&c) == l, "(9) KV low: a queue is a cut held (%u -> %u, then %u)", before, l,
            ob_cap_limit(&c));
}

/* ---------------------------------------------------------------- request-level backend */

#define SIM_MAX 2048

typedef struct sreq {
  int state; /* 0 free, 1 waiting, 2 running */
  uint64_t sent, start, first_token, end;
  uint32_t inflight_at_send;
  bool told;
} sreq_t;

typedef struct sim {
  uint32_t slots;
  uint64_t prefill_us;  /* mean time to first token once running */
  uint64_t svc_min, svc_max;
  bool metrics;         /* false: every scrape fails */
  uint64_t rng;
  uint32_t inflight, running, waiting;
  sreq_t r[SIM_MAX];
  /* FIFO of waiting request indices (preempted ones go to the front) */
  uint32_t q[SIM_MAX], qhead, qlen;
  uint64_t next_scrape;
  /* stats since the last reset */
  double waiting_sum, running_sum, lim_sum;
  uint32_t samples, lim_min, lim_max;
  uint32_t free_min, free_max; /* the limit outside latency re-probes */
} sim_t;

static void sim_init(sim_t *m, uint32_t slots, uint64_t seed) {
  memset(m, 0, sizeof *m);
  m->slots = slots;
  m->prefill_us = 80 * MS;
  m->svc_min = 1500 * MS;
  m->svc_max = 2500 * MS;
  m->metrics = true;
  m->rng = seed;
  m->next_scrape = IV;
}

static void sim_stats_reset(sim_t *m) {
  m->waiting_sum = m->running_sum = m->lim_sum = 0;
  m->samples = 0;
  m->lim_min = m->free_min = UINT32_MAX;
  m->lim_max = m->free_max = 0;
}

static void sim_start(sim_t *m, uint32_t i, uint64_t now) {
  sreq_t *r = &m->r[i];
  r->state = 2;
  r->start = now;
  r->first_token = now + (uint64_t)((double)m->prefill_us * (0.8 + 0.4 * urand(&m->rng)));
  r->end = now + m->svc_min + (uint64_t)((double)(m->svc_max - m->svc_min) * urand(&m->rng));
  m->running++;
}

/* Lose slots at run time: the newest running sequences go back to the front
 * of the queue, as vLLM preempts. */
static void sim_set_slots(sim_t *m, uint32_t slots) {
  m->slots = slots;
  while (m->running > m->slots) {
    uint32_t newest = SIM_MAX;
    for (uint32_t i = 0; i < SIM_MAX; i++)
      if (m->r[i].state == 2 && (newest == SIM_MAX || m->r[i].start > m->r[newest].start)) newest = i;
    m->r[newest].state = 1;
    m->running--;
    m->waiting++;
    m->qhead = (m->qhead + SIM_MAX - 1) % SIM_MAX;
    m->q[m->qhead] = newest;
    m->qlen++;
  }
}

/* One 10 ms step: completions, obleth's sends (always backlogged), FIFO
 * starts, first tokens, and a scrape every 250 ms. */
static void sim_step(sim_t *m, ob_cap_t *c, uint64_t now) {
  for (uint32_t i = 0; i < SIM_MAX; i++) {
    sreq_t *r = &m->r[i];
    if (r->state == 2 && r->end <= now) {
      r->state = 0;
      m->running--;
      m->inflight--;
    }
  }
  uint32_t lim = ob_cap_limit(c);
  for (uint32_t i = 0; i < SIM_MAX && m->inflight < lim; i++) {
    if (m->r[i].state) continue;
    m->r[i] = (sreq_t){.state = 1, .sent = now, .inflight_at_send = ++m->inflight};
    m->q[(m->qhead + m->qlen) % SIM_MAX] = i;
    m->qlen++;
    m->waiting++;
  }
  while (m->qlen && m->running < m->slots) {
    uint32_t i = m->q[m->qhead];
    m->qhead = (m->qhead + 1) % SIM_MAX;
    m->qlen--;
    m->waiting--;
    sim_start(m, i, now);
  }
  for (uint32_t i = 0; i < SIM_MAX; i++) {
    sreq_t *r = &m->r[i];
    if (r->state == 2 && !r->told && r->first_token <= now) {
      r->told = true;
      ob_cap_on_ttft(c, r->first_token - r->sent, r->inflight_at_send, now);
    }
  }
  if (now >= m->next_scrape) {
    m->next_scrape += IV;
    ob_cap_tick(c, now);
    if (m->metrics)
      ob_cap_on_metrics(c, m->running, m->waiting, NAN, m->inflight, now);
    else
      ob_cap_on_metrics_failed(c, now);
    m->waiting_sum += m->waiting;
    m->running_sum += m->running;
    uint32_t l = ob_cap_limit(c);
    m->lim_sum += l;
    if (l < m->lim_min) m->lim_min = l;
    if (l > m->lim_max) m->lim_max = l;
    ob_cap_stats_t st;
    ob_cap_stats(c, &st);
    if (!st.probing) {
      if (l < m->free_min) m->free_min = l;
      if (l > m->free_max) m->free_max = l;
    }
    m->samples++;
  }
}

static uint64_t sim_run(sim_t *m, ob_cap_t *c, uint64_t *now, uint64_t dur, lim_cond cond, uint32_t arg) {
  uint64_t hit = UINT64_MAX;
  for (uint64_t end = *now + dur; *now < end;) {
    *now += 10 * MS;
    sim_step(m, c, *now);
    if (cond && hit == UINT64_MAX && cond(ob_cap_limit(c), arg)) hit = *now;
  }
  return hit;
}

static void test_request_level(void) {
  static sim_t m;
  ob_cap_params_t p = params(1, 512);
  ob_cap_t c;
  uint64_t now = 0;
  sim_init(&m, 40, 7);
  ob_cap_init(&c, &p, 4, now);
  sim_run(&m, &c, &now, 15 * SEC, NULL, 0);
  sim_stats_reset(&m);
  sim_run(&m, &c, &now, 45 * SEC, NULL, 0);
  double wmean = m.waiting_sum / m.samples, util = m.running_sum / m.samples / 40;
  printf("# request-level S=40: limit %u..%u, backend waiting mean %.3f, utilisation %.3f\n", m.lim_min, m.lim_max,
         wmean, util);
  TAP_CHECK(wmean <= 0.5 && util >= 0.97, "request-level: waiting mean %.3f <= 0.5, utilisation %.3f", wmean, util);
  TAP_CHECK(m.lim_min >= 38 && m.lim_max <= 42, "request-level: limit steady (%u..%u)", m.lim_min, m.lim_max);

  /* Halve the slots: the newest 20 sequences are preempted into the queue. */
  sim_set_slots(&m, 20);
  uint64_t t0 = now;
  uint64_t t = sim_run(&m, &c, &now, 10 * SEC, at_most, 21);
  printf("# request-level S 40 -> 20: limit <= 21 after %.2f s\n", (double)(t - t0) / SEC);
  TAP_CHECK(t - t0 <= 2 * SEC, "request-level: halving answered within 2 s (%.2f s)", (double)(t - t0) / SEC);
  sim_stats_reset(&m);
  sim_run(&m, &c, &now, 10 * SEC, NULL, 0);
  TAP_CHECK(m.lim_min >= 18 && m.lim_max <= 22, "request-level: no undershoot after the halving (%u..%u)", m.lim_min,
            m.lim_max);
  sim_stats_reset(&m);
  sim_run(&m, &c, &now, 30 * SEC, NULL, 0);
  wmean = m.waiting_sum / m.samples;
  printf("# request-level S=20 steady: limit %u..%u, waiting mean %.3f\n", m.lim_min, m.lim_max, wmean);
  TAP_CHECK(wmean <= 0.5, "request-level: steady again, waiting mean %.3f", wmean);
}

/* (5) Scrapes fail: the limit is held, then latency mode takes over. */
static void test_latency_mode(void) {
  static sim_t m;
  ob_cap_params_t p = params(1, 512);
  ob_cap_t c;
  uint64_t now = 0;
  sim_init(&m, 40, 11);
  ob_cap_init(&c, &p, 4, now);
  sim_run(&m, &c, &now, 20 * SEC, NULL, 0);
  uint32_t held = ob_cap_limit(&c);
  TAP_CHECK(held >= 39 && held <= 42, "(5) converged on metrics first (%u)", held);

  m.metrics = false;
  uint64_t until = m.next_scrape + IV; /* two failed scrapes */
  sim_run(&m, &c, &now, until - now, NULL, 0);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_METRICS, "(5) two failed scrapes: still metrics");
  TAP_EQ_INT(ob_cap_limit(&c), held, "(5) failing scrapes keep the last good limit");
  sim_run(&m, &c, &now, IV, NULL, 0);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_LATENCY, "(5) third failure: latency mode");
  ob_cap_stats_t st;
  ob_cap_stats(&c, &st);
  TAP_CHECK(st.ttft_baseline_us > 70e3 && st.ttft_baseline_us < 110e3,
            "(5) the latency baseline was warm at the switch (%.0f us)", st.ttft_baseline_us);

  sim_stats_reset(&m);
  sim_run(&m, &c, &now, 60 * SEC, NULL, 0);
  double util = m.running_sum / m.samples / 40, wmean = m.waiting_sum / m.samples;
  printf("# (5) latency mode S=40: limit %u..%u (outside re-probes %u..%u) mean %.1f, utilisation %.3f, backend "
         "waiting mean %.2f\n",
         m.lim_min, m.lim_max, m.free_min, m.free_max, m.lim_sum / m.samples, util, wmean);
  TAP_CHECK(util >= 0.85, "(5) latency mode keeps utilisation %.3f >= 0.85", util);
  TAP_CHECK(m.free_min >= 30 && m.lim_max <= 48,
            "(5) latency mode stays within -25 %%..+20 %% of S = 40 (%u..%u outside re-probes)", m.free_min, m.free_max);

  /* The backend halves while blind: the rising TTFT brings the limit down. */
  sim_set_slots(&m, 20);
  sim_run(&m, &c, &now, 20 * SEC, NULL, 0);
  sim_stats_reset(&m);
  sim_run(&m, &c, &now, 60 * SEC, NULL, 0);
  util = m.running_sum / m.samples / 20;
  wmean = m.waiting_sum / m.samples;
  printf("# (5) latency mode S 40 -> 20: limit %u..%u (outside re-probes %u..%u) mean %.1f, utilisation %.3f, "
         "waiting mean %.2f\n",
         m.lim_min, m.lim_max, m.free_min, m.free_max, m.lim_sum / m.samples, util, wmean);
  TAP_CHECK(util >= 0.85 && m.lim_max <= 30, "(5) latency mode re-converges after a halving (%u..%u, util %.3f)",
            m.lim_min, m.lim_max, util);

  /* Metrics come back: two good scrapes in a row return to metrics mode,
   * which settles the backend queue again. */
  m.metrics = true;
  sim_run(&m, &c, &now, 2 * IV, NULL, 0);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_METRICS, "(5) metrics back after two good scrapes");
  sim_run(&m, &c, &now, 10 * SEC, NULL, 0);
  sim_stats_reset(&m);
  sim_run(&m, &c, &now, 20 * SEC, NULL, 0);
  wmean = m.waiting_sum / m.samples;
  TAP_CHECK(wmean <= 0.5 && m.lim_min >= 18 && m.lim_max <= 22, "(5) metrics mode settles again (%u..%u, waiting %.2f)",
            m.lim_min, m.lim_max, wmean);

  /* A backend without /metrics from the start (every scrape 404). */
  sim_init(&m, 64, 13);
  m.metrics = false;
  now = 0;
  ob_cap_init(&c, &p, 4, now);
  sim_run(&m, &c, &now, IV, NULL, 0);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_STATIC, "(5) no metrics yet: static");
  sim_run(&m, &c, &now, 40 * SEC, NULL, 0);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_LATENCY, "(5) never any metrics: latency mode");
  sim_stats_reset(&m);
  sim_run(&m, &c, &now, 90 * SEC, NULL, 0);
  util = m.running_sum / m.samples / 64;
  wmean = m.waiting_sum / m.samples;
  printf("# (5) latency only, S=64 from 4: limit %u..%u (outside re-probes %u..%u) mean %.1f, utilisation %.3f, "
         "waiting mean %.2f\n",
         m.lim_min, m.lim_max, m.free_min, m.free_max, m.lim_sum / m.samples, util, wmean);
  TAP_CHECK(util >= 0.85 && m.lim_max <= 77, "(5) latency only converges (util %.3f, max %u)", util, m.lim_max);

  /* Prompts ten times longer (the long-context phase): the first token
   * takes 800 ms unqueued. The old baseline calls that a queue; a probe
   * shows that fewer requests in flight do not make it faster, and the
   * baseline moves instead of the limit collapsing for a whole window. */
  m.prefill_us = 800 * MS;
  uint64_t t0 = now;
  sim_stats_reset(&m);
  sim_run(&m, &c, &now, 10 * SEC, NULL, 0);
  uint32_t dip = m.lim_min;
  uint64_t t = sim_run(&m, &c, &now, 30 * SEC, at_least, 58);
  sim_stats_reset(&m);
  sim_run(&m, &c, &now, 60 * SEC, NULL, 0);
  util = m.running_sum / m.samples / 64;
  ob_cap_stats(&c, &st);
  printf("# (5) latency only, prefill 80 -> 800 ms: dip to %u, back at >= 58 after %.2f s; then limit %u..%u, "
         "utilisation %.3f, baseline %.0f us\n",
         dip, (double)(t - t0) / SEC, m.lim_min, m.lim_max, util, st.ttft_baseline_us);
  TAP_CHECK(t - t0 <= 20 * SEC, "(5) slower prompts: the limit is back within 20 s (%.2f s)", (double)(t - t0) / SEC);
  TAP_CHECK(util >= 0.85, "(5) slower prompts: utilisation %.3f >= 0.85 after", util);
  TAP_CHECK(st.ttft_baseline_us > 600e3, "(5) slower prompts: the baseline moved (%.0f us)", st.ttft_baseline_us);
}

/* Staleness: no scrape at all (neither good nor failed) for 4 intervals. */
static void test_stale(void) {
  ob_cap_params_t p = params(1, 512);
  ob_cap_t c;
  ideal_t b = {.slots = 16};
  uint64_t now = 0;
  ob_cap_init(&c, &p, 4, now);
  ideal_run(&c, &b, &now, 10 * SEC, NULL, NULL, 0);
  uint32_t held = ob_cap_limit(&c);
  ob_cap_tick(&c, now + 4 * IV);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_METRICS, "stale: 4 intervals is not yet stale");
  ob_cap_tick(&c, now + 4 * IV + 1);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_LATENCY, "stale: past 4 intervals, latency mode");
  TAP_EQ_INT(ob_cap_limit(&c), held, "stale: the limit is held");
  /* One good scrape is not enough to go back, a failure in between resets. */
  now += 5 * IV;
  ob_cap_on_metrics(&c, 8, 0, NAN, 8, now);
  ob_cap_on_metrics_failed(&c, now += IV);
  ob_cap_on_metrics(&c, 8, 0, NAN, 8, now += IV);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_LATENCY, "flapping scrapes stay in latency mode");
  ob_cap_on_metrics(&c, 8, 0, NAN, 8, now += IV);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_METRICS, "two good in a row: metrics");
  /* A scrape with NaN waiting counts as failed. */
  for (int i = 0; i < 3; i++) ob_cap_on_metrics(&c, 8, NAN, NAN, 8, now += IV);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_LATENCY, "unknown waiting (NaN) x3: latency mode");
  TAP_EQ_INT(ob_cap_limit(&c), held, "and still the last good limit");
  TAP_CHECK(ob_cap_waiting(&c) == 0, "display keeps the last good waiting");
}

/* (7) Down and up. */
static void test_down_up(void) {
  ob_cap_params_t p = params(2, 512);
  ob_cap_t c;
  ideal_t b = {.slots = 24};
  uint64_t now = 0;
  ob_cap_init(&c, &p, 4, now);
  ideal_run(&c, &b, &now, 10 * SEC, NULL, NULL, 0);
  uint32_t held = ob_cap_limit(&c);
  ob_cap_on_down(&c, now);
  TAP_EQ_INT(ob_cap_limit(&c), 0, "(7) down: limit 0, the endpoint is skipped");
  ob_cap_stats_t st;
  ob_cap_stats(&c, &st);
  TAP_CHECK(st.down && st.held == held && st.limit == 0, "(7) down: the limit is kept (%u)", st.held);
  /* Everything while down is ignored: failures do not push latency mode. */
  for (int i = 0; i < 40; i++) {
    now += IV;
    ob_cap_on_metrics_failed(&c, now);
    ob_cap_on_metrics(&c, 0, 50, NAN, 0, now);
    ob_cap_on_ttft(&c, 10 * SEC, 1, now);
    ob_cap_tick(&c, now);
  }
  TAP_EQ_INT(ob_cap_limit(&c), 0, "(7) still 0 while down");
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_METRICS, "(7) source unchanged while down");
  ob_cap_on_up(&c, now);
  TAP_EQ_INT(ob_cap_limit(&c), held, "(7) up: the held limit comes back");
  ob_cap_on_up(&c, now);
  TAP_EQ_INT(ob_cap_limit(&c), held, "(7) a second up is a no-op");
  ob_cap_tick(&c, now + 3 * IV);
  TAP_EQ_INT(ob_cap_source(&c), OB_CAP_METRICS, "(7) staleness counts from up");
  ideal_run(&c, &b, &now, 10 * SEC, NULL, NULL, 0);
  TAP_CHECK(ob_cap_limit(&c) >= 24 && ob_cap_limit(&c) <= 25, "(7) control resumes after up (%u)", ob_cap_limit(&c));
}

static void test_params(void) {
  ob_cap_t c;
  ob_cap_init(&c, NULL, 0, 0);
  TAP_EQ_INT(ob_cap_limit(&c), 1, "defaults: initial 0 clamped to min 1");
  TAP_EQ_STR(ob_cap_source_name(ob_cap_source(&c)), "static", "source name static");
  TAP_EQ_STR(ob_cap_source_name(OB_CAP_METRICS), "metrics", "source name metrics");
  TAP_EQ_STR(ob_cap_source_name(OB_CAP_LATENCY), "latency", "source name latency");
  ob_cap_init(&c, NULL, 100000, 0);
  TAP_EQ_INT(ob_cap_limit(&c), 512, "defaults: initial clamped to max 512");
  ob_cap_params_t p = {.min = 0, .max = 0, .interval_ms = 0, .target_waiting = NAN, .kv_high = NAN};
  ob_cap_init(&c, &p, 5, 0);
  TAP_EQ_INT(ob_cap_limit(&c), 1, "min 0 -> 1, max 0 -> min");
  ob_cap_on_metrics(&c, 1, 0, NAN, 1, 250 * MS);
  ob_cap_on_metrics(&c, 1, 0, NAN, 1, 500 * MS);
  TAP_EQ_INT(ob_cap_limit(&c), 1, "min == max: the limit cannot move");
  ob_cap_stats_t st;
  ob_cap_init(&c, NULL, 8, 0);
  ob_cap_stats(&c, &st);
  TAP_CHECK(isnan(st.waiting) && isnan(st.kv_usage) && isnan(st.ttft_us) && isnan(st.ttft_baseline_us) &&
                st.source == OB_CAP_STATIC && st.limit == 8,
            "stats before any signal: NaN signals, static");
  /* A capacity change between two scrapes far apart still moves at most
   * 25 % per step: one mad scrape cannot empty the endpoint. */
  ob_cap_params_t q = params(1, 512);
  ideal_t b = {.slots = 100};
  uint64_t now = 0;
  ob_cap_init(&c, &q, 8, now);
  ideal_run(&c, &b, &now, 10 * SEC, NULL, NULL, 0);
  ob_cap_on_metrics(&c, 0, 1000, 0.5, 100, now += IV);
  TAP_EQ_INT(ob_cap_limit(&c), 75, "a wild scrape (running 0, waiting 1000) takes 25 %, not all");
  /* Scrapes faster than the interval take no extra steps. */
  uint32_t l = ob_cap_limit(&c);
  ob_cap_on_metrics(&c, 0, 1000, 0.5, 75, now + 10 * MS);
  ob_cap_on_metrics(&c, 0, 1000, 0.5, 75, now + 20 * MS);
  TAP_EQ_INT(ob_cap_limit(&c), l, "scrapes 10 ms apart take no extra step");
}

/* (6) Seeded random events: never outside [min, max], never 0 unless down. */
static void test_random_bounds(void) {
  uint64_t seed = 12345;
  int bad = 0, zero_up = 0, nonzero_down = 0;
  for (int run = 0; run < 200 && !bad; run++) {
    ob_cap_params_t p = params(1 + (uint32_t)(rnd(&seed) % 8), 0);
    p.max = p.min + (uint32_t)(rnd(&seed) % 300);
    p.interval_ms = 50 + (uint32_t)(rnd(&seed) % 500);
    p.target_waiting = (double)(rnd(&seed) % 4);
    p.kv_high = 0.5 + urand(&seed) / 2;
    ob_cap_t c;
    uint64_t now = rnd(&seed);
    ob_cap_init(&c, &p, (uint32_t)(rnd(&seed) % 400), now);
    bool down = false;
    for (int i = 0; i < 3000; i++) {
      uint64_t dt = rnd(&seed) % 4 == 0 ? rnd(&seed) % (20 * SEC) : rnd(&seed) % (300 * MS);
      if (rnd(&seed) % 50 == 0) dt = 0 - dt % SEC; /* time going backwards */
      now += dt;
      double vals[] = {0, 1, 3, 17, 100, 1e6, 1e300, -1, NAN, INFINITY};
      double running = vals[rnd(&seed) % 10], waiting = vals[rnd(&seed) % 10];
      if (rnd(&seed) % 2) running = (double)(rnd(&seed) % 300), waiting = (double)(rnd(&seed) % 20);
      double kv = rnd(&seed) % 3 ? urand(&seed) * 1.2 : vals[rnd(&seed) % 10];
      uint32_t inflight = rnd(&seed) % 8 ? ob_cap_limit(&c) : (uint32_t)rnd(&seed);
      switch (rnd(&seed) % 16) {
      case 0: ob_cap_on_down(&c, now), down = true; break;
      case 1: ob_cap_on_up(&c, now), down = false; break;
      case 2: case 3: ob_cap_on_metrics_failed(&c, now); break;
      case 4: ob_cap_tick(&c, now); break;
      case 5: case 6: case 7: case 8:
        ob_cap_on_ttft(&c, rnd(&seed) % 4 ? rnd(&seed) % (2 * SEC) : (uint64_t)0 - rnd(&seed), inflight, now);
        break;
      default: ob_cap_on_metrics(&c, running, waiting, kv, inflight, now); break;
      }
      uint32_t l = ob_cap_limit(&c);
      if (down) {
        if (l) nonzero_down++, bad = 1;
      } else if (l == 0) {
        zero_up++, bad = 1;
      } else if (l < p.min || l > p.max) {
        bad = 1;
        printf("#   run %d step %d: limit %u outside [%u, %u]\n", run, i, l, p.min, p.max);
      }
    }
  }
  TAP_CHECK(!bad, "(6) 200 random runs x 3000 events: limit in [min, max] while up, 0 while down");
  TAP_CHECK(!zero_up && !nonzero_down, "(6) 0 exactly when down (%d up at 0, %d down above 0)", zero_up, nonzero_down);
}

int main(void) {
  test_converge_halve_double();
  test_target_waiting();
  test_kv_high();
  test_noisy_scrapes();
  test_no_growth_when_idle();
  test_preemption_burst();
  test_head_of_line();
  test_request_level();
  test_latency_mode();
  test_stale();
  test_down_up();
  test_params();
  test_random_bounds();
  return tap_done();
}
