/*
 * upstream_int.h: what upstream.c, upstream_h1.c and upstream_h2.c share.
 * Not for use anywhere else (not even the rest of src/net).
 *
 * upstream.c owns pools, endpoints, connection set-up (DNS, TCP, TLS),
 * timers and the life cycle of a ureq; upstream_h1.c speaks HTTP/1.1 on an
 * open connection, upstream_h2.c speaks HTTP/2 through nghttp2.
 *
 * Life of a ureq. ob_upstream_request picks an endpoint and either queues the
 * ureq on a connection that is still connecting (U_QUEUED) or starts it on an
 * open one (U_ACTIVE). When the wire side is finished it is detached from its
 * connection: a complete response that still has body bytes for a paused
 * handler waits in U_DONE; a failure waits in U_FAILED for its on_error on
 * the next loop turn (u->kick). Handler callbacks are made only from event
 * callbacks at the top of the stack, never from inside an API call and never
 * from inside an nghttp2 callback. A handler that cancels its ureq from
 * inside one of its callbacks only marks it (u->cancelled); the code that
 * made the callback finishes the cancel once the callback returns
 * (ob_net_up_call_* return false then, and the caller must return at once
 * without touching the ureq or, for h1, its connection).
 */
#ifndef OB_UPSTREAM_INT_H
#define OB_UPSTREAM_INT_H

#include "net_int.h"

#include <nghttp2/nghttp2.h>

typedef struct ob_uconn ob_uconn_t;
typedef struct ob_endpoint ob_endpoint_t;
typedef struct ob_up_proto_ops ob_up_proto_ops_t;

/* Output above this is not added to by the h2 sender until it drains. */
#define OB_UP_H2_OUTPUT_HIGH (64 * 1024)
/* Connection-level receive window of an upstream h2 session. */
#define OB_UP_H2_CONN_WINDOW (16 * 1024 * 1024)
/* Streams assumed per h2 connection until the server's SETTINGS arrive. */
#define OB_UP_H2_DEFAULT_STREAMS 100

typedef enum {
  U_NEW,     /* being dispatched */
  U_QUEUED,  /* waiting for its connection to finish connecting */
  U_ACTIVE,  /* on a connection: request being sent, response being read */
  U_DONE,    /* response complete on the wire; body or on_end still to deliver */
  U_FAILED,  /* on_error pending on u->kick */
} ob_ureq_state_t;

typedef enum {
  C_CONNECTING, /* TCP (+TLS) in progress; c->timer is the connect timeout */
  C_OPEN,
  C_DEAD,       /* freed; only seen by code that must not touch it further */
} ob_uconn_state_t;

/* An h2 stream (upstream_h2.c). */
typedef struct ob_ureq_h2 {
  int32_t stream_id;
  ob_ureq_t *sprev, *snext;       /* c->h2.streams or c->h2.pending */
  ob_ureq_t *tnext;               /* c->h2.touched */
  bool touched;
  size_t body_i, body_off;        /* data provider cursor */
  bool sent_any;                  /* HEADERS went out */
  bool req_done;                  /* the request's END_STREAM went out */
  bool resp_any;                  /* a response frame arrived */
  bool head_ready;                /* final response HEADERS complete */
  bool closed;                    /* stream closed */
  bool remote_ended;              /* END_STREAM received */
  bool bad;                       /* response rejected by us */
  uint32_t close_code;
  int status;
  ob_http_header_t *hdrs;         /* head being collected */
  size_t num_hdrs;
  size_t hdr_bytes;
  uint64_t unconsumed;            /* bytes not yet given back to the stream window */
} ob_ureq_h2_t;

/* An h1 connection: one exchange at a time (upstream_h1.c). */
typedef struct ob_uconn_h1 {
  ob_ureq_t *ureq;                /* the exchange in progress, or the one waiting for connect */
  bool reused;                    /* taken from the idle pool for this exchange */
  bool got_bytes;                 /* a response byte arrived */
  bool req_written;
  bool eof;
  int rstate;                     /* reading the head or the body */
  ob_h1_body_t framing;
  uint64_t remaining;
  ob_h1_chunked_t chunked;
  bool keep_alive;
} ob_uconn_h1_t;

