/* Unit tests for src/net upstream.c, upstream_h1.c and upstream_h2.c: upstream
 * pools against small servers this test runs on its own event_base: a raw
 * HTTP/1.1 server with canned answers and an h2c server built on an nghttp2
 * server session. The net is assembled by hand from net_int.h (base, dns,
 * cfg, upstreams) so the test does not need the client side. */
#include "config.h"
#include "net_int.h"
#include "tap.h"

#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <event2/bufferevent_ssl.h>
#include <nghttp2/nghttp2.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static struct event_base *base;

/* ================================================================ h1 test server */

typedef struct sconn sconn_t;
typedef struct srv {
  struct evconnlistener *lis;
  int port;
  int conns;      /* accepted */
  int requests;
  SSL_CTX *tls; /* NULL = cleartext */
  char last_head[2048];
  ob_buf_t last_body;
  sconn_t *live;
} srv_t;

struct sconn {
  srv_t *s;
  struct bufferevent *bev;
  struct event *timer;
  int nreq;
  bool close_after_write;
  const char *const *chunks; /* written one per timer tick */
  size_t nchunks, ci;
  sconn_t *prev, *next;
};

static void sconn_free(sconn_t *sc) {
  if (sc->prev)
    sc->prev->next = sc->next;
  else
    sc->s->live = sc->next;
  if (sc->next) sc->next->prev = sc->prev;
  event_free(sc->timer);
  bufferevent_free(sc->bev);
  free(sc);
}

static void s_write(sconn_t *sc, const char *p) { bufferevent_write(sc->bev, p, strlen(p)); }

static const char *const chunked_parts[] = {
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n5\r\nhel",
    "lo\r\n",
    "8\r\n chunked\r\n6",
    "\r\n world\r\n0\r\nX-Trailer: t\r\n",
    "\r\n",
};

static void s_tick(evutil_socket_t fd, short what, void *arg) {
  sconn_t *sc = arg;
  if (sc->ci < sc->nchunks) s_write(sc, sc->chunks[sc->ci++]);
  if (sc->ci < sc->nchunks) {
    struct timeval tv = {0, 5000};
    event_add(sc->timer, &tv);
  }
}

/* Returns false when the connection was closed (and sc freed). */
static bool s_respond(sconn_t *sc, const char *method, const char *path) {
  srv_t *s = sc->s;
  if (strstr(path, "/len")) {
    s_write(sc, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Test: a\r\nConnection: keep-alive, X-Hop\r\n"
                "X-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\nhello world");
  } else if (strstr(path, "/echo")) {
    char head[128];
    snprintf(head, sizeof head, "HTTP/1.1 201 Created\r\nContent-Length: %zu\r\n\r\n", s->last_body.len);
    s_write(sc, head);
    bufferevent_write(sc->bev, s->last_body.base ? s->last_body.base : "", s->last_body.len);
  } else if (strstr(path, "/chunked")) {
    sc->chunks = chunked_parts;
    sc->nchunks = sizeof chunked_parts / sizeof chunked_parts[0];
    sc->ci = 0;
    s_tick(-1, 0, sc);
  } else if (strstr(path, "/untilclose")) {
    s_write(sc, "HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\nbody until close");
    sc->close_after_write = true;
  } else if (strstr(path, "/continue")) {
    s_write(sc, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
  } else if (strstr(path, "/bad")) {
    s_write(sc, "HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok");
  } else if (strstr(path, "/closebefore")) {
    sconn_free(sc);
    return false;
  } else if (strstr(path, "/midclose")) {
    s_write(sc, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial");
    sc->close_after_write = true;
  } else if (strstr(path, "/never")) {
    /* no answer */
  } else if (strstr(path, "/big")) {
    size_t n = 1 << 20;
    char head[128];
    snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
    s_write(sc, head);
    char *b = malloc(n);
    for (size_t i = 0; i < n; i++) b[i] = (char)('a' + i % 26);
    bufferevent_write(sc->bev, b, n);
    free(b);
  } else if (strstr(path, "/second-close")) {
    if (sc->nreq >= 2) {
      sconn_free(sc);
      return false;
    }
    s_write(sc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
  } else {
    s_write(sc, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
  }
  (void)method;
  return true;
}

static void s_read(struct bufferevent *bev, void *arg) {
  sconn_t *sc = arg;
  srv_t *s = sc->s;
  struct evbuffer *in = bufferevent_get_input(bev);
  for (;;) {
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0) return;
    size_t head_len = (size_t)end.pos + 4;
    char *head = (char *)evbuffer_pullup(in, (ev_ssize_t)head_len);
    size_t cl = 0;
    for (size_t i = 0; i + 15 < head_len; i++)
      if (strncasecmp(head + i, "\ncontent-length:", 16) == 0) cl = strtoul(head + i + 16, NULL, 10);
    if (evbuffer_get_length(in) < head_len + cl) return;
    size_t keep = head_len < sizeof s->last_head - 1 ? head_len : sizeof s->last_head - 1;
    memcpy(s->last_head, head, keep);
    s->last_head[keep] = '\0';
    char method[16] = "", path[256] = "";
    sscanf(s->last_head, "%15s %255s", method, path);
    evbuffer_drain(in, head_len);
    ob_buf_reset(&s->last_body);
    evbuffer_remove(in, ob_buf_reserve(&s->last_body, cl + 1), cl);
    s->last_body.len = cl;
    sc->nreq++;
    s->requests++;
    if (!s_respond(sc, method, path)) return;
  }
}

static void s_write_cb(struct bufferevent *bev, void *arg) {
  sconn_t *sc = arg;
  if (sc->close_after_write && evbuffer_get_length(bufferevent_get_output(bev)) == 0) sconn_free(sc);
}

static void s_event(struct bufferevent *bev, short what, void *arg) {
  if (what & BEV_EVENT_CONNECTED) return; /* TLS handshake done */
  sconn_free(arg);
}

static void s_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg) {
  srv_t *s = arg;
  sconn_t *sc = calloc(1, sizeof *sc);
  sc->s = s;
  if (s->tls)
    sc->bev = bufferevent_openssl_socket_new(base, fd, SSL_new(s->tls), BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
  else
    sc->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
  sc->timer = event_new(base, -1, 0, s_tick, sc);
  sc->next = s->live;
  if (s->live) s->live->prev = sc;
  s->live = sc;
  s->conns++;
  bufferevent_setcb(sc->bev, s_read, s_write_cb, s_event, sc);
  bufferevent_enable(sc->bev, EV_READ | EV_WRITE);
}

static int listen_port(struct evconnlistener *l) {
  struct sockaddr_in sin;
  socklen_t len = sizeof sin;
  getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &len);
  return ntohs(sin.sin_port);
}

static struct evconnlistener *listen_any(evconnlistener_cb cb, void *arg) {
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  return evconnlistener_new_bind(base, cb, arg, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
                                 (struct sockaddr *)&sin, sizeof sin);
}

static void srv_start(srv_t *s, SSL_CTX *tls) {
  memset(s, 0, sizeof *s);
  s->tls = tls;
  s->lis = listen_any(s_accept, s);
  s->port = listen_port(s->lis);
}

static void srv_stop(srv_t *s) {
  while (s->live) sconn_free(s->live);
  evconnlistener_free(s->lis);
  ob_buf_dispose(&s->last_body);
}

/* A loopback port nobody listens on. */
static int closed_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bind(fd, (struct sockaddr *)&sin, sizeof sin);
  socklen_t len = sizeof sin;
  getsockname(fd, (struct sockaddr *)&sin, &len);
  close(fd);
  return ntohs(sin.sin_port);
}

/* ================================================================ h2c test server */

typedef struct h2conn h2conn_t;
typedef struct h2stream {
  h2conn_t *c;
  int32_t id;
  char path[128];
  char authority[128];
  bool te_trailers;
  size_t body_len;
  char body[64];
  size_t sent, total;
  bool deferred;
  struct h2stream *next;
} h2stream_t;

typedef struct h2srv {
  struct evconnlistener *lis;
  int port;
  int conns;
  int requests;
  int refused;
  int cancels;
  int goaways;
  SSL_CTX *tls;
  size_t big_sent;
  char last_path[128], last_authority[128];
  bool last_te;
  size_t last_body_len;
  char last_body[64];
  h2conn_t *live;
} h2srv_t;

struct h2conn {
  h2srv_t *s;
  struct bufferevent *bev;
  nghttp2_session *ss;
  struct event *tick;
  h2stream_t *streams;
  bool die;    /* close once the output is written */
  h2conn_t *next;
};

static void h2c_free(h2conn_t *c) {
  h2conn_t **pp = &c->s->live;
  while (*pp != c) pp = &(*pp)->next;
  *pp = c->next;
  nghttp2_session_del(c->ss);
  while (c->streams) {
    h2stream_t *st = c->streams;
    c->streams = st->next;
    free(st);
  }
  event_free(c->tick);
  bufferevent_free(c->bev);
  free(c);
}

/* Returns false when the connection was freed. */
static bool h2c_flush(h2conn_t *c) {
  for (;;) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(c->ss, &data);
    if (n < 0) {
      h2c_free(c);
      return false;
    }
    if (n == 0) break;
    bufferevent_write(c->bev, data, (size_t)n);
  }
  return true;
}

