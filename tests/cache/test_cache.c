/*
 * test_cache.c: canonical JSON, keys, directives, the entry format and the
 * LMDB store (TTL, eviction under a tiny map, persistence across a reopen,
 * a corrupt file).
 */
#include "cache.h"
#include "tap.h"

#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

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
  /* The tokenizer's cap (core.h), one for every walker: 128 containers
   * nest, 129 do not. (This test used to hold unbalanced brackets.) */
  char deep[300];
  memset(deep, '[', 129);
  memset(deep + 129, ']', 129);
  deep[258] = '\0';
  TAP_EQ_STR(canon(deep, NULL, 0), "(invalid)", "nesting deeper than 128: invalid");
  deep[257] = '\0';
  TAP_EQ_STR(canon(deep + 1, NULL, 0), deep + 1, "nesting 128 deep: canonical");
  TAP_EQ_STR(canon("{\"x\":{\"a\":1,\"\\u0061\":2}}", NULL, 0), "(invalid)",
             "keys equal once decoded, at any level: not cached (they sorted to one form for two requests)");
  TAP_EQ_STR(canon("{\"user\":1,\"user\":2}", skip, 2), "(invalid)", "a duplicate of an excluded key: not cached");
  TAP_EQ_STR(canon("{\"a\":\"\\u0000\",\"b\":\"\\ud83d\\ude00\"}", NULL, 0),
             "{\"a\":\"\\u0000\",\"b\":\"\\ud83d\\ude00\"}", "\\u0000 and a surrogate pair: kept as written");
  TAP_EQ_STR(canon("{\"a\":\"\\udc00\"}", NULL, 0), "(invalid)", "a lone surrogate: invalid (was cached before)");
  TAP_EQ_STR(canon("{\"a\":\"\xff\"}", NULL, 0), "(invalid)", "invalid UTF-8: invalid (was cached before)");
  const char *once = canon("{\"z\":[3,2,1],\"a\":{\"y\":\"\",\"b\":-0.5E+2}}", NULL, 0);
  char copy[128];
  snprintf(copy, sizeof copy, "%s", once);
  TAP_EQ_STR(canon(copy, NULL, 0), copy, "idempotent");
}

static void test_keys(void) {
  const ob_iov_t ta[] = {OB_IOV_LIT("t:a"), OB_IOV_LIT("/v1/"), OB_IOV_LIT("sim"), OB_IOV_LIT("{}")};
  const ob_iov_t tb[] = {OB_IOV_LIT("t:b"), OB_IOV_LIT("/v1/"), OB_IOV_LIT("sim"), OB_IOV_LIT("{}")};
  const ob_iov_t tc[] = {OB_IOV_LIT("t:a"), OB_IOV_LIT("/v1/"), OB_IOV_LIT("sim"), OB_IOV_LIT("{}")};
  const ob_iov_t td[] = {OB_IOV_LIT("t:a/"), OB_IOV_LIT("v1/"), OB_IOV_LIT("sim"), OB_IOV_LIT("{}")};
  ob_cache_key_t a = ob_cache_key(ta, 4), b = ob_cache_key(tb, 4), c = ob_cache_key(tc, 4), d = ob_cache_key(td, 4);
  ob_cache_key_t e = ob_cache_key(ta, 3);
  TAP_CHECK(memcmp(a.b, c.b, 16) == 0 && memcmp(a.b, b.b, 16) != 0 && memcmp(a.b, d.b, 16) != 0 && memcmp(a.b, e.b, 16) != 0,
            "same tuple same key; another scope, a shifted boundary or a part fewer another key");
  /* Short tuples are hashed in one call, long ones streamed: both must be
   * XXH3-128 of the length-prefixed parts, whichever side of the stack
   * buffer's size a tuple falls. */
  static char big[1200];
  memset(big, 'x', sizeof big);
  bool agree = true;
  for (size_t n = 0; n <= sizeof big && agree; n += (n < 520 ? 1 : 97)) {
    const ob_iov_t parts[] = {OB_IOV_LIT("t:a"), ob_iov(big, n)};
    unsigned char flat[1300];
    uint64_t l0 = 3, l1 = n;
    memcpy(flat, &l0, 8);
    memcpy(flat + 8, "t:a", 3);
    memcpy(flat + 11, &l1, 8);
    memcpy(flat + 19, big, n);
    XXH128_canonical_t want;
    XXH128_canonicalFromHash(&want, XXH3_128bits(flat, 19 + n));
    ob_cache_key_t got = ob_cache_key(parts, 2);
    agree = memcmp(got.b, want.digest, 16) == 0;
    if (!agree) printf("#   differs at a %zu-byte part\n", n);
  }
  TAP_CHECK(agree, "a key is XXH3-128 of the length-prefixed parts, short (one call) or long (streamed)");
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

static ob_cache_key_t key_of(const char *name) {
  ob_iov_t part = ob_iov_str(name);
  return ob_cache_key(&part, 1);
}

static void put_gen(ob_cache_store_t *s, const char *name, const char *scope, size_t body_len, uint64_t exp,
                    uint64_t gen) {
  char *body = malloc(body_len);
  memset(body, 'x', body_len);
  ob_cache_entry_t e = {exp, 200, false, 0, 0, ob_iov_str(scope), OB_IOV_LIT("application/json"), ob_iov(body, body_len)};
  ob_buf_t b;
  ob_buf_init(&b);
  ob_cache_entry_encode(&e, &b);
  ob_cache_key_t k = key_of(name);
  ob_cache_store_put(s, &k, b.base, b.len, exp, gen);
  ob_buf_dispose(&b);
  free(body);
}

static void put(ob_cache_store_t *s, const char *name, const char *scope, size_t body_len, uint64_t exp) {
  put_gen(s, name, scope, body_len, exp, ob_cache_store_generation(s));
}

static int get(ob_cache_store_t *s, const char *name, uint64_t now) {
  ob_cache_key_t k = key_of(name);
  ob_buf_t b;
  ob_buf_init(&b);
  int hit = ob_cache_store_get(s, &k, now, &b);
  ob_buf_dispose(&b);
  return hit;
}

/* A fresh folder and the path of a cache file in it. */
static void temp_file(char dir[25], char path[128]) {
  strcpy(dir, "/tmp/obleth-cache-XXXXXX");
  if (!mkdtemp(dir)) abort();
  snprintf(path, 128, "%s/cache.mdb", dir);
}

static void remove_dir(const char *dir) {
  char cmd[200];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) printf("# could not remove %s\n", dir);
}

