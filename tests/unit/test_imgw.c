/* core/imgw.c: PNG, JPEG and WebP in memory with the parameters in their metadata; the
 * A1111 text; long texts that do not fit a JPEG segment; bad arguments.  (Pillow reads the
 * metadata back in tests/service/test_clients.py.) */
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <webp/decode.h>

#include "../../core/err.h"
#include "../../core/imgw.h"
#include "unit.h"

#define W 48
#define H 32

static uint8_t rgb[W * H * 3];

static const uint8_t *find(const uint8_t *b, size_t n, const void *what, size_t k)
{
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(b + i, what, k) == 0)
            return b + i;
    return NULL;
}

/* The UTF-16BE form of ASCII text, for finding it in an Exif UserComment. */
static size_t utf16be(const char *s, uint8_t *out)
{
    size_t n = 0;
    for (; *s; s++) {
        out[n++] = 0;
        out[n++] = (uint8_t)*s;
    }
    return n;
}

static void test_a1111_text(void)
{
    struct imgw_gen g = {"a cat, on a mat", 4, 64, 48, 3.5, 42, "flux, dev", "0123456789abcdef",
                         "fluxcgi 0.1.0"};
    char *t = imgw_a1111_text(&g);
    CHECK_STR(t, "a cat, on a mat\nSteps: 4, Sampler: Euler, Schedule type: Simple, CFG scale: 1, "
                 "Distilled CFG Scale: 3.5, Seed: 42, Size: 64x48, Model hash: 0123456789, "
                 "Model: \"flux, dev\", Version: fluxcgi 0.1.0");
    free(t);
    g.guidance = 0.1;
    g.model_sha256 = NULL;
    g.model = NULL;
    t = imgw_a1111_text(&g);
    CHECK(t && strstr(t, "Distilled CFG Scale: 0.1, ") && !strstr(t, "Model"));
    free(t);
    /* LoRAs: A1111's "Lora hashes" field, 12 hex digits each, names made parseable */
    struct imgw_lora l[2] = {{"style", "00112233445566778899aabbccddeeff"},
                             {"a,b:\"c", "ffeeddccbbaa99887766554433221100"}};
    t = imgw_a1111_text_loras(&g, l, 2);
    CHECK(t && strstr(t, ", Lora hashes: \"style: 001122334455, a_b__c: ffeeddccbbaa\", "
                         "Version: fluxcgi 0.1.0"));
    CHECK(t && strncmp(t, "a cat, on a mat\n", 16) == 0); /* no <lora:...> in the prompt */
    free(t);
    t = imgw_a1111_text_loras(&g, l, 1);
    CHECK(t && strstr(t, ", Lora hashes: \"style: 001122334455\", Version"));
    free(t);
    char *u = imgw_a1111_text_loras(&g, NULL, 0);
    t = imgw_a1111_text(&g);
    CHECK(u && t && strcmp(u, t) == 0 && !strstr(t, "Lora"));
    free(t);
    free(u);
}

static void test_formats(void)
{
    static const char json[] = "{\"prompt\":\"a cat\",\"seed\":42}";
    static const char text[] = "a cat\nSteps: 4, Seed: 42";
    struct imgw_meta meta = {json, text};
    uint8_t *out = NULL, u16[64];
    size_t len = 0, k;
    enum imgw_format f;

    /* PNG: two iTXt chunks */
    CHECK_INT(imgw_encode(IMGW_PNG, 0, rgb, W, H, &meta, &out, &len), 0);
    CHECK(len > 8 && memcmp(out, "\x89PNG", 4) == 0);
    CHECK_INT(imgw_sniff(out, len), IMGW_PNG);
    CHECK(find(out, len, "iTXtparameters", 14) != NULL);
    CHECK(find(out, len, "iTXtfluxcgi", 11) != NULL);
    free(out);

    /* JPEG: decodes to the size; Exif UserComment in UTF-16BE, the JSON in a COM segment */
    CHECK_INT(imgw_encode(IMGW_JPEG, 80, rgb, W, H, &meta, &out, &len), 0);
    CHECK_INT(imgw_sniff(out, len), IMGW_JPEG);
    CHECK(find(out, len, "Exif\0\0MM\0\x2a", 10) != NULL);
    CHECK(find(out, len, "UNICODE\0", 8) != NULL);
    k = utf16be("Seed: 42", u16);
    CHECK(find(out, len, u16, k) != NULL);
    const uint8_t *com = find(out, len, "\xff\xfe", 2);
    CHECK(com && memcmp(com + 4, json, strlen(json)) == 0);
    tjhandle tj = tjInitDecompress();
    int w = 0, h = 0, sub = 0, cs = 0;
    CHECK_INT(tjDecompressHeader3(tj, out, (unsigned long)len, &w, &h, &sub, &cs), 0);
    CHECK_INT(w, W);
    CHECK_INT(h, H);
    tjDestroy(tj);
    free(out);

    /* WebP: a VP8X file with EXIF and XMP chunks */
    CHECK_INT(imgw_encode(IMGW_WEBP, 80, rgb, W, H, &meta, &out, &len), 0);
    CHECK_INT(imgw_sniff(out, len), IMGW_WEBP);
    CHECK(find(out, len, "VP8X", 4) && find(out, len, "EXIF", 4) && find(out, len, "XMP ", 4));
    static const char xmp_json[] = "fluxcgi:parameters>{&quot;prompt&quot;";
    CHECK(find(out, len, xmp_json, strlen(xmp_json)) != NULL);
    CHECK(WebPGetInfo(out, len, &w, &h) && w == W && h == H);
    free(out);

    /* without metadata: plain files */
    CHECK_INT(imgw_encode(IMGW_WEBP, 0, rgb, W, H, NULL, &out, &len), 0);
    CHECK(find(out, len, "EXIF", 4) == NULL);
    free(out);

    CHECK(imgw_parse("jpg", &f) && f == IMGW_JPEG);
    CHECK(imgw_parse("webp", &f) && f == IMGW_WEBP);
    CHECK(!imgw_parse("JPEG", &f) && !imgw_parse("gif", &f) && !imgw_parse(NULL, &f));
    CHECK_STR(imgw_mime(IMGW_WEBP), "image/webp");
    CHECK(imgw_name(IMGW_NFORMATS) == NULL);
}

