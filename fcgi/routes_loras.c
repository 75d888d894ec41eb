/* routes_loras.c - GET /loras: the LoRA files of lora_dir, each checked against the model
 * (fcgi/lora_dir.h); GET /sdapi/v1/loras: the usable ones in A1111's shape.  Both read the
 * directory and every file's header, so they run on a handler thread (api_needs_store). */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"
#include "api_int.h"

/* One file as GET /loras lists it. */
static json_object *entry_json(const struct lora_entry *e)
{
    json_object *o = json_object_new_object();
    char file[LORA_NAME_MAX + 16];
    snprintf(file, sizeof(file), "%s%s", e->name, LORA_SUFFIX);
    json_object_object_add(o, "name", json_object_new_string(e->name));
    json_object_object_add(o, "file", json_object_new_string(file));
    json_object_object_add(o, "bytes", json_object_new_int64(e->bytes));
    json_object_object_add(o, "modified_at", api_iso_time(e->modified_ms));
    json_object_object_add(o, "ok", json_object_new_boolean(e->rc == 0));
    if (e->rc == 0) {
        json_object_object_add(o, "layout", json_object_new_string(e->info.layout));
        json_object_object_add(o, "layers", json_object_new_int(e->info.layers));
        json_object_object_add(o, "rank_min", json_object_new_int(e->info.rank_min));
        json_object_object_add(o, "rank_max", json_object_new_int(e->info.rank_max));
        json_object_object_add(o, "text_encoders", json_object_new_boolean(e->info.text_encoders));
        json_object_object_add(o, "params", json_object_new_int64(e->info.params));
        json_object_object_add(o, "error", NULL);
    } else {
        json_object_object_add(o, "error", api_error_object(e->rc, e->error));
    }
    return o;
}

/* A1111's shape (sd-webui's extensions-builtin/Lora): name, alias, path, metadata; the path
 * is left out, the server's folders are nobody's business. */
static json_object *a1111_json(const struct lora_entry *e)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(e->name));
    json_object_object_add(o, "alias", json_object_new_string(e->name));
    json_object_object_add(o, "metadata", json_object_new_object());
    return o;
}

void route_loras(const struct api_ctx *ctx, bool a1111, struct api_response *rs)
{
    const char *dir = ctx->cfg ? ctx->cfg->lora_dir : "";
    struct lora_entry *e = NULL;
    size_t n = 0;
    bool truncated = false;
    char msg[512] = "";
    json_object *o, *a;
    int rc;

    if (dir[0] == '\0') {
        if (a1111) {
            api_send_json(rs, 200, json_object_new_array());
            return;
        }
        o = json_object_new_object();
        json_object_object_add(o, "enabled", json_object_new_boolean(0));
        json_object_object_add(o, "loras", json_object_new_array());
        json_object_object_add(o, "count", json_object_new_int(0));
        json_object_object_add(o, "truncated", json_object_new_boolean(0));
        api_send_json(rs, 200, o);
        return;
    }
    rc = lora_dir_list(dir, ctx->lora_map, ctx->lora_map_error, &e, &n, &truncated, msg,
                       sizeof(msg));
    if (rc) {
        api_send_error(rs, rc, "%s", rc == FX_ENOMEM ? "out of memory" : msg);
        if (a1111)
            api_restyle_error(rs, "a1111", NULL);
        return;
    }
    a = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        if (!a1111)
            json_object_array_add(a, entry_json(&e[i]));
        else if (e[i].rc == 0) /* only what a prompt may use */
            json_object_array_add(a, a1111_json(&e[i]));
    }
    free(e);
    if (a1111) {
        api_send_json(rs, 200, a);
        return;
    }
    o = json_object_new_object();
    json_object_object_add(o, "enabled", json_object_new_boolean(1));
    json_object_object_add(o, "loras", a);
    json_object_object_add(o, "count", json_object_new_int((int)n));
    json_object_object_add(o, "truncated", json_object_new_boolean(truncated));
    json_object_object_add(o, "max_loras", json_object_new_int(FX_LORA_MAX));
    json_object_object_add(o, "max_scale", json_object_new_double(FX_LORA_SCALE_MAX));
    if (ctx->lora_map == NULL)
        json_object_object_add(o, "error",
                               api_error_object(FX_ELORA_OFF, ctx->lora_map_error
                                                                  ? ctx->lora_map_error
                                                                  : "the model has no LoRA map"));
    api_send_json(rs, 200, o);
}
