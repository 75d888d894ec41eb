/*
 * test_tok_clip.c - the CLIP tokenizer: BPE mechanics on a vocabulary written here, loading
 * errors, and, for each --clip folder given, encoding rules and bad input (invalid UTF-8,
 * NUL, a 1 MB prompt, a 100 KB word), plus threads sharing one tokenizer.
 */
#include <pthread.h>
#include <unistd.h>

#include "../../core/err.h"
#include "../../core/text.h"
#include "../../core/tok_clip.h"
#include "unit.h"

static char tmpdir[] = "/tmp/fx-test-clip-XXXXXX";

static void write_file(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
}

/* The byte symbol of b (CLIP's bytes_to_unicode), as UTF-8. */
static void byte_symbol(unsigned b, char *out)
{
    unsigned extra = 0;
    uint32_t cp = b;
    if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) {
        for (unsigned c = 0; c < b; c++)
            extra +=
                !((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF));
        cp = 256 + extra;
    }
    out[text_utf8_put(cp, out)] = '\0';
}

/* A vocabulary laid out as CLIP's (bytes, bytes</w>, merges, specials) with these merges. */
static const char *const mini_merges[] = {"a a", "b c</w>", "aa aa", "a a</w>", "x y"};
enum { MINI_AA = 512, MINI_BC_END, MINI_AAAA, MINI_AA_END, MINI_XY, MINI_BOS, MINI_EOS };

static void write_mini_vocab(const char *merges_text)
{
    static char json[64 * 1024];
    char sym[8];
    size_t o = 0;
    int id = 0;

    o += (size_t)snprintf(json + o, sizeof(json) - o, "{");
    for (int end = 0; end < 2; end++) {
        for (unsigned b = 0; b < 256; b++) {
            byte_symbol(b, sym);
            const char *esc = strcmp(sym, "\"") == 0   ? "\\\""
                              : strcmp(sym, "\\") == 0 ? "\\\\"
                                                       : sym;
            o += (size_t)snprintf(json + o, sizeof(json) - o, "\"%s%s\": %d, ", esc,
                                  end ? "</w>" : "", id++);
        }
    }
    o += (size_t)snprintf(json + o, sizeof(json) - o,
                          "\"aa\": 512, \"bc</w>\": 513, \"aaaa\": 514, \"aa</w>\": 515, "
                          "\"xy\": 516, \"<|startoftext|>\": 517, \"<|endoftext|>\": 518}\n");
    write_file("vocab.json", json);
    write_file("merges.txt", merges_text);
}

static void check_tokens(struct tok_clip *tok, const char *text, const int32_t *want, size_t n_want,
                         int line)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tok_clip_tokenize(tok, text, strlen(text), &ids, &n);
    if (rc != 0) {
        unit_failed++;
        fprintf(stderr, "test_tok_clip.c:%d: FAIL tokenize(\"%s\") = %d\n", line, text, rc);
        return;
    }
    unit_check_ids("test_tok_clip.c", line, text, ids, n, want, n_want);
    free(ids);
}

#define TOKENS(tok, text, ...)                                                                     \
    do {                                                                                           \
        static const int32_t w_[] = {__VA_ARGS__};                                                 \
        check_tokens(tok, text, w_, sizeof(w_) / sizeof(w_[0]), __LINE__);                         \
    } while (0)

