/*
 * config.c: turns the JSON configuration text into an immutable, reference
 * counted ob_config_t snapshot, or into a list of "json.path: message" lines
 * naming every problem found. It owns the schema (docs/config.md is its
 * prose twin: change both together), the defaults and the error wording. It
 * must not touch sockets, files other than those ob_config_load reads (the
 * config itself, cluster.password_file, and the TLS files it checks are
 * readable), or global state of its own (cJSON still records its last error
 * position in a global, which nothing here reads); ob_config_parse touches
 * no file at all, and the cJSON tree lives only inside it.
 *
 * The parser is split along the schema's sections: config_walk.c (the
 * JSON path, the error list, the value helpers and walkers), config_net.c
 * (listeners, upstreams, limits, timeouts), config_tenants.c (groups,
 * tenants, keys, budgets) and this file (the rest, the top level, load and
 * free). config_int.h is what they share.
 *
 * How validation works: every object is walked child by child in document
 * order through ob_config_walk_object() (config_walk.c), which knows the
 * object's keys from a static field table, reports unknown and repeated keys, hands known ones to a
 * per-object callback and finally reports missing required keys. A JSON
 * path (`a.b[3].c`) is kept in one buffer that grows and shrinks as the walk
 * descends, so every error carries its exact location. Cross references
 * (route/model -> upstream, tenant -> group) are checked against the names
 * gathered by a pre-pass, so a route written before the upstreams still gets
 * its error in document order. Names and keys that may number in the
 * thousands (tenants, key ids, key digests) are checked for repeats through
 * small hash sets rather than by rescanning. A snapshot is only returned
 * when no error at all was found; otherwise the half-built one is freed.
 *
 * Secrets: a key given as plain "secret" is hashed with SHA-256 (OpenSSL)
 * as soon as it is read and only the digest is kept. Its text is wiped from
 * cJSON's node right away, and before the tree is freed every string value
 * left in it and the NUL-terminated copy of the input are wiped as well, so
 * no plaintext key or upstream credential survives in freed memory of ours.
 * (The caller's own buffer is the caller's to wipe; ob_config_load wipes
 * the one it reads the file into.) The Redis password of "cluster" must be
 * kept, as the upstream credentials are: it is wiped when the snapshot is
 * freed, never appears in an error line, and "redis" is stored with it
 * masked.
 */
#include "config_int.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* A configuration file is a few kilobytes; anything this large is a mistake
 * (or /dev/zero) and is refused before it is read into memory. */
#define MAX_FILE_BYTES ((size_t)16 << 20)

/* ---------------------------------------------------------------- route classes */

/*
 * The route classes the proxy knows. Adding one ("grpc", "mcp") is one line
 * here; the error message listing the valid names is built from this table.
 */
static const struct route_class {
  const char *name;
  bool needs_upstream; /* "upstream" is required on routes of this class */
} route_classes[] = {
  {"inference", false},
  {"passthrough", true},
  {"grpc", true},
  {"mcp", true},
};

#define NUM_ROUTE_CLASSES (sizeof route_classes / sizeof route_classes[0])

static const char *const log_levels[] = {"debug", "info", "warn", "error"};

/* ---------------------------------------------------------------- routes */

typedef struct route_state {
  size_t index;
  ob_config_route_t *r;
  const struct route_class *cls; /* NULL when absent or unknown */
  bool has_upstream;             /* key present, valid or not */
} route_state_t;

enum { R_PREFIX, R_CLASS, R_UPSTREAM, R_REWRITE, R_COST, R_TENANTS, R_CACHE };
static const field_t route_fields[] = {
  [R_PREFIX] = {.key = "prefix", .required = true},
  [R_CLASS] = {.key = "class", .required = true},
  [R_UPSTREAM] = {.key = "upstream"},
  [R_REWRITE] = {.key = "rewrite"},
  [R_COST] = {.key = "cost"},
  [R_TENANTS] = {.key = "tenants"},
  [R_CACHE] = {.key = "cache"},
};

enum { RC_TTL, RC_SCOPE };
static const field_t route_cache_fields[] = {
  [RC_TTL] = {.key = "ttl_s"},
  [RC_SCOPE] = {.key = "scope"},
};

static void on_route_cache_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_route_t *r = target;
  uint64_t n;
  if (idx == RC_TTL) {
    if (ob_config_want_uint(cx, v, 1, UINT32_MAX, &n)) r->cache_ttl_s = (uint32_t)n;
  } else {
    const char *s = cJSON_IsString(v) ? v->valuestring : NULL;
    if (s && (strcmp(s, "tenant") == 0 || strcmp(s, "group") == 0 || strcmp(s, "global") == 0))
      r->cache_scope = ob_xstrdup(s);
    else
      ob_config_errf(cx, "expected \"tenant\", \"group\" or \"global\"");
  }
}

static void on_route_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  route_state_t *st = target;
  switch (idx) {
  case R_PREFIX: {
    const char *s = ob_config_want_abs_path(cx, v);
    if (!s) return;
    for (size_t k = 0; k < st->index; k++) {
      if (cx->c->routes[k].prefix && strcmp(cx->c->routes[k].prefix, s) == 0) {
        char *q = ob_config_quote(s);
        ob_config_errf(cx, "duplicate prefix %s", q);
        free(q);
        return;
      }
    }
    st->r->prefix = ob_xstrdup(s);
    break;
  }
  case R_CLASS: {
    const char *s = ob_config_want_string(cx, v, false);
    if (!s) return;
    for (size_t k = 0; k < NUM_ROUTE_CLASSES; k++) {
      if (strcmp(route_classes[k].name, s) == 0) {
        st->cls = &route_classes[k];
        st->r->class_name = ob_xstrdup(s);
        return;
      }
    }
    ob_buf_t names;
    ob_buf_init(&names);
    for (size_t k = 0; k < NUM_ROUTE_CLASSES; k++) {
      if (k) ob_buf_append_str(&names, k + 1 == NUM_ROUTE_CLASSES ? " or " : ", ");
      ob_buf_append_str(&names, route_classes[k].name);
    }
    *ob_buf_reserve(&names, 1) = '\0';
    char *q = ob_config_quote(s);
    ob_config_errf(cx, "unknown route class %s (expected %s)", q, names.base);
    free(q);
    ob_buf_dispose(&names);
    break;
  }
  case R_UPSTREAM:
    st->has_upstream = true;
    st->r->upstream = ob_config_want_upstream_ref(cx, v);
    break;
  case R_REWRITE: {
    const char *s = ob_config_want_abs_path(cx, v);
    if (s) st->r->rewrite = ob_xstrdup(s);
    break;
  }
  case R_COST: {
    const char *s = cJSON_IsString(v) ? v->valuestring : NULL;
    if (s && (strcmp(s, "requests") == 0 || strcmp(s, "tokens") == 0))
      st->r->cost = ob_xstrdup(s);
    else
      ob_config_errf(cx, "expected \"requests\" or \"tokens\"");
    break;
  }
  case R_CACHE:
    if (cJSON_IsBool(v)) {
      st->r->cache = cJSON_IsTrue(v) ? 1 : 0;
    } else if (cJSON_IsObject(v)) {
      st->r->cache = 1;
      ob_config_walk_object(cx, v, route_cache_fields, NFIELDS(route_cache_fields), on_route_cache_field, st->r);
    } else {
      ob_config_errf(cx, "expected true, false or an object");
    }
    break;
  case R_TENANTS: {
    if (!cJSON_IsArray(v)) {
      ob_config_errf(cx, "expected an array of tenant names");
      return;
    }
    size_t n = ob_config_array_len(v), j = 0;
    st->r->tenants = ob_xcalloc(n ? n : 1, sizeof *st->r->tenants);
    st->r->has_tenants = true;
    for (const cJSON *it = v->child; it; it = it->next, j++) {
      size_t mark = ob_config_path_index(cx, j);
      const char *s = ob_config_want_string(cx, it, true);
      if (s && !ob_config_name_in(cx->tenant_names_pre, cx->num_tenant_names_pre, s)) {
        char *q = ob_config_quote(s);
        ob_config_errf(cx, "no tenant named %s", q);
        free(q);
      } else if (s) {
        st->r->tenants[st->r->num_tenants++] = ob_xstrdup(s);
      }
      ob_config_path_pop(cx, mark);
    }
    break;
  }
  }
}

