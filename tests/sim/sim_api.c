/*
 * sim_api: the endpoints of obleth-sim, independent of the wire protocol.
 * It owns an exchange from sim_ex_dispatch() until it calls finish() or
 * abort(): routing, request validation, the slot, the token timer and the
 * response bytes. It never touches sockets; sim_h1.c and sim_h2.c do.
 *
 * Life of a generation request (chat, completions, embeddings):
 *   dispatch -> [x-sim-delay-ms timer] -> validate -> (stream: send headers)
 *   -> acquire a slot and the prompt's KV (or wait FIFO) -> ttft timer ->
 *   one timer per token (itl) -> release the slot -> finish / abort.
 * Streaming headers go out before the slot is taken, as vLLM's
 * StreamingResponse does: a queued streaming request has a 200 and no bytes.
 * A non-streaming response is sent whole when its last token is "generated";
 * its tokens are generated one by one on the same timeline as a stream's
 * (all due tokens at once when the timer fires late or --itl-ms is 0), so
 * both grow their KV alike. One timer per exchange drives every step.
 *
 * KV and preemption: each token first takes one KV token (sim_kv_grow()).
 * When that says the sequence is no longer running (another thread
 * preempted it, or it preempted itself), the token is not generated and the
 * exchange idles, still ST_RUN, until sim_ex_on_grant() resumes it: a new
 * run starts then, with its own prefill (--ttft-ms) before the next token,
 * then --itl-ms per token. A stream shows a preemption as a pause, nothing
 * else; the tokens are the same. The timer may still be armed while
 * preempted; it finds the sequence not running and does nothing, or the
 * resume re-arms it first.
 *
 * Determinism: the output tokens depend only on the prompt (chat: roles and
 * message texts; completions: the prompt; not on "stream", "model" or
 * max_tokens, so a shorter answer is a prefix of a longer one). "id" is a
 * hash of the body and a per-process request counter, so it differs between
 * otherwise identical requests; "created" is the wall clock.
 * prompt_tokens = ceil(characters / 4) (characters counted as UTF-8 code
 * points; chat: the message texts, not the roles) plus the number of token
 * ids given as integers, at least 1 (per input for embeddings, summed). That
 * estimate is also what the prompt holds in the KV cache, so a long-context
 * request really costs more.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "sim.h"

enum { ST_NEW, ST_DELAY, ST_QUEUED, ST_RUN, ST_DONE };
enum { EP_CHAT, EP_COMPLETIONS, EP_EMBEDDINGS };

typedef struct sim_gen {
  int kind;
  bool stream, include_usage, length_limited, role_sent;
  ob_iov_t model;
  uint64_t phash;          /* prompt hash: picks the tokens */
  int64_t n;               /* tokens to generate */
  int64_t prompt_tokens;
  int64_t abort_at;        /* abort after this many tokens; -1 never */
  int64_t sent;            /* tokens generated (and, streaming, emitted) */
  int64_t base;            /* tokens generated before this run began */
  bool started;            /* ran once: prompt tokens counted */
  bool ttft_seen;          /* first token recorded in the histogram */
  long long created;
  uint64_t arrival_us;     /* validated: time to first token counts from here */
  uint64_t t0_us;          /* slot acquired (again): this run's timeline starts */
  char id[64];
  ob_iov_t prefix;         /* SSE chunk prefix up to "choices":[ */
  uint64_t *inputs;        /* embeddings: one hash per input */
  size_t ninputs;
} sim_gen_t;

/* ---------------------------------------------------------------- hashing */

static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

#define FNV_INIT 0xcbf29ce484222325ULL

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
  const unsigned char *s = p;
  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

static const char *const words[] = {
  "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was",
  "on", "be", "by", "this", "are", "from", "at", "or", "an", "which", "have", "not",
  "model", "token", "stream", "queue", "slot", "tenant", "share", "fair", "proxy",
  "request", "response", "upstream", "latency", "budget", "window", "batch", "cache",
  "prefix", "kernel", "tensor", "vector", "matrix", "signal", "packet", "header",
  "river", "stone", "cloud", "light", "green", "quiet", "north", "paper", "glass",
  "sound", "field", "frame", "orbit", "delta", "amber",
};
#define N_WORDS (sizeof words / sizeof words[0])

static const char *token_at(uint64_t phash, int64_t i) {
  return words[mix64(phash + 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1)) % N_WORDS];
}

/* ---------------------------------------------------------------- JSON out */

void sim_error_json(ob_buf_t *b, int status, const char *msg) {
  /* vLLM's ErrorResponse; the type is the reason phrase in CamelCase plus
   * "Error" (404 -> NotFoundError, 400 -> BadRequestError). */
  char type[64];
  size_t n = 0;
  for (const char *r = ob_http_reason(status); *r && n < sizeof type - 6; r++)
    if ((*r >= 'A' && *r <= 'Z') || (*r >= 'a' && *r <= 'z')) type[n++] = *r;
  type[n] = '\0';
  if (n < 5 || strcmp(type + n - 5, "Error") != 0) memcpy(type + n, "Error", 6);
  ob_buf_append_str(b, "{\"object\":\"error\",\"message\":");
  ob_buf_append_json_str(b, ob_iov_str(msg));
  ob_buf_printf(b, ",\"type\":\"%s\",\"param\":null,\"code\":%d}", type, status);
}

