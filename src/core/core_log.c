/*
 * core_log.c: the process log. One line per call, written with a single
 * write(2) so lines from several threads never interleave.
 */
#include "core.h"

#include <stdio.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static ob_log_level_t min_level = OB_LOG_INFO;

void ob_log_set_level(ob_log_level_t lvl) { min_level = lvl; }

void ob_log(ob_log_level_t lvl, const char *fmt, ...) {
  if (lvl < min_level) return;
  static const char *names[] = {"debug", "info", "warn", "error"};
  char line[2048];
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s ", tm.tm_year + 1900, tm.tm_mon + 1,
                   tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000), names[lvl]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : ((size_t)m < sizeof line - (size_t)n - 1 ? (size_t)m : sizeof line - (size_t)n - 2));
  line[len++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}
