/* lora.c - see lora.h.  The map becomes one sorted table of key stems (the part of a key
 * between a layout's prefix and a down/up/alpha suffix) so that a file's keys resolve by
 * binary search; a full map has ~2000 layers, each with a stem per layout. */
#include "lora.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "safetensors.h"

#define MAP_MAX_BYTES (64u * 1024 * 1024)
#define MAP_MAX_LAYERS 100000
#define MAP_MAX_DIFFUSERS 16
#define MAP_MAX_AFFIXES 8 /* prefixes per layout and part, suffixes per kind */
#define MAP_NAME_MAX 256  /* layer and diffusers names */
#define MAP_AFFIX_MAX 128 /* a prefix or suffix */
#define MAP_DIM_MAX (1 << 20)

enum { LAYOUT_KOHYA, LAYOUT_DIFFUSERS, LAYOUT_BFL, N_LAYOUTS };
enum { KIND_DOWN, KIND_UP, KIND_ALPHA, N_KINDS };
#define N_PARTS 3

static const char *const layout_names[N_LAYOUTS] = {"kohya", "diffusers", "bfl"};
static const char *const kind_names[N_KINDS] = {"down", "up", "alpha"};
static const char *const part_names[N_PARTS] = {"transformer", "clip", "t5"};
static const char *const format_names[] = {"fp32", "bf16", "int8", "fp8", "int4"};

struct sub { /* one diffusers name of a layer */
    char *name;
    int64_t row0, rows;
    bool swap;
};

struct layer {
    enum fx_lora_part part;
    char *name;  /* canonical: bfl's names, Hugging Face's for the encoders */
    char *kohya; /* name with '.' -> '_' */
    int64_t out, in;
    int format; /* index into format_names */
    struct sub *subs;
    int n_subs;
    int slot0; /* slots: slot0 the whole layer, slot0 + 1 + i diffusers name i */
};

struct stem {
    const char *s; /* borrowed from a layer */
    int part, layout;
    int layer, sub; /* sub -1: the whole layer */
};

struct fx_lora_map {
    char *suffix[N_KINDS][MAP_MAX_AFFIXES];
    int n_suffix[N_KINDS];
    char *prefix[N_PARTS][N_LAYOUTS][MAP_MAX_AFFIXES];
    int n_prefix[N_PARTS][N_LAYOUTS];
    struct layer *layers;
    size_t n_layers;
    struct stem *stems; /* sorted by (part, layout, s) */
    size_t n_stems;
    int n_slots;
};

struct fx_lora_file {
    struct fx_lora_info info;
    struct fx_lora_entry *e;
    size_t n;
    char sha256[65];
};

/* ------------------------------------------------------------------------------------------ */
/* lora_map.json */

void fx_lora_map_free(struct fx_lora_map *m)
{
    if (m == NULL)
        return;
    for (int k = 0; k < N_KINDS; k++)
        for (int i = 0; i < m->n_suffix[k]; i++)
            free(m->suffix[k][i]);
    for (int p = 0; p < N_PARTS; p++)
        for (int l = 0; l < N_LAYOUTS; l++)
            for (int i = 0; i < m->n_prefix[p][l]; i++)
                free(m->prefix[p][l][i]);
    for (size_t i = 0; i < m->n_layers; i++) {
        struct layer *L = &m->layers[i];
        free(L->name);
        free(L->kohya);
        for (int j = 0; j < L->n_subs; j++)
            free(L->subs[j].name);
        free(L->subs);
    }
    free(m->layers);
    free(m->stems);
    free(m);
}

