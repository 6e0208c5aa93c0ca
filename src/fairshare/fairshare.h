/*
 * fairshare: the admission scheduler. Pure: no I/O, no clock of its own
 * (every call that needs time takes `now_us`), no allocation per decision
 * beyond what a tenant or pool needs once. Uses only core.
 *
 * Vocabulary (docs/fairshare.md):
 *   pool    a set of `max_inflight` slots (one per upstream); a request holds
 *           one slot of its pool from grant until release.
 *   group   tenants sharing a weight at the top level (production, batch ...).
 *   tenant  a caller with a weight inside its group, its own caps and a FIFO
 *           queue per pool.
 *   cost    what a request is charged: 1 (cost = requests) or an estimate of
 *           its tokens, corrected to the actual usage at release.
 *   service cost actually charged to a tenant or group so far.
 *   deficit the DRR credit a tenant or group has left in the current round.
 *
 * Modes:
 *   OB_FS_HIERARCHICAL  deficit round robin across the groups backlogged in a
 *                       pool (by group weight); inside the chosen group, DRR
 *                       across its backlogged tenants (by tenant weight);
 *                       FIFO inside a tenant.
 *   OB_FS_WEIGHTED      one DRR across all tenants by tenant weight.
 *   OB_FS_FIFO          one first-come queue per pool (the baseline).
 *
 * Each decision costs O(1) amortised (DRR with a quantum scaled so that one
 * visit to a backlogged tenant can always pay for its head request) plus
 * O(log n) for the deadline heap; no call scans all tenants.
 *
 * Ownership: the scheduler owns tenants, groups and pools it creates; a
 * request (ob_fs_req_t) is caller storage that the scheduler links into its
 * queues between ob_fs_submit and the request's grant, cancel or expiry, and
 * counts in flight between grant and ob_fs_release. Caller storage must stay
 * valid (and must not move) for that whole time.
 */
#ifndef OB_FAIRSHARE_H
#define OB_FAIRSHARE_H

#include "core.h"

typedef struct ob_fs ob_fs_t;

typedef enum { OB_FS_HIERARCHICAL, OB_FS_WEIGHTED, OB_FS_FIFO } ob_fs_mode_t;

/* Identifiers handed out by the scheduler; stable for its lifetime. */
typedef uint32_t ob_fs_pool_id;
typedef uint32_t ob_fs_group_id;
typedef uint32_t ob_fs_tenant_id;

typedef struct ob_fs_params {
  ob_fs_mode_t mode;
  uint32_t max_inflight;     /* all pools together; 0 = unlimited */
  uint32_t max_queue;        /* queued requests in all pools together; 0 = unlimited */
  uint64_t quantum;          /* DRR quantum per unit of weight; 0 = automatic (the
                                largest cost seen so far, so one visit pays for any head) */
} ob_fs_params_t;

typedef struct ob_fs_tenant_params {
  ob_fs_group_id group;
  uint32_t weight;           /* >= 1 */
  uint32_t max_inflight;     /* across pools; 0 = unlimited */
  uint32_t max_queue;        /* across pools; 0 = unlimited */
} ob_fs_tenant_params_t;

/* A request as the scheduler sees it. Caller storage; fields marked `in`
 * are set by the caller before ob_fs_submit, the rest are private. */
typedef struct ob_fs_req {
  /* in */
  ob_fs_pool_id pool;
  ob_fs_tenant_id tenant;
  uint64_t cost;             /* estimate, >= 1 */
  uint64_t deadline_us;      /* absolute; 0 = none. Queued past it -> expired */
  void *user;                /* caller's back pointer (the exchange) */
  /* private */
  struct ob_fs_req *next, *prev; /* tenant FIFO links (or the FIFO-mode queue) */
  uint64_t enqueued_us;
  size_t heap_index;         /* position in the deadline heap, SIZE_MAX when absent */
  int state;
} ob_fs_req_t;

/* ---------------------------------------------------------------- setup */

