/*
 * h1_parse.c: the HTTP/1.1 parser (RFC 9112) for request and response heads,
 * the incremental chunked transfer-coding decoder, and the character checks
 * behind them. Owns the framing rules every caller must apply identically:
 * body length, keep-alive, Host, Expect, Upgrade: h2c.
 *
 * It must not allocate, keep state between calls (the chunked decoder keeps
 * its state in the caller's ob_h1_chunked_t) or touch anything outside the
 * buffers it is handed. Every ob_iov_t it produces points into the caller's
 * input. This is an edge parser: hostile input is normal, so whatever RFC 9112
 * lets a recipient either reject or repair is rejected here.
 *
 * `why` arguments may be NULL; when not, they receive a static string on
 * every error return.
 */
#include "http.h"

#include <limits.h>

/* ---------------------------------------------------------------- characters */

/*
 * RFC 9110 5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" /
 * "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA. The unit tests check this
 * table against that list for all 256 bytes.
 */
static const unsigned char tchar[256] = {
    /* 0x00 - 0x1f: controls */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /*  SP !  "  #  $  %  &  '  (  )  *  +  ,  -  .  / */
    0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0,
    /*  0  1  2  3  4  5  6  7  8  9  :  ;  <  =  >  ? */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
    /*  @  A  B  C  D  E  F  G  H  I  J  K  L  M  N  O */
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /*  P  Q  R  S  T  U  V  W  X  Y  Z  [  \  ]  ^  _ */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1,
    /*  `  a  b  c  d  e  f  g  h  i  j  k  l  m  n  o */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /*  p  q  r  s  t  u  v  w  x  y  z  {  |  }  ~ DEL */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0,
    /* 0x80 - 0xff: obs-text is never a token (rest of the array is zero) */
};

static inline bool is_tchar(unsigned char c) { return tchar[c] != 0; }

/* field-value characters (RFC 9110 5.5): HTAB, SP, VCHAR, obs-text. */
static inline bool is_value_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

/* request-target characters: visible ASCII only (no SP, controls, DEL or
 * bytes >= 0x80; RFC 3986 never needs them raw). */
static inline bool is_target_char(unsigned char c) { return c > 0x20 && c < 0x7f; }

static inline bool is_ows(unsigned char c) { return c == ' ' || c == '\t'; }

/*
 * Word-at-a-time scans for the long runs (field values, targets): eight bytes
 * are checked at once while they are all ordinary printable characters, and
 * a word that might hold anything else is looked at byte by byte. The word
 * tests may report a byte that is fine (borrows, HTAB) but never miss one
 * that is not.
 */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

static inline uint64_t load64(const unsigned char *p) {
  uint64_t x;
  memcpy(&x, p, 8);
  return x;
}

/* Some byte < n (n <= 128); bytes >= 0x80 never count. */
static inline uint64_t any_below(uint64_t x, unsigned n) { return (x - ONES * n) & ~x & HIGHS; }

/* The first byte of [p, end) that is not a field-value character, or end. */
static const unsigned char *skip_value(const unsigned char *p, const unsigned char *end) {
  for (;;) {
    while (end - p >= 8) {
      uint64_t x = load64(p), del = x ^ (ONES * 0x7f);
      if (any_below(x, 0x20) | any_below(del, 1)) break;
      p += 8;
    }
    const unsigned char *stop = end - p >= 8 ? p + 8 : end;
    while (p < stop && is_value_char(*p)) p++;
    if (p < stop || p == end) return p;
  }
}

/* The first byte of [p, end) that is not a request-target character, or end. */
static const unsigned char *skip_target(const unsigned char *p, const unsigned char *end) {
  for (;;) {
    while (end - p >= 8) {
      uint64_t x = load64(p);
      if (any_below(x, 0x21) | ((x | (x + ONES)) & HIGHS)) break; /* < 0x21, or >= 0x7f */
      p += 8;
    }
    const unsigned char *stop = end - p >= 8 ? p + 8 : end;
    while (p < stop && is_target_char(*p)) p++;
    if (p < stop || p == end) return p;
  }
}

static inline int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c |= 0x20;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* Characters of a Host value: uri-host [ ":" port ] (RFC 3986 reg-name,
 * IP-literal, IPv4address). Anything else (SP, '@', '/', '?', '#', obs-text)
 * could make routing and the upstream disagree about the authority. */
