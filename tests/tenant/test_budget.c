/*
 * Unit tests for token budgets in src/tenant: UTC period ids and ends
 * (month and year ends, leap days, the epoch), counters per kind, name and
 * period, saturation, the dirty rows the store takes and gives back,
 * pruning of periods that are over, restoring stored rows, a table of many
 * counters, and the LMDB store: counts survive a close and reopen, rows of
 * past periods are deleted, and a file that cannot be opened is reported.
 */
#include "tap.h"
#include "tenant.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* 2026-11-24T20:40:15Z and friends (computed with Python's calendar.timegm). */
#define T_NOV24 1795552815LL
#define T_NOV25_0 1795564800LL
#define T_DEC01_0 1796083200LL
#define T_DEC31_LAST 1798761599LL
#define T_2027 1798761600LL
#define T_LEAP 1835438400LL /* 2028-02-29T12:00:00Z */
#define T_MAR01_2028 1835481600LL
#define T_FEB28_LAST 1772323199LL /* 2026-02-28T23:59:59Z */
#define T_MAR01_2026 1772323200LL

static const char *pid(ob_budget_period_t p, int64_t t) {
  static char buf[4][OB_BUDGET_PERIOD_ID_MAX];
  static int i;
  char *out = buf[i++ & 3];
  ob_budget_period_id(p, t, out);
  return out;
}

static void test_periods(void) {
  TAP_EQ_STR(pid(OB_BUDGET_DAY, T_NOV24), "d:2026-11-24", "day id");
  TAP_EQ_STR(pid(OB_BUDGET_MONTH, T_NOV24), "m:2026-11", "month id");
  TAP_EQ_STR(pid(OB_BUDGET_TOTAL, T_NOV24), "total", "total id");
  TAP_EQ_STR(pid(OB_BUDGET_DAY, T_NOV25_0 - 1), "d:2026-11-24", "last second of a day");
  TAP_EQ_STR(pid(OB_BUDGET_DAY, T_NOV25_0), "d:2026-11-25", "midnight UTC starts the next day");
  TAP_EQ_STR(pid(OB_BUDGET_MONTH, T_DEC31_LAST), "m:2026-12", "last second of a year");
  TAP_EQ_STR(pid(OB_BUDGET_MONTH, T_2027), "m:2027-01", "first second of a year");
  TAP_EQ_STR(pid(OB_BUDGET_DAY, T_LEAP), "d:2028-02-29", "leap day");
  TAP_EQ_STR(pid(OB_BUDGET_DAY, 0), "d:1970-01-01", "the epoch");
  char out[OB_BUDGET_PERIOD_ID_MAX];
  TAP_EQ_INT(ob_budget_period_id(OB_BUDGET_DAY, T_NOV24, out), 12, "length returned");

  TAP_EQ_INT(ob_budget_period_end(OB_BUDGET_DAY, T_NOV24), T_NOV25_0, "a day ends at the next midnight");
  TAP_EQ_INT(ob_budget_period_end(OB_BUDGET_DAY, T_NOV25_0), T_NOV25_0 + 86400, "midnight itself is in the new day");
  TAP_EQ_INT(ob_budget_period_end(OB_BUDGET_MONTH, T_NOV24), T_DEC01_0, "a month ends on the 1st of the next");
  TAP_EQ_INT(ob_budget_period_end(OB_BUDGET_MONTH, T_DEC31_LAST), T_2027, "December ends with the year");
  TAP_EQ_INT(ob_budget_period_end(OB_BUDGET_DAY, T_DEC31_LAST), T_2027, "so does its last day");
  TAP_EQ_INT(ob_budget_period_end(OB_BUDGET_DAY, T_LEAP), T_MAR01_2028, "the leap day ends on March 1st");
  TAP_EQ_INT(ob_budget_period_end(OB_BUDGET_MONTH, T_FEB28_LAST), T_MAR01_2026, "February of a common year");
  TAP_EQ_INT(ob_budget_period_end(OB_BUDGET_TOTAL, T_NOV24), 0, "total never ends");
  TAP_EQ_STR(ob_budget_period_name(OB_BUDGET_DAY), "day", "names: day");
  TAP_EQ_STR(ob_budget_period_name(OB_BUDGET_MONTH), "month", "names: month");
  TAP_EQ_STR(ob_budget_period_name(OB_BUDGET_TOTAL), "total", "names: total");
}

