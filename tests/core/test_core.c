/* Unit tests for src/core: slices, buffers, JSON string escaping, arena,
 * background thread. */
#include "core.h"
#include "tap.h"

#include <stdlib.h>
#include <time.h>

static void test_iov(void) {
  TAP_CHECK(ob_iov_eq_nocase(OB_IOV_LIT("Content-Length"), OB_IOV_LIT("content-length")), "nocase equal");
  TAP_CHECK(!ob_iov_eq_nocase(OB_IOV_LIT("abc"), OB_IOV_LIT("abd")), "nocase differs");
  ob_iov_t t = ob_iov_trim(OB_IOV_LIT(" \t x y \t"));
  TAP_CHECK(ob_iov_eq(t, OB_IOV_LIT("x y")), "trim OWS");
  uint64_t v = 0;
  TAP_CHECK(ob_iov_to_u64(OB_IOV_LIT("18446744073709551615"), &v) && v == UINT64_MAX, "u64 max");
  TAP_CHECK(!ob_iov_to_u64(OB_IOV_LIT("18446744073709551616"), &v), "u64 overflow rejected");
  TAP_CHECK(!ob_iov_to_u64(OB_IOV_LIT("+1"), &v), "sign rejected");
  TAP_CHECK(!ob_iov_to_u64(OB_IOV_LIT(""), &v), "empty rejected");
  TAP_CHECK(ob_iov_starts_with(OB_IOV_LIT("/v1/chat"), OB_IOV_LIT("/v1/")), "prefix");
}

static void test_buf(void) {
  ob_buf_t b;
  ob_buf_init(&b);
  for (int i = 0; i < 1000; i++) ob_buf_printf(&b, "%d,", i);
  TAP_CHECK(b.len == 3890, "printf appends (%zu)", b.len);
  ob_buf_consume(&b, 2);
  TAP_CHECK(memcmp(b.base, "1,2,", 4) == 0, "consume keeps the rest");
  ob_buf_reset(&b);
  ob_buf_append_json_str(&b, OB_IOV_LIT("a\"b\\c\n\x01"));
  TAP_CHECK(b.len == 17 && memcmp(b.base, "\"a\\\"b\\\\c\\n\\u0001\"", 17) == 0, "json escaping");
  ob_buf_reset(&b);
  char big[600];
  memset(big, 'x', sizeof big);
  ob_buf_printf(&b, "%.*s", (int)sizeof big, big);
  TAP_CHECK(b.len == sizeof big, "printf longer than the scratch buffer");
  ob_buf_dispose(&b);
}

static void test_arena(void) {
  ob_arena_t a;
  ob_arena_init(&a, 64);
  char *s = ob_arena_strdup(&a, "hello");
  void *big = ob_arena_alloc(&a, 1000);
  memset(big, 1, 1000);
  char *t = ob_arena_strdup(&a, "world");
  TAP_CHECK(strcmp(s, "hello") == 0 && strcmp(t, "world") == 0, "arena strings survive later allocations");
  TAP_CHECK(((uintptr_t)big & 15) == 0, "arena alignment");
  ob_arena_dispose(&a);
}

/* ob_json_str_run against a byte-by-byte scan: every special byte (and
 * some that are not: 0x20, 0x7f, 0x80, 0xff) at every position of strings
 * up to 40 bytes, so each 8-byte step and the tail are covered. */
static void test_json_str_run(void) {
  static const unsigned char probes[] = {'"', '\\', 0x00, 0x01, 0x1f, 0x20, 'a', 0x7f, 0x80, 0xa2, 0xdc, 0xff};
  int bad = 0;
  char buf[48];
  for (size_t len = 0; len <= 40; len++)
    for (size_t pos = 0; pos < (len ? len : 1); pos++)
      for (size_t k = 0; k < sizeof probes; k++) {
        memset(buf, 'x', sizeof buf);
        if (len) buf[pos] = (char)probes[k];
        const char *want = buf;
        while (want < buf + len && *want != '"' && *want != '\\' && (unsigned char)*want >= 0x20) want++;
        if (ob_json_str_run(buf, buf + len) != want) bad++;
      }
  TAP_EQ_INT(bad, 0, "json_str_run: stops at the first quote, backslash or control byte, never past the end");
}

/* The strict walk and decoded key comparison (core_json.c). */
static int check(const char *json, int levels, const char **why) {
  return ob_json_check(ob_iov_str(json), levels, NULL, NULL, why);
}

