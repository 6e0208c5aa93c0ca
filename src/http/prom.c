/*
 * prom.c: a strict reader of the Prometheus text exposition format (0.0.4),
 * for the few gauges the capacity controller scrapes from an inference
 * server's /metrics. It owns nothing: it walks the caller's bytes line by
 * line, never past len, allocates nothing and keeps no state between calls.
 * It must not touch sockets or the clock; fetching and timing the scrape is
 * the caller's.
 *
 * Every line is checked, wanted or not, and one bad line refuses the whole
 * text: an endpoint that serves garbage anywhere is not trusted for the
 * lines that happen to look right. (A body cut short can still parse, as
 * "a 12" cut to "a 1" does: that the body is complete is for the HTTP
 * layer to check.) The grammar is what the Prometheus server's own reader
 * (model/textparse) accepts, so an endpoint Prometheus scrapes is read
 * here too, with these deliberate differences, none of which a client
 * library's output meets: a comma is required between label pairs (the
 * server lets it be left out); a backslash in HELP text must start \\ or
 * \n (the spec's rule, not enforced by the server); "# HELP" or "# TYPE"
 * with no name after it is malformed rather than a comment; a NUL byte is
 * malformed (the server takes it for the end of the text); blanks may
 * surround TYPE's type. Comments and HELP text are where a line may hold
 * arbitrary UTF-8; names, values and timestamps are ASCII by their grammar.
 *
 * Values: strtod depends on the locale's decimal point, and the input is not
 * NUL-terminated. So a value token is first matched against the grammar
 * here, then rewritten into a bounded local buffer as digits and an
 * exponent only ("12.5e3" becomes "125e2"): no radix character is left for
 * the locale to disagree about, and strtod rounds it correctly.
 */
#include "http.h"

#include <math.h>
#include <stdlib.h>

typedef struct parse {
  ob_prom_want_t *want;
  size_t n_want;
  const char *label_name, *label_value; /* the filter; label_name NULL: none */
  size_t max_samples, samples;
  const char *why;
} parse_t;

static bool is_blank(char c) { return c == ' ' || c == '\t'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_alpha_(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_name_start(char c) { return is_alpha_(c) || c == ':'; }
static bool is_name_char(char c) { return is_alpha_(c) || c == ':' || is_digit(c); }
static bool is_label_char(char c) { return is_alpha_(c) || is_digit(c); }

static const char *skip_blanks(const char *p, const char *end) {
  while (p < end && is_blank(*p)) p++;
  return p;
}

static int fail(parse_t *ps, int err, const char *why) {
  ps->why = why;
  return err;
}
#define BAD(why) fail(ps, OB_ERR_BAD_RESPONSE, (why))

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above
 * U+10FFFF; what Go's utf8.Valid accepts, as the Prometheus server checks. */
static bool utf8_ok(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;      /* overlong */
      else if (c == 0xED) hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0) lo = 0x90;      /* overlong */
      else if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else {
      return false;
    }
    if (n - i <= need) return false;
    if (s[i + 1] < lo || s[i + 1] > hi) return false;
    for (size_t k = 2; k <= need; k++)
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return false;
    i += need + 1;
  }
  return true;
}

static bool ascii_eq_nocase(const char *a, size_t n, const char *lit) {
  return n == strlen(lit) && ob_mem_eq_nocase(a, lit, n);
}

/* Write v in decimal at out (room for 21); returns the length. */
static size_t fmt_i64(char *out, long v) {
  char tmp[24];
  size_t n = 0, k = 0;
  bool neg = v < 0;
  unsigned long u = neg ? 0ul - (unsigned long)v : (unsigned long)v;
  do tmp[n++] = (char)('0' + u % 10); while ((u /= 10) != 0);
  if (neg) out[k++] = '-';
  while (n) out[k++] = tmp[--n];
  return k;
}

/*
 * The value token s[0..n) (n > 0, no blanks in it) into *out. Grammar: see
 * http.h. Returns 0 or an error.
 */
