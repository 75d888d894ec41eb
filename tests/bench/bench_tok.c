/*
 * bench_tok.c - tokenizer speed on a corpus (one prompt per line), for `make bench`.
 *
 *   bench_tok --clip DIR --t5 FILE --corpus FILE [--seconds S]
 *
 * Prints one JSON object: prompts in the corpus, and prompts/s for CLIP cold (a fresh
 * tokenizer, empty word cache, one pass), CLIP warm and T5 (passes repeated for at least
 * S seconds, default 2).  Encoding is the full tok_*_encode (ids, padding, count).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../core/tok_clip.h"
#include "../../core/tok_t5.h"

struct corpus {
    char **line;
    size_t *len;
    size_t n;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int corpus_read(const char *path, struct corpus *c)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0;
    ssize_t got;

    if (!f)
        return -1;
    while ((got = getline(&buf, &cap, f)) >= 0) {
        size_t n = (size_t)got;
        if (n && buf[n - 1] == '\n')
            n--;
        char **l = realloc(c->line, (c->n + 1) * sizeof(*l));
        size_t *k = realloc(c->len, (c->n + 1) * sizeof(*k));
        if (l)
            c->line = l;
        if (k)
            c->len = k;
        if (!l || !k || !(c->line[c->n] = malloc(n + 1)))
            break;
        memcpy(c->line[c->n], buf, n);
        c->len[c->n++] = n;
    }
    free(buf);
    fclose(f);
    return c->n ? 0 : -1;
}

static double rate_clip(struct tok_clip *tok, const struct corpus *c, double seconds)
{
    int32_t ids[TOK_CLIP_LEN];
    size_t done = 0, n;
    double t0 = now(), t;

    do {
        for (size_t i = 0; i < c->n; i++)
            tok_clip_encode(tok, c->line[i], c->len[i], ids, &n);
        done += c->n;
        t = now() - t0;
    } while (t < seconds);
    return (double)done / t;
}

static double rate_t5(struct tok_t5 *tok, const struct corpus *c, double seconds)
{
    int32_t ids[TOK_T5_LEN];
    size_t done = 0, n;
    double t0 = now(), t;

    do {
        for (size_t i = 0; i < c->n; i++)
            tok_t5_encode(tok, c->line[i], c->len[i], ids, &n);
        done += c->n;
        t = now() - t0;
    } while (t < seconds);
    return (double)done / t;
}

int main(int argc, char **argv)
{
    const char *clip_dir = NULL, *t5_file = NULL, *corpus_file = NULL;
    double seconds = 2.0;
    struct corpus c = {0};
    struct tok_clip *clip = NULL;
    struct tok_t5 *t5 = NULL;
    char msg[512];

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--clip") == 0)
            clip_dir = argv[i + 1];
        else if (strcmp(argv[i], "--t5") == 0)
            t5_file = argv[i + 1];
        else if (strcmp(argv[i], "--corpus") == 0)
            corpus_file = argv[i + 1];
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
    }
    if (!clip_dir || !t5_file || !corpus_file) {
        fprintf(stderr, "usage: bench_tok --clip DIR --t5 FILE --corpus FILE [--seconds S]\n");
        return 2;
    }
    if (corpus_read(corpus_file, &c) < 0) {
        fprintf(stderr, "bench_tok: cannot read '%s'\n", corpus_file);
        return 1;
    }
    if (tok_clip_load(clip_dir, &clip, msg, sizeof(msg)) < 0 ||
        tok_t5_load(t5_file, &t5, msg, sizeof(msg)) < 0) {
        fprintf(stderr, "bench_tok: %s\n", msg);
        return 1;
    }
    double cold = rate_clip(clip, &c, 0.0);
    double warm = rate_clip(clip, &c, seconds);
    double t5r = rate_t5(t5, &c, seconds);
    printf("{\"prompts\":%zu,\"clip_cold\":%.1f,\"clip_warm\":%.1f,\"t5\":%.1f}\n", c.n, cold, warm,
           t5r);
    tok_clip_free(clip);
    tok_t5_free(t5);
    for (size_t i = 0; i < c.n; i++)
        free(c.line[i]);
    free(c.line);
    free(c.len);
    return 0;
}
