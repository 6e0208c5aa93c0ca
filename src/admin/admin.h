/*
 * admin: the admin listener (admin.address, HTTP/1.1 on libevent's evhttp):
 * /healthz and /readyz without a token; /metrics, /admin/fairshare,
 * /admin/tenants/{name} (GET, PUT), /admin/groups/{name} (PUT) and
 * /admin/cache/purge and /admin/reload (POST) with "Authorization: Bearer <admin.token>" when
 * a token is configured. Uses proxy and cache; runs on the proxy's loop.
 *
 * Ownership: created by main after the proxy is attached; proxy, cache and
 * base are borrowed and must outlive it; cfg is acquired.
 */
#ifndef OB_ADMIN_H
#define OB_ADMIN_H

#include "cache.h"
#include "config.h"
#include "proxy.h"

typedef struct ob_admin ob_admin_t;

/* What POST /admin/reload runs (main's reload, the same as SIGHUP): true
 * when the new config is in force; otherwise false with the reasons, one
 * per line, appended to why. */
typedef bool (*ob_admin_reload_fn)(void *arg, ob_buf_t *why);

/* NULL (logged) when the address cannot be bound. reload/arg borrowed. */
ob_admin_t *ob_admin_create(struct event_base *base, ob_config_t *cfg, ob_proxy_t *proxy, ob_cache_store_t *cache,
                            ob_admin_reload_fn reload, void *arg);
/* After a reload: the token comes from cfg (acquired) from now on. The
 * listener's address stays (changing it needs a restart). */
void ob_admin_set_config(ob_admin_t *a, ob_config_t *cfg);
void ob_admin_destroy(ob_admin_t *a);

#endif /* OB_ADMIN_H */
