#include "pngw.h"

#include <png.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

struct membuf {
    uint8_t *data;
    size_t len, cap;
    int oom;
};

static void mem_write(png_structp png, png_bytep data, png_size_t len)
{
    struct membuf *b = png_get_io_ptr(png);
    if (b->oom)
        return;
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len)
            cap *= 2;
        uint8_t *p = realloc(b->data, cap);
        if (p == NULL) {
            b->oom = 1;
            png_error(png, "out of memory");
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void mem_flush(png_structp png)
{
    (void)png;
}

/* The only function that sees libpng's setjmp; locals it changes after setjmp are volatile. */
static int encode(const uint8_t *rgb, int width, int height, const struct pngw_text *text,
                  size_t n_text, struct membuf *b)
{
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = NULL;
    png_textp chunks = NULL;
    png_bytep *volatile rows = NULL;
    volatile int rc = FX_EINTERNAL;
    if (png == NULL)
        return FX_ENOMEM;
    info = png_create_info_struct(png);
    if (info == NULL) {
        png_destroy_write_struct(&png, NULL);
        return FX_ENOMEM;
    }
    chunks = n_text ? calloc(n_text, sizeof(*chunks)) : NULL;
    rows = malloc((size_t)height * sizeof(*rows));
    if ((n_text && chunks == NULL) || rows == NULL) {
        rc = FX_ENOMEM;
        goto out;
    }
    if (setjmp(png_jmpbuf(png))) {
        rc = b->oom ? FX_ENOMEM : FX_EINTERNAL;
        goto out;
    }
    png_set_write_fn(png, b, mem_write, mem_flush);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (size_t i = 0; i < n_text; i++) {
        chunks[i].compression = PNG_ITXT_COMPRESSION_NONE;
        chunks[i].key = (png_charp)text[i].key;
        chunks[i].text = (png_charp)text[i].value;
        chunks[i].itxt_length = strlen(text[i].value);
        chunks[i].lang = NULL;
        chunks[i].lang_key = NULL;
    }
    if (n_text)
        png_set_text(png, info, chunks, (int)n_text);
    for (int y = 0; y < height; y++)
        rows[y] = (png_bytep)(rgb + (size_t)y * (size_t)width * 3);
    png_set_rows(png, info, rows);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    rc = 0;
out:
    png_destroy_write_struct(&png, &info);
    free(chunks);
    free(rows);
    return rc;
}

int pngw_encode(const uint8_t *rgb, int width, int height, const struct pngw_text *text,
                size_t n_text, uint8_t **out, size_t *out_len)
{
    struct membuf b = {0};
    int rc;
    if (out == NULL || out_len == NULL)
        return FX_EINVAL;
    *out = NULL;
    *out_len = 0;
    if (rgb == NULL || width <= 0 || height <= 0 || width > 1000000 || height > 1000000 ||
        (n_text && text == NULL))
        return FX_EINVAL;
    for (size_t i = 0; i < n_text; i++) {
        size_t k = text[i].key ? strlen(text[i].key) : 0;
        if (k < 1 || k > 79 || text[i].value == NULL)
            return FX_EINVAL;
    }
    rc = encode(rgb, width, height, text, n_text, &b);
    if (rc != 0) {
        free(b.data);
        return rc;
    }
    *out = b.data;
    *out_len = b.len;
    return 0;
}
