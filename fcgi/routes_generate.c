/* routes_generate.c - POST /generate (waits for its job) and POST /generate/queue. */
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
#include "job.h"

/* Validates the body and queues it; on success fills id/seed/position and returns 0, else
 * has answered already and returns the error. */
/* Seconds until the next UTC midnight, when daily quotas start again. */
static long until_midnight(void)
{
    int64_t now = api_now_ms();
    return (long)((STORE_DAY_MS - now % STORE_DAY_MS + 999) / 1000);
}

/* 429 quota_exceeded for the limit of the key that refused the job, with its usage. */
static void send_quota(struct store *st, const struct api_caller *who,
                       const struct store_key_usage *u, struct api_response *rs)
{
    json_object *o = json_object_new_object();
    char m[256];
    long after;
    if (u->limit == STORE_LIMIT_QUEUED) {
        double mean = 0;
        store_mean_run_ms(st, &mean);
        after = (long)ceil(mean / 1000.0);
        after = after < 1 ? 1 : after > 3600 ? 3600 : after;
        snprintf(m, sizeof(m), "this API key has %ld queued jobs, its most; try again later",
                 u->queued);
    } else {
        after = until_midnight();
        if (u->limit == STORE_LIMIT_IMAGES)
            snprintf(m, sizeof(m), "this API key queued its %ld images of the day (UTC)",
                     who->daily_images);
        else
            snprintf(m, sizeof(m),
                     "this job would take the API key past its daily budget of %lld steps x "
                     "pixels (%lld used today, UTC)",
                     (long long)who->daily_budget, (long long)u->budget);
    }
    api_add_header(rs, "Retry-After", "%ld", after);
    json_object_object_add(o, "key", access_usage_json(who, u));
    api_send_error_in(rs, FX_EQUOTA, o, m);
}

static int enqueue(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                   const struct api_caller *who, struct api_response *rs, bool sync,
                   char id[JOBID_MAX + 1], uint64_t *seed, long *position, int *steps)
{
    struct fx_request req;
    struct api_job_extra extra;
    struct store_key_usage usage;
    char *prompt = NULL, *params = NULL, msg[512] = "";
    const char *field = NULL;
    int rc;

    if (rq->body_too_large) {
        api_send_error(rs, FX_ETOOBIG, "the body is larger than %zu bytes", ctx->cfg->max_body);
        return FX_ETOOBIG;
    }
    rc = api_parse_generate_ex(ctx, rq->body, rq->body_len, &req, &prompt, &extra, &field, msg,
                               sizeof(msg));
    if (rc) {
        if (rc == FX_ENOMEM)
            snprintf(msg, sizeof(msg), "out of memory");
        api_send_error(rs, rc, "%s", msg);
        goto out;
    }
    if (!api_ready(ctx)) {
        api_not_ready(ctx, rs);
        rc = FX_ENOTREADY;
        goto out;
    }
    if (!req.has_seed) {
        req.seed = fx_random_seed();
        req.has_seed = true;
    }
    params = job_params_encode(&req);
    if (params == NULL || (rc = jobid_new(ctx->cfg->id_prefix, id)) != 0) {
        rc = params ? rc : FX_ENOMEM;
        api_send_error(rs, rc, "cannot create the job");
        goto out;
    }
    /* the job records its key, its cost against the key's budget and its webhook (the
     * request's, else the key's own) */
    struct store_owner owner = {
        who->key_id[0] ? who->key_id : NULL,
        who->max_queued,
        who->daily_images,
        who->daily_budget,
        (int64_t)req.steps * req.width * req.height,
        extra.webhook[0]  ? extra.webhook
        : who->webhook[0] ? who->webhook
                          : NULL,
        extra.webhook_progress,
    };
    rc = store_enqueue_owned(st, id, sync, params, req.seed, req.steps, api_now_ms(),
                             ctx->cfg->queue_size, &owner, position, &usage);
    if (rc == FX_EQUOTA) {
        send_quota(st, who, &usage, rs);
        goto out;
    }
    if (rc == FX_EFULL) {
        double mean = 0;
        store_mean_run_ms(st, &mean);
        long after = (long)ceil(mean / 1000.0);
        api_add_header(rs, "Retry-After", "%ld", after < 1 ? 1 : after > 3600 ? 3600 : after);
        api_send_error(rs, FX_EFULL, "the queue is full (%ld jobs); try again later",
                       ctx->cfg->queue_size);
        goto out;
    }
    if (rc) {
        api_send_store_error(rs, rc, st);
        goto out;
    }
    *seed = req.seed;
    *steps = req.steps;
    worker_notify(ctx->worker);
out:
    free(params);
    free(prompt);
    return rc;
}

