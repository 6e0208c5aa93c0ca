/*
 * fuzz_config.c: feeds arbitrary bytes to ob_config_parse. Checks the
 * contract rather than the content: a NULL snapshot always comes with at
 * least one error line and a snapshot with none; every line is non-empty,
 * one line, and of the form "path: message"; a snapshot is internally
 * consistent (every reference names an upstream that exists, every
 * endpoint is filled in) and survives an acquire/release pair. The base
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

static void check_snapshot(const ob_config_t *c) {
  CHECK(c->refs == 1 && c->dir && c->log_level && !c->path);
  CHECK(c->num_listeners >= 1);
  for (size_t i = 0; i < c->num_listeners; i++) {
    const ob_config_listener_t *l = &c->listeners[i];
    CHECK(l->address && l->host);
    CHECK(l->tls ? (l->tls_cert && l->tls_key && l->tls_cert[0] == '/' && l->tls_key[0] == '/')
                 : (!l->tls_cert && !l->tls_key));
  }
  for (size_t i = 0; i < c->num_upstreams; i++) {
    const ob_config_upstream_t *u = &c->upstreams[i];
    CHECK(u->name && u->name[0] && u->num_endpoints >= 1);
    CHECK(ob_config_find_upstream(c, u->name) == u);
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
  }
  for (size_t i = 0; i < c->num_models; i++) {
    const ob_config_model_t *m = &c->models[i];
    CHECK(m->name && m->upstream && ob_config_find_upstream(c, m->upstream));
  }
  CHECK(c->limits.max_header_bytes >= 1024 && c->limits.stream_window_bytes >= 16384);
  CHECK(c->limits.max_concurrent_streams >= 1 && c->limits.max_concurrent_streams <= INT32_MAX);
  CHECK(c->timeouts.connect_ms > 0 && c->timeouts.grace_ms > 0);
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
