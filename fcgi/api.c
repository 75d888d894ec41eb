/* api.c - the router of the HTTP API: path and method to a handler (api_int.h lists them). */
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
#include "../core/manifest.h"
#include "../core/plan.h"
#include "api_int.h"

_Static_assert(STORE_ID_LEN >= JOBID_MAX, "the store must hold the longest job id");

int api_http_status(int code)
{
    switch (code) {
    case 0:
        return 200;
    case FX_EFORMAT:
    case FX_EUTF8:
    case FX_EBADID:
        return 400;
    case FX_EAUTH:
        return 401;
    case FX_EFORBIDDEN:
        return 403;
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
    case FX_ELORA_UNKNOWN:
    case FX_ELORA_BAD:
    case FX_ELORA_OFF:
        return 422;
    case FX_EFULL:
    case FX_EQUOTA:
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
    case FX_ENOSPC:
        return 507;
    default: /* FX_ENOMEM, FX_EIO, FX_EINTERNAL, FX_ERUNTIME, FX_EINTERRUPTED, unknown */
        return 500;
    }
}

int64_t api_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t api_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- routing ------------------------------------------------------------------------------ */

enum route {
    R_NONE,
    R_PING,
    R_GENERATE,
    R_GENERATE_QUEUE,
    R_STATUS,
    R_JOB_STATUS,
    R_GROUP,
    R_CANCEL,
    R_RESULT,
    R_EVENTS,
    R_METRICS,
    R_OPENAPI,
    R_OPENAI_IMAGES,
    R_OPENAI_MODELS,
    R_A1111_TXT2IMG,
    R_A1111_PROGRESS,
    R_A1111_INTERRUPT,
    R_A1111_OPTIONS,
    R_A1111_LIST,
    R_A1111_LORAS,
    R_LORAS
};

/* The routing table: a path (a prefix when it ends in '/', followed by an id) and the
 * methods it takes.  First match wins, so a longer prefix comes before a shorter one.  The
 * OpenAPI document (fcgi/openapi.json) lists exactly these (tests/unit/test_api.c). */
static const struct api_route_def {
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
    {"/queue/group/", true, R_GROUP, "GET, HEAD, DELETE"},
    {"/queue/events/", true, R_EVENTS, "GET"},
    {"/queue/", true, R_CANCEL, "DELETE"},
    {"/result/", true, R_RESULT, "GET, HEAD"},
    {"/metrics", false, R_METRICS, "GET, HEAD"},
    {"/openapi.json", false, R_OPENAPI, "GET, HEAD"},
    {"/loras", false, R_LORAS, "GET, HEAD"},
    {"/v1/images/generations", false, R_OPENAI_IMAGES, "POST"},
    {"/v1/models", false, R_OPENAI_MODELS, "GET, HEAD"},
    {"/sdapi/v1/txt2img", false, R_A1111_TXT2IMG, "POST"},
    {"/sdapi/v1/progress", false, R_A1111_PROGRESS, "GET, HEAD"},
    {"/sdapi/v1/interrupt", false, R_A1111_INTERRUPT, "POST"},
    {"/sdapi/v1/options", false, R_A1111_OPTIONS, "GET, HEAD, POST"},
    {"/sdapi/v1/sd-models", false, R_A1111_LIST, "GET, HEAD"},
    {"/sdapi/v1/samplers", false, R_A1111_LIST, "GET, HEAD"},
    {"/sdapi/v1/schedulers", false, R_A1111_LIST, "GET, HEAD"},
    {"/sdapi/v1/upscalers", false, R_A1111_LIST, "GET, HEAD"},
    {"/sdapi/v1/latent-upscale-modes", false, R_A1111_LIST, "GET, HEAD"},
    {"/sdapi/v1/sd-vae", false, R_A1111_LIST, "GET, HEAD"},
    {"/sdapi/v1/loras", false, R_A1111_LORAS, "GET, HEAD"},
    {"/sdapi/v1/prompt-styles", false, R_A1111_LIST, "GET, HEAD"},
};

size_t api_route_count(void)
{
    return sizeof(routes) / sizeof(routes[0]);
}

const char *api_route_path(size_t i, bool *prefix, const char **allow)
{
    if (i >= api_route_count())
        return NULL;
    if (prefix)
        *prefix = routes[i].prefix;
    if (allow)
        *allow = routes[i].allow;
    return routes[i].path;
}

