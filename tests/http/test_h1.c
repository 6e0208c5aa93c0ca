/* Unit tests for src/http h1_parse.c and h1_serialize.c: request and response
 * heads, every request-smuggling shape we reject, limits, the chunked
 * decoder, the serializer and the hop-by-hop list. */
#include "http.h"
#include "tap.h"

#include <stdlib.h>

#define MAXH OB_HTTP_MAX_HEADERS
#define HEAD_LIMIT 8192

static ob_http_header_t hdrs[MAXH];
static ob_h1_request_t req;
static ob_h1_response_t resp;
static const char *why;

/* Literals may hold NULs, so their length comes from sizeof. */
#define REQ(lit) ob_h1_parse_request((lit), sizeof(lit) - 1, &req, hdrs, MAXH, HEAD_LIMIT, &why)
#define RESP(lit) ob_h1_parse_response((lit), sizeof(lit) - 1, &resp, hdrs, MAXH, HEAD_LIMIT, OB_IOV_LIT("GET"), &why)
#define RESP_HEAD(lit) ob_h1_parse_response((lit), sizeof(lit) - 1, &resp, hdrs, MAXH, HEAD_LIMIT, OB_IOV_LIT("HEAD"), &why)
#define LEN(lit) ((int)(sizeof(lit) - 1))

static bool iov_is(ob_iov_t v, const char *s) { return ob_iov_eq(v, ob_iov_str(s)); }

/* A request that must be refused with err, and say why. */
#define REJECT(lit, err, name)                                                   \
  do {                                                                           \
    why = NULL;                                                                  \
    int r_ = REQ(lit);                                                           \
    TAP_EQ_INT(r_, err, name);                                                   \
    if (r_ != (err)) printf("#   why: %s\n", why ? why : "(none)");            \
    else if (!why) printf("#   no why given\n");                               \
  } while (0)

#define REJECT_RESP(lit, name) TAP_EQ_INT(RESP(lit), OB_ERR_BAD_RESPONSE, name)

/* ---------------------------------------------------------------- requests */

