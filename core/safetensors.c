/* safetensors.c - see safetensors.h.  Every size read from the file is checked before use. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "sha256.h"

/* The bounce buffer of conversions and hashing: bytes per pread. */
#define CHUNK (256u * 1024)
/* Longest tensor name or metadata string accepted. */
#define NAME_MAX_LEN 4096

struct tensor {
    char *name;
    enum fx_st_dtype dtype;
    int ndim;
    int64_t shape[FX_ST_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end; /* relative to the data section */
};

struct meta {
    char *key, *value;
};

struct fx_st_file {
    int fd;
    char name[256];
    uint64_t size;     /* of the file at open */
    uint64_t data_off; /* 8 + header length */
    size_t n;
    struct tensor *t;
    size_t *by_name; /* indexes into t, sorted by name */
    size_t n_meta;
    struct meta *meta;
};

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [FX_ST_BOOL] = {"BOOL", 1}, [FX_ST_U8] = {"U8", 1},           [FX_ST_I8] = {"I8", 1},
    [FX_ST_I16] = {"I16", 2},   [FX_ST_U16] = {"U16", 2},         [FX_ST_I32] = {"I32", 4},
    [FX_ST_U32] = {"U32", 4},   [FX_ST_I64] = {"I64", 8},         [FX_ST_U64] = {"U64", 8},
    [FX_ST_F16] = {"F16", 2},   [FX_ST_BF16] = {"BF16", 2},       [FX_ST_F32] = {"F32", 4},
    [FX_ST_F64] = {"F64", 8},   [FX_ST_F8_E4M3] = {"F8_E4M3", 1}, [FX_ST_F8_E5M2] = {"F8_E5M2", 1},
};
#define N_DTYPES (sizeof(dtypes) / sizeof(dtypes[0]))

const char *fx_st_dtype_name(enum fx_st_dtype t)
{
    return (size_t)t < N_DTYPES ? dtypes[t].name : "?";
}

size_t fx_st_dtype_size(enum fx_st_dtype t)
{
    return (size_t)t < N_DTYPES ? dtypes[t].size : 0;
}

static int dtype_parse(const char *s)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        if (strcmp(s, dtypes[i].name) == 0)
            return (int)i;
    return -1;
}

/* Reads exactly len bytes at off; a short read (the file shrank) is an error too. */
static int pread_full(const struct fx_st_file *f, void *buf, size_t len, uint64_t off, char *msg,
                      size_t msg_len)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t r = pread(f->fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return fx_fail(msg, msg_len, FX_EIO, "'%s': read error: %s", f->name, strerror(errno));
        if (r == 0)
            return fx_fail(msg, msg_len, FX_EIO, "'%s': file shorter than when opened", f->name);
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static void free_contents(struct fx_st_file *f)
{
    for (size_t i = 0; i < f->n; i++)
        free(f->t[i].name);
    free(f->t);
    free(f->by_name);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->meta);
}

void fx_st_close(struct fx_st_file *f)
{
    if (f == NULL)
        return;
    if (f->fd >= 0)
        close(f->fd);
    free_contents(f);
    free(f);
}

/* A JSON non-negative integer no larger than max, or -1. */
static int64_t json_u(json_object *o, int64_t max)
{
    if (o == NULL || !json_object_is_type(o, json_type_int))
        return -1;
    int64_t v = json_object_get_int64(o); /* a uint64 past INT64_MAX reads as INT64_MAX */
    return v >= 0 && v <= max ? v : -1;
}

static bool valid_string(const char *s, size_t len)
{
    return len > 0 && len <= NAME_MAX_LEN && strlen(s) == len;
}

static int parse_metadata(struct fx_st_file *f, json_object *o, char *msg, size_t msg_len)
{
    if (!json_object_is_type(o, json_type_object))
        return fx_fail(msg, msg_len, FX_EFORMAT, "'%s': '__metadata__' is not an object", f->name);
    size_t n = (size_t)json_object_object_length(o);
    f->meta = calloc(n ? n : 1, sizeof(*f->meta));
    if (f->meta == NULL)
        return FX_ENOMEM;
    json_object_object_foreach(o, k, v)
    {
        if (!json_object_is_type(v, json_type_string))
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "'%s': metadata '%.200s' is not a string (safetensors allows only "
                           "strings there)",
                           f->name, k);
        struct meta *m = &f->meta[f->n_meta];
        m->key = strdup(k);
        m->value = strdup(json_object_get_string(v));
        if (m->key == NULL || m->value == NULL) {
            free(m->key);
            free(m->value);
            return FX_ENOMEM;
        }
        f->n_meta++;
    }
    return 0;
}

