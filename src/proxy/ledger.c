/*
 * ledger.c: the usage ledger, one JSON line per finished exchange. Lines
 * are formatted on the event loop into a bounded buffer; a writer thread
 * swaps the buffer out and appends it to the file, rotating by size. When
 * the disk is slower than the traffic the buffer fills and further lines
 * are dropped and counted (obleth_ledger_dropped_total) instead of slowing
 * requests. Closing drains the buffer, so a graceful shutdown loses
 * nothing.
 */
#include "proxy_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct ob_ledger {
  char *path;
  uint64_t max_bytes, buffer_bytes;
  uint32_t max_files;
  int fd;
  uint64_t size;
  ob_bg_t bg;
  ob_buf_t pending; /* under bg's lock */
  ob_buf_t out;     /* the writer thread's: what it writes this round */
  uint64_t lines, dropped, write_errors; /* under bg's lock */
};

static int open_file(const char *path) { return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640); }

/* path.(n-1) -> path.n ... path -> path.1, then a fresh path. */
static void rotate(ob_ledger_t *l) {
  close(l->fd);
  size_t n = strlen(l->path) + 16;
  char *from = malloc(n), *to = malloc(n);
  for (uint32_t i = l->max_files; i >= 1; i--) {
    if (i == 1) snprintf(from, n, "%s", l->path);
    else snprintf(from, n, "%s.%u", l->path, i - 1);
    snprintf(to, n, "%s.%u", l->path, i);
    rename(from, to);
  }
  free(from), free(to);
  l->fd = open_file(l->path);
  l->size = 0;
}

static void write_all(ob_ledger_t *l, const char *p, size_t n) {
  while (n > 0 && l->fd >= 0) {
    ssize_t w = write(l->fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      ob_bg_lock(&l->bg);
      l->write_errors++;
      ob_bg_unlock(&l->bg);
      return;
    }
    p += w, n -= (size_t)w, l->size += (uint64_t)w;
  }
}

/* Under the lock: swap the queued lines for the empty out buffer, so the
 * round writes them without holding it. */
static void take(void *arg) {
  ob_ledger_t *l = arg;
  ob_buf_t tmp = l->out;
  l->out = l->pending;
  l->pending = tmp;
}

static void run(void *arg) {
  ob_ledger_t *l = arg;
  if (!l->out.len) return;
  if (l->max_bytes && l->size + l->out.len > l->max_bytes && l->size > 0) rotate(l);
  write_all(l, l->out.base, l->out.len);
  ob_buf_reset(&l->out);
}

ob_ledger_t *ob_ledger_open(const ob_config_ledger_t *cfg) {
  int fd = open_file(cfg->path);
  if (fd < 0) {
    ob_log_error("ledger %s: %s", cfg->path, strerror(errno));
    return NULL;
  }
  ob_ledger_t *l = ob_xcalloc(1, sizeof *l);
  l->path = ob_xstrdup(cfg->path);
  l->max_bytes = cfg->max_bytes;
  l->max_files = cfg->max_files;
  l->buffer_bytes = cfg->buffer_bytes;
  l->fd = fd;
  struct stat st;
  if (fstat(fd, &st) == 0) l->size = (uint64_t)st.st_size;
  ob_buf_init(&l->pending);
  ob_buf_init(&l->out);
  ob_bg_start(&l->bg, 0, take, run, l);
  return l;
}

void ob_ledger_close(ob_ledger_t *l) {
  if (!l) return;
  ob_bg_stop(&l->bg); /* its last round wrote what was queued */
  if (l->fd >= 0) close(l->fd);
  ob_buf_dispose(&l->pending);
  ob_buf_dispose(&l->out);
  free(l->path);
  free(l);
}

void ob_ledger_counts(ob_ledger_t *l, uint64_t *lines, uint64_t *dropped, uint64_t *errors) {
  ob_bg_lock(&l->bg);
  *lines = l->lines, *dropped = l->dropped, *errors = l->write_errors;
  ob_bg_unlock(&l->bg);
}

