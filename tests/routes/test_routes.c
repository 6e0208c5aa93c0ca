/* Unit tests for routes/: longest-prefix matching and the raw JSON member
 * scanner used to patch the model name in place. */
#include "cache.h"
#include "core/json_cases.h"
#include "routes.h"
#include "tap.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

static void test_scan(void) {
  ob_json_member_t m;
  const char *j = "{ \"a\": [1, {\"model\": \"inner\"}], \"model\" : \"llama\" , \"z\": {\"k\": \"v\\\"}\"}}";
  TAP_EQ_INT(ob_json_find_member(ob_iov_str(j), OB_IOV_LIT("model"), &m), 1, "top-level model found");
  TAP_CHECK(ob_iov_eq(m.value, OB_IOV_LIT("\"llama\"")), "value span includes quotes only");
  TAP_EQ_INT(ob_json_find_member(ob_iov_str(j), OB_IOV_LIT("k"), &m), 0, "nested keys are not top-level");
  TAP_EQ_INT(ob_json_find_member(ob_iov_str(j), OB_IOV_LIT("z"), &m), 1, "object value");
  TAP_CHECK(ob_iov_eq(m.value, OB_IOV_LIT("{\"k\": \"v\\\"}\"}")), "object span with escaped quote and brace");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{\"model\":\"a\",\"model\":\"b\"}"), OB_IOV_LIT("model"), &m), -1,
             "duplicate key is ambiguous");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("[1,2]"), OB_IOV_LIT("model"), &m), -1, "array is not an object");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{\"model\":\"a\""), OB_IOV_LIT("model"), &m), -1, "truncated");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{\"model\":\"a\"} x"), OB_IOV_LIT("model"), &m), -1, "trailing garbage");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{}"), OB_IOV_LIT("model"), &m), 0, "empty object");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT(" {\"n\": -1.5e3, \"t\": true, \"model\": null}\n"), OB_IOV_LIT("model"), &m), 1,
             "numbers, literals");
  TAP_CHECK(ob_iov_eq(m.value, OB_IOV_LIT("null")), "literal span");
  /* Keys compare decoded, and an ambiguous object has no answer. */
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{\"model\":\"sim-model\",\"mod\\u0065l\":\"llama-3-8b\"}"),
                                 OB_IOV_LIT("model"), &m),
             -1, "an escaped duplicate key is ambiguous");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{\"stream\":false,\"model\":\"a\",\"str\\u0065am\":true}"),
                                 OB_IOV_LIT("model"), &m),
             -1, "any duplicate top-level key is ambiguous, not only the one asked for");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{\"mod\\u0065l\":\"x\"}"), OB_IOV_LIT("model"), &m), 1,
             "an escaped key is found decoded");
  TAP_CHECK(ob_iov_eq(m.value, OB_IOV_LIT("\"x\"")) && ob_iov_eq(m.key, OB_IOV_LIT("mod\\u0065l")), "its raw spans");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{\"model\":\"sim-model\\u0000llama\"}"), OB_IOV_LIT("model"), &m), -1,
             "\\u0000 in the model name: no answer (a tree would read it cut short)");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{\"model\\u0000\":\"a\"}"), OB_IOV_LIT("model"), &m), -1,
             "\\u0000 in a top-level key: no answer");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{\"a\":tru,\"model\":\"x\"}"), OB_IOV_LIT("model"), &m), -1,
             "tru is not a literal");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{\"a\":[nul],\"model\":\"x\"}"), OB_IOV_LIT("model"), &m), -1,
             "nor is nul, nested");
  TAP_EQ_INT(ob_json_find_member(OB_IOV_LIT("{\"a\":{\"k\":1,\"k\":2},\"model\":\"x\"}"), OB_IOV_LIT("model"), &m), 1,
             "duplicates below the top level are not read and pass");
  char deep[600];
  memset(deep, '[', 300);
  memset(deep + 300, ']', 300);
  char doc[700];
  snprintf(doc, sizeof doc, "{\"a\":%.*s}", 600, deep);
  TAP_EQ_INT(ob_json_find_member(ob_iov_str(doc), OB_IOV_LIT("model"), &m), -1, "nesting deeper than the bound is refused");
}

