/*
 * server.c: the net object. Owns listeners, the client-side TLS contexts, the
 * list of client connections and graceful shutdown. A new connection is kept
 * here until its protocol is known (ALPN for TLS, the HTTP/2 connection
 * preface for cleartext), then handed to client_h1.c or client_h2.c.
 * It must not parse HTTP itself.
 */
#include "net_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/bufferevent_ssl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/* Its first line, "PRI * HTTP/2.0\r\n". */
#define H2_PREFACE_LINE_LEN 16

/* ---------------------------------------------------------------- sreq dispatch */

ob_err_t ob_sreq_send_head(ob_sreq_t *s, int status, const ob_http_header_t *headers, size_t n,
                           int64_t content_length, bool end_stream) {
  return s->ops_->send_head(s, status, headers, n, content_length, end_stream);
}

void ob_sreq_send_data(ob_sreq_t *s, struct evbuffer *data, bool end_stream) { s->ops_->send_data(s, data, end_stream); }

void ob_sreq_send_bytes(ob_sreq_t *s, const void *p, size_t n, bool end_stream) {
  /* Through the net's one staging buffer rather than a new evbuffer per
   * call: send_data moves or drops all of it before anything else runs. */
  struct evbuffer *b = s->conn_->net->staging;
  if (n) evbuffer_add(b, p, n);
  s->ops_->send_data(s, b, end_stream);
  evbuffer_drain(b, evbuffer_get_length(b)); /* already empty; never carried to the next call */
}

void ob_sreq_send_trailers(ob_sreq_t *s, const ob_http_header_t *trailers, size_t n) {
  s->ops_->send_trailers(s, trailers, n);
}

void ob_sreq_reset(ob_sreq_t *s) { s->ops_->reset(s); }

size_t ob_sreq_pending(const ob_sreq_t *s) { return s->ops_->pending(s); }

const ob_http_header_t *ob_sreq_header(const ob_sreq_t *s, const char *name) {
  ob_iov_t want = ob_iov_str(name);
  for (size_t i = 0; i < s->num_headers; i++)
    if (ob_iov_eq_nocase(s->headers[i].name, want)) return &s->headers[i];
  return NULL;
}

/* ---------------------------------------------------------------- streamed request bodies */

void ob_net_sreq_body_begin(ob_sreq_t *s) {
  s->body_in_ = evbuffer_new();
  if (!s->body_in_) abort();
}

void ob_net_sreq_body_push(ob_sreq_t *s, const void *data, size_t len) {
  evbuffer_add(s->body_in_, data, len);
  if (s->sink_) ob_net_up_body_ready(s->sink_);
}

void ob_net_sreq_body_end(ob_sreq_t *s) {
  s->body_ended_ = true;
  if (s->sink_) ob_net_up_body_ready(s->sink_);
}

void ob_net_sreq_body_attach(ob_sreq_t *s, struct ob_ureq *u) { s->sink_ = u; }

void ob_net_sreq_body_detach(ob_sreq_t *s) { s->sink_ = NULL; }

size_t ob_net_sreq_body_read(ob_sreq_t *s, void *buf, size_t len, bool *eof) {
  int got = evbuffer_remove(s->body_in_, buf, len);
  size_t taken = got > 0 ? (size_t)got : 0;
  if (taken) s->ops_->body_consumed(s, taken);
  *eof = s->body_ended_ && evbuffer_get_length(s->body_in_) == 0;
  return taken;
}

void ob_net_sreq_init(ob_sreq_t *s, ob_client_conn_t *c, const ob_sreq_ops_t *ops, int http_version) {
  memset(s, 0, sizeof *s);
  ob_arena_init(&s->arena, 2048);
  s->ops_ = ops;
  s->http_version = http_version;
  s->peer_addr = c->peer;
  s->tls = c->tls;
  s->xff_replace = c->xff_replace;
  s->scheme = c->tls ? OB_IOV_LIT("https") : OB_IOV_LIT("http");
  s->body = ob_rcbuf_create();
  s->start_us = ob_clock_us();
  s->conn_ = c;
}

