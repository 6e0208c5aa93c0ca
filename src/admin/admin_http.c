/*
 * admin_http.c: the admin listener's HTTP/1.1 server. It owns the listening
 * socket and the admin connections; it knows nothing of the endpoints
 * (admin.c), and it must not touch the client side's connections.
 *
 * Why not libevent's evhttp, which served admin before: evhttp 2.1 has no
 * deadline for a whole request head (its read timeout restarts with every
 * byte, so a head trickled a byte a second stays open for ever), no limit on
 * the head unless asked and then an HTML error page, it reads a body before
 * the handler can refuse the request, and a client streaming one endless
 * header line grew its buffer without bound while the loop it shares with
 * the proxy spun. Here the head is parsed by the http module's parser, the
 * same that reads every client request (so one hardened parser serves
 * both), with admin's own limits:
 *
 *   - the head must fit in admin.max_header_bytes (431) and arrive within
 *     admin.header_timeout_ms of the connection opening or of the previous
 *     answer (408); reading stops at the limit, so a client streaming an
 *     endless header costs at most that many bytes, and no CPU while it
 *     waits;
 *   - on_head sees the head before any body byte is read, so a request
 *     without the admin token is refused with its body unread;
 *   - the body must fit in admin.max_body_bytes (413, from Content-Length
 *     before it is read) and arrive within admin.body_timeout_ms (408);
 *   - at most admin.max_connections connections are open; another is
 *     answered 503 and closed.
 * Every error is JSON in the admin API's own shape with Connection: close.
 *
 * Connection states (one request at a time; pipelined bytes wait in the
 * input buffer, with reading stopped, until the answer is written):
 *   HEAD    waiting for a complete head (header deadline)
 *   BODY    reading the body (body deadline)
 *   WAIT    the request is with the handler; nothing is read
 *   SEND    the answer is being written (body deadline: a client must take it)
 *   LINGER  after an answer that closes the connection: our side is shut
 *           down, and whatever the client still sends is read and dropped
 *           (up to a bound, then no longer read) until it closes or a short
 *           while passed, so the kernel does not reset the connection for
 *           unread input and lose the answer before the client read it
 *           (nginx's lingering close)
 */
#include "admin_int.h"

#include "http.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* Lingering close: the connection stays this long after the answer (less
 * if the client closes first), and at most this many bytes are read and
 * dropped meanwhile. */
#define LINGER_MS 2000
#define LINGER_BYTES ((size_t)256 << 10)
/* Body bytes read from the socket per turn before they are moved into the
 * request's buffer. */
#define BODY_READ_BYTES ((size_t)64 << 10)
#define ACCEPT_PAUSE_MS 1000

typedef enum { C_HEAD, C_BODY, C_WAIT, C_SEND, C_LINGER } conn_state_t;

typedef struct limits {
  uint32_t head_bytes, header_ms, body_ms, max_conns;
  uint64_t body_bytes;
} limits_t;

struct ob_admin_http {
  struct event_base *base;
  struct evconnlistener *lis;
  struct event *resume; /* accepting again after a failed accept */
  ob_admin_http_cbs_t cbs;
  void *ctx;
  limits_t lim;
  struct admin_conn *conns; /* every open connection, for destroy */
  uint32_t num_conns;
};

typedef struct admin_conn {
  ob_admin_http_t *s;
  struct admin_conn *prev, *next;
  struct bufferevent *bev; /* NULL once the socket is gone while the handler holds req */
  struct event *timer;
  conn_state_t state;
  limits_t lim; /* the server's limits when this request began */
  ob_admin_req_t req;
  ob_h1_body_t body_kind;
  uint64_t body_remaining;
  ob_h1_chunked_t chunked;
  bool body_read; /* the announced body was read completely */
  bool keep_alive;
  size_t lingered;
} admin_conn_t;

static void process(admin_conn_t *c);

static void read_limits(limits_t *l, const ob_config_t *cfg) {
  l->head_bytes = cfg->admin.max_header_bytes;
  l->body_bytes = cfg->admin.max_body_bytes;
  l->header_ms = cfg->admin.header_timeout_ms;
  l->body_ms = cfg->admin.body_timeout_ms;
  l->max_conns = cfg->admin.max_connections;
}