static ob_err_t nop(ob_exchange_t *x, void *d) {
  (void)x, (void)d;
  return OB_OK;
}

static void test_table(void) {
  const char *json = "{\"listeners\":[{\"address\":\"127.0.0.1:0\"}],"
                     "\"upstreams\":[{\"name\":\"u\",\"endpoints\":[\"http://127.0.0.1:1\"]}],"
                     "\"routes\":[{\"prefix\":\"/v1/\",\"class\":\"inference\",\"upstream\":\"u\"},"
                     "{\"prefix\":\"/v1/embeddings\",\"class\":\"passthrough\",\"upstream\":\"u\"},"
                     "{\"prefix\":\"/\",\"class\":\"passthrough\",\"upstream\":\"u\",\"rewrite\":\"/x/\"}]}";
  ob_config_errors_t errs = {0};
  ob_config_t *cfg = ob_config_parse(json, strlen(json), NULL, &errs);
  TAP_CHECK(cfg != NULL, "config parses (%zu errors)", errs.len);
  if (!cfg) return;
  ob_routes_t *t = ob_routes_create(cfg, NULL, 0);
  const ob_route_t *r = ob_routes_find(t, OB_IOV_LIT("/v1/embeddings"));
  TAP_CHECK(r && strcmp(r->cls->name, "passthrough") == 0 && r->prefix.len == 14, "longest prefix wins");
  r = ob_routes_find(t, OB_IOV_LIT("/v1/chat/completions?x=/v1/embeddings"));
  TAP_CHECK(r && strcmp(r->cls->name, "inference") == 0, "query is not part of the match");
  r = ob_routes_find(t, OB_IOV_LIT("/health"));
  TAP_CHECK(r && r->prefix.len == 1 && ob_iov_eq(r->rewrite, OB_IOV_LIT("/x/")), "fallback route with rewrite");
  ob_routes_destroy(t);
  ob_config_release(cfg);
  (void)nop;
}

static ob_usage_t feed_split(const char *text, size_t step) {
  ob_usage_t u;
  ob_usage_init(&u);
  size_t n = strlen(text);
  for (size_t i = 0; i < n; i += step) ob_usage_feed(&u, text + i, i + step <= n ? step : n - i);
  return u;
}

static void test_usage(void) {
  const char *body = "{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"the \\\"usage\\\": {} word\"}}],"
                     "\"usage\": {\"prompt_tokens\": 12, \"total_tokens\": 19, \"completion_tokens\": 7,"
                     "\"prompt_tokens_details\": {\"cached_tokens\": 3}}}";
  for (size_t step = 1; step <= 9; step += 4) {
    ob_usage_t u = feed_split(body, step);
    TAP_CHECK(u.found && u.prompt_tokens == 12 && u.completion_tokens == 7, "JSON body usage, split %zu (%llu/%llu)", step,
              (unsigned long long)u.prompt_tokens, (unsigned long long)u.completion_tokens);
  }
  const char *sse = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n"
                    "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":null}\n\n"
                    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n"
                    "data: [DONE]\n\n";
  ob_usage_t u = feed_split(sse, 3);
  TAP_CHECK(u.found && u.prompt_tokens == 5 && u.completion_tokens == 2, "SSE final usage chunk; usage:null skipped");
  TAP_EQ_INT(u.events, 4, "SSE events counted");
  u = feed_split("data: {\"x\":1}\r\n\r\ndata: {\"x\":2}\n\n", 1);
  TAP_CHECK(!u.found, "no usage");
  TAP_EQ_INT(u.events, 2, "CRLF event terminators counted");
  u = feed_split("{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}} {\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":40}}", 5);
  TAP_CHECK(u.found && u.prompt_tokens == 30 && u.completion_tokens == 40, "the last usage object wins");
  u = feed_split("{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":", 2);
  TAP_CHECK(!u.found, "a truncated usage object is not used");
}

