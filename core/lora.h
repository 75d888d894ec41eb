/*
 * lora.h - LoRA adapters: reading their files in the layouts users download, mapping their
 * keys onto the exported modules' linear layers, and validating them before any weight is
 * touched.  No libtorch here: the service's request threads check LoRAs with it, and the
 * pipeline hands the validated factors to the shim (shim/shim.h), which patches the weights.
 *
 * A LoRA changes the weight W (out x in) of a linear layer by
 *     delta = scale * (alpha / rank) * up @ down,   down: rank x in,  up: out x rank
 * where scale is the caller's strength, alpha the file's own (alpha = rank when the file has
 * none) and rank the down matrix's first dimension.
 *
 * Layouts (the key names of one adapted layer; docs/architecture.md "LoRA adapters"):
 *   kohya      lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight / .lora_up.weight /
 *              .alpha; lora_te1_* (CLIP), lora_te2_* (T5)
 *   diffusers  transformer.transformer_blocks.0.attn.to_q.lora_A.weight / .lora_B.weight
 *              (PEFT; .alpha optional); text_encoder.* (CLIP), text_encoder_2.* (T5)
 *   bfl        diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight / .lora_B.weight
 *              (BFL / ComfyUI; .alpha optional); text_encoders.clip_l.transformer.*,
 *              text_encoders.t5xxl.transformer.*
 * Which names exist, which rows of a fused layer a diffusers name covers (q, k, v of a fused
 * qkv; the four parts of a single block's linear1) and which need their two halves swapped
 * (the final layer's shift/scale) come from the model dir's lora_map.json, which the exporter
 * writes from the same rule tables its checkpoint readers use.  The key prefixes and the
 * down/up/alpha suffixes are listed there too.
 *
 * Strictness: every key of the file must be accounted for (an unknown key is an error that
 * names it), every adapted layer needs both its down and up matrices with matching ranks and
 * the layer's shapes, a layer may be adapted only once per file (two names for the same rows
 * are an error), values must be finite, dtypes F32, F16 or BF16 (alpha: any float, or an
 * integer, holding one value), and the file must be a well-formed safetensors file
 * (core/safetensors.h: bounds-checked header and offsets).
 */
#ifndef FX_LORA_H
#define FX_LORA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Most LoRAs one request may use, and the bound on |scale|. */
#define FX_LORA_MAX 8
#define FX_LORA_SCALE_MAX 16.0
/* The largest rank accepted, and the most down + up elements one file may hold (float32:
 * 4 bytes each once read). */
#define FX_LORA_RANK_MAX 4096
#define FX_LORA_PARAMS_MAX ((int64_t)1 << 31)

/* One LoRA asked for by a request. */
struct fx_lora {
    const char *name; /* as the user named it: for metadata and messages */
    const char *path; /* the file to read */
    double scale;     /* the strength, finite, |scale| <= FX_LORA_SCALE_MAX */
};

/* The modules a LoRA may adapt. */
enum fx_lora_part { FX_LORA_TRANSFORMER = 0, FX_LORA_CLIP = 1, FX_LORA_T5 = 2 };

/* The adaptable layers of one model dir, read from its lora_map.json. */
struct fx_lora_map;

/*
 * Reads model_dir/lora_map.json.  Returns 0 and sets *out (free with fx_lora_map_free), or
 * FX_ENOTSUP (the model dir has none: it was exported before LoRA support; msg says to
 * re-export), FX_EFORMAT (a bad map: msg names the field), FX_EIO, FX_ENOMEM.  The map is
 * read-only after loading and may be shared between threads.  Every field the format defines
 * is checked (types, ranges, names of [A-Za-z0-9_.], diffusers rows inside the layer and not
 * overlapping, an even row count where swapped, no two layers with the same key name in any
 * layout); fields it does not define are ignored, and a layer without "diffusers" has no
 * diffusers names.
 */
int fx_lora_map_load(const char *model_dir, struct fx_lora_map **out, char *msg, size_t msg_len);
void fx_lora_map_free(struct fx_lora_map *m);

/* What a LoRA file holds, from its header alone. */
struct fx_lora_info {
    char layout[16]; /* "kohya", "diffusers" or "bfl" (the first key's; files may mix) */
    int layers;      /* adapted (layer, rows) entries */
    int rank_min, rank_max;
    bool text_encoders; /* adapts CLIP or T5 */
    int64_t params;     /* elements of all down and up matrices */
};

/*
 * Checks a LoRA file against the map from its header alone (keys, dtypes, shapes, offsets,
 * ranks; of the data only each alpha's one value is read): cheap enough for a request
 * thread.  Returns 0 and fills *info (may be NULL), or FX_ENOENT, FX_EIO, FX_EFORMAT (msg
 * names the key and the reason; unknown keys: the first three and how many more), FX_ETOOBIG
 * (a rank over FX_LORA_RANK_MAX is FX_EFORMAT; more than FX_LORA_PARAMS_MAX elements, or a
 * header over FX_ST_HEADER_MAX, FX_ETOOBIG), FX_ENOMEM.  Messages name the file by its base
 * name, never its directory (they may reach HTTP clients).  Thread-safe.
 */
int fx_lora_check(const struct fx_lora_map *map, const char *path, struct fx_lora_info *info,
                  char *msg, size_t msg_len);

/* One adapted layer of a read LoRA file. */
struct fx_lora_entry {
    enum fx_lora_part part;
    const char *layer;  /* the exported module's layer path: "double_blocks.0.img_attn.qkv" */
    int64_t out, in;    /* the layer's weight shape */
    int64_t row0, rows; /* the rows of the weight this entry changes */
    bool swap;          /* the delta's two halves along the rows trade places: weight row row0 + r
                         * takes delta row (r + rows / 2) % rows (diffusers' norm_out.linear) */
    int64_t rank;
    float factor;      /* alpha / rank (1 when the file has no alpha) */
    const float *down; /* rank x in, row-major, float32 */
    const float *up;   /* rows x rank, row-major, float32 */
};

struct fx_lora_file;

/*
 * Reads and fully validates a LoRA file (fx_lora_check, then every value finite), its down
 * and up matrices converted to float32.  Returns 0 and sets *out (free with
 * fx_lora_file_free), or the errors of fx_lora_check (a NaN or infinity: FX_EFORMAT naming
 * the key and the index).  Nothing outside *out is changed.  Entries come in the map's
 * order of layers, a layer's diffusers rows from the top; they own their strings (the map
 * may be freed first).  The file is read twice: the matrices, then all bytes for the
 * sha256.  Thread-safe.
 */
int fx_lora_read(const struct fx_lora_map *map, const char *path, struct fx_lora_file **out,
                 char *msg, size_t msg_len);
void fx_lora_file_free(struct fx_lora_file *f);

/* The entries of a read file, and its info.  Borrowed: they live as long as f. */
size_t fx_lora_file_count(const struct fx_lora_file *f);
const struct fx_lora_entry *fx_lora_file_entry(const struct fx_lora_file *f, size_t i);
const struct fx_lora_info *fx_lora_file_info(const struct fx_lora_file *f);
/* The sha256 of the file's bytes, 64 lower-case hex digits. */
const char *fx_lora_file_sha256(const struct fx_lora_file *f);

#endif
