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
 * A loaded manifest is immutable and may be shared by threads.
 */
#ifndef FX_MANIFEST_H
#define FX_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#define MANIFEST_FORMAT "fluxcgi-model"
#define MANIFEST_VERSION 1
#define MANIFEST_PATH_MAX 4096

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