static int lookup(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

static json_object *field(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (o == NULL || !json_object_is_type(o, json_type_object) ||
        !json_object_object_get_ex(o, key, &v))
        return NULL;
    return v;
}

/* A string of length lo..hi without NUL; NULL otherwise. */
static const char *str_of(json_object *o, size_t lo, size_t hi)
{
    if (o == NULL || !json_object_is_type(o, json_type_string))
        return NULL;
    const char *s = json_object_get_string(o);
    size_t n = (size_t)json_object_get_string_len(o);
    return n >= lo && n <= hi && strlen(s) == n ? s : NULL;
}

static int64_t int_of(json_object *o, int64_t lo, int64_t hi)
{
    if (o == NULL || !json_object_is_type(o, json_type_int))
        return lo - 1;
    int64_t v = json_object_get_int64(o);
    return v >= lo && v <= hi ? v : lo - 1;
}

/* Layer and diffusers names: what a module path holds, nothing a key could be confused by. */
static bool name_ok(const char *s)
{
    if (s == NULL || *s == '\0' || *s == '.' || s[strlen(s) - 1] == '.')
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.'))
            return false;
    return true;
}

/* An array of 1..MAP_MAX_AFFIXES (0.. when may_be_empty) strings into dst[]. */
static int affixes(json_object *a, bool may_be_empty, size_t min_len, char **dst, int *n,
                   const char *what, char *msg, size_t msg_len)
{
    if (a == NULL || !json_object_is_type(a, json_type_array) ||
        json_object_array_length(a) > MAP_MAX_AFFIXES ||
        (!may_be_empty && json_object_array_length(a) == 0))
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "lora_map.json: '%s' is not an array of %d to %d strings", what,
                       may_be_empty ? 0 : 1, MAP_MAX_AFFIXES);
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        const char *s = str_of(json_object_array_get_idx(a, i), min_len, MAP_AFFIX_MAX);
        if (s == NULL)
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "lora_map.json: '%s'[%zu] is not a string of %zu to %d bytes", what, i,
                           min_len, MAP_AFFIX_MAX);
        if ((dst[*n] = strdup(s)) == NULL)
            return FX_ENOMEM;
        (*n)++;
    }
    return 0;
}

/* A layer's diffusers names; none when the field is absent (a layer diffusers has no name for). */
static int parse_subs(struct layer *L, size_t li, json_object *a, char *msg, size_t msg_len)
{
    if (a == NULL)
        return 0;
    if (!json_object_is_type(a, json_type_array) || json_object_array_length(a) > MAP_MAX_DIFFUSERS)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "lora_map.json: layers[%zu].diffusers is not an array of at most %d "
                       "entries",
                       li, MAP_MAX_DIFFUSERS);
    size_t n = json_object_array_length(a);
    L->subs = calloc(n ? n : 1, sizeof(*L->subs));
    if (L->subs == NULL)
        return FX_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_array_get_idx(a, i), *sw = field(o, "swap");
        struct sub *s = &L->subs[i];
        const char *name = str_of(field(o, "name"), 1, MAP_NAME_MAX);
        s->row0 = int_of(field(o, "row0"), 0, L->out - 1);
        s->rows = int_of(field(o, "rows"), 1, L->out);
        if (!name_ok(name))
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "lora_map.json: layers[%zu].diffusers[%zu].name is not a module name",
                           li, i);
        if (s->row0 < 0 || s->rows < 1 || s->row0 + s->rows > L->out)
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "lora_map.json: layers[%zu].diffusers[%zu]: row0/rows not integers "
                           "inside the layer's %" PRId64 " rows",
                           li, i, L->out);
        if (sw != NULL && !json_object_is_type(sw, json_type_boolean))
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "lora_map.json: layers[%zu].diffusers[%zu].swap is not a boolean", li,
                           i);
        s->swap = sw != NULL && json_object_get_boolean(sw);
        if (s->swap && s->rows % 2 != 0)
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "lora_map.json: layers[%zu].diffusers[%zu]: swap needs an even row "
                           "count",
                           li, i);
        for (size_t j = 0; j < i; j++)
            if (s->row0 < L->subs[j].row0 + L->subs[j].rows && L->subs[j].row0 < s->row0 + s->rows)
                return fx_fail(msg, msg_len, FX_EFORMAT,
                               "lora_map.json: layers[%zu].diffusers[%zu] overlaps the rows of "
                               "diffusers[%zu]",
                               li, i, j);
        if ((s->name = strdup(name)) == NULL)
            return FX_ENOMEM;
        L->n_subs++;
    }
    return 0;
}