ob_fs_t *ob_fs_create(const ob_fs_params_t *p);
/* Free the scheduler. Requests still linked are simply forgotten. NULL ok. */
void ob_fs_destroy(ob_fs_t *fs);
/* Change mode/caps/quantum at run time; queued requests keep their place.
 * Changing the mode with requests queued is allowed: they are re-queued in
 * arrival order. */
void ob_fs_set_params(ob_fs_t *fs, const ob_fs_params_t *p);

/* Pools, groups and tenants. name: borrowed for the call (copied, used in
 * stats). max_inflight 0 = unlimited; weight >= 1. */
ob_fs_pool_id ob_fs_pool_add(ob_fs_t *fs, const char *name, uint32_t max_inflight);
void ob_fs_pool_set(ob_fs_t *fs, ob_fs_pool_id pool, uint32_t max_inflight);
ob_fs_group_id ob_fs_group_add(ob_fs_t *fs, const char *name, uint32_t weight);
void ob_fs_group_set(ob_fs_t *fs, ob_fs_group_id g, uint32_t weight);
ob_fs_tenant_id ob_fs_tenant_add(ob_fs_t *fs, const char *name, const ob_fs_tenant_params_t *p);
/* New weight / caps / group apply at once; queued requests keep their place. */
void ob_fs_tenant_set(ob_fs_t *fs, ob_fs_tenant_id t, const ob_fs_tenant_params_t *p);

/* ---------------------------------------------------------------- decisions */

typedef enum {
  OB_FS_GRANTED,          /* fast path: holds a slot now */
  OB_FS_QUEUED,           /* waits; comes out of ob_fs_next_grant or ob_fs_next_expired */
  OB_FS_TENANT_QUEUE_FULL,/* tenant's max_queue reached (answer 429) */
  OB_FS_QUEUE_FULL        /* global max_queue reached (answer 429) */
} ob_fs_verdict_t;

/* Submit a request. Granted at once when the pool has no request queued
 * that could use the slot, a pool slot and a global slot are free, and the
 * tenant is under its max_inflight; otherwise queued (or refused). */
ob_fs_verdict_t ob_fs_submit(ob_fs_t *fs, ob_fs_req_t *r, uint64_t now_us);

/* The next queued request that may run now, already counted in flight (its
 * slot is held), or NULL. Call in a loop after every release, cancel, expiry
 * or change of parameters, until NULL. */
ob_fs_req_t *ob_fs_next_grant(ob_fs_t *fs, uint64_t now_us);

/* Give back a granted request's slot. actual_cost: what it really cost (the
 * difference to the estimate is charged or credited to its tenant and group);
 * pass r->cost when unknown. r is unlinked and free for reuse afterwards. */
void ob_fs_release(ob_fs_t *fs, ob_fs_req_t *r, uint64_t actual_cost, uint64_t now_us);

/* Take a queued request out (the client went away). No-op when r is not
 * queued. */
void ob_fs_cancel(ob_fs_t *fs, ob_fs_req_t *r);

/* Earliest deadline among queued requests, or 0 when none. */
uint64_t ob_fs_next_deadline(const ob_fs_t *fs);
/* A queued request whose deadline is <= now, removed from the queue, or NULL.
 * Call in a loop. */
ob_fs_req_t *ob_fs_next_expired(ob_fs_t *fs, uint64_t now_us);

/*
 * Suggested Retry-After in milliseconds for a request of tenant t that was
 * refused (or expired) in pool: the tenant's place in line divided by the
 * pool's recent drain rate (an exponentially weighted rate of releases),
 * scaled by the tenant's share of the backlogged weight. At least 1000, at
 * most 60000.
 */
uint64_t ob_fs_retry_after_ms(const ob_fs_t *fs, ob_fs_pool_id pool, ob_fs_tenant_id t, uint64_t now_us);

/* ---------------------------------------------------------------- observing */

typedef struct ob_fs_tenant_stats {
  const char *name;          /* borrowed from the scheduler */
  ob_fs_group_id group;
  uint32_t weight;
  uint32_t inflight;
  uint32_t queued;
  uint64_t service;          /* total cost charged (actual where known) */
  int64_t deficit;           /* summed over pools */
} ob_fs_tenant_stats_t;

