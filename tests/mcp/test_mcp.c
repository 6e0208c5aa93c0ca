/*
 * test_mcp.c: the pure parts of the MCP route class: JSON-RPC inspection,
 * tool allow-lists, the tools/list filter over JSON and SSE (split at every
 * byte), and the session id wrapper.
 */
#include "mcp.h"
#include "tap.h"

static const char *tools_json =
    "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"tools\":[{\"name\":\"echo\"},{\"name\":\"add\"},{\"name\":\"secret\"}]}}";

static void test_inspect(void) {
  ob_mcp_body_t b;
  TAP_EQ_INT(ob_mcp_inspect("{nope", 5, &b), -32700, "not JSON: parse error");
  TAP_EQ_INT(ob_mcp_inspect("[]", 2, &b), -32600, "empty batch: invalid request");
  TAP_EQ_INT(ob_mcp_inspect("[1]", 3, &b), -32600, "batch of non-objects: invalid request");
  TAP_EQ_INT(ob_mcp_inspect("\"x\"", 3, &b), -32600, "a string: invalid request");
  const char *one = "{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"tools/call\",\"params\":{\"name\":\"add\"}}";
  TAP_EQ_INT(ob_mcp_inspect(one, strlen(one), &b), 0, "tools/call inspected");
  TAP_CHECK(!b.batch && b.n == 1 && strcmp(b.msgs[0].method, "tools/call") == 0 && strcmp(b.msgs[0].tool, "add") == 0 &&
                cJSON_IsString(b.msgs[0].id),
            "method, tool and id");
  ob_mcp_body_dispose(&b);
  const char *batch = "[{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"},"
                      "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{}},"
                      "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}]";
  TAP_EQ_INT(ob_mcp_inspect(batch, strlen(batch), &b), 0, "batch inspected");
  TAP_CHECK(b.batch && b.n == 3 && b.msgs[0].method && !b.msgs[0].id && strcmp(b.msgs[1].tool, "") == 0 &&
                !b.msgs[2].method,
            "notification without id, tools/call without a name is the empty tool, a response has no method");
  ob_mcp_body_dispose(&b);
  /* Ambiguous bodies: cJSON reads the first of two keys, the servers the
   * last, so the gateway would check another tool than the server calls. */
  static const char *const ambiguous[][2] = {
      {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"search\",\"name\":\"delete_all\"}}",
       "duplicate params.name"},
      {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"method\":\"tools/call\",\"params\":{\"name\":\"delete_all\"}}",
       "duplicate method"},
      {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"search\"},\"params\":{\"name\":\"delete_all\"}}",
       "two params objects"},
      {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"search\",\"n\\u0061me\":\"delete_all\"}}",
       "an escaped duplicate params.name"},
      {"{\"jsonrpc\":\"2.0\",\"id\":1,\"id\":2,\"method\":\"tools/list\"}", "duplicate id (the tools/list filter matches ids)"},
      {"[{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"},"
       "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"search\",\"name\":\"delete_all\"}}]",
       "duplicate params.name in a batch"},
      {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"search\\u0000delete_all\"}}",
       "\\u0000 in the tool name"},
      {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\\u0000\":\"search\",\"name\":\"delete_all\"}}",
       "\\u0000 in a params key"},
      {"{\"jsonrpc\":\"2.0\",\"id\":1e400,\"method\":\"tools/list\"}", "an id the server echoes as null"},
      {"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"},{\"jsonrpc\":\"2.0\",\"id\":0.5,\"method\":\"tools/list\"}]",
       "a fractional id in a batch"},
  };
  for (size_t i = 0; i < sizeof ambiguous / sizeof ambiguous[0]; i++) {
    TAP_EQ_INT(ob_mcp_inspect(ambiguous[i][0], strlen(ambiguous[i][0]), &b), -32600, ambiguous[i][1]);
    TAP_CHECK(b.why && !b.root && !b.msgs, "%s: a reason, nothing to dispose", ambiguous[i][1]);
  }
  const char *big = "{\"jsonrpc\":\"2.0\",\"id\":-9007199254740992,\"method\":\"tools/list\"}";
  TAP_EQ_INT(ob_mcp_inspect(big, strlen(big), &b), 0, "an integer id at the edge of exact doubles passes");
  ob_mcp_body_dispose(&b);
  const char *tru = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"params\":{\"x\":tru}}";
  TAP_EQ_INT(ob_mcp_inspect(tru, strlen(tru), &b), -32700, "tru: parse error");
  const char *args = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\","
                     "\"arguments\":{\"k\":1,\"k\":2,\"s\":\"a\\u0000b\"}}}";
  TAP_EQ_INT(ob_mcp_inspect(args, strlen(args), &b), 0, "the tool's own arguments are not read: duplicates there pass");
  TAP_CHECK(b.n == 1 && strcmp(b.msgs[0].tool, "echo") == 0, "and the tool is read");
  ob_mcp_body_dispose(&b);
  char *tools[] = {"echo", "add"};
  ob_config_mcp_tools_t allow = {"everything", tools, 2};
  TAP_CHECK(ob_mcp_tool_allowed(&allow, "add") && !ob_mcp_tool_allowed(&allow, "secret") &&
                !ob_mcp_tool_allowed(&allow, "") && ob_mcp_tool_allowed(NULL, "secret"),
            "allow-list: listed only; no list allows all");
}

static ob_mcp_filter_t make_filter(ob_config_mcp_tools_t *allow, const char *id) {
  ob_mcp_filter_t f = {allow, ob_xcalloc(1, sizeof(char *)), 1};
  f.ids[0] = ob_xstrdup(id);
  return f;
}

