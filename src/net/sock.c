/*
 * sock.c: buffered socket I/O without the per-turn system calls of a
 * socket bufferevent (see sock.h for why and for the semantics kept).
 */
#include "sock.h"

#include "core.h"

#include <errno.h>
#include <event2/buffer.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/uio.h>

/* How much one readable event reads: there is no FIONREAD to ask, so the
 * size adapts. It starts at what fits a 1 KiB evbuffer chunk with its
 * header (the chunk comes from malloc's per-thread cache), doubles while
 * reads fill it and halves when they use under a quarter, up to a 16 KiB
 * chunk. evbuffer rounds a chunk up to a power of two, so each step is one
 * power of two minus the header. */
#define CHUNK_HEADER 64
#define READ_MIN (1024 - CHUNK_HEADER)
#define READ_MAX (16384 - CHUNK_HEADER)

struct ob_sock {
  struct bufferevent *bev; /* bev mode when non-NULL; the fields below are unused then */
  evutil_socket_t fd;
  struct evbuffer *in, *out;
  struct event *rev;       /* readable (persistent) */
  struct event *wev;       /* writable (persistent, with the write timeout): only while output waits */
  struct event *flush;     /* activated when output was queued: the write happens later this turn */
  short enabled;           /* EV_READ / EV_WRITE as asked by the user */
  bool read_blocked;       /* the input holds the high watermark or more */
  bool waiting;            /* wev added */
  size_t read_high, write_low;
  size_t read_size;        /* adapts between READ_MIN and READ_MAX */
  bool has_wtimeout;
  struct timeval wtimeout;
  ob_sock_data_cb rd, wr;
  ob_sock_event_cb ev;
  void *arg;
};

/* ---------------------------------------------------------------- bev mode */

static void bev_read(struct bufferevent *bev, void *arg) {
  (void)bev;
  ob_sock_t *s = arg;
  if (s->rd) s->rd(s, s->arg);
}

static void bev_write(struct bufferevent *bev, void *arg) {
  (void)bev;
  ob_sock_t *s = arg;
  if (s->wr) s->wr(s, s->arg);
}

static void bev_event(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  ob_sock_t *s = arg;
  if (s->ev) s->ev(s, what, s->arg);
}

/* ---------------------------------------------------------------- direct mode */

static void read_resume(ob_sock_t *s) {
  if ((s->enabled & EV_READ) && !s->read_blocked) event_add(s->rev, NULL);
}

static void fail(ob_sock_t *s, short what) {
  int err = errno;
  ob_sock_disable(s, (what & BEV_EVENT_READING) ? EV_READ : EV_WRITE);
  errno = err; /* the event callback reads the socket error from errno */
  if (s->ev) s->ev(s, what, s->arg);
}

static void on_readable(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  ob_sock_t *s = arg;
  size_t want = s->read_size;
  if (s->read_high) {
    size_t have = evbuffer_get_length(s->in);
    if (have >= s->read_high) {
      s->read_blocked = true;
      event_del(s->rev);
      return;
    }
    if (s->read_high - have < want) want = s->read_high - have;
  }
  struct evbuffer_iovec v[2];
  int nv = evbuffer_reserve_space(s->in, (ev_ssize_t)want, v, 2);
  if (nv < 1) abort();
  /* The reservation may be larger than asked (a chunk's whole free space):
   * read no more than want, so the high watermark holds. */
  if (v[0].iov_len >= want) {
    v[0].iov_len = want;
    nv = 1;
  } else if (nv == 2 && v[1].iov_len > want - v[0].iov_len) {
    v[1].iov_len = want - v[0].iov_len;
  }
  ssize_t n = readv(fd, (struct iovec *)v, nv);
  if (n <= 0) {
    evbuffer_commit_space(s->in, v, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    fail(s, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR));
    return;
  }
  size_t got = (size_t)n;
  if (got == want && s->read_size < READ_MAX)
    s->read_size = (s->read_size + CHUNK_HEADER) * 2 - CHUNK_HEADER;
  else if (got < s->read_size / 4 && s->read_size > READ_MIN)
    s->read_size = (s->read_size + CHUNK_HEADER) / 2 - CHUNK_HEADER;
  if (got <= v[0].iov_len) {
    v[0].iov_len = got;
    nv = 1;
  } else {
    v[1].iov_len = got - v[0].iov_len;
  }
  evbuffer_commit_space(s->in, v, nv);
  if (s->read_high && evbuffer_get_length(s->in) >= s->read_high) {
    s->read_blocked = true;
    event_del(s->rev);
  }
  if (s->rd) s->rd(s, s->arg);
}

/* Write what the kernel takes; wait for the socket only if something is
 * left. The write callback runs last: it may free s. */
static void write_now(ob_sock_t *s) {
  if (!(s->enabled & EV_WRITE) || evbuffer_get_length(s->out) == 0) return;
  int n = evbuffer_write(s->out, s->fd);
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    fail(s, BEV_EVENT_WRITING | BEV_EVENT_ERROR);
    return;
  }
  if (evbuffer_get_length(s->out) > 0) {
    if (!s->waiting) {
      event_add(s->wev, s->has_wtimeout ? &s->wtimeout : NULL);
      s->waiting = true;
    }
  } else if (s->waiting) {
    event_del(s->wev);
    s->waiting = false;
  }
  if (n > 0 && evbuffer_get_length(s->out) <= s->write_low && s->wr) s->wr(s, s->arg);
}

