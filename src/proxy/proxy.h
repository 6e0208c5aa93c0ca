/*
 * proxy: the exchange (one client request and its upstream request, owning
 * both halves) and its pipeline: route -> identify (tenant) -> prepare
 * (route class) -> admit (fairshare) -> forward -> stream -> release ->
 * record. Route classes (routes/, mcp/) plug in through ob_route_class_t;
 * the proxy never includes them. Uses net, tenant, fairshare and core.
 *
 * Lifetime: an exchange is created when net hands over a complete request
 * (on_request) and freed when net reports the client stream closed
 * (on_close). Everything in it is released exactly once there: the upstream
 * request is cancelled if still running, the config snapshot released, the
 * log line written.
 */
#ifndef OB_PROXY_H
#define OB_PROXY_H

#include "config.h"
#include "core.h"
#include "fairshare.h"
#include "net.h"
#include "tenant.h"

typedef struct ob_proxy ob_proxy_t;
typedef struct ob_ledger ob_ledger_t;
typedef struct ob_exchange ob_exchange_t;
typedef struct ob_route ob_route_t;
typedef struct ob_proxy_gen ob_proxy_gen_t;

/*
 * A route class. prepare() runs once per exchange after the route matched:
 * it inspects the request (x->req, including the complete body) and either
 *   - chooses where it goes (ob_exchange_set_upstream) and may change what
 *     is sent (x->up_path, ob_exchange_set_body) and returns OB_OK, after
 *     which the proxy forwards; or
 *   - answers by itself (ob_exchange_reply_error / ob_exchange_reply) and
 *     returns OB_OK without an upstream; or
 *   - returns an error, answered with a generic 500.
 * data: the route's class data (ob_route_t.class_data), borrowed.
 */
typedef struct ob_route_class {
  const char *name;
  ob_err_t (*prepare)(ob_exchange_t *x, void *data);
  /* Requests of this class go through fairshare admission (passthrough
   * does not: authenticated, never queued). */
  bool admitted;
  /* Default cost kind when the route does not configure one; inference
   * uses admission.cost. */
  bool cost_tokens_default;
  /* Optional: sees every response body span before it is forwarded
   * (borrowed for the call; must not consume it). */
  void (*on_response_data)(ob_exchange_t *x, const char *p, size_t n);
  /* Optional: the actual cost of a finished exchange in tokens (completed:
   * the response was complete). Called once, at release of every admitted
   * exchange: the scheduler's charge when the cost is in tokens (without
   * it the estimate stands), and what a token budget is charged when the
   * upstream reported no usage. */
  uint64_t (*actual_tokens)(ob_exchange_t *x, bool completed);
  /* For gRPC calls (HTTP/2, content-type application/grpc*) the request
   * body is not buffered: prepare runs as soon as the head is in
   * (x->req->body stays empty) and the body streams to the upstream as the
   * client sends it. Other requests on the route are buffered as usual. */
  bool stream_body;
  /* No API key is asked for (the gateway's own health service). */
  bool no_auth;
  /* Optional: the upstream's response head is about to go to the client;
   * the class may replace header values (new values in x->arena).
   * x->endpoint_index says which endpoint answered. */
  void (*on_response_head)(ob_exchange_t *x, int status, ob_http_header_t *h, size_t n);
  /* Optional: the exchange is over (after its slot was released); called
   * once for every exchange that reached prepare. */
  void (*on_finish)(ob_exchange_t *x, bool completed);
  /* Optional: the upstream response is complete (before its end goes to
   * the client). */
  void (*on_response_end)(ob_exchange_t *x);
  /* Optional: the upstream request failed; status: what the client is
   * answered when no head went out yet (else the client stream is reset). */
  void (*on_response_error)(ob_exchange_t *x, int status, bool head_seen);
} ob_route_class_t;

/* A response body rewriter: moves what it can from in to out (bytes it
 * keeps for later stay in in); end: the upstream body is complete, flush
 * everything. */
typedef void (*ob_response_filter_t)(ob_exchange_t *x, struct evbuffer *in, struct evbuffer *out, bool end);

/* A compiled route. Owned by the route table that produced it, which
 * outlives every exchange using it (tables are per config snapshot). */