/* The route of a path and the methods it takes; *id gets the id segment of /x/{id}. */
static enum route route_of(const char *path, size_t n, const char **allow, const char **id,
                           size_t *id_len)
{
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

bool api_needs_store(const struct api_ctx *ctx, const char *method, const char *uri)
{
    const char *allow = "", *id = NULL, *u = uri ? uri : "", *m = method ? method : "";
    size_t id_len = 0;
    enum route r = route_of(u, strcspn(u, "?#"), &allow, &id, &id_len);
    if (r == R_NONE)
        return false;
    if (!method_allowed(allow, strcmp(m, "HEAD") == 0 ? "GET" : m))
        return false;
    /* open, answered from memory: the ping and the OpenAPI document */
    if (r == R_PING || r == R_OPENAPI)
        return false;
    /* the fixed lists are answered from memory too, but with auth on the key is checked
     * against the store first; the LoRA lists (R_LORAS, R_A1111_LORAS) read lora_dir and
     * the files' headers, which is no work for the event thread: a handler thread */
    if (r == R_OPENAI_MODELS || r == R_A1111_OPTIONS || r == R_A1111_LIST)
        return ctx && ctx->cfg && ctx->cfg->auth;
    return true;
}

/* The routing and the access check of api_handle (which adds the CORS headers). */
static void dispatch(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                     struct api_response *rs)
{
    const char *uri = rq->uri ? rq->uri : "", *m = rq->method ? rq->method : "";
    const char *allow = "", *id = NULL;
    size_t n = strcspn(uri, "?#"), id_len = 0;
    enum route r = route_of(uri, n, &allow, &id, &id_len);
    /* HEAD is GET without a body (the web server drops it) */
    const char *as = strcmp(m, "HEAD") == 0 ? "GET" : m;
    struct api_caller who;

    if (r == R_NONE) {
        api_send_error(rs, FX_ENOENT, "no such endpoint");
        return;
    }
    if (access_is_preflight(rq)) { /* a browser asking before the real request: no key */
        access_preflight(ctx, rq, allow, rs);
        return;
    }
    if (rq->bad_length) {
        api_send_error(rs, FX_EFORMAT,
                       "the body's length does not match its Content-Length (a body cut short?)");
        return;
    }
    if (!method_allowed(allow, as)) {
        api_add_header(rs, "Allow", "%s", allow);
        api_send_error(rs, FX_EMETHOD, "method %.16s%s is not allowed here (allowed: %s)", m,
                       strlen(m) > 16 ? "..." : "", allow);
        return;
    }
    /* /ping is open (liveness, answered without the store), and so is /openapi.json (the
     * API's description, the same for everyone, which /docs reads before a key is typed in);
     * /metrics unless metrics_auth is admin; everything else needs a key when auth is on */
    access_open_caller(ctx, &who);
    if (ctx->cfg->auth && r != R_PING && r != R_OPENAPI &&
        (r != R_METRICS || ctx->cfg->metrics_auth == CONFIG_METRICS_ADMIN) &&
        access_check(ctx, st, rq, r == R_METRICS, &who, rs) != 0) {
        /* the OpenAI and A1111 clients read errors in their own shapes */
        if (r == R_OPENAI_IMAGES || r == R_OPENAI_MODELS)
            api_restyle_error(rs, "openai", NULL);
        else if (r >= R_A1111_TXT2IMG && r <= R_A1111_LORAS)
            api_restyle_error(rs, "a1111", NULL);
        return;
    }
    switch (r) {
    case R_PING:
        route_ping(ctx, rs);
        break;
    case R_GENERATE:
        route_generate(ctx, st, rq, &who, rs);
        break;
    case R_GENERATE_QUEUE:
        route_generate_queue(ctx, st, rq, &who, rs);
        break;
    case R_STATUS:
        route_queue_status(ctx, st, &who, rs);
        break;
    case R_JOB_STATUS:
        route_job_status(ctx, st, &who, id, id_len, rs);
        break;
    case R_CANCEL:
        route_cancel(ctx, st, &who, id, id_len, rs);
        break;
    case R_EVENTS:
        route_events(ctx, st, &who, id, id_len, rs);
        break;
    case R_RESULT:
        route_result(ctx, st, &who, id, id_len, rs);
        break;
    case R_METRICS:
        route_metrics(ctx, st, rs);
        break;
    case R_GROUP:
        route_group(ctx, st, &who, as, id, id_len, rs);
        break;
    case R_OPENAPI:
        route_openapi(ctx, rs);
        break;
    case R_OPENAI_IMAGES:
        route_openai_images(ctx, st, rq, &who, rs);
        break;
    case R_OPENAI_MODELS:
        route_openai_models(ctx, rs);
        break;
    case R_A1111_TXT2IMG:
        route_a1111_txt2img(ctx, st, rq, &who, rs);
        break;
    case R_A1111_PROGRESS:
        route_a1111_progress(ctx, st, &who, rs);
        break;
    case R_A1111_INTERRUPT:
        route_a1111_interrupt(ctx, st, &who, rs);
        break;
    case R_A1111_OPTIONS:
    case R_A1111_LIST: {
        char what[32];
        size_t k = strlen("/sdapi/v1/");
        snprintf(what, sizeof(what), "%.*s", (int)(n - k), uri + k);
        route_a1111_info(ctx, as, what, rs);
        break;
    }
    case R_A1111_LORAS:
        route_loras(ctx, true, rs);
        break;
    case R_LORAS:
        route_loras(ctx, false, rs);
        break;
    case R_NONE:
        break;
    }
}

void api_handle(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                struct api_response *rs)
{
    int cors = access_cors_index(ctx, rq);
    memset(rs, 0, sizeof(*rs));
    dispatch(ctx, st, rq, rs);
    if (rs->park)
        rs->events.cors = cors; /* api_generate_poll adds them to the answer */
    else if (rs->status != 204)
        access_cors_headers(ctx, cors, rs);
}

void api_response_release(struct api_response *rs)
{
    if (rs) {
        free(rs->body);
        rs->body = NULL;
        rs->body_len = 0;
    }
}

/* The memory plan of the configured placement against cfg->device_memory: the default image
 * must fit (else FX_EDEVICE), and max_size drops to the largest square side that fits. */
static int fit_device_memory(struct api_ctx *ctx, const struct fx_manifest *m,
                             const struct fx_config *cfg, bool *lowered, char *msg, size_t msg_len)
{
    struct fx_plan pl;
    int64_t mem = (int64_t)cfg->device_memory;
    const char *dev = cfg->device[0] ? cfg->device : NULL;
    enum fx_placement place;
    int side, rc;
    /* the placement that will run (auto resolves against the same figure) */
    rc = plan_resolve_placement(m, cfg->placement, dev, mem, ctx->defaults.width,
                                ctx->defaults.height, &place, msg, msg_len);
    if (rc == FX_EDEVICE)
        place = FX_PLACE_STREAM; /* none fits: say what the smallest placement needs */
    else if (rc)
        return rc;
    rc = plan_compute(m, place, ctx->defaults.width, ctx->defaults.height, dev, &pl, msg, msg_len);
    if (rc)
        return rc;
    if (pl.device_total > mem)
        return fx_fail(msg, msg_len, FX_EDEVICE,
                       "model '%s' does not fit device_memory %lld bytes: the memory plan needs "
                       "%lld at the default %dx%d (weights %lld, activations %lld, overhead "
                       "%lld; `fluxgen plan --model DIR` shows it); export with smaller weights "
                       "(fluxexport export --weights int8 or int4) or lower default_width / "
                       "default_height",
                       m->name, (long long)mem, (long long)pl.device_total, ctx->defaults.width,
                       ctx->defaults.height, (long long)pl.weights_device,
                       (long long)pl.activation_peak, (long long)pl.overhead);
    side = plan_max_size(m, place, dev, mem, ctx->limits.min_size, ctx->limits.max_size,
                         ctx->limits.multiple_of);
    if (side > 0 && side < ctx->limits.max_size) {
        ctx->limits.max_size = side;
        *lowered = true;
    }
    return 0;
}

int api_ctx_limits(struct api_ctx *ctx, const struct fx_manifest *m, const struct fx_config *cfg,
                   char *msg, size_t msg_len)
{
    const char *field = NULL;
    bool lowered_by_memory = false;
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
    if (cfg->device_memory > 0 &&
        (rc = fit_device_memory(ctx, m, cfg, &lowered_by_memory, msg, msg_len)) != 0)
        return rc;
    rc = fx_request_validate(&ctx->defaults, &ctx->limits, &field, msg, msg_len);
    ctx->defaults.prompt = NULL;
    ctx->defaults.prompt_len = 0;
    ctx->defaults.has_seed = false;
    if (rc && msg && msg_len) {
        char tmp[256];
        snprintf(tmp, sizeof(tmp), "%s", msg);
        snprintf(msg, msg_len, "the configured defaults do not fit the limits: %s%s", tmp,
                 lowered_by_memory ? " (max_size lowered to what fits device_memory)" : "");
    }
    return rc;
}
