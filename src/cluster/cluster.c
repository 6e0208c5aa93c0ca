/*
 * cluster.c: the Redis link (see cluster.h for the contract). It owns the
 * two hiredis connections, the loaded script's SHA, the epoch this replica
 * registered under, the heartbeat and the reconnect timer, and the list of
 * calls waiting for their reply. It must not know what the calls mean:
 * their arguments and integers belong to src/proxy/fleet.c.
 *
 * Why a list of its own: hiredis 0.14 (Debian 12) has no command timeout
 * on asynchronous contexts. Replies on one connection come back in the
 * order the commands went out, so the oldest call's deadline is the only
 * one a timer needs to watch; when it passes, the link is dropped, which
 * makes hiredis call every pending callback with no reply, and each call
 * fails exactly once through its own callback.
 *
 * Link states:
 *   DOWN      nothing open; the retry timer connects again in 250 ms
 *   SETUP     connecting both connections: AUTH, SELECT and SCRIPT LOAD on
 *             one, AUTH and SUBSCRIBE on the other, then the join; the
 *             setup timer fails it after one second
 *   SHARED    registered; heartbeats every lease_ms / 3
 * Any failure (error reply, late reply, lost connection, a reply of the
 * wrong shape, a -1 "not registered" answer) goes to DOWN: fallback is
 * reported before the pending calls fail, so their callbacks already see
 * it. Fallback is logged once per outage.
 */
#include "cluster.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cluster_lua.h" /* ob_cluster_lua, ob_cluster_lua_len: cluster.lua, generated at build time */

const char *const ob_cluster_op_names[OB_CLUSTER_OPS] = {"connect", "join",   "admit", "release", "cancel", "beat",
                                                         "config",  "stream", "info",  "budget",  "leave",  "publish",
                                                         "capacity"};
const char *const ob_cluster_result_names[OB_CLUSTER_RESULTS] = {"ok", "error", "timeout"};
const double ob_cluster_bucket_le[OB_CLUSTER_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                         0.025,  0.05,    0.1,    0.25,  0.5,    1.0,   1.0 / 0.0};

enum { DOWN, SETUP, SHARED };

#define RETRY_MS 250
#define SETUP_MS 1000

typedef struct op {
  struct op *next, *prev;
  ob_cluster_t *c;
  int kind;
  bool int_reply;
  ob_cluster_cb cb;
  void *arg;
  uint64_t sent_us;
  uint64_t deadline_us;
} op_t;

struct ob_cluster {
  struct event_base *base;
  ob_cluster_config_t cfg; /* strings owned here */
  ob_cluster_hooks_t h;
  redisAsyncContext *ac, *sub;
  int state;
  bool shared;
  bool down_logged;
  bool dup_logged;
  char sha[41];
  char nonce[33];
  int64_t epoch;
  char epoch_s[24];
  op_t *head, *tail;       /* calls waiting for their reply on ac, oldest first */
  struct event *timeout_ev;/* the oldest call's deadline */
  struct event *retry_ev;  /* DOWN: the next connect; SETUP: the setup deadline */
  struct event *beat_ev;
  struct evdns_base *dns;
  struct evdns_getaddrinfo_request *dns_req;
  int setup_pending;       /* SETUP: replies still awaited before the join */
  int subscribed;          /* SUBSCRIBE confirmations seen */
  char *chan_grant, *chan_bus; /* this replica's channels */
  size_t grant_len, bus_len;
  ob_cluster_stats_t st;
};

static void fail_link(ob_cluster_t *c, const char *why);
static void start_connect(ob_cluster_t *c);

/* ---------------------------------------------------------------- timers */

static void arm_timeout(ob_cluster_t *c) {
  if (!c->head) {
    evtimer_del(c->timeout_ev);
    return;
  }
  uint64_t now = ob_clock_us();
  uint64_t in = c->head->deadline_us > now ? c->head->deadline_us - now : 0;
  struct timeval tv = {(time_t)(in / 1000000), (suseconds_t)(in % 1000000)};
  evtimer_add(c->timeout_ev, &tv);
}

