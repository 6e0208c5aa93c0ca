/*
 * client_h1.c: HTTP/1.1 client connections. Reads request heads and bodies
 * with the http module's codec, hands complete requests to the handler one
 * at a time (pipelined requests wait in the input buffer, so answers go out
 * in order), and frames responses (Content-Length, chunked, or close
 * delimited for HTTP/1.0).
 *
 * Completion and resets are never acted on inside the handler's own call:
 * they schedule the connection's `flush` event, which calls on_close and then
 * reads the next request. This keeps the handler free of re-entrancy.
 *
 * Connection states:
 *   IDLE     no request bytes yet (keep-alive timeout runs)
 *   HEAD     part of a head arrived (header timeout runs)
 *   BODY     head parsed, body arriving (idle timeout runs, and the body
 *            as a whole must be in within client_body_ms)
 *   WAIT     request handed to the handler, response in progress
 *   CLOSING  response done or error answered; close once output is flushed
 */
#include "net_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

typedef enum { H1_IDLE, H1_HEAD, H1_BODY, H1_WAIT, H1_CLOSING } h1_state_t;

typedef struct h1_req {
  ob_sreq_t s; /* first: ob_sreq_t * and h1_req_t * convert */
  struct h1_conn *h;
  bool no_body; /* the response has no content (ob_http_response_bodyless) */
  bool chunked_out;
  bool head_sent;
  bool complete;
  bool reset;
  bool dispatched;
  bool above_window;
} h1_req_t;

typedef struct h1_conn {
  ob_client_conn_t *c;
  h1_state_t state;
  h1_req_t *cur;
  ob_h1_body_t body_kind;
  uint64_t body_remaining;
  ob_h1_chunked_t chunked;
  uint64_t body_deadline_ms; /* BODY: the whole body must be in by then */
  bool keep_alive;
  struct event *timer;
  struct event *flush;
} h1_conn_t;

static const ob_sreq_ops_t h1_ops;
static void process(h1_conn_t *h);

static ob_net_config_t *cfg_of(h1_conn_t *h) { return h->c->net->cfg; }

/* ms: a configured duration (see ob_net_arm). */
static void arm_timer(h1_conn_t *h, uint32_t ms) { ob_net_arm(h->c->net, h->timer, ms); }

static void schedule_flush(h1_conn_t *h) { event_active(h->flush, EV_TIMEOUT, 0); }

/* Waiting for body bytes: idle_ms since the last ones, but never past the
 * body's deadline, so a body trickled a byte at a time still ends. */
static void arm_body_timer(h1_conn_t *h) {
  uint64_t now = ob_clock_ms();
  uint64_t left = h->body_deadline_ms > now ? h->body_deadline_ms - now : 0;
  uint32_t idle = cfg_of(h)->timeouts.idle_ms;
  if (left < idle) {
    struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
    evtimer_add(h->timer, &tv);
  } else {
    arm_timer(h, idle);
  }
}

/* Free the connection. A request the handler holds is closed first. */
static void h1_destroy(h1_conn_t *h) {
  ob_client_conn_t *c = h->c;
  h1_req_t *r = h->cur;
  h->cur = NULL;
  if (r) {
    if (r->dispatched) c->net->handler->on_close(&r->s, r->complete && !r->reset, c->net->ctx);
    ob_net_sreq_dispose(&r->s);
    free(r);
  }
  event_free(h->timer);
  event_free(h->flush);
  free(h);
  c->proto_state = NULL;
  ob_net_client_release(c);
}

void ob_net_h1_free(ob_client_conn_t *c) { h1_destroy(c->proto_state); }

/* Lingering close: stop answering, flush what is queued, half-close, and
 * read (discarding) for a moment so the client sees our last response
 * instead of a reset caused by its own unread bytes. */
static void start_closing(h1_conn_t *h) {
  h->state = H1_CLOSING;
  h->keep_alive = false;
  ob_sock_setwatermark(h->c->sock, EV_WRITE, 0, 0);
  evbuffer_drain(ob_sock_input(h->c->sock), evbuffer_get_length(ob_sock_input(h->c->sock)));
  arm_timer(h, 2000);
  if (evbuffer_get_length(ob_sock_output(h->c->sock)) == 0) {
    if (h->c->tls) {
      h1_destroy(h);
      return;
    }
    shutdown(ob_sock_fd(h->c->sock), SHUT_WR);
  }
}

