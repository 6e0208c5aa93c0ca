/*
 * core_log.c: the process log. One line per call, written with a single
 * write(2) so lines from several threads never interleave; access lines
 * are batched per thread (see ob_log_access in core.h).
 */
#include "core.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static ob_log_level_t min_level = OB_LOG_INFO;

/* Set by the first worker on reload, read by every worker: atomic. */
void ob_log_set_level(ob_log_level_t lvl) { __atomic_store_n(&min_level, lvl, __ATOMIC_RELAXED); }

bool ob_log_enabled(ob_log_level_t lvl) { return lvl >= __atomic_load_n(&min_level, __ATOMIC_RELAXED); }

/* Access lines waiting for write(2); per thread, so no lock. */
#define ACCESS_FLUSH 32768
#define LINE_MAX_ 2048 /* one log line at most, newline included */
static _Thread_local struct {
  char buf[ACCESS_FLUSH + LINE_MAX_];
  size_t len;
} access_buf;

static void write_all(const char *p, size_t n) {
  while (n) {
    ssize_t w = write(STDERR_FILENO, p, n);
    if (w <= 0) return; /* a closed or broken log is not a reason to stop serving */
    p += w, n -= (size_t)w;
  }
}

void ob_log_flush(void) {
  if (!access_buf.len) return;
  write_all(access_buf.buf, access_buf.len);
  access_buf.len = 0;
}

size_t ob_log_pending(void) { return access_buf.len; }

/* The "2026-11-24T21:04:25.135Z info " prefix into out; returns its length
 * (at most 40). */
static size_t prefix(char *out, ob_log_level_t lvl) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  /* The date part changes once a second; formatting it for every access
   * line was a visible part of a cache hit's cost. */
  static _Thread_local time_t last_sec = -1;
  static _Thread_local char date[80];
  struct timeval tv;
  gettimeofday(&tv, NULL);
  if (tv.tv_sec != last_sec) {
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(date, sizeof date, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec);
    last_sec = tv.tv_sec;
  }
  int ms = (int)(tv.tv_usec / 1000);
  size_t dl = strlen(date), nl = strlen(names[lvl]);
  memcpy(out, date, dl);
  out[dl] = '.', out[dl + 1] = (char)('0' + ms / 100), out[dl + 2] = (char)('0' + ms / 10 % 10);
  out[dl + 3] = (char)('0' + ms % 10), out[dl + 4] = 'Z', out[dl + 5] = ' ';
  memcpy(out + dl + 6, names[lvl], nl);
  out[dl + 6 + nl] = ' ';
  return dl + 7 + nl;
}

/* One formatted line (prefix, message, newline) into out, which has room
 * for LINE_MAX_ bytes; returns its length. */
static size_t format_line(char *out, ob_log_level_t lvl, const char *fmt, va_list ap) {
  size_t n = prefix(out, lvl);
  int m = vsnprintf(out + n, LINE_MAX_ - n - 1, fmt, ap);
  size_t len = n + (m < 0 ? 0 : ((size_t)m < LINE_MAX_ - n - 1 ? (size_t)m : LINE_MAX_ - n - 2));
  out[len++] = '\n';
  return len;
}

void ob_log(ob_log_level_t lvl, const char *fmt, ...) {
  if (!ob_log_enabled(lvl)) return;
  ob_log_flush();
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  size_t len = format_line(line, lvl, fmt, ap);
  va_end(ap);
  write_all(line, len); /* one write: lines from several threads never interleave */
}

void ob_log_access(const char *msg, size_t len) {
  if (!ob_log_enabled(OB_LOG_INFO)) return;
  char *out = access_buf.buf + access_buf.len;
  size_t n = prefix(out, OB_LOG_INFO);
  if (len > LINE_MAX_ - n - 1) len = LINE_MAX_ - n - 1;
  memcpy(out + n, msg, len);
  out[n + len] = '\n';
  access_buf.len += n + len + 1;
  if (access_buf.len >= ACCESS_FLUSH) ob_log_flush();
}

