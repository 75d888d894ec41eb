#include "manifest.h"

#include <dirent.h>
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "sha256.h"

#define MANIFEST_MAX_BYTES (1 << 20)

static int read_file(const char *path, char **out, size_t *out_len, char *msg, size_t len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n;
    *out = NULL;
    if (f == NULL)
        return fx_fail(msg, len, (errno == ENOENT || errno == ENOTDIR) ? FX_ENOENT : FX_EIO,
                       "cannot open '%s': %s", path, strerror(errno));
    buf = malloc(MANIFEST_MAX_BYTES + 1);
    if (buf == NULL) {
        fclose(f);
        return FX_ENOMEM;
    }
    n = fread(buf, 1, MANIFEST_MAX_BYTES + 1, f);
    if (ferror(f) || n > MANIFEST_MAX_BYTES) {
        int too_big = !ferror(f);
        fclose(f);
        free(buf);
        return fx_fail(msg, len, too_big ? FX_EFORMAT : FX_EIO, "'%s': %s", path,
                       too_big ? "larger than 1 MiB" : "read error");
    }
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}

/* The object at a dotted path ("modules.transformer.params"), borrowed; NULL if absent. */
static json_object *at(json_object *root, const char *path)
{
    char key[64];
    json_object *o = root;
    while (o && *path) {
        size_t k = strcspn(path, ".");
        if (k >= sizeof(key))
            return NULL;
        memcpy(key, path, k);
        key[k] = '\0';
        if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &o))
            return NULL;
        path += k + (path[k] == '.');
    }
    return o;
}

static int get_int(json_object *root, const char *path, long lo, long hi, int *out, char *msg,
                   size_t len)
{
    json_object *o = at(root, path);
    if (o == NULL || !json_object_is_type(o, json_type_int))
        return fx_fail(msg, len, FX_EFORMAT, "manifest.json: '%s' must be an integer", path);
    int64_t v = json_object_get_int64(o);
    if (v < lo || v > hi)
        return fx_fail(msg, len, FX_EFORMAT, "manifest.json: '%s' is out of range", path);
    *out = (int)v;
    return 0;
}

static int get_i64(json_object *root, const char *path, int64_t lo, int64_t *out, char *msg,
                   size_t len)
{
    json_object *o = at(root, path);
    if (o == NULL || !json_object_is_type(o, json_type_int))
        return fx_fail(msg, len, FX_EFORMAT, "manifest.json: '%s' must be an integer", path);
    errno = 0;
    int64_t v = json_object_get_int64(o);
    if (v < lo || errno == ERANGE)
        return fx_fail(msg, len, FX_EFORMAT, "manifest.json: '%s' is out of range", path);
    *out = v;
    return 0;
}

static int get_num(json_object *root, const char *path, double *out, char *msg, size_t len)
{
    json_object *o = at(root, path);
    if (o == NULL ||
        !(json_object_is_type(o, json_type_int) || json_object_is_type(o, json_type_double)) ||
        !isfinite(json_object_get_double(o)))
        return fx_fail(msg, len, FX_EFORMAT, "manifest.json: '%s' must be a finite number", path);
    *out = json_object_get_double(o);
    return 0;
}

static int get_str(json_object *root, const char *path, char *dst, size_t cap, char *msg,
                   size_t len)
{
    json_object *o = at(root, path);
    if (o == NULL || !json_object_is_type(o, json_type_string))
        return fx_fail(msg, len, FX_EFORMAT, "manifest.json: '%s' must be a string", path);
    const char *s = json_object_get_string(o);
    if (strlen(s) == 0 || strlen(s) >= cap)
        return fx_fail(msg, len, FX_EFORMAT, "manifest.json: '%s' is empty or too long", path);
    strcpy(dst, s);
    return 0;
}