/* ---------------------------------------------------------------- exchange */

void sim_ex_init(sim_ex_t *ex, sim_worker_t *w, const sim_ex_ops_t *ops, void *proto,
                 const char *protocol) {
  memset(ex, 0, sizeof *ex);
  ex->w = w;
  ex->ops = ops;
  ex->proto = proto;
  ex->protocol = protocol;
  ob_arena_init(&ex->arena, 2048);
  ob_buf_init(&ex->body);
  ex->st = ST_NEW;
  ex->slot = SIM_SLOT_NONE;
}

void sim_ex_add_header(sim_ex_t *ex, const char *name, size_t nlen, const char *value,
                       size_t vlen) {
  if (ex->nhdrs == ex->hcap) {
    ex->hcap = ex->hcap ? ex->hcap * 2 : 16;
    ex->hdrs = ob_xrealloc(ex->hdrs, ex->hcap * sizeof *ex->hdrs);
  }
  sim_hdr_t *h = &ex->hdrs[ex->nhdrs++];
  h->name = ob_arena_dup(&ex->arena, ob_iov(name, nlen));
  h->value = ob_arena_dup(&ex->arena, ob_iov(value, vlen));
}

void sim_ex_dispose(sim_ex_t *ex) {
  if (!ex->ops) return;
  if (ex->timer) {
    event_free(ex->timer);
    ex->timer = NULL;
  }
  /* Only QUEUED and RUN can hold a queue place or a slot (a preempted RUN
   * is queued); the pool sorts out which under its mutex. */
  if (ex->st == ST_QUEUED || ex->st == ST_RUN) sim_slot_release(ex);
  if (ex->counted && ex->st != ST_DONE) atomic_fetch_add(&sim_stats.client_gone, 1);
  free(ex->hdrs);
  ex->hdrs = NULL;
  ob_buf_dispose(&ex->body);
  ob_arena_dispose(&ex->arena);
  ex->ops = NULL;
}

static const sim_hdr_t *find_header(const sim_ex_t *ex, const char *name) {
  for (size_t i = 0; i < ex->nhdrs; i++)
    if (ob_iov_eq_str_nocase(ex->hdrs[i].name, name)) return &ex->hdrs[i];
  return NULL;
}

static bool header_u64(const sim_ex_t *ex, const char *name, uint64_t *out) {
  const sim_hdr_t *h = find_header(ex, name);
  return h && ob_iov_to_u64(ob_iov_trim(h->value), out);
}

static void on_timer(evutil_socket_t fd, short what, void *arg);

static void arm_us(sim_ex_t *ex, uint64_t us) {
  if (!ex->timer) ex->timer = evtimer_new(ex->w->base, on_timer, ex);
  struct timeval tv = {.tv_sec = (time_t)(us / 1000000), .tv_usec = (suseconds_t)(us % 1000000)};
  evtimer_add(ex->timer, &tv);
}

static void arm(sim_ex_t *ex, uint64_t ms) { arm_us(ex, ms * 1000); }

/* The token timeline of one run, absolute so that per-token processing
 * does not accumulate as drift: token k (k > base) is due at
 * t0 + ttft + (k - base - 1) * itl. */
static uint64_t token_due(const sim_gen_t *g, int64_t k) {
  return g->t0_us + (sim_cfg.ttft_ms + (uint64_t)(k - g->base - 1) * sim_cfg.itl_ms) * 1000;
}

static void arm_token(sim_ex_t *ex, int64_t k) {
  uint64_t due = token_due(ex->gen, k);
  uint64_t now = ob_clock_us();
  arm_us(ex, due > now ? due - now : 0);
}

/* Generate up to `want` tokens after sent: take their KV, count them.
 * False when fewer were generated because the sequence is not running
 * (preempted); it then waits for its resume. */
static bool gen_tokens(sim_ex_t *ex, int64_t want) {
  sim_gen_t *g = ex->gen;
  int64_t got = sim_kv_grow(ex, want);
  if (got > 0) {
    g->sent += got;
    atomic_fetch_add(&sim_stats.generation_tokens, (uint_fast64_t)got);
    if (!g->ttft_seen) {
      g->ttft_seen = true;
      sim_metrics_ttft(ob_clock_us() - g->arrival_us);
    }
  }
  return got == want;
}

/* The three ways a response ends; each is the api's last touch of ex. */
static void end_finish(sim_ex_t *ex) {
  if (ex->st == ST_RUN) sim_slot_release(ex);
  ex->st = ST_DONE;
  if (ex->counted) atomic_fetch_add(&sim_stats.completed, 1);
  ex->ops->finish(ex);
}

