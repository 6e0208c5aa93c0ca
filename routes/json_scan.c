/*
 * json_scan.c: a minimal scanner over raw JSON text that finds top-level
 * object members by key and reports their byte spans. It exists so the
 * inference class can replace the "model" value in place instead of parsing
 * and re-serializing the whole body (which would change every other byte the
 * client sent). Nesting depth is bounded so hostile input cannot recurse.
 */
#include "routes.h"

#define MAX_DEPTH 128

typedef struct {
  const char *p, *end;
} scan_t;

static void ws(scan_t *s) {
  while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

/* On a '"': advance past the closing quote. */
static bool skip_string(scan_t *s) {
  s->p++;
  while (s->p < s->end) {
    s->p = ob_json_str_run(s->p, s->end);
    if (s->p >= s->end) return false;
    char c = *s->p++;
    if (c == '"') return true;
    if (c == '\\') {
      if (s->p >= s->end) return false;
      s->p++;
    } else if ((unsigned char)c < 0x20) {
      return false;
    }
  }
  return false;
}

/* Inside an object: skip `"key" :` and the white space after it. */
static bool skip_key(scan_t *s) {
  if (s->p >= s->end || *s->p != '"' || !skip_string(s)) return false;
  ws(s);
  if (s->p >= s->end || *s->p != ':') return false;
  s->p++;
  ws(s);
  return true;
}

/* Skip one value of any type; only the shape is checked, not every rule. */
static bool skip_value(scan_t *s) {
  int depth = 0;
  char stack[MAX_DEPTH];
  ws(s);
  for (;;) {
    if (s->p >= s->end) return false;
    char c = *s->p;
    if (c == '"') {
      if (!skip_string(s)) return false;
    } else if (c == '{' || c == '[') {
      if (depth == MAX_DEPTH) return false;
      stack[depth++] = c == '{' ? '}' : ']';
      s->p++;
      ws(s);
      if (s->p < s->end && *s->p == stack[depth - 1]) {
        s->p++;
        depth--;
      } else {
        if (c == '{' && !skip_key(s)) return false;
        continue;
      }
    } else if (c == '-' || (c >= '0' && c <= '9') || c == 't' || c == 'f' || c == 'n') {
      while (s->p < s->end && *s->p != ',' && *s->p != '}' && *s->p != ']' && *s->p != ' ' && *s->p != '\t' &&
             *s->p != '\n' && *s->p != '\r' && *s->p != ':')
        s->p++;
    } else {
      return false;
    }
    /* after a value: close containers or move to the next element */
    for (;;) {
      ws(s);
      if (depth == 0) return true;
      if (s->p >= s->end) return false;
      if (*s->p == stack[depth - 1]) {
        s->p++;
        depth--;
        continue;
      }
      if (*s->p != ',') return false;
      s->p++;
      ws(s);
      if (stack[depth - 1] == '}' && !skip_key(s)) return false;
      break;
    }
  }
}

int ob_json_find_member(ob_iov_t json, ob_iov_t key, ob_json_member_t *out) {
  scan_t s = {json.base, json.base + json.len};
  int found = 0;
  ws(&s);
  if (s.p >= s.end || *s.p != '{') return -1;
  s.p++;
  ws(&s);
  if (s.p < s.end && *s.p == '}') return 0;
  for (;;) {
    ws(&s);
    if (s.p >= s.end || *s.p != '"') return -1;
    const char *k = s.p + 1;
    if (!skip_string(&s)) return -1;
    ob_iov_t raw_key = ob_iov(k, (size_t)(s.p - 1 - k));
    ws(&s);
    if (s.p >= s.end || *s.p != ':') return -1;
    s.p++;
    ws(&s);
    const char *v = s.p;
    if (!skip_value(&s)) return -1;
    const char *vend = s.p;
    while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t' || vend[-1] == '\n' || vend[-1] == '\r')) vend--;
    if (ob_iov_eq(raw_key, key)) {
      if (found) return -1;
      found = 1;
      out->key = raw_key;
      out->value = ob_iov(v, (size_t)(vend - v));
    }
    ws(&s);
    if (s.p >= s.end) return -1;
    if (*s.p == '}') {
      s.p++;
      ws(&s);
      return s.p == s.end ? found : -1;
    }
    if (*s.p != ',') return -1;
    s.p++;
  }
}
