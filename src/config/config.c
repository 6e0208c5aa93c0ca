/*
 * config.c: turns the JSON configuration text into an immutable, reference
 * counted ob_config_t snapshot, or into a list of "json.path: message" lines
 * naming every problem found. It owns the schema (docs/config.md is its
 * prose twin: change both together), the defaults and the error wording. It
 * must not touch sockets, files other than the one ob_config_load reads, or
 * global state of its own (cJSON still records its last error position in a
 * global, which nothing here reads); the cJSON tree lives only inside
 * ob_config_parse.
 *
 * How validation works: every object is walked child by child in document
 * order through walk_object(), which knows the object's keys from a static
 * field table, reports unknown and repeated keys, hands known ones to a
 * per-object callback and finally reports missing required keys. A JSON
 * path (`a.b[3].c`) is kept in one buffer that grows and shrinks as the walk
 * descends, so every error carries its exact location. Cross references
 * (route/model -> upstream) are checked against the upstream names gathered
 * by a pre-pass, so a route written before the upstreams still gets its
 * error in document order. A snapshot is only returned when no error at all
 * was found; otherwise the half-built one is freed.
 */
#include "config.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* A configuration file is a few kilobytes; anything this large is a mistake
 * (or /dev/zero) and is refused before it is read into memory. */
#define MAX_FILE_BYTES ((size_t)16 << 20)

/* 2^53: every integer up to here is exact in the double cJSON stores, so the
 * 64-bit fields stop there rather than silently rounding. */
#define MAX_EXACT_INT ((uint64_t)1 << 53)

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
};

#define NUM_ROUTE_CLASSES (sizeof route_classes / sizeof route_classes[0])

static const char *const log_levels[] = {"debug", "info", "warn", "error"};

/* ---------------------------------------------------------------- parse context */

typedef struct ctx {
  ob_buf_t path;        /* current JSON path, kept NUL-terminated; empty = "$" */
  char **errs;          /* lines found by this parse, moved to the caller at the end */
  size_t num_errs, cap_errs;
  const char *base_dir; /* borrowed; NULL = leave relative paths as written */
  ob_config_t *c;       /* the snapshot being built */
  const char **up_names;/* upstream names from the pre-pass, borrowed from the cJSON tree */
  size_t num_up_names;
} ctx_t;

static void path_terminate(ctx_t *cx) {
  *ob_buf_reserve(&cx->path, 1) = '\0';
}

static const char *path_str(ctx_t *cx) {
  return cx->path.len ? cx->path.base : "$";
}

/* A key that can be written after a dot without ambiguity. */
static bool plain_key(const char *k) {
  if (!*k) return false;
  for (; *k; k++) {
    unsigned char ch = (unsigned char)*k;
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
      return false;
  }
  return true;
}

/* Descend into key; returns the mark path_pop() restores. Keys that are not
 * plain identifiers are written ["like this"], JSON-escaped, so an error line
 * never contains a raw newline or quote. */
static size_t path_key(ctx_t *cx, const char *key) {
  size_t mark = cx->path.len;
  if (plain_key(key)) {
    if (mark) ob_buf_append(&cx->path, ".", 1);
    ob_buf_append_str(&cx->path, key);
  } else {
    ob_buf_append(&cx->path, "[", 1);
    ob_buf_append_json_str(&cx->path, ob_iov_str(key));
    ob_buf_append(&cx->path, "]", 1);
  }
  path_terminate(cx);
  return mark;
}

static size_t path_index(ctx_t *cx, size_t i) {
  size_t mark = cx->path.len;
  ob_buf_printf(&cx->path, "[%zu]", i);
  path_terminate(cx);
  return mark;
}

static void path_pop(ctx_t *cx, size_t mark) {
  cx->path.len = mark;
  path_terminate(cx);
}

static void push_err(ctx_t *cx, char *line) {
  if (cx->num_errs == cx->cap_errs) {
    cx->cap_errs = cx->cap_errs ? cx->cap_errs * 2 : 8;
    cx->errs = ob_xrealloc(cx->errs, cx->cap_errs * sizeof *cx->errs);
  }
  cx->errs[cx->num_errs++] = line;
}

