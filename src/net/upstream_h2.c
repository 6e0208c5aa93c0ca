/*
 * upstream_h2.c: HTTP/2 to upstreams (h2c with prior knowledge, or h2 over
 * TLS after ALPN), one nghttp2 client session per connection, many streams.
 * Owns the session, request submission, the body data provider, response
 * collection and flow control. Connection set-up, pooling and the ureq life
 * cycle belong to upstream.c; this file must not choose endpoints or free
 * ureqs itself.
 *
 * nghttp2 callbacks only record what happened on the ureq (headers copied
 * into its arena, body bytes appended to u->rbody) and put the ureq on the
 * connection's touched list. Handler callbacks are made afterwards, once
 * nghttp2_session_mem_recv / mem_send have returned (deliver_touched), so a
 * handler may submit, cancel or pause freely. No send or recv is ever called
 * from inside a callback; API calls schedule c->flush_ev instead.
 *
 * Flow control: automatic WINDOW_UPDATE is off. The connection window is
 * given back as soon as bytes arrive; a stream's window only when its bytes
 * were offered to a handler that is not paused, so a paused stream stops
 * after stream_window_bytes.
 */
#include "upstream_int.h"

#include <inttypes.h>
#include <stdio.h>

static void h2_flush(ob_uconn_t *c);

/* ================================================================ lists */

/* The ureq of a stream: nghttp2's stream user data, set at submit and
 * cleared when the ureq leaves c->h2.streams, so a stream whose ureq went
 * away finds nothing (one lookup in nghttp2's stream map, not a walk over
 * every stream of the connection for each header and DATA chunk). */
static ob_ureq_t *find_stream(ob_uconn_t *c, int32_t id) {
  return c->h2.session ? nghttp2_session_get_stream_user_data(c->h2.session, id) : NULL;
}

static void list_unlink(ob_ureq_t **head, ob_ureq_t **tail, ob_ureq_t *u) {
  if (u->h2.sprev)
    u->h2.sprev->h2.snext = u->h2.snext;
  else
    *head = u->h2.snext;
  if (u->h2.snext)
    u->h2.snext->h2.sprev = u->h2.sprev;
  else if (tail)
    *tail = u->h2.sprev;
  u->h2.sprev = u->h2.snext = NULL;
}

static void stream_unlink(ob_uconn_t *c, ob_ureq_t *u) {
  if (c->h2.session) nghttp2_session_set_stream_user_data(c->h2.session, u->h2.stream_id, NULL);
  list_unlink(&c->h2.streams, NULL, u);
  c->h2.num_streams--;
}

static void touch(ob_uconn_t *c, ob_ureq_t *u) {
  if (u->h2.touched) return;
  u->h2.touched = true;
  u->h2.tnext = NULL;
  if (c->h2.touched_tail)
    c->h2.touched_tail->h2.tnext = u;
  else
    c->h2.touched = u;
  c->h2.touched_tail = u;
}

static void untouch(ob_uconn_t *c, ob_ureq_t *u) {
  if (!u->h2.touched) return;
  ob_ureq_t *prev = NULL;
  for (ob_ureq_t *t = c->h2.touched; t; prev = t, t = t->h2.tnext) {
    if (t != u) continue;
    if (prev)
      prev->h2.tnext = u->h2.tnext;
    else
      c->h2.touched = u->h2.tnext;
    if (c->h2.touched_tail == u) c->h2.touched_tail = prev;
    break;
  }
  u->h2.touched = false;
  u->h2.tnext = NULL;
}

/* ================================================================ nghttp2 callbacks */

