/*
 * capacity.c: "max_inflight": "auto" (docs/fairshare.md, "Capacity from the
 * backend"). For every endpoint of an upstream set to "auto" it scrapes the
 * endpoint's Prometheus metrics (vLLM's or SGLang's names) every
 * capacity.interval_ms through the upstream's own connection pool, pinned
 * to that endpoint, bounded in size (SCRAPE_MAX_BYTES) and time (one
 * interval); hands what it read to the endpoint's controller (src/fairshare,
 * ob_cap_*: the control law lives there, pure); and sets the pool's slots
 * to the sum of its endpoints' limits. Time to first token, fed at release,
 * is the controller's signal when there are no usable metrics. Endpoint
 * choice prefers the endpoint with the most headroom: every worker's net
 * reads the limits array (ob_upstream_set_limits).
 *
 * It runs on the first worker's loop; controllers and limits change under
 * the shared lock. Limits arrays live until the proxy goes (another
 * worker's net may read an old one until its own reload).
 */
#include "proxy_int.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define SCRAPE_MAX_BYTES (4u << 20) /* vLLM's /metrics is tens of KB: anything near this is not metrics */

typedef struct cap_ep {
  struct cap_pool *pool;
  size_t index;
  char *authority;
  ob_cap_t ctl;
  ob_ureq_t *scrape;          /* in flight, or NULL */
  ob_buf_t body;
  int status;
  int last_source;            /* for the log line on a change; -1 before the first */
  bool down;
  const char *why;            /* the last scrape's failure (static), NULL when it worked */
} cap_ep_t;

typedef struct cap_pool {
  ob_proxy_t *p;
  char *name;
  ob_config_capacity_t cfg;   /* metrics_path: own copy */
  cap_ep_t *eps;
  size_t n;
  uint32_t *limits;           /* per endpoint, in force; see the file comment */
  uint32_t *shared;           /* per endpoint: requests in flight from every worker (net counts) */
  uint32_t sum;
  bool changed;               /* limits changed since the fleet was told */
  struct event *timer;
  /* Cluster mode: the fleet's controller (cluster.lua's capacity op). */
  uint32_t *fleet;            /* per endpoint: the owner's limits, in force while fleet_until_us */
  uint64_t fleet_until_us;    /* 0: this replica's own limits are in force */
  uint64_t fleet_inflight;    /* the pool's requests in flight fleet-wide, at the last answer */
  uint64_t fleet_seen_us;     /* when that was */
  int owner;                  /* -1 not in shared mode (or no answer yet), 0 follower, 1 owner */
} cap_pool_t;

struct ob_capacity {
  cap_pool_t *pools;
  size_t n;
  uint32_t **retired;         /* every limits and shared array ever made */
  size_t num_retired;
};

static cap_pool_t *find_pool(const ob_capacity_t *cap, const char *name) {
  for (size_t i = 0; cap && i < cap->n; i++)
    if (strcmp(cap->pools[i].name, name) == 0) return &cap->pools[i];
  return NULL;
}

/* Locked: the scheduler's pool of this upstream, or -1. */
static long pool_id(const cap_pool_t *cp) {
  const ob_proxy_shared_t *sh = cp->p->sh;
  for (size_t k = 0; k < sh->num_pools; k++)
    if (strcmp(sh->pool_names[k], cp->name) == 0) return (long)k;
  return -1;
}

/* How long a follower keeps the owner's limits without a fresh answer:
 * past it (Redis slow, the owner gone and nobody answering) its own
 * controller, which has run on the same signals all along, takes over. */
static uint64_t fleet_lease_us(const cap_pool_t *cp) {
  uint64_t l = 4ull * cp->cfg.interval_ms * 1000u;
  return l < 1000000u ? 1000000u : l;
}

static bool fleet_in_force(const cap_pool_t *cp, uint64_t now) { return cp->fleet_until_us > now; }

/* Locked: an endpoint's limit in force (the fleet's while a follower). */
static uint32_t limit_of(const cap_pool_t *cp, size_t i, uint64_t now) {
  if (fleet_in_force(cp, now)) {
    /* down is this replica's own finding: it sends nothing there either way */
    return cp->eps[i].down ? 0 : cp->fleet[i];
  }
  return ob_cap_limit(&cp->eps[i].ctl);
}

