/*
 * obleth-sim: an honest stand-in for a vLLM OpenAI-compatible server, used by
 * every obleth test and benchmark as the upstream. This file owns the flags,
 * the worker threads and their listeners, the global slot pool (vLLM's
 * scheduler: max_num_seqs, the KV cache, the FIFO waiting queue and
 * preemption) and the counters behind /sim/stats. The endpoints live in
 * sim_api.c, /metrics in sim_metrics.c, the wire protocols in sim_h1.c and
 * sim_h2.c.
 *
 * Threads: --threads N runs N event loops, each with its own SO_REUSEPORT
 * listener on the same port; the kernel spreads connections over them. The
 * slot pool and its queue are global (one mutex), so --slots and
 * --kv-tokens mean the same thing whatever the thread count. A slot freed on
 * one thread is handed to the head waiter, which may live on another thread:
 * the grant goes into that worker's mailbox and its eventfd wakes it.
 *
 * KV cache (--kv-tokens N, 0 unlimited; in tokens, no blocks): a running
 * sequence holds its prompt (sim_api.c's estimate, ~4 characters a token)
 * plus every token generated so far. A sequence starts when a slot is free
 * and its prompt fits; otherwise it waits FIFO, and a head that does not fit
 * blocks those behind it, as vLLM's FCFS scheduler does. When a token would
 * overflow the cache, the newest running sequence is preempted (recompute):
 * it drops its KV, goes back to the head of the queue and later restarts
 * when its prompt plus its generated tokens fit again, with a new prefill
 * (--ttft-ms) before its next token. POST /sim/config changes --slots and
 * --kv-tokens at run time; lowering either preempts the newest sequences
 * until the running fit, raising admits waiters. The waiting queue is not
 * bounded by the cache: a sequence that cannot fit in the whole cache
 * (after a lowering) waits until the capacity is raised again, blocking
 * those behind it.
 *
 * Counters (/sim/stats): "requests" counts every non-/sim request (and not
 * GET /metrics) once it is fully received; each then ends as exactly one of
 * "completed" (last byte handed to the connection, error responses
 * included), "aborted" (--fail-rate or x-sim-abort-after) or "client_gone"
 * (connection closed or stream reset before the end, including while
 * waiting for a slot). "in_flight" (= "running") is sequences holding a
 * slot, "queued" (= "waiting") is waiters, preempted ones included.
 * /sim/reset zeroes the counters (preemptions and token totals too, so
 * /metrics counters restart from zero as after a process restart) and the
 * request sequence that feeds ids and --fail-rate, so a fresh sequence of
 * requests replays the same abort decisions (with several threads the order
 * across threads is up to the scheduler).
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/listener.h>

#include "sim.h"

sim_config_t sim_cfg = {
  .slots = 256,
  .kv_tokens = 0,
  .ttft_ms = 0,
  .itl_ms = 0,
  .max_tokens = 16,
  .max_model_len = 131072,
  .fail_rate = 0.0,
  .seed = 0,
  .h2c = false,
  .threads = 1,
  .model = "sim-model",
};

sim_stats_t sim_stats;
atomic_bool sim_metrics_on = true;

/* ---------------------------------------------------------------- slots */

