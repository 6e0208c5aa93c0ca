/*
 * budget.c: token budget accounting. Owns the period arithmetic (UTC days
 * and months) and the table of used-token counters, keyed by who (tenant
 * name or key id) and period. It must not touch sockets, files, the event
 * loop or the clock: time is passed in, and the LMDB file is
 * budget_store.c's, which talks to this table only through rows.
 *
 * A counter per (who, period) rather than one per who that resets: when a
 * period ends nothing has to happen at that instant (the next charge simply
 * lands on a new counter, starting from 0), a reload that changes
 * budget_period finds the other period's count intact, and a row in the
 * file means the same thing whenever it is read. Counters of periods that
 * are over are pruned by the store's writer, so the table holds at most a
 * day, a month and a "total" counter per budgeted tenant and key.
 *
 * The table is a chained hash (FNV-1a over the row key) under one mutex.
 * Lookups hash and compare the parts (kind, name, period) in place, so
 * charging allocates only the first time a counter is seen in a period.
 */
#include "tenant.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* ---------------------------------------------------------------- periods */

size_t ob_budget_period_id(ob_budget_period_t p, int64_t unix_s, char out[OB_BUDGET_PERIOD_ID_MAX]) {
  if (p == OB_BUDGET_TOTAL) {
    memcpy(out, "total", 6);
    return 5;
  }
  time_t t = (time_t)unix_s;
  struct tm tm;
  if (!gmtime_r(&t, &tm)) memset(&tm, 0, sizeof tm); /* only for years past int's range */
  int n = p == OB_BUDGET_DAY
              ? snprintf(out, OB_BUDGET_PERIOD_ID_MAX, "d:%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday)
              : snprintf(out, OB_BUDGET_PERIOD_ID_MAX, "m:%04d-%02d", tm.tm_year + 1900, tm.tm_mon + 1);
  return n < 0 ? 0 : (size_t)n < OB_BUDGET_PERIOD_ID_MAX ? (size_t)n : OB_BUDGET_PERIOD_ID_MAX - 1;
}

int64_t ob_budget_period_end(ob_budget_period_t p, int64_t unix_s) {
  if (p == OB_BUDGET_TOTAL) return 0;
  time_t t = (time_t)unix_s;
  struct tm tm;
  if (!gmtime_r(&t, &tm)) return 0;
  tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
  if (p == OB_BUDGET_DAY) {
    tm.tm_mday++;
  } else {
    tm.tm_mday = 1;
    tm.tm_mon++;
  }
  return (int64_t)timegm(&tm); /* normalizes day 32 and month 12 */
}

const char *ob_budget_period_name(ob_budget_period_t p) {
  return p == OB_BUDGET_DAY ? "day" : p == OB_BUDGET_TOTAL ? "total" : "month";
}

/* The periods that are not over at some instant. */
typedef struct current {
  char day[OB_BUDGET_PERIOD_ID_MAX], month[OB_BUDGET_PERIOD_ID_MAX];
  size_t day_len, month_len;
} current_t;

static void current_at(current_t *c, int64_t now_s) {
  c->day_len = ob_budget_period_id(OB_BUDGET_DAY, now_s, c->day);
  c->month_len = ob_budget_period_id(OB_BUDGET_MONTH, now_s, c->month);
}

static bool is_current(const current_t *c, const char *period, size_t len) {
  return (len == 5 && memcmp(period, "total", 5) == 0) || (len == c->day_len && memcmp(period, c->day, len) == 0) ||
         (len == c->month_len && memcmp(period, c->month, len) == 0);
}

/* ---------------------------------------------------------------- the table */

typedef struct entry {
  struct entry *next;
  struct entry *dirty_next; /* in the dirty list while dirty */
  uint64_t hash;
  uint64_t used;
  bool dirty;
  size_t klen;
  char key[]; /* kind, name, NUL, period (not NUL-terminated) */
} entry_t;

struct ob_budgets {
  pthread_mutex_t mu;
  entry_t **buckets;
  size_t mask; /* buckets - 1, a power of two minus one */
  size_t count;
  entry_t *dirty; /* changed since the store last took them: the writer walks only these */
  uint64_t write_errors;
};

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *s = p;
  for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
  return h;
}

static uint64_t hash_parts(char kind, const char *name, size_t nlen, const char *period, size_t plen) {
  uint64_t h = fnv(14695981039346656037ULL, &kind, 1);
  h = fnv(h, name, nlen);
  h = fnv(h, "", 1);
  return fnv(h, period, plen);
}

