/*
 * sim_h2: obleth-sim's h2c (prior knowledge) server side on an nghttp2
 * server session. Bytes in through nghttp2_session_mem_recv, bytes out
 * through nghttp2_session_mem_send into an evbuffer written with a direct
 * write attempt; EV_WRITE is armed only when the kernel buffer is full.
 *
 * Each request stream owns one exchange and an evbuffer of response bytes
 * that the api fills and a deferred data provider drains, so every token
 * becomes its own DATA frame the moment the api produces it. An abort
 * becomes RST_STREAM(INTERNAL_ERROR) once the bytes already produced have
 * been framed.
 *
 * Re-entrancy: the api's ops may run inside nghttp2 callbacks (dispatch
 * happens in on_frame_recv); then they only submit and the recv path sends
 * afterwards. Outside callbacks they send at once. Connection teardown always
 * runs from a fresh event ("aux"), never under a caller.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <nghttp2/nghttp2.h>

#include "sim.h"

typedef struct h2stream h2stream_t;

typedef struct h2conn {
  sim_worker_t *w;
  int fd;
  struct event *rev, *wev, *aux;
  struct evbuffer *out;
  nghttp2_session *sess;
  int in_ng;               /* inside mem_recv/mem_send: no sending now */
  bool closing;
  h2stream_t *streams;     /* all live streams */
  h2stream_t *rst;         /* streams whose RST_STREAM is due */
} h2conn_t;

struct h2stream {
  h2conn_t *c;
  int32_t id;
  struct evbuffer *data;   /* response bytes not yet framed */
  bool dispatched, responded, eof, abort_pending, rst_queued, headers_full;
  size_t hbytes;
  h2stream_t *prev, *next;
  h2stream_t *rst_next;
  sim_ex_t ex;
};

static void conn_send(h2conn_t *c);

static void stream_free(h2stream_t *s) {
  h2conn_t *c = s->c;
  if (s->prev) s->prev->next = s->next;
  else c->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  if (s->rst_queued) {
    for (h2stream_t **pp = &c->rst; *pp; pp = &(*pp)->rst_next) {
      if (*pp == s) {
        *pp = s->rst_next;
        break;
      }
    }
  }
  sim_ex_dispose(&s->ex);
  evbuffer_free(s->data);
  free(s);
}

static void conn_free(h2conn_t *c) {
  nghttp2_session_del(c->sess); /* calls no stream-close callbacks */
  while (c->streams) stream_free(c->streams);
  event_free(c->rev);
  event_free(c->wev);
  event_free(c->aux);
  evbuffer_free(c->out);
  close(c->fd);
  free(c);
}

static void schedule_close(h2conn_t *c) {
  c->closing = true;
  event_active(c->aux, EV_TIMEOUT, 0);
}

static void on_aux(evutil_socket_t fd, short what, void *arg) {
  h2conn_t *c = arg;
  if (c->closing) conn_free(c);
}

static void flush_out(h2conn_t *c) {
  if (c->closing) return;
  if (event_pending(c->wev, EV_WRITE, NULL)) return;
  while (evbuffer_get_length(c->out) > 0) {
    int n = evbuffer_write(c->out, c->fd);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        event_add(c->wev, NULL);
        return;
      }
      if (errno == EINTR) continue;
      schedule_close(c);
      return;
    }
    if (n == 0) break;
  }
  if (!nghttp2_session_want_read(c->sess) && !nghttp2_session_want_write(c->sess))
    schedule_close(c); /* GOAWAY exchanged and everything sent */
}

/* Frame whatever nghttp2 has queued, then the due resets, then write. */
static void conn_send(h2conn_t *c) {
  if (c->in_ng || c->closing) return;
  c->in_ng++;
  for (;;) {
    const uint8_t *p;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(c->sess, &p)) > 0) evbuffer_add(c->out, p, (size_t)n);
    if (n < 0) {
      c->in_ng--;
      schedule_close(c);
      return;
    }
    if (!c->rst) break;
    while (c->rst) {
      h2stream_t *s = c->rst;
      c->rst = s->rst_next;
      s->rst_queued = false;
      nghttp2_submit_rst_stream(c->sess, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    }
  }
  c->in_ng--;
  flush_out(c);
}

