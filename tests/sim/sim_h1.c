/*
 * sim_h1: obleth-sim's HTTP/1.1 server side, written directly on a socket
 * with two libevent events and two evbuffers (no evhttp: the simulator must
 * control exactly when bytes go out and how a response breaks).
 *
 * One connection runs one exchange at a time; pipelined requests wait in the
 * input buffer. The socket stays readable while a response is pending so a
 * client that goes away is noticed at once (its exchange counts as
 * client_gone and leaves the slot queue). Responses are written with a direct
 * write attempt as soon as the api hands over bytes; EV_WRITE is armed only
 * when the kernel buffer is full.
 *
 * Re-entrancy: the api may call finish()/abort() from inside dispatch (the
 * parse loop) or from its own timer. Neither path closes the connection or
 * starts the next request inline; they flag the state and let the parse loop
 * or the deferred "aux" event do it, so nothing is freed under a caller.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "sim.h"

enum {
  RS_HEAD,        /* waiting for a header block */
  RS_BODY,        /* Content-Length body */
  RS_CHUNK_SIZE,  /* chunked: size line */
  RS_CHUNK_DATA,
  RS_CHUNK_CRLF,
  RS_TRAILER,
  RS_WAIT,        /* request dispatched, response pending */
};

typedef struct h1conn {
  sim_worker_t *w;
  int fd;
  struct event *rev, *wev, *aux;
  struct evbuffer *in, *out;
  int rs;
  uint64_t remaining;      /* body / chunk bytes still expected */
  bool ex_live;            /* ex initialised for the current request */
  bool dispatched;         /* ex handed to the api */
  bool read_paused;        /* too much input parked behind a response */
  bool resp_done;          /* api ended the response */
  bool keep_alive;         /* for the current request */
  bool http10;
  bool head_req;
  bool chunked_resp;
  bool streaming;          /* response length unknown: flush every body call */
  bool closing;            /* close once the output is flushed */
  bool broken;             /* write failed: drop output, close */
  bool in_loop;
  int trailer_lines;
  sim_ex_t ex;
} h1conn_t;

static void process(h1conn_t *c);
static void flush_out(h1conn_t *c);

static void conn_free(h1conn_t *c) {
  if (c->ex_live) sim_ex_dispose(&c->ex);
  event_free(c->rev);
  event_free(c->wev);
  event_free(c->aux);
  evbuffer_free(c->in);
  evbuffer_free(c->out);
  /* Closing with unread input makes the kernel send RST and throw away
   * response bytes still in flight (the tokens before an abort); read what
   * is there first so the client gets a FIN after the last byte. */
  char sink[4096];
  for (int i = 0; i < 64 && read(c->fd, sink, sizeof sink) > 0; i++) {
  }
  close(c->fd);
  free(c);
}

/* Close later from a fresh callback (never under a caller). */
static void schedule_close(h1conn_t *c) {
  c->closing = true;
  event_active(c->aux, EV_TIMEOUT, 0);
}

static void on_aux(evutil_socket_t fd, short what, void *arg) {
  h1conn_t *c = arg;
  if (c->broken || (c->closing && evbuffer_get_length(c->out) == 0)) {
    conn_free(c);
    return;
  }
  if (!c->closing) process(c);
}

static void flush_out(h1conn_t *c) {
  if (c->broken) {
    evbuffer_drain(c->out, evbuffer_get_length(c->out));
    return;
  }
  if (event_pending(c->wev, EV_WRITE, NULL)) return; /* wait for writability */
  while (evbuffer_get_length(c->out) > 0) {
    int n = evbuffer_write(c->out, c->fd);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        event_add(c->wev, NULL);
        return;
      }
      if (errno == EINTR) continue;
      c->broken = true;
      evbuffer_drain(c->out, evbuffer_get_length(c->out));
      schedule_close(c);
      return;
    }
    if (n == 0) break;
  }
  if (c->closing && !c->in_loop) event_active(c->aux, EV_TIMEOUT, 0);
}

