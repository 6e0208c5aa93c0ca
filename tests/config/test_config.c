/*
 * Unit tests for src/config: a full valid file, defaults, relative paths,
 * IPv6, every error form with its exact JSON path, several errors at once,
 * unknown and repeated keys, cross references, reference counting, lookups
 * and ob_config_load against real files in a temporary folder. Groups,
 * tenants and their keys (digests and plain secrets), admission, upstream
 * credentials, route cost and token budgets have their own sections.
 */
#include "config.h"
#include "tap.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define BASE_DIR "/srv/obleth"

/* Building blocks for small variants of a valid file. */
#define LISTENERS "\"listeners\": [{\"address\": \"127.0.0.1:8080\"}]"
#define UPSTREAMS "\"upstreams\": [{\"name\": \"a\", \"endpoints\": [\"http://127.0.0.1:9000\"]}]"
#define MINIMAL "{" LISTENERS ", " UPSTREAMS "}"

static ob_config_t *parse(const char *json, ob_config_errors_t *errs) {
  return ob_config_parse(json, strlen(json), BASE_DIR, errs);
}

static void dump_errs(const ob_config_errors_t *e) {
  for (size_t i = 0; i < e->len; i++) printf("#   error[%zu]: %s\n", i, e->items[i]);
}

/* Parsing json must fail with exactly the lines in want, in that order. */
static void expect_errs(const char *name, const char *json, const char *const *want, size_t nwant) {
  ob_config_errors_t e = {0};
  ob_config_t *c = parse(json, &e);
  bool ok = c == NULL && e.len == nwant;
  for (size_t i = 0; ok && i < nwant; i++) ok = strcmp(e.items[i], want[i]) == 0;
  TAP_CHECK(ok, "%s", name);
  if (!ok) {
    for (size_t i = 0; i < nwant; i++) printf("#   want[%zu]: %s\n", i, want[i]);
    dump_errs(&e);
  }
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);
}

#define EXPECT_ERRS(name, json, ...)                                                    \
  expect_errs(name, json, (const char *const[]){__VA_ARGS__},                           \
              sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))

/* A config wrapping one extra top-level member after the minimal ones. */
#define WITH(extra) "{" LISTENERS ", " UPSTREAMS ", " extra "}"

static const char full_config[] =
    "{\n"
    "  \"listeners\": [\n"
    "    {\"address\": \"0.0.0.0:8080\"},\n"
    "    {\"address\": \"[::1]:8443\", \"tls\": {\"cert\": \"certs/server.pem\", \"key\": \"/etc/ssl/server.key\"}}\n"
    "  ],\n"
    "  \"upstreams\": [\n"
    "    {\"name\": \"vllm-1\", \"endpoints\": [\"http://10.0.0.5:8000/v1/\", \"http://[fd00::7]/\"],\n"
    "     \"protocol\": \"h2c\", \"max_inflight\": 64, \"tls_verify\": false, \"tls_ca\": \"ca/bundle.pem\"},\n"
    "    {\"name\": \"openai\", \"endpoints\": [\"https://api.openai.com\"]},\n"
    "    {\"name\": \"legacy\", \"endpoints\": [\"https://old.example:8443/base/path\"], \"protocol\": \"http1\"}\n"
    "  ],\n"
    "  \"routes\": [\n"
    "    {\"prefix\": \"/v1/\", \"class\": \"inference\"},\n"
    "    {\"prefix\": \"/openai/\", \"class\": \"inference\", \"upstream\": \"openai\", \"rewrite\": \"/v1/\"},\n"
    "    {\"prefix\": \"/health\", \"class\": \"passthrough\", \"upstream\": \"vllm-1\"}\n"
    "  ],\n"
    "  \"models\": [\n"
    "    {\"name\": \"llama-3-8b\", \"upstream\": \"vllm-1\", \"upstream_model\": \"meta-llama/Meta-Llama-3-8B\"},\n"
    "    {\"name\": \"gpt-4o\", \"upstream\": \"openai\"}\n"
    "  ],\n"
    "  \"limits\": {\"max_body_bytes\": 1048576, \"max_header_bytes\": 32768, \"max_connections\": 500,\n"
    "             \"max_concurrent_streams\": 100, \"stream_window_bytes\": 65536, \"max_client_resets\": 50},\n"
    "  \"timeouts\": {\"connect_ms\": 1000, \"first_byte_ms\": 2000, \"idle_ms\": 3000, \"client_header_ms\": 4000,\n"
    "               \"keepalive_ms\": 5000, \"upstream_keepalive_ms\": 6000, \"backoff_ms\": 7000, \"grace_ms\": 8000,\n"
    "               \"client_body_ms\": 9000},\n"
    "  \"log_level\": \"debug\",\n"
    "  \"workers\": 4\n"
    "}\n";

static void test_full(void) {
  ob_config_errors_t e = {0};
  ob_config_t *c = parse(full_config, &e);
  TAP_CHECK(c != NULL && e.len == 0, "full config parses");
  if (!c) {
    dump_errs(&e);
    ob_config_errors_dispose(&e);
    return;
  }
  TAP_EQ_INT(c->refs, 1, "new snapshot has one reference");
  TAP_EQ_STR(c->dir, BASE_DIR, "dir is base_dir");
  TAP_CHECK(c->path == NULL, "parse leaves path NULL");

  TAP_EQ_INT(c->net.num_listeners, 2, "two listeners");
  TAP_EQ_STR(c->net.listeners[0].host, "0.0.0.0", "listener 0 host");
  TAP_EQ_INT(c->net.listeners[0].port, 8080, "listener 0 port");
  TAP_CHECK(!c->net.listeners[0].tls && !c->net.listeners[0].tls_cert && !c->net.listeners[0].tls_key, "listener 0 cleartext");
  TAP_EQ_STR(c->net.listeners[1].address, "[::1]:8443", "IPv6 listener address as written");
  TAP_EQ_STR(c->net.listeners[1].host, "::1", "IPv6 listener host without brackets");
  TAP_EQ_INT(c->net.listeners[1].port, 8443, "IPv6 listener port");
  TAP_CHECK(c->net.listeners[1].tls, "listener 1 tls");
  TAP_EQ_STR(c->net.listeners[1].tls_cert, BASE_DIR "/certs/server.pem", "relative cert joined to base_dir");
  TAP_EQ_STR(c->net.listeners[1].tls_key, "/etc/ssl/server.key", "absolute key kept");

  TAP_EQ_INT(c->num_upstreams, 3, "three upstreams");
  const ob_config_upstream_t *u = &c->upstreams[0];
  TAP_EQ_STR(u->name, "vllm-1", "upstream 0 name");
  TAP_EQ_INT(u->protocol, OB_PROTO_H2C, "explicit h2c");
  TAP_EQ_INT(u->max_inflight, 64, "max_inflight");
  TAP_CHECK(!u->tls_verify, "tls_verify false");
  TAP_EQ_STR(u->tls_ca, BASE_DIR "/ca/bundle.pem", "relative tls_ca joined");
  TAP_EQ_INT(u->num_endpoints, 2, "two endpoints");
  TAP_EQ_STR(u->endpoints[0].url, "http://10.0.0.5:8000/v1/", "endpoint url as written");
  TAP_EQ_STR(u->endpoints[0].host, "10.0.0.5", "endpoint host");
  TAP_EQ_INT(u->endpoints[0].port, 8000, "endpoint explicit port");
  TAP_EQ_STR(u->endpoints[0].authority, "10.0.0.5:8000", "endpoint authority");
  TAP_EQ_STR(u->endpoints[0].base_path, "/v1", "base_path without trailing slash");
  TAP_CHECK(!u->endpoints[0].tls, "http endpoint is cleartext");
  TAP_EQ_STR(u->endpoints[1].host, "fd00::7", "IPv6 endpoint host without brackets");
  TAP_EQ_INT(u->endpoints[1].port, 80, "http default port 80");
  TAP_EQ_STR(u->endpoints[1].authority, "[fd00::7]:80", "IPv6 authority bracketed");
  TAP_EQ_STR(u->endpoints[1].base_path, "", "\"/\" path gives empty base_path");

  u = &c->upstreams[1];
  TAP_EQ_INT(u->protocol, OB_PROTO_H2, "https defaults to h2");
  TAP_CHECK(u->tls_verify, "tls_verify defaults to true");
  TAP_CHECK(u->tls_ca == NULL, "tls_ca defaults to NULL");
  TAP_EQ_INT(u->max_inflight, 0, "max_inflight defaults to 0");
  TAP_EQ_INT(u->endpoints[0].port, 443, "https default port 443");
  TAP_EQ_STR(u->endpoints[0].authority, "api.openai.com:443", "authority carries the default port");
  TAP_CHECK(u->endpoints[0].tls, "https endpoint is tls");
  u = &c->upstreams[2];
  TAP_EQ_INT(u->protocol, OB_PROTO_HTTP1, "http1 over https allowed");
  TAP_EQ_STR(u->endpoints[0].base_path, "/base/path", "multi-segment base_path");

  TAP_EQ_INT(c->num_routes, 3, "three routes");
  TAP_EQ_STR(c->routes[0].class_name, "inference", "route 0 class");
  TAP_CHECK(c->routes[0].upstream == NULL && c->routes[0].rewrite == NULL, "inference route without upstream");
  TAP_EQ_STR(c->routes[1].upstream, "openai", "route 1 upstream");
  TAP_EQ_STR(c->routes[1].rewrite, "/v1/", "route 1 rewrite");
  TAP_EQ_STR(c->routes[2].class_name, "passthrough", "route 2 class");

  TAP_EQ_INT(c->num_models, 2, "two models");
  TAP_EQ_STR(c->models[0].upstream_model, "meta-llama/Meta-Llama-3-8B", "upstream_model");
  TAP_CHECK(c->models[1].upstream_model == NULL, "upstream_model defaults to NULL");

  TAP_CHECK(c->net.limits.max_body_bytes == 1048576 && c->net.limits.max_header_bytes == 32768 &&
                c->net.limits.max_connections == 500 && c->net.limits.max_concurrent_streams == 100 &&
                c->net.limits.stream_window_bytes == 65536 && c->net.limits.max_client_resets == 50,
            "every limit read");
  const ob_config_timeouts_t *t = &c->net.timeouts;
  TAP_CHECK(t->connect_ms == 1000 && t->first_byte_ms == 2000 && t->idle_ms == 3000 && t->client_header_ms == 4000 &&
                t->keepalive_ms == 5000 && t->upstream_keepalive_ms == 6000 && t->backoff_ms == 7000 &&
                t->grace_ms == 8000 && t->client_body_ms == 9000,
            "every timeout read");
  TAP_EQ_STR(c->log_level, "debug", "log_level read");
  TAP_EQ_INT(c->net.workers, 4, "workers read");

  TAP_CHECK(ob_config_find_upstream(c, "openai") == &c->upstreams[1], "find_upstream finds by name");
  TAP_CHECK(ob_config_find_upstream(c, "nope") == NULL, "find_upstream NULL when absent");
  TAP_CHECK(ob_config_find_upstream(c, NULL) == NULL && ob_config_find_upstream(NULL, "a") == NULL,
            "find_upstream NULL-safe");

  ob_config_t *again = ob_config_acquire(c);
  TAP_CHECK(again == c && c->refs == 2, "acquire counts");
  ob_config_release(c);
  TAP_EQ_INT(c->refs, 1, "release drops one");
  ob_config_destroy(c); /* last reference: LSan would report anything left */
  ob_config_release(NULL);
  ob_config_errors_dispose(&e);
}

