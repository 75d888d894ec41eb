/*
 * The C pipeline on the tiny model: request validation (field names and bounds), progress
 * and cancellation between steps, seeds, timings and the PNG it returns.  Parity with the
 * Python reference is tested in tests/pipeline/ (it needs the reference in the same run).
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "../../core/err.h"
#include "../../core/lora.h"
#include "../../core/manifest.h"
#include "../../core/pipeline.h"
#include "unit.h"

static char msg[1024];

static struct fx_request small(void)
{
    struct fx_request r = {0};
    r.prompt = "a red fox in the snow";
    r.prompt_len = strlen(r.prompt);
    r.width = 256;
    r.height = 256;
    r.steps = 3;
    r.guidance = 3.5;
    r.seed = 9;
    r.has_seed = true;
    return r;
}

static void check_invalid(struct fx_request r, const struct fx_limits *l, const char *field)
{
    const char *got = NULL;
    int rc = fx_request_validate(&r, l, &got, msg, sizeof(msg));
    CHECK(rc == FX_EINVAL || rc == FX_ERANGE);
    CHECK_STR(got, field);
    CHECK(strncmp(msg, field, strlen(field)) == 0); /* the message starts with the field */
}

static void test_validate(void)
{
    struct fx_limits l;
    struct fx_request r = small();
    const char *field = "x";
    fx_limits_default(&l, NULL);
    CHECK_INT(l.min_size, 64);
    CHECK_INT(l.max_size, 2048);
    CHECK_INT(fx_request_validate(&r, &l, &field, msg, sizeof(msg)), 0);
    CHECK(field == NULL);
    r.prompt_len = 0;
    check_invalid(r, &l, "prompt");
    r = small();
    r.prompt = NULL;
    check_invalid(r, &l, "prompt");
    r = small();
    r.prompt_len = l.max_prompt_bytes + 1;
    check_invalid(r, &l, "prompt");
    int sizes[] = {0, -16, 250, 48, 2064, 1 << 30};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        r = small();
        r.width = sizes[i];
        check_invalid(r, &l, "width");
        r = small();
        r.height = sizes[i];
        check_invalid(r, &l, "height");
    }
    int steps[] = {0, -1, 101, 100000};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        r = small();
        r.steps = steps[i];
        check_invalid(r, &l, "num_inference_steps");
    }
    double g[] = {NAN, INFINITY, -INFINITY, -0.5, 100.5};
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        r = small();
        r.guidance = g[i];
        check_invalid(r, &l, "guidance_scale");
    }
    r = small();
    r.seed = FX_SEED_MAX + 1;
    check_invalid(r, &l, "seed");
    r.has_seed = false; /* an unset seed is not checked */
    CHECK_INT(fx_request_validate(&r, &l, NULL, NULL, 0), 0);
    r = small();
    r.width = 2048;
    r.height = 64;
    CHECK_INT(fx_request_validate(&r, &l, NULL, NULL, 0), 0);
    for (int i = 0; i < 100; i++)
        CHECK(fx_random_seed() <= FX_SEED_MAX);
    /* LoRAs: at most FX_LORA_MAX, each with a file and a finite scale within the bound */
    struct fx_lora lo[FX_LORA_MAX + 1];
    for (int i = 0; i <= FX_LORA_MAX; i++)
        lo[i] = (struct fx_lora){"style", "/x/style.safetensors", 1.0};
    r = small();
    r.loras = lo;
    r.n_loras = FX_LORA_MAX;
    CHECK_INT(fx_request_validate(&r, &l, NULL, NULL, 0), 0);
    r.n_loras = FX_LORA_MAX + 1;
    check_invalid(r, &l, "loras");
    r.n_loras = 1;
    r.loras = NULL;
    check_invalid(r, &l, "loras");
    double scales[] = {NAN, INFINITY, FX_LORA_SCALE_MAX + 0.5, -FX_LORA_SCALE_MAX - 0.5};
    for (size_t i = 0; i < sizeof(scales) / sizeof(scales[0]); i++) {
        r = small();
        lo[0].scale = scales[i];
        r.loras = lo;
        r.n_loras = 1;
        check_invalid(r, &l, "loras");
    }
    lo[0].scale = -FX_LORA_SCALE_MAX;
    CHECK_INT(fx_request_validate(&r, &l, NULL, NULL, 0), 0);
    lo[0].path = NULL;
    check_invalid(r, &l, "loras");
    lo[0].path = "";
    check_invalid(r, &l, "loras");
}

struct counter {
    int calls, last, steps;
    atomic_int *cancel_after_first;
};

static void on_step(void *ud, int step, int steps)
{
    struct counter *c = ud;
    c->calls++;
    CHECK_INT(step, c->last + 1);
    c->last = step;
    c->steps = steps;
    if (c->cancel_after_first && step == 1)
        atomic_store(c->cancel_after_first, 1);
}

