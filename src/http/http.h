/*
 * http: the protocol-neutral message model and the HTTP/1.1 codec
 * (RFC 9110 / RFC 9112), gRPC framing helpers, and a reader of the
 * Prometheus text format (an inference server's /metrics). No sockets, no
 * libevent: bytes in, parsed views out.
 *
 * Ownership: every ob_iov_t a parser produces points into the caller's input
 * buffer and is valid only while that buffer is unchanged. Callers that keep
 * a message beyond that copy it (ob_http_msg_copy into an arena).
 */
#ifndef OB_HTTP_H
#define OB_HTTP_H

#include "core.h"

/* ---------------------------------------------------------------- model */

typedef struct ob_http_header {
  ob_iov_t name;  /* as received for h1 (case kept); lower case for h2 */
  ob_iov_t value; /* leading/trailing OWS removed */
} ob_http_header_t;

/* Upper bound on header fields in one message; more is answered 431. */
#define OB_HTTP_MAX_HEADERS 128

/* Body framing of an HTTP/1.1 message, as decided by the parser. */
typedef enum {
  OB_H1_BODY_NONE,       /* no body */
  OB_H1_BODY_LENGTH,     /* content_length bytes follow */
  OB_H1_BODY_CHUNKED,    /* chunked transfer coding */
  OB_H1_BODY_UNTIL_CLOSE /* responses only: body ends when the connection closes */
} ob_h1_body_t;

/* A parsed HTTP/1.1 request head. */
typedef struct ob_h1_request {
  ob_iov_t method;
  ob_iov_t target;     /* request-target as sent (origin-form or absolute-form) */
  int minor_version;   /* 0 or 1 */
  ob_http_header_t *headers; /* caller's array, filled by the parser */
  size_t num_headers;
  /* Semantics the parser derives (so every caller applies the same rules): */
  ob_h1_body_t body;
  uint64_t content_length;  /* valid when body == OB_H1_BODY_LENGTH */
  bool keep_alive;          /* after this exchange, per version + Connection */
  bool expect_continue;     /* Expect: 100-continue */
  bool upgrade_h2c;         /* Upgrade: h2c was offered (we ignore it, see RFC 9113 3.1) */
  ob_iov_t host;            /* Host header value, empty when absent */
} ob_h1_request_t;

/* A parsed HTTP/1.1 response head. */
typedef struct ob_h1_response {
  int status;
  int minor_version;
  ob_iov_t reason;
  ob_http_header_t *headers;
  size_t num_headers;
  ob_h1_body_t body;
  uint64_t content_length;
  bool keep_alive;
} ob_h1_response_t;

/* ---------------------------------------------------------------- parsing */

/*
 * Parse one request head from buf[0..len).
 *
 * headers: caller's array of max_headers entries, filled in (borrowed for the
 * call; entries then point into buf).
 * max_head_bytes: limit on the whole head (request line + fields + CRLF).
 *
 * Returns the number of bytes the head occupies (> 0) on success;
 * OB_ERR_INCOMPLETE when buf holds no complete head yet (and the limit is not
 * exceeded); OB_ERR_HEADERS_TOO_LARGE (answer 431) when the head is longer
 * than max_head_bytes or has more than max_headers fields;
 * OB_ERR_BAD_REQUEST (answer 400 and close) for anything malformed, including
 * every request-smuggling shape: Content-Length together with
 * Transfer-Encoding, differing duplicate Content-Length, obs-fold, bare CR or
 * LF, invalid token characters in method or field names, control characters
 * in values, whitespace before the colon, missing Host on HTTP/1.1;
 * OB_ERR_NOT_IMPLEMENTED (answer 501 and close) for a Transfer-Encoding other
 * than one final "chunked". *why receives a static explanation on error.
 */
int ob_h1_parse_request(const char *buf, size_t len, ob_h1_request_t *req, ob_http_header_t *headers,
                        size_t max_headers, size_t max_head_bytes, const char **why);

/*
 * Parse one response head. request_method: the method of the request it
 * answers (borrowed for the call); when ob_http_response_bodyless says so, no
 * body follows whatever the headers say. A response with neither
 * Content-Length nor chunked is OB_H1_BODY_UNTIL_CLOSE.
 * Returns as ob_h1_parse_request, with OB_ERR_BAD_RESPONSE for malformed input
 * (including Content-Length + Transfer-Encoding and differing Content-Length).
 */
int ob_h1_parse_response(const char *buf, size_t len, ob_h1_response_t *resp, ob_http_header_t *headers,
                         size_t max_headers, size_t max_head_bytes, ob_iov_t request_method, const char **why);

