/*
 * client_h2.c: HTTP/2 client connections (h2 over TLS and h2c with prior
 * knowledge) on nghttp2 server sessions. Each stream becomes an sreq once
 * its headers and body are in. Response bodies are queued per stream in an
 * evbuffer and handed to nghttp2 without copying (NGHTTP2_DATA_FLAG_NO_COPY:
 * the DATA payload is moved from the stream's evbuffer straight into the
 * socket's output).
 *
 * nghttp2_session_send/recv are only called from this file's event
 * handlers, never from nghttp2 callbacks or from inside an ob_sreq_* call:
 * those schedule the connection's `flush` event instead.
 *
 * Each stream has one timer, whose meaning follows the stream's phase, so
 * that no client can hold a stream (and with it the connection) by going
 * quiet:
 *   header block open     client_header_ms from the first HEADERS frame; not
 *                         restarted by CONTINUATION frames
 *   buffered body coming  idle_ms since the last body bytes, but never past
 *                         client_body_ms from the end of the head
 *   response queued       idle_ms since the last DATA frame went out (a
 *                         client that stops opening its window leaves our
 *                         socket idle, so the write timeout never sees it)
 *   otherwise             none: the handler is working, or the body is
 *                         streamed and paced by the upstream's own timeouts
 */
#include "net_int.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

/* Stop producing frames while this much is queued for the socket. */
#define OUT_HIGH (64 * 1024)
/* How long a finished connection reads and drops what the client still
 * sends, so that our last frames are not lost to a reset (see linger). */
#define LINGER_MS 2000

typedef struct h2_conn h2_conn_t;

/* How many streams closed on the client's behalf are remembered. */
#define LEFT_OPEN 16

typedef struct h2_req {
  ob_sreq_t s; /* first */
  h2_conn_t *h;
  int32_t id;
  struct h2_req *next_ready;  /* dispatch list after a recv */
  struct h2_req *prev, *next; /* every open stream of the connection */
  struct evbuffer *out;       /* response body queued for DATA frames */
  struct event *timer;        /* the deadline of the stream's phase (see the top of the file); in
                               * the same allocation, after the struct */
  uint64_t due_ms;            /* that deadline (ob_clock_ms); 0: none in this phase */
  uint64_t fire_ms;           /* when the timer is due to fire; 0: not armed */
  uint64_t body_deadline_ms;  /* a buffered body must be in by then */
  ob_http_header_t *trailers; /* pending trailers, arena memory */
  size_t num_trailers;
  size_t headers_cap;
  size_t header_bytes;
  bool bad;                   /* request already answered with an error */
  bool dispatched;
  bool head_sent;
  bool end_queued;            /* the handler ended the body */
  bool reset;
  bool above_window;
  bool has_body;              /* request declared a body */
  bool no_body;               /* the response has no content (ob_http_response_bodyless) */
  bool remote_ended;          /* the client's END_STREAM arrived */
  bool head_done;             /* the request header block ended */
  bool timed_out;             /* answered 408 for a late body; reset once that is out */
} h2_req_t;

struct h2_conn {
  ob_client_conn_t *c;
  nghttp2_session *session;
  struct event *flush;
  struct event *idle;
  h2_req_t *ready_head, *ready_tail;
  h2_req_t *streams;          /* nghttp2_session_del does not report open streams, so we keep them */
  size_t num_streams;
  bool goaway_sent;
  int32_t goaway_last_id;     /* the last stream id that GOAWAY named */
  bool in_recv;
  bool calm;                  /* closing for too many client resets */
  bool lingering;             /* session over, GOAWAY written: draining input until the client closes */
  uint64_t resets_since_ms;   /* start of the current window of client resets */
  uint32_t resets;            /* RST_STREAM frames from the client in that window */
  int32_t max_stream_id;      /* highest stream id the client opened */
  int32_t left_open[LEFT_OPEN]; /* the last streams closed before the client's END_STREAM (see on_begin_frame) */
  unsigned left_open_next;
};

/* The window over which limits.max_client_resets counts. */
#define RESET_WINDOW_MS 10000

static const ob_sreq_ops_t h2_ops;

static ob_net_config_t *cfg_of(h2_conn_t *h) { return h->c->net->cfg; }
static void schedule_flush(h2_conn_t *h) { event_active(h->flush, EV_TIMEOUT, 0); }

static void arm_idle(h2_conn_t *h) { ob_net_arm(h->c->net, h->idle, cfg_of(h)->timeouts.keepalive_ms); }

static void req_free(h2_req_t *r) {
  event_del(r->timer);
  if (r->out) evbuffer_free(r->out);
  ob_net_sreq_dispose(&r->s);
  free(r);
}