static void on_write(evutil_socket_t fd, short what, void *arg) {
  h1conn_t *c = arg;
  event_del(c->wev);
  flush_out(c); /* closes through aux once drained, if closing */
}

/* A framing-level error: answer and close without involving the api. */
static void fail(h1conn_t *c, int status, const char *msg) {
  ob_buf_t *b = &c->w->scratch;
  ob_buf_reset(b);
  sim_error_json(b, status, msg);
  evbuffer_add_printf(c->out,
                      "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                      "content-length: %zu\r\nconnection: close\r\n\r\n",
                      status, ob_http_reason(status), b->len);
  evbuffer_add(c->out, b->base, b->len);
  if (c->ex_live) {
    sim_ex_dispose(&c->ex);
    c->ex_live = false;
  }
  c->closing = true;
  /* Stop reading: the rest of the input is not going to be parsed. */
  event_del(c->rev);
}

/* ---------------------------------------------------------------- api ops */

static void op_head(sim_ex_t *ex, int status, const char *ctype, int64_t clen) {
  h1conn_t *c = ex->proto;
  evbuffer_add_printf(c->out, "HTTP/1.%d %d %s\r\ncontent-type: %s\r\n", c->http10 ? 0 : 1,
                      status, ob_http_reason(status), ctype);
  if (clen >= 0) {
    evbuffer_add_printf(c->out, "content-length: %lld\r\n", (long long)clen);
  } else if (!c->http10) {
    evbuffer_add(c->out, "transfer-encoding: chunked\r\n", 28);
    c->chunked_resp = true;
  } else {
    c->keep_alive = false; /* HTTP/1.0 without a length: close-delimited */
  }
  if (!c->keep_alive) evbuffer_add(c->out, "connection: close\r\n\r\n", 21);
  else if (c->http10) evbuffer_add(c->out, "connection: keep-alive\r\n\r\n", 26);
  else evbuffer_add(c->out, "\r\n", 2);
  c->streaming = clen < 0;
  if (c->streaming) flush_out(c); /* a stream's headers go out now */
}

static void op_body(sim_ex_t *ex, const void *p, size_t n) {
  h1conn_t *c = ex->proto;
  if (c->head_req || n == 0) return;
  if (c->chunked_resp) {
    evbuffer_add_printf(c->out, "%zx\r\n", n);
    evbuffer_add(c->out, p, n);
    evbuffer_add(c->out, "\r\n", 2);
    flush_out(c);
  } else {
    evbuffer_add(c->out, p, n);
    if (c->streaming) flush_out(c);
  }
}

static void op_finish(sim_ex_t *ex) {
  h1conn_t *c = ex->proto;
  if (c->chunked_resp && !c->head_req) evbuffer_add(c->out, "0\r\n\r\n", 5);
  c->resp_done = true;
  if (!c->keep_alive) c->closing = true;
  if (c->in_loop) return; /* the parse loop flushes and moves on */
  flush_out(c);
  event_active(c->aux, EV_TIMEOUT, 0);
}

static void op_abort(sim_ex_t *ex) {
  h1conn_t *c = ex->proto;
  /* No terminating chunk: flush what was sent, then close the connection. */
  c->resp_done = true;
  c->closing = true;
  c->keep_alive = false;
  event_del(c->rev);
  if (c->in_loop) return;
  flush_out(c);
  event_active(c->aux, EV_TIMEOUT, 0);
}

static const sim_ex_ops_t h1_ops = {op_head, op_body, op_finish, op_abort};

/* ---------------------------------------------------------------- parsing */

static bool is_tchar(unsigned char ch) {
  if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))
    return true;
  return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* Does a comma-separated header value list contain token (any case)? */
static bool has_token(ob_iov_t v, const char *token) {
  size_t i = 0;
  while (i < v.len) {
    size_t j = i;
    while (j < v.len && v.base[j] != ',') j++;
    if (ob_iov_eq_str_nocase(ob_iov_trim(ob_iov(v.base + i, j - i)), token)) return true;
    i = j + 1;
  }
  return false;
}

