#include "pipeline.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../shim/shim.h"
#include "err.h"
#include "imgw.h"
#include "lora.h"
#include "manifest.h"
#include "npy.h"
#include "plan.h"
#include "sched.h"
#include "text.h"
#include "tok_clip.h"
#include "tok_t5.h"
#include "version.h"

/* One LoRA of the applied set, as it was when it was read. */
struct applied_lora {
    char *name, *path;
    double scale;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    char sha256[65];
};

struct fx_pipeline {
    struct fx_manifest *man;
    struct tok_clip *clip;
    struct tok_t5 *t5;
    shim_model *model;
    shim_dtype dtype;
    enum fx_placement placement;
    struct fx_lora_map *lora_map; /* NULL: lora_map_rc / lora_map_msg say why */
    int lora_map_rc;
    char lora_map_msg[512];
    struct applied_lora applied[FX_LORA_MAX];
    size_t n_applied;
    bool lora_dirty; /* a failed patch or restore: the weights may differ from the originals */
};

static int from_shim(shim_status st)
{
    switch (st) {
    case SHIM_OK:
        return 0;
    case SHIM_EINVAL:
        return FX_EINVAL;
    case SHIM_ENOENT:
        return FX_ENOENT;
    case SHIM_EFORMAT:
        return FX_EFORMAT;
    case SHIM_EDEVICE:
        return FX_EDEVICE;
    case SHIM_ENOMEM:
        return FX_ENOMEM;
    case SHIM_ERUNTIME:
        return FX_ERUNTIME;
    case SHIM_ENOLIB:
    case SHIM_ENOTSUP:
        return FX_ENOTSUP;
    default:
        return FX_EINTERNAL;
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- requests ------------------------------------------------------------------------------ */

void fx_limits_default(struct fx_limits *l, const struct fx_manifest *m)
{
    l->min_size = m ? m->min_size : 64;
    l->max_size = m ? m->max_size : 2048;
    l->multiple_of = m ? m->multiple_of : 16;
    l->max_steps = 100;
    l->min_guidance = 0.0;
    l->max_guidance = 100.0;
    l->max_prompt_bytes = 64 * 1024;
}

static int check_size(const char *name, int v, const struct fx_limits *l, const char **field,
                      char *msg, size_t len)
{
    if (v % l->multiple_of != 0 || v < l->min_size || v > l->max_size) {
        *field = name;
        return fx_fail(msg, len, FX_ERANGE, "%s: must be a multiple of %d from %d to %d, got %d",
                       name, l->multiple_of, l->min_size, l->max_size, v);
    }
    return 0;
}

int fx_request_validate(const struct fx_request *r, const struct fx_limits *l, const char **field,
                        char *msg, size_t msg_len)
{
    const char *dummy;
    int rc;
    if (field == NULL)
        field = &dummy;
    *field = NULL;
    if (r == NULL || l == NULL)
        return FX_EINVAL;
    if (r->prompt == NULL || r->prompt_len == 0) {
        *field = "prompt";
        return fx_fail(msg, msg_len, FX_EINVAL, "prompt: must be a non-empty string");
    }
    if (r->prompt_len > l->max_prompt_bytes) {
        *field = "prompt";
        return fx_fail(msg, msg_len, FX_ERANGE, "prompt: longer than %zu bytes",
                       l->max_prompt_bytes);
    }
    if ((rc = check_size("width", r->width, l, field, msg, msg_len)) ||
        (rc = check_size("height", r->height, l, field, msg, msg_len)))
        return rc;
    if (r->steps < 1 || r->steps > l->max_steps) {
        *field = "num_inference_steps";
        return fx_fail(msg, msg_len, FX_ERANGE, "num_inference_steps: must be from 1 to %d, got %d",
                       l->max_steps, r->steps);
    }
    if (!isfinite(r->guidance) || r->guidance < l->min_guidance || r->guidance > l->max_guidance) {
        *field = "guidance_scale";
        return fx_fail(msg, msg_len, FX_ERANGE, "guidance_scale: must be a number from %g to %g",
                       l->min_guidance, l->max_guidance);
    }
    if (r->has_seed && r->seed > FX_SEED_MAX) {
        *field = "seed";
        return fx_fail(msg, msg_len, FX_ERANGE, "seed: must be from 0 to %llu",
                       (unsigned long long)FX_SEED_MAX);
    }
    if (r->n_loras > FX_LORA_MAX || (r->n_loras && r->loras == NULL)) {
        *field = "loras";
        return fx_fail(msg, msg_len, FX_ERANGE, "loras: at most %d, got %zu", FX_LORA_MAX,
                       r->n_loras);
    }
    for (size_t i = 0; i < r->n_loras; i++) {
        const struct fx_lora *l = &r->loras[i];
        if (l->path == NULL || l->path[0] == '\0') {
            *field = "loras";
            return fx_fail(msg, msg_len, FX_EINVAL, "loras: entry %zu has no file", i);
        }
        if (!isfinite(l->scale) || fabs(l->scale) > FX_LORA_SCALE_MAX) {
            *field = "loras";
            return fx_fail(msg, msg_len, FX_ERANGE,
                           "loras: the scale of '%s' must be a number from %g to %g",
                           l->name ? l->name : l->path, -FX_LORA_SCALE_MAX, FX_LORA_SCALE_MAX);
        }
    }
    if (imgw_name((enum imgw_format)r->format) == NULL) {
        *field = "output_format";
        return fx_fail(msg, msg_len, FX_EINVAL, "output_format: must be png, jpeg or webp");
    }
    if (r->quality < 0 || r->quality > 100) {
        *field = "output_quality";
        return fx_fail(msg, msg_len, FX_ERANGE, "output_quality: must be from 1 to 100, got %d",
                       r->quality);
    }
    return 0;
}

uint64_t fx_random_seed(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v)) {
        /* getrandom cannot fail for 8 bytes once the pool is ready; keep going regardless */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = (uint64_t)ts.tv_nsec * 6364136223846793005ULL ^ (uint64_t)ts.tv_sec ^
            (uint64_t)getpid() << 32;
    }
    return v & FX_SEED_MAX;
}