static void arm(admin_conn_t *c, uint32_t ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  evtimer_add(c->timer, &tv);
}

static void req_clear(ob_admin_req_t *r) {
  free(r->path);
  free(r->query);
  if (r->authorization) OPENSSL_cleanse(r->authorization, strlen(r->authorization));
  free(r->authorization);
  ob_buf_dispose(&r->body);
  admin_conn_t *c = r->conn_;
  *r = (ob_admin_req_t){.conn_ = c};
}

static void conn_free(admin_conn_t *c) {
  ob_admin_http_t *s = c->s;
  if (c->prev) c->prev->next = c->next;
  else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->num_conns--;
  req_clear(&c->req);
  event_free(c->timer);
  if (c->bev) bufferevent_free(c->bev);
  free(c);
}

/* Queue one answer and stop reading until it is written (on_write). */
static void send_answer(admin_conn_t *c, int status, const char *ctype, const char *body, size_t len, const char *extra,
                        bool head_only) {
  uint32_t keep_s = c->lim.header_ms / 1000;
  if (keep_s == 0) c->keep_alive = false; /* an idle timeout a client cannot be told of */
  ob_buf_t h;
  ob_buf_init(&h);
  ob_h1_append_status_line(&h, status);
  ob_buf_printf(&h, "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, len);
  if (extra) ob_buf_append_str(&h, extra);
  /* Keep-Alive tells clients that reuse connections (undici) when this one
   * will be closed idle, so they never send into a closing connection. */
  if (c->keep_alive) ob_buf_printf(&h, "Keep-Alive: timeout=%u\r\n\r\n", keep_s);
  else ob_buf_append_str(&h, "Connection: close\r\n\r\n");
  struct evbuffer *out = bufferevent_get_output(c->bev);
  evbuffer_add(out, h.base, h.len);
  if (!head_only) evbuffer_add(out, body, len);
  ob_buf_dispose(&h);
  c->state = C_SEND;
  bufferevent_disable(c->bev, EV_READ);
  arm(c, c->lim.body_ms);
}

/* An error of the server itself: JSON, and the connection closes after it. */
static void answer_error(admin_conn_t *c, int status, const char *msg) {
  ob_buf_t b;
  ob_buf_init(&b);
  ob_http_error_json(&b, status, msg, NULL, NULL);
  c->keep_alive = false;
  req_clear(&c->req);
  send_answer(c, status, "application/json", b.base, b.len, NULL, false);
  ob_buf_dispose(&b);
}

static void body_too_large(admin_conn_t *c) {
  char msg[120];
  snprintf(msg, sizeof msg, "request body above admin.max_body_bytes (%llu bytes)", (unsigned long long)c->lim.body_bytes);
  answer_error(c, 413, msg);
}

static void dispatch(admin_conn_t *c) {
  c->body_read = true;
  c->state = C_WAIT;
  evtimer_del(c->timer);
  bufferevent_disable(c->bev, EV_READ);
  c->s->cbs.on_request(&c->req, c->s->ctx);
}

/* The request's fields from its parsed head; false (answered 400) when the
 * target is not an origin-form path. */
static bool fill_req(admin_conn_t *c, const ob_h1_request_t *h) {
  ob_admin_req_t *r = &c->req;
  if (h->method.len < sizeof r->method) {
    memcpy(r->method, h->method.base, h->method.len);
    r->method[h->method.len] = '\0';
  } else {
    strcpy(r->method, "?");
  }
  r->is_head = ob_iov_eq(h->method, OB_IOV_LIT("HEAD"));
  if (h->target.len == 0 || h->target.base[0] != '/') {
    answer_error(c, 400, "expected an origin-form request target (a path starting with /)");
    return false;
  }
  const char *q = memchr(h->target.base, '?', h->target.len);
  size_t plen = q ? (size_t)(q - h->target.base) : h->target.len;
  char *raw = ob_xstrndup(h->target.base, plen);
  size_t dlen = 0;
  r->path = evhttp_uridecode(raw, 0, &dlen);
  free(raw);
  if (!r->path || strlen(r->path) != dlen) { /* %00 in the path */
    answer_error(c, 400, "bad path");
    return false;
  }
  if (q) r->query = ob_xstrndup(q + 1, h->target.len - plen - 1);
  for (size_t i = 0; i < h->num_headers; i++) {
    if (ob_iov_eq_str_nocase(h->headers[i].name, "authorization")) {
      r->authorization = ob_xstrndup(h->headers[i].value.base, h->headers[i].value.len);
      break;
    }
  }
  return true;
}

/* HEAD: true when the state moved on (the loop in process goes on). */
static bool read_head(admin_conn_t *c) {
  struct evbuffer *in = bufferevent_get_input(c->bev);
  size_t len = evbuffer_get_length(in);
  if (!len) return false;
  /* One byte over the limit is enough for the parser to tell "too large". */
  size_t n = len < (size_t)c->lim.head_bytes + 1 ? len : (size_t)c->lim.head_bytes + 1;
  const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
  ob_h1_request_t h;
  ob_http_header_t hdrs[OB_HTTP_MAX_HEADERS];
  const char *why = "malformed request";
  int r = ob_h1_parse_request(p, n, &h, hdrs, OB_HTTP_MAX_HEADERS, c->lim.head_bytes, &why);
  if (r == OB_ERR_INCOMPLETE) return false;
  if (r == OB_ERR_HEADERS_TOO_LARGE) {
    char msg[160];
    snprintf(msg, sizeof msg, "request head above admin.max_header_bytes (%u bytes) or %d header fields",
             c->lim.head_bytes, OB_HTTP_MAX_HEADERS);
    answer_error(c, 431, msg);
    return false;
  }
  if (r < 0) {
    answer_error(c, r == OB_ERR_NOT_IMPLEMENTED ? 501 : 400, why);
    return false;
  }
  c->keep_alive = h.keep_alive;
  c->body_kind = h.body;
  c->body_remaining = h.body == OB_H1_BODY_LENGTH ? h.content_length : 0;
  c->body_read = false;
  ob_admin_req_t *q = &c->req;
  q->has_body = h.body == OB_H1_BODY_CHUNKED || (h.body == OB_H1_BODY_LENGTH && h.content_length > 0);
  bool expect = h.expect_continue;
  bool ok = fill_req(c, &h);
  evbuffer_drain(in, (size_t)r); /* h points into it: last */
  if (!ok) return false;
  c->state = C_WAIT; /* the handler has the request now, even if only its head */
  if (!c->s->cbs.on_head(q, c->s->ctx)) return false; /* answered, the body unread */
  if (h.body == OB_H1_BODY_LENGTH && c->body_remaining > c->lim.body_bytes) {
    body_too_large(c);
    return false;
  }
  if (!q->has_body) {
    dispatch(c);
    return false;
  }
  if (expect) evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
  ob_h1_chunked_init(&c->chunked);
  c->state = C_BODY;
  bufferevent_setwatermark(c->bev, EV_READ, 0, BODY_READ_BYTES);
  arm(c, c->lim.body_ms);
  return true;
}

/* BODY: moves what arrived into req.body; false once answered or waiting. */
static bool read_body(admin_conn_t *c) {
  struct evbuffer *in = bufferevent_get_input(c->bev);
  size_t len = evbuffer_get_length(in);
  if (!len) return false;
  ob_buf_t *b = &c->req.body;
  if (c->body_kind == OB_H1_BODY_LENGTH) {
    size_t take = len < c->body_remaining ? len : (size_t)c->body_remaining;
    evbuffer_remove(in, ob_buf_reserve(b, take), take);
    b->len += take;
    c->body_remaining -= take;
  } else {
    const char *p = (const char *)evbuffer_pullup(in, -1);
    size_t off = 0;
    while (off < len && !c->chunked.done) {
      size_t data = 0;
      const char *why = "malformed chunked body";
      int k = ob_h1_chunked_step(&c->chunked, p + off, len - off, &data, &why);
      if (k < 0) {
        answer_error(c, 400, why);
        return false;
      }
      if (data) {
        if (b->len + data > c->lim.body_bytes) {
          body_too_large(c);
          return false;
        }
        ob_buf_append(b, p + off, data);
      }
      if (k == 0) break;
      off += (size_t)k;
    }
    evbuffer_drain(in, off);
    if (!c->chunked.done) return false;
  }
  if (c->body_kind == OB_H1_BODY_LENGTH && c->body_remaining) return false;
  dispatch(c);
  return false;
}

static void process(admin_conn_t *c) {
  for (;;) {
    if (c->state == C_LINGER) {
      struct evbuffer *in = bufferevent_get_input(c->bev);
      c->lingered += evbuffer_get_length(in);
      evbuffer_drain(in, evbuffer_get_length(in));
      /* A client that keeps sending is not read any further, but the
       * connection stays until the timer: closing now, with its bytes
       * unread, would reset it before it read the answer. */
      if (c->lingered > LINGER_BYTES) bufferevent_disable(c->bev, EV_READ);
      return;
    }
    bool more = c->state == C_HEAD ? read_head(c) : c->state == C_BODY ? read_body(c) : false;
    if (!more) return;
  }
}

/* Ready for the next request on this connection. */
static void next_request(admin_conn_t *c) {
  c->lim = c->s->lim;
  c->state = C_HEAD;
  bufferevent_setwatermark(c->bev, EV_READ, 0, (size_t)c->lim.head_bytes + 1);
  bufferevent_enable(c->bev, EV_READ);
  arm(c, c->lim.header_ms);
}

static void on_read(struct bufferevent *bev, void *arg) {
  (void)bev;
  process(arg);
}

static void on_write(struct bufferevent *bev, void *arg) {
  admin_conn_t *c = arg;
  if (c->state != C_SEND) return; /* a 100 Continue went out */
  if (c->keep_alive) {
    next_request(c);
    process(c); /* a pipelined request may be in already */
    return;
  }
  shutdown(bufferevent_getfd(bev), SHUT_WR);
  c->state = C_LINGER;
  c->lingered = 0;
  bufferevent_setwatermark(bev, EV_READ, 0, BODY_READ_BYTES);
  bufferevent_enable(bev, EV_READ);
  arm(c, LINGER_MS);
  process(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  (void)what;
  admin_conn_t *c = arg;
  if (c->state == C_WAIT) { /* the handler holds req: free on its answer */
    bufferevent_free(c->bev);
    c->bev = NULL;
    evtimer_del(c->timer);
    return;
  }
  conn_free(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  admin_conn_t *c = arg;
  char msg[120];
  switch (c->state) {
  case C_HEAD:
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) { /* idle: nothing to answer */
      conn_free(c);
      return;
    }
    snprintf(msg, sizeof msg, "the request head did not arrive within admin.header_timeout_ms (%u ms)", c->lim.header_ms);
    answer_error(c, 408, msg);
    return;
  case C_BODY:
    snprintf(msg, sizeof msg, "the request body did not arrive within admin.body_timeout_ms (%u ms)", c->lim.body_ms);
    answer_error(c, 408, msg);
    return;
  case C_WAIT: /* the handler's turn; no deadline */
    return;
  default: /* SEND: the client does not read its answer; LINGER: done */
    conn_free(c);
    return;
  }
}

/* Over admin.max_connections: one try at a 503, then close. */
static void refuse(ob_admin_http_t *s, evutil_socket_t fd) {
  char msg[120];
  snprintf(msg, sizeof msg, "the admin listener has admin.max_connections (%u) connections open", s->lim.max_conns);
  ob_buf_t b, h;
  ob_buf_init(&b);
  ob_buf_init(&h);
  ob_http_error_json(&b, 503, msg, NULL, NULL);
  ob_h1_append_status_line(&h, 503);
  ob_buf_printf(&h, "Content-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", b.len);
  ob_buf_append(&h, b.base, b.len);
  ssize_t n = send(fd, h.base, h.len, MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)n;
  ob_buf_dispose(&b);
  ob_buf_dispose(&h);
  evutil_closesocket(fd);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int socklen, void *arg) {
  (void)l;
  (void)sa;
  (void)socklen;
  ob_admin_http_t *s = arg;
  if (s->num_conns >= s->lim.max_conns) {
    refuse(s, fd);
    return;
  }
  admin_conn_t *c = ob_xcalloc(1, sizeof *c);
  c->s = s;
  c->req.conn_ = c;
  c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
  c->timer = evtimer_new(s->base, on_timer, c);
  if (!c->bev || !c->timer) {
    if (c->timer) event_free(c->timer);
    if (c->bev) bufferevent_free(c->bev);
    else evutil_closesocket(fd);
    free(c);
    return;
  }
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->num_conns++;
  bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
  bufferevent_enable(c->bev, EV_WRITE);
  next_request(c);
}

/* Out of descriptors (EMFILE): the listener stays readable, so accepting
 * pauses for a second instead of spinning. */
static void on_accept_error(struct evconnlistener *l, void *arg) {
  ob_admin_http_t *s = arg;
  ob_log_warn("admin: accept failed, pausing for %d ms: %s", ACCEPT_PAUSE_MS, strerror(errno));
  evconnlistener_disable(l);
  struct timeval tv = {ACCEPT_PAUSE_MS / 1000, (ACCEPT_PAUSE_MS % 1000) * 1000};
  evtimer_add(s->resume, &tv);
}

static void on_resume(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  ob_admin_http_t *s = arg;
  evconnlistener_enable(s->lis);
}

void ob_admin_http_reply(ob_admin_req_t *r, int status, const char *ctype, const char *body, size_t len,
                         const char *extra) {
  admin_conn_t *c = r->conn_;
  if (!c->bev) { /* the client went away while the handler worked */
    conn_free(c);
    return;
  }
  if (r->has_body && !c->body_read) c->keep_alive = false; /* its body is still on the wire */
  send_answer(c, status, ctype, body, len, extra, r->is_head);
  req_clear(r);
}

ob_admin_http_t *ob_admin_http_create(struct event_base *base, const ob_config_t *cfg, const ob_admin_http_cbs_t *cbs,
                                      void *ctx, unsigned *port) {
  ob_admin_http_t *s = ob_xcalloc(1, sizeof *s);
  s->base = base;
  s->cbs = *cbs;
  s->ctx = ctx;
  read_limits(&s->lim, cfg);
  char service[8];
  snprintf(service, sizeof service, "%u", (unsigned)cfg->admin.port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
  int gai = getaddrinfo(cfg->admin.host, service, &hints, &ai);
  if (gai != 0) {
    ob_log_error("admin: cannot resolve %s: %s", cfg->admin.address, gai_strerror(gai));
    free(s);
    return NULL;
  }
  for (struct addrinfo *a = ai; a && !s->lis; a = a->ai_next)
    s->lis = evconnlistener_new_bind(base, on_accept, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                                     128, a->ai_addr, (int)a->ai_addrlen);
  freeaddrinfo(ai);
  if (!s->lis) {
    ob_log_error("admin: cannot listen on %s: %s", cfg->admin.address, strerror(errno));
    free(s);
    return NULL;
  }
  s->resume = evtimer_new(base, on_resume, s);
  evconnlistener_set_error_cb(s->lis, on_accept_error);
  /* The bound port, not the configured one: port 0 picks a free port. */
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  *port = cfg->admin.port;
  if (getsockname(evconnlistener_get_fd(s->lis), (struct sockaddr *)&ss, &sl) == 0)
    *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
  return s;
}

void ob_admin_http_set_limits(ob_admin_http_t *s, const ob_config_t *cfg) { read_limits(&s->lim, cfg); }

void ob_admin_http_destroy(ob_admin_http_t *s) {
  if (!s) return;
  while (s->conns) conn_free(s->conns);
  if (s->resume) event_free(s->resume);
  if (s->lis) evconnlistener_free(s->lis);
  free(s);
}
