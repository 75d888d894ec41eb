/*
 * fuzz_lora.c - libFuzzer target for the safetensors reader (core/safetensors.c) and the LoRA
 * checks on top of it (core/lora.c): the input is a whole safetensors file.  It is written to
 * a memfd and opened by its /proc/self/fd path, so the real pread paths run.  The LoRA map is
 * a small one written at start to a temp dir (the layers of tests/unit/test_lora.c).
 *
 * Checked beyond memory safety: results are 0 or a documented code with a message; an opened
 * file's tensors tile its data section; check and read agree; a read file's entries lie inside
 * their layers and hold finite values only.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../core/err.h"
#include "../../core/lora.h"
#include "../../core/safetensors.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char map_json[] =
    "{\"format\": \"fluxcgi-lora-map\", \"version\": 1,"
    " \"suffixes\": {\"down\": [\".lora_down.weight\", \".lora_A.weight\"],"
    "  \"up\": [\".lora_up.weight\", \".lora_B.weight\"], \"alpha\": [\".alpha\"]},"
    " \"parts\": {"
    "  \"transformer\": {\"bfl\": [\"diffusion_model.\", \"model.diffusion_model.\"],"
    "   \"diffusers\": [\"transformer.\"], \"kohya\": [\"lora_unet_\"]},"
    "  \"clip\": {\"bfl\": [\"text_encoders.clip_l.transformer.\"], \"diffusers\": "
    "[\"text_encoder.\"], \"kohya\": [\"lora_te1_\", \"lora_te_\"]},"
    "  \"t5\": {\"bfl\": [\"text_encoders.t5xxl.transformer.\"], \"diffusers\": "
    "[\"text_encoder_2.\"], \"kohya\": [\"lora_te2_\"]}},"
    " \"layers\": ["
    "  {\"part\": \"transformer\", \"layer\": \"double_blocks.0.img_attn.qkv\", \"out\": 6, "
    "\"in\": 4, \"format\": \"bf16\","
    "   \"diffusers\": [{\"name\": \"transformer_blocks.0.attn.to_q\", \"row0\": 0, \"rows\": 2},"
    "    {\"name\": \"transformer_blocks.0.attn.to_k\", \"row0\": 2, \"rows\": 2},"
    "    {\"name\": \"transformer_blocks.0.attn.to_v\", \"row0\": 4, \"rows\": 2}]},"
    "  {\"part\": \"transformer\", \"layer\": \"final_layer.adaLN_modulation.1\", \"out\": 4, "
    "\"in\": 4, \"format\": \"int8\","
    "   \"diffusers\": [{\"name\": \"norm_out.linear\", \"row0\": 0, \"rows\": 4, \"swap\": "
    "true}]},"
    "  {\"part\": \"clip\", \"layer\": \"text_model.encoder.layers.0.self_attn.q_proj\", "
    "\"out\": 4, \"in\": 4, \"format\": \"bf16\", \"diffusers\": [{\"name\": "
    "\"text_model.encoder.layers.0.self_attn.q_proj\", \"row0\": 0, \"rows\": 4}]},"
    "  {\"part\": \"t5\", \"layer\": \"encoder.block.0.layer.0.SelfAttention.q\", \"out\": 4, "
    "\"in\": 4, \"format\": \"int4\", \"diffusers\": [{\"name\": "
    "\"encoder.block.0.layer.0.SelfAttention.q\", \"row0\": 0, \"rows\": 4}]}]}";

static struct fx_lora_map *map;
static int mfd = -1;
static char path[64];

static void fail(const char *why, const char *msg)
{
    fprintf(stderr, "fuzz_lora: %s (%s)\n", why, msg);
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[] = "/tmp/fuzz_lora.XXXXXX", file[64], msg[512] = "";
    (void)argc;
    (void)argv;
    if (mkdtemp(dir) == NULL) {
        perror("fuzz_lora: mkdtemp");
        exit(1);
    }
    snprintf(file, sizeof(file), "%s/lora_map.json", dir);
    FILE *f = fopen(file, "w");
    if (f == NULL || fputs(map_json, f) < 0 || fclose(f) != 0) {
        perror("fuzz_lora: lora_map.json");
        exit(1);
    }
    int rc = fx_lora_map_load(dir, &map, msg, sizeof(msg));
    unlink(file);
    rmdir(dir);
    if (rc != 0) {
        fprintf(stderr, "fuzz_lora: the map: %s\n", msg);
        exit(1);
    }
    mfd = memfd_create("fuzz_lora.safetensors", MFD_CLOEXEC);
    if (mfd < 0) {
        perror("fuzz_lora: memfd_create");
        exit(1);
    }
    snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
    return 0;
}

static void check_reader(const uint8_t *data, size_t size)
{
    struct fx_st_file *st = NULL;
    char msg[512] = "";
    int rc = fx_st_open(path, &st, msg, sizeof(msg));
    if (rc != 0) {
        if ((rc != FX_EFORMAT && rc != FX_ETOOBIG) || msg[0] == '\0')
            fail("fx_st_open: unexpected code or no message", msg);
        return;
    }
    uint64_t hlen = 0, bytes = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | data[i];
    for (size_t i = 0; i < fx_st_count(st); i++) {
        int64_t numel = fx_st_numel(st, i);
        bytes += (uint64_t)numel * fx_st_dtype_size(fx_st_dtype(st, i));
        if (fx_st_find(st, fx_st_name(st, i)) != (long)i)
            fail("fx_st_find does not find a tensor", fx_st_name(st, i));
        float *v = malloc((size_t)numel * sizeof(float) + 1);
        if (v == NULL)
            continue;
        rc = fx_st_read_f32(st, i, v, (size_t)numel, msg, sizeof(msg));
        if (rc != 0 && rc != FX_ENOTSUP)
            fail("fx_st_read_f32 failed", msg);
        if (rc == 0)
            (void)fx_st_first_nonfinite(v, (size_t)numel);
        free(v);
    }
    if (8 + hlen + bytes != size)
        fail("tensors do not tile the data section", fx_st_file_name(st));
    fx_st_close(st);
}

static void check_lora(void)
{
    struct fx_lora_info info;
    struct fx_lora_file *f = NULL;
    char msg[512] = "", msg2[512] = "";
    int rc = fx_lora_check(map, path, &info, msg, sizeof(msg));
    int rc2 = fx_lora_read(map, path, &f, msg2, sizeof(msg2));
    if (rc != 0) {
        if ((rc != FX_EFORMAT && rc != FX_ETOOBIG) || msg[0] == '\0')
            fail("fx_lora_check: unexpected code or no message", msg);
        if (rc2 != rc || strcmp(msg, msg2) != 0)
            fail("fx_lora_read differs from fx_lora_check", msg2);
        return;
    }
    if (rc2 != 0) {
        if (rc2 != FX_EFORMAT || strstr(msg2, "holds") == NULL)
            fail("fx_lora_read refused what fx_lora_check accepted, not for its values", msg2);
        return;
    }
    if ((int)fx_lora_file_count(f) != info.layers || info.layers < 1 ||
        info.rank_min > info.rank_max || info.rank_min < 1 || info.rank_max > FX_LORA_RANK_MAX)
        fail("fx_lora_read's entries differ from the info", info.layout);
    for (size_t i = 0; i < fx_lora_file_count(f); i++) {
        const struct fx_lora_entry *e = fx_lora_file_entry(f, i);
        if (e->row0 < 0 || e->rows < 1 || e->row0 + e->rows > e->out || e->rank < 1 ||
            !(e->factor == e->factor) ||
            fx_st_first_nonfinite(e->down, (size_t)(e->rank * e->in)) >= 0 ||
            fx_st_first_nonfinite(e->up, (size_t)(e->rows * e->rank)) >= 0)
            fail("a bad entry", e->layer);
    }
    if (strlen(fx_lora_file_sha256(f)) != 64)
        fail("no sha256", "");
    fx_lora_file_free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (ftruncate(mfd, 0) != 0 || (size && pwrite(mfd, data, size, 0) != (ssize_t)size))
        fail("cannot write the memfd", "");
    check_reader(data, size);
    check_lora();
    return 0;
}
