/*
 * store.c: the LMDB store. Two databases in one file: "entries" (16-byte
 * key -> encoded entry) and "expiry" (8-byte big-endian expiry ms + key ->
 * nothing), the latter ordered so that expired entries and, when the map
 * fills, the entries closest to expiry (the oldest, for one TTL) are found
 * from its start. Reads run on the caller's thread in a short read-only
 * transaction; every change goes through a queue to one writer thread,
 * which batches it into write transactions, evicts before the map is full
 * and sweeps expired entries twice a minute.
 *
 * Ordering (the guarantees in cache.h) rests on three things kept under
 * the writer's lock. The pending table indexes every queued put by key
 * (the newest one per key), from its enqueue until the writer has
 * committed it, so a get finds a put that has not reached the file yet:
 * it looks in the table first, then in LMDB, in that order, so an entry
 * leaving the table is already committed when the read transaction
 * begins. The pending purges list holds every purge queued and not yet
 * committed; while it is not empty a get reads LMDB with the lock held
 * and treats an entry a pending purge covers as a miss (an entry put after
 * the purge would still be in the table, which is looked at first). The
 * generation counts purges; a put made for an older generation is dropped,
 * so a response produced before a purge never lands after it.
 */
#include "cache.h"

#include <lmdb.h>
#include <stdlib.h>
#include <time.h>

/* Queued bytes above which new writes are dropped (the disk is behind). */
#define QUEUE_MAX_BYTES (64u << 20)
/* Evict down to this fraction of the map once above HIGH. */
#define FILL_HIGH 0.85
#define FILL_LOW 0.70
#define SWEEP_S 30
#define READERS_KEPT 8

enum { OP_PUT, OP_DEL_EXPIRED, OP_PURGE };

typedef struct op {
  struct op *next;   /* in the queue, then in the writer's batch */
  struct op *pnext;  /* OP_PUT: in its pending-table chain; OP_PURGE: in the pending purges */
  bool indexed;      /* OP_PUT: in the pending table */
  int kind;
  ob_cache_key_t key;
  uint64_t expires_ms;
  char *scope;   /* OP_PURGE: NULL = all */
  size_t len;
  uint8_t data[]; /* OP_PUT: the encoded entry */
} op_t;

struct ob_cache_store {
  MDB_env *env;
  MDB_dbi entries, expiry;
  uint64_t map_bytes;
  ob_bg_t writer;         /* its lock guards the queue and stats */
  op_t *head, *tail;      /* queued changes */
  size_t queued_bytes;
  op_t *batch;            /* the writer's: what this round applies */
  op_t **pending;         /* the pending table: queued puts by key, pending_cap chains */
  size_t pending_cap, num_pending;
  op_t *purges;           /* purges queued or being applied, not committed yet */
  uint64_t gen;           /* purges so far; written under the lock, read atomically */
  ob_cache_stats_t stats;
  /* Read transactions kept reset for the next lookup: renewing one costs
   * far less than beginning one (an allocation and a reader-slot search).
   * MDB_NOTLS lets any thread renew any of them. */
  pthread_mutex_t readers_mu;
  MDB_txn *readers[READERS_KEPT];
  int num_readers;
};

static void expiry_key(uint8_t out[24], uint64_t exp, const ob_cache_key_t *k) {
  for (int i = 0; i < 8; i++) out[i] = (uint8_t)(exp >> (56 - 8 * i));
  memcpy(out + 8, k->b, 16);
}

static uint64_t expiry_of(const MDB_val *v) {
  ob_cache_entry_t e;
  return ob_cache_entry_decode(ob_iov(v->mv_data, v->mv_size), &e) ? e.expires_ms : 0;
}

/* ---------------------------------------------------------------- pending table (under the lock) */

static op_t **chain(ob_cache_store_t *s, const ob_cache_key_t *key) {
  uint64_t h;
  memcpy(&h, key->b, sizeof h); /* keys are hashes already */
  return &s->pending[h & (s->pending_cap - 1)];
}

static op_t *pending_find(ob_cache_store_t *s, const ob_cache_key_t *key) {
  if (!s->num_pending) return NULL;
  for (op_t *o = *chain(s, key); o; o = o->pnext)
    if (memcmp(o->key.b, key->b, 16) == 0) return o;
  return NULL;
}

static void pending_remove(ob_cache_store_t *s, op_t *o) {
  if (!o->indexed) return;
  for (op_t **p = chain(s, &o->key); *p; p = &(*p)->pnext)
    if (*p == o) {
      *p = o->pnext;
      break;
    }
  o->pnext = NULL;
  o->indexed = false;
  s->num_pending--;
}

