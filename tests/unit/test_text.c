/* test_text.c - UTF-8 decoding, HTML references, classes and CLIP cleaning. */
#include <utf8proc.h>

#include "../../core/text.h"
#include "unit.h"

#define FFFD TEXT_REPLACEMENT

/* Decodes s (with its length, NULs included) and compares with want[0..n_want). */
static void check_decode(const char *s, size_t n, const uint32_t *want, size_t n_want,
                         size_t want_bad, int line)
{
    uint32_t out[64];
    size_t bad = 99;
    size_t got = text_utf8_decode(s, n, out, &bad);
    size_t i = 0;

    while (i < got && i < n_want && out[i] == want[i])
        i++;
    if (i == got && i == n_want && bad == want_bad) {
        unit_passed++;
        return;
    }
    unit_failed++;
    fprintf(stderr,
            "test_text.c:%d: FAIL decode: got %zu cps (%zu invalid), want %zu (%zu); "
            "first difference at %zu: got U+%04X, want U+%04X\n",
            line, got, bad, n_want, want_bad, i, i < got ? (unsigned)out[i] : 0,
            i < n_want ? (unsigned)want[i] : 0);
}

#define DECODE(lit, bad, ...)                                                                      \
    do {                                                                                           \
        static const uint32_t w_[] = {__VA_ARGS__};                                                \
        check_decode(lit, sizeof(lit) - 1, w_, sizeof(w_) / sizeof(w_[0]), bad, __LINE__);         \
    } while (0)

static void test_decode(void)
{
    DECODE("a", 0, 'a');
    DECODE("a\0b", 0, 'a', 0, 'b');
    DECODE("\xc3\xa9", 0, 0xE9);
    DECODE("\xe2\x82\xac", 0, 0x20AC);
    DECODE("\xf0\x9f\x98\x80", 0, 0x1F600);
    DECODE("\xf4\x8f\xbf\xbf", 0, 0x10FFFF);
    /* Maximal subparts: one U+FFFD for a truncated sequence, one per byte otherwise. */
    DECODE("\xe2\x82", 1, FFFD);
    DECODE("\xe2\x82x", 1, FFFD, 'x');
    DECODE("\xf0\x9f\x98", 1, FFFD);
    DECODE("\xff", 1, FFFD);
    DECODE("\x80\x80", 2, FFFD, FFFD);
    DECODE("\xc0\xaf", 2, FFFD, FFFD);                     /* overlong '/' */
    DECODE("\xe0\x80\xaf", 3, FFFD, FFFD, FFFD);           /* overlong */
    DECODE("\xed\xa0\x80", 3, FFFD, FFFD, FFFD);           /* encoded surrogate */
    DECODE("\xf4\x90\x80\x80", 4, FFFD, FFFD, FFFD, FFFD); /* above U+10FFFF */
    DECODE("\xf5", 1, FFFD);
    DECODE("\xc3\x28", 1, FFFD, '(');
    DECODE("a\xf1\x80\x80", 1, 'a', FFFD);
}

static void test_put(void)
{
    char buf[4];
    uint32_t back[4];
    static const uint32_t cps[] = {0, 0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000, 0x10FFFF};

    for (size_t i = 0; i < sizeof(cps) / sizeof(cps[0]); i++) {
        size_t n = text_utf8_put(cps[i], buf);
        CHECK_INT(text_utf8_decode(buf, n, back, NULL), 1);
        CHECK_INT(back[0], cps[i]);
    }
    CHECK_INT(text_utf8_put(0xD800, buf), 3);
    CHECK_INT((unsigned char)buf[0], 0xEF); /* U+FFFD */
    CHECK_INT(text_utf8_put(0x110000, buf), 3);
}

/* Runs f over the UTF-8 string s and compares the UTF-8 of the result with want. */
static void check_text(size_t (*f)(const uint32_t *, size_t, uint32_t *, uint32_t *), const char *s,
                       const char *want, int line)
{
    size_t n = strlen(s);
    uint32_t *in = malloc((n + 1) * sizeof(uint32_t));
    uint32_t *out = malloc((2 * n + 1) * sizeof(uint32_t));
    uint32_t *tmp = malloc((n + 1) * sizeof(uint32_t));
    char *got = malloc(8 * n + 1);
    size_t m = f(in, text_utf8_decode(s, n, in, NULL), out, tmp), g = 0;

    for (size_t i = 0; i < m; i++)
        g += text_utf8_put(out[i], got + g);
    got[g] = '\0';
    if (strcmp(got, want) == 0) {
        unit_passed++;
    } else {
        unit_failed++;
        fprintf(stderr, "test_text.c:%d: FAIL \"%s\": got \"%s\", want \"%s\"\n", line, s, got,
                want);
    }
    free(in);
    free(out);
    free(tmp);
    free(got);
}

static size_t unescape_once(const uint32_t *in, size_t n, uint32_t *out, uint32_t *tmp)
{
    (void)tmp;
    return text_html_unescape(in, n, out);
}

#define UNESCAPE(s, want) check_text(unescape_once, s, want, __LINE__)
#define CLEAN(s, want) check_text(text_clip_clean, s, want, __LINE__)