static void test_store(void) {
  char dir[25], path[128];
  temp_file(dir, path);
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
  remove_dir(dir);
}

/* A child process that holds the file's LMDB write lock until told to let
 * go: the store's writer then waits in mdb_txn_begin, and every change
 * queued meanwhile is pending, deterministically. Returns the pipe to
 * close for the release (the child is reaped by release()). */
static int hold_writer(const char *path, pid_t *pid) {
  int ready[2], go[2];
  if (pipe(ready) != 0 || pipe(go) != 0) abort();
  fflush(stdout);
  *pid = fork();
  if (*pid < 0) abort();
  if (*pid == 0) {
    close(ready[0]);
    close(go[1]);
    MDB_env *env;
    MDB_txn *txn;
    if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 2) || mdb_env_set_mapsize(env, 1 << 20) ||
        mdb_env_open(env, path, MDB_NOSUBDIR | MDB_NOTLS, 0600) || mdb_txn_begin(env, NULL, 0, &txn))
      _exit(1);
    if (write(ready[1], "r", 1) != 1) _exit(1);
    char c;
    while (read(go[0], &c, 1) > 0) {}
    mdb_txn_abort(txn);
    mdb_env_close(env);
    _exit(0);
  }
  close(ready[1]);
  close(go[0]);
  char c;
  TAP_CHECK(read(ready[0], &c, 1) == 1, "a second process holds the write lock");
  close(ready[0]);
  return go[1];
}

static void release(int go, pid_t pid) {
  close(go);
  int st = 0;
  waitpid(pid, &st, 0);
  TAP_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the lock holder exited cleanly");
}

/* What gets see while changes are queued and not written: their own puts
 * at once, never an entry a purge covers, never a put begun before it. */