/* Tell the handler the stream is over (once) and free it. */
static void req_finish(h2_conn_t *h, h2_req_t *r, bool completed) {
  if (r->prev) r->prev->next = r->next;
  else h->streams = r->next;
  if (r->next) r->next->prev = r->prev;
  h->num_streams--;
  if (r->dispatched) h->c->net->handler->on_close(&r->s, completed, h->c->net->ctx);
  req_free(r);
}

static void h2_destroy(h2_conn_t *h) {
  ob_client_conn_t *c = h->c;
  /* Streams still on the ready list were never handed to the handler. */
  for (h2_req_t *r = h->ready_head; r; r = r->next_ready) r->dispatched = false;
  h->ready_head = h->ready_tail = NULL;
  while (h->streams) req_finish(h, h->streams, false);
  nghttp2_session_del(h->session);
  event_free(h->flush);
  event_free(h->idle);
  free(h);
  c->proto_state = NULL;
  ob_net_client_release(c);
}

void ob_net_h2_free(ob_client_conn_t *c) { h2_destroy(c->proto_state); }

/* Answer an error for a stream the handler never saw. */
static void reply_error(h2_conn_t *h, h2_req_t *r, int status, const char *why);

static void arm_ms(struct event *ev, uint64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  evtimer_add(ev, &tv);
}

/*
 * The phase deadline is kept lazily, as nginx and HAProxy keep theirs: a
 * request moves through four or five phases and makes progress many times,
 * and re-adding the timer each time was several libevent calls per
 * request. The timer is only (re)armed when the new deadline is earlier
 * than when it fires; otherwise it fires early, on_stream_timer sees the
 * deadline still ahead (or gone) and re-arms for the rest (or does
 * nothing). ms: the deadline as a configured duration from now (a common
 * timeout), or 0 for an arbitrary one.
 */
static void set_due(h2_req_t *r, uint64_t now, uint64_t due, uint32_t ms) {
  r->due_ms = due;
  if (r->fire_ms && r->fire_ms <= due) return;
  if (ms)
    ob_net_arm(r->h->c->net, r->timer, ms);
  else
    arm_ms(r->timer, due > now ? due - now : 0);
  r->fire_ms = due;
}

/* The stream made progress (or changed phase): restart its deadline for
 * the phase it is in now. The header phase starts in on_begin_headers. */
static void stream_progress(h2_req_t *r);

/* The client sent something on the stream. While a response is queued and
 * not moving, only the client reading it (our DATA going out) is progress:
 * a client that keeps sending but never opens its window must not hold the
 * stream past idle_ms. */
static void client_progress(h2_req_t *r) {
  if (r->head_sent && evbuffer_get_length(r->out) > 0 && !r->reset) return;
  stream_progress(r);
}

static void stream_progress(h2_req_t *r) {
  if (!r->head_done) return;
  const ob_net_timeouts_t *t = &cfg_of(r->h)->timeouts;
  if (!r->remote_ended && !r->s.body_streaming && !r->timed_out) {
    uint64_t now = ob_clock_ms();
    if (r->body_deadline_ms < now + t->idle_ms)
      set_due(r, now, r->body_deadline_ms > now ? r->body_deadline_ms : now, 0);
    else
      set_due(r, now, now + t->idle_ms, t->idle_ms);
  } else if (evbuffer_get_length(r->out) > 0 && !r->reset) {
    uint64_t now = ob_clock_ms();
    set_due(r, now, now + t->idle_ms, t->idle_ms);
  } else {
    r->due_ms = 0; /* the timer, if armed, fires to find nothing due */
  }
}

static void on_stream_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  h2_req_t *r = arg;
  h2_conn_t *h = r->h;
  const ob_net_timeouts_t *t = &cfg_of(h)->timeouts;
  r->fire_ms = 0;
  if (!r->due_ms) return;
  uint64_t now = ob_clock_ms();
  if (r->due_ms > now) { /* progress since it was armed: wait for the rest */
    set_due(r, now, r->due_ms, 0);
    return;
  }
  r->due_ms = 0;
  if (!r->head_done) {
    /* Nothing else may be sent on the connection in the middle of a header
     * block, so the whole connection goes; the GOAWAY's last stream id
     * tells the client this stream was not processed. */
    ob_log_info("%s: request head on stream %d not received in %u ms; closing", h->c->peer, r->id,
                t->client_header_ms);
    nghttp2_session_terminate_session(h->session, NGHTTP2_NO_ERROR);
  } else if (!r->remote_ended && !r->s.body_streaming && !r->timed_out) {
    r->timed_out = true;
    if (!r->head_sent) {
      reply_error(h, r, 408, "request body not received in time");
    } else if (!r->reset) {
      /* Already answered (413, 431): only the body was still awaited. */
      r->reset = true;
      nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, r->id, NGHTTP2_CANCEL);
    }
    stream_progress(r);
  } else if (evbuffer_get_length(r->out) > 0 && !r->reset) {
    ob_log_info("%s: client stopped reading stream %d for %u ms; resetting it", h->c->peer, r->id, t->idle_ms);
    r->reset = true;
    nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, r->id, NGHTTP2_CANCEL);
  }
  schedule_flush(h);
}