/* Answer an error before any handler saw the request, then close. */
static void reply_error(h1_conn_t *h, int status, const char *why) {
  ob_buf_t body, head;
  ob_buf_init(&body);
  ob_buf_init(&head);
  ob_http_error_json(&body, status, why, NULL, NULL);
  ob_h1_append_status_line(&head, status);
  ob_buf_printf(&head, "content-type: application/json\r\ncontent-length: %zu\r\nconnection: close\r\n\r\n", body.len);
  struct evbuffer *out = ob_sock_output(h->c->sock);
  evbuffer_add(out, head.base, head.len);
  evbuffer_add(out, body.base, body.len);
  ob_buf_dispose(&body);
  ob_buf_dispose(&head);
  ob_log_info("%s - \"-\" %d %s", h->c->peer, status, why);
  if (h->cur) {
    ob_net_sreq_dispose(&h->cur->s);
    free(h->cur);
    h->cur = NULL;
  }
  start_closing(h);
}

static int status_for(int err) {
  switch (err) {
  case OB_ERR_HEADERS_TOO_LARGE: return 431;
  case OB_ERR_NOT_IMPLEMENTED: return 501;
  case OB_ERR_TOO_LARGE: return 413;
  default: return 400;
  }
}

/* Copy the parsed head into the request's arena; the input buffer is
 * drained right after. */
static bool adopt_head(h1_conn_t *h, const ob_h1_request_t *rq, const char **why) {
  h1_req_t *r = ob_xcalloc(1, sizeof *r);
  r->h = h;
  ob_net_sreq_init(&r->s, h->c, &h1_ops, rq->minor_version == 0 ? 10 : 11);
  h->cur = r;
  ob_arena_t *a = &r->s.arena;
  r->s.method = ob_arena_dup(a, rq->method);
  ob_iov_t target = rq->target;
  ob_iov_t authority = rq->host;
  if (ob_iov_eq(rq->method, OB_IOV_LIT("CONNECT"))) {
    *why = "CONNECT is not supported";
    return false;
  }
  if (target.len && target.base[0] != '/') {
    /* absolute-form (RFC 9112 3.2.2): the target's authority wins over Host */
    ob_iov_t rest;
    if (ob_iov_starts_with(target, OB_IOV_LIT("http://"))) rest = ob_iov(target.base + 7, target.len - 7);
    else if (ob_iov_starts_with(target, OB_IOV_LIT("https://"))) rest = ob_iov(target.base + 8, target.len - 8);
    else {
      *why = "request target must be origin-form or absolute-form";
      return false;
    }
    const char *slash = memchr(rest.base, '/', rest.len);
    authority = ob_iov(rest.base, slash ? (size_t)(slash - rest.base) : rest.len);
    target = slash ? ob_iov(slash, rest.len - (size_t)(slash - rest.base)) : OB_IOV_LIT("/");
    if (authority.len == 0) {
      *why = "empty authority in request target";
      return false;
    }
  }
  r->s.path = ob_arena_dup(a, target);
  r->s.authority = ob_arena_dup(a, authority);
  r->s.headers = ob_arena_alloc(a, (rq->num_headers ? rq->num_headers : 1) * sizeof(ob_http_header_t));
  size_t n = 0;
  for (size_t i = 0; i < rq->num_headers; i++) {
    ob_iov_t name = rq->headers[i].name;
    /* Framing and Host are the connection's business; the rest travels. */
    if (ob_iov_eq_str_nocase(name, "host") || ob_iov_eq_str_nocase(name, "content-length")) continue;
    r->s.headers[n].name = ob_arena_dup(a, name);
    r->s.headers[n].value = ob_arena_dup(a, rq->headers[i].value);
    n++;
  }
  r->s.num_headers = n;
  return true;
}

