/*
 * exchange.c: the proxy pipeline for one request. It owns the exchange
 * object, the header rewriting in both directions (hop-by-hop removal,
 * x-forwarded-for, x-request-id), flow control between the upstream and the
 * client side, error answers and the per-request log line. It must not know
 * any route class: those are reached through ob_route_class_t.
 */
#include "proxy_int.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ---------------------------------------------------------------- helpers */

static void make_request_id(ob_proxy_t *p, char out[40]) {
  /* Unique per process run: a random seed plus a counter, mixed so ids do not
   * look sequential (they end up in client-visible headers). */
  uint64_t x = p->rid_seed ^ (++p->rid_counter * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31, x *= 0xBF58476D1CE4E5B9ull, x ^= x >> 27;
  uint64_t y = p->rid_counter ^ (p->rid_seed >> 7);
  ob_fmt_hex64(out, x);
  ob_fmt_hex64(out + 16, y);
  out[32] = '\0';
}

/* A client's x-request-id is kept only when it is one word of visible
 * ASCII without quotes or backslashes: it is logged, forwarded and echoed,
 * and anything else is replaced by an id of our own. */
static bool is_plain_char(unsigned char c) { return c > 0x20 && c < 0x7f && c != '"' && c != '\\'; }

static bool is_plain_request_id(ob_iov_t v) {
  for (size_t i = 0; i < v.len; i++)
    if (!is_plain_char((unsigned char)v.base[i])) return false;
  return true;
}

static bool is_request_hop(ob_iov_t name, const ob_sreq_t *s) {
  /* Host and Content-Length are set by net for the upstream connection;
   * X-Forwarded-For, X-Forwarded-Proto and X-Request-Id by ob_proxy_forward
   * (a client's X-Forwarded-Proto next to ours would give the upstream two
   * answers). Expect was answered here already (client side 100), so an
   * upstream must not answer it again. */
  return ob_http_is_hop_by_hop_in(name, s->headers, s->num_headers) || ob_iov_eq_str_nocase(name, "host") ||
         ob_iov_eq_str_nocase(name, "content-length") || ob_iov_eq_str_nocase(name, "x-forwarded-for") ||
         ob_iov_eq_str_nocase(name, "x-forwarded-proto") || ob_iov_eq_str_nocase(name, "x-request-id") ||
         ob_iov_eq_str_nocase(name, "http2-settings") || ob_iov_eq_str_nocase(name, "expect");
}

/* The caller's key never travels upstream once it identified a tenant. */
static bool is_client_credential(ob_iov_t name) {
  return ob_iov_eq_str_nocase(name, "authorization") || ob_iov_eq_str_nocase(name, "x-api-key");
}

/* "12.345ms" from microseconds, without floating-point formatting (the
 * access line is written for every request). */
static const char *ms_text(char out[32], uint64_t us) {
  size_t n = ob_fmt_u64(out, us / 1000);
  uint64_t f = us % 1000;
  out[n] = '.', out[n + 1] = (char)('0' + f / 100), out[n + 2] = (char)('0' + f / 10 % 10);
  out[n + 3] = (char)('0' + f % 10), memcpy(out + n + 4, "ms", 3);
  return out;
}

/* The access line, built by hand: printf's format parsing was a tenth of
 * a proxied request's instructions. Truncated at the line's end. */
typedef struct line {
  char p[1900];
  size_t n;
} line_t;

static void put(line_t *l, const char *s, size_t n) {
  if (n > sizeof l->p - l->n) n = sizeof l->p - l->n;
  memcpy(l->p + l->n, s, n);
  l->n += n;
}
static void put_str(line_t *l, const char *s) { put(l, s, strlen(s)); }
static void put_iov(line_t *l, ob_iov_t v) { put(l, v.base, v.len); }
/* Client-chosen text (path, model, request id): bytes outside visible ASCII,
 * '"' and '\\' become \xHH, as nginx's access log escapes them, so no value
 * can end its field early or forge the fields after it. */
static void put_esc(line_t *l, ob_iov_t v) {
  static const char hex[] = "0123456789ABCDEF";
  size_t i = 0;
  /* The usual value needs no escape: find that first, copy it whole. */
  while (i < v.len && is_plain_char((unsigned char)v.base[i])) i++;
  if (i == v.len) {
    put(l, v.base, v.len);
    return;
  }
  size_t run = 0;
  for (; i < v.len; i++) {
    unsigned char c = (unsigned char)v.base[i];
    if (is_plain_char(c)) continue;
    put(l, v.base + run, i - run);
    char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
    put(l, e, 4);
    run = i + 1;
  }
  put(l, v.base + run, v.len - run);
}
static void put_u64(line_t *l, uint64_t v) {
  char b[OB_U64_CHARS];
  put(l, b, ob_fmt_u64(b, v));
}

static void log_line(ob_exchange_t *x, const ob_sreq_t *s, bool completed, uint64_t now) {
  if (!ob_log_enabled(OB_LOG_INFO)) return;
  char ms[32];
  line_t l;
  l.n = 0;
  const ob_config_tenant_t *t = x->who.tenant;
  put_str(&l, s->peer_addr);
  put_str(&l, " \"");
  put_iov(&l, s->method);
  put(&l, " ", 1);
  put_esc(&l, s->path);
  put_str(&l, s->http_version == 20 ? " HTTP/2\" " : (s->http_version == 10 ? " HTTP/1.0\" " : " HTTP/1.1\" "));
  put_u64(&l, (uint64_t)s->status);
  put(&l, " ", 1);
  put_u64(&l, s->bytes_out);
  put(&l, " ", 1);
  put_str(&l, ms_text(ms, now - s->start_us));
  put_str(&l, " ttfb=");
  put_str(&l, x->ttfb_us ? ms_text(ms, x->ttfb_us - s->start_us) : "-");
  put_str(&l, " upstream=");
  put_str(&l, x->endpoint ? x->endpoint : "-");
  put_str(&l, " model=");
  put_esc(&l, x->model.len ? x->model : OB_IOV_LIT("-"));
  put_str(&l, " tenant=");
  put_str(&l, t ? t->name : "-");
  put_str(&l, " group=");
  put_str(&l, t ? t->group : "-");
  put_str(&l, " key=");
  put_str(&l, x->who.key ? x->who.key->id : "-");
  put_str(&l, " admission=");
  put_str(&l, x->admission ? x->admission : "-");
  put_str(&l, " queue=");
  put_str(&l, ms_text(ms, x->queue_us));
  put_str(&l, " rid=");
  put_esc(&l, ob_iov_str(x->request_id));
  if (x->grpc) {
    put_str(&l, " grpc-status=");
    if (x->grpc_status >= 0) put_u64(&l, (uint64_t)x->grpc_status);
    else put(&l, "-", 1);
  }
  if (x->note) put(&l, " ", 1), put_str(&l, x->note);
  if (!completed) put_str(&l, " aborted");
  ob_log_access(l.p, l.n);
}

/* ---------------------------------------------------------------- answers */

/* Answer with a complete body; extra headers (borrowed) go first. */
static void reply_h(ob_exchange_t *x, int status, const char *content_type, const void *body, size_t len,
                    const ob_http_header_t *extra, size_t n_extra) {
  if (!x->req || x->answered) return;
  x->answered = true;
  ob_http_header_t h[1 + OB_PROXY_ADMISSION_HEADERS + OB_EXCHANGE_HEAD_EXTRA];
  size_t k = 0;
  for (size_t i = 0; i < n_extra && k < OB_PROXY_ADMISSION_HEADERS; i++) h[k++] = extra[i];
  h[k++] = (ob_http_header_t){OB_IOV_LIT("content-type"), ob_iov_str(content_type)};
  k += ob_exchange_head_headers(x, h + k);
  if (ob_sreq_send_head(x->req, status, h, k, (int64_t)len, len == 0) == OB_OK && len)
    ob_sreq_send_bytes(x->req, body, len, true);
}

void ob_exchange_reply(ob_exchange_t *x, int status, const char *content_type, const void *body, size_t len) {
  reply_h(x, status, content_type, body, len, NULL, 0);
}

/* ---------------------------------------------------------------- gRPC answers */

int ob_proxy_grpc_code(int status, const char *code) {
  if (code && strcmp(code, "deadline_exceeded") == 0) return 4;
  switch (status) {
  case 401: return 16; /* UNAUTHENTICATED */
  case 403: return 7;  /* PERMISSION_DENIED */
  case 404: return 12; /* UNIMPLEMENTED: no route, no such method */
  case 413:
  case 429: return 8;  /* RESOURCE_EXHAUSTED */
  case 400:
  case 500: return 13; /* INTERNAL */
  case 502:
  case 503:
  case 504: return 14; /* UNAVAILABLE */
  default: return 2;   /* UNKNOWN */
  }
}

static bool is_grpc_content_type(const ob_sreq_t *s) {
  const ob_http_header_t *ct = ob_sreq_header(s, "content-type");
  if (!ct) return false;
  ob_iov_t v = ob_iov_trim(ct->value);
  if (v.len < 16 || !ob_iov_eq_str_nocase(ob_iov(v.base, 16), "application/grpc")) return false;
  return v.len == 16 || v.base[16] == '+' || v.base[16] == ';';
}

static ob_http_header_t grpc_status_header(ob_exchange_t *x, int code) {
  char *v = ob_arena_alloc(x->arena, 12);
  snprintf(v, 12, "%d", code);
  return (ob_http_header_t){OB_IOV_LIT("grpc-status"), ob_iov_str(v)};
}

static ob_http_header_t grpc_message_header(ob_exchange_t *x, const char *message) {
  ob_buf_t m;
  ob_buf_init(&m);
  ob_grpc_percent_encode(&m, ob_iov_str(message ? message : ""));
  ob_iov_t v = ob_arena_dup(x->arena, ob_buf_iov(&m));
  ob_buf_dispose(&m);
  return (ob_http_header_t){OB_IOV_LIT("grpc-message"), v};
}

/* End a gRPC call with a status the gateway chose: Trailers-Only when no
 * head went out yet, else trailers after what the upstream sent. extra
 * (borrowed) goes into the same block; a retry-after in it is repeated as
 * grpc-retry-pushback-ms, which gRPC's own retry policy reads. */
static void grpc_end(ob_exchange_t *x, int code, const char *message, const ob_http_header_t *extra, size_t n_extra) {
  if (!x->req) return;
  ob_http_header_t h[4 + 3 * OB_PROXY_ADMISSION_HEADERS]; /* 3 + 2 per extra + request id + admission */
  size_t k = 0;
  bool trailers_only = !x->answered;
  x->answered = true;
  x->grpc_status = code;
  if (trailers_only) h[k++] = (ob_http_header_t){OB_IOV_LIT("content-type"), OB_IOV_LIT("application/grpc")};
  h[k++] = grpc_status_header(x, code);
  h[k++] = grpc_message_header(x, message);
  for (size_t i = 0; i < n_extra && i < OB_PROXY_ADMISSION_HEADERS; i++) {
    h[k++] = extra[i];
    uint64_t secs;
    if (ob_iov_eq_str_nocase(extra[i].name, "retry-after") && ob_iov_to_u64(extra[i].value, &secs)) {
      char *v = ob_arena_alloc(x->arena, 24);
      snprintf(v, 24, "%llu", (unsigned long long)secs * 1000);
      h[k++] = (ob_http_header_t){OB_IOV_LIT("grpc-retry-pushback-ms"), ob_iov_str(v)};
    }
  }
  if (!trailers_only) {
    ob_sreq_send_trailers(x->req, h, k);
    return;
  }
  h[k++] = (ob_http_header_t){OB_IOV_LIT("x-request-id"), ob_iov_str(x->request_id)};
  k += ob_proxy_admission_headers(x, h + k);
  ob_sreq_send_head(x->req, 200, h, k, -1, true);
}

void ob_exchange_reply_grpc(ob_exchange_t *x, int code, const char *message, const void *msg, size_t len) {
  if (!x->req || x->answered) return;
  if (code != 0) {
    grpc_end(x, code, message, NULL, 0);
    return;
  }
  x->answered = true;
  x->grpc_status = 0;
  ob_http_header_t h[2 + OB_PROXY_ADMISSION_HEADERS];
  size_t k = 0;
  h[k++] = (ob_http_header_t){OB_IOV_LIT("content-type"), OB_IOV_LIT("application/grpc")};
  h[k++] = (ob_http_header_t){OB_IOV_LIT("x-request-id"), ob_iov_str(x->request_id)};
  k += ob_proxy_admission_headers(x, h + k);
  if (ob_sreq_send_head(x->req, 200, h, k, -1, false) != OB_OK) return;
  ob_buf_t b;
  ob_buf_init(&b);
  ob_grpc_append_frame(&b, ob_iov(msg, len));
  ob_sreq_send_bytes(x->req, b.base, b.len, false);
  ob_buf_dispose(&b);
  ob_http_header_t t = grpc_status_header(x, 0);
  ob_sreq_send_trailers(x->req, &t, 1);
}

bool ob_exchange_upstream_available(const ob_exchange_t *x, const char *name) {
  ob_upstream_t *u = name ? ob_net_upstream(x->proxy->net, name) : NULL;
  return u && ob_upstream_available(u);
}

void ob_proxy_reply_error_h(ob_exchange_t *x, int status, const char *message, const char *type, const char *code,
                            const ob_http_header_t *extra, size_t n_extra) {
  if (x->grpc) {
    if (!x->answered) grpc_end(x, ob_proxy_grpc_code(status, code), message, extra, n_extra);
    return;
  }
  ob_buf_t b;
  ob_buf_init(&b);
  ob_http_error_json(&b, status, message, type, code);
  reply_h(x, status, "application/json", b.base, b.len, extra, n_extra);
  ob_buf_dispose(&b);
}

void ob_exchange_reply_error(ob_exchange_t *x, int status, const char *message, const char *type, const char *code) {
  ob_proxy_reply_error_h(x, status, message, type, code, NULL, 0);
}

const ob_config_admission_t *ob_exchange_admission(const ob_exchange_t *x) { return &x->gen->cfg->admission; }

ob_err_t ob_exchange_set_upstream(ob_exchange_t *x, const char *name) {
  ob_upstream_t *u = name ? ob_net_upstream(x->proxy->net, name) : NULL;
  if (!u) return OB_ERR_CONFIG;
  x->upstream = u;
  x->upstream_name = name;
  return OB_OK;
}

void ob_exchange_add_response_header(ob_exchange_t *x, const char *name, ob_iov_t value) {
  if (x->num_resp_extra < 2) x->resp_extra[x->num_resp_extra++] = (ob_http_header_t){ob_iov_str(name), value};
}

size_t ob_exchange_head_headers(ob_exchange_t *x, ob_http_header_t *h) {
  size_t k = 0;
  h[k++] = (ob_http_header_t){OB_IOV_LIT("x-request-id"), ob_iov_str(x->request_id)};
  for (size_t i = 0; i < x->num_resp_extra; i++) h[k++] = x->resp_extra[i];
  return k + ob_proxy_admission_headers(x, h + k);
}

void ob_exchange_replace_header(ob_exchange_t *x, const char *name, ob_iov_t value) {
  if (x->num_replace < 2) x->replace[x->num_replace++] = (ob_http_header_t){ob_iov_str(name), value};
}

void ob_exchange_set_body(ob_exchange_t *x, const ob_iov_t *parts, size_t n) {
  if (n > 4) n = 4;
  memcpy(x->body_parts, parts, n * sizeof *parts);
  x->num_body_parts = n;
}

/* ---------------------------------------------------------------- upstream callbacks */

static void note_grpc_status(ob_exchange_t *x, const ob_http_header_t *h, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint64_t v;
    if (ob_iov_eq_str_nocase(h[i].name, "grpc-status") && ob_iov_to_u64(h[i].value, &v) && v < 100)
      x->grpc_status = (int)v;
  }
}

