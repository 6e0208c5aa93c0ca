/*
 * cached.c: the response cache on inference routes. Before admission a
 * request is looked up (a hit is answered here and holds no slot); a miss
 * whose twin is already in flight follows that leader's response as it
 * streams (coalesced) instead of going upstream; a leader collects its
 * complete 200 response and hands it to the store's writer thread. The
 * store and the canonical keys are cache/'s; this file is the glue.
 */
#include "routes_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct cache_x {
  ob_routes_t *t;
  ob_exchange_t *x;
  ob_cache_key_t key;
  const char *scope;
  uint32_t ttl_s;
  uint64_t gen;               /* the store's generation before the lookup: a purge since drops the put */
  /* leader */
  bool leader;
  cache_x_t *next;            /* in the in-flight bucket */
  cache_x_t *followers;       /* linked through fnext */
  int status;
  ob_iov_t ctype;             /* arena */
  ob_buf_t body;              /* collected while it fits max_entry_bytes */
  bool overflow;              /* too large to store or to replay to late followers */
  bool head_seen, done;
  /* follower */
  cache_x_t *lead;            /* NULL once detached */
  cache_x_t *fnext;
};

#define HIT_BUF_KEEP (64 * 1024)

static cache_x_t **bucket(ob_routes_t *t, const ob_cache_key_t *k) { return &t->flight[k->b[0]]; }

static void unregister(cache_x_t *c) {
  for (cache_x_t **p = bucket(c->t, &c->key); *p; p = &(*p)->next)
    if (*p == c) {
      *p = c->next;
      break;
    }
  c->next = NULL;
}

static const char *mark(ob_exchange_t *x, const char *outcome) {
  ob_exchange_add_response_header(x, "x-obleth-cache", ob_iov_str(outcome));
  x->cache_outcome = outcome;
  return outcome;
}

/* Whether the request asks for a reproducible answer (cache.deterministic_only). */
static bool deterministic(const cJSON *root) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "temperature");
  const cJSON *seed = cJSON_GetObjectItemCaseSensitive(root, "seed");
  return (cJSON_IsNumber(t) && t->valuedouble == 0) || (seed && !cJSON_IsNull(seed));
}

/* "t:<tenant>", "g:<group>" or "*": one tenant's entries can never be
 * another's unless the route says so. */
static const char *scope_of(ob_exchange_t *x, const ob_config_route_t *rc) {
  const char *kind = rc && rc->cache_scope ? rc->cache_scope : "tenant";
  if (strcmp(kind, "global") == 0) return "*";
  bool group = strcmp(kind, "group") == 0;
  const char *name = x->who.tenant ? (group ? x->who.tenant->group : x->who.tenant->name) : "";
  size_t n = strlen(name);
  char *s = ob_arena_alloc(x->arena, n + 3);
  s[0] = group ? 'g' : 't', s[1] = ':';
  memcpy(s + 2, name, n + 1);
  return s;
}

/* The response id of a stored body, as its raw string token (quotes
 * included): the top-level "id" of a JSON object, or of the first SSE
 * data event. Empty when there is none. */
static ob_iov_t stored_id(ob_iov_t body) {
  ob_iov_t json = body;
  if (body.len && body.base[0] != '{') {
    const char *d = memmem(body.base, body.len, "data:", 5);
    if (!d) return ob_iov(NULL, 0);
    d += 5;
    const char *end = body.base + body.len;
    while (d < end && *d == ' ') d++;
    const char *nl = memchr(d, '\n', (size_t)(end - d));
    json = ob_iov(d, (size_t)((nl ? nl : end) - d));
  }
  ob_json_member_t m;
  if (ob_json_find_member(json, OB_IOV_LIT("id"), &m) != 1 || m.value.len < 3 || m.value.base[0] != '"')
    return ob_iov(NULL, 0);
  return m.value;
}

/* cache.fresh_id: a copy of body (in the arena) where every occurrence of
 * the stored id is replaced by a new one of the same length and prefix
 * (up to the last '-'), so lengths and every other byte stay as stored. */
