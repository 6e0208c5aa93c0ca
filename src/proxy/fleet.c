/*
 * fleet.c: cluster mode's half of admission (docs/cluster.md). In shared
 * mode every admitted request asks the fleet's scheduler in Redis (one
 * round trip: cluster.lua's admit) and gives its slot back there (one round
 * trip: release); a request the fleet queues waits for its grant on this
 * replica's channel, in fleet-wide fair order. The local scheduler then
 * only counts what this replica forwards, with no caps. In fallback
 * (Redis unreachable) the local scheduler enforces the caps again, split
 * by the last known number of replicas ("split") or whole ("local").
 *
 * Each admitted exchange has a ticket, which outlives it when a call about
 * it is still out (an admit whose client left; a cancel): the ticket, not
 * the exchange, is what a reply or a grant finds, by its request id.
 * Tickets change state under the shared lock; the link (src/cluster) and
 * every call and reply live on the first worker's loop, and what an
 * exchange must do about a reply (forward, answer, queue locally) is
 * posted to its own worker's inbox (INBOX_FLEET) and done there.
 *
 * Ticket states:
 *   ADMIT    admit sent; its reply decides (granted, queued, refused, or
 *            failed: admit locally)
 *   RQUEUED  queued in the fleet; a grant, the deadline or the client
 *            leaving (cancel) ends it
 *   HELD     holds a slot (the fleet's when `known`, else a local one)
 *   LQUEUED  queued in the local scheduler (fallback)
 *   CANCEL   the exchange left; a cancel is out, its reply frees the ticket
 *   RELEASING  the exchange ended while a join that re-asserts its slot
 *            was out: the release goes to Redis once the join succeeded
 *            (the next join forgets it if this one failed)
 * known: Redis counts this ticket's slot (granted there, or re-asserted
 * by a join), so its release goes to Redis. Fallback clears it: what Redis
 * thinks this replica holds is replaced at the next join anyway.
 */
#include "proxy_int.h"

#include "cluster.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { T_NONE, T_ADMIT, T_RQUEUED, T_HELD, T_LQUEUED, T_CANCEL, T_RELEASING };

typedef struct ob_fleet_ticket {
  struct ob_fleet *f;
  uint64_t reqid;
  ob_exchange_t *x;           /* NULL once the exchange is gone */
  int state;
  bool known;
  bool stream;                /* counts an open stream (stream op), not a slot */
  bool granted_early;         /* a grant arrived before the admit's own reply */
  /* The admit's arguments, kept so a re-admit needs no exchange. */
  const char *pool, *tenant;  /* borrowed from the shared state (kept for the process's life) */
  uint64_t cost, reserve, rpm, tpm, take;
  char *bkey[2];              /* budget keys ("t\0name\0period", "k\0id\0period") or NULL */
  size_t bkey_len[2];
  uint64_t blimit[2];
  uint64_t rel_actual, rel_tokens; /* RELEASING: what the release will say */
  int64_t rel_refund;
} ticket_t;

/* An operation posted by another worker for the first worker's loop. */
typedef struct fop {
  struct fop *next;
  char op[16];
  ob_cluster_args_t args;
  ob_cluster_cb cb;
  void *arg;
} fop_t;

struct ob_fleet {
  ob_proxy_t *p0;             /* the first worker: its loop runs the link */
  ob_cluster_t *cl;
  ob_config_cluster_t cfg;    /* what matters after start: fallback, replica_id (borrowed from the first config) */
  char *replica_id;
  bool shared;                /* under mu: the mode admission follows */
  uint32_t replicas, digests; /* at the last heartbeat */
  bool disagree_logged;
  ticket_t **tab;             /* by the low 32 bits of a request id */
  uint32_t *gen;              /* the high 32 bits */
  uint32_t *free_idx;
  size_t cap, num_free, used;
  fop_t *out_head, *out_tail; /* under mu */
  char digest[17];
  bool digest_dirty;
  ob_proxy_purge_cb purge;
  void *purge_arg;
};

/* Verdicts, as x->fleet_code (0..7 are cluster.lua's admit answers). */
enum {
  FC_GRANTED = 0, FC_QUEUED = 1, FC_RATE_REQUESTS = 2, FC_RATE_TOKENS = 3, FC_TENANT_QUEUE_FULL = 4,
  FC_QUEUE_FULL = 5, FC_BUDGET_TENANT = 6, FC_BUDGET_KEY = 7, FC_LOCAL = 100, FC_STREAM_OK = 101,
  FC_STREAM_FULL = 102
};

static const ob_cluster_result_t failed_result = {0};

/* ---------------------------------------------------------------- tickets (locked) */

static ticket_t *ticket_new(ob_fleet_t *f) {
  if (!f->num_free) {
    size_t n = f->cap ? f->cap * 2 : 64;
    f->tab = ob_xrealloc(f->tab, n * sizeof *f->tab);
    f->gen = ob_xrealloc(f->gen, n * sizeof *f->gen);
    f->free_idx = ob_xrealloc(f->free_idx, n * sizeof *f->free_idx);
    for (size_t i = f->cap; i < n; i++) {
      f->tab[i] = NULL;
      f->gen[i] = 1;
      f->free_idx[f->num_free++] = (uint32_t)(n - 1 - (i - f->cap));
    }
    f->cap = n;
  }
  uint32_t i = f->free_idx[--f->num_free];
  ticket_t *t = ob_xcalloc(1, sizeof *t);
  t->f = f;
  t->reqid = ((uint64_t)f->gen[i] << 32) | i;
  f->tab[i] = t;
  f->used++;
  return t;
}

static ticket_t *ticket_find(ob_fleet_t *f, uint64_t reqid) {
  uint32_t i = (uint32_t)reqid;
  if (i >= f->cap || !f->tab[i] || f->tab[i]->reqid != reqid) return NULL;
  return f->tab[i];
}

static void ticket_free(ob_fleet_t *f, ticket_t *t) {
  if (!t) return;
  uint32_t i = (uint32_t)t->reqid;
  if (t->x && t->x->ticket == t) t->x->ticket = NULL;
  f->tab[i] = NULL;
  f->gen[i]++;
  f->free_idx[f->num_free++] = i;
  f->used--;
  free(t->bkey[0]);
  free(t->bkey[1]);
  free(t);
}

static void reqid_text(uint64_t id, char out[17]) { snprintf(out, 17, "%016llx", (unsigned long long)id); }

static bool reqid_parse(const char *s, size_t n, uint64_t *id) {
  if (n != 16) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    v = v << 4 | (uint64_t)d;
  }
  *id = v;
  return true;
}

/* ---------------------------------------------------------------- sending */

/* Run op on the link: at once on the first worker's thread (never with the
 * lock held: a refused call fails through cb at once), else posted there. */
