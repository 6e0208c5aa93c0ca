/*
 * tenant: who is calling. Builds a key directory from a config snapshot and
 * resolves the API key of a request (Authorization: Bearer, or x-api-key)
 * to a tenant and key, in O(1) on the key's SHA-256 and with a
 * constant-time comparison of digests. No plaintext key is kept. Uses core
 * and config (the config snapshot holds the tenants; this module indexes
 * them).
 *
 * Ownership: a directory borrows the snapshot it was built from (the caller
 * keeps the snapshot alive at least as long as the directory); identities
 * it returns point into that snapshot.
 */
#ifndef OB_TENANT_H
#define OB_TENANT_H

#include "config.h"
#include "core.h"

typedef struct ob_tenants ob_tenants_t;

typedef struct ob_identity {
  const ob_config_tenant_t *tenant; /* borrowed from the snapshot */
  const ob_config_key_t *key;
  size_t tenant_index;              /* index in cfg->tenants */
} ob_identity_t;

typedef enum {
  OB_AUTH_OK = 0,
  OB_AUTH_MISSING,   /* no key in the request: 401 */
  OB_AUTH_UNKNOWN,   /* no such key: 401 */
  OB_AUTH_DISABLED,  /* the key or its tenant is disabled: 403 */
} ob_auth_t;

/* Index cfg's keys (cfg borrowed; must outlive the directory). */
ob_tenants_t *ob_tenants_create(const ob_config_t *cfg);
void ob_tenants_destroy(ob_tenants_t *t);

/* True when the snapshot has tenants, i.e. requests must carry a key. */
bool ob_tenants_required(const ob_tenants_t *t);

/*
 * Resolve a request's key. authorization: the Authorization header value
 * ("Bearer <key>", scheme case-insensitive), or empty; x_api_key: the
 * x-api-key header value, or empty. Authorization wins when both are set.
 * Borrowed for the call. On OB_AUTH_OK and OB_AUTH_DISABLED *out is filled.
 */
ob_auth_t ob_tenants_identify(const ob_tenants_t *t, ob_iov_t authorization, ob_iov_t x_api_key, ob_identity_t *out);

/* The tenant's model allow-list admits model ("*" admits all). */
bool ob_tenant_allows_model(const ob_config_tenant_t *t, ob_iov_t model);

/* Lower-case hex SHA-256 of secret into out (65 bytes with the NUL); what
 * `obleth hash-key` prints and a key's "sha256" holds. */
void ob_tenant_hash_key(ob_iov_t secret, char out[65]);

#endif /* OB_TENANT_H */