static h2stream_t *h2_find(h2conn_t *c, int32_t id) {
  for (h2stream_t *st = c->streams; st; st = st->next)
    if (st->id == id) return st;
  return NULL;
}

static ssize_t h2s_read(nghttp2_session *ss, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                        nghttp2_data_source *src, void *user) {
  h2conn_t *c = user;
  h2stream_t *st = h2_find(c, id);
  if (!st) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  bool streaming = strstr(st->path, "/stream") != NULL;
  if (streaming) {
    /* One part of 1000 bytes per tick. */
    if (st->deferred) return NGHTTP2_ERR_DEFERRED;
    if (len > 1000) len = 1000;
  }
  size_t n = st->total - st->sent;
  if (n > len) n = len;
  for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)('a' + (st->sent + i) % 26);
  st->sent += n;
  if (strstr(st->path, "/big")) c->s->big_sent += n;
  if (st->sent == st->total) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (streaming) {
      nghttp2_nv tr[] = {{(uint8_t *)"x-trailer", (uint8_t *)"done", 9, 4, NGHTTP2_NV_FLAG_NONE}};
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      nghttp2_submit_trailer(ss, id, tr, 1);
    }
  } else if (streaming) {
    st->deferred = true;
  }
  return (ssize_t)n;
}

/* 10 bytes and no end. */
static ssize_t h2s_read_some(nghttp2_session *ss, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                             nghttp2_data_source *src, void *user) {
  h2stream_t *st = h2_find(user, id);
  if (!st || st->sent) return NGHTTP2_ERR_DEFERRED;
  memcpy(buf, "0123456789", 10);
  st->sent = 10;
  return 10;
}

static void h2s_respond(h2conn_t *c, h2stream_t *st) {
  h2srv_t *s = c->s;
  s->requests++;
  snprintf(s->last_path, sizeof s->last_path, "%s", st->path);
  snprintf(s->last_authority, sizeof s->last_authority, "%s", st->authority);
  s->last_te = st->te_trailers;
  s->last_body_len = st->body_len;
  memcpy(s->last_body, st->body, sizeof s->last_body);
  if (strstr(st->path, "/never")) return;
  if (strstr(st->path, "/rst")) {
    nghttp2_submit_rst_stream(c->ss, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  if (strstr(st->path, "/goaway") && s->goaways == 0) {
    /* This stream was never processed: GOAWAY below its id. */
    s->goaways++;
    nghttp2_submit_goaway(c->ss, NGHTTP2_FLAG_NONE, st->id - 2 > 0 ? st->id - 2 : 0, NGHTTP2_NO_ERROR, NULL, 0);
    return;
  }
  if (strstr(st->path, "/die")) {
    /* Head and a little body, then the connection drops. */
    nghttp2_nv h[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE}};
    nghttp2_submit_headers(c->ss, NGHTTP2_FLAG_NONE, st->id, NULL, h, 1, NULL);
    nghttp2_submit_data(c->ss, NGHTTP2_FLAG_NONE, st->id,
                        &(nghttp2_data_provider){.source.ptr = NULL, .read_callback = h2s_read_some});
    c->die = true;
    return;
  }
  if (strstr(st->path, "/lowstatus")) {
    /* Three digits nghttp2 takes as a final status, then body bytes. */
    nghttp2_nv h[] = {{(uint8_t *)":status", (uint8_t *)"050", 7, 3, NGHTTP2_NV_FLAG_NONE}};
    nghttp2_submit_headers(c->ss, NGHTTP2_FLAG_NONE, st->id, NULL, h, 1, NULL);
    nghttp2_submit_data(c->ss, NGHTTP2_FLAG_NONE, st->id,
                        &(nghttp2_data_provider){.source.ptr = NULL, .read_callback = h2s_read_some});
    return;
  }
  if (strstr(st->path, "/refuse") && s->refused == 0) {
    s->refused++;
    nghttp2_submit_rst_stream(c->ss, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_REFUSED_STREAM);
    return;
  }
  nghttp2_nv hdrs[] = {
      {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"content-type", (uint8_t *)"text/plain", 12, 10, NGHTTP2_NV_FLAG_NONE},
  };
  st->total = strstr(st->path, "/stream") ? 5000 : strstr(st->path, "/big") ? 200 * 1024 : 2;
  nghttp2_data_provider prd = {.source.ptr = NULL, .read_callback = h2s_read};
  nghttp2_submit_response(c->ss, st->id, hdrs, 2, &prd);
}

static int h2s_begin_headers(nghttp2_session *ss, const nghttp2_frame *f, void *user) {
  h2conn_t *c = user;
  if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  h2stream_t *st = calloc(1, sizeof *st);
  st->c = c;
  st->id = f->hd.stream_id;
  st->next = c->streams;
  c->streams = st;
  return 0;
}

static int h2s_header(nghttp2_session *ss, const nghttp2_frame *f, const uint8_t *name, size_t namelen,
                      const uint8_t *value, size_t valuelen, uint8_t flags, void *user) {
  h2stream_t *st = h2_find(user, f->hd.stream_id);
  if (!st) return 0;
  if (namelen == 5 && memcmp(name, ":path", 5) == 0)
    snprintf(st->path, sizeof st->path, "%.*s", (int)valuelen, value);
  else if (namelen == 10 && memcmp(name, ":authority", 10) == 0)
    snprintf(st->authority, sizeof st->authority, "%.*s", (int)valuelen, value);
  else if (namelen == 2 && memcmp(name, "te", 2) == 0)
    st->te_trailers = valuelen == 8 && memcmp(value, "trailers", 8) == 0;
  return 0;
}

static int h2s_data(nghttp2_session *ss, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user) {
  h2stream_t *st = h2_find(user, id);
  if (!st) return 0;
  for (size_t i = 0; i < len; i++)
    if (st->body_len + i < sizeof st->body - 1) st->body[st->body_len + i] = (char)data[i];
  st->body_len += len;
  return 0;
}

static int h2s_frame_recv(nghttp2_session *ss, const nghttp2_frame *f, void *user) {
  h2conn_t *c = user;
  if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    h2stream_t *st = h2_find(c, f->hd.stream_id);
    if (st) h2s_respond(c, st);
  }
  return 0;
}