static void fleet_send(ob_proxy_t *p, const char *op, ob_cluster_args_t *args, ob_cluster_cb cb, void *arg) {
  ob_fleet_t *f = p->sh->fleet;
  if (p == f->p0) {
    if (!ob_cluster_call(f->cl, op, args, true, cb, arg) && cb) cb(arg, &failed_result);
    ob_cluster_args_dispose(args);
    return;
  }
  fop_t *o = ob_xcalloc(1, sizeof *o);
  snprintf(o->op, sizeof o->op, "%s", op);
  o->args = *args; /* moved */
  ob_cluster_args_init(args);
  o->cb = cb;
  o->arg = arg;
  ob_proxy_lock(p);
  if (f->out_tail) f->out_tail->next = o;
  else f->out_head = o;
  f->out_tail = o;
  ob_proxy_wake(f->p0);
  ob_proxy_unlock(p);
}

void ob_fleet_flush(ob_proxy_t *p) {
  ob_fleet_t *f = p->sh->fleet;
  if (!f || p != f->p0) return;
  for (;;) {
    ob_proxy_lock(p);
    fop_t *o = f->out_head;
    if (o && !(f->out_head = o->next)) f->out_tail = NULL;
    ob_proxy_unlock(p);
    if (!o) return;
    if (!ob_cluster_call(f->cl, o->op, &o->args, true, o->cb, o->arg) && o->cb) o->cb(o->arg, &failed_result);
    ob_cluster_args_dispose(&o->args);
    free(o);
  }
}

/* Locked: hand x's verdict to its worker. */
static void post(ob_exchange_t *x, int code) {
  x->fleet_code = code; /* a later verdict (a grant after "queued") replaces one not yet acted on */
  if (x->in_kind == INBOX_NONE) ob_proxy_inbox_post(x, INBOX_FLEET);
}

/* ---------------------------------------------------------------- caps */

uint32_t ob_fleet_cap(const ob_proxy_shared_t *sh, uint32_t v) {
  const ob_fleet_t *f = sh->fleet;
  if (!f || !v) return v;
  if (f->shared) return 0; /* the fleet enforces it */
  if (f->cfg.fallback == OB_CLUSTER_LOCAL || f->replicas <= 1) return v;
  return (uint32_t)((v + f->replicas - 1) / f->replicas);
}

uint64_t ob_fleet_rate_of(const ob_proxy_shared_t *sh, uint64_t v) {
  const ob_fleet_t *f = sh->fleet;
  if (!v || f->shared || f->cfg.fallback == OB_CLUSTER_LOCAL || f->replicas <= 1) return v;
  return (v + f->replicas - 1) / f->replicas;
}

/* Locked: the local scheduler's caps and rate limits for the current mode
 * (weights stay as they are: an admin change is not undone). */
static void apply_caps(ob_proxy_t *p) {
  const ob_config_t *c = p->gen->cfg;
  ob_proxy_shared_t *sh = p->sh;
  for (size_t i = 0; i < c->num_upstreams; i++)
    ob_fs_pool_set(sh->fs, p->gen->pool_of[i], ob_fleet_cap(sh, ob_proxy_pool_slots(sh, &c->upstreams[i])));
  uint64_t now = ob_clock_us();
  for (size_t i = 0; i < c->num_tenants; i++) {
    const ob_config_tenant_t *t = &c->tenants[i];
    ob_tstate_t *ts = ob_proxy_tstate(p, p->gen, i);
    ob_fs_tenant_stats_t st;
    ob_fs_tenant_stats(sh->fs, ts->fs, &st);
    ob_fs_tenant_params_t tp = {st.group, st.weight, ob_fleet_cap(sh, t->max_inflight), ob_fleet_cap(sh, t->max_queue)};
    ob_fs_tenant_set(sh->fs, ts->fs, &tp);
    uint64_t rpm = ob_fleet_rate(sh, t->rpm), tpm = ob_fleet_rate(sh, t->tpm);
    if (ts->rpm.per_minute != rpm) ob_fs_bucket_init(&ts->rpm, rpm, now);
    if (ts->tpm.per_minute != tpm) ob_fs_bucket_init(&ts->tpm, tpm, now);
  }
  ob_fs_params_t fp = ob_proxy_fs_params(p);
  ob_fs_set_params(sh->fs, &fp);
}

/* ---------------------------------------------------------------- config pairs */

static const char *mode_name(ob_admission_mode_t m) {
  return m == OB_ADMIT_FIFO ? "fifo" : m == OB_ADMIT_WEIGHTED ? "weighted" : "hierarchical";
}

/* Locked: this replica's caps and weights, as cluster.lua's cfg fields
 * (current weights, so an admin change is included). for_digest: an "auto"
 * pool's slots read "auto" (they move with what its backend reports, and
 * replicas scrape at different moments: not a disagreement). */
static size_t config_pairs_of(ob_proxy_t *p, ob_cluster_args_t *a, bool for_digest) {
  const ob_config_t *c = p->cfg;
  size_t n = 0;
  ob_cluster_args_str(a, "mode"), ob_cluster_args_str(a, mode_name(c->admission.mode)), n++;
  ob_cluster_args_str(a, "cap"), ob_cluster_args_u64(a, c->admission.max_inflight), n++;
  ob_cluster_args_str(a, "qcap"), ob_cluster_args_u64(a, c->admission.max_queue), n++;
  for (size_t i = 0; i < c->num_upstreams; i++, n++) {
    ob_cluster_args_pair(a, "p", c->upstreams[i].name);
    if (for_digest && c->upstreams[i].max_inflight_auto) ob_cluster_args_str(a, "auto");
    else ob_cluster_args_u64(a, ob_proxy_pool_slots(p->sh, &c->upstreams[i]));
  }
  for (size_t g = 0; g < ob_fs_num_groups(p->sh->fs); g++, n++) {
    ob_fs_group_stats_t gs;
    ob_fs_group_stats(p->sh->fs, (ob_fs_group_id)g, &gs);
    ob_cluster_args_pair(a, "gw", gs.name);
    ob_cluster_args_u64(a, gs.weight);
  }
  for (size_t i = 0; i < c->num_tenants; i++) {
    const ob_config_tenant_t *t = &c->tenants[i];
    ob_fs_tenant_stats_t ts;
    ob_fs_tenant_stats(p->sh->fs, ob_proxy_tstate(p, p->gen, i)->fs, &ts);
    ob_cluster_args_pair(a, "tw", t->name), ob_cluster_args_u64(a, ts.weight);
    ob_cluster_args_pair(a, "tg", t->name), ob_cluster_args_str(a, t->group ? t->group : "default");
    ob_cluster_args_pair(a, "tc", t->name), ob_cluster_args_u64(a, t->max_inflight);
    ob_cluster_args_pair(a, "tqc", t->name), ob_cluster_args_u64(a, t->max_queue);
    n += 4;
  }
  if (!c->num_tenants) {
    ob_cluster_args_pair(a, "tg", "anonymous"), ob_cluster_args_str(a, "default");
    n++;
  }
  return n;
}

