/* routes_a1111.c - the subset of the AUTOMATIC1111 / Forge web UI API (/sdapi/v1/...) that
 * FLUX uses and that front-ends such as Open WebUI and SillyTavern call to connect and to
 * draw: txt2img, progress, interrupt, options and the model / sampler lists. */
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/err.h"
#include "../core/imgw.h"
#include "../core/version.h"
#include "api_int.h"
#include "job.h"

/*
 * The fields of POST /sdapi/v1/txt2img; the order is enum a1111_field's.  Up to
 * A1F_EFFECT they change the image; the others are what front-ends send for Stable
 * Diffusion and are accepted without effect (FLUX.1-dev has no negative prompt, one
 * sampler, no hires fix).  distilled_cfg_scale (Forge's name for FLUX's guidance) wins over
 * cfg_scale; without either the service's default guidance applies.  LoRAs come as A1111
 * writes them, <lora:NAME:SCALE> in the prompt (taken out of the text that is drawn), and
 * from the native `loras` field (an extension), together.
 */
enum a1111_field {
    A1F_PROMPT,
    A1F_WIDTH,
    A1F_HEIGHT,
    A1F_STEPS,
    A1F_CFG,
    A1F_DISTILLED,
    A1F_SEED,
    A1F_BATCH,
    A1F_ITER,
    A1F_SEND,
    A1F_LORAS,
    A1F_EFFECT, /* the rest: accepted, no effect */
    A1F_NEGATIVE = A1F_EFFECT,
    A1F_SAMPLER,
    A1F_SAMPLER_INDEX,
    A1F_SCHEDULER,
    A1F_SAVE,
    A1F_OVERRIDE,
    A1F_OVERRIDE_RESTORE,
    A1F_RESTORE_FACES,
    A1F_TILING,
    A1F_ENABLE_HR,
    A1F_DENOISING,
    A1F_STYLES,
    A1F_SUBSEED,
    A1F_SUBSEED_STRENGTH,
    A1F_NO_SAVE_SAMPLES,
    A1F_NO_SAVE_GRID,
    A1F_COUNT
};
const char *const api_a1111_fields[A1F_COUNT + 1] = {"prompt",
                                                     "width",
                                                     "height",
                                                     "steps",
                                                     "cfg_scale",
                                                     "distilled_cfg_scale",
                                                     "seed",
                                                     "batch_size",
                                                     "n_iter",
                                                     "send_images",
                                                     "loras",
                                                     "negative_prompt",
                                                     "sampler_name",
                                                     "sampler_index",
                                                     "scheduler",
                                                     "save_images",
                                                     "override_settings",
                                                     "override_settings_restore_afterwards",
                                                     "restore_faces",
                                                     "tiling",
                                                     "enable_hr",
                                                     "denoising_strength",
                                                     "styles",
                                                     "subseed",
                                                     "subseed_strength",
                                                     "do_not_save_samples",
                                                     "do_not_save_grid",
                                                     NULL};

struct a1111_req {
    int batch_size, n_iter;
    bool send_images;
    double cfg_scale;
    bool has_distilled, has_cfg;
    double distilled;
    char *negative;
    char *prompt_sent; /* the prompt with its <lora:...> tags; NULL: it had none */
};

static int parse(const struct api_ctx *ctx, const struct api_request *rq, struct api_gen *g,
                 struct a1111_req *a, const char **param, char *msg, size_t msg_len)
{
    json_object *o = NULL;
    int64_t iv = 0;
    size_t nlen = 0;
    int rc;

