/*
 * net: sockets. The libevent loop, listeners, TLS with ALPN, client
 * connections (HTTP/1.1 and HTTP/2, cleartext and TLS) and upstream
 * connection pools (HTTP/1.1 keep-alive and multiplexed HTTP/2).
 *
 * net turns client connections into request streams (ob_sreq_t) and hands
 * them to one handler (the proxy), and offers upstream request streams
 * (ob_ureq_t) on pools (ob_upstream_t). It knows nothing about tenants,
 * routes or admission. Uses http and core; its settings are its own types
 * (conf/net_config.h), which config parses into.
 *
 * Threading: everything here runs on the thread of the event_base it was
 * created with.
 */
#ifndef OB_NET_H
#define OB_NET_H

#include "net_config.h"
#include "core.h"
#include "http.h"

#include <event2/buffer.h>
#include <event2/event.h>

typedef struct ob_net ob_net_t;
typedef struct ob_sreq ob_sreq_t;
typedef struct ob_upstream ob_upstream_t;
typedef struct ob_ureq ob_ureq_t;

/* ================================================================ client side */

/* Bytes the handler keeps per client connection between its requests (the
 * proxy: the key that identified the last one). Zero when the connection
 * opens; wiped with explicit_bzero when it is released, since it may hold
 * secrets. Owned by the connection, valid while the sreq is; only the
 * connection's thread touches it. */
#define OB_CONN_SCRATCH 160
typedef struct {
  _Alignas(16) unsigned char bytes[OB_CONN_SCRATCH];
} ob_conn_scratch_t;

/*
 * One request from a client and the response to it: an HTTP/1.1 exchange on
 * a connection or one HTTP/2 stream. Owned by its connection. The fields
 * below are filled before on_request and are read-only for the handler; they
 * live as long as the sreq.
 */
struct ob_sreq {
  ob_arena_t arena;         /* per-request memory; dies with the sreq */
  ob_iov_t method;
  ob_iov_t scheme;          /* "http" or "https" */
  ob_iov_t authority;       /* Host / :authority */
  ob_iov_t path;            /* origin-form path with query */
  ob_http_header_t *headers;/* regular fields only (no pseudo headers), names lower-case for h2 */
  size_t num_headers;
  ob_rcbuf_t *body;         /* counted: the complete request body (possibly empty); acquire to keep */
  int http_version;         /* 10, 11 or 20 */
  const char *peer_addr;    /* client IP as text */
  bool tls;
  bool xff_replace;         /* the listener's x_forwarded_for is "replace" */
  uint64_t start_us;        /* when the request head began to arrive */
  void *handler_data;       /* for the handler's own use */
  /* Streamed request body (HTTP/2 only, when the handler's stream_body said
   * so): on_request comes as soon as the head is in, s->body stays empty,
   * and the body is read by an upstream request given this sreq as its
   * body_stream. */
  bool body_streaming;
  /* Response accounting, maintained by net. */
  int status;               /* status sent, 0 before the head */
  uint64_t bytes_out;       /* response body bytes queued */
  const struct ob_sreq_ops *ops_; /* private to net */
  /* Private to server.c, reached only through ob_net_sreq_body_*. */
  struct evbuffer *body_in_;      /* streamed body bytes not yet sent upstream */
  bool body_ended_;               /* the client ended the request body */
  struct ob_ureq *sink_;          /* the ureq reading body_in_, or NULL */
  struct ob_client_conn *conn_;   /* private: the connection it came on */
};

/*
 * The handler of request streams (the proxy). Each callback gets the sreq
 * and the ctx given to ob_net_create.
 *
 * on_request: head and complete body are in. The handler answers through
 *   ob_sreq_send_* eventually (now or after any number of loop turns).
 * on_writable: pending output of the stream dropped to half the stream
 *   window after having been above it; upstream reading may resume.
 * on_close: called exactly once for every sreq that reached on_request, when
 *   the stream is finished: the response was completely handed to the
 *   connection (completed = true), or the client reset the stream, closed the
 *   connection, or the stream was reset by ob_sreq_reset (completed = false).
 *   The sreq is freed right after on_close returns; the handler must drop
 *   every pointer to it and must not call ob_sreq_* from inside on_close.
 */