/* Index o, replacing an older put of its key (which stays queued: the
 * writer applies both in order, so the newest lands last). */
static void pending_add(ob_cache_store_t *s, op_t *o) {
  if (s->num_pending >= s->pending_cap) {
    size_t cap = s->pending_cap ? s->pending_cap * 2 : 256;
    op_t **old = s->pending, **fresh = ob_xcalloc(cap, sizeof *fresh);
    size_t old_cap = s->pending_cap;
    s->pending = fresh;
    s->pending_cap = cap;
    for (size_t i = 0; i < old_cap; i++)
      for (op_t *p = old[i], *next; p; p = next) {
        next = p->pnext;
        op_t **c = chain(s, &p->key);
        p->pnext = *c;
        *c = p;
      }
    free(old);
  }
  op_t *prev = pending_find(s, &o->key);
  if (prev) pending_remove(s, prev);
  op_t **c = chain(s, &o->key);
  o->pnext = *c;
  *c = o;
  o->indexed = true;
  s->num_pending++;
}

/* Whether an entry of scope e_scope is covered by a purge of scope (NULL:
 * all). */
static bool covers(const char *scope, ob_iov_t e_scope) {
  return !scope || ob_iov_eq(e_scope, ob_iov_str(scope));
}

static bool purge_pending_covers(ob_cache_store_t *s, const MDB_val *v) {
  ob_cache_entry_t e;
  if (!ob_cache_entry_decode(ob_iov(v->mv_data, v->mv_size), &e)) return true;
  for (op_t *p = s->purges; p; p = p->pnext)
    if (covers(p->scope, e.scope)) return true;
  return false;
}

/* ---------------------------------------------------------------- applying changes (writer thread) */

/* Delete the entry under key and its expiry index row. */
static void del_entry(ob_cache_store_t *s, MDB_txn *txn, const ob_cache_key_t *key) {
  MDB_val k = {16, (void *)key->b}, v;
  if (mdb_get(txn, s->entries, &k, &v) != 0) return;
  uint8_t ek[24];
  expiry_key(ek, expiry_of(&v), key);
  MDB_val e = {24, ek};
  mdb_del(txn, s->expiry, &e, NULL);
  mdb_del(txn, s->entries, &k, NULL);
}

/* Delete up to n rows from the start of the expiry index (only expired
 * ones when until_ms is set). Returns how many went. */
static size_t drop_oldest(ob_cache_store_t *s, MDB_txn *txn, size_t n, uint64_t until_ms) {
  MDB_cursor *c;
  if (mdb_cursor_open(txn, s->expiry, &c) != 0) return 0;
  size_t done = 0;
  MDB_val k, v;
  while (done < n && mdb_cursor_get(c, &k, &v, MDB_FIRST) == 0 && k.mv_size == 24) {
    const uint8_t *p = k.mv_data;
    uint64_t exp = 0;
    for (int i = 0; i < 8; i++) exp = exp << 8 | p[i];
    if (until_ms && exp > until_ms) break;
    MDB_val ek = {16, (void *)(p + 8)};
    mdb_del(txn, s->entries, &ek, NULL);
    mdb_cursor_del(c, 0);
    done++;
  }
  mdb_cursor_close(c);
  return done;
}

static uint64_t used_bytes(ob_cache_store_t *s, MDB_txn *txn, uint64_t *entries) {
  MDB_stat a, b;
  MDB_envinfo info;
  mdb_stat(txn, s->entries, &a);
  mdb_stat(txn, s->expiry, &b);
  mdb_env_info(s->env, &info);
  (void)info;
  *entries = a.ms_entries;
  return (uint64_t)(a.ms_branch_pages + a.ms_leaf_pages + a.ms_overflow_pages + b.ms_branch_pages + b.ms_leaf_pages +
                    b.ms_overflow_pages) *
         a.ms_psize;
}

static int apply_put(ob_cache_store_t *s, MDB_txn *txn, op_t *o) {
  del_entry(s, txn, &o->key);
  MDB_val k = {16, o->key.b}, v = {o->len, o->data};
  int rc = mdb_put(txn, s->entries, &k, &v, 0);
  if (rc) return rc;
  uint8_t ek[24];
  expiry_key(ek, o->expires_ms, &o->key);
  MDB_val e = {24, ek}, empty = {0, NULL};
  return mdb_put(txn, s->expiry, &e, &empty, 0);
}