/* The endpoint's "host:port", copied: net lends it only while the pool
 * lives, and a pool a reload replaced is freed once its last request is
 * done, which may be before this exchange is logged. */
static const char *endpoint_of(ob_exchange_t *x, const ob_ureq_t *u) {
  return ob_arena_strdup(x->arena, ob_ureq_endpoint(u));
}

static void up_head(ob_ureq_t *u, void *data, int status, const ob_http_header_t *headers, size_t n) {
  ob_exchange_t *x = data;
  x->ttfb_us = ob_clock_us();
  x->endpoint = endpoint_of(x, u);
  int64_t cl = -1;
  ob_http_header_t *out = ob_arena_alloc(x->arena, (n + OB_EXCHANGE_HEAD_EXTRA) * sizeof *out);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (ob_iov_eq_str_nocase(headers[i].name, "content-length")) {
      uint64_t v;
      if (!x->response_filter && ob_iov_to_u64(headers[i].value, &v)) cl = (int64_t)v;
      continue;
    }
    if (ob_iov_eq_str_nocase(headers[i].name, "x-request-id")) continue;
    out[k++] = headers[i];
  }
  if (x->route->cls->on_response_head) {
    x->endpoint_index = ob_ureq_endpoint_index(u);
    x->route->cls->on_response_head(x, status, out, k);
  }
  if (x->response_filter) cl = -1; /* the class rewrites the body: its length is not known */
  k += ob_exchange_head_headers(x, out + k);
  x->answered = true;
  /* A head that ends the response (gRPC Trailers-Only) must stay one
   * HEADERS frame with END_STREAM: clients read its grpc-status only there. */
  bool ends = x->req->http_version == 20 && ob_ureq_head_ends(u);
  if (x->grpc) note_grpc_status(x, headers, n);
  ob_sreq_send_head(x->req, status, out, k, cl, ends);
}