static ssize_t read_body_cb(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *src, void *user_data) {
  ob_uconn_t *c = user_data;
  ob_ureq_t *u = find_stream(c, stream_id);
  if (!u) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  if (u->streamed) {
    if (!u->src) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* the client went away */
    bool eof;
    size_t taken = ob_net_sreq_body_read(u->src, buf, length, &eof);
    if (taken) u->src_taken = true;
    if (eof) *flags |= NGHTTP2_DATA_FLAG_EOF;
    else if (!taken) return NGHTTP2_ERR_DEFERRED;
    return (ssize_t)taken;
  }
  size_t n = 0;
  while (n < length && u->h2.body_i < u->num_body) {
    ob_iov_t p = u->body[u->h2.body_i];
    size_t take = p.len - u->h2.body_off;
    if (take > length - n) take = length - n;
    memcpy(buf + n, p.base + u->h2.body_off, take);
    n += take;
    u->h2.body_off += take;
    if (u->h2.body_off == p.len) u->h2.body_i++, u->h2.body_off = 0;
  }
  if (u->h2.body_i == u->num_body) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *user_data) {
  ob_uconn_t *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  ob_ureq_t *u = find_stream(c, frame->hd.stream_id);
  if (!u) return 0;
  u->h2.resp_any = true;
  if (!u->h2.head_ready) {
    if (!u->h2.hdrs) u->h2.hdrs = ob_arena_alloc(&u->arena, OB_HTTP_MAX_HEADERS * sizeof *u->h2.hdrs);
    u->h2.num_hdrs = 0;
    u->h2.hdr_bytes = 0;
    u->h2.status = 0;
  } else {
    if (!u->trailers) u->trailers = ob_arena_alloc(&u->arena, OB_HTTP_MAX_HEADERS * sizeof *u->trailers);
    u->num_trailers = 0;
    u->h2.hdr_bytes = 0;
  }
  return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) {
  ob_uconn_t *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  ob_ureq_t *u = find_stream(c, frame->hd.stream_id);
  if (!u || u->h2.bad) return 0;
  ob_iov_t n = ob_iov((const char *)name, namelen), v = ob_iov((const char *)value, valuelen);
  bool trailer = u->h2.head_ready;
  size_t max = u->up->gcfg->limits.max_header_bytes ? u->up->gcfg->limits.max_header_bytes : 65536;
  u->h2.hdr_bytes += namelen + valuelen + 4;
  if (u->h2.hdr_bytes > max) goto bad;
  if (!trailer && ob_iov_eq(n, OB_IOV_LIT(":status"))) {
    uint64_t st;
    /* nghttp2 takes any three digits and treats 000-099 as a final
     * response, while a status below 200 here means an interim one: a
     * "050" head followed by DATA would reach on_data without on_head.
     * The range is the h1 parser's (RFC 9110 15). */
    if (valuelen != 3 || !ob_iov_to_u64(v, &st) || st < 100 || st > 599) goto bad;
    u->h2.status = (int)st;
    return 0;
  }
  if (namelen == 0 || name[0] == ':') return 0;
  if (ob_http_is_hop_by_hop(n, ob_iov(NULL, 0))) return 0;
  ob_http_header_t *arr = trailer ? u->trailers : u->h2.hdrs;
  size_t *cnt = trailer ? &u->num_trailers : &u->h2.num_hdrs;
  if (*cnt >= OB_HTTP_MAX_HEADERS) goto bad;
  arr[*cnt].name = ob_arena_dup(&u->arena, n);
  arr[*cnt].value = ob_arena_dup(&u->arena, v);
  (*cnt)++;
  return 0;
bad:
  /* Reset the stream; on_stream_close reports it as a bad response. */
  u->h2.bad = true;
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *user_data) {
  ob_uconn_t *c = user_data;
  ob_ureq_t *u;
  switch (frame->hd.type) {
  case NGHTTP2_HEADERS:
    if (!(u = find_stream(c, frame->hd.stream_id))) break;
    if (!u->h2.head_ready) {
      if (u->h2.status >= 200) {
        u->h2.head_ready = true;
        /* END_STREAM on the head itself (not on later trailers). */
        u->head_ended = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
      } else {
        /* 1xx: not the response; forget it. */
        u->h2.num_hdrs = 0;
        u->h2.status = 0;
      }
    }
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) u->h2.remote_ended = true;
    touch(c, u);
    break;
  case NGHTTP2_DATA:
    if (!(u = find_stream(c, frame->hd.stream_id))) break;
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) u->h2.remote_ended = true;
    touch(c, u);
    break;
  case NGHTTP2_SETTINGS:
    if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) c->h2.settings_received = true;
    break;
  case NGHTTP2_GOAWAY:
    c->h2.goaway = true;
    ob_log_debug("%s: GOAWAY last stream %" PRId32 " error %" PRIu32, ob_net_up_conn_name(c),
                 frame->goaway.last_stream_id, frame->goaway.error_code);
    break;
  default:
    break;
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len,
                         void *user_data) {
  ob_uconn_t *c = user_data;
  nghttp2_session_consume_connection(s, len);
  ob_ureq_t *u = find_stream(c, stream_id);
  if (!u) {
    nghttp2_session_consume_stream(s, stream_id, len);
    return 0;
  }
  evbuffer_add(u->rbody, data, len);
  u->undelivered = true;
  u->h2.unconsumed += len;
  u->h2.resp_any = true;
  touch(c, u);
  return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *user_data) {
  ob_uconn_t *c = user_data;
  ob_ureq_t *u = find_stream(c, stream_id);
  if (!u) return 0;
  stream_unlink(c, u);
  u->h2.closed = true;
  u->h2.close_code = error_code;
  touch(c, u);
  return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *user_data) {
  ob_uconn_t *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  ob_ureq_t *u = find_stream(c, frame->hd.stream_id);
  if (!u) return 0;
  u->h2.sent_any = true;
  if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && !u->h2.req_done) {
    u->h2.req_done = true;
    if (!u->h2.resp_any && !u->paused) ob_net_up_arm(u->timer, u->up->tv_first_byte);
  }
  return 0;
}

