/*
 * main.c: the process. Parses the command line, loads the config, wires
 * net -> proxy -> routes on one event loop, and turns SIGTERM / SIGINT into
 * a graceful shutdown (stop accepting, GOAWAY, let streams finish within the
 * grace period, exit 0).
 */
#include "config.h"
#include "core.h"
#include "net.h"
#include "proxy.h"
#include "admin.h"
#include "mcp.h"
#include "routes.h"
#include "tenant.h"

#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
  fprintf(f,
          "usage: obleth --config FILE        run the gateway\n"
          "       obleth --check-config FILE  validate FILE; exit 0, or 1 printing every problem\n"
          "       obleth hash-key [SECRET]      print the SHA-256 of an API key (read from stdin without SECRET)\n"
          "       obleth cache-purge --config FILE [--tenant NAME]\n"
          "                                     delete every cached response, or one tenant's\n"
          "       obleth --version\n");
}

/* Load path for a command; NULL after printing every problem to stderr
 * (with a count line when summary is set). */
static ob_config_t *load_or_report(const char *path, bool summary) {
  ob_config_errors_t errs = {0};
  ob_config_t *c = ob_config_load(path, &errs);
  if (!c) {
    for (size_t i = 0; i < errs.len; i++) fprintf(stderr, "%s\n", errs.items[i]);
    if (summary) fprintf(stderr, "%s: %zu problem%s\n", path, errs.len, errs.len == 1 ? "" : "s");
    ob_config_errors_dispose(&errs);
  }
  return c;
}

static int check_config(const char *path) {
  ob_config_t *c = load_or_report(path, true);
  if (!c) return 1;
  printf("%s: ok\n", path);
  ob_config_release(c);
  return 0;
}

/* Print the hex SHA-256 of a key, for a tenant key's "sha256". Reading it
 * from stdin keeps the secret out of shell history and process lists. */
static int hash_key(const char *arg) {
  char line[4096];
  size_t n;
  if (arg) {
    n = strlen(arg);
    if (n >= sizeof line) n = sizeof line - 1;
    memcpy(line, arg, n);
  } else {
    n = fread(line, 1, sizeof line - 1, stdin);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
  }
  if (n == 0) {
    fprintf(stderr, "hash-key: empty key\n");
    return 1;
  }
  char hex[65];
  ob_tenant_hash_key(ob_iov(line, n), hex);
  memset(line, 0, sizeof line);
  printf("%s\n", hex);
  return 0;
}

/* What one config snapshot is compiled into besides the proxy's own
 * state: the key directory, the MCP state and the route table. Freed by
 * the proxy (parts_dispose) when the last request using it is over. */
typedef struct parts {
  ob_tenants_t *tenants;
  ob_mcp_t *mcp;
  ob_routes_t *routes;
} parts_t;

static void parts_dispose(void *arg) {
  parts_t *g = arg;
  ob_routes_destroy(g->routes);
  ob_mcp_destroy(g->mcp);
  ob_tenants_destroy(g->tenants);
  free(g);
}

static void warn_keys(const ob_config_t *cfg) {
  for (size_t i = 0; i < cfg->num_tenants; i++)
    for (size_t j = 0; j < cfg->tenants[i].num_keys; j++)
      if (cfg->tenants[i].keys[j].from_secret)
        ob_log_warn("tenants[%zu].keys[%zu] (%s) is a plain \"secret\": fine for a demo, use \"sha256\" "
                    "(obleth hash-key) in production",
                    i, j, cfg->tenants[i].keys[j].id);
  if (cfg->num_tenants == 0) ob_log_warn("no tenants configured: requests are not authenticated");
}

/* prev_mcp: the running generation's MCP state (its session key is kept
 * when the config names no secret), NULL at start-up. */