/* An h2 connection: one nghttp2 session, many streams (upstream_h2.c). */
typedef struct ob_uconn_h2 {
  nghttp2_session *session;
  ob_ureq_t *streams;             /* submitted, not closed */
  size_t num_streams;
  ob_ureq_t *pending, *pending_tail; /* queued while connecting */
  size_t num_pending;
  ob_ureq_t *touched, *touched_tail; /* to deliver after nghttp2 returns */
  bool settings_received;
  bool goaway;
  bool in_nghttp2;                /* inside mem_recv / mem_send */
} ob_uconn_h2_t;

struct ob_ureq {
  ob_upstream_t *up;
  ob_ureq_t *prev, *next;         /* up->ureqs: every live ureq */
  ob_ureq_handler_t h;
  void *data;
  ob_ureq_state_t state;
  ob_endpoint_t *ep;              /* counted in ep->inflight; NULL before the choice */
  uint32_t *shared_count;         /* the shared counter ep is also counted in, or NULL (it may
                                     belong to an earlier limits array: a reload swaps them) */
  ob_uconn_t *conn;               /* while U_QUEUED / U_ACTIVE */
  struct event *kick;             /* deferred work: on_error, resume */
  struct event *timer;            /* first byte / idle */
  ob_arena_t arena;               /* the copied request, response headers (h2) */

  /* The request, copied (or referenced in owner) so it can be sent again. */
  ob_iov_t method, path, authority;
  ob_http_header_t *headers;      /* names lower-cased, filtered */
  size_t num_headers;
  ob_iov_t *body;
  size_t num_body;
  uint64_t body_len;
  ob_rcbuf_t *owner;              /* counted */
  bool expect_trailers;
  bool long_lived;                /* no idle timeout once the response started (event streams) */
  bool pinned;                    /* must be served by the endpoint chosen first */
  bool streamed;                  /* the body is read from src as it arrives */
  ob_sreq_t *src;                 /* streamed: the client stream, NULL once it is gone */
  bool src_taken;                 /* streamed: bytes were taken, so no resend */

  /* Retries already spent. */
  bool retried_connect;           /* connection failed before any byte was sent */
  bool retried_stale;             /* h1: reused keep-alive connection was dead */
  bool retried_refused;           /* h2: stream refused / above GOAWAY's last id */

  /* Delivery. */
  struct evbuffer *rbody;         /* response body bytes for on_data */
  bool paused;
  bool undelivered;               /* rbody holds bytes on_data has not been offered */
  bool head_seen;                 /* on_head was called */
  bool cancelled;                 /* cancelled from inside a callback */
  int busy;                       /* depth of handler callbacks in progress */
  ob_err_t err;                   /* U_FAILED: what to report */
  int status_hint;
  ob_http_header_t *trailers;     /* U_DONE (h2): for on_end */
  size_t num_trailers;

  bool head_ended;                /* the response ended on its head (h2 Trailers-Only) */

  /* The protocol's own per-request state: only the protocol's file
   * touches it. h1 keeps its exchange state on the connection. */
  union {
    ob_ureq_h2_t h2;
  };
};

struct ob_uconn {
  ob_endpoint_t *ep;
  ob_uconn_t *prev, *next;        /* ep->conns */
  ob_uconn_t *iprev, *inext;      /* on *plist, most recent first */
  ob_uconn_t **plist;             /* &ep->idle, &ep->spare or NULL: h1 connections without a request */
  ob_uconn_state_t state;
  ob_sock_t *sock;
  struct event *timer;            /* connect timeout, then keep-alive idle */
  struct event *flush_ev;         /* h2: deferred send; both: deferred connect failure */
  bool connect_failed;            /* set with flush_ev when connect failed synchronously */
  const char *fail_reason;