static struct {
  pthread_mutex_t mu;
  int64_t slots;            /* cap on running sequences */
  int64_t kv_total;         /* KV capacity in tokens; 0 unlimited */
  int64_t running;          /* GRANTED + HELD */
  int64_t waiting;          /* QUEUED */
  int64_t kv_used;          /* sum of kv_held over the running */
  uint64_t preemptions;
  sim_ex_t *head, *tail;    /* waiting FIFO (qprev/qnext) */
  sim_ex_t *rhead, *rtail;  /* running, in (re)admission order: the tail is
                               the newest, the one preempted first */
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void list_unlink(sim_ex_t **head, sim_ex_t **tail, sim_ex_t *ex) {
  if (ex->qprev) ex->qprev->qnext = ex->qnext;
  else *head = ex->qnext;
  if (ex->qnext) ex->qnext->qprev = ex->qprev;
  else *tail = ex->qprev;
  ex->qprev = ex->qnext = NULL;
}

static void list_append(sim_ex_t **head, sim_ex_t **tail, sim_ex_t *ex) {
  ex->qnext = NULL;
  ex->qprev = *tail;
  if (*tail) (*tail)->qnext = ex;
  else *head = ex;
  *tail = ex;
}

static void list_prepend(sim_ex_t **head, sim_ex_t **tail, sim_ex_t *ex) {
  ex->qprev = NULL;
  ex->qnext = *head;
  if (*head) (*head)->qprev = ex;
  else *tail = ex;
  *head = ex;
}

static void wake(sim_worker_t *w) {
  uint64_t one = 1;
  ssize_t n = write(w->wake_fd, &one, sizeof one);
  (void)n; /* EAGAIN means the counter is already non-zero: wakes anyway */
}

/* All *_locked functions run with pool.mu held. */

static bool fits_locked(const sim_ex_t *ex) {
  if (pool.running >= pool.slots) return false;
  return pool.kv_total == 0 || pool.kv_used + ex->kv_held + ex->kv_extra <= pool.kv_total;
}

/* ex starts (or restarts) running: it takes a slot and its KV and becomes
 * the newest running sequence. */
static void run_locked(sim_ex_t *ex, int state) {
  ex->slot = state;
  ex->kv_extra = 0;
  pool.running++;
  pool.kv_used += ex->kv_held;
  ex->rnext = NULL;
  ex->rprev = pool.rtail;
  if (pool.rtail) pool.rtail->rnext = ex;
  else pool.rhead = ex;
  pool.rtail = ex;
}

/* ex (GRANTED or HELD) stops running: slot and KV go back to the pool. */
static void stop_locked(sim_ex_t *ex) {
  if (ex->slot == SIM_SLOT_GRANTED) list_unlink(&ex->w->mbox_head, &ex->w->mbox_tail, ex);
  if (ex->rprev) ex->rprev->rnext = ex->rnext;
  else pool.rhead = ex->rnext;
  if (ex->rnext) ex->rnext->rprev = ex->rprev;
  else pool.rtail = ex->rprev;
  ex->rprev = ex->rnext = NULL;
  pool.running--;
  pool.kv_used -= ex->kv_held;
}

/* vLLM's recompute preemption: the sequence drops its KV and goes back to
 * the head of the waiting queue, keeping kv_held (prompt + generated so far)
 * as what it must recompute to run again. Preempting the newest first and
 * prepending each keeps the waiting order the admission order. */
static void preempt_locked(sim_ex_t *ex) {
  stop_locked(ex);
  list_prepend(&pool.head, &pool.tail, ex);
  pool.waiting++;
  ex->slot = SIM_SLOT_QUEUED;
  pool.preemptions++;
}

/* Grant every head waiter that fits, in order, stopping at the first that
 * does not (FIFO: nobody overtakes it). The grant goes into the waiter's
 * worker mailbox; the eventfd write happens under the mutex, which is fine
 * (non-blocking, and the worker takes the mutex only after reading it). */
static void grant_waiters_locked(void) {
  while (pool.head && fits_locked(pool.head)) {
    sim_ex_t *ex = pool.head;
    list_unlink(&pool.head, &pool.tail, ex);
    pool.waiting--;
    run_locked(ex, SIM_SLOT_GRANTED);
    sim_worker_t *w = ex->w;
    bool was_empty = w->mbox_head == NULL;
    list_append(&w->mbox_head, &w->mbox_tail, ex);
    if (was_empty) wake(w);
  }
}

bool sim_slot_acquire(sim_ex_t *ex, int64_t tokens) {
  pthread_mutex_lock(&pool.mu);
  ex->kv_held = tokens;
  ex->kv_extra = 0;
  bool got = pool.head == NULL && fits_locked(ex);
  if (got) {
    run_locked(ex, SIM_SLOT_HELD);
  } else {
    list_append(&pool.head, &pool.tail, ex);
    pool.waiting++;
    ex->slot = SIM_SLOT_QUEUED;
  }
  pthread_mutex_unlock(&pool.mu);
  return got;
}

void sim_slot_release(sim_ex_t *ex) {
  pthread_mutex_lock(&pool.mu);
  switch (ex->slot) {
  case SIM_SLOT_QUEUED:
    list_unlink(&pool.head, &pool.tail, ex);
    pool.waiting--;
    break;
  case SIM_SLOT_GRANTED:
  case SIM_SLOT_HELD:
    stop_locked(ex);
    break;
  default:
    pthread_mutex_unlock(&pool.mu);
    return;
  }
  ex->slot = SIM_SLOT_NONE;
  ex->kv_held = 0;
  /* Also after a waiter left: it may have been the head that blocked. */
  grant_waiters_locked();
  pthread_mutex_unlock(&pool.mu);
}

int64_t sim_kv_grow(sim_ex_t *ex, int64_t want) {
  int64_t got = 0;
  pthread_mutex_lock(&pool.mu);
  while (got < want && ex->slot == SIM_SLOT_HELD) {
    if (pool.kv_total && pool.kv_used + 1 > pool.kv_total) {
      sim_ex_t *victim = pool.rtail;
      /* Alone in a cache it fills (the capacity was lowered under it):
       * restarting with what it holds would only preempt it again, so it
       * waits until there is room for one more token. */
      if (victim == ex && pool.rhead == ex) ex->kv_extra = 1;
      preempt_locked(victim); /* ex itself when it is the newest */
      continue;
    }
    /* As many as fit now; the next one, if any, preempts. */
    int64_t n = want - got;
    if (pool.kv_total && pool.kv_used + n > pool.kv_total) n = pool.kv_total - pool.kv_used;
    ex->kv_held += n;
    pool.kv_used += n;
    got += n;
  }
  pthread_mutex_unlock(&pool.mu);
  return got;
}

void sim_pool_stat(sim_pool_stat_t *out) {
  pthread_mutex_lock(&pool.mu);
  out->slots = pool.slots;
  out->kv_total = pool.kv_total;
  out->running = pool.running;
  out->waiting = pool.waiting;
  out->kv_used = pool.kv_used;
  out->preemptions = pool.preemptions;
  pthread_mutex_unlock(&pool.mu);
}

void sim_pool_configure(int64_t slots, int64_t kv_total) {
  pthread_mutex_lock(&pool.mu);
  if (slots >= 0) pool.slots = slots;
  if (kv_total >= 0) pool.kv_total = kv_total;
  while (pool.rtail &&
         (pool.running > pool.slots || (pool.kv_total && pool.kv_used > pool.kv_total)))
    preempt_locked(pool.rtail);
  grant_waiters_locked();
  pthread_mutex_unlock(&pool.mu);
}

/* Drain the mailbox one grant at a time: starting a grant may end other
 * exchanges of this worker (and so cancel their grants), which is safe only
 * while the rest of the list stays under the mutex. */
static void on_wake(evutil_socket_t fd, short what, void *arg) {
  sim_worker_t *w = arg;
  uint64_t v;
  ssize_t n = read(fd, &v, sizeof v);
  (void)n;
  for (;;) {
    /* Once HELD and unlocked, ex may be preempted again before
     * sim_ex_on_grant() runs; its next sim_kv_grow() says so. */
    pthread_mutex_lock(&pool.mu);
    sim_ex_t *ex = w->mbox_head;
    if (ex) {
      list_unlink(&w->mbox_head, &w->mbox_tail, ex);
      ex->slot = SIM_SLOT_HELD;
    }
    pthread_mutex_unlock(&pool.mu);
    if (!ex) break;
    sim_ex_on_grant(ex);
  }
}

/* ---------------------------------------------------------------- counters */

/* by_path: the four vLLM endpoints always appear; other paths are recorded
 * one by one up to a bound, then lumped under "other". */
#define N_OTHER 32
static const char *const known_paths[] = {
  "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
};
#define N_KNOWN (sizeof known_paths / sizeof known_paths[0])
static atomic_uint_fast64_t known_count[N_KNOWN];
static struct {
  pthread_mutex_t mu;
  char path[N_OTHER][128];
  uint64_t count[N_OTHER];
  int n;
  uint64_t rest;
} other = {.mu = PTHREAD_MUTEX_INITIALIZER};

void sim_stats_count_path(ob_iov_t path) {
  for (size_t i = 0; i < N_KNOWN; i++) {
    if (ob_iov_eq(path, ob_iov_str(known_paths[i]))) {
      atomic_fetch_add(&known_count[i], 1);
      return;
    }
  }
  pthread_mutex_lock(&other.mu);
  int i;
  for (i = 0; i < other.n; i++) {
    if (strlen(other.path[i]) == path.len && memcmp(other.path[i], path.base, path.len) == 0)
      break;
  }
  if (i == other.n && other.n < N_OTHER && path.len < sizeof other.path[0]) {
    memcpy(other.path[i], path.base, path.len);
    other.path[i][path.len] = '\0';
    other.count[i] = 0;
    other.n++;
  }
  if (i < other.n) other.count[i]++;
  else other.rest++;
  pthread_mutex_unlock(&other.mu);
}

void sim_stats_by_path_json(ob_buf_t *b) {
  ob_buf_append_str(b, "{");
  for (size_t i = 0; i < N_KNOWN; i++)
    ob_buf_printf(b, "%s\"%s\":%llu", i ? "," : "", known_paths[i],
                  (unsigned long long)atomic_load(&known_count[i]));
  pthread_mutex_lock(&other.mu);
  for (int i = 0; i < other.n; i++) {
    ob_buf_append_str(b, ",");
    ob_buf_append_json_str(b, ob_iov_str(other.path[i]));
    ob_buf_printf(b, ":%llu", (unsigned long long)other.count[i]);
  }
  if (other.rest) ob_buf_printf(b, ",\"other\":%llu", (unsigned long long)other.rest);
  pthread_mutex_unlock(&other.mu);
  ob_buf_append_str(b, "}");
}

void sim_stats_reset(void) {
  atomic_store(&sim_stats.requests, 0);
  atomic_store(&sim_stats.completed, 0);
  atomic_store(&sim_stats.aborted, 0);
  atomic_store(&sim_stats.client_gone, 0);
  atomic_store(&sim_stats.seq, 0);
  atomic_store(&sim_stats.prompt_tokens, 0);
  atomic_store(&sim_stats.generation_tokens, 0);
  atomic_store(&sim_stats.metrics_scrapes, 0);
  pthread_mutex_lock(&pool.mu);
  pool.preemptions = 0;
  pthread_mutex_unlock(&pool.mu);
  sim_metrics_reset();
  for (size_t i = 0; i < N_KNOWN; i++) atomic_store(&known_count[i], 0);
  pthread_mutex_lock(&other.mu);
  other.n = 0;
  other.rest = 0;
  pthread_mutex_unlock(&other.mu);
}

/* ---------------------------------------------------------------- listeners */

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg) {
  sim_worker_t *w = arg;
  int one = 1;
  /* Every token is its own write; Nagle would glue them together. */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (sim_cfg.h2c) sim_h2_accept(w, fd);
  else sim_h1_accept(w, fd);
}

