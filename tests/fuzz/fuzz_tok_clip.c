/*
 * fuzz_tok_clip.c - libFuzzer target for the CLIP tokenizer (core/tok_clip.c): the input is a
 * prompt's bytes (any bytes: invalid UTF-8 and NULs included).  The vocabulary folder
 * (vocab.json + merges.txt) comes from $FLUX_FUZZ_CLIP, default build/tok-tiny/tokenizer
 * (made by `make build/tok-tiny/.stamp`; `make fuzz` sets it).
 *
 * Checked beyond memory safety: tokenize and encode agree (encode = bos, the tokens, eos,
 * cut to 77 with eos last, eos padding).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/tok_clip.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tok_clip *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("FLUX_FUZZ_CLIP");
    char msg[512];

    (void)argc;
    (void)argv;
    if (!dir || !*dir)
        dir = "build/tok-tiny/tokenizer";
    if (tok_clip_load(dir, &tok, msg, sizeof(msg)) != 0) {
        fprintf(stderr, "fuzz_tok_clip: %s (set FLUX_FUZZ_CLIP to a CLIP tokenizer folder)\n", msg);
        exit(1);
    }
    return 0;
}

static void fail(const char *why, size_t a, size_t b)
{
    fprintf(stderr, "fuzz_tok_clip: %s (%zu, %zu)\n", why, a, b);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int32_t *raw = NULL, ids[TOK_CLIP_LEN];
    size_t n = 0, n_tokens = 0, i;
    int32_t bos = tok_clip_bos(tok), eos = tok_clip_eos(tok);
    /* exactly size bytes: ASan sees any read past the prompt */
    char *text = malloc(size ? size : 1);

    if (!text)
        return 0;
    memcpy(text, data, size);
    if (tok_clip_tokenize(tok, size ? text : NULL, size, &raw, &n) != 0)
        fail("tokenize failed", size, 0);
    if (tok_clip_encode(tok, size ? text : NULL, size, ids, &n_tokens) != 0)
        fail("encode failed", size, 0);
    if (n_tokens != n + 2)
        fail("encode counts other tokens than tokenize", n_tokens, n + 2);
    if (ids[0] != bos || ids[TOK_CLIP_LEN - 1] != eos)
        fail("no bos first or eos last", (size_t)ids[0], (size_t)ids[TOK_CLIP_LEN - 1]);
    for (i = 0; i < n && i < TOK_CLIP_LEN - 2; i++)
        if (ids[i + 1] != raw[i] || raw[i] < 0)
            fail("encode and tokenize differ at", i, (size_t)raw[i]);
    for (i = n + 1; i < TOK_CLIP_LEN; i++)
        if (ids[i] != eos)
            fail("padding is not eos at", i, (size_t)ids[i]);
    free(raw);
    free(text);
    return 0;
}