static size_t config_pairs(ob_proxy_t *p, ob_cluster_args_t *a) { return config_pairs_of(p, a, false); }

/* Locked: FNV-1a of the pairs; equal configs (and admin changes) give
 * equal digests on every replica. */
static const char *digest(ob_proxy_t *p) {
  ob_fleet_t *f = p->sh->fleet;
  if (!f->digest_dirty && f->digest[0]) return f->digest;
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  config_pairs_of(p, &a, true);
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < a.bytes.len; i++) h = (h ^ (unsigned char)a.bytes.base[i]) * 1099511628211ULL;
  for (size_t i = 0; i < a.argc; i++) h = (h ^ a.ends[i]) * 1099511628211ULL;
  ob_cluster_args_dispose(&a);
  snprintf(f->digest, sizeof f->digest, "%016llx", (unsigned long long)h);
  f->digest_dirty = false;
  return f->digest;
}

/* Send this replica's caps and weights (after a reload or an admin change). */
void ob_fleet_config_changed(ob_proxy_t *p) {
  ob_fleet_t *f = p->sh->fleet;
  if (!f || p != f->p0) return; /* every worker reloads; one tells the fleet */
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  ob_proxy_lock(p);
  f->digest_dirty = true;
  ob_cluster_args_str(&a, digest(p));
  config_pairs(p, &a);
  bool shared = f->shared;
  ob_proxy_unlock(p);
  if (shared) fleet_send(p, "config", &a, NULL, NULL);
  ob_cluster_args_dispose(&a);
}

typedef struct capacity_call {
  ob_fleet_capacity_cb cb;
  void *arg;
  size_t n;
} capacity_call_t;

static void on_capacity(void *arg, const ob_cluster_result_t *r) {
  capacity_call_t *c = arg;
  int64_t v[2 + OB_FLEET_CAPACITY_MAX];
  size_t got = 0;
  bool ok = r->ok && ob_cluster_reply_ints(r->reply, v, 2 + c->n, &got) && got >= 2 && (v[0] == 0 || v[0] == 1) &&
            v[1] >= 0 && (got == 2 || got == 2 + c->n);
  uint32_t limits[OB_FLEET_CAPACITY_MAX];
  for (size_t i = 2; ok && i < got; i++) {
    ok = v[i] >= 0 && v[i] <= UINT32_MAX;
    limits[i - 2] = ok ? (uint32_t)v[i] : 0;
  }
  if (ok) c->cb(c->arg, true, v[0] == 1, (uint64_t)v[1], got > 2 ? limits : NULL);
  else c->cb(c->arg, false, false, 0, NULL);
  free(c);
}

bool ob_fleet_capacity(ob_proxy_t *p, const char *upstream, uint32_t slots, const uint32_t *limits, size_t n,
                       uint32_t lease_ms, ob_fleet_capacity_cb cb, void *arg) {
  ob_fleet_t *f = p->sh->fleet;
  if (!f || p != f->p0 || !ob_cluster_shared(f->cl) || n > OB_FLEET_CAPACITY_MAX) return false;
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  ob_cluster_args_str(&a, upstream);
  ob_cluster_args_u64(&a, lease_ms);
  ob_cluster_args_u64(&a, slots);
  for (size_t i = 0; i < n; i++) ob_cluster_args_u64(&a, limits[i]);
  capacity_call_t *c = ob_xcalloc(1, sizeof *c);
  *c = (capacity_call_t){cb, arg, n};
  bool sent = ob_cluster_call(f->cl, "capacity", &a, false, on_capacity, c);
  ob_cluster_args_dispose(&a);
  if (!sent) free(c);
  return sent;
}

uint32_t ob_fleet_local_share(const ob_proxy_shared_t *sh) {
  const ob_fleet_t *f = sh->fleet;
  if (!f || f->shared || f->cfg.fallback == OB_CLUSTER_LOCAL || f->replicas <= 1) return 1;
  return f->replicas;
}

/* ---------------------------------------------------------------- admit */

static void args_id(ob_cluster_args_t *a, const ticket_t *t) {
  char id[17];
  reqid_text(t->reqid, id);
  ob_cluster_args_str(a, id);
}

static void args_bkey(ob_cluster_args_t *a, const ticket_t *t, int b) {
  if (t->bkey[b]) ob_cluster_args_mem(a, t->bkey[b], t->bkey_len[b]);
  else ob_cluster_args_str(a, "");
}

static void admit_args(const ticket_t *t, ob_cluster_args_t *a) {
  args_id(a, t);
  ob_cluster_args_str(a, t->pool);
  ob_cluster_args_str(a, t->tenant);
  ob_cluster_args_u64(a, t->cost);
  ob_cluster_args_u64(a, t->rpm);
  ob_cluster_args_u64(a, t->tpm);
  ob_cluster_args_u64(a, t->take);
  ob_cluster_args_u64(a, t->reserve);
  for (int b = 0; b < 2; b++) {
    args_bkey(a, t, b);
    ob_cluster_args_u64(a, t->bkey[b] ? t->blimit[b] : 0);
  }
}

/* "t\0<tenant>\0<period id>": the fleet's counter of one budget period. */
static char *budget_key(char kind, const char *name, ob_budget_period_t period, int64_t now, size_t *len) {
  char id[OB_BUDGET_PERIOD_ID_MAX];
  ob_budget_period_id(period, now, id);
  size_t n = strlen(name), k = strlen(id);
  char *s = ob_xmalloc(4 + n + k);
  s[0] = kind;
  s[1] = '\0';
  memcpy(s + 2, name, n);
  s[2 + n] = '\0';
  memcpy(s + 3 + n, id, k + 1);
  *len = 3 + n + k;
  return s;
}

static void give_back(ob_proxy_t *p, struct ob_fleet_ticket *t, uint64_t actual, uint64_t tokens, int64_t refund);
static void on_admit(void *arg, const ob_cluster_result_t *r);
static void on_cancel(void *arg, const ob_cluster_result_t *r);
static void on_release(void *arg, const ob_cluster_result_t *r);

static void send_cancel(ob_proxy_t *p, ticket_t *t) {
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  args_id(&a, t);
  fleet_send(p, "cancel", &a, on_cancel, t);
}

