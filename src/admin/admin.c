/*
 * admin.c: the admin endpoints. Small, rare requests: admin_http.c buffers
 * them whole (under the admin block's limits), answers are built in one
 * buffer. Every write is logged. Input is parsed strictly (one JSON object,
 * nothing after it, no repeated key) and every string reflected into an
 * answer is JSON-escaped.
 */
#include "admin.h"

#include "admin_int.h"

#include "cluster.h"

#include <cjson/cJSON.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>

struct ob_admin {
  ob_config_t *cfg;
  ob_proxy_t *proxy;
  ob_cache_store_t *cache;
  ob_admin_http_t *http;
  ob_admin_reload_fn reload;
  void *reload_arg;
  struct fleet_ask *asks;   /* fleet views waiting for Redis */
};

typedef ob_admin_req_t admin_req_t;

static void reply(admin_req_t *req, int code, const char *ctype, const char *body, size_t len) {
  ob_admin_http_reply(req, code, ctype, body, len, NULL);
}

static void reply_error(admin_req_t *req, int code, const char *msg) {
  ob_buf_t b;
  ob_buf_init(&b);
  ob_http_error_json(&b, code, msg, NULL, NULL);
  reply(req, code, "application/json", b.base, b.len);
  ob_buf_dispose(&b);
}

static void reply_buf(admin_req_t *req, int code, const char *ctype, ob_buf_t *b) {
  reply(req, code, ctype, b->base, b->len);
}

static bool authorized(ob_admin_t *a, const admin_req_t *req) {
  if (!a->cfg->admin.token) return true;
  const char *auth = req->authorization;
  size_t tl = strlen(a->cfg->admin.token);
  if (!auth || strncmp(auth, "Bearer ", 7) != 0 || strlen(auth + 7) != tl) return false;
  return CRYPTO_memcmp(auth + 7, a->cfg->admin.token, tl) == 0;
}

/* Admin bodies are objects of a few scalar members (each handler refuses
 * any other key or value), so more members than this is refused outright
 * and repeats are found by comparing pairs. */
#define MAX_BODY_KEYS 16

/* The first key of object j that appears twice, or NULL. */
static const char *repeated_key(const cJSON *j) {
  for (const cJSON *it = j->child; it; it = it->next)
    for (const cJSON *o = it->next; o; o = o->next)
      if (strcmp(it->string, o->string) == 0) return it->string;
  return NULL;
}

/* The JSON request body, parsed strictly: one object and nothing after it
 * but white space, no key twice (cJSON keeps both copies and would read the
 * first, where other parsers read the last). NULL (answered 400) otherwise. */
static cJSON *json_body(admin_req_t *req) {
  const char *p = req->body.base, *end = NULL;
  size_t n = req->body.len;
  cJSON *j = n ? cJSON_ParseWithLengthOpts(p, n, &end, false) : NULL;
  if (!cJSON_IsObject(j)) {
    cJSON_Delete(j);
    reply_error(req, 400, "expected a JSON object body");
    return NULL;
  }
  while (end < p + n && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')) end++;
  if (end < p + n) {
    char msg[96];
    snprintf(msg, sizeof msg, "unexpected data after the JSON object (at byte %zu of %zu)", (size_t)(end - p), n);
    cJSON_Delete(j);
    reply_error(req, 400, msg);
    return NULL;
  }
  if (cJSON_GetArraySize(j) > MAX_BODY_KEYS) {
    cJSON_Delete(j);
    reply_error(req, 400, "more keys than any admin body has");
    return NULL;
  }
  const char *dup = repeated_key(j);
  if (dup) {
    ob_buf_t m;
    ob_buf_init(&m);
    ob_buf_append_str(&m, "repeated key ");
    ob_buf_append_json_str(&m, ob_iov_str(dup));
    ob_buf_append(&m, "", 1);
    cJSON_Delete(j);
    reply_error(req, 400, m.base);
    ob_buf_dispose(&m);
    return NULL;
  }
  return j;
}

static bool weight_of(const cJSON *j, uint32_t *w, bool *present) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "weight");
  *present = v != NULL;
  if (!v) return true;
  if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 4294967295.0 || v->valuedouble != (double)(uint64_t)v->valuedouble)
    return false;
  *w = (uint32_t)v->valuedouble;
  return true;
}