ob_conn_scratch_t *ob_sreq_conn_scratch(ob_sreq_t *s) { return s->conn_ ? &s->conn_->scratch : NULL; }

void ob_net_sreq_dispose(ob_sreq_t *s) {
  /* The handler cancels a ureq reading this body before the sreq goes;
   * should one still be linked, it must not read freed memory. */
  if (s->sink_) ob_net_up_body_unlink(s->sink_);
  if (s->body_in_) evbuffer_free(s->body_in_);
  s->body_in_ = NULL;
  ob_rcbuf_release(s->body);
  s->body = NULL;
  ob_arena_dispose(&s->arena);
}

/* ---------------------------------------------------------------- connections */

void ob_net_conn_stats(const ob_net_t *n, ob_net_conn_stats_t *out) { *out = n->conn_stats; }

void ob_net_client_release(ob_client_conn_t *c) {
  ob_net_t *n = c->net;
  if (c->proto == OB_CONN_H1 || c->proto == OB_CONN_H2) n->conn_stats.open[c->proto == OB_CONN_H2 ? 1 : 0]--;
  if (c->prev) c->prev->next = c->next;
  else n->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->detect_timer) event_free(c->detect_timer);
  c->detect_timer = NULL;
  ob_sock_free(c->sock);
  c->sock = NULL;
  explicit_bzero(&c->scratch, sizeof c->scratch);
  free(c);
  n->num_conns--;
  ob_net_conn_gone(n);
}

void ob_net_client_close(ob_client_conn_t *c) {
  switch (c->proto) {
  case OB_CONN_H1: ob_net_h1_free(c); break;
  case OB_CONN_H2: ob_net_h2_free(c); break;
  default: ob_net_client_release(c); break;
  }
}

void ob_net_client_drain(ob_client_conn_t *c) {
  c->draining = true;
  switch (c->proto) {
  case OB_CONN_H1: ob_net_h1_drain(c); break;
  case OB_CONN_H2: ob_net_h2_drain(c); break;
  default: ob_net_client_release(c); break;
  }
}

static void start_proto(ob_client_conn_t *c, ob_conn_proto_t p) {
  event_free(c->detect_timer);
  c->detect_timer = NULL;
  c->proto = p;
  int k = p == OB_CONN_H2 ? 1 : 0;
  c->net->conn_stats.accepted[k]++;
  c->net->conn_stats.open[k]++;
  if (c->tls) c->net->conn_stats.tls_accepted++;
  if (p == OB_CONN_H2) ob_net_h2_start(c);
  else ob_net_h1_start(c);
}

/* Cleartext: HTTP/2 with prior knowledge starts with the connection preface;
 * anything else is HTTP/1.1. Decide as soon as the bytes disagree, or once
 * the preface's first line ("PRI * HTTP/2.0\r\n", which no HTTP/1.1 server
 * can serve) is in: from there the client speaks HTTP/2, and a bad rest of
 * the preface is HTTP/2's connection error (GOAWAY PROTOCOL_ERROR, RFC 9113
 * 3.4), not an HTTP/1.1 answer it would not read. */
static void detect_read(ob_sock_t *sock, void *arg) {
  ob_client_conn_t *c = arg;
  struct evbuffer *in = ob_sock_input(sock);
  size_t len = evbuffer_get_length(in);
  size_t want = len < H2_PREFACE_LINE_LEN ? len : H2_PREFACE_LINE_LEN;
  unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)want);
  if (memcmp(p, H2_PREFACE, want) != 0) {
    start_proto(c, OB_CONN_H1);
    return;
  }
  if (want == H2_PREFACE_LINE_LEN) start_proto(c, OB_CONN_H2);
}

