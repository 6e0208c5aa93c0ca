/*
 * upstream_h1.c: one HTTP/1.1 exchange on an open upstream connection.
 * Writes the request (body pieces by reference where the body owner allows),
 * reads the response head with the http codec, skips 1xx, removes hop-by-hop
 * fields, and moves body bytes (by Content-Length, chunked, or until close)
 * into the ureq's buffer without copying them. Decides whether the
 * connection may go back to the idle pool. Connection set-up, pooling and
 * the ureq life cycle belong to upstream.c; this file must not choose
 * endpoints or free ureqs itself.
 *
 * Reading stops while the handler is paused (EV_READ disabled; what already
 * arrived stays in the input buffer, unparsed) and restarts from u->kick.
 */
#include "upstream_int.h"

#include <inttypes.h>
#include <stdio.h>

enum { RS_HEAD, RS_BODY };

static void release_ref(const void *data, size_t len, void *extra) { ob_rcbuf_release(extra); }

static void h1_start(ob_uconn_t *c, ob_ureq_t *u) {
  ob_upstream_t *up = u->up;
  const ob_net_endpoint_conf_t *ep = c->ep->cfg;
  c->h1.ureq = u;
  u->conn = c;
  u->state = U_ACTIVE;
  c->h1.rstate = RS_HEAD;
  c->h1.got_bytes = c->h1.req_written = c->h1.eof = c->h1.keep_alive = false;

  ob_iov_t target = u->path;
  size_t bl = strlen(ep->base_path);
  if (bl) {
    char *t = ob_arena_alloc(&u->arena, bl + u->path.len);
    memcpy(t, ep->base_path, bl);
    memcpy(t + bl, u->path.base, u->path.len);
    target = ob_iov(t, bl + u->path.len);
  }
  ob_buf_t head;
  ob_buf_init(&head);
  ob_h1_append_request_line(&head, u->method, target);
  ob_h1_append_header(&head, OB_IOV_LIT("Host"), u->authority.len ? u->authority : ob_iov_str(ep->authority));
  bool cookie_sent = false;
  for (size_t i = 0; i < u->num_headers; i++) {
    /* HTTP/2 clients may split Cookie into crumbs; an HTTP/1.1 upstream gets
     * them as one field joined with "; " (RFC 9113 8.2.3). Names are lower
     * case here (copy_spec). */
    if (ob_iov_eq(u->headers[i].name, OB_IOV_LIT("cookie"))) {
      if (cookie_sent) continue;
      cookie_sent = true;
      ob_buf_append_str(&head, "cookie: ");
      const char *sep = "";
      for (size_t j = i; j < u->num_headers; j++)
        if (ob_iov_eq(u->headers[j].name, OB_IOV_LIT("cookie")))
          ob_buf_append_str(&head, sep), ob_buf_append_iov(&head, u->headers[j].value), sep = "; ";
      ob_buf_append(&head, "\r\n", 2);
      continue;
    }
    ob_h1_append_header(&head, u->headers[i].name, u->headers[i].value);
  }
  if (u->body_len || ob_http_method_wants_length(u->method)) {
    char num[OB_U64_CHARS];
    size_t n = ob_fmt_u64(num, u->body_len);
    ob_h1_append_header(&head, OB_IOV_LIT("Content-Length"), ob_iov(num, n));
  }
  ob_buf_append(&head, "\r\n", 2);

  struct evbuffer *out = ob_sock_output(c->sock);
  evbuffer_add(out, head.base, head.len);
  ob_buf_dispose(&head);
  const char *ob = u->owner ? u->owner->buf.base : NULL;
  size_t olen = u->owner ? u->owner->buf.len : 0;
  for (size_t i = 0; i < u->num_body; i++) {
    ob_iov_t p = u->body[i];
    bool inside = ob && p.base >= ob && p.len <= olen && (size_t)(p.base - ob) <= olen - p.len;
    if (inside) {
      ob_rcbuf_acquire(u->owner);
      if (evbuffer_add_reference(out, p.base, p.len, release_ref, u->owner) != 0) {
        ob_rcbuf_release(u->owner);
        evbuffer_add(out, p.base, p.len);
      }
    } else {
      evbuffer_add(out, p.base, p.len);
    }
  }
  ob_sock_enable(c->sock, u->paused ? EV_WRITE : EV_READ | EV_WRITE);
  if (u->paused) ob_sock_disable(c->sock, EV_READ);
  ob_net_up_arm(u->timer, up->tv_first_byte);
}