/* Rapid reset (CVE-2023-44487): opening a stream and resetting it at once
 * costs the client two frames, while the stream may already have reached
 * the handler and the upstream; with resets the concurrent stream limit
 * never bites. Count the client's resets and close the connection past
 * limits.max_client_resets within RESET_WINDOW_MS. */
static void count_reset(h2_conn_t *h) {
  uint64_t now = ob_clock_ms();
  if (now - h->resets_since_ms >= RESET_WINDOW_MS) {
    h->resets_since_ms = now;
    h->resets = 0;
  }
  if (++h->resets <= cfg_of(h)->limits.max_client_resets || h->calm) return;
  h->calm = true;
  ob_log_warn("%s: more than %u stream resets within %d s (rapid reset); closing the connection", h->c->peer,
              cfg_of(h)->limits.max_client_resets, RESET_WINDOW_MS / 1000);
  nghttp2_session_terminate_session(h->session, NGHTTP2_ENHANCE_YOUR_CALM);
}

/* ---------------------------------------------------------------- nghttp2 callbacks */

static ssize_t send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *arg) {
  (void)s, (void)flags;
  h2_conn_t *h = arg;
  struct evbuffer *out = ob_sock_output(h->c->sock);
  if (evbuffer_get_length(out) >= OUT_HIGH) return NGHTTP2_ERR_WOULDBLOCK;
  evbuffer_add(out, data, len);
  return (ssize_t)len;
}

static int send_data_cb(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *src, void *arg) {
  (void)s;
  h2_conn_t *h = arg;
  h2_req_t *r = src->ptr;
  struct evbuffer *out = ob_sock_output(h->c->sock);
  evbuffer_add(out, framehd, 9);
  if (frame->data.padlen > 0) {
    uint8_t pad = (uint8_t)(frame->data.padlen - 1);
    evbuffer_add(out, &pad, 1);
  }
  evbuffer_remove_buffer(r->out, out, length);
  if (frame->data.padlen > 1) {
    static const uint8_t zeros[256];
    evbuffer_add(out, zeros, frame->data.padlen - 1);
  }
  return 0;
}

static ssize_t read_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                       nghttp2_data_source *src, void *arg) {
  (void)s, (void)id, (void)buf, (void)arg;
  h2_req_t *r = src->ptr;
  size_t avail = evbuffer_get_length(r->out);
  size_t n = avail < len ? avail : len;
  *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (n == avail && r->end_queued) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (r->num_trailers) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      nghttp2_nv *nv = ob_arena_alloc(&r->s.arena, r->num_trailers * sizeof *nv);
      for (size_t i = 0; i < r->num_trailers; i++)
        nv[i] = (nghttp2_nv){(uint8_t *)r->trailers[i].name.base, (uint8_t *)r->trailers[i].value.base,
                             r->trailers[i].name.len, r->trailers[i].value.len, NGHTTP2_NV_FLAG_NONE};
      nghttp2_submit_trailer(s, id, nv, r->num_trailers);
    }
  } else if (n == 0) {
    return NGHTTP2_ERR_DEFERRED;
  }
  return (ssize_t)n;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *arg) {
  h2_conn_t *h = arg;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  /* The timer rides in the stream's own allocation (sized at run time, as
   * libevent's ABI wants): one malloc less per stream. */
  h2_req_t *r = ob_xcalloc(1, sizeof *r + event_get_struct_event_size());
  r->h = h;
  r->id = frame->hd.stream_id;
  ob_net_sreq_init(&r->s, h->c, &h2_ops, 20);
  r->out = evbuffer_new();
  r->timer = (struct event *)(r + 1);
  evtimer_assign(r->timer, h->c->net->base, on_stream_timer, r);
  uint64_t now = ob_clock_ms();
  set_due(r, now, now + cfg_of(h)->timeouts.client_header_ms, cfg_of(h)->timeouts.client_header_ms);
  nghttp2_session_set_stream_user_data(s, r->id, r);
  r->next = h->streams;
  if (h->streams) h->streams->prev = r;
  h->streams = r;
  h->num_streams++;
  evtimer_del(h->idle);
  return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *arg) {
  (void)flags, (void)arg;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  h2_req_t *r = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
  if (!r || r->bad) return 0;
  ob_iov_t n = ob_iov((const char *)name, namelen), v = ob_iov((const char *)value, valuelen);
  r->header_bytes += namelen + valuelen + 32;
  if (r->header_bytes > cfg_of(r->h)->limits.max_header_bytes || r->s.num_headers >= OB_HTTP_MAX_HEADERS) {
    r->bad = true;
    return 0; /* answered with 431 once the header block ends */
  }
  ob_arena_t *a = &r->s.arena;
  if (namelen && name[0] == ':') {
    if (ob_iov_eq(n, OB_IOV_LIT(":method"))) r->s.method = ob_arena_dup(a, v);
    else if (ob_iov_eq(n, OB_IOV_LIT(":path"))) r->s.path = ob_arena_dup(a, v);
    else if (ob_iov_eq(n, OB_IOV_LIT(":authority"))) r->s.authority = ob_arena_dup(a, v);
    else if (ob_iov_eq(n, OB_IOV_LIT(":scheme"))) r->s.scheme = ob_arena_dup(a, v);
    return 0;
  }
  if (ob_iov_eq(n, OB_IOV_LIT("host"))) {
    if (!r->s.authority.len) r->s.authority = ob_arena_dup(a, v);
    return 0;
  }
  if (ob_iov_eq(n, OB_IOV_LIT("content-length"))) {
    r->has_body = !(v.len == 1 && v.base[0] == '0');
    return 0;
  }
  if (r->s.num_headers == r->headers_cap) {
    size_t cap = r->headers_cap ? r->headers_cap * 2 : 16;
    ob_http_header_t *nh = ob_arena_alloc(a, cap * sizeof *nh);
    if (r->s.num_headers) memcpy(nh, r->s.headers, r->s.num_headers * sizeof *nh);
    r->s.headers = nh;
    r->headers_cap = cap;
  }
  r->s.headers[r->s.num_headers].name = ob_arena_dup(a, n);
  r->s.headers[r->s.num_headers].value = ob_arena_dup(a, v);
  r->s.num_headers++;
  return 0;
}

