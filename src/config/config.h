/*
 * config: the JSON configuration file, parsed with cJSON, validated and
 * turned into a plain immutable snapshot. It is its own module (not part of
 * main.c) so the loader can be unit-tested and fuzzed without a process.
 * Uses core, and the type headers of the modules it parses for (tenant,
 * cluster, net's src/net/conf): it fills their own types.
 *
 * One more: libcrypto for the SHA-256 of plain key
 * secrets, which are hashed and wiped during the parse.
 *
 * Ownership: ob_config_load/ob_config_parse return a snapshot the caller owns
 * and frees with ob_config_destroy. Snapshots are reference counted so an
 * exchange can keep the snapshot it started under across a reload
 * (ob_config_acquire / ob_config_release; destroy == release of the last
 * reference). Every string in a snapshot is owned by it and NUL-terminated.
 * No cJSON tree outlives the parse.
 */
#ifndef OB_CONFIG_H
#define OB_CONFIG_H

/* Event-loop threads a process may run ("workers"). */
#define OB_CONFIG_MAX_WORKERS 64

#include "core.h"
#include "cluster.h"
#include "net_config.h"
#include "tenant.h"

/* The settings net reads are net's own types (src/net/conf/net_config.h);
 * the config parses straight into them. The old names stay for the layers
 * above. */
typedef ob_net_listener_conf_t ob_config_listener_t;
typedef ob_net_endpoint_conf_t ob_config_endpoint_t;

/* "capacity": how "max_inflight": "auto" is tuned (docs/fairshare.md,
 * "Capacity from the backend"). */
typedef struct ob_config_capacity {
  uint32_t min;             /* "min", default 1: the limit of each endpoint never goes below */
  uint32_t max;             /* "max", default 512, >= min */
  char *metrics_path;       /* "metrics_path", default "/metrics": scraped on each endpoint (after its URL's path) */
  uint32_t interval_ms;     /* "interval_ms", default 250, 50..60000 */
  double target_waiting;    /* "target_waiting", default 0: requests the backend may keep queued itself */
  double kv_high;           /* "kv_high", default 0.95, in (0, 1]: KV usage above which the limit stops growing */
} ob_config_capacity_t;

/* An "auto" upstream's endpoints travel in one cluster call (fleet.c). */
#define OB_CONFIG_AUTO_ENDPOINTS_MAX 256

/* One entry of "upstreams", the proxy's view. net's view of the same entry
 * is c->net.upstreams[i] (name, endpoints, protocol, TLS settings),
 * borrowed from this one. */
typedef struct ob_config_upstream {
  char *name;
  ob_config_endpoint_t *endpoints;
  size_t num_endpoints;
  ob_upstream_proto_t protocol;  /* default: http1 for http://, h2 for https:// */
  uint32_t max_inflight;         /* 0 = unlimited; with max_inflight_auto: 0 until the first limit is known */
  bool max_inflight_auto;        /* "max_inflight": "auto": each endpoint's limit follows what it reports
                                    (at most OB_CONFIG_AUTO_ENDPOINTS_MAX endpoints) */
  ob_config_capacity_t capacity; /* defaults filled in with "auto" */
  bool tls_verify;               /* "tls_verify", default true; false for self-signed test upstreams */
  char *tls_ca;                  /* "tls_ca": CA bundle path, NULL = system default */
  /* "credential": {"header": NAME, "value": VALUE}: sent upstream in place of
   * the client's key. NULL when absent: the client's key is stripped. */
  char *credential_header;       /* lower-cased */
  char *credential_value;
} ob_config_upstream_t;

typedef struct ob_config_route {
  char *prefix;    /* must start with '/' */
  char *class_name;/* "inference", "passthrough", "grpc", "mcp" */
  char *upstream;  /* upstream name or NULL */
  char *rewrite;   /* replacement for the matched prefix, NULL = keep */
  char *cost;      /* "cost": "requests" | "tokens"; NULL = the class default
                      (admission.cost for inference, requests otherwise) */
  int cache;       /* "cache": -1 absent (on for inference routes when the cache is configured), 0 off, 1 on */
  uint32_t cache_ttl_s;  /* "cache": {"ttl_s"}; 0 = cache.ttl_s */
  char *cache_scope;     /* "cache": {"scope"}: "tenant" (default), "group" or "global" */
  char **tenants;  /* "tenants": the only tenants allowed on this route */
  size_t num_tenants;
  bool has_tenants;/* the list was given (an empty list allows nobody) */
} ob_config_route_t;