/* Text for an OpenSSL error code, never NULL: ERR_reason_error_string has
 * none for a system error (a missing file) or an empty queue, and such a
 * NULL printed as "(null)". buf: room for the fallback text. */
static const char *tls_reason(unsigned long e, char *buf, size_t len) {
  if (!e) return "unknown error";
  if (ERR_GET_LIB(e) == ERR_LIB_SYS) return strerror(ERR_GET_REASON(e));
  const char *r = ERR_reason_error_string(e);
  if (r) return r;
  ERR_error_string_n(e, buf, len);
  return buf;
}

static void detect_event(ob_sock_t *sock, short what, void *arg) {
  ob_client_conn_t *c = arg;
  if (what & BEV_EVENT_CONNECTED) {
    /* TLS handshake done: ALPN decides. */
    const unsigned char *alpn = NULL;
    unsigned int alpn_len = 0;
    SSL *ssl = bufferevent_openssl_get_ssl(ob_sock_bev(sock));
    if (ssl) SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    start_proto(c, alpn_len == 2 && memcmp(alpn, "h2", 2) == 0 ? OB_CONN_H2 : OB_CONN_H1);
    return;
  }
  if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF | BEV_EVENT_TIMEOUT)) {
    if (c->tls && (what & BEV_EVENT_ERROR)) {
      unsigned long e = bufferevent_get_openssl_error(ob_sock_bev(sock));
      char buf[256];
      if (e) ob_log_debug("tls handshake with %s failed: %s", c->peer, tls_reason(e, buf, sizeof buf));
    }
    ob_net_client_release(c);
  }
}

static void detect_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  ob_client_conn_t *c = arg;
  ob_log_debug("%s: no request in time; closing", c->peer);
  ob_net_client_release(c);
}

void ob_net_client_accept(ob_net_t *n, evutil_socket_t fd, const struct sockaddr *sa, int salen, SSL_CTX *tls,
                          bool xff_replace) {
  (void)salen;
  if (n->shutting_down || n->num_conns >= n->cfg->limits.max_connections) {
    evutil_closesocket(fd);
    return;
  }
  ob_client_conn_t *c = ob_xcalloc(1, sizeof *c);
  c->net = n;
  c->tls = tls != NULL;
  c->xff_replace = xff_replace;
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->peer, sizeof c->peer);
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->peer, sizeof c->peer);
  else
    snprintf(c->peer, sizeof c->peer, "unknown");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  evutil_make_socket_nonblocking(fd);
  if (tls) {
    SSL *ssl = SSL_new(tls);
    struct bufferevent *bev = bufferevent_openssl_socket_new(n->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                             BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    c->sock = ob_sock_new_bev(bev);
  } else {
    c->sock = ob_sock_new_fd(n->base, fd);
  }
  c->next = n->conns;
  if (n->conns) n->conns->prev = c;
  n->conns = c;
  n->num_conns++;
  /* The handshake and the first bytes must arrive within the header
   * timeout. A timer, not the bufferevent's read timeout: that one restarts
   * with every byte, so a client trickling the h2c preface or a TLS
   * ClientHello could hold the connection for many timeouts. */
  struct timeval tv = {n->cfg->timeouts.client_header_ms / 1000, (n->cfg->timeouts.client_header_ms % 1000) * 1000};
  c->detect_timer = evtimer_new(n->base, detect_timeout, c);
  evtimer_add(c->detect_timer, &tv);
  ob_sock_setcb(c->sock, detect_read, NULL, detect_event, c);
  ob_sock_enable(c->sock, EV_READ | EV_WRITE);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg) {
  ob_net_t *n = arg;
  SSL_CTX *tls = NULL;
  bool xff_replace = false;
  /* The listener arrays follow the current config's listeners, in order
   * (a reload rebuilds them); a removed listener no longer accepts. */
  for (size_t i = 0; i < n->num_listeners; i++)
    if (n->listeners[i] == l) {
      tls = n->listener_ssl[i];
      xff_replace = i < n->cfg->num_listeners && n->cfg->listeners[i].xff_replace;
    }
  ob_net_client_accept(n, fd, sa, salen, tls, xff_replace);
}

