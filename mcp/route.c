/*
 * route.c: the mcp route class. Per request it
 *  - unwraps the Mcp-Session-Id the gateway issued and pins the request to
 *    the endpoint that created the session (404 when unreadable or gone),
 *  - on POST, inspects the JSON-RPC body: records methods and tools for the
 *    log line, answers tools/call for tools outside the tenant's mcp_tools
 *    list itself, and arms the tools/list result filter when the tenant has
 *    a list for this upstream,
 *  - on GET (the server's event stream), skips admission, counts the stream
 *    against the tenant's max_streams and lifts the idle timeout,
 *  - on the response, wraps the upstream's Mcp-Session-Id.
 */
#include "mcp.h"

#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>

struct ob_mcp {
  ob_config_t *cfg;  /* counted */
  uint8_t key[32];
  uint32_t *streams; /* open GET streams by tenant index; [num_tenants] = anonymous */
};

enum { MODE_PASS, MODE_JSON, MODE_SSE };

typedef struct mcp_x {
  ob_mcp_t *m;
  bool stream_counted;
  size_t stream_slot;
  bool filtering;
  int mode;
  ob_mcp_filter_t filter;
  ob_mcp_sse_t sse;
  ob_buf_t json;
} mcp_x_t;

/* Largest SSE event or JSON body the tools/list filter holds. */
#define FILTER_MAX (8u << 20)

ob_mcp_t *ob_mcp_create(ob_config_t *cfg) { return ob_mcp_create_after(cfg, NULL); }

ob_mcp_t *ob_mcp_create_after(ob_config_t *cfg, const ob_mcp_t *prev) {
  ob_mcp_t *m = ob_xcalloc(1, sizeof *m);
  m->cfg = ob_config_acquire(cfg);
  if (cfg->mcp_session_secret)
    SHA256((const unsigned char *)cfg->mcp_session_secret, strlen(cfg->mcp_session_secret), m->key);
  else if (prev)
    memcpy(m->key, prev->key, sizeof m->key);
  else if (RAND_bytes(m->key, sizeof m->key) != 1)
    abort();
  m->streams = ob_xcalloc(cfg->num_tenants + 1, sizeof *m->streams);
  return m;
}

void ob_mcp_destroy(ob_mcp_t *m) {
  if (!m) return;
  OPENSSL_cleanse(m->key, sizeof m->key);
  ob_config_release(m->cfg);
  free(m->streams);
  free(m);
}

/* ---------------------------------------------------------------- answers */

static void append_rpc_error(ob_buf_t *b, const char *id_json, int code, const char *message) {
  ob_buf_printf(b, "{\"jsonrpc\":\"2.0\",\"id\":%s,\"error\":{\"code\":%d,\"message\":", id_json ? id_json : "null",
                code);
  ob_buf_append_json_str(b, ob_iov_str(message));
  ob_buf_append_str(b, "}}");
}

static void reply_rpc_error(ob_exchange_t *x, int status, const char *id_json, int code, const char *message) {
  ob_buf_t b;
  ob_buf_init(&b);
  append_rpc_error(&b, id_json, code, message);
  ob_exchange_reply(x, status, "application/json", b.base, b.len);
  ob_buf_dispose(&b);
}

static char *id_text(const cJSON *id) { return id ? cJSON_PrintUnformatted(id) : NULL; }

/* ---------------------------------------------------------------- helpers */

static const ob_config_mcp_tools_t *tools_for(const ob_exchange_t *x) {
  const ob_config_tenant_t *t = x->who.tenant;
  if (!t || !x->upstream_name) return NULL;
  for (size_t i = 0; i < t->num_mcp_tools; i++)
    if (strcmp(t->mcp_tools[i].upstream, x->upstream_name) == 0) return &t->mcp_tools[i];
  return NULL;
}

static mcp_x_t *state(ob_exchange_t *x, ob_mcp_t *m) {
  mcp_x_t *st = ob_arena_alloc(x->arena, sizeof *st);
  memset(st, 0, sizeof *st);
  st->m = m;
  ob_buf_init(&st->json);
  ob_mcp_sse_init(&st->sse, FILTER_MAX);
  x->class_state = st;
  return st;
}

/* Unwrap the client's session id and pin the request to its endpoint.
 * False when the request was answered (404). */
static bool route_session(ob_exchange_t *x, ob_mcp_t *m) {
  const ob_http_header_t *h = ob_sreq_header(x->req, "mcp-session-id");
  if (!h) return true;
  ob_buf_t sid;
  ob_buf_init(&sid);
  uint16_t ep = 0;
  bool ok = ob_mcp_session_unwrap(m->key, ob_iov_trim(h->value), &ep, &sid);
  ob_upstream_t *up = x->upstream;
  if (!ok || !up || ep >= ob_upstream_num_endpoints(up)) {
    ob_buf_dispose(&sid);
    reply_rpc_error(x, 404, NULL, -32001, "Session not found; initialize a new session");
    return false;
  }
  ob_exchange_replace_header(x, "mcp-session-id", ob_arena_dup(x->arena, ob_buf_iov(&sid)));
  ob_buf_dispose(&sid);
  x->pin_endpoint = (size_t)ep + 1;
  x->gone_status = 404;
  return true;
}

