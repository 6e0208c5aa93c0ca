/*
 * Unit tests for src/tenant: the key directory built from a parsed config
 * snapshot. Lookup by Authorization: Bearer, by x-api-key and with both;
 * scheme case and spacing; missing, unknown and disabled keys and tenants;
 * the model allow-list; the hash_key test vector; an anonymous snapshot;
 * and 1000 tenants with 3 keys each all found; a connection's memo.
 */
#include "config.h"
#include "tap.h"
#include "tenant.h"

#include <stdio.h>
#include <stdlib.h>

#define HEAD "\"listeners\": [{\"address\": \"127.0.0.1:0\"}], \"upstreams\": []"

/* sha256("abc") and sha256("key-b") as `obleth hash-key` prints them. */
#define ABC_HEX "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

static ob_config_t *parse(const char *json) {
  ob_config_errors_t e = {0};
  ob_config_t *c = ob_config_parse(json, strlen(json), NULL, &e);
  for (size_t i = 0; i < e.len; i++) printf("#   config error: %s\n", e.items[i]);
  ob_config_errors_dispose(&e);
  return c;
}

static ob_auth_t ident(const ob_tenants_t *t, const char *auth, const char *xkey, ob_identity_t *out) {
  *out = (ob_identity_t){0};
  return ob_tenants_identify(t, ob_iov_str(auth), ob_iov_str(xkey), out);
}

static void test_hash_key(void) {
  char hex[65];
  ob_tenant_hash_key(OB_IOV_LIT("abc"), hex);
  TAP_EQ_STR(hex, ABC_HEX, "hash_key(\"abc\") is the FIPS 180-2 vector, lower-case");
  ob_tenant_hash_key(ob_iov(NULL, 0), hex);
  TAP_EQ_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "hash_key of empty input");
  TAP_EQ_INT(strlen(hex), 64, "64 digits and a NUL");
}

