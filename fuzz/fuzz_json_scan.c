/*
 * fuzz_json_scan.c: the raw JSON member scanner of routes/ (used to patch the
 * model name in place). It must never read outside the input, and a member
 * it reports must lie inside the input with its value starting a JSON value.
 */
#include "routes.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* Copy so reads past the end are caught by ASan. */
  char *buf = malloc(size ? size : 1);
  memcpy(buf, data, size);
  ob_iov_t in = ob_iov(buf, size);
  static const char *keys[] = {"model", "a", "", "stream"};
  for (size_t k = 0; k < 4; k++) {
    ob_json_member_t m;
    int r = ob_json_find_member(in, ob_iov_str(keys[k]), &m);
    if (r < -1 || r > 1) abort();
    if (r == 1) {
      if (m.value.base < buf || m.value.base + m.value.len > buf + size || m.value.len == 0) abort();
      if (m.key.base < buf || m.key.base + m.key.len > buf + size) abort();
      char c = m.value.base[0];
      if (!(c == '"' || c == '{' || c == '[' || c == '-' || (c >= '0' && c <= '9') || c == 't' || c == 'f' || c == 'n'))
        abort();
    }
  }
  free(buf);
  return 0;
}
