/*
 * admission.c: the identify and admit stages of the pipeline, and the
 * release that ends every admitted exchange exactly once. It turns the
 * config snapshot into scheduler pools (one per upstream), groups and
 * tenants, keeps the per-tenant rpm / tpm buckets, drives the scheduler's
 * grant and expiry loops, and answers 401 / 403 / 429 / 503 in OpenAI's
 * shape. The scheduling itself is src/fairshare's. Token budgets are
 * checked here before a request may queue and charged at release; their
 * counters are src/tenant's (ob_budgets_t), shared with the admin view.
 *
 * With several workers the scheduler and the tenant state are shared
 * (ob_proxy_shared_t, one mutex). A grant or an expiry found by any worker
 * is posted to the inbox of the worker that owns the exchange, which acts
 * on it on its own loop; so an exchange is only ever touched by its own
 * thread, and nothing is forwarded or answered with the lock held.
 */
#include "proxy_int.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* ---------------------------------------------------------------- setup */

static ob_fs_mode_t fs_mode(ob_admission_mode_t m) {
  return m == OB_ADMIT_FIFO ? OB_FS_FIFO : m == OB_ADMIT_WEIGHTED ? OB_FS_WEIGHTED : OB_FS_HIERARCHICAL;
}

/* Locked. Every worker that queues a request arms its own timer for the
 * earliest deadline, and one that fires re-arms for the next, so some
 * timer is always due by the earliest queued deadline. */
void ob_proxy_arm_expiry(ob_proxy_t *p) {
  uint64_t d = ob_fs_next_deadline(p->sh->fs);
  if (!d) {
    evtimer_del(p->expiry);
    return;
  }
  uint64_t now = ob_clock_us();
  uint64_t in = d > now ? d - now : 0;
  struct timeval tv = {(time_t)(in / 1000000), (suseconds_t)(in % 1000000)};
  evtimer_add(p->expiry, &tv);
}

/* ---------------------------------------------------------------- inbox */

void ob_proxy_wake(ob_proxy_t *w) {
  __atomic_store_n(&w->pending, true, __ATOMIC_RELAXED);
  if (w->woken || (w->loop_running && pthread_equal(w->thread, pthread_self()))) return;
  w->woken = true;
  ob_waker_wake(w->waker);
}

void ob_proxy_inbox_post(ob_exchange_t *x, int kind) {
  ob_proxy_t *w = x->proxy;
  x->in_kind = kind;
  x->in_next = NULL;
  x->in_prev = w->in_tail;
  if (w->in_tail) w->in_tail->in_next = x;
  else w->in_head = x;
  w->in_tail = x;
  ob_proxy_wake(w);
}

void ob_proxy_inbox_remove(ob_exchange_t *x) {
  if (x->in_kind == INBOX_NONE) return;
  ob_proxy_t *w = x->proxy;
  if (x->in_prev) x->in_prev->in_next = x->in_next;
  else w->in_head = x->in_next;
  if (x->in_next) x->in_next->in_prev = x->in_prev;
  else w->in_tail = x->in_prev;
  x->in_prev = x->in_next = NULL;
  x->in_kind = INBOX_NONE;
}

/* Locked: give every slot the scheduler can grant now to its exchange. */
void ob_proxy_pump_locked(ob_proxy_t *p) {
  ob_fs_req_t *r;
  uint64_t now = ob_clock_us();
  while ((r = ob_fs_next_grant(p->sh->fs, now))) {
    ob_exchange_t *x = r->user;
    x->fs_state = FS_GRANTED;
    ob_fleet_local_grant(x);
    x->queue_us = now - x->queue_start_us;
    x->admission = "queued";
    ob_proxy_inbox_post(x, INBOX_GRANT);
  }
  ob_proxy_arm_expiry(p);
}

static void retry_after_header(ob_exchange_t *x, uint64_t ms, ob_http_header_t *h, size_t *k) {
  char *v = ob_arena_alloc(x->arena, 24);
  snprintf(v, 24, "%llu", (unsigned long long)((ms + 999) / 1000));
  h[(*k)++] = (ob_http_header_t){OB_IOV_LIT("retry-after"), ob_iov_str(v)};
}

/* On x's own loop: it waited past its deadline. */
void ob_proxy_answer_expired(ob_exchange_t *x) {
  uint64_t now = ob_clock_us();
  if (x->grpc && x->deadline_us && now >= x->deadline_us) {
    /* The client's own deadline ran out, not the gateway's patience. */
    ob_proxy_reply_error_h(x, 504, "Deadline Exceeded while waiting for capacity", "server_error",
                           "deadline_exceeded", NULL, 0);
    return;
  }
  ob_proxy_lock(x->proxy);
  uint64_t ms = ob_fs_retry_after_ms(x->proxy->sh->fs, x->fsr.pool, x->fsr.tenant, now);
  ob_proxy_unlock(x->proxy);
  ob_http_header_t h[OB_PROXY_ADMISSION_HEADERS + 1];
  size_t k = 0;
  retry_after_header(x, ms, h, &k);
  ob_proxy_reply_error_h(x, 503, "The request waited too long for capacity; retry later.", "server_error",
                         "queue_timeout", h, k);
}

