/* imgw.c - PNG (core/pngw.c), JPEG (libturbojpeg) and WebP (libwebp, libwebpmux) with the
 * generation parameters in their metadata; the Exif and XMP blocks are built here. */
#include "imgw.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <webp/encode.h>
#include <webp/mux.h>

#include "err.h"
#include "pngw.h"
#include "text.h"

static const char *const names[IMGW_NFORMATS] = {"png", "jpeg", "webp"};
static const char *const mimes[IMGW_NFORMATS] = {"image/png", "image/jpeg", "image/webp"};

const char *imgw_name(enum imgw_format f)
{
    return (unsigned)f < IMGW_NFORMATS ? names[f] : NULL;
}

const char *imgw_mime(enum imgw_format f)
{
    return (unsigned)f < IMGW_NFORMATS ? mimes[f] : NULL;
}

bool imgw_parse(const char *s, enum imgw_format *f)
{
    if (s == NULL)
        return false;
    for (int i = 0; i < IMGW_NFORMATS; i++)
        if (strcmp(s, names[i]) == 0) {
            *f = (enum imgw_format)i;
            return true;
        }
    if (strcmp(s, "jpg") == 0) {
        *f = IMGW_JPEG;
        return true;
    }
    return false;
}

enum imgw_format imgw_sniff(const uint8_t *b, size_t n)
{
    if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF)
        return IMGW_JPEG;
    if (n >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0)
        return IMGW_WEBP;
    return IMGW_PNG;
}

/* ---- a growable byte buffer --------------------------------------------------------------- */

struct buf {
    uint8_t *p;
    size_t len, cap;
    bool oom;
};