static void put_tenant(ob_admin_t *a, admin_req_t *req, const char *name) {
  cJSON *j = json_body(req);
  if (!j) return;
  uint32_t w = 0;
  bool has_w;
  const cJSON *dis = cJSON_GetObjectItemCaseSensitive(j, "disabled");
  bool ok = weight_of(j, &w, &has_w) && (!dis || cJSON_IsBool(dis));
  for (const cJSON *it = j->child; ok && it; it = it->next)
    ok = strcmp(it->string, "weight") == 0 || strcmp(it->string, "disabled") == 0;
  if (!ok || (!has_w && !dis)) {
    cJSON_Delete(j);
    reply_error(req, 400, "expected {\"weight\": N >= 1} and/or {\"disabled\": true|false}");
    return;
  }
  ob_buf_t b;
  ob_buf_init(&b);
  if (!ob_proxy_write_tenant(a->proxy, name, &b)) {
    cJSON_Delete(j);
    ob_buf_dispose(&b);
    reply_error(req, 404, "no such tenant");
    return;
  }
  if (has_w) ob_proxy_set_tenant_weight(a->proxy, name, w);
  if (dis) ob_proxy_set_tenant_disabled(a->proxy, name, cJSON_IsTrue(dis));
  cJSON_Delete(j);
  ob_buf_reset(&b);
  ob_proxy_write_tenant(a->proxy, name, &b);
  reply_buf(req, 200, "application/json", &b);
  ob_buf_dispose(&b);
}

static void put_group(ob_admin_t *a, admin_req_t *req, const char *name) {
  cJSON *j = json_body(req);
  if (!j) return;
  uint32_t w = 0;
  bool has_w;
  bool ok = weight_of(j, &w, &has_w) && has_w && cJSON_GetArraySize(j) == 1;
  cJSON_Delete(j);
  if (!ok) {
    reply_error(req, 400, "expected {\"weight\": N >= 1}");
    return;
  }
  if (!ob_proxy_set_group_weight(a->proxy, name, w)) {
    reply_error(req, 404, "no such group");
    return;
  }
  char body[96];
  int n = snprintf(body, sizeof body, "{\"weight\":%u}", w);
  reply(req, 200, "application/json", body, (size_t)n);
}

/* The cache's scope of a tenant's entries ("t:<name>\0"); nothing for all. */
static void purge_scope(ob_buf_t *scope, const char *tenant) {
  if (!tenant) return;
  ob_buf_append_str(scope, "t:");
  ob_buf_append_str(scope, tenant);
  ob_buf_append(scope, "", 1);
}

/* Another replica purged: so does this one (cluster mode). */
static void on_fleet_purge(void *arg, const char *tenant) {
  ob_admin_t *a = arg;
  if (!a->cache) return;
  ob_buf_t scope;
  ob_buf_init(&scope);
  purge_scope(&scope, tenant);
  ob_cache_store_purge(a->cache, tenant ? scope.base : NULL);
  ob_buf_dispose(&scope);
}

static void purge(ob_admin_t *a, admin_req_t *req, const char *query) {
  if (!a->cache) {
    reply_error(req, 404, "no cache is configured (or it could not be opened)");
    return;
  }
  /* Nothing (every entry) or exactly one non-empty tenant=NAME. A query
   * evhttp cannot parse ("tenant=bob&x") comes back empty, and a misspelt
   * key is not found: both read as "no tenant" and wiped every tenant's
   * entries where one tenant's were asked for. */
  struct evkeyvalq q;
  TAILQ_INIT(&q);
  const char *tenant = NULL;
  /* A %00 would cut the decoded name short ("a%00b" purging tenant a). */
  bool ok = !query || (!strstr(query, "%00") && evhttp_parse_query_str(query, &q) == 0);
  for (struct evkeyval *kv = q.tqh_first; ok && kv; kv = kv->next.tqe_next) {
    ok = strcmp(kv->key, "tenant") == 0 && !tenant && kv->value[0];
    tenant = kv->value;
  }
  if (!ok) {
    evhttp_clear_headers(&q);
    reply_error(req, 400, "expected no query (purge everything) or exactly one ?tenant=NAME");
    return;
  }
  ob_buf_t scope;
  ob_buf_init(&scope);
  purge_scope(&scope, tenant);
  ob_cache_store_purge(a->cache, tenant ? scope.base : NULL);
  ob_log_info("admin: cache purge %s", tenant ? scope.base : "(all)");
  ob_proxy_cluster_purged(a->proxy, tenant); /* every other replica purges its own cache too */
  evhttp_clear_headers(&q);
  ob_buf_t b;
  ob_buf_init(&b);
  ob_buf_append_str(&b, "{\"purged\":");
  ob_buf_append_json_str(&b, ob_iov_str(tenant ? scope.base : "*"));
  ob_buf_append_str(&b, "}");
  reply_buf(req, 200, "application/json", &b);
  ob_buf_dispose(&b);
  ob_buf_dispose(&scope);
}

/* 200 {"reloaded":true}, or 400 with every reason (an invalid file changes
 * nothing). The reload itself runs here, on the loop, like SIGHUP's. */
