/*
 * http_error.c: the body of every error the gateway answers by itself. One
 * function so the client side (before a request exists) and the proxy (after
 * routing) produce the same shape that OpenAI SDKs parse.
 */
#include "http.h"

static void defaults(int status, const char **type, const char **code) {
  const char *t = "server_error", *c = "internal_error";
  switch (status) {
  case 400: t = "invalid_request_error", c = "bad_request"; break;
  case 401: t = "authentication_error", c = "invalid_api_key"; break;
  case 403: t = "permission_error", c = "forbidden"; break;
  case 404: t = "not_found_error", c = "not_found"; break;
  case 405: t = "invalid_request_error", c = "method_not_allowed"; break;
  case 408: t = "invalid_request_error", c = "request_timeout"; break;
  case 413: t = "invalid_request_error", c = "request_too_large"; break;
  case 429: t = "rate_limit_error", c = "rate_limit_exceeded"; break;
  case 431: t = "invalid_request_error", c = "headers_too_large"; break;
  case 501: t = "invalid_request_error", c = "not_implemented"; break;
  case 502: t = "server_error", c = "bad_gateway"; break;
  case 503: t = "server_error", c = "service_unavailable"; break;
  case 504: t = "server_error", c = "gateway_timeout"; break;
  default: break;
  }
  if (!*type) *type = t;
  if (!*code) *code = c;
}

void ob_http_error_json(ob_buf_t *out, int status, const char *message, const char *type, const char *code) {
  defaults(status, &type, &code);
  ob_buf_append_str(out, "{\"error\":{\"message\":");
  ob_buf_append_json_str(out, ob_iov_str(message ? message : ob_http_reason(status)));
  ob_buf_append_str(out, ",\"type\":");
  ob_buf_append_json_str(out, ob_iov_str(type));
  ob_buf_append_str(out, ",\"param\":null,\"code\":");
  ob_buf_append_json_str(out, ob_iov_str(code));
  ob_buf_append_str(out, "}}\n");
}
