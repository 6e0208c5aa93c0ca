/*
 * net_int.h: what the files of src/net share. Not for use outside src/net.
 *
 * server.c owns struct ob_net, listeners and TLS for the client side;
 * client_h1.c / client_h2.c own client connections; upstream*.c own pools.
 */
#ifndef OB_NET_INT_H
#define OB_NET_INT_H

#include "net.h"

#include "sock.h"

#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/listener.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

typedef struct ob_client_conn ob_client_conn_t;

#define OB_NET_TIMEOUTS 32

/* HPACK flags for a field we send (either side): a value new in every
 * message (the request id) is not indexed, since adding it to the dynamic
 * table would only evict entries that do repeat. */
static inline uint8_t ob_net_h2_nv_flags(ob_iov_t name) {
  return ob_iov_eq_str_nocase(name, "x-request-id") ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE;
}

struct ob_net {
  struct event_base *base;
  struct evdns_base *dns;         /* asynchronous name resolution for upstream hosts */
  ob_net_config_t *cfg;           /* counted: net's own copy (net_config.c), replaced by a reload */
  const ob_sreq_handler_t *handler;
  void *ctx;

  struct evconnlistener **listeners;
  char **listener_addrs;          /* bound addresses, for ob_net_listener_address */
  bool *listener_tls;
  size_t num_listeners;
  SSL_CTX **listener_ssl;         /* per listener, NULL for cleartext */

  struct evbuffer *staging;       /* ob_sreq_send_bytes's, empty between calls */
  ob_client_conn_t *conns;        /* doubly linked list of live client connections */
  size_t num_conns;
  ob_net_conn_stats_t conn_stats; /* by protocol, for metrics */

  ob_upstream_t **upstreams;
  size_t num_upstreams;
  ob_upstream_t *retired;         /* pools a reload replaced, freed once no request uses them */
  struct event *retire_timer;

  /* Configured durations as libevent common timeouts (see ob_net_timeout). */
  struct {
    uint32_t ms;
    const struct timeval *tv;
  } timeouts[OB_NET_TIMEOUTS];
  size_t num_timeouts;

  bool shutting_down;
  bool reuseport;              /* workers > 1: every listener is bound with SO_REUSEPORT */
  struct event *grace_timer;
  void (*shutdown_done)(void *arg);
  void *shutdown_arg;
};

/*
 * A timeval for a configured duration (a timeout from the config, not one
 * computed from a deadline) on n's base: a libevent "common timeout", so
 * every timer of that duration sits in one queue, O(1) to add and remove,
 * instead of in the timer heap (thousands of streams re-arm their timers
 * for every request). own: filled and returned when libevent has no room
 * for another duration. The pointer lives as long as the base.
 */
const struct timeval *ob_net_timeout(ob_net_t *n, uint32_t ms, struct timeval *own);
/* evtimer_add(ev) after ms, a configured duration. */
void ob_net_arm(ob_net_t *n, struct event *ev, uint32_t ms);

/* ---- upstream pools (upstream.c) ---- */

/* Create the pool for one configured upstream; cfg points into n->cfg,
 * which the pool acquires (it may outlive n->cfg across a reload). Returns NULL and logs on failure (bad TLS CA). */
ob_upstream_t *ob_net_upstream_create(ob_net_t *n, const ob_net_upstream_conf_t *cfg);
/* Close every connection of the pool (requests in flight get on_error) and
 * free it. NULL is a no-op. */
void ob_net_upstream_destroy(ob_upstream_t *u);
/* Pool reuse across a reload: same endpoints, protocol, TLS settings,
 * timeouts and limits (credentials and max_inflight are not the pool's). */
bool ob_net_upstream_same(const ob_upstream_t *u, const ob_net_upstream_conf_t *cfg, const ob_net_config_t *gcfg);
/* A reload replaced u: free it now when no request uses it, else when the
 * last one is done (checked by a timer). Its connections stay until then. */
void ob_net_upstream_retire(ob_net_t *n, ob_upstream_t *u);
/* Free every retired pool (ob_net_destroy). */
void ob_net_upstream_free_retired(ob_net_t *n);
/* The configured name of the pool; borrowed. */
const char *ob_net_upstream_name(const ob_upstream_t *u);

/* ---- client connections (server.c, client_h1.c, client_h2.c) ---- */

/* What ob_sreq_* dispatch to: one table per client protocol. */
typedef struct ob_sreq_ops {
  ob_err_t (*send_head)(ob_sreq_t *s, int status, const ob_http_header_t *h, size_t n, int64_t cl, bool end);
  void (*send_data)(ob_sreq_t *s, struct evbuffer *data, bool end);
  void (*send_trailers)(ob_sreq_t *s, const ob_http_header_t *h, size_t n);
  void (*reset)(ob_sreq_t *s);
  size_t (*pending)(const ob_sreq_t *s);
  /* n bytes of a streamed body were sent upstream: reopen the client's
   * window by that much. */
  void (*body_consumed)(ob_sreq_t *s, size_t n);
} ob_sreq_ops_t;