/* Record "<current path>: <message>". */
__attribute__((format(printf, 2, 3))) static void errf(ctx_t *cx, const char *fmt, ...) {
  char *msg = NULL;
  va_list ap;
  va_start(ap, fmt);
  int n = vasprintf(&msg, fmt, ap);
  va_end(ap);
  if (n < 0) {
    fprintf(stderr, "obleth: out of memory formatting a config error\n");
    abort();
  }
  ob_buf_t line;
  ob_buf_init(&line);
  ob_buf_append_str(&line, path_str(cx));
  ob_buf_append(&line, ": ", 2);
  ob_buf_append(&line, msg, (size_t)n);
  *ob_buf_reserve(&line, 1) = '\0';
  free(msg);
  push_err(cx, line.base); /* ownership of the bytes moves to the list */
}

/* s as a JSON string literal with quotes; the caller frees it. Used to show
 * user values inside messages without letting them break the line. */
static char *quote(const char *s) {
  ob_buf_t b;
  ob_buf_init(&b);
  ob_buf_append_json_str(&b, ob_iov_str(s));
  *ob_buf_reserve(&b, 1) = '\0';
  return b.base;
}

void ob_config_errors_dispose(ob_config_errors_t *e) {
  if (!e) return;
  for (size_t i = 0; i < e->len; i++) free(e->items[i]);
  free(e->items);
  e->items = NULL;
  e->len = 0;
}

/* Move this parse's errors to the end of the caller's list (or drop them). */
static void flush_errs(ctx_t *cx, ob_config_errors_t *out) {
  if (out && cx->num_errs) {
    out->items = ob_xrealloc(out->items, (out->len + cx->num_errs) * sizeof *out->items);
    memcpy(out->items + out->len, cx->errs, cx->num_errs * sizeof *cx->errs);
    out->len += cx->num_errs;
  } else {
    for (size_t i = 0; i < cx->num_errs; i++) free(cx->errs[i]);
  }
  free(cx->errs);
  cx->errs = NULL;
  cx->num_errs = cx->cap_errs = 0;
}

/* ---------------------------------------------------------------- value checks */

/* A string value, or NULL after reporting why not. nonempty rejects "". */
static const char *want_string(ctx_t *cx, const cJSON *v, bool nonempty) {
  if (!cJSON_IsString(v) || !v->valuestring) {
    errf(cx, "expected a string");
    return NULL;
  }
  if (nonempty && !v->valuestring[0]) {
    errf(cx, "must not be empty");
    return NULL;
  }
  return v->valuestring;
}

/* A string that must start with '/' (route prefixes and rewrites). */
static const char *want_abs_path(ctx_t *cx, const cJSON *v) {
  const char *s = want_string(cx, v, false);
  if (s && s[0] != '/') {
    errf(cx, "must start with \"/\"");
    return NULL;
  }
  return s;
}

static bool want_bool(ctx_t *cx, const cJSON *v, bool *out) {
  if (!cJSON_IsBool(v)) {
    errf(cx, "expected true or false");
    return false;
  }
  *out = cJSON_IsTrue(v);
  return true;
}

/*
 * An integral JSON number in [min, max] (max <= 2^53). "1e3" and "5.0" are
 * integers; "1.5", "-1", "1e400" and non-numbers are not. The message names
 * the accepted set so the reader knows what to write instead.
 */
static bool want_uint(ctx_t *cx, const cJSON *v, uint64_t min, uint64_t max, uint64_t *out) {
  if (cJSON_IsNumber(v)) {
    double d = v->valuedouble;
    if (d >= (double)min && d <= (double)max && d == (double)(uint64_t)d) {
      *out = (uint64_t)d;
      return true;
    }
  }
  char what[64];
  if (min == 0)
    snprintf(what, sizeof what, "a non-negative integer");
  else if (min == 1)
    snprintf(what, sizeof what, "a positive integer");
  else
    snprintf(what, sizeof what, "an integer >= %llu", (unsigned long long)min);
  if (cJSON_IsNumber(v) && v->valuedouble > (double)max)
    errf(cx, "expected %s no larger than %llu", what, (unsigned long long)max);
  else
    errf(cx, "expected %s", what);
  return false;
}

/* A file path, resolved against the config file's folder when relative. */
static char *want_file(ctx_t *cx, const cJSON *v) {
  const char *s = want_string(cx, v, true);
  if (!s) return NULL;
  if (s[0] == '/' || !cx->base_dir || !cx->base_dir[0]) return ob_xstrdup(s);
  ob_buf_t b;
  ob_buf_init(&b);
  ob_buf_append_str(&b, cx->base_dir);
  if (b.base[b.len - 1] != '/') ob_buf_append(&b, "/", 1);
  ob_buf_append_str(&b, s);
  *ob_buf_reserve(&b, 1) = '\0';
  return b.base;
}