static void on_route(ctx_t *cx, size_t i, const cJSON *obj, void *target) {
  route_state_t st = {.index = i, .r = &cx->c->routes[i]};
  st.r->cache = -1;
  ob_config_walk_object(cx, obj, route_fields, sizeof route_fields / sizeof route_fields[0], on_route_field, &st);
  if (st.cls && st.cls->needs_upstream && !st.has_upstream) ob_config_errf(cx, "missing required key \"upstream\"");
}

/* ---------------------------------------------------------------- models */

typedef struct model_state {
  size_t index;
  ob_config_model_t *m;
} model_state_t;

enum { M_NAME, M_UPSTREAM, M_UPSTREAM_MODEL };
static const field_t model_fields[] = {
  [M_NAME] = {.key = "name", .required = true},
  [M_UPSTREAM] = {.key = "upstream", .required = true},
  [M_UPSTREAM_MODEL] = {.key = "upstream_model"},
};

static void on_model_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  model_state_t *st = target;
  if (idx == M_NAME) {
    const char *s = ob_config_want_string(cx, v, true);
    if (!s) return;
    for (size_t k = 0; k < st->index; k++) {
      if (cx->c->models[k].name && strcmp(cx->c->models[k].name, s) == 0) {
        char *q = ob_config_quote(s);
        ob_config_errf(cx, "duplicate model name %s", q);
        free(q);
        return;
      }
    }
    st->m->name = ob_xstrdup(s);
  } else if (idx == M_UPSTREAM) {
    st->m->upstream = ob_config_want_upstream_ref(cx, v);
  } else if (idx == M_UPSTREAM_MODEL) {
    const char *s = ob_config_want_string(cx, v, true);
    if (s) st->m->upstream_model = ob_xstrdup(s);
  }
}

static void on_model(ctx_t *cx, size_t i, const cJSON *obj, void *target) {
  model_state_t st = {.index = i, .m = &cx->c->models[i]};
  ob_config_walk_object(cx, obj, model_fields, sizeof model_fields / sizeof model_fields[0], on_model_field, &st);
}

/* gRPC needs HTTP/2 end to end (trailers, streamed bodies both ways), so a
 * grpc route's upstream must speak it. Checked once every upstream is
 * known, whatever order the file lists them in. */
static void check_grpc_routes(ctx_t *cx) {
  ob_config_t *c = cx->c;
  for (size_t i = 0; i < c->num_routes; i++) {
    const ob_config_route_t *r = &c->routes[i];
    if (!r->class_name || strcmp(r->class_name, "grpc") != 0 || !r->upstream) continue;
    for (size_t k = 0; k < c->num_upstreams; k++) {
      const ob_config_upstream_t *u = &c->upstreams[k];
      if (!u->name || strcmp(u->name, r->upstream) != 0 || u->protocol != OB_PROTO_HTTP1) continue;
      size_t mark = ob_config_path_key(cx, "routes");
      ob_config_path_index(cx, i);
      ob_config_path_key(cx, "upstream");
      char *q = ob_config_quote(r->upstream);
      ob_config_errf(cx, "a grpc route needs an h2c or h2 upstream; %s speaks http1", q);
      free(q);
      ob_config_path_pop(cx, mark);
    }
  }
}
/* ---------------------------------------------------------------- admission */

enum { A_MODE, A_COST };
#define ADM(k, w, lo, hi, d) \
  {.key = #k, .off = offsetof(ob_config_admission_t, k), .wide = (w), .min = (lo), .max = (hi), .def = (d)}
static const field_t admission_fields[] = {
  [A_MODE] = {.key = "mode"},
  [A_COST] = {.key = "cost"},
  ADM(max_inflight, false, 0, UINT32_MAX, 0),
  ADM(max_queue, false, 0, UINT32_MAX, 10000),
  ADM(queue_timeout_ms, false, 1, UINT32_MAX, 30000),
  ADM(default_max_tokens, false, 1, UINT32_MAX, 1024),
  ADM(quantum, true, 0, MAX_EXACT_INT, 0),
};
#undef ADM

static void on_admission_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_admission_t *a = ((int_target_t *)target)->base;
  const char *s = cJSON_IsString(v) ? v->valuestring : "";
  if (idx == A_MODE) {
    if (strcmp(s, "hierarchical") == 0)
      a->mode = OB_ADMIT_HIERARCHICAL;
    else if (strcmp(s, "weighted") == 0)
      a->mode = OB_ADMIT_WEIGHTED;
    else if (strcmp(s, "fifo") == 0)
      a->mode = OB_ADMIT_FIFO;
    else
      ob_config_errf(cx, "expected \"hierarchical\", \"weighted\" or \"fifo\"");
  } else if (idx == A_COST) {
    if (strcmp(s, "tokens") == 0)
      a->cost = OB_COST_TOKENS;
    else if (strcmp(s, "requests") == 0)
      a->cost = OB_COST_REQUESTS;
    else
      ob_config_errf(cx, "expected \"tokens\" or \"requests\"");
  } else {
    ob_config_on_int_field(cx, idx, v, target);
  }
}

/* ---------------------------------------------------------------- top level */

enum { T_LISTENERS, T_UPSTREAMS, T_ROUTES, T_MODELS, T_GROUPS, T_TENANTS, T_ADMISSION, T_LIMITS, T_TIMEOUTS, T_LOG_LEVEL,
       T_GRPC, T_MCP, T_CACHE, T_ADMIN, T_METRICS, T_LEDGER, T_BUDGETS, T_WORKERS, T_CLUSTER };
static const field_t top_fields[] = {
  [T_LISTENERS] = {.key = "listeners", .required = true},
  [T_UPSTREAMS] = {.key = "upstreams", .required = true},
  [T_ROUTES] = {.key = "routes"},
  [T_MODELS] = {.key = "models"},
  [T_GROUPS] = {.key = "groups"},
  [T_TENANTS] = {.key = "tenants"},
  [T_ADMISSION] = {.key = "admission"},
  [T_LIMITS] = {.key = "limits"},
  [T_TIMEOUTS] = {.key = "timeouts"},
  [T_LOG_LEVEL] = {.key = "log_level"},
  [T_GRPC] = {.key = "grpc"},
  [T_MCP] = {.key = "mcp"},
  [T_CACHE] = {.key = "cache"},
  [T_ADMIN] = {.key = "admin"},
  [T_METRICS] = {.key = "metrics"},
  [T_LEDGER] = {.key = "ledger"},
  [T_BUDGETS] = {.key = "budgets"},
  [T_WORKERS] = {.key = "workers"},
  [T_CLUSTER] = {.key = "cluster"},
};

