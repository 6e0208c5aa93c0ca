/*
 * core_jsontok.c: the one strict JSON tokenizer (RFC 8259; the rules and
 * the \u0000 policy are in core.h) and the decoding of its string spans.
 * Every reader of JSON bodies is a walker over ob_json_next; none of them
 * looks at JSON bytes itself. Pure: no allocation, no copies, one pass;
 * the lexer's state is its cursor, its depth and one bit per open
 * container.
 *
 * The state machine: a value is expected at the start, after ':' and after
 * an array's ','; after '[' or '{' also the closing bracket; after an
 * object's ',' a key; after a key its ':'; after a value inside a
 * container ',' or that container's closing bracket; after the top-level
 * value only white space. Commas and colons are consumed on the way to the
 * next token, never returned.
 */
#include "core.h"

#include <stdlib.h>

enum { S_VALUE, S_ELEM_OR_END, S_KEY_OR_END, S_KEY, S_COLON, S_AFTER, S_DONE, S_END, S_ERROR };

static const char *ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* The four hex digits of a "\u" escape at p (four bytes readable):
 * 0..0xFFFF, or -1 when one is not a hex digit. */
static int hex4(const char *p) {
  int v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else return -1;
  }
  return v;
}

size_t ob_utf8_seq_len(const unsigned char *p, const unsigned char *end) {
  unsigned char c = p[0];
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
  else return 0;
  if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < n; i++)
    if ((p[i] & 0xC0) != 0x80) return 0;
  return n;
}

static const char *digits(const char *p, const char *end) {
  const char *s = p;
  while (p < end && *p >= '0' && *p <= '9') p++;
  return p > s ? p : NULL;
}

/* A number at p: the byte after it, or NULL when p does not start one. */
static const char *number(const char *p, const char *end) {
  if (p < end && *p == '-') p++;
  if (p < end && *p == '0') p++;
  else if (!(p = digits(p, end))) return NULL;
  if (p < end && *p == '.' && !(p = digits(p + 1, end))) return NULL;
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    if (!(p = digits(p, end))) return NULL;
  }
  return p;
}

/* A string at p (on its opening quote): the byte after the closing quote,
 * or NULL with *why. Fills t's text, dlen and flags. */
static const char *string(const char *p, const char *end, ob_json_tok_t *t, const char **why) {
  const char *s = ++p;
  size_t dlen = 0;
  unsigned flags = 0;
  for (;;) {
    const char *q = ob_json_str_run(p, end);
    dlen += (size_t)(q - p);
    p = q;
    if (p >= end) {
      *why = "unterminated string";
      return NULL;
    }
    unsigned char c = (unsigned char)*p;
    if (c == '"') break;
    if (c >= 0x80) {
      size_t n = ob_utf8_seq_len((const unsigned char *)p, (const unsigned char *)end);
      if (!n) {
        *why = "invalid UTF-8 in a string";
        return NULL;
      }
      dlen += n, p += n;
      continue;
    }
    if (c < 0x20) {
      *why = "raw control character in a string";
      return NULL;
    }
    flags |= OB_JSON_ESC;
    if (end - p < 2) {
      *why = "unterminated string";
      return NULL;
    }
    switch (p[1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
      dlen++, p += 2;
      continue;
    case 'u':
      break;
    default:
      *why = "unknown escape";
      return NULL;
    }
    int cp = end - p >= 6 ? hex4(p + 2) : -1;
    if (cp < 0) {
      *why = "\\u without four hex digits";
      return NULL;
    }
    p += 6;
    if (cp >= 0xDC00 && cp <= 0xDFFF) {
      *why = "lone low surrogate";
      return NULL;
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      int lo = end - p >= 6 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2) : -1;
      if (lo < 0xDC00 || lo > 0xDFFF) {
        *why = "lone high surrogate";
        return NULL;
      }
      dlen += 4, p += 6;
      continue;
    }
    if (cp == 0) flags |= OB_JSON_NUL;
    dlen += cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
  }
  t->text = ob_iov(s, (size_t)(p - s));
  t->dlen = dlen;
  t->flags = flags;
  return p + 1;
}