static bool upstream_known(ctx_t *cx, const char *name) {
  for (size_t i = 0; i < cx->num_up_names; i++)
    if (strcmp(cx->up_names[i], name) == 0) return true;
  return false;
}

/* A reference to an upstream by name: must be one the file defines. */
static char *want_upstream_ref(ctx_t *cx, const cJSON *v) {
  const char *s = want_string(cx, v, true);
  if (!s) return NULL;
  if (!upstream_known(cx, s)) {
    char *q = quote(s);
    errf(cx, "no upstream named %s", q);
    free(q);
    return NULL;
  }
  return ob_xstrdup(s);
}

/* ---------------------------------------------------------------- objects */

/*
 * One key of an object. Integer fields of "limits" and "timeouts" also carry
 * where they live in the snapshot, their range and their default, so those
 * two objects are entirely table driven.
 */
typedef struct field {
  const char *key;
  bool required;
  size_t off;      /* integer fields: offset in ob_config_limits_t / _timeouts_t */
  bool wide;       /* uint64_t rather than uint32_t */
  uint64_t min, max, def;
} field_t;

typedef void field_fn(ctx_t *cx, size_t idx, const cJSON *v, void *target);

/*
 * Walk obj's members in document order. Unknown keys and repeats of a known
 * key are errors (cJSON keeps both copies of a repeated key, and silently
 * using one would hide a typo). Missing required keys are reported last, at
 * the object's own path. Returns a bit set of the keys that were present.
 */
static uint32_t walk_object(ctx_t *cx, const cJSON *obj, const field_t *fields, size_t n, field_fn *fn, void *target) {
  uint32_t seen = 0;
  for (const cJSON *it = obj->child; it; it = it->next) {
    const char *key = it->string ? it->string : "";
    size_t mark = path_key(cx, key);
    size_t i = 0;
    while (i < n && strcmp(fields[i].key, key) != 0) i++;
    if (i == n) {
      errf(cx, "unknown key");
    } else if (seen & (1u << i)) {
      errf(cx, "duplicate key");
    } else {
      seen |= 1u << i;
      fn(cx, i, it, target);
    }
    path_pop(cx, mark);
  }
  for (size_t i = 0; i < n; i++)
    if (fields[i].required && !(seen & (1u << i))) errf(cx, "missing required key \"%s\"", fields[i].key);
  return seen;
}

/* Walk an array whose elements must be objects; calls item(cx, i, elem, target). */
typedef void item_fn(ctx_t *cx, size_t i, const cJSON *elem, void *target);

static void walk_array(ctx_t *cx, const cJSON *arr, item_fn *item, void *target) {
  size_t i = 0;
  for (const cJSON *it = arr->child; it; it = it->next, i++) {
    size_t mark = path_index(cx, i);
    if (!cJSON_IsObject(it))
      errf(cx, "expected an object");
    else
      item(cx, i, it, target);
    path_pop(cx, mark);
  }
}

static size_t array_len(const cJSON *arr) {
  size_t n = 0;
  for (const cJSON *it = arr->child; it; it = it->next) n++;
  return n;
}

/* ---------------------------------------------------------------- host:port */

static bool is_host_char(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' ||
         ch == '_';
}

/*
 * Split "host:port", "[v6]:port", "host" or "[v6]" (len bytes, not
 * NUL-terminated). *port is -1 when absent. Returns NULL on success, or a
 * static reason. On success *host is a new string without brackets.
 */