static void end_abort(sim_ex_t *ex) {
  if (ex->st == ST_RUN) sim_slot_release(ex);
  ex->st = ST_DONE;
  if (ex->counted) atomic_fetch_add(&sim_stats.aborted, 1);
  ex->ops->abort(ex);
}

static void reply(sim_ex_t *ex, int status, const char *ctype, const ob_buf_t *b) {
  bool bodyless = status == 204 || status == 304;
  ex->ops->head(ex, status, ctype, bodyless ? 0 : (int64_t)b->len);
  if (!bodyless) ex->ops->body(ex, b->base, b->len);
  end_finish(ex);
}

static void reply_error(sim_ex_t *ex, int status, const char *msg) {
  ob_buf_t *b = &ex->w->scratch;
  ob_buf_reset(b);
  sim_error_json(b, status, msg);
  reply(ex, status, "application/json", b);
}

/* ---------------------------------------------------------------- /sim/... */

static void sim_echo(sim_ex_t *ex) {
  ob_buf_t *b = &ex->w->scratch;
  ob_buf_reset(b);
  ob_buf_append_str(b, "{\"method\":");
  ob_buf_append_json_str(b, ex->method);
  ob_buf_append_str(b, ",\"path\":");
  ob_buf_append_json_str(b, ex->path);
  ob_buf_append_str(b, ",\"authority\":");
  ob_buf_append_json_str(b, ex->authority);
  ob_buf_append_str(b, ",\"protocol\":");
  ob_buf_append_json_str(b, ob_iov_str(ex->protocol));
  ob_buf_append_str(b, ",\"headers\":[");
  for (size_t i = 0; i < ex->nhdrs; i++) {
    ob_buf_append_str(b, i ? ",[" : "[");
    ob_buf_append_json_str(b, ex->hdrs[i].name);
    ob_buf_append_str(b, ",");
    ob_buf_append_json_str(b, ex->hdrs[i].value);
    ob_buf_append_str(b, "]");
  }
  ob_buf_append_str(b, "],\"body\":");
  ob_buf_append_json_str(b, ob_buf_iov(&ex->body));
  ob_buf_append_str(b, "}");
  reply(ex, 200, "application/json", b);
}

/* "in_flight"/"queued" are the historical names of "running"/"waiting";
 * "kv_tokens_total" 0 means unlimited. The pool fields come from one
 * snapshot, as in /metrics. */
static void sim_stats_reply(sim_ex_t *ex) {
  sim_pool_stat_t ps;
  sim_pool_stat(&ps);
  ob_buf_t *b = &ex->w->scratch;
  ob_buf_reset(b);
  ob_buf_printf(b,
                "{\"requests\":%llu,\"in_flight\":%lld,\"queued\":%lld,\"completed\":%llu,"
                "\"aborted\":%llu,\"client_gone\":%llu,\"slots\":%lld,\"threads\":%d,"
                "\"running\":%lld,\"waiting\":%lld,\"kv_tokens_used\":%lld,"
                "\"kv_tokens_total\":%lld,\"preemptions\":%llu,\"prompt_tokens\":%llu,"
                "\"generation_tokens\":%llu,\"metrics_scrapes\":%llu,\"by_path\":",
                (unsigned long long)atomic_load(&sim_stats.requests), (long long)ps.running,
                (long long)ps.waiting, (unsigned long long)atomic_load(&sim_stats.completed),
                (unsigned long long)atomic_load(&sim_stats.aborted),
                (unsigned long long)atomic_load(&sim_stats.client_gone), (long long)ps.slots,
                sim_cfg.threads, (long long)ps.running, (long long)ps.waiting,
                (long long)ps.kv_used, (long long)ps.kv_total,
                (unsigned long long)ps.preemptions,
                (unsigned long long)atomic_load(&sim_stats.prompt_tokens),
                (unsigned long long)atomic_load(&sim_stats.generation_tokens),
                (unsigned long long)atomic_load(&sim_stats.metrics_scrapes));
  sim_stats_by_path_json(b);
  ob_buf_append_str(b, "}");
  reply(ex, 200, "application/json", b);
}

static void sim_config_json(ob_buf_t *b) {
  sim_pool_stat_t ps;
  sim_pool_stat(&ps);
  ob_buf_printf(b, "{\"slots\":%lld,\"kv_tokens\":%lld,\"metrics\":%s}", (long long)ps.slots,
                (long long)ps.kv_total, atomic_load(&sim_metrics_on) ? "true" : "false");
}

/* An integer member of /sim/config in [lo, hi]; *out untouched when absent. */
static bool config_int(const cJSON *it, int64_t lo, int64_t hi, int64_t *out) {
  if (!cJSON_IsNumber(it)) return false;
  double v = it->valuedouble;
  if (!(v == floor(v)) || v < (double)lo || v > (double)hi) return false;
  *out = (int64_t)v;
  return true;
}

/* GET: the current values. POST: a JSON object with any of "slots" (1 ..
 * 2^24), "kv_tokens" (0 .. 2^31-1, 0 unlimited) and "metrics" (bool); all
 * are checked before anything changes, unknown members are a 400 (a typo in
 * a test must not pass silently). Answers the values now in force. */