static int h2s_close(nghttp2_session *ss, int32_t id, uint32_t code, void *user) {
  h2conn_t *c = user;
  if (code == NGHTTP2_CANCEL) c->s->cancels++;
  h2stream_t **pp = &c->streams;
  while (*pp && (*pp)->id != id) pp = &(*pp)->next;
  if (*pp) {
    h2stream_t *st = *pp;
    *pp = st->next;
    free(st);
  }
  return 0;
}

static void h2s_tick(evutil_socket_t fd, short what, void *arg) {
  h2conn_t *c = arg;
  for (h2stream_t *st = c->streams; st; st = st->next)
    if (st->deferred) {
      st->deferred = false;
      nghttp2_session_resume_data(c->ss, st->id);
    }
  if (!h2c_flush(c)) return;
  struct timeval tv = {0, 5000};
  event_add(c->tick, &tv);
}

static void h2s_readcb(struct bufferevent *bev, void *arg) {
  h2conn_t *c = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  size_t len = evbuffer_get_length(in);
  const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)len);
  ssize_t rv = nghttp2_session_mem_recv(c->ss, p, len);
  if (rv < 0) {
    h2c_free(c);
    return;
  }
  evbuffer_drain(in, len);
  h2c_flush(c);
}

static void h2s_writecb(struct bufferevent *bev, void *arg) {
  h2conn_t *c = arg;
  if (c->die && evbuffer_get_length(bufferevent_get_output(bev)) == 0) h2c_free(c);
}

static void h2s_eventcb(struct bufferevent *bev, short what, void *arg) {
  if (what & BEV_EVENT_CONNECTED) return; /* TLS handshake done */
  h2c_free(arg);
}

static void h2s_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg) {
  h2srv_t *s = arg;
  h2conn_t *c = calloc(1, sizeof *c);
  c->s = s;
  if (s->tls)
    c->bev = bufferevent_openssl_socket_new(base, fd, SSL_new(s->tls), BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
  else
    c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
  c->tick = event_new(base, -1, 0, h2s_tick, c);
  c->next = s->live;
  s->live = c;
  s->conns++;
  nghttp2_session_callbacks *cbs;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, h2s_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, h2s_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2s_data);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2s_frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2s_close);
  nghttp2_session_server_new(&c->ss, cbs, c);
  nghttp2_session_callbacks_del(cbs);
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100}};
  nghttp2_submit_settings(c->ss, NGHTTP2_FLAG_NONE, iv, 1);
  bufferevent_setcb(c->bev, h2s_readcb, h2s_writecb, h2s_eventcb, c);
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
  struct timeval tv = {0, 5000};
  event_add(c->tick, &tv);
  h2c_flush(c);
}


/* ================================================================ TLS */

static EVP_PKEY *tls_key;
static X509 *tls_cert;
static char tls_dir[64], tls_ca_path[128];

/* A self-signed certificate for 127.0.0.1, written out as the CA bundle the
 * TLS upstreams trust. */
static void tls_make_cert(void) {
  tls_key = EVP_EC_gen("P-256");
  tls_cert = X509_new();
  X509_set_version(tls_cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(tls_cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(tls_cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(tls_cert), 86400);
  X509_set_pubkey(tls_cert, tls_key);
  X509_NAME *nm = X509_get_subject_name(tls_cert);
  X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)"obleth test", -1, -1, 0);
  X509_set_issuer_name(tls_cert, nm);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, tls_cert, tls_cert, NULL, NULL, 0);
  const char *exts[][2] = {{"subjectAltName", "IP:127.0.0.1,DNS:localhost"}, {"basicConstraints", "critical,CA:TRUE"}};
  for (size_t i = 0; i < 2; i++) {
    X509_EXTENSION *e = X509V3_EXT_conf(NULL, &v3, exts[i][0], exts[i][1]);
    X509_add_ext(tls_cert, e, -1);
    X509_EXTENSION_free(e);
  }
  X509_sign(tls_cert, tls_key, EVP_sha256());
  snprintf(tls_dir, sizeof tls_dir, "/tmp/obleth-test-XXXXXX");
  if (!mkdtemp(tls_dir)) abort();
  snprintf(tls_ca_path, sizeof tls_ca_path, "%s/ca.pem", tls_dir);
  FILE *f = fopen(tls_ca_path, "w");
  PEM_write_X509(f, tls_cert);
  fclose(f);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg) {
  const char *want = arg; /* "h2" or "http/1.1" */
  size_t wl = strlen(want);
  for (unsigned i = 0; i < inlen; i += 1u + in[i])
    if (in[i] == wl && i + 1 + wl <= inlen && memcmp(in + i + 1, want, wl) == 0) {
      *out = in + i + 1;
      *outlen = in[i];
      return SSL_TLSEXT_ERR_OK;
    }
  return SSL_TLSEXT_ERR_NOACK;
}

static SSL_CTX *tls_server_ctx(const char *alpn) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  SSL_CTX_use_certificate(ctx, tls_cert);
  SSL_CTX_use_PrivateKey(ctx, tls_key);
  SSL_CTX_set_alpn_select_cb(ctx, alpn_select, (void *)alpn);
  return ctx;
}

/* ================================================================ client side records */

typedef struct rec {
  ob_ureq_t *u;
  int heads, datas, ends, errors;
  int status;
  ob_err_t err;
  int hint;
  bool head_seen;
  ob_buf_t hdrs;     /* "name: value\n" */
  ob_buf_t trailers;
  ob_buf_t body;
  char endpoint[64];
  bool pause_on_first;
  bool cancel_on_head;
  void (*on_end_hook)(struct rec *r);
  struct rec *next_req; /* on_end_hook: a second request to start */
} rec_t;

