/*
 * shim.h - the C API over libtorch: load the four TorchScript FLUX modules of a model dir,
 * move tensors between the host and the device, run the modules and the few tensor
 * operations the sampler needs.  The shim moves tensors; it holds no policy (the schedule,
 * the loop, validation of requests and the pixel conversion live in core/).
 *
 * This header is C (C17, -pedantic clean) and includes only <stdint.h>, <stddef.h> and
 * <stdbool.h>.  No C++ type or exception crosses it: every function catches c10::Error,
 * std::bad_alloc, std::exception and anything else, and maps them to a shim_status plus a
 * one-line message written into a caller-owned buffer (msg, msg_len; msg may be NULL).
 *
 * Ownership: what the shim allocates, the shim frees (shim_model_free, shim_tensor_free;
 * both accept NULL).  Output handles are set only on success and are NULL otherwise.
 *
 * Threads: a shim_model and the tensors made from it belong to one thread at a time (the
 * worker that drives the pipeline); none of these functions may run concurrently on the same
 * model.  Different models may be used from different threads.  Every call runs under
 * c10::InferenceMode (no autograd state).  CUDA keeps a current device per thread:
 * shim_model_load makes the model's device current on the loading thread, and a thread that
 * takes a model over calls shim_use_device first (core/pipeline.c does so per generation).
 *
 * Tensors stay on the model's device between calls; only shim_tensor_from_* and
 * shim_tensor_to_host cross between host and device.
 *
 * Linking: the implementation (shim.cc) is built into libfluxshim.so, which programs open
 * at run time with RTLD_LOCAL through the forwarders of shim_dl.c (core/plugin.h says
 * why); a program links shim_dl.c, never libtorch.  When the library cannot be loaded,
 * every call fails with SHIM_ENOLIB and says where it looked.
 */
#ifndef FX_SHIM_H
#define FX_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum shim_status {
    SHIM_OK = 0,
    SHIM_EINVAL = 1,    /* bad argument: NULL handle, wrong shape, unknown device string */
    SHIM_ENOENT = 2,    /* a module file is missing */
    SHIM_EFORMAT = 3,   /* a module file is not a loadable TorchScript archive */
    SHIM_EDEVICE = 4,   /* the device asked for is not available in this libtorch */
    SHIM_ENOMEM = 5,    /* host or device out of memory */
    SHIM_ERUNTIME = 6,  /* libtorch raised an error while running */
    SHIM_EINTERNAL = 7, /* anything else */
    SHIM_ENOLIB = 8,    /* the libtorch side (libfluxshim.so) could not be loaded */
    SHIM_ENOTSUP = 9    /* the placement asked for cannot run this model dir or device */
} shim_status;

/* Element types the shim handles. */
typedef enum shim_dtype { SHIM_F32 = 0, SHIM_BF16 = 1, SHIM_I64 = 2 } shim_dtype;

/* Returns a static name for a status ("SHIM_EINVAL"); never NULL. */
const char *shim_status_name(shim_status st);

/*
 * Where the weights live and run (docs/operations.md "GPU memory"; core/plan.h sizes each):
 *   SHIM_PLACE_RESIDENT          every module on the device.
 *   SHIM_PLACE_ENCODERS_OFFLOAD  CLIP and T5 loaded into host memory and run on the CPU (in
 *                                the model's dtype); shim_run_clip / shim_run_t5 take ids on
 *                                the device and return their outputs on the device.
 *   SHIM_PLACE_STREAM            encoders-offload, and the transformer's double and single
 *                                blocks kept in host memory (pinned on CUDA).  Its other
 *                                layers are on the device.  shim_run_transformer runs embed,
 *                                each block and final (methods of transformer.pt) itself:
 *                                before block i runs, block i+1 (the first block after the
 *                                last, for the next step) is copied to the device on a side
 *                                CUDA stream, so at most two blocks are on the device and the
 *                                copy of the next overlaps the compute of this one; events
 *                                order copy -> use -> reuse of the memory.  On the CPU the
 *                                copy is a no-op (the weights stay where they are) but the
 *                                schedule is the same, and shim_stream_log shows it.  The
 *                                result is bit-identical to resident's transformer forward.
 */