static void test_lookup(void) {
  char bhex[65];
  ob_tenant_hash_key(OB_IOV_LIT("key-b"), bhex);
  char json[4096];
  snprintf(json, sizeof json,
           "{" HEAD ", \"groups\": [{\"name\": \"prod\", \"weight\": 3}], \"tenants\": ["
           "{\"name\": \"alpha\", \"group\": \"prod\", \"models\": [\"llama\", \"gpt-4o\"],"
           " \"keys\": [{\"id\": \"a1\", \"sha256\": \"%s\"}, {\"id\": \"a2\", \"secret\": \"key-a2\", \"disabled\": true}]},"
           "{\"name\": \"beta\", \"keys\": [{\"id\": \"b1\", \"sha256\": \"%s\"}]},"
           "{\"name\": \"gamma\", \"disabled\": true, \"models\": [], \"keys\": [{\"id\": \"c1\", \"secret\": \"key-c\"}]}"
           "]}",
           ABC_HEX, bhex);
  ob_config_t *c = parse(json);
  TAP_CHECK(c != NULL, "tenant config parses");
  if (!c) return;
  ob_tenants_t *t = ob_tenants_create(c->tenants, c->num_tenants);
  TAP_CHECK(ob_tenants_required(t), "tenants present: a key is required");
  ob_identity_t id;

  TAP_CHECK(ident(t, "Bearer abc", "", &id) == OB_AUTH_OK && id.tenant == &c->tenants[0] && id.tenant_index == 0 &&
                id.key == &c->tenants[0].keys[0],
            "Bearer finds tenant and key");
  TAP_CHECK(ident(t, "", "key-b", &id) == OB_AUTH_OK && id.tenant_index == 1 && strcmp(id.key->id, "b1") == 0,
            "x-api-key finds the key");
  TAP_CHECK(ident(t, "", "  key-b\t", &id) == OB_AUTH_OK && id.tenant_index == 1, "x-api-key is trimmed");
  TAP_CHECK(ident(t, "Bearer abc", "key-b", &id) == OB_AUTH_AMBIGUOUS,
            "Authorization and x-api-key naming different keys: ambiguous, not first wins");
  TAP_CHECK(ident(t, "Bearer nope", "key-b", &id) == OB_AUTH_AMBIGUOUS,
            "an unknown Bearer token next to a known x-api-key: ambiguous (no fallback)");
  TAP_CHECK(ident(t, "Bearer key-b", " key-b ", &id) == OB_AUTH_OK && id.tenant_index == 1,
            "the same key in both: that key");
  TAP_CHECK(ident(t, "Basic abc", "key-b", &id) == OB_AUTH_OK && id.tenant_index == 1,
            "a non-Bearer Authorization carries no key: x-api-key is the one");
  TAP_CHECK(ident(t, "bEARER abc", "", &id) == OB_AUTH_OK && id.tenant_index == 0, "scheme is case-insensitive");
  TAP_CHECK(ident(t, "  Bearer   \t abc  ", "", &id) == OB_AUTH_OK && id.tenant_index == 0,
            "several spaces and outer white space");
  TAP_CHECK(ident(t, "Bearerabc", "", &id) == OB_AUTH_MISSING, "no space after the scheme: not a Bearer token");
  TAP_CHECK(ident(t, "Basic YWJjOmRlZg==", "", &id) == OB_AUTH_MISSING, "other scheme alone: missing");
  TAP_CHECK(ident(t, "Basic YWJjOmRlZg==", "key-b", &id) == OB_AUTH_OK && id.tenant_index == 1,
            "other scheme falls back to x-api-key");
  TAP_CHECK(ident(t, "Bearer ", "", &id) == OB_AUTH_MISSING, "empty Bearer token: missing");
  TAP_CHECK(ident(t, "Bearer  ", "abc", &id) == OB_AUTH_OK && id.tenant_index == 0,
            "empty Bearer token falls back to x-api-key");
  TAP_CHECK(ident(t, "", "", &id) == OB_AUTH_MISSING, "no headers: missing");
  TAP_CHECK(ident(t, "", "   ", &id) == OB_AUTH_MISSING, "blank x-api-key: missing");
  TAP_CHECK(ident(t, "Bearer abd", "", &id) == OB_AUTH_UNKNOWN && id.tenant == NULL, "unknown key");
  TAP_CHECK(ident(t, "Bearer ABC", "", &id) == OB_AUTH_UNKNOWN, "keys are case-sensitive");
  TAP_CHECK(ident(t, "", ABC_HEX, &id) == OB_AUTH_UNKNOWN, "the digest itself is not a key");
  TAP_CHECK(ident(t, "Bearer key-a2", "", &id) == OB_AUTH_DISABLED && id.tenant_index == 0 &&
                strcmp(id.key->id, "a2") == 0,
            "disabled key: DISABLED with identity filled");
  TAP_CHECK(ident(t, "", "key-c", &id) == OB_AUTH_DISABLED && id.tenant_index == 2 && id.tenant->disabled,
            "disabled tenant: DISABLED with identity filled");
  TAP_CHECK(ob_tenants_identify(t, OB_IOV_LIT("Bearer abc"), ob_iov(NULL, 0), NULL) == OB_AUTH_OK,
            "out may be NULL");

  const ob_config_tenant_t *alpha = &c->tenants[0], *beta = &c->tenants[1], *gamma = &c->tenants[2];
  TAP_CHECK(ob_tenant_allows_model(alpha, OB_IOV_LIT("llama")) && ob_tenant_allows_model(alpha, OB_IOV_LIT("gpt-4o")),
            "allow-list admits listed models");
  TAP_CHECK(!ob_tenant_allows_model(alpha, OB_IOV_LIT("llam")) && !ob_tenant_allows_model(alpha, OB_IOV_LIT("LLAMA")) &&
                !ob_tenant_allows_model(alpha, OB_IOV_LIT("llama-2")),
            "allow-list match is exact");
  TAP_CHECK(ob_tenant_allows_model(beta, OB_IOV_LIT("anything")), "no list: every model");
  TAP_CHECK(!ob_tenant_allows_model(gamma, OB_IOV_LIT("llama")), "empty list: no model");

  ob_tenants_destroy(t);
  ob_tenants_destroy(NULL);
  ob_config_destroy(c);

  /* "*" anywhere in the list admits everything. */
  c = parse("{" HEAD ", \"tenants\": [{\"name\": \"s\", \"models\": [\"x\", \"*\"], \"keys\": [{\"id\": \"k\", "
            "\"secret\": \"s\"}]}]}");
  TAP_CHECK(c && ob_tenant_allows_model(&c->tenants[0], OB_IOV_LIT("y")), "\"*\" admits all");
  ob_config_destroy(c);
}