    api_gen_init(ctx, g);
    rc = api_parse_object(rq->body, rq->body_len, &o, param, msg, msg_len);
    if (rc)
        return rc;
    json_object_object_foreach(o, key, v)
    {
        int f = api_field_index(api_a1111_fields, key);
        if (f < 0) {
            api_ignored_add(&g->ignored, key);
            continue;
        }
        if (json_object_is_type(v, json_type_null) && f != A1F_PROMPT)
            continue;
        switch ((enum a1111_field)f) {
        case A1F_PROMPT:
            rc = api_get_prompt(v, key, &g->prompt, &g->req.prompt_len, param, msg, msg_len);
            g->req.prompt = g->prompt;
            break;
        case A1F_WIDTH:
        case A1F_HEIGHT:
        case A1F_STEPS:
            rc = api_get_int(v, key, INT_MIN, INT_MAX, &iv, param, msg, msg_len);
            *(f == A1F_WIDTH    ? &g->req.width
              : f == A1F_HEIGHT ? &g->req.height
                                : &g->req.steps) = (int)iv;
            break;
        case A1F_CFG:
            rc = api_get_number(v, key, &a->cfg_scale, param, msg, msg_len);
            a->has_cfg = true;
            break;
        case A1F_DISTILLED:
            rc = api_get_number(v, key, &a->distilled, param, msg, msg_len);
            a->has_distilled = true;
            break;
        case A1F_SEED:
            rc = api_get_seed(v, key, &g->req.seed, &g->req.has_seed, param, msg, msg_len);
            break;
        case A1F_BATCH:
        case A1F_ITER:
            rc = api_get_int(v, key, 1, API_MAX_IMAGES, &iv, param, msg, msg_len);
            *(f == A1F_BATCH ? &a->batch_size : &a->n_iter) = (int)iv;
            break;
        case A1F_SEND:
            a->send_images = json_object_get_boolean(v);
            break;
        case A1F_LORAS:
            rc = api_get_loras(v, key, g, param, msg, msg_len);
            break;
        case A1F_NEGATIVE:
            /* kept for the info JSON that front-ends show; FLUX.1-dev does not use it */
            if (!json_object_is_type(v, json_type_string))
                rc = fx_fail(msg, msg_len, FX_EINVAL, "negative_prompt: must be a string");
            else
                rc = api_get_prompt(v, key, &a->negative, &nlen, param, msg, msg_len);
            break;
        default:
            break; /* accepted without effect, whatever its value */
        }
        if (rc) {
            *param = api_a1111_fields[f];
            goto out;
        }
    }
    if (g->req.prompt == NULL) {
        *param = "prompt";
        rc = fx_fail(msg, msg_len, FX_EINVAL, "prompt: required");
        goto out;
    }
    /* "parameters" echoes the prompt as sent, tags included, as A1111 does */
    if (strstr(g->prompt, "<lora:") || strstr(g->prompt, "<lyco:")) {
        a->prompt_sent = strdup(g->prompt);
        if (a->prompt_sent == NULL) {
            rc = FX_ENOMEM;
            goto out;
        }
        if ((rc = api_prompt_loras(g, msg, msg_len)) != 0) {
            *param = "prompt";
            goto out;
        }
    }
    if (a->has_distilled)
        g->req.guidance = a->distilled;
    else if (a->has_cfg)
        g->req.guidance = a->cfg_scale;
    if ((int64_t)a->batch_size * a->n_iter > API_MAX_IMAGES) {
        *param = "batch_size";
        rc = fx_fail(msg, msg_len, FX_ERANGE, "batch_size: batch_size * n_iter must be at most %d",
                     API_MAX_IMAGES);
        goto out;
    }
    g->n = a->batch_size * a->n_iter;
    rc = api_validate(ctx, g, param, msg, msg_len);
    /* the message names the field as this API calls it */
    const char *ours = rc ? *param : NULL;
    if (ours && strcmp(ours, "num_inference_steps") == 0)
        *param = "steps";
    if (ours && strcmp(ours, "guidance_scale") == 0)
        *param = a->has_distilled ? "distilled_cfg_scale" : "cfg_scale";
    if (ours && *param != ours && strncmp(msg, ours, strlen(ours)) == 0) {
        char tmp[512];
        snprintf(tmp, sizeof(tmp), "%s%s", *param, msg + strlen(ours));
        snprintf(msg, msg_len, "%s", tmp);
    }
    if (rc == 0 && (rc = api_check_loras(ctx, g, msg, msg_len)) != 0)
        *param = "loras";
out:
    json_object_put(o);
    if (rc)
        api_gen_release(g);
    return rc;
}

