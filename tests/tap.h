/*
 * tap.h: a tiny TAP producer for unit tests. Each test binary prints
 * "ok N - name" / "not ok N - name" lines and a plan; meson reads it with
 * protocol : 'tap'. Header-only so every test links only its own module.
 */
#ifndef OB_TAP_H
#define OB_TAP_H

#include <stdio.h>
#include <string.h>

static int tap_n, tap_failed;

#define TAP_CHECK(cond, ...)                                                     \
  do {                                                                           \
    int tap_ok_c_ = !!(cond); /* evaluated once: conditions may have effects */ \
    ++tap_n;                                                                     \
    if (tap_ok_c_) {                                                             \
      printf("ok %d - ", tap_n);                                                 \
    } else {                                                                     \
      ++tap_failed;                                                              \
      printf("not ok %d - ", tap_n);                                             \
    }                                                                            \
    printf(__VA_ARGS__);                                                         \
    printf("\n");                                                                \
    if (!tap_ok_c_) printf("#   failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
  } while (0)

#define TAP_EQ_INT(a, b, name)                                                   \
  do {                                                                           \
    long long tap_a_ = (long long)(a), tap_b_ = (long long)(b);                  \
    TAP_CHECK(tap_a_ == tap_b_, "%s", name);                                     \
    if (tap_a_ != tap_b_) printf("#   got %lld, want %lld\n", tap_a_, tap_b_);   \
  } while (0)

#define TAP_EQ_STR(a, b, name)                                                   \
  do {                                                                           \
    const char *tap_a_ = (a), *tap_b_ = (b);                                     \
    int tap_ok_ = tap_a_ && tap_b_ && strcmp(tap_a_, tap_b_) == 0;               \
    TAP_CHECK(tap_ok_, "%s", name);                                              \
    if (!tap_ok_) printf("#   got \"%s\", want \"%s\"\n", tap_a_ ? tap_a_ : "(null)", tap_b_ ? tap_b_ : "(null)"); \
  } while (0)

static inline int tap_done(void) {
  printf("1..%d\n", tap_n);
  return tap_failed ? 1 : 0;
}

#endif