  /* The protocol's own per-connection state: only its file touches it. */
  union {
    ob_uconn_h1_t h1;
    ob_uconn_h2_t h2;
  };
};

struct ob_endpoint {
  ob_upstream_t *up;
  const ob_net_endpoint_conf_t *cfg;
  uint32_t inflight;
  uint64_t attempts, failures;    /* for metrics */
  uint64_t backoff_until_ms;      /* 0 = not backed off */
  ob_uconn_t *conns;              /* every connection */
  ob_uconn_t *idle;               /* h1 idle connections, LIFO */
  ob_uconn_t *spare;              /* h1 connections still connecting whose request went away */
};

struct ob_upstream {
  ob_net_t *net;
  const ob_net_upstream_conf_t *cfg;
  ob_net_config_t *gcfg;          /* counted: net's copy cfg lives in; timeouts and limits */
  ob_upstream_t *retired_next;    /* in ob_net.retired after a reload replaced the pool */
  SSL_CTX *ssl;                   /* NULL when no endpoint uses TLS */
  ob_endpoint_t *eps;
  size_t num_eps;
  size_t rr;                      /* round-robin cursor for ties */
  const uint32_t *limits;         /* per endpoint, or NULL: ob_upstream_set_limits */
  uint32_t *shared;               /* per endpoint: in flight from every worker (atomics), with limits */
  ob_ureq_t *ureqs;
  const ob_up_proto_ops_t *ops;   /* the configured protocol's */
  bool destroying;
  const struct timeval *tv_connect, *tv_first_byte, *tv_idle, *tv_keepalive; /* NULL = no limit */
  struct timeval tv_own[4];
};

/* ---- upstream.c: shared machinery ---- */

/* The idle timeout of an open response: none for long-lived streams. */
static inline const struct timeval *ob_net_up_idle_tv(const ob_ureq_t *u) {
  return u->long_lived ? NULL : u->up->tv_idle;
}

/* Arm a timer with one of the pool's durations (NULL = disabled). */
void ob_net_up_arm(struct event *ev, const struct timeval *tv);

/* Handler calls. Each returns false when the handler cancelled the ureq from
 * inside the callback; the cancel has then been carried out (for h1 the
 * connection is closed and freed) and the caller must return at once. */
bool ob_net_up_call_head(ob_ureq_t *u, int status, const ob_http_header_t *h, size_t n);
bool ob_net_up_call_data(ob_ureq_t *u);

/* The wire side is finished: u is already detached from its connection.
 * Delivers what is left of the body and on_end (now, or on resume), then
 * frees u. */
void ob_net_up_complete(ob_ureq_t *u);

/* The request failed: u must already be detached from its connection.
 * on_error follows on a later loop turn. */
void ob_net_up_fail(ob_ureq_t *u, ob_err_t err, int status_hint);

/* How a request that the upstream never processed is sent again. Each kind
 * is spent once per ureq. */
typedef enum {
  OB_RETRY_OTHER_ENDPOINT, /* connect failed: only through another endpoint */
  OB_RETRY_FRESH_CONN,     /* h1 stale keep-alive: same endpoint, new connection */
  OB_RETRY_ELSEWHERE,      /* h2 refused stream: another endpoint if any, else a
                              new stream on the same one */
} ob_retry_t;

/* Send u again as kind says when that retry is still available, else fail it
 * with status_hint. u must be detached from its connection; u->ep is the
 * endpoint that failed. */
void ob_net_up_retry(ob_ureq_t *u, ob_retry_t kind, int status_hint);

/* Close and free a connection. Requests still attached must have been
 * detached by the caller. */
void ob_net_up_conn_free(ob_uconn_t *c);

/* An h1 connection finished an exchange cleanly: keep it for reuse. */
void ob_net_up_conn_idle(ob_uconn_t *c);
/* c (h1, still connecting) lost its request: the next request takes it
 * instead of opening another connection. */