/* Give a fleet slot back; the ticket is freed by the caller. */
static void send_release(ob_proxy_t *p, const ticket_t *t, uint64_t actual, uint64_t tokens, int64_t refund) {
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  args_id(&a, t);
  ob_cluster_args_u64(&a, actual);
  ob_cluster_args_u64(&a, tokens);
  ob_cluster_args_i64(&a, refund);
  fleet_send(p, "release", &a, on_release, NULL);
}

/* In shared mode: a new ticket for x, whose call is about to go out, with
 * the lock held (the caller fills it in and unlocks); NULL (unlocked) in
 * fallback or without a cluster block. */
static ticket_t *fleet_ticket(ob_exchange_t *x) {
  ob_proxy_t *p = x->proxy;
  ob_fleet_t *f = p->sh->fleet;
  if (!f) return NULL;
  ob_proxy_lock(p);
  if (!f->shared) {
    ob_proxy_unlock(p);
    return NULL;
  }
  ticket_t *t = ticket_new(f);
  t->x = x;
  t->state = T_ADMIT;
  x->ticket = t;
  x->fs_state = FS_FLEET;
  return t;
}

bool ob_fleet_admit(ob_exchange_t *x) {
  ob_proxy_t *p = x->proxy;
  const ob_config_tenant_t *tc = x->who.tenant;
  const ob_config_key_t *kc = x->who.key;
  ticket_t *t = fleet_ticket(x);
  if (!t) return false;
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  x->queue_start_us = ob_clock_us();
  t->pool = p->sh->pool_names[x->fsr.pool];
  ob_tstate_t *ts = tc ? ob_proxy_tstate(p, x->gen, x->who.tenant_index) : NULL;
  t->tenant = ts ? ts->name : "anonymous";
  t->cost = x->cost;
  t->rpm = tc ? tc->rpm : 0;
  t->tpm = tc && x->cost_tokens ? tc->tpm : 0;
  t->take = t->tpm ? (x->cost < t->tpm ? x->cost : t->tpm) : 0;
  x->tpm_taken = t->take;
  bool budgets = p->budgets && tc && !(x->cache_outcome && (strcmp(x->cache_outcome, "hit") == 0 ||
                                                           strcmp(x->cache_outcome, "coalesced") == 0));
  int64_t now = (int64_t)time(NULL);
  if (budgets && tc->budget_tokens) {
    t->bkey[0] = budget_key('t', tc->name, tc->budget_period, now, &t->bkey_len[0]);
    t->blimit[0] = tc->budget_tokens;
  }
  if (budgets && kc && kc->budget_tokens) {
    t->bkey[1] = budget_key('k', kc->id, kc->budget_period, now, &t->bkey_len[1]);
    t->blimit[1] = kc->budget_tokens;
  }
  if (t->bkey[0] || t->bkey[1]) t->reserve = x->prompt_tokens_est + x->max_tokens;
  admit_args(t, &a);
  ob_proxy_unlock(p);
  fleet_send(p, "admit", &a, on_admit, t);
  return true;
}

/* The admit's answer, on the first worker's loop. The ticket stays until
 * this runs (an exchange that left only let go of it). */
static void on_admit(void *arg, const ob_cluster_result_t *r) {
  ticket_t *t = arg;
  ob_fleet_t *f = t->f;
  ob_proxy_t *p = f->p0;
  bool release = false, cancel = false;
  ob_proxy_lock(p);
  ob_exchange_t *x = t->x;
  int code = r->ok ? (int)r->ints[0] : FC_LOCAL;
  if (code == FC_QUEUED && t->granted_early) code = FC_GRANTED;
  t->granted_early = false;
  if (code == FC_GRANTED || code == FC_QUEUED) t->known = true;
  if (!x) {
    /* The client left while the admit was out. */
    if (code == FC_GRANTED) release = true;
    else if (code == FC_QUEUED) t->state = T_CANCEL, cancel = true;
    else ticket_free(f, t), t = NULL;
  } else if (code == FC_LOCAL) {
    t->state = T_NONE;
    t->known = false;
    post(x, FC_LOCAL);
  } else if (code == FC_GRANTED || code == FC_QUEUED) {
    x->fleet_rl = true;
    x->fleet_v[1] = r->n > 2 ? r->ints[2] : -1;
    x->fleet_v[2] = r->n > 3 ? r->ints[3] : -1;
  }
  if (!x || code == FC_LOCAL) {
  } else if (code == FC_GRANTED) {
    t->state = T_HELD;
    post(x, FC_GRANTED);
  } else if (code == FC_QUEUED) {
    t->state = T_RQUEUED;
    x->fleet_queued = true;
    post(x, FC_QUEUED);
  } else {
    for (size_t i = 0; i < 3; i++) x->fleet_v[i] = r->n > i + 1 ? r->ints[i + 1] : 0;
    ticket_free(f, t), t = NULL;
    post(x, code >= FC_RATE_REQUESTS && code <= FC_BUDGET_KEY ? code : FC_LOCAL);
  }
  ob_proxy_unlock(p);
  if (release) {
    send_release(p, t, 0, 0, (int64_t)t->take);
    ob_proxy_lock(p);
    ticket_free(f, t);
    ob_proxy_unlock(p);
  }
  if (cancel) send_cancel(p, t);
  ob_proxy_drain_inbox(p);
}

static void on_cancel(void *arg, const ob_cluster_result_t *r) {
  (void)r; /* removed, released or unknown: nothing is left in Redis either way (or a join will say so) */
  ticket_t *t = arg;
  ob_proxy_t *p = t->f->p0;
  ob_proxy_lock(p);
  ticket_free(t->f, t);
  ob_proxy_unlock(p);
}

static void on_release(void *arg, const ob_cluster_result_t *r) { (void)arg, (void)r; }

static void stream_args(ob_cluster_args_t *a, const ticket_t *t, int delta, uint32_t cap) {
  ob_cluster_args_str(a, t->tenant);
  ob_cluster_args_i64(a, delta);
  ob_cluster_args_u64(a, cap);
}

static void on_stream(void *arg, const ob_cluster_result_t *r) {
  ticket_t *t = arg;
  ob_fleet_t *f = t->f;
  ob_proxy_t *p = f->p0;
  bool close = false;
  ob_proxy_lock(p);
  ob_exchange_t *x = t->x;
  bool counted = r->ok && r->ints[0] == 1;
  if (!x) {
    close = counted; /* the client left meanwhile */
    if (!close) ticket_free(f, t);
  } else if (counted || !r->ok) {
    t->state = T_HELD; /* !ok: fallback, the class's local count decides */
    t->known = counted;
    post(x, FC_STREAM_OK);
  } else {
    ticket_free(f, t);
    post(x, FC_STREAM_FULL);
  }
  ob_proxy_unlock(p);
  if (close) {
    ob_cluster_args_t a;
    ob_cluster_args_init(&a);
    stream_args(&a, t, -1, 0);
    fleet_send(p, "stream", &a, NULL, NULL);
    ob_proxy_lock(p);
    ticket_free(f, t);
    ob_proxy_unlock(p);
  }
  ob_proxy_drain_inbox(p);
}