static void on_accept_error(struct evconnlistener *l, void *arg) {
  int err = EVUTIL_SOCKET_ERROR();
  /* EMFILE and friends: log and keep going; the listener stays armed. */
  ob_log_warn("accept: %s", evutil_socket_error_to_string(err));
}

/* Split "HOST:PORT" / "[V6]:PORT"; host is written into hostbuf. */
static bool split_hostport(const char *s, char *hostbuf, size_t hostcap, const char **port) {
  const char *colon;
  if (s[0] == '[') {
    const char *end = strchr(s, ']');
    if (!end || end[1] != ':') return false;
    size_t n = (size_t)(end - s - 1);
    if (n + 1 > hostcap) return false;
    memcpy(hostbuf, s + 1, n);
    hostbuf[n] = '\0';
    colon = end + 1;
  } else {
    colon = strrchr(s, ':');
    if (!colon) return false;
    size_t n = (size_t)(colon - s);
    if (n + 1 > hostcap) return false;
    memcpy(hostbuf, s, n);
    hostbuf[n] = '\0';
  }
  *port = colon + 1;
  return **port != '\0';
}

/* Bind one listening socket; *port_io is 0 for "pick one" and is set to the
 * bound port so the next worker binds the same one. */
static int bind_listener(const char *host, int *port_io, bool reuseport) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *res = NULL;
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", *port_io);
  int rc = getaddrinfo(host[0] ? host : NULL, portstr, &hints, &res);
  if (rc != 0) {
    ob_log_error("resolve %s: %s", host, gai_strerror(rc));
    return -1;
  }
  int fd = -1;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0) break;
    ob_log_error("bind %s:%d: %s", host, *port_io, strerror(errno));
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) return -1;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
    if (ss.ss_family == AF_INET) *port_io = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    else if (ss.ss_family == AF_INET6) *port_io = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  }
  return fd;
}

