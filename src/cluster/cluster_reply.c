/*
 * cluster_reply.c: the pure half of the Redis link: argument lists, and
 * the checks every reply passes before anything reads it. No I/O; the
 * libFuzzer target fuzz/fuzz_redis_reply.c drives these parsers with
 * replies decoded by hiredis's own reader from arbitrary bytes.
 */
#include "cluster.h"

#include <stdio.h>
#include <stdlib.h>

void ob_cluster_args_init(ob_cluster_args_t *a) {
  ob_buf_init(&a->bytes);
  a->ends = NULL;
  a->argc = a->cap = 0;
}

void ob_cluster_args_dispose(ob_cluster_args_t *a) {
  ob_buf_dispose(&a->bytes);
  free(a->ends);
  a->ends = NULL;
  a->argc = a->cap = 0;
}

void ob_cluster_args_reset(ob_cluster_args_t *a) {
  ob_buf_reset(&a->bytes);
  a->argc = 0;
}

void ob_cluster_args_mem(ob_cluster_args_t *a, const void *p, size_t n) {
  if (a->argc == a->cap) {
    a->cap = a->cap ? a->cap * 2 : 16;
    a->ends = ob_xrealloc(a->ends, a->cap * sizeof *a->ends);
  }
  ob_buf_append(&a->bytes, p, n);
  a->ends[a->argc++] = a->bytes.len;
}

void ob_cluster_args_u64(ob_cluster_args_t *a, uint64_t v) {
  char s[OB_U64_CHARS];
  ob_cluster_args_mem(a, s, ob_fmt_u64(s, v));
}

void ob_cluster_args_i64(ob_cluster_args_t *a, int64_t v) {
  char s[24];
  int n = snprintf(s, sizeof s, "%lld", (long long)v);
  ob_cluster_args_mem(a, s, (size_t)n);
}

void ob_cluster_args_pair(ob_cluster_args_t *a, const char *kind, const char *name) {
  size_t k = strlen(kind), n = strlen(name);
  char *p = ob_buf_reserve(&a->bytes, k + 1 + n);
  memcpy(p, kind, k);
  p[k] = '\0';
  memcpy(p + k + 1, name, n);
  a->bytes.len += k + 1 + n;
  ob_cluster_args_mem(a, "", 0); /* the bytes are in; record where they end */
}

/* hiredis 0.14 allocates an array's element vector as soon as it reads
 * "*<count>", so "*2000000000" from a hostile or broken peer would be a
 * 16 GB allocation; newer hiredis has a maxelements setting, this one
 * does not. The reader's own object functions, wrapped with bounds: above
 * them the reader fails ("out of memory"), which the link treats as any
 * other broken reply. */
static redisReplyObjectFunctions bounded;
static void *(*base_array)(const redisReadTask *, int);
static void *(*base_string)(const redisReadTask *, char *, size_t);

static void *bounded_array(const redisReadTask *t, int n) {
  return n > OB_CLUSTER_MAX_ELEMENTS ? NULL : base_array(t, n);
}

static void *bounded_string(const redisReadTask *t, char *s, size_t n) {
  return n > OB_CLUSTER_MAX_STRING ? NULL : base_string(t, s, n);
}

void ob_cluster_reader_bound(redisReader *rd) {
  if (!base_array) { /* the first link, at start-up, before any other thread */
    bounded = *rd->fn;
    base_array = bounded.createArray;
    base_string = bounded.createString;
    bounded.createArray = bounded_array;
    bounded.createString = bounded_string;
  }
  rd->fn = &bounded;
}

bool ob_cluster_reply_ints(const redisReply *r, int64_t *out, size_t max, size_t *n) {
  *n = 0;
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements > max) return false;
  for (size_t i = 0; i < r->elements; i++) {
    const redisReply *e = r->element[i];
    if (!e || e->type != REDIS_REPLY_INTEGER) return false;
    out[i] = (int64_t)e->integer;
  }
  *n = r->elements;
  return true;
}

static bool is_str(const redisReply *r) {
  return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) && (r->str || r->len == 0);
}

/* A decimal integer in a bulk string (what HGETALL answers for counters). */
static bool str_int(const redisReply *r, int64_t *v) {
  if (r && r->type == REDIS_REPLY_INTEGER) {
    *v = (int64_t)r->integer;
    return true;
  }
  if (!is_str(r) || r->len == 0 || r->len > 20) return false;
  size_t i = 0;
  bool neg = r->str[0] == '-';
  if (neg) i = 1;
  if (i == r->len) return false;
  uint64_t x = 0;
  for (; i < r->len; i++) {
    char c = r->str[i];
    if (c < '0' || c > '9' || x > (UINT64_MAX - 9) / 10) return false;
    x = x * 10 + (uint64_t)(c - '0');
  }
  if (x > (uint64_t)INT64_MAX) return false;
  *v = neg ? -(int64_t)x : (int64_t)x;
  return true;
}

