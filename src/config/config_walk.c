/*
 * config_walk.c: the generic part of the config parser: the JSON path kept
 * while walking, the error list ("json.path: message"), the value helpers
 * (want_string, want_uint, want_file ...), the table-driven object and
 * array walkers and the repeat-detecting seen sets. It knows no section of
 * the schema; it must not touch files or sockets.
 */
#include "config_int.h"

#include <stdarg.h>

static uint64_t fnv1a(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 14695981039346656037ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
  return h;
}

static void seen_put(seen_set_t *s, seen_entry_t e) {
  size_t i = (size_t)e.hash & (s->cap - 1);
  while (s->slots[i].key) i = (i + 1) & (s->cap - 1);
  s->slots[i] = e;
  s->len++;
}

/* Add key unless an equal one is there; returns that earlier entry, or NULL
 * after adding. */
const seen_entry_t *ob_config_seen_add(seen_set_t *s, const void *key, size_t len, size_t a, size_t b) {
  uint64_t h = fnv1a(key, len);
  if (s->cap) {
    for (size_t i = (size_t)h & (s->cap - 1); s->slots[i].key; i = (i + 1) & (s->cap - 1)) {
      const seen_entry_t *e = &s->slots[i];
      if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0) return e;
    }
  }
  if ((s->len + 1) * 2 > s->cap) { /* keep the load at or under one half */
    seen_set_t bigger = {.cap = s->cap ? s->cap * 2 : 16};
    bigger.slots = ob_xcalloc(bigger.cap, sizeof *bigger.slots);
    for (size_t i = 0; i < s->cap; i++)
      if (s->slots[i].key) seen_put(&bigger, s->slots[i]);
    free(s->slots);
    *s = bigger;
  }
  seen_put(s, (seen_entry_t){.key = key, .len = len, .hash = h, .a = a, .b = b});
  return NULL;
}

void ob_config_seen_dispose(seen_set_t *s) {
  free(s->slots);
  *s = (seen_set_t){0};
}

void ob_config_path_terminate(ctx_t *cx) {
  *ob_buf_reserve(&cx->path, 1) = '\0';
}

static const char *path_str(ctx_t *cx) {
  return cx->path.len ? cx->path.base : "$";
}

/* A key that can be written after a dot without ambiguity. */
static bool plain_key(const char *k) {
  if (!*k) return false;
  for (; *k; k++) {
    unsigned char ch = (unsigned char)*k;
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
      return false;
  }
  return true;
}

/* Descend into key; returns the mark ob_config_path_pop() restores. Keys that are not
 * plain identifiers are written ["like this"], JSON-escaped, so an error line
 * never contains a raw newline or ob_config_quote. */
size_t ob_config_path_key(ctx_t *cx, const char *key) {
  size_t mark = cx->path.len;
  if (plain_key(key)) {
    if (mark) ob_buf_append(&cx->path, ".", 1);
    ob_buf_append_str(&cx->path, key);
  } else {
    ob_buf_append(&cx->path, "[", 1);
    ob_buf_append_json_str(&cx->path, ob_iov_str(key));
    ob_buf_append(&cx->path, "]", 1);
  }
  ob_config_path_terminate(cx);
  return mark;
}

size_t ob_config_path_index(ctx_t *cx, size_t i) {
  size_t mark = cx->path.len;
  ob_buf_printf(&cx->path, "[%zu]", i);
  ob_config_path_terminate(cx);
  return mark;
}

void ob_config_path_pop(ctx_t *cx, size_t mark) {
  cx->path.len = mark;
  ob_config_path_terminate(cx);
}

static void push_err(ctx_t *cx, char *line) {
  if (cx->num_errs == cx->cap_errs) {
    cx->cap_errs = cx->cap_errs ? cx->cap_errs * 2 : 8;
    cx->errs = ob_xrealloc(cx->errs, cx->cap_errs * sizeof *cx->errs);
  }
  cx->errs[cx->num_errs++] = line;
}

/* Record "<current path>: <message>". */
__attribute__((format(printf, 2, 3))) void ob_config_errf(ctx_t *cx, const char *fmt, ...) {
  char *msg = NULL;
  va_list ap;
  va_start(ap, fmt);
  int n = vasprintf(&msg, fmt, ap);
  va_end(ap);
  if (n < 0) {
    fprintf(stderr, "obleth: out of memory formatting a config error\n");
    abort();
  }
  ob_buf_t line;
  ob_buf_init(&line);
  ob_buf_append_str(&line, path_str(cx));
  ob_buf_append(&line, ": ", 2);
  ob_buf_append(&line, msg, (size_t)n);
  *ob_buf_reserve(&line, 1) = '\0';
  free(msg);
  push_err(cx, line.base); /* ownership of the bytes moves to the list */
}

