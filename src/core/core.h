/*
 * core: the pieces every other module stands on: byte slices, growable
 * buffers, the per-exchange arena, error codes, logging and the clock.
 * Nothing here knows about sockets, libevent or any protocol.
 *
 * Ownership: an ob_iov_t never owns what it points at; it is a borrowed view
 * whose lifetime is whatever the producer documents. An ob_buf_t owns its
 * bytes until ob_buf_dispose(). An ob_arena_t owns every block it handed out
 * until ob_arena_dispose().
 */
#ifndef OB_CORE_H
#define OB_CORE_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- errors */

/*
 * 0 is success; errors are negative. The ranges say how far an error
 * reaches: a stream-level error resets one request, a connection-level error
 * closes the connection, a fatal error stops the process (config, start-up).
 */
typedef int ob_err_t;

enum {
  OB_OK = 0,
  /* -1 .. -99: stream level */
  OB_ERR_INCOMPLETE = -1,      /* need more input; not a failure */
  OB_ERR_BAD_REQUEST = -2,     /* malformed message, answer 400 */
  OB_ERR_TOO_LARGE = -3,       /* body above the limit, answer 413 */
  OB_ERR_HEADERS_TOO_LARGE = -4, /* header block above the limit, answer 431 */
  OB_ERR_BAD_RESPONSE = -5,    /* malformed upstream response, answer 502 */
  OB_ERR_NOT_IMPLEMENTED = -6, /* e.g. unknown transfer coding, answer 501 */
  /* -100 .. -199: connection level */
  OB_ERR_CONN = -100,          /* the connection cannot continue */
  OB_ERR_PROTOCOL = -101,      /* framing broken beyond recovery */
  /* -200 .. : fatal */
  OB_ERR_CONFIG = -200,
  OB_ERR_SYSTEM = -201,
};

static inline bool ob_err_is_stream(ob_err_t e) { return e < 0 && e > -100; }
static inline bool ob_err_is_conn(ob_err_t e) { return e <= -100 && e > -200; }

/* A short static name for an error code ("bad request"); never NULL. */
const char *ob_err_name(ob_err_t e);

/* ---------------------------------------------------------------- memory */

/* Allocation that cannot fail: out of memory aborts the process, because
 * every unbounded input is capped by a limit long before memory runs out. */
void *ob_xmalloc(size_t n);
void *ob_xcalloc(size_t n, size_t size);
void *ob_xrealloc(void *p, size_t n);
char *ob_xstrdup(const char *s);
char *ob_xstrndup(const char *s, size_t n);

/* ---------------------------------------------------------------- slices */

/* A borrowed byte range; never assumed NUL-terminated. */
typedef struct ob_iov {
  const char *base;
  size_t len;
} ob_iov_t;

#define OB_IOV_LIT(s) ((ob_iov_t){(s), sizeof(s) - 1})
static inline ob_iov_t ob_iov(const char *base, size_t len) { return (ob_iov_t){base, len}; }
static inline ob_iov_t ob_iov_str(const char *s) { return (ob_iov_t){s, s ? strlen(s) : 0}; }

bool ob_iov_eq(ob_iov_t a, ob_iov_t b);
/* ASCII case-insensitive comparison of n bytes. */
bool ob_mem_eq_nocase(const char *a, const char *b, size_t n);
/* ASCII case-insensitive comparison (header names, tokens). Inline so that
 * a name of another length, the usual case when looking for a header,
 * costs one comparison and no call; with a literal s its length is known
 * at compile time. */
static inline bool ob_iov_eq_nocase(ob_iov_t a, ob_iov_t b) {
  return a.len == b.len && ob_mem_eq_nocase(a.base, b.base, a.len);
}
static inline bool ob_iov_eq_str_nocase(ob_iov_t a, const char *s) {
  size_t n = strlen(s);
  return a.len == n && ob_mem_eq_nocase(a.base, s, n);
}
bool ob_iov_starts_with(ob_iov_t a, ob_iov_t prefix);
/* Trim optional white space (SP / HTAB) at both ends. */
ob_iov_t ob_iov_trim(ob_iov_t a);
/* Parse a non-negative decimal made only of digits; false on anything else or
 * on overflow past UINT64_MAX. */
bool ob_iov_to_u64(ob_iov_t a, uint64_t *out);

/* Number formatting for the request path, where snprintf's format parsing
 * costs more than the rest of a cache hit's header work. */