/* Locked: the pool's slots from its endpoints' limits. */
static void apply_pool(cap_pool_t *cp) {
  ob_proxy_t *p = cp->p;
  uint64_t now = ob_clock_us();
  uint32_t sum = 0;
  for (size_t i = 0; i < cp->n; i++) {
    uint32_t l = limit_of(cp, i, now);
    if (l != cp->limits[i]) cp->changed = true;
    __atomic_store_n(&cp->limits[i], l, __ATOMIC_RELAXED);
    sum += l;
  }
  /* Every endpoint down: a floor, since 0 slots would read as unlimited;
   * the requests fail fast at the unreachable endpoints anyway. */
  if (sum < cp->cfg.min) sum = cp->cfg.min;
  if (sum == cp->sum) return;
  cp->sum = sum;
  cp->changed = true;
  long k = pool_id(cp);
  if (k >= 0) ob_fs_pool_set(p->sh->fs, (ob_fs_pool_id)k, ob_fleet_cap(p->sh, sum));
  ob_proxy_pump_locked(p);
}

/* Locked: requests in flight at endpoint i from every worker and, in
 * cluster mode, every replica: the controller's evidence that the limit
 * binds. A worker's net counts only its own, and the scheduler counts per
 * pool, so an endpoint gets the pool's count in proportion to its limit
 * (exact for one endpoint); in shared mode the pool's count is the fleet's,
 * from the last capacity answer. At least what every worker's net counts
 * there (the shared array). */
static uint32_t endpoint_inflight(const cap_pool_t *cp, size_t i, uint64_t now) {
  uint64_t pool = 0;
  if (cp->owner >= 0 && now - cp->fleet_seen_us <= fleet_lease_us(cp)) {
    pool = cp->fleet_inflight;
  } else {
    long k = pool_id(cp);
    if (k >= 0) {
      ob_fs_pool_stats_t ps;
      ob_fs_pool_stats(cp->p->sh->fs, (ob_fs_pool_id)k, &ps);
      pool = (uint64_t)ps.inflight * ob_fleet_local_share(cp->p->sh);
    }
  }
  uint64_t est = cp->sum && cp->sum != UINT32_MAX ? (pool * cp->limits[i] + cp->sum - 1) / cp->sum : pool;
  uint32_t workers = __atomic_load_n(&cp->shared[i], __ATOMIC_RELAXED);
  if (est < workers) est = workers;
  return est > UINT32_MAX ? UINT32_MAX : (uint32_t)est;
}

uint32_t ob_proxy_capacity_slots(const ob_proxy_shared_t *sh, const char *upstream) {
  const cap_pool_t *cp = find_pool(sh->capacity, upstream);
  return cp ? cp->sum : 0;
}

uint32_t ob_proxy_pool_slots(const ob_proxy_shared_t *sh, const ob_config_upstream_t *u) {
  if (!u->max_inflight_auto) return u->max_inflight;
  uint32_t s = ob_proxy_capacity_slots(sh, u->name);
  return s ? s : u->capacity.min; /* before the first bind: the floor, never "unlimited" */
}

static void log_source(cap_ep_t *e) {
  int s = (int)ob_cap_source(&e->ctl);
  if (s == e->last_source) return;
  if (e->last_source >= 0 || s != OB_CAP_STATIC)
    ob_log_info("capacity: upstream %s endpoint %s: limit from %s%s%s (now %u)", e->pool->name, e->authority,
                ob_cap_source_name((ob_cap_source_t)s), e->why ? "; the last scrape: " : "", e->why ? e->why : "",
                ob_cap_limit(&e->ctl));
  e->last_source = s;
}

/* ---------------------------------------------------------------- the fleet's controller */

typedef struct cap_call {
  ob_proxy_t *p;
  size_t n;
  char name[];
} cap_call_t;