static ob_iov_t fresh_body(ob_exchange_t *x, ob_iov_t body) {
  ob_iov_t id = stored_id(body);
  if (!id.len) return body;
  char *fresh = ob_arena_alloc(x->arena, id.len);
  memcpy(fresh, id.base, id.len);
  size_t from = 1;
  for (size_t i = 1; i + 1 < id.len; i++)
    if (id.base[i] == '-') from = i + 1;
  /* Not a secret, only distinct: a per-process splitmix64 stream. */
  static _Thread_local uint64_t state;
  if (!state) state = ob_clock_us() ^ (uint64_t)(uintptr_t)&state;
  static const char hex[] = "0123456789abcdef";
  for (size_t i = from; i + 1 < id.len; i += 16) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull, z = (z ^ (z >> 27)) * 0x94D049BB133111EBull, z ^= z >> 31;
    for (size_t j = i; j < i + 16 && j + 1 < id.len; j++, z >>= 4) fresh[j] = hex[z & 15];
  }
  char *copy = ob_arena_alloc(x->arena, body.len);
  memcpy(copy, body.base, body.len);
  for (char *p = copy, *end = copy + body.len; (p = memmem(p, (size_t)(end - p), id.base, id.len)); p += id.len)
    memcpy(p, fresh, id.len);
  return ob_iov(copy, body.len);
}

/* Send the stored answer. */
static void answer_hit(ob_exchange_t *x, ob_iov_t raw, bool fresh_id) {
  ob_cache_entry_t e;
  if (!ob_cache_entry_decode(raw, &e)) return;
  const char *ct = "application/json";
  if (e.content_type.len) {
    char *c = ob_arena_alloc(x->arena, e.content_type.len + 1);
    memcpy(c, e.content_type.base, e.content_type.len);
    c[e.content_type.len] = '\0';
    ct = c;
  }
  static const char prefix[] = "cache=hit tokens_saved=";
  char *note = ob_arena_alloc(x->arena, sizeof prefix + OB_U64_CHARS);
  memcpy(note, prefix, sizeof prefix - 1);
  ob_fmt_u64(note + sizeof prefix - 1, e.prompt_tokens + e.completion_tokens);
  x->note = note;
  x->cache_tokens_saved = e.prompt_tokens + e.completion_tokens;
  ob_iov_t body = fresh_id ? fresh_body(x, e.body) : e.body;
  ob_exchange_reply(x, e.status, ct, body.base, body.len);
}

/* A follower's head, from its leader's response so far. */
static void follower_head(cache_x_t *f, cache_x_t *lead) {
  ob_exchange_t *x = f->x;
  ob_http_header_t h[1 + OB_EXCHANGE_HEAD_EXTRA];
  size_t k = 0;
  if (lead->ctype.len) h[k++] = (ob_http_header_t){OB_IOV_LIT("content-type"), lead->ctype};
  k += ob_exchange_head_headers(x, h + k);
  ob_sreq_send_head(x->req, lead->status, h, k, -1, false);
  x->answered = true;
  if (lead->body.len) ob_sreq_send_bytes(x->req, lead->body.base, lead->body.len, false);
}

/* Read key from the store into the table's reused buffer; a hit is
 * answered (true). */
static bool lookup(ob_exchange_t *x, ob_routes_t *t, const ob_cache_key_t *key, bool fresh_id) {
  /* A hit answered inside another hit's answer gets a buffer of its own. */
  bool shared = !t->hit_buf_busy;
  ob_buf_t own = {0}, *raw = shared ? &t->hit_buf : &own;
  raw->len = 0;
  t->hit_buf_busy = true;
  bool hit = ob_cache_store_get(t->store, key, ob_clock_wall_ms(), raw) == 1;
  if (hit) {
    mark(x, "hit");
    answer_hit(x, ob_buf_iov(raw), fresh_id);
  }
  if (shared) t->hit_buf_busy = false;
  if (!shared || raw->cap > HIT_BUF_KEEP) {
    ob_buf_dispose(raw);
    ob_buf_init(raw);
  }
  return hit;
}

struct body_memo *ob_routes_body_memo(ob_routes_t *t, const ob_cache_key_t *id) {
  struct body_memo *m = &t->body_memo[id->b[0]];
  if (!m->used || memcmp(m->body_id.b, id->b, sizeof id->b) != 0) {
    memset(m, 0, sizeof *m);
    m->body_id = *id;
    m->used = true;
  }
  return m;
}

