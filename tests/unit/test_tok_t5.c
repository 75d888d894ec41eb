/*
 * test_tok_t5.c - the T5 tokenizer over SentencePiece: eos, padding, truncation, counts,
 * invalid UTF-8, NUL, a 1 MB prompt, load errors; the "a photo of a cat" anchor when the
 * real 32000-piece model is given.  Models come from --t5 FILE arguments.
 */
#include <unistd.h>

#include "../../core/err.h"
#include "../../core/tok_t5.h"
#include "unit.h"

static void test_errors(void)
{
    struct tok_t5 *tok = (struct tok_t5 *)1;
    char msg[256], path[] = "/tmp/fx-test-t5-XXXXXX";
    int fd;

    CHECK_INT(tok_t5_load("/nonexistent/spiece.model", &tok, msg, sizeof(msg)), FX_ENOENT);
    CHECK(tok == NULL);
    CHECK(strstr(msg, "/nonexistent/spiece.model") != NULL);
    fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK_INT(write(fd, "not a model", 11), 11);
        close(fd);
        CHECK_INT(tok_t5_load(path, &tok, msg, sizeof(msg)), FX_EFORMAT);
        CHECK(tok == NULL);
        unlink(path);
    }
    tok_t5_free(NULL);
}

static void test_model(const char *file)
{
    struct tok_t5 *tok = NULL;
    char msg[256];
    int32_t ids[TOK_T5_LEN], ids2[TOK_T5_LEN], *raw = NULL;
    size_t n = 0, n2 = 0, nraw = 0;

    printf("  model %s\n", file);
    CHECK_INT(tok_t5_load(file, &tok, msg, sizeof(msg)), 0);
    if (!tok) {
        fprintf(stderr, "load: %s\n", msg);
        return;
    }
    int32_t eos = tok_t5_eos(tok), pad = tok_t5_pad(tok);
    CHECK_INT(eos, 1);
    CHECK_INT(pad, 0);

    if (tok_t5_vocab_size(tok) == 32000) {
        static const int32_t cat[] = {3, 9, 1202, 13, 3, 9, 1712, 1, 0};
        CHECK_INT(tok_t5_encode(tok, "a photo of a cat", 16, ids, &n), 0);
        CHECK_IDS(ids, 9, cat, 9);
        CHECK_INT(n, 8);
    }

    /* eos after the pieces, then padding; the count includes the eos. */
    const char *p = "a photo of a cat";
    CHECK_INT(tok_t5_tokenize(tok, p, strlen(p), &raw, &nraw), 0);
    CHECK_INT(tok_t5_encode(tok, p, strlen(p), ids, &n), 0);
    CHECK_INT(n, nraw + 1);
    CHECK_IDS(ids, nraw, raw, nraw);
    CHECK_INT(ids[nraw], eos);
    CHECK_INT(ids[nraw + 1], pad);
    CHECK_INT(ids[TOK_T5_LEN - 1], pad);
    free(raw);

    CHECK_INT(tok_t5_encode(tok, "", 0, ids, &n), 0);
    CHECK_INT(n, 1);
    CHECK_INT(ids[0], eos);
    CHECK_INT(ids[1], pad);
    CHECK_INT(tok_t5_encode(tok, NULL, 1, ids, &n), FX_EINVAL);

    /* Truncation keeps 511 pieces and the eos last. */
    size_t big = 1 << 20;
    char *buf = malloc(big);
    for (size_t i = 0; i + 8 <= big; i += 8)
        memcpy(buf + i, "a photo ", 8);
    CHECK_INT(tok_t5_tokenize(tok, buf, 4000, &raw, &nraw), 0);
    CHECK_INT(tok_t5_encode(tok, buf, 4000, ids, &n), 0);
    CHECK_INT(n, nraw + 1);
    CHECK(n > TOK_T5_LEN);
    CHECK_IDS(ids, TOK_T5_LEN - 1, raw, TOK_T5_LEN - 1);
    CHECK_INT(ids[TOK_T5_LEN - 1], eos);
    free(raw);

    /* Invalid UTF-8 is the same as U+FFFD; NUL is a character. */
    CHECK_INT(tok_t5_encode(tok,
                            "a\xff"
                            "b",
                            3, ids, &n),
              0);
    CHECK_INT(tok_t5_encode(tok,
                            "a\xef\xbf\xbd"
                            "b",
                            5, ids2, &n2),
              0);
    CHECK_IDS(ids, TOK_T5_LEN, ids2, TOK_T5_LEN);
    CHECK_INT(tok_t5_encode(tok, "a\0b", 3, ids, &n), 0);
    CHECK(n >= 2);

    /* 1 MB of random bytes, and 1 MB of a repeated phrase. */
    CHECK_INT(tok_t5_encode(tok, buf, big, ids, &n), 0);
    CHECK(n > TOK_T5_LEN);
    CHECK_INT(ids[TOK_T5_LEN - 1], eos);
    unit_fill_random(buf, big, 7);
    CHECK_INT(tok_t5_encode(tok, buf, big, ids, &n), 0);
    CHECK(n > TOK_T5_LEN);
    CHECK_INT(ids[TOK_T5_LEN - 1], eos);
    free(buf);
    tok_t5_free(tok);
}

int main(int argc, char **argv)
{
    struct unit_args a = unit_parse_args(argc, argv);

    test_errors();
    for (int i = 0; i < a.n_t5; i++)
        test_model(a.t5[i]);
    return unit_done();
}