static void up_data(ob_ureq_t *u, void *data, struct evbuffer *buf) {
  ob_exchange_t *x = data;
  if (!x->first_byte_us && evbuffer_get_length(buf)) x->first_byte_us = ob_clock_us();
  void (*look)(ob_exchange_t *, const char *, size_t) = x->route->cls->on_response_data;
  if (look) {
    /* Let the route class read the spans in place (usage accounting). */
    struct evbuffer_iovec v[16];
    struct evbuffer_ptr pos;
    evbuffer_ptr_set(buf, &pos, 0, EVBUFFER_PTR_SET);
    for (;;) {
      int nv = evbuffer_peek(buf, -1, &pos, v, 16);
      int used = nv < 16 ? nv : 16;
      size_t seen = 0;
      for (int i = 0; i < used; i++) look(x, v[i].iov_base, v[i].iov_len), seen += v[i].iov_len;
      if (nv <= 16 || evbuffer_ptr_set(buf, &pos, seen, EVBUFFER_PTR_ADD) != 0) break;
    }
  }
  if (x->response_filter) {
    if (!x->filtered) x->filtered = evbuffer_new();
    x->response_filter(x, buf, x->filtered, false);
    ob_sreq_send_data(x->req, x->filtered, false);
  } else {
    ob_sreq_send_data(x->req, buf, false);
  }
  /* A slow reader pauses the upstream instead of growing our buffers. */
  if (!x->paused && ob_sreq_pending(x->req) > x->gen->cfg->net.limits.stream_window_bytes) {
    x->paused = true;
    ob_ureq_pause(u, true);
  }
}