/* What the answer's "parameters" echoes: the request as it runs. */
static json_object *parameters(const struct api_gen *g, const struct a1111_req *a)
{
    json_object *p = json_object_new_object();
    json_object_object_add(p, "prompt",
                           json_object_new_string(a->prompt_sent ? a->prompt_sent : g->prompt));
    json_object_object_add(p, "negative_prompt",
                           json_object_new_string(a->negative ? a->negative : ""));
    json_object_object_add(p, "width", json_object_new_int(g->req.width));
    json_object_object_add(p, "height", json_object_new_int(g->req.height));
    json_object_object_add(p, "steps", json_object_new_int(g->req.steps));
    json_object_object_add(p, "cfg_scale", json_object_new_double(a->has_cfg ? a->cfg_scale : 1));
    json_object_object_add(p, "distilled_cfg_scale", json_object_new_double(g->req.guidance));
    json_object_object_add(p, "seed", json_object_new_int64((int64_t)g->req.seed));
    json_object_object_add(p, "batch_size", json_object_new_int(a->batch_size));
    json_object_object_add(p, "n_iter", json_object_new_int(a->n_iter));
    json_object_object_add(p, "sampler_name", json_object_new_string("Euler"));
    json_object_object_add(p, "scheduler", json_object_new_string("Simple"));
    json_object_object_add(p, "send_images", json_object_new_boolean(a->send_images));
    return p;
}

void route_a1111_txt2img(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                         const struct api_caller *who, struct api_response *rs)
{
    struct api_gen g;
    struct api_queued q;
    struct a1111_req a = {1, 1, true, 1.0, false, false, 0, NULL, NULL};
    char msg[512] = "", *reply = NULL;
    const char *param = NULL;
    int rc;

    api_gen_init(ctx, &g);
    if (rq->body_too_large) {
        api_send_error(rs, FX_ETOOBIG, "the body is larger than %zu bytes", ctx->cfg->max_body);
        goto out;
    }
    rc = parse(ctx, rq, &g, &a, &param, msg, sizeof(msg));
    if (rc) {
        api_send_error(rs, rc, "%s", rc == FX_ENOMEM ? "out of memory" : msg);
        goto out;
    }
    /* the seed is resolved now so that "parameters" shows the one that runs */
    if (!g.req.has_seed) {
        g.req.seed = fx_random_seed();
        g.req.has_seed = true;
    }
    json_object *extra = json_object_new_object();
    json_object_object_add(extra, "parameters", parameters(&g, &a));
    reply = api_reply_json("a1111", &g.ignored, extra);
    if (reply == NULL) {
        api_send_error(rs, FX_ENOMEM, "out of memory");
        goto out;
    }
    if (api_enqueue(ctx, st, who, &g, true, true, reply, &q, rs) == 0)
        api_park(rs, q.ids[0]);
out:
    api_restyle_error(rs, "a1111", param);
    if (g.ignored.n && !rs->park)
        api_add_header(rs, "X-Ignored-Fields", "%s", g.ignored.list);
    free(reply);
    free(a.negative);
    free(a.prompt_sent);
    api_gen_release(&g);
}

/* A job's params as A1111's infotext.  Its LoRAs go back into the prompt as A1111 keeps
 * them there, <lora:NAME:SCALE>, so that a front-end's "reuse parameters" asks for them
 * again. */
