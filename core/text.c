/*
 * text.c - UTF-8, HTML references and CLIP prompt cleaning.
 *
 * Why libutf8proc: the classes (\p{L}, \p{N}) and case mapping must follow a current Unicode
 * version, and the reference tokenizer (Python's regex module 2022.x) uses Unicode 15.0, the
 * version of Debian 12's libutf8proc 2.8.  utf8proc is a small C library with a stable API
 * (category and simple case mapping per code point, no global state, thread-safe), packaged
 * in Debian and used by Julia, PostgreSQL and tmux.  PCRE2 could run the CLIP pattern itself,
 * but would still need a second library for lower-casing, and its match loop would hide the
 * bounded-work guarantees this file makes explicit.  ICU is far larger than what is needed.
 */
#include "text.h"

#include <stdbool.h>
#include <string.h>
#include <utf8proc.h>

struct text_entity {
    const char *name;
    uint32_t cp[2]; /* cp[1] == 0 for one-code-point values */
};

struct text_charref {
    uint32_t from, to;
};

#include "html_entities.inc"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

size_t text_utf8_decode(const char *s, size_t n, uint32_t *out, size_t *n_invalid)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, o = 0, bad = 0;

    while (i < n) {
        unsigned b = p[i];
        unsigned need, lo = 0x80, hi = 0xBF;
        uint32_t cp;

        if (b < 0x80) {
            out[o++] = b;
            i++;
            continue;
        }
        if (b >= 0xC2 && b <= 0xDF) {
            need = 1;
            cp = b & 0x1F;
        } else if (b >= 0xE0 && b <= 0xEF) {
            need = 2;
            cp = b & 0x0F;
            if (b == 0xE0)
                lo = 0xA0;
            else if (b == 0xED)
                hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3;
            cp = b & 0x07;
            if (b == 0xF0)
                lo = 0x90;
            else if (b == 0xF4)
                hi = 0x8F;
        } else {
            out[o++] = TEXT_REPLACEMENT;
            bad++;
            i++;
            continue;
        }
        /* The first continuation byte has a lead-specific range, the others 80..BF. */
        size_t j = 1;
        for (; j <= need; j++) {
            if (i + j >= n)
                break;
            unsigned c = p[i + j];
            if (c < lo || c > hi)
                break;
            cp = (cp << 6) | (c & 0x3F);
            lo = 0x80;
            hi = 0xBF;
        }
        if (j <= need) {
            out[o++] = TEXT_REPLACEMENT; /* one U+FFFD for the maximal subpart */
            bad++;
            i += j;
            continue;
        }
        out[o++] = cp;
        i += need + 1;
    }
    if (n_invalid)
        *n_invalid = bad;
    return o;
}

