/* The safetensors reader (core/safetensors.h) and LoRA files against a map (core/lora.h):
 * small files and a small lora_map.json written here by hand, in a temp dir. */
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../core/err.h"
#include "../../core/lora.h"
#include "../../core/safetensors.h"
#include "../../core/sha256.h"
#include "unit.h"

static char dir[64];
static char paths[64][256];
static int n_paths;

/* dir/name, remembered for the clean-up. */
static const char *path_of(const char *name)
{
    static char p[256];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    for (int i = 0; i < n_paths; i++)
        if (strcmp(paths[i], p) == 0)
            return p;
    if (n_paths < 64)
        snprintf(paths[n_paths++], sizeof(paths[0]), "%s", p);
    return p;
}

static void write_bytes(const char *name, const void *data, size_t len)
{
    FILE *f = fopen(path_of(name), "wb");
    if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        perror(name);
        exit(2);
    }
}

/* A safetensors file from a header's JSON text and the data section. */
static void write_raw(const char *name, const char *header, const void *data, size_t len)
{
    size_t h = strlen(header);
    uint8_t *buf = malloc(8 + h + len + 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    if (len)
        memcpy(buf + 8 + h, data, len);
    write_bytes(name, buf, 8 + h + len);
    free(buf);
}

/* One tensor to write: values given as floats, stored as dtype. */
struct tb {
    const char *name;
    const char *dtype; /* F32 F16 BF16 F64 I64 I32 or anything (written as 4-byte zeros) */
    int ndim;
    int64_t shape[3];
    const float *v; /* numel values; NULL: zeros */
};

static size_t item_size(const char *dt)
{
    if (strcmp(dt, "F16") == 0 || strcmp(dt, "BF16") == 0)
        return 2;
    if (strcmp(dt, "F64") == 0 || strcmp(dt, "I64") == 0)
        return 8;
    return 4;
}

/* Float to half for the exactly representable normal values the tests use. */
static uint16_t to_half(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    if ((b & 0x7fffffff) == 0)
        return (uint16_t)(b >> 16);
    if ((b & 0x7f800000) == 0x7f800000)
        return (uint16_t)((b >> 16 & 0x8000) | 0x7c00 | ((b & 0x7fffff) ? 0x200 : 0));
    return (uint16_t)((b >> 16 & 0x8000) | (((b >> 23 & 0xff) - 112) << 10) | (b >> 13 & 0x3ff));
}

static void put(uint8_t *p, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void write_st(const char *name, const struct tb *t, int n, const char *meta)
{
    char header[16384];
    size_t hl = 0, data_len = 0;
    hl += (size_t)snprintf(header + hl, sizeof(header) - hl, "{");
    if (meta)
        hl += (size_t)snprintf(header + hl, sizeof(header) - hl, "\"__metadata__\":%s,", meta);
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        char shape[128] = "";
        for (int d = 0; d < t[i].ndim; d++) {
            numel *= t[i].shape[d];
            snprintf(shape + strlen(shape), sizeof(shape) - strlen(shape), "%s%lld", d ? "," : "",
                     (long long)t[i].shape[d]);
        }
        size_t bytes = (size_t)numel * item_size(t[i].dtype);
        hl += (size_t)snprintf(
            header + hl, sizeof(header) - hl,
            "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%s],\"data_offsets\":[%zu,%zu]}", i ? "," : "",
            t[i].name, t[i].dtype, shape, data_len, data_len + bytes);
        data_len += bytes;
    }
    hl += (size_t)snprintf(header + hl, sizeof(header) - hl, "}");
    while (hl % 8 != 0) /* writers pad the header with spaces */
        header[hl++] = ' ';
    header[hl] = '\0';
    uint8_t *data = calloc(data_len + 1, 1), *p = data;
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++)
            numel *= t[i].shape[d];
        size_t sz = item_size(t[i].dtype);
        for (int64_t k = 0; k < numel; k++, p += sz) {
            float v = t[i].v ? t[i].v[k] : 0.0f;
            uint32_t b;
            memcpy(&b, &v, 4);
            if (strcmp(t[i].dtype, "F32") == 0)
                put(p, b, 4);
            else if (strcmp(t[i].dtype, "BF16") == 0)
                put(p, b >> 16, 2);
            else if (strcmp(t[i].dtype, "F16") == 0)
                put(p, to_half(v), 2);
            else if (strcmp(t[i].dtype, "F64") == 0) {
                double dv = v;
                uint64_t u;
                memcpy(&u, &dv, 8);
                put(p, u, 8);
            } else if (strcmp(t[i].dtype, "I64") == 0)
                put(p, (uint64_t)(int64_t)v, 8);
            else if (strcmp(t[i].dtype, "I32") == 0)
                put(p, (uint32_t)(int32_t)v, 4);
        }
    }
    write_raw(name, header, data, data_len);
    free(data);
}

/* ------------------------------------------------------------------------------------------ */
/* The map: a fused qkv (6 x 4) split three ways, a final layer with swapped halves (4 x 4), a
 * plain layer without diffusers rows (3 x 4), one CLIP and one T5 layer. */

