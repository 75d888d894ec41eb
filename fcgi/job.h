/*
 * job.h - the params JSON stored with a job: the request with every default applied and the
 * seed resolved, so that a job re-run after a restart draws the same image.
 *
 *   {"prompt":"...","guidance_scale":3.5,"num_inference_steps":4,"width":256,"height":256,
 *    "seed":42,"output_format":"webp","output_quality":80}
 *
 * output_format and output_quality are written only when they are not the defaults (PNG, the
 * default quality), so a job queued before them reads the same; so is "loras" (the LoRAs by
 * name, resolved in lora_dir when the job runs), only when there are some:
 *    "loras":[{"name":"film-grain","scale":0.8}]
 * guidance_scale is written with 17 significant digits, so it reads back bit-identical.
 * Thread-safe.
 */
#ifndef FX_JOB_H
#define FX_JOB_H

#include "../core/lora.h"
#include "../core/pipeline.h"
#include "lora_dir.h"

/* Encodes r (prompt valid UTF-8 without NUL, has_seed set).  Returns malloc'd text, or
 * NULL when out of memory. */
char *job_params_encode(const struct fx_request *r);

/*
 * Decodes params into *r; r->prompt points at *prompt, a malloc'd copy the caller frees.
 * Returns 0, FX_EFORMAT (not the shape above) or FX_ENOMEM; *prompt is NULL on failure.
 */
int job_params_decode(const char *json, struct fx_request *r, char **prompt);

/* The LoRAs of decoded params: names (lora_dir.h's syntax, checked) and scales; path NULL. */
struct job_loras {
    struct fx_lora lora[FX_LORA_MAX];
    char name[FX_LORA_MAX][LORA_NAME_MAX + 1];
    size_t n;
};

/* job_params_decode that also reads "loras" into *jl (r->loras points at jl->lora).  With jl
 * NULL, "loras" is checked but r->loras stays NULL (job_params_decode). */
int job_params_decode_ex(const char *json, struct fx_request *r, char **prompt,
                         struct job_loras *jl);

#endif
