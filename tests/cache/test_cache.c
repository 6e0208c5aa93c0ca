/*
 * test_cache.c: canonical JSON, keys, directives, the entry format and the
 * LMDB store (TTL, eviction under a tiny map, persistence across a reopen,
 * a corrupt file).
 */
#include "cache.h"
#include "tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static const char *canon(const char *in, const char *const *skip, size_t n) {
  static ob_buf_t b;
  ob_buf_dispose(&b);
  ob_buf_init(&b);
  if (!ob_cache_canonical(ob_iov_str(in), skip, n, &b)) return "(invalid)";
  ob_buf_append(&b, "", 1);
  return b.base;
}

static void test_canonical(void) {
  static const char *const skip[] = {"user", "stream_options"};
  TAP_EQ_STR(canon(" { \"b\" : 1 , \"a\" : [ 1 , {\"d\":true,\"c\":null} ] } ", NULL, 0),
             "{\"a\":[1,{\"c\":null,\"d\":true}],\"b\":1}", "keys sorted at every level, white space dropped");
  TAP_EQ_STR(canon("{\"n\":1.0,\"m\":1e3,\"s\":\"a b\\u0041\"}", NULL, 0), "{\"m\":1e3,\"n\":1.0,\"s\":\"a b\\u0041\"}",
             "numbers and strings as written");
  TAP_EQ_STR(canon("{\"user\":\"u1\",\"model\":\"m\",\"stream_options\":{\"include_usage\":true},\"stream\":true}", skip, 2),
             "{\"model\":\"m\",\"stream\":true}", "user and stream_options excluded, stream kept");
  TAP_EQ_STR(canon("{\"x\":{\"user\":1}}", skip, 2), "{\"x\":{\"user\":1}}", "exclusions apply at the top level only");
  TAP_EQ_STR(canon("{\"a\":1,\"a\":2}", NULL, 0), "(invalid)", "duplicate keys: not cached");
  TAP_EQ_STR(canon("{\"a\":1,}", NULL, 0), "(invalid)", "trailing comma: invalid");
  TAP_EQ_STR(canon("{\"a\":01}", NULL, 0), "(invalid)", "leading zero: invalid");
  TAP_EQ_STR(canon("{\"a\":1} x", NULL, 0), "(invalid)", "trailing garbage: invalid");
  TAP_EQ_STR(canon("", NULL, 0), "(invalid)", "empty: invalid");
  char deep[200];
  memset(deep, '[', 100);
  memset(deep + 100, ']', 100);
  deep[199] = '\0';
  deep[99] = ']';
  TAP_EQ_STR(canon(deep, NULL, 0), "(invalid)", "nesting deeper than 64: invalid");
  const char *once = canon("{\"z\":[3,2,1],\"a\":{\"y\":\"\",\"b\":-0.5E+2}}", NULL, 0);
  char copy[128];
  snprintf(copy, sizeof copy, "%s", once);
  TAP_EQ_STR(canon(copy, NULL, 0), copy, "idempotent");
}

static void test_keys(void) {
  ob_cache_key_t a = ob_cache_key(OB_IOV_LIT("t:a"), OB_IOV_LIT("/v1/"), OB_IOV_LIT("sim"), OB_IOV_LIT("{}"));
  ob_cache_key_t b = ob_cache_key(OB_IOV_LIT("t:b"), OB_IOV_LIT("/v1/"), OB_IOV_LIT("sim"), OB_IOV_LIT("{}"));
  ob_cache_key_t c = ob_cache_key(OB_IOV_LIT("t:a"), OB_IOV_LIT("/v1/"), OB_IOV_LIT("sim"), OB_IOV_LIT("{}"));
  ob_cache_key_t d = ob_cache_key(OB_IOV_LIT("t:a/"), OB_IOV_LIT("v1/"), OB_IOV_LIT("sim"), OB_IOV_LIT("{}"));
  TAP_CHECK(memcmp(a.b, c.b, 16) == 0 && memcmp(a.b, b.b, 16) != 0 && memcmp(a.b, d.b, 16) != 0,
            "same tuple same key; another scope or a shifted boundary another key");
  ob_cache_directives_t dir = ob_cache_directives(OB_IOV_LIT("max-age=0, No-Store"));
  TAP_CHECK(dir.no_store && !dir.no_cache, "Cache-Control no-store (any case, among others)");
  dir = ob_cache_directives(OB_IOV_LIT("no-cache"));
  TAP_CHECK(!dir.no_store && dir.no_cache, "Cache-Control no-cache");
}

