/*
 * fuzz_usage.c: the streaming usage scanner of routes/. Its result must not
 * depend on how the body is split into spans: the input is fed whole, then
 * byte by byte, then in spans sized by the input's first byte, and all three
 * results must agree.
 */
#include "routes.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const ob_usage_t *a, const ob_usage_t *b) {
  if (a->found != b->found || a->events != b->events) abort();
  if (a->found && (a->prompt_tokens != b->prompt_tokens || a->completion_tokens != b->completion_tokens)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data;
  ob_usage_t whole, bytes, spans;
  ob_usage_init(&whole);
  ob_usage_feed(&whole, p, size);
  ob_usage_init(&bytes);
  for (size_t i = 0; i < size; i++) ob_usage_feed(&bytes, p + i, 1);
  ob_usage_init(&spans);
  size_t step = size ? (size_t)(data[0] % 13) + 1 : 1;
  for (size_t i = 0; i < size; i += step) ob_usage_feed(&spans, p + i, i + step <= size ? step : size - i);
  same(&whole, &bytes);
  same(&whole, &spans);
  return 0;
}