typedef struct ob_config_model {
  char *name;
  char *upstream;        /* upstream name, required */
  char *upstream_model;  /* NULL = send the name unchanged */
} ob_config_model_t;

typedef struct ob_config_group {
  char *name;               /* unique */
  uint32_t weight;          /* "weight", default 1, >= 1 */
} ob_config_group_t;

/* The tenants' types are tenant's own (src/tenant/tenant.h); the config
 * parses straight into them. The old names stay for the layers above. */
typedef ob_tenant_key_conf_t ob_config_key_t;
typedef ob_tenant_mcp_tools_t ob_config_mcp_tools_t;
typedef ob_tenant_conf_t ob_config_tenant_t;

typedef enum { OB_ADMIT_HIERARCHICAL, OB_ADMIT_WEIGHTED, OB_ADMIT_FIFO } ob_admission_mode_t;
typedef enum { OB_COST_TOKENS, OB_COST_REQUESTS } ob_cost_kind_t;

typedef struct ob_config_admission {
  ob_admission_mode_t mode;     /* "mode": "hierarchical" (default) | "weighted" | "fifo" */
  uint32_t max_inflight;        /* all pools together; 0 = unlimited (default) */
  uint32_t max_queue;           /* queued requests overall; default 10000 */
  uint32_t queue_timeout_ms;    /* default 30000 */
  ob_cost_kind_t cost;          /* "cost": "tokens" (default) | "requests", for inference routes */
  uint32_t default_max_tokens;  /* estimate of output tokens when a request has no max_tokens; default 1024 */
  uint64_t quantum;             /* DRR quantum per unit of weight; 0 = automatic (default) */
} ob_config_admission_t;

typedef ob_net_limits_t ob_config_limits_t;
typedef ob_net_timeouts_t ob_config_timeouts_t;

/* "cache": the response cache; absent = no cache. */
typedef struct ob_config_cache {
  bool enabled;               /* the key is present */
  char *path;                 /* "path": the LMDB file, resolved; default "obleth-cache.mdb" next to the config */
  uint64_t max_bytes;         /* "max_bytes": map size, default 1 GiB */
  uint64_t max_entry_bytes;   /* "max_entry_bytes": largest stored response body, default 8 MiB */
  uint32_t ttl_s;             /* "ttl_s": default 3600 */
  bool deterministic_only;    /* "deterministic_only": only temperature 0 or a seed */
  bool fresh_id;              /* "fresh_id": a hit gets a new response id (same length) instead of the stored one */
  char **exclude_fields;      /* "exclude_fields": top-level request fields left out of the key, besides user and stream_options */
  size_t num_exclude_fields;
} ob_config_cache_t;

/* "metrics": what /metrics exposes beyond the fixed series. */
typedef struct ob_config_metrics {
  bool per_tenant;      /* "per_tenant": series labelled by tenant, default false */
  uint32_t max_tenants; /* "max_tenants": at most this many tenants get series, default 100 */
} ob_config_metrics_t;

/* "ledger": the usage ledger file. */
typedef struct ob_config_ledger {
  bool enabled;          /* the key is present */
  char *path;            /* "path", required: resolved against the config's folder */
  uint64_t max_bytes;    /* "max_bytes": rotate above this size, default 100 MiB; 0 = never */
  uint32_t max_files;    /* "max_files": rotated files kept (path.1 ... path.N), default 5 */
  uint64_t buffer_bytes; /* "buffer_bytes": lines waiting for the disk before new ones are dropped, default 8 MiB */
} ob_config_ledger_t;