enum { CA_PATH, CA_DETERMINISTIC, CA_EXCLUDE, CA_FRESH_ID, CA_MAX_BYTES, CA_MAX_ENTRY, CA_TTL };
#define CAF(k, w, lo, hi, d) {.key = #k, .off = offsetof(ob_config_cache_t, k), .wide = (w), .min = (lo), .max = (hi), .def = (d)}
static const field_t cache_fields[] = {
  [CA_PATH] = {.key = "path"},
  [CA_DETERMINISTIC] = {.key = "deterministic_only"},
  [CA_EXCLUDE] = {.key = "exclude_fields"},
  [CA_FRESH_ID] = {.key = "fresh_id"},
  [CA_MAX_BYTES] = CAF(max_bytes, true, 1u << 20, MAX_EXACT_INT, 1u << 30),
  [CA_MAX_ENTRY] = CAF(max_entry_bytes, true, 1, MAX_EXACT_INT, 8u << 20),
  [CA_TTL] = CAF(ttl_s, false, 1, UINT32_MAX, 3600),
};
#undef CAF

static void on_cache_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_cache_t *c = target;
  switch (idx) {
  case CA_PATH: {
    char *p = ob_config_want_file(cx, v);
    if (p) free(c->path), c->path = p;
    break;
  }
  case CA_DETERMINISTIC: ob_config_want_bool(cx, v, &c->deterministic_only); break;
  case CA_FRESH_ID: ob_config_want_bool(cx, v, &c->fresh_id); break;
  case CA_EXCLUDE: {
    if (!cJSON_IsArray(v)) {
      ob_config_errf(cx, "expected an array of field names");
      return;
    }
    c->exclude_fields = ob_xcalloc(ob_config_array_len(v) + 1, sizeof *c->exclude_fields);
    size_t j = 0;
    for (const cJSON *it = v->child; it; it = it->next, j++) {
      size_t mark = ob_config_path_index(cx, j);
      const char *s = ob_config_want_string(cx, it, true);
      if (s) c->exclude_fields[c->num_exclude_fields++] = ob_xstrdup(s);
      ob_config_path_pop(cx, mark);
    }
    break;
  }
  default: ob_config_on_int_field(cx, idx, v, &(int_target_t){c, cache_fields}); break;
  }
}

enum { LG_PATH, LG_MAX_BYTES, LG_MAX_FILES, LG_BUFFER };
#define LGF(k, w, lo, hi, d) {.key = #k, .off = offsetof(ob_config_ledger_t, k), .wide = (w), .min = (lo), .max = (hi), .def = (d)}
static const field_t ledger_fields[] = {
  [LG_PATH] = {.key = "path", .required = true},
  [LG_MAX_BYTES] = LGF(max_bytes, true, 0, MAX_EXACT_INT, 100u << 20),
  [LG_MAX_FILES] = LGF(max_files, false, 1, 1000, 5),
  [LG_BUFFER] = LGF(buffer_bytes, true, 4096, MAX_EXACT_INT, 8u << 20),
};
#undef LGF

static void on_ledger_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_ledger_t *l = target;
  if (idx == LG_PATH) {
    char *p = ob_config_want_file(cx, v);
    if (p) free(l->path), l->path = p;
  } else {
    ob_config_on_int_field(cx, idx, v, &(int_target_t){l, ledger_fields});
  }
}
enum { AD_ADDRESS, AD_TOKEN };
#define ADF(k, w, lo, hi, d) {.key = #k, .off = offsetof(ob_config_admin_t, k), .wide = (w), .min = (lo), .max = (hi), .def = (d)}
/* The limits follow nginx's defaults for a small API (client_max_body_size
 * 1m, a 16 KiB head as HAProxy's tune.bufsize), with nginx's 60 s header
 * timeout shortened: an admin request is one small head from a script. */
static const field_t admin_fields[] = {
  [AD_ADDRESS] = {.key = "address"},
  [AD_TOKEN] = {.key = "token"},
  ADF(max_header_bytes, false, 1024, 1u << 20, 16u << 10),
  ADF(max_body_bytes, true, 1024, 1u << 30, 1u << 20),
  ADF(header_timeout_ms, false, 1, 3600000, 10000),
  ADF(body_timeout_ms, false, 1, 3600000, 10000),
  ADF(max_connections, false, 1, 65536, 64),
};
#undef ADF

static bool is_loopback(const char *host) {
  return strcmp(host, "localhost") == 0 || strcmp(host, "::1") == 0 || strncmp(host, "127.", 4) == 0;
}

static void on_admin_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_admin_t *a = target;
  if (idx != AD_ADDRESS && idx != AD_TOKEN) {
    ob_config_on_int_field(cx, idx, v, &(int_target_t){a, admin_fields});
    return;
  }
  const char *s = ob_config_want_string(cx, v, true);
  if (!s) return;
  if (idx == AD_TOKEN) {
    free(a->token);
    a->token = ob_xstrdup(s);
    return;
  }
  char *host = NULL;
  long port;
  const char *why = ob_config_split_host_port(s, strlen(s), &host, &port);
  if (!why && port < 0) why = "missing port; expected HOST:PORT";
  if (why) {
    free(host);
    char *q = ob_config_quote(s);
    ob_config_errf(cx, "invalid address %s (%s)", q, why);
    free(q);
    return;
  }
  free(a->address), free(a->host);
  a->address = ob_xstrdup(s);
  a->host = host;
  a->port = (uint16_t)port;
  a->loopback = is_loopback(host);
}

enum { ME_PER_TENANT, ME_MAX_TENANTS };
static const field_t metrics_fields[] = {
  [ME_PER_TENANT] = {.key = "per_tenant"},
  [ME_MAX_TENANTS] = {.key = "max_tenants", .off = offsetof(ob_config_metrics_t, max_tenants), .min = 0,
                      .max = UINT32_MAX, .def = 100},
};

static void on_metrics_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_metrics_t *m = target;
  if (idx == ME_PER_TENANT) ob_config_want_bool(cx, v, &m->per_tenant);
  else ob_config_on_int_field(cx, idx, v, &(int_target_t){m, metrics_fields});
}

enum { MC_SESSION_SECRET };
static const field_t mcp_fields[] = {
  [MC_SESSION_SECRET] = {.key = "session_secret"},
};

static void on_mcp_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_t *c = target;
  if (idx != MC_SESSION_SECRET) return;
  const char *s = ob_config_want_string(cx, v, true);
  if (s) {
    free(c->mcp_session_secret);
    c->mcp_session_secret = ob_xstrdup(s);
  }
}

enum { G_HEALTH };
static const field_t grpc_fields[] = {
  [G_HEALTH] = {.key = "health"},
};

static void on_grpc_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_t *c = target;
  if (idx == G_HEALTH) ob_config_want_bool(cx, v, &c->grpc_health);
}

/* ---------------------------------------------------------------- cluster */

