/*
 * fuzz_canon.c: the cache's JSON canonicalizer must never crash, and its
 * output must be a fixed point: canonical(canonical(x)) == canonical(x).
 * The entry decoder gets the same bytes (it reads what LMDB hands back).
 */
#include "cache.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const skip[] = {"user", "stream_options"};
  ob_iov_t in = ob_iov((const char *)data, size);
  ob_buf_t once, twice;
  ob_buf_init(&once), ob_buf_init(&twice);
  if (ob_cache_canonical(in, skip, 2, &once)) {
    if (!ob_cache_canonical(ob_buf_iov(&once), skip, 2, &twice)) abort();
    if (once.len != twice.len || memcmp(once.base, twice.base, once.len) != 0) abort();
  } else if (once.len != 0) {
    abort(); /* a failure leaves the output untouched */
  }
  ob_cache_entry_t e;
  if (ob_cache_entry_decode(in, &e)) {
    ob_buf_t re;
    ob_buf_init(&re);
    ob_cache_entry_encode(&e, &re);
    if (re.len != size || memcmp(re.base, data, size) != 0) abort();
    ob_buf_dispose(&re);
  }
  ob_buf_dispose(&once), ob_buf_dispose(&twice);
  return 0;
}
