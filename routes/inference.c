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
 * The cJSON tree lives only inside prepare().
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
  for (size_t i = 0; i < t->cfg->num_models; i++) {
    if (i) ob_buf_append(&b, ",", 1);
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

static ob_err_t prepare(ob_exchange_t *x, void *data) {
  ob_routes_t *t = data;
  ob_sreq_t *s = x->req;
  ob_iov_t body = ob_buf_iov(&s->body->buf);

  if (ob_iov_eq(s->method, OB_IOV_LIT("GET")) && t->cfg->num_models > 0 && path_is(s->path, "/v1/models")) {
    list_models(x, t);
    return OB_OK;
  }
  if (body.len == 0) {
    if (!x->upstream) model_not_found(x, NULL);
    return OB_OK;
  }
  cJSON *root = cJSON_ParseWithLength(body.base, body.len);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    ob_exchange_reply_error(x, 400, "The request body is not a valid JSON object.", "invalid_request_error",
                            "invalid_json");
    return OB_OK;
  }
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
  if (!m) {
    cJSON_Delete(root);
    if (!x->upstream) model_not_found(x, NULL);
    return OB_OK;
  }
  ob_json_member_t mem;
  if (!cJSON_IsString(m) || ob_json_find_member(body, OB_IOV_LIT("model"), &mem) != 1) {
    cJSON_Delete(root);
    ob_exchange_reply_error(x, 400, "`model` must be a single string member of the request object.",
                            "invalid_request_error", "invalid_model");
    return OB_OK;
  }
  x->model = ob_arena_dup(x->arena, ob_iov_str(m->valuestring));
  const ob_config_model_t *cm = find_model(t->cfg, m->valuestring);
  if (!cm) {
    if (!x->upstream) model_not_found(x, m->valuestring);
    cJSON_Delete(root);
    return OB_OK;
  }
  cJSON_Delete(root);
  if (ob_exchange_set_upstream(x, cm->upstream) != OB_OK) return OB_ERR_CONFIG;
  if (cm->upstream_model) {
    ob_buf_t v;
    ob_buf_init(&v);
    ob_buf_append_json_str(&v, ob_iov_str(cm->upstream_model));
    ob_iov_t parts[3] = {
        ob_iov(body.base, (size_t)(mem.value.base - body.base)),
        ob_arena_dup(x->arena, ob_buf_iov(&v)),
        ob_iov(mem.value.base + mem.value.len, body.len - (size_t)(mem.value.base + mem.value.len - body.base)),
    };
    ob_buf_dispose(&v);
    ob_exchange_set_body(x, parts, 3);
  }
  return OB_OK;
}

const ob_route_class_t ob_routes_inference_class = {"inference", prepare};