static int parse_value(parse_t *ps, const char *s, size_t n, double *out) {
  if (n > OB_PROM_MAX_VALUE) return fail(ps, OB_ERR_TOO_LARGE, "value longer than OB_PROM_MAX_VALUE bytes");
  size_t i = 0;
  bool neg = false;
  if (s[0] == '+' || s[0] == '-') neg = s[i++] == '-';
  /* The specials, as Go's ParseFloat spells them: a sign only before Inf. */
  if (i == 0 && ascii_eq_nocase(s, n, "nan")) {
    *out = NAN;
    return 0;
  }
  if (ascii_eq_nocase(s + i, n - i, "inf") || ascii_eq_nocase(s + i, n - i, "infinity")) {
    *out = neg ? -INFINITY : INFINITY;
    return 0;
  }

  /* [digits] [. [digits]] with at least one digit, then [e [+-] digits].
   * The digits go to buf without the point, leading zeros dropped; exp10
   * is what the dropped point and the exponent make of them. */
  char buf[OB_PROM_MAX_VALUE + 32];
  size_t b = 0, digits = 0;
  long exp10 = 0;
  buf[b++] = neg ? '-' : '+';
  bool seen_point = false;
  for (; i < n; i++) {
    char c = s[i];
    if (is_digit(c)) {
      digits++;
      if (seen_point) exp10--;
      if (c != '0' || b > 1) buf[b++] = c; /* b > 1: a significant digit came already */
    } else if (c == '.' && !seen_point) {
      seen_point = true;
    } else {
      break;
    }
  }
  if (digits == 0) return BAD("bad value (not a number)");
  if (i < n) {
    if (s[i] != 'e' && s[i] != 'E') return BAD("bad value (not a number)");
    i++;
    bool eneg = false;
    if (i < n && (s[i] == '+' || s[i] == '-')) eneg = s[i++] == '-';
    if (i == n) return BAD("bad value (exponent without digits)");
    long e = 0;
    for (; i < n; i++) {
      if (!is_digit(s[i])) return BAD("bad value (not a number)");
      /* Beyond a million the result is 0 or out of range whatever the
       * digits are (there are at most OB_PROM_MAX_VALUE of them). */
      if (e < 1000000) e = e * 10 + (s[i] - '0');
    }
    exp10 += eneg ? -e : e;
  }
  if (b == 1) {
    *out = neg ? -0.0 : 0.0;
    return 0;
  }
  buf[b++] = 'e';
  b += fmt_i64(buf + b, exp10);
  buf[b] = '\0';
  char *stop;
  double v = strtod(buf, &stop);
  if (stop != buf + b) return BAD("bad value (not a number)"); /* cannot happen: buf is digits and an exponent */
  if (isinf(v)) return BAD("value out of range (beyond a double)");
  *out = v;
  return 0;
}

/* True when the escaped label value raw[0..n) (escapes already checked)
 * unescapes to exactly the NUL-terminated want. */
static bool unescaped_eq(const char *raw, size_t n, const char *want) {
  size_t i = 0;
  for (; i < n; i++, want++) {
    char c = raw[i];
    if (c == '\\') {
      c = raw[++i];
      if (c == 'n') c = '\n';
    }
    if (*want == '\0' || *want != c) return false;
  }
  return *want == '\0';
}

/*
 * The label set of a sample, from just after its "{" (*pp) up to and past
 * its "}". Sets *match when the filter's label is there with its value.
 */
