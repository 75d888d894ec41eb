/*
 * manifest.h - a model dir's manifest.json (written by `fluxexport export`), read and
 * checked before anything is loaded.
 *
 * Checked: format "fluxcgi-model" and format_version 1, dtype fp32 | bf16, the four module
 * files and the tokenizer files (plain names inside the model dir, no ".."), dimensions that
 * fit together (transformer in_channels = 4 * latent channels, T5 d_model = transformer
 * context, CLIP hidden = transformer vector), sequence lengths 77 and 512, defaults and size
 * limits.  Paths in the struct are the model dir joined with the file names.
 *
 * Weight formats (chosen at export, `fluxexport export --weights`): each module records its
 * format in modules.M.weights.format: the compute dtype (plain weights), or for the
 * transformer and T5 a quantised one, int8, fp8 or int4, whose scripted modules dequantise
 * inside their forward (nothing changes on the C side).  Checked: a known name, plain for
 * CLIP and the AE, quantised ones only for the transformer and T5, and the top-level
 * "weights" (when present) equal to the transformer's.
 *
 * Memory figures for the plan (core/plan.h): modules.M.param_bytes (the parameters in their
 * stored format; older manifests without it: the module file's size, "bytes"),
 * modules.M.weights.dequant_bytes (the transient a quantised layer makes when it runs) and
 * modules.transformer.double_block_bytes / single_block_bytes (one block of each kind: what
 * the stream placement moves), and the dimensions the activation formulas need (read from
 * the modules' params).  A manifest with "manifest_only": true has the sizes of an export but
 * no module files (fluxexport random-model --manifest-only): good for a plan, not for loading.
 *
 * A loaded manifest is immutable and may be shared by threads.
 */
#ifndef FX_MANIFEST_H
#define FX_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#define MANIFEST_FORMAT "fluxcgi-model"
#define MANIFEST_VERSION 1
#define MANIFEST_PATH_MAX 4096

/* How a module's weights are stored (manifest modules.M.weights.format). */
enum fx_weights {
    FX_WEIGHTS_FP32,
    FX_WEIGHTS_BF16,
    FX_WEIGHTS_INT8,
    FX_WEIGHTS_FP8,
    FX_WEIGHTS_INT4
};

/* "fp32", "bf16", "int8", "fp8", "int4"; "?" for anything else.  Thread-safe. */
const char *manifest_weights_name(int weights);

/* What the memory plan needs of one module. */
struct fx_manifest_module {
    int weights;           /* an enum fx_weights */
    int64_t param_bytes;   /* parameters and buffers in their stored format */
    int64_t dequant_bytes; /* largest transient weight a quantised layer makes; 0 if plain */
};

struct fx_manifest {
    char name[128];
    char sha256[65]; /* of manifest.json's bytes: the model fingerprint images carry */
    int bf16;        /* 1: modules in bf16, 0: fp32 */
    char device[32]; /* the device the modules were traced for */
    char clip_path[MANIFEST_PATH_MAX], t5_path[MANIFEST_PATH_MAX];
    char transformer_path[MANIFEST_PATH_MAX], ae_path[MANIFEST_PATH_MAX];
    char clip_vocab[MANIFEST_PATH_MAX], clip_merges[MANIFEST_PATH_MAX];
    char t5_model[MANIFEST_PATH_MAX];
    int32_t clip_bos, clip_eos, t5_eos, t5_pad;
    int in_channels, context_dim, vec_dim, latent_channels, downsample;
    int default_steps, default_width, default_height;
    double default_guidance;
    int multiple_of, min_size, max_size;
    /* memory figures and dimensions for core/plan.h */
    int weights;       /* the transformer's format (the model's headline format) */
    int sdpa;          /* 1: attention through scaled_dot_product_attention (fused kernels
                          on CUDA), 0: the explicit softmax(q k^T) v of old torch versions */
    int manifest_only; /* 1: no module files (sizes only) */
    struct fx_manifest_module clip, t5, transformer, ae;
    int64_t double_block_bytes, single_block_bytes;         /* one transformer block of each kind */
    int hidden, mlp_hidden, heads, depth, depth_single;     /* transformer */
    int t5_dim, t5_ff, t5_heads, t5_dkv, t5_layers, t5_len; /* T5 encoder */
    int clip_dim, clip_ff, clip_heads, clip_len;            /* CLIP text encoder */
    int ae_ch, ae_levels, ae_res_blocks, ae_ch_mult[8];     /* AE decoder */
};

/*
 * Reads dir/manifest.json.  On success returns 0 and sets *out (free with manifest_free).
 * Returns FX_ENOENT (no manifest), FX_EIO, FX_EFORMAT (not JSON, wrong format or version, a
 * missing or bad field: msg names it) or FX_ENOMEM; *out is NULL then.  msg may be NULL.
 * For FX_ENOENT msg says which case it is, in words meant for the person who passed dir:
 * the dir does not exist, is not a directory, or has no manifest.json (and, when it holds
 * *.safetensors, model_index.json or transformer/, that it is a BFL or diffusers checkpoint
 * to convert with `fluxexport export --source DIR --layout L -o OUT`).  msg does not repeat
 * dir at its start: callers print "model 'DIR': MSG".
 */
int manifest_load(const char *dir, struct fx_manifest **out, char *msg, size_t msg_len);

/* Frees a manifest; NULL is a no-op. */
void manifest_free(struct fx_manifest *m);

#endif
