/*
 * tenant: who is calling. Builds a key directory from a config snapshot and
 * resolves the API key of a request (Authorization: Bearer, or x-api-key)
 * to a tenant and key, in O(1) on the key's SHA-256 and with a
 * constant-time comparison of digests. The directory keeps no plaintext
 * key (a connection's memo, below, keeps its own last one). Uses only
 * core: the tenants come as ob_tenant_conf_t, a type of this module, which
 * the config parses into (config depends on tenant, not the reverse).
 *
 * Ownership: a directory borrows the tenant array it was built from (the
 * caller keeps it alive at least as long as the directory); identities it
 * returns point into that array.
 *
 * Also token budgets (budget.c, budget_store.c): the used-token counters of
 * tenants and keys per UTC period, and the LMDB file that keeps them across
 * restarts. Exception to "uses only core": LMDB and pthreads, for that file
 * and its writer thread.
 */
#ifndef OB_TENANT_H
#define OB_TENANT_H

#include "core.h"

/*
 * What the tenant module is given: the tenants as the config file describes
 * them (the config, one layer up, parses "tenants" straight into these; see
 * docs/config.md for each key). Every string and array is owned by whoever
 * built the array (the config snapshot) and is NUL-terminated; this module
 * only reads them, and never past the life of the directory built on them.
 */
/* "budget_period": the UTC calendar period a token budget covers. */
typedef enum { OB_BUDGET_MONTH = 0, OB_BUDGET_DAY, OB_BUDGET_TOTAL } ob_budget_period_t;

/* An API key. Only its SHA-256 is kept: a plain "secret" in the file is
 * hashed at load and the text is wiped from the parser's memory. */
typedef struct ob_tenant_key_conf {
  char *id;                 /* "id", required, unique across all tenants */
  uint8_t sha256[32];       /* from "sha256" (64 hex digits) or "secret" */
  bool from_secret;         /* given as "secret" (start-up warns) */
  bool disabled;            /* "disabled", default false */
  uint64_t budget_tokens;   /* "budget_tokens": tokens per budget_period, 0 = no budget */
  ob_budget_period_t budget_period; /* "budget_period": "month" (default), "day" or "total" */
} ob_tenant_key_conf_t;

/* "mcp_tools": {"<upstream>": [...]}: the tools a tenant may see and call
 * on one MCP upstream. */
typedef struct ob_tenant_mcp_tools {
  char *upstream;
  char **tools;
  size_t num_tools;
} ob_tenant_mcp_tools_t;

typedef struct ob_tenant_conf {
  char *name;               /* unique */
  char *group;              /* "group": a group name; default "default" (created implicitly, weight 1) */
  uint32_t weight;          /* default 1, >= 1 */
  uint32_t max_inflight;    /* 0 = unlimited */
  uint32_t max_queue;       /* 0 = unlimited */
  uint64_t rpm;             /* requests per minute, 0 = unlimited */
  uint64_t tpm;             /* tokens per minute, 0 = unlimited */
  char **models;            /* allow-list; absent = ["*"] */
  size_t num_models;
  bool all_models;          /* "*" in the list (or the list absent) */
  bool disabled;
  ob_tenant_key_conf_t *keys;
  size_t num_keys;
  uint32_t max_streams;     /* open MCP GET event streams at once; 0 = unlimited */
  ob_tenant_mcp_tools_t *mcp_tools; /* absent for an upstream: every tool allowed */
  size_t num_mcp_tools;
  uint64_t budget_tokens;   /* "budget_tokens": tokens per budget_period, 0 = no budget */
  ob_budget_period_t budget_period; /* "budget_period": "month" (default), "day" or "total" */
} ob_tenant_conf_t;


typedef struct ob_tenants ob_tenants_t;

typedef struct ob_identity {
  const ob_tenant_conf_t *tenant;   /* borrowed from the directory's tenants */
  const ob_tenant_key_conf_t *key;
  size_t tenant_index;              /* index in the directory's tenants */
} ob_identity_t;