static int on_frame_not_send(nghttp2_session *s, const nghttp2_frame *frame, int lib_error_code, void *user_data) {
  ob_uconn_t *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  ob_ureq_t *u = find_stream(c, frame->hd.stream_id);
  if (!u || u->h2.sent_any) return 0;
  /* The request never left: as good as refused. */
  stream_unlink(c, u);
  u->h2.closed = true;
  u->h2.close_code = NGHTTP2_REFUSED_STREAM;
  touch(c, u);
  return 0;
}

/* ================================================================ delivery */

/* Hand what the callbacks recorded for u to its handler. */
static void deliver(ob_ureq_t *u) {
  ob_uconn_t *c = u->conn;
  if (u->h2.head_ready && !u->head_seen) {
    if (!ob_net_up_call_head(u, u->h2.status, u->h2.hdrs, u->h2.num_hdrs)) return;
  }
  if (u->h2.closed) {
    bool ok = u->h2.remote_ended && u->h2.head_ready && !u->h2.bad;
    u->conn = NULL;
    if (ok) {
      if (!u->trailers) u->num_trailers = 0;
      ob_net_up_complete(u);
      return;
    }
    if (!u->h2.resp_any && u->h2.close_code == NGHTTP2_REFUSED_STREAM) {
      ob_net_up_retry(u, OB_RETRY_ELSEWHERE, 502);
      return;
    }
    ob_log_warn("%s: stream %" PRId32 " %s (error code %" PRIu32 ")", ob_net_up_conn_name(c), u->h2.stream_id,
                u->h2.bad ? "bad response" : "reset", u->h2.close_code);
    ob_err_t err = (u->h2.bad || u->h2.close_code == NGHTTP2_PROTOCOL_ERROR) ? OB_ERR_BAD_RESPONSE : OB_ERR_CONN;
    ob_net_up_fail(u, err, 502);
    return;
  }
  if (u->paused) return;
  if (u->undelivered) {
    if (!ob_net_up_call_data(u)) return;
    if (u->paused) return;
  }
  if (u->h2.unconsumed && c->h2.session) {
    nghttp2_session_consume_stream(c->h2.session, u->h2.stream_id, u->h2.unconsumed);
    u->h2.unconsumed = 0;
  }
  if (u->h2.resp_any) ob_net_up_arm(u->timer, ob_net_up_idle_tv(u));
}

static void deliver_touched(ob_uconn_t *c) {
  ob_ureq_t *u;
  while ((u = c->h2.touched)) {
    c->h2.touched = u->h2.tnext;
    if (!c->h2.touched) c->h2.touched_tail = NULL;
    u->h2.tnext = NULL;
    u->h2.touched = false;
    deliver(u);
  }
}

/* ================================================================ session */