static void up_end(ob_ureq_t *u, void *data, const ob_http_header_t *trailers, size_t n) {
  (void)u;
  ob_exchange_t *x = data;
  x->u = NULL;
  if (x->grpc) note_grpc_status(x, trailers, n);
  if (x->route->cls->on_response_end) x->route->cls->on_response_end(x);
  if (x->response_filter) {
    /* What the filter held back (a partial event, a body it rewrites
     * whole) goes out now. */
    struct evbuffer *rest = evbuffer_new();
    if (!x->filtered) x->filtered = evbuffer_new();
    x->response_filter(x, rest, x->filtered, true);
    ob_sreq_send_data(x->req, x->filtered, false);
    evbuffer_free(rest);
  }
  if (n) ob_sreq_send_trailers(x->req, trailers, n);
  else ob_sreq_send_bytes(x->req, NULL, 0, true);
}

static void up_error(ob_ureq_t *u, void *data, ob_err_t err, int status_hint, bool head_seen) {
  ob_exchange_t *x = data;
  x->u = NULL;
  if (!x->endpoint) x->endpoint = endpoint_of(x, u);
  if (x->route->cls->on_response_error)
    x->route->cls->on_response_error(x, x->gone_status && err == OB_ERR_CONN ? x->gone_status
                                        : status_hint                       ? status_hint
                                                                            : 502,
                                     head_seen);
  if (head_seen && x->grpc) {
    /* gRPC can still say what happened: a status in the trailers. */
    grpc_end(x, 14, "the upstream failed during the call", NULL, 0);
    return;
  }
  if (head_seen) {
    /* Mid-response: the client must see a failure, not a short success. */
    ob_sreq_reset(x->req);
    return;
  }
  if (x->gone_status && err == OB_ERR_CONN) {
    /* The endpoint holding this request's session is gone (MCP: 404 makes
     * the client start a new session). */
    ob_exchange_reply_error(x, x->gone_status, "the session's upstream endpoint is gone; start a new session",
                            NULL, "session_not_found");
    return;
  }
  const char *msg = status_hint == 504 ? "the upstream did not answer in time"
                    : err == OB_ERR_BAD_RESPONSE ? "the upstream sent a malformed response"
                                                 : "the upstream could not be reached";
  ob_exchange_reply_error(x, status_hint ? status_hint : 502, msg, NULL, NULL);
}

