/*
 * sha256.h - SHA-256 for the fingerprints fluxcgi records (the model's manifest, LoRA files),
 * through OpenSSL's libcrypto (EVP): a small wrapper so that core/ callers keep one short API
 * and OpenSSL's headers stay out of theirs.
 *
 * Usage: sha256_init, any number of sha256_update, then sha256_final (which also frees the
 * context) or sha256_free to abandon it; or sha256_hex for a whole buffer.  A context belongs
 * to one thread; the functions keep no global state.  Each returns 0, or FX_ENOMEM /
 * FX_EINTERNAL (libcrypto failed); on failure of sha256_update or sha256_final the context is
 * freed (sha256_free stays safe to call).
 */
#ifndef FX_SHA256_H
#define FX_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct sha256 {
    void *ctx; /* EVP_MD_CTX *; NULL once finished or freed */
};

int sha256_init(struct sha256 *c);
int sha256_update(struct sha256 *c, const void *data, size_t len);
/* Writes the 32-byte digest and frees the context. */
int sha256_final(struct sha256 *c, uint8_t out[32]);
/* Frees a context that will not be finished; a no-op after sha256_final. */
void sha256_free(struct sha256 *c);
/* Hashes data[0..len) and writes 64 lower-case hex digits and a NUL into hex[0..65). */
int sha256_hex(const void *data, size_t len, char hex[65]);
/* Writes the 64 lower-case hex digits of a 32-byte digest and a NUL into hex[0..65). */
void sha256_to_hex(const uint8_t d[32], char hex[65]);

#endif
