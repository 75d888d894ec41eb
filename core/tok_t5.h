/*
 * tok_t5.h - the T5 tokenizer (FLUX `tokenizer_2/spiece.model`), a C API over the
 * SentencePiece library (Debian libsentencepiece-dev).  The implementation is C++
 * (tok_t5.cc); this header is plain C and includes only <stddef.h> and <stdint.h>.
 *
 * Encoding, as T5TokenizerFast / T5Tokenizer do it for FLUX: the SentencePiece ids of the
 * prompt (the model's own normalisation, nmt_nfkc for T5), then eos, truncated to 512 ids
 * with the eos kept last, right-padded with pad.  No bos.  eos and pad come from the model
 * (T5: eos "</s>" = 1, pad "<pad>" = 0; a model without a pad piece pads with 0).
 *
 * Input bytes: invalid UTF-8 is replaced by U+FFFD before SentencePiece sees it (the same
 * policy as the CLIP tokenizer, see text.h); NUL is an ordinary character.  Typed special
 * strings ("</s>", "<extra_id_0>") are plain text here, as in SentencePiece itself (HF's
 * T5Tokenizer would map them to their ids).
 *
 * Cost: SentencePiece (0.1.97) is linear in the prompt except for a run of characters that
 * its vocabulary lacks with no white space in it (merged into one unk piece), where it is
 * quadratic: 80 K CJK characters in a row take about 0.2 s, 1 MB about 5 s, with the real
 * T5 model.  Exactness comes first here, so the service must bound the prompt length
 * before tokenizing.
 *
 * Thread safety: a loaded tokenizer may be shared by threads (SentencePiece's Encode is a
 * const method).  Errors are the FX_E* codes of err.h; no C++ exception crosses this API.
 */
#ifndef FX_TOK_T5_H
#define FX_TOK_T5_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOK_T5_LEN 512 /* ids per encoded prompt (FLUX dev/Krea max_sequence_length) */

struct tok_t5;

/*
 * Loads a SentencePiece model file.  On success returns 0 and sets *out (free with
 * tok_t5_free).  On failure returns FX_ENOENT, FX_EFORMAT (not a model, or no eos piece) or
 * FX_ENOMEM, leaves *out NULL and, when msg is not NULL, writes a one-line reason into
 * msg[0..msg_len).
 */
int tok_t5_load(const char *spiece_model, struct tok_t5 **out, char *msg, size_t msg_len);

/* Frees a tokenizer; NULL is a no-op. */
void tok_t5_free(struct tok_t5 *tok);

/*
 * The SentencePiece ids of text[0..len), without eos, truncation or padding.  On success
 * returns 0; *ids is a malloc'd array the caller frees (NULL when *n is 0).  Returns
 * FX_EINVAL (NULL tok/ids/n, or NULL text with len > 0), FX_ENOMEM or FX_EINTERNAL.
 */
int tok_t5_tokenize(struct tok_t5 *tok, const char *text, size_t len, int32_t **ids, size_t *n);

/*
 * Encodes text[0..len) for the encoder: ids[0..512) = up to 511 pieces, eos, pad...
 * *n_tokens (may be NULL) receives the length without truncation, eos included (the
 * prompt was cut iff *n_tokens > 512).  Returns 0 or the codes of tok_t5_tokenize.
 */
int tok_t5_encode(struct tok_t5 *tok, const char *text, size_t len, int32_t ids[TOK_T5_LEN],
                  size_t *n_tokens);

int32_t tok_t5_eos(const struct tok_t5 *tok);
int32_t tok_t5_pad(const struct tok_t5 *tok);
/* Number of pieces in the model. */
size_t tok_t5_vocab_size(const struct tok_t5 *tok);

#ifdef __cplusplus
}
#endif

#endif
