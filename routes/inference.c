/*
 * inference.c: the inference route class for OpenAI-compatible APIs.
 *  - GET /v1/models is answered from the configured model list (when any).
 *  - A JSON body's "model" picks the upstream from `models`; a model with no
 *    entry goes to the route's own upstream; with neither, 404
 *    model_not_found in OpenAI's shape.
 *  - `upstream_model` replaces the model name in the body sent upstream by
 *    splicing: the body goes out as three pieces (before, new value, after),
 *    so every other byte is exactly what the client sent and nothing is
 *    re-serialized or copied.
 *  - The admission cost estimate: prompt tokens (~4 characters a token of
 *    the message contents, prompt or input) plus max_tokens (or
 *    admission.default_max_tokens when absent); the actual usage, read from
 *    the response as it streams past (ob_usage_t), replaces it at release.
 *    An aborted stream is charged its prompt plus one token per SSE event
 *    delivered.
 * Bodies are read in one pass (ob_json_infer_scan); a cJSON tree is built,
 * inside prepare() only, when that pass gives up or deterministic_only
 * needs it.
 */
#include "routes_int.h"

#include <cjson/cJSON.h>
#include <stdio.h>

static const ob_config_model_t *find_model(const ob_config_t *cfg, const char *name) {
  for (size_t i = 0; i < cfg->num_models; i++)
    if (strcmp(cfg->models[i].name, name) == 0) return &cfg->models[i];
  return NULL;
}

static void list_models(ob_exchange_t *x, ob_routes_t *t) {
  ob_buf_t b;
  ob_buf_init(&b);
  ob_buf_append_str(&b, "{\"object\":\"list\",\"data\":[");
  const char *sep = "";
  for (size_t i = 0; i < t->cfg->num_models; i++) {
    /* Only what the caller may use: the list must not tell a tenant the
     * names of models kept for others. */
    if (x->who.tenant && !ob_tenant_allows_model(x->who.tenant, ob_iov_str(t->cfg->models[i].name))) continue;
    ob_buf_append_str(&b, sep), sep = ",";
    ob_buf_append_str(&b, "{\"id\":");
    ob_buf_append_json_str(&b, ob_iov_str(t->cfg->models[i].name));
    ob_buf_printf(&b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"obleth\"}", t->started);
  }
  ob_buf_append_str(&b, "]}");
  ob_exchange_reply(x, 200, "application/json", b.base, b.len);
  ob_buf_dispose(&b);
}

static bool path_is(ob_iov_t path, const char *want) {
  const char *q = memchr(path.base, '?', path.len);
  if (q) path.len = (size_t)(q - path.base);
  return ob_iov_eq(path, ob_iov_str(want));
}

static void model_not_found(ob_exchange_t *x, const char *model) {
  char msg[512];
  if (model)
    snprintf(msg, sizeof msg, "The model `%.400s` does not exist or you do not have access to it.", model);
  else
    snprintf(msg, sizeof msg, "The request names no model and this route has no default upstream.");
  ob_exchange_reply_error(x, 404, msg, "invalid_request_error", "model_not_found");
}

/* Per exchange: the usage scanner and the cache state. */
typedef struct infer_x {
  ob_usage_t usage;
  bool counting; /* usage is being scanned (a JSON request was estimated) */
  cache_x_t *cache;
} infer_x_t;

static infer_x_t *state(ob_exchange_t *x) {
  if (!x->class_state) {
    infer_x_t *ix = ob_arena_alloc(x->arena, sizeof *ix);
    memset(ix, 0, sizeof *ix);
    ob_usage_init(&ix->usage);
    x->class_state = ix;
  }
  return x->class_state;
}

/* What prepare reads from the body: from ob_json_infer_scan, or from a
 * cJSON tree when the scan gives up. */
