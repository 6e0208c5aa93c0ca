/*
 * fairshare_bucket.c: token buckets for per-tenant rate limits (requests and
 * tokens per minute). A bucket is caller storage; nothing here allocates,
 * reads the clock or knows about the scheduler. Time never runs backwards
 * for a bucket: a `now_us` older than the last one seen refills nothing.
 *
 * The level is a double so that refill is continuous (per_minute / 60e6
 * tokens per microsecond) without accumulating rounding drift; the products
 * involved stay far below 2^53 for any realistic rate, so results are exact
 * for whole-second steps.
 */
#include "fairshare_int.h"

#include <math.h>

static void refill(ob_fs_bucket_t *b, uint64_t now_us) {
  if (now_us <= b->updated_us) return;
  double cap = (double)b->per_minute;
  if (b->level < cap) {
    b->level += (double)(now_us - b->updated_us) * (double)b->per_minute / 60e6;
    if (b->level > cap) b->level = cap;
  }
  b->updated_us = now_us;
}

/* ms for the bucket to gain `want` tokens, rounded up. */
static uint64_t ms_for(const ob_fs_bucket_t *b, double want) {
  if (want <= 0) return 0;
  double ms = ceil(want * 60000.0 / (double)b->per_minute);
  return ms >= 1.8e19 ? UINT64_MAX : (uint64_t)ms;
}

void ob_fs_bucket_init(ob_fs_bucket_t *b, uint64_t per_minute, uint64_t now_us) {
  b->per_minute = per_minute;
  b->level = (double)per_minute;
  b->updated_us = now_us;
}

bool ob_fs_bucket_take(ob_fs_bucket_t *b, uint64_t n, uint64_t now_us) {
  if (!b->per_minute) return true;
  refill(b, now_us);
  if (b->level < (double)n) return false;
  b->level -= (double)n;
  return true;
}

void ob_fs_bucket_adjust(ob_fs_bucket_t *b, int64_t delta, uint64_t now_us) {
  if (!b->per_minute) return;
  refill(b, now_us);
  b->level += (double)delta;
  if (b->level > (double)b->per_minute) b->level = (double)b->per_minute;
}

uint64_t ob_fs_bucket_remaining(ob_fs_bucket_t *b, uint64_t now_us) {
  if (!b->per_minute) return UINT64_MAX;
  refill(b, now_us);
  return b->level <= 0 ? 0 : (uint64_t)b->level;
}

uint64_t ob_fs_bucket_wait_ms(ob_fs_bucket_t *b, uint64_t n, uint64_t now_us) {
  if (!b->per_minute) return 0;
  refill(b, now_us);
  /* More than the bucket holds never becomes available: report the wait
   * for a full bucket, the most that can ever be taken at once. */
  double want = (double)(n > b->per_minute ? b->per_minute : n);
  return ms_for(b, want - b->level);
}

uint64_t ob_fs_bucket_full_ms(ob_fs_bucket_t *b, uint64_t now_us) {
  if (!b->per_minute) return 0;
  refill(b, now_us);
  return ms_for(b, (double)b->per_minute - b->level);
}
