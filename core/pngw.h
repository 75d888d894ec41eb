/*
 * pngw.h - PNG encoding of 8-bit RGB images into memory (libpng), with text chunks.
 *
 * The generated images carry a tEXt/iTXt chunk "parameters" holding the request as JSON
 * (prompt, steps, guidance, size, seed, model, program version), so an image says how it
 * was made.  Thread-safe: no shared state; libpng's longjmp is contained in pngw.c.
 */
#ifndef FX_PNGW_H
#define FX_PNGW_H

#include <stddef.h>
#include <stdint.h>

struct pngw_text {
    const char *key;   /* 1..79 Latin-1 characters, e.g. "parameters" */
    const char *value; /* UTF-8, NUL-terminated; stored as an uncompressed iTXt chunk */
};

/*
 * Encodes rgb (height rows of width * 3 bytes, top row first) with n_text text chunks.
 * On success returns 0 and sets *out to a malloc'd buffer of *out_len bytes that the caller
 * frees.  Returns FX_EINVAL (bad sizes, NULL pointers, bad key), FX_ENOMEM or FX_EINTERNAL
 * (libpng error); *out is NULL then.
 */
int pngw_encode(const uint8_t *rgb, int width, int height, const struct pngw_text *text,
                size_t n_text, uint8_t **out, size_t *out_len);

#endif