struct ob_route {
  ob_iov_t prefix;
  ob_iov_t rewrite;           /* replaces prefix in the upstream path; base == NULL: keep */
  const char *upstream;       /* default upstream name, may be NULL */
  const ob_route_class_t *cls;
  void *class_data;
  int cost;                   /* -1: class default; else an ob_cost_kind_t */
  const bool *tenant_allowed; /* by cfg->tenants index; NULL: every tenant may use the route */
  const ob_config_route_t *cfg; /* what it was compiled from; NULL for routes the gateway adds */
};

/* Finds the route for a path (longest prefix); NULL when none matches.
 * The result is borrowed from table. */
typedef const ob_route_t *(*ob_route_find_cb)(void *table, ob_iov_t path);

struct ob_exchange {
  ob_proxy_t *proxy;
  ob_proxy_gen_t *gen;        /* counted: the config generation the request started under */
  ob_sreq_t *req;             /* client side; borrowed until on_close, NULL after */
  ob_arena_t *arena;          /* == &req->arena: memory for this exchange */
  const ob_route_t *route;
  ob_iov_t up_path;           /* path sent upstream (prefix rewrite already applied) */
  ob_upstream_t *upstream;    /* chosen pool, borrowed from net */
  const char *upstream_name;
  ob_iov_t body_parts[4];     /* what is sent upstream as the body; default: the request body */
  size_t num_body_parts;
  ob_iov_t model;             /* requested model, for the log (empty when none) */
  char request_id[40];
  ob_identity_t who;          /* tenant and key; who.tenant NULL when anonymous */
  uint64_t prompt_tokens_est; /* set by prepare (inference): estimated prompt tokens */
  uint64_t max_tokens;        /* set by prepare: requested output tokens (or the default) */
  void *class_state;          /* the route class's per-exchange state (arena) */
  bool grpc;                  /* a gRPC call (HTTP/2, content-type application/grpc*): errors as gRPC statuses */
  uint64_t cache_tokens_saved;/* a cache hit: the tokens the stored response cost */
  const char *cache_outcome;  /* "hit", "miss", "bypass", "coalesced"; NULL: not cacheable */
  uint64_t usage_prompt, usage_completion; /* tokens the upstream reported (0 when not known) */
  /* Set by prepare, all optional: */
  ob_response_filter_t response_filter; /* rewrites the body (Content-Length is then dropped) */
  size_t pin_endpoint;        /* 1 + index of the endpoint that must serve the request; 0 = any */
  int gone_status;            /* answer this (not 502/503) when the pinned endpoint cannot be reached */
  bool long_lived;            /* an event stream: no upstream idle timeout */
  bool not_admitted;          /* skips admission although the class is admitted (not counted as work) */
  uint32_t stream_cap;        /* with not_admitted: a long-lived stream the tenant may hold at most this many
                                 of (checked by the class; in cluster mode also across the fleet); 0 = none */
  bool parked;                /* the class answers later by itself (a coalesced cache follower): no upstream */
  const char *note;           /* appended to the log line, e.g. "mcp=tools/call:echo" (arena) */
  size_t endpoint_index;      /* in on_response_head: the endpoint that answered */
  /* private */
  uint64_t deadline_us;       /* gRPC: the client's grpc-timeout as a clock time, 0 = none */
  struct event *deadline_ev;  /* gRPC: ends the call at deadline_us once forwarded */
  int grpc_status;            /* gRPC: the status the call ended with, -1 = not seen */
  ob_fs_req_t fsr;
  int fs_state;
  struct ob_fleet_ticket *ticket; /* cluster mode: this exchange's slot or queue entry in the fleet (fleet.c) */
  int fleet_code;             /* cluster mode: the fleet's verdict, acted on from the inbox */
  int64_t fleet_v[3];         /* its numbers (wait ms; budget used, limit, reserved) */
  bool fleet_queued;          /* it waited in the fleet's queue */
  bool fleet_rl;              /* admitted by the fleet: fleet_v[1], [2] are its rpm / tpm remaining (-1: none) */
  struct event *fleet_deadline; /* queued in the fleet: when it gives up (queue_timeout_ms) */
  bool cost_tokens;
  uint64_t cost;
  uint64_t tpm_taken;
  uint64_t queue_start_us, queue_us;
  const char *admission;      /* "fast", "queued", "rejected", "budget" (refused: budget used up), NULL = not admitted */
  ob_ureq_t *u;
  const char *endpoint;       /* "host:port" that served the request (copied into arena), NULL before */
  uint64_t ttfb_us;
  uint64_t first_byte_us;      /* the upstream answer's first body byte (streamed: the first token), 0 before */
  bool paused;
  bool answered;
  bool prepared;              /* prepare ran: on_finish is owed */
  ob_exchange_t *in_prev, *in_next; /* in the worker's inbox (under the shared lock) */
  int in_kind;                /* INBOX_*: why it is there; INBOX_NONE: not in it */
  ob_http_header_t replace[2];
  size_t num_replace;
  ob_http_header_t resp_extra[2]; /* added to the response head */
  size_t num_resp_extra;
  struct evbuffer *filtered;  /* response_filter output */
};