static bool is_host_char(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
  case '-': case '.': case '_': case '~': case '%':
  case '!': case '$': case '&': case '\'': case '(': case ')': case '*': case '+': case ',': case ';': case '=':
  case ':': case '[': case ']':
    return true;
  default:
    return false;
  }
}

bool ob_http_is_token(ob_iov_t v) {
  if (v.len == 0) return false;
  for (size_t i = 0; i < v.len; i++)
    if (!is_tchar((unsigned char)v.base[i])) return false;
  return true;
}

bool ob_http_is_valid_value(ob_iov_t v) {
  const unsigned char *p = (const unsigned char *)v.base;
  return v.len == 0 || skip_value(p, p + v.len) == p + v.len;
}

bool ob_http_is_valid_target(ob_iov_t v) {
  const unsigned char *p = (const unsigned char *)v.base;
  return v.len > 0 && skip_target(p, p + v.len) == p + v.len;
}

static inline int fail(const char **why, int err, const char *msg) {
  if (why) *why = msg;
  return err;
}

/* ASCII case-insensitive comparison with a lower-case literal. */
static bool eq_lit(ob_iov_t v, const char *lit, size_t n) {
  if (v.len != n) return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)v.base[i];
    if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
    if (c != (unsigned char)lit[i]) return false;
  }
  return true;
}
#define EQ_LIT(v, lit) eq_lit((v), (lit), sizeof(lit) - 1)

/*
 * Comma-separated list iteration (RFC 9110 5.6.1). Elements come out with OWS
 * trimmed and may be empty; callers decide whether an empty element matters.
 */
typedef struct list_iter {
  const char *p, *end;
  bool done;
} list_iter_t;

static inline list_iter_t list_begin(ob_iov_t v) {
  return (list_iter_t){v.base, v.len ? v.base + v.len : v.base, false}; /* {NULL, 0} is allowed */
}

static bool list_next(list_iter_t *it, ob_iov_t *elem) {
  if (it->done) return false;
  size_t left = (size_t)(it->end - it->p);
  const char *comma = left ? memchr(it->p, ',', left) : NULL;
  const char *stop = comma ? comma : it->end;
  *elem = ob_iov_trim(ob_iov(it->p, (size_t)(stop - it->p)));
  if (comma)
    it->p = comma + 1;
  else
    it->done = true;
  return true;
}

/* ---------------------------------------------------------------- hop-by-hop */

bool ob_http_is_hop_by_hop(ob_iov_t name, ob_iov_t conn_tokens) {
  static const struct {
    const char *s;
    size_t n;
  } fixed[] = {
      {"connection", 10}, {"keep-alive", 10},         {"proxy-connection", 16},
      {"te", 2},          {"transfer-encoding", 17},  {"upgrade", 7},
      {"trailer", 7},     {"proxy-authenticate", 18}, {"proxy-authorization", 19},
  };
  /* Most names have none of the fixed names' lengths. */
  const uint32_t lengths = 1u << 2 | 1u << 7 | 1u << 10 | 1u << 16 | 1u << 17 | 1u << 18 | 1u << 19;
  if (name.len < 32 && (lengths >> name.len & 1u))
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
      if (eq_lit(name, fixed[i].s, fixed[i].n)) return true;
  if (name.len == 0) return false;
  list_iter_t it = list_begin(conn_tokens);
  ob_iov_t tok;
  while (list_next(&it, &tok))
    if (ob_iov_eq_nocase(tok, name)) return true;
  return false;
}

/* ---------------------------------------------------------------- semantics */

bool ob_http_response_bodyless(ob_iov_t method, int status) {
  return status < 200 || status == 204 || status == 304 || ob_iov_eq(method, OB_IOV_LIT("HEAD"));
}

bool ob_http_method_wants_length(ob_iov_t m) {
  return ob_iov_eq(m, OB_IOV_LIT("POST")) || ob_iov_eq(m, OB_IOV_LIT("PUT")) || ob_iov_eq(m, OB_IOV_LIT("PATCH"));
}

