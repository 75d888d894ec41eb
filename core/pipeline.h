/*
 * pipeline.h - FLUX.1 text-to-image in C: tokenize -> encode -> seeded noise -> shifted
 * schedule -> Euler steps -> decode -> uint8 -> PNG, driving the TorchScript modules of a
 * model dir through the shim (docs/architecture.md, docs/numerics.md).
 *
 * The math is the Python reference's (export/fluxexport/reference.py), step for step: noise
 * drawn on the CPU in the model dtype with libtorch's generator, packed latents kept in
 * float32 between steps, the model called on them cast to the model dtype, x += (s[i+1] -
 * s[i]) * v in float32, pixels round(clamp((x + 1) / 2, 0, 1) * 255) in float32.
 *
 * Threads: a pipeline belongs to one thread (the worker) while it generates; loading and
 * freeing too.  fx_request_validate and fx_limits_default are pure and thread-safe.
 */
#ifndef FX_PIPELINE_H
#define FX_PIPELINE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fx_pipeline;
struct fx_manifest;
struct fx_lora;

/* What a caller asks for. prompt is UTF-8 (invalid bytes are replaced by the tokenizers). */
struct fx_request {
    const char *prompt;
    size_t prompt_len;
    int width, height, steps;
    double guidance;
    uint64_t seed;
    bool has_seed; /* false: a random seed is chosen and reported */
    int format;    /* the image's format, an enum imgw_format (core/imgw.h): 0 is PNG */
    int quality;   /* JPEG / WebP quality 1..100; 0: the default (IMGW_DEFAULT_QUALITY) */
    /* LoRA adapters applied for this request (core/lora.h), n_loras <= FX_LORA_MAX; none
     * when n_loras is 0.  The pipeline patches the weights before the generation and keeps
     * them patched until a request asks for another set (fx_pipeline_set_loras: the same
     * set, files unchanged, costs nothing).  The order counts (floats add in that order). */
    const struct fx_lora *loras;
    size_t n_loras;
};

/* Bounds a request must respect. */
struct fx_limits {
    int min_size, max_size, multiple_of; /* pixels */
    int max_steps;
    double min_guidance, max_guidance;
    size_t max_prompt_bytes;
};

/* Largest seed accepted: 2^53 - 1, so that seeds survive JSON numbers exactly. */
#define FX_SEED_MAX ((uint64_t)9007199254740991ULL)

/*
 * The model's limits (sizes from its manifest; m may be NULL for 64..2048) with steps
 * 1..100, guidance 0..100 and prompts up to 64 KiB.
 */
void fx_limits_default(struct fx_limits *l, const struct fx_manifest *m);

/*
 * Checks a request.  Returns 0, or FX_EINVAL / FX_ERANGE with *field set to the offending
 * field's name ("prompt", "width", "height", "num_inference_steps", "guidance_scale",
 * "seed", "output_format", "output_quality", "loras": more than FX_LORA_MAX, a scale that
 * is not finite or beyond FX_LORA_SCALE_MAX, a missing path) and msg[0..msg_len) a one-line
 * reason.  The LoRA files themselves are checked when they are applied.  field and msg may
 * be NULL.
 */
int fx_request_validate(const struct fx_request *r, const struct fx_limits *l, const char **field,
                        char *msg, size_t msg_len);

struct fx_pipeline_params {
    const char *model_dir;
    const char *device; /* "cpu", "cuda", "cuda:N"; NULL: "cpu" */
    int cpu_threads;    /* 0: libtorch's default */
    /* Where the weights live (core/plan.h, shim/shim.h): "resident", "encoders-offload",
     * "stream" or "auto" (plan_resolve_placement with device_memory at plan_width x
     * plan_height); NULL or "": resident. */
    const char *placement;
    int64_t device_memory;       /* bytes of device memory for "auto"; 0: unknown (resident) */
    int plan_width, plan_height; /* the image size "auto" plans for; 0: the manifest's default */
};

/*
 * Loads a model dir: manifest, tokenizers, the four modules onto the device, and its
 * lora_map.json when it has one (a model dir without one loads; asking it for a LoRA then
 * fails with FX_ENOTSUP).  On success
 * returns 0 and sets *out (free with fx_pipeline_free).  Errors: FX_ENOENT / FX_EFORMAT (a
 * missing or bad manifest, tokenizer or module file), FX_EDEVICE (also: "auto" found no
 * placement that fits device_memory), FX_ENOMEM, FX_ERUNTIME, FX_EINVAL (an unknown
 * placement), FX_ENOTSUP (a placement this model dir cannot run: msg says which would);
 * msg names the file and the reason.
 */
int fx_pipeline_load(const struct fx_pipeline_params *p, struct fx_pipeline **out, char *msg,
                     size_t msg_len);

/* Frees a pipeline; NULL is a no-op. */
void fx_pipeline_free(struct fx_pipeline *p);