/* "admin": the admin listener. */
typedef struct ob_config_admin {
  bool enabled;         /* the key is present */
  char *address;        /* "address": default "127.0.0.1:9901" */
  char *host;
  uint16_t port;
  bool loopback;        /* the host is a loopback address */
  char *token;          /* "token": Bearer token for everything but /healthz and /readyz; NULL = none */
  uint32_t max_header_bytes;  /* "max_header_bytes": request line + fields, default 16 KiB (431 above) */
  uint64_t max_body_bytes;    /* "max_body_bytes": default 1 MiB (413 above) */
  uint32_t header_timeout_ms; /* "header_timeout_ms", default 10000: a head must arrive within, from the connection
                                 opening or the previous answer (408); also the idle keep-alive time */
  uint32_t body_timeout_ms;   /* "body_timeout_ms", default 10000: a body must arrive within, after its head (408),
                                 and an answer must be taken within */
  uint32_t max_connections;   /* "max_connections", default 64: more are answered 503 and closed */
} ob_config_admin_t;

/* "budgets": where token budget counters are kept across restarts. */
typedef struct ob_config_budgets {
  char *path;            /* "path", resolved; default "obleth-budgets.mdb" next to the config when
                            the key is present or any tenant or key has a budget_tokens; else NULL */
} ob_config_budgets_t;

/* "cluster": the cluster's own type (src/cluster/cluster.h), parsed into
 * directly; the old name stays for the layers above. */
typedef ob_cluster_config_t ob_config_cluster_t;

typedef struct ob_config {
  int refs;                 /* private */
  char *path;               /* file it came from, NULL for ob_config_parse */
  char *dir;                /* folder relative paths resolve against */
  /* What net reads: listeners, limits, timeouts and workers are parsed
   * into it; its upstreams[i] is a view of upstreams[i] below (strings and
   * endpoints borrowed from them). Owned by the snapshot; pass &c->net to
   * ob_net_create / ob_net_reload, which copy it. */
  ob_net_config_t net;
  ob_config_upstream_t *upstreams;
  size_t num_upstreams;
  ob_config_route_t *routes;
  size_t num_routes;
  ob_config_model_t *models;
  size_t num_models;
  ob_config_group_t *groups;
  size_t num_groups;
  ob_config_tenant_t *tenants;  /* empty: no authentication (anonymous access) */
  size_t num_tenants;
  ob_config_admission_t admission;
  char *log_level;          /* "log_level": "debug"|"info"|"warn"|"error", default "info" */
  bool grpc_health;         /* "grpc": {"health": true}: answer grpc.health.v1.Health/Check */
  char *mcp_session_secret; /* "mcp": {"session_secret"}: keys the MCP session id wrapper; NULL = random per process */
  ob_config_cache_t cache;
  ob_config_metrics_t metrics;
  ob_config_admin_t admin;
  ob_config_ledger_t ledger;
  ob_config_budgets_t budgets;
  ob_config_cluster_t cluster;
} ob_config_t;

/* Problems found while validating. Each entry is one line
 * "json.path: message", e.g. "upstreams[0].endpoints[1]: not an http:// or
 * https:// URL". Owned by the list; freed by ob_config_errors_dispose. */
typedef struct ob_config_errors {
  char **items;
  size_t len;
} ob_config_errors_t;

void ob_config_errors_dispose(ob_config_errors_t *e);

/*
 * Parse and validate JSON text. base_dir: folder relative paths resolve
 * against (borrowed for the call; NULL = current directory). Returns a new
 * snapshot with refs == 1, or NULL with every problem appended to *errs
 * (never stops at the first). Unknown keys are errors. Cross references are
 * checked: a route or model naming an upstream that does not exist, duplicate
 * upstream names, duplicate route prefixes, duplicate model names, an unknown
 * route class.
 */
ob_config_t *ob_config_parse(const char *json, size_t len, const char *base_dir, ob_config_errors_t *errs);

/* Read the file at path and ob_config_parse it with its folder as base_dir.
 * An unreadable file is reported as one error "<path>: <strerror>". The TLS
 * files it names (listeners' cert and key, upstreams' tls_ca) must be
 * readable too: "listeners[0].tls.cert: cannot read <file>: <strerror>". */
ob_config_t *ob_config_load(const char *path, ob_config_errors_t *errs);

ob_config_t *ob_config_acquire(ob_config_t *c);
void ob_config_release(ob_config_t *c);
static inline void ob_config_destroy(ob_config_t *c) { ob_config_release(c); }

/* Find an upstream by name; borrowed from the snapshot, NULL when absent. */
const ob_config_upstream_t *ob_config_find_upstream(const ob_config_t *c, const char *name);

#endif /* OB_CONFIG_H */
