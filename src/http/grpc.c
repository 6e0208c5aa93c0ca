/*
 * grpc.c: gRPC-over-HTTP/2 wire helpers that need no sockets: header values
 * (grpc-timeout in both directions, percent-encoded grpc-message), the
 * length-prefixed message framing, and the few protobuf bytes the gateway
 * reads or writes itself (the health service). Used by admission for
 * deadlines and by the grpc route classes; fuzzed by fuzz/fuzz_grpc.c.
 */
#include "http.h"

#include <stdio.h>

bool ob_http_parse_grpc_timeout(ob_iov_t v, uint64_t *us) {
  if (v.len < 2 || v.len > 9) return false;
  uint64_t n = 0;
  for (size_t i = 0; i + 1 < v.len; i++) {
    char c = v.base[i];
    if (c < '0' || c > '9') return false;
    n = n * 10 + (uint64_t)(c - '0');
  }
  switch (v.base[v.len - 1]) {
  case 'H': *us = n * 3600ull * 1000000ull; return true;
  case 'M': *us = n * 60ull * 1000000ull; return true;
  case 'S': *us = n * 1000000ull; return true;
  case 'm': *us = n * 1000ull; return true;
  case 'u': *us = n; return true;
  case 'n': *us = (n + 999) / 1000; return true;
  default: return false;
  }
}

size_t ob_grpc_format_timeout(uint64_t us, char out[16]) {
  /* The finest unit whose value fits the 8 digits the wire allows; coarser
   * units round up so the upstream never gets more time than is left. */
  static const struct {
    uint64_t div;
    char unit;
  } units[] = {{1, 'u'}, {1000, 'm'}, {1000000, 'S'}, {60000000, 'M'}, {3600000000ull, 'H'}};
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    uint64_t v = (us + units[i].div - 1) / units[i].div;
    if (v <= 99999999) return (size_t)snprintf(out, 16, "%llu%c", (unsigned long long)v, units[i].unit);
  }
  return (size_t)snprintf(out, 16, "99999999H");
}

void ob_grpc_percent_encode(ob_buf_t *out, ob_iov_t msg) {
  static const char hex[] = "0123456789ABCDEF";
  for (size_t i = 0; i < msg.len; i++) {
    unsigned char c = (unsigned char)msg.base[i];
    if (c >= 0x20 && c <= 0x7E && c != '%') {
      ob_buf_append(out, &msg.base[i], 1);
    } else {
      char e[3] = {'%', hex[c >> 4], hex[c & 15]};
      ob_buf_append(out, e, 3);
    }
  }
}

/* ---------------------------------------------------------------- framing */

void ob_grpc_scan_init(ob_grpc_scan_t *s, uint32_t max_message) {
  memset(s, 0, sizeof *s);
  s->max_message = max_message;
}

void ob_grpc_scan_feed(ob_grpc_scan_t *s, const char *p, size_t n) {
  while (n > 0 && !s->bad) {
    if (s->remaining > 0) {
      size_t take = n < s->remaining ? n : (size_t)s->remaining;
      s->remaining -= take, s->payload_bytes += take, p += take, n -= take;
      if (s->remaining == 0) s->messages++;
      continue;
    }
    s->hdr[s->hdr_len++] = (uint8_t)*p++;
    n--;
    if (s->hdr_len < 5) continue;
    s->hdr_len = 0;
    uint32_t len = (uint32_t)s->hdr[1] << 24 | (uint32_t)s->hdr[2] << 16 | (uint32_t)s->hdr[3] << 8 | s->hdr[4];
    if (s->hdr[0] > 1 || (s->max_message && len > s->max_message)) {
      s->bad = true;
      break;
    }
    if (s->hdr[0]) s->compressed++;
    if (len == 0) s->messages++;
    s->remaining = len;
  }
}

bool ob_grpc_scan_at_boundary(const ob_grpc_scan_t *s) { return !s->bad && s->hdr_len == 0 && s->remaining == 0; }

int ob_grpc_single_message(ob_iov_t body, ob_iov_t *msg) {
  if (body.len < 5) return -1;
  const uint8_t *b = (const uint8_t *)body.base;
  uint32_t len = (uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4];
  if (b[0] > 1 || (uint64_t)len != body.len - 5) return -1;
  if (b[0] == 1) return 0; /* compressed: we do not inflate */
  *msg = ob_iov(body.base + 5, len);
  return 1;
}

void ob_grpc_append_frame(ob_buf_t *out, ob_iov_t msg) {
  uint8_t h[5] = {0, (uint8_t)(msg.len >> 24), (uint8_t)(msg.len >> 16), (uint8_t)(msg.len >> 8), (uint8_t)msg.len};
  ob_buf_append(out, h, 5);
  ob_buf_append_iov(out, msg);
}

/* ---------------------------------------------------------------- protobuf */

static bool varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t r = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end) return false;
    uint8_t b = *(*p)++;
    r |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = r;
      return true;
    }
  }
  return false;
}

int ob_pb_find_bytes(ob_iov_t msg, uint32_t field, ob_iov_t *out) {
  const uint8_t *p = (const uint8_t *)msg.base, *end = p + msg.len;
  int found = 0;
  while (p < end) {
    uint64_t key, v;
    if (!varint(&p, end, &key)) return -1;
    uint32_t type = (uint32_t)(key & 7);
    uint64_t num = key >> 3;
    if (num == 0) return -1;
    switch (type) {
    case 0:
      if (!varint(&p, end, &v)) return -1;
      break;
    case 1:
      if (end - p < 8) return -1;
      p += 8;
      break;
    case 5:
      if (end - p < 4) return -1;
      p += 4;
      break;
    case 2:
      if (!varint(&p, end, &v) || v > (uint64_t)(end - p)) return -1;
      if (num == field) {
        /* Last one wins, as protobuf parsers do for scalar fields. */
        *out = ob_iov((const char *)p, (size_t)v);
        found = 1;
      }
      p += v;
      break;
    default:
      return -1;
    }
  }
  return found;
}
