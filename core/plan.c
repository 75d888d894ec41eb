/* plan.c - the memory plan (formulas and their derivation in plan.h). */
#include "plan.h"

#include <json-c/json.h>
#include <string.h>

#include "err.h"

static const char *const placement_names[FX_PLACEMENTS] = {"resident", "encoders-offload",
                                                           "stream"};

const char *plan_placement_name(enum fx_placement p)
{
    return (unsigned)p < FX_PLACEMENTS ? placement_names[p] : "?";
}

int plan_placement_parse(const char *s, enum fx_placement *out)
{
    for (int i = 0; s && i < FX_PLACEMENTS; i++) {
        if (strcmp(s, placement_names[i]) == 0) {
            *out = (enum fx_placement)i;
            return 0;
        }
    }
    return FX_EINVAL;
}

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* Attention scores of h heads over n positions: the explicit path keeps the scores, the
 * score-plus-bias (or scaled) copy, their float32 softmax input and output and the cast
 * back; fused kernels keep none. */
static int64_t scores_bytes(int64_t h, int64_t n, int64_t e, int fused)
{
    return fused ? 0 : h * n * n * (2 * e + 8);
}

static int64_t transformer_act(const struct fx_manifest *m, int64_t img_tokens, int64_t e)
{
    int64_t d = m->hidden, f = m->mlp_hidden, hd = m->hidden / m->heads;
    int64_t n = img_tokens + m->t5_len;
    int64_t per_token = max64(e * (11 * d + f) + 8 * d, e * (6 * d + 3 * f));
    int64_t act = n * per_token + scores_bytes(m->heads, n, e, m->sdpa);
    act += n * hd * 4;                                /* RoPE cos and sin, float32 */
    act += (int64_t)m->t5_len * m->context_dim * e;   /* the text states */
    act += img_tokens * m->in_channels * (4 + e) * 2; /* latents (fp32), input, velocity */
    return act + m->transformer.dequant_bytes;
}

/* T5 and CLIP: the attention stage against the feed-forward stage. */
static int64_t encoder_act(int64_t len, int64_t d, int64_t inner, int64_t heads, int64_t ff,
                           int gated, int64_t e)
{
    /* T5 is always explicit (its own matmuls, a position bias added): 3e + 8 per score */
    int64_t attn = e * len * (2 * d + 3 * inner) + heads * len * len * (3 * e + 8);
    int64_t mlp = e * len * (2 * d + (gated ? 4 : 2) * ff);
    return max64(attn, mlp) + e * len * d;
}

static int64_t ae_act(const struct fx_manifest *m, int width, int height, int64_t e)
{
    int top = m->ae_levels - 1;
    int64_t c_top = (int64_t)m->ae_ch * m->ae_ch_mult[top];
    int64_t r_top = (int64_t)(width >> top) * (height >> top);
    int64_t peak, cin = c_top;
    /* mid block: resnets, then one head over r_top positions (the input, its norm, q k v) */
    peak = e * r_top * max64(4 * c_top, 5 * c_top);
    peak = max64(peak, e * r_top * 5 * c_top + r_top * r_top * (3 * e + (m->sdpa ? 0 : 8)));
    for (int level = top; level >= 0; level--) {
        int64_t r = (int64_t)(width >> level) * (height >> level);
        int64_t cout = (int64_t)m->ae_ch * m->ae_ch_mult[level];
        for (int j = 0; j <= m->ae_res_blocks; j++) {
            peak = max64(peak, e * r * max64(4 * cin, cin + 4 * cout));
            cin = cout;
        }
        if (level != 0)
            peak = max64(peak, e * r * cout * 9);
    }
    /* the output norm, swish and the 3-channel conv at full size */
    return max64(peak, e * (int64_t)width * height * (4 * cin + 3));
}

