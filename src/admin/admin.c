/*
 * admin.c: the admin endpoints. Small, rare requests: evhttp buffers them
 * whole, answers are built in one buffer. Every write is logged.
 */
#include "admin.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>

struct ob_admin {
  ob_config_t *cfg;
  ob_proxy_t *proxy;
  ob_cache_store_t *cache;
  struct evhttp *http;
  ob_admin_reload_fn reload;
  void *reload_arg;
};

static void reply(struct evhttp_request *req, int code, const char *ctype, const char *body, size_t len) {
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  evhttp_add_header(h, "Content-Type", ctype);
  struct evbuffer *b = evbuffer_new();
  evbuffer_add(b, body, len);
  evhttp_send_reply(req, code, NULL, b);
  evbuffer_free(b);
}

static void reply_error(struct evhttp_request *req, int code, const char *msg) {
  ob_buf_t b;
  ob_buf_init(&b);
  ob_http_error_json(&b, code, msg, NULL, NULL);
  reply(req, code, "application/json", b.base, b.len);
  ob_buf_dispose(&b);
}

static void reply_buf(struct evhttp_request *req, int code, const char *ctype, ob_buf_t *b) {
  reply(req, code, ctype, b->base, b->len);
}

static bool authorized(ob_admin_t *a, struct evhttp_request *req) {
  if (!a->cfg->admin.token) return true;
  const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
  size_t tl = strlen(a->cfg->admin.token);
  if (!auth || strncmp(auth, "Bearer ", 7) != 0 || strlen(auth + 7) != tl) return false;
  return CRYPTO_memcmp(auth + 7, a->cfg->admin.token, tl) == 0;
}

