/*
 * net_config: the settings net reads, as plain types (no libevent, no
 * functions), in a folder of their own so config can parse into them
 * without seeing net.h (meson.build at the top states the rule).
 *
 * Ownership: config parses into these types and owns what it parsed; its
 * snapshot carries an ob_net_config_t view (ob_config_t.net) whose strings
 * and arrays are borrowed from the snapshot. net never keeps a caller's
 * ob_net_config_t: ob_net_create and ob_net_reload copy it (strings too)
 * into a counted copy of net's own, shared by the net and its upstream
 * pools, so a pool retired by a reload keeps its settings until its last
 * request is done (src/net/net_int.h).
 */
#ifndef OB_NET_CONFIG_H
#define OB_NET_CONFIG_H

#include "core.h"

typedef enum { OB_PROTO_HTTP1, OB_PROTO_H2C, OB_PROTO_H2 } ob_upstream_proto_t;

/* One entry of "listeners". Strings NUL-terminated. */
typedef struct ob_net_listener_conf {
  char *address;   /* "HOST:PORT" as written; host may be an IPv6 literal in brackets */
  char *host;      /* host part without brackets, e.g. "127.0.0.1" or "::1" */
  uint16_t port;   /* 0 = ephemeral */
  bool tls;
  char *tls_cert;  /* absolute or config-relative path already resolved; NULL without tls */
  char *tls_key;
  /* "x_forwarded_for": "append" (default: the client's values, then the
   * peer, for a listener behind a trusted edge) or "replace" (the peer
   * alone, for a listener clients reach directly). */
  bool xff_replace;
} ob_net_listener_conf_t;

/* One URL of an upstream's "endpoints". */
typedef struct ob_net_endpoint_conf {
  char *url;       /* as written */
  bool tls;        /* https:// */
  char *host;      /* host without brackets */
  uint16_t port;   /* explicit or 80/443 */
  char *authority; /* "host:port" as it should appear in Host / :authority */
  char *base_path; /* path prefix of the URL without trailing '/', "" when none */
} ob_net_endpoint_conf_t;

/* What net needs of one entry of "upstreams" to run its connection pool
 * (the rest of the entry, limits and credentials, is the proxy's). */
typedef struct ob_net_upstream_conf {
  char *name;
  ob_net_endpoint_conf_t *endpoints;
  size_t num_endpoints;
  ob_upstream_proto_t protocol;  /* default: http1 for http://, h2 for https:// */
  bool tls_verify;               /* "tls_verify", default true; false for self-signed test upstreams */
  char *tls_ca;                  /* "tls_ca": CA bundle path, NULL = system default */
} ob_net_upstream_conf_t;

/* "limits". */
typedef struct ob_net_limits {
  uint64_t max_body_bytes;        /* "max_body_bytes", default 16 MiB */
  uint32_t max_header_bytes;      /* "max_header_bytes", default 64 KiB */
  uint32_t max_connections;       /* "max_connections", default 10000 */
  uint32_t max_concurrent_streams;/* "max_concurrent_streams" (h2 SETTINGS), default 128 */
  uint32_t stream_window_bytes;   /* "stream_window_bytes": response bytes buffered per stream before the upstream is paused, default 256 KiB */
  uint32_t max_client_resets;     /* "max_client_resets": h2 streams a client may reset per connection in 10 s, default 1000 */
} ob_net_limits_t;

/* "timeouts". */
typedef struct ob_net_timeouts {
  uint32_t connect_ms;      /* "connect_ms", default 5000: upstream TCP+TLS connect */
  uint32_t first_byte_ms;   /* "first_byte_ms", default 300000: request sent -> first response byte */
  uint32_t idle_ms;         /* "idle_ms", default 60000: no progress on an open stream/connection */
  uint32_t client_header_ms;/* "client_header_ms", default 10000: a client's request head must arrive within */
  uint32_t client_body_ms;  /* "client_body_ms", default 60000: a buffered request body must arrive within, after its head */
  uint32_t keepalive_ms;    /* "keepalive_ms", default 75000: idle client keep-alive connection */
  uint32_t upstream_keepalive_ms; /* "upstream_keepalive_ms", default 30000: idle pooled upstream connection */
  uint32_t backoff_ms;      /* "backoff_ms", default 2000: endpoint skipped after a refused connection */
  uint32_t grace_ms;        /* "grace_ms", default 30000: graceful shutdown */
} ob_net_timeouts_t;

/* Everything net reads. */
typedef struct ob_net_config {
  int refs;                          /* private to net's own copies; 0 in a caller's */
  ob_net_listener_conf_t *listeners;
  size_t num_listeners;
  ob_net_upstream_conf_t *upstreams; /* same order as the configuration's upstreams */
  size_t num_upstreams;
  ob_net_limits_t limits;
  ob_net_timeouts_t timeouts;
  uint32_t workers;                  /* "workers": > 1 binds listeners with SO_REUSEPORT */
} ob_net_config_t;

#endif /* OB_NET_CONFIG_H */