static const ob_ureq_handler_t up_handler = {up_head, up_data, up_end, up_error};

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  ob_exchange_t *x = arg;
  if (!x->req) return;
  if (x->u) {
    ob_ureq_cancel(x->u);
    x->u = NULL;
  }
  grpc_end(x, 4, "Deadline Exceeded", NULL, 0);
}

/* The call is about to go upstream: what is left of the client's deadline
 * replaces its grpc-timeout (in h[0..k), where the client's value was
 * copied), and a timer ends the call at the deadline should the upstream
 * not. False when nothing is left (the call was answered). */
static bool grpc_deadline(ob_exchange_t *x, ob_http_header_t *h, size_t k) {
  uint64_t now = ob_clock_us();
  if (now >= x->deadline_us) {
    grpc_end(x, 4, "Deadline Exceeded", NULL, 0);
    return false;
  }
  uint64_t left = x->deadline_us - now;
  char *v = ob_arena_alloc(x->arena, 16);
  size_t len = ob_grpc_format_timeout(left, v);
  for (size_t i = 0; i < k; i++)
    if (ob_iov_eq_str_nocase(h[i].name, "grpc-timeout")) h[i].value = ob_iov(v, len);
  if (!x->deadline_ev) x->deadline_ev = evtimer_new(x->proxy->base, on_deadline, x);
  struct timeval tv = {(time_t)(left / 1000000), (suseconds_t)(left % 1000000)};
  evtimer_add(x->deadline_ev, &tv);
  return true;
}

