/*
 * upstream.c: upstream pools. Owns the pool of each configured upstream, its
 * endpoints (in-flight counts, back-off after refused connections), the
 * choice of endpoint, connection set-up (asynchronous DNS, TCP, TLS with
 * ALPN), connection and request timers, transparent retries, and the life
 * cycle of a ureq from ob_upstream_request to its one terminal callback.
 * The protocols themselves live in upstream_h1.c and upstream_h2.c, reached
 * only through the pool's ob_up_proto_ops_t; this file never names a
 * protocol, parses or frames a message. It must not touch client
 * connections: a streamed request body is read through ob_net_sreq_body_*.
 *
 * Endpoint choice: the endpoint with the fewest requests in flight among
 * those not backed off, ties broken round robin; when every endpoint is
 * backed off, the one whose back-off ends first. A connect failure (refused,
 * timed out, DNS, TLS) backs its endpoint off for backoff_ms and sends the
 * queued requests once to another endpoint; with a single endpoint they fail
 * (502, or 504 for a connect timeout).
 *
 * Deferred delivery: on_error always arrives through u->kick on a later loop
 * turn, so no failure found inside an API call can call back into the
 * handler; resume after a pause goes through u->kick too.
 */
#include "upstream_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

/* ================================================================ helpers */

void ob_net_up_arm(struct event *ev, const struct timeval *tv) {
  if (tv)
    event_add(ev, tv);
  else
    event_del(ev);
}

/* The pool's timers share a few durations: common timeouts (see
 * ob_net_timeout); NULL for 0, no limit. */
static const struct timeval *pool_timeout(ob_net_t *n, uint32_t ms, struct timeval *own) {
  return ms ? ob_net_timeout(n, ms, own) : NULL;
}

const char *ob_net_up_conn_name(const ob_uconn_t *c) {
  static _Thread_local char name[512];
  snprintf(name, sizeof name, "upstream %s endpoint %s", c->ep->up->cfg->name, c->ep->cfg->authority);
  return name;
}

