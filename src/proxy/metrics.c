/*
 * metrics.c: the proxy's counters and their Prometheus text exposition
 * (version 0.0.4). Each worker counts its own exchanges as they end (under
 * its metrics_mu, uncontended but for a scrape); the exposition, on the
 * first worker's loop, sums every worker's counters and asks each worker's
 * loop for its net counters. Series are bounded by construction: route classes, status codes,
 * admission outcomes, configured pools and endpoints, and per-tenant series
 * only when metrics.per_tenant is on, for at most metrics.max_tenants
 * tenants; budget series only for tenants with a budget_tokens, capped the
 * same way.
 */
#include "proxy_int.h"

#include <stdlib.h>
#include <stdio.h>
#include <time.h>

static const char *const class_names[OB_METRIC_CLASSES] = {"inference", "passthrough", "grpc", "mcp", "grpc_health", "none"};
static const char *const adm_names[OB_METRIC_ADMISSIONS] = {"fast", "queued", "rejected", "none", "budget"};
static const char *const cache_names[4] = {"hit", "miss", "bypass", "coalesced"};
static const double buckets[OB_METRIC_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                  0.25,   0.5,   1,      2.5,   5,    10,    30,    60};

static int class_index(const ob_exchange_t *x) {
  if (!x->route) return OB_METRIC_CLASSES - 1;
  for (int i = 0; i < OB_METRIC_CLASSES - 1; i++)
    if (strcmp(x->route->cls->name, class_names[i]) == 0) return i;
  return OB_METRIC_CLASSES - 1;
}

static void observe(ob_histogram_t *h, double v) {
  for (int i = 0; i < OB_METRIC_BUCKETS; i++)
    if (v <= buckets[i]) h->counts[i]++;
  h->count++;
  h->sum += v;
}

void ob_proxy_metrics_record(ob_proxy_t *p, const ob_exchange_t *x, const ob_sreq_t *s, uint64_t now_us) {
  ob_metrics_t *m = &p->metrics;
  int c = class_index(x);
  pthread_mutex_lock(&p->metrics_mu);
  int code = s->status >= 100 && s->status <= 599 ? s->status : 599;
  int adm = !x->admission                           ? 3
            : strcmp(x->admission, "fast") == 0     ? 0
            : strcmp(x->admission, "queued") == 0   ? 1
            : strcmp(x->admission, "budget") == 0   ? 4
                                                    : 2;
  m->requests[c][code - 100][adm]++;
  observe(&m->total[c], (double)(now_us - s->start_us) / 1e6);
  if (x->ttfb_us) observe(&m->ttfb[c], (double)(x->ttfb_us - s->start_us) / 1e6);
  if (adm <= 1) observe(&m->queue_wait[c], (double)x->queue_us / 1e6);
  m->prompt_tokens[c] += x->usage_prompt;
  m->completion_tokens[c] += x->usage_completion;
  m->bytes_out[c] += s->bytes_out;
  if (x->cache_outcome) {
    for (int i = 0; i < 4; i++)
      if (strcmp(x->cache_outcome, cache_names[i]) == 0) m->cache[i]++;
    if (strcmp(x->cache_outcome, "hit") == 0) {
      m->cache_hit_bytes += s->bytes_out;
      m->cache_tokens_saved += x->cache_tokens_saved;
    }
  }
  pthread_mutex_unlock(&p->metrics_mu);
}

static void add_histograms(ob_histogram_t *to, const ob_histogram_t *from) {
  for (int c = 0; c < OB_METRIC_CLASSES; c++) {
    for (int i = 0; i < OB_METRIC_BUCKETS; i++) to[c].counts[i] += from[c].counts[i];
    to[c].count += from[c].count;
    to[c].sum += from[c].sum;
  }
}

