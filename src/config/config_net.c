/*
 * config_net.c: the sections of the config that describe sockets:
 * "listeners" (address, tls, x_forwarded_for), "upstreams" (endpoint URLs,
 * protocol, max_inflight and its "capacity", TLS verification, credential)
 * and the integer tables of "limits" and "timeouts". Moved out of config.c
 * unchanged; error wording and JSON paths are the schema's (docs/config.md).
 * Listeners, endpoints, limits and timeouts are net's own types
 * (src/net/conf/net_config.h), parsed into c->net directly.
 */
#include "config_int.h"

#include <arpa/inet.h>
#include <limits.h>
#include <strings.h>

static bool is_host_char(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' ||
         ch == '_';
}

/*
 * Split "host:port", "[v6]:port", "host" or "[v6]" (len bytes, not
 * NUL-terminated). *port is -1 when absent. Returns NULL on success, or a
 * static reason. On success *host is a new string without brackets.
 */
const char *ob_config_split_host_port(const char *s, size_t len, char **host, long *port) {
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
  if (ob_config_split_host_port(p, alen, &host, &port) != NULL) return false;
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
  char *path = ob_config_want_file(cx, v);
  if (idx == TLS_CERT)
    l->tls_cert = path;
  else
    l->tls_key = path;
}

enum { L_ADDRESS, L_TLS, L_XFF };
static const field_t listener_fields[] = {
  [L_ADDRESS] = {.key = "address", .required = true},
  [L_TLS] = {.key = "tls"},
  [L_XFF] = {.key = "x_forwarded_for"},
};

static void on_listener_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_listener_t *l = target;
  if (idx == L_ADDRESS) {
    const char *s = ob_config_want_string(cx, v, false);
    if (!s) return;
    long port;
    const char *why = ob_config_split_host_port(s, strlen(s), &l->host, &port);
    if (!why && port < 0) {
      free(l->host);
      l->host = NULL;
      why = "missing port; expected HOST:PORT";
    }
    if (why) {
      char *q = ob_config_quote(s);
      ob_config_errf(cx, "invalid address %s (%s)", q, why);
      free(q);
      return;
    }
    l->address = ob_xstrdup(s);
    l->port = (uint16_t)port;
  } else if (idx == L_TLS) {
    if (!cJSON_IsObject(v)) {
      ob_config_errf(cx, "expected an object");
      return;
    }
    l->tls = true;
    ob_config_walk_object(cx, v, tls_fields, sizeof tls_fields / sizeof tls_fields[0], on_tls_field, l);
  } else if (idx == L_XFF) {
    const char *s = cJSON_IsString(v) ? v->valuestring : "";
    if (strcmp(s, "replace") == 0)
      l->xff_replace = true;
    else if (strcmp(s, "append") != 0)
      ob_config_errf(cx, "expected \"append\" or \"replace\"");
  }
}

void ob_config_on_listener(ctx_t *cx, size_t i, const cJSON *obj, void *target) {
  ob_config_walk_object(cx, obj, listener_fields, sizeof listener_fields / sizeof listener_fields[0], on_listener_field,
              &cx->c->net.listeners[i]);
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
  bool has_capacity; /* "capacity" present */
} upstream_state_t;

enum { U_NAME, U_ENDPOINTS, U_PROTOCOL, U_MAX_INFLIGHT, U_TLS_VERIFY, U_TLS_CA, U_CREDENTIAL, U_CAPACITY };
static const field_t upstream_fields[] = {
  [U_NAME] = {.key = "name", .required = true},
  [U_ENDPOINTS] = {.key = "endpoints", .required = true},
  [U_PROTOCOL] = {.key = "protocol"},
  [U_MAX_INFLIGHT] = {.key = "max_inflight"},
  [U_TLS_VERIFY] = {.key = "tls_verify"},
  [U_TLS_CA] = {.key = "tls_ca"},
  [U_CREDENTIAL] = {.key = "credential"},
  [U_CAPACITY] = {.key = "capacity"},
};

enum { CAP_MIN, CAP_MAX, CAP_METRICS_PATH, CAP_INTERVAL_MS, CAP_TARGET_WAITING, CAP_KV_HIGH };
static const field_t capacity_fields[] = {
  [CAP_MIN] = {.key = "min"},
  [CAP_MAX] = {.key = "max"},
  [CAP_METRICS_PATH] = {.key = "metrics_path"},
  [CAP_INTERVAL_MS] = {.key = "interval_ms"},
  [CAP_TARGET_WAITING] = {.key = "target_waiting"},
  [CAP_KV_HIGH] = {.key = "kv_high"},
};

