/*
 * fuzz_net.h: what the two net fuzz drivers share. They run the real
 * src/net code on one event_base made once per process and talk to it
 * through plain non-blocking sockets the driver owns (a socketpair for the
 * client side, accepted loopback TCP connections for the upstream side);
 * those sockets are never registered with the base, so the driver moves
 * their bytes itself between turns of the loop.
 *
 * "Quiet" is how a driver knows the net has done all it can with what it
 * was given without waiting on a clock: three turns in a row in which no
 * event was active and the driver moved no byte (a callback that runs
 * silently in one turn shows up as an active event or as bytes by the
 * next; the third turn is margin). Every timer the net arms
 * is configured far beyond a run, so no timeout fires and a run depends
 * only on its input. A run that never gets quiet, or never reaches what
 * it waits for, is a hang: abort() after HANG_MS, so libFuzzer keeps the
 * input.
 *
 * Included by fuzz_h2_server.c and fuzz_upstream_response.c only.
 */
#ifndef OB_FUZZ_NET_H
#define OB_FUZZ_NET_H

#include "core.h"

#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#define CHECK(c)                                                          \
  do {                                                                    \
    if (!(c)) {                                                           \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                            \
    }                                                                     \
  } while (0)

/* Far above any run (a few ms): a hang is a bug, not a slow machine. */
#define HANG_MS 10000

/* Far beyond a run: no net timer fires while fuzzing. */
#define FUZZ_TIMEOUTS                                                                                  \
  "\"timeouts\":{\"connect_ms\":3600000,\"first_byte_ms\":3600000,\"idle_ms\":3600000,"              \
  "\"client_header_ms\":3600000,\"keepalive_ms\":3600000,\"upstream_keepalive_ms\":3600000,"         \
  "\"grace_ms\":3600000,\"client_body_ms\":3600000}"

typedef struct pump {
  struct event_base *base;
  size_t (*io)(void *arg);  /* moves bytes on the driver's sockets; returns how many moved */
  /* Optional: what the run waits for besides quiet. Asked only when the
   * loop is quiet, so it may act (resume a paused handler) and say false. */
  bool (*done)(void *arg);
  void *arg;
  const char *what;         /* names the wait in the hang message */
} pump_t;

/* Turn the loop until quiet (and done, when given). */
static void pump_run(const pump_t *p) {
  uint64_t deadline = ob_clock_ms() + HANG_MS;
  int quiet = 0;
  while (quiet < 3 || (p->done && !p->done(p->arg))) {
    bool active = event_base_get_num_events(p->base, EVENT_BASE_COUNT_ACTIVE) > 0;
    event_base_loop(p->base, EVLOOP_NONBLOCK);
    size_t moved = p->io(p->arg);
    quiet = active || moved ? 0 : quiet + 1;
    if (ob_clock_ms() > deadline) {
      fprintf(stderr, "hang: %s\n", p->what);
      abort();
    }
  }
}

/* Read and drop what fd has; *eof is set once the peer closed its side. */
static size_t drain_fd(int fd, bool *eof) {
  size_t total = 0;
  char buf[16384];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      total += (size_t)n;
      continue;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) *eof = true;
    return total;
  }
}

/* Write what fd takes of [*p, *p + *left); advances both. Once the peer is
 * gone the rest is dropped (*left = 0): nobody will read it. */
static size_t send_some(int fd, const uint8_t **p, size_t *left) {
  size_t total = 0;
  while (*left) {
    ssize_t n = send(fd, *p, *left, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) *left = 0;
    if (n <= 0) break;
    *p += n, *left -= (size_t)n, total += (size_t)n;
  }
  return total;
}

/* Frame types 0xfc-0xfe are not assigned, so the peer ignores them (RFC
 * 9113 5.5); the drivers read them as instructions, which lets the fuzzer
 * interleave its frames with what the gateway does:
 *   PAUSE    let the net answer what came before before the rest arrives;
 *   READING  stop (or start again) reading what the gateway writes, so
 *            its output backs up into its buffers;
 *   DRAIN    start a graceful shutdown of the connection (h2_server). */
enum { FRAME_DRAIN = 0xfc, FRAME_READING = 0xfd, FRAME_PAUSE = 0xfe };

/* Length of the first segment of an HTTP/2 frame sequence: up to and
 * including the first driver frame, or everything. *marker: that frame's
 * type, or 0. */
static size_t h2_segment(const uint8_t *p, size_t n, int *marker) {
  size_t off = 0;
  *marker = 0;
  while (off + 9 <= n) {
    size_t end = off + 9 + ((size_t)p[off] << 16 | (size_t)p[off + 1] << 8 | p[off + 2]);
    if (end > n) break;
    if (p[off + 3] >= FRAME_DRAIN && p[off + 3] <= FRAME_PAUSE) {
      *marker = p[off + 3];
      return end;
    }
    off = end;
  }
  return n;
}

/* The gateway writes to sockets the driver has closed: a broken pipe must
 * be an error return, as in obleth itself (main ignores SIGPIPE). */
static void fuzz_net_init_process(void) {
  signal(SIGPIPE, SIG_IGN);
  ob_log_set_level(OB_LOG_ERROR);
}

#endif /* OB_FUZZ_NET_H */