static bool matches(const entry_t *e, uint64_t h, char kind, const char *name, size_t nlen, const char *period,
                    size_t plen) {
  return e->hash == h && e->klen == 2 + nlen + plen && e->key[0] == kind && memcmp(e->key + 1, name, nlen) == 0 &&
         e->key[1 + nlen] == '\0' && memcmp(e->key + 2 + nlen, period, plen) == 0;
}

/* Split a row key into its parts; false when it is not one. */
static bool split_key(ob_iov_t key, char *kind, ob_iov_t *name, ob_iov_t *period) {
  if (key.len < 3 || (key.base[0] != OB_BUDGET_TENANT && key.base[0] != OB_BUDGET_KEY)) return false;
  const char *nul = memchr(key.base + 1, '\0', key.len - 1);
  if (!nul || nul == key.base + 1 || nul == key.base + key.len - 1) return false;
  *kind = key.base[0];
  *name = ob_iov(key.base + 1, (size_t)(nul - key.base - 1));
  *period = ob_iov(nul + 1, (size_t)(key.base + key.len - nul - 1));
  return !memchr(period->base, '\0', period->len);
}

ob_budgets_t *ob_budgets_create(void) {
  ob_budgets_t *b = ob_xcalloc(1, sizeof *b);
  pthread_mutex_init(&b->mu, NULL);
  b->mask = 63;
  b->buckets = ob_xcalloc(b->mask + 1, sizeof *b->buckets);
  return b;
}

void ob_budgets_destroy(ob_budgets_t *b) {
  if (!b) return;
  for (size_t i = 0; i <= b->mask; i++) {
    for (entry_t *e = b->buckets[i], *next; e; e = next) {
      next = e->next;
      free(e);
    }
  }
  free(b->buckets);
  b->buckets = NULL;
  pthread_mutex_destroy(&b->mu);
  free(b);
}

/* Under mu. */
static entry_t *find(ob_budgets_t *b, uint64_t h, char kind, const char *name, size_t nlen, const char *period,
                     size_t plen) {
  for (entry_t *e = b->buckets[h & b->mask]; e; e = e->next)
    if (matches(e, h, kind, name, nlen, period, plen)) return e;
  return NULL;
}

/* Under mu. Keeps the chains short: at most one entry per bucket on average. */
static void grow(ob_budgets_t *b) {
  size_t n = (b->mask + 1) * 2;
  entry_t **nb = ob_xcalloc(n, sizeof *nb);
  for (size_t i = 0; i <= b->mask; i++) {
    for (entry_t *e = b->buckets[i], *next; e; e = next) {
      next = e->next;
      e->next = nb[e->hash & (n - 1)];
      nb[e->hash & (n - 1)] = e;
    }
  }
  free(b->buckets);
  b->buckets = nb;
  b->mask = n - 1;
}

/* Under mu. */
static void mark_dirty(ob_budgets_t *b, entry_t *e) {
  if (e->dirty) return;
  e->dirty = true;
  e->dirty_next = b->dirty;
  b->dirty = e;
}

/* Under mu. */
static entry_t *add(ob_budgets_t *b, uint64_t h, char kind, const char *name, size_t nlen, const char *period,
                    size_t plen) {
  if (b->count + 1 > b->mask + 1) grow(b);
  entry_t *e = ob_xcalloc(1, sizeof *e + 2 + nlen + plen);
  e->hash = h;
  e->klen = 2 + nlen + plen;
  e->key[0] = kind;
  memcpy(e->key + 1, name, nlen);
  e->key[1 + nlen] = '\0';
  memcpy(e->key + 2 + nlen, period, plen);
  e->next = b->buckets[h & b->mask];
  b->buckets[h & b->mask] = e;
  b->count++;
  return e;
}

uint64_t ob_budgets_used(ob_budgets_t *b, ob_budget_kind_t kind, const char *name, const char *period) {
  size_t nlen = strlen(name), plen = strlen(period);
  uint64_t h = hash_parts((char)kind, name, nlen, period, plen);
  pthread_mutex_lock(&b->mu);
  const entry_t *e = find(b, h, (char)kind, name, nlen, period, plen);
  uint64_t used = e ? e->used : 0;
  pthread_mutex_unlock(&b->mu);
  return used;
}

void ob_budgets_charge(ob_budgets_t *b, ob_budget_kind_t kind, const char *name, const char *period, uint64_t tokens) {
  if (tokens == 0) return;
  size_t nlen = strlen(name), plen = strlen(period);
  uint64_t h = hash_parts((char)kind, name, nlen, period, plen);
  pthread_mutex_lock(&b->mu);
  entry_t *e = find(b, h, (char)kind, name, nlen, period, plen);
  if (!e) e = add(b, h, (char)kind, name, nlen, period, plen);
  /* Saturate: a count that wrapped would hand the budget back. */
  e->used = e->used > UINT64_MAX - tokens ? UINT64_MAX : e->used + tokens;
  mark_dirty(b, e);
  pthread_mutex_unlock(&b->mu);
}

