/*
 * Unit tests for the pure half of src/cluster (cluster_reply.c): the
 * argument builder (integers, "\0"-joined pairs, growth, reset), the check
 * of cluster.lua's integer answers (which shapes pass, which do not), the
 * info parser on good and malformed replies, and counter lookups by
 * "\0"-joined names. Replies are built the way the link gets them: RESP
 * text decoded by hiredis's reader. The I/O half (cluster.c) and the Lua
 * scheduler are tested against a real redis-server by
 * tests/integration/test_cluster_lua.mjs.
 */
#include "cluster.h"
#include "tap.h"

#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* ---------------------------------------------------------------- helpers */

/* The one reply in s[0..n) as hiredis's reader decodes it (NULL if the
 * bytes are not exactly one complete reply). */
static redisReply *decode(const char *s, size_t n) {
  redisReader *rd = redisReaderCreate();
  void *r = NULL, *extra = NULL;
  if (redisReaderFeed(rd, s, n) != REDIS_OK || redisReaderGetReply(rd, &r) != REDIS_OK) r = NULL;
  if (r && (redisReaderGetReply(rd, &extra) != REDIS_OK || extra)) {
    freeReplyObject(r);
    freeReplyObject(extra);
    r = NULL;
  }
  redisReaderFree(rd);
  return r;
}
#define DECODE(lit) decode((lit), sizeof(lit) - 1)

/* RESP writers, so no bulk length is counted by hand. */
static void w_arr(ob_buf_t *b, size_t n) { ob_buf_printf(b, "*%zu\r\n", n); }
static void w_int(ob_buf_t *b, long long v) { ob_buf_printf(b, ":%lld\r\n", v); }
static void w_mem(ob_buf_t *b, const char *p, size_t n) {
  ob_buf_printf(b, "$%zu\r\n", n);
  ob_buf_append(b, p, n);
  ob_buf_append(b, "\r\n", 2);
}
static void w_str(ob_buf_t *b, const char *s) { w_mem(b, s, strlen(s)); }
#define W_LIT(b, lit) w_mem((b), (lit), sizeof(lit) - 1)

static redisReply *decode_buf(ob_buf_t *b) {
  redisReply *r = decode(b->base, b->len);
  ob_buf_dispose(b);
  return r;
}

static ob_iov_t arg(const ob_cluster_args_t *a, size_t i) {
  size_t start = i ? a->ends[i - 1] : 0;
  return ob_iov(a->bytes.base + start, a->ends[i] - start);
}

static bool arg_is(const ob_cluster_args_t *a, size_t i, const char *p, size_t n) {
  ob_iov_t v = arg(a, i);
  return i < a->argc && v.len == n && memcmp(v.base, p, n) == 0;
}
#define ARG_IS(a, i, lit) arg_is((a), (i), (lit), sizeof(lit) - 1)

static bool info_zeroed(const ob_cluster_info_t *in) {
  return !in->replicas && !in->num_replicas && !in->counter_names && !in->counter_values && !in->num_counters &&
         !in->names_buf;
}

/* ---------------------------------------------------------------- arguments */

