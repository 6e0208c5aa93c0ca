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

void ob_log_set_level(ob_log_level_t lvl) { min_level = lvl; }

/* Access lines waiting for write(2); per thread, so no lock. */
#define ACCESS_FLUSH 32768
static _Thread_local struct {
  char buf[ACCESS_FLUSH + 2048];
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

/* One formatted line (timestamp, level, message, newline) into out, which
 * has room for 2048 bytes; returns its length. */
static size_t format_line(char *out, ob_log_level_t lvl, const char *fmt, va_list ap) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  const size_t cap = 2048;
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
  int n = (int)(dl + 7 + nl);
  int m = vsnprintf(out + n, cap - (size_t)n - 1, fmt, ap);
  size_t len = (size_t)n + (m < 0 ? 0 : ((size_t)m < cap - (size_t)n - 1 ? (size_t)m : cap - (size_t)n - 2));
  out[len++] = '\n';
  return len;
}

void ob_log(ob_log_level_t lvl, const char *fmt, ...) {
  if (lvl < min_level) return;
  ob_log_flush();
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  size_t len = format_line(line, lvl, fmt, ap);
  va_end(ap);
  write_all(line, len); /* one write: lines from several threads never interleave */
}

void ob_log_access(const char *fmt, ...) {
  if (OB_LOG_INFO < min_level) return;
  va_list ap;
  va_start(ap, fmt);
  access_buf.len += format_line(access_buf.buf + access_buf.len, OB_LOG_INFO, fmt, ap);
  va_end(ap);
  if (access_buf.len >= ACCESS_FLUSH) ob_log_flush();
}