static void test_mini(void)
{
    struct tok_clip *tok = NULL;
    char msg[256], merges[256] = "#version: 0.2\n";
    int32_t ids[TOK_CLIP_LEN];
    size_t n = 0;

    for (size_t i = 0; i < sizeof(mini_merges) / sizeof(mini_merges[0]); i++) {
        strcat(merges, mini_merges[i]);
        strcat(merges, "\n");
    }
    write_mini_vocab(merges);
    CHECK_INT(tok_clip_load(tmpdir, &tok, msg, sizeof(msg)), 0);
    if (!tok) {
        fprintf(stderr, "load: %s\n", msg);
        return;
    }
    CHECK_INT(tok_clip_n_merges(tok), 5);
    CHECK_INT(tok_clip_bos(tok), MINI_BOS);
    CHECK_INT(tok_clip_eos(tok), MINI_EOS);

    /* The mini vocabulary gives byte b the id b, and b + "</w>" the id 256 + b. */
    TOKENS(tok, "a", 256 + 'a');
    TOKENS(tok, "aa", MINI_AA_END);             /* a a</w>: rank 3 */
    TOKENS(tok, "aaa", MINI_AA, 256 + 'a');     /* (a a) first, then no (aa a</w>) */
    TOKENS(tok, "aaaa", MINI_AA, MINI_AA_END);  /* aa a a</w>: left to right, then rank 3 */
    TOKENS(tok, "aaaaa", MINI_AAAA, 256 + 'a'); /* aa aa a</w> -> aaaa a</w> */
    TOKENS(tok, "bc", MINI_BC_END);
    TOKENS(tok, "BC xyz", MINI_BC_END, MINI_XY, 256 + 'z');
    TOKENS(tok, "<|endoftext|>a<|startoftext|>", MINI_EOS, 256 + 'a', MINI_BOS);
    TOKENS(tok, "it's", 'i', 256 + 't', '\'', 256 + 's');
    TOKENS(tok, "12", 256 + '1', 256 + '2');
    TOKENS(tok, "&amp;", 256 + '&');
    /* U+FFFD = EF BF BD, one pre-token of three byte symbols. */
    TOKENS(tok, "a\xff", 256 + 'a', 0xEF, 0xBF, 256 + 0xBD);

    /* Truncation and padding: 100 words of "bc". */
    char big[400] = "";
    for (int i = 0; i < 100; i++)
        strcat(big, "bc ");
    CHECK_INT(tok_clip_encode(tok, big, strlen(big), ids, &n), 0);
    CHECK_INT(n, 102);
    CHECK_INT(ids[0], MINI_BOS);
    CHECK_INT(ids[75], MINI_BC_END);
    CHECK_INT(ids[76], MINI_EOS);
    CHECK_INT(tok_clip_encode(tok, "", 0, ids, &n), 0);
    CHECK_INT(n, 2);
    CHECK_INT(ids[1], MINI_EOS);
    CHECK_INT(ids[76], MINI_EOS);
    CHECK_INT(tok_clip_encode(tok, NULL, 0, ids, &n), 0);
    CHECK_INT(tok_clip_encode(tok, NULL, 1, ids, &n), FX_EINVAL);
    tok_clip_free(tok);
}

static void test_load_errors(void)
{
    struct tok_clip *tok = (struct tok_clip *)1;
    char msg[256];

    CHECK_INT(tok_clip_load("/nonexistent/fx", &tok, msg, sizeof(msg)), FX_ENOENT);
    CHECK(tok == NULL);
    CHECK(strstr(msg, "vocab.json") != NULL);

    write_mini_vocab("#version: 0.2\na q\n"); /* "aq" is not in the vocabulary */
    CHECK_INT(tok_clip_load(tmpdir, &tok, msg, sizeof(msg)), FX_EFORMAT);
    CHECK(strstr(msg, "line 2") != NULL);

    write_mini_vocab("#version: 0.2\na a a\n");
    CHECK_INT(tok_clip_load(tmpdir, &tok, msg, sizeof(msg)), FX_EFORMAT);

    write_mini_vocab("#version: 0.2\na a\n\n\n");
    CHECK_INT(tok_clip_load(tmpdir, &tok, msg, sizeof(msg)), 0); /* trailing blank lines */
    tok_clip_free(tok);

    write_file("vocab.json", "{\"a\": 1,");
    CHECK_INT(tok_clip_load(tmpdir, &tok, msg, sizeof(msg)), FX_EFORMAT);
    write_file("vocab.json", "[1, 2]");
    CHECK_INT(tok_clip_load(tmpdir, &tok, msg, sizeof(msg)), FX_EFORMAT);
    write_file("vocab.json", "{\"a\": 1, \"b\": 1}");
    CHECK_INT(tok_clip_load(tmpdir, &tok, msg, sizeof(msg)), FX_EFORMAT);
    write_file("vocab.json", "{\"a\": 1}");
    CHECK_INT(tok_clip_load(tmpdir, &tok, msg, sizeof(msg)), FX_EFORMAT); /* no byte symbols */
    CHECK(tok == NULL);
}

/* ---- real folders ------------------------------------------------------------------------ */

struct thread_job {
    struct tok_clip *tok;
    const char *text;
    int32_t ids[TOK_CLIP_LEN];
    size_t n;
    int rc;
};

static void *thread_main(void *arg)
{
    struct thread_job *j = arg;
    for (int r = 0; r < 20 && j->rc == 0; r++)
        j->rc = tok_clip_encode(j->tok, j->text, strlen(j->text), j->ids, &j->n);
    return NULL;
}

/* ids is a well-formed encoding: bos, then no bos-only structure broken, eos padding. */
static void check_shape(const struct tok_clip *tok, const int32_t *ids, size_t n, int line)
{
    int ok = ids[0] == tok_clip_bos(tok) && n >= 2;
    size_t last = n < TOK_CLIP_LEN ? n - 1 : TOK_CLIP_LEN - 1;
    for (size_t i = last; i < TOK_CLIP_LEN; i++)
        ok = ok && ids[i] == tok_clip_eos(tok);
    if (ok) {
        unit_passed++;
    } else {
        unit_failed++;
        fprintf(stderr, "test_tok_clip.c:%d: FAIL shape: n=%zu ids[0]=%d ids[76]=%d\n", line, n,
                ids[0], ids[TOK_CLIP_LEN - 1]);
    }
}