static void do_reload(ob_admin_t *a, admin_req_t *req) {
  ob_buf_t why, b;
  ob_buf_init(&why);
  ob_buf_init(&b);
  if (a->reload && a->reload(a->reload_arg, &why)) {
    reply(req, 200, "application/json", "{\"reloaded\":true}\n", 18);
  } else {
    ob_buf_append_str(&b, "reload refused; the running configuration is unchanged:\n");
    ob_buf_append(&b, why.base, why.len);
    ob_buf_append(&b, "", 1);
    reply_error(req, 400, b.base);
  }
  ob_buf_dispose(&why);
  ob_buf_dispose(&b);
}

/* ---------------------------------------------------------------- fleet views */

/* Views that, in cluster mode, show the fleet's counts: asked of Redis
 * and answered when it replies (within cluster.op_timeout_ms, else with
 * this replica's own view). admin_http keeps req until the answer. */
enum { V_FAIRSHARE, V_CLUSTER, V_TENANT };

typedef struct fleet_ask {
  struct fleet_ask *next, *prev;
  ob_admin_t *a;            /* NULL once the admin API is gone (shutdown) */
  admin_req_t *req;
  int view;
  char *name;
} fleet_ask_t;

static void fleet_answer(ob_admin_t *a, admin_req_t *req, int view, const char *name, const ob_cluster_info_t *info,
                         const int64_t *budgets, size_t n) {
  ob_buf_t b;
  ob_buf_init(&b);
  ob_proxy_fleet_state_t fs;
  ob_proxy_fleet_state(a->proxy, &fs);
  if (view == V_FAIRSHARE) {
    if (fs.enabled) ob_proxy_write_fairshare_fleet(a->proxy, info, &b);
    else ob_proxy_write_fairshare(a->proxy, &b);
  } else if (view == V_CLUSTER) {
    ob_proxy_write_cluster(a->proxy, info, &b);
  } else if (!ob_proxy_write_tenant_fleet(a->proxy, name, budgets, n, &b)) {
    ob_buf_dispose(&b);
    reply_error(req, 404, "no such tenant");
    return;
  }
  reply_buf(req, 200, "application/json", &b);
  ob_buf_dispose(&b);
}

static void on_fleet_view(void *arg, const ob_cluster_info_t *info, const int64_t *budgets, size_t n) {
  fleet_ask_t *q = arg;
  if (q->a) {
    if (q->prev) q->prev->next = q->next;
    else q->a->asks = q->next;
    if (q->next) q->next->prev = q->prev;
    fleet_answer(q->a, q->req, q->view, q->name, info, budgets, n);
  }
  free(q->name);
  free(q);
}

static bool ask_fleet(ob_admin_t *a, admin_req_t *req, int view, const char *name) {
  fleet_ask_t *q = ob_xcalloc(1, sizeof *q);
  *q = (fleet_ask_t){.a = a, .req = req, .view = view, .name = name ? ob_xstrdup(name) : NULL};
  bool ok = view == V_TENANT ? ob_proxy_fleet_budgets(a->proxy, name, on_fleet_view, q)
                             : ob_proxy_fleet_info(a->proxy, on_fleet_view, q);
  if (!ok) {
    free(q->name);
    free(q);
    return false;
  }
  q->next = a->asks;
  if (a->asks) a->asks->prev = q;
  a->asks = q;
  return true;
}

/* Methods are case-sensitive (RFC 9110 9.1); HEAD is answered as GET. */
static bool is_get(const admin_req_t *req) { return strcmp(req->method, "GET") == 0 || req->is_head; }
static bool is_method(const admin_req_t *req, const char *m) { return strcmp(req->method, m) == 0; }

static bool open_path(const char *path) { return strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0; }

static void refuse_unauthorized(admin_req_t *req) {
  ob_buf_t b;
  ob_buf_init(&b);
  ob_http_error_json(&b, 401, "admin endpoints need Authorization: Bearer <admin.token>", NULL, NULL);
  ob_admin_http_reply(req, 401, "application/json", b.base, b.len, "WWW-Authenticate: Bearer\r\n");
  ob_buf_dispose(&b);
}

/* The token is checked at the head, so a request without it is refused
 * before a byte of its body is read. */
static bool on_head(admin_req_t *req, void *arg) {
  ob_admin_t *a = arg;
  if (open_path(req->path) || authorized(a, req)) return true;
  refuse_unauthorized(req);
  return false;
}

