/*
 * session.c: the MCP session id wrapper. The gateway hands clients
 * "obm1." + base64url(nonce | AES-256-GCM(endpoint index, upstream session
 * id) | tag) instead of the upstream's id (the same token for the same
 * session every time), so any gateway holding the key
 * can route the session back to its endpoint with no shared store, and a
 * client can neither read nor forge which endpoint it lands on.
 */
#include "mcp.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#define PREFIX "obm1."
#define NONCE 12
#define TAG 16
#define MAX_SID 1024

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void b64url(ob_buf_t *out, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
    char q[4] = {b64[v >> 18], b64[(v >> 12) & 63], b64[(v >> 6) & 63], b64[v & 63]};
    ob_buf_append(out, q, i + 2 < n ? 4 : i + 1 < n ? 3 : 2);
  }
}

static int b64val(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

/* Decode into out (at most cap bytes); the length, or -1. */
static long unb64url(ob_iov_t in, uint8_t *out, size_t cap) {
  if (in.len % 4 == 1) return -1;
  size_t k = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < in.len; i++) {
    int v = b64val(in.base[i]);
    if (v < 0) return -1;
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (k == cap) return -1;
      out[k++] = (uint8_t)(acc >> bits);
    }
  }
  return (long)k;
}

bool ob_mcp_session_wrap(const uint8_t key[32], uint16_t endpoint, ob_iov_t sid, ob_buf_t *out) {
  if (sid.len > MAX_SID) return false;
  uint8_t buf[NONCE + 2 + MAX_SID + TAG];
  uint8_t plain[2 + MAX_SID];
  plain[0] = (uint8_t)(endpoint >> 8), plain[1] = (uint8_t)endpoint;
  memcpy(plain + 2, sid.base, sid.len);
  size_t plen = 2 + sid.len;
  /* The nonce is derived from the plaintext (SIV style): servers repeat
   * their session id on every answer, and the client must see one stable
   * token, not a new one per answer. Equal plaintexts are the only nonce
   * reuse, which reveals nothing but their equality. */
  uint8_t mac[32];
  unsigned int maclen = 0;
  if (!HMAC(EVP_sha256(), key, 32, plain, plen, mac, &maclen)) return false;
  memcpy(buf, mac, NONCE);
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  int len = 0, fin = 0;
  bool ok = c && EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, buf) == 1 &&
            EVP_EncryptUpdate(c, buf + NONCE, &len, plain, (int)plen) == 1 &&
            EVP_EncryptFinal_ex(c, buf + NONCE + len, &fin) == 1 &&
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG, buf + NONCE + plen) == 1;
  EVP_CIPHER_CTX_free(c);
  if (!ok) return false;
  ob_buf_append_str(out, PREFIX);
  b64url(out, buf, NONCE + plen + TAG);
  return true;
}

bool ob_mcp_session_unwrap(const uint8_t key[32], ob_iov_t token, uint16_t *endpoint, ob_buf_t *out) {
  size_t pl = sizeof PREFIX - 1;
  if (token.len <= pl || memcmp(token.base, PREFIX, pl) != 0) return false;
  uint8_t buf[NONCE + 2 + MAX_SID + TAG];
  long n = unb64url(ob_iov(token.base + pl, token.len - pl), buf, sizeof buf);
  if (n < NONCE + 2 + TAG) return false;
  size_t clen = (size_t)n - NONCE - TAG;
  uint8_t plain[2 + MAX_SID];
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  int len = 0, fin = 0;
  bool ok = c && EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, buf) == 1 &&
            EVP_DecryptUpdate(c, plain, &len, buf + NONCE, (int)clen) == 1 &&
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG, buf + NONCE + clen) == 1 &&
            EVP_DecryptFinal_ex(c, plain + len, &fin) == 1;
  EVP_CIPHER_CTX_free(c);
  if (!ok) return false;
  *endpoint = (uint16_t)(plain[0] << 8 | plain[1]);
  ob_buf_append(out, plain + 2, clen - 2);
  return true;
}