static void queue_rst(h2stream_t *s) {
  if (s->rst_queued) return;
  s->rst_queued = true;
  s->rst_next = s->c->rst;
  s->c->rst = s;
}

/* ---------------------------------------------------------------- api ops */

static ssize_t data_read(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *ud) {
  h2stream_t *s = src->ptr;
  size_t have = evbuffer_get_length(s->data);
  if (have == 0) {
    if (s->eof) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return 0;
    }
    if (s->abort_pending) queue_rst(s);
    return NGHTTP2_ERR_DEFERRED;
  }
  int n = evbuffer_remove(s->data, buf, have < len ? have : len);
  if (n < 0) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  if ((size_t)n == have && s->eof) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return n;
}

static void op_head(sim_ex_t *ex, int status, const char *ctype, int64_t clen) {
  h2stream_t *s = ex->proto;
  char st[8], cl[24];
  snprintf(st, sizeof st, "%d", status);
  nghttp2_nv nva[3] = {
    {(uint8_t *)":status", (uint8_t *)st, 7, strlen(st), NGHTTP2_NV_FLAG_NONE},
    {(uint8_t *)"content-type", (uint8_t *)ctype, 12, strlen(ctype), NGHTTP2_NV_FLAG_NONE},
    {(uint8_t *)"content-length", (uint8_t *)cl, 14, 0, NGHTTP2_NV_FLAG_NONE},
  };
  size_t nv = 2;
  if (clen >= 0) {
    snprintf(cl, sizeof cl, "%lld", (long long)clen);
    nva[2].valuelen = strlen(cl);
    nv = 3;
  }
  nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read};
  s->responded = true;
  if (nghttp2_submit_response(s->c->sess, s->id, nva, nv, &prd) != 0) return;
  if (clen < 0) conn_send(s->c); /* a stream's headers go out now */
}

static void op_body(sim_ex_t *ex, const void *p, size_t n) {
  h2stream_t *s = ex->proto;
  if (n == 0) return;
  evbuffer_add(s->data, p, n);
  nghttp2_session_resume_data(s->c->sess, s->id);
  conn_send(s->c);
}

static void op_finish(sim_ex_t *ex) {
  h2stream_t *s = ex->proto;
  s->eof = true;
  nghttp2_session_resume_data(s->c->sess, s->id);
  conn_send(s->c); /* may close the stream and dispose ex */
}

static void op_abort(sim_ex_t *ex) {
  h2stream_t *s = ex->proto;
  if (!s->responded || evbuffer_get_length(s->data) == 0) queue_rst(s);
  else s->abort_pending = true;
  nghttp2_session_resume_data(s->c->sess, s->id);
  conn_send(s->c);
}

static const sim_ex_ops_t h2_ops = {op_head, op_body, op_finish, op_abort};

/* ---------------------------------------------------------------- callbacks */

static h2stream_t *get_stream(nghttp2_session *sess, int32_t id) {
  return nghttp2_session_get_stream_user_data(sess, id);
}

static int on_begin_headers(nghttp2_session *sess, const nghttp2_frame *frame, void *ud) {
  h2conn_t *c = ud;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  h2stream_t *s = ob_xcalloc(1, sizeof *s);
  s->c = c;
  s->id = frame->hd.stream_id;
  s->data = evbuffer_new();
  sim_ex_init(&s->ex, c->w, &h2_ops, s, "HTTP/2");
  s->next = c->streams;
  if (c->streams) c->streams->prev = s;
  c->streams = s;
  nghttp2_session_set_stream_user_data(sess, s->id, s);
  return 0;
}