/*
 * "cluster": the one Redis the replicas share (docs/cluster.md). Its password
 * is a secret like a key's: no error line ever shows the URL's text (a bad
 * URL gets its reason only), "redis" is kept with the password replaced by
 * "***" so it can be logged, and every copy is wiped when freed.
 * "password_file" is only resolved here; ob_config_load reads it, so that
 * ob_config_parse stays pure (no file system, as the fuzzer needs).
 */
#define REDIS_DEFAULT_PORT 6379
#define REDIS_MAX_DB 15
#define CLUSTER_NS_MAX 64
#define CLUSTER_REPLICA_MAX 128
/* Room for a socket path: sun_path holds it with its NUL. */
#define UNIX_PATH_ROOM sizeof(((struct sockaddr_un *)0)->sun_path)
_Static_assert(UNIX_PATH_ROOM == 108, "the message about long socket paths says 107 bytes");
/* The password file's first line must end within this many bytes. */
#define PASSWORD_LINE_MAX 65536

static void free_secret(char *s) {
  if (s) OPENSSL_cleanse(s, strlen(s));
  free(s);
}

/* The n bytes at s with every %XX decoded, as a new string; NULL when an
 * escape is malformed or decodes to a NUL byte (which would cut it short).
 * Nothing is left behind on failure: the result may be a password. */
static char *percent_decode(const char *s, size_t n) {
  char *out = ob_xmalloc(n + 1);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '%') {
      out[o++] = s[i];
      continue;
    }
    int hi = i + 2 < n ? ob_config_hex_value((unsigned char)s[i + 1]) : -1;
    int lo = hi >= 0 ? ob_config_hex_value((unsigned char)s[i + 2]) : -1;
    if (lo < 0 || (hi | lo) == 0) {
      OPENSSL_cleanse(out, n + 1);
      free(out);
      return NULL;
    }
    out[o++] = (char)(hi << 4 | lo);
    i += 2;
  }
  out[o] = '\0';
  return out;
}

/* What "redis" gives, before it is moved into the snapshot. */
typedef struct redis_url {
  char *redacted, *host, *unix_path, *username, *password;
  uint16_t port;
  uint32_t db;
} redis_url_t;

static void redis_url_dispose(redis_url_t *u) {
  free(u->redacted), free(u->host), free(u->unix_path), free(u->username);
  free_secret(u->password);
  *u = (redis_url_t){0};
}

/*
 * "redis://[[user]:password@]host[:port][/db]" or "unix:PATH". The user info
 * ends at the last "@" before the first "/", and the user name at its first
 * ":", so only "/" and "%" must be %-encoded in a password. Returns a static
 * reason on failure (never the text, which may hold the password); u is the
 * caller's to dispose either way.
 */
static const char *parse_redis_url(ctx_t *cx, const char *s, redis_url_t *u) {
  if (strncasecmp(s, "unix:", 5) == 0) {
    const char *p = s + 5;
    if (!*p) return "unix: needs a socket path";
    if (strchr(p, '?')) return "a unix: URL takes no query (\"?db=N\" is not supported)";
    u->unix_path = ob_config_resolve_path(cx, p);
    if (strlen(u->unix_path) >= UNIX_PATH_ROOM) return "unix socket path too long (at most 107 bytes once resolved)";
    u->redacted = ob_xstrdup(s);
    return NULL;
  }
  if (strncasecmp(s, "redis://", 8) != 0) return "not a redis:// or unix: URL";
  const char *auth = s + 8;
  size_t alen = strcspn(auth, "/");
  const char *at = memrchr(auth, '@', alen);
  const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
  if (at) {
    size_t ulen = colon ? (size_t)(colon - auth) : (size_t)(at - auth);
    if (ulen == 0 && !colon) return "invalid redis:// URL (empty user name before \"@\")";
    if (ulen && !(u->username = percent_decode(auth, ulen)))
      return "invalid redis:// URL (bad %-escape in the user name)";
    if (colon && colon + 1 == at) return "invalid redis:// URL (empty password)";
    if (colon && !(u->password = percent_decode(colon + 1, (size_t)(at - colon - 1))))
      return "invalid redis:// URL (bad %-escape in the password)";
  }
  const char *hp = at ? at + 1 : auth;
  long port;
  const char *why = ob_config_split_host_port(hp, (size_t)(auth + alen - hp), &u->host, &port);
  if (why) {
    if (strncmp(why, "port ", 5) == 0) return "invalid redis:// URL (port must be 1..65535)";
    if (strcmp(why, "missing host") == 0) return "invalid redis:// URL (missing host)";
    if (strncmp(why, "IPv6", 4) == 0) return "invalid redis:// URL (IPv6 addresses need brackets, as in [::1]:6379)";
    return "invalid redis:// URL (bad host)";
  }
  if (port == 0) return "invalid redis:// URL (port must be 1..65535)";
  u->port = (uint16_t)(port > 0 ? port : REDIS_DEFAULT_PORT);
  const char *db = auth + alen; /* "", "/" or "/N" */
  if (db[0] && db[1]) {
    const char *d = db + 1;
    size_t dlen = strlen(d);
    bool digits = dlen <= 2 && d[0] >= '0' && d[0] <= '9' && (dlen == 1 || (d[1] >= '0' && d[1] <= '9'));
    uint32_t n = digits ? (uint32_t)strtoul(d, NULL, 10) : REDIS_MAX_DB + 1;
    if (n > REDIS_MAX_DB) return "invalid redis:// URL (db must be 0..15)";
    u->db = n;
  }
  if (u->password) { /* as written, the password's bytes replaced */
    ob_buf_t b;
    ob_buf_init(&b);
    ob_buf_append(&b, s, (size_t)(colon + 1 - s));
    ob_buf_append_str(&b, "***");
    ob_buf_append_str(&b, at);
    *ob_buf_reserve(&b, 1) = '\0';
    u->redacted = b.base;
  } else {
    u->redacted = ob_xstrdup(s);
  }
  return NULL;
}

enum { CL_REDIS, CL_PASSWORD_FILE, CL_NAMESPACE, CL_REPLICA_ID, CL_LEASE_MS, CL_OP_TIMEOUT_MS, CL_FALLBACK };
#define CLF(k, lo, hi, d) {.key = #k, .off = offsetof(ob_config_cluster_t, k), .min = (lo), .max = (hi), .def = (d)}
static const field_t cluster_fields[] = {
  [CL_REDIS] = {.key = "redis", .required = true},
  [CL_PASSWORD_FILE] = {.key = "password_file"},
  [CL_NAMESPACE] = {.key = "namespace"},
  [CL_REPLICA_ID] = {.key = "replica_id"},
  [CL_LEASE_MS] = CLF(lease_ms, 300, 600000, 3000),
  [CL_OP_TIMEOUT_MS] = CLF(op_timeout_ms, 10, 60000, 200),
  [CL_FALLBACK] = {.key = "fallback"},
};
#undef CLF

typedef struct cluster_state {
  ob_config_cluster_t *cl;
  bool ints_ok;         /* lease_ms and op_timeout_ms hold valid values, given or default */
  bool op_timeout_given;
} cluster_state_t;

/* Redis key prefixes: no white space, quotes or braces (a "{" would change
 * which slot a Redis Cluster hashes the key to). */