static int labels(parse_t *ps, const char **pp, const char *end, bool *match) {
  ob_iov_t names[OB_PROM_MAX_LABELS];
  size_t n = 0;
  const char *p = *pp;
  for (;;) {
    p = skip_blanks(p, end);
    if (p == end) return BAD("label set without a closing brace");
    if (*p == '}') break; /* empty set, or after a trailing comma */
    if (!is_alpha_(*p)) return BAD("bad label name");
    const char *l0 = p;
    while (p < end && is_label_char(*p)) p++;
    ob_iov_t name = ob_iov(l0, (size_t)(p - l0));
    if (n == OB_PROM_MAX_LABELS) return fail(ps, OB_ERR_TOO_LARGE, "more than OB_PROM_MAX_LABELS labels in a sample");
    for (size_t j = 0; j < n; j++)
      if (ob_iov_eq(names[j], name)) return BAD("duplicate label name in a sample");
    names[n++] = name;

    p = skip_blanks(p, end);
    if (p == end || *p != '=') return BAD("bad label name, or no '=' after it");
    p = skip_blanks(p + 1, end);
    if (p == end || *p != '"') return BAD("label value not in double quotes");
    const char *v0 = ++p;
    for (;;) {
      if (p == end) return BAD("unterminated label value");
      if (*p == '"') break;
      if (*p == '\\') {
        if (p + 1 == end) return BAD("unterminated label value");
        if (p[1] != '\\' && p[1] != '"' && p[1] != 'n') return BAD("bad escape in label value (only \\\\ \\\" \\n)");
        p += 2;
      } else {
        p++;
      }
    }
    size_t vn = (size_t)(p - v0);
    p++; /* the closing quote */
    if (!utf8_ok((const unsigned char *)v0, vn)) return BAD("label value is not UTF-8");
    if (ps->label_name && ob_iov_eq(name, ob_iov_str(ps->label_name)))
      *match = unescaped_eq(v0, vn, ps->label_value ? ps->label_value : "");

    p = skip_blanks(p, end);
    if (p < end && *p == ',') {
      p++;
      continue;
    }
    if (p < end && *p == '}') break;
    return BAD("expected ',' or '}' after a label value");
  }
  *pp = p + 1;
  return 0;
}

/* want (NUL-terminated, may be NULL) is exactly name. */
static bool name_is(const char *want, ob_iov_t name) {
  if (!want) return false;
  for (size_t i = 0; i < name.len; i++)
    if (want[i] != name.base[i]) return false; /* a shorter want stops at its NUL */
  return want[name.len] == '\0';
}

/* A sample line s..end: s at its first non-blank byte, end past its last. */
static int sample(parse_t *ps, const char *p, const char *end) {
  if (ps->samples++ == ps->max_samples) return fail(ps, OB_ERR_TOO_LARGE, "more samples than max_samples");
  if (!is_name_start(*p)) return BAD("bad metric name");
  const char *n0 = p;
  while (p < end && is_name_char(*p)) p++;
  ob_iov_t name = ob_iov(n0, (size_t)(p - n0));
  const char *after_name = p;
  p = skip_blanks(p, end);
  if (p < end && *p != '{' && p == after_name) return BAD("bad character in metric name");

  bool match = ps->label_name == NULL;
  if (p < end && *p == '{') {
    p++;
    int rc = labels(ps, &p, end, &match);
    if (rc < 0) return rc;
    p = skip_blanks(p, end);
  }

  const char *v0 = p;
  while (p < end && !is_blank(*p)) p++;
  if (p == v0) return BAD("sample without a value");
  double v;
  int rc = parse_value(ps, v0, (size_t)(p - v0), &v);
  if (rc < 0) return rc;

  p = skip_blanks(p, end);
  if (p < end) {
    const char *t0 = p;
    while (p < end && is_digit(*p)) p++;
    if (p == t0 || (p < end && !is_blank(*p))) return BAD("bad timestamp (digits only)");
    uint64_t ts;
    if (!ob_iov_to_u64(ob_iov(t0, (size_t)(p - t0)), &ts) || ts > INT64_MAX) return BAD("timestamp out of range");
    if (skip_blanks(p, end) != end) return BAD("garbage after the timestamp");
  }

  if (!match) return 0;
  for (size_t i = 0; i < ps->n_want; i++) {
    ob_prom_want_t *w = &ps->want[i];
    if (!name_is(w->name, name)) continue;
    w->samples++;
    if (!isfinite(v)) {
      w->nonfinite = true;
    } else {
      w->value += v;
      if (w->samples == 1 || v > w->max) w->max = v;
    }
  }
  return 0;
}

/* HELP text: escapes \\ and \n only, valid UTF-8. */
static int help_text(parse_t *ps, const char *p, const char *end) {
  for (const char *q = p; q < end; q++) {
    if (*q != '\\') continue;
    if (q + 1 == end || (q[1] != '\\' && q[1] != 'n')) return BAD("bad escape in HELP text (only \\\\ \\n)");
    q++;
  }
  if (!utf8_ok((const unsigned char *)p, (size_t)(end - p))) return BAD("HELP text is not UTF-8");
  return 0;
}