static const char *split_host_port(const char *s, size_t len, char **host, long *port) {
  const char *h, *rest;
  size_t hlen;
  *port = -1;
  if (len && s[0] == '[') {
    const char *close = memchr(s, ']', len);
    if (!close) return "unclosed \"[\"";
    h = s + 1;
    hlen = (size_t)(close - h);
    char tmp[INET6_ADDRSTRLEN];
    struct in6_addr a6;
    if (hlen == 0 || hlen >= sizeof tmp) return "bad IPv6 address";
    memcpy(tmp, h, hlen);
    tmp[hlen] = '\0';
    if (inet_pton(AF_INET6, tmp, &a6) != 1) return "bad IPv6 address";
    rest = close + 1;
    if (rest < s + len && *rest != ':') return "unexpected text after \"]\"";
  } else {
    const char *colon = memchr(s, ':', len);
    h = s;
    hlen = colon ? (size_t)(colon - s) : len;
    rest = colon ? colon : s + len;
    if (colon && memchr(colon + 1, ':', len - hlen - 1)) return "IPv6 addresses need brackets, as in [::1]:8080";
    if (hlen == 0) return "missing host";
    if (hlen > 253) return "host name too long";
    bool dotted = true;
    for (size_t i = 0; i < hlen; i++) {
      unsigned char ch = (unsigned char)h[i];
      if (!is_host_char(ch)) return "bad host name";
      if (!(ch == '.' || (ch >= '0' && ch <= '9'))) dotted = false;
    }
    if (dotted) { /* looks like IPv4: must be one */
      char tmp[INET_ADDRSTRLEN];
      struct in_addr a4;
      if (hlen >= sizeof tmp) return "bad IPv4 address";
      memcpy(tmp, h, hlen);
      tmp[hlen] = '\0';
      if (inet_pton(AF_INET, tmp, &a4) != 1) return "bad IPv4 address";
    }
  }
  if (rest < s + len) { /* ":port" */
    const char *p = rest + 1;
    size_t plen = (size_t)(s + len - p);
    if (plen == 0 || plen > 5) return "port must be 0..65535";
    long v = 0;
    for (size_t i = 0; i < plen; i++) {
      if (p[i] < '0' || p[i] > '9') return "port must be 0..65535";
      v = v * 10 + (p[i] - '0');
    }
    if (v > 65535) return "port must be 0..65535";
    *port = v;
  }
  *host = ob_xstrndup(h, hlen);
  return NULL;
}

static char *make_authority(const char *host, unsigned port) {
  ob_buf_t b;
  ob_buf_init(&b);
  if (strchr(host, ':'))
    ob_buf_printf(&b, "[%s]:%u", host, port);
  else
    ob_buf_printf(&b, "%s:%u", host, port);
  *ob_buf_reserve(&b, 1) = '\0';
  return b.base;
}

/*
 * "http(s)://host[:port][/base]". No userinfo, query or fragment; the path
 * is printable ASCII without spaces (it is copied into request lines as
 * is). Fills ep only on success.
 */
static bool parse_url(const char *s, ob_config_endpoint_t *ep) {
  bool tls;
  const char *p;
  if (strncasecmp(s, "http://", 7) == 0)
    tls = false, p = s + 7;
  else if (strncasecmp(s, "https://", 8) == 0)
    tls = true, p = s + 8;
  else
    return false;
  size_t alen = strcspn(p, "/");
  if (memchr(p, '@', alen)) return false;
  const char *path = p + alen;
  for (const char *q = path; *q; q++) {
    unsigned char ch = (unsigned char)*q;
    if (ch <= 0x20 || ch >= 0x7f || ch == '?' || ch == '#') return false; /* non-ASCII must be %-encoded */
  }
  /* '?' or '#' right after the authority is caught by the host check. */
  char *host = NULL;
  long port;
  if (split_host_port(p, alen, &host, &port) != NULL) return false;
  if (port == 0) {
    free(host);
    return false;
  }
  size_t plen = strlen(path);
  while (plen && path[plen - 1] == '/') plen--;
  ep->url = ob_xstrdup(s);
  ep->tls = tls;
  ep->host = host;
  ep->port = (uint16_t)(port > 0 ? port : tls ? 443 : 80);
  ep->authority = make_authority(host, ep->port);
  ep->base_path = ob_xstrndup(path, plen);
  return true;
}

/* ---------------------------------------------------------------- listeners */

enum { TLS_CERT, TLS_KEY };
static const field_t tls_fields[] = {
  [TLS_CERT] = {.key = "cert", .required = true},
  [TLS_KEY] = {.key = "key", .required = true},
};

static void on_tls_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_listener_t *l = target;
  char *path = want_file(cx, v);
  if (idx == TLS_CERT)
    l->tls_cert = path;
  else
    l->tls_key = path;
}

enum { L_ADDRESS, L_TLS };
static const field_t listener_fields[] = {
  [L_ADDRESS] = {.key = "address", .required = true},
  [L_TLS] = {.key = "tls"},
};

static void on_listener_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_listener_t *l = target;
  if (idx == L_ADDRESS) {
    const char *s = want_string(cx, v, false);
    if (!s) return;
    long port;
    const char *why = split_host_port(s, strlen(s), &l->host, &port);
    if (!why && port < 0) {
      free(l->host);
      l->host = NULL;
      why = "missing port; expected HOST:PORT";
    }
    if (why) {
      char *q = quote(s);
      errf(cx, "invalid address %s (%s)", q, why);
      free(q);
      return;
    }
    l->address = ob_xstrdup(s);
    l->port = (uint16_t)port;
  } else if (idx == L_TLS) {
    if (!cJSON_IsObject(v)) {
      errf(cx, "expected an object");
      return;
    }
    l->tls = true;
    walk_object(cx, v, tls_fields, sizeof tls_fields / sizeof tls_fields[0], on_tls_field, l);
  }
}