static void submit(ob_uconn_t *c, ob_ureq_t *u) {
  ob_upstream_t *up = u->up;
  const ob_net_endpoint_conf_t *ep = c->ep->cfg;
  ob_arena_t *a = &u->arena;

  ob_iov_t target = u->path;
  size_t bl = strlen(ep->base_path);
  if (bl) {
    char *t = ob_arena_alloc(a, bl + u->path.len);
    memcpy(t, ep->base_path, bl);
    memcpy(t + bl, u->path.base, u->path.len);
    target = ob_iov(t, bl + u->path.len);
  }
  ob_iov_t authority = u->authority.len ? u->authority : ob_iov_str(ep->authority);
  nghttp2_nv *nva = ob_arena_alloc(a, (u->num_headers + 6) * sizeof *nva);
  size_t n = 0;
#define NV(nm, val)                                                                           \
  (nva[n++] = (nghttp2_nv){(uint8_t *)(nm).base, (uint8_t *)(val).base, (nm).len, (val).len, \
                           ob_net_h2_nv_flags(nm)})
  NV(OB_IOV_LIT(":method"), u->method);
  NV(OB_IOV_LIT(":scheme"), ep->tls ? OB_IOV_LIT("https") : OB_IOV_LIT("http"));
  NV(OB_IOV_LIT(":authority"), authority);
  NV(OB_IOV_LIT(":path"), target);
  for (size_t i = 0; i < u->num_headers; i++) NV(u->headers[i].name, u->headers[i].value);
  if (u->expect_trailers) NV(OB_IOV_LIT("te"), OB_IOV_LIT("trailers"));
  if (!u->streamed && (u->body_len || ob_http_method_wants_length(u->method))) {
    char *num = ob_arena_alloc(a, OB_U64_CHARS);
    size_t num_len = ob_fmt_u64(num, u->body_len);
    NV(OB_IOV_LIT("content-length"), ob_iov(num, num_len));
  }
#undef NV

  /* Fresh stream state for this attempt. */
  u->h2.body_i = u->h2.body_off = 0;
  u->h2.sent_any = u->h2.req_done = u->h2.resp_any = u->h2.head_ready = u->h2.closed = u->h2.remote_ended = u->h2.bad = false;
  u->head_ended = false;
  u->h2.close_code = 0;
  u->h2.status = 0;
  u->h2.num_hdrs = u->num_trailers = 0;
  u->h2.unconsumed = 0;

  nghttp2_data_provider prd = {.source.ptr = NULL, .read_callback = read_body_cb};
  int32_t id = nghttp2_submit_request(c->h2.session, NULL, nva, n, u->num_body || u->streamed ? &prd : NULL, u);
  if (id < 0) {
    ob_log_warn("%s: cannot submit request: %s", ob_net_up_conn_name(c), nghttp2_strerror(id));
    c->h2.goaway = true; /* take no more streams here */
    u->conn = NULL;
    ob_net_up_retry(u, OB_RETRY_ELSEWHERE, 502);
    return;
  }
  u->h2.stream_id = id;
  u->state = U_ACTIVE;
  u->conn = c;
  u->h2.sprev = NULL;
  u->h2.snext = c->h2.streams;
  if (c->h2.streams) c->h2.streams->h2.sprev = u;
  c->h2.streams = u;
  c->h2.num_streams++;
  event_del(c->timer);
  ob_net_up_arm(u->timer, up->tv_first_byte);
}

static bool h2_start(ob_uconn_t *c) {
  ob_upstream_t *up = c->ep->up;
  nghttp2_session_callbacks *cbs;
  nghttp2_option *opt;
  if (nghttp2_session_callbacks_new(&cbs) != 0) abort();
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
  if (nghttp2_option_new(&opt) != 0) abort();
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_peer_max_concurrent_streams(opt, OB_UP_H2_DEFAULT_STREAMS);
  int rv = nghttp2_session_client_new2(&c->h2.session, cbs, c, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) abort();

  uint32_t window = up->gcfg->limits.stream_window_bytes ? up->gcfg->limits.stream_window_bytes : 256 * 1024;
  if (window > NGHTTP2_MAX_WINDOW_SIZE) window = NGHTTP2_MAX_WINDOW_SIZE;
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
       up->gcfg->limits.max_header_bytes ? up->gcfg->limits.max_header_bytes : 65536},
  };
  nghttp2_submit_settings(c->h2.session, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  nghttp2_session_set_local_window_size(c->h2.session, NGHTTP2_FLAG_NONE, 0, OB_UP_H2_CONN_WINDOW);

  ob_ureq_t *u;
  while ((u = c->h2.pending)) {
    list_unlink(&c->h2.pending, &c->h2.pending_tail, u);
    c->h2.num_pending--;
    u->conn = NULL;
    submit(c, u);
  }
  h2_flush(c);
  return c->state == C_OPEN;
}