static void arm_ms(struct event *ev, uint64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
  evtimer_add(ev, &tv);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  ob_cluster_t *c = arg;
  if (!c->head) return;
  if (c->head->deadline_us > ob_clock_us()) {
    arm_timeout(c);
    return;
  }
  c->head->deadline_us = 0; /* marks it as timed out for its callback */
  char why[96];
  snprintf(why, sizeof why, "Redis did not answer %s within op_timeout_ms (%u ms)", ob_cluster_op_names[c->head->kind],
           c->cfg.op_timeout_ms);
  fail_link(c, why);
}

/* ---------------------------------------------------------------- calls */

static void count(ob_cluster_t *c, int kind, int result, uint64_t sent_us) {
  c->st.ops[kind][result]++;
  if (result != OB_CLUSTER_OK) return;
  double s = (double)(ob_clock_us() - sent_us) / 1e6;
  for (int i = 0; i < OB_CLUSTER_BUCKETS; i++)
    if (s <= ob_cluster_bucket_le[i]) c->st.lat_counts[i]++;
  c->st.lat_count++;
  c->st.lat_sum += s;
  if (kind == OB_CLUSTER_OP_BEAT) c->st.last_latency_s = s;
}

static void unlink_op(ob_cluster_t *c, op_t *o) {
  if (o->prev) o->prev->next = o->next;
  else c->head = o->next;
  if (o->next) o->next->prev = o->prev;
  else c->tail = o->prev;
  o->next = o->prev = NULL;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv) {
  (void)ac;
  op_t *o = priv;
  ob_cluster_t *c = o->c;
  bool was_head = c->head == o;
  unlink_op(c, o);
  if (was_head) arm_timeout(c);
  redisReply *r = reply;
  ob_cluster_result_t res = {0};
  const char *bad = NULL;
  if (!r) {
    bad = "";
  } else if (r->type == REDIS_REPLY_ERROR) {
    bad = "error reply";
  } else if (o->int_reply) {
    if (!ob_cluster_reply_ints(r, res.ints, sizeof res.ints / sizeof res.ints[0], &res.n) || res.n == 0)
      bad = "a reply of the wrong shape";
    else if (res.ints[0] == -1 && o->kind != OB_CLUSTER_OP_JOIN)
      bad = "this replica is no longer registered (its lease ran out, or Redis lost its state)";
  }
  if (bad) {
    count(c, o->kind, !r && o->deadline_us == 0 ? OB_CLUSTER_TIMEOUT : OB_CLUSTER_ERROR, o->sent_us);
    if (r && c->state != DOWN) {
      char why[200];
      if (r->type == REDIS_REPLY_ERROR)
        snprintf(why, sizeof why, "Redis answered %s with an error: %.120s", ob_cluster_op_names[o->kind],
                 r->str ? r->str : "");
      else
        snprintf(why, sizeof why, "Redis answered %s with %s", ob_cluster_op_names[o->kind], bad);
      fail_link(c, why);
    }
    if (o->cb) o->cb(o->arg, &res);
    free(o);
    return;
  }
  count(c, o->kind, OB_CLUSTER_OK, o->sent_us);
  res.ok = true;
  res.reply = r;
  if (o->cb) o->cb(o->arg, &res);
  free(o);
}

/* Send argv on the command connection as a call of kind. */
static bool send_argv(ob_cluster_t *c, int kind, int argc, const char **argv, const size_t *lens, bool int_reply,
                      ob_cluster_cb cb, void *arg) {
  if (!c->ac) return false;
  op_t *o = ob_xcalloc(1, sizeof *o);
  o->c = c;
  o->kind = kind;
  o->int_reply = int_reply;
  o->cb = cb;
  o->arg = arg;
  o->sent_us = ob_clock_us();
  o->deadline_us = o->sent_us + (uint64_t)c->cfg.op_timeout_ms * 1000;
  if (redisAsyncCommandArgv(c->ac, on_reply, o, argc, argv, lens) != REDIS_OK) {
    free(o);
    c->st.ops[kind][OB_CLUSTER_ERROR]++;
    return false;
  }
  o->prev = c->tail;
  if (c->tail) c->tail->next = o;
  else c->head = o;
  c->tail = o;
  if (c->head == o) arm_timeout(c);
  return true;
}

