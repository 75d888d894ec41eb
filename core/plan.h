/*
 * plan.h - the memory plan: before anything is loaded, what a model dir needs on the device
 * and in host memory for a placement and an image size, from its manifest alone.
 *
 * Placements (where the weights live; all three run: shim/shim.h loads each):
 *   resident          every module on the device (what the shim loads today)
 *   encoders-offload  CLIP and T5 in host memory, run on the CPU; the device gets their
 *                     output (512 x context states, the pooled vector) only
 *   stream            encoders-offload, and the transformer's blocks in host memory with two
 *                     on the device at a time (the one running and the next one, copied
 *                     ahead); the rest of the transformer and the AE stay on the device
 *
 * Weights: each module's param_bytes from the manifest (its stored format: int8/int4/fp8 are
 * what they are on disk).  Activations: the peak over the three phases that run on the
 * device (encode, denoise, decode), each a formula over the module's dimensions in the
 * compute dtype (e = 2 bytes in bf16, 4 in fp32).  Derived from the forward code in
 * export/fluxexport (flux.py, t5.py, clip.py, autoencoder.py): for each stage of a block, the
 * tensors alive at once (inputs kept for residuals, the stage's outputs, the float32
 * temporaries of norms and RoPE), assuming TorchScript frees a value after its last use.
 *
 *   transformer  N = (H/16)(W/16) image tokens + 512 text tokens; D hidden, M mlp, h heads.
 *                A single-stream block holds, per token, at its attention-input stage
 *                e(11D + M) + 8D bytes (residual, linear1's output 3D+M, the q/k/v copy 3D,
 *                normed q and k, and RoPE's float32 copies of q and k) and at its output
 *                stage e(6D + 3M) (residual, linear1's output, attention output, GELU of the
 *                MLP part, their concatenation); the larger counts.  Double-stream blocks hold
 *                less (e(4D + 2M)).  Attention: with "sdpa" (torch 2.x) fused kernels take
 *                head dim 128 on CUDA and keep no N x N scores: nothing more; with the
 *                explicit path, h N^2 (2e + 8) for scores, their float32 softmax and the cast
 *                back.  Plus RoPE tables (N x head_dim x 4 bytes x 2), the text states and
 *                the latents, and the largest dequantised weight of a quantised format
 *                (dequant_bytes).
 *   T5           L = 512: max(attention stage: e L (2d + 3 h_t d_kv) + h_t L^2 (3e + 8)
 *                [scores, bias added, float32 softmax, cast back; its position bias table],
 *                FF stage: e L (2d + 4 d_ff)) + dequant_bytes.
 *   CLIP         L = 77, the same shape of formula (tiny).
 *   AE decoder   per level at (H/2^i)(W/2^i) pixels with c_in -> c_out channels: a resnet
 *                holds e R max(4 c_in, c_in + 4 c_out) (input, GroupNorm output, sigmoid and
 *                product of swish, conv outputs), an upsampler e R c 9 (input, the 4x
 *                interpolation and its conv); the mid-block attention, one head over the
 *                R_low latent pixels with 512 channels, is counted with its R_low^2 scores
 *                (3e bytes each with sdpa, whose fused kernels do not take head dim 512 on
 *                every torch 2.x; 3e + 8 explicit).
 *   overhead     on CUDA 768 MiB for the context, cuBLAS workspaces and allocator slack
 *                (nothing on the CPU).
 * Neglected: batch > 1 (the service runs one image at a time), CLIP's few MB, small vectors
 * (modulation, timestep embeddings), allocator fragmentation beyond the fixed overhead, the
 * math fallback of SDPA for the transformer (fp32 on pre-Ampere GPUs), host memory of the
 * process itself, and the bytes libtorch keeps for the JIT.  The figures are upper-bound
 * estimates to size cards and refuse what cannot fit; on a GPU compare with measured peaks
 * (shim_memory_stats).
 *
 * Functions are pure (no I/O except the printers) and thread-safe.
 */
#ifndef FX_PLAN_H
#define FX_PLAN_H

#include <stdint.h>
#include <stdio.h>

#include "manifest.h"

enum fx_placement { FX_PLACE_RESIDENT, FX_PLACE_ENCODERS_OFFLOAD, FX_PLACE_STREAM };
#define FX_PLACEMENTS 3

/* Fixed device overhead (CUDA context, cuBLAS workspaces, allocator slack). */
#define PLAN_CUDA_OVERHEAD ((int64_t)768 << 20)

enum { PLAN_CLIP, PLAN_T5, PLAN_TRANSFORMER, PLAN_AE, PLAN_MODULES };