static void h2_add(ob_uconn_t *c, ob_ureq_t *u) {
  if (c->state == C_OPEN && c->h2.session) {
    submit(c, u);
    ob_net_up_conn_schedule(c);
    return;
  }
  u->conn = c;
  u->state = U_QUEUED;
  u->h2.snext = NULL;
  u->h2.sprev = c->h2.pending_tail;
  if (c->h2.pending_tail)
    c->h2.pending_tail->h2.snext = u;
  else
    c->h2.pending = u;
  c->h2.pending_tail = u;
  c->h2.num_pending++;
}

static size_t h2_room(const ob_uconn_t *c) {
  if (c->h2.goaway || c->connect_failed || c->state == C_DEAD) return 0;
  size_t cap = OB_UP_H2_DEFAULT_STREAMS;
  if (c->h2.session) {
    if (!nghttp2_session_check_request_allowed(c->h2.session)) return 0;
    if (c->h2.settings_received)
      cap = nghttp2_session_get_remote_settings(c->h2.session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  }
  size_t used = c->h2.num_streams + c->h2.num_pending;
  return used < cap ? cap - used : 0;
}

static void h2_conn_fail(ob_uconn_t *c, const char *why) {
  if (why && (c->h2.num_streams || c->h2.num_pending))
    ob_log_warn("%s: connection failed: %s", ob_net_up_conn_name(c), why);
  c->h2.goaway = true; /* no retry may land here */
  ob_ureq_t *u;
  while ((u = c->h2.touched)) {
    c->h2.touched = u->h2.tnext;
    u->h2.tnext = NULL;
    u->h2.touched = false;
  }
  c->h2.touched_tail = NULL;
  while ((u = c->h2.streams)) {
    stream_unlink(c, u);
    u->conn = NULL;
    if (!u->h2.sent_any)
      ob_net_up_retry(u, OB_RETRY_ELSEWHERE, 502);
    else
      ob_net_up_fail(u, OB_ERR_CONN, 502);
  }
  while ((u = c->h2.pending)) {
    list_unlink(&c->h2.pending, &c->h2.pending_tail, u);
    c->h2.num_pending--;
    u->conn = NULL;
    ob_net_up_retry(u, OB_RETRY_ELSEWHERE, 502);
  }
  ob_net_up_conn_free(c);
}

static void h2_flush(ob_uconn_t *c) {
  if (c->state != C_OPEN || !c->h2.session || c->h2.in_nghttp2) return;
  struct evbuffer *out = ob_sock_output(c->sock);
  for (;;) {
    while (evbuffer_get_length(out) < OB_UP_H2_OUTPUT_HIGH) {
      const uint8_t *data;
      c->h2.in_nghttp2 = true;
      ssize_t n = nghttp2_session_mem_send(c->h2.session, &data);
      c->h2.in_nghttp2 = false;
      if (n < 0) {
        deliver_touched(c);
        h2_conn_fail(c, nghttp2_strerror((int)n));
        return;
      }
      if (n == 0) break;
      evbuffer_add(out, data, (size_t)n);
    }
    if (!c->h2.touched) break;
    /* Sending closed or refused streams (RST, GOAWAY seen): report them. */
    deliver_touched(c);
  }
  if (c->h2.num_streams == 0 && c->h2.num_pending == 0) {
    if (c->h2.goaway || (!nghttp2_session_want_read(c->h2.session) && !nghttp2_session_want_write(c->h2.session))) {
      ob_net_up_conn_free(c);
      return;
    }
    if (!event_pending(c->timer, EV_TIMEOUT, NULL)) ob_net_up_arm(c->timer, c->ep->up->tv_keepalive);
  }
}

static void h2_on_read(ob_uconn_t *c) {
  if (c->state != C_OPEN || !c->h2.session) return;
  struct evbuffer *in = ob_sock_input(c->sock);
  while (evbuffer_get_length(in) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) break;
    c->h2.in_nghttp2 = true;
    ssize_t rv = nghttp2_session_mem_recv(c->h2.session, v.iov_base, v.iov_len);
    c->h2.in_nghttp2 = false;
    if (rv < 0) {
      deliver_touched(c);
      h2_conn_fail(c, nghttp2_strerror((int)rv));
      return;
    }
    evbuffer_drain(in, (size_t)rv);
  }
  deliver_touched(c);
  h2_flush(c);
}

