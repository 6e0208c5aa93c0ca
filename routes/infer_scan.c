/*
 * infer_scan.c: one strict pass over an inference request body that reads
 * what admission and routing need (routes.h, ob_json_infer_scan): a walker
 * over core's tokenizer, so what it takes for JSON is what every other
 * reader takes. Building a cJSON tree for this cost more than the rest of
 * the request's handling in obleth; the pass allocates nothing. Anything
 * it does not decode (an escaped key, \u0000) makes it give up, so its
 * answers always equal what the tree would have said.
 */
#include "routes.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

#define TEXT_DEPTH 8 /* as deep as strings count toward the prompt (routes/inference.c) */

typedef struct {
  ob_json_lexer_t lx;
  ob_json_tok_t t; /* the current token */
} walk_t;

static int next(walk_t *w) { return ob_json_next(&w->lx, &w->t); }

/* A number token; *val is what strtod makes of it. */
static bool num(ob_iov_t tok, double *val) {
  char buf[64];
  if (tok.len >= sizeof buf) return false;
  memcpy(buf, tok.base, tok.len);
  buf[tok.len] = '\0';
  *val = strtod(buf, NULL);
  return true;
}

/* Key comparison against a literal: the length first, no strlen. */
#define KEY_IS(k, lit) ((k).len == sizeof(lit) - 1 && memcmp((k).base, lit, sizeof(lit) - 1) == 0)

/*
 * The value that begins with the current token. text >= 0: its strings
 * count toward *chars at that text depth (strings directly, arrays element
 * by element, objects through all their "content" and "text" members), as
 * deep as TEXT_DEPTH.
 */
static bool val(walk_t *w, int text, uint64_t *chars) {
  int sub = text >= 0 && text < TEXT_DEPTH ? text + 1 : -1;
  switch (w->t.type) {
  case OB_JSON_TOK_STRING:
    if (w->t.flags & OB_JSON_NUL) return false; /* \u0000 would end the C string a tree holds */
    if (text >= 0) *chars += w->t.dlen;
    return true;
  case OB_JSON_TOK_NUMBER:
  case OB_JSON_TOK_TRUE:
  case OB_JSON_TOK_FALSE:
  case OB_JSON_TOK_NULL:
    return true;
  case OB_JSON_TOK_ARRAY:
    while (next(w) != OB_JSON_TOK_ARRAY_END)
      if (!val(w, sub, chars)) return false;
    return true;
  case OB_JSON_TOK_OBJECT:
    while (next(w) != OB_JSON_TOK_OBJECT_END) {
      if (w->t.type != OB_JSON_TOK_KEY || w->t.flags) return false; /* escaped: the tree decodes it */
      /* Every "content" and "text" counts, a repeated one too: the upstream
       * reads the last of two equal keys, cJSON the first, and text must
       * not hide from the estimate behind the one counted. */
      int t = KEY_IS(w->t.text, "content") || KEY_IS(w->t.text, "text") ? sub : -1;
      next(w);
      if (!val(w, t, chars)) return false;
    }
    return true;
  default:
    return false; /* ERROR */
  }
}

bool ob_json_infer_scan(ob_iov_t json, ob_infer_scan_t *out) {
  memset(out, 0, sizeof *out);
  walk_t w;
  ob_json_lexer_init(&w.lx, json);
  if (next(&w) != OB_JSON_TOK_OBJECT) return false;
  bool seen_mct = false, seen_mt = false;
  /* Top-level keys, for the duplicate check: the upstream reads the last of
   * two equal keys, this pass the first. Keys here are plain, so raw
   * equality is decoded equality. */
  ob_json_keys_t keys;
  ob_json_keys_init(&keys);
  bool ok = false;
  while (next(&w) != OB_JSON_TOK_OBJECT_END) {
    if (w.t.type != OB_JSON_TOK_KEY || w.t.flags) goto out;
    ob_iov_t k = w.t.text;
    ob_json_keys_add(&keys, k);
    next(&w);
    const char *v = w.t.raw.base;
    bool vok;
    if (KEY_IS(k, "messages") || KEY_IS(k, "prompt") || KEY_IS(k, "input")) {
      bool *has = k.base[0] == 'm' ? &out->has_messages : k.base[0] == 'p' ? &out->has_prompt : &out->has_input;
      vok = val(&w, *has ? -1 : 0, &out->text_chars);
      *has = true;
    } else if (((KEY_IS(k, "max_completion_tokens") && !seen_mct) || (KEY_IS(k, "max_tokens") && !seen_mt)) &&
               w.t.type == OB_JSON_TOK_NUMBER) {
      bool mct = k.len == 21;
      *(mct ? &seen_mct : &seen_mt) = true;
      *(mct ? &out->mct_number : &out->mt_number) = true;
      vok = num(w.t.text, mct ? &out->mct : &out->mt);
    } else {
      if (KEY_IS(k, "max_completion_tokens")) seen_mct = true;
      else if (KEY_IS(k, "max_tokens")) seen_mt = true;
      vok = val(&w, -1, &out->text_chars);
      if (vok && KEY_IS(k, "model") && out->model_count++ == 0) out->model = ob_iov(v, (size_t)(w.lx.pos - v));
    }
    if (!vok) goto out;
  }
  ok = next(&w) == OB_JSON_TOK_END && !ob_json_keys_dup(keys.k, keys.n);
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
