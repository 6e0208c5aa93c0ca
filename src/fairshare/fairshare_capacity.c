/*
 * fairshare_capacity.c: the capacity controller behind `max_inflight:
 * "auto"`, one per upstream endpoint. It owns the control law and nothing
 * else: it is told what the backend reported and when, and answers with a
 * limit. It must not scrape, parse, log, allocate or read a clock (the
 * scraper, the Prometheus parser and the wiring live elsewhere).
 *
 * The law, metrics mode. The aim is the backend's own queue held at
 * target_waiting while the backend is kept full: a request waiting inside
 * vLLM is served first come first served, so every one there beyond the
 * target is fairness lost, and every idle slot is throughput lost. Each good
 * scrape updates an EWMA of waiting and KV usage (half-life one interval;
 * one scrape weighs at most half) and a ring of the last 4 running counts.
 * Then at most one step per 3/4 interval, whatever the scrape rate:
 *   - A KV-bound queue first. When the KV cache is full (fewer than
 *     KV_FULL_SEQS = 3 sequences of today's mean size, running / kv -
 *     running, would still fit), a request waiting in the backend is most
 *     likely a prompt that does not fit yet (vLLM admits first come first
 *     served, so it blocks those behind it) or a sequence preempted when
 *     the running ones grew: the KV cache overflowed, the backend did not
 *     lose capacity. Then, unless the excess is above 2 and above
 *     KV_BIG_EXCESS = 1/4 of the limit, the limit loses one sequence
 *     (never below running + target), sets no ceiling and holds growth for
 *     KV_HOLD = 2 intervals; the trim is taken when the last step was an
 *     increase, when the backend preempted since the last step, or when
 *     the queue lingers (then at most every KV_TRIM_GAP = 4 intervals), so
 *     a burst that drains over several scrapes costs one, not one a
 *     scrape. (The old answer, a cut to the running count held 2 s, kept
 *     the mixed phase at 65-94 % of the best static setting and made the
 *     short phase saw-tooth 24..33 on preemption bursts.) A preemption is
 *     the backend's counter rising (ob_cap_on_preemptions, vLLM's
 *     vllm:num_preemptions_total) or, without it, running falling while
 *     waiting rises with the KV cache full.
 *   - Decrease when the backend queues otherwise: raw waiting above target
 *     and either the smoothed waiting above target + WAIT_BAND (0.75: a
 *     single scrape that catches one or two requests between scheduler
 *     steps is not a queue; two in a row are), the last step was an
 *     increase (a probe that failed is answered at once) or the backend
 *     preempted. The limit goes to an absolute level, so a queue that
 *     takes a while to drain is never cut twice:
 *       a big excess (> 2 and > 1/8 of the limit, > 1/4 with the KV cache
 *         full: capacity really dropped): running + target, or obleth's
 *         inflight minus the excess when that is lower (a backend shared
 *         with clients obleth does not see);
 *       a small excess: the most running seen in the last 4 scrapes +
 *         target, because a scrape caught mid-step shows running one or two
 *         short (without this, 30 % of such scrapes walked the limit to 1).
 *     One step removes at most MD_MAX = 25 % (one wild scrape cannot empty
 *     the endpoint), so a halving is answered in 3 steps (0.75 s) and a drop
 *     to an eighth in 8 (2 s). The level becomes the ceiling (not with the
 *     KV cache full: the count that fits moves with the mix of requests),
 *     and growth is held for HOLD = 8 intervals (2 s; KV_HOLD with the KV
 *     cache full, where the KV room gates growth) while the backend drains.
 *   - Increase only when nothing queues (raw waiting <= target, smoothed
 *     within the band), obleth saturates the endpoint (inflight within 10 %
 *     of the limit: otherwise there is no evidence the backend could take
 *     more, and an idle endpoint must not drift up), KV usage is below
 *     kv_high (vLLM's real limit is its KV cache: past it more sequences
 *     mean preemptions, not throughput), the hold is over, and the backend
 *     has not preempted for PREEMPT_QUIET = 2 intervals (PREEMPT_HOLD = 4
 *     while the backend's waiting mean over the last seconds, an EWMA with
 *     a half-life of WAIT_SLOW_HL = 8 intervals, is above target +
 *     WAIT_SLOW_BAND = 0.3: each preempted sequence is a waiting one, and
 *     that mean is the budget). The step starts at 1 and doubles after
 *     each increase the backend took without queueing, capped at half the
 *     limit before the backend ever queued (slow start, log time) and at a
 *     quarter after (grown capacity is re-found in seconds; the overshoot is
 *     at most one step), and stays 1 within 2 * KV_FULL_SEQS mean sequences
 *     of a full KV cache (its usage swings with every completion there; a
 *     doubled step overshot into preemptions). It stops at the ceiling when
 *     coming from below (and holds there again), and at the KV room,
 *     running * kv_high / kv, where KV would reach kv_high at today's usage
 *     per sequence (long prompts find their level without overshooting).
 *     When the room is less than one more sequence but half a mean
 *     sequence still fits (running / kv >= limit + KV_PROBE_ROOM), one more
 *     is tried at most every KV_PROBE = 4 intervals and not while the
 *     waiting budget is spent: the mean hides an uneven mix (a short request
 *     fits beside long ones), and a prompt that does not fit is answered by
 *     the KV trim above.
 * At steady state this is one +1 probe every HOLD + 1 intervals, answered
 * by the next scrape: the limit moves between S and S + 1 and the backend
 * holds one request too many for one scrape in nine (waiting mean ~0.11).
 *
 * The law, latency mode (no metrics: 3 failed scrapes in a row, or none
 * good for 4 intervals; metrics again after 2 good scrapes in a row).
 * Gradient style, as Envoy's adaptive concurrency and Netflix's gradient2.
 * Each time to first token carries its send time (now - ttft); only samples
 * sent since the limit last changed count for the next step, because a
 * request sent into the old queue reports it long after it is gone (with
 * all samples the limit kept falling for a second after the queue had
 * drained and swung 20..44 around S = 40). Once per interval with at least
 * LAT_MIN_SAMPLES = 3 such samples (or 1 after 4 intervals), with cur their
 * mean:
 *   gradient = clamp(LAT_TOL * baseline / cur, 0.5, 1)
 *   want     = limit * gradient + sqrt(limit)   (the sqrt only when saturated)
 *   limit   += LAT_SMOOTH * (want - limit)
 * LAT_TOL = 1.25 absorbs the spread of prompt lengths; sqrt(limit) is the
 * headroom that keeps probing, relatively smaller as the limit grows;
 * LAT_SMOOTH = 0.5 halves each correction against noise. The equilibrium
 * is ttft = LAT_TOL * baseline / (1 - 1/sqrt(limit)), a short queue
 * (1.5x the baseline at limit 32). The baseline is the lowest of the 10 s
 * bucket means of the smoothed ttft (per-sample EWMA, TTFT_ALPHA = 0.25)
 * over the last 50-60 s: means, so a few short prompts cannot drag it down.
 * Re-probe: a persistent queue would become its own baseline once the
 * window forgets the unqueued past, so every REPROBE = 30 s the limit is
 * lowered to 3/4 until PROBE_SAMPLES = 4 requests sent under it answer (or
 * PROBE_MAX = 3 s passes), and their mean enters the window (Envoy's
 * periodic min-RTT measurement, but only a quarter lower, because inference
 * requests drain slowly). A probe also comes early, at most every 2 s, when
 * PIN_STEPS = 4 steps in a row were above tolerance; if the probe's mean is
 * within PROBE_SAME = 80 % of the smoothed ttft before it, a quarter fewer
 * requests did not make the first token come sooner: what the baseline
 * called queueing is the requests themselves (prompts ten times longer, a
 * slower model), and the window restarts from the probe instead of the
 * limit collapsing for a whole window.
 *
 * Metrics that go stale or fail never move the limit: the last good limit
 * stays until latency mode takes over. The latency signal is tracked in
 * every mode (warm when needed) and moves the limit only in latency mode.
 */