static void dispatch(h1_conn_t *h) {
  h->state = H1_WAIT;
  evtimer_del(h->timer);
  h->cur->dispatched = true;
  ob_client_conn_t *c = h->c;
  c->net->handler->on_request(&h->cur->s, c->net->ctx);
}

/* Move body bytes from the input into the request body. Returns true when
 * the body is complete; false when more is needed or an error was answered
 * (then h->state is CLOSING). */
static bool read_body(h1_conn_t *h) {
  struct evbuffer *in = ob_sock_input(h->c->sock);
  ob_buf_t *body = &h->cur->s.body->buf;
  uint64_t max = cfg_of(h)->limits.max_body_bytes;
  if (h->body_kind == OB_H1_BODY_LENGTH) {
    size_t avail = evbuffer_get_length(in);
    size_t take = avail < h->body_remaining ? avail : (size_t)h->body_remaining;
    if (take) {
      evbuffer_remove(in, ob_buf_reserve(body, take), take);
      body->len += take;
      h->body_remaining -= take;
    }
    return h->body_remaining == 0;
  }
  /* chunked: walk the contiguous segments in place */
  while (!h->chunked.done && evbuffer_get_length(in) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
    size_t data_len = 0;
    const char *why = NULL;
    int n = ob_h1_chunked_step(&h->chunked, v.iov_base, v.iov_len, &data_len, &why);
    if (n < 0) {
      reply_error(h, 400, why ? why : "malformed chunked body");
      return false;
    }
    if (data_len) {
      if (body->len + data_len > max) {
        reply_error(h, 413, "request body is larger than the limit");
        return false;
      }
      ob_buf_append(body, v.iov_base, data_len);
    }
    evbuffer_drain(in, (size_t)n);
    if (n == 0) break;
  }
  return h->chunked.done;
}

static void process(h1_conn_t *h) {
  ob_client_conn_t *c = h->c;
  struct evbuffer *in = ob_sock_input(c->sock);
  ob_net_config_t *cfg = cfg_of(h);
  for (;;) {
    switch (h->state) {
    case H1_IDLE:
    case H1_HEAD: {
      size_t len = evbuffer_get_length(in);
      if (len == 0) return;
      if (c->draining) {
        start_closing(h);
        return;
      }
      size_t want = len < (size_t)cfg->limits.max_header_bytes + 1 ? len : (size_t)cfg->limits.max_header_bytes + 1;
      const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)want);
      ob_http_header_t headers[OB_HTTP_MAX_HEADERS];
      ob_h1_request_t rq;
      const char *why = NULL;
      int n = ob_h1_parse_request(buf, want, &rq, headers, OB_HTTP_MAX_HEADERS, cfg->limits.max_header_bytes, &why);
      if (n == OB_ERR_INCOMPLETE) {
        if (h->state == H1_IDLE) {
          h->state = H1_HEAD;
          arm_timer(h, cfg->timeouts.client_header_ms);
        }
        return;
      }
      if (n < 0) {
        reply_error(h, status_for(n), why ? why : "malformed request");
        return;
      }
      if (!adopt_head(h, &rq, &why)) {
        reply_error(h, ob_iov_eq(rq.method, OB_IOV_LIT("CONNECT")) ? 501 : 400, why);
        return;
      }
      h->keep_alive = rq.keep_alive;
      h->body_kind = rq.body;
      evbuffer_drain(in, (size_t)n);
      if (rq.body == OB_H1_BODY_LENGTH && rq.content_length > cfg->limits.max_body_bytes) {
        reply_error(h, 413, "request body is larger than the limit");
        return;
      }
      if (rq.body == OB_H1_BODY_NONE || (rq.body == OB_H1_BODY_LENGTH && rq.content_length == 0)) {
        dispatch(h);
        return;
      }
      if (rq.body == OB_H1_BODY_LENGTH) {
        h->body_remaining = rq.content_length;
        ob_buf_reserve(&h->cur->s.body->buf, (size_t)rq.content_length);
      } else {
        ob_h1_chunked_init(&h->chunked);
      }
      if (rq.expect_continue && rq.minor_version == 1 && evbuffer_get_length(in) == 0)
        evbuffer_add(ob_sock_output(c->sock), "HTTP/1.1 100 Continue\r\n\r\n", 25);
      h->state = H1_BODY;
      h->body_deadline_ms = ob_clock_ms() + cfg->timeouts.client_body_ms;
      arm_body_timer(h);
      break;
    }
    case H1_BODY:
      if (!read_body(h)) {
        if (h->state == H1_BODY) arm_body_timer(h);
        return;
      }
      dispatch(h);
      return;
    case H1_WAIT:
      /* Pipelined bytes wait until the current response is done. */
      return;
    case H1_CLOSING:
      evbuffer_drain(in, evbuffer_get_length(in));
      return;
    }
  }
}