static void on_writable(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  ob_sock_t *s = arg;
  if (what & EV_TIMEOUT) {
    fail(s, BEV_EVENT_WRITING | BEV_EVENT_TIMEOUT);
    return;
  }
  write_now(s);
}

static void on_flush(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  ob_sock_t *s = arg;
  /* While waiting for the socket, the writable event writes. */
  if (!s->waiting) write_now(s);
}

static void out_changed(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg) {
  (void)b;
  ob_sock_t *s = arg;
  if (info->n_added && (s->enabled & EV_WRITE) && !s->waiting) event_active(s->flush, EV_TIMEOUT, 0);
}

static void in_changed(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg) {
  ob_sock_t *s = arg;
  if (info->n_deleted && s->read_blocked && evbuffer_get_length(b) < s->read_high) {
    s->read_blocked = false;
    read_resume(s);
  }
}

static void direct_init(ob_sock_t *s, struct event_base *base, evutil_socket_t fd) {
  s->fd = fd;
  s->read_size = READ_MIN;
  s->in = evbuffer_new();
  s->out = evbuffer_new();
  s->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, s);
  s->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, s);
  s->flush = event_new(base, -1, 0, on_flush, s);
  if (!s->in || !s->out || !s->rev || !s->wev || !s->flush) abort();
  evbuffer_add_cb(s->out, out_changed, s);
  evbuffer_add_cb(s->in, in_changed, s);
}

/* ---------------------------------------------------------------- interface */

ob_sock_t *ob_sock_new_fd(struct event_base *base, evutil_socket_t fd) {
  ob_sock_t *s = ob_xcalloc(1, sizeof *s);
  direct_init(s, base, fd);
  return s;
}

ob_sock_t *ob_sock_new_bev(struct bufferevent *bev) {
  ob_sock_t *s = ob_xcalloc(1, sizeof *s);
  s->bev = bev;
  s->fd = -1;
  bufferevent_setcb(bev, bev_read, bev_write, bev_event, s);
  return s;
}

void ob_sock_detach_bev(ob_sock_t *s) {
  struct bufferevent *bev = s->bev;
  struct event_base *base = bufferevent_get_base(bev);
  evutil_socket_t fd = bufferevent_getfd(bev);
  /* The bufferevent forgets the socket, so freeing it does not close it. */
  bufferevent_setfd(bev, -1);
  bufferevent_free(bev);
  s->bev = NULL;
  s->enabled = 0;
  direct_init(s, base, fd);
}

void ob_sock_free(ob_sock_t *s) {
  if (!s) return;
  if (s->bev) {
    bufferevent_free(s->bev);
  } else {
    event_free(s->rev);
    event_free(s->wev);
    event_free(s->flush);
    evbuffer_free(s->in);
    evbuffer_free(s->out);
    evutil_closesocket(s->fd);
  }
  free(s);
}

struct bufferevent *ob_sock_bev(const ob_sock_t *s) { return s->bev; }
struct evbuffer *ob_sock_input(const ob_sock_t *s) { return s->bev ? bufferevent_get_input(s->bev) : s->in; }
struct evbuffer *ob_sock_output(const ob_sock_t *s) { return s->bev ? bufferevent_get_output(s->bev) : s->out; }
evutil_socket_t ob_sock_fd(const ob_sock_t *s) { return s->bev ? bufferevent_getfd(s->bev) : s->fd; }

void ob_sock_setcb(ob_sock_t *s, ob_sock_data_cb rd, ob_sock_data_cb wr, ob_sock_event_cb ev, void *arg) {
  s->rd = rd;
  s->wr = wr;
  s->ev = ev;
  s->arg = arg;
}

void ob_sock_enable(ob_sock_t *s, short what) {
  if (s->bev) {
    bufferevent_enable(s->bev, what);
    return;
  }
  s->enabled |= what & (EV_READ | EV_WRITE);
  if (what & EV_READ) read_resume(s);
  if ((what & EV_WRITE) && !s->waiting && evbuffer_get_length(s->out) > 0) event_active(s->flush, EV_TIMEOUT, 0);
}

void ob_sock_disable(ob_sock_t *s, short what) {
  if (s->bev) {
    bufferevent_disable(s->bev, what);
    return;
  }
  s->enabled &= (short)~what;
  if (what & EV_READ) event_del(s->rev);
  if (what & EV_WRITE) {
    event_del(s->wev);
    event_del(s->flush);
    s->waiting = false;
  }
}

void ob_sock_setwatermark(ob_sock_t *s, short what, size_t low, size_t high) {
  /* Kept in bev mode too, for ob_sock_detach_bev. */
  if (what & EV_WRITE) s->write_low = low;
  if (what & EV_READ) s->read_high = high;
  if (s->bev) {
    bufferevent_setwatermark(s->bev, what, low, high);
    return;
  }
  if (what & EV_READ) {
    if (s->read_blocked && (!high || evbuffer_get_length(s->in) < high)) {
      s->read_blocked = false;
      read_resume(s);
    }
  }
}

void ob_sock_set_write_timeout(ob_sock_t *s, const struct timeval *tv) {
  s->has_wtimeout = tv != NULL;
  if (tv) s->wtimeout = *tv;
  if (s->bev) {
    bufferevent_set_timeouts(s->bev, NULL, tv);
    return;
  }
  if (s->waiting) {
    /* event_add with no timeout would keep the old one. */
    event_del(s->wev);
    event_add(s->wev, tv);
  }
}