#include "fairshare.h"

#include <math.h>

/* metrics mode */
#define WAIT_BAND 0.75         /* smoothed waiting above target + this = queueing */
#define MD_MAX 0.25            /* most one decrease step removes */
#define BIG_EXCESS 0.125       /* an excess queue above 1/8 of the limit ... */
#define BIG_EXCESS_MIN 2       /* ... and above 2 is a capacity drop, not noise */
#define HOLD_INTERVALS 8       /* no growth after a decrease or at the ceiling */
#define SAT_SLACK 0.1          /* saturated: inflight >= limit - floor(10 %) */
#define SLOW_START_CAP 0.5     /* growth step cap before the first queue ... */
#define PROBE_CAP 0.25         /* ... and after, as a fraction of the limit */
#define STEP_EVERY 0.75        /* control steps at most once per 3/4 interval */
#define KV_FULL_SEQS 3         /* KV full: fewer than this many more average sequences fit */
#define KV_BIG_EXCESS 0.25     /* with the KV cache full, a capacity drop is above 1/4 */
#define KV_TRIM_GAP 4          /* intervals between two trims of a lingering KV queue */
#define KV_HOLD 2              /* intervals without growth after a KV trim ... */
#define PREEMPT_QUIET 2        /* ... and after the backend last preempted, */
#define WAIT_SLOW_HL 8         /* half-life (intervals) of the slow waiting mean ... */
#define WAIT_SLOW_BAND 0.3     /* ... above target + this: */
#define PREEMPT_HOLD 4         /* growth waits this long after a preemption, and no KV probe */
#define KV_PROBE 4             /* intervals between two steps above the KV room */
#define KV_PROBE_ROOM 0.5      /* ... taken when this many mean sequences still fit */
#define FAILS_TO_LATENCY 3
#define STALE_INTERVALS 4
#define OKS_TO_METRICS 2
/* latency mode */
#define TTFT_ALPHA 0.25
#define LAT_TOL 1.25
#define LAT_G_MIN 0.5
#define LAT_SMOOTH 0.5
#define LAT_MIN_SAMPLES 3
#define BASE_BUCKET_US 10000000ull
#define REPROBE_US 30000000ull
#define PROBE_FRAC 0.75
#define PROBE_SAMPLES 4
#define PROBE_MAX_US 3000000ull
#define PIN_STEPS 4            /* this many steps above tolerance call a probe ... */
#define PROBE_GAP_US 2000000ull /* ... at most this soon after the last one */
#define PROBE_SAME 0.8         /* a probe this close to before: not a queue */
/* inputs beyond these are clamped: no backend runs a billion requests */
#define SIGNAL_MAX 1e9
#define TTFT_MAX_US 3600e6

