/* proxy_int.h: shared by the files of src/proxy only. */
#ifndef OB_PROXY_INT_H
#define OB_PROXY_INT_H

#include "proxy.h"

#include <pthread.h>

/* FS_FLEET: cluster mode, the fleet's scheduler decides (fleet.c). */
enum { FS_NONE, FS_QUEUED, FS_GRANTED, FS_DONE, FS_FLEET };

typedef struct ob_fleet ob_fleet_t;
typedef struct ob_capacity ob_capacity_t;

/* metrics.c: counters of finished exchanges. */
#define OB_METRIC_CLASSES 6 /* inference, passthrough, grpc, mcp, grpc_health, none (no route) */
#define OB_METRIC_BUCKETS 16
#define OB_METRIC_ADMISSIONS 5 /* fast, queued, rejected, none, budget */

typedef struct ob_histogram {
  uint64_t counts[OB_METRIC_BUCKETS]; /* cumulative, as exposed */
  uint64_t count;
  double sum;
} ob_histogram_t;

typedef struct ob_metrics {
  uint64_t requests[OB_METRIC_CLASSES][500][OB_METRIC_ADMISSIONS]; /* class, status - 100, admission */
  ob_histogram_t queue_wait[OB_METRIC_CLASSES], ttfb[OB_METRIC_CLASSES], total[OB_METRIC_CLASSES];
  uint64_t prompt_tokens[OB_METRIC_CLASSES], completion_tokens[OB_METRIC_CLASSES], bytes_out[OB_METRIC_CLASSES];
  uint64_t cache[4]; /* hit, miss, bypass, coalesced */
  uint64_t cache_hit_bytes, cache_tokens_saved;
} ob_metrics_t;

/* Per tenant, by name, across reloads: a tenant that stays in the config
 * keeps its scheduler entry (and so its queue and service), its rate-limit
 * buckets and its run-time disabled flag. */
typedef struct ob_tstate {
  char *name;
  ob_fs_tenant_id fs;
  ob_fs_bucket_t rpm, tpm;
  bool disabled;               /* set at run time by the admin API */
} ob_tstate_t;

/* What one config snapshot is compiled into. Counted: the proxy holds the
 * current one, every exchange holds the one it started under, so a reload
 * never changes the config, tenants or routes of a request in flight. */
struct ob_proxy_gen {
  int refs;
  ob_config_t *cfg;            /* counted */
  const ob_tenants_t *tenants; /* owned by owner */
  ob_route_find_cb find;
  void *table;                 /* owned by owner */
  void (*dispose)(void *owner);
  void *owner;
  ob_fs_pool_id *pool_of;      /* per cfg->upstreams index */
  uint32_t *tstate_of;         /* per cfg->tenants index: index in proxy.tstates */
};

/* A call posted to another worker's loop (ob_proxy_run_on). */
typedef struct ob_proxy_call {
  struct ob_proxy_call *next;
  void (*fn)(void *arg);
  void *arg;
  bool done;                   /* under shared.mu; the poster waits on shared.called */
} ob_proxy_call_t;

/* What every worker's proxy shares: one scheduler (fairness is across the
 * process, not per thread), the per-tenant state and the workers' inboxes,
 * all under mu. Every scheduler decision is O(log n) under it, and nothing
 * that can call back into the proxy runs while it is held: grants and
 * expiries are posted to the owning worker's inbox and acted on after the
 * lock is dropped. Owned by the first worker's proxy. */
typedef struct ob_proxy_shared {
  pthread_mutex_t mu;
  pthread_cond_t called;       /* a posted call finished */
  ob_fs_t *fs;
  ob_tstate_t *tstates;        /* every tenant name ever configured */
  size_t num_tstates, cap_tstates;
  char **pool_names;           /* scheduler pool i serves the upstream named pool_names[i] */
  size_t num_pools;
  ob_fs_tenant_id anonymous;   /* when no tenants are configured */
  bool has_anonymous;
  ob_proxy_t **workers;        /* every proxy sharing this, by worker index */
  size_t num_workers;
  uint64_t lock_taken, lock_contended; /* mu acquisitions; those that had to wait */
  ob_fleet_t *fleet;           /* cluster mode (fleet.c); NULL without a cluster block */
  ob_capacity_t *capacity;     /* max_inflight "auto" (capacity.c); NULL when no upstream has it */
} ob_proxy_shared_t;