static void test_args(void) {
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  TAP_EQ_INT(a.argc, 0, "args: empty after init");
  ob_cluster_args_str(&a, "admit");
  ob_cluster_args_u64(&a, 0);
  ob_cluster_args_u64(&a, UINT64_MAX);
  ob_cluster_args_i64(&a, -1);
  ob_cluster_args_i64(&a, INT64_MIN);
  ob_cluster_args_i64(&a, INT64_MAX);
  ob_cluster_args_pair(&a, "t", "alice");
  ob_cluster_args_pair(&a, "p", "");
  ob_cluster_args_pair(&a, "", "x");
  ob_cluster_args_str(&a, "");
  ob_cluster_args_mem(&a, "a\0b", 3);
  TAP_EQ_INT(a.argc, 11, "args: 11 arguments");
  TAP_CHECK(ARG_IS(&a, 0, "admit"), "args: a string");
  TAP_CHECK(ARG_IS(&a, 1, "0"), "args: u64 0");
  TAP_CHECK(ARG_IS(&a, 2, "18446744073709551615"), "args: u64 max");
  TAP_CHECK(ARG_IS(&a, 3, "-1"), "args: i64 -1");
  TAP_CHECK(ARG_IS(&a, 4, "-9223372036854775808"), "args: i64 min");
  TAP_CHECK(ARG_IS(&a, 5, "9223372036854775807"), "args: i64 max");
  TAP_CHECK(ARG_IS(&a, 6, "t\0alice"), "args: a pair is kind NUL name (7 bytes)");
  TAP_CHECK(ARG_IS(&a, 7, "p\0"), "args: a pair with an empty name keeps its NUL");
  TAP_CHECK(ARG_IS(&a, 8, "\0x"), "args: a pair with an empty kind");
  TAP_CHECK(ARG_IS(&a, 9, ""), "args: an empty argument has length 0");
  TAP_CHECK(ARG_IS(&a, 10, "a\0b"), "args: bytes with a NUL are kept whole");
  TAP_EQ_INT(a.bytes.len, a.ends[10], "args: the last end is the byte count");

  ob_cluster_args_reset(&a);
  TAP_EQ_INT(a.argc, 0, "args: reset empties the list");
  TAP_EQ_INT(a.bytes.len, 0, "args: reset empties the bytes");
  ob_cluster_args_pair(&a, "tq", "bob");
  TAP_CHECK(ARG_IS(&a, 0, "tq\0bob"), "args: a pair first after a reset");

  /* growth past the first 16 ends, the buffer past its first 256 bytes */
  ob_cluster_args_reset(&a);
  char big[300];
  memset(big, 'z', sizeof big);
  bool ok = true;
  for (int i = 0; i < 100; i++) {
    ob_cluster_args_u64(&a, (uint64_t)i * 1000);
    ob_cluster_args_pair(&a, "s", "tenant");
  }
  ob_cluster_args_mem(&a, big, sizeof big);
  for (int i = 0; i < 100 && ok; i++) {
    char want[32];
    int n = snprintf(want, sizeof want, "%d", i * 1000);
    ok = arg_is(&a, 2 * (size_t)i, want, (size_t)n) && ARG_IS(&a, 2 * (size_t)i + 1, "s\0tenant");
  }
  TAP_CHECK(ok && a.argc == 201, "args: 201 arguments, each where it was put");
  TAP_CHECK(arg_is(&a, 200, big, sizeof big), "args: a 300-byte argument");
  ob_cluster_args_dispose(&a);
  TAP_CHECK(a.argc == 0 && a.cap == 0 && a.ends == NULL, "args: dispose empties");
  ob_cluster_args_dispose(&a);
  TAP_CHECK(a.argc == 0, "args: dispose twice is harmless");
}

/* ---------------------------------------------------------------- integer answers */