static void test_infer_scan(void) {
  ob_infer_scan_t sc;
  const char *chat = "{\"model\":\"llama\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"hello\"},"
                     "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"h\\u00e9\\n\"}]}]}";
  TAP_CHECK(ob_json_infer_scan(ob_iov_str(chat), &sc), "a chat request is read in one pass");
  TAP_EQ_INT(sc.model_count, 1, "one model member");
  TAP_CHECK(ob_iov_eq(sc.model, OB_IOV_LIT("\"llama\"")), "model span with quotes");
  /* "hello" 5 + "h" 1 + U+00E9 2 + newline 1; "role" and "type" do not count */
  TAP_EQ_INT((long long)sc.text_chars, 9, "decoded bytes of content and text only");
  TAP_CHECK(sc.has_messages && !sc.has_prompt && !sc.has_input, "members present");
  TAP_CHECK(sc.mt_number && sc.mt == 16 && !sc.mct_number, "max_tokens read");
  TAP_CHECK(ob_json_infer_scan(OB_IOV_LIT("{\"input\":[\"ab\",\"\\ud83d\\ude00\"],\"max_tokens\":\"x\"}"), &sc) &&
                sc.text_chars == 6 && sc.has_input && !sc.mt_number && sc.model_count == 0,
            "embeddings input, surrogate pair is 4 bytes, a string max_tokens is not a number");
  /* A repeated content or text (the upstream reads the last, cJSON the
   * first) counts in full, in the pass and in the tree alike. */
  const char *dup = "{\"messages\":[{\"role\":\"user\",\"content\":\"ab\",\"content\":\"0123456789\"},"
                    "{\"content\":[{\"text\":\"x\",\"text\":\"yz\"}]}]}";
  TAP_CHECK(ob_json_infer_scan(ob_iov_str(dup), &sc), "nested repeated keys: read in one pass");
  TAP_EQ_INT((long long)sc.text_chars, 15, "every repeated content and text counts");
  cJSON *root = cJSON_Parse(dup);
  TAP_EQ_INT((long long)ob_json_tree_text_chars(root), 15, "the tree counts them alike");
  cJSON_Delete(root);
  TAP_CHECK(!ob_json_infer_scan(OB_IOV_LIT("{\"model\":\"a\",\"model\":\"b\"}"), &sc), "duplicate model: give up");
  TAP_CHECK(!ob_json_infer_scan(OB_IOV_LIT("{\"max_tokens\":1,\"model\":\"a\",\"max_tokens\":100000}"), &sc),
            "duplicate max_tokens (the upstream reads the last): give up");
  TAP_CHECK(!ob_json_infer_scan(OB_IOV_LIT("{\"stream\":false,\"stream\":true}"), &sc), "duplicate stream: give up");
  TAP_CHECK(!ob_json_infer_scan(OB_IOV_LIT("{\"model\":\"a\"} x"), &sc), "trailing bytes: give up");
  TAP_CHECK(!ob_json_infer_scan(OB_IOV_LIT("{\"mod\\u0065l\":\"a\"}"), &sc), "escaped key: give up");
  TAP_CHECK(!ob_json_infer_scan(OB_IOV_LIT("{\"prompt\":\"a\\u0000b\"}"), &sc), "\\u0000: give up");
  TAP_CHECK(!ob_json_infer_scan(OB_IOV_LIT("{\"prompt\":\"\\udc00\"}"), &sc), "lone low surrogate: give up");
  TAP_CHECK(!ob_json_infer_scan(OB_IOV_LIT("{\"a\":01}"), &sc), "leading zero: not JSON");
  TAP_CHECK(!ob_json_infer_scan(OB_IOV_LIT("[1]"), &sc), "not an object");
  TAP_CHECK(!ob_json_infer_scan(OB_IOV_LIT("{\"a\":\"\x01\"}"), &sc), "raw control character: not JSON");
  char deep[600];
  memset(deep, '[', 300);
  memset(deep + 300, ']', 300);
  char doc[700];
  snprintf(doc, sizeof doc, "{\"a\":%.*s}", 600, deep);
  TAP_CHECK(!ob_json_infer_scan(ob_iov_str(doc), &sc), "nesting beyond the bound: give up");
}