/*
 * Incremental decoder for the chunked transfer coding. Framing is consumed,
 * data is reported in place so callers can move it without copying.
 * Chunk extensions are skipped; trailer fields are validated and discarded.
 */
typedef struct ob_h1_chunked {
  int state;          /* private */
  uint64_t remaining; /* private: bytes left in the current chunk */
  size_t line_bytes;  /* private: bytes of the current size/trailer line */
  bool done;          /* set once the last chunk and trailers were consumed */
} ob_h1_chunked_t;

void ob_h1_chunked_init(ob_h1_chunked_t *d);

/*
 * Advance over in[0..len). Returns the number of bytes consumed (>= 0, may be
 * 0 only when len == 0 or done) or a negative error (OB_ERR_BAD_REQUEST /
 * OB_ERR_BAD_RESPONSE are both reported as OB_ERR_PROTOCOL here; *why says
 * why). *data_len is set to how many of the consumed bytes, starting at in[0],
 * are body data; when *data_len > 0 the whole return value is data (data and
 * framing are never mixed in one call). Call again with the rest until done or
 * the input is exhausted. A size line or trailer line above 4096 bytes, or a
 * chunk size that does not fit in 63 bits, is an error.
 */
int ob_h1_chunked_step(ob_h1_chunked_t *d, const char *in, size_t len, size_t *data_len, const char **why);

/* ---------------------------------------------------------------- semantics */

/*
 * True when a response with this status to a request with this method has no
 * content, whatever its fields say (RFC 9110 9.3.2, 15.2, 15.3.5, 15.4.5;
 * RFC 9112 6.3): the method is exactly "HEAD", or the status is 1xx, 204 or
 * 304. Methods are case-sensitive (RFC 9110 9.1): "head" is another method,
 * whose answer has a body. Both sides of the proxy ask this one function, so
 * the bytes read from an upstream and the bytes framed for a client can
 * never disagree on where a response ends.
 */
bool ob_http_response_bodyless(ob_iov_t method, int status);

/* True for the methods whose request carries content by definition (exactly
 * POST, PUT, PATCH), so an empty body is still sent with Content-Length: 0. */
bool ob_http_method_wants_length(ob_iov_t method);

/* ---------------------------------------------------------------- serializing */

/* True for hop-by-hop fields a proxy must not forward (RFC 9110 7.6.1):
 * Connection, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding, Upgrade,
 * Trailer, Proxy-Authenticate, Proxy-Authorization; plus every field named in
 * the message's own Connection header (conn_tokens, may be empty). */
bool ob_http_is_hop_by_hop(ob_iov_t name, ob_iov_t conn_tokens);
/* ob_http_is_hop_by_hop against the tokens of every Connection field of the
 * message msg[0..n) (borrowed for the call): a second Connection field names
 * hop-by-hop fields as much as the first does (RFC 9110 5.3, 7.6.1). */
bool ob_http_is_hop_by_hop_in(ob_iov_t name, const ob_http_header_t *msg, size_t n);

/* Append "METHOD target HTTP/1.1\r\n" to out. Headers are appended with
 * ob_h1_append_header, the head is closed with ob_buf_append(out, "\r\n", 2). */
void ob_h1_append_request_line(ob_buf_t *out, ob_iov_t method, ob_iov_t target);
/* Append "HTTP/1.1 status reason\r\n"; reason from ob_http_reason(). */
void ob_h1_append_status_line(ob_buf_t *out, int status);
void ob_h1_append_header(ob_buf_t *out, ob_iov_t name, ob_iov_t value);

/* The standard reason phrase ("Not Found"), or "Unknown". */
const char *ob_http_reason(int status);

/* ---------------------------------------------------------------- errors */

/*
 * Append the body of an error the gateway itself produces, in OpenAI's shape:
 * {"error":{"message":...,"type":...,"param":null,"code":...}}.
 * type and code default from the status when NULL (e.g. 404 ->
 * "not_found_error" / "not_found", 429 -> "rate_limit_error" /
 * "rate_limit_exceeded"). All strings borrowed for the call.
 */
void ob_http_error_json(ob_buf_t *out, int status, const char *message, const char *type, const char *code);

/* ---------------------------------------------------------------- gRPC */

/*
 * Parse a grpc-timeout value (gRPC over HTTP/2: 1 to 8 ASCII digits and a
 * unit H, M, S, m, u or n) into microseconds (nanoseconds round up to 1 µs).
 * Returns false for anything else.
 */
bool ob_http_parse_grpc_timeout(ob_iov_t v, uint64_t *us);

