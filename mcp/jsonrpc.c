/*
 * jsonrpc.c: what the gateway reads of MCP traffic. Request bodies are
 * inspected (methods, ids, tool names) with cJSON; tools/list results are
 * filtered, in JSON bodies and in SSE streams event by event. Pure: no I/O,
 * fuzzed by fuzz/fuzz_mcp.c.
 */
#include "mcp.h"

#include <math.h>
#include <stdlib.h>

/* ---------------------------------------------------------------- inspection */

static void inspect_one(cJSON *m, ob_mcp_msg_t *out) {
  memset(out, 0, sizeof *out);
  if (!cJSON_IsObject(m)) return;
  cJSON *method = cJSON_GetObjectItemCaseSensitive(m, "method");
  if (!cJSON_IsString(method)) return;
  out->method = method->valuestring;
  cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
  if (id && (cJSON_IsString(id) || cJSON_IsNumber(id))) out->id = id;
  if (strcmp(out->method, "tools/call") == 0) {
    cJSON *params = cJSON_GetObjectItemCaseSensitive(m, "params");
    cJSON *name = cJSON_IsObject(params) ? cJSON_GetObjectItemCaseSensitive(params, "name") : NULL;
    /* A tools/call without a string name cannot be checked: it is treated
     * as naming the empty tool, which no allow-list holds. */
    out->tool = cJSON_IsString(name) ? name->valuestring : "";
  }
}

int ob_mcp_inspect(const char *p, size_t n, ob_mcp_body_t *out) {
  memset(out, 0, sizeof *out);
  /* Strict first, two object levels deep: the envelope (jsonrpc, method,
   * id, params) of each message and its params (name), everything the tool
   * policy and the tools/list filter read. cJSON keeps the first of two
   * equal keys and cuts strings at \u0000; the servers (JSON.parse,
   * json.loads) keep the last and the whole, so such a body could call
   * another tool than the one checked. */
  int rc = ob_json_check(ob_iov(p, n), 2, NULL, NULL, &out->why);
  if (rc == OB_JSON_AMBIGUOUS) return -32600;
  if (rc != 0) return -32700;
  cJSON *root = cJSON_ParseWithLength(p, n);
  if (!root) return -32700;
  if (cJSON_IsObject(root)) {
    out->n = 1;
  } else if (cJSON_IsArray(root) && root->child) {
    out->batch = true;
    out->n = (size_t)cJSON_GetArraySize(root);
    for (cJSON *it = root->child; it; it = it->next)
      if (!cJSON_IsObject(it)) {
        cJSON_Delete(root);
        return -32600;
      }
  } else {
    cJSON_Delete(root);
    return -32600;
  }
  /* MCP ids are strings or integers. A number that is not an exact
   * integer (1e400, 0.5) may come back from the server as another text
   * (1e400 is echoed as null), and the tools/list filter, which finds a
   * response by its id's text, would pass the unfiltered list. */
  for (cJSON *it = cJSON_IsArray(root) ? root->child : root; it; it = cJSON_IsArray(root) ? it->next : NULL) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
    if (cJSON_IsNumber(id) && !(fabs(id->valuedouble) <= 9007199254740992.0 && id->valuedouble == floor(id->valuedouble))) {
      cJSON_Delete(root);
      out->why = "a JSON-RPC id must be a string or an integer";
      return -32600;
    }
  }
  out->root = root;
  out->msgs = ob_xcalloc(out->n, sizeof *out->msgs);
  if (!out->batch) {
    inspect_one(root, &out->msgs[0]);
  } else {
    size_t i = 0;
    for (cJSON *it = root->child; it; it = it->next) inspect_one(it, &out->msgs[i++]);
  }
  return 0;
}

void ob_mcp_body_dispose(ob_mcp_body_t *b) {
  cJSON_Delete(b->root);
  free(b->msgs);
  memset(b, 0, sizeof *b);
}

bool ob_mcp_tool_allowed(const ob_config_mcp_tools_t *allow, const char *tool) {
  if (!allow) return true;
  for (size_t i = 0; i < allow->num_tools; i++)
    if (strcmp(allow->tools[i], tool) == 0) return true;
  return false;
}

/* ---------------------------------------------------------------- JSON filter */

void ob_mcp_filter_dispose(ob_mcp_filter_t *f) {
  for (size_t i = 0; i < f->nids; i++) free(f->ids[i]);
  free(f->ids);
  f->ids = NULL;
  f->nids = 0;
}

static bool wanted_id(const ob_mcp_filter_t *f, const cJSON *id) {
  if (!id || !(cJSON_IsString(id) || cJSON_IsNumber(id))) return false;
  char *text = cJSON_PrintUnformatted(id);
  bool hit = false;
  for (size_t i = 0; text && i < f->nids && !hit; i++) hit = strcmp(f->ids[i], text) == 0;
  free(text);
  return hit;
}

/* Drop the disallowed tools of one response; true when any went. */
static bool filter_message(const ob_mcp_filter_t *f, cJSON *m) {
  if (!cJSON_IsObject(m) || !wanted_id(f, cJSON_GetObjectItemCaseSensitive(m, "id"))) return false;
  cJSON *result = cJSON_GetObjectItemCaseSensitive(m, "result");
  cJSON *tools = cJSON_IsObject(result) ? cJSON_GetObjectItemCaseSensitive(result, "tools") : NULL;
  if (!cJSON_IsArray(tools)) return false;
  bool changed = false;
  cJSON *it = tools->child;
  while (it) {
    cJSON *next = it->next;
    cJSON *name = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "name") : NULL;
    if (!cJSON_IsString(name) || !ob_mcp_tool_allowed(f->allow, name->valuestring)) {
      cJSON_Delete(cJSON_DetachItemViaPointer(tools, it));
      changed = true;
    }
    it = next;
  }
  return changed;
}

