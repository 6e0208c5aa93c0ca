/*
 * capacity.c: "max_inflight": "auto" (docs/fairshare.md, "Capacity from the
 * backend"). For every endpoint of an upstream set to "auto" it scrapes the
 * endpoint's Prometheus metrics (vLLM's or SGLang's names) every
 * capacity.interval_ms, through the upstream's own connection pool
 * (pinned to that endpoint, bounded in size and time), feeds what it reads
 * to the endpoint's controller (src/fairshare, ob_cap_*: the control law
 * lives there, pure) and sets the pool's slots to the sum of the endpoints'
 * limits. With no usable metrics the controller falls back to time to
 * first token, which release feeds it. Endpoint choice prefers the
 * endpoint with the most headroom (net reads the limits array).
 *
 * Everything here runs on the first worker's loop; the controllers and
 * limits are read and changed under the shared lock.
 */
#include "proxy_int.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define SCRAPE_MAX_BYTES (4u << 20) /* vLLM's /metrics is tens of KB; anything near this is not metrics */

typedef struct cap_ep {
  struct cap_pool *pool;
  size_t index;
  ob_cap_t ctl;
  ob_ureq_t *scrape;          /* in flight, or NULL */
  ob_buf_t body;
  int status;
  int last_source;            /* for the log line on a change; -1 before the first */
  double running, waiting, kv; /* last scrape's, NaN when unknown */
  const char *why;            /* the last scrape's failure, static */
} cap_ep_t;

typedef struct cap_pool {
  ob_proxy_t *p;
  char *name;
  size_t cfg_index;           /* in the current config's upstreams */
  ob_config_capacity_t cfg;   /* metrics_path borrowed from the config snapshot held by p */
  cap_ep_t *eps;
  size_t n;
  uint32_t *limits;           /* per endpoint, read by every worker's net to choose endpoints */
  uint32_t sum;
  struct event *timer;
} cap_pool_t;

struct ob_capacity {
  cap_pool_t *pools;
  size_t n;
};

static const char *source_name(ob_cap_source_t s) {
  return s == OB_CAP_METRICS ? "metrics" : s == OB_CAP_LATENCY ? "latency" : "static";
}

/* Locked: the pool's slots from its endpoints' limits. */
static void apply_pool(cap_pool_t *cp) {
  ob_proxy_t *p = cp->p;
  uint32_t sum = 0;
  for (size_t i = 0; i < cp->n; i++) {
    cp->limits[i] = ob_cap_limit(&cp->eps[i].ctl);
    sum += cp->limits[i];
  }
  if (sum < cp->cfg.min) sum = cp->cfg.min; /* every endpoint down: a floor, not "unlimited" */
  if (sum == cp->sum) return;
  cp->sum = sum;
  for (size_t k = 0; k < p->sh->num_pools; k++)
    if (strcmp(p->sh->pool_names[k], cp->name) == 0) ob_fs_pool_set(p->sh->fs, (ob_fs_pool_id)k, ob_fleet_cap(p->sh, sum));
}

static void log_source(cap_ep_t *e) {
  int s = (int)ob_cap_source(&e->ctl);
  if (s == e->last_source) return;
  const ob_config_upstream_t *u = &e->pool->p->cfg->upstreams[e->pool->cfg_index];
  ob_log_info("capacity: upstream %s endpoint %s: %s%s%s (limit %u)", e->pool->name,
              e->index < u->num_endpoints ? u->endpoints[e->index].authority : "?", source_name((ob_cap_source_t)s),
              e->why && s != OB_CAP_METRICS ? ": " : "", e->why && s != OB_CAP_METRICS ? e->why : "",
              ob_cap_limit(&e->ctl));
  e->last_source = s;
}

/* ---------------------------------------------------------------- scraping */

static void scrape_done(cap_ep_t *e, const char *why) {
  ob_proxy_t *p = e->pool->p;
  uint64_t now = ob_clock_us();
  e->scrape = NULL;
  e->why = why;
  ob_proxy_lock(p);
  if (!why) {
    static const char *const names[] = {"vllm:num_requests_running", "vllm:num_requests_waiting",
                                        "vllm:kv_cache_usage_perc",  "vllm:gpu_cache_usage_perc",
                                        "sglang:num_running_reqs",   "sglang:num_queue_reqs",
                                        "sglang:token_usage"};
    ob_prom_want_t w[7];
    for (int i = 0; i < 7; i++) w[i] = (ob_prom_want_t){.name = names[i]};
    const char *perr = NULL;
    if (ob_prom_parse(e->body.base ? e->body.base : "", e->body.len, w, 7, &perr) != 0) {
      e->why = perr ? perr : "malformed metrics";
    } else if (w[0].found && w[1].found) {
      e->running = w[0].value, e->waiting = w[1].value;
      e->kv = w[2].found ? w[2].value : w[3].found ? w[3].value : NAN;
    } else if (w[4].found && w[5].found) {
      e->running = w[4].value, e->waiting = w[5].value;
      e->kv = w[6].found ? w[6].value : NAN;
    } else {
      e->why = "no vLLM or SGLang queue metrics in the answer";
    }
  }
  ob_endpoint_stats_t es;
  ob_upstream_endpoint_stats(ob_net_upstream(p->net, e->pool->name), e->index, &es);
  if (!e->why) ob_cap_on_metrics(&e->ctl, e->running, e->waiting, e->kv, es.inflight, now);
  else ob_cap_on_metrics_failed(&e->ctl, now);
  if (e->why) e->running = e->waiting = e->kv = NAN;
  apply_pool(e->pool);
  log_source(e);
  ob_proxy_unlock(p);
  ob_buf_reset(&e->body);
  ob_proxy_drain_inbox(p); /* a larger pool may grant queued requests */
}