/* Format a remaining time as a grpc-timeout value (at most 8 digits, the
 * finest unit that fits, rounded up); returns its length. */
size_t ob_grpc_format_timeout(uint64_t us, char out[16]);

/* Append msg percent-encoded for grpc-message: bytes outside 0x20..0x7E and
 * '%' become %XX (so UTF-8 survives). */
void ob_grpc_percent_encode(ob_buf_t *out, ob_iov_t msg);

/*
 * Incremental reader of gRPC length-prefixed messages (1-byte compressed
 * flag, 4-byte big-endian length, payload), fed a stream span by span as it
 * passes; keeps no payload bytes. Caller storage.
 */
typedef struct ob_grpc_scan {
  uint64_t messages;      /* complete messages seen */
  uint64_t compressed;    /* of which flagged compressed */
  uint64_t payload_bytes; /* payload bytes seen (prefixes excluded) */
  bool bad;               /* a flag other than 0/1, or a length above max_message; nothing more is read */
  /* private */
  uint32_t max_message;
  uint8_t hdr[5];
  uint8_t hdr_len;
  uint64_t remaining;
} ob_grpc_scan_t;

/* max_message: the largest payload accepted; 0 = any (up to 2^32 - 1). */
void ob_grpc_scan_init(ob_grpc_scan_t *s, uint32_t max_message);
void ob_grpc_scan_feed(ob_grpc_scan_t *s, const char *p, size_t n);
/* True when the stream so far ends exactly after a complete message. */
bool ob_grpc_scan_at_boundary(const ob_grpc_scan_t *s);

/* A unary body: exactly one message. 1 and *msg (pointing into body) when it
 * is one uncompressed message, 0 when it is compressed, -1 when malformed. */
int ob_grpc_single_message(ob_iov_t body, ob_iov_t *msg);
/* Append msg as one uncompressed length-prefixed message. */
void ob_grpc_append_frame(ob_buf_t *out, ob_iov_t msg);

/* The length-delimited field `field` of a protobuf message (last occurrence
 * wins): 1 and *out (pointing into msg) when present, 0 when absent, -1 when
 * the message is malformed. Unknown fields of every wire type are skipped. */
int ob_pb_find_bytes(ob_iov_t msg, uint32_t field, ob_iov_t *out);

/* ---------------------------------------------------------------- Prometheus text format */

/*
 * A strict, bounded reader of the Prometheus text exposition format, version
 * 0.0.4 (what vLLM's and SGLang's /metrics serve), that picks out a few
 * metrics by name. It reads, it does not keep: no allocation, no state
 * between calls, nothing points into the text afterwards.
 *
 * What it accepts (the grammar of prometheus.io's "Exposition formats" as
 * the Prometheus server reads it, checked for the whole text, not only the
 * wanted lines):
 *  - lines end with LF; the last one may lack it. A line ending in CR LF is
 *    malformed (Prometheus fails such a scrape too: CR is not a blank).
 *    Blank lines and lines of blanks (SP, HTAB) are skipped; leading and
 *    trailing blanks are ignored; tokens are separated by blanks.
 *  - "#" then a blank then HELP or TYPE is metadata: "# HELP name text",
 *    the text escaped with \\ and \n only and valid UTF-8;
 *    "# TYPE name type", exactly a name and one of counter, gauge,
 *    histogram, summary, untyped; either without a name is malformed. Any
 *    other "#" line ("#HELP" too, as for Prometheus) is a comment, ignored.
 *    Placement and uniqueness of HELP / TYPE lines, and duplicate series,
 *    are not checked: that would need memory for every name in the text.
 *  - a sample: name [ "{" label="value" { "," label="value" } [","] "}" ]
 *    value [ timestamp ]. Names [a-zA-Z_:][a-zA-Z0-9_:]*, label names
 *    [a-zA-Z_][a-zA-Z0-9_]* (at most once each per sample), label values in
 *    double quotes with the escapes \\, \" and \n only, valid UTF-8.
 *    Blanks may stand between the tokens inside the braces. The value is a
 *    decimal float ([+-] digits [. digits] [e [+-] digits], or ".5", "5."),
 *    or NaN, Inf, +Inf, -Inf, Infinity (any case; NaN unsigned): Go's
 *    ParseFloat without hex floats and underscores, as Prometheus does. A
 *    decimal beyond the double range is malformed, as it is for Go. Values
 *    are converted without the C locale's say (see prom.c). The timestamp
 *    is 1 to 19 digits within int64; it is checked, not used.
 *  - Quoted (UTF-8) metric names, exemplars and OpenMetrics are not 0.0.4
 *    and are malformed here. So is a NUL byte anywhere.
 * Bounds: a line of at most OB_PROM_MAX_LINE bytes (LF excluded), at most
 * OB_PROM_MAX_LABELS labels in a sample, a value token of at most
 * OB_PROM_MAX_VALUE bytes, and at most max_samples sample lines. Time is
 * linear in len (plus labels squared per sample, for the duplicate check).
 * A body cut short may still be well-formed ("a 12" cut to "a 1"): that the
 * body is complete is for the caller's HTTP framing to say.
 */