/* dir + "/" + a relative file name that stays inside dir. */
static int get_path(json_object *root, const char *path, const char *dir, char *dst, char *msg,
                    size_t len)
{
    char rel[512];
    int rc = get_str(root, path, rel, sizeof(rel), msg, len);
    if (rc)
        return rc;
    if (rel[0] == '/' || strstr(rel, "..") != NULL || strchr(rel, '\\') != NULL)
        return fx_fail(msg, len, FX_EFORMAT,
                       "manifest.json: '%s' must be a file inside the model "
                       "dir, got '%s'",
                       path, rel);
    if ((size_t)snprintf(dst, MANIFEST_PATH_MAX, "%s/%s", dir, rel) >= MANIFEST_PATH_MAX)
        return fx_fail(msg, len, FX_EFORMAT, "manifest.json: '%s' makes a path too long", path);
    return 0;
}

static const char *const weight_names[] = {"fp32", "bf16", "int8", "fp8", "int4"};
#define N_WEIGHTS (int)(sizeof(weight_names) / sizeof(weight_names[0]))

const char *manifest_weights_name(int weights)
{
    return weights >= 0 && weights < N_WEIGHTS ? weight_names[weights] : "?";
}

static int weights_index(const char *s)
{
    for (int i = 0; i < N_WEIGHTS; i++)
        if (strcmp(s, weight_names[i]) == 0)
            return i;
    return -1;
}

/* modules.KEY's format and memory figures.  Plain weights must be in the compute dtype;
 * quantised ones are allowed where quantise is set (the transformer and T5). */
static int parse_module_mem(json_object *j, const char *key, int dtype, int quantise,
                            struct fx_manifest_module *mod, char *msg, size_t len)
{
    char path[96], fmt[16];
    int rc;
    mod->weights = dtype;
    snprintf(path, sizeof(path), "modules.%s.weights", key);
    if (at(j, path) != NULL) {
        snprintf(path, sizeof(path), "modules.%s.weights.format", key);
        if ((rc = get_str(j, path, fmt, sizeof(fmt), msg, len)))
            return rc;
        mod->weights = weights_index(fmt);
        if (mod->weights < 0)
            return fx_fail(msg, len, FX_EFORMAT,
                           "manifest.json: '%s' is '%s', not one of fp32, bf16, int8, fp8, int4",
                           path, fmt);
        if (mod->weights <= FX_WEIGHTS_BF16 && mod->weights != dtype)
            return fx_fail(msg, len, FX_EFORMAT,
                           "manifest.json: '%s' is '%s' but the model's dtype is '%s' (plain "
                           "weights are stored in the compute dtype)",
                           path, fmt, weight_names[dtype]);
        if (mod->weights > FX_WEIGHTS_BF16 && !quantise)
            return fx_fail(msg, len, FX_EFORMAT,
                           "manifest.json: '%s' is '%s'; only the transformer and T5 are "
                           "quantised",
                           path, fmt);
        if (mod->weights > FX_WEIGHTS_BF16) {
            snprintf(path, sizeof(path), "modules.%s.weights.dequant_bytes", key);
            if ((rc = get_i64(j, path, 0, &mod->dequant_bytes, msg, len)))
                return rc;
        }
    }
    /* older manifests have no param_bytes: the file's size is close (a few kB of code) */
    snprintf(path, sizeof(path), "modules.%s.param_bytes", key);
    if (at(j, path) == NULL)
        snprintf(path, sizeof(path), "modules.%s.bytes", key);
    return get_i64(j, path, 1, &mod->param_bytes, msg, len);
}