static void sim_config(sim_ex_t *ex) {
  bool get = ob_iov_eq(ex->method, OB_IOV_LIT("GET"));
  if (!get && !ob_iov_eq(ex->method, OB_IOV_LIT("POST"))) {
    reply_error(ex, 405, "Method Not Allowed");
    return;
  }
  if (!get) {
    cJSON *j = cJSON_ParseWithLength(ex->body.base ? ex->body.base : "", ex->body.len);
    const char *err = NULL;
    int64_t slots = -1, kv = -1;
    int metrics = -1;
    if (!cJSON_IsObject(j)) {
      err = "/sim/config wants a JSON object";
    } else {
      const cJSON *it;
      cJSON_ArrayForEach(it, j) {
        if (!strcmp(it->string, "slots")) {
          if (!config_int(it, 1, 1 << 24, &slots)) err = "'slots' must be an integer >= 1";
        } else if (!strcmp(it->string, "kv_tokens")) {
          if (!config_int(it, 0, INT32_MAX, &kv))
            err = "'kv_tokens' must be an integer >= 0 (0: unlimited)";
        } else if (!strcmp(it->string, "metrics")) {
          if (!cJSON_IsBool(it)) err = "'metrics' must be true or false";
          else metrics = cJSON_IsTrue(it);
        } else {
          err = "unknown member; /sim/config takes slots, kv_tokens and metrics";
        }
        if (err) break;
      }
    }
    cJSON_Delete(j);
    if (err) {
      reply_error(ex, 400, err);
      return;
    }
    if (metrics >= 0) atomic_store(&sim_metrics_on, metrics == 1);
    if (slots >= 0 || kv >= 0) sim_pool_configure(slots, kv);
  }
  ob_buf_t *b = &ex->w->scratch;
  ob_buf_reset(b);
  sim_config_json(b);
  reply(ex, 200, "application/json", b);
}

/* GET /metrics: like vLLM's, not a generation request, so it is not counted
 * in "requests" (a gateway scraping it must not disturb request counts);
 * "metrics_scrapes" counts it instead. */
static void metrics_reply(sim_ex_t *ex) {
  if (!atomic_load(&sim_metrics_on)) {
    reply_error(ex, 404, "The path /metrics was not found.");
    return;
  }
  if (!ob_iov_eq(ex->method, OB_IOV_LIT("GET"))) {
    reply_error(ex, 405, "Method Not Allowed");
    return;
  }
  atomic_fetch_add(&sim_stats.metrics_scrapes, 1);
  ob_buf_t *b = &ex->w->scratch;
  ob_buf_reset(b);
  sim_metrics_render(b);
  reply(ex, 200, "text/plain; version=0.0.4; charset=utf-8", b);
}

static void handle_sim(sim_ex_t *ex, ob_iov_t path) {
  if (ex->too_large) {
    reply_error(ex, 413, "request body too large");
  } else if (ob_iov_eq(path, OB_IOV_LIT("/sim/echo")) ||
             ob_iov_starts_with(path, OB_IOV_LIT("/sim/echo/"))) {
    sim_echo(ex);
  } else if (ob_iov_eq(path, OB_IOV_LIT("/sim/stats"))) {
    sim_stats_reply(ex);
  } else if (ob_iov_eq(path, OB_IOV_LIT("/sim/config"))) {
    sim_config(ex);
  } else if (ob_iov_eq(path, OB_IOV_LIT("/sim/reset"))) {
    sim_stats_reset();
    ob_buf_t *b = &ex->w->scratch;
    ob_buf_reset(b);
    ob_buf_append_str(b, "{\"ok\":true}");
    reply(ex, 200, "application/json", b);
  } else {
    reply_error(ex, 404, "no such /sim endpoint");
  }
}

/* ---------------------------------------------------------------- requests */

typedef struct prompt_acc {
  uint64_t h;
  uint64_t chars;
  uint64_t ids; /* prompts given as token ids */
} prompt_acc_t;

static void acc_text(prompt_acc_t *a, const char *s) {
  size_t n = strlen(s);
  a->h = fnv1a(a->h, s, n + 1); /* the NUL separates parts */
  for (size_t i = 0; i < n; i++)
    if (((unsigned char)s[i] & 0xc0) != 0x80) a->chars++;
}

static void acc_id(prompt_acc_t *a, double v) {
  long long id = v > -9e18 && v < 9e18 ? (long long)v : 0;
  a->h = fnv1a(a->h, &id, sizeof id);
  a->ids++;
}

static int64_t acc_tokens(const prompt_acc_t *a) {
  int64_t t = (int64_t)((a->chars + 3) / 4 + a->ids);
  return t < 1 ? 1 : t;
}

/* One prompt in the completions/embeddings forms: a string or an array of
 * token ids. */
static bool acc_prompt_item(prompt_acc_t *a, const cJSON *it) {
  if (cJSON_IsString(it)) {
    acc_text(a, it->valuestring);
    return true;
  }
  if (!cJSON_IsArray(it)) return false;
  const cJSON *t;
  cJSON_ArrayForEach(t, it) {
    if (!cJSON_IsNumber(t)) return false;
    acc_id(a, t->valuedouble);
  }
  return true;
}

