/*
 * canon.c: the canonical form of a JSON request body for cache keys.
 * Object members are sorted by their key as written (bytes), insignificant
 * white space is dropped, numbers and strings are kept exactly as written
 * (1.0 and 1 stay different: the upstream may treat them differently), and
 * the top-level members the caller excludes are left out. Text that is not
 * JSON, has duplicate keys or nests deeper than 64 levels has no canonical
 * form (it is not cached). Pure; fuzzed by fuzz/fuzz_canon.c.
 */
#include "cache.h"

#include <stdlib.h>

#define MAX_DEPTH 64

typedef struct {
  const char *p, *end;
} cur_t;

static void ws(cur_t *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

/* A string token as written (quotes included); false when malformed. */
static bool string_tok(cur_t *c, ob_iov_t *out) {
  const char *s = c->p;
  if (c->p >= c->end || *c->p != '"') return false;
  c->p++;
  while ((c->p = ob_json_str_run(c->p, c->end)) < c->end) {
    unsigned char ch = (unsigned char)*c->p;
    if (ch == '"') {
      c->p++;
      *out = ob_iov(s, (size_t)(c->p - s));
      return true;
    }
    if (ch < 0x20) return false;
    if (ch == '\\') {
      if (c->p + 1 >= c->end) return false;
      char e = c->p[1];
      if (e == 'u') {
        if (c->end - c->p < 6) return false;
        for (int i = 2; i < 6; i++) {
          char h = c->p[i];
          if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F'))) return false;
        }
        c->p += 6;
        continue;
      }
      if (!strchr("\"\\/bfnrt", e) || e == '\0') return false;
      c->p += 2;
      continue;
    }
    c->p++;
  }
  return false;
}

static bool number_tok(cur_t *c, ob_iov_t *out) {
  const char *e = ob_json_num_end(c->p, c->end);
  if (!e) return false;
  *out = ob_iov(c->p, (size_t)(e - c->p));
  c->p = e;
  return true;
}

static bool literal(cur_t *c, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0) return false;
  c->p += n;
  return true;
}

typedef struct {
  ob_iov_t key;  /* as written, with quotes */
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

static bool value(cur_t *c, ob_buf_t *out, int depth, const char *const *skip, size_t nskip);

static bool object(cur_t *c, ob_buf_t *out, int depth, const char *const *skip, size_t nskip) {
  c->p++; /* { */
  ob_buf_t scratch;
  ob_buf_init(&scratch);
  member_t *m = NULL;
  size_t n = 0, cap = 0;
  bool ok = false;
  ws(c);
  if (c->p < c->end && *c->p == '}') {
    c->p++;
    ok = true;
    goto done;
  }
  for (;;) {
    ws(c);
    ob_iov_t key;
    if (!string_tok(c, &key)) goto done;
    ws(c);
    if (c->p >= c->end || *c->p != ':') goto done;
    c->p++;
    ws(c);
    size_t off = scratch.len;
    /* Excluded members are dropped only at the top level (depth 1). */
    if (!value(c, &scratch, depth + 1, NULL, 0)) goto done;
    if (depth == 1 && excluded(key, skip, nskip)) {
      scratch.len = off;
    } else {
      if (n == cap) cap = cap ? cap * 2 : 8, m = ob_xrealloc(m, cap * sizeof *m);
      m[n++] = (member_t){key, off, scratch.len - off};
    }
    ws(c);
    if (c->p < c->end && *c->p == ',') {
      c->p++;
      continue;
    }
    if (c->p < c->end && *c->p == '}') {
      c->p++;
      break;
    }
    goto done;
  }
  if (n > 1) qsort(m, n, sizeof *m, by_key);
  for (size_t i = 1; i < n; i++)
    if (by_key(&m[i - 1], &m[i]) == 0) goto done; /* duplicate key: ambiguous */
  ok = true;
done:
  if (ok) {
    ob_buf_append(out, "{", 1);
    for (size_t i = 0; i < n; i++) {
      if (i) ob_buf_append(out, ",", 1);
      ob_buf_append_iov(out, m[i].key);
      ob_buf_append(out, ":", 1);
      ob_buf_append(out, scratch.base + m[i].off, m[i].len);
    }
    ob_buf_append(out, "}", 1);
  }
  free(m);
  ob_buf_dispose(&scratch);
  return ok;
}

static bool array(cur_t *c, ob_buf_t *out, int depth) {
  c->p++; /* [ */
  ob_buf_append(out, "[", 1);
  ws(c);
  if (c->p < c->end && *c->p == ']') {
    c->p++;
    ob_buf_append(out, "]", 1);
    return true;
  }
  for (bool first = true;; first = false) {
    ws(c);
    if (!first) ob_buf_append(out, ",", 1);
    if (!value(c, out, depth + 1, NULL, 0)) return false;
    ws(c);
    if (c->p < c->end && *c->p == ',') {
      c->p++;
      continue;
    }
    if (c->p < c->end && *c->p == ']') {
      c->p++;
      ob_buf_append(out, "]", 1);
      return true;
    }
    return false;
  }
}

static bool value(cur_t *c, ob_buf_t *out, int depth, const char *const *skip, size_t nskip) {
  if (depth > MAX_DEPTH || c->p >= c->end) return false;
  ob_iov_t tok;
  switch (*c->p) {
  case '{': return object(c, out, depth, skip, nskip);
  case '[': return array(c, out, depth);
  case '"':
    if (!string_tok(c, &tok)) return false;
    ob_buf_append_iov(out, tok);
    return true;
  case 't': return literal(c, "true") && (ob_buf_append_str(out, "true"), true);
  case 'f': return literal(c, "false") && (ob_buf_append_str(out, "false"), true);
  case 'n': return literal(c, "null") && (ob_buf_append_str(out, "null"), true);
  default:
    if (!number_tok(c, &tok)) return false;
    ob_buf_append_iov(out, tok);
    return true;
  }
}

bool ob_cache_canonical(ob_iov_t json, const char *const *skip, size_t nskip, ob_buf_t *out) {
  cur_t c = {json.base, json.base + json.len};
  size_t mark = out->len;
  ws(&c);
  bool ok = value(&c, out, 1, skip, nskip);
  ws(&c);
  if (!ok || c.p != c.end) {
    out->len = mark;
    return false;
  }
  return true;
}
