/*
 * The shim over libtorch: statuses and messages for bad input, seeded noise, the tensor
 * operations of the sampler, the four modules of the tiny model and their use from a second
 * thread.  This file includes shim.h and is compiled as C17 with -pedantic (the header must
 * stay plain C).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/manifest.h"
#include "../../shim/shim.h"
#include "unit.h"

static char msg[1024];

static void check_float(float got, float want, const char *what)
{
    if (got == want) {
        unit_passed++;
    } else {
        unit_failed++;
        fprintf(stderr, "FAIL %s: got %.9g, want %.9g\n", what, (double)got, (double)want);
    }
}

static struct shim_params files(const struct fx_manifest *m)
{
    struct shim_params p;
    shim_params_default(&p);
    p.clip_path = m->clip_path;
    p.t5_path = m->t5_path;
    p.transformer_path = m->transformer_path;
    p.ae_path = m->ae_path;
    return p;
}

static void test_defaults_and_names(void)
{
    struct shim_params p;
    memset(&p, 0x55, sizeof(p));
    shim_params_default(&p);
    CHECK_STR(p.device, "cpu");
    CHECK_INT(p.dtype, SHIM_F32);
    CHECK_INT(p.cpu_threads, 0);
    CHECK(p.clip_path == NULL && p.ae_path == NULL);
    CHECK_STR(shim_status_name(SHIM_EFORMAT), "SHIM_EFORMAT");
    CHECK_STR(shim_status_name(SHIM_ENOLIB), "SHIM_ENOLIB");
    CHECK_STR(shim_status_name((shim_status)99), "SHIM_EUNKNOWN");
}

static void test_load_errors(const struct fx_manifest *m, const char *tmpdir)
{
    struct shim_params p = files(m);
    shim_model *model = (shim_model *)&p; /* must be reset to NULL on failure */
    char bad[512];

    CHECK_INT(shim_model_load(NULL, &model, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK(model == NULL);
    CHECK_INT(shim_model_load(&p, NULL, msg, sizeof(msg)), SHIM_EINVAL);

    p.device = "tpu";
    CHECK_INT(shim_model_load(&p, &model, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK(strstr(msg, "tpu") != NULL);
    p.device = "cuda:99";
    CHECK_INT(shim_model_load(&p, &model, msg, sizeof(msg)), SHIM_EDEVICE);
    p.device = "cuda:x";
    CHECK_INT(shim_model_load(&p, &model, msg, sizeof(msg)), SHIM_EINVAL);
    p.device = "cpu";

    p.dtype = SHIM_I64;
    CHECK_INT(shim_model_load(&p, &model, msg, sizeof(msg)), SHIM_EINVAL);
    p.dtype = SHIM_F32;

    p.t5_path = "/nonexistent/t5_encoder.pt";
    CHECK_INT(shim_model_load(&p, &model, msg, sizeof(msg)), SHIM_ENOENT);
    CHECK(strstr(msg, "/nonexistent/t5_encoder.pt") != NULL);
    CHECK(model == NULL);
    p.t5_path = m->t5_path;

    snprintf(bad, sizeof(bad), "%s/garbage.pt", tmpdir);
    FILE *f = fopen(bad, "wb");
    CHECK(f != NULL);
    if (f) {
        fputs("PK\003\004 this is not a TorchScript archive", f);
        fclose(f);
    }
    p.ae_path = bad;
    CHECK_INT(shim_model_load(&p, &model, msg, sizeof(msg)), SHIM_EFORMAT);
    CHECK(strstr(msg, "garbage.pt") != NULL);
    CHECK(model == NULL);
    remove(bad);

    p.ae_path = NULL;
    CHECK_INT(shim_model_load(&p, &model, msg, sizeof(msg)), SHIM_EINVAL);
    shim_model_free(NULL);
    shim_tensor_free(NULL);
}

static void test_noise(shim_model *model)
{
    int64_t shape[4] = {1, 16, 4, 4};
    shim_tensor *a = NULL, *b = NULL, *c = NULL, *h = NULL;
    float va[256], vb[256], vc[256];
    CHECK_INT(shim_randn(model, 42, shape, 4, SHIM_F32, &a, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_randn(model, 42, shape, 4, SHIM_F32, &b, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_randn(model, 43, shape, 4, SHIM_F32, &c, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_tensor_numel(a), 256);
    CHECK_INT(shim_tensor_to_host(a, va, 256, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_tensor_to_host(b, vb, 256, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_tensor_to_host(c, vc, 256, msg, sizeof(msg)), SHIM_OK);
    CHECK(memcmp(va, vb, sizeof(va)) == 0);
    CHECK(memcmp(va, vc, sizeof(va)) != 0);
    /* torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(42)) */
    check_float(va[0], 1.9269152879714966f, "randn f32 [0]");
    check_float(va[1], 1.4872840642929077f, "randn f32 [1]");
    check_float(va[100], 0.640755295753479f, "randn f32 [100]");
    check_float(va[255], 0.22245365381240845f, "randn f32 [255]");
    /* the same in bfloat16: drawn in the reduced type, not rounded from float32 */
    CHECK_INT(shim_randn(model, 42, shape, 4, SHIM_BF16, &h, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_tensor_dtype(h), SHIM_BF16);
    CHECK_INT(shim_tensor_to_host(h, va, 256, msg, sizeof(msg)), SHIM_OK);
    check_float(va[0], -0.80859375f, "randn bf16 [0]");
    check_float(va[100], 1.5625f, "randn bf16 [100]");
    check_float(va[255], 0.057861328125f, "randn bf16 [255]");
    CHECK_INT(shim_tensor_to_host(a, va, 255, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK(strstr(msg, "255") != NULL);
    shim_tensor_free(c);
    CHECK_INT(shim_randn(model, 1, shape, 0, SHIM_F32, &c, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK(c == NULL);
    shim_tensor_free(a);
    shim_tensor_free(b);
    shim_tensor_free(h);
}

static void test_tensor_ops(shim_model *model)
{
    float z[16 * 2 * 4], back[16 * 2 * 4];
    int64_t zshape[4] = {1, 16, 2, 4}, shape[8];
    int ndim;
    shim_tensor *t = NULL, *p = NULL, *u = NULL, *x = NULL, *v = NULL, *bf = NULL;
    for (int i = 0; i < 128; i++)
        z[i] = (float)i;
    CHECK_INT(shim_tensor_from_host(model, z, SHIM_F32, zshape, 4, SHIM_F32, &t, msg, sizeof(msg)),
              SHIM_OK);
    CHECK_INT(shim_pack(t, &p, msg, sizeof(msg)), SHIM_OK);
    shim_tensor_shape(p, shape, &ndim);
    CHECK_INT(ndim, 3);
    CHECK_INT(shape[1], 2);
    CHECK_INT(shape[2], 64);
    CHECK_INT(shim_tensor_to_host(p, back, 128, msg, sizeof(msg)), SHIM_OK);
    /* token j = 1 (w pair 1), feature c*4 + ph*2 + pw = 5*4 + 1*2 + 0 -> z[0, 5, 1, 2] */
    check_float(back[1 * 64 + 22], z[5 * 8 + 1 * 4 + 2], "pack layout");
    CHECK_INT(shim_unpack(p, 1, 2, &u, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_tensor_to_host(u, back, 128, msg, sizeof(msg)), SHIM_OK);
    CHECK(memcmp(z, back, sizeof(z)) == 0);
    CHECK_INT(shim_unpack(p, 2, 2, &x, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK(x == NULL);
    CHECK_INT(shim_pack(p, &x, msg, sizeof(msg)), SHIM_EINVAL);

    float xs[2] = {1.0f, 2.0f}, vs[2] = {3.0f, 4.0f}, out[2];
    int64_t s2[1] = {2};
    CHECK_INT(shim_tensor_from_host(model, xs, SHIM_F32, s2, 1, SHIM_F32, &x, msg, sizeof(msg)),
              SHIM_OK);
    CHECK_INT(shim_tensor_from_host(model, vs, SHIM_F32, s2, 1, SHIM_BF16, &v, msg, sizeof(msg)),
              SHIM_OK);
    CHECK_INT(shim_euler_step(x, v, -0.5f, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_tensor_to_host(x, out, 2, msg, sizeof(msg)), SHIM_OK);
    check_float(out[0], -0.5f, "euler [0]");
    check_float(out[1], 0.0f, "euler [1]");
    CHECK_INT(shim_euler_step(v, x, 1.0f, msg, sizeof(msg)), SHIM_EINVAL); /* x must be f32 */
    CHECK_INT(shim_euler_step(x, p, 1.0f, msg, sizeof(msg)), SHIM_EINVAL); /* shapes differ */

    float third = 1.0f / 3.0f;
    CHECK_INT(
        shim_tensor_from_host(model, &third, SHIM_F32, s2, 0, SHIM_F32, &bf, msg, sizeof(msg)),
        SHIM_OK);
    shim_tensor *c = NULL;
    CHECK_INT(shim_tensor_cast(bf, SHIM_BF16, &c, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_tensor_to_host(c, out, 1, msg, sizeof(msg)), SHIM_OK);
    check_float(out[0], 0.333984375f, "bf16 rounding of 1/3");
    shim_tensor_free(c);
    c = NULL;
    CHECK_INT(shim_tensor_full(model, 3.5, 2, SHIM_BF16, &c, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_tensor_to_host(c, out, 2, msg, sizeof(msg)), SHIM_OK);
    check_float(out[1], 3.5f, "full");
    int64_t neg[1] = {-1};
    shim_tensor *n = NULL;
    CHECK_INT(shim_tensor_from_host(model, xs, SHIM_F32, neg, 1, SHIM_F32, &n, msg, sizeof(msg)),
              SHIM_EINVAL);
    CHECK(n == NULL);
    shim_tensor_free(c);
    shim_tensor_free(bf);
    shim_tensor_free(t);
    shim_tensor_free(p);
    shim_tensor_free(u);
    shim_tensor_free(x);
    shim_tensor_free(v);
}

static void test_modules(shim_model *model, const struct fx_manifest *m)
{
    int64_t ids[77], shape[8];
    int64_t s[2] = {1, 77};
    int ndim;
    shim_tensor *t = NULL, *y = NULL, *bad = NULL, *out = NULL;
    for (int i = 0; i < 77; i++)
        ids[i] = i < 5 ? i + 10 : m->clip_eos;
    ids[0] = m->clip_bos;
    CHECK_INT(shim_tensor_from_host(model, ids, SHIM_I64, s, 2, SHIM_I64, &t, msg, sizeof(msg)),
              SHIM_OK);
    CHECK_INT(shim_run_clip(model, t, &y, msg, sizeof(msg)), SHIM_OK);
    shim_tensor_shape(y, shape, &ndim);
    CHECK_INT(ndim, 2);
    CHECK_INT(shape[1], m->vec_dim);
    /* a float tensor where ids belong */
    CHECK_INT(shim_run_clip(model, y, &bad, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK(bad == NULL);
    /* wrong shapes reach TorchScript, which raises: a status and a message, no crash */
    CHECK_INT(shim_run_transformer(model, y, y, y, y, y, y, y, &out, msg, sizeof(msg)),
              SHIM_ERUNTIME);
    CHECK(out == NULL);
    CHECK(strlen(msg) > 0 && strchr(msg, '\n') == NULL);
    CHECK(strstr(msg, "Error") != NULL); /* the error itself, not only the interpreter's line */
    CHECK_INT(shim_run_ae(model, y, &out, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK_INT(shim_sync(model, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_sync(NULL, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK_INT(shim_release_cache(model, msg, sizeof(msg)), SHIM_OK);
    CHECK_STR(shim_model_device(model), "cpu");
    shim_tensor_free(t);
    shim_tensor_free(y);
}

/* One transformer call on seeded inputs (16 image tokens, 8 text tokens); NULL on failure. */
static float *transformer_once(shim_model *model, const struct fx_manifest *m)
{
    int64_t img_s[3] = {1, 16, m->in_channels}, txt_s[3] = {1, 8, m->context_dim};
    int64_t y_s[2] = {1, m->vec_dim}, iid_s[3] = {1, 16, 3}, tid_s[3] = {1, 8, 3};
    float pos[16 * 3] = {0};
    shim_tensor *img = NULL, *txt = NULL, *y = NULL, *iid = NULL, *tid = NULL, *ts = NULL,
                *g = NULL, *v = NULL;
    float *host = NULL;
    for (int i = 0; i < 16; i++) {
        pos[i * 3 + 1] = (float)(i / 4);
        pos[i * 3 + 2] = (float)(i % 4);
    }
    if (shim_randn(model, 1, img_s, 3, SHIM_F32, &img, msg, sizeof(msg)) == SHIM_OK &&
        shim_randn(model, 2, txt_s, 3, SHIM_F32, &txt, msg, sizeof(msg)) == SHIM_OK &&
        shim_randn(model, 3, y_s, 2, SHIM_F32, &y, msg, sizeof(msg)) == SHIM_OK &&
        shim_tensor_from_host(model, pos, SHIM_F32, iid_s, 3, SHIM_F32, &iid, msg, sizeof(msg)) ==
            SHIM_OK &&
        shim_tensor_from_host(model, pos, SHIM_F32, tid_s, 3, SHIM_F32, &tid, msg, sizeof(msg)) ==
            SHIM_OK &&
        shim_tensor_full(model, 0.75, 1, SHIM_F32, &ts, msg, sizeof(msg)) == SHIM_OK &&
        shim_tensor_full(model, 3.5, 1, SHIM_F32, &g, msg, sizeof(msg)) == SHIM_OK &&
        shim_run_transformer(model, img, iid, txt, tid, ts, y, g, &v, msg, sizeof(msg)) ==
            SHIM_OK) {
        size_t n = (size_t)shim_tensor_numel(v);
        host = malloc(n * sizeof(*host));
        if (host && shim_tensor_to_host(v, host, n, msg, sizeof(msg)) != SHIM_OK) {
            free(host);
            host = NULL;
        }
    }
    shim_tensor *all[] = {img, txt, y, iid, tid, ts, g, v};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        shim_tensor_free(all[i]);
    return host;
}

/* stream drives the blocks itself: the same floats as resident's forward, one block ahead. */
static void test_stream(shim_model *resident, const struct fx_manifest *m)
{
    struct shim_params p = files(m);
    shim_model *st = NULL;
    char log[1024], want[1024];
    size_t n = (size_t)16 * (size_t)m->in_channels, o = 0;
    int blocks = m->depth + m->depth_single;
    p.placement = (shim_placement)7;
    CHECK_INT(shim_model_load(&p, &st, msg, sizeof(msg)), SHIM_EINVAL);
    p.placement = SHIM_PLACE_STREAM;
    CHECK_INT(shim_model_load(&p, &st, msg, sizeof(msg)), SHIM_OK);
    if (st == NULL)
        return;
    CHECK_INT(shim_model_placement(st), SHIM_PLACE_STREAM);
    CHECK_INT(shim_model_placement(resident), SHIM_PLACE_RESIDENT);
    CHECK_INT((long long)shim_stream_log(st, log, sizeof(log)), 0); /* nothing ran yet */
    float *a = transformer_once(resident, m), *b = transformer_once(st, m);
    CHECK(a != NULL && b != NULL);
    if (a && b)
        CHECK(memcmp(a, b, n * sizeof(float)) == 0);
    /* the first call: F0, then for each block i: F(i+1 mod n) R(i) E(i) */
    o += (size_t)snprintf(want + o, sizeof(want) - o, "F0");
    for (int i = 0; i < blocks; i++)
        o += (size_t)snprintf(want + o, sizeof(want) - o, " F%d R%d E%d", (i + 1) % blocks, i, i);
    CHECK_INT((long long)shim_stream_log(st, log, sizeof(log)), (long long)strlen(want));
    CHECK_STR(log, want);
    /* the second call finds block 0 prefetched; a short buffer truncates */
    free(b);
    b = transformer_once(st, m);
    if (a && b)
        CHECK(memcmp(a, b, n * sizeof(float)) == 0);
    shim_stream_log(st, log, sizeof(log));
    CHECK_STR(log, want + 3);
    CHECK_INT((long long)shim_stream_log(st, log, 3), (long long)strlen(want + 3));
    CHECK_STR(log, "F1");
    CHECK_INT((long long)shim_stream_log(resident, log, sizeof(log)), 0);
    CHECK_STR(log, "");
    free(a);
    free(b);
    shim_model_free(st);
}

/* Deterministic pseudo-random floats in [-a, a). */
static void fill(float *x, size_t n, unsigned seed, float a)
{
    uint32_t v = seed * 2654435761u + 12345u;
    for (size_t i = 0; i < n; i++) {
        v = v * 1664525u + 1013904223u;
        x[i] = ((float)(v >> 8) / 16777216.0f * 2.0f - 1.0f) * a;
    }
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++) {
        double e = a[i] > b[i] ? (double)a[i] - (double)b[i] : (double)b[i] - (double)a[i];
        d = e > d ? e : d;
    }
    return d;
}

/* A delta on one transformer layer (the first double block's fused qkv). */
static struct shim_lora_delta qkv_delta(const struct fx_manifest *m, const float *up,
                                        const float *down, int64_t rank)
{
    struct shim_lora_delta d = {SHIM_PART_TRANSFORMER,
                                "double_blocks.0.img_attn.qkv",
                                3 * m->hidden,
                                m->hidden,
                                0,
                                3 * m->hidden,
                                false,
                                rank,
                                1.0f,
                                up,
                                down};
    return d;
}

/* Stage errors name the layer and leave nothing staged. */
static void test_lora_stage_errors(shim_model *model, const struct fx_manifest *m)
{
    float up[3 * 64 * 4] = {0}, down[4 * 64] = {0};
    struct shim_lora_delta d = qkv_delta(m, up, down, 4), e;
    struct shim_lora_stats st;
    CHECK(m->hidden <= 64);
    CHECK_INT(shim_lora_stage(NULL, &d, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK_INT(shim_lora_stage(model, NULL, msg, sizeof(msg)), SHIM_EINVAL);
    e = d;
    e.layer = "double_blocks.0.img_attn.nope";
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK(strstr(msg, "'double_blocks.0.img_attn.nope'") && strstr(msg, "transformer.pt"));
    e.layer = "double_blocks.99.img_attn.qkv";
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    e.layer = "double_blocks..qkv";
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    e.layer = "double_blocks.0.img_attn"; /* a module, but no linear layer */
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK(strstr(msg, "not a linear layer") != NULL);
    e.layer = "double_blocks.0.img_attn.qkv.weight"; /* a tensor, not a module */
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    e = d;
    e.in = m->hidden + 1;
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK(strstr(msg, "qkv") != NULL && strstr(msg, "the delta is for") != NULL);
    e = d;
    e.rows = 3 * m->hidden + 1;
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    e = d;
    e.row0 = 1;
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    e = d;
    e.rank = 0;
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    e = d;
    e.swap = true;
    e.rows = 3;
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    e = d;
    e.part = (shim_part)5;
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    e = d;
    e.part = SHIM_PART_CLIP; /* the transformer's name in CLIP */
    CHECK_INT(shim_lora_stage(model, &e, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK(strstr(msg, "clip_text.pt") != NULL);
    shim_lora_stats(model, &st);
    CHECK_INT(st.staged_deltas + st.staged_layers + st.patched_layers + st.saved_bytes, 0);
    CHECK_INT(shim_lora_commit(model, msg, sizeof(msg)), SHIM_OK);  /* nothing staged */
    CHECK_INT(shim_lora_restore(model, msg, sizeof(msg)), SHIM_OK); /* nothing patched */
    CHECK_INT(shim_lora_commit(NULL, msg, sizeof(msg)), SHIM_EINVAL);
    shim_lora_discard(NULL);
    shim_lora_stats(NULL, &st);
    CHECK_INT(st.patched_layers, 0);
}

/* Commit changes the output, restore gives back the exact floats; a zero delta patches
 * without changing a bit; swap and row ranges are what they say; commits do not pile up;
 * discard applies nothing; the text encoders are patched too. */
static void test_lora_patch(shim_model *model, const struct fx_manifest *m)
{
    const int64_t h = m->hidden, r = 4;
    size_t n = (size_t)16 * (size_t)m->in_channels;
    float *up = malloc((size_t)(3 * h * r) * sizeof(float));
    float *up2 = malloc((size_t)(3 * h * r) * sizeof(float));
    float *down = malloc((size_t)(r * h) * sizeof(float));
    struct shim_lora_stats st;
    if (!up || !up2 || !down) {
        CHECK(0);
        goto out;
    }
    fill(up, (size_t)(3 * h * r), 1, 0.5f);
    fill(down, (size_t)(r * h), 2, 0.5f);
    float *base = transformer_once(model, m), *a = NULL, *b = NULL, *c = NULL;
    CHECK(base != NULL);
    struct shim_lora_delta d = qkv_delta(m, up, down, r);

    /* patched, then restored exactly */
    CHECK_INT(shim_lora_stage(model, &d, msg, sizeof(msg)), SHIM_OK);
    shim_lora_stats(model, &st);
    CHECK_INT(st.staged_deltas, 1);
    CHECK_INT(st.patched_layers, 0);
    CHECK_INT(shim_lora_commit(model, msg, sizeof(msg)), SHIM_OK);
    shim_lora_stats(model, &st);
    CHECK_INT(st.staged_deltas, 0);
    CHECK_INT(st.patched_layers, 1);
    CHECK_INT(st.saved_bytes, 3 * h * h * 4);
    a = transformer_once(model, m);
    CHECK(a && base && max_diff(a, base, n) > 1e-4);
    /* committing the same delta again starts from the saved original: no piling up */
    CHECK_INT(shim_lora_stage(model, &d, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_commit(model, msg, sizeof(msg)), SHIM_OK);
    b = transformer_once(model, m);
    CHECK(a && b && memcmp(a, b, n * sizeof(float)) == 0);
    free(b);
    CHECK_INT(shim_lora_restore(model, msg, sizeof(msg)), SHIM_OK);
    shim_lora_stats(model, &st);
    CHECK_INT(st.patched_layers + st.saved_bytes, 0);
    b = transformer_once(model, m);
    CHECK(b && base && memcmp(b, base, n * sizeof(float)) == 0);
    free(b);

    /* the same delta as two row ranges (as diffusers' to_q/to_k/to_v name a fused qkv) */
    struct shim_lora_delta lo = d, hi = d;
    lo.rows = h;
    hi.row0 = h;
    hi.rows = 2 * h;
    hi.up = up + h * r;
    CHECK_INT(shim_lora_stage(model, &lo, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_stage(model, &hi, msg, sizeof(msg)), SHIM_OK);
    shim_lora_stats(model, &st);
    CHECK_INT(st.staged_deltas, 2);
    CHECK_INT(st.staged_layers, 1);
    CHECK_INT(shim_lora_commit(model, msg, sizeof(msg)), SHIM_OK);
    b = transformer_once(model, m);
    CHECK(a && b && memcmp(a, b, n * sizeof(float)) == 0);
    free(b);

    /* swap: up with its two row halves traded, swapped back, is the same delta */
    memcpy(up2, up + (3 * h / 2) * r, (size_t)(3 * h / 2 * r) * sizeof(float));
    memcpy(up2 + (3 * h / 2) * r, up, (size_t)(3 * h / 2 * r) * sizeof(float));
    struct shim_lora_delta sw = d;
    sw.up = up2;
    sw.swap = true;
    CHECK_INT(shim_lora_stage(model, &sw, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_commit(model, msg, sizeof(msg)), SHIM_OK);
    b = transformer_once(model, m);
    CHECK(a && b && memcmp(a, b, n * sizeof(float)) == 0);
    free(b);

    /* two deltas of one layer add up: twice scale 0.5 is scale 1 up to rounding */
    struct shim_lora_delta half = d;
    half.scale = 0.5f;
    CHECK_INT(shim_lora_stage(model, &half, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_stage(model, &half, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_commit(model, msg, sizeof(msg)), SHIM_OK);
    b = transformer_once(model, m);
    CHECK(a && b && max_diff(a, b, n) < 1e-5);
    free(b);

    /* scale 0: patched (saved, written) but the same floats */
    struct shim_lora_delta zero = d;
    zero.scale = 0.0f;
    CHECK_INT(shim_lora_stage(model, &zero, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_commit(model, msg, sizeof(msg)), SHIM_OK);
    b = transformer_once(model, m);
    CHECK(b && base && memcmp(b, base, n * sizeof(float)) == 0);
    free(b);

    /* discard: staged, then dropped; the model keeps its patch of the moment */
    CHECK_INT(shim_lora_stage(model, &d, msg, sizeof(msg)), SHIM_OK);
    shim_lora_discard(model);
    shim_lora_stats(model, &st);
    CHECK_INT(st.staged_deltas, 0);
    CHECK_INT(st.patched_layers, 1);
    CHECK_INT(shim_lora_commit(model, msg, sizeof(msg)), SHIM_OK);
    b = transformer_once(model, m);
    CHECK(b && base && memcmp(b, base, n * sizeof(float)) == 0);
    free(b);
    CHECK_INT(shim_lora_restore(model, msg, sizeof(msg)), SHIM_OK);

    /* CLIP and T5 layers: their outputs change, and come back exactly */
    int64_t ids[77], s2[2] = {1, 77};
    shim_tensor *t = NULL, *y0 = NULL, *y1 = NULL, *y2 = NULL;
    for (int i = 0; i < 77; i++)
        ids[i] = i == 0 ? m->clip_bos : (i < 6 ? i + 10 : m->clip_eos);
    size_t ny = (size_t)m->vec_dim;
    float *fy0 = malloc(ny * sizeof(float)), *fy1 = malloc(ny * sizeof(float)),
          *fy2 = malloc(ny * sizeof(float));
    struct shim_lora_delta cd = {SHIM_PART_CLIP,
                                 "text_model.encoder.layers.0.self_attn.q_proj",
                                 m->clip_dim,
                                 m->clip_dim,
                                 0,
                                 m->clip_dim,
                                 false,
                                 r,
                                 2.0f,
                                 up,
                                 down};
    struct shim_lora_delta td = {SHIM_PART_T5,
                                 "encoder.block.0.layer.1.DenseReluDense.wi_0",
                                 m->t5_ff,
                                 m->t5_dim,
                                 0,
                                 m->t5_ff,
                                 false,
                                 r,
                                 1.0f,
                                 up,
                                 down};
    CHECK(fy0 && fy1 && fy2 && 3 * h >= m->t5_ff && h >= m->t5_dim && h >= m->clip_dim);
    CHECK_INT(shim_tensor_from_host(model, ids, SHIM_I64, s2, 2, SHIM_I64, &t, msg, sizeof(msg)),
              SHIM_OK);
    CHECK_INT(shim_run_clip(model, t, &y0, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_stage(model, &cd, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_commit(model, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_run_clip(model, t, &y1, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_restore(model, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_run_clip(model, t, &y2, msg, sizeof(msg)), SHIM_OK);
    if (fy0 && fy1 && fy2 && y0 && y1 && y2) {
        CHECK_INT(shim_tensor_to_host(y0, fy0, ny, msg, sizeof(msg)), SHIM_OK);
        CHECK_INT(shim_tensor_to_host(y1, fy1, ny, msg, sizeof(msg)), SHIM_OK);
        CHECK_INT(shim_tensor_to_host(y2, fy2, ny, msg, sizeof(msg)), SHIM_OK);
        CHECK(max_diff(fy0, fy1, ny) > 1e-4);
        CHECK(memcmp(fy0, fy2, ny * sizeof(float)) == 0);
    }
    shim_tensor_free(y0);
    shim_tensor_free(y1);
    shim_tensor_free(y2);
    y0 = y1 = y2 = NULL;
    shim_tensor_free(t);
    t = NULL;
    for (int i = 0; i < 77; i++)
        ids[i] = i < 6 ? i + 3 : 1; /* T5 ids (the tiny vocabulary's eos is 1) */
    CHECK_INT(shim_tensor_from_host(model, ids, SHIM_I64, s2, 2, SHIM_I64, &t, msg, sizeof(msg)),
              SHIM_OK);
    CHECK_INT(shim_run_t5(model, t, &y0, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_stage(model, &td, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_commit(model, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_run_t5(model, t, &y1, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_restore(model, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_run_t5(model, t, &y2, msg, sizeof(msg)), SHIM_OK);
    size_t nt = (size_t)shim_tensor_numel(y0);
    float *ft = malloc(3 * nt * sizeof(float));
    if (ft && y0 && y1 && y2) {
        CHECK_INT(shim_tensor_to_host(y0, ft, nt, msg, sizeof(msg)), SHIM_OK);
        CHECK_INT(shim_tensor_to_host(y1, ft + nt, nt, msg, sizeof(msg)), SHIM_OK);
        CHECK_INT(shim_tensor_to_host(y2, ft + 2 * nt, nt, msg, sizeof(msg)), SHIM_OK);
        CHECK(max_diff(ft, ft + nt, nt) > 1e-4);
        CHECK(memcmp(ft, ft + 2 * nt, nt * sizeof(float)) == 0);
    }
    free(ft);
    shim_tensor_free(t);
    shim_tensor_free(y0);
    shim_tensor_free(y1);
    shim_tensor_free(y2);
    free(fy0);
    free(fy1);
    free(fy2);
    free(base);
    free(a);
    (void)c;
out:
    free(up);
    free(up2);
    free(down);
}

/* stream: a patched block is what the next fetch copies (also when it was prefetched before
 * the patch), the floats are resident's, and restore is exact. */
static void test_lora_stream(shim_model *resident, const struct fx_manifest *m)
{
    struct shim_params p = files(m);
    shim_model *st = NULL;
    const int64_t h = m->hidden, r = 4;
    size_t n = (size_t)16 * (size_t)m->in_channels;
    float *up = malloc((size_t)(3 * h * r) * sizeof(float));
    float *down = malloc((size_t)(r * h) * sizeof(float));
    p.placement = SHIM_PLACE_STREAM;
    CHECK_INT(shim_model_load(&p, &st, msg, sizeof(msg)), SHIM_OK);
    if (st == NULL || up == NULL || down == NULL) {
        CHECK(0);
        goto out;
    }
    fill(up, (size_t)(3 * h * r), 3, 0.5f);
    fill(down, (size_t)(r * h), 4, 0.5f);
    float *base = transformer_once(st, m); /* leaves block 0 prefetched */
    struct shim_lora_delta d = qkv_delta(m, up, down, r);
    CHECK_INT(shim_lora_stage(resident, &d, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_commit(resident, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_stage(st, &d, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_commit(st, msg, sizeof(msg)), SHIM_OK);
    float *a = transformer_once(resident, m), *b = transformer_once(st, m);
    CHECK(a && b && memcmp(a, b, n * sizeof(float)) == 0);
    CHECK(a && base && max_diff(a, base, n) > 1e-4);
    free(b);
    CHECK_INT(shim_lora_restore(st, msg, sizeof(msg)), SHIM_OK);
    CHECK_INT(shim_lora_restore(resident, msg, sizeof(msg)), SHIM_OK);
    b = transformer_once(st, m);
    CHECK(b && base && memcmp(b, base, n * sizeof(float)) == 0);
    free(a);
    free(b);
    free(base);
out:
    shim_model_free(st);
    free(up);
    free(down);
}

/* A second thread takes the model over (as fluxcgi's worker does): shim_use_device, then
 * a module call and a synchronisation. */
struct other_thread {
    shim_model *model;
    int64_t clip_bos, clip_eos;
    shim_status use, run, sync;
};

static void *other_thread_main(void *arg)
{
    struct other_thread *o = arg;
    char m[256];
    int64_t ids[77], s[2] = {1, 77};
    shim_tensor *t = NULL, *y = NULL;
    for (int i = 0; i < 77; i++)
        ids[i] = i == 0 ? o->clip_bos : o->clip_eos;
    o->use = shim_use_device(o->model, m, sizeof(m));
    o->run = shim_tensor_from_host(o->model, ids, SHIM_I64, s, 2, SHIM_I64, &t, m, sizeof(m));
    if (o->run == SHIM_OK)
        o->run = shim_run_clip(o->model, t, &y, m, sizeof(m));
    o->sync = shim_sync(o->model, m, sizeof(m));
    shim_tensor_free(y);
    shim_tensor_free(t);
    return NULL;
}

static void test_use_device(shim_model *model, const struct fx_manifest *m)
{
    CHECK_INT(shim_use_device(NULL, msg, sizeof(msg)), SHIM_EINVAL);
    CHECK(strstr(msg, "model") != NULL);
    CHECK_INT(shim_use_device(model, msg, sizeof(msg)), SHIM_OK);
    struct other_thread o = {model,          m->clip_bos,    m->clip_eos,
                             SHIM_EINTERNAL, SHIM_EINTERNAL, SHIM_EINTERNAL};
    pthread_t th;
    CHECK_INT(pthread_create(&th, NULL, other_thread_main, &o), 0);
    CHECK_INT(pthread_join(th, NULL), 0);
    CHECK_INT(o.use, SHIM_OK);
    CHECK_INT(o.run, SHIM_OK);
    CHECK_INT(o.sync, SHIM_OK);
}

int main(int argc, char **argv)
{
    struct unit_args a = unit_parse_args(argc, argv);
    struct fx_manifest *m = NULL;
    shim_model *model = NULL;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    test_defaults_and_names();
    if (a.model == NULL) {
        fprintf(stderr, "test_shim: --model DIR is required\n");
        return 2;
    }
    if (manifest_load(a.model, &m, msg, sizeof(msg)) != 0) {
        fprintf(stderr, "test_shim: %s\n", msg);
        return 1;
    }
    test_load_errors(m, tmp);
    struct shim_params p = files(m);
    CHECK_INT(shim_model_load(&p, &model, msg, sizeof(msg)), SHIM_OK);
    if (model) {
        test_noise(model);
        test_tensor_ops(model);
        test_modules(model, m);
        test_use_device(model, m);
        test_stream(model, m);
        test_lora_stage_errors(model, m);
        test_lora_patch(model, m);
        test_lora_stream(model, m);
    }
    shim_model_free(model);
    manifest_free(m);
    return unit_done();
}