static void *worker_main(void *arg) {
  sim_worker_t *w = arg;
  event_base_dispatch(w->base);
  return NULL;
}

/* ---------------------------------------------------------------- flags */

static void usage(FILE *f) {
  fprintf(f,
    "usage: obleth-sim [options]\n"
    "  A vLLM-shaped OpenAI-compatible upstream simulator for obleth tests.\n"
    "\n"
    "  --listen HOST:PORT   address to listen on (default 127.0.0.1:0; port 0 picks\n"
    "                       one); prints 'listening on HOST:PORT' once bound\n"
    "  --slots N            running sequences (default 256); more wait FIFO\n"
    "  --kv-tokens N        KV cache capacity in tokens (default 0: unlimited). A\n"
    "                       running sequence holds its prompt (~4 characters a\n"
    "                       token) plus its generated tokens; a new one starts\n"
    "                       only when its prompt fits, else it waits FIFO; when a\n"
    "                       token would overflow the cache the newest running\n"
    "                       sequence is preempted, re-queued at the head and\n"
    "                       recomputed later. Caps --max-model-len at N\n"
    "  --ttft-ms N          slot acquired -> first token (default 0); also the\n"
    "                       recompute of a preempted sequence before its next one\n"
    "  --itl-ms N           delay per further token (default 0)\n"
    "  --max-tokens N       output length when the request sets none (default 16)\n"
    "  --max-model-len N    prompt + output token bound, 400 above (default 131072)\n"
    "  --model NAME         model listed by /v1/models (default sim-model)\n"
    "  --fail-rate P        fraction 0..1 of generations aborted mid-response\n"
    "  --seed N             seed for --fail-rate decisions (default 0)\n"
    "  --h2c                speak HTTP/2 with prior knowledge instead of HTTP/1.1\n"
    "  --threads N          event loops sharing the port via SO_REUSEPORT (default 1)\n"
    "  --no-metrics         answer 404 to GET /metrics (a backend without metrics)\n"
    "  --help               this text\n"
    "\n"
    "Request headers: x-sim-abort-after: N, x-sim-delay-ms: N, x-sim-status: NNN.\n"
    "Metrics: GET /metrics, Prometheus text in vLLM's names (model_name label):\n"
    "  vllm:num_requests_running, vllm:num_requests_waiting,\n"
    "  vllm:kv_cache_usage_perc (and vllm:gpu_cache_usage_perc; 0..1, 0 when the\n"
    "  cache is unlimited), vllm:num_preemptions_total, vllm:prompt_tokens_total,\n"
    "  vllm:generation_tokens_total, vllm:time_to_first_token_seconds.\n"
    "Hooks: GET /sim/stats, POST /sim/reset, ANY /sim/echo[/...],\n"
    "  GET /sim/config, POST /sim/config {\"slots\": N, \"kv_tokens\": N,\n"
    "  \"metrics\": BOOL} (any subset): lowering slots or kv_tokens preempts\n"
    "  the newest running sequences until the rest fit; raising admits waiters.\n");
}