static void test_defaults(void) {
  ob_config_errors_t e = {0};
  ob_config_t *c = parse(MINIMAL, &e);
  TAP_CHECK(c && e.len == 0, "minimal config parses");
  if (!c) return;
  TAP_CHECK(c->net.limits.max_body_bytes == 16777216 && c->net.limits.max_header_bytes == 65536 &&
                c->net.limits.max_connections == 10000 && c->net.limits.max_concurrent_streams == 128 &&
                c->net.limits.stream_window_bytes == 262144 && c->net.limits.max_client_resets == 1000,
            "limit defaults");
  const ob_config_timeouts_t *t = &c->net.timeouts;
  TAP_CHECK(t->connect_ms == 5000 && t->first_byte_ms == 300000 && t->idle_ms == 60000 && t->client_header_ms == 10000 &&
                t->keepalive_ms == 75000 && t->upstream_keepalive_ms == 30000 && t->backoff_ms == 2000 &&
                t->grace_ms == 30000 && t->client_body_ms == 60000,
            "timeout defaults");
  TAP_EQ_STR(c->log_level, "info", "log_level default");
  TAP_EQ_INT(c->net.workers, 1, "workers default");
  TAP_CHECK(c->num_routes == 0 && c->routes == NULL && c->num_models == 0, "routes and models optional");
  TAP_EQ_INT(c->upstreams[0].protocol, OB_PROTO_HTTP1, "http:// defaults to http1");
  ob_config_destroy(c);

  /* Partial objects keep the defaults of the keys they leave out. */
  c = parse(WITH("\"limits\": {\"max_body_bytes\": 0}, \"timeouts\": {\"grace_ms\": 1}"), &e);
  TAP_CHECK(c && c->net.limits.max_body_bytes == 0 && c->net.limits.max_header_bytes == 65536 && c->net.timeouts.grace_ms == 1 &&
                c->net.timeouts.connect_ms == 5000,
            "partial limits/timeouts keep other defaults");
  ob_config_destroy(c);

  /* Integral spellings of integers, the largest values, a BOM, empty routes. */
  c = parse("\xEF\xBB\xBF{" LISTENERS ", " UPSTREAMS ", \"routes\": [], \"limits\": {\"max_body_bytes\": 9007199254740992, "
            "\"max_concurrent_streams\": 2147483647, \"max_header_bytes\": 2e3}, \"timeouts\": {\"idle_ms\": 4294967295, "
            "\"connect_ms\": 5.0}}",
            &e);
  TAP_CHECK(c && c->net.limits.max_body_bytes == 9007199254740992ULL && c->net.limits.max_concurrent_streams == 2147483647 &&
                c->net.timeouts.idle_ms == 4294967295u && c->net.timeouts.connect_ms == 5,
            "range edges, 5.0 and a BOM accepted");
  if (!c) dump_errs(&e);
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  /* Without a base_dir relative paths stay as written, dir is ".". */
  const char *json = "{\"listeners\": [{\"address\": \"[::]:0\", \"tls\": {\"cert\": \"a.pem\", \"key\": \"k/b.pem\"}}], "
                     "\"upstreams\": []}";
  c = ob_config_parse(json, strlen(json), NULL, &e);
  TAP_CHECK(c && strcmp(c->net.listeners[0].tls_cert, "a.pem") == 0 && strcmp(c->dir, ".") == 0, "NULL base_dir");
  TAP_CHECK(c && c->net.listeners[0].port == 0 && strcmp(c->net.listeners[0].host, "::") == 0, "[::]:0 ephemeral");
  ob_config_destroy(c);
  c = ob_config_parse(json, strlen(json), "/etc/obleth/", &e);
  TAP_EQ_STR(c ? c->net.listeners[0].tls_key : NULL, "/etc/obleth/k/b.pem", "base_dir with trailing slash joins once");
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  /* A route may come before the upstreams it names. */
  c = parse("{\"routes\": [{\"prefix\": \"/p\", \"class\": \"passthrough\", \"upstream\": \"a\"}], " LISTENERS
            ", " UPSTREAMS "}",
            &e);
  TAP_CHECK(c && strcmp(c->routes[0].upstream, "a") == 0, "forward reference to an upstream");
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  /* Mixed schemes without "protocol" default to http1. */
  c = parse("{" LISTENERS ", \"upstreams\": [{\"name\": \"m\", \"endpoints\": [\"https://a\", \"http://b\"]}]}", &e);
  TAP_CHECK(c && c->upstreams[0].protocol == OB_PROTO_HTTP1, "mixed schemes default to http1");
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);
}

static void test_json_errors(void) {
  EXPECT_ERRS("syntax error position", "{\"listeners\": [}", "$: invalid JSON near byte 15");
  EXPECT_ERRS("empty input", "", "$: invalid JSON near byte 0");
  EXPECT_ERRS("trailing text", "{}  x", "$: invalid JSON near byte 4");
  EXPECT_ERRS("top level not an object", "[1, 2]", "$: expected a JSON object");
  EXPECT_ERRS("raw control character in a string", "{\"a\": \"x\ty\"}", "$: invalid JSON near byte 8");
  EXPECT_ERRS("\\u0000 escape refused", "{\"a\\u0000b\": 1}", "$: unsupported \\u0000 escape near byte 3");

  ob_config_errors_t e = {0};
  static const char nul[] = "{\"a\": \"x\0y\"}";
  ob_config_t *c = ob_config_parse(nul, sizeof nul - 1, BASE_DIR, &e);
  TAP_CHECK(!c && e.len == 1 && strcmp(e.items[0], "$: invalid JSON near byte 8") == 0, "NUL byte refused");
  ob_config_errors_dispose(&e);

  /* Errors are appended after what the list already holds. */
  parse("[]", &e);
  parse("{}", &e);
  TAP_CHECK(e.len == 3 && strcmp(e.items[0], "$: expected a JSON object") == 0 &&
                strcmp(e.items[2], "$: missing required key \"upstreams\"") == 0,
            "errors appended across calls");
  ob_config_errors_dispose(&e);
  TAP_CHECK(e.items == NULL && e.len == 0, "dispose empties the list");
  TAP_CHECK(parse("{}", NULL) == NULL, "NULL error list tolerated");
}

static void test_listener_errors(void) {
  EXPECT_ERRS("listeners missing", "{" UPSTREAMS "}", "$: missing required key \"listeners\"");
  EXPECT_ERRS("listeners empty", "{\"listeners\": [], " UPSTREAMS "}", "listeners: expected a non-empty array");
  EXPECT_ERRS("listener not an object", "{\"listeners\": [1], " UPSTREAMS "}", "listeners[0]: expected an object");
  EXPECT_ERRS("address type", "{\"listeners\": [{\"address\": 8080}], " UPSTREAMS "}",
              "listeners[0].address: expected a string");
  EXPECT_ERRS("x_forwarded_for", "{\"listeners\": [{\"address\": \"127.0.0.1:1\", \"x_forwarded_for\": \"trust\"}], " UPSTREAMS "}",
              "listeners[0].x_forwarded_for: expected \"append\" or \"replace\"");
  EXPECT_ERRS("address missing", "{\"listeners\": [{}], " UPSTREAMS "}",
              "listeners[0]: missing required key \"address\"");
  EXPECT_ERRS("address without port", "{\"listeners\": [{\"address\": \"localhost\"}], " UPSTREAMS "}",
              "listeners[0].address: invalid address \"localhost\" (missing port; expected HOST:PORT)");
  EXPECT_ERRS("port out of range", "{\"listeners\": [{\"address\": \"a:65536\"}], " UPSTREAMS "}",
              "listeners[0].address: invalid address \"a:65536\" (port must be 0..65535)");
  EXPECT_ERRS("bare IPv6", "{\"listeners\": [{\"address\": \"::1:80\"}], " UPSTREAMS "}",
              "listeners[0].address: invalid address \"::1:80\" (IPv6 addresses need brackets, as in [::1]:8080)");
  EXPECT_ERRS("bad IPv6 and bad IPv4",
              "{\"listeners\": [{\"address\": \"[::g]:80\"}, {\"address\": \"300.1.1.1:80\"}], " UPSTREAMS "}",
              "listeners[0].address: invalid address \"[::g]:80\" (bad IPv6 address)",
              "listeners[1].address: invalid address \"300.1.1.1:80\" (bad IPv4 address)");
  EXPECT_ERRS("tls incomplete and unknown key",
              "{\"listeners\": [{\"address\": \"a:1\", \"tls\": {\"cert\": \"c\", \"crt\": \"x\"}}], " UPSTREAMS "}",
              "listeners[0].tls.crt: unknown key", "listeners[0].tls: missing required key \"key\"");
  EXPECT_ERRS("tls not an object / empty path",
              "{\"listeners\": [{\"address\": \"a:1\", \"tls\": true}, {\"address\": \"a:2\", \"tls\": {\"cert\": \"\", "
              "\"key\": \"k\"}}], " UPSTREAMS "}",
              "listeners[0].tls: expected an object", "listeners[1].tls.cert: must not be empty");
  EXPECT_ERRS("unknown listener key", "{\"listeners\": [{\"address\": \"a:1\", \"port\": 1}], " UPSTREAMS "}",
              "listeners[0].port: unknown key");
}

