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

  /* h2 stream state (upstream_h2.c). */
  int32_t stream_id;
  ob_ureq_t *sprev, *snext;       /* c->streams or c->pending */
  ob_ureq_t *tnext;               /* c->touched */
  bool touched;
  size_t body_i, body_off;        /* data provider cursor */
  bool sent_any;                  /* HEADERS went out */
  bool req_done;                  /* the request's END_STREAM went out */
  bool resp_any;                  /* a response frame arrived */
  bool head_ready;                /* final response HEADERS complete */
  bool closed;                    /* stream closed */
  bool remote_ended;              /* END_STREAM received */
  bool head_ended;                /* ... on the response head itself (Trailers-Only) */
  bool bad;                       /* response rejected by us */
  uint32_t close_code;
  int status;
  ob_http_header_t *hdrs;         /* head being collected */
  size_t num_hdrs;
  size_t hdr_bytes;
  uint64_t unconsumed;            /* bytes not yet given back to the stream window */
};

struct ob_uconn {
  ob_endpoint_t *ep;
  ob_uconn_t *prev, *next;        /* ep->conns */
  ob_uconn_t *iprev, *inext;      /* on *plist, most recent first */
  ob_uconn_t **plist;             /* &ep->idle, &ep->spare or NULL: h1 connections without a request */
  bool h2;
  ob_uconn_state_t state;
  ob_sock_t *sock;
  struct event *timer;            /* connect timeout, then keep-alive idle */
  struct event *flush_ev;         /* h2: deferred send; both: deferred connect failure */
  bool connect_failed;            /* set with flush_ev when connect failed synchronously */
  const char *fail_reason;

  /* h1 */
  ob_ureq_t *ureq;                /* the exchange in progress, or the one waiting for connect */
  bool reused;                    /* taken from the idle pool for this exchange */
  bool got_bytes;                 /* a response byte arrived */
  bool req_written;
  bool eof;
  int rstate;                     /* upstream_h1.c */
  ob_h1_body_t framing;
  uint64_t remaining;
  ob_h1_chunked_t chunked;
  bool keep_alive;

  /* h2 */
  nghttp2_session *session;
  ob_ureq_t *streams;             /* submitted, not closed */
  size_t num_streams;
  ob_ureq_t *pending, *pending_tail; /* queued while connecting */
  size_t num_pending;
  ob_ureq_t *touched, *touched_tail; /* to deliver after nghttp2 returns */
  bool settings_received;
  bool goaway;
  bool in_nghttp2;                /* inside mem_recv / mem_send */
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
  bool h2;
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

/* ---- upstream_h1.c ---- */

/* Write u's request on open connection c and start reading the response. */
void ob_net_uh1_start(ob_uconn_t *c, ob_ureq_t *u);
void ob_net_uh1_on_read(ob_uconn_t *c);
void ob_net_uh1_on_write(ob_uconn_t *c);
void ob_net_uh1_on_event(ob_uconn_t *c, short what);
/* Resume reading after a pause (from u->kick). */
void ob_net_uh1_resume(ob_ureq_t *u);
/* Detach u from its connection without callbacks; closes the connection
 * when the exchange was unfinished. */
void ob_net_uh1_abort(ob_ureq_t *u);
/* First-byte or idle timeout. */
void ob_net_uh1_timeout(ob_ureq_t *u);

/* ---- upstream_h2.c ---- */

/* The connection is open: create the session and submit the queued requests.
 * Returns false when the connection was failed (and freed). */
bool ob_net_uh2_start(ob_uconn_t *c);
/* Submit u on open connection c (or queue it while c is connecting). */
void ob_net_uh2_add(ob_uconn_t *c, ob_ureq_t *u);
/* Free capacity of c for new streams (0 when it takes no more). */
size_t ob_net_uh2_room(const ob_uconn_t *c);
void ob_net_uh2_on_read(ob_uconn_t *c);
void ob_net_uh2_on_write(ob_uconn_t *c);
/* The connection closed or broke after it was open; why: for the log. */
void ob_net_uh2_on_event(ob_uconn_t *c, const char *why);
/* Send what nghttp2 has (c->flush_ev). */
void ob_net_uh2_flush(ob_uconn_t *c);
void ob_net_uh2_resume(ob_ureq_t *u);
/* Detach u from its connection without callbacks: unqueue it, or reset its
 * stream (CANCEL). */
void ob_net_uh2_abort(ob_ureq_t *u);
void ob_net_uh2_timeout(ob_ureq_t *u);
/* Connection-level failure: streams fail or retry; c is freed. */
void ob_net_uh2_conn_fail(ob_uconn_t *c, const char *why);
/* Free the session of a connection being freed (no callbacks). */
void ob_net_uh2_dispose(ob_uconn_t *c);

#endif /* OB_UPSTREAM_INT_H */
