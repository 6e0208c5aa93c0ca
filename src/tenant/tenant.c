/*
 * tenant.c: the key directory. Indexes every key of a config snapshot by its
 * SHA-256 and resolves the API key a request carries (Authorization: Bearer
 * or x-api-key) to a tenant and key. It owns only the index; tenants, keys
 * and their digests belong to the snapshot, which the directory borrows. It
 * must not touch sockets, the clock, or anything outside the snapshot, and
 * it never copies a presented key: the key is hashed where it lies in the
 * caller's header slice.
 *
 * The index is an open-addressing table with linear probing, keyed by the
 * first 8 bytes of each digest. SHA-256 output is uniform, so those bytes
 * need no further mixing; the table is at most half full, so a lookup is
 * one or two probes. A probe whose 8 bytes match is confirmed by comparing
 * all 32 bytes with CRYPTO_memcmp (constant time). Which slot a lookup
 * visits depends only on the digest of what the client sent, which tells
 * the client nothing it could not compute itself.
 */
#include "tenant.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct slot {
  const ob_tenant_key_conf_t *key; /* NULL = empty */
  uint64_t h;                 /* first 8 bytes of key->sha256 */
  size_t tenant;              /* index in t->tenants */
} slot_t;

struct ob_tenants {
  const ob_tenant_conf_t *tenants; /* borrowed */
  size_t num_tenants;
  uint64_t serial;        /* unique per directory in the process (memos name it) */
  slot_t *slots;
  size_t mask; /* capacity - 1; capacity is a power of two */
};

static uint64_t digest_head(const uint8_t d[32]) {
  uint64_t h;
  memcpy(&h, d, sizeof h);
  return h;
}

/* The digest is fetched once and the context reused per thread: with
 * OpenSSL 3, EVP_sha256() plus a fresh context per call cost more than the
 * hash itself on every request. A thread's context is freed when the
 * thread ends (workers are threads). */
static EVP_MD *sha256_md;
static pthread_key_t sha256_key;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_ctx_free(void *ctx) { EVP_MD_CTX_free(ctx); }

static void sha256_init(void) {
  sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
  pthread_key_create(&sha256_key, sha256_ctx_free);
}

static void sha256(ob_iov_t in, uint8_t out[32]) {
  static _Thread_local EVP_MD_CTX *ctx;
  unsigned int n = 0;
  if (!ctx) {
    pthread_once(&sha256_once, sha256_init);
    if ((ctx = EVP_MD_CTX_new())) pthread_setspecific(sha256_key, ctx);
  }
  /* These only fail when the library cannot provide SHA-256 at all, in
   * which case no key could ever be checked. */
  if (!ctx || !sha256_md || EVP_DigestInit_ex2(ctx, sha256_md, NULL) != 1 ||
      EVP_DigestUpdate(ctx, in.len ? in.base : "", in.len) != 1 || EVP_DigestFinal_ex(ctx, out, &n) != 1 || n != 32) {
    fprintf(stderr, "obleth: SHA-256 unavailable\n");
    abort();
  }
}

ob_tenants_t *ob_tenants_create(const ob_tenant_conf_t *tenants, size_t num_tenants) {
  static uint64_t serials;
  ob_tenants_t *t = ob_xcalloc(1, sizeof *t);
  t->tenants = tenants;
  t->num_tenants = tenants ? num_tenants : 0;
  t->serial = __atomic_add_fetch(&serials, 1, __ATOMIC_RELAXED);
  size_t nkeys = 0;
  for (size_t i = 0; i < t->num_tenants; i++) nkeys += tenants[i].num_keys;
  size_t cap = 8;
  while (cap < nkeys * 2) cap *= 2;
  t->slots = ob_xcalloc(cap, sizeof *t->slots);
  t->mask = cap - 1;
  for (size_t i = 0; i < t->num_tenants; i++) {
    const ob_tenant_conf_t *tn = &tenants[i];
    for (size_t j = 0; j < tn->num_keys; j++) {
      /* The config refuses two keys with one digest, so every key gets
       * its own slot and a lookup can stop at the first full match. */
      uint64_t h = digest_head(tn->keys[j].sha256);
      size_t k = (size_t)h & t->mask;
      while (t->slots[k].key) k = (k + 1) & t->mask;
      t->slots[k] = (slot_t){.key = &tn->keys[j], .h = h, .tenant = i};
    }
  }
  return t;
}