/* A text over a JPEG segment's room: the UserComment is cut at a character boundary, the
 * JSON left out; the file stays valid. */
static void test_long_texts(void)
{
    size_t n = 100000;
    char *big = malloc(n + 1), *json = malloc(n + 1);
    uint8_t *out = NULL;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        big[i] = (char)('a' + i % 26);
        json[i] = 'x';
    }
    big[n] = json[n] = '\0';
    /* a 4-byte character (a surrogate pair in UTF-16) right where the cut may fall */
    memcpy(big + 32700, "\xf0\x9f\x98\x80", 4);
    struct imgw_meta meta = {json, big};
    CHECK_INT(imgw_encode(IMGW_JPEG, 0, rgb, W, H, &meta, &out, &len), 0);
    CHECK(out && find(out, len, "UNICODE\0", 8) != NULL);
    CHECK(find(out, len, "xxxxxxxxxxxxxxxx", 16) == NULL); /* no COM: the JSON did not fit */
    /* the UserComment holds as much as fits: ~32 700 characters, the last ones before the cut */
    uint8_t u16[16];
    size_t k = utf16be("abcdefg", u16);
    CHECK(find(out, len, u16, k) != NULL);
    CHECK(len < 70000 + 4000);
    tjhandle tj = tjInitDecompress();
    int w = 0, h = 0, sub = 0, cs = 0;
    CHECK_INT(tjDecompressHeader3(tj, out, (unsigned long)len, &w, &h, &sub, &cs), 0);
    tjDestroy(tj);
    free(out);
    /* WebP has no such limit: the whole text */
    CHECK_INT(imgw_encode(IMGW_WEBP, 0, rgb, W, H, &meta, &out, &len), 0);
    CHECK(len > 2 * n);
    free(out);
    free(big);
    free(json);
}

static void test_bad_args(void)
{
    uint8_t *out = (uint8_t *)1;
    size_t len = 1;
    CHECK_INT(imgw_encode(IMGW_JPEG, 101, rgb, W, H, NULL, &out, &len), FX_EINVAL);
    CHECK(out == NULL && len == 0);
    CHECK_INT(imgw_encode(IMGW_JPEG, -1, rgb, W, H, NULL, &out, &len), FX_EINVAL);
    CHECK_INT(imgw_encode(IMGW_NFORMATS, 0, rgb, W, H, NULL, &out, &len), FX_EINVAL);
    CHECK_INT(imgw_encode(IMGW_PNG, 0, NULL, W, H, NULL, &out, &len), FX_EINVAL);
    CHECK_INT(imgw_encode(IMGW_WEBP, 0, rgb, 0, H, NULL, &out, &len), FX_EINVAL);
    CHECK_INT(imgw_encode(IMGW_WEBP, 0, rgb, 20000, H, NULL, &out, &len), FX_EINVAL);
    CHECK_INT(imgw_encode(IMGW_PNG, 0, rgb, W, H, NULL, NULL, &len), FX_EINVAL);
}

int main(int argc, char **argv)
{
    unit_parse_args(argc, argv);
    for (size_t i = 0; i < sizeof(rgb); i++)
        rgb[i] = (uint8_t)(i * 7);
    test_a1111_text();
    test_formats();
    test_long_texts();
    test_bad_args();
    return unit_done();
}