static int parse_tensor(struct fx_st_file *f, const char *key, json_object *o, uint64_t data_size,
                        char *msg, size_t msg_len)
{
    struct tensor *t = &f->t[f->n];
    json_object *dt, *shape, *offs;
    if (!valid_string(key, strlen(key)))
        return fx_fail(msg, msg_len, FX_EFORMAT, "'%s': a tensor name is empty or too long",
                       f->name);
    if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, "dtype", &dt) ||
        !json_object_object_get_ex(o, "shape", &shape) ||
        !json_object_object_get_ex(o, "data_offsets", &offs))
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "'%s': tensor '%.200s' is not an object with dtype, shape and data_offsets",
                       f->name, key);
    if (json_object_object_length(o) != 3)
        return fx_fail(msg, msg_len, FX_EFORMAT, "'%s': tensor '%.200s' has unknown fields",
                       f->name, key);
    int d =
        json_object_is_type(dt, json_type_string) ? dtype_parse(json_object_get_string(dt)) : -1;
    if (d < 0)
        return fx_fail(msg, msg_len, FX_EFORMAT, "'%s': tensor '%.200s' has an unknown dtype",
                       f->name, key);
    t->dtype = (enum fx_st_dtype)d;
    if (!json_object_is_type(shape, json_type_array) ||
        json_object_array_length(shape) > FX_ST_MAX_DIMS)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "'%s': tensor '%.200s': shape is not an array of at most %d dimensions",
                       f->name, key, FX_ST_MAX_DIMS);
    t->ndim = (int)json_object_array_length(shape);
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        int64_t v = json_u(json_object_array_get_idx(shape, (size_t)i), INT64_MAX);
        if (v < 0)
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "'%s': tensor '%.200s': dimension %d is not a non-negative integer",
                           f->name, key, i);
        t->shape[i] = v;
        if (__builtin_mul_overflow(numel, (uint64_t)v, &numel) || numel > (uint64_t)INT64_MAX)
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "'%s': tensor '%.200s': element count overflows", f->name, key);
    }
    t->numel = (int64_t)numel;
    if (!json_object_is_type(offs, json_type_array) || json_object_array_length(offs) != 2)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "'%s': tensor '%.200s': data_offsets is not [begin, end]", f->name, key);
    int64_t b = json_u(json_object_array_get_idx(offs, 0), (int64_t)data_size);
    int64_t e = json_u(json_object_array_get_idx(offs, 1), (int64_t)data_size);
    if (b < 0 || e < 0 || e < b)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "'%s': tensor '%.200s': data_offsets outside the data section (%" PRIu64
                       " bytes) or reversed",
                       f->name, key, data_size);
    uint64_t bytes;
    if (__builtin_mul_overflow(numel, (uint64_t)dtypes[d].size, &bytes) ||
        bytes != (uint64_t)(e - b))
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "'%s': tensor '%.200s': %" PRId64 " bytes of data for %" PRIu64
                       " elements of %s",
                       f->name, key, e - b, numel, dtypes[d].name);
    t->begin = (uint64_t)b;
    t->end = (uint64_t)e;
    t->name = strdup(key);
    if (t->name == NULL)
        return FX_ENOMEM;
    f->n++;
    return 0;
}

static int cmp_offset(const void *a, const void *b)
{
    const struct tensor *x = *(const struct tensor *const *)a,
                        *y = *(const struct tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const struct tensor *const *)a)->name,
                  (*(const struct tensor *const *)b)->name);
}

