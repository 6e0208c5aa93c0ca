/*
 * cluster: the gateway's link to the fleet's Redis (docs/cluster.md). It
 * owns two hiredis connections on one libevent loop (one for commands, one
 * subscribed to this replica's grant channel and the fleet's broadcast
 * channel), the Lua scheduler (cluster.lua, loaded with SCRIPT LOAD and run
 * with EVALSHA), the replica's registration and heartbeat, and the switch
 * between shared mode and fallback. It knows nothing of exchanges, tenants
 * or configs beyond the cluster block: the proxy builds each operation's
 * arguments and reads its integers (src/proxy/fleet.c). Uses core,
 * libevent and hiredis; its settings come as ob_cluster_config_t, a type of
 * this module that the config parses into (config depends on cluster, not
 * the reverse); never blocks the loop, except
 * in ob_cluster_create, which runs before the loop serves anything.
 *
 * Modes: shared (registered, every call goes to Redis) and fallback (Redis
 * unreachable, slow or not answering as expected: calls are refused and the
 * caller decides locally). Any failed or late operation (op_timeout_ms)
 * drops both connections, reports fallback once, and reconnects every
 * 250 ms; once connected, subscribed and registered again (the join
 * operation, whose arguments the owner supplies), shared mode is reported.
 *
 * Threads: everything here runs on the loop given to ob_cluster_create.
 */
#ifndef OB_CLUSTER_H
#define OB_CLUSTER_H

#include "core.h"

#include <hiredis/hiredis.h>

/* What the cluster is given: the "cluster" block of the config file, which
 * the config (one layer up) parses into this type (docs/cluster.md: several
 * replicas share caps, queues, limits and budgets through one Redis; absent
 * = a single process, no Redis). Strings are owned by whoever filled it;
 * ob_cluster_create copies what it keeps. */
typedef enum { OB_CLUSTER_SPLIT = 0, OB_CLUSTER_LOCAL } ob_cluster_fallback_t;
typedef struct ob_cluster_config {
  bool enabled;             /* the key is present */
  char *redis;              /* "redis" as written, with any password replaced by "***" (safe to log) */
  char *host;               /* redis://: host without brackets; NULL for unix: */
  uint16_t port;            /* redis://: explicit or 6379 */
  char *unix_path;          /* unix:/path: the socket, resolved against the config's folder; NULL for redis:// */
  uint32_t db;              /* redis://.../db, default 0 (unix: "?db=N" is not supported) */
  char *username;           /* redis://user:pass@...: ACL user; NULL = default user */
  char *password;           /* from the URL or "password_file" (first line, trailing newline dropped);
                               NULL = none. Secret: never logged, wiped on free */
  char *password_file;      /* "password_file", resolved; NULL when absent */
  char *ns;                 /* "namespace": key prefix, default "obleth"; 1..64 of [A-Za-z0-9_.:-] */
  char *replica_id;         /* "replica_id": default "<hostname>:<pid>"; 1..128 printable ASCII, no spaces */
  uint32_t lease_ms;        /* "lease_ms", default 3000, 300..600000 */
  uint32_t op_timeout_ms;   /* "op_timeout_ms", default 200, 10..60000 and at most lease_ms / 3 */
  ob_cluster_fallback_t fallback; /* "fallback": "split" (default) | "local" */
} ob_cluster_config_t;


struct event_base;
typedef struct ob_cluster ob_cluster_t;

/* ---------------------------------------------------------------- arguments */

/* An argument list under construction. Owns its bytes until
 * ob_cluster_args_dispose. */
typedef struct ob_cluster_args {
  ob_buf_t bytes;
  size_t *ends;   /* end offset of each argument in bytes */
  size_t argc, cap;
} ob_cluster_args_t;