/* Automatic WINDOW_UPDATE is off so that a streamed body is paced by the
 * upstream: the connection window is given back at once, a stream's window
 * at once for buffered bodies (bounded by max_body_bytes) and, for streamed
 * ones, only as the bytes are sent upstream (h2_body_consumed). */
static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *arg) {
  (void)flags, (void)arg;
  nghttp2_session_consume_connection(s, len);
  h2_req_t *r = nghttp2_session_get_stream_user_data(s, id);
  if (r && r->s.body_streaming && !r->end_queued && !r->reset) {
    ob_net_sreq_body_push(&r->s, data, len);
    return 0;
  }
  nghttp2_session_consume_stream(s, id, len);
  if (!r) return 0;
  client_progress(r);
  if (r->bad || r->dispatched) return 0;
  ob_buf_t *body = &r->s.body->buf;
  if (body->len + len > cfg_of(r->h)->limits.max_body_bytes) {
    reply_error(r->h, r, 413, "request body is larger than the limit");
    return 0;
  }
  ob_buf_append(body, data, len);
  return 0;
}

static void enqueue_ready(h2_conn_t *h, h2_req_t *r) {
  r->next_ready = NULL;
  if (h->ready_tail) h->ready_tail->next_ready = r;
  else h->ready_head = r;
  h->ready_tail = r;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *arg) {
  h2_conn_t *h = arg;
  if (frame->hd.type == NGHTTP2_RST_STREAM) count_reset(h);
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  h2_req_t *r = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
  if (!r) return 0;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    r->head_done = true;
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) r->remote_ended = true;
    r->body_deadline_ms = ob_clock_ms() + cfg_of(h)->timeouts.client_body_ms;
    if (r->bad) {
      reply_error(h, r, 431, "request header block is larger than the limit");
      return 0;
    }
    if (!r->s.method.len || !r->s.path.len || ob_iov_eq(r->s.method, OB_IOV_LIT("CONNECT"))) {
      reply_error(h, r, r->s.method.len && r->s.path.len ? 501 : 400, "unsupported or incomplete request");
      return 0;
    }
    if (!ob_http_is_valid_target(r->s.path)) {
      reply_error(h, r, 400, "invalid character in :path");
      return 0;
    }
    const ob_sreq_handler_t *hd = h->c->net->handler;
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && hd->stream_body && hd->stream_body(&r->s, h->c->net->ctx)) {
      r->s.body_streaming = true;
      ob_net_sreq_body_begin(&r->s);
      r->dispatched = true;
      enqueue_ready(h, r);
    }
  }
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
    r->remote_ended = true;
    if (r->s.body_streaming) {
      ob_net_sreq_body_end(&r->s);
    } else if (!r->bad && !r->dispatched) {
      r->dispatched = true;
      enqueue_ready(h, r);
    }
  }
  client_progress(r);
  return 0;
}