/* The tensors, sorted by offset, must tile [0, data_size) exactly; names must be unique. */
static int check_layout(struct fx_st_file *f, uint64_t data_size, char *msg, size_t msg_len)
{
    const struct tensor **p = malloc((f->n ? f->n : 1) * sizeof(*p));
    f->by_name = malloc((f->n ? f->n : 1) * sizeof(*f->by_name));
    if (p == NULL || f->by_name == NULL) {
        free(p);
        return FX_ENOMEM;
    }
    for (size_t i = 0; i < f->n; i++)
        p[i] = &f->t[i];
    qsort(p, f->n, sizeof(*p), cmp_name);
    int rc = 0;
    for (size_t k = 0; k < f->n; k++) {
        f->by_name[k] = (size_t)(p[k] - f->t);
        if (k > 0 && rc == 0 && strcmp(p[k - 1]->name, p[k]->name) == 0)
            rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': tensor '%.200s' appears twice", f->name,
                         p[k]->name);
    }
    qsort(p, f->n, sizeof(*p), cmp_offset);
    uint64_t pos = 0;
    for (size_t k = 0; k < f->n && rc == 0; k++) {
        const struct tensor *t = p[k];
        if (t->begin < pos)
            rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': tensor '%.200s' overlaps '%.200s'",
                         f->name, t->name, p[k - 1]->name);
        else if (t->begin > pos)
            rc = fx_fail(msg, msg_len, FX_EFORMAT,
                         "'%s': tensor '%.200s' leaves a gap of %" PRIu64
                         " bytes before it in the data section",
                         f->name, t->name, t->begin - pos);
        pos = t->end;
    }
    if (rc == 0 && pos != data_size)
        rc = fx_fail(msg, msg_len, FX_EFORMAT,
                     "'%s': %" PRIu64 " bytes after the last tensor (data section %" PRIu64
                     " bytes)",
                     f->name, data_size - pos, data_size);
    free(p);
    return rc;
}

static int parse_header(struct fx_st_file *f, const char *text, size_t len, char *msg,
                        size_t msg_len)
{
    uint64_t data_size = f->size - f->data_off;
    if (memchr(text, '\0', len) != NULL)
        return fx_fail(msg, msg_len, FX_EFORMAT, "'%s': header holds a NUL byte", f->name);
    json_tokener *tok = json_tokener_new_ex(64);
    if (tok == NULL)
        return FX_ENOMEM;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS |
                                    JSON_TOKENER_VALIDATE_UTF8);
    json_object *j = json_tokener_parse_ex(tok, text, (int)len);
    int rc = 0;
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    if (j == NULL || jerr != json_tokener_success) {
        rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': header is not JSON: %s", f->name,
                     j == NULL && jerr == json_tokener_continue ? "unexpected end"
                                                                : json_tokener_error_desc(jerr));
        goto out;
    }
    for (size_t i = end; i < len; i++)
        if (text[i] != ' ' && text[i] != '\t' && text[i] != '\r' && text[i] != '\n') {
            rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': text after the header's JSON", f->name);
            goto out;
        }
    if (!json_object_is_type(j, json_type_object)) {
        rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': header is not a JSON object", f->name);
        goto out;
    }
    size_t n = (size_t)json_object_object_length(j);
    if (n > FX_ST_MAX_TENSORS) {
        rc = fx_fail(msg, msg_len, FX_ETOOBIG, "'%s': more than %d tensors", f->name,
                     FX_ST_MAX_TENSORS);
        goto out;
    }
    f->t = calloc(n ? n : 1, sizeof(*f->t));
    if (f->t == NULL) {
        rc = FX_ENOMEM;
        goto out;
    }
    bool seen_meta = false;
    json_object_object_foreach(j, k, v)
    {
        if (strcmp(k, "__metadata__") == 0) {
            /* json-c keeps the last of a repeated key; this guards a parser that keeps both */
            if (seen_meta) {
                rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': '__metadata__' appears twice",
                             f->name);
                break;
            }
            seen_meta = true;
            rc = parse_metadata(f, v, msg, msg_len);
        } else {
            rc = parse_tensor(f, k, v, data_size, msg, msg_len);
        }
        if (rc != 0)
            break;
    }
    if (rc == 0)
        rc = check_layout(f, data_size, msg, msg_len);
out:
    json_object_put(j);
    json_tokener_free(tok);
    return rc;
}