static void apply_purge(ob_cache_store_t *s, MDB_txn *txn, const char *scope) {
  if (!scope) {
    mdb_drop(txn, s->entries, 0);
    mdb_drop(txn, s->expiry, 0);
    return;
  }
  /* Collect first, delete after: no cursor juggling across deletions. */
  MDB_cursor *c;
  if (mdb_cursor_open(txn, s->entries, &c) != 0) return;
  ob_cache_key_t *keys = NULL;
  size_t n = 0, cap = 0, sl = strlen(scope);
  MDB_val k, v;
  for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    ob_cache_entry_t e;
    if (k.mv_size != 16 || !ob_cache_entry_decode(ob_iov(v.mv_data, v.mv_size), &e) || e.scope.len != sl ||
        memcmp(e.scope.base, scope, sl) != 0)
      continue;
    if (n == cap) cap = cap ? cap * 2 : 64, keys = ob_xrealloc(keys, cap * sizeof *keys);
    memcpy(keys[n++].b, k.mv_data, 16);
  }
  mdb_cursor_close(c);
  for (size_t i = 0; i < n; i++) del_entry(s, txn, &keys[i]);
  free(keys);
}

/* Apply a batch in one transaction; on MAP_FULL evict and try again. */
static void apply_batch(ob_cache_store_t *s, op_t *ops) {
  uint64_t now = ob_clock_wall_ms();
  uint64_t evicted = 0, expired = 0, errors = 0;
  bool committed = false;
  for (int attempt = 0; attempt < 4; attempt++) {
    MDB_txn *txn;
    if (mdb_txn_begin(s->env, NULL, 0, &txn) != 0) break;
    int rc = 0;
    for (op_t *o = ops; o && rc == 0; o = o->next) {
      if (o->kind == OP_PUT) {
        rc = apply_put(s, txn, o);
      } else if (o->kind == OP_DEL_EXPIRED) {
        MDB_val k = {16, o->key.b}, v;
        if (mdb_get(txn, s->entries, &k, &v) == 0 && expiry_of(&v) <= now) del_entry(s, txn, &o->key), expired++;
      } else if (o->kind == OP_PURGE) {
        apply_purge(s, txn, o->scope);
      }
    }
    if (rc == MDB_MAP_FULL || rc == MDB_TXN_FULL) {
      /* Pages freed in a transaction are reused only after it commits:
       * evict a quarter (oldest first) in a transaction of its own, then
       * try the batch again. */
      mdb_txn_abort(txn);
      if (mdb_txn_begin(s->env, NULL, 0, &txn) != 0) break;
      uint64_t n;
      used_bytes(s, txn, &n);
      size_t went = drop_oldest(s, txn, (size_t)(n / 4) + 1, 0);
      if (mdb_txn_commit(txn) != 0 || went == 0) break;
      evicted += went;
      continue;
    }
    if (rc != 0) {
      mdb_txn_abort(txn);
      break;
    }
    /* Keep room so that the next batch does not hit MAP_FULL. */
    uint64_t n, used = used_bytes(s, txn, &n);
    if ((double)used > FILL_HIGH * (double)s->map_bytes && n > 0) {
      size_t drop = (size_t)((double)n * (1.0 - FILL_LOW / FILL_HIGH)) + 1;
      evicted += drop_oldest(s, txn, drop, 0);
    }
    expired += drop_oldest(s, txn, SIZE_MAX, now);
    committed = mdb_txn_commit(txn) == 0;
    break;
  }
  if (!committed) {
    /* The batch is lost (its puts counted as one error; the last try
     * above may also have ended on MAP_FULL), but its purges must still
     * happen: below they leave the pending list, and gets stop hiding
     * what they cover. Deletions alone fit where the batch did not. */
    errors++;
    MDB_txn *txn;
    bool purges = false;
    for (op_t *o = ops; o; o = o->next) purges |= o->kind == OP_PURGE;
    if (purges && mdb_txn_begin(s->env, NULL, 0, &txn) == 0) {
      for (op_t *o = ops; o; o = o->next)
        if (o->kind == OP_PURGE) apply_purge(s, txn, o->scope);
      if (mdb_txn_commit(txn) != 0) errors++;
    } else if (purges) {
      errors++;
    }
  }
  MDB_txn *txn;
  uint64_t n = 0, used = 0;
  if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) == 0) {
    used = used_bytes(s, txn, &n);
    mdb_txn_abort(txn);
  }
  ob_bg_lock(&s->writer);
  /* Committed (or failed, and counted): from here on a get finds these in
   * the file, no longer in memory. */
  for (op_t *o = ops; o; o = o->next) {
    if (o->kind == OP_PUT) {
      pending_remove(s, o);
    } else if (o->kind == OP_PURGE) {
      for (op_t **p = &s->purges; *p; p = &(*p)->pnext)
        if (*p == o) {
          *p = o->pnext;
          break;
        }
    }
  }
  s->stats.evicted += evicted;
  s->stats.expired += expired;
  s->stats.write_errors += errors;
  s->stats.entries = n;
  s->stats.bytes_used = used;
  ob_bg_unlock(&s->writer);
}