typedef struct ob_sreq_handler {
  /* Optional. Asked when an HTTP/2 request head arrives with a body to
   * follow: true makes the body streamed (see ob_sreq.body_streaming) and
   * on_request come at once; false (or no callback) buffers the body up to
   * limits.max_body_bytes first. Must only look at s (no I/O, no calls). */
  bool (*stream_body)(const ob_sreq_t *s, void *ctx);
  void (*on_request)(ob_sreq_t *s, void *ctx);
  void (*on_writable)(ob_sreq_t *s, void *ctx);
  void (*on_close)(ob_sreq_t *s, bool completed, void *ctx);
} ob_sreq_handler_t;

/*
 * Send the response head. headers: borrowed for the call; must not contain
 * hop-by-hop fields or Content-Length (net adds framing itself).
 * content_length: body size when known, -1 to stream (h1 uses chunked).
 * end_stream: no body follows (the response is complete).
 * Returns OB_OK or OB_ERR_CONN when the stream is already gone.
 */
ob_err_t ob_sreq_send_head(ob_sreq_t *s, int status, const ob_http_header_t *headers, size_t n,
                           int64_t content_length, bool end_stream);

/* Queue body bytes: all of data is moved out (no copy; data is left empty).
 * end_stream completes the response. */
void ob_sreq_send_data(ob_sreq_t *s, struct evbuffer *data, bool end_stream);

/* Queue body bytes by copying (small gateway-made bodies). */
void ob_sreq_send_bytes(ob_sreq_t *s, const void *p, size_t n, bool end_stream);

/* Complete the response with trailer fields (h2; on h1 they are dropped and
 * the body is simply terminated). trailers: borrowed for the call. */
void ob_sreq_send_trailers(ob_sreq_t *s, const ob_http_header_t *trailers, size_t n);

/* Abort the response so the client sees a failure, never a falsely complete
 * response: h2 RST_STREAM(INTERNAL_ERROR); h1 closes the connection without
 * the final chunk. on_close(completed = false) follows (possibly from within
 * this call). */
void ob_sreq_reset(ob_sreq_t *s);

/* Response bytes queued on this stream and not yet written to the socket. */
size_t ob_sreq_pending(const ob_sreq_t *s);

/* Find a request header by name (case-insensitive); first match or NULL.
 * Borrowed from the sreq. */
const ob_http_header_t *ob_sreq_header(const ob_sreq_t *s, const char *name);

/* The connection's scratch bytes (ob_conn_scratch_t, above). */
ob_conn_scratch_t *ob_sreq_conn_scratch(ob_sreq_t *s);

/* ================================================================ upstream side */

/*
 * What to send upstream. Borrowed for the call to ob_upstream_request, except
 * body_owner, which the ureq acquires: body pieces that lie inside
 * body_owner's bytes are sent by reference without copying; any other piece
 * is copied.
 */
typedef struct ob_ureq_spec {
  ob_iov_t method;
  ob_iov_t path;            /* origin-form, already rewritten; the endpoint's base path is prepended by net */
  ob_iov_t authority;       /* sent as Host / :authority; empty = the endpoint's authority */
  const ob_http_header_t *headers; /* end-to-end fields only; no Host, Content-Length, hop-by-hop */
  size_t num_headers;
  const ob_iov_t *body;     /* pieces, in order */
  size_t num_body;
  ob_rcbuf_t *body_owner;   /* counted, may be NULL */
  /* Instead of body pieces: send this sreq's streamed body as it arrives
   * (HTTP/2 upstreams only; an HTTP/1.1 pool fails the request with 502).
   * Its client window is given back only as bytes are sent upstream, so a
   * slow upstream slows the client instead of growing buffers. Borrowed:
   * the handler cancels the ureq before the sreq goes away. */
  ob_sreq_t *body_stream;
  bool expect_trailers;     /* send "te: trailers" (gRPC) */
  /* 1 + the index of the endpoint that must serve the request (session
   * affinity): no other endpoint is tried; 0 = the pool chooses. */
  size_t endpoint;
  bool long_lived;          /* an event stream: no idle timeout once the response started */
} ob_ureq_spec_t;

