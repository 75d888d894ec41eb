/* routes_docs.c - GET /openapi.json: the OpenAPI 3.1 document of every route (fcgi/openapi.json,
 * embedded at build time), with the live bounds and defaults of the model and config filled
 * in, so that what it says is what this service does.  (GET /docs, the viewer, is static
 * files that the web server serves: conf/docs/.) */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"
#include "../core/version.h"
#include "api_int.h"

/* fcgi/openapi.json as a C string (build/gen/fcgi/openapi_json.c, written by the Makefile). */
extern const char api_openapi_template[];

/*
 * A schema marked "x-bounds": "size" | "steps" | "guidance" gets minimum / maximum (and
 * multipleOf for sizes) from ctx->limits; one marked "x-default": "width" | "height" |
 * "steps" | "guidance" gets its default from ctx->defaults.  The marks are removed.
 */
static void fill(const struct api_ctx *ctx, json_object *o)
{
    json_object *v;
    if (json_object_is_type(o, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(o); i++)
            fill(ctx, json_object_array_get_idx(o, i));
        return;
    }
    if (!json_object_is_type(o, json_type_object))
        return;
    if (json_object_object_get_ex(o, "x-bounds", &v)) {
        const char *b = json_object_get_string(v);
        const struct fx_limits *l = &ctx->limits;
        if (strcmp(b, "size") == 0) {
            json_object_object_add(o, "minimum", json_object_new_int(l->min_size));
            json_object_object_add(o, "maximum", json_object_new_int(l->max_size));
            json_object_object_add(o, "multipleOf", json_object_new_int(l->multiple_of));
        } else if (strcmp(b, "steps") == 0) {
            json_object_object_add(o, "minimum", json_object_new_int(1));
            json_object_object_add(o, "maximum", json_object_new_int(l->max_steps));
        } else if (strcmp(b, "guidance") == 0) {
            json_object_object_add(o, "minimum", json_object_new_double(l->min_guidance));
            json_object_object_add(o, "maximum", json_object_new_double(l->max_guidance));
        }
        json_object_object_del(o, "x-bounds");
    }
    if (json_object_object_get_ex(o, "x-default", &v)) {
        const char *d = json_object_get_string(v);
        const struct fx_request *r = &ctx->defaults;
        json_object *val = strcmp(d, "width") == 0    ? json_object_new_int(r->width)
                           : strcmp(d, "height") == 0 ? json_object_new_int(r->height)
                           : strcmp(d, "steps") == 0  ? json_object_new_int(r->steps)
                                                      : json_object_new_double(r->guidance);
        json_object_object_add(o, "default", val);
        json_object_object_del(o, "x-default");
    }
    json_object_object_foreach(o, key, child)
    {
        (void)key;
        fill(ctx, child);
    }
}

void route_openapi(const struct api_ctx *ctx, struct api_response *rs)
{
    json_object *doc = json_tokener_parse(api_openapi_template), *info;
    if (doc == NULL) {
        api_send_error(rs, FX_EINTERNAL, "the OpenAPI document is not valid JSON");
        return;
    }
    fill(ctx, doc);
    if (json_object_object_get_ex(doc, "info", &info)) {
        json_object_object_add(info, "version", json_object_new_string(FX_VERSION));
        json_object_object_add(info, "x-model",
                               json_object_new_string(ctx->model_name ? ctx->model_name : ""));
    }
    api_send_json(rs, 200, doc);
}
