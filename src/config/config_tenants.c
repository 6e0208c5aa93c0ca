/*
 * config_tenants.c: the sections of the config that say who may call:
 * "groups", "tenants" with their "keys" (a plain "secret" is hashed with
 * SHA-256 here and wiped from the tree), and "budgets". Moved out of config.c
 * unchanged; error wording and JSON paths are the schema's (docs/config.md).
 */
#include "config_int.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

/* ---------------------------------------------------------------- groups */

enum { G_NAME, G_WEIGHT };
static const field_t group_fields[] = {
  [G_NAME] = {.key = "name", .required = true},
  [G_WEIGHT] = INT_FIELD(ob_config_group_t, weight, false, 1, UINT32_MAX, 1),
};

typedef struct group_state {
  size_t index;
  ob_config_group_t *g;
} group_state_t;

static void on_group_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  group_state_t *st = target;
  if (idx != G_NAME) {
    ob_config_on_int_field(cx, idx, v, &(int_target_t){st->g, group_fields});
    return;
  }
  const char *s = ob_config_want_string(cx, v, true);
  if (!s) return;
  for (size_t k = 0; k < st->index; k++) {
    if (cx->c->groups[k].name && strcmp(cx->c->groups[k].name, s) == 0) {
      char *q = ob_config_quote(s);
      ob_config_errf(cx, "duplicate group name %s", q);
      free(q);
      return;
    }
  }
  st->g->name = ob_xstrdup(s);
}

void ob_config_on_group(ctx_t *cx, size_t i, const cJSON *obj, void *target) {
  group_state_t st = {.index = i, .g = &cx->c->groups[i]};
  ob_config_apply_defaults(st.g, group_fields, sizeof group_fields / sizeof group_fields[0]);
  ob_config_walk_object(cx, obj, group_fields, sizeof group_fields / sizeof group_fields[0], on_group_field, &st);
}

/*
 * Tenants without a declared group share DEFAULT_GROUP. Unless the file
 * declares it, it is appended to the snapshot's groups (weight 1) so that
 * every tenant's group can be found by name there.
 */

void ob_config_add_default_group(ob_config_t *c) {
  bool used = false;
  for (size_t i = 0; i < c->num_tenants && !used; i++)
    used = c->tenants[i].group && strcmp(c->tenants[i].group, DEFAULT_GROUP) == 0;
  if (!used) return;
  for (size_t i = 0; i < c->num_groups; i++)
    if (c->groups[i].name && strcmp(c->groups[i].name, DEFAULT_GROUP) == 0) return;
  c->groups = ob_xrealloc(c->groups, (c->num_groups + 1) * sizeof *c->groups);
  c->groups[c->num_groups++] = (ob_config_group_t){.name = ob_xstrdup(DEFAULT_GROUP), .weight = 1};
}

/* ---------------------------------------------------------------- tenants, keys */

typedef struct tenant_state {
  size_t index;
  ob_config_tenant_t *t;
} tenant_state_t;

typedef struct key_state {
  size_t tenant, index;
  ob_config_key_t *k;
  bool has_digest; /* k->sha256 was filled from a valid "sha256" or "secret" */
} key_state_t;

enum { K_ID, K_SHA256, K_SECRET, K_DISABLED, K_BUDGET_PERIOD };
static const field_t key_fields[] = {
  [K_ID] = {.key = "id", .required = true},
  [K_SHA256] = {.key = "sha256"},
  [K_SECRET] = {.key = "secret"},
  [K_DISABLED] = {.key = "disabled"},
  [K_BUDGET_PERIOD] = {.key = "budget_period"},
  INT_FIELD(ob_config_key_t, budget_tokens, true, 0, MAX_EXACT_INT, 0),
};

/* "budget_period" of a tenant or a key. */
static void want_budget_period(ctx_t *cx, const cJSON *v, ob_budget_period_t *out) {
  const char *s = cJSON_IsString(v) ? v->valuestring : "";
  if (strcmp(s, "month") == 0)
    *out = OB_BUDGET_MONTH;
  else if (strcmp(s, "day") == 0)
    *out = OB_BUDGET_DAY;
  else if (strcmp(s, "total") == 0)
    *out = OB_BUDGET_TOTAL;
  else
    ob_config_errf(cx, "expected \"day\", \"month\" or \"total\"");
}