static int parse_layer(struct fx_lora_map *m, size_t li, json_object *o, char *msg, size_t msg_len)
{
    struct layer *L = &m->layers[li];
    const char *part = str_of(field(o, "part"), 1, 32);
    const char *name = str_of(field(o, "layer"), 1, MAP_NAME_MAX);
    const char *format = str_of(field(o, "format"), 1, 32);
    int p = part ? lookup(part, part_names, N_PARTS) : -1;
    if (!json_object_is_type(o, json_type_object))
        return fx_fail(msg, msg_len, FX_EFORMAT, "lora_map.json: layers[%zu] is not an object", li);
    if (p < 0)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "lora_map.json: layers[%zu].part is not transformer, clip or t5", li);
    if (!name_ok(name))
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "lora_map.json: layers[%zu].layer is not a module name", li);
    L->part = (enum fx_lora_part)p;
    L->out = int_of(field(o, "out"), 1, MAP_DIM_MAX);
    L->in = int_of(field(o, "in"), 1, MAP_DIM_MAX);
    if (L->out < 1 || L->in < 1)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "lora_map.json: layers[%zu] ('%s'): out and in must be integers in 1..%d",
                       li, name, MAP_DIM_MAX);
    L->format = format ? lookup(format, format_names, 5) : -1;
    if (L->format < 0)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "lora_map.json: layers[%zu] ('%s'): format is not fp32, bf16, int8, fp8 "
                       "or int4",
                       li, name);
    if ((L->name = strdup(name)) == NULL || (L->kohya = strdup(name)) == NULL)
        return FX_ENOMEM;
    for (char *c = L->kohya; *c; c++)
        if (*c == '.')
            *c = '_';
    return parse_subs(L, li, field(o, "diffusers"), msg, msg_len);
}

static int cmp_stem(const void *a, const void *b)
{
    const struct stem *x = a, *y = b;
    if (x->part != y->part)
        return x->part < y->part ? -1 : 1;
    if (x->layout != y->layout)
        return x->layout < y->layout ? -1 : 1;
    return strcmp(x->s, y->s);
}

static int build_stems(struct fx_lora_map *m, char *msg, size_t msg_len)
{
    size_t n = 0;
    for (size_t i = 0; i < m->n_layers; i++)
        n += 2 + (size_t)m->layers[i].n_subs;
    m->stems = calloc(n ? n : 1, sizeof(*m->stems));
    if (m->stems == NULL)
        return FX_ENOMEM;
    int slot = 0;
    for (size_t i = 0; i < m->n_layers; i++) {
        struct layer *L = &m->layers[i];
        int p = (int)L->part;
        L->slot0 = slot;
        slot += 1 + L->n_subs;
        m->stems[m->n_stems++] = (struct stem){L->name, p, LAYOUT_BFL, (int)i, -1};
        m->stems[m->n_stems++] = (struct stem){L->kohya, p, LAYOUT_KOHYA, (int)i, -1};
        for (int j = 0; j < L->n_subs; j++)
            m->stems[m->n_stems++] = (struct stem){L->subs[j].name, p, LAYOUT_DIFFUSERS, (int)i, j};
    }
    m->n_slots = slot;
    qsort(m->stems, m->n_stems, sizeof(*m->stems), cmp_stem);
    for (size_t k = 1; k < m->n_stems; k++)
        if (cmp_stem(&m->stems[k - 1], &m->stems[k]) == 0)
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "lora_map.json: layers '%s' and '%s' share the %s key name '%s'",
                           m->layers[m->stems[k - 1].layer].name, m->layers[m->stems[k].layer].name,
                           layout_names[m->stems[k].layout], m->stems[k].s);
    return 0;
}