static parts_t *parts_build(ob_config_t *cfg, ob_cache_store_t *cache, const ob_mcp_t *prev_mcp,
                            ob_proxy_gen_spec_t *spec) {
  parts_t *g = ob_xcalloc(1, sizeof *g);
  g->tenants = ob_tenants_create(cfg);
  g->mcp = ob_mcp_create_after(cfg, prev_mcp);
  const ob_route_binding_t bindings[] = {{&ob_mcp_class, g->mcp}};
  g->routes = ob_routes_create(cfg, bindings, sizeof bindings / sizeof bindings[0]);
  ob_routes_set_cache(g->routes, cache);
  *spec = (ob_proxy_gen_spec_t){cfg, g->tenants, ob_routes_find, g->routes, parts_dispose, g};
  return g;
}

typedef struct {
  const char *path;
  struct event_base *base;
  ob_config_t *cfg;         /* counted: the config in force */
  ob_net_t *net;
  ob_proxy_t *proxy;
  ob_admin_t *admin;
  ob_cache_store_t *cache;
  ob_ledger_t *ledger;
  ob_budgets_t *budgets;
  ob_budget_store_t *budget_store;
  const ob_mcp_t *mcp;      /* the current generation's, owned by it */
  bool stopping;
} app_t;

static void on_drained(void *arg) {
  app_t *a = arg;
  ob_log_info("all connections closed; exiting");
  event_base_loopexit(a->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)what;
  app_t *a = arg;
  if (a->stopping) {
    ob_log_warn("second signal %d: exiting now", (int)sig);
    event_base_loopexit(a->base, NULL);
    return;
  }
  a->stopping = true;
  ob_log_info("signal %d: graceful shutdown", (int)sig);
  ob_net_shutdown(a->net, on_drained, a);
}

static ob_log_level_t level_of(const char *s) {
  if (!s) return OB_LOG_INFO;
  if (strcmp(s, "debug") == 0) return OB_LOG_DEBUG;
  if (strcmp(s, "warn") == 0) return OB_LOG_WARN;
  if (strcmp(s, "error") == 0) return OB_LOG_ERROR;
  return OB_LOG_INFO;
}

static bool same(const char *x, const char *y) { return x == y || (x && y && strcmp(x, y) == 0); }

/* What a reload cannot change in a running process: said, and kept. */
static void warn_fixed(const ob_config_t *o, const ob_config_t *n) {
  if (o->admin.enabled != n->admin.enabled || !same(o->admin.address, n->admin.address))
    ob_log_warn("reload: the admin listener stays as it was (admin.address changes need a restart)");
  if (o->cache.enabled != n->cache.enabled || !same(o->cache.path, n->cache.path) ||
      o->cache.max_bytes != n->cache.max_bytes)
    ob_log_warn("reload: the cache file stays as it was (cache.path and cache.max_bytes need a restart)");
  if (o->ledger.enabled != n->ledger.enabled || !same(o->ledger.path, n->ledger.path) ||
      o->ledger.max_bytes != n->ledger.max_bytes || o->ledger.max_files != n->ledger.max_files ||
      o->ledger.buffer_bytes != n->ledger.buffer_bytes)
    ob_log_warn("reload: the ledger stays as it was (ledger changes need a restart)");
  if (!same(o->budgets.path, n->budgets.path))
    ob_log_warn("reload: the budget file stays as it was (budgets.path changes need a restart)");
}

static void log_listeners(const app_t *a, const ob_config_t *cfg) {
  for (size_t i = 0; i < cfg->num_listeners; i++)
    ob_log_info("listening on %s (%s)", ob_net_listener_address(a->net, i),
                cfg->listeners[i].tls ? "tls: h2, http/1.1" : "http/1.1, h2c");
}

/* Parse and validate the file completely, then swap it in; an invalid file
 * or a listener / upstream that cannot be set up changes nothing. */