#define OB_U64_CHARS 21 /* 20 digits and the NUL */
/* Decimal digits of v into out (room for OB_U64_CHARS), NUL-terminated;
 * returns the number of digits. */
size_t ob_fmt_u64(char *out, uint64_t v);
/* The 16 lower-case hex digits of v into out (not terminated). */
void ob_fmt_hex64(char *out, uint64_t v);

/* ---------------------------------------------------------------- buffers */

/* A growable contiguous byte buffer. Owns base; zero-initialised is empty. */
typedef struct ob_buf {
  char *base;
  size_t len;
  size_t cap;
} ob_buf_t;

void ob_buf_init(ob_buf_t *b);
void ob_buf_dispose(ob_buf_t *b);
/* Make room for at least n more bytes; returns a pointer to the free space. */
char *ob_buf_reserve(ob_buf_t *b, size_t n);
void ob_buf_append(ob_buf_t *b, const void *p, size_t n);
static inline void ob_buf_append_iov(ob_buf_t *b, ob_iov_t v) { ob_buf_append(b, v.base, v.len); }
static inline void ob_buf_append_str(ob_buf_t *b, const char *s) { ob_buf_append(b, s, strlen(s)); }
void ob_buf_printf(ob_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes, keeping the rest. */
void ob_buf_consume(ob_buf_t *b, size_t n);
static inline void ob_buf_reset(ob_buf_t *b) { b->len = 0; }
static inline ob_iov_t ob_buf_iov(const ob_buf_t *b) { return (ob_iov_t){b->base, b->len}; }
/* Append a JSON string literal (with quotes) escaping as RFC 8259 requires.
 * Bytes that are not well-formed UTF-8 become U+FFFD, so the output is
 * always valid JSON whatever s holds (a request path, a peer's bytes). */
void ob_buf_append_json_str(ob_buf_t *b, ob_iov_t s);
/* Length (2..4) of the well-formed UTF-8 sequence starting at p, a byte
 * >= 0x80 before end; 0 when it is not one (RFC 3629: no overlong forms, no
 * encoded surrogates, nothing above U+10FFFF, no truncated sequence). */
size_t ob_utf8_seq_len(const unsigned char *p, const unsigned char *end);

/* ---------------------------------------------------------------- strict JSON */

/*
 * One strict JSON tokenizer (core_jsontok.c) under every reader of a body
 * the gateway decides policy on or keys a cache entry by: ob_json_check
 * (below), routes' member finder and inference scan, the cache's canonical
 * form. They are small walkers over its tokens, so they agree on what JSON
 * is. The rules are exactly RFC 8259:
 *  - one value, with only the four white-space characters (SP, HTAB, LF,
 *    CR) around tokens and nothing after it (no BOM, no comments);
 *  - true / false / null exactly; numbers by the grammar (-? int frac? exp?,
 *    no leading zero, no '+', no ".5", no "1.", an exponent needs digits),
 *    of any length and magnitude (readers decide what they can convert);
 *  - strings: only the escapes \" \\ \/ \b \f \n \r \t and \uXXXX; a raw
 *    byte below 0x20 is refused; \u escapes for surrogates must come as a
 *    high-low pair (a lone or misordered one is refused);
 *  - the text must be UTF-8 (RFC 3629: no overlong forms, no encoded
 *    surrogates, nothing above U+10FFFF) inside strings; outside strings
 *    only ASCII can appear anyway;
 *  - containers nest at most OB_JSON_MAX_DEPTH deep.
 * Duplicate keys are grammatical: the tokenizer reports every key and
 * leaves duplicates to the walkers (ob_json_check calls them ambiguous
 * where it reads, the canonical form refuses them, see each).
 *
 * The \u0000 policy, decided here once: \u0000 is valid JSON (RFC 8259,
 * and the upstreams' parsers, JSON.parse and json.loads, accept it), so
 * the tokenizer accepts it and flags the string (OB_JSON_NUL); decoding
 * keeps it as a 0 byte in a span with a length. A reader that would hold
 * the string as a C string (cJSON, and every key or member value the
 * gateway reads to decide policy) must refuse a flagged string, since it
 * would read it cut short while the upstream reads it whole: ob_json_check
 * calls it ambiguous where it reads, the inference scan falls back. Where
 * the gateway only forwards (message contents, a tool's arguments) or
 * hashes the text as written (cache keys), it passes unchanged: refusing
 * it there would turn away requests every upstream takes.
 */

/* Containers nested in one another, at most. Bodies of inference and MCP
 * requests have been read this deep since the start (docs/config.md);
 * walkers recurse at most this deep. */
#define OB_JSON_MAX_DEPTH 128

/* Inside a JSON string: the first byte at or after p (before end) that is a
 * quote, a backslash, a control character or not ASCII (the tokenizer
 * checks UTF-8 there), or end. Eight bytes per step: string contents
 * (prompts, messages) are most of a request body. */
static inline const char *ob_json_str_run(const char *p, const char *end) {
  const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  while (end - p >= 8) {
    uint64_t w, q, b;
    memcpy(&w, p, 8);
    q = w ^ (ones * '"');
    b = w ^ (ones * '\\');
    /* A zero byte in q or b, a byte below 0x20 in w, or a high bit. */
    if (((q - ones) & ~q & highs) | ((b - ones) & ~b & highs) | ((w - ones * 0x20) & ~w & highs) | (w & highs)) break;
    p += 8;
  }
  while (p < end && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20 && (unsigned char)*p < 0x80) p++;
  return p;
}

enum {
  OB_JSON_TOK_ERROR = -1,    /* not JSON: see the lexer's why and offset */
  OB_JSON_TOK_END = 0,       /* the value is complete and only white space follows */
  OB_JSON_TOK_OBJECT,        /* '{' */
  OB_JSON_TOK_OBJECT_END,    /* '}' */
  OB_JSON_TOK_ARRAY,         /* '[' */
  OB_JSON_TOK_ARRAY_END,     /* ']' */
  OB_JSON_TOK_KEY,           /* a member's key (its ':' is read with the next token) */
  OB_JSON_TOK_STRING,
  OB_JSON_TOK_NUMBER,
  OB_JSON_TOK_TRUE,
  OB_JSON_TOK_FALSE,
  OB_JSON_TOK_NULL,
};

/* Flags of a KEY or STRING token. */
#define OB_JSON_ESC 1u /* holds at least one escape: decode before comparing */
#define OB_JSON_NUL 2u /* holds \u0000 (see the policy above) */

/*
 * One token. Every span is borrowed from the text given to
 * ob_json_lexer_init and lives as long as that text does.
 */
typedef struct ob_json_tok {
  int type;       /* OB_JSON_TOK_* */
  ob_iov_t raw;   /* the token as written (a string with its quotes); empty for END and ERROR */
  ob_iov_t text;  /* KEY, STRING: the contents between the quotes, escapes as written; else = raw */
  size_t dlen;    /* KEY, STRING: length of the decoded contents (UTF-8) */
  unsigned flags; /* KEY, STRING: OB_JSON_ESC, OB_JSON_NUL */
} ob_json_tok_t;

/*
 * The pull tokenizer: caller storage, no allocation, one pass over the
 * text (borrowed; it must outlive the lexer and its tokens). Each
 * ob_json_next returns the next token's type and fills *t; the grammar
 * (member and element order, commas, colons, matching brackets, one value)
 * is checked as it goes, so a walker sees only well-formed sequences until
 * ERROR. After ERROR or END every call returns the same again. The fields
 * are read-only for callers: pos is the byte after the last token
 * returned (after ERROR: where the error is), depth the containers open.
 */
typedef struct ob_json_lexer {
  const char *base, *pos, *end;
  const char *why; /* after ERROR: a static description */
  int depth;
  int state;
  uint8_t in_object[OB_JSON_MAX_DEPTH / 8]; /* bit per open container */
} ob_json_lexer_t;

void ob_json_lexer_init(ob_json_lexer_t *lx, ob_iov_t json);
int ob_json_next(ob_json_lexer_t *lx, ob_json_tok_t *t);
/* Byte offset of lx->pos in the text (after ERROR: the offending byte). */
static inline size_t ob_json_lexer_offset(const ob_json_lexer_t *lx) { return (size_t)(lx->pos - lx->base); }
/* The rest of the value t begins (t: the token just returned): nothing for
 * a scalar, up to the matching end for a container. OB_JSON_TOK_ERROR or 0. */
int ob_json_skip(ob_json_lexer_t *lx, const ob_json_tok_t *t);
/* Whether json is one RFC 8259 value, as above: 0, or OB_JSON_INVALID with
 * *why (static) and *off (byte offset) when not NULL. */
int ob_json_validate(ob_iov_t json, const char **why, size_t *off);

/* Decode string contents (a KEY or STRING token's text) into out, which
 * has room for the token's dlen bytes: UTF-8, a surrogate pair joined into
 * its code point, \u0000 as a 0 byte. Returns the bytes written (= dlen).
 * out is not terminated. */
size_t ob_json_str_decode(ob_iov_t text, char *out);

/* Order two string contents (as a token's text) by their decoded UTF-8
 * bytes: "\u00e9" equals "é" and "mod\u0065l" equals "model". Like
 * memcmp: <0, 0, >0. */
int ob_json_str_cmp(ob_iov_t a, ob_iov_t b);

/* A key of an object (a token's text, borrowed from the text) with a
 * summary of its decoded form (ob_json_keys_add). */
typedef struct ob_json_key {
  ob_iov_t raw;
  size_t dlen;   /* decoded length */
  uint64_t head; /* its first eight decoded bytes, zero-padded */
} ob_json_key_t;

/* Whether two of keys[0..n) are equal decoded. May reorder keys.
 * O(n log n) comparisons. */
bool ob_json_keys_dup(ob_json_key_t *keys, size_t n);

/* A list of keys, inline up to 32, on the heap beyond. Caller storage;
 * init before use, dispose after. It must not be copied or moved while in
 * use (k may point into it). */
typedef struct ob_json_keys {
  ob_json_key_t *k;
  size_t n, cap;
  ob_json_key_t inl[32];
} ob_json_keys_t;

static inline void ob_json_keys_init(ob_json_keys_t *ks) {
  ks->k = ks->inl;
  ks->n = 0;
  ks->cap = sizeof ks->inl / sizeof ks->inl[0];
}
void ob_json_keys_add(ob_json_keys_t *ks, ob_iov_t key);
void ob_json_keys_dispose(ob_json_keys_t *ks);

#define OB_JSON_INVALID (-1)   /* not JSON (RFC 8259) */
#define OB_JSON_AMBIGUOUS (-2) /* JSON that parsers would read differently */

/* Called for each member of a top-level object, in order: key is the raw
 * key between its quotes, value the raw value text (a string keeps its
 * quotes). Both borrowed from the checked text for the call. */
typedef void ob_json_member_cb(void *ud, ob_iov_t key, ob_iov_t value);

/*
 * A walker over the tokenizer for text the gateway reads and forwards:
 * whether json is JSON (above) that no two parsers read differently where
 * the gateway reads it: no object nested at most `levels` objects deep
 * (1: the top-level object, or each object of a top-level array; arrays do
 * not count) holds two keys equal decoded, a key with \u0000, or a string
 * member value with \u0000 (which cJSON, the gateway's tree, would read
 * cut short). cb (may be NULL) sees the members of a top-level object as
 * the walk passes them, before the walk has decided, and none after an
 * ambiguity. Returns 0, OB_JSON_INVALID (also when the text is both: not
 * JSON wins) or OB_JSON_AMBIGUOUS, with *why (when not NULL) a static
 * description. Allocates only for more than 32 keys on the checked path.
 */
int ob_json_check(ob_iov_t json, int levels, ob_json_member_cb *cb, void *ud, const char **why);

/* ---------------------------------------------------------------- counted buffers */

/*
 * A reference-counted ob_buf_t, for bytes that several owners must keep
 * alive without copying (a request body referenced by an upstream's output
 * queue while the client side may already be gone). Counted within one
 * thread only. Created with refs == 1; the last release frees it.
 */
typedef struct ob_rcbuf {
  int refs;
  ob_buf_t buf;
} ob_rcbuf_t;

ob_rcbuf_t *ob_rcbuf_create(void);
ob_rcbuf_t *ob_rcbuf_acquire(ob_rcbuf_t *r);
void ob_rcbuf_release(ob_rcbuf_t *r); /* NULL is a no-op */

/* ---------------------------------------------------------------- arena */

/*
 * A bump allocator for memory that lives exactly as long as one exchange or
 * one parse. Blocks handed out stay valid until ob_arena_dispose(); they are
 * never freed one by one.
 */
typedef struct ob_arena_block ob_arena_block_t;
typedef struct ob_arena {
  ob_arena_block_t *head;
  size_t block_size;
} ob_arena_t;

void ob_arena_init(ob_arena_t *a, size_t block_size);
void ob_arena_dispose(ob_arena_t *a);
void *ob_arena_alloc(ob_arena_t *a, size_t n);
/* Copy v into the arena (NUL-terminated for convenience; len excludes it). */
ob_iov_t ob_arena_dup(ob_arena_t *a, ob_iov_t v);
char *ob_arena_strdup(ob_arena_t *a, const char *s);

/* ---------------------------------------------------------------- clock */

/* Monotonic time. Pure modules take time as a parameter instead. */
uint64_t ob_clock_us(void);
/* Monotonic milliseconds of the coarse clock (the kernel's tick, up to a few
 * ms behind ob_clock_us): for deadlines, timeouts and back-offs, where that
 * is precise enough. Several are read per request, and on a VM the coarse
 * clock costs an eighth of the precise one. Compare only with other
 * ob_clock_ms values, never with ob_clock_us() / 1000. */
uint64_t ob_clock_ms(void);
/* Wall-clock milliseconds, coarse as above: cache expiry times, which must
 * survive a restart. */
uint64_t ob_clock_wall_ms(void);

/* ---------------------------------------------------------------- logging */

typedef enum { OB_LOG_DEBUG, OB_LOG_INFO, OB_LOG_WARN, OB_LOG_ERROR } ob_log_level_t;

/* Messages below this level are dropped; default INFO. */
void ob_log_set_level(ob_log_level_t lvl);
/* Whether a message at lvl would be written (skip building it if not). */
bool ob_log_enabled(ob_log_level_t lvl);
/* One line to stderr, prefixed with an ISO-8601 UTC time and the level. */
void ob_log(ob_log_level_t lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define ob_log_debug(...) ob_log(OB_LOG_DEBUG, __VA_ARGS__)
#define ob_log_info(...) ob_log(OB_LOG_INFO, __VA_ARGS__)
#define ob_log_warn(...) ob_log(OB_LOG_WARN, __VA_ARGS__)
#define ob_log_error(...) ob_log(OB_LOG_ERROR, __VA_ARGS__)

/*
 * The per-request access line: kept in a per-thread buffer instead of one
 * write(2) per request, and written when the buffer passes 32 KiB, when
 * the thread logs anything else (so lines stay in order), or at
 * ob_log_flush. The caller (the event loop that makes access lines)
 * flushes soon after the first buffered line; see ob_log_pending.
 */
void ob_log_access(const char *msg, size_t len); /* msg: the line without prefix or newline */
/* Bytes of this thread's access lines not written yet. */
size_t ob_log_pending(void);
/* Write this thread's buffered access lines now. */
void ob_log_flush(void);

/* ---------------------------------------------------------------- background thread */

/*
 * One thread for work that must stay off the event loops (ledger lines,
 * LMDB writes). The owner embeds an ob_bg_t and queues work into its own
 * fields under ob_bg_lock, then ob_bg_kick. The thread runs rounds: under
 * the lock take(arg) moves the queued work aside (may be NULL), then,
 * without the lock, run(arg) does it. A round runs when kicked, and every
 * period_ms when that is not 0. ob_bg_stop runs a last round for whatever
 * was queued, joins the thread and destroys the lock; arg (borrowed) must
 * stay valid until then.
 */
typedef struct ob_bg {
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  uint32_t period_ms;
  void (*take)(void *arg);
  void (*run)(void *arg);
  void *arg;
  bool kicked, stop;              /* under mu */
  uint64_t asked, finished;       /* ob_bg_sync rounds; under mu */
} ob_bg_t;

/* Aborts if the thread cannot be created (as for memory). */
void ob_bg_start(ob_bg_t *b, uint32_t period_ms, void (*take)(void *), void (*run)(void *), void *arg);
static inline void ob_bg_lock(ob_bg_t *b) { pthread_mutex_lock(&b->mu); }
static inline void ob_bg_unlock(ob_bg_t *b) { pthread_mutex_unlock(&b->mu); }
/* With the lock held: run a round soon. */
void ob_bg_kick(ob_bg_t *b);
/* Without the lock: wait until a round that began after this call is done
 * (so everything queued before it has been run). */
void ob_bg_sync(ob_bg_t *b);
void ob_bg_stop(ob_bg_t *b);

#endif /* OB_CORE_H */