static uint64_t interval_us(const ob_cap_t *c) { return (uint64_t)c->p.interval_ms * 1000u; }

/* Time never runs backwards for a controller. */
static uint64_t advance(ob_cap_t *c, uint64_t now_us) {
  if (now_us > c->now_us) c->now_us = now_us;
  return c->now_us;
}

static void set_limit(ob_cap_t *c, double l) {
  if (!(l >= c->p.min)) l = c->p.min; /* NaN too */
  if (l > c->p.max) l = c->p.max;
  c->limit = l;
}

/* The whole requests the limit allows (the real value may sit a rounding
 * error under an integer it reached exactly). */
static uint32_t whole(const ob_cap_t *c) {
  double l = floor(c->limit + 1e-6);
  if (l < c->p.min) return c->p.min;
  if (l > c->p.max) return c->p.max;
  return (uint32_t)l;
}

static bool saturated(const ob_cap_t *c, uint32_t inflight) {
  uint32_t lim = whole(c);
  return (double)inflight + floor(SAT_SLACK * lim) >= (double)lim;
}

static double clamp_signal(double v) { return v > SIGNAL_MAX ? SIGNAL_MAX : v; }

/* ---------------------------------------------------------------- latency */

static struct ob_cap_bucket *bucket_now(ob_cap_t *c, uint64_t now_us) {
  uint64_t epoch = now_us / BASE_BUCKET_US + 1;
  struct ob_cap_bucket *b = &c->base[epoch % OB_CAP_BASE_BUCKETS];
  if (b->epoch != epoch) *b = (struct ob_cap_bucket){.epoch = epoch};
  return b;
}