static void test_anonymous(void) {
  ob_config_t *c = parse("{" HEAD "}");
  ob_tenants_t *t = c ? ob_tenants_create(c->tenants, c->num_tenants) : NULL;
  TAP_CHECK(t && !ob_tenants_required(t), "no tenants: no key required");
  ob_identity_t id;
  TAP_CHECK(t && ident(t, "Bearer abc", "", &id) == OB_AUTH_UNKNOWN, "no tenants: any key is unknown");
  TAP_CHECK(t && ident(t, "", "", &id) == OB_AUTH_MISSING, "no tenants: no key is missing");
  ob_tenants_destroy(t);
  ob_config_destroy(c);
}

static void test_many(void) {
  enum { TENANTS = 1000, KEYS = 3 };
  ob_buf_t b;
  ob_buf_init(&b);
  ob_buf_append_str(&b, "{" HEAD ", \"tenants\": [");
  for (int i = 0; i < TENANTS; i++) {
    ob_buf_printf(&b, "%s{\"name\": \"t%d\", \"keys\": [", i ? ", " : "", i);
    for (int j = 0; j < KEYS; j++) {
      char secret[64], hex[65];
      snprintf(secret, sizeof secret, "sk-%d-%d", i, j);
      if (j == 1) { /* a mix of both forms */
        ob_buf_printf(&b, "%s{\"id\": \"k%d.%d\", \"secret\": \"%s\"}", j ? ", " : "", i, j, secret);
      } else {
        ob_tenant_hash_key(ob_iov_str(secret), hex);
        ob_buf_printf(&b, "%s{\"id\": \"k%d.%d\", \"sha256\": \"%s\"}", j ? ", " : "", i, j, hex);
      }
    }
    ob_buf_append_str(&b, "]}");
  }
  ob_buf_append_str(&b, "]}");
  *ob_buf_reserve(&b, 1) = '\0';
  ob_config_t *c = parse(b.base);
  ob_buf_dispose(&b);
  TAP_CHECK(c && c->num_tenants == TENANTS, "1000 tenants parse");
  if (!c) return;
  ob_tenants_t *t = ob_tenants_create(c->tenants, c->num_tenants);
  int found = 0, right = 0;
  for (int i = 0; i < TENANTS; i++) {
    for (int j = 0; j < KEYS; j++) {
      char auth[80];
      snprintf(auth, sizeof auth, j == 2 ? "sk-%d-%d" : "Bearer sk-%d-%d", i, j);
      ob_identity_t id;
      ob_auth_t r = j == 2 ? ident(t, "", auth, &id) : ident(t, auth, "", &id);
      if (r == OB_AUTH_OK) found++;
      if (r == OB_AUTH_OK && id.tenant_index == (size_t)i && id.key == &c->tenants[i].keys[j]) right++;
    }
  }
  TAP_EQ_INT(found, TENANTS * KEYS, "all 3000 keys found");
  TAP_EQ_INT(right, TENANTS * KEYS, "each resolves to its own tenant and key");
  ob_identity_t id;
  TAP_CHECK(ident(t, "Bearer sk-1000-0", "", &id) == OB_AUTH_UNKNOWN, "a near miss is unknown");
  ob_tenants_destroy(t);
  ob_config_destroy(c);
}

static ob_auth_t ident_memo(const ob_tenants_t *t, ob_tenant_memo_t *m, const char *auth, ob_identity_t *out) {
  *out = (ob_identity_t){0};
  return ob_tenants_identify_memo(t, m, ob_iov_str(auth), OB_IOV_LIT(""), out);
}

static bool all_zero(const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i]) return false;
  return true;
}

/* A connection's memo: the same key is answered from it, another key, a
 * reloaded directory and keys that are not known are not. */
