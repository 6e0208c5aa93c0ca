/*
 * main.c: the process. Parses the command line, loads the config, wires
 * net -> proxy -> routes on one event loop per worker ("workers": N
 * threads, the first of them this one, which also runs the admin API and
 * the signals), and turns SIGTERM / SIGINT into a graceful shutdown of
 * every worker (stop accepting, GOAWAY, let streams finish within the grace
 * period, exit 0).
 */
#include "config.h"
#include "core.h"
#include "net.h"
#include "proxy.h"
#include "admin.h"
#include "mcp.h"
#include "routes.h"
#include "tenant.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
  if (!ob_net_tls_check(&c->net)) {
    ob_config_release(c);
    return 1;
  }
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
  g->tenants = ob_tenants_create(cfg->tenants, cfg->num_tenants);
  g->mcp = ob_mcp_create_after(cfg, prev_mcp);
  const ob_route_binding_t bindings[] = {{&ob_mcp_class, g->mcp}};
  g->routes = ob_routes_create(cfg, bindings, sizeof bindings / sizeof bindings[0]);
  ob_routes_set_cache(g->routes, cache);
  *spec = (ob_proxy_gen_spec_t){cfg, g->tenants, ob_routes_find, g->routes, parts_dispose, g};
  return g;
}

/* One event loop and what runs on it. */
typedef struct worker {
  struct app *app;
  size_t index;
  struct event_base *base;
  ob_net_t *net;
  ob_proxy_t *proxy;
  const ob_mcp_t *mcp;      /* the current generation's, owned by it */
  pthread_t thread;
  bool started;             /* thread is running (workers after the first) */
} worker_t;

typedef struct app {
  const char *path;
  struct event_base *base;  /* the first worker's */
  ob_config_t *cfg;         /* counted: the config in force */
  ob_net_t *net;            /* the first worker's */
  ob_proxy_t *proxy;        /* the first worker's: the admin API's view of all */
  worker_t *workers;
  size_t num_workers;
  ob_admin_t *admin;
  ob_cache_store_t *cache;
  ob_ledger_t *ledger;
  ob_budgets_t *budgets;
  ob_budget_store_t *budget_store;
  bool stopping;
  size_t drained;           /* workers whose connections are all closed (atomic) */
  ob_waker_t *drained_waker; /* the last worker to drain wakes the first's loop */
} app_t;

/* Every worker drained: the first worker's loop (signals, admin) ends last. */
static void all_drained(void *arg) {
  app_t *a = arg;
  ob_log_info("all connections closed; exiting");
  event_base_loopexit(a->base, NULL);
}

static void on_drained(void *arg) {
  worker_t *w = arg;
  app_t *a = w->app;
  if (w->index != 0) event_base_loopexit(w->base, NULL); /* its thread ends */
  if (__atomic_add_fetch(&a->drained, 1, __ATOMIC_ACQ_REL) != a->num_workers) return;
  if (w->index == 0) {
    all_drained(a);
  } else {
    ob_waker_wake(a->drained_waker);
  }
}

/* On the worker's loop (ob_proxy_run_on). */
static void worker_shutdown(void *arg) {
  worker_t *w = arg;
  ob_net_shutdown(w->net, on_drained, w);
}

static void worker_exit_now(void *arg) {
  worker_t *w = arg;
  event_base_loopexit(w->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)what;
  app_t *a = arg;
  bool now = a->stopping;
  if (now) ob_log_warn("second signal %d: exiting now", (int)sig);
  else ob_log_info("signal %d: graceful shutdown", (int)sig);
  a->stopping = true;
  /* The others first: the first worker's own shutdown may end its loop. */
  for (size_t i = a->num_workers; i-- > 0;)
    ob_proxy_run_on(a->workers[i].proxy, now ? worker_exit_now : worker_shutdown, &a->workers[i]);
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
  if (o->net.workers != n->net.workers)
    ob_log_warn("reload: %u worker(s) keep running (workers changes need a restart)", o->net.workers);
  const ob_config_cluster_t *oc = &o->cluster, *nc = &n->cluster;
  if (oc->enabled != nc->enabled || !same(oc->redis, nc->redis) || !same(oc->password, nc->password) ||
      !same(oc->ns, nc->ns) || !same(oc->replica_id, nc->replica_id) || oc->lease_ms != nc->lease_ms ||
      oc->op_timeout_ms != nc->op_timeout_ms || oc->fallback != nc->fallback)
    ob_log_warn("reload: the cluster link stays as it was (cluster changes need a restart)");
}