static void test_unescape(void)
{
    UNESCAPE("a &amp; b", "a & b");
    UNESCAPE("&lt;b&gt;", "<b>");
    UNESCAPE("&amp;amp;", "&amp;");
    UNESCAPE("&eacute;t&eacute;", "\xc3\xa9t\xc3\xa9");
    UNESCAPE("&copy2024", "\xc2\xa9"
                          "2024"); /* legacy name without ';' */
    UNESCAPE("&ampx", "&x");
    UNESCAPE("&notit;", "\xc2\xacit;"); /* longest legacy prefix */
    UNESCAPE("&notin;", "\xe2\x88\x89");
    UNESCAPE("&nosuch;", "&nosuch;");
    UNESCAPE("&#65;&#x42;&#X43", "ABC");
    UNESCAPE("&#128;", "\xe2\x82\xac"); /* windows-1252 remap */
    UNESCAPE("&#0;", "\xef\xbf\xbd");
    UNESCAPE("&#xD800;", "\xef\xbf\xbd");
    UNESCAPE("&#1114112;", "\xef\xbf\xbd");
    UNESCAPE("&#99999999999999999999999;", "\xef\xbf\xbd");
    UNESCAPE("a&#1;b&#xFFFE;c", "abc"); /* dropped */
    UNESCAPE("&#;&#x;&#xg", "&#;&#x;&#xg");
    UNESCAPE("& amp; &", "& amp; &");
    UNESCAPE("&NewLine;&Tab;", "\n\t");
    UNESCAPE("&acE;", "\xe2\x88\xbe\xcc\xb3"); /* two code points */
    UNESCAPE("&amp\xc3\xa9", "&\xc3\xa9");
    UNESCAPE("&abcdefghijabcdefghijabcdefghijabcdefghij;",
             "&abcdefghijabcdefghijabcdefghijabcdefghij;");
}

static void test_clean(void)
{
    CLEAN("  A  Photo\tof\n\na CAT  ", "a photo of a cat");
    CLEAN("&amp;amp; &amp;lt;", "& <");
    CLEAN("\x1c a \x1f", "a"); /* str.strip() removes 0x1C-0x1F at the ends */
    CLEAN("a\x1c"
          "b",
          "a\x1c"
          "b"); /* ... but \s does not match them inside */
    CLEAN("\xc2\xa0x\xe3\x80\x80y\xe2\x80\x83", "x y");
    CLEAN("\xc4\xb0stanbul", "i\xcc\x87stanbul"); /* U+0130 -> i + U+0307 */
    /* Final sigma: ΟΔΟΣ -> οδος with ς, a lone Σ -> σ, ΑΣ. -> ας. */
    CLEAN("\xce\x9f\xce\x94\xce\x9f\xce\xa3 \xce\xa3 \xce\x91\xce\xa3.",
          "\xce\xbf\xce\xb4\xce\xbf\xcf\x82 \xcf\x83 \xce\xb1\xcf\x82.");
    CLEAN("\xce\x91\xce\xa3\xce\x91", "\xce\xb1\xcf\x83\xce\xb1");
    CLEAN("", "");
    CLEAN(" \t\n ", "");
}

static void test_classes(void)
{
    CHECK(text_is_letter('a'));
    CHECK(text_is_letter(0x4E2D)); /* 中 */
    CHECK(text_is_letter(0x3A3));
    CHECK(!text_is_letter('1'));
    CHECK(text_is_number('7'));
    CHECK(text_is_number(0xB2));   /* ² (No) */
    CHECK(text_is_number(0x216B)); /* Ⅻ (Nl) */
    CHECK(!text_is_number('x'));
    CHECK(text_is_space(' '));
    CHECK(text_is_space(0x3000));
    CHECK(text_is_space(0x85));
    CHECK(!text_is_space(0x1C));
    CHECK(!text_is_space(0x200B)); /* zero width space is Cf, not White_Space */
}

/* The ASCII fast paths in text.c agree with utf8proc. */
static void test_ascii_fast_paths(void)
{
    for (uint32_t c = 1; c < 0x80; c++) {
        utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)c);
        int letter = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
        int number = cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO;
        int space = cat == UTF8PROC_CATEGORY_ZS || (c >= 9 && c <= 13);
        int cased = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL;
        int ign = cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME ||
                  cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_LM ||
                  cat == UTF8PROC_CATEGORY_SK || c == '\'' || c == '.' || c == ':';
        CHECK_INT(text_is_letter(c), letter);
        CHECK_INT(text_is_number(c), number);
        CHECK_INT(text_is_space(c), space);
        /* "x" c "Σ": final sigma iff the character before Σ, skipping case-ignorables, is
         * cased. */
        uint32_t in[3] = {'x', c, 0x3A3}, out[6], tmp[3];
        size_t m = text_clip_clean(in, 3, out, tmp);
        CHECK_INT(out[m - 1], ign || cased ? 0x3C2 : 0x3C3);
        if (c >= 'A' && c <= 'Z')
            CHECK_INT(out[1], c + 32);
        else if (!space)
            CHECK_INT(out[1], c);
    }
}

int main(void)
{
    test_ascii_fast_paths();
    test_decode();
    test_put();
    test_unescape();
    test_clean();
    test_classes();
    return unit_done();
}