static void test_entry(void) {
  ob_cache_entry_t e = {123, 200, true, 5, 7, OB_IOV_LIT("t:acme"), OB_IOV_LIT("text/event-stream"), OB_IOV_LIT("data: x\n\n")};
  ob_buf_t b;
  ob_buf_init(&b);
  ob_cache_entry_encode(&e, &b);
  ob_cache_entry_t d;
  TAP_CHECK(ob_cache_entry_decode(ob_buf_iov(&b), &d) && d.expires_ms == 123 && d.status == 200 && d.streamed &&
                d.prompt_tokens == 5 && d.completion_tokens == 7 && ob_iov_eq(d.scope, e.scope) &&
                ob_iov_eq(d.content_type, e.content_type) && ob_iov_eq(d.body, e.body),
            "entry round trip");
  TAP_CHECK(!ob_cache_entry_decode(ob_iov(b.base, b.len - 1), &d), "a truncated entry is refused");

  /* Every field wider than a byte, so a reader of the wrong width or byte
   * order shows; and the stored layout is little-endian (entries outlive
   * the process, so it must not change). */
  char big[300];
  memset(big, 'z', sizeof big);
  ob_cache_entry_t w = {1796601301123ull, 503, false, 0x1122334455ull, 0x0102030405060708ull, OB_IOV_LIT("g:batch"),
                        OB_IOV_LIT("application/json"), ob_iov(big, sizeof big)};
  ob_buf_t wb;
  ob_buf_init(&wb);
  ob_cache_entry_encode(&w, &wb);
  const uint8_t *raw = (const uint8_t *)wb.base;
  TAP_CHECK(raw[4] == (uint8_t)(w.expires_ms & 0xff) && raw[11] == (uint8_t)(w.expires_ms >> 56) && raw[12] == (503 & 0xff) &&
                raw[13] == (503 >> 8) && raw[23] == 0x08 && raw[30] == 0x01,
            "entry fields are stored little-endian at fixed offsets");
  TAP_CHECK(ob_cache_entry_decode(ob_buf_iov(&wb), &d) && d.expires_ms == w.expires_ms && d.status == 503 && !d.streamed &&
                d.prompt_tokens == w.prompt_tokens && d.completion_tokens == w.completion_tokens && ob_iov_eq(d.scope, w.scope) &&
                ob_iov_eq(d.content_type, w.content_type) && ob_iov_eq(d.body, w.body),
            "entry round trip with multi-byte values in every field");
  ob_buf_dispose(&wb);
  /* Found by fuzz_canon (corpus regress_entry_flags): any other flag byte
   * decoded, and the entry encoded back differently. */
  b.base[14] = 0x72;
  TAP_CHECK(!ob_cache_entry_decode(ob_buf_iov(&b), &d), "an entry with an unknown flag byte is refused");
  ob_buf_dispose(&b);
}

static void put(ob_cache_store_t *s, const char *name, const char *scope, size_t body_len, uint64_t exp) {
  char *body = malloc(body_len);
  memset(body, 'x', body_len);
  ob_cache_entry_t e = {exp, 200, false, 0, 0, ob_iov_str(scope), OB_IOV_LIT("application/json"), ob_iov(body, body_len)};
  ob_buf_t b;
  ob_buf_init(&b);
  ob_cache_entry_encode(&e, &b);
  ob_cache_key_t k = ob_cache_key(OB_IOV_LIT(""), OB_IOV_LIT(""), OB_IOV_LIT(""), ob_iov_str(name));
  ob_cache_store_put(s, &k, b.base, b.len, exp);
  ob_buf_dispose(&b);
  free(body);
}

