/*
 * grpc.c: the route classes for gRPC.
 *  - grpc: calls proxied to an HTTP/2 upstream, bodies streamed both ways
 *    (the proxy does the streaming, deadlines and gRPC-shaped errors; this
 *    class only insists on a gRPC request).
 *  - grpc_health: grpc.health.v1.Health/Check answered by the gateway itself
 *    when the config sets grpc.health (see route_table.c), without an API
 *    key, so load balancers can probe it.
 */
#include "routes_int.h"

/* grpc.health.v1.HealthCheckResponse.ServingStatus */
enum { SERVING = 1, NOT_SERVING = 2 };

static ob_err_t grpc_prepare(ob_exchange_t *x, void *data) {
  (void)data;
  if (!x->grpc) {
    ob_exchange_reply_error(x, 415, "This route serves gRPC: content-type must be application/grpc or application/grpc+<format>.",
                            "invalid_request_error", "unsupported_media_type");
    return OB_OK;
  }
  return x->upstream ? OB_OK : OB_ERR_CONFIG;
}

const ob_route_class_t ob_routes_grpc_class = {
    .name = "grpc", .prepare = grpc_prepare, .admitted = true, .stream_body = true};

/* The service a Check asks about: "" is the gateway itself; a name is known
 * when a grpc route has the prefix "/<name>/". */
static const ob_route_t *service_route(ob_routes_t *t, ob_iov_t name) {
  for (size_t i = 0; i < t->num; i++) {
    const ob_route_t *r = &t->routes[i];
    if (r->cls != &ob_routes_grpc_class || r->prefix.len != name.len + 2) continue;
    if (memcmp(r->prefix.base + 1, name.base, name.len) == 0 && r->prefix.base[name.len + 1] == '/') return r;
  }
  return NULL;
}

static ob_err_t health_prepare(ob_exchange_t *x, void *data) {
  ob_routes_t *t = data;
  if (!x->grpc) {
    ob_exchange_reply_error(x, 415, "grpc.health.v1.Health is a gRPC service: content-type must be application/grpc.",
                            "invalid_request_error", "unsupported_media_type");
    return OB_OK;
  }
  ob_iov_t path = x->req->path;
  if (!ob_iov_eq(path, OB_IOV_LIT("/grpc.health.v1.Health/Check"))) {
    ob_exchange_reply_grpc(x, 12, "Only grpc.health.v1.Health/Check is served by the gateway.", NULL, 0);
    return OB_OK;
  }
  ob_iov_t msg, service = OB_IOV_LIT("");
  int one = ob_grpc_single_message(ob_buf_iov(&x->req->body->buf), &msg);
  if (one != 1 || ob_pb_find_bytes(msg, 1, &service) < 0) {
    ob_exchange_reply_grpc(x, 3, one == 0 ? "Compressed health requests are not supported." : "Malformed HealthCheckRequest.",
                           NULL, 0);
    return OB_OK;
  }
  int status = SERVING;
  if (service.len) {
    const ob_route_t *r = service_route(t, service);
    if (!r) {
      ob_exchange_reply_grpc(x, 5, "unknown service", NULL, 0);
      return OB_OK;
    }
    if (!ob_exchange_upstream_available(x, r->upstream)) status = NOT_SERVING;
  }
  /* HealthCheckResponse{status}: field 1, varint. */
  const uint8_t resp[2] = {0x08, (uint8_t)status};
  ob_exchange_reply_grpc(x, 0, NULL, resp, sizeof resp);
  return OB_OK;
}

const ob_route_class_t ob_routes_grpc_health_class = {
    .name = "grpc_health", .prepare = health_prepare, .admitted = false, .no_auth = true};
