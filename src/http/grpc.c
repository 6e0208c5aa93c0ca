/*
 * grpc.c: gRPC-over-HTTP/2 helpers that need no sockets (the wire format's
 * header values). Used by admission for deadlines and by the grpc route
 * class.
 */
#include "http.h"

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