static bool valid_namespace(const char *s) {
  size_t n = strlen(s);
  if (n < 1 || n > CLUSTER_NS_MAX) return false;
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' ||
          ch == ':' || ch == '-'))
      return false;
  }
  return true;
}

/* Printable ASCII without spaces: it shows up in Redis values, logs and
 * metrics as one token. */
static bool valid_replica_id(const char *s) {
  size_t n = strlen(s);
  if (n < 1 || n > CLUSTER_REPLICA_MAX) return false;
  for (; *s; s++)
    if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f) return false;
  return true;
}

/* "<hostname>:<pid>". Whatever a replica_id may not hold in the host name
 * becomes "_" and a long one is cut, so the default is always valid. */
static char *default_replica_id(void) {
  char host[256];
  if (gethostname(host, sizeof host) != 0 || !host[0]) snprintf(host, sizeof host, "localhost");
  host[CLUSTER_REPLICA_MAX - 24] = '\0'; /* room for ":" and any pid */
  for (char *p = host; *p; p++)
    if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) *p = '_';
  ob_buf_t b;
  ob_buf_init(&b);
  ob_buf_printf(&b, "%s:%ld", host, (long)getpid());
  *ob_buf_reserve(&b, 1) = '\0';
  return b.base;
}

static void on_cluster_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  cluster_state_t *st = target;
  ob_config_cluster_t *cl = st->cl;
  switch (idx) {
  case CL_REDIS: {
    const char *s = ob_config_want_string(cx, v, true);
    if (!s) return;
    redis_url_t u = {0};
    const char *why = parse_redis_url(cx, s, &u);
    if (why) {
      ob_config_errf(cx, "%s", why);
      redis_url_dispose(&u);
      return;
    }
    cl->redis = u.redacted, cl->host = u.host, cl->port = u.port, cl->unix_path = u.unix_path, cl->db = u.db;
    cl->username = u.username, cl->password = u.password;
    break;
  }
  case CL_PASSWORD_FILE:
    cl->password_file = ob_config_want_file(cx, v);
    break;
  case CL_NAMESPACE:
  case CL_REPLICA_ID: {
    const char *s = ob_config_want_string(cx, v, false);
    if (!s) return;
    bool ns = idx == CL_NAMESPACE;
    if (ns ? valid_namespace(s) : valid_replica_id(s)) {
      *(ns ? &cl->ns : &cl->replica_id) = ob_xstrdup(s);
      return;
    }
    char *q = ob_config_quote(s);
    if (ns)
      ob_config_errf(cx, "invalid namespace %s (use 1..64 letters, digits, \"_\", \".\", \":\" and \"-\")", q);
    else
      ob_config_errf(cx, "invalid replica_id %s (use 1..128 printable ASCII characters, no spaces)", q);
    free(q);
    break;
  }
  case CL_FALLBACK: {
    const char *s = cJSON_IsString(v) ? v->valuestring : "";
    if (strcmp(s, "split") == 0)
      cl->fallback = OB_CLUSTER_SPLIT;
    else if (strcmp(s, "local") == 0)
      cl->fallback = OB_CLUSTER_LOCAL;
    else
      ob_config_errf(cx, "expected \"split\" or \"local\"");
    break;
  }
  default: {
    uint64_t n;
    const field_t *f = &cluster_fields[idx];
    if (idx == CL_OP_TIMEOUT_MS) st->op_timeout_given = true;
    if (ob_config_want_uint(cx, v, f->min, f->max, &n))
      ob_config_set_int(cl, f, n);
    else
      st->ints_ok = false;
    break;
  }
  }
}

static void on_cluster(ctx_t *cx, const cJSON *obj) {
  ob_config_cluster_t *cl = &cx->c->cluster;
  cluster_state_t st = {.cl = cl, .ints_ok = true};
  cl->enabled = true;
  cl->fallback = OB_CLUSTER_SPLIT;
  ob_config_apply_defaults(cl, cluster_fields, NFIELDS(cluster_fields));
  uint32_t seen = ob_config_walk_object(cx, obj, cluster_fields, NFIELDS(cluster_fields), on_cluster_field, &st);
  if (!cl->ns) cl->ns = ob_xstrdup("obleth");
  if (!cl->replica_id) cl->replica_id = default_replica_id();
  if (st.ints_ok && cl->op_timeout_ms > cl->lease_ms / 3) {
    size_t mark = ob_config_path_key(cx, "op_timeout_ms");
    ob_config_errf(cx,
         "must be at most lease_ms / 3 = %u (it is %u%s), so that a Redis call that times out still leaves time to "
         "renew the lease before it expires",
         (unsigned)(cl->lease_ms / 3), (unsigned)cl->op_timeout_ms, st.op_timeout_given ? "" : ", the default");
    ob_config_path_pop(cx, mark);
  }
  bool has_file = seen & (1u << CL_PASSWORD_FILE);
  if (cl->password && has_file)
    ob_config_errf(cx, "give the password in \"redis\" or in \"password_file\", not both");
  else if (cl->username && !cl->password && !has_file)
    ob_config_errf(cx, "the user name in \"redis\" needs a password (in the URL or in \"password_file\")");
}

#define ALLOC_ITEMS(arr, num, n) ((num) = (n), (arr) = (n) ? ob_xcalloc((n), sizeof *(arr)) : NULL)

_Static_assert(NFIELDS(top_fields) <= 32 && NFIELDS(admission_fields) <= 32, "walk_object tracks keys in a 32-bit set");