bool ob_http_is_hop_by_hop_in(ob_iov_t name, const ob_http_header_t *msg, size_t n) {
  if (ob_http_is_hop_by_hop(name, ob_iov(NULL, 0))) return true;
  for (size_t i = 0; i < n; i++)
    if (eq_lit(msg[i].name, "connection", 10) && ob_http_is_hop_by_hop(name, msg[i].value)) return true;
  return false;
}

/* ---------------------------------------------------------------- heads */

/*
 * How a head is parsed. The caller re-calls with a growing buffer, and the
 * parser keeps no state, so each call walks the head again: one memchr for
 * the LF ending each line, then one validating pass over that line. Syntax
 * errors in complete lines are reported as soon as the line is complete,
 * before the head is; framing semantics (Content-Length, Transfer-Encoding,
 * Host) are decided only once the empty line has arrived.
 *
 * Only buf[0 .. min(len, max_head_bytes)) is ever looked at. If no complete
 * head fits there and more bytes are available, the head is too large (431)
 * even though it is not complete.
 */
typedef struct head {
  const char *buf;
  size_t len;   /* bytes available */
  size_t limit; /* min(len, max_head_bytes) */
  size_t pos;   /* start of the next line */
  int bad;      /* OB_ERR_BAD_REQUEST or OB_ERR_BAD_RESPONSE */
  const char **why;
  ob_http_header_t *headers;
  size_t max_headers, num_headers;
} head_t;

static void head_init(head_t *h, const char *buf, size_t len, size_t max_head_bytes, int bad, const char **why,
                      ob_http_header_t *headers, size_t max_headers) {
  if (max_head_bytes > INT_MAX) max_head_bytes = INT_MAX; /* the length is returned as an int */
  h->buf = buf;
  h->len = len;
  h->limit = len < max_head_bytes ? len : max_head_bytes;
  h->pos = 0;
  h->bad = bad;
  h->why = why;
  h->headers = headers;
  h->max_headers = max_headers;
  h->num_headers = 0;
}

/* The next CRLF-terminated line, without its CRLF. A CR anywhere else in the
 * line is a bare CR; an LF not preceded by CR is a bare LF. */
static int next_line(head_t *h, ob_iov_t *line) {
  size_t avail = h->limit - h->pos;
  const char *start = avail ? h->buf + h->pos : NULL; /* buf may be NULL when len is 0 */
  const char *lf = avail ? memchr(start, '\n', avail) : NULL;
  if (!lf) {
    if (h->len > h->limit) return fail(h->why, OB_ERR_HEADERS_TOO_LARGE, "header section too large");
    return OB_ERR_INCOMPLETE;
  }
  if (lf == start || lf[-1] != '\r') return fail(h->why, h->bad, "bare LF");
  size_t n = (size_t)(lf - 1 - start);
  if (n && memchr(start, '\r', n)) return fail(h->why, h->bad, "bare CR");
  *line = ob_iov(start, n);
  h->pos = (size_t)(lf + 1 - h->buf);
  return 0;
}