void ob_cluster_args_init(ob_cluster_args_t *a);
void ob_cluster_args_dispose(ob_cluster_args_t *a);
void ob_cluster_args_reset(ob_cluster_args_t *a);
void ob_cluster_args_mem(ob_cluster_args_t *a, const void *p, size_t n);
static inline void ob_cluster_args_str(ob_cluster_args_t *a, const char *s) { ob_cluster_args_mem(a, s, strlen(s)); }
void ob_cluster_args_u64(ob_cluster_args_t *a, uint64_t v);
void ob_cluster_args_i64(ob_cluster_args_t *a, int64_t v);
/* Two strings joined by "\0" (the scheduler's field names, cluster.lua). */
void ob_cluster_args_pair(ob_cluster_args_t *a, const char *kind, const char *name);

/* ---------------------------------------------------------------- replies (pure) */

/*
 * Redis is a peer like any other: every reply is checked before use.
 * ob_cluster_reply_ints: an array of at most max integers (what every
 * decision of cluster.lua answers) into out; false for anything else (an
 * error reply, a nil, a nested array, too many elements).
 */
bool ob_cluster_reply_ints(const redisReply *r, int64_t *out, size_t max, size_t *n);

/* Bound what one reply may make the reader allocate: arrays of at most
 * OB_CLUSTER_MAX_ELEMENTS, strings of at most OB_CLUSTER_MAX_STRING bytes
 * (more: the reader fails). rd: a reader with hiredis's default object
 * functions; every one gets the same bounds. */
#define OB_CLUSTER_MAX_ELEMENTS 65536
#define OB_CLUSTER_MAX_STRING (1u << 20)
void ob_cluster_reader_bound(redisReader *rd);

/* One replica as the info operation reports it. */
typedef struct ob_cluster_replica_info {
  char *id;
  int64_t age_ms;            /* since it was last heard from */
  char *digest;              /* its config's digest */
  char **pools;              /* pool names it holds slots in ... */
  int64_t *held;             /* ... and how many */
  size_t num_pools;
} ob_cluster_replica_info_t;

/* The fleet's state (the info operation). Owned by the caller once parsed;
 * ob_cluster_info_dispose frees it. Counters keep cluster.lua's field names
 * ("a", "q", "p\0<pool>", "pq\0<pool>", "t\0<tenant>", "tq\0<tenant>",
 * "s\0<tenant>"), with their length since they hold a "\0". */
typedef struct ob_cluster_info {
  ob_cluster_replica_info_t *replicas;
  size_t num_replicas;
  ob_iov_t *counter_names;   /* each points into names_buf */
  int64_t *counter_values;
  size_t num_counters;
  char *names_buf;
} ob_cluster_info_t;

/* false (out disposed and zeroed) when the reply does not have the info
 * operation's shape or a number is not a number. */
bool ob_cluster_info_parse(const redisReply *r, ob_cluster_info_t *out);
void ob_cluster_info_dispose(ob_cluster_info_t *i);
/* The counter named kind "\0" name (name NULL: kind alone), 0 when absent. */
int64_t ob_cluster_info_counter(const ob_cluster_info_t *i, const char *kind, const char *name);

/* ---------------------------------------------------------------- the link */

typedef struct ob_cluster_hooks {
  void *user;
  /* Arguments of the join operation after the op name, namespace, id,
   * epoch, nonce and lease: see cluster.lua's "join". Called each time the
   * replica (re)registers. */
  void (*join_args)(void *user, ob_cluster_args_t *a);
  /* Shared mode began (true) or ended (false). */
  void (*on_mode)(void *user, bool shared);
  /* A heartbeat's answer: live replicas, and how many distinct config
   * digests they run (more than 1: their configs disagree). */
  void (*on_beat)(void *user, uint32_t replicas, uint32_t digests);
  /* The scheduler granted a slot to one of this replica's queued requests
   * (reqid: as passed to admit, borrowed for the call). */
  void (*on_grant)(void *user, const char *reqid, size_t len);
  /* A message another replica (or this one) broadcast (borrowed for the call). */
  void (*on_message)(void *user, const char *msg, size_t len);
  /* The digest of this replica's caps and weights, for heartbeats
   * (borrowed until the next call). */
  const char *(*digest)(void *user);
} ob_cluster_hooks_t;

/* The answer to one call. ok false: the call failed (error reply, timeout,
 * connection lost, a reply of the wrong shape, or this replica no longer
 * registered); the mode is fallback by the time the callback runs. ints:
 * the reply's integers for ops that answer an array of integers. reply:
 * the raw reply, valid only during the callback (NULL when !ok). */