static const char map_json[] =
    "{\"format\": \"fluxcgi-lora-map\", \"version\": 1,\n"
    " \"suffixes\": {\"down\": [\".lora_down.weight\", \".lora_A.weight\"],\n"
    "              \"up\": [\".lora_up.weight\", \".lora_B.weight\"], \"alpha\": [\".alpha\"]},\n"
    " \"parts\": {\n"
    "  \"transformer\": {\"bfl\": [\"diffusion_model.\", \"model.diffusion_model.\"],\n"
    "                  \"diffusers\": [\"transformer.\"], \"kohya\": [\"lora_unet_\"]},\n"
    "  \"clip\": {\"bfl\": [\"text_encoders.clip_l.transformer.\"], \"diffusers\": "
    "[\"text_encoder.\"],\n"
    "           \"kohya\": [\"lora_te1_\", \"lora_te_\"]},\n"
    "  \"t5\": {\"bfl\": [\"text_encoders.t5xxl.transformer.\"], \"diffusers\": "
    "[\"text_encoder_2.\"],\n"
    "         \"kohya\": [\"lora_te2_\"]}},\n"
    " \"layers\": [\n"
    "  {\"part\": \"transformer\", \"layer\": \"double_blocks.0.img_attn.qkv\", \"out\": 6, "
    "\"in\": 4, \"format\": \"bf16\",\n"
    "   \"diffusers\": [{\"name\": \"transformer_blocks.0.attn.to_q\", \"row0\": 0, \"rows\": 2},\n"
    "                 {\"name\": \"transformer_blocks.0.attn.to_k\", \"row0\": 2, \"rows\": 2},\n"
    "                 {\"name\": \"transformer_blocks.0.attn.to_v\", \"row0\": 4, \"rows\": 2}]},\n"
    "  {\"part\": \"transformer\", \"layer\": \"final_layer.adaLN_modulation.1\", \"out\": 4, "
    "\"in\": 4,\n"
    "   \"format\": \"int8\", \"diffusers\": [{\"name\": \"norm_out.linear\", \"row0\": 0, "
    "\"rows\": 4, \"swap\": true}]},\n"
    "  {\"part\": \"transformer\", \"layer\": \"img_in\", \"out\": 3, \"in\": 4, \"format\": "
    "\"fp32\",\n"
    "   \"diffusers\": [{\"name\": \"x_embedder\", \"row0\": 0, \"rows\": 3}]},\n"
    "  {\"part\": \"clip\", \"layer\": \"text_model.encoder.layers.0.self_attn.q_proj\", \"out\": "
    "4, \"in\": 4,\n"
    "   \"format\": \"bf16\", \"diffusers\": [{\"name\": "
    "\"text_model.encoder.layers.0.self_attn.q_proj\", \"row0\": 0, \"rows\": 4}]},\n"
    "  {\"part\": \"t5\", \"layer\": \"encoder.block.0.layer.0.SelfAttention.q\", \"out\": 4, "
    "\"in\": 4,\n"
    "   \"format\": \"int4\", \"diffusers\": [{\"name\": "
    "\"encoder.block.0.layer.0.SelfAttention.q\", \"row0\": 0, \"rows\": 4}]}\n"
    " ]}\n";

static struct fx_lora_map *map;

static int load_map_text(const char *text, struct fx_lora_map **out, char *msg, size_t len)
{
    char sub[128];
    snprintf(sub, sizeof(sub), "%s/m", dir);
    mkdir(sub, 0700);
    write_bytes("m/lora_map.json", text, strlen(text));
    return fx_lora_map_load(sub, out, msg, len);
}

/* ------------------------------------------------------------------------------------------ */
/* The weights: small multiples of 1/8, exact in F16 and BF16. */

static float D[8], U[12], D2[8], U2[8], U2s[8], D3[4], U3[4];
static const float alpha_qkv = 1.0f, alpha_clip = 2.0f;

static void init_weights(void)
{
    for (int i = 0; i < 8; i++) {
        D[i] = (float)((i * 7) % 11 - 5) / 8.0f;
        D2[i] = (float)((i * 5) % 9 - 4) / 4.0f;
        U2[i] = (float)((i * 3) % 7 - 3) / 8.0f;
    }
    for (int i = 0; i < 12; i++)
        U[i] = (float)((i * 5) % 13 - 6) / 8.0f;
    for (int i = 0; i < 4; i++) {
        D3[i] = (float)(i - 2) / 2.0f;
        U3[i] = (float)(3 - i) / 4.0f;
    }
    /* the diffusers up of the final layer: its two row halves traded (rows of 2 values) */
    memcpy(U2s, U2 + 4, 4 * sizeof(float));
    memcpy(U2s + 4, U2, 4 * sizeof(float));
}

#define M2(r, c)                                                                                   \
    2,                                                                                             \
    {                                                                                              \
        r, c, 0                                                                                    \
    }
#define SCALAR                                                                                     \
    0,                                                                                             \
    {                                                                                              \
        0, 0, 0                                                                                    \
    }

static void write_bfl(const char *name, const char *prefix)
{
    char k[8][128];
    snprintf(k[0], 128, "%sdouble_blocks.0.img_attn.qkv.lora_A.weight", prefix);
    snprintf(k[1], 128, "%sdouble_blocks.0.img_attn.qkv.lora_B.weight", prefix);
    snprintf(k[2], 128, "%sdouble_blocks.0.img_attn.qkv.alpha", prefix);
    snprintf(k[3], 128, "%sfinal_layer.adaLN_modulation.1.lora_A.weight", prefix);
    snprintf(k[4], 128, "%sfinal_layer.adaLN_modulation.1.lora_B.weight", prefix);
    struct tb t[] = {
        {k[0], "F32", M2(2, 4), D},
        {k[1], "F32", M2(6, 2), U},
        {k[2], "F32", SCALAR, &alpha_qkv},
        {k[3], "F32", M2(2, 4), D2},
        {k[4], "F32", M2(4, 2), U2},
        {"text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_A."
         "weight",
         "F32", M2(1, 4), D3},
        {"text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_B."
         "weight",
         "F32", M2(4, 1), U3},
        {"text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.alpha",
         "I64", SCALAR, &alpha_clip},
    };
    write_st(name, t, 8, "{\"format\": \"pt\"}");
}