/* ---------------------------------------------------------------- events */

static void on_read(ob_sock_t *sock, void *arg) {
  (void)sock;
  process(arg);
}

static void on_write(ob_sock_t *sock, void *arg) {
  h1_conn_t *h = arg;
  size_t pending = evbuffer_get_length(ob_sock_output(sock));
  if (h->state == H1_CLOSING) {
    if (pending) return;
    if (h->c->tls) {
      h1_destroy(h);
      return;
    }
    shutdown(ob_sock_fd(sock), SHUT_WR);
    return;
  }
  h1_req_t *r = h->cur;
  if (r && r->dispatched && r->above_window && pending <= cfg_of(h)->limits.stream_window_bytes / 2) {
    r->above_window = false;
    h->c->net->handler->on_writable(&r->s, h->c->net->ctx);
  }
}

static void on_event(ob_sock_t *sock, short what, void *arg) {
  (void)sock;
  h1_conn_t *h = arg;
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
    if ((what & BEV_EVENT_TIMEOUT) && h->cur && h->cur->dispatched)
      ob_log_info("%s: client stopped reading for %u ms; closing", h->c->peer, cfg_of(h)->timeouts.idle_ms);
    h1_destroy(h);
  }
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  h1_conn_t *h = arg;
  switch (h->state) {
  case H1_HEAD:
  case H1_BODY:
    reply_error(h, 408, "request not received in time");
    break;
  default:
    h1_destroy(h);
    break;
  }
}

/* Deferred completion: the handler finished (or reset) the response. */
static void on_flush(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  h1_conn_t *h = arg;
  h1_req_t *r = h->cur;
  if (!r || !(r->complete || r->reset)) return;
  bool ok = r->complete && !r->reset;
  h->cur = NULL;
  h->c->net->handler->on_close(&r->s, ok, h->c->net->ctx);
  ob_net_sreq_dispose(&r->s);
  free(r);
  if (!ok || !h->keep_alive || h->c->draining) {
    start_closing(h);
    return;
  }
  h->state = H1_IDLE;
  arm_timer(h, cfg_of(h)->timeouts.keepalive_ms);
  process(h);
}

/* ---------------------------------------------------------------- sreq ops */

static void complete(h1_req_t *r) {
  if (r->chunked_out) evbuffer_add(ob_sock_output(r->h->c->sock), "0\r\n\r\n", 5);
  r->complete = true;
  schedule_flush(r->h);
}

static ob_err_t h1_send_head(ob_sreq_t *s, int status, const ob_http_header_t *hdr, size_t n, int64_t cl, bool end) {
  h1_req_t *r = (h1_req_t *)s;
  h1_conn_t *h = r->h;
  if (r->head_sent || r->reset || r->complete) return OB_ERR_CONN;
  r->head_sent = true;
  s->status = status;
  if (h->c->draining) h->keep_alive = false;
  ob_buf_t out;
  ob_buf_init(&out);
  ob_h1_append_status_line(&out, status);
  for (size_t i = 0; i < n; i++) ob_h1_append_header(&out, hdr[i].name, hdr[i].value);
  r->no_body = ob_http_response_bodyless(s->method, status);
  /* A HEAD answer keeps the length its GET would have (RFC 9110 9.3.2);
   * 1xx and 204 must not carry one, and 304 need not. */
  if (cl >= 0 && !ob_http_response_bodyless(OB_IOV_LIT("GET"), status)) {
    ob_buf_printf(&out, "content-length: %lld\r\n", (long long)cl);
  } else if (!r->no_body) {
    if (s->http_version >= 11) {
      ob_buf_append_str(&out, "transfer-encoding: chunked\r\n");
      r->chunked_out = true;
    } else {
      h->keep_alive = false; /* HTTP/1.0: the body ends with the connection */
    }
  }
  if (!h->keep_alive) ob_buf_append_str(&out, "connection: close\r\n");
  else if (s->http_version == 10) ob_buf_append_str(&out, "connection: keep-alive\r\n");
  ob_buf_append(&out, "\r\n", 2);
  evbuffer_add(ob_sock_output(h->c->sock), out.base, out.len);
  ob_buf_dispose(&out);
  if (end || r->no_body) complete(r);
  return OB_OK;
}

