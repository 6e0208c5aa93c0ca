/*
 * budget_store.c: the LMDB file that keeps token budget counters across
 * restarts. One database, "counters": row key "<kind><name>\0<period>" (see
 * budget.c) -> the used count as 8 bytes big-endian. Opening loads the rows
 * of current periods into the table and deletes the rest, on the caller's
 * thread, before any request is served. After that the event loop never
 * waits for this file: a writer thread wakes every interval, takes the
 * counters that changed out of the table (a copy, under the table's lock,
 * no disk I/O while holding it), writes them in one transaction and
 * deletes the rows of periods that are over. It owns the file and the
 * thread, never the counters.
 *
 * One gateway per file: two processes writing the same counters would
 * overwrite each other's counts.
 */
#include "tenant.h"

#include <errno.h>
#include <lmdb.h>
#include <stdlib.h>
#include <time.h>

/* Rows are a few dozen bytes: this holds millions; LMDB only grows the
 * file as far as it is used. */
#define MAP_BYTES ((size_t)256 << 20)

struct ob_budget_store {
  MDB_env *env;
  MDB_dbi dbi;
  ob_budgets_t *b; /* borrowed */
  uint32_t interval_ms;
  ob_bg_t bg;                      /* the writer thread: a round every interval_ms */
  bool failing;                   /* writer thread only: the last round failed (log once per streak) */
  char pruned_day[OB_BUDGET_PERIOD_ID_MAX]; /* writer thread only: the day of the last prune */
  ob_buf_t rows, gone;            /* writer thread only, reused */
};

static void put_be64(uint8_t out[8], uint64_t v) {
  for (int i = 0; i < 8; i++) out[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get_be64(const uint8_t in[8]) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | in[i];
  return v;
}

/* One write transaction: the changed counters, then the rows that are over. */
static int write_rows(ob_budget_store_t *s, ob_iov_t rows, ob_iov_t gone) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc) return rc;
  ob_iov_t key;
  uint64_t used;
  while (rc == 0 && ob_budgets_next_record(&rows, &key, &used)) {
    uint8_t v[8];
    put_be64(v, used);
    MDB_val k = {key.len, (void *)key.base}, d = {sizeof v, v};
    rc = mdb_put(txn, s->dbi, &k, &d, 0);
  }
  while (rc == 0 && ob_budgets_next_record(&gone, &key, &used)) {
    MDB_val k = {key.len, (void *)key.base};
    int del = mdb_del(txn, s->dbi, &k, NULL);
    if (del != MDB_NOTFOUND) rc = del;
  }
  if (rc) {
    mdb_txn_abort(txn);
    return rc;
  }
  return mdb_txn_commit(txn);
}

/* One round of the writer thread. */
static void write_round(void *arg) {
  ob_budget_store_t *s = arg;
  ob_buf_reset(&s->rows);
  ob_buf_reset(&s->gone);
  ob_budgets_take_dirty(s->b, &s->rows);
  /* Periods end at midnight UTC at the earliest, so one walk of the table
   * per day finds every counter that is over. */
  int64_t now = (int64_t)time(NULL);
  char day[OB_BUDGET_PERIOD_ID_MAX];
  ob_budget_period_id(OB_BUDGET_DAY, now, day);
  if (strcmp(day, s->pruned_day) != 0) {
    ob_budgets_prune(s->b, now, &s->gone);
    memcpy(s->pruned_day, day, sizeof day);
  }
  if (!s->rows.len && !s->gone.len) return;
  int rc = write_rows(s, ob_buf_iov(&s->rows), ob_buf_iov(&s->gone));
  if (rc == 0) {
    if (s->failing) ob_log_info("budgets: writing counters again");
    s->failing = false;
    return;
  }
  /* Keep the counts in memory and try again next round; enforcement never
   * depended on the file. */
  ob_budgets_redirty(s->b, ob_buf_iov(&s->rows));
  ob_budgets_add_write_errors(s->b, 1);
  if (!s->failing) ob_log_warn("budgets: cannot write counters: %s; kept in memory, retrying", mdb_strerror(rc));
  s->failing = true;
}

/* Load the rows of current periods; rows that are over or malformed are
 * deleted. Runs before the writer exists. */
static int load(ob_budget_store_t *s) {
  MDB_txn *txn;
  MDB_cursor *c;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return rc;
  rc = mdb_cursor_open(txn, s->dbi, &c);
  if (rc) {
    mdb_txn_abort(txn);
    return rc;
  }
  int64_t now = (int64_t)time(NULL);
  size_t loaded = 0;
  MDB_val k, v;
  ob_buf_reset(&s->gone);
  for (int r = mdb_cursor_get(c, &k, &v, MDB_FIRST); r == 0; r = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    ob_iov_t key = ob_iov(k.mv_data, k.mv_size);
    if (v.mv_size == 8 && ob_budgets_restore(s->b, key, get_be64(v.mv_data), now)) {
      loaded++;
      continue;
    }
    ob_budgets_put_record(&s->gone, key, 0);
  }
  mdb_cursor_close(c);
  mdb_txn_abort(txn);
  if (s->gone.len) rc = write_rows(s, ob_iov(NULL, 0), ob_buf_iov(&s->gone));
  ob_buf_reset(&s->gone);
  ob_log_info("budgets: %zu counters loaded", loaded);
  return rc;
}

ob_budget_store_t *ob_budget_store_open(const char *path, ob_budgets_t *b, uint32_t interval_ms, const char **why) {
  ob_budget_store_t *s = ob_xcalloc(1, sizeof *s);
  s->b = b;
  s->interval_ms = interval_ms ? interval_ms : 500;
  ob_buf_init(&s->rows);
  ob_buf_init(&s->gone);
  int rc = mdb_env_create(&s->env);
  if (rc == 0) rc = mdb_env_set_mapsize(s->env, MAP_BYTES);
  if (rc == 0) rc = mdb_env_set_maxdbs(s->env, 1);
  if (rc == 0) rc = mdb_env_open(s->env, path, MDB_NOSUBDIR | MDB_NOTLS | MDB_NOMETASYNC, 0600);
  MDB_txn *txn = NULL;
  if (rc == 0) rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc == 0) rc = mdb_dbi_open(txn, "counters", MDB_CREATE, &s->dbi);
  if (rc == 0) {
    rc = mdb_txn_commit(txn);
    txn = NULL;
  }
  if (txn) mdb_txn_abort(txn);
  if (rc == 0) rc = load(s);
  if (rc != 0) {
    *why = mdb_strerror(rc);
    if (s->env) mdb_env_close(s->env);
    ob_buf_dispose(&s->rows);
    ob_buf_dispose(&s->gone);
    free(s);
    return NULL;
  }
  ob_bg_start(&s->bg, s->interval_ms, NULL, write_round, s);
  return s;
}

void ob_budget_store_flush(ob_budget_store_t *s) {
  if (!s) return;
  ob_bg_sync(&s->bg);
}

void ob_budget_store_close(ob_budget_store_t *s) {
  if (!s) return;
  ob_bg_stop(&s->bg); /* its last round wrote what changed */
  mdb_env_close(s->env);
  ob_buf_dispose(&s->rows);
  ob_buf_dispose(&s->gone);
  free(s);
}