static void test_store_ordering(void) {
  char dir[25], path[128];
  temp_file(dir, path);
  const char *why = NULL;
  ob_cache_store_t *s = ob_cache_store_open(path, 1 << 20, &why);
  if (!s) abort();
  uint64_t now = (uint64_t)time(NULL) * 1000, exp = now + 60000;
  put(s, "old", "t:x", 100, exp);
  put(s, "other-old", "t:y", 100, exp);
  ob_cache_store_sync(s);
  TAP_CHECK(get(s, "old", now) && get(s, "other-old", now), "stored entries are hits");

  pid_t pid;
  int go = hold_writer(path, &pid);
  put(s, "p1", "t:x", 100, exp);
  put(s, "p2", "t:y", 100, exp);
  TAP_CHECK(get(s, "p1", now) && get(s, "p2", now), "a queued write is read back at once, before the writer ran");
  TAP_CHECK(!get(s, "p1", exp), "a queued write past its expiry is a miss");
  uint64_t before = ob_cache_store_generation(s);
  ob_cache_store_purge(s, "t:x");
  TAP_CHECK(ob_cache_store_generation(s) != before, "a purge starts a new generation");
  TAP_CHECK(!get(s, "p1", now), "a queued write the purge covers is gone when the purge returns");
  TAP_CHECK(!get(s, "old", now), "a stored entry the purge covers is hidden before the writer deleted it");
  TAP_CHECK(get(s, "p2", now) && get(s, "other-old", now), "entries of another scope stay, queued or stored");
  put_gen(s, "late", "t:x", 100, exp, before);
  TAP_CHECK(!get(s, "late", now), "a write begun before the purge is dropped");
  put(s, "fresh", "t:x", 100, exp);
  TAP_CHECK(get(s, "fresh", now), "a write after the purge is read back at once");
  put(s, "p1", "t:x", 100, exp);
  TAP_CHECK(get(s, "p1", now), "a purged key written again after the purge is a hit again");
  release(go, pid);
  ob_cache_store_sync(s);
  TAP_CHECK(!get(s, "old", now) && !get(s, "late", now), "once written: the purge deleted the old entry, the late write never landed");
  TAP_CHECK(get(s, "p1", now) && get(s, "p2", now) && get(s, "fresh", now) && get(s, "other-old", now),
            "once written: what was put after the purge, and the other scope, are on disk");
  ob_cache_stats_t st;
  ob_cache_store_stats(s, &st);
  TAP_CHECK(st.entries == 4 && st.write_errors == 0, "4 entries on disk (%llu), no write errors (%llu)",
            (unsigned long long)st.entries, (unsigned long long)st.write_errors);

  /* A purge of everything while a write is queued, then a reopen: nothing
   * put before it survives. */
  go = hold_writer(path, &pid);
  put(s, "q", "t:z", 100, exp);
  ob_cache_store_purge(s, NULL);
  TAP_CHECK(!get(s, "q", now) && !get(s, "p2", now) && !get(s, "fresh", now), "purge all: queued and stored entries are gone at once");
  release(go, pid);
  ob_cache_store_close(s);
  s = ob_cache_store_open(path, 1 << 20, &why);
  TAP_CHECK(s && !get(s, "q", now) && !get(s, "p1", now), "purge all: nothing comes back after a reopen");
  ob_cache_store_close(s);
  remove_dir(dir);
}

/* A batch the writer cannot commit (puts that together exceed the whole
 * map fail with MAP_FULL however much is evicted) still carries out the purge queued
 * in it: the purge stops hiding its entries once the writer is done with
 * it, so whatever it did not delete would be served again. */
static void test_store_failed_batch(void) {
  char dir[25], path[128];
  temp_file(dir, path);
  const char *why = NULL;
  ob_cache_store_t *s = ob_cache_store_open(path, 1 << 20, &why);
  if (!s) abort();
  uint64_t now = (uint64_t)time(NULL) * 1000;
  char name[16];
  for (int i = 0; i < 64; i++) {
    snprintf(name, sizeof name, "a%d", i);
    put(s, name, "t:a", 100, now + 60000 + (uint64_t)i);
  }
  ob_cache_store_sync(s);
  /* The writer takes what is queued once, then waits for the lock: the
   * purge shares a batch with one of the two runs of puts, each over the
   * map. */
  pid_t pid;
  int go = hold_writer(path, &pid);
  for (int i = 0; i < 5; i++) {
    snprintf(name, sizeof name, "before%d", i);
    put(s, name, "t:b", 250u << 10, now + 60000);
  }
  ob_cache_store_purge(s, "t:a");
  for (int i = 0; i < 5; i++) {
    snprintf(name, sizeof name, "after%d", i);
    put(s, name, "t:b", 250u << 10, now + 60000);
  }
  release(go, pid);
  ob_cache_store_sync(s);
  int hits = 0;
  for (int i = 0; i < 64; i++) {
    snprintf(name, sizeof name, "a%d", i);
    hits += get(s, name, now);
  }
  TAP_CHECK(hits == 0, "a purge in a batch that failed still deleted its entries (%d of 64 served again)", hits);
  ob_cache_stats_t st;
  ob_cache_store_stats(s, &st);
  TAP_CHECK(st.write_errors >= 1, "the failed batch is counted (%llu)", (unsigned long long)st.write_errors);
  /* An entry that cannot fit is refused at once: it costs no entry. */
  for (int i = 0; i < 16; i++) {
    snprintf(name, sizeof name, "c%d", i);
    put(s, name, "t:c", 100, now + 60000 + (uint64_t)i);
  }
  put(s, "huge3", "t:c", 2u << 20, now + 60000);
  ob_cache_store_sync(s);
  hits = 0;
  for (int i = 0; i < 16; i++) {
    snprintf(name, sizeof name, "c%d", i);
    hits += get(s, name, now);
  }
  ob_cache_stats_t st2;
  ob_cache_store_stats(s, &st2);
  TAP_CHECK(hits == 16 && !get(s, "huge3", now) && st2.write_errors == st.write_errors + 1,
            "an entry larger than the map is refused and counted; nothing was evicted for it (%d of 16 kept)", hits);
  ob_cache_store_close(s);
  remove_dir(dir);
}

int main(void) {
  test_canonical();
  test_keys();
  test_entry();
  test_store();
  test_store_ordering();
  test_store_failed_batch();
  return tap_done();
}