/*
 * RFC 9113 5.1.1: a client opens each stream with an id above all it used
 * before; HEADERS on a lower id is a connection error. nghttp2 catches that
 * only while it still holds the stream (open, or closed and kept for a
 * while); a HEADERS frame on an id it no longer knows, never opened or
 * long closed, it ignores. It does so on purpose: after we reset a stream
 * (or answered it early) the client may already have sent its trailers,
 * and that must not cost the connection. So the ids of the last LEFT_OPEN
 * streams that closed before the client's END_STREAM are remembered, and
 * HEADERS below the highest id on any other unknown stream ends the
 * connection with PROTOCOL_ERROR, as h2o does.
 */
static int on_begin_frame(nghttp2_session *s, const nghttp2_frame_hd *hd, void *arg) {
  h2_conn_t *h = arg;
  if (hd->type != NGHTTP2_HEADERS || !(hd->stream_id & 1)) return 0; /* even ids: nghttp2's error */
  if (hd->stream_id > h->max_stream_id) {
    h->max_stream_id = hd->stream_id;
    return 0;
  }
  /* Past our GOAWAY's last stream id, the client opened streams before it
   * read the GOAWAY; nghttp2 ignores them (RFC 9113 6.8), trailers too. */
  if (h->goaway_sent && hd->stream_id > h->goaway_last_id) return 0;
  if (nghttp2_session_find_stream(s, hd->stream_id)) return 0;
  for (unsigned i = 0; i < LEFT_OPEN; i++)
    if (h->left_open[i] == hd->stream_id) return 0;
  ob_log_debug("%s: HEADERS on stream %d after stream %d; closing", h->c->peer, hd->stream_id, h->max_stream_id);
  nghttp2_session_terminate_session(s, NGHTTP2_PROTOCOL_ERROR);
  return 0;
}

/* A HEADERS frame nghttp2 answered with RST_STREAM before the stream was
 * ever ours (REFUSED_STREAM past a SETTINGS_MAX_CONCURRENT_STREAMS the
 * client had not acknowledged yet): the client opened that stream and may
 * have its trailers in flight, as for a stream closed early. */
static int on_invalid_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, int lib_error_code, void *arg) {
  h2_conn_t *h = arg;
  (void)lib_error_code;
  int32_t id = frame->hd.stream_id;
  if (frame->hd.type == NGHTTP2_HEADERS && (id & 1) && id <= h->max_stream_id && !nghttp2_session_get_stream_user_data(s, id))
    h->left_open[h->left_open_next++ % LEFT_OPEN] = id;
  return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t error_code, void *arg) {
  (void)error_code;
  h2_conn_t *h = arg;
  h2_req_t *r = nghttp2_session_get_stream_user_data(s, id);
  if (!r) return 0;
  if (!r->remote_ended) h->left_open[h->left_open_next++ % LEFT_OPEN] = id;
  nghttp2_session_set_stream_user_data(s, id, NULL);
  /* A stream still on the ready list was never handed over. */
  for (h2_req_t **p = &h->ready_head, *prev = NULL; *p; prev = *p, p = &(*p)->next_ready) {
    if (*p == r) {
      *p = r->next_ready;
      if (h->ready_tail == r) h->ready_tail = prev;
      r->dispatched = false;
      break;
    }
  }
  bool completed = r->end_queued && !r->reset && evbuffer_get_length(r->out) == 0 && error_code == NGHTTP2_NO_ERROR;
  req_finish(h, r, completed);
  if (h->num_streams == 0 && h->idle) arm_idle(h);
  return 0;
}

/* ---------------------------------------------------------------- sending */

static void reply_error(h2_conn_t *h, h2_req_t *r, int status, const char *why) {
  r->bad = true;
  r->head_sent = true;
  ob_buf_t body;
  ob_buf_init(&body);
  ob_http_error_json(&body, status, why, NULL, NULL);
  evbuffer_add(r->out, body.base, body.len);
  char st[4], cl[24];
  snprintf(st, sizeof st, "%d", status);
  snprintf(cl, sizeof cl, "%zu", body.len);
  ob_buf_dispose(&body);
  nghttp2_nv nv[] = {
      {(uint8_t *)":status", (uint8_t *)st, 7, strlen(st), NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"content-type", (uint8_t *)"application/json", 12, 16, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"content-length", (uint8_t *)cl, 14, strlen(cl), NGHTTP2_NV_FLAG_NONE},
  };
  r->end_queued = true;
  nghttp2_data_provider dp = {.source.ptr = r, .read_callback = read_cb};
  nghttp2_submit_response(h->session, r->id, nv, 3, &dp);
  /* A phase change: answered at the end of the header block, the stream
   * leaves that block's deadline for the response's (or the body's). */
  stream_progress(r);
  ob_log_info("%s - \"%.*s %.*s\" %d %s", h->c->peer, (int)r->s.method.len, r->s.method.base, (int)r->s.path.len,
              r->s.path.base, status, why);
  schedule_flush(h);
}

