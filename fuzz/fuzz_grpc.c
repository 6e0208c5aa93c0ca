/*
 * fuzz_grpc.c: the gRPC wire helpers of src/http. The input is used four
 * ways: its head as a grpc-timeout value (a parsed value must survive a
 * format / parse round trip, never shrinking); the whole input as a message
 * stream, whose scan must not depend on how it is split into spans; the
 * input as a unary body and a protobuf message; and as a grpc-message text,
 * whose percent-encoding must be printable ASCII and decode back exactly.
 */
#include "http.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const ob_grpc_scan_t *a, const ob_grpc_scan_t *b) {
  if (a->messages != b->messages || a->compressed != b->compressed || a->payload_bytes != b->payload_bytes ||
      a->bad != b->bad || ob_grpc_scan_at_boundary(a) != ob_grpc_scan_at_boundary(b))
    abort();
}

static int unhex(char c) { return c <= '9' ? c - '0' : c - 'A' + 10; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data;

  uint64_t us, again;
  if (ob_http_parse_grpc_timeout(ob_iov(p, size < 10 ? size : 10), &us)) {
    char out[16];
    size_t n = ob_grpc_format_timeout(us, out);
    if (n < 2 || n > 9 || !ob_http_parse_grpc_timeout(ob_iov(out, n), &again) || again < us) abort();
  }

  uint32_t max = size ? data[0] * 97u : 0;
  ob_grpc_scan_t whole, bytes, spans;
  ob_grpc_scan_init(&whole, max);
  ob_grpc_scan_feed(&whole, p, size);
  ob_grpc_scan_init(&bytes, max);
  for (size_t i = 0; i < size; i++) ob_grpc_scan_feed(&bytes, p + i, 1);
  ob_grpc_scan_init(&spans, max);
  size_t step = size ? (size_t)(data[size - 1] % 11) + 1 : 1;
  for (size_t i = 0; i < size; i += step) ob_grpc_scan_feed(&spans, p + i, i + step <= size ? step : size - i);
  same(&whole, &bytes);
  same(&whole, &spans);
  if (whole.payload_bytes + 5 * whole.messages > size) abort();

  ob_iov_t msg, field;
  int one = ob_grpc_single_message(ob_iov(p, size), &msg);
  if (one == 1 && (msg.base != p + 5 || msg.len != size - 5)) abort();
  if (ob_pb_find_bytes(ob_iov(p, size), 1, &field) == 1 &&
      (field.base < p || field.base + field.len > p + size))
    abort();

  ob_buf_t enc;
  ob_buf_init(&enc);
  ob_grpc_percent_encode(&enc, ob_iov(p, size));
  size_t j = 0;
  for (size_t i = 0; i < enc.len; i++, j++) {
    char c = enc.base[i];
    if (c < 0x20 || c > 0x7E) abort();
    unsigned char d = (unsigned char)c;
    if (c == '%') {
      if (i + 2 >= enc.len) abort();
      d = (unsigned char)(unhex(enc.base[i + 1]) << 4 | unhex(enc.base[i + 2]));
      i += 2;
    }
    if (j >= size || d != data[j]) abort();
  }
  if (j != size) abort();
  ob_buf_dispose(&enc);
  return 0;
}