static void put(struct buf *b, const void *d, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (q == NULL) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void put_str(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void put_fmt(struct buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void put16be(struct buf *b, unsigned v)
{
    uint8_t d[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    put(b, d, 2);
}

static void put32be(struct buf *b, uint32_t v)
{
    uint8_t d[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    put(b, d, 4);
}

/* ---- the A1111 text ----------------------------------------------------------------------- */

/* A value for the "Key: value, ..." line: A1111 quotes one holding a comma, colon or quote. */
static void put_a1111_value(struct buf *b, const char *v)
{
    if (strpbrk(v, ",:\"\n") == NULL) {
        put_str(b, v);
        return;
    }
    put_str(b, "\"");
    for (; *v; v++) {
        if (*v == '"' || *v == '\\')
            put_str(b, "\\");
        put(b, *v == '\n' ? " " : v, 1);
    }
    put_str(b, "\"");
}

char *imgw_a1111_text(const struct imgw_gen *g)
{
    return imgw_a1111_text_loras(g, NULL, 0);
}

char *imgw_a1111_text_loras(const struct imgw_gen *g, const struct imgw_lora *loras, size_t n)
{
    struct buf b = {0};
    char num[32];
    put_str(&b, g->prompt ? g->prompt : "");
    /* "%.17g" would show 3.5 as 3.5 but 0.1 as 0.10000000000000001: the shortest form that
     * reads back is what A1111 shows */
    snprintf(num, sizeof(num), "%.15g", g->guidance);
    if (strtod(num, NULL) != g->guidance)
        snprintf(num, sizeof(num), "%.17g", g->guidance);
    put_fmt(&b,
            "\nSteps: %d, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG "
            "Scale: %s, Seed: %llu, Size: %dx%d",
            g->steps, num, (unsigned long long)g->seed, g->width, g->height);
    if (g->model_sha256 && strlen(g->model_sha256) >= 10)
        put_fmt(&b, ", Model hash: %.10s", g->model_sha256);
    if (g->model && g->model[0]) {
        put_str(&b, ", Model: ");
        put_a1111_value(&b, g->model);
    }
    for (size_t i = 0; loras && i < n; i++) {
        put_str(&b, i ? ", " : ", Lora hashes: \"");
        for (const char *c = loras[i].name ? loras[i].name : ""; *c; c++)
            put(&b, strchr(",:\"\\\n", *c) ? "_" : c, 1);
        put_fmt(&b, ": %.12s", loras[i].sha256 ? loras[i].sha256 : "");
        if (i + 1 == n)
            put_str(&b, "\"");
    }
    if (g->program && g->program[0]) {
        put_str(&b, ", Version: ");
        put_a1111_value(&b, g->program);
    }
    put(&b, "", 1);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return (char *)b.p;
}

/* ---- Exif --------------------------------------------------------------------------------- */

/* Exif UserComment: "UNICODE\0" then UTF-16 in the byte order of the TIFF header (big
 * endian here), at most max_units code units, never splitting a surrogate pair. */
static void put_user_comment(struct buf *b, const char *utf8, size_t max_units)
{
    size_t n = strlen(utf8), k, units = 0;
    uint32_t *cps = malloc((n + 1) * sizeof(*cps));
    put(b, "UNICODE\0", 8);
    if (cps == NULL) {
        b->oom = true;
        return;
    }
    k = text_utf8_decode(utf8, n, cps, NULL);
    for (size_t i = 0; i < k; i++) {
        uint32_t c = cps[i];
        if (c >= 0x10000) {
            if (units + 2 > max_units)
                break;
            c -= 0x10000;
            put16be(b, 0xD800 + (c >> 10));
            put16be(b, 0xDC00 + (c & 0x3FF));
            units += 2;
        } else {
            if (units + 1 > max_units)
                break;
            put16be(b, c);
            units++;
        }
    }
    free(cps);
}

/*
 * A big-endian TIFF structure for Exif: IFD0 with Software and the Exif IFD pointer; the
 * Exif IFD with UserComment (the A1111 text).  max_bytes bounds the whole block (a JPEG
 * segment's room).
 */
static void put_exif_tiff(struct buf *b, const char *a1111, const char *program, size_t max_bytes)
{
    struct buf uc = {0};
    const char *sw = program ? program : "";
    size_t sw_len = strlen(sw) + 1, sw_room = (sw_len + 1) & ~(size_t)1;
    /* header 8, IFD0 2 + 2 * 12 + 4 = 30, Exif IFD 2 + 12 + 4 = 18: data starts at 56 */
    uint32_t sw_off = 56, uc_off = 56 + (uint32_t)sw_room;
    size_t room = max_bytes > uc_off + 8 ? max_bytes - uc_off - 8 : 0;

    put_user_comment(&uc, a1111, room / 2);
    if (uc.oom) {
        b->oom = true;
        free(uc.p);
        return;
    }
    put(b, "MM\0\x2a", 4);
    put32be(b, 8);
    /* IFD0: 0x0131 Software (ASCII), 0x8769 ExifIFDPointer (LONG) */
    put16be(b, 2);
    put16be(b, 0x0131);
    put16be(b, 2);
    put32be(b, (uint32_t)sw_len);
    if (sw_len <= 4) {
        uint8_t v[4] = {0};
        memcpy(v, sw, sw_len);
        put(b, v, 4);
    } else {
        put32be(b, sw_off);
    }
    put16be(b, 0x8769);
    put16be(b, 4);
    put32be(b, 1);
    put32be(b, 38);
    put32be(b, 0);
    /* Exif IFD at 38: 0x9286 UserComment (UNDEFINED) */
    put16be(b, 1);
    put16be(b, 0x9286);
    put16be(b, 7);
    put32be(b, (uint32_t)uc.len);
    put32be(b, uc_off);
    put32be(b, 0);
    /* data */
    put(b, sw, sw_len);
    if (sw_room > sw_len)
        put(b, "", 1);
    put(b, uc.p, uc.len);
    free(uc.p);
}

/* The "Software" value: the program named in the JSON would need parsing; the A1111 text's
 * "Version: " is the same string. */
static const char *program_of(const char *a1111, char *out, size_t n)
{
    const char *v = a1111 ? strstr(a1111, ", Version: ") : NULL;
    if (v == NULL)
        return "fluxcgi";
    snprintf(out, n, "%s", v + strlen(", Version: "));
    out[strcspn(out, "\n\"")] = '\0';
    return out;
}

/* ---- JPEG --------------------------------------------------------------------------------- */

#define JPEG_SEGMENT_MAX 65533 /* payload of one marker segment (its length field counts 2) */

static void put_segment(struct buf *b, unsigned marker, const struct buf *payload)
{
    put16be(b, 0xFF00 | marker);
    put16be(b, (unsigned)payload->len + 2);
    put(b, payload->p, payload->len);
}

static int encode_jpeg(const uint8_t *rgb, int w, int h, int quality, const struct imgw_meta *m,
                       struct buf *out)
{
    tjhandle tj = tjInitCompress();
    unsigned char *jpg = NULL;
    unsigned long jlen = 0;
    size_t at;
    int rc = FX_EINTERNAL;
    char program[128];
    if (tj == NULL)
        return FX_ENOMEM;
    if (tjCompress2(tj, rgb, w, w * 3, h, TJPF_RGB, &jpg, &jlen, TJSAMP_420, quality,
                    TJFLAG_ACCURATEDCT) != 0)
        goto out;
    if (jlen < 4 || jpg[0] != 0xFF || jpg[1] != 0xD8)
        goto out;
    /* the segments go after SOI and the JFIF APP0 that libjpeg writes first */
    at = 2;
    if (jlen >= 6 && jpg[2] == 0xFF && jpg[3] == 0xE0)
        at = 4 + ((size_t)jpg[4] << 8 | jpg[5]);
    if (at > jlen)
        goto out;
    put(out, jpg, at);
    if (m && m->a1111) {
        struct buf app1 = {0};
        put(&app1, "Exif\0\0", 6);
        put_exif_tiff(&app1, m->a1111, program_of(m->a1111, program, sizeof(program)),
                      JPEG_SEGMENT_MAX - 6);
        if (!app1.oom)
            put_segment(out, 0xE1, &app1);
        out->oom = out->oom || app1.oom;
        free(app1.p);
    }
    if (m && m->json && strlen(m->json) <= JPEG_SEGMENT_MAX) {
        struct buf com = {(uint8_t *)m->json, strlen(m->json), 0, false};
        put_segment(out, 0xFE, &com);
    }
    put(out, jpg + at, jlen - at);
    rc = out->oom ? FX_ENOMEM : 0;
out:
    tjFree(jpg);
    tjDestroy(tj);
    return rc;
}

/* ---- WebP --------------------------------------------------------------------------------- */

/* XML character data: the five specials escaped, characters XML 1.0 forbids dropped. */
static void put_xml_text(struct buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '&')
            put_str(b, "&amp;");
        else if (c == '<')
            put_str(b, "&lt;");
        else if (c == '>')
            put_str(b, "&gt;");
        else if (c == '"')
            put_str(b, "&quot;");
        else if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            continue;
        else
            put(b, s, 1);
    }
}

static void put_xmp(struct buf *b, const struct imgw_meta *m)
{
    put_str(b, "<?xpacket begin=\"\xEF\xBB\xBF\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n"
               "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\n"
               "<rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n"
               "<rdf:Description rdf:about=\"\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\" "
               "xmlns:fluxcgi=\"urn:fluxcgi:parameters:1\">\n");
    if (m->a1111) {
        put_str(b, "<dc:description><rdf:Alt><rdf:li xml:lang=\"x-default\">");
        put_xml_text(b, m->a1111);
        put_str(b, "</rdf:li></rdf:Alt></dc:description>\n");
    }
    if (m->json) {
        put_str(b, "<fluxcgi:parameters>");
        put_xml_text(b, m->json);
        put_str(b, "</fluxcgi:parameters>\n");
    }
    put_str(b, "</rdf:Description>\n</rdf:RDF>\n</x:xmpmeta>\n<?xpacket end=\"w\"?>");
}

static int encode_webp(const uint8_t *rgb, int w, int h, int quality, const struct imgw_meta *m,
                       struct buf *out)
{
    uint8_t *bits = NULL;
    size_t n = WebPEncodeRGB(rgb, w, h, w * 3, (float)quality, &bits);
    WebPMux *mux = NULL;
    WebPData img, assembled = {NULL, 0};
    struct buf exif = {0}, xmp = {0};
    char program[128];
    int rc = FX_EINTERNAL;
    if (n == 0 || bits == NULL)
        goto out;
    if (m == NULL || (m->a1111 == NULL && m->json == NULL)) {
        put(out, bits, n);
        rc = out->oom ? FX_ENOMEM : 0;
        goto out;
    }
    mux = WebPMuxNew();
    if (mux == NULL) {
        rc = FX_ENOMEM;
        goto out;
    }
    img.bytes = bits;
    img.size = n;
    if (WebPMuxSetImage(mux, &img, 1) != WEBP_MUX_OK)
        goto out;
    if (m->a1111) {
        /* the EXIF chunk holds the TIFF structure itself (no "Exif\0\0" as in JPEG) */
        put_exif_tiff(&exif, m->a1111, program_of(m->a1111, program, sizeof(program)),
                      (size_t)1 << 30);
        WebPData d = {exif.p, exif.len};
        if (exif.oom || WebPMuxSetChunk(mux, "EXIF", &d, 1) != WEBP_MUX_OK)
            goto out;
    }
    put_xmp(&xmp, m);
    WebPData x = {xmp.p, xmp.len};
    if (xmp.oom || WebPMuxSetChunk(mux, "XMP ", &x, 1) != WEBP_MUX_OK)
        goto out;
    if (WebPMuxAssemble(mux, &assembled) != WEBP_MUX_OK)
        goto out;
    put(out, assembled.bytes, assembled.size);
    rc = out->oom ? FX_ENOMEM : 0;
out:
    WebPDataClear(&assembled);
    WebPMuxDelete(mux);
    WebPFree(bits);
    free(exif.p);
    free(xmp.p);
    return rc;
}

/* ---- all formats -------------------------------------------------------------------------- */

int imgw_encode(enum imgw_format f, int quality, const uint8_t *rgb, int width, int height,
                const struct imgw_meta *meta, uint8_t **out, size_t *out_len)
{
    struct buf b = {0};
    int rc;
    if (out == NULL || out_len == NULL)
        return FX_EINVAL;
    *out = NULL;
    *out_len = 0;
    if (rgb == NULL || width <= 0 || height <= 0 || width > 16383 || height > 16383 ||
        quality < 0 || quality > 100 || (unsigned)f >= IMGW_NFORMATS)
        return FX_EINVAL;
    if (quality == 0)
        quality = IMGW_DEFAULT_QUALITY;
    if (f == IMGW_PNG) {
        struct pngw_text text[2];
        size_t n = 0;
        if (meta && meta->a1111)
            text[n++] = (struct pngw_text){"parameters", meta->a1111};
        if (meta && meta->json)
            text[n++] = (struct pngw_text){"fluxcgi", meta->json};
        return pngw_encode(rgb, width, height, text, n, out, out_len);
    }
    rc = f == IMGW_JPEG ? encode_jpeg(rgb, width, height, quality, meta, &b)
                        : encode_webp(rgb, width, height, quality, meta, &b);
    if (rc) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    *out_len = b.len;
    return 0;
}