/*
 * Callbacks for one upstream request. data is the pointer given to
 * ob_upstream_request. Exactly one terminal callback (on_end or on_error)
 * follows unless the handler cancels first; after a terminal callback the
 * ureq is freed by net and must not be touched.
 *
 * on_head: response head (final status; 1xx are swallowed). headers borrowed
 *   for the call, hop-by-hop fields already removed.
 * on_data: body bytes in buf; the handler moves what it takes out of buf
 *   (evbuffer_remove_buffer / ob_sreq_send_data). It is called again only
 *   with new bytes; what the handler leaves stays buffered by net, bounded
 *   by flow control once the handler pauses.
 * on_end: the response is complete. trailers borrowed for the call.
 * on_error: the request failed. err is OB_ERR_CONN for a connection failure,
 *   OB_ERR_BAD_RESPONSE for a malformed response; status_hint is the status
 *   the gateway should answer if no head was sent yet (502, 503 or 504);
 *   head_seen tells whether on_head was already called (the handler must
 *   then abort the client stream instead of answering).
 */
typedef struct ob_ureq_handler {
  void (*on_head)(ob_ureq_t *u, void *data, int status, const ob_http_header_t *headers, size_t n);
  void (*on_data)(ob_ureq_t *u, void *data, struct evbuffer *buf);
  void (*on_end)(ob_ureq_t *u, void *data, const ob_http_header_t *trailers, size_t n);
  void (*on_error)(ob_ureq_t *u, void *data, ob_err_t err, int status_hint, bool head_seen);
} ob_ureq_handler_t;

/* Look up a pool by upstream name; borrowed from the net; NULL when absent. */
ob_upstream_t *ob_net_upstream(ob_net_t *n, const char *name);

/* True when some endpoint of the pool is not in back-off after refused or
 * failed connections. */
bool ob_upstream_available(const ob_upstream_t *up);

/*
 * Start a request on the endpoint with the fewest requests in flight
 * (endpoints in back-off after refused connections are skipped while any
 * other is available). A connection failure before any request byte was
 * written retries once on another endpoint, transparently. Never calls back
 * from inside this call: even an immediate failure is reported on a later
 * loop turn. Returns the ureq (borrowed until its terminal callback or
 * ob_ureq_cancel).
 */
ob_ureq_t *ob_upstream_request(ob_upstream_t *up, const ob_ureq_spec_t *spec, const ob_ureq_handler_t *h,
                               void *data);

/* Stop / resume delivering body bytes (back-pressure from the client side).
 * h1: the connection stops reading; h2: the stream's window stops opening. */
void ob_ureq_pause(ob_ureq_t *u, bool paused);

/* The handler no longer wants this request: no callback follows; an
 * unfinished h2 stream is reset (CANCEL), an unfinished h1 exchange closes
 * its connection. The ureq is invalid after the call. */
void ob_ureq_cancel(ob_ureq_t *u);

/* True inside on_head when the response ended with its head (an HTTP/2
 * HEADERS frame carrying END_STREAM, e.g. a gRPC Trailers-Only answer): no
 * body or trailers follow, only on_end. */
bool ob_ureq_head_ends(const ob_ureq_t *u);

/* Index (in the upstream's configured endpoints) of the endpoint serving
 * the request; 0 before one was chosen. */
size_t ob_ureq_endpoint_index(const ob_ureq_t *u);
size_t ob_upstream_num_endpoints(const ob_upstream_t *up);

/* Per-endpoint limits (max_inflight "auto"): from now on the pool prefers
 * the endpoint with the most headroom for its limit (the lowest requests in
 * flight / limit, counted in shared: every worker's pool for the upstream
 * adds its requests there, so together they keep every endpoint at its
 * limit; proportional, so that replicas, each counting only its own, do
 * too) and skips one whose limit is 0 (down) while another can take the
 * request. limits and shared: one per endpoint, borrowed until every
 * request counted in shared is over (a reload may hand in new arrays while
 * requests counted in the old ones run; each gives back to its own); other
 * threads read and change them (relaxed atomics). */
void ob_upstream_set_limits(ob_upstream_t *up, const uint32_t *limits, uint32_t *shared);

/* "host:port" of the endpoint serving the request (borrowed from the pool),
 * or "-" before one was chosen. */
const char *ob_ureq_endpoint(const ob_ureq_t *u);

/* ================================================================ statistics */

/* Client connections: [0] HTTP/1.x, [1] HTTP/2 (h2 and h2c). */
typedef struct ob_net_conn_stats {
  uint64_t accepted[2]; /* since start */
  uint64_t open[2];     /* now */
  uint64_t tls_accepted;
} ob_net_conn_stats_t;

void ob_net_conn_stats(const ob_net_t *n, ob_net_conn_stats_t *out);

/* One endpoint of a pool: requests started on it and how many failed
 * (connection refused or broken, reset, timed out, malformed answer). */