static void on_accept_error(struct evconnlistener *l, void *arg) {
  (void)l, (void)arg;
  /* EMFILE and friends: the listener keeps going; say so once per event. */
  ob_log_warn("accept failed: %s", strerror(errno));
}

/* ---------------------------------------------------------------- TLS */

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
  (void)ssl, (void)arg;
  /* Prefer h2, then http/1.1; a client offering neither gets HTTP/1.1. */
  static const unsigned char prefs[] = "\x02h2\x08http/1.1";
  if (SSL_select_next_proto((unsigned char **)out, outlen, prefs, sizeof prefs - 1, in, inlen) ==
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_OK;
  return SSL_TLSEXT_ERR_NOACK;
}

static SSL_CTX *server_tls(const ob_net_listener_conf_t *l) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) return NULL;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  char buf[256];
  if (SSL_CTX_use_certificate_chain_file(ctx, l->tls_cert) != 1) {
    ob_log_error("listener %s: cannot load certificate %s: %s", l->address, l->tls_cert,
                 tls_reason(ERR_get_error(), buf, sizeof buf));
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, l->tls_key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    ob_log_error("listener %s: cannot load key %s: %s", l->address, l->tls_key,
                 tls_reason(ERR_get_error(), buf, sizeof buf));
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
  }
  SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
  return ctx;
}

bool ob_net_tls_check(const ob_net_config_t *cfg) {
  bool ok = true;
  for (size_t i = 0; i < cfg->num_listeners; i++) {
    if (!cfg->listeners[i].tls) continue;
    SSL_CTX *ctx = server_tls(&cfg->listeners[i]);
    if (!ctx) ok = false;
    SSL_CTX_free(ctx);
  }
  for (size_t i = 0; i < cfg->num_upstreams; i++) ok &= ob_net_up_tls_check(&cfg->upstreams[i]);
  return ok;
}

/* ---------------------------------------------------------------- the net */

/* The port at the end of a bound address ("127.0.0.1:8080", "[::1]:8080"). */
static unsigned bound_port(const char *addr) {
  const char *c = addr ? strrchr(addr, ':') : NULL;
  return c ? (unsigned)strtoul(c + 1, NULL, 10) : 0;
}

/* Bind l (on port instead of l's when port is set); on success *out and
 * *addr (the bound address, owned) are set. */
static bool bind_listener(ob_net_t *n, const ob_net_listener_conf_t *l, unsigned port_override,
                          struct evconnlistener **out, char **addr) {
  /* Resolved once at start-up (blocking is fine here: nothing is being
   * served yet). The first address of the name is used. */
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res = NULL;
  char port[8];
  snprintf(port, sizeof port, "%u", port_override ? port_override : l->port);
  const char *node = (l->host[0] == 0 || strcmp(l->host, "*") == 0) ? NULL : l->host;
  int gai = getaddrinfo(node, port, &hints, &res);
  if (gai != 0 || !res) {
    ob_log_error("listener %s: cannot resolve host: %s", l->address, gai_strerror(gai));
    if (res) freeaddrinfo(res);
    return false;
  }
  int sslen = (int)res->ai_addrlen;
  memcpy(&ss, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  struct evconnlistener *lis = evconnlistener_new_bind(
      n->base, on_accept, n,
      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC | (n->reuseport ? LEV_OPT_REUSEABLE_PORT : 0), 1024,
      (struct sockaddr *)&ss, sslen);
  if (!lis) {
    ob_log_error("listener %s: cannot bind: %s", l->address, strerror(errno));
    return false;
  }
  evconnlistener_set_error_cb(lis, on_accept_error);
  /* Report the real port for ephemeral listeners. */
  socklen_t blen = sizeof ss;
  getsockname(evconnlistener_get_fd(lis), (struct sockaddr *)&ss, &blen);
  char host[INET6_ADDRSTRLEN] = "";
  char buf[INET6_ADDRSTRLEN + 16];
  if (ss.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof host);
    snprintf(buf, sizeof buf, "[%s]:%u", host, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
  } else {
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof host);
    snprintf(buf, sizeof buf, "%s:%u", host, ntohs(((struct sockaddr_in *)&ss)->sin_port));
  }
  *out = lis;
  *addr = ob_xstrdup(buf);
  return true;
}