static char *dup_str(const redisReply *r) { return ob_xstrndup(r->str ? r->str : "", r->len); }

static bool strnul(const redisReply *r) { return memchr(r->str, '\0', r->len) != NULL; }

void ob_cluster_info_dispose(ob_cluster_info_t *in) {
  for (size_t i = 0; i < in->num_replicas; i++) {
    ob_cluster_replica_info_t *ri = &in->replicas[i];
    free(ri->id);
    free(ri->digest);
    for (size_t k = 0; k < ri->num_pools; k++) free(ri->pools[k]);
    free(ri->pools);
    free(ri->held);
  }
  free(in->replicas);
  free(in->counter_names);
  free(in->counter_values);
  free(in->names_buf);
  memset(in, 0, sizeof *in);
}

/* {{id, age, digest, {pool, n, ...}}, ...}, {field, value, ...} */
bool ob_cluster_info_parse(const redisReply *r, ob_cluster_info_t *out) {
  memset(out, 0, sizeof *out);
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) return false;
  const redisReply *reps = r->element[0], *cnt = r->element[1];
  if (!reps || reps->type != REDIS_REPLY_ARRAY || !cnt || cnt->type != REDIS_REPLY_ARRAY || cnt->elements % 2)
    return false;
  out->replicas = ob_xcalloc(reps->elements + 1, sizeof *out->replicas);
  for (size_t i = 0; i < reps->elements; i++) {
    const redisReply *e = reps->element[i];
    if (!e || e->type != REDIS_REPLY_ARRAY || e->elements != 4) goto fail;
    ob_cluster_replica_info_t *ri = &out->replicas[out->num_replicas];
    const redisReply *h = e->element[3];
    if (!is_str(e->element[0]) || strnul(e->element[0]) || !is_str(e->element[2]) || strnul(e->element[2]) ||
        !h || h->type != REDIS_REPLY_ARRAY || h->elements % 2)
      goto fail;
    int64_t age;
    if (!str_int(e->element[1], &age)) goto fail;
    out->num_replicas++;
    ri->id = dup_str(e->element[0]);
    ri->age_ms = age;
    ri->digest = dup_str(e->element[2]);
    ri->pools = ob_xcalloc(h->elements / 2 + 1, sizeof *ri->pools);
    ri->held = ob_xcalloc(h->elements / 2 + 1, sizeof *ri->held);
    for (size_t k = 0; k + 1 < h->elements; k += 2) {
      int64_t v;
      if (!is_str(h->element[k]) || strnul(h->element[k]) || !str_int(h->element[k + 1], &v)) goto fail;
      ri->pools[ri->num_pools] = dup_str(h->element[k]);
      ri->held[ri->num_pools++] = v;
    }
  }
  size_t nc = cnt->elements / 2, total = 0;
  for (size_t k = 0; k < cnt->elements; k += 2) {
    if (!is_str(cnt->element[k])) goto fail;
    total += cnt->element[k]->len + 1;
  }
  out->names_buf = ob_xmalloc(total + 1);
  out->counter_names = ob_xcalloc(nc + 1, sizeof *out->counter_names);
  out->counter_values = ob_xcalloc(nc + 1, sizeof *out->counter_values);
  size_t off = 0;
  for (size_t k = 0; k < nc; k++) {
    const redisReply *f = cnt->element[2 * k];
    if (!str_int(cnt->element[2 * k + 1], &out->counter_values[k])) goto fail;
    if (f->len) memcpy(out->names_buf + off, f->str, f->len);
    out->names_buf[off + f->len] = '\0';
    out->counter_names[k] = ob_iov(out->names_buf + off, f->len);
    off += f->len + 1;
    out->num_counters++;
  }
  return true;
fail:
  ob_cluster_info_dispose(out);
  return false;
}

int64_t ob_cluster_info_counter(const ob_cluster_info_t *in, const char *kind, const char *name) {
  size_t k = strlen(kind), n = name ? strlen(name) : 0;
  size_t len = name ? k + 1 + n : k;
  for (size_t i = 0; i < in->num_counters; i++) {
    ob_iov_t c = in->counter_names[i];
    if (c.len != len || memcmp(c.base, kind, k) != 0) continue;
    if (name && (c.base[k] != '\0' || memcmp(c.base + k + 1, name, n) != 0)) continue;
    return in->counter_values[i];
  }
  return 0;
}