/* ---- loading ------------------------------------------------------------------------------- */

int fx_pipeline_load(const struct fx_pipeline_params *pp, struct fx_pipeline **out, char *msg,
                     size_t msg_len)
{
    struct fx_pipeline *p = NULL;
    struct shim_params sp;
    char sub[512] = "";
    int rc;
    if (out == NULL)
        return FX_EINVAL;
    *out = NULL;
    if (pp == NULL || pp->model_dir == NULL)
        return fx_fail(msg, msg_len, FX_EINVAL, "no model dir");
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return FX_ENOMEM;
    rc = manifest_load(pp->model_dir, &p->man, msg, msg_len);
    if (rc)
        goto out;
    rc = tok_clip_load_files(p->man->clip_vocab, p->man->clip_merges, &p->clip, sub, sizeof(sub));
    if (rc) {
        fx_fail(msg, msg_len, rc, "CLIP tokenizer: %s", sub);
        goto out;
    }
    if (tok_clip_bos(p->clip) != p->man->clip_bos || tok_clip_eos(p->clip) != p->man->clip_eos) {
        rc = fx_fail(msg, msg_len, FX_EFORMAT,
                     "CLIP tokenizer: bos/eos %d/%d differ from the manifest's %d/%d",
                     (int)tok_clip_bos(p->clip), (int)tok_clip_eos(p->clip), (int)p->man->clip_bos,
                     (int)p->man->clip_eos);
        goto out;
    }
    rc = tok_t5_load(p->man->t5_model, &p->t5, sub, sizeof(sub));
    if (rc) {
        fx_fail(msg, msg_len, rc, "T5 tokenizer: %s", sub);
        goto out;
    }
    shim_params_default(&sp);
    sp.device = pp->device ? pp->device : "cpu";
    rc = plan_resolve_placement(p->man, pp->placement, sp.device, pp->device_memory,
                                pp->plan_width > 0 ? pp->plan_width : p->man->default_width,
                                pp->plan_height > 0 ? pp->plan_height : p->man->default_height,
                                &p->placement, msg, msg_len);
    if (rc)
        goto out;
    sp.placement = p->placement == FX_PLACE_STREAM             ? SHIM_PLACE_STREAM
                   : p->placement == FX_PLACE_ENCODERS_OFFLOAD ? SHIM_PLACE_ENCODERS_OFFLOAD
                                                               : SHIM_PLACE_RESIDENT;
    sp.dtype = p->man->bf16 ? SHIM_BF16 : SHIM_F32;
    sp.cpu_threads = pp->cpu_threads;
    sp.clip_path = p->man->clip_path;
    sp.t5_path = p->man->t5_path;
    sp.transformer_path = p->man->transformer_path;
    sp.ae_path = p->man->ae_path;
    p->dtype = sp.dtype;
    rc = from_shim(shim_model_load(&sp, &p->model, msg, msg_len));
    if (rc)
        goto out;
    /* a model dir without a (good) LoRA map still generates: only a LoRA asks for it */
    p->lora_map_rc =
        fx_lora_map_load(pp->model_dir, &p->lora_map, p->lora_map_msg, sizeof(p->lora_map_msg));
    if (p->lora_map_rc == FX_ENOMEM) {
        rc = fx_fail(msg, msg_len, FX_ENOMEM, "lora_map.json: %s", fx_strerror(FX_ENOMEM));
        goto out;
    }
    *out = p;
    p = NULL;
out:
    fx_pipeline_free(p);
    return rc;
}