/*
 * The session is over and its last frames (a GOAWAY) are written. Closing
 * the socket while the client is still sending (a flood, a rapid reset, an
 * endless header block) makes the kernel answer with a reset that discards
 * what we queued, so the client would never learn why. Streams end now;
 * the socket is half-closed and its input dropped until the client closes
 * or LINGER_MS pass, as client_h1.c does. TLS and draining connections
 * close at once.
 */
static void linger(h2_conn_t *h) {
  if (h->c->tls || h->c->draining) {
    h2_destroy(h);
    return;
  }
  h->lingering = true;
  for (h2_req_t *r = h->ready_head; r; r = r->next_ready) r->dispatched = false;
  h->ready_head = h->ready_tail = NULL;
  while (h->streams) {
    nghttp2_session_set_stream_user_data(h->session, h->streams->id, NULL);
    req_finish(h, h->streams, false);
  }
  evbuffer_drain(ob_sock_input(h->c->sock), evbuffer_get_length(ob_sock_input(h->c->sock)));
  ob_sock_enable(h->c->sock, EV_READ);
  shutdown(ob_sock_fd(h->c->sock), SHUT_WR);
  arm_ms(h->idle, LINGER_MS);
}

/* Write frames until nghttp2 has nothing more or the socket is full; then
 * hand completed requests to the handler and report drained streams. */
static void flush_session(h2_conn_t *h) {
  if (h->lingering) return;
  int rv = nghttp2_session_send(h->session);
  if (rv != 0 && rv != NGHTTP2_ERR_WOULDBLOCK) {
    ob_log_debug("h2 send to %s failed: %s", h->c->peer, nghttp2_strerror(rv));
    h2_destroy(h);
    return;
  }
  while (h->ready_head) {
    h2_req_t *r = h->ready_head;
    h->ready_head = r->next_ready;
    if (!h->ready_head) h->ready_tail = NULL;
    h->c->net->handler->on_request(&r->s, h->c->net->ctx);
  }
  if (!nghttp2_session_want_read(h->session) && !nghttp2_session_want_write(h->session) &&
      evbuffer_get_length(ob_sock_output(h->c->sock)) == 0) {
    linger(h);
  }
}

static void on_flush(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  flush_session(arg);
}

static void on_read(ob_sock_t *sock, void *arg) {
  h2_conn_t *h = arg;
  struct evbuffer *in = ob_sock_input(sock);
  if (h->lingering) {
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  while (evbuffer_get_length(in) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
    ssize_t rv = nghttp2_session_mem_recv(h->session, v.iov_base, v.iov_len);
    if (rv < 0) {
      ob_log_debug("h2 from %s: %s", h->c->peer, nghttp2_strerror((int)rv));
      evbuffer_drain(in, evbuffer_get_length(in));
      if (rv == NGHTTP2_ERR_FLOODED) {
        /* The client reads nothing: a GOAWAY would only wait behind the
         * ACKs it never took. */
        h2_destroy(h);
        return;
      }
      /* Fatal for the session (endless CONTINUATION frames, a bad preface):
       * nghttp2 queues no GOAWAY for these, so say why ourselves, stop
       * feeding the session and close once it is out (linger). */
      ob_sock_disable(sock, EV_READ);
      nghttp2_session_terminate_session(
          h->session, rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC ? NGHTTP2_PROTOCOL_ERROR : NGHTTP2_ENHANCE_YOUR_CALM);
      flush_session(h);
      return;
    }
    evbuffer_drain(in, (size_t)rv);
  }
  flush_session(h);
}

static void on_write(ob_sock_t *sock, void *arg) {
  h2_conn_t *h = arg;
  if (evbuffer_get_length(ob_sock_output(sock)) < OUT_HIGH) flush_session(h);
}

static void on_event(ob_sock_t *sock, short what, void *arg) {
  (void)sock;
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) h2_destroy(arg);
}

static void on_idle(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  h2_conn_t *h = arg;
  if (h->lingering) {
    h2_destroy(h);
    return;
  }
  if (h->num_streams) return;
  nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->session),
                        NGHTTP2_NO_ERROR, NULL, 0);
  nghttp2_session_terminate_session(h->session, NGHTTP2_NO_ERROR);
  schedule_flush(h);
}