static int on_header(nghttp2_session *sess, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud) {
  h2stream_t *s = get_stream(sess, frame->hd.stream_id);
  if (!s || s->dispatched || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  sim_ex_t *ex = &s->ex;
  s->hbytes += namelen + valuelen + 32;
  if (s->hbytes > SIM_MAX_HEAD || ex->nhdrs >= SIM_MAX_HEADERS) {
    s->headers_full = true;
    return 0;
  }
  ob_iov_t n = ob_iov((const char *)name, namelen), v = ob_iov((const char *)value, valuelen);
  if (namelen > 0 && name[0] == ':') {
    if (ob_iov_eq(n, OB_IOV_LIT(":method"))) ex->method = ob_arena_dup(&ex->arena, v);
    else if (ob_iov_eq(n, OB_IOV_LIT(":path"))) ex->path = ob_arena_dup(&ex->arena, v);
    else if (ob_iov_eq(n, OB_IOV_LIT(":authority"))) ex->authority = ob_arena_dup(&ex->arena, v);
    return 0;
  }
  sim_ex_add_header(ex, n.base, n.len, v.base, v.len);
  if (!ex->authority.base && ob_iov_eq(n, OB_IOV_LIT("host")))
    ex->authority = ex->hdrs[ex->nhdrs - 1].value;
  return 0;
}

static int on_data_chunk(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud) {
  h2stream_t *s = get_stream(sess, id);
  if (!s || s->dispatched) return 0;
  if (s->ex.too_large || s->ex.body.len + len > SIM_MAX_BODY) {
    s->ex.too_large = true; /* keep consuming; answer 413 at END_STREAM */
    ob_buf_dispose(&s->ex.body);
    return 0;
  }
  ob_buf_append(&s->ex.body, data, len);
  return 0;
}

static void fail_stream(h2stream_t *s, int status, const char *msg) {
  ob_buf_t *b = &s->c->w->scratch;
  ob_buf_reset(b);
  sim_error_json(b, status, msg);
  op_head(&s->ex, status, "application/json", (int64_t)b->len);
  op_body(&s->ex, b->base, b->len);
  op_finish(&s->ex);
}

static int on_frame_recv(nghttp2_session *sess, const nghttp2_frame *frame, void *ud) {
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  h2stream_t *s = get_stream(sess, frame->hd.stream_id);
  if (!s || s->dispatched) return 0;
  s->dispatched = true;
  if (s->headers_full) fail_stream(s, 431, "request header too large");
  else if (!s->ex.method.base || !s->ex.path.base || !s->ex.path.len)
    fail_stream(s, 400, "missing :method or :path");
  else sim_ex_dispatch(&s->ex);
  return 0;
}

static int on_stream_close(nghttp2_session *sess, int32_t id, uint32_t error_code, void *ud) {
  h2stream_t *s = get_stream(sess, id);
  if (s) stream_free(s); /* an unfinished exchange counts as client_gone */
  return 0;
}

/* ---------------------------------------------------------------- io */

static void on_read(evutil_socket_t fd, short what, void *arg) {
  h2conn_t *c = arg;
  uint8_t buf[65536];
  ssize_t n = read(fd, buf, sizeof buf);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) {
    conn_free(c);
    return;
  }
  c->in_ng++;
  ssize_t rv = nghttp2_session_mem_recv(c->sess, buf, (size_t)n);
  c->in_ng--;
  if (rv < 0) {
    conn_free(c);
    return;
  }
  conn_send(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg) {
  h2conn_t *c = arg;
  event_del(c->wev);
  flush_out(c);
}

/* The callback table is shared, read-only, by every worker thread. */
static nghttp2_session_callbacks *cbs;
static pthread_once_t cbs_once = PTHREAD_ONCE_INIT;

static void cbs_init(void) {
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
}

void sim_h2_accept(sim_worker_t *w, int fd) {
  pthread_once(&cbs_once, cbs_init);
  h2conn_t *c = ob_xcalloc(1, sizeof *c);
  c->w = w;
  c->fd = fd;
  c->out = evbuffer_new();
  c->rev = event_new(w->base, fd, EV_READ | EV_PERSIST, on_read, c);
  c->wev = event_new(w->base, fd, EV_WRITE | EV_PERSIST, on_write, c);
  c->aux = event_new(w->base, -1, 0, on_aux, c);
  nghttp2_session_server_new(&c->sess, cbs, c);
  nghttp2_settings_entry iv[] = {
    {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 65536},
    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
  };
  nghttp2_submit_settings(c->sess, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  nghttp2_session_set_local_window_size(c->sess, NGHTTP2_FLAG_NONE, 0, 1 << 24);
  event_add(c->rev, NULL);
  conn_send(c);
}