typedef enum shim_placement {
    SHIM_PLACE_RESIDENT = 0,
    SHIM_PLACE_ENCODERS_OFFLOAD = 1,
    SHIM_PLACE_STREAM = 2
} shim_placement;

/* What to load and where. */
struct shim_params {
    shim_placement placement; /* default SHIM_PLACE_RESIDENT */
    const char *device;       /* "cpu", "cuda" or "cuda:N"; default "cpu" */
    shim_dtype dtype;         /* the dtype the modules were exported in; default SHIM_F32 */
    int cpu_threads;          /* libtorch intra-op threads on the CPU; 0 (default) leaves it */
    const char *clip_path;    /* the four module files (absolute or relative to the cwd); */
    const char *t5_path;      /* all four are required */
    const char *transformer_path;
    const char *ae_path;
};

/* Fills *p with the defaults above (paths NULL). */
void shim_params_default(struct shim_params *p);

typedef struct shim_model shim_model;
typedef struct shim_tensor shim_tensor;

/*
 * Loads the four modules onto p->device, which it first makes the calling thread's current
 * CUDA device (shim_use_device).  On success returns SHIM_OK and sets *out (free with
 * shim_model_free).  SHIM_ENOENT names the missing file, SHIM_EFORMAT a corrupt one,
 * SHIM_EDEVICE an unavailable device, SHIM_ENOTSUP a placement this model dir cannot use
 * (stream with a transformer.pt exported without the embed/final methods: msg says which
 * placements would run it).
 */
shim_status shim_model_load(const struct shim_params *p, shim_model **out, char *msg,
                            size_t msg_len);

/* Frees a model and its modules; NULL is a no-op.  Tensors made from it must be freed first. */
void shim_model_free(shim_model *m);

/* The model's device as a static-lifetime string of the model ("cpu", "cuda:0"). */
const char *shim_model_device(const shim_model *m);

/* The model's placement (a shim_placement value; 0 when m is NULL). */
int shim_model_placement(const shim_model *m);

/*
 * The block schedule of the last shim_run_transformer under SHIM_PLACE_STREAM, as text:
 * space-separated events in the order they were issued, "F<i>" (block i's weights copied
 * to the device, on the side stream), "R<i>" (block i run), "E<i>" (block i's device copy
 * dropped).  Blocks are numbered double blocks first, then single blocks.  Writes at most
 * len bytes (NUL-terminated when len > 0) and returns the full length; "" for other
 * placements.  For tests and logs.
 */
size_t shim_stream_log(const shim_model *m, char *buf, size_t len);

/* Releases cached device memory (CUDA caching allocator); a no-op on the CPU. */
shim_status shim_release_cache(shim_model *m, char *msg, size_t msg_len);

/* Frees a tensor; NULL is a no-op. */
void shim_tensor_free(shim_tensor *t);

/*
 * Copies ndim <= 8 dimensions of host data (src_dtype SHIM_F32 or SHIM_I64, C order) to a
 * new tensor on the model's device, converted to dtype.  *out is set on success.
 */
shim_status shim_tensor_from_host(shim_model *m, const void *data, shim_dtype src_dtype,
                                  const int64_t *shape, int ndim, shim_dtype dtype,
                                  shim_tensor **out, char *msg, size_t msg_len);

/* A new (n,)-shaped tensor filled with v (rounded to dtype) on the model's device. */
shim_status shim_tensor_full(shim_model *m, double v, int64_t n, shim_dtype dtype,
                             shim_tensor **out, char *msg, size_t msg_len);

/* Number of dimensions (<= 8) into *ndim and sizes into shape[0..*ndim). */
void shim_tensor_shape(const shim_tensor *t, int64_t shape[8], int *ndim);

/* Number of elements. */
int64_t shim_tensor_numel(const shim_tensor *t);

/* The tensor's dtype (SHIM_F32, SHIM_BF16 or SHIM_I64; other dtypes never leave the shim). */
shim_dtype shim_tensor_dtype(const shim_tensor *t);

/*
 * Copies a tensor to the host as float32 into dst[0..n); n must equal its element count.
 * This synchronises with the device.
 */
