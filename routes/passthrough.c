/*
 * passthrough.c: the passthrough route class. The request goes to the
 * route's upstream unchanged (apart from the prefix rewrite the proxy already
 * applied); nothing in the body is read.
 */
#include "routes_int.h"

static ob_err_t prepare(ob_exchange_t *x, void *data) {
  (void)data;
  /* The proxy already chose the route's upstream; config validation
   * guarantees a passthrough route has one. */
  return x->upstream ? OB_OK : OB_ERR_CONFIG;
}

/* Authenticated but never queued; no body inspection. */
const ob_route_class_t ob_routes_passthrough_class = {
    .name = "passthrough", .prepare = prepare, .admitted = false};