/* ---------------------------------------------------------------- sreq ops */

static ob_err_t h2_send_head(ob_sreq_t *s, int status, const ob_http_header_t *hdr, size_t n, int64_t cl, bool end) {
  h2_req_t *r = (h2_req_t *)s;
  if (r->reset || r->head_sent) return OB_ERR_CONN;
  r->head_sent = true;
  s->status = status;
  r->no_body = ob_http_response_bodyless(s->method, status);
  nghttp2_nv *nv = ob_arena_alloc(&s->arena, (n + 2) * sizeof *nv);
  char *st = ob_arena_alloc(&s->arena, OB_U64_CHARS);
  ob_fmt_u64(st, status >= 100 && status <= 999 ? (uint64_t)status : 500);
  size_t k = 0;
  nv[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)st, 7, 3, NGHTTP2_NV_FLAG_NONE};
  for (size_t i = 0; i < n; i++) {
    /* HTTP/2 field names are lower case (RFC 9113 8.2.1). */
    char *name = ob_arena_alloc(&s->arena, hdr[i].name.len + 1);
    for (size_t j = 0; j < hdr[i].name.len; j++) {
      char ch = hdr[i].name.base[j];
      name[j] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    /* Values are borrowed only for this call (they often point into an
     * upstream's input buffer), so nghttp2 copies them; the names live in
     * the stream's arena until the HEADERS frame is out. */
    nv[k++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)hdr[i].value.base, hdr[i].name.len, hdr[i].value.len,
                           NGHTTP2_NV_FLAG_NO_COPY_NAME | ob_net_h2_nv_flags(hdr[i].name)};
  }
  if (cl >= 0) {
    char *v = ob_arena_alloc(&s->arena, OB_U64_CHARS);
    size_t len = ob_fmt_u64(v, (uint64_t)cl);
    nv[k++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)v, 14, len, NGHTTP2_NV_FLAG_NONE};
  }
  int rv;
  if (end || r->no_body) {
    r->end_queued = true;
    rv = nghttp2_submit_response(r->h->session, r->id, nv, k, NULL);
  } else {
    nghttp2_data_provider dp = {.source.ptr = r, .read_callback = read_cb};
    rv = nghttp2_submit_response(r->h->session, r->id, nv, k, &dp);
  }
  schedule_flush(r->h);
  return rv == 0 ? OB_OK : OB_ERR_CONN;
}

static void h2_send_data(ob_sreq_t *s, struct evbuffer *data, bool end) {
  h2_req_t *r = (h2_req_t *)s;
  size_t len = evbuffer_get_length(data);
  if (r->reset || r->end_queued || r->no_body) {
    evbuffer_drain(data, len);
    return;
  }
  s->bytes_out += len;
  evbuffer_add_buffer(r->out, data);
  if (!r->due_ms) stream_progress(r);
  if (evbuffer_get_length(r->out) > cfg_of(r->h)->limits.stream_window_bytes) r->above_window = true;
  if (end) r->end_queued = true;
  nghttp2_session_resume_data(r->h->session, r->id);
  schedule_flush(r->h);
}

static void h2_send_trailers(ob_sreq_t *s, const ob_http_header_t *t, size_t n) {
  h2_req_t *r = (h2_req_t *)s;
  if (r->reset || r->end_queued) return;
  r->trailers = ob_arena_alloc(&s->arena, (n ? n : 1) * sizeof *r->trailers);
  for (size_t i = 0; i < n; i++) {
    r->trailers[i].name = ob_arena_dup(&s->arena, t[i].name);
    r->trailers[i].value = ob_arena_dup(&s->arena, t[i].value);
  }
  r->num_trailers = n;
  r->end_queued = true;
  nghttp2_session_resume_data(r->h->session, r->id);
  schedule_flush(r->h);
}

static void h2_reset(ob_sreq_t *s) {
  h2_req_t *r = (h2_req_t *)s;
  if (r->reset) return;
  r->reset = true;
  nghttp2_submit_rst_stream(r->h->session, NGHTTP2_FLAG_NONE, r->id, NGHTTP2_INTERNAL_ERROR);
  schedule_flush(r->h);
}

static size_t h2_pending(const ob_sreq_t *s) { return evbuffer_get_length(((const h2_req_t *)s)->out); }

static void h2_body_consumed(ob_sreq_t *s, size_t n) {
  h2_req_t *r = (h2_req_t *)s;
  if (r->reset) return;
  nghttp2_session_consume_stream(r->h->session, r->id, n);
  schedule_flush(r->h);
}