static void applied_clear(struct fx_pipeline *p)
{
    for (size_t i = 0; i < p->n_applied; i++) {
        free(p->applied[i].name);
        free(p->applied[i].path);
    }
    memset(p->applied, 0, sizeof(p->applied));
    p->n_applied = 0;
}

void fx_pipeline_free(struct fx_pipeline *p)
{
    if (p == NULL)
        return;
    applied_clear(p);
    fx_lora_map_free(p->lora_map);
    shim_model_free(p->model);
    tok_t5_free(p->t5);
    tok_clip_free(p->clip);
    manifest_free(p->man);
    free(p);
}

const struct fx_manifest *fx_pipeline_manifest(const struct fx_pipeline *p)
{
    return p->man;
}

const char *fx_pipeline_device(const struct fx_pipeline *p)
{
    return shim_model_device(p->model);
}

const char *fx_pipeline_placement(const struct fx_pipeline *p)
{
    return plan_placement_name(p->placement);
}

size_t fx_pipeline_stream_log(const struct fx_pipeline *p, char *buf, size_t len)
{
    return shim_stream_log(p->model, buf, len);
}

const struct fx_lora_map *fx_pipeline_lora_map(const struct fx_pipeline *p, const char **why)
{
    if (why)
        *why = p->lora_map ? NULL : p->lora_map_msg;
    return p->lora_map;
}

/* ---- LoRA sets ----------------------------------------------------------------------------- */

/* The name a LoRA goes by in messages and metadata. */
static const char *lora_name(const struct fx_lora *l)
{
    return l->name && l->name[0] ? l->name : l->path;
}

