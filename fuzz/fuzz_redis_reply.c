/*
 * fuzz_redis_reply.c: Redis is a peer like any other, so the checks every
 * reply passes before obleth reads it (src/cluster/cluster_reply.c) get
 * arbitrary bytes. The input is RESP2 as Redis would send it; hiredis's own
 * reader (the one the async link uses, no sockets) decodes it into as many
 * replies as it holds, and each reply goes to ob_cluster_reply_ints and
 * ob_cluster_info_parse (then ob_cluster_info_counter and dispose). What a
 * parser accepts is checked against the reply it came from.
 *
 * The reader is bounded as the link bounds it (ob_cluster_reader_bound:
 * hiredis 0.14 would otherwise calloc 16 GB for "*2000000000").
 */
#include "cluster.h"

#include <hiredis/hiredis.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same(const redisReply *s, const char *p, size_t n) {
  return s->len == n && (n == 0 || memcmp(s->str, p, n) == 0);
}

static void check_ints(const redisReply *r) {
  int64_t out[8];
  size_t n = 99;
  bool ok = ob_cluster_reply_ints(r, out, 8, &n);
  if (!ok) {
    if (n != 0) abort();
  } else {
    if (r->type != REDIS_REPLY_ARRAY || n != r->elements || n > 8) abort();
    for (size_t i = 0; i < n; i++)
      if (r->element[i]->type != REDIS_REPLY_INTEGER || out[i] != r->element[i]->integer) abort();
  }
  /* An array of only integers passes with room for all of them, and fails
   * with one slot too few. */
  if (r->type == REDIS_REPLY_ARRAY && r->elements <= 8) {
    bool all = true;
    for (size_t i = 0; i < r->elements; i++) all = all && r->element[i]->type == REDIS_REPLY_INTEGER;
    if (all != ok) abort();
    if (r->elements > 0 && ob_cluster_reply_ints(r, out, r->elements - 1, &n)) abort();
  }
}

/* The counter named c, looked up the way the proxy does (kind "\0" name),
 * must be the first counter with exactly that name. */
static void check_lookup(const ob_cluster_info_t *in, ob_iov_t c) {
  const char *z = memchr(c.base, '\0', c.len);
  char kind[64], name[64];
  size_t kl = z ? (size_t)(z - c.base) : c.len;
  if (kl >= sizeof kind || c.len - kl >= sizeof name) return;
  memcpy(kind, c.base, kl);
  kind[kl] = '\0';
  const char *np = NULL;
  if (z) {
    size_t nl = c.len - kl - 1;
    if (memchr(z + 1, '\0', nl)) return; /* no C-string pair names it */
    memcpy(name, z + 1, nl);
    name[nl] = '\0';
    np = name;
  }
  int64_t want = 0;
  for (size_t i = 0; i < in->num_counters; i++) {
    ob_iov_t o = in->counter_names[i];
    if (o.len == c.len && memcmp(o.base, c.base, c.len) == 0) {
      want = in->counter_values[i];
      break;
    }
  }
  if (ob_cluster_info_counter(in, kind, np) != want) abort();
}

static void check_info(const redisReply *r) {
  ob_cluster_info_t in;
  memset(&in, 0xa5, sizeof in);
  if (!ob_cluster_info_parse(r, &in)) {
    /* disposed and zeroed */
    if (in.replicas || in.num_replicas || in.counter_names || in.counter_values || in.num_counters || in.names_buf)
      abort();
    return;
  }
  const redisReply *reps = r->element[0], *cnt = r->element[1];
  if (in.num_replicas != reps->elements || in.num_counters != cnt->elements / 2) abort();
  for (size_t i = 0; i < in.num_replicas; i++) {
    const ob_cluster_replica_info_t *ri = &in.replicas[i];
    const redisReply *e = reps->element[i];
    if (!same(e->element[0], ri->id, strlen(ri->id)) || !same(e->element[2], ri->digest, strlen(ri->digest)))
      abort();
    if (ri->num_pools != e->element[3]->elements / 2) abort();
    for (size_t k = 0; k < ri->num_pools; k++)
      if (!same(e->element[3]->element[2 * k], ri->pools[k], strlen(ri->pools[k]))) abort();
  }
  for (size_t k = 0; k < in.num_counters; k++) {
    ob_iov_t c = in.counter_names[k];
    if (!same(cnt->element[2 * k], c.base, c.len) || c.base[c.len] != '\0') abort();
    check_lookup(&in, c);
  }
  /* names the proxy reads, present or not */
  (void)ob_cluster_info_counter(&in, "a", NULL);
  (void)ob_cluster_info_counter(&in, "q", NULL);
  (void)ob_cluster_info_counter(&in, "p", "default");
  (void)ob_cluster_info_counter(&in, "tq", "");
  ob_cluster_info_dispose(&in);
  if (in.replicas || in.num_replicas || in.num_counters || in.names_buf) abort();
  ob_cluster_info_dispose(&in); /* twice is harmless */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  redisReader *rd = redisReaderCreate();
  if (!rd) abort();
  ob_cluster_reader_bound(rd);
  if (redisReaderFeed(rd, (const char *)data, size) == REDIS_OK) {
    for (;;) {
      void *p = NULL;
      if (redisReaderGetReply(rd, &p) != REDIS_OK || !p) break;
      const redisReply *r = p;
      check_ints(r);
      check_info(r);
      freeReplyObject(p);
    }
  }
  redisReaderFree(rd);
  return 0;
}