void ob_proxy_drain_inbox(ob_proxy_t *p) {
  if (p->draining) return; /* an outer drain on this thread picks up what was added */
  /* Most calls find nothing: skip the lock then. A post from another
   * thread that this read misses has also written to the wake pipe. */
  if (!__atomic_load_n(&p->pending, __ATOMIC_RELAXED)) return;
  p->draining = true;
  ob_fleet_flush(p); /* calls other workers posted for the Redis link */
  for (;;) {
    ob_proxy_lock(p);
    ob_proxy_call_t *c = p->calls;
    ob_exchange_t *x = NULL;
    int kind = INBOX_NONE;
    if (c) {
      p->calls = c->next;
    } else if ((x = p->in_head)) {
      kind = x->in_kind;
      ob_proxy_inbox_remove(x);
    }
    if (!p->calls && !p->in_head) __atomic_store_n(&p->pending, false, __ATOMIC_RELAXED);
    ob_proxy_unlock(p);
    if (c) {
      c->fn(c->arg);
      ob_proxy_lock(p);
      c->done = true; /* c belongs to the poster from here on */
      pthread_cond_broadcast(&p->sh->called);
      ob_proxy_unlock(p);
    } else if (!x) {
      break;
    } else if (kind == INBOX_GRANT) {
      ob_proxy_forward(x);
    } else if (kind == INBOX_FLEET) {
      ob_fleet_verdict(x);
    } else {
      ob_proxy_answer_expired(x);
    }
  }
  p->draining = false;
  ob_fleet_flush(p);
}

static void on_wake(void *arg) {
  ob_proxy_t *p = arg;
  ob_proxy_lock(p);
  p->woken = false;
  ob_proxy_unlock(p);
  ob_proxy_drain_inbox(p);
}

static void on_expiry(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  ob_proxy_t *p = arg;
  uint64_t now = ob_clock_us();
  ob_fs_req_t *r;
  ob_proxy_lock(p);
  while ((r = ob_fs_next_expired(p->sh->fs, now))) {
    ob_exchange_t *x = r->user;
    x->fs_state = FS_DONE;
    x->queue_us = now - x->queue_start_us;
    x->admission = "queued";
    ob_proxy_inbox_post(x, INBOX_EXPIRED);
  }
  ob_proxy_pump_locked(p);
  ob_proxy_unlock(p);
  ob_proxy_drain_inbox(p);
}

ob_fs_params_t ob_proxy_fs_params(const ob_proxy_t *p) {
  const ob_config_admission_t *a = &p->gen->cfg->admission;
  return (ob_fs_params_t){fs_mode(a->mode), ob_fleet_cap(p->sh, a->max_inflight), ob_fleet_cap(p->sh, a->max_queue),
                          a->quantum};
}

static int cmp_tstate_name(const void *a, const void *b) {
  const ob_tstate_t *const *x = a, *const *y = b;
  return strcmp((*x)->name, (*y)->name);
}

long ob_proxy_find_group(const ob_proxy_t *p, const char *name) {
  for (size_t g = 0; g < ob_fs_num_groups(p->sh->fs); g++) {
    ob_fs_group_stats_t gs;
    ob_fs_group_stats(p->sh->fs, (ob_fs_group_id)g, &gs);
    if (strcmp(gs.name, name) == 0) return (long)g;
  }
  return -1;
}

/* The scheduler group named name, added with weight when new; set: an
 * existing one takes weight too. */
static ob_fs_group_id group_of(ob_proxy_t *p, const char *name, uint32_t weight, bool set) {
  long g = ob_proxy_find_group(p, name);
  if (g < 0) return ob_fs_group_add(p->sh->fs, name, weight);
  if (set) ob_fs_group_set(p->sh->fs, (ob_fs_group_id)g, weight);
  return (ob_fs_group_id)g;
}