static void test_json_check(void) {
  TAP_CHECK(ob_json_str_cmp(OB_IOV_LIT("model"), OB_IOV_LIT("mod\\u0065l")) == 0 &&
                ob_json_str_cmp(OB_IOV_LIT("\\u006D\\u006f\\u0064\\u0065\\u006c"), OB_IOV_LIT("model")) == 0,
            "str_cmp: escaped letters equal their plain spelling (either hex case)");
  TAP_CHECK(ob_json_str_cmp(OB_IOV_LIT("\\u00e9"), OB_IOV_LIT("\xc3\xa9")) == 0 &&
                ob_json_str_cmp(OB_IOV_LIT("\\ud83d\\ude00"), OB_IOV_LIT("\xf0\x9f\x98\x80")) == 0 &&
                ob_json_str_cmp(OB_IOV_LIT("a\\/b\\n"), OB_IOV_LIT("a/b\n")) == 0,
            "str_cmp: two- and four-byte UTF-8, a surrogate pair, short escapes");
  TAP_CHECK(ob_json_str_cmp(OB_IOV_LIT("model"), OB_IOV_LIT("model\\u0000")) < 0 &&
                ob_json_str_cmp(OB_IOV_LIT("b"), OB_IOV_LIT("\\u0061")) > 0 &&
                ob_json_str_cmp(OB_IOV_LIT("\\\\u0065"), OB_IOV_LIT("e")) != 0,
            "str_cmp: a prefix sorts first, order is by decoded bytes, an escaped backslash is not an escape");

  const char *why = NULL;
  TAP_EQ_INT(check(" {\"a\":[1,-2.5e3,true,false,null,\"x\\u00e9\"],\"b\":{}} ", 1, &why), 0, "check: valid JSON");
  TAP_EQ_INT(check("{\"a\":tru}", 0, &why), OB_JSON_INVALID, "check: tru is no literal");
  TAP_EQ_STR(why, "bad literal", "check: why");
  TAP_EQ_INT(check("[nul]", 0, NULL), OB_JSON_INVALID, "check: nul is no literal");
  TAP_EQ_INT(check("[truex]", 0, NULL), OB_JSON_INVALID, "check: truex is no literal");
  TAP_EQ_INT(check("[01]", 0, NULL), OB_JSON_INVALID, "check: leading zero");
  TAP_EQ_INT(check("[\"\\x\"]", 0, NULL), OB_JSON_INVALID, "check: unknown escape");
  TAP_EQ_INT(check("[\"\\u12\"]", 0, NULL), OB_JSON_INVALID, "check: short \\u");
  TAP_EQ_INT(check("{\"a\":1,}", 0, NULL), OB_JSON_INVALID, "check: trailing comma");
  TAP_EQ_INT(check("{\"a\":1} {}", 0, NULL), OB_JSON_INVALID, "check: trailing bytes");
  TAP_EQ_INT(check("\xef\xbb\xbf{}", 0, NULL), OB_JSON_INVALID, "check: a BOM is not JSON text");

  TAP_EQ_INT(check("{\"model\":\"sim-model\",\"mod\\u0065l\":\"llama-3-8b\"}", 1, &why), OB_JSON_AMBIGUOUS,
             "check: an escaped duplicate key");
  TAP_EQ_STR(why, "duplicate key", "check: why");
  TAP_EQ_INT(check("{\"model\":\"sim-model\",\"mod\\u0065l\":\"llama-3-8b\"}", 0, NULL), 0, "check: level 0 reads no keys");
  TAP_EQ_INT(check("{\"p\":{\"name\":\"a\",\"name\":\"b\"}}", 2, NULL), OB_JSON_AMBIGUOUS, "check: level 2 duplicate");
  TAP_EQ_INT(check("{\"p\":{\"name\":\"a\",\"name\":\"b\"}}", 1, NULL), 0, "check: below the levels, duplicates pass");
  TAP_EQ_INT(check("[{\"a\":1},{\"p\":{\"n\":1,\"\\u006e\":2}}]", 2, NULL), OB_JSON_AMBIGUOUS,
             "check: arrays do not count as levels (a batch's params)");
  TAP_EQ_INT(check("{\"a\":{\"k\":1},\"b\":{\"k\":2},\"k\":3}", 2, NULL), 0,
             "check: equal keys in sibling and nested objects are no duplicates");
  TAP_EQ_INT(check("{\"model\":\"a\\u0000b\"}", 1, &why), OB_JSON_AMBIGUOUS, "check: \\u0000 in a string member read");
  TAP_EQ_INT(check("{\"m\\u0000\":1}", 1, NULL), OB_JSON_AMBIGUOUS, "check: \\u0000 in a key read");
  TAP_EQ_INT(check("{\"m\":[\"a\\u0000\"],\"n\":{\"o\":\"\\u0000\"}}", 1, NULL), 0,
             "check: \\u0000 in array elements and deeper members passes");

  TAP_EQ_INT(check("{\"long_key_prefix_1\":1,\"long_key_prefix_2\":2,\"long_key_prefix_3\":3,\"long_key_prefix_4\":4,"
                   "\"long_key_prefix_5\":5,\"long_key_prefix_6\":6,\"long_key_prefix_7\":7,\"long_key_prefix_8\":8,"
                   "\"long_key_prefix_9\":9,\"long_key_prefix_10\":10,\"l\\u006fng_key_prefix_\\u0031\":11}",
                   1, NULL),
             OB_JSON_AMBIGUOUS, "check: an escaped duplicate among long keys with one prefix (sorted path)");
  TAP_EQ_INT(check("{\"long_key_prefix_a\":1,\"long_key_prefix_\\u0062\":2}", 1, NULL), 0,
             "check: long keys equal in their first eight bytes and length are told apart");
  /* Many keys: a duplicate among thousands is found (sorted, not pairwise). */
  ob_buf_t big;
  ob_buf_init(&big);
  ob_buf_append_str(&big, "{");
  for (int i = 0; i < 20000; i++) ob_buf_printf(&big, "%s\"k%d\":%d", i ? "," : "", i, i);
  ob_buf_append_str(&big, "}");
  TAP_EQ_INT(ob_json_check(ob_buf_iov(&big), 1, NULL, NULL, NULL), 0, "check: 20000 distinct keys");
  big.len--;
  ob_buf_append_str(&big, ",\"k\\u0031\\u0032\\u0033\\u0034\\u0035\":0}");
  TAP_EQ_INT(ob_json_check(ob_buf_iov(&big), 1, NULL, NULL, NULL), OB_JSON_AMBIGUOUS,
             "check: an escaped duplicate of key 12345 of 20000");
  ob_buf_dispose(&big);
}

