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
    }
    shim_model_free(model);
    manifest_free(m);
    return unit_done();
}