typedef struct facts {
  bool has_model;      /* a top-level "model" member */
  bool model_ok;       /* it is a string and the only "model" member */
  const char *model;   /* its decoded value (arena), when model_ok */
  ob_iov_t model_raw;  /* its raw value with the quotes, when model_ok */
  uint64_t chars;      /* text the model reads (ob_json_infer_scan's text_chars) */
  bool has_mt;         /* max_completion_tokens, else max_tokens, is a usable number */
  uint64_t mt;
  bool embeddings;     /* input and neither messages nor prompt: no output tokens */
} facts_t;

static void set_max_tokens(facts_t *f, bool mct_number, double mct, bool mt_number, double mt) {
  double v = mct_number ? mct : mt;
  f->has_mt = (mct_number || mt_number) && v >= 0 && v < 1e9;
  f->mt = f->has_mt ? (uint64_t)v : 0;
}

static bool facts_scan(ob_exchange_t *x, ob_iov_t body, facts_t *f) {
  ob_infer_scan_t sc;
  if (!ob_json_infer_scan(body, &sc)) return false;
  memset(f, 0, sizeof *f);
  f->has_model = sc.model_count > 0;
  if (f->has_model && sc.model.len >= 2 && sc.model.base[0] == '"') {
    if (memchr(sc.model.base, '\\', sc.model.len)) return false; /* escaped: the tree decodes it */
    f->model_ok = sc.model_count == 1;
    f->model = ob_arena_dup(x->arena, ob_iov(sc.model.base + 1, sc.model.len - 2)).base;
    f->model_raw = sc.model;
  }
  f->chars = sc.text_chars;
  set_max_tokens(f, sc.mct_number, sc.mct, sc.mt_number, sc.mt);
  f->embeddings = sc.has_input && !sc.has_messages && !sc.has_prompt;
  return true;
}

static void facts_tree(ob_exchange_t *x, const cJSON *root, ob_iov_t body, facts_t *f) {
  memset(f, 0, sizeof *f);
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
  f->has_model = m != NULL;
  ob_json_member_t mem;
  if (cJSON_IsString(m) && ob_json_find_member(body, OB_IOV_LIT("model"), &mem) == 1) {
    f->model_ok = true;
    f->model_raw = mem.value;
    f->model = ob_arena_strdup(x->arena, m->valuestring);
  }
  f->chars = ob_json_tree_text_chars(root);
  const cJSON *mct = cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens");
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
  set_max_tokens(f, cJSON_IsNumber(mct), cJSON_IsNumber(mct) ? mct->valuedouble : 0, cJSON_IsNumber(mt),
                 cJSON_IsNumber(mt) ? mt->valuedouble : 0);
  f->embeddings = cJSON_GetObjectItemCaseSensitive(root, "input") && !cJSON_GetObjectItemCaseSensitive(root, "messages") &&
                  !cJSON_GetObjectItemCaseSensitive(root, "prompt");
}

static void estimate(ob_exchange_t *x, const facts_t *f) {
  x->prompt_tokens_est = (f->chars + 3) / 4;
  if (x->prompt_tokens_est == 0) x->prompt_tokens_est = 1;
  x->max_tokens = f->has_mt ? f->mt : ob_exchange_admission(x)->default_max_tokens;
  if (f->embeddings) x->max_tokens = 0;
  infer_x_t *ix = state(x);
  ix->counting = true;
}

static void on_response_head(ob_exchange_t *x, int status, ob_http_header_t *h, size_t n) {
  infer_x_t *ix = x->class_state;
  if (ix) ob_routes_cache_head(x, ix->cache, status, h, n);
}

static void on_response_data(ob_exchange_t *x, const char *p, size_t n) {
  infer_x_t *ix = x->class_state;
  if (!ix) return;
  if (ix->counting) ob_usage_feed(&ix->usage, p, n);
  ob_routes_cache_data(x, ix->cache, p, n);
}

static void on_response_end(ob_exchange_t *x) {
  infer_x_t *ix = x->class_state;
  if (!ix) return;
  if (ix->counting && ix->usage.found) {
    x->usage_prompt = ix->usage.prompt_tokens;
    x->usage_completion = ix->usage.completion_tokens;
  }
  ob_routes_cache_end(x, ix->cache, ix->counting ? &ix->usage : NULL);
}

