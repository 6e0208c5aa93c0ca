/*
 * obleth-sim internals shared by its five files: obleth-sim.c (flags,
 * workers, listeners, the global slot pool with its KV cache, and the
 * counters), sim_api.c (the OpenAI-compatible endpoints and the /sim/ hooks,
 * protocol-neutral), sim_metrics.c (the token counters, the time to first
 * token histogram and the Prometheus text of GET /metrics), sim_h1.c and
 * sim_h2.c (the two wire protocols).
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

#include "core.h" /* ob_buf_append_json_str: JSON strings, invalid UTF-8 as U+FFFD */
#include "http.h" /* ob_http_reason */

#define SIM_MAX_BODY ((size_t)32 << 20) /* request bodies above this get 413 */
#define SIM_MAX_HEAD ((size_t)64 << 10) /* request header block; 431 above */
#define SIM_MAX_HEADERS 256             /* header fields per request; 431 above */

/* ---------------------------------------------------------------- config */

/* Filled once by main() before any worker starts; read-only afterwards.
 * slots and kv_tokens are only the start values: POST /sim/config changes
 * the pool's copies (sim_pool_configure), which are what counts. */
typedef struct sim_config {
  int slots;             /* --slots: running sequences (global) */
  int64_t kv_tokens;     /* --kv-tokens: KV cache capacity in tokens; 0 unlimited */
  uint64_t ttft_ms;      /* --ttft-ms */
  uint64_t itl_ms;       /* --itl-ms */
  int64_t max_tokens;    /* --max-tokens: default output length */
  int64_t max_model_len; /* --max-model-len: prompt + output bound (400 above);
                            lowered to --kv-tokens when that is smaller */
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
  /* slot pool fields; guarded by the slot mutex */
  int slot;               /* SIM_SLOT_* */
  sim_ex_t *qprev, *qnext; /* the waiting queue, or a worker's mailbox */
  sim_ex_t *rprev, *rnext; /* the running list (GRANTED and HELD) */
  int64_t kv_held;        /* KV tokens held while running; while waiting,
                             the tokens to recompute before it can run */
  int64_t kv_extra;       /* 1: also needs room for its next token to start */
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
/* Append a vLLM-shaped error object. */
void sim_error_json(ob_buf_t *b, int status, const char *msg);

/* ---------------------------------------------------------------- slots */

/*
 * The pool is vLLM's scheduler in miniature: a sequence runs when a slot is
 * free (running < slots) and its KV fits (kv_used + its tokens <= kv_total,
 * or kv_total 0), and only if nobody waits ahead of it (FIFO, head of line
 * blocks). A running sequence holds its prompt plus the tokens generated so
 * far. Every function here takes the slot mutex; ex->slot and the other
 * pool fields are read and written only under it.
 *
 * Admission: sim_slot_acquire() runs ex at once (true) or queues it (false).
 * A queued ex is later GRANTED: it counts as running, its KV is reserved, it
 * sits in its worker's mailbox and sim_ex_on_grant() follows on that worker.
 *
 * Preemption: a running sequence can be preempted by another thread (a
 * sim_kv_grow() that needed room, or sim_pool_configure()). It then is
 * QUEUED again at the head of the waiting queue; its owner learns of it
 * when its own next sim_kv_grow() returns false, and resumes at its next
 * sim_ex_on_grant().
 */

/* Run ex now (true) or queue it (false). tokens: the prompt's KV. */
bool sim_slot_acquire(sim_ex_t *ex, int64_t tokens);
/* Leave the queue or give back a granted/held slot and its KV (whatever ex
 * has at the time, preempted or not); admits waiters that now fit. No-op for
 * an exchange without a slot. */
void sim_slot_release(sim_ex_t *ex);
/* KV for up to `want` more tokens of a running sequence, one token at a
 * time as far as the cache goes: each that would overflow it preempts the
 * newest running sequence first. Returns how many tokens got their KV; fewer
 * than `want` means ex is not running (preempted earlier, or just now
 * because it was the newest itself): generate only those, then wait for
 * sim_ex_on_grant(). */
int64_t sim_kv_grow(sim_ex_t *ex, int64_t want);

typedef struct sim_pool_stat {
  int64_t slots, kv_total;   /* current limits; kv_total 0 is unlimited */
  int64_t running, waiting;  /* sequences holding a slot / in the queue */
  int64_t kv_used;           /* tokens held by running sequences */
  uint64_t preemptions;      /* since start or the last /sim/reset */
} sim_pool_stat_t;

/* A consistent snapshot of the pool. */
void sim_pool_stat(sim_pool_stat_t *out);
/* New limits (a negative value keeps the current one). Lowering preempts
 * the newest running sequences until running <= slots and kv_used <=
 * kv_total; raising admits waiters. */
void sim_pool_configure(int64_t slots, int64_t kv_total);

/* ---------------------------------------------------------------- counters */

typedef struct sim_stats {
  atomic_uint_fast64_t requests, completed, aborted, client_gone;
  atomic_uint_fast64_t seq; /* request counter feeding ids and --fail-rate */
  atomic_uint_fast64_t prompt_tokens;     /* once per sequence, at its first start */
  atomic_uint_fast64_t generation_tokens; /* every token generated */
  atomic_uint_fast64_t metrics_scrapes;   /* GET /metrics answered 200 */
} sim_stats_t;

extern sim_stats_t sim_stats;
extern atomic_bool sim_metrics_on; /* --no-metrics, /sim/config "metrics" */

/* Count one request for "by_path" (path without the query). */
void sim_stats_count_path(ob_iov_t path);
/* Append the "by_path" object. */
void sim_stats_by_path_json(ob_buf_t *b);
void sim_stats_reset(void);

/* ---------------------------------------------------------------- metrics */

/* Record one time to first token (request received -> first token). */
void sim_metrics_ttft(uint64_t us);
/* Append the Prometheus text (format 0.0.4) of GET /metrics. */
void sim_metrics_render(ob_buf_t *b);
/* Zero the histogram (with /sim/reset). */
void sim_metrics_reset(void);

#endif /* OB_SIM_H */