static ob_net_t net;

static void rec_init(rec_t *r) { memset(r, 0, sizeof *r); }
static void rec_dispose(rec_t *r) {
  ob_buf_dispose(&r->hdrs);
  ob_buf_dispose(&r->trailers);
  ob_buf_dispose(&r->body);
}
static bool rec_done(void *arg) {
  rec_t *r = arg;
  return r->ends + r->errors > 0;
}

static void flatten(ob_buf_t *b, const ob_http_header_t *h, size_t n) {
  for (size_t i = 0; i < n; i++) {
    ob_buf_append_iov(b, h[i].name);
    ob_buf_append_str(b, ": ");
    ob_buf_append_iov(b, h[i].value);
    ob_buf_append_str(b, "\n");
  }
}

static void c_head(ob_ureq_t *u, void *data, int status, const ob_http_header_t *h, size_t n) {
  rec_t *r = data;
  r->heads++;
  r->status = status;
  flatten(&r->hdrs, h, n);
  if (r->cancel_on_head) ob_ureq_cancel(u);
}

static void c_data(ob_ureq_t *u, void *data, struct evbuffer *buf) {
  rec_t *r = data;
  r->datas++;
  size_t n = evbuffer_get_length(buf);
  char *p = ob_buf_reserve(&r->body, n);
  evbuffer_remove(buf, p, n);
  r->body.len += n;
  if (r->pause_on_first && r->datas == 1) ob_ureq_pause(u, true);
}

static void c_end(ob_ureq_t *u, void *data, const ob_http_header_t *t, size_t n) {
  rec_t *r = data;
  r->ends++;
  flatten(&r->trailers, t, n);
  snprintf(r->endpoint, sizeof r->endpoint, "%s", ob_ureq_endpoint(u));
  if (r->on_end_hook) r->on_end_hook(r);
}

static void c_error(ob_ureq_t *u, void *data, ob_err_t err, int hint, bool head_seen) {
  rec_t *r = data;
  r->errors++;
  r->err = err;
  r->hint = hint;
  r->head_seen = head_seen;
}

static const ob_ureq_handler_t handler = {c_head, c_data, c_end, c_error};

static ob_ureq_t *start(const char *upstream, const char *method, const char *path, rec_t *r) {
  ob_ureq_spec_t spec = {.method = ob_iov_str(method), .path = ob_iov_str(path)};
  r->u = ob_upstream_request(ob_net_upstream(&net, upstream), &spec, &handler, r);
  return r->u;
}

/* ================================================================ loop helpers */

static void tick_cb(evutil_socket_t fd, short what, void *arg) {}

/* Run the loop until cond(arg), or without cond for ms; returns cond(arg).
 * For a cond, ms is only a backstop and never less than 30 s: every wait is
 * for an event, and a loaded machine (an ASan build, busy cores) may take
 * many times the usual latency to show it. */
static bool run_until(bool (*cond)(void *), void *arg, int ms) {
  struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
  struct timeval tv = {0, 5000};
  event_add(tick, &tv);
  if (cond && ms < 30000) ms = 30000;
  uint64_t deadline = ob_clock_ms() + (uint64_t)ms;
  while (!(cond && cond(arg)) && ob_clock_ms() < deadline) event_base_loop(base, EVLOOP_ONCE);
  event_free(tick);
  return cond ? cond(arg) : true;
}

static void run_for(int ms) { run_until(NULL, NULL, ms); }

/* A counter to wait for: run_until(count_reached, &(count_t){&x, n}, 0). */
typedef struct {
  const int *n;
  int want;
} count_t;
static bool count_reached(void *arg) { return *((count_t *)arg)->n >= ((count_t *)arg)->want; }
static bool count_down_to(void *arg) { return *((count_t *)arg)->n <= ((count_t *)arg)->want; }

static bool has(const ob_buf_t *b, const char *s) {
  if (!b->len) return false;
  char *tmp = ob_xstrndup(b->base, b->len);
  bool ok = strstr(tmp, s) != NULL;
  free(tmp);
  return ok;
}

static bool body_is(const ob_buf_t *b, const char *s) { return b->len == strlen(s) && memcmp(b->base, s, b->len) == 0; }

static bool pattern_ok(const ob_buf_t *b, size_t n) {
  if (b->len != n) return false;
  for (size_t i = 0; i < n; i++)
    if (b->base[i] != (char)('a' + i % 26)) return false;
  return true;
}

/* ================================================================ h1 tests */

static srv_t h1;
static h2srv_t h2;

static void test_content_length(void) {
  rec_t r;
  rec_init(&r);
  ob_ureq_t *u = start("h1", "GET", "/len", &r);
  TAP_CHECK(u != NULL, "h1: request started");
  TAP_EQ_INT(r.heads + r.ends + r.errors, 0, "h1: no callback from inside ob_upstream_request");
  TAP_CHECK(run_until(rec_done, &r, 3000), "h1 CL: finished");
  TAP_EQ_INT(r.status, 200, "h1 CL: status");
  TAP_CHECK(body_is(&r.body, "hello world"), "h1 CL: body intact");
  TAP_CHECK(has(&r.hdrs, "X-Test: a"), "h1 CL: end-to-end header kept");
  TAP_CHECK(!has(&r.hdrs, "Keep-Alive") && !has(&r.hdrs, "Connection") && !has(&r.hdrs, "X-Hop"),
            "h1 CL: hop-by-hop headers (and those named by Connection) removed");
  TAP_EQ_INT(r.ends + r.errors, 1, "h1 CL: exactly one terminal callback");
  TAP_CHECK(strstr(h1.last_head, "\r\nHost: 127.0.0.1:") != NULL, "h1 CL: Host sent");
  TAP_CHECK(!strstr(h1.last_head, "Content-Length"), "h1 CL: no Content-Length on a GET without body");
  rec_dispose(&r);
}

static rec_t ka_second;
static void ka_hook(rec_t *r) { start("h1", "GET", "/len", &ka_second); }

static void test_keepalive_reuse(void) {
  int conns0 = h1.conns;
  rec_t r;
  rec_init(&r);
  rec_init(&ka_second);
  r.on_end_hook = ka_hook;
  start("h1", "GET", "/len", &r);
  TAP_CHECK(run_until(rec_done, &ka_second, 3000), "keep-alive: second request finished");
  TAP_EQ_INT(r.ends, 1, "keep-alive: first ok");
  TAP_EQ_INT(ka_second.ends, 1, "keep-alive: second ok");
  TAP_CHECK(body_is(&ka_second.body, "hello world"), "keep-alive: second body");
  /* test_content_length left one idle connection; both requests reuse it. */
  TAP_EQ_INT(h1.conns - conns0, 0, "keep-alive: server saw no new connection for 2 sequential requests");
  rec_dispose(&r);
  rec_dispose(&ka_second);
}