typedef struct ob_fs_group_stats {
  const char *name;
  uint32_t weight;
  uint32_t inflight;
  uint32_t queued;
  uint64_t service;
  int64_t deficit;
} ob_fs_group_stats_t;

typedef struct ob_fs_pool_stats {
  const char *name;
  uint32_t max_inflight;
  uint32_t inflight;
  uint32_t queued;
} ob_fs_pool_stats_t;

size_t ob_fs_num_tenants(const ob_fs_t *fs);
size_t ob_fs_num_groups(const ob_fs_t *fs);
size_t ob_fs_num_pools(const ob_fs_t *fs);
void ob_fs_tenant_stats(const ob_fs_t *fs, ob_fs_tenant_id t, ob_fs_tenant_stats_t *out);
void ob_fs_group_stats(const ob_fs_t *fs, ob_fs_group_id g, ob_fs_group_stats_t *out);
void ob_fs_pool_stats(const ob_fs_t *fs, ob_fs_pool_id p, ob_fs_pool_stats_t *out);
uint32_t ob_fs_inflight(const ob_fs_t *fs); /* all pools */
uint32_t ob_fs_queued(const ob_fs_t *fs);

/* ---------------------------------------------------------------- rate limits */

/*
 * A token bucket refilled continuously: `per_minute` tokens per minute,
 * holding at most `per_minute`. Used for rpm (1 per request) and tpm
 * (estimated tokens at admission, corrected with the actual usage later:
 * the bucket may go negative, which delays later requests).
 * per_minute == 0 means unlimited (every take succeeds).
 */
typedef struct ob_fs_bucket {
  uint64_t per_minute;
  double level;              /* private */
  uint64_t updated_us;       /* private */
} ob_fs_bucket_t;

void ob_fs_bucket_init(ob_fs_bucket_t *b, uint64_t per_minute, uint64_t now_us);
/* Take n if available; returns true and takes, or false and takes nothing. */
bool ob_fs_bucket_take(ob_fs_bucket_t *b, uint64_t n, uint64_t now_us);
/* Add back (negative: take more) without checking, e.g. usage corrections. */
void ob_fs_bucket_adjust(ob_fs_bucket_t *b, int64_t delta, uint64_t now_us);
/* Whole tokens available now (0 when negative). */
uint64_t ob_fs_bucket_remaining(ob_fs_bucket_t *b, uint64_t now_us);
/* Milliseconds until n tokens are available (0 when they are now). */
uint64_t ob_fs_bucket_wait_ms(ob_fs_bucket_t *b, uint64_t n, uint64_t now_us);
/* Milliseconds until the bucket is full again. */
uint64_t ob_fs_bucket_full_ms(ob_fs_bucket_t *b, uint64_t now_us);

/* ---------------------------------------------------------------- capacity */

/*
 * Capacity controller: the `max_inflight` of one upstream endpoint whose
 * config says "auto", worked out from what the backend reports. One
 * controller per endpoint (an upstream's endpoints may be different GPUs);
 * the pool's capacity is the sum of its endpoints' ob_cap_limit.
 *
 * Pure like the rest of this module: the caller feeds it events (a scrape of
 * the endpoint's metrics, a failed scrape, a request's time to first token,
 * the endpoint going down or coming back), each with `now_us`, and reads the
 * limit back. Nothing here scrapes, parses, logs or reads a clock; a source
 * change is seen by comparing ob_cap_source before and after a call.
 *
 * Signals, best first: the backend's metrics (running, waiting, KV usage:
 * OB_CAP_METRICS); without them, time to first token (OB_CAP_LATENCY);
 * before either has said anything, the initial limit (OB_CAP_STATIC). The
 * control law, its constants and why are in fairshare_capacity.c.
 *
 * Down: while the endpoint is down ob_cap_limit is 0, so the endpoint adds
 * nothing to its pool and is never chosen; the limit it had is kept and
 * comes back with ob_cap_on_up. Every other time the limit is in
 * [min, max], never 0. Events other than ob_cap_on_up are ignored while
 * down (a scrape or a first token racing the failure says nothing useful).
 *
 * Time: `now_us` should not run backwards; an older `now_us` is taken as the
 * newest one seen. Caller storage: an ob_cap_t holds no pointers and needs
 * no dispose; copying one copies the controller. Every `c` below is that
 * storage, borrowed for the call.
 */

