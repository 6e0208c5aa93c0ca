/* Unit tests for src/core: slices, buffers, JSON string escaping, arena,
 * background thread. */
#include "core.h"
#include "core/json_cases.h"
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
  /* well-formed UTF-8 passes as is; anything else becomes U+FFFD, a byte at a time */
  ob_buf_append_json_str(&b, OB_IOV_LIT("\xc3\xa9\xf0\x9f\x98\x80|\xff|\xc0\xaf|\xed\xa0\x80|\xe2\x82"));
  static const char want[] = "\"\xc3\xa9\xf0\x9f\x98\x80|\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd|\\ufffd\\ufffd\"";
  TAP_CHECK(b.len == sizeof want - 1 && memcmp(b.base, want, b.len) == 0, "json escaping: invalid UTF-8 as U+FFFD (%.*s)",
            (int)b.len, b.base);
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
 * some that are not: 0x20, 0x7f) at every position of strings
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
        while (want < buf + len && *want != '"' && *want != '\\' && (unsigned char)*want >= 0x20 &&
               (unsigned char)*want < 0x80)
          want++;
        if (ob_json_str_run(buf, buf + len) != want) bad++;
      }
  TAP_EQ_INT(bad, 0, "json_str_run: stops at the first quote, backslash, control or non-ASCII byte, never past the end");
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

/* The tokenizer (core_jsontok.c): every RFC 8259 case of json_cases.h,
 * then the token stream, spans, flags, decoding, the depth cap, errors. */
static int nest(ob_buf_t *b, int depth, char open, char close) {
  ob_buf_reset(b);
  for (int i = 0; i < depth; i++) ob_buf_append(b, &open, 1);
  for (int i = 0; i < depth; i++) ob_buf_append(b, &close, 1);
  return ob_json_validate(ob_buf_iov(b), NULL, NULL);
}