typedef struct ob_cluster_result {
  bool ok;
  int64_t ints[8];
  size_t n;
  const redisReply *reply;
} ob_cluster_result_t;
typedef void (*ob_cluster_cb)(void *arg, const ob_cluster_result_t *r);

/*
 * Connect and register. cfg (the cluster block, copied) and hooks (copied;
 * user borrowed for the link's life). Before returning it checks, with a
 * blocking connection (start-up only), that no live replica already uses
 * cfg->replica_id, waiting up to lease_ms for one that stopped to expire:
 * NULL with *why set (static text) when one does. When Redis cannot be
 * reached it logs that, starts in fallback and keeps trying.
 */
ob_cluster_t *ob_cluster_create(struct event_base *base, const ob_cluster_config_t *cfg,
                                const ob_cluster_hooks_t *hooks, const char **why);
/* Leave the fleet (what this replica holds is given back at once, when
 * Redis answers within op_timeout_ms) and free everything. Pending calls'
 * callbacks run with ok false. NULL is a no-op. */
void ob_cluster_destroy(ob_cluster_t *c);

bool ob_cluster_shared(const ob_cluster_t *c);

/*
 * Run op of cluster.lua with args (read during the call). cb runs exactly
 * once, on the loop, later (never inside this call). Returns false without
 * calling cb when not in shared mode. int_reply: the op answers an array
 * of integers (checked into r->ints); else the raw reply is handed over.
 */
bool ob_cluster_call(ob_cluster_t *c, const char *op, const ob_cluster_args_t *args, bool int_reply, ob_cluster_cb cb,
                     void *arg);
/* Broadcast msg to every replica, this one included (fire and forget;
 * false when not in shared mode). */
bool ob_cluster_publish(ob_cluster_t *c, const char *msg, size_t len);

/* ---------------------------------------------------------------- observing */

enum {
  OB_CLUSTER_OP_CONNECT, OB_CLUSTER_OP_JOIN, OB_CLUSTER_OP_ADMIT, OB_CLUSTER_OP_RELEASE, OB_CLUSTER_OP_CANCEL,
  OB_CLUSTER_OP_BEAT, OB_CLUSTER_OP_CONFIG, OB_CLUSTER_OP_STREAM, OB_CLUSTER_OP_INFO, OB_CLUSTER_OP_BUDGET,
  OB_CLUSTER_OP_LEAVE, OB_CLUSTER_OP_PUBLISH, OB_CLUSTER_OP_CAPACITY, OB_CLUSTER_OPS
};
enum { OB_CLUSTER_OK, OB_CLUSTER_ERROR, OB_CLUSTER_TIMEOUT, OB_CLUSTER_RESULTS };
#define OB_CLUSTER_BUCKETS 14

typedef struct ob_cluster_stats {
  bool shared;
  uint32_t replicas;         /* live replicas at the last heartbeat (1 before any) */
  uint32_t digests;          /* distinct config digests among them */
  uint64_t fallbacks;        /* times shared mode was left */
  uint64_t ops[OB_CLUSTER_OPS][OB_CLUSTER_RESULTS];
  uint64_t lat_counts[OB_CLUSTER_BUCKETS]; /* cumulative, by ob_cluster_bucket_le */
  uint64_t lat_count;
  double lat_sum;            /* seconds */
  double last_latency_s;     /* the last heartbeat's round trip */
  int64_t epoch;
} ob_cluster_stats_t;

extern const char *const ob_cluster_op_names[OB_CLUSTER_OPS];
extern const char *const ob_cluster_result_names[OB_CLUSTER_RESULTS];
extern const double ob_cluster_bucket_le[OB_CLUSTER_BUCKETS]; /* seconds; the last is +Inf */

void ob_cluster_get_stats(const ob_cluster_t *c, ob_cluster_stats_t *out);
/* The operation named name, or -1. */
int ob_cluster_op_index(const char *name);

#endif /* OB_CLUSTER_H */
