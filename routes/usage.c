/*
 * usage.c: finds the token usage in an OpenAI-style response as its bytes
 * stream past, without buffering or copying them. Fed span by span (any
 * split), it matches `"usage"` `:` `{ ... }` and reads the integers of
 * "prompt_tokens" and "completion_tokens" inside that object; the last
 * complete usage object wins (the final SSE usage chunk, or the body's). It
 * also counts SSE events (blank-line terminators) so an aborted stream can
 * be charged for what was delivered. A tiny state machine rather than a JSON
 * parser because the body is never held in one piece.
 */
#include "routes.h"

enum {
  S_SCAN,      /* looking for the "usage" key */
  S_COLON,     /* after the key: white space then ':' */
  S_OPEN,      /* after ':': white space then '{' (anything else: not an object) */
  S_OBJ,       /* inside the usage object, looking for a key */
  S_KEY,       /* inside a key string */
  S_KCOLON,    /* after a key: ':' */
  S_VALUE,     /* reading a value */
};

static const char USAGE_KEY[] = "\"usage\"";

void ob_usage_init(ob_usage_t *u) {
  memset(u, 0, sizeof *u);
}

static void value_done(ob_usage_t *u) {
  if (u->key_id == 1) u->cur_prompt = u->num;
  else if (u->key_id == 2) u->cur_completion = u->num;
  u->key_id = 0;
  u->num = 0;
  u->num_digits = 0;
}

/* SSE events end with a blank line: a line feed, optional carriage
 * returns, a line feed. Counted over the whole span with memchr, apart from
 * the usage scan, because most bytes are neither. */
static void count_events(ob_usage_t *u, const char *p, size_t n) {
  size_t i = 0;
  for (;;) {
    const char *lf = memchr(p + i, '\n', n - i);
    size_t stop = lf ? (size_t)(lf - p) : n;
    size_t k = stop;
    while (k > i && p[k - 1] == '\r') k--;
    if (k > i) u->last_nl = false;
    if (!lf) return;
    if (u->last_nl) u->events++;
    u->last_nl = true;
    i = stop + 1;
  }
}

/* Where the span ends inside a possible "usage" key: the longest tail of
 * p that is a proper prefix of the key (its only border is the quote, so
 * this is what a byte-by-byte match would have reached). */
static size_t partial_key(const char *p, size_t n) {
  size_t most = n < sizeof USAGE_KEY - 2 ? n : sizeof USAGE_KEY - 2;
  for (size_t k = most; k > 0; k--)
    if (memcmp(p + n - k, USAGE_KEY, k) == 0) return k;
  return 0;
}

void ob_usage_feed(ob_usage_t *u, const char *p, size_t n) {
  count_events(u, p, n);
  for (size_t i = 0; i < n; i++) {
    if (u->state == S_SCAN && u->match == 0) {
      /* Not inside a key match: jump to the next whole key. */
      const char *q = memmem(p + i, n - i, USAGE_KEY, sizeof USAGE_KEY - 1);
      if (!q) {
        u->match = partial_key(p + i, n - i);
        return;
      }
      i = (size_t)(q - p) + sizeof USAGE_KEY - 2;
      u->state = S_COLON;
      continue;
    }
    char c = p[i];
    switch (u->state) {
    case S_SCAN:
      if (c == USAGE_KEY[u->match]) {
        if (++u->match == sizeof USAGE_KEY - 1) u->state = S_COLON, u->match = 0;
      } else {
        u->match = c == USAGE_KEY[0] ? 1 : 0;
      }
      break;
    case S_COLON:
      if (c == ':') u->state = S_OPEN;
      else if (c != ' ' && c != '\t' && c != '\r' && c != '\n') u->state = S_SCAN;
      break;
    case S_OPEN:
      if (c == '{') u->state = S_OBJ, u->cur_prompt = u->cur_completion = -1, u->key_len = 0;
      else if (c != ' ' && c != '\t' && c != '\r' && c != '\n') u->state = S_SCAN;
      break;
    case S_OBJ:
      if (c == '"') u->state = S_KEY, u->key_len = 0, u->key_overflow = false;
      else if (c == '}') {
        if (u->cur_prompt >= 0 || u->cur_completion >= 0) {
          u->found = true;
          u->prompt_tokens = u->cur_prompt > 0 ? (uint64_t)u->cur_prompt : 0;
          u->completion_tokens = u->cur_completion > 0 ? (uint64_t)u->cur_completion : 0;
        }
        u->state = S_SCAN;
      }
      break;
    case S_KEY:
      if (c == '"') {
        u->key_id = 0;
        if (!u->key_overflow && u->key_len == 13 && memcmp(u->key, "prompt_tokens", 13) == 0) u->key_id = 1;
        if (!u->key_overflow && u->key_len == 17 && memcmp(u->key, "completion_tokens", 17) == 0) u->key_id = 2;
        u->state = S_KCOLON;
      } else if (u->key_len < sizeof u->key) {
        u->key[u->key_len++] = c;
      } else {
        u->key_overflow = true;
      }
      break;
    case S_KCOLON:
      if (c == ':') u->state = S_VALUE, u->num = 0, u->num_digits = 0, u->depth = 0, u->in_str = false;
      break;
    case S_VALUE:
      /* Numbers are read; nested objects and strings are skipped (e.g.
       * prompt_tokens_details). */
      if (u->in_str) {
        if (u->esc) u->esc = false;
        else if (c == '\\') u->esc = true;
        else if (c == '"') u->in_str = false;
      } else if (c == '"') {
        u->in_str = true;
      } else if (c == '{' || c == '[') {
        u->depth++;
      } else if ((c == '}' || c == ']') && u->depth > 0) {
        u->depth--;
      } else if (u->depth == 0 && c >= '0' && c <= '9') {
        if (u->num_digits < 18) u->num = u->num * 10 + (c - '0');
        u->num_digits++;
      } else if (u->depth == 0 && (c == ',' || c == '}')) {
        if (u->num_digits == 0) u->key_id = 0; /* null or not a number */
        value_done(u);
        if (c == '}') {
          u->state = S_OBJ;
          i--; /* let S_OBJ see the closing brace */
          continue;
        }
        u->state = S_OBJ;
      }
      break;
    }
  }
}
