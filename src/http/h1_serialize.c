/*
 * h1_serialize.c: writing HTTP/1.1 heads (RFC 9112) into an ob_buf_t, and the
 * standard reason phrases. Owns nothing but the bytes it appends.
 *
 * These functions do not validate: callers pass method, target, names and
 * values that came out of a parser (h1 or h2, both of which validate) or from
 * configuration checked at load time. What is written is always HTTP/1.1,
 * whatever version the peer on the other side spoke.
 */
#include "http.h"

/* memcpy of an ob_iov_t that may be {NULL, 0}, which memcpy itself may not get. */
static inline char *put(char *p, ob_iov_t v) {
  if (v.len) memcpy(p, v.base, v.len);
  return p + v.len;
}

void ob_h1_append_request_line(ob_buf_t *out, ob_iov_t method, ob_iov_t target) {
  char *p = ob_buf_reserve(out, method.len + target.len + 12);
  p = put(p, method);
  *p++ = ' ';
  p = put(p, target);
  memcpy(p, " HTTP/1.1\r\n", 11);
  out->len += method.len + target.len + 12;
}

void ob_h1_append_status_line(ob_buf_t *out, int status) {
  if (status < 100 || status > 999) status = 500; /* never write a status line a peer cannot parse */
  const char *reason = ob_http_reason(status);
  size_t rlen = strlen(reason);
  char *p = ob_buf_reserve(out, 13 + rlen + 2);
  memcpy(p, "HTTP/1.1 ", 9);
  p[9] = (char)('0' + status / 100);
  p[10] = (char)('0' + status / 10 % 10);
  p[11] = (char)('0' + status % 10);
  p[12] = ' ';
  memcpy(p + 13, reason, rlen);
  memcpy(p + 13 + rlen, "\r\n", 2);
  out->len += 13 + rlen + 2;
}

void ob_h1_append_header(ob_buf_t *out, ob_iov_t name, ob_iov_t value) {
  char *p = ob_buf_reserve(out, name.len + value.len + 4);
  p = put(p, name);
  *p++ = ':';
  *p++ = ' ';
  p = put(p, value);
  *p++ = '\r';
  *p = '\n';
  out->len += name.len + value.len + 4;
}

/* RFC 9110 15, plus 429 (RFC 6585) and 431 (RFC 6585) that an edge proxy
 * sends itself, and 103 (RFC 8297) that upstreams send. */
const char *ob_http_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 103: return "Early Hints";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 203: return "Non-Authoritative Information";
  case 204: return "No Content";
  case 205: return "Reset Content";
  case 206: return "Partial Content";
  case 300: return "Multiple Choices";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 305: return "Use Proxy";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 402: return "Payment Required";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 406: return "Not Acceptable";
  case 407: return "Proxy Authentication Required";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 412: return "Precondition Failed";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 416: return "Range Not Satisfiable";
  case 417: return "Expectation Failed";
  case 421: return "Misdirected Request";
  case 422: return "Unprocessable Content";
  case 426: return "Upgrade Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}