static void test_counters(void) {
  ob_budgets_t *b = ob_budgets_create();
  const char *nov = pid(OB_BUDGET_MONTH, T_NOV24), *dec = pid(OB_BUDGET_MONTH, T_DEC01_0);
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_TENANT, "acme", nov), 0, "nothing charged: 0");
  ob_budgets_charge(b, OB_BUDGET_TENANT, "acme", nov, 120);
  ob_budgets_charge(b, OB_BUDGET_TENANT, "acme", nov, 30);
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_TENANT, "acme", nov), 150, "charges add up");
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_KEY, "acme", nov), 0, "a key with the tenant's name is another counter");
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_TENANT, "acme", dec), 0, "a new period starts from 0");
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_TENANT, "acm", nov), 0, "a prefix of a name is another name");
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_TENANT, "acme", "m:2026-1"), 0, "a prefix of a period is another period");
  ob_budgets_charge(b, OB_BUDGET_TENANT, "acme", dec, 5);
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_TENANT, "acme", nov), 150, "the old period keeps its count");
  ob_budgets_charge(b, OB_BUDGET_KEY, "k", "total", 0);
  TAP_EQ_INT(ob_budgets_count(b), 2, "a charge of 0 creates no counter");
  ob_budgets_charge(b, OB_BUDGET_KEY, "k", "total", UINT64_MAX - 1);
  ob_budgets_charge(b, OB_BUDGET_KEY, "k", "total", 10);
  TAP_CHECK(ob_budgets_used(b, OB_BUDGET_KEY, "k", "total") == UINT64_MAX, "a count saturates instead of wrapping");
  ob_budgets_destroy(b);
  ob_budgets_destroy(NULL);
}

/* How many records r holds; *used_out gets the count of the one whose key
 * is want_key (when there is one). */
static size_t count_records(ob_iov_t r, const char *want_key, size_t want_klen, uint64_t *used_out) {
  ob_iov_t key;
  uint64_t used;
  size_t n = 0;
  while (ob_budgets_next_record(&r, &key, &used)) {
    if (want_key && key.len == want_klen && memcmp(key.base, want_key, want_klen) == 0) *used_out = used;
    n++;
  }
  return n;
}

static void test_rows(void) {
  ob_budgets_t *b = ob_budgets_create();
  ob_buf_t out;
  ob_buf_init(&out);
  const char *day = pid(OB_BUDGET_DAY, T_NOV24);
  ob_budgets_charge(b, OB_BUDGET_TENANT, "acme", day, 7);
  ob_budgets_charge(b, OB_BUDGET_KEY, "acme-ci", "total", 9);
  ob_budgets_charge(b, OB_BUDGET_KEY, "acme-ci", "total", 1);
  TAP_EQ_INT(ob_budgets_take_dirty(b, &out), 2, "two counters changed");
  uint64_t used = 0;
  static const char key_ci[] = "kacme-ci\0total";
  TAP_EQ_INT(count_records(ob_buf_iov(&out), key_ci, sizeof key_ci - 1, &used), 2, "two records");
  TAP_EQ_INT(used, 10, "a record carries the count, key \"<kind><name>\\0<period>\"");
  ob_buf_t again;
  ob_buf_init(&again);
  TAP_EQ_INT(ob_budgets_take_dirty(b, &again), 0, "taken counters are clean");
  ob_budgets_redirty(b, ob_buf_iov(&out));
  TAP_EQ_INT(ob_budgets_take_dirty(b, &again), 2, "a failed write gives them back");
  ob_buf_reset(&again);
  ob_budgets_charge(b, OB_BUDGET_KEY, "acme-ci", "total", 5);
  TAP_EQ_INT(ob_budgets_take_dirty(b, &again), 1, "only what changed since");

  ob_iov_t bad = OB_IOV_LIT("\x05\x00");
  ob_iov_t key;
  TAP_CHECK(!ob_budgets_next_record(&bad, &key, &used), "a short record is refused");
  ob_buf_dispose(&again);
  ob_buf_dispose(&out);
  ob_budgets_destroy(b);
}

