/* api.c - routes, request parsing and JSON answers of the HTTP API. */
#include "api.h"

#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/err.h"
#include "../core/job.h"
#include "../core/jobid.h"
#include "../core/manifest.h"

_Static_assert(STORE_ID_LEN >= JOBID_MAX, "the store must hold the longest job id");

#define JSON_MAX_DEPTH 16

static const char CT_JSON[] = "application/json";
static const char CT_PNG[] = "image/png";
static const char CT_PROM[] = "text/plain; version=0.0.4; charset=utf-8";

int api_http_status(int code)
{
    switch (code) {
    case 0:
        return 200;
    case FX_EFORMAT:
    case FX_EUTF8:
    case FX_EBADID:
        return 400;
    case FX_ENOENT:
        return 404;
    case FX_EMETHOD:
        return 405;
    case FX_ECANCELED:
    case FX_EPENDING:
    case FX_EFINISHED:
        return 409;
    case FX_EEXPIRED:
        return 410;
    case FX_ETOOBIG:
        return 413;
    case FX_EINVAL:
    case FX_ERANGE:
        return 422;
    case FX_EFULL:
        return 429;
    case FX_ENOTSUP:
        return 501;
    case FX_ENOTREADY:
    case FX_ESHUTDOWN:
    case FX_EBUSY:
    case FX_EDEVICE:
        return 503;
    case FX_ETIMEDOUT:
        return 504;
    default: /* FX_ENOMEM, FX_EIO, FX_EINTERNAL, FX_ERUNTIME, FX_EINTERRUPTED, unknown */
        return 500;
    }
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- responses ---------------------------------------------------------------------------- */

static void add_header(struct api_response *rs, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void add_header(struct api_response *rs, const char *name, const char *fmt, ...)
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
static void send_json(struct api_response *rs, int status, json_object *o)
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

static json_object *error_object(int code, const char *message)
{
    json_object *e = json_object_new_object();
    json_object_object_add(e, "code", json_object_new_string(fx_errcode(code)));
    json_object_object_add(e, "message", json_object_new_string(message));
    return e;
}

/* Adds the error under "error" to o (a status object) and sends it. */
static void send_error_in(struct api_response *rs, int code, json_object *o, const char *message)
{
    json_object_object_add(o, "error", error_object(code, message));
    send_json(rs, api_http_status(code), o);
}

__attribute__((format(printf, 3, 4))) static void send_error(struct api_response *rs, int code,
                                                             const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    send_error_in(rs, code, json_object_new_object(), message);
}

static void send_store_error(struct api_response *rs, int rc, struct store *st)
{
    (void)st;
    if (rc == FX_EBUSY) {
        add_header(rs, "Retry-After", "1");
        send_error(rs, rc, "the job store is busy; try again");
    } else {
        send_error(rs, rc == FX_ENOMEM ? FX_ENOMEM : FX_EIO, "the job store failed");
    }
}

/* ---- request parsing ---------------------------------------------------------------------- */

/* Where a parse error goes. */
struct perr {
    const char **field;
    char *msg;
    size_t len;
};

__attribute__((format(printf, 4, 5))) static int field_error(struct perr *pe, const char *name,
                                                             int rc, const char *fmt, ...)
{
    va_list ap;
    *pe->field = name;
    if (pe->msg && pe->len) {
        va_start(ap, fmt);
        vsnprintf(pe->msg, pe->len, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
 * json-c's own check lets those through. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            return false;
        }
        if (i + k >= n)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xBF)
                return false;
        i += k + 1;
    }
    return true;
}

/* An integer field that must fit an int. */
static int get_int_field(struct perr *pe, json_object *v, const char *name, int *out)
{
    int64_t n;
    if (json_object_is_type(v, json_type_double))
        return field_error(pe, name, FX_EINVAL, "%s: must be an integer, not a fraction", name);
    if (!json_object_is_type(v, json_type_int))
        return field_error(pe, name, FX_EINVAL, "%s: must be an integer, got %s", name,
                           json_type_to_name(json_object_get_type(v)));
    n = json_object_get_int64(v);
    if (n < INT_MIN || n > INT_MAX || (n == INT64_MAX && json_object_get_uint64(v) > INT64_MAX))
        return field_error(pe, name, FX_ERANGE, "%s: %s is out of range", name,
                           json_object_to_json_string(v));
    *out = (int)n;
    return 0;
}

int api_parse_generate(const struct api_ctx *ctx, const char *body, size_t len,
                       struct fx_request *out, char **prompt, const char **field, char *msg,
                       size_t msg_len)
{
    const char *dummy;
    struct perr pe = {field ? field : &dummy, msg, msg_len};
    json_tokener *tok = NULL;
    json_object *o = NULL;
    size_t end;
    int rc;

    field = pe.field;
    *field = NULL;
    *prompt = NULL;
    *out = ctx->defaults;
    out->prompt = NULL;
    out->prompt_len = 0;
    out->has_seed = false;

    if (len == 0)
        return field_error(&pe, NULL, FX_EFORMAT, "malformed JSON: the body is empty");
    if (len > INT_MAX)
        return field_error(&pe, NULL, FX_ETOOBIG, "the body is too large");
    tok = json_tokener_new_ex(JSON_MAX_DEPTH);
    if (tok == NULL)
        return FX_ENOMEM;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    o = json_tokener_parse_ex(tok, body, (int)len);
    end = json_tokener_get_parse_end(tok);
    if (o == NULL && json_tokener_get_error(tok) == json_tokener_continue) {
        /* a number or literal at the very end needs a delimiter to be complete */
        o = json_tokener_parse_ex(tok, " ", 1);
        end = len;
    }
    if (o == NULL && json_tokener_get_error(tok) == json_tokener_success) {
        rc = field_error(&pe, NULL, FX_EINVAL, "the body must be a JSON object, got null");
        goto out;
    }
    if (o == NULL) {
        enum json_tokener_error e = json_tokener_get_error(tok);
        if (e == json_tokener_continue)
            rc = field_error(&pe, NULL, FX_EFORMAT, "malformed JSON: the body ends too early");
        else
            rc = field_error(&pe, NULL, FX_EFORMAT, "malformed JSON at byte %zu: %s", end,
                             json_tokener_error_desc(e));
        goto out;
    }
    while (end < len && strchr(" \t\r\n", body[end]) && body[end] != '\0')
        end++;
    if (end != len) {
        rc = field_error(&pe, NULL, FX_EFORMAT,
                         "malformed JSON: unexpected bytes after the value at byte %zu", end);
        goto out;
    }
    if (!json_object_is_type(o, json_type_object)) {
        rc = field_error(&pe, NULL, FX_EINVAL, "the body must be a JSON object, got %s",
                         json_type_to_name(json_object_get_type(o)));
        goto out;
    }
    json_object_object_foreach(o, key, v)
    {
        if (strcmp(key, "prompt") == 0) {
            const char *s;
            size_t n;
            if (!json_object_is_type(v, json_type_string)) {
                rc = field_error(&pe, "prompt", FX_EINVAL, "prompt: must be a string, got %s",
                                 json_type_to_name(json_object_get_type(v)));
                goto out;
            }
            s = json_object_get_string(v);
            n = (size_t)json_object_get_string_len(v);
            if (!utf8_valid((const unsigned char *)s, n)) {
                rc = field_error(&pe, "prompt", FX_EUTF8, "prompt: invalid UTF-8");
                goto out;
            }
            if (memchr(s, '\0', n)) {
                rc = field_error(&pe, "prompt", FX_EINVAL,
                                 "prompt: must not contain NUL characters");
                goto out;
            }
            free(*prompt);
            *prompt = strdup(s);
            if (*prompt == NULL) {
                rc = FX_ENOMEM;
                goto out;
            }
            out->prompt = *prompt;
            out->prompt_len = n;
        } else if (strcmp(key, "guidance_scale") == 0) {
            if (!json_object_is_type(v, json_type_double) &&
                !json_object_is_type(v, json_type_int)) {
                rc = field_error(&pe, "guidance_scale", FX_EINVAL,
                                 "guidance_scale: must be a number, got %s",
                                 json_type_to_name(json_object_get_type(v)));
                goto out;
            }
            out->guidance = json_object_get_double(v);
            if (!isfinite(out->guidance)) {
                rc = field_error(&pe, "guidance_scale", FX_ERANGE,
                                 "guidance_scale: must be a finite number");
                goto out;
            }
        } else if (strcmp(key, "num_inference_steps") == 0) {
            if ((rc = get_int_field(&pe, v, "num_inference_steps", &out->steps)))
                goto out;
        } else if (strcmp(key, "width") == 0) {
            if ((rc = get_int_field(&pe, v, "width", &out->width)))
                goto out;
        } else if (strcmp(key, "height") == 0) {
            if ((rc = get_int_field(&pe, v, "height", &out->height)))
                goto out;
        } else if (strcmp(key, "seed") == 0) {
            int64_t n;
            if (json_object_is_type(v, json_type_null))
                continue;
            if (json_object_is_type(v, json_type_double)) {
                rc = field_error(&pe, "seed", FX_EINVAL,
                                 "seed: must be an integer, not a "
                                 "fraction");
                goto out;
            }
            if (!json_object_is_type(v, json_type_int)) {
                rc = field_error(&pe, "seed", FX_EINVAL, "seed: must be an integer or null, got %s",
                                 json_type_to_name(json_object_get_type(v)));
                goto out;
            }
            n = json_object_get_int64(v);
            if (n < 0 || (uint64_t)n > FX_SEED_MAX) {
                rc = field_error(&pe, "seed", FX_ERANGE, "seed: must be from 0 to %llu",
                                 (unsigned long long)FX_SEED_MAX);
                goto out;
            }
            out->seed = (uint64_t)n;
            out->has_seed = true;
        } else {
            char shown[64];
            size_t i, k = strlen(key);
            /* echo at most 40 printable ASCII bytes of a hostile key */
            for (i = 0; i < k && i < 40; i++)
                shown[i] = key[i] >= 0x20 && key[i] < 0x7f ? key[i] : '?';
            shown[i] = '\0';
            rc = field_error(&pe, key, FX_EINVAL,
                             "%s%s: unknown field (known: prompt, "
                             "guidance_scale, num_inference_steps, width, height, seed)",
                             shown, k > 40 ? "..." : "");
            *field = "body";
            goto out;
        }
    }
    if (out->prompt == NULL) {
        rc = field_error(&pe, "prompt", FX_EINVAL, "prompt: required");
        goto out;
    }
    rc = fx_request_validate(out, &ctx->limits, field, msg, msg_len);
out:
    json_object_put(o);
    json_tokener_free(tok);
    if (rc) {
        free(*prompt);
        *prompt = NULL;
    }
    return rc;
}

/* ---- job views ---------------------------------------------------------------------------- */

static json_object *iso_time(int64_t ms)
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
static enum store_state visible_state(const struct api_ctx *ctx, const struct store_job *j)
{
    if (j->state == STORE_COMPLETED && j->finished_ms + ctx->cfg->retention_ms <= now_ms())
        return STORE_EXPIRED;
    return j->state;
}

static json_object *job_status(const struct api_ctx *ctx, const struct store_job *j)
{
    json_object *o = json_object_new_object(), *p = json_object_new_object();
    enum store_state s = visible_state(ctx, j);
    char url[64];
    json_object_object_add(o, "request_id", json_object_new_string(j->id));
    json_object_object_add(o, "status", json_object_new_string(store_state_name(s)));
    json_object_object_add(o, "position", json_object_new_int64(j->position));
    json_object_object_add(p, "step", json_object_new_int(j->step));
    json_object_object_add(p, "steps", json_object_new_int(j->steps));
    json_object_object_add(o, "progress", p);
    json_object_object_add(o, "seed", json_object_new_int64((int64_t)j->seed));
    json_object_object_add(o, "attempts", json_object_new_int(j->attempts));
    json_object_object_add(o, "created_at", iso_time(j->created_ms));
    json_object_object_add(o, "started_at", iso_time(j->started_ms));
    json_object_object_add(o, "finished_at", iso_time(j->finished_ms));
    if (s == STORE_COMPLETED) {
        json_object_object_add(o, "expires_at", iso_time(j->finished_ms + ctx->cfg->retention_ms));
        snprintf(url, sizeof(url), "/result/%s", j->id);
        json_object_object_add(o, "result_url", json_object_new_string(url));
    }
    if (s == STORE_EXPIRED)
        json_object_object_add(
            o, "expired_at",
            iso_time(j->expired_ms ? j->expired_ms : j->finished_ms + ctx->cfg->retention_ms));
    if (j->state == STORE_RUNNING && j->cancel)
        json_object_object_add(o, "cancel_requested", json_object_new_boolean(1));
    if (j->error_code[0])
        json_object_object_add(o, "error",
                               error_object(fx_errcode_parse(j->error_code), j->error_message));
    else
        json_object_object_add(o, "error", NULL);
    return o;
}

/* The answer for a job that has no image to give (not finished, failed, cancelled,
 * expired), with its status JSON. */
static void send_no_image(const struct api_ctx *ctx, struct api_response *rs,
                          const struct store_job *j)
{
    enum store_state s = visible_state(ctx, j);
    json_object *o = job_status(ctx, j);
    char m[320];
    switch (s) {
    case STORE_QUEUED:
    case STORE_RUNNING:
        snprintf(m, sizeof(m), "job '%s' is %s (step %d of %d)", j->id, store_state_name(s),
                 j->step, j->steps);
        send_error_in(rs, FX_EPENDING, o, m);
        break;
    case STORE_EXPIRED:
        snprintf(m, sizeof(m), "the result of job '%s' was deleted after the retention time",
                 j->id);
        send_error_in(rs, FX_EEXPIRED, o, m);
        break;
    case STORE_CANCELLED:
        send_error_in(rs, FX_ECANCELED, o, j->error_message[0] ? j->error_message : "cancelled");
        break;
    default: {
        int code = fx_errcode_parse(j->error_code);
        send_error_in(rs, code == 0 ? FX_EINTERNAL : code, o,
                      j->error_message[0] ? j->error_message : "the job failed");
        break;
    }
    }
}

static void send_png(struct api_response *rs, const struct store_job *j, uint8_t *png, size_t len)
{
    rs->status = 200;
    rs->content_type = CT_PNG;
    rs->body = (char *)png;
    rs->body_len = len;
    add_header(rs, "X-Request-Id", "%s", j->id);
    add_header(rs, "X-Seed", "%llu", (unsigned long long)j->seed);
}

/* Answers with the image of a job, or why there is none. */
static void answer_result(const struct api_ctx *ctx, struct store *st, struct api_response *rs,
                          const struct store_job *j)
{
    uint8_t *png = NULL;
    size_t len = 0;
    int rc;
    if (visible_state(ctx, j) != STORE_COMPLETED) {
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
        send_store_error(rs, rc, st);
        return;
    }
    send_png(rs, j, png, len);
}

/* ---- handlers ----------------------------------------------------------------------------- */

static bool ready(const struct api_ctx *ctx)
{
    return ctx->readiness && atomic_load(ctx->readiness) == WORKER_READY;
}

static void h_ping(const struct api_ctx *ctx, struct api_response *rs)
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
    if (r == WORKER_FAILED && ctx->worker)
        json_object_object_add(o, "error", error_object(FX_ENOTREADY, worker_error(ctx->worker)));
    send_json(rs, r == WORKER_FAILED ? 503 : 200, o);
}