/* The figures core/plan.h works from: formats, bytes and dimensions. */
static int parse_memory(json_object *j, struct fx_manifest *m, char *msg, size_t len)
{
    const char *tp = "modules.transformer.params.", *t5 = "modules.t5_encoder.params.",
               *cp = "modules.clip_text.params.", *ap = "modules.ae_decoder.params.";
    char p[96], s[16];
    json_object *o;
    int rc, dtype = m->bf16 ? FX_WEIGHTS_BF16 : FX_WEIGHTS_FP32;
    if ((rc = parse_module_mem(j, "clip_text", dtype, 0, &m->clip, msg, len)) ||
        (rc = parse_module_mem(j, "t5_encoder", dtype, 1, &m->t5, msg, len)) ||
        (rc = parse_module_mem(j, "transformer", dtype, 1, &m->transformer, msg, len)) ||
        (rc = parse_module_mem(j, "ae_decoder", dtype, 0, &m->ae, msg, len)))
        return rc;
    m->weights = m->transformer.weights;
    if (at(j, "weights") != NULL) {
        if ((rc = get_str(j, "weights", s, sizeof(s), msg, len)))
            return rc;
        if (weights_index(s) != m->weights)
            return fx_fail(msg, len, FX_EFORMAT,
                           "manifest.json: 'weights' is '%s' but the transformer's format is '%s'",
                           s, weight_names[m->weights]);
    }
    /* absent (older exports): the explicit path, which needs more memory */
    m->sdpa = 0;
    if (at(j, "attention") != NULL) {
        if ((rc = get_str(j, "attention", s, sizeof(s), msg, len)))
            return rc;
        if (strcmp(s, "sdpa") != 0 && strcmp(s, "explicit") != 0)
            return fx_fail(msg, len, FX_EFORMAT,
                           "manifest.json: 'attention' is '%s', not sdpa or explicit", s);
        m->sdpa = strcmp(s, "sdpa") == 0;
    }
    o = at(j, "manifest_only");
    m->manifest_only =
        o != NULL && json_object_is_type(o, json_type_boolean) && json_object_get_boolean(o);
#define DIM(prefix, key, lo, hi, dst)                                                              \
    (snprintf(p, sizeof(p), "%s%s", prefix, key), get_int(j, p, lo, hi, dst, msg, len))
    if ((rc = DIM(tp, "hidden_size", 1, 1 << 20, &m->hidden)) ||
        (rc = DIM(tp, "mlp_hidden", 1, 1 << 22, &m->mlp_hidden)) ||
        (rc = DIM(tp, "num_heads", 1, 4096, &m->heads)) ||
        (rc = DIM(tp, "depth", 0, 4096, &m->depth)) ||
        (rc = DIM(tp, "depth_single_blocks", 0, 4096, &m->depth_single)) ||
        (rc = DIM(t5, "d_model", 1, 1 << 20, &m->t5_dim)) ||
        (rc = DIM(t5, "d_ff", 1, 1 << 22, &m->t5_ff)) ||
        (rc = DIM(t5, "num_heads", 1, 4096, &m->t5_heads)) ||
        (rc = DIM(t5, "d_kv", 1, 1 << 16, &m->t5_dkv)) ||
        (rc = DIM(t5, "num_layers", 1, 4096, &m->t5_layers)) ||
        (rc = DIM(cp, "hidden_size", 1, 1 << 20, &m->clip_dim)) ||
        (rc = DIM(cp, "intermediate_size", 1, 1 << 22, &m->clip_ff)) ||
        (rc = DIM(cp, "num_attention_heads", 1, 4096, &m->clip_heads)) ||
        (rc = DIM(ap, "ch", 1, 1 << 16, &m->ae_ch)) ||
        (rc = DIM(ap, "num_res_blocks", 0, 64, &m->ae_res_blocks)) ||
        (rc = get_int(j, "tokenizers.t5.max_length", 1, 1 << 16, &m->t5_len, msg, len)) ||
        (rc = get_int(j, "tokenizers.clip.max_length", 1, 1 << 16, &m->clip_len, msg, len)))
        return rc;
#undef DIM
    o = at(j, "modules.ae_decoder.params.ch_mult");
    if (o == NULL || !json_object_is_type(o, json_type_array) || json_object_array_length(o) < 1 ||
        json_object_array_length(o) > 8)
        return fx_fail(msg, len, FX_EFORMAT,
                       "manifest.json: 'modules.ae_decoder.params.ch_mult' must be 1 to 8 "
                       "integers");
    m->ae_levels = (int)json_object_array_length(o);
    for (int i = 0; i < m->ae_levels; i++) {
        json_object *e = json_object_array_get_idx(o, (size_t)i);
        int64_t v = json_object_is_type(e, json_type_int) ? json_object_get_int64(e) : 0;
        if (v < 1 || v > 64)
            return fx_fail(msg, len, FX_EFORMAT,
                           "manifest.json: 'modules.ae_decoder.params.ch_mult' must be 1 to 8 "
                           "integers from 1 to 64");
        m->ae_ch_mult[i] = (int)v;
    }
    if (m->hidden % m->heads)
        return fx_fail(msg, len, FX_EFORMAT,
                       "manifest.json: transformer hidden_size is not a multiple of num_heads");
    /* block sizes: absent in older manifests (0: the stream plan says so) */
    if (at(j, "modules.transformer.double_block_bytes") != NULL &&
        ((rc = get_i64(j, "modules.transformer.double_block_bytes", 0, &m->double_block_bytes, msg,
                       len)) ||
         (rc = get_i64(j, "modules.transformer.single_block_bytes", 0, &m->single_block_bytes, msg,
                       len))))
        return rc;
    if (m->double_block_bytes > INT64_MAX / 8192 || m->single_block_bytes > INT64_MAX / 8192 ||
        m->depth * m->double_block_bytes + m->depth_single * m->single_block_bytes >
            m->transformer.param_bytes)
        return fx_fail(msg, len, FX_EFORMAT,
                       "manifest.json: the transformer's block bytes add up to more than its "
                       "param_bytes");
    return 0;
}