enum { INBOX_NONE, INBOX_GRANT, INBOX_EXPIRED, INBOX_FLEET };

struct ob_proxy {
  ob_proxy_gen_t *gen;         /* counted: the current generation */
  ob_config_t *cfg;            /* == gen->cfg, for what always follows the current config */
  ob_net_t *net;
  uint64_t rid_seed;
  uint64_t rid_counter;
  ob_proxy_shared_t *sh;       /* admission: shared by every worker */
  size_t index;                /* worker index; 0 owns sh */
  /* The inbox, under sh->mu: exchanges of this worker that another loop
   * (or this one, from inside the scheduler) granted or expired, and calls
   * posted by the first worker. */
  ob_exchange_t *in_head, *in_tail;
  ob_proxy_call_t *calls;
  bool woken;                  /* a wake-up is in the pipe */
  bool pending;                /* the inbox holds something (atomic: read without the lock) */
  bool loop_running;           /* posted calls wait for this loop; else they run at once */
  bool thread_set, loop_done;  /* thread is p's loop thread; it has left its loop for good */
  pthread_t thread;
  ob_waker_t *waker;            /* other threads' way into this loop (the inbox) */
  bool draining;               /* this thread is emptying the inbox */
  struct event *expiry;
  struct event *log_flush;     /* writes buffered access lines soon after the first */
  struct event_base *base;
  ob_ledger_t *ledger;         /* NULL without ledger.path */
  ob_budgets_t *budgets;       /* borrowed from main; NULL: budgets not enforced */
  pthread_mutex_t metrics_mu;  /* the admin (first worker) sums every worker's counters */
  ob_metrics_t metrics;
};

/* The state of the tenant of cfg->tenants[i] in generation g. */
static inline ob_tstate_t *ob_proxy_tstate(ob_proxy_t *p, const ob_proxy_gen_t *g, size_t i) {
  return &p->sh->tstates[g->tstate_of[i]];
}

/* Contention is counted (a metric): it is what limits scaling with workers. */
static inline void ob_proxy_lock(ob_proxy_t *p) {
  if (pthread_mutex_trylock(&p->sh->mu) != 0) {
    pthread_mutex_lock(&p->sh->mu);
    p->sh->lock_contended++;
  }
  p->sh->lock_taken++;
}
static inline void ob_proxy_unlock(ob_proxy_t *p) { pthread_mutex_unlock(&p->sh->mu); }

/* admission.c (locked): bind a generation to the scheduler (pools, groups, tenants
 * found by name or added; weights and caps from its config). */
void ob_proxy_gen_bind(ob_proxy_t *p, ob_proxy_gen_t *g);
/* admission.c (locked): the scheduler group named name, or -1. */
long ob_proxy_find_group(const ob_proxy_t *p, const char *name);
/* admission.c: after a reload, apply the admission parameters and grant
 * what the new capacity allows. */
void ob_proxy_admission_changed(ob_proxy_t *p);
/* exchange.c: drop a reference; the last one disposes the generation. */
void ob_proxy_gen_release(ob_proxy_gen_t *g);

void ob_proxy_metrics_record(ob_proxy_t *p, const ob_exchange_t *x, const ob_sreq_t *s, uint64_t now_us);

/* ledger.c */
void ob_ledger_record(ob_ledger_t *l, const ob_exchange_t *x, const ob_sreq_t *s, uint64_t now_us, bool completed);