/* Messages: roles and texts (string content or an array of parts with
 * "text"); both feed the hash, only the texts count as characters. */
static const char *acc_messages(prompt_acc_t *a, const cJSON *msgs) {
  if (!cJSON_IsArray(msgs)) return "'messages' must be an array";
  const cJSON *m;
  cJSON_ArrayForEach(m, msgs) {
    if (!cJSON_IsObject(m)) return "each message must be an object";
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    if (!cJSON_IsString(role)) return "each message needs a string 'role'";
    a->h = fnv1a(a->h, role->valuestring, strlen(role->valuestring) + 1);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!c || cJSON_IsNull(c)) continue;
    if (cJSON_IsString(c)) {
      acc_text(a, c->valuestring);
    } else if (cJSON_IsArray(c)) {
      const cJSON *part;
      cJSON_ArrayForEach(part, c) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (cJSON_IsString(t)) acc_text(a, t->valuestring);
      }
    } else {
      return "message 'content' must be a string, an array or null";
    }
  }
  return NULL;
}

/* Validate the body and fill ex->gen; returns an error message (400) or NULL. */
static const char *parse_gen(sim_ex_t *ex, int kind, char *errbuf, size_t errcap) {
  cJSON *j = cJSON_ParseWithLength(ex->body.base ? ex->body.base : "", ex->body.len);
  if (!j) return "request body is not valid JSON";
  const char *err = NULL;
  sim_gen_t *g = ob_arena_alloc(&ex->arena, sizeof *g);
  memset(g, 0, sizeof *g);
  ex->gen = g;
  g->kind = kind;
  g->abort_at = -1;
  prompt_acc_t a = {.h = FNV_INIT};

  if (!cJSON_IsObject(j)) {
    err = "request body must be a JSON object";
    goto out;
  }
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
  g->model = ob_arena_dup(&ex->arena, ob_iov_str(cJSON_IsString(model) ? model->valuestring
                                                                       : sim_cfg.model));
  if (kind == EP_CHAT) {
    err = acc_messages(&a, cJSON_GetObjectItemCaseSensitive(j, "messages"));
    if (err) goto out;
    g->prompt_tokens = acc_tokens(&a);
  } else {
    const char *field = kind == EP_EMBEDDINGS ? "input" : "prompt";
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, field);
    /* A list of strings or a list of id lists is several prompts; a list of
     * numbers is one prompt of token ids. */
    bool many = cJSON_IsArray(p) && p->child && !cJSON_IsNumber(p->child);
    size_t count = many ? (size_t)cJSON_GetArraySize(p) : 1;
    if (!p || (cJSON_IsArray(p) && !p->child)) {
      snprintf(errbuf, errcap, "'%s' must be a non-empty string or array", field);
      err = errbuf;
      goto out;
    }
    g->inputs = ob_arena_alloc(&ex->arena, count * sizeof *g->inputs);
    g->ninputs = count;
    const cJSON *it = many ? p->child : p;
    for (size_t i = 0; i < count; i++, it = it ? it->next : NULL) {
      prompt_acc_t one = {.h = FNV_INIT};
      if (!acc_prompt_item(&one, it)) {
        snprintf(errbuf, errcap, "'%s' must be a string, a list of strings or token ids",
                 field);
        err = errbuf;
        goto out;
      }
      g->inputs[i] = one.h;
      g->prompt_tokens += acc_tokens(&one);
      a.h = fnv1a(a.h, &one.h, sizeof one.h);
    }
  }
  g->phash = mix64(a.h);

  if (kind != EP_EMBEDDINGS) {
    const cJSON *mt = NULL;
    if (kind == EP_CHAT) mt = cJSON_GetObjectItemCaseSensitive(j, "max_completion_tokens");
    if (!mt || cJSON_IsNull(mt)) mt = cJSON_GetObjectItemCaseSensitive(j, "max_tokens");
    if (mt && !cJSON_IsNull(mt)) {
      double v = cJSON_IsNumber(mt) ? mt->valuedouble : NAN;
      if (!(v == floor(v)) || v > 1e12 || v < -1e12) {
        err = "max_tokens must be an integer";
        goto out;
      }
      if (v < 1) {
        snprintf(errbuf, errcap, "max_tokens must be at least 1, got %lld.", (long long)v);
        err = errbuf;
        goto out;
      }
      g->n = (int64_t)v;
      g->length_limited = true;
    } else {
      g->n = sim_cfg.max_tokens;
      if (g->n > sim_cfg.max_model_len - g->prompt_tokens)
        g->n = sim_cfg.max_model_len - g->prompt_tokens;
    }
    if (g->n < 1 || g->prompt_tokens + g->n > sim_cfg.max_model_len) {
      snprintf(errbuf, errcap,
               "This model's maximum context length is %lld tokens. However, you requested "
               "%lld tokens (%lld in the messages, %lld in the completion). Please reduce the "
               "length of the messages or completion.",
               (long long)sim_cfg.max_model_len, (long long)(g->prompt_tokens + g->n),
               (long long)g->prompt_tokens, (long long)g->n);
      err = errbuf;
      goto out;
    }
    g->stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "stream"));
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(j, "stream_options");
    g->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
  } else if (g->prompt_tokens > sim_cfg.max_model_len) {
    snprintf(errbuf, errcap,
             "This model's maximum context length is %lld tokens. However, you requested "
             "%lld tokens in the input for embedding generation. Please reduce the length of "
             "the input.",
             (long long)sim_cfg.max_model_len, (long long)g->prompt_tokens);
    err = errbuf;
  }
