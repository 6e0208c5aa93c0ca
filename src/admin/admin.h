/*
 * admin: the admin listener (admin.address, HTTP/1.1 on libevent's evhttp):
 * /healthz and /readyz without a token; /metrics, /admin/fairshare,
 * /admin/tenants/{name} (GET, PUT), /admin/groups/{name} (PUT) and
 * /admin/cache/purge (POST) with "Authorization: Bearer <admin.token>" when
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

/* NULL (logged) when the address cannot be bound. */
ob_admin_t *ob_admin_create(struct event_base *base, ob_config_t *cfg, ob_proxy_t *proxy, ob_cache_store_t *cache);
void ob_admin_destroy(ob_admin_t *a);

#endif /* OB_ADMIN_H */