const struct timeval *ob_net_timeout(ob_net_t *n, uint32_t ms, struct timeval *own) {
  own->tv_sec = ms / 1000;
  own->tv_usec = (suseconds_t)(ms % 1000) * 1000;
  for (size_t i = 0; i < n->num_timeouts; i++)
    if (n->timeouts[i].ms == ms) return n->timeouts[i].tv;
  const struct timeval *ct = event_base_init_common_timeout(n->base, own);
  if (!ct) return own;
  /* Reloads can bring new durations; past the table's end libevent's own
   * (slower) lookup still finds them. */
  if (n->num_timeouts < OB_NET_TIMEOUTS) {
    n->timeouts[n->num_timeouts].ms = ms;
    n->timeouts[n->num_timeouts++].tv = ct;
  }
  return ct;
}

void ob_net_arm(ob_net_t *n, struct event *ev, uint32_t ms) {
  struct timeval own;
  evtimer_add(ev, ob_net_timeout(n, ms, &own));
}

ob_net_t *ob_net_create(struct event_base *base, const ob_net_config_t *cfg, const ob_sreq_handler_t *handler, void *ctx) {
  return ob_net_create_worker(base, cfg, handler, ctx, NULL);
}

ob_net_t *ob_net_create_worker(struct event_base *base, const ob_net_config_t *src, const ob_sreq_handler_t *handler,
                               void *ctx, const ob_net_t *first) {
  ob_net_t *n = ob_xcalloc(1, sizeof *n);
  n->reuseport = src->workers > 1;
  n->base = base;
  ob_net_config_t *cfg = n->cfg = ob_net_config_copy(src); /* the pools point into it */
  n->handler = handler;
  n->ctx = ctx;
  n->staging = evbuffer_new();
  n->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
  if (!n->dns) n->dns = evdns_base_new(base, 0); /* no resolv.conf: numeric hosts still work */

  n->num_listeners = cfg->num_listeners;
  n->listeners = ob_xcalloc(n->num_listeners, sizeof *n->listeners);
  n->listener_addrs = ob_xcalloc(n->num_listeners, sizeof *n->listener_addrs);
  n->listener_tls = ob_xcalloc(n->num_listeners, sizeof *n->listener_tls);
  n->listener_ssl = ob_xcalloc(n->num_listeners, sizeof *n->listener_ssl);
  for (size_t i = 0; i < cfg->num_listeners; i++) {
    const ob_net_listener_conf_t *l = &cfg->listeners[i];
    if (l->tls && !(n->listener_ssl[i] = server_tls(l))) goto fail;
    n->listener_tls[i] = l->tls;
    unsigned port = first ? bound_port(ob_net_listener_address(first, i)) : 0;
    if (!bind_listener(n, l, port, &n->listeners[i], &n->listener_addrs[i])) goto fail;
  }
  n->num_upstreams = cfg->num_upstreams;
  n->upstreams = ob_xcalloc(n->num_upstreams ? n->num_upstreams : 1, sizeof *n->upstreams);
  for (size_t i = 0; i < cfg->num_upstreams; i++)
    if (!(n->upstreams[i] = ob_net_upstream_create(n, &cfg->upstreams[i]))) goto fail;
  return n;
fail:
  ob_net_destroy(n);
  return NULL;
}

/* ---------------------------------------------------------------- reload */