static void test_generate(struct fx_pipeline *p)
{
    struct fx_request r = small();
    struct fx_result a = {0}, b = {0};
    struct counter c = {0};
    struct fx_hooks h = {on_step, &c, NULL, NULL};

    CHECK_INT(fx_pipeline_generate(p, &r, &h, &a, msg, sizeof(msg)), 0);
    CHECK_INT(c.calls, 3);
    CHECK_INT(c.steps, 3);
    CHECK(a.seed == 9);
    CHECK(a.png != NULL && a.png_len > 100);
    CHECK(a.png && memcmp(a.png, "\x89PNG\r\n\x1a\n", 8) == 0);
    CHECK(a.clip_tokens >= 2 && a.t5_tokens >= 1);
    CHECK(a.t_denoise > 0 && a.t_decode > 0 && a.t_encode > 0);
    CHECK_INT(a.device_bytes_peak, 0); /* CPU */

    /* the same request again: the same bytes; no hooks at all is fine */
    CHECK_INT(fx_pipeline_generate(p, &r, NULL, &b, msg, sizeof(msg)), 0);
    CHECK(a.png_len == b.png_len && a.png && b.png && memcmp(a.png, b.png, a.png_len) == 0);
    fx_result_release(&b);

    /* another seed: another image */
    r.seed = 10;
    CHECK_INT(fx_pipeline_generate(p, &r, NULL, &b, msg, sizeof(msg)), 0);
    CHECK(b.seed == 10);
    CHECK(!(a.png_len == b.png_len && memcmp(a.png, b.png, a.png_len) == 0));
    fx_result_release(&b);

    /* no seed: one is chosen and reported */
    r.has_seed = false;
    CHECK_INT(fx_pipeline_generate(p, &r, NULL, &b, msg, sizeof(msg)), 0);
    CHECK(b.seed <= FX_SEED_MAX);
    fx_result_release(&b);
    fx_result_release(&a);
    fx_result_release(&a); /* twice is harmless */
    CHECK(a.png == NULL && a.png_len == 0);
}

static void test_cancel(struct fx_pipeline *p)
{
    struct fx_request r = small();
    struct fx_result res = {0};
    atomic_int cancel = 0;
    struct counter c = {0, 0, 0, &cancel};
    struct fx_hooks h = {on_step, &c, &cancel, NULL};
    r.steps = 5;
    CHECK_INT(fx_pipeline_generate(p, &r, &h, &res, msg, sizeof(msg)), FX_ECANCELED);
    CHECK_INT(c.calls, 1); /* stopped before the second step */
    CHECK(strstr(msg, "step 2 of 5") != NULL);
    CHECK(res.png == NULL);
    /* already set: nothing runs */
    c.calls = 0;
    c.last = 0;
    CHECK_INT(fx_pipeline_generate(p, &r, &h, &res, msg, sizeof(msg)), FX_ECANCELED);
    CHECK_INT(c.calls, 0);
    /* the pipeline is still usable */
    atomic_store(&cancel, 0);
    c.cancel_after_first = NULL;
    c.last = 0;
    CHECK_INT(fx_pipeline_generate(p, &r, &h, &res, msg, sizeof(msg)), 0);
    CHECK_INT(c.last, 5);
    fx_result_release(&res);
}

static void test_load_errors(void)
{
    struct fx_pipeline *p = (struct fx_pipeline *)&msg;
    struct fx_pipeline_params pp = {"/nonexistent/model", "cpu", 0, NULL, 0, 0, 0};
    CHECK_INT(fx_pipeline_load(&pp, &p, msg, sizeof(msg)), FX_ENOENT);
    CHECK(p == NULL);
    CHECK(strstr(msg, "the directory does not exist") != NULL);
    CHECK_INT(fx_pipeline_load(NULL, &p, msg, sizeof(msg)), FX_EINVAL);
    fx_pipeline_free(NULL);
}

int main(int argc, char **argv)
{
    struct unit_args a = unit_parse_args(argc, argv);
    struct fx_pipeline *p = NULL;
    test_validate();
    test_load_errors();
    if (a.model == NULL) {
        fprintf(stderr, "test_pipeline: --model DIR is required\n");
        return 2;
    }
    /* an unknown placement is refused, auto on the CPU is resident */
    struct fx_pipeline_params pp = {a.model, "cpu", 0, "sideways", 0, 0, 0};
    CHECK_INT(fx_pipeline_load(&pp, &p, msg, sizeof(msg)), FX_EINVAL);
    CHECK(p == NULL);
    CHECK(strstr(msg, "placement 'sideways'") != NULL);
    pp.placement = "auto";
    pp.device_memory = 1;
    CHECK_INT(fx_pipeline_load(&pp, &p, msg, sizeof(msg)), 0);
    if (p) {
        char log[64] = "x";
        CHECK_STR(fx_pipeline_placement(p), "resident");
        CHECK_INT((long long)fx_pipeline_stream_log(p, log, sizeof(log)), 0);
        CHECK_STR(log, "");
        fx_pipeline_free(p);
        p = NULL;
    }
    pp.placement = NULL;
    CHECK_INT(fx_pipeline_load(&pp, &p, msg, sizeof(msg)), 0);
    if (p) {
        CHECK_STR(fx_pipeline_placement(p), "resident");
        CHECK_STR(fx_pipeline_device(p), "cpu");
        CHECK_STR(fx_pipeline_manifest(p)->name, "flux-tiny");
        test_generate(p);
        test_cancel(p);
    }
    fx_pipeline_free(p);
    return unit_done();
}