shim_status shim_tensor_to_host(const shim_tensor *t, float *dst, size_t n, char *msg,
                                size_t msg_len);

/* A new tensor: t converted to dtype (on the same device). */
shim_status shim_tensor_cast(const shim_tensor *t, shim_dtype dtype, shim_tensor **out, char *msg,
                             size_t msg_len);

/*
 * Seeded standard-normal noise of the given shape, drawn on the CPU with libtorch's CPU
 * generator in dtype and then moved to the model's device: the same numbers as Python's
 * torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype).
 */
shim_status shim_randn(shim_model *m, uint64_t seed, const int64_t *shape, int ndim,
                       shim_dtype dtype, shim_tensor **out, char *msg, size_t msg_len);

/* FLUX latent packing: (B, C, 2h, 2w) -> (B, h*w, 4C), 'b c (h ph) (w pw) -> b (h w) (c ph pw)'. */
shim_status shim_pack(const shim_tensor *z, shim_tensor **out, char *msg, size_t msg_len);

/* The inverse of shim_pack for a latent grid of h x w packed positions (image H/16 x W/16). */
shim_status shim_unpack(const shim_tensor *x, int64_t h, int64_t w, shim_tensor **out, char *msg,
                        size_t msg_len);

/*
 * The Euler update of the sampler, in place and in float32: x += dt * float(v).  x must be a
 * float32 tensor and v the same shape.
 */
shim_status shim_euler_step(shim_tensor *x, const shim_tensor *v, float dt, char *msg,
                            size_t msg_len);

/* clip_text.pt: ids int64 (B, 77) -> pooled (B, hidden). */
shim_status shim_run_clip(shim_model *m, const shim_tensor *ids, shim_tensor **out, char *msg,
                          size_t msg_len);

/* t5_encoder.pt: ids int64 (B, L) -> hidden states (B, L, d_model). */
shim_status shim_run_t5(shim_model *m, const shim_tensor *ids, shim_tensor **out, char *msg,
                        size_t msg_len);

/* transformer.pt: the FLUX transformer (argument dtypes as in the model dir's manifest). */
shim_status shim_run_transformer(shim_model *m, const shim_tensor *img, const shim_tensor *img_ids,
                                 const shim_tensor *txt, const shim_tensor *txt_ids,
                                 const shim_tensor *timesteps, const shim_tensor *y,
                                 const shim_tensor *guidance, shim_tensor **out, char *msg,
                                 size_t msg_len);

/* ae_decoder.pt: raw latents (B, 16, H/8, W/8) -> RGB (B, 3, H, W). */
shim_status shim_run_ae(shim_model *m, const shim_tensor *z, shim_tensor **out, char *msg,
                        size_t msg_len);

/*
 * Device memory held by tensors on the model's device: *allocated now and *peak since the
 * model was loaded (or the last call with reset_peak).  Both are 0 on the CPU.
 */
shim_status shim_memory_stats(shim_model *m, int64_t *allocated, int64_t *peak, bool reset_peak,
                              char *msg, size_t msg_len);

/*
 * Blocks until the model's device (not the thread's current one) has finished its queued
 * work; a no-op on the CPU.  For timings.
 */
shim_status shim_sync(shim_model *m, char *msg, size_t msg_len);

/*
 * Makes the model's CUDA device the calling thread's current device, so that work which
 * follows the current device (synchronisation, a first CUDA context) lands on cuda:N and
 * not on GPU 0; a no-op on the CPU.  Cheap: call it whenever a thread starts using a model.
 */
shim_status shim_use_device(shim_model *m, char *msg, size_t msg_len);

