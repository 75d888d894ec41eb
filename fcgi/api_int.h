/*
 * api_int.h - what the route files of the HTTP API share (not part of the API itself).
 *
 * fcgi/api.c routes a request to one handler; the handlers live one file per family of
 * routes: routes_generate.c (POST /generate, /generate/queue), routes_queue.c (status,
 * result, cancel, groups), routes_ops.c (/ping, /metrics), routes_loras.c (/loras),
 * routes_events.c, routes_openai.c (the OpenAI Images API), routes_a1111.c (the A1111 / Forge API),
 * routes_docs.c
 * (/openapi.json); access.c decides who may ask (API keys, CORS, per-key limits).  reply.c
 * builds answers (JSON, errors, the status view of a job, images) and parse.c reads generation
 * requests.
 */
#ifndef FX_API_INT_H
#define FX_API_INT_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "api.h"
#include "jobid.h"
#include "lora_dir.h"

static const char CT_JSON[] = "application/json";
static const char CT_PNG[] = "image/png";
static const char CT_TEXT[] = "text/plain; charset=utf-8";
static const char CT_PROM[] = "text/plain; version=0.0.4; charset=utf-8";

/* Who is asking: the API key a request presented (fcgi/access.c). */
struct api_caller {
    bool admin;                        /* sees and cancels every job (everyone, with auth off) */
    char key_id[STORE_KEY_ID_LEN + 1]; /* "": no key (auth off) */
    char name[65];
    long max_queued, daily_images; /* the key's limits in force; 0: none */
    int64_t daily_budget;
    char webhook[1024]; /* the key's default webhook; "" none */
};

/* ISO 8601 UTC with milliseconds ("2026-01-02T03:04:05.678Z") of epoch ms; NULL (JSON
 * null) for ms <= 0. */
json_object *api_iso_time(int64_t ms);

/* Wall-clock time (Unix epoch milliseconds) for the timestamps stored in job rows. */
int64_t api_now_ms(void);
/* Monotonic milliseconds, for intervals. */
int64_t api_mono_ms(void);