/* EVALSHA sha 0 op ns id epoch args... */
static bool send_script(ob_cluster_t *c, int kind, const char *op, const ob_cluster_args_t *args, bool int_reply,
                        ob_cluster_cb cb, void *arg) {
  size_t n = 7 + (args ? args->argc : 0);
  const char **argv = ob_xcalloc(n, sizeof *argv);
  size_t *lens = ob_xcalloc(n, sizeof *lens);
  const char *fixed[7] = {"EVALSHA", c->sha, "0", op, c->cfg.ns, c->cfg.replica_id, c->epoch_s};
  for (size_t i = 0; i < 7; i++) argv[i] = fixed[i], lens[i] = strlen(fixed[i]);
  for (size_t i = 0; args && i < args->argc; i++) {
    size_t start = i ? args->ends[i - 1] : 0;
    argv[7 + i] = args->bytes.base ? args->bytes.base + start : "";
    lens[7 + i] = args->ends[i] - start;
  }
  bool ok = send_argv(c, kind, (int)n, argv, lens, int_reply, cb, arg);
  free(argv);
  free(lens);
  return ok;
}

bool ob_cluster_call(ob_cluster_t *c, const char *op, const ob_cluster_args_t *args, bool int_reply, ob_cluster_cb cb,
                     void *arg) {
  if (!c || c->state != SHARED) return false;
  int kind = ob_cluster_op_index(op);
  if (kind < 0) return false;
  return send_script(c, kind, op, args, int_reply, cb, arg);
}

bool ob_cluster_publish(ob_cluster_t *c, const char *msg, size_t len) {
  if (!c || c->state != SHARED) return false;
  const char *argv[3] = {"PUBLISH", c->chan_bus, msg};
  size_t lens[3] = {7, c->bus_len, len};
  return send_argv(c, OB_CLUSTER_OP_PUBLISH, 3, argv, lens, false, NULL, NULL);
}

int ob_cluster_op_index(const char *name) {
  for (int i = 0; i < OB_CLUSTER_OPS; i++)
    if (strcmp(ob_cluster_op_names[i], name) == 0) return i;
  return -1;
}

/* ---------------------------------------------------------------- the link */

static void drop_contexts(ob_cluster_t *c) {
  redisAsyncContext *ac = c->ac, *sub = c->sub;
  c->ac = c->sub = NULL;
  /* Every pending callback runs now (or, inside a callback, as soon as it
   * returns) with no reply; on_reply counts and fails each. */
  if (ac) redisAsyncFree(ac);
  if (sub) redisAsyncFree(sub);
}

static void fail_link(ob_cluster_t *c, const char *why) {
  if (c->state == DOWN) return;
  bool was_shared = c->shared;
  c->state = DOWN;
  c->shared = false;
  c->st.shared = false;
  evtimer_del(c->beat_ev);
  if (c->dns_req) {
    evdns_getaddrinfo_cancel(c->dns_req);
    c->dns_req = NULL;
  }
  if (!c->down_logged && why && *why) {
    c->down_logged = true;
    if (was_shared)
      ob_log_error("cluster: %s; falling back to %s limits until Redis answers again", why,
                   c->cfg.fallback == OB_CLUSTER_LOCAL ? "local" : "split");
    else
      ob_log_warn("cluster: %s; running on %s limits and retrying every %d ms", why,
                  c->cfg.fallback == OB_CLUSTER_LOCAL ? "local" : "split", RETRY_MS);
  }
  if (was_shared) {
    c->st.fallbacks++;
    if (c->h.on_mode) c->h.on_mode(c->h.user, false);
  }
  drop_contexts(c);
  arm_ms(c->retry_ev, RETRY_MS);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  (void)status;
  ob_cluster_t *c = ac->data;
  if (c && (ac == c->ac || ac == c->sub)) {
    if (ac == c->ac) c->ac = NULL; /* hiredis frees it after this callback */
    else c->sub = NULL;
    fail_link(c, "the connection to Redis was lost");
  }
}