void ob_proxy_gen_bind(ob_proxy_t *p, ob_proxy_gen_t *gen) {
  const ob_config_t *c = gen->cfg;
  for (size_t i = 0; i < c->num_upstreams; i++) {
    size_t k = 0;
    while (k < p->sh->num_pools && strcmp(p->sh->pool_names[k], c->upstreams[i].name) != 0) k++;
    if (k == p->sh->num_pools) {
      p->sh->pool_names = ob_xrealloc(p->sh->pool_names, (p->sh->num_pools + 1) * sizeof *p->sh->pool_names);
      p->sh->pool_names[p->sh->num_pools++] = ob_xstrdup(c->upstreams[i].name);
      gen->pool_of[i] = ob_fs_pool_add(p->sh->fs, c->upstreams[i].name, ob_fleet_cap(p->sh, ob_proxy_pool_slots(p->sh, &c->upstreams[i])));
    } else {
      gen->pool_of[i] = (ob_fs_pool_id)k; /* pools are numbered in the order they were added */
      ob_fs_pool_set(p->sh->fs, gen->pool_of[i], ob_fleet_cap(p->sh, ob_proxy_pool_slots(p->sh, &c->upstreams[i])));
    }
  }
  for (size_t i = 0; i < c->num_groups; i++) group_of(p, c->groups[i].name, c->groups[i].weight, true);
  /* Tenants by name: the known ones sorted once, so a reload of n tenants
   * is O(n log n); matched before any is added (adding moves the array). */
  ob_tstate_t **sorted = ob_xcalloc(p->sh->num_tstates + 1, sizeof *sorted);
  for (size_t i = 0; i < p->sh->num_tstates; i++) sorted[i] = &p->sh->tstates[i];
  qsort(sorted, p->sh->num_tstates, sizeof *sorted, cmp_tstate_name);
  for (size_t i = 0; i < c->num_tenants; i++) {
    ob_tstate_t key = {.name = c->tenants[i].name}, *kp = &key;
    ob_tstate_t **hit = p->sh->num_tstates ? bsearch(&kp, sorted, p->sh->num_tstates, sizeof *sorted, cmp_tstate_name) : NULL;
    gen->tstate_of[i] = hit ? (uint32_t)(*hit - p->sh->tstates) : UINT32_MAX;
  }
  free(sorted);
  uint64_t now = ob_clock_us();
  for (size_t i = 0; i < c->num_tenants; i++) {
    const ob_config_tenant_t *t = &c->tenants[i];
    ob_fs_tenant_params_t tp = {group_of(p, t->group, 1, false), t->weight ? t->weight : 1,
                                ob_fleet_cap(p->sh, t->max_inflight), ob_fleet_cap(p->sh, t->max_queue)};
    uint64_t rpm = ob_fleet_rate(p->sh, t->rpm), tpm = ob_fleet_rate(p->sh, t->tpm);
    if (gen->tstate_of[i] != UINT32_MAX) {
      ob_tstate_t *ts = &p->sh->tstates[gen->tstate_of[i]];
      ob_fs_tenant_set(p->sh->fs, ts->fs, &tp);
      /* A changed limit starts a fresh bucket; an unchanged one keeps what
       * the tenant has used this minute. */
      if (ts->rpm.per_minute != rpm) ob_fs_bucket_init(&ts->rpm, rpm, now);
      if (ts->tpm.per_minute != tpm) ob_fs_bucket_init(&ts->tpm, tpm, now);
      ts->disabled = false; /* the file says whether it is disabled */
      continue;
    }
    if (p->sh->num_tstates == p->sh->cap_tstates) {
      p->sh->cap_tstates = p->sh->cap_tstates ? p->sh->cap_tstates * 2 : 16;
      p->sh->tstates = ob_xrealloc(p->sh->tstates, p->sh->cap_tstates * sizeof *p->sh->tstates);
    }
    ob_tstate_t *ts = &p->sh->tstates[p->sh->num_tstates];
    memset(ts, 0, sizeof *ts);
    ts->name = ob_xstrdup(t->name);
    ts->fs = ob_fs_tenant_add(p->sh->fs, t->name, &tp);
    ob_fs_bucket_init(&ts->rpm, rpm, now);
    ob_fs_bucket_init(&ts->tpm, tpm, now);
    gen->tstate_of[i] = (uint32_t)p->sh->num_tstates++;
  }
  if (c->num_tenants == 0 && !p->sh->has_anonymous) {
    ob_fs_tenant_params_t tp = {group_of(p, "default", 1, false), 1, 0, 0};
    p->sh->anonymous = ob_fs_tenant_add(p->sh->fs, "anonymous", &tp);
    p->sh->has_anonymous = true;
  }
}