static void test_upstream_errors(void) {
  EXPECT_ERRS("upstreams missing", "{" LISTENERS "}", "$: missing required key \"upstreams\"");
  EXPECT_ERRS("upstreams not an array", "{" LISTENERS ", \"upstreams\": {}}", "upstreams: expected an array");
  EXPECT_ERRS("bad endpoint URLs",
              "{" LISTENERS ", \"upstreams\": [{\"name\": \"a\", \"endpoints\": [\"http://ok\", \"ftp://x\", "
              "\"http://u:p@h\", \"http://h/?q\", \"https://h#f\", \"http://h:0\", \"http://\", \"localhost:80\", "
              "\"http://h/a b\", 5]}]}",
              "upstreams[0].endpoints[1]: not an http:// or https:// URL",
              "upstreams[0].endpoints[2]: not an http:// or https:// URL",
              "upstreams[0].endpoints[3]: not an http:// or https:// URL",
              "upstreams[0].endpoints[4]: not an http:// or https:// URL",
              "upstreams[0].endpoints[5]: not an http:// or https:// URL",
              "upstreams[0].endpoints[6]: not an http:// or https:// URL",
              "upstreams[0].endpoints[7]: not an http:// or https:// URL",
              "upstreams[0].endpoints[8]: not an http:// or https:// URL",
              "upstreams[0].endpoints[9]: expected a string");
  EXPECT_ERRS("endpoints missing / empty",
              "{" LISTENERS ", \"upstreams\": [{\"name\": \"a\"}, {\"name\": \"b\", \"endpoints\": []}]}",
              "upstreams[0]: missing required key \"endpoints\"", "upstreams[1].endpoints: expected a non-empty array");
  EXPECT_ERRS("duplicate and invalid names",
              "{" LISTENERS ", \"upstreams\": [{\"name\": \"a\", \"endpoints\": [\"http://h\"]}, "
              "{\"name\": \"a\", \"endpoints\": [\"http://h\"]}, {\"name\": \"a b\", \"endpoints\": [\"http://h\"]}, "
              "{\"name\": \"\", \"endpoints\": [\"http://h\"]}]}",
              "upstreams[1].name: duplicate upstream name \"a\"",
              "upstreams[2].name: invalid name \"a b\" (use letters, digits, \"_\", \".\" and \"-\")",
              "upstreams[3].name: must not be empty");
  EXPECT_ERRS("protocol / scheme mismatch",
              "{" LISTENERS ", \"upstreams\": [{\"name\": \"a\", \"protocol\": \"h2\", \"endpoints\": [\"https://h\", "
              "\"http://h\"]}, {\"name\": \"b\", \"endpoints\": [\"https://h\"], \"protocol\": \"h2c\"}]}",
              "upstreams[0].endpoints[1]: protocol \"h2\" needs an https:// URL",
              "upstreams[1].endpoints[0]: protocol \"h2c\" needs an http:// URL");
  EXPECT_ERRS("bad protocol, tls_verify, max_inflight, tls_ca",
              "{" LISTENERS ", \"upstreams\": [{\"name\": \"a\", \"endpoints\": [\"http://h\"], \"protocol\": \"h3\", "
              "\"tls_verify\": \"yes\", \"max_inflight\": -1, \"tls_ca\": 7, \"weight\": 1}]}",
              "upstreams[0].protocol: expected \"http1\", \"h2c\" or \"h2\"",
              "upstreams[0].tls_verify: expected true or false",
              "upstreams[0].max_inflight: expected a non-negative integer", "upstreams[0].tls_ca: expected a string",
              "upstreams[0].weight: unknown key");

  /* "auto" endpoints travel to the fleet in one call: bounded */
  char json[16384];
  int n = snprintf(json, sizeof json, "{" LISTENERS ", \"upstreams\": [{\"name\": \"a\", \"max_inflight\": \"auto\", \"endpoints\": [");
  for (int i = 0; i < OB_CONFIG_AUTO_ENDPOINTS_MAX + 1; i++)
    n += snprintf(json + n, sizeof json - (size_t)n, "%s\"http://h%d\"", i ? "," : "", i);
  snprintf(json + n, sizeof json - (size_t)n, "]}]}");
  EXPECT_ERRS("too many endpoints with max_inflight auto", json,
              "upstreams[0].endpoints: at most 256 endpoints with \"max_inflight\": \"auto\"");
}

static void test_grpc_keys(void) {
  EXPECT_ERRS("grpc route on an http1 upstream",
              WITH("\"routes\": [{\"prefix\": \"/p.S/\", \"class\": \"grpc\", \"upstream\": \"a\"}]"),
              "routes[0].upstream: a grpc route needs an h2c or h2 upstream; \"a\" speaks http1");
  EXPECT_ERRS("grpc route without upstream", WITH("\"routes\": [{\"prefix\": \"/p.S/\", \"class\": \"grpc\"}]"),
              "routes[0]: missing required key \"upstream\"");
  EXPECT_ERRS("route tenants: unknown name and wrong type",
              WITH("\"tenants\": [{\"name\": \"t\", \"keys\": [{\"id\": \"k\", \"secret\": \"s\"}]}], "
                   "\"routes\": [{\"prefix\": \"/a\", \"class\": \"inference\", \"tenants\": [\"t\", \"u\", 3]}, "
                   "{\"prefix\": \"/b\", \"class\": \"inference\", \"tenants\": \"t\"}]"),
              "routes[0].tenants[1]: no tenant named \"u\"", "routes[0].tenants[2]: expected a string",
              "routes[1].tenants: expected an array of tenant names");
  EXPECT_ERRS("grpc object", WITH("\"grpc\": {\"health\": 1, \"other\": true}"), "grpc.health: expected true or false",
              "grpc.other: unknown key");
  ob_config_errors_t e = {0};
  ob_config_t *c = parse("{" LISTENERS ", \"upstreams\": [{\"name\": \"g\", \"endpoints\": [\"http://127.0.0.1:9\"], "
                         "\"protocol\": \"h2c\"}], \"tenants\": [{\"name\": \"t\", \"keys\": [{\"id\": \"k\", "
                         "\"secret\": \"s\"}]}], \"routes\": [{\"prefix\": \"/p.S/\", \"class\": \"grpc\", \"upstream\": "
                         "\"g\", \"tenants\": [\"t\"]}], \"grpc\": {\"health\": true}}",
                         &e);
  TAP_CHECK(c && c->grpc_health && c->routes[0].has_tenants && c->routes[0].num_tenants == 1 &&
                strcmp(c->routes[0].tenants[0], "t") == 0,
            "grpc route, route tenants and grpc.health parsed");
  if (!c) dump_errs(&e);
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);
}

static void test_cache_keys(void) {
  ob_config_errors_t e = {0};
  ob_config_t *c = parse(WITH("\"cache\": {\"path\": \"c.mdb\", \"ttl_s\": 60, \"exclude_fields\": [\"trace\"]}, "
                              "\"routes\": [{\"prefix\": \"/a\", \"class\": \"inference\", \"cache\": {\"scope\": \"group\", "
                              "\"ttl_s\": 5}}, {\"prefix\": \"/b\", \"class\": \"inference\", \"cache\": false}, "
                              "{\"prefix\": \"/c\", \"class\": \"inference\"}]"),
                         &e);
  TAP_CHECK(c && c->cache.enabled && c->cache.ttl_s == 60 && c->cache.max_bytes == (1u << 30) &&
                c->cache.max_entry_bytes == (8u << 20) && strcmp(c->cache.path, BASE_DIR "/c.mdb") == 0 &&
                c->cache.num_exclude_fields == 1 && c->routes[0].cache == 1 && c->routes[0].cache_ttl_s == 5 &&
                strcmp(c->routes[0].cache_scope, "group") == 0 && c->routes[1].cache == 0 && c->routes[2].cache == -1,
            "cache block with defaults, path resolved, route cache object / false / absent");
  if (!c) dump_errs(&e);
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);
  EXPECT_ERRS("cache errors",
              WITH("\"cache\": {\"max_bytes\": 10, \"deterministic_only\": 1, \"size\": 3}, \"routes\": [{\"prefix\": \"/a\", "
                   "\"class\": \"inference\", \"cache\": {\"scope\": \"world\"}}, {\"prefix\": \"/b\", \"class\": "
                   "\"inference\", \"cache\": 1}]"),
              "cache.max_bytes: expected an integer >= 1048576", "cache.deterministic_only: expected true or false",
              "cache.size: unknown key", "routes[0].cache.scope: expected \"tenant\", \"group\" or \"global\"",
              "routes[1].cache: expected true, false or an object");
}

static void test_route_model_errors(void) {
  EXPECT_ERRS("unknown route class",
              WITH("\"routes\": [{\"prefix\": \"/a\", \"class\": \"inference\"}, {\"prefix\": \"/b\", \"class\": "
                   "\"inference\"}, {\"prefix\": \"/c\", \"class\": \"foo\"}]"),
              "routes[2].class: unknown route class \"foo\" (expected inference, passthrough, grpc or mcp)");
  EXPECT_ERRS("unknown upstream name", WITH("\"routes\": [{\"prefix\": \"/a\", \"class\": \"inference\", \"upstream\": \"x\"}]"),
              "routes[0].upstream: no upstream named \"x\"");
  EXPECT_ERRS("duplicate prefix",
              WITH("\"routes\": [{\"prefix\": \"/v1\", \"class\": \"inference\"}, {\"prefix\": \"/v1\", \"class\": "
                   "\"inference\"}]"),
              "routes[1].prefix: duplicate prefix \"/v1\"");
  EXPECT_ERRS("prefix/rewrite must start with /, passthrough needs upstream",
              WITH("\"routes\": [{\"prefix\": \"v1\", \"class\": \"passthrough\", \"rewrite\": \"x\"}]"),
              "routes[0].prefix: must start with \"/\"", "routes[0].rewrite: must start with \"/\"",
              "routes[0]: missing required key \"upstream\"");
  EXPECT_ERRS("route missing keys, unknown key", WITH("\"routes\": [{\"path\": \"/\"}]"), "routes[0].path: unknown key",
              "routes[0]: missing required key \"prefix\"", "routes[0]: missing required key \"class\"");
  EXPECT_ERRS("model errors",
              WITH("\"models\": [{\"name\": \"m\", \"upstream\": \"a\"}, {\"name\": \"m\", \"upstream\": \"nope\", "
                   "\"upstream_model\": \"\"}, {\"name\": \"n\", \"alias\": 1}]"),
              "models[1].name: duplicate model name \"m\"", "models[1].upstream: no upstream named \"nope\"",
              "models[1].upstream_model: must not be empty", "models[2].alias: unknown key",
              "models[2]: missing required key \"upstream\"");
}

static void test_scalar_errors(void) {
  EXPECT_ERRS("max_body_bytes negative", WITH("\"limits\": {\"max_body_bytes\": -1}"),
              "limits.max_body_bytes: expected a non-negative integer");
  EXPECT_ERRS("integer kinds",
              WITH("\"limits\": {\"max_body_bytes\": 1.5, \"max_header_bytes\": 100, \"max_connections\": \"10\", "
                   "\"max_concurrent_streams\": 2147483648, \"stream_window_bytes\": 1e400, \"extra\": 1}"),
              "limits.max_body_bytes: expected a non-negative integer",
              "limits.max_header_bytes: expected an integer >= 1024",
              "limits.max_connections: expected a positive integer",
              "limits.max_concurrent_streams: expected a positive integer no larger than 2147483647",
              "limits.stream_window_bytes: expected an integer >= 16384 no larger than 2147483647",
              "limits.extra: unknown key");
  EXPECT_ERRS("max_body_bytes above 2^53", WITH("\"limits\": {\"max_body_bytes\": 9007199254740993e3}"),
              "limits.max_body_bytes: expected a non-negative integer no larger than 9007199254740992");
  EXPECT_ERRS("timeouts", WITH("\"timeouts\": {\"connect_ms\": 0, \"idle_ms\": 4294967296, \"read_ms\": 5}"),
              "timeouts.connect_ms: expected a positive integer",
              "timeouts.idle_ms: expected a positive integer no larger than 4294967295", "timeouts.read_ms: unknown key");
  EXPECT_ERRS("limits/timeouts not objects", WITH("\"limits\": [], \"timeouts\": null"), "limits: expected an object",
              "timeouts: expected an object");
  EXPECT_ERRS("workers 0", WITH("\"workers\": 0"), "workers: expected a positive integer");
  EXPECT_ERRS("workers too many", WITH("\"workers\": 65"), "workers: expected a positive integer no larger than 64");
  EXPECT_ERRS("workers not a number", WITH("\"workers\": \"2\""), "workers: expected a positive integer");
  EXPECT_ERRS("log_level", WITH("\"log_level\": \"verbose\""),
              "log_level: expected \"debug\", \"info\", \"warn\" or \"error\"");
  EXPECT_ERRS("unknown top-level key, odd key quoted", WITH("\"listener\": 1, \"a b\\n\": 2"), "listener: unknown key",
              "[\"a b\\n\"]: unknown key");
  EXPECT_ERRS("duplicate key", WITH("\"log_level\": \"info\", \"log_level\": \"warn\""), "log_level: duplicate key");
}

