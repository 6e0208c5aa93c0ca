/*
 * waker.c: another thread's way into an event loop. A non-blocking pipe
 * whose read end is an event on the loop: ob_waker_wake writes a byte
 * (from any thread), the loop drains the pipe and calls the callback once
 * for however many wake-ups came in between.
 */
#include "net_int.h"

#include <errno.h>
#include <stdio.h>
#include <unistd.h>

struct ob_waker {
  int fd[2];
  struct event *ev;
  void (*cb)(void *arg);
  void *arg;
};

static void on_readable(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  ob_waker_t *w = arg;
  char buf[64];
  while (read(fd, buf, sizeof buf) > 0) {
  }
  w->cb(w->arg);
}

ob_waker_t *ob_waker_new(struct event_base *base, void (*cb)(void *arg), void *arg) {
  ob_waker_t *w = ob_xcalloc(1, sizeof *w);
  if (pipe(w->fd) != 0) {
    ob_log_error("pipe: %s", strerror(errno));
    free(w);
    return NULL;
  }
  for (int i = 0; i < 2; i++) evutil_make_socket_nonblocking(w->fd[i]), evutil_make_socket_closeonexec(w->fd[i]);
  w->cb = cb;
  w->arg = arg;
  w->ev = event_new(base, w->fd[0], EV_READ | EV_PERSIST, on_readable, w);
  if (!w->ev) abort();
  event_add(w->ev, NULL);
  return w;
}

void ob_waker_wake(ob_waker_t *w) {
  if (!w) return; /* not set up yet (a worker whose start-up failed) */
  ssize_t r = write(w->fd[1], "w", 1);
  (void)r; /* a full pipe already holds a wake-up */
}

void ob_waker_free(ob_waker_t *w) {
  if (!w) return;
  event_free(w->ev);
  close(w->fd[0]), close(w->fd[1]);
  free(w);
}