int fx_st_open(const char *path, struct fx_st_file **out, char *msg, size_t msg_len)
{
    *out = NULL;
    if (path == NULL)
        return FX_EINVAL;
    struct fx_st_file *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return FX_ENOMEM;
    const char *base = strrchr(path, '/');
    snprintf(f->name, sizeof(f->name), "%s", base ? base + 1 : path);
    /* O_NONBLOCK: a FIFO in place of the file must not hang the caller (it is refused below
     * as not a regular file); it changes nothing for a regular file's reads */
    f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (f->fd < 0) {
        int e = errno;
        fx_st_close(f);
        return fx_fail(msg, msg_len, e == ENOENT ? FX_ENOENT : FX_EIO, "'%s': cannot open: %s",
                       base ? base + 1 : path, strerror(e));
    }
    int rc = 0;
    char *text = NULL;
    struct stat st;
    uint8_t len8[8];
    if (fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = fx_fail(msg, msg_len, FX_EIO, "'%s': not a regular file", f->name);
        goto out;
    }
    f->size = (uint64_t)st.st_size;
    if (f->size < 8) {
        rc = fx_fail(msg, msg_len, FX_EFORMAT,
                     "'%s': %" PRIu64 " bytes, shorter than the 8-byte header length", f->name,
                     f->size);
        goto out;
    }
    rc = pread_full(f, len8, 8, 0, msg, msg_len);
    if (rc != 0)
        goto out;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | len8[i];
    if (hlen > FX_ST_HEADER_MAX) {
        rc = fx_fail(msg, msg_len, hlen > f->size - 8 ? FX_EFORMAT : FX_ETOOBIG,
                     "'%s': header length %" PRIu64 " over the %u-byte limit%s", f->name, hlen,
                     FX_ST_HEADER_MAX, hlen > f->size - 8 ? " and past the end of the file" : "");
        goto out;
    }
    if (hlen > f->size - 8 || hlen < 2) {
        rc = fx_fail(msg, msg_len, FX_EFORMAT,
                     "'%s': header length %" PRIu64 " does not fit the file's %" PRIu64
                     " bytes (truncated, or not a safetensors file)",
                     f->name, hlen, f->size);
        goto out;
    }
    f->data_off = 8 + hlen;
    text = malloc((size_t)hlen + 1);
    if (text == NULL) {
        rc = FX_ENOMEM;
        goto out;
    }
    rc = pread_full(f, text, (size_t)hlen, 8, msg, msg_len);
    if (rc != 0)
        goto out;
    text[hlen] = '\0';
    rc = parse_header(f, text, (size_t)hlen, msg, msg_len);
out:
    free(text);
    if (rc != 0) {
        fx_st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

const char *fx_st_file_name(const struct fx_st_file *f)
{
    return f->name;
}

uint64_t fx_st_file_size(const struct fx_st_file *f)
{
    return f->size;
}

size_t fx_st_count(const struct fx_st_file *f)
{
    return f->n;
}

const char *fx_st_name(const struct fx_st_file *f, size_t i)
{
    return f->t[i].name;
}

enum fx_st_dtype fx_st_dtype(const struct fx_st_file *f, size_t i)
{
    return f->t[i].dtype;
}

int fx_st_ndim(const struct fx_st_file *f, size_t i)
{
    return f->t[i].ndim;
}

const int64_t *fx_st_shape(const struct fx_st_file *f, size_t i)
{
    return f->t[i].shape;
}

int64_t fx_st_numel(const struct fx_st_file *f, size_t i)
{
    return f->t[i].numel;
}

long fx_st_find(const struct fx_st_file *f, const char *name)
{
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->t[f->by_name[mid]].name, name);
        if (c == 0)
            return (long)f->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

const char *fx_st_metadata(const struct fx_st_file *f, const char *key)
{
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0)
            return f->meta[i].value;
    return NULL;
}

/* IEEE half to float, by hand: subnormals renormalised, infinities and NaN kept. */
static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | man << 13;
    } else if (exp != 0) {
        bits = sign | (exp + 112) << 23 | man << 13;
    } else if (man == 0) {
        bits = sign;
    } else {
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400));
        bits = sign | (uint32_t)(112 - e) << 23 | (man & 0x3ff) << 13;
    }
    float v;
    memcpy(&v, &bits, 4);
    return v;
}