static void test_memo(void) {
  const char *v1 = "{" HEAD ", \"tenants\": [{\"name\": \"a\", \"keys\": [{\"id\": \"a1\", \"secret\": \"ka\"}, "
                   "{\"id\": \"a2\", \"secret\": \"kd\", \"disabled\": true}]}, "
                   "{\"name\": \"b\", \"keys\": [{\"id\": \"b1\", \"secret\": \"kb\"}]}]}";
  /* The reload moves ka to tenant b, drops kb and adds a key longer than
   * a memo holds. */
  char longkey[128], v2[512];
  memset(longkey, 'x', sizeof longkey - 1);
  longkey[sizeof longkey - 1] = '\0';
  snprintf(v2, sizeof v2,
           "{" HEAD ", \"tenants\": [{\"name\": \"b\", \"keys\": [{\"id\": \"b9\", \"secret\": \"ka\"}, "
           "{\"id\": \"long\", \"secret\": \"%s\"}]}]}",
           longkey);
  ob_config_t *c1 = parse(v1), *c2 = parse(v2);
  TAP_CHECK(c1 && c2, "memo configs parse");
  if (!c1 || !c2) return;
  ob_tenants_t *t1 = ob_tenants_create(c1->tenants, c1->num_tenants), *t2 = ob_tenants_create(c2->tenants, c2->num_tenants);
  ob_tenant_memo_t m = {0};
  ob_identity_t id;
  TAP_CHECK(ident_memo(t1, &m, "Bearer ka", &id) == OB_AUTH_OK && id.key == &c1->tenants[0].keys[0],
            "memo: first request identified");
  TAP_CHECK(m.serial != 0 && m.len == 2 && memcmp(m.key, "ka", 2) == 0, "memo: the key is remembered");
  m.who.tenant_index = 7; /* marks an answer that came from the memo */
  TAP_CHECK(ident_memo(t1, &m, "Bearer ka", &id) == OB_AUTH_OK && id.tenant_index == 7,
            "memo: the same key is answered from the memo");
  TAP_CHECK(ident_memo(t1, &m, "Bearer kb", &id) == OB_AUTH_OK && id.tenant_index == 1 && strcmp(id.key->id, "b1") == 0,
            "memo: another key is looked up");
  TAP_CHECK(m.len == 2 && memcmp(m.key, "kb", 2) == 0 && m.who.tenant_index == 1, "memo: and replaces the memo");
  TAP_CHECK(ident_memo(t1, &m, "Bearer kc", &id) == OB_AUTH_UNKNOWN && memcmp(m.key, "kb", 2) == 0,
            "memo: an unknown key is not remembered");
  TAP_CHECK(ident_memo(t1, &m, "Bearer k", &id) == OB_AUTH_UNKNOWN, "memo: a prefix of the remembered key is unknown");
  TAP_CHECK(ident_memo(t1, &m, "Bearer kb2", &id) == OB_AUTH_UNKNOWN, "memo: a longer key is unknown");
  TAP_CHECK(ident_memo(t1, &m, "Bearer kd", &id) == OB_AUTH_DISABLED && ident_memo(t1, &m, "Bearer kd", &id) ==
                OB_AUTH_DISABLED && strcmp(id.key->id, "a2") == 0,
            "memo: a disabled key stays disabled from the memo");
  TAP_CHECK(ident_memo(t1, &m, "Bearer ka", &id) == OB_AUTH_OK, "memo: ka again");
  TAP_CHECK(ident_memo(t2, &m, "Bearer ka", &id) == OB_AUTH_OK && id.tenant == &c2->tenants[0] &&
                strcmp(id.key->id, "b9") == 0,
            "memo: after a reload the new directory answers, not the memo");
  TAP_CHECK(ident_memo(t2, &m, "Bearer kb", &id) == OB_AUTH_UNKNOWN, "memo: a key the reload dropped is unknown");
  ob_tenant_memo_t before = m;
  TAP_CHECK(ob_tenants_identify_memo(t2, &m, OB_IOV_LIT(""), ob_iov_str(longkey), &id) == OB_AUTH_OK &&
                strcmp(id.key->id, "long") == 0 && memcmp(&before, &m, sizeof m) == 0,
            "memo: a key longer than the memo holds is identified and leaves the memo as it was");
  TAP_CHECK(ident_memo(t2, NULL, "Bearer ka", &id) == OB_AUTH_OK, "memo: NULL memo works");
  ob_tenant_memo_wipe(&m);
  TAP_CHECK(all_zero(&m, sizeof m), "memo: wipe leaves no byte of the key");
  ob_tenants_destroy(t1);
  ob_tenants_destroy(t2);
  ob_config_destroy(c1);
  ob_config_destroy(c2);
}

int main(void) {
  test_hash_key();
  test_memo();
  test_lookup();
  test_anonymous();
  test_many();
  return tap_done();
}