/* Under the writer's lock: the queue becomes this round's batch. */
static void take(void *arg) {
  ob_cache_store_t *s = arg;
  s->batch = s->head;
  s->head = s->tail = NULL;
  s->queued_bytes = 0;
}

static void run(void *arg) {
  ob_cache_store_t *s = arg;
  op_t *ops = s->batch;
  s->batch = NULL;
  apply_batch(s, ops); /* also the periodic sweep when ops is NULL */
  while (ops) {
    op_t *next = ops->next;
    free(ops->scope);
    free(ops);
    ops = next;
  }
}

/* Under the lock. */
static void enqueue_locked(ob_cache_store_t *s, op_t *o) {
  o->next = NULL;
  if (s->tail) s->tail->next = o;
  else s->head = o;
  s->tail = o;
  s->queued_bytes += o->len;
  ob_bg_kick(&s->writer);
}

static void enqueue(ob_cache_store_t *s, op_t *o) {
  ob_bg_lock(&s->writer);
  enqueue_locked(s, o);
  ob_bg_unlock(&s->writer);
}

ob_cache_store_t *ob_cache_store_open(const char *path, uint64_t max_bytes, const char **why) {
  ob_cache_store_t *s = ob_xcalloc(1, sizeof *s);
  s->map_bytes = max_bytes;
  int rc = mdb_env_create(&s->env);
  if (rc == 0) rc = mdb_env_set_mapsize(s->env, (size_t)max_bytes);
  if (rc == 0) rc = mdb_env_set_maxdbs(s->env, 2);
  if (rc == 0) rc = mdb_env_open(s->env, path, MDB_NOSUBDIR | MDB_NOTLS | MDB_NOMETASYNC, 0600);
  MDB_txn *txn = NULL;
  if (rc == 0) rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc == 0) rc = mdb_dbi_open(txn, "entries", MDB_CREATE, &s->entries);
  if (rc == 0) rc = mdb_dbi_open(txn, "expiry", MDB_CREATE, &s->expiry);
  if (rc == 0) {
    rc = mdb_txn_commit(txn);
    txn = NULL;
  }
  if (txn) mdb_txn_abort(txn);
  if (rc != 0) {
    *why = mdb_strerror(rc);
    if (s->env) mdb_env_close(s->env);
    free(s);
    return NULL;
  }
  s->stats.map_bytes = max_bytes;
  pthread_mutex_init(&s->readers_mu, NULL);
  ob_bg_start(&s->writer, SWEEP_S * 1000, take, run, s);
  return s;
}

void ob_cache_store_close(ob_cache_store_t *s) {
  if (!s) return;
  ob_bg_stop(&s->writer); /* its last round applied what was queued */
  for (int i = 0; i < s->num_readers; i++) mdb_txn_abort(s->readers[i]);
  pthread_mutex_destroy(&s->readers_mu);
  mdb_env_close(s->env);
  free(s->pending);
  free(s);
}

static MDB_txn *reader_begin(ob_cache_store_t *s) {
  MDB_txn *txn = NULL;
  pthread_mutex_lock(&s->readers_mu);
  if (s->num_readers) txn = s->readers[--s->num_readers];
  pthread_mutex_unlock(&s->readers_mu);
  if (txn && mdb_txn_renew(txn) != 0) {
    mdb_txn_abort(txn);
    txn = NULL;
  }
  if (!txn && mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0) return NULL;
  return txn;
}

static void reader_end(ob_cache_store_t *s, MDB_txn *txn) {
  mdb_txn_reset(txn);
  pthread_mutex_lock(&s->readers_mu);
  if (s->num_readers < READERS_KEPT) {
    s->readers[s->num_readers++] = txn;
    txn = NULL;
  }
  pthread_mutex_unlock(&s->readers_mu);
  if (txn) mdb_txn_abort(txn);
}