bool ob_routes_cache_prepare(ob_exchange_t *x, ob_routes_t *t, const ob_config_route_t *rc, const cJSON *root,
                             ob_iov_t body, const ob_cache_key_t *body_id, ob_iov_t up_model, cache_x_t **out) {
  *out = NULL;
  /* A hit or a follower is answered here, past the admission stage that
   * would refuse a model the tenant may not use: refuse it first, or a
   * shared (group, global) entry would answer it. */
  if (!ob_exchange_authorize(x)) return true;
  const ob_config_cache_t *cfg = &t->cfg->cache;
  const ob_http_header_t *cc = ob_sreq_header(x->req, "cache-control");
  ob_cache_directives_t d = ob_cache_directives(cc ? cc->value : OB_IOV_LIT(""));
  if (d.no_store || (cfg->deterministic_only && !deterministic(root))) {
    mark(x, "bypass");
    return false;
  }
  const char *scope = scope_of(x, rc);
  ob_cache_key_t id = body_id ? *body_id : ob_cache_body_id(body);
  struct body_memo *memo = ob_routes_body_memo(t, &id);
  if (!memo->has_canon) {
    const char *skip[64] = {"user", "stream_options"};
    size_t nskip = 2;
    for (size_t i = 0; i < cfg->num_exclude_fields && nskip < 64; i++) skip[nskip++] = cfg->exclude_fields[i];
    ob_buf_t canon;
    ob_buf_init(&canon);
    if (!ob_cache_canonical(body, skip, nskip, &canon)) {
      ob_buf_dispose(&canon);
      mark(x, "bypass");
      return false;
    }
    ob_iov_t whole = ob_buf_iov(&canon);
    memo->canon = ob_cache_key(&whole, 1);
    memo->has_canon = true;
    ob_buf_dispose(&canon);
  }
  /* Everything the answer depends on besides the body: who may share it,
   * the request line as forwarded (method, path after `rewrite`, query),
   * where it goes and the model the upstream is asked for. */
  const ob_iov_t parts[] = {
      ob_iov_str(scope), x->req->method, x->route->prefix, x->up_path, ob_iov_str(x->upstream_name), up_model,
      ob_iov((const char *)memo->canon.b, sizeof memo->canon.b),
  };
  ob_cache_key_t key = ob_cache_key(parts, sizeof parts / sizeof parts[0]);
  cache_x_t *c = ob_arena_alloc(x->arena, sizeof *c);
  memset(c, 0, sizeof *c);
  c->t = t;
  c->x = x;
  c->scope = scope;
  c->ttl_s = rc && rc->cache_ttl_s ? rc->cache_ttl_s : cfg->ttl_s;
  c->key = key;
  c->gen = t->store ? ob_cache_store_generation(t->store) : 0;
  ob_buf_init(&c->body);
  *out = c;

  if (!d.no_cache && t->store && lookup(x, t, &c->key, cfg->fresh_id)) return true;
  if (!d.no_cache) {
    for (cache_x_t *l = *bucket(t, &c->key); l; l = l->next) {
      /* Not a leader that began before a purge: its answer is what the
       * purge removed. */
      if (memcmp(l->key.b, c->key.b, 16) != 0 || l->overflow || l->done || l->gen != c->gen) continue;
      /* Follow the leader: no upstream, no slot. */
      mark(x, "coalesced");
      c->lead = l;
      c->fnext = l->followers;
      l->followers = c;
      x->parked = true;
      x->note = "cache=coalesced";
      if (l->head_seen) follower_head(c, l);
      return true;
    }
  }
  mark(x, "miss");
  /* The entry is replayed with its Content-Type only, to clients that may
   * not accept a coding another one asked for (followers too): ask the
   * upstream for the plain bytes. */
  ob_exchange_replace_header(x, "accept-encoding", OB_IOV_LIT("identity"));
  c->leader = true;
  c->next = *bucket(t, &c->key);
  *bucket(t, &c->key) = c;
  return false;
}