static void test_reply_ints(void) {
  int64_t out[8];
  size_t n = 99;
  redisReply *r = DECODE("*4\r\n:0\r\n:0\r\n:-1\r\n:-1\r\n");
  TAP_CHECK(r && ob_cluster_reply_ints(r, out, 8, &n), "ints: the admit answer passes");
  TAP_CHECK(n == 4 && out[0] == 0 && out[1] == 0 && out[2] == -1 && out[3] == -1, "ints: its four values");
  n = 99;
  TAP_CHECK(r && ob_cluster_reply_ints(r, out, 4, &n) && n == 4, "ints: exactly max elements pass");
  n = 99;
  TAP_CHECK(r && !ob_cluster_reply_ints(r, out, 3, &n) && n == 0, "ints: one more than max fails, n 0");
  freeReplyObject(r);

  r = DECODE("*2\r\n:9223372036854775807\r\n:-9223372036854775808\r\n");
  TAP_CHECK(r && ob_cluster_reply_ints(r, out, 8, &n) && n == 2 && out[0] == INT64_MAX && out[1] == INT64_MIN,
            "ints: int64 extremes");
  freeReplyObject(r);

  r = DECODE("*8\r\n:1\r\n:2\r\n:3\r\n:4\r\n:5\r\n:6\r\n:7\r\n:8\r\n");
  TAP_CHECK(r && ob_cluster_reply_ints(r, out, 8, &n) && n == 8 && out[7] == 8, "ints: 8 of 8");
  freeReplyObject(r);
  r = DECODE("*9\r\n:1\r\n:2\r\n:3\r\n:4\r\n:5\r\n:6\r\n:7\r\n:8\r\n:9\r\n");
  TAP_CHECK(r && !ob_cluster_reply_ints(r, out, 8, &n) && n == 0, "ints: 9 do not fit in 8");
  freeReplyObject(r);

  r = DECODE("*0\r\n");
  n = 99;
  TAP_CHECK(r && ob_cluster_reply_ints(r, out, 8, &n) && n == 0, "ints: an empty array passes with n 0");
  freeReplyObject(r);

  static const struct {
    const char *resp;
    size_t len;
    const char *what;
  } bad[] = {
#define BAD(lit, what) {lit, sizeof(lit) - 1, what}
    BAD(":1\r\n", "ints: a bare integer fails"),
    BAD("-ERR obleth: unknown operation x\r\n", "ints: an error reply fails"),
    BAD("-NOSCRIPT No matching script\r\n", "ints: NOSCRIPT fails"),
    BAD("+OK\r\n", "ints: a status fails"),
    BAD("$1\r\n1\r\n", "ints: a bulk string fails"),
    BAD("$-1\r\n", "ints: a nil fails"),
    BAD("*-1\r\n", "ints: a nil array fails"),
    BAD("*2\r\n:0\r\n$1\r\n1\r\n", "ints: a bulk string element fails"),
    BAD("*2\r\n:0\r\n$-1\r\n", "ints: a nil element fails"),
    BAD("*2\r\n:0\r\n+OK\r\n", "ints: a status element fails"),
    BAD("*2\r\n:0\r\n-ERR x\r\n", "ints: an error element fails"),
    BAD("*2\r\n*1\r\n:1\r\n:2\r\n", "ints: a nested array fails"),
    BAD("*2\r\n:7\r\n*0\r\n", "ints: an empty nested array fails"),
#undef BAD
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    r = decode(bad[i].resp, bad[i].len);
    n = 99;
    bool ok = ob_cluster_reply_ints(r, out, 8, &n);
    TAP_CHECK(r && !ok && n == 0, "%s", bad[i].what);
    freeReplyObject(r);
  }
  n = 99;
  TAP_CHECK(!ob_cluster_reply_ints(NULL, out, 8, &n) && n == 0, "ints: NULL fails");
}

/* ---------------------------------------------------------------- info */

/* What cluster.lua's info answers for a fleet of two: r1 holds slots in
 * two pools, r2 none; counters with "\0"-joined names, as HGETALL gives
 * them (bulk strings). */
static redisReply *good_info(void) {
  ob_buf_t b;
  ob_buf_init(&b);
  w_arr(&b, 2);
  w_arr(&b, 2);
  w_arr(&b, 4), w_str(&b, "r1"), w_int(&b, 12), w_str(&b, "d41d8c"), w_arr(&b, 4);
  w_str(&b, "default"), w_str(&b, "2"), w_str(&b, "big"), w_str(&b, "1");
  w_arr(&b, 4), w_str(&b, "host:4242"), w_int(&b, 480), w_str(&b, "d41d8c"), w_arr(&b, 0);
  w_arr(&b, 20);
  w_str(&b, "a"), w_str(&b, "3");
  w_str(&b, "q"), w_str(&b, "2");
  W_LIT(&b, "p\0default"), w_str(&b, "2");
  W_LIT(&b, "p\0big"), w_str(&b, "1");
  W_LIT(&b, "pq\0default"), w_str(&b, "2");
  W_LIT(&b, "t\0alice"), w_str(&b, "2");
  W_LIT(&b, "tq\0bob"), w_str(&b, "2");
  W_LIT(&b, "s\0alice"), w_str(&b, "-1");
  W_LIT(&b, "t\0"), w_str(&b, "5");
  W_LIT(&b, "t\0alice"), w_str(&b, "99"); /* a second field of the same name: the first wins */
  return decode_buf(&b);
}

