/*
 * test_plan.c - the memory plan (core/plan.h) and the manifest's weight formats and sizes
 * (core/manifest.h), and how the service applies it (api_ctx_limits with device_memory).
 * Manifests are written to a temp dir from a template with the full FLUX.1 dimensions, so
 * the byte figures are the ones the plan is meant for.
 */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../core/err.h"
#include "../../core/manifest.h"
#include "../../core/plan.h"
#include "../../fcgi/api.h"
#include "unit.h"

static char dir[64] = "/tmp/fluxtest-plan-XXXXXX";

/* Block sizes of the full model in bf16 (one double, one single block) and the whole. */
#define DBB 679649280LL
#define SBB 283213824LL
#define TRANSFORMER_BYTES 23802816640LL
#define T5_BYTES 9524621312LL

/* Writes dir/manifest.json: the full layout; extra JSON members are spliced into the
 * transformer's module entry and the top level. */
static void write_manifest(const char *dtype, const char *transformer_extra, const char *top_extra)
{
    char path[128];
    FILE *f;
    snprintf(path, sizeof(path), "%s/manifest.json", dir);
    f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        exit(1);
    }
    fprintf(
        f,
        "{\"format\": \"fluxcgi-model\", \"format_version\": 1, \"name\": \"full\",\n"
        " \"dtype\": \"%s\", \"device\": \"cuda\", \"attention\": \"sdpa\"%s,\n"
        " \"modules\": {\n"
        "  \"clip_text\": {\"file\": \"clip_text.pt\", \"bytes\": 246144864,\n"
        "    \"params\": {\"hidden_size\": 768, \"intermediate_size\": 3072,\n"
        "                \"num_attention_heads\": 12}},\n"
        "  \"t5_encoder\": {\"file\": \"t5_encoder.pt\", \"bytes\": 1, \"param_bytes\": %lld,\n"
        "    \"params\": {\"d_model\": 4096, \"d_ff\": 10240, \"num_heads\": 64, \"d_kv\": 64,\n"
        "                \"num_layers\": 24}},\n"
        "  \"transformer\": {\"file\": \"transformer.pt\", \"bytes\": 1,\n"
        "    \"param_bytes\": %lld, \"double_block_bytes\": %lld,\n"
        "    \"single_block_bytes\": %lld%s,\n"
        "    \"params\": {\"in_channels\": 64, \"vec_in_dim\": 768, \"context_in_dim\": 4096,\n"
        "      \"hidden_size\": 3072, \"mlp_hidden\": 12288, \"num_heads\": 24,\n"
        "      \"depth\": 19, \"depth_single_blocks\": 38}},\n"
        "  \"ae_decoder\": {\"file\": \"ae_decoder.pt\", \"bytes\": 99090000,\n"
        "    \"params\": {\"ch\": 128, \"ch_mult\": [1, 2, 4, 4], \"num_res_blocks\": 2}}},\n"
        " \"tokenizers\": {\n"
        "  \"clip\": {\"vocab\": \"v.json\", \"merges\": \"m.txt\", \"max_length\": 77,\n"
        "           \"bos_id\": 49406, \"eos_id\": 49407},\n"
        "  \"t5\": {\"model\": \"s.model\", \"max_length\": 512, \"eos_id\": 1, \"pad_id\": 0}},\n"
        " \"latent\": {\"channels\": 16, \"downsample\": 8, \"patch\": 2},\n"
        " \"defaults\": {\"steps\": 28, \"guidance\": 3.5, \"width\": 1024, \"height\": 1024},\n"
        " \"limits\": {\"multiple_of\": 16, \"min_size\": 64, \"max_size\": 2048}}\n",
        dtype, top_extra, T5_BYTES, TRANSFORMER_BYTES, DBB, SBB, transformer_extra);
    fclose(f);
}

static struct fx_manifest *load(int want_rc, const char *want_msg)
{
    struct fx_manifest *m = NULL;
    char msg[512] = "";
    int rc = manifest_load(dir, &m, msg, sizeof(msg));
    CHECK_INT(rc, want_rc);
    if (want_msg && strstr(msg, want_msg) == NULL) {
        unit_failed++;
        fprintf(stderr, "FAIL message '%s' lacks '%s'\n", msg, want_msg);
    }
    return m;
}