/* The JSON request body, parsed; NULL (answered 400) when it is not an object. */
static cJSON *json_body(struct evhttp_request *req) {
  struct evbuffer *in = evhttp_request_get_input_buffer(req);
  size_t n = evbuffer_get_length(in);
  cJSON *j = n && n < 65536 ? cJSON_ParseWithLength((const char *)evbuffer_pullup(in, -1), n) : NULL;
  if (!cJSON_IsObject(j)) {
    cJSON_Delete(j);
    reply_error(req, 400, "expected a JSON object body");
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

static void put_tenant(ob_admin_t *a, struct evhttp_request *req, const char *name) {
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

static void put_group(ob_admin_t *a, struct evhttp_request *req, const char *name) {
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

static void purge(ob_admin_t *a, struct evhttp_request *req, const char *query) {
  if (!a->cache) {
    reply_error(req, 404, "no cache is configured (or it could not be opened)");
    return;
  }
  struct evkeyvalq q;
  TAILQ_INIT(&q);
  if (query) evhttp_parse_query_str(query, &q);
  const char *tenant = evhttp_find_header(&q, "tenant");
  char scope[300];
  if (tenant) snprintf(scope, sizeof scope, "t:%s", tenant);
  ob_cache_store_purge(a->cache, tenant ? scope : NULL);
  ob_log_info("admin: cache purge %s", tenant ? scope : "(all)");
  evhttp_clear_headers(&q);
  char body[400];
  int n = snprintf(body, sizeof body, "{\"purged\":\"%s\"}", tenant ? scope : "*");
  reply(req, 200, "application/json", body, (size_t)n);
}

/* 200 {"reloaded":true}, or 400 with every reason (an invalid file changes
 * nothing). The reload itself runs here, on the loop, like SIGHUP's. */
static void do_reload(ob_admin_t *a, struct evhttp_request *req) {
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

static void handle(struct evhttp_request *req, void *arg) {
  ob_admin_t *a = arg;
  const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
  const char *raw = evhttp_uri_get_path(uri);
  char *path = raw ? evhttp_uridecode(raw, 0, NULL) : NULL;
  const char *query = evhttp_uri_get_query(uri);
  enum evhttp_cmd_type m = evhttp_request_get_command(req);
  if (!path) {
    reply_error(req, 400, "bad path");
    return;
  }
  if (strcmp(path, "/healthz") == 0) {
    reply(req, 200, "text/plain", "ok\n", 3);
  } else if (strcmp(path, "/readyz") == 0) {
    bool ready = ob_proxy_ready(a->proxy);
    reply(req, ready ? 200 : 503, "text/plain", ready ? "ready\n" : "no upstream endpoint is reachable\n",
          ready ? 6 : 34);
  } else if (!authorized(a, req)) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
    reply_error(req, 401, "admin endpoints need Authorization: Bearer <admin.token>");
  } else if (strcmp(path, "/metrics") == 0 && m == EVHTTP_REQ_GET) {
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
  } else if (strcmp(path, "/admin/fairshare") == 0 && m == EVHTTP_REQ_GET) {
    ob_buf_t b;
    ob_buf_init(&b);
    ob_proxy_write_fairshare(a->proxy, &b);
    reply_buf(req, 200, "application/json", &b);
    ob_buf_dispose(&b);
  } else if (strncmp(path, "/admin/tenants/", 15) == 0 && path[15]) {
    const char *name = path + 15;
    if (m == EVHTTP_REQ_PUT) {
      put_tenant(a, req, name);
    } else if (m == EVHTTP_REQ_GET) {
      ob_buf_t b;
      ob_buf_init(&b);
      if (ob_proxy_write_tenant(a->proxy, name, &b)) reply_buf(req, 200, "application/json", &b);
      else reply_error(req, 404, "no such tenant");
      ob_buf_dispose(&b);
    } else {
      reply_error(req, 405, "use GET or PUT");
    }
  } else if (strncmp(path, "/admin/groups/", 14) == 0 && path[14]) {
    if (m == EVHTTP_REQ_PUT) put_group(a, req, path + 14);
    else reply_error(req, 405, "use PUT");
  } else if (strcmp(path, "/admin/reload") == 0) {
    if (m == EVHTTP_REQ_POST) do_reload(a, req);
    else reply_error(req, 405, "use POST");
  } else if (strcmp(path, "/admin/cache/purge") == 0) {
    if (m == EVHTTP_REQ_POST) purge(a, req, query);
    else reply_error(req, 405, "use POST");
  } else {
    reply_error(req, 404, "no such admin endpoint");
  }
  free(path);
}

ob_admin_t *ob_admin_create(struct event_base *base, ob_config_t *cfg, ob_proxy_t *proxy, ob_cache_store_t *cache,
                            ob_admin_reload_fn reload, void *arg) {
  ob_admin_t *a = ob_xcalloc(1, sizeof *a);
  a->reload = reload;
  a->reload_arg = arg;
  a->cfg = ob_config_acquire(cfg);
  a->proxy = proxy;
  a->cache = cache;
  a->http = evhttp_new(base);
  evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_PUT | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
  evhttp_set_max_body_size(a->http, 65536);
  evhttp_set_gencb(a->http, handle, a);
  struct evhttp_bound_socket *bound = evhttp_bind_socket_with_handle(a->http, cfg->admin.host, cfg->admin.port);
  if (!bound) {
    ob_log_error("admin: cannot listen on %s", cfg->admin.address);
    ob_admin_destroy(a);
    return NULL;
  }
  /* The bound port, not the configured one: port 0 picks a free port, and
     the operator (or a test) reads it from this line. Worded unlike the
     client listeners' "listening on" lines so the two are never confused. */
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  unsigned port = cfg->admin.port;
  if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &sl) == 0)
    port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
  ob_log_info("admin API on %s:%u%s", cfg->admin.host, port, cfg->admin.token ? " (token required)" : "");
  return a;
}

void ob_admin_set_config(ob_admin_t *a, ob_config_t *cfg) {
  ob_config_t *old = a->cfg;
  a->cfg = ob_config_acquire(cfg);
  ob_config_release(old);
}

void ob_admin_destroy(ob_admin_t *a) {
  if (!a) return;
  if (a->http) evhttp_free(a->http);
  ob_config_release(a->cfg);
  free(a);
}
