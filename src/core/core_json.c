/*
 * core_json.c: the strict JSON pieces every body scanner shares: the string
 * token (RFC 8259 escapes), key comparison on the decoded key, and one
 * strict validating walk that rejects what a policy reader and the
 * upstream's parser could read differently (duplicate keys, \u0000). The
 * gateway decides policy on bodies it forwards unchanged; the upstream
 * (Node's JSON.parse, Python's json.loads) keeps the last of two equal
 * keys, cJSON the first, and cJSON cuts a string at \u0000. Pure: no
 * allocation except the key list of a body with more keys than fit inline.
 */
#include "core.h"

#include <stdlib.h>

static const char *ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

int ob_json_hex4(const char *p) {
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

const char *ob_json_str_end(const char *p, const char *end, bool *nul) {
  p++;
  for (;;) {
    p = ob_json_str_run(p, end);
    if (p >= end) return NULL;
    unsigned char c = (unsigned char)*p;
    if (c == '"') return p + 1;
    if (c < 0x20 || end - p < 2) return NULL;
    switch (p[1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
      p += 2;
      break;
    case 'u': {
      int v = end - p >= 6 ? ob_json_hex4(p + 2) : -1;
      if (v < 0) return NULL;
      if (v == 0 && nul) *nul = true;
      p += 6;
      break;
    }
    default:
      return NULL;
    }
  }
}

/* ---------------------------------------------------------------- decoded comparison */

/* A cursor over string contents yielding decoded bytes (UTF-8; a surrogate
 * pair is its code point, a lone surrogate its own three bytes). Malformed
 * escapes (which callers have already refused) read as their raw bytes, so
 * it never reads outside the span. */
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
  int cp = d->end - d->p >= 5 ? ob_json_hex4(d->p + 1) : -1;
  if (cp < 0) return c;
  d->p += 5;
  if (cp >= 0xD800 && cp <= 0xDBFF && d->end - d->p >= 6 && d->p[0] == '\\' && d->p[1] == 'u') {
    int lo = ob_json_hex4(d->p + 2);
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

/* ---------------------------------------------------------------- the strict walk */

static const char *lit(const char *p, const char *end, const char *w, size_t n) {
  return (size_t)(end - p) >= n && memcmp(p, w, n) == 0 ? p + n : NULL;
}

int ob_json_check(ob_iov_t json, int levels, ob_json_member_cb *cb, void *ud, const char **why) {
  const char *p = json.base, *end = json.base + json.len;
  char close[OB_JSON_MAX_DEPTH];
  size_t mark[OB_JSON_MAX_DEPTH]; /* an object's first key in ks */
  int depth = 0, odepth = 0, rv = OB_JSON_INVALID;
  bool read = false; /* the value ahead is a member of an object at a checked level */
  ob_iov_t top_key = {0};
  const char *top_val = NULL, *w = NULL;
  ob_json_keys_t ks;
  ob_json_keys_init(&ks);
  p = ws(p, end);
  for (;;) {
    /* A value at p. */
    if (p >= end) {
      w = "truncated";
      goto fail;
    }
    char c = *p;
    bool opened = false;
    if (c == '"') {
      bool nul = false;
      if (!(p = ob_json_str_end(p, end, &nul))) {
        w = "malformed string";
        goto fail;
      }
      if (nul && read) {
        w = "\\u0000 in a string member the gateway reads";
        rv = OB_JSON_AMBIGUOUS;
        goto fail;
      }
    } else if (c == '{' || c == '[') {
      if (depth == OB_JSON_MAX_DEPTH) {
        w = "nested too deep";
        goto fail;
      }
      close[depth] = c == '{' ? '}' : ']';
      mark[depth] = ks.n;
      if (c == '{') odepth++;
      depth++;
      p = ws(p + 1, end);
      opened = p >= end || *p != close[depth - 1]; /* else empty: closed below */
    } else if (c == 't' || c == 'f' || c == 'n') {
      p = c == 't' ? lit(p, end, "true", 4) : c == 'f' ? lit(p, end, "false", 5) : lit(p, end, "null", 4);
      if (!p) {
        w = "bad literal";
        goto fail;
      }
    } else if (!(p = ob_json_num_end(p, end))) {
      w = "not a JSON value";
      goto fail;
    }
    /* After a value, or an opened container: the next member or element,
     * closing containers on the way. */
    bool member = false;
    if (opened) {
      member = close[depth - 1] == '}';
    } else {
      for (;;) {
        if (depth == 1 && close[0] == '}' && top_val && cb) cb(ud, top_key, ob_iov(top_val, (size_t)(p - top_val)));
        if (depth == 1) top_val = NULL;
        p = ws(p, end);
        if (depth == 0) goto done;
        if (p >= end) {
          w = "truncated";
          goto fail;
        }
        if (*p == close[depth - 1]) {
          p++;
          depth--;
          if (close[depth] == '}') {
            size_t n = ks.n - mark[depth];
            if (n >= 2 && ob_json_keys_dup(ks.k + mark[depth], n)) {
              w = "duplicate key";
              rv = OB_JSON_AMBIGUOUS;
              goto fail;
            }
            ks.n = mark[depth];
            odepth--;
          }
          continue;
        }
        if (*p != ',') {
          w = "expected ',' or a closing bracket";
          goto fail;
        }
        p = ws(p + 1, end);
        member = close[depth - 1] == '}';
        break;
      }
    }
    read = false;
    if (member) {
      if (p >= end || *p != '"') {
        w = "expected a key";
        goto fail;
      }
      const char *k = p + 1;
      bool nul = false;
      if (!(p = ob_json_str_end(p, end, &nul))) {
        w = "malformed key";
        goto fail;
      }
      ob_iov_t key = ob_iov(k, (size_t)(p - 1 - k));
      read = odepth <= levels;
      if (read) {
        if (nul) {
          w = "\\u0000 in a key";
          rv = OB_JSON_AMBIGUOUS;
          goto fail;
        }
        ob_json_keys_add(&ks, key);
      }
      p = ws(p, end);
      if (p >= end || *p != ':') {
        w = "expected ':'";
        goto fail;
      }
      p = ws(p + 1, end);
      if (depth == 1) top_key = key, top_val = p;
    }
  }
done:
  ob_json_keys_dispose(&ks);
  if (p != end) {
    if (why) *why = "trailing bytes after the value";
    return OB_JSON_INVALID;
  }
  return 0;
fail:
  ob_json_keys_dispose(&ks);
  if (why) *why = w;
  return rv;
}
