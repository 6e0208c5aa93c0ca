/*
 * canon.c: the canonical form of a JSON request body for cache keys, a
 * walker over core's tokenizer. Object members are sorted by their key as
 * written (bytes), insignificant white space is dropped, numbers and
 * strings are kept exactly as written (1.0 and 1 stay different: the
 * upstream may treat them differently; "\u0061" and "a" too, and \u0000
 * passes as the six bytes written), and the top-level members the caller
 * excludes are left out. Text that is not JSON (core.h: the tokenizer's
 * rules and depth cap) or has an object with two keys equal once decoded
 * has no canonical form (it is not cached): the upstream reads the last
 * of two equal keys, so {"a":1,"\u0061":2} and {"\u0061":2,"a":1} are
 * different requests that would sort to one form. Pure; fuzzed by
 * fuzz/fuzz_canon.c and fuzz/fuzz_json_diff.c.
 */
#include "cache.h"

#include <stdlib.h>

typedef struct {
  ob_json_lexer_t lx;
  ob_json_keys_t keys; /* the keys of the open objects, for the duplicate check */
  const char *const *skip;
  size_t nskip;
} walk_t;

typedef struct {
  ob_iov_t key;    /* as written, with quotes */
  size_t off, len; /* canonical value in the scratch buffer */
} member_t;

static int by_key(const void *a, const void *b) {
  const member_t *x = a, *y = b;
  size_t n = x->key.len < y->key.len ? x->key.len : y->key.len;
  int c = memcmp(x->key.base, y->key.base, n);
  return c ? c : (x->key.len < y->key.len ? -1 : x->key.len > y->key.len);
}

static bool excluded(ob_iov_t key, const char *const *skip, size_t nskip) {
  for (size_t i = 0; i < nskip; i++) {
    size_t n = strlen(skip[i]);
    if (key.len == n + 2 && memcmp(key.base + 1, skip[i], n) == 0) return true;
  }
  return false;
}

static bool value(walk_t *w, const ob_json_tok_t *t, ob_buf_t *out, bool top);

/* At '{': the members, sorted, into out. Excluded members are dropped only
 * at the top level. */
static bool object(walk_t *w, ob_buf_t *out, bool top) {
  ob_buf_t scratch;
  ob_buf_init(&scratch);
  member_t *m = NULL;
  size_t n = 0, cap = 0, mark = w->keys.n;
  bool ok = false;
  ob_json_tok_t k, v;
  while (ob_json_next(&w->lx, &k) == OB_JSON_TOK_KEY) {
    ob_json_keys_add(&w->keys, k.text);
    size_t off = scratch.len;
    ob_json_next(&w->lx, &v);
    if (!value(w, &v, &scratch, false)) goto done;
    if (top && excluded(k.raw, w->skip, w->nskip)) {
      scratch.len = off;
    } else {
      if (n == cap) cap = cap ? cap * 2 : 8, m = ob_xrealloc(m, cap * sizeof *m);
      m[n++] = (member_t){k.raw, off, scratch.len - off};
    }
  }
  if (k.type != OB_JSON_TOK_OBJECT_END) goto done;
  /* Duplicates (decoded, excluded members too): ambiguous. */
  if (w->keys.n - mark >= 2 && ob_json_keys_dup(w->keys.k + mark, w->keys.n - mark)) goto done;
  if (n > 1) qsort(m, n, sizeof *m, by_key);
  ok = true;
  ob_buf_append(out, "{", 1);
  for (size_t i = 0; i < n; i++) {
    if (i) ob_buf_append(out, ",", 1);
    ob_buf_append_iov(out, m[i].key);
    ob_buf_append(out, ":", 1);
    ob_buf_append(out, scratch.base + m[i].off, m[i].len);
  }
  ob_buf_append(out, "}", 1);
done:
  w->keys.n = mark;
  free(m);
  ob_buf_dispose(&scratch);
  return ok;
}

/* The value that begins with token t, into out. */
static bool value(walk_t *w, const ob_json_tok_t *t, ob_buf_t *out, bool top) {
  switch (t->type) {
  case OB_JSON_TOK_OBJECT:
    return object(w, out, top);
  case OB_JSON_TOK_ARRAY: {
    ob_buf_append(out, "[", 1);
    ob_json_tok_t e;
    for (bool first = true; ob_json_next(&w->lx, &e) != OB_JSON_TOK_ARRAY_END; first = false) {
      if (!first) ob_buf_append(out, ",", 1);
      if (!value(w, &e, out, false)) return false;
    }
    ob_buf_append(out, "]", 1);
    return true;
  }
  case OB_JSON_TOK_STRING:
  case OB_JSON_TOK_NUMBER:
  case OB_JSON_TOK_TRUE:
  case OB_JSON_TOK_FALSE:
  case OB_JSON_TOK_NULL:
    ob_buf_append_iov(out, t->raw);
    return true;
  default:
    return false; /* ERROR */
  }
}

bool ob_cache_canonical(ob_iov_t json, const char *const *skip, size_t nskip, ob_buf_t *out) {
  walk_t w = {.skip = skip, .nskip = nskip};
  ob_json_lexer_init(&w.lx, json);
  ob_json_keys_init(&w.keys);
  size_t mark = out->len;
  ob_json_tok_t t;
  ob_json_next(&w.lx, &t);
  bool ok = value(&w, &t, out, true) && ob_json_next(&w.lx, &t) == OB_JSON_TOK_END;
  ob_json_keys_dispose(&w.keys);
  if (!ok) out->len = mark;
  return ok;
}