static void on_listener(ctx_t *cx, size_t i, const cJSON *obj, void *target) {
  walk_object(cx, obj, listener_fields, sizeof listener_fields / sizeof listener_fields[0], on_listener_field,
              &cx->c->listeners[i]);
}

/* ---------------------------------------------------------------- upstreams */

static bool valid_name(const char *s) {
  if (!*s) return false;
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' ||
          ch == '-'))
      return false;
  }
  return true;
}

typedef struct upstream_state {
  size_t index;
  ob_config_upstream_t *u;
  bool has_protocol; /* "protocol" present and valid */
} upstream_state_t;

enum { U_NAME, U_ENDPOINTS, U_PROTOCOL, U_MAX_INFLIGHT, U_TLS_VERIFY, U_TLS_CA };
static const field_t upstream_fields[] = {
  [U_NAME] = {.key = "name", .required = true},
  [U_ENDPOINTS] = {.key = "endpoints", .required = true},
  [U_PROTOCOL] = {.key = "protocol"},
  [U_MAX_INFLIGHT] = {.key = "max_inflight"},
  [U_TLS_VERIFY] = {.key = "tls_verify"},
  [U_TLS_CA] = {.key = "tls_ca"},
};

static const char *proto_name(ob_upstream_proto_t p) {
  return p == OB_PROTO_H2 ? "h2" : p == OB_PROTO_H2C ? "h2c" : "http1";
}

static void on_upstream_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  upstream_state_t *st = target;
  ob_config_upstream_t *u = st->u;
  switch (idx) {
  case U_NAME: {
    const char *s = want_string(cx, v, true);
    if (!s) return;
    char *q = quote(s);
    if (!valid_name(s)) {
      errf(cx, "invalid name %s (use letters, digits, \"_\", \".\" and \"-\")", q);
    } else {
      bool dup = false;
      for (size_t k = 0; k < st->index && !dup; k++)
        dup = cx->c->upstreams[k].name && strcmp(cx->c->upstreams[k].name, s) == 0;
      if (dup)
        errf(cx, "duplicate upstream name %s", q);
      else
        u->name = ob_xstrdup(s);
    }
    free(q);
    break;
  }
  case U_ENDPOINTS: {
    if (!cJSON_IsArray(v) || !v->child) {
      errf(cx, "expected a non-empty array");
      return;
    }
    u->num_endpoints = array_len(v);
    u->endpoints = ob_xcalloc(u->num_endpoints, sizeof *u->endpoints);
    size_t j = 0;
    for (const cJSON *it = v->child; it; it = it->next, j++) {
      size_t mark = path_index(cx, j);
      const char *s = want_string(cx, it, false);
      if (s && !parse_url(s, &u->endpoints[j])) errf(cx, "not an http:// or https:// URL");
      path_pop(cx, mark);
    }
    break;
  }
  case U_PROTOCOL: {
    const char *s = cJSON_IsString(v) ? v->valuestring : NULL;
    if (s && strcmp(s, "http1") == 0)
      u->protocol = OB_PROTO_HTTP1;
    else if (s && strcmp(s, "h2c") == 0)
      u->protocol = OB_PROTO_H2C;
    else if (s && strcmp(s, "h2") == 0)
      u->protocol = OB_PROTO_H2;
    else {
      errf(cx, "expected \"http1\", \"h2c\" or \"h2\"");
      return;
    }
    st->has_protocol = true;
    break;
  }
  case U_MAX_INFLIGHT: {
    uint64_t n;
    if (want_uint(cx, v, 0, UINT32_MAX, &n)) u->max_inflight = (uint32_t)n;
    break;
  }
  case U_TLS_VERIFY:
    want_bool(cx, v, &u->tls_verify);
    break;
  case U_TLS_CA:
    u->tls_ca = want_file(cx, v);
    break;
  }
}