/* ---- reply.c ---- */
void api_add_header(struct api_response *rs, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Takes ownership of o (may be NULL: then a fixed out-of-memory body). */
void api_send_json(struct api_response *rs, int status, json_object *o);
json_object *api_error_object(int code, const char *message);
/* Adds the error under "error" to o (a status object) and sends it. */
void api_send_error_in(struct api_response *rs, int code, json_object *o, const char *message);
void api_send_error(struct api_response *rs, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void api_send_store_error(struct api_response *rs, int rc, struct store *st);
enum store_state api_visible_state(const struct api_ctx *ctx, const struct store_job *j);
/* Seconds left for a running job at the pace of its steps so far; NULL (JSON null) when it
 * is not running or has no step done. */
json_object *api_eta(const struct store_job *j);
/* The status JSON of a job (GET /queue/status/{id}). */
json_object *api_job_status(const struct api_ctx *ctx, const struct store_job *j);
/* Answers with the image of a job, or why there is none. */
void api_answer_result(const struct api_ctx *ctx, struct store *st, struct api_response *rs,
                       const struct store_job *j);
bool api_terminal(enum store_state s);
/* Reads the job named by a path segment; answers and returns non-zero when it cannot.  A job
 * of another key is 404 like an unknown id (unless who is admin). */
int api_load_job(struct store *st, const struct api_caller *who, const char *id, size_t id_len,
                 struct api_response *rs, struct store_job *j);
bool api_ready(const struct api_ctx *ctx);
void api_not_ready(const struct api_ctx *ctx, struct api_response *rs);

/* ---- parse.c: reading request bodies ---- */

/* Images one request may ask for (n, batch_size * n_iter): OpenAI's own bound. */
#define API_MAX_IMAGES 10

/* The fields of a body that its route does not know: ignored, and named back to the client
 * (X-Ignored-Fields) so that a typo is visible. */
struct api_ignored {
    char list[200]; /* comma-separated, cut with "..." when long */
    int n;
    bool cut;
};
void api_ignored_add(struct api_ignored *ig, const char *key);

/* A parsed generation request of any API. */
struct api_gen {
    struct fx_request req; /* req.prompt points at prompt, req.loras at loras */
    char *prompt;          /* malloc'd */
    int n;                 /* images, 1..API_MAX_IMAGES */
    struct api_ignored ignored;
    struct api_job_extra extra; /* the webhook (native bodies only) */
    /* the LoRAs asked for: names checked (lora_dir.h), path NULL until the worker runs it */
    struct fx_lora loras[FX_LORA_MAX];
    char lora_names[FX_LORA_MAX][LORA_NAME_MAX + 1];
};
/* req = ctx->defaults without prompt or seed, n = 1, nothing ignored. */
void api_gen_init(const struct api_ctx *ctx, struct api_gen *g);
void api_gen_release(struct api_gen *g);

/*
 * The native body (POST /generate, /generate/queue): the fields of api_native_fields.
 * Unknown fields are ignored and listed in g->ignored; null is a field's default.  Same
 * errors as api_parse_generate.  On success g owns the prompt (api_gen_release).
 */
int api_parse_native(const struct api_ctx *ctx, const char *body, size_t len, struct api_gen *g,
                     const char **field, char *msg, size_t msg_len);

/* The strict JSON reading of api_parse_generate: *out is the body's object (the caller puts
 * it).  Errors: FX_EFORMAT, FX_EINVAL (not an object), FX_ETOOBIG, FX_ENOMEM. */
int api_parse_object(const char *body, size_t len, json_object **out, const char **field, char *msg,
                     size_t msg_len);

/*
 * Field readers that accept what the seed's FastAPI service accepted: an integer as 4, 4.0
 * or "4"; a number as 3.5 or "3.5".  Each returns 0, or FX_EINVAL / FX_ERANGE with *field
 * set to name (which must outlive the call's use of *field) and msg saying why.
 * api_get_seed: null or -1 is a random seed (*has false).  api_get_prompt: a string, valid
 * UTF-8 without NUL (FX_EUTF8), copied into *prompt (freeing the old one).
 * api_get_enum: one of the NULL-terminated allowed strings; *out is its index.
 */
int api_get_int(json_object *v, const char *name, int64_t lo, int64_t hi, int64_t *out,
                const char **field, char *msg, size_t msg_len);
int api_get_number(json_object *v, const char *name, double *out, const char **field, char *msg,
                   size_t msg_len);
int api_get_seed(json_object *v, const char *name, uint64_t *seed, bool *has, const char **field,
                 char *msg, size_t msg_len);
int api_get_prompt(json_object *v, const char *name, char **prompt, size_t *len, const char **field,
                   char *msg, size_t msg_len);
int api_get_enum(json_object *v, const char *name, const char *const *allowed, int *out,
                 const char **field, char *msg, size_t msg_len);
/* "png", "jpeg" (or "jpg"), "webp" -> an enum imgw_format */
int api_get_format(json_object *v, const char *name, int *format, const char **field, char *msg,
                   size_t msg_len);

/*
 * Adds one LoRA to g: name (len bytes, as the request gave it: lora_dir.h's syntax, with or
 * without ".safetensors"), scale (finite, |scale| <= FX_LORA_SCALE_MAX), at most FX_LORA_MAX
 * in all, no name twice.  where names it in messages ("loras[1]", "prompt").  Returns 0, or
 * FX_EINVAL / FX_ERANGE with msg starting with where.
 */
int api_gen_add_lora(struct api_gen *g, const char *name, size_t len, double scale,
                     const char *where, char *msg, size_t msg_len);
/*
 * The loras field: null (none) or an array of {"name": "...", "scale": 0.8} (scale: a number
 * as api_get_number reads it, null or absent 1.0; another key is an error), each added with
 * api_gen_add_lora.  Errors as api_get_int's, *field set to name.
 */
int api_get_loras(json_object *v, const char *name, struct api_gen *g, const char **field,
                  char *msg, size_t msg_len);
/*
 * A1111's prompt syntax: every <lora:NAME> and <lora:NAME:SCALE> in g->prompt is taken out of
 * the prompt (with one blank next to it) and added with api_gen_add_lora; <lyco:...> too.
 * Returns 0 (g->req.prompt_len updated), or FX_EINVAL / FX_ERANGE with msg ("prompt: ...").
 */
int api_prompt_loras(struct api_gen *g, char *msg, size_t msg_len);
/*
 * fx_request_validate of g's request with ctx's limits, its LoRAs left out: they have no
 * files before api_check_loras resolves them, and api_gen_add_lora bounds them already.
 * Same returns.
 */
int api_validate(const struct api_ctx *ctx, const struct api_gen *g, const char **field, char *msg,
                 size_t msg_len);
/*
 * Checks g's LoRAs against ctx's lora_dir and the model's map (lora_dir_check: the file's
 * header; no GPU work, fine on a handler thread).  Returns 0 (always when there are none), or
 * FX_ELORA_OFF (no lora_dir, or a model without lora_map.json), FX_ELORA_UNKNOWN,
 * FX_ELORA_BAD, FX_EINVAL, FX_ENOMEM with msg starting with "loras".
 */
int api_check_loras(const struct api_ctx *ctx, const struct api_gen *g, char *msg, size_t msg_len);

/* The index of key in a NULL-terminated table of field names, -1 when absent. */
int api_field_index(const char *const *table, const char *key);

/* The field tables of the request bodies: the parsers dispatch on them, and the OpenAPI
 * document's request schemas must list exactly these (tests/unit/test_api.c checks). */
extern const char *const api_native_fields[];
extern const char *const api_openai_fields[];
extern const char *const api_a1111_fields[];

/* ---- routes_generate.c: queueing and the parked answer, for every generation route ---- */

/* What api_enqueue queued. */
struct api_queued {
    char gid[JOBID_MAX + 1]; /* "" when one job was queued alone */
    char ids[API_MAX_IMAGES][JOBID_MAX + 1];
    uint64_t seeds[API_MAX_IMAGES];
    long position; /* the first job's */
    int n;
};

/*
 * Queues g->n jobs with consecutive seeds from g->req's (random when it has none), in one
 * transaction, as a group when group is true or n > 1.  reply (NULL or JSON) is stored with
 * each job (api_reply_json), and so are who's key, each image's cost and the webhook (g's,
 * else the key's): in the same transaction the key's limits count all n images (429
 * quota_exceeded with the key's usage, Retry-After).  Returns 0 with *q filled, or answers rs
 * in the native error shape (not ready, queue full, quota, store errors) and returns the
 * error.
 */
int api_enqueue(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                struct api_gen *g, bool sync, bool group, const char *reply, struct api_queued *q,
                struct api_response *rs);

/* The reply JSON a job keeps for its waiting client: extra (taken; may be NULL) with "api"
 * and the ignored fields added.  malloc'd text, NULL when out of memory. */
char *api_reply_json(const char *api, const struct api_ignored *ig, json_object *extra);

/* Parks rs on job id: api_generate_poll answers it (the headers set so far are dropped). */
void api_park(struct api_response *rs, const char *id);

/* api_generate_poll for a job of a group: the answer in the API of the group's reply once
 * every job has ended (or the wait is over).  Same returns as api_generate_poll. */
bool api_group_poll(const struct api_ctx *ctx, struct store *st, const struct store_job *first,
                    enum api_poll why, struct api_response *rs);

/* ---- reply.c: more answers ---- */

/* Standard base64 of b[0..n): malloc'd, NUL-terminated, NULL when out of memory. */
char *api_base64(const uint8_t *b, size_t n);

/* Rewrites an error answer (status >= 400, native shape) into the shape of api ("openai":
 * error.type and error.param added; "a1111": a top-level "detail" with the message, as
 * FastAPI clients read it); param (may be NULL) names the offending field. */
void api_restyle_error(struct api_response *rs, const char *api, const char *param);

/* The content type of stored image bytes (PNG, JPEG or WebP). */
const char *api_image_type(const uint8_t *b, size_t n);

/* The status JSON of a group (GET /queue/group/{gid}). */
json_object *api_group_status(const struct api_ctx *ctx, const struct store_job *jobs, int n);

/* ---- routes_openai.c, routes_a1111.c: answers of a finished group ---- */
void openai_answer(const struct api_ctx *ctx, struct store *st, const struct store_job *jobs, int n,
                   json_object *reply, struct api_response *rs);
void a1111_answer(const struct api_ctx *ctx, struct store *st, const struct store_job *jobs, int n,
                  json_object *reply, struct api_response *rs);

/* ---- access.c ---- */
/* The value of a request header, or NULL when it was not sent. */
const char *api_hdr(const struct api_request *rq, enum api_hdr h);
/* The caller when no key is needed: admin when auth is off, else nobody in particular. */
void access_open_caller(const struct api_ctx *ctx, struct api_caller *who);
/*
 * Authenticates the request's key (auth on): fills *who and returns 0, or answers 400
 * malformed / 401 unauthorized (403 forbidden when need_admin and the key is not an admin
 * key) and returns the error.  Failures are counted in the metrics and logged without the
 * key.  Needs the store: never called on the event thread.
 */
int access_check(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                 bool need_admin, struct api_caller *who, struct api_response *rs);
/* The 1-based place of the request's Origin in cors_origins; 0 when absent or not allowed. */
int access_cors_index(const struct api_ctx *ctx, const struct api_request *rq);
/* Adds the CORS headers of an answer to an allowed origin (index from access_cors_index). */
void access_cors_headers(const struct api_ctx *ctx, int index, struct api_response *rs);
/* Whether the request is a CORS preflight (OPTIONS with Origin and
 * Access-Control-Request-Method). */
bool access_is_preflight(const struct api_request *rq);
/* Answers a preflight for a route that takes the methods in allow. */
void access_preflight(const struct api_ctx *ctx, const struct api_request *rq, const char *allow,
                      struct api_response *rs);
/* The key's limits and usage as JSON ({"name","queued","max_queued",...}). */
json_object *access_usage_json(const struct api_caller *who, const struct store_key_usage *u);
/* Per-key Prometheus series (usage and limits of every key in use); malloc'd text or NULL. */
char *access_metrics(const struct api_ctx *ctx, struct store *st, size_t *len);

/* ---- the handlers ---- */
void route_ping(const struct api_ctx *ctx, struct api_response *rs);
void route_metrics(const struct api_ctx *ctx, struct store *st, struct api_response *rs);
void route_generate(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                    const struct api_caller *who, struct api_response *rs);
void route_generate_queue(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                          const struct api_caller *who, struct api_response *rs);
void route_queue_status(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                        struct api_response *rs);
void route_job_status(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                      const char *id, size_t id_len, struct api_response *rs);
void route_result(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                  const char *id, size_t id_len, struct api_response *rs);
void route_events(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                  const char *id, size_t id_len, struct api_response *rs);
void route_cancel(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                  const char *id, size_t id_len, struct api_response *rs);
/* GET (status) and DELETE (cancel) /queue/group/{gid} */
void route_group(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                 const char *method, const char *gid, size_t gid_len, struct api_response *rs);
void route_openai_images(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                         const struct api_caller *who, struct api_response *rs);
void route_openai_models(const struct api_ctx *ctx, struct api_response *rs);
void route_a1111_txt2img(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                         const struct api_caller *who, struct api_response *rs);
/* the progress and interrupt of the caller's first running job (any job's for an admin) */
void route_a1111_progress(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                          struct api_response *rs);
void route_a1111_interrupt(const struct api_ctx *ctx, struct store *st,
                           const struct api_caller *who, struct api_response *rs);
/* GET/POST /sdapi/v1/options and the lists front-ends read to connect (what names it) */
void route_a1111_info(const struct api_ctx *ctx, const char *method, const char *what,
                      struct api_response *rs);
void route_openapi(const struct api_ctx *ctx, struct api_response *rs);
/* GET /loras (native) and GET /sdapi/v1/loras (A1111's shape: a1111 true); routes_loras.c */
void route_loras(const struct api_ctx *ctx, bool a1111, struct api_response *rs);

#endif