static bool parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

int main(int argc, char **argv) {
  const char *listen_addr = "127.0.0.1:0";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    int64_t n;
    bool ok = true, takes = true;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--h2c")) {
      sim_cfg.h2c = true;
      takes = false;
    } else if (!strcmp(a, "--no-metrics")) {
      atomic_store(&sim_metrics_on, false);
      takes = false;
    } else if (!v) {
      ok = false;
    } else if (!strcmp(a, "--listen")) {
      listen_addr = v;
    } else if (!strcmp(a, "--slots")) {
      ok = parse_i64(v, 1, 1 << 24, &n);
      sim_cfg.slots = (int)n;
    } else if (!strcmp(a, "--kv-tokens")) {
      ok = parse_i64(v, 0, INT32_MAX, &n);
      sim_cfg.kv_tokens = n;
    } else if (!strcmp(a, "--ttft-ms")) {
      ok = parse_i64(v, 0, 86400000, &n);
      sim_cfg.ttft_ms = (uint64_t)n;
    } else if (!strcmp(a, "--itl-ms")) {
      ok = parse_i64(v, 0, 86400000, &n);
      sim_cfg.itl_ms = (uint64_t)n;
    } else if (!strcmp(a, "--max-tokens")) {
      ok = parse_i64(v, 1, 1 << 24, &n);
      sim_cfg.max_tokens = n;
    } else if (!strcmp(a, "--max-model-len")) {
      ok = parse_i64(v, 1, INT32_MAX, &n);
      sim_cfg.max_model_len = n;
    } else if (!strcmp(a, "--model")) {
      sim_cfg.model = v;
    } else if (!strcmp(a, "--fail-rate")) {
      char *end;
      double p = strtod(v, &end);
      ok = end != v && !*end && p >= 0.0 && p <= 1.0;
      sim_cfg.fail_rate = p;
    } else if (!strcmp(a, "--seed")) {
      ok = parse_i64(v, INT64_MIN, INT64_MAX, &n);
      sim_cfg.seed = (uint64_t)n;
    } else if (!strcmp(a, "--threads")) {
      ok = parse_i64(v, 1, 1024, &n);
      sim_cfg.threads = (int)n;
    } else {
      fprintf(stderr, "obleth-sim: unknown option %s\n", a);
      usage(stderr);
      return 2;
    }
    if (!ok) {
      fprintf(stderr, "obleth-sim: bad or missing value for %s\n", a);
      return 2;
    }
    if (takes) i++;
  }

  /* vLLM refuses a max_model_len its KV cache cannot hold; the sim lowers
   * it instead, so every request it accepts can run alone in the cache. */
  if (sim_cfg.kv_tokens > 0 && sim_cfg.kv_tokens < sim_cfg.max_model_len)
    sim_cfg.max_model_len = sim_cfg.kv_tokens;
  sim_pool_configure(sim_cfg.slots, sim_cfg.kv_tokens);

  char host[256];
  const char *portstr;
  int64_t port64;
  if (!split_hostport(listen_addr, host, sizeof host, &portstr) ||
      !parse_i64(portstr, 0, 65535, &port64)) {
    fprintf(stderr, "obleth-sim: --listen wants HOST:PORT, got %s\n", listen_addr);
    return 2;
  }

  /* Block the stop signals in every thread; main waits for them below. */
  signal(SIGPIPE, SIG_IGN);
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, NULL);

  int nw = sim_cfg.threads;
  sim_worker_t *workers = ob_xcalloc((size_t)nw, sizeof *workers);
  int port = (int)port64;
  struct event_config *ecfg = event_config_new();
  /* NOLOCK: a base is touched by its own thread only (grants use eventfd).
   * PRECISE_TIMER: timerfd instead of epoll's millisecond rounding, which
   * would turn --itl-ms 1 into ~2 ms. */
  event_config_set_flag(ecfg, EVENT_BASE_FLAG_NOLOCK | EVENT_BASE_FLAG_PRECISE_TIMER);
  for (int i = 0; i < nw; i++) {
    sim_worker_t *w = &workers[i];
    w->id = i;
    w->base = event_base_new_with_config(ecfg);
    if (!w->base) {
      ob_log_error("event_base_new failed");
      return 1;
    }
    w->listen_fd = bind_listener(host, &port, nw > 1);
    if (w->listen_fd < 0) return 1;
    w->listener = evconnlistener_new(w->base, on_accept, w, LEV_OPT_CLOSE_ON_FREE, -1,
                                     w->listen_fd);
    if (!w->listener) {
      ob_log_error("evconnlistener_new failed");
      return 1;
    }
    evconnlistener_set_error_cb(w->listener, on_accept_error);
    w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->wake_fd < 0) {
      ob_log_error("eventfd: %s", strerror(errno));
      return 1;
    }
    w->wake_ev = event_new(w->base, w->wake_fd, EV_READ | EV_PERSIST, on_wake, w);
    event_add(w->wake_ev, NULL);
  }
  event_config_free(ecfg);

  if (strchr(host, ':')) printf("listening on [%s]:%d\n", host, port);
  else printf("listening on %s:%d\n", host, port);
  fflush(stdout);

  for (int i = 0; i < nw; i++) {
    if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) {
      ob_log_error("pthread_create failed");
      return 1;
    }
  }
  int sig = 0;
  sigwait(&stop, &sig);
  /* Connections and exchanges die with the process; nothing is persistent. */
  return 0;
}