static void on_fleet(void *arg, bool answered, bool owner, uint64_t inflight, const uint32_t *limits) {
  cap_call_t *c = arg;
  ob_proxy_t *p = c->p;
  uint64_t now = ob_clock_us();
  ob_proxy_lock(p);
  cap_pool_t *cp = find_pool(p->sh->capacity, c->name);
  bool drain = false;
  if (cp && cp->n == c->n && answered) {
    if ((int)owner != cp->owner)
      ob_log_info("capacity: upstream %s: %s", cp->name,
                  owner ? "this replica's controller now sets the fleet's limits"
                        : "this replica follows the fleet's limits (another replica's controller sets them)");
    cp->owner = owner;
    cp->fleet_inflight = inflight, cp->fleet_seen_us = now;
    if (!owner && limits) {
      memcpy(cp->fleet, limits, cp->n * sizeof *cp->fleet);
      cp->fleet_until_us = now + fleet_lease_us(cp);
    } else {
      cp->fleet_until_us = 0;
    }
    apply_pool(cp);
    cp->changed = false;
    drain = true;
  } else if (cp && !answered && cp->owner >= 0 && now - cp->fleet_seen_us > fleet_lease_us(cp)) {
    cp->owner = -1; /* the fleet is out of reach: this replica's own limits, as fallback divides them */
    cp->fleet_until_us = 0;
    apply_pool(cp);
  }
  ob_proxy_unlock(p);
  free(c);
  if (drain) ob_proxy_drain_inbox(p);
}

/* First worker, not locked: offer this replica's own limits to the fleet;
 * the answer says whose are in force. Outside shared mode, its own are. */
static void fleet_offer(cap_pool_t *cp) {
  ob_proxy_t *p = cp->p;
  if (!p->sh->fleet) return; /* no cluster block: nobody to offer to */
  uint32_t own[OB_FLEET_CAPACITY_MAX];
  uint32_t sum = 0;
  ob_proxy_lock(p);
  for (size_t i = 0; i < cp->n && i < OB_FLEET_CAPACITY_MAX; i++) sum += own[i] = ob_cap_limit(&cp->eps[i].ctl);
  if (sum < cp->cfg.min) sum = cp->cfg.min;
  ob_proxy_unlock(p);
  size_t len = strlen(cp->name) + 1;
  cap_call_t *c = ob_xcalloc(1, sizeof *c + len);
  c->p = p, c->n = cp->n;
  memcpy(c->name, cp->name, len);
  if (ob_fleet_capacity(p, cp->name, sum, own, cp->n, (uint32_t)(fleet_lease_us(cp) / 1000), on_fleet, c)) return;
  free(c);
  ob_proxy_lock(p);
  if (cp->owner >= 0 || cp->fleet_until_us) {
    cp->owner = -1, cp->fleet_until_us = 0;
    apply_pool(cp);
  }
  ob_proxy_unlock(p);
}

/* ---------------------------------------------------------------- scraping */

