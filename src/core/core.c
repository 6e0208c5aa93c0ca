/*
 * core.c: implementations behind core.h that have no state of their own:
 * error names, allocation, slices, buffers, the arena and the clock.
 * Logging lives in core_log.c because it is the only part with global state.
 */
#include "core.h"

#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <errno.h>
#include <time.h>

const char *ob_err_name(ob_err_t e) {
  switch (e) {
  case OB_OK: return "ok";
  case OB_ERR_INCOMPLETE: return "incomplete";
  case OB_ERR_BAD_REQUEST: return "bad request";
  case OB_ERR_TOO_LARGE: return "body too large";
  case OB_ERR_HEADERS_TOO_LARGE: return "header block too large";
  case OB_ERR_BAD_RESPONSE: return "bad upstream response";
  case OB_ERR_NOT_IMPLEMENTED: return "not implemented";
  case OB_ERR_CONN: return "connection error";
  case OB_ERR_PROTOCOL: return "protocol error";
  case OB_ERR_CONFIG: return "configuration error";
  case OB_ERR_SYSTEM: return "system error";
  default: return "unknown error";
  }
}

static void oom(size_t n) {
  fprintf(stderr, "obleth: out of memory allocating %zu bytes\n", n);
  abort();
}

void *ob_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) oom(n);
  return p;
}

void *ob_xcalloc(size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n ? n : 1, size ? size : 1, &total)) oom(SIZE_MAX);
  /* glibc's calloc never takes from malloc's per-thread cache; the
   * per-request objects are small, so malloc + memset reuses a chunk
   * freed a moment ago instead of going through the bins. */
  if (total <= 1024) {
    void *p = malloc(total);
    if (!p) oom(total);
    return memset(p, 0, total);
  }
  void *p = calloc(1, total);
  if (!p) oom(total);
  return p;
}

void *ob_xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) oom(n);
  return q;
}

char *ob_xstrdup(const char *s) { return ob_xstrndup(s, strlen(s)); }

char *ob_xstrndup(const char *s, size_t n) {
  char *p = ob_xmalloc(n + 1);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

/* ---------------------------------------------------------------- slices */

static inline unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c; }

bool ob_iov_eq(ob_iov_t a, ob_iov_t b) { return a.len == b.len && (a.len == 0 || memcmp(a.base, b.base, a.len) == 0); }

bool ob_mem_eq_nocase(const char *a, const char *b, size_t n) {
  /* Names are mostly compared with what they already are: HTTP/2 field
   * names arrive in lower case, and we look them up in lower case. */
  if (memcmp(a, b, n) == 0) return true;
  for (size_t i = 0; i < n; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i])) return false;
  return true;
}

bool ob_iov_starts_with(ob_iov_t a, ob_iov_t prefix) {
  return a.len >= prefix.len && (prefix.len == 0 || memcmp(a.base, prefix.base, prefix.len) == 0);
}

ob_iov_t ob_iov_trim(ob_iov_t a) {
  while (a.len && (a.base[0] == ' ' || a.base[0] == '\t')) a.base++, a.len--;
  while (a.len && (a.base[a.len - 1] == ' ' || a.base[a.len - 1] == '\t')) a.len--;
  return a;
}

size_t ob_fmt_u64(char *out, uint64_t v) {
  char tmp[OB_U64_CHARS];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
  out[n] = '\0';
  return n;
}

void ob_fmt_hex64(char *out, uint64_t v) {
  static const char digits[] = "0123456789abcdef";
  for (int i = 15; i >= 0; i--, v >>= 4) out[i] = digits[v & 15];
}

bool ob_iov_to_u64(ob_iov_t a, uint64_t *out) {
  if (a.len == 0) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < a.len; i++) {
    unsigned char c = (unsigned char)a.base[i];
    if (c < '0' || c > '9') return false;
    if (v > (UINT64_MAX - (c - '0')) / 10) return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

/* ---------------------------------------------------------------- buffers */

void ob_buf_init(ob_buf_t *b) { b->base = NULL, b->len = 0, b->cap = 0; }

void ob_buf_dispose(ob_buf_t *b) {
  free(b->base);
  ob_buf_init(b);
}

char *ob_buf_reserve(ob_buf_t *b, size_t n) {
  if (b->cap - b->len < n) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) cap *= 2;
    b->base = ob_xrealloc(b->base, cap);
    b->cap = cap;
  }
  return b->base + b->len;
}

void ob_buf_append(ob_buf_t *b, const void *p, size_t n) {
  if (n == 0) return;
  memcpy(ob_buf_reserve(b, n), p, n);
  b->len += n;
}