void ob_json_lexer_init(ob_json_lexer_t *lx, ob_iov_t json) {
  lx->base = lx->pos = json.base;
  lx->end = json.base + json.len;
  lx->why = NULL;
  lx->depth = 0;
  lx->state = S_VALUE;
}

static bool in_object(const ob_json_lexer_t *lx) {
  int d = lx->depth - 1;
  return lx->in_object[d >> 3] >> (d & 7) & 1;
}

static int emit(ob_json_lexer_t *lx, ob_json_tok_t *t, int type, const char *s, const char *p) {
  t->type = type;
  t->raw = ob_iov(s, (size_t)(p - s));
  if (type != OB_JSON_TOK_KEY && type != OB_JSON_TOK_STRING) t->text = t->raw, t->dlen = 0, t->flags = 0;
  lx->pos = p;
  return type;
}

static int fail(ob_json_lexer_t *lx, ob_json_tok_t *t, const char *p, const char *why) {
  lx->state = S_ERROR;
  lx->why = why;
  lx->pos = p;
  t->type = OB_JSON_TOK_ERROR;
  t->raw = t->text = ob_iov(p, 0);
  t->dlen = 0, t->flags = 0;
  return OB_JSON_TOK_ERROR;
}

static int close_container(ob_json_lexer_t *lx, ob_json_tok_t *t, const char *p) {
  int type = *p == '}' ? OB_JSON_TOK_OBJECT_END : OB_JSON_TOK_ARRAY_END;
  lx->depth--;
  lx->state = lx->depth ? S_AFTER : S_DONE;
  return emit(lx, t, type, p, p + 1);
}

int ob_json_next(ob_json_lexer_t *lx, ob_json_tok_t *t) {
  const char *p = lx->pos, *end = lx->end, *s, *why = NULL;
  for (;;) {
    p = ws(p, end);
    switch (lx->state) {
    case S_ERROR:
      return fail(lx, t, lx->pos, lx->why);
    case S_END:
      return emit(lx, t, OB_JSON_TOK_END, p, p);
    case S_DONE:
      if (p != end) return fail(lx, t, p, "trailing bytes after the value");
      lx->state = S_END;
      return emit(lx, t, OB_JSON_TOK_END, p, p);
    case S_COLON:
      if (p >= end || *p != ':') return fail(lx, t, p, "expected ':'");
      p++;
      lx->state = S_VALUE;
      continue;
    case S_AFTER: {
      bool obj = in_object(lx);
      if (p >= end) return fail(lx, t, p, "truncated");
      if (*p == ',') {
        p++;
        lx->state = obj ? S_KEY : S_VALUE;
        continue;
      }
      if (*p == (obj ? '}' : ']')) return close_container(lx, t, p);
      return fail(lx, t, p, "expected ',' or a closing bracket");
    }
    case S_KEY_OR_END:
      if (p < end && *p == '}') return close_container(lx, t, p);
      /* fall through */
    case S_KEY:
      if (p >= end || *p != '"') return fail(lx, t, p, "expected a key");
      s = p;
      if (!(p = string(p, end, t, &why))) return fail(lx, t, s, why);
      lx->state = S_COLON;
      return emit(lx, t, OB_JSON_TOK_KEY, s, p);
    case S_ELEM_OR_END:
      if (p < end && *p == ']') return close_container(lx, t, p);
      /* fall through */
    case S_VALUE:
      break;
    }
    /* A value at p. */
    if (p >= end) return fail(lx, t, p, "truncated");
    s = p;
    int type;
    switch (*p) {
    case '{':
    case '[':
      if (lx->depth == OB_JSON_MAX_DEPTH) return fail(lx, t, p, "nested too deep");
      if (*p == '{') lx->in_object[lx->depth >> 3] |= (uint8_t)(1u << (lx->depth & 7));
      else lx->in_object[lx->depth >> 3] &= (uint8_t) ~(1u << (lx->depth & 7));
      lx->depth++;
      lx->state = *p == '{' ? S_KEY_OR_END : S_ELEM_OR_END;
      return emit(lx, t, *p == '{' ? OB_JSON_TOK_OBJECT : OB_JSON_TOK_ARRAY, s, p + 1);
    case '"':
      if (!(p = string(p, end, t, &why))) return fail(lx, t, s, why);
      type = OB_JSON_TOK_STRING;
      break;
    case 't':
    case 'f':
    case 'n': {
      const char *w = *p == 't' ? "true" : *p == 'f' ? "false" : "null";
      size_t n = strlen(w);
      if ((size_t)(end - p) < n || memcmp(p, w, n) != 0) return fail(lx, t, p, "bad literal");
      p += n;
      type = *s == 't' ? OB_JSON_TOK_TRUE : *s == 'f' ? OB_JSON_TOK_FALSE : OB_JSON_TOK_NULL;
      break;
    }
    default:
      if (*p != '-' && !(*p >= '0' && *p <= '9')) return fail(lx, t, p, "not a JSON value");
      if (!(p = number(p, end))) return fail(lx, t, s, "malformed number");
      type = OB_JSON_TOK_NUMBER;
      break;
    }
    lx->state = lx->depth ? S_AFTER : S_DONE;
    return emit(lx, t, type, s, p);
  }
}