static bool reload(void *arg, ob_buf_t *why) {
  app_t *a = arg;
  if (a->stopping) {
    ob_buf_append_str(why, "the gateway is shutting down\n");
    return false;
  }
  ob_config_errors_t errs = {0};
  ob_config_t *cfg = ob_config_load(a->path, &errs);
  if (!cfg) {
    for (size_t i = 0; i < errs.len; i++) {
      ob_log_error("reload: %s", errs.items[i]);
      ob_buf_printf(why, "%s\n", errs.items[i]);
    }
    ob_log_error("reload of %s refused (%zu problem%s); the running configuration is unchanged", a->path, errs.len,
                 errs.len == 1 ? "" : "s");
    ob_config_errors_dispose(&errs);
    return false;
  }
  ob_proxy_gen_spec_t spec;
  parts_t *parts = parts_build(cfg, a->cache, a->mcp, &spec);
  if (!ob_net_reload(a->net, cfg)) {
    ob_log_error("reload of %s refused: a listener or upstream could not be set up (see above); the running "
                 "configuration is unchanged", a->path);
    ob_buf_append_str(why, "a listener or upstream could not be set up; see the gateway's log\n");
    parts_dispose(parts);
    ob_config_release(cfg);
    return false;
  }
  warn_fixed(a->cfg, cfg);
  warn_keys(cfg);
  ob_log_set_level(level_of(cfg->log_level));
  ob_proxy_reload(a->proxy, &spec);
  a->mcp = parts->mcp;
  if (a->admin) ob_admin_set_config(a->admin, cfg);
  ob_config_release(a->cfg);
  a->cfg = cfg; /* our load reference */
  log_listeners(a, cfg);
  ob_log_info("reloaded %s: %zu listener(s), %zu upstream(s), %zu route(s), %zu tenant(s)", a->path,
              cfg->num_listeners, cfg->num_upstreams, cfg->num_routes, cfg->num_tenants);
  return true;
}

static void on_sighup(evutil_socket_t sig, short what, void *arg) {
  (void)sig, (void)what;
  ob_buf_t why;
  ob_buf_init(&why);
  ob_log_info("SIGHUP: reloading");
  reload(arg, &why);
  ob_buf_dispose(&why);
}

static ob_cache_store_t *open_cache(const ob_config_t *cfg);
static ob_budget_store_t *open_budgets(const ob_config_t *cfg, ob_budgets_t *b);

static int run(const char *path) {
  ob_config_t *cfg = load_or_report(path, false);
  if (!cfg) return 1;
  ob_log_set_level(level_of(cfg->log_level));
  signal(SIGPIPE, SIG_IGN);
  app_t app = {.path = path, .cfg = cfg};
  app.base = event_base_new();
  warn_keys(cfg);
  app.cache = open_cache(cfg);
  ob_proxy_gen_spec_t spec;
  parts_t *parts = parts_build(cfg, app.cache, NULL, &spec);
  app.mcp = parts->mcp;
  app.proxy = ob_proxy_create(&spec); /* owns parts from here on */
  app.ledger = cfg->ledger.enabled ? ob_ledger_open(&cfg->ledger) : NULL;
  ob_proxy_set_ledger(app.proxy, app.ledger);
  /* Counters are keyed by tenant name and key id, so one table serves every
   * snapshot of the run (reloads included). */
  app.budgets = ob_budgets_create();
  app.budget_store = open_budgets(cfg, app.budgets);
  ob_proxy_set_budgets(app.proxy, app.budgets);
  app.net = ob_net_create(app.base, cfg, ob_proxy_handler(), app.proxy);
  int rc = 0;
  struct event *sigs[3] = {NULL, NULL, NULL};
  if (!app.net) {
    rc = 1;
    goto out;
  }
  ob_proxy_attach(app.proxy, app.net, app.base);
  if (cfg->admin.enabled && !(app.admin = ob_admin_create(app.base, cfg, app.proxy, app.cache, reload, &app))) {
    rc = 1;
    goto out;
  }
  log_listeners(&app, cfg);
  sigs[0] = evsignal_new(app.base, SIGTERM, on_signal, &app);
  sigs[1] = evsignal_new(app.base, SIGINT, on_signal, &app);
  sigs[2] = evsignal_new(app.base, SIGHUP, on_sighup, &app);
  for (int i = 0; i < 3; i++) event_add(sigs[i], NULL);
  event_base_dispatch(app.base);
out:
  for (int i = 0; i < 3; i++)
    if (sigs[i]) event_free(sigs[i]);
  ob_admin_destroy(app.admin);
  ob_net_destroy(app.net);
  ob_proxy_destroy(app.proxy); /* and with it the last generation's parts */
  ob_ledger_close(app.ledger); /* every line of the run reaches the file */
  ob_budget_store_close(app.budget_store); /* the last charges reach the file */
  ob_budgets_destroy(app.budgets);
  ob_cache_store_close(app.cache); /* the writer finishes what was queued */
  event_base_free(app.base);
  ob_config_release(app.cfg);
  return rc;
}