typedef enum {
  OB_AUTH_OK = 0,
  OB_AUTH_MISSING,   /* no key in the request: 401 */
  OB_AUTH_UNKNOWN,   /* no such key: 401 */
  OB_AUTH_DISABLED,  /* the key or its tenant is disabled: 403 */
  OB_AUTH_AMBIGUOUS, /* Authorization and x-api-key name different keys: 400 */
} ob_auth_t;

/* Index the keys of tenants[0..num_tenants) (borrowed: the array and all it
 * points to must outlive the directory; the proxy keeps the config snapshot
 * that holds them). tenants may be NULL when num_tenants is 0. */
ob_tenants_t *ob_tenants_create(const ob_tenant_conf_t *tenants, size_t num_tenants);
void ob_tenants_destroy(ob_tenants_t *t);

/* True when the snapshot has tenants, i.e. requests must carry a key. */
bool ob_tenants_required(const ob_tenants_t *t);

/*
 * Resolve a request's key. authorization: the Authorization header value
 * ("Bearer <key>", scheme case-insensitive), or empty; x_api_key: the
 * x-api-key header value, or empty. When both carry a key they must be the
 * same key, else OB_AUTH_AMBIGUOUS (no key is looked up: which one the
 * client meant is unknown). Borrowed for the call. On OB_AUTH_OK and
 * OB_AUTH_DISABLED *out is filled.
 */
ob_auth_t ob_tenants_identify(const ob_tenants_t *t, ob_iov_t authorization, ob_iov_t x_api_key, ob_identity_t *out);

/*
 * What one client connection remembers of the last key it identified, so
 * that its next request with the same key skips the SHA-256 and the lookup
 * (most connections carry one key). It holds that key in plain text, as the
 * connection's HPACK table does for HTTP/2 anyway; the directory itself
 * still keeps none. Owned by the caller (zero-initialized = empty), used on
 * one thread; wipe it with ob_tenant_memo_wipe when the connection goes. An
 * entry made with another directory (a reload) is never used: directories
 * have process-unique serials. Keys of up to 100 bytes are remembered.
 */
typedef struct ob_tenant_memo {
  uint64_t serial;      /* of the directory that identified the key; 0: empty */
  ob_identity_t who;
  ob_auth_t result;     /* OB_AUTH_OK or OB_AUTH_DISABLED */
  uint8_t len;
  char key[100];
} ob_tenant_memo_t;

/* ob_tenants_identify, answered from m when it holds the same key for t,
 * else looked up and remembered in m (m may be NULL). */
ob_auth_t ob_tenants_identify_memo(const ob_tenants_t *t, ob_tenant_memo_t *m, ob_iov_t authorization,
                                   ob_iov_t x_api_key, ob_identity_t *out);
void ob_tenant_memo_wipe(ob_tenant_memo_t *m);

/* The tenant's model allow-list admits model ("*" admits all). */
bool ob_tenant_allows_model(const ob_tenant_conf_t *t, ob_iov_t model);

/* Lower-case hex SHA-256 of secret into out (65 bytes with the NUL); what
 * `obleth hash-key` prints and a key's "sha256" holds. */
void ob_tenant_hash_key(ob_iov_t secret, char out[65]);

/* ---------------------------------------------------------------- budgets */

/*
 * Token budgets. Counters are keyed by who (a tenant name or a key id) and
 * by period, never by position in a snapshot, so they outlive any config:
 * a reload, a restart (through the store below) or a changed budget_period
 * find the count where they left it. A counter of a period that is over is
 * simply never asked for again; for a new period the count starts at 0.
 *
 * Thread safety: an ob_budgets_t has a lock of its own: the event loop
 * charges and reads, the store's writer thread collects what changed. Time
 * is always passed in (unix seconds, UTC).
 */

/* A period id: "d:2026-11-24", "m:2026-11" or "total". */
#define OB_BUDGET_PERIOD_ID_MAX 24

/* The id of the period of kind p that holds unix_s, into out (NUL
 * terminated); returns its length. */
size_t ob_budget_period_id(ob_budget_period_t p, int64_t unix_s, char out[OB_BUDGET_PERIOD_ID_MAX]);
/* The first second after that period (when the count starts again from 0);
 * 0 for "total", which never ends. */