/* A line that starts with "#"; p just after it. */
static int comment(parse_t *ps, const char *p, const char *end) {
  /* "#HELP" is a plain comment, as for the Prometheus server. */
  if (p == end || !is_blank(*p)) return 0;
  p = skip_blanks(p, end);
  const char *k0 = p;
  while (p < end && !is_blank(*p)) p++;
  size_t kn = (size_t)(p - k0);
  bool help = kn == 4 && memcmp(k0, "HELP", 4) == 0, type = kn == 4 && memcmp(k0, "TYPE", 4) == 0;
  if (!help && !type) return 0;

  p = skip_blanks(p, end);
  if (p == end || !is_name_start(*p)) return BAD(help ? "HELP without a valid metric name" : "TYPE without a valid metric name");
  while (p < end && is_name_char(*p)) p++;
  if (p < end && !is_blank(*p)) return BAD("bad character in metric name");
  p = skip_blanks(p, end);
  if (help) return help_text(ps, p, end);

  const char *t0 = p;
  while (p < end && !is_blank(*p)) p++;
  size_t tn = (size_t)(p - t0);
  if (tn == 0) return BAD("TYPE without a type");
  static const char *const types[] = {"counter", "gauge", "histogram", "summary", "untyped"};
  bool known = false;
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    if (tn == strlen(types[i]) && memcmp(t0, types[i], tn) == 0) known = true;
  if (!known) return BAD("unknown metric type in TYPE");
  if (skip_blanks(p, end) != end) return BAD("TYPE takes a metric name and a type only");
  return 0;
}

/* One line s..end, the LF excluded. */
static int line(parse_t *ps, const char *s, const char *end) {
  if (s == end) return 0;
  if (memchr(s, '\0', (size_t)(end - s))) return BAD("NUL byte");
  if (end[-1] == '\r') return BAD("line ends in CR LF (lines end with LF alone)");
  s = skip_blanks(s, end);
  if (s == end) return 0;
  if (*s == '#') return comment(ps, s + 1, end);
  while (is_blank(end[-1])) end--; /* trailing blanks; s < end holds a non-blank */
  return sample(ps, s, end);
}

static void reset(ob_prom_want_t *want, size_t n_want) {
  for (size_t i = 0; i < n_want; i++) {
    want[i].value = 0;
    want[i].max = 0;
    want[i].samples = 0;
    want[i].found = false;
    want[i].nonfinite = false;
  }
}

int ob_prom_parse(const char *text, size_t len, const ob_prom_opts_t *opts, ob_prom_want_t *want, size_t n_want,
                  size_t *err_line, const char **why) {
  parse_t ps = {.want = want, .n_want = n_want, .max_samples = OB_PROM_MAX_SAMPLES};
  if (opts) {
    ps.label_name = opts->label_name;
    ps.label_value = opts->label_value;
    if (opts->max_samples) ps.max_samples = opts->max_samples;
  }
  reset(want, n_want);

  const char *p = text, *end = text ? text + len : text;
  size_t lineno = 0;
  while (p < end) {
    lineno++;
    size_t rest = (size_t)(end - p);
    /* Look no further for the LF than a line may be long. */
    const char *nl = memchr(p, '\n', rest < OB_PROM_MAX_LINE + 1 ? rest : OB_PROM_MAX_LINE + 1);
    const char *le = nl ? nl : end;
    int rc;
    if (!nl && rest > OB_PROM_MAX_LINE) rc = fail(&ps, OB_ERR_TOO_LARGE, "line longer than OB_PROM_MAX_LINE bytes");
    else rc = line(&ps, p, le);
    if (rc < 0) {
      reset(want, n_want);
      if (err_line) *err_line = lineno;
      if (why) *why = ps.why;
      return rc;
    }
    p = nl ? nl + 1 : end;
  }

  for (size_t i = 0; i < n_want; i++) {
    ob_prom_want_t *w = &want[i];
    if (w->samples && !isfinite(w->value)) w->nonfinite = true;
    w->found = w->samples > 0 && !w->nonfinite;
    if (!w->found) w->value = w->max = 0;
  }
  return 0;
}