int plan_compute(const struct fx_manifest *m, enum fx_placement p, int width, int height,
                 const char *device, struct fx_plan *out, char *msg, size_t msg_len)
{
    int64_t e = m->bf16 ? 2 : 4;
    int64_t img_tokens;
    int64_t blocks;
    const struct fx_manifest_module *src[PLAN_MODULES] = {&m->clip, &m->t5, &m->transformer,
                                                          &m->ae};
    static const char *const names[PLAN_MODULES] = {"clip_text", "t5_encoder", "transformer",
                                                    "ae_decoder"};
    int64_t host_act = 0;
    memset(out, 0, sizeof(*out));
    if ((unsigned)p >= FX_PLACEMENTS)
        return fx_fail(msg, msg_len, FX_EINVAL, "unknown placement %d", (int)p);
    if (width < 16 || height < 16 || width > 65536 || height > 65536 || width % 16 || height % 16)
        return fx_fail(msg, msg_len, FX_EINVAL,
                       "size %dx%d: width and height must be multiples of 16 from 16 to 65536",
                       width, height);
    blocks = m->depth * m->double_block_bytes + m->depth_single * m->single_block_bytes;
    if (p == FX_PLACE_STREAM && blocks == 0 && m->depth + m->depth_single > 0)
        return fx_fail(msg, msg_len, FX_ENOTSUP,
                       "placement 'stream': the manifest has no block sizes (export the model "
                       "again with this version's fluxexport)");
    out->placement = p;
    out->width = width;
    out->height = height;
    img_tokens = (int64_t)(width / 16) * (height / 16);
    out->tokens = img_tokens + m->t5_len;
    for (int i = 0; i < PLAN_MODULES; i++) {
        struct fx_plan_module *pm = &out->mod[i];
        int host = p != FX_PLACE_RESIDENT && (i == PLAN_CLIP || i == PLAN_T5);
        pm->name = names[i];
        pm->weights = manifest_weights_name(src[i]->weights);
        pm->runs_on = host ? "host" : "device";
        pm->param_bytes = src[i]->param_bytes;
        pm->device_bytes = host ? 0 : src[i]->param_bytes;
        pm->host_bytes = host ? src[i]->param_bytes : 0;
    }
    if (p == FX_PLACE_STREAM) {
        struct fx_plan_module *t = &out->mod[PLAN_TRANSFORMER];
        t->host_bytes = blocks;
        t->device_bytes =
            t->param_bytes - blocks + 2 * max64(m->double_block_bytes, m->single_block_bytes);
    }
    out->mod[PLAN_CLIP].activation_bytes =
        encoder_act(m->clip_len, m->clip_dim, m->clip_dim, m->clip_heads, m->clip_ff, 0, e) +
        m->clip.dequant_bytes;
    out->mod[PLAN_T5].activation_bytes =
        encoder_act(m->t5_len, m->t5_dim, (int64_t)m->t5_heads * m->t5_dkv, m->t5_heads, m->t5_ff,
                    1, e) +
        m->t5.dequant_bytes;
    out->mod[PLAN_TRANSFORMER].activation_bytes = transformer_act(m, img_tokens, e);
    out->mod[PLAN_AE].activation_bytes = ae_act(m, width, height, e) + m->ae.dequant_bytes;
    for (int i = 0; i < PLAN_MODULES; i++) {
        const struct fx_plan_module *pm = &out->mod[i];
        out->weights_device += pm->device_bytes;
        out->weights_host += pm->host_bytes;
        if (strcmp(pm->runs_on, "device") == 0)
            out->activation_peak = max64(out->activation_peak, pm->activation_bytes);
        else
            host_act = max64(host_act, pm->activation_bytes);
    }
    if (device == NULL)
        device = m->device;
    out->overhead = strncmp(device, "cuda", 4) == 0 ? PLAN_CUDA_OVERHEAD : 0;
    out->device_total = out->weights_device + out->activation_peak + out->overhead;
    out->host_total = out->weights_host + host_act;
    return 0;
}

