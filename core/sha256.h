/*
 * sha256.h - SHA-256 (FIPS 180-4), for the model fingerprint that generated images carry.
 *
 * Usage: sha256_init, any number of sha256_update, sha256_final; or sha256_hex for a
 * whole buffer.  A context belongs to one thread; the functions keep no global state.
 */
#ifndef FX_SHA256_H
#define FX_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct sha256 {
    uint32_t h[8];
    uint64_t len;    /* bytes hashed so far */
    uint8_t buf[64]; /* pending partial block */
    size_t n;        /* bytes in buf */
};

void sha256_init(struct sha256 *c);
void sha256_update(struct sha256 *c, const void *data, size_t len);
/* Writes the 32-byte digest; the context must be initialised again before reuse. */
void sha256_final(struct sha256 *c, uint8_t out[32]);
/* Hashes data[0..len) and writes 64 lower-case hex digits and a NUL into hex[0..65). */
void sha256_hex(const void *data, size_t len, char hex[65]);

#endif
