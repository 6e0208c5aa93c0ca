/*
 * config_int.h: what the parts of the config parser share (config.c,
 * config_walk.c, config_net.c, config_tenants.c): the parse context, the
 * field tables and the walker and value helpers every section uses.
 * Included only inside src/config.
 */
#ifndef OB_CONFIG_INT_H
#define OB_CONFIG_INT_H

#include "config.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 2^53: every integer up to here is exact in the double cJSON stores, so the
 * 64-bit fields stop there rather than silently rounding. */
#define MAX_EXACT_INT ((uint64_t)1 << 53)
#define NFIELDS(a) (sizeof(a) / sizeof((a)[0]))

/* The group a tenant without "group" belongs to; it exists implicitly (weight
 * 1) unless the file declares it. */
#define DEFAULT_GROUP "default"

/* ---------------------------------------------------------------- seen sets */

/*
 * A set of byte strings for repeat detection during one parse: open
 * addressing, linear probing, FNV-1a. Keys are borrowed (they point into the
 * snapshot, which outlives the set); a and b remember where an entry came
 * from (tenant index, key index) so a repeat can name its first occurrence.
 */
typedef struct seen_entry {
  const void *key; /* NULL = empty slot */
  size_t len;
  uint64_t hash;
  size_t a, b;
} seen_entry_t;

typedef struct seen_set {
  seen_entry_t *slots;
  size_t cap, len; /* cap is 0 or a power of two */
} seen_set_t;

/* ---------------------------------------------------------------- parse context */

typedef struct ctx {
  ob_buf_t path;        /* current JSON path, kept NUL-terminated; empty = "$" */
  char **errs;          /* lines found by this parse, moved to the caller at the end */
  size_t num_errs, cap_errs;
  const char *base_dir; /* borrowed; NULL = leave relative paths as written */
  ob_config_t *c;       /* the snapshot being built */
  const char **up_names;/* upstream names from the pre-pass, borrowed from the cJSON tree */
  size_t num_up_names;
  const char **group_names; /* group names from the pre-pass, likewise */
  size_t num_group_names;
  const char **tenant_names_pre; /* tenant names from the pre-pass, likewise */
  size_t num_tenant_names_pre;
  seen_set_t tenant_names;  /* strings owned by the snapshot */
  seen_set_t key_ids;       /* a = tenant index, b = key index */
  seen_set_t key_digests;   /* 32-byte digests in the snapshot; a, b as above */
} ctx_t;

/*
 * One key of an object. Integer fields of "limits" and "timeouts" also carry
 * where they live in the snapshot, their range and their default, so those
 * two objects are entirely table driven.
 */
typedef struct field {
  const char *key;
  bool required;
  size_t off;      /* integer fields: offset in ob_config_limits_t / _timeouts_t */
  bool wide;       /* uint64_t rather than uint32_t */
  uint64_t min, max, def;
} field_t;

typedef void field_fn(ctx_t *cx, size_t idx, const cJSON *v, void *target);

/* Walk an array whose elements must be objects; calls item(cx, i, elem, target). */
typedef void item_fn(ctx_t *cx, size_t i, const cJSON *elem, void *target);

/* The struct an integer table fills, and the table. */
typedef struct int_target {
  void *base;
  const field_t *fields;
} int_target_t;

/* Integer fields of groups and tenants are table driven like "limits":
 * fields with max == 0 are not integers and are handled by hand. */
#define INT_FIELD(type, k, w, lo, hi, d) \
  {.key = #k, .off = offsetof(type, k), .wide = (w), .min = (lo), .max = (hi), .def = (d)}

/* ---------------------------------------------------------------- config_walk.c */

const seen_entry_t *ob_config_seen_add(seen_set_t *s, const void *key, size_t len, size_t a, size_t b);
void ob_config_seen_dispose(seen_set_t *s);
void ob_config_path_terminate(ctx_t *cx);
size_t ob_config_path_key(ctx_t *cx, const char *key);
size_t ob_config_path_index(ctx_t *cx, size_t i);
void ob_config_path_pop(ctx_t *cx, size_t mark);
__attribute__((format(printf, 2, 3))) void ob_config_errf(ctx_t *cx, const char *fmt, ...);
char *ob_config_quote(const char *s);
void ob_config_flush_errs(ctx_t *cx, ob_config_errors_t *out);
const char *ob_config_want_string(ctx_t *cx, const cJSON *v, bool nonempty);
const char *ob_config_want_abs_path(ctx_t *cx, const cJSON *v);
bool ob_config_want_bool(ctx_t *cx, const cJSON *v, bool *out);
bool ob_config_want_uint(ctx_t *cx, const cJSON *v, uint64_t min, uint64_t max, uint64_t *out);
char *ob_config_resolve_path(ctx_t *cx, const char *s);
char *ob_config_want_file(ctx_t *cx, const cJSON *v);
bool ob_config_name_in(const char *const *names, size_t n, const char *name);
bool ob_config_upstream_known(ctx_t *cx, const char *name);
char *ob_config_want_upstream_ref(ctx_t *cx, const cJSON *v);
uint32_t ob_config_walk_object(ctx_t *cx, const cJSON *obj, const field_t *fields, size_t n, field_fn *fn, void *target);
void ob_config_walk_array(ctx_t *cx, const cJSON *arr, item_fn *item, void *target);
size_t ob_config_array_len(const cJSON *arr);
bool ob_config_want_number(ctx_t *cx, const cJSON *v, double min, double max, bool min_open, double *out);
__attribute__((noinline)) void ob_config_set_int(void *base, const field_t *f, uint64_t v);
void ob_config_apply_defaults(void *base, const field_t *fields, size_t n);
void ob_config_on_int_field(ctx_t *cx, size_t idx, const cJSON *v, void *target);
bool ob_config_want_list(ctx_t *cx, const cJSON *arr, bool nonempty, size_t *n);

/* ---------------------------------------------------------------- config_net.c */

const char *ob_config_split_host_port(const char *s, size_t len, char **host, long *port);
void ob_config_on_listener(ctx_t *cx, size_t i, const cJSON *obj, void *target);
void ob_config_on_upstream(ctx_t *cx, size_t i, const cJSON *obj, void *target);
/* The integer tables of "limits" and "timeouts" (their sizes are checked
 * against the definitions). */
extern const field_t ob_config_limit_fields[6];
extern const field_t ob_config_timeout_fields[9];

/* ---------------------------------------------------------------- config_tenants.c */

void ob_config_on_group(ctx_t *cx, size_t i, const cJSON *obj, void *target);
void ob_config_add_default_group(ob_config_t *c);
int ob_config_hex_value(unsigned char ch);
void ob_config_on_tenant(ctx_t *cx, size_t i, const cJSON *obj, void *target);
void ob_config_on_budgets_field(ctx_t *cx, size_t idx, const cJSON *v, void *target);
void ob_config_default_budgets_path(ctx_t *cx, bool key_present);
extern const field_t ob_config_budgets_fields[1];

#endif /* OB_CONFIG_INT_H */