static const ob_sreq_ops_t h2_ops = {
    .send_head = h2_send_head,
    .send_data = h2_send_data,
    .send_trailers = h2_send_trailers,
    .reset = h2_reset,
    .pending = h2_pending,
    .body_consumed = h2_body_consumed,
};

/* Streams whose queue drained to half the window after being above it get
 * on_writable; called after frames were produced. */
static int on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *arg) {
  h2_conn_t *h = arg;
  if (frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS) return 0;
  h2_req_t *r = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
  if (r && (r->s.body_streaming || r->timed_out) && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && !r->remote_ended &&
      !r->reset) {
    /* The response is complete while the client is still streaming (a gRPC
     * status before the client's stream ended), or the 408 for a body that
     * came too slowly is out: ask it to stop without error (RFC 9113 8.1),
     * which also closes the stream and so ends the exchange. Other buffered
     * requests are not reset this way: some clients (curl 7.88) report such
     * a reset as a failure, so their remaining body is read and dropped
     * instead. */
    nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, r->id, NGHTTP2_NO_ERROR);
    return 0;
  }
  if (frame->hd.type != NGHTTP2_DATA) return 0;
  if (r) stream_progress(r);
  if (r && r->dispatched && r->above_window &&
      evbuffer_get_length(r->out) <= cfg_of(h)->limits.stream_window_bytes / 2) {
    r->above_window = false;
    h->c->net->handler->on_writable(&r->s, h->c->net->ctx);
  }
  return 0;
}

/* ---------------------------------------------------------------- lifecycle */

void ob_net_h2_start(ob_client_conn_t *c) {
  h2_conn_t *h = ob_xcalloc(1, sizeof *h);
  h->c = c;
  c->proto_state = h;
  ob_net_t *n = c->net;
  nghttp2_session_callbacks *cb;
  nghttp2_option *opt;
  /* These fail only for want of memory. That costs this connection, not
   * the process: the client is closed before anything was sent. */
  int rv = nghttp2_session_callbacks_new(&cb);
  if (rv != 0) goto fail;
  rv = nghttp2_option_new(&opt);
  if (rv != 0) goto fail_cb;
  nghttp2_session_callbacks_set_send_callback(cb, send_cb);
  nghttp2_session_callbacks_set_send_data_callback(cb, send_data_cb);
  nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame_recv);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  nghttp2_option_set_max_send_header_block_length(opt, n->cfg->limits.max_header_bytes * 2u);
  nghttp2_option_set_no_auto_window_update(opt, 1);
  /* A client that floods SETTINGS or PING and never reads the ACKs makes
   * nghttp2 queue one per frame; past this many the session fails with
   * NGHTTP2_ERR_FLOODED and the connection is closed. (1000 is also
   * nghttp2's default; stated here because the bound matters.) */
  nghttp2_option_set_max_outbound_ack(opt, 1000);
  rv = nghttp2_session_server_new2(&h->session, cb, h, opt);
  nghttp2_option_del(opt);
fail_cb:
  nghttp2_session_callbacks_del(cb);
fail:
  if (rv != 0) {
    ob_log_error("%s: cannot start an HTTP/2 session: %s; closing", c->peer, nghttp2_strerror(rv));
    free(h);
    c->proto_state = NULL;
    ob_net_client_release(c);
    return;
  }
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, n->cfg->limits.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 20},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, n->cfg->limits.max_header_bytes},
  };
  nghttp2_submit_settings(h->session, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  h->flush = event_new(n->base, -1, 0, on_flush, h);
  h->idle = evtimer_new(n->base, on_idle, h);
  struct timeval wtv = {n->cfg->timeouts.idle_ms / 1000, (n->cfg->timeouts.idle_ms % 1000) * 1000};
  ob_sock_set_write_timeout(c->sock, &wtv);
  ob_sock_setwatermark(c->sock, EV_WRITE, OUT_HIGH / 2, 0);
  ob_sock_setcb(c->sock, on_read, on_write, on_event, h);
  ob_sock_enable(c->sock, EV_READ | EV_WRITE);
  arm_idle(h);
  if (c->draining) ob_net_h2_drain(c);
  on_read(c->sock, h);
}

void ob_net_h2_drain(ob_client_conn_t *c) {
  h2_conn_t *h = c->proto_state;
  if (h->lingering) {
    h2_destroy(h);
    return;
  }
  if (h->goaway_sent) return;
  h->goaway_sent = true;
  h->goaway_last_id = nghttp2_session_get_last_proc_stream_id(h->session);
  /* Streams already started finish; no new ones are accepted. */
  nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE, h->goaway_last_id, NGHTTP2_NO_ERROR, NULL, 0);
  if (h->num_streams == 0) nghttp2_session_terminate_session(h->session, NGHTTP2_NO_ERROR);
  schedule_flush(h);
}