/* "mcp=initialize" or "mcp=tools/list,tools/call:echo": the log line's
 * record of what was asked. */
static void note(ob_exchange_t *x, const ob_mcp_body_t *b) {
  ob_buf_t n;
  ob_buf_init(&n);
  for (size_t i = 0; i < b->n; i++) {
    const ob_mcp_msg_t *msg = &b->msgs[i];
    if (!msg->method) continue;
    ob_buf_append_str(&n, n.len ? "," : "mcp=");
    ob_buf_append_str(&n, msg->method);
    if (msg->tool) ob_buf_append(&n, ":", 1), ob_buf_append_str(&n, msg->tool);
  }
  if (n.len) {
    /* Log lines stay one line and printable whatever the client sent. */
    for (size_t i = 0; i < n.len; i++)
      if ((unsigned char)n.base[i] < 0x21 || (unsigned char)n.base[i] > 0x7e) n.base[i] = '?';
    ob_iov_t v = ob_arena_dup(x->arena, ob_buf_iov(&n));
    char *s = ob_arena_alloc(x->arena, v.len + 1);
    memcpy(s, v.base, v.len);
    s[v.len] = '\0';
    x->note = s;
  }
  ob_buf_dispose(&n);
}

/* A body with tools/call requests for tools the tenant may not use is
 * answered here and never reaches the server: the denied calls get a
 * -32602 error with their id; in a batch, the other requests get -32600
 * (the batch is not split, since the server's answers could not be merged
 * with ours in order). */
static bool deny_tools(ob_exchange_t *x, const ob_mcp_body_t *b, const ob_config_mcp_tools_t *allow) {
  bool any = false;
  for (size_t i = 0; i < b->n && !any; i++)
    any = b->msgs[i].tool && !ob_mcp_tool_allowed(allow, b->msgs[i].tool);
  if (!any) return false;
  ob_buf_t out;
  ob_buf_init(&out);
  if (b->batch) ob_buf_append(&out, "[", 1);
  size_t k = 0;
  for (size_t i = 0; i < b->n; i++) {
    const ob_mcp_msg_t *msg = &b->msgs[i];
    if (!msg->method || !msg->id) continue; /* notifications get no answer */
    char *id = id_text(msg->id);
    char text[320];
    int code = -32600;
    if (msg->tool && !ob_mcp_tool_allowed(allow, msg->tool)) {
      snprintf(text, sizeof text, "Tool %.200s is not allowed for this API key", msg->tool);
      code = -32602;
    } else {
      snprintf(text, sizeof text, "Not forwarded: this batch calls a tool this API key may not use");
    }
    if (k++) ob_buf_append(&out, ",", 1);
    append_rpc_error(&out, id, code, text);
    free(id);
  }
  if (b->batch) ob_buf_append(&out, "]", 1);
  ob_exchange_reply(x, 200, "application/json", out.base, out.len);
  ob_buf_dispose(&out);
  return true;
}

static void arm_filter(ob_exchange_t *x, mcp_x_t *st, const ob_mcp_body_t *b, const ob_config_mcp_tools_t *allow) {
  for (size_t i = 0; i < b->n; i++) {
    const ob_mcp_msg_t *msg = &b->msgs[i];
    if (!msg->method || !msg->id || strcmp(msg->method, "tools/list") != 0) continue;
    st->filter.ids = ob_xrealloc(st->filter.ids, (st->filter.nids + 1) * sizeof *st->filter.ids);
    st->filter.ids[st->filter.nids++] = id_text(msg->id);
  }
  if (!st->filter.nids) return;
  st->filter.allow = allow;
  st->filtering = true;
  x->response_filter = NULL; /* set once the response's content type is known */
}

/* ---------------------------------------------------------------- the class */

static void filter_body(ob_exchange_t *x, struct evbuffer *in, struct evbuffer *out, bool end) {
  mcp_x_t *st = x->class_state;
  ob_buf_t o;
  ob_buf_init(&o);
  struct evbuffer_iovec v[16];
  size_t len = evbuffer_get_length(in);
  while (len > 0) {
    int nv = evbuffer_peek(in, -1, NULL, v, 16);
    size_t took = 0;
    for (int i = 0; i < nv && i < 16; i++) {
      if (st->mode == MODE_SSE) {
        ob_mcp_sse_feed(&st->sse, &st->filter, v[i].iov_base, v[i].iov_len, &o);
      } else if (st->json.len + v[i].iov_len <= FILTER_MAX) {
        ob_buf_append(&st->json, v[i].iov_base, v[i].iov_len);
      }
      took += v[i].iov_len;
    }
    evbuffer_drain(in, took);
    len = evbuffer_get_length(in);
  }
  if (end) {
    if (st->mode == MODE_SSE) {
      ob_mcp_sse_finish(&st->sse, &st->filter, &o);
    } else if (!ob_mcp_filter_json(&st->filter, st->json.base, st->json.len, &o)) {
      ob_buf_append_iov(&o, ob_buf_iov(&st->json));
    }
  }
  if (o.len) evbuffer_add(out, o.base, o.len);
  ob_buf_dispose(&o);
}