static void not_ready(const struct api_ctx *ctx, struct api_response *rs)
{
    int r = ctx->readiness ? atomic_load(ctx->readiness) : WORKER_LOADING;
    add_header(rs, "Retry-After", "%d", r == WORKER_LOADING ? 5 : 30);
    if (r == WORKER_LOADING)
        send_error(rs, FX_ENOTREADY, "the model is loading; try again shortly");
    else if (r == WORKER_STOPPED)
        send_error(rs, FX_ESHUTDOWN, "the service is stopping");
    else
        send_error(rs, FX_ENOTREADY, "the model could not be loaded");
}

/* Validates the body and queues it; on success fills id/seed/position and returns 0, else
 * has answered already and returns the error. */
static int enqueue(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                   struct api_response *rs, bool sync, char id[JOBID_MAX + 1], uint64_t *seed,
                   long *position, int *steps)
{
    struct fx_request req;
    char *prompt = NULL, *params = NULL, msg[512] = "";
    const char *field = NULL;
    int rc;

    if (rq->body_too_large) {
        send_error(rs, FX_ETOOBIG, "the body is larger than %zu bytes", ctx->cfg->max_body);
        return FX_ETOOBIG;
    }
    rc = api_parse_generate(ctx, rq->body, rq->body_len, &req, &prompt, &field, msg, sizeof(msg));
    if (rc) {
        if (rc == FX_ENOMEM)
            snprintf(msg, sizeof(msg), "out of memory");
        send_error(rs, rc, "%s", msg);
        goto out;
    }
    if (!ready(ctx)) {
        not_ready(ctx, rs);
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
        send_error(rs, rc, "cannot create the job");
        goto out;
    }
    rc = store_enqueue(st, id, sync, params, req.seed, req.steps, now_ms(), ctx->cfg->queue_size,
                       position);
    if (rc == FX_EFULL) {
        double mean = 0;
        store_mean_run_ms(st, &mean);
        long after = (long)ceil(mean / 1000.0);
        add_header(rs, "Retry-After", "%ld", after < 1 ? 1 : after > 3600 ? 3600 : after);
        send_error(rs, FX_EFULL, "the queue is full (%ld jobs); try again later",
                   ctx->cfg->queue_size);
        goto out;
    }
    if (rc) {
        send_store_error(rs, rc, st);
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

static void h_generate_queue(const struct api_ctx *ctx, struct store *st,
                             const struct api_request *rq, struct api_response *rs)
{
    char id[JOBID_MAX + 1], url[96];
    uint64_t seed = 0;
    long position = 0;
    int steps = 0;
    json_object *o, *p;

    if (enqueue(ctx, st, rq, rs, false, id, &seed, &position, &steps))
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
    add_header(rs, "Location", "%s", url);
    snprintf(url, sizeof(url), "/result/%s", id);
    json_object_object_add(o, "result_url", json_object_new_string(url));
    send_json(rs, 202, o);
}

static bool terminal(enum store_state s)
{
    return s != STORE_QUEUED && s != STORE_RUNNING;
}

static void h_generate(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                       struct api_response *rs)
{
    char id[JOBID_MAX + 1];
    uint64_t seed = 0, seen = 0;
    long position = 0;
    int steps = 0, rc;
    int64_t deadline;
    struct store_job j = {0};

    if (enqueue(ctx, st, rq, rs, true, id, &seed, &position, &steps))
        return;
    deadline = now_ms() + ctx->cfg->sync_timeout_ms;
    for (;;) {
        int64_t left;
        store_job_release(&j);
        rc = store_get(st, id, &j);
        if (rc) {
            send_store_error(rs, rc, st);
            break;
        }
        if (terminal(j.state)) {
            answer_result(ctx, st, rs, &j);
            break;
        }
        left = deadline - now_ms();
        if (left <= 0) {
            send_error(rs, FX_ETIMEDOUT,
                       "not finished after %lld ms; the job goes on as '%s' (GET /result/%s)",
                       (long long)ctx->cfg->sync_timeout_ms, id, id);
            break;
        }
        if (worker_wait(ctx->worker, &seen, left < 1000 ? (int)left : 1000) == FX_ESHUTDOWN) {
            send_error(rs, FX_ESHUTDOWN,
                       "the service is stopping; the job stays queued as '%s' (GET /result/%s)", id,
                       id);
            break;
        }
    }
    store_job_release(&j);
    if (rs->status != 200)
        add_header(rs, "X-Request-Id", "%s", id);
}

static void h_queue_status(const struct api_ctx *ctx, struct store *st, struct api_response *rs)
{
    long counts[STORE_NSTATES];
    json_object *o;
    int rc = store_counts(st, counts);
    if (rc) {
        send_store_error(rs, rc, st);
        return;
    }
    o = json_object_new_object();
    for (int i = 0; i < STORE_NSTATES; i++)
        json_object_object_add(o, store_state_name((enum store_state)i),
                               json_object_new_int64(counts[i]));
    json_object_object_add(o, "capacity", json_object_new_int64(ctx->cfg->queue_size));
    json_object_object_add(o, "ready", json_object_new_boolean(ready(ctx)));
    send_json(rs, 200, o);
}

/* Reads the job named by a path segment; answers and returns non-zero when it cannot. */
static int load_job(struct store *st, const char *id, size_t id_len, struct api_response *rs,
                    struct store_job *j)
{
    char key[JOBID_MAX + 1];
    int rc;
    if (!jobid_valid(id, id_len)) {
        send_error(rs, FX_EBADID,
                   "request id: must be %d lower-case hex digits, after an optional host part "
                   "of 1 to %d characters from [a-z0-9] and a '-'",
                   JOBID_LEN, JOBID_PREFIX_MAX);
        return FX_EBADID;
    }
    memcpy(key, id, id_len);
    key[id_len] = '\0';
    rc = store_get(st, key, j);
    if (rc == FX_ENOENT)
        send_error(rs, rc, "no job '%s'", key);
    else if (rc)
        send_store_error(rs, rc, st);
    return rc;
}

static void h_job_status(const struct api_ctx *ctx, struct store *st, const char *id, size_t id_len,
                         struct api_response *rs)
{
    struct store_job j;
    if (load_job(st, id, id_len, rs, &j))
        return;
    send_json(rs, 200, job_status(ctx, &j));
    store_job_release(&j);
}

static void h_result(const struct api_ctx *ctx, struct store *st, const char *id, size_t id_len,
                     struct api_response *rs)
{
    struct store_job j;
    if (load_job(st, id, id_len, rs, &j))
        return;
    answer_result(ctx, st, rs, &j);
    store_job_release(&j);
}

static void h_cancel(const struct api_ctx *ctx, struct store *st, const char *id, size_t id_len,
                     struct api_response *rs)
{
    struct store_job j;
    enum store_state s = STORE_QUEUED;
    int rc;
    if (load_job(st, id, id_len, rs, &j))
        return;
    rc = store_cancel(st, j.id, now_ms(), &s);
    store_job_release(&j);
    if (rc == FX_EFINISHED) {
        if (load_job(st, id, id_len, rs, &j) == 0) {
            char m[128];
            snprintf(m, sizeof(m), "job '%s' is already %s", j.id,
                     store_state_name(visible_state(ctx, &j)));
            send_error_in(rs, FX_EFINISHED, job_status(ctx, &j), m);
            store_job_release(&j);
        }
        return;
    }
    if (rc) {
        send_store_error(rs, rc, st);
        return;
    }
    if (s == STORE_RUNNING)
        worker_cancel(ctx->worker, id);
    if (load_job(st, id, id_len, rs, &j))
        return;
    send_json(rs, s == STORE_RUNNING ? 202 : 200, job_status(ctx, &j));
    store_job_release(&j);
}

static void h_metrics(const struct api_ctx *ctx, struct store *st, struct api_response *rs)
{
    struct metrics_extra x = {{0}, ctx->cfg->queue_size, ready(ctx)};
    struct fx_metrics empty;
    size_t len = 0;
    int rc = store_counts(st, x.by_state);
    if (rc) {
        send_store_error(rs, rc, st);
        return;
    }
    if (ctx->metrics == NULL)
        metrics_init(&empty);
    rs->body = metrics_render(ctx->metrics ? ctx->metrics : &empty, &x, &len);
    if (ctx->metrics == NULL)
        metrics_release(&empty);
    if (rs->body == NULL) {
        send_error(rs, FX_ENOMEM, "out of memory");
        return;
    }
    rs->status = 200;
    rs->content_type = CT_PROM;
    rs->body_len = len;
}

/* ---- routing ------------------------------------------------------------------------------ */

enum route {
    R_NONE,
    R_PING,
    R_GENERATE,
    R_GENERATE_QUEUE,
    R_STATUS,
    R_JOB_STATUS,
    R_CANCEL,
    R_RESULT,
    R_METRICS
};

/* The route of a path and the methods it takes; *id gets the id segment of /x/{id}. */
static enum route route_of(const char *path, size_t n, const char **allow, const char **id,
                           size_t *id_len)
{
    static const struct {
        const char *path;
        bool prefix;
        enum route r;
        const char *allow;
    } routes[] = {
        {"/ping", false, R_PING, "GET, HEAD"},
        {"/generate", false, R_GENERATE, "POST"},
        {"/generate/queue", false, R_GENERATE_QUEUE, "POST"},
        {"/queue/status", false, R_STATUS, "GET, HEAD"},
        {"/queue/status/", true, R_JOB_STATUS, "GET, HEAD"},
        {"/queue/", true, R_CANCEL, "DELETE"},
        {"/result/", true, R_RESULT, "GET, HEAD"},
        {"/metrics", false, R_METRICS, "GET, HEAD"},
    };
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        size_t k = strlen(routes[i].path);
        if (routes[i].prefix ? n >= k && memcmp(path, routes[i].path, k) == 0
                             : n == k && memcmp(path, routes[i].path, k) == 0) {
            *allow = routes[i].allow;
            *id = path + k;
            *id_len = n - k;
            return routes[i].r;
        }
    }
    return R_NONE;
}

/* True when m is one of the comma-separated methods in allow. */
static bool method_allowed(const char *allow, const char *m)
{
    size_t k = strlen(m);
    while (*allow) {
        size_t t = strcspn(allow, ",");
        if (t == k && k && memcmp(allow, m, k) == 0)
            return true;
        allow += t;
        allow += strspn(allow, ", ");
    }
    return false;
}

void api_handle(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                struct api_response *rs)
{
    const char *uri = rq->uri ? rq->uri : "", *m = rq->method ? rq->method : "";
    const char *allow = "", *id = NULL;
    size_t n = strcspn(uri, "?#"), id_len = 0;
    enum route r = route_of(uri, n, &allow, &id, &id_len);
    /* HEAD is GET without a body (the web server drops it) */
    const char *as = strcmp(m, "HEAD") == 0 ? "GET" : m;

    memset(rs, 0, sizeof(*rs));
    if (r == R_NONE) {
        send_error(rs, FX_ENOENT, "no such endpoint");
        return;
    }
    if (!method_allowed(allow, as)) {
        add_header(rs, "Allow", "%s", allow);
        send_error(rs, FX_EMETHOD, "method %.16s%s is not allowed here (allowed: %s)", m,
                   strlen(m) > 16 ? "..." : "", allow);
        return;
    }
    switch (r) {
    case R_PING:
        h_ping(ctx, rs);
        break;
    case R_GENERATE:
        h_generate(ctx, st, rq, rs);
        break;
    case R_GENERATE_QUEUE:
        h_generate_queue(ctx, st, rq, rs);
        break;
    case R_STATUS:
        h_queue_status(ctx, st, rs);
        break;
    case R_JOB_STATUS:
        h_job_status(ctx, st, id, id_len, rs);
        break;
    case R_CANCEL:
        h_cancel(ctx, st, id, id_len, rs);
        break;
    case R_RESULT:
        h_result(ctx, st, id, id_len, rs);
        break;
    case R_METRICS:
        h_metrics(ctx, st, rs);
        break;
    case R_NONE:
        break;
    }
}

void api_response_release(struct api_response *rs)
{
    if (rs) {
        free(rs->body);
        rs->body = NULL;
        rs->body_len = 0;
    }
}

int api_ctx_limits(struct api_ctx *ctx, const struct fx_manifest *m, const struct fx_config *cfg,
                   char *msg, size_t msg_len)
{
    const char *field = NULL;
    int rc;
    fx_limits_default(&ctx->limits, m);
    if (cfg->max_size && cfg->max_size < ctx->limits.max_size)
        ctx->limits.max_size = cfg->max_size - cfg->max_size % ctx->limits.multiple_of;
    if (cfg->max_steps && cfg->max_steps < ctx->limits.max_steps)
        ctx->limits.max_steps = cfg->max_steps;
    memset(&ctx->defaults, 0, sizeof(ctx->defaults));
    ctx->defaults.steps = cfg->default_steps ? cfg->default_steps : m->default_steps;
    ctx->defaults.width = cfg->default_width ? cfg->default_width : m->default_width;
    ctx->defaults.height = cfg->default_height ? cfg->default_height : m->default_height;
    ctx->defaults.guidance =
        cfg->default_guidance >= 0 ? cfg->default_guidance : m->default_guidance;
    ctx->defaults.prompt = "warm-up";
    ctx->defaults.prompt_len = strlen("warm-up");
    ctx->defaults.has_seed = true;
    rc = fx_request_validate(&ctx->defaults, &ctx->limits, &field, msg, msg_len);
    ctx->defaults.prompt = NULL;
    ctx->defaults.prompt_len = 0;
    ctx->defaults.has_seed = false;
    if (rc && msg && msg_len) {
        char tmp[256];
        snprintf(tmp, sizeof(tmp), "%s", msg);
        snprintf(msg, msg_len, "the configured defaults do not fit the limits: %s", tmp);
    }
    return rc;
}