/* Parse one header block of hlen bytes (ending in CRLFCRLF) into c->ex.
 * Returns 0, or an HTTP status to fail with. */
static int parse_head(h1conn_t *c, const char *h, size_t hlen, const char **why) {
  const char *end = h + hlen - 2; /* the final CRLF */
  const char *p = h;
  const char *eol = memchr(p, '\r', (size_t)(end - p));
  if (!eol || eol[1] != '\n') return *why = "bad request line", 400;
  /* METHOD SP TARGET SP HTTP/1.x */
  const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
  if (!sp1 || sp1 == p) return *why = "bad request line", 400;
  for (const char *q = p; q < sp1; q++)
    if (!is_tchar((unsigned char)*q)) return *why = "bad method", 400;
  const char *tgt = sp1 + 1;
  const char *sp2 = memchr(tgt, ' ', (size_t)(eol - tgt));
  if (!sp2 || sp2 == tgt) return *why = "bad request line", 400;
  for (const char *q = tgt; q < sp2; q++)
    if ((unsigned char)*q <= 0x20 || *q == 0x7f) return *why = "bad request target", 400;
  ob_iov_t ver = ob_iov(sp2 + 1, (size_t)(eol - sp2 - 1));
  if (ob_iov_eq(ver, OB_IOV_LIT("HTTP/1.1"))) c->http10 = false;
  else if (ob_iov_eq(ver, OB_IOV_LIT("HTTP/1.0"))) c->http10 = true;
  else return *why = "unsupported HTTP version", ver.len == 8 && !memcmp(ver.base, "HTTP/", 5) ? 505 : 400;

  sim_ex_t *ex = &c->ex;
  sim_ex_init(ex, c->w, &h1_ops, c, c->http10 ? "HTTP/1.0" : "HTTP/1.1");
  c->ex_live = true;
  ex->method = ob_arena_dup(&ex->arena, ob_iov(p, (size_t)(sp1 - p)));
  ex->path = ob_arena_dup(&ex->arena, ob_iov(tgt, (size_t)(sp2 - tgt)));

  bool have_cl = false, chunked = false, te = false, conn_close = false, conn_ka = false;
  bool expect = false;
  uint64_t cl = 0;
  for (p = eol + 2; p < end;) {
    eol = memchr(p, '\r', (size_t)(end - p));
    if (!eol || eol[1] != '\n') return *why = "bad header line", 400;
    if (*p == ' ' || *p == '\t') return *why = "obsolete line folding", 400;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (!colon || colon == p) return *why = "bad header line", 400;
    for (const char *q = p; q < colon; q++)
      if (!is_tchar((unsigned char)*q)) return *why = "bad header name", 400;
    for (const char *q = colon + 1; q < eol; q++)
      if (((unsigned char)*q < 0x20 && *q != '\t') || *q == 0x7f)
        return *why = "bad header value", 400;
    if (ex->nhdrs >= SIM_MAX_HEADERS) return *why = "too many header fields", 431;
    ob_iov_t name = ob_iov(p, (size_t)(colon - p));
    ob_iov_t value = ob_iov_trim(ob_iov(colon + 1, (size_t)(eol - colon - 1)));
    sim_ex_add_header(ex, name.base, name.len, value.base, value.len);
    if (ob_iov_eq_str_nocase(name, "content-length")) {
      uint64_t v;
      if (!ob_iov_to_u64(value, &v) || (have_cl && v != cl))
        return *why = "bad content-length", 400;
      have_cl = true;
      cl = v;
    } else if (ob_iov_eq_str_nocase(name, "transfer-encoding")) {
      te = true;
      /* chunked must be the final coding */
      size_t k = value.len;
      while (k > 0 && value.base[k - 1] != ',') k--;
      chunked = ob_iov_eq_str_nocase(ob_iov_trim(ob_iov(value.base + k, value.len - k)),
                                     "chunked");
    } else if (ob_iov_eq_str_nocase(name, "connection")) {
      conn_close |= has_token(value, "close");
      conn_ka |= has_token(value, "keep-alive");
    } else if (ob_iov_eq_str_nocase(name, "host")) {
      ex->authority = ex->hdrs[ex->nhdrs - 1].value;
    } else if (ob_iov_eq_str_nocase(name, "expect")) {
      expect = ob_iov_eq_str_nocase(value, "100-continue");
    }
    p = eol + 2;
  }
  if (te && have_cl) return *why = "both transfer-encoding and content-length", 400;
  if (te && !chunked) return *why = "unsupported transfer-encoding", 501;
  c->keep_alive = c->http10 ? conn_ka && !conn_close : !conn_close;
  c->head_req = ob_iov_eq(ex->method, OB_IOV_LIT("HEAD"));
  c->chunked_resp = c->streaming = false;
  c->resp_done = false;
  if (have_cl && cl > SIM_MAX_BODY) return *why = "request body too large", 413;
  if (chunked) c->rs = RS_CHUNK_SIZE;
  else if (have_cl && cl > 0) {
    c->rs = RS_BODY;
    c->remaining = cl;
    ob_buf_reserve(&ex->body, (size_t)cl);
  } else c->rs = RS_WAIT;
  c->trailer_lines = 0;
  if (expect && !c->http10 && c->rs != RS_WAIT && evbuffer_get_length(c->in) == 0)
    evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  return 0;
}