typedef struct listener_set {
  struct evconnlistener **l;
  char **addr;
  bool *tls;
  SSL_CTX **ssl;
  size_t n;
} listener_set_t;

static void listener_set_alloc(listener_set_t *s, size_t n) {
  s->n = n;
  s->l = ob_xcalloc(n ? n : 1, sizeof *s->l);
  s->addr = ob_xcalloc(n ? n : 1, sizeof *s->addr);
  s->tls = ob_xcalloc(n ? n : 1, sizeof *s->tls);
  s->ssl = ob_xcalloc(n ? n : 1, sizeof *s->ssl);
}

/* Free what is left in s (entries moved elsewhere are NULL). */
static void listener_set_free(listener_set_t *s) {
  for (size_t i = 0; i < s->n; i++) {
    if (s->l[i]) evconnlistener_free(s->l[i]);
    free(s->addr[i]);
    if (s->ssl[i]) SSL_CTX_free(s->ssl[i]);
  }
  free(s->l), free(s->addr), free(s->tls), free(s->ssl);
}

bool ob_net_reload(ob_net_t *n, const ob_net_config_t *cfg) { return ob_net_reload_worker(n, cfg, NULL); }

bool ob_net_reload_worker(ob_net_t *n, const ob_net_config_t *src, const ob_net_t *first) {
  if (n->shutting_down) return false;
  ob_net_config_t *old = n->cfg;
  ob_net_config_t *cfg = ob_net_config_copy(src); /* new pools point into it */
  /* Listeners: kept ones are found by address; new ones bound. */
  listener_set_t next, prev = {n->listeners, n->listener_addrs, n->listener_tls, n->listener_ssl, n->num_listeners};
  listener_set_alloc(&next, cfg->num_listeners);
  size_t *from = ob_xcalloc(cfg->num_listeners + 1, sizeof *from); /* 1 + old index, 0 = new */
  bool ok = true;
  for (size_t j = 0; ok && j < cfg->num_listeners; j++) {
    const ob_net_listener_conf_t *l = &cfg->listeners[j];
    for (size_t i = 0; i < old->num_listeners && !from[j]; i++) {
      bool taken = false;
      for (size_t k = 0; k < j; k++) taken |= from[k] == i + 1;
      if (!taken && prev.l[i] && strcmp(old->listeners[i].address, l->address) == 0) from[j] = i + 1;
    }
    next.tls[j] = l->tls;
    /* Certificates are read again even for a kept listener: rotating them
     * is what a reload is often for. */
    if (l->tls && !(next.ssl[j] = server_tls(l))) ok = false;
    else if (!from[j] && !bind_listener(n, l, first ? bound_port(ob_net_listener_address(first, j)) : 0, &next.l[j],
                                        &next.addr[j]))
      ok = false;
  }
  /* Pools: kept when nothing they were made from changed. */
  ob_upstream_t **ups = ob_xcalloc(cfg->num_upstreams ? cfg->num_upstreams : 1, sizeof *ups);
  bool *kept = ob_xcalloc(n->num_upstreams + 1, sizeof *kept);
  for (size_t j = 0; ok && j < cfg->num_upstreams; j++) {
    for (size_t i = 0; i < n->num_upstreams && !ups[j]; i++)
      if (!kept[i] && ob_net_upstream_same(n->upstreams[i], &cfg->upstreams[j], cfg)) ups[j] = n->upstreams[i], kept[i] = true;
    if (!ups[j]) {
      ob_net_config_t *cur = n->cfg;
      n->cfg = cfg; /* ob_net_upstream_create takes timeouts and limits from n->cfg */
      ups[j] = ob_net_upstream_create(n, &cfg->upstreams[j]);
      n->cfg = cur;
      if (!ups[j]) ok = false;
    }
  }
  if (!ok) {
    for (size_t j = 0; j < cfg->num_upstreams; j++) {
      bool reused = false;
      for (size_t i = 0; i < n->num_upstreams; i++) reused |= ups[j] == n->upstreams[i];
      if (ups[j] && !reused) ob_net_upstream_destroy(ups[j]);
    }
    free(ups), free(kept), free(from);
    listener_set_free(&next);
    ob_net_config_release(cfg);
    return false;
  }
  /* Commit: nothing below fails. */
  for (size_t j = 0; j < cfg->num_listeners; j++) {
    if (!from[j]) continue;
    size_t i = from[j] - 1;
    next.l[j] = prev.l[i], next.addr[j] = prev.addr[i];
    prev.l[i] = NULL, prev.addr[i] = NULL;
  }
  listener_set_free(&prev); /* removed listeners stop accepting; their connections go on */
  n->listeners = next.l, n->listener_addrs = next.addr, n->listener_tls = next.tls, n->listener_ssl = next.ssl;
  n->num_listeners = next.n;
  for (size_t i = 0; i < n->num_upstreams; i++)
    if (!kept[i]) ob_net_upstream_retire(n, n->upstreams[i]);
  free(n->upstreams);
  n->upstreams = ups;
  n->num_upstreams = cfg->num_upstreams;
  n->cfg = cfg;
  ob_net_config_release(old);
  free(kept), free(from);
  return true;
}