static void scrape_done(cap_ep_t *e, const char *why) {
  cap_pool_t *cp = e->pool;
  ob_proxy_t *p = cp->p;
  uint64_t now = ob_clock_us();
  e->scrape = NULL;
  double running = NAN, waiting = NAN, kv = NAN, preempted = NAN;
  if (!why) {
    ob_prom_want_t w[8] = {{.name = "vllm:num_requests_running"}, {.name = "vllm:num_requests_waiting"},
                           {.name = "vllm:kv_cache_usage_perc"},  {.name = "vllm:gpu_cache_usage_perc"},
                           {.name = "sglang:num_running_reqs"},   {.name = "sglang:num_queue_reqs"},
                           {.name = "sglang:token_usage"},        {.name = "vllm:num_preemptions_total"}};
    const char *perr = NULL;
    if (ob_prom_parse(e->body.base, e->body.len, NULL, w, 8, NULL, &perr) != 0) {
      why = "malformed metrics";
    } else if (w[0].found && w[1].found) {
      running = w[0].value, waiting = w[1].value;
      /* a fraction: the fullest engine, not a sum over engines */
      kv = w[2].found ? w[2].max : w[3].found ? w[3].max : NAN;
      preempted = w[7].found ? w[7].value : NAN; /* a counter: summed */
    } else if (w[4].found && w[5].found) {
      running = w[4].value, waiting = w[5].value;
      kv = w[6].found ? w[6].max : NAN;
    } else {
      why = "no vLLM or SGLang queue metrics in the answer";
    }
  }
  ob_buf_reset(&e->body);
  ob_upstream_t *up = p->net ? ob_net_upstream(p->net, cp->name) : NULL;
  ob_endpoint_stats_t es = {0};
  if (up && e->index < ob_upstream_num_endpoints(up)) ob_upstream_endpoint_stats(up, e->index, &es);
  ob_proxy_lock(p);
  e->why = why;
  bool refused = why && es.backoff;
  if (refused && !e->down) ob_cap_on_down(&e->ctl, now);
  else if (!refused && e->down) ob_cap_on_up(&e->ctl, now);
  e->down = refused;
  if (!why) {
    uint32_t inflight = endpoint_inflight(cp, e->index, now);
    /* What obleth counts and the backend does not (granted and not yet
     * arrived, answered and not yet released: longer on a busy host) is no
     * evidence that the backend could take more: without this the limit
     * crept 2-3 above the slots of a backend that was full with no queue. */
    double seen = running + waiting;
    if (seen >= 0 && seen < inflight) inflight = (uint32_t)ceil(seen);
    ob_cap_on_preemptions(&e->ctl, preempted, now);
    ob_cap_on_metrics(&e->ctl, running, waiting, kv, inflight, now);
  }
  else if (!refused) ob_cap_on_metrics_failed(&e->ctl, now);
  apply_pool(cp);
  log_source(e);
  bool offer = cp->changed && cp->owner != 0; /* an owner's change reaches the fleet at once */
  cp->changed = false;                        /* told now, or nobody to tell */
  ob_proxy_unlock(p);
  if (offer) fleet_offer(cp);
  ob_proxy_drain_inbox(p); /* a larger pool may have granted queued requests */
}

static void on_scrape_head(ob_ureq_t *u, void *data, int status, const ob_http_header_t *h, size_t n) {
  (void)u, (void)h, (void)n;
  ((cap_ep_t *)data)->status = status;
}

static void on_scrape_data(ob_ureq_t *u, void *data, struct evbuffer *buf) {
  cap_ep_t *e = data;
  size_t len = evbuffer_get_length(buf);
  if (e->status != 200 || e->body.len + len > SCRAPE_MAX_BYTES) {
    evbuffer_drain(buf, len);
    ob_ureq_cancel(u);
    scrape_done(e, e->status != 200 ? "the metrics path did not answer 200" : "the metrics answer is too large");
    return;
  }
  evbuffer_remove(buf, ob_buf_reserve(&e->body, len), len);
  e->body.len += len;
}

static void on_scrape_end(ob_ureq_t *u, void *data, const ob_http_header_t *t, size_t n) {
  (void)u, (void)t, (void)n;
  cap_ep_t *e = data;
  scrape_done(e, e->status == 200 ? NULL : "the metrics path did not answer 200");
}

static void on_scrape_error(ob_ureq_t *u, void *data, ob_err_t err, int status_hint, bool head_seen) {
  (void)u, (void)status_hint, (void)head_seen;
  scrape_done(data, err == OB_ERR_CONN ? "the endpoint cannot be reached" : "the metrics answer is malformed");
}