/*
 * The walkers over core's tokenizer agree on every conformance case of
 * tests/core/json_cases.h, alone and as the value of a member "a": the
 * strict check, the member finder, the inference scan and the canonical
 * form say invalid exactly when the tokenizer does, and cJSON parses
 * whatever it calls valid (cJSON also takes some invalid text: see
 * fuzz/fuzz_json_diff.c).
 */
static int walkers_agree(ob_iov_t in, int want, bool wrapped) {
  bool valid = want & JC_V;
  int bad = 0;
  bad += (ob_json_validate(in, NULL, NULL) == 0) != valid;
  bad += (ob_json_check(in, 0, NULL, NULL, NULL) == 0) != valid;
  ob_buf_t b;
  ob_buf_init(&b);
  bad += ob_cache_canonical(in, NULL, 0, &b) != (valid && !(want & JC_DUP));
  ob_buf_dispose(&b);
  cJSON *root = cJSON_ParseWithLength(in.base, in.len);
  if (valid && !root) bad++;
  cJSON_Delete(root);
  if (wrapped) {
    ob_json_member_t m;
    /* \u0000 in a top-level string member is ambiguous to the finder. */
    bad += ob_json_find_member(in, OB_IOV_LIT("a"), &m) != (valid && !(want & JC_NUL) ? 1 : -1);
    ob_infer_scan_t sc;
    /* It gives up on \u0000 and escaped keys (the tree decides), so only
     * "invalid: no" and "plain valid: yes" are its to say. */
    bool r = ob_json_infer_scan(in, &sc);
    bad += valid ? !(want & (JC_NUL | JC_DUP)) && !r : r;
  }
  return bad;
}

static void test_json_agreement(void) {
  int bad = 0;
  for (size_t i = 0; i < JSON_CASES; i++) {
    const json_case_t *c = &json_cases[i];
    ob_iov_t in = ob_iov(c->json, json_case_len(c));
    ob_buf_t w;
    ob_buf_init(&w);
    ob_buf_append_str(&w, "{\"a\":");
    ob_buf_append_iov(&w, in);
    ob_buf_append_str(&w, "}");
    int n = walkers_agree(in, c->want, false) + walkers_agree(ob_buf_iov(&w), c->want, true);
    if (n) printf("#   walkers disagree: %s\n", c->name);
    bad += n;
    ob_buf_dispose(&w);
  }
  TAP_EQ_INT(bad, 0, "check, finder, inference scan, canonical form and cJSON agree on every conformance case");
  /* The depth cap is one for all: 128 containers nest, 129 do not. */
  for (int depth = OB_JSON_MAX_DEPTH; depth <= OB_JSON_MAX_DEPTH + 1; depth++) {
    ob_buf_t d;
    ob_buf_init(&d);
    ob_buf_append_str(&d, "{\"a\":");
    for (int i = 1; i < depth; i++) ob_buf_append_str(&d, "[");
    for (int i = 1; i < depth; i++) ob_buf_append_str(&d, "]");
    ob_buf_append_str(&d, "}");
    bool fits = depth <= OB_JSON_MAX_DEPTH;
    TAP_EQ_INT(walkers_agree(ob_buf_iov(&d), fits ? JC_V : JC_I, true), 0,
               fits ? "depth 128: every walker reads it" : "depth 129: every walker refuses it");
    ob_buf_dispose(&d);
  }
}

int main(void) {
  test_json_agreement();
  test_infer_scan();
  test_usage();
  test_scan();
  test_table();
  return tap_done();
}
