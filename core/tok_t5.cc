// tok_t5.cc - the C API of tok_t5.h over sentencepiece::SentencePieceProcessor.
// Every extern "C" body catches everything: no exception leaves this file.
#include "tok_t5.h"

#include <sentencepiece_processor.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "err.h"
#include "text.h"

struct tok_t5 {
    sentencepiece::SentencePieceProcessor sp;
    int32_t eos = 1;
    int32_t pad = 0;
};

namespace
{

void set_msg(char *msg, size_t msg_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

void set_msg(char *msg, size_t msg_len, const char *fmt, ...)
{
    if (!msg || msg_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, msg_len, fmt, ap);
    va_end(ap);
}

// Valid UTF-8 copy of the input: invalid sequences become U+FFFD (text.h policy).
std::string sanitize(const char *text, size_t len)
{
    std::vector<uint32_t> cps(len + 1);
    size_t bad = 0;
    size_t n = text_utf8_decode(text, len, cps.data(), &bad);
    if (bad == 0)
        return std::string(text, len);
    std::string s;
    s.reserve(len + 2 * bad);
    char buf[4];
    for (size_t i = 0; i < n; i++)
        s.append(buf, text_utf8_put(cps[i], buf));
    return s;
}

} // namespace

extern "C" int tok_t5_load(const char *spiece_model, struct tok_t5 **out, char *msg, size_t msg_len)
{
    set_msg(msg, msg_len, "%s", "");
    if (!out)
        return FX_EINVAL;
    *out = nullptr;
    if (!spiece_model) {
        set_msg(msg, msg_len, "no spiece.model given");
        return FX_EINVAL;
    }
    try {
        // SentencePiece reports a missing file as a generic error: check first.
        FILE *f = std::fopen(spiece_model, "rb");
        if (!f) {
            int e = errno;
            set_msg(msg, msg_len, "cannot read '%s': %s", spiece_model, std::strerror(e));
            return e == ENOENT ? FX_ENOENT : FX_EIO;
        }
        std::fclose(f);
        auto tok = std::make_unique<tok_t5>();
        auto st = tok->sp.Load(spiece_model);
        if (!st.ok()) {
            set_msg(msg, msg_len, "'%s': not a SentencePiece model (%s)", spiece_model,
                    st.ToString().c_str());
            return FX_EFORMAT;
        }
        if (tok->sp.eos_id() < 0) {
            set_msg(msg, msg_len, "'%s': the model has no eos piece", spiece_model);
            return FX_EFORMAT;
        }
        tok->eos = tok->sp.eos_id();
        tok->pad = tok->sp.pad_id() >= 0 ? tok->sp.pad_id() : 0;
        *out = tok.release();
        return 0;
    } catch (const std::bad_alloc &) {
        set_msg(msg, msg_len, "%s", fx_strerror(FX_ENOMEM));
        return FX_ENOMEM;
    } catch (const std::exception &e) {
        set_msg(msg, msg_len, "'%s': %s", spiece_model, e.what());
        return FX_EINTERNAL;
    } catch (...) {
        set_msg(msg, msg_len, "'%s': unknown exception", spiece_model);
        return FX_EINTERNAL;
    }
}

extern "C" void tok_t5_free(struct tok_t5 *tok)
{
    delete tok;
}

extern "C" int tok_t5_tokenize(struct tok_t5 *tok, const char *text, size_t len, int32_t **ids,
                               size_t *n)
{
    if (ids)
        *ids = nullptr;
    if (n)
        *n = 0;
    if (!tok || !ids || !n || (!text && len > 0))
        return FX_EINVAL;
    try {
        std::string s = sanitize(text ? text : "", len);
        std::vector<int> v;
        auto st = tok->sp.Encode(s, &v);
        if (!st.ok())
            return FX_EINTERNAL;
        if (v.empty())
            return 0;
        auto *p = static_cast<int32_t *>(std::malloc(v.size() * sizeof(int32_t)));
        if (!p)
            return FX_ENOMEM;
        for (size_t i = 0; i < v.size(); i++)
            p[i] = v[i];
        *ids = p;
        *n = v.size();
        return 0;
    } catch (const std::bad_alloc &) {
        return FX_ENOMEM;
    } catch (...) {
        return FX_EINTERNAL;
    }
}

extern "C" int tok_t5_encode(struct tok_t5 *tok, const char *text, size_t len,
                             int32_t ids[TOK_T5_LEN], size_t *n_tokens)
{
    int32_t *all = nullptr;
    size_t n = 0, o = 0;

    if (n_tokens)
        *n_tokens = 0;
    if (!ids)
        return FX_EINVAL;
    int rc = tok_t5_tokenize(tok, text, len, &all, &n);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n && o < TOK_T5_LEN - 1; i++)
        ids[o++] = all[i];
    ids[o++] = tok->eos;
    while (o < TOK_T5_LEN)
        ids[o++] = tok->pad;
    if (n_tokens)
        *n_tokens = n + 1;
    std::free(all);
    return 0;
}

extern "C" int32_t tok_t5_eos(const struct tok_t5 *tok)
{
    return tok->eos;
}

extern "C" int32_t tok_t5_pad(const struct tok_t5 *tok)
{
    return tok->pad;
}

extern "C" size_t tok_t5_vocab_size(const struct tok_t5 *tok)
{
    return static_cast<size_t>(tok->sp.GetPieceSize());
}