static const ob_ureq_handler_t scrape_handler = {on_scrape_head, on_scrape_data, on_scrape_end, on_scrape_error};

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  cap_pool_t *cp = arg;
  ob_proxy_t *p = cp->p;
  uint64_t now = ob_clock_us();
  ob_upstream_t *up = p->net ? ob_net_upstream(p->net, cp->name) : NULL;
  for (size_t i = 0; i < cp->n; i++) {
    cap_ep_t *e = &cp->eps[i];
    if (e->scrape) { /* slower than an interval: a failed scrape */
      ob_ureq_cancel(e->scrape);
      scrape_done(e, "the metrics answer took longer than capacity.interval_ms");
    }
    ob_proxy_lock(p);
    ob_cap_tick(&e->ctl, now);
    apply_pool(cp);
    log_source(e);
    ob_proxy_unlock(p);
    if (!up || i >= ob_upstream_num_endpoints(up)) continue;
    e->status = 0;
    ob_ureq_spec_t spec = {.method = OB_IOV_LIT("GET"), .path = ob_iov_str(cp->cfg.metrics_path), .endpoint = i + 1};
    e->scrape = ob_upstream_request(up, &spec, &scrape_handler, e);
  }
  fleet_offer(cp); /* every interval: the owner's lease, a follower's copy */
  struct timeval tv = {(time_t)(cp->cfg.interval_ms / 1000), (suseconds_t)((cp->cfg.interval_ms % 1000) * 1000)};
  evtimer_add(cp->timer, &tv);
}

/* ---------------------------------------------------------------- the latency signal */

void ob_proxy_capacity_on_ttft(ob_exchange_t *x) {
  ob_proxy_shared_t *sh = x->proxy->sh;
  /* The first body byte, not the head: a streaming backend (vLLM, the
   * simulator) sends its head before the request gets a slot, so the head's
   * time is blind to the backend's queue; the first byte is the first token
   * when streamed, the whole answer when not. */
  uint64_t first = x->first_byte_us;
  if (!sh->capacity || !first || !x->upstream_name) return;
  cap_pool_t *cp = find_pool(sh->capacity, x->upstream_name);
  if (!cp || x->endpoint_index >= cp->n || !x->req) return;
  uint64_t sent = x->req->start_us + x->queue_us;
  if (first <= sent) return;
  /* in flight at the endpoint when it was sent: its share of the pool's now, this one included */
  uint32_t inflight = endpoint_inflight(cp, x->endpoint_index, ob_clock_us());
  if (!inflight) inflight = 1;
  ob_cap_on_ttft(&cp->eps[x->endpoint_index].ctl, first - sent, inflight, first); /* now: when it came */
  apply_pool(cp);
}

/* ---------------------------------------------------------------- lifecycle */

static void pool_dispose(cap_pool_t *cp) {
  for (size_t i = 0; i < cp->n; i++) {
    if (cp->eps[i].scrape) ob_ureq_cancel(cp->eps[i].scrape);
    ob_buf_dispose(&cp->eps[i].body);
    free(cp->eps[i].authority);
  }
  if (cp->timer) event_free(cp->timer);
  free(cp->fleet);
  free(cp->eps);
  free(cp->name);
  free(cp->cfg.metrics_path);
}

/* First worker, not locked: (re)build the controllers for the current
 * config. An endpoint kept across a reload (same upstream, same authority)
 * keeps its controller. */
