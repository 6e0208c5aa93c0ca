/*
 * cache: the exact-match response cache. Canonical JSON request bodies and
 * their XXH3-128 keys (pure), the entry format, and the LMDB store: reads
 * on the caller's thread (one short read transaction, copied out), writes
 * on the store's own writer thread, so the event loop never waits for a
 * disk write. Uses core, LMDB and xxHash only.
 *
 * Ownership: ob_cache_store_t is created by main and closed at exit (the
 * writer finishes what was queued). Buffers passed in are copied; buffers
 * filled are the caller's.
 */
#ifndef OB_CACHE_H
#define OB_CACHE_H

#include "core.h"

/* ---------------------------------------------------------------- keys */

/* The canonical form of a JSON text appended to out (see canon.c): keys
 * sorted, no white space, numbers and strings as written, top-level members
 * named in skip (borrowed for the call) left out. False (out unchanged)
 * when the text is not JSON as core's tokenizer reads it (core.h: RFC
 * 8259, nesting at most OB_JSON_MAX_DEPTH) or an object in it has two keys
 * equal once decoded. */
bool ob_cache_canonical(ob_iov_t json, const char *const *skip, size_t nskip, ob_buf_t *out);

typedef struct ob_cache_key {
  uint8_t b[16];
} ob_cache_key_t;

/* XXH3-128 over a tuple of n parts (borrowed for the call), each
 * length-prefixed so no two different tuples collide by concatenation. A
 * response's key is the tuple of everything the answer depends on (see
 * routes/cached.c): scope, method, route, forwarded path and query,
 * upstream, upstream model and the canonical body's own key. */
ob_cache_key_t ob_cache_key(const ob_iov_t *parts, size_t n);
/* XXH3-128 of a request body as sent (not canonical), seeded apart from
 * any cache key: what a memo of body -> model and cache key is indexed by,
 * so a body seen before is neither scanned nor canonicalized again. */
ob_cache_key_t ob_cache_body_id(ob_iov_t body);

/* Request Cache-Control: no-store skips lookup and store; no-cache skips
 * the lookup only. */
typedef struct ob_cache_directives {
  bool no_store, no_cache;
} ob_cache_directives_t;
ob_cache_directives_t ob_cache_directives(ob_iov_t cache_control);

/* ---------------------------------------------------------------- entries */

/* A stored response: what a hit needs to answer exactly as the original. */
typedef struct ob_cache_entry {
  uint64_t expires_ms;       /* unix ms */
  uint16_t status;
  bool streamed;             /* an SSE stream, replayed byte-identical */
  uint64_t prompt_tokens;    /* from the stored usage (0 when unknown) */
  uint64_t completion_tokens;
  ob_iov_t scope;            /* who may read it ("t:acme", "g:prod", "*"); for purges */
  ob_iov_t content_type;
  ob_iov_t body;
} ob_cache_entry_t;

/* Serialize e into out (appended). */
void ob_cache_entry_encode(const ob_cache_entry_t *e, ob_buf_t *out);
/* Parse v (entry views point into v). False for anything malformed. */
bool ob_cache_entry_decode(ob_iov_t v, ob_cache_entry_t *e);

/* ---------------------------------------------------------------- store */

typedef struct ob_cache_store ob_cache_store_t;

typedef struct ob_cache_stats {
  uint64_t entries, bytes_used, map_bytes, evicted, expired, write_errors;
} ob_cache_stats_t;

/* Open (creating when missing) the LMDB file at path with a map of
 * max_bytes. NULL, with *why (static text or strerror) set, when the file
 * cannot be used: the caller logs it and serves uncached. */
ob_cache_store_t *ob_cache_store_open(const char *path, uint64_t max_bytes, const char **why);
/* Finish the queued writes, stop the writer, close. NULL is a no-op. */
void ob_cache_store_close(ob_cache_store_t *s);

/*
 * Ordering, for every thread of the process (all workers share one store):
 *  - read-your-writes: once ob_cache_store_put returned, a get of that key
 *    from any thread sees the entry (writes still queued for the writer are
 *    looked up in memory first), unless the write was dropped (a stale
 *    generation, or the queue over its bound: counted as a write error);
 *  - purges: once ob_cache_store_purge returned, no get returns an entry
 *    the purge covers that was put before it (queued writes it covers are
 *    forgotten at once, and stored ones are hidden until the writer has
 *    deleted them); a put of an older generation is dropped.
 */

/* The store's generation: bumped by every purge. Read it when a response
 * starts being produced (before its lookup) and pass it to the put that
 * stores it, so a response begun before a purge is never stored after it. */
uint64_t ob_cache_store_generation(ob_cache_store_t *s);
/* Look key up at now_ms: 1 and the raw entry appended to out on a hit; 0
 * on a miss (an expired entry is a miss, and is deleted by the writer). */
int ob_cache_store_get(ob_cache_store_t *s, const ob_cache_key_t *key, uint64_t now_ms, ob_buf_t *out);
/* Queue a write of an encoded entry (copied), visible to gets at once.
 * Never blocks on the disk; when the queue is over its bound the write is
 * dropped and counted. gen: ob_cache_store_generation() from before the
 * response was produced; a purge since then drops the write. */
void ob_cache_store_put(ob_cache_store_t *s, const ob_cache_key_t *key, const void *entry, size_t len,
                        uint64_t expires_ms, uint64_t gen);
/* Delete every entry (scope NULL) or those whose scope is exactly scope:
 * in effect for gets when this returns (see above), on disk when the
 * writer gets to it. */
void ob_cache_store_purge(ob_cache_store_t *s, const char *scope);
/* Wait until everything queued so far is on disk (tests, shutdown, CLI). */
void ob_cache_store_sync(ob_cache_store_t *s);
void ob_cache_store_stats(ob_cache_store_t *s, ob_cache_stats_t *out);

#endif /* OB_CACHE_H */