/* Every worker's counters added into m. */
static void sum_metrics(ob_proxy_t *p, ob_metrics_t *m) {
  for (size_t w = 0; w < p->sh->num_workers; w++) {
    ob_proxy_t *q = p->sh->workers[w];
    pthread_mutex_lock(&q->metrics_mu);
    const ob_metrics_t *f = &q->metrics;
    for (int c = 0; c < OB_METRIC_CLASSES; c++) {
      for (int code = 0; code < 500; code++)
        for (int a = 0; a < OB_METRIC_ADMISSIONS; a++) m->requests[c][code][a] += f->requests[c][code][a];
      m->prompt_tokens[c] += f->prompt_tokens[c];
      m->completion_tokens[c] += f->completion_tokens[c];
      m->bytes_out[c] += f->bytes_out[c];
    }
    add_histograms(m->queue_wait, f->queue_wait);
    add_histograms(m->ttfb, f->ttfb);
    add_histograms(m->total, f->total);
    for (int i = 0; i < 4; i++) m->cache[i] += f->cache[i];
    m->cache_hit_bytes += f->cache_hit_bytes;
    m->cache_tokens_saved += f->cache_tokens_saved;
    pthread_mutex_unlock(&q->metrics_mu);
  }
}

/* One worker's net counters, read on its own loop (ob_proxy_run_on). */
typedef struct net_snap {
  ob_net_t *net;
  ob_net_conn_stats_t conns;
  uint64_t (*per_worker)[2];         /* in the sum: each worker's accepted and open connections */
  size_t n;
  struct {
    const char *upstream, *endpoint; /* borrowed from the worker's config, which outlives the scrape */
    uint64_t v[3];                   /* attempts, failures, in flight */
  } *e;
} net_snap_t;

static void take_net_snap(void *arg) {
  net_snap_t *s = arg;
  ob_net_conn_stats(s->net, &s->conns);
  for (size_t i = 0; i < ob_net_num_upstreams(s->net); i++) {
    ob_upstream_t *up = ob_net_upstream_at(s->net, i);
    for (size_t e = 0; up && e < ob_upstream_num_endpoints(up); e++) {
      ob_endpoint_stats_t es;
      ob_upstream_endpoint_stats(up, e, &es);
      s->e = ob_xrealloc(s->e, (s->n + 1) * sizeof *s->e);
      s->e[s->n].upstream = ob_upstream_name(up);
      s->e[s->n].endpoint = es.authority;
      s->e[s->n].v[0] = es.attempts, s->e[s->n].v[1] = es.failures, s->e[s->n].v[2] = es.inflight;
      s->n++;
    }
  }
}

/* The net counters of every worker, added up into the first's list. */
static void sum_net(ob_proxy_t *p, net_snap_t *sum) {
  size_t nw = p->sh->num_workers;
  uint64_t (*per)[2] = ob_xcalloc(nw, sizeof *per);
  for (size_t w = 0; w < nw; w++) {
    ob_proxy_t *q = p->sh->workers[w];
    net_snap_t s = {.net = q->net};
    if (q->net) ob_proxy_run_on(q, take_net_snap, &s);
    per[w][0] = s.conns.accepted[0] + s.conns.accepted[1];
    per[w][1] = s.conns.open[0] + s.conns.open[1];
    if (w == 0) {
      *sum = s;
      sum->per_worker = per;
      continue;
    }
    for (int k = 0; k < 2; k++) {
      sum->conns.accepted[k] += s.conns.accepted[k];
      sum->conns.open[k] += s.conns.open[k];
    }
    sum->conns.tls_accepted += s.conns.tls_accepted;
    /* Same config, same order; matched by name all the same (a reload may
     * be half-way through the workers). */
    for (size_t i = 0; i < s.n; i++)
      for (size_t j = 0; j < sum->n; j++)
        if (strcmp(sum->e[j].upstream, s.e[i].upstream) == 0 && strcmp(sum->e[j].endpoint, s.e[i].endpoint) == 0) {
          for (int k = 0; k < 3; k++) sum->e[j].v[k] += s.e[i].v[k];
          break;
        }
    free(s.e);
  }
}

/* A label value, escaped as the text format wants (\\, \", \n). */
static void label(ob_buf_t *b, const char *v) {
  for (; *v; v++) {
    if (*v == '\\' || *v == '"') ob_buf_append(b, "\\", 1), ob_buf_append(b, v, 1);
    else if (*v == '\n') ob_buf_append_str(b, "\\n");
    else ob_buf_append(b, v, 1);
  }
}