static int parse_map(struct fx_lora_map *m, json_object *j, char *msg, size_t msg_len)
{
    const char *format = str_of(field(j, "format"), 1, 64);
    if (format == NULL || strcmp(format, "fluxcgi-lora-map") != 0)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "lora_map.json: 'format' is not \"fluxcgi-lora-map\"");
    if (int_of(field(j, "version"), 1, 1) != 1)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "lora_map.json: 'version' is not 1 (this build reads version 1; "
                       "re-export the model with this version's fluxexport)");
    json_object *suf = field(j, "suffixes"), *parts = field(j, "parts"),
                *layers = field(j, "layers");
    if (suf == NULL || !json_object_is_type(suf, json_type_object))
        return fx_fail(msg, msg_len, FX_EFORMAT, "lora_map.json: 'suffixes' is not an object");
    for (int k = 0; k < N_KINDS; k++) {
        char what[32];
        snprintf(what, sizeof(what), "suffixes.%s", kind_names[k]);
        int rc = affixes(field(suf, kind_names[k]), k == KIND_ALPHA, 1, m->suffix[k],
                         &m->n_suffix[k], what, msg, msg_len);
        if (rc != 0)
            return rc;
    }
    if (parts == NULL || !json_object_is_type(parts, json_type_object))
        return fx_fail(msg, msg_len, FX_EFORMAT, "lora_map.json: 'parts' is not an object");
    json_object_object_foreach(parts, pk, pv)
    {
        (void)pv;
        if (lookup(pk, part_names, N_PARTS) < 0)
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "lora_map.json: unknown part 'parts.%.64s' (transformer, clip, t5)", pk);
    }
    for (int p = 0; p < N_PARTS; p++) {
        json_object *po = field(parts, part_names[p]);
        if (po == NULL)
            continue; /* a model dir without that part has no layers of it either */
        if (!json_object_is_type(po, json_type_object))
            return fx_fail(msg, msg_len, FX_EFORMAT, "lora_map.json: 'parts.%s' is not an object",
                           part_names[p]);
        for (int l = 0; l < N_LAYOUTS; l++) {
            char what[64];
            snprintf(what, sizeof(what), "parts.%s.%s", part_names[p], layout_names[l]);
            int rc = affixes(field(po, layout_names[l]), true, 0, m->prefix[p][l],
                             &m->n_prefix[p][l], what, msg, msg_len);
            if (rc != 0)
                return rc;
        }
    }
    if (layers == NULL || !json_object_is_type(layers, json_type_array) ||
        json_object_array_length(layers) > MAP_MAX_LAYERS)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "lora_map.json: 'layers' is not an array of at most %d entries",
                       MAP_MAX_LAYERS);
    size_t n = json_object_array_length(layers);
    m->layers = calloc(n ? n : 1, sizeof(*m->layers));
    if (m->layers == NULL)
        return FX_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        m->n_layers = i + 1; /* freed with the map even when half parsed */
        int rc = parse_layer(m, i, json_object_array_get_idx(layers, i), msg, msg_len);
        if (rc != 0)
            return rc;
        if (field(parts, part_names[m->layers[i].part]) == NULL)
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "lora_map.json: layers[%zu] is of part '%s', which 'parts' lacks", i,
                           part_names[m->layers[i].part]);
    }
    return build_stems(m, msg, msg_len);
}

static int read_text(const char *path, char **out, size_t *n, char *msg, size_t msg_len)
{
    FILE *f = fopen(path, "rb");
    *out = NULL;
    if (f == NULL)
        return errno == ENOENT
                   ? FX_ENOENT
                   : fx_fail(msg, msg_len, FX_EIO, "cannot open '%s': %s", path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0, len = 0;
    int rc = 0;
    for (;;) {
        if (len == cap) {
            if (cap > MAP_MAX_BYTES) {
                rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': larger than %u bytes", path,
                             MAP_MAX_BYTES);
                break;
            }
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap + 1);
            if (nb == NULL) {
                rc = FX_ENOMEM;
                break;
            }
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (r == 0) {
            if (ferror(f))
                rc = fx_fail(msg, msg_len, FX_EIO, "'%s': read error", path);
            break;
        }
    }
    fclose(f);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    if (buf == NULL && (buf = malloc(1)) == NULL)
        return FX_ENOMEM;
    buf[len] = '\0';
    *out = buf;
    *n = len;
    return 0;
}