/* Lowest bucket value in the window; 0 when there is none. */
static double baseline(const ob_cap_t *c) {
  uint64_t epoch = c->now_us / BASE_BUCKET_US + 1;
  double best = 0;
  for (int i = 0; i < OB_CAP_BASE_BUCKETS; i++) {
    const struct ob_cap_bucket *b = &c->base[i];
    if (!b->epoch || b->epoch + OB_CAP_BASE_BUCKETS <= epoch || b->epoch > epoch) continue;
    double v = b->n ? b->sum / b->n : 0;
    if (b->probe > 0 && (v == 0 || b->probe < v)) v = b->probe;
    if (v > 0 && (best == 0 || v < best)) best = v;
  }
  return best;
}

/* Forget the samples gathered for the next step: those sent before now say
 * nothing about the limit from now on. */
static void lat_restart(ob_cap_t *c, uint64_t now_us) {
  c->lat_sum = 0;
  c->lat_n = 0;
  c->lat_inflight = 0;
  c->lat_epoch_us = now_us;
  c->lat_step_us = now_us;
}

/* Clear the baseline window. */
static void baseline_forget(ob_cap_t *c) {
  for (int i = 0; i < OB_CAP_BASE_BUCKETS; i++) c->base[i] = (struct ob_cap_bucket){0};
}

static void probe_end(ob_cap_t *c, uint64_t now_us) {
  if (c->probe_n) {
    double mean = c->probe_sum / c->probe_n;
    /* A quarter fewer requests in flight and the first token comes no
     * sooner: what the baseline called queueing is the requests themselves
     * (longer prompts, a slower model). The probe is the baseline now. */
    if (c->probe_pre > 0 && mean >= PROBE_SAME * c->probe_pre) baseline_forget(c);
    struct ob_cap_bucket *b = bucket_now(c, now_us);
    if (b->probe == 0 || mean < b->probe) b->probe = mean;
  }
  c->probing = false;
  c->probe_end_us = now_us;
  c->next_probe_us = now_us + REPROBE_US;
  c->lat_high = 0;
  lat_restart(c, now_us);
}

static void probe_timers(ob_cap_t *c, uint64_t now_us) {
  if (c->probing) {
    uint64_t max = PROBE_MAX_US > 8 * interval_us(c) ? PROBE_MAX_US : 8 * interval_us(c);
    if (now_us - c->probe_start_us >= max) probe_end(c, now_us);
    return;
  }
  if (c->source != OB_CAP_LATENCY || baseline(c) == 0) return;
  bool pinned = c->lat_high >= PIN_STEPS && now_us - c->probe_end_us >= PROBE_GAP_US;
  if (now_us < c->next_probe_us && !pinned) return;
  uint32_t lim = whole(c);
  uint32_t pl = (uint32_t)floor(PROBE_FRAC * lim);
  if (pl < c->p.min) pl = c->p.min;
  if (pl >= lim) {
    /* Too small to lower: its samples are as good as a probe's. */
    if (pinned && c->ttft_s > 0) {
      baseline_forget(c);
      bucket_now(c, now_us)->probe = c->ttft_s;
    }
    c->next_probe_us = now_us + REPROBE_US;
    c->lat_high = 0;
    return;
  }
  c->probing = true;
  c->probe_limit = pl;
  c->probe_start_us = now_us;
  c->probe_n = 0;
  c->probe_sum = 0;
  c->probe_pre = c->ttft_s;
}

static void to_latency(ob_cap_t *c, uint64_t now_us) {
  if (c->source == OB_CAP_LATENCY) return;
  c->source = OB_CAP_LATENCY;
  c->oks = 0;
  c->lat_high = 0;
  lat_restart(c, now_us);
  c->next_probe_us = now_us + REPROBE_US;
}

static void to_metrics(ob_cap_t *c, uint64_t now_us) {
  bool from_latency = c->source == OB_CAP_LATENCY;
  c->source = OB_CAP_METRICS;
  c->probing = false;
  c->raised = false;
  c->grow_step = 1;
  c->hold_until_us = now_us;
  /* Out of latency mode the limit is a known level: probe above it
   * carefully. From the initial limit nothing is known: slow start. */
  c->ceiling = from_latency ? c->limit : 0;
  c->congested_once = from_latency;
}

