/* routes_int.h: shared by the files of routes/ only. */
#ifndef OB_ROUTES_INT_H
#define OB_ROUTES_INT_H

#include "routes.h"

#include <time.h>

struct ob_routes {
  ob_config_t *cfg;     /* counted */
  ob_route_t *routes;   /* sorted longest prefix first */
  size_t num;
  bool *allowed;        /* the routes' tenant_allowed arrays, one block */
  long long started;    /* unix time, the "created" of /v1/models entries */
};

extern const ob_route_class_t ob_routes_inference_class;
extern const ob_route_class_t ob_routes_passthrough_class;
extern const ob_route_class_t ob_routes_grpc_class;
extern const ob_route_class_t ob_routes_grpc_health_class;

/* The prefix the gateway's own health service is routed on. */
#define OB_ROUTES_HEALTH_PREFIX "/grpc.health.v1.Health/"

#endif