int plan_auto_placement(const struct fx_manifest *m, const char *device, int64_t device_bytes,
                        int width, int height, enum fx_placement *out, char *msg, size_t msg_len)
{
    struct fx_plan pl;
    int rc = 0;
    if (device == NULL)
        device = m->device;
    *out = FX_PLACE_RESIDENT;
    if (strncmp(device, "cuda", 4) != 0 || device_bytes <= 0)
        return 0;
    for (int i = 0; i < FX_PLACEMENTS; i++) {
        rc = plan_compute(m, (enum fx_placement)i, width, height, device, &pl, msg, msg_len);
        if (rc == FX_ENOTSUP) /* stream on a manifest without block sizes */
            return fx_fail(msg, msg_len, FX_EDEVICE,
                           "placement 'auto': neither resident nor encoders-offload fits "
                           "device_memory %lld bytes at %dx%d, and stream needs the model "
                           "exported again with this fluxexport",
                           (long long)device_bytes, width, height);
        if (rc)
            return rc;
        if (pl.device_total <= device_bytes) {
            *out = (enum fx_placement)i;
            return 0;
        }
    }
    return fx_fail(msg, msg_len, FX_EDEVICE,
                   "placement 'auto': no placement fits device_memory %lld bytes at %dx%d "
                   "(stream needs %lld; `fluxgen plan` shows each); export with smaller weights "
                   "(fluxexport export --weights int8 or int4)",
                   (long long)device_bytes, width, height, (long long)pl.device_total);
}

int plan_resolve_placement(const struct fx_manifest *m, const char *name, const char *device,
                           int64_t device_bytes, int width, int height, enum fx_placement *out,
                           char *msg, size_t msg_len)
{
    *out = FX_PLACE_RESIDENT;
    if (name == NULL || name[0] == '\0')
        return 0;
    if (strcmp(name, "auto") == 0)
        return plan_auto_placement(m, device, device_bytes, width, height, out, msg, msg_len);
    if (plan_placement_parse(name, out) != 0)
        return fx_fail(msg, msg_len, FX_EINVAL,
                       "placement '%s': must be resident, encoders-offload, stream or auto", name);
    return 0;
}

int plan_max_size(const struct fx_manifest *m, enum fx_placement p, const char *device,
                  int64_t device_bytes, int min_size, int max_size, int multiple_of)
{
    struct fx_plan pl;
    if (multiple_of < 16 || multiple_of % 16 || min_size > max_size)
        return -1;
    if (plan_compute(m, p, min_size, min_size, device, &pl, NULL, 0) != 0)
        return -1;
    if (device_bytes <= 0)
        return max_size;
    /* the activations grow with the side: walk down from the top (at most 4096 steps) */
    for (int s = max_size - max_size % multiple_of; s >= min_size; s -= multiple_of) {
        if (plan_compute(m, p, s, s, device, &pl, NULL, 0) != 0)
            return -1;
        if (pl.device_total <= device_bytes)
            return s;
    }
    return 0;
}

int plan_parse_bytes(const char *s, int64_t *out)
{
    int64_t v = 0, mul = 1;
    const char *p = s;
    if (s == NULL || *s < '0' || *s > '9')
        return FX_EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > ((int64_t)1 << 60) / 10)
            return FX_ERANGE;
        v = v * 10 + (*p - '0');
    }
    if (*p == 'k' || *p == 'K')
        mul = (int64_t)1 << 10;
    else if (*p == 'M')
        mul = (int64_t)1 << 20;
    else if (*p == 'G')
        mul = (int64_t)1 << 30;
    else if (*p != '\0')
        return FX_EINVAL;
    if (*p && p[1] != '\0')
        return FX_EINVAL;
    if (v > ((int64_t)1 << 60) / mul)
        return FX_ERANGE;
    *out = v * mul;
    return 0;
}

/* "1.23 GiB", "456.7 MiB", "12.0 KiB" or "123 B". */
static const char *human(int64_t b, char *buf, size_t n)
{
    if (b >= (int64_t)1 << 30)
        snprintf(buf, n, "%.2f GiB", (double)b / (1 << 30));
    else if (b >= 1 << 20)
        snprintf(buf, n, "%.1f MiB", (double)b / (1 << 20));
    else if (b >= 1 << 10)
        snprintf(buf, n, "%.1f KiB", (double)b / (1 << 10));
    else
        snprintf(buf, n, "%lld B", (long long)b);
    return buf;
}