static void test_prune_restore(void) {
  ob_budgets_t *b = ob_budgets_create();
  ob_buf_t gone, tmp;
  ob_buf_init(&gone);
  ob_buf_init(&tmp);
  ob_budgets_charge(b, OB_BUDGET_TENANT, "t", pid(OB_BUDGET_DAY, T_NOV24), 1);
  ob_budgets_charge(b, OB_BUDGET_TENANT, "t", pid(OB_BUDGET_MONTH, T_NOV24), 2);
  ob_budgets_charge(b, OB_BUDGET_TENANT, "t", "total", 3);
  ob_budgets_charge(b, OB_BUDGET_KEY, "k", pid(OB_BUDGET_DAY, T_NOV24), 4);
  TAP_EQ_INT(ob_budgets_prune(b, T_NOV25_0, &gone), 0, "dirty counters are never pruned");
  ob_budgets_take_dirty(b, &tmp);
  TAP_EQ_INT(ob_budgets_prune(b, T_NOV25_0 - 1, &gone), 0, "in the last second of the day all are current");
  TAP_EQ_INT(ob_budgets_prune(b, T_NOV25_0, &gone), 2, "at midnight both days are over, the month and total are not");
  uint64_t used = 99;
  static const char key_day[] = "tt\0d:2026-11-24";
  TAP_EQ_INT(count_records(ob_buf_iov(&gone), key_day, sizeof key_day - 1, &used), 2, "their keys go to the store");
  TAP_EQ_INT(used, 0, "with no count");
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_TENANT, "t", pid(OB_BUDGET_MONTH, T_NOV24)), 2, "the month stays");
  ob_buf_reset(&gone);
  TAP_EQ_INT(ob_budgets_prune(b, T_2027, &gone), 1, "next year the month is over too");
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_TENANT, "t", "total"), 3, "total is never over");
  TAP_EQ_INT(ob_budgets_count(b), 1, "one counter left");

  static const char key_m[] = "kci\0m:2026-11";
  TAP_CHECK(ob_budgets_restore(b, ob_iov(key_m, sizeof key_m - 1), 40, T_NOV24), "a row of the current month loads");
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_KEY, "ci", "m:2026-11"), 40, "with its count");
  ob_buf_reset(&tmp);
  TAP_EQ_INT(ob_budgets_take_dirty(b, &tmp), 0, "a loaded row is clean: the file has it");
  TAP_CHECK(!ob_budgets_restore(b, ob_iov(key_m, sizeof key_m - 1), 40, T_DEC01_0), "a row of a past month does not");
  ob_budgets_charge(b, OB_BUDGET_KEY, "x", "total", 5);
  ob_buf_reset(&tmp);
  ob_budgets_take_dirty(b, &tmp);
  static const char key_x[] = "kx\0total";
  TAP_CHECK(ob_budgets_restore(b, ob_iov(key_x, sizeof key_x - 1), 10, T_NOV24), "a row for a counter already charged");
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_KEY, "x", "total"), 15, "adds to it");
  ob_buf_reset(&tmp);
  TAP_EQ_INT(ob_budgets_take_dirty(b, &tmp), 1, "and the sum is written back");
  static const char *const bad[] = {"", "x", "zname\0total", "k\0total", "kname\0", "kname", "kname\0week",
                                    "kname\0d:2026-11-24\0x"};
  static const size_t bad_len[] = {0, 1, 11, 7, 6, 5, 10, 21};
  bool all_refused = true;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    all_refused = all_refused && !ob_budgets_restore(b, ob_iov(bad[i], bad_len[i]), 1, T_NOV24);
  TAP_CHECK(all_refused, "malformed row keys are refused (kind, empty name or period, no separator, bad period)");
  ob_buf_dispose(&gone);
  ob_buf_dispose(&tmp);
  ob_budgets_destroy(b);
}