/* The loaded manifest (borrowed, lives as long as the pipeline). */
const struct fx_manifest *fx_pipeline_manifest(const struct fx_pipeline *p);

/* The device the modules run on ("cpu", "cuda:0"). */
const char *fx_pipeline_device(const struct fx_pipeline *p);

/* The placement in use ("resident", "encoders-offload", "stream"; "auto" resolved). */
const char *fx_pipeline_placement(const struct fx_pipeline *p);

/*
 * The block copy schedule of the last transformer call under "stream" (shim_stream_log's
 * text: "F0 F1 R0 E0 F2 R1 ..."), written to buf (NUL-terminated, truncated to len); ""
 * for the other placements.  Returns the full length.
 */
size_t fx_pipeline_stream_log(const struct fx_pipeline *p, char *buf, size_t len);

/* The model dir's LoRA map (core/lora.h: read-only, shareable between threads, lives as long
 * as the pipeline), or NULL when the model dir has none (or a bad one; *why, when not NULL,
 * is set to the reason). */
const struct fx_lora_map *fx_pipeline_lora_map(const struct fx_pipeline *p, const char **why);

/* What fx_pipeline_set_loras did, in seconds. */
struct fx_lora_timing {
    bool skipped;        /* the set (paths, scales, files' identity) was the one applied */
    double t_read;       /* reading and validating the files (fx_lora_read) */
    double t_restore;    /* copying the previous set's saved originals back */
    double t_patch;      /* staging and committing the new set (shim_lora_commit) */
    int64_t layers;      /* layers patched after the call */
    int64_t saved_bytes; /* host memory holding their originals */
};

/*
 * Makes loras[0..n) the applied LoRA set (n = 0: none; the weights are restored exactly).
 * When the set equals the applied one (the same paths in the same order, the same scales,
 * and each file still the same: device, inode, size and mtime) nothing is done.  Otherwise
 * every file is read and validated first (fx_lora_read), and every delta checked against the
 * modules; a bad file, a missing one or an unknown layer leaves the weights as they were and
 * returns that error (FX_ENOENT, FX_EIO, FX_EFORMAT, FX_ETOOBIG, FX_ENOTSUP when the model
 * dir has no lora_map.json, FX_EINVAL; msg names the LoRA and says why).  Then the previous
 * set is restored and the new one committed (core/../shim/shim.h: dequantise, add,
 * requantise).  A failure while writing (FX_ENOMEM, FX_ERUNTIME) leaves no LoRA applied.
 * timing may be NULL.  fx_pipeline_generate calls it with the request's set; it is public
 * for programs that patch without generating (benchmarks).  Same thread rules as generate.
 */
int fx_pipeline_set_loras(struct fx_pipeline *p, const struct fx_lora *loras, size_t n,
                          struct fx_lora_timing *timing, char *msg, size_t msg_len);

/* Optional hooks for one generation; every field may be zero. */
struct fx_hooks {
    /* Called after each denoising step (step = 1..steps), on the generating thread. */
    void (*progress)(void *ud, int step, int steps);
    void *ud;
    /* Checked before each step; when non-zero the generation stops with FX_ECANCELED. */
    const atomic_int *cancel;
    /* When set, the packed float32 latents are written there as step_000.npy (the noise)
     * and step_K.npy after step K, the layout of the Python reference's dumps. */
    const char *dump_dir;
};

/* What one generation produced.  Release with fx_result_release. */
struct fx_result {
    uint8_t *png; /* malloc'd image file bytes, in the request's format (PNG unless asked) */
    size_t png_len;
    uint64_t seed;                 /* the seed used (chosen when the request had none) */
    size_t clip_tokens, t5_tokens; /* prompt lengths before truncation (bos/eos counted) */
    double t_tokenize, t_encode, t_denoise, t_decode, t_png; /* seconds */
    double t_lora;             /* seconds making the request's LoRA set the applied one */
    bool lora_skipped;         /* the set was already applied: no file read, no weight touched */
    int64_t device_bytes_peak; /* peak device memory during the generation (0 on the CPU) */
};

void fx_result_release(struct fx_result *r);

/*
 * Runs one request (which must have passed fx_request_validate).  On success returns 0 and
 * fills *out.  The request's LoRAs are applied first (fx_pipeline_set_loras, with its errors;
 * the image's metadata names each LoRA with its scale and sha256).  Errors: FX_ECANCELED
 * (the cancel flag was set), FX_EINVAL, FX_ENOMEM, FX_ERUNTIME (libtorch failed: msg says
 * why), FX_EIO (a latent dump could not be written).
 * It first makes the model's device the calling thread's current CUDA device, so any one
 * thread at a time may generate (fx_pipeline_load does the same on the loading thread).
 */
int fx_pipeline_generate(struct fx_pipeline *p, const struct fx_request *r,
                         const struct fx_hooks *hooks, struct fx_result *out, char *msg,
                         size_t msg_len);

/* A seed in 0..FX_SEED_MAX from the system's random source. */
uint64_t fx_random_seed(void);

#endif
