/*
 * api.h - the HTTP API of fluxcgi (docs/api.md), independent of FastCGI.
 *
 * A handler takes a request struct (method, URI, body) and fills a response struct (status,
 * content type, headers, body), so every route is unit-tested without a web server;
 * fcgi/server.c only moves these structs over FastCGI.
 *
 * Routes (the path is REQUEST_URI without its query string, the same under nginx and
 * lighttpd; HEAD is answered like GET):
 *   GET    /ping                 liveness + readiness: {"status":"ok"|"loading"|"failed",...}
 *   POST   /generate             a queued job the request waits for: 200 image/png with
 *                                X-Request-Id and X-Seed (the handler queues the job and
 *                                parks the request: api_generate_poll answers it)
 *   POST   /generate/queue       202 {"request_id","status":"queued","position",...},
 *                                Location: /queue/status/{id}
 *   GET    /queue/status         200 counts by state and capacity
 *   GET    /queue/status/{id}    200 {"request_id","status","position","progress",...}
 *   DELETE /queue/{id}           cancel: 200 (was queued), 202 (running: stops between
 *                                steps), 409 already_finished
 *   GET    /result/{id}          200 image/png; 409 not_finished (with the status JSON);
 *                                the job's error when it failed or was cancelled; 410 expired
 *   GET    /queue/events/{id}    Server-Sent Events: `state` and `progress` events (step,
 *                                steps, eta_s) as the job moves, then `end` with its final
 *                                status (and result_url); the handler answers the head and
 *                                the first events and parks the stream: api_events_poll
 *                                writes the rest
 *   GET    /metrics              Prometheus text
 *   GET    /queue/group/{gid}    a job group (several images of one request); DELETE cancels it
 *   POST   /v1/images/generations  the OpenAI Images API (routes_openai.c), GET /v1/models
 *   POST   /sdapi/v1/txt2img     the A1111 / Forge API and the routes front-ends read to
 *                                connect: progress, interrupt, options, sd-models, ...
 *                                (routes_a1111.c)
 *   GET    /loras                the LoRA files of lora_dir, each checked against the model
 *                                (routes_loras.c; also /sdapi/v1/loras in A1111's shape)
 *   GET    /openapi.json         the OpenAPI document of all of these (routes_docs.c)
 * The sync-style routes (POST /generate, the OpenAI and A1111 ones) park their request on a
 * job; the job (and its group) in the store say how api_generate_poll answers it.
 *   OPTIONS any route             a CORS preflight (Origin and Access-Control-Request-Method):
 *                                204 for an allowed origin, 403 forbidden otherwise
 * With auth on (fcgi/access.c), every route but /ping and /openapi.json (and /metrics with
 * metrics_auth open) needs an API key: 401 unauthorized without a valid one; a job or group
 * made by another key is 404.
 * Every error is {"error":{"code":"...","message":"..."}} with a code from core/err.h
 * (fx_errcode) and the status from api_http_status.  Ids are 32 lower-case hex digits;
 * anything else in an id position is 400 invalid_id.  A field error's message starts with
 * the field's name.
 *
 * Thread-safety: api_handle may run on many threads at once, each with its own store.
 */
#ifndef FX_API_H
#define FX_API_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/lora.h"
#include "../core/pipeline.h"
#include "../sql/store.h"
#include "config.h"
#include "metrics.h"
#include "worker.h"

/* What every handler shares (read-only). */
struct api_ctx {
    const struct fx_config *cfg;
    struct fx_limits limits;    /* the model's limits, tightened by the config */
    struct fx_request defaults; /* steps, guidance, width, height for absent fields */
    const char *model_name;
    struct worker *worker;       /* NULL: no worker (unit tests); waits just sleep */
    const atomic_int *readiness; /* an enum worker_readiness */
    struct fx_metrics *metrics;  /* may be NULL */
    /* LoRAs (cfg->lora_dir set): the model's lora map (core/lora.h), loaded once at start;
     * NULL when the model has none, lora_map_error then says why (NULL: LoRAs are off) */
    const struct fx_lora_map *lora_map;
    const char *lora_map_error;
};

