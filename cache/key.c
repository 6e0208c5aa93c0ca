/*
 * key.c: cache keys, request directives and the entry format.
 *
 * Entry layout (little-endian): "OBC1", expires_ms u64, status u16,
 * flags u8 (1 = streamed), prompt u64, completion u64, then three
 * length-prefixed (u32) byte strings: scope, content type, body.
 */
#include "cache.h"

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack: no allocation per key */
#include <endian.h>
#include <string.h>
#include <xxhash.h>

static void put_len(XXH3_state_t *st, ob_iov_t v) {
  uint64_t n = v.len;
  XXH3_128bits_update(st, &n, sizeof n);
  if (v.len) XXH3_128bits_update(st, v.base, v.len);
}

static ob_cache_key_t to_key(XXH128_hash_t h) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  ob_cache_key_t k;
  memcpy(k.b, c.digest, 16);
  return k;
}

ob_cache_key_t ob_cache_key(const ob_iov_t *parts, size_t n) {
  /* Short tuples (the usual key: scope, method, route, path, upstream,
   * model, body hash) are laid out on the stack and hashed in one call:
   * a streaming update costs about as much as hashing 50 bytes. XXH3's
   * streaming and one-shot forms agree on the same bytes, so both paths
   * give one key. */
  uint8_t flat[512];
  size_t len = 0;
  bool fits = true;
  for (size_t i = 0; i < n && fits; i++) {
    size_t room = sizeof flat - len;
    fits = room >= sizeof(uint64_t) && parts[i].len <= room - sizeof(uint64_t);
    if (!fits) break;
    uint64_t pl = parts[i].len;
    memcpy(flat + len, &pl, sizeof pl);
    if (pl) memcpy(flat + len + sizeof pl, parts[i].base, pl);
    len += sizeof pl + pl;
  }
  if (fits) return to_key(XXH3_128bits(flat, len));
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  for (size_t i = 0; i < n; i++) put_len(&st, parts[i]);
  return to_key(XXH3_128bits_digest(&st));
}

ob_cache_key_t ob_cache_body_id(ob_iov_t body) {
  /* One call over the whole body: the streaming state costs more than the
   * hash on bodies this size. The seed keeps it apart from cache keys. */
  return to_key(XXH3_128bits_withSeed(body.base, body.len, 0x6f626c657468ull));
}

ob_cache_directives_t ob_cache_directives(ob_iov_t v) {
  ob_cache_directives_t d = {false, false};
  size_t i = 0;
  while (i < v.len) {
    size_t j = i;
    while (j < v.len && v.base[j] != ',') j++;
    ob_iov_t tok = ob_iov_trim(ob_iov(v.base + i, j - i));
    const char *eq = memchr(tok.base, '=', tok.len);
    if (eq) tok.len = (size_t)(eq - tok.base);
    tok = ob_iov_trim(tok);
    if (ob_iov_eq_str_nocase(tok, "no-store")) d.no_store = true;
    if (ob_iov_eq_str_nocase(tok, "no-cache")) d.no_cache = true;
    i = j + 1;
  }
  return d;
}

static void put64(ob_buf_t *b, uint64_t v) {
  uint8_t x[8];
  for (int i = 0; i < 8; i++) x[i] = (uint8_t)(v >> (8 * i));
  ob_buf_append(b, x, 8);
}

static void put32(ob_buf_t *b, uint32_t v) {
  uint8_t x[4];
  for (int i = 0; i < 4; i++) x[i] = (uint8_t)(v >> (8 * i));
  ob_buf_append(b, x, 4);
}

void ob_cache_entry_encode(const ob_cache_entry_t *e, ob_buf_t *out) {
  ob_buf_append(out, "OBC1", 4);
  put64(out, e->expires_ms);
  uint8_t st[3] = {(uint8_t)e->status, (uint8_t)(e->status >> 8), e->streamed ? 1 : 0};
  ob_buf_append(out, st, 3);
  put64(out, e->prompt_tokens);
  put64(out, e->completion_tokens);
  const ob_iov_t parts[3] = {e->scope, e->content_type, e->body};
  for (int i = 0; i < 3; i++) {
    put32(out, (uint32_t)parts[i].len);
    ob_buf_append_iov(out, parts[i]);
  }
}

/* Little-endian fields; read whole (a hit decodes its entry twice: the
 * store checks the expiry, the answer takes the parts). */
static uint64_t get64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return le64toh(v);
}
static uint32_t get32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return le32toh(v);
}

bool ob_cache_entry_decode(ob_iov_t v, ob_cache_entry_t *e) {
  const uint8_t *p = (const uint8_t *)v.base;
  size_t n = v.len, off = 31;
  if (n < off || memcmp(p, "OBC1", 4) != 0) return false;
  e->expires_ms = get64(p + 4);
  e->status = (uint16_t)(p[12] | p[13] << 8);
  /* The encoder writes 0 or 1; anything else is not an entry it made. */
  if (p[14] > 1) return false;
  e->streamed = p[14];
  e->prompt_tokens = get64(p + 15);
  e->completion_tokens = get64(p + 23);
  ob_iov_t *parts[3] = {&e->scope, &e->content_type, &e->body};
  for (int i = 0; i < 3; i++) {
    if (n - off < 4) return false;
    uint64_t len = get32(p + off);
    off += 4;
    if (len > n - off) return false;
    *parts[i] = ob_iov(v.base + off, (size_t)len);
    off += (size_t)len;
  }
  return off == n;
}