/* Take up to c->remaining body bytes from the input. */
static void take_body(h1conn_t *c) {
  size_t have = evbuffer_get_length(c->in);
  size_t n = have < c->remaining ? have : (size_t)c->remaining;
  if (n == 0) return;
  ob_buf_t *b = &c->ex.body;
  int got = evbuffer_remove(c->in, ob_buf_reserve(b, n), n);
  if (got > 0) {
    b->len += (size_t)got;
    c->remaining -= (uint64_t)got;
  }
}

/* Advance the request parser; returns true when it made progress. */
static bool parse_step(h1conn_t *c) {
  const char *why = NULL;
  switch (c->rs) {
  case RS_HEAD: {
    /* Tolerate stray CRLFs between requests (RFC 9112 2.2). */
    for (;;) {
      unsigned char two[2];
      if (evbuffer_copyout(c->in, two, 2) == 2 && two[0] == '\r' && two[1] == '\n')
        evbuffer_drain(c->in, 2);
      else break;
    }
    struct evbuffer_ptr at = evbuffer_search(c->in, "\r\n\r\n", 4, NULL);
    if (at.pos < 0) {
      if (evbuffer_get_length(c->in) > SIM_MAX_HEAD) fail(c, 431, "request header too large");
      return false;
    }
    size_t hlen = (size_t)at.pos + 4;
    if (hlen > SIM_MAX_HEAD) {
      fail(c, 431, "request header too large");
      return false;
    }
    const char *h = (const char *)evbuffer_pullup(c->in, (ev_ssize_t)hlen);
    int st = parse_head(c, h, hlen, &why);
    evbuffer_drain(c->in, hlen);
    if (st) {
      fail(c, st, why);
      return false;
    }
    return true;
  }
  case RS_BODY:
    take_body(c);
    if (c->remaining > 0) return false;
    c->rs = RS_WAIT;
    return true;
  case RS_CHUNK_SIZE: {
    size_t n;
    char *line = evbuffer_readln(c->in, &n, EVBUFFER_EOL_CRLF_STRICT);
    if (!line) {
      if (evbuffer_get_length(c->in) > 4096) fail(c, 400, "chunk size line too long");
      return false;
    }
    uint64_t size = 0;
    size_t i = 0;
    for (; i < n; i++) {
      char ch = line[i];
      int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
              : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
      if (d < 0) break;
      if (size > (SIM_MAX_BODY << 4)) break;
      size = size * 16 + (uint64_t)d;
    }
    bool ok = i > 0 && (i == n || line[i] == ';' || line[i] == ' ' || line[i] == '\t');
    free(line);
    if (!ok) {
      fail(c, 400, "bad chunk size");
      return false;
    }
    if (size > SIM_MAX_BODY - c->ex.body.len) {
      fail(c, 413, "request body too large");
      return false;
    }
    if (size == 0) c->rs = RS_TRAILER;
    else {
      c->remaining = size;
      c->rs = RS_CHUNK_DATA;
    }
    return true;
  }
  case RS_CHUNK_DATA:
    take_body(c);
    if (c->remaining > 0) return false;
    c->rs = RS_CHUNK_CRLF;
    return true;
  case RS_CHUNK_CRLF: {
    unsigned char two[2];
    if (evbuffer_copyout(c->in, two, 2) < 2) return false;
    if (two[0] != '\r' || two[1] != '\n') {
      fail(c, 400, "missing CRLF after chunk");
      return false;
    }
    evbuffer_drain(c->in, 2);
    c->rs = RS_CHUNK_SIZE;
    return true;
  }
  case RS_TRAILER: {
    size_t n;
    char *line = evbuffer_readln(c->in, &n, EVBUFFER_EOL_CRLF_STRICT);
    if (!line) {
      if (evbuffer_get_length(c->in) > SIM_MAX_HEAD) fail(c, 431, "trailer too large");
      return false;
    }
    free(line);
    if (n == 0) c->rs = RS_WAIT;
    else if (++c->trailer_lines > SIM_MAX_HEADERS) {
      fail(c, 431, "too many trailer fields");
      return false;
    }
    return true;
  }
  default:
    return false;
  }
}

