/*
 * fuzz_upstream_response.c: raw bytes from a fake upstream into the
 * upstream response path (src/net/upstream.c, upstream_h1.c, upstream_h2.c)
 * through the public ob_upstream_request.
 *
 * The driver listens on a loopback TCP socket of its own; one event_base and
 * one net whose two upstreams (http1 and h2c) point at that socket are made
 * on the first input and kept. Per input: start a request, accept the
 * connection, read the request, write the rest of the input as the
 * response, shut down the write side, and run the loop until every request
 * had its terminal callback and the gateway closed its side too (so nothing
 * of the connection outlives the input). Connections the net opens besides
 * the first (a retry, a second request that found no idle connection) are
 * shut down at once.
 *
 * The first input byte chooses the exchange:
 *   bit 0     upstream: http1 / h2c (the response is then HTTP/2 frames,
 *             written after an empty SETTINGS frame; the request is
 *             stream 1, a second one stream 3);
 *   bits 1-2  request: GET, HEAD, POST with a small body, POST with a body
 *             larger than the socket buffers and the h2 stream window;
 *   bits 3-4  handler: plain, pauses at the first body bytes (resumed
 *             whenever the loop is quiet), cancels in on_head, cancels in
 *             on_data;
 *   bits 5-6  how the response is cut: h1 whole, h2 after each driver frame
 *             (see fuzz_net.h); or pieces of 5, 64 or 1024 bytes, each
 *             followed by a quiet loop;
 *   bit 7     a second request alike, with te: trailers: h1 starts it from
 *             the first one's terminal callback (so it may reuse the
 *             kept-alive connection), h2 at once (two streams).
 * In h2 responses a frame of type 0xfc starts one more request there and
 * then (after a GOAWAY or a SETTINGS that allows no more streams, say), up
 * to MAX_REQS in all; a handler that cancels cancels every request.
 *
 * Checks (abort), the contract of net.h: no callback from inside
 * ob_upstream_request; on_head at most once, before any on_data; no on_data
 * while paused; exactly one terminal callback (on_end or on_error), none
 * when the handler cancelled, nothing after either; on_error's codes and
 * head_seen as documented; no hop-by-hop or pseudo field reaches the
 * handler; no body for HEAD; at the end the endpoint has nothing in flight.
 */
#include "config.h"
#include "net.h"

#include "fuzz_net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { M_GET, M_HEAD, M_POST, M_POST_BIG };
enum { A_NONE, A_PAUSE, A_CANCEL_HEAD, A_CANCEL_DATA };

#define MAX_CONNS 8
#define MAX_REQS 4
#define BIG_BODY (300 * 1024)

static struct event_base *base;
static ob_config_t *cfg;
static ob_net_t *net;
static int lfd = -1;

typedef struct rec {
  ob_ureq_t *u;       /* NULL once finished or cancelled */
  bool paused, paused_once, cancelled;
  int heads, ends, errors;
  size_t body_bytes;
} rec_t;

static struct run {
  bool h2;
  int method, action;
  bool second;        /* mode bit 7 */
  ob_upstream_t *up;
  bool in_api;        /* inside ob_upstream_request */
  rec_t req[MAX_REQS];
  size_t num_req;     /* started */
  int fds[MAX_CONNS]; /* accepted, in order */
  bool eof[MAX_CONNS];
  size_t num_fds;
  bool not_reading;   /* leave the gateway's bytes in the socket */
  const uint8_t *out; /* response bytes not yet written to fds[0] */
  size_t out_left;
} r;

static void start_next(void);

/* Every live request, so one handler's cancel also reaches ureqs that
 * are not in a callback (and may be waiting in the connection's lists). */
static void cancel_all(void) {
  for (size_t i = 0; i < r.num_req; i++) {
    rec_t *q = &r.req[i];
    if (!q->u) continue;
    ob_ureq_cancel(q->u);
    q->cancelled = true;
    q->u = NULL;
    q->paused = false;
  }
  if (r.second && !r.h2 && r.num_req == 1) start_next();
}

static void check_call(const rec_t *q, const ob_ureq_t *u) {
  CHECK(!r.in_api && q >= r.req && q < r.req + r.num_req);
  CHECK(u == q->u && !q->cancelled && q->ends + q->errors == 0);
}

/* The terminal callback of the first h1 request starts the second (so
 * does its cancel): the connection it leaves idle is the one to reuse. */
static void terminal(rec_t *q) {
  q->u = NULL;
  q->paused = false;
  if (q == &r.req[0] && r.second && !r.h2) start_next();
}

static void on_head(ob_ureq_t *u, void *data, int status, const ob_http_header_t *h, size_t n) {
  rec_t *q = data;
  check_call(q, u);
  CHECK(q->heads == 0 && !q->paused_once);
  CHECK(status >= 200 && status <= 599);
  q->heads++;
  for (size_t i = 0; i < n; i++) {
    CHECK(h[i].name.len > 0 && h[i].name.base[0] != ':');
    CHECK(!ob_http_is_hop_by_hop(h[i].name, ob_iov(NULL, 0)));
  }
  if (r.action == A_CANCEL_HEAD) cancel_all();
}

