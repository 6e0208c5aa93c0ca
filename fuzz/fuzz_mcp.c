/*
 * fuzz_mcp.c: the MCP route class's inspection of hostile bytes. The input
 * is a request body to inspect, a response to the tools/list filter (whose
 * output must be a fixed point: filtering it again changes nothing), an SSE
 * stream (the output must not depend on how the stream is split), and a
 * session token to unwrap (and, wrapped, must unwrap to itself).
 */
#include "mcp.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *tools[] = {"echo", "add"};
static ob_config_mcp_tools_t allow = {"everything", tools, 2};

static void sse(const ob_mcp_filter_t *f, const char *p, size_t n, size_t step, ob_buf_t *out) {
  ob_mcp_sse_t s;
  ob_mcp_sse_init(&s, 4096);
  for (size_t i = 0; i < n; i += step) ob_mcp_sse_feed(&s, f, p + i, i + step <= n ? step : n - i, out);
  ob_mcp_sse_finish(&s, f, out);
  ob_mcp_sse_dispose(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data;
  ob_mcp_body_t b;
  int rc = ob_mcp_inspect(p, size, &b);
  if (rc == 0) {
    /* What the policy read is unambiguous: no message, and no params
     * object, has two keys that cJSON decodes equal. */
    const cJSON *one = b.root;
    for (size_t i = 0; i < b.n; i++) {
      if (b.msgs[i].tool && !b.msgs[i].method) abort();
      const cJSON *m = b.batch ? (i == 0 ? b.root->child : one->next) : b.root;
      one = m;
      const cJSON *params = cJSON_GetObjectItemCaseSensitive(m, "params");
      for (const cJSON *o = m; o; o = o == m && cJSON_IsObject(params) ? params : NULL)
        for (const cJSON *x = o->child; x; x = x->next)
          for (const cJSON *y = x->next; y; y = y->next)
            if (strcmp(x->string, y->string) == 0) abort();
    }
    ob_mcp_body_dispose(&b);
  } else if (rc != -32700 && rc != -32600) {
    abort();
  }

  char *ids[] = {"1", "\"a\""};
  ob_mcp_filter_t f = {&allow, ids, 2};
  ob_buf_t once, twice;
  ob_buf_init(&once), ob_buf_init(&twice);
  if (ob_mcp_filter_json(&f, p, size, &once) && ob_mcp_filter_json(&f, once.base, once.len, &twice)) abort();

  ob_buf_t whole, bytes, spans;
  ob_buf_init(&whole), ob_buf_init(&bytes), ob_buf_init(&spans);
  sse(&f, p, size, size ? size : 1, &whole);
  sse(&f, p, size, 1, &bytes);
  sse(&f, p, size, size ? (size_t)(data[0] % 7) + 1 : 1, &spans);
  /* Empty outputs have no buffer at all, and memcmp(NULL, NULL, 0) is
   * undefined. */
  if (whole.len != bytes.len || (whole.len && memcmp(whole.base, bytes.base, whole.len) != 0)) abort();
  if (whole.len != spans.len || (whole.len && memcmp(whole.base, spans.base, whole.len) != 0)) abort();

  static const uint8_t key[32] = {7};
  uint16_t ep;
  ob_buf_t sid, tok;
  ob_buf_init(&sid), ob_buf_init(&tok);
  ob_mcp_session_unwrap(key, ob_iov(p, size), &ep, &sid);
  ob_buf_reset(&sid);
  if (ob_mcp_session_wrap(key, (uint16_t)size, ob_iov(p, size), &tok)) {
    if (!ob_mcp_session_unwrap(key, ob_buf_iov(&tok), &ep, &sid) || ep != (uint16_t)size || sid.len != size ||
        (size && memcmp(sid.base, p, size) != 0))
      abort();
  }
  ob_buf_dispose(&once), ob_buf_dispose(&twice), ob_buf_dispose(&whole), ob_buf_dispose(&bytes);
  ob_buf_dispose(&spans), ob_buf_dispose(&sid), ob_buf_dispose(&tok);
  return 0;
}
