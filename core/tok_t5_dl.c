/* The tok_t5.h API, forwarded to libfluxt5.so (see plugin.h for why it is a plugin). */
#include <pthread.h>
#include <stdio.h>

#include "err.h"
#include "plugin.h"
#include "tok_t5.h"

#define T5_FUNCS(X)                                                                                \
    X(int, tok_t5_load, (const char *, struct tok_t5 **, char *, size_t))                          \
    X(void, tok_t5_free, (struct tok_t5 *))                                                        \
    X(int, tok_t5_tokenize, (struct tok_t5 *, const char *, size_t, int32_t **, size_t *))         \
    X(int, tok_t5_encode, (struct tok_t5 *, const char *, size_t, int32_t *, size_t *))            \
    X(int32_t, tok_t5_eos, (const struct tok_t5 *))                                                \
    X(int32_t, tok_t5_pad, (const struct tok_t5 *))                                                \
    X(size_t, tok_t5_vocab_size, (const struct tok_t5 *))

static struct {
#define T5_PTR(ret, name, params) ret(*name) params;
    T5_FUNCS(T5_PTR)
#undef T5_PTR
} fn;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[1024];
static int loaded;

static void load(void)
{
    static const char *const names[] = {
#define T5_NAME(ret, name, params) #name,
        T5_FUNCS(T5_NAME)
#undef T5_NAME
    };
    loaded = plugin_open("libfluxt5.so", names, (void **)&fn, sizeof(names) / sizeof(names[0]),
                         load_error, sizeof(load_error)) != NULL;
}

static int ready(void)
{
    pthread_once(&once, load);
    return loaded;
}

int tok_t5_load(const char *spiece_model, struct tok_t5 **out, char *msg, size_t msg_len)
{
    if (!ready()) {
        if (out)
            *out = NULL;
        if (msg && msg_len)
            snprintf(msg, msg_len, "%s", load_error);
        return FX_ENOTSUP;
    }
    return fn.tok_t5_load(spiece_model, out, msg, msg_len);
}

/* A tokenizer only exists once the plugin is loaded: these need no check beyond NULL. */
void tok_t5_free(struct tok_t5 *tok)
{
    if (tok)
        fn.tok_t5_free(tok);
}

int tok_t5_tokenize(struct tok_t5 *tok, const char *text, size_t len, int32_t **ids, size_t *n)
{
    if (!ready()) {
        if (ids)
            *ids = NULL;
        if (n)
            *n = 0;
        return FX_ENOTSUP;
    }
    return fn.tok_t5_tokenize(tok, text, len, ids, n);
}

int tok_t5_encode(struct tok_t5 *tok, const char *text, size_t len, int32_t ids[TOK_T5_LEN],
                  size_t *n_tokens)
{
    if (!ready()) {
        if (n_tokens)
            *n_tokens = 0;
        return FX_ENOTSUP;
    }
    return fn.tok_t5_encode(tok, text, len, ids, n_tokens);
}

int32_t tok_t5_eos(const struct tok_t5 *tok)
{
    return tok ? fn.tok_t5_eos(tok) : -1;
}

int32_t tok_t5_pad(const struct tok_t5 *tok)
{
    return tok ? fn.tok_t5_pad(tok) : -1;
}

size_t tok_t5_vocab_size(const struct tok_t5 *tok)
{
    return tok ? fn.tok_t5_vocab_size(tok) : 0;
}
