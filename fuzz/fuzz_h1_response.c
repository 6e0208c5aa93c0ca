/*
 * fuzz_h1_response.c: the HTTP/1.1 response parser and chunked decoder
 * against arbitrary bytes, read as an upstream connection would be: parse a
 * head (as the answer to GET and to HEAD), skip or decode its body, parse the
 * next response (interim 1xx, or the next on a kept-alive connection).
 *
 * Checks with abort(), as fuzz_h1_request.c does (the chunked checks are the
 * same code, kept in each target so a target is one file):
 *  - results in range, views inside the input, names tokens, values valid;
 *    status 100-599; no body for HEAD, 1xx, 204, 304; "head" framed as GET;
 *    UNTIL_CLOSE never keep-alive;
 *  - every prefix gives INCOMPLETE or exactly the whole input's answer;
 *  - tighter max_head_bytes / max_headers give 431;
 *  - a head written back with the serializer means the same;
 *  - the chunked decoder agrees with itself whole, byte by byte and in
 *    uneven pieces, never over-consumes, never mixes data and framing.
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

static int parse(const char *p, size_t n, ob_h1_response_t *resp, ob_http_header_t *h, size_t maxh, size_t maxb,
                 bool was_head, const char **why) {
  *why = NULL;
  int r = ob_h1_parse_response(p, n, resp, h, maxh, maxb, was_head ? OB_IOV_LIT("HEAD") : OB_IOV_LIT("GET"), why);
  CHECK(r > 0 || r == OB_ERR_INCOMPLETE || r == OB_ERR_BAD_RESPONSE || r == OB_ERR_HEADERS_TOO_LARGE);
  CHECK(r == OB_ERR_INCOMPLETE || r > 0 || *why != NULL);
  if (r > 0) {
    CHECK((size_t)r <= n && (size_t)r <= maxb);
    CHECK(resp->status >= 100 && resp->status <= 599);
    CHECK(resp->minor_version == 0 || resp->minor_version == 1);
    CHECK(inside(resp->reason, p, (size_t)r) && value_ok(resp->reason));
    CHECK(resp->headers == h && resp->num_headers <= maxh);
    for (size_t i = 0; i < resp->num_headers; i++) {
      CHECK(ob_http_is_token(h[i].name) && inside(h[i].name, p, (size_t)r));
      CHECK(value_ok(h[i].value) && ob_http_is_valid_value(h[i].value) && inside(h[i].value, p, (size_t)r) && trimmed(h[i].value));
    }
    int s = resp->status;
    if (was_head || s < 200 || s == 204 || s == 304) CHECK(resp->body == OB_H1_BODY_NONE);
    CHECK(resp->body == OB_H1_BODY_NONE || resp->body == OB_H1_BODY_LENGTH || resp->body == OB_H1_BODY_CHUNKED ||
          resp->body == OB_H1_BODY_UNTIL_CLOSE);
    CHECK(resp->body != OB_H1_BODY_UNTIL_CLOSE || !resp->keep_alive);
    CHECK(resp->body != OB_H1_BODY_CHUNKED || resp->minor_version == 1);
    CHECK(resp->body == OB_H1_BODY_LENGTH || resp->content_length == 0);
    CHECK(resp->content_length <= (uint64_t)INT64_MAX);
    if (!was_head) {
      /* Methods are case-sensitive: an answer to "head" is framed as GET's. */
      ob_http_header_t h2[MAXH];
      ob_h1_response_t again;
      const char *why2;
      CHECK(ob_h1_parse_response(p, n, &again, h2, maxh, maxb, OB_IOV_LIT("head"), &why2) == r &&
            again.body == resp->body && again.content_length == resp->content_length);
    }
  }
  return r;
}

/* Every prefix gives INCOMPLETE or exactly the whole input's answer. */
static void check_prefixes(const char *p, size_t n, bool was_head, int full, const char *full_why, uint64_t seed) {
  ob_http_header_t h[MAXH];
  ob_h1_response_t resp;
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
    int r = parse(p, cut, &resp, h, MAXH, MAX_HEAD, was_head, &why);
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

static void check_limits(const char *p, size_t n, bool was_head, int full, size_t num_headers) {
  ob_http_header_t h[MAXH];
  ob_h1_response_t resp;
  const char *why;
  CHECK(parse(p, n, &resp, h, MAXH, (size_t)full, was_head, &why) == full);
  CHECK(parse(p, n, &resp, h, MAXH, (size_t)full - 1, was_head, &why) == OB_ERR_HEADERS_TOO_LARGE);
  if (num_headers > 0)
    CHECK(parse(p, n, &resp, h, num_headers - 1, MAX_HEAD, was_head, &why) == OB_ERR_HEADERS_TOO_LARGE);
}

/* Written back with the serializer (which uses the standard reason), an
 * HTTP/1.1 head means the same. */
static void check_roundtrip(const ob_h1_response_t *resp, bool was_head) {
  if (resp->minor_version != 1) return;
  ob_buf_t b;
  ob_buf_init(&b);
  ob_h1_append_status_line(&b, resp->status);
  for (size_t i = 0; i < resp->num_headers; i++)
    ob_h1_append_header(&b, resp->headers[i].name, resp->headers[i].value);
  ob_buf_append(&b, "\r\n", 2);
  ob_http_header_t h[MAXH];
  ob_h1_response_t again;
  const char *why;
  int r = parse(b.base, b.len, &again, h, MAXH, b.len, was_head, &why);
  CHECK(r == (int)b.len);
  CHECK(again.status == resp->status && again.num_headers == resp->num_headers);
  CHECK(ob_iov_eq_str_nocase(again.reason, ob_http_reason(resp->status)));
  for (size_t i = 0; i < resp->num_headers; i++)
    CHECK(ob_iov_eq(h[i].name, resp->headers[i].name) && ob_iov_eq(h[i].value, resp->headers[i].value));
  CHECK(again.body == resp->body && again.content_length == resp->content_length &&
        again.keep_alive == resp->keep_alive);
  ob_buf_dispose(&b);
}

/* One connection's worth of responses; returns nothing, aborts on a broken
 * invariant. */
static void run(const char *buf, size_t size, bool was_head, uint64_t seed) {
  ob_http_header_t h[MAXH];
  size_t off = 0;
  for (int m = 0; m < MAX_MESSAGES && off < size; m++) {
    const char *p = buf + off;
    size_t n = size - off;
    ob_h1_response_t resp;
    const char *why;
    int r = parse(p, n, &resp, h, MAXH, MAX_HEAD, was_head, &why);
    check_prefixes(p, n, was_head, r, why, seed + (uint64_t)m);
    if (r <= 0) break;
    check_limits(p, n, was_head, r, resp.num_headers);
    check_roundtrip(&resp, was_head);
    off += (size_t)r;
    if (resp.body == OB_H1_BODY_LENGTH) {
      if (resp.content_length > size - off) break;
      off += (size_t)resp.content_length;
    } else if (resp.body == OB_H1_BODY_CHUNKED) {
      long used = check_chunked(buf + off, size - off, seed);
      if (used < 0) break;
      off += (size_t)used;
    } else if (resp.body == OB_H1_BODY_UNTIL_CLOSE) {
      break; /* the rest of the input is body */
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *buf = (const char *)data;
  uint64_t seed = fnv(buf, size < 64 ? size : 64, size);
  run(buf, size, false, seed);
  run(buf, size, true, seed);
  return 0;
}
