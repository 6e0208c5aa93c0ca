/*
 * fuzz_prom.c: the Prometheus text reader of src/http (prom.c). The input is
 * the body of a /metrics scrape; the wanted names are vLLM's and SGLang's
 * gauges, a few short names, and the input's own first name. Besides the
 * sanitizers (the text sits in a buffer of exactly its size, so a read past
 * len is an ASan report), it checks:
 *  - lines are independent: cut after the LF nearest the middle, the text
 *    is accepted iff both parts are; the error is the first part's, else the
 *    second's with its line number shifted; sample counts add up and the
 *    maxima agree;
 *  - a final LF changes nothing (with or without it, the same results, bit
 *    for bit);
 *  - the label filter changes what counts, never whether the text is
 *    accepted nor where it fails, and a filtered count is never larger;
 *  - every result is consistent (found iff samples, all finite; nothing
 *    left after an error);
 *  - the input's leading run of number-ish bytes, read as a sample value,
 *    is what strtod makes of it in the C locale (this process never calls
 *    setlocale), bit for bit, whenever the reader accepts it.
 */
#include "http.h"

#include <math.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const names[] = {
    NULL, /* the input's own first name */
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
    "sglang:token_usage",
    "a",
    "b",
    "x_bucket",
};
#define NW (sizeof names / sizeof names[0])

typedef struct result {
  int rc;
  size_t line;
  const char *why;
  ob_prom_want_t w[NW];
} result_t;

static char first_name[65];

static void run(result_t *r, const char *text, size_t len, const ob_prom_opts_t *opts) {
  for (size_t i = 0; i < NW; i++) r->w[i] = (ob_prom_want_t){.name = i ? names[i] : first_name};
  r->line = 0;
  r->why = NULL;
  r->rc = ob_prom_parse(text, len, opts, r->w, NW, &r->line, &r->why);
  if (r->rc != 0 && r->rc != OB_ERR_BAD_RESPONSE && r->rc != OB_ERR_TOO_LARGE) abort();
  if ((r->rc != 0) != (r->why != NULL) || (r->rc != 0) != (r->line != 0)) abort();
  for (size_t i = 0; i < NW; i++) {
    const ob_prom_want_t *w = &r->w[i];
    if (r->rc != 0 && (w->samples || w->found || w->nonfinite)) abort();
    if (w->found != (w->samples > 0 && !w->nonfinite)) abort();
    if (w->found ? !isfinite(w->value) || !isfinite(w->max) : w->value != 0 || w->max != 0) abort();
    if (w->samples > len / 4 + 1) abort(); /* "a 1\n" is the shortest sample */
  }
}

static bool same_double(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

static void same(const result_t *a, const result_t *b) {
  if (a->rc != b->rc || a->line != b->line) abort();
  for (size_t i = 0; i < NW; i++) {
    const ob_prom_want_t *x = &a->w[i], *y = &b->w[i];
    if (x->samples != y->samples || x->found != y->found || x->nonfinite != y->nonfinite ||
        !same_double(x->value, y->value) || !same_double(x->max, y->max))
      abort();
  }
}

static size_t lfs(const char *p, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) k += p[i] == '\n';
  return k;
}

static bool numberish(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' || c == '+' ||
         c == '-' || c == '_';
}

/* The input's leading number-ish run as the value of one sample. */
static void check_value(const char *p, size_t size) {
  size_t n = 0;
  while (n < size && n < 64 && numberish(p[n])) n++;
  if (n == 0) return;
  char line[80], tok[80];
  memcpy(line, "v ", 2);
  memcpy(line + 2, p, n);
  memcpy(tok, p, n);
  tok[n] = '\0';
  ob_prom_want_t w = {.name = "v"};
  if (ob_prom_parse(line, n + 2, NULL, &w, 1, NULL, NULL) != 0) return;
  if (w.samples != 1) abort();
  char *end;
  double d = strtod(tok, &end);
  if (end != tok + n) abort();
  if (isnan(d) || isinf(d)) {
    if (w.found || !w.nonfinite) abort();
  } else if (!w.found || !same_double(w.value, 0.0 + d)) {
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data;
  size_t fn = 0;
  while (fn < size && fn < 64 && p[fn] != '{' && p[fn] != ' ' && p[fn] != '\n' && p[fn] != '\0') fn++;
  memcpy(first_name, p, fn);
  first_name[fn] = '\0';

  static result_t whole, part1, part2, other, filtered;
  run(&whole, p, size, NULL);

  /* Lines are independent. */
  const char *nl = size ? memchr(p + size / 2, '\n', size - size / 2) : NULL;
  if (nl) {
    size_t cut = (size_t)(nl - p) + 1;
    run(&part1, p, cut, NULL);
    run(&part2, p + cut, size - cut, NULL);
    if (part1.rc != 0) {
      if (whole.rc != part1.rc || whole.line != part1.line) abort();
    } else if (part2.rc != 0) {
      if (whole.rc != part2.rc || whole.line != part2.line + lfs(p, cut)) abort();
    } else {
      if (whole.rc != 0) abort();
      for (size_t i = 0; i < NW; i++) {
        const ob_prom_want_t *w = &whole.w[i], *a = &part1.w[i], *b = &part2.w[i];
        if (w->samples != a->samples + b->samples) abort();
        if ((a->nonfinite || b->nonfinite) && !w->nonfinite) abort();
        /* Compared as numbers: the max of 0 and -0 may be either. */
        if (w->found && a->found && b->found && w->max != (a->max > b->max ? a->max : b->max)) abort();
      }
    }
  }

  /* A final LF changes nothing. */
  if (size && p[size - 1] == '\n') {
    run(&other, p, size - 1, NULL);
  } else {
    char *copy = malloc(size + 1);
    if (size) memcpy(copy, p, size);
    copy[size] = '\n';
    run(&other, copy, size + 1, NULL);
    free(copy);
  }
  same(&whole, &other);

  /* The filter changes what counts, not what is accepted. */
  ob_prom_opts_t f = {.label_name = size && (data[0] & 1) ? "le" : "model_name",
                      .label_value = size && (data[0] & 1) ? "+Inf" : "m"};
  run(&filtered, p, size, &f);
  if (filtered.rc != whole.rc || filtered.line != whole.line) abort();
  for (size_t i = 0; i < NW; i++)
    if (filtered.w[i].samples > whole.w[i].samples) abort();

  /* A small sample limit: accepted texts stay accepted or become too large. */
  ob_prom_opts_t small = {.max_samples = 2};
  run(&other, p, size, &small);
  if (whole.rc == 0 && other.rc != 0 && other.rc != OB_ERR_TOO_LARGE) abort();
  if (whole.rc != 0 && other.rc == 0) abort();

  check_value(p, size);
  return 0;
}