uint64_t ob_cache_store_generation(ob_cache_store_t *s) { return __atomic_load_n(&s->gen, __ATOMIC_ACQUIRE); }

int ob_cache_store_get(ob_cache_store_t *s, const ob_cache_key_t *key, uint64_t now, ob_buf_t *out) {
  ob_bg_lock(&s->writer);
  op_t *o = pending_find(s, key);
  if (o) {
    /* Newer than anything in the file. */
    int hit = o->expires_ms > now;
    if (hit) ob_buf_append(out, o->data, o->len);
    ob_bg_unlock(&s->writer);
    return hit;
  }
  /* While a purge is pending, the read happens under the lock so that the
   * list it is checked against is the one of the snapshot read. Purges are
   * rare; otherwise the read holds no lock but the readers'. */
  bool purging = s->purges != NULL;
  if (!purging) ob_bg_unlock(&s->writer);
  MDB_txn *txn = reader_begin(s);
  int hit = 0;
  uint64_t exp = 0;
  if (txn) {
    MDB_val k = {16, (void *)key->b}, v;
    if (mdb_get(txn, s->entries, &k, &v) == 0) {
      exp = expiry_of(&v);
      if (exp > now && !(purging && purge_pending_covers(s, &v))) {
        ob_buf_append(out, v.mv_data, v.mv_size);
        hit = 1;
      } else if (exp > now) {
        exp = 0; /* purged, not expired: the purge deletes it */
      }
    }
    reader_end(s, txn);
  }
  if (purging) ob_bg_unlock(&s->writer);
  if (!hit && exp) {
    /* Expired (or unreadable): lazily deleted by the writer. */
    op_t *d = ob_xcalloc(1, sizeof *d);
    d->kind = OP_DEL_EXPIRED;
    d->key = *key;
    enqueue(s, d);
  }
  return hit;
}

void ob_cache_store_put(ob_cache_store_t *s, const ob_cache_key_t *key, const void *entry, size_t len,
                        uint64_t expires_ms, uint64_t gen) {
  op_t *o = ob_xmalloc(sizeof *o + len);
  memset(o, 0, sizeof *o);
  o->kind = OP_PUT;
  o->key = *key;
  o->expires_ms = expires_ms;
  o->len = len;
  memcpy(o->data, entry, len);
  ob_bg_lock(&s->writer);
  if (gen != s->gen || s->queued_bytes + len > QUEUE_MAX_BYTES || len > s->map_bytes / 4) {
    /* Produced before a purge: dropped, as if it had been purged. Over the
     * bound: the disk is behind, counted. Over a quarter of the map (what
     * one eviction round frees): it may never fit, and every try to make
     * room for it would evict a quarter of the cache and lose its batch;
     * counted. */
    if (gen == s->gen) s->stats.write_errors++;
    ob_bg_unlock(&s->writer);
    free(o);
    return;
  }
  enqueue_locked(s, o);
  pending_add(s, o);
  ob_bg_unlock(&s->writer);
}

void ob_cache_store_purge(ob_cache_store_t *s, const char *scope) {
  op_t *o = ob_xcalloc(1, sizeof *o);
  o->kind = OP_PURGE;
  o->scope = scope ? ob_xstrdup(scope) : NULL;
  ob_bg_lock(&s->writer);
  __atomic_store_n(&s->gen, s->gen + 1, __ATOMIC_RELEASE);
  /* Queued puts it covers are forgotten now (they stay queued ahead of it,
   * and it deletes them from the file after they land). */
  for (size_t i = 0; s->num_pending && i < s->pending_cap; i++)
    for (op_t *p = s->pending[i], *next; p; p = next) {
      next = p->pnext;
      ob_cache_entry_t e;
      if (!ob_cache_entry_decode(ob_iov((const char *)p->data, p->len), &e) || covers(scope, e.scope))
        pending_remove(s, p);
    }
  o->pnext = s->purges;
  s->purges = o;
  enqueue_locked(s, o);
  ob_bg_unlock(&s->writer);
}

void ob_cache_store_sync(ob_cache_store_t *s) { ob_bg_sync(&s->writer); }

void ob_cache_store_stats(ob_cache_store_t *s, ob_cache_stats_t *out) {
  ob_bg_lock(&s->writer);
  *out = s->stats;
  ob_bg_unlock(&s->writer);
}
