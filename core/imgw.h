/*
 * imgw.h - the generated image in its output format (PNG, JPEG or WebP), in memory, with the
 * generation parameters in each format's own metadata.
 *
 * Two texts travel with every image:
 *   - the parameters as JSON (prompt, steps, guidance, size, seed, model, program), for
 *     programs;
 *   - an A1111-style "parameters" text (the prompt, then a line "Steps: 4, Sampler: Euler,
 *     ..., Seed: 42, Size: 1024x1024, Model: ..."), which image viewers and the tools that
 *     read Stable Diffusion web UI metadata show.
 * Where they go:
 *   PNG   iTXt "parameters" (the A1111 text) and iTXt "fluxcgi" (the JSON), via core/pngw.c;
 *   JPEG  an APP1 Exif segment whose UserComment holds the A1111 text (UNICODE, UTF-16BE,
 *         as A1111 writes it) and a COM segment holding the JSON (libturbojpeg encodes);
 *   WebP  an EXIF chunk (the same UserComment) and an XMP chunk with the A1111 text as
 *         dc:description and the JSON as fluxcgi:parameters (libwebp + libwebpmux).
 * A JPEG segment holds at most 65533 bytes: a text too long for one (a prompt of some 30 000
 * characters) is cut at a character boundary (the UserComment) or left out (the COM JSON).
 *
 * Thread-safe: no shared state.
 */
#ifndef FX_IMGW_H
#define FX_IMGW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum imgw_format { IMGW_PNG = 0, IMGW_JPEG = 1, IMGW_WEBP = 2, IMGW_NFORMATS };

/* Quality (1..100) used for JPEG and WebP when a request gives none. */
#define IMGW_DEFAULT_QUALITY 90

/* "png", "jpeg", "webp"; NULL outside the enum. */
const char *imgw_name(enum imgw_format f);

/* "image/png", "image/jpeg", "image/webp"; NULL outside the enum. */
const char *imgw_mime(enum imgw_format f);

/* The format named s ("png", "jpeg" or "jpg", "webp"; exact, lower case).  Returns true
 * and sets *f, or false. */
bool imgw_parse(const char *s, enum imgw_format *f);

/* The format of encoded image bytes from their signature; PNG when unknown. */
enum imgw_format imgw_sniff(const uint8_t *b, size_t n);

/* How an image was made, for the A1111 text. */
struct imgw_gen {
    const char *prompt; /* UTF-8, NUL-terminated */
    int steps, width, height;
    double guidance;
    uint64_t seed;
    const char *model;        /* may be NULL */
    const char *model_sha256; /* hex, may be NULL: "Model hash" is its first 10 digits */
    const char *program;      /* "fluxcgi 0.1.0", may be NULL */
};

/*
 * The A1111-style parameters text of g:
 *   PROMPT\nSteps: 4, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG
 *   Scale: 3.5, Seed: 42, Size: 64x64, Model hash: 0123456789, Model: NAME, Version: PROGRAM
 * (FLUX.1-dev is guidance-distilled: the true CFG scale is 1 and the guidance is what Forge
 * calls "Distilled CFG Scale").  Returns a malloc'd string the caller frees, NULL when out of
 * memory.
 */
char *imgw_a1111_text(const struct imgw_gen *g);

/* A LoRA an image was made with. */
struct imgw_lora {
    const char *name;   /* as the user named it */
    const char *sha256; /* of the file, hex; "Lora hashes" carries its first 12 digits */
};

/*
 * imgw_a1111_text with the LoRAs: A1111 writes no <lora:name:scale> into the prompt of the
 * text but a field ', Lora hashes: "name: 0123456789ab, other: ..."' (before Version; the
 * characters , : " \ and newline of a name become _ so that the field parses).  The scales
 * are in the JSON text only (core/pipeline.c).  n may be 0 (loras NULL):
 * the same text as imgw_a1111_text.
 */
char *imgw_a1111_text_loras(const struct imgw_gen *g, const struct imgw_lora *loras, size_t n);

/* The texts an image carries; either may be NULL (left out). */
struct imgw_meta {
    const char *json;  /* UTF-8 */
    const char *a1111; /* UTF-8 */
};

/*
 * Encodes rgb (height rows of width * 3 bytes, top row first) as format f with the texts of
 * meta (may be NULL).  quality 1..100 applies to JPEG and WebP (0: IMGW_DEFAULT_QUALITY); PNG
 * is lossless and ignores it.  On success returns 0 and sets *out to a malloc'd buffer of
 * *out_len bytes that the caller frees.  Returns FX_EINVAL (bad sizes or arguments),
 * FX_ENOMEM or FX_EINTERNAL (the encoder failed); *out is NULL then.
 */
int imgw_encode(enum imgw_format f, int quality, const uint8_t *rgb, int width, int height,
                const struct imgw_meta *meta, uint8_t **out, size_t *out_len);

#endif