/* The response cache. A file that cannot be used is logged and the
 * gateway serves uncached: the cache never stops it from starting. */
static ob_cache_store_t *open_cache(const ob_config_t *cfg) {
  if (!cfg->cache.enabled) return NULL;
  const char *why = NULL;
  ob_cache_store_t *s = ob_cache_store_open(cfg->cache.path, cfg->cache.max_bytes, &why);
  if (!s) ob_log_warn("cache %s: %s; serving without a cache", cfg->cache.path, why ? why : "cannot open");
  else ob_log_info("cache %s (max %llu bytes)", cfg->cache.path, (unsigned long long)cfg->cache.max_bytes);
  return s;
}

/* Budget counters, kept across restarts in budgets.path (written every
 * 500 ms and at exit by the store's thread). A file that cannot be used is
 * logged and budgets are enforced from memory: like the cache, it never
 * stops the gateway from starting, but a restart then forgets the counts. */
static ob_budget_store_t *open_budgets(const ob_config_t *cfg, ob_budgets_t *b) {
  if (!cfg->budgets.path) return NULL;
  const char *why = NULL;
  ob_budget_store_t *s = ob_budget_store_open(cfg->budgets.path, b, 500, &why);
  if (!s)
    ob_log_warn("budgets %s: %s; enforcing budgets in memory only (a restart resets them)", cfg->budgets.path,
                why ? why : "cannot open");
  else
    ob_log_info("budgets %s", cfg->budgets.path);
  return s;
}

/* obleth cache-purge --config FILE [--tenant NAME]: works while the gateway
 * runs (LMDB allows several processes on one file). */
static int cache_purge(const char *path, const char *tenant) {
  ob_config_t *cfg = load_or_report(path, false);
  if (!cfg) return 1;
  if (!cfg->cache.enabled) {
    fprintf(stderr, "cache-purge: %s configures no cache\n", path);
    ob_config_release(cfg);
    return 1;
  }
  const char *why = NULL;
  ob_cache_store_t *s = ob_cache_store_open(cfg->cache.path, cfg->cache.max_bytes, &why);
  if (!s) {
    fprintf(stderr, "cache-purge: %s: %s\n", cfg->cache.path, why ? why : "cannot open");
    ob_config_release(cfg);
    return 1;
  }
  char scope[300];
  if (tenant) snprintf(scope, sizeof scope, "t:%s", tenant);
  ob_cache_store_purge(s, tenant ? scope : NULL);
  ob_cache_store_sync(s);
  ob_cache_stats_t st;
  ob_cache_store_stats(s, &st);
  ob_cache_store_close(s);
  printf("purged %s; %llu entries left\n", tenant ? scope : "all entries", (unsigned long long)st.entries);
  ob_config_release(cfg);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--version") == 0) {
    printf("obleth %s\n", OB_VERSION);
    return 0;
  }
  if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    usage(stdout);
    return 0;
  }
  if (argc == 3 && strcmp(argv[1], "--check-config") == 0) return check_config(argv[2]);
  if ((argc == 2 || argc == 3) && strcmp(argv[1], "hash-key") == 0) return hash_key(argc == 3 ? argv[2] : NULL);
  if (argc == 3 && strcmp(argv[1], "--config") == 0) return run(argv[2]);
  if ((argc == 4 || argc == 6) && strcmp(argv[1], "cache-purge") == 0 && strcmp(argv[2], "--config") == 0 &&
      (argc == 4 || strcmp(argv[4], "--tenant") == 0))
    return cache_purge(argv[3], argc == 6 ? argv[5] : NULL);
  usage(stderr);
  return 2;
}