static void on_capacity_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_capacity_t *c = target;
  uint64_t n;
  switch (idx) {
  case CAP_MIN:
    if (ob_config_want_uint(cx, v, 1, 1000000, &n)) c->min = (uint32_t)n;
    break;
  case CAP_MAX:
    if (ob_config_want_uint(cx, v, 1, 1000000, &n)) c->max = (uint32_t)n;
    break;
  case CAP_METRICS_PATH: {
    const char *s = ob_config_want_abs_path(cx, v);
    if (s && strpbrk(s, " \t\r\n?#")) ob_config_errf(cx, "must be a plain path (no spaces, query or fragment)");
    else if (s) free(c->metrics_path), c->metrics_path = ob_xstrdup(s);
    break;
  }
  case CAP_INTERVAL_MS:
    if (ob_config_want_uint(cx, v, 50, 60000, &n)) c->interval_ms = (uint32_t)n;
    break;
  case CAP_TARGET_WAITING:
    ob_config_want_number(cx, v, 0, 1000000, false, &c->target_waiting);
    break;
  case CAP_KV_HIGH:
    ob_config_want_number(cx, v, 0, 1, true, &c->kv_high);
    break;
  }
}

/* RFC 9110 tchar: what a header field name is made of. */
static bool is_tchar(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/*
 * Header names a credential may not use: they frame the message or belong
 * to the hop, and obleth writes them itself. Letting a credential replace
 * one would corrupt the request rather than authenticate it.
 */
static const char *const reserved_headers[] = {
  "host", "content-length", "transfer-encoding", "connection", "keep-alive",
  "proxy-connection", "te", "trailer", "upgrade",
};

enum { CRED_HEADER, CRED_VALUE };
static const field_t credential_fields[] = {
  [CRED_HEADER] = {.key = "header", .required = true},
  [CRED_VALUE] = {.key = "value", .required = true},
};

static void on_credential_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_upstream_t *u = target;
  const char *s = ob_config_want_string(cx, v, true);
  if (!s) return;
  if (idx == CRED_HEADER) {
    for (const char *p = s; *p; p++) {
      if (!is_tchar((unsigned char)*p)) {
        char *q = ob_config_quote(s);
        ob_config_errf(cx, "invalid header name %s", q);
        free(q);
        return;
      }
    }
    char *lower = ob_xstrdup(s);
    for (char *p = lower; *p; p++)
      if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
    for (size_t k = 0; k < sizeof reserved_headers / sizeof reserved_headers[0]; k++) {
      if (strcmp(lower, reserved_headers[k]) == 0) {
        ob_config_errf(cx, "header \"%s\" cannot carry a credential", lower);
        free(lower);
        return;
      }
    }
    u->credential_header = lower;
  } else {
    /* The value is a secret: never echoed in a message. */
    if (strpbrk(s, "\r\n")) {
      ob_config_errf(cx, "must not contain CR or LF");
      return;
    }
    u->credential_value = ob_xstrdup(s);
  }
}

static const char *proto_name(ob_upstream_proto_t p) {
  return p == OB_PROTO_H2 ? "h2" : p == OB_PROTO_H2C ? "h2c" : "http1";
}

static void on_upstream_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  upstream_state_t *st = target;
  ob_config_upstream_t *u = st->u;
  switch (idx) {
  case U_NAME: {
    const char *s = ob_config_want_string(cx, v, true);
    if (!s) return;
    char *q = ob_config_quote(s);
    if (!valid_name(s)) {
      ob_config_errf(cx, "invalid name %s (use letters, digits, \"_\", \".\" and \"-\")", q);
    } else {
      bool dup = false;
      for (size_t k = 0; k < st->index && !dup; k++)
        dup = cx->c->upstreams[k].name && strcmp(cx->c->upstreams[k].name, s) == 0;
      if (dup)
        ob_config_errf(cx, "duplicate upstream name %s", q);
      else
        u->name = ob_xstrdup(s);
    }
    free(q);
    break;
  }
  case U_ENDPOINTS: {
    if (!cJSON_IsArray(v) || !v->child) {
      ob_config_errf(cx, "expected a non-empty array");
      return;
    }
    u->num_endpoints = ob_config_array_len(v);
    u->endpoints = ob_xcalloc(u->num_endpoints, sizeof *u->endpoints);
    size_t j = 0;
    for (const cJSON *it = v->child; it; it = it->next, j++) {
      size_t mark = ob_config_path_index(cx, j);
      const char *s = ob_config_want_string(cx, it, false);
      if (s && !parse_url(s, &u->endpoints[j])) ob_config_errf(cx, "not an http:// or https:// URL");
      ob_config_path_pop(cx, mark);
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
      ob_config_errf(cx, "expected \"http1\", \"h2c\" or \"h2\"");
      return;
    }
    st->has_protocol = true;
    break;
  }
  case U_MAX_INFLIGHT: {
    uint64_t n;
    if (cJSON_IsString(v) && v->valuestring && strcmp(v->valuestring, "auto") == 0)
      u->max_inflight_auto = true;
    else if (cJSON_IsString(v))
      ob_config_errf(cx, "expected a non-negative integer or \"auto\"");
    else if (ob_config_want_uint(cx, v, 0, UINT32_MAX, &n))
      u->max_inflight = (uint32_t)n;
    break;
  }
  case U_CAPACITY:
    if (!cJSON_IsObject(v)) {
      ob_config_errf(cx, "expected an object");
      return;
    }
    st->has_capacity = true;
    ob_config_walk_object(cx, v, capacity_fields, sizeof capacity_fields / sizeof capacity_fields[0], on_capacity_field,
                &u->capacity);
    if (u->capacity.min > u->capacity.max) ob_config_errf(cx, "min (%u) is above max (%u)", u->capacity.min, u->capacity.max);
    break;
  case U_TLS_VERIFY:
    ob_config_want_bool(cx, v, &u->tls_verify);
    break;
  case U_TLS_CA:
    u->tls_ca = ob_config_want_file(cx, v);
    break;
  case U_CREDENTIAL:
    if (!cJSON_IsObject(v)) {
      ob_config_errf(cx, "expected an object");
      return;
    }
    ob_config_walk_object(cx, v, credential_fields, sizeof credential_fields / sizeof credential_fields[0], on_credential_field,
                u);
    break;
  }
}