static void test_info_good(void) {
  redisReply *r = good_info();
  ob_cluster_info_t in;
  TAP_CHECK(r && ob_cluster_info_parse(r, &in), "info: the info answer parses");
  freeReplyObject(r); /* everything parsed is a copy */
  TAP_EQ_INT(in.num_replicas, 2, "info: two replicas");
  TAP_EQ_STR(in.replicas[0].id, "r1", "info: first id");
  TAP_EQ_INT(in.replicas[0].age_ms, 12, "info: first age");
  TAP_EQ_STR(in.replicas[0].digest, "d41d8c", "info: first digest");
  TAP_EQ_INT(in.replicas[0].num_pools, 2, "info: first holds two pools");
  TAP_EQ_STR(in.replicas[0].pools[0], "default", "info: pool 0 name");
  TAP_EQ_INT(in.replicas[0].held[0], 2, "info: pool 0 held");
  TAP_EQ_STR(in.replicas[0].pools[1], "big", "info: pool 1 name");
  TAP_EQ_INT(in.replicas[0].held[1], 1, "info: pool 1 held");
  TAP_EQ_STR(in.replicas[1].id, "host:4242", "info: second id");
  TAP_EQ_INT(in.replicas[1].age_ms, 480, "info: second age");
  TAP_EQ_INT(in.replicas[1].num_pools, 0, "info: second holds nothing");
  TAP_EQ_INT(in.num_counters, 10, "info: ten counters");
  TAP_CHECK(in.counter_names[2].len == 9 && memcmp(in.counter_names[2].base, "p\0default", 9) == 0,
            "info: a counter name keeps its NUL and its length");

  TAP_EQ_INT(ob_cluster_info_counter(&in, "a", NULL), 3, "counter: a");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "q", NULL), 2, "counter: q");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "p", "default"), 2, "counter: p default");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "p", "big"), 1, "counter: p big");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "pq", "default"), 2, "counter: pq default");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "t", "alice"), 2, "counter: t alice (the first of two fields)");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "tq", "bob"), 2, "counter: tq bob");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "s", "alice"), -1, "counter: a negative value");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "t", ""), 5, "counter: an empty name");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "t", "bob"), 0, "counter: absent name is 0");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "t", "alic"), 0, "counter: a prefix of a name is not it");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "t", "alicee"), 0, "counter: a longer name is not it");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "ta", "lice"), 0, "counter: the NUL is where it is (ta\\0lice)");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "tq", "alice"), 0, "counter: another kind is not it");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "p", NULL), 0, "counter: kind p alone is not p\\0<pool>");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "", "default"), 0, "counter: empty kind");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "pq", NULL), 0, "counter: pq alone absent");
  ob_cluster_info_dispose(&in);
  TAP_CHECK(info_zeroed(&in), "info: dispose zeroes");
  ob_cluster_info_dispose(&in);
  TAP_CHECK(info_zeroed(&in), "info: dispose twice is harmless");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "a", NULL), 0, "counter: none in an empty info");

  /* idle fleet; integers where HGETALL would give strings; status strings */
  ob_buf_t b;
  r = DECODE("*2\r\n*0\r\n*0\r\n");
  TAP_CHECK(r && ob_cluster_info_parse(r, &in) && in.num_replicas == 0 && in.num_counters == 0,
            "info: an idle fleet parses, empty");
  ob_cluster_info_dispose(&in);
  freeReplyObject(r);
  r = DECODE("*2\r\n*1\r\n*4\r\n+r1\r\n:-3\r\n+\r\n*2\r\n+p\r\n:7\r\n*4\r\n+a\r\n:1\r\n$2\r\nq\0\r\n:-4\r\n");
  TAP_CHECK(r && ob_cluster_info_parse(r, &in), "info: integers and status strings parse");
  TAP_CHECK(in.num_replicas == 1 && in.replicas[0].age_ms == -3 && strcmp(in.replicas[0].digest, "") == 0 &&
                in.replicas[0].held[0] == 7 && strcmp(in.replicas[0].pools[0], "p") == 0,
            "info: their values");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "q", ""), -4, "counter: q\\0 (empty name) from an integer");
  ob_cluster_info_dispose(&in);
  freeReplyObject(r);

  /* numbers at the edges of int64 */
  ob_buf_init(&b);
  w_arr(&b, 2), w_arr(&b, 0), w_arr(&b, 6);
  w_str(&b, "a"), w_str(&b, "9223372036854775807");
  w_str(&b, "q"), w_str(&b, "-9223372036854775807");
  w_str(&b, "z"), w_str(&b, "-0");
  r = decode_buf(&b);
  TAP_CHECK(r && ob_cluster_info_parse(r, &in), "info: int64 edges parse");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "a", NULL), INT64_MAX, "counter: INT64_MAX");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "q", NULL), -INT64_MAX, "counter: -INT64_MAX");
  TAP_EQ_INT(ob_cluster_info_counter(&in, "z", NULL), 0, "counter: -0 is 0");
  ob_cluster_info_dispose(&in);
  freeReplyObject(r);
}