static void test_manifest_formats(void)
{
    struct fx_manifest *m;
    write_manifest("bf16", "", "");
    m = load(0, NULL);
    if (m) {
        /* absent formats: plain in the dtype; absent param_bytes: the file's bytes */
        CHECK_INT(m->weights, FX_WEIGHTS_BF16);
        CHECK_INT(m->clip.weights, FX_WEIGHTS_BF16);
        CHECK_INT(m->clip.param_bytes, 246144864);
        CHECK_INT(m->transformer.param_bytes, TRANSFORMER_BYTES);
        CHECK_INT(m->double_block_bytes, DBB);
        CHECK_INT(m->sdpa, 1);
        CHECK_INT(m->ae_levels, 4);
        CHECK_INT(m->ae_ch_mult[3], 4);
        CHECK_INT(m->t5_len, 512);
        CHECK_STR(manifest_weights_name(m->weights), "bf16");
    }
    manifest_free(m);

    write_manifest("bf16", ", \"weights\": {\"format\": \"int4\", \"dequant_bytes\": 264241152}",
                   ", \"weights\": \"int4\"");
    m = load(0, NULL);
    if (m) {
        CHECK_INT(m->weights, FX_WEIGHTS_INT4);
        CHECK_INT(m->transformer.dequant_bytes, 264241152);
        CHECK_STR(manifest_weights_name(m->transformer.weights), "int4");
    }
    manifest_free(m);

    write_manifest("bf16", ", \"weights\": {\"format\": \"nf3\"}", "");
    CHECK(load(FX_EFORMAT, "'nf3', not one of") == NULL);
    write_manifest("bf16", ", \"weights\": {\"format\": \"fp32\"}", "");
    CHECK(load(FX_EFORMAT, "the model's dtype is 'bf16'") == NULL);
    write_manifest("bf16", ", \"weights\": {\"format\": \"int8\"}", "");
    CHECK(load(FX_EFORMAT, "dequant_bytes") == NULL);
    write_manifest("bf16", ", \"weights\": {\"format\": \"int8\", \"dequant_bytes\": 0}",
                   ", \"weights\": \"int4\"");
    CHECK(load(FX_EFORMAT, "'weights' is 'int4'") == NULL);
    write_manifest("bf16", "", ", \"attention\": \"flash\"");
    CHECK(load(FX_EFORMAT, NULL) == NULL); /* duplicate key: json-c keeps the last one */
}