int fx_lora_map_load(const char *model_dir, struct fx_lora_map **out, char *msg, size_t msg_len)
{
    char path[4096];
    char *text = NULL;
    size_t n = 0;
    if (out == NULL)
        return FX_EINVAL;
    *out = NULL;
    if (model_dir == NULL ||
        (size_t)snprintf(path, sizeof(path), "%s/lora_map.json", model_dir) >= sizeof(path))
        return fx_fail(msg, msg_len, FX_EINVAL, "model dir path is too long");
    int rc = read_text(path, &text, &n, msg, msg_len);
    if (rc == FX_ENOENT)
        return fx_fail(msg, msg_len, FX_ENOTSUP,
                       "the model in '%s' was exported without lora_map.json; re-export it "
                       "(fluxexport export) to use LoRAs",
                       model_dir);
    if (rc != 0)
        return rc;
    json_tokener *tok = json_tokener_new();
    struct fx_lora_map *m = calloc(1, sizeof(*m));
    json_object *j = NULL;
    rc = FX_ENOMEM;
    if (tok == NULL || m == NULL || n > INT32_MAX)
        goto out;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS |
                                    JSON_TOKENER_VALIDATE_UTF8);
    j = json_tokener_parse_ex(tok, text, (int)n);
    if (j == NULL || json_tokener_get_error(tok) != json_tokener_success ||
        text[json_tokener_get_parse_end(tok) +
             strspn(text + json_tokener_get_parse_end(tok), " \t\r\n")] != '\0' ||
        strlen(text) != n) {
        enum json_tokener_error e = json_tokener_get_error(tok);
        rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': not valid JSON (%s)", path,
                     j == NULL && e == json_tokener_continue ? "unexpected end"
                     : j == NULL                             ? json_tokener_error_desc(e)
                                                             : "text after the object");
        goto out;
    }
    if (!json_object_is_type(j, json_type_object)) {
        rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': not a JSON object", path);
        goto out;
    }
    rc = parse_map(m, j, msg, msg_len);
    if (rc == 0) {
        *out = m;
        m = NULL;
    }
out:
    json_object_put(j);
    if (tok)
        json_tokener_free(tok);
    free(text);
    fx_lora_map_free(m);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Checking a file */

/* Where one key of a file lands. */
struct hit {
    int layer, sub, kind, layout;
};