/* Choose the upstream by configured name. Returns OB_ERR_CONFIG when no
 * such upstream exists (a config error caught at load time normally). */
ob_err_t ob_exchange_set_upstream(ob_exchange_t *x, const char *name);

/* Replace the upstream body with pieces (borrowed: must live in the
 * exchange's arena or the request body). At most 4 pieces. */
void ob_exchange_set_body(ob_exchange_t *x, const ob_iov_t *parts, size_t n);

/* Answer with an error in OpenAI's shape. type / code NULL: defaults for the
 * status. message borrowed for the call. */
void ob_exchange_reply_error(ob_exchange_t *x, int status, const char *message, const char *type, const char *code);

/* Answer with a complete body (copied) and a content type. */
void ob_exchange_reply(ob_exchange_t *x, int status, const char *content_type, const void *body, size_t len);

/* Answer a gRPC call. code 0 (OK): one message (msg, len: the serialized
 * protobuf, framed here) then trailers grpc-status 0. Any other code: a
 * Trailers-Only response carrying code and message (percent-encoded). */
void ob_exchange_reply_grpc(ob_exchange_t *x, int code, const char *message, const void *msg, size_t len);

/* Whether the named upstream has an endpoint that is not in connection
 * back-off (false for an unknown name). */
bool ob_exchange_upstream_available(const ob_exchange_t *x, const char *name);

/* Send name upstream with value instead of the client's value (value
 * borrowed: arena or request memory). At most 2 per exchange. */
void ob_exchange_replace_header(ob_exchange_t *x, const char *name, ob_iov_t value);

/* Add a header to this exchange's response head, whoever makes it (the
 * upstream or the gateway). name and value borrowed (static or arena). At
 * most 2. */
void ob_exchange_add_response_header(ob_exchange_t *x, const char *name, ob_iov_t value);

/* The response headers the gateway adds to a head it sends for x (request
 * id, admission, rate limits, those added above); h has room for
 * OB_EXCHANGE_HEAD_EXTRA entries. Returns how many were written. For route
 * classes that answer on another exchange's behalf (cache followers). */
#define OB_EXCHANGE_HEAD_EXTRA 12
size_t ob_exchange_head_headers(ob_exchange_t *x, ob_http_header_t *h);

/* The refusals that depend on what prepare learned (the tenant's model
 * allow-list, checked against x->model): answers 403 model_not_allowed and
 * returns false when one applies. Admission runs it for every request; a
 * route class that answers without going upstream (a cache hit, a
 * coalesced follower) must run it first, so that a request is refused
 * whether or not an answer is at hand. */
bool ob_exchange_authorize(ob_exchange_t *x);

/* The admission config of the proxy, for route classes (borrowed). */
const ob_config_admission_t *ob_exchange_admission(const ob_exchange_t *x);

/*
 * What a config snapshot is compiled into, made by the caller (main), which
 * knows the route classes. The proxy acquires cfg; tenants and table
 * belong to owner and are freed by dispose(owner) once neither the proxy
 * nor any exchange uses the generation any more (after a reload, when the
 * last request that started under it is over).
 */
typedef struct ob_proxy_gen_spec {
  ob_config_t *cfg;
  const ob_tenants_t *tenants;
  ob_route_find_cb find;
  void *table;
  void (*dispose)(void *owner);
  void *owner;
} ob_proxy_gen_spec_t;

