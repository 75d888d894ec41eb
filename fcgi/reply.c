/* reply.c - answers of the HTTP API: JSON bodies, errors, the status view of a job, images. */
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/err.h"
#include "../core/imgw.h"
#include "api_int.h"

#include "../core/manifest.h"

/* ---- responses ---------------------------------------------------------------------------- */

void api_add_header(struct api_response *rs, const char *name, const char *fmt, ...)
{
    va_list ap;
    if (rs->n_headers >= API_MAX_HEADERS)
        return;
    struct api_header *h = &rs->headers[rs->n_headers++];
    snprintf(h->name, sizeof(h->name), "%s", name);
    va_start(ap, fmt);
    vsnprintf(h->value, sizeof(h->value), fmt, ap);
    va_end(ap);
}

/* Takes ownership of o (may be NULL: then a fixed out-of-memory body). */
void api_send_json(struct api_response *rs, int status, json_object *o)
{
    static const char oom[] = "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of "
                              "memory\"}}";
    const char *s = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                              JSON_C_TO_STRING_NOSLASHESCAPE)
                      : NULL;
    rs->content_type = CT_JSON;
    rs->status = status;
    rs->body = s ? strdup(s) : NULL;
    if (rs->body == NULL) {
        rs->status = 500;
        rs->body = strdup(oom);
    }
    rs->body_len = rs->body ? strlen(rs->body) : 0;
    json_object_put(o);
}

json_object *api_error_object(int code, const char *message)
{
    json_object *e = json_object_new_object();
    json_object_object_add(e, "code", json_object_new_string(fx_errcode(code)));
    json_object_object_add(e, "message", json_object_new_string(message));
    return e;
}

/* Adds the error under "error" to o (a status object) and sends it. */
void api_send_error_in(struct api_response *rs, int code, json_object *o, const char *message)
{
    json_object_object_add(o, "error", api_error_object(code, message));
    api_send_json(rs, api_http_status(code), o);
}

void api_send_error(struct api_response *rs, int code, const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    api_send_error_in(rs, code, json_object_new_object(), message);
}

void api_send_store_error(struct api_response *rs, int rc, struct store *st)
{
    (void)st;
    if (rc == FX_EBUSY) {
        api_add_header(rs, "Retry-After", "1");
        api_send_error(rs, rc, "the job store is busy; try again");
    } else if (rc == FX_ENOSPC) {
        /* a full disk is an operator's problem that passes: ask the client to come back */
        api_add_header(rs, "Retry-After", "60");
        api_send_error(rs, rc, "the job store's disk is full; try again later");
    } else {
        api_send_error(rs, rc == FX_ENOMEM ? FX_ENOMEM : FX_EIO, "the job store failed");
    }
}

/* ---- job views ---------------------------------------------------------------------------- */

json_object *api_iso_time(int64_t ms)
{
    char buf[40];
    struct tm tm;
    time_t t = (time_t)(ms / 1000);
    if (ms <= 0)
        return NULL;
    gmtime_r(&t, &tm);
    size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof(buf) - n, ".%03dZ", (int)(ms % 1000));
    return json_object_new_string(buf);
}

/* A completed job whose retention ran out reads as expired even before the sweep. */
enum store_state api_visible_state(const struct api_ctx *ctx, const struct store_job *j)
{
    if (j->state == STORE_COMPLETED && j->finished_ms + ctx->cfg->retention_ms <= api_now_ms())
        return STORE_EXPIRED;
    return j->state;
}

json_object *api_eta(const struct store_job *j)
{
    int64_t ran = api_now_ms() - j->started_ms;
    double eta;
    if (j->state != STORE_RUNNING || j->step <= 0 || j->started_ms <= 0 || ran <= 0)
        return NULL;
    /* the steps so far set the pace (the decode at the end is not counted) */
    eta = (double)(j->steps - j->step) * ((double)ran / 1000.0) / (double)j->step;
    return json_object_new_double(round(eta * 10.0) / 10.0);
}

