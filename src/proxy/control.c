/*
 * control.c: what the admin interface reads and changes in the running
 * proxy: the scheduler's state as JSON, live weight and disabled changes
 * (applied to the scheduler at once; queued requests keep their place),
 * and readiness, and the token budgets of a tenant and its keys. Runs on
 * the first worker's loop; the scheduler state is read and changed under
 * the shared lock, so it covers every worker.
 */
#include "proxy_int.h"

#include "cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long tenant_index(const ob_proxy_t *p, const char *name) {
  for (size_t i = 0; i < p->cfg->num_tenants; i++)
    if (strcmp(p->cfg->tenants[i].name, name) == 0) return (long)i;
  return -1;
}

static void json_str(ob_buf_t *b, const char *s) { ob_buf_append_json_str(b, ob_iov_str(s)); }

/* ,"budget":{...} of a tenant or key, or null when it has none. */
/* fleet: the fleet-wide used and reserved counts (cluster mode), else NULL
 * for this process's own. */
static void budget_json(ob_proxy_t *p, ob_budget_kind_t kind, const char *name, uint64_t tokens,
                        ob_budget_period_t period, int64_t now, const int64_t *fleet, ob_buf_t *b) {
  if (!tokens) {
    ob_buf_append_str(b, ",\"budget\":null");
    return;
  }
  char id[OB_BUDGET_PERIOD_ID_MAX];
  ob_budget_period_id(period, now, id);
  uint64_t used = fleet ? (uint64_t)(fleet[0] > 0 ? fleet[0] : 0) : ob_proxy_budget_used(p, kind, name, period, now);
  uint64_t reserved = fleet && fleet[1] > 0 ? (uint64_t)fleet[1] : 0;
  ob_buf_printf(b, ",\"budget\":{\"tokens\":%llu,\"period\":\"%s\",\"period_id\":\"%s\",\"used\":%llu,\"remaining\":%llu,",
                (unsigned long long)tokens, ob_budget_period_name(period), id, (unsigned long long)used,
                (unsigned long long)(used + reserved < tokens ? tokens - used - reserved : 0));
  if (fleet) ob_buf_printf(b, "\"reserved\":%llu,\"scope\":\"fleet\",", (unsigned long long)reserved);
  int64_t end = ob_budget_period_end(period, now);
  if (!end) {
    ob_buf_append_str(b, "\"renews_at\":null}");
    return;
  }
  time_t e = (time_t)end;
  struct tm tm;
  char when[32];
  gmtime_r(&e, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  ob_buf_printf(b, "\"renews_at\":\"%s\"}", when);
}

/* detail: the one-tenant view, which adds budgets and keys. fleet (cluster
 * mode): used and reserved of the tenant's budget, then of each key's. */
static void tenant_json(ob_proxy_t *p, size_t i, ob_buf_t *b, bool detail, const int64_t *fleet) {
  ob_fs_tenant_stats_t ts;
  const ob_tstate_t *st = ob_proxy_tstate(p, p->gen, i);
  ob_fs_tenant_stats(p->sh->fs, st->fs, &ts);
  const ob_config_tenant_t *t = &p->cfg->tenants[i];
  ob_buf_append_str(b, "{\"name\":");
  json_str(b, t->name);
  ob_buf_append_str(b, ",\"group\":");
  json_str(b, t->group);
  ob_buf_printf(b,
                ",\"weight\":%u,\"disabled\":%s,\"inflight\":%u,\"queued\":%u,\"service\":%llu,\"deficit\":%lld,"
                "\"max_inflight\":%u,\"max_queue\":%u,\"rpm\":%llu,\"tpm\":%llu",
                ts.weight, st->disabled ? "true" : "false", ts.inflight, ts.queued,
                (unsigned long long)ts.service, (long long)ts.deficit, t->max_inflight, t->max_queue,
                (unsigned long long)t->rpm, (unsigned long long)t->tpm);
  if (detail) {
    int64_t now = (int64_t)time(NULL);
    budget_json(p, OB_BUDGET_TENANT, t->name, t->budget_tokens, t->budget_period, now, fleet, b);
    ob_buf_append_str(b, ",\"keys\":[");
    for (size_t j = 0; j < t->num_keys; j++) {
      const ob_config_key_t *k = &t->keys[j];
      ob_buf_append_str(b, j ? ",{\"id\":" : "{\"id\":");
      json_str(b, k->id);
      ob_buf_printf(b, ",\"disabled\":%s", k->disabled ? "true" : "false");
      budget_json(p, OB_BUDGET_KEY, k->id, k->budget_tokens, k->budget_period, now, fleet ? fleet + 2 * (j + 1) : NULL, b);
      ob_buf_append(b, "}", 1);
    }
    ob_buf_append(b, "]", 1);
  }
  ob_buf_append(b, "}", 1);
}

void ob_proxy_write_fairshare(ob_proxy_t *p, ob_buf_t *b) {
  const ob_config_t *c = p->cfg;
  ob_proxy_lock(p);
  ob_buf_printf(b, "{\"mode\":\"%s\",\"max_inflight\":%u,\"inflight\":%u,\"queued\":%u,\"pools\":[",
                c->admission.mode == OB_ADMIT_FIFO ? "fifo" : c->admission.mode == OB_ADMIT_WEIGHTED ? "weighted"
                                                                                                     : "hierarchical",
                c->admission.max_inflight, ob_fs_inflight(p->sh->fs), ob_fs_queued(p->sh->fs));
  for (size_t i = 0; i < c->num_upstreams; i++) {
    ob_fs_pool_stats_t ps;
    ob_fs_pool_stats(p->sh->fs, p->gen->pool_of[i], &ps);
    if (i) ob_buf_append(b, ",", 1);
    ob_buf_append_str(b, "{\"name\":");
    json_str(b, c->upstreams[i].name);
    /* The configured slots (the local scheduler's cap is off in cluster
     * mode's shared mode, and a share of it in fallback). */
    ob_buf_printf(b, ",\"slots\":%u,\"inflight\":%u,\"queued\":%u", ob_proxy_pool_slots(p->sh, &c->upstreams[i]),
                  ps.inflight, ps.queued);
    ob_proxy_write_capacity_json(p, c->upstreams[i].name, b);
    ob_buf_append(b, "}", 1);
  }
  ob_buf_append_str(b, "],\"groups\":[");
  for (size_t g = 0; g < ob_fs_num_groups(p->sh->fs); g++) {
    ob_fs_group_stats_t gs;
    ob_fs_group_stats(p->sh->fs, (ob_fs_group_id)g, &gs);
    if (g) ob_buf_append(b, ",", 1);
    ob_buf_append_str(b, "{\"name\":");
    json_str(b, gs.name);
    ob_buf_printf(b, ",\"weight\":%u,\"inflight\":%u,\"queued\":%u,\"service\":%llu,\"deficit\":%lld}", gs.weight,
                  gs.inflight, gs.queued, (unsigned long long)gs.service, (long long)gs.deficit);
  }
  ob_buf_append_str(b, "],\"tenants\":[");
  for (size_t i = 0; i < c->num_tenants; i++) {
    if (i) ob_buf_append(b, ",", 1);
    tenant_json(p, i, b, false, NULL);
  }
  ob_buf_append_str(b, "]}");
  ob_proxy_unlock(p);
}

bool ob_proxy_write_tenant(ob_proxy_t *p, const char *name, ob_buf_t *out) {
  return ob_proxy_write_tenant_fleet(p, name, NULL, 0, out);
}

bool ob_proxy_write_tenant_fleet(ob_proxy_t *p, const char *name, const int64_t *budgets, size_t n, ob_buf_t *out) {
  long i = tenant_index(p, name);
  if (i < 0) return false;
  if (budgets && n != 1 + p->cfg->tenants[i].num_keys) budgets = NULL; /* not the answer to this tenant's question */
  ob_proxy_lock(p);
  tenant_json(p, (size_t)i, out, true, budgets);
  ob_proxy_unlock(p);
  return true;
}

bool ob_proxy_apply_tenant_weight(ob_proxy_t *p, const char *name, uint32_t weight) {
  long i = tenant_index(p, name);
  if (i < 0 || weight == 0) return false;
  ob_fs_tenant_stats_t ts;
  ob_proxy_lock(p);
  ob_fs_tenant_id id = ob_proxy_tstate(p, p->gen, (size_t)i)->fs;
  ob_fs_tenant_stats(p->sh->fs, id, &ts);
  const ob_config_tenant_t *t = &p->cfg->tenants[i];
  ob_fs_tenant_params_t tp = {ts.group, weight, t->max_inflight, t->max_queue};
  ob_fs_tenant_set(p->sh->fs, id, &tp);
  ob_proxy_unlock(p);
  ob_log_info("admin: tenant %s weight %u", name, weight);
  return true;
}

bool ob_proxy_apply_tenant_disabled(ob_proxy_t *p, const char *name, bool disabled) {
  long i = tenant_index(p, name);
  if (i < 0) return false;
  ob_proxy_lock(p);
  ob_proxy_tstate(p, p->gen, (size_t)i)->disabled = disabled;
  ob_proxy_unlock(p);
  ob_log_info("admin: tenant %s %s", name, disabled ? "disabled" : "enabled");
  return true;
}

bool ob_proxy_apply_group_weight(ob_proxy_t *p, const char *name, uint32_t weight) {
  ob_proxy_lock(p);
  long g = ob_proxy_find_group(p, name);
  if (weight > 0 && g >= 0) ob_fs_group_set(p->sh->fs, (ob_fs_group_id)g, weight);
  ob_proxy_unlock(p);
  if (weight == 0 || g < 0) return false;
  ob_log_info("admin: group %s weight %u", name, weight);
  return true;
}

/* The admin API's changes: applied here, then told to the other replicas
 * (cluster mode), which apply them with the ob_proxy_apply_* above. */
bool ob_proxy_set_tenant_weight(ob_proxy_t *p, const char *name, uint32_t weight) {
  if (!ob_proxy_apply_tenant_weight(p, name, weight)) return false;
  char v[16];
  snprintf(v, sizeof v, "%u", weight);
  ob_fleet_broadcast(p, "tw", name, v);
  ob_fleet_config_changed(p);
  return true;
}

bool ob_proxy_set_tenant_disabled(ob_proxy_t *p, const char *name, bool disabled) {
  if (!ob_proxy_apply_tenant_disabled(p, name, disabled)) return false;
  ob_fleet_broadcast(p, "td", name, disabled ? "1" : "0");
  return true;
}

bool ob_proxy_set_group_weight(ob_proxy_t *p, const char *name, uint32_t weight) {
  if (!ob_proxy_apply_group_weight(p, name, weight)) return false;
  char v[16];
  snprintf(v, sizeof v, "%u", weight);
  ob_fleet_broadcast(p, "gw", name, v);
  ob_fleet_config_changed(p);
  return true;
}

bool ob_proxy_ready(ob_proxy_t *p) {
  if (!p->net) return false;
  for (size_t i = 0; i < ob_net_num_upstreams(p->net); i++) {
    ob_upstream_t *up = ob_net_upstream_at(p->net, i);
    if (up && ob_upstream_available(up)) return true;
  }
  return ob_net_num_upstreams(p->net) == 0;
}

/* ---------------------------------------------------------------- cluster mode */

static void fleet_counts(ob_buf_t *b, const ob_cluster_info_t *in, const char *kind, const char *qkind,
                         const char *name) {
  ob_buf_printf(b, "\"inflight\":%lld,\"queued\":%lld", (long long)ob_cluster_info_counter(in, kind, name),
                (long long)ob_cluster_info_counter(in, qkind, name));
}

void ob_proxy_write_fairshare_fleet(ob_proxy_t *p, const ob_cluster_info_t *in, ob_buf_t *b) {
  ob_proxy_write_fairshare(p, b);
  if (b->len && b->base[b->len - 1] == '}') b->len--;
  ob_proxy_fleet_state_t fs;
  ob_proxy_fleet_state(p, &fs);
  const ob_config_t *c = p->cfg;
  ob_buf_printf(b, ",\"fleet\":{\"mode\":\"%s\"", fs.shared && in ? "shared" : "fallback");
  if (!in) {
    ob_buf_printf(b, ",\"replicas\":%u}}", fs.replicas);
    return;
  }
  ob_buf_printf(b, ",\"replicas\":%zu,\"max_inflight\":%u,", in->num_replicas, c->admission.max_inflight);
  fleet_counts(b, in, "a", "q", NULL);
  ob_buf_append_str(b, ",\"pools\":[");
  for (size_t i = 0; i < c->num_upstreams; i++) {
    ob_buf_append_str(b, i ? ",{\"name\":" : "{\"name\":");
    json_str(b, c->upstreams[i].name);
    ob_buf_printf(b, ",\"slots\":%u,", ob_proxy_pool_slots(p->sh, &c->upstreams[i]));
    fleet_counts(b, in, "p", "pq", c->upstreams[i].name);
    ob_buf_append(b, "}", 1);
  }
  ob_buf_append_str(b, "],\"groups\":[");
  ob_proxy_lock(p);
  for (size_t g = 0; g < ob_fs_num_groups(p->sh->fs); g++) {
    ob_fs_group_stats_t gs;
    ob_fs_group_stats(p->sh->fs, (ob_fs_group_id)g, &gs);
    long long inf = 0, q = 0;
    for (size_t i = 0; i < c->num_tenants; i++) {
      if (strcmp(c->tenants[i].group ? c->tenants[i].group : "default", gs.name) != 0) continue;
      inf += ob_cluster_info_counter(in, "t", c->tenants[i].name);
      q += ob_cluster_info_counter(in, "tq", c->tenants[i].name);
    }
    ob_buf_append_str(b, g ? ",{\"name\":" : "{\"name\":");
    json_str(b, gs.name);
    ob_buf_printf(b, ",\"weight\":%u,\"inflight\":%lld,\"queued\":%lld}", gs.weight, inf, q);
  }
  ob_proxy_unlock(p);
  ob_buf_append_str(b, "],\"tenants\":[");
  for (size_t i = 0; i < c->num_tenants; i++) {
    ob_buf_append_str(b, i ? ",{\"name\":" : "{\"name\":");
    json_str(b, c->tenants[i].name);
    ob_buf_append(b, ",", 1);
    fleet_counts(b, in, "t", "tq", c->tenants[i].name);
    ob_buf_append(b, "}", 1);
  }
  ob_buf_append_str(b, "]}}");
}

void ob_proxy_write_cluster(ob_proxy_t *p, const ob_cluster_info_t *in, ob_buf_t *b) {
  ob_proxy_fleet_state_t fs;
  ob_proxy_fleet_state(p, &fs);
  const ob_config_cluster_t *cc = &p->cfg->cluster;
  if (!fs.enabled) {
    ob_buf_append_str(b, "{\"enabled\":false,\"mode\":\"single\"}");
    return;
  }
  ob_buf_printf(b, "{\"enabled\":true,\"mode\":\"%s\",\"replica_id\":", fs.shared && in ? "shared" : "fallback");
  json_str(b, fs.replica_id);
  ob_buf_append_str(b, ",\"redis\":");
  json_str(b, cc->redis); /* the password is already replaced by *** */
  ob_buf_append_str(b, ",\"namespace\":");
  json_str(b, cc->ns);
  ob_buf_printf(b,
                ",\"lease_ms\":%u,\"op_timeout_ms\":%u,\"fallback\":\"%s\",\"epoch\":%lld,\"fallbacks\":%llu,"
                "\"redis_latency_ms\":%.3f,\"config_digest\":\"%s\",\"live_replicas\":%u,\"configs_agree\":%s",
                cc->lease_ms, cc->op_timeout_ms, fs.fallback_local ? "local" : "split", (long long)fs.epoch,
                (unsigned long long)fs.fallbacks, fs.latency_s * 1000.0, fs.digest, in ? (unsigned)in->num_replicas : fs.replicas,
                fs.digests <= 1 ? "true" : "false");
  ob_buf_append_str(b, ",\"replicas\":[");
  for (size_t i = 0; in && i < in->num_replicas; i++) {
    const ob_cluster_replica_info_t *r = &in->replicas[i];
    ob_buf_append_str(b, i ? ",{\"id\":" : "{\"id\":");
    json_str(b, r->id);
    ob_buf_printf(b, ",\"self\":%s,\"last_heard_ms\":%lld,\"config_digest\":", strcmp(r->id, fs.replica_id) == 0 ? "true" : "false",
                  (long long)r->age_ms);
    json_str(b, r->digest);
    ob_buf_printf(b, ",\"same_config\":%s,\"holdings\":{", strcmp(r->digest, fs.digest) == 0 ? "true" : "false");
    bool first = true;
    for (size_t k = 0; k < r->num_pools; k++) {
      if (r->held[k] == 0) continue;
      if (!first) ob_buf_append(b, ",", 1);
      first = false;
      json_str(b, r->pools[k]);
      ob_buf_printf(b, ":%lld", (long long)r->held[k]);
    }
    ob_buf_append_str(b, "}}");
  }
  ob_buf_append_str(b, "]");
  if (in) {
    ob_buf_append_str(b, ",\"fleet\":{");
    fleet_counts(b, in, "a", "q", NULL);
    ob_buf_append(b, "}", 1);
  }
  ob_buf_append_str(b, "}");
}