static int parse(json_object *j, const char *dir, struct fx_manifest *m, char *msg, size_t len)
{
    char fmt[64], dtype[16];
    int v, rc, clip_len, t5_len, clip_hidden, t5_model_dim, bos, eos, t5eos, t5pad;
    if ((rc = get_str(j, "format", fmt, sizeof(fmt), msg, len)))
        return rc;
    if (strcmp(fmt, MANIFEST_FORMAT) != 0)
        return fx_fail(msg, len, FX_EFORMAT, "manifest.json: format '%s' is not '%s'", fmt,
                       MANIFEST_FORMAT);
    if ((rc = get_int(j, "format_version", 0, 1 << 30, &v, msg, len)))
        return rc;
    if (v != MANIFEST_VERSION) {
        return fx_fail(msg, len, FX_EFORMAT,
                       "manifest.json: format_version %d; this build reads version %d (export the "
                       "model again with this version's exporter)",
                       v, MANIFEST_VERSION);
    }
    if ((rc = get_str(j, "name", m->name, sizeof(m->name), msg, len)) ||
        (rc = get_str(j, "dtype", dtype, sizeof(dtype), msg, len)) ||
        (rc = get_str(j, "device", m->device, sizeof(m->device), msg, len)))
        return rc;
    if (strcmp(dtype, "fp32") != 0 && strcmp(dtype, "bf16") != 0)
        return fx_fail(msg, len, FX_EFORMAT, "manifest.json: dtype '%s' is not fp32 or bf16",
                       dtype);
    m->bf16 = strcmp(dtype, "bf16") == 0;
    if ((rc = get_path(j, "modules.clip_text.file", dir, m->clip_path, msg, len)) ||
        (rc = get_path(j, "modules.t5_encoder.file", dir, m->t5_path, msg, len)) ||
        (rc = get_path(j, "modules.transformer.file", dir, m->transformer_path, msg, len)) ||
        (rc = get_path(j, "modules.ae_decoder.file", dir, m->ae_path, msg, len)) ||
        (rc = get_path(j, "tokenizers.clip.vocab", dir, m->clip_vocab, msg, len)) ||
        (rc = get_path(j, "tokenizers.clip.merges", dir, m->clip_merges, msg, len)) ||
        (rc = get_path(j, "tokenizers.t5.model", dir, m->t5_model, msg, len)))
        return rc;
    if ((rc = get_int(j, "tokenizers.clip.max_length", 77, 77, &clip_len, msg, len)) ||
        (rc = get_int(j, "tokenizers.t5.max_length", 512, 512, &t5_len, msg, len)) ||
        (rc = get_int(j, "tokenizers.clip.bos_id", 0, 1 << 24, &bos, msg, len)) ||
        (rc = get_int(j, "tokenizers.clip.eos_id", 0, 1 << 24, &eos, msg, len)) ||
        (rc = get_int(j, "tokenizers.t5.eos_id", 0, 1 << 24, &t5eos, msg, len)) ||
        (rc = get_int(j, "tokenizers.t5.pad_id", 0, 1 << 24, &t5pad, msg, len)) ||
        (rc = get_int(j, "modules.transformer.params.in_channels", 4, 1024, &m->in_channels, msg,
                      len)) ||
        (rc = get_int(j, "modules.transformer.params.context_in_dim", 1, 1 << 16, &m->context_dim,
                      msg, len)) ||
        (rc = get_int(j, "modules.transformer.params.vec_in_dim", 1, 1 << 16, &m->vec_dim, msg,
                      len)) ||
        (rc = get_int(j, "modules.clip_text.params.hidden_size", 1, 1 << 16, &clip_hidden, msg,
                      len)) ||
        (rc = get_int(j, "modules.t5_encoder.params.d_model", 1, 1 << 16, &t5_model_dim, msg,
                      len)) ||
        (rc = get_int(j, "latent.channels", 1, 1024, &m->latent_channels, msg, len)) ||
        (rc = get_int(j, "latent.downsample", 8, 8, &m->downsample, msg, len)) ||
        (rc = get_int(j, "latent.patch", 2, 2, &v, msg, len)) ||
        (rc = get_int(j, "defaults.steps", 1, 1000, &m->default_steps, msg, len)) ||
        (rc = get_num(j, "defaults.guidance", &m->default_guidance, msg, len)) ||
        (rc = get_int(j, "defaults.width", 16, 1 << 16, &m->default_width, msg, len)) ||
        (rc = get_int(j, "defaults.height", 16, 1 << 16, &m->default_height, msg, len)) ||
        (rc = get_int(j, "limits.multiple_of", 16, 1024, &m->multiple_of, msg, len)) ||
        (rc = get_int(j, "limits.min_size", 16, 1 << 16, &m->min_size, msg, len)) ||
        (rc = get_int(j, "limits.max_size", 16, 1 << 16, &m->max_size, msg, len)))
        return rc;
    m->clip_bos = bos;
    m->clip_eos = eos;
    m->t5_eos = t5eos;
    m->t5_pad = t5pad;
    if (m->in_channels != 4 * m->latent_channels)
        return fx_fail(msg, len, FX_EFORMAT,
                       "manifest.json: transformer in_channels is not 4 x "
                       "the latent channels");
    if (m->context_dim != t5_model_dim || m->vec_dim != clip_hidden)
        return fx_fail(msg, len, FX_EFORMAT,
                       "manifest.json: the text encoders' widths do not match "
                       "the transformer's inputs");
    if (m->multiple_of % 16 || m->min_size % m->multiple_of || m->max_size % m->multiple_of ||
        m->min_size > m->max_size)
        return fx_fail(msg, len, FX_EFORMAT, "manifest.json: inconsistent size limits");
    return parse_memory(j, m, msg, len);
}