void ob_proxy_forward(ob_exchange_t *x) {
  ob_sreq_t *s = x->req;
  if (x->gen != x->proxy->gen) {
    /* A reload happened while the request waited: its pool may have been
     * replaced (and freed once idle), so take the one serving the name now. */
    x->upstream = ob_net_upstream(x->proxy->net, x->upstream_name);
    if (!x->upstream) {
      ob_exchange_reply_error(x, 503, "The upstream of this request was removed by a configuration reload.",
                              "server_error", "upstream_removed");
      return;
    }
  }
  const ob_config_upstream_t *ucfg = NULL;
  const ob_config_t *cfg = x->gen->cfg;
  for (size_t i = 0; i < cfg->num_upstreams; i++)
    if (strcmp(cfg->upstreams[i].name, x->upstream_name) == 0) ucfg = &cfg->upstreams[i];
  bool strip_key = ob_tenants_required(x->gen->tenants) || (ucfg && ucfg->credential_header);
  ob_http_header_t *h = ob_arena_alloc(x->arena, (s->num_headers + 5) * sizeof *h);
  size_t k = 0;
  /* x-forwarded-for: every value the client side sent (an edge may split
   * the list over several fields), then the client's address, as nginx's
   * $proxy_add_x_forwarded_for; on a listener clients reach directly
   * ("replace"), the address alone, as nginx's $remote_addr. */
  ob_buf_t b;
  ob_buf_init(&b);
  for (size_t i = 0; i < s->num_headers; i++) {
    ob_iov_t name = s->headers[i].name;
    if (!s->xff_replace && ob_iov_eq_str_nocase(name, "x-forwarded-for") && s->headers[i].value.len)
      ob_buf_append_iov(&b, s->headers[i].value), ob_buf_append_str(&b, ", ");
    if (is_request_hop(name, s) || (strip_key && is_client_credential(name))) continue;
    if (ucfg && ucfg->credential_header && ob_iov_eq_str_nocase(name, ucfg->credential_header)) continue;
    h[k] = s->headers[i];
    for (size_t r = 0; r < x->num_replace; r++)
      if (ob_iov_eq_nocase(name, x->replace[r].name)) h[k].value = x->replace[r].value;
    k++;
  }
  if (ucfg && ucfg->credential_header)
    h[k++] = (ob_http_header_t){ob_iov_str(ucfg->credential_header), ob_iov_str(ucfg->credential_value)};
  ob_buf_append_str(&b, s->peer_addr);
  h[k++] = (ob_http_header_t){OB_IOV_LIT("x-forwarded-for"), ob_arena_dup(x->arena, ob_buf_iov(&b))};
  ob_buf_dispose(&b);
  /* What the connection was, not the :scheme an HTTP/2 client wrote. */
  h[k++] = (ob_http_header_t){OB_IOV_LIT("x-forwarded-proto"), s->tls ? OB_IOV_LIT("https") : OB_IOV_LIT("http")};
  h[k++] = (ob_http_header_t){OB_IOV_LIT("x-request-id"), ob_iov_str(x->request_id)};
  if (x->grpc && x->deadline_us && !grpc_deadline(x, h, k)) return;
  ob_ureq_spec_t spec = {
      .method = s->method,
      .path = x->up_path,
      .authority = OB_IOV_LIT(""),
      .headers = h,
      .num_headers = k,
      .body = x->body_parts,
      .num_body = x->num_body_parts,
      .body_owner = s->body,
      .body_stream = s->body_streaming ? s : NULL,
      .expect_trailers = x->grpc,
      .endpoint = x->pin_endpoint,
      .long_lived = x->long_lived,
  };
  x->u = ob_upstream_request(x->upstream, &spec, &up_handler, x);
}

/* ---------------------------------------------------------------- net handler */

