/*
 * route_table.c: compiles a snapshot's routes into a table sorted by prefix
 * length (longest first, so the first match is the longest prefix) and binds
 * each to its route class. Knows the class list; each class's behaviour lives
 * in its own file.
 */
#include "routes_int.h"

#include <stdlib.h>

typedef struct {
  const char *name;
  const ob_route_class_t *cls;
} class_entry_t;

/* The config validator keeps its own list of names; adding a class means a
 * line here and there. */
static const class_entry_t classes[] = {
    {"inference", &ob_routes_inference_class},
    {"passthrough", &ob_routes_passthrough_class},
    {"grpc", &ob_routes_grpc_class},
};

static int by_prefix_len_desc(const void *a, const void *b) {
  const ob_route_t *x = a, *y = b;
  return x->prefix.len < y->prefix.len ? 1 : x->prefix.len > y->prefix.len ? -1 : 0;
}

ob_routes_t *ob_routes_create(ob_config_t *cfg, const ob_route_binding_t *extra, size_t n_extra) {
  ob_routes_t *t = ob_xcalloc(1, sizeof *t);
  t->cfg = ob_config_acquire(cfg);
  t->started = (long long)time(NULL);
  t->num = cfg->num_routes;
  t->routes = ob_xcalloc(t->num + 1, sizeof *t->routes);
  size_t nt = cfg->num_tenants;
  t->allowed = ob_xcalloc(cfg->num_routes * nt + 1, sizeof *t->allowed);
  size_t k = 0;
  bool health_routed = false;
  for (size_t i = 0; i < cfg->num_routes; i++) {
    const ob_config_route_t *r = &cfg->routes[i];
    const ob_route_class_t *cls = NULL;
    void *data = t;
    for (size_t j = 0; j < sizeof classes / sizeof classes[0]; j++)
      if (strcmp(classes[j].name, r->class_name) == 0) cls = classes[j].cls;
    for (size_t j = 0; j < n_extra; j++)
      if (strcmp(extra[j].cls->name, r->class_name) == 0) cls = extra[j].cls, data = extra[j].data;
    if (!cls) {
      ob_log_warn("routes[%zu]: class \"%s\" is not available; route skipped", i, r->class_name);
      continue;
    }
    ob_route_t *o = &t->routes[k++];
    o->prefix = ob_iov_str(r->prefix);
    o->rewrite = r->rewrite ? ob_iov_str(r->rewrite) : (ob_iov_t){NULL, 0};
    o->upstream = r->upstream;
    o->cls = cls;
    o->class_data = data;
    o->cfg = r;
    o->cost = !r->cost ? -1 : strcmp(r->cost, "tokens") == 0 ? OB_COST_TOKENS : OB_COST_REQUESTS;
    if (r->has_tenants) {
      /* By tenant index, so the check per request is one load. */
      bool *allow = t->allowed + i * nt;
      for (size_t j = 0; j < r->num_tenants; j++)
        for (size_t n = 0; n < nt; n++)
          if (strcmp(cfg->tenants[n].name, r->tenants[j]) == 0) allow[n] = true;
      o->tenant_allowed = allow;
    }
    if (strcmp(r->prefix, OB_ROUTES_HEALTH_PREFIX) == 0) health_routed = true;
  }
  /* grpc.health: the gateway's own health service, unless the operator
   * routes that prefix somewhere explicitly. */
  if (cfg->grpc_health && !health_routed) {
    ob_route_t *o = &t->routes[k++];
    o->prefix = OB_IOV_LIT(OB_ROUTES_HEALTH_PREFIX);
    o->cls = &ob_routes_grpc_health_class;
    o->class_data = t;
    o->cost = -1;
  }
  t->num = k;
  qsort(t->routes, t->num, sizeof *t->routes, by_prefix_len_desc);
  return t;
}

void ob_routes_set_cache(ob_routes_t *t, ob_cache_store_t *store) { t->store = store; }

void ob_routes_destroy(ob_routes_t *t) {
  if (!t) return;
  ob_config_release(t->cfg);
  ob_buf_dispose(&t->hit_buf);
  free(t->routes);
  free(t->allowed);
  free(t);
}

const ob_route_t *ob_routes_find(void *table, ob_iov_t path) {
  ob_routes_t *t = table;
  /* Match on the path without its query. */
  const char *q = memchr(path.base, '?', path.len);
  if (q) path.len = (size_t)(q - path.base);
  for (size_t i = 0; i < t->num; i++)
    if (ob_iov_starts_with(path, t->routes[i].prefix)) return &t->routes[i];
  return NULL;
}