/* 1 when dir/name exists and is a directory (mode S_IFDIR) or a regular file (S_IFREG). */
static int has(const char *dir, const char *name, mode_t type)
{
    char p[MANIFEST_PATH_MAX + 64];
    struct stat st;
    if ((size_t)snprintf(p, sizeof(p), "%s/%s", dir, name) >= sizeof(p) || stat(p, &st) != 0)
        return 0;
    return (st.st_mode & S_IFMT) == type;
}

/* The checkpoint layout dir looks like ("bfl", "diffusers") or NULL.  Looser than the
 * exporter's own detection: it only chooses the advice given when manifest.json is absent. */
static const char *checkpoint_layout(const char *dir)
{
    const char *layout = NULL;
    DIR *d;
    struct dirent *e;
    if (has(dir, "model_index.json", S_IFREG) || has(dir, "transformer", S_IFDIR))
        return "diffusers";
    d = opendir(dir);
    if (d == NULL)
        return NULL;
    while (layout == NULL && (e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name), k = strlen(".safetensors");
        if (n > k && strcmp(e->d_name + n - k, ".safetensors") == 0)
            layout = "bfl";
    }
    closedir(d);
    return layout;
}

/*
 * Says why dir/manifest.json cannot be opened when that is not an I/O error: the dir does
 * not exist, is a file, or is a checkpoint folder that has not been exported yet (the usual
 * first mistake).  Returns FX_ENOENT; the caller adds the dir's name in front.
 */