static void on_request(ob_sreq_t *s, void *ctx) {
  ob_proxy_t *p = ctx;
  ob_exchange_t *x = ob_arena_alloc(&s->arena, sizeof *x);
  memset(x, 0, sizeof *x);
  x->proxy = p;
  x->gen = p->gen;
  x->gen->refs++;
  x->req = s;
  x->arena = &s->arena;
  s->handler_data = x;
  const ob_http_header_t *rid = ob_sreq_header(s, "x-request-id");
  if (rid && rid->value.len > 0 && rid->value.len < sizeof x->request_id && is_plain_request_id(rid->value))
    memcpy(x->request_id, rid->value.base, rid->value.len), x->request_id[rid->value.len] = '\0';
  else make_request_id(p, x->request_id);
  x->body_parts[0] = ob_buf_iov(&s->body->buf);
  x->num_body_parts = s->body->buf.len ? 1 : 0;
  x->grpc_status = -1;
  if (is_grpc_content_type(s)) {
    if (s->http_version != 20) {
      ob_exchange_reply_error(x, 505,
                              "gRPC needs HTTP/2 (h2 over TLS, or h2c with prior knowledge); this request came over "
                              "HTTP/1.x.",
                              "invalid_request_error", "grpc_needs_http2");
      return;
    }
    x->grpc = true;
    const ob_http_header_t *gt = ob_sreq_header(s, "grpc-timeout");
    uint64_t us;
    if (gt && ob_http_parse_grpc_timeout(ob_iov_trim(gt->value), &us)) x->deadline_us = s->start_us + us;
  }

  x->route = x->gen->find(x->gen->table, s->path);
  if (!x->route) {
    ob_exchange_reply_error(x, 404, "no route for this path", NULL, NULL);
    return;
  }
  x->up_path = s->path;
  if (x->route->rewrite.base) {
    ob_buf_t b;
    ob_buf_init(&b);
    ob_buf_append_iov(&b, x->route->rewrite);
    ob_buf_append(&b, s->path.base + x->route->prefix.len, s->path.len - x->route->prefix.len);
    x->up_path = ob_arena_dup(x->arena, ob_buf_iov(&b));
    ob_buf_dispose(&b);
  }
  if (!x->route->cls->no_auth && !ob_proxy_identify(x)) return;
  if (x->route->tenant_allowed && (!x->who.tenant || !x->route->tenant_allowed[x->who.tenant_index])) {
    ob_exchange_reply_error(x, 403, "This key's tenant may not use this route.", "permission_error",
                            "route_not_allowed");
    return;
  }
  if (x->route->upstream) ob_exchange_set_upstream(x, x->route->upstream);
  x->prepared = true;
  ob_err_t rv = x->route->cls->prepare(x, x->route->class_data);
  if (rv != OB_OK) {
    ob_exchange_reply_error(x, 500, "the gateway could not prepare this request", NULL, NULL);
    return;
  }
  if (x->answered || x->parked) return;
  if (!x->upstream) {
    ob_exchange_reply_error(x, 404, "no upstream for this request", NULL, NULL);
    return;
  }
  ob_proxy_admit(x);
}

static void on_writable(ob_sreq_t *s, void *ctx) {
  (void)ctx;
  ob_exchange_t *x = s->handler_data;
  if (x && x->paused && x->u) {
    x->paused = false;
    ob_ureq_pause(x->u, false);
  }
}

static void on_close(ob_sreq_t *s, bool completed, void *ctx) {
  (void)ctx;
  ob_exchange_t *x = s->handler_data;
  if (!x) return;
  if (x->deadline_ev) event_free(x->deadline_ev);
  x->deadline_ev = NULL;
  if (x->u) {
    ob_ureq_cancel(x->u);
    x->u = NULL;
  }
  ob_proxy_release(x, completed);
  if (x->prepared && x->route->cls->on_finish) x->route->cls->on_finish(x, completed);
  if (x->filtered) evbuffer_free(x->filtered);
  x->filtered = NULL;
  uint64_t now = ob_clock_us();
  ob_proxy_metrics_record(x->proxy, x, s, now);
  if (x->proxy->ledger) ob_ledger_record(x->proxy->ledger, x, s, now, completed);
  log_line(x, s, completed, now);
  if (ob_log_pending() && x->proxy->log_flush && !evtimer_pending(x->proxy->log_flush, NULL)) {
    /* Access lines go out within 10 ms, batched under load. */
    static const struct timeval soon = {0, 10000};
    evtimer_add(x->proxy->log_flush, &soon);
  }
  x->req = NULL;
  s->handler_data = NULL;
  ob_proxy_gen_release(x->gen);
  x->gen = NULL;
}

/* gRPC calls on route classes that stream get on_request before the body;
 * anything else (say, a JSON request sent to a grpc route by mistake) is
 * buffered and answered like any other request. */
static bool stream_body(const ob_sreq_t *s, void *ctx) {
  ob_proxy_t *p = ctx;
  const ob_route_t *r = p->gen->find(p->gen->table, s->path);
  return r && r->cls->stream_body && is_grpc_content_type(s);
}

static const ob_sreq_handler_t handler = {stream_body, on_request, on_writable, on_close};

const ob_sreq_handler_t *ob_proxy_handler(void) { return &handler; }

/* ---------------------------------------------------------------- the proxy */

static ob_proxy_gen_t *gen_new(const ob_proxy_gen_spec_t *g) {
  ob_proxy_gen_t *gen = ob_xcalloc(1, sizeof *gen);
  gen->refs = 1;
  gen->cfg = ob_config_acquire(g->cfg);
  gen->tenants = g->tenants;
  gen->find = g->find;
  gen->table = g->table;
  gen->dispose = g->dispose;
  gen->owner = g->owner;
  gen->pool_of = ob_xcalloc(g->cfg->num_upstreams + 1, sizeof *gen->pool_of);
  gen->tstate_of = ob_xcalloc(g->cfg->num_tenants + 1, sizeof *gen->tstate_of);
  return gen;
}