bool ob_fleet_stream_open(ob_exchange_t *x) {
  ob_proxy_t *p = x->proxy;
  if (!x->who.tenant) return false;
  ticket_t *t = fleet_ticket(x);
  if (!t) return false;
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  t->stream = true;
  t->tenant = ob_proxy_tstate(p, x->gen, x->who.tenant_index)->name;
  stream_args(&a, t, 1, x->stream_cap);
  ob_proxy_unlock(p);
  fleet_send(p, "stream", &a, on_stream, t);
  return true;
}

/* A grant for one of this replica's fleet-queued requests. */
static void on_grant(void *user, const char *s, size_t n) {
  ob_proxy_t *p = user;
  ob_fleet_t *f = p->sh->fleet;
  uint64_t id;
  if (!reqid_parse(s, n, &id)) return;
  ob_proxy_lock(p);
  ticket_t *t = ticket_find(f, id);
  if (t && t->state == T_ADMIT) {
    t->granted_early = true;
  } else if (t && t->state == T_RQUEUED && t->x) {
    t->state = T_HELD;
    post(t->x, FC_GRANTED);
  }
  /* CANCEL: the cancel's reply gives the slot back (cluster.lua answers 2);
   * anything else: not ours any more. */
  ob_proxy_unlock(p);
  ob_proxy_drain_inbox(p);
}

static void on_fleet_deadline(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  ob_exchange_t *x = arg;
  ob_proxy_t *p = x->proxy;
  ob_proxy_lock(p);
  ticket_t *t = x->ticket;
  if (!t || t->state != T_RQUEUED) { /* granted meanwhile: the grant is in the inbox */
    ob_proxy_unlock(p);
    return;
  }
  t->state = T_CANCEL;
  t->x = NULL;
  x->ticket = NULL;
  x->fs_state = FS_DONE;
  x->queue_us = ob_clock_us() - x->queue_start_us;
  x->admission = "queued";
  ob_proxy_unlock(p);
  send_cancel(p, t);
  ob_proxy_answer_expired(x);
}

static void stop_deadline(ob_exchange_t *x) {
  if (x->fleet_deadline) event_free(x->fleet_deadline);
  x->fleet_deadline = NULL;
}

/* On x's own loop: act on the fleet's verdict. */
void ob_fleet_verdict(ob_exchange_t *x) {
  ob_proxy_t *p = x->proxy;
  int code = x->fleet_code;
  switch (code) {
  case FC_GRANTED: {
    stop_deadline(x);
    ob_proxy_lock(p);
    ticket_t *t = x->ticket;
    if (!t || t->state != T_HELD) {
      ob_proxy_unlock(p);
      return;
    }
    uint64_t now = ob_clock_us();
    /* Counted locally too: this replica's view, and the base of fallback.
     * In shared mode the local caps are off, so this is a grant. */
    ob_fs_verdict_t v = ob_fs_submit(p->sh->fs, &x->fsr, now);
    if (v == OB_FS_TENANT_QUEUE_FULL || v == OB_FS_QUEUE_FULL) {
      /* Fallback began meanwhile and its share of the queue is full. */
      x->fs_state = FS_DONE;
      t->known = false;
      uint64_t ms = ob_fs_retry_after_ms(p->sh->fs, x->fsr.pool, x->fsr.tenant, now);
      ob_proxy_unlock(p);
      ob_proxy_reject_queue_full(x, ms);
      return;
    }
    if (v == OB_FS_QUEUED) {
      /* Fallback began between the fleet's grant and now: the local
       * scheduler decides, and the fleet forgets the slot when this
       * replica joins again. */
      x->fs_state = FS_QUEUED;
      t->state = T_LQUEUED;
      t->known = false;
      ob_proxy_arm_expiry(p);
      ob_proxy_unlock(p);
      return;
    }
    x->fs_state = FS_GRANTED;
    x->queue_us = now - x->queue_start_us;
    x->admission = x->fleet_queued ? "queued" : "fast";
    ob_proxy_unlock(p);
    ob_proxy_forward(x);
    return;
  }
  case FC_QUEUED:
    if (!x->fleet_deadline) x->fleet_deadline = evtimer_new(p->base, on_fleet_deadline, x);
    {
      uint64_t now = ob_clock_us();
      uint64_t in = x->fsr.deadline_us > now ? x->fsr.deadline_us - now : 0;
      struct timeval tv = {(time_t)(in / 1000000), (suseconds_t)(in % 1000000)};
      evtimer_add(x->fleet_deadline, &tv);
    }
    return;
  case FC_STREAM_OK:
    x->fs_state = FS_NONE;
    ob_proxy_forward(x);
    return;
  case FC_STREAM_FULL: {
    x->fs_state = FS_DONE;
    char msg[160];
    snprintf(msg, sizeof msg, "Too many open MCP event streams for this tenant across the fleet (max_streams %u).",
             x->stream_cap);
    x->admission = "rejected";
    ob_exchange_reply_error(x, 429, msg, "rate_limit_error", "too_many_streams");
    return;
  }
  case FC_LOCAL:
    stop_deadline(x);
    x->fs_state = FS_NONE;
    ob_proxy_admit_local(x);
    return;
  case FC_RATE_REQUESTS:
  case FC_RATE_TOKENS:
    x->fs_state = FS_DONE;
    ob_proxy_reject_rate(x, (uint64_t)x->fleet_v[0], code == FC_RATE_REQUESTS ? "requests" : "tokens");
    return;
  case FC_TENANT_QUEUE_FULL:
  case FC_QUEUE_FULL: {
    x->fs_state = FS_DONE;
    ob_proxy_lock(p);
    uint64_t ms = ob_fs_retry_after_ms(p->sh->fs, x->fsr.pool, x->fsr.tenant, ob_clock_us());
    ob_proxy_unlock(p);
    ob_proxy_reject_queue_full(x, ms);
    return;
  }
  case FC_BUDGET_TENANT:
  case FC_BUDGET_KEY:
    x->fs_state = FS_DONE;
    ob_proxy_reject_budget(x, code == FC_BUDGET_TENANT, (uint64_t)x->fleet_v[1], (uint64_t)x->fleet_v[0],
                           (uint64_t)x->fleet_v[2]);
    return;
  }
}

/* Locked: a request admitted by the local scheduler (fallback), granted
 * (held) or queued. */