void ob_proxy_admission_share(ob_proxy_t *p, ob_proxy_t *first) {
  ob_proxy_shared_t *sh;
  if (first) {
    sh = p->sh = first->sh;
  } else {
    sh = p->sh = ob_xcalloc(1, sizeof *sh);
    pthread_mutex_init(&sh->mu, NULL);
    pthread_cond_init(&sh->called, NULL);
    sh->fs = ob_fs_create(&(ob_fs_params_t){fs_mode(p->gen->cfg->admission.mode), p->gen->cfg->admission.max_inflight,
                                            p->gen->cfg->admission.max_queue, p->gen->cfg->admission.quantum});
  }
  ob_proxy_lock(p);
  p->index = sh->num_workers;
  sh->workers = ob_xrealloc(sh->workers, (sh->num_workers + 1) * sizeof *sh->workers);
  sh->workers[sh->num_workers++] = p;
  ob_proxy_gen_bind(p, p->gen);
  ob_proxy_unlock(p);
}

void ob_proxy_admission_init(ob_proxy_t *p, struct event_base *base) {
  p->expiry = evtimer_new(base, on_expiry, p);
  if (!(p->waker = ob_waker_new(base, on_wake, p))) abort(); /* at start-up, before anything is served */
}

void ob_proxy_admission_changed(ob_proxy_t *p) {
  ob_proxy_lock(p);
  ob_fs_params_t fp = ob_proxy_fs_params(p);
  ob_fs_set_params(p->sh->fs, &fp);
  ob_proxy_pump_locked(p);
  ob_proxy_unlock(p);
  ob_proxy_drain_inbox(p);
}

void ob_proxy_admission_dispose(ob_proxy_t *p) {
  if (p->expiry) event_free(p->expiry);
  ob_waker_free(p->waker);
  ob_proxy_shared_t *sh = p->sh;
  if (!sh || p->index != 0) return; /* the first worker owns the shared state and goes last */
  ob_proxy_capacity_dispose(sh);
  ob_fs_destroy(sh->fs);
  for (size_t i = 0; i < sh->num_pools; i++) free(sh->pool_names[i]);
  free(sh->pool_names);
  for (size_t i = 0; i < sh->num_tstates; i++) free(sh->tstates[i].name);
  free(sh->tstates);
  free(sh->workers);
  pthread_mutex_destroy(&sh->mu);
  pthread_cond_destroy(&sh->called);
  free(sh);
}

/* ---------------------------------------------------------------- identify */