static bool starts(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

/* Resolves key against the map's prefixes, suffixes and stems; false when unknown. */
static bool resolve(const struct fx_lora_map *m, const char *key, struct hit *h)
{
    size_t klen = strlen(key);
    char stem[MAP_NAME_MAX + 1];
    for (int p = 0; p < N_PARTS; p++)
        for (int l = 0; l < N_LAYOUTS; l++)
            for (int i = 0; i < m->n_prefix[p][l]; i++) {
                const char *pre = m->prefix[p][l][i];
                size_t plen = strlen(pre);
                if (!starts(key, pre))
                    continue;
                for (int k = 0; k < N_KINDS; k++)
                    for (int s = 0; s < m->n_suffix[k]; s++) {
                        const char *suf = m->suffix[k][s];
                        size_t slen = strlen(suf);
                        if (klen <= plen + slen || klen - plen - slen > MAP_NAME_MAX ||
                            strcmp(key + klen - slen, suf) != 0)
                            continue;
                        memcpy(stem, key + plen, klen - plen - slen);
                        stem[klen - plen - slen] = '\0';
                        struct stem want = {stem, p, l, 0, 0};
                        const struct stem *hit =
                            bsearch(&want, m->stems, m->n_stems, sizeof(want), cmp_stem);
                        if (hit != NULL) {
                            *h = (struct hit){hit->layer, hit->sub, k, l};
                            return true;
                        }
                    }
            }
    return false;
}

/* The tensors of one slot (a layer, or one diffusers name of it): indexes + 1, 0 = none. */
struct slot {
    size_t t[N_KINDS];
};

struct checked {
    struct fx_st_file *st;
    struct slot *slots;
    struct fx_lora_info info;
};

static bool is_matrix_dtype(enum fx_st_dtype d)
{
    return d == FX_ST_F32 || d == FX_ST_F16 || d == FX_ST_BF16;
}

static int slot_sub(const struct layer *L, int slot)
{
    return slot - L->slot0 - 1;
}

/* Validates one used slot's tensors; fills rank, alpha. */
static int check_slot(const struct fx_lora_map *m, struct fx_st_file *st, const struct layer *L,
                      int slot, const struct slot *s, int64_t *rank_out, float *factor, char *msg,
                      size_t msg_len)
{
    const char *fn = fx_st_file_name(st);
    int sub = slot_sub(L, slot);
    int64_t rows = sub < 0 ? L->out : L->subs[sub].rows;
    for (int k = KIND_DOWN; k <= KIND_UP; k++)
        if (s->t[k] == 0) {
            size_t other = s->t[k == KIND_DOWN ? KIND_UP : KIND_DOWN];
            if (other == 0)
                other = s->t[KIND_ALPHA];
            return fx_fail(msg, msg_len, FX_EFORMAT, "'%s': '%s' has no matching %s matrix", fn,
                           fx_st_name(st, other - 1), kind_names[k]);
        }
    size_t d = s->t[KIND_DOWN] - 1, u = s->t[KIND_UP] - 1;
    for (int k = 0; k < 2; k++) {
        size_t i = k ? u : d;
        if (!is_matrix_dtype(fx_st_dtype(st, i)))
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "'%s': '%s' is %s; LoRA matrices must be F32, F16 or BF16", fn,
                           fx_st_name(st, i), fx_st_dtype_name(fx_st_dtype(st, i)));
        if (fx_st_ndim(st, i) != 2)
            return fx_fail(msg, msg_len, FX_EFORMAT, "'%s': '%s' has %d dimensions, not 2", fn,
                           fx_st_name(st, i), fx_st_ndim(st, i));
    }
    const int64_t *ds = fx_st_shape(st, d), *us = fx_st_shape(st, u);
    int64_t rank = ds[0];
    if (rank < 1 || rank > FX_LORA_RANK_MAX)
        return fx_fail(msg, msg_len, FX_EFORMAT, "'%s': '%s': rank %" PRId64 " not in 1..%d", fn,
                       fx_st_name(st, d), rank, FX_LORA_RANK_MAX);
    if (ds[1] != L->in)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "'%s': '%s' is %" PRId64 " x %" PRId64 "; layer '%s' takes %" PRId64
                       " inputs (want %" PRId64 " x %" PRId64 ")",
                       fn, fx_st_name(st, d), ds[0], ds[1], L->name, L->in, rank, L->in);
    if (us[1] != rank)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "'%s': ranks differ: '%s' has rank %" PRId64 ", '%s' has %" PRId64, fn,
                       fx_st_name(st, d), rank, fx_st_name(st, u), us[1]);
    if (us[0] != rows)
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "'%s': '%s' is %" PRId64 " x %" PRId64 "; want %" PRId64 " x %" PRId64
                       " (the rows of layer '%s' it adapts)",
                       fn, fx_st_name(st, u), us[0], us[1], rows, rank, L->name);
    *rank_out = rank;
    *factor = 1.0f;
    if (s->t[KIND_ALPHA] != 0) {
        size_t a = s->t[KIND_ALPHA] - 1;
        enum fx_st_dtype t = fx_st_dtype(st, a);
        float alpha;
        if (fx_st_numel(st, a) != 1 || t == FX_ST_BOOL || t == FX_ST_F8_E4M3 || t == FX_ST_F8_E5M2)
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "'%s': '%s' is not one number (%" PRId64 " elements of %s)", fn,
                           fx_st_name(st, a), fx_st_numel(st, a), fx_st_dtype_name(t));
        int rc = fx_st_read_f32(st, a, &alpha, 1, msg, msg_len);
        if (rc != 0)
            return rc;
        if (!isfinite(alpha))
            return fx_fail(msg, msg_len, FX_EFORMAT, "'%s': '%s' is not finite", fn,
                           fx_st_name(st, a));
        *factor = alpha / (float)rank;
    }
    (void)m;
    return 0;
}