static void on_response_error(ob_exchange_t *x, int status, bool head_seen) {
  infer_x_t *ix = x->class_state;
  if (ix) ob_routes_cache_error(x, ix->cache, status, head_seen);
}

static void on_finish(ob_exchange_t *x, bool completed) {
  (void)completed;
  infer_x_t *ix = x->class_state;
  if (ix) ob_routes_cache_finish(x, ix->cache);
}

static uint64_t actual_tokens(ob_exchange_t *x, bool completed) {
  infer_x_t *ix = x->class_state;
  if (!ix || !ix->counting) return x->prompt_tokens_est + x->max_tokens;
  ob_usage_t *u = &ix->usage;
  if (u->found) return u->prompt_tokens + u->completion_tokens;
  if (!completed) return x->prompt_tokens_est + u->events;
  return x->prompt_tokens_est + x->max_tokens;
}


/* Whether the cache may answer this request on this route at all. */
static bool cache_applies(ob_exchange_t *x, ob_routes_t *t) {
  const ob_config_route_t *rc = x->route->cfg;
  return t->cfg->cache.enabled && !(rc && rc->cache == 0) && ob_iov_eq(x->req->method, OB_IOV_LIT("POST"));
}

/* The cache step, once the upstream is known (it is part of the key). True
 * when the request was answered from the cache or follows a twin. */
static bool cache_step(ob_exchange_t *x, ob_routes_t *t, const cJSON *root, ob_iov_t body, ob_iov_t up_model) {
  if (!cache_applies(x, t) || !x->upstream_name) return false;
  return ob_routes_cache_prepare(x, t, x->route->cfg, root, body, NULL, up_model, &state(x)->cache);
}

/* The model name the upstream receives: the configured upstream_model, else
 * the client's. */
static ob_iov_t upstream_model(const ob_config_model_t *cm, ob_iov_t name) {
  return cm && cm->upstream_model ? ob_iov_str(cm->upstream_model) : name;
}

/*
 * The cache step before any tree is built: a hit (or a twin to follow) is
 * answered from the model name and the canonical key alone, so repeats do
 * not pay for parsing the body into a tree they never use. Only for the
 * common shape: a plain model string (no escapes) and no
 * deterministic_only (which reads the tree). *done: the cache step ran
 * (answered or not); prepare then goes on without repeating it.
 */
static bool cache_first(ob_exchange_t *x, ob_routes_t *t, ob_iov_t body, bool *done) {
  *done = false;
  if (!cache_applies(x, t) || t->cfg->cache.deterministic_only) return false;
  ob_cache_key_t id = ob_cache_body_id(body);
  struct body_memo *memo = ob_routes_body_memo(t, &id);
  ob_iov_t name;
  if (memo->has_model) {
    name = ob_arena_dup(x->arena, ob_iov_str(memo->model));
  } else {
    ob_json_member_t mem;
    if (ob_json_find_member(body, OB_IOV_LIT("model"), &mem) != 1 || mem.value.len < 2 || mem.value.base[0] != '"' ||
        memchr(mem.value.base, '\\', mem.value.len))
      return false;
    name = ob_arena_dup(x->arena, ob_iov(mem.value.base + 1, mem.value.len - 2));
    if (name.len < sizeof memo->model && !memchr(name.base, '\0', name.len)) {
      memcpy(memo->model, name.base, name.len + 1);
      memo->has_model = true;
    }
  }
  const ob_config_model_t *cm = find_model(t->cfg, name.base);
  if (cm ? ob_exchange_set_upstream(x, cm->upstream) != OB_OK : !x->upstream) return false;
  x->model = name;
  *done = true;
  return ob_routes_cache_prepare(x, t, x->route->cfg, NULL, body, &id, upstream_model(cm, name), &state(x)->cache);
}

/* Pick the upstream from the model and run the cache step; root may be
 * NULL (the cache then works from the body alone). */
