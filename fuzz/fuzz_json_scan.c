/*
 * fuzz_json_scan.c: the raw JSON member scanner of routes/ (used to patch the
 * model name in place). It must never read outside the input, and a member
 * it reports must lie inside the input with its value starting a JSON value.
 *
 * Also the one-pass inference scan (ob_json_infer_scan), differentially:
 * whenever it accepts a body, cJSON must parse it too and every fact must
 * agree with what the tree says (the text count is the tree walk that
 * routes/inference.c falls back to, ob_json_tree_text_chars).
 *
 * And core's strict walk (ob_json_check), which decides on every body the
 * gateway reads: what it passes at level 1, cJSON parses with no two
 * top-level keys equal as cJSON decodes them, and a member found by key is
 * the member cJSON finds; a deeper level never passes more.
 */
#include "routes.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

static void check_infer_scan(ob_iov_t in) {
  ob_infer_scan_t sc;
  if (!ob_json_infer_scan(in, &sc)) return;
  cJSON *root = cJSON_ParseWithLength(in.base, in.len);
  if (!root || !cJSON_IsObject(root)) abort();
  if (ob_json_tree_text_chars(root) != sc.text_chars) abort();
  if (sc.has_messages != (cJSON_GetObjectItemCaseSensitive(root, "messages") != NULL)) abort();
  if (sc.has_prompt != (cJSON_GetObjectItemCaseSensitive(root, "prompt") != NULL)) abort();
  if (sc.has_input != (cJSON_GetObjectItemCaseSensitive(root, "input") != NULL)) abort();
  const cJSON *mct = cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens");
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
  if (sc.mct_number != cJSON_IsNumber(mct) || sc.mt_number != cJSON_IsNumber(mt)) abort();
  if (sc.mct_number && sc.mct != mct->valuedouble) abort();
  if (sc.mt_number && sc.mt != mt->valuedouble) abort();
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
  if ((sc.model_count > 0) != (m != NULL)) abort();
  if (sc.model_count > 0) {
    bool str = sc.model.base[0] == '"';
    if (str != (bool)cJSON_IsString(m)) abort();
    if (str && !memchr(sc.model.base, '\\', sc.model.len) &&
        (strlen(m->valuestring) != sc.model.len - 2 || memcmp(m->valuestring, sc.model.base + 1, sc.model.len - 2)))
      abort();
  }
  cJSON_Delete(root);
}

static void check_strict(ob_iov_t in) {
  int r1 = ob_json_check(in, 1, NULL, NULL, NULL), r0 = ob_json_check(in, 0, NULL, NULL, NULL);
  if (r1 == 0 && r0 != 0) abort();
  if (ob_json_check(in, 2, NULL, NULL, NULL) == 0 && r1 != 0) abort();
  if (r1 != 0) return;
  cJSON *root = cJSON_ParseWithLength(in.base, in.len);
  if (!root) abort(); /* strict JSON (lone surrogates are refused now): cJSON reads it */
  if (cJSON_IsObject(root)) {
    for (const cJSON *a = root->child; a; a = a->next)
      for (const cJSON *b = a->next; b; b = b->next)
        if (strcmp(a->string, b->string) == 0) abort();
    ob_json_member_t m;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "model");
    int f = ob_json_find_member(in, OB_IOV_LIT("model"), &m);
    if (f != (t != NULL)) abort();
    if (t && cJSON_IsString(t) && (m.value.base[0] != '"' || strlen(t->valuestring) > m.value.len)) abort();
  }
  cJSON_Delete(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* Copy so reads past the end are caught by ASan. */
  char *buf = malloc(size ? size : 1);
  memcpy(buf, data, size);
  ob_iov_t in = ob_iov(buf, size);
  static const char *keys[] = {"model", "a", "", "stream"};
  for (size_t k = 0; k < 4; k++) {
    ob_json_member_t m;
    int r = ob_json_find_member(in, ob_iov_str(keys[k]), &m);
    if (r < -1 || r > 1) abort();
    if (r == 1) {
      if (m.value.base < buf || m.value.base + m.value.len > buf + size || m.value.len == 0) abort();
      if (m.key.base < buf || m.key.base + m.key.len > buf + size) abort();
      char c = m.value.base[0];
      if (!(c == '"' || c == '{' || c == '[' || c == '-' || (c >= '0' && c <= '9') || c == 't' || c == 'f' || c == 'n'))
        abort();
    }
  }
  check_infer_scan(in);
  check_strict(in);
  free(buf);
  return 0;
}