/*
 * Fills ctx->limits and ctx->defaults from the model manifest and the config: the
 * manifest's values, with the config's default_* replacing them and max_size / max_steps
 * lowering the bounds.  With cfg->device_memory set, the memory plan (core/plan.h, resident,
 * on cfg->device or the manifest's) lowers max_size to the largest square side that fits, so
 * that a larger request gets the usual 422 naming the bound.  Returns 0, FX_ERANGE with msg
 * set when a configured default is outside the bounds, or FX_EDEVICE with msg set when the
 * model does not fit the device memory at its default size (the service must not start).
 */
int api_ctx_limits(struct api_ctx *ctx, const struct fx_manifest *m, const struct fx_config *cfg,
                   char *msg, size_t msg_len);

/*
 * The request headers access control reads, as FastCGI params (the web server passes each
 * request header as HTTP_NAME: nginx with its default fastcgi_pass_request_headers on,
 * lighttpd always).  The front end copies them into an api_headers with fcgi_in_param; a
 * value cut at API_HDR_MAX - 1 bytes counts as malformed (Authorization) or unknown.
 */
enum api_hdr {
    API_HDR_AUTHORIZATION, /* HTTP_AUTHORIZATION: "Bearer KEY" */
    API_HDR_API_KEY,       /* HTTP_X_API_KEY: KEY */
    API_HDR_ORIGIN,        /* HTTP_ORIGIN: a browser's origin (CORS) */
    API_HDR_ACR_METHOD,    /* HTTP_ACCESS_CONTROL_REQUEST_METHOD: a CORS preflight */
    API_HDR_REMOTE_ADDR,   /* REMOTE_ADDR: for the log of refused keys */
    API_HDR_COUNT
};
#define API_HDR_MAX 1024
extern const char *const api_header_params[API_HDR_COUNT];
struct api_headers {
    char value[API_HDR_COUNT][API_HDR_MAX];
    bool present[API_HDR_COUNT];
};

struct api_request {
    const char *method; /* "GET", ... */
    const char *uri;    /* REQUEST_URI: path and optional "?query" */
    const char *body;   /* may contain NUL bytes; NULL when body_len is 0 */
    size_t body_len;
    bool body_too_large;           /* the body was over cfg->max_body and not read */
    bool bad_length;               /* the body's length is not the declared CONTENT_LENGTH */
    const struct api_headers *hdr; /* NULL: no such header was sent */
};

/* What an event stream has sent so far (route_events starts it in api_response.events);
 * for a parked POST /generate only cors is used. */
struct api_events {
    int state; /* enum store_state last sent; -1 none */
    int step;
    int64_t last_sent_ms; /* monotonic: the last event or keep-alive comment */
    int cors;             /* the allowed origin of the request (1-based in cors_origins), 0: none */
};

#define API_MAX_HEADERS 10

struct api_header {
    char name[32];
    char value[256];
};

struct api_response {
    int status;
    const char *content_type; /* static string */
    struct api_header headers[API_MAX_HEADERS];
    int n_headers;
    char *body; /* malloc'd, body_len bytes; released by api_response_release */
    size_t body_len;
    /* POST /generate: no answer yet (status 0); the job park_id was queued and the front
     * end answers the request with api_generate_poll once it ends */
    bool park;
    char park_id[STORE_ID_LEN + 1];
    /* GET /queue/events/{id}: status, head and body are the start of an event stream that
     * stays open (park_id names the job); the front end goes on with api_events_poll */
    bool stream;
    struct api_events events;
};

/* Answers one request.  *rs is overwritten; release it with api_response_release. */
void api_handle(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                struct api_response *rs);

void api_response_release(struct api_response *rs);

/* False when api_handle answers the request from memory alone (GET/HEAD /ping and
 * /openapi.json, unknown paths, methods a route does not take, preflights; the fixed lists of
 * the OpenAI and A1111 APIs too unless ctx's auth is on, when their key is checked in the
 * store): it may then be called with st NULL, on any thread, and returns at once.  ctx may be
 * NULL (auth off). */
bool api_needs_store(const struct api_ctx *ctx, const char *method, const char *uri);