/*
 * LoRA patches (core/lora.h reads the files; docs/architecture.md "LoRA adapters").  A patch
 * changes the weights of linear layers in place:
 *     W = dequant(original) + sum over the staged deltas of  scale * up @ down
 * computed in float32 on the model's device and written back in the layer's own format: the
 * compute dtype for plain weights; for quantised layers (export/fluxexport/quant.py) the
 * sum is requantised with the exporter's rules (int8 and fp8: one scale per row, absmax / 127
 * or / 448; int4: groups of 64 (32, 16) along the row, absmax / 7, codes + 8, two per byte,
 * low nibble first; scales rounded to their stored dtype first, codes made against the
 * rounded scale).  Requantising keeps the exported forward (which cannot take a separate
 * low-rank input without a re-export), its speed and its memory; the price is one more
 * rounding of the patched layers (measured in tests/bench/bench_lora.py).
 *
 * The first commit that touches a layer saves its original tensors (weight; qweight and
 * scale; packed and scale) into host memory, so the device never holds two copies;
 * shim_lora_restore copies them back bit for bit and drops them.  Every write is a copy_
 * into the existing tensor: pointers into it, and under SHIM_PLACE_STREAM the host blocks
 * that each fetch copies to the device, stay the same objects (a block prefetched to the
 * device is dropped first, so the next fetch copies the patched weights).
 *
 * Layers are named by their attribute path in the part's TorchScript module (the "layer"
 * of lora_map.json: "double_blocks.0.img_attn.qkv" in transformer.pt,
 * "text_model.encoder.layers.0.self_attn.q_proj" in clip_text.pt,
 * "encoder.block.0.layer.0.SelfAttention.q" in t5_encoder.pt).
 */
typedef enum shim_part {
    SHIM_PART_TRANSFORMER = 0,
    SHIM_PART_CLIP = 1,
    SHIM_PART_T5 = 2
} shim_part;

/* One delta: rows row0 .. row0 + rows of the layer's (out x in) weight change by
 * scale * up @ down; with swap, the delta's two halves along the rows trade places first
 * (canonical rows = cat(second half, first half)). */
struct shim_lora_delta {
    shim_part part;
    const char *layer;  /* attribute path of the linear layer in the part's module */
    int64_t out, in;    /* the layer's weight shape, checked against the module */
    int64_t row0, rows; /* 0 <= row0, 0 < rows, row0 + rows <= out; rows even with swap */
    bool swap;
    int64_t rank;      /* > 0 */
    float scale;       /* the strength times alpha / rank */
    const float *up;   /* rows x rank, row-major, float32, finite */
    const float *down; /* rank x in, row-major, float32, finite */
};

/*
 * Stages a delta for the next shim_lora_commit (deltas of one layer add up).  Checks that
 * the layer exists in the part's module as a linear layer of a known format and that the
 * shapes match.  The up and down arrays are borrowed: they must stay valid and unchanged
 * until shim_lora_commit or shim_lora_discard returns.  Nothing is written to the model.
 * Returns SHIM_OK, or SHIM_EINVAL (bad arguments, an unknown layer, a shape that differs:
 * msg names the layer).
 */
shim_status shim_lora_stage(shim_model *m, const struct shim_lora_delta *d, char *msg,
                            size_t msg_len);

/*
 * Applies every staged delta (then none is staged).  A layer patched by an earlier commit
 * and not restored since is patched again from its saved original (the deltas do not pile
 * up across commits).  On failure (SHIM_ENOMEM, SHIM_ERUNTIME...) every patched layer is
 * restored, the staged deltas are dropped and the model is as loaded.  Synchronous: the
 * weights are written when it returns.
 */
shim_status shim_lora_commit(shim_model *m, char *msg, size_t msg_len);

/*
 * Copies every saved original back into its tensor (bit-exact) and drops the saved copies.
 * Staged deltas stay staged: a caller stages the next set (which checks it against the
 * modules), restores the last one, then commits.  A no-op when nothing is patched.  Failing
 * (out of memory on the device side of a copy) leaves the layers it could not restore
 * patched and saved, so that a later call can finish.
 */
shim_status shim_lora_restore(shim_model *m, char *msg, size_t msg_len);

/* Drops the staged deltas without applying them; NULL is a no-op. */
void shim_lora_discard(shim_model *m);

/* What the patch state is: for tests and logs. */
struct shim_lora_stats {
    int64_t staged_deltas, staged_layers; /* waiting for a commit */
    int64_t patched_layers;               /* with a saved original */
    int64_t saved_bytes;                  /* host memory the saved originals hold */
};

/* Fills *s (all zero when m is NULL). */
void shim_lora_stats(const shim_model *m, struct shim_lora_stats *s);

#ifdef __cplusplus
}
#endif

#endif