const char *ob_net_listener_address(const ob_net_t *n, size_t i) {
  return i < n->num_listeners ? n->listener_addrs[i] : NULL;
}

static void close_listeners(ob_net_t *n) {
  for (size_t i = 0; i < n->num_listeners; i++) {
    if (n->listeners[i]) evconnlistener_free(n->listeners[i]);
    n->listeners[i] = NULL;
  }
}

void ob_net_conn_gone(ob_net_t *n) {
  if (n->shutting_down && n->num_conns == 0 && n->shutdown_done) {
    void (*done)(void *) = n->shutdown_done;
    n->shutdown_done = NULL;
    if (n->grace_timer) event_del(n->grace_timer);
    done(n->shutdown_arg);
  }
}

static void on_grace(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  ob_net_t *n = arg;
  ob_log_warn("grace period over: closing %zu connection(s) with requests in flight", n->num_conns);
  while (n->conns) ob_net_client_close(n->conns);
  ob_net_conn_gone(n);
}

void ob_net_shutdown(ob_net_t *n, void (*done)(void *arg), void *arg) {
  if (n->shutting_down) return;
  n->shutting_down = true;
  n->shutdown_done = done;
  n->shutdown_arg = arg;
  close_listeners(n);
  n->grace_timer = evtimer_new(n->base, on_grace, n);
  struct timeval tv = {n->cfg->timeouts.grace_ms / 1000, (n->cfg->timeouts.grace_ms % 1000) * 1000};
  evtimer_add(n->grace_timer, &tv);
  /* Draining may free connections, so walk with the next pointer saved. */
  for (ob_client_conn_t *c = n->conns, *next; c; c = next) {
    next = c->next;
    ob_net_client_drain(c);
  }
  ob_net_conn_gone(n);
}

void ob_net_destroy(ob_net_t *n) {
  if (!n) return;
  n->shutdown_done = NULL;
  close_listeners(n);
  while (n->conns) ob_net_client_close(n->conns);
  for (size_t i = 0; i < n->num_upstreams; i++) ob_net_upstream_destroy(n->upstreams[i]);
  free(n->upstreams);
  ob_net_upstream_free_retired(n);
  for (size_t i = 0; i < n->num_listeners; i++) {
    free(n->listener_addrs[i]);
    if (n->listener_ssl[i]) SSL_CTX_free(n->listener_ssl[i]);
  }
  free(n->listeners);
  free(n->listener_addrs);
  free(n->listener_tls);
  free(n->listener_ssl);
  if (n->grace_timer) event_free(n->grace_timer);
  if (n->dns) evdns_base_free(n->dns, 0);
  evbuffer_free(n->staging);
  ob_net_config_release(n->cfg);
  free(n);
}