enum api_poll {
    API_POLL_CHECK,   /* has the job ended? */
    API_POLL_TIMEOUT, /* sync_timeout ran out: answer 504 unless it ended */
    API_POLL_STOPPING /* the service is draining: answer 503 unless it ended */
};

/*
 * The answer to a parked POST /generate for job id: the image (200, X-Request-Id, X-Seed)
 * or the job's error once it has ended (with the CORS headers of ev->cors; ev may be NULL), else
 * for API_POLL_TIMEOUT a 504 and for API_POLL_STOPPING a 503 that name the job (it goes on, or
 * stays queued).  Returns true with *rs filled (release it), or false (nothing to answer yet; *rs
 * is empty).
 */
bool api_generate_poll(const struct api_ctx *ctx, struct store *st, const char *id,
                       enum api_poll why, const struct api_events *ev, struct api_response *rs);

/*
 * The next part of the event stream of job id: events for what changed since *ev (a state
 * change, a step), a keep-alive comment when nothing was sent for 15 s, and once the job has
 * ended (or the service is stopping: why API_POLL_STOPPING) the `end` event.  Returns true
 * when the stream is complete with this part; *out (malloc'd, *out_len bytes; NULL when
 * there is nothing to send) is the text to send.  now_ms is monotonic.
 */
bool api_events_poll(const struct api_ctx *ctx, struct store *st, const char *id, enum api_poll why,
                     struct api_events *ev, int64_t now_ms, char **out, size_t *out_len);

/* The routing table, for the checks that the OpenAPI document lists every route: the number
 * of routes, and route i's path (a prefix followed by an id when *prefix), with the methods it
 * takes in *allow ("GET, HEAD").  NULL when i is out of range.  Static strings. */
size_t api_route_count(void);
const char *api_route_path(size_t i, bool *prefix, const char **allow);

/* The one map from an error code (core/err.h) to an HTTP status; 0 gives 200. */
int api_http_status(int code);

/*
 * Parses a generation request body: a JSON object with prompt (required), guidance_scale,
 * num_inference_steps, width, height, seed (null, absent or -1: random), n, output_format
 * and output_quality, defaults from ctx (null is a field's default), then
 * fx_request_validate with ctx->limits.  Integers may be written 4.0 or "4", numbers "3.5"
 * (what the seed's FastAPI service accepted); unknown fields are ignored (api_parse_native,
 * api_int.h, lists them; n is dropped here; loras are read and checked, but out->loras is
 * NULL: their names live in api_parse_native's struct api_gen).  On success returns 0 and fills
 * *out, whose prompt points into *prompt (malloc'd, caller frees).  Errors: FX_EFORMAT (not JSON,
 * bytes that are not UTF-8, nesting deeper than 16, trailing bytes: 400), FX_EUTF8 (a prompt with
 * overlong forms or surrogates, which json-c lets through: 400), FX_EINVAL (a wrong type, a
 * fraction for an integer, a missing or empty prompt: 422), FX_ERANGE (a value outside the
 * limits: 422), FX_ELORA_OFF / FX_ELORA_UNKNOWN / FX_ELORA_BAD (loras that the service has
 * no folder for, that it lacks, or that do not fit the model: 422), FX_ENOMEM; *field names
 * the field (NULL for the body as a whole) and msg says why.
 */
int api_parse_generate(const struct api_ctx *ctx, const char *body, size_t len,
                       struct fx_request *out, char **prompt, const char **field, char *msg,
                       size_t msg_len);

/* What a generation request asks besides the image (not part of the job's params). */
struct api_job_extra {
    char webhook[2048 + 1]; /* "": none; else checked against webhook_hosts */
    bool webhook_progress;  /* progress events too, not only the end */
};

/*
 * api_parse_generate, also reading `webhook` (an http(s) URL whose host webhook_hosts allows,
 * or null) and `webhook_progress` (a boolean) into *extra (may be NULL: then they are read
 * and checked but dropped).  A webhook host that is not allowed is 422 invalid_argument.
 */
int api_parse_generate_ex(const struct api_ctx *ctx, const char *body, size_t len,
                          struct fx_request *out, char **prompt, struct api_job_extra *extra,
                          const char **field, char *msg, size_t msg_len);

#endif