void route_generate_queue(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                          const struct api_caller *who, struct api_response *rs)
{
    char id[JOBID_MAX + 1], url[96];
    uint64_t seed = 0;
    long position = 0;
    int steps = 0;
    json_object *o, *p;

    if (enqueue(ctx, st, rq, who, rs, false, id, &seed, &position, &steps))
        return;
    o = json_object_new_object();
    p = json_object_new_object();
    json_object_object_add(o, "request_id", json_object_new_string(id));
    json_object_object_add(o, "status", json_object_new_string("queued"));
    json_object_object_add(o, "position", json_object_new_int64(position));
    json_object_object_add(p, "step", json_object_new_int(0));
    json_object_object_add(p, "steps", json_object_new_int(steps));
    json_object_object_add(o, "progress", p);
    json_object_object_add(o, "seed", json_object_new_int64((int64_t)seed));
    snprintf(url, sizeof(url), "/queue/status/%s", id);
    json_object_object_add(o, "status_url", json_object_new_string(url));
    api_add_header(rs, "Location", "%s", url);
    snprintf(url, sizeof(url), "/result/%s", id);
    json_object_object_add(o, "result_url", json_object_new_string(url));
    api_send_json(rs, 202, o);
}

/* The job is queued; the request is parked (the front end answers it through
 * api_generate_poll when the job ends, the wait runs out or the service stops), so waiting
 * holds no thread. */
void route_generate(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                    const struct api_caller *who, struct api_response *rs)
{
    char id[JOBID_MAX + 1];
    uint64_t seed = 0;
    long position = 0;
    int steps = 0;

    if (enqueue(ctx, st, rq, who, rs, true, id, &seed, &position, &steps))
        return;
    rs->park = true;
    snprintf(rs->park_id, sizeof(rs->park_id), "%s", id);
}

bool api_generate_poll(const struct api_ctx *ctx, struct store *st, const char *id,
                       enum api_poll why, const struct api_events *ev, struct api_response *rs)
{
    struct store_job j = {0};
    int rc;

    memset(rs, 0, sizeof(*rs));
    rc = store_get(st, id, &j);
    if (rc == 0 && api_terminal(j.state)) {
        api_answer_result(ctx, st, rs, &j);
    } else if (rc && rc != FX_EBUSY) {
        api_send_store_error(rs, rc, st);
    } else if (why == API_POLL_TIMEOUT) {
        api_send_error(rs, FX_ETIMEDOUT,
                       "not finished after %lld ms; the job goes on as '%s' (GET /result/%s)",
                       (long long)ctx->cfg->sync_timeout_ms, id, id);
    } else if (why == API_POLL_STOPPING) {
        api_send_error(rs, FX_ESHUTDOWN,
                       "the service is stopping; the job stays queued as '%s' (GET /result/%s)", id,
                       id);
    } else {
        store_job_release(&j);
        return false; /* still queued or running (or the store is busy): keep waiting */
    }
    store_job_release(&j);
    if (rs->status != 200)
        api_add_header(rs, "X-Request-Id", "%s", id);
    if (ev)
        access_cors_headers(ctx, ev->cors, rs);
    return true;
}