int ob_json_skip(ob_json_lexer_t *lx, const ob_json_tok_t *t) {
  if (t->type == OB_JSON_TOK_ERROR) return OB_JSON_TOK_ERROR;
  if (t->type != OB_JSON_TOK_OBJECT && t->type != OB_JSON_TOK_ARRAY) return 0;
  int depth = lx->depth - 1;
  ob_json_tok_t u;
  while (lx->depth > depth)
    if (ob_json_next(lx, &u) == OB_JSON_TOK_ERROR) return OB_JSON_TOK_ERROR;
  return 0;
}

int ob_json_validate(ob_iov_t json, const char **why, size_t *off) {
  ob_json_lexer_t lx;
  ob_json_tok_t t;
  ob_json_lexer_init(&lx, json);
  int type;
  while ((type = ob_json_next(&lx, &t)) > OB_JSON_TOK_END) {
  }
  if (type == OB_JSON_TOK_END) return 0;
  if (why) *why = lx.why;
  if (off) *off = ob_json_lexer_offset(&lx);
  return OB_JSON_INVALID;
}

/* ---------------------------------------------------------------- decoding */

/* A cursor over string contents yielding decoded bytes (UTF-8; a surrogate
 * pair is its code point). Contents the tokenizer refused (a lone
 * surrogate, a malformed escape) read as their own bytes or three-byte
 * form, so it never reads outside the span whatever it is given. */
typedef struct {
  const char *p, *end;
  unsigned char buf[4];
  int i, n;
} dec_t;