size_t text_utf8_put(uint32_t cp, char out[4])
{
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        cp = TEXT_REPLACEMENT;
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- HTML character references ---------------------------------------------------------- */

static const struct text_entity *entity_find(const char *name)
{
    size_t lo = 0, hi = COUNT(text_entities);

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, text_entities[mid].name);
        if (c == 0)
            return &text_entities[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static bool is_ascii_digit(uint32_t c)
{
    return c >= '0' && c <= '9';
}

static int hex_value(uint32_t c)
{
    if (c >= '0' && c <= '9')
        return (int)(c - '0');
    if (c >= 'a' && c <= 'f')
        return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F')
        return (int)(c - 'A' + 10);
    return -1;
}

/* Python: _replace_charref for a numeric reference.  Writes 0 or 1 code point. */
static size_t charref_numeric(uint64_t num, uint32_t *out)
{
    for (size_t k = 0; k < COUNT(text_charref_remap); k++) {
        if (text_charref_remap[k].from == num) {
            out[0] = text_charref_remap[k].to;
            return 1;
        }
    }
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
        out[0] = TEXT_REPLACEMENT;
        return 1;
    }
    for (size_t k = 0; k < COUNT(text_charref_dropped); k++) {
        if (text_charref_dropped[k] == num)
            return 0;
    }
    out[0] = (uint32_t)num;
    return 1;
}

/*
 * Tries to match a reference at in[0] == '&' (Python's html._charref pattern).  On a match,
 * writes the replacement to out, sets *used to the code points consumed and returns the
 * number written; returns (size_t)-1 when nothing matches.
 */
static size_t charref_at(const uint32_t *in, size_t n, uint32_t *out, size_t *used)
{
    size_t i = 1;

    if (i < n && in[i] == '#') {
        uint64_t num = 0;
        size_t start;
        bool hex = i + 1 < n && (in[i + 1] == 'x' || in[i + 1] == 'X');

        i += hex ? 2 : 1;
        start = i;
        while (i < n && (hex ? hex_value(in[i]) >= 0 : is_ascii_digit(in[i]))) {
            /* Saturate: anything above 0x10FFFF maps to U+FFFD anyway. */
            if (num <= 0x10FFFF)
                num =
                    num * (hex ? 16 : 10) + (uint64_t)(hex ? hex_value(in[i]) : (int)(in[i] - '0'));
            i++;
        }
        if (i == start)
            return (size_t)-1; /* "&#" or "&#x" without digits: the name form excludes '#' */
        if (i < n && in[i] == ';')
            i++;
        *used = i;
        return charref_numeric(num, out);
    }

    /* Named: [^\t\n\f <&#;]{1,32};? */
    char name[34];
    size_t len = 0;
    while (i < n && len < 32) {
        uint32_t c = in[i];
        if (c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' ||
            c == ';')
            break;
        /* Names in the table are ASCII: a non-ASCII character can never be part of a hit. */
        name[len++] = c < 0x80 && c != 0 ? (char)c : '\x01';
        i++;
    }
    if (len == 0)
        return (size_t)-1;
    if (i < n && in[i] == ';') {
        name[len++] = ';';
        i++;
    }
    name[len] = '\0';
    *used = i;

    const struct text_entity *e = entity_find(name);
    size_t keep = len; /* characters of the name that the value replaces */
    if (!e) {
        for (keep = len - 1; keep >= 2; keep--) {
            name[keep] = '\0';
            e = entity_find(name);
            if (e)
                break;
        }
    }
    size_t o = 0;
    if (e) {
        out[o++] = e->cp[0];
        if (e->cp[1])
            out[o++] = e->cp[1];
        /* The rest of the name after a legacy prefix stays as it was. */
        for (size_t k = 1 + keep; k < i; k++)
            out[o++] = in[k];
        return o;
    }
    /* No hit: the '&' and the name stay. */
    for (size_t k = 0; k < i; k++)
        out[o++] = in[k];
    return o;
}

size_t text_html_unescape(const uint32_t *in, size_t n, uint32_t *out)
{
    size_t i = 0, o = 0;

    while (i < n) {
        if (in[i] != '&') {
            out[o++] = in[i++];
            continue;
        }
        size_t used = 0;
        size_t w = charref_at(in + i, n - i, out + o, &used);
        if (w == (size_t)-1) {
            out[o++] = in[i++];
            continue;
        }
        o += w;
        i += used;
    }
    return o;
}

/* ---- classes and case ------------------------------------------------------------------- */

/* ASCII fast paths: most prompts are ASCII, and utf8proc's lookup dominated the profile.
 * tests/unit/test_text.c checks them against utf8proc for all 128 values. */
static bool ascii_alpha(uint32_t c)
{
    return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

int text_is_letter(uint32_t cp)
{
    if (cp < 0x80)
        return ascii_alpha(cp);
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
        return 1;
    default:
        return 0;
    }
}

int text_is_number(uint32_t cp)
{
    if (cp < 0x80)
        return cp >= '0' && cp <= '9';
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
        return 1;
    default:
        return 0;
    }
}