static void test_placements(void)
{
    struct fx_manifest *m;
    struct fx_plan res, off, str;
    enum fx_placement p;
    char msg[256];
    write_manifest("bf16", "", "");
    m = load(0, NULL);
    if (m == NULL)
        return;
    CHECK_INT(plan_compute(m, FX_PLACE_RESIDENT, 1024, 1024, NULL, &res, msg, sizeof(msg)), 0);
    CHECK_INT(plan_compute(m, FX_PLACE_ENCODERS_OFFLOAD, 1024, 1024, NULL, &off, msg, sizeof(msg)),
              0);
    CHECK_INT(plan_compute(m, FX_PLACE_STREAM, 1024, 1024, NULL, &str, msg, sizeof(msg)), 0);
    CHECK_INT(res.tokens, 64 * 64 + 512);
    /* resident: every weight on the device, nothing in host memory */
    CHECK_INT(res.weights_device, 246144864LL + T5_BYTES + TRANSFORMER_BYTES + 99090000LL);
    CHECK_INT(res.weights_host, 0);
    CHECK_INT(res.overhead, PLAN_CUDA_OVERHEAD);
    CHECK_INT(res.device_total, res.weights_device + res.activation_peak + res.overhead);
    /* encoders-offload: CLIP and T5 move to the host and run there */
    CHECK_INT(off.weights_device, res.weights_device - 246144864LL - T5_BYTES);
    CHECK_INT(off.weights_host, 246144864LL + T5_BYTES);
    CHECK_STR(off.mod[PLAN_T5].runs_on, "host");
    CHECK_INT(off.host_total, off.weights_host + off.mod[PLAN_T5].activation_bytes);
    /* stream: the blocks live in host memory, two of the larger kind on the device */
    CHECK_INT(str.mod[PLAN_TRANSFORMER].host_bytes, 19 * DBB + 38 * SBB);
    CHECK_INT(str.mod[PLAN_TRANSFORMER].device_bytes,
              TRANSFORMER_BYTES - 19 * DBB - 38 * SBB + 2 * DBB);
    CHECK(str.device_total < off.device_total && off.device_total < res.device_total);
    /* the activations do not depend on where the weights live */
    CHECK_INT(str.mod[PLAN_TRANSFORMER].activation_bytes,
              res.mod[PLAN_TRANSFORMER].activation_bytes);
    /* on the CPU there is no CUDA overhead */
    CHECK_INT(plan_compute(m, FX_PLACE_RESIDENT, 1024, 1024, "cpu", &res, msg, sizeof(msg)), 0);
    CHECK_INT(res.overhead, 0);

    CHECK_INT(plan_compute(m, FX_PLACE_RESIDENT, 1000, 1024, NULL, &res, msg, sizeof(msg)),
              FX_EINVAL);
    CHECK_INT(plan_placement_parse("stream", &p), 0);
    CHECK_INT(p, FX_PLACE_STREAM);
    CHECK_INT(plan_placement_parse("auto", &p), FX_EINVAL);
    CHECK_STR(plan_placement_name(FX_PLACE_ENCODERS_OFFLOAD), "encoders-offload");
    manifest_free(m);

    /* no block sizes (an older export): stream cannot be planned, the others can */
    write_manifest("bf16", "", "");
    m = load(0, NULL);
    if (m) {
        m->double_block_bytes = m->single_block_bytes = 0;
        CHECK_INT(plan_compute(m, FX_PLACE_STREAM, 1024, 1024, NULL, &str, msg, sizeof(msg)),
                  FX_ENOTSUP);
        CHECK(strstr(msg, "export the model again") != NULL);
    }
    manifest_free(m);
}

/* The transformer's formula, written out for 1024 x 1024 in bf16 with fused attention:
 * N = 4608; per token max(2(11*3072 + 12288) + 8*3072, 2(6*3072 + 3*12288)) = 116736. */
static void test_activation_formula(void)
{
    struct fx_manifest *m;
    struct fx_plan a, b;
    int64_t n = 4608, want;
    write_manifest("bf16", "", "");
    m = load(0, NULL);
    if (m == NULL)
        return;
    CHECK_INT(plan_compute(m, FX_PLACE_RESIDENT, 1024, 1024, NULL, &a, NULL, 0), 0);
    want = n * 116736 + n * 128 * 4 + 512LL * 4096 * 2 + 4096LL * 64 * 6 * 2;
    CHECK_INT(a.mod[PLAN_TRANSFORMER].activation_bytes, want);
    /* the explicit path adds h N^2 (2e + 8) */
    m->sdpa = 0;
    CHECK_INT(plan_compute(m, FX_PLACE_RESIDENT, 1024, 1024, NULL, &b, NULL, 0), 0);
    CHECK_INT(b.mod[PLAN_TRANSFORMER].activation_bytes - want, 24 * n * n * 12);
    m->sdpa = 1;
    /* a quantised format adds its dequantisation transient */
    m->transformer.dequant_bytes = 1000;
    CHECK_INT(plan_compute(m, FX_PLACE_RESIDENT, 1024, 1024, NULL, &b, NULL, 0), 0);
    CHECK_INT(b.mod[PLAN_TRANSFORMER].activation_bytes, want + 1000);
    m->transformer.dequant_bytes = 0;
    /* fp32 doubles the element size: more than before, and 4 x the pixels grow it */
    m->bf16 = 0;
    CHECK_INT(plan_compute(m, FX_PLACE_RESIDENT, 1024, 1024, NULL, &b, NULL, 0), 0);
    CHECK(b.activation_peak > a.activation_peak);
    m->bf16 = 1;
    CHECK_INT(plan_compute(m, FX_PLACE_RESIDENT, 2048, 2048, NULL, &b, NULL, 0), 0);
    CHECK(b.mod[PLAN_TRANSFORMER].activation_bytes > 3 * a.mod[PLAN_TRANSFORMER].activation_bytes);
    CHECK(b.mod[PLAN_AE].activation_bytes > 4 * a.mod[PLAN_AE].activation_bytes);
    /* the peak is the largest module run on the device */
    int64_t peak = 0;
    for (int i = 0; i < PLAN_MODULES; i++)
        if (a.mod[i].activation_bytes > peak)
            peak = a.mod[i].activation_bytes;
    CHECK_INT(a.activation_peak, peak);
    manifest_free(m);
}