void ob_buf_printf(ob_buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char tmp[256];
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof tmp) {
    ob_buf_append(b, tmp, (size_t)n);
    return;
  }
  char *dst = ob_buf_reserve(b, (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(dst, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

void ob_buf_consume(ob_buf_t *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->base, b->base + n, b->len - n);
  b->len -= n;
}

void ob_buf_append_json_str(ob_buf_t *b, ob_iov_t s) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)s.base, *end = p + s.len;
  ob_buf_append(b, "\"", 1);
  size_t run = 0, i = 0;
  while (i < s.len) {
    unsigned char c = p[i];
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      i++;
      continue;
    }
    if (c >= 0x80) {
      size_t n = ob_utf8_seq_len(p + i, end);
      if (n) {
        i += n;
        continue;
      }
    }
    ob_buf_append(b, s.base + run, i - run);
    switch (c) {
    case '"': ob_buf_append(b, "\\\"", 2); break;
    case '\\': ob_buf_append(b, "\\\\", 2); break;
    case '\n': ob_buf_append(b, "\\n", 2); break;
    case '\r': ob_buf_append(b, "\\r", 2); break;
    case '\t': ob_buf_append(b, "\\t", 2); break;
    default:
      if (c >= 0x80) {
        ob_buf_append(b, "\\ufffd", 6);
      } else {
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        ob_buf_append(b, esc, 6);
      }
    }
    run = ++i;
  }
  ob_buf_append(b, s.base + run, s.len - run);
  ob_buf_append(b, "\"", 1);
}

/* ---------------------------------------------------------------- counted buffers */

ob_rcbuf_t *ob_rcbuf_create(void) {
  ob_rcbuf_t *r = ob_xmalloc(sizeof *r);
  r->refs = 1;
  ob_buf_init(&r->buf);
  return r;
}

ob_rcbuf_t *ob_rcbuf_acquire(ob_rcbuf_t *r) {
  r->refs++;
  return r;
}

void ob_rcbuf_release(ob_rcbuf_t *r) {
  if (!r || --r->refs > 0) return;
  ob_buf_dispose(&r->buf);
  free(r);
}

/* ---------------------------------------------------------------- arena */

struct ob_arena_block {
  ob_arena_block_t *next;
  size_t used, cap;
  _Alignas(16) char data[];
};

void ob_arena_init(ob_arena_t *a, size_t block_size) {
  a->head = NULL;
  a->block_size = block_size ? block_size : 4096;
}

/*
 * Freed blocks of the usual sizes (a power of two from 1 KiB to 16 KiB) are
 * kept per thread for the next arena: every exchange takes a few blocks,
 * and blocks this size are beyond malloc's per-thread cache, so each one
 * would otherwise cost a trip through malloc's bins and back. At most
 * ARENA_KEEP per size, freed when the thread exits.
 */
#define ARENA_MIN_SHIFT 10
#define ARENA_SIZES 5
#define ARENA_KEEP 512

typedef struct {
  ob_arena_block_t *free[ARENA_SIZES];
  unsigned count[ARENA_SIZES];
  bool registered; /* with arena_key, whose destructor frees the blocks */
} arena_cache_t;

static _Thread_local arena_cache_t arena_cache;
static pthread_key_t arena_key;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;

static void arena_cache_free(void *arg) {
  arena_cache_t *c = arg;
  for (int i = 0; i < ARENA_SIZES; i++) {
    while (c->free[i]) {
      ob_arena_block_t *b = c->free[i];
      c->free[i] = b->next;
      free(b);
    }
    c->count[i] = 0;
  }
  /* A block freed on this thread after this ran (another key's
   * destructor) registers again, and glibc runs this once more. */
  c->registered = false;
}

static void arena_key_init(void) { pthread_key_create(&arena_key, arena_cache_free); }

/* The cache slot for blocks of cap bytes, or -1. */
static int arena_slot(size_t cap) {
  if (cap & (cap - 1)) return -1;
  for (int i = 0; i < ARENA_SIZES; i++)
    if (cap == (size_t)1 << (ARENA_MIN_SHIFT + i)) return i;
  return -1;
}

void ob_arena_dispose(ob_arena_t *a) {
  ob_arena_block_t *b = a->head;
  while (b) {
    ob_arena_block_t *next = b->next;
    int i = arena_slot(b->cap);
    if (i >= 0 && arena_cache.count[i] < ARENA_KEEP) {
      if (!arena_cache.registered) {
        pthread_once(&arena_once, arena_key_init);
        pthread_setspecific(arena_key, &arena_cache);
        arena_cache.registered = true;
      }
      b->next = arena_cache.free[i];
      arena_cache.free[i] = b;
      arena_cache.count[i]++;
    } else {
      free(b);
    }
    b = next;
  }
  a->head = NULL;
}