/* Everything fx_lora_check promises; on success c->st stays open and c->slots filled. */
static int check_file(const struct fx_lora_map *map, const char *path, struct checked *c, char *msg,
                      size_t msg_len)
{
    memset(c, 0, sizeof(*c));
    if (map == NULL || path == NULL)
        return fx_fail(msg, msg_len, FX_EINVAL, "no LoRA map or path");
    int rc = fx_st_open(path, &c->st, msg, msg_len);
    if (rc != 0)
        return rc;
    struct fx_st_file *st = c->st;
    const char *fn = fx_st_file_name(st);
    size_t n = fx_st_count(st);
    struct hit *hits = calloc(n ? n : 1, sizeof(*hits));
    c->slots = calloc(map->n_slots ? (size_t)map->n_slots : 1, sizeof(*c->slots));
    if (hits == NULL || c->slots == NULL) {
        free(hits);
        return FX_ENOMEM;
    }
    /* every key known, the unknown ones named (the first three) */
    size_t unknown = 0;
    char names[3][160];
    for (size_t i = 0; i < n; i++)
        if (!resolve(map, fx_st_name(st, i), &hits[i])) {
            if (unknown < 3)
                snprintf(names[unknown], sizeof(names[0]), "'%.150s'", fx_st_name(st, i));
            unknown++;
        }
    if (unknown > 0) {
        char more[48] = "";
        if (unknown > 3)
            snprintf(more, sizeof(more), " and %zu more", unknown - 3);
        rc = fx_fail(msg, msg_len, FX_EFORMAT,
                     "'%s': unknown key%s %s%s%s%s%s%s (not a layer of this model in any LoRA "
                     "layout)",
                     fn, unknown > 1 ? "s" : "", names[0], unknown > 1 ? ", " : "",
                     unknown > 1 ? names[1] : "", unknown > 2 ? ", " : "",
                     unknown > 2 ? names[2] : "", more);
        goto out;
    }
    if (n == 0) {
        rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': holds no LoRA weights", fn);
        goto out;
    }
    snprintf(c->info.layout, sizeof(c->info.layout), "%s", layout_names[hits[0].layout]);
    for (size_t i = 0; i < n; i++) {
        const struct layer *L = &map->layers[hits[i].layer];
        struct slot *s = &c->slots[L->slot0 + 1 + hits[i].sub];
        size_t *t = &s->t[hits[i].kind];
        if (*t != 0) {
            rc = fx_fail(msg, msg_len, FX_EFORMAT,
                         "'%s': '%s' and '%s' are both the %s%s of layer '%s'", fn,
                         fx_st_name(st, *t - 1), fx_st_name(st, i), kind_names[hits[i].kind],
                         hits[i].kind == KIND_ALPHA ? "" : " matrix", L->name);
            goto out;
        }
        *t = i + 1;
    }
    /* per layer: the whole layer and a diffusers name of it both adapt the same rows (the
     * map's diffusers names of one layer never overlap) */
    c->info.rank_min = INT32_MAX;
    for (size_t li = 0; li < map->n_layers && rc == 0; li++) {
        const struct layer *L = &map->layers[li];
        size_t whole = 0;
        for (int slot = L->slot0; slot <= L->slot0 + L->n_subs && rc == 0; slot++) {
            const struct slot *s = &c->slots[slot];
            size_t any = s->t[KIND_DOWN] ? s->t[KIND_DOWN]
                         : s->t[KIND_UP] ? s->t[KIND_UP]
                                         : s->t[KIND_ALPHA];
            if (any == 0)
                continue;
            if (slot == L->slot0)
                whole = any;
            else if (whole != 0) {
                rc = fx_fail(msg, msg_len, FX_EFORMAT,
                             "'%s': '%s' and '%s' both adapt rows of layer '%s'", fn,
                             fx_st_name(st, whole - 1), fx_st_name(st, any - 1), L->name);
                break;
            }
            int64_t rank, rows = slot == L->slot0 ? L->out : L->subs[slot_sub(L, slot)].rows;
            float factor;
            rc = check_slot(map, st, L, slot, s, &rank, &factor, msg, msg_len);
            if (rc != 0)
                break;
            int64_t p = rank * (L->in + rows);
            if (c->info.params > FX_LORA_PARAMS_MAX - p) {
                rc = fx_fail(msg, msg_len, FX_ETOOBIG, "'%s': more than %lld LoRA parameters", fn,
                             (long long)FX_LORA_PARAMS_MAX);
                break;
            }
            c->info.params += p;
            c->info.layers++;
            if (rank < c->info.rank_min)
                c->info.rank_min = (int)rank;
            if (rank > c->info.rank_max)
                c->info.rank_max = (int)rank;
            if (L->part != FX_LORA_TRANSFORMER)
                c->info.text_encoders = true;
        }
    }
out:
    free(hits);
    if (rc != 0) {
        fx_st_close(c->st);
        free(c->slots);
        memset(c, 0, sizeof(*c));
    }
    return rc;
}