static void test_max_size(void)
{
    struct fx_manifest *m;
    struct fx_plan pl;
    int s;
    write_manifest("bf16", "", "");
    m = load(0, NULL);
    if (m == NULL)
        return;
    /* unknown memory: the manifest's bound */
    CHECK_INT(plan_max_size(m, FX_PLACE_RESIDENT, NULL, 0, 64, 2048, 16), 2048);
    /* 24 GiB: resident bf16 does not fit at all, encoders-offload fits up to a side s */
    CHECK_INT(plan_max_size(m, FX_PLACE_RESIDENT, NULL, 24LL << 30, 64, 2048, 16), 0);
    s = plan_max_size(m, FX_PLACE_ENCODERS_OFFLOAD, NULL, 24LL << 30, 64, 2048, 16);
    CHECK(s >= 64 && s < 2048 && s % 16 == 0);
    CHECK_INT(plan_compute(m, FX_PLACE_ENCODERS_OFFLOAD, s, s, NULL, &pl, NULL, 0), 0);
    CHECK(pl.device_total <= 24LL << 30);
    CHECK_INT(plan_compute(m, FX_PLACE_ENCODERS_OFFLOAD, s + 16, s + 16, NULL, &pl, NULL, 0), 0);
    CHECK(pl.device_total > 24LL << 30);
    /* plenty: the bound itself */
    CHECK_INT(plan_max_size(m, FX_PLACE_RESIDENT, NULL, 1LL << 40, 64, 2048, 16), 2048);
    CHECK_INT(plan_max_size(m, FX_PLACE_RESIDENT, NULL, 1LL << 40, 64, 2048, 10), -1);
    manifest_free(m);
}

/* auto: resident on the CPU or without a figure, else the first placement that fits. */
static void test_auto(void)
{
    struct fx_manifest *m;
    struct fx_plan res, off, str;
    enum fx_placement p = FX_PLACE_STREAM;
    char msg[512];
    write_manifest("bf16", "", "");
    m = load(0, NULL);
    if (m == NULL)
        return;
    CHECK_INT(plan_compute(m, FX_PLACE_RESIDENT, 1024, 1024, "cuda", &res, NULL, 0), 0);
    CHECK_INT(plan_compute(m, FX_PLACE_ENCODERS_OFFLOAD, 1024, 1024, "cuda", &off, NULL, 0), 0);
    CHECK_INT(plan_compute(m, FX_PLACE_STREAM, 1024, 1024, "cuda", &str, NULL, 0), 0);
    CHECK_INT(plan_auto_placement(m, "cpu", 1LL << 30, 1024, 1024, &p, msg, sizeof(msg)), 0);
    CHECK_INT(p, FX_PLACE_RESIDENT);
    p = FX_PLACE_STREAM;
    CHECK_INT(plan_auto_placement(m, "cuda", 0, 1024, 1024, &p, msg, sizeof(msg)), 0);
    CHECK_INT(p, FX_PLACE_RESIDENT);
    CHECK_INT(plan_auto_placement(m, "cuda:1", res.device_total, 1024, 1024, &p, msg, sizeof(msg)),
              0);
    CHECK_INT(p, FX_PLACE_RESIDENT);
    CHECK_INT(
        plan_auto_placement(m, "cuda", res.device_total - 1, 1024, 1024, &p, msg, sizeof(msg)), 0);
    CHECK_INT(p, FX_PLACE_ENCODERS_OFFLOAD);
    CHECK_INT(
        plan_auto_placement(m, "cuda", off.device_total - 1, 1024, 1024, &p, msg, sizeof(msg)), 0);
    CHECK_INT(p, FX_PLACE_STREAM);
    CHECK_INT(
        plan_auto_placement(m, "cuda", str.device_total - 1, 1024, 1024, &p, msg, sizeof(msg)),
        FX_EDEVICE);
    CHECK(strstr(msg, "no placement fits") != NULL);
    /* a configured name: auto resolved as above, the others as named */
    CHECK_INT(plan_resolve_placement(m, NULL, "cuda", 1, 1024, 1024, &p, msg, sizeof(msg)), 0);
    CHECK_INT(p, FX_PLACE_RESIDENT);
    CHECK_INT(plan_resolve_placement(m, "stream", "cuda", 1, 1024, 1024, &p, msg, sizeof(msg)), 0);
    CHECK_INT(p, FX_PLACE_STREAM);
    CHECK_INT(plan_resolve_placement(m, "auto", "cuda", off.device_total - 1, 1024, 1024, &p, msg,
                                     sizeof(msg)),
              0);
    CHECK_INT(p, FX_PLACE_STREAM);
    CHECK_INT(plan_resolve_placement(m, "auto", "cuda", 1, 1024, 1024, &p, msg, sizeof(msg)),
              FX_EDEVICE);
    CHECK_INT(plan_resolve_placement(m, "sideways", "cuda", 0, 1024, 1024, &p, msg, sizeof(msg)),
              FX_EINVAL);
    CHECK(strstr(msg, "placement 'sideways'") != NULL);
    /* without block sizes, stream cannot be chosen: the message says to export again */
    m->double_block_bytes = m->single_block_bytes = 0;
    CHECK_INT(
        plan_auto_placement(m, "cuda", off.device_total - 1, 1024, 1024, &p, msg, sizeof(msg)),
        FX_EDEVICE);
    CHECK(strstr(msg, "export") != NULL);
    manifest_free(m);
}