json_object *api_job_status(const struct api_ctx *ctx, const struct store_job *j)
{
    json_object *o = json_object_new_object(), *p = json_object_new_object();
    enum store_state s = api_visible_state(ctx, j);
    char url[64];
    json_object_object_add(o, "request_id", json_object_new_string(j->id));
    json_object_object_add(o, "status", json_object_new_string(store_state_name(s)));
    json_object_object_add(o, "position", json_object_new_int64(j->position));
    json_object_object_add(p, "step", json_object_new_int(j->step));
    json_object_object_add(p, "steps", json_object_new_int(j->steps));
    json_object_object_add(o, "progress", p);
    json_object_object_add(o, "eta_s", api_eta(j));
    json_object_object_add(o, "seed", json_object_new_int64((int64_t)j->seed));
    json_object_object_add(o, "attempts", json_object_new_int(j->attempts));
    json_object_object_add(o, "created_at", api_iso_time(j->created_ms));
    json_object_object_add(o, "started_at", api_iso_time(j->started_ms));
    json_object_object_add(o, "finished_at", api_iso_time(j->finished_ms));
    if (s == STORE_COMPLETED) {
        json_object_object_add(o, "expires_at",
                               api_iso_time(j->finished_ms + ctx->cfg->retention_ms));
        snprintf(url, sizeof(url), "/result/%s", j->id);
        json_object_object_add(o, "result_url", json_object_new_string(url));
    }
    if (s == STORE_EXPIRED)
        json_object_object_add(
            o, "expired_at",
            api_iso_time(j->expired_ms ? j->expired_ms : j->finished_ms + ctx->cfg->retention_ms));
    if (j->state == STORE_RUNNING && j->cancel)
        json_object_object_add(o, "cancel_requested", json_object_new_boolean(1));
    if (j->group_id[0]) {
        json_object_object_add(o, "group_id", json_object_new_string(j->group_id));
        json_object_object_add(o, "group_index", json_object_new_int(j->group_index));
    }
    {
        /* the LoRAs the job runs with, from its params (only when it has some) */
        json_object *p = j->params && strstr(j->params, "\"loras\"") ? json_tokener_parse(j->params)
                                                                     : NULL,
                    *l;
        if (p && json_object_object_get_ex(p, "loras", &l) &&
            json_object_is_type(l, json_type_array))
            json_object_object_add(o, "loras", json_object_get(l));
        json_object_put(p);
    }
    if (j->error_code[0])
        json_object_object_add(o, "error",
                               api_error_object(fx_errcode_parse(j->error_code), j->error_message));
    else
        json_object_object_add(o, "error", NULL);
    return o;
}

/* The answer for a job that has no image to give (not finished, failed, cancelled,
 * expired), with its status JSON. */
static void send_no_image(const struct api_ctx *ctx, struct api_response *rs,
                          const struct store_job *j)
{
    enum store_state s = api_visible_state(ctx, j);
    json_object *o = api_job_status(ctx, j);
    char m[320];
    switch (s) {
    case STORE_QUEUED:
    case STORE_RUNNING:
        snprintf(m, sizeof(m), "job '%s' is %s (step %d of %d)", j->id, store_state_name(s),
                 j->step, j->steps);
        api_send_error_in(rs, FX_EPENDING, o, m);
        break;
    case STORE_EXPIRED:
        snprintf(m, sizeof(m), "the result of job '%s' was deleted after the retention time",
                 j->id);
        api_send_error_in(rs, FX_EEXPIRED, o, m);
        break;
    case STORE_CANCELLED:
        api_send_error_in(rs, FX_ECANCELED, o,
                          j->error_message[0] ? j->error_message : "cancelled");
        break;
    default: {
        int code = fx_errcode_parse(j->error_code);
        api_send_error_in(rs, code == 0 ? FX_EINTERNAL : code, o,
                          j->error_message[0] ? j->error_message : "the job failed");
        break;
    }
    }
}

static void send_png(struct api_response *rs, const struct store_job *j, uint8_t *png, size_t len)
{
    rs->status = 200;
    rs->content_type = api_image_type(png, len);
    rs->body = (char *)png;
    rs->body_len = len;
    api_add_header(rs, "X-Request-Id", "%s", j->id);
    api_add_header(rs, "X-Seed", "%llu", (unsigned long long)j->seed);
}

/* Answers with the image of a job, or why there is none. */
void api_answer_result(const struct api_ctx *ctx, struct store *st, struct api_response *rs,
                       const struct store_job *j)
{
    uint8_t *png = NULL;
    size_t len = 0;
    int rc;
    if (api_visible_state(ctx, j) != STORE_COMPLETED) {
        send_no_image(ctx, rs, j);
        return;
    }
    rc = store_result(st, j->id, &png, &len);
    if (rc == FX_ENOENT) {
        /* expired between the two reads */
        struct store_job again;
        if (store_get(st, j->id, &again) == 0) {
            send_no_image(ctx, rs, &again);
            store_job_release(&again);
            return;
        }
    }
    if (rc) {
        api_send_store_error(rs, rc, st);
        return;
    }
    send_png(rs, j, png, len);
}

bool api_terminal(enum store_state s)
{
    return s != STORE_QUEUED && s != STORE_RUNNING;
}