/* admission.c: what fleet.c shares with the local path. */
void ob_proxy_inbox_post(ob_exchange_t *x, int kind); /* locked */
void ob_proxy_arm_expiry(ob_proxy_t *p);              /* locked */
void ob_proxy_pump_locked(ob_proxy_t *p);             /* locked */
ob_fs_params_t ob_proxy_fs_params(const ob_proxy_t *p); /* locked: with the caps of the current mode */
void ob_proxy_admit_local(ob_exchange_t *x);
void ob_proxy_answer_expired(ob_exchange_t *x);
void ob_proxy_reject_rate(ob_exchange_t *x, uint64_t wait_ms, const char *what);
void ob_proxy_reject_queue_full(ob_exchange_t *x, uint64_t wait_ms);
void ob_proxy_reject_budget(ob_exchange_t *x, bool tenant, uint64_t limit, uint64_t used, uint64_t reserved);

/* fleet.c: cluster mode. Every function is a no-op without a cluster block. */
/* A cap the local scheduler enforces in the current mode: 0 (none) in
 * shared mode, the fallback's share otherwise (locked). */
uint32_t ob_fleet_cap(const ob_proxy_shared_t *sh, uint32_t v);
/* A rate limit's local bucket: whole in shared mode (the fleet's own
 * buckets decide; the local one only labels headers), split in fallback. */
uint64_t ob_fleet_rate_of(const ob_proxy_shared_t *sh, uint64_t v);
static inline uint64_t ob_fleet_rate(const ob_proxy_shared_t *sh, uint64_t v) {
  return sh->fleet ? ob_fleet_rate_of(sh, v) : v;
}
/* Shared mode: send x to the fleet (true); false: decide locally. */
bool ob_fleet_admit(ob_exchange_t *x);
/* Shared mode: count x's long-lived stream fleet-wide against x->stream_cap
 * (true: the answer comes through the inbox); false: go on locally. */
bool ob_fleet_stream_open(ob_exchange_t *x);
/* INBOX_FLEET: act on the fleet's verdict on x's own loop. */
void ob_fleet_verdict(ob_exchange_t *x);
/* Locked: x was admitted locally, held (granted) or queued. */
void ob_fleet_track(ob_exchange_t *x, bool held);
/* Locked: a locally queued x was granted. */
void ob_fleet_local_grant(ob_exchange_t *x);
/* x is over: give back what the fleet counts for it (not locked). */
void ob_fleet_release(ob_exchange_t *x, uint64_t actual, uint64_t tokens, int64_t tpm_refund);
/* First worker: send what other workers posted for the Redis link. */
void ob_fleet_flush(ob_proxy_t *p);
/* A reload or admin change: send this replica's caps and weights. */
void ob_fleet_config_changed(ob_proxy_t *p);
/* Publish an admin change to the other replicas. */
void ob_fleet_broadcast(ob_proxy_t *p, const char *kind, const char *name, const char *value);
/* control.c: apply a change without broadcasting it (one that came from another replica). */
bool ob_proxy_apply_tenant_weight(ob_proxy_t *p, const char *name, uint32_t weight);
bool ob_proxy_apply_tenant_disabled(ob_proxy_t *p, const char *name, bool disabled);
bool ob_proxy_apply_group_weight(ob_proxy_t *p, const char *name, uint32_t weight);

/* capacity.c: max_inflight "auto". */
/* The slots of upstream u now: its max_inflight, or for "auto" the sum of
 * its endpoints' limits (locked). */