static void check_stale(ob_cap_t *c, uint64_t now_us) {
  if (c->source != OB_CAP_LATENCY && now_us - c->ok_us > STALE_INTERVALS * interval_us(c)) to_latency(c, now_us);
}

/* One gradient step over the fresh samples since the last one. */
static void latency_step(ob_cap_t *c, uint64_t now_us) {
  double base = baseline(c);
  if (!(base > 0) || !c->lat_n) return;
  double cur = c->lat_sum / c->lat_n;
  double g = LAT_TOL * base / cur;
  c->lat_high = g < 1 ? c->lat_high + 1 : 0;
  if (g > 1) g = 1;
  if (g < LAT_G_MIN) g = LAT_G_MIN;
  double l = c->limit;
  uint32_t before = whole(c);
  double want = l * g;
  if (saturated(c, c->lat_inflight)) want += sqrt(l);
  set_limit(c, l + LAT_SMOOTH * (want - l));
  c->lat_sum = 0;
  c->lat_n = 0;
  c->lat_inflight = 0;
  c->lat_step_us = now_us;
  if (whole(c) != before) c->lat_epoch_us = now_us;
}

/* ---------------------------------------------------------------- metrics */

static bool kv_blocks(const ob_cap_t *c) {
  return (!isnan(c->kv) && c->kv >= c->p.kv_high) || (!isnan(c->kv_s) && c->kv_s >= c->p.kv_high);
}

/* The KV cache, not the request count, is what binds: fewer than
 * KV_FULL_SEQS more sequences of today's mean size would fit. A request
 * waiting then is most likely a prompt that does not fit yet (vLLM admits
 * first come first served, so it blocks those behind it) or a sequence
 * preempted when the running ones grew: neither means the backend lost
 * capacity. */
static double kv_spare(double running, double kv) {
  if (isnan(kv) || !(kv > 0) || !(running >= 1)) return INFINITY;
  return running / kv - running;
}

static bool kv_full(double running, double kv) { return kv_spare(running, kv) < KV_FULL_SEQS; }