static bool is_blank(char ch) {
  return ch == ' ' || ch == '\t';
}

int ob_config_hex_value(unsigned char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

static void on_key_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  key_state_t *st = target;
  ob_config_key_t *k = st->k;
  switch (idx) {
  case K_ID: {
    const char *s = ob_config_want_string(cx, v, true);
    if (!s) return;
    k->id = ob_xstrdup(s);
    if (ob_config_seen_add(&cx->key_ids, k->id, strlen(k->id), st->tenant, st->index)) {
      char *q = ob_config_quote(s);
      ob_config_errf(cx, "duplicate key id %s", q);
      free(q);
      free(k->id);
      k->id = NULL;
    }
    break;
  }
  case K_SHA256: {
    const char *s = ob_config_want_string(cx, v, false);
    if (!s) return;
    bool ok = strlen(s) == 64;
    for (size_t i = 0; ok && i < 32; i++) {
      int hi = ob_config_hex_value((unsigned char)s[2 * i]), lo = ob_config_hex_value((unsigned char)s[2 * i + 1]);
      ok = hi >= 0 && lo >= 0;
      if (ok) k->sha256[i] = (uint8_t)(hi << 4 | lo);
    }
    if (!ok) {
      ob_config_errf(cx, "expected 64 hex digits (the SHA-256 of the key, see obleth hash-key)");
      return;
    }
    st->has_digest = true;
    break;
  }
  case K_SECRET: {
    const char *s = ob_config_want_string(cx, v, true);
    if (!s) return;
    /* cJSON's node is ours for the length of the parse: hash the text in
     * place, then wipe it (the cast drops a const this file added). */
    char *plain = ((cJSON *)v)->valuestring;
    size_t n = strlen(plain);
    /* A key a request could never present (header values carry no control
     * characters, and the token is trimmed) is a mistake, not a key. The
     * message never shows the text. */
    bool usable = !is_blank(plain[0]) && !is_blank(plain[n - 1]);
    for (size_t i = 0; usable && i < n; i++) usable = (unsigned char)plain[i] >= 0x20 && plain[i] != 0x7f;
    if (!usable) {
      OPENSSL_cleanse(plain, n);
      ob_config_errf(cx, "must not contain control characters or start or end with white space");
      return;
    }
    unsigned int mdlen = 0;
    if (EVP_Digest(plain, n, k->sha256, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
      fprintf(stderr, "obleth: SHA-256 unavailable\n");
      abort();
    }
    OPENSSL_cleanse(plain, n);
    k->from_secret = true;
    st->has_digest = true;
    break;
  }
  case K_DISABLED:
    ob_config_want_bool(cx, v, &k->disabled);
    break;
  case K_BUDGET_PERIOD:
    want_budget_period(cx, v, &k->budget_period);
    break;
  default:
    ob_config_on_int_field(cx, idx, v, &(int_target_t){k, key_fields});
    break;
  }
}

static void on_key(ctx_t *cx, size_t i, const cJSON *obj, void *target) {
  const tenant_state_t *ts = target;
  key_state_t st = {.tenant = ts->index, .index = i, .k = &ts->t->keys[i]};
  uint32_t seen = ob_config_walk_object(cx, obj, key_fields, sizeof key_fields / sizeof key_fields[0], on_key_field, &st);
  bool has_sha = seen & (1u << K_SHA256), has_secret = seen & (1u << K_SECRET);
  if (has_sha && has_secret) {
    ob_config_errf(cx, "give \"sha256\" or \"secret\", not both");
  } else if (!has_sha && !has_secret) {
    ob_config_errf(cx, "missing required key \"sha256\" (or \"secret\")");
  } else if (st.has_digest) {
    /* Two entries with the same digest are the same key: identification
     * could not tell which one a request meant. */
    const seen_entry_t *prev = ob_config_seen_add(&cx->key_digests, st.k->sha256, sizeof st.k->sha256, st.tenant, i);
    if (prev) ob_config_errf(cx, "same key as tenants[%zu].keys[%zu]", prev->a, prev->b);
  }
}

enum { TN_NAME, TN_GROUP, TN_MODELS, TN_DISABLED, TN_KEYS, TN_MCP_TOOLS, TN_BUDGET_PERIOD };
static const field_t tenant_fields[] = {
  [TN_NAME] = {.key = "name", .required = true},
  [TN_GROUP] = {.key = "group"},
  [TN_MODELS] = {.key = "models"},
  [TN_DISABLED] = {.key = "disabled"},
  [TN_KEYS] = {.key = "keys", .required = true},
  [TN_MCP_TOOLS] = {.key = "mcp_tools"},
  [TN_BUDGET_PERIOD] = {.key = "budget_period"},
  INT_FIELD(ob_config_tenant_t, max_streams, false, 0, UINT32_MAX, 0),
  INT_FIELD(ob_config_tenant_t, weight, false, 1, UINT32_MAX, 1),
  INT_FIELD(ob_config_tenant_t, max_inflight, false, 0, UINT32_MAX, 0),
  INT_FIELD(ob_config_tenant_t, max_queue, false, 0, UINT32_MAX, 0),
  INT_FIELD(ob_config_tenant_t, rpm, true, 0, MAX_EXACT_INT, 0),
  INT_FIELD(ob_config_tenant_t, tpm, true, 0, MAX_EXACT_INT, 0),
  INT_FIELD(ob_config_tenant_t, budget_tokens, true, 0, MAX_EXACT_INT, 0),
};

static bool group_known(ctx_t *cx, const char *name) {
  return strcmp(name, DEFAULT_GROUP) == 0 || ob_config_name_in(cx->group_names, cx->num_group_names, name);
}

static void on_tenant_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  tenant_state_t *st = target;
  ob_config_tenant_t *t = st->t;
  switch (idx) {
  case TN_NAME: {
    const char *s = ob_config_want_string(cx, v, true);
    if (!s) return;
    t->name = ob_xstrdup(s);
    if (ob_config_seen_add(&cx->tenant_names, t->name, strlen(t->name), st->index, 0)) {
      char *q = ob_config_quote(s);
      ob_config_errf(cx, "duplicate tenant name %s", q);
      free(q);
      free(t->name);
      t->name = NULL;
    }
    break;
  }
  case TN_GROUP: {
    const char *s = ob_config_want_string(cx, v, true);
    if (!s) return;
    if (!group_known(cx, s)) {
      char *q = ob_config_quote(s);
      ob_config_errf(cx, "no group named %s", q);
      free(q);
      return;
    }
    t->group = ob_xstrdup(s);
    break;
  }
  case TN_MODELS: {
    size_t n;
    if (!cJSON_IsArray(v)) {
      ob_config_errf(cx, "expected an array");
      return;
    }
    n = ob_config_array_len(v);
    t->num_models = n;
    t->models = n ? ob_xcalloc(n, sizeof *t->models) : NULL;
    size_t j = 0;
    for (const cJSON *it = v->child; it; it = it->next, j++) {
      size_t mark = ob_config_path_index(cx, j);
      const char *s = ob_config_want_string(cx, it, true);
      if (s) {
        t->models[j] = ob_xstrdup(s);
        if (strcmp(s, "*") == 0) t->all_models = true;
      }
      ob_config_path_pop(cx, mark);
    }
    break;
  }
  case TN_DISABLED:
    ob_config_want_bool(cx, v, &t->disabled);
    break;
  case TN_BUDGET_PERIOD:
    want_budget_period(cx, v, &t->budget_period);
    break;
  case TN_MCP_TOOLS: {
    /* {"<upstream>": ["tool", ...]}: one allow-list per MCP upstream. */
    if (!cJSON_IsObject(v)) {
      ob_config_errf(cx, "expected an object mapping upstream names to lists of tool names");
      return;
    }
    size_t n = ob_config_array_len(v), j = 0;
    t->mcp_tools = ob_xcalloc(n ? n : 1, sizeof *t->mcp_tools);
    for (const cJSON *it = v->child; it; it = it->next) {
      size_t mark = ob_config_path_key(cx, it->string);
      if (!ob_config_upstream_known(cx, it->string)) {
        char *q = ob_config_quote(it->string);
        ob_config_errf(cx, "no upstream named %s", q);
        free(q);
      } else if (!cJSON_IsArray(it)) {
        ob_config_errf(cx, "expected an array of tool names");
      } else {
        ob_config_mcp_tools_t *mt = &t->mcp_tools[j++];
        mt->upstream = ob_xstrdup(it->string);
        mt->tools = ob_xcalloc(ob_config_array_len(it) + 1, sizeof *mt->tools);
        size_t k = 0;
        for (const cJSON *tool = it->child; tool; tool = tool->next, k++) {
          size_t m2 = ob_config_path_index(cx, k);
          const char *name = ob_config_want_string(cx, tool, true);
          if (name) mt->tools[mt->num_tools++] = ob_xstrdup(name);
          ob_config_path_pop(cx, m2);
        }
      }
      ob_config_path_pop(cx, mark);
    }
    t->num_mcp_tools = j;
    break;
  }
  case TN_KEYS: {
    if (!cJSON_IsArray(v) || !v->child) {
      ob_config_errf(cx, "expected a non-empty array");
      return;
    }
    t->num_keys = ob_config_array_len(v);
    t->keys = ob_xcalloc(t->num_keys, sizeof *t->keys);
    ob_config_walk_array(cx, v, on_key, st);
    break;
  }
  default:
    ob_config_on_int_field(cx, idx, v, &(int_target_t){t, tenant_fields});
    break;
  }
}