/* ---------------------------------------------------------------- rows */

void ob_budgets_put_record(ob_buf_t *out, ob_iov_t key, uint64_t used) {
  uint32_t n = (uint32_t)key.len;
  ob_buf_append(out, &n, sizeof n);
  ob_buf_append_iov(out, key);
  ob_buf_append(out, &used, sizeof used);
}

bool ob_budgets_next_record(ob_iov_t *records, ob_iov_t *key, uint64_t *used) {
  uint32_t n;
  if (records->len < sizeof n) return false;
  memcpy(&n, records->base, sizeof n);
  if (records->len - sizeof n < (size_t)n + sizeof *used) return false;
  *key = ob_iov(records->base + sizeof n, n);
  memcpy(used, records->base + sizeof n + n, sizeof *used);
  size_t step = sizeof n + n + sizeof *used;
  *records = ob_iov(records->base + step, records->len - step);
  return true;
}

size_t ob_budgets_take_dirty(ob_budgets_t *b, ob_buf_t *out) {
  size_t n = 0;
  pthread_mutex_lock(&b->mu);
  for (entry_t *e = b->dirty, *next; e; e = next) {
    next = e->dirty_next;
    ob_budgets_put_record(out, ob_iov(e->key, e->klen), e->used);
    e->dirty = false;
    e->dirty_next = NULL;
    n++;
  }
  b->dirty = NULL;
  pthread_mutex_unlock(&b->mu);
  return n;
}

void ob_budgets_redirty(ob_budgets_t *b, ob_iov_t records) {
  ob_iov_t key, name, period;
  uint64_t used;
  char kind;
  pthread_mutex_lock(&b->mu);
  while (ob_budgets_next_record(&records, &key, &used)) {
    if (!split_key(key, &kind, &name, &period)) continue;
    entry_t *e = find(b, hash_parts(kind, name.base, name.len, period.base, period.len), kind, name.base, name.len,
                      period.base, period.len);
    if (e) mark_dirty(b, e);
  }
  pthread_mutex_unlock(&b->mu);
}

size_t ob_budgets_prune(ob_budgets_t *b, int64_t now_s, ob_buf_t *gone) {
  size_t n = 0;
  current_t cur;
  current_at(&cur, now_s);
  pthread_mutex_lock(&b->mu);
  for (size_t i = 0; i <= b->mask; i++) {
    for (entry_t **pe = &b->buckets[i]; *pe;) {
      entry_t *e = *pe;
      const char *nul = memchr(e->key + 1, '\0', e->klen - 1);
      size_t off = (size_t)(nul - e->key) + 1;
      if (e->dirty || is_current(&cur, e->key + off, e->klen - off)) {
        pe = &e->next;
        continue;
      }
      ob_budgets_put_record(gone, ob_iov(e->key, e->klen), 0);
      *pe = e->next;
      free(e);
      b->count--;
      n++;
    }
  }
  pthread_mutex_unlock(&b->mu);
  return n;
}

bool ob_budgets_restore(ob_budgets_t *b, ob_iov_t key, uint64_t used, int64_t now_s) {
  char kind;
  ob_iov_t name, period;
  current_t cur;
  current_at(&cur, now_s);
  if (!split_key(key, &kind, &name, &period) || !is_current(&cur, period.base, period.len)) return false;
  uint64_t h = hash_parts(kind, name.base, name.len, period.base, period.len);
  pthread_mutex_lock(&b->mu);
  entry_t *e = find(b, h, kind, name.base, name.len, period.base, period.len);
  if (!e) e = add(b, h, kind, name.base, name.len, period.base, period.len);
  if (e->used) mark_dirty(b, e);
  e->used = e->used > UINT64_MAX - used ? UINT64_MAX : e->used + used;
  pthread_mutex_unlock(&b->mu);
  return true;
}

size_t ob_budgets_count(ob_budgets_t *b) {
  pthread_mutex_lock(&b->mu);
  size_t n = b->count;
  pthread_mutex_unlock(&b->mu);
  return n;
}

void ob_budgets_add_write_errors(ob_budgets_t *b, uint64_t n) {
  pthread_mutex_lock(&b->mu);
  b->write_errors += n;
  pthread_mutex_unlock(&b->mu);
}

uint64_t ob_budgets_write_errors(ob_budgets_t *b) {
  pthread_mutex_lock(&b->mu);
  uint64_t n = b->write_errors;
  pthread_mutex_unlock(&b->mu);
  return n;
}