static void head(ob_buf_t *b, const char *name, const char *type, const char *help) {
  ob_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(ob_buf_t *b, const char *name, const ob_histogram_t *h, const char *cls) {
  for (int i = 0; i < OB_METRIC_BUCKETS; i++)
    ob_buf_printf(b, "%s_bucket{class=\"%s\",le=\"%g\"} %llu\n", name, cls, buckets[i], (unsigned long long)h->counts[i]);
  ob_buf_printf(b, "%s_bucket{class=\"%s\",le=\"+Inf\"} %llu\n", name, cls, (unsigned long long)h->count);
  ob_buf_printf(b, "%s_sum{class=\"%s\"} %.6f\n%s_count{class=\"%s\"} %llu\n", name, cls, h->sum, name, cls,
                (unsigned long long)h->count);
}

/* Tenants with a budget_tokens: what they used in the current period and
 * their limit. Keys get no series (there can be very many); the admin
 * tenant view has them. */
static void budget_metrics(ob_proxy_t *p, ob_buf_t *b) {
  const ob_config_t *c = p->cfg;
  int64_t now = (int64_t)time(NULL);
  for (int k = 0; k < 2; k++) {
    size_t shown = 0;
    for (size_t i = 0; i < c->num_tenants && shown < c->metrics.max_tenants; i++) {
      const ob_config_tenant_t *t = &c->tenants[i];
      if (!t->budget_tokens) continue;
      if (!shown++) {
        if (k == 0) head(b, "obleth_budget_used_tokens", "gauge", "Tokens the tenant used in its current budget period.");
        else head(b, "obleth_budget_limit_tokens", "gauge", "The tenant's budget_tokens per budget period.");
      }
      ob_buf_printf(b, "%s{tenant=\"", k == 0 ? "obleth_budget_used_tokens" : "obleth_budget_limit_tokens");
      label(b, t->name);
      uint64_t v = k == 0 ? ob_proxy_budget_used(p, OB_BUDGET_TENANT, t->name, t->budget_period, now) : t->budget_tokens;
      ob_buf_printf(b, "\"} %llu\n", (unsigned long long)v);
    }
  }
  head(b, "obleth_budget_write_errors_total", "counter", "Failed writes of budget counters to budgets.path.");
  ob_buf_printf(b, "obleth_budget_write_errors_total %llu\n", (unsigned long long)ob_budgets_write_errors(p->budgets));
}

void ob_proxy_write_metrics(ob_proxy_t *p, ob_buf_t *b) {
  /* Gathered first: the workers' loops must not wait for the lock taken
   * below while this thread waits for them. */
  net_snap_t ns = {0};
  sum_net(p, &ns);
  ob_metrics_t *m = ob_xcalloc(1, sizeof *m);
  sum_metrics(p, m);
  head(b, "obleth_requests_total", "counter", "Finished requests by route class, status and admission outcome.");
  for (int c = 0; c < OB_METRIC_CLASSES; c++)
    for (int code = 0; code < 500; code++)
      for (int a = 0; a < OB_METRIC_ADMISSIONS; a++)
        if (m->requests[c][code][a])
          ob_buf_printf(b, "obleth_requests_total{class=\"%s\",code=\"%d\",admission=\"%s\"} %llu\n", class_names[c],
                        code + 100, adm_names[a], (unsigned long long)m->requests[c][code][a]);
  const struct {
    const char *name, *help;
    ob_histogram_t *h;
  } hs[] = {
      {"obleth_queue_wait_seconds", "Time admitted requests waited for a slot.", m->queue_wait},
      {"obleth_time_to_first_byte_seconds", "From the request head to the upstream's response head.", m->ttfb},
      {"obleth_request_duration_seconds", "From the request head to the end of the exchange.", m->total},
  };
  for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) {
    head(b, hs[i].name, "histogram", hs[i].help);
    for (int c = 0; c < OB_METRIC_CLASSES; c++)
      if (hs[i].h[c].count) histogram(b, hs[i].name, &hs[i].h[c], class_names[c]);
  }
  head(b, "obleth_prompt_tokens_total", "counter", "Prompt tokens reported by upstreams.");
  for (int c = 0; c < OB_METRIC_CLASSES; c++)
    ob_buf_printf(b, "obleth_prompt_tokens_total{class=\"%s\"} %llu\n", class_names[c], (unsigned long long)m->prompt_tokens[c]);
  head(b, "obleth_completion_tokens_total", "counter", "Completion tokens reported by upstreams.");
  for (int c = 0; c < OB_METRIC_CLASSES; c++)
    ob_buf_printf(b, "obleth_completion_tokens_total{class=\"%s\"} %llu\n", class_names[c],
                  (unsigned long long)m->completion_tokens[c]);
  head(b, "obleth_response_bytes_total", "counter", "Response body bytes sent to clients.");
  for (int c = 0; c < OB_METRIC_CLASSES; c++)
    ob_buf_printf(b, "obleth_response_bytes_total{class=\"%s\"} %llu\n", class_names[c], (unsigned long long)m->bytes_out[c]);
  head(b, "obleth_cache_requests_total", "counter", "Cacheable requests by cache outcome.");
  for (int i = 0; i < 4; i++)
    ob_buf_printf(b, "obleth_cache_requests_total{outcome=\"%s\"} %llu\n", cache_names[i], (unsigned long long)m->cache[i]);
  head(b, "obleth_cache_hit_bytes_total", "counter", "Response bytes answered from the cache.");
  ob_buf_printf(b, "obleth_cache_hit_bytes_total %llu\n", (unsigned long long)m->cache_hit_bytes);
  head(b, "obleth_cache_tokens_saved_total", "counter", "Tokens the cached answers cost when they were made.");
  ob_buf_printf(b, "obleth_cache_tokens_saved_total %llu\n", (unsigned long long)m->cache_tokens_saved);

  free(m);
  ob_proxy_lock(p);
  head(b, "obleth_workers", "gauge", "Event-loop threads (workers) sharing the scheduler.");
  ob_buf_printf(b, "obleth_workers %zu\n", p->sh->num_workers);
  head(b, "obleth_scheduler_lock_acquisitions_total", "counter", "Times a worker took the shared scheduler lock.");
  ob_buf_printf(b, "obleth_scheduler_lock_acquisitions_total %llu\n", (unsigned long long)p->sh->lock_taken);
  head(b, "obleth_scheduler_lock_contended_total", "counter",
       "Times a worker found the shared scheduler lock held by another and waited.");
  ob_buf_printf(b, "obleth_scheduler_lock_contended_total %llu\n", (unsigned long long)p->sh->lock_contended);
  /* Pools: the scheduler's view. */
  static const char *const pool_names[3] = {"obleth_pool_inflight", "obleth_pool_queued", "obleth_pool_slots"};
  static const char *const pool_helps[3] = {"Admitted requests holding a slot, per upstream pool.",
                                            "Requests waiting for a slot, per upstream pool.",
                                            "Configured max_inflight per upstream pool (0 = unlimited)."};
  for (int k = 0; k < 3; k++) {
    head(b, pool_names[k], "gauge", pool_helps[k]);
    for (size_t i = 0; i < p->cfg->num_upstreams; i++) {
      ob_fs_pool_stats_t ps;
      ob_fs_pool_stats(p->sh->fs, p->gen->pool_of[i], &ps);
      ob_buf_printf(b, "%s{pool=\"", pool_names[k]);
      label(b, p->cfg->upstreams[i].name);
      ob_buf_printf(b, "\"} %u\n", k == 0 ? ps.inflight : k == 1 ? ps.queued : p->cfg->upstreams[i].max_inflight);
    }
  }

  /* Upstream endpoints and client connections: net's counters. */
  if (p->net) {
    const char *names[3] = {"obleth_upstream_attempts_total", "obleth_upstream_failures_total", "obleth_upstream_inflight"};
    const char *helps[3] = {"Requests started on an upstream endpoint.", "Requests that failed on an upstream endpoint.",
                            "Requests in flight on an upstream endpoint."};
    for (int k = 0; k < 3; k++) {
      head(b, names[k], k == 2 ? "gauge" : "counter", helps[k]);
      for (size_t i = 0; i < ns.n; i++) {
        ob_buf_printf(b, "%s{upstream=\"", names[k]);
        label(b, ns.e[i].upstream);
        ob_buf_append_str(b, "\",endpoint=\"");
        label(b, ns.e[i].endpoint);
        ob_buf_printf(b, "\"} %llu\n", (unsigned long long)ns.e[i].v[k]);
      }
    }
    ob_net_conn_stats_t cs = ns.conns;
    static const char *const protos[2] = {"http1", "http2"};
    head(b, "obleth_connections_total", "counter", "Client connections accepted, by protocol.");
    for (int i = 0; i < 2; i++)
      ob_buf_printf(b, "obleth_connections_total{protocol=\"%s\"} %llu\n", protos[i], (unsigned long long)cs.accepted[i]);
    head(b, "obleth_connections_open", "gauge", "Client connections open, by protocol.");
    for (int i = 0; i < 2; i++)
      ob_buf_printf(b, "obleth_connections_open{protocol=\"%s\"} %llu\n", protos[i], (unsigned long long)cs.open[i]);
    /* How the kernel spread connections over the workers (SO_REUSEPORT). */
    head(b, "obleth_worker_connections_total", "counter", "Client connections accepted, by worker (event-loop thread).");
    for (size_t w = 0; w < p->sh->num_workers; w++)
      ob_buf_printf(b, "obleth_worker_connections_total{worker=\"%zu\"} %llu\n", w, (unsigned long long)ns.per_worker[w][0]);
    head(b, "obleth_worker_connections_open", "gauge", "Client connections open, by worker (event-loop thread).");
    for (size_t w = 0; w < p->sh->num_workers; w++)
      ob_buf_printf(b, "obleth_worker_connections_open{worker=\"%zu\"} %llu\n", w, (unsigned long long)ns.per_worker[w][1]);
  }

  if (p->ledger) {
    uint64_t lines, dropped, errors;
    ob_ledger_counts(p->ledger, &lines, &dropped, &errors);
    head(b, "obleth_ledger_lines_total", "counter", "Ledger lines queued for the ledger file.");
    ob_buf_printf(b, "obleth_ledger_lines_total %llu\n", (unsigned long long)lines);
    head(b, "obleth_ledger_dropped_total", "counter", "Ledger lines dropped because the disk was behind.");
    ob_buf_printf(b, "obleth_ledger_dropped_total %llu\n", (unsigned long long)dropped);
    head(b, "obleth_ledger_write_errors_total", "counter", "Failed writes to the ledger file.");
    ob_buf_printf(b, "obleth_ledger_write_errors_total %llu\n", (unsigned long long)errors);
  }

  if (p->budgets) budget_metrics(p, b);

  /* Per tenant, only when asked for and capped: tenants are unbounded. */
  if (p->cfg->metrics.per_tenant && p->cfg->num_tenants) {
    size_t nt = p->cfg->num_tenants;
    if (nt > p->cfg->metrics.max_tenants) nt = p->cfg->metrics.max_tenants;
    uint64_t total_service = 0, total_weight = 0;
    for (size_t i = 0; i < p->cfg->num_tenants; i++) {
      ob_fs_tenant_stats_t ts;
      ob_fs_tenant_stats(p->sh->fs, ob_proxy_tstate(p, p->gen, i)->fs, &ts);
      total_service += ts.service;
      total_weight += ts.weight;
    }
    const char *tn[5] = {"obleth_tenant_inflight", "obleth_tenant_queued", "obleth_tenant_service_total",
                         "obleth_tenant_service_share", "obleth_tenant_weight_share"};
    const char *th[5] = {"Requests of the tenant holding a slot.", "Requests of the tenant waiting for a slot.",
                         "Cost charged to the tenant by the scheduler (tokens or requests).",
                         "The tenant's part of all service so far (0..1).",
                         "The tenant's weight over all tenants' weights: its share when everyone is backlogged (0..1)."};
    for (int k = 0; k < 5; k++) {
      head(b, tn[k], k == 2 ? "counter" : "gauge", th[k]);
      for (size_t i = 0; i < nt; i++) {
        ob_fs_tenant_stats_t ts;
        ob_fs_tenant_stats(p->sh->fs, ob_proxy_tstate(p, p->gen, i)->fs, &ts);
        ob_buf_printf(b, "%s{tenant=\"", tn[k]);
        label(b, p->cfg->tenants[i].name);
        ob_buf_append_str(b, "\"} ");
        if (k == 0) ob_buf_printf(b, "%u\n", ts.inflight);
        else if (k == 1) ob_buf_printf(b, "%u\n", ts.queued);
        else if (k == 2) ob_buf_printf(b, "%llu\n", (unsigned long long)ts.service);
        else if (k == 3) ob_buf_printf(b, "%.6f\n", total_service ? (double)ts.service / (double)total_service : 0.0);
        else ob_buf_printf(b, "%.6f\n", total_weight ? (double)ts.weight / (double)total_weight : 0.0);
      }
    }
  }
  ob_proxy_unlock(p);
  free(ns.e);
  free(ns.per_worker);
  ob_proxy_write_cluster_metrics(p, b);
  ob_proxy_write_capacity_metrics(p, b);
}
