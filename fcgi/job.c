/* job.c - job params to and from JSON. */
#include "job.h"

#include <json-c/json.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"
#include "../core/imgw.h"

char *job_params_encode(const struct fx_request *r)
{
    json_object *o = json_object_new_object();
    char *s = NULL;
    if (o == NULL)
        return NULL;
    if (json_object_object_add(o, "prompt",
                               json_object_new_string_len(r->prompt, (int)r->prompt_len)) ||
        json_object_object_add(o, "guidance_scale", json_object_new_double(r->guidance)) ||
        json_object_object_add(o, "num_inference_steps", json_object_new_int(r->steps)) ||
        json_object_object_add(o, "width", json_object_new_int(r->width)) ||
        json_object_object_add(o, "height", json_object_new_int(r->height)) ||
        json_object_object_add(o, "seed", json_object_new_int64((int64_t)r->seed)))
        goto out;
    /* PNG at the default is what every job before output formats ran: left out */
    const char *fmt = imgw_name((enum imgw_format)r->format);
    if (r->format != IMGW_PNG && fmt &&
        json_object_object_add(o, "output_format", json_object_new_string(fmt)))
        goto out;
    if (r->quality != 0 &&
        json_object_object_add(o, "output_quality", json_object_new_int(r->quality)))
        goto out;
    if (r->n_loras > 0) {
        json_object *a = json_object_new_array();
        if (a == NULL || json_object_object_add(o, "loras", a)) {
            json_object_put(a);
            goto out;
        }
        for (size_t i = 0; i < r->n_loras; i++) {
            json_object *e = json_object_new_object();
            if (e == NULL || json_object_array_add(a, e)) {
                json_object_put(e);
                goto out;
            }
            if (json_object_object_add(e, "name", json_object_new_string(r->loras[i].name)) ||
                json_object_object_add(e, "scale", json_object_new_double(r->loras[i].scale)))
                goto out;
        }
    }
    s = strdup(
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
out:
    json_object_put(o);
    return s;
}

static int get(json_object *o, const char *key, json_type type, json_object **v)
{
    if (!json_object_object_get_ex(o, key, v) || !json_object_is_type(*v, type))
        return FX_EFORMAT;
    return 0;
}

/* "loras": at most FX_LORA_MAX entries of a valid name and a finite scale in bounds, no name
 * twice. */
static int get_loras(json_object *a, struct job_loras *jl)
{
    size_t n;
    if (!json_object_is_type(a, json_type_array) || (n = json_object_array_length(a)) > FX_LORA_MAX)
        return FX_EFORMAT;
    jl->n = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(a, i), *nv, *sv;
        double s;
        if (!json_object_is_type(e, json_type_object) || get(e, "name", json_type_string, &nv) ||
            !json_object_object_get_ex(e, "scale", &sv) ||
            !(json_object_is_type(sv, json_type_double) || json_object_is_type(sv, json_type_int)))
            return FX_EFORMAT;
        s = json_object_get_double(sv);
        if (!lora_name_canon(json_object_get_string(nv), (size_t)json_object_get_string_len(nv),
                             jl->name[i]) ||
            !isfinite(s) || fabs(s) > FX_LORA_SCALE_MAX)
            return FX_EFORMAT;
        for (size_t k = 0; k < i; k++)
            if (strcmp(jl->name[k], jl->name[i]) == 0)
                return FX_EFORMAT;
        jl->lora[i] = (struct fx_lora){jl->name[i], NULL, s};
        jl->n = i + 1;
    }
    return 0;
}

int job_params_decode(const char *json, struct fx_request *r, char **prompt)
{
    return job_params_decode_ex(json, r, prompt, NULL);
}

int job_params_decode_ex(const char *json, struct fx_request *r, char **prompt,
                         struct job_loras *jl)
{
    json_object *o = json_tokener_parse(json), *v;
    int rc = FX_EFORMAT;
    *prompt = NULL;
    memset(r, 0, sizeof(*r));
    if (o == NULL || !json_object_is_type(o, json_type_object))
        goto out;
    if (get(o, "prompt", json_type_string, &v))
        goto out;
    r->prompt_len = (size_t)json_object_get_string_len(v);
    *prompt = malloc(r->prompt_len + 1);
    if (*prompt == NULL) {
        rc = FX_ENOMEM;
        goto out;
    }
    memcpy(*prompt, json_object_get_string(v), r->prompt_len + 1);
    r->prompt = *prompt;
    if (json_object_object_get_ex(o, "guidance_scale", &v) &&
        (json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int)))
        r->guidance = json_object_get_double(v);
    else
        goto out;
    if (get(o, "num_inference_steps", json_type_int, &v))
        goto out;
    r->steps = json_object_get_int(v);
    if (get(o, "width", json_type_int, &v))
        goto out;
    r->width = json_object_get_int(v);
    if (get(o, "height", json_type_int, &v))
        goto out;
    r->height = json_object_get_int(v);
    if (get(o, "seed", json_type_int, &v))
        goto out;
    r->seed = (uint64_t)json_object_get_int64(v);
    r->has_seed = true;
    if (json_object_object_get_ex(o, "output_format", &v)) {
        enum imgw_format f;
        if (!json_object_is_type(v, json_type_string) || !imgw_parse(json_object_get_string(v), &f))
            goto out;
        r->format = (int)f;
    }
    if (json_object_object_get_ex(o, "output_quality", &v)) {
        if (!json_object_is_type(v, json_type_int))
            goto out;
        r->quality = json_object_get_int(v);
    }
    if (json_object_object_get_ex(o, "loras", &v)) {
        struct job_loras scratch;
        struct job_loras *into = jl ? jl : &scratch;
        if (get_loras(v, into))
            goto out;
        if (jl) {
            r->loras = jl->lora;
            r->n_loras = jl->n;
        }
    } else if (jl) {
        jl->n = 0;
    }
    rc = 0;
out:
    json_object_put(o);
    if (rc) {
        free(*prompt);
        *prompt = NULL;
    }
    return rc;
}