static void test_valid_requests(void) {
  static const char get[] = "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent:  curl/8 \t\r\n"
                            "Accept: */*\r\n\r\n";
  int r = REQ(get);
  TAP_EQ_INT(r, LEN(get), "GET: head length");
  TAP_CHECK(iov_is(req.method, "GET") && iov_is(req.target, "/index.html?q=1"), "GET: method and target");
  TAP_CHECK(req.minor_version == 1 && req.num_headers == 3 && req.headers == hdrs, "GET: version and fields");
  TAP_CHECK(iov_is(hdrs[1].name, "User-Agent") && iov_is(hdrs[1].value, "curl/8"), "GET: value OWS trimmed");
  TAP_CHECK(iov_is(req.host, "example.com"), "GET: host");
  TAP_CHECK(req.body == OB_H1_BODY_NONE && req.keep_alive && !req.expect_continue && !req.upgrade_h2c,
            "GET: no body, keep-alive by default");
  TAP_CHECK(hdrs[0].name.base == get + 30, "GET: views point into the input");

  static const char empty_value[] = "GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Sp:   \r\n\r\n";
  TAP_CHECK(REQ(empty_value) == LEN(empty_value) && hdrs[1].value.len == 0 && hdrs[2].value.len == 0,
            "empty field values");

  static const char post[] = "POST /v1/chat HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world";
  r = REQ(post);
  TAP_EQ_INT(r, LEN(post) - 11, "POST: head length excludes the body");
  TAP_CHECK(req.body == OB_H1_BODY_LENGTH && req.content_length == 11, "POST: Content-Length");

  static const char cl0[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
  TAP_CHECK(REQ(cl0) == LEN(cl0) && req.body == OB_H1_BODY_LENGTH && req.content_length == 0,
            "Content-Length: 0 is LENGTH 0");

  static const char chunked[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
  r = REQ(chunked);
  TAP_CHECK(r == LEN(chunked) - 15 && req.body == OB_H1_BODY_CHUNKED, "chunked (case-insensitive)");

  static const char pipelined[] = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
                                  "GET /b HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
  r = REQ(pipelined);
  TAP_CHECK(r > 0 && req.content_length == 5, "pipelined: first request");
  size_t off = (size_t)r + 5;
  int r2 = ob_h1_parse_request(pipelined + off, sizeof pipelined - 1 - off, &req, hdrs, MAXH, HEAD_LIMIT, &why);
  TAP_CHECK(r2 == (int)(sizeof pipelined - 1 - off) && iov_is(req.target, "/b") && iov_is(req.host, "b") &&
                !req.keep_alive,
            "pipelined: second request parsed at the offset after the body");

  static const char h10[] = "GET / HTTP/1.0\r\n\r\n";
  TAP_CHECK(REQ(h10) == LEN(h10) && req.minor_version == 0 && !req.keep_alive && req.host.len == 0,
            "HTTP/1.0 without Host, not keep-alive");
  static const char h10ka[] = "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
  TAP_CHECK(REQ(h10ka) == LEN(h10ka) && req.keep_alive, "HTTP/1.0 Connection: keep-alive");
  static const char close[] = "GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, CLOSE\r\n\r\n";
  TAP_CHECK(REQ(close) == LEN(close) && !req.keep_alive, "HTTP/1.1 Connection list with close");
  static const char ka2[] = "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n";
  TAP_CHECK(REQ(ka2) == LEN(ka2) && !req.keep_alive, "close in a second Connection field wins");

  static const char expect[] = "PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
  TAP_CHECK(REQ(expect) == LEN(expect) && req.expect_continue, "Expect: 100-continue");
  static const char expect10[] = "PUT /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
  TAP_CHECK(REQ(expect10) == LEN(expect10) && !req.expect_continue, "Expect: 100-continue ignored on HTTP/1.0");
  static const char h2c[] = "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket, H2C\r\nConnection: Upgrade\r\n\r\n";
  TAP_CHECK(REQ(h2c) == LEN(h2c) && req.upgrade_h2c, "Upgrade lists h2c");
  static const char h2cx[] = "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c-foo\r\n\r\n";
  TAP_CHECK(REQ(h2cx) == LEN(h2cx) && !req.upgrade_h2c, "Upgrade: h2c-foo is not h2c");

  static const char lead[] = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
  TAP_CHECK(REQ(lead) == LEN(lead) && iov_is(req.method, "GET"), "leading empty lines skipped and counted");
  REJECT("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "too many leading empty lines");

  static const char absf[] = "GET http://example.com:8080/x HTTP/1.1\r\nHost: example.com:8080\r\n\r\n";
  TAP_CHECK(REQ(absf) == LEN(absf) && iov_is(req.target, "http://example.com:8080/x"), "absolute-form target");
  static const char v6[] = "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n";
  TAP_EQ_INT(REQ(v6), LEN(v6), "IPv6 literal Host");
  static const char emptyhost[] = "OPTIONS * HTTP/1.1\r\nHost:\r\n\r\n";
  TAP_CHECK(REQ(emptyhost) == LEN(emptyhost) && req.host.len == 0, "empty Host accepted");

  static const char obs[] = "GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9\r\n\r\n";
  TAP_EQ_INT(REQ(obs), LEN(obs), "obs-text in a value accepted");
  static const char tabs[] = "GET / HTTP/1.1\r\nHost: a\r\nX:\ta\tb\t\r\n\r\n";
  TAP_CHECK(REQ(tabs) == LEN(tabs) && iov_is(hdrs[1].value, "a\tb"), "HTAB inside a value kept, around trimmed");

  static const char cl_list[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n";
  TAP_CHECK(REQ(cl_list) == LEN(cl_list) && req.body == OB_H1_BODY_LENGTH && req.content_length == 7,
            "identical Content-Length values (list and repeated) accepted");
  static const char cl_max[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n";
  TAP_CHECK(REQ(cl_max) == LEN(cl_max) && req.content_length == 9223372036854775807ull,
            "Content-Length 2^63-1 accepted");
}

/* Every proper prefix of a complete head is INCOMPLETE. */
static void test_incomplete(void) {
  static const char s[] = "\r\nPOST /upload?x=1 HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n"
                          "X-Empty:\r\nAccept: */*\r\n\r\n";
  int bad = -1;
  for (size_t i = 0; i < sizeof s - 1; i++) {
    int r = ob_h1_parse_request(s, i, &req, hdrs, MAXH, HEAD_LIMIT, &why);
    if (r != OB_ERR_INCOMPLETE && bad < 0) bad = (int)i;
  }
  TAP_EQ_INT(bad, -1, "request: every split point is INCOMPLETE");
  TAP_EQ_INT(REQ(s), LEN(s), "request: complete at the last byte");

  static const char r1[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n";
  bad = -1;
  for (size_t i = 0; i < sizeof r1 - 1; i++) {
    int r = ob_h1_parse_response(r1, i, &resp, hdrs, MAXH, HEAD_LIMIT, OB_IOV_LIT("GET"), &why);
    if (r != OB_ERR_INCOMPLETE && bad < 0) bad = (int)i;
  }
  TAP_EQ_INT(bad, -1, "response: every split point is INCOMPLETE");
}

static void test_smuggling(void) {
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
         OB_ERR_BAD_REQUEST, "CL + TE");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
         OB_ERR_BAD_REQUEST, "TE + CL");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", OB_ERR_BAD_REQUEST,
         "differing Content-Length fields");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", OB_ERR_BAD_REQUEST,
         "differing Content-Length list");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,,5\r\n\r\n", OB_ERR_BAD_REQUEST,
         "empty Content-Length element");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", OB_ERR_BAD_REQUEST, "empty Content-Length");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", OB_ERR_BAD_REQUEST, "signed Content-Length");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", OB_ERR_BAD_REQUEST, "hex Content-Length");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", OB_ERR_BAD_REQUEST,
         "Content-Length with inner space");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n", OB_ERR_BAD_REQUEST,
         "Content-Length above 2^63-1");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", OB_ERR_BAD_REQUEST,
         "Content-Length overflow");

  REJECT("GET / HTTP/1.1\r\nHost: a\r\nX-Long: a\r\n b\r\n\r\n", OB_ERR_BAD_REQUEST, "obs-fold (SP)");
  REJECT("GET / HTTP/1.1\r\nHost: a\r\nX-Long: a\r\n\tb\r\n\r\n", OB_ERR_BAD_REQUEST, "obs-fold (HTAB)");
  REJECT("GET / HTTP/1.1\r\n Host: a\r\n\r\n", OB_ERR_BAD_REQUEST, "whitespace before the first field");
  REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", OB_ERR_BAD_REQUEST, "bare CR in a value");
  TAP_EQ_STR(why, "bare CR", "bare CR: why");
  REJECT("GET / HTTP/1.1\rHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "bare CR after the request line");
  REJECT("GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", OB_ERR_BAD_REQUEST, "bare LF after a field");
  TAP_EQ_STR(why, "bare LF", "bare LF: why");
  REJECT("GET / HTTP/1.1\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "bare LF after the request line");
  REJECT("GET / HTTP/1.1\r\nHost: a\r\n\n", OB_ERR_BAD_REQUEST, "bare LF as the empty line");
  REJECT("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "bare LF before the request line");
  REJECT("GET / HTTP/1.1\r\nHost : a\r\n\r\n", OB_ERR_BAD_REQUEST, "space before colon");
  TAP_EQ_STR(why, "whitespace before colon", "space before colon: why");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n", OB_ERR_BAD_REQUEST,
         "tab before colon");
  REJECT("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "invalid token character in method");
  REJECT("G\x7fT / HTTP/1.1\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "DEL in method");
  REJECT(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "empty method");
  REJECT("GET / HTTP/1.1\r\nHost: a\r\nX@Y: 1\r\n\r\n", OB_ERR_BAD_REQUEST, "invalid character in field name");
  REJECT("GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: 1\r\n\r\n", OB_ERR_BAD_REQUEST, "obs-text in field name");
  REJECT("GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", OB_ERR_BAD_REQUEST, "empty field name");
  REJECT("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", OB_ERR_BAD_REQUEST, "field line without colon");
  REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", OB_ERR_BAD_REQUEST, "NUL in value");
  REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", OB_ERR_BAD_REQUEST, "control character in value");
  REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", OB_ERR_BAD_REQUEST, "DEL in value");

  /* Transfer-Encoding decisions (see transfer_encoding() in h1_parse.c). */
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", OB_ERR_BAD_REQUEST,
         "TE: chunked not final -> 400");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", OB_ERR_BAD_REQUEST,
         "TE: gzip without chunked -> 400");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", OB_ERR_BAD_REQUEST,
         "TE: identity -> 400");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", OB_ERR_BAD_REQUEST,
         "TE: chunked twice -> 400");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
         OB_ERR_BAD_REQUEST, "TE: chunked twice across fields -> 400");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
         OB_ERR_BAD_REQUEST, "TE: chunked then gzip across fields -> 400");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", OB_ERR_BAD_REQUEST, "TE: empty -> 400");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", OB_ERR_BAD_REQUEST,
         "TE: empty element -> 400");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", OB_ERR_BAD_REQUEST,
         "TE: chunked with parameters -> 400");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", OB_ERR_BAD_REQUEST,
         "TE: quoted chunked -> 400");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", OB_ERR_BAD_REQUEST,
         "TE: xchunked -> 400");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", OB_ERR_NOT_IMPLEMENTED,
         "TE: gzip, chunked -> 501");
  REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
         OB_ERR_NOT_IMPLEMENTED, "TE: gzip then chunked across fields -> 501");
  REJECT("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", OB_ERR_BAD_REQUEST, "TE on HTTP/1.0 -> 400");
  REJECT("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", OB_ERR_BAD_REQUEST,
         "TE + CL on HTTP/1.0 -> 400");
  static const char te_ok[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  chunked \r\n\r\n";
  TAP_CHECK(REQ(te_ok) == LEN(te_ok) && req.body == OB_H1_BODY_CHUNKED, "TE: chunked with OWS accepted");

  REJECT("GET / HTTP/1.1\r\n\r\n", OB_ERR_BAD_REQUEST, "HTTP/1.1 without Host");
  REJECT("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "two Host fields");
  REJECT("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", OB_ERR_BAD_REQUEST, "two Host fields on HTTP/1.0");
  REJECT("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", OB_ERR_BAD_REQUEST, "space inside Host");
  REJECT("GET / HTTP/1.1\r\nHost: user@evil\r\n\r\n", OB_ERR_BAD_REQUEST, "userinfo in Host");
  REJECT("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", OB_ERR_BAD_REQUEST, "slash in Host");

  REJECT("GET / HTTP/2.0\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "HTTP/2.0 request line");
  TAP_EQ_STR(why, "unsupported HTTP version", "HTTP/2.0: why");
  REJECT("GET / HTTP/1.2\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "HTTP/1.2");
  REJECT("GET / http/1.1\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "lower-case HTTP name");
  REJECT("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "trailing space after the version");
  REJECT("GET /\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "HTTP/0.9 style request line");
  REJECT("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "double space: empty target");
  REJECT("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "space inside the target");
  REJECT("GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "raw byte >= 0x80 in the target");
  REJECT("GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "control character in the target");
  REJECT("GET /\t HTTP/1.1\r\nHost: a\r\n\r\n", OB_ERR_BAD_REQUEST, "HTAB in the target");

  /* Errors in complete lines are reported before the head is complete. */
  static const char early[] = "GET / HTTP/1.1\r\nHost : a\r\n";
  TAP_EQ_INT(REQ(early), OB_ERR_BAD_REQUEST, "error reported before the head is complete");
}

static void test_limits(void) {
  ob_buf_t b;
  ob_buf_init(&b);
  ob_buf_append_str(&b, "GET / HTTP/1.1\r\nHost: a\r\n");
  for (int i = 0; i < MAXH; i++) ob_buf_printf(&b, "X-%d: %d\r\n", i, i);
  ob_buf_append_str(&b, "\r\n");
  int r = ob_h1_parse_request(b.base, b.len, &req, hdrs, MAXH, 65536, &why);
  TAP_EQ_INT(r, OB_ERR_HEADERS_TOO_LARGE, "129 fields with room for 128: 431");
  r = ob_h1_parse_request(b.base, b.len / 2, &req, hdrs, MAXH, 65536, &why);
  TAP_EQ_INT(r, OB_ERR_INCOMPLETE, "half of it: still incomplete");

  static const char four[] = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
  TAP_EQ_INT(ob_h1_parse_request(four, sizeof four - 1, &req, hdrs, 3, HEAD_LIMIT, &why), OB_ERR_HEADERS_TOO_LARGE,
             "4 fields with max_headers 3: 431");
  TAP_EQ_INT(ob_h1_parse_request(four, sizeof four - 1, &req, hdrs, 4, HEAD_LIMIT, &why), LEN(four),
             "4 fields with max_headers 4: ok");

  size_t n = sizeof four - 1;
  TAP_EQ_INT(ob_h1_parse_request(four, n, &req, hdrs, MAXH, n, &why), (int)n, "head of exactly max_head_bytes: ok");
  TAP_EQ_INT(ob_h1_parse_request(four, n, &req, hdrs, MAXH, n - 1, &why), OB_ERR_HEADERS_TOO_LARGE,
             "complete head one byte over max_head_bytes: 431");
  TAP_EQ_INT(ob_h1_parse_request(four, n - 10, &req, hdrs, MAXH, n - 10, &why), OB_ERR_INCOMPLETE,
             "incomplete head filling max_head_bytes: incomplete");
  TAP_EQ_INT(ob_h1_parse_request(four, n - 10, &req, hdrs, MAXH, n - 11, &why), OB_ERR_HEADERS_TOO_LARGE,
             "incomplete head past max_head_bytes: 431");

  ob_buf_reset(&b);
  ob_buf_append_str(&b, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ");
  for (int i = 0; i < 10000; i++) ob_buf_append(&b, "x", 1);
  TAP_EQ_INT(ob_h1_parse_request(b.base, b.len, &req, hdrs, MAXH, HEAD_LIMIT, &why), OB_ERR_HEADERS_TOO_LARGE,
             "one endless field line without end of head: 431");
  ob_buf_dispose(&b);
  TAP_EQ_INT(ob_h1_parse_request("", 0, &req, hdrs, MAXH, HEAD_LIMIT, &why), OB_ERR_INCOMPLETE, "empty input");
  TAP_EQ_INT(ob_h1_parse_request(NULL, 0, &req, hdrs, MAXH, HEAD_LIMIT, &why), OB_ERR_INCOMPLETE, "NULL, 0 input");
  TAP_EQ_INT(ob_h1_parse_response(NULL, 0, &resp, hdrs, MAXH, HEAD_LIMIT, OB_IOV_LIT("GET"), &why), OB_ERR_INCOMPLETE,
             "NULL, 0 response input");
}

/* ---------------------------------------------------------------- responses */

static void test_responses(void) {
  static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
  int r = RESP(ok);
  TAP_CHECK(r == LEN(ok) - 5 && resp.status == 200 && iov_is(resp.reason, "OK") && resp.minor_version == 1 &&
                resp.num_headers == 2,
            "200 with Content-Length: head");
  TAP_CHECK(resp.body == OB_H1_BODY_LENGTH && resp.content_length == 5 && resp.keep_alive, "200: LENGTH, keep-alive");
  TAP_CHECK(RESP_HEAD(ok) == LEN(ok) - 5 && resp.body == OB_H1_BODY_NONE && resp.keep_alive,
            "response to HEAD: no body");
  /* Methods are case-sensitive: "head" is not HEAD, its answer has a body
   * (reading it as bodyless left the body on a pooled connection). */
  TAP_CHECK(ob_h1_parse_response(ok, LEN(ok), &resp, hdrs, MAXH, HEAD_LIMIT, OB_IOV_LIT("head"), &why) == LEN(ok) - 5 &&
                resp.body == OB_H1_BODY_LENGTH && resp.content_length == 5,
            "response to \"head\": its Content-Length body");
  TAP_CHECK(!ob_http_response_bodyless(OB_IOV_LIT("head"), 200) && !ob_http_response_bodyless(OB_IOV_LIT("Head"), 200) &&
                !ob_http_response_bodyless(OB_IOV_LIT("HEADX"), 200) && ob_http_response_bodyless(OB_IOV_LIT("HEAD"), 200) &&
                ob_http_response_bodyless(OB_IOV_LIT("GET"), 204) && ob_http_response_bodyless(OB_IOV_LIT("GET"), 304) &&
                ob_http_response_bodyless(OB_IOV_LIT("GET"), 101) && !ob_http_response_bodyless(OB_IOV_LIT("GET"), 200),
            "bodyless: exactly HEAD, 1xx, 204, 304");
  TAP_CHECK(ob_http_method_wants_length(OB_IOV_LIT("POST")) && ob_http_method_wants_length(OB_IOV_LIT("PATCH")) &&
                !ob_http_method_wants_length(OB_IOV_LIT("post")) && !ob_http_method_wants_length(OB_IOV_LIT("GET")),
            "wants Content-Length: exactly POST, PUT, PATCH");

  static const char nc[] = "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n";
  TAP_CHECK(RESP(nc) == LEN(nc) && resp.body == OB_H1_BODY_NONE && resp.keep_alive, "204: no body");
  static const char nm[] = "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n";
  TAP_CHECK(RESP(nm) == LEN(nm) && resp.body == OB_H1_BODY_NONE, "304: no body");
  static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
  TAP_CHECK(RESP(cont) == LEN(cont) && resp.status == 100 && resp.body == OB_H1_BODY_NONE, "100: no body");
  static const char hints[] = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n";
  TAP_CHECK(RESP(hints) == LEN(hints) && resp.body == OB_H1_BODY_NONE, "103: no body");
  static const char ch[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
  TAP_CHECK(RESP(ch) == LEN(ch) && resp.body == OB_H1_BODY_CHUNKED && resp.keep_alive, "chunked response");
  static const char uc[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
  TAP_CHECK(RESP(uc) == LEN(uc) && resp.body == OB_H1_BODY_UNTIL_CLOSE && !resp.keep_alive,
            "no framing: until close, not keep-alive");
  static const char uc204[] = "HTTP/1.1 204 No Content\r\n\r\n";
  TAP_CHECK(RESP(uc204) == LEN(uc204) && resp.keep_alive, "204 without framing stays keep-alive");
  static const char h10[] = "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
  TAP_CHECK(RESP(h10) == LEN(h10) && resp.minor_version == 0 && !resp.keep_alive, "HTTP/1.0 response: close");
  static const char h10ka[] = "HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n";
  TAP_CHECK(RESP(h10ka) == LEN(h10ka) && resp.keep_alive, "HTTP/1.0 response with keep-alive");
  static const char cl_close[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
  TAP_CHECK(RESP(cl_close) == LEN(cl_close) && !resp.keep_alive, "Connection: close response");
  static const char noreason[] = "HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n";
  TAP_CHECK(RESP(noreason) == LEN(noreason) && resp.status == 404 && resp.reason.len == 0,
            "status line without SP and reason (lenient)");
  static const char emptyreason[] = "HTTP/1.1 503 \r\nContent-Length: 0\r\n\r\n";
  TAP_CHECK(RESP(emptyreason) == LEN(emptyreason) && resp.status == 503 && resp.reason.len == 0, "empty reason");
  static const char longreason[] = "HTTP/1.1 418 I'm a\tteapot \xe2\x98\x95\r\nContent-Length: 0\r\n\r\n";
  TAP_CHECK(RESP(longreason) == LEN(longreason) && resp.status == 418, "reason with HTAB and obs-text");

  REJECT_RESP("HTTP/1.1 099 Low\r\n\r\n", "status 099");
  REJECT_RESP("HTTP/1.1 600 High\r\n\r\n", "status 600");
  REJECT_RESP("HTTP/1.1 20x OK\r\n\r\n", "non-digit status");
  REJECT_RESP("HTTP/1.1 2000 OK\r\n\r\n", "four-digit status");
  REJECT_RESP("HTTP/1.1  200 OK\r\n\r\n", "double space before status");
  REJECT_RESP("HTTP/2.0 200 OK\r\n\r\n", "HTTP/2.0 status line");
  REJECT_RESP("HTTP/1.1 200 O\x01K\r\n\r\n", "control character in reason");
  REJECT_RESP("\r\nHTTP/1.1 200 OK\r\n\r\n", "leading empty line before a response");
  REJECT_RESP("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "response CL + TE");
  REJECT_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "response TE gzip");
  REJECT_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "response TE gzip, chunked");
  REJECT_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "response TE chunked twice");
  REJECT_RESP("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0 response with TE");
  REJECT_RESP("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "response differing CL");
  REJECT_RESP("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "response negative CL");
  REJECT_RESP("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "response obs-fold");
  REJECT_RESP("HTTP/1.1 200 OK\nX: a\r\n\r\n", "response bare LF");
  REJECT_RESP("HTTP/1.1 200 OK\r\nX : a\r\n\r\n", "response space before colon");
  REJECT_RESP("HTTP/1.1 304 Not Modified\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
              "CL + TE rejected even when there is no body");
  TAP_EQ_INT(ob_h1_parse_response("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n", 31, &resp, hdrs, 1, HEAD_LIMIT, OB_IOV_LIT("GET"),
                                  &why),
             OB_ERR_HEADERS_TOO_LARGE, "response with too many fields: 431");
}

/* ---------------------------------------------------------------- chunked */

typedef struct decoded {
  int err;      /* 0 or the error */
  size_t used;  /* bytes consumed before done / end / error */
  bool done;
  char data[256];
  size_t data_len;
  bool mixed; /* a call mixed data and framing: must never happen */
} decoded_t;

/* Feed in[0..len) in pieces of at most `piece` bytes (0: all at once). */
static decoded_t decode(const char *in, size_t len, size_t piece) {
  decoded_t o;
  memset(&o, 0, sizeof o);
  ob_h1_chunked_t d;
  ob_h1_chunked_init(&d);
  size_t pos = 0;
  while (!d.done) {
    size_t end = piece && len - pos > piece ? pos + piece : len;
    while (pos < end && !d.done) {
      size_t dl;
      const char *w = NULL;
      int r = ob_h1_chunked_step(&d, in + pos, end - pos, &dl, &w);
      if (r < 0) {
        o.err = r;
        o.used = pos;
        return o;
      }
      if (dl && (size_t)r != dl) o.mixed = true;
      if (dl && o.data_len + dl <= sizeof o.data) memcpy(o.data + o.data_len, in + pos, dl);
      o.data_len += dl;
      pos += (size_t)r;
      if (r == 0) break;
    }
    if (pos >= len) break;
  }
  o.used = pos;
  o.done = d.done;
  return o;
}

#define DEC(lit, piece) decode((lit), sizeof(lit) - 1, (piece))

static void test_chunked(void) {
  static const char body[] = "5\r\nhello\r\n6;name=value\r\n world\r\nA ; x = \"q;s\" ; y\r\n from obl.\r\n"
                             "000\r\n\r\nNEXT";
  decoded_t whole = DEC(body, 0), bytes = DEC(body, 1), threes = DEC(body, 3);
  TAP_CHECK(whole.err == 0 && whole.done && whole.data_len == 21 && memcmp(whole.data, "hello world from obl.", 21) == 0,
            "chunked: whole input decoded");
  TAP_EQ_INT(whole.used, LEN(body) - 4, "chunked: stops right after the last chunk");
  TAP_CHECK(bytes.err == 0 && bytes.done && bytes.used == whole.used && bytes.data_len == whole.data_len &&
                memcmp(bytes.data, whole.data, whole.data_len) == 0,
            "chunked: byte by byte gives the same data");
  TAP_CHECK(threes.done && threes.data_len == whole.data_len && memcmp(threes.data, whole.data, whole.data_len) == 0,
            "chunked: 3-byte pieces give the same data");
  TAP_CHECK(!whole.mixed && !bytes.mixed && !threes.mixed, "chunked: data and framing never mixed in one call");

  static const char trailers[] = "3\r\nabc\r\n0\r\nX-Checksum: 1234\r\nServer-Timing: db;dur=53\r\n\r\n";
  decoded_t t1 = DEC(trailers, 0), t2 = DEC(trailers, 1);
  TAP_CHECK(t1.done && t1.used == sizeof trailers - 1 && t1.data_len == 3, "chunked: trailers consumed");
  TAP_CHECK(t2.done && t2.used == t1.used && t2.data_len == 3, "chunked: trailers byte by byte");

  static const char upper[] = "1F\r\n0123456789012345678901234567890\r\n0\r\n\r\n";
  TAP_CHECK(DEC(upper, 0).done && DEC(upper, 0).data_len == 31, "chunked: upper-case hex size");
  static const char big[] = "7fffffffffffffff\r\n";
  decoded_t bd = DEC(big, 0);
  TAP_CHECK(bd.err == 0 && !bd.done && bd.used == sizeof big - 1, "chunked: 2^63-1 size accepted");

  /* "1;" and 4094 bytes of extension: a size line of exactly 4096 bytes. */
  char line[9000];
  memset(line, 'a', sizeof line);
  memcpy(line, "1;", 2);
  memcpy(line + 4096, "\r\nx\r\n0\r\n\r\n", 10);
  TAP_CHECK(decode(line, 4106, 0).done && decode(line, 4106, 1).done, "chunked: 4096-byte size line accepted");
  memcpy(line + 4096, "a\r\nx\r\n0\r\n\r\n", 11);
  TAP_EQ_INT(decode(line, 4107, 0).err, OB_ERR_PROTOCOL, "chunked: size line over 4096 bytes rejected");
  TAP_EQ_INT(decode(line, 4107, 1).err, OB_ERR_PROTOCOL, "chunked: size line over 4096 rejected byte by byte");
  memset(line, '0', 5000);
  TAP_EQ_INT(decode(line, 5000, 7).err, OB_ERR_PROTOCOL, "chunked: endless leading zeros rejected");
  memcpy(line, "0\r\nX: ", 6);
  memset(line + 6, 'v', 5000);
  TAP_EQ_INT(decode(line, 5006, 0).err, OB_ERR_PROTOCOL, "chunked: trailer line over 4096 bytes rejected");

  ob_buf_t many;
  ob_buf_init(&many);
  ob_buf_append_str(&many, "0\r\n");
  for (int i = 0; i <= MAXH; i++) ob_buf_append_str(&many, "T: 1\r\n");
  ob_buf_append_str(&many, "\r\n");
  TAP_EQ_INT(decode(many.base, many.len, 0).err, OB_ERR_PROTOCOL, "chunked: too many trailer fields rejected");
  ob_buf_dispose(&many);

  struct {
    const char *in;
    const char *name;
  } bad[] = {
      {"x\r\n", "non-hex size"},
      {"\r\n", "empty size"},
      {"0x5\r\nhello\r\n", "0x prefix"},
      {"-5\r\n", "negative size"},
      {"+5\r\n", "signed size"},
      {"5\nhello\r\n", "bare LF after size"},
      {"5\rXhello\r\n", "bare CR after size"},
      {"5 \r\nhello\r\n", "whitespace after size without extension"},
      {"5 5\r\nhello\r\n", "whitespace inside size"},
      {" 5\r\nhello\r\n", "whitespace before size"},
      {"5;a\nhello\r\n", "bare LF in extension"},
      {"5;a\x01\r\nhello\r\n", "control character in extension"},
      {"5\r\nhelloX\r\n", "data not followed by CRLF"},
      {"5\r\nhello\n0\r\n\r\n", "data followed by bare LF"},
      {"5\r\nhello\r\r\n", "data followed by CR CR"},
      {"8000000000000000\r\n", "size of 2^63 overflows"},
      {"10000000000000000\r\n", "size of 2^64 overflows"},
      {"ffffffffffffffffffff\r\n", "huge size overflows"},
      {"0\r\n\n", "bare LF ending the trailer section"},
      {"0\r\n\rX", "bare CR ending the trailer section"},
      {"0\r\n X: 1\r\n\r\n", "obs-fold in trailers"},
      {"0\r\nX: 1\r\n b\r\n\r\n", "continuation line in trailers"},
      {"0\r\nNoColon\r\n\r\n", "trailer without colon"},
      {"0\r\n: v\r\n\r\n", "trailer with empty name"},
      {"0\r\nX : v\r\n\r\n", "trailer with space before colon"},
      {"0\r\nX@: v\r\n\r\n", "trailer with invalid name"},
      {"0\r\nX: a\x7f\r\n\r\n", "trailer with DEL in value"},
      {"0\r\nX: a\nY: b\r\n\r\n", "trailer with bare LF"},
      {"0\r\nX: a\rY: b\r\n\r\n", "trailer with bare CR"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    decoded_t a = decode(bad[i].in, strlen(bad[i].in), 0), b = decode(bad[i].in, strlen(bad[i].in), 1);
    TAP_CHECK(a.err == OB_ERR_PROTOCOL && b.err == OB_ERR_PROTOCOL && !a.done && !b.done, "chunked: %s",
              bad[i].name);
  }
  static const char nul_trailer[] = "0\r\nX: a\0b\r\n\r\n";
  TAP_EQ_INT(DEC(nul_trailer, 0).err, OB_ERR_PROTOCOL, "chunked: NUL in a trailer value");

  /* Contract details. The decoder has state, so every step's result is taken
   * before it is checked (TAP_CHECK evaluates its condition twice on failure). */
  ob_h1_chunked_t d;
  size_t dl = 99;
  const char *w = NULL;
  int r;
  ob_h1_chunked_init(&d);
  r = ob_h1_chunked_step(&d, "", 0, &dl, &w);
  TAP_EQ_INT(r, 0, "chunked: empty input consumes nothing");
  TAP_EQ_INT(dl, 0, "chunked: data_len reset");
  r = ob_h1_chunked_step(&d, "z\r\n", 3, &dl, &w);
  TAP_EQ_INT(r, OB_ERR_PROTOCOL, "chunked: error");
  TAP_CHECK(w != NULL, "chunked: error says why (%s)", w ? w : "");
  r = ob_h1_chunked_step(&d, "5\r\n", 3, &dl, &w);
  TAP_EQ_INT(r, OB_ERR_PROTOCOL, "chunked: errors are sticky");
  ob_h1_chunked_init(&d);
  r = ob_h1_chunked_step(&d, "3\r\nabc\r\n0\r\n\r\n", 13, &dl, &w);
  TAP_CHECK(r == 3 && dl == 0, "chunked: size line alone");
  r = ob_h1_chunked_step(&d, "abc\r\n0\r\n\r\n", 10, &dl, &w);
  TAP_CHECK(r == 3 && dl == 3, "chunked: then data alone");
  r = ob_h1_chunked_step(&d, "\r\n0\r\n\r\nX", 8, &dl, &w);
  TAP_CHECK(r == 7 && dl == 0 && d.done, "chunked: then CRLF, last chunk and end");
  r = ob_h1_chunked_step(&d, "X", 1, &dl, &w);
  TAP_EQ_INT(r, 0, "chunked: nothing consumed once done");
}

/* ---------------------------------------------------------------- serializer */

static void test_serialize(void) {
  ob_buf_t b;
  ob_buf_init(&b);
  ob_h1_append_request_line(&b, OB_IOV_LIT("POST"), OB_IOV_LIT("/v1/chat?x=1"));
  ob_h1_append_header(&b, OB_IOV_LIT("Host"), OB_IOV_LIT("api.example"));
  ob_h1_append_header(&b, OB_IOV_LIT("Content-Length"), OB_IOV_LIT("0"));
  ob_h1_append_header(&b, OB_IOV_LIT("X-Empty"), OB_IOV_LIT(""));
  ob_buf_append(&b, "\r\n", 2);
  static const char want[] = "POST /v1/chat?x=1 HTTP/1.1\r\nHost: api.example\r\nContent-Length: 0\r\nX-Empty: \r\n\r\n";
  TAP_CHECK(b.len == sizeof want - 1 && memcmp(b.base, want, b.len) == 0, "request head bytes");
  TAP_EQ_INT(ob_h1_parse_request(b.base, b.len, &req, hdrs, MAXH, HEAD_LIMIT, &why), (int)b.len,
             "serialized request parses back");

  ob_buf_reset(&b);
  ob_h1_append_status_line(&b, 404);
  TAP_CHECK(b.len == 24 && memcmp(b.base, "HTTP/1.1 404 Not Found\r\n", 24) == 0, "status line bytes");
  ob_buf_reset(&b);
  ob_h1_append_status_line(&b, 299);
  TAP_CHECK(b.len == 22 && memcmp(b.base, "HTTP/1.1 299 Unknown\r\n", 22) == 0, "unknown status line bytes");
  ob_buf_reset(&b);
  ob_h1_append_status_line(&b, 431);
  ob_h1_append_header(&b, OB_IOV_LIT("Connection"), OB_IOV_LIT("close"));
  ob_buf_append(&b, "\r\n", 2);
  static const char want431[] = "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n";
  TAP_CHECK(b.len == sizeof want431 - 1 && memcmp(b.base, want431, b.len) == 0, "431 head bytes");
  TAP_CHECK(ob_h1_parse_response(b.base, b.len, &resp, hdrs, MAXH, HEAD_LIMIT, OB_IOV_LIT("GET"), &why) == (int)b.len &&
                resp.status == 431 && !resp.keep_alive,
            "serialized response parses back");
  ob_buf_dispose(&b);

  TAP_EQ_STR(ob_http_reason(200), "OK", "reason 200");
  TAP_EQ_STR(ob_http_reason(413), "Content Too Large", "reason 413 (RFC 9110 name)");
  TAP_EQ_STR(ob_http_reason(422), "Unprocessable Content", "reason 422");
  TAP_EQ_STR(ob_http_reason(429), "Too Many Requests", "reason 429");
  TAP_EQ_STR(ob_http_reason(502), "Bad Gateway", "reason 502");
  TAP_EQ_STR(ob_http_reason(0), "Unknown", "reason of nonsense");
}

/* ---------------------------------------------------------------- checks */

static void test_checks(void) {
  static const char tchars[] = "!#$%&'*+-.^_`|~";
  int mismatch = -1;
  for (int c = 0; c < 256; c++) {
    char ch = (char)c;
    bool want = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                (c != 0 && strchr(tchars, c) != NULL);
    if (ob_http_is_token(ob_iov(&ch, 1)) != want && mismatch < 0) mismatch = c;
  }
  TAP_EQ_INT(mismatch, -1, "token table matches RFC 9110 tchar for all bytes");
  TAP_CHECK(!ob_http_is_token(OB_IOV_LIT("")), "empty is not a token");

  /* The value and target scans work eight bytes at a time: put every byte at
   * every position of a word, plus the tail, and compare with the rule. */
  char v[21];
  int value_bad = -1, target_bad = -1;
  for (int c = 0; c < 256; c++) {
    for (int pos = 0; pos < 21; pos++) {
      memset(v, 'a', sizeof v);
      v[pos] = (char)c;
      bool want = c == '\t' || (c >= 0x20 && c != 0x7f);
      if (ob_http_is_valid_value(ob_iov(v, sizeof v)) != want && value_bad < 0) value_bad = c * 100 + pos;
      char line[64];
      int n = snprintf(line, sizeof line, "GET /%.*s HTTP/1.1\r\nHost: a\r\n\r\n", (int)sizeof v, v);
      int r = ob_h1_parse_request(line, (size_t)n, &req, hdrs, MAXH, HEAD_LIMIT, &why);
      if (c == 0) r = -1; /* snprintf stops at NUL; the request is cut short */
      want = c > 0x20 && c < 0x7f;
      if ((r > 0) != want && target_bad < 0) target_bad = c * 100 + pos;
    }
  }
  TAP_EQ_INT(value_bad, -1, "field-value scan: every byte at every word position");
  TAP_EQ_INT(target_bad, -1, "request-target scan: every byte at every word position");
  memset(v, '\t', sizeof v);
  TAP_CHECK(ob_http_is_valid_value(ob_iov(v, sizeof v)), "field-value scan: a run of HTAB");
  memset(v, '\xff', sizeof v);
  TAP_CHECK(ob_http_is_valid_value(ob_iov(v, sizeof v)), "field-value scan: a run of obs-text");
  v[20] = '\x7f';
  TAP_CHECK(!ob_http_is_valid_value(ob_iov(v, sizeof v)), "field-value scan: DEL after obs-text");
  TAP_CHECK(ob_http_is_valid_value(OB_IOV_LIT("a\tb \x80\xff~")), "valid value: HTAB, SP, VCHAR, obs-text");
  TAP_CHECK(ob_http_is_valid_value(OB_IOV_LIT("")), "empty value is valid");
  TAP_CHECK(!ob_http_is_valid_value(OB_IOV_LIT("a\rb")) && !ob_http_is_valid_value(OB_IOV_LIT("a\nb")) &&
                !ob_http_is_valid_value(OB_IOV_LIT("a\0b")) && !ob_http_is_valid_value(OB_IOV_LIT("\x7f")),
            "invalid value: CR, LF, NUL, DEL");

  ob_iov_t none = ob_iov(NULL, 0);
  const char *hop[] = {"Connection", "keep-alive", "Proxy-Connection", "TE", "transfer-encoding",
                       "UPGRADE",    "Trailer",    "Proxy-Authenticate", "proxy-authorization"};
  bool all = true;
  for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++) all = all && ob_http_is_hop_by_hop(ob_iov_str(hop[i]), none);
  TAP_CHECK(all, "fixed hop-by-hop names, any case");
  TAP_CHECK(!ob_http_is_hop_by_hop(OB_IOV_LIT("Content-Type"), none), "Content-Type is end-to-end");
  TAP_CHECK(!ob_http_is_hop_by_hop(OB_IOV_LIT("Trailers"), none), "Trailers is not Trailer");
  ob_iov_t conn = OB_IOV_LIT("close, X-Foo ,\tX-Bar,,");
  TAP_CHECK(ob_http_is_hop_by_hop(OB_IOV_LIT("x-foo"), conn) && ob_http_is_hop_by_hop(OB_IOV_LIT("X-BAR"), conn),
            "names listed in Connection are hop-by-hop");
  TAP_CHECK(!ob_http_is_hop_by_hop(OB_IOV_LIT("X-Foo-Bar"), conn) && !ob_http_is_hop_by_hop(OB_IOV_LIT("X"), conn),
            "names not listed in Connection are not");
  TAP_CHECK(!ob_http_is_hop_by_hop(OB_IOV_LIT(""), conn), "empty name never matches an empty list element");
  const ob_http_header_t msg[] = {
      {OB_IOV_LIT("Connection"), OB_IOV_LIT("keep-alive")},
      {OB_IOV_LIT("X-Secret"), OB_IOV_LIT("1")},
      {OB_IOV_LIT("connection"), OB_IOV_LIT("x-secret")},
  };
  TAP_CHECK(ob_http_is_hop_by_hop_in(OB_IOV_LIT("x-secret"), msg, 3) &&
                ob_http_is_hop_by_hop_in(OB_IOV_LIT("Keep-Alive"), msg, 3) &&
                !ob_http_is_hop_by_hop_in(OB_IOV_LIT("x-other"), msg, 3) &&
                !ob_http_is_hop_by_hop_in(OB_IOV_LIT("x-secret"), msg, 2),
            "every Connection field of a message names hop-by-hop fields");
  TAP_CHECK(ob_http_is_valid_target(OB_IOV_LIT("/a/b?c=%C3%A9")) && ob_http_is_valid_target(OB_IOV_LIT("*")) &&
                !ob_http_is_valid_target(OB_IOV_LIT("")) && !ob_http_is_valid_target(OB_IOV_LIT("/\xc3\xa9")) &&
                !ob_http_is_valid_target(OB_IOV_LIT("/a b")) && !ob_http_is_valid_target(OB_IOV_LIT("/a\x7f")) &&
                !ob_http_is_valid_target(OB_IOV_LIT("/0123456789abcdef\x80")),
            "request target: visible ASCII only, as the parser");
}

static void test_grpc_timeout(void) {
  uint64_t us = 0;
  TAP_CHECK(ob_http_parse_grpc_timeout(OB_IOV_LIT("1H"), &us) && us == 3600000000ull, "grpc-timeout hours");
  TAP_CHECK(ob_http_parse_grpc_timeout(OB_IOV_LIT("2M"), &us) && us == 120000000ull, "grpc-timeout minutes");
  TAP_CHECK(ob_http_parse_grpc_timeout(OB_IOV_LIT("3S"), &us) && us == 3000000ull, "grpc-timeout seconds");
  TAP_CHECK(ob_http_parse_grpc_timeout(OB_IOV_LIT("250m"), &us) && us == 250000ull, "grpc-timeout millis");
  TAP_CHECK(ob_http_parse_grpc_timeout(OB_IOV_LIT("99999999u"), &us) && us == 99999999ull, "grpc-timeout micros, 8 digits");
  TAP_CHECK(ob_http_parse_grpc_timeout(OB_IOV_LIT("1n"), &us) && us == 1, "grpc-timeout nanos round up");
  TAP_CHECK(!ob_http_parse_grpc_timeout(OB_IOV_LIT("123456789S"), &us), "grpc-timeout more than 8 digits");
  TAP_CHECK(!ob_http_parse_grpc_timeout(OB_IOV_LIT("S"), &us), "grpc-timeout no digits");
  TAP_CHECK(!ob_http_parse_grpc_timeout(OB_IOV_LIT("10s"), &us), "grpc-timeout unknown unit");
  TAP_CHECK(!ob_http_parse_grpc_timeout(OB_IOV_LIT("1 S"), &us), "grpc-timeout space");
}

static void test_grpc_wire(void) {
  char t[16];
  ob_grpc_format_timeout(250000, t);
  TAP_EQ_STR(t, "250000u", "format: 250 ms in micros");
  ob_grpc_format_timeout(100000000, t);
  TAP_EQ_STR(t, "100000m", "format: 100 s does not fit 8 micro digits, so millis");
  ob_grpc_format_timeout(100000000001ull, t);
  TAP_EQ_STR(t, "100001S", "format: rounds up, never gives more time than left");
  ob_buf_t b;
  ob_buf_init(&b);
  ob_grpc_percent_encode(&b, OB_IOV_LIT("caf\xc3\xa9 100% ok"));
  ob_buf_append(&b, "", 1);
  TAP_EQ_STR(b.base, "caf%C3%A9 100%25 ok", "grpc-message percent-encoding");
  ob_buf_reset(&b);
  ob_grpc_append_frame(&b, OB_IOV_LIT("hi"));
  ob_grpc_append_frame(&b, OB_IOV_LIT(""));
  TAP_EQ_INT(b.len, 12, "two frames: 5 + 2 + 5 bytes");
  ob_grpc_scan_t sc;
  ob_grpc_scan_init(&sc, 0);
  ob_grpc_scan_feed(&sc, b.base, 3);
  TAP_CHECK(sc.messages == 0 && !ob_grpc_scan_at_boundary(&sc), "scan: mid-prefix is not a boundary");
  ob_grpc_scan_feed(&sc, b.base + 3, b.len - 3);
  TAP_CHECK(sc.messages == 2 && sc.payload_bytes == 2 && ob_grpc_scan_at_boundary(&sc), "scan: two messages");
  ob_grpc_scan_init(&sc, 1);
  ob_grpc_scan_feed(&sc, b.base, b.len);
  TAP_CHECK(sc.bad, "scan: a message above max_message is bad");
  ob_iov_t m;
  TAP_EQ_INT(ob_grpc_single_message(ob_iov(b.base, 7), &m), 1, "unary body: one message");
  TAP_CHECK(m.len == 2 && memcmp(m.base, "hi", 2) == 0, "unary body: its payload");
  TAP_EQ_INT(ob_grpc_single_message(ob_buf_iov(&b), &m), -1, "unary body: two messages are malformed");
  /* HealthCheckRequest{service: "svc"} with an unknown varint field 2 first. */
  ob_iov_t f;
  TAP_EQ_INT(ob_pb_find_bytes(OB_IOV_LIT("\x10\x96\x01\x0a\x03svc"), 1, &f), 1, "protobuf: field 1 found");
  TAP_CHECK(f.len == 3 && memcmp(f.base, "svc", 3) == 0, "protobuf: field 1 value");
  TAP_EQ_INT(ob_pb_find_bytes(OB_IOV_LIT(""), 1, &f), 0, "protobuf: empty message, field absent");
  TAP_EQ_INT(ob_pb_find_bytes(OB_IOV_LIT("\x0a\x09svc"), 1, &f), -1, "protobuf: length past the end");
  ob_buf_dispose(&b);
}

int main(void) {
  test_grpc_timeout();
  test_grpc_wire();
  test_valid_requests();
  test_incomplete();
  test_smuggling();
  test_limits();
  test_responses();
  test_chunked();
  test_serialize();
  test_checks();
  return tap_done();
}