static void test_chunked(void) {
  rec_t r;
  rec_init(&r);
  start("h1", "GET", "/chunked", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "chunked: finished");
  TAP_EQ_INT(r.ends, 1, "chunked: on_end");
  TAP_CHECK(body_is(&r.body, "hello chunked world"), "chunked: data intact across split writes");
  TAP_CHECK(r.datas >= 2, "chunked: delivered in several on_data calls");
  TAP_CHECK(has(&r.hdrs, "X-Kind: chunked") && !has(&r.hdrs, "Transfer-Encoding"),
            "chunked: Transfer-Encoding stripped");
  rec_dispose(&r);
}

static void test_until_close(void) {
  rec_t r;
  rec_init(&r);
  start("h1", "GET", "/untilclose", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "until-close: finished");
  TAP_EQ_INT(r.ends, 1, "until-close: on_end at close");
  TAP_CHECK(body_is(&r.body, "body until close"), "until-close: body");
  rec_dispose(&r);
}

static void test_continue(void) {
  rec_t r;
  rec_init(&r);
  start("h1", "POST", "/continue", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "100-continue: finished");
  TAP_EQ_INT(r.heads, 1, "100-continue: one head");
  TAP_EQ_INT(r.status, 200, "100-continue: final status");
  TAP_CHECK(body_is(&r.body, "ok"), "100-continue: body");
  TAP_CHECK(strstr(h1.last_head, "Content-Length: 0\r\n") != NULL, "POST without body sends Content-Length: 0");
  rec_dispose(&r);
}

static void test_echo_body(void) {
  ob_rcbuf_t *owner = ob_rcbuf_create();
  ob_buf_append_str(&owner->buf, "hello referenced world");
  char copied[] = " + copied";
  ob_iov_t pieces[] = {ob_iov(owner->buf.base, 5), ob_iov(copied, strlen(copied)),
                       ob_iov(owner->buf.base + 5, owner->buf.len - 5)};
  ob_http_header_t hdr[] = {{OB_IOV_LIT("X-Req"), OB_IOV_LIT("yes")}, {OB_IOV_LIT("Connection"), OB_IOV_LIT("close")}};
  ob_ureq_spec_t spec = {.method = OB_IOV_LIT("POST"), .path = OB_IOV_LIT("/echo?x=1"),
                         .authority = OB_IOV_LIT("api.example"), .headers = hdr, .num_headers = 2,
                         .body = pieces, .num_body = 3, .body_owner = owner};
  rec_t r;
  rec_init(&r);
  r.u = ob_upstream_request(ob_net_upstream(&net, "h1base"), &spec, &handler, &r);
  copied[0] = '#'; /* the spec is borrowed for the call only */
  TAP_CHECK(run_until(rec_done, &r, 3000), "echo: finished");
  TAP_EQ_INT(r.status, 201, "echo: status");
  TAP_CHECK(body_is(&r.body, "hello + copied referenced world"), "echo: body pieces sent in order");
  TAP_CHECK(strstr(h1.last_head, "POST /base/echo?x=1 HTTP/1.1\r\n") == h1.last_head, "echo: base path prepended");
  TAP_CHECK(strstr(h1.last_head, "Host: api.example\r\n") != NULL, "echo: authority sent as Host");
  TAP_CHECK(strstr(h1.last_head, "Content-Length: 31\r\n") != NULL, "echo: Content-Length");
  TAP_CHECK(strstr(h1.last_head, "x-req: yes\r\n") != NULL, "echo: end-to-end header forwarded");
  TAP_CHECK(strstr(h1.last_head, "onnection") == NULL, "echo: hop-by-hop header not forwarded");
  run_until(count_down_to, &(count_t){&owner->refs, 1}, 0);
  TAP_EQ_INT(owner->refs, 1, "echo: every reference on the body owner released");
  ob_rcbuf_release(owner);
  rec_dispose(&r);
}

static void test_refused_retry(void) {
  rec_t r;
  rec_init(&r);
  start("two", "GET", "/len", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "refused+retry: finished");
  TAP_EQ_INT(r.ends, 1, "refused+retry: succeeded on the other endpoint");
  char want[64];
  snprintf(want, sizeof want, "127.0.0.1:%d", h1.port);
  TAP_EQ_STR(r.endpoint, want, "refused+retry: endpoint is the live one");
  rec_t r2;
  rec_init(&r2);
  start("two", "GET", "/len", &r2);
  TAP_EQ_STR(ob_ureq_endpoint(r2.u), want, "refused+retry: refused endpoint is backed off");
  TAP_CHECK(run_until(rec_done, &r2, 3000), "refused+retry: second finished");
  TAP_EQ_INT(r2.ends, 1, "refused+retry: second ok");
  rec_dispose(&r);
  rec_dispose(&r2);

  rec_t r3;
  rec_init(&r3);
  start("refused", "GET", "/len", &r3);
  TAP_CHECK(strcmp(ob_ureq_endpoint(r3.u), "-") != 0, "refused: endpoint chosen at once");
  TAP_CHECK(run_until(rec_done, &r3, 3000), "refused: finished");
  TAP_EQ_INT(r3.errors, 1, "refused (single endpoint): on_error");
  TAP_EQ_INT(r3.err, OB_ERR_CONN, "refused: OB_ERR_CONN");
  TAP_EQ_INT(r3.hint, 502, "refused: 502");
  TAP_CHECK(!r3.head_seen, "refused: head not seen");
  rec_dispose(&r3);
}

static void test_failures(void) {
  rec_t r;
  rec_init(&r);
  start("h1", "GET", "/midclose", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "mid-body close: finished");
  TAP_EQ_INT(r.errors, 1, "mid-body close: on_error");
  TAP_CHECK(r.head_seen, "mid-body close: head_seen");
  TAP_EQ_INT(r.ends, 0, "mid-body close: no on_end");
  rec_dispose(&r);

  rec_init(&r);
  start("h1", "GET", "/bad", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "malformed: finished");
  TAP_EQ_INT(r.err, OB_ERR_BAD_RESPONSE, "malformed: OB_ERR_BAD_RESPONSE");
  TAP_EQ_INT(r.hint, 502, "malformed: 502");
  TAP_EQ_INT(r.heads, 0, "malformed: no head");
  rec_dispose(&r);

  rec_init(&r);
  start("h1", "GET", "/closebefore", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "close before response: finished");
  TAP_EQ_INT(r.errors, 1, "close before response: on_error");
  TAP_EQ_INT(r.hint, 502, "close before response: 502");
  TAP_CHECK(!r.head_seen, "close before response: no head");
  rec_dispose(&r);

  uint64_t t0 = ob_clock_us() / 1000;
  rec_init(&r);
  start("h1", "GET", "/never", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "first-byte timeout: finished");
  TAP_EQ_INT(r.err, OB_ERR_CONN, "first-byte timeout: OB_ERR_CONN");
  TAP_EQ_INT(r.hint, 504, "first-byte timeout: 504");
  TAP_CHECK(ob_clock_us() / 1000 - t0 >= 250, "first-byte timeout: not before first_byte_ms");
  rec_dispose(&r);
}