static void on_upstream(ctx_t *cx, size_t i, const cJSON *obj, void *target) {
  upstream_state_t st = {.index = i, .u = &cx->c->upstreams[i]};
  st.u->tls_verify = true;
  walk_object(cx, obj, upstream_fields, sizeof upstream_fields / sizeof upstream_fields[0], on_upstream_field, &st);

  /* Scheme and protocol must agree; without "protocol" the scheme decides
   * (h2 when every endpoint is https://, else http1, which speaks both). */
  bool all_tls = st.u->num_endpoints > 0;
  for (size_t j = 0; j < st.u->num_endpoints; j++) {
    const ob_config_endpoint_t *ep = &st.u->endpoints[j];
    if (!ep->url) continue; /* already reported */
    all_tls = all_tls && ep->tls;
    if (!st.has_protocol) continue;
    bool bad = (st.u->protocol == OB_PROTO_H2 && !ep->tls) || (st.u->protocol == OB_PROTO_H2C && ep->tls);
    if (bad) {
      size_t m1 = path_key(cx, "endpoints");
      size_t m2 = path_index(cx, j);
      errf(cx, "protocol \"%s\" needs an %s URL", proto_name(st.u->protocol),
           st.u->protocol == OB_PROTO_H2 ? "https://" : "http://");
      path_pop(cx, m2);
      path_pop(cx, m1);
    }
  }
  if (!st.has_protocol) st.u->protocol = all_tls ? OB_PROTO_H2 : OB_PROTO_HTTP1;
}

/* ---------------------------------------------------------------- routes */

typedef struct route_state {
  size_t index;
  ob_config_route_t *r;
  const struct route_class *cls; /* NULL when absent or unknown */
  bool has_upstream;             /* key present, valid or not */
} route_state_t;

enum { R_PREFIX, R_CLASS, R_UPSTREAM, R_REWRITE };
static const field_t route_fields[] = {
  [R_PREFIX] = {.key = "prefix", .required = true},
  [R_CLASS] = {.key = "class", .required = true},
  [R_UPSTREAM] = {.key = "upstream"},
  [R_REWRITE] = {.key = "rewrite"},
};

static void on_route_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  route_state_t *st = target;
  switch (idx) {
  case R_PREFIX: {
    const char *s = want_abs_path(cx, v);
    if (!s) return;
    for (size_t k = 0; k < st->index; k++) {
      if (cx->c->routes[k].prefix && strcmp(cx->c->routes[k].prefix, s) == 0) {
        char *q = quote(s);
        errf(cx, "duplicate prefix %s", q);
        free(q);
        return;
      }
    }
    st->r->prefix = ob_xstrdup(s);
    break;
  }
  case R_CLASS: {
    const char *s = want_string(cx, v, false);
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
    char *q = quote(s);
    errf(cx, "unknown route class %s (expected %s)", q, names.base);
    free(q);
    ob_buf_dispose(&names);
    break;
  }
  case R_UPSTREAM:
    st->has_upstream = true;
    st->r->upstream = want_upstream_ref(cx, v);
    break;
  case R_REWRITE: {
    const char *s = want_abs_path(cx, v);
    if (s) st->r->rewrite = ob_xstrdup(s);
    break;
  }
  }
}

static void on_route(ctx_t *cx, size_t i, const cJSON *obj, void *target) {
  route_state_t st = {.index = i, .r = &cx->c->routes[i]};
  walk_object(cx, obj, route_fields, sizeof route_fields / sizeof route_fields[0], on_route_field, &st);
  if (st.cls && st.cls->needs_upstream && !st.has_upstream) errf(cx, "missing required key \"upstream\"");
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
    const char *s = want_string(cx, v, true);
    if (!s) return;
    for (size_t k = 0; k < st->index; k++) {
      if (cx->c->models[k].name && strcmp(cx->c->models[k].name, s) == 0) {
        char *q = quote(s);
        errf(cx, "duplicate model name %s", q);
        free(q);
        return;
      }
    }
    st->m->name = ob_xstrdup(s);
  } else if (idx == M_UPSTREAM) {
    st->m->upstream = want_upstream_ref(cx, v);
  } else if (idx == M_UPSTREAM_MODEL) {
    const char *s = want_string(cx, v, true);
    if (s) st->m->upstream_model = ob_xstrdup(s);
  }
}

static void on_model(ctx_t *cx, size_t i, const cJSON *obj, void *target) {
  model_state_t st = {.index = i, .m = &cx->c->models[i]};
  walk_object(cx, obj, model_fields, sizeof model_fields / sizeof model_fields[0], on_model_field, &st);
}

/* ---------------------------------------------------------------- limits, timeouts */