void ob_proxy_capacity_bind(ob_proxy_t *p) {
  ob_proxy_shared_t *sh = p->sh;
  const ob_config_t *c = p->cfg;
  bool any = false;
  for (size_t i = 0; i < c->num_upstreams; i++) any = any || c->upstreams[i].max_inflight_auto;
  if (!any && !sh->capacity) return;
  ob_capacity_t *cap = ob_xcalloc(1, sizeof *cap);
  cap->pools = ob_xcalloc(c->num_upstreams + 1, sizeof *cap->pools);
  uint64_t now = ob_clock_us();
  ob_proxy_lock(p);
  ob_capacity_t *old = sh->capacity;
  if (old) {
    cap->retired = old->retired, cap->num_retired = old->num_retired;
    old->retired = NULL;
  }
  for (size_t i = 0; i < c->num_upstreams; i++) {
    const ob_config_upstream_t *u = &c->upstreams[i];
    if (!u->max_inflight_auto) continue;
    cap_pool_t *cp = &cap->pools[cap->n++];
    const cap_pool_t *was_pool = find_pool(old, u->name);
    cp->p = p;
    cp->name = ob_xstrdup(u->name);
    cp->cfg = u->capacity;
    cp->cfg.metrics_path = ob_xstrdup(u->capacity.metrics_path);
    cp->n = u->num_endpoints;
    cp->eps = ob_xcalloc(cp->n, sizeof *cp->eps);
    cp->limits = ob_xcalloc(cp->n, sizeof *cp->limits);
    cp->fleet = ob_xcalloc(cp->n, sizeof *cp->fleet);
    cp->owner = -1;
    if (was_pool && was_pool->n == cp->n) { /* the fleet's answer stays in force across a reload */
      memcpy(cp->fleet, was_pool->fleet, cp->n * sizeof *cp->fleet);
      cp->fleet_until_us = was_pool->fleet_until_us, cp->owner = was_pool->owner;
      cp->fleet_inflight = was_pool->fleet_inflight, cp->fleet_seen_us = was_pool->fleet_seen_us;
    }
    /* the same endpoints keep their counts: requests in flight across the reload are in them */
    bool same = was_pool && was_pool->n == cp->n;
    for (size_t j = 0; same && j < cp->n; j++) same = strcmp(was_pool->eps[j].authority, u->endpoints[j].authority) == 0;
    cp->shared = same ? was_pool->shared : ob_xcalloc(cp->n, sizeof *cp->shared);
    cap->retired = ob_xrealloc(cap->retired, (cap->num_retired + 2) * sizeof *cap->retired);
    cap->retired[cap->num_retired++] = cp->limits;
    if (!same) cap->retired[cap->num_retired++] = cp->shared;
    ob_cap_params_t params = {u->capacity.min, u->capacity.max, u->capacity.interval_ms, u->capacity.target_waiting,
                              u->capacity.kv_high};
    for (size_t j = 0; j < cp->n; j++) {
      cap_ep_t *e = &cp->eps[j];
      e->pool = cp;
      e->index = j;
      e->last_source = -1;
      e->authority = ob_xstrdup(u->endpoints[j].authority);
      ob_buf_init(&e->body);
      const cap_ep_t *was = NULL;
      for (size_t m = 0; was_pool && m < was_pool->n && !was; m++)
        if (strcmp(was_pool->eps[m].authority, e->authority) == 0) was = &was_pool->eps[m];
      if (was) {
        e->ctl = was->ctl;
        e->down = was->down;
        e->last_source = was->last_source;
      } else {
        ob_cap_init(&e->ctl, &params, u->capacity.min, now);
      }
    }
    cp->sum = UINT32_MAX; /* apply below */
  }
  sh->capacity = cap;
  for (size_t k = 0; k < cap->n; k++) apply_pool(&cap->pools[k]);
  ob_proxy_unlock(p);
  if (old) {
    for (size_t k = 0; k < old->n; k++) pool_dispose(&old->pools[k]);
    free(old->pools);
    free(old);
  }
  for (size_t k = 0; k < cap->n; k++) {
    cap->pools[k].timer = evtimer_new(p->base, on_tick, &cap->pools[k]);
    static const struct timeval soon = {0, 1000};
    evtimer_add(cap->pools[k].timer, &soon);
  }
}

/* Any worker, on its own loop, after attach and after its reload: point
 * its net's pools at the limits. */
void ob_proxy_capacity_attach(ob_proxy_t *p) {
  if (!p->net) return;
  ob_proxy_lock(p);
  const ob_capacity_t *cap = p->sh->capacity;
  for (size_t k = 0; cap && k < cap->n; k++) {
    ob_upstream_t *up = ob_net_upstream(p->net, cap->pools[k].name);
    if (up && ob_upstream_num_endpoints(up) == cap->pools[k].n) ob_upstream_set_limits(up, cap->pools[k].limits, cap->pools[k].shared);
  }
  ob_proxy_unlock(p);
}

void ob_proxy_capacity_dispose(ob_proxy_shared_t *sh) {
  ob_capacity_t *cap = sh->capacity;
  if (!cap) return;
  for (size_t k = 0; k < cap->n; k++) pool_dispose(&cap->pools[k]);
  for (size_t k = 0; k < cap->num_retired; k++) free(cap->retired[k]);
  free(cap->retired);
  free(cap->pools);
  free(cap);
  sh->capacity = NULL;
}

/* ---------------------------------------------------------------- views */