static bool is_ip_literal(const char *host) {
  unsigned char tmp[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

/* ================================================================ in-flight counts */

/* u goes to ep: counted in ep (this worker) and, with shared limits, in the
 * count every worker's pool adds to. Given back once by uncount. */
static void count(ob_ureq_t *u, ob_endpoint_t *ep) {
  u->ep = ep;
  ep->inflight++;
  u->shared_count = u->up->shared ? &u->up->shared[ep - u->up->eps] : NULL;
  if (u->shared_count) __atomic_add_fetch(u->shared_count, 1, __ATOMIC_RELAXED);
}

static void uncount(ob_ureq_t *u) {
  u->ep->inflight--;
  if (u->shared_count) __atomic_sub_fetch(u->shared_count, 1, __ATOMIC_RELAXED);
  u->ep = NULL, u->shared_count = NULL;
}

/* ================================================================ ureq life cycle */

static void ureq_free(ob_ureq_t *u) {
  ob_upstream_t *up = u->up;
  if (u->prev)
    u->prev->next = u->next;
  else
    up->ureqs = u->next;
  if (u->next) u->next->prev = u->prev;
  if (u->ep) uncount(u);
  ob_net_up_body_unlink(u);
  event_free(u->kick);
  event_free(u->timer);
  evbuffer_free(u->rbody);
  ob_rcbuf_release(u->owner);
  ob_arena_dispose(&u->arena);
  free(u);
}

static void cancel_now(ob_ureq_t *u) {
  if ((u->state == U_QUEUED || u->state == U_ACTIVE) && u->conn) u->up->ops->abort(u);
  ureq_free(u);
}

/* After a handler callback: carry out a cancel made from inside it. */
static bool after_call(ob_ureq_t *u) {
  u->busy--;
  if (u->busy == 0 && u->cancelled) {
    cancel_now(u);
    return false;
  }
  return true;
}

bool ob_net_up_call_head(ob_ureq_t *u, int status, const ob_http_header_t *h, size_t n) {
  u->head_seen = true;
  u->busy++;
  if (u->h.on_head) u->h.on_head(u, u->data, status, h, n);
  return after_call(u);
}

bool ob_net_up_call_data(ob_ureq_t *u) {
  u->undelivered = false;
  if (evbuffer_get_length(u->rbody) == 0) return true;
  u->busy++;
  if (u->h.on_data)
    u->h.on_data(u, u->data, u->rbody);
  else
    evbuffer_drain(u->rbody, evbuffer_get_length(u->rbody));
  return after_call(u);
}

/* Terminal: on_error, then free. */
static void deliver_error(ob_ureq_t *u) {
  u->busy++;
  if (u->h.on_error) u->h.on_error(u, u->data, u->err, u->status_hint, u->head_seen);
  ureq_free(u);
}

/* A complete response: the rest of the body, then on_end, then free. Waits
 * (returns) while the handler is paused with bytes still buffered. */
static void deliver_done(ob_ureq_t *u) {
  if (evbuffer_get_length(u->rbody) > 0) {
    if (u->paused) return;
    if (u->undelivered) {
      if (!ob_net_up_call_data(u)) return;
      if (u->paused && evbuffer_get_length(u->rbody) > 0) return;
    }
  }
  u->busy++;
  if (u->h.on_end) u->h.on_end(u, u->data, u->trailers, u->num_trailers);
  ureq_free(u);
}

void ob_net_up_complete(ob_ureq_t *u) {
  u->state = U_DONE;
  u->conn = NULL;
  event_del(u->timer);
  deliver_done(u);
}

void ob_net_up_fail(ob_ureq_t *u, ob_err_t err, int status_hint) {
  if (u->ep) u->ep->failures++;
  u->state = U_FAILED;
  u->conn = NULL;
  u->err = err;
  u->status_hint = status_hint;
  event_del(u->timer);
  event_active(u->kick, EV_TIMEOUT, 0);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg) {
  ob_ureq_t *u = arg;
  switch (u->state) {
  case U_FAILED:
    deliver_error(u);
    break;
  case U_DONE:
    deliver_done(u);
    break;
  case U_ACTIVE:
    if (!u->paused) u->up->ops->resume(u);
    break;
  default:
    break;
  }
}

static void ureq_timer_cb(evutil_socket_t fd, short what, void *arg) {
  ob_ureq_t *u = arg;
  if (u->state != U_ACTIVE) return;
  u->up->ops->timeout(u);
}

/* ================================================================ endpoints */

/* Endpoint i's requests in flight: every worker's when they share limits
 * (each counting only its own against the whole limits would together
 * send an endpoint up to one request per worker over it), else this one's. */
static uint64_t inflight_of(const ob_upstream_t *up, size_t i) {
  return up->shared ? __atomic_load_n(&up->shared[i], __ATOMIC_RELAXED) : up->eps[i].inflight;
}

static ob_endpoint_t *choose_endpoint(ob_upstream_t *up, const ob_endpoint_t *avoid) {
  size_t n = up->num_eps;
  uint64_t now = ob_clock_ms();
  ob_endpoint_t *best = NULL;
  size_t best_i = 0;
  for (size_t k = 0; k < n; k++) {
    size_t i = (up->rr + k) % n;
    ob_endpoint_t *ep = &up->eps[i];
    if (ep == avoid && n > 1) continue;
    if (ep->backoff_until_ms > now) continue;
    if (up->limits) {
      /* The most headroom for its limit: the lowest inflight / limit. Every
       * worker (and, in cluster mode, every replica) counts only its own
       * requests against the whole limits, so spreading in proportion to
       * them is what keeps each endpoint's total at its limit; an endpoint
       * whose limit is 0 (down) only when nothing else is left. */
      uint64_t l = __atomic_load_n(&up->limits[i], __ATOMIC_RELAXED);
      uint64_t bl = best ? __atomic_load_n(&up->limits[best_i], __ATOMIC_RELAXED) : 0;
      uint64_t in = inflight_of(up, i), bin = best ? inflight_of(up, best_i) : 0;
      bool better = !best || (l && !bl) || (l && bl && in * bl < bin * l) || (!l && !bl && in < bin);
      if (better) best = ep, best_i = i;
      continue;
    }
    if (!best || ep->inflight < best->inflight) best = ep, best_i = i;
  }
  if (!best) {
    /* Everything is backed off: the one that comes back first. */
    for (size_t i = 0; i < n; i++) {
      ob_endpoint_t *ep = &up->eps[i];
      if (ep == avoid && n > 1) continue;
      if (!best || ep->backoff_until_ms < best->backoff_until_ms) best = ep, best_i = i;
    }
  }
  up->rr = (best_i + 1) % n;
  return best;
}

void ob_upstream_set_limits(ob_upstream_t *up, const uint32_t *limits, uint32_t *shared) {
  up->limits = limits;
  up->shared = shared;
}

/* ================================================================ connections */

/* The idle and spare lists share one pair of links: a connection of a
 * protocol that is not multiplexed is on one of them at most, and only
 * while it has no request (its protocol file puts it there). */
static void plist_push(ob_uconn_t **head, ob_uconn_t *c) {
  c->plist = head;
  c->iprev = NULL;
  c->inext = *head;
  if (*head) (*head)->iprev = c;
  *head = c;
}

static void plist_remove(ob_uconn_t *c) {
  if (!c->plist) return;
  if (c->iprev)
    c->iprev->inext = c->inext;
  else
    *c->plist = c->inext;
  if (c->inext) c->inext->iprev = c->iprev;
  c->iprev = c->inext = NULL;
  c->plist = NULL;
}

static void conn_unlink(ob_uconn_t *c) {
  ob_endpoint_t *ep = c->ep;
  plist_remove(c);
  if (c->prev || ep->conns == c) {
    if (c->prev)
      c->prev->next = c->next;
    else
      ep->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
  }
}

void ob_net_up_conn_free(ob_uconn_t *c) {
  conn_unlink(c);
  c->state = C_DEAD;
  c->ep->up->ops->dispose(c);
  ob_sock_free(c->sock);
  event_free(c->timer);
  event_free(c->flush_ev);
  free(c);
}

void ob_net_up_conn_idle(ob_uconn_t *c) {
  ob_endpoint_t *ep = c->ep;
  plist_push(&ep->idle, c);
  /* Keep reading so a close by the server is noticed while idle. */
  ob_sock_enable(c->sock, EV_READ);
  ob_net_up_arm(c->timer, ep->up->tv_keepalive);
}

void ob_net_up_conn_schedule(ob_uconn_t *c) { event_active(c->flush_ev, EV_TIMEOUT, 0); }

void ob_net_up_conn_spare(ob_uconn_t *c) {
  if (!c->connect_failed) plist_push(&c->ep->spare, c);
}

static ob_uconn_t *idle_pop(ob_endpoint_t *ep) {
  ob_uconn_t *c = ep->idle;
  if (!c) return NULL;
  plist_remove(c);
  event_del(c->timer);
  return c;
}

/* A failed connect: back the endpoint off and send what waited elsewhere. */
static void conn_connect_failed(ob_uconn_t *c, const char *why, bool timed_out) {
  ob_endpoint_t *ep = c->ep;
  ob_upstream_t *up = ep->up;
  ob_log_warn("%s: connect failed: %s", ob_net_up_conn_name(c), why);
  if (up->gcfg->timeouts.backoff_ms) ep->backoff_until_ms = ob_clock_ms() + up->gcfg->timeouts.backoff_ms;
  /* Out of the pool first, so a retry cannot pick this connection again. */
  conn_unlink(c);
  int status = timed_out ? 504 : 502;
  ob_ureq_t *u;
  while ((u = up->ops->unqueue(c))) ob_net_up_retry(u, OB_RETRY_OTHER_ENDPOINT, status);
  ob_net_up_conn_free(c);
}

static void conn_connected(ob_uconn_t *c) {
  ob_endpoint_t *ep = c->ep;
  evutil_socket_t fd = ob_sock_fd(c->sock);
  if (fd >= 0) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  const ob_up_proto_ops_t *ops = ep->up->ops;
  if (ep->cfg->tls && ops->require_alpn) {
    /* ops->alpn is one protocol in wire format: its length, then its name. */
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    SSL_get0_alpn_selected(bufferevent_openssl_get_ssl(ob_sock_bev(c->sock)), &alpn, &alpn_len);
    if (alpn_len != ops->alpn[0] || memcmp(alpn, ops->alpn + 1, alpn_len) != 0) {
      char why[64];
      snprintf(why, sizeof why, "server did not select %s through ALPN", ops->alpn_name);
      conn_connect_failed(c, why, false);
      return;
    }
  }
  event_del(c->timer);
  plist_remove(c); /* off the spare list */
  c->state = C_OPEN;
  ep->backoff_until_ms = 0;
  if (!ep->cfg->tls) ob_sock_detach_bev(c->sock);
  ob_sock_enable(c->sock, EV_READ | EV_WRITE);
  ops->connected(c);
}

static void describe_failure(ob_uconn_t *c, int sock_err, char *why, size_t len) {
  struct bufferevent *bev = ob_sock_bev(c->sock); /* NULL once a cleartext connection is up */
  int dns_err = bev ? bufferevent_socket_get_dns_error(bev) : 0;
  if (dns_err) {
    snprintf(why, len, "cannot resolve %s: %s", c->ep->cfg->host, evutil_gai_strerror(dns_err));
    return;
  }
  if (bev && c->ep->cfg->tls) {
    unsigned long e = bufferevent_get_openssl_error(bev);
    if (e) {
      char buf[256];
      ERR_error_string_n(e, buf, sizeof buf);
      SSL *ssl = bufferevent_openssl_get_ssl(bev);
      long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
      if (vr != X509_V_OK)
        snprintf(why, len, "TLS: %s (%s)", buf, X509_verify_cert_error_string(vr));
      else
        snprintf(why, len, "TLS: %s", buf);
      return;
    }
  }
  if (sock_err)
    snprintf(why, len, "%s", evutil_socket_error_to_string(sock_err));
  else
    snprintf(why, len, "connection closed");
}

static void conn_read_cb(ob_sock_t *sock, void *arg) {
  ob_uconn_t *c = arg;
  c->ep->up->ops->on_read(c);
}

static void conn_write_cb(ob_sock_t *sock, void *arg) {
  ob_uconn_t *c = arg;
  if (c->state != C_OPEN) return;
  c->ep->up->ops->on_write(c);
}

static void conn_event_cb(ob_sock_t *sock, short what, void *arg) {
  ob_uconn_t *c = arg;
  int sock_err = EVUTIL_SOCKET_ERROR();
  if (c->state == C_CONNECTING) {
    if (what & BEV_EVENT_CONNECTED) {
      conn_connected(c);
      return;
    }
    char why[512];
    describe_failure(c, (what & BEV_EVENT_ERROR) ? sock_err : 0, why, sizeof why);
    conn_connect_failed(c, why, false);
    return;
  }
  char why[512];
  if (what & BEV_EVENT_ERROR)
    describe_failure(c, sock_err, why, sizeof why);
  else
    snprintf(why, sizeof why, "closed by the server");
  c->ep->up->ops->on_event(c, what, why);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg) {
  ob_uconn_t *c = arg;
  if (c->state == C_CONNECTING) {
    conn_connect_failed(c, "timed out", true);
    return;
  }
  /* Keep-alive expiry of an unused connection. */
  if (c->ep->up->ops->unused(c)) ob_net_up_conn_free(c);
}

static void conn_flush_cb(evutil_socket_t fd, short what, void *arg) {
  ob_uconn_t *c = arg;
  if (c->connect_failed) {
    conn_connect_failed(c, c->fail_reason, false);
    return;
  }
  c->ep->up->ops->flush(c);
}

/* Connect without a resolver: numeric hosts only, so nothing blocks. */
static int connect_numeric(ob_uconn_t *c) {
  char port[8];
  snprintf(port, sizeof port, "%u", (unsigned)c->ep->cfg->port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
  struct addrinfo *ai = NULL;
  if (getaddrinfo(c->ep->cfg->host, port, &hints, &ai) != 0 || !ai) {
    c->fail_reason = "not a numeric address and no resolver";
    return -1;
  }
  int rv = bufferevent_socket_connect(ob_sock_bev(c->sock), ai->ai_addr, (int)ai->ai_addrlen);
  freeaddrinfo(ai);
  return rv;
}

static ob_uconn_t *conn_new(ob_endpoint_t *ep) {
  ob_upstream_t *up = ep->up;
  struct event_base *base = up->net->base;
  ob_uconn_t *c = ob_xcalloc(1, sizeof *c);
  c->ep = ep;
  c->state = C_CONNECTING;
  c->next = ep->conns;
  if (ep->conns) ep->conns->prev = c;
  ep->conns = c;
  c->timer = event_new(base, -1, 0, conn_timer_cb, c);
  c->flush_ev = event_new(base, -1, 0, conn_flush_cb, c);
  if (!c->timer || !c->flush_ev) abort();

  if (ep->cfg->tls) {
    SSL *ssl = SSL_new(up->ssl);
    if (!ssl) abort();
    const char *host = ep->cfg->host;
    bool ip = is_ip_literal(host);
    if (!ip) SSL_set_tlsext_host_name(ssl, host);
    if (up->cfg->tls_verify) {
      if (ip)
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
      else
        SSL_set1_host(ssl, host);
    }
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) abort();
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    c->sock = ob_sock_new_bev(bev);
  } else {
    /* libevent resolves and connects; conn_connected switches to direct I/O. */
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) abort();
    c->sock = ob_sock_new_bev(bev);
  }
  ob_sock_setcb(c->sock, conn_read_cb, conn_write_cb, conn_event_cb, c);
  if (up->ops->write_lowat) ob_sock_setwatermark(c->sock, EV_WRITE, up->ops->write_lowat, 0);
  ob_net_up_arm(c->timer, up->tv_connect);

  int rv;
  if (up->net->dns)
    rv = bufferevent_socket_connect_hostname(ob_sock_bev(c->sock), up->net->dns, AF_UNSPEC, ep->cfg->host, ep->cfg->port);
  else
    rv = connect_numeric(c);
  if (rv < 0) {
    /* Report on the next turn, never from inside the caller. */
    c->connect_failed = true;
    if (!c->fail_reason) c->fail_reason = "cannot start connecting";
    event_active(c->flush_ev, EV_TIMEOUT, 0);
  }
  return c;
}

/* ================================================================ dispatch */

static void dispatch(ob_ureq_t *u, ob_endpoint_t *ep, bool fresh) {
  count(u, ep);
  ep->attempts++;
  u->state = U_NEW;
  const ob_up_proto_ops_t *ops = u->up->ops;
  ob_uconn_t *c = NULL;
  if (!fresh) {
    /* An open connection nobody uses, then one still connecting for a
     * request that was cancelled, then room on a shared one. */
    c = idle_pop(ep);
    if (!c && (c = ep->spare)) plist_remove(c);
    if (!c && ops->multiplexed)
      for (c = ep->conns; c; c = c->next)
        if (!c->connect_failed && ops->room(c) > 0) break;
  }
  if (!c) c = conn_new(ep);
  ops->attach(c, u);
}

void ob_net_up_retry(ob_ureq_t *u, ob_retry_t kind, int status_hint) {
  ob_upstream_t *up = u->up;
  bool *spent = kind == OB_RETRY_OTHER_ENDPOINT ? &u->retried_connect
              : kind == OB_RETRY_FRESH_CONN     ? &u->retried_stale
                                                : &u->retried_refused;
  u->conn = NULL;
  /* A streamed body cannot be sent twice once bytes of it left. */
  if (*spent || up->destroying || u->src_taken ||
      (kind == OB_RETRY_OTHER_ENDPOINT && (up->num_eps < 2 || u->pinned))) {
    ob_net_up_fail(u, OB_ERR_CONN, status_hint);
    return;
  }
  *spent = true;
  ob_endpoint_t *failed = u->ep;
  if (kind != OB_RETRY_FRESH_CONN) failed->failures++;
  uncount(u);
  ob_endpoint_t *ep = kind == OB_RETRY_FRESH_CONN || u->pinned ? failed : choose_endpoint(up, failed);
  ob_log_debug("upstream %s: retrying on %s", up->cfg->name, ep->cfg->authority);
  dispatch(u, ep, kind == OB_RETRY_FRESH_CONN);
}

/* ================================================================ public API */

static void copy_spec(ob_ureq_t *u, const ob_ureq_spec_t *spec) {
  ob_arena_t *a = &u->arena;
  u->method = ob_arena_dup(a, spec->method);
  u->path = spec->path.len ? ob_arena_dup(a, spec->path) : OB_IOV_LIT("/");
  if (spec->authority.len) u->authority = ob_arena_dup(a, spec->authority);
  u->expect_trailers = spec->expect_trailers;
  u->long_lived = spec->long_lived;

  if (spec->num_headers) u->headers = ob_arena_alloc(a, spec->num_headers * sizeof *u->headers);
  for (size_t i = 0; i < spec->num_headers; i++) {
    ob_iov_t name = spec->headers[i].name;
    /* net adds framing, Host and (h2) te itself; pseudo fields never pass. */
    if (name.len == 0 || name.base[0] == ':' || ob_iov_eq_str_nocase(name, "host") ||
        ob_iov_eq_str_nocase(name, "content-length") || ob_http_is_hop_by_hop(name, ob_iov(NULL, 0)))
      continue;
    char *lower = ob_arena_alloc(a, name.len + 1);
    for (size_t k = 0; k < name.len; k++) {
      char ch = name.base[k];
      lower[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    lower[name.len] = '\0';
    u->headers[u->num_headers].name = ob_iov(lower, name.len);
    u->headers[u->num_headers].value = ob_arena_dup(a, spec->headers[i].value);
    u->num_headers++;
  }

  if (spec->body_stream) {
    u->streamed = true;
    u->src = spec->body_stream;
    ob_net_sreq_body_attach(u->src, u);
    return;
  }
  if (spec->body_owner) u->owner = ob_rcbuf_acquire(spec->body_owner);
  if (spec->num_body) u->body = ob_arena_alloc(a, spec->num_body * sizeof *u->body);
  const char *ob = u->owner ? u->owner->buf.base : NULL;
  size_t olen = u->owner ? u->owner->buf.len : 0;
  for (size_t i = 0; i < spec->num_body; i++) {
    ob_iov_t p = spec->body[i];
    if (p.len == 0) continue;
    bool inside = ob && p.base >= ob && p.len <= olen && (size_t)(p.base - ob) <= olen - p.len;
    u->body[u->num_body++] = inside ? p : ob_arena_dup(a, p);
    u->body_len += p.len;
  }
}

ob_ureq_t *ob_upstream_request(ob_upstream_t *up, const ob_ureq_spec_t *spec, const ob_ureq_handler_t *h,
                               void *data) {
  struct event_base *base = up->net->base;
  ob_ureq_t *u = ob_xcalloc(1, sizeof *u);
  u->up = up;
  u->h = *h;
  u->data = data;
  u->state = U_NEW;
  ob_arena_init(&u->arena, 4096);
  u->kick = event_new(base, -1, 0, kick_cb, u);
  u->timer = event_new(base, -1, 0, ureq_timer_cb, u);
  u->rbody = evbuffer_new();
  if (!u->kick || !u->timer || !u->rbody) abort();
  copy_spec(u, spec);
  u->next = up->ureqs;
  if (up->ureqs) up->ureqs->prev = u;
  up->ureqs = u;

  if (up->destroying) {
    ob_net_up_fail(u, OB_ERR_CONN, 502);
  } else if (u->streamed && !up->ops->streams_body) {
    ob_log_warn("upstream %s: a streamed request body needs an HTTP/2 upstream", up->cfg->name);
    ob_net_up_fail(u, OB_ERR_CONN, 502);
  } else if (spec->endpoint) {
    u->pinned = true;
    if (spec->endpoint <= up->num_eps)
      dispatch(u, &up->eps[spec->endpoint - 1], false);
    else
      ob_net_up_fail(u, OB_ERR_CONN, 502);
  } else
    dispatch(u, choose_endpoint(up, NULL), false);
  return u;
}

void ob_ureq_pause(ob_ureq_t *u, bool paused) {
  if (u->paused == paused) return;
  u->paused = paused;
  if (paused) {
    if (u->state == U_ACTIVE) {
      event_del(u->timer);
      if (u->conn) u->up->ops->pause(u);
    }
    return;
  }
  if (evbuffer_get_length(u->rbody) > 0) u->undelivered = true;
  if (u->state == U_ACTIVE || u->state == U_DONE) event_active(u->kick, EV_TIMEOUT, 0);
}

void ob_ureq_cancel(ob_ureq_t *u) {
  if (!u) return;
  if (u->busy) {
    u->cancelled = true;
    return;
  }
  cancel_now(u);
}

void ob_upstream_endpoint_stats(const ob_upstream_t *up, size_t i, ob_endpoint_stats_t *out) {
  const ob_endpoint_t *ep = &up->eps[i];
  out->authority = ep->cfg->authority;
  out->attempts = ep->attempts;
  out->failures = ep->failures;
  out->inflight = ep->inflight;
  out->backoff = ep->backoff_until_ms > ob_clock_ms();
}

size_t ob_net_num_upstreams(const ob_net_t *n) { return n->num_upstreams; }
ob_upstream_t *ob_net_upstream_at(ob_net_t *n, size_t i) { return i < n->num_upstreams ? n->upstreams[i] : NULL; }
const char *ob_upstream_name(const ob_upstream_t *up) { return up->cfg->name; }

bool ob_upstream_available(const ob_upstream_t *up) {
  uint64_t now = ob_clock_ms();
  for (size_t i = 0; i < up->num_eps; i++)
    if (up->eps[i].backoff_until_ms <= now) return true;
  return false;
}

bool ob_ureq_head_ends(const ob_ureq_t *u) {
  return u->head_ended; /* set by protocols that can end a response on its head */
}

void ob_net_up_body_ready(ob_ureq_t *u) {
  if (u->state == U_ACTIVE && u->conn) u->up->ops->body_ready(u);
}

void ob_net_up_body_unlink(ob_ureq_t *u) {
  if (u->src) ob_net_sreq_body_detach(u->src);
  u->src = NULL;
}

size_t ob_ureq_endpoint_index(const ob_ureq_t *u) { return u->ep ? (size_t)(u->ep - u->up->eps) : 0; }

size_t ob_upstream_num_endpoints(const ob_upstream_t *up) { return up->num_eps; }

const char *ob_ureq_endpoint(const ob_ureq_t *u) { return u->ep ? u->ep->cfg->authority : "-"; }

ob_upstream_t *ob_net_upstream(ob_net_t *n, const char *name) {
  for (size_t i = 0; i < n->num_upstreams; i++)
    if (n->upstreams[i] && strcmp(n->upstreams[i]->cfg->name, name) == 0) return n->upstreams[i];
  return NULL;
}

/* ================================================================ pools */

static const ob_up_proto_ops_t *proto_ops(const ob_net_upstream_conf_t *cfg) {
  return cfg->protocol == OB_PROTO_HTTP1 ? &ob_net_uh1_ops : &ob_net_uh2_ops;
}

static SSL_CTX *tls_client_ctx(const ob_net_upstream_conf_t *cfg) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) {
    ob_log_error("upstream %s: cannot create a TLS context", cfg->name);
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  if (cfg->tls_verify) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = cfg->tls_ca ? SSL_CTX_load_verify_locations(ctx, cfg->tls_ca, NULL)
                         : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
      char buf[256];
      ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
      ob_log_error("upstream %s: cannot load CA certificates %s: %s", cfg->name,
                   cfg->tls_ca ? cfg->tls_ca : "(system default)", buf);
      SSL_CTX_free(ctx);
      return NULL;
    }
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  }
  const ob_up_proto_ops_t *ops = proto_ops(cfg);
  SSL_CTX_set_alpn_protos(ctx, ops->alpn, (unsigned)ops->alpn_len);
  return ctx;
}