static bool same_file(const struct applied_lora *a, const struct stat *st)
{
    return a->dev == st->st_dev && a->ino == st->st_ino && a->size == st->st_size &&
           a->mtime.tv_sec == st->st_mtim.tv_sec && a->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

/* Restores the weights after a failure or for an empty set; the applied set is then none. */
static int lora_restore(struct fx_pipeline *p, char *msg, size_t msg_len)
{
    int rc = from_shim(shim_lora_restore(p->model, msg, msg_len));
    applied_clear(p);
    p->lora_dirty = rc != 0; /* the next set restores again */
    return rc;
}

int fx_pipeline_set_loras(struct fx_pipeline *p, const struct fx_lora *loras, size_t n,
                          struct fx_lora_timing *timing, char *msg, size_t msg_len)
{
    struct fx_lora_timing tm = {0};
    struct stat st[FX_LORA_MAX];
    struct fx_lora_file *files[FX_LORA_MAX] = {0};
    char sub[512];
    double t0;
    int rc = 0;

    if (timing)
        *timing = tm;
    if (p == NULL || n > FX_LORA_MAX || (n && loras == NULL))
        return fx_fail(msg, msg_len, FX_EINVAL, "loras: at most %d", FX_LORA_MAX);
    /* a file's identity now: if it is replaced later, the set differs and is read again */
    for (size_t i = 0; i < n; i++) {
        if (loras[i].path == NULL || !isfinite(loras[i].scale) ||
            fabs(loras[i].scale) > FX_LORA_SCALE_MAX)
            return fx_fail(msg, msg_len, FX_EINVAL, "lora '%s': no file or a bad scale",
                           loras[i].path ? lora_name(&loras[i]) : "?");
        if (stat(loras[i].path, &st[i]) != 0)
            return fx_fail(msg, msg_len, errno == ENOENT ? FX_ENOENT : FX_EIO,
                           "lora '%s': cannot open the file: %s", lora_name(&loras[i]),
                           strerror(errno));
    }
    bool same = !p->lora_dirty && n == p->n_applied;
    for (size_t i = 0; same && i < n; i++)
        same = strcmp(loras[i].path, p->applied[i].path) == 0 &&
               loras[i].scale == p->applied[i].scale && same_file(&p->applied[i], &st[i]);
    if (same) {
        tm.skipped = true;
        goto out;
    }
    if (n == 0) {
        t0 = now();
        rc = lora_restore(p, msg, msg_len);
        tm.t_restore = now() - t0;
        goto out;
    }
    if (p->lora_map == NULL) {
        rc = fx_fail(msg, msg_len, p->lora_map_rc ? p->lora_map_rc : FX_ENOTSUP, "lora '%s': %s",
                     lora_name(&loras[0]),
                     p->lora_map_msg[0] ? p->lora_map_msg : "the model dir has no lora_map.json");
        goto out;
    }
    /* every file read and validated, every delta checked against the modules, before a
     * weight changes */
    t0 = now();
    for (size_t i = 0; i < n; i++) {
        rc = fx_lora_read(p->lora_map, loras[i].path, &files[i], sub, sizeof(sub));
        if (rc) {
            fx_fail(msg, msg_len, rc, "lora '%s': %s", lora_name(&loras[i]), sub);
            goto out;
        }
    }
    tm.t_read = now() - t0;
    t0 = now();
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < fx_lora_file_count(files[i]); k++) {
            const struct fx_lora_entry *e = fx_lora_file_entry(files[i], k);
            struct shim_lora_delta d = {(shim_part)e->part,
                                        e->layer,
                                        e->out,
                                        e->in,
                                        e->row0,
                                        e->rows,
                                        e->swap,
                                        e->rank,
                                        (float)(loras[i].scale * (double)e->factor),
                                        e->up,
                                        e->down};
            rc = from_shim(shim_lora_stage(p->model, &d, sub, sizeof(sub)));
            if (rc) {
                shim_lora_discard(p->model);
                fx_fail(msg, msg_len, rc == FX_EINVAL ? FX_EFORMAT : rc,
                        "lora '%s': %s (the model dir's lora_map.json does not match its "
                        "modules)",
                        lora_name(&loras[i]), sub);
                goto out;
            }
        }
    }
    tm.t_patch = now() - t0;
    t0 = now();
    rc = from_shim(shim_lora_restore(p->model, msg, msg_len));
    applied_clear(p);
    tm.t_restore = now() - t0;
    if (rc) {
        shim_lora_discard(p->model);
        p->lora_dirty = true;
        goto out;
    }
    t0 = now();
    rc = from_shim(shim_lora_commit(p->model, msg, msg_len));
    tm.t_patch += now() - t0;
    if (rc) {
        /* the shim restored every layer: no LoRA applied (or, if that failed too, dirty) */
        struct shim_lora_stats ss;
        shim_lora_stats(p->model, &ss);
        p->lora_dirty = ss.patched_layers > 0;
        goto out;
    }
    p->lora_dirty = false;
    for (size_t i = 0; i < n; i++) {
        struct applied_lora *a = &p->applied[i];
        a->name = strdup(lora_name(&loras[i]));
        a->path = strdup(loras[i].path);
        if (a->name == NULL || a->path == NULL) {
            /* keep the patch, but forget the set: the next request applies it again */
            p->n_applied = i + 1;
            applied_clear(p);
            p->lora_dirty = true;
            rc = FX_ENOMEM;
            goto out;
        }
        a->scale = loras[i].scale;
        a->dev = st[i].st_dev;
        a->ino = st[i].st_ino;
        a->size = st[i].st_size;
        a->mtime = st[i].st_mtim;
        snprintf(a->sha256, sizeof(a->sha256), "%s", fx_lora_file_sha256(files[i]));
        p->n_applied = i + 1;
    }