/* Detach u and c from each other. */
static void unpair(ob_uconn_t *c, ob_ureq_t *u) {
  c->h1.ureq = NULL;
  u->conn = NULL;
}

static void fail(ob_uconn_t *c, ob_ureq_t *u, ob_err_t err, const char *why) {
  ob_log_warn("%s: %s", ob_net_up_conn_name(c), why);
  unpair(c, u);
  ob_net_up_conn_free(c);
  ob_net_up_fail(u, err, 502);
}

/* The response is complete on the wire. */
static void finish(ob_uconn_t *c, ob_ureq_t *u) {
  bool written = c->h1.req_written || evbuffer_get_length(ob_sock_output(c->sock)) == 0;
  bool reuse = c->h1.keep_alive && written && !c->h1.eof && c->h1.framing != OB_H1_BODY_UNTIL_CLOSE &&
               evbuffer_get_length(ob_sock_input(c->sock)) == 0;
  unpair(c, u);
  if (reuse) {
    c->h1.reused = false;
    ob_net_up_conn_idle(c);
  } else {
    ob_net_up_conn_free(c);
  }
  ob_net_up_complete(u);
}

/* Returns 1 when the final head was handled (or a 1xx skipped), 0 when more
 * input is needed, -1 when u and c are gone. */
static int read_head(ob_uconn_t *c, ob_ureq_t *u) {
  struct evbuffer *in = ob_sock_input(c->sock);
  size_t len = evbuffer_get_length(in);
  if (len == 0) return 0;
  size_t max = u->up->gcfg->limits.max_header_bytes ? u->up->gcfg->limits.max_header_bytes : 65536;
  size_t n = len < max ? len : max;
  const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
  ob_h1_response_t resp;
  ob_http_header_t hdrs[OB_HTTP_MAX_HEADERS];
  const char *why = NULL;
  int rv = ob_h1_parse_response(p, n, &resp, hdrs, OB_HTTP_MAX_HEADERS, max, u->method, &why);
  if (rv == OB_ERR_INCOMPLETE) {
    if (n < max) return 0;
    rv = OB_ERR_HEADERS_TOO_LARGE;
    why = "response head too large";
  }
  if (rv <= 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "bad response: %s", why ? why : ob_err_name(rv));
    fail(c, u, OB_ERR_BAD_RESPONSE, msg);
    return -1;
  }
  if (resp.status < 200) {
    if (resp.status == 101) {
      fail(c, u, OB_ERR_BAD_RESPONSE, "bad response: unexpected 101 Switching Protocols");
      return -1;
    }
    evbuffer_drain(in, (size_t)rv);
    return 1;
  }
  c->h1.framing = resp.body;
  c->h1.remaining = resp.content_length;
  c->h1.keep_alive = resp.keep_alive;
  if (c->h1.framing == OB_H1_BODY_CHUNKED) ob_h1_chunked_init(&c->h1.chunked);

  /* Hop-by-hop fields, including those any Connection field names; judged
   * before the in-place filtering moves a Connection field away. */
  bool hop[OB_HTTP_MAX_HEADERS];
  for (size_t i = 0; i < resp.num_headers; i++) hop[i] = ob_http_is_hop_by_hop_in(hdrs[i].name, hdrs, resp.num_headers);
  size_t k = 0;
  for (size_t i = 0; i < resp.num_headers; i++)
    if (!hop[i]) hdrs[k++] = hdrs[i];
  c->h1.rstate = RS_BODY;
  /* The fields point into the input buffer: drain only after on_head. */
  if (!ob_net_up_call_head(u, resp.status, hdrs, k)) return -1;
  evbuffer_drain(in, (size_t)rv);
  return 1;
}

/* Move what the framing allows into u->rbody. Returns 1 when the body is
 * complete, 0 when more is to come, -1 when u and c are gone. */