typedef enum { OB_CONN_DETECT, OB_CONN_H1, OB_CONN_H2 } ob_conn_proto_t;

/* One accepted client connection. server.c owns the list and protocol
 * detection; the protocol file owns proto_state. */
struct ob_client_conn {
  ob_client_conn_t *prev, *next;
  ob_net_t *net;
  ob_sock_t *sock;
  bool tls;
  bool xff_replace;         /* its listener's x_forwarded_for is "replace" */
  ob_conn_proto_t proto;
  bool draining;            /* graceful shutdown started */
  struct event *detect_timer; /* until the protocol is known: the deadline for the handshake and first bytes */
  char peer[64];
  void *proto_state;
  ob_conn_scratch_t scratch; /* the handler's (ob_sreq_conn_scratch); wiped at release */
};

/* Hand a connection whose protocol is known to its protocol file. Any bytes
 * already read stay in the connection's input (ob_sock). */
void ob_net_h1_start(ob_client_conn_t *c);
void ob_net_h2_start(ob_client_conn_t *c);
void ob_net_h1_drain(ob_client_conn_t *c);
void ob_net_h2_drain(ob_client_conn_t *c);
void ob_net_h1_free(ob_client_conn_t *c);
void ob_net_h2_free(ob_client_conn_t *c);

/* Remove c from the list, free its socket (ob_sock) and c itself; called by the
 * protocol files once their own state is gone. */
void ob_net_client_release(ob_client_conn_t *c);

/* Fill the common fields of a new sreq. */
void ob_net_sreq_init(ob_sreq_t *s, ob_client_conn_t *c, const ob_sreq_ops_t *ops, int http_version);
/* Free what ob_net_sreq_init and the request parsing allocated. */
void ob_net_sreq_dispose(ob_sreq_t *s);

/*
 * Streamed request bodies (server.c). The body flows from the client
 * protocol to the ureq reading it through these calls only; neither side
 * touches the other's fields, and the sreq's body_in_ / body_ended_ /
 * sink_ are server.c's alone. The client protocol writes: begin, push,
 * end. The ureq reads: attach, read, detach, and is told that more is
 * ready through ob_net_up_body_ready. Bytes read are given back to the
 * client's flow control through its protocol's body_consumed.
 */
/* s's body will be streamed: start buffering it. */
void ob_net_sreq_body_begin(ob_sreq_t *s);
/* len bytes of the body arrived (data borrowed for the call: copied). */
void ob_net_sreq_body_push(ob_sreq_t *s, const void *data, size_t len);
/* The client ended the body. */
void ob_net_sreq_body_end(ob_sreq_t *s);
/* u (borrowed until detach or the sreq's dispose, which unlinks it) reads
 * s's body. */
void ob_net_sreq_body_attach(ob_sreq_t *s, struct ob_ureq *u);
void ob_net_sreq_body_detach(ob_sreq_t *s);
/* Take up to len bytes into buf; returns how many. *eof is set when the
 * body ended and nothing of it is left. */
size_t ob_net_sreq_body_read(ob_sreq_t *s, void *buf, size_t len, bool *eof);

/* The sink side (upstream.c): more of the body of the sreq u reads is
 * ready; the sreq is going away, forget it. */
void ob_net_up_body_ready(struct ob_ureq *u);
void ob_net_up_body_unlink(struct ob_ureq *u);

/* Take over an accepted socket. tls: the listener's SSL_CTX or NULL. */
void ob_net_client_accept(ob_net_t *n, evutil_socket_t fd, const struct sockaddr *sa, int salen, SSL_CTX *tls,
                          bool xff_replace);
/* Start graceful shutdown of one connection (GOAWAY / Connection: close). */
void ob_net_client_drain(ob_client_conn_t *c);
/* Close now; streams in flight get on_close(completed = false). */
void ob_net_client_close(ob_client_conn_t *c);
/* Called by a connection when it is gone, so shutdown can finish. */
void ob_net_conn_gone(ob_net_t *n);

/* Whether cfg's TLS client context (its CA bundle) can be built; logs why
 * not. For --check-config; true for an upstream without https endpoints. */
bool ob_net_up_tls_check(const ob_net_upstream_conf_t *cfg);

/* ---- net's own settings (net_config.c) ---- */

/* A counted deep copy of src (borrowed for the call; strings and arrays
 * copied), refs == 1. */
ob_net_config_t *ob_net_config_copy(const ob_net_config_t *src);
/* Counted: each holder (the net, each pool) releases what it acquired;
 * the last release frees the copy. NULL is a no-op. Only for copies made
 * by ob_net_config_copy. */
ob_net_config_t *ob_net_config_acquire(ob_net_config_t *c);
void ob_net_config_release(ob_net_config_t *c);

#endif /* OB_NET_INT_H */