static void test_many_errors(void) {
  /* One file, every section wrong once; the errors come back in document
   * order and the count is exact. */
  const char *json =
      "{\"log_level\": 3,\n"
      " \"listeners\": [{\"address\": \"x\"}, {\"address\": \"h:1\", \"tls\": {}}],\n"
      " \"upstreams\": [{\"name\": \"u\", \"endpoints\": [\"gopher://h\"]}, {\"endpoints\": [\"http://h\"]}],\n"
      " \"routes\": [{\"prefix\": \"/\", \"class\": \"smtp\"}, {\"prefix\": \"/\", \"class\": \"passthrough\"}],\n"
      " \"models\": [{\"name\": \"m\", \"upstream\": \"v\"}],\n"
      " \"limits\": {\"max_header_bytes\": 10},\n"
      " \"timeouts\": {\"grace_ms\": -5},\n"
      " \"bogus\": true}";
  ob_config_errors_t e = {0};
  ob_config_t *c = parse(json, &e);
  TAP_CHECK(c == NULL, "many errors: no snapshot");
  TAP_EQ_INT(e.len, 13, "many errors: all reported");
  static const char *const want[] = {
    "log_level: expected \"debug\", \"info\", \"warn\" or \"error\"",
    "listeners[0].address: invalid address \"x\" (missing port; expected HOST:PORT)",
    "listeners[1].tls: missing required key \"cert\"",
    "listeners[1].tls: missing required key \"key\"",
    "upstreams[0].endpoints[0]: not an http:// or https:// URL",
    "upstreams[1]: missing required key \"name\"",
    "routes[0].class: unknown route class \"smtp\" (expected inference, passthrough, grpc or mcp)",
    "routes[1].prefix: duplicate prefix \"/\"",
    "routes[1]: missing required key \"upstream\"",
    "models[0].upstream: no upstream named \"v\"",
    "limits.max_header_bytes: expected an integer >= 1024",
    "timeouts.grace_ms: expected a positive integer",
    "bogus: unknown key",
  };
  bool same = e.len == sizeof want / sizeof want[0];
  for (size_t i = 0; same && i < e.len; i++) same = strcmp(e.items[i], want[i]) == 0;
  TAP_CHECK(same, "many errors: exact lines in document order");
  if (!same) dump_errs(&e);
  ob_config_errors_dispose(&e);
}

/* ------------------------------------------------------------ files */

static char tmpdir[PATH_MAX];

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

static void test_load(void) {
  ob_config_errors_t e = {0};
  ob_config_t *c = ob_config_load("/nonexistent/obleth.json", &e);
  TAP_CHECK(c == NULL && e.len == 1, "missing file: one error");
  TAP_EQ_STR(e.len ? e.items[0] : NULL, "/nonexistent/obleth.json: No such file or directory", "missing file message");
  ob_config_errors_dispose(&e);

  char tmpl[] = "/tmp/obleth-test-config-XXXXXX";
  if (!mkdtemp(tmpl)) {
    TAP_CHECK(false, "mkdtemp: %s", strerror(errno));
    return;
  }
  if (!realpath(tmpl, tmpdir)) snprintf(tmpdir, sizeof tmpdir, "%s", tmpl);

  c = ob_config_load(tmpl, &e);
  TAP_CHECK(c == NULL && e.len == 1 && strstr(e.items[0], ": Is a directory"), "directory refused");
  ob_config_errors_dispose(&e);

  char path[PATH_MAX + 64], want[PATH_MAX + 160], certs[PATH_MAX + 64], cert[PATH_MAX + 64], key[PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/obleth.json", tmpl);
  snprintf(certs, sizeof certs, "%s/certs", tmpl);
  snprintf(cert, sizeof cert, "%s/certs/c.pem", tmpl);
  snprintf(key, sizeof key, "%s/k.pem", tmpl);
  mkdir(certs, 0700);
  write_file(cert, "loading only checks that it can be read\n");
  write_file(key, "\n");
  write_file(path, "{\"listeners\": [{\"address\": \"127.0.0.1:0\", \"tls\": {\"cert\": \"certs/c.pem\", "
                   "\"key\": \"k.pem\"}}], \"upstreams\": [{\"name\": \"a\", \"endpoints\": [\"https://h\"], "
                   "\"tls_ca\": \"certs\"}]}");
  c = ob_config_load(path, &e);
  snprintf(want, sizeof want, "upstreams[0].tls_ca: cannot read %s/certs: Is a directory", tmpdir);
  TAP_CHECK(c == NULL && e.len == 1, "an unreadable tls_ca fails the load");
  TAP_EQ_STR(e.len ? e.items[0] : NULL, want, "with its JSON path");
  ob_config_errors_dispose(&e);

  write_file(path, "{\"listeners\": [{\"address\": \"127.0.0.1:0\", \"tls\": {\"cert\": \"certs/c.pem\", "
                   "\"key\": \"k.pem\"}}], \"upstreams\": []}");
  c = ob_config_load(path, &e);
  TAP_CHECK(c && e.len == 0, "load a real file");
  if (c) {
    TAP_EQ_STR(c->path, path, "path as given");
    TAP_EQ_STR(c->dir, tmpdir, "dir is the file's real folder");
    snprintf(want, sizeof want, "%s/certs/c.pem", tmpdir);
    TAP_EQ_STR(c->net.listeners[0].tls_cert, want, "relative cert resolved against the file's folder");
  }
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  unlink(key);
  c = ob_config_load(path, &e);
  snprintf(want, sizeof want, "listeners[0].tls.key: cannot read %s/k.pem: No such file or directory", tmpdir);
  TAP_CHECK(c == NULL && e.len == 1, "a missing key fails the load");
  TAP_EQ_STR(e.len ? e.items[0] : NULL, want, "with its JSON path");
  ob_config_errors_dispose(&e);
  unlink(cert);
  rmdir(certs);

  write_file(path, "{\"listeners\": 1}");
  c = ob_config_load(path, &e);
  TAP_CHECK(c == NULL && e.len == 2 && strcmp(e.items[0], "listeners: expected a non-empty array") == 0,
            "load reports validation errors by JSON path");
  ob_config_errors_dispose(&e);

  unlink(path);
  rmdir(tmpl);
}

/* ------------------------------------------------------------ tenants */

/* sha256("abc"), in upper case to show hex digits are case-insensitive. */
#define ABC_HEX_UPPER "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
static const uint8_t abc_digest[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                       0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                       0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
/* sha256("") */
static const uint8_t empty_digest[32] = {0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4,
                                         0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b,
                                         0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};

/* A tenant with one key given by digest; for the error tests. */
#define KEY_A "{\"id\": \"ka\", \"sha256\": \"" ABC_HEX_UPPER "\"}"
#define TENANT_A "{\"name\": \"a\", \"keys\": [" KEY_A "]}"

static void test_tenants(void) {
  const char *json =
      "{" LISTENERS ", \"upstreams\": [{\"name\": \"a\", \"endpoints\": [\"http://127.0.0.1:9000\"], "
      "\"credential\": {\"header\": \"X-API-Key\", \"value\": \"sk-upstream 1\"}}, "
      "{\"name\": \"b\", \"endpoints\": [\"http://h\"]}],\n"
      " \"routes\": [{\"prefix\": \"/v1/\", \"class\": \"inference\", \"cost\": \"requests\"}, "
      "{\"prefix\": \"/x\", \"class\": \"passthrough\", \"upstream\": \"b\", \"cost\": \"tokens\"}, "
      "{\"prefix\": \"/y\", \"class\": \"inference\"}],\n"
      " \"tenants\": [\n"
      "  {\"name\": \"acme\", \"group\": \"prod\", \"weight\": 4, \"max_inflight\": 8, \"max_queue\": 100, \"rpm\": 600,\n"
      "   \"tpm\": 9007199254740992, \"models\": [\"llama\", \"gpt-4o\"],\n"
      "   \"keys\": [{\"id\": \"acme-1\", \"sha256\": \"" ABC_HEX_UPPER "\"}, {\"id\": \"acme-2\", \"secret\": \"\\u0061bc-2\", "
      "\"disabled\": true}]},\n"
      "  {\"name\": \"solo\", \"disabled\": true, \"models\": [\"*\", \"x\"], \"keys\": [{\"id\": \"s\", \"secret\": \"a b\"}]},\n"
      "  {\"name\": \"anon\", \"group\": \"default\", \"keys\": [{\"id\": \"n\", \"sha256\": "
      "\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"}]}\n"
      " ],\n"
      " \"groups\": [{\"name\": \"prod\", \"weight\": 3}, {\"name\": \"batch\"}],\n"
      " \"admission\": {\"mode\": \"weighted\", \"max_inflight\": 32, \"max_queue\": 0, \"queue_timeout_ms\": 1500,\n"
      "   \"cost\": \"requests\", \"default_max_tokens\": 256, \"quantum\": 4096}}";
  ob_config_errors_t e = {0};
  ob_config_t *c = parse(json, &e);
  TAP_CHECK(c != NULL && e.len == 0, "tenants config parses (groups after the tenants naming them)");
  if (!c) {
    dump_errs(&e);
    ob_config_errors_dispose(&e);
    return;
  }
  TAP_EQ_INT(c->num_groups, 3, "declared groups plus the implicit default");
  TAP_CHECK(strcmp(c->groups[0].name, "prod") == 0 && c->groups[0].weight == 3, "group weight read");
  TAP_CHECK(strcmp(c->groups[1].name, "batch") == 0 && c->groups[1].weight == 1, "group weight defaults to 1");
  TAP_CHECK(strcmp(c->groups[2].name, "default") == 0 && c->groups[2].weight == 1, "implicit default group appended");

  TAP_EQ_INT(c->num_tenants, 3, "three tenants");
  const ob_config_tenant_t *t = &c->tenants[0];
  TAP_EQ_STR(t->name, "acme", "tenant name");
  TAP_EQ_STR(t->group, "prod", "tenant group");
  TAP_CHECK(t->weight == 4 && t->max_inflight == 8 && t->max_queue == 100 && t->rpm == 600 &&
                t->tpm == 9007199254740992ULL,
            "tenant integers read");
  TAP_CHECK(t->num_models == 2 && strcmp(t->models[0], "llama") == 0 && strcmp(t->models[1], "gpt-4o") == 0 &&
                !t->all_models,
            "tenant allow-list read");
  TAP_CHECK(!t->disabled && t->num_keys == 2, "tenant enabled, two keys");
  TAP_CHECK(strcmp(t->keys[0].id, "acme-1") == 0 && memcmp(t->keys[0].sha256, abc_digest, 32) == 0 &&
                !t->keys[0].from_secret && !t->keys[0].disabled,
            "upper-case sha256 decoded");
  TAP_CHECK(t->keys[1].from_secret && t->keys[1].disabled, "secret key: from_secret and disabled");
  TAP_CHECK(memcmp(t->keys[1].sha256, abc_digest, 32) != 0, "secret \"abc-2\" hashed (escape decoded first)");

  t = &c->tenants[1];
  TAP_CHECK(t->disabled && t->all_models && t->num_models == 2, "\"*\" in the list admits all; disabled read");
  TAP_EQ_STR(t->group, "default", "group defaults to \"default\"");
  TAP_CHECK(t->weight == 1 && t->max_inflight == 0 && t->max_queue == 0 && t->rpm == 0 && t->tpm == 0,
            "tenant integer defaults");
  TAP_CHECK(t->keys[0].from_secret && memcmp(t->keys[0].sha256, empty_digest, 32) != 0,
            "a secret with an inner space is a key like any other");
  t = &c->tenants[2];
  TAP_CHECK(memcmp(t->keys[0].sha256, empty_digest, 32) == 0 && strcmp(t->group, "default") == 0,
            "lower-case sha256; explicit \"default\" group");

  const ob_config_admission_t *a = &c->admission;
  TAP_CHECK(a->mode == OB_ADMIT_WEIGHTED && a->max_inflight == 32 && a->max_queue == 0 && a->queue_timeout_ms == 1500 &&
                a->cost == OB_COST_REQUESTS && a->default_max_tokens == 256 && a->quantum == 4096,
            "every admission key read");
  TAP_EQ_STR(c->upstreams[0].credential_header, "x-api-key", "credential header lower-cased");
  TAP_EQ_STR(c->upstreams[0].credential_value, "sk-upstream 1", "credential value kept");
  TAP_CHECK(!c->upstreams[1].credential_header && !c->upstreams[1].credential_value, "no credential: NULL");
  TAP_EQ_STR(c->routes[0].cost, "requests", "route cost requests");
  TAP_EQ_STR(c->routes[1].cost, "tokens", "route cost tokens");
  TAP_CHECK(c->routes[2].cost == NULL, "route cost defaults to NULL");
  ob_config_destroy(c);

  /* Defaults, and the implicit group only when a tenant needs it. */
  c = parse(MINIMAL, &e);
  TAP_CHECK(c && c->num_tenants == 0 && c->tenants == NULL && c->num_groups == 0 && c->groups == NULL,
            "no tenants, no groups: anonymous");
  if (c) {
    a = &c->admission;
    TAP_CHECK(a->mode == OB_ADMIT_HIERARCHICAL && a->max_inflight == 0 && a->max_queue == 10000 &&
                  a->queue_timeout_ms == 30000 && a->cost == OB_COST_TOKENS && a->default_max_tokens == 1024 &&
                  a->quantum == 0,
              "admission defaults");
  }
  ob_config_destroy(c);
  c = parse(WITH("\"groups\": [{\"name\": \"default\", \"weight\": 5}], \"tenants\": [" TENANT_A "], "
                 "\"admission\": {\"mode\": \"fifo\"}"),
            &e);
  TAP_CHECK(c && c->num_groups == 1 && c->groups[0].weight == 5, "a declared default group is not added twice");
  TAP_CHECK(c && c->tenants[0].num_models == 1 && strcmp(c->tenants[0].models[0], "*") == 0 &&
                c->tenants[0].all_models,
            "models absent = [\"*\"]");
  TAP_CHECK(c && c->admission.mode == OB_ADMIT_FIFO && c->admission.max_queue == 10000, "fifo; other admission defaults");
  ob_config_destroy(c);
  c = parse(WITH("\"groups\": [{\"name\": \"g\"}], \"tenants\": [], \"admission\": {\"mode\": \"hierarchical\", "
                 "\"cost\": \"tokens\"}"),
            &e);
  TAP_CHECK(c && c->num_groups == 1 && c->num_tenants == 0 && c->admission.cost == OB_COST_TOKENS,
            "unused groups kept, no default added, empty tenants");
  ob_config_destroy(c);
  if (e.len) dump_errs(&e);
  ob_config_errors_dispose(&e);
}