/* The proxy: one per event loop (worker), starting with the generation g;
 * creating it creates the scheduler (pools, groups, tenants). net is
 * attached after creation because net needs the proxy's handler first;
 * attaching creates the proxy's timers and inbox on base. */
ob_proxy_t *ob_proxy_create(const ob_proxy_gen_spec_t *g);
void ob_proxy_attach(ob_proxy_t *p, ob_net_t *net, struct event_base *base);
/* The handler to give ob_net_create, with the proxy as ctx. */
const ob_sreq_handler_t *ob_proxy_handler(void);
/* Destroy the proxy after net (no exchange is left); disposes the current
 * generation. Workers go before the first proxy, which owns what they
 * share. */
void ob_proxy_destroy(ob_proxy_t *p);

/*
 * Workers ("workers": N): one proxy per event-loop thread, each with its
 * own net, exchanges and generations, all sharing the first proxy's
 * scheduler and tenant state (one mutex, see proxy_int.h), its ledger and
 * budgets. An exchange is only ever touched by its own worker's thread: a
 * slot freed on one loop that grants a request queued on another is handed
 * over through that worker's inbox (a pipe wakes its loop).
 *
 * ob_proxy_create_worker: like ob_proxy_create, joining first. Call from
 * the first worker's thread before the new worker's loop starts, then
 * ob_proxy_attach it to its own net and base.
 */
ob_proxy_t *ob_proxy_create_worker(ob_proxy_t *first, const ob_proxy_gen_spec_t *g);
/* The worker's loop runs (from now on) on thread: called by the thread
 * that created it, before anything may post to it. ob_proxy_loop_end: on
 * that thread, once event_base_dispatch returned. */
void ob_proxy_loop_begin(ob_proxy_t *p, pthread_t thread);
void ob_proxy_loop_end(ob_proxy_t *p);
/* Run fn(arg) on p's loop and wait for it to return; directly when called
 * on p's thread or when p's loop is not running. Only the first worker's
 * thread may wait on another worker (so two loops never wait on each
 * other), and never while it holds anything fn needs. */
void ob_proxy_run_on(ob_proxy_t *p, void (*fn)(void *arg), void *arg);

/*
 * Reload: new requests use generation g from now on; requests in flight
 * finish under the one they started with. The scheduler is updated in
 * place: tenants, groups and pools are matched by name (a kept tenant keeps
 * its queued requests, service and rate-limit buckets; weights and caps
 * come from the new file, replacing changes made through the admin API),
 * new ones are added, removed ones get no new requests while their queued
 * ones are still served. Cannot fail: validate the config first.
 */
void ob_proxy_reload(ob_proxy_t *p, const ob_proxy_gen_spec_t *g);

/* The usage ledger (ledger.c): opened by main, given to the proxy, closed
 * after the proxy is gone (closing writes out every buffered line). NULL
 * (logged) when the file cannot be opened. */
ob_ledger_t *ob_ledger_open(const ob_config_ledger_t *cfg);
void ob_ledger_close(ob_ledger_t *l);
void ob_ledger_counts(ob_ledger_t *l, uint64_t *lines, uint64_t *dropped, uint64_t *write_errors);
void ob_proxy_set_ledger(ob_proxy_t *p, ob_ledger_t *l);

/* Token budgets: the counters (tenant.h) that admission checks, release
 * charges and the admin view shows. Created by main and kept for the whole
 * run, across config reloads (counters are keyed by tenant name and key id,
 * not by snapshot); borrowed, must outlive the proxy. Without them (NULL)
 * budget_tokens are not enforced. */
void ob_proxy_set_budgets(ob_proxy_t *p, ob_budgets_t *b);

/* ---- for the admin interface (on the first worker's thread; what it
 * reports covers every worker) ---- */

/* Append the Prometheus text exposition of the proxy's metrics. */
void ob_proxy_write_metrics(ob_proxy_t *p, ob_buf_t *out);
/* Append JSON of every pool: slots in use, per group and per tenant in
 * flight, queued, service received, weight, deficit. */
