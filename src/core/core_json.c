/*
 * core_json.c: ob_json_check, the walker over the tokenizer
 * (core_jsontok.c) that rejects what a policy reader and the upstream's
 * parser could read differently (duplicate keys, \u0000) where the gateway
 * reads. The gateway decides policy on bodies it forwards unchanged; the
 * upstream (Node's JSON.parse, Python's json.loads) keeps the last of two
 * equal keys, cJSON the first, and cJSON cuts a string at \u0000. Pure: no
 * allocation except the key list of a body with more keys than fit inline.
 */
#include "core.h"

int ob_json_check(ob_iov_t json, int levels, ob_json_member_cb *cb, void *ud, const char **why) {
  ob_json_lexer_t lx;
  ob_json_tok_t t;
  size_t mark[OB_JSON_MAX_DEPTH]; /* an open object's first key in ks */
  int odepth = 0, type, rv = 0;
  bool read = false;    /* the token is a member value of an object at a checked level */
  bool top_obj = false; /* the value is an object: its members go to cb */
  ob_iov_t top_key = {0};
  const char *top_val = NULL, *w = NULL;
  ob_json_keys_t ks;
  ob_json_keys_init(&ks);
  ob_json_lexer_init(&lx, json);
  while ((type = ob_json_next(&lx, &t)) > OB_JSON_TOK_END) {
    bool read_this = read;
    read = false;
    if (rv) continue; /* ambiguous: only whether it is JSON at all is left to say */
    if (lx.depth == 1 && type == OB_JSON_TOK_KEY) {
      top_key = t.text;
      top_val = NULL;
    } else if (lx.depth == 1 && top_obj && !top_val && type != OB_JSON_TOK_OBJECT_END) {
      top_val = t.raw.base; /* a scalar member value */
    } else if (lx.depth == 2 && top_obj && !top_val && (type == OB_JSON_TOK_OBJECT || type == OB_JSON_TOK_ARRAY)) {
      top_val = t.raw.base; /* a container member value */
    }
    switch (type) {
    case OB_JSON_TOK_OBJECT:
      if (lx.depth == 1) top_obj = true;
      mark[lx.depth - 1] = ks.n;
      odepth++;
      break;
    case OB_JSON_TOK_OBJECT_END: {
      size_t n = ks.n - mark[lx.depth];
      if (n >= 2 && ob_json_keys_dup(ks.k + mark[lx.depth], n)) {
        w = "duplicate key";
        rv = OB_JSON_AMBIGUOUS;
      }
      ks.n = mark[lx.depth];
      odepth--;
      break;
    }
    case OB_JSON_TOK_KEY:
      if (odepth > levels) break;
      if (t.flags & OB_JSON_NUL) {
        w = "\\u0000 in a key";
        rv = OB_JSON_AMBIGUOUS;
        break;
      }
      ob_json_keys_add(&ks, t.text);
      read = true;
      break;
    case OB_JSON_TOK_STRING:
      if (read_this && (t.flags & OB_JSON_NUL)) {
        w = "\\u0000 in a string member the gateway reads";
        rv = OB_JSON_AMBIGUOUS;
      }
      break;
    }
    /* A top-level member's value is complete when the walk is back in the
     * top-level object after it. */
    if (!rv && cb && top_val && lx.depth == 1 && type != OB_JSON_TOK_KEY) {
      cb(ud, top_key, ob_iov(top_val, (size_t)(lx.pos - top_val)));
      top_val = NULL;
    }
  }
  ob_json_keys_dispose(&ks);
  if (type == OB_JSON_TOK_ERROR) rv = OB_JSON_INVALID, w = lx.why;
  if (rv && why) *why = w;
  return rv;
}