static void test_tenant_errors(void) {
  EXPECT_ERRS("groups: type, element, name, weight, unknown",
              WITH("\"groups\": [1, {\"weight\": 0}, {\"name\": \"\"}, {\"name\": \"g\", \"weight\": 1.5, \"w\": 1}, "
                   "{\"name\": \"g\"}]"),
              "groups[0]: expected an object", "groups[1].weight: expected a positive integer",
              "groups[1]: missing required key \"name\"", "groups[2].name: must not be empty",
              "groups[3].weight: expected a positive integer", "groups[3].w: unknown key",
              "groups[4].name: duplicate group name \"g\"");
  EXPECT_ERRS("groups / tenants not arrays", WITH("\"groups\": {}, \"tenants\": \"t\""), "groups: expected an array",
              "tenants: expected an array");
  EXPECT_ERRS("tenant: unknown group", WITH("\"tenants\": [{\"name\": \"t\", \"group\": \"x\", \"keys\": [" KEY_A "]}]"),
              "tenants[0].group: no group named \"x\"");
  EXPECT_ERRS("tenant: missing name and keys, unknown key", WITH("\"tenants\": [{\"nmae\": \"t\"}]"),
              "tenants[0].nmae: unknown key", "tenants[0]: missing required key \"name\"",
              "tenants[0]: missing required key \"keys\"");
  EXPECT_ERRS("tenant: duplicate name",
              WITH("\"tenants\": [" TENANT_A ", {\"name\": \"a\", \"keys\": [{\"id\": \"kb\", \"secret\": \"b\"}]}]"),
              "tenants[1].name: duplicate tenant name \"a\"");
  EXPECT_ERRS("tenant: integers",
              WITH("\"tenants\": [{\"name\": \"t\", \"weight\": 0, \"max_inflight\": -1, \"max_queue\": 4294967296, "
                   "\"rpm\": 1.5, \"tpm\": 9007199254740993e3, \"keys\": [" KEY_A "]}]"),
              "tenants[0].weight: expected a positive integer",
              "tenants[0].max_inflight: expected a non-negative integer",
              "tenants[0].max_queue: expected a non-negative integer no larger than 4294967295",
              "tenants[0].rpm: expected a non-negative integer",
              "tenants[0].tpm: expected a non-negative integer no larger than 9007199254740992");
  EXPECT_ERRS("tenant: models, disabled, group types",
              WITH("\"tenants\": [{\"name\": \"t\", \"models\": [\"m\", \"\", 3], \"disabled\": 1, \"group\": \"\", "
                   "\"keys\": [" KEY_A "]}, {\"name\": \"u\", \"models\": \"*\", \"keys\": [{\"id\": \"k2\", "
                   "\"secret\": \"x\"}]}]"),
              "tenants[0].models[1]: must not be empty", "tenants[0].models[2]: expected a string",
              "tenants[0].disabled: expected true or false", "tenants[0].group: must not be empty",
              "tenants[1].models: expected an array");
  EXPECT_ERRS("tenant: keys empty / not an array",
              WITH("\"tenants\": [{\"name\": \"t\", \"keys\": []}, {\"name\": \"u\", \"keys\": {}}]"),
              "tenants[0].keys: expected a non-empty array", "tenants[1].keys: expected a non-empty array");
  EXPECT_ERRS("key: both forms, neither, missing id",
              WITH("\"tenants\": [{\"name\": \"t\", \"keys\": [{\"id\": \"k1\", \"sha256\": \"" ABC_HEX_UPPER "\", "
                   "\"secret\": \"abc\"}, {\"id\": \"k2\"}, {\"secret\": \"zz\"}, 7]}]"),
              "tenants[0].keys[0]: give \"sha256\" or \"secret\", not both",
              "tenants[0].keys[1]: missing required key \"sha256\" (or \"secret\")",
              "tenants[0].keys[2]: missing required key \"id\"", "tenants[0].keys[3]: expected an object");
  EXPECT_ERRS("key: bad sha256",
              WITH("\"tenants\": [{\"name\": \"t\", \"keys\": [{\"id\": \"k1\", \"sha256\": \"abc\"}, {\"id\": \"k2\", "
                   "\"sha256\": \"g" ABC_HEX_UPPER "\"}, {\"id\": \"k3\", \"sha256\": "
                   "\"zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"}, {\"id\": \"k4\", "
                   "\"sha256\": 5}]}]"),
              "tenants[0].keys[0].sha256: expected 64 hex digits (the SHA-256 of the key, see obleth hash-key)",
              "tenants[0].keys[1].sha256: expected 64 hex digits (the SHA-256 of the key, see obleth hash-key)",
              "tenants[0].keys[2].sha256: expected 64 hex digits (the SHA-256 of the key, see obleth hash-key)",
              "tenants[0].keys[3].sha256: expected a string");
  EXPECT_ERRS("key: bad secret, id, disabled, unknown key",
              WITH("\"tenants\": [{\"name\": \"t\", \"keys\": [{\"id\": \"\", \"secret\": \"\"}, {\"id\": 1, "
                   "\"secret\": true, \"disabled\": \"no\", \"key\": \"x\"}]}]"),
              "tenants[0].keys[0].id: must not be empty", "tenants[0].keys[0].secret: must not be empty",
              "tenants[0].keys[1].id: expected a string",
              "tenants[0].keys[1].secret: expected a string", "tenants[0].keys[1].disabled: expected true or false",
              "tenants[0].keys[1].key: unknown key");
  EXPECT_ERRS("key: secrets no request could present",
              WITH("\"tenants\": [{\"name\": \"t\", \"keys\": [{\"id\": \"k1\", \"secret\": \" sk\"}, {\"id\": \"k2\", "
                   "\"secret\": \"sk\\t\"}, {\"id\": \"k3\", \"secret\": \"s\\r\\nk\"}, {\"id\": \"k4\", "
                   "\"secret\": \"s\\u007fk\"}]}]"),
              "tenants[0].keys[0].secret: must not contain control characters or start or end with white space",
              "tenants[0].keys[1].secret: must not contain control characters or start or end with white space",
              "tenants[0].keys[2].secret: must not contain control characters or start or end with white space",
              "tenants[0].keys[3].secret: must not contain control characters or start or end with white space");
  EXPECT_ERRS("key: duplicate id across tenants",
              WITH("\"tenants\": [" TENANT_A ", {\"name\": \"b\", \"keys\": [{\"id\": \"kb\", \"secret\": \"b\"}, "
                   "{\"id\": \"ka\", \"secret\": \"c\"}]}]"),
              "tenants[1].keys[1].id: duplicate key id \"ka\"");
  EXPECT_ERRS("key: the same key twice (digest and secret forms)",
              WITH("\"tenants\": [" TENANT_A ", {\"name\": \"b\", \"keys\": [{\"id\": \"kb\", \"secret\": \"abc\"}, "
                   "{\"id\": \"kc\", \"secret\": \"q\"}, {\"id\": \"kd\", \"secret\": \"q\"}]}]"),
              "tenants[1].keys[0]: same key as tenants[0].keys[0]", "tenants[1].keys[2]: same key as tenants[1].keys[1]");

  /* A secret never appears in an error line, whatever else is wrong. */
  ob_config_errors_t e = {0};
  ob_config_t *c =
      parse(WITH("\"tenants\": [{\"name\": \"t\", \"keys\": [{\"id\": \"k\", \"secret\": \"hunter2\", \"sha256\": \"x\"}, "
                 "{\"id\": \"k\", \"secret\": \"hunter2\"}]}], \"log_level\": 1"),
            &e);
  bool clean = c == NULL && e.len == 4;
  for (size_t i = 0; i < e.len; i++)
    if (strstr(e.items[i], "hunter2")) clean = false;
  TAP_CHECK(clean, "secret values are never echoed in errors");
  if (!clean) dump_errs(&e);
  ob_config_errors_dispose(&e);

  /* The caller's text is left as it was (only our copies are wiped). */
  char text[] = "{" LISTENERS ", " UPSTREAMS ", \"tenants\": [{\"name\": \"t\", \"keys\": [{\"id\": \"k\", "
                "\"secret\": \"hunter2\"}]}]}";
  c = ob_config_parse(text, strlen(text), BASE_DIR, &e);
  TAP_CHECK(c && strstr(text, "\"hunter2\"") && c->tenants[0].keys[0].from_secret, "caller's buffer untouched");
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);
}