static void metrics_step(ob_cap_t *c, uint32_t inflight, uint64_t now_us) {
  double tgt = c->p.target_waiting;
  double l = c->limit;
  double excess = c->waiting - tgt;
  bool kvf = kv_full(c->running, c->kv);
  bool preempted = c->preempt_new > 0;
  c->preempt_new = 0;
  if (preempted) c->preempt_us = now_us;
  bool queueing = excess > 0 && (c->waiting_s > tgt + WAIT_BAND || c->raised || preempted);

  if (queueing && kvf && !(excess > BIG_EXCESS_MIN && excess > KV_BIG_EXCESS * l)) {
    /* The KV cache overflowed (a preemption) or a prompt waits for room:
     * one sequence fewer, no ceiling, growth held only briefly (it is
     * gated by the KV room below). A queue that lingers without a new
     * event is trimmed again at most every KV_TRIM_GAP intervals. */
    bool event = c->raised || preempted || now_us - c->trim_us >= KV_TRIM_GAP * interval_us(c);
    c->raised = false;
    c->grow_step = 1;
    c->congested_once = true;
    if (!event) return;
    double level = (double)whole(c) - 1;
    if (level < c->running + tgt) level = c->running + tgt;
    c->trim_us = now_us;
    c->hold_until_us = now_us + KV_HOLD * interval_us(c);
    if (level < l) set_limit(c, level);
    return;
  }
  if (queueing) {
    double level;
    if (excess > BIG_EXCESS_MIN && excess > (kvf ? KV_BIG_EXCESS : BIG_EXCESS) * l) {
      /* A real drop: what runs now, or less when obleth's own share is
       * smaller (clients obleth does not see also queue there). */
      level = c->running + tgt;
      double ours = (double)inflight - excess;
      if (ours < level) level = ours;
      /* What ran before the drop no longer says what can run. */
      for (int i = 0; i < 4; i++) c->run_hist[i] = c->running;
    } else {
      /* A request or two: the backend has shown it runs as many as the
       * most it ran in the last scrapes; one caught between two scheduler
       * steps (running one short, waiting one up) must not count as less. */
      double seen = 0;
      for (int i = 0; i < 4; i++)
        if (c->run_hist[i] > seen) seen = c->run_hist[i];
      level = seen + tgt;
    }
    c->raised = false;
    c->grow_step = 1;
    if (!(level < l)) return; /* nothing to take back */
    double floor_ = l * (1 - MD_MAX);
    set_limit(c, level > floor_ ? level : floor_);
    /* With the KV cache full the count that fits moves with the mix of
     * requests: no ceiling, the KV room gates growth instead. */
    c->ceiling = kvf ? 0 : level > c->p.min ? level : c->p.min;
    c->congested_once = true;
    /* With the KV cache full, growth is gated by the KV room: no long hold. */
    c->hold_until_us = now_us + (kvf ? KV_HOLD : HOLD_INTERVALS) * interval_us(c);
    return;
  }
  c->raised = false;
  bool calm = c->waiting <= tgt && c->waiting_s <= tgt + WAIT_BAND;
  if (!calm || !saturated(c, inflight) || kv_blocks(c)) {
    c->grow_step = 1;
    return;
  }
  if (now_us < c->hold_until_us) return;
  /* After a preemption growth waits a little, or a full hold while the
   * backend's queue over the last seconds is above its budget (each
   * preemption is a sequence waiting: the mean counts them). */
  bool over = c->waiting_l > tgt + WAIT_SLOW_BAND;
  if (c->preempt_us && now_us - c->preempt_us < (over ? PREEMPT_HOLD : PREEMPT_QUIET) * interval_us(c)) return;

  double step = c->grow_step;
  double next = l + step;
  bool at_ceiling = false, kv_capped = false;
  if (c->ceiling > 0 && l < c->ceiling && next >= c->ceiling) {
    next = c->ceiling;
    at_ceiling = true;
  }
  /* Where KV would reach kv_high at the current usage per running
   * sequence: long-context requests find their level without first
   * overshooting into the KV cache. */
  if (!isnan(c->kv) && c->kv > 0 && c->running >= 1) {
    double room = c->running * c->p.kv_high / c->kv;
    if (next > room) {
      kv_capped = true;
      if (room >= l + 1) {
        next = room;
      } else if (c->running / c->kv >= (double)whole(c) + KV_PROBE_ROOM && now_us >= c->kv_probe_us && !over) {
        /* The mean says no, but half a mean sequence still fits and the
         * mix may be uneven (a short request beside long ones): one more,
         * at most once per KV_PROBE intervals. A prompt that does not fit
         * is answered by a trim of one. */
        next = (double)whole(c) + 1;
        c->kv_probe_us = now_us + KV_PROBE * interval_us(c);
      } else {
        next = l;
      }
    }
  }
  set_limit(c, next);
  c->raised = c->limit > l;
  if (kv_capped) {
    c->grow_step = 1;
  } else if (at_ceiling) {
    c->hold_until_us = now_us + HOLD_INTERVALS * interval_us(c);
    c->grow_step = 1;
  } else if (kv_spare(c->running, c->kv_s > c->kv ? c->kv_s : c->kv) < 2 * KV_FULL_SEQS) {
    /* Near a full KV cache its usage swings with every completion: one
     * sequence at a time (a doubled step overshot into preemptions). */
    c->grow_step = 1;
  } else {
    double cap = c->limit * (c->congested_once ? PROBE_CAP : SLOW_START_CAP);
    if (cap < 1) cap = 1;
    c->grow_step = 2 * step < cap ? 2 * step : cap;
  }
}

/* ---------------------------------------------------------------- API */

void ob_cap_params_default(ob_cap_params_t *p) {
  *p = (ob_cap_params_t){.min = 1, .max = 512, .interval_ms = 250, .target_waiting = 0, .kv_high = 0.95};
}