static void test_printers(void)
{
    struct fx_manifest *m;
    struct fx_plan pl;
    char *buf = NULL;
    size_t len = 0;
    FILE *f;
    json_object *j, *o;
    int64_t v;
    write_manifest("bf16", "", "");
    m = load(0, NULL);
    if (m == NULL)
        return;
    CHECK_INT(plan_compute(m, FX_PLACE_STREAM, 1024, 768, NULL, &pl, NULL, 0), 0);
    f = open_memstream(&buf, &len);
    CHECK_INT(plan_print_json(f, &pl, 12LL << 30), 0);
    fclose(f);
    j = json_tokener_parse(buf);
    CHECK(j != NULL);
    CHECK(json_object_object_get_ex(j, "device_total", &o));
    v = json_object_get_int64(o);
    CHECK_INT(v, pl.device_total);
    CHECK(json_object_object_get_ex(j, "placement", &o));
    CHECK_STR(json_object_get_string(o), "stream");
    CHECK(json_object_object_get_ex(j, "fits", &o));
    CHECK_INT(json_object_get_boolean(o), pl.device_total <= (12LL << 30));
    CHECK(json_object_object_get_ex(j, "modules", &o));
    CHECK_INT(json_object_array_length(o), 4);
    json_object_put(j);
    free(buf);
    buf = NULL;
    f = open_memstream(&buf, &len);
    CHECK_INT(plan_print_text(f, &pl, 1LL << 30), 0);
    fclose(f);
    CHECK(strstr(buf, "placement stream, 1024 x 768") != NULL);
    CHECK(strstr(buf, "does not fit") != NULL);
    free(buf);
    manifest_free(m);
}

static void test_parse_bytes(void)
{
    int64_t v = 0;
    CHECK_INT(plan_parse_bytes("24G", &v), 0);
    CHECK_INT(v, 24LL << 30);
    CHECK_INT(plan_parse_bytes("512M", &v), 0);
    CHECK_INT(v, 512LL << 20);
    CHECK_INT(plan_parse_bytes("1000", &v), 0);
    CHECK_INT(v, 1000);
    CHECK_INT(plan_parse_bytes("12GB", &v), FX_EINVAL);
    CHECK_INT(plan_parse_bytes("-1", &v), FX_EINVAL);
    CHECK_INT(plan_parse_bytes("99999999999999999999", &v), FX_ERANGE);
}

