/*
 * unit.h - the tiny test runner of tests/unit/.
 *
 * Each test file is one program: it calls CHECK_* macros, which count passes and failures
 * and print every failure with the expression and both values, then returns unit_done(),
 * which prints "N passed, N failed" and gives the exit status.  Also: command-line
 * arguments naming tokenizer files (--clip DIR, --t5 FILE, each repeatable).
 */
#ifndef FX_UNIT_H
#define FX_UNIT_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int unit_passed, unit_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            unit_passed++;                                                                         \
        } else {                                                                                   \
            unit_failed++;                                                                         \
            fprintf(stderr, "%s:%d: FAIL %s\n", __FILE__, __LINE__, #cond);                        \
        }                                                                                          \
    } while (0)

#define CHECK_INT(got, want)                                                                       \
    do {                                                                                           \
        long long got_ = (long long)(got), want_ = (long long)(want);                              \
        if (got_ == want_) {                                                                       \
            unit_passed++;                                                                         \
        } else {                                                                                   \
            unit_failed++;                                                                         \
            fprintf(stderr, "%s:%d: FAIL %s == %s: got %lld, want %lld\n", __FILE__, __LINE__,     \
                    #got, #want, got_, want_);                                                     \
        }                                                                                          \
    } while (0)

#define CHECK_STR(got, want)                                                                       \
    do {                                                                                           \
        const char *got_ = (got), *want_ = (want);                                                 \
        if (got_ && want_ && strcmp(got_, want_) == 0) {                                           \
            unit_passed++;                                                                         \
        } else {                                                                                   \
            unit_failed++;                                                                         \
            fprintf(stderr, "%s:%d: FAIL %s == %s: got \"%s\", want \"%s\"\n", __FILE__, __LINE__, \
                    #got, #want, got_ ? got_ : "(null)", want_ ? want_ : "(null)");                \
        }                                                                                          \
    } while (0)

/* Compares two int32 arrays; on a difference prints the first index and both values. */
#define CHECK_IDS(got, n_got, want, n_want)                                                        \
    unit_check_ids(__FILE__, __LINE__, #got, (got), (n_got), (want), (n_want))

static inline void unit_check_ids(const char *file, int line, const char *what, const int32_t *got,
                                  size_t n_got, const int32_t *want, size_t n_want)
{
    size_t i = 0;
    while (i < n_got && i < n_want && got[i] == want[i])
        i++;
    if (i == n_got && i == n_want) {
        unit_passed++;
        return;
    }
    unit_failed++;
    fprintf(stderr,
            "%s:%d: FAIL %s: length %zu vs %zu, first difference at %zu: got %" PRId32
            ", want %" PRId32 "\n",
            file, line, what, n_got, n_want, i, i < n_got ? got[i] : -1, i < n_want ? want[i] : -1);
}

static inline int unit_done(void)
{
    printf("%d passed, %d failed\n", unit_passed, unit_failed);
    return unit_failed ? 1 : 0;
}

#define UNIT_MAX_FILES 8

struct unit_args {
    const char *clip[UNIT_MAX_FILES];
    int n_clip;
    const char *t5[UNIT_MAX_FILES];
    int n_t5;
    const char *model; /* --model DIR: an exported model dir (the tiny one in make test) */
};

/* Parses --clip DIR / --t5 FILE / --model DIR; exits with status 2 on anything else. */
static inline struct unit_args unit_parse_args(int argc, char **argv)
{
    struct unit_args a = {0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--clip") == 0 && i + 1 < argc && a.n_clip < UNIT_MAX_FILES) {
            a.clip[a.n_clip++] = argv[++i];
        } else if (strcmp(argv[i], "--t5") == 0 && i + 1 < argc && a.n_t5 < UNIT_MAX_FILES) {
            a.t5[a.n_t5++] = argv[++i];
        } else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            a.model = argv[++i];
        } else {
            fprintf(stderr, "usage: %s [--clip DIR]... [--t5 FILE]... [--model DIR]\n", argv[0]);
            exit(2);
        }
    }
    return a;
}

/* Deterministic pseudo-random bytes (xorshift), for large inputs. */
static inline void unit_fill_random(char *buf, size_t n, uint64_t seed)
{
    uint64_t x = seed ? seed : 88172645463325252ULL;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (char)(x >> 24);
    }
}

#endif