static void on_connect(const redisAsyncContext *ac, int status) {
  ob_cluster_t *c = ac->data;
  if (status != REDIS_OK && c && (ac == c->ac || ac == c->sub)) {
    char why[160];
    snprintf(why, sizeof why, "cannot connect to Redis at %s: %s", c->cfg.redis, ac->errstr);
    if (ac == c->ac) c->ac = NULL; /* hiredis frees a context whose connect failed */
    else c->sub = NULL;
    fail_link(c, why);
  }
}

static void on_beat_reply(void *arg, const ob_cluster_result_t *r) {
  ob_cluster_t *c = arg;
  if (!r->ok || r->n < 2) return;
  c->st.replicas = (uint32_t)(r->ints[0] > 0 ? r->ints[0] : 1);
  c->st.digests = (uint32_t)(r->ints[1] > 0 ? r->ints[1] : 1);
  if (c->h.on_beat) c->h.on_beat(c->h.user, c->st.replicas, c->st.digests);
}

static uint64_t beat_ms(const ob_cluster_t *c) {
  uint64_t ms = c->cfg.lease_ms / 3;
  return ms < 50 ? 50 : ms;
}

static void on_beat(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  ob_cluster_t *c = arg;
  if (c->state != SHARED) return;
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  ob_cluster_args_str(&a, c->h.digest ? c->h.digest(c->h.user) : "");
  send_script(c, OB_CLUSTER_OP_BEAT, "beat", &a, true, on_beat_reply, c);
  ob_cluster_args_dispose(&a);
  arm_ms(c->beat_ev, beat_ms(c));
}

static void on_join(void *arg, const ob_cluster_result_t *r) {
  ob_cluster_t *c = arg;
  if (!r->ok || c->state != SETUP) return;
  if (r->ints[0] == -2) {
    if (!c->dup_logged)
      ob_log_error("cluster: another live replica uses replica_id \"%s\" (heard from %lld ms ago); staying in "
                   "fallback until it stops",
                   c->cfg.replica_id, (long long)(r->n > 1 ? r->ints[1] : 0));
    c->dup_logged = true;
    fail_link(c, NULL);
    return;
  }
  if (r->ints[0] <= 0) {
    fail_link(c, "Redis answered join with a bad epoch");
    return;
  }
  evtimer_del(c->retry_ev);
  c->epoch = r->ints[0];
  snprintf(c->epoch_s, sizeof c->epoch_s, "%lld", (long long)c->epoch);
  c->st.epoch = c->epoch;
  c->st.replicas = (uint32_t)(r->n > 1 && r->ints[1] > 0 ? r->ints[1] : 1);
  c->state = SHARED;
  c->shared = true;
  c->st.shared = true;
  c->dup_logged = false;
  if (c->down_logged) ob_log_info("cluster: Redis answers again; shared mode (epoch %lld)", (long long)c->epoch);
  else ob_log_info("cluster: joined the fleet as \"%s\" (epoch %lld, %u replica(s))", c->cfg.replica_id,
                   (long long)c->epoch, c->st.replicas);
  c->down_logged = false;
  arm_ms(c->beat_ev, beat_ms(c));
  if (c->h.on_mode) c->h.on_mode(c->h.user, true);
}