void ob_config_on_upstream(ctx_t *cx, size_t i, const cJSON *obj, void *target) {
  upstream_state_t st = {.index = i, .u = &cx->c->upstreams[i]};
  st.u->tls_verify = true;
  st.u->capacity = (ob_config_capacity_t){.min = 1, .max = 512, .metrics_path = ob_xstrdup("/metrics"),
                                          .interval_ms = 250, .target_waiting = 0, .kv_high = 0.95};
  ob_config_walk_object(cx, obj, upstream_fields, sizeof upstream_fields / sizeof upstream_fields[0], on_upstream_field, &st);
  if (st.has_capacity && !st.u->max_inflight_auto) {
    size_t m = ob_config_path_key(cx, "capacity");
    ob_config_errf(cx, "only used with \"max_inflight\": \"auto\"");
    ob_config_path_pop(cx, m);
  }
  if (st.u->max_inflight_auto && st.u->num_endpoints > OB_CONFIG_AUTO_ENDPOINTS_MAX) {
    size_t m = ob_config_path_key(cx, "endpoints");
    ob_config_errf(cx, "at most %d endpoints with \"max_inflight\": \"auto\"", OB_CONFIG_AUTO_ENDPOINTS_MAX);
    ob_config_path_pop(cx, m);
  }

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
      size_t m1 = ob_config_path_key(cx, "endpoints");
      size_t m2 = ob_config_path_index(cx, j);
      ob_config_errf(cx, "protocol \"%s\" needs an %s URL", proto_name(st.u->protocol),
           st.u->protocol == OB_PROTO_H2 ? "https://" : "http://");
      ob_config_path_pop(cx, m2);
      ob_config_path_pop(cx, m1);
    }
  }
  if (!st.has_protocol) st.u->protocol = all_tls ? OB_PROTO_H2 : OB_PROTO_HTTP1;
}

/* ---------------------------------------------------------------- limits, timeouts */

#define LIM(k, w, lo, hi, d) {.key = #k, .off = offsetof(ob_config_limits_t, k), .wide = (w), .min = (lo), .max = (hi), .def = (d)}
const field_t ob_config_limit_fields[] = {
  LIM(max_body_bytes, true, 0, MAX_EXACT_INT, 16777216),
  LIM(max_header_bytes, false, 1024, UINT32_MAX, 65536),
  LIM(max_connections, false, 1, UINT32_MAX, 10000),
  LIM(max_concurrent_streams, false, 1, INT32_MAX, 128),
  LIM(stream_window_bytes, false, 16384, INT32_MAX, 262144),
  LIM(max_client_resets, false, 1, UINT32_MAX, 1000),
};
#undef LIM

#define TMO(k, d) {.key = #k, .off = offsetof(ob_config_timeouts_t, k), .min = 1, .max = UINT32_MAX, .def = (d)}
const field_t ob_config_timeout_fields[] = {
  TMO(connect_ms, 5000),      TMO(first_byte_ms, 300000),        TMO(idle_ms, 60000),   TMO(client_header_ms, 10000),
  TMO(keepalive_ms, 75000),   TMO(upstream_keepalive_ms, 30000), TMO(backoff_ms, 2000), TMO(grace_ms, 30000),
  TMO(client_body_ms, 60000),
};
#undef TMO

_Static_assert(NFIELDS(upstream_fields) <= 32 && NFIELDS(ob_config_timeout_fields) <= 32,
               "walk_object tracks keys in a 32-bit set");