static ob_err_t route(ob_exchange_t *x, ob_routes_t *t, const facts_t *f, const cJSON *root, ob_iov_t body,
                      bool cached) {
  if (!f->has_model) {
    estimate(x, f);
    if (!x->upstream) model_not_found(x, NULL);
    else if (!cached) cache_step(x, t, root, body, OB_IOV_LIT(""));
    return OB_OK;
  }
  if (!f->model_ok) {
    ob_exchange_reply_error(x, 400, "`model` must be a single string member of the request object.",
                            "invalid_request_error", "invalid_model");
    return OB_OK;
  }
  x->model = ob_iov_str(f->model);
  estimate(x, f);
  const ob_config_model_t *cm = find_model(t->cfg, f->model);
  if (!cm) {
    if (!x->upstream) model_not_found(x, f->model);
    else if (!cached) cache_step(x, t, root, body, x->model);
    return OB_OK;
  }
  if (ob_exchange_set_upstream(x, cm->upstream) != OB_OK) return OB_ERR_CONFIG;
  if (!cached && cache_step(x, t, root, body, upstream_model(cm, x->model))) return OB_OK;
  if (cm->upstream_model) {
    ob_iov_t mv = f->model_raw;
    ob_buf_t v;
    ob_buf_init(&v);
    ob_buf_append_json_str(&v, ob_iov_str(cm->upstream_model));
    ob_iov_t parts[3] = {
        ob_iov(body.base, (size_t)(mv.base - body.base)),
        ob_arena_dup(x->arena, ob_buf_iov(&v)),
        ob_iov(mv.base + mv.len, body.len - (size_t)(mv.base + mv.len - body.base)),
    };
    ob_buf_dispose(&v);
    ob_exchange_set_body(x, parts, 3);
  }
  return OB_OK;
}

static ob_err_t prepare(ob_exchange_t *x, void *data) {
  ob_routes_t *t = data;
  ob_sreq_t *s = x->req;
  ob_iov_t body = ob_buf_iov(&s->body->buf);
  bool cached = false;

  if (ob_iov_eq(s->method, OB_IOV_LIT("GET")) && t->cfg->num_models > 0 && path_is(s->path, "/v1/models")) {
    list_models(x, t);
    return OB_OK;
  }
  if (body.len == 0) {
    if (!x->upstream) model_not_found(x, NULL);
    return OB_OK;
  }
  if (cache_first(x, t, body, &cached)) return OB_OK;
  /* The tree only when the scan gives up or deterministic_only reads it. */
  facts_t f;
  cJSON *root = NULL;
  if ((cache_applies(x, t) && t->cfg->cache.deterministic_only) || !facts_scan(x, body, &f)) {
    /* Strict first: cJSON keeps the first of two equal keys and cuts a
     * string at \u0000, the upstream may keep the last and the whole. */
    const char *why = NULL;
    if (ob_json_check(body, 1, NULL, NULL, &why) != 0 || !(root = cJSON_ParseWithLength(body.base, body.len)) ||
        !cJSON_IsObject(root)) {
      cJSON_Delete(root);
      char msg[160];
      snprintf(msg, sizeof msg, "The request body is not a valid JSON object%s%s.", why ? ": " : "", why ? why : "");
      ob_exchange_reply_error(x, 400, msg, "invalid_request_error", "invalid_json");
      return OB_OK;
    }
    facts_tree(x, root, body, &f);
  }
  ob_err_t rv = route(x, t, &f, root, body, cached);
  cJSON_Delete(root);
  return rv;
}

const ob_route_class_t ob_routes_inference_class = {
    .name = "inference",
    .prepare = prepare,
    .admitted = true,
    .cost_tokens_default = true,
    .on_response_data = on_response_data,
    .actual_tokens = actual_tokens,
    .on_response_head = on_response_head,
    .on_finish = on_finish,
    .on_response_end = on_response_end,
    .on_response_error = on_response_error,
};
