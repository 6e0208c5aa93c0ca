/*
 * infer_scan.c: one strict pass over an inference request body that reads
 * what admission and routing need (routes.h, ob_json_infer_scan). Building
 * a cJSON tree for this cost more than the rest of the request's handling
 * in obleth; the pass allocates nothing. Anything it does not decode makes
 * it give up, so its answers always equal what the tree would have said.
 */
#include "routes.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

#define MAX_DEPTH 64
#define TEXT_DEPTH 8 /* as deep as strings count toward the prompt (routes/inference.c) */

typedef struct {
  const char *p, *end;
} js_t;

static void ws(js_t *s) {
  while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

/* At a '"': past the closing quote. *len: decoded bytes (UTF-8); *plain:
 * no escapes. */
static bool str(js_t *s, uint64_t *len, bool *plain) {
  const char *p = s->p + 1;
  uint64_t n = 0;
  bool esc = false;
  for (;;) {
    const char *q = p;
    q = ob_json_str_run(q, s->end);
    n += (uint64_t)(q - p);
    if (q >= s->end || (unsigned char)*q < 0x20) return false;
    if (*q == '"') {
      s->p = q + 1;
      *len = n;
      *plain = !esc;
      return true;
    }
    esc = true;
    if (q + 1 >= s->end) return false;
    char e = q[1];
    if (e == 'u') {
      if (s->end - q < 6) return false;
      int c = ob_json_hex4(q + 2);
      if (c <= 0) return false; /* \u0000 would end the C string a tree holds */
      p = q + 6;
      if (c >= 0xDC00 && c <= 0xDFFF) return false;
      if (c >= 0xD800 && c <= 0xDBFF) {
        if (s->end - p < 6 || p[0] != '\\' || p[1] != 'u') return false;
        int lo = ob_json_hex4(p + 2);
        if (lo < 0xDC00 || lo > 0xDFFF) return false;
        p += 6;
        n += 4;
      } else {
        n += c < 0x80 ? 1 : c < 0x800 ? 2 : 3;
      }
    } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
      n++;
      p = q + 2;
    } else {
      return false;
    }
  }
}

/* A number token; *val (when asked) is what strtod makes of it. */
static bool num(js_t *s, double *val) {
  const char *start = s->p, *e = ob_json_num_end(s->p, s->end);
  if (!e) return false;
  s->p = e;
  if (val) {
    char buf[64];
    size_t n = (size_t)(s->p - start);
    if (n >= sizeof buf) return false;
    memcpy(buf, start, n);
    buf[n] = '\0';
    *val = strtod(buf, NULL);
  }
  return true;
}

static bool lit(js_t *s, const char *w, size_t n) {
  if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0) return false;
  s->p += n;
  return true;
}

/* Key comparison against a literal: the length first, no strlen. */
#define KEY_IS(k, lit) ((k).len == sizeof(lit) - 1 && memcmp((k).base, lit, sizeof(lit) - 1) == 0)

/* At a '"' in key position: the raw key (no escapes allowed) and the ':'. */
static bool key(js_t *s, ob_iov_t *k) {
  const char *start = s->p + 1;
  uint64_t len;
  bool plain;
  if (!str(s, &len, &plain) || !plain) return false;
  *k = ob_iov(start, (size_t)(s->p - 1 - start));
  ws(s);
  if (s->p >= s->end || *s->p != ':') return false;
  s->p++;
  ws(s);
  return true;
}

/*
 * One value. text >= 0: its strings count toward *chars at that text depth
 * (strings directly, arrays element by element, objects through all their
 * "content" and "text" members), as deep as TEXT_DEPTH.
 */