static void h2_on_write(ob_uconn_t *c) { h2_flush(c); }

static void h2_on_event(ob_uconn_t *c, short what, const char *why) {
  (void)what;
  /* Anything left in the input was already fed to nghttp2 by the read
   * callback; what it produced is reported before the streams fail. */
  deliver_touched(c);
  h2_conn_fail(c, why);
}

static void h2_resume(ob_ureq_t *u) {
  ob_uconn_t *c = u->conn;
  if (!c || u->state != U_ACTIVE) return;
  u->undelivered = u->undelivered || evbuffer_get_length(u->rbody) > 0;
  deliver(u);
  ob_net_up_conn_schedule(c);
}

static void h2_abort(ob_ureq_t *u) {
  ob_uconn_t *c = u->conn;
  if (!c) return;
  untouch(c, u);
  if (u->state == U_QUEUED) {
    list_unlink(&c->h2.pending, &c->h2.pending_tail, u);
    c->h2.num_pending--;
  } else if (!u->h2.closed) {
    stream_unlink(c, u);
    if (c->h2.session) nghttp2_submit_rst_stream(c->h2.session, NGHTTP2_FLAG_NONE, u->h2.stream_id, NGHTTP2_CANCEL);
    ob_net_up_conn_schedule(c);
  }
  u->conn = NULL;
}

static void h2_timeout(ob_ureq_t *u) {
  ob_uconn_t *c = u->conn;
  if (!c) return;
  ob_log_warn("%s: stream %" PRId32 " %s timeout", ob_net_up_conn_name(c), u->h2.stream_id,
              u->h2.resp_any ? "idle" : "first byte");
  h2_abort(u);
  ob_net_up_fail(u, OB_ERR_CONN, 504);
}

static void h2_dispose(ob_uconn_t *c) {
  if (c->h2.session) nghttp2_session_del(c->h2.session);
  c->h2.session = NULL;
}

/* ================================================================ the table */

static void h2_connected(ob_uconn_t *c) { h2_start(c); }

static ob_ureq_t *h2_unqueue(ob_uconn_t *c) {
  ob_ureq_t *u = c->h2.pending;
  if (!u) return NULL;
  list_unlink(&c->h2.pending, &c->h2.pending_tail, u);
  c->h2.num_pending--;
  u->conn = NULL;
  return u;
}

static bool h2_unused(const ob_uconn_t *c) { return c->h2.num_streams == 0 && c->h2.num_pending == 0; }

static void h2_detach_all(ob_uconn_t *c) {
  for (ob_ureq_t *u = c->h2.streams; u; u = u->h2.snext) u->conn = NULL;
  for (ob_ureq_t *u = c->h2.pending; u; u = u->h2.snext) u->conn = NULL;
  c->h2.streams = c->h2.pending = c->h2.pending_tail = c->h2.touched = c->h2.touched_tail = NULL;
  c->h2.num_streams = c->h2.num_pending = 0;
}

/* Nothing to stop: the stream's window is given back only while the
 * handler is not paused (deliver), so the server stops by itself. */
static void h2_pause(ob_ureq_t *u) { (void)u; }

static void h2_body_ready(ob_ureq_t *u) {
  ob_uconn_t *c = u->conn;
  if (!c->h2.session) return;
  nghttp2_session_resume_data(c->h2.session, u->h2.stream_id);
  ob_net_up_conn_schedule(c);
}

static const unsigned char alpn_h2[] = "\x02h2";

const ob_up_proto_ops_t ob_net_uh2_ops = {
    .alpn = alpn_h2,
    .alpn_len = sizeof alpn_h2 - 1,
    .require_alpn = true,
    .alpn_name = "h2",
    .multiplexed = true,
    .streams_body = true,
    .write_lowat = OB_UP_H2_OUTPUT_HIGH / 4,
    .attach = h2_add,
    .room = h2_room,
    .connected = h2_connected,
    .unqueue = h2_unqueue,
    .unused = h2_unused,
    .on_read = h2_on_read,
    .on_write = h2_on_write,
    .on_event = h2_on_event,
    .flush = h2_flush,
    .detach_all = h2_detach_all,
    .dispose = h2_dispose,
    .abort = h2_abort,
    .pause = h2_pause,
    .resume = h2_resume,
    .timeout = h2_timeout,
    .body_ready = h2_body_ready,
};