struct fx_plan_module {
    const char *name;         /* "clip_text", "t5_encoder", "transformer", "ae_decoder" */
    const char *weights;      /* its format: "bf16", "int8", ... */
    const char *runs_on;      /* "device" or "host" */
    int64_t param_bytes;      /* all of its weights */
    int64_t device_bytes;     /* weights kept on the device */
    int64_t host_bytes;       /* weights kept in host memory */
    int64_t activation_bytes; /* its activation peak at the plan's size (with dequant) */
};

struct fx_plan {
    enum fx_placement placement;
    int width, height;
    int64_t tokens; /* transformer sequence: image tokens + text tokens */
    struct fx_plan_module mod[PLAN_MODULES];
    int64_t weights_device, weights_host;
    int64_t activation_peak; /* largest activation of a module run on the device */
    int64_t overhead;        /* PLAN_CUDA_OVERHEAD on CUDA, 0 on the CPU */
    int64_t device_total;    /* weights_device + activation_peak + overhead */
    int64_t host_total;      /* weights_host + the activations of modules run on the host */
};

/* "resident", "encoders-offload", "stream".  Thread-safe. */
const char *plan_placement_name(enum fx_placement p);

/* Parses a placement name.  Returns 0, or FX_EINVAL for anything else. */
int plan_placement_parse(const char *s, enum fx_placement *out);

/*
 * Computes the plan for manifest m, placement p and a width x height image (positive; not
 * checked against the manifest's limits) on device ("cpu", "cuda", "cuda:N"; NULL: the
 * manifest's).  Returns 0 with *out filled, or FX_EINVAL (bad size or placement) or
 * FX_ENOTSUP (stream on a manifest without block sizes: msg says to export again), with msg
 * set.  msg may be NULL.
 */
int plan_compute(const struct fx_manifest *m, enum fx_placement p, int width, int height,
                 const char *device, struct fx_plan *out, char *msg, size_t msg_len);

/*
 * The largest side s (a multiple of multiple_of within [min_size, max_size]) such that the
 * plan for s x s fits in device_bytes; s x s is the largest image of that bound, since the
 * activations grow with the pixel count.  Returns max_size when device_bytes is 0 (unknown),
 * 0 when not even min_size fits, or -1 when the plan cannot be computed.
 */
int plan_max_size(const struct fx_manifest *m, enum fx_placement p, const char *device,
                  int64_t device_bytes, int min_size, int max_size, int multiple_of);

/*
 * The placement `auto` (config key placement, fluxgen --placement): on the CPU, or with
 * device_bytes 0 (no figure), resident; else the first of resident, encoders-offload and
 * stream whose plan for width x height fits device_bytes (the least host traffic that fits).
 * Returns 0 with *out set, or FX_EDEVICE when none fits (msg gives stream's need) or the
 * plan's error.  msg may be NULL.
 */
int plan_auto_placement(const struct fx_manifest *m, const char *device, int64_t device_bytes,
                        int width, int height, enum fx_placement *out, char *msg, size_t msg_len);

/*
 * A configured placement name ("resident", "encoders-offload", "stream", or "auto", which
 * plan_auto_placement resolves with the other arguments; NULL or "": resident) as the
 * placement that will run.  Returns 0 with *out set, FX_EINVAL for an unknown name, or
 * plan_auto_placement's errors.  For the loader and for checks of the plan against
 * device_memory, so that both use the same placement.
 */
int plan_resolve_placement(const struct fx_manifest *m, const char *name, const char *device,
                           int64_t device_bytes, int width, int height, enum fx_placement *out,
                           char *msg, size_t msg_len);

/*
 * Parses a byte count as the config files write sizes: digits with an optional unit k/K, M
 * or G (1024-based; no unit: bytes).  Returns 0, or FX_EINVAL (not that form) / FX_ERANGE
 * (over 2^60).
 */
int plan_parse_bytes(const char *s, int64_t *out);

/*
 * Prints the plan as text (a table of modules and the totals; device_bytes > 0 adds whether
 * it fits) or as one JSON object (keys: placement, width, height, tokens, modules[{name,
 * weights, runs_on, param_bytes, device_bytes, host_bytes, activation_bytes}],
 * weights_device, weights_host, activation_peak, overhead, device_total, host_total,
 * device_memory, fits).  Returns 0 or FX_EIO when writing fails.
 */
int plan_print_text(FILE *f, const struct fx_plan *pl, int64_t device_bytes);
int plan_print_json(FILE *f, const struct fx_plan *pl, int64_t device_bytes);

#endif