void ob_proxy_write_fairshare(ob_proxy_t *p, ob_buf_t *out);
/* Append JSON of one tenant (what /admin/fairshare lists, plus its
 * "budget" and its "keys" with theirs); false when there is no such
 * tenant. */
bool ob_proxy_write_tenant(ob_proxy_t *p, const char *name, ob_buf_t *out);
/* The same with the fleet's budget counts (cluster mode; what
 * ob_proxy_fleet_budgets answered: n used / reserved pairs); budgets NULL:
 * this process's own. */
bool ob_proxy_write_tenant_fleet(ob_proxy_t *p, const char *name, const int64_t *budgets, size_t n, ob_buf_t *out);
/* Live changes, applied to the running scheduler at once (queued requests
 * keep their place). False when there is no such tenant or group. */
bool ob_proxy_set_tenant_weight(ob_proxy_t *p, const char *name, uint32_t weight);
bool ob_proxy_set_tenant_disabled(ob_proxy_t *p, const char *name, bool disabled);
bool ob_proxy_set_group_weight(ob_proxy_t *p, const char *name, uint32_t weight);
/* Whether some upstream endpoint is not in connection back-off. */
bool ob_proxy_ready(ob_proxy_t *p);

/* ---- cluster mode (docs/cluster.md; fleet.c) ---- */

/* Join the fleet named by the config's cluster block (nothing without
 * one): on the first worker, after ob_proxy_attach, before serving. False
 * with *why (static) when this replica must not start (its replica_id is
 * in use by a live replica). */
bool ob_proxy_cluster_start(ob_proxy_t *p, const char **why);
/* Leave the fleet (what this replica holds is given back at once); before
 * ob_proxy_destroy. */
void ob_proxy_cluster_stop(ob_proxy_t *p);

/* What the admin API shows of the fleet. Strings borrowed until the next call. */
typedef struct ob_proxy_fleet_state {
  bool enabled;              /* a cluster block is configured */
  bool shared;               /* shared mode (else fallback) */
  bool fallback_local;       /* fallback is "local" (else "split") */
  uint32_t replicas, digests;
  uint64_t fallbacks;
  int64_t epoch;
  double latency_s;          /* the last heartbeat's round trip */
  const char *replica_id;
  const char *digest;        /* of this replica's caps and weights */
} ob_proxy_fleet_state_t;
void ob_proxy_fleet_state(ob_proxy_t *p, ob_proxy_fleet_state_t *out);

struct ob_cluster_info;
/* An answer from the fleet: info (the info query) or budgets (used,
 * reserved pairs, n of them: the tenant's budget, then each key's), NULL
 * when Redis did not answer. Both borrowed for the call. */
typedef void (*ob_proxy_fleet_view_cb)(void *arg, const struct ob_cluster_info *info, const int64_t *budgets, size_t n);
/* Ask the fleet; false (cb never called) when not in shared mode. cb runs
 * on the first worker's loop, later. */
bool ob_proxy_fleet_info(ob_proxy_t *p, ob_proxy_fleet_view_cb cb, void *arg);
bool ob_proxy_fleet_budgets(ob_proxy_t *p, const char *tenant, ob_proxy_fleet_view_cb cb, void *arg);
/* /admin/fairshare with the fleet's counts ("fleet"), and /admin/cluster;
 * info NULL: Redis did not answer (or fallback). */
void ob_proxy_write_fairshare_fleet(ob_proxy_t *p, const struct ob_cluster_info *info, ob_buf_t *out);
void ob_proxy_write_cluster(ob_proxy_t *p, const struct ob_cluster_info *info, ob_buf_t *out);
/* Append the cluster metrics (nothing without a cluster block). */
void ob_proxy_write_cluster_metrics(ob_proxy_t *p, ob_buf_t *out);

/* A cache purge another replica asked for (tenant NULL: everything). */
typedef void (*ob_proxy_purge_cb)(void *arg, const char *tenant);
void ob_proxy_set_purge_hook(ob_proxy_t *p, ob_proxy_purge_cb cb, void *arg);
/* This replica purged its cache: tell the others (tenant NULL: everything). */
void ob_proxy_cluster_purged(ob_proxy_t *p, const char *tenant);

#endif /* OB_PROXY_H */