/* s as a JSON string literal with quotes; the caller frees it. Used to show
 * user values inside messages without letting them break the line. */
char *ob_config_quote(const char *s) {
  ob_buf_t b;
  ob_buf_init(&b);
  ob_buf_append_json_str(&b, ob_iov_str(s));
  *ob_buf_reserve(&b, 1) = '\0';
  return b.base;
}

void ob_config_errors_dispose(ob_config_errors_t *e) {
  if (!e) return;
  for (size_t i = 0; i < e->len; i++) free(e->items[i]);
  free(e->items);
  e->items = NULL;
  e->len = 0;
}

/* Move this parse's errors to the end of the caller's list (or drop them). */
void ob_config_flush_errs(ctx_t *cx, ob_config_errors_t *out) {
  if (out && cx->num_errs) {
    out->items = ob_xrealloc(out->items, (out->len + cx->num_errs) * sizeof *out->items);
    memcpy(out->items + out->len, cx->errs, cx->num_errs * sizeof *cx->errs);
    out->len += cx->num_errs;
  } else {
    for (size_t i = 0; i < cx->num_errs; i++) free(cx->errs[i]);
  }
  free(cx->errs);
  cx->errs = NULL;
  cx->num_errs = cx->cap_errs = 0;
}

/* ---------------------------------------------------------------- value checks */

/* A string value, or NULL after reporting why not. nonempty rejects "". */
const char *ob_config_want_string(ctx_t *cx, const cJSON *v, bool nonempty) {
  if (!cJSON_IsString(v) || !v->valuestring) {
    ob_config_errf(cx, "expected a string");
    return NULL;
  }
  if (nonempty && !v->valuestring[0]) {
    ob_config_errf(cx, "must not be empty");
    return NULL;
  }
  return v->valuestring;
}

/* A string that must start with '/' (route prefixes and rewrites). */
const char *ob_config_want_abs_path(ctx_t *cx, const cJSON *v) {
  const char *s = ob_config_want_string(cx, v, false);
  if (s && s[0] != '/') {
    ob_config_errf(cx, "must start with \"/\"");
    return NULL;
  }
  return s;
}

bool ob_config_want_bool(ctx_t *cx, const cJSON *v, bool *out) {
  if (!cJSON_IsBool(v)) {
    ob_config_errf(cx, "expected true or false");
    return false;
  }
  *out = cJSON_IsTrue(v);
  return true;
}

/*
 * An integral JSON number in [min, max] (max <= 2^53). "1e3" and "5.0" are
 * integers; "1.5", "-1", "1e400" and non-numbers are not. The message names
 * the accepted set so the reader knows what to write instead.
 */
bool ob_config_want_uint(ctx_t *cx, const cJSON *v, uint64_t min, uint64_t max, uint64_t *out) {
  if (cJSON_IsNumber(v)) {
    double d = v->valuedouble;
    if (d >= (double)min && d <= (double)max && d == (double)(uint64_t)d) {
      *out = (uint64_t)d;
      return true;
    }
  }
  char what[64];
  if (min == 0)
    snprintf(what, sizeof what, "a non-negative integer");
  else if (min == 1)
    snprintf(what, sizeof what, "a positive integer");
  else
    snprintf(what, sizeof what, "an integer >= %llu", (unsigned long long)min);
  if (cJSON_IsNumber(v) && v->valuedouble > (double)max)
    ob_config_errf(cx, "expected %s no larger than %llu", what, (unsigned long long)max);
  else
    ob_config_errf(cx, "expected %s", what);
  return false;
}

/* s resolved against the config file's folder when relative; a new string. */
char *ob_config_resolve_path(ctx_t *cx, const char *s) {
  if (s[0] == '/' || !cx->base_dir || !cx->base_dir[0]) return ob_xstrdup(s);
  ob_buf_t b;
  ob_buf_init(&b);
  ob_buf_append_str(&b, cx->base_dir);
  if (b.base[b.len - 1] != '/') ob_buf_append(&b, "/", 1);
  ob_buf_append_str(&b, s);
  *ob_buf_reserve(&b, 1) = '\0';
  return b.base;
}

/* A file path, resolved against the config file's folder when relative. */
char *ob_config_want_file(ctx_t *cx, const cJSON *v) {
  const char *s = ob_config_want_string(cx, v, true);
  return s ? ob_config_resolve_path(cx, s) : NULL;
}

bool ob_config_name_in(const char *const *names, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(names[i], name) == 0) return true;
  return false;
}