out:
    for (size_t i = 0; i < n; i++)
        fx_lora_file_free(files[i]);
    {
        struct shim_lora_stats ss;
        shim_lora_stats(p->model, &ss);
        tm.layers = ss.patched_layers;
        tm.saved_bytes = ss.saved_bytes;
    }
    if (timing)
        *timing = tm;
    return rc;
}

void fx_result_release(struct fx_result *r)
{
    if (r == NULL)
        return;
    free(r->png);
    r->png = NULL;
    r->png_len = 0;
}

/* ---- generation ---------------------------------------------------------------------------- */

/* The tensors of one generation, freed together. */
struct run {
    shim_tensor *ids, *y, *txt, *noise, *packed, *x, *img_ids, *txt_ids, *g, *t, *xin, *v, *z, *zu,
        *rgb;
};

static void run_release(struct run *t)
{
    shim_tensor **all = (shim_tensor **)t;
    for (size_t i = 0; i < sizeof(*t) / sizeof(shim_tensor *); i++) {
        shim_tensor_free(all[i]);
        all[i] = NULL;
    }
}

static void drop(shim_tensor **t)
{
    shim_tensor_free(*t);
    *t = NULL;
}

static int dump(const struct fx_hooks *h, int k, const shim_tensor *x, float *host, size_t n,
                int64_t tokens, int64_t feat, char *msg, size_t len)
{
    char path[4096];
    int64_t shape[3] = {1, tokens, feat};
    int rc;
    if (h == NULL || h->dump_dir == NULL)
        return 0;
    rc = from_shim(shim_tensor_to_host(x, host, n, msg, len));
    if (rc)
        return rc;
    snprintf(path, sizeof(path), "%s/step_%03d.npy", h->dump_dir, k);
    if (npy_write_f32(path, host, shape, 3) != 0)
        return fx_fail(msg, len, FX_EIO, "cannot write '%s': %s", path, strerror(errno));
    return 0;
}

/* Token ids (1, n) as an int64 tensor on the model's device. */
static int ids_tensor(struct fx_pipeline *p, const int32_t *ids, int n, shim_tensor **out,
                      char *msg, size_t msg_len)
{
    int64_t wide[TOK_T5_LEN > TOK_CLIP_LEN ? TOK_T5_LEN : TOK_CLIP_LEN];
    int64_t shape[2] = {1, n};
    for (int i = 0; i < n; i++)
        wide[i] = ids[i];
    return from_shim(
        shim_tensor_from_host(p->model, wide, SHIM_I64, shape, 2, SHIM_I64, out, msg, msg_len));
}

/* A copy of s[0..n) as valid UTF-8 (invalid sequences become U+FFFD), NUL-terminated. */
static char *valid_utf8(const char *s, size_t n)
{
    uint32_t *cps = malloc((n + 1) * sizeof(*cps));
    char *out = malloc(4 * n + 1);
    size_t k, o = 0;
    if (cps == NULL || out == NULL) {
        free(cps);
        free(out);
        return NULL;
    }
    k = text_utf8_decode(s, n, cps, NULL);
    for (size_t i = 0; i < k; i++)
        o += text_utf8_put(cps[i], out + o);
    out[o] = '\0';
    free(cps);
    return out;
}

/* A LoRA scale as JSON in its shortest form that reads back (0.8, not 0.80000000000000004). */
static json_object *short_double(double v)
{
    char num[32];
    snprintf(num, sizeof(num), "%.15g", v);
    if (strtod(num, NULL) != v)
        snprintf(num, sizeof(num), "%.17g", v);
    return json_object_new_double_s(v, num);
}

/* The image's JSON parameters (PNG iTXt "fluxcgi", JPEG COM, WebP XMP): the request as
 * JSON, with the model and program version. */