static void send_join(ob_cluster_t *c) {
  ob_cluster_args_t a;
  ob_cluster_args_init(&a);
  ob_cluster_args_str(&a, c->nonce);
  ob_cluster_args_u64(&a, c->cfg.lease_ms);
  if (c->h.join_args) c->h.join_args(c->h.user, &a);
  else ob_cluster_args_str(&a, ""), ob_cluster_args_u64(&a, 0), ob_cluster_args_u64(&a, 0);
  /* The epoch argument of a join is ignored: the join makes a new one. */
  snprintf(c->epoch_s, sizeof c->epoch_s, "0");
  if (!send_script(c, OB_CLUSTER_OP_JOIN, "join", &a, true, on_join, c)) fail_link(c, "cannot send join to Redis");
  ob_cluster_args_dispose(&a);
}

static void setup_step(ob_cluster_t *c) {
  if (c->state == SETUP && c->setup_pending == 0 && c->subscribed >= 2) send_join(c);
}

static void on_setup_reply(void *arg, const ob_cluster_result_t *r) {
  ob_cluster_t *c = arg;
  if (!r->ok || c->state != SETUP) return;
  const redisReply *x = r->reply;
  if (x->type == REDIS_REPLY_STRING && x->len == 40) { /* SCRIPT LOAD: the SHA */
    memcpy(c->sha, x->str, 40);
    c->sha[40] = '\0';
  } else if (x->type != REDIS_REPLY_STATUS) {
    fail_link(c, "Redis answered the connection set-up unexpectedly");
    return;
  }
  c->setup_pending--;
  setup_step(c);
}

/* Every reply on the subscribed connection: the two confirmations, then
 * messages. Not a call: no deadline (the setup timer covers the set-up). */
static void on_sub(redisAsyncContext *ac, void *reply, void *priv) {
  (void)ac;
  ob_cluster_t *c = priv;
  redisReply *r = reply;
  if (!r || c->state == DOWN) return;
  if (r->type == REDIS_REPLY_ERROR) {
    fail_link(c, "Redis refused the subscription");
    return;
  }
  if (r->type == REDIS_REPLY_STATUS) return; /* AUTH's OK */
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || !r->element[0] || r->element[0]->type != REDIS_REPLY_STRING ||
      !r->element[1] || r->element[1]->type != REDIS_REPLY_STRING) {
    fail_link(c, "Redis sent a message of the wrong shape on the subscription");
    return;
  }
  const redisReply *kind = r->element[0], *chan = r->element[1], *msg = r->element[2];
  if (kind->len == 9 && memcmp(kind->str, "subscribe", 9) == 0) {
    c->subscribed++;
    setup_step(c);
    return;
  }
  if (!(kind->len == 7 && memcmp(kind->str, "message", 7) == 0) || !msg || msg->type != REDIS_REPLY_STRING) return;
  if (chan->len == c->grant_len && memcmp(chan->str, c->chan_grant, c->grant_len) == 0) {
    if (c->state == SHARED && c->h.on_grant) c->h.on_grant(c->h.user, msg->str, msg->len);
  } else if (chan->len == c->bus_len && memcmp(chan->str, c->chan_bus, c->bus_len) == 0) {
    if (c->state == SHARED && c->h.on_message) c->h.on_message(c->h.user, msg->str, msg->len);
  }
}

static redisAsyncContext *open_ctx(ob_cluster_t *c, const char *ip) {
  redisAsyncContext *ac = c->cfg.unix_path ? redisAsyncConnectUnix(c->cfg.unix_path) : redisAsyncConnect(ip, c->cfg.port);
  if (!ac) return NULL;
  if (ac->err) {
    redisAsyncFree(ac);
    return NULL;
  }
  ac->data = c;
  ob_cluster_reader_bound(ac->c.reader);
  redisLibeventAttach(ac, c->base);
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  return ac;
}

/* AUTH [user] password, as argv (the password is never formatted into a string). */
static void auth_argv(const ob_cluster_t *c, const char **argv, size_t *lens, int *argc) {
  *argc = 0;
  argv[(*argc)++] = "AUTH";
  if (c->cfg.username) argv[(*argc)++] = c->cfg.username;
  argv[(*argc)++] = c->cfg.password;
  for (int i = 0; i < *argc; i++) lens[i] = strlen(argv[i]);
}