static char *infotext(const struct api_ctx *ctx, const struct store_job *j)
{
    struct fx_request r;
    struct job_loras jl;
    char *prompt = NULL, *s = NULL, *full = NULL;
    if (job_params_decode_ex(j->params, &r, &prompt, &jl) == 0) {
        size_t len = strlen(prompt), cap = len + 1 + jl.n * (LORA_NAME_MAX + 40);
        full = malloc(cap);
        if (full) {
            memcpy(full, prompt, len + 1);
            for (size_t i = 0; i < jl.n; i++)
                len += (size_t)snprintf(full + len, cap - len, " <lora:%s:%g>", jl.name[i],
                                        jl.lora[i].scale);
            struct imgw_gen gen = {full,
                                   r.steps,
                                   r.width,
                                   r.height,
                                   r.guidance,
                                   r.seed,
                                   ctx->model_name,
                                   NULL,
                                   "fluxcgi " FX_VERSION};
            s = imgw_a1111_text(&gen);
        }
    }
    free(full);
    free(prompt);
    return s;
}

void a1111_answer(const struct api_ctx *ctx, struct store *st, const struct store_job *jobs, int n,
                  json_object *reply, struct api_response *rs)
{
    json_object *o, *images, *info, *p = NULL, *v, *seeds, *texts, *prompts, *negs;
    bool send = true;
    char stamp[32];
    struct tm tm;
    time_t t = (time_t)(jobs[0].created_ms / 1000);

    for (int i = 0; i < n; i++)
        if (api_visible_state(ctx, &jobs[i]) != STORE_COMPLETED) {
            api_answer_result(ctx, st, rs, &jobs[i]);
            return;
        }
    if (json_object_object_get_ex(reply, "parameters", &p) &&
        json_object_object_get_ex(p, "send_images", &v))
        send = json_object_get_boolean(v);
    o = json_object_new_object();
    images = json_object_new_array();
    info = json_object_new_object();
    seeds = json_object_new_array();
    texts = json_object_new_array();
    prompts = json_object_new_array();
    negs = json_object_new_array();
    for (int i = 0; i < n; i++) {
        char *text = infotext(ctx, &jobs[i]);
        json_object_array_add(seeds, json_object_new_int64((int64_t)jobs[i].seed));
        json_object_array_add(texts, json_object_new_string(text ? text : ""));
        free(text);
        if (p && json_object_object_get_ex(p, "prompt", &v))
            json_object_array_add(prompts, json_object_get(v));
        if (p && json_object_object_get_ex(p, "negative_prompt", &v))
            json_object_array_add(negs, json_object_get(v));
        if (!send)
            continue;
        uint8_t *img = NULL;
        size_t len = 0;
        int rc = store_result(st, jobs[i].id, &img, &len);
        char *b64 = rc == 0 ? api_base64(img, len) : NULL;
        free(img);
        if (b64 == NULL) {
            json_object_put(o);
            json_object_put(images);
            json_object_put(info);
            json_object_put(seeds);
            json_object_put(texts);
            json_object_put(prompts);
            json_object_put(negs);
            if (rc == FX_ENOENT)
                api_send_error(rs, FX_EEXPIRED, "the result of job '%s' was deleted", jobs[i].id);
            else
                api_send_store_error(rs, rc ? rc : FX_ENOMEM, st);
            return;
        }
        json_object_array_add(images, json_object_new_string(b64));
        free(b64);
    }
    /* the info JSON as A1111 writes it (a string inside the answer): what Open WebUI and
     * SillyTavern read back */
    static const char *const copy[] = {"prompt",       "negative_prompt", "width",
                                       "height",       "steps",           "cfg_scale",
                                       "batch_size",   "n_iter",          "distilled_cfg_scale",
                                       "sampler_name", "scheduler"};
    for (size_t i = 0; p && i < sizeof(copy) / sizeof(copy[0]); i++)
        if (json_object_object_get_ex(p, copy[i], &v))
            json_object_object_add(info, copy[i], json_object_get(v));
    json_object_object_add(info, "all_prompts", prompts);
    json_object_object_add(info, "all_negative_prompts", negs);
    json_object_object_add(info, "seed", json_object_new_int64((int64_t)jobs[0].seed));
    json_object_object_add(info, "all_seeds", seeds);
    json_object_object_add(info, "subseed", json_object_new_int(-1));
    json_object_object_add(info, "all_subseeds", json_object_new_array());
    json_object_object_add(info, "subseed_strength", json_object_new_int(0));
    json_object_object_add(info, "sd_model_name",
                           json_object_new_string(ctx->model_name ? ctx->model_name : ""));
    json_object_object_add(info, "sd_model_hash", NULL);
    json_object_object_add(info, "restore_faces", json_object_new_boolean(0));
    json_object_object_add(info, "index_of_first_image", json_object_new_int(0));
    json_object_object_add(info, "infotexts", texts);
    json_object_object_add(info, "styles", json_object_new_array());
    gmtime_r(&t, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%d%H%M%S", &tm);
    json_object_object_add(info, "job_timestamp", json_object_new_string(stamp));
    json_object_object_add(info, "clip_skip", json_object_new_int(1));
    json_object_object_add(info, "version", json_object_new_string("fluxcgi " FX_VERSION));
    json_object_object_add(info, "request_ids", json_object_new_array());
    json_object *ids;
    json_object_object_get_ex(info, "request_ids", &ids);
    for (int i = 0; i < n; i++)
        json_object_array_add(ids, json_object_new_string(jobs[i].id));
    json_object_object_add(info, "group_id", json_object_new_string(jobs[0].group_id));
    json_object_object_add(o, "images", images);
    json_object_object_add(o, "parameters", p ? json_object_get(p) : json_object_new_object());
    json_object_object_add(o, "info",
                           json_object_new_string(json_object_to_json_string_ext(
                               info, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)));
    json_object_put(info);
    api_send_json(rs, 200, o);
}

/* The running job queued first that the caller may see (any for an admin): A1111's current
 * job, which another key's job must not be. */
static int current_job(struct store *st, const struct api_caller *who, struct store_job *j)
{
    return store_running_first_of(st, who->admin ? NULL : who->key_id, j);
}

void route_a1111_progress(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                          struct api_response *rs)
{
    struct store_job j;
    long counts[STORE_NSTATES];
    json_object *o = json_object_new_object(), *s = json_object_new_object();
    (void)ctx;
    int rc = store_counts(st, counts);
    bool running = false;
    double progress = 0, eta = 0;

    if (rc == 0) {
        rc = current_job(st, who, &j);
        running = rc == 0;
        if (rc == FX_ENOENT)
            rc = 0;
    }
    if (rc) {
        json_object_put(o);
        json_object_put(s);
        api_send_store_error(rs, rc, st);
        api_restyle_error(rs, "a1111", NULL);
        return;
    }
    if (running && j.steps > 0) {
        progress = (double)j.step / j.steps;
        /* from this job's own pace so far */
        double ran = (double)(api_now_ms() - j.started_ms) / 1000.0;
        if (j.step > 0 && ran > 0)
            eta = ran / j.step * (j.steps - j.step);
    }
    json_object_object_add(s, "skipped", json_object_new_boolean(0));
    json_object_object_add(s, "interrupted", json_object_new_boolean(running && j.cancel));
    json_object_object_add(s, "stopping_generation", json_object_new_boolean(0));
    json_object_object_add(s, "job", json_object_new_string(running ? j.id : ""));
    json_object_object_add(s, "job_count",
                           json_object_new_int64(counts[STORE_QUEUED] + counts[STORE_RUNNING]));
    json_object_object_add(s, "job_timestamp", json_object_new_string("0"));
    json_object_object_add(s, "job_no", json_object_new_int(0));
    json_object_object_add(s, "sampling_step", json_object_new_int(running ? j.step : 0));
    json_object_object_add(s, "sampling_steps", json_object_new_int(running ? j.steps : 0));
    json_object_object_add(o, "progress", json_object_new_double(progress));
    json_object_object_add(o, "eta_relative", json_object_new_double(eta));
    json_object_object_add(o, "state", s);
    json_object_object_add(o, "current_image", NULL);
    json_object_object_add(o, "textinfo", NULL);
    json_object_object_add(o, "current_task", running ? json_object_new_string(j.id) : NULL);
    if (running)
        store_job_release(&j);
    api_send_json(rs, 200, o);
}

/* A1111 stops "the current job": here the running job queued first. */
void route_a1111_interrupt(const struct api_ctx *ctx, struct store *st,
                           const struct api_caller *who, struct api_response *rs)
{
    struct store_job j;
    enum store_state s = STORE_QUEUED;
    int rc = current_job(st, who, &j);
    if (rc == 0) {
        rc = store_cancel(st, j.id, api_now_ms(), &s);
        if (rc == 0 && s == STORE_RUNNING)
            worker_cancel(ctx->worker, j.id);
        store_job_release(&j);
        if (rc == FX_EFINISHED) /* it ended meanwhile */
            rc = 0;
    } else if (rc == FX_ENOENT) {
        rc = 0; /* nothing to stop */
    }
    if (rc) {
        api_send_store_error(rs, rc, st);
        api_restyle_error(rs, "a1111", NULL);
        return;
    }
    api_send_json(rs, 200, json_object_new_object());
}

static json_object *options(const struct api_ctx *ctx)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "sd_model_checkpoint",
                           json_object_new_string(ctx->model_name ? ctx->model_name : ""));
    json_object_object_add(o, "sd_checkpoint_hash", NULL);
    json_object_object_add(o, "sd_vae", json_object_new_string("Automatic"));
    json_object_object_add(o, "samples_format", json_object_new_string("png"));
    json_object_object_add(o, "CLIP_stop_at_last_layers", json_object_new_int(1));
    json_object_object_add(o, "forge_preset", json_object_new_string("flux"));
    return o;
}

