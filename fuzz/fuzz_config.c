/*
 * fuzz_config.c: feeds arbitrary bytes to ob_config_parse. Checks the
 * contract rather than the content: a NULL snapshot always comes with at
 * least one error line and a snapshot with none; every line is non-empty,
 * one line, and of the form "path: message"; a snapshot is internally
 * consistent (every reference names an upstream that exists, every
 * endpoint is filled in, every tenant's group is among the groups, key ids
 * and digests are unique, ranges and defaults hold) and survives an
 * acquire/release pair. The base
 * folder is fixed so runs are deterministic; nothing touches the file
 * system.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)      \
  do {                   \
    if (!(cond)) abort(); \
  } while (0)

static const ob_config_group_t *find_group(const ob_config_t *c, const char *name) {
  for (size_t i = 0; i < c->num_groups; i++)
    if (strcmp(c->groups[i].name, name) == 0) return &c->groups[i];
  return NULL;
}

static void check_tenants(const ob_config_t *c) {
  for (size_t i = 0; i < c->num_groups; i++) {
    const ob_config_group_t *g = &c->groups[i];
    CHECK(g->name && g->name[0] && g->weight >= 1);
    CHECK(find_group(c, g->name) == g); /* unique */
  }
  for (size_t i = 0; i < c->num_tenants; i++) {
    const ob_config_tenant_t *t = &c->tenants[i];
    CHECK(t->name && t->name[0] && t->group && find_group(c, t->group));
    CHECK(t->weight >= 1 && t->rpm <= ((uint64_t)1 << 53) && t->tpm <= ((uint64_t)1 << 53));
    bool star = false;
    for (size_t j = 0; j < t->num_models; j++) {
      CHECK(t->models[j] && t->models[j][0]);
      star = star || strcmp(t->models[j], "*") == 0;
    }
    CHECK(star == t->all_models);
    CHECK(t->num_keys >= 1 && t->keys);
    for (size_t j = 0; j < t->num_keys; j++) {
      const ob_config_key_t *k = &t->keys[j];
      CHECK(k->id && k->id[0]);
      for (size_t i2 = 0; i2 <= i; i2++) {
        const ob_config_tenant_t *t2 = &c->tenants[i2];
        for (size_t j2 = 0; j2 < (i2 == i ? j : t2->num_keys); j2++) {
          CHECK(strcmp(t2->keys[j2].id, k->id) != 0);
          CHECK(memcmp(t2->keys[j2].sha256, k->sha256, 32) != 0);
        }
      }
    }
    for (size_t i2 = 0; i2 < i; i2++) CHECK(strcmp(c->tenants[i2].name, t->name) != 0);
  }
  const ob_config_admission_t *a = &c->admission;
  CHECK(a->mode == OB_ADMIT_HIERARCHICAL || a->mode == OB_ADMIT_WEIGHTED || a->mode == OB_ADMIT_FIFO);
  CHECK(a->cost == OB_COST_TOKENS || a->cost == OB_COST_REQUESTS);
  CHECK(a->queue_timeout_ms >= 1 && a->default_max_tokens >= 1 && a->quantum <= ((uint64_t)1 << 53));
}

static void check_snapshot(const ob_config_t *c) {
  CHECK(c->refs == 1 && c->dir && c->log_level && !c->path);
  CHECK(c->net.num_listeners >= 1);
  for (size_t i = 0; i < c->net.num_listeners; i++) {
    const ob_config_listener_t *l = &c->net.listeners[i];
    CHECK(l->address && l->host);
    CHECK(l->tls ? (l->tls_cert && l->tls_key && l->tls_cert[0] == '/' && l->tls_key[0] == '/')
                 : (!l->tls_cert && !l->tls_key));
  }
  for (size_t i = 0; i < c->num_upstreams; i++) {
    const ob_config_upstream_t *u = &c->upstreams[i];
    CHECK(u->name && u->name[0] && u->num_endpoints >= 1);
    CHECK(ob_config_find_upstream(c, u->name) == u);
    CHECK(!u->credential_header == !u->credential_value);
    if (u->credential_header) {
      CHECK(u->credential_header[0] && !strpbrk(u->credential_header, "ABCDEFGHIJKLMNOPQRSTUVWXYZ :\r\n"));
      CHECK(u->credential_value[0] && !strpbrk(u->credential_value, "\r\n"));
    }
    for (size_t j = 0; j < u->num_endpoints; j++) {
      const ob_config_endpoint_t *ep = &u->endpoints[j];
      CHECK(ep->url && ep->host && ep->authority && ep->base_path && ep->port != 0);
      size_t bl = strlen(ep->base_path);
      CHECK(bl == 0 || (ep->base_path[0] == '/' && ep->base_path[bl - 1] != '/'));
      CHECK(u->protocol != OB_PROTO_H2 || ep->tls);
      CHECK(u->protocol != OB_PROTO_H2C || !ep->tls);
    }
  }
  for (size_t i = 0; i < c->num_routes; i++) {
    const ob_config_route_t *r = &c->routes[i];
    CHECK(r->prefix && r->prefix[0] == '/' && r->class_name);
    CHECK(!r->upstream || ob_config_find_upstream(c, r->upstream));
    CHECK(!r->rewrite || r->rewrite[0] == '/');
    CHECK(!r->cost || strcmp(r->cost, "requests") == 0 || strcmp(r->cost, "tokens") == 0);
  }
  for (size_t i = 0; i < c->num_models; i++) {
    const ob_config_model_t *m = &c->models[i];
    CHECK(m->name && m->upstream && ob_config_find_upstream(c, m->upstream));
  }
  CHECK(c->net.limits.max_header_bytes >= 1024 && c->net.limits.stream_window_bytes >= 16384);
  CHECK(c->net.limits.max_concurrent_streams >= 1 && c->net.limits.max_concurrent_streams <= INT32_MAX);
  CHECK(c->net.timeouts.connect_ms > 0 && c->net.timeouts.grace_ms > 0);
  check_tenants(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ob_config_errors_t errs = {0};
  ob_config_t *c = ob_config_parse((const char *)data, size, "/etc/obleth", &errs);
  if (c) {
    CHECK(errs.len == 0);
    check_snapshot(c);
    CHECK(ob_config_acquire(c) == c && c->refs == 2);
    ob_config_release(c);
    CHECK(c->refs == 1);
    ob_config_destroy(c);
  } else {
    CHECK(errs.len >= 1);
  }
  for (size_t i = 0; i < errs.len; i++) {
    const char *e = errs.items[i];
    CHECK(e && strstr(e, ": ") && e[0] != ':' && !strchr(e, '\n'));
  }
  ob_config_errors_dispose(&errs);
  CHECK(errs.items == NULL && errs.len == 0);
  return 0;
}