static void test_filter_json(void) {
  char *tools[] = {"echo", "add"};
  ob_config_mcp_tools_t allow = {"everything", tools, 2};
  ob_mcp_filter_t f = make_filter(&allow, "7");
  ob_buf_t out;
  ob_buf_init(&out);
  TAP_CHECK(ob_mcp_filter_json(&f, tools_json, strlen(tools_json), &out), "tools/list result filtered");
  ob_buf_append(&out, "", 1);
  TAP_EQ_STR(out.base, "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"tools\":[{\"name\":\"echo\"},{\"name\":\"add\"}]}}",
             "only the allowed tools remain");
  ob_buf_reset(&out);
  ob_mcp_filter_t other = make_filter(&allow, "\"7\"");
  TAP_CHECK(!ob_mcp_filter_json(&other, tools_json, strlen(tools_json), &out) && out.len == 0,
            "a response to another id (\"7\" is not 7) is left alone");
  ob_mcp_filter_dispose(&other);
  TAP_CHECK(!ob_mcp_filter_json(&f, "{x", 2, &out), "not JSON: unchanged");
  ob_mcp_filter_dispose(&f);
  ob_buf_dispose(&out);
}

/* Feed an SSE stream split at every position; the output must not depend
 * on the split. */
static void sse_run(const char *in, size_t split, ob_buf_t *out) {
  char *tools[] = {"echo"};
  ob_config_mcp_tools_t allow = {"everything", tools, 1};
  ob_mcp_filter_t f = make_filter(&allow, "7");
  ob_mcp_sse_t s;
  ob_mcp_sse_init(&s, 1 << 20);
  size_t n = strlen(in);
  if (split > n) split = n;
  ob_mcp_sse_feed(&s, &f, in, split, out);
  ob_mcp_sse_feed(&s, &f, in + split, n - split, out);
  ob_mcp_sse_finish(&s, &f, out);
  ob_mcp_sse_dispose(&s);
  ob_mcp_filter_dispose(&f);
}

static void test_filter_sse(void) {
  char in[1024];
  snprintf(in, sizeof in,
           ": ping\r\n\r\nevent: message\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"
           "event: message\r\nid: 2\r\ndata: %s\r\n\r\n",
           tools_json);
  const char *want = ": ping\r\n\r\nevent: message\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"
                     "event: message\nid: 2\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"tools\":[{\"name\":\"echo\"}]}}\n\n";
  bool all_same = true;
  for (size_t split = 0; split <= strlen(in); split++) {
    ob_buf_t out;
    ob_buf_init(&out);
    sse_run(in, split, &out);
    ob_buf_append(&out, "", 1);
    if (strcmp(out.base, want) != 0) {
      if (all_same) printf("#   split %zu: got \"%s\"\n", split, out.base);
      all_same = false;
    }
    ob_buf_dispose(&out);
  }
  TAP_CHECK(all_same, "SSE: other events byte-identical, the tools/list event filtered, at every split point");
}

static void test_session(void) {
  uint8_t key[32] = {1, 2, 3}, other[32] = {9};
  ob_buf_t w, sid;
  ob_buf_init(&w), ob_buf_init(&sid);
  TAP_CHECK(ob_mcp_session_wrap(key, 3, OB_IOV_LIT("abc-123"), &w), "wrap");
  ob_iov_t tok = ob_buf_iov(&w);
  bool printable = tok.len > 5;
  for (size_t i = 0; i < tok.len; i++) printable &= tok.base[i] > 0x20 && tok.base[i] < 0x7f;
  TAP_CHECK(printable && memmem(tok.base, tok.len, "abc-123", 7) == NULL, "opaque, header-safe token");
  uint16_t ep = 0;
  TAP_CHECK(ob_mcp_session_unwrap(key, tok, &ep, &sid) && ep == 3 && sid.len == 7 && memcmp(sid.base, "abc-123", 7) == 0,
            "unwrap gives the endpoint and the upstream id back");
  ob_buf_reset(&sid);
  TAP_CHECK(!ob_mcp_session_unwrap(other, tok, &ep, &sid), "another key cannot read it");
  ob_buf_t bad;
  ob_buf_init(&bad);
  ob_buf_append_iov(&bad, tok);
  bad.base[bad.len - 3] = bad.base[bad.len - 3] == 'A' ? 'B' : 'A';
  TAP_CHECK(!ob_mcp_session_unwrap(key, ob_buf_iov(&bad), &ep, &sid), "a changed token is refused");
  TAP_CHECK(!ob_mcp_session_unwrap(key, OB_IOV_LIT("abc-123"), &ep, &sid), "a raw upstream id is refused");
  ob_buf_t w2;
  ob_buf_init(&w2);
  ob_mcp_session_wrap(key, 3, OB_IOV_LIT("abc-123"), &w2);
  TAP_CHECK(w2.len == w.len && memcmp(w2.base, w.base, w.len) == 0, "stable: the same session wraps to the same token");
  ob_buf_reset(&w2);
  ob_mcp_session_wrap(key, 4, OB_IOV_LIT("abc-123"), &w2);
  TAP_CHECK(w2.len != w.len || memcmp(w2.base, w.base, w.len) != 0, "another endpoint, another token");
  ob_buf_dispose(&w), ob_buf_dispose(&sid), ob_buf_dispose(&bad), ob_buf_dispose(&w2);
}

int main(void) {
  test_inspect();
  test_filter_json();
  test_filter_sse();
  test_session();
  return tap_done();
}