static void jstr(ob_buf_t *b, const char *key, const char *v) {
  ob_buf_printf(b, ",\"%s\":", key);
  if (v) ob_buf_append_json_str(b, ob_iov_str(v));
  else ob_buf_append_str(b, "null");
}

void ob_ledger_record(ob_ledger_t *l, const ob_exchange_t *x, const ob_sreq_t *s, uint64_t now_us, bool completed) {
  ob_buf_t b;
  ob_buf_init(&b);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[40];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  ob_buf_printf(&b, "{\"time\":\"%s.%03ldZ\"", when, ts.tv_nsec / 1000000);
  jstr(&b, "request_id", x->request_id);
  jstr(&b, "tenant", x->who.tenant ? x->who.tenant->name : NULL);
  jstr(&b, "group", x->who.tenant ? x->who.tenant->group : NULL);
  jstr(&b, "key_id", x->who.key ? x->who.key->id : NULL);
  jstr(&b, "class", x->route ? x->route->cls->name : NULL);
  char model[256] = "";
  if (x->model.len) snprintf(model, sizeof model, "%.*s", (int)(x->model.len < 255 ? x->model.len : 255), x->model.base);
  jstr(&b, "model", model[0] ? model : NULL);
  char mp[300];
  snprintf(mp, sizeof mp, "%.*s", (int)(s->method.len < 16 ? s->method.len : 16), s->method.base);
  jstr(&b, "method", mp);
  snprintf(mp, sizeof mp, "%.*s", (int)(s->path.len < 280 ? s->path.len : 280), s->path.base);
  jstr(&b, "path", mp);
  ob_buf_printf(&b, ",\"status\":%d", s->status);
  jstr(&b, "admission", x->admission);
  ob_buf_printf(&b, ",\"queue_ms\":%.3f", (double)x->queue_us / 1000.0);
  if (x->ttfb_us) ob_buf_printf(&b, ",\"ttfb_ms\":%.3f", (double)(x->ttfb_us - s->start_us) / 1000.0);
  else ob_buf_append_str(&b, ",\"ttfb_ms\":null");
  ob_buf_printf(&b, ",\"total_ms\":%.3f", (double)(now_us - s->start_us) / 1000.0);
  bool actual = x->usage_prompt || x->usage_completion;
  uint64_t prompt = actual ? x->usage_prompt : x->prompt_tokens_est;
  uint64_t completion = actual ? x->usage_completion : 0;
  ob_buf_printf(&b, ",\"prompt_tokens\":%llu,\"completion_tokens\":%llu", (unsigned long long)prompt,
                (unsigned long long)completion);
  jstr(&b, "tokens", actual ? "actual" : x->prompt_tokens_est ? "estimated" : "none");
  jstr(&b, "cache", x->cache_outcome);
  if (x->cache_tokens_saved) ob_buf_printf(&b, ",\"tokens_saved\":%llu", (unsigned long long)x->cache_tokens_saved);
  ob_buf_printf(&b, ",\"bytes_in\":%llu,\"bytes_out\":%llu", (unsigned long long)(s->body ? s->body->buf.len : 0),
                (unsigned long long)s->bytes_out);
  jstr(&b, "upstream", x->endpoint);
  if (x->grpc && x->grpc_status >= 0) ob_buf_printf(&b, ",\"grpc_status\":%d", x->grpc_status);
  if (x->note) jstr(&b, "note", x->note);
  ob_buf_printf(&b, ",\"completed\":%s}\n", completed ? "true" : "false");

  ob_bg_lock(&l->bg);
  if (l->pending.len + b.len > l->buffer_bytes) {
    l->dropped++;
  } else {
    ob_buf_append(&l->pending, b.base, b.len);
    l->lines++;
    ob_bg_kick(&l->bg);
  }
  ob_bg_unlock(&l->bg);
  ob_buf_dispose(&b);
}
