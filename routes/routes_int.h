/* routes_int.h: shared by the files of routes/ only. */
#ifndef OB_ROUTES_INT_H
#define OB_ROUTES_INT_H

#include "routes.h"

#include <time.h>

struct ob_routes {
  ob_config_t *cfg;     /* counted */
  ob_route_t *routes;   /* sorted longest prefix first */
  size_t num;
  long long started;    /* unix time, the "created" of /v1/models entries */
};

extern const ob_route_class_t ob_routes_inference_class;
extern const ob_route_class_t ob_routes_passthrough_class;

#endif