void ob_tenants_destroy(ob_tenants_t *t) {
  if (!t) return;
  free(t->slots);
  t->slots = NULL;
  free(t);
}

bool ob_tenants_required(const ob_tenants_t *t) {
  return t && t->num_tenants > 0;
}

static bool is_ows(char c) {
  return c == ' ' || c == '\t';
}

/*
 * The token of "Bearer <token>": scheme matched without regard to case,
 * then one or more spaces (or tabs), then the token with white space trimmed
 * at both ends. An empty slice for any other scheme or an empty token.
 */
static ob_iov_t bearer_token(ob_iov_t auth) {
  static const char scheme[] = "bearer";
  const size_t slen = sizeof scheme - 1;
  auth = ob_iov_trim(auth);
  if (auth.len <= slen || !ob_iov_eq_str_nocase(ob_iov(auth.base, slen), scheme) || !is_ows(auth.base[slen]))
    return ob_iov(NULL, 0);
  return ob_iov_trim(ob_iov(auth.base + slen, auth.len - slen));
}

ob_auth_t ob_tenants_identify(const ob_tenants_t *t, ob_iov_t authorization, ob_iov_t x_api_key, ob_identity_t *out) {
  return ob_tenants_identify_memo(t, NULL, authorization, x_api_key, out);
}

ob_auth_t ob_tenants_identify_memo(const ob_tenants_t *t, ob_tenant_memo_t *m, ob_iov_t authorization,
                                   ob_iov_t x_api_key, ob_identity_t *out) {
  ob_iov_t key = bearer_token(authorization);
  ob_iov_t alt = ob_iov_trim(x_api_key);
  if (!key.len) key = alt;
  else if (alt.len && (alt.len != key.len || CRYPTO_memcmp(alt.base, key.base, key.len) != 0)) return OB_AUTH_AMBIGUOUS;
  if (!key.len) return OB_AUTH_MISSING;
  if (!t) return OB_AUTH_UNKNOWN;
  /* Constant time over the key: on a connection an edge balancer shares
   * between clients, timing must not tell one client another's key (only
   * whether it has the same length). */
  if (m && m->serial == t->serial && m->len == key.len && CRYPTO_memcmp(m->key, key.base, key.len) == 0) {
    if (out) *out = m->who;
    return m->result;
  }

  uint8_t d[32];
  sha256(key, d);
  uint64_t h = digest_head(d);
  const slot_t *hit = NULL;
  for (size_t k = (size_t)h & t->mask; t->slots[k].key; k = (k + 1) & t->mask) {
    const slot_t *s = &t->slots[k];
    if (s->h == h && CRYPTO_memcmp(s->key->sha256, d, sizeof d) == 0) {
      hit = s;
      break;
    }
  }
  if (!hit) return OB_AUTH_UNKNOWN;

  const ob_tenant_conf_t *tn = &t->tenants[hit->tenant];
  ob_identity_t who = {.tenant = tn, .key = hit->key, .tenant_index = hit->tenant};
  ob_auth_t result = hit->key->disabled || tn->disabled ? OB_AUTH_DISABLED : OB_AUTH_OK;
  if (out) *out = who;
  /* Only keys that are known are remembered: a client guessing keys pays
   * for every guess. */
  if (m && key.len <= sizeof m->key) {
    if (m->serial) ob_tenant_memo_wipe(m);
    m->serial = t->serial;
    m->result = result;
    m->who = who;
    m->len = (uint8_t)key.len;
    memcpy(m->key, key.base, key.len);
  }
  return result;
}

void ob_tenant_memo_wipe(ob_tenant_memo_t *m) { explicit_bzero(m, sizeof *m); }

bool ob_tenant_allows_model(const ob_tenant_conf_t *t, ob_iov_t model) {
  if (!t) return false;
  if (t->all_models) return true;
  for (size_t i = 0; i < t->num_models; i++)
    if (t->models[i] && ob_iov_eq(ob_iov_str(t->models[i]), model)) return true;
  return false;
}

void ob_tenant_hash_key(ob_iov_t secret, char out[65]) {
  static const char hex[] = "0123456789abcdef";
  uint8_t d[32];
  sha256(secret, d);
  for (size_t i = 0; i < sizeof d; i++) {
    out[2 * i] = hex[d[i] >> 4];
    out[2 * i + 1] = hex[d[i] & 15];
  }
  out[64] = '\0';
}