/* "HTTP/1.0" or "HTTP/1.1" at p (8 bytes available); sets *minor. */
static int parse_version(head_t *h, const char *p, int *minor) {
  if (memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' || p[7] < '0' || p[7] > '9')
    return fail(h->why, h->bad, "malformed HTTP version");
  if (p[5] != '1' || (p[7] != '0' && p[7] != '1')) return fail(h->why, h->bad, "unsupported HTTP version");
  *minor = p[7] - '0';
  return 0;
}

/* field-line = field-name ":" OWS field-value OWS (RFC 9112 5). */
static int parse_field_line(head_t *h, ob_iov_t line) {
  const unsigned char *p = (const unsigned char *)line.base, *end = p + line.len;
  if (is_ows(*p)) return fail(h->why, h->bad, "obs-fold (field line starts with whitespace)");
  const unsigned char *name = p;
  while (p < end && is_tchar(*p)) p++;
  if (p == end) return fail(h->why, h->bad, "field line without colon");
  if (*p != ':') {
    if (is_ows(*p)) return fail(h->why, h->bad, "whitespace before colon");
    return fail(h->why, h->bad, "invalid character in field name");
  }
  if (p == name) return fail(h->why, h->bad, "empty field name");
  size_t name_len = (size_t)(p - name);
  p++;
  while (p < end && is_ows(*p)) p++;
  const unsigned char *value = p;
  p = skip_value(p, end);
  if (p != end) return fail(h->why, h->bad, "invalid character in field value");
  while (p > value && is_ows(p[-1])) p--;
  if (h->num_headers >= h->max_headers) return fail(h->why, OB_ERR_HEADERS_TOO_LARGE, "too many header fields");
  ob_http_header_t *f = &h->headers[h->num_headers++];
  f->name = ob_iov((const char *)name, name_len);
  f->value = ob_iov((const char *)value, (size_t)(p - value));
  return 0;
}

/* Field lines up to and including the empty line; h->pos is then the head
 * length. */
static int parse_fields(head_t *h) {
  for (;;) {
    ob_iov_t line;
    int r = next_line(h, &line);
    if (r) return r;
    if (line.len == 0) return 0;
    r = parse_field_line(h, line);
    if (r) return r;
  }
}

/* What the fields say about framing and connection handling. */
typedef struct fields_info {
  bool has_cl;
  uint64_t cl;
  bool has_te;
  bool te_chunked;      /* "chunked" seen */
  bool te_last_chunked; /* the last coding seen so far is "chunked" */
  bool te_other;        /* a coding other than "chunked" seen */
  bool conn_close, conn_keep_alive;
  size_t hosts;
  ob_iov_t host;
  bool expect_continue, upgrade_h2c;
} fields_info_t;

/*
 * Content-Length (RFC 9110 8.6, RFC 9112 6.3): 1*DIGIT. A list ("5, 5") or
 * repeated fields are accepted only when every element has the same value;
 * an empty element, a non-digit or a value above 2^63-1 (the same ceiling as
 * chunk sizes, so lengths fit an off_t) is an error.
 */
static int content_length(head_t *h, fields_info_t *fi, ob_iov_t value) {
  list_iter_t it = list_begin(value);
  ob_iov_t el;
  while (list_next(&it, &el)) {
    uint64_t v;
    if (el.len == 0) return fail(h->why, h->bad, "empty Content-Length");
    if (!ob_iov_to_u64(el, &v) || v > (uint64_t)INT64_MAX) return fail(h->why, h->bad, "invalid Content-Length");
    if (fi->has_cl && v != fi->cl) return fail(h->why, h->bad, "differing Content-Length values");
    fi->has_cl = true;
    fi->cl = v;
  }
  return 0;
}

/*
 * Transfer-Encoding (RFC 9112 6.1, 6.3). The codings of every
 * Transfer-Encoding field, in order, form one list. Decisions:
 *  - an empty list or an empty element ("chunked, ", "") is malformed: 400;
 *  - a coding that is not a token, or "chunked" with parameters: 400;
 *  - "chunked" more than once ("chunked, chunked"): 400 (RFC 9112 6.1 forbids
 *    it and the length would be ambiguous);
 *  - "chunked" missing or not last ("gzip", "identity", "chunked, gzip"):
 *    400, because RFC 9112 6.3 says a request's length then cannot be
 *    determined and the server MUST answer 400 and close;
 *  - exactly one final "chunked" preceded by other codings ("gzip, chunked"):
 *    the framing is sound but we do not implement those codings: 501
 *    (RFC 9112 6.1 "SHOULD respond with 501");
 *  - on a response, anything but exactly "chunked" is a bad response.
 * The per-element checks happen here; the 400/501 decision in finish_*.
 */
static int transfer_encoding(head_t *h, fields_info_t *fi, ob_iov_t value) {
  fi->has_te = true;
  list_iter_t it = list_begin(value);
  ob_iov_t el;
  while (list_next(&it, &el)) {
    if (el.len == 0) return fail(h->why, h->bad, "empty transfer coding");
    const char *semi = memchr(el.base, ';', el.len);
    ob_iov_t coding = ob_iov_trim(ob_iov(el.base, semi ? (size_t)(semi - el.base) : el.len));
    if (!ob_http_is_token(coding)) return fail(h->why, h->bad, "invalid transfer coding");
    if (EQ_LIT(coding, "chunked")) {
      if (semi) return fail(h->why, h->bad, "parameters on chunked transfer coding");
      if (fi->te_chunked) return fail(h->why, h->bad, "chunked applied more than once");
      fi->te_chunked = true;
      fi->te_last_chunked = true;
    } else {
      fi->te_other = true;
      fi->te_last_chunked = false;
    }
  }
  return 0;
}

/* One pass over the parsed fields collecting what framing needs. Only the
 * fields that matter are looked at; the switch on length keeps the common
 * case (a field we do not care about) to one comparison. */
static int scan_fields(head_t *h, bool is_request, fields_info_t *fi) {
  memset(fi, 0, sizeof *fi);
  for (size_t i = 0; i < h->num_headers; i++) {
    const ob_http_header_t *f = &h->headers[i];
    int r = 0;
    switch (f->name.len) {
    case 4:
      if (is_request && EQ_LIT(f->name, "host")) {
        if (++fi->hosts > 1) return fail(h->why, h->bad, "multiple Host fields");
        for (size_t k = 0; k < f->value.len; k++)
          if (!is_host_char((unsigned char)f->value.base[k])) return fail(h->why, h->bad, "invalid Host");
        fi->host = f->value;
      }
      break;
    case 6:
      if (is_request && EQ_LIT(f->name, "expect")) {
        list_iter_t it = list_begin(f->value);
        ob_iov_t el;
        while (list_next(&it, &el))
          if (EQ_LIT(el, "100-continue")) fi->expect_continue = true;
      }
      break;
    case 7:
      if (is_request && EQ_LIT(f->name, "upgrade")) {
        list_iter_t it = list_begin(f->value);
        ob_iov_t el;
        while (list_next(&it, &el))
          if (EQ_LIT(el, "h2c")) fi->upgrade_h2c = true;
      }
      break;
    case 10:
      if (EQ_LIT(f->name, "connection")) {
        list_iter_t it = list_begin(f->value);
        ob_iov_t el;
        while (list_next(&it, &el)) {
          if (EQ_LIT(el, "close")) fi->conn_close = true;
          else if (EQ_LIT(el, "keep-alive")) fi->conn_keep_alive = true;
        }
      }
      break;
    case 14:
      if (EQ_LIT(f->name, "content-length")) r = content_length(h, fi, f->value);
      break;
    case 17:
      if (EQ_LIT(f->name, "transfer-encoding")) r = transfer_encoding(h, fi, f->value);
      break;
    default:
      break;
    }
    if (r) return r;
  }
  return 0;
}

/* Checks common to requests and responses, in the order that gives the most
 * telling reason: TE on 1.0, then CL with TE, then the coding list itself. */
static int check_framing(head_t *h, const fields_info_t *fi, int minor) {
  if (!fi->has_te) return 0;
  /* RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
   * framing even if Content-Length is present. */
  if (minor == 0) return fail(h->why, h->bad, "Transfer-Encoding in an HTTP/1.0 message");
  /* RFC 9112 6.1: a server MAY reject CL + TE; a proxy must never pick one. */
  if (fi->has_cl) return fail(h->why, h->bad, "both Content-Length and Transfer-Encoding");
  if (!fi->te_chunked || !fi->te_last_chunked) return fail(h->why, h->bad, "chunked is not the final transfer coding");
  return 0;
}

int ob_h1_parse_request(const char *buf, size_t len, ob_h1_request_t *req, ob_http_header_t *headers,
                        size_t max_headers, size_t max_head_bytes, const char **why) {
  head_t h;
  head_init(&h, buf, len, max_head_bytes, OB_ERR_BAD_REQUEST, why, headers, max_headers);
  memset(req, 0, sizeof *req);
  req->headers = headers;

  /* RFC 9112 2.2: a server SHOULD ignore at least one empty line before the
   * request line (clients sometimes add CRLF after a POST body). We ignore a
   * few and reject a flood of them. They count towards the head length. */
  ob_iov_t line;
  int r, empty = 0;
  for (;;) {
    if ((r = next_line(&h, &line))) return r;
    if (line.len) break;
    if (++empty > 4) return fail(why, OB_ERR_BAD_REQUEST, "too many empty lines before the request line");
  }

  /* request-line = method SP request-target SP HTTP-version (RFC 9112 3) */
  const unsigned char *p = (const unsigned char *)line.base, *end = p + line.len;
  const unsigned char *m = p;
  while (p < end && is_tchar(*p)) p++;
  if (p == end || *p != ' ' || p == m) return fail(why, OB_ERR_BAD_REQUEST, "invalid method");
  req->method = ob_iov((const char *)m, (size_t)(p - m));
  const unsigned char *t = ++p;
  p = skip_target(p, end);
  if (p == t) return fail(why, OB_ERR_BAD_REQUEST, "empty request target");
  if (p == end) return fail(why, OB_ERR_BAD_REQUEST, "missing HTTP version");
  if (*p != ' ') return fail(why, OB_ERR_BAD_REQUEST, "invalid character in request target");
  req->target = ob_iov((const char *)t, (size_t)(p - t));
  p++;
  if (end - p != 8) return fail(why, OB_ERR_BAD_REQUEST, "malformed HTTP version");
  if ((r = parse_version(&h, (const char *)p, &req->minor_version))) return r;

  if ((r = parse_fields(&h))) {
    req->num_headers = h.num_headers;
    return r;
  }
  req->num_headers = h.num_headers;

  fields_info_t fi;
  if ((r = scan_fields(&h, true, &fi))) return r;
  if ((r = check_framing(&h, &fi, req->minor_version))) return r;
  if (fi.has_te && fi.te_other) return fail(why, OB_ERR_NOT_IMPLEMENTED, "unsupported transfer coding");
  /* RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without
   * Host (more than one was rejected in scan_fields). */
  if (req->minor_version == 1 && fi.hosts == 0) return fail(why, OB_ERR_BAD_REQUEST, "missing Host");

  if (fi.has_te) {
    req->body = OB_H1_BODY_CHUNKED;
  } else if (fi.has_cl) {
    /* Content-Length: 0 stays LENGTH so the caller can forward it as sent. */
    req->body = OB_H1_BODY_LENGTH;
    req->content_length = fi.cl;
  } else {
    req->body = OB_H1_BODY_NONE;
  }
  req->keep_alive = req->minor_version == 1 ? !fi.conn_close : (fi.conn_keep_alive && !fi.conn_close);
  /* RFC 9110 10.1.1: 100-continue in an HTTP/1.0 request MUST be ignored. */
  req->expect_continue = fi.expect_continue && req->minor_version == 1;
  req->upgrade_h2c = fi.upgrade_h2c;
  req->host = fi.host;
  return (int)h.pos;
}

int ob_h1_parse_response(const char *buf, size_t len, ob_h1_response_t *resp, ob_http_header_t *headers,
                         size_t max_headers, size_t max_head_bytes, ob_iov_t request_method, const char **why) {
  head_t h;
  head_init(&h, buf, len, max_head_bytes, OB_ERR_BAD_RESPONSE, why, headers, max_headers);
  memset(resp, 0, sizeof *resp);
  resp->headers = headers;

  /* status-line = HTTP-version SP status-code SP [ reason-phrase ]
   * (RFC 9112 4). Leniency: the SP after the status code may be missing when
   * the reason is empty. No empty lines are skipped before a response. */
  ob_iov_t line;
  int r;
  if ((r = next_line(&h, &line))) return r;
  const char *p = line.base, *end = p + line.len;
  if (line.len < 12 || p[8] != ' ') return fail(why, OB_ERR_BAD_RESPONSE, "malformed status line");
  if ((r = parse_version(&h, p, &resp->minor_version))) return r;
  p += 9;
  if (p[0] < '1' || p[0] > '5' || p[1] < '0' || p[1] > '9' || p[2] < '0' || p[2] > '9')
    return fail(why, OB_ERR_BAD_RESPONSE, "invalid status code");
  resp->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
  p += 3;
  if (p < end) {
    if (*p != ' ') return fail(why, OB_ERR_BAD_RESPONSE, "invalid status code");
    p++;
    if (skip_value((const unsigned char *)p, (const unsigned char *)end) != (const unsigned char *)end)
      return fail(why, OB_ERR_BAD_RESPONSE, "invalid character in reason phrase");
  }
  resp->reason = ob_iov(p, (size_t)(end - p));

  if ((r = parse_fields(&h))) {
    resp->num_headers = h.num_headers;
    return r;
  }
  resp->num_headers = h.num_headers;

  fields_info_t fi;
  if ((r = scan_fields(&h, false, &fi))) return r;
  if ((r = check_framing(&h, &fi, resp->minor_version))) return r;
  if (fi.has_te && fi.te_other) return fail(why, OB_ERR_BAD_RESPONSE, "transfer coding other than chunked");

  /* RFC 9112 6.3, in order: HEAD, 1xx, 204, 304 have no body whatever the
   * fields say (they were still validated above); then chunked; then
   * Content-Length; else the body runs until the connection closes. */
  if (ob_http_response_bodyless(request_method, resp->status)) {
    resp->body = OB_H1_BODY_NONE;
  } else if (fi.has_te) {
    resp->body = OB_H1_BODY_CHUNKED;
  } else if (fi.has_cl) {
    resp->body = OB_H1_BODY_LENGTH;
    resp->content_length = fi.cl;
  } else {
    resp->body = OB_H1_BODY_UNTIL_CLOSE;
  }
  resp->keep_alive = resp->minor_version == 1 ? !fi.conn_close : (fi.conn_keep_alive && !fi.conn_close);
  if (resp->body == OB_H1_BODY_UNTIL_CLOSE) resp->keep_alive = false;
  return (int)h.pos;
}

/* ---------------------------------------------------------------- chunked */

/*
 * The chunked decoder (RFC 9112 7.1) is a byte-at-a-time state machine over
 * the framing, and a bulk step over data:
 *
 *   chunk      = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
 *   last-chunk = 1*"0" [ chunk-ext ] CRLF
 *   trailer-section = *( field-line CRLF ) CRLF
 *
 * SIZE_START wants the first hex digit; SIZE takes more digits, whitespace
 * (then SIZE_BWS, where only more whitespace or ';' may follow), ';' (EXT,
 * skipped up to CR with control characters rejected) or CR (SIZE_LF). After
 * the LF a non-zero size enters DATA, which is handed back in place and
 * never in the same call as framing; then exactly CRLF (DATA_CR, DATA_LF).
 * A zero size enters the trailer section: TRAILER_START either sees the CR
 * of the final empty line (END_LF) or begins a field line, checked like a
 * header field (TRAILER_NAME, TRAILER_VALUE, TRAILER_LF) and dropped.
 * line_bytes counts the bytes of the current size or trailer line (CRLF not
 * included); remaining holds the chunk size, and in the trailer section the
 * number of trailer fields. Any error parks the decoder in ERROR.
 */
enum {
  CH_SIZE_START = 0, /* ob_h1_chunked_init zeroes the state */
  CH_SIZE,
  CH_SIZE_BWS,
  CH_EXT,
  CH_SIZE_LF,
  CH_DATA,
  CH_DATA_CR,
  CH_DATA_LF,
  CH_TRAILER_START,
  CH_TRAILER_NAME,
  CH_TRAILER_VALUE,
  CH_TRAILER_LF,
  CH_END_LF,
  CH_DONE,
  CH_ERROR,
};

#define CH_MAX_LINE 4096

void ob_h1_chunked_init(ob_h1_chunked_t *d) { memset(d, 0, sizeof *d); }

static int chunk_fail(ob_h1_chunked_t *d, const char **why, const char *msg) {
  d->state = CH_ERROR;
  return fail(why, OB_ERR_PROTOCOL, msg);
}

int ob_h1_chunked_step(ob_h1_chunked_t *d, const char *in, size_t len, size_t *data_len, const char **why) {
  *data_len = 0;
  if (d->state == CH_ERROR) return fail(why, OB_ERR_PROTOCOL, "chunked decoder already failed");
  if (d->done) return 0;
  if (len > INT_MAX) len = INT_MAX; /* the count is returned as an int */

  if (d->state == CH_DATA) {
    size_t n = d->remaining < len ? (size_t)d->remaining : len;
    d->remaining -= n;
    if (d->remaining == 0) d->state = CH_DATA_CR;
    *data_len = n;
    return (int)n;
  }

  const unsigned char *s = (const unsigned char *)in;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = s[i];
    switch (d->state) {
    case CH_SIZE_START: {
      int v = hex_value(c);
      if (v < 0) return chunk_fail(d, why, "invalid chunk size");
      d->remaining = (uint64_t)v;
      d->line_bytes = 1;
      d->state = CH_SIZE;
      break;
    }
    case CH_SIZE:
    case CH_SIZE_BWS:
    case CH_EXT:
      if (++d->line_bytes > CH_MAX_LINE && c != '\r') return chunk_fail(d, why, "chunk size line too long");
      if (c == '\r') {
        if (d->state == CH_SIZE_BWS) return chunk_fail(d, why, "whitespace after chunk size");
        d->line_bytes--;
        d->state = CH_SIZE_LF;
      } else if (c == '\n') {
        return chunk_fail(d, why, "bare LF in chunk size line");
      } else if (d->state == CH_EXT) {
        /* Extensions are skipped, but not with control characters in them. */
        if (!is_value_char(c)) return chunk_fail(d, why, "invalid character in chunk extension");
      } else if (c == ';') {
        d->state = CH_EXT;
      } else if (is_ows(c)) {
        d->state = CH_SIZE_BWS; /* BWS is allowed only before ';' */
      } else if (d->state == CH_SIZE_BWS) {
        return chunk_fail(d, why, "whitespace inside chunk size");
      } else {
        int v = hex_value(c);
        if (v < 0) return chunk_fail(d, why, "invalid chunk size");
        if (d->remaining > ((uint64_t)INT64_MAX >> 4)) return chunk_fail(d, why, "chunk size overflow");
        d->remaining = (d->remaining << 4) | (uint64_t)v;
      }
      break;
    case CH_SIZE_LF:
      if (c != '\n') return chunk_fail(d, why, "bare CR in chunk size line");
      d->line_bytes = 0;
      if (d->remaining == 0) {
        d->state = CH_TRAILER_START;
        break;
      }
      d->state = CH_DATA;
      return (int)(i + 1); /* data comes in the next call */
    case CH_DATA_CR:
      if (c != '\r') return chunk_fail(d, why, "chunk data not followed by CRLF");
      d->state = CH_DATA_LF;
      break;
    case CH_DATA_LF:
      if (c != '\n') return chunk_fail(d, why, "chunk data not followed by CRLF");
      d->state = CH_SIZE_START;
      break;
    case CH_TRAILER_START:
      if (c == '\r') {
        d->state = CH_END_LF;
      } else if (c == '\n') {
        return chunk_fail(d, why, "bare LF in trailer section");
      } else if (is_ows(c)) {
        return chunk_fail(d, why, "obs-fold in trailer section");
      } else if (c == ':') {
        return chunk_fail(d, why, "empty trailer field name");
      } else if (!is_tchar(c)) {
        return chunk_fail(d, why, "invalid character in trailer field name");
      } else {
        if (++d->remaining > OB_HTTP_MAX_HEADERS) return chunk_fail(d, why, "too many trailer fields");
        d->line_bytes = 1;
        d->state = CH_TRAILER_NAME;
      }
      break;
    case CH_TRAILER_NAME:
    case CH_TRAILER_VALUE:
      if (++d->line_bytes > CH_MAX_LINE && c != '\r') return chunk_fail(d, why, "trailer line too long");
      if (c == '\n') return chunk_fail(d, why, "bare LF in trailer section");
      if (d->state == CH_TRAILER_NAME) {
        if (c == ':') {
          d->state = CH_TRAILER_VALUE;
        } else if (c == '\r') {
          return chunk_fail(d, why, "trailer field without colon");
        } else if (is_ows(c)) {
          return chunk_fail(d, why, "whitespace before colon in trailer");
        } else if (!is_tchar(c)) {
          return chunk_fail(d, why, "invalid character in trailer field name");
        }
      } else if (c == '\r') {
        d->state = CH_TRAILER_LF;
      } else if (!is_value_char(c)) {
        return chunk_fail(d, why, "invalid character in trailer field value");
      }
      break;
    case CH_TRAILER_LF:
      if (c != '\n') return chunk_fail(d, why, "bare CR in trailer section");
      d->line_bytes = 0;
      d->state = CH_TRAILER_START;
      break;
    case CH_END_LF:
      if (c != '\n') return chunk_fail(d, why, "bare CR after trailer section");
      d->state = CH_DONE;
      d->done = true;
      return (int)(i + 1);
    default: /* CH_DATA, CH_DONE and CH_ERROR are handled before the loop */
      return chunk_fail(d, why, "chunked decoder in an impossible state");
    }
  }
  return (int)len;
}