static void h1_send_data(ob_sreq_t *s, struct evbuffer *data, bool end) {
  h1_req_t *r = (h1_req_t *)s;
  size_t len = evbuffer_get_length(data);
  if (r->reset || r->complete || !r->head_sent || r->no_body) {
    evbuffer_drain(data, len);
  } else if (len) {
    struct evbuffer *out = ob_sock_output(r->h->c->sock);
    if (r->chunked_out) evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_add_buffer(out, data);
    if (r->chunked_out) evbuffer_add(out, "\r\n", 2);
    s->bytes_out += len;
    if (evbuffer_get_length(out) > cfg_of(r->h)->limits.stream_window_bytes) r->above_window = true;
  }
  if (end && !r->reset && !r->complete) complete(r);
}

static void h1_send_trailers(ob_sreq_t *s, const ob_http_header_t *h, size_t n) {
  (void)h, (void)n;
  h1_req_t *r = (h1_req_t *)s;
  if (!r->reset && !r->complete) complete(r);
}

static void h1_reset(ob_sreq_t *s) {
  h1_req_t *r = (h1_req_t *)s;
  if (r->reset || r->complete) return;
  r->reset = true;
  schedule_flush(r->h);
}

static size_t h1_pending(const ob_sreq_t *s) {
  const h1_req_t *r = (const h1_req_t *)s;
  return evbuffer_get_length(ob_sock_output(r->h->c->sock));
}

static const ob_sreq_ops_t h1_ops = {
    .send_head = h1_send_head,
    .send_data = h1_send_data,
    .send_trailers = h1_send_trailers,
    .reset = h1_reset,
    .pending = h1_pending,
};

/* ---------------------------------------------------------------- lifecycle */

void ob_net_h1_start(ob_client_conn_t *c) {
  h1_conn_t *h = ob_xcalloc(1, sizeof *h);
  h->c = c;
  h->state = H1_IDLE;
  c->proto_state = h;
  ob_net_t *n = c->net;
  h->timer = evtimer_new(n->base, on_timer, h);
  h->flush = event_new(n->base, -1, 0, on_flush, h);
  /* Our own timers govern reading; the write timeout catches clients that
   * stop reading a response. */
  struct timeval wtv = {n->cfg->timeouts.idle_ms / 1000, (n->cfg->timeouts.idle_ms % 1000) * 1000};
  ob_sock_set_write_timeout(c->sock, &wtv);
  ob_sock_setwatermark(c->sock, EV_WRITE, n->cfg->limits.stream_window_bytes / 2, 0);
  /* Bound what a pipelining client can park in our input buffer. */
  ob_sock_setwatermark(c->sock, EV_READ, 0, (size_t)n->cfg->limits.max_header_bytes + 65536);
  ob_sock_setcb(c->sock, on_read, on_write, on_event, h);
  ob_sock_enable(c->sock, EV_READ | EV_WRITE);
  arm_timer(h, n->cfg->timeouts.client_header_ms);
  process(h);
}

void ob_net_h1_drain(ob_client_conn_t *c) {
  h1_conn_t *h = c->proto_state;
  if (h->state == H1_IDLE) h1_destroy(h);
  else h->keep_alive = false;
}
