/*
 * mcp: the MCP route class (Model Context Protocol, Streamable HTTP
 * transport, 2025-03-26 and 2025-06-18) and the pure pieces it is made of:
 * JSON-RPC inspection of request bodies, the tools/list result filter (JSON
 * bodies and SSE streams) and the session id wrapper that carries endpoint
 * affinity. Implements the proxy's ob_route_class_t; uses proxy, config,
 * core, cJSON and OpenSSL's libcrypto. main binds the class to route tables.
 *
 * Ownership: ob_mcp_t is created by main for a config snapshot (acquired)
 * and outlives every route table and exchange using it. Everything an
 * exchange needs lives in its arena, except the filter buffers, released
 * by on_finish.
 */
#ifndef OB_MCP_H
#define OB_MCP_H

#include "config.h"
#include "core.h"
#include "proxy.h"

#include <cjson/cJSON.h>

typedef struct ob_mcp ob_mcp_t;

extern const ob_route_class_t ob_mcp_class;

/* State shared by every mcp route of a snapshot: the session key (from
 * mcp.session_secret, else random per process) and the open event streams
 * per tenant. */
ob_mcp_t *ob_mcp_create(ob_config_t *cfg);
/* For a reload: like ob_mcp_create, but without mcp.session_secret the
 * session key of prev (borrowed) is kept, so sessions made before the
 * reload stay valid. Open event streams are counted per instance: streams
 * opened before the reload count against the old instance only. */
ob_mcp_t *ob_mcp_create_after(ob_config_t *cfg, const ob_mcp_t *prev);
void ob_mcp_destroy(ob_mcp_t *m);

/* ---------------------------------------------------------------- JSON-RPC */

typedef struct ob_mcp_msg {
  const char *method; /* NULL: a response, or not a JSON-RPC message */
  const char *tool;   /* tools/call: params.name (NULL when absent) */
  cJSON *id;          /* NULL for notifications; borrowed from the body's tree */
} ob_mcp_msg_t;

typedef struct ob_mcp_body {
  cJSON *root;        /* owned */
  bool batch;
  ob_mcp_msg_t *msgs; /* owned */
  size_t n;
  const char *why;    /* static: what was wrong, when inspection failed (may be NULL) */
} ob_mcp_body_t;

/* Inspect a POST body: 0 and *out filled (dispose it), or -32700 when it is
 * not strict JSON (ob_json_check), -32600 when it is not a JSON-RPC message
 * or a non-empty array of objects, or when a message or its params hold two
 * keys equal decoded, or \u0000 in a key or string member (ambiguous: the
 * server may read another member than the gateway). */
int ob_mcp_inspect(const char *p, size_t n, ob_mcp_body_t *out);
void ob_mcp_body_dispose(ob_mcp_body_t *b);

/* Whether tool may be used under allow (NULL: no list, everything). */
bool ob_mcp_tool_allowed(const ob_config_mcp_tools_t *allow, const char *tool);

/* ---------------------------------------------------------------- tools/list filter */

typedef struct ob_mcp_filter {
  const ob_config_mcp_tools_t *allow; /* borrowed */
  char **ids;         /* the tools/list request ids, as compact JSON text (owned) */
  size_t nids;
} ob_mcp_filter_t;

void ob_mcp_filter_dispose(ob_mcp_filter_t *f);

/* One JSON text (a message or a batch): true and the rewritten text in out
 * when a tools/list result in it lost tools; false (out untouched) when it
 * needs no change or is not JSON. */
bool ob_mcp_filter_json(const ob_mcp_filter_t *f, const char *p, size_t n, ob_buf_t *out);

/* Incremental filter over a text/event-stream: complete events are
 * written to out as soon as they end (rewritten when their data is a
 * tools/list result that lost tools, byte-identical otherwise); a partial
 * event waits in the state. Caller storage. */
typedef struct ob_mcp_sse {
  ob_buf_t event;     /* bytes of the event in progress */
  size_t line_len;    /* length of the current line so far */
  bool after_cr;      /* the last byte ended a line with CR (a LF may follow) */
  bool end_pending;   /* an event ended with that CR (and went out): its LF may come next */
  bool last_rewritten;/* the last event went out rewritten */
  bool overflow;      /* an event grew past max_event: the stream is cut */
  size_t max_event;
} ob_mcp_sse_t;

void ob_mcp_sse_init(ob_mcp_sse_t *s, size_t max_event);
void ob_mcp_sse_feed(ob_mcp_sse_t *s, const ob_mcp_filter_t *f, const char *p, size_t n, ob_buf_t *out);
/* The stream ended: a trailing partial event is filtered as if complete. */
void ob_mcp_sse_finish(ob_mcp_sse_t *s, const ob_mcp_filter_t *f, ob_buf_t *out);
void ob_mcp_sse_dispose(ob_mcp_sse_t *s);

/* ---------------------------------------------------------------- sessions */

/* Wrap an upstream session id with the index of the endpoint that issued
 * it: an opaque, authenticated token only a gateway with the same key can
 * read (AES-256-GCM). Returns false when sid is too long (> 1024 bytes). */
bool ob_mcp_session_wrap(const uint8_t key[32], uint16_t endpoint, ob_iov_t sid, ob_buf_t *out);
/* The reverse: true, *endpoint and the upstream id appended to out. */
bool ob_mcp_session_unwrap(const uint8_t key[32], ob_iov_t token, uint16_t *endpoint, ob_buf_t *out);

#endif /* OB_MCP_H */