/* A reply in the info shape with one thing wrong: which part, and how. */
enum { BAD_NONE, BAD_AGE, BAD_COUNTER, BAD_HELD, BAD_ID_NUL, BAD_DIGEST_NUL, BAD_POOL_NUL };

static redisReply *info_with(int what, const char *value) {
  ob_buf_t b;
  ob_buf_init(&b);
  w_arr(&b, 2);
  w_arr(&b, 2);
  /* a good first replica, so a failure must unwind what it parsed */
  w_arr(&b, 4), w_str(&b, "r0"), w_int(&b, 1), w_str(&b, "d"), w_arr(&b, 2), w_str(&b, "default"), w_str(&b, "1");
  w_arr(&b, 4);
  if (what == BAD_ID_NUL) W_LIT(&b, "r\0x"); else w_str(&b, "r1");
  if (what == BAD_AGE) w_str(&b, value); else w_int(&b, 5);
  if (what == BAD_DIGEST_NUL) W_LIT(&b, "d\0x"); else w_str(&b, "d");
  w_arr(&b, 4);
  w_str(&b, "default"), w_str(&b, "1");
  if (what == BAD_POOL_NUL) W_LIT(&b, "b\0g"); else w_str(&b, "big");
  w_str(&b, what == BAD_HELD ? value : "2");
  w_arr(&b, 4);
  w_str(&b, "a"), w_str(&b, "1");
  W_LIT(&b, "t\0x"), w_str(&b, what == BAD_COUNTER ? value : "2");
  return decode_buf(&b);
}

static void expect_bad(redisReply *r, const char *what) {
  ob_cluster_info_t in;
  memset(&in, 0xa5, sizeof in);
  bool ok = r && !ob_cluster_info_parse(r, &in);
  TAP_CHECK(ok && info_zeroed(&in), "%s", what);
  freeReplyObject(r);
}