void ob_fleet_track(ob_exchange_t *x, bool held) {
  ob_fleet_t *f = x->proxy->sh->fleet;
  if (!f) return;
  ticket_t *t = x->ticket;
  if (!t) {
    t = ticket_new(f);
    t->x = x;
    x->ticket = t;
    t->pool = x->proxy->sh->pool_names[x->fsr.pool];
    t->tenant = x->who.tenant ? ob_proxy_tstate(x->proxy, x->gen, x->who.tenant_index)->name : "anonymous";
    t->cost = x->cost;
    t->take = x->tpm_taken;
    t->rpm = x->who.tenant ? x->who.tenant->rpm : 0;
    t->tpm = x->who.tenant && x->cost_tokens ? x->who.tenant->tpm : 0;
  }
  t->state = held ? T_HELD : T_LQUEUED;
}

/* The exchange is over (x's loop, not locked): give back what the fleet
 * counts for it, exactly once. For a held slot, actual / tokens / refund
 * are what the release charges; a queued request is cancelled; an admit
 * still out is finished by its reply (on_admit). */
void ob_fleet_release(ob_exchange_t *x, uint64_t actual, uint64_t tokens, int64_t refund) {
  ob_proxy_t *p = x->proxy;
  ob_fleet_t *f = p->sh->fleet;
  stop_deadline(x);
  if (!f) return;
  ob_proxy_lock(p);
  ticket_t *t = x->ticket;
  if (!t) {
    ob_proxy_unlock(p);
    return;
  }
  x->ticket = NULL;
  t->x = NULL;
  bool release = false, cancel = false;
  switch (t->state) {
  case T_ADMIT: break; /* on_admit finishes it */
  case T_RQUEUED: t->state = T_CANCEL, cancel = true; break;
  case T_HELD:
    release = t->known && f->shared;
    if (!release && t->known) { /* a join re-asserting it is out */
      t->state = T_RELEASING;
      t->rel_actual = actual, t->rel_tokens = tokens, t->rel_refund = refund;
    } else if (!release) {
      ticket_free(f, t);
    }
    break;
  default: ticket_free(f, t); break;
  }
  ob_proxy_unlock(p);
  if (cancel) send_cancel(p, t);
  if (release) give_back(p, t, actual, tokens, refund);
}

/* Send a held ticket's release (or a stream's close) and free it. */
static void give_back(ob_proxy_t *p, ticket_t *t, uint64_t actual, uint64_t tokens, int64_t refund) {
  if (t->stream) {
    ob_cluster_args_t a;
    ob_cluster_args_init(&a);
    stream_args(&a, t, -1, 0);
    fleet_send(p, "stream", &a, NULL, NULL);
  } else {
    send_release(p, t, actual, tokens, refund);
  }
  ob_proxy_lock(p);
  ticket_free(t->f, t);
  ob_proxy_unlock(p);
}

/* Locked: a locally queued request got its local slot. */
void ob_fleet_local_grant(ob_exchange_t *x) {
  if (x->ticket) x->ticket->state = T_HELD;
}

/* ---------------------------------------------------------------- modes */

static void on_mode(void *user, bool shared) {
  ob_proxy_t *p = user;
  ob_fleet_t *f = p->sh->fleet;
  ob_cluster_args_t *re = NULL;
  ticket_t **readmit = NULL;
  size_t n = 0;
  ticket_t **rel = NULL;
  size_t nrel = 0;
  ob_proxy_lock(p);
  f->shared = shared;
  if (!shared) {
    /* Requests waiting in the fleet's queue wait in the local one now. */
    for (size_t i = 0; i < f->cap; i++) {
      ticket_t *t = f->tab[i];
      if (t) t->known = false;
      if (t && t->state == T_RQUEUED && t->x) {
        t->state = T_NONE;
        post(t->x, FC_LOCAL);
      }
    }
  } else {
    /* Slots the join re-asserted whose requests ended meanwhile. */
    rel = ob_xcalloc(f->used + 1, sizeof *rel);
    for (size_t i = 0; i < f->cap; i++)
      if (f->tab[i] && f->tab[i]->state == T_RELEASING) rel[nrel++] = f->tab[i];
    /* Requests in the local queue go back to the fleet's, so the local
     * scheduler, uncapped from now on, never grants them by itself. */
    readmit = ob_xcalloc(f->used + 1, sizeof *readmit);
    for (size_t i = 0; i < f->cap; i++) {
      ticket_t *t = f->tab[i];
      if (t && t->state == T_LQUEUED && t->x && t->x->fs_state == FS_QUEUED) {
        ob_fs_cancel(p->sh->fs, &t->x->fsr);
        t->x->fs_state = FS_FLEET;
        t->state = T_ADMIT;
        readmit[n++] = t;
      }
    }
  }
  apply_caps(p);
  ob_proxy_pump_locked(p);
  if (n) {
    re = ob_xcalloc(n, sizeof *re);
    for (size_t i = 0; i < n; i++) {
      ob_cluster_args_init(&re[i]);
      admit_args(readmit[i], &re[i]);
    }
  }
  ob_proxy_unlock(p);
  for (size_t i = 0; i < nrel; i++) give_back(p, rel[i], rel[i]->rel_actual, rel[i]->rel_tokens, rel[i]->rel_refund);
  free(rel);
  for (size_t i = 0; i < n; i++) fleet_send(p, "admit", &re[i], on_admit, readmit[i]);
  free(re);
  free(readmit);
  ob_proxy_drain_inbox(p);
}

static void on_beat(void *user, uint32_t replicas, uint32_t digests) {
  ob_proxy_t *p = user;
  ob_fleet_t *f = p->sh->fleet;
  ob_proxy_lock(p);
  f->replicas = replicas;
  f->digests = digests;
  ob_proxy_unlock(p);
  if (digests > 1 && !f->disagree_logged) {
    ob_log_warn("cluster: the %u live replicas run %u different sets of caps and weights; each decides with its "
                "own (see GET /admin/cluster)", replicas, digests);
    f->disagree_logged = true;
  } else if (digests <= 1 && f->disagree_logged) {
    ob_log_info("cluster: every live replica runs the same caps and weights again");
    f->disagree_logged = false;
  }
}

