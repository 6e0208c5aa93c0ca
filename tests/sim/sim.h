/*
 * obleth-sim internals shared by its four files: obleth-sim.c (flags,
 * workers, listeners, the global slot pool and the counters), sim_api.c (the
 * OpenAI-compatible endpoints and the /sim/ hooks, protocol-neutral),
 * sim_h1.c and sim_h2.c (the two wire protocols).
 *
 * The protocol layers own connections and exchanges; the api layer owns what
 * happens between "request complete" (sim_ex_dispatch) and the response's
 * end, and talks back only through sim_ex_ops_t. This header is private to
 * tests/sim/.
 */
#ifndef OB_SIM_H
#define OB_SIM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "core.h"

#define SIM_MAX_BODY ((size_t)32 << 20) /* request bodies above this get 413 */
#define SIM_MAX_HEAD ((size_t)64 << 10) /* request header block; 431 above */
#define SIM_MAX_HEADERS 256             /* header fields per request; 431 above */

/* ---------------------------------------------------------------- config */

/* Filled once by main() before any worker starts; read-only afterwards. */
typedef struct sim_config {
  int slots;             /* --slots: concurrent sequences (global) */
  uint64_t ttft_ms;      /* --ttft-ms */
  uint64_t itl_ms;       /* --itl-ms */
  int64_t max_tokens;    /* --max-tokens: default output length */
  int64_t max_model_len; /* --max-model-len: prompt + output bound (400 above) */
  double fail_rate;      /* --fail-rate: 0..1 */
  uint64_t seed;         /* --seed */
  bool h2c;              /* --h2c */
  int threads;           /* --threads */
  const char *model;     /* --model */
} sim_config_t;

extern sim_config_t sim_cfg;

/* ---------------------------------------------------------------- workers */

typedef struct sim_ex sim_ex_t;

/* One event loop on one thread. Everything a worker owns (connections,
 * exchanges, timers) is touched only by its thread; the mailbox is the one
 * exception and is guarded by the slot mutex. */
typedef struct sim_worker {
  int id;
  struct event_base *base;
  int listen_fd;
  struct evconnlistener *listener;
  int wake_fd;                     /* eventfd: "your mailbox has grants" */
  struct event *wake_ev;
  sim_ex_t *mbox_head, *mbox_tail; /* granted waiters; slot mutex */
  ob_buf_t scratch;                /* per-thread scratch for building frames */
  pthread_t thread;
} sim_worker_t;

/* Connection entry points: take ownership of a connected non-blocking fd. */
void sim_h1_accept(sim_worker_t *w, int fd);
void sim_h2_accept(sim_worker_t *w, int fd);

/* ---------------------------------------------------------------- exchange */

/*
 * How the api layer answers. All four are called on the exchange's worker
 * thread, possibly from inside sim_ex_dispatch(). finish() and abort() are
 * always the last thing the api does with the exchange: the protocol layer
 * may dispose it before they return.
 *   head:   status line/HEADERS; clen < 0 means "streamed, length unknown"
 *           (chunked on HTTP/1.1). clen >= 0 is announced as Content-Length
 *           even if abort() later cuts the body short.
 *   body:   bytes borrowed for the call; on a streamed response each call is
 *           written to the socket at once (one chunk / one DATA frame).
 *   finish: the response is complete.
 *   abort:  end the response visibly broken: HTTP/1.1 closes the connection
 *           after flushing what was sent, HTTP/2 sends RST_STREAM
 *           (INTERNAL_ERROR) after the sent DATA.
 */
typedef struct sim_ex_ops {
  void (*head)(sim_ex_t *ex, int status, const char *ctype, int64_t clen);
  void (*body)(sim_ex_t *ex, const void *p, size_t n);
  void (*finish)(sim_ex_t *ex);
  void (*abort)(sim_ex_t *ex);
} sim_ex_ops_t;

typedef struct sim_hdr {
  ob_iov_t name;  /* as received */
  ob_iov_t value;
} sim_hdr_t;

enum { SIM_SLOT_NONE, SIM_SLOT_QUEUED, SIM_SLOT_GRANTED, SIM_SLOT_HELD };

/* One request/response pair. Embedded in the protocol layer's connection (h1)
 * or stream (h2) object; initialised with sim_ex_init() when a request starts
 * and disposed with sim_ex_dispose() when the protocol layer is done with it. */
struct sim_ex {
  /* --- set by the protocol layer before dispatch */
  const sim_ex_ops_t *ops;
  void *proto;            /* the h1 connection or h2 stream */
  sim_worker_t *w;
  const char *protocol;   /* "HTTP/1.1", "HTTP/1.0" or "HTTP/2" */
  ob_arena_t arena;       /* request strings; dies with the exchange */
  ob_iov_t method, path, authority;
  sim_hdr_t *hdrs;
  size_t nhdrs, hcap;
  ob_buf_t body;
  bool too_large;         /* body exceeded SIM_MAX_BODY and was dropped */

  /* --- owned by sim_api.c */
  int st;                 /* api state, see sim_api.c */
  bool counted;           /* counted in "requests": disposal before the end
                             counts as client_gone */
  struct event *timer;
  /* slot pool links; guarded by the slot mutex */
  int slot;               /* SIM_SLOT_* */
  sim_ex_t *qprev, *qnext;
  struct sim_gen *gen;    /* generation state, arena-allocated */
};

/* Prepare ex for a new request; ops/proto/protocol borrowed for its life. */
void sim_ex_init(sim_ex_t *ex, sim_worker_t *w, const sim_ex_ops_t *ops, void *proto,
                 const char *protocol);
/* Copy one header field into the exchange's arena, keeping receive order. */
void sim_ex_add_header(sim_ex_t *ex, const char *name, size_t nlen, const char *value,
                       size_t vlen);
/* The request is complete (headers and body); the api takes over. */
void sim_ex_dispatch(sim_ex_t *ex);
/* Release everything the exchange holds (timer, slot, queue place); an
 * exchange whose response had not ended counts as client_gone. */
void sim_ex_dispose(sim_ex_t *ex);
/* A queued exchange got its slot (called by the worker, on its thread). */
void sim_ex_on_grant(sim_ex_t *ex);
/* Append a JSON string literal; invalid UTF-8 becomes U+FFFD. */
void sim_json_str(ob_buf_t *b, ob_iov_t s);
/* Append a vLLM-shaped error object. */
void sim_error_json(ob_buf_t *b, int status, const char *msg);
/* The reason phrase for a status code ("Not Found"). */
const char *sim_reason(int status);

/* ---------------------------------------------------------------- slots */

/* Take a slot now (true) or join the FIFO queue (false; sim_ex_on_grant()
 * follows on ex's worker once a slot frees up). */
bool sim_slot_acquire(sim_ex_t *ex);
/* Give a held slot back; the head waiter, if any, inherits it. */
void sim_slot_release(sim_ex_t *ex);
/* Leave the queue, or give back a granted/held slot; no-op otherwise. */
void sim_slot_cancel(sim_ex_t *ex);
void sim_slot_counts(int64_t *in_flight, int64_t *queued);

/* ---------------------------------------------------------------- counters */

typedef struct sim_stats {
  atomic_uint_fast64_t requests, completed, aborted, client_gone;
  atomic_uint_fast64_t seq; /* request counter feeding ids and --fail-rate */
} sim_stats_t;

extern sim_stats_t sim_stats;

/* Count one request for "by_path" (path without the query). */
void sim_stats_count_path(ob_iov_t path);
/* Append the "by_path" object. */
void sim_stats_by_path_json(ob_buf_t *b);
void sim_stats_reset(void);

#endif /* OB_SIM_H */