static uint64_t le(const uint8_t *p, size_t size)
{
    uint64_t v = 0;
    for (size_t i = size; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

static float convert(enum fx_st_dtype t, const uint8_t *p)
{
    uint64_t u = le(p, fx_st_dtype_size(t));
    switch (t) {
    case FX_ST_F32: {
        uint32_t b = (uint32_t)u;
        float v;
        memcpy(&v, &b, 4);
        return v;
    }
    case FX_ST_BF16: {
        uint32_t b = (uint32_t)u << 16;
        float v;
        memcpy(&v, &b, 4);
        return v;
    }
    case FX_ST_F16:
        return half_to_float((uint16_t)u);
    case FX_ST_F64: {
        double d;
        memcpy(&d, &u, 8);
        return (float)d;
    }
    case FX_ST_U8:
    case FX_ST_U16:
    case FX_ST_U32:
    case FX_ST_U64:
        return (float)u;
    case FX_ST_I8:
        return (float)(int8_t)u;
    case FX_ST_I16:
        return (float)(int16_t)u;
    case FX_ST_I32:
        return (float)(int32_t)u;
    case FX_ST_I64:
        return (float)(int64_t)u;
    default:
        return NAN;
    }
}

/* k items of type t at src into dst: the matrix types in loops of their own (a full-size
 * LoRA holds hundreds of millions of values), the rest through convert. */
static void convert_run(enum fx_st_dtype t, const uint8_t *src, float *dst, size_t k)
{
    uint32_t b;
    switch (t) {
    case FX_ST_F32:
        for (size_t j = 0; j < k; j++, src += 4) {
            b = (uint32_t)src[0] | (uint32_t)src[1] << 8 | (uint32_t)src[2] << 16 |
                (uint32_t)src[3] << 24;
            memcpy(&dst[j], &b, 4);
        }
        break;
    case FX_ST_BF16:
        for (size_t j = 0; j < k; j++, src += 2) {
            b = (uint32_t)src[0] << 16 | (uint32_t)src[1] << 24;
            memcpy(&dst[j], &b, 4);
        }
        break;
    case FX_ST_F16:
        for (size_t j = 0; j < k; j++, src += 2)
            dst[j] = half_to_float((uint16_t)(src[0] | src[1] << 8));
        break;
    default:
        for (size_t j = 0; j < k; j++, src += fx_st_dtype_size(t))
            dst[j] = convert(t, src);
    }
}

int fx_st_read_f32(const struct fx_st_file *f, size_t i, float *dst, size_t n, char *msg,
                   size_t msg_len)
{
    if (i >= f->n || (uint64_t)n != (uint64_t)f->t[i].numel)
        return fx_fail(msg, msg_len, FX_EINVAL, "'%s': read of tensor %zu with a wrong size",
                       f->name, i);
    const struct tensor *t = &f->t[i];
    if (t->dtype == FX_ST_BOOL || t->dtype == FX_ST_F8_E4M3 || t->dtype == FX_ST_F8_E5M2)
        return fx_fail(msg, msg_len, FX_ENOTSUP, "'%s': tensor '%.200s': %s is not a number type",
                       f->name, t->name, fx_st_dtype_name(t->dtype));
    size_t isz = fx_st_dtype_size(t->dtype);
    uint8_t *buf = malloc(CHUNK);
    if (buf == NULL)
        return FX_ENOMEM;
    size_t per = CHUNK / isz, done = 0;
    int rc = 0;
    while (done < n && rc == 0) {
        size_t k = n - done < per ? n - done : per;
        rc = pread_full(f, buf, k * isz, f->data_off + t->begin + (uint64_t)done * isz, msg,
                        msg_len);
        if (rc == 0)
            convert_run(t->dtype, buf, dst + done, k);
        done += k;
    }
    free(buf);
    return rc;
}

long fx_st_first_nonfinite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return (long)i;
    return -1;
}

int fx_st_sha256(const struct fx_st_file *f, char hex[65], char *msg, size_t msg_len)
{
    uint8_t *buf = malloc(CHUNK);
    if (buf == NULL)
        return FX_ENOMEM;
    struct sha256 c;
    int rc = sha256_init(&c);
    for (uint64_t off = 0; off < f->size && rc == 0;) {
        size_t k = f->size - off < CHUNK ? (size_t)(f->size - off) : CHUNK;
        rc = pread_full(f, buf, k, off, msg, msg_len);
        if (rc == 0)
            rc = sha256_update(&c, buf, k);
        off += k;
    }
    free(buf);
    uint8_t d[32];
    if (rc == 0)
        rc = sha256_final(&c, d);
    sha256_free(&c);
    if (rc != 0)
        return rc;
    sha256_to_hex(d, hex);
    return 0;
}