static void test_admission_credential_errors(void) {
  EXPECT_ERRS("admission: enums and integers",
              WITH("\"admission\": {\"mode\": \"drr\", \"cost\": 1, \"max_inflight\": -1, \"max_queue\": 0.5, "
                   "\"queue_timeout_ms\": 0, \"default_max_tokens\": 0, \"quantum\": 1e16, \"slots\": 4}"),
              "admission.mode: expected \"hierarchical\", \"weighted\" or \"fifo\"",
              "admission.cost: expected \"tokens\" or \"requests\"",
              "admission.max_inflight: expected a non-negative integer",
              "admission.max_queue: expected a non-negative integer",
              "admission.queue_timeout_ms: expected a positive integer",
              "admission.default_max_tokens: expected a positive integer",
              "admission.quantum: expected a non-negative integer no larger than 9007199254740992",
              "admission.slots: unknown key");
  EXPECT_ERRS("admission not an object, repeated", WITH("\"admission\": [], \"admission\": {}"),
              "admission: expected an object", "admission: duplicate key");
  EXPECT_ERRS("credential: type, missing, unknown",
              "{" LISTENERS ", \"upstreams\": [{\"name\": \"a\", \"endpoints\": [\"http://h\"], \"credential\": "
              "\"Bearer x\"}, {\"name\": \"b\", \"endpoints\": [\"http://h\"], \"credential\": {\"header\": "
              "\"authorization\", \"token\": \"t\"}}]}",
              "upstreams[0].credential: expected an object", "upstreams[1].credential.token: unknown key",
              "upstreams[1].credential: missing required key \"value\"");
  EXPECT_ERRS("credential: bad header names and values",
              "{" LISTENERS ", \"upstreams\": [{\"name\": \"a\", \"endpoints\": [\"http://h\"], \"credential\": "
              "{\"header\": \"x api key\", \"value\": \"v\\r\\nx-evil: 1\"}}, {\"name\": \"b\", \"endpoints\": "
              "[\"http://h\"], \"credential\": {\"header\": \"Host\", \"value\": \"\"}}, {\"name\": \"c\", \"endpoints\": "
              "[\"http://h\"], \"credential\": {\"header\": \":authority\", \"value\": \"v\\n\"}}, {\"name\": \"d\", "
              "\"endpoints\": [\"http://h\"], \"credential\": {\"header\": \"\", \"value\": 1}}]}",
              "upstreams[0].credential.header: invalid header name \"x api key\"",
              "upstreams[0].credential.value: must not contain CR or LF",
              "upstreams[1].credential.header: header \"host\" cannot carry a credential",
              "upstreams[1].credential.value: must not be empty",
              "upstreams[2].credential.header: invalid header name \":authority\"",
              "upstreams[2].credential.value: must not contain CR or LF",
              "upstreams[3].credential.header: must not be empty", "upstreams[3].credential.value: expected a string");
  EXPECT_ERRS("route cost",
              WITH("\"routes\": [{\"prefix\": \"/a\", \"class\": \"inference\", \"cost\": \"bytes\"}, {\"prefix\": "
                   "\"/b\", \"class\": \"inference\", \"cost\": null}]"),
              "routes[0].cost: expected \"requests\" or \"tokens\"", "routes[1].cost: expected \"requests\" or \"tokens\"");
}

/* budgets.path of a config that must parse: want NULL = no file. */
static void expect_budgets_path(const char *name, const char *json, const char *want) {
  ob_config_errors_t e = {0};
  ob_config_t *c = parse(json, &e);
  TAP_CHECK(c && (want ? c->budgets.path && strcmp(c->budgets.path, want) == 0 : !c->budgets.path), "%s", name);
  if (!c) dump_errs(&e);
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);
}

static void test_budget_keys(void) {
  ob_config_errors_t e = {0};
  ob_config_t *c = parse(WITH("\"tenants\": [{\"name\": \"t\", \"budget_tokens\": 1000, \"budget_period\": \"day\", "
                              "\"keys\": [{\"id\": \"k1\", \"secret\": \"s1\", \"budget_tokens\": 50, \"budget_period\": "
                              "\"total\"}, {\"id\": \"k2\", \"secret\": \"s2\"}]}, {\"name\": \"u\", \"budget_tokens\": 7, "
                              "\"keys\": [{\"id\": \"k3\", \"secret\": \"s3\", \"budget_period\": \"month\"}]}]"),
                         &e);
  TAP_CHECK(c && c->tenants[0].budget_tokens == 1000 && c->tenants[0].budget_period == OB_BUDGET_DAY &&
                c->tenants[0].keys[0].budget_tokens == 50 && c->tenants[0].keys[0].budget_period == OB_BUDGET_TOTAL &&
                c->tenants[0].keys[1].budget_tokens == 0 && c->tenants[0].keys[1].budget_period == OB_BUDGET_MONTH &&
                c->tenants[1].budget_tokens == 7 && c->tenants[1].budget_period == OB_BUDGET_MONTH &&
                c->tenants[1].keys[0].budget_tokens == 0,
            "tenant and key budgets: tokens and periods, month by default, 0 when absent");
  if (!c) dump_errs(&e);
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  expect_budgets_path("a budget without \"budgets\" keeps its counters in obleth-budgets.mdb next to the config",
                      WITH("\"tenants\": [{\"name\": \"t\", \"budget_tokens\": 1, \"keys\": [{\"id\": \"k\", "
                           "\"secret\": \"s\"}]}]"),
                      BASE_DIR "/obleth-budgets.mdb");
  expect_budgets_path("so does a key budget alone",
                      WITH("\"tenants\": [{\"name\": \"t\", \"keys\": [{\"id\": \"k\", \"secret\": \"s\", "
                           "\"budget_tokens\": 5}]}]"),
                      BASE_DIR "/obleth-budgets.mdb");
  expect_budgets_path("budgets.path resolved against the config's folder",
                      WITH("\"tenants\": [{\"name\": \"t\", \"keys\": [{\"id\": \"k\", \"secret\": \"s\", "
                           "\"budget_tokens\": 5}]}], \"budgets\": {\"path\": \"state/b.mdb\"}"),
                      BASE_DIR "/state/b.mdb");
  expect_budgets_path("an absolute budgets.path is kept, also without any budget",
                      WITH("\"budgets\": {\"path\": \"/var/lib/obleth/b.mdb\"}"), "/var/lib/obleth/b.mdb");
  expect_budgets_path("an empty budgets object gets the default path", WITH("\"budgets\": {}"),
                      BASE_DIR "/obleth-budgets.mdb");
  expect_budgets_path("no budget and no \"budgets\": no counter file",
                      WITH("\"tenants\": [{\"name\": \"t\", \"budget_period\": \"day\", \"keys\": [{\"id\": \"k\", "
                           "\"secret\": \"s\"}]}]"),
                      NULL);

  EXPECT_ERRS("budget errors: periods, integers, budgets object",
              WITH("\"tenants\": [{\"name\": \"t\", \"budget_tokens\": -1, \"budget_period\": \"week\", \"keys\": "
                   "[{\"id\": \"k\", \"secret\": \"s\", \"budget_tokens\": 1.5, \"budget_period\": 1}, {\"id\": \"k2\", "
                   "\"secret\": \"s2\", \"budget_tokens\": 9007199254740993e3, \"budget_period\": \"Month\"}]}], "
                   "\"budgets\": {\"path\": \"\", \"sync_ms\": 5}"),
              "tenants[0].budget_tokens: expected a non-negative integer",
              "tenants[0].budget_period: expected \"day\", \"month\" or \"total\"",
              "tenants[0].keys[0].budget_tokens: expected a non-negative integer",
              "tenants[0].keys[0].budget_period: expected \"day\", \"month\" or \"total\"",
              "tenants[0].keys[1].budget_tokens: expected a non-negative integer no larger than 9007199254740992",
              "tenants[0].keys[1].budget_period: expected \"day\", \"month\" or \"total\"",
              "budgets.path: must not be empty", "budgets.sync_ms: unknown key");
  EXPECT_ERRS("budgets not an object", WITH("\"budgets\": \"b.mdb\""), "budgets: expected an object");
}

/* ------------------------------------------------------------ cluster */