#define OB_PROM_MAX_LINE 65536
#define OB_PROM_MAX_LABELS 64
#define OB_PROM_MAX_VALUE 128
#define OB_PROM_MAX_SAMPLES 65536 /* max_samples when opts leave it 0 */

/*
 * One metric the caller wants, and what was found for it. The caller fills
 * name; ob_prom_parse fills the rest (and resets it first).
 *
 * Every sample whose metric name is exactly name (and which passes the
 * label filter of ob_prom_opts_t) is counted: vLLM exposes one series per
 * model_name (and per engine when data-parallel), so the series are summed.
 * For a fraction such as vllm:kv_cache_usage_perc or sglang:token_usage, a
 * sum over engines is no fraction: use max (the fullest engine) or
 * value / samples (the mean) instead.
 *
 * NaN and +-Inf are legal values, but not a usable signal: a wanted metric
 * with a non-finite sample among its matches (or whose sum overflows) is
 * reported not found, with nonfinite set, so the caller falls back as it
 * does for a metric that is absent.
 *
 * Histograms and summaries need nothing more: their parts are ordinary
 * names. Wanting "x_sum" and "x_count" gives the mean since the server
 * started, and their differences between two scrapes the mean in between;
 * one bucket ("x_bucket" with label le) can be had with the label filter.
 */
typedef struct ob_prom_want {
  const char *name; /* in: metric name, NUL-terminated (borrowed for the call); NULL matches nothing */
  double value;     /* out: sum of the matching samples' values; 0 unless found */
  double max;       /* out: the largest of them; 0 unless found */
  size_t samples;   /* out: matching samples, non-finite ones included */
  bool found;       /* out: samples > 0, every value finite and the sum finite */
  bool nonfinite;   /* out: a matching value was NaN or +-Inf, or the sum overflowed */
} ob_prom_want_t;

/* Options of ob_prom_parse; NULL means all zero. */
typedef struct ob_prom_opts {
  /* When label_name is set, only samples that carry label label_name with
   * exactly the value label_value (after unescaping) count towards a want:
   * e.g. "model_name" and the model an upstream serves. Both borrowed for
   * the call, NUL-terminated (label_value NULL is ""); a label_name that no
   * label can have matches nothing. */
  const char *label_name;
  const char *label_value;
  /* Sample lines accepted (wanted or not) before the text is refused as too
   * large; 0 means OB_PROM_MAX_SAMPLES. */
  size_t max_samples;
} ob_prom_opts_t;

/*
 * Read text[0..len) (not NUL-terminated; nothing past len is read; text may
 * be NULL when len is 0) and fill want[0..n_want) (caller's array, borrowed
 * for the call). opts: borrowed for the call, may be NULL.
 *
 * Returns 0 when the whole text is well-formed. Otherwise the whole scrape
 * is to be ignored, and every want is left reset (not found): a malformed
 * line is OB_ERR_BAD_RESPONSE; a line above OB_PROM_MAX_LINE, a sample with
 * more than OB_PROM_MAX_LABELS labels, a value token above
 * OB_PROM_MAX_VALUE bytes or more than max_samples samples is
 * OB_ERR_TOO_LARGE. On error *why (static text) says what was wrong and
 * *err_line (when err_line is not NULL) which line, counted from 1; both are
 * left alone on success.
 */
int ob_prom_parse(const char *text, size_t len, const ob_prom_opts_t *opts, ob_prom_want_t *want, size_t n_want,
                  size_t *err_line, const char **why);

/* ---------------------------------------------------------------- checks */

/* RFC 9110 token characters (field names, methods). */
bool ob_http_is_token(ob_iov_t v);
/* A field value free of CR, LF, NUL and other control characters except HTAB. */
bool ob_http_is_valid_value(ob_iov_t v);
/* A non-empty request target of visible ASCII only (0x21-0x7E): the rule the
 * HTTP/1.1 parser applies, for HTTP/2's :path too, so a target no HTTP/1.1
 * client could send cannot come in over HTTP/2 either. */
bool ob_http_is_valid_target(ob_iov_t v);

#endif /* OB_HTTP_H */