static char *params_json(const struct fx_pipeline *p, const struct fx_request *r, uint64_t seed)
{
    char *prompt = valid_utf8(r->prompt, r->prompt_len);
    json_object *o = json_object_new_object();
    char *s = NULL;
    if (prompt == NULL || o == NULL)
        goto out;
    json_object_object_add(o, "prompt", json_object_new_string(prompt));
    json_object_object_add(o, "num_inference_steps", json_object_new_int(r->steps));
    json_object_object_add(o, "guidance_scale", json_object_new_double(r->guidance));
    json_object_object_add(o, "width", json_object_new_int(r->width));
    json_object_object_add(o, "height", json_object_new_int(r->height));
    json_object_object_add(o, "seed", json_object_new_int64((int64_t)seed));
    json_object_object_add(o, "model", json_object_new_string(p->man->name));
    json_object_object_add(o, "model_sha256", json_object_new_string(p->man->sha256));
    json_object_object_add(o, "dtype", json_object_new_string(p->man->bf16 ? "bf16" : "fp32"));
    if (p->n_applied) {
        json_object *a = json_object_new_array();
        json_object_object_add(o, "loras", a);
        for (size_t i = 0; a && i < p->n_applied; i++) {
            json_object *l = json_object_new_object();
            json_object_array_add(a, l);
            json_object_object_add(l, "name", json_object_new_string(p->applied[i].name));
            json_object_object_add(l, "scale", short_double(p->applied[i].scale));
            json_object_object_add(l, "sha256", json_object_new_string(p->applied[i].sha256));
        }
    }
    json_object_object_add(o, "program", json_object_new_string("fluxcgi " FX_VERSION));
    s = strdup(
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
out:
    json_object_put(o);
    free(prompt);
    return s;
}

/* The same as the A1111-style text that image viewers show (core/imgw.h). */
static char *a1111_text(const struct fx_pipeline *p, const struct fx_request *r, uint64_t seed)
{
    char *prompt = valid_utf8(r->prompt, r->prompt_len), *s = NULL;
    struct imgw_gen g = {prompt,       r->steps,       r->width,
                         r->height,    r->guidance,    seed,
                         p->man->name, p->man->sha256, "fluxcgi " FX_VERSION};
    struct imgw_lora l[FX_LORA_MAX];
    for (size_t i = 0; i < p->n_applied; i++) {
        l[i].name = p->applied[i].name;
        l[i].sha256 = p->applied[i].sha256;
    }
    if (prompt)
        s = imgw_a1111_text_loras(&g, l, p->n_applied);
    free(prompt);
    return s;
}

/* Decoder output (3, H, W) floats -> interleaved RGB bytes, as the reference converts. */
static void to_rgb8(const float *chw, int w, int h, uint8_t *rgb)
{
    size_t plane = (size_t)w * (size_t)h;
    for (size_t i = 0; i < plane; i++) {
        for (int c = 0; c < 3; c++) {
            float v = (chw[(size_t)c * plane + i] + 1.0f) * 0.5f;
            v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
            rgb[i * 3 + (size_t)c] = (uint8_t)nearbyintf(v * 255.0f); /* half to even */
        }
    }
}

int fx_pipeline_generate(struct fx_pipeline *p, const struct fx_request *r,
                         const struct fx_hooks *hooks, struct fx_result *out, char *msg,
                         size_t msg_len)
{
    struct run t = {0};
    int32_t clip_ids[TOK_CLIP_LEN], t5_ids[TOK_T5_LEN];
    float *sig = NULL, *host = NULL, *pos = NULL;
    uint8_t *rgb8 = NULL;
    char *params = NULL, *a1111 = NULL;
    double t0;
    int rc;

    if (out == NULL)
        return FX_EINVAL;
    memset(out, 0, sizeof(*out));
    if (p == NULL || r == NULL)
        return FX_EINVAL;
    const struct fx_manifest *m = p->man;
    const int64_t lh = r->height / 16, lw = r->width / 16, tokens = lh * lw;
    const int64_t feat = m->in_channels;
    const size_t nlat = (size_t)(tokens * feat);
    const size_t npix = (size_t)r->width * (size_t)r->height;
    if (r->width <= 0 || r->height <= 0 || r->width % 16 || r->height % 16 || r->steps < 1 ||
        r->prompt == NULL)
        return fx_fail(msg, msg_len, FX_EINVAL, "request not validated");
    out->seed = r->has_seed ? r->seed : fx_random_seed();
    /* CUDA's current device is per thread: the caller may not be the thread that loaded. */
    rc = from_shim(shim_use_device(p->model, msg, msg_len));
    if (rc)
        goto out;
    /* the request's LoRAs (the same set as the last request's costs a stat per file) */
    struct fx_lora_timing lt;
    t0 = now();
    rc = fx_pipeline_set_loras(p, r->loras, r->n_loras, &lt, msg, msg_len);
    if (rc)
        goto out;
    out->t_lora = now() - t0;
    out->lora_skipped = lt.skipped;
    int64_t mem_now, mem_peak;
    rc = from_shim(shim_memory_stats(p->model, &mem_now, &mem_peak, true, msg, msg_len));
    if (rc)
        goto out;

    /* tokenize */
    t0 = now();
    rc = tok_clip_encode(p->clip, r->prompt, r->prompt_len, clip_ids, &out->clip_tokens);
    if (rc == 0)
        rc = tok_t5_encode(p->t5, r->prompt, r->prompt_len, t5_ids, &out->t5_tokens);
    if (rc) {
        fx_fail(msg, msg_len, rc, "tokenizing the prompt: %s", fx_strerror(rc));
        goto out;
    }
    out->t_tokenize = now() - t0;

    /* encode */
    t0 = now();
    rc = ids_tensor(p, clip_ids, TOK_CLIP_LEN, &t.ids, msg, msg_len);
    if (rc == 0)
        rc = from_shim(shim_run_clip(p->model, t.ids, &t.y, msg, msg_len));
    if (rc)
        goto out;
    drop(&t.ids);
    rc = ids_tensor(p, t5_ids, TOK_T5_LEN, &t.ids, msg, msg_len);
    if (rc == 0)
        rc = from_shim(shim_run_t5(p->model, t.ids, &t.txt, msg, msg_len));
    if (rc == 0)
        rc = from_shim(shim_sync(p->model, msg, msg_len));
    if (rc)
        goto out;
    out->t_encode = now() - t0;

    /* noise, schedule, ids */
    t0 = now();
    sig = malloc(((size_t)r->steps + 1) * sizeof(*sig));
    host = malloc((nlat > 3 * npix ? nlat : 3 * npix) * sizeof(*host));
    pos = calloc((size_t)(tokens > TOK_T5_LEN ? tokens : TOK_T5_LEN) * 3, sizeof(*pos));
    if (sig == NULL || host == NULL || pos == NULL) {
        rc = FX_ENOMEM;
        goto out;
    }
    sched_sigmas(r->steps, (long)tokens, sig);
    int64_t noise_shape[4] = {1, m->latent_channels, r->height / 8, r->width / 8};
    rc = from_shim(
        shim_randn(p->model, out->seed, noise_shape, 4, p->dtype, &t.noise, msg, msg_len));
    if (rc == 0)
        rc = from_shim(shim_pack(t.noise, &t.packed, msg, msg_len));
    if (rc == 0)
        rc = from_shim(shim_tensor_cast(t.packed, SHIM_F32, &t.x, msg, msg_len));
    if (rc)
        goto out;
    drop(&t.noise);
    drop(&t.packed);
    int64_t txt_ids_shape[3] = {1, TOK_T5_LEN, 3}, img_ids_shape[3] = {1, tokens, 3};
    rc = from_shim(shim_tensor_from_host(p->model, pos, SHIM_F32, txt_ids_shape, 3, SHIM_F32,
                                         &t.txt_ids, msg, msg_len));
    if (rc)
        goto out;
    for (int64_t i = 0; i < lh; i++) {
        for (int64_t j = 0; j < lw; j++) {
            pos[(i * lw + j) * 3 + 1] = (float)i;
            pos[(i * lw + j) * 3 + 2] = (float)j;
        }
    }
    rc = from_shim(shim_tensor_from_host(p->model, pos, SHIM_F32, img_ids_shape, 3, SHIM_F32,
                                         &t.img_ids, msg, msg_len));
    if (rc == 0)
        rc = from_shim(shim_tensor_full(p->model, r->guidance, 1, p->dtype, &t.g, msg, msg_len));
    if (rc == 0)
        rc = dump(hooks, 0, t.x, host, nlat, tokens, feat, msg, msg_len);
    if (rc)
        goto out;

    /* denoise */
    for (int i = 0; i < r->steps; i++) {
        if (hooks && hooks->cancel && atomic_load(hooks->cancel)) {
            rc = fx_fail(msg, msg_len, FX_ECANCELED, "cancelled before step %d of %d", i + 1,
                         r->steps);
            goto out;
        }
        rc = from_shim(shim_tensor_full(p->model, (double)sig[i], 1, p->dtype, &t.t, msg, msg_len));
        if (rc == 0)
            rc = from_shim(shim_tensor_cast(t.x, p->dtype, &t.xin, msg, msg_len));
        if (rc == 0)
            rc = from_shim(shim_run_transformer(p->model, t.xin, t.img_ids, t.txt, t.txt_ids, t.t,
                                                t.y, t.g, &t.v, msg, msg_len));
        if (rc == 0)
            rc = from_shim(shim_euler_step(t.x, t.v, sig[i + 1] - sig[i], msg, msg_len));
        if (rc)
            goto out;
        drop(&t.t);
        drop(&t.xin);
        drop(&t.v);
        rc = dump(hooks, i + 1, t.x, host, nlat, tokens, feat, msg, msg_len);
        if (rc)
            goto out;
        if (hooks && hooks->progress)
            hooks->progress(hooks->ud, i + 1, r->steps);
    }
    rc = from_shim(shim_sync(p->model, msg, msg_len));
    if (rc)
        goto out;
    out->t_denoise = now() - t0;

    /* decode */
    t0 = now();
    rc = from_shim(shim_tensor_cast(t.x, p->dtype, &t.z, msg, msg_len));
    if (rc == 0)
        rc = from_shim(shim_unpack(t.z, lh, lw, &t.zu, msg, msg_len));
    if (rc == 0)
        rc = from_shim(shim_run_ae(p->model, t.zu, &t.rgb, msg, msg_len));
    if (rc)
        goto out;
    if (shim_tensor_numel(t.rgb) != (int64_t)(3 * npix)) {
        rc = fx_fail(msg, msg_len, FX_ERUNTIME, "the decoder returned %lld values, expected %zu",
                     (long long)shim_tensor_numel(t.rgb), 3 * npix);
        goto out;
    }
    rc = from_shim(shim_tensor_to_host(t.rgb, host, 3 * npix, msg, msg_len));
    if (rc)
        goto out;
    rgb8 = malloc(3 * npix);
    if (rgb8 == NULL) {
        rc = FX_ENOMEM;
        goto out;
    }
    to_rgb8(host, r->width, r->height, rgb8);
    out->t_decode = now() - t0;
    rc = from_shim(
        shim_memory_stats(p->model, &mem_now, &out->device_bytes_peak, false, msg, msg_len));
    if (rc)
        goto out;

    /* the image file, with the parameters as JSON and as A1111 text in its metadata */
    t0 = now();
    params = params_json(p, r, out->seed);
    a1111 = a1111_text(p, r, out->seed);
    if (params == NULL || a1111 == NULL) {
        rc = FX_ENOMEM;
        goto out;
    }
    struct imgw_meta meta = {params, a1111};
    rc = imgw_encode((enum imgw_format)r->format, r->quality, rgb8, r->width, r->height, &meta,
                     &out->png, &out->png_len);
    if (rc) {
        fx_fail(msg, msg_len, rc, "encoding the %s image: %s",
                imgw_name((enum imgw_format)r->format), fx_strerror(rc));
        goto out;
    }
    out->t_png = now() - t0;
out:
    run_release(&t);
    free(sig);
    free(host);
    free(pos);
    free(rgb8);
    free(params);
    free(a1111);
    if (rc)
        fx_result_release(out);
    return rc;
}