bool ob_net_up_tls_check(const ob_net_upstream_conf_t *cfg) {
  bool tls = false;
  for (size_t i = 0; i < cfg->num_endpoints; i++) tls |= cfg->endpoints[i].tls;
  if (!tls) return true;
  SSL_CTX *ctx = tls_client_ctx(cfg);
  SSL_CTX_free(ctx);
  return ctx != NULL;
}

ob_upstream_t *ob_net_upstream_create(ob_net_t *n, const ob_net_upstream_conf_t *cfg) {
  ob_upstream_t *up = ob_xcalloc(1, sizeof *up);
  up->net = n;
  up->cfg = cfg;
  up->gcfg = ob_net_config_acquire(n->cfg); /* the pool may outlive n->cfg across a reload */
  up->ops = proto_ops(cfg);
  up->num_eps = cfg->num_endpoints;
  up->eps = ob_xcalloc(up->num_eps ? up->num_eps : 1, sizeof *up->eps);
  bool tls = false;
  for (size_t i = 0; i < up->num_eps; i++) {
    up->eps[i].up = up;
    up->eps[i].cfg = &cfg->endpoints[i];
    tls |= cfg->endpoints[i].tls;
  }
  if (up->num_eps == 0) {
    ob_log_error("upstream %s: no endpoints", cfg->name);
    goto fail_eps;
  }
  if (tls && !(up->ssl = tls_client_ctx(cfg))) goto fail_eps;
  const ob_net_timeouts_t *t = &n->cfg->timeouts;
  up->tv_connect = pool_timeout(n, t->connect_ms, &up->tv_own[0]);
  up->tv_first_byte = pool_timeout(n, t->first_byte_ms, &up->tv_own[1]);
  up->tv_idle = pool_timeout(n, t->idle_ms, &up->tv_own[2]);
  up->tv_keepalive = pool_timeout(n, t->upstream_keepalive_ms, &up->tv_own[3]);
  return up;

fail_eps:
  free(up->eps);
  ob_net_config_release(up->gcfg);
  free(up);
  return NULL;
}