void ob_net_up_conn_spare(ob_uconn_t *c);

/* Schedule c->flush_ev (h2 send on the next turn). */
void ob_net_up_conn_schedule(ob_uconn_t *c);

/* "upstream NAME endpoint HOST:PORT" for log lines. */
const char *ob_net_up_conn_name(const ob_uconn_t *c);

/* ---- the protocols: upstream_h1.c, upstream_h2.c ---- */

/*
 * What upstream.c asks of an upstream protocol: one table per protocol,
 * chosen once per pool from its configured protocol (as ob_sreq_ops_t is per
 * client protocol). upstream.c keeps the protocol-neutral pool logic
 * (endpoint choice, the idle and spare lists, back-off, retries, timers, the
 * ureq life cycle) and reaches the wire only through this table. A function
 * that has nothing to do for a protocol is a no-op there, never NULL.
 */
struct ob_up_proto_ops {
  /* TLS: the ALPN list offered (wire format) and whether a connection
   * fails unless the server selected its one protocol; alpn_name names it
   * in that failure. */
  const unsigned char *alpn;
  size_t alpn_len;
  bool require_alpn;
  const char *alpn_name;
  /* A connection carries many requests at once: dispatch looks for room on
   * the endpoint's connections (room) before opening another. Otherwise a
   * connection takes a new request only from the idle or spare list. */
  bool multiplexed;
  /* A request body can be sent as it arrives (ob_ureq_spec_t.body_stream). */
  bool streams_body;
  /* Write low-water mark of a connection's socket; 0 leaves the default. */
  size_t write_lowat;

  /* ---- connections ---- */
  /* Give u (U_NEW, counted on c->ep) to c: open connections start it now,
   * connecting ones keep it until connected. */
  void (*attach)(ob_uconn_t *c, ob_ureq_t *u);
  /* How many more requests c takes now (multiplexed protocols). */
  size_t (*room)(const ob_uconn_t *c);
  /* c is open (ALPN checked): start what waited, or offer c for reuse. */
  void (*connected)(ob_uconn_t *c);
  /* c failed to connect: detach one request that waited for it and return
   * it (u->conn NULL), or NULL when none is left. */
  ob_ureq_t *(*unqueue)(ob_uconn_t *c);
  /* No request uses c (its keep-alive expiry frees it). */
  bool (*unused)(const ob_uconn_t *c);
  void (*on_read)(ob_uconn_t *c);
  /* Only while c is open. */
  void (*on_write)(ob_uconn_t *c);
  /* The open connection closed or broke: what are the BEV_EVENT_ flags,
   * why says so for the log. */
  void (*on_event)(ob_uconn_t *c, short what, const char *why);
  /* Deferred send (c->flush_ev, ob_net_up_conn_schedule). */
  void (*flush)(ob_uconn_t *c);
  /* The pool is being destroyed: forget every request of c, without
   * callbacks (each gets u->conn = NULL). */
  void (*detach_all)(ob_uconn_t *c);
  /* Free the protocol state of a connection being freed (no callbacks). */
  void (*dispose)(ob_uconn_t *c);

  /* ---- requests (U_QUEUED or U_ACTIVE with u->conn set) ---- */
  /* Detach u from its connection without callbacks. */
  void (*abort)(ob_ureq_t *u);
  /* The handler paused (U_ACTIVE): stop reading for u where the protocol
   * can; resume restarts delivery (from u->kick). */
  void (*pause)(ob_ureq_t *u);
  void (*resume)(ob_ureq_t *u);
  /* First-byte or idle timeout (U_ACTIVE). */
  void (*timeout)(ob_ureq_t *u);
  /* More of a streamed request body is ready (U_ACTIVE). */
  void (*body_ready)(ob_ureq_t *u);
};

extern const ob_up_proto_ops_t ob_net_uh1_ops;
extern const ob_up_proto_ops_t ob_net_uh2_ops;

#endif /* OB_UPSTREAM_INT_H */