int plan_print_text(FILE *f, const struct fx_plan *pl, int64_t device_bytes)
{
    char a[32], b[32], c[32], d[32];
    int peak = PLAN_TRANSFORMER;
    fprintf(f, "memory plan: placement %s, %d x %d (%lld tokens)\n",
            plan_placement_name(pl->placement), pl->width, pl->height, (long long)pl->tokens);
    fprintf(f, "  %-12s %-7s %-7s %12s %12s %12s %12s\n", "module", "weights", "runs on", "params",
            "on device", "in host", "activations");
    for (int i = 0; i < PLAN_MODULES; i++) {
        const struct fx_plan_module *pm = &pl->mod[i];
        fprintf(f, "  %-12s %-7s %-7s %12s %12s %12s %12s\n", pm->name, pm->weights, pm->runs_on,
                human(pm->param_bytes, a, sizeof(a)), human(pm->device_bytes, b, sizeof(b)),
                human(pm->host_bytes, c, sizeof(c)), human(pm->activation_bytes, d, sizeof(d)));
        if (strcmp(pm->runs_on, "device") == 0 &&
            pm->activation_bytes > pl->mod[peak].activation_bytes)
            peak = i;
    }
    fprintf(f, "  weights on the device  %s\n", human(pl->weights_device, a, sizeof(a)));
    fprintf(f, "  activation peak        %s (%s)\n", human(pl->activation_peak, a, sizeof(a)),
            pl->mod[peak].name);
    fprintf(f, "  overhead               %s%s\n", human(pl->overhead, a, sizeof(a)),
            pl->overhead ? " (CUDA context, workspaces, allocator)" : "");
    fprintf(f, "  device total           %s (%lld bytes)\n", human(pl->device_total, a, sizeof(a)),
            (long long)pl->device_total);
    fprintf(f, "  host memory            %s\n", human(pl->host_total, a, sizeof(a)));
    if (device_bytes > 0)
        fprintf(f, "  device memory          %s: %s\n", human(device_bytes, a, sizeof(a)),
                pl->device_total <= device_bytes ? "fits" : "does not fit");
    return ferror(f) ? FX_EIO : 0;
}

int plan_print_json(FILE *f, const struct fx_plan *pl, int64_t device_bytes)
{
    json_object *o = json_object_new_object(), *mods = json_object_new_array();
    int rc = 0;
    if (o == NULL || mods == NULL) {
        json_object_put(o);
        json_object_put(mods);
        return FX_ENOMEM;
    }
    json_object_object_add(o, "placement",
                           json_object_new_string(plan_placement_name(pl->placement)));
    json_object_object_add(o, "width", json_object_new_int(pl->width));
    json_object_object_add(o, "height", json_object_new_int(pl->height));
    json_object_object_add(o, "tokens", json_object_new_int64(pl->tokens));
    for (int i = 0; i < PLAN_MODULES; i++) {
        const struct fx_plan_module *pm = &pl->mod[i];
        json_object *x = json_object_new_object();
        json_object_object_add(x, "name", json_object_new_string(pm->name));
        json_object_object_add(x, "weights", json_object_new_string(pm->weights));
        json_object_object_add(x, "runs_on", json_object_new_string(pm->runs_on));
        json_object_object_add(x, "param_bytes", json_object_new_int64(pm->param_bytes));
        json_object_object_add(x, "device_bytes", json_object_new_int64(pm->device_bytes));
        json_object_object_add(x, "host_bytes", json_object_new_int64(pm->host_bytes));
        json_object_object_add(x, "activation_bytes", json_object_new_int64(pm->activation_bytes));
        json_object_array_add(mods, x);
    }
    json_object_object_add(o, "modules", mods);
    json_object_object_add(o, "weights_device", json_object_new_int64(pl->weights_device));
    json_object_object_add(o, "weights_host", json_object_new_int64(pl->weights_host));
    json_object_object_add(o, "activation_peak", json_object_new_int64(pl->activation_peak));
    json_object_object_add(o, "overhead", json_object_new_int64(pl->overhead));
    json_object_object_add(o, "device_total", json_object_new_int64(pl->device_total));
    json_object_object_add(o, "host_total", json_object_new_int64(pl->host_total));
    json_object_object_add(o, "device_memory", json_object_new_int64(device_bytes));
    json_object_object_add(
        o, "fits",
        device_bytes > 0 ? json_object_new_boolean(pl->device_total <= device_bytes) : NULL);
    if (fprintf(f, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN)) < 0)
        rc = FX_EIO;
    json_object_put(o);
    return rc || ferror(f) ? FX_EIO : 0;
}