static int read_body(ob_uconn_t *c, ob_ureq_t *u) {
  struct evbuffer *in = ob_sock_input(c->sock);
  switch (c->h1.framing) {
  case OB_H1_BODY_NONE:
    return 1;
  case OB_H1_BODY_LENGTH: {
    size_t avail = evbuffer_get_length(in);
    size_t n = avail < c->h1.remaining ? avail : (size_t)c->h1.remaining;
    if (n) {
      evbuffer_remove_buffer(in, u->rbody, n);
      c->h1.remaining -= n;
      u->undelivered = true;
    }
    return c->h1.remaining == 0;
  }
  case OB_H1_BODY_UNTIL_CLOSE:
    if (evbuffer_get_length(in)) {
      evbuffer_remove_buffer(in, u->rbody, evbuffer_get_length(in));
      u->undelivered = true;
    }
    return 0;
  case OB_H1_BODY_CHUNKED:
    while (!c->h1.chunked.done && evbuffer_get_length(in) > 0) {
      struct evbuffer_iovec v;
      if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) break;
      size_t data_len = 0;
      const char *why = NULL;
      int rv = ob_h1_chunked_step(&c->h1.chunked, v.iov_base, v.iov_len, &data_len, &why);
      if (rv < 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "bad chunked body: %s", why ? why : ob_err_name(rv));
        fail(c, u, OB_ERR_BAD_RESPONSE, msg);
        return -1;
      }
      if (data_len > 0) {
        evbuffer_remove_buffer(in, u->rbody, data_len);
        u->undelivered = true;
      } else if (rv > 0) {
        evbuffer_drain(in, (size_t)rv);
      } else {
        break;
      }
    }
    return c->h1.chunked.done;
  }
  return 0;
}

/* The server closed (or the connection broke) and everything readable was
 * consumed. */
static void on_eof(ob_uconn_t *c, ob_ureq_t *u) {
  if (c->h1.rstate == RS_BODY && c->h1.framing == OB_H1_BODY_UNTIL_CLOSE) {
    unpair(c, u);
    ob_net_up_conn_free(c);
    ob_net_up_complete(u);
    return;
  }
  if (c->h1.reused && !c->h1.got_bytes && !u->retried_stale) {
    /* The keep-alive race: the server closed the idle connection as we
     * reused it. Nothing was processed; once more on a fresh connection. */
    ob_log_debug("%s: reused connection was closed, retrying", ob_net_up_conn_name(c));
    unpair(c, u);
    ob_net_up_conn_free(c);
    ob_net_up_retry(u, OB_RETRY_FRESH_CONN, 502);
    return;
  }
  fail(c, u, OB_ERR_CONN,
       c->h1.rstate == RS_HEAD ? "connection closed before the response head" : "connection closed mid-body");
}

static void process(ob_uconn_t *c, ob_ureq_t *u) {
  if (u->paused) return;
  if (c->h1.got_bytes) ob_net_up_arm(u->timer, ob_net_up_idle_tv(u));
  while (c->h1.rstate == RS_HEAD) {
    int r = read_head(c, u);
    if (r < 0) return;
    if (r == 0) break;
  }
  if (c->h1.rstate == RS_BODY) {
    if (u->paused) return;
    int r = read_body(c, u);
    if (r < 0) return;
    if (r == 1) {
      finish(c, u);
      return;
    }
    if (u->undelivered) {
      if (!ob_net_up_call_data(u)) return;
      if (u->paused) return;
    }
  }
  if (c->h1.eof) on_eof(c, u);
}

static void h1_on_read(ob_uconn_t *c) {
  ob_ureq_t *u = c->h1.ureq;
  if (!u || u->state != U_ACTIVE) {
    /* An idle connection has nothing to say: whatever arrives ends it. */
    ob_net_up_conn_free(c);
    return;
  }
  if (evbuffer_get_length(ob_sock_input(c->sock)) > 0) c->h1.got_bytes = true;
  process(c, u);
}

static void h1_on_write(ob_uconn_t *c) {
  ob_ureq_t *u = c->h1.ureq;
  if (!u || u->state != U_ACTIVE || c->h1.req_written) return;
  if (evbuffer_get_length(ob_sock_output(c->sock)) > 0) return;
  c->h1.req_written = true;
  if (!c->h1.got_bytes && !u->paused) ob_net_up_arm(u->timer, u->up->tv_first_byte);
}