static void on_scrape_head(ob_ureq_t *u, void *data, int status, const ob_http_header_t *h, size_t n) {
  (void)u, (void)h, (void)n;
  cap_ep_t *e = data;
  e->status = status;
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
  char *dst = ob_buf_reserve(&e->body, len);
  evbuffer_remove(buf, dst, len);
  e->body.len += len;
}

static void on_scrape_end(ob_ureq_t *u, void *data, const ob_http_header_t *t, size_t n) {
  (void)u, (void)t, (void)n;
  cap_ep_t *e = data;
  scrape_done(e, e->status == 200 ? NULL : "the metrics path did not answer 200");
}

static void on_scrape_error(ob_ureq_t *u, void *data, ob_err_t err, int status_hint, bool head_seen) {
  (void)u, (void)status_hint, (void)head_seen;
  cap_ep_t *e = data;
  scrape_done(e, err == OB_ERR_CONN ? "the endpoint cannot be reached" : "the metrics answer is malformed");
}

static const ob_ureq_handler_t scrape_handler = {on_scrape_head, on_scrape_data, on_scrape_end, on_scrape_error};

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  cap_pool_t *cp = arg;
  ob_proxy_t *p = cp->p;
  ob_upstream_t *up = ob_net_upstream(p->net, cp->name);
  for (size_t i = 0; up && i < cp->n; i++) {
    cap_ep_t *e = &cp->eps[i];
    if (e->scrape) { /* slower than an interval: a failed scrape */
      ob_ureq_cancel(e->scrape);
      scrape_done(e, "the metrics answer took longer than capacity.interval_ms");
    }
    e->status = 0;
    ob_ureq_spec_t spec = {.method = OB_IOV_LIT("GET"), .path = ob_iov_str(cp->cfg.metrics_path), .endpoint = i + 1};
    e->scrape = ob_upstream_request(up, &spec, &scrape_handler, e);
  }
  struct timeval tv = {(time_t)(cp->cfg.interval_ms / 1000), (suseconds_t)((cp->cfg.interval_ms % 1000) * 1000)};
  evtimer_add(cp->timer, &tv);
}

/* ---------------------------------------------------------------- lifecycle */

static void pool_free(cap_pool_t *cp) {
  for (size_t i = 0; i < cp->n; i++) {
    if (cp->eps[i].scrape) ob_ureq_cancel(cp->eps[i].scrape);
    ob_buf_dispose(&cp->eps[i].body);
  }
  if (cp->timer) event_free(cp->timer);
  free(cp->eps);
  free(cp->name);
  /* limits stay: another worker's net may read them until its own
   * reload (they are freed with the proxy) */
}

/* Locked, first worker: (re)build the controllers for the current config.
 * An endpoint kept across a reload (same upstream, same authority) keeps
 * its controller and limit. */
void ob_proxy_capacity_bind(ob_proxy_t *p) {
  ob_proxy_shared_t *sh = p->sh;
  const ob_config_t *c = p->cfg;
  ob_capacity_t *old = sh->capacity;
  ob_capacity_t *cap = ob_xcalloc(1, sizeof *cap);
  cap->pools = ob_xcalloc(c->num_upstreams + 1, sizeof *cap->pools);
  uint64_t now = ob_clock_us();
  for (size_t i = 0; i < c->num_upstreams; i++) {
    const ob_config_upstream_t *u = &c->upstreams[i];
    if (!u->max_inflight_auto) continue;
    cap_pool_t *cp = &cap->pools[cap->n++];
    cp->p = p;
    cp->name = ob_xstrdup(u->name);
    cp->cfg_index = i;
    cp->cfg = u->capacity;
    cp->n = u->num_endpoints;
    cp->eps = ob_xcalloc(cp->n, sizeof *cp->eps);
    cp->limits = ob_xcalloc(cp->n, sizeof *cp->limits);
    sh->cap_retired = ob_xrealloc(sh->cap_retired, (sh->num_cap_retired + 1) * sizeof *sh->cap_retired);
    sh->cap_retired[sh->num_cap_retired++] = cp->limits;
    ob_cap_params_t cp_params = {u->capacity.min, u->capacity.max, u->capacity.interval_ms, u->capacity.target_waiting,
                                 u->capacity.kv_high};
    for (size_t j = 0; j < cp->n; j++) {
      cap_ep_t *e = &cp->eps[j];
      e->pool = cp;
      e->index = j;
      e->last_source = -1;
      e->running = e->waiting = e->kv = NAN;
      ob_buf_init(&e->body);
      const cap_ep_t *was = NULL;
      for (size_t k = 0; old && k < old->n && !was; k++) {
        const cap_pool_t *op = &old->pools[k];
        if (strcmp(op->name, u->name) != 0) continue;
        const ob_config_upstream_t *ou = NULL;
        (void)ou;
        for (size_t m = 0; m < op->n; m++)
          if (op->eps[m].authority_ && strcmp(op->eps[m].authority_, u->endpoints[j].authority) == 0) was = &op->eps[m];
      }
      ob_cap_init(&e->ctl, &cp_params, was ? ob_cap_limit(&was->ctl) : u->capacity.min, now);
      e->authority_ = ob_xstrdup(u->endpoints[j].authority);
    }
    apply_pool(cp);
    cp->timer = evtimer_new(p->base, on_tick, cp);
    struct timeval soon = {0, 1000};
    evtimer_add(cp->timer, &soon);
  }
  sh->capacity = cap;
  if (old) {
    for (size_t k = 0; k < old->n; k++) pool_free(&old->pools[k]);
    free(old->pools);
    free(old);
  }
}
