/*
 * text.h - Unicode text handling for the tokenizers: UTF-8 decoding with a stated policy for
 * invalid input, HTML character references, and the CLIP prompt cleaning.
 *
 * Text is handled as arrays of code points (uint32_t).  Character classes and case mapping
 * come from libutf8proc (Debian libutf8proc-dev, Unicode 15.0), see text.c for why.  Checked
 * against Python for every code point: the classes equal the regex module's, and the
 * cleaning of each character equals Python's; Python 3.11's str.lower() knows only Unicode
 * 14.0, so the final-sigma rule differs next to the ~110 marks that 15.0 added.  Nothing here keeps
 * state: every function is thread-safe.
 *
 * Invalid UTF-8 policy: it is REPLACED, never rejected.  Each maximal ill-formed subsequence
 * (Unicode 15 §3.9, "U+FFFD substitution of maximal subparts", the same rule as Python's
 * bytes.decode("utf-8", "replace") and the WHATWG decoder) becomes one U+FFFD.  Overlong
 * forms, encoded surrogates and values above U+10FFFF are ill-formed.  NUL bytes are ordinary
 * characters (U+0000): the API takes a length, never a C string.
 */
#ifndef FX_TEXT_H
#define FX_TEXT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TEXT_REPLACEMENT 0xFFFDu

/*
 * Decodes n bytes of UTF-8 into out, which must hold at least n code points (decoding never
 * yields more code points than bytes).  Ill-formed input is replaced as described above.
 * Returns the number of code points written; *n_invalid (may be NULL) receives the number of
 * replacements made.
 */
size_t text_utf8_decode(const char *s, size_t n, uint32_t *out, size_t *n_invalid);

/*
 * Writes the UTF-8 form of cp (0..0x10FFFF, surrogates excluded; anything else is written
 * as U+FFFD) into out and returns its length, 1 to 4.
 */
size_t text_utf8_put(uint32_t cp, char out[4]);

/*
 * Replaces HTML character references in in[0..n) as Python's html.unescape does, writing
 * the result to out (at least n code points: the result is never longer) and returning its
 * length.  in and out must not overlap.  What is supported is exactly html.unescape's set:
 *   - every named reference of the WHATWG HTML5 list (2231 names, with and without the
 *     ';', e.g. "&amp;", "&eacute;", "&NewLine;", the legacy "&amp" / "&copy" forms),
 *     longest prefix first when the ';' is missing ("&ampx" -> "&x");
 *   - decimal "&#NNN;" and hexadecimal "&#xHHH;" references, the ';' optional, with the
 *     HTML5 remapping of 0x80-0x9F (windows-1252) and 0, surrogates and values above
 *     0x10FFFF to U+FFFD, and the non-characters and C0/C1 controls dropped.
 * The tables are generated from Python's html module (tools/gen_html_entities.py).
 * A reference name is at most 32 characters, so the work per '&' is bounded.
 */
size_t text_html_unescape(const uint32_t *in, size_t n, uint32_t *out);

/* Character classes, as the CLIP pre-token pattern (Python regex module) sees them. */
int text_is_letter(uint32_t cp); /* \p{L}: Lu Ll Lt Lm Lo */
int text_is_number(uint32_t cp); /* \p{N}: Nd Nl No */
int text_is_space(uint32_t cp);  /* \s: the White_Space property */

/*
 * Cleans a prompt the way OpenAI's CLIP tokenizer does before splitting it (without ftfy):
 * html.unescape twice, strip, every run of white space to one ' ', strip, then lower case
 * with Python's str.lower() rules (full mapping: U+0130 gives "i" + U+0307; final sigma).
 * Reads in[0..n), writes out, which must hold 2 * n code points (lower-casing U+0130 grows
 * the text) and returns the cleaned length.  tmp must hold n code points (scratch space).
 * No buffer may overlap another.
 */
size_t text_clip_clean(const uint32_t *in, size_t n, uint32_t *out, uint32_t *tmp);

#ifdef __cplusplus
}
#endif

#endif
