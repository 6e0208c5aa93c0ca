/*
 * fuzz_h2_server.c: raw bytes from a client into the HTTP/2 server glue
 * (src/net/client_h2.c, reached through server.c's protocol detection).
 *
 * One event_base and one net (a cleartext listener that is never used, an
 * upstream that is never contacted) are made on the first input and kept.
 * Each input gets a socketpair: one end is handed to the net as an accepted
 * connection; the driver writes the connection preface, an empty SETTINGS
 * frame and then the input to the other end, reading and dropping whatever
 * the gateway answers. The input is cut after every driver frame (types
 * 0xfc-0xfe, see fuzz_net.h): each piece is written and the loop run until
 * quiet before the next, so responses, deferred answers and flow control
 * interleave with the client's frames; the driver frames also stop and
 * restart reading the gateway's output and start a graceful shutdown of the
 * connection. Then the driver closes its end and runs the loop until the
 * connection is freed.
 *
 * The handler answers every request itself; the path picks how, so the
 * fuzzer can reach each way of answering (the names are compared with
 * memcmp, which libFuzzer watches):
 *   /big       streamed body larger than the client's window, refilled from
 *              on_writable;          /trailers  body then trailers;
 *   /empty     204 with the head only; /reset   ob_sreq_reset;
 *   /later     answered on a later loop turn; /echo  the request body back;
 *   /stream... the body is streamed (stream_body), answered at once while
 *              the client may still be sending;
 *   anything else: a small fixed response.
 *
 * Checks (abort): on_request only with a method and a path, HTTP/2, a body;
 * on_close exactly once per sreq that reached on_request; after the close no
 * sreq and no connection is left, so nothing a connection made can outlive
 * it (ASan's leak check sees per-input leaks as unreachable memory).
 */
#include "config.h"
#include "net_int.h"

#include "fuzz_net.h"

#include <netinet/in.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_LIVE 256

static struct event_base *base;
static ob_config_t *cfg;
static ob_net_t *net;
static struct event *later_ev;

/* Every sreq between on_request and on_close, and which wait for /later. */
static ob_sreq_t *live[MAX_LIVE];
static size_t num_live;
static bool later[MAX_LIVE];

static size_t live_index(const ob_sreq_t *s) {
  for (size_t i = 0; i < num_live; i++)
    if (live[i] == s) return i;
  return SIZE_MAX;
}

static bool path_is(const ob_sreq_t *s, const char *p) {
  size_t n = strlen(p);
  return s->path.len >= n && memcmp(s->path.base, p, n) == 0;
}

static const ob_http_header_t text_hdr[] = {{OB_IOV_LIT("content-type"), OB_IOV_LIT("text/plain")}};

static void answer_small(ob_sreq_t *s) {
  if (ob_sreq_send_head(s, 200, text_hdr, 1, 3, false) == OB_OK) ob_sreq_send_bytes(s, "ok\n", 3, true);
}

/* /big: pieces of 24 KiB, each above the 16 KiB stream_window_bytes, so the
 * next one goes out from on_writable; handler_data counts them. */
#define BIG_PIECE (24 * 1024)
#define BIG_PIECES 4
static void big_next(ob_sreq_t *s) {
  static char piece[BIG_PIECE];
  uintptr_t sent = (uintptr_t)s->handler_data + 1;
  s->handler_data = (void *)sent;
  memset(piece, 'a' + (int)(sent % 26), sizeof piece);
  ob_sreq_send_bytes(s, piece, sizeof piece, sent == BIG_PIECES);
}

static void answer(ob_sreq_t *s) {
  if (path_is(s, "/big")) {
    if (ob_sreq_send_head(s, 200, text_hdr, 1, -1, false) == OB_OK) big_next(s);
  } else if (path_is(s, "/trailers")) {
    static const ob_http_header_t t[] = {{OB_IOV_LIT("grpc-status"), OB_IOV_LIT("0")},
                                         {OB_IOV_LIT("x-trailer"), OB_IOV_LIT("yes")}};
    if (ob_sreq_send_head(s, 200, text_hdr, 1, -1, false) != OB_OK) return;
    ob_sreq_send_bytes(s, "body", 4, false);
    ob_sreq_send_trailers(s, t, 2);
  } else if (path_is(s, "/empty")) {
    ob_sreq_send_head(s, 204, NULL, 0, 0, true);
  } else if (path_is(s, "/reset")) {
    ob_sreq_reset(s);
  } else if (path_is(s, "/echo")) {
    const ob_buf_t *b = &s->body->buf;
    if (ob_sreq_send_head(s, 200, NULL, 0, (int64_t)b->len, b->len == 0) == OB_OK && b->len)
      ob_sreq_send_bytes(s, b->base, b->len, true);
  } else {
    answer_small(s);
  }
}

static bool on_stream_body(const ob_sreq_t *s, void *ctx) { return path_is(s, "/stream"); }