static int dec_next(dec_t *d) {
  if (d->i < d->n) return d->buf[d->i++];
  if (d->p >= d->end) return -1;
  unsigned char c = (unsigned char)*d->p++;
  if (c != '\\' || d->p >= d->end) return c;
  char e = *d->p;
  switch (e) {
  case 'b': d->p++; return '\b';
  case 'f': d->p++; return '\f';
  case 'n': d->p++; return '\n';
  case 'r': d->p++; return '\r';
  case 't': d->p++; return '\t';
  case 'u': break;
  default: d->p++; return (unsigned char)e;
  }
  int cp = d->end - d->p >= 5 ? hex4(d->p + 1) : -1;
  if (cp < 0) return c;
  d->p += 5;
  if (cp >= 0xD800 && cp <= 0xDBFF && d->end - d->p >= 6 && d->p[0] == '\\' && d->p[1] == 'u') {
    int lo = hex4(d->p + 2);
    if (lo >= 0xDC00 && lo <= 0xDFFF) {
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      d->p += 6;
    }
  }
  if (cp < 0x80) {
    d->buf[0] = (unsigned char)cp, d->n = 1;
  } else if (cp < 0x800) {
    d->buf[0] = (unsigned char)(0xC0 | cp >> 6), d->buf[1] = (unsigned char)(0x80 | (cp & 0x3F)), d->n = 2;
  } else if (cp < 0x10000) {
    d->buf[0] = (unsigned char)(0xE0 | cp >> 12), d->buf[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    d->buf[2] = (unsigned char)(0x80 | (cp & 0x3F)), d->n = 3;
  } else {
    d->buf[0] = (unsigned char)(0xF0 | cp >> 18), d->buf[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    d->buf[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)), d->buf[3] = (unsigned char)(0x80 | (cp & 0x3F)), d->n = 4;
  }
  d->i = 1;
  return d->buf[0];
}

size_t ob_json_str_decode(ob_iov_t text, char *out) {
  /* Plain runs are copied whole; escapes go through the cursor. */
  const char *p = text.base, *end = text.base + text.len;
  size_t n = 0;
  while (p < end) {
    const char *q = memchr(p, '\\', (size_t)(end - p));
    if (!q) q = end;
    memcpy(out + n, p, (size_t)(q - p));
    n += (size_t)(q - p);
    if (q == end) break;
    dec_t d = {.p = q, .end = end};
    for (int c = dec_next(&d); c >= 0; c = d.i < d.n ? dec_next(&d) : -1) out[n++] = (char)c;
    p = d.p;
  }
  return n;
}

int ob_json_str_cmp(ob_iov_t a, ob_iov_t b) {
  /* Plain common prefix first: most keys have no escape at all. */
  size_t n = a.len < b.len ? a.len : b.len, i = 0;
  while (i < n && a.base[i] == b.base[i] && a.base[i] != '\\') i++;
  dec_t x = {.p = a.base + i, .end = a.base + a.len}, y = {.p = b.base + i, .end = b.base + b.len};
  for (;;) {
    int c = dec_next(&x), d = dec_next(&y);
    if (c != d) return c < d ? -1 : 1;
    if (c < 0) return 0;
  }
}

/* ---------------------------------------------------------------- keys */

/* Decoded length and first eight decoded bytes: keys equal decoded have
 * equal summaries, so most unequal pairs are told apart without decoding. */
static void summarize(ob_json_key_t *k) {
  k->head = 0;
  if (!memchr(k->raw.base, '\\', k->raw.len)) {
    k->dlen = k->raw.len;
    memcpy(&k->head, k->raw.base, k->raw.len < 8 ? k->raw.len : 8);
    return;
  }
  dec_t d = {.p = k->raw.base, .end = k->raw.base + k->raw.len};
  unsigned char head[8] = {0};
  size_t n = 0;
  for (int c; (c = dec_next(&d)) >= 0; n++)
    if (n < 8) head[n] = (unsigned char)c;
  k->dlen = n;
  memcpy(&k->head, head, 8);
}

static int key_cmp(const ob_json_key_t *a, const ob_json_key_t *b) {
  if (a->dlen != b->dlen) return a->dlen < b->dlen ? -1 : 1;
  if (a->head != b->head) return a->head < b->head ? -1 : 1;
  return a->dlen <= 8 ? 0 : ob_json_str_cmp(a->raw, b->raw);
}

static int by_key(const void *a, const void *b) { return key_cmp(a, b); }

bool ob_json_keys_dup(ob_json_key_t *keys, size_t n) {
  /* A handful of keys (most objects) are compared pairwise; more are
   * sorted, so thousands of keys cost n log n comparisons, not n^2. */
  if (n <= 8) {
    for (size_t i = 1; i < n; i++)
      for (size_t j = 0; j < i; j++)
        if (key_cmp(&keys[i], &keys[j]) == 0) return true;
    return false;
  }
  qsort(keys, n, sizeof *keys, by_key);
  for (size_t i = 1; i < n; i++)
    if (key_cmp(&keys[i - 1], &keys[i]) == 0) return true;
  return false;
}

void ob_json_keys_add(ob_json_keys_t *ks, ob_iov_t key) {
  if (ks->n == ks->cap) {
    size_t cap = ks->cap * 2;
    if (ks->k == ks->inl) {
      ks->k = ob_xmalloc(cap * sizeof *ks->k);
      memcpy(ks->k, ks->inl, sizeof ks->inl);
    } else {
      ks->k = ob_xrealloc(ks->k, cap * sizeof *ks->k);
    }
    ks->cap = cap;
  }
  ob_json_key_t *k = &ks->k[ks->n++];
  k->raw = key;
  summarize(k);
}

void ob_json_keys_dispose(ob_json_keys_t *ks) {
  if (ks->k != ks->inl) free(ks->k);
  ob_json_keys_init(ks);
}
