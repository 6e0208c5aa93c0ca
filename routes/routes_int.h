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
  /* Bodies seen lately -> their cache key (ob_cache_key_raw -> ob_cache_key),
   * direct-mapped by the first byte: canonicalizing a body costs more than
   * the rest of a hit's key work. Per table, so per config generation (the
   * excluded fields are part of the mapping) and per worker (no lock). */
  struct key_memo {
    ob_cache_key_t body_id, key;
    bool used;
  } key_memo[256];
  long long started;    /* unix time, the "created" of /v1/models entries */
};

extern const ob_route_class_t ob_routes_inference_class;
extern const ob_route_class_t ob_routes_passthrough_class;
extern const ob_route_class_t ob_routes_grpc_class;
extern const ob_route_class_t ob_routes_grpc_health_class;

/* cached.c: the response cache on inference routes (see there). */
typedef struct cache_x cache_x_t;
/* True when x was answered (hit) or parked (coalesced follower); *out is
 * the exchange's cache state (NULL when the request bypasses the cache). */
bool ob_routes_cache_prepare(ob_exchange_t *x, ob_routes_t *t, const ob_config_route_t *rc, const cJSON *root,
                             ob_iov_t body, cache_x_t **out);
void ob_routes_cache_head(ob_exchange_t *x, cache_x_t *c, int status, const ob_http_header_t *h, size_t n);
void ob_routes_cache_data(ob_exchange_t *x, cache_x_t *c, const char *p, size_t n);
void ob_routes_cache_end(ob_exchange_t *x, cache_x_t *c, const ob_usage_t *u);
void ob_routes_cache_error(ob_exchange_t *x, cache_x_t *c, int status, bool head_seen);
void ob_routes_cache_finish(ob_exchange_t *x, cache_x_t *c);

/* The prefix the gateway's own health service is routed on. */
#define OB_ROUTES_HEALTH_PREFIX "/grpc.health.v1.Health/"

#endif