static void connect_to(ob_cluster_t *c, const char *ip) {
  c->ac = open_ctx(c, ip);
  c->sub = c->ac ? open_ctx(c, ip) : NULL;
  if (!c->ac || !c->sub) {
    char why[160];
    snprintf(why, sizeof why, "cannot connect to Redis at %s", c->cfg.redis);
    fail_link(c, why);
    return;
  }
  c->st.ops[OB_CLUSTER_OP_CONNECT][OB_CLUSTER_OK]++;
  const char *argv[4];
  size_t lens[4];
  int argc;
  c->setup_pending = 0;
  c->subscribed = 0;
  if (c->cfg.password) {
    auth_argv(c, argv, lens, &argc);
    c->setup_pending += send_argv(c, OB_CLUSTER_OP_CONNECT, argc, argv, lens, false, on_setup_reply, c);
    redisAsyncCommandArgv(c->sub, on_sub, c, argc, argv, lens);
  }
  if (c->cfg.db && !c->cfg.unix_path) {
    char db[16];
    snprintf(db, sizeof db, "%u", c->cfg.db);
    const char *sv[2] = {"SELECT", db};
    size_t sl[2] = {6, strlen(db)};
    c->setup_pending += send_argv(c, OB_CLUSTER_OP_CONNECT, 2, sv, sl, false, on_setup_reply, c);
  }
  const char *lv[3] = {"SCRIPT", "LOAD", ob_cluster_lua};
  size_t ll[3] = {6, 4, ob_cluster_lua_len};
  c->setup_pending += send_argv(c, OB_CLUSTER_OP_CONNECT, 3, lv, ll, false, on_setup_reply, c);
  const char *sb[3] = {"SUBSCRIBE", c->chan_grant, c->chan_bus};
  size_t sbl[3] = {9, c->grant_len, c->bus_len};
  redisAsyncCommandArgv(c->sub, on_sub, c, 3, sb, sbl);
}

static void on_resolved(int err, struct evutil_addrinfo *ai, void *arg) {
  ob_cluster_t *c = arg;
  c->dns_req = NULL;
  if (err == EVUTIL_EAI_CANCEL) return;
  if (err || !ai) {
    if (ai) evutil_freeaddrinfo(ai);
    char why[200];
    snprintf(why, sizeof why, "cannot resolve the Redis host %s: %s", c->cfg.host, evutil_gai_strerror(err));
    fail_link(c, why);
    return;
  }
  char ip[INET6_ADDRSTRLEN] = "";
  if (ai->ai_family == AF_INET)
    inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, ip, sizeof ip);
  else
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, ip, sizeof ip);
  evutil_freeaddrinfo(ai);
  if (c->state == SETUP) connect_to(c, ip);
}

static bool numeric_host(const char *h) {
  unsigned char b[16];
  return inet_pton(AF_INET, h, b) == 1 || inet_pton(AF_INET6, h, b) == 1;
}