void ob_proxy_write_capacity_json(ob_proxy_t *p, const char *upstream, ob_buf_t *b) {
  const cap_pool_t *cp = find_pool(p->sh->capacity, upstream);
  if (!cp) return;
  ob_buf_append_str(b, ",\"capacity\":[");
  for (size_t i = 0; i < cp->n; i++) {
    ob_cap_stats_t st;
    ob_cap_stats(&cp->eps[i].ctl, &st);
    ob_buf_append_str(b, i ? ",{\"endpoint\":" : "{\"endpoint\":");
    ob_buf_append_json_str(b, ob_iov_str(cp->eps[i].authority));
    ob_buf_printf(b, ",\"limit\":%u,\"source\":\"%s\",\"down\":%s", cp->limits[i], ob_cap_source_name(st.source),
                  st.down ? "true" : "false");
    if (cp->owner < 0) ob_buf_append_str(b, ",\"fleet\":null");
    else ob_buf_printf(b, ",\"fleet\":{\"owner\":%s,\"own_limit\":%u}", cp->owner ? "true" : "false", st.limit);
    const double v[4] = {st.running, st.waiting, st.kv_usage, st.ttft_us / 1000.0};
    const char *k[4] = {"running", "waiting", "kv_usage", "ttft_ms"};
    for (int j = 0; j < 4; j++) {
      if (isfinite(v[j])) ob_buf_printf(b, ",\"%s\":%.6g", k[j], v[j]);
      else ob_buf_printf(b, ",\"%s\":null", k[j]);
    }
    ob_buf_append_str(b, cp->eps[i].why ? ",\"last_scrape_error\":" : ",\"last_scrape_error\":null");
    if (cp->eps[i].why) ob_buf_append_json_str(b, ob_iov_str(cp->eps[i].why));
    ob_buf_append(b, "}", 1);
  }
  ob_buf_append(b, "]", 1);
}

static void label_str(ob_buf_t *b, const char *s) {
  for (; *s; s++) {
    if (*s == '\\' || *s == '"') ob_buf_append(b, "\\", 1);
    if (*s == '\n') ob_buf_append(b, "\\n", 2);
    else ob_buf_append(b, s, 1);
  }
}

void ob_proxy_write_capacity_metrics(ob_proxy_t *p, ob_buf_t *b) {
  const ob_capacity_t *cap = p->sh->capacity;
  if (!cap || !cap->n) return;
  static const struct {
    const char *name, *help;
  } m[4] = {
      {"obleth_upstream_capacity", "Requests an endpoint of an upstream with max_inflight \"auto\" may have in flight now."},
      {"obleth_upstream_backend_waiting", "Requests waiting in the backend's own queue at the last scrape."},
      {"obleth_upstream_backend_kv_usage", "The backend's KV cache usage (0..1) at the last scrape."},
      {"obleth_upstream_capacity_source", "What the endpoint's limit follows: 1 for the current one of metrics, latency, static."},
  };
  ob_proxy_lock(p);
  for (int k = 0; k < 4; k++) {
    ob_buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n", m[k].name, m[k].help, m[k].name);
    for (size_t i = 0; i < cap->n; i++) {
      const cap_pool_t *cp = &cap->pools[i];
      for (size_t j = 0; j < cp->n; j++) {
        ob_cap_stats_t st;
        ob_cap_stats(&cp->eps[j].ctl, &st);
        for (int s = 0; s < (k == 3 ? 3 : 1); s++) {
          double v = k == 0 ? cp->limits[j] : k == 1 ? st.waiting : k == 2 ? st.kv_usage : (double)(st.source == (ob_cap_source_t)s);
          if (k != 3 && k != 0 && !isfinite(v)) continue;
          ob_buf_printf(b, "%s{upstream=\"", m[k].name);
          label_str(b, cp->name);
          ob_buf_append_str(b, "\",endpoint=\"");
          label_str(b, cp->eps[j].authority);
          if (k == 3) ob_buf_printf(b, "\",source=\"%s", ob_cap_source_name((ob_cap_source_t)s));
          ob_buf_printf(b, "\"} %.6g\n", v);
        }
      }
    }
  }
  ob_proxy_unlock(p);
}