bool ob_config_upstream_known(ctx_t *cx, const char *name) {
  return ob_config_name_in(cx->up_names, cx->num_up_names, name);
}

/* A reference to an upstream by name: must be one the file defines. */
char *ob_config_want_upstream_ref(ctx_t *cx, const cJSON *v) {
  const char *s = ob_config_want_string(cx, v, true);
  if (!s) return NULL;
  if (!ob_config_upstream_known(cx, s)) {
    char *q = ob_config_quote(s);
    ob_config_errf(cx, "no upstream named %s", q);
    free(q);
    return NULL;
  }
  return ob_xstrdup(s);
}

/* ---------------------------------------------------------------- objects */

/*
 * Walk obj's members in document order. Unknown keys and repeats of a known
 * key are errors (cJSON keeps both copies of a repeated key, and silently
 * using one would hide a typo). Missing required keys are reported last, at
 * the object's own path. Returns a bit set of the keys that were present.
 */
uint32_t ob_config_walk_object(ctx_t *cx, const cJSON *obj, const field_t *fields, size_t n, field_fn *fn, void *target) {
  uint32_t seen = 0;
  for (const cJSON *it = obj->child; it; it = it->next) {
    const char *key = it->string ? it->string : "";
    size_t mark = ob_config_path_key(cx, key);
    size_t i = 0;
    while (i < n && strcmp(fields[i].key, key) != 0) i++;
    if (i == n) {
      ob_config_errf(cx, "unknown key");
    } else if (seen & (1u << i)) {
      ob_config_errf(cx, "duplicate key");
    } else {
      seen |= 1u << i;
      fn(cx, i, it, target);
    }
    ob_config_path_pop(cx, mark);
  }
  for (size_t i = 0; i < n; i++)
    if (fields[i].required && !(seen & (1u << i))) ob_config_errf(cx, "missing required key \"%s\"", fields[i].key);
  return seen;
}

void ob_config_walk_array(ctx_t *cx, const cJSON *arr, item_fn *item, void *target) {
  size_t i = 0;
  for (const cJSON *it = arr->child; it; it = it->next, i++) {
    size_t mark = ob_config_path_index(cx, i);
    if (!cJSON_IsObject(it))
      ob_config_errf(cx, "expected an object");
    else
      item(cx, i, it, target);
    ob_config_path_pop(cx, mark);
  }
}

size_t ob_config_array_len(const cJSON *arr) {
  size_t n = 0;
  for (const cJSON *it = arr->child; it; it = it->next) n++;
  return n;
}

/* ---------------------------------------------------------------- host:port */

/* A finite JSON number in [min, max]. */
bool ob_config_want_number(ctx_t *cx, const cJSON *v, double min, double max, bool min_open, double *out) {
  if (cJSON_IsNumber(v) && v->valuedouble <= max && (min_open ? v->valuedouble > min : v->valuedouble >= min)) {
    *out = v->valuedouble;
    return true;
  }
  ob_config_errf(cx, "expected a number %s %g and <= %g", min_open ? ">" : ">=", min, max);
  return false;
}

/* noinline: inlined into ob_config_apply_defaults(&c->ledger, ...) GCC (with ASan,
   -O2) tracks p as the struct's first member and reports a false
   -Wstringop-overflow; the offset always comes from offsetof. */
__attribute__((noinline)) void ob_config_set_int(void *base, const field_t *f, uint64_t v) {
  char *p = (char *)base + f->off;
  if (f->wide) {
    uint64_t w = v;
    memcpy(p, &w, sizeof w);
  } else {
    uint32_t n = (uint32_t)v;
    memcpy(p, &n, sizeof n);
  }
}

/* Fields with max == 0 are not integers (tables that mix kinds). */
void ob_config_apply_defaults(void *base, const field_t *fields, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (fields[i].max) ob_config_set_int(base, &fields[i], fields[i].def);
}

void ob_config_on_int_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  const int_target_t *t = target;
  const field_t *f = &t->fields[idx];
  uint64_t n;
  if (ob_config_want_uint(cx, v, f->min, f->max, &n)) ob_config_set_int(t->base, f, n);
}

/* Check that arr is an array (non-empty when asked) and return its length
 * in *n; the caller allocates the snapshot's items, then walks them. */
bool ob_config_want_list(ctx_t *cx, const cJSON *arr, bool nonempty, size_t *n) {
  if (!cJSON_IsArray(arr) || (nonempty && !arr->child)) {
    ob_config_errf(cx, nonempty ? "expected a non-empty array" : "expected an array");
    return false;
  }
  *n = ob_config_array_len(arr);
  return true;
}