void ob_cap_init(ob_cap_t *c, const ob_cap_params_t *p, uint32_t initial, uint64_t now_us) {
  memset(c, 0, sizeof *c);
  if (p)
    c->p = *p;
  else
    ob_cap_params_default(&c->p);
  if (c->p.min < 1) c->p.min = 1;
  if (c->p.max < c->p.min) c->p.max = c->p.min;
  if (!c->p.interval_ms) c->p.interval_ms = 250;
  if (!(c->p.target_waiting >= 0)) c->p.target_waiting = 0;
  if (c->p.target_waiting > SIGNAL_MAX) c->p.target_waiting = SIGNAL_MAX;
  if (!(c->p.kv_high > 0)) c->p.kv_high = 0.95;
  c->source = OB_CAP_STATIC;
  c->now_us = now_us;
  c->ok_us = now_us;
  lat_restart(c, now_us);
  c->lat_feed_us = now_us;
  c->next_probe_us = now_us + REPROBE_US;
  c->running = c->waiting = c->kv = c->waiting_s = c->kv_s = NAN;
  c->preempt_total = NAN;
  c->grow_step = 1;
  set_limit(c, initial);
}

void ob_cap_on_metrics(ob_cap_t *c, double running, double waiting, double kv_usage, uint32_t inflight,
                       uint64_t now_us) {
  now_us = advance(c, now_us);
  if (c->down) return;
  if (!(running >= 0) || !(waiting >= 0)) {
    ob_cap_on_metrics_failed(c, now_us);
    return;
  }
  running = clamp_signal(running);
  waiting = clamp_signal(waiting);
  if (!isnan(kv_usage)) kv_usage = kv_usage < 0 ? 0 : kv_usage > 1 ? 1 : kv_usage;

  /* Without the counter: running down and waiting up together, with the
   * KV cache full, is sequences preempted. */
  if (!c->preempt_known && c->have_scrape && kv_full(running, kv_usage) && running < c->running &&
      waiting > c->waiting) {
    double moved = c->running - running < waiting - c->waiting ? c->running - running : waiting - c->waiting;
    c->preempt_new += moved;
  }
  c->preempt_known = false;

  /* EWMA with a half-life of one interval; a scrape after a longer gap is
   * still one observation and weighs no more than half. */
  if (c->have_scrape && !isnan(c->waiting_s)) {
    double a = 1 - exp2(-(double)(now_us - c->scrape_us) / (double)interval_us(c));
    if (a > 0.5) a = 0.5;
    c->waiting_s += a * (waiting - c->waiting_s);
    double al = 1 - exp2(-(double)(now_us - c->scrape_us) / (double)(WAIT_SLOW_HL * interval_us(c)));
    c->waiting_l += (al < 0.5 ? al : 0.5) * (waiting - c->waiting_l);
    c->kv_s = isnan(kv_usage) || isnan(c->kv_s) ? kv_usage : c->kv_s + a * (kv_usage - c->kv_s);
  } else {
    c->waiting_s = c->waiting_l = waiting;
    c->kv_s = kv_usage;
  }
  c->running = running;
  c->run_hist[c->run_next++ % 4] = running;
  c->waiting = waiting;
  c->kv = kv_usage;
  c->have_scrape = true;
  c->scrape_us = now_us;
  c->ok_us = now_us;
  c->fails = 0;
  if (c->oks < UINT32_MAX) c->oks++;

  if (c->source == OB_CAP_STATIC || (c->source == OB_CAP_LATENCY && c->oks >= OKS_TO_METRICS))
    to_metrics(c, now_us);
  if (c->source != OB_CAP_METRICS) {
    probe_timers(c, now_us);
    return;
  }
  if (c->have_step && (double)(now_us - c->step_us) < STEP_EVERY * (double)interval_us(c)) return;
  c->have_step = true;
  c->step_us = now_us;
  metrics_step(c, inflight, now_us);
}

void ob_cap_on_preemptions(ob_cap_t *c, double total, uint64_t now_us) {
  advance(c, now_us);
  if (c->down) return;
  if (!(total >= 0)) {
    c->preempt_known = false;
    return;
  }
  total = clamp_signal(total);
  if (!isnan(c->preempt_total) && total > c->preempt_total) c->preempt_new += total - c->preempt_total;
  c->preempt_total = total;
  c->preempt_known = true;
}

void ob_cap_on_metrics_failed(ob_cap_t *c, uint64_t now_us) {
  now_us = advance(c, now_us);
  if (c->down) return;
  c->oks = 0;
  if (c->fails < UINT32_MAX) c->fails++;
  if (c->fails >= FAILS_TO_LATENCY) to_latency(c, now_us);
  check_stale(c, now_us);
  probe_timers(c, now_us);
}