static void join_args(void *user, ob_cluster_args_t *a) {
  ob_proxy_t *p = user;
  ob_fleet_t *f = p->sh->fleet;
  ob_proxy_lock(p);
  ob_cluster_args_str(a, digest(p));
  ob_cluster_args_t pairs;
  ob_cluster_args_init(&pairs);
  size_t n = config_pairs(p, &pairs);
  ob_cluster_args_u64(a, n);
  for (size_t i = 0; i < pairs.argc; i++) {
    size_t start = i ? pairs.ends[i - 1] : 0;
    ob_cluster_args_mem(a, pairs.bytes.base + start, pairs.ends[i] - start);
  }
  ob_cluster_args_dispose(&pairs);
  /* Re-assert every open stream and every slot held now; Redis forgets
   * whatever else it thought this replica held. */
  size_t ns = 0;
  for (size_t i = 0; i < f->cap; i++) {
    ticket_t *t = f->tab[i];
    if (t && t->state == T_RELEASING) ticket_free(f, t); /* a failed join's: not re-asserted now */
    else ns += t && t->state == T_HELD && t->stream;
  }
  ob_cluster_args_u64(a, ns);
  for (size_t i = 0; i < f->cap; i++) {
    ticket_t *t = f->tab[i];
    if (!t || t->state != T_HELD || !t->stream) continue;
    t->known = true;
    ob_cluster_args_str(a, t->tenant);
    ob_cluster_args_u64(a, 1);
  }
  for (size_t i = 0; i < f->cap; i++) {
    ticket_t *t = f->tab[i];
    if (!t || t->state != T_HELD || t->stream) continue;
    t->known = true;
    args_id(a, t);
    ob_cluster_args_str(a, t->pool);
    ob_cluster_args_str(a, t->tenant);
    ob_cluster_args_u64(a, t->cost);
    ob_cluster_args_u64(a, t->reserve);
    args_bkey(a, t, 0);
    args_bkey(a, t, 1);
  }
  ob_proxy_unlock(p);
}

static const char *hook_digest(void *user) {
  ob_proxy_t *p = user;
  ob_proxy_lock(p);
  const char *d = digest(p);
  ob_proxy_unlock(p);
  return d;
}

/* ---------------------------------------------------------------- broadcast */

/* "<origin>\0<kind>\0<name>\0<value>": an admin change made on one replica. */
void ob_fleet_broadcast(ob_proxy_t *p, const char *kind, const char *name, const char *value) {
  ob_fleet_t *f = p->sh->fleet;
  if (!f || !ob_cluster_shared(f->cl)) return;
  ob_buf_t b;
  ob_buf_init(&b);
  ob_buf_append(&b, f->replica_id, strlen(f->replica_id) + 1);
  ob_buf_append(&b, kind, strlen(kind) + 1);
  ob_buf_append(&b, name, strlen(name) + 1);
  ob_buf_append_str(&b, value);
  ob_cluster_publish(f->cl, b.base, b.len);
  ob_buf_dispose(&b);
}

static void on_message(void *user, const char *msg, size_t len) {
  ob_proxy_t *p = user;
  ob_fleet_t *f = p->sh->fleet;
  const char *part[4];
  size_t plen[4], k = 0, start = 0;
  for (size_t i = 0; i <= len && k < 4; i++) {
    if (i == len || (msg[i] == '\0' && k < 3)) {
      part[k] = msg + start, plen[k++] = i - start;
      start = i + 1;
    }
  }
  if (k != 4 || (plen[0] == strlen(f->replica_id) && memcmp(part[0], f->replica_id, plen[0]) == 0)) return;
  char *name = ob_xstrndup(part[2], plen[2]), *value = ob_xstrndup(part[3], plen[3]);
  ob_iov_t kind = ob_iov(part[1], plen[1]);
  uint64_t v = 0;
  bool num = ob_iov_to_u64(ob_iov_str(value), &v) && v <= UINT32_MAX;
  if (ob_iov_eq(kind, OB_IOV_LIT("tw")) && num) ob_proxy_apply_tenant_weight(p, name, (uint32_t)v);
  else if (ob_iov_eq(kind, OB_IOV_LIT("td")) && num) ob_proxy_apply_tenant_disabled(p, name, v != 0);
  else if (ob_iov_eq(kind, OB_IOV_LIT("gw")) && num) ob_proxy_apply_group_weight(p, name, (uint32_t)v);
  else if (ob_iov_eq(kind, OB_IOV_LIT("purge")) && f->purge) {
    ob_log_info("cluster: cache purge %s from replica %.*s", *name ? name : "(all)", (int)plen[0], part[0]);
    f->purge(f->purge_arg, *name ? name : NULL);
  }
  ob_proxy_lock(p);
  f->digest_dirty = true;
  ob_proxy_unlock(p);
  free(name);
  free(value);
}

void ob_proxy_set_purge_hook(ob_proxy_t *p, ob_proxy_purge_cb cb, void *arg) {
  if (!p->sh->fleet) return;
  p->sh->fleet->purge = cb;
  p->sh->fleet->purge_arg = arg;
}

void ob_proxy_cluster_purged(ob_proxy_t *p, const char *tenant) { ob_fleet_broadcast(p, "purge", tenant ? tenant : "", ""); }

/* ---------------------------------------------------------------- views */

typedef struct query {
  ob_proxy_t *p;
  ob_proxy_fleet_view_cb cb;
  void *arg;
} query_t;

static void on_info(void *arg, const ob_cluster_result_t *r) {
  query_t *q = arg;
  ob_cluster_info_t info;
  bool ok = r->ok && ob_cluster_info_parse(r->reply, &info);
  q->cb(q->arg, ok ? &info : NULL, NULL, 0);
  if (ok) ob_cluster_info_dispose(&info);
  free(q);
}

bool ob_proxy_fleet_info(ob_proxy_t *p, ob_proxy_fleet_view_cb cb, void *arg) {
  ob_fleet_t *f = p->sh->fleet;
  if (!f || !ob_cluster_shared(f->cl)) return false;
  query_t *q = ob_xcalloc(1, sizeof *q);
  *q = (query_t){p, cb, arg};
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  bool ok = ob_cluster_call(f->cl, "info", &a, false, on_info, q);
  ob_cluster_args_dispose(&a);
  if (!ok) free(q);
  return ok;
}

static void on_budget(void *arg, const ob_cluster_result_t *r) {
  query_t *q = arg;
  const redisReply *x = r->ok ? r->reply : NULL;
  size_t n = x && x->type == REDIS_REPLY_ARRAY ? x->elements : 0;
  int64_t *v = ob_xcalloc(2 * n + 1, sizeof *v);
  bool ok = x != NULL;
  for (size_t i = 0; ok && i < n; i++) {
    size_t k;
    ok = ob_cluster_reply_ints(x->element[i], v + 2 * i, 2, &k) && k == 2;
  }
  q->cb(q->arg, NULL, ok ? v : NULL, ok ? n : 0);
  free(v);
  free(q);
}

