/* routes_generate.c - POST /generate (waits for its job) and POST /generate/queue; queueing
 * and the parked answer shared by every generation route. */
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

/* Seconds until the next UTC midnight, when daily quotas start again. */
static long until_midnight(void)
{
    int64_t now = api_now_ms();
    return (long)((STORE_DAY_MS - now % STORE_DAY_MS + 999) / 1000);
}

/* 429 quota_exceeded for the limit of the key that refused the n image(s), with its usage. */
static void send_quota(struct store *st, const struct api_caller *who,
                       const struct store_key_usage *u, int n, struct api_response *rs)
{
    json_object *o = json_object_new_object();
    char m[256];
    long after;
    if (u->limit == STORE_LIMIT_QUEUED) {
        double mean = 0;
        store_mean_run_ms(st, &mean);
        after = (long)ceil(mean / 1000.0);
        after = after < 1 ? 1 : after > 3600 ? 3600 : after;
        if (n > 1)
            snprintf(m, sizeof(m),
                     "this API key has %ld queued jobs and may have %ld; %d more do not fit, "
                     "try again later",
                     u->queued, who->max_queued, n);
        else
            snprintf(m, sizeof(m), "this API key has %ld queued jobs, its most; try again later",
                     u->queued);
    } else {
        after = until_midnight();
        if (u->limit == STORE_LIMIT_IMAGES)
            snprintf(m, sizeof(m),
                     "this API key queued %ld of its %ld images of the day (UTC); %d more do "
                     "not fit",
                     u->images, who->daily_images, n);
        else
            snprintf(m, sizeof(m),
                     "this request would take the API key past its daily budget of %lld steps x "
                     "pixels (%lld used today, UTC)",
                     (long long)who->daily_budget, (long long)u->budget);
    }
    api_add_header(rs, "Retry-After", "%ld", after);
    json_object_object_add(o, "key", access_usage_json(who, u));
    api_send_error_in(rs, FX_EQUOTA, o, m);
}

int api_enqueue(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                struct api_gen *g, bool sync, bool group, const char *reply, struct api_queued *q,
                struct api_response *rs)
{
    struct store_new_job jobs[API_MAX_IMAGES];
    char *params[API_MAX_IMAGES] = {NULL};
    struct store_key_usage usage;
    int rc = 0;

    memset(q, 0, sizeof(*q));
    if (!api_ready(ctx)) {
        api_not_ready(ctx, rs);
        return FX_ENOTREADY;
    }
    if (g->n < 1 || g->n > API_MAX_IMAGES) {
        api_send_error(rs, FX_ERANGE, "n: must be from 1 to %d", API_MAX_IMAGES);
        return FX_ERANGE;
    }
    /* consecutive seeds from the one asked for (or a random one), wrapping at FX_SEED_MAX */
    if (!g->req.has_seed) {
        g->req.seed = fx_random_seed();
        g->req.has_seed = true;
    }
    q->n = g->n;
    if ((group || g->n > 1) && (rc = jobid_new(ctx->cfg->id_prefix, q->gid)) != 0) {
        api_send_error(rs, rc, "cannot create the job group");
        return rc;
    }
    for (int i = 0; i < g->n; i++) {
        struct fx_request r = g->req;
        r.seed = (g->req.seed + (uint64_t)i) % (FX_SEED_MAX + 1);
        q->seeds[i] = r.seed;
        params[i] = job_params_encode(&r);
        if (params[i] == NULL || (rc = jobid_new(ctx->cfg->id_prefix, q->ids[i])) != 0) {
            rc = params[i] ? rc : FX_ENOMEM;
            api_send_error(rs, rc, "cannot create the job");
            goto out;
        }
        jobs[i] = (struct store_new_job){q->ids[i], params[i], r.seed, r.steps};
    }
    /* each job records its key, its cost (one image's) against the key's budget and its
     * webhook (the request's, else the key's own); the key's limits count every image */
    struct store_owner owner = {
        who->key_id[0] ? who->key_id : NULL,
        who->max_queued,
        who->daily_images,
        who->daily_budget,
        (int64_t)g->req.steps * g->req.width * g->req.height,
        g->extra.webhook[0] ? g->extra.webhook
        : who->webhook[0]   ? who->webhook
                            : NULL,
        g->extra.webhook_progress,
    };
    rc =
        store_enqueue_group_owned(st, q->gid[0] ? q->gid : NULL, sync, reply, jobs, g->n,
                                  api_now_ms(), ctx->cfg->queue_size, &owner, &q->position, &usage);
    if (rc == FX_EQUOTA) {
        send_quota(st, who, &usage, g->n, rs);
        goto out;
    }
    if (rc == FX_EFULL) {
        double mean = 0;
        store_mean_run_ms(st, &mean);
        long after = (long)ceil(mean / 1000.0);
        api_add_header(rs, "Retry-After", "%ld", after < 1 ? 1 : after > 3600 ? 3600 : after);
        if (g->n > 1)
            api_send_error(rs, FX_EFULL,
                           "the queue cannot take %d more jobs (%ld at most); try again later",
                           g->n, ctx->cfg->queue_size);
        else
            api_send_error(rs, FX_EFULL, "the queue is full (%ld jobs); try again later",
                           ctx->cfg->queue_size);
        goto out;
    }
    if (rc) {
        api_send_store_error(rs, rc, st);
        goto out;
    }
    worker_notify(ctx->worker);
out:
    for (int i = 0; i < g->n; i++)
        free(params[i]);
    return rc;
}