void ob_cap_on_ttft(ob_cap_t *c, uint64_t ttft_us, uint32_t inflight, uint64_t now_us) {
  now_us = advance(c, now_us);
  if (c->down) return;
  check_stale(c, now_us);
  probe_timers(c, now_us);
  double t = (double)ttft_us;
  if (t < 1) t = 1;
  if (t > TTFT_MAX_US) t = TTFT_MAX_US;

  if (c->probing) {
    /* Only requests sent under the probe limit measure the baseline; all
     * others were sent into the queue being measured away. */
    if (inflight <= c->probe_limit && (double)now_us - t >= (double)c->probe_start_us) {
      c->probe_sum += t;
      c->probe_n++;
      if (c->probe_n >= PROBE_SAMPLES) probe_end(c, now_us);
    }
    return;
  }
  c->ttft_s = c->ttft_s > 0 ? c->ttft_s + TTFT_ALPHA * (t - c->ttft_s) : t;
  if (now_us - c->lat_feed_us >= interval_us(c)) {
    struct ob_cap_bucket *b = bucket_now(c, now_us);
    b->sum += c->ttft_s;
    b->n++;
    c->lat_feed_us = now_us;
  }
  /* Sent before the limit last changed: it measured the old limit. */
  if ((double)now_us - t < (double)c->lat_epoch_us) return;
  c->lat_sum += t;
  c->lat_n++;
  if (inflight > c->lat_inflight) c->lat_inflight = inflight;
  if (c->source != OB_CAP_LATENCY || now_us - c->lat_step_us < interval_us(c)) return;
  if (c->lat_n < LAT_MIN_SAMPLES && now_us - c->lat_step_us < 4 * interval_us(c)) return;
  latency_step(c, now_us);
}

void ob_cap_tick(ob_cap_t *c, uint64_t now_us) {
  now_us = advance(c, now_us);
  if (c->down) return;
  check_stale(c, now_us);
  probe_timers(c, now_us);
}

void ob_cap_on_down(ob_cap_t *c, uint64_t now_us) {
  advance(c, now_us);
  c->down = true;
  c->probing = false;
}

void ob_cap_on_up(ob_cap_t *c, uint64_t now_us) {
  now_us = advance(c, now_us);
  if (!c->down) return;
  c->down = false;
  /* A fresh start for the signals, not for the limit: staleness counts
   * from now, and a backend that restarted empty gets time to fill. */
  c->ok_us = now_us;
  c->fails = 0;
  c->oks = 0;
  c->raised = false;
  c->grow_step = 1;
  c->hold_until_us = now_us + HOLD_INTERVALS * interval_us(c);
  c->lat_high = 0;
  lat_restart(c, now_us);
  c->next_probe_us = now_us + REPROBE_US;
}

uint32_t ob_cap_limit(const ob_cap_t *c) {
  if (c->down) return 0;
  uint32_t l = whole(c);
  if (c->probing && c->probe_limit < l) return c->probe_limit;
  return l;
}

ob_cap_source_t ob_cap_source(const ob_cap_t *c) { return c->source; }

const char *ob_cap_source_name(ob_cap_source_t s) {
  switch (s) {
  case OB_CAP_METRICS: return "metrics";
  case OB_CAP_LATENCY: return "latency";
  case OB_CAP_STATIC: return "static";
  }
  return "static";
}

double ob_cap_waiting(const ob_cap_t *c) { return c->waiting; }
double ob_cap_kv_usage(const ob_cap_t *c) { return c->kv; }

void ob_cap_stats(const ob_cap_t *c, ob_cap_stats_t *out) {
  double base = baseline(c);
  *out = (ob_cap_stats_t){
      .limit = ob_cap_limit(c),
      .held = whole(c),
      .source = c->source,
      .down = c->down,
      .probing = c->probing,
      .failed_scrapes = c->fails,
      .running = c->running,
      .waiting = c->waiting,
      .kv_usage = c->kv,
      .ttft_us = c->ttft_s > 0 ? c->ttft_s : NAN,
      .ttft_baseline_us = base > 0 ? base : NAN,
  };
}