void ob_config_on_tenant(ctx_t *cx, size_t i, const cJSON *obj, void *target) {
  tenant_state_t st = {.index = i, .t = &cx->c->tenants[i]};
  ob_config_apply_defaults(st.t, tenant_fields, sizeof tenant_fields / sizeof tenant_fields[0]);
  uint32_t seen = ob_config_walk_object(cx, obj, tenant_fields, sizeof tenant_fields / sizeof tenant_fields[0], on_tenant_field,
                              &st);
  if (!(seen & (1u << TN_GROUP))) st.t->group = ob_xstrdup(DEFAULT_GROUP);
  if (!(seen & (1u << TN_MODELS))) { /* absent = ["*"] */
    st.t->models = ob_xcalloc(1, sizeof *st.t->models);
    st.t->models[0] = ob_xstrdup("*");
    st.t->num_models = 1;
    st.t->all_models = true;
  }
}

enum { BU_PATH };
const field_t ob_config_budgets_fields[] = {
  [BU_PATH] = {.key = "path"},
};

void ob_config_on_budgets_field(ctx_t *cx, size_t idx, const cJSON *v, void *target) {
  ob_config_budgets_t *b = target;
  if (idx != BU_PATH) return;
  char *p = ob_config_want_file(cx, v);
  if (p) free(b->path), b->path = p;
}

/* Budgets need a counter file; without "budgets" it sits next to the
 * config, so turning a budget on never needs a second key. */
void ob_config_default_budgets_path(ctx_t *cx, bool key_present) {
  ob_config_t *c = cx->c;
  bool any = key_present;
  for (size_t i = 0; i < c->num_tenants && !any; i++) {
    any = c->tenants[i].budget_tokens > 0;
    for (size_t j = 0; j < c->tenants[i].num_keys && !any; j++) any = c->tenants[i].keys[j].budget_tokens > 0;
  }
  if (!any || c->budgets.path) return;
  cJSON def = {.type = cJSON_String, .valuestring = "obleth-budgets.mdb"};
  c->budgets.path = ob_config_want_file(cx, &def);
}

_Static_assert(NFIELDS(tenant_fields) <= 32 && NFIELDS(key_fields) <= 32, "walk_object tracks keys in a 32-bit set");
