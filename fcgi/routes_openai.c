/* routes_openai.c - the OpenAI Images API: POST /v1/images/generations (and GET /v1/models),
 * so that OpenAI's own client libraries and the tools built on them work unchanged. */
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"
#include "../core/imgw.h"
#include "api_int.h"
#include "job.h"

/* The fields of POST /v1/images/generations; the order is enum openai_field's.  The last
 * four are FLUX's own (extensions: an OpenAI client sends them as extra body fields); model,
 * quality, style, background, moderation and user are accepted for compatibility and change nothing
 * (one model serves). */
enum openai_field {
    OF_PROMPT,
    OF_MODEL,
    OF_N,
    OF_SIZE,
    OF_QUALITY,
    OF_RESPONSE_FORMAT,
    OF_OUTPUT_FORMAT,
    OF_OUTPUT_COMPRESSION,
    OF_STYLE,
    OF_BACKGROUND,
    OF_MODERATION,
    OF_USER,
    OF_SEED,
    OF_GUIDANCE,
    OF_STEPS,
    OF_LORAS,
    OF_COUNT
};
const char *const api_openai_fields[OF_COUNT + 1] = {"prompt",
                                                     "model",
                                                     "n",
                                                     "size",
                                                     "quality",
                                                     "response_format",
                                                     "output_format",
                                                     "output_compression",
                                                     "style",
                                                     "background",
                                                     "moderation",
                                                     "user",
                                                     "seed",
                                                     "guidance_scale",
                                                     "num_inference_steps",
                                                     "loras",
                                                     NULL};

static const char *const response_formats[] = {"b64_json", "url", NULL};
static const char *const qualities[] = {"auto", "standard", "hd", "low", "medium", "high", NULL};
static const char *const styles[] = {"vivid", "natural", NULL};
static const char *const backgrounds[] = {"auto", "opaque", "transparent", NULL};
static const char *const moderations[] = {"auto", "low", NULL};

/* "WIDTHxHEIGHT" or "auto" (the defaults). */
static int get_size(json_object *v, struct fx_request *r, const char **field, char *msg,
                    size_t msg_len)
{
    const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
    char *end;
    long w, h;
    *field = "size";
    if (s && strcmp(s, "auto") == 0)
        return 0;
    if (s == NULL || *s < '0' || *s > '9')
        goto bad;
    w = strtol(s, &end, 10);
    if (*end != 'x' || end[1] < '0' || end[1] > '9')
        goto bad;
    h = strtol(end + 1, &end, 10);
    if (*end != '\0' || w > INT_MAX || h > INT_MAX)
        goto bad;
    r->width = (int)w;
    r->height = (int)h;
    return 0;
bad:
    return fx_fail(msg, msg_len, FX_EINVAL,
                   "size: must be \"WIDTHxHEIGHT\" (e.g. \"1024x1024\") or "
                   "\"auto\"");
}

/* Reads the body into g and the reply's options into *rf (response_format index); on error
 * *param names the field. */
static int parse(const struct api_ctx *ctx, const struct api_request *rq, struct api_gen *g,
                 int *rf, const char **param, char *msg, size_t msg_len)
{
    json_object *o = NULL;
    int64_t iv = 0;
    int rc, ix = 0;

    api_gen_init(ctx, g);
    rc = api_parse_object(rq->body, rq->body_len, &o, param, msg, msg_len);
    if (rc)
        return rc;
    json_object_object_foreach(o, key, v)
    {
        int f = api_field_index(api_openai_fields, key);
        if (f < 0) {
            api_ignored_add(&g->ignored, key);
            continue;
        }
        if (json_object_is_type(v, json_type_null) && f != OF_PROMPT)
            continue;
        switch ((enum openai_field)f) {
        case OF_PROMPT:
            rc = api_get_prompt(v, key, &g->prompt, &g->req.prompt_len, param, msg, msg_len);
            g->req.prompt = g->prompt;
            break;
        case OF_N:
            rc = api_get_int(v, key, 1, API_MAX_IMAGES, &iv, param, msg, msg_len);
            g->n = (int)iv;
            break;
        case OF_SIZE:
            rc = get_size(v, &g->req, param, msg, msg_len);
            break;
        case OF_RESPONSE_FORMAT:
            rc = api_get_enum(v, key, response_formats, rf, param, msg, msg_len);
            break;
        case OF_OUTPUT_FORMAT:
            rc = api_get_format(v, key, &g->req.format, param, msg, msg_len);
            break;
        case OF_OUTPUT_COMPRESSION:
            /* OpenAI's 0..100 "compression level" is the encoder's quality (0 is its lowest) */
            rc = api_get_int(v, key, 0, 100, &iv, param, msg, msg_len);
            g->req.quality = iv < 1 ? 1 : (int)iv;
            break;
        case OF_QUALITY:
            rc = api_get_enum(v, key, qualities, &ix, param, msg, msg_len);
            break;
        case OF_STYLE:
            rc = api_get_enum(v, key, styles, &ix, param, msg, msg_len);
            break;
        case OF_BACKGROUND:
            rc = api_get_enum(v, key, backgrounds, &ix, param, msg, msg_len);
            break;
        case OF_MODERATION:
            rc = api_get_enum(v, key, moderations, &ix, param, msg, msg_len);
            break;
        case OF_MODEL:
        case OF_USER:
            if (!json_object_is_type(v, json_type_string))
                rc = fx_fail(msg, msg_len, FX_EINVAL, "%s: must be a string", key);
            break;
        case OF_SEED:
            rc = api_get_seed(v, key, &g->req.seed, &g->req.has_seed, param, msg, msg_len);
            break;
        case OF_GUIDANCE:
            rc = api_get_number(v, key, &g->req.guidance, param, msg, msg_len);
            break;
        case OF_STEPS:
            rc = api_get_int(v, key, INT_MIN, INT_MAX, &iv, param, msg, msg_len);
            g->req.steps = (int)iv;
            break;
        case OF_LORAS:
            rc = api_get_loras(v, key, g, param, msg, msg_len);
            break;
        case OF_COUNT:
            break;
        }
        if (rc) {
            /* the key belongs to o, freed below: name the field from the table */
            *param = api_openai_fields[f];
            goto out;
        }
    }
    if (g->req.prompt == NULL) {
        *param = "prompt";
        rc = fx_fail(msg, msg_len, FX_EINVAL, "prompt: required");
        goto out;
    }
    rc = api_validate(ctx, g, param, msg, msg_len);
    if (rc && *param && (strcmp(*param, "width") == 0 || strcmp(*param, "height") == 0))
        *param = "size";
    if (rc && *param && strcmp(*param, "output_quality") == 0)
        *param = "output_compression";
    if (rc == 0 && (rc = api_check_loras(ctx, g, msg, msg_len)) != 0)
        *param = "loras";
out:
    json_object_put(o);
    if (rc)
        api_gen_release(g);
    return rc;
}