/* device_memory in the service: the default image must fit, max_size drops to what fits, and
 * a request above it is refused by the usual validation with the bound in the message. */
static void test_service_limits(void)
{
    struct fx_manifest *m;
    struct fx_config cfg;
    struct api_ctx ctx;
    struct fx_plan pl;
    struct fx_request r;
    const char *field = NULL;
    char msg[1024];
    int side;
    write_manifest("bf16", ", \"weights\": {\"format\": \"int8\", \"dequant_bytes\": 1}", "");
    m = load(0, NULL);
    if (m == NULL)
        return;
    config_defaults(&cfg);
    /* unknown memory: the manifest's limits, nothing planned */
    CHECK_INT(api_ctx_limits(&ctx, m, &cfg, msg, sizeof(msg)), 0);
    CHECK_INT(ctx.limits.max_size, 2048);
    /* enough for 1024 x 1024 but not for 2048 x 2048: max_size drops to the largest fit */
    CHECK_INT(plan_compute(m, FX_PLACE_RESIDENT, 1024, 1024, NULL, &pl, NULL, 0), 0);
    cfg.device_memory = (size_t)pl.device_total + ((size_t)1 << 30);
    CHECK_INT(api_ctx_limits(&ctx, m, &cfg, msg, sizeof(msg)), 0);
    side = plan_max_size(m, FX_PLACE_RESIDENT, NULL, (int64_t)cfg.device_memory, 64, 2048, 16);
    CHECK(side >= 1024 && side < 2048);
    CHECK_INT(ctx.limits.max_size, side);
    memset(&r, 0, sizeof(r));
    r.prompt = "a fox";
    r.prompt_len = 5;
    r.steps = 28;
    r.guidance = 3.5;
    r.width = side + 16;
    r.height = 64;
    CHECK_INT(fx_request_validate(&r, &ctx.limits, &field, msg, sizeof(msg)), FX_ERANGE);
    CHECK_STR(field, "width");
    {
        char bound[16];
        snprintf(bound, sizeof(bound), "%d", side);
        CHECK(strstr(msg, bound) != NULL);
    }
    r.width = side;
    CHECK_INT(fx_request_validate(&r, &ctx.limits, &field, msg, sizeof(msg)), 0);
    /* too small for the default 1024 x 1024: refused, with the plan's figure */
    cfg.device_memory = (size_t)pl.device_total - 1;
    CHECK_INT(api_ctx_limits(&ctx, m, &cfg, msg, sizeof(msg)), FX_EDEVICE);
    CHECK(strstr(msg, "does not fit device_memory") != NULL);
    CHECK(strstr(msg, "--weights") != NULL);
    /* ... unless the default is smaller: then it starts with a lower bound */
    cfg.default_width = cfg.default_height = 512;
    CHECK_INT(api_ctx_limits(&ctx, m, &cfg, msg, sizeof(msg)), 0);
    CHECK(ctx.limits.max_size >= 512 && ctx.limits.max_size < 1024);
    manifest_free(m);
}

/* The tiny model from make tiny-model: its manifest loads and plans. */
static void test_tiny(const char *model)
{
    struct fx_manifest *m = NULL;
    struct fx_plan pl;
    char msg[512];
    if (model == NULL)
        return;
    CHECK_INT(manifest_load(model, &m, msg, sizeof(msg)), 0);
    if (m == NULL)
        return;
    CHECK_INT(plan_compute(m, FX_PLACE_RESIDENT, 256, 256, "cpu", &pl, msg, sizeof(msg)), 0);
    CHECK(pl.weights_device > 0 && pl.activation_peak > 0);
    manifest_free(m);
}

int main(int argc, char **argv)
{
    struct unit_args a = unit_parse_args(argc, argv);
    char path[128];
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    test_manifest_formats();
    test_placements();
    test_activation_formula();
    test_max_size();
    test_auto();
    test_printers();
    test_parse_bytes();
    test_service_limits();
    test_tiny(a.model);
    snprintf(path, sizeof(path), "%s/manifest.json", dir);
    unlink(path);
    rmdir(dir);
    return unit_done();
}