static void test_jsontok(void) {
  int wrong = 0, disagree = 0;
  for (size_t i = 0; i < JSON_CASES; i++) {
    const json_case_t *c = &json_cases[i];
    ob_iov_t in = ob_iov(c->json, json_case_len(c));
    const char *why = NULL;
    int v = ob_json_validate(in, &why, NULL);
    bool ok = (v == 0) == ((c->want & JC_V) != 0) && (v == 0 || why);
    if (!ok) printf("#   tokenizer: %s (%s)\n", c->name, why ? why : "valid"), wrong++;
    /* The check walker at level 0 reads nothing: exactly the tokenizer's verdict. */
    if (ob_json_check(in, 0, NULL, NULL, NULL) != v) printf("#   check: %s\n", c->name), disagree++;
    TAP_CHECK(ok, "RFC 8259: %s: %s", c->want & JC_V ? "valid" : "invalid", c->name);
  }
  TAP_EQ_INT(wrong, 0, "tokenizer: every conformance case");
  TAP_EQ_INT(disagree, 0, "check at level 0 agrees with the tokenizer on every case");

  /* The token stream of one text, with spans and flags. */
  const char *doc = " {\"k\\u0065y\" : [1.5e3, \"a\\u0000b\", true, false, null, {}], \"p\":\"\xc3\xa9\"} ";
  ob_json_lexer_t lx;
  ob_json_tok_t t;
  ob_json_lexer_init(&lx, ob_iov_str(doc));
  static const int want[] = {OB_JSON_TOK_OBJECT, OB_JSON_TOK_KEY, OB_JSON_TOK_ARRAY, OB_JSON_TOK_NUMBER,
                             OB_JSON_TOK_STRING, OB_JSON_TOK_TRUE, OB_JSON_TOK_FALSE, OB_JSON_TOK_NULL,
                             OB_JSON_TOK_OBJECT, OB_JSON_TOK_OBJECT_END, OB_JSON_TOK_ARRAY_END, OB_JSON_TOK_KEY,
                             OB_JSON_TOK_STRING, OB_JSON_TOK_OBJECT_END, OB_JSON_TOK_END, OB_JSON_TOK_END};
  ob_json_tok_t toks[16];
  bool seq = true;
  for (size_t i = 0; i < 16; i++) seq = seq && ob_json_next(&lx, &toks[i]) == want[i];
  TAP_CHECK(seq, "tokens: begin/end object and array, key, number, string, literals, END (and END again)");
  TAP_CHECK(ob_iov_eq(toks[1].text, OB_IOV_LIT("k\\u0065y")) && ob_iov_eq(toks[1].raw, OB_IOV_LIT("\"k\\u0065y\"")) &&
                toks[1].dlen == 3 && toks[1].flags == OB_JSON_ESC,
            "key: contents and raw spans into the input, decoded length, escaped");
  TAP_CHECK(ob_iov_eq(toks[3].text, OB_IOV_LIT("1.5e3")), "number: the span as written");
  TAP_CHECK(toks[4].dlen == 3 && toks[4].flags == (OB_JSON_ESC | OB_JSON_NUL), "\\u0000: valid, flagged, one decoded byte");
  TAP_CHECK(toks[12].dlen == 2 && toks[12].flags == 0, "plain UTF-8: two bytes, no flags");
  char out[8];
  TAP_CHECK(ob_json_str_decode(toks[1].text, out) == 3 && memcmp(out, "key", 3) == 0, "decode: key");
  TAP_CHECK(ob_json_str_decode(toks[4].text, out) == 3 && memcmp(out, "a\0b", 3) == 0, "decode: \\u0000 is a 0 byte");
  ob_iov_t pair = OB_IOV_LIT("x\\ud83d\\ude00\\u00e9\\n");
  TAP_CHECK(ob_json_str_decode(pair, out) == 8 && memcmp(out, "x\xf0\x9f\x98\x80\xc3\xa9\n", 8) == 0,
            "decode: a surrogate pair joined into one four-byte character, short escapes");
  /* dlen equals what decoding writes, for every string token of the valid cases. */
  int bad = 0;
  for (size_t i = 0; i < JSON_CASES; i++) {
    if (!(json_cases[i].want & JC_V)) continue;
    ob_json_lexer_init(&lx, ob_iov(json_cases[i].json, json_case_len(&json_cases[i])));
    while (ob_json_next(&lx, &t) > OB_JSON_TOK_END) {
      if (t.type != OB_JSON_TOK_STRING && t.type != OB_JSON_TOK_KEY) continue;
      char *d = malloc(t.dlen + 1);
      if (ob_json_str_decode(t.text, d) != t.dlen || ((t.flags & OB_JSON_ESC) != 0) != (memchr(t.text.base, '\\', t.text.len) != NULL))
        bad++;
      free(d);
    }
  }
  TAP_EQ_INT(bad, 0, "decode writes dlen bytes and ESC says whether there is an escape, for every valid case");

  /* Depth: OB_JSON_MAX_DEPTH containers nest, one more does not. */
  ob_buf_t b;
  ob_buf_init(&b);
  TAP_EQ_INT(nest(&b, OB_JSON_MAX_DEPTH, '[', ']'), 0, "depth: 128 nested arrays are valid");
  TAP_EQ_INT(nest(&b, OB_JSON_MAX_DEPTH + 1, '[', ']'), OB_JSON_INVALID, "depth: 129 are not");
  ob_buf_reset(&b);
  for (int i = 0; i < OB_JSON_MAX_DEPTH; i++) ob_buf_append_str(&b, "{\"a\":");
  ob_buf_append_str(&b, "1");
  for (int i = 0; i < OB_JSON_MAX_DEPTH; i++) ob_buf_append_str(&b, "}");
  TAP_EQ_INT(ob_json_validate(ob_buf_iov(&b), NULL, NULL), 0, "depth: 128 nested objects are valid");
  const char *why = NULL;
  size_t off = 0;
  TAP_EQ_INT(nest(&b, 300, '[', ']'), OB_JSON_INVALID, "depth: 300 are not");
  TAP_CHECK(ob_json_validate(ob_buf_iov(&b), &why, &off) == OB_JSON_INVALID && strcmp(why, "nested too deep") == 0 &&
                off == OB_JSON_MAX_DEPTH,
            "depth: the reason and the offset of the first bracket too deep");
  ob_buf_dispose(&b);

  /* Errors: offset of the offending byte and a reason; ERROR sticks. */
  TAP_CHECK(ob_json_validate(OB_IOV_LIT("[1, tru]"), &why, &off) == OB_JSON_INVALID && off == 4 &&
                strcmp(why, "bad literal") == 0,
            "error: offset and reason (bad literal at 4)");
  TAP_CHECK(ob_json_validate(OB_IOV_LIT("{\"a\":\"\\uDE00\"}"), &why, &off) == OB_JSON_INVALID && off == 5 &&
                strcmp(why, "lone low surrogate") == 0,
            "error: a string's error is at its opening quote");
  TAP_CHECK(ob_json_validate(OB_IOV_LIT("{} x"), &why, &off) == OB_JSON_INVALID && off == 3, "error: trailing bytes at 3");
  ob_json_lexer_init(&lx, OB_IOV_LIT("[1,]"));
  while (ob_json_next(&lx, &t) > OB_JSON_TOK_END) {
  }
  TAP_CHECK(t.type == OB_JSON_TOK_ERROR && ob_json_next(&lx, &t) == OB_JSON_TOK_ERROR, "error: every later call is ERROR");

  /* skip: the rest of a container, as one step. */
  ob_json_lexer_init(&lx, OB_IOV_LIT("[[1,{\"a\":[2]}],3]"));
  ob_json_next(&lx, &t);
  ob_json_next(&lx, &t);
  TAP_CHECK(ob_json_skip(&lx, &t) == 0 && ob_json_next(&lx, &t) == OB_JSON_TOK_NUMBER && ob_iov_eq(t.text, OB_IOV_LIT("3")),
            "skip: past a nested container to its next sibling");
  ob_json_lexer_init(&lx, OB_IOV_LIT("[[1,}"));
  ob_json_next(&lx, &t);
  ob_json_next(&lx, &t);
  TAP_EQ_INT(ob_json_skip(&lx, &t), OB_JSON_TOK_ERROR, "skip: an error inside is reported");

  /* Implementation-defined, as ob_json_check reads: duplicates and \u0000
   * are valid JSON, ambiguous where read. */
  TAP_EQ_INT(ob_json_check(OB_IOV_LIT("{\"a\":1,\"a\":2}"), 1, NULL, NULL, NULL), OB_JSON_AMBIGUOUS,
             "check: duplicate keys where read are ambiguous");
  TAP_EQ_INT(ob_json_check(OB_IOV_LIT("{\"a\":1,\"a\":2} x"), 1, NULL, NULL, NULL), OB_JSON_INVALID,
             "check: not JSON wins over ambiguous");
  TAP_EQ_INT(ob_json_check(OB_IOV_LIT("{\"a\":\"\\uDE00\"}"), 1, NULL, NULL, NULL), OB_JSON_INVALID,
             "check: a lone surrogate is not JSON (was passed before the tokenizer)");
  TAP_EQ_INT(ob_json_check(OB_IOV_LIT("{\"a\":\"\xff\"}"), 1, NULL, NULL, NULL), OB_JSON_INVALID,
             "check: invalid UTF-8 is not JSON (was passed before the tokenizer)");
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
  test_jsontok();
  test_json_check();
  test_bg();
  return tap_done();
}