static ob_arena_block_t *arena_block_new(size_t cap) {
  int i = arena_slot(cap);
  if (i >= 0 && arena_cache.free[i]) {
    ob_arena_block_t *b = arena_cache.free[i];
    arena_cache.free[i] = b->next;
    arena_cache.count[i]--;
    return b;
  }
  ob_arena_block_t *b = ob_xmalloc(sizeof *b + cap);
  b->cap = cap;
  return b;
}

void *ob_arena_alloc(ob_arena_t *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  ob_arena_block_t *b = a->head;
  if (!b || b->cap - b->used < n) {
    size_t cap = n > a->block_size ? n : a->block_size;
    b = arena_block_new(cap);
    b->used = 0;
    /* An oversized block goes behind the head so the head's free space is
     * not abandoned for the next small allocation. */
    if (a->head && n > a->block_size) {
      b->next = a->head->next;
      a->head->next = b;
    } else {
      b->next = a->head;
      a->head = b;
    }
  }
  void *p = b->data + b->used;
  b->used += n;
  return p;
}

ob_iov_t ob_arena_dup(ob_arena_t *a, ob_iov_t v) {
  char *p = ob_arena_alloc(a, v.len + 1);
  if (v.len) memcpy(p, v.base, v.len);
  p[v.len] = '\0';
  return (ob_iov_t){p, v.len};
}

char *ob_arena_strdup(ob_arena_t *a, const char *s) { return (char *)ob_arena_dup(a, ob_iov_str(s)).base; }

/* ---------------------------------------------------------------- clock */

uint64_t ob_clock_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t clock_ms(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t ob_clock_ms(void) { return clock_ms(CLOCK_MONOTONIC_COARSE); }
uint64_t ob_clock_wall_ms(void) { return clock_ms(CLOCK_REALTIME_COARSE); }

/* ---------------------------------------------------------------- background thread */

static void *bg_main(void *arg) {
  ob_bg_t *b = arg;
  pthread_mutex_lock(&b->mu);
  for (;;) {
    if (!b->kicked && !b->stop) {
      if (b->period_ms) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)b->period_ms * 1000000u;
        ts.tv_sec += (time_t)(ns / 1000000000u);
        ts.tv_nsec = (long)(ns % 1000000000u);
        while (!b->kicked && !b->stop)
          if (pthread_cond_timedwait(&b->wake, &b->mu, &ts) == ETIMEDOUT) break;
      } else {
        while (!b->kicked && !b->stop) pthread_cond_wait(&b->wake, &b->mu);
      }
    }
    b->kicked = false;
    bool stop = b->stop;
    uint64_t asked = b->asked;
    if (b->take) b->take(b->arg);
    pthread_mutex_unlock(&b->mu);
    b->run(b->arg);
    pthread_mutex_lock(&b->mu);
    b->finished = asked;
    pthread_cond_broadcast(&b->done);
    if (stop && !b->kicked) break;
  }
  pthread_mutex_unlock(&b->mu);
  return NULL;
}

void ob_bg_start(ob_bg_t *b, uint32_t period_ms, void (*take)(void *), void (*run)(void *), void *arg) {
  *b = (ob_bg_t){.period_ms = period_ms, .take = take, .run = run, .arg = arg};
  pthread_mutex_init(&b->mu, NULL);
  pthread_cond_init(&b->wake, NULL);
  pthread_cond_init(&b->done, NULL);
  if (pthread_create(&b->th, NULL, bg_main, b) != 0) abort();
}

void ob_bg_kick(ob_bg_t *b) {
  b->kicked = true;
  pthread_cond_signal(&b->wake);
}

void ob_bg_sync(ob_bg_t *b) {
  pthread_mutex_lock(&b->mu);
  uint64_t want = ++b->asked;
  ob_bg_kick(b);
  while (b->finished < want) pthread_cond_wait(&b->done, &b->mu);
  pthread_mutex_unlock(&b->mu);
}

void ob_bg_stop(ob_bg_t *b) {
  pthread_mutex_lock(&b->mu);
  b->stop = true;
  pthread_cond_signal(&b->wake);
  pthread_mutex_unlock(&b->mu);
  pthread_join(b->th, NULL);
  pthread_mutex_destroy(&b->mu);
  pthread_cond_destroy(&b->wake);
  pthread_cond_destroy(&b->done);
}
