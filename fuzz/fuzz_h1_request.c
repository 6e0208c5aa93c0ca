/*
 * fuzz_h1_request.c: the HTTP/1.1 request parser and chunked decoder against
 * arbitrary bytes, read as a client connection would be: parse a head, skip
 * or decode its body, parse the next pipelined request, up to a few.
 *
 * Besides memory safety it checks the parser's contract with abort():
 *  - results are in range, every view lies inside the input, names are
 *    tokens, values valid and trimmed;
 *  - incrementality: every prefix of the input gives INCOMPLETE or the same
 *    answer as the whole input, never a different one;
 *  - limits: max_head_bytes one below the head length, or max_headers one
 *    below the field count, give 431;
 *  - a head written back with the serializer parses to the same semantics;
 *  - the chunked decoder gives the same data, consumption and outcome when
 *    fed whole, one byte at a time, and in uneven pieces; it never consumes
 *    more than it is given and never mixes data with framing.
 * Deterministic: split points come from the input itself.
 */
#include "http.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXH OB_HTTP_MAX_HEADERS
#define MAX_HEAD 16384
#define MAX_MESSAGES 8
#include "fuzz_h1_common.h"

static bool target_ok(ob_iov_t v) {
  for (size_t i = 0; i < v.len; i++) {
    unsigned char c = (unsigned char)v.base[i];
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

static int parse(const char *p, size_t n, ob_h1_request_t *req, ob_http_header_t *h, size_t maxh, size_t maxb,
                 const char **why) {
  *why = NULL;
  int r = ob_h1_parse_request(p, n, req, h, maxh, maxb, why);
  CHECK(r > 0 || r == OB_ERR_INCOMPLETE || r == OB_ERR_BAD_REQUEST || r == OB_ERR_HEADERS_TOO_LARGE ||
        r == OB_ERR_NOT_IMPLEMENTED);
  CHECK(r == OB_ERR_INCOMPLETE || r > 0 || *why != NULL);
  if (r > 0) {
    CHECK((size_t)r <= n && (size_t)r <= maxb);
    CHECK(ob_http_is_token(req->method) && inside(req->method, p, (size_t)r));
    CHECK(req->target.len > 0 && inside(req->target, p, (size_t)r) && target_ok(req->target));
    CHECK(req->minor_version == 0 || req->minor_version == 1);
    CHECK(req->headers == h && req->num_headers <= maxh);
    for (size_t i = 0; i < req->num_headers; i++) {
      CHECK(ob_http_is_token(h[i].name) && inside(h[i].name, p, (size_t)r));
      CHECK(value_ok(h[i].value) && ob_http_is_valid_value(h[i].value) && inside(h[i].value, p, (size_t)r) && trimmed(h[i].value));
    }
    CHECK(inside(req->host, p, (size_t)r));
    CHECK(req->body == OB_H1_BODY_NONE || req->body == OB_H1_BODY_LENGTH || req->body == OB_H1_BODY_CHUNKED);
    CHECK(req->body != OB_H1_BODY_CHUNKED || req->minor_version == 1);
    CHECK(req->body == OB_H1_BODY_LENGTH || req->content_length == 0);
    CHECK(req->content_length <= (uint64_t)INT64_MAX);
  }
  return r;
}

/* Every prefix gives INCOMPLETE or exactly the whole input's answer. */
static void check_prefixes(const char *p, size_t n, int full, const char *full_why, uint64_t seed) {
  ob_http_header_t h[MAXH];
  ob_h1_request_t req;
  const char *why;
  size_t cuts[24];
  size_t k = 0;
  cuts[k++] = 0;
  cuts[k++] = n / 2;
  if (n) cuts[k++] = n - 1;
  if (full > 0) {
    cuts[k++] = (size_t)full - 1;
    cuts[k++] = (size_t)full;
  }
  while (k < sizeof cuts / sizeof cuts[0]) {
    seed = mix(seed + 0x9e3779b97f4a7c15ULL);
    cuts[k++] = (size_t)(seed % (n + 1));
  }
  for (size_t i = 0; i < k; i++) {
    size_t cut = cuts[i];
    int r = parse(p, cut, &req, h, MAXH, MAX_HEAD, &why);
    if (full > 0 && cut < (size_t)full) {
      CHECK(r == OB_ERR_INCOMPLETE);
    } else if (r != OB_ERR_INCOMPLETE) {
      CHECK(r == full);
      if (r < 0) CHECK(why == full_why);
    } else {
      CHECK(full <= 0 || cut < (size_t)full);
    }
  }
}

/* Tighter limits turn a good head into 431. */
static void check_limits(const char *p, size_t n, int full, size_t num_headers) {
  ob_http_header_t h[MAXH];
  ob_h1_request_t req;
  const char *why;
  CHECK(parse(p, n, &req, h, MAXH, (size_t)full, &why) == full);
  CHECK(parse(p, n, &req, h, MAXH, (size_t)full - 1, &why) == OB_ERR_HEADERS_TOO_LARGE);
  if (num_headers > 0) CHECK(parse(p, n, &req, h, num_headers - 1, MAX_HEAD, &why) == OB_ERR_HEADERS_TOO_LARGE);
}

/* Written back with the serializer, an HTTP/1.1 head means the same. */
static void check_roundtrip(const ob_h1_request_t *req) {
  if (req->minor_version != 1) return;
  ob_buf_t b;
  ob_buf_init(&b);
  ob_h1_append_request_line(&b, req->method, req->target);
  for (size_t i = 0; i < req->num_headers; i++) ob_h1_append_header(&b, req->headers[i].name, req->headers[i].value);
  ob_buf_append(&b, "\r\n", 2);
  ob_http_header_t h[MAXH];
  ob_h1_request_t again;
  const char *why;
  int r = parse(b.base, b.len, &again, h, MAXH, b.len, &why);
  CHECK(r == (int)b.len);
  CHECK(ob_iov_eq(again.method, req->method) && ob_iov_eq(again.target, req->target));
  CHECK(again.num_headers == req->num_headers);
  for (size_t i = 0; i < req->num_headers; i++)
    CHECK(ob_iov_eq(h[i].name, req->headers[i].name) && ob_iov_eq(h[i].value, req->headers[i].value));
  CHECK(again.body == req->body && again.content_length == req->content_length);
  CHECK(again.keep_alive == req->keep_alive && again.expect_continue == req->expect_continue &&
        again.upgrade_h2c == req->upgrade_h2c && ob_iov_eq(again.host, req->host));
  ob_buf_dispose(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *buf = (const char *)data;
  uint64_t seed = fnv(buf, size < 64 ? size : 64, size);
  ob_http_header_t h[MAXH];
  size_t off = 0;
  for (int m = 0; m < MAX_MESSAGES && off < size; m++) {
    const char *p = buf + off;
    size_t n = size - off;
    ob_h1_request_t req;
    const char *why;
    int r = parse(p, n, &req, h, MAXH, MAX_HEAD, &why);
    check_prefixes(p, n, r, why, seed + (uint64_t)m);
    if (r <= 0) break;
    check_limits(p, n, r, req.num_headers);
    check_roundtrip(&req);
    off += (size_t)r;
    if (req.body == OB_H1_BODY_LENGTH) {
      if (req.content_length > size - off) break;
      off += (size_t)req.content_length;
    } else if (req.body == OB_H1_BODY_CHUNKED) {
      long used = check_chunked(buf + off, size - off, seed);
      if (used < 0) break;
      off += (size_t)used;
    }
  }
  return 0;
}