bool ob_mcp_filter_json(const ob_mcp_filter_t *f, const char *p, size_t n, ob_buf_t *out) {
  cJSON *root = cJSON_ParseWithLength(p, n);
  if (!root) return false;
  bool changed = false;
  if (cJSON_IsArray(root)) {
    for (cJSON *it = root->child; it; it = it->next) changed |= filter_message(f, it);
  } else {
    changed = filter_message(f, root);
  }
  if (changed) {
    char *text = cJSON_PrintUnformatted(root);
    if (text) {
      ob_buf_append_str(out, text);
      free(text);
    } else {
      changed = false;
    }
  }
  cJSON_Delete(root);
  return changed;
}

/* ---------------------------------------------------------------- SSE filter */

void ob_mcp_sse_init(ob_mcp_sse_t *s, size_t max_event) {
  memset(s, 0, sizeof *s);
  ob_buf_init(&s->event);
  s->max_event = max_event;
}

void ob_mcp_sse_dispose(ob_mcp_sse_t *s) { ob_buf_dispose(&s->event); }

/* One complete event (raw bytes, including its terminating blank line):
 * its data lines joined are a JSON-RPC text; when the filter rewrites it
 * the event goes out with its other fields as they were and one data line;
 * otherwise the original bytes go out unchanged. */
static bool emit_event(const ob_mcp_filter_t *f, ob_iov_t ev, ob_buf_t *out) {
  ob_buf_t data, other, rewritten;
  ob_buf_init(&data), ob_buf_init(&other), ob_buf_init(&rewritten);
  size_t i = 0, ndata = 0;
  while (i < ev.len) {
    size_t j = i;
    while (j < ev.len && ev.base[j] != '\r' && ev.base[j] != '\n') j++;
    ob_iov_t line = ob_iov(ev.base + i, j - i);
    if (j < ev.len) j += (ev.base[j] == '\r' && j + 1 < ev.len && ev.base[j + 1] == '\n') ? 2 : 1;
    if (line.len >= 5 && memcmp(line.base, "data:", 5) == 0) {
      ob_iov_t v = ob_iov(line.base + 5, line.len - 5);
      if (v.len && v.base[0] == ' ') v.base++, v.len--;
      if (ndata++) ob_buf_append(&data, "\n", 1);
      ob_buf_append_iov(&data, v);
    } else if (line.len) {
      ob_buf_append_iov(&other, line);
      ob_buf_append(&other, "\n", 1);
    }
    i = j;
  }
  bool changed = ndata && ob_mcp_filter_json(f, data.base, data.len, &rewritten);
  if (changed) {
    ob_buf_append_iov(out, ob_buf_iov(&other));
    ob_buf_append_str(out, "data: ");
    ob_buf_append_iov(out, ob_buf_iov(&rewritten));
    ob_buf_append(out, "\n\n", 2);
  } else {
    ob_buf_append_iov(out, ev);
  }
  ob_buf_dispose(&data), ob_buf_dispose(&other), ob_buf_dispose(&rewritten);
  return changed;
}

void ob_mcp_sse_feed(ob_mcp_sse_t *s, const ob_mcp_filter_t *f, const char *p, size_t n, ob_buf_t *out) {
  if (s->overflow || n == 0) return;
  size_t start = 0; /* bytes of p not yet in s->event */
  size_t i = 0;
  if (s->end_pending) {
    /* The last span ended an event with a CR, and the event went out at
     * once (streams stay live). The LF of that CRLF, if it comes now, goes
     * out after it as received, unless the event was rewritten (which
     * wrote its own line ends). */
    if (p[0] == '\n') {
      if (!s->last_rewritten) ob_buf_append(out, "\n", 1);
      start = i = 1;
    }
    s->end_pending = s->after_cr = false;
  }
  for (; i < n; i++) {
    char c = p[i];
    bool eol = false;
    if (c == '\n' && s->after_cr) {
      s->after_cr = false; /* the LF of a CRLF: the line already ended */
      continue;
    }
    s->after_cr = c == '\r';
    if (c == '\r' || c == '\n') eol = true;
    if (!eol) {
      s->line_len++;
      continue;
    }
    if (s->line_len > 0) {
      s->line_len = 0;
      continue;
    }
    /* A blank line: the event ends here (a CRLF's LF may follow; it is
     * taken along when it is in this span). */
    size_t end = i + 1;
    bool took_lf = c == '\r' && end < n && p[end] == '\n';
    if (took_lf) end++, s->after_cr = false, i++;
    ob_buf_append(&s->event, p + start, end - start);
    start = end;
    s->last_rewritten = emit_event(f, ob_buf_iov(&s->event), out);
    ob_buf_reset(&s->event);
    if (c == '\r' && !took_lf && end == n) s->end_pending = true;
  }
  ob_buf_append(&s->event, p + start, n - start);
  if (s->event.len > s->max_event) {
    /* Fail closed: an event this large is not passed on unchecked. */
    s->overflow = true;
    ob_buf_reset(&s->event);
  }
}

void ob_mcp_sse_finish(ob_mcp_sse_t *s, const ob_mcp_filter_t *f, ob_buf_t *out) {
  if (!s->overflow && s->event.len) emit_event(f, ob_buf_iov(&s->event), out);
  ob_buf_reset(&s->event);
  s->end_pending = false;
}