/* Reads the job named by a path segment; answers and returns non-zero when it cannot. */
int api_load_job(struct store *st, const struct api_caller *who, const char *id, size_t id_len,
                 struct api_response *rs, struct store_job *j)
{
    char key[JOBID_MAX + 1];
    int rc;
    if (!jobid_valid(id, id_len)) {
        api_send_error(rs, FX_EBADID,
                       "request id: must be %d lower-case hex digits, after an optional host part "
                       "of 1 to %d characters from [a-z0-9] and a '-'",
                       JOBID_LEN, JOBID_PREFIX_MAX);
        return FX_EBADID;
    }
    memcpy(key, id, id_len);
    key[id_len] = '\0';
    rc = store_get(st, key, j);
    if (rc == 0 && !who->admin && strcmp(j->key_id, who->key_id) != 0) {
        /* another key's job reads exactly like an unknown id, so ids cannot be probed */
        store_job_release(j);
        rc = FX_ENOENT;
    }
    if (rc == FX_ENOENT)
        api_send_error(rs, rc, "no job '%s'", key);
    else if (rc)
        api_send_store_error(rs, rc, st);
    return rc;
}

bool api_ready(const struct api_ctx *ctx)
{
    return ctx->readiness && atomic_load(ctx->readiness) == WORKER_READY;
}

void api_not_ready(const struct api_ctx *ctx, struct api_response *rs)
{
    int r = ctx->readiness ? atomic_load(ctx->readiness) : WORKER_LOADING;
    api_add_header(rs, "Retry-After", "%d", r == WORKER_LOADING ? 5 : 30);
    if (r == WORKER_LOADING)
        api_send_error(rs, FX_ENOTREADY, "the model is loading; try again shortly");
    else if (r == WORKER_STOPPED)
        api_send_error(rs, FX_ESHUTDOWN, "the service is stopping");
    else if (ctx->worker && worker_error(ctx->worker)[0])
        api_send_error(rs, FX_ENOTREADY, "the model is not usable: %.400s",
                       worker_error(ctx->worker));
    else
        api_send_error(rs, FX_ENOTREADY, "the model is not usable");
}

/* ---- more answers ------------------------------------------------------------------------- */

char *api_base64(const uint8_t *b, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    size_t i = 0;
    if (out == NULL)
        return NULL;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8 | b[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)b[i] << 16 | (i + 1 < n ? (uint32_t)b[i + 1] << 8 : 0);
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

const char *api_image_type(const uint8_t *b, size_t n)
{
    return imgw_mime(imgw_sniff(b, n));
}

void api_restyle_error(struct api_response *rs, const char *api, const char *param)
{
    json_object *o, *e, *m;
    if (rs->status < 400 || rs->body == NULL || api == NULL || rs->content_type != CT_JSON)
        return;
    o = json_tokener_parse(rs->body);
    if (o == NULL || !json_object_object_get_ex(o, "error", &e) ||
        !json_object_is_type(e, json_type_object)) {
        json_object_put(o);
        return;
    }
    if (strcmp(api, "openai") == 0) {
        /* OpenAI's shape: {"error":{"message","type","param","code"}} */
        json_object_object_add(e, "type",
                               json_object_new_string(rs->status >= 500 ? "server_error"
                                                      : rs->status == 429
                                                          ? "rate_limit_error"
                                                          : "invalid_request_error"));
        json_object_object_add(e, "param", param ? json_object_new_string(param) : NULL);
    } else if (strcmp(api, "a1111") == 0 && json_object_object_get_ex(e, "message", &m)) {
        /* FastAPI's shape, which A1111 front-ends show */
        json_object_object_add(o, "detail", json_object_get(m));
    }
    int status = rs->status;
    free(rs->body);
    rs->body = NULL;
    api_send_json(rs, status, o);
}

json_object *api_group_status(const struct api_ctx *ctx, const struct store_job *jobs, int n)
{
    json_object *o = json_object_new_object(), *a = json_object_new_array(),
                *c = json_object_new_object();
    long counts[STORE_NSTATES] = {0};
    const char *state;
    for (int i = 0; i < n; i++) {
        counts[api_visible_state(ctx, &jobs[i])]++;
        json_object_array_add(a, api_job_status(ctx, &jobs[i]));
    }
    /* one word for the group: where its least advanced job is */
    if (counts[STORE_RUNNING] || (counts[STORE_QUEUED] && counts[STORE_QUEUED] < n))
        state = "running";
    else if (counts[STORE_QUEUED])
        state = "queued";
    else if (counts[STORE_COMPLETED] == n)
        state = "completed";
    else if (counts[STORE_EXPIRED] == n)
        state = "expired";
    else if (counts[STORE_CANCELLED] == n)
        state = "cancelled";
    else if (counts[STORE_FAILED] == n)
        state = "failed";
    else
        state = "finished"; /* ended, not all the same way */
    for (int i = 0; i < STORE_NSTATES; i++)
        if (counts[i])
            json_object_object_add(c, store_state_name((enum store_state)i),
                                   json_object_new_int64(counts[i]));
    json_object_object_add(o, "group_id", json_object_new_string(n ? jobs[0].group_id : ""));
    json_object_object_add(o, "status", json_object_new_string(state));
    json_object_object_add(o, "size", json_object_new_int(n));
    json_object_object_add(o, "counts", c);
    json_object_object_add(o, "jobs", a);
    return o;
}