/* A background thread's owner: items queued under the lock, summed by the
 * rounds. */
typedef struct {
  ob_bg_t bg;
  int queued, taken; /* under bg's lock */
  int done;          /* the thread's; read after sync / stop */
  int rounds;
  int ticks; /* rounds begun; under bg's lock */
} bg_owner_t;

static void bg_take(void *arg) {
  bg_owner_t *o = arg;
  o->taken = o->queued;
  o->queued = 0;
}

static void bg_tick(void *arg) { ((bg_owner_t *)arg)->ticks++; }

static void bg_run(void *arg) {
  bg_owner_t *o = arg;
  o->done += o->taken;
  o->taken = 0;
  o->rounds++;
}

static void bg_queue(bg_owner_t *o, int n) {
  ob_bg_lock(&o->bg);
  o->queued += n;
  ob_bg_kick(&o->bg);
  ob_bg_unlock(&o->bg);
}

static void test_bg(void) {
  bg_owner_t o = {0};
  ob_bg_start(&o.bg, 0, bg_take, bg_run, &o);
  bg_queue(&o, 3);
  bg_queue(&o, 4);
  ob_bg_sync(&o.bg);
  TAP_EQ_INT(o.done, 7, "bg: sync returns once everything queued before it ran");
  ob_bg_sync(&o.bg);
  TAP_EQ_INT(o.done, 7, "bg: a second sync with nothing queued returns");
  for (int i = 0; i < 1000; i++) bg_queue(&o, 1);
  ob_bg_stop(&o.bg);
  TAP_EQ_INT(o.done, 1007, "bg: stop runs a last round for what was queued");

  /* Periodic: rounds run without a kick. Waited for (a loaded machine may
   * run a 5 ms period late), with a 30 s backstop. */
  bg_owner_t p = {0};
  ob_bg_start(&p.bg, 5, bg_tick, bg_run, &p);
  struct timespec ts = {0, 5 * 1000000L};
  for (int i = 0, seen = 0; i < 6000 && seen < 3; i++) {
    nanosleep(&ts, NULL);
    ob_bg_lock(&p.bg);
    seen = p.ticks;
    ob_bg_unlock(&p.bg);
  }
  ob_bg_stop(&p.bg);
  TAP_CHECK(p.rounds >= 3, "bg: periodic rounds run unkicked");
}

int main(void) {
  test_iov();
  test_buf();
  test_arena();
  test_json_str_run();
  test_json_check();
  test_bg();
  return tap_done();
}