void ob_routes_cache_head(ob_exchange_t *x, cache_x_t *c, int status, const ob_http_header_t *h, size_t n) {
  if (!c || !c->leader) return;
  c->status = status;
  c->head_seen = true;
  for (size_t i = 0; i < n; i++) {
    if (ob_iov_eq_str_nocase(h[i].name, "content-type")) c->ctype = ob_arena_dup(x->arena, h[i].value);
    /* Asked for identity (prepare); an upstream that codes anyway is not
     * stored: the coding is not part of the entry. */
    if (ob_iov_eq_str_nocase(h[i].name, "content-encoding") && !ob_iov_eq_str_nocase(ob_iov_trim(h[i].value), "identity"))
      c->overflow = true;
  }
  if (status != 200) c->overflow = true; /* only 200s are stored; followers still get this answer */
  for (cache_x_t *f = c->followers; f; f = f->fnext) follower_head(f, c);
}

void ob_routes_cache_data(ob_exchange_t *x, cache_x_t *c, const char *p, size_t n) {
  if (!c || !c->leader) return;
  for (cache_x_t *f = c->followers; f; f = f->fnext) ob_sreq_send_bytes(f->x->req, p, n, false);
  if (c->overflow) return;
  if (c->body.len + n > c->t->cfg->cache.max_entry_bytes) {
    c->overflow = true; /* too large: not stored, and late twins go upstream */
    ob_buf_dispose(&c->body);
    ob_buf_init(&c->body);
    return;
  }
  ob_buf_append(&c->body, p, n);
  (void)x;
}

static void release_followers(cache_x_t *c, bool ok, int status) {
  cache_x_t *f = c->followers;
  c->followers = NULL;
  while (f) {
    cache_x_t *next = f->fnext;
    f->lead = NULL;
    f->fnext = NULL;
    if (!f->x->req) {
      /* gone already */
    } else if (ok) {
      ob_sreq_send_bytes(f->x->req, NULL, 0, true);
    } else if (f->x->answered) {
      ob_sreq_reset(f->x->req);
    } else {
      /* The same error the leader got, not a hang. */
      ob_exchange_reply_error(f->x, status, "the upstream request this one was coalesced with failed", NULL, NULL);
    }
    f = next;
  }
}

void ob_routes_cache_end(ob_exchange_t *x, cache_x_t *c, const ob_usage_t *u) {
  if (!c || !c->leader || c->done) return;
  c->done = true;
  unregister(c);
  /* Stored before anyone's last byte is sent (this runs before the end of
   * the response goes out, and followers are released after), so an
   * identical request sent once a response was complete is a hit. */
  if (!c->overflow && c->status == 200 && c->t->store) {
    ob_cache_entry_t e = {
        .expires_ms = ob_clock_wall_ms() + (uint64_t)c->ttl_s * 1000,
        .status = 200,
        .streamed = c->ctype.len >= 17 && ob_iov_eq_str_nocase(ob_iov(c->ctype.base, 17), "text/event-stream"),
        .prompt_tokens = u && u->found ? u->prompt_tokens : 0,
        .completion_tokens = u && u->found ? u->completion_tokens : 0,
        .scope = ob_iov_str(c->scope),
        .content_type = c->ctype,
        .body = ob_buf_iov(&c->body),
    };
    ob_buf_t enc;
    ob_buf_init(&enc);
    ob_cache_entry_encode(&e, &enc);
    ob_cache_store_put(c->t->store, &c->key, enc.base, enc.len, e.expires_ms, c->gen);
    ob_buf_dispose(&enc);
  }
  release_followers(c, true, 0);
  (void)x;
}

void ob_routes_cache_error(ob_exchange_t *x, cache_x_t *c, int status, bool head_seen) {
  (void)x, (void)head_seen;
  if (!c || !c->leader || c->done) return;
  c->done = true;
  unregister(c);
  release_followers(c, false, status);
}

void ob_routes_cache_finish(ob_exchange_t *x, cache_x_t *c) {
  if (!c) return;
  if (c->leader) {
    if (!c->done) {
      /* The leader ended without an upstream answer: answered by the
       * gateway (queue full or timed out: its followers get the same
       * status), or its client went away and the upstream request was
       * cancelled (they fail too). */
      int st = x->req && x->req->status >= 400 ? x->req->status : 502;
      c->done = true;
      unregister(c);
      release_followers(c, false, st);
    }
    ob_buf_dispose(&c->body);
    return;
  }
  if (c->lead) {
    for (cache_x_t **p = &c->lead->followers; *p; p = &(*p)->fnext)
      if (*p == c) {
        *p = c->fnext;
        break;
      }
    c->lead = NULL;
  }
}