static int explain_no_manifest(const char *dir, char *msg, size_t len)
{
    struct stat st;
    const char *layout;
    if (stat(dir, &st) != 0)
        return fx_fail(msg, len, FX_ENOENT,
                       "the directory does not exist (a model dir is written by "
                       "`fluxexport export --source CHECKPOINT -o DIR`)");
    if (!S_ISDIR(st.st_mode))
        return fx_fail(msg, len, FX_ENOENT,
                       "not a directory (a model dir is written by "
                       "`fluxexport export --source CHECKPOINT -o DIR`)");
    layout = checkpoint_layout(dir);
    if (layout)
        return fx_fail(msg, len, FX_ENOENT,
                       "no manifest.json: this looks like a %s checkpoint, not a model dir; "
                       "convert it with `fluxexport export --source '%s' --layout %s -o OUT` "
                       "and use OUT",
                       strcmp(layout, "bfl") == 0 ? "BFL" : layout, dir, layout);
    return fx_fail(msg, len, FX_ENOENT,
                   "no manifest.json: not a model dir (one is written by "
                   "`fluxexport export --source CHECKPOINT -o DIR`)");
}

int manifest_load(const char *dir, struct fx_manifest **out, char *msg, size_t msg_len)
{
    char path[MANIFEST_PATH_MAX];
    char *text = NULL;
    size_t n = 0;
    json_object *j = NULL;
    struct fx_manifest *m = NULL;
    json_tokener *tok = NULL;
    int rc;
    if (out == NULL)
        return FX_EINVAL;
    *out = NULL;
    if (dir == NULL ||
        (size_t)snprintf(path, sizeof(path), "%s/manifest.json", dir) >= sizeof(path) - 512)
        return fx_fail(msg, msg_len, FX_EINVAL, "model dir path is too long");
    rc = read_file(path, &text, &n, msg, msg_len);
    if (rc == FX_ENOENT)
        rc = explain_no_manifest(dir, msg, msg_len);
    if (rc)
        goto out;
    rc = FX_ENOMEM;
    tok = json_tokener_new();
    m = calloc(1, sizeof(*m));
    if (tok == NULL || m == NULL)
        goto out;
    j = json_tokener_parse_ex(tok, text, (int)n);
    if (j == NULL || json_tokener_get_error(tok) != json_tokener_success ||
        text[json_tokener_get_parse_end(tok) +
             strspn(text + json_tokener_get_parse_end(tok), " \t\r\n")] != '\0') {
        rc = fx_fail(msg, msg_len, FX_EFORMAT, "'%s': not valid JSON (%s)", path,
                     json_tokener_error_desc(json_tokener_get_error(tok)));
        goto out;
    }
    rc = parse(j, dir, m, msg, msg_len);
    if (rc)
        goto out;
    if (sha256_hex(text, n, m->sha256) != 0) {
        rc = fx_fail(msg, msg_len, FX_EINTERNAL, "'%s': cannot compute its sha256", path);
        goto out;
    }
    *out = m;
    m = NULL;
out:
    json_object_put(j);
    if (tok)
        json_tokener_free(tok);
    free(text);
    free(m);
    return rc;
}

void manifest_free(struct fx_manifest *m)
{
    free(m);
}