uint32_t ob_proxy_pool_slots(const ob_proxy_shared_t *sh, const ob_config_upstream_t *u);
uint32_t ob_proxy_capacity_slots(const ob_proxy_shared_t *sh, const char *upstream);
/* First worker: (re)build the controllers (start-up, reload); not locked. */
void ob_proxy_capacity_bind(ob_proxy_t *p);
/* Each worker: point its net's pools at the limits; not locked. */
void ob_proxy_capacity_attach(ob_proxy_t *p);
/* Locked, at release of a granted exchange: its time to first token. */
void ob_proxy_capacity_on_ttft(ob_exchange_t *x);
void ob_proxy_capacity_dispose(ob_proxy_shared_t *sh);
/* ,"capacity":[...] of one upstream's endpoints (nothing unless "auto"); locked. */
void ob_proxy_write_capacity_json(ob_proxy_t *p, const char *upstream, ob_buf_t *b);
void ob_proxy_write_capacity_metrics(ob_proxy_t *p, ob_buf_t *b);
/* fleet.c, for an "auto" pool (first worker, not locked): offer this
 * replica's slots and per-endpoint limits to the fleet (cluster.lua's
 * capacity op: one replica's controller is in force fleet-wide). cb gets,
 * once, whether Redis answered, whether this replica owns the pool's
 * controller, the pool's requests in flight fleet-wide, and the limits in
 * force (NULL before an owner set any; n of them, valid for the call).
 * false (cb not called) when not in shared mode or n is over
 * OB_FLEET_CAPACITY_MAX (the config refuses more). limits: borrowed for the call. */
#define OB_FLEET_CAPACITY_MAX OB_CONFIG_AUTO_ENDPOINTS_MAX
typedef void (*ob_fleet_capacity_cb)(void *arg, bool answered, bool owner, uint64_t fleet_inflight,
                                     const uint32_t *limits);
bool ob_fleet_capacity(ob_proxy_t *p, const char *upstream, uint32_t slots, const uint32_t *limits, size_t n,
                       uint32_t lease_ms, ob_fleet_capacity_cb cb, void *arg);
/* How many replicas' worth of requests the local scheduler's count stands
 * for: the replica count in fallback "split" (each replica runs 1/N of
 * every cap), 1 otherwise. */
uint32_t ob_fleet_local_share(const ob_proxy_shared_t *sh);

/* admission.c */
/* Join first's shared state (NULL: create it) and bind p's generation. */
void ob_proxy_admission_share(ob_proxy_t *p, ob_proxy_t *first);
void ob_proxy_admission_init(ob_proxy_t *p, struct event_base *base);
/* Locked: w's inbox has something new. Wakes w's loop unless it is the
 * caller's own running loop, which drains its inbox before returning to
 * the loop. */
void ob_proxy_wake(ob_proxy_t *w);
/* Act on what the inbox holds (grants, expiries, calls); on p's thread. */
void ob_proxy_drain_inbox(ob_proxy_t *p);
/* Take x out of its worker's inbox (locked). */
void ob_proxy_inbox_remove(ob_exchange_t *x);
void ob_proxy_admission_dispose(ob_proxy_t *p);
/* Identify the caller; false when an error was answered. */
bool ob_proxy_identify(ob_exchange_t *x);
/* After prepare: forward now, queue, or answer 429/403. */
void ob_proxy_admit(ob_exchange_t *x);
/* The exchange is over: give back its slot or leave the queue, exactly once. */
void ob_proxy_release(ob_exchange_t *x, bool completed);
/* Tokens name used in the period of kind period that holds now_s (0
 * without budgets). */
uint64_t ob_proxy_budget_used(ob_proxy_t *p, ob_budget_kind_t kind, const char *name, ob_budget_period_t period,
                              int64_t now_s);
/* Append admission and rate-limit headers for a response (into h, which has
 * room for OB_PROXY_ADMISSION_HEADERS more entries; strings in the arena). */
#define OB_PROXY_ADMISSION_HEADERS 8
size_t ob_proxy_admission_headers(ob_exchange_t *x, ob_http_header_t *h);

/* exchange.c */
/* gRPC status for an error the gateway answers with an HTTP status and
 * OpenAI error code (see docs/grpc.md for the table). */
int ob_proxy_grpc_code(int status, const char *code);
void ob_proxy_forward(ob_exchange_t *x);
void ob_proxy_reply_error_h(ob_exchange_t *x, int status, const char *message, const char *type, const char *code,
                            const ob_http_header_t *extra, size_t n_extra);

#endif