out:
  cJSON_Delete(j);
  return err;
}

/* ---------------------------------------------------------------- responses */

static void usage_json(ob_buf_t *b, const sim_gen_t *g, int64_t completion) {
  ob_buf_printf(b,
                "\"usage\":{\"prompt_tokens\":%lld,\"total_tokens\":%lld,"
                "\"completion_tokens\":%lld,\"prompt_tokens_details\":null}",
                (long long)g->prompt_tokens, (long long)(g->prompt_tokens + completion),
                (long long)completion);
}

static const char *finish_reason(const sim_gen_t *g) {
  /* Without a request max_tokens the sim "reaches EOS" after --max-tokens. */
  return g->length_limited ? "length" : "stop";
}

static void head_json(ob_buf_t *b, const sim_gen_t *g, const char *object) {
  ob_buf_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", g->id,
                object, g->created);
  ob_buf_append_json_str(b, g->model);
}

static void build_full(ob_buf_t *b, const sim_gen_t *g) {
  ob_buf_reset(b);
  if (g->kind == EP_EMBEDDINGS) {
    head_json(b, g, "list");
    ob_buf_append_str(b, ",\"data\":[");
    for (size_t i = 0; i < g->ninputs; i++) {
      double v[8], norm = 0;
      for (int k = 0; k < 8; k++) {
        uint64_t r = mix64(g->inputs[i] + 0x9e3779b97f4a7c15ULL * (uint64_t)(k + 1));
        v[k] = (double)(r >> 11) * 0x1p-53 * 2.0 - 1.0;
        norm += v[k] * v[k];
      }
      norm = norm > 0 ? sqrt(norm) : 1;
      ob_buf_printf(b, "%s{\"index\":%zu,\"object\":\"embedding\",\"embedding\":[", i ? "," : "",
                    i);
      for (int k = 0; k < 8; k++) ob_buf_printf(b, "%s%.8f", k ? "," : "", v[k] / norm);
      ob_buf_append_str(b, "]}");
    }
    ob_buf_append_str(b, "],");
    usage_json(b, g, 0);
    ob_buf_append_str(b, "}");
    return;
  }
  bool chat = g->kind == EP_CHAT;
  head_json(b, g, chat ? "chat.completion" : "text_completion");
  if (chat)
    ob_buf_append_str(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                         "\"reasoning_content\":null,\"content\":\"");
  else
    ob_buf_append_str(b, ",\"choices\":[{\"index\":0,\"text\":\"");
  for (int64_t i = 0; i < g->n; i++) { /* words need no escaping */
    ob_buf_append(b, " ", 1);
    ob_buf_append_str(b, token_at(g->phash, i));
  }
  ob_buf_printf(b, "\"%s,\"logprobs\":null,\"finish_reason\":\"%s\",\"stop_reason\":null%s}],",
                chat ? ",\"tool_calls\":[]}" : "", finish_reason(g),
                chat ? "" : ",\"prompt_logprobs\":null");
  usage_json(b, g, g->n);
  ob_buf_append_str(b, chat ? ",\"prompt_logprobs\":null}" : "}");
}

static void send_event(sim_ex_t *ex, const ob_buf_t *b) {
  ex->ops->body(ex, b->base, b->len);
}

/* One SSE step per timer firing: the first also carries the role chunk
 * (chat), the last also the finish chunk, the usage chunk and [DONE]. */
