/* routes_int.h: shared by the files of routes/ only. */
#ifndef OB_ROUTES_INT_H
#define OB_ROUTES_INT_H

#include "routes.h"

#include <cjson/cJSON.h>

#include <time.h>

struct ob_routes {
  ob_config_t *cfg;     /* counted */
  ob_route_t *routes;   /* sorted longest prefix first */
  size_t num;
  bool *allowed;        /* the routes' tenant_allowed arrays, one block */
  ob_cache_store_t *store;          /* borrowed; NULL: lookups miss, nothing is stored */
  struct cache_x *flight[256];      /* cache leaders in flight, by the first key byte */
  /* Bodies seen lately (by ob_cache_body_id), direct-mapped by the first
   * byte of the id: their model name and the key of their canonical form.
   * A repeat then neither scans its body for the model nor canonicalizes
   * it, which together cost more than the rest of a hit. Per table, so per
   * config generation (excluded fields shape the canonical form) and per
   * worker (no lock). */
  struct body_memo {
    ob_cache_key_t body_id;
    ob_cache_key_t canon;   /* ob_cache_key of the canonical body, when has_canon */
    bool has_canon;
    char model[47];         /* model name, NUL-terminated */
    bool has_model;
    bool used;
  } body_memo[256];
  /* A hit's stored entry is read into this buffer, kept between hits (while
   * at most HIT_BUF_KEEP bytes) so that a hit does not allocate for it;
   * hit_buf_busy guards against a hit answered inside another's answer. */
  ob_buf_t hit_buf;
  bool hit_buf_busy;
  long long started;    /* unix time, the "created" of /v1/models entries */
};

extern const ob_route_class_t ob_routes_inference_class;
extern const ob_route_class_t ob_routes_passthrough_class;
extern const ob_route_class_t ob_routes_grpc_class;
extern const ob_route_class_t ob_routes_grpc_health_class;

/* cached.c: the response cache on inference routes (see there). */
typedef struct cache_x cache_x_t;
/* True when x was answered (hit, coalesced follower, or a refusal the
 * cache may not skip: see ob_exchange_authorize); *out is the exchange's
 * cache state (NULL when the request bypasses the cache). body_id:
 * ob_cache_body_id(body) when the caller has it, else NULL. up_model: the
 * model name the upstream receives (after `upstream_model`), borrowed for
 * the call; empty when the body names none. */
bool ob_routes_cache_prepare(ob_exchange_t *x, ob_routes_t *t, const ob_config_route_t *rc, const cJSON *root,
                             ob_iov_t body, const ob_cache_key_t *body_id, ob_iov_t up_model, cache_x_t **out);
/* The memo entry of body id (ob_routes_t.body_memo), reset to hold only that
 * id when it held another body. */
struct body_memo *ob_routes_body_memo(ob_routes_t *t, const ob_cache_key_t *id);
void ob_routes_cache_head(ob_exchange_t *x, cache_x_t *c, int status, const ob_http_header_t *h, size_t n);
void ob_routes_cache_data(ob_exchange_t *x, cache_x_t *c, const char *p, size_t n);
void ob_routes_cache_end(ob_exchange_t *x, cache_x_t *c, const ob_usage_t *u);
void ob_routes_cache_error(ob_exchange_t *x, cache_x_t *c, int status, bool head_seen);
void ob_routes_cache_finish(ob_exchange_t *x, cache_x_t *c);

/* The prefix the gateway's own health service is routed on. */
#define OB_ROUTES_HEALTH_PREFIX "/grpc.health.v1.Health/"

#endif