static rec_t stale_second;
static void stale_hook(rec_t *r) { start("h1stale", "GET", "/second-close", &stale_second); }

static void test_stale_keepalive(void) {
  int conns0 = h1.conns;
  rec_t r;
  rec_init(&r);
  rec_init(&stale_second);
  r.on_end_hook = stale_hook;
  /* A fresh pool connection: the idle ones were used by earlier tests. */
  start("h1stale", "GET", "/second-close", &r);
  TAP_CHECK(run_until(rec_done, &stale_second, 3000), "stale keep-alive: finished");
  TAP_EQ_INT(r.ends, 1, "stale keep-alive: first ok");
  TAP_EQ_INT(stale_second.ends, 1, "stale keep-alive: second retried on a fresh connection and ok");
  TAP_EQ_INT(h1.conns - conns0, 2, "stale keep-alive: two connections");
  rec_dispose(&r);
  rec_dispose(&stale_second);
}

static bool rec_has_data(void *arg) { return ((rec_t *)arg)->datas > 0 || rec_done(arg); }

static void test_pause(void) {
  rec_t r;
  rec_init(&r);
  r.pause_on_first = true;
  start("h1", "GET", "/big", &r);
  TAP_CHECK(run_until(rec_has_data, &r, 3000), "pause: first data");
  size_t got = r.body.len;
  run_for(150);
  TAP_EQ_INT(r.datas, 1, "pause: no on_data while paused");
  TAP_EQ_INT(r.body.len, got, "pause: no bytes while paused");
  TAP_EQ_INT(r.ends + r.errors, 0, "pause: no end while paused (and no idle timeout)");
  ob_ureq_pause(r.u, false);
  TAP_EQ_INT(r.datas, 1, "resume: nothing delivered from inside ob_ureq_pause");
  TAP_CHECK(run_until(rec_done, &r, 3000), "resume: finished");
  TAP_EQ_INT(r.ends, 1, "resume: on_end");
  TAP_CHECK(pattern_ok(&r.body, 1 << 20), "resume: 1 MiB body intact");
  rec_dispose(&r);
}

static void test_cancel(void) {
  rec_t a, b, c, d;
  rec_init(&a);
  rec_init(&b);
  rec_init(&c);
  rec_init(&d);
  /* Cancelled while its connection is still connecting (a pool with no idle
   * connection); the next request takes that connection instead of opening
   * another. */
  int conns0 = h1.conns;
  start("h1q", "GET", "/len", &a);
  ob_ureq_cancel(a.u);
  start("h1q", "GET", "/len", &d);
  TAP_CHECK(run_until(rec_done, &d, 3000), "cancel (queued): the next request finished");
  TAP_EQ_INT(d.status, 200, "cancel (queued): the next request answered");
  TAP_EQ_INT(h1.conns - conns0, 1, "cancel (queued): the next request took the cancelled one's connection");
  /* Cancelled while waiting for the response (the server has it). */
  int requests0 = h1.requests;
  start("h1", "GET", "/never", &b);
  run_until(count_reached, &(count_t){&h1.requests, requests0 + 1}, 0);
  ob_ureq_cancel(b.u);
  /* Cancelled from inside on_head, with body still to come. */
  c.cancel_on_head = true;
  start("h1", "GET", "/big", &c);
  run_until(count_reached, &(count_t){&c.heads, 1}, 0);
  /* A later request answered on the same loop: whatever the cancelled ones
   * would still have delivered has had its turn by then. */
  rec_t e;
  rec_init(&e);
  start("h1", "GET", "/len", &e);
  TAP_CHECK(run_until(rec_done, &e, 0), "cancel: a later request finished");
  rec_dispose(&e);
  TAP_EQ_INT(a.heads + a.datas + a.ends + a.errors, 0, "cancel (queued): no callbacks");
  TAP_EQ_INT(b.heads + b.datas + b.ends + b.errors, 0, "cancel (in flight): no callbacks");
  TAP_EQ_INT(c.heads, 1, "cancel (from on_head): head seen");
  TAP_EQ_INT(c.datas + c.ends + c.errors, 0, "cancel (from on_head): no callbacks after it");
  rec_dispose(&a);
  rec_dispose(&b);
  rec_dispose(&c);
  rec_dispose(&d);
}

/* ================================================================ h2 tests */

static void test_h2_stream(void) {
  ob_rcbuf_t *owner = ob_rcbuf_create();
  ob_buf_append_str(&owner->buf, "grpc-ish body");
  ob_iov_t pieces[] = {ob_iov(owner->buf.base, 4), OB_IOV_LIT("+"), ob_iov(owner->buf.base + 4, owner->buf.len - 4)};
  ob_http_header_t hdr[] = {{OB_IOV_LIT("Content-Type"), OB_IOV_LIT("application/grpc")}};
  ob_ureq_spec_t spec = {.method = OB_IOV_LIT("POST"), .path = OB_IOV_LIT("/stream"),
                         .headers = hdr, .num_headers = 1,
                         .body = pieces, .num_body = 3, .body_owner = owner, .expect_trailers = true};
  rec_t r;
  rec_init(&r);
  r.u = ob_upstream_request(ob_net_upstream(&net, "h2"), &spec, &handler, &r);
  ob_rcbuf_release(owner); /* the ureq holds its own reference */
  TAP_EQ_INT(r.heads + r.ends + r.errors, 0, "h2: no callback from inside ob_upstream_request");
  TAP_CHECK(run_until(rec_done, &r, 3000), "h2 stream: finished");
  TAP_EQ_INT(r.ends, 1, "h2 stream: on_end");
  TAP_EQ_INT(r.status, 200, "h2 stream: status");
  TAP_CHECK(has(&r.hdrs, "content-type: text/plain"), "h2 stream: response header");
  TAP_CHECK(pattern_ok(&r.body, 5000), "h2 stream: streamed body intact");
  TAP_CHECK(r.datas >= 2, "h2 stream: several on_data calls");
  TAP_CHECK(has(&r.trailers, "x-trailer: done"), "h2 stream: trailers passed to on_end");
  TAP_EQ_INT(h2.last_body_len, 14, "h2 stream: request body length");
  TAP_CHECK(memcmp(h2.last_body, "grpc+-ish body", 14) == 0, "h2 stream: request body pieces in order");
  TAP_CHECK(h2.last_te, "h2 stream: te: trailers sent");
  char want[64];
  snprintf(want, sizeof want, "127.0.0.1:%d", h2.port);
  TAP_EQ_STR(h2.last_authority, want, "h2 stream: :authority defaults to the endpoint");
  rec_dispose(&r);
}