typedef struct ob_cap_params {
  uint32_t min;              /* lowest limit while up; 0 is taken as 1 */
  uint32_t max;              /* highest limit; below min is taken as min */
  uint32_t interval_ms;      /* scrape interval, the controller's step; 0 = 250 */
  double target_waiting;     /* backend queue to hold (requests); < 0 or NaN = 0 */
  double kv_high;            /* KV usage (0..1) at which growth stops; <= 0 or NaN = 0.95 */
} ob_cap_params_t;

typedef enum { OB_CAP_METRICS, OB_CAP_LATENCY, OB_CAP_STATIC } ob_cap_source_t;

/* Buckets of the time-to-first-token baseline window (see the .c file). */
#define OB_CAP_BASE_BUCKETS 6

/* Caller storage; every field is private. */
typedef struct ob_cap {
  ob_cap_params_t p;
  double limit;              /* real-valued limit, always in [min, max] */
  ob_cap_source_t source;
  bool down;
  uint64_t now_us;           /* newest time seen */
  /* metrics */
  uint64_t ok_us;            /* last good scrape (or init, or up) */
  uint64_t scrape_us;        /* last good scrape, for the EWMA step */
  uint64_t step_us;          /* last control step */
  uint64_t hold_until_us;    /* no growth before this */
  uint32_t fails, oks;       /* consecutive failed / good scrapes */
  bool have_scrape, have_step, raised, congested_once;
  double running, waiting, kv;     /* last good scrape, raw */
  double run_hist[4];        /* running in the last 4 good scrapes (a ring) */
  uint32_t run_next;
  double waiting_s, kv_s;          /* smoothed */
  double waiting_l;          /* waiting, smoothed over seconds */
  double ceiling;            /* level where the backend last queued; 0 = none yet */
  double grow_step;
  double preempt_total;      /* last preemption counter seen; NaN = not exposed */
  double preempt_new;        /* preemptions since the last control step */
  bool preempt_known;        /* the counter was seen in the last good scrape */
  uint64_t preempt_us;       /* last step that saw the backend overflow its KV cache */
  uint64_t trim_us;          /* last KV trim */
  uint64_t kv_probe_us;      /* no step above the KV room before this */
  /* latency */
  double ttft_s;             /* smoothed time to first token (us); 0 = none yet */
  double lat_sum;            /* fresh samples (sent since lat_epoch_us) ... */
  uint32_t lat_n;            /* ... since the last latency step */
  uint32_t lat_inflight;     /* most in flight at send among them */
  uint64_t lat_epoch_us;     /* last change of the limit by the latency law */
  uint64_t lat_step_us;      /* last latency step */
  uint64_t lat_feed_us;      /* last baseline bucket feed */
  uint32_t lat_high;         /* consecutive steps with ttft above tolerance */
  uint64_t next_probe_us;    /* the periodic baseline re-probe */
  uint64_t probe_start_us, probe_end_us;
  bool probing;
  uint32_t probe_limit, probe_n;
  double probe_sum;
  double probe_pre;          /* smoothed ttft when the probe started */
  struct ob_cap_bucket {
    uint64_t epoch;          /* window bucket number + 1; 0 = empty */
    double sum;              /* smoothed ttft, added once per interval ... */
    uint32_t n;              /* ... and how many */
    double probe;            /* lowest re-probe mean in the bucket; 0 = none */
  } base[OB_CAP_BASE_BUCKETS];
} ob_cap_t;

/* A snapshot for /admin and the metrics. */
typedef struct ob_cap_stats {
  uint32_t limit;            /* as ob_cap_limit (0 while down) */
  uint32_t held;             /* the controller's own limit, not lowered by down
                                or a re-probe (what on_up restores) */
  ob_cap_source_t source;
  bool down;
  bool probing;              /* a latency baseline re-probe is running */
  uint32_t failed_scrapes;   /* consecutive */
  double running, waiting, kv_usage; /* last good scrape; NaN before one (kv: or not exposed) */
  double ttft_us;            /* smoothed time to first token; NaN before a sample */
  double ttft_baseline_us;   /* its baseline; NaN before one */
} ob_cap_stats_t;