int fx_lora_check(const struct fx_lora_map *map, const char *path, struct fx_lora_info *info,
                  char *msg, size_t msg_len)
{
    struct checked c;
    int rc = check_file(map, path, &c, msg, msg_len);
    if (rc != 0)
        return rc;
    if (info != NULL)
        *info = c.info;
    fx_st_close(c.st);
    free(c.slots);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Reading a file */

void fx_lora_file_free(struct fx_lora_file *f)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i < f->n; i++) {
        free((char *)f->e[i].layer);
        free((float *)f->e[i].down);
        free((float *)f->e[i].up);
    }
    free(f->e);
    free(f);
}

/* Reads tensor i as float32 into a new array, refusing NaN and infinities. */
static int read_matrix(struct fx_st_file *st, size_t i, float **out, char *msg, size_t msg_len)
{
    size_t n = (size_t)fx_st_numel(st, i);
    float *v = malloc(n * sizeof(float));
    if (v == NULL)
        return FX_ENOMEM;
    int rc = fx_st_read_f32(st, i, v, n, msg, msg_len);
    long bad = rc == 0 ? fx_st_first_nonfinite(v, n) : -1;
    if (bad >= 0)
        rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': '%s' holds %s at index %ld",
                     fx_st_file_name(st), fx_st_name(st, i), isnan(v[bad]) ? "NaN" : "an infinity",
                     bad);
    if (rc != 0) {
        free(v);
        return rc;
    }
    *out = v;
    return 0;
}

int fx_lora_read(const struct fx_lora_map *map, const char *path, struct fx_lora_file **out,
                 char *msg, size_t msg_len)
{
    if (out == NULL)
        return FX_EINVAL;
    *out = NULL;
    struct checked c;
    int rc = check_file(map, path, &c, msg, msg_len);
    if (rc != 0)
        return rc;
    struct fx_lora_file *f = calloc(1, sizeof(*f));
    if (f == NULL || (f->e = calloc((size_t)c.info.layers, sizeof(*f->e))) == NULL) {
        rc = FX_ENOMEM;
        goto out;
    }
    f->info = c.info;
    /* entries in the map's order: layers, then each layer's rows from the top */
    for (size_t li = 0; li < map->n_layers && rc == 0; li++) {
        const struct layer *L = &map->layers[li];
        for (int slot = L->slot0; slot <= L->slot0 + L->n_subs && rc == 0; slot++) {
            const struct slot *s = &c.slots[slot];
            if (s->t[KIND_DOWN] == 0)
                continue; /* checked: a used slot has both matrices */
            int sub = slot_sub(L, slot);
            struct fx_lora_entry *e = &f->e[f->n++];
            e->part = L->part;
            e->out = L->out;
            e->in = L->in;
            e->row0 = sub < 0 ? 0 : L->subs[sub].row0;
            e->rows = sub < 0 ? L->out : L->subs[sub].rows;
            e->swap = sub >= 0 && L->subs[sub].swap;
            rc = check_slot(map, c.st, L, slot, s, &e->rank, &e->factor, msg, msg_len);
            if (rc == 0 && (e->layer = strdup(L->name)) == NULL)
                rc = FX_ENOMEM;
            float *down = NULL, *up = NULL;
            if (rc == 0)
                rc = read_matrix(c.st, s->t[KIND_DOWN] - 1, &down, msg, msg_len);
            e->down = down;
            if (rc == 0)
                rc = read_matrix(c.st, s->t[KIND_UP] - 1, &up, msg, msg_len);
            e->up = up;
        }
    }
    if (rc == 0)
        rc = fx_st_sha256(c.st, f->sha256, msg, msg_len);
out:
    fx_st_close(c.st);
    free(c.slots);
    if (rc != 0) {
        fx_lora_file_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

size_t fx_lora_file_count(const struct fx_lora_file *f)
{
    return f->n;
}

const struct fx_lora_entry *fx_lora_file_entry(const struct fx_lora_file *f, size_t i)
{
    return i < f->n ? &f->e[i] : NULL;
}

const struct fx_lora_info *fx_lora_file_info(const struct fx_lora_file *f)
{
    return &f->info;
}

const char *fx_lora_file_sha256(const struct fx_lora_file *f)
{
    return f->sha256;
}
