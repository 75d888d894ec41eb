/* routes_queue.c - GET /queue/status[/{id}], GET /result/{id}, DELETE /queue/{id}, and
 * GET / DELETE /queue/group/{gid}. */
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

/* Reads a group the caller may see: another key's group is FX_ENOENT, as an unknown id. */
static int load_group(struct store *st, const struct api_caller *who, const char *gid,
                      struct store_job **jobs, int *n)
{
    int rc = store_group(st, gid, jobs, n);
    if (rc == 0 && !who->admin && strcmp((*jobs)[0].key_id, who->key_id) != 0) {
        store_group_release(*jobs, *n);
        *jobs = NULL;
        *n = 0;
        rc = FX_ENOENT;
    }
    return rc;
}

void route_group(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                 const char *method, const char *gid, size_t gid_len, struct api_response *rs)
{
    struct store_job *jobs = NULL;
    char key[JOBID_MAX + 1];
    long cancelled = 0, flagged = 0;
    int n = 0, rc;

    if (!jobid_valid(gid, gid_len)) {
        api_send_error(rs, FX_EBADID,
                       "group id: must be %d lower-case hex digits, after an optional host part "
                       "of 1 to %d characters from [a-z0-9] and a '-'",
                       JOBID_LEN, JOBID_PREFIX_MAX);
        return;
    }
    memcpy(key, gid, gid_len);
    key[gid_len] = '\0';
    /* the owner's check comes first: another key's group is not cancelled, and is 404 */
    rc = load_group(st, who, key, &jobs, &n);
    if (rc == 0 && strcmp(method, "DELETE") == 0) {
        store_group_release(jobs, n);
        jobs = NULL;
        n = 0;
        rc = store_cancel_group(st, key, api_now_ms(), &cancelled, &flagged);
        if (rc == 0)
            rc = store_group(st, key, &jobs, &n);
    }
    if (rc == FX_ENOENT) {
        api_send_error(rs, rc, "no job group '%s'", key);
        return;
    }
    if (rc) {
        api_send_store_error(rs, rc, st);
        return;
    }
    if (strcmp(method, "DELETE") != 0) {
        api_send_json(rs, 200, api_group_status(ctx, jobs, n));
    } else if (cancelled + flagged == 0) {
        char m[160];
        snprintf(m, sizeof(m), "every job of group '%s' has already ended", key);
        api_send_error_in(rs, FX_EFINISHED, api_group_status(ctx, jobs, n), m);
    } else {
        /* the running ones stop between steps, as DELETE /queue/{id} */
        for (int i = 0; i < n; i++)
            if (jobs[i].state == STORE_RUNNING)
                worker_cancel(ctx->worker, jobs[i].id);
        api_send_json(rs, flagged ? 202 : 200, api_group_status(ctx, jobs, n));
    }
    store_group_release(jobs, n);
}
