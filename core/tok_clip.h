/*
 * tok_clip.h - the CLIP BPE tokenizer (FLUX `tokenizer/`, CLIP ViT-L/14), in C.
 *
 * Reads the Hugging Face layout: DIR/vocab.json (token -> id) and DIR/merges.txt (a
 * "#version" line, then one "A B" merge per line, best first).  Encoding follows OpenAI's
 * CLIP tokenizer (simple_tokenizer.py) without ftfy, which FLUX's CLIPTokenizer matches on
 * plain prompts:
 *   1. bytes -> code points; invalid UTF-8 is replaced by U+FFFD, NUL is an ordinary
 *      character (see text.h);
 *   2. html.unescape twice, strip, white-space runs -> ' ', Python lower-casing (text.h);
 *   3. the pre-token pattern, case-insensitive:
 *        <|startoftext|> | <|endoftext|> | 's | 't | 're | 've | 'm | 'll | 'd
 *        | \p{L}+ | \p{N} | [^\s\p{L}\p{N}]+
 *      (white space between matches is skipped; U+0345 is skipped too, as the Python regex
 *      module does under IGNORECASE);
 *   4. each pre-token: its UTF-8 bytes mapped through bytes_to_unicode, "</w>" on the last
 *      symbol, merged by merge rank (all occurrences of the best pair, left to right, then
 *      the next best); a typed "<|startoftext|>" / "<|endoftext|>" gives the special id;
 *   5. [bos] + the first 75 tokens + [eos], padded to 77 with eos.
 * bos and eos are looked up in vocab.json ("<|startoftext|>" = 49406 and
 * "<|endoftext|>" = 49407 in the real vocabulary); pad = eos.
 *
 * Differences from Hugging Face's slow CLIPTokenizer when ftfy is not installed (its
 * BasicTokenizer path): HF does not unescape HTML, drops control characters, and splits CJK
 * ideographs into one word each; we follow OpenAI here (docs/numerics.md).  ftfy's
 * repairs (mojibake, quotes, NFC) are not applied.
 *
 * Cost: linear in the prompt apart from a heap per pre-token (O(w log w) for a w-byte word),
 * so a 100 KB run of letters is fine.  A word cache (words up to 64 bytes, at most 65536 of
 * them, cleared when full) skips the BPE for repeated words.
 *
 * Thread safety: a loaded tokenizer may be shared by any number of threads; the cache is
 * guarded by a mutex inside.
 */
#ifndef FX_TOK_CLIP_H
#define FX_TOK_CLIP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOK_CLIP_LEN 77           /* ids per encoded prompt */
#define TOK_CLIP_MAX_MERGES 48894 /* merges read, as OpenAI and HF do (49152 - 256 - 2) */

struct tok_clip;

/*
 * Loads dir/vocab.json and dir/merges.txt.  On success returns 0 and sets *out (free with
 * tok_clip_free).  On failure returns FX_ENOENT, FX_EIO, FX_EFORMAT (a merge or byte symbol
 * missing from the vocabulary, a duplicate id, a malformed line, no bos/eos) or FX_ENOMEM,
 * leaves *out NULL and, when msg is not NULL, writes a one-line reason (file and line) into
 * msg[0..msg_len).
 */
int tok_clip_load(const char *dir, struct tok_clip **out, char *msg, size_t msg_len);

/* Same, with the two file paths given separately. */
int tok_clip_load_files(const char *vocab_json, const char *merges_txt, struct tok_clip **out,
                        char *msg, size_t msg_len);

/* Frees a tokenizer; NULL is a no-op. */
void tok_clip_free(struct tok_clip *tok);

/*
 * Tokenizes text[0..len) (any bytes) without bos, eos, truncation or padding.  On success
 * returns 0, *ids is a malloc'd array the caller frees (NULL when *n is 0) and *n its
 * length.  Returns FX_ENOMEM or FX_EINVAL (NULL tok, or NULL text with len > 0).
 */
int tok_clip_tokenize(struct tok_clip *tok, const char *text, size_t len, int32_t **ids, size_t *n);

/*
 * Encodes text[0..len) for the text encoder: ids[0..77) = bos, up to 75 tokens, eos, then
 * eos padding.  *n_tokens (may be NULL) receives the length the encoding would have without
 * truncation, bos and eos included (so the prompt was cut iff *n_tokens > 77).  Returns 0,
 * FX_ENOMEM or FX_EINVAL.
 */
int tok_clip_encode(struct tok_clip *tok, const char *text, size_t len, int32_t ids[TOK_CLIP_LEN],
                    size_t *n_tokens);

/* The special ids read from vocab.json. */
int32_t tok_clip_bos(const struct tok_clip *tok);
int32_t tok_clip_eos(const struct tok_clip *tok);

/* Number of merges loaded (after the cap above). */
size_t tok_clip_n_merges(const struct tok_clip *tok);

#ifdef __cplusplus
}
#endif

#endif