static void test_cluster(void) {
  ob_config_errors_t e = {0};
  ob_config_t *c = parse(MINIMAL, &e);
  TAP_CHECK(c && !c->cluster.enabled && !c->cluster.redis && !c->cluster.host && !c->cluster.ns &&
                !c->cluster.replica_id && !c->cluster.password && c->cluster.lease_ms == 0,
            "no cluster block: not enabled, nothing set");
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  c = parse(WITH("\"cluster\": {\"redis\": \"redis://127.0.0.1:6379/0\", \"password_file\": \"redis.pass\", "
                 "\"namespace\": \"prod:gw-a_1.x\", \"replica_id\": \"gw-1\", \"lease_ms\": 6000, \"op_timeout_ms\": 2000, "
                 "\"fallback\": \"local\"}"),
            &e);
  TAP_CHECK(c && e.len == 0, "full cluster block parses");
  if (c) {
    const ob_config_cluster_t *cl = &c->cluster;
    TAP_CHECK(cl->enabled, "cluster enabled");
    TAP_EQ_STR(cl->redis, "redis://127.0.0.1:6379/0", "redis as written without a password");
    TAP_EQ_STR(cl->host, "127.0.0.1", "redis host");
    TAP_EQ_INT(cl->port, 6379, "redis port");
    TAP_EQ_INT(cl->db, 0, "redis db");
    TAP_CHECK(!cl->unix_path && !cl->username, "no unix path, no user");
    TAP_CHECK(cl->password == NULL, "ob_config_parse leaves a password_file's password to ob_config_load");
    TAP_EQ_STR(cl->password_file, BASE_DIR "/redis.pass", "password_file resolved against base_dir");
    TAP_EQ_STR(cl->ns, "prod:gw-a_1.x", "namespace");
    TAP_EQ_STR(cl->replica_id, "gw-1", "replica_id");
    TAP_EQ_INT(cl->lease_ms, 6000, "lease_ms");
    TAP_EQ_INT(cl->op_timeout_ms, 2000, "op_timeout_ms at exactly lease_ms / 3");
    TAP_EQ_INT(cl->fallback, OB_CLUSTER_LOCAL, "fallback local");
  } else {
    dump_errs(&e);
  }
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  c = parse(WITH("\"cluster\": {\"redis\": \"redis://redis.internal\"}"), &e);
  TAP_CHECK(c && e.len == 0, "cluster block with only redis parses");
  if (c) {
    const ob_config_cluster_t *cl = &c->cluster;
    char host[256], want[300];
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    snprintf(want, sizeof want, "%s:%ld", host, (long)getpid());
    TAP_CHECK(cl->enabled, "enabled");
    TAP_EQ_STR(cl->host, "redis.internal", "host name");
    TAP_EQ_INT(cl->port, 6379, "port defaults to 6379");
    TAP_EQ_INT(cl->db, 0, "db defaults to 0");
    TAP_EQ_STR(cl->ns, "obleth", "namespace defaults to obleth");
    TAP_EQ_STR(cl->replica_id, want, "replica_id defaults to <hostname>:<pid>");
    TAP_EQ_INT(cl->lease_ms, 3000, "lease_ms defaults to 3000");
    TAP_EQ_INT(cl->op_timeout_ms, 200, "op_timeout_ms defaults to 200");
    TAP_EQ_INT(cl->fallback, OB_CLUSTER_SPLIT, "fallback defaults to split");
    TAP_CHECK(!cl->username && !cl->password && !cl->password_file && !cl->unix_path, "no user, password or socket");
  } else {
    dump_errs(&e);
  }
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  /* User and password are %-decoded; "redis" keeps the URL with only the
   * password's bytes replaced. */
  c = parse(WITH("\"cluster\": {\"redis\": \"REDIS://gw%40corp:p%3a@ss%2FTopSecret%25@[::1]:6380/15\"}"), &e);
  TAP_CHECK(c && e.len == 0, "URL with user, password, IPv6 host, port and db parses");
  if (c) {
    const ob_config_cluster_t *cl = &c->cluster;
    TAP_EQ_STR(cl->username, "gw@corp", "user %-decoded");
    TAP_EQ_STR(cl->password, "p:@ss/TopSecret%", "password %-decoded, split at the last \"@\"");
    TAP_EQ_STR(cl->host, "::1", "IPv6 host without brackets");
    TAP_EQ_INT(cl->port, 6380, "explicit port");
    TAP_EQ_INT(cl->db, 15, "db 15");
    TAP_EQ_STR(cl->redis, "REDIS://gw%40corp:***@[::1]:6380/15", "redis is redacted");
    TAP_CHECK(!strstr(cl->redis, "TopSecret"), "redacted URL does not hold the password");
  } else {
    dump_errs(&e);
  }
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  c = parse(WITH("\"cluster\": {\"redis\": \"redis://:hunter2@10.1.2.3/\"}"), &e);
  TAP_CHECK(c && c->cluster.password && strcmp(c->cluster.password, "hunter2") == 0 && !c->cluster.username &&
                strcmp(c->cluster.redis, "redis://:***@10.1.2.3/") == 0 && c->cluster.db == 0,
            "password without user: default user, redacted, \"/\" is db 0");
  if (!c) dump_errs(&e);
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  c = parse(WITH("\"cluster\": {\"redis\": \"unix:run/redis.sock\", \"password_file\": \"/etc/obleth/redis.pass\"}"), &e);
  TAP_CHECK(c && c->cluster.unix_path && strcmp(c->cluster.unix_path, BASE_DIR "/run/redis.sock") == 0 &&
                !c->cluster.host && c->cluster.port == 0 && c->cluster.db == 0 &&
                strcmp(c->cluster.redis, "unix:run/redis.sock") == 0 &&
                strcmp(c->cluster.password_file, "/etc/obleth/redis.pass") == 0,
            "unix: relative socket path resolved against base_dir, no host");
  if (!c) dump_errs(&e);
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);
  c = parse(WITH("\"cluster\": {\"redis\": \"unix:/var/run/redis/redis.sock\"}"), &e);
  TAP_CHECK(c && strcmp(c->cluster.unix_path, "/var/run/redis/redis.sock") == 0, "unix: absolute path kept");
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  c = parse(WITH("\"cluster\": {\"redis\": \"redis://h\", \"lease_ms\": 600000, \"op_timeout_ms\": 60000}"), &e);
  TAP_CHECK(c && c->cluster.lease_ms == 600000 && c->cluster.op_timeout_ms == 60000, "largest lease_ms and op_timeout_ms");
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