void route_openai_images(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                         const struct api_caller *who, struct api_response *rs)
{
    struct api_gen g;
    struct api_queued q;
    char msg[512] = "", size[32], *reply = NULL;
    const char *param = NULL;
    int rf = 0, rc;

    api_gen_init(ctx, &g);
    if (rq->body_too_large) {
        api_send_error(rs, FX_ETOOBIG, "the body is larger than %zu bytes", ctx->cfg->max_body);
        goto out;
    }
    rc = parse(ctx, rq, &g, &rf, &param, msg, sizeof(msg));
    if (rc) {
        api_send_error(rs, rc, "%s", rc == FX_ENOMEM ? "out of memory" : msg);
        goto out;
    }
    json_object *extra = json_object_new_object();
    snprintf(size, sizeof(size), "%dx%d", g.req.width, g.req.height);
    json_object_object_add(extra, "response_format", json_object_new_string(response_formats[rf]));
    json_object_object_add(extra, "output_format",
                           json_object_new_string(imgw_name((enum imgw_format)g.req.format)));
    json_object_object_add(extra, "size", json_object_new_string(size));
    reply = api_reply_json("openai", &g.ignored, extra);
    if (reply == NULL) {
        api_send_error(rs, FX_ENOMEM, "out of memory");
        goto out;
    }
    /* always a group, so that the poll finds the reply and every image */
    if (api_enqueue(ctx, st, who, &g, true, true, reply, &q, rs) == 0)
        api_park(rs, q.ids[0]);
out:
    api_restyle_error(rs, "openai", param);
    if (g.ignored.n && !rs->park)
        api_add_header(rs, "X-Ignored-Fields", "%s", g.ignored.list);
    free(reply);
    api_gen_release(&g);
}

void openai_answer(const struct api_ctx *ctx, struct store *st, const struct store_job *jobs, int n,
                   json_object *reply, struct api_response *rs)
{
    json_object *o, *data, *v;
    bool url = false;

    /* OpenAI answers all the images or an error: the first job without one says why */
    for (int i = 0; i < n; i++)
        if (api_visible_state(ctx, &jobs[i]) != STORE_COMPLETED) {
            api_answer_result(ctx, st, rs, &jobs[i]);
            return;
        }
    if (json_object_object_get_ex(reply, "response_format", &v))
        url = strcmp(json_object_get_string(v), "url") == 0;
    o = json_object_new_object();
    data = json_object_new_array();
    json_object_object_add(o, "created", json_object_new_int64(jobs[0].created_ms / 1000));
    for (int i = 0; i < n; i++) {
        json_object *d = json_object_new_object();
        char buf[96];
        if (url) {
            snprintf(buf, sizeof(buf), "/result/%s", jobs[i].id);
            json_object_object_add(d, "url", json_object_new_string(buf));
        } else {
            uint8_t *img = NULL;
            size_t len = 0;
            int rc = store_result(st, jobs[i].id, &img, &len);
            char *b64 = rc == 0 ? api_base64(img, len) : NULL;
            free(img);
            if (b64 == NULL) {
                json_object_put(d);
                json_object_put(o);
                json_object_put(data);
                if (rc == FX_ENOENT) /* expired between the two reads */
                    api_send_error(rs, FX_EEXPIRED, "the result of job '%s' was deleted",
                                   jobs[i].id);
                else
                    api_send_store_error(rs, rc ? rc : FX_ENOMEM, st);
                return;
            }
            json_object_object_add(d, "b64_json", json_object_new_string(b64));
            free(b64);
        }
        json_object_array_add(data, d);
    }
    json_object_object_add(o, "data", data);
    if (json_object_object_get_ex(reply, "output_format", &v))
        json_object_object_add(o, "output_format", json_object_get(v));
    if (json_object_object_get_ex(reply, "size", &v))
        json_object_object_add(o, "size", json_object_get(v));
    api_send_json(rs, 200, o);
}

void route_openai_models(const struct api_ctx *ctx, struct api_response *rs)
{
    json_object *o = json_object_new_object(), *a = json_object_new_array(),
                *m = json_object_new_object();
    json_object_object_add(m, "id", json_object_new_string(ctx->model_name ? ctx->model_name : ""));
    json_object_object_add(m, "object", json_object_new_string("model"));
    json_object_object_add(m, "created", json_object_new_int(0));
    json_object_object_add(m, "owned_by", json_object_new_string("fluxcgi"));
    json_object_array_add(a, m);
    json_object_object_add(o, "object", json_object_new_string("list"));
    json_object_object_add(o, "data", a);
    api_send_json(rs, 200, o);
}
