/*
 * fuzz_tok_t5.c - libFuzzer target for the T5 tokenizer (core/tok_t5.h), reached as the
 * programs reach it: through the forwarders of core/tok_t5_dl.c and the libfluxt5.so plugin
 * (the fuzz build makes an instrumented one in build/fuzz/lib/, found beside the program or
 * through $FLUXCGI_LIBDIR).  The input is a prompt's bytes.  The SentencePiece model comes
 * from $FLUX_FUZZ_T5, default build/tok-tiny/tokenizer_2/spiece.model.
 *
 * Checked beyond memory safety: tokenize and encode agree (encode = the pieces, eos, cut to
 * 512 with eos last, pad after), and every id is inside the vocabulary.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/tok_t5.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tok_t5 *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *model = getenv("FLUX_FUZZ_T5");
    char msg[1024];

    (void)argc;
    (void)argv;
    if (!model || !*model)
        model = "build/tok-tiny/tokenizer_2/spiece.model";
    if (tok_t5_load(model, &tok, msg, sizeof(msg)) != 0) {
        fprintf(stderr, "fuzz_tok_t5: %s (set FLUX_FUZZ_T5 to a spiece.model)\n", msg);
        exit(1);
    }
    return 0;
}

static void fail(const char *why, size_t a, size_t b)
{
    fprintf(stderr, "fuzz_tok_t5: %s (%zu, %zu)\n", why, a, b);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int32_t *raw = NULL, ids[TOK_T5_LEN];
    size_t n = 0, n_tokens = 0, i, vocab = tok_t5_vocab_size(tok);
    int32_t eos = tok_t5_eos(tok), pad = tok_t5_pad(tok);
    /* exactly size bytes: ASan sees any read past the prompt */
    char *text = malloc(size ? size : 1);

    if (!text)
        return 0;
    memcpy(text, data, size);
    if (tok_t5_tokenize(tok, size ? text : NULL, size, &raw, &n) != 0)
        fail("tokenize failed", size, 0);
    if (tok_t5_encode(tok, size ? text : NULL, size, ids, &n_tokens) != 0)
        fail("encode failed", size, 0);
    if (n_tokens != n + 1)
        fail("encode counts other pieces than tokenize", n_tokens, n + 1);
    for (i = 0; i < n; i++)
        if (raw[i] < 0 || (size_t)raw[i] >= vocab)
            fail("id outside the vocabulary at", i, (size_t)raw[i]);
    for (i = 0; i < n && i < TOK_T5_LEN - 1; i++)
        if (ids[i] != raw[i])
            fail("encode and tokenize differ at", i, (size_t)raw[i]);
    if (ids[n < TOK_T5_LEN - 1 ? n : TOK_T5_LEN - 1] != eos)
        fail("no eos after the pieces", n, 0);
    for (i = n + 1; i < TOK_T5_LEN; i++)
        if (ids[i] != pad)
            fail("padding is not pad at", i, (size_t)ids[i]);
    free(raw);
    free(text);
    return 0;
}