/* A further worker's part of a reload, on its own loop. */
typedef struct {
  worker_t *w;
  ob_config_t *cfg;
  const ob_net_t *first;
  ob_proxy_gen_spec_t spec;
  parts_t *parts;
  bool ok;
} worker_reload_t;

static void worker_reload(void *arg) {
  worker_reload_t *r = arg;
  r->ok = ob_net_reload_worker(r->w->net, &r->cfg->net, r->first);
  if (!r->ok) return;
  ob_proxy_reload(r->w->proxy, &r->spec);
  r->w->mcp = r->parts->mcp;
}

static void log_listeners(const app_t *a, const ob_config_t *cfg) {
  for (size_t i = 0; i < cfg->net.num_listeners; i++)
    ob_log_info("listening on %s (%s)", ob_net_listener_address(a->net, i),
                cfg->net.listeners[i].tls ? "tls: h2, http/1.1" : "http/1.1, h2c");
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
  parts_t *parts = parts_build(cfg, a->cache, a->workers[0].mcp, &spec);
  if (!ob_net_reload(a->net, &cfg->net)) {
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
  a->workers[0].mcp = parts->mcp;
  /* The first worker has bound every new listener and built every new
   * pool, so what could fail has been tried; the others follow it. */
  for (size_t i = 1; i < a->num_workers; i++) {
    worker_reload_t r = {&a->workers[i], cfg, a->net, {0}, NULL, false};
    r.parts = parts_build(cfg, a->cache, a->workers[i].mcp, &r.spec);
    ob_proxy_run_on(a->workers[i].proxy, worker_reload, &r);
    if (!r.ok) {
      ob_log_error("reload: worker %zu could not set up its listeners or upstreams and keeps the previous "
                   "configuration", i);
      parts_dispose(r.parts);
    }
  }
  if (a->admin) ob_admin_set_config(a->admin, cfg);
  ob_config_release(a->cfg);
  a->cfg = cfg; /* our load reference */
  log_listeners(a, cfg);
  ob_log_info("reloaded %s: %zu listener(s), %zu upstream(s), %zu route(s), %zu tenant(s)", a->path,
              cfg->net.num_listeners, cfg->num_upstreams, cfg->num_routes, cfg->num_tenants);
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

/* Workers after the first: run the loop until shutdown drains it. */
static void *worker_main(void *arg) {
  worker_t *w = arg;
  event_base_dispatch(w->base);
  ob_proxy_loop_end(w->proxy);
  return NULL;
}

/* Set up worker i (after the first) on the first's thread. */
static bool worker_create(app_t *a, size_t i) {
  worker_t *w = &a->workers[i];
  w->app = a;
  w->index = i;
  w->base = event_base_new();
  ob_proxy_gen_spec_t spec;
  /* The first worker's MCP session key, so a session works on any worker. */
  parts_t *parts = parts_build(a->cfg, a->cache, a->workers[0].mcp, &spec);
  w->mcp = parts->mcp;
  w->proxy = ob_proxy_create_worker(a->proxy, &spec);
  w->net = ob_net_create_worker(w->base, &a->cfg->net, ob_proxy_handler(), w->proxy, a->net);
  if (!w->net) return false;
  ob_proxy_attach(w->proxy, w->net, w->base);
  return true;
}

static int run(const char *path) {
  ob_config_t *cfg = load_or_report(path, false);
  if (!cfg) return 1;
  ob_log_set_level(level_of(cfg->log_level));
  signal(SIGPIPE, SIG_IGN);
  app_t app = {.path = path, .cfg = cfg, .num_workers = cfg->net.workers};
  app.workers = ob_xcalloc(app.num_workers, sizeof *app.workers);
  worker_t *first = &app.workers[0];
  first->app = &app;
  app.base = first->base = event_base_new();
  warn_keys(cfg);
  app.cache = open_cache(cfg);
  ob_proxy_gen_spec_t spec;
  parts_t *parts = parts_build(cfg, app.cache, NULL, &spec);
  first->mcp = parts->mcp;
  app.proxy = first->proxy = ob_proxy_create(&spec); /* owns parts from here on */
  app.ledger = cfg->ledger.enabled ? ob_ledger_open(&cfg->ledger) : NULL;
  ob_proxy_set_ledger(app.proxy, app.ledger);
  /* Counters are keyed by tenant name and key id, so one table serves every
   * snapshot of the run (reloads included). */
  app.budgets = ob_budgets_create();
  app.budget_store = open_budgets(cfg, app.budgets);
  ob_proxy_set_budgets(app.proxy, app.budgets);
  app.net = first->net = ob_net_create(app.base, &cfg->net, ob_proxy_handler(), app.proxy);
  int rc = 0;
  struct event *sigs[3] = {NULL, NULL, NULL};
  if (!app.net) {
    rc = 1;
    goto out;
  }
  ob_proxy_attach(app.proxy, app.net, app.base);
  const char *why = NULL;
  if (!ob_proxy_cluster_start(app.proxy, &why)) {
    ob_log_error("cluster: %s (\"%s\"); not starting", why, cfg->cluster.replica_id);
    rc = 1;
    goto out;
  }
  for (size_t i = 1; i < app.num_workers; i++) {
    if (!worker_create(&app, i)) {
      rc = 1;
      goto out;
    }
  }
  if (cfg->admin.enabled && !(app.admin = ob_admin_create(app.base, cfg, app.proxy, app.cache, reload, &app))) {
    rc = 1;
    goto out;
  }
  if (!(app.drained_waker = ob_waker_new(app.base, all_drained, &app))) {
    rc = 1;
    goto out;
  }
  if (app.num_workers > 1) ob_log_info("%zu workers (event-loop threads) share one scheduler", app.num_workers);
  /* Signals go to this thread's loop: the others block them. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM), sigaddset(&block, SIGINT), sigaddset(&block, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  for (size_t i = 1; i < app.num_workers && rc == 0; i++) {
    worker_t *w = &app.workers[i];
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
      /* Its listeners are bound: connections the kernel gives it would hang. */
      ob_log_error("worker %zu: cannot start a thread: %s", i, strerror(errno));
      rc = 1;
      break;
    }
    w->started = true;
    ob_proxy_loop_begin(w->proxy, w->thread);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc) goto out;
  log_listeners(&app, cfg);
  sigs[0] = evsignal_new(app.base, SIGTERM, on_signal, &app);
  sigs[1] = evsignal_new(app.base, SIGINT, on_signal, &app);
  sigs[2] = evsignal_new(app.base, SIGHUP, on_sighup, &app);
  for (int i = 0; i < 3; i++) event_add(sigs[i], NULL);
  ob_proxy_loop_begin(app.proxy, pthread_self());
  event_base_dispatch(app.base);
  ob_proxy_loop_end(app.proxy);
out:
  /* A failed start-up stops the workers already running. */
  for (size_t i = 1; rc && i < app.num_workers; i++)
    if (app.workers[i].started) ob_proxy_run_on(app.workers[i].proxy, worker_exit_now, &app.workers[i]);
  /* After a shutdown the others finish their own streams (up to the grace
   * period) before they are joined. */
  for (size_t i = 1; i < app.num_workers; i++)
    if (app.workers[i].started) pthread_join(app.workers[i].thread, NULL);
  for (int i = 0; i < 3; i++)
    if (sigs[i]) event_free(sigs[i]);
  ob_waker_free(app.drained_waker);
  ob_admin_destroy(app.admin);
  /* Every net before any proxy: closing a connection may hand its slot to
   * a request of another worker, whose proxy must still be there. */
  for (size_t i = app.num_workers; i-- > 0;) ob_net_destroy(app.workers[i].net);
  /* After every exchange is gone: leaving gives back whatever is left. */
  if (app.proxy) ob_proxy_cluster_stop(app.proxy);
  for (size_t i = app.num_workers; i-- > 0;) ob_proxy_destroy(app.workers[i].proxy); /* and their parts */
  ob_ledger_close(app.ledger); /* every line of the run reaches the file */
  ob_budget_store_close(app.budget_store); /* the last charges reach the file */
  ob_budgets_destroy(app.budgets);
  ob_cache_store_close(app.cache); /* the writer finishes what was queued */
  for (size_t i = app.num_workers; i-- > 0;)
    if (app.workers[i].base) event_base_free(app.workers[i].base);
  free(app.workers);
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
