/*
 * fuzz_h1_common.h: the checks both HTTP/1.1 fuzz drivers share: views
 * inside the input, trimming, byte-by-byte reference validators, and the
 * chunked decoder compared across whole, byte-at-a-time and uneven feeds.
 * Included by fuzz_h1_request.c and fuzz_h1_response.c only.
 */
#ifndef OB_FUZZ_H1_COMMON_H
#define OB_FUZZ_H1_COMMON_H

#include "http.h"

#include <stdint.h>
#include <stdlib.h>

#define CHECK(c)              \
  do {                        \
    if (!(c)) abort();        \
  } while (0)

static bool inside(ob_iov_t v, const char *buf, size_t len) {
  if (!v.base) return v.len == 0;
  uintptr_t b = (uintptr_t)v.base, s = (uintptr_t)buf;
  return b >= s && b <= s + len && v.len <= s + len - b;
}

static bool trimmed(ob_iov_t v) {
  return v.len == 0 || (v.base[0] != ' ' && v.base[0] != '\t' && v.base[v.len - 1] != ' ' && v.base[v.len - 1] != '\t');
}

/* A byte-by-byte reference, independent of the parser's word-at-a-time scan. */
static bool value_ok(ob_iov_t v) {
  for (size_t i = 0; i < v.len; i++) {
    unsigned char c = (unsigned char)v.base[i];
    if (c != '\t' && (c < 0x20 || c == 0x7f)) return false;
  }
  return true;
}

static uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

static uint64_t fnv(const char *p, size_t n, uint64_t h) {
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ULL;
  return h;
}

/* ---------------------------------------------------------------- chunked */

typedef struct chunk_run {
  int err;
  const char *why;
  size_t used;
  bool done;
  uint64_t data_hash;
  size_t data_len;
} chunk_run_t;

/* Decode in[0..len) in pieces: piece 0 means all that is left, otherwise
 * sizes come from seed. */
static chunk_run_t chunk_decode(const char *in, size_t len, int mode, uint64_t seed) {
  chunk_run_t o = {0, NULL, 0, false, 0xcbf29ce484222325ULL, 0};
  ob_h1_chunked_t d;
  ob_h1_chunked_init(&d);
  size_t pos = 0;
  while (pos < len && !d.done) {
    size_t n = len - pos;
    if (mode == 1) {
      n = 1;
    } else if (mode == 2) {
      seed = mix(seed + 0x9e3779b97f4a7c15ULL);
      size_t piece = 1 + (size_t)(seed % 17);
      if (n > piece) n = piece;
    }
    size_t dl = 12345;
    const char *why = NULL;
    int r = ob_h1_chunked_step(&d, in + pos, n, &dl, &why);
    if (r < 0) {
      CHECK(r == OB_ERR_PROTOCOL && why != NULL && !d.done);
      o.err = r;
      o.why = why;
      break;
    }
    CHECK((size_t)r <= n);
    CHECK(dl == 0 || dl == (size_t)r);   /* data and framing never mixed */
    CHECK(r > 0 || d.done);              /* progress unless done */
    if (dl) {
      o.data_hash = fnv(in + pos, dl, o.data_hash);
      o.data_len += dl;
    }
    pos += (size_t)r;
    if (d.done) {
      /* Once done, nothing more is consumed. */
      size_t dl2 = 1;
      CHECK(ob_h1_chunked_step(&d, in + pos, len - pos, &dl2, &why) == 0 && dl2 == 0);
    }
  }
  o.used = pos;
  o.done = d.done;
  CHECK(o.used <= len && o.data_len <= o.used);
  return o;
}

/* Decodes a chunked body three ways and checks they agree. Returns the bytes
 * the body occupied, or -1 when it is bad or incomplete. */
static long check_chunked(const char *in, size_t len, uint64_t seed) {
  chunk_run_t a = chunk_decode(in, len, 0, seed);
  chunk_run_t b = chunk_decode(in, len, 1, seed);
  chunk_run_t c = chunk_decode(in, len, 2, seed);
  CHECK(a.err == b.err && a.err == c.err);
  CHECK(a.why == b.why && a.why == c.why);
  CHECK(a.done == b.done && a.done == c.done);
  CHECK(a.data_len == b.data_len && a.data_len == c.data_len);
  CHECK(a.data_hash == b.data_hash && a.data_hash == c.data_hash);
  if (!a.err) CHECK(a.used == b.used && a.used == c.used);
  return a.done ? (long)a.used : -1;
}

/* ---------------------------------------------------------------- heads */

#endif