void route_a1111_info(const struct api_ctx *ctx, const char *method, const char *what,
                      struct api_response *rs)
{
    const char *name = ctx->model_name ? ctx->model_name : "";
    json_object *a = json_object_new_array(), *e = json_object_new_object();
    if (strcmp(what, "options") == 0) {
        json_object_put(a);
        json_object_put(e);
        if (strcmp(method, "POST") == 0) {
            /* settings are the operator's (fluxcgi.conf): accepted, nothing changes; A1111
             * answers null */
            rs->status = 200;
            rs->content_type = CT_JSON;
            rs->body = strdup("null");
            rs->body_len = rs->body ? 4 : 0;
            return;
        }
        api_send_json(rs, 200, options(ctx));
        return;
    }
    if (strcmp(what, "sd-models") == 0) {
        json_object_object_add(e, "title", json_object_new_string(name));
        json_object_object_add(e, "model_name", json_object_new_string(name));
        json_object_object_add(e, "hash", NULL);
        json_object_object_add(e, "sha256", NULL);
        json_object_object_add(e, "filename", json_object_new_string(name));
        json_object_object_add(e, "config", NULL);
    } else if (strcmp(what, "samplers") == 0) {
        json_object *al = json_object_new_array();
        json_object_array_add(al, json_object_new_string("k_euler"));
        json_object_object_add(e, "name", json_object_new_string("Euler"));
        json_object_object_add(e, "aliases", al);
        json_object_object_add(e, "options", json_object_new_object());
    } else if (strcmp(what, "schedulers") == 0) {
        json_object_object_add(e, "name", json_object_new_string("simple"));
        json_object_object_add(e, "label", json_object_new_string("Simple"));
        json_object_object_add(e, "aliases", NULL);
        json_object_object_add(e, "default_rho", json_object_new_int(-1));
        json_object_object_add(e, "need_inner_model", json_object_new_boolean(0));
    } else {
        /* upscalers, latent-upscale-modes, sd-vae, prompt-styles: none here (loras:
         * routes_loras.c) */
        json_object_put(e);
        e = NULL;
    }
    if (e)
        json_object_array_add(a, e);
    api_send_json(rs, 200, a);
}