/* Run requests until the input runs dry or a response is pending. */
static void process(h1conn_t *c) {
  c->in_loop = true;
  while (!c->closing) {
    if (c->rs == RS_WAIT) {
      if (!c->dispatched) {
        c->dispatched = true;
        sim_ex_dispatch(&c->ex);
        continue;
      }
      if (!c->resp_done) break; /* the api answers later, from its timer */
      sim_ex_dispose(&c->ex);
      c->ex_live = c->dispatched = c->resp_done = false;
      c->rs = RS_HEAD;
      if (!c->keep_alive) c->closing = true;
      continue;
    }
    if (!parse_step(c)) break;
  }
  c->in_loop = false;
  /* Bound what a client can park behind a pending response; reading resumes
   * once the parser catches up. */
  bool full = evbuffer_get_length(c->in) > SIM_MAX_BODY + SIM_MAX_HEAD;
  if (!c->closing && full != c->read_paused) {
    c->read_paused = full;
    if (full) event_del(c->rev);
    else event_add(c->rev, NULL);
  }
  flush_out(c);
}

static void on_read(evutil_socket_t fd, short what, void *arg) {
  h1conn_t *c = arg;
  /* A plain read into reserved space: evbuffer_read() would spend an extra
   * ioctl(FIONREAD) per call. */
  struct evbuffer_iovec v;
  ssize_t n = -1;
  if (evbuffer_reserve_space(c->in, 65536, &v, 1) == 1) {
    n = read(fd, v.iov_base, v.iov_len);
    v.iov_len = n > 0 ? (size_t)n : 0;
    evbuffer_commit_space(c->in, &v, 1);
  }
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
    conn_free(c); /* client gone; a pending exchange counts as client_gone */
    return;
  }
  if (c->closing) {
    evbuffer_drain(c->in, evbuffer_get_length(c->in));
    return;
  }
  process(c);
}

void sim_h1_accept(sim_worker_t *w, int fd) {
  h1conn_t *c = ob_xcalloc(1, sizeof *c);
  c->w = w;
  c->fd = fd;
  c->in = evbuffer_new();
  c->out = evbuffer_new();
  c->rev = event_new(w->base, fd, EV_READ | EV_PERSIST, on_read, c);
  c->wev = event_new(w->base, fd, EV_WRITE | EV_PERSIST, on_write, c);
  c->aux = event_new(w->base, -1, 0, on_aux, c);
  c->rs = RS_HEAD;
  event_add(c->rev, NULL);
}