static void on_top_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_t *c = cx->c;
  size_t n;
  /* The sections that are objects; the lists and log_level check their own shape. */
  bool object = idx == T_ADMISSION || idx == T_LIMITS || idx == T_TIMEOUTS || idx == T_GRPC || idx == T_MCP ||
                idx == T_LEDGER || idx == T_BUDGETS || idx == T_ADMIN || idx == T_METRICS || idx == T_CACHE ||
                idx == T_CLUSTER;
  if (object && !cJSON_IsObject(v)) {
    ob_config_errf(cx, "expected an object");
    return;
  }
  switch (idx) {
  case T_LISTENERS:
    if (!ob_config_want_list(cx, v, true, &n)) return;
    ALLOC_ITEMS(c->net.listeners, c->net.num_listeners, n);
    ob_config_walk_array(cx, v, ob_config_on_listener, NULL);
    break;
  case T_UPSTREAMS:
    if (!ob_config_want_list(cx, v, false, &n)) return;
    ALLOC_ITEMS(c->upstreams, c->num_upstreams, n);
    ob_config_walk_array(cx, v, ob_config_on_upstream, NULL);
    break;
  case T_ROUTES:
    if (!ob_config_want_list(cx, v, false, &n)) return;
    ALLOC_ITEMS(c->routes, c->num_routes, n);
    ob_config_walk_array(cx, v, on_route, NULL);
    break;
  case T_MODELS:
    if (!ob_config_want_list(cx, v, false, &n)) return;
    ALLOC_ITEMS(c->models, c->num_models, n);
    ob_config_walk_array(cx, v, on_model, NULL);
    break;
  case T_GROUPS:
    if (!ob_config_want_list(cx, v, false, &n)) return;
    ALLOC_ITEMS(c->groups, c->num_groups, n);
    ob_config_walk_array(cx, v, ob_config_on_group, NULL);
    break;
  case T_TENANTS:
    if (!ob_config_want_list(cx, v, false, &n)) return;
    ALLOC_ITEMS(c->tenants, c->num_tenants, n);
    ob_config_walk_array(cx, v, ob_config_on_tenant, NULL);
    break;
  case T_ADMISSION:
  case T_LIMITS:
  case T_TIMEOUTS:
    if (idx == T_ADMISSION)
      ob_config_walk_object(cx, v, admission_fields, NFIELDS(admission_fields), on_admission_field,
                  &(int_target_t){&c->admission, admission_fields});
    else if (idx == T_LIMITS)
      ob_config_walk_object(cx, v, ob_config_limit_fields, NFIELDS(ob_config_limit_fields), ob_config_on_int_field,
                  &(int_target_t){&c->net.limits, ob_config_limit_fields});
    else
      ob_config_walk_object(cx, v, ob_config_timeout_fields, NFIELDS(ob_config_timeout_fields), ob_config_on_int_field,
                  &(int_target_t){&c->net.timeouts, ob_config_timeout_fields});
    break;
  case T_GRPC:
    ob_config_walk_object(cx, v, grpc_fields, NFIELDS(grpc_fields), on_grpc_field, c);
    break;
  case T_MCP:
    ob_config_walk_object(cx, v, mcp_fields, NFIELDS(mcp_fields), on_mcp_field, c);
    break;
  case T_LEDGER:
    c->ledger.enabled = true;
    ob_config_apply_defaults(&c->ledger, ledger_fields, NFIELDS(ledger_fields));
    ob_config_walk_object(cx, v, ledger_fields, NFIELDS(ledger_fields), on_ledger_field, &c->ledger);
    break;
  case T_BUDGETS:
    ob_config_walk_object(cx, v, ob_config_budgets_fields, NFIELDS(ob_config_budgets_fields), ob_config_on_budgets_field, &c->budgets);
    break;
  case T_ADMIN:
  case T_METRICS:
    if (idx == T_METRICS) {
      ob_config_walk_object(cx, v, metrics_fields, NFIELDS(metrics_fields), on_metrics_field, &c->metrics);
      break;
    }
    c->admin.enabled = true;
    ob_config_walk_object(cx, v, admin_fields, NFIELDS(admin_fields), on_admin_field, &c->admin);
    if (!c->admin.loopback && !c->admin.token)
      ob_config_errf(cx, "a non-loopback admin address (%s) needs a \"token\"", c->admin.address ? c->admin.address : "?");
    break;
  case T_CACHE:
    c->cache.enabled = true;
    ob_config_apply_defaults(&c->cache, cache_fields, NFIELDS(cache_fields));
    ob_config_walk_object(cx, v, cache_fields, NFIELDS(cache_fields), on_cache_field, &c->cache);
    if (!c->cache.path) {
      cJSON def = {.type = cJSON_String, .valuestring = "obleth-cache.mdb"};
      c->cache.path = ob_config_want_file(cx, &def);
    }
    break;
  case T_CLUSTER:
    on_cluster(cx, v);
    break;
  case T_WORKERS: {
    uint64_t w;
    if (ob_config_want_uint(cx, v, 1, OB_CONFIG_MAX_WORKERS, &w)) c->net.workers = (uint32_t)w;
    break;
  }
  case T_LOG_LEVEL: {
    const char *s = cJSON_IsString(v) ? v->valuestring : NULL;
    for (size_t k = 0; s && k < NFIELDS(log_levels); k++) {
      if (strcmp(s, log_levels[k]) == 0) {
        free(c->log_level);
        c->log_level = ob_xstrdup(s);
        return;
      }
    }
    ob_config_errf(cx, "expected \"debug\", \"info\", \"warn\" or \"error\"");
    break;
  }
  }
}

/* Names as written in the list under key (first such key, first "name" key
 * of each element), so references can be checked wherever they appear:
 * upstreams for routes and models, groups for tenants. The names are
 * borrowed from the tree; the array is the caller's to free. */
static const char **collect_names(const cJSON *root, const char *key, size_t *num) {
  const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, key);
  *num = 0;
  if (!cJSON_IsArray(list) || !list->child) return NULL;
  const char **names = ob_xcalloc(ob_config_array_len(list), sizeof *names);
  for (const cJSON *it = list->child; it; it = it->next) {
    const cJSON *name = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "name") : NULL;
    if (cJSON_IsString(name) && name->valuestring) names[(*num)++] = name->valuestring;
  }
  return names;
}

/* Wipe every string value of the tree before it is freed: key secrets are
 * already wiped where they were hashed, but a repeated "secret" key, an
 * upstream credential or a secret in a misplaced object would otherwise stay
 * readable in freed memory. Depth is bounded by cJSON's nesting limit. */
static void wipe_strings(cJSON *node) {
  for (; node; node = node->next) {
    if (cJSON_IsString(node) && node->valuestring) OPENSSL_cleanse(node->valuestring, strlen(node->valuestring));
    wipe_strings(node->child);
  }
}

/*
 * What cJSON accepts but a configuration must not contain: NUL bytes and raw
 * control characters in strings (RFC 8259 forbids them; cJSON lets them
 * through) and the \u0000 escape, which would silently cut a C string short.
 * Returns the offset of the first offender or SIZE_MAX; *is_nul_escape
 * tells the escape apart from invalid bytes.
 */
static size_t prescan(const char *s, size_t n, bool *is_nul_escape) {
  bool in_str = false;
  *is_nul_escape = false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == 0) return i;
    if (!in_str) {
      in_str = ch == '"';
    } else if (ch == '"') {
      in_str = false;
    } else if (ch < 0x20) {
      return i;
    } else if (ch == '\\' && i + 1 < n) {
      if (n - i >= 6 && memcmp(s + i + 1, "u0000", 5) == 0) {
        *is_nul_escape = true;
        return i;
      }
      if (s[i + 1] == 0) return i + 1;
      i++;
    }
  }
  return SIZE_MAX;
}

/* c->net.upstreams: what net reads of each upstream, borrowed from
 * c->upstreams (the proxy's side of the same entries). */
static void net_view(ob_config_t *c) {
  c->net.num_upstreams = c->num_upstreams;
  c->net.upstreams = ob_xcalloc(c->num_upstreams ? c->num_upstreams : 1, sizeof *c->net.upstreams);
  for (size_t i = 0; i < c->num_upstreams; i++) {
    const ob_config_upstream_t *u = &c->upstreams[i];
    c->net.upstreams[i] = (ob_net_upstream_conf_t){.name = u->name, .endpoints = u->endpoints,
      .num_endpoints = u->num_endpoints, .protocol = u->protocol, .tls_verify = u->tls_verify, .tls_ca = u->tls_ca};
  }
}