static void on_response_head(ob_exchange_t *x, int status, ob_http_header_t *h, size_t n) {
  (void)status;
  mcp_x_t *st = x->class_state;
  if (!st) return;
  for (size_t i = 0; i < n; i++) {
    if (ob_iov_eq_str_nocase(h[i].name, "mcp-session-id")) {
      ob_buf_t w;
      ob_buf_init(&w);
      if (ob_mcp_session_wrap(st->m->key, (uint16_t)x->endpoint_index, ob_iov_trim(h[i].value), &w))
        h[i].value = ob_arena_dup(x->arena, ob_buf_iov(&w));
      ob_buf_dispose(&w);
    } else if (st->filtering && ob_iov_eq_str_nocase(h[i].name, "content-type")) {
      ob_iov_t ct = ob_iov_trim(h[i].value);
      if (ct.len >= 17 && ob_iov_eq_str_nocase(ob_iov(ct.base, 17), "text/event-stream")) st->mode = MODE_SSE;
      else if (ct.len >= 16 && ob_iov_eq_str_nocase(ob_iov(ct.base, 16), "application/json")) st->mode = MODE_JSON;
    }
  }
  if (st->filtering && st->mode != MODE_PASS) x->response_filter = filter_body;
}

static ob_err_t prepare(ob_exchange_t *x, void *data) {
  ob_mcp_t *m = data;
  if (!x->upstream) return OB_ERR_CONFIG;
  mcp_x_t *st = state(x, m);
  if (!route_session(x, m)) return OB_OK;
  ob_iov_t method = x->req->method;

  if (ob_iov_eq(method, OB_IOV_LIT("GET"))) {
    /* The server's event stream: long-lived, not work in the pool, but
     * bounded per tenant so one tenant cannot hold every connection. */
    size_t slot = x->who.tenant ? x->who.tenant_index : m->cfg->num_tenants;
    uint32_t max = x->who.tenant ? x->who.tenant->max_streams : 0;
    if (max && m->streams[slot] >= max) {
      char msg[160];
      snprintf(msg, sizeof msg, "Too many open MCP event streams for this tenant (max_streams %u).", max);
      ob_exchange_reply_error(x, 429, msg, "rate_limit_error", "too_many_streams");
      return OB_OK;
    }
    m->streams[slot]++;
    st->stream_counted = true;
    st->stream_slot = slot;
    x->not_admitted = true;
    x->stream_cap = max; /* cluster mode: the cap is also checked fleet-wide */
    x->long_lived = true;
    x->note = "mcp=GET-stream";
    return OB_OK;
  }
  if (!ob_iov_eq(method, OB_IOV_LIT("POST"))) return OB_OK; /* DELETE ends a session; others: the server answers */

  ob_iov_t body = ob_buf_iov(&x->req->body->buf);
  ob_mcp_body_t b;
  int rc = ob_mcp_inspect(body.base, body.len, &b);
  if (rc != 0) {
    char msg[200];
    if (rc == -32700)
      snprintf(msg, sizeof msg, "Parse error: the body is not JSON%s%s", b.why ? ": " : "", b.why ? b.why : "");
    else if (b.why)
      snprintf(msg, sizeof msg, "Invalid Request: %s (the server could read another member than the gateway)", b.why);
    else
      snprintf(msg, sizeof msg, "Invalid Request: expected a JSON-RPC message or a non-empty array of them");
    reply_rpc_error(x, 400, NULL, rc, msg);
    return OB_OK;
  }
  note(x, &b);
  const ob_config_mcp_tools_t *allow = tools_for(x);
  if (allow) {
    if (!deny_tools(x, &b, allow)) arm_filter(x, st, &b, allow);
  }
  ob_mcp_body_dispose(&b);
  return OB_OK;
}

static void on_finish(ob_exchange_t *x, bool completed) {
  (void)completed;
  mcp_x_t *st = x->class_state;
  if (!st) return;
  if (st->stream_counted) st->m->streams[st->stream_slot]--;
  st->stream_counted = false;
  ob_mcp_filter_dispose(&st->filter);
  ob_mcp_sse_dispose(&st->sse);
  ob_buf_dispose(&st->json);
}

const ob_route_class_t ob_mcp_class = {
    .name = "mcp",
    .prepare = prepare,
    .admitted = true,
    .on_response_head = on_response_head,
    .on_finish = on_finish,
};