static void stream_step(sim_ex_t *ex) {
  sim_gen_t *g = ex->gen;
  ob_buf_t *b = &ex->w->scratch;
  bool chat = g->kind == EP_CHAT;
  if (chat && !g->role_sent) {
    g->role_sent = true;
    ob_buf_reset(b);
    ob_buf_append_iov(b, g->prefix);
    ob_buf_append_str(b, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                         "\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    send_event(ex, b);
  }
  if (g->abort_at == g->sent) {
    end_abort(ex);
    return;
  }
  if (!gen_tokens(ex, 1)) return; /* preempted: resumes on a grant */
  ob_buf_reset(b);
  ob_buf_append_iov(b, g->prefix);
  ob_buf_printf(b,
                chat ? "{\"index\":0,\"delta\":{\"content\":\" %s\"},\"logprobs\":null,"
                       "\"finish_reason\":null}]}\n\n"
                     : "{\"index\":0,\"text\":\" %s\",\"logprobs\":null,"
                       "\"finish_reason\":null,\"stop_reason\":null}]}\n\n",
                token_at(g->phash, g->sent - 1));
  send_event(ex, b);
  if (g->abort_at == g->sent) {
    end_abort(ex);
    return;
  }
  if (g->sent < g->n) {
    arm_token(ex, g->sent + 1);
    return;
  }
  ob_buf_reset(b);
  ob_buf_append_iov(b, g->prefix);
  ob_buf_printf(b,
                chat ? "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"%s\","
                       "\"stop_reason\":null}]}\n\n"
                     : "{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"%s\","
                       "\"stop_reason\":null}]}\n\n",
                finish_reason(g));
  send_event(ex, b);
  if (g->include_usage) {
    ob_buf_reset(b);
    ob_buf_append_iov(b, g->prefix);
    ob_buf_append_str(b, "],");
    usage_json(b, g, g->n);
    ob_buf_append_str(b, "}\n\n");
    send_event(ex, b);
  }
  ob_buf_reset(b);
  ob_buf_append_str(b, "data: [DONE]\n\n");
  send_event(ex, b);
  end_finish(ex);
}

/* The whole non-streaming response at once; an aborted one announces its
 * full Content-Length and then sends only half of the body. */
static void complete_full(sim_ex_t *ex) {
  sim_gen_t *g = ex->gen;
  ob_buf_t *b = &ex->w->scratch;
  build_full(b, g);
  ex->ops->head(ex, 200, "application/json", (int64_t)b->len);
  if (g->abort_at >= 0) {
    ex->ops->body(ex, b->base, b->len / 2);
    end_abort(ex);
    return;
  }
  ex->ops->body(ex, b->base, b->len);
  end_finish(ex);
}

/* Non-streaming: generate every token due by now, then answer once the
 * last one (or the abort point; embeddings: none, just the prefill) is
 * reached. The first token of a run is due when the timer fires (the
 * prefill is over); a firing a little early for a later token only re-arms. */
static void full_step(sim_ex_t *ex) {
  sim_gen_t *g = ex->gen;
  int64_t upto = g->kind == EP_EMBEDDINGS ? 0 : g->abort_at >= 0 ? g->abort_at : g->n;
  uint64_t now = ob_clock_us();
  int64_t due = g->sent;
  while (due < upto && (due == g->base || token_due(g, due + 1) <= now)) {
    if (sim_cfg.itl_ms == 0) due = upto;
    else due++;
  }
  if (!gen_tokens(ex, due - g->sent)) return; /* preempted: resumes on a grant */
  if (g->sent >= upto) complete_full(ex);
  else arm_token(ex, g->sent + 1);
}

/* A run begins: first start or resume after a preemption. */
static void gen_run(sim_ex_t *ex) {
  sim_gen_t *g = ex->gen;
  ex->st = ST_RUN;
  if (!g->started) {
    g->started = true;
    atomic_fetch_add(&sim_stats.prompt_tokens, (uint_fast64_t)g->prompt_tokens);
  }
  g->t0_us = ob_clock_us();
  g->base = g->sent;
  /* A non-streaming answer due at once is sent at once (ttft 0). */
  if (!g->stream && sim_cfg.ttft_ms == 0) full_step(ex);
  else arm_token(ex, g->sent + 1);
}

void sim_ex_on_grant(sim_ex_t *ex) {
  if (ex->st != ST_QUEUED && ex->st != ST_RUN) { /* cannot happen */
    sim_slot_release(ex);
    return;
  }
  gen_run(ex);
}

static void gen_begin(sim_ex_t *ex, int kind) {
  char errbuf[512];
  const char *err = parse_gen(ex, kind, errbuf, sizeof errbuf);
  if (err) {
    reply_error(ex, 400, err);
    return;
  }
  sim_gen_t *g = ex->gen;
  uint64_t seq = atomic_fetch_add(&sim_stats.seq, 1);
  uint64_t bh = fnv1a(FNV_INIT, ex->body.base, ex->body.len);
  uint64_t idh = mix64(bh ^ mix64(seq + 1));
  snprintf(g->id, sizeof g->id, "%s%016llx%016llx",
           kind == EP_CHAT ? "chatcmpl-" : kind == EP_COMPLETIONS ? "cmpl-" : "embd-",
           (unsigned long long)idh, (unsigned long long)mix64(idh));
  g->created = (long long)time(NULL);
  g->arrival_us = ob_clock_us();

  int64_t limit = kind == EP_EMBEDDINGS ? 0 : g->n;
  uint64_t abort_after;
  if (header_u64(ex, "x-sim-abort-after", &abort_after)) {
    g->abort_at = abort_after < (uint64_t)limit ? (int64_t)abort_after : limit;
  } else if (sim_cfg.fail_rate > 0 && kind != EP_EMBEDDINGS) {
    uint64_t r = mix64(bh ^ mix64(sim_cfg.seed ^ 0x5eed5eed5eed5eedULL) ^ mix64(~seq));
    if ((double)(r >> 11) * 0x1p-53 < sim_cfg.fail_rate)
      g->abort_at = (int64_t)(mix64(r) % (uint64_t)g->n);
  }

  if (g->stream) {
    ob_buf_t *b = &ex->w->scratch;
    ob_buf_reset(b);
    ob_buf_append_str(b, "data: ");
    head_json(b, g, kind == EP_CHAT ? "chat.completion.chunk" : "text_completion");
    ob_buf_append_str(b, ",\"choices\":[");
    g->prefix = ob_arena_dup(&ex->arena, ob_buf_iov(b));
    ex->ops->head(ex, 200, "text/event-stream; charset=utf-8", -1);
  }
  if (sim_slot_acquire(ex, g->prompt_tokens)) gen_run(ex);
  else ex->st = ST_QUEUED;
}

static void reply_models(sim_ex_t *ex) {
  ob_buf_t *b = &ex->w->scratch;
  ob_buf_reset(b);
  long long now = (long long)time(NULL);
  ob_iov_t m = ob_iov_str(sim_cfg.model);
  ob_buf_append_str(b, "{\"object\":\"list\",\"data\":[{\"id\":");
  ob_buf_append_json_str(b, m);
  ob_buf_printf(b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"vllm\",\"root\":", now);
  ob_buf_append_json_str(b, m);
  ob_buf_printf(b,
                ",\"parent\":null,\"max_model_len\":%lld,\"permission\":[{\"id\":"
                "\"modelperm-%016llx\",\"object\":\"model_permission\",\"created\":%lld,"
                "\"allow_create_engine\":false,\"allow_sampling\":true,\"allow_logprobs\":true,"
                "\"allow_search_indices\":false,\"allow_view\":true,\"allow_fine_tuning\":false,"
                "\"organization\":\"*\",\"group\":null,\"is_blocking\":false}]}]}",
                (long long)sim_cfg.max_model_len,
                (unsigned long long)mix64(fnv1a(FNV_INIT, m.base, m.len)), now);
  reply(ex, 200, "application/json", b);
}

static void route(sim_ex_t *ex) {
  uint64_t status;
  if (header_u64(ex, "x-sim-status", &status) && status >= 200 && status <= 599) {
    char msg[64];
    snprintf(msg, sizeof msg, "simulated error (x-sim-status: %d)", (int)status);
    reply_error(ex, (int)status, msg);
    return;
  }
  if (ex->too_large) {
    reply_error(ex, 413, "request body too large");
    return;
  }
  ob_iov_t path = ex->path;
  const char *q = memchr(path.base, '?', path.len);
  if (q) path.len = (size_t)(q - path.base);
  bool post = ob_iov_eq(ex->method, OB_IOV_LIT("POST"));
  bool get = ob_iov_eq(ex->method, OB_IOV_LIT("GET"));
  int kind = -1;
  if (ob_iov_eq(path, OB_IOV_LIT("/v1/chat/completions"))) kind = EP_CHAT;
  else if (ob_iov_eq(path, OB_IOV_LIT("/v1/completions"))) kind = EP_COMPLETIONS;
  else if (ob_iov_eq(path, OB_IOV_LIT("/v1/embeddings"))) kind = EP_EMBEDDINGS;
  if (kind >= 0) {
    if (!post) reply_error(ex, 405, "Method Not Allowed");
    else gen_begin(ex, kind);
  } else if (ob_iov_eq(path, OB_IOV_LIT("/v1/models"))) {
    if (!get) reply_error(ex, 405, "Method Not Allowed");
    else reply_models(ex);
  } else {
    char msg[300];
    snprintf(msg, sizeof msg, "The path %.*s was not found.", (int)(path.len > 256 ? 256 : path.len),
             path.base);
    reply_error(ex, 404, msg);
  }
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  sim_ex_t *ex = arg;
  switch (ex->st) {
  case ST_DELAY:
    ex->st = ST_NEW;
    route(ex);
    break;
  case ST_RUN:
    if (ex->gen->stream) stream_step(ex);
    else full_step(ex);
    break;
  default:
    break;
  }
}

void sim_ex_dispatch(sim_ex_t *ex) {
  ob_iov_t path = ex->path;
  const char *q = memchr(path.base, '?', path.len);
  if (q) path.len = (size_t)(q - path.base);
  if (ob_iov_eq(path, OB_IOV_LIT("/sim")) || ob_iov_starts_with(path, OB_IOV_LIT("/sim/"))) {
    handle_sim(ex, path);
    return;
  }
  if (ob_iov_eq(path, OB_IOV_LIT("/metrics"))) {
    metrics_reply(ex);
    return;
  }
  ex->counted = true;
  atomic_fetch_add(&sim_stats.requests, 1);
  sim_stats_count_path(path);
  uint64_t delay;
  if (header_u64(ex, "x-sim-delay-ms", &delay) && delay > 0) {
    ex->st = ST_DELAY;
    arm(ex, delay > 86400000 ? 86400000 : delay);
    return;
  }
  route(ex);
}
