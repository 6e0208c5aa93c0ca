/*
 * fuzz_json_diff.c: differential fuzzing of the JSON readers. The same
 * bytes go to core's tokenizer and to every walker over it, and to cJSON;
 * the process aborts when they disagree on valid vs invalid:
 *  - ob_json_check at level 0 gives exactly the tokenizer's verdict; at a
 *    level it may add only "ambiguous" (never "invalid" on valid text, and
 *    never 0 on invalid text);
 *  - the canonical form exists exactly when the text is valid and no
 *    object holds two keys equal decoded (check at every level would then
 *    be 0 or ambiguous for \u0000 only); it is a fixed point;
 *  - the member finder answers -1 on invalid text; the inference scan
 *    never accepts invalid text;
 *  - cJSON parses every valid text, and a string's decoded bytes (when
 *    the text is one string without \u0000) are cJSON's valuestring.
 * Known, intended differences, not checked: cJSON also accepts text the
 * tokenizer refuses (trailing bytes, leading zeros, '+', ".5", raw control
 * characters, invalid UTF-8, white space beyond the four, nesting past
 * 128), and cuts strings at \u0000. The inference scan gives up (false) on
 * valid text it does not decode (\u0000, escaped keys, long numbers).
 */
#include "cache.h"
#include "routes.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Whether the tokenizer says valid, and whether any string holds \u0000;
 * every string's decoding is checked against its dlen on the way. */
static bool tokenize(ob_iov_t in, bool *nul) {
  ob_json_lexer_t lx;
  ob_json_tok_t t;
  int type;
  *nul = false;
  ob_json_lexer_init(&lx, in);
  while ((type = ob_json_next(&lx, &t)) > OB_JSON_TOK_END) {
    if (t.raw.base < in.base || t.raw.base + t.raw.len > in.base + in.len) abort();
    if (t.type != OB_JSON_TOK_STRING && t.type != OB_JSON_TOK_KEY) continue;
    if (t.flags & OB_JSON_NUL) *nul = true;
    char *d = malloc(t.dlen + 1);
    if (ob_json_str_decode(t.text, d) != t.dlen) abort();
    /* The decoded bytes are valid UTF-8: tokenize them as a string. */
    ob_buf_t q;
    ob_buf_init(&q);
    ob_buf_append_json_str(&q, ob_iov(d, t.dlen));
    if (ob_json_validate(ob_buf_iov(&q), NULL, NULL) != 0) abort();
    ob_buf_dispose(&q);
    free(d);
  }
  if (type == OB_JSON_TOK_ERROR && (lx.pos < in.base || lx.pos > in.base + in.len || !lx.why)) abort();
  return type == OB_JSON_TOK_END;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* Copy so reads past the end are caught by ASan. */
  char *buf = malloc(size ? size : 1);
  memcpy(buf, data, size);
  ob_iov_t in = ob_iov(buf, size);
  bool nul;
  bool valid = tokenize(in, &nul);
  if ((ob_json_validate(in, NULL, NULL) == 0) != valid) abort();

  int c0 = ob_json_check(in, 0, NULL, NULL, NULL), c1 = ob_json_check(in, 1, NULL, NULL, NULL);
  int call = ob_json_check(in, INT_MAX, NULL, NULL, NULL);
  if (c0 != (valid ? 0 : OB_JSON_INVALID)) abort();
  if (valid ? (c1 == OB_JSON_INVALID || call == OB_JSON_INVALID) : (c1 != OB_JSON_INVALID || call != OB_JSON_INVALID))
    abort();

  static const char *const skip[] = {"user", "stream_options"};
  ob_buf_t once, twice;
  ob_buf_init(&once), ob_buf_init(&twice);
  bool canon = ob_cache_canonical(in, skip, 2, &once);
  if (canon && !valid) abort();
  /* Valid but refused: only for keys equal decoded, which check at every
   * level calls ambiguous too. */
  if (valid && !canon && call != OB_JSON_AMBIGUOUS) abort();
  if (valid && !nul && (call == 0) != canon) abort();
  if (canon) {
    if (!ob_cache_canonical(ob_buf_iov(&once), skip, 2, &twice)) abort();
    if (once.len != twice.len || memcmp(once.base, twice.base, once.len) != 0) abort();
  }
  ob_buf_dispose(&once), ob_buf_dispose(&twice);

  ob_json_member_t m;
  if (!valid && ob_json_find_member(in, OB_IOV_LIT("model"), &m) != -1) abort();
  ob_infer_scan_t sc;
  if (!valid && ob_json_infer_scan(in, &sc)) abort();

  cJSON *root = cJSON_ParseWithLength(buf, size);
  if (valid && !root) abort();
  if (valid && !nul && cJSON_IsString(root)) {
    ob_json_lexer_t lx;
    ob_json_tok_t t;
    ob_json_lexer_init(&lx, in);
    ob_json_next(&lx, &t);
    char *d = malloc(t.dlen + 1);
    size_t n = ob_json_str_decode(t.text, d);
    if (n != strlen(root->valuestring) || memcmp(d, root->valuestring, n) != 0) abort();
    free(d);
  }
  cJSON_Delete(root);
  free(buf);
  return 0;
}