static void test_h2_multiplex(void) {
  int conns0 = h2.conns;
  rec_t r[4];
  for (int i = 0; i < 4; i++) {
    rec_init(&r[i]);
    start("h2", "GET", "/small", &r[i]);
  }
  for (int i = 0; i < 4; i++) run_until(rec_done, &r[i], 3000);
  int ok = 0;
  for (int i = 0; i < 4; i++) ok += r[i].ends == 1 && body_is(&r[i].body, "ab");
  TAP_EQ_INT(ok, 4, "h2: 4 concurrent requests ok");
  TAP_EQ_INT(h2.conns - conns0, 0, "h2: multiplexed on the existing connection");
  for (int i = 0; i < 4; i++) rec_dispose(&r[i]);
}

static void test_h2_pause(void) {
  rec_t r;
  rec_init(&r);
  r.pause_on_first = true;
  h2.big_sent = 0;
  start("h2", "GET", "/big", &r);
  TAP_CHECK(run_until(rec_has_data, &r, 3000), "h2 pause: first data");
  run_for(150);
  TAP_EQ_INT(r.datas, 1, "h2 pause: no on_data while paused");
  TAP_CHECK(h2.big_sent <= 65536, "h2 pause: server stopped at the stream window");
  TAP_CHECK(h2.big_sent < 200 * 1024, "h2 pause: server did not send everything");
  ob_ureq_pause(r.u, false);
  TAP_CHECK(run_until(rec_done, &r, 3000), "h2 resume: finished");
  TAP_EQ_INT(r.ends, 1, "h2 resume: on_end");
  TAP_CHECK(pattern_ok(&r.body, 200 * 1024), "h2 resume: body intact");
  rec_dispose(&r);
}

static void test_h2_errors(void) {
  rec_t r;
  rec_init(&r);
  start("h2", "GET", "/rst", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "h2 RST: finished");
  TAP_EQ_INT(r.errors, 1, "h2 RST: on_error");
  TAP_EQ_INT(r.hint, 502, "h2 RST: 502");
  rec_dispose(&r);

  rec_init(&r);
  int req0 = h2.requests;
  start("h2", "GET", "/refuse", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "h2 REFUSED_STREAM: finished");
  TAP_EQ_INT(r.ends, 1, "h2 REFUSED_STREAM: retried transparently");
  TAP_EQ_INT(h2.requests - req0, 2, "h2 REFUSED_STREAM: server saw the retry");
  rec_dispose(&r);

  rec_init(&r);
  int cancels0 = h2.cancels;
  start("h2", "GET", "/stream", &r);
  run_until(rec_has_data, &r, 3000);
  ob_ureq_cancel(r.u);
  run_until(count_reached, &(count_t){&h2.cancels, cancels0 + 1}, 0);
  TAP_EQ_INT(r.ends + r.errors, 0, "h2 cancel: no callbacks");
  TAP_EQ_INT(h2.cancels - cancels0, 1, "h2 cancel: server saw RST_STREAM(CANCEL)");
  rec_dispose(&r);

  /* Found by fuzz_upstream_response (corpus regress_h2_status_below_100):
   * the body reached on_data without on_head. */
  rec_init(&r);
  start("h2", "GET", "/lowstatus", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "h2 status 050: finished");
  TAP_EQ_INT(r.heads + r.datas, 0, "h2 status 050: neither on_head nor on_data");
  TAP_EQ_INT(r.errors, 1, "h2 status 050: on_error");
  TAP_EQ_INT(r.err, OB_ERR_BAD_RESPONSE, "h2 status 050: a bad response");
  rec_dispose(&r);

  rec_init(&r);
  start("h2", "GET", "/never", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "h2 first-byte timeout: finished");
  TAP_EQ_INT(r.hint, 504, "h2 first-byte timeout: 504");
  rec_dispose(&r);
}


/* ================================================================ TLS tests */

static srv_t h1tls;
static h2srv_t h2tls;

static void test_tls(void) {
  rec_t r;
  rec_init(&r);
  start("tls1", "GET", "/len", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "https http1: finished");
  TAP_EQ_INT(r.ends, 1, "https http1: ok (certificate and IP verified against tls_ca)");
  TAP_CHECK(body_is(&r.body, "hello world"), "https http1: body");
  rec_dispose(&r);

  rec_init(&r);
  start("tls1", "POST", "/echo", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "https http1: second request finished");
  TAP_EQ_INT(h1tls.conns, 1, "https http1: keep-alive reuse");
  rec_dispose(&r);

  rec_init(&r);
  start("tls2", "GET", "/small", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "h2 over TLS: finished");
  TAP_EQ_INT(r.ends, 1, "h2 over TLS: ok");
  TAP_CHECK(body_is(&r.body, "ab"), "h2 over TLS: body");
  rec_dispose(&r);

  rec_init(&r);
  start("tlsnoalpn", "GET", "/small", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "h2 without ALPN h2: finished");
  TAP_EQ_INT(r.errors, 1, "h2 without ALPN h2: connection refused as a failure");
  TAP_EQ_INT(r.hint, 502, "h2 without ALPN h2: 502");
  rec_dispose(&r);

  rec_init(&r);
  start("tlsverify", "GET", "/len", &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "untrusted certificate: finished");
  TAP_EQ_INT(r.errors, 1, "untrusted certificate: verification fails the connect");
  rec_dispose(&r);
}

/* ================================================================ connect timeout */

/* A listener whose accept queue is full: the kernel drops further SYNs, so a
 * connect to it neither succeeds nor fails. Its own net, for a short
 * connect_ms. */
static void test_connect_timeout(void) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bind(lfd, (struct sockaddr *)&sin, sizeof sin);
  listen(lfd, 0);
  socklen_t len = sizeof sin;
  getsockname(lfd, (struct sockaddr *)&sin, &len);
  int fillers[4];
  for (int i = 0; i < 4; i++) {
    fillers[i] = socket(AF_INET, SOCK_STREAM, 0);
    evutil_make_socket_nonblocking(fillers[i]);
    connect(fillers[i], (struct sockaddr *)&sin, sizeof sin);
  }
  run_for(50);

  char json[512];
  snprintf(json, sizeof json,
           "{\"listeners\":[{\"address\":\"127.0.0.1:0\"}],"
           "\"upstreams\":[{\"name\":\"hole\",\"endpoints\":[\"http://127.0.0.1:%d\"]}],"
           "\"timeouts\":{\"connect_ms\":200}}",
           ntohs(sin.sin_port));
  ob_config_errors_t errs = {0};
  ob_config_t *cfg = ob_config_parse(json, strlen(json), NULL, &errs);
  ob_config_errors_dispose(&errs);
  ob_net_t n2 = {.base = base, .cfg = ob_net_config_copy(&cfg->net), .num_upstreams = 1};
  ob_upstream_t *up = ob_net_upstream_create(&n2, &n2.cfg->upstreams[0]);
  n2.upstreams = &up;

  rec_t r;
  rec_init(&r);
  ob_ureq_spec_t spec = {.method = OB_IOV_LIT("GET"), .path = OB_IOV_LIT("/")};
  uint64_t t0 = ob_clock_us() / 1000;
  r.u = ob_upstream_request(ob_net_upstream(&n2, "hole"), &spec, &handler, &r);
  TAP_CHECK(run_until(rec_done, &r, 3000), "connect timeout: finished");
  uint64_t took = ob_clock_us() / 1000 - t0;
  TAP_EQ_INT(r.errors, 1, "connect timeout: on_error");
  TAP_EQ_INT(r.hint, 504, "connect timeout: 504");
  /* Loose above: without connect_ms the connect would hang for minutes. */
  TAP_CHECK(took >= 150 && took < 10000, "connect timeout: after connect_ms");
  rec_dispose(&r);

  ob_net_upstream_destroy(up);
  ob_net_config_release(n2.cfg);
  ob_config_release(cfg);
  for (int i = 0; i < 4; i++) close(fillers[i]);
  close(lfd);
}