static void test_many(void) {
  ob_budgets_t *b = ob_budgets_create();
  char name[32];
  for (int i = 0; i < 10000; i++) {
    snprintf(name, sizeof name, "key-%d", i);
    ob_budgets_charge(b, OB_BUDGET_KEY, name, "total", (uint64_t)i + 1);
  }
  bool ok = ob_budgets_count(b) == 10000;
  for (int i = 0; i < 10000 && ok; i++) {
    snprintf(name, sizeof name, "key-%d", i);
    ok = ob_budgets_used(b, OB_BUDGET_KEY, name, "total") == (uint64_t)i + 1;
  }
  TAP_CHECK(ok, "10000 counters, each found with its own count after the table grew");
  ob_budgets_destroy(b);
}

static void test_store(void) {
  char dir[] = "/tmp/obleth-budget-XXXXXX";
  if (!mkdtemp(dir)) {
    TAP_CHECK(false, "mkdtemp");
    return;
  }
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/budgets.mdb", dir);
  int64_t now = (int64_t)time(NULL);
  char month[OB_BUDGET_PERIOD_ID_MAX], day[OB_BUDGET_PERIOD_ID_MAX];
  ob_budget_period_id(OB_BUDGET_MONTH, now, month);
  ob_budget_period_id(OB_BUDGET_DAY, now, day);

  const char *why = NULL;
  ob_budgets_t *b = ob_budgets_create();
  ob_budget_store_t *s = ob_budget_store_open(path, b, 60000, &why);
  TAP_CHECK(s != NULL, "a new file is created");
  ob_budgets_charge(b, OB_BUDGET_TENANT, "acme", month, 1200);
  ob_budgets_charge(b, OB_BUDGET_KEY, "acme-ci", day, 34);
  ob_budgets_charge(b, OB_BUDGET_KEY, "acme-ci", "d:2001-01-01", 5); /* a day long over */
  ob_budget_store_flush(s);
  ob_budgets_charge(b, OB_BUDGET_TENANT, "acme", month, 300); /* written by close */
  ob_budget_store_close(s);
  ob_budgets_destroy(b);

  b = ob_budgets_create();
  s = ob_budget_store_open(path, b, 60000, &why);
  TAP_CHECK(s != NULL, "the file opens again");
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_TENANT, "acme", month), 1500, "the tenant's count survived, close wrote the last charge");
  TAP_EQ_INT(ob_budgets_used(b, OB_BUDGET_KEY, "acme-ci", day), 34, "so did the key's");
  TAP_EQ_INT(ob_budgets_count(b), 2, "the row of a past day was deleted, not loaded");
  TAP_EQ_INT(ob_budgets_write_errors(b), 0, "no write errors");
  ob_budget_store_close(s);
  ob_budget_store_close(NULL);
  ob_budgets_destroy(b);

  b = ob_budgets_create();
  char missing[PATH_MAX + 32];
  snprintf(missing, sizeof missing, "%s/no/such/folder/b.mdb", dir);
  why = NULL;
  TAP_CHECK(ob_budget_store_open(missing, b, 500, &why) == NULL && why != NULL,
            "a file in a missing folder is reported, not created");
  snprintf(missing, sizeof missing, "%s/not-lmdb", dir);
  FILE *f = fopen(missing, "w");
  if (f) fputs("this is not an LMDB file, and it is long enough to have a header of some sort.....", f), fclose(f);
  why = NULL;
  TAP_CHECK(ob_budget_store_open(missing, b, 500, &why) == NULL && why != NULL, "a file that is not LMDB is reported");
  ob_budgets_destroy(b);

  snprintf(path, sizeof path, "rm -rf '%s'", dir);
  if (system(path) != 0) printf("# could not remove %s\n", dir);
}

int main(void) {
  test_periods();
  test_counters();
  test_rows();
  test_prune_restore();
  test_many();
  test_store();
  return tap_done();
}