static void handle(admin_req_t *req, void *arg) {
  ob_admin_t *a = arg;
  const char *path = req->path;
  const char *query = req->query;
  if (strcmp(path, "/healthz") == 0) {
    reply(req, 200, "text/plain", "ok\n", 3);
  } else if (strcmp(path, "/readyz") == 0) {
    bool ready = ob_proxy_ready(a->proxy);
    reply(req, ready ? 200 : 503, "text/plain", ready ? "ready\n" : "no upstream endpoint is reachable\n",
          ready ? 6 : 34);
  } else if (!authorized(a, req)) { /* the token changed (reload) while the body came */
    refuse_unauthorized(req);
  } else if (strcmp(path, "/metrics") == 0 && is_get(req)) {
    ob_buf_t b;
    ob_buf_init(&b);
    ob_proxy_write_metrics(a->proxy, &b);
    if (a->cache) {
      ob_cache_stats_t st;
      ob_cache_store_stats(a->cache, &st);
      ob_buf_printf(&b,
                    "# HELP obleth_cache_entries Entries in the cache.\n# TYPE obleth_cache_entries gauge\n"
                    "obleth_cache_entries %llu\n"
                    "# HELP obleth_cache_bytes Bytes the cache's entries use.\n# TYPE obleth_cache_bytes gauge\n"
                    "obleth_cache_bytes %llu\n"
                    "# HELP obleth_cache_evictions_total Entries evicted to make room.\n"
                    "# TYPE obleth_cache_evictions_total counter\nobleth_cache_evictions_total %llu\n"
                    "# HELP obleth_cache_write_errors_total Cache writes that failed or were dropped.\n"
                    "# TYPE obleth_cache_write_errors_total counter\nobleth_cache_write_errors_total %llu\n",
                    (unsigned long long)st.entries, (unsigned long long)st.bytes_used, (unsigned long long)st.evicted,
                    (unsigned long long)st.write_errors);
    }
    reply_buf(req, 200, "text/plain; version=0.0.4", &b);
    ob_buf_dispose(&b);
  } else if (strcmp(path, "/admin/fairshare") == 0 && is_get(req)) {
    if (!ask_fleet(a, req, V_FAIRSHARE, NULL)) fleet_answer(a, req, V_FAIRSHARE, NULL, NULL, NULL, 0);
  } else if (strcmp(path, "/admin/cluster") == 0 && is_get(req)) {
    if (!ask_fleet(a, req, V_CLUSTER, NULL)) fleet_answer(a, req, V_CLUSTER, NULL, NULL, NULL, 0);
  } else if (strncmp(path, "/admin/tenants/", 15) == 0 && path[15]) {
    const char *name = path + 15;
    if (is_method(req, "PUT")) {
      put_tenant(a, req, name);
    } else if (is_get(req)) {
      if (!ask_fleet(a, req, V_TENANT, name)) fleet_answer(a, req, V_TENANT, name, NULL, NULL, 0);
    } else {
      reply_error(req, 405, "use GET or PUT");
    }
  } else if (strncmp(path, "/admin/groups/", 14) == 0 && path[14]) {
    if (is_method(req, "PUT")) put_group(a, req, path + 14);
    else reply_error(req, 405, "use PUT");
  } else if (strcmp(path, "/admin/reload") == 0) {
    if (is_method(req, "POST")) do_reload(a, req);
    else reply_error(req, 405, "use POST");
  } else if (strcmp(path, "/admin/cache/purge") == 0) {
    if (is_method(req, "POST")) purge(a, req, query);
    else reply_error(req, 405, "use POST");
  } else {
    reply_error(req, 404, "no such admin endpoint");
  }
}

ob_admin_t *ob_admin_create(struct event_base *base, ob_config_t *cfg, ob_proxy_t *proxy, ob_cache_store_t *cache,
                            ob_admin_reload_fn reload, void *arg) {
  ob_admin_t *a = ob_xcalloc(1, sizeof *a);
  a->reload = reload;
  a->reload_arg = arg;
  a->cfg = ob_config_acquire(cfg);
  a->proxy = proxy;
  a->cache = cache;
  static const ob_admin_http_cbs_t cbs = {.on_head = on_head, .on_request = handle};
  ob_proxy_set_purge_hook(proxy, on_fleet_purge, a);
  unsigned port = 0;
  a->http = ob_admin_http_create(base, cfg, &cbs, a, &port);
  if (!a->http) {
    ob_admin_destroy(a);
    return NULL;
  }
  /* The bound port, not the configured one: port 0 picks a free port, and
     the operator (or a test) reads it from this line. Worded unlike the
     client listeners' "listening on" lines so the two are never confused. */
  ob_log_info("admin API on %s:%u%s", cfg->admin.host, port, cfg->admin.token ? " (token required)" : "");
  return a;
}

void ob_admin_set_config(ob_admin_t *a, ob_config_t *cfg) {
  ob_config_t *old = a->cfg;
  a->cfg = ob_config_acquire(cfg);
  ob_config_release(old);
  ob_admin_http_set_limits(a->http, cfg);
}

void ob_admin_destroy(ob_admin_t *a) {
  if (!a) return;
  ob_proxy_set_purge_hook(a->proxy, NULL, NULL);
  for (fleet_ask_t *q = a->asks; q; q = q->next) q->a = NULL; /* their answers find nobody to tell */
  ob_admin_http_destroy(a->http);
  ob_config_release(a->cfg);
  free(a);
}