int text_is_space(uint32_t cp)
{
    /* White_Space = the separators (Zs, Zl, Zp) plus TAB..CR and NEL. */
    if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || cp == ' ')
        return 1;
    if (cp < 0x80)
        return 0;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
        return 1;
    default:
        return 0;
    }
}

/* Python's str.isspace(), used by str.strip(): White_Space plus the separators 0x1C-0x1F. */
static bool is_py_space(uint32_t cp)
{
    return text_is_space(cp) || (cp >= 0x1C && cp <= 0x1F);
}

/* Unicode "Cased": has a case or is a titlecase letter. */
static bool is_cased(uint32_t cp)
{
    if (cp < 0x80)
        return ascii_alpha(cp);
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
    return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL ||
           cat == UTF8PROC_CATEGORY_LT || utf8proc_islower((utf8proc_int32_t)cp) ||
           utf8proc_isupper((utf8proc_int32_t)cp);
}

/* Unicode "Case_Ignorable": Mn Me Cf Lm Sk plus the MidLetter/MidNumLet/Single_Quote marks. */
static bool is_case_ignorable(uint32_t cp)
{
    static const uint32_t mid[] = {0x27,   0x2E,   0x3A,   0xB7,   0x387,  0x55F,
                                   0x5F4,  0x2018, 0x2019, 0x2024, 0x2027, 0xFE13,
                                   0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
    if (cp < 0x80) /* ' . : (MidLetter/MidNumLet/Single_Quote) and ^ ` (Sk) */
        return cp == '\'' || cp == '.' || cp == ':' || cp == '^' || cp == '`';
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
        return true;
    default:
        break;
    }
    for (size_t k = 0; k < COUNT(mid); k++) {
        if (mid[k] == cp)
            return true;
    }
    return false;
}

/*
 * Python's str.lower(): the simple mapping, plus the two rules of SpecialCasing.txt that
 * CPython applies: U+0130 -> "i" U+0307, and capital sigma -> final sigma (U+03C2) when it
 * follows a cased letter and no cased letter follows (case-ignorables skipped both ways).
 * The scans are bounded in total: each stops at the first character that is not
 * case-ignorable, and a sigma is itself cased, so scans from consecutive sigmas do not
 * overlap.
 */
static size_t lower_py(const uint32_t *in, size_t n, uint32_t *out)
{
    size_t o = 0;
    bool prev_cased = false; /* last non-case-ignorable character before i is cased */

    for (size_t i = 0; i < n; i++) {
        uint32_t c = in[i];
        if (c == 0x130) {
            out[o++] = 'i';
            out[o++] = 0x307;
        } else if (c == 0x3A3) {
            bool final = prev_cased;
            if (final) {
                size_t j = i + 1;
                while (j < n && is_case_ignorable(in[j]))
                    j++;
                final = j == n || !is_cased(in[j]);
            }
            out[o++] = final ? 0x3C2 : 0x3C3;
        } else if (c < 0x80) {
            out[o++] = c >= 'A' && c <= 'Z' ? c | 0x20 : c;
        } else {
            out[o++] = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
        }
        if (!is_case_ignorable(c))
            prev_cased = is_cased(c);
    }
    return o;
}

size_t text_clip_clean(const uint32_t *in, size_t n, uint32_t *out, uint32_t *tmp)
{
    size_t a = text_html_unescape(in, n, tmp);
    size_t b = text_html_unescape(tmp, a, out);
    size_t lo = 0, hi = b, m = 0;

    while (lo < hi && is_py_space(out[lo]))
        lo++;
    while (hi > lo && is_py_space(out[hi - 1]))
        hi--;
    /* The ends are now not white space, so the collapse cannot create a leading or
     * trailing ' ' and the second strip of whitespace_clean() has nothing to do. */
    for (size_t i = lo; i < hi;) {
        if (text_is_space(out[i])) {
            tmp[m++] = ' ';
            while (i < hi && text_is_space(out[i]))
                i++;
        } else {
            tmp[m++] = out[i++];
        }
    }
    return lower_py(tmp, m, out);
}