bool ob_proxy_identify(ob_exchange_t *x) {
  ob_proxy_t *p = x->proxy;
  const ob_tenants_t *dir = x->gen->tenants;
  if (!ob_tenants_required(dir)) return true;
  const ob_http_header_t *auth = ob_sreq_header(x->req, "authorization");
  const ob_http_header_t *xkey = ob_sreq_header(x->req, "x-api-key");
  _Static_assert(sizeof(ob_tenant_memo_t) <= sizeof(ob_conn_scratch_t), "the memo lives in the connection's scratch");
  ob_conn_scratch_t *scratch = ob_sreq_conn_scratch(x->req);
  ob_tenant_memo_t *memo = scratch ? (ob_tenant_memo_t *)scratch->bytes : NULL;
  /* Two fields of one name are as ambiguous as two names for two keys:
   * answering 400 beats guessing which the client meant. */
  size_t n_auth = 0, n_xkey = 0;
  for (size_t i = 0; i < x->req->num_headers; i++) {
    ob_iov_t name = x->req->headers[i].name;
    n_auth += ob_iov_eq_str_nocase(name, "authorization");
    n_xkey += ob_iov_eq_str_nocase(name, "x-api-key");
  }
  ob_auth_t a = n_auth > 1 || n_xkey > 1
                    ? OB_AUTH_AMBIGUOUS
                    : ob_tenants_identify_memo(dir, memo, auth ? auth->value : OB_IOV_LIT(""),
                                               xkey ? xkey->value : OB_IOV_LIT(""), &x->who);
  if (a == OB_AUTH_OK) {
    ob_proxy_lock(p);
    if (ob_proxy_tstate(p, x->gen, x->who.tenant_index)->disabled) a = OB_AUTH_DISABLED; /* set by the admin API */
    ob_proxy_unlock(p);
  }
  switch (a) {
  case OB_AUTH_OK: return true;
  case OB_AUTH_MISSING:
    ob_exchange_reply_error(x, 401,
                            "You didn't provide an API key. Provide it in the Authorization header (Bearer) or in x-api-key.",
                            "invalid_request_error", "missing_api_key");
    return false;
  case OB_AUTH_UNKNOWN:
    ob_exchange_reply_error(x, 401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key");
    return false;
  case OB_AUTH_DISABLED:
    ob_exchange_reply_error(x, 403, "This API key or its tenant is disabled.", "permission_error", "tenant_disabled");
    return false;
  case OB_AUTH_AMBIGUOUS:
    ob_exchange_reply_error(x, 400,
                            "The request carries more than one API key. Send one key, in the Authorization header "
                            "(Bearer) or in x-api-key.",
                            "invalid_request_error", "ambiguous_api_key");
    return false;
  }
  return false;
}

/* ---------------------------------------------------------------- admit */

static size_t pool_index(const ob_config_t *c, const char *upstream) {
  for (size_t i = 0; i < c->num_upstreams; i++)
    if (strcmp(c->upstreams[i].name, upstream) == 0) return i;
  return 0;
}

/* "1s", "6m0s", "20ms": the duration format of OpenAI's x-ratelimit-reset-*. */
static const char *reset_text(ob_exchange_t *x, uint64_t ms) {
  char *v = ob_arena_alloc(x->arena, 32);
  if (ms < 1000) snprintf(v, 32, "%llums", (unsigned long long)ms);
  else if (ms < 60000) snprintf(v, 32, "%.3gs", (double)ms / 1000.0);
  else snprintf(v, 32, "%llum%llus", (unsigned long long)(ms / 60000), (unsigned long long)((ms % 60000) / 1000));
  return v;
}

static const char *num_text(ob_exchange_t *x, uint64_t n) {
  char *v = ob_arena_alloc(x->arena, OB_U64_CHARS);
  ob_fmt_u64(v, n);
  return v;
}

/* Rate-limit headers of a tenant that has limits; up to 6 entries. */
static size_t ratelimit_headers(ob_exchange_t *x, ob_http_header_t *h) {
  /* The buckets' limits are the config's (ob_proxy_gen_bind): without any,
   * there is nothing to read under the lock. */
  if (!x->who.tenant || !(x->who.tenant->rpm || x->who.tenant->tpm)) return 0;
  ob_proxy_lock(x->proxy);
  ob_tstate_t *ts = ob_proxy_tstate(x->proxy, x->gen, x->who.tenant_index);
  uint64_t now = ob_clock_us();
  /* Read under the lock, formatted after it. */
  uint64_t v[2][3] = {{ts->rpm.per_minute, ob_fs_bucket_remaining(&ts->rpm, now), ob_fs_bucket_full_ms(&ts->rpm, now)},
                      {ts->tpm.per_minute, ob_fs_bucket_remaining(&ts->tpm, now), ob_fs_bucket_full_ms(&ts->tpm, now)}};
  ob_proxy_unlock(x->proxy);
  if (x->fleet_rl) {
    /* Admitted by the fleet: its buckets are the ones that count. */
    const uint64_t lim[2] = {x->who.tenant->rpm, x->who.tenant->tpm};
    for (int i = 0; i < 2; i++) {
      v[i][0] = lim[i];
      if (x->fleet_v[1 + i] >= 0) v[i][1] = (uint64_t)x->fleet_v[1 + i];
      v[i][2] = lim[i] && v[i][1] < lim[i] ? (lim[i] - v[i][1]) * 60000 / lim[i] : 0;
    }
  }
  static const char *const names[2][3] = {
      {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"},
      {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"}};
  size_t k = 0;
  for (int i = 0; i < 2; i++) {
    if (!v[i][0]) continue;
    h[k++] = (ob_http_header_t){ob_iov_str(names[i][0]), ob_iov_str(num_text(x, v[i][0]))};
    h[k++] = (ob_http_header_t){ob_iov_str(names[i][1]), ob_iov_str(num_text(x, v[i][1]))};
    h[k++] = (ob_http_header_t){ob_iov_str(names[i][2]), ob_iov_str(reset_text(x, v[i][2]))};
  }
  return k;
}

size_t ob_proxy_admission_headers(ob_exchange_t *x, ob_http_header_t *h) {
  size_t k = 0;
  if (x->admission) {
    h[k++] = (ob_http_header_t){OB_IOV_LIT("x-obleth-admission"), ob_iov_str(x->admission)};
    h[k++] = (ob_http_header_t){OB_IOV_LIT("x-obleth-queue-ms"), ob_iov_str(num_text(x, x->queue_us / 1000))};
  }
  return k + ratelimit_headers(x, h + k);
}

void ob_proxy_reject_rate(ob_exchange_t *x, uint64_t wait_ms, const char *what) {
  ob_http_header_t h[OB_PROXY_ADMISSION_HEADERS + 1];
  size_t k = 0;
  retry_after_header(x, wait_ms, h, &k);
  char msg[160];
  snprintf(msg, sizeof msg, "Rate limit reached for %s per minute; retry after %llu ms.", what,
           (unsigned long long)wait_ms);
  x->admission = "rejected";
  ob_proxy_reply_error_h(x, 429, msg, "rate_limit_error", "rate_limit_exceeded", h, k);
}

/* ---------------------------------------------------------------- budgets */

uint64_t ob_proxy_budget_used(ob_proxy_t *p, ob_budget_kind_t kind, const char *name, ob_budget_period_t period,
                              int64_t now_s) {
  if (!p->budgets) return 0;
  char id[OB_BUDGET_PERIOD_ID_MAX];
  ob_budget_period_id(period, now_s, id);
  return ob_budgets_used(p->budgets, kind, name, id);
}

/* Answer 429 insufficient_quota: the tenant's (or the key's) budget for
 * the current period cannot take this request. reserved: tokens held by
 * requests in flight across the fleet (cluster mode; 0 otherwise). */
void ob_proxy_reject_budget(ob_exchange_t *x, bool tenant, uint64_t limit, uint64_t used, uint64_t reserved) {
  const ob_config_tenant_t *t = x->who.tenant;
  const ob_config_key_t *k = x->who.key;
  ob_budget_period_t period = tenant || !k ? t->budget_period : k->budget_period;
  int64_t now = (int64_t)time(NULL);
  char renews[64] = "it does not renew";
  int64_t end = ob_budget_period_end(period, now);
  if (end) {
    time_t e = (time_t)end;
    struct tm tm;
    gmtime_r(&e, &tm);
    strftime(renews, sizeof renews, "it renews at %Y-%m-%dT%H:%M:%SZ", &tm);
  }
  char msg[320], held[120] = "";
  if (used < limit)
    snprintf(held, sizeof held, ", %llu reserved by requests in flight, and this request may use up to %llu",
             (unsigned long long)reserved, (unsigned long long)(x->prompt_tokens_est + x->max_tokens));
  snprintf(msg, sizeof msg,
           "You exceeded your current quota: this %s's budget of %llu tokens %s is used up (%llu used%s); %s.",
           tenant ? "tenant" : "API key", (unsigned long long)limit,
           period == OB_BUDGET_TOTAL ? "in total" : period == OB_BUDGET_DAY ? "per day" : "per month",
           (unsigned long long)used, held, renews);
  /* The log line says whose budget it was (a 429 alone could be any limit). */
  size_t nl = (x->note ? strlen(x->note) + 1 : 0) + sizeof "budget=tenant";
  char *note = ob_arena_alloc(x->arena, nl);
  snprintf(note, nl, "%s%sbudget=%s", x->note ? x->note : "", x->note ? " " : "", tenant ? "tenant" : "key");
  x->note = note;
  x->admission = "budget";
  /* Retrying cannot help before the period ends; OpenAI's SDKs read this
   * header and give up at once instead of backing off. */
  ob_http_header_t h[1] = {{OB_IOV_LIT("x-should-retry"), OB_IOV_LIT("false")}};
  ob_proxy_reply_error_h(x, 429, msg, "insufficient_quota", "insufficient_quota", h, 1);
}

/* Answer 429 insufficient_quota when the tenant's or the key's budget for
 * the current period is used up. Requests already admitted finish and are
 * charged, so a budget can be overshot by what was in flight when it ran
 * out; that is the price of charging actual usage rather than estimates
 * (cluster mode reserves estimates instead: cluster.lua). */
static bool budget_refused(ob_exchange_t *x) {
  ob_proxy_t *p = x->proxy;
  const ob_config_tenant_t *t = x->who.tenant;
  const ob_config_key_t *k = x->who.key;
  if (!p->budgets || !t || !(t->budget_tokens || (k && k->budget_tokens))) return false;
  int64_t now = (int64_t)time(NULL);
  uint64_t used;
  if (t->budget_tokens &&
      (used = ob_proxy_budget_used(p, OB_BUDGET_TENANT, t->name, t->budget_period, now)) >= t->budget_tokens) {
    ob_proxy_reject_budget(x, true, t->budget_tokens, used, 0);
    return true;
  }
  if (k && k->budget_tokens &&
      (used = ob_proxy_budget_used(p, OB_BUDGET_KEY, k->id, k->budget_period, now)) >= k->budget_tokens) {
    ob_proxy_reject_budget(x, false, k->budget_tokens, used, 0);
    return true;
  }
  return false;
}

/* Charge what a finished exchange used to its tenant's and key's budgets.
 * tokens: the usage the upstream reported, else the class's estimate for a
 * successful answer (a stream without a usage chunk, or cut short before
 * it), so leaving out stream_options or hanging up early does not make
 * requests free; errors that reported nothing cost nothing. */
static uint64_t budget_charge(ob_exchange_t *x, uint64_t estimate) {
  ob_proxy_t *p = x->proxy;
  const ob_config_tenant_t *t = x->who.tenant;
  const ob_config_key_t *k = x->who.key;
  if (!p->budgets || !t || !(t->budget_tokens || (k && k->budget_tokens))) return 0;
  if (x->cache_outcome && (strcmp(x->cache_outcome, "hit") == 0 || strcmp(x->cache_outcome, "coalesced") == 0))
    return 0; /* answered without the upstream */
  uint64_t tokens = x->usage_prompt + x->usage_completion;
  int status = x->req ? x->req->status : 0;
  if (!tokens && status >= 200 && status < 300) tokens = estimate;
  if (!tokens) return 0;
  int64_t now = (int64_t)time(NULL);
  char id[OB_BUDGET_PERIOD_ID_MAX];
  if (t->budget_tokens) {
    ob_budget_period_id(t->budget_period, now, id);
    ob_budgets_charge(p->budgets, OB_BUDGET_TENANT, t->name, id, tokens);
  }
  if (k && k->budget_tokens) {
    ob_budget_period_id(k->budget_period, now, id);
    ob_budgets_charge(p->budgets, OB_BUDGET_KEY, k->id, id, tokens);
  }
  return tokens;
}

/* The client's own deadline, from x-request-timeout-ms or grpc-timeout;
 * 0 when none. It can only shorten the wait. */
static uint64_t client_deadline_us(ob_exchange_t *x) {
  const ob_http_header_t *h = ob_sreq_header(x->req, "x-request-timeout-ms");
  uint64_t v;
  if (h && ob_iov_to_u64(ob_iov_trim(h->value), &v) && v < UINT64_MAX / 1000) return x->req->start_us + v * 1000;
  h = ob_sreq_header(x->req, "grpc-timeout");
  if (h && ob_http_parse_grpc_timeout(h->value, &v)) return x->req->start_us + v;
  return 0;
}

bool ob_exchange_authorize(ob_exchange_t *x) {
  if (!x->who.tenant || !x->model.len || ob_tenant_allows_model(x->who.tenant, x->model)) return true;
  char msg[256];
  snprintf(msg, sizeof msg, "This key may not use the model `%.*s`.", (int)(x->model.len > 200 ? 200 : x->model.len),
           x->model.base);
  ob_exchange_reply_error(x, 403, msg, "permission_error", "model_not_allowed");
  return false;
}

void ob_proxy_admit(ob_exchange_t *x) {
  ob_proxy_t *p = x->proxy;
  const ob_config_admission_t *a = &x->gen->cfg->admission;
  const ob_route_class_t *cls = x->route->cls;
  if (!ob_exchange_authorize(x)) return;
  if (!cls->admitted || x->not_admitted) {
    /* Authenticated but never queued. */
    x->admission = "fast";
    if (x->stream_cap && ob_fleet_stream_open(x)) return; /* the fleet counts it first */
    ob_proxy_forward(x);
    return;
  }
  int kind = x->route->cost >= 0 ? x->route->cost : (cls->cost_tokens_default ? (int)a->cost : OB_COST_REQUESTS);
  x->cost_tokens = kind == OB_COST_TOKENS;
  x->cost = x->cost_tokens ? x->prompt_tokens_est + x->max_tokens : 1;
  if (x->cost == 0) x->cost = 1;
  x->fsr.pool = x->gen->pool_of[pool_index(x->gen->cfg, x->upstream_name)];
  x->fsr.cost = x->cost;
  x->fsr.user = x;
  uint64_t deadline = x->req->start_us + (uint64_t)a->queue_timeout_ms * 1000;
  uint64_t client = client_deadline_us(x);
  if (client && client < deadline) deadline = client;
  x->fsr.deadline_us = deadline;
  ob_tstate_t *tsu = x->who.tenant ? ob_proxy_tstate(p, x->gen, x->who.tenant_index) : NULL;
  x->fsr.tenant = tsu ? tsu->fs : p->sh->anonymous;
  if (ob_fleet_admit(x)) return; /* cluster mode, shared: the fleet decides */
  ob_proxy_admit_local(x);
}

/* The local scheduler decides (a single process, or cluster fallback). */
void ob_proxy_admit_local(ob_exchange_t *x) {
  ob_proxy_t *p = x->proxy;
  if (budget_refused(x)) return;
  /* Decided under the lock; answered or forwarded after it. */
  enum { RATE_REQUESTS, RATE_TOKENS, GRANTED, QUEUED, FULL } out;
  uint64_t wait_ms = 0;
  ob_proxy_lock(p);
  uint64_t now = ob_clock_us();
  if (!x->queue_start_us) x->queue_start_us = now; /* a fleet request keeps its wait so far */
  ob_tstate_t *ts = x->who.tenant ? ob_proxy_tstate(p, x->gen, x->who.tenant_index) : NULL;
  uint64_t want = 0;
  if (ts && !ob_fs_bucket_take(&ts->rpm, 1, now)) {
    out = RATE_REQUESTS, wait_ms = ob_fs_bucket_wait_ms(&ts->rpm, 1, now);
  } else if (ts && x->cost_tokens && ts->tpm.per_minute &&
             !ob_fs_bucket_take(&ts->tpm, want = x->cost < ts->tpm.per_minute ? x->cost : ts->tpm.per_minute, now)) {
    ob_fs_bucket_adjust(&ts->rpm, 1, now); /* the request did not happen */
    out = RATE_TOKENS, wait_ms = ob_fs_bucket_wait_ms(&ts->tpm, want, now);
  } else {
    x->tpm_taken = want;
    switch (ob_fs_submit(p->sh->fs, &x->fsr, now)) {
    case OB_FS_GRANTED:
      x->fs_state = FS_GRANTED;
      ob_fleet_track(x, true);
      out = GRANTED;
      break;
    case OB_FS_QUEUED:
      x->fs_state = FS_QUEUED;
      ob_fleet_track(x, false);
      ob_proxy_arm_expiry(p);
      out = QUEUED;
      break;
    default: /* OB_FS_TENANT_QUEUE_FULL, OB_FS_QUEUE_FULL */
      wait_ms = ob_fs_retry_after_ms(p->sh->fs, x->fsr.pool, x->fsr.tenant, now);
      if (ts) {
        ob_fs_bucket_adjust(&ts->rpm, 1, now);
        ob_fs_bucket_adjust(&ts->tpm, (int64_t)x->tpm_taken, now);
      }
      out = FULL;
      break;
    }
  }
  ob_proxy_unlock(p);
  switch (out) {
  case RATE_REQUESTS: ob_proxy_reject_rate(x, wait_ms, "requests"); return;
  case RATE_TOKENS: ob_proxy_reject_rate(x, wait_ms, "tokens"); return;
  case GRANTED:
    x->admission = "fast";
    ob_proxy_forward(x);
    return;
  case QUEUED: return;
  case FULL: ob_proxy_reject_queue_full(x, wait_ms); return;
  }
}

void ob_proxy_reject_queue_full(ob_exchange_t *x, uint64_t wait_ms) {
  ob_http_header_t h[OB_PROXY_ADMISSION_HEADERS + 1];
  size_t k = 0;
  retry_after_header(x, wait_ms, h, &k);
  x->admission = "rejected";
  ob_proxy_reply_error_h(x, 429, "Too many requests are waiting for capacity; retry later.", "rate_limit_error",
                         "queue_full", h, k);
}

/* ---------------------------------------------------------------- release */

void ob_proxy_release(ob_exchange_t *x, bool completed) {
  ob_proxy_t *p = x->proxy;
  ob_proxy_lock(p);
  int st = x->fs_state;
  x->fs_state = FS_DONE;
  /* Granted or expired by another loop and not acted on yet. */
  ob_proxy_inbox_remove(x);
  if (st == FS_QUEUED) {
    /* The client went away while waiting: leave the queue at once. */
    ob_fs_cancel(p->sh->fs, &x->fsr);
    ob_proxy_pump_locked(p);
  }
  ob_proxy_unlock(p);
  if (st != FS_GRANTED) {
    /* Never forwarded: a fleet slot granted meanwhile goes back unused. */
    ob_fleet_release(x, 0, 0, (int64_t)x->tpm_taken);
    if (st == FS_QUEUED) ob_proxy_drain_inbox(p);
    return;
  }
  const ob_route_class_t *cls = x->route->cls;
  uint64_t used = cls->actual_tokens ? cls->actual_tokens(x, completed) : 0;
  uint64_t actual = x->cost;
  if (x->cost_tokens && cls->actual_tokens) actual = used ? used : 1;
  uint64_t tokens = budget_charge(x, used);
  if (!p->budgets && x->who.tenant && (x->who.tenant->budget_tokens || (x->who.key && x->who.key->budget_tokens)))
    tokens = x->usage_prompt + x->usage_completion;
  ob_proxy_lock(p);
  uint64_t now = ob_clock_us();
  ob_proxy_capacity_on_ttft(x);
  if (x->who.tenant && x->cost_tokens)
    ob_fs_bucket_adjust(&ob_proxy_tstate(p, x->gen, x->who.tenant_index)->tpm, (int64_t)x->tpm_taken - (int64_t)actual,
                        now);
  ob_fs_release(p->sh->fs, &x->fsr, actual, now);
  ob_proxy_pump_locked(p);
  ob_proxy_unlock(p);
  ob_fleet_release(x, actual, tokens, x->cost_tokens ? (int64_t)x->tpm_taken - (int64_t)actual : 0);
  ob_proxy_drain_inbox(p);
}