static void free_config(ob_config_t *c) {
  for (size_t i = 0; i < c->net.num_listeners; i++) {
    ob_config_listener_t *l = &c->net.listeners[i];
    free(l->address), free(l->host), free(l->tls_cert), free(l->tls_key);
  }
  free(c->net.listeners);
  for (size_t i = 0; i < c->num_upstreams; i++) {
    ob_config_upstream_t *u = &c->upstreams[i];
    for (size_t j = 0; j < u->num_endpoints; j++) {
      ob_config_endpoint_t *ep = &u->endpoints[j];
      free(ep->url), free(ep->host), free(ep->authority), free(ep->base_path);
    }
    free(u->endpoints), free(u->name), free(u->tls_ca), free(u->capacity.metrics_path);
    if (u->credential_value) OPENSSL_cleanse(u->credential_value, strlen(u->credential_value));
    free(u->credential_header), free(u->credential_value);
  }
  free(c->upstreams);
  free(c->net.upstreams);
  for (size_t i = 0; i < c->num_routes; i++) {
    ob_config_route_t *r = &c->routes[i];
    free(r->prefix), free(r->class_name), free(r->upstream), free(r->rewrite), free(r->cost);
    for (size_t j = 0; j < r->num_tenants; j++) free(r->tenants[j]);
    free(r->tenants);
    free(r->cache_scope);
  }
  free(c->routes);
  for (size_t i = 0; i < c->num_models; i++) {
    ob_config_model_t *m = &c->models[i];
    free(m->name), free(m->upstream), free(m->upstream_model);
  }
  free(c->models);
  for (size_t i = 0; i < c->num_groups; i++) free(c->groups[i].name);
  free(c->groups);
  for (size_t i = 0; i < c->num_tenants; i++) {
    ob_config_tenant_t *t = &c->tenants[i];
    for (size_t j = 0; j < t->num_models; j++) free(t->models[j]);
    for (size_t j = 0; j < t->num_keys; j++) free(t->keys[j].id);
    free(t->models), free(t->keys), free(t->name), free(t->group);
    for (size_t j = 0; j < t->num_mcp_tools; j++) {
      for (size_t k = 0; k < t->mcp_tools[j].num_tools; k++) free(t->mcp_tools[j].tools[k]);
      free(t->mcp_tools[j].tools), free(t->mcp_tools[j].upstream);
    }
    free(t->mcp_tools);
  }
  free(c->tenants);
  free(c->ledger.path);
  free(c->budgets.path);
  free(c->admin.address), free(c->admin.host);
  if (c->admin.token) OPENSSL_cleanse(c->admin.token, strlen(c->admin.token));
  free(c->admin.token);
  free(c->cache.path);
  for (size_t i = 0; i < c->cache.num_exclude_fields; i++) free(c->cache.exclude_fields[i]);
  free(c->cache.exclude_fields);
  if (c->mcp_session_secret) OPENSSL_cleanse(c->mcp_session_secret, strlen(c->mcp_session_secret));
  free(c->mcp_session_secret);
  ob_config_cluster_t *cl = &c->cluster;
  free(cl->redis), free(cl->host), free(cl->unix_path), free(cl->username), free(cl->password_file);
  free(cl->ns), free(cl->replica_id);
  free_secret(cl->password);
  free(c->log_level), free(c->path), free(c->dir);
  free(c);
}

static bool only_space(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!(s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) return false;
  return true;
}

ob_config_t *ob_config_parse(const char *json, size_t len, const char *base_dir, ob_config_errors_t *errs) {
  ctx_t cx = {.base_dir = base_dir};
  ob_buf_init(&cx.path);
  ob_config_path_terminate(&cx);
  ob_config_t *c = NULL;
  cJSON *root = NULL;
  char *text = NULL;
  const char *end = NULL;
  bool nul_escape;

  /* A UTF-8 byte order mark is skipped; offsets stay those of the input. */
  size_t skip = (len >= 3 && memcmp(json, "\xEF\xBB\xBF", 3) == 0) ? 3 : 0;
  size_t n = len - skip;
  size_t bad = prescan(len ? json + skip : "", n, &nul_escape);
  if (bad != SIZE_MAX) {
    ob_config_errf(&cx, nul_escape ? "unsupported \\u0000 escape near byte %zu" : "invalid JSON near byte %zu", bad + skip);
    goto done;
  }
  /* A NUL-terminated copy, so nothing past len is ever read whatever cJSON
   * does. return_parse_end is the position cJSON_GetErrorPtr() would give,
   * without reading cJSON's global. */
  text = ob_xstrndup(len ? json + skip : "", n);
  root = cJSON_ParseWithLengthOpts(text, n, &end, false);
  if (!root || (end && !only_space(end, n - (size_t)(end - text)))) {
    size_t at = end ? (size_t)(end - text) : 0;
    if (root) /* trailing text: point at it, not at the whitespace before it */
      while (at < n && (text[at] == ' ' || text[at] == '\t' || text[at] == '\n' || text[at] == '\r')) at++;
    ob_config_errf(&cx, "invalid JSON near byte %zu", at + skip);
    goto done;
  }
  if (!cJSON_IsObject(root)) {
    ob_config_errf(&cx, "expected a JSON object");
    goto done;
  }

  c = ob_xcalloc(1, sizeof *c);
  c->refs = 1;
  c->dir = ob_xstrdup(base_dir && base_dir[0] ? base_dir : ".");
  c->log_level = ob_xstrdup("info");
  c->net.workers = 1;
  ob_config_apply_defaults(&c->net.limits, ob_config_limit_fields, NFIELDS(ob_config_limit_fields));
  ob_config_apply_defaults(&c->net.timeouts, ob_config_timeout_fields, NFIELDS(ob_config_timeout_fields));
  c->admission.mode = OB_ADMIT_HIERARCHICAL;
  c->admission.cost = OB_COST_TOKENS;
  ob_config_apply_defaults(&c->admission, admission_fields, NFIELDS(admission_fields));
  ob_config_apply_defaults(&c->metrics, metrics_fields, NFIELDS(metrics_fields));
  c->admin.address = ob_xstrdup("127.0.0.1:9901");
  c->admin.host = ob_xstrdup("127.0.0.1");
  c->admin.port = 9901;
  c->admin.loopback = true;
  ob_config_apply_defaults(&c->admin, admin_fields, NFIELDS(admin_fields));
  cx.c = c;

  cx.up_names = collect_names(root, "upstreams", &cx.num_up_names);
  cx.group_names = collect_names(root, "groups", &cx.num_group_names);
  cx.tenant_names_pre = collect_names(root, "tenants", &cx.num_tenant_names_pre);
  uint32_t top_seen = ob_config_walk_object(&cx, root, top_fields, NFIELDS(top_fields), on_top_field, NULL);
  ob_config_add_default_group(c);
  ob_config_default_budgets_path(&cx, top_seen & (1u << T_BUDGETS));
  check_grpc_routes(&cx);
  net_view(c);

done:
  wipe_strings(root);
  cJSON_Delete(root);
  if (text) OPENSSL_cleanse(text, n);
  free(text);
  free(cx.up_names);
  free(cx.group_names);
  free(cx.tenant_names_pre);
  ob_config_seen_dispose(&cx.tenant_names);
  ob_config_seen_dispose(&cx.key_ids);
  ob_config_seen_dispose(&cx.key_digests);
  ob_buf_dispose(&cx.path);
  if (cx.num_errs && c) {
    free_config(c);
    c = NULL;
  }
  ob_config_flush_errs(&cx, errs);
  return c;
}

/* ---------------------------------------------------------------- files */

static void file_error(ob_config_errors_t *errs, const char *path, const char *msg) {
  ctx_t cx = {0};
  ob_buf_init(&cx.path);
  ob_buf_append_str(&cx.path, path);
  ob_config_path_terminate(&cx);
  ob_config_errf(&cx, "%s", msg);
  ob_buf_dispose(&cx.path);
  ob_config_flush_errs(&cx, errs);
}

