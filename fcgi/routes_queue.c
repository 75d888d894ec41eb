/* routes_queue.c - GET /queue/status[/{id}], GET /result/{id}, DELETE /queue/{id}. */
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

void route_queue_status(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                        struct api_response *rs)
{
    long counts[STORE_NSTATES];
    json_object *o;
    int rc = store_counts(st, counts);
    if (rc) {
        api_send_store_error(rs, rc, st);
        return;
    }
    o = json_object_new_object();
    for (int i = 0; i < STORE_NSTATES; i++)
        json_object_object_add(o, store_state_name((enum store_state)i),
                               json_object_new_int64(counts[i]));
    json_object_object_add(o, "capacity", json_object_new_int64(ctx->cfg->queue_size));
    json_object_object_add(o, "ready", json_object_new_boolean(api_ready(ctx)));
    if (who->key_id[0]) {
        /* the caller's key: its limits and what it used of them */
        struct store_key_usage u;
        if ((rc = store_key_usage(st, who->key_id, api_now_ms(), &u))) {
            json_object_put(o);
            api_send_store_error(rs, rc, st);
            return;
        }
        json_object_object_add(o, "key", access_usage_json(who, &u));
    }
    api_send_json(rs, 200, o);
}

void route_job_status(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                      const char *id, size_t id_len, struct api_response *rs)
{
    struct store_job j;
    if (api_load_job(st, who, id, id_len, rs, &j))
        return;
    api_send_json(rs, 200, api_job_status(ctx, &j));
    store_job_release(&j);
}

void route_result(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                  const char *id, size_t id_len, struct api_response *rs)
{
    struct store_job j;
    if (api_load_job(st, who, id, id_len, rs, &j))
        return;
    api_answer_result(ctx, st, rs, &j);
    store_job_release(&j);
}

void route_cancel(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                  const char *id, size_t id_len, struct api_response *rs)
{
    struct store_job j;
    enum store_state s = STORE_QUEUED;
    int rc;
    if (api_load_job(st, who, id, id_len, rs, &j))
        return;
    rc = store_cancel(st, j.id, api_now_ms(), &s);
    store_job_release(&j);
    if (rc == FX_EFINISHED) {
        if (api_load_job(st, who, id, id_len, rs, &j) == 0) {
            char m[128];
            snprintf(m, sizeof(m), "job '%s' is already %s", j.id,
                     store_state_name(api_visible_state(ctx, &j)));
            api_send_error_in(rs, FX_EFINISHED, api_job_status(ctx, &j), m);
            store_job_release(&j);
        }
        return;
    }
    if (rc) {
        api_send_store_error(rs, rc, st);
        return;
    }
    if (s == STORE_RUNNING)
        worker_cancel(ctx->worker, id);
    if (api_load_job(st, who, id, id_len, rs, &j))
        return;
    api_send_json(rs, s == STORE_RUNNING ? 202 : 200, api_job_status(ctx, &j));
    store_job_release(&j);
}