static void write_kohya(const char *name)
{
    struct tb t[] = {
        /* the alpha first: the layout is taken from the first key */
        {"lora_unet_double_blocks_0_img_attn_qkv.alpha", "F16", M2(1, 1), &alpha_qkv},
        {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "BF16", M2(2, 4), D},
        {"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight", "BF16", M2(6, 2), U},
        {"lora_unet_final_layer_adaLN_modulation_1.lora_down.weight", "F16", M2(2, 4), D2},
        {"lora_unet_final_layer_adaLN_modulation_1.lora_up.weight", "F16", M2(4, 2), U2},
        {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", "BF16", M2(1, 4),
         D3},
        {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", "BF16", M2(4, 1),
         U3},
        {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha", "F64", SCALAR, &alpha_clip},
    };
    write_st(name, t, 8, NULL);
}

static void write_diffusers(const char *name)
{
    struct tb t[] = {
        {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight", "F16", M2(2, 4), D},
        {"transformer.transformer_blocks.0.attn.to_q.lora_B.weight", "F16", M2(2, 2), U},
        {"transformer.transformer_blocks.0.attn.to_q.alpha", "F32", SCALAR, &alpha_qkv},
        {"transformer.transformer_blocks.0.attn.to_k.lora_A.weight", "F16", M2(2, 4), D},
        {"transformer.transformer_blocks.0.attn.to_k.lora_B.weight", "F16", M2(2, 2), U + 4},
        {"transformer.transformer_blocks.0.attn.to_k.alpha", "F32", SCALAR, &alpha_qkv},
        {"transformer.transformer_blocks.0.attn.to_v.lora_A.weight", "F16", M2(2, 4), D},
        {"transformer.transformer_blocks.0.attn.to_v.lora_B.weight", "F16", M2(2, 2), U + 8},
        {"transformer.transformer_blocks.0.attn.to_v.alpha", "F32", SCALAR, &alpha_qkv},
        {"transformer.norm_out.linear.lora_A.weight", "F32", M2(2, 4), D2},
        {"transformer.norm_out.linear.lora_B.weight", "F32", M2(4, 2), U2s},
        {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", "BF16",
         M2(1, 4), D3},
        {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight", "BF16",
         M2(4, 1), U3},
        {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.alpha", "I32", SCALAR,
         &alpha_clip},
    };
    write_st(name, t, 14, NULL);
}

/* The dense delta of one layer from a read file (what the shim computes), scale 1. */
static bool layer_delta(const struct fx_lora_file *f, const char *layer, float *w, int64_t out,
                        int64_t in)
{
    bool any = false;
    memset(w, 0, (size_t)(out * in) * sizeof(float));
    for (size_t i = 0; i < fx_lora_file_count(f); i++) {
        const struct fx_lora_entry *e = fx_lora_file_entry(f, i);
        if (strcmp(e->layer, layer) != 0)
            continue;
        any = true;
        for (int64_t r = 0; r < e->rows; r++) {
            int64_t src = e->swap ? (r + e->rows / 2) % e->rows : r;
            for (int64_t c = 0; c < in; c++) {
                float s = 0;
                for (int64_t k = 0; k < e->rank; k++)
                    s += e->up[src * e->rank + k] * e->down[k * in + c];
                w[(e->row0 + r) * in + c] += e->factor * s;
            }
        }
    }
    return any;
}

static struct fx_lora_file *read_ok(const char *name)
{
    struct fx_lora_file *f = NULL;
    char msg[512] = "";
    int rc = fx_lora_read(map, path_of(name), &f, msg, sizeof(msg));
    CHECK_INT(rc, 0);
    if (rc != 0)
        fprintf(stderr, "  %s: %s\n", name, msg);
    return f;
}

static void test_layouts(void)
{
    write_bfl("bfl.safetensors", "diffusion_model.");
    write_bfl("bfl2.safetensors", "model.diffusion_model.");
    write_kohya("kohya.safetensors");
    write_diffusers("diffusers.safetensors");
    struct fx_lora_file *b = read_ok("bfl.safetensors"), *b2 = read_ok("bfl2.safetensors"),
                        *k = read_ok("kohya.safetensors"), *d = read_ok("diffusers.safetensors");
    if (!b || !b2 || !k || !d)
        goto out;

    /* bfl: one entry per layer, in the map's order */
    CHECK_INT(fx_lora_file_count(b), 3);
    const struct fx_lora_entry *e = fx_lora_file_entry(b, 0);
    CHECK_STR(e->layer, "double_blocks.0.img_attn.qkv");
    CHECK_INT(e->part, FX_LORA_TRANSFORMER);
    CHECK_INT(e->out, 6);
    CHECK_INT(e->in, 4);
    CHECK_INT(e->row0, 0);
    CHECK_INT(e->rows, 6);
    CHECK_INT(e->rank, 2);
    CHECK(!e->swap);
    CHECK(e->factor == 0.5f);
    CHECK(memcmp(e->down, D, sizeof(D)) == 0 && memcmp(e->up, U, sizeof(U)) == 0);
    e = fx_lora_file_entry(b, 1);
    CHECK_STR(e->layer, "final_layer.adaLN_modulation.1");
    CHECK(e->factor == 1.0f && !e->swap && e->rows == 4);
    e = fx_lora_file_entry(b, 2);
    CHECK_STR(e->layer, "text_model.encoder.layers.0.self_attn.q_proj");
    CHECK_INT(e->part, FX_LORA_CLIP);
    CHECK_INT(e->rank, 1);
    CHECK(e->factor == 2.0f);
    CHECK(fx_lora_file_entry(b, 3) == NULL);
    const struct fx_lora_info *info = fx_lora_file_info(b);
    CHECK_STR(info->layout, "bfl");
    CHECK_INT(info->layers, 3);
    CHECK_INT(info->rank_min, 1);
    CHECK_INT(info->rank_max, 2);
    CHECK(info->text_encoders);
    CHECK_INT(info->params, 2 * (4 + 6) + 2 * (4 + 4) + 1 * (4 + 4));
    CHECK_STR(fx_lora_file_info(k)->layout, "kohya");
    CHECK_STR(fx_lora_file_info(d)->layout, "diffusers");
    CHECK_INT(fx_lora_file_info(d)->params, fx_lora_file_info(b)->params + 2 * 4 * 2);

    /* diffusers: the qkv in three row ranges, the final layer swapped */
    CHECK_INT(fx_lora_file_count(d), 5);
    for (int i = 0; i < 3; i++) {
        e = fx_lora_file_entry(d, (size_t)i);
        CHECK_STR(e->layer, "double_blocks.0.img_attn.qkv");
        CHECK_INT(e->row0, 2 * i);
        CHECK_INT(e->rows, 2);
        CHECK_INT(e->out, 6);
        CHECK(e->factor == 0.5f);
    }
    e = fx_lora_file_entry(d, 3);
    CHECK(e->swap && e->row0 == 0 && e->rows == 4);

    /* every layout gives the same deltas */
    static const struct {
        const char *layer;
        int64_t out;
    } layers[] = {{"double_blocks.0.img_attn.qkv", 6},
                  {"final_layer.adaLN_modulation.1", 4},
                  {"text_model.encoder.layers.0.self_attn.q_proj", 4}};
    for (size_t l = 0; l < 3; l++) {
        float wb[24], w[24];
        CHECK(layer_delta(b, layers[l].layer, wb, layers[l].out, 4));
        const struct fx_lora_file *others[] = {b2, k, d};
        for (int o = 0; o < 3; o++) {
            CHECK(layer_delta(others[o], layers[l].layer, w, layers[l].out, 4));
            if (memcmp(w, wb, (size_t)layers[l].out * 4 * sizeof(float)) != 0) {
                unit_failed++;
                fprintf(stderr, "FAIL layout %d: delta of '%s' differs from bfl's\n", o,
                        layers[l].layer);
            }
        }
        /* and is not zero (the test would pass on nothing otherwise) */
        float sum = 0;
        for (int i = 0; i < layers[l].out * 4; i++)
            sum += fabsf(wb[i]);
        CHECK(sum > 0);
    }

    /* the sha256 is of the file's bytes */
    FILE *fp = fopen(path_of("kohya.safetensors"), "rb");
    static char buf[65536];
    size_t n = fp ? fread(buf, 1, sizeof(buf), fp) : 0;
    if (fp)
        fclose(fp);
    char hex[65];
    sha256_hex(buf, n, hex);
    CHECK_STR(fx_lora_file_sha256(k), hex);
    CHECK(strcmp(fx_lora_file_sha256(k), fx_lora_file_sha256(b)) != 0);

    /* check agrees with read */
    struct fx_lora_info ci;
    char msg[256];
    CHECK_INT(fx_lora_check(map, path_of("diffusers.safetensors"), &ci, msg, sizeof(msg)), 0);
    CHECK_INT(ci.layers, 5);
    CHECK_INT(ci.params, fx_lora_file_info(d)->params);
    CHECK_INT(fx_lora_check(map, path_of("bfl.safetensors"), NULL, msg, sizeof(msg)), 0);
out:
    fx_lora_file_free(b);
    fx_lora_file_free(b2);
    fx_lora_file_free(k);
    fx_lora_file_free(d);
}

/* A file mixing layouts, the T5 kohya prefix, a layer without alpha next to one with. */
static void test_mixed(void)
{
    struct tb t[] = {
        {"lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight", "F32", M2(2, 4), D},
        {"lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight", "F32", M2(4, 2), U2},
        {"transformer.x_embedder.lora_A.weight", "F32", M2(1, 4), D3},
        {"transformer.x_embedder.lora_B.weight", "F32", M2(3, 1), U3},
        {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", "F32", M2(2, 4),
         D},
        {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", "F32", M2(4, 2),
         U},
    };
    write_st("mixed.safetensors", t, 6, "{}");
    struct fx_lora_file *f = read_ok("mixed.safetensors");
    if (f == NULL)
        return;
    CHECK_STR(fx_lora_file_info(f)->layout, "kohya");
    CHECK_INT(fx_lora_file_count(f), 3);
    /* map order: img_in, clip, t5 */
    CHECK_STR(fx_lora_file_entry(f, 0)->layer, "img_in");
    CHECK_INT(fx_lora_file_entry(f, 0)->rows, 3);
    CHECK_INT(fx_lora_file_entry(f, 1)->part, FX_LORA_CLIP);
    CHECK_INT(fx_lora_file_entry(f, 2)->part, FX_LORA_T5);
    CHECK_STR(fx_lora_file_entry(f, 2)->layer, "encoder.block.0.layer.0.SelfAttention.q");
    CHECK(fx_lora_file_entry(f, 2)->factor == 1.0f);
    fx_lora_file_free(f);
}

/* ------------------------------------------------------------------------------------------ */
/* The safetensors reader by itself */

static void test_st_read(void)
{
    /* F16: 1, -2, the smallest subnormal, the largest normal, -0, infinity, NaN */
    uint16_t h[7] = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x8000, 0x7c00, 0x7e00};
    write_raw("f16.safetensors",
              "{\"h\":{\"dtype\":\"F16\",\"shape\":[7],\"data_offsets\":[0,14]},"
              "\"__metadata__\":{\"k\":\"v\"}}",
              h, sizeof(h));
    struct fx_st_file *st = NULL;
    char msg[256] = "";
    CHECK_INT(fx_st_open(path_of("f16.safetensors"), &st, msg, sizeof(msg)), 0);
    if (st == NULL)
        return;
    float v[7];
    CHECK_INT(fx_st_count(st), 1);
    CHECK_STR(fx_st_name(st, 0), "h");
    CHECK_INT(fx_st_dtype(st, 0), FX_ST_F16);
    CHECK_INT(fx_st_ndim(st, 0), 1);
    CHECK_INT(fx_st_shape(st, 0)[0], 7);
    CHECK_INT(fx_st_find(st, "h"), 0);
    CHECK_INT(fx_st_find(st, "x"), -1);
    CHECK_STR(fx_st_metadata(st, "k"), "v");
    CHECK(fx_st_metadata(st, "x") == NULL);
    CHECK_STR(fx_st_file_name(st), "f16.safetensors");
    CHECK_INT(fx_st_read_f32(st, 0, v, 6, msg, sizeof(msg)), FX_EINVAL);
    CHECK_INT(fx_st_read_f32(st, 0, v, 7, msg, sizeof(msg)), 0);
    CHECK(v[0] == 1.0f && v[1] == -2.0f && v[2] == ldexpf(1.0f, -24) && v[3] == 65504.0f);
    CHECK(v[4] == 0.0f && signbit(v[4]) && isinf(v[5]) && v[5] > 0 && isnan(v[6]));
    CHECK_INT(fx_st_first_nonfinite(v, 5), -1);
    CHECK_INT(fx_st_first_nonfinite(v, 7), 5);
    fx_st_close(st);

    /* BOOL is known but not a number; a zero-sized tensor and a scalar are fine */
    uint8_t b[5] = {1, 0, 0, 0, 0};
    write_raw("bool.safetensors",
              "{\"b\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]},"
              "\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[1,1]},"
              "\"s\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[1,5]}}",
              b, 5);
    CHECK_INT(fx_st_open(path_of("bool.safetensors"), &st, msg, sizeof(msg)), 0);
    if (st == NULL)
        return;
    CHECK_INT(fx_st_read_f32(st, 0, v, 1, msg, sizeof(msg)), FX_ENOTSUP);
    CHECK(strstr(msg, "'b'") != NULL);
    CHECK_INT(fx_st_numel(st, 1), 0);
    CHECK_INT(fx_st_read_f32(st, 1, v, 0, msg, sizeof(msg)), 0);
    CHECK_INT(fx_st_numel(st, 2), 1);
    CHECK_INT(fx_st_read_f32(st, 2, v, 1, msg, sizeof(msg)), 0);
    CHECK(v[0] == 0.0f);
    fx_st_close(st);
}

/* fx_st_open refuses the file with code, its message containing want. */
static void st_bad(const char *name, int code, const char *want)
{
    struct fx_st_file *st = NULL;
    char msg[512] = "";
    int rc = fx_st_open(path_of(name), &st, msg, sizeof(msg));
    CHECK_INT(rc, code);
    CHECK(st == NULL);
    if (strstr(msg, want) == NULL) {
        unit_failed++;
        fprintf(stderr, "FAIL %s: message '%s' lacks '%s'\n", name, msg, want);
    } else {
        unit_passed++;
    }
    fx_st_close(st);
}

static void test_st_errors(void)
{
    /* truncated at several points */
    write_kohya("full.safetensors");
    FILE *fp = fopen(path_of("full.safetensors"), "rb");
    static uint8_t buf[65536];
    size_t n = fp ? fread(buf, 1, sizeof(buf), fp) : 0;
    if (fp)
        fclose(fp);
    size_t hlen = buf[0] | (size_t)buf[1] << 8;
    size_t cuts[] = {0, 4, 7, 8, 9, 8 + hlen / 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1, n - 1};
    const char *why[] = {"shorter than the 8-byte",
                         "shorter than the 8-byte",
                         "shorter than the 8-byte",
                         "does not fit",
                         "does not fit",
                         "does not fit",
                         "does not fit",
                         "outside the data section",
                         "outside the data section",
                         "outside the data section"};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        write_bytes("cut.safetensors", buf, cuts[i]);
        st_bad("cut.safetensors", FX_EFORMAT, why[i]);
        char msg[256] = "";
        CHECK_INT(fx_lora_check(map, path_of("cut.safetensors"), NULL, msg, sizeof(msg)),
                  FX_EFORMAT);
        CHECK(strstr(msg, "'cut.safetensors'") != NULL);
    }
    /* a header length past the end, and one past the limit */
    uint8_t big[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    write_bytes("hlen.safetensors", big, 10);
    st_bad("hlen.safetensors", FX_EFORMAT, "past the end of the file");
    big[0] = 0x20, big[1] = 0, big[2] = 0, big[3] = 0, big[4] = 0, big[5] = 0, big[6] = 0;
    big[7] = 0;
    write_bytes("hlen.safetensors", big, 10);
    st_bad("hlen.safetensors", FX_EFORMAT, "does not fit");
    CHECK_INT(fx_st_open(path_of("nonexistent.safetensors"), &(struct fx_st_file *){NULL}, NULL, 0),
              FX_ENOENT);
    CHECK_INT(fx_st_open(dir, &(struct fx_st_file *){NULL}, NULL, 0), FX_EIO);
    /* a FIFO without a writer: refused at once, not waited on */
    CHECK_INT(mkfifo(path_of("fifo.safetensors"), 0600), 0);
    st_bad("fifo.safetensors", FX_EIO, "not a regular file");

    static const float z[16];
    static const struct {
        const char *header;
        size_t data;
        const char *want;
    } bad[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "not JSON"},
        {"[1, 2]", 0, "not a JSON object"},
        {"{} x", 0, "text after"},
        {"{\"a\":1}", 0, "not an object with dtype"},
        {"{\"a\":{\"dtype\":\"F12\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "dimension 0"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, "dimension 0"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
         "overflows"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         "at most 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8,
         "outside the data section"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "reversed"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, "4 bytes of data"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "[begin, end]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8,
         "unknown fields"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "gap of 4 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "4 bytes after"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "gap of 4 bytes"}, /* json-c keeps the last "a": the first one's bytes are left */
        {"{\"__metadata__\":{\"k\":1}}", 0, "not a string"},
        {"{\"__metadata__\":[]}", 0, "not an object"},
        {"{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "empty"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", 4, "not JSON"},
        {"{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "not JSON"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_raw("bad.safetensors", bad[i].header, z, bad[i].data);
        st_bad("bad.safetensors", FX_EFORMAT, bad[i].want);
    }
    /* a NUL inside the header */
    write_bytes("nul.safetensors", "\x04\0\0\0\0\0\0\0{}\0 ", 12);
    st_bad("nul.safetensors", FX_EFORMAT, "NUL");
}

/* ------------------------------------------------------------------------------------------ */
/* LoRA files refused */

/* fx_lora_check (and fx_lora_read) refuse name with code, the message containing want. */
static void lora_bad(const char *name, int code, const char *want, bool header_ok)
{
    char msg[512] = "";
    struct fx_lora_info info;
    int rc = fx_lora_check(map, path_of(name), &info, msg, sizeof(msg));
    CHECK_INT(rc, header_ok ? 0 : code);
    if (!header_ok && strstr(msg, want) == NULL) {
        unit_failed++;
        fprintf(stderr, "FAIL check %s: message '%s' lacks '%s'\n", name, msg, want);
    }
    struct fx_lora_file *f = (struct fx_lora_file *)1;
    msg[0] = '\0';
    rc = fx_lora_read(map, path_of(name), &f, msg, sizeof(msg));
    CHECK_INT(rc, code);
    CHECK(f == NULL);
    if (strstr(msg, want) == NULL || strstr(msg, name) == NULL) {
        unit_failed++;
        fprintf(stderr, "FAIL read %s: message '%s' lacks '%s' or the file name\n", name, msg,
                want);
    } else {
        unit_passed++;
    }
}

#define QKV "diffusion_model.double_blocks.0.img_attn.qkv"
#define FIN "diffusion_model.final_layer.adaLN_modulation.1"

static void test_lora_errors(void)
{
    static const float nan_d[8] = {0, 0, 0, NAN, 0, 0, 0, 0};
    static const float inf_u[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -INFINITY};
    static const float two[2] = {1, 2};
    struct {
        const char *name, *want;
        int code;
        bool header_ok;
        struct tb t[4];
        int n;
    } cases[] = {
        {"unknown",
         "unknown keys 'diffusion_model.double_blocks.9.img_attn.qkv.lora_A.weight', "
         "'lora_unet_nope.alpha'",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", M2(2, 4), D},
          {QKV ".lora_B.weight", "F32", M2(6, 2), U},
          {"diffusion_model.double_blocks.9.img_attn.qkv.lora_A.weight", "F32", M2(2, 4), D},
          {"lora_unet_nope.alpha", "F32", SCALAR, D}},
         4},
        {"suffix",
         "unknown key '" QKV ".lora_A.bias'",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", M2(2, 4), D},
          {QKV ".lora_B.weight", "F32", M2(6, 2), U},
          {QKV ".lora_A.bias", "F32", M2(1, 2), D}},
         3},
        {"noup",
         "'" QKV ".lora_A.weight' has no matching up matrix",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", M2(2, 4), D}, {QKV ".alpha", "F32", SCALAR, D}},
         2},
        {"alphaonly",
         "'" QKV ".alpha' has no matching down matrix",
         FX_EFORMAT,
         false,
         {{QKV ".alpha", "F32", SCALAR, D}},
         1},
        {"rank",
         "ranks differ",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", M2(2, 4), D}, {QKV ".lora_B.weight", "F32", M2(4, 3), U}},
         2},
        {"in",
         "takes 4 inputs",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", M2(2, 3), D}, {QKV ".lora_B.weight", "F32", M2(6, 2), U}},
         2},
        {"out",
         "want 6 x 2",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", M2(2, 4), D}, {QKV ".lora_B.weight", "F32", M2(4, 2), U}},
         2},
        {"ndim",
         "3 dimensions",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", 3, {2, 4, 1}, D},
          {QKV ".lora_B.weight", "F32", M2(6, 2), U}},
         2},
        {"dtype",
         "is I32; LoRA matrices must be F32, F16 or BF16",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "I32", M2(2, 4), D}, {QKV ".lora_B.weight", "F32", M2(6, 2), U}},
         2},
        {"alpha2",
         "'" QKV ".alpha' is not one number (2 elements",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", M2(2, 4), D},
          {QKV ".lora_B.weight", "F32", M2(6, 2), U},
          {QKV ".alpha", "F32", 1, {2, 0, 0}, two}},
         3},
        {"alphanan",
         "'" QKV ".alpha' is not finite",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", M2(2, 4), D},
          {QKV ".lora_B.weight", "F32", M2(6, 2), U},
          {QKV ".alpha", "F32", SCALAR, nan_d + 3}},
         3},
        {"nan",
         "'" QKV ".lora_A.weight' holds NaN at index 3",
         FX_EFORMAT,
         true,
         {{QKV ".lora_A.weight", "F32", M2(2, 4), nan_d},
          {QKV ".lora_B.weight", "F32", M2(6, 2), U}},
         2},
        {"inf",
         "'" QKV ".lora_B.weight' holds an infinity at index 11",
         FX_EFORMAT,
         true,
         {{QKV ".lora_A.weight", "F16", M2(2, 4), D},
          {QKV ".lora_B.weight", "F16", M2(6, 2), inf_u}},
         2},
        {"tworows",
         "both adapt rows of layer 'double_blocks.0.img_attn.qkv'",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", M2(2, 4), D},
          {QKV ".lora_B.weight", "F32", M2(6, 2), U},
          {"transformer.transformer_blocks.0.attn.to_k.lora_A.weight", "F32", M2(2, 4), D},
          {"transformer.transformer_blocks.0.attn.to_k.lora_B.weight", "F32", M2(2, 2), U}},
         4},
        {"twolayouts",
         "are both the down matrix of layer 'double_blocks.0.img_attn.qkv'",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", M2(2, 4), D},
          {QKV ".lora_B.weight", "F32", M2(6, 2), U},
          {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "F32", M2(2, 4), D}},
         3},
        {"twosuffixes",
         "are both the up matrix",
         FX_EFORMAT,
         false,
         {{QKV ".lora_A.weight", "F32", M2(2, 4), D},
          {QKV ".lora_B.weight", "F32", M2(6, 2), U},
          {QKV ".lora_up.weight", "F32", M2(6, 2), U}},
         3},
        {"rank0",
         "rank 0 not in 1..4096",
         FX_EFORMAT,
         false,
         {{FIN ".lora_A.weight", "F32", M2(0, 4), D}, {FIN ".lora_B.weight", "F32", M2(4, 0), D}},
         2},
        {"empty", "holds no LoRA weights", FX_EFORMAT, false, {{0}}, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char name[64];
        snprintf(name, sizeof(name), "%s.safetensors", cases[i].name);
        write_st(name, cases[i].t, cases[i].n, NULL);
        lora_bad(name, cases[i].code, cases[i].want, cases[i].header_ok);
    }
    /* more than three unknown keys: three named, the rest counted */
    struct tb many[5] = {{"a", "F32", M2(1, 1), D},
                         {"b", "F32", M2(1, 1), D},
                         {"c", "F32", M2(1, 1), D},
                         {"d", "F32", M2(1, 1), D},
                         {"e", "F32", M2(1, 1), D}};
    write_st("many.safetensors", many, 5, NULL);
    lora_bad("many.safetensors", FX_EFORMAT, "unknown keys 'a', 'b', 'c' and 2 more", false);
    /* no file */
    char msg[256] = "";
    CHECK_INT(fx_lora_check(map, path_of("absent.safetensors"), NULL, msg, sizeof(msg)), FX_ENOENT);
    CHECK(strstr(msg, "absent.safetensors") != NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* lora_map.json refused */

static void map_bad(const char *text, const char *want)
{
    struct fx_lora_map *m = (struct fx_lora_map *)1;
    char msg[512] = "";
    CHECK_INT(load_map_text(text, &m, msg, sizeof(msg)), FX_EFORMAT);
    CHECK(m == NULL);
    if (strstr(msg, want) == NULL) {
        unit_failed++;
        fprintf(stderr, "FAIL map: message '%s' lacks '%s'\n", msg, want);
    } else {
        unit_passed++;
    }
}

/* map_json with the first occurrence of from replaced by to. */
static void map_bad_edit(const char *from, const char *to, const char *want)
{
    static char text[sizeof(map_json) + 256];
    const char *at = strstr(map_json, from);
    if (at == NULL) {
        unit_failed++;
        fprintf(stderr, "FAIL map edit: '%s' not in the map\n", from);
        return;
    }
    snprintf(text, sizeof(text), "%.*s%s%s", (int)(at - map_json), map_json, to, at + strlen(from));
    map_bad(text, want);
}

static void test_map(void)
{
    struct fx_lora_map *m = (struct fx_lora_map *)1;
    char msg[512] = "";
    char empty[128];
    snprintf(empty, sizeof(empty), "%s/nomap", dir);
    mkdir(empty, 0700);
    CHECK_INT(fx_lora_map_load(empty, &m, msg, sizeof(msg)), FX_ENOTSUP);
    CHECK(m == NULL);
    CHECK(strstr(msg, "re-export") != NULL && strstr(msg, "lora_map.json") != NULL);
    rmdir(empty);

    map_bad("{\"format\": \"fluxcgi-lora-map\", ", "not valid JSON");
    map_bad("{\"format\": \"fluxcgi-lora-map\"} {}", "not valid JSON");
    map_bad("[]", "not a JSON object");
    map_bad_edit("\"fluxcgi-lora-map\"", "\"other\"", "'format'");
    map_bad_edit("\"version\": 1", "\"version\": 2", "'version' is not 1");
    map_bad_edit("\"up\": [\".lora_up.weight\", \".lora_B.weight\"]", "\"up\": []",
                 "'suffixes.up'");
    map_bad_edit("\"alpha\": [\".alpha\"]", "\"alpha\": [\"\"]", "'suffixes.alpha'[0]");
    map_bad_edit("\"kohya\": [\"lora_te2_\"]", "\"kohya\": \"lora_te2_\"", "'parts.t5.kohya'");
    map_bad_edit("\"t5\": {", "\"t6\": {", "unknown part 'parts.t6'");
    map_bad_edit("\"part\": \"clip\"", "\"part\": \"vae\"", "layers[3].part");
    map_bad_edit("\"layer\": \"img_in\"", "\"layer\": \"img in\"", "layers[2].layer");
    map_bad_edit("\"out\": 3", "\"out\": 0", "layers[2] ('img_in'): out and in");
    map_bad_edit("\"out\": 3", "\"out\": 3.5", "layers[2] ('img_in'): out and in");
    map_bad_edit("\"format\": \"fp32\"", "\"format\": \"fp16\"", "layers[2] ('img_in'): format");
    map_bad_edit("\"row0\": 4, \"rows\": 2", "\"row0\": 5, \"rows\": 2",
                 "layers[0].diffusers[2]: row0/rows");
    map_bad_edit("\"row0\": 2, \"rows\": 2", "\"row0\": 1, \"rows\": 2",
                 "layers[0].diffusers[1] overlaps the rows of diffusers[0]");
    map_bad_edit("\"diffusers\": [{\"name\": \"x_embedder\", \"row0\": 0, \"rows\": 3}]",
                 "\"diffusers\": {}", "layers[2].diffusers is not an array");
    map_bad_edit("\"rows\": 4, \"swap\": true", "\"rows\": 4, \"swap\": 1",
                 "layers[1].diffusers[0].swap");
    map_bad_edit("\"rows\": 3}", "\"rows\": 3, \"swap\": true}", "swap needs an even row count");
    map_bad_edit("\"name\": \"x_embedder\"", "\"name\": \"norm_out.linear\"",
                 "share the diffusers key name 'norm_out.linear'");
}

/* A second map where kohya names of two layers collide ("a.b_c" and "a_b.c"). */
static void test_map_kohya_collision(void)
{
    static const char text[] =
        "{\"format\": \"fluxcgi-lora-map\", \"version\": 1,"
        " \"suffixes\": {\"down\": [\".d\"], \"up\": [\".u\"], \"alpha\": []},"
        " \"parts\": {\"transformer\": {\"bfl\": [\"\"], \"diffusers\": [], \"kohya\": [\"k_\"]}},"
        " \"layers\": [{\"part\": \"transformer\", \"layer\": \"a.b_c\", \"out\": 1, \"in\": 1, "
        "\"format\": \"fp32\", \"diffusers\": []},"
        " {\"part\": \"transformer\", \"layer\": \"a_b.c\", \"out\": 1, \"in\": 1, "
        "\"format\": \"fp32\"}]}"; /* no diffusers names: none */
    map_bad(text, "layers 'a.b_c' and 'a_b.c' share the kohya key name 'a_b_c'");
}

/* Sizes over the bounds, in sparse files (only their headers are read). */
static void test_too_big(void)
{
    static const char text[] =
        "{\"format\": \"fluxcgi-lora-map\", \"version\": 1,"
        " \"suffixes\": {\"down\": [\".d\"], \"up\": [\".u\"], \"alpha\": []},"
        " \"parts\": {\"transformer\": {\"bfl\": [\"\"], \"diffusers\": [], \"kohya\": []}},"
        " \"layers\": [{\"part\": \"transformer\", \"layer\": \"big\", \"out\": 1048576, "
        "\"in\": 1048576, \"format\": \"fp32\", \"diffusers\": []}]}";
    struct fx_lora_map *m = NULL;
    char msg[512] = "";
    CHECK_INT(load_map_text(text, &m, msg, sizeof(msg)), 0);
    if (m == NULL)
        return;
    /* rank 1100: 1100 x 2^21 elements, over FX_LORA_PARAMS_MAX; 4.6 GB of F16 (sparse) */
    const int64_t rank = 1100, dim = 1048576, bytes = rank * dim * 2;
    char header[512];
    snprintf(header, sizeof(header),
             "{\"big.d\":{\"dtype\":\"F16\",\"shape\":[%lld,%lld],\"data_offsets\":[0,%lld]},"
             "\"big.u\":{\"dtype\":\"F16\",\"shape\":[%lld,%lld],\"data_offsets\":[%lld,%lld]}}",
             (long long)rank, (long long)dim, (long long)bytes, (long long)dim, (long long)rank,
             (long long)bytes, (long long)(2 * bytes));
    write_raw("huge.safetensors", header, NULL, 0);
    const char *p = path_of("huge.safetensors");
    CHECK_INT(truncate(p, (off_t)(8 + strlen(header)) + (off_t)(2 * bytes)), 0);
    CHECK_INT(fx_lora_check(m, p, NULL, msg, sizeof(msg)), FX_ETOOBIG);
    CHECK(strstr(msg, "more than 2147483648 LoRA parameters") != NULL);
    fx_lora_map_free(m);

    /* a header length over FX_ST_HEADER_MAX in a file that long */
    uint8_t len8[8] = {0x01, 0x00, 0x40, 0x06, 0, 0, 0, 0}; /* 100 MiB + 1 */
    write_bytes("hdrbig.safetensors", len8, 8);
    p = path_of("hdrbig.safetensors");
    CHECK_INT(truncate(p, (off_t)FX_ST_HEADER_MAX + 64), 0);
    st_bad("hdrbig.safetensors", FX_ETOOBIG, "over the 104857600-byte limit");
    CHECK_INT(truncate(p, 0), 0);
}

static void cleanup(void)
{
    for (int i = 0; i < n_paths; i++)
        unlink(paths[i]);
    char sub[128];
    snprintf(sub, sizeof(sub), "%s/m", dir);
    rmdir(sub);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    (void)unit_parse_args(argc, argv);
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/test_lora.XXXXXX", tmp && strlen(tmp) < 40 ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    init_weights();
    char msg[512] = "";
    int rc = load_map_text(map_json, &map, msg, sizeof(msg));
    CHECK_INT(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "map: %s\n", msg);
        cleanup();
        return unit_done();
    }
    test_layouts();
    test_mixed();
    test_st_read();
    test_st_errors();
    test_lora_errors();
    test_map();
    test_map_kohya_collision();
    test_too_big();
    fx_lora_map_free(map);
    cleanup();
    return unit_done();
}