static void on_request(ob_sreq_t *s, void *ctx) {
  CHECK(live_index(s) == SIZE_MAX && num_live < MAX_LIVE);
  CHECK(s->method.len > 0 && s->path.len > 0 && s->http_version == 20 && s->body);
  CHECK(!s->body_streaming || s->body->buf.len == 0);
  s->handler_data = NULL;
  later[num_live] = path_is(s, "/later");
  live[num_live++] = s;
  if (later[num_live - 1]) {
    event_active(later_ev, EV_TIMEOUT, 0);
    return;
  }
  answer(s);
}

static void on_writable(ob_sreq_t *s, void *ctx) {
  CHECK(live_index(s) != SIZE_MAX);
  CHECK(ob_sreq_pending(s) <= cfg->net.limits.stream_window_bytes / 2);
  if (path_is(s, "/big") && (uintptr_t)s->handler_data < BIG_PIECES) big_next(s);
}

static void on_close(ob_sreq_t *s, bool completed, void *ctx) {
  size_t i = live_index(s);
  CHECK(i != SIZE_MAX);
  live[i] = live[num_live - 1];
  later[i] = later[num_live - 1];
  num_live--;
}

/* Answer the /later requests, each once; answering may close streams (and
 * so reorder live[]), hence the restart. */
static void on_later(evutil_socket_t fd, short what, void *arg) {
  for (size_t i = 0; i < num_live;) {
    if (!later[i]) {
      i++;
      continue;
    }
    later[i] = false;
    answer(live[i]);
    i = 0;
  }
}

static const ob_sreq_handler_t handler = {on_stream_body, on_request, on_writable, on_close};

static void init_once(void) {
  if (net) return;
  fuzz_net_init_process();
  base = event_base_new();
  static const char json[] =
      "{\"listeners\":[{\"address\":\"127.0.0.1:0\"}],"
      "\"upstreams\":[{\"name\":\"never\",\"endpoints\":[\"http://127.0.0.1:9\"]}],"
      "\"limits\":{\"max_body_bytes\":8192,\"max_header_bytes\":4096,\"max_concurrent_streams\":64,"
      "\"stream_window_bytes\":16384}," FUZZ_TIMEOUTS "}";
  ob_config_errors_t errs = {0};
  cfg = ob_config_parse(json, sizeof json - 1, NULL, &errs);
  for (size_t i = 0; i < errs.len; i++) fprintf(stderr, "config: %s\n", errs.items[i]);
  ob_config_errors_dispose(&errs);
  CHECK(cfg);
  net = ob_net_create(base, &cfg->net, &handler, NULL);
  CHECK(net);
  later_ev = event_new(base, -1, 0, on_later, NULL);
}

/* Small socket buffers, so a peer that stops reading backs the gateway's
 * output up into its own buffers (and the high-water marks, and nghttp2's
 * flood limits) within an input of a few KiB. The kernel rounds up. */
static void small_buffers(int fd) {
  int n = 4096;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof n);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &n, sizeof n);
}

typedef struct client {
  int fd;
  const uint8_t *out;
  size_t out_left;
  bool eof;
  bool not_reading; /* leave the gateway's bytes in the socket */
} client_t;

static size_t client_io(void *arg) {
  client_t *c = arg;
  size_t moved = send_some(c->fd, &c->out, &c->out_left);
  if (!c->eof && !c->not_reading) moved += drain_fd(c->fd, &c->eof);
  return moved;
}

static bool conn_gone(void *arg) { return net->num_conns == 0; }

static bool all_sent(void *arg) { return ((client_t *)arg)->out_left == 0; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  init_once();
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  small_buffers(sv[0]);
  small_buffers(sv[1]);
  struct sockaddr_in peer = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ob_net_client_accept(net, sv[0], (struct sockaddr *)&peer, sizeof peer, NULL, false);
  CHECK(net->num_conns == 1);

  /* Preface and an empty SETTINGS frame: every input starts past the
   * handshake nghttp2 itself checks. */
  static const uint8_t start[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
  client_t c = {.fd = sv[1], .out = start, .out_left = sizeof start - 1};
  pump_t p = {.base = base, .io = client_io, .done = all_sent, .arg = &c, .what = "h2 server: preface"};
  pump_run(&p);
  p.what = "h2 server: input";
  for (size_t off = 0; off < size && !c.eof;) {
    int marker;
    size_t seg = h2_segment(data + off, size - off, &marker);
    c.out = data + off, c.out_left = seg;
    pump_run(&p);
    off += seg;
    if (marker == FRAME_READING) c.not_reading = !c.not_reading;
    if (marker == FRAME_DRAIN && net->conns) {
      ob_net_client_drain(net->conns);
      pump_run(&p);
    }
  }

  close(sv[1]);
  c.fd = -1, c.eof = true, c.out_left = 0;
  p.done = conn_gone;
  p.what = "h2 server: connection not freed after the client closed";
  pump_run(&p);
  CHECK(num_live == 0);
  return 0;
}