/* The folder holding path: realpath'd when possible, else taken from the
 * text ("." when there is no slash). The caller frees it. */
static char *folder_of(const char *path) {
  char *real = realpath(path, NULL);
  const char *p = real ? real : path;
  const char *slash = strrchr(p, '/');
  char *dir;
  if (!slash)
    dir = ob_xstrdup(".");
  else if (slash == p)
    dir = ob_xstrdup("/");
  else
    dir = ob_xstrndup(p, (size_t)(slash - p));
  free(real);
  return dir;
}

/* A file the gateway opens at start-up and on reload (a certificate, a key,
 * a CA bundle) must be readable now, so that --check-config finds what
 * start-up would, under the key's JSON path. Only ob_config_load looks at
 * the file system: ob_config_parse stays pure. */
static void check_readable(ob_config_errors_t *errs, const char *json_path, const char *file) {
  if (!file) return;
  /* O_NONBLOCK: a FIFO named by mistake would block a reload (on the event
   * loop) until something wrote to it. Only regular files are certificates. */
  int fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  int e = fd < 0 ? errno : 0;
  struct stat st;
  if (!e && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) e = EISDIR;
  bool irregular = !e && !S_ISREG(st.st_mode);
  if (fd >= 0) close(fd);
  if (!e && !irregular) return;
  char *msg = NULL;
  if (asprintf(&msg, "cannot read %s: %s", file, irregular ? "not a regular file" : strerror(e)) < 0) {
    fprintf(stderr, "obleth: out of memory formatting a config error\n");
    abort();
  }
  file_error(errs, json_path, msg);
  free(msg);
}

static bool files_readable(const ob_config_t *c, ob_config_errors_t *errs) {
  size_t before = errs->len;
  char jp[64];
  for (size_t i = 0; i < c->net.num_listeners; i++) {
    snprintf(jp, sizeof jp, "listeners[%zu].tls.cert", i);
    check_readable(errs, jp, c->net.listeners[i].tls_cert);
    snprintf(jp, sizeof jp, "listeners[%zu].tls.key", i);
    check_readable(errs, jp, c->net.listeners[i].tls_key);
  }
  for (size_t i = 0; i < c->num_upstreams; i++) {
    snprintf(jp, sizeof jp, "upstreams[%zu].tls_ca", i);
    check_readable(errs, jp, c->upstreams[i].tls_ca);
  }
  return errs->len == before;
}

/* cluster.password_file: the password is its first line, without the line
 * end ("\n" or "\r\n"). Read here rather than by ob_config_parse, which
 * never opens files; a reload reads it again, so a rotated password is
 * picked up. Every buffer that held its bytes is wiped. */
static bool read_password_file(ob_config_t *c, ob_config_errors_t *errs) {
  const char *file = c->cluster.password_file;
  if (!file) return true;
  const char *jp = "cluster.password_file";
  /* O_NONBLOCK and regular files only, as for certificates: a FIFO would
   * block a reload on the event loop. */
  int fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  int e = fd < 0 ? errno : 0;
  struct stat st;
  if (!e && fstat(fd, &st) != 0) e = errno;
  if (!e && S_ISDIR(st.st_mode)) e = EISDIR;
  const char *why = !e && !S_ISREG(st.st_mode) ? "not a regular file" : NULL;
  char buf[PASSWORD_LINE_MAX + 1];
  size_t len = 0;
  while (!e && !why && len < sizeof buf && !memchr(buf, '\n', len)) {
    ssize_t r = read(fd, buf + len, sizeof buf - len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) e = errno;
    if (r <= 0) break;
    len += (size_t)r;
  }
  if (fd >= 0) close(fd);
  char *msg = NULL;
  int n = 0;
  const char *nl = memchr(buf, '\n', len);
  size_t line = nl ? (size_t)(nl - buf) : len;
  if (line && buf[line - 1] == '\r') line--;
  if (e || why)
    n = asprintf(&msg, "cannot read %s: %s", file, why ? why : strerror(e));
  else if (!nl && len == sizeof buf)
    n = asprintf(&msg, "the first line of %s is longer than %d bytes", file, PASSWORD_LINE_MAX);
  else if (line == 0)
    n = asprintf(&msg, "empty password (the first line of %s is empty)", file);
  else if (memchr(buf, '\0', line))
    n = asprintf(&msg, "the first line of %s contains a NUL byte", file);
  else
    c->cluster.password = ob_xstrndup(buf, line);
  OPENSSL_cleanse(buf, sizeof buf);
  if (n < 0) {
    fprintf(stderr, "obleth: out of memory formatting a config error\n");
    abort();
  }
  if (!msg) return true;
  file_error(errs, jp, msg);
  free(msg);
  return false;
}

ob_config_t *ob_config_load(const char *path, ob_config_errors_t *errs) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    file_error(errs, path, strerror(errno));
    return NULL;
  }
  struct stat st;
  int serr = fstat(fd, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : 0;
  if (serr) {
    close(fd);
    file_error(errs, path, strerror(serr));
    return NULL;
  }
  ob_buf_t b;
  ob_buf_init(&b);
  /* Room for the whole file at once, so no reallocation leaves a copy of
   * its secrets behind in freed memory; the buffer is wiped at the end. */
  if (S_ISREG(st.st_mode) && (uint64_t)st.st_size <= MAX_FILE_BYTES) ob_buf_reserve(&b, (size_t)st.st_size + 65536);
  for (;;) {
    if (b.len > MAX_FILE_BYTES) {
      close(fd);
      OPENSSL_cleanse(b.base, b.len);
      ob_buf_dispose(&b);
      file_error(errs, path, "file too large (limit 16 MiB)");
      return NULL;
    }
    char *dst = ob_buf_reserve(&b, 65536);
    ssize_t r = read(fd, dst, b.cap - b.len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int e = errno;
      close(fd);
      if (b.base) OPENSSL_cleanse(b.base, b.len);
      ob_buf_dispose(&b);
      file_error(errs, path, strerror(e));
      return NULL;
    }
    if (r == 0) break;
    b.len += (size_t)r;
  }
  close(fd);

  char *dir = folder_of(path);
  ob_config_t *c = ob_config_parse(b.base ? b.base : "", b.len, dir, errs);
  free(dir);
  if (b.base) OPENSSL_cleanse(b.base, b.len);
  ob_buf_dispose(&b);
  bool ok = c && files_readable(c, errs);
  ok = c && read_password_file(c, errs) && ok; /* both report */
  if (c && !ok) {
    ob_config_destroy(c);
    return NULL;
  }
  if (c) c->path = ob_xstrdup(path);
  return c;
}

/* ---------------------------------------------------------------- snapshots */

/* Atomic so a worker thread may drop the snapshot its last exchange held
 * while the main thread swaps in a reloaded one. */
ob_config_t *ob_config_acquire(ob_config_t *c) {
  if (c) __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
  return c;
}

void ob_config_release(ob_config_t *c) {
  if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0) free_config(c);
}

const ob_config_upstream_t *ob_config_find_upstream(const ob_config_t *c, const char *name) {
  if (!c || !name) return NULL;
  for (size_t i = 0; i < c->num_upstreams; i++)
    if (c->upstreams[i].name && strcmp(c->upstreams[i].name, name) == 0) return &c->upstreams[i];
  return NULL;
}