void ob_net_upstream_destroy(ob_upstream_t *up) {
  if (!up) return;
  up->destroying = true;
  /* Connections first, without callbacks: every attached ureq is detached. */
  for (size_t i = 0; i < up->num_eps; i++) {
    ob_endpoint_t *ep = &up->eps[i];
    ob_uconn_t *c;
    while ((c = ep->conns)) {
      up->ops->detach_all(c);
      ob_net_up_conn_free(c);
    }
  }
  /* Then every live request hears about it, directly: there is no later
   * loop turn for this pool. */
  ob_ureq_t *u;
  while ((u = up->ureqs)) {
    u->conn = NULL;
    u->err = OB_ERR_CONN;
    u->status_hint = 502;
    deliver_error(u);
  }
  SSL_CTX_free(up->ssl);
  free(up->eps);
  ob_net_config_release(up->gcfg);
  free(up);
}

static bool same_str(const char *a, const char *b) { return a == b || (a && b && strcmp(a, b) == 0); }

bool ob_net_upstream_same(const ob_upstream_t *up, const ob_net_upstream_conf_t *cfg, const ob_net_config_t *gcfg) {
  const ob_net_upstream_conf_t *o = up->cfg;
  if (strcmp(o->name, cfg->name) != 0 || o->protocol != cfg->protocol || o->num_endpoints != cfg->num_endpoints ||
      o->tls_verify != cfg->tls_verify || !same_str(o->tls_ca, cfg->tls_ca))
    return false;
  for (size_t i = 0; i < cfg->num_endpoints; i++)
    if (strcmp(o->endpoints[i].url, cfg->endpoints[i].url) != 0) return false;
  /* Timers and window sizes are fixed when the pool is made. */
  return memcmp(&up->gcfg->timeouts, &gcfg->timeouts, sizeof gcfg->timeouts) == 0 &&
         memcmp(&up->gcfg->limits, &gcfg->limits, sizeof gcfg->limits) == 0;
}