typedef struct ob_endpoint_stats {
  const char *authority; /* borrowed from the pool */
  uint64_t attempts, failures;
  uint32_t inflight;
  bool backoff;          /* skipped right now after failed connections */
} ob_endpoint_stats_t;

void ob_upstream_endpoint_stats(const ob_upstream_t *up, size_t i, ob_endpoint_stats_t *out);
size_t ob_net_num_upstreams(const ob_net_t *n);
/* Pool i (configuration order) and its name; borrowed. */
ob_upstream_t *ob_net_upstream_at(ob_net_t *n, size_t i);
const char *ob_upstream_name(const ob_upstream_t *up);

/* ================================================================ the whole */

/*
 * Create listeners and upstream pools for cfg (borrowed for the call: the
 * net keeps a copy of its own, strings included, so the caller may free
 * cfg and the snapshot it came from right after) on base (borrowed; must outlive the net). handler and ctx are
 * borrowed for the life of the net. Returns NULL and logs why when a listener
 * cannot be bound or a TLS certificate cannot be loaded.
 */
ob_net_t *ob_net_create(struct event_base *base, const ob_net_config_t *cfg, const ob_sreq_handler_t *handler, void *ctx);
/* The same for a further worker ("workers": N > 1): its listeners are bound
 * to the addresses first's listeners got (so port 0 means first's port),
 * all with SO_REUSEPORT, and the kernel spreads new connections over the
 * workers. first is only read during the call. */
ob_net_t *ob_net_create_worker(struct event_base *base, const ob_net_config_t *cfg, const ob_sreq_handler_t *handler, void *ctx,
                               const ob_net_t *first);

/* Whether every TLS context cfg (borrowed for the call) asks for can be
 * built: each TLS listener's certificate chain and key load and match,
 * each https upstream's CA bundle loads. Logs each failure (listener or
 * upstream, file, OpenSSL's reason) and returns false; binds nothing. For
 * --check-config, which would otherwise pass a file that exists but is not
 * a certificate. */
bool ob_net_tls_check(const ob_net_config_t *cfg);

/* The address listener i is bound to ("127.0.0.1:43121"), for ephemeral
 * ports; borrowed from the net. */
const char *ob_net_listener_address(const ob_net_t *n, size_t i);

/*
 * Reload: make listeners and upstream pools match cfg (borrowed for the
 * call; copied, like ob_net_create). Listeners are matched by their address as written: a kept one
 * keeps its socket (a TLS one gets its certificate and key loaded again),
 * a new one is bound, a removed one stops accepting while its connections
 * go on. Pools are matched by name: one whose endpoints, protocol, TLS
 * settings, timeouts and limits are unchanged is kept with its
 * connections; any other is replaced by a new pool, and the old one
 * serves the requests it has until they finish, then is freed. Client
 * connections read limits and timeouts from the new copy from now on.
 * Everything that can fail (binding, certificates, CA bundles) is done
 * first: on failure nothing changes, the reason is logged and false is
 * returned. Not during shutdown.
 */
bool ob_net_reload(ob_net_t *n, const ob_net_config_t *cfg);
/* Reload of a further worker, after first's reload succeeded (new
 * listeners bind to first's new addresses). */
bool ob_net_reload_worker(ob_net_t *n, const ob_net_config_t *cfg, const ob_net_t *first);

/*
 * Graceful shutdown: close listeners, send GOAWAY on h2 connections, close
 * idle h1 connections, and let streams in flight finish. done() is called
 * once every client connection is gone or grace_ms passed (remaining
 * connections are then closed).
 */
void ob_net_shutdown(ob_net_t *n, void (*done)(void *arg), void *arg);

/* Free everything; connections still open are closed without callbacks to
 * the handler other than on_close. NULL is a no-op. */
void ob_net_destroy(ob_net_t *n);

/*
 * A wake-up from any thread into base's loop: cb(arg) runs there soon
 * after ob_waker_wake, once for any number of wake-ups in between. cb and
 * arg are borrowed until ob_waker_free (on the loop's thread; both take NULL as a
 * no-op). NULL (logged) if no pipe could be made.
 */
typedef struct ob_waker ob_waker_t;
ob_waker_t *ob_waker_new(struct event_base *base, void (*cb)(void *arg), void *arg);
void ob_waker_wake(ob_waker_t *w);
void ob_waker_free(ob_waker_t *w);

#endif /* OB_NET_H */