static bool val(js_t *s, int depth, int text, uint64_t *chars) {
  if (s->p >= s->end || depth > MAX_DEPTH) return false;
  int sub = text >= 0 && text < TEXT_DEPTH ? text + 1 : -1;
  switch (*s->p) {
  case '"': {
    uint64_t len;
    bool plain;
    if (!str(s, &len, &plain)) return false;
    if (text >= 0) *chars += len;
    return true;
  }
  case '[':
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == ']') {
      s->p++;
      return true;
    }
    for (;;) {
      if (!val(s, depth + 1, sub, chars)) return false;
      ws(s);
      if (s->p >= s->end) return false;
      if (*s->p == ']') {
        s->p++;
        return true;
      }
      if (*s->p++ != ',') return false;
      ws(s);
    }
  case '{': {
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == '}') {
      s->p++;
      return true;
    }
    for (;;) {
      ob_iov_t k;
      if (s->p >= s->end || *s->p != '"' || !key(s, &k)) return false;
      /* Every "content" and "text" counts, a repeated one too: the upstream
       * reads the last of two equal keys, cJSON the first, and text must
       * not hide from the estimate behind the one counted. */
      int t = KEY_IS(k, "content") || KEY_IS(k, "text") ? sub : -1;
      if (!val(s, depth + 1, t, chars)) return false;
      ws(s);
      if (s->p >= s->end) return false;
      if (*s->p == '}') {
        s->p++;
        return true;
      }
      if (*s->p++ != ',') return false;
      ws(s);
    }
  }
  case 't': return lit(s, "true", 4);
  case 'f': return lit(s, "false", 5);
  case 'n': return lit(s, "null", 4);
  default: return num(s, NULL);
  }
}

bool ob_json_infer_scan(ob_iov_t json, ob_infer_scan_t *out) {
  memset(out, 0, sizeof *out);
  js_t s = {json.base, json.base + json.len};
  ws(&s);
  if (s.p >= s.end || *s.p != '{') return false;
  s.p++;
  ws(&s);
  bool seen_mct = false, seen_mt = false;
  /* Top-level keys, for the duplicate check: the upstream reads the last of
   * two equal keys, this pass the first. Keys here are plain (key()), so
   * raw equality is decoded equality. */
  ob_json_keys_t keys;
  ob_json_keys_init(&keys);
  bool ok = false;
  if (s.p < s.end && *s.p == '}') {
    s.p++;
  } else {
    for (;;) {
      ob_iov_t k;
      if (s.p >= s.end || *s.p != '"' || !key(&s, &k)) goto out;
      ob_json_keys_add(&keys, k);
      const char *v = s.p;
      bool vok;
      if (KEY_IS(k, "messages") || KEY_IS(k, "prompt") || KEY_IS(k, "input")) {
        bool *has = k.base[0] == 'm' ? &out->has_messages : k.base[0] == 'p' ? &out->has_prompt : &out->has_input;
        vok = val(&s, 1, *has ? -1 : 0, &out->text_chars);
        *has = true;
      } else if ((KEY_IS(k, "max_completion_tokens") && !seen_mct) || (KEY_IS(k, "max_tokens") && !seen_mt)) {
        bool mct = k.len == 21;
        bool *seen = mct ? &seen_mct : &seen_mt;
        *seen = true;
        if (s.p < s.end && (*s.p == '-' || (*s.p >= '0' && *s.p <= '9'))) {
          vok = num(&s, mct ? &out->mct : &out->mt);
          if (mct) out->mct_number = true;
          else out->mt_number = true;
        } else {
          vok = val(&s, 1, -1, &out->text_chars);
        }
      } else {
        vok = val(&s, 1, -1, &out->text_chars);
        if (vok && KEY_IS(k, "model") && out->model_count++ == 0) out->model = ob_iov(v, (size_t)(s.p - v));
      }
      if (!vok) goto out;
      ws(&s);
      if (s.p >= s.end) goto out;
      if (*s.p == '}') {
        s.p++;
        break;
      }
      if (*s.p++ != ',') goto out;
      ws(&s);
    }
  }
  ws(&s);
  ok = s.p == s.end && !ob_json_keys_dup(keys.k, keys.n);
out:
  ob_json_keys_dispose(&keys);
  return ok;
}

/* The same count over a cJSON tree: what the pass must agree with, used
 * when it gives up. */
static uint64_t tree_chars(const cJSON *v, int depth) {
  if (!v || depth > TEXT_DEPTH) return 0;
  if (cJSON_IsString(v)) return strlen(v->valuestring);
  uint64_t n = 0;
  if (cJSON_IsArray(v)) {
    const cJSON *e;
    cJSON_ArrayForEach(e, v) n += tree_chars(e, depth + 1);
  } else if (cJSON_IsObject(v)) {
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
      if (strcmp(e->string, "content") == 0 || strcmp(e->string, "text") == 0) n += tree_chars(e, depth + 1);
    }
  }
  return n;
}

uint64_t ob_json_tree_text_chars(const cJSON *root) {
  return tree_chars(cJSON_GetObjectItemCaseSensitive(root, "messages"), 0) +
         tree_chars(cJSON_GetObjectItemCaseSensitive(root, "prompt"), 0) +
         tree_chars(cJSON_GetObjectItemCaseSensitive(root, "input"), 0);
}