static void on_data(ob_ureq_t *u, void *data, struct evbuffer *buf) {
  rec_t *q = data;
  check_call(q, u);
  CHECK(q->heads == 1 && !q->paused && r.method != M_HEAD);
  size_t n = evbuffer_get_length(buf);
  CHECK(n > 0);
  if (r.action == A_PAUSE && !q->paused_once) {
    /* Take half, leave the rest buffered by net, and stop. */
    evbuffer_drain(buf, n / 2);
    q->body_bytes += n / 2;
    ob_ureq_pause(u, true);
    q->paused = q->paused_once = true;
    return;
  }
  q->body_bytes += n;
  evbuffer_drain(buf, n);
  if (r.action == A_CANCEL_DATA) cancel_all();
}

static void on_end(ob_ureq_t *u, void *data, const ob_http_header_t *t, size_t n) {
  rec_t *q = data;
  check_call(q, u);
  CHECK(q->heads == 1);
  q->ends++;
  terminal(q);
}

static void on_error(ob_ureq_t *u, void *data, ob_err_t err, int status_hint, bool head_seen) {
  rec_t *q = data;
  check_call(q, u);
  CHECK(err == OB_ERR_CONN || err == OB_ERR_BAD_RESPONSE);
  CHECK(status_hint == 502 || status_hint == 503 || status_hint == 504);
  CHECK(head_seen == (q->heads == 1));
  q->errors++;
  terminal(q);
}

static const ob_ureq_handler_t handler = {on_head, on_data, on_end, on_error};

static void start_next(void) {
  if (r.num_req == MAX_REQS) return;
  rec_t *q = &r.req[r.num_req++];
  static char big[BIG_BODY];
  static const char *const methods[] = {"GET", "HEAD", "POST", "POST"};
  ob_iov_t body = r.method == M_POST ? OB_IOV_LIT("{\"small\":true}")
                : r.method == M_POST_BIG ? ob_iov(big, sizeof big) : ob_iov(NULL, 0);
  static const ob_http_header_t hdrs[] = {{OB_IOV_LIT("accept"), OB_IOV_LIT("*/*")},
                                          {OB_IOV_LIT("x-fuzz"), OB_IOV_LIT("1")}};
  ob_ureq_spec_t spec = {
      .method = ob_iov_str(methods[r.method]),
      .path = OB_IOV_LIT("/fuzz"),
      .headers = hdrs,
      .num_headers = 2,
      .body = body.len ? &body : NULL,
      .num_body = body.len ? 1 : 0,
      .expect_trailers = q != &r.req[0],
  };
  bool nested = r.in_api;
  r.in_api = true;
  q->u = ob_upstream_request(r.up, &spec, &handler, q);
  r.in_api = nested;
  CHECK(q->u && q->heads + q->ends + q->errors == 0);
}

static void init_once(void) {
  if (net) return;
  fuzz_net_init_process();
  base = event_base_new();
  lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sin;
  CHECK(lfd >= 0);
  /* Fixed, not autotuned, so the same input backs up the same way; TCP
   * needs no smaller window than this to stay clear of its slow paths
   * (persist timer, silly-window avoidance), which would make runs depend
   * on time. Accepted sockets inherit it. */
  int rcv = 65536;
  setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  CHECK(bind(lfd, (struct sockaddr *)&sin, sizeof sin) == 0 && listen(lfd, 16) == 0);
  CHECK(getsockname(lfd, (struct sockaddr *)&sin, &len) == 0);
  CHECK(fcntl(lfd, F_SETFL, O_NONBLOCK) == 0);
  int port = ntohs(sin.sin_port);
  char json[1024];
  snprintf(json, sizeof json,
           "{\"listeners\":[{\"address\":\"127.0.0.1:0\"}],"
           "\"upstreams\":[{\"name\":\"h1\",\"protocol\":\"http1\",\"endpoints\":[\"http://127.0.0.1:%d\"]},"
           "{\"name\":\"h2c\",\"protocol\":\"h2c\",\"endpoints\":[\"http://127.0.0.1:%d\"]}],"
           "\"limits\":{\"max_header_bytes\":4096,\"stream_window_bytes\":16384}," FUZZ_TIMEOUTS "}",
           port, port);
  ob_config_errors_t errs = {0};
  cfg = ob_config_parse(json, strlen(json), NULL, &errs);
  for (size_t i = 0; i < errs.len; i++) fprintf(stderr, "config: %s\n", errs.items[i]);
  ob_config_errors_dispose(&errs);
  CHECK(cfg);
  net = ob_net_create(base, &cfg->net, &(ob_sreq_handler_t){0}, NULL);
  CHECK(net);
}

/* The gateway's own end of an accepted connection gets a small send
 * buffer: autotuned, it would grow to megabytes and absorb any backlog
 * before the net's own high-water marks are reached. It lives in this
 * process, opened just before fd was accepted, so it is found by its
 * address among the descriptors below fd. */