char *api_reply_json(const char *api, const struct api_ignored *ig, json_object *extra)
{
    json_object *o = extra ? extra : json_object_new_object();
    char *s;
    if (api)
        json_object_object_add(o, "api", json_object_new_string(api));
    if (ig && ig->n)
        json_object_object_add(o, "ignored", json_object_new_string(ig->list));
    s = strdup(
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
    return s;
}

/* Reads the native body and queues it; has answered (and returns the error) when it cannot. */
static int enqueue_native(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                          const struct api_caller *who, struct api_response *rs, bool sync,
                          struct api_gen *g, struct api_queued *q)
{
    char msg[512] = "", *reply = NULL;
    const char *field = NULL;
    int rc;

    if (rq->body_too_large) {
        api_send_error(rs, FX_ETOOBIG, "the body is larger than %zu bytes", ctx->cfg->max_body);
        return FX_ETOOBIG;
    }
    rc = api_parse_native(ctx, rq->body, rq->body_len, g, &field, msg, sizeof(msg));
    if (rc) {
        if (rc == FX_ENOMEM)
            snprintf(msg, sizeof(msg), "out of memory");
        api_send_error(rs, rc, "%s", msg);
        goto out;
    }
    if (sync && g->n != 1) {
        api_send_error(rs, FX_EINVAL,
                       "n: POST /generate answers one image; ask POST /generate/queue, "
                       "/v1/images/generations or /sdapi/v1/txt2img for %d",
                       g->n);
        rc = FX_EINVAL;
        goto out;
    }
    /* a waiting client hears of ignored fields with its image, so the job keeps their names */
    if (g->ignored.n && (reply = api_reply_json("native", &g->ignored, NULL)) == NULL) {
        api_send_error(rs, FX_ENOMEM, "out of memory");
        rc = FX_ENOMEM;
        goto out;
    }
    rc = api_enqueue(ctx, st, who, g, sync, false, reply, q, rs);
out:
    if (g->ignored.n)
        api_add_header(rs, "X-Ignored-Fields", "%s", g->ignored.list);
    free(reply);
    return rc;
}

void route_generate_queue(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                          const struct api_caller *who, struct api_response *rs)
{
    struct api_gen g;
    struct api_queued q;
    char url[128];
    json_object *o, *p;

    api_gen_init(ctx, &g);
    if (enqueue_native(ctx, st, rq, who, rs, false, &g, &q)) {
        api_gen_release(&g);
        return;
    }
    o = json_object_new_object();
    p = json_object_new_object();
    json_object_object_add(o, "request_id", json_object_new_string(q.ids[0]));
    json_object_object_add(o, "status", json_object_new_string("queued"));
    json_object_object_add(o, "position", json_object_new_int64(q.position));
    json_object_object_add(p, "step", json_object_new_int(0));
    json_object_object_add(p, "steps", json_object_new_int(g.req.steps));
    json_object_object_add(o, "progress", p);
    json_object_object_add(o, "seed", json_object_new_int64((int64_t)q.seeds[0]));
    if (q.gid[0])
        snprintf(url, sizeof(url), "/queue/group/%s", q.gid);
    else
        snprintf(url, sizeof(url), "/queue/status/%s", q.ids[0]);
    json_object_object_add(o, "status_url", json_object_new_string(url));
    api_add_header(rs, "Location", "%s", url);
    snprintf(url, sizeof(url), "/result/%s", q.ids[0]);
    json_object_object_add(o, "result_url", json_object_new_string(url));
    if (q.gid[0]) {
        json_object *ids = json_object_new_array(), *seeds = json_object_new_array(),
                    *urls = json_object_new_array();
        for (int i = 0; i < q.n; i++) {
            json_object_array_add(ids, json_object_new_string(q.ids[i]));
            json_object_array_add(seeds, json_object_new_int64((int64_t)q.seeds[i]));
            snprintf(url, sizeof(url), "/result/%s", q.ids[i]);
            json_object_array_add(urls, json_object_new_string(url));
        }
        json_object_object_add(o, "group_id", json_object_new_string(q.gid));
        json_object_object_add(o, "request_ids", ids);
        json_object_object_add(o, "seeds", seeds);
        json_object_object_add(o, "result_urls", urls);
    }
    if (g.ignored.n) {
        json_object *a = json_object_new_array();
        char list[sizeof(g.ignored.list)], *save = NULL;
        snprintf(list, sizeof(list), "%s", g.ignored.list);
        for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
            json_object_array_add(a, json_object_new_string(t));
        json_object_object_add(o, "ignored_fields", a);
    }
    api_send_json(rs, 202, o);
    api_gen_release(&g);
}

/* The job is queued; the request is parked (the front end answers it through
 * api_generate_poll when the job ends, the wait runs out or the service stops), so waiting
 * holds no thread. */
void route_generate(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                    const struct api_caller *who, struct api_response *rs)
{
    struct api_gen g;
    struct api_queued q;

    api_gen_init(ctx, &g);
    if (enqueue_native(ctx, st, rq, who, rs, true, &g, &q) == 0)
        api_park(rs, q.ids[0]);
    api_gen_release(&g);
}

void api_park(struct api_response *rs, const char *id)
{
    /* headers set so far (X-Ignored-Fields) are the poll's to give: the job keeps them */
    rs->n_headers = 0;
    rs->park = true;
    snprintf(rs->park_id, sizeof(rs->park_id), "%s", id);
}

/* The ignored fields a job's reply names, as a header of rs. */
static void add_ignored_header(struct api_response *rs, const char *reply)
{
    json_object *o = reply ? json_tokener_parse(reply) : NULL, *v;
    if (o && json_object_object_get_ex(o, "ignored", &v) &&
        json_object_is_type(v, json_type_string))
        api_add_header(rs, "X-Ignored-Fields", "%s", json_object_get_string(v));
    json_object_put(o);
}

/* api_generate_poll less the CORS headers. */
static bool generate_poll(const struct api_ctx *ctx, struct store *st, const char *id,
                          enum api_poll why, struct api_response *rs)
{
    struct store_job j = {0};
    int rc;

    memset(rs, 0, sizeof(*rs));
    rc = store_get(st, id, &j);
    if (rc == 0 && j.group_id[0]) {
        /* a request for several images, or one made through the OpenAI or A1111 API */
        bool answered = api_group_poll(ctx, st, &j, why, rs);
        store_job_release(&j);
        return answered;
    }
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
    if (rc == 0)
        add_ignored_header(rs, j.reply);
    store_job_release(&j);
    if (rs->status != 200)
        api_add_header(rs, "X-Request-Id", "%s", id);
    return true;
}

bool api_generate_poll(const struct api_ctx *ctx, struct store *st, const char *id,
                       enum api_poll why, const struct api_events *ev, struct api_response *rs)
{
    if (!generate_poll(ctx, st, id, why, rs))
        return false;
    if (ev) /* the request's allowed origin, kept while it was parked */
        access_cors_headers(ctx, ev->cors, rs);
    return true;
}

bool api_group_poll(const struct api_ctx *ctx, struct store *st, const struct store_job *first,
                    enum api_poll why, struct api_response *rs)
{
    struct store_job *jobs = NULL;
    json_object *reply = first->reply ? json_tokener_parse(first->reply) : NULL, *v;
    const char *api = NULL;
    bool done = true;
    int n = 0, rc;

    if (reply && json_object_object_get_ex(reply, "api", &v) &&
        json_object_is_type(v, json_type_string))
        api = json_object_get_string(v);
    rc = store_group(st, first->group_id, &jobs, &n);
    if (rc == FX_EBUSY && why == API_POLL_CHECK) {
        json_object_put(reply);
        return false;
    }
    for (int i = 0; rc == 0 && i < n; i++)
        done = done && api_terminal(jobs[i].state);
    if (rc == 0 && !done && why == API_POLL_CHECK) {
        store_group_release(jobs, n);
        json_object_put(reply);
        return false; /* keep waiting */
    }
    if (rc) {
        api_send_store_error(rs, rc, st);
    } else if (!done && why == API_POLL_TIMEOUT) {
        api_send_error(rs, FX_ETIMEDOUT,
                       "not finished after %lld ms; the %d image(s) go on as group '%s' (GET "
                       "/queue/group/%s)",
                       (long long)ctx->cfg->sync_timeout_ms, n, first->group_id, first->group_id);
    } else if (!done) {
        api_send_error(rs, FX_ESHUTDOWN,
                       "the service is stopping; the group stays queued as '%s' (GET "
                       "/queue/group/%s)",
                       first->group_id, first->group_id);
    } else if (api && strcmp(api, "openai") == 0) {
        openai_answer(ctx, st, jobs, n, reply, rs);
    } else if (api && strcmp(api, "a1111") == 0) {
        a1111_answer(ctx, st, jobs, n, reply, rs);
    } else {
        api_answer_result(ctx, st, rs, &jobs[0]);
    }
    api_restyle_error(rs, api, NULL);
    api_add_header(rs, "X-Group-Id", "%s", first->group_id);
    add_ignored_header(rs, first->reply);
    store_group_release(jobs, n);
    json_object_put(reply);
    return true;
}