#define LIM(k, w, lo, hi, d) {.key = #k, .off = offsetof(ob_config_limits_t, k), .wide = (w), .min = (lo), .max = (hi), .def = (d)}
static const field_t limit_fields[] = {
  LIM(max_body_bytes, true, 0, MAX_EXACT_INT, 16777216),
  LIM(max_header_bytes, false, 1024, UINT32_MAX, 65536),
  LIM(max_connections, false, 1, UINT32_MAX, 10000),
  LIM(max_concurrent_streams, false, 1, INT32_MAX, 128),
  LIM(stream_window_bytes, false, 16384, INT32_MAX, 262144),
};
#undef LIM

#define TMO(k, d) {.key = #k, .off = offsetof(ob_config_timeouts_t, k), .min = 1, .max = UINT32_MAX, .def = (d)}
static const field_t timeout_fields[] = {
  TMO(connect_ms, 5000),      TMO(first_byte_ms, 300000),        TMO(idle_ms, 60000),   TMO(client_header_ms, 10000),
  TMO(keepalive_ms, 75000),   TMO(upstream_keepalive_ms, 30000), TMO(backoff_ms, 2000), TMO(grace_ms, 30000),
};
#undef TMO

static void set_int(void *base, const field_t *f, uint64_t v) {
  char *p = (char *)base + f->off;
  if (f->wide) {
    uint64_t w = v;
    memcpy(p, &w, sizeof w);
  } else {
    uint32_t n = (uint32_t)v;
    memcpy(p, &n, sizeof n);
  }
}

static void apply_defaults(void *base, const field_t *fields, size_t n) {
  for (size_t i = 0; i < n; i++) set_int(base, &fields[i], fields[i].def);
}

/* The struct an integer table fills, and the table. */
typedef struct int_target {
  void *base;
  const field_t *fields;
} int_target_t;

static void on_int_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  const int_target_t *t = target;
  const field_t *f = &t->fields[idx];
  uint64_t n;
  if (want_uint(cx, v, f->min, f->max, &n)) set_int(t->base, f, n);
}

/* ---------------------------------------------------------------- top level */

enum { T_LISTENERS, T_UPSTREAMS, T_ROUTES, T_MODELS, T_LIMITS, T_TIMEOUTS, T_LOG_LEVEL };
static const field_t top_fields[] = {
  [T_LISTENERS] = {.key = "listeners", .required = true},
  [T_UPSTREAMS] = {.key = "upstreams", .required = true},
  [T_ROUTES] = {.key = "routes"},
  [T_MODELS] = {.key = "models"},
  [T_LIMITS] = {.key = "limits"},
  [T_TIMEOUTS] = {.key = "timeouts"},
  [T_LOG_LEVEL] = {.key = "log_level"},
};

#define NFIELDS(a) (sizeof(a) / sizeof((a)[0]))

_Static_assert(NFIELDS(upstream_fields) <= 32 && NFIELDS(timeout_fields) <= 32 && NFIELDS(top_fields) <= 32,
               "walk_object tracks keys in a 32-bit set");

/* Check that arr is an array (non-empty when asked) and return its length
 * in *n; the caller allocates the snapshot's items, then walks them. */
static bool want_list(ctx_t *cx, const cJSON *arr, bool nonempty, size_t *n) {
  if (!cJSON_IsArray(arr) || (nonempty && !arr->child)) {
    errf(cx, nonempty ? "expected a non-empty array" : "expected an array");
    return false;
  }
  *n = array_len(arr);
  return true;
}

#define ALLOC_ITEMS(arr, num, n) ((num) = (n), (arr) = (n) ? ob_xcalloc((n), sizeof *(arr)) : NULL)

static void on_top_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_t *c = cx->c;
  size_t n;
  switch (idx) {
  case T_LISTENERS:
    if (!want_list(cx, v, true, &n)) return;
    ALLOC_ITEMS(c->listeners, c->num_listeners, n);
    walk_array(cx, v, on_listener, NULL);
    break;
  case T_UPSTREAMS:
    if (!want_list(cx, v, false, &n)) return;
    ALLOC_ITEMS(c->upstreams, c->num_upstreams, n);
    walk_array(cx, v, on_upstream, NULL);
    break;
  case T_ROUTES:
    if (!want_list(cx, v, false, &n)) return;
    ALLOC_ITEMS(c->routes, c->num_routes, n);
    walk_array(cx, v, on_route, NULL);
    break;
  case T_MODELS:
    if (!want_list(cx, v, false, &n)) return;
    ALLOC_ITEMS(c->models, c->num_models, n);
    walk_array(cx, v, on_model, NULL);
    break;
  case T_LIMITS:
  case T_TIMEOUTS:
    if (!cJSON_IsObject(v)) {
      errf(cx, "expected an object");
      return;
    }
    if (idx == T_LIMITS)
      walk_object(cx, v, limit_fields, NFIELDS(limit_fields), on_int_field,
                  &(int_target_t){&c->limits, limit_fields});
    else
      walk_object(cx, v, timeout_fields, NFIELDS(timeout_fields), on_int_field,
                  &(int_target_t){&c->timeouts, timeout_fields});
    break;
  case T_LOG_LEVEL: {
    const char *s = cJSON_IsString(v) ? v->valuestring : NULL;
    for (size_t k = 0; s && k < NFIELDS(log_levels); k++) {
      if (strcmp(s, log_levels[k]) == 0) {
        free(c->log_level);
        c->log_level = ob_xstrdup(s);
        return;
      }
    }
    errf(cx, "expected \"debug\", \"info\", \"warn\" or \"error\"");
    break;
  }
  }
}