static void start_connect(ob_cluster_t *c) {
  c->state = SETUP;
  arm_ms(c->retry_ev, SETUP_MS);
  if (c->cfg.unix_path || numeric_host(c->cfg.host)) {
    connect_to(c, c->cfg.unix_path ? NULL : c->cfg.host);
    return;
  }
  if (!c->dns) c->dns = evdns_base_new(c->base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
  if (!c->dns) {
    fail_link(c, "cannot start a DNS resolver");
    return;
  }
  struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  c->dns_req = evdns_getaddrinfo(c->dns, c->cfg.host, NULL, &hints, on_resolved, c);
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  ob_cluster_t *c = arg;
  if (c->state == DOWN) {
    start_connect(c);
  } else if (c->state == SETUP) {
    char why[160];
    snprintf(why, sizeof why, "Redis at %s did not complete the connection set-up within %d ms", c->cfg.redis,
             SETUP_MS);
    fail_link(c, why);
  }
}

/* ---------------------------------------------------------------- start-up check */

static redisContext *connect_blocking(const ob_cluster_config_t *cfg) {
  struct timeval tv = {(time_t)(cfg->op_timeout_ms / 1000), (suseconds_t)((cfg->op_timeout_ms % 1000) * 1000)};
  if (tv.tv_sec == 0 && tv.tv_usec < 100000) tv.tv_usec = 100000; /* connecting is slower than a call */
  redisContext *rc = cfg->unix_path ? redisConnectUnixWithTimeout(cfg->unix_path, tv)
                                    : redisConnectWithTimeout(cfg->host, cfg->port, tv);
  if (!rc) return NULL;
  if (rc->err || redisSetTimeout(rc, tv) != REDIS_OK) goto fail;
  ob_cluster_reader_bound(rc->reader);
  redisReply *r;
  if (cfg->password) {
    const char *argv[3];
    size_t lens[3];
    int argc = 0;
    argv[argc++] = "AUTH";
    if (cfg->username) argv[argc++] = cfg->username;
    argv[argc++] = cfg->password;
    for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    r = redisCommandArgv(rc, argc, argv, lens);
    bool ok = r && r->type == REDIS_REPLY_STATUS;
    if (r) freeReplyObject(r);
    if (!ok) goto fail;
  }
  if (cfg->db && !cfg->unix_path) {
    r = redisCommand(rc, "SELECT %u", cfg->db);
    bool ok = r && r->type == REDIS_REPLY_STATUS;
    if (r) freeReplyObject(r);
    if (!ok) goto fail;
  }
  return rc;
fail:
  redisFree(rc);
  return NULL;
}

/* How long ago the replica registered as id was last heard from: -1 when
 * it is not registered, -2 when Redis cannot be asked. */
static int64_t id_age_ms(redisContext *rc, const ob_cluster_config_t *cfg) {
  char key[128];
  snprintf(key, sizeof key, "%s:reps", cfg->ns);
  redisReply *t = redisCommand(rc, "TIME");
  redisReply *z = t ? redisCommand(rc, "ZSCORE %s %s", key, cfg->replica_id) : NULL;
  int64_t age = -2;
  if (t && t->type == REDIS_REPLY_ARRAY && t->elements == 2 && t->element[0]->type == REDIS_REPLY_STRING &&
      t->element[1]->type == REDIS_REPLY_STRING && z) {
    int64_t now = strtoll(t->element[0]->str, NULL, 10) * 1000 + strtoll(t->element[1]->str, NULL, 10) / 1000;
    if (z->type == REDIS_REPLY_NIL) age = -1;
    else if (z->type == REDIS_REPLY_STRING) age = now - (int64_t)strtod(z->str, NULL);
  }
  if (t) freeReplyObject(t);
  if (z) freeReplyObject(z);
  return age;
}

/* ---------------------------------------------------------------- lifecycle */

static char *dup_or_null(const char *s) { return s ? ob_xstrdup(s) : NULL; }

ob_cluster_t *ob_cluster_create(struct event_base *base, const ob_cluster_config_t *cfg,
                                const ob_cluster_hooks_t *hooks, const char **why) {
  *why = NULL;
  redisContext *rc = connect_blocking(cfg);
  if (rc) {
    /* A replica that stopped without leaving keeps its id until its lease
     * runs out; one that is alive keeps heartbeating. */
    uint64_t waited = 0;
    int64_t age;
    while ((age = id_age_ms(rc, cfg)) >= 0 && age < (int64_t)cfg->lease_ms) {
      if (waited > (uint64_t)cfg->lease_ms + 500) {
        redisFree(rc);
        *why = "another live replica is registered with this cluster.replica_id";
        return NULL;
      }
      if (waited == 0)
        ob_log_info("cluster: replica_id \"%s\" was heard from %lld ms ago; waiting for its lease to run out",
                    cfg->replica_id, (long long)age);
      usleep(250000);
      waited += 250;
    }
    redisFree(rc);
  }
  ob_cluster_t *c = ob_xcalloc(1, sizeof *c);
  c->base = base;
  c->cfg = *cfg;
  c->cfg.redis = dup_or_null(cfg->redis);
  c->cfg.host = dup_or_null(cfg->host);
  c->cfg.unix_path = dup_or_null(cfg->unix_path);
  c->cfg.username = dup_or_null(cfg->username);
  c->cfg.password = dup_or_null(cfg->password);
  c->cfg.password_file = NULL;
  c->cfg.ns = ob_xstrdup(cfg->ns ? cfg->ns : "obleth");
  c->cfg.replica_id = ob_xstrdup(cfg->replica_id);
  c->h = *hooks;
  unsigned char rnd[16];
  if (RAND_bytes(rnd, sizeof rnd) != 1) abort(); /* at start-up */
  for (int i = 0; i < 16; i++) snprintf(c->nonce + 2 * i, 3, "%02x", rnd[i]);
  ob_buf_t b;
  ob_buf_init(&b);
  ob_buf_printf(&b, "%s:w:%s", c->cfg.ns, c->cfg.replica_id);
  c->grant_len = b.len;
  c->chan_grant = ob_xstrndup(b.base, b.len);
  ob_buf_reset(&b);
  ob_buf_printf(&b, "%s:bus", c->cfg.ns);
  c->bus_len = b.len;
  c->chan_bus = ob_xstrndup(b.base, b.len);
  ob_buf_dispose(&b);
  c->st.replicas = 1;
  c->st.digests = 1;
  snprintf(c->epoch_s, sizeof c->epoch_s, "0");
  c->timeout_ev = evtimer_new(base, on_timeout, c);
  c->retry_ev = evtimer_new(base, on_retry, c);
  c->beat_ev = evtimer_new(base, on_beat, c);
  if (!rc) {
    ob_log_warn("cluster: Redis at %s cannot be reached; starting on %s limits and retrying every %d ms",
                c->cfg.redis, c->cfg.fallback == OB_CLUSTER_LOCAL ? "local" : "split", RETRY_MS);
    c->down_logged = true;
  }
  c->state = DOWN;
  start_connect(c);
  return c;
}

bool ob_cluster_shared(const ob_cluster_t *c) { return c && c->shared; }

void ob_cluster_get_stats(const ob_cluster_t *c, ob_cluster_stats_t *out) { *out = c->st; }

void ob_cluster_destroy(ob_cluster_t *c) {
  if (!c) return;
  bool was_shared = c->state == SHARED;
  c->state = DOWN; /* no fallback report at shutdown */
  c->shared = false;
  if (c->dns_req) evdns_getaddrinfo_cancel(c->dns_req);
  c->dns_req = NULL;
  drop_contexts(c);
  if (was_shared) {
    /* Give back what is held at once rather than after the lease. */
    redisContext *rc = connect_blocking(&c->cfg);
    if (rc) {
      const char *argv[7] = {"EVAL", ob_cluster_lua, "0", "leave", c->cfg.ns, c->cfg.replica_id, c->epoch_s};
      size_t lens[7];
      for (int i = 0; i < 7; i++) lens[i] = strlen(argv[i]);
      lens[1] = ob_cluster_lua_len;
      redisReply *r = redisCommandArgv(rc, 7, argv, lens);
      if (r) freeReplyObject(r);
      redisFree(rc);
    }
  }
  event_free(c->timeout_ev);
  event_free(c->retry_ev);
  event_free(c->beat_ev);
  if (c->dns) evdns_base_free(c->dns, 1);
  free(c->cfg.redis);
  free(c->cfg.host);
  free(c->cfg.unix_path);
  free(c->cfg.username);
  if (c->cfg.password) OPENSSL_cleanse(c->cfg.password, strlen(c->cfg.password));
  free(c->cfg.password);
  free(c->cfg.ns);
  free(c->cfg.replica_id);
  free(c->chan_grant);
  free(c->chan_bus);
  free(c);
}