bool ob_proxy_fleet_budgets(ob_proxy_t *p, const char *tenant, ob_proxy_fleet_view_cb cb, void *arg) {
  ob_fleet_t *f = p->sh->fleet;
  if (!f || !ob_cluster_shared(f->cl)) return false;
  long i = -1;
  for (size_t k = 0; k < p->cfg->num_tenants; k++)
    if (strcmp(p->cfg->tenants[k].name, tenant) == 0) i = (long)k;
  if (i < 0) return false;
  const ob_config_tenant_t *t = &p->cfg->tenants[i];
  int64_t now = (int64_t)time(NULL);
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  size_t len;
  char *k0 = budget_key('t', t->name, t->budget_period, now, &len);
  ob_cluster_args_mem(&a, k0, len);
  free(k0);
  for (size_t j = 0; j < t->num_keys; j++) {
    char *kk = budget_key('k', t->keys[j].id, t->keys[j].budget_period, now, &len);
    ob_cluster_args_mem(&a, kk, len);
    free(kk);
  }
  query_t *q = ob_xcalloc(1, sizeof *q);
  *q = (query_t){p, cb, arg};
  bool ok = ob_cluster_call(f->cl, "budget", &a, false, on_budget, q);
  ob_cluster_args_dispose(&a);
  if (!ok) free(q);
  return ok;
}

void ob_proxy_fleet_state(ob_proxy_t *p, ob_proxy_fleet_state_t *out) {
  ob_fleet_t *f = p->sh->fleet;
  memset(out, 0, sizeof *out);
  if (!f) return;
  out->enabled = true;
  ob_cluster_stats_t st;
  ob_cluster_get_stats(f->cl, &st);
  out->shared = st.shared;
  out->replicas = st.replicas;
  out->digests = st.digests;
  out->fallbacks = st.fallbacks;
  out->epoch = st.epoch;
  out->latency_s = st.last_latency_s;
  out->replica_id = f->replica_id;
  out->fallback_local = f->cfg.fallback == OB_CLUSTER_LOCAL;
  ob_proxy_lock(p);
  out->digest = digest(p);
  ob_proxy_unlock(p);
}

void ob_proxy_write_cluster_metrics(ob_proxy_t *p, ob_buf_t *b) {
  ob_fleet_t *f = p->sh->fleet;
  if (!f) return;
  ob_cluster_stats_t st;
  ob_cluster_get_stats(f->cl, &st);
  ob_buf_append_str(b, "# HELP obleth_cluster_mode Cluster mode: 1 for the current one of shared and fallback.\n"
                       "# TYPE obleth_cluster_mode gauge\n");
  ob_buf_printf(b, "obleth_cluster_mode{mode=\"shared\"} %d\nobleth_cluster_mode{mode=\"fallback\"} %d\n",
                st.shared ? 1 : 0, st.shared ? 0 : 1);
  ob_buf_append_str(b, "# HELP obleth_cluster_replicas Live replicas in the fleet at the last heartbeat.\n"
                       "# TYPE obleth_cluster_replicas gauge\n");
  ob_buf_printf(b, "obleth_cluster_replicas %u\n", st.replicas);
  ob_buf_append_str(b, "# HELP obleth_cluster_redis_ops_total Calls to Redis by operation and result.\n"
                       "# TYPE obleth_cluster_redis_ops_total counter\n");
  for (int o = 0; o < OB_CLUSTER_OPS; o++)
    for (int r = 0; r < OB_CLUSTER_RESULTS; r++)
      ob_buf_printf(b, "obleth_cluster_redis_ops_total{op=\"%s\",result=\"%s\"} %llu\n", ob_cluster_op_names[o],
                    ob_cluster_result_names[r], (unsigned long long)st.ops[o][r]);
  ob_buf_append_str(b, "# HELP obleth_cluster_redis_seconds Round trip of successful calls to Redis.\n"
                       "# TYPE obleth_cluster_redis_seconds histogram\n");
  for (int i = 0; i < OB_CLUSTER_BUCKETS; i++) {
    if (i == OB_CLUSTER_BUCKETS - 1) ob_buf_append_str(b, "obleth_cluster_redis_seconds_bucket{le=\"+Inf\"}");
    else ob_buf_printf(b, "obleth_cluster_redis_seconds_bucket{le=\"%g\"}", ob_cluster_bucket_le[i]);
    ob_buf_printf(b, " %llu\n", (unsigned long long)st.lat_counts[i]);
  }
  ob_buf_printf(b, "obleth_cluster_redis_seconds_sum %.6f\nobleth_cluster_redis_seconds_count %llu\n", st.lat_sum,
                (unsigned long long)st.lat_count);
  ob_buf_append_str(b, "# HELP obleth_cluster_fallbacks_total Times this replica left shared mode.\n"
                       "# TYPE obleth_cluster_fallbacks_total counter\n");
  ob_buf_printf(b, "obleth_cluster_fallbacks_total %llu\n", (unsigned long long)st.fallbacks);
}

/* ---------------------------------------------------------------- lifecycle */

bool ob_proxy_cluster_start(ob_proxy_t *p, const char **why) {
  const ob_config_t *c = p->cfg;
  *why = NULL;
  if (!c->cluster.enabled) return true;
  ob_fleet_t *f = ob_xcalloc(1, sizeof *f);
  f->p0 = p;
  f->cfg = c->cluster;
  f->replica_id = ob_xstrdup(c->cluster.replica_id);
  f->replicas = 1;
  f->digests = 1;
  f->digest_dirty = true;
  ob_proxy_lock(p);
  p->sh->fleet = f;
  apply_caps(p); /* fallback until the join: split by one replica = whole */
  ob_proxy_unlock(p);
  ob_cluster_hooks_t h = {.user = p, .join_args = join_args, .on_mode = on_mode, .on_beat = on_beat,
                          .on_grant = on_grant, .on_message = on_message, .digest = hook_digest};
  f->cl = ob_cluster_create(p->base, &c->cluster, &h, why);
  if (!f->cl) {
    ob_proxy_lock(p);
    p->sh->fleet = NULL;
    apply_caps(p);
    ob_proxy_unlock(p);
    free(f->replica_id);
    free(f);
    return false;
  }
  return true;
}

void ob_proxy_cluster_stop(ob_proxy_t *p) {
  ob_fleet_t *f = p->sh ? p->sh->fleet : NULL;
  if (!f) return;
  ob_cluster_destroy(f->cl); /* pending calls fail: their callbacks free their tickets */
  f->cl = NULL;
  ob_proxy_lock(p);
  p->sh->fleet = NULL;
  ob_proxy_unlock(p);
  for (size_t i = 0; i < f->cap; i++)
    if (f->tab[i]) {
      if (f->tab[i]->x) f->tab[i]->x->ticket = NULL;
      free(f->tab[i]->bkey[0]);
      free(f->tab[i]->bkey[1]);
      free(f->tab[i]);
    }
  for (fop_t *o = f->out_head, *n; o; o = n) {
    n = o->next;
    ob_cluster_args_dispose(&o->args);
    free(o);
  }
  free(f->tab);
  free(f->gen);
  free(f->free_idx);
  free(f->replica_id);
  free(f);
}