int64_t ob_budget_period_end(ob_budget_period_t p, int64_t unix_s);
/* "day", "month" or "total" (static). */
const char *ob_budget_period_name(ob_budget_period_t p);

/* Tenant names and key ids are separate name spaces. */
typedef enum { OB_BUDGET_TENANT = 't', OB_BUDGET_KEY = 'k' } ob_budget_kind_t;

typedef struct ob_budgets ob_budgets_t;

ob_budgets_t *ob_budgets_create(void);
/* NULL is a no-op. The store, if any, must be closed first. */
void ob_budgets_destroy(ob_budgets_t *b);

/* Tokens name (borrowed for the call) used in period (an id from
 * ob_budget_period_id); 0 when nothing was charged in it. */
uint64_t ob_budgets_used(ob_budgets_t *b, ob_budget_kind_t kind, const char *name, const char *period);
/* Add tokens to name's count for period. The first charge of a period
 * allocates its counter; every later one only adds. */
void ob_budgets_charge(ob_budgets_t *b, ob_budget_kind_t kind, const char *name, const char *period, uint64_t tokens);

/*
 * For the store. A counter travels as a row: the key "<kind><name>\0<period>"
 * (names and periods never hold a NUL; the config refuses \u0000) and the
 * used count.
 *
 * ob_budgets_take_dirty appends every counter changed since the last call
 * to out as records [u32 key length][key][u64 used] (native byte order; out
 * is the caller's) and marks them clean; returns how many. When writing
 * them fails, ob_budgets_redirty(b, out) marks those still present dirty
 * again so the next round retries.
 */
size_t ob_budgets_take_dirty(ob_budgets_t *b, ob_buf_t *out);
void ob_budgets_redirty(ob_budgets_t *b, ob_iov_t records);
/* Append one record (key copied). */
void ob_budgets_put_record(ob_buf_t *out, ob_iov_t key, uint64_t used);
/* Read the record at the front of *records and advance past it. False at
 * the end or on a malformed record. key borrowed from records. */
bool ob_budgets_next_record(ob_iov_t *records, ob_iov_t *key, uint64_t *used);
/* Forget clean counters whose period is over at now_s, appending their keys
 * as records (used 0) to gone so the store can delete them too; returns how
 * many. Dirty ones stay until they were written. Walks the whole table:
 * the store calls it when the day changes, not every round. */
size_t ob_budgets_prune(ob_budgets_t *b, int64_t now_s, ob_buf_t *gone);
/* Add a stored row's count (key borrowed for the call) to memory. False,
 * and nothing added, when the key is malformed or its period is over at
 * now_s: the caller deletes the row. A counter that already had a count
 * (charged before the store opened) is marked dirty to write the sum. */
bool ob_budgets_restore(ob_budgets_t *b, ob_iov_t key, uint64_t used, int64_t now_s);

/* Counters in memory, and failed store writes (counted by the store). */
size_t ob_budgets_count(ob_budgets_t *b);
void ob_budgets_add_write_errors(ob_budgets_t *b, uint64_t n);
uint64_t ob_budgets_write_errors(ob_budgets_t *b);

/*
 * The LMDB file of a budgets table. Open loads the rows of periods not yet
 * over into b (and deletes the others), then a writer thread writes the
 * counters that changed every interval_ms, off the event loop, and once
 * more at close. b is borrowed and must outlive the store. NULL, with *why
 * (static or mdb_strerror text) set, when the file cannot be used: the
 * caller logs it and budgets are kept in memory only.
 */
typedef struct ob_budget_store ob_budget_store_t;
ob_budget_store_t *ob_budget_store_open(const char *path, ob_budgets_t *b, uint32_t interval_ms, const char **why);
/* Write what changed now and wait until it is on disk (tests, tools). */
void ob_budget_store_flush(ob_budget_store_t *s);
/* Write what changed, stop the writer, close the file. NULL is a no-op. */
void ob_budget_store_close(ob_budget_store_t *s);

#endif /* OB_TENANT_H */