static void small_peer_sndbuf(int fd) {
  struct sockaddr_in peer, a;
  socklen_t plen = sizeof peer, alen;
  if (getpeername(fd, (struct sockaddr *)&peer, &plen) != 0) return;
  for (int i = fd - 1; i > 2; i--) {
    alen = sizeof a;
    if (getsockname(i, (struct sockaddr *)&a, &alen) == 0 && alen == plen && a.sin_port == peer.sin_port &&
        a.sin_addr.s_addr == peer.sin_addr.s_addr) {
      int snd = 4096;
      setsockopt(i, SOL_SOCKET, SO_SNDBUF, &snd, sizeof snd);
      return;
    }
  }
}

/* Accept what connects, drop what the gateway sends, write the response to
 * the first connection. */
static size_t upstream_io(void *arg) {
  size_t moved = 0;
  int fd;
  while ((fd = accept(lfd, NULL, NULL)) >= 0) {
    CHECK(r.num_fds < MAX_CONNS);
    /* Our small writes (driver frames) must not wait for ACKs (Nagle):
     * quiet would come before they arrive. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    small_peer_sndbuf(fd);
    if (r.num_fds > 0) shutdown(fd, SHUT_WR);
    r.eof[r.num_fds] = false;
    r.fds[r.num_fds++] = fd;
    moved++;
  }
  for (size_t i = 0; i < r.num_fds; i++)
    if (!r.eof[i] && (i > 0 || !r.not_reading)) moved += drain_fd(r.fds[i], &r.eof[i]);
  if (r.num_fds) moved += send_some(r.fds[0], &r.out, &r.out_left);
  return moved;
}

/* The wait predicates are asked only when the loop is quiet: a paused
 * handler is resumed there, and the wait goes on. */
static bool resumed(void) {
  bool any = false;
  for (size_t i = 0; i < r.num_req; i++) {
    rec_t *q = &r.req[i];
    if (!q->paused) continue;
    q->paused = false;
    ob_ureq_pause(q->u, false);
    any = true;
  }
  return any;
}

static bool request_read(void *arg) { return !resumed() && (r.num_fds > 0 || r.req[0].u == NULL); }

static bool all_sent(void *arg) { return !resumed() && r.out_left == 0; }

/* Every request had its terminal callback (or was cancelled), and every
 * connection the net opened is closed on its side too. */
static bool finished(void *arg) {
  if (resumed()) return false;
  for (size_t i = 0; i < r.num_req; i++)
    if (r.req[i].u) return false;
  for (size_t i = 0; i < r.num_fds; i++)
    if (!r.eof[i]) return false;
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  init_once();
  uint8_t mode = data[0];
  static const size_t cuts[4] = {0, 5, 64, 1024};
  size_t cut = cuts[(mode >> 5) & 3];
  memset(&r, 0, sizeof r);
  r.h2 = mode & 1;
  r.method = (mode >> 1) & 3;
  r.action = (mode >> 3) & 3;
  r.second = (mode & 0x80) != 0;
  r.up = ob_net_upstream(net, r.h2 ? "h2c" : "h1");
  data++, size--;

  start_next();
  if (r.second && r.h2) start_next();
  /* Read the whole request (for h2c: preface, SETTINGS, HEADERS) first, so
   * the response answers it rather than racing it. */
  pump_t p = {.base = base, .io = upstream_io, .done = request_read, .arg = &r, .what = "upstream: connect"};
  pump_run(&p);

  static const uint8_t settings[] = {0, 0, 0, 4, 0, 0, 0, 0, 0};
  p.done = all_sent;
  p.what = "upstream: response";
  if (r.h2 && r.num_fds) {
    r.out = settings, r.out_left = sizeof settings;
    pump_run(&p);
  }
  for (size_t off = 0; off < size && r.num_fds && !r.eof[0];) {
    size_t seg = size - off;
    int marker = 0;
    if (cut && seg > cut) seg = cut;
    if (!cut && r.h2) seg = h2_segment(data + off, seg, &marker);
    r.out = data + off, r.out_left = seg;
    pump_run(&p);
    off += seg;
    if (marker == FRAME_READING) r.not_reading = !r.not_reading;
    if (marker == FRAME_DRAIN) {
      start_next();
      pump_run(&p);
    }
  }
  if (r.num_fds) shutdown(r.fds[0], SHUT_WR);
  r.out_left = 0;
  r.not_reading = false;

  p.done = finished;
  p.what = "upstream: no terminal callback, or the connection was kept after the upstream closed";
  pump_run(&p);
  CHECK(r.num_req >= (r.second ? 2u : 1u));
  for (size_t i = 0; i < r.num_req; i++) {
    const rec_t *q = &r.req[i];
    CHECK(q->ends + q->errors == (q->cancelled ? 0 : 1));
    CHECK(q->ends == 0 || q->heads == 1);
  }
  ob_endpoint_stats_t st;
  ob_upstream_endpoint_stats(r.up, 0, &st);
  CHECK(st.inflight == 0);
  for (size_t i = 0; i < r.num_fds; i++) close(r.fds[i]);
  return 0;
}