static void sweep_retired(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  ob_net_t *n = arg;
  for (ob_upstream_t **pp = &n->retired; *pp;) {
    ob_upstream_t *u = *pp;
    if (u->ureqs) {
      pp = &u->retired_next;
      continue;
    }
    *pp = u->retired_next;
    ob_log_info("upstream %s: replaced by a reload; its last request is done", u->cfg->name);
    ob_net_upstream_destroy(u);
  }
  if (n->retired) {
    /* Polled rather than hooked into every request's end: reloads are rare
     * and the hot path stays free of the check. */
    struct timeval tv = {1, 0};
    evtimer_add(n->retire_timer, &tv);
  }
}

void ob_net_upstream_retire(ob_net_t *n, ob_upstream_t *u) {
  if (!u->ureqs) {
    ob_net_upstream_destroy(u);
    return;
  }
  u->retired_next = n->retired;
  n->retired = u;
  if (!n->retire_timer) n->retire_timer = evtimer_new(n->base, sweep_retired, n);
  struct timeval tv = {1, 0};
  evtimer_add(n->retire_timer, &tv);
}

void ob_net_upstream_free_retired(ob_net_t *n) {
  while (n->retired) {
    ob_upstream_t *u = n->retired;
    n->retired = u->retired_next;
    ob_net_upstream_destroy(u);
  }
  if (n->retire_timer) event_free(n->retire_timer);
  n->retire_timer = NULL;
}

const char *ob_net_upstream_name(const ob_upstream_t *u) { return u->cfg->name; }