/* ================================================================ destroy */

static void test_destroy(void) {
  rec_t a, b;
  rec_init(&a);
  rec_init(&b);
  int h1req0 = h1.requests, h2req0 = h2.requests;
  start("h1", "GET", "/never", &a);
  start("h2", "GET", "/never", &b);
  /* Both in flight: the servers have them. */
  run_until(count_reached, &(count_t){&h1.requests, h1req0 + 1}, 0);
  run_until(count_reached, &(count_t){&h2.requests, h2req0 + 1}, 0);
  for (size_t i = 0; i < net.num_upstreams; i++) ob_net_upstream_destroy(net.upstreams[i]);
  net.num_upstreams = 0;
  TAP_EQ_INT(a.errors, 1, "destroy: h1 request gets on_error");
  TAP_EQ_INT(a.hint, 502, "destroy: 502");
  TAP_EQ_INT(b.errors, 1, "destroy: h2 request gets on_error");
  rec_dispose(&a);
  rec_dispose(&b);
}

int main(void) {
  /* As in the server: a write to a connection the peer closed is an error
   * return, not a signal. */
  signal(SIGPIPE, SIG_IGN);
  ob_log_set_level(getenv("OB_TEST_VERBOSE") ? OB_LOG_DEBUG : OB_LOG_ERROR);
  base = event_base_new();
  srv_start(&h1, NULL);
  memset(&h2, 0, sizeof h2);
  h2.lis = listen_any(h2s_accept, &h2);
  h2.port = listen_port(h2.lis);
  int dead = closed_port();
  tls_make_cert();
  srv_start(&h1tls, tls_server_ctx("http/1.1"));
  memset(&h2tls, 0, sizeof h2tls);
  h2tls.tls = tls_server_ctx("h2");
  h2tls.lis = listen_any(h2s_accept, &h2tls);
  h2tls.port = listen_port(h2tls.lis);

  char json[4096];
  snprintf(json, sizeof json,
           "{\"listeners\":[{\"address\":\"127.0.0.1:0\"}],"
           "\"upstreams\":["
           "{\"name\":\"h1\",\"endpoints\":[\"http://127.0.0.1:%d\"]},"
           "{\"name\":\"h1stale\",\"endpoints\":[\"http://127.0.0.1:%d\"]},"
           "{\"name\":\"h1q\",\"endpoints\":[\"http://127.0.0.1:%d\"]},"
           "{\"name\":\"h1base\",\"endpoints\":[\"http://127.0.0.1:%d/base/\"]},"
           "{\"name\":\"two\",\"endpoints\":[\"http://127.0.0.1:%d\",\"http://127.0.0.1:%d\"]},"
           "{\"name\":\"refused\",\"endpoints\":[\"http://127.0.0.1:%d\"]},"
           "{\"name\":\"h2\",\"endpoints\":[\"http://127.0.0.1:%d\"],\"protocol\":\"h2c\"},"
           "{\"name\":\"tls1\",\"endpoints\":[\"https://127.0.0.1:%d\"],\"protocol\":\"http1\",\"tls_ca\":\"%s\"},"
           "{\"name\":\"tls2\",\"endpoints\":[\"https://127.0.0.1:%d\"],\"tls_ca\":\"%s\"},"
           "{\"name\":\"tlsnoalpn\",\"endpoints\":[\"https://127.0.0.1:%d\"],\"protocol\":\"h2\",\"tls_ca\":\"%s\"},"
           "{\"name\":\"tlsverify\",\"endpoints\":[\"https://127.0.0.1:%d\"],\"protocol\":\"http1\"}],"
           "\"limits\":{\"stream_window_bytes\":65536},"
           "\"timeouts\":{\"connect_ms\":2000,\"first_byte_ms\":300,\"idle_ms\":1000,"
           "\"backoff_ms\":60000,\"upstream_keepalive_ms\":10000}}",
           h1.port, h1.port, h1.port, h1.port, dead, h1.port, dead, h2.port, h1tls.port, tls_ca_path,
           h2tls.port, tls_ca_path, h1tls.port, tls_ca_path, h1tls.port);
  ob_config_errors_t errs = {0};
  ob_config_t *cfg = ob_config_parse(json, strlen(json), NULL, &errs);
  TAP_CHECK(cfg != NULL, "config parses");
  for (size_t i = 0; i < errs.len; i++) printf("# %s\n", errs.items[i]);
  ob_config_errors_dispose(&errs);
  if (!cfg) return tap_done();

  net.base = base;
  net.dns = evdns_base_new(base, 0);
  net.cfg = ob_net_config_copy(&cfg->net);
  net.num_upstreams = cfg->num_upstreams;
  net.upstreams = calloc(cfg->num_upstreams, sizeof *net.upstreams);
  for (size_t i = 0; i < cfg->num_upstreams; i++) net.upstreams[i] = ob_net_upstream_create(&net, &net.cfg->upstreams[i]);
  TAP_CHECK(ob_net_upstream(&net, "h2") != NULL, "lookup by name");
  TAP_CHECK(ob_net_upstream(&net, "nope") == NULL, "lookup of an unknown name");

  test_content_length();
  test_keepalive_reuse();
  test_chunked();
  test_until_close();
  test_continue();
  test_echo_body();
  test_refused_retry();
  test_failures();
  test_stale_keepalive();
  test_pause();
  test_cancel();
  test_h2_stream();
  test_h2_multiplex();
  test_h2_pause();
  test_h2_errors();
  test_tls();
  test_connect_timeout();
  test_destroy();

  free(net.upstreams);
  srv_stop(&h1);
  while (h2.live) h2c_free(h2.live);
  evconnlistener_free(h2.lis);
  srv_stop(&h1tls);
  while (h2tls.live) h2c_free(h2tls.live);
  evconnlistener_free(h2tls.lis);
  SSL_CTX_free(h1tls.tls);
  SSL_CTX_free(h2tls.tls);
  X509_free(tls_cert);
  EVP_PKEY_free(tls_key);
  unlink(tls_ca_path);
  rmdir(tls_dir);
  run_for(10);
  evdns_base_free(net.dns, 0);
  ob_net_config_release(net.cfg);
  ob_config_release(cfg);
  event_base_free(base);
  return tap_done();
}