/* Upstream names as written (first "upstreams" key, first "name" key of each
 * element), so routes and models can be checked wherever they appear. */
static void collect_upstream_names(ctx_t *cx, const cJSON *root) {
  const cJSON *ups = cJSON_GetObjectItemCaseSensitive(root, "upstreams");
  if (!cJSON_IsArray(ups)) return;
  size_t n = array_len(ups);
  if (!n) return;
  cx->up_names = ob_xcalloc(n, sizeof *cx->up_names);
  for (const cJSON *it = ups->child; it; it = it->next) {
    const cJSON *name = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "name") : NULL;
    if (cJSON_IsString(name) && name->valuestring) cx->up_names[cx->num_up_names++] = name->valuestring;
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

static void free_config(ob_config_t *c) {
  for (size_t i = 0; i < c->num_listeners; i++) {
    ob_config_listener_t *l = &c->listeners[i];
    free(l->address), free(l->host), free(l->tls_cert), free(l->tls_key);
  }
  free(c->listeners);
  for (size_t i = 0; i < c->num_upstreams; i++) {
    ob_config_upstream_t *u = &c->upstreams[i];
    for (size_t j = 0; j < u->num_endpoints; j++) {
      ob_config_endpoint_t *ep = &u->endpoints[j];
      free(ep->url), free(ep->host), free(ep->authority), free(ep->base_path);
    }
    free(u->endpoints), free(u->name), free(u->tls_ca);
  }
  free(c->upstreams);
  for (size_t i = 0; i < c->num_routes; i++) {
    ob_config_route_t *r = &c->routes[i];
    free(r->prefix), free(r->class_name), free(r->upstream), free(r->rewrite);
  }
  free(c->routes);
  for (size_t i = 0; i < c->num_models; i++) {
    ob_config_model_t *m = &c->models[i];
    free(m->name), free(m->upstream), free(m->upstream_model);
  }
  free(c->models);
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
  path_terminate(&cx);
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
    errf(&cx, nul_escape ? "unsupported \\u0000 escape near byte %zu" : "invalid JSON near byte %zu", bad + skip);
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
    errf(&cx, "invalid JSON near byte %zu", at + skip);
    goto done;
  }
  if (!cJSON_IsObject(root)) {
    errf(&cx, "expected a JSON object");
    goto done;
  }

  c = ob_xcalloc(1, sizeof *c);
  c->refs = 1;
  c->dir = ob_xstrdup(base_dir && base_dir[0] ? base_dir : ".");
  c->log_level = ob_xstrdup("info");
  apply_defaults(&c->limits, limit_fields, NFIELDS(limit_fields));
  apply_defaults(&c->timeouts, timeout_fields, NFIELDS(timeout_fields));
  cx.c = c;

  collect_upstream_names(&cx, root);
  walk_object(&cx, root, top_fields, NFIELDS(top_fields), on_top_field, NULL);

done:
  cJSON_Delete(root);
  free(text);
  free(cx.up_names);
  ob_buf_dispose(&cx.path);
  if (cx.num_errs && c) {
    free_config(c);
    c = NULL;
  }
  flush_errs(&cx, errs);
  return c;
}

/* ---------------------------------------------------------------- files */

static void file_error(ob_config_errors_t *errs, const char *path, const char *msg) {
  ctx_t cx = {0};
  ob_buf_init(&cx.path);
  ob_buf_append_str(&cx.path, path);
  path_terminate(&cx);
  errf(&cx, "%s", msg);
  ob_buf_dispose(&cx.path);
  flush_errs(&cx, errs);
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
  for (;;) {
    if (b.len > MAX_FILE_BYTES) {
      close(fd);
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
  ob_buf_dispose(&b);
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