static void test_info_malformed(void) {
  ob_cluster_info_t in;
  redisReply *r = info_with(BAD_NONE, NULL);
  TAP_CHECK(r && ob_cluster_info_parse(r, &in) && in.num_replicas == 2 && in.num_counters == 2,
            "info: the template parses when nothing is wrong");
  ob_cluster_info_dispose(&in);
  freeReplyObject(r);

  static const char *const not_numbers[] = {"", "-", "+5", "1e3", " 1", "1 ", "0x10", "abc", "1.5", "--1",
                                            "9223372036854775808", "99999999999999999999",
                                            "184467440737095516160"};
  static const char *const where[] = {"age", "counter", "held"};
  static const int kinds[] = {BAD_AGE, BAD_COUNTER, BAD_HELD};
  for (size_t k = 0; k < 3; k++)
    for (size_t i = 0; i < sizeof not_numbers / sizeof not_numbers[0]; i++) {
      char what[96];
      snprintf(what, sizeof what, "info: %s \"%s\" is not a number", where[k], not_numbers[i]);
      expect_bad(info_with(kinds[k], not_numbers[i]), what);
    }
  /* a NUL inside a number */
  ob_buf_t b;
  ob_buf_init(&b);
  w_arr(&b, 2), w_arr(&b, 0), w_arr(&b, 2), w_str(&b, "a"), W_LIT(&b, "1\0002");
  expect_bad(decode_buf(&b), "info: a counter value with a NUL is not a number");

  expect_bad(info_with(BAD_ID_NUL, NULL), "info: a replica id with a NUL fails");
  expect_bad(info_with(BAD_DIGEST_NUL, NULL), "info: a digest with a NUL fails");
  expect_bad(info_with(BAD_POOL_NUL, NULL), "info: a pool name with a NUL fails");

  static const struct {
    const char *resp;
    size_t len;
    const char *what;
  } bad[] = {
#define BAD(lit, what) {lit, sizeof(lit) - 1, what}
    BAD("-ERR x\r\n", "info: an error reply fails"),
    BAD("$-1\r\n", "info: a nil fails"),
    BAD("*-1\r\n", "info: a nil array fails"),
    BAD(":1\r\n", "info: an integer fails"),
    BAD("*0\r\n", "info: an empty array fails"),
    BAD("*1\r\n*0\r\n", "info: one element fails"),
    BAD("*3\r\n*0\r\n*0\r\n*0\r\n", "info: three elements fail"),
    BAD("*2\r\n:1\r\n*0\r\n", "info: replicas not an array"),
    BAD("*2\r\n*0\r\n$-1\r\n", "info: counters nil"),
    BAD("*2\r\n*0\r\n*1\r\n$1\r\na\r\n", "info: an odd counter list fails"),
    BAD("*2\r\n*0\r\n*2\r\n$-1\r\n$1\r\n1\r\n", "info: a nil counter name fails"),
    BAD("*2\r\n*0\r\n*2\r\n:1\r\n$1\r\n1\r\n", "info: an integer counter name fails"),
    BAD("*2\r\n*0\r\n*2\r\n$1\r\na\r\n$-1\r\n", "info: a nil counter value fails"),
    BAD("*2\r\n*0\r\n*2\r\n$1\r\na\r\n-ERR x\r\n", "info: an error counter value fails"),
    BAD("*2\r\n*0\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n", "info: an array counter value fails"),
    BAD("*2\r\n*1\r\n*3\r\n$2\r\nr1\r\n:1\r\n$1\r\nd\r\n*0\r\n", "info: a replica of three fields fails"),
    BAD("*2\r\n*1\r\n*5\r\n$2\r\nr1\r\n:1\r\n$1\r\nd\r\n*0\r\n:1\r\n*0\r\n", "info: a replica of five fields fails"),
    BAD("*2\r\n*1\r\n$2\r\nr1\r\n*0\r\n", "info: a replica not an array fails"),
    BAD("*2\r\n*1\r\n*4\r\n$-1\r\n:1\r\n$1\r\nd\r\n*0\r\n*0\r\n", "info: a nil id fails"),
    BAD("*2\r\n*1\r\n*4\r\n:7\r\n:1\r\n$1\r\nd\r\n*0\r\n*0\r\n", "info: an integer id fails"),
    BAD("*2\r\n*1\r\n*4\r\n$2\r\nr1\r\n:1\r\n$-1\r\n*0\r\n*0\r\n", "info: a nil digest fails"),
    BAD("*2\r\n*1\r\n*4\r\n$2\r\nr1\r\n$-1\r\n$1\r\nd\r\n*0\r\n*0\r\n", "info: a nil age fails"),
    BAD("*2\r\n*1\r\n*4\r\n$2\r\nr1\r\n:1\r\n$1\r\nd\r\n$-1\r\n*0\r\n", "info: held nil fails"),
    BAD("*2\r\n*1\r\n*4\r\n$2\r\nr1\r\n:1\r\n$1\r\nd\r\n*1\r\n$1\r\np\r\n*0\r\n", "info: an odd held list fails"),
    BAD("*2\r\n*1\r\n*4\r\n$2\r\nr1\r\n:1\r\n$1\r\nd\r\n*2\r\n:1\r\n:1\r\n*0\r\n",
        "info: an integer pool name fails"),
    BAD("*2\r\n*1\r\n*4\r\n$2\r\nr1\r\n:1\r\n$1\r\nd\r\n*2\r\n$1\r\np\r\n$-1\r\n*0\r\n", "info: a nil held count fails"),
#undef BAD
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) expect_bad(decode(bad[i].resp, bad[i].len), bad[i].what);
  memset(&in, 0xa5, sizeof in);
  TAP_CHECK(!ob_cluster_info_parse(NULL, &in) && info_zeroed(&in), "info: NULL fails, zeroed");

  /* the budget op's answer, {{used, reserved}, ...}, is not info */
  expect_bad(DECODE("*2\r\n*2\r\n:10\r\n:2\r\n*2\r\n:0\r\n:0\r\n"), "info: the budget answer is not info");
}

int main(void) {
  test_args();
  test_reply_ints();
  test_info_good();
  test_info_malformed();
  return tap_done();
}