#define CLUSTER(body) WITH("\"cluster\": {" body "}")
  EXPECT_ERRS("cluster not an object", WITH("\"cluster\": \"redis://h\""), "cluster: expected an object");
  EXPECT_ERRS("cluster without redis", CLUSTER("\"namespace\": \"x\""), "cluster: missing required key \"redis\"");
  EXPECT_ERRS("redis not a string / empty", CLUSTER("\"redis\": 6379"), "cluster.redis: expected a string");
  EXPECT_ERRS("redis empty", CLUSTER("\"redis\": \"\""), "cluster.redis: must not be empty");
  EXPECT_ERRS("bad URL scheme", CLUSTER("\"redis\": \"http://127.0.0.1:6379\""),
              "cluster.redis: not a redis:// or unix: URL");
  EXPECT_ERRS("rediss:// (TLS) is not supported", CLUSTER("\"redis\": \"rediss://:pw@h\""),
              "cluster.redis: not a redis:// or unix: URL");
  EXPECT_ERRS("bare host", CLUSTER("\"redis\": \"127.0.0.1:6379\""), "cluster.redis: not a redis:// or unix: URL");
  EXPECT_ERRS("port 0", CLUSTER("\"redis\": \"redis://h:0\""), "cluster.redis: invalid redis:// URL (port must be 1..65535)");
  EXPECT_ERRS("port too large", CLUSTER("\"redis\": \"redis://h:65536/0\""),
              "cluster.redis: invalid redis:// URL (port must be 1..65535)");
  EXPECT_ERRS("port not a number", CLUSTER("\"redis\": \"redis://h:abc\""),
              "cluster.redis: invalid redis:// URL (port must be 1..65535)");
  EXPECT_ERRS("empty port", CLUSTER("\"redis\": \"redis://h:\""),
              "cluster.redis: invalid redis:// URL (port must be 1..65535)");
  EXPECT_ERRS("missing host", CLUSTER("\"redis\": \"redis://:pw@:6379\""),
              "cluster.redis: invalid redis:// URL (missing host)");
  EXPECT_ERRS("IPv6 without brackets", CLUSTER("\"redis\": \"redis://::1\""),
              "cluster.redis: invalid redis:// URL (IPv6 addresses need brackets, as in [::1]:6379)");
  EXPECT_ERRS("bad host", CLUSTER("\"redis\": \"redis://h h\""), "cluster.redis: invalid redis:// URL (bad host)");
  EXPECT_ERRS("db 16", CLUSTER("\"redis\": \"redis://h/16\""), "cluster.redis: invalid redis:// URL (db must be 0..15)");
  EXPECT_ERRS("db not a number", CLUSTER("\"redis\": \"redis://h:6379/x\""),
              "cluster.redis: invalid redis:// URL (db must be 0..15)");
  EXPECT_ERRS("db with a path", CLUSTER("\"redis\": \"redis://h/1/2\""),
              "cluster.redis: invalid redis:// URL (db must be 0..15)");
  EXPECT_ERRS("db with a query", CLUSTER("\"redis\": \"redis://h/1?timeout=1\""),
              "cluster.redis: invalid redis:// URL (db must be 0..15)");
  EXPECT_ERRS("db -1", CLUSTER("\"redis\": \"redis://h/-1\""), "cluster.redis: invalid redis:// URL (db must be 0..15)");
  EXPECT_ERRS("unix: without a path", CLUSTER("\"redis\": \"unix:\""), "cluster.redis: unix: needs a socket path");
  EXPECT_ERRS("unix: with ?db=", CLUSTER("\"redis\": \"unix:/run/redis.sock?db=2\""),
              "cluster.redis: a unix: URL takes no query (\"?db=N\" is not supported)");
  EXPECT_ERRS("unix: path too long",
              CLUSTER("\"redis\": \"unix:/run/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\""),
              "cluster.redis: unix socket path too long (at most 107 bytes once resolved)");
  EXPECT_ERRS("empty password in the URL", CLUSTER("\"redis\": \"redis://user:@h\""),
              "cluster.redis: invalid redis:// URL (empty password)");
  EXPECT_ERRS("empty user before @", CLUSTER("\"redis\": \"redis://@h\""),
              "cluster.redis: invalid redis:// URL (empty user name before \"@\")");
  EXPECT_ERRS("bad %-escape in the password", CLUSTER("\"redis\": \"redis://:Top%zzSecret@h\""),
              "cluster.redis: invalid redis:// URL (bad %-escape in the password)");
  EXPECT_ERRS("%00 in the password", CLUSTER("\"redis\": \"redis://:TopSecret%00@h\""),
              "cluster.redis: invalid redis:// URL (bad %-escape in the password)");
  EXPECT_ERRS("truncated %-escape in the user", CLUSTER("\"redis\": \"redis://us%4:pw@h\""),
              "cluster.redis: invalid redis:// URL (bad %-escape in the user name)");
  EXPECT_ERRS("user without any password", CLUSTER("\"redis\": \"redis://gw@h\""),
              "cluster: the user name in \"redis\" needs a password (in the URL or in \"password_file\")");
  EXPECT_ERRS("password in the URL and password_file",
              CLUSTER("\"redis\": \"redis://:TopSecret@h\", \"password_file\": \"redis.pass\""),
              "cluster: give the password in \"redis\" or in \"password_file\", not both");
  EXPECT_ERRS("password_file empty / not a string", CLUSTER("\"redis\": \"redis://h\", \"password_file\": \"\""),
              "cluster.password_file: must not be empty");
  EXPECT_ERRS("op_timeout_ms above lease_ms / 3",
              CLUSTER("\"redis\": \"redis://h\", \"lease_ms\": 600, \"op_timeout_ms\": 201"),
              "cluster.op_timeout_ms: must be at most lease_ms / 3 = 200 (it is 201), so that a Redis call that times "
              "out still leaves time to renew the lease before it expires");
  EXPECT_ERRS("a short lease_ms with the default op_timeout_ms", CLUSTER("\"redis\": \"redis://h\", \"lease_ms\": 500"),
              "cluster.op_timeout_ms: must be at most lease_ms / 3 = 166 (it is 200, the default), so that a Redis "
              "call that times out still leaves time to renew the lease before it expires");
  EXPECT_ERRS("lease_ms and op_timeout_ms out of range",
              CLUSTER("\"redis\": \"redis://h\", \"lease_ms\": 299, \"op_timeout_ms\": 60001"),
              "cluster.lease_ms: expected an integer >= 300",
              "cluster.op_timeout_ms: expected an integer >= 10 no larger than 60000");
  EXPECT_ERRS("lease_ms too large, op_timeout_ms too small",
              CLUSTER("\"redis\": \"redis://h\", \"lease_ms\": 600001, \"op_timeout_ms\": 9.5"),
              "cluster.lease_ms: expected an integer >= 300 no larger than 600000",
              "cluster.op_timeout_ms: expected an integer >= 10");
  EXPECT_ERRS("bad fallback", CLUSTER("\"redis\": \"redis://h\", \"fallback\": \"fail\""),
              "cluster.fallback: expected \"split\" or \"local\"");
  EXPECT_ERRS("fallback not a string", CLUSTER("\"redis\": \"redis://h\", \"fallback\": true"),
              "cluster.fallback: expected \"split\" or \"local\"");
  EXPECT_ERRS("unknown and repeated keys", CLUSTER("\"redis\": \"redis://h\", \"sentinel\": \"x\", \"redis\": \"redis://g\""),
              "cluster.sentinel: unknown key", "cluster.redis: duplicate key");
  EXPECT_ERRS("bad namespace chars", CLUSTER("\"redis\": \"redis://h\", \"namespace\": \"a b{x}\""),
              "cluster.namespace: invalid namespace \"a b{x}\" (use 1..64 letters, digits, \"_\", \".\", \":\" and \"-\")");
  EXPECT_ERRS("empty namespace", CLUSTER("\"redis\": \"redis://h\", \"namespace\": \"\""),
              "cluster.namespace: invalid namespace \"\" (use 1..64 letters, digits, \"_\", \".\", \":\" and \"-\")");
  EXPECT_ERRS("namespace of 65 characters",
              CLUSTER("\"redis\": \"redis://h\", \"namespace\": "
                      "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""),
              "cluster.namespace: invalid namespace \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" "
              "(use 1..64 letters, digits, \"_\", \".\", \":\" and \"-\")");
  EXPECT_ERRS("replica_id with a space", CLUSTER("\"redis\": \"redis://h\", \"replica_id\": \"gw 1\""),
              "cluster.replica_id: invalid replica_id \"gw 1\" (use 1..128 printable ASCII characters, no spaces)");
  EXPECT_ERRS("replica_id not ASCII", CLUSTER("\"redis\": \"redis://h\", \"replica_id\": \"gw-\u00e9\""),
              "cluster.replica_id: invalid replica_id \"gw-\u00e9\" (use 1..128 printable ASCII characters, no spaces)");
  EXPECT_ERRS("namespace not a string", CLUSTER("\"redis\": \"redis://h\", \"namespace\": 1"),
              "cluster.namespace: expected a string");

  /* The password never shows in an error line, whatever else is wrong. */
  const char *const leaky[] = {
    CLUSTER("\"redis\": \"redis://:TopSecret@h:0\""),
    CLUSTER("\"redis\": \"redis://:TopSecret@h/99\""),
    CLUSTER("\"redis\": \"redis://:TopSecret@h h\""),
    CLUSTER("\"redis\": \"redis://:TopSecret@\""),
    CLUSTER("\"redis\": \"redis://:TopSecret%4@h\""),
    CLUSTER("\"redis\": \"redis://TopSecret@h\""),
    CLUSTER("\"redis\": \"rediss://:TopSecret@h\""),
    CLUSTER("\"redis\": \"redis://:TopSecret@h\", \"password_file\": \"p\", \"lease_ms\": 1, \"x\": 1"),
  };
  for (size_t i = 0; i < sizeof leaky / sizeof leaky[0]; i++) {
    c = parse(leaky[i], &e);
    bool clean = c == NULL && e.len > 0;
    for (size_t j = 0; clean && j < e.len; j++) clean = !strstr(e.items[j], "TopSecret");
    TAP_CHECK(clean, "bad cluster block %zu: the password is in no error line", i);
    if (!clean) dump_errs(&e);
    ob_config_destroy(c);
    ob_config_errors_dispose(&e);
  }
#undef CLUSTER
}

/* password_file is read by ob_config_load: its first line is the password. */
static void test_cluster_load(void) {
  char dir[] = "/tmp/obleth-test-cluster-XXXXXX";
  if (!mkdtemp(dir)) {
    TAP_CHECK(false, "mkdtemp: %s", strerror(errno));
    return;
  }
  char real[PATH_MAX], path[PATH_MAX + 64], pass[PATH_MAX + 64], want[PATH_MAX + 160];
  if (!realpath(dir, real)) snprintf(real, sizeof real, "%s", dir);
  snprintf(path, sizeof path, "%s/obleth.json", dir);
  snprintf(pass, sizeof pass, "%s/redis.pass", dir);
  ob_config_errors_t e = {0};

  write_file(path, WITH("\"cluster\": {\"redis\": \"redis://gw@127.0.0.1:6379/2\", \"password_file\": \"redis.pass\"}"));
  write_file(pass, "TopSecret pass\r\nsecond line\n");
  ob_config_t *c = ob_config_load(path, &e);
  TAP_CHECK(c && e.len == 0, "load with cluster.password_file");
  if (c) {
    snprintf(want, sizeof want, "%s/redis.pass", real);
    TAP_EQ_STR(c->cluster.password_file, want, "password_file resolved against the file's folder");
    TAP_EQ_STR(c->cluster.password, "TopSecret pass", "password: first line without CR LF");
    TAP_EQ_STR(c->cluster.username, "gw", "user from the URL");
    TAP_EQ_STR(c->cluster.redis, "redis://gw@127.0.0.1:6379/2", "redis has no password to hide");
  } else {
    dump_errs(&e);
  }
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  write_file(pass, "no-newline");
  c = ob_config_load(path, &e);
  TAP_CHECK(c && strcmp(c->cluster.password, "no-newline") == 0, "a password file without a line end");
  ob_config_destroy(c);
  ob_config_errors_dispose(&e);

  write_file(pass, "\nTopSecret\n");
  c = ob_config_load(path, &e);
  snprintf(want, sizeof want, "cluster.password_file: empty password (the first line of %s/redis.pass is empty)", real);
  TAP_CHECK(c == NULL && e.len == 1, "an empty first line fails the load");
  TAP_EQ_STR(e.len ? e.items[0] : NULL, want, "with its JSON path, without the rest of the file");
  ob_config_errors_dispose(&e);

  write_file(pass, "\r\n");
  c = ob_config_load(path, &e);
  TAP_CHECK(c == NULL && e.len == 1 && strstr(e.items[0], "empty password"), "a first line of only CR LF is empty too");
  ob_config_errors_dispose(&e);

  unlink(pass);
  c = ob_config_load(path, &e);
  snprintf(want, sizeof want, "cluster.password_file: cannot read %s/redis.pass: No such file or directory", real);
  TAP_CHECK(c == NULL && e.len == 1, "a missing password_file fails the load");
  TAP_EQ_STR(e.len ? e.items[0] : NULL, want, "cannot read <file>: <strerror>");
  ob_config_errors_dispose(&e);

  mkdir(pass, 0700);
  c = ob_config_load(path, &e);
  snprintf(want, sizeof want, "cluster.password_file: cannot read %s/redis.pass: Is a directory", real);
  TAP_EQ_STR(e.len ? e.items[0] : NULL, want, "a folder as password_file");
  TAP_CHECK(c == NULL, "fails the load");
  ob_config_errors_dispose(&e);
  rmdir(pass);

  write_file(path, WITH("\"cluster\": {\"redis\": \"redis://:TopSecret@h\", \"password_file\": \"redis.pass\"}"));
  write_file(pass, "other\n");
  c = ob_config_load(path, &e);
  TAP_CHECK(c == NULL && e.len == 1 && strcmp(e.items[0], "cluster: give the password in \"redis\" or in "
                                                          "\"password_file\", not both") == 0,
            "URL password and password_file: refused");
  if (e.len != 1) dump_errs(&e);
  ob_config_errors_dispose(&e);

  unlink(pass);
  unlink(path);
  rmdir(dir);
}

/* Inputs the fuzzer found worth keeping live here as well as in the corpus. */
static void test_regressions(void) {
  EXPECT_ERRS("escape at the very end", "{\"a\\", "$: invalid JSON near byte 2");
  EXPECT_ERRS("non-ASCII byte in an endpoint path",
              "{" LISTENERS ", \"upstreams\": [{\"name\": \"a\", \"endpoints\": [\"http://h/caf\u00e9\"]}]}",
              "upstreams[0].endpoints[0]: not an http:// or https:// URL");
  EXPECT_ERRS("bracket host followed by junk",
              "{" LISTENERS ", \"upstreams\": [{\"name\": \"a\", \"endpoints\": [\"http://[::1]x\"]}]}",
              "upstreams[0].endpoints[0]: not an http:// or https:// URL");
}

int main(void) {
  test_full();
  test_defaults();
  test_json_errors();
  test_listener_errors();
  test_upstream_errors();
  test_route_model_errors();
  test_grpc_keys();
  test_cache_keys();
  test_scalar_errors();
  test_many_errors();
  test_tenants();
  test_tenant_errors();
  test_admission_credential_errors();
  test_budget_keys();
  test_load();
  test_cluster();
  test_cluster_load();
  test_regressions();
  return tap_done();
}