/* Fill p with the defaults: min 1, max 512, interval 250 ms, target_waiting 0,
 * kv_high 0.95. */
void ob_cap_params_default(ob_cap_params_t *p);

/* Start a controller at `initial` (clamped to [min, max]), source
 * OB_CAP_STATIC, up. p: borrowed for the call (copied); NULL = defaults. */
void ob_cap_init(ob_cap_t *c, const ob_cap_params_t *p, uint32_t initial, uint64_t now_us);

/* A good scrape of the endpoint's metrics: requests running and waiting in
 * the backend, its KV cache usage 0..1 (NaN when not exposed), and what
 * obleth had in flight to the endpoint when the scrape was answered. A
 * running or waiting that is NaN or negative makes it a failed scrape. The
 * first good scrape (or, out of latency mode, the second in a row) makes
 * the source OB_CAP_METRICS; in that mode at most one control step is taken
 * per 3/4 interval, whatever the scrape rate. */
void ob_cap_on_metrics(ob_cap_t *c, double running, double waiting, double kv_usage, uint32_t inflight,
                       uint64_t now_us);

/* The backend's preemption counter (vLLM's vllm:num_preemptions_total)
 * from the scrape about to be given to ob_cap_on_metrics: call this first,
 * with the same now_us. Optional: without it (or with NaN or a negative
 * value, "not exposed") a preemption is inferred from running falling while
 * waiting rises with the KV cache full. A counter lower than the last one
 * (a restart) counts from there. What it feeds is described in
 * fairshare_capacity.c. */
void ob_cap_on_preemptions(ob_cap_t *c, double total, uint64_t now_us);

/* A scrape failed or was useless (404, timeout, too big, malformed, none of
 * the known names). The limit is kept; after 3 in a row, or once the last
 * good scrape is older than 4 intervals, the source becomes OB_CAP_LATENCY. */
void ob_cap_on_metrics_failed(ob_cap_t *c, uint64_t now_us);

/* A request's time to first token (us) and how many requests obleth had in
 * flight to the endpoint when it was sent, that one included; now_us is
 * when the first token arrived (so now_us - ttft_us is when it was sent).
 * Tracked in every mode, so the latency signal is warm when it is needed;
 * it moves the limit only in OB_CAP_LATENCY. */
void ob_cap_on_ttft(ob_cap_t *c, uint64_t ttft_us, uint32_t inflight, uint64_t now_us);

/* Timers without an event: metrics staleness, the latency baseline re-probe
 * and its timeout. Call once per interval (the scrape timer, before it
 * scrapes); without it they are noticed at the next event. */
void ob_cap_tick(ob_cap_t *c, uint64_t now_us);

/* The endpoint is down (connection refused, reset on connect) / reachable
 * again. on_up restores the limit held before on_down, holds growth for 8
 * intervals while the backend refills, and counts metrics staleness from
 * then; repeated calls of either are no-ops. */
void ob_cap_on_down(ob_cap_t *c, uint64_t now_us);
void ob_cap_on_up(ob_cap_t *c, uint64_t now_us);

/* Requests the endpoint may have in flight now: in [min, max] while up, 0
 * while down; during a latency re-probe, the lowered probe limit. */
uint32_t ob_cap_limit(const ob_cap_t *c);
ob_cap_source_t ob_cap_source(const ob_cap_t *c);
/* "metrics", "latency" or "static" (the metrics label); never NULL. */
const char *ob_cap_source_name(ob_cap_source_t s);
/* Last good scrape's waiting and KV usage, for display; NaN before the first
 * good scrape (KV: also when not exposed). */
double ob_cap_waiting(const ob_cap_t *c);
double ob_cap_kv_usage(const ob_cap_t *c);
/* Fill *out (caller storage) with a snapshot; every field is a copy. */
void ob_cap_stats(const ob_cap_t *c, ob_cap_stats_t *out);

#endif /* OB_FAIRSHARE_H */