static int get(ob_cache_store_t *s, const char *name, uint64_t now) {
  ob_cache_key_t k = ob_cache_key(OB_IOV_LIT(""), OB_IOV_LIT(""), OB_IOV_LIT(""), ob_iov_str(name));
  ob_buf_t b;
  ob_buf_init(&b);
  int hit = ob_cache_store_get(s, &k, now, &b);
  ob_buf_dispose(&b);
  return hit;
}

static void test_store(void) {
  char dir[] = "/tmp/obleth-cache-XXXXXX";
  if (!mkdtemp(dir)) abort();
  char path[128];
  snprintf(path, sizeof path, "%s/cache.mdb", dir);
  const char *why = NULL;
  ob_cache_store_t *s = ob_cache_store_open(path, 1 << 20, &why);
  TAP_CHECK(s != NULL, "a missing file is created (%s)", why ? why : "ok");
  if (!s) return;
  uint64_t now = (uint64_t)time(NULL) * 1000; /* the writer sweeps by the real clock */
  put(s, "a", "t:x", 100, now + 1000);
  put(s, "b", "t:y", 100, now + 5000);
  ob_cache_store_sync(s);
  TAP_CHECK(get(s, "a", now) && get(s, "b", now), "stored entries are hits");
  TAP_CHECK(!get(s, "a", now + 2000) && get(s, "b", now + 2000), "TTL: past its expiry an entry is a miss");
  ob_cache_store_purge(s, "t:y");
  ob_cache_store_sync(s);
  TAP_CHECK(!get(s, "b", now), "purge by scope");
  /* 1 MiB map, 64 KiB entries: far more than fit; the oldest go. */
  for (int i = 0; i < 60; i++) {
    char name[16];
    snprintf(name, sizeof name, "big%d", i);
    put(s, name, "t:x", 64 * 1024, now + 10000 + (uint64_t)i);
    if (i % 4 == 3) ob_cache_store_sync(s);
  }
  ob_cache_store_sync(s);
  ob_cache_stats_t st;
  ob_cache_store_stats(s, &st);
  TAP_CHECK(st.evicted > 0 && get(s, "big59", now) && !get(s, "big0", now),
            "eviction under a tiny map: newest kept, oldest evicted (%llu evicted, %llu errors)",
            (unsigned long long)st.evicted, (unsigned long long)st.write_errors);
  TAP_CHECK(st.bytes_used <= (1u << 20), "within the map");
  ob_cache_store_close(s);
  s = ob_cache_store_open(path, 1 << 20, &why);
  TAP_CHECK(s && get(s, "big59", now), "entries survive a reopen");
  ob_cache_store_close(s);
  FILE *f = fopen(path, "r+");
  if (f) {
    char junk[8192];
    memset(junk, 0x5a, sizeof junk);
    fwrite(junk, 1, sizeof junk, f);
    fclose(f);
  }
  why = NULL;
  s = ob_cache_store_open(path, 1 << 20, &why);
  TAP_CHECK(s == NULL && why != NULL, "a corrupt file is refused with a reason (%s), not a crash", why ? why : "-");
  ob_cache_store_close(s);
  snprintf(path, sizeof path, "%s/no/such/dir/cache.mdb", dir);
  s = ob_cache_store_open(path, 1 << 20, &why);
  TAP_CHECK(s == NULL && why != NULL, "an unusable path is refused with a reason (%s)", why ? why : "-");
  char cmd[200];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) printf("# could not remove %s\n", dir);
}

int main(void) {
  test_canonical();
  test_keys();
  test_entry();
  test_store();
  return tap_done();
}
