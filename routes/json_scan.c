/*
 * json_scan.c: finds a top-level object member by key in raw JSON text and
 * reports its byte spans, so the inference class can replace the "model"
 * value in place instead of parsing and re-serializing the whole body (which
 * would change every other byte the client sent). The walk is core's strict
 * one (ob_json_check): keys compare decoded, and a body whose top-level keys
 * repeat (decoded) or hold \u0000 has no answer, since the upstream's parser
 * may read another member than the one found here.
 */
#include "routes.h"

typedef struct {
  ob_iov_t key;
  ob_json_member_t *out;
  int found;
} find_t;

static void on_member(void *ud, ob_iov_t key, ob_iov_t value) {
  find_t *f = ud;
  bool eq = key.len == f->key.len ? memcmp(key.base, f->key.base, key.len) == 0
                                   : memchr(key.base, '\\', key.len) && ob_json_str_cmp(key, f->key) == 0;
  if (f->found || !eq) return;
  f->found = 1;
  f->out->key = key;
  f->out->value = value;
}

int ob_json_find_member(ob_iov_t json, ob_iov_t key, ob_json_member_t *out) {
  size_t i = 0;
  while (i < json.len && (json.base[i] == ' ' || json.base[i] == '\t' || json.base[i] == '\n' || json.base[i] == '\r'))
    i++;
  if (i == json.len || json.base[i] != '{') return -1;
  find_t f = {key, out, 0};
  return ob_json_check(json, 1, on_member, &f, NULL) == 0 ? f.found : -1;
}
