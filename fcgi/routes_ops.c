/* routes_ops.c - GET /ping (liveness, readiness) and GET /metrics (Prometheus text). */
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/err.h"
#include "api_int.h"

void route_ping(const struct api_ctx *ctx, struct api_response *rs)
{
    json_object *o = json_object_new_object();
    int r = ctx->readiness ? atomic_load(ctx->readiness) : WORKER_LOADING;
    const char *status = r == WORKER_READY     ? "ok"
                         : r == WORKER_LOADING ? "loading"
                         : r == WORKER_FAILED  ? "failed"
                                               : "stopping";
    json_object_object_add(o, "status", json_object_new_string(status));
    json_object_object_add(o, "ready", json_object_new_boolean(r == WORKER_READY));
    json_object_object_add(o, "model", json_object_new_string(ctx->model_name));
    json_object_object_add(o, "device",
                           r == WORKER_READY && ctx->worker
                               ? json_object_new_string(worker_device(ctx->worker))
                               : NULL);
    json_object_object_add(o, "placement",
                           r == WORKER_READY && ctx->worker
                               ? json_object_new_string(worker_placement(ctx->worker))
                               : NULL);
    json_object_object_add(o, "weights",
                           r == WORKER_READY && ctx->worker
                               ? json_object_new_string(worker_weights(ctx->worker))
                               : NULL);
    if (ctx->worker) {
        /* readiness is unchanged: new jobs are still accepted, and the retried outcome is
         * stored once the disk or the lock is back */
        char why[256];
        bool ok = worker_store_status(ctx->worker, why, sizeof(why));
        json_object_object_add(o, "store_ok", json_object_new_boolean(ok));
        if (!ok)
            json_object_object_add(o, "store_error", json_object_new_string(why));
    }
    if (r == WORKER_FAILED && ctx->worker)
        json_object_object_add(o, "error",
                               api_error_object(FX_ENOTREADY, worker_error(ctx->worker)));
    api_send_json(rs, r == WORKER_FAILED ? 503 : 200, o);
}

void route_metrics(const struct api_ctx *ctx, struct store *st, struct api_response *rs)
{
    struct metrics_extra x = {{0}, ctx->cfg->queue_size, api_ready(ctx), NULL, NULL};
    struct fx_metrics empty;
    size_t len = 0;
    int rc = store_counts(st, x.by_state);
    if (rc) {
        api_send_store_error(rs, rc, st);
        return;
    }
    if (x.ready && ctx->worker) {
        x.placement = worker_placement(ctx->worker);
        x.weights = worker_weights(ctx->worker);
    }
    if (ctx->metrics == NULL)
        metrics_init(&empty);
    rs->body = metrics_render(ctx->metrics ? ctx->metrics : &empty, &x, &len);
    if (ctx->metrics == NULL)
        metrics_release(&empty);
    if (rs->body == NULL) {
        api_send_error(rs, FX_ENOMEM, "out of memory");
        return;
    }
    {
        /* usage and limits per API key, from the store like the job counts */
        size_t klen = 0;
        char *keys = access_metrics(ctx, st, &klen), *all;
        if (keys && (all = realloc(rs->body, len + klen + 1)) != NULL) {
            memcpy(all + len, keys, klen + 1);
            rs->body = all;
            len += klen;
        }
        free(keys);
    }
    rs->status = 200;
    rs->content_type = CT_PROM;
    rs->body_len = len;
}
