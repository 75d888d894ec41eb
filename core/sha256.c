#include "sha256.h"

#include "err.h"

#include <openssl/evp.h>

int sha256_init(struct sha256 *c)
{
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    c->ctx = x;
    if (x == NULL)
        return FX_ENOMEM;
    if (EVP_DigestInit_ex(x, EVP_sha256(), NULL) != 1) {
        sha256_free(c);
        return FX_EINTERNAL;
    }
    return 0;
}

int sha256_update(struct sha256 *c, const void *data, size_t len)
{
    if (c->ctx == NULL)
        return FX_EINVAL;
    if (len > 0 && EVP_DigestUpdate(c->ctx, data, len) != 1) {
        sha256_free(c);
        return FX_EINTERNAL;
    }
    return 0;
}

int sha256_final(struct sha256 *c, uint8_t out[32])
{
    if (c->ctx == NULL)
        return FX_EINVAL;
    unsigned n = 0;
    int ok = EVP_DigestFinal_ex(c->ctx, out, &n) == 1 && n == 32;
    sha256_free(c);
    return ok ? 0 : FX_EINTERNAL;
}

void sha256_free(struct sha256 *c)
{
    EVP_MD_CTX_free(c->ctx);
    c->ctx = NULL;
}

void sha256_to_hex(const uint8_t d[32], char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[64] = '\0';
}

int sha256_hex(const void *data, size_t len, char hex[65])
{
    uint8_t d[32];
    unsigned n = 0;
    hex[0] = '\0';
    if (EVP_Digest(data, len, d, &n, EVP_sha256(), NULL) != 1 || n != 32)
        return FX_EINTERNAL;
    sha256_to_hex(d, hex);
    return 0;
}