void ob_proxy_gen_release(ob_proxy_gen_t *g) {
  if (!g || --g->refs > 0) return;
  if (g->dispose) g->dispose(g->owner);
  free(g->pool_of);
  free(g->tstate_of);
  ob_config_release(g->cfg);
  free(g);
}

ob_proxy_t *ob_proxy_create_worker(ob_proxy_t *first, const ob_proxy_gen_spec_t *g) {
  ob_proxy_t *p = ob_xcalloc(1, sizeof *p);
  p->gen = gen_new(g);
  p->cfg = p->gen->cfg;
  /* Each worker has its own seed, so ids stay unique across threads. */
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0 || read(fd, &p->rid_seed, sizeof p->rid_seed) != sizeof p->rid_seed) p->rid_seed = ob_clock_us();
  if (fd >= 0) close(fd);
  pthread_mutex_init(&p->metrics_mu, NULL);
  ob_proxy_admission_share(p, first);
  if (first) {
    p->ledger = first->ledger;
    p->budgets = first->budgets;
  }
  return p;
}

ob_proxy_t *ob_proxy_create(const ob_proxy_gen_spec_t *g) { return ob_proxy_create_worker(NULL, g); }

void ob_proxy_set_ledger(ob_proxy_t *p, ob_ledger_t *l) { p->ledger = l; }

void ob_proxy_set_budgets(ob_proxy_t *p, ob_budgets_t *b) { p->budgets = b; }

void ob_proxy_loop_begin(ob_proxy_t *p, pthread_t thread) {
  ob_proxy_lock(p);
  p->thread = thread;
  p->thread_set = true;
  p->loop_running = true;
  ob_proxy_unlock(p);
}

void ob_proxy_loop_end(ob_proxy_t *p) {
  ob_proxy_lock(p);
  p->loop_running = false;
  ob_proxy_unlock(p);
  ob_proxy_drain_inbox(p); /* calls posted before the loop stopped still run */
  ob_log_flush();          /* this thread's buffered access lines */
  ob_proxy_lock(p);
  p->loop_done = true;     /* from here on, others may touch this worker */
  pthread_cond_broadcast(&p->sh->called);
  ob_proxy_unlock(p);
}

void ob_proxy_run_on(ob_proxy_t *p, void (*fn)(void *arg), void *arg) {
  ob_proxy_lock(p);
  bool self = pthread_equal(p->thread, pthread_self());
  if (!p->loop_running || self) {
    /* Not started, or over (a loop never starts again): run here, but only
     * once the worker's thread has left its loop for good. */
    while (!self && p->thread_set && !p->loop_done) pthread_cond_wait(&p->sh->called, &p->sh->mu);
    ob_proxy_unlock(p);
    fn(arg);
    return;
  }
  ob_proxy_call_t c = {.fn = fn, .arg = arg};
  ob_proxy_call_t **tail = &p->calls;
  while (*tail) tail = &(*tail)->next;
  *tail = &c;
  ob_proxy_wake(p);
  while (!c.done) pthread_cond_wait(&p->sh->called, &p->sh->mu);
  ob_proxy_unlock(p);
}

static void on_log_flush(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what, (void)arg;
  ob_log_flush();
}

void ob_proxy_attach(ob_proxy_t *p, ob_net_t *net, struct event_base *base) {
  p->net = net;
  p->base = base;
  p->log_flush = evtimer_new(base, on_log_flush, p);
  ob_proxy_admission_init(p, base);
  if (p->index == 0) ob_proxy_capacity_bind(p);
  ob_proxy_capacity_attach(p);
}

void ob_proxy_reload(ob_proxy_t *p, const ob_proxy_gen_spec_t *g) {
  ob_proxy_gen_t *gen = gen_new(g);
  ob_proxy_lock(p);
  ob_proxy_gen_bind(p, gen);
  ob_proxy_unlock(p);
  ob_proxy_gen_t *old = p->gen;
  p->gen = gen;
  p->cfg = gen->cfg;
  ob_proxy_gen_release(old);
  ob_proxy_admission_changed(p);
  if (p->index == 0) ob_proxy_capacity_bind(p);
  ob_proxy_capacity_attach(p);
  ob_fleet_config_changed(p);
}

void ob_proxy_destroy(ob_proxy_t *p) {
  if (!p) return;
  ob_log_flush();
  if (p->log_flush) event_free(p->log_flush);
  ob_proxy_admission_dispose(p);
  ob_proxy_gen_release(p->gen);
  pthread_mutex_destroy(&p->metrics_mu);
  free(p);
}
