/*
 * routes: the route table compiled from a config snapshot, and the route
 * classes that implement the proxy's ob_route_class_t:
 *   inference   OpenAI-compatible APIs: model-based upstream choice, model
 *               name rewriting patched into the body in place, GET /v1/models
 *               answered from the configured list
 *   passthrough any HTTP API forwarded to its route's upstream
 *
 * Ownership: a table owns everything it compiled and keeps its snapshot
 * (counted) alive; it is immutable after ob_routes_create and is freed when
 * the last user drops it (one table per snapshot).
 */
#ifndef OB_ROUTES_H
#define OB_ROUTES_H

#include "cache.h"
#include "config.h"
#include "core.h"
#include "proxy.h"

typedef struct ob_routes ob_routes_t;

/* A route class implemented outside routes/ (mcp/), bound by main with its
 * class data (borrowed; must outlive the table). */
typedef struct ob_route_binding {
  const ob_route_class_t *cls; /* cls->name is the config's class name */
  void *data;
} ob_route_binding_t;

/* Compile cfg's routes and models (cfg acquired), with the built-in classes
 * plus extra[0..n) (borrowed for the call). Never fails for a validated
 * snapshot; a route whose class is not available is skipped with a warning. */
ob_routes_t *ob_routes_create(ob_config_t *cfg, const ob_route_binding_t *extra, size_t n);
void ob_routes_destroy(ob_routes_t *t);

/* Give inference routes the response cache (borrowed; outlives the table).
 * Without it (no cache configured, or the file could not be opened) cache
 * lookups miss and nothing is stored, but x-obleth-cache still says so. */
void ob_routes_set_cache(ob_routes_t *t, ob_cache_store_t *store);

/* Longest-prefix match; matches ob_route_find_cb with table = the ob_routes_t. */
const ob_route_t *ob_routes_find(void *table, ob_iov_t path);

/*
 * A top-level member of a JSON object, located in the raw text so it can be
 * read or replaced without re-serializing (key and value spans point into the
 * input; the value span of a string includes its quotes).
 */
typedef struct ob_json_member {
  ob_iov_t key;    /* raw key bytes between the quotes, escapes not decoded */
  ob_iov_t value;  /* raw value text */
} ob_json_member_t;

/*
 * Find the top-level member whose key, decoded, equals key (plain text, no
 * escapes) in the JSON object text. Returns 1 and fills *out when found, 0
 * when absent, -1 when the text is not a strict JSON object or is ambiguous
 * (ob_json_check at level 1: two top-level keys equal decoded, or \u0000 in
 * a top-level key or string value; parsers disagree on which duplicate wins
 * and cJSON cuts strings at \u0000).
 */
int ob_json_find_member(ob_iov_t json, ob_iov_t key, ob_json_member_t *out);

/*
 * What the inference class reads from a request body, found in one pass of
 * core's tokenizer over the raw text (core.h: strict RFC 8259, nesting at
 * most OB_JSON_MAX_DEPTH) instead of a cJSON tree. Returns false when the
 * text is not JSON or holds something the pass does not decode (an
 * escaped key at any level, \u0000 in any string, a number longer than 63
 * characters) or two equal top-level keys; the caller then checks the text
 * (ob_json_check) and parses it with cJSON, which decide. Spans point into
 * the input (borrowed).
 */
typedef struct ob_infer_scan {
  int model_count;         /* top-level "model" members (0 or 1: keys are unique) */
  ob_iov_t model;          /* the first one's raw value (a string keeps its quotes) */
  bool has_messages, has_prompt, has_input;
  uint64_t text_chars;     /* decoded bytes of the strings in messages / prompt / input that the model reads */
  bool mct_number, mt_number; /* the first max_completion_tokens / max_tokens is a number */
  double mct, mt;
} ob_infer_scan_t;

bool ob_json_infer_scan(ob_iov_t json, ob_infer_scan_t *out);
/* text_chars computed from a parsed request object instead (the path taken
 * when the scan gives up); root borrowed. */
struct cJSON;
uint64_t ob_json_tree_text_chars(const struct cJSON *root);

/*
 * Streaming scanner for the token usage of an OpenAI-style response (JSON
 * body or SSE stream), fed the body span by span as it passes; no bytes are
 * kept. Caller storage; ob_usage_init before the first feed.
 */
typedef struct ob_usage {
  bool found;                /* a complete usage object was seen */
  uint64_t prompt_tokens;    /* from the last complete usage object */
  uint64_t completion_tokens;
  uint64_t events;           /* SSE events seen (blank-line terminators) */
  /* private */
  int state;
  size_t match;
  char key[24];
  size_t key_len;
  bool key_overflow;
  int key_id;
  int64_t num;
  int num_digits;
  int64_t cur_prompt, cur_completion;
  int depth;
  bool in_str, esc, last_nl;
} ob_usage_t;

void ob_usage_init(ob_usage_t *u);
/* Feed the next bytes of the body (borrowed for the call). */
void ob_usage_feed(ob_usage_t *u, const char *p, size_t n);

#endif /* OB_ROUTES_H */