static void h1_on_event(ob_uconn_t *c, short what, const char *why) {
  ob_ureq_t *u = c->h1.ureq;
  /* What it meant for the exchange is said at warn below (or a stale
   * keep-alive connection is retried quietly); the socket's reason is
   * detail. */
  if (u) ob_log_debug("%s: %s", ob_net_up_conn_name(c), why);
  if (!u || u->state != U_ACTIVE) {
    ob_net_up_conn_free(c);
    return;
  }
  if ((what & BEV_EVENT_WRITING) && !(what & BEV_EVENT_EOF) && !c->ep->cfg->tls) {
    /* The server stopped taking the request. It may still be answering
     * (413 before the body, say); its answer or its close comes on the read
     * side. Unsent output keeps the connection out of the idle pool. (A TLS
     * bufferevent stops reading too after any error, so there the error is
     * final.) */
    ob_sock_disable(c->sock, EV_WRITE);
    return;
  }
  c->h1.eof = true;
  process(c, u);
}

static void h1_resume(ob_ureq_t *u) {
  ob_uconn_t *c = u->conn;
  if (!c) return;
  if (!c->h1.eof) ob_sock_enable(c->sock, EV_READ);
  ob_net_up_arm(u->timer, c->h1.got_bytes ? ob_net_up_idle_tv(u) : u->up->tv_first_byte);
  process(c, u);
}

static void h1_abort(ob_ureq_t *u) {
  ob_uconn_t *c = u->conn;
  if (!c) return;
  unpair(c, u);
  /* A connection still connecting stays for the next request (then the
   * idle pool). */
  if (u->state == U_ACTIVE)
    ob_net_up_conn_free(c);
  else
    ob_net_up_conn_spare(c);
}

static void h1_timeout(ob_ureq_t *u) {
  ob_uconn_t *c = u->conn;
  if (!c) return;
  ob_log_warn("%s: %s timeout", ob_net_up_conn_name(c), c->h1.got_bytes ? "idle" : "first byte");
  unpair(c, u);
  ob_net_up_conn_free(c);
  ob_net_up_fail(u, OB_ERR_CONN, 504);
}

/* ================================================================ the table */

/* An open connection comes from the idle list; one still connecting (new, or
 * spare) keeps u until it is up. */
static void h1_attach(ob_uconn_t *c, ob_ureq_t *u) {
  if (c->state == C_OPEN) {
    c->h1.reused = true;
    h1_start(c, u);
    return;
  }
  c->h1.ureq = u;
  u->conn = c;
  u->state = U_QUEUED;
}

static size_t h1_room(const ob_uconn_t *c) { return c->h1.ureq || c->state == C_DEAD ? 0 : 1; }

static void h1_connected(ob_uconn_t *c) {
  if (c->h1.ureq)
    h1_start(c, c->h1.ureq);
  else
    ob_net_up_conn_idle(c);
}

static ob_ureq_t *h1_unqueue(ob_uconn_t *c) {
  ob_ureq_t *u = c->h1.ureq;
  if (u) unpair(c, u);
  return u;
}

static bool h1_unused(const ob_uconn_t *c) { return !c->h1.ureq; }

static void h1_flush(ob_uconn_t *c) { (void)c; }

static void h1_detach_all(ob_uconn_t *c) {
  if (c->h1.ureq) unpair(c, c->h1.ureq);
}

static void h1_dispose(ob_uconn_t *c) { (void)c; }

/* What already arrived stays in the input, unparsed, until resume. */
static void h1_pause(ob_ureq_t *u) { ob_sock_disable(u->conn->sock, EV_READ); }

/* Never called: an h1 pool refuses streamed bodies (streams_body). */
static void h1_body_ready(ob_ureq_t *u) { (void)u; }

static const unsigned char alpn_h1[] = "\x08http/1.1";

const ob_up_proto_ops_t ob_net_uh1_ops = {
    .alpn = alpn_h1,
    .alpn_len = sizeof alpn_h1 - 1,
    .require_alpn = false,
    .alpn_name = "http/1.1",
    .multiplexed = false,
    .streams_body = false,
    .write_lowat = 0,
    .attach = h1_attach,
    .room = h1_room,
    .connected = h1_connected,
    .unqueue = h1_unqueue,
    .unused = h1_unused,
    .on_read = h1_on_read,
    .on_write = h1_on_write,
    .on_event = h1_on_event,
    .flush = h1_flush,
    .detach_all = h1_detach_all,
    .dispose = h1_dispose,
    .abort = h1_abort,
    .pause = h1_pause,
    .resume = h1_resume,
    .timeout = h1_timeout,
    .body_ready = h1_body_ready,
};