static void test_folder(const char *dir)
{
    struct tok_clip *tok = NULL;
    char msg[256];
    int32_t ids[TOK_CLIP_LEN], ids2[TOK_CLIP_LEN];
    size_t n = 0, n2 = 0;

    printf("  folder %s\n", dir);
    CHECK_INT(tok_clip_load(dir, &tok, msg, sizeof(msg)), 0);
    if (!tok) {
        fprintf(stderr, "load: %s\n", msg);
        return;
    }
    if (tok_clip_bos(tok) == 49406) {
        static const int32_t cat[] = {49406, 320, 1125, 539, 320, 2368, 49407};
        CHECK_INT(tok_clip_encode(tok, "a photo of a cat", 16, ids, &n), 0);
        CHECK_IDS(ids, 7, cat, 7);
        CHECK_INT(n, 7);
        CHECK_INT(ids[76], 49407);
    }

    /* Invalid UTF-8 is the same as the replacement character. */
    CHECK_INT(tok_clip_encode(tok,
                              "a\xff"
                              "b \xe2\x82",
                              6, ids, &n),
              0);
    CHECK_INT(tok_clip_encode(tok,
                              "a\xef\xbf\xbd"
                              "b \xef\xbf\xbd",
                              9, ids2, &n2),
              0);
    CHECK_IDS(ids, TOK_CLIP_LEN, ids2, TOK_CLIP_LEN);
    CHECK_INT(n, n2);

    /* NUL is a character, not the end of the prompt. */
    CHECK_INT(tok_clip_encode(tok, "a\0b", 3, ids, &n), 0);
    CHECK_INT(tok_clip_encode(tok, "a", 1, ids2, &n2), 0);
    CHECK(n > n2);
    check_shape(tok, ids, n, __LINE__);

    /* 1 MB of random bytes. */
    size_t big = 1 << 20;
    char *buf = malloc(big);
    unit_fill_random(buf, big, 42);
    CHECK_INT(tok_clip_encode(tok, buf, big, ids, &n), 0);
    CHECK(n > TOK_CLIP_LEN);
    check_shape(tok, ids, n, __LINE__);

    /* A 100 KB word: letters without a space, both cycling and repeated. */
    size_t w = 100 * 1024;
    for (size_t i = 0; i < w; i++)
        buf[i] = (char)('a' + (i * 7 + i / 26) % 26);
    CHECK_INT(tok_clip_encode(tok, buf, w, ids, &n), 0);
    CHECK(n > 2 && n <= w + 2);
    check_shape(tok, ids, n, __LINE__);
    memset(buf, 'a', w);
    CHECK_INT(tok_clip_encode(tok, buf, w, ids, &n), 0);
    CHECK(n > 2 && n <= w + 2);
    check_shape(tok, ids, n, __LINE__);
    /* 1 MB of "&amp;" and white space: the unescaping and collapsing paths. */
    for (size_t i = 0; i + 6 <= big; i += 6)
        memcpy(buf + i, "&amp; ", 6);
    CHECK_INT(tok_clip_encode(tok, buf, big / 6 * 6, ids, &n), 0);
    CHECK_INT(n, big / 6 + 2);
    free(buf);

    /* Threads sharing one tokenizer (and its cache) get the single-threaded answer. */
    static const char *const texts[] = {"a photo of a cat", "the quick brown fox jumps",
                                        "a photo of a dog at night", "an astronaut riding a horse"};
    struct thread_job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct thread_job){.tok = tok, .text = texts[i]};
        CHECK_INT(pthread_create(&th[i], NULL, thread_main, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_INT(jobs[i].rc, 0);
        CHECK_INT(tok_clip_encode(tok, texts[i], strlen(texts[i]), ids, &n), 0);
        CHECK_IDS(jobs[i].ids, TOK_CLIP_LEN, ids, TOK_CLIP_LEN);
    }
    tok_clip_free(tok);
}

int main(int argc, char **argv)
{
    struct unit_args a = unit_parse_args(argc, argv);

    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    test_mini();
    test_load_errors();
    for (int i = 0; i < a.n_clip; i++)
        test_folder(a.clip[i]);
    tok_clip_free(NULL);

    char path[256];
    snprintf(path, sizeof(path), "%s/vocab.json", tmpdir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/merges.txt", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    return unit_done();
}
