/*
 * net_config: net's own counted copy of the settings it reads
 * (src/net/conf/net_config.h). ob_net_create and ob_net_reload copy the
 * caller's ob_net_config_t here, so net never points into a config
 * snapshot; the net and each upstream pool hold a reference, and a pool
 * retired by a reload keeps the copy it was made from until its last
 * request is done. Touches nothing else.
 */
#include <stdlib.h>
#include <string.h>

#include "net_int.h"

static char *dup_or_null(const char *s) { return s ? ob_xstrdup(s) : NULL; }

ob_net_config_t *ob_net_config_copy(const ob_net_config_t *src) {
  ob_net_config_t *c = ob_xcalloc(1, sizeof *c);
  *c = *src;
  c->refs = 1;
  c->listeners = ob_xcalloc(src->num_listeners ? src->num_listeners : 1, sizeof *c->listeners);
  for (size_t i = 0; i < src->num_listeners; i++) {
    const ob_net_listener_conf_t *s = &src->listeners[i];
    ob_net_listener_conf_t *d = &c->listeners[i];
    *d = *s;
    d->address = dup_or_null(s->address), d->host = dup_or_null(s->host);
    d->tls_cert = dup_or_null(s->tls_cert), d->tls_key = dup_or_null(s->tls_key);
  }
  c->upstreams = ob_xcalloc(src->num_upstreams ? src->num_upstreams : 1, sizeof *c->upstreams);
  for (size_t i = 0; i < src->num_upstreams; i++) {
    const ob_net_upstream_conf_t *s = &src->upstreams[i];
    ob_net_upstream_conf_t *d = &c->upstreams[i];
    *d = *s;
    d->name = dup_or_null(s->name), d->tls_ca = dup_or_null(s->tls_ca);
    d->endpoints = ob_xcalloc(s->num_endpoints ? s->num_endpoints : 1, sizeof *d->endpoints);
    for (size_t j = 0; j < s->num_endpoints; j++) {
      const ob_net_endpoint_conf_t *se = &s->endpoints[j];
      ob_net_endpoint_conf_t *de = &d->endpoints[j];
      *de = *se;
      de->url = dup_or_null(se->url), de->host = dup_or_null(se->host);
      de->authority = dup_or_null(se->authority), de->base_path = dup_or_null(se->base_path);
    }
  }
  return c;
}

ob_net_config_t *ob_net_config_acquire(ob_net_config_t *c) {
  if (c) __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
  return c;
}

void ob_net_config_release(ob_net_config_t *c) {
  if (!c || __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
  for (size_t i = 0; i < c->num_listeners; i++) {
    ob_net_listener_conf_t *l = &c->listeners[i];
    free(l->address), free(l->host), free(l->tls_cert), free(l->tls_key);
  }
  free(c->listeners);
  for (size_t i = 0; i < c->num_upstreams; i++) {
    ob_net_upstream_conf_t *u = &c->upstreams[i];
    for (size_t j = 0; j < u->num_endpoints; j++) {
      ob_net_endpoint_conf_t *ep = &u->endpoints[j];
      free(ep->url), free(ep->host), free(ep->authority), free(ep->base_path);
    }
    free(u->endpoints), free(u->name), free(u->tls_ca);
  }
  free(c->upstreams);
  free(c);
}
